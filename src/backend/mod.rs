//! The small traits the chat core talks to, and their implementations.
//!
//! * [`Store`]: accounts, groups, memberships, the message log, history pages, delivery cursors.
//! * [`Presence`]: which user is connected where, cluster-wide.
//! * [`Bus`]: cross-node delivery of messages and control events.
//! * [`Registry`]: the nodes of the cluster, their load and health.
//!
//! Every call is fallible: [`BackendError::Unavailable`] means "the backend could not answer, try
//! again" and is never confused with "not found" (an `Ok(None)`) or a business conflict. The
//! in-process implementations ([`memory`]) are the single-node default; the cluster ones
//! (NATS JetStream, Redis, Consul) implement the same traits.

pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::core::model::*;

/// Why a backend call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend did not answer or answered with an error: the operation may be retried.
    #[error("{backend} is unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// A uniqueness rule refused the write (the name of the unique thing is given).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The entity the write refers to does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Accounts, groups, memberships, the message log and delivery cursors.
///
/// History reads cost O(page): implementations index messages by conversation and position.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // -- accounts --------------------------------------------------------------------------
    /// Creates a user with the next numeric id. `Conflict("username")` when the name is taken
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

    // -- groups ----------------------------------------------------------------------------
    /// Creates a group and its owner's membership at once. `Conflict("group name")`.
    async fn create_group(&self, group: NewGroup) -> BackendResult<(Group, Member)>;
    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>>;
    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>>;
    /// `NotFound("group")`, `Conflict("group name")`.
    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group>;
    /// `NotFound("group")`, `Conflict("membership")`.
    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member>;
    /// `NotFound("membership")`.
    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()>;
    /// `NotFound("membership")`.
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()>;
    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>>;
    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>>;
    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>>;

    // -- message log -----------------------------------------------------------------------
    /// Appends a message (durably, in the cluster) and returns it with its log position.
    /// With a dedupe key already seen, nothing is appended and the earlier message is returned
    /// with `duplicate = true`. A direct message also records the chat relation of both users.
    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended>;
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
}

/// Which user is connected where, across the cluster.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn register(&self, session: SessionInfo) -> BackendResult<()>;
    async fn unregister(&self, user: UserId, node_id: &str, conn: ConnId) -> BackendResult<()>;
    /// Sessions of many users at once (fan-out), oldest first per user.
    async fn sessions(&self, users: &[UserId]) -> BackendResult<HashMap<UserId, Vec<SessionInfo>>>;
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
    /// This node has a local member of `group` online (again): receive its messages.
    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()>;
    /// No local member of `group` is online any more.
    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()>;
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
}

/// The backends a node runs on, chosen at start-up from the configuration.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub presence: Arc<dyn Presence>,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<dyn Registry>,
}

impl Backends {
    /// Everything in this process, in memory: the single-node default.
    pub fn in_memory() -> Self {
        Backends {
            store: Arc::new(memory::MemoryStore::default()),
            presence: Arc::new(memory::MemoryPresence::default()),
            bus: Arc::new(memory::MemoryBus::default()),
            registry: Arc::new(memory::MemoryRegistry::default()),
        }
    }
}
