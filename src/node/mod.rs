//! The node: the composition root that turns the configuration into adapters and wires them
//! to the core and the wire adapter, plus the node's operations side (health, the HTTP
//! endpoint, systemd, settings that change while running) and the start-up, reload and
//! shutdown story.
//!
//! Start-up picks the adapters from the configuration ([`wiring`]; in-process when none is
//! configured), builds the hub and the core, opens the listener and serves until SIGINT or
//! SIGTERM ([`run()`]). Every task is owned by one `TaskTracker` and stops on one
//! `CancellationToken`.

pub mod admin;
pub mod health;
pub mod http;
pub mod run;
pub mod systemd;
pub mod wiring;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backend::consul::{KvWatcher, OnSnapshot};
use crate::config::live::{LiveSettings, LiveState};
use crate::config::Config;
use crate::core::auth::Auth;
use crate::core::model::NodeInfo;
use crate::core::ports::{Backends, SystemClock};
use crate::core::service::Limits;
use crate::core::ChatCore;
use crate::server::hub::Hub;
use crate::server::probe::loop_probe;
use crate::server::tls::{TlsError, TlsServer};
use crate::server::{
    accept_loop, AcceptLoop, ConnIds, ConnSettings, ServerCtx, Transport, CURSOR_FLUSH,
    TOMBSTONE_GRACE,
};
use crate::telemetry::metrics::Metrics;

pub use run::{run, RunOptions, STOP_MARGIN};

/// A running node.
pub struct Node {
    /// What every connection shares (the core, the hub, the connection settings).
    pub ctx: Arc<ServerCtx>,
    /// The operations side: health, settings layers.
    pub state: Arc<NodeState>,
    /// The plain chat listener's address; the TLS one's when there is no plain listener.
    pub local_addr: SocketAddr,
    /// The TLS chat listener's address, if the node has one.
    pub tls_addr: Option<SocketAddr>,
    /// The TLS listener's certificate (re-read by [`Node::reload`]).
    tls: Option<Arc<TlsServer>>,
    /// Stops the accept loop (first step of a drain).
    accepting: CancellationToken,
    /// Stops everything else.
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// What the node's operations side shares: the HTTP endpoint, the systemd supervisor and the
/// settings watchers reach the node through it.
pub struct NodeState {
    pub ctx: Arc<ServerCtx>,
    /// Probes and last results of the health checks (watchdog, status, `/ready`).
    pub health: health::HealthState,
    /// Configured and live settings, combined into the connection settings and the core's
    /// limits.
    layers: Mutex<SettingsLayers>,
    /// The admin API's token (`admin.token_file`); `None`: the API is off.
    pub admin: Option<admin::AdminToken>,
    /// A drain an operator started through the admin API.
    pub drain: admin::DrainControl,
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

/// The chat listeners a node serves, already bound (tests bind port 0, systemd passes
/// sockets). At least one.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The plain listener (`server.listen`).
    pub plain: Option<TcpListener>,
    /// The TLS listener (`tls.listen`), presenting `tls.cert_file` and `tls.key_file`.
    pub tls: Option<TcpListener>,
}

/// `host:port` of the TLS listener as others reach it: the host of the advertised address
/// (`server.advertise_addr`) with the TLS listener's port, else the listener's own address.
fn tls_advertise(advertise: Option<&str>, tls: SocketAddr) -> String {
    match advertise.and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) => format!("{host}:{}", tls.port()),
        None => tls.to_string(),
    }
}

impl Node {
    /// Starts a node on the given plain listener (already bound: tests bind port 0, systemd
    /// passes sockets). Returns once it accepts connections.
    pub async fn start(config: &Config, listener: TcpListener) -> anyhow::Result<Node> {
        Self::start_with(config, plain(listener), None).await
    }

    /// [`Node::start`] on the given backends instead of those the configuration names (tests
    /// wrap the in-process ones to inject faults). They are used as they are, not timed.
    pub async fn start_on(
        config: &Config,
        listener: TcpListener,
        backends: Backends,
    ) -> anyhow::Result<Node> {
        Self::start_with(config, plain(listener), Some(backends)).await
    }

    /// [`Node::start`] on a plain listener, a TLS listener or both.
    pub async fn start_listening(config: &Config, listeners: Listeners) -> anyhow::Result<Node> {
        Self::start_with(config, listeners, None).await
    }

