//! The node: start-up, the accept loop, per-connection tasks and shutdown.
//!
//! Start-up picks the backends from the configuration (in-process when none is configured),
//! builds the hub and the core, opens the listener and serves until SIGINT/SIGTERM. Every task
//! is owned by one `TaskTracker` and stops on one `CancellationToken`.

pub mod connection;
pub mod drain;
pub mod health;
pub mod hub;
pub mod instrument;
pub mod metrics;
pub mod outbox;
pub mod sends;
pub mod session;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

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
    /// Probes and last results of the health checks (watchdog, status, `/ready`).
    pub health: health::HealthState,
    /// Set by a drain: the 406 frame for v2 connections closed at shutdown.
    pub redirect: RwLock<Option<bytes::Bytes>>,
    /// Configured and live settings, combined into `settings` and the core's limits.
    layers: std::sync::Mutex<SettingsLayers>,
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
    /// Stops the accept loop (first step of a drain).
    accepting: CancellationToken,
    /// Stops everything else.
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

        // First, so that the backends can count into it (`Metrics::observe_backend_call`).
        let metrics = Metrics::default();
        let backends = instrument::instrument(
            Backends::from_config(config, &node_id).await?,
            &metrics,
            config,
        );

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

        let (accept_probe, probe_requests) = health::loop_probe();
        let ctx = Arc::new(ServerCtx {
            core,
            hub: hub.clone(),
            metrics,
            settings: RwLock::new(ConnSettings::from_config(config)),
            open: AtomicU64::new(0),
            health: health::HealthState::new(accept_probe),
            redirect: RwLock::new(None),
            layers: std::sync::Mutex::new(SettingsLayers::default()),
        });
        ctx.set_configured(config);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(hub.clone().run_subscriptions(shutdown.clone()));
        tasks.spawn(hub.clone().flush_cursors(CURSOR_FLUSH, shutdown.clone()));
        tasks.spawn(backends.registry.clone().run(shutdown.clone()));
        tasks.spawn(backends.presence.clone().run(shutdown.clone()));
        tasks.spawn(report_load(ctx.clone(), LOAD_REPORT, shutdown.clone()));
        let on_settings = live_settings_applier(&ctx);
        if let Some(w) =
            crate::backend::consul::LiveSettingsWatcher::from_config(config, on_settings)?
        {
            tasks.spawn(w.run(shutdown.clone()));
        }
        let accepting = shutdown.child_token();
        tasks.spawn(accept_loop(
            listener,
            probe_requests,
            ctx.clone(),
            accepting.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        info!(node_id = %node_id, addr = %local_addr, "listening");
        Ok(Node {
            ctx,
            local_addr,
            accepting,
            shutdown,
            tasks,
        })
    }

    /// Drains and stops the node: leaves discovery first (nobody is sent here any more), stops
    /// accepting, redirects v2 clients to the least-loaded peers and closes every connection,
    /// spread over `drain_window` (see [`drain`]), then stops every task.
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
        *self.ctx.redirect.write().unwrap_or_else(|e| e.into_inner()) =
            Some(drain::redirect_frame("draining", &peers, &node_id));
        let report = drain::drain(
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

/// How often the node's connection count is published to the registry (discovery's load).
const LOAD_REPORT: Duration = Duration::from_secs(5);

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
        if reported == Some(open) {
            continue;
        }
        let core = &ctx.core;
        match core
            .backends()
            .registry
            .update_load(core.node_id(), open, false)
            .await
        {
            Ok(()) => reported = Some(open),
            Err(e) => tracing::debug!(error = %e, "load report failed; retried next round"),
        }
    }
}

fn limits_from(c: &Config) -> Limits {
    Limits {
        max_devices: c.session.max_devices,
        group_backlog: c.offline.group_backlog,
        direct_backlog: c.offline.direct_backlog,
    }
}

/// The settings in force are the configured ones (file and environment, replaced on SIGHUP)
/// with the live ones (Consul KV) on top: a live key that is removed goes back to the
/// configured value, and a reload does not wipe what is set live.
#[derive(Default)]
pub struct SettingsLayers {
    configured: Option<(ConnSettings, Limits)>,
    live: crate::backend::consul::LiveSettings,
}

impl ServerCtx {
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
        self.set_settings(s);
        self.core.set_limits(l);
    }

    /// New configured values (start-up, SIGHUP); live values stay on top.
    pub fn set_configured(&self, config: &Config) {
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .configured = Some((ConnSettings::from_config(config), limits_from(config)));
        self.apply_layers();
    }

    /// New live values (Consul KV).
    pub fn set_live(&self, live: &crate::backend::consul::LiveSettings) {
        self.layers.lock().unwrap_or_else(|e| e.into_inner()).live = live.clone();
        self.apply_layers();
    }
}

/// The callback of the live-settings watcher.
fn live_settings_applier(ctx: &Arc<ServerCtx>) -> crate::backend::consul::OnSettings {
    let ctx = Arc::downgrade(ctx);
    Arc::new(move |live| {
        if let Some(ctx) = ctx.upgrade() {
            ctx.set_live(live);
        }
    })
}

