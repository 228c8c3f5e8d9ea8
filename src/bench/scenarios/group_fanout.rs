//! `group-fanout`: one member sends to a group whose members are spread over the nodes, so
//! every message is delivered `group_size - 1` times. The substrate is a raw tokio writer that
//! encodes each frame once and pushes it to as many sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::flow::{connect_many, drive, Flow, Login};
use super::{progress, Bench};
use crate::bench::client::{Conn, Target};
use crate::bench::report::ScenarioReport;
use crate::bench::substrate::{Mode, RawServer};
use crate::protocol::ids;

pub(super) async fn group_fanout(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
    let s = b.sizes.clone();
    let g = s.group_size;
    let mut report = ScenarioReport::new("group-fanout");
    let nodes = b.start_nodes(s.nodes, 0)?;
    let users = b.users(g).await?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut conns = connect_many(
        g,
        |i| addrs[i % addrs.len()],
        |i| Login::Token(users[i].token.clone()),
        "members",
    )
    .await?;
    conns[0]
        .send_json(
            ids::CREATE_GROUP_REQ,
            &json!({"name": "bench-fanout", "description": "bench"}),
        )
        .await?;
    let created = conns[0].expect(ids::CREATE_GROUP_RESP).await?;
    let gid = created["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("create group failed: {created}"))?;
    // Joins rewrite one member document: few at a time, or they only retry each other.
    let pb = progress(g as u64 - 1, "joining");
    let mut members: Vec<Conn> = conns.drain(1..).collect();
    let joined: Vec<anyhow::Result<Conn>> = futures_util::stream::iter(members.drain(..))
        .map(|mut c| {
            let pb = pb.clone();
            async move {
                c.send_json(ids::JOIN_GROUP_REQ, &json!({ "group_id": gid }))
                    .await?;
                let r = c.expect(ids::JOIN_GROUP_RESP).await?;
                if r.get("error").is_some() || r.get("code").and_then(Value::as_u64) > Some(0) {
                    bail!("join refused: {r}");
                }
                pb.inc(1);
                Ok(c)
            }
        })
        .buffered(4)
        .collect()
        .await;
    pb.finish_and_clear();
    let members = joined.into_iter().collect::<anyhow::Result<Vec<Conn>>>()?;
    // Let the nodes settle their group subscriptions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fanout = (g - 1) as u64;
    let window = 16usize;
    let mut flow = Flow::new(b.epoch, fanout);
    let credits = Arc::new(Semaphore::new(window * fanout as usize));
    let sender = conns.pop().expect("the owner");
    flow.add_sender(sender, Target::Group(gid), credits.clone(), s.payload);
    for m in members {
        flow.add_receiver(m, credits.clone());
    }
    let chat = drive(
        flow,
        s.duration,
        s.load,
        &Bench::node_pids(&nodes),
        b.nats.pid().unwrap_or(0),
        "group-fanout",
    )
    .await?;
    report.daemon_rss_bytes = Bench::rss(&nodes);
    drop(nodes);

    // The substrate: a raw tokio writer pushing the same frames to as many sockets.
    let server = RawServer::start(Mode::Fanout, None).await?;
    let addr = server.addr;
    let mut raw = connect_many(
        g,
        |_| addr,
        |i| Login::Raw(if i == 0 { "s0".into() } else { format!("m{i}") }),
        "raw members",
    )
    .await?;
    let mut flow = Flow::new(b.epoch, fanout);
    let credits = Arc::new(Semaphore::new(window * fanout as usize));
    let rest: Vec<Conn> = raw.drain(1..).collect();
    let sender = raw.pop().expect("sender");
    flow.add_sender(sender, Target::Group(gid), credits.clone(), s.payload);
    for m in rest {
        flow.add_receiver(m, credits.clone());
    }
    let sub = drive(
        flow,
        s.duration,
        Some(chat.paced.throughput),
        &[std::process::id()],
        b.nats.pid().unwrap_or(0),
        "raw fan-out",
    )
    .await;
    server.stop().await;
    let sub = sub?;

    report.nodes = s.nodes;
    report.clients = g;
    report.delivered = chat.max.delivered + chat.paced.delivered;
    report.throughput_msgs_per_s = chat.max.throughput;
    report.latency(chat.paced_hist);
    report.load_msgs_per_s = chat.paced.throughput;
    report.max_load_p99_us = chat.max_hist.p99_us;
    report.daemon_cpu_percent = chat.cpu;
    report.nats_cpu_percent = chat.nats_cpu;
    report.errors = chat.errors;
    report.substrate =
        "raw tokio writer: each frame encoded once, pushed to every member socket".into();
    report.substrate_throughput_msgs_per_s = sub.max.throughput;
    report.substrate_latency(sub.paced_hist);
    report.extra("group_size", g);
    report.extra("messages_sent", chat.max.sent + chat.paced.sent);
    report.extra("sent_msgs_per_s_max", chat.max.throughput / fanout as f64);
    report.extra("window_messages", window);
    Ok(report)
}
