//! What the node does, as Prometheus metrics (`prometheus-client`), served by `/metrics`.
//!
//! [`Metrics`] is a cheap handle (clone it freely): the connection tasks, the session and the
//! cluster backends count into it. Values that are a state rather than a count (open
//! connections, users, queue depths, backend health) are read when `/metrics` is scraped
//! ([`Metrics::render`] with a [`LiveStats`]), so they are never stale.
//!
//! Every family is named `chat_zinx_*`. The cluster families (backend calls, cross-node
//! deliveries, bus throughput, backend queue depths, cluster nodes) exist from the start and
//! stay empty until a cluster backend feeds them through:
//!
//! * [`Metrics::observe_backend_call`]: one call to NATS/JetStream, Redis or Consul;
//! * [`Metrics::cross_node_delivery`]: one message handed to another node (or not);
//! * [`Metrics::bus_published`] / [`Metrics::bus_received`]: bus throughput;
//! * [`Metrics::backend_call_in_flight`]: calls to a backend waiting for its answer;
//! * [`Metrics::set_cluster_nodes`]: nodes the registry knows.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::core::ports::{BackendStatus, BackendsHealth};

/// Why a connection ended (logged, and counted in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    ClientClosed,
    Idle,
    /// Not logged in within `protocol.login_timeout`.
    LoginTimeout,
    /// Refused at once: too many connections not logged in (node-wide or from its address).
    NotAdmitted,
    Oversized,
    Truncated,
    ReadError,
    ClosedByServer,
    Shutdown,
}

