//! The measuring machinery of the message scenarios, for chat-zinx and the substrate alike:
//! open many logged-in connections, wire them into a [`Flow`] of senders and receivers, and
//! [`drive`] it through warm-up, a flat-out phase (throughput) and a paced phase (latency).
//!
//! Senders take credits from a window that receivers give back on delivery, so a flat-out
//! phase measures what the server sustains rather than how deep its queues grow; a phase ends
//! only when everything sent was delivered (or reports what is missing).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{StreamExt, TryStreamExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::progress;
use crate::bench::client::{
    self, spawn_ack_reader, spawn_receiver, Conn, Counters, Plan, Sender, Target, LATENCY,
    THROUGHPUT, WARMUP,
};
use crate::bench::stats::{CpuMeter, Latency, Percentiles};

/// Opens `n` connections (`addr_of(i)`), each resumed with `tokens[i]` (chat) or
/// registered as `name_of(i)` (substrate).
pub(super) async fn connect_many(
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

pub(super) enum Login {
    Token(String),
    Raw(String),
}

/// One phase's outcome.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PhaseStats {
    pub(super) sent: u64,
    pub(super) delivered: u64,
    pub(super) secs: f64,
    pub(super) throughput: f64,
}

/// Senders, receivers and their counters for one run (chat or substrate).
pub(super) struct Flow {
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
    pub(super) fn new(epoch: Instant, fanout: u64) -> Flow {
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

    pub(super) fn add_sender(
        &mut self,
        c: Conn,
        target: Target,
        credits: Arc<Semaphore>,
        size: usize,
    ) {
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

    pub(super) fn add_receiver(&mut self, c: Conn, credits: Arc<Semaphore>) {
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
pub(super) struct FlowResult {
    pub(super) max: PhaseStats,
    pub(super) paced: PhaseStats,
    pub(super) max_hist: Percentiles,
    pub(super) paced_hist: Percentiles,
    pub(super) errors: u64,
    pub(super) cpu: f64,
    pub(super) nats_cpu: f64,
}

/// Warm-up, then flat out for `dur` (throughput), then `dur` at `paced` (or at half of the
/// measured throughput) for latency.
pub(super) async fn drive(
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