async fn accept_loop(
    listener: TcpListener,
    mut probes: health::ProbeRequests,
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

// ---------------------------------------------------------------------------------------------
// Running under a service manager: listeners, readiness, reload, drain
// ---------------------------------------------------------------------------------------------

/// Keys a SIGHUP applies to the running node; a change to any other key needs a restart.
pub const RELOADABLE_KEYS: &[&str] = &[
    "server.max_connections",
    "server.drain_window",
    "protocol.max_body",
    "protocol.idle_timeout",
    "protocol.write_queue",
    "protocol.write_timeout",
    "protocol.rate_per_sec",
    "protocol.rate_burst",
    "session.max_devices",
    "offline.group_backlog",
    "offline.direct_backlog",
    "log.level",
];

/// Time the shutdown may take beyond `server.drain_window` and `protocol.write_timeout` (the
/// writers' last flush): leaving the registry, stopping the tasks. Past it the process exits
/// anyway. The unit's `TimeoutStopSec` must exceed the sum of the three.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// How `run` gets its listeners and reloads its configuration.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The `--config` path (`None`: the default path when it exists), read again on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Listeners passed by systemd; the others are bound from the configuration.
    pub sockets: crate::systemd::ActivatedSockets,
}

impl Node {
    /// Serves the HTTP endpoint (`/health`, `/ready`, `/metrics`) on `listener` until shutdown.
    pub fn serve_http(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.tasks.spawn(crate::http::serve(
            listener,
            self.ctx.clone(),
            self.shutdown.clone(),
            self.tasks.clone(),
        ));
        Ok(addr)
    }

    /// Checks the accept loop and the backends.
    pub async fn health(&self) -> health::Health {
        health::check(&self.ctx).await
    }

    /// The one-line summary (node id, connections, backend health) for `STATUS=`.
    pub fn status_line(&self, health: &health::Health) -> String {
        health::status_line(&self.ctx, health)
    }

    /// Applies the settings of `new` that can change while running (connection settings and
    /// limits; the log level is the caller's). They take effect for new frames and new
    /// connections; open connections stay open.
    pub fn reload(&self, new: &Config) {
        self.ctx.set_configured(new);
    }

    /// Starts the task that keeps systemd's `STATUS=` current and feeds its watchdog while the
    /// node serves (owned by the node; it stops at shutdown).
    pub fn supervise(&self, notifier: crate::systemd::Notifier, status: String) {
        self.tasks.spawn(crate::systemd::supervise(
            self.ctx.clone(),
            notifier,
            status,
            self.shutdown.clone(),
        ));
    }
}

/// A signal `run` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGTERM or SIGINT: drain and exit.
    Stop(&'static str),
}

/// The signals `run` handles, registered once (before anything can send them).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let ctx = "cannot install the signal handlers";
        Ok(Signals {
            term: signal(SignalKind::terminate()).context(ctx)?,
            int: signal(SignalKind::interrupt()).context(ctx)?,
            hup: signal(SignalKind::hangup()).context(ctx)?,
        })
    }
}

/// Runs a node until SIGINT or SIGTERM (the `serve` command): opens (or takes from systemd)
/// the chat and HTTP listeners, says READY once the node serves and its backends answer,
/// reloads on SIGHUP, drains on SIGTERM.
pub async fn run(config: Config, options: RunOptions) -> anyhow::Result<()> {
    use crate::systemd::Notifier;

    // Before anything else: SIGHUP would otherwise end the process.
    let mut signals = Signals::new()?;
    let notifier = Notifier::new();
    let RunOptions {
        config_path,
        sockets,
    } = options;
    let activated = !sockets.is_empty();
    let chat = listener(sockets.chat, &config.server.listen, "server.listen").await?;
    let http = listener(
        sockets.http,
        &config.server.http_listen,
        "server.http_listen",
    )
    .await?;

    let node = Node::start(&config, chat).await?;
    crate::telemetry::set_node_id(node.node_id());
    let http_addr = node
        .serve_http(http)
        .context("cannot serve the HTTP endpoint")?;
    info!(
        http_addr = %http_addr,
        socket_activated = activated,
        "HTTP endpoint up: /health, /ready, /metrics"
    );

    let started = config.clone();
    let mut current = config;
    if wait_until_ready(&node, &notifier, &mut signals).await {
        let h = node.health().await;
        let status = node.status_line(&h);
        notifier.ready(&status);
        info!("ready: {status}");
        node.supervise(notifier.clone(), status);
        loop {
            match wait_for_signal(&mut signals).await {
                Signal::Reload => {
                    reload(
                        &node,
                        &notifier,
                        config_path.as_deref(),
                        &started,
                        &mut current,
                    )
                    .await
                }
                Signal::Stop(name) => {
                    info!("{name} received: draining");
                    break;
                }
            }
        }
    }
    stop(node, &notifier, current.server.drain_window).await;
    Ok(())
}