    async fn start_with(
        config: &Config,
        listeners: Listeners,
        backends: Option<Backends>,
    ) -> anyhow::Result<Node> {
        // The certificate first: a node that cannot serve TLS as configured does not start.
        let tls = match &listeners.tls {
            None => None,
            Some(_) => {
                let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) else {
                    anyhow::bail!(
                        "a TLS listener needs tls.cert_file and tls.key_file (PEM certificate chain and key)"
                    );
                };
                Some(Arc::new(TlsServer::new(cert, key).with_context(|| {
                    format!(
                        "cannot serve TLS with the certificate {} and the key {} (tls.cert_file, tls.key_file)",
                        cert.display(),
                        key.display()
                    )
                })?))
            }
        };
        let plain_addr = listeners
            .plain
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        let tls_addr = listeners.tls.as_ref().map(|l| l.local_addr()).transpose()?;
        let Some(local_addr) = plain_addr.or(tls_addr) else {
            anyhow::bail!("no chat listener: set server.listen, tls.listen or both");
        };
        // The admin token before anything else is set up: a token file others can read stops
        // the start, as the token secret's does.
        let admin_token = admin::AdminToken::load(config)?;
        let state_dir = config.state_dir();
        let node_id = node_id(config, &state_dir)?;
        // First, so that the backends can count into it (`Metrics::observe_backend_call`).
        let metrics = Metrics::default();
        let (backends, links, cluster_secret) = match backends {
            Some(given) => (given, Vec::new(), None),
            None => {
                let wired = wiring::backends(config, &node_id, &metrics).await?;
                (wired.backends, wired.links, wired.cluster_secret)
            }
        };
        // A configured file wins; else the cluster's secret (NATS); else this node's own.
        let secret = match (&config.auth.token_secret_file, cluster_secret) {
            (Some(path), _) => Auth::load_or_create_secret(path)?,
            (None, Some(shared)) => shared,
            (None, None) => Auth::load_or_create_secret(&state_dir.join("token_secret"))?,
        };
        let auth = Auth::new(secret, config.auth.token_ttl, config.auth.hash_concurrency);