/// The `Content-Type` of [`Metrics::render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prefix of every metric name.
const PREFIX: &str = "chat_zinx";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendOpLabels {
    backend: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    backend: &'static str,
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    backend: &'static str,
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node_id: String,
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to ~16 s (doubling).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// End-to-end delivery latency: from the moment a message was stored (its timestamp, set by
/// the node that took it) to its hand-over to a recipient connection's write queue, on this
/// node. Kept by the hub (`HubStats`), exported by [`Metrics::render`].
#[derive(Clone, Debug)]
pub struct DeliveryLatency(Histogram);

impl Default for DeliveryLatency {
    fn default() -> Self {
        DeliveryLatency(latency_histogram())
    }
}

impl DeliveryLatency {
    /// Records one delivery of a message stored at `stored_at_ms` (Unix milliseconds).
    pub fn observe_since(&self, stored_at_ms: i64) {
        self.observe(Self::seconds_since(stored_at_ms));
    }

    /// Seconds from `stored_at_ms` to now (read the clock once for many hand-overs).
    pub fn seconds_since(stored_at_ms: i64) -> f64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Clocks of two nodes may disagree a little: never record a negative latency.
        let ms = now_ms.saturating_sub(stored_at_ms).max(0);
        ms as f64 / 1000.0
    }

    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

struct Inner {
    registry: Registry,
    accepted: Counter,
    refused: Counter,
    tls_failed: Counter,
    proxy_refused: Family<ReasonLabels, Counter>,
    frames_in: Counter,
    registrations: Counter,
    logins: Family<OutcomeLabels, Counter>,
    messages: Family<MessageLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    cross_node: Family<OutcomeLabels, Counter>,
    backend_calls: Family<BackendCallLabels, Counter>,
    backend_latency: HistogramFamily<BackendOpLabels>,
    bus_messages: Family<DirectionLabels, Counter>,
    backend_queue_depth: Family<QueueLabels, Gauge>,
    cluster_nodes: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
}

/// A backend call under way (see [`Metrics::backend_call_in_flight`]); dropping it ends it.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The node's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// What `/metrics` reads at scrape time (states, not counts).
pub struct LiveStats<'a> {
    pub node_id: &'a str,
    /// Open chat connections, logged in or not.
    pub open_connections: u64,
    /// Logged-in connections on this node.
    pub logged_in_connections: u64,
    /// Connections not logged in (yet, or after a logout), counted against
    /// `server.max_unauthenticated`.
    pub unauthenticated_connections: u64,
    /// Users with at least one connection on this node.
    pub users: u64,
    /// Frames waiting in the write queues of logged-in connections, in total and the largest.
    pub outbox_frames: u64,
    pub outbox_frames_max: u64,
    /// Bytes waiting in the write queues of all connections (the node's count, see
    /// `server.write_queue_budget`), its limit, and the largest queue of a logged-in connection.
    pub outbox_bytes: u64,
    pub outbox_bytes_budget: u64,
    pub outbox_bytes_max: u64,
    /// Connections closed because their client did not read, by reason (label, count).
    pub slow_consumer_closes: &'a [(&'static str, u64)],
    /// Hub counters.
    pub pushes: u64,
    pub pushes_missed: u64,
    pub slow_consumers: u64,
    pub delivery_latency: &'a DeliveryLatency,
    /// The last backend health check, if one ran.
    pub backends: Option<&'a BackendsHealth>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Chat connections accepted",
            accepted.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Chat connections refused because server.max_connections was reached",
            refused.clone(),
        );
        let tls_failed = Counter::default();
        registry.register(
            "tls_handshakes_failed",
            "TLS handshakes of chat connections that failed or timed out (tls.handshake_timeout)",
            tls_failed.clone(),
        );
        let proxy_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "proxy_headers_refused",
            "Connections from a trusted proxy (server.proxy_protocol_from) closed without a valid PROXY header, by reason: invalid, timeout, closed",
            proxy_refused.clone(),
        );
        let closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Chat connections ended, by reason",
            closed.clone(),
        );
        let frames_in = Counter::default();
        registry.register(
            "frames_received",
            "Frames received from clients",
            frames_in.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "registrations",
            "Accounts registered through this node",
            registrations.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "logins",
            "Login attempts by outcome (ok, failed)",
            logins.clone(),
        );
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages sent by clients, by kind (direct, group) and outcome (stored, duplicate, failed)",
            messages.clone(),
        );
        let cross_node = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "cross_node_deliveries",
            "Messages handed to another node over the bus, by outcome (ok, failed)",
            cross_node.clone(),
        );
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        registry.register(
            "backend_calls",
            "Calls to cluster backends (jetstream, nats, redis, consul) by operation and outcome (ok, error)",
            backend_calls.clone(),
        );
        let backend_latency: HistogramFamily<BackendOpLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "backend_call_duration",
            "Latency of calls to cluster backends by operation (JetStream publish, Redis and Consul calls, ...)",
            Unit::Seconds,
            backend_latency.clone(),
        );
        let bus_messages = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "bus_messages",
            "Events on the inter-node bus (NATS), by direction (out, in)",
            bus_messages.clone(),
        );
        let backend_queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "backend_queue_depth",
            "Items waiting in a backend client's queue (for example NATS pending publishes)",
            backend_queue_depth.clone(),
        );
        let cluster_nodes = Gauge::default();
        registry.register(
            "cluster_nodes",
            "Nodes registered in the cluster registry, as last seen by this node",
            cluster_nodes.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by outcome (applied, rejected)",
            reloads.clone(),
        );
        // Known label sets start at 0, so rates and ratios exist before the first event. (An
        // empty family is left out of the text output altogether: the backend call families
        // appear with their first call.)
        for outcome in ["ok", "failed"] {
            drop(cross_node.get_or_create(&OutcomeLabels { outcome }));
            drop(logins.get_or_create(&OutcomeLabels { outcome }));
        }
        for direction in ["out", "in"] {
            drop(bus_messages.get_or_create(&DirectionLabels { direction }));
        }
        for outcome in ["applied", "rejected"] {
            drop(reloads.get_or_create(&OutcomeLabels { outcome }));
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                accepted,
                refused,
                tls_failed,
                proxy_refused,
                frames_in,
                registrations,
                logins,
                messages,
                closed,
                cross_node,
                backend_calls,
                backend_latency,
                bus_messages,
                backend_queue_depth,
                cluster_nodes,
                reloads,
            }),
        }
    }

    // -- connections and sessions (server) ---------------------------------------------------

    pub fn connection_accepted(&self) {
        self.inner.accepted.inc();
    }
    pub fn connection_refused(&self) {
        self.inner.refused.inc();
    }
    /// A TLS handshake failed or timed out (the connection was counted as accepted).
    pub fn tls_handshake_failed(&self) {
        self.inner.tls_failed.inc();
    }
    /// A connection from a trusted proxy was closed without a valid PROXY header (`reason`:
    /// `invalid`, `timeout`, `closed`; it was counted as accepted).
    pub fn proxy_header_refused(&self, reason: &'static str) {
        self.inner
            .proxy_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
    pub fn frame_in(&self, _id: u32) {
        self.inner.frames_in.inc();
    }
    pub fn registered(&self) {
        self.inner.registrations.inc();
    }
    pub fn logged_in(&self) {
        self.login("ok");
    }
    pub fn login_failed(&self) {
        self.login("failed");
    }
    fn login(&self, outcome: &'static str) {
        self.inner
            .logins
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
    /// A message was stored (`duplicate`: a retry with a known `client_msg_id`).
    pub fn message_stored(&self, kind: &str, duplicate: bool) {
        let outcome = if duplicate { "duplicate" } else { "stored" };
        self.message(kind, outcome);
    }
    /// A message could not be stored.
    pub fn message_failed(&self, kind: &str) {
        self.message(kind, "failed");
    }
    fn message(&self, kind: &str, outcome: &'static str) {
        let kind = if kind == "group" { "group" } else { "direct" };
        self.inner
            .messages
            .get_or_create(&MessageLabels { kind, outcome })
            .inc();
    }
    pub fn connection_ended(&self, reason: EndReason) {
        let reason = match reason {
            EndReason::ClientClosed => "client_closed",
            EndReason::Idle => "idle",
            EndReason::LoginTimeout => "login_timeout",
            EndReason::NotAdmitted => "not_admitted",
            EndReason::Oversized => "oversized",
            EndReason::Truncated => "truncated",
            EndReason::ReadError => "read_error",
            EndReason::ClosedByServer => "closed_by_server",
            EndReason::Shutdown => "shutdown",
        };
        self.inner
            .closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
    /// A SIGHUP reload was applied (`true`) or rejected (`false`).
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.inner
            .reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    // -- cluster (fed by the cluster backends) -------------------------------------------------

    /// One call to a cluster backend: `backend` is `"jetstream"`, `"nats"`, `"redis"` or
    /// `"consul"`, `op` a short operation name (`"publish"`, `"kv_get"`, `"register"`, ...).
    /// Records its latency and whether it succeeded.
    pub fn observe_backend_call(
        &self,
        backend: &'static str,
        op: &'static str,
        elapsed: Duration,
        ok: bool,
    ) {
        self.inner
            .backend_latency
            .get_or_create(&BackendOpLabels { backend, op })
            .observe(elapsed.as_secs_f64());
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .backend_calls
            .get_or_create(&BackendCallLabels {
                backend,
                op,
                outcome,
            })
            .inc();
    }

    /// One message handed to another node (`ok`), or that could not be (`!ok`).
    pub fn cross_node_delivery(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.inner
            .cross_node
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One event published on the inter-node bus.
    pub fn bus_published(&self) {
        self.bus("out");
    }

    /// One event received from the inter-node bus.
    pub fn bus_received(&self) {
        self.bus("in");
    }

    fn bus(&self, direction: &'static str) {
        self.inner
            .bus_messages
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// One call to `backend` waiting for its answer until the guard drops:
    /// `backend_queue_depth{backend, queue="in_flight"}` counts them.
    pub fn backend_call_in_flight(&self, backend: &'static str) -> InFlight {
        let gauge = self
            .inner
            .backend_queue_depth
            .get_or_create(&QueueLabels {
                backend,
                queue: "in_flight",
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Nodes the cluster registry lists.
    pub fn set_cluster_nodes(&self, nodes: u64) {
        self.inner
            .cluster_nodes
            .set(i64::try_from(nodes).unwrap_or(i64::MAX));
    }

    // -- reading ---------------------------------------------------------------------------------

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.get()
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self, live: &LiveStats<'_>) -> String {
        let mut scrape = Registry::with_prefix(PREFIX);
        let node = Family::<NodeLabels, Gauge>::default();
        node.get_or_create(&NodeLabels {
            node_id: live.node_id.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        scrape.register("node_info", "This node's id and version (value 1)", node);
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        scrape.register(
            "connections",
            "Open chat connections (logged in or not)",
            gauge(live.open_connections),
        );
        scrape.register(
            "logged_in_connections",
            "Logged-in chat connections on this node",
            gauge(live.logged_in_connections),
        );
        scrape.register(
            "unauthenticated_connections",
            "Chat connections that have not logged in (limited by server.max_unauthenticated)",
            gauge(live.unauthenticated_connections),
        );
        scrape.register(
            "users",
            "Users with at least one connection on this node (user distribution across nodes)",
            gauge(live.users),
        );
        scrape.register(
            "outbox_frames",
            "Frames waiting in the write queues of this node's logged-in connections",
            gauge(live.outbox_frames),
        );
        scrape.register(
            "outbox_frames_max",
            "Frames waiting in the fullest write queue on this node",
            gauge(live.outbox_frames_max),
        );
        scrape.register(
            "outbox_bytes",
            "Bytes waiting in the write queues of all connections of this node",
            gauge(live.outbox_bytes),
        );
        scrape.register(
            "outbox_bytes_budget",
            "Limit of outbox_bytes (server.write_queue_budget): past it the connections holding the most are closed",
            gauge(live.outbox_bytes_budget),
        );
        scrape.register(
            "outbox_bytes_max",
            "Bytes waiting in the largest write queue of a logged-in connection on this node",
            gauge(live.outbox_bytes_max),
        );
        let closes = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in live.slow_consumer_closes {
            closes.get_or_create(&ReasonLabels { reason }).inc_by(*n);
        }
        scrape.register(
            "slow_consumer_closes",
            "Connections closed because their client did not read, by reason: push_queue_full (a push found the write queue full), reply_wait (a reply waited the write timeout for room), write_timeout (the socket took nothing for the write timeout), node_budget (the node was over server.write_queue_budget and this connection held the most)",
            closes,
        );
        scrape.register(
            "pushes",
            "Message frames pushed into connection write queues",
            ConstCounter::new(live.pushes),
        );
        scrape.register(
            "pushes_missed",
            "Pushes a recipient missed (offline, closing, slow): delivered at its next login or sync",
            ConstCounter::new(live.pushes_missed),
        );
        scrape.register(
            "slow_consumer_disconnects",
            "Connections closed because their client read too slowly (every reason of slow_consumer_closes)",
            ConstCounter::new(live.slow_consumers),
        );
        scrape.register_with_unit(
            "delivery_latency",
            "End-to-end delivery latency: from a message's store time to its hand-over to a recipient connection",
            Unit::Seconds,
            live.delivery_latency.0.clone(),
        );
        let up = Family::<BackendLabels, Gauge>::default();
        if let Some(health) = live.backends {
            for (backend, status) in health.entries() {
                up.get_or_create(&BackendLabels { backend })
                    .set(i64::from(*status == BackendStatus::Healthy));
            }
        }
        scrape.register(
            "backend_up",
            "1 when the backend (store, presence, bus, registry) passed the last health check",
            up,
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.inner.registry);
        let _ = prometheus_text::encode(&mut out, &scrape);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live<'a>(lat: &'a DeliveryLatency, backends: Option<&'a BackendsHealth>) -> LiveStats<'a> {
        LiveStats {
            node_id: "n1",
            open_connections: 3,
            unauthenticated_connections: 1,
            logged_in_connections: 2,
            users: 1,
            outbox_frames: 5,
            outbox_frames_max: 4,
            outbox_bytes: 100,
            outbox_bytes_budget: 1000,
            outbox_bytes_max: 60,
            slow_consumer_closes: &[("write_timeout", 2)],
            pushes: 7,
            pushes_missed: 1,
            slow_consumers: 0,
            delivery_latency: lat,
            backends,
        }
    }

    #[test]
    fn renders_counts_states_and_the_empty_cluster_families() {
        let m = Metrics::new();
        m.connection_accepted();
        m.logged_in();
        m.login_failed();
        m.message_stored("direct", false);
        m.message_stored("group", true);
        m.message_failed("group");
        m.connection_ended(EndReason::Idle);
        let lat = DeliveryLatency::default();
        lat.observe_since(0);
        let health = BackendsHealth {
            store: BackendStatus::Healthy,
            presence: BackendStatus::Healthy,
            bus: BackendStatus::Unavailable("down".into()),
            registry: BackendStatus::NoAnswer,
        };
        let text = m.render(&live(&lat, Some(&health)));
        for line in [
            "chat_zinx_connections_accepted_total 1",
            "chat_zinx_logins_total{outcome=\"ok\"} 1",
            "chat_zinx_logins_total{outcome=\"failed\"} 1",
            "chat_zinx_messages_total{kind=\"direct\",outcome=\"stored\"} 1",
            "chat_zinx_messages_total{kind=\"group\",outcome=\"duplicate\"} 1",
            "chat_zinx_messages_total{kind=\"group\",outcome=\"failed\"} 1",
            "chat_zinx_connections_closed_total{reason=\"idle\"} 1",
            "chat_zinx_connections 3",
            "chat_zinx_users 1",
            "chat_zinx_pushes_total 7",
            "chat_zinx_delivery_latency_seconds_count 1",
            "chat_zinx_backend_up{backend=\"store\"} 1",
            "chat_zinx_backend_up{backend=\"bus\"} 0",
            "chat_zinx_backend_up{backend=\"registry\"} 0",
            "chat_zinx_node_info{node_id=\"n1\",version=\"",
            "chat_zinx_cross_node_deliveries_total{outcome=\"ok\"} 0",
            "chat_zinx_bus_messages_total{direction=\"in\"} 0",
            "chat_zinx_config_reloads_total{outcome=\"applied\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn cluster_api_feeds_its_families() {
        let m = Metrics::new();
        m.observe_backend_call("jetstream", "publish", Duration::from_millis(3), true);
        m.observe_backend_call("redis", "sessions", Duration::from_millis(1), false);
        m.cross_node_delivery(true);
        m.cross_node_delivery(false);
        m.bus_published();
        let in_flight = [
            m.backend_call_in_flight("jetstream"),
            m.backend_call_in_flight("jetstream"),
        ];
        m.set_cluster_nodes(3);
        m.config_reload(false);
        let lat = DeliveryLatency::default();
        let text = m.render(&live(&lat, None));
        for line in [
            "chat_zinx_backend_call_duration_seconds_count{backend=\"jetstream\",op=\"publish\"} 1",
            "chat_zinx_backend_calls_total{backend=\"redis\",op=\"sessions\",outcome=\"error\"} 1",
            "chat_zinx_cross_node_deliveries_total{outcome=\"ok\"} 1",
            "chat_zinx_cross_node_deliveries_total{outcome=\"failed\"} 1",
            "chat_zinx_bus_messages_total{direction=\"out\"} 1",
            "chat_zinx_backend_queue_depth{backend=\"jetstream\",queue=\"in_flight\"} 2",
            "chat_zinx_cluster_nodes 3",
            "chat_zinx_config_reloads_total{outcome=\"rejected\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        drop(in_flight);
        let text = m.render(&live(&lat, None));
        let line = "chat_zinx_backend_queue_depth{backend=\"jetstream\",queue=\"in_flight\"} 0";
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
