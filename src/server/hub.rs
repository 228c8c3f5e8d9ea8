//! The hub: this node's logged-in connections, indexed by user and by group, and the pushes
//! into their write queues.
//!
//! Pushes never wait: a frame goes into a connection's bounded queue with `try_send`; a full
//! queue means the client reads too slowly, and the connection is closed (slow-consumer policy).
//! A push frame is encoded once per message and shared (`Bytes`) by every connection it goes to.
//!
//! When a user's last connection closes, the user stays in the group index for a short grace
//! period (a tombstone): a message that was already on its way when the connection closed is
//! then recognised as missed and recorded, so the next login delivers it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tracing::info;

use crate::core::model::{ConnId, GroupId, MessageBody, Seq, StoredMessage, UserId};
use crate::core::LocalDelivery;
use crate::telemetry::metrics::DeliveryLatency;

use super::budget::SlowClose;
use super::outbox::{Outbound, PushError};
use super::shared::ConnShared;
use super::wire::push_frame;

/// What the hub holds of a connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub shared: Arc<ConnShared>,
}

/// Error code of the 99 frame sent to a connection closed as a slow consumer.
pub const CODE_SLOW_CONSUMER: u32 = crate::protocol::messages::code::SLOW_CONSUMER;
/// Error code of the 99 frame sent to a connection closed by the device limit.
pub const CODE_TOO_MANY_DEVICES: u32 = crate::protocol::messages::code::TOO_MANY_DEVICES;
/// Close code of a connection an operator closed (admin API).
pub const CODE_KICKED: u32 = crate::protocol::messages::code::KICKED;

/// One per user with a connection here (or a tombstone): kept small, there is one per
/// logged-in user (a user's first connection lives inline, and the groups are a sorted vector
/// rather than a set that costs 48 bytes before it holds anything).
struct UserEntry {
    conns: SmallVec<[ConnHandle; 1]>,
    groups: GroupList,
    /// Set when the last connection closed: the user is kept in the group index until then.
    tombstone_until: Option<Instant>,
    /// Highest written position seen at the previous cursor flush (see `flush_cursors`).
    sampled: Seq,
    /// Delivery cursor last saved by `flush_cursors`.
    saved: Seq,
}

/// A user's groups, sorted: joins and leaves are rare next to lookups, and most users are in
/// few groups.
#[derive(Default)]
struct GroupList(Vec<GroupId>);

impl GroupList {
    fn from_unsorted(mut groups: Vec<GroupId>) -> Self {
        groups.sort_unstable();
        groups.dedup();
        groups.shrink_to_fit();
        GroupList(groups)
    }

    fn contains(&self, group: &GroupId) -> bool {
        self.0.binary_search(group).is_ok()
    }

    fn insert(&mut self, group: GroupId) {
        if let Err(at) = self.0.binary_search(&group) {
            self.0.insert(at, group);
        }
    }

    fn remove(&mut self, group: &GroupId) {
        if let Ok(at) = self.0.binary_search(group) {
            self.0.remove(at);
        }
    }

    /// The groups in `self` and not in `other` (both sorted).
    fn difference<'a>(&'a self, other: &'a GroupList) -> impl Iterator<Item = &'a GroupId> + 'a {
        self.0.iter().filter(move |g| !other.contains(g))
    }
}

#[derive(Default)]
struct HubState {
    users: HashMap<UserId, UserEntry>,
    /// Local users (online or tombstoned) per group.
    groups: HashMap<GroupId, HashSet<UserId>>,
}

/// Counters the hub keeps (exported as metrics).
#[derive(Default)]
pub struct HubStats {
    pub slow_consumers: AtomicU64,
    pub pushes: AtomicU64,
    pub missed: AtomicU64,
    /// From a message's store time to its hand-over to a local connection.
    pub delivery_latency: DeliveryLatency,
}

pub struct Hub {
    state: RwLock<HubState>,
    grace: Duration,
    /// Notified when the set of locally active groups may have changed (the core keeps the
    /// bus's group subscriptions equal to it).
    groups_changed: Notify,
    pub stats: HubStats,
}