        let hub = Arc::new(Hub::new(TOMBSTONE_GRACE));
        let core = Arc::new(ChatCore::new(
            node_id.clone(),
            backends.clone(),
            auth,
            hub.clone(),
            wiring::limits(config),
            Arc::new(SystemClock::new()),
        ));
        // Inbound bus events go through the core, which applies the delivery rules and hands
        // pushes to the hub.
        backends.bus.attach(&node_id, core.clone()).await?;
        let advertise = config
            .server
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        if let Err(e) = backends
            .registry
            .register(NodeInfo {
                node_id: node_id.clone(),
                tls_addr: tls_addr
                    .map(|t| tls_advertise(config.server.advertise_addr.as_deref(), t)),
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

        let (accept_probe, probe_requests) = loop_probe();
        let ctx = Arc::new(ServerCtx::new(
            core.clone(),
            hub.clone(),
            metrics,
            wiring::conn_settings(config),
        ));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = Arc::new(NodeState {
            ctx: ctx.clone(),
            health: health::HealthState::new(accept_probe, links),
            layers: Mutex::new(SettingsLayers::default()),
            admin: admin_token,
            drain: admin::DrainControl::new(shutdown.clone(), tasks.clone()),
        });
        state.set_configured(config);
        tasks.spawn(report_serving(
            state.clone(),
            SERVING_REPORT,
            shutdown.clone(),
        ));
        tasks.spawn(core.clone().run_group_interest(shutdown.clone()));
        tasks.spawn(core.clone().flush_cursors(CURSOR_FLUSH, shutdown.clone()));
        tasks.spawn(backends.registry.clone().run(shutdown.clone()));
        tasks.spawn(backends.presence.clone().run(shutdown.clone()));
        tasks.spawn(report_load(ctx.clone(), LOAD_REPORT, shutdown.clone()));
        tasks.spawn(crate::server::budget::enforce(
            ctx.clone(),
            shutdown.clone(),
        ));
        if let Some(settings) = wiring::consul_settings(&config.consul)? {
            let watcher = KvWatcher::new(&settings, live_settings_applier(&state))
                .context("cannot set up the Consul client (consul.addr)")?;
            tasks.spawn(watcher.run(shutdown.clone()));
        }
        let accepting = shutdown.child_token();
        let ids = Arc::new(ConnIds::default());
        // One loop answers the health probes: the plain one, else the TLS one.
        let mut probes = Some(probe_requests);
        let mut loops = Vec::new();
        if let Some(listener) = listeners.plain {
            loops.push((listener, Transport::Plain));
        }
        if let (Some(listener), Some(server)) = (listeners.tls, &tls) {
            let handshake_timeout = config.tls.handshake_timeout;
            loops.push((
                listener,
                Transport::Tls {
                    server: server.clone(),
                    handshake_timeout,
                },
            ));
        }
        for (listener, transport) in loops {
            tasks.spawn(accept_loop(
                AcceptLoop {
                    listener,
                    transport,
                    probes: probes.take(),
                    ids: ids.clone(),
                },
                ctx.clone(),
                accepting.clone(),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        match tls_addr {
            Some(tls_addr) => info!(node_id = %node_id, addr = ?plain_addr, %tls_addr, "listening"),
            None => info!(node_id = %node_id, addr = %local_addr, "listening"),
        }
        Ok(Node {
            ctx,
            state,
            local_addr,
            tls_addr,
            tls,
            accepting,
            shutdown,
            tasks,
        })
    }

    /// Drains and stops the node: leaves discovery first (nobody is sent here any more), stops
    /// accepting, redirects v2 clients to the least-loaded peers and closes every connection,
    /// spread over `drain_window` (see [`crate::server::drain`]), then stops every task.
    pub async fn shutdown(self, drain_window: Duration) {
        let core = &self.ctx.core;
        let node_id = core.node_id().to_string();
        let registry = &core.backends().registry;
        let connections = self.ctx.open.load(Ordering::Relaxed);
        let _ = registry.update_load(&node_id, connections, true).await;
        let peers = registry.nodes().await.unwrap_or_default();
        if let Err(e) = registry.deregister(&node_id).await {
            warn!(error = %e, "could not leave the registry; the entry expires by itself");
        }
        self.accepting.cancel();
        // Connections that never logged in are closed at the end; v2 ones get this redirect.
        *self.ctx.redirect.write().unwrap_or_else(|e| e.into_inner()) = Some(
            crate::server::drain::redirect_frame("draining", &peers, &node_id),
        );
        let report = crate::server::drain::drain(
            &self.ctx.hub,
            &peers,
            &node_id,
            drain_window,
            &self.shutdown,
        )
        .await;
        info!(
            redirected = report.redirected,
            closed = report.closed,
            "drained; stopping"
        );
        self.shutdown.cancel();
        self.tasks.close();
        // Writers flush what is queued, each bounded by the write timeout.
        let bound = self.ctx.settings().write_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish within {bound:?}; exiting anyway");
        }
        // Every connection has unregistered itself; drop what may remain at once, and stop
        // the bus's subscription readers.
        core.backends().presence.leave().await;
        core.backends().bus.close().await;
    }

    pub fn node_id(&self) -> &str {
        self.ctx.core.node_id()
    }
}

fn plain(listener: TcpListener) -> Listeners {
    Listeners {
        plain: Some(listener),
        tls: None,
    }
}

/// How often the node's connection count is published to the registry (discovery's load).
const LOAD_REPORT: Duration = Duration::from_secs(5);

/// How often the node's readiness is checked for the registry (at once, too, when a backend
/// connection is lost or back).
const SERVING_REPORT: Duration = Duration::from_secs(5);

/// Publishes whether this node serves ([`health::Health::ready`]) to the registry when it
/// changes, so that a node that lost its store or bus leaves the nodes clients, redirects and
/// the load balancer pick (Consul: its check turns warning), and comes back once it serves.
/// Not while it stops: the drain leaves the registry altogether.
async fn report_serving(state: Arc<NodeState>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<Option<String>> = None;
    let mut seen_links = state.health.links_version();
    loop {
        // A link that changed during the last check is checked again at once.
        if state.health.links_version() == seen_links {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = state.health.links_changed() => {}
            }
        }
        seen_links = state.health.links_version();
        // The supervisor's check when it is recent enough, else one of its own.
        let h = health::check_recent(&state, every + Duration::from_secs(1)).await;
        if h.stopping || shutdown.is_cancelled() {
            break;
        }
        let problem = (!h.ready()).then(|| h.problems());
        if reported.as_ref() == Some(&problem) {
            continue;
        }
        let core = &state.ctx.core;
        match core
            .backends()
            .registry
            .set_serving(core.node_id(), problem.clone())
            .await
        {
            Ok(()) => reported = Some(problem),
            Err(e) => tracing::debug!(error = %e, "readiness report failed; retried next round"),
        }
    }
}

/// Publishes this node's connection count to the registry when it changes, so that clients and
/// redirects can pick the least-loaded node.
async fn report_load(ctx: Arc<ServerCtx>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let open = ctx.open.load(Ordering::Relaxed);
        // Drained by an operator: the registry keeps saying so.
        let draining = ctx.is_draining();
        if reported == Some((open, draining)) {
            continue;
        }
        let core = &ctx.core;
        match core
            .backends()
            .registry
            .update_load(core.node_id(), open, draining)
            .await
        {
            Ok(()) => reported = Some((open, draining)),
            Err(e) => tracing::debug!(error = %e, "load report failed; retried next round"),
        }
    }
}

/// The settings in force are the configured ones (file and environment, replaced on SIGHUP)
/// with the live ones (Consul KV) on top: a live key that is removed goes back to the
/// configured value, and a reload does not wipe what is set live.
#[derive(Default)]
pub struct SettingsLayers {
    configured: Option<(ConnSettings, Limits)>,
    live: LiveSettings,
    /// What the live source last said, folded (an invalid value is reported once).
    live_state: LiveState,
}

impl NodeState {
    fn apply_layers(&self) {
        let layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        let Some((conn, limits)) = layers.configured.clone() else {
            return;
        };
        let live = &layers.live;
        let mut s = conn;
        s.rate_per_sec = live.rate_per_sec.unwrap_or(s.rate_per_sec);
        s.rate_burst = live.rate_burst.unwrap_or(s.rate_burst);
        s.max_body = live.max_body.unwrap_or(s.max_body);
        s.idle_timeout = live.idle_timeout.unwrap_or(s.idle_timeout);
        s.write_timeout = live.write_timeout.unwrap_or(s.write_timeout);
        s.max_connections = live.max_connections.unwrap_or(s.max_connections);
        let mut l = limits;
        l.max_devices = live.max_devices.unwrap_or(l.max_devices);
        l.group_backlog = live.group_backlog.unwrap_or(l.group_backlog);
        l.direct_backlog = live.direct_backlog.unwrap_or(l.direct_backlog);
        drop(layers);
        self.ctx.set_settings(s);
        self.ctx.core.set_limits(l);
    }

