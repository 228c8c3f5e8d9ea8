//! In-process backends: the single-node default, and the reference semantics the cluster
//! backends are tested against. Everything lives in this process's memory and is lost at exit.
//!
//! Each backend keeps its state behind one `std::sync::Mutex` that is never held across an
//! `.await` (the methods do not await at all while holding it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::core::model::*;
use crate::core::ports::*;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a way that matters
    // more than stopping service would, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Retries remembered for idempotent sends.
const DEDUPE_CAPACITY: usize = 200_000;

#[derive(Default)]
struct StoreState {
    users: HashMap<UserId, User>,
    user_by_uuid: HashMap<String, UserId>,
    user_by_name: HashMap<String, UserId>,
    next_user: u64,

    groups: HashMap<GroupId, Group>,
    group_by_name: HashMap<String, GroupId>,
    next_group: u64,
    members: HashMap<GroupId, BTreeMap<UserId, Member>>,
    groups_of: HashMap<UserId, BTreeSet<GroupId>>,
    next_member: u64,

    /// Messages per conversation, ascending by position.
    log: HashMap<ConvId, Vec<Arc<StoredMessage>>>,
    tail: Seq,
    dedupe: HashMap<DedupeKey, Arc<StoredMessage>>,
    dedupe_order: VecDeque<DedupeKey>,
    peers: HashMap<UserId, BTreeSet<UserId>>,
    cursors: HashMap<UserId, DeliveryCursor>,
}