/// A listener passed by systemd, else one bound to `addr` (the value of config `key`).
async fn listener(
    passed: Option<std::net::TcpListener>,
    addr: &str,
    key: &str,
) -> anyhow::Result<TcpListener> {
    match passed {
        Some(l) => {
            // Tokio needs a non-blocking socket; systemd passes blocking ones.
            l.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(l))
                .with_context(|| format!("cannot use the socket systemd passed instead of {key}"))
        }
        None => bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} ({key}); is another chat-zinx using it? change {key}")
        }),
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

/// Waits until the node is ready (accept loop answering, store and bus healthy), saying what
/// it waits for in `STATUS=` and the log. False when told to stop meanwhile.
async fn wait_until_ready(
    node: &Node,
    notifier: &crate::systemd::Notifier,
    signals: &mut Signals,
) -> bool {
    let mut warned = false;
    loop {
        let h = node.health().await;
        if h.ready() {
            if warned {
                info!("backends answer now");
            }
            return true;
        }
        let status = node.status_line(&h);
        notifier.status(&status);
        if !warned {
            warn!(
                "not ready yet ({}); waiting for it: systemd keeps the unit 'activating' and stops it after TimeoutStartSec",
                h.problems()
            );
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            sig = wait_for_signal(signals) => match sig {
                Signal::Reload => info!("SIGHUP ignored: still starting; send it again once ready"),
                Signal::Stop(name) => {
                    info!("{name} received while starting");
                    return false;
                }
            },
        }
    }
}

/// The next signal `run` acts on.
async fn wait_for_signal(signals: &mut Signals) -> Signal {
    tokio::select! {
        _ = signals.term.recv() => Signal::Stop("SIGTERM"),
        _ = signals.int.recv() => Signal::Stop("SIGINT"),
        _ = signals.hup.recv() => Signal::Reload,
    }
}

/// SIGHUP: reads the configuration again (same file and environment as at start) and applies
/// what can change live; a broken file is rejected and the running configuration stays.
async fn reload(
    node: &Node,
    notifier: &crate::systemd::Notifier,
    path: Option<&Path>,
    started: &Config,
    current: &mut Config,
) {
    notifier.reloading();
    info!("SIGHUP received: reloading the configuration");
    let new = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            node.ctx.metrics.config_reload(false);
            error!("configuration reload rejected, the running configuration stays: {e}");
            let h = node.health().await;
            notifier.ready(&format!(
                "{}; last reload rejected (see the log)",
                node.status_line(&h)
            ));
            return;
        }
    };
    let live: Vec<&str> = crate::config::changed_keys(current, &new)
        .into_iter()
        .filter(|k| RELOADABLE_KEYS.contains(k))
        .collect();
    let pending: Vec<&str> = crate::config::changed_keys(started, &new)
        .into_iter()
        .filter(|k| !RELOADABLE_KEYS.contains(k))
        .collect();
    node.reload(&new);
    if live.contains(&"log.level") {
        match crate::telemetry::set_level(&new.log.level) {
            Ok(crate::telemetry::LevelChange::Applied) => {}
            Ok(crate::telemetry::LevelChange::OverriddenByRustLog(v)) => warn!(
                rust_log = %v,
                "log.level changed, but RUST_LOG overrides it; unset RUST_LOG (Environment= of the unit) to use log.level"
            ),
            Err(e) => warn!("log.level not applied: {e}"),
        }
    }
    *current = new;
    node.ctx.metrics.config_reload(true);
    if live.is_empty() {
        info!("configuration reloaded: nothing that applies live changed");
    } else {
        info!(applied = %live.join(", "), "configuration reloaded");
    }
    if !pending.is_empty() {
        warn!(
            needs_restart = %pending.join(", "),
            "these changed settings take effect only after a restart (systemctl restart chat-zinx)"
        );
    }
    let h = node.health().await;
    notifier.ready(&node.status_line(&h));
}

/// SIGTERM: STOPPING=1, then the node's graceful drain, bounded by `drain`, the write timeout
/// and `STOP_MARGIN`, while systemd's stop timeout is extended.
async fn stop(node: Node, notifier: &crate::systemd::Notifier, drain: Duration) {
    node.ctx.health.set_stopping();
    let open = node.ctx.open.load(Ordering::Relaxed);
    let limit = drain + node.ctx.settings().write_timeout + STOP_MARGIN;
    notifier.stopping(
        &format!(
            "node {}: stopping, draining {open} connection{}",
            node.node_id(),
            if open == 1 { "" } else { "s" }
        ),
        limit,
    );
    tokio::select! {
        r = tokio::time::timeout(limit, node.shutdown(drain)) => {
            if r.is_err() {
                warn!("the shutdown did not finish within {limit:?}; exiting anyway");
            }
        }
        _ = crate::systemd::extend_while_stopping(notifier.clone()) => {}
    }
    info!("stopped");
}