    /// New configured values (start-up, SIGHUP); live values stay on top.
    pub fn set_configured(&self, config: &Config) {
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configured = Some((wiring::conn_settings(config), wiring::limits(config)));
        self.drain.set_window(config.server.drain_window);
        self.apply_layers();
    }

    /// A snapshot of the live source (Consul KV): applied when the settings it gives changed.
    pub fn set_live(&self, snapshot: &BTreeMap<String, String>) {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(live) = layers.live_state.apply(snapshot) else {
            return;
        };
        info!(settings = ?live, "live settings changed");
        layers.live = live;
        drop(layers);
        self.apply_layers();
    }
}

/// The callback of the live-settings watcher.
fn live_settings_applier(state: &Arc<NodeState>) -> OnSnapshot {
    let state = Arc::downgrade(state);
    Arc::new(move |snapshot| {
        if let Some(state) = state.upgrade() {
            state.set_live(snapshot);
        }
    })
}

impl Node {
    /// Serves the HTTP endpoint (`/health`, `/ready`, `/metrics`) on `listener` until shutdown.
    pub fn serve_http(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.tasks.spawn(http::serve(
            listener,
            self.state.clone(),
            self.shutdown.clone(),
            self.tasks.clone(),
        ));
        Ok(addr)
    }

    /// Checks the accept loop and the backends.
    pub async fn health(&self) -> health::Health {
        health::check(&self.state).await
    }

    /// The one-line summary (node id, connections, backend health) for `STATUS=`.
    pub fn status_line(&self, health: &health::Health) -> String {
        health::status_line(&self.state, health)
    }

    /// Applies the settings of `new` that can change while running (connection settings and
    /// limits; the log level is the caller's) and reads the TLS certificate and key again.
    /// They take effect for new frames and new connections; open connections stay open.
    ///
    /// A certificate pair that does not load is refused (logged, with the file and the reason,
    /// and returned): the running pair stays, the other settings still apply.
    pub fn reload(&self, new: &Config) -> Result<(), TlsError> {
        self.state.set_configured(new);
        let Some(server) = &self.tls else {
            return Ok(());
        };
        // Validation makes both set when tls.listen is; a listener passed by systemd with
        // tls.listen unset may still leave them out.
        let (Some(cert), Some(key)) = (&new.tls.cert_file, &new.tls.key_file) else {
            warn!("tls.cert_file or tls.key_file is unset in the reloaded configuration; the running TLS certificate stays");
            return Ok(());
        };
        match server.reload(cert, key) {
            Ok(()) => {
                info!(cert_file = %cert.display(), key_file = %key.display(), "TLS certificate reloaded; new connections get it");
                Ok(())
            }
            Err(e) => {
                error!("TLS certificate not reloaded, the running one stays: {e}");
                Err(e)
            }
        }
    }

    /// The end-entity certificate the TLS listener presents to new connections (DER).
    pub fn tls_certificate(&self) -> Option<Vec<u8>> {
        self.tls
            .as_ref()
            .and_then(|t| t.certificate())
            .map(|c| c.as_ref().to_vec())
    }

    /// Starts the task that keeps systemd's `STATUS=` current and feeds its watchdog while the
    /// node serves (owned by the node; it stops at shutdown).
    pub fn supervise(&self, notifier: systemd::Notifier, status: String) {
        self.tasks.spawn(systemd::supervise(
            self.state.clone(),
            notifier,
            status,
            self.shutdown.clone(),
        ));
    }
}