/// Accounts, groups and the message log in memory.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<StoreState>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_user(&self, new: NewUser) -> BackendResult<User> {
        let mut s = lock(&self.state);
        let key = new.username.to_lowercase();
        if s.user_by_name.contains_key(&key) {
            return Err(BackendError::Conflict(Unique::Username));
        }
        s.next_user += 1;
        let user = User {
            id: s.next_user,
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
        s.user_by_name.insert(key, user.id);
        s.user_by_uuid.insert(user.uuid.clone(), user.id);
        s.users.insert(user.id, user.clone());
        Ok(user)
    }

    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        Ok(lock(&self.state).users.get(&id).cloned())
    }

    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        let s = lock(&self.state);
        Ok(s.user_by_uuid
            .get(&uuid.to_lowercase())
            .and_then(|id| s.users.get(id))
            .cloned())
    }

    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        let s = lock(&self.state);
        Ok(s.user_by_name
            .get(&name.to_lowercase())
            .and_then(|id| s.users.get(id))
            .cloned())
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        let s = lock(&self.state);
        Ok(ids
            .iter()
            .filter_map(|id| s.users.get(id).cloned())
            .collect())
    }

    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        let mut s = lock(&self.state);
        let user = s
            .users
            .get_mut(&id)
            .ok_or(BackendError::NotFound(Missing::User))?;
        Ok(user.last_login.replace(at))
    }

    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let user = s
            .users
            .get_mut(&id)
            .ok_or(BackendError::NotFound(Missing::User))?;
        user.revoke(token, now);
        Ok(())
    }

    async fn create_group(&self, new: NewGroup) -> BackendResult<(Group, Member)> {
        let mut s = lock(&self.state);
        let key = new.name.to_lowercase();
        if s.group_by_name.contains_key(&key) {
            return Err(BackendError::Conflict(Unique::GroupName));
        }
        s.next_group += 1;
        s.next_member += 1;
        let group = Group {
            id: s.next_group,
            name: new.name,
            owner_id: new.owner_id,
            description: new.description,
            avatar: new.avatar,
            member_count: 1,
            created_at: new.created_at,
            updated_at: new.created_at,
        };
        let member = Member {
            member_id: s.next_member,
            group_id: group.id,
            user_id: new.owner_id,
            role: Role::Owner,
            joined_at: new.created_at,
        };
        s.group_by_name.insert(key, group.id);
        s.groups.insert(group.id, group.clone());
        s.members
            .entry(group.id)
            .or_default()
            .insert(member.user_id, member.clone());
        s.groups_of
            .entry(member.user_id)
            .or_default()
            .insert(group.id);
        Ok((group, member))
    }

    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        Ok(lock(&self.state).groups.get(&id).cloned())
    }

    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        let s = lock(&self.state);
        Ok(ids
            .iter()
            .filter_map(|id| s.groups.get(id).cloned())
            .collect())
    }

    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        let mut s = lock(&self.state);
        let old_name = s
            .groups
            .get(&id)
            .ok_or(BackendError::NotFound(Missing::Group))?
            .name
            .to_lowercase();
        if let Some(name) = &patch.name {
            let key = name.to_lowercase();
            if key != old_name && s.group_by_name.contains_key(&key) {
                return Err(BackendError::Conflict(Unique::GroupName));
            }
            s.group_by_name.remove(&old_name);
            s.group_by_name.insert(key, id);
        }
        let group = s.groups.get_mut(&id).expect("checked above");
        if let Some(name) = patch.name {
            group.name = name;
        }
        if let Some(d) = patch.description {
            group.description = d;
        }
        if let Some(a) = patch.avatar {
            group.avatar = a;
        }
        group.updated_at = now_ms();
        Ok(group.clone())
    }

    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        let mut s = lock(&self.state);
        if !s.groups.contains_key(&group) {
            return Err(BackendError::NotFound(Missing::Group));
        }
        if s.members.get(&group).is_some_and(|m| m.contains_key(&user)) {
            return Err(BackendError::Conflict(Unique::Membership));
        }
        s.next_member += 1;
        let member = Member {
            member_id: s.next_member,
            group_id: group,
            user_id: user,
            role,
            joined_at: at,
        };
        s.members
            .entry(group)
            .or_default()
            .insert(user, member.clone());
        s.groups_of.entry(user).or_default().insert(group);
        if let Some(g) = s.groups.get_mut(&group) {
            g.member_count += 1;
        }
        Ok(member)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let removed = s.members.get_mut(&group).and_then(|m| m.remove(&user));
        if removed.is_none() {
            return Err(BackendError::NotFound(Missing::Membership));
        }
        if let Some(set) = s.groups_of.get_mut(&user) {
            set.remove(&group);
        }
        if let Some(g) = s.groups.get_mut(&group) {
            g.member_count = g.member_count.saturating_sub(1);
        }
        Ok(())
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let member = s
            .members
            .get_mut(&group)
            .and_then(|m| m.get_mut(&user))
            .ok_or(BackendError::NotFound(Missing::Membership))?;
        member.role = role;
        Ok(())
    }

    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        Ok(lock(&self.state)
            .members
            .get(&group)
            .and_then(|m| m.get(&user))
            .cloned())
    }

    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        Ok(lock(&self.state)
            .members
            .get(&group)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        Ok(lock(&self.state)
            .groups_of
            .get(&user)
            .map(|g| g.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        let mut s = lock(&self.state);
        if let Some(key) = &dedupe {
            if let Some(earlier) = s.dedupe.get(key) {
                return Ok(Appended {
                    message: (**earlier).clone(),
                    duplicate: true,
                });
            }
        }
        s.tail += 1;
        let stored = Arc::new(StoredMessage::from_new(msg, s.tail));
        if let (ConvId::Direct(a, b), MessageBody::Direct { .. }) = (stored.conv, &stored.body) {
            s.peers.entry(a).or_default().insert(b);
            s.peers.entry(b).or_default().insert(a);
        }
        s.log.entry(stored.conv).or_default().push(stored.clone());
        if let Some(key) = dedupe {
            if s.dedupe_order.len() >= DEDUPE_CAPACITY {
                if let Some(old) = s.dedupe_order.pop_front() {
                    s.dedupe.remove(&old);
                }
            }
            s.dedupe_order.push_back(key.clone());
            s.dedupe.insert(key, stored.clone());
        }
        Ok(Appended {
            message: (*stored).clone(),
            duplicate: false,
        })
    }

    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let s = lock(&self.state);
        let Some(list) = s.log.get(&conv) else {
            return Ok(HistoryPage::default());
        };
        let end = match before {
            Some(b) => list.partition_point(|m| m.seq < b),
            None => list.len(),
        };
        let start = end.saturating_sub(limit);
        Ok(HistoryPage {
            messages: list[start..end]
                .iter()
                .rev()
                .map(|m| (**m).clone())
                .collect(),
            has_more: start > 0,
        })
    }

    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        let s = lock(&self.state);
        let Some(list) = s.log.get(&conv) else {
            return Ok(Vec::new());
        };
        let start = list.partition_point(|m| m.seq <= after);
        Ok(list[start..]
            .iter()
            .take(limit)
            .map(|m| (**m).clone())
            .collect())
    }

    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        Ok(lock(&self.state)
            .peers
            .get(&user)
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default())
    }

    async fn log_tail(&self) -> BackendResult<Seq> {
        Ok(lock(&self.state).tail)
    }

    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        Ok(lock(&self.state)
            .cursors
            .get(&user)
            .copied()
            .unwrap_or_default())
    }

    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let c = s.cursors.entry(user).or_default();
        *c = c.advanced(to);
        Ok(())
    }

    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let c = s.cursors.entry(user).or_default();
        *c = c.marked(seq);
        Ok(())
    }

    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        let mut s = lock(&self.state);
        let c = s.cursors.entry(user).or_default();
        *c = c.settled(seen, to);
        Ok(())
    }
}

