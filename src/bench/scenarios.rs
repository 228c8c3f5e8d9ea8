//! The scenarios. Each starts the daemon nodes it needs (child processes), connects its
//! clients, measures the chat path, then the same pattern through the substrate, and
//! returns a [`ScenarioReport`].

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_nats::jetstream;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{
    self, spawn_ack_reader, spawn_receiver, Conn, Counters, Plan, Sender, Target, LATENCY,
    THROUGHPUT, WARMUP,
};
use super::procs::{DaemonNode, NodeEnv, Worker};
use super::report::{table, ScenarioReport};
use super::stats::{self, CpuMeter, Latency, Percentiles};
use super::substrate::{self, Mode, RawServer};
use super::worker::Job;
use super::{BenchArgs, Scenario, Sizes};
use crate::backend::nats::{Nats, NatsSettings, NatsStore};
use crate::core::auth::Auth;
use crate::core::model::{ConvId, MessageBody, NewMessage, NewUser};
use crate::core::ports::Store;
use crate::harness::{NatsOptions, NatsServer, RedisOptions, RedisServer};
use crate::protocol::ids;

/// A bench user: created in the store, logs in with its token.
#[derive(Clone)]
pub struct BenchUser {
    pub id: u64,
    pub name: String,
    pub token: String,
}

/// What every scenario shares: the backend servers, the store, the users made so far.
pub struct Bench {
    pub sizes: Sizes,
    pub epoch: Instant,
    dir: tempfile::TempDir,
    pub nats: NatsServer,
    _redis: RedisServer,
    pub env: NodeEnv,
    store: Arc<NatsStore>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    auth: Auth,
    password_hash: String,
    made: usize,
}

