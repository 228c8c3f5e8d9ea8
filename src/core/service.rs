//! The chat domain: every operation a logged-in (or not yet logged-in) client can ask for.
//!
//! `ChatCore` knows users, groups and messages; it stores through [`Store`](super::ports::Store),
//! finds users through [`Presence`](super::ports::Presence), reaches other nodes through
//! [`Bus`](super::ports::Bus) and this node's connections through [`LocalDelivery`]. It knows nothing of frames, JSON or sockets.
//!
//! Delivery rule: a message is appended to the log first; only then is it pushed. A push that
//! cannot reach a connection that should have had it is recorded with
//! [`Store::mark_undelivered`](super::ports::Store::mark_undelivered), so the user's next login backlog includes it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use tracing::{debug, warn};

use super::auth::Auth;
use super::directory::{is_uuid_shaped, MembershipCache, UserDirectory};
use super::error::{ChatError, ChatResult};
use super::model::*;
use super::ports::{AppendAck, BackendError, Backends, BusEvent, Clock, LocalDelivery};

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
/// [`ChatCore::deliver_locally`] + [`ChatCore::publish`] push (overlapping later appends).
#[derive(Debug)]
pub struct Prepared {
    message: NewMessage,
    dedupe: Option<DedupeKey>,
    route: Route,
}

/// Who gets a stored message live.
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

/// What other nodes still need of a stored message (see [`ChatCore::deliver_locally`]).
#[derive(Debug)]
pub struct Routed {
    message: Arc<StoredMessage>,
    remote: Remote,
}

#[derive(Debug)]
enum Remote {
    /// Nodes with connections of the users, and those users.
    Nodes(Vec<(String, Vec<UserId>)>),
    /// The group's subject (every node with a local member listens).
    Group(GroupId),
}

/// A send whose message has its place in the log, waiting for the append to be durable (see
/// [`ChatCore::place`]).
pub struct Placed {
    ack: AppendAck,
    route: Route,
}

impl Placed {
    /// Waits until the append is durable (or failed).
    pub async fn committed(self) -> ChatResult<Committed> {
        let appended = self.ack.await?;
        Ok(Committed {
            appended,
            route: self.route,
        })
    }
}

/// An appended message and who still has to get it.
#[derive(Debug)]
pub struct Committed {
    pub appended: Appended,
    route: Route,
}

pub struct ChatCore {
    node_id: String,
    backends: Backends,
    auth: Auth,
    local: Arc<dyn LocalDelivery>,
    limits: RwLock<Limits>,
    directory: UserDirectory,
    memberships: MembershipCache,
    clock: Arc<dyn Clock>,
}

fn count_chars(s: &str) -> usize {
    s.chars().count()
}

