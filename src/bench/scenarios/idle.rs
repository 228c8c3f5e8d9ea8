//! `idle`: memory per idle logged-in connection. The client sockets are held by worker
//! processes, at most 6 000 each (the open-file limit caps what one process holds); the node's
//! RSS is read before and after the ramp, once it settles. The substrate is a raw tokio server
//! holding as many connections, one task each.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::{say, source, Bench};
use crate::bench::client::Conn;
use crate::bench::procs::Worker;
use crate::bench::report::ScenarioReport;
use crate::bench::stats;
use crate::bench::worker::Job;

/// The open-file limit of a process and how many files it has open.
fn fd_room(pid: u32) -> Option<(usize, usize)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((soft, open))
}

/// Holds `count` idle connections to `target` in worker processes (at most 6 000 each, each
/// from its own loopback source address `127.0.<block>.2`, `.3`, …); logs them in when
/// `tokens` is given. Returns the workers and how many connections are up.
async fn idle_workers(
    exe: &std::path::Path,
    target: SocketAddr,
    tokens: Option<&std::path::Path>,
    count: usize,
    block: u8,
) -> anyhow::Result<(Vec<Worker>, usize, usize)> {
    const PER_WORKER: usize = 6000;
    let mut workers = Vec::new();
    let mut from = 0;
    let mut k = 0u8;
    while from < count {
        let n = PER_WORKER.min(count - from);
        let job = Job::IdleClients {
            target,
            bind: Some(IpAddr::V4(Ipv4Addr::new(127, 0, block, 2 + k))),
            tokens: tokens.map(|p| p.to_path_buf()),
            from,
            count: n,
        };
        workers.push(Worker::start(exe, &job.args())?);
        from += n;
        k += 1;
    }
    let (mut ok, mut failed) = (0, 0);
    for w in &mut workers {
        let line = w.next_line(Duration::from_secs(900)).await?;
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ready") {
            bail!("unexpected worker line {line:?}");
        }
        ok += parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        failed += parts
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
    }
    Ok((workers, ok, failed))
}

/// RSS once it stops moving (allocator and kernel settle after a ramp).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = stats::rss_bytes(pid).unwrap_or(0);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = stats::rss_bytes(pid).unwrap_or(0);
        if now.abs_diff(last) < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

pub(super) async fn idle(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
    let s = b.sizes.clone();
    let mut report = ScenarioReport::new("idle");
    let nodes = b.start_nodes(1, 0)?;
    let node = &nodes[0];
    let mut notes = Vec::new();
    let mut c = s.connections;
    if let Some((limit, open)) = fd_room(node.pid()) {
        // The node's listeners, backends and logs; plus room for a few more it may open.
        let room = limit.saturating_sub(open + 32);
        if c > room {
            notes.push(format!(
                "capped at {room} connections: the daemon may open {limit} files and already holds {open}"
            ));
            c = room;
        }
        report.extra("daemon_open_files_limit", limit);
    }
    let users = b.users(c).await?;
    let tokens = b.dir.path().join("idle-tokens");
    {
        let mut f = std::fs::File::create(&tokens)?;
        for u in &users {
            writeln!(f, "{}", u.token)?;
        }
    }
    // Baseline: a node that has served a login (lazy initialisation done).
    {
        let mut warm = Conn::open(node.addr, None).await?;
        let extra = b.users(1).await?;
        warm.resume(&extra[0].token).await?;
    }
    let before = settled_rss(node.pid()).await;
    say(&format!("idle: opening {c} logged-in connections"));
    let start = Instant::now();
    let (workers, ok, failed) =
        idle_workers(&b.env.exe, node.addr, Some(&tokens), c, source::IDLE_CHAT).await?;
    let ramp = start.elapsed().as_secs_f64();
    let after = settled_rss(node.pid()).await;
    for w in workers {
        tokio::task::block_in_place(|| w.finish());
    }
    report.daemon_rss_bytes = after;
    drop(nodes);
    if ok == 0 {
        bail!("no idle connection could log in ({failed} failed)");
    }
    let per_conn = after.saturating_sub(before) as f64 / ok as f64;

    // The substrate: a raw tokio server (one task per connection, no buffer while idle).
    let mut server = Worker::start(&b.env.exe, &Job::RawIdleServer.args())?;
    let line = server.next_line(Duration::from_secs(30)).await?;
    let raw_addr: SocketAddr = line
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow!("raw idle server said {line:?}"))?
        .parse()?;
    let raw_pid = server.proc.pid().unwrap_or(0);
    let raw_before = settled_rss(raw_pid).await;
    let start = Instant::now();
    let (workers, raw_ok, _) =
        idle_workers(&b.env.exe, raw_addr, None, ok, source::IDLE_RAW).await?;
    let raw_ramp = start.elapsed().as_secs_f64();
    let raw_after = settled_rss(raw_pid).await;
    for w in workers {
        tokio::task::block_in_place(|| w.finish());
    }
    tokio::task::block_in_place(|| server.finish());
    let raw_per_conn = raw_after.saturating_sub(raw_before) as f64 / raw_ok.max(1) as f64;

    report.nodes = 1;
    report.clients = c;
    report.delivered = ok as u64;
    report.errors = failed as u64;
    report.throughput_msgs_per_s = ok as f64 / ramp;
    report.rss_bytes_per_conn = Some(per_conn);
    report.substrate =
        "raw tokio server: one task per connection, readable() + stack buffer".into();
    report.substrate_throughput_msgs_per_s = raw_ok as f64 / raw_ramp;
    report.substrate_rss_bytes_per_conn = Some(raw_per_conn);
    report.extra("daemon_rss_before_bytes", before);
    report.extra("daemon_rss_after_bytes", after);
    report.extra("raw_rss_before_bytes", raw_before);
    report.extra("raw_rss_after_bytes", raw_after);
    report.extra("notes", notes);
    Ok(report)
}
