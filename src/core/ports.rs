//! The ports of the chat core: the small traits through which it reaches what lies outside
//! the process's domain logic, and the values that cross them.
//!
//! * [`Store`]: accounts, groups, memberships, the message log, history pages, delivery cursors.
//! * [`Presence`]: which user is connected where, cluster-wide.
//! * [`Bus`]: cross-node delivery of messages and control events.
//! * [`Registry`]: the nodes of the cluster, their load and health.
//! * [`Clock`]: the time ([`SystemClock`] when running, [`ManualClock`] in tests).
//!
//! The adapters in `crate::backend` implement them: in-process (the single-node default) and
//! NATS JetStream, Redis and Consul (the cluster). The core depends on these traits only,
//! never on an adapter; the node's composition root picks the adapters from the configuration.
//!
//! Every call is fallible: [`BackendError::Unavailable`] means "the backend could not answer, try
//! again" and is never confused with "not found" (an `Ok(None)`) or a business conflict.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::model::*;

/// Why a backend call failed.
///
/// `Display` and [`Error`](std::error::Error) are written by hand rather than derived: the
/// source of [`Unavailable`](BackendError::Unavailable) is kept in an [`Arc`] (see
/// [`ErrorSource`]) and [`source()`](std::error::Error::source) must hand out the error inside
/// it, not the `Arc`, or `downcast_ref` on the source would never match the adapter's type.
#[derive(Debug, Clone)]
pub enum BackendError {
    /// The backend did not answer or answered with an error: the operation may be retried.
    /// Shown as `{backend} is unavailable: {detail}`.
    ///
    /// Build it with [`BackendError::unavailable`], [`BackendError::unavailable_from`] or
    /// [`BackendError::unavailable_with_source`].
    Unavailable {
        /// The backend's name as users read it (`nats`, `redis`, `consul`, ...).
        backend: &'static str,
        /// The whole reason, for a person: it already includes the text of `source`, so that
        /// the one line of `Display` (in logs, in `/ready`, in a client's "try again") says
        /// everything. Whoever prints a whole chain of causes should leave out a cause whose
        /// text is already there, as [`crate::core::error::chain`] does.
        detail: String,
        /// The adapter's own error, when there was one (the client library's, a decoder's):
        /// for code that looks at the cause, through [`source()`](std::error::Error::source).
        source: Option<ErrorSource>,
    },
    /// A uniqueness rule refused the write.
    Conflict(Unique),
    /// The entity the write refers to does not exist.
    NotFound(Missing),
}

/// The cause kept in [`BackendError::Unavailable`]. An [`Arc`], not a `Box`, so that
/// [`BackendError`] stays [`Clone`] (a clone shares the cause; errors are never changed after
/// they are made, so sharing is sound); `Send + Sync + 'static` so that it crosses tasks and
/// can be downcast.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

impl BackendError {
    /// `backend` could not answer, for a reason this code found itself (no error to keep).
    pub fn unavailable(backend: &'static str, detail: impl Into<String>) -> BackendError {
        BackendError::Unavailable {
            backend,
            detail: detail.into(),
            source: None,
        }
    }

    /// `backend` could not answer because of `source`: its text is the detail and the error
    /// itself is kept as the source.
    pub fn unavailable_from<E>(backend: &'static str, source: E) -> BackendError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let detail = source.to_string();
        BackendError::unavailable_with_source(backend, detail, source)
    }

    /// `backend` could not answer because of `source`, in the words of `detail` (which should
    /// include the source's text: see the `detail` of [`BackendError::Unavailable`]).
    pub fn unavailable_with_source<E>(
        backend: &'static str,
        detail: impl Into<String>,
        source: E,
    ) -> BackendError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        BackendError::Unavailable {
            backend,
            detail: detail.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Unavailable {
                backend, detail, ..
            } => write!(f, "{backend} is unavailable: {detail}"),
            BackendError::Conflict(what) => write!(f, "{what} already exists"),
            BackendError::NotFound(what) => write!(f, "{what} not found"),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BackendError::Unavailable {
                source: Some(source),
                ..
            } => Some(&**source),
            _ => None,
        }
    }
}

/// What a uniqueness rule of the store protects (see [`BackendError::Conflict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    /// A username, case-insensitively.
    Username,
    /// A group name, case-insensitively.
    GroupName,
    /// One membership per user and group.
    Membership,
}

/// What a write referred to that does not exist (see [`BackendError::NotFound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    User,
    Group,
    Membership,
}

