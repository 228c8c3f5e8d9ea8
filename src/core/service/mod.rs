//! The chat domain: every operation a logged-in (or not yet logged-in) client can ask for.
//!
//! `ChatCore` knows users, groups and messages; it stores through [`Store`](super::ports::Store),
//! finds users through [`Presence`](super::ports::Presence), reaches other nodes through
//! [`Bus`](super::ports::Bus) and this node's connections through [`LocalDelivery`]. It knows nothing of frames, JSON or sockets.
//!
//! Delivery rule: a message is appended to the log first; only then is it pushed. A push that
//! cannot reach a connection that should have had it is recorded with
//! [`Store::mark_undelivered`](super::ports::Store::mark_undelivered), so the user's next login backlog includes it.

use std::sync::{Arc, RwLock};

mod accounts;
mod admin;
mod backlog;
mod groups;
mod reads;
mod sends;
mod sessions;

pub use admin::{KickReport, KickTarget};
pub use backlog::{BacklogReader, PAGE_BYTES, PAGE_MESSAGES, READ_AHEAD};

use super::auth::Auth;
use super::directory::{DeliveredSends, MembershipCache, UserDirectory};
use super::error::{ChatError, ChatResult};
use super::model::*;
use super::ports::{AppendAck, Backends, Clock, LocalDelivery};
use crate::core::throttle::{Policy, Throttle};

/// Limits that can change while running (live settings).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_devices: usize,
    /// Group messages per group pushed at login.
    pub group_backlog: usize,
    /// Direct messages per conversation pushed at login; 0 = all.
    pub direct_backlog: usize,
}

/// The logged-in identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub id: UserId,
    pub uuid: String,
    pub username: String,
}

impl From<&User> for Me {
    fn from(u: &User) -> Self {
        Me {
            id: u.id,
            uuid: u.uuid.clone(),
            username: u.username.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoginOk {
    pub user: User,
    /// The previous login time (the registration time at the first login).
    pub previous_login: UnixMs,
    pub token: String,
    /// The tokens a logout of this session revokes: the one issued now and, for a token
    /// login, the one presented.
    pub tokens: Vec<TokenId>,
}

/// A direct message as the client asked for it.
#[derive(Debug, Clone, Default)]
pub struct DirectInput {
    /// Recipient as written: uuid, username or numeric id.
    pub to: String,
    pub content: String,
    pub msg_type: String,
    pub sent_at: Option<String>,
    pub client_msg_id: String,
}

/// What a sync returns.
#[derive(Debug, Clone)]
pub struct SyncPage {
    pub messages: Vec<StoredMessage>,
    pub cursor: Seq,
    pub has_more: bool,
}

/// The backlog pushed at login, and how to settle the cursor once it is queued.
#[derive(Debug, Clone)]
pub struct Backlog {
    pub messages: Vec<StoredMessage>,
    pub seen_mark: Option<Seq>,
    pub upto: Seq,
}

/// How a connection's deliveries ended, reported when it closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryOutcome {
    /// Highest log position written to the socket.
    pub written_upto: Seq,
    /// Lowest log position that was queued but never written.
    pub unwritten_from: Option<Seq>,
}

pub const MAX_CLIENT_MSG_ID: usize = 64;
pub const SYNC_MAX: usize = 500;

/// A message that passed its checks and knows its conversation, waiting to be appended.
///
/// Sending is split in three steps so that a connection can pipeline its sends: `prepare_*`
/// (checks, recipient lookup) may run ahead, [`ChatCore::place`] appends (in the order the
/// connection sent them; the next may start once this one's place in the log is fixed) and
/// [`ChatCore::route_delivery`] (overlapping later appends) + [`ChatCore::push_and_publish`] (in the
/// connection's order) push.
#[derive(Debug)]
pub struct Prepared {
    message: NewMessage,
    dedupe: Option<DedupeKey>,
    /// The sending connection.
    origin: ConnId,
}

/// Who gets a stored message live (`ChatCore::route`).
#[derive(Debug, Clone)]
enum Route {
    /// These users' connections on every node, but `skip`.
    Direct {
        users: Vec<UserId>,
        skip: Option<ConnId>,
    },
    /// Every member's connections on every node, but `skip`.
    Group { group: GroupId, skip: ConnId },
}

/// Who gets a stored message live, here and on other nodes (see [`ChatCore::route_delivery`]).
#[derive(Debug)]
pub struct Routed {
    message: Arc<StoredMessage>,
    /// This node's connections.
    local: Route,
    remote: Remote,
    /// The send had a `client_msg_id`: its delivery is remembered once done (a retry of it
    /// is then not pushed again).
    keyed: bool,
}

#[derive(Debug)]
enum Remote {
    /// Nodes with connections of the users, and those users.
    Nodes(Vec<(String, Vec<UserId>)>),
    /// Every node: presence could not say where the users are connected.
    Everywhere(Vec<UserId>),
    /// The group's subject (every node with a local member listens).
    Group(GroupId),
}

/// A send whose message has its place in the log, waiting for the append to be durable (see
/// [`ChatCore::place`]).
pub struct Placed {
    ack: AppendAck,
    origin: ConnId,
    /// For a send with a `client_msg_id`: the key and what the message was, to tell a retry
    /// from a different message that reuses the key.
    keyed: Option<(String, Fingerprint)>,
}

/// What makes two sends the same message: the conversation and the content (a hash of it,
/// so that a keyed send does not keep a copy of its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::core) struct Fingerprint {
    conv: ConvId,
    content: u64,
}

impl Fingerprint {
    pub(in crate::core) fn of(conv: ConvId, content: &str) -> Fingerprint {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut h);
        Fingerprint {
            conv,
            content: h.finish(),
        }
    }
}

