//! `chat-zinx bench`: throughput, latency, memory and fan-out of real daemon nodes, side by
//! side with the raw substrate in the same run (see `docs/benchmarks.md`).
//!
//! The bench starts everything itself and always stops it: a `nats-server` with JetStream and
//! a `redis-server` on free loopback ports, daemon nodes as child processes of this binary
//! (`serve`, so their memory and CPU are measured apart from the bench's), and, for `idle`,
//! worker processes that hold the client sockets. Bench users are written straight into the
//! store once and log in with tokens.
//!
//! * [`client`]: raw-frame connections, stamped messages, sender and receiver tasks.
//! * [`substrate`]: the same patterns without the chat layer (JetStream + core NATS, raw
//!   tokio relay and fan-out writer).
//! * [`scenarios`]: `p2p-local`, `p2p-cross`, `group-fanout`, `idle`, `login-storm`, `history`.
//! * [`procs`]: daemon nodes and worker processes, on the shared [`crate::harness`] (which
//!   also starts the servers).
//! * [`worker`], [`stats`]: what a worker process runs; histograms and `/proc`.

pub mod client;
pub mod procs;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod substrate;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use report::ScenarioReport;

/// A scenario of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Pairs of users on one node, each sender to its receiver.
    P2pLocal,
    /// Pairs of users, senders on node 1 and receivers on node 2.
    P2pCross,
    /// A group of G members spread over the nodes, one sender.
    GroupFanout,
    /// C idle logged-in connections on one node: daemon memory per connection.
    Idle,
    /// K clients resuming with tokens at once on a node after their node died.
    LoginStorm,
    /// History page latency near the start and the end of a log of H messages.
    History,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::P2pLocal,
        Scenario::P2pCross,
        Scenario::GroupFanout,
        Scenario::Idle,
        Scenario::LoginStorm,
        Scenario::History,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::P2pLocal => "p2p-local",
            Scenario::P2pCross => "p2p-cross",
            Scenario::GroupFanout => "group-fanout",
            Scenario::Idle => "idle",
            Scenario::LoginStorm => "login-storm",
            Scenario::History => "history",
        }
    }
}

/// Arguments of `chat-zinx bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run, comma separated (default: all, in the order listed).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub scenario: Vec<Scenario>,
    /// Tiny sizes for a quick smoke run (a few clients, a few messages, 2 000 history
    /// messages); explicit size options still win.
    #[arg(long)]
    pub tiny: bool,
    /// Daemon nodes for `group-fanout` (members are spread over them).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Sender/receiver pairs of the p2p scenarios.
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Messages in flight per sender (p2p) before it waits for deliveries.
    #[arg(long)]
    pub window: Option<usize>,
    /// Length of each measured phase (max load, then half load), e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Offered load of the latency phase of p2p and fan-out, in deliveries per second, for
    /// both chat-zinx and the substrate (default: half the chat-zinx maximum just measured).
    /// Compares latency of two builds at the same load.
    #[arg(long)]
    pub load: Option<f64>,
    /// Bytes of message content.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Members of the `group-fanout` group.
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Idle logged-in connections of `idle` (capped by the daemon's open-file limit).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Clients of `login-storm`.
    #[arg(long)]
    pub storm: Option<usize>,
    /// Messages in the log for `history`.
    #[arg(long)]
    pub history_messages: Option<usize>,
    /// Pages requested per history probe.
    #[arg(long)]
    pub history_pages: Option<usize>,
    /// Write one JSON object per scenario, one a line, to this file (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the temporary directory (server and node logs) and print where it is.
    #[arg(long)]
    pub keep_logs: bool,

    // -- worker processes (internal) ---------------------------------------------------------
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    #[arg(long, hide = true)]
    pub worker_target: Option<SocketAddr>,
    #[arg(long, hide = true)]
    pub worker_bind: Option<IpAddr>,
    #[arg(long, hide = true)]
    pub worker_tokens: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_from: usize,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_count: usize,
}

/// The sizes a run uses (defaults, or tiny ones, overridden by explicit options).
#[derive(Debug, Clone)]
pub struct Sizes {
    pub nodes: usize,
    pub pairs: usize,
    pub window: usize,
    pub duration: Duration,
    pub load: Option<f64>,
    pub payload: usize,
    pub group_size: usize,
    pub connections: usize,
    pub storm: usize,
    pub history_messages: usize,
    pub history_pages: usize,
}

impl BenchArgs {
    pub fn sizes(&self) -> Sizes {
        let tiny = self.tiny;
        let pick = |v: Option<usize>, full: usize, small: usize| {
            v.unwrap_or(if tiny { small } else { full })
        };
        Sizes {
            nodes: self.nodes.max(1),
            pairs: pick(self.pairs, 32, 2).max(1),
            window: pick(self.window, 32, 4).max(1),
            duration: self.duration.unwrap_or(if tiny {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            }),
            load: self.load.filter(|l| *l > 0.0),
            payload: self.payload.clamp(24, 4096),
            group_size: pick(self.group_size, 1000, 4).max(2),
            connections: pick(self.connections, 19_900, 20).max(1),
            storm: pick(self.storm, 5000, 10).max(1),
            history_messages: pick(self.history_messages, 1_000_000, 2000).max(100),
            history_pages: pick(self.history_pages, 200, 5).max(1),
        }
    }
}

/// Runs the bench (or a worker) and prints the table; fails if a scenario failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(kind) = &args.worker {
        let job = match kind.as_str() {
            "idle-clients" => worker::Job::IdleClients {
                target: args
                    .worker_target
                    .ok_or_else(|| anyhow::anyhow!("--worker-target is required"))?,
                bind: args.worker_bind,
                tokens: args.worker_tokens.clone(),
                from: args.worker_from,
                count: args.worker_count,
            },
            "raw-idle-server" => worker::Job::RawIdleServer,
            "raw-login-server" => worker::Job::RawLoginServer,
            other => anyhow::bail!("unknown worker {other}"),
        };
        return worker::run(job).await;
    }
    let scenarios = if args.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenario.clone()
    };
    scenarios::run_all(&args, &scenarios).await
}
