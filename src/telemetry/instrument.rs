//! Metrics around the cluster backends: every call's latency and outcome
//! (`chat_zinx_backend_call_*`), and cross-node deliveries, measured at the trait boundary so
//! that the backends themselves stay free of metrics code.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::core::model::*;
use crate::core::ports::*;

async fn timed<T>(
    metrics: &Metrics,
    backend: &'static str,
    op: &'static str,
    call: impl Future<Output = BackendResult<T>>,
) -> BackendResult<T> {
    timed_since(metrics, backend, op, Instant::now(), call).await
}

/// [`timed`], for a call that started at `start`.
async fn timed_since<T>(
    metrics: &Metrics,
    backend: &'static str,
    op: &'static str,
    start: Instant,
    call: impl Future<Output = BackendResult<T>>,
) -> BackendResult<T> {
    let in_flight = metrics.backend_call_in_flight(backend);
    let result = call.await;
    drop(in_flight);
    // A business answer (conflict, not found) is a successful call.
    let ok = !matches!(result, Err(BackendError::Unavailable { .. }));
    metrics.observe_backend_call(backend, op, start.elapsed(), ok);
    result
}

/// Which ports run on a cluster backend (the others are in-process and not timed).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cluster {
    /// Store and bus on NATS.
    pub nats: bool,
    /// Presence on Redis.
    pub redis: bool,
    /// Registry on Consul.
    pub consul: bool,
}

/// Wraps the cluster backends of `b` (those not in-process) with metrics.
pub fn instrument(b: Backends, metrics: &Metrics, cluster: Cluster) -> Backends {
    let m = metrics.clone();
    Backends {
        store: if cluster.nats {
            Arc::new(Timed {
                inner: b.store,
                metrics: m.clone(),
                name: "jetstream",
            })
        } else {
            b.store
        },
        bus: if cluster.nats {
            Arc::new(Timed {
                inner: b.bus,
                metrics: m.clone(),
                name: "nats",
            })
        } else {
            b.bus
        },
        presence: if cluster.redis {
            Arc::new(Timed {
                inner: b.presence,
                metrics: m.clone(),
                name: "redis",
            })
        } else {
            b.presence
        },
        registry: if cluster.consul {
            Arc::new(Timed {
                inner: b.registry,
                metrics: m,
                name: "consul",
            })
        } else {
            b.registry
        },
    }
}

/// A backend with its calls timed.
pub struct Timed<T: ?Sized> {
    inner: Arc<T>,
    metrics: Metrics,
    name: &'static str,
}

macro_rules! t {
    ($self:ident, $op:literal, $call:expr) => {
        timed(&$self.metrics, $self.name, $op, $call).await
    };
}

#[async_trait]
impl Store for Timed<dyn Store> {
    async fn create_user(&self, user: NewUser) -> BackendResult<User> {
        t!(self, "create_user", self.inner.create_user(user))
    }
    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        t!(self, "user_by_id", self.inner.user_by_id(id))
    }
    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        t!(self, "user_by_uuid", self.inner.user_by_uuid(uuid))
    }
    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        t!(self, "user_by_name", self.inner.user_by_name(name))
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        t!(self, "users_by_ids", self.inner.users_by_ids(ids))
    }
    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        t!(self, "record_login", self.inner.record_login(id, at))
    }
    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()> {
        t!(
            self,
            "revoke_token",
            self.inner.revoke_token(id, token, now)
        )
    }
    async fn create_group(&self, group: NewGroup) -> BackendResult<(Group, Member)> {
        t!(self, "create_group", self.inner.create_group(group))
    }
    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        t!(self, "group", self.inner.group(id))
    }
    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        t!(self, "groups_by_ids", self.inner.groups_by_ids(ids))
    }
    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        t!(self, "update_group", self.inner.update_group(id, patch))
    }
    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        t!(
            self,
            "add_member",
            self.inner.add_member(group, user, role, at)
        )
    }
    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        t!(self, "remove_member", self.inner.remove_member(group, user))
    }
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        t!(self, "set_role", self.inner.set_role(group, user, role))
    }
    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        t!(self, "member", self.inner.member(group, user))
    }
    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        t!(self, "members", self.inner.members(group))
    }
    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        t!(self, "groups_of", self.inner.groups_of(user))
    }
    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        t!(self, "publish", self.inner.append(msg, dedupe))
    }
    /// Timed from the placement to the acknowledgement: the whole append, as `append`.
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let start = Instant::now();
        let placed = self.inner.place(msg, dedupe).await;
        let ack = match placed {
            Ok(ack) => ack,
            Err(e) => {
                let ok = !matches!(e, BackendError::Unavailable { .. });
                self.metrics
                    .observe_backend_call(self.name, "publish", start.elapsed(), ok);
                return Err(e);
            }
        };
        let (metrics, name) = (self.metrics.clone(), self.name);
        Ok(Box::pin(async move {
            timed_since(&metrics, name, "publish", start, ack).await
        }))
    }
    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        t!(self, "history", self.inner.history(conv, before, limit))
    }
    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        t!(self, "after", self.inner.after(conv, after, limit))
    }
    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        t!(self, "peers_of", self.inner.peers_of(user))
    }
    async fn log_tail(&self) -> BackendResult<Seq> {
        t!(self, "log_tail", self.inner.log_tail())
    }
    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        t!(self, "cursor", self.inner.cursor(user))
    }
    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        t!(self, "advance_cursor", self.inner.advance_cursor(user, to))
    }
    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        t!(
            self,
            "mark_undelivered",
            self.inner.mark_undelivered(user, seq)
        )
    }
    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        t!(
            self,
            "settle_cursor",
            self.inner.settle_cursor(user, seen, to)
        )
    }
    async fn health(&self) -> BackendResult<()> {
        t!(self, "health", self.inner.health())
    }
}

