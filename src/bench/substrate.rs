//! The substrate: the same message patterns with no chat layer, served from the bench
//! process to the same kind of client connections.
//!
//! A connection first sends a registration (1 with its name: `s<i>` a sender, `r<i>` a
//! receiver, `m<i>` a group member) and gets 2. Then, by mode:
//!
//! * [`Mode::Tcp`]: a raw tokio relay; a frame from `s<i>` goes to `r<i>` as it is.
//! * [`Mode::Js`]: a JetStream publish with ack of the frame body (file storage, same
//!   nats-server as the chat), then — `cross` — a core NATS publish to a subscriber standing
//!   for the receiving node, which writes it to `r<i>`; or — local — straight to `r<i>`.
//! * [`Mode::Fanout`]: a raw tokio writer: each 310 from the sender becomes one 312 frame,
//!   encoded once and pushed to every member's connection.
//! * [`Mode::Login`]: answers 400 with 401 and 104 with 105 `{"code":0}` (one round trip).
//!
//! Every connection has a writer task behind a bounded queue (`QUEUE` frames, far more than a
//! bench client ever lags) that writes what is queued (up to 64 KiB) in one `write`, like the
//! daemon's writer. A frame that finds the queue full is dropped and so shows up as not
//! delivered in the scenario's counts, never silently as speed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use async_nats::jetstream;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::{codec, ids, FrameCodec};

/// Subject prefix of the substrate's JetStream stream.
pub const JS_PREFIX: &str = "bench.js";
pub const JS_STREAM: &str = "BENCH_SUBSTRATE";
const NODE_SUBJECT: &str = "bench.node.b";

#[derive(Clone)]
pub enum Mode {
    Tcp,
    Js {
        js: Box<jetstream::Context>,
        /// The client standing for the sending node's bus (`Some`: cross-node).
        cross: Option<async_nats::Client>,
    },
    Fanout,
    Login,
}

type Outbox = mpsc::Sender<Bytes>;

/// Frames queued per substrate connection.
const QUEUE: usize = 65_536;

#[derive(Default)]
struct Shared {
    receivers: Mutex<HashMap<u32, Outbox>>,
    members: RwLock<Vec<Outbox>>,
}

impl Shared {
    fn deliver(&self, to: u32, frame: Bytes) {
        let r = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = r.get(&to) {
            let _ = o.try_send(frame);
        }
    }
}

/// A running substrate server.
pub struct RawServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Creates (or empties) the substrate's stream on the bench's nats-server.
pub async fn js_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let _ = js.delete_stream(JS_STREAM).await;
    js.create_stream(jetstream::stream::Config {
        name: JS_STREAM.into(),
        subjects: vec![format!("{JS_PREFIX}.>")],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

impl RawServer {
    /// `node_b`: the client whose subscription stands for the receiving node (cross-node).
    pub async fn start(mode: Mode, node_b: Option<async_nats::Client>) -> anyhow::Result<Self> {
        // The daemon's own listen call (deep backlog), so a storm compares like with like.
        let listener = crate::server::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = Arc::new(Shared::default());
        if let Some(client) = node_b {
            let mut sub = client.subscribe(NODE_SUBJECT).await?;
            let shared = shared.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = sub.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    if msg.payload.len() < 4 {
                        continue;
                    }
                    let to = u32::from_le_bytes(msg.payload[..4].try_into().expect("4 bytes"));
                    shared.deliver(to, codec::encode(ids::TEXT_MSG, &msg.payload[4..]));
                }
            });
        }
        let (stop2, tasks2) = (stop.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tasks2.spawn(serve(
                    stream,
                    mode.clone(),
                    shared.clone(),
                    stop2.clone(),
                    tasks2.clone(),
                ));
            }
        });
        Ok(RawServer { addr, stop, tasks })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.tasks.wait()).await;
    }
}

async fn writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            f = rx.recv() => f,
        };
        let Some(first) = first else { break };
        buf.extend_from_slice(&first);
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            break;
        }
        buf.clear();
    }
}

async fn serve(
    stream: TcpStream,
    mode: Mode,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = FramedRead::new(rd, FrameCodec::new(1 << 20));
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    tasks.spawn(writer(wr, rx, stop.clone()));
    let mut index: u32 = 0;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = rd.next() => f,
        };
        let Some(Ok(frame)) = frame else { break };
        match (frame.id, &mode) {
            (ids::PING, _) => {
                let name = String::from_utf8_lossy(&frame.body).to_string();
                index = name.get(1..).and_then(|n| n.parse().ok()).unwrap_or(0);
                if name.starts_with('r') {
                    shared
                        .receivers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(index, tx.clone());
                } else if name.starts_with('m') {
                    shared
                        .members
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(tx.clone());
                }
                let _ = tx.try_send(codec::encode(ids::PONG, b"pong"));
            }
            (ids::HELLO_REQ, Mode::Login) => {
                let _ = tx.try_send(codec::encode(ids::HELLO_RESP, br#"{"version":2}"#));
            }
            (ids::LOGIN_REQ, Mode::Login) => {
                let _ = tx.try_send(codec::encode(ids::LOGIN_RESP, br#"{"code":0}"#));
            }
            (ids::TEXT_MSG, Mode::Tcp) => {
                shared.deliver(index, codec::encode(ids::TEXT_MSG, &frame.body));
            }
            (ids::TEXT_MSG, Mode::Js { js, cross }) => {
                // One at a time per connection, like the daemon's reader: publish, await the ack.
                let subject = format!("{JS_PREFIX}.{index}");
                let acked = match js.publish(subject, frame.body.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if !acked {
                    let _ = tx.try_send(codec::encode(ids::ERROR, b"jetstream publish failed"));
                    continue;
                }
                match cross {
                    Some(client) => {
                        let mut payload = BytesMut::with_capacity(4 + frame.body.len());
                        payload.extend_from_slice(&index.to_le_bytes());
                        payload.extend_from_slice(&frame.body);
                        let _ = client.publish(NODE_SUBJECT, payload.freeze()).await;
                    }
                    None => shared.deliver(index, codec::encode(ids::TEXT_MSG, &frame.body)),
                }
            }
            (ids::GROUP_TEXT_REQ, Mode::Fanout) => {
                let push = codec::encode(ids::GROUP_TEXT_PUSH, &frame.body);
                let members = shared.members.read().unwrap_or_else(|e| e.into_inner());
                for m in members.iter() {
                    let _ = m.try_send(push.clone());
                }
            }
            _ => {}
        }
    }
}