impl std::fmt::Display for Unique {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unique::Username => "username",
            Unique::GroupName => "group name",
            Unique::Membership => "membership",
        })
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Missing::User => "user",
            Missing::Group => "group",
            Missing::Membership => "membership",
        })
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// The acknowledgement of an append whose place in the log is already fixed (see
/// [`Store::place`]): it resolves to the appended message once the append is durable, or to
/// the reason it could not be made durable.
pub type AppendAck = futures_util::future::BoxFuture<'static, BackendResult<Appended>>;

/// The time, as the core reads it: every timestamp, token validity and cache age of the core
/// comes from here, so that tests can move time instead of waiting for it.
/// [`SystemClock`] is the real one; [`ManualClock`] moves only when told.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, Unix milliseconds (message and account timestamps, token validity).
    fn now_ms(&self) -> UnixMs;
    /// Monotonic time since an origin of the clock's own (ages of cached answers): never goes
    /// back, whatever the wall clock does.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks: [`SystemTime`](std::time::SystemTime) and
/// [`Instant`](std::time::Instant).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        now_ms()
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it (both its wall and its
/// monotonic time, by the same amount). For tests.
#[derive(Debug)]
pub struct ManualClock {
    wall_ms: std::sync::atomic::AtomicI64,
    mono_ns: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time is `start` (Unix ms) and monotonic time zero.
    pub fn new(start: UnixMs) -> Self {
        ManualClock {
            wall_ms: start.into(),
            mono_ns: 0.into(),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        self.wall_ms.fetch_add(by.as_millis() as i64, SeqCst);
        self.mono_ns.fetch_add(by.as_nanos() as u64, SeqCst);
    }
}

impl Default for ManualClock {
    /// Starts at 2023-11-14T22:13:20Z (1 700 000 000 000 ms).
    fn default() -> Self {
        Self::new(1_700_000_000_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMs {
        self.wall_ms.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_ns.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// This node's connections, as the core sees them. Implemented by the server's hub; every
/// method is synchronous and never blocks (pushes go into bounded per-connection queues).
pub trait LocalDelivery: Send + Sync + 'static {
    /// Pushes a direct message to every local connection of `users` except `skip`. Returns the
    /// users that should have had it here but did not get it (closed just now, queue full).
    fn deliver_direct(
        &self,
        message: &Arc<StoredMessage>,
        users: &[UserId],
        skip: Option<ConnId>,
    ) -> Vec<UserId>;
    /// Pushes a group message to every local connection of a member except `skip`; returns the
    /// members that should have had it here but did not get it.
    fn deliver_group(&self, message: &Arc<StoredMessage>, skip: Option<ConnId>) -> Vec<UserId>;
    /// Closes a connection, telling the client why.
    fn kick(&self, user: UserId, conn: ConnId, reason: &str);
    /// An operator closes the connection `conn` of `user` here, or all of them (`None`),
    /// telling each client `reason`. Returns how many it closed.
    fn close_by_admin(&self, user: UserId, conn: Option<ConnId>, reason: &str) -> usize;
    /// A user joined (`true`) or left a group: keep the local group index right.
    fn membership(&self, user: UserId, group: GroupId, joined: bool);
    /// Whether this node's index has `user` (logged in here) as a member of `group`. The index
    /// is loaded at login and follows membership events; the store stays the authority.
    fn is_member(&self, user: UserId, group: GroupId) -> bool;
    /// Pushes a direct message that another node routed here (presence placed `users` on this
    /// node) to their local connections; returns the users that missed it, including those
    /// not (or no longer) connected here.
    fn deliver_routed(&self, message: &Arc<StoredMessage>, users: &[UserId]) -> Vec<UserId>;
    /// A page of the login backlog of connection `conn` of `user` has been read: `page` are
    /// the positions of its messages. A connection that logs in records the positions pushed
    /// to it live from the moment it joins; this returns those of `page` (the backlog leaves
    /// them out) and, in the same step, starts dropping live pushes to `conn` of the other
    /// messages of `page` for the rest of the session (they are in the backlog the connection
    /// gets). Together they bring each message to the connection once, however a push and
    /// the read interleave. Empty for a connection that is not here (any more).
    fn backlog_page(&self, user: UserId, conn: ConnId, page: &[Seq]) -> HashSet<Seq>;
    /// The backlog of `conn` is read to its end (or given up): stop recording live pushes.
    fn backlog_done(&self, user: UserId, conn: ConnId);

    // -- group interest: which groups' messages this node must receive ------------------------
    /// Groups with a local online (or just closed, see [`Self::tombstone_grace`]) member.
    fn active_groups(&self) -> HashSet<GroupId>;
    /// Notified when [`Self::active_groups`] may have changed.
    fn groups_changed(&self) -> &tokio::sync::Notify;
    /// Forgets users whose last connection closed more than the grace period ago; returns
    /// whether the set of active groups changed.
    fn expire_tombstones(&self) -> bool;
    /// How long a user whose last connection closed still counts as a local member, so that
    /// a message already on its way is recognised as missed and recorded.
    fn tombstone_grace(&self) -> Duration;

    /// The delivery cursors due to be saved: `(user, position)` for each online user whose
    /// connections wrote up to `position` at least one flush period ago (outside the writer's
    /// uncertain window).
    fn due_cursors(&self) -> Vec<(UserId, Seq)>;
}

/// Accounts, groups, memberships, the message log and delivery cursors.
///
/// History reads cost O(page): implementations index messages by conversation and position.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // -- accounts --------------------------------------------------------------------------
    /// Creates a user with the next numeric id. `Conflict(Unique::Username)` when the name is taken
    /// (case-insensitively).
    async fn create_user(&self, user: NewUser) -> BackendResult<User>;
    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>>;
    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>>;
    /// Case-insensitive.
    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>>;
    /// Batched lookup for fan-out and member lists; unknown ids are left out.
    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>>;
    /// Sets `last_login` and returns the previous value (`None` on first login).
    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>>;
    /// Records that `token` of user `id` is revoked ([`User::revoke`] at `now`, Unix seconds).
    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()>;

    // -- groups ----------------------------------------------------------------------------
    /// Creates a group and its owner's membership at once. `Conflict(Unique::GroupName)`.
    async fn create_group(&self, group: NewGroup) -> BackendResult<(Group, Member)>;
    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>>;
    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>>;
    /// `NotFound(Missing::Group)`, `Conflict(Unique::GroupName)`.
    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group>;
    /// `NotFound(Missing::Group)`, `Conflict(Unique::Membership)`.
    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member>;
    /// `NotFound(Missing::Membership)`.
    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()>;
    /// `NotFound(Missing::Membership)`.
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()>;
    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>>;
    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>>;
    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>>;

    // -- message log -----------------------------------------------------------------------
    /// Appends a message (durably, in the cluster) and returns it with its log position.
    /// With a dedupe key already seen, nothing is appended and the earlier message is returned
    /// with `duplicate = true`. A direct message also records the chat relation of both users.
    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended>;
    /// The first phase of a two-phase [`Self::append`]: returns once the message's place in
    /// the log is fixed relative to this node's other appends, possibly before the append is
    /// durable, with the acknowledgement to await (the way a JetStream publish returns an ack
    /// future). A caller that starts its next append only once this returns overlaps its
    /// appends and still gets them logged in the order of its calls. An error here means
    /// nothing was placed. The default does the whole append before it returns (no overlap).
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let appended = self.append(msg, dedupe).await;
        Ok(Box::pin(std::future::ready(appended)))
    }
    /// The newest `limit` messages of a conversation strictly before `before` (all if `None`),
    /// newest first, and whether older ones exist.
    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage>;
    /// Up to `limit` messages of a conversation strictly after `after`, oldest first.
    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>>;
    /// Users this user exchanged direct messages with (the original's "chat relations").
    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>>;
    /// The position of the newest message of the whole log (0 when empty).
    async fn log_tail(&self) -> BackendResult<Seq>;

    // -- delivery cursors ------------------------------------------------------------------
    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor>;
    /// Raises `delivered` to `to` (never lowers it).
    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()>;
    /// Records that message `seq` could not be handed to the user: lowers `undelivered_from`.
    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()>;
    /// After a backlog was delivered up to `to`: sets `delivered = max(delivered, to)` and clears
    /// `undelivered_from` if it still equals `seen` (a newer mark stays).
    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()>;

    /// Whether this backend can serve now: a cheap round trip or the client's connection state.
    /// `Unavailable` when it cannot. In-process backends are always healthy.
    async fn health(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// Which user is connected where, across the cluster.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn register(&self, session: SessionInfo) -> BackendResult<()>;
    async fn unregister(&self, user: UserId, node_id: &str, conn: ConnId) -> BackendResult<()>;
    /// Sessions of many users at once (fan-out), oldest first per user.
    async fn sessions(&self, users: &[UserId]) -> BackendResult<HashMap<UserId, Vec<SessionInfo>>>;

    /// Background upkeep (refreshing this node's sessions before they expire) until
    /// `shutdown`; the node spawns it on its task tracker. In-process presence needs none.
    async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        drop(shutdown);
    }

    /// The node leaves for good (clean shutdown): drop all of its sessions now rather than
    /// letting them expire.
    async fn leave(&self) {}

    /// Whether this backend can serve now: a cheap round trip or the client's connection state.
    /// `Unavailable` when it cannot. In-process backends are always healthy.
    async fn health(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// What travels between nodes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusEvent {
    /// A stored direct message for the connections of `users` on the receiving node.
    Direct {
        message: Arc<StoredMessage>,
        users: Vec<UserId>,
    },
    /// A stored direct message for whichever of `users` have connections on the receiving
    /// node, sent to every node (see [`Bus::publish_all`]) because presence could not say
    /// where they are. A node where none of them is connected ignores it (that is not a
    /// miss); the origin has already delivered it locally and ignores its own event.
    DirectAnywhere {
        message: Arc<StoredMessage>,
        users: Vec<UserId>,
        origin_node: String,
    },
    /// A stored group message for every local connection of a member of the group. The node
    /// that published it has already delivered it locally and ignores its own event.
    Group {
        message: Arc<StoredMessage>,
        origin_node: String,
    },
    /// Close one connection of a user (device limit), telling it why.
    Kick {
        user: UserId,
        conn: ConnId,
        reason: String,
    },
    /// An operator closes sessions of a user (the admin API): the connection `conn` of the
    /// user on the receiving node, or every one of them (`None`), telling each `reason`.
    AdminKick {
        user: UserId,
        conn: Option<ConnId>,
        reason: String,
    },
    /// A user joined or left a group: the node updates its local group index.
    Membership {
        user: UserId,
        group: GroupId,
        joined: bool,
    },
}

/// Receives what the bus delivers to this node.
#[async_trait]
pub trait BusInbound: Send + Sync + 'static {
    async fn deliver(&self, event: BusEvent);
}

/// Cross-node delivery. Publishing happens after the durable write; the bus itself is not
/// durable (a lost event is recovered by backlog delivery and sync).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Starts delivering this node's events to `inbound`.
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()>;
    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()>;
    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()>;
    /// To every node of the cluster, this one included.
    async fn publish_all(&self, event: BusEvent) -> BackendResult<()>;
    /// This node has a local member of `group` online (again): receive its messages.
    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()>;
    /// No local member of `group` is online any more.
    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()>;

    /// Stops receiving for good (clean shutdown): the tasks reading subscriptions end.
    async fn close(&self) {}

    /// Whether this backend can serve now: a cheap round trip or the client's connection state.
    /// `Unavailable` when it cannot. In-process backends are always healthy.
    async fn health(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// The nodes of the cluster.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    async fn register(&self, node: NodeInfo) -> BackendResult<()>;
    async fn update_load(
        &self,
        node_id: &str,
        connections: u64,
        draining: bool,
    ) -> BackendResult<()>;
    async fn deregister(&self, node_id: &str) -> BackendResult<()>;
    /// Healthy nodes, least loaded first.
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>>;
    /// Every node whose health passes, draining ones included (they are left out of
    /// [`Self::nodes`]), least loaded first: what an operator lists. The default is
    /// [`Self::nodes`], for a registry that keeps no draining nodes.
    async fn all_nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        self.nodes().await
    }

    /// Whether this node can serve chat traffic now (`None`) or not, and why (`Some`). A
    /// registry with health checks shows it to everyone who picks nodes from it (Consul: the
    /// node's check turns `warning`, so it leaves the passing nodes, DNS answers and load
    /// balancers until it serves again). Registries without checks ignore it.
    async fn set_serving(&self, node_id: &str, problem: Option<String>) -> BackendResult<()> {
        let _ = (node_id, problem);
        Ok(())
    }

    /// Background upkeep (keeping this node's entry alive, watching the other nodes) until
    /// `shutdown`; the node spawns it on its task tracker. In-process registries need none.
    async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        drop(shutdown);
    }

    /// Whether this backend can serve now: a cheap round trip or the client's connection state.
    /// `Unavailable` when it cannot. In-process backends are always healthy.
    async fn health(&self) -> BackendResult<()> {
        Ok(())
    }
}

/// The backends a node runs on, chosen at start-up from the configuration.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<dyn Registry>,
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// How one backend answered a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendStatus {
    /// It can serve.
    Healthy,
    /// It answered that it cannot serve (the detail says why).
    Unavailable(String),
    /// It did not answer within the deadline.
    NoAnswer,
}

