//! `login-storm`: a node dies with its sessions, and all of them resume on the surviving node
//! at once. The substrate is a raw tokio server process answering hello and login, one round
//! trip each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::json;
use tokio::task::JoinHandle;

use super::flow::{connect_many, Login};
use super::{progress, say, source, Bench};
use crate::bench::client::Conn;
use crate::bench::procs::Worker;
use crate::bench::report::ScenarioReport;
use crate::bench::stats::{self, CpuMeter, Latency};
use crate::bench::worker::Job;
use crate::protocol::ids;

/// `k` clients connect and log in at once; per-client latency from the start of the storm.
async fn storm(
    addr: SocketAddr,
    bind: IpAddr,
    logins: Vec<Login>,
    label: &str,
) -> (Latency, usize, usize, f64, Vec<Conn>) {
    let start = Instant::now();
    let pb = progress(logins.len() as u64, label);
    let tasks: Vec<JoinHandle<anyhow::Result<(Duration, Conn)>>> = logins
        .into_iter()
        .map(|how| {
            let pb = pb.clone();
            tokio::spawn(async move {
                let mut c = Conn::open(addr, Some(bind)).await?;
                match how {
                    Login::Token(t) => c.resume(&t).await?,
                    Login::Raw(_) => {
                        c.send_json(ids::HELLO_REQ, &json!({"version": 2})).await?;
                        c.expect(ids::HELLO_RESP).await?;
                        c.send_json(ids::LOGIN_REQ, &json!({"token": "x"})).await?;
                        c.expect(ids::LOGIN_RESP).await?;
                    }
                }
                pb.inc(1);
                Ok((start.elapsed(), c))
            })
        })
        .collect();
    let mut hist = Latency::default();
    let (mut ok, mut failed) = (0, 0);
    let mut conns = Vec::new();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok((d, c))) => {
                hist.record(d);
                ok += 1;
                conns.push(c);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    let total = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    if let Some(e) = first_error {
        say(&format!("{label}: {failed} failed, the first: {e:#}"));
    }
    (hist, ok, failed, total, conns)
}

pub(super) async fn login_storm(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
    let s = b.sizes.clone();
    let k = s.storm;
    let mut report = ScenarioReport::new("login-storm");
    let mut nodes = b.start_nodes(2, 0)?;
    let users = b.users(k).await?;
    let a = nodes[0].addr;
    let before = connect_many(
        k,
        |_| a,
        |i| Login::Token(users[i].token.clone()),
        "logging in on node 1",
    )
    .await?;
    say(&format!("login-storm: node 1 dies with {k} sessions"));
    nodes[0].proc.kill();
    drop(before);
    let z = nodes[1].addr;
    let cpu = CpuMeter::start(&[nodes[1].pid()]);
    let nats_cpu = CpuMeter::start(&[b.nats.pid().unwrap_or(0)]);
    // Each storm from a source address of its own (see `source`).
    let (hist, ok, failed, total, conns) = storm(
        z,
        IpAddr::V4(Ipv4Addr::new(127, 0, source::STORM, 2)),
        users
            .iter()
            .map(|u| Login::Token(u.token.clone()))
            .collect(),
        "resuming on node 2",
    )
    .await;
    report.daemon_cpu_percent = cpu.percent();
    report.nats_cpu_percent = nats_cpu.percent();
    report.daemon_rss_bytes = stats::rss_bytes(nodes[1].pid()).unwrap_or(0);
    drop(conns);
    drop(nodes);

    // The substrate in a process of its own, like the node (clients and server in one
    // runtime would measure the bench's scheduling, not the server).
    let mut server = Worker::start(&b.env.exe, &Job::RawLoginServer.args())?;
    let line = server.next_line(Duration::from_secs(30)).await?;
    let raw_addr: SocketAddr = line
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow!("raw login server said {line:?}"))?
        .parse()?;
    let (raw_hist, _, raw_failed, raw_total, raw_conns) = storm(
        raw_addr,
        IpAddr::V4(Ipv4Addr::new(127, 0, source::STORM, 3)),
        (0..k).map(|i| Login::Raw(i.to_string())).collect(),
        "raw logins",
    )
    .await;
    drop(raw_conns);
    tokio::task::block_in_place(|| server.finish());

    report.nodes = 2;
    report.clients = k;
    report.delivered = ok as u64;
    report.errors = failed as u64;
    report.throughput_msgs_per_s = ok as f64 / total;
    report.latency(hist.summary());
    report.substrate =
        "raw tokio server process answering hello and login (one round trip each)".into();
    report.extra("substrate_failed", raw_failed);
    report.substrate_throughput_msgs_per_s = (k - raw_failed) as f64 / raw_total;
    report.substrate_latency(raw_hist.summary());
    report.extra("storm_seconds", total);
    report.extra("substrate_storm_seconds", raw_total);
    Ok(report)
}
