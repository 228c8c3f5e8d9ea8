//! Is the node really serving? A probe of the accept loop and the backends' health checks,
//! shared by the systemd watchdog and status line ([`super::systemd`]) and the HTTP `/ready`
//! endpoint ([`super::http`]).
//!
//! The accept loop answers probes between two accepts: an answer proves that the task is
//! being polled and not stuck, which a timer alone would not.
//!
//! The rules (docs/operations.md explains them to operators):
//!
//! * **ready** (`READY=1` at start, `/ready`): the accept loop answers, the node is not
//!   stopping, and the backends chat traffic cannot do without are healthy: the store (the
//!   message log, accounts) and the bus (delivery). Presence (Redis) and the registry (Consul)
//!   are reported but do not gate readiness: without them a node still serves its clients
//!   (presence degrades to this node, discovery waits), and if every node turned unready for
//!   them a discovery outage would become a chat outage.
//! * **alive** (the watchdog): the accept loop answers, and every backend's health check
//!   *returns* within [`BACKEND_DEADLINE`], healthy or not. A backend that is down is reported,
//!   not restarted for: a restart does not bring NATS back and drops every client. A check that
//!   does not return at all means this process is wedged, and a restart is the cure. Backend
//!   `health()` implementations must therefore give up (with `Unavailable`) within their own
//!   client timeout, well under [`BACKEND_DEADLINE`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::NodeState;
use crate::backend::link::Link;
use crate::core::ports::BackendsHealth;
use crate::server::probe::LoopProbe;

/// How long the accept loop has to answer a probe.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// How long each backend's health check may take before this process counts as wedged (longer
/// than the backends' own request timeouts, after which they answer `Unavailable`).
pub const BACKEND_DEADLINE: Duration = Duration::from_secs(10);

/// Health state every part of the node can reach through `NodeState::health`.
pub struct HealthState {
    accept: LoopProbe,
    stopping: AtomicBool,
    /// The backend clients' connections: a change makes the last check stale at once and
    /// wakes the supervisor, so readiness follows a loss or a recovery within a moment.
    links: Vec<Arc<Link>>,
    /// The last backend check: when, at which [`Self::links_version`], and its answer.
    last: Mutex<Option<(Instant, u64, BackendsHealth)>>,
}

impl HealthState {
    pub fn new(accept: LoopProbe, links: Vec<Arc<Link>>) -> Self {
        HealthState {
            accept,
            stopping: AtomicBool::new(false),
            links,
            last: Mutex::new(None),
        }
    }

    /// Changes with every change of any link.
    pub fn links_version(&self) -> u64 {
        self.links.iter().map(|l| l.version()).sum()
    }

    /// Returns at the next change of any link (never, without links).
    pub async fn links_changed(&self) {
        if self.links.is_empty() {
            return std::future::pending().await;
        }
        let changes = self.links.iter().map(|l| Box::pin(l.changed()));
        futures_util::future::select_all(changes).await;
    }

    /// From now on the node reports not ready (it is shutting down).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The result of the last backend health check, if one ran within `max_age` and no link
    /// changed since.
    pub fn last_backends_within(&self, max_age: Duration) -> Option<BackendsHealth> {
        let version = self.links_version();
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((at, v, h)) if at.elapsed() <= max_age && *v == version => Some(h.clone()),
            _ => None,
        }
    }
}

/// One health check of a node.
#[derive(Debug, Clone)]
pub struct Health {
    /// The accept loop answered its probe.
    pub accepting: bool,
    /// The node is shutting down.
    pub stopping: bool,
    /// An operator drained the node (admin API): it keeps running but takes nobody new.
    pub draining: bool,
    pub backends: BackendsHealth,
}

impl Health {
    /// Ready for traffic (`READY=1`, `/ready`): accepting, not shutting down, store and bus
    /// healthy (see the module documentation for why presence and registry are not required).
    pub fn ready(&self) -> bool {
        use crate::core::ports::BackendStatus::Healthy;
        self.accepting
            && !self.stopping
            && !self.draining
            && self.backends.store == Healthy
            && self.backends.bus == Healthy
    }

    /// Not stuck (the watchdog): the accept loop answered and every backend check returned in
    /// time, healthy or not (see the module documentation).
    pub fn alive(&self) -> bool {
        self.accepting && self.backends.all_answered()
    }