#[async_trait]
impl Presence for Timed<dyn Presence> {
    async fn register(&self, session: SessionInfo) -> BackendResult<()> {
        t!(self, "register", self.inner.register(session))
    }
    async fn unregister(&self, user: UserId, node_id: &str, conn: ConnId) -> BackendResult<()> {
        t!(
            self,
            "unregister",
            self.inner.unregister(user, node_id, conn)
        )
    }
    async fn sessions(&self, users: &[UserId]) -> BackendResult<HashMap<UserId, Vec<SessionInfo>>> {
        t!(self, "sessions", self.inner.sessions(users))
    }
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.inner.clone().run(shutdown).await
    }
    async fn leave(&self) {
        self.inner.leave().await
    }
    async fn health(&self) -> BackendResult<()> {
        t!(self, "health", self.inner.health())
    }
}

/// The node's inbound side of the bus, counting what it receives.
struct CountedInbound {
    inner: Arc<dyn BusInbound>,
    metrics: Metrics,
}

#[async_trait]
impl BusInbound for CountedInbound {
    async fn deliver(&self, event: BusEvent) {
        self.metrics.bus_received();
        self.inner.deliver(event).await
    }
}

#[async_trait]
impl Bus for Timed<dyn Bus> {
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()> {
        // Every event the bus hands this node counts as `bus_messages_total{direction="in"}`.
        let inbound: Arc<dyn BusInbound> = Arc::new(CountedInbound {
            inner: inbound,
            metrics: self.metrics.clone(),
        });
        t!(self, "attach", self.inner.attach(node_id, inbound))
    }
    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()> {
        let carries_message = matches!(event, BusEvent::Direct { .. });
        let result = t!(
            self,
            "publish_node",
            self.inner.publish_node(node_id, event)
        );
        if carries_message {
            self.metrics.cross_node_delivery(result.is_ok());
        }
        if result.is_ok() {
            self.metrics.bus_published();
        }
        result
    }
    async fn publish_all(&self, event: BusEvent) -> BackendResult<()> {
        let carries_message = matches!(event, BusEvent::DirectAnywhere { .. });
        let result = t!(self, "publish_all", self.inner.publish_all(event));
        if carries_message {
            self.metrics.cross_node_delivery(result.is_ok());
        }
        if result.is_ok() {
            self.metrics.bus_published();
        }
        result
    }
    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()> {
        let result = t!(
            self,
            "publish_group",
            self.inner.publish_group(group, event)
        );
        self.metrics.cross_node_delivery(result.is_ok());
        if result.is_ok() {
            self.metrics.bus_published();
        }
        result
    }
    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()> {
        t!(self, "subscribe_group", self.inner.subscribe_group(group))
    }
    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()> {
        t!(
            self,
            "unsubscribe_group",
            self.inner.unsubscribe_group(group)
        )
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn health(&self) -> BackendResult<()> {
        t!(self, "health", self.inner.health())
    }
}

#[async_trait]
impl Registry for Timed<dyn Registry> {
    async fn register(&self, node: NodeInfo) -> BackendResult<()> {
        t!(self, "register", self.inner.register(node))
    }
    async fn update_load(
        &self,
        node_id: &str,
        connections: u64,
        draining: bool,
    ) -> BackendResult<()> {
        t!(
            self,
            "update_load",
            self.inner.update_load(node_id, connections, draining)
        )
    }
    async fn deregister(&self, node_id: &str) -> BackendResult<()> {
        t!(self, "deregister", self.inner.deregister(node_id))
    }
    async fn set_serving(&self, node_id: &str, problem: Option<String>) -> BackendResult<()> {
        t!(
            self,
            "set_serving",
            self.inner.set_serving(node_id, problem)
        )
    }
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let nodes = t!(self, "nodes", self.inner.nodes());
        if let Ok(list) = &nodes {
            self.metrics.set_cluster_nodes(list.len() as u64);
        }
        nodes
    }
    async fn all_nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        t!(self, "all_nodes", self.inner.all_nodes())
    }
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.inner.clone().run(shutdown).await
    }
    async fn health(&self) -> BackendResult<()> {
        t!(self, "health", self.inner.health())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(m: &Metrics, backend: &str) -> String {
        let lat = crate::telemetry::metrics::DeliveryLatency::default();
        let text = m.render(&crate::telemetry::metrics::LiveStats {
            node_id: "n1",
            open_connections: 0,
            logged_in_connections: 0,
            unauthenticated_connections: 0,
            users: 0,
            outbox_frames: 0,
            outbox_frames_max: 0,
            outbox_bytes: 0,
            outbox_bytes_budget: 0,
            outbox_bytes_max: 0,
            slow_consumer_closes: &[],
            pushes: 0,
            pushes_missed: 0,
            slow_consumers: 0,
            delivery_latency: &lat,
            backends: None,
        });
        let prefix =
            format!("chat_zinx_backend_queue_depth{{backend=\"{backend}\",queue=\"in_flight\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_string()
    }

    #[tokio::test]
    async fn a_call_is_in_flight_until_it_returns() {
        let m = Metrics::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call = timed(&m, "redis", "sessions", async move {
            rx.await.ok();
            Ok(())
        });
        tokio::pin!(call);
        assert!(futures_util::poll!(call.as_mut()).is_pending());
        assert_eq!(in_flight(&m, "redis"), "1");
        tx.send(()).unwrap();
        call.await.unwrap();
        assert_eq!(in_flight(&m, "redis"), "0");
    }
}
