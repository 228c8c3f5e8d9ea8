//! `p2p-local` and `p2p-cross`: pairs of users, one sending to the other, both on one node or
//! on two. The substrate runs the same pairs through JetStream (publish and ack, then for
//! `cross` a core NATS publish to a subscriber standing for the receiving node) and through a
//! plain tokio TCP relay, at the load chat-zinx was paced at.

use std::sync::Arc;

use async_nats::jetstream;
use tokio::sync::Semaphore;

use super::flow::{connect_many, drive, Flow, FlowResult, Login};
use super::Bench;
use crate::bench::client::Target;
use crate::bench::report::ScenarioReport;
use crate::bench::substrate::{self, Mode, RawServer};

pub(super) async fn p2p(b: &mut Bench, cross: bool) -> anyhow::Result<ScenarioReport> {
    let name = if cross { "p2p-cross" } else { "p2p-local" };
    let s = b.sizes.clone();
    let mut report = ScenarioReport::new(name);
    let n_nodes = if cross { 2 } else { 1 };
    let nodes = b.start_nodes(n_nodes, 0)?;
    let users = b.users(2 * s.pairs).await?;
    let (a, z) = (nodes[0].addr, nodes[n_nodes - 1].addr);
    let senders = connect_many(
        s.pairs,
        |_| a,
        |i| Login::Token(users[2 * i].token.clone()),
        "senders",
    )
    .await?;
    let receivers = connect_many(
        s.pairs,
        |_| z,
        |i| Login::Token(users[2 * i + 1].token.clone()),
        "receivers",
    )
    .await?;
    let mut flow = Flow::new(b.epoch, 1);
    for (i, (snd, rcv)) in senders.into_iter().zip(receivers).enumerate() {
        let credits = Arc::new(Semaphore::new(s.window));
        // By username, as the terminal client sends what its user typed.
        let to = users[2 * i + 1].name.clone();
        flow.add_sender(snd, Target::Direct(to), credits.clone(), s.payload);
        flow.add_receiver(rcv, credits);
    }
    let chat = drive(
        flow,
        s.duration,
        s.load,
        &Bench::node_pids(&nodes),
        b.nats.pid().unwrap_or(0),
        name,
    )
    .await?;
    report.daemon_rss_bytes = Bench::rss(&nodes);
    drop(nodes);

    // The substrate at the same offered load: JetStream publish + ack, then (cross) a core
    // publish to a subscriber standing for the receiving node.
    substrate::js_stream(&b.js).await?;
    let node_b = if cross {
        Some(async_nats::connect(b.nats.url()).await?)
    } else {
        None
    };
    let node_a = async_nats::connect(b.nats.url()).await?;
    let mode = Mode::Js {
        js: Box::new(jetstream::new(node_a.clone())),
        cross: cross.then(|| node_a.clone()),
    };
    let paced = chat.paced.throughput;
    let js = raw_pairs(b, mode, node_b, paced, "substrate").await?;
    let tcp = raw_pairs(b, Mode::Tcp, None, paced, "tcp relay").await?;

    report.nodes = n_nodes;
    report.clients = 2 * s.pairs;
    report.delivered = chat.max.delivered + chat.paced.delivered;
    report.throughput_msgs_per_s = chat.max.throughput;
    report.latency(chat.paced_hist);
    report.load_msgs_per_s = chat.paced.throughput;
    report.max_load_p99_us = chat.max_hist.p99_us;
    report.daemon_cpu_percent = chat.cpu;
    report.nats_cpu_percent = chat.nats_cpu;
    report.errors = chat.errors;
    report.substrate = if cross {
        "JetStream publish+ack, then core NATS publish to a subscriber (the receiving node), raw tokio TCP in and out".into()
    } else {
        "JetStream publish+ack, raw tokio TCP in and out".into()
    };
    report.substrate_throughput_msgs_per_s = js.max.throughput;
    report.substrate_latency(js.paced_hist);
    report.extra("substrate_max_load_p99_us", js.max_hist.p99_us);
    report.extra("substrate_nats_cpu_percent", js.nats_cpu);
    report.extra("tcp_relay_throughput_msgs_per_s", tcp.max.throughput);
    report.extra("tcp_relay_p50_us", tcp.paced_hist.p50_us);
    report.extra("tcp_relay_p99_us", tcp.paced_hist.p99_us);
    report.extra("max_load_p50_us", chat.max_hist.p50_us);
    report.extra("max_load_seconds", chat.max.secs);
    report.extra("pairs", s.pairs);
    report.extra("window", s.window);
    Ok(report)
}

/// A substrate run of the p2p pattern: pairs through a [`RawServer`].
async fn raw_pairs(
    b: &Bench,
    mode: Mode,
    node_b: Option<async_nats::Client>,
    paced: f64,
    label: &str,
) -> anyhow::Result<FlowResult> {
    let s = &b.sizes;
    let server = RawServer::start(mode, node_b).await?;
    let addr = server.addr;
    let senders = connect_many(
        s.pairs,
        |_| addr,
        |i| Login::Raw(format!("s{i}")),
        "senders",
    )
    .await?;
    let receivers = connect_many(
        s.pairs,
        |_| addr,
        |i| Login::Raw(format!("r{i}")),
        "receivers",
    )
    .await?;
    let mut flow = Flow::new(b.epoch, 1);
    for (snd, rcv) in senders.into_iter().zip(receivers) {
        let credits = Arc::new(Semaphore::new(s.window));
        flow.add_sender(snd, Target::Direct("0".into()), credits.clone(), s.payload);
        flow.add_receiver(rcv, credits);
    }
    let r = drive(
        flow,
        s.duration,
        Some(paced),
        &[std::process::id()],
        b.nats.pid().unwrap_or(0),
        label,
    )
    .await;
    server.stop().await;
    r
}