impl Placed {
    /// Waits until the append is durable (or failed). A duplicate that is not the same
    /// message (the `client_msg_id` was reused for another one) is refused: the stored
    /// message is the first one, and acknowledging it would silently drop this one.
    pub async fn committed(self) -> ChatResult<Committed> {
        let appended = self.ack.await?;
        if let Some((client_msg_id, sent)) = &self.keyed {
            let stored = &appended.message;
            if appended.duplicate && Fingerprint::of(stored.conv, stored.body.content()) != *sent {
                return Err(ChatError::ClientMsgIdReused(client_msg_id.clone()));
            }
        }
        Ok(Committed {
            appended,
            origin: self.origin,
            keyed: self.keyed.is_some(),
        })
    }
}

/// An appended message (or, for a retry, the one its first attempt stored), waiting to be
/// delivered.
#[derive(Debug)]
pub struct Committed {
    pub appended: Appended,
    origin: ConnId,
    keyed: bool,
}

pub struct ChatCore {
    node_id: String,
    backends: Backends,
    auth: Auth,
    local: Arc<dyn LocalDelivery>,
    limits: RwLock<Limits>,
    directory: UserDirectory,
    memberships: MembershipCache,
    /// Keyed sends delivered by this node (a retry of one is not pushed again).
    delivered: DeliveredSends,
    /// Failed logins per username and per source address.
    login_failures: Throttle,
    /// Registrations per source address.
    registrations: Throttle,
    clock: Arc<dyn Clock>,
}

pub(in crate::core) fn count_chars(s: &str) -> usize {
    s.chars().count()
}

pub(in crate::core) fn check_len(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> ChatResult<()> {
    let n = count_chars(value);
    if n < min || n > max {
        return Err(ChatError::Invalid(format!(
            "{field} must be {min} to {max} characters (got {n})"
        )));
    }
    Ok(())
}

impl ChatCore {
    pub fn new(
        node_id: String,
        backends: Backends,
        auth: Auth,
        local: Arc<dyn LocalDelivery>,
        limits: Limits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ChatCore {
            node_id,
            backends,
            auth,
            local,
            limits: RwLock::new(limits),
            directory: UserDirectory::default(),
            memberships: MembershipCache::new(clock.clone()),
            delivered: DeliveredSends::default(),
            login_failures: Throttle::new(Policy::LOGIN, clock.clone()),
            registrations: Throttle::new(Policy::REGISTER, clock.clone()),
            clock,
        }
    }

    /// The wall-clock time, Unix milliseconds, on the core's clock.
    pub(in crate::core) fn now_ms(&self) -> UnixMs {
        self.clock.now_ms()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's connections.
    pub(in crate::core) fn local(&self) -> &Arc<dyn LocalDelivery> {
        &self.local
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    pub fn limits(&self) -> Limits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }
}
