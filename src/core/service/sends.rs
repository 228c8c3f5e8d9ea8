//! Sending, in three steps so that a connection can pipeline its sends: prepare (checks, the
//! recipient), place (the two-phase append) and deliver (local pushes, then the other nodes).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tracing::{debug, warn};

use super::*;
use crate::core::directory::is_uuid_shaped;
use crate::core::error::{ChatError, ChatResult};
use crate::core::model::*;
use crate::core::ports::{BackendResult, BusEvent};

impl ChatCore {
    /// Resolves a recipient: a UUID-shaped target as a UUID, an all-digit one as a numeric id,
    /// then either as a username. (The original tried the username before the numeric id; a
    /// name could then shadow another user's id. New names can be neither all digits nor
    /// UUID-shaped, see [`crate::core::names`], and ids go first so that a name stored
    /// before that rule cannot shadow one either.) Positive answers come from the node's
    /// [`UserDirectory`] when it has them; a miss falls through to the store in the same
    /// order, so the order of precedence holds.
    pub async fn resolve_user_id(&self, who: &str) -> ChatResult<Option<UserId>> {
        if is_uuid_shaped(who) {
            if let Some(id) = self.lookup_uuid(who).await? {
                return Ok(Some(id));
            }
        }
        if who.bytes().all(|b| b.is_ascii_digit()) {
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
        }
        self.lookup_name(who).await
    }

    pub(in crate::core) async fn lookup_uuid(&self, uuid: &str) -> ChatResult<Option<UserId>> {
        if let Some(id) = self.directory.by_uuid(uuid) {
            return Ok(Some(id));
        }
        let found = self.backends.store.user_by_uuid(uuid).await?;
        Ok(found.map(|u| {
            self.directory.learn(&u);
            u.id
        }))
    }

