//! Running under a service manager: listeners (bound or passed by systemd), readiness,
//! reload on SIGHUP, drain on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::systemd::{ActivatedSockets, Notifier};
use super::{Listeners, Node};
use crate::config::{Config, RELOADABLE_KEYS};
use crate::server::bind;

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
    pub sockets: ActivatedSockets,
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
    // Before anything else: SIGHUP would otherwise end the process.
    let mut signals = Signals::new()?;
    let notifier = Notifier::new();
    let RunOptions {
        config_path,
        sockets,
    } = options;
    let activated = !sockets.is_empty();
    let listeners = Listeners {
        plain: optional_listener(sockets.chat, &config.server.listen, "server.listen").await?,
        tls: optional_listener(
            sockets.tls,
            config.tls.listen.as_deref().unwrap_or(""),
            "tls.listen",
        )
        .await?,
    };
    let http = listener(
        sockets.http,
        &config.server.http_listen,
        "server.http_listen",
    )
    .await?;

    let node = Node::start_listening(&config, listeners).await?;
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

/// A listener passed by systemd, else one bound to `addr` (the value of config `key`), else
/// none when `addr` is empty (that listener is off).
async fn optional_listener(
    passed: Option<std::net::TcpListener>,
    addr: &str,
    key: &str,
) -> anyhow::Result<Option<TcpListener>> {
    if passed.is_none() && addr.is_empty() {
        return Ok(None);
    }
    listener(passed, addr, key).await.map(Some)
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

/// Waits until the node is ready (accept loop answering, store and bus healthy), saying what
/// it waits for in `STATUS=` and the log. False when told to stop meanwhile.
async fn wait_until_ready(node: &Node, notifier: &Notifier, signals: &mut Signals) -> bool {
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
    notifier: &Notifier,
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
    let tls_refused = node.reload(&new).is_err();
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
    let status = node.status_line(&h);
    if tls_refused {
        notifier.ready(&format!(
            "{status}; new TLS certificate refused, the old one serves (see the log)"
        ));
    } else {
        notifier.ready(&status);
    }
}

/// SIGTERM: STOPPING=1, then the node's graceful drain, bounded by `drain`, the write timeout
/// and `STOP_MARGIN`, while systemd's stop timeout is extended.
async fn stop(node: Node, notifier: &Notifier, drain: Duration) {
    node.state.health.set_stopping();
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
        _ = super::systemd::extend_while_stopping(notifier.clone()) => {}
    }
    info!("stopped");
}