fn check_len(field: &str, value: &str, min: usize, max: usize) -> ChatResult<()> {
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
            clock,
        }
    }

    /// The wall-clock time, Unix milliseconds, on the core's clock.
    fn now_ms(&self) -> UnixMs {
        self.clock.now_ms()
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's connections.
    pub(super) fn local(&self) -> &Arc<dyn LocalDelivery> {
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

    // -- accounts ------------------------------------------------------------------------------

    /// Registers a user. Empty fields are the protocol layer's business (they have their own
    /// reply); here the limits of `docs/protocol.md` §12.1 apply.
    pub async fn register(&self, username: &str, password: &str, email: &str) -> ChatResult<User> {
        check_len("username", username, 1, 50)?;
        if password.len() < 6 || password.len() > 128 {
            return Err(ChatError::Invalid(format!(
                "password must be 6 to 128 bytes (got {})",
                password.len()
            )));
        }
        check_len("email", email, 3, 100)?;
        if !email.contains('@') {
            return Err(ChatError::Invalid("email must contain an @".into()));
        }
        let store = &self.backends.store;
        if store.user_by_name(username).await?.is_some() {
            return Err(ChatError::UsernameTaken);
        }
        let hash = self
            .auth
            .hash_password(password.to_string())
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        let user = store
            .create_user(NewUser {
                uuid: uuid::Uuid::new_v4().to_string(),
                username: username.to_string(),
                email: email.to_string(),
                password_hash: hash,
                created_at: self.now_ms(),
            })
            .await?;
        Ok(user)
    }

    pub async fn login_password(&self, username: &str, password: &str) -> ChatResult<LoginOk> {
        let user = self
            .backends
            .store
            .user_by_name(username)
            .await?
            .ok_or(ChatError::UnknownUser)?;
        // A password longer than any we accept cannot match: refuse before hashing it.
        if password.len() > 128 {
            return Err(ChatError::WrongPassword);
        }
        let ok = self
            .auth
            .verify_password(password.to_string(), user.password_hash.clone())
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?;
        if !ok {
            return Err(ChatError::WrongPassword);
        }
        self.finish_login(user).await
    }

    pub async fn login_token(&self, token: &str) -> ChatResult<LoginOk> {
        let claims = self
            .auth
            .verify_token(token, self.now_ms() / 1000)
            .map_err(|e| ChatError::BadToken(e.to_string()))?;
        let user = self
            .backends
            .store
            .user_by_id(claims.id)
            .await?
            .filter(|u| u.uuid == claims.user_uuid)
            .ok_or(ChatError::UnknownUser)?;
        self.finish_login(user).await
    }

    async fn finish_login(&self, user: User) -> ChatResult<LoginOk> {
        let now = self.now_ms();
        let previous = self.backends.store.record_login(user.id, now).await?;
        let token = self.auth.issue_token(&user, now / 1000);
        Ok(LoginOk {
            previous_login: previous.unwrap_or(user.created_at),
            user,
            token,
        })
    }

    /// Registers a logged-in connection in presence and enforces the device limit: returns
    /// nothing, but closes the user's oldest connections past the limit (on any node).
    pub async fn open_session(&self, me: &Me, conn: ConnId, device: &str) -> ChatResult<()> {
        let presence = &self.backends.presence;
        presence
            .register(SessionInfo {
                user_id: me.id,
                node_id: self.node_id.clone(),
                conn_id: conn,
                device: device.to_string(),
                since: self.now_ms(),
            })
            .await?;
        let max = self.limits().max_devices.max(1);
        let sessions = presence.sessions(&[me.id]).await?;
        let mut mine = sessions.get(&me.id).cloned().unwrap_or_default();
        mine.sort_by_key(|s| s.since);
        if mine.len() > max {
            let excess = mine.len() - max;
            let reason =
                format!("logged in on more than {max} devices: this oldest session was closed");
            for old in mine
                .into_iter()
                .filter(|s| s.conn_id != conn || s.node_id != self.node_id)
                .take(excess)
            {
                if old.node_id == self.node_id {
                    self.local.kick(me.id, old.conn_id, &reason);
                } else if let Err(e) = self
                    .backends
                    .bus
                    .publish_node(
                        &old.node_id,
                        BusEvent::Kick {
                            user: me.id,
                            conn: old.conn_id,
                            reason: reason.clone(),
                        },
                    )
                    .await
                {
                    warn!(user_id = me.id, node = %old.node_id, error = %e, "could not kick an old session");
                }
            }
        }
        Ok(())
    }

    /// A logged-in connection ended (closed, logged out or kicked): drop it from presence and
    /// move the user's delivery cursor to what the connection really wrote.
    pub async fn close_session(&self, me: &Me, conn: ConnId, outcome: DeliveryOutcome) {
        let b = &self.backends;
        // Cursor first, presence last: once a user shows offline, its cursor is final.
        if outcome.written_upto > 0 {
            if let Err(e) = b.store.advance_cursor(me.id, outcome.written_upto).await {
                warn!(user_id = me.id, error = %e, "could not save the delivery cursor; the next login repeats some messages");
            }
        }
        if let Some(seq) = outcome.unwritten_from {
            self.mark_undelivered(me.id, seq).await;
        }
        if let Err(e) = b.presence.unregister(me.id, &self.node_id, conn).await {
            warn!(user_id = me.id, error = %e, "presence unregister failed; the entry expires by itself");
        }
    }

    pub(super) async fn mark_undelivered(&self, user: UserId, seq: Seq) {
        if let Err(e) = self.backends.store.mark_undelivered(user, seq).await {
            warn!(user_id = user, seq, error = %e, "could not record an undelivered message; it stays readable in history and sync");
        }
    }

    /// The conversations of a user: direct peers and groups.
    async fn conversations(&self, user: UserId) -> ChatResult<Vec<ConvId>> {
        let store = &self.backends.store;
        let mut convs: Vec<ConvId> = store
            .peers_of(user)
            .await?
            .into_iter()
            .map(|p| ConvId::direct(user, p))
            .collect();
        convs.extend(store.groups_of(user).await?.into_iter().map(ConvId::Group));
        Ok(convs)
    }

    /// Messages the user missed since its delivery cursor, oldest first (direct messages all or
    /// up to the configured cap per conversation, group messages the newest `group_backlog`),
    /// leaving out what the user sent.
    pub async fn backlog(&self, me: &Me) -> ChatResult<Backlog> {
        let store = &self.backends.store;
        let cursor = store.cursor(me.id).await?;
        let start = cursor.resume_after();
        let tail = store.log_tail().await?;
        let limits = self.limits();
        let mut out = Vec::new();
        for conv in self.conversations(me.id).await? {
            match conv {
                ConvId::Group(_) => {
                    let cap = limits.group_backlog;
                    if cap == 0 {
                        continue;
                    }
                    let page = store.history(conv, Some(tail + 1), cap).await?;
                    out.extend(page.messages.into_iter().filter(|m| m.seq > start));
                }
                ConvId::Direct(..) => {
                    let cap = if limits.direct_backlog == 0 {
                        usize::MAX
                    } else {
                        limits.direct_backlog
                    };
                    if cap != usize::MAX {
                        let page = store.history(conv, Some(tail + 1), cap).await?;
                        out.extend(page.messages.into_iter().filter(|m| m.seq > start));
                        continue;
                    }
                    let mut after = start;
                    loop {
                        let page = store.after(conv, after, SYNC_MAX).await?;
                        let full = page.len() == SYNC_MAX;
                        for m in page {
                            if m.seq > tail {
                                break;
                            }
                            after = m.seq;
                            out.push(m);
                        }
                        if !full || after >= tail {
                            break;
                        }
                    }
                }
            }
        }
        // What the user sent was acknowledged to the sending device; pushing it back at login
        // would show one's own messages as incoming (a v2 device gets them through sync).
        out.retain(|m| m.sender_id != me.id);
        out.sort_by_key(|m| m.seq);
        Ok(Backlog {
            messages: out,
            seen_mark: cursor.undelivered_from,
            upto: tail,
        })
    }

    /// The backlog has been queued to the connection: move the cursor past it.
    pub async fn settle_backlog(&self, me: &Me, backlog: &Backlog) -> ChatResult<()> {
        self.backends
            .store
            .settle_cursor(me.id, backlog.seen_mark, backlog.upto)
            .await?;
        Ok(())
    }

    // -- direct messages -----------------------------------------------------------------------

    /// Resolves a recipient the way the original does: uuid, then username, then numeric id.
    /// Positive answers come from the node's [`UserDirectory`] when it has them; a miss
    /// falls through to the store in the same order, so the order of precedence holds.
    pub async fn resolve_user_id(&self, who: &str) -> ChatResult<Option<UserId>> {
        if is_uuid_shaped(who) {
            if let Some(id) = self.lookup_uuid(who).await? {
                return Ok(Some(id));
            }
        }
        if let Some(id) = self.lookup_name(who).await? {
            return Ok(Some(id));
        }
        if let Ok(id) = who.parse::<u32>() {
            let id = id as UserId;
            if self.directory.knows_id(id) {
                return Ok(Some(id));
            }
            if let Some(u) = self.backends.store.user_by_id(id).await? {
                self.directory.learn(&u);
                return Ok(Some(u.id));
            }
        }
        Ok(None)
    }

    async fn lookup_uuid(&self, uuid: &str) -> ChatResult<Option<UserId>> {
        if let Some(id) = self.directory.by_uuid(uuid) {
            return Ok(Some(id));
        }
        let found = self.backends.store.user_by_uuid(uuid).await?;
        Ok(found.map(|u| {
            self.directory.learn(&u);
            u.id
        }))
    }

    async fn lookup_name(&self, name: &str) -> ChatResult<Option<UserId>> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Some(id) = self.directory.by_name(name) {
            return Ok(Some(id));
        }
        let found = self.backends.store.user_by_name(name).await?;
        Ok(found.map(|u| {
            self.directory.learn(&u);
            u.id
        }))
    }

    fn check_client_msg_id(id: &str) -> ChatResult<()> {
        if count_chars(id) > MAX_CLIENT_MSG_ID {
            return Err(ChatError::Invalid(format!(
                "client_msg_id must be at most {MAX_CLIENT_MSG_ID} characters"
            )));
        }
        Ok(())
    }

    fn dedupe_key(me: &Me, client_msg_id: &str) -> Option<DedupeKey> {
        (!client_msg_id.is_empty()).then(|| DedupeKey {
            sender_id: me.id,
            client_msg_id: client_msg_id.to_string(),
        })
    }

    /// Checks a direct message and resolves its recipient (first step of a send).
    pub async fn prepare_direct(
        &self,
        me: &Me,
        origin: ConnId,
        input: DirectInput,
    ) -> ChatResult<Prepared> {
        Self::check_client_msg_id(&input.client_msg_id)?;
        if input.to.is_empty() {
            return Err(ChatError::Invalid("to_user_id must not be empty".into()));
        }
        let recipient = self
            .resolve_user_id(&input.to)
            .await?
            .ok_or_else(|| ChatError::NoSuchTarget(input.to.clone()))?;
        // Messages to oneself reach every own connection, the sending one included (as the
        // original); otherwise the sender's other devices get a copy.
        let route = if recipient == me.id {
            Route::Direct {
                users: vec![me.id],
                skip: None,
            }
        } else {
            Route::Direct {
                users: vec![recipient, me.id],
                skip: Some(origin),
            }
        };
        Ok(Prepared {
            dedupe: Self::dedupe_key(me, &input.client_msg_id),
            message: NewMessage {
                msg_id: uuid::Uuid::new_v4().to_string(),
                conv: ConvId::direct(me.id, recipient),
                sender_id: me.id,
                sender_uuid: me.uuid.clone(),
                sender_name: me.username.clone(),
                timestamp: self.now_ms(),
                body: MessageBody::Direct {
                    recipient_id: recipient,
                    to_user_id: input.to,
                    content: input.content,
                    msg_type: input.msg_type,
                    sent_at: input.sent_at,
                },
            },
            route,
        })
    }

    /// Appends a prepared message to the log (second step of a send), in two phases: this
    /// returns once the message's place in the log is fixed ([`Store::place`]), and
    /// [`Placed::committed`] waits until it is durable. A connection starts its next append
    /// only once this returns, so its appends overlap and are still logged in its order.
    /// The message's time is the time of the append, not of the check.
    ///
    /// [`Store::place`]: super::ports::Store::place
    pub async fn place(&self, prepared: Prepared) -> ChatResult<Placed> {
        let Prepared {
            mut message,
            dedupe,
            route,
        } = prepared;
        message.timestamp = self.now_ms();
        let ack = self.backends.store.place(message, dedupe).await?;
        Ok(Placed { ack, route })
    }

    /// Last step of a send, first half: pushes an appended message to this node's
    /// connections, then finds which other nodes need it (presence, for a direct message).
    /// `None` for a retry (a duplicate is not pushed again). Sends of one connection may do
    /// this concurrently; their [`Self::publish`] calls are what they issue in order, so that
    /// pushes on other nodes keep the send order.
    pub async fn deliver_locally(&self, committed: &Committed) -> Option<Routed> {
        if committed.appended.duplicate {
            return None;
        }
        let message = Arc::new(committed.appended.message.clone());
        let remote = match &committed.route {
            Route::Direct { users, skip } => {
                for user in self.local.deliver_direct(&message, users, *skip) {
                    self.mark_undelivered(user, message.seq).await;
                }
                Remote::Nodes(self.remote_nodes(&message, users).await)
            }
            Route::Group { group, skip } => {
                for user in self.local.deliver_group(&message, Some(*skip)) {
                    self.mark_undelivered(user, message.seq).await;
                }
                Remote::Group(*group)
            }
        };
        Some(Routed { message, remote })
    }

    /// The other nodes where `users` have connections, with those users.
    async fn remote_nodes(
        &self,
        message: &StoredMessage,
        users: &[UserId],
    ) -> Vec<(String, Vec<UserId>)> {
        let sessions = match self.backends.presence.sessions(users).await {
            Ok(s) => s,
            Err(e) => {
                // Presence is not on the durable path: the message is stored and reaches the
                // other nodes' users at their next login or sync.
                warn!(msg_id = %message.msg_id, error = %e, "presence unavailable: remote live delivery skipped");
                return Vec::new();
            }
        };
        let mut by_node: HashMap<String, BTreeSet<UserId>> = HashMap::new();
        for (user, list) in sessions {
            for s in list {
                if s.node_id != self.node_id {
                    by_node.entry(s.node_id).or_default().insert(user);
                }
            }
        }
        by_node
            .into_iter()
            .map(|(node, users)| (node, users.into_iter().collect()))
            .collect()
    }

    /// Last step of a send, second half: hands the message to the other nodes over the bus.
    /// A publish that fails is recorded as undelivered for the users it was for.
    pub async fn publish(&self, routed: Routed) {
        let Routed { message, remote } = routed;
        match remote {
            Remote::Nodes(nodes) => {
                for (node, users) in nodes {
                    let event = BusEvent::Direct {
                        message: message.clone(),
                        users: users.clone(),
                    };
                    if let Err(e) = self.backends.bus.publish_node(&node, event).await {
                        warn!(msg_id = %message.msg_id, node = %node, error = %e, "cross-node delivery failed; recipients get it at their next sync");
                        for u in users {
                            self.mark_undelivered(u, message.seq).await;
                        }
                    }
                }
            }
            Remote::Group(group) => {
                let event = BusEvent::Group {
                    message: message.clone(),
                    origin_node: self.node_id.clone(),
                };
                if let Err(e) = self.backends.bus.publish_group(group, event).await {
                    warn!(msg_id = %message.msg_id, group, error = %e, "group publish failed; remote members get it at their next sync");
                    self.mark_remote_members_undelivered(group, &message).await;
                }
            }
        }
    }

    /// The last `limit` direct messages with a user, oldest first. The target is looked up by
    /// uuid, then by username (`docs/protocol.md` §7.4).
    pub async fn history(
        &self,
        me: &Me,
        target_uuid: &str,
        target_name: &str,
        limit: usize,
    ) -> ChatResult<Vec<StoredMessage>> {
        let store = &self.backends.store;
        let mut target = None;
        if is_uuid_shaped(target_uuid) {
            target = self.lookup_uuid(target_uuid).await?;
        }
        if target.is_none() {
            target = self.lookup_name(target_name).await?;
        }
        let Some(target) = target else {
            let shown = if target_uuid.is_empty() {
                target_name
            } else {
                target_uuid
            };
            return Err(ChatError::NoSuchTarget(shown.to_string()));
        };
        let page = store
            .history(ConvId::direct(me.id, target), None, limit)
            .await?;
        let mut messages = page.messages;
        messages.reverse();
        Ok(messages)
    }

    pub async fn relations(&self, me: &Me) -> ChatResult<Vec<UserId>> {
        Ok(self.backends.store.peers_of(me.id).await?)
    }

    // -- groups --------------------------------------------------------------------------------

    fn check_group_fields(
        name: Option<&str>,
        description: Option<&str>,
        avatar: Option<&str>,
    ) -> ChatResult<()> {
        if let Some(name) = name {
            check_len("group name", name, 2, 100)?;
        }
        if let Some(d) = description {
            check_len("description", d, 0, 500)?;
        }
        if let Some(a) = avatar {
            check_len("avatar", a, 0, 255)?;
        }
        Ok(())
    }

    pub async fn create_group(
        &self,
        me: &Me,
        name: &str,
        description: &str,
        avatar: &str,
    ) -> ChatResult<Group> {
        Self::check_group_fields(Some(name), Some(description), Some(avatar))?;
        let (group, _) = self
            .backends
            .store
            .create_group(NewGroup {
                name: name.to_string(),
                owner_id: me.id,
                description: description.to_string(),
                avatar: avatar.to_string(),
                created_at: self.now_ms(),
            })
            .await?;
        self.membership_changed(me.id, group.id, true).await;
        Ok(group)
    }

    async fn require_group(&self, id: GroupId) -> ChatResult<Group> {
        self.backends
            .store
            .group(id)
            .await?
            .ok_or(ChatError::GroupNotFound)
    }

    async fn require_member(&self, me: &Me, group: GroupId) -> ChatResult<Member> {
        self.backends
            .store
            .member(group, me.id)
            .await?
            .ok_or(ChatError::NotMember)
    }

    /// Membership check of the hot paths (group send, group history): a user this node's
    /// index has as a member and that the store confirmed recently is not read again.
    async fn check_member(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        if self.local.is_member(me.id, group) && self.memberships.fresh(me.id, group) {
            return Ok(());
        }
        self.require_member(me, group).await?;
        self.memberships.confirmed(me.id, group);
        Ok(())
    }

    /// Tells the nodes of `user` (this one included) that its group set changed.
    async fn membership_changed(&self, user: UserId, group: GroupId, joined: bool) {
        if !joined {
            self.memberships.forget(user, group);
        }
        self.local.membership(user, group, joined);
        let sessions = match self.backends.presence.sessions(&[user]).await {
            Ok(s) => s,
            Err(e) => {
                warn!(user_id = user, error = %e, "presence unavailable: other nodes learn the membership change at the user's next login");
                return;
            }
        };
        let nodes: BTreeSet<String> = sessions
            .into_values()
            .flatten()
            .map(|s| s.node_id)
            .filter(|n| *n != self.node_id)
            .collect();
        for node in nodes {
            let event = BusEvent::Membership {
                user,
                group,
                joined,
            };
            if let Err(e) = self.backends.bus.publish_node(&node, event).await {
                warn!(user_id = user, node = %node, error = %e, "could not tell a node about a membership change");
            }
        }
    }

    pub async fn join_group(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        self.require_group(group).await?;
        match self
            .backends
            .store
            .add_member(group, me.id, Role::Member, self.now_ms())
            .await
        {
            Ok(_) => {}
            Err(BackendError::Conflict(_)) => return Err(ChatError::AlreadyMember),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(me.id, group, true).await;
        Ok(())
    }

    pub async fn leave_group(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        if g.owner_id == me.id {
            return Err(ChatError::OwnerCannotLeave);
        }
        match self.backends.store.remove_member(group, me.id).await {
            Ok(()) => {}
            Err(BackendError::NotFound(_)) => return Err(ChatError::NotMember),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(me.id, group, false).await;
        Ok(())
    }

    /// Members with their profile and real, cluster-wide presence.
    pub async fn members(&self, me: &Me, group: GroupId) -> ChatResult<Vec<(Member, User, bool)>> {
        self.require_member(me, group).await?;
        let store = &self.backends.store;
        let members = store.members(group).await?;
        let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
        let users: HashMap<UserId, User> = store
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        let online = match self.backends.presence.sessions(&ids).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "presence unavailable: members shown offline");
                HashMap::new()
            }
        };
        Ok(members
            .into_iter()
            .filter_map(|m| {
                let user = users.get(&m.user_id)?.clone();
                let is_online = online.get(&m.user_id).is_some_and(|s| !s.is_empty());
                Some((m, user, is_online))
            })
            .collect())
    }

    /// The ids of the groups `me` is a member of (the local group index at login).
    pub async fn group_ids_of(&self, me: &Me) -> ChatResult<Vec<GroupId>> {
        Ok(self.backends.store.groups_of(me.id).await?)
    }

    pub async fn my_groups(&self, me: &Me) -> ChatResult<Vec<Group>> {
        let store = &self.backends.store;
        let ids = store.groups_of(me.id).await?;
        Ok(store.groups_by_ids(&ids).await?)
    }

    pub async fn group_details(&self, me: &Me, group: GroupId) -> ChatResult<Group> {
        self.require_member(me, group).await?;
        self.require_group(group).await
    }

    pub async fn update_group(
        &self,
        me: &Me,
        group: GroupId,
        patch: GroupPatch,
    ) -> ChatResult<Group> {
        self.require_group(group).await?;
        let role = self
            .backends
            .store
            .member(group, me.id)
            .await?
            .map(|m| m.role);
        if !matches!(role, Some(Role::Owner | Role::Admin)) {
            return Err(ChatError::NotOwnerOrAdminUpdate);
        }
        if patch.name.is_none() && patch.description.is_none() && patch.avatar.is_none() {
            return Err(ChatError::NoUpdates);
        }
        Self::check_group_fields(
            patch.name.as_deref(),
            patch.description.as_deref(),
            patch.avatar.as_deref(),
        )?;
        Ok(self.backends.store.update_group(group, patch).await?)
    }

    pub async fn set_role(
        &self,
        me: &Me,
        group: GroupId,
        target: UserId,
        role: &str,
    ) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        if g.owner_id != me.id {
            return Err(ChatError::NotOwnerRoles);
        }
        let store = &self.backends.store;
        if store.member(group, target).await?.is_none() {
            return Err(ChatError::TargetNotMember);
        }
        if target == g.owner_id {
            return Err(ChatError::CannotChangeOwnerRole);
        }
        let role = match role {
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => return Err(ChatError::InvalidRole),
        };
        store.set_role(group, target, role).await?;
        Ok(())
    }

    /// Removes a member, in the original's order of checks (`docs/protocol.md` §8.9).
    pub async fn remove_member(&self, me: &Me, group: GroupId, target: UserId) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        let store = &self.backends.store;
        if g.owner_id != me.id {
            let my_role = store.member(group, me.id).await?.map(|m| m.role);
            if my_role != Some(Role::Admin) {
                return Err(ChatError::NotOwnerOrAdminRemove);
            }
            match store.member(group, target).await?.map(|m| m.role) {
                None => return Err(ChatError::TargetNotMember),
                Some(Role::Admin | Role::Owner) => return Err(ChatError::AdminCannotRemoveAdmin),
                Some(Role::Member) => {}
            }
        }
        if target == me.id {
            return Err(ChatError::CannotRemoveSelf);
        }
        if target == g.owner_id {
            return Err(ChatError::CannotRemoveOwner);
        }
        match store.remove_member(group, target).await {
            Ok(()) => {}
            Err(BackendError::NotFound(_)) => return Err(ChatError::MemberNotFound),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(target, group, false).await;
        Ok(())
    }

    /// Checks a group message and that its sender is a member (first step of a send).
    pub async fn prepare_group(
        &self,
        me: &Me,
        origin: ConnId,
        group: GroupId,
        content: String,
        client_msg_id: &str,
    ) -> ChatResult<Prepared> {
        Self::check_client_msg_id(client_msg_id)?;
        self.check_member(me, group).await?;
        Ok(Prepared {
            dedupe: Self::dedupe_key(me, client_msg_id),
            message: NewMessage {
                msg_id: uuid::Uuid::new_v4().to_string(),
                conv: ConvId::Group(group),
                sender_id: me.id,
                sender_uuid: me.uuid.clone(),
                sender_name: me.username.clone(),
                timestamp: self.now_ms(),
                body: MessageBody::Group {
                    group_id: group,
                    content,
                },
            },
            route: Route::Group {
                group,
                skip: origin,
            },
        })
    }

    async fn mark_remote_members_undelivered(&self, group: GroupId, message: &StoredMessage) {
        let Ok(members) = self.backends.store.members(group).await else {
            return;
        };
        let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
        let Ok(sessions) = self.backends.presence.sessions(&ids).await else {
            return;
        };
        for (user, list) in sessions {
            if list.iter().any(|s| s.node_id != self.node_id) {
                self.mark_undelivered(user, message.seq).await;
            }
        }
    }

    /// A page of group history, newest first, strictly before `last_id` (0 = from the newest).
    pub async fn group_history(
        &self,
        me: &Me,
        group: GroupId,
        last_id: Seq,
        limit: usize,
    ) -> ChatResult<HistoryPage> {
        self.check_member(me, group).await?;
        let before = (last_id > 0).then_some(last_id);
        Ok(self
            .backends
            .store
            .history(ConvId::Group(group), before, limit)
            .await?)
    }

    // -- sync ----------------------------------------------------------------------------------

    /// Every message of every conversation of the user after `cursor` (absent = the user's
    /// delivery cursor), at most `limit`, in log order (so in order within each conversation).
    /// Costs O(conversations × limit): one bounded read per conversation.
    pub async fn sync(&self, me: &Me, cursor: Option<Seq>, limit: usize) -> ChatResult<SyncPage> {
        let store = &self.backends.store;
        let limit = limit.clamp(1, SYNC_MAX);
        let (start, seen_mark) = match cursor {
            Some(c) => (c, None),
            None => {
                let c = store.cursor(me.id).await?;
                (c.resume_after(), c.undelivered_from)
            }
        };
        let tail = store.log_tail().await?;
        let mut all = Vec::new();
        let mut truncated = false;
        for conv in self.conversations(me.id).await? {
            let page = store.after(conv, start, limit + 1).await?;
            truncated |= page.len() > limit;
            all.extend(page.into_iter().filter(|m| m.seq <= tail));
        }
        all.sort_by_key(|m| m.seq);
        let has_more = truncated || all.len() > limit;
        all.truncate(limit);
        let next = if has_more {
            all.last().map_or(start, |m| m.seq)
        } else {
            tail.max(start)
        };
        // The client has now seen everything up to `next`: that is the user's acknowledged
        // point, from which a sync without cursor (or the next login backlog) continues.
        let settled = match cursor {
            None => store.settle_cursor(me.id, seen_mark, next).await,
            Some(_) => store.advance_cursor(me.id, next).await,
        };
        if let Err(e) = settled {
            debug!(error = %e, "could not advance the delivery cursor after sync");
        }
        Ok(SyncPage {
            messages: all,
            cursor: next,
            has_more,
        })
    }

    /// Healthy nodes, least loaded first (for redirects).
    pub async fn nodes(&self) -> ChatResult<Vec<NodeInfo>> {
        Ok(self.backends.registry.nodes().await?)
    }
}