/// Presence of this node's sessions.
#[derive(Default)]
pub struct MemoryPresence {
    sessions: Mutex<HashMap<UserId, Vec<SessionInfo>>>,
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn register(&self, session: SessionInfo) -> BackendResult<()> {
        let mut map = lock(&self.sessions);
        let list = map.entry(session.user_id).or_default();
        list.retain(|s| !(s.node_id == session.node_id && s.conn_id == session.conn_id));
        list.push(session);
        Ok(())
    }

    async fn unregister(&self, user: UserId, node_id: &str, conn: ConnId) -> BackendResult<()> {
        let mut map = lock(&self.sessions);
        if let Some(list) = map.get_mut(&user) {
            list.retain(|s| !(s.node_id == node_id && s.conn_id == conn));
            if list.is_empty() {
                map.remove(&user);
            }
        }
        Ok(())
    }

    async fn sessions(&self, users: &[UserId]) -> BackendResult<HashMap<UserId, Vec<SessionInfo>>> {
        let map = lock(&self.sessions);
        Ok(users
            .iter()
            .filter_map(|u| map.get(u).map(|s| (*u, s.clone())))
            .collect())
    }
}

/// The bus of a single node: events for this node are handed straight to its inbound side.
#[derive(Default)]
pub struct MemoryBus {
    inner: Mutex<BusState>,
}

#[derive(Default)]
struct BusState {
    node_id: String,
    inbound: Option<Arc<dyn BusInbound>>,
    groups: HashSet<GroupId>,
}

#[async_trait]
impl Bus for MemoryBus {
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()> {
        let mut s = lock(&self.inner);
        s.node_id = node_id.to_string();
        s.inbound = Some(inbound);
        Ok(())
    }

    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()> {
        let inbound = {
            let s = lock(&self.inner);
            if s.node_id != node_id {
                return Err(BackendError::unavailable(
                    "in-process bus",
                    format!("node {node_id} is not this node and there is no cluster bus"),
                ));
            }
            s.inbound.clone()
        };
        if let Some(inbound) = inbound {
            inbound.deliver(event).await;
        }
        Ok(())
    }

    /// This node is the whole cluster.
    async fn publish_all(&self, event: BusEvent) -> BackendResult<()> {
        let inbound = lock(&self.inner).inbound.clone();
        if let Some(inbound) = inbound {
            inbound.deliver(event).await;
        }
        Ok(())
    }

    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()> {
        let inbound = {
            let s = lock(&self.inner);
            if !s.groups.contains(&group) {
                return Ok(());
            }
            s.inbound.clone()
        };
        if let Some(inbound) = inbound {
            inbound.deliver(event).await;
        }
        Ok(())
    }

    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()> {
        lock(&self.inner).groups.insert(group);
        Ok(())
    }

    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()> {
        lock(&self.inner).groups.remove(&group);
        Ok(())
    }
}

