//! The [`Store`] port on JetStream: the log (`super::log`) and the buckets (`super::kv`).

use std::sync::Arc;

use async_trait::async_trait;

use super::log::Link;
use super::{hex_key, unavailable, Nats};
use crate::core::model::*;
use crate::core::ports::*;

/// The store on NATS JetStream.
pub struct NatsStore(pub Arc<Nats>);

#[async_trait]
impl Store for NatsStore {
    async fn create_user(&self, new: NewUser) -> BackendResult<User> {
        let n = &self.0;
        let name_key = format!("name.{}", hex_key(&new.username));
        if Nats::kv_get::<UserId>(&n.users, &name_key).await?.is_some() {
            return Err(BackendError::Conflict(Unique::Username));
        }
        let id = n.next_counter("user").await?;
        let user = User {
            id,
            uuid: new.uuid,
            username: new.username,
            email: new.email,
            avatar: String::new(),
            password_hash: new.password_hash,
            created_at: new.created_at,
            last_login: None,
            revoked_tokens: Vec::new(),
            tokens_valid_from: 0,
        };
        // The record first, the unique name last: the name is the commit point.
        Nats::kv_put(&n.users, &format!("id.{id}"), &user).await?;
        Nats::kv_put(&n.users, &format!("uuid.{}", user.uuid.to_lowercase()), &id).await?;
        if !Nats::kv_create(&n.users, &name_key, &id).await? {
            let _ = n.users.delete(format!("id.{id}")).await;
            let _ = n
                .users
                .delete(format!("uuid.{}", user.uuid.to_lowercase()))
                .await;
            return Err(BackendError::Conflict(Unique::Username));
        }
        Ok(user)
    }

    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        Ok(Nats::kv_get::<User>(&self.0.users, &format!("id.{id}"))
            .await?
            .map(|(u, _)| u))
    }

    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Ok(None);
        }
        match Nats::kv_get::<UserId>(&self.0.users, &format!("uuid.{}", uuid.to_lowercase()))
            .await?
        {
            Some((id, _)) => self.user_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        if name.is_empty() {
            return Ok(None);
        }
        match Nats::kv_get::<UserId>(&self.0.users, &format!("name.{}", hex_key(name))).await? {
            Some((id, _)) => self.user_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        let found = futures_util::future::join_all(ids.iter().map(|id| self.user_by_id(*id))).await;
        let mut out = Vec::with_capacity(ids.len());
        for u in found {
            if let Some(u) = u? {
                out.push(u);
            }
        }
        Ok(out)
    }

    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        let mut previous = None;
        Nats::kv_modify::<User, _>(&self.0.users, &format!("id.{id}"), |u| {
            let mut u = u.ok_or(BackendError::NotFound(Missing::User))?;
            previous = u.last_login.replace(at);
            Ok(u)
        })
        .await?;
        Ok(previous)
    }

    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()> {
        Nats::kv_modify::<User, _>(&self.0.users, &format!("id.{id}"), |u| {
            let mut u = u.ok_or(BackendError::NotFound(Missing::User))?;
            u.revoke(token.clone(), now);
            Ok(u)
        })
        .await
        .map(|_| ())
    }

    async fn create_group(&self, new: NewGroup) -> BackendResult<(Group, Member)> {
        let n = &self.0;
        let name_key = format!("name.{}", hex_key(&new.name));
        if Nats::kv_get::<GroupId>(&n.groups, &name_key)
            .await?
            .is_some()
        {
            return Err(BackendError::Conflict(Unique::GroupName));
        }
        let id = n.next_counter("group").await?;
        let member = Member {
            member_id: n.next_counter("member").await?,
            group_id: id,
            user_id: new.owner_id,
            role: Role::Owner,
            joined_at: new.created_at,
        };
        let group = Group {
            id,
            name: new.name,
            owner_id: new.owner_id,
            description: new.description,
            avatar: new.avatar,
            member_count: 1,
            created_at: new.created_at,
            updated_at: new.created_at,
        };
        Nats::kv_put(&n.groups, &format!("g.{id}"), &group).await?;
        Nats::kv_put(&n.groups, &format!("m.{id}"), &vec![member.clone()]).await?;
        if !Nats::kv_create(&n.groups, &name_key, &id).await? {
            let _ = n.groups.delete(format!("g.{id}")).await;
            let _ = n.groups.delete(format!("m.{id}")).await;
            return Err(BackendError::Conflict(Unique::GroupName));
        }
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{}", new.owner_id), |v| {
            let mut list = v.unwrap_or_default();
            list.push(id);
            Ok(list)
        })
        .await?;
        Ok((group, member))
    }

    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        self.0.group_with_count(id).await
    }

    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        let found =
            futures_util::future::join_all(ids.iter().map(|id| self.0.group_with_count(*id))).await;
        let mut out = Vec::new();
        for g in found {
            if let Some(g) = g? {
                out.push(g);
            }
        }
        Ok(out)
    }

    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        let n = &self.0;
        let (current, _) = Nats::kv_get::<Group>(&n.groups, &format!("g.{id}"))
            .await?
            .ok_or(BackendError::NotFound(Missing::Group))?;
        let mut renamed = None;
        if let Some(name) = &patch.name {
            if name.to_lowercase() != current.name.to_lowercase() {
                let key = format!("name.{}", hex_key(name));
                if !Nats::kv_create(&n.groups, &key, &id).await? {
                    return Err(BackendError::Conflict(Unique::GroupName));
                }
                renamed = Some(format!("name.{}", hex_key(&current.name)));
            }
        }
        let mut g = Nats::kv_modify::<Group, _>(&n.groups, &format!("g.{id}"), |g| {
            let mut g = g.ok_or(BackendError::NotFound(Missing::Group))?;
            if let Some(v) = &patch.name {
                g.name = v.clone();
            }
            if let Some(v) = &patch.description {
                g.description = v.clone();
            }
            if let Some(v) = &patch.avatar {
                g.avatar = v.clone();
            }
            g.updated_at = now_ms();
            Ok(g)
        })
        .await?;
        if let Some(old) = renamed {
            let _ = n.groups.delete(old).await;
        }
        g.member_count = n.members_doc(id).await?.len() as u64;
        Ok(g)
    }

    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        let n = &self.0;
        if Nats::kv_get::<Group>(&n.groups, &format!("g.{group}"))
            .await?
            .is_none()
        {
            return Err(BackendError::NotFound(Missing::Group));
        }
        let member_id = n.next_counter("member").await?;
        let member = Member {
            member_id,
            group_id: group,
            user_id: user,
            role,
            joined_at: at,
        };
        Nats::kv_modify::<Vec<Member>, _>(&n.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            if list.iter().any(|m| m.user_id == user) {
                return Err(BackendError::Conflict(Unique::Membership));
            }
            list.push(member.clone());
            Ok(list)
        })
        .await?;
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            if !list.contains(&group) {
                list.push(group);
            }
            Ok(list)
        })
        .await?;
        Ok(member)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        let n = &self.0;
        Nats::kv_modify::<Vec<Member>, _>(&n.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            let before = list.len();
            list.retain(|m| m.user_id != user);
            if list.len() == before {
                return Err(BackendError::NotFound(Missing::Membership));
            }
            Ok(list)
        })
        .await?;
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            list.retain(|g| *g != group);
            Ok(list)
        })
        .await?;
        Ok(())
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        Nats::kv_modify::<Vec<Member>, _>(&self.0.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            let m = list
                .iter_mut()
                .find(|m| m.user_id == user)
                .ok_or(BackendError::NotFound(Missing::Membership))?;
            m.role = role;
            Ok(list)
        })
        .await?;
        Ok(())
    }

    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        Ok(self
            .0
            .members_doc(group)
            .await?
            .into_iter()
            .find(|m| m.user_id == user))
    }

    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        self.0.members_doc(group).await
    }

    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        Ok(
            Nats::kv_get::<Vec<GroupId>>(&self.0.groups, &format!("ug.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        self.place(msg, dedupe).await?.await
    }

    /// Publishes the message and returns once the publish is on the connection, in order
    /// behind this node's earlier appends: its place in the log is fixed then. The returned
    /// acknowledgement awaits the stream's answer and retries a lost race (another node
    /// appended to the conversation first); nothing of this node is published behind a
    /// conditional append until it is done, so the retry cannot reorder this node's messages.
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let n = self.0.clone();
        let subject = n.subject(msg.conv);
        let (conditional, slot) = n.admit(&subject).await;
        let prev = match n.cached_last(&subject) {
            Some(s) => s,
            None => n.last_of(&subject).await?.map_or(0, |m| m.sequence),
        };
        let first = n
            .publish_append(&subject, &msg, dedupe.as_ref(), prev, conditional)
            .await?;
        Ok(Box::pin(async move {
            // Held until the append is done: later appends to the conversation see it.
            let _slot = slot;
            n.finish_append(subject, msg, dedupe, prev, conditional, first)
                .await
        }))
    }

    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let n = &self.0;
        let subject = n.subject(conv);
        // Messages fetched ahead (a gap filled forward), oldest first, and the position to
        // follow once they are used up (0: none).
        let mut ahead: Vec<(StoredMessage, Link)> = Vec::new();
        let mut next: Seq;
        // Start: the newest message strictly before `before`.
        let boundary = match before {
            None => None,
            Some(b) => n.next_of(&subject, b).await?,
        };
        match boundary {
            // The first message at or after `before` links to those before it.
            Some(m) => {
                let seq = m.sequence;
                let (_, link) = n.decode(&m)?;
                next = link.prev;
                if link.gap {
                    ahead = n.between(&subject, link.prev, seq).await?;
                }
            }
            // No cursor, or nothing at or after it: the newest message is before it.
            None => match n.last_of(&subject).await? {
                Some(m) => next = m.sequence,
                None => return Ok(HistoryPage::default()),
            },
        }
        let mut page = HistoryPage::default();
        while page.messages.len() < limit {
            let message = match ahead.pop() {
                // Fetched ahead: `next` already points below the whole gap.
                Some((message, _)) => message,
                None => {
                    if next == 0 {
                        break;
                    }
                    let Some(m) = n.at(next).await? else { break };
                    let (message, link) = n.decode(&m)?;
                    // What is before this one: its link, or its gap filled forward.
                    next = link.prev;
                    if link.gap {
                        ahead = n.between(&subject, link.prev, message.seq).await?;
                    }
                    message
                }
            };
            page.messages.push(message);
        }
        page.has_more = !ahead.is_empty() || (next != 0 && n.at(next).await?.is_some());
        Ok(page)
    }

    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        let n = &self.0;
        let subject = n.subject(conv);
        let mut out = Vec::new();
        let mut from = after + 1;
        while out.len() < limit {
            let Some(m) = n.next_of(&subject, from).await? else {
                break;
            };
            from = m.sequence + 1;
            out.push(n.decode(&m)?.0);
        }
        Ok(out)
    }

    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        Ok(
            Nats::kv_get::<Vec<UserId>>(&self.0.meta, &format!("peers.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn log_tail(&self) -> BackendResult<Seq> {
        let info = self.0.log.get_info().await.map_err(unavailable)?;
        Ok(info.state.last_sequence)
    }

    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        Ok(
            Nats::kv_get::<DeliveryCursor>(&self.0.meta, &format!("cur.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().advanced(to))
        })
        .await
        .map(|_| ())
    }

    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().marked(seq))
        })
        .await
        .map(|_| ())
    }

    async fn health(&self) -> BackendResult<()> {
        // A round trip to the stream: proves the connection and that JetStream answers.
        self.0.log.get_info().await.map_err(unavailable)?;
        Ok(())
    }

    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().settled(seen, to))
        })
        .await
        .map(|_| ())
    }
}
