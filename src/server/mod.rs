//! The wire adapter: the TCP listener, one reader task and one writer task per connection,
//! the local hub of connections. It turns frames into calls of the core and the core's
//! results into frames. The mapping to the wire lives here, not in the core and not in
//! `crate::protocol` (which knows bytes and shapes): domain values in [`wire`], domain errors
//! to codes and the original server's texts in [`errors`].
//!
//! The node (`crate::node`) builds the context every connection shares ([`ServerCtx`]) and
//! runs [`accept_loop`] on its task tracker.

pub mod admission;
pub mod budget;
pub mod connection;
pub mod drain;
pub mod errors;
pub mod hub;
pub mod outbox;
pub mod probe;
pub mod sends;
pub mod session;
pub mod shared;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

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
        }
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

/// Accepts connections until `accepting` is cancelled and serves each on its own task (owned
/// by `tasks`), answering the health probes of `probes` between two accepts.
pub async fn accept_loop(
    listener: TcpListener,
    mut probes: ProbeRequests,
    ctx: Arc<ServerCtx>,
    accepting: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let next_id = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            _ = accepting.cancelled() => break,
            // Health probe (watchdog, /ready): answering proves this loop is polled.
            Some(reply) = probes.next() => {
                let _ = reply.send(());
                continue;
            }
            r = listener.accept() => r,
        };
        let (stream, _peer) = match accepted {
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
        let max = ctx.settings().max_connections;
        if ctx.open.load(Ordering::Relaxed) >= max + max / 10 + 16 {
            ctx.metrics.connection_refused();
            drop(stream);
            continue;
        }
        ctx.metrics.connection_accepted();
        ctx.open.fetch_add(1, Ordering::Relaxed);
        let conn_id = next_id.fetch_add(1, Ordering::Relaxed);
        let ctx2 = ctx.clone();
        // `map`, not an `async` block that awaits it: that would hold the connection's future
        // twice for as long as the connection lives.
        tasks.spawn(
            connection::serve(stream, conn_id, ctx.clone(), shutdown.clone()).map(move |()| {
                ctx2.open.fetch_sub(1, Ordering::Relaxed);
            }),
        );
    }
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