    pub(in crate::core) async fn lookup_name(&self, name: &str) -> ChatResult<Option<UserId>> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Some(id) = self.directory.by_name(name) {
            return Ok(Some(id));
        }
        let found = self.user_by_name(name).await?;
        Ok(found.map(|u| {
            self.directory.learn(&u);
            u.id
        }))
    }

    pub(in crate::core) fn check_client_msg_id(id: &str) -> ChatResult<()> {
        if count_chars(id) > MAX_CLIENT_MSG_ID {
            return Err(ChatError::Invalid(format!(
                "client_msg_id must be at most {MAX_CLIENT_MSG_ID} characters"
            )));
        }
        Ok(())
    }

    pub(in crate::core) fn dedupe_key(me: &Me, client_msg_id: &str) -> Option<DedupeKey> {
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
            origin,
        })
    }

    /// Appends a prepared message to the log (second step of a send), in two phases: this
    /// returns once the message's place in the log is fixed ([`Store::place`]), and
    /// [`Placed::committed`] waits until it is durable. A connection starts its next append
    /// only once this returns, so its appends overlap and are still logged in its order.
    /// The message's time is the time of the append, not of the check.
    ///
    /// [`Store::place`]: crate::core::ports::Store::place
    pub async fn place(&self, prepared: Prepared) -> ChatResult<Placed> {
        let Prepared {
            mut message,
            dedupe,
            origin,
        } = prepared;
        message.timestamp = self.now_ms();
        let keyed = dedupe.as_ref().map(|key| {
            let sent = Fingerprint::of(message.conv, message.body.content());
            (key.client_msg_id.clone(), sent)
        });
        let ack = self.backends.store.place(message, dedupe).await?;
        Ok(Placed { ack, origin, keyed })
    }

    /// Who gets a stored message live, sent from connection `origin`: for a direct message its
    /// recipient's connections and the sender's other ones (a message to oneself reaches every
    /// own connection, the sending one included, as the original); for a group message every
    /// member's connections but the sending one. Taken from the stored message, so that a
    /// retry reaches those its first attempt was for, whatever the retry's request says.
    fn route(message: &StoredMessage, origin: ConnId) -> Route {
        match &message.body {
            MessageBody::Direct { recipient_id, .. } if *recipient_id == message.sender_id => {
                Route::Direct {
                    users: vec![message.sender_id],
                    skip: None,
                }
            }
            MessageBody::Direct { recipient_id, .. } => Route::Direct {
                users: vec![*recipient_id, message.sender_id],
                skip: Some(origin),
            },
            MessageBody::Group { group_id, .. } => Route::Group {
                group: *group_id,
                skip: origin,
            },
        }
    }

    /// Last step of a send, first half: finds who gets an appended message live: this
    /// node's connections, and which other nodes (presence, for a direct message). Sends of
    /// one connection may do this concurrently (the presence lookups overlap); their
    /// [`Self::push_and_publish`] calls are what they issue in the connection's order, so that pushes,
    /// here and on other nodes, keep the send order whatever order the store acknowledged the
    /// appends in.
    ///
    /// A retry (the store recognised its `client_msg_id`: a duplicate) is delivered again,
    /// unless this node remembers delivering its first attempt (`None` then): the first
    /// attempt may have been stored and answered with an error before its delivery (an
    /// acknowledgement lost, the node gone), and a stored message must be pushed at least once.
    /// A second push of a message is a duplicate that clients drop by `msg_id`.
    pub async fn route_delivery(&self, committed: &Committed) -> Option<Routed> {
        let appended = &committed.appended;
        if appended.duplicate && self.delivered.delivered(appended.message.seq) {
            return None;
        }
        let message = Arc::new(appended.message.clone());
        let local = Self::route(&message, committed.origin);
        let remote = match &local {
            Route::Direct { users, .. } => self.remote_for(&message, users).await,
            Route::Group { group, .. } => Remote::Group(*group),
        };
        Some(Routed {
            message,
            local,
            remote,
            keyed: committed.keyed,
        })
    }

    /// Where a direct message for `users` goes besides this node: the other nodes where they
    /// have connections, or, when presence cannot say (Redis down), every node. Sending to
    /// every node costs one bus message per node and a local lookup on each for as long as
    /// presence is down, and keeps live delivery going meanwhile.
    async fn remote_for(&self, message: &StoredMessage, users: &[UserId]) -> Remote {
        match self.remote_nodes(users).await {
            Ok(nodes) => Remote::Nodes(nodes),
            Err(e) => {
                debug!(msg_id = %message.msg_id, error = %e, "presence unavailable: the message goes to every node");
                Remote::Everywhere(users.to_vec())
            }
        }
    }

    /// The other nodes where `users` have connections, with those users.
    async fn remote_nodes(&self, users: &[UserId]) -> BackendResult<Vec<(String, Vec<UserId>)>> {
        let sessions = self.backends.presence.sessions(users).await?;
        let mut by_node: HashMap<String, BTreeSet<UserId>> = HashMap::new();
        for (user, list) in sessions {
            for s in list {
                if s.node_id != self.node_id {
                    by_node.entry(s.node_id).or_default().insert(user);
                }
            }
        }
        Ok(by_node
            .into_iter()
            .map(|(node, users)| (node, users.into_iter().collect()))
            .collect())
    }

    /// Last step of a send, second half: pushes the message to this node's connections, then
    /// hands it to the other nodes over the bus. A publish that fails is recorded as
    /// undelivered for the users it was for. The delivery of a keyed send is then remembered
    /// (see [`Self::route_delivery`]).
    pub async fn push_and_publish(&self, routed: Routed) {
        let Routed {
            message,
            local,
            remote,
            keyed,
        } = routed;
        let missed = match local {
            Route::Direct { users, skip } => self.local.deliver_direct(&message, &users, skip),
            Route::Group { skip, .. } => self.local.deliver_group(&message, Some(skip)),
        };
        for user in missed {
            self.mark_undelivered(user, message.seq).await;
        }
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
            Remote::Everywhere(users) => {
                let event = BusEvent::DirectAnywhere {
                    message: message.clone(),
                    users: users.clone(),
                    origin_node: self.node_id.clone(),
                };
                if let Err(e) = self.backends.bus.publish_all(event).await {
                    warn!(msg_id = %message.msg_id, error = %e, "cross-node delivery failed; recipients get it at their next sync");
                    // Where they are is unknown: a mark for a user who is not online costs
                    // only that the next backlog lists a message it would list anyway.
                    for u in users {
                        self.mark_undelivered(u, message.seq).await;
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
        if keyed {
            self.delivered.remember(message.seq);
        }
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
            origin,
        })
    }

    pub(in crate::core) async fn mark_remote_members_undelivered(
        &self,
        group: GroupId,
        message: &StoredMessage,
    ) {
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
}
