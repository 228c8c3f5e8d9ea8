//! The wire adapter: the TCP and TLS listeners, one reader task and one writer task per connection,
//! the local hub of connections. It turns frames into calls of the core and the core's
//! results into frames. The mapping to the wire lives here, not in the core and not in
//! `crate::protocol` (which knows bytes and shapes): domain values in [`wire`], domain errors
//! to codes and the original server's texts in [`errors`].
//!
//! The node (`crate::node`) builds the context every connection shares ([`ServerCtx`]) and
//! runs [`accept_loop`] on its task tracker, once per listener: plain, and TLS ([`tls`]) whose
//! connections, once their handshake is done, run exactly the same connection code
//! ([`stream`] hides which one a connection is).

pub mod admission;
pub mod budget;
pub mod connection;
pub mod drain;
pub mod errors;
pub mod hub;
pub mod outbox;
pub mod probe;
pub mod proxy;
pub mod sends;
pub mod session;
pub mod shared;
pub mod stream;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::core::ChatCore;
use crate::telemetry::metrics::Metrics;
use hub::Hub;
use probe::ProbeRequests;

/// Connection settings that apply to new frames and connections at once when changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnSettings {
    pub max_body: usize,
    pub idle_timeout: Duration,
    pub write_queue: usize,
    /// Bytes queued towards one connection at most (`protocol.write_queue_bytes`).
    pub write_queue_bytes: usize,
    /// Bytes of one history or sync reply at most, beyond its first item
    /// (`protocol.max_reply_bytes`).
    pub max_reply_bytes: usize,
    /// Bytes queued towards all connections of the node at most
    /// (`server.write_queue_budget`).
    pub write_queue_budget: u64,
    pub write_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_connections: u64,
    /// Connections not logged in at most, node-wide (`server.max_unauthenticated`; 0: a
    /// tenth of `max_connections`, see [`admission`]).
    pub max_unauthenticated: u64,
    /// Of those, from one address (`server.max_unauthenticated_per_address`; 0: no limit).
    pub max_unauthenticated_per_address: u32,
    /// A connection not logged in this long after it was accepted (or logged out) is closed
    /// (`protocol.login_timeout`).
    pub login_timeout: Duration,
    /// The proxies whose connections start with a PROXY header naming the client
    /// (`server.proxy_protocol_from`; empty: none, see [`proxy`]). Shared: a settings copy
    /// costs no allocation.
    pub proxy_from: Arc<proxy::TrustedProxies>,
}

impl ConnSettings {
    pub fn admission(&self) -> admission::AdmissionLimits {
        admission::AdmissionLimits::new(
            self.max_connections,
            self.max_unauthenticated,
            self.max_unauthenticated_per_address,
        )
    }
}

/// What every connection task shares.
pub struct ServerCtx {
    pub core: Arc<ChatCore>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    settings: RwLock<ConnSettings>,
    /// Open connections (logged in or not).
    pub open: AtomicU64,
    /// Set by a drain: the 406 frame for v2 connections closed at shutdown.
    pub redirect: RwLock<Option<bytes::Bytes>>,
    /// Bytes queued towards every connection, and their limit (see [`budget`]).
    pub budget: Arc<budget::WriteBudget>,
    /// Connections that have not logged in (see [`admission`]).
    pub admission: Arc<admission::Admission>,
    /// Drained by an operator (admin API) while the process keeps running: new connections
    /// and connections that have not logged in are sent elsewhere.
    draining: std::sync::atomic::AtomicBool,
}