/// The registry of a single node: it knows only the nodes registered in this process.
#[derive(Default)]
pub struct MemoryRegistry {
    nodes: Mutex<HashMap<String, NodeInfo>>,
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, node: NodeInfo) -> BackendResult<()> {
        lock(&self.nodes).insert(node.node_id.clone(), node);
        Ok(())
    }

    async fn update_load(
        &self,
        node_id: &str,
        connections: u64,
        draining: bool,
    ) -> BackendResult<()> {
        if let Some(n) = lock(&self.nodes).get_mut(node_id) {
            n.connections = connections;
            n.draining = draining;
        }
        Ok(())
    }

    async fn deregister(&self, node_id: &str) -> BackendResult<()> {
        lock(&self.nodes).remove(node_id);
        Ok(())
    }

    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let mut nodes: Vec<NodeInfo> = lock(&self.nodes)
            .values()
            .filter(|n| !n.draining)
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.load().total_cmp(&b.load()));
        Ok(nodes)
    }

    async fn all_nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let mut nodes: Vec<NodeInfo> = lock(&self.nodes).values().cloned().collect();
        nodes.sort_by(|a, b| a.load().total_cmp(&b.load()));
        Ok(nodes)
    }
}

/// Every port in this process, in memory: the single-node default.
pub fn backends() -> Backends {
    Backends {
        store: Arc::new(MemoryStore::default()),
        presence: Arc::new(MemoryPresence::default()),
        bus: Arc::new(MemoryBus::default()),
        registry: Arc::new(MemoryRegistry::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: ConvId, content: &str) -> NewMessage {
        NewMessage {
            msg_id: uuid::Uuid::new_v4().to_string(),
            conv,
            sender_id: 1,
            sender_uuid: "u1".into(),
            sender_name: "alice".into(),
            timestamp: 0,
            body: MessageBody::Group {
                group_id: 1,
                content: content.into(),
            },
        }
    }

    #[tokio::test]
    async fn history_pages_walk_backwards_without_gaps() {
        let store = MemoryStore::default();
        let conv = ConvId::Group(1);
        for i in 0..25 {
            store.append(msg(conv, &i.to_string()), None).await.unwrap();
            store
                .append(msg(ConvId::Group(2), "other"), None)
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store.history(conv, before, 10).await.unwrap();
            seen.extend(page.messages.iter().map(|m| m.content().to_string()));
            before = page.messages.last().map(|m| m.seq);
            if !page.has_more {
                break;
            }
        }
        let expected: Vec<String> = (0..25).rev().map(|i| i.to_string()).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn dedupe_returns_the_first_message() {
        let store = MemoryStore::default();
        let key = DedupeKey {
            sender_id: 1,
            client_msg_id: "c1".into(),
        };
        let a = store
            .append(msg(ConvId::Group(1), "x"), Some(key.clone()))
            .await
            .unwrap();
        let b = store
            .append(msg(ConvId::Group(1), "x"), Some(key))
            .await
            .unwrap();
        assert!(!a.duplicate && b.duplicate);
        assert_eq!(a.message, b.message);
        assert_eq!(store.log_tail().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn cursor_marks_and_settles() {
        let store = MemoryStore::default();
        store.advance_cursor(7, 50).await.unwrap();
        store.mark_undelivered(7, 40).await.unwrap();
        store.mark_undelivered(7, 45).await.unwrap();
        store.mark_undelivered(7, 60).await.unwrap();
        let c = store.cursor(7).await.unwrap();
        assert_eq!(c.undelivered_from, Some(40));
        assert_eq!(c.resume_after(), 39);
        store.settle_cursor(7, Some(40), 55).await.unwrap();
        let c = store.cursor(7).await.unwrap();
        assert_eq!((c.delivered, c.undelivered_from), (55, None));
    }

    #[tokio::test]
    async fn names_are_unique_case_insensitively() {
        let store = MemoryStore::default();
        let new = |name: &str| NewUser {
            uuid: uuid::Uuid::new_v4().to_string(),
            username: name.into(),
            email: "a@x".into(),
            password_hash: String::new(),
            created_at: 0,
        };
        store.create_user(new("Alice")).await.unwrap();
        assert!(matches!(
            store.create_user(new("alice")).await,
            Err(BackendError::Conflict(Unique::Username))
        ));
        assert!(store.user_by_name("ALICE").await.unwrap().is_some());
    }
}