impl BackendStatus {
    fn of(r: Result<BackendResult<()>, tokio::time::error::Elapsed>) -> Self {
        match r {
            Ok(Ok(())) => BackendStatus::Healthy,
            Ok(Err(e)) => BackendStatus::Unavailable(e.to_string()),
            Err(_) => BackendStatus::NoAnswer,
        }
    }
}

/// The health of each backend of a node (see [`Backends::health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendsHealth {
    pub store: BackendStatus,
    pub presence: BackendStatus,
    pub bus: BackendStatus,
    pub registry: BackendStatus,
}

impl BackendsHealth {
    /// Every backend by role name, in a fixed order.
    pub fn entries(&self) -> [(&'static str, &BackendStatus); 4] {
        [
            ("store", &self.store),
            ("presence", &self.presence),
            ("bus", &self.bus),
            ("registry", &self.registry),
        ]
    }

    /// Every backend can serve.
    pub fn all_healthy(&self) -> bool {
        self.entries()
            .iter()
            .all(|(_, s)| **s == BackendStatus::Healthy)
    }

    /// Every backend answered (healthy or not) within the deadline.
    pub fn all_answered(&self) -> bool {
        self.entries()
            .iter()
            .all(|(_, s)| **s != BackendStatus::NoAnswer)
    }

    /// One line: `ok`, or what is wrong (`bus unavailable: ...; registry no answer`).
    pub fn summary(&self) -> String {
        let bad: Vec<String> = self
            .entries()
            .iter()
            .filter_map(|(name, s)| match s {
                BackendStatus::Healthy => None,
                BackendStatus::Unavailable(d) => Some(format!("{name} unavailable: {d}")),
                BackendStatus::NoAnswer => Some(format!("{name} not answering")),
            })
            .collect();
        if bad.is_empty() {
            "ok".into()
        } else {
            bad.join("; ")
        }
    }
}

impl Backends {
    /// Asks every backend whether it can serve, all at once, each bounded by `deadline`.
    pub async fn health(&self, deadline: std::time::Duration) -> BackendsHealth {
        use tokio::time::timeout;
        let (store, presence, bus, registry) = tokio::join!(
            timeout(deadline, self.store.health()),
            timeout(deadline, self.presence.health()),
            timeout(deadline, self.bus.health()),
            timeout(deadline, self.registry.health()),
        );
        BackendsHealth {
            store: BackendStatus::of(store),
            presence: BackendStatus::of(presence),
            bus: BackendStatus::of(bus),
            registry: BackendStatus::of(registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// An adapter's own error, as a client library would return it.
    #[derive(Debug)]
    struct Refused;

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection refused")
        }
    }

    impl std::error::Error for Refused {}

    #[test]
    fn backend_errors_read_as_before() {
        let cases = [
            (
                BackendError::unavailable("redis", "no answer within 2s"),
                "redis is unavailable: no answer within 2s",
            ),
            (
                BackendError::unavailable_from("nats", Refused),
                "nats is unavailable: connection refused",
            ),
            (
                BackendError::unavailable_with_source(
                    "consul",
                    "GET /x: connection refused",
                    Refused,
                ),
                "consul is unavailable: GET /x: connection refused",
            ),
            (
                BackendError::Conflict(Unique::GroupName),
                "group name already exists",
            ),
            (BackendError::NotFound(Missing::User), "user not found"),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text, "{e:?}");
        }
    }

    #[test]
    fn an_unavailable_backend_keeps_its_cause_as_the_source() {
        let e = BackendError::unavailable_from("nats", Refused);
        let source = e.source().expect("the cause is kept");
        assert!(source.downcast_ref::<Refused>().is_some(), "{source:?}");
        // A clone shares the cause.
        let copy = e.clone();
        assert!(copy.source().is_some_and(|s| s.is::<Refused>()));
        // Only the reasons this code found itself have none.
        assert!(BackendError::unavailable("nats", "not attached")
            .source()
            .is_none());
        assert!(BackendError::NotFound(Missing::Group).source().is_none());
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new(1_000);
        assert_eq!((c.now_ms(), c.monotonic()), (1_000, Duration::ZERO));
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 2_500);
        assert_eq!(c.monotonic(), Duration::from_millis(1_500));
    }

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let c = SystemClock::new();
        let before = now_ms();
        let read = c.now_ms();
        assert!(read >= before && read - before < 60_000, "{before} {read}");
        let a = c.monotonic();
        std::thread::sleep(Duration::from_millis(2));
        assert!(c.monotonic() >= a + Duration::from_millis(2));
    }
}