    /// What is wrong, in a few words (`ok` when ready).
    pub fn problems(&self) -> String {
        let mut p = Vec::new();
        if self.stopping {
            p.push("shutting down".to_string());
        }
        if self.draining && !self.stopping {
            p.push("drained by an operator (admin API: chat-zinx admin undrain)".to_string());
        }
        if !self.accepting {
            p.push("accept loop not answering".to_string());
        }
        if !self.backends.all_healthy() {
            p.push(format!("backends: {}", self.backends.summary()));
        }
        if p.is_empty() {
            "ok".into()
        } else {
            p.join("; ")
        }
    }
}

/// Like [`check`], but takes the backends' answer from a check younger than `max_age` when there
/// is one (the periodic check keeps it fresh), so that a caller with a short timeout (a load
/// balancer asking `/ready`) never waits on a slow backend. The accept loop is always probed.
pub async fn check_recent(state: &NodeState, max_age: Duration) -> Health {
    match state.health.last_backends_within(max_age) {
        Some(backends) => Health {
            accepting: state.health.accept.check(PROBE_DEADLINE).await,
            stopping: state.health.is_stopping(),
            draining: state.ctx.is_draining(),
            backends,
        },
        None => check(state).await,
    }
}

/// Checks the accept loop and the backends (at once, each bounded) and remembers the backends'
/// answer for `/metrics` and `/ready`.
pub async fn check(state: &NodeState) -> Health {
    let version = state.health.links_version();
    let (accepting, backends) = tokio::join!(
        state.health.accept.check(PROBE_DEADLINE),
        state.ctx.core.backends().health(BACKEND_DEADLINE),
    );
    *state.health.last.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((Instant::now(), version, backends.clone()));
    Health {
        accepting,
        stopping: state.health.is_stopping(),
        draining: state.ctx.is_draining(),
        backends,
    }
}

/// The one-line summary systemd shows (`STATUS=`) and the log repeats on change:
/// node id, connections, users, backend health.
pub fn status_line(state: &NodeState, health: &Health) -> String {
    let ctx = &state.ctx;
    let open = ctx.open.load(Ordering::Relaxed);
    let users = ctx.hub.user_count();
    let state = if health.stopping {
        "stopping".to_string()
    } else if health.draining {
        "drained by an operator (admin API), taking no new connections".to_string()
    } else if health.ready() && health.backends.all_healthy() {
        "backends ok".to_string()
    } else if health.ready() {
        format!("serving; degraded: {}", health.backends.summary())
    } else {
        format!("not ready: {}", health.problems())
    };
    format!(
        "node {}: {open} connection{}, {users} user{} online; {state}",
        ctx.core.node_id(),
        if open == 1 { "" } else { "s" },
        if users == 1 { "" } else { "s" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_everything_alive_only_needs_answers() {
        use crate::core::ports::BackendStatus::*;
        let all = |s: crate::core::ports::BackendStatus| BackendsHealth {
            store: s.clone(),
            presence: s.clone(),
            bus: s.clone(),
            registry: s,
        };
        let h = |accepting, stopping, backends| Health {
            accepting,
            stopping,
            draining: false,
            backends,
        };
        let ok = h(true, false, all(Healthy));
        assert!(ok.ready() && ok.alive());
        assert_eq!(ok.problems(), "ok");
        let drained = Health {
            draining: true,
            ..ok.clone()
        };
        assert!(
            !drained.ready() && drained.alive(),
            "drained: out of the load balancer, not restarted"
        );
        assert!(drained.problems().contains("drained by an operator"));

        let down = h(true, false, all(Unavailable("connection refused".into())));
        assert!(
            !down.ready() && down.alive(),
            "a down backend is reported, not restarted"
        );
        assert!(down
            .problems()
            .contains("store unavailable: connection refused"));

        let mut discovery_down = all(Healthy);
        discovery_down.registry = Unavailable("connection refused".into());
        discovery_down.presence = NoAnswer;
        let degraded = h(true, false, discovery_down);
        assert!(
            degraded.ready(),
            "presence and registry do not gate readiness"
        );
        assert!(
            !degraded.alive(),
            "a check that never returns still means wedged"
        );

        let hung = h(true, false, all(NoAnswer));
        assert!(
            !hung.ready() && !hung.alive(),
            "a check that never returns means wedged"
        );

        let stuck = h(false, false, all(Healthy));
        assert!(!stuck.ready() && !stuck.alive());
        assert!(stuck.problems().contains("accept loop"));

        let stopping = h(true, true, all(Healthy));
        assert!(!stopping.ready() && stopping.alive());
    }
}