fn progress(len: u64, prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

fn say(what: &str) {
    eprintln!("bench: {what}");
}

impl Bench {
    pub async fn start(sizes: Sizes) -> anyhow::Result<Bench> {
        let dir = tempfile::Builder::new().prefix("cz-bench-").tempdir()?;
        // Their logs (and the JetStream store) go in the bench's directory: `--keep-logs`
        // keeps them. `max_payload` and `maxclients` are what the bench has set since it was
        // written (its own process code did, before the shared harness).
        let nats = NatsServer::try_start_with(&NatsOptions {
            dir: Some(dir.path().to_path_buf()),
            extra_config: "max_payload: 8MB\n".into(),
        })
        .await?;
        let redis = RedisServer::try_start_with(&RedisOptions {
            dir: Some(dir.path().to_path_buf()),
            extra_args: vec!["--maxclients".into(), "1000".into()],
        })
        .await?;
        let secret_file = dir.path().join("token_secret");
        let secret = Auth::load_or_create_secret(&secret_file)?;
        let auth = Auth::new(secret, Duration::from_secs(24 * 3600), 2);
        let settings = NatsSettings {
            url: nats.url(),
            stream: "CHAT_ZINX".into(),
            replicas: 1,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
        };
        let conn = Nats::connect(&settings)
            .await
            .map_err(|e| anyhow!("bench cannot use NATS: {e}"))?;
        let client = async_nats::ConnectOptions::new()
            .name("chat-zinx-bench")
            .subscription_capacity(1 << 20)
            .connect(nats.url())
            .await?;
        let js = jetstream::new(client.clone());
        let password_hash = auth.hash_password("bench-password".into()).await?;
        let exe = std::env::current_exe().context("cannot find this binary to start nodes")?;
        let env = NodeEnv {
            exe,
            dir: dir.path().to_path_buf(),
            secret_file,
            nats_url: nats.url(),
            redis_url: redis.url(),
        };
        Ok(Bench {
            sizes,
            epoch: Instant::now(),
            dir,
            nats,
            _redis: redis,
            env,
            store: Arc::new(NatsStore(conn)),
            client,
            js,
            auth,
            password_hash,
            made: 0,
        })
    }

    /// `n` new users with tokens (written straight into the store: no Argon2 per user).
    pub async fn users(&mut self, n: usize) -> anyhow::Result<Vec<BenchUser>> {
        let first = self.made;
        self.made += n;
        let pb = progress(n as u64, "creating users");
        let now_s = (crate::core::model::now_ms() / 1000) as i64;
        let users: Vec<BenchUser> = futures_util::stream::iter(first..first + n)
            .map(|k| {
                let store = self.store.clone();
                let hash = self.password_hash.clone();
                let pb = pb.clone();
                async move {
                    let user = store
                        .create_user(NewUser {
                            uuid: uuid::Uuid::new_v4().to_string(),
                            username: format!("bench{k}"),
                            email: format!("bench{k}@bench.invalid"),
                            password_hash: hash,
                            created_at: crate::core::model::now_ms(),
                        })
                        .await
                        .map_err(|e| anyhow!("create bench user {k}: {e}"))?;
                    pb.inc(1);
                    Ok::<_, anyhow::Error>(user)
                }
            })
            .buffered(8)
            .map_ok(|u| BenchUser {
                id: u.id,
                token: self.auth.issue_token(&u, now_s),
                name: u.username,
            })
            .try_collect()
            .await?;
        pb.finish_and_clear();
        Ok(users)
    }

    pub fn start_nodes(&self, n: usize, first: usize) -> anyhow::Result<Vec<DaemonNode>> {
        (first..first + n)
            .map(|i| tokio::task::block_in_place(|| DaemonNode::start(&self.env, i, &[])))
            .collect()
    }

    fn node_pids(nodes: &[DaemonNode]) -> Vec<u32> {
        nodes.iter().map(DaemonNode::pid).collect()
    }

    fn rss(nodes: &[DaemonNode]) -> u64 {
        nodes.iter().filter_map(|n| stats::rss_bytes(n.pid())).sum()
    }
}

/// Opens `n` connections (`addr_of(i)`), each resumed with `tokens[i]` (chat) or
/// registered as `name_of(i)` (substrate).
async fn connect_many(
    n: usize,
    addr_of: impl Fn(usize) -> SocketAddr,
    login: impl Fn(usize) -> Login,
    label: &str,
) -> anyhow::Result<Vec<Conn>> {
    let pb = progress(n as u64, label);
    let conns = futures_util::stream::iter(0..n)
        .map(|i| {
            let addr = addr_of(i);
            let how = login(i);
            let pb = pb.clone();
            async move {
                let mut c = Conn::open(addr, None).await?;
                match how {
                    Login::Token(t) => c.resume(&t).await?,
                    Login::Raw(name) => c.register_raw(&name).await?,
                }
                pb.inc(1);
                Ok::<_, anyhow::Error>(c)
            }
        })
        .buffered(64)
        .try_collect()
        .await;
    pb.finish_and_clear();
    conns
}

enum Login {
    Token(String),
    Raw(String),
}

/// One phase's outcome.
#[derive(Debug, Clone, Copy, Default)]
struct PhaseStats {
    sent: u64,
    delivered: u64,
    secs: f64,
    throughput: f64,
}

/// Senders, receivers and their counters for one run (chat or substrate).
struct Flow {
    epoch: Instant,
    counters: Arc<Counters>,
    stop: CancellationToken,
    senders: Vec<Sender>,
    receivers: Vec<JoinHandle<Vec<Latency>>>,
    acks: Vec<JoinHandle<()>>,
    /// Write halves of receivers, kept open while the flow runs.
    keep: Vec<OwnedWriteHalf>,
    /// Deliveries per message.
    fanout: u64,
}

impl Flow {
    fn new(epoch: Instant, fanout: u64) -> Flow {
        Flow {
            epoch,
            counters: Arc::new(Counters::default()),
            stop: CancellationToken::new(),
            senders: Vec::new(),
            receivers: Vec::new(),
            acks: Vec::new(),
            keep: Vec::new(),
            fanout,
        }
    }

    fn add_sender(&mut self, c: Conn, target: Target, credits: Arc<Semaphore>, size: usize) {
        self.acks.push(spawn_ack_reader(
            c.rd,
            self.counters.clone(),
            self.stop.clone(),
        ));
        self.senders.push(Sender {
            wr: c.wr,
            target,
            credits,
            cost: self.fanout as u32,
            size,
            seq: 0,
        });
    }

    fn add_receiver(&mut self, c: Conn, credits: Arc<Semaphore>) {
        self.receivers.push(spawn_receiver(
            c.rd,
            self.epoch,
            credits,
            self.counters.clone(),
            self.stop.clone(),
        ));
        self.keep.push(c.wr);
    }

    /// Runs one phase: every sender for `dur` (at `total_rate` messages per second shared
    /// among them, or flat out), then waits until what was sent is delivered.
    async fn phase(
        &mut self,
        phase: u8,
        dur: Duration,
        total_rate: Option<f64>,
        max: Option<u64>,
        label: &str,
    ) -> anyhow::Result<PhaseStats> {
        let d0 = self.counters.delivered.load(Ordering::Relaxed);
        let start = Instant::now();
        let until = start + dur;
        let n = self.senders.len().max(1);
        let plan = Plan {
            phase,
            until,
            rate: total_rate.map(|r| (r / n as f64).max(0.1)),
            max,
        };
        let pb = progress(dur.as_millis() as u64, label);
        let ticker = {
            let pb = pb.clone();
            let counters = self.counters.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    pb.set_position(start.elapsed().as_millis() as u64);
                    let d = counters.delivered.load(Ordering::Relaxed) - d0;
                    pb.set_message(format!("{d} delivered"));
                }
            })
        };
        let epoch = self.epoch;
        let tasks: Vec<JoinHandle<(Sender, anyhow::Result<u64>)>> = self
            .senders
            .drain(..)
            .map(|mut s| {
                tokio::spawn(async move {
                    let r = s.run(plan, epoch).await;
                    (s, r)
                })
            })
            .collect();
        let mut sent = 0;
        let mut failure = None;
        for t in tasks {
            let (s, r) = t.await?;
            self.senders.push(s);
            match r {
                Ok(k) => sent += k,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let expected = sent * self.fanout;
        let wait_until = Instant::now() + Duration::from_secs(20);
        let mut done_at = Instant::now();
        let mut last = u64::MAX;
        loop {
            let d = self.counters.delivered.load(Ordering::Relaxed) - d0;
            if d != last {
                done_at = Instant::now();
                last = d;
            }
            if d >= expected || Instant::now() > wait_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ticker.abort();
        pb.finish_and_clear();
        if let Some(e) = failure {
            return Err(e.context(format!("{label}: a sender failed")));
        }
        let delivered = self.counters.delivered.load(Ordering::Relaxed) - d0;
        if delivered < expected {
            bail!(
                "{label}: {} of {expected} deliveries missing after 20 s ({} errors)",
                expected - delivered,
                self.counters.errors.load(Ordering::Relaxed)
            );
        }
        let secs = done_at.duration_since(start).as_secs_f64().max(1e-6);
        Ok(PhaseStats {
            sent,
            delivered,
            secs,
            throughput: delivered as f64 / secs,
        })
    }

    /// Stops the receivers; the latency histograms by phase.
    async fn finish(self) -> (Vec<Latency>, u64) {
        self.stop.cancel();
        let mut merged = vec![Latency::default(); client::PHASES];
        for r in self.receivers {
            if let Ok(h) = r.await {
                for (m, x) in merged.iter_mut().zip(&h) {
                    m.merge(x);
                }
            }
        }
        for a in self.acks {
            let _ = a.await;
        }
        (merged, self.counters.errors.load(Ordering::Relaxed))
    }
}

/// The result of running one flow through warm-up, max load and a paced phase.
struct FlowResult {
    max: PhaseStats,
    paced: PhaseStats,
    max_hist: Percentiles,
    paced_hist: Percentiles,
    errors: u64,
    cpu: f64,
    nats_cpu: f64,
}

/// Warm-up, then flat out for `dur` (throughput), then `dur` at `paced` (or at half of the
/// measured throughput) for latency.
async fn drive(
    mut flow: Flow,
    dur: Duration,
    paced: Option<f64>,
    cpu_pids: &[u32],
    nats_pid: u32,
    label: &str,
) -> anyhow::Result<FlowResult> {
    flow.phase(
        WARMUP,
        Duration::from_secs(30),
        None,
        Some(3),
        &format!("{label} warm-up"),
    )
    .await?;
    let cpu = CpuMeter::start(cpu_pids);
    let nats_cpu = CpuMeter::start(&[nats_pid]);
    let max = flow
        .phase(THROUGHPUT, dur, None, None, &format!("{label} max load"))
        .await?;
    let (cpu, nats_cpu) = (cpu.percent(), nats_cpu.percent());
    // Rates are in messages sent; the phase measures deliveries.
    let rate = paced.unwrap_or(max.throughput / 2.0) / flow.fanout as f64;
    let paced = flow
        .phase(
            LATENCY,
            dur,
            Some(rate.max(1.0)),
            None,
            &format!("{label} {:.0}/s", rate * flow.fanout as f64),
        )
        .await?;
    let (hist, errors) = flow.finish().await;
    Ok(FlowResult {
        max,
        paced,
        max_hist: hist[THROUGHPUT as usize].summary(),
        paced_hist: hist[LATENCY as usize].summary(),
        errors,
        cpu,
        nats_cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// p2p-local, p2p-cross
// ---------------------------------------------------------------------------------------------

async fn p2p(b: &mut Bench, cross: bool) -> anyhow::Result<ScenarioReport> {
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

// ---------------------------------------------------------------------------------------------
// group-fanout
// ---------------------------------------------------------------------------------------------

async fn group_fanout(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
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

// ---------------------------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------------------------

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

/// Loopback source addresses of the bench's client sockets, `127.0.<block>.<n>`: each group of
/// connections gets addresses no other group used. A client socket bound to an address before
/// it connects needs a local port that is free for *every* destination, so ports still in
/// TIME_WAIT from an earlier group would make the kernel search (and fail) for free ports:
/// the storm after `idle` took 5 – 6.5 s for both chat-zinx and the substrate that way.
mod source {
    /// `idle`, chat-zinx: 127.0.1.2, .3, …
    pub const IDLE_CHAT: u8 = 1;
    /// `idle`, the raw server: 127.0.2.2, .3, …
    pub const IDLE_RAW: u8 = 2;
    /// `login-storm`: chat-zinx from 127.0.3.2, the raw server from 127.0.3.3.
    pub const STORM: u8 = 3;
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

async fn idle(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
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

// ---------------------------------------------------------------------------------------------
// login-storm
// ---------------------------------------------------------------------------------------------

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

async fn login_storm(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
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

// ---------------------------------------------------------------------------------------------
// history
// ---------------------------------------------------------------------------------------------

async fn history(b: &mut Bench) -> anyhow::Result<ScenarioReport> {
    let s = b.sizes.clone();
    let mut report = ScenarioReport::new("history");
    let nodes = b.start_nodes(1, 0)?;
    let user = b.users(1).await?.remove(0);
    let mut conn = Conn::open(nodes[0].addr, None).await?;
    conn.resume(&user.token).await?;
    let mut gids = Vec::new();
    for name in ["bench-early", "bench-spread", "bench-late"] {
        conn.send_json(
            ids::CREATE_GROUP_REQ,
            &json!({"name": name, "description": "bench"}),
        )
        .await?;
        let r = conn.expect(ids::CREATE_GROUP_RESP).await?;
        gids.push(
            r["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("create group: {r}"))?,
        );
    }
    let (early, spread, late) = (gids[0], gids[1], gids[2]);
    let tail =
        b.js.get_stream("CHAT_ZINX")
            .await?
            .info()
            .await?
            .state
            .last_sequence;

    // Fill through the daemon's own store code (`NatsStore::append`), one append at a time
    // per conversation and many conversations at once: the records and their `prev` links
    // are exactly what the daemon writes.
    let edge = 200usize.min(s.history_messages / 10);
    let bulk = s.history_messages - 2 * edge;
    let convs = 256usize;
    let fill_start = Instant::now();
    let pb = progress(s.history_messages as u64, "filling the log");
    let uid = user.id;
    let append = |group: u64, n: usize, pb: ProgressBar| {
        let store = b.store.clone();
        let payload = s.payload;
        async move {
            let mut seqs = Vec::with_capacity(n);
            for i in 0..n {
                let msg = NewMessage {
                    msg_id: uuid::Uuid::new_v4().to_string(),
                    conv: ConvId::Group(group),
                    sender_id: uid,
                    sender_uuid: String::new(),
                    sender_name: "bench".into(),
                    timestamp: crate::core::model::now_ms(),
                    body: MessageBody::Group {
                        group_id: group,
                        content: client::stamp(9, i as u64, payload),
                    },
                };
                let a = store
                    .append(msg, None)
                    .await
                    .map_err(|e| anyhow!("append: {e}"))?;
                seqs.push(a.message.seq);
                pb.inc(1);
            }
            Ok::<_, anyhow::Error>(seqs)
        }
    };
    append(early, edge, pb.clone()).await?;
    let per = bulk / convs;
    let mut tasks = Vec::new();
    for k in 0..convs {
        let group = if k == 0 {
            spread
        } else {
            10_000_000 + k as u64
        };
        let n = if k == 0 { per + bulk % convs } else { per };
        tasks.push(tokio::spawn(append(group, n, pb.clone())));
    }
    let mut spread_seqs = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        let seqs = t.await??;
        if k == 0 {
            spread_seqs = seqs;
        }
    }
    append(late, edge, pb.clone()).await?;
    pb.finish_and_clear();
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let stream_last =
        b.js.get_stream("CHAT_ZINX")
            .await?
            .info()
            .await?
            .state
            .last_sequence;
    // Deep in the spread conversation: a page that starts near the beginning of the log.
    let deep = spread_seqs
        .get(40.min(spread_seqs.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);

    let probes = [
        ("early_newest", early, 0u64),
        ("late_newest", late, 0),
        ("spread_newest", spread, 0),
        ("spread_near_start", spread, deep),
    ];
    let limit = 20u64;
    let stream = b.js.get_stream("CHAT_ZINX").await?;
    let mut chat_all = Latency::default();
    let mut sub_all = Latency::default();
    let (mut chat_msgs, mut chat_secs, mut sub_msgs, mut sub_secs) = (0u64, 0f64, 0u64, 0f64);
    let mut per_probe = serde_json::Map::new();
    for (label, gid, last_id) in probes {
        let mut h = Latency::default();
        let mut n_msgs = 0u64;
        let pb = progress(s.history_pages as u64, &format!("history {label}"));
        let t0 = Instant::now();
        for _ in 0..s.history_pages {
            let t = Instant::now();
            conn.send_json(
                ids::GROUP_HISTORY_REQ,
                &json!({"group_id": gid, "last_id": last_id, "limit": limit}),
            )
            .await?;
            let r = conn.expect(ids::GROUP_HISTORY_RESP).await?;
            h.record(t.elapsed());
            let got = r["messages"].as_array().map_or(0, Vec::len) as u64;
            if got == 0 {
                bail!("history {label} returned no messages: {r}");
            }
            n_msgs += got;
            pb.inc(1);
        }
        chat_secs += t0.elapsed().as_secs_f64();
        chat_msgs += n_msgs;
        pb.finish_and_clear();
        // The same reads straight on JetStream: the newest before the cursor, then `prev`.
        let subject = format!("cz.log.g.{gid}");
        let mut sh = Latency::default();
        let t0 = Instant::now();
        for _ in 0..s.history_pages {
            let t = Instant::now();
            let first = if last_id == 0 {
                stream.direct_get_last_for_subject(&subject).await?
            } else {
                let m = stream
                    .direct_get_next_for_subject(&subject, Some(last_id))
                    .await?;
                let prev = prev_of(&m.payload)?;
                stream.direct_get(prev).await?
            };
            let mut next = prev_of(&first.payload)?;
            let mut got = 1;
            while next != 0 && got < limit {
                let m = stream.direct_get(next).await?;
                next = prev_of(&m.payload)?;
                got += 1;
            }
            sh.record(t.elapsed());
            sub_msgs += got;
        }
        sub_secs += t0.elapsed().as_secs_f64();
        let (c, x) = (h.summary(), sh.summary());
        per_probe.insert(
            label.into(),
            json!({"group_id": gid, "last_id": last_id, "p50_us": c.p50_us, "p99_us": c.p99_us,
                   "substrate_p50_us": x.p50_us, "substrate_p99_us": x.p99_us}),
        );
        chat_all.merge(&h);
        sub_all.merge(&sh);
    }
    report.daemon_rss_bytes = Bench::rss(&nodes);
    drop(conn);
    drop(nodes);

    report.nodes = 1;
    report.clients = 1;
    report.delivered = chat_msgs;
    report.throughput_msgs_per_s = chat_msgs as f64 / chat_secs.max(1e-9);
    report.latency(chat_all.summary());
    report.substrate =
        "direct gets on JetStream: last/next by subject, then the prev links (no chat layer)"
            .into();
    report.substrate_throughput_msgs_per_s = sub_msgs as f64 / sub_secs.max(1e-9);
    report.substrate_latency(sub_all.summary());
    report.extra("log_messages", stream_last);
    report.extra("filled_messages", s.history_messages);
    report.extra("fill_msgs_per_s", (stream_last - tail) as f64 / fill_secs);
    report.extra("fill_seconds", fill_secs);
    report.extra("page_size", limit);
    report.extra("probes", Value::Object(per_probe));
    Ok(report)
}

fn prev_of(payload: &[u8]) -> anyhow::Result<u64> {
    let v: Value = serde_json::from_slice(payload)?;
    v["prev"]
        .as_u64()
        .ok_or_else(|| anyhow!("a log record without prev"))
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

async fn one(b: &mut Bench, scenario: Scenario) -> anyhow::Result<ScenarioReport> {
    let start = Instant::now();
    let mut r = match scenario {
        Scenario::P2pLocal => p2p(b, false).await?,
        Scenario::P2pCross => p2p(b, true).await?,
        Scenario::GroupFanout => group_fanout(b).await?,
        Scenario::Idle => idle(b).await?,
        Scenario::LoginStorm => login_storm(b).await?,
        Scenario::History => history(b).await?,
    };
    r.ratios();
    r.loadavg = stats::loadavg();
    r.elapsed_s = start.elapsed().as_secs_f64();
    Ok(r)
}

pub async fn run_all(args: &BenchArgs, scenarios: &[Scenario]) -> anyhow::Result<()> {
    let sizes = args.sizes();
    let (cores, mem) = stats::machine();
    say(&format!(
        "{cores} cores, {:.1} GiB, load {:.2}; scenarios: {}",
        mem as f64 / (1u64 << 30) as f64,
        stats::loadavg(),
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut bench = Bench::start(sizes).await?;
    let mut json_out: Option<Box<dyn Write>> = match &args.json {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
    };
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for &s in scenarios {
        say(&format!("{} …", s.name()));
        match one(&mut bench, s).await {
            Ok(r) => {
                if let Some(out) = json_out.as_mut() {
                    writeln!(out, "{}", serde_json::to_string(&r)?)?;
                    out.flush()?;
                }
                say(&format!(
                    "{}: {:.0}/s (substrate {:.0}/s, ratio {:.2}), p99 {} µs",
                    r.scenario,
                    r.throughput_msgs_per_s,
                    r.substrate_throughput_msgs_per_s,
                    r.ratio,
                    r.p99_us
                ));
                reports.push(r);
            }
            Err(e) => {
                say(&format!("{} FAILED: {e:#}", s.name()));
                failed.push(s.name());
            }
        }
    }
    let summary = table(&reports);
    if args.json.as_ref().is_some_and(|p| p.as_os_str() == "-") {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if args.keep_logs {
        let Bench { dir, .. } = bench;
        let kept = dir.keep();
        say(&format!("logs kept in {}", kept.display()));
    } else {
        drop(bench);
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
