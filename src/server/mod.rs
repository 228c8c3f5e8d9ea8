//! The node: start-up, the accept loop, per-connection tasks and shutdown.
//!
//! Start-up picks the backends from the configuration (in-process when none is configured),
//! builds the hub and the core, opens the listener and serves until SIGINT/SIGTERM. Every task
//! is owned by one `TaskTracker` and stops on one `CancellationToken`.

pub mod connection;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod session;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::Backends;
use crate::config::Config;
use crate::core::auth::Auth;
use crate::core::model::NodeInfo;
use crate::core::service::Limits;
use crate::core::ChatCore;
use hub::Hub;
use metrics::Metrics;

/// Connection settings that apply to new frames and connections at once when changed.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub max_body: usize,
    pub idle_timeout: Duration,
    pub write_queue: usize,
    pub write_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_connections: u64,
}

impl ConnSettings {
    pub fn from_config(c: &Config) -> Self {
        ConnSettings {
            max_body: c.protocol.max_body,
            idle_timeout: c.protocol.idle_timeout,
            write_queue: c.protocol.write_queue,
            write_timeout: c.protocol.write_timeout,
            rate_per_sec: c.protocol.rate_per_sec,
            rate_burst: c.protocol.rate_burst,
            max_connections: c.server.max_connections,
        }
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
}

impl ServerCtx {
    pub fn settings(&self) -> ConnSettings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: ConnSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

/// Grace period during which a closed user stays in the local group index.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(10);

/// How often online users' delivery cursors are saved (must exceed the writer's 2 s
/// uncertain window, see `connection::UNCERTAIN_WINDOW`).
const CURSOR_FLUSH: Duration = Duration::from_secs(5);

/// A running node.
pub struct Node {
    pub ctx: Arc<ServerCtx>,
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Reads the node id from the state dir, creating it once.
fn node_id(config: &Config, state_dir: &Path) -> anyhow::Result<String> {
    if let Some(id) = &config.server.node_id {
        return Ok(id.clone());
    }
    let path = state_dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
            std::fs::create_dir_all(state_dir).with_context(|| {
                format!(
                    "cannot create the state directory {} (set server.state_dir)",
                    state_dir.display()
                )
            })?;
            std::fs::write(&path, &id).with_context(|| {
                format!(
                    "cannot write {} (set server.node_id or a writable server.state_dir)",
                    path.display()
                )
            })?;
            Ok(id)
        }
    }
}

impl Node {
    /// Starts a node on the given listener (already bound: tests bind port 0, systemd passes
    /// sockets). Returns once it accepts connections.
    pub async fn start(config: &Config, listener: TcpListener) -> anyhow::Result<Node> {
        let state_dir = config.state_dir();
        let node_id = node_id(config, &state_dir)?;
        let secret_path = config
            .auth
            .token_secret_file
            .clone()
            .unwrap_or_else(|| state_dir.join("token_secret"));
        let secret = Auth::load_or_create_secret(&secret_path)?;
        let auth = Auth::new(secret, config.auth.token_ttl, config.auth.hash_concurrency);

        let backends = Backends::from_config(config, &node_id).await?;

        let hub = Arc::new(Hub::new(
            node_id.clone(),
            backends.store.clone(),
            backends.bus.clone(),
            TOMBSTONE_GRACE,
        ));
        backends.bus.attach(&node_id, hub.clone()).await?;
        let core = Arc::new(ChatCore::new(
            node_id.clone(),
            backends.clone(),
            auth,
            hub.clone(),
            limits_from(config),
        ));
        let local_addr = listener.local_addr()?;
        let advertise = config
            .server
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        if let Err(e) = backends
            .registry
            .register(NodeInfo {
                node_id: node_id.clone(),
                addr: advertise,
                connections: 0,
                capacity: config.server.max_connections,
                draining: false,
            })
            .await
        {
            // The registry's upkeep (`Registry::run`) registers the node once it can.
            warn!(error = %e, "cannot register this node in the cluster registry yet; serving anyway, it is registered once the registry answers");
        }

        let ctx = Arc::new(ServerCtx {
            core,
            hub: hub.clone(),
            metrics: Metrics::default(),
            settings: RwLock::new(ConnSettings::from_config(config)),
            open: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(hub.clone().run_subscriptions(shutdown.clone()));
        tasks.spawn(hub.clone().flush_cursors(CURSOR_FLUSH, shutdown.clone()));
        tasks.spawn(backends.registry.clone().run(shutdown.clone()));
        let on_settings = live_settings_applier(&ctx, config);
        if let Some(w) =
            crate::backend::consul::LiveSettingsWatcher::from_config(config, on_settings)?
        {
            tasks.spawn(w.run(shutdown.clone()));
        }
        tasks.spawn(accept_loop(
            listener,
            ctx.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        info!(node_id = %node_id, addr = %local_addr, "listening");
        Ok(Node {
            ctx,
            local_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, tells every connection, waits for the tasks (at most `grace`).
    pub async fn shutdown(self, grace: Duration) {
        info!("shutting down");
        let _ = self
            .ctx
            .core
            .backends()
            .registry
            .deregister(self.ctx.core.node_id())
            .await;
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within {grace:?}; exiting anyway");
        }
    }

    pub fn node_id(&self) -> &str {
        self.ctx.core.node_id()
    }
}

fn limits_from(c: &Config) -> Limits {
    Limits {
        max_devices: c.session.max_devices,
        group_backlog: c.offline.group_backlog,
        direct_backlog: c.offline.direct_backlog,
    }
}

/// Applies live settings (Consul KV) on top of the configured values: a key that is no longer
/// set goes back to its configured value.
fn live_settings_applier(
    ctx: &Arc<ServerCtx>,
    config: &Config,
) -> crate::backend::consul::OnSettings {
    let (conn, limits) = (ConnSettings::from_config(config), limits_from(config));
    let ctx = Arc::downgrade(ctx);
    Arc::new(move |live| {
        let Some(ctx) = ctx.upgrade() else { return };
        let mut s = conn.clone();
        s.rate_per_sec = live.rate_per_sec.unwrap_or(s.rate_per_sec);
        s.rate_burst = live.rate_burst.unwrap_or(s.rate_burst);
        s.max_body = live.max_body.unwrap_or(s.max_body);
        s.idle_timeout = live.idle_timeout.unwrap_or(s.idle_timeout);
        s.write_timeout = live.write_timeout.unwrap_or(s.write_timeout);
        s.max_connections = live.max_connections.unwrap_or(s.max_connections);
        ctx.set_settings(s);
        let mut l = limits.clone();
        l.max_devices = live.max_devices.unwrap_or(l.max_devices);
        l.group_backlog = live.group_backlog.unwrap_or(l.group_backlog);
        l.direct_backlog = live.direct_backlog.unwrap_or(l.direct_backlog);
        ctx.core.set_limits(l);
    })
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ServerCtx>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let next_id = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        let max = ctx.settings().max_connections;
        if ctx.open.load(Ordering::Relaxed) >= max {
            ctx.metrics.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        ctx.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.open.fetch_add(1, Ordering::Relaxed);
        let conn_id = next_id.fetch_add(1, Ordering::Relaxed);
        let ctx2 = ctx.clone();
        let token = shutdown.clone();
        tasks.spawn(async move {
            connection::serve(stream, conn_id, ctx2.clone(), token).await;
            ctx2.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Runs a node until SIGINT or SIGTERM (the `serve` command).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let node = Node::start(&config, listener).await?;
    wait_for_signal().await?;
    node.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
    Ok(())
}