impl ServerCtx {
    pub fn new(
        core: Arc<ChatCore>,
        hub: Arc<Hub>,
        metrics: Metrics,
        settings: ConnSettings,
    ) -> Self {
        ServerCtx {
            core,
            hub,
            metrics,
            budget: Arc::new(budget::WriteBudget::new(settings.write_queue_budget)),
            settings: RwLock::new(settings),
            open: AtomicU64::new(0),
            redirect: RwLock::new(None),
            admission: Arc::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an operator drained this node (see [`Self::set_draining`]).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Drains the node (`true`: new connections and those not logged in are sent elsewhere)
    /// or takes it back into service. Returns the previous value.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::Relaxed)
    }

    pub fn settings(&self) -> ConnSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: ConnSettings) {
        self.budget.set_limit(s.write_queue_budget);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// Grace period during which a closed user stays in the local group index.
pub const TOMBSTONE_GRACE: Duration = Duration::from_secs(10);

/// How often online users' delivery cursors are saved (must exceed the writer's 2 s
/// uncertain window, see `connection::UNCERTAIN_WINDOW`).
pub const CURSOR_FLUSH: Duration = Duration::from_secs(5);

/// What a listener's connections speak below the chat protocol.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// TLS: each connection is served once its handshake is done within the timeout.
    Tls {
        server: Arc<tls::TlsServer>,
        handshake_timeout: Duration,
    },
}

/// Connection ids, unique across the node's listeners.
#[derive(Default)]
pub struct ConnIds(AtomicU64);

impl ConnIds {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// One listener's accept loop and what it shares with the node's other listener.
pub struct AcceptLoop {
    pub listener: TcpListener,
    pub transport: Transport,
    /// The health probes (watchdog, `/ready`) this loop answers: one loop of the node does.
    pub probes: Option<ProbeRequests>,
    pub ids: Arc<ConnIds>,
}

/// The next probe of `probes`; never, when this loop answers none.
async fn next_probe(
    probes: &mut Option<ProbeRequests>,
) -> Option<tokio::sync::oneshot::Sender<()>> {
    match probes {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections until `accepting` is cancelled and serves each on its own task (owned
/// by `tasks`), answering the health probes, if it has them, between two accepts. A TLS
/// connection counts against `server.max_connections` from its TCP accept on, handshake
/// included, exactly as a plain one.
pub async fn accept_loop(
    accept: AcceptLoop,
    ctx: Arc<ServerCtx>,
    accepting: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let AcceptLoop {
        listener,
        transport,
        mut probes,
        ids,
    } = accept;
    loop {
        let accepted = tokio::select! {
            _ = accepting.cancelled() => break,
            // Health probe (watchdog, /ready): answering proves this loop is polled.
            Some(reply) = next_probe(&mut probes) => {
                let _ = reply.send(());
                continue;
            }
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past `max_connections` a connection is still taken (up to a headroom), so that a v2
        // client can be redirected to a less loaded node (406) instead of being cut off.
        let settings = ctx.settings();
        let max = settings.max_connections;
        if ctx.open.load(Ordering::Relaxed) >= max + max / 10 + 16 {
            ctx.metrics.connection_refused();
            drop(stream);
            continue;
        }
        ctx.metrics.connection_accepted();
        ctx.open.fetch_add(1, Ordering::Relaxed);
        let conn_id = ids.next();
        // A trusted proxy's connection starts with a PROXY header naming the client.
        let proxied = settings.proxy_from.trusts(peer.ip());
        match &transport {
            Transport::Plain if !proxied => spawn_connection(
                stream::ConnStream::Plain(stream),
                peer,
                conn_id,
                &ctx,
                &shutdown,
                &tasks,
            ),
            Transport::Plain => {
                // On a task of its own, as a TLS handshake: a proxy that is slow to send the
                // header holds up neither this loop nor the connection's own future. Within
                // the login deadline.
                let (ctx, shutdown, tasks2) = (ctx.clone(), shutdown.clone(), tasks.clone());
                let wait = settings.login_timeout;
                tasks.spawn(async move {
                    let mut stream = stream;
                    let read = async {
                        let deadline = tokio::time::Instant::now() + wait;
                        let header =
                            tokio::time::timeout_at(deadline, proxy::read_header(&mut stream));
                        proxied_peer(header.await, peer, conn_id, wait, &ctx)
                    };
                    let client = tokio::select! {
                        r = read => r,
                        _ = shutdown.cancelled() => None,
                    };
                    match client {
                        Some(client) => spawn_connection(
                            stream::ConnStream::Plain(stream),
                            client,
                            conn_id,
                            &ctx,
                            &shutdown,
                            &tasks2,
                        ),
                        None => {
                            ctx.open.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            Transport::Tls {
                server,
                handshake_timeout,
            } => {
                // The handshake runs on a task of its own, which hands the connection to the
                // task serving it: a slow handshake holds up neither this loop nor the
                // connection's own (long-lived) future. A trusted proxy's PROXY header comes
                // first, in plain text, within the same deadline.
                // Small handshake flights and frames: no Nagle delay from the start.
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let (ctx, shutdown, tasks2) = (ctx.clone(), shutdown.clone(), tasks.clone());
                let timeout = *handshake_timeout;
                tasks.spawn(async move {
                    let setup = async {
                        let mut stream = stream;
                        let deadline = tokio::time::Instant::now() + timeout;
                        let client = if proxied {
                            let header =
                                tokio::time::timeout_at(deadline, proxy::read_header(&mut stream));
                            proxied_peer(header.await, peer, conn_id, timeout, &ctx)?
                        } else {
                            peer
                        };
                        let handshake = server.acceptor().accept(stream);
                        match tokio::time::timeout_at(deadline, handshake).await {
                            Ok(Ok(tls)) => Some((tls, client)),
                            Ok(Err(e)) => {
                                ctx.metrics.tls_handshake_failed();
                                debug!(conn_id, error = %e, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                ctx.metrics.tls_handshake_failed();
                                debug!(conn_id, ?timeout, "TLS handshake timed out");
                                None
                            }
                        }
                    };
                    let done = tokio::select! {
                        r = setup => r,
                        _ = shutdown.cancelled() => None,
                    };
                    match done {
                        Some((tls, client)) => spawn_connection(
                            stream::ConnStream::Tls(Box::new(tls)),
                            client,
                            conn_id,
                            &ctx,
                            &shutdown,
                            &tasks2,
                        ),
                        None => {
                            ctx.open.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
    }
}

/// The peer of a trusted proxy's connection from its PROXY header (`read`, within `wait`):
/// the client's address, or the proxy's own for `LOCAL`; `None` when the connection must be
/// closed (no valid header in time), which is logged and counted.
fn proxied_peer(
    read: Result<Result<proxy::Header, proxy::ProxyError>, tokio::time::error::Elapsed>,
    proxy_addr: SocketAddr,
    conn_id: u64,
    wait: Duration,
    ctx: &ServerCtx,
) -> Option<SocketAddr> {
    match read {
        Ok(Ok(proxy::Header::Proxied(client))) => {
            debug!(conn_id, proxy = %proxy_addr, %client, "PROXY header read");
            Some(client)
        }
        Ok(Ok(proxy::Header::Local)) => Some(proxy_addr),
        Ok(Err(e)) => {
            ctx.metrics.proxy_header_refused(e.reason());
            if e.reason() == "closed" {
                debug!(conn_id, proxy = %proxy_addr, error = %e, "connection from a trusted proxy closed before its PROXY header");
            } else {
                warn!(conn_id, proxy = %proxy_addr, error = %e, "connection from a trusted proxy (server.proxy_protocol_from) closed: no valid PROXY header");
            }
            None
        }
        Err(_) => {
            ctx.metrics.proxy_header_refused("timeout");
            warn!(conn_id, proxy = %proxy_addr, ?wait, "connection from a trusted proxy (server.proxy_protocol_from) closed: no PROXY header in time");
            None
        }
    }
}

/// Spawns the task serving an accepted connection (already counted in `ctx.open`; the task
/// uncounts it when it ends).
fn spawn_connection(
    stream: stream::ConnStream,
    peer: SocketAddr,
    conn_id: u64,
    ctx: &Arc<ServerCtx>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) {
    let ctx2 = ctx.clone();
    // `map`, not an `async` block that awaits it: that would hold the connection's future
    // twice for as long as the connection lives.
    tasks.spawn(
        connection::serve(stream, peer, conn_id, ctx.clone(), shutdown.clone()).map(move |()| {
            ctx2.open.fetch_sub(1, Ordering::Relaxed);
        }),
    );
}

/// Pending connections the kernel keeps per listener. Tokio's default (1 024) makes a burst of
/// reconnects after a node loss wait for SYN retries (1 s, 3 s); see docs/benchmarks.md.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` (IP and port, or a name resolving to some) with `SO_REUSEADDR` and a deep
/// backlog. The bench's substrate servers listen the same way, so a storm compares like
/// with like.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}
