//! The bench's client side: raw-frame connections, stamped messages, and the sender and
//! receiver tasks shared by the chat runs and the substrate runs (the same bytes go over the
//! same kind of socket; only the server differs).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::stats::Latency;
use crate::protocol::{codec, ids, Frame, FrameCodec};

/// How long a request of the set-up may take before the bench gives up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Phases a message can belong to (its stamp carries the phase).
pub const PHASES: usize = 3;
pub const WARMUP: u8 = 0;
pub const THROUGHPUT: u8 = 1;
pub const LATENCY: u8 = 2;

/// Opens a TCP connection, from `bind` (a loopback source address) when given.
pub async fn tcp(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A raw-frame connection.
pub struct Conn {
    pub rd: FramedRead<OwnedReadHalf, FrameCodec>,
    pub wr: OwnedWriteHalf,
}

impl Conn {
    pub async fn open(addr: SocketAddr, bind: Option<IpAddr>) -> anyhow::Result<Conn> {
        let stream = tcp(addr, bind)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let (rd, wr) = stream.into_split();
        Ok(Conn {
            rd: FramedRead::new(rd, FrameCodec::client()),
            wr,
        })
    }

    pub async fn send(&mut self, id: u32, body: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(&codec::encode(id, body)).await
    }

    pub async fn send_json(&mut self, id: u32, body: &Value) -> std::io::Result<()> {
        self.send(id, body.to_string().as_bytes()).await
    }

    pub async fn recv(&mut self) -> anyhow::Result<Frame> {
        match tokio::time::timeout(REPLY_TIMEOUT, self.rd.next()).await {
            Ok(Some(Ok(f))) => Ok(f),
            Ok(Some(Err(e))) => Err(anyhow!("bad frame from the server: {e}")),
            Ok(None) => bail!("the server closed the connection"),
            Err(_) => bail!("no answer within {REPLY_TIMEOUT:?}"),
        }
    }

    /// The next frame with id `id` as JSON, skipping pushes and other frames; a 99 is an error.
    pub async fn expect(&mut self, id: u32) -> anyhow::Result<Value> {
        loop {
            let f = self.recv().await?;
            if f.id == id {
                return serde_json::from_slice(&f.body)
                    .with_context(|| format!("reply {id} is not JSON"));
            }
            if f.id == ids::ERROR {
                bail!(
                    "server error while waiting for {id}: {}",
                    String::from_utf8_lossy(&f.body)
                );
            }
        }
    }

    /// v2 hello and a token login (a resume): what every bench client does instead of a
    /// password login (Argon2id costs tens of milliseconds per login).
    pub async fn resume(&mut self, token: &str) -> anyhow::Result<()> {
        self.send_json(ids::HELLO_REQ, &json!({"version": 2, "client": "bench/1"}))
            .await?;
        self.expect(ids::HELLO_RESP).await?;
        self.send_json(ids::LOGIN_REQ, &json!({ "token": token }))
            .await?;
        let r = self.expect(ids::LOGIN_RESP).await?;
        if r["code"] != 0 {
            bail!("token login refused: {r}");
        }
        Ok(())
    }

    /// Identifies this connection to a substrate server (see `substrate`).
    pub async fn register_raw(&mut self, name: &str) -> anyhow::Result<()> {
        self.send(ids::PING, name.as_bytes()).await?;
        let f = self.recv().await?;
        if f.id != ids::PONG {
            bail!("substrate server answered {} to a registration", f.id);
        }
        Ok(())
    }
}

/// Nanoseconds since the bench's epoch, as stamped into message contents.
pub fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A message content: `B<phase><20-digit ns>` padded with `x` to `size` bytes.
pub fn stamp(phase: u8, ns: u64, size: usize) -> String {
    let mut s = format!("B{phase}{ns:020}");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// (phase, stamped ns) of a content the bench wrote.
pub fn parse_stamp(content: &str) -> Option<(u8, u64)> {
    let rest = content.strip_prefix('B')?;
    let phase = rest.get(..1)?.parse().ok()?;
    let ns = rest.get(1..21)?.parse().ok()?;
    Some((phase, ns))
}

#[derive(Deserialize)]
struct Pushed {
    #[serde(default)]
    content: String,
}

/// Counters shared by the receivers of one run.
#[derive(Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

/// Reads pushes (208/312) until `stop` or the end of the connection, recording the latency of
/// each stamped message by phase and returning one credit per message to `credits`.
pub fn spawn_receiver(
    mut rd: FramedRead<OwnedReadHalf, FrameCodec>,
    epoch: Instant,
    credits: Arc<Semaphore>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> JoinHandle<Vec<Latency>> {
    tokio::spawn(async move {
        let mut hist = vec![Latency::default(); PHASES];
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                f = rd.next() => f,
            };
            let Some(Ok(frame)) = frame else {
                if !stop.is_cancelled() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            };
            match frame.id {
                ids::TEXT_MSG | ids::GROUP_TEXT_PUSH => {
                    let now = now_ns(epoch);
                    let Ok(p) = serde_json::from_slice::<Pushed>(&frame.body) else {
                        continue;
                    };
                    let Some((phase, sent)) = parse_stamp(&p.content) else {
                        continue;
                    };
                    if let Some(h) = hist.get_mut(phase as usize) {
                        h.record(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    credits.add_permits(1);
                }
                ids::ERROR => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        hist
    })
}

/// Reads what a sender gets back (402 acks, 311 acks, errors) and counts the failures.
pub fn spawn_ack_reader(
    mut rd: FramedRead<OwnedReadHalf, FrameCodec>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                f = rd.next() => f,
            };
            let Some(Ok(frame)) = frame else {
                if !stop.is_cancelled() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            };
            let failed = match frame.id {
                ids::ERROR => true,
                ids::SEND_ACK | ids::GROUP_TEXT_ACK => {
                    let v: Value = serde_json::from_slice(&frame.body).unwrap_or(Value::Null);
                    v.get("code").and_then(Value::as_u64).unwrap_or(0) != 0
                        || v.get("status").and_then(Value::as_u64).unwrap_or(0) != 0
                }
                _ => false,
            };
            if failed {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// What a sender sends.
#[derive(Clone)]
pub enum Target {
    /// 208 to a user (id, uuid or name).
    Direct(String),
    /// 310 to a group.
    Group(u64),
}

/// One sending connection with its flow-control window.
pub struct Sender {
    pub wr: OwnedWriteHalf,
    pub target: Target,
    /// Credits: a message costs `cost` of them; receivers give one back per delivery.
    pub credits: Arc<Semaphore>,
    pub cost: u32,
    pub size: usize,
    pub seq: u64,
}

/// How one phase sends.
#[derive(Clone, Copy)]
pub struct Plan {
    pub phase: u8,
    pub until: Instant,
    /// Messages per second for this sender; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// At most this many messages.
    pub max: Option<u64>,
}

/// How long a sender waits for a credit before it calls the run stalled.
const STALL: Duration = Duration::from_secs(20);

impl Sender {
    fn body(&mut self, content: &str) -> (u32, Vec<u8>) {
        self.seq += 1;
        match &self.target {
            Target::Direct(to) => (
                ids::TEXT_MSG,
                format!(
                    r#"{{"to_user_id":"{to}","content":"{content}","client_msg_id":"b{}"}}"#,
                    self.seq
                )
                .into_bytes(),
            ),
            Target::Group(g) => (
                ids::GROUP_TEXT_REQ,
                format!(
                    r#"{{"group_id":{g},"content":"{content}","client_msg_id":"b{}"}}"#,
                    self.seq
                )
                .into_bytes(),
            ),
        }
    }

    /// Sends until the plan's deadline; returns the number of messages sent. With a rate,
    /// each message is stamped with the time it was due (not when the window let it go), so
    /// a stalled system shows in the latency instead of hiding it.
    pub async fn run(&mut self, plan: Plan, epoch: Instant) -> anyhow::Result<u64> {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut batch = Vec::new();
        loop {
            if Instant::now() >= plan.until || plan.max.is_some_and(|m| sent >= m) {
                break;
            }
            let due = match plan.rate {
                Some(r) => {
                    let due = start + Duration::from_secs_f64(sent as f64 / r);
                    if due >= plan.until {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    Some(due)
                }
                None => None,
            };
            match tokio::time::timeout(STALL, self.credits.acquire_many(self.cost)).await {
                Ok(Ok(p)) => p.forget(),
                Ok(Err(_)) => bail!("credits closed"),
                Err(_) => bail!("stalled: no delivery for {STALL:?} (messages lost?)"),
            }
            let ns = match due {
                Some(d) => d.saturating_duration_since(epoch).as_nanos() as u64,
                None => now_ns(epoch),
            };
            let content = stamp(plan.phase, ns, self.size);
            let (id, body) = self.body(&content);
            batch.clear();
            batch.extend_from_slice(&codec::encode(id, &body));
            self.wr.write_all(&batch).await.context("send")?;
            sent += 1;
        }
        Ok(sent)
    }
}