impl Hub {
    pub fn new(grace: Duration) -> Self {
        Hub {
            state: RwLock::new(HubState::default()),
            grace,
            groups_changed: Notify::new(),
            stats: HubStats::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HubState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HubState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a logged-in connection of `user`, member of `groups`.
    pub fn attach(&self, user: UserId, groups: Vec<GroupId>, handle: ConnHandle) {
        let mut guard = self.write();
        let s = &mut *guard;
        let entry = s.users.entry(user).or_insert_with(|| UserEntry {
            conns: SmallVec::new(),
            groups: GroupList::default(),
            tombstone_until: None,
            sampled: 0,
            saved: 0,
        });
        entry.tombstone_until = None;
        entry.conns.push(handle);
        let old = std::mem::replace(&mut entry.groups, GroupList::from_unsorted(groups));
        for g in old.difference(&entry.groups) {
            if let Some(set) = s.groups.get_mut(g) {
                set.remove(&user);
                if set.is_empty() {
                    s.groups.remove(g);
                }
            }
        }
        for g in &entry.groups.0 {
            s.groups.entry(*g).or_default().insert(user);
        }
        drop(guard);
        self.groups_changed.notify_one();
    }

    /// Removes a connection. The user's last connection leaves a tombstone for the grace period.
    pub fn detach(&self, user: UserId, conn: ConnId) {
        let mut s = self.write();
        if let Some(entry) = s.users.get_mut(&user) {
            entry.conns.retain(|c| c.shared.conn_id != conn);
            if entry.conns.is_empty() {
                entry.tombstone_until = Some(Instant::now() + self.grace);
            }
        }
    }

    /// Connections on this node.
    pub fn connection_count(&self) -> usize {
        self.read().users.values().map(|e| e.conns.len()).sum()
    }

    /// Users with at least one connection on this node.
    pub fn user_count(&self) -> usize {
        self.read()
            .users
            .values()
            .filter(|e| !e.conns.is_empty())
            .count()
    }

    /// Every local connection (for drain and shutdown).
    pub fn all_connections(&self) -> Vec<ConnHandle> {
        self.read()
            .users
            .values()
            .flat_map(|e| e.conns.iter().cloned())
            .collect()
    }

    /// Drops expired tombstones; returns whether the group set changed.
    fn expire_tombstones_now(&self) -> bool {
        let now = Instant::now();
        let mut s = self.write();
        let expired: Vec<UserId> = s
            .users
            .iter()
            .filter(|(_, e)| e.conns.is_empty() && e.tombstone_until.is_none_or(|t| t <= now))
            .map(|(u, _)| *u)
            .collect();
        let changed = !expired.is_empty();
        for user in expired {
            if let Some(entry) = s.users.remove(&user) {
                for g in entry.groups.0 {
                    if let Some(set) = s.groups.get_mut(&g) {
                        set.remove(&user);
                        if set.is_empty() {
                            s.groups.remove(&g);
                        }
                    }
                }
            }
        }
        changed
    }

    /// The delivery cursors due to be saved: for each online user, the highest position its
    /// connections had written one period ago (see [`LocalDelivery::due_cursors`]).
    fn take_due_cursors(&self) -> Vec<(UserId, Seq)> {
        let mut due = Vec::new();
        let mut s = self.write();
        for (user, entry) in s.users.iter_mut() {
            if entry.sampled > entry.saved {
                due.push((*user, entry.sampled));
                entry.saved = entry.sampled;
            }
            entry.sampled = entry
                .conns
                .iter()
                .map(|c| c.shared.written.load(Ordering::Relaxed))
                .max()
                .unwrap_or(entry.sampled);
        }
        due
    }

    /// Pushes `frame` to one connection; false if it could not take it. A push that the
    /// connection's login backlog already brings is left out and counts as delivered.
    fn push(&self, conn: &ConnHandle, frame: &Bytes, seq: Seq) -> bool {
        match conn.shared.push_live(Outbound {
            frame: frame.clone(),
            seq,
        }) {
            Ok(true) => {
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(false) => true,
            Err(PushError::Full) => {
                info!(
                    conn_id = conn.shared.conn_id,
                    queued_bytes = conn.shared.outbox.queued_bytes(),
                    "slow consumer: write queue full, disconnecting"
                );
                if conn.shared.request_close(
                    CODE_SLOW_CONSUMER,
                    "slow consumer: you did not read fast enough and missed pushes; reconnect and sync",
                ) {
                    self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    conn.shared.outbox.budget().count_close(SlowClose::PushFull);
                }
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Pushes to every connection of `users` except `skip`; returns the users that missed it.
    fn push_to_users(
        &self,
        message: &StoredMessage,
        users: &[UserId],
        skip: Option<ConnId>,
        remote: bool,
    ) -> Vec<UserId> {
        let mut frame: Option<Bytes> = None;
        let mut missed = Vec::new();
        // One clock read for every hand-over of this message on this node.
        let latency = DeliveryLatency::seconds_since(message.timestamp);
        let s = self.read();
        for user in users {
            let Some(entry) = s.users.get(user) else {
                // Another node routed it here (presence said so), but the user is gone.
                if remote {
                    missed.push(*user);
                }
                continue;
            };
            if entry.conns.is_empty() {
                missed.push(*user);
                continue;
            }
            let mut any = false;
            let mut failed = false;
            for conn in &entry.conns {
                if Some(conn.shared.conn_id) == skip {
                    any = true;
                    continue;
                }
                let f = frame.get_or_insert_with(|| push_frame(message));
                if self.push(conn, f, message.seq) {
                    self.stats.delivery_latency.observe(latency);
                    any = true;
                } else {
                    failed = true;
                }
            }
            if failed || !any {
                missed.push(*user);
            }
        }
        self.stats
            .missed
            .fetch_add(missed.len() as u64, Ordering::Relaxed);
        missed
    }

    fn push_to_group(&self, message: &StoredMessage, skip: Option<ConnId>) -> Vec<UserId> {
        let MessageBody::Group { group_id, .. } = &message.body else {
            return Vec::new();
        };
        let s = self.read();
        let Some(members) = s.groups.get(group_id) else {
            return Vec::new();
        };
        let users: Vec<UserId> = members.iter().copied().collect();
        drop(s);
        self.push_to_users(message, &users, skip, false)
    }

    fn kick_conn(&self, user: UserId, conn: ConnId, code: u32, reason: &str) {
        let s = self.read();
        if let Some(c) = s
            .users
            .get(&user)
            .and_then(|e| e.conns.iter().find(|c| c.shared.conn_id == conn))
        {
            c.shared.request_close(code, reason);
        }
    }

    fn apply_membership(&self, user: UserId, group: GroupId, joined: bool) {
        let mut s = self.write();
        let Some(entry) = s.users.get_mut(&user) else {
            return;
        };
        if joined {
            entry.groups.insert(group);
            s.groups.entry(group).or_default().insert(user);
        } else {
            entry.groups.remove(&group);
            if let Some(set) = s.groups.get_mut(&group) {
                set.remove(&user);
                if set.is_empty() {
                    s.groups.remove(&group);
                }
            }
        }
        drop(s);
        self.groups_changed.notify_one();
    }
}

impl LocalDelivery for Hub {
    fn deliver_direct(
        &self,
        message: &Arc<StoredMessage>,
        users: &[UserId],
        skip: Option<ConnId>,
    ) -> Vec<UserId> {
        self.push_to_users(message, users, skip, false)
    }

    fn deliver_group(&self, message: &Arc<StoredMessage>, skip: Option<ConnId>) -> Vec<UserId> {
        self.push_to_group(message, skip)
    }

    fn kick(&self, user: UserId, conn: ConnId, reason: &str) {
        self.kick_conn(user, conn, CODE_TOO_MANY_DEVICES, reason);
    }

    fn close_by_admin(&self, user: UserId, conn: Option<ConnId>, reason: &str) -> usize {
        let message = format!("closed by an operator: {reason}");
        let s = self.read();
        let Some(entry) = s.users.get(&user) else {
            return 0;
        };
        entry
            .conns
            .iter()
            .filter(|c| conn.is_none_or(|id| c.shared.conn_id == id))
            .map(|c| c.shared.request_close(CODE_KICKED, message.clone()))
            .filter(|closed| *closed)
            .count()
    }

    fn membership(&self, user: UserId, group: GroupId, joined: bool) {
        self.apply_membership(user, group, joined);
    }

    fn is_member(&self, user: UserId, group: GroupId) -> bool {
        self.read()
            .users
            .get(&user)
            .is_some_and(|e| !e.conns.is_empty() && e.groups.contains(&group))
    }

    fn deliver_routed(&self, message: &Arc<StoredMessage>, users: &[UserId]) -> Vec<UserId> {
        self.push_to_users(message, users, None, true)
    }

    fn backlog_page(&self, user: UserId, conn: ConnId, page: &[Seq]) -> HashSet<Seq> {
        let s = self.read();
        s.users
            .get(&user)
            .and_then(|e| e.conns.iter().find(|c| c.shared.conn_id == conn))
            .map(|c| c.shared.backlog_page(page))
            .unwrap_or_default()
    }

    fn backlog_done(&self, user: UserId, conn: ConnId) {
        let s = self.read();
        if let Some(c) = s
            .users
            .get(&user)
            .and_then(|e| e.conns.iter().find(|c| c.shared.conn_id == conn))
        {
            c.shared.backlog_done();
        }
    }

    fn active_groups(&self) -> HashSet<GroupId> {
        self.read().groups.keys().copied().collect()
    }

    fn groups_changed(&self) -> &Notify {
        &self.groups_changed
    }

    fn expire_tombstones(&self) -> bool {
        self.expire_tombstones_now()
    }

    fn tombstone_grace(&self) -> Duration {
        self.grace
    }

    fn due_cursors(&self) -> Vec<(UserId, Seq)> {
        self.take_due_cursors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::ConvId;

    fn group_msg(group: GroupId, seq: Seq) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            seq,
            msg_id: format!("m{seq}"),
            conv: ConvId::Group(group),
            sender_id: 1,
            sender_uuid: "u1".into(),
            sender_name: "alice".into(),
            timestamp: 0,
            body: MessageBody::Group {
                group_id: group,
                content: "hi".into(),
            },
        })
    }

    fn direct_msg(to: UserId, seq: Seq) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            seq,
            msg_id: format!("m{seq}"),
            conv: ConvId::direct(1, to),
            sender_id: 1,
            sender_uuid: "u1".into(),
            sender_name: "alice".into(),
            timestamp: 0,
            body: MessageBody::Direct {
                recipient_id: to,
                to_user_id: to.to_string(),
                content: "hi".into(),
                msg_type: String::new(),
                sent_at: None,
            },
        })
    }

    fn conn(id: ConnId, queue: usize) -> ConnHandle {
        ConnHandle {
            shared: Arc::new(ConnShared::new(
                id,
                queue,
                usize::MAX,
                crate::server::budget::WriteBudget::unlimited(),
            )),
        }
    }

    #[test]
    fn a_direct_push_reaches_every_connection_but_the_skipped_one() {
        let hub = Hub::new(Duration::from_secs(10));
        let (a, b) = (conn(1, 8), conn(2, 8));
        hub.attach(7, vec![], a.clone());
        hub.attach(7, vec![], b.clone());
        let missed = hub.deliver_direct(&direct_msg(7, 5), &[7], Some(1));
        assert!(missed.is_empty());
        assert_eq!((a.shared.outbox.len(), b.shared.outbox.len()), (0, 1));
        // A user unknown here: a local send does not count it (presence finds it elsewhere);
        // a send another node routed here for that user did miss it.
        assert!(hub.deliver_direct(&direct_msg(8, 6), &[8], None).is_empty());
        assert_eq!(hub.deliver_routed(&direct_msg(8, 6), &[8]), vec![8]);
        assert_eq!(hub.stats.pushes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_closes_the_connection_as_a_slow_consumer_and_counts_as_missed() {
        let hub = Hub::new(Duration::from_secs(10));
        let slow = conn(1, 1);
        hub.attach(7, vec![], slow.clone());
        assert!(hub.deliver_direct(&direct_msg(7, 1), &[7], None).is_empty());
        assert_eq!(hub.deliver_direct(&direct_msg(7, 2), &[7], None), vec![7]);
        assert!(slow.shared.is_closing());
        assert_eq!(
            slow.shared.close_reason().map(|r| r.code),
            Some(CODE_SLOW_CONSUMER)
        );
        assert_eq!(hub.stats.slow_consumers.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn group_pushes_follow_the_group_index_and_membership_events() {
        let hub = Hub::new(Duration::from_secs(10));
        let (a, b) = (conn(1, 8), conn(2, 8));
        hub.attach(7, vec![100], a.clone());
        hub.attach(8, vec![], b.clone());
        assert_eq!(hub.active_groups(), HashSet::from([100]));
        assert!(hub.is_member(7, 100) && !hub.is_member(8, 100));
        assert!(hub.deliver_group(&group_msg(100, 1), None).is_empty());
        assert_eq!((a.shared.outbox.len(), b.shared.outbox.len()), (1, 0));
        hub.membership(8, 100, true);
        hub.membership(7, 100, false);
        assert!(hub.deliver_group(&group_msg(100, 2), None).is_empty());
        assert_eq!((a.shared.outbox.len(), b.shared.outbox.len()), (1, 1));
        hub.membership(8, 100, false);
        assert!(hub.active_groups().is_empty());
    }

    #[test]
    fn a_closed_users_tombstone_records_a_group_push_as_missed_until_it_expires() {
        let hub = Hub::new(Duration::ZERO);
        hub.attach(7, vec![100], conn(1, 8));
        hub.detach(7, 1);
        // Tombstoned: still in the index, so a push on its way is recognised as missed.
        assert_eq!(hub.active_groups(), HashSet::from([100]));
        assert_eq!(hub.deliver_group(&group_msg(100, 3), None), vec![7]);
        assert!(
            !hub.is_member(7, 100),
            "a tombstone is not an online member"
        );
        // The grace period (zero here) is over: gone from the index.
        assert!(hub.expire_tombstones());
        assert!(hub.active_groups().is_empty());
        assert!(hub.deliver_group(&group_msg(100, 4), None).is_empty());
    }

    #[test]
    fn a_kick_closes_only_the_named_connection_with_the_device_limit_code() {
        let hub = Hub::new(Duration::from_secs(10));
        let (a, b) = (conn(1, 8), conn(2, 8));
        hub.attach(7, vec![], a.clone());
        hub.attach(7, vec![], b.clone());
        hub.kick(7, 1, "too many devices");
        assert!(a.shared.is_closing() && !b.shared.is_closing());
        assert_eq!(
            a.shared.close_reason().map(|r| (r.code, r.message)),
            Some((CODE_TOO_MANY_DEVICES, "too many devices".to_string()))
        );
    }

    #[test]
    fn a_written_position_is_due_for_the_cursor_one_flush_after_it_was_sampled() {
        let hub = Hub::new(Duration::from_secs(10));
        let a = conn(1, 8);
        hub.attach(7, vec![], a.clone());
        a.shared.written.store(42, Ordering::Relaxed);
        // First flush samples it; only the next one saves it (outside the uncertain window).
        assert!(hub.due_cursors().is_empty());
        assert_eq!(hub.due_cursors(), vec![(7, 42)]);
        assert!(hub.due_cursors().is_empty(), "saved once");
    }
}
