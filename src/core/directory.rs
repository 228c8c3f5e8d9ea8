//! Node-local caches that take backend round trips off the send path.
//!
//! A direct send names its recipient by uuid, username or numeric id; resolving that used to
//! cost two store reads per message (name → id, id → user). A group send used to read the
//! group's whole member document per message to check that the sender belongs to it.
//!
//! - [`UserDirectory`] keeps only facts that can never change once true: a user's id, uuid
//!   and username are fixed at registration, users are never renamed or deleted. So a cached
//!   positive answer is never stale. Negative answers are **not** cached: the name may be
//!   registered a moment later on another node.
//! - [`MembershipCache`] remembers that a user was found to be a member of a group, for a
//!   short time. It is only consulted together with the hub's membership index (which
//!   applies join/leave/remove events at once), so the recheck interval bounds how long a
//!   removal whose bus event was lost can go unnoticed, not how long every removal takes.
//!
//! - [`DeliveredSends`] remembers the keyed sends (with a `client_msg_id`) whose delivery this
//!   node completed, so that a retry of one of them is not pushed again; a retry of any other
//!   send is (its first attempt may have been stored without being pushed).
//!
//! All are bounded: a map that reaches its cap is cleared (the next sends refill it), which
//! keeps memory flat without an LRU's bookkeeping on the hot path; `DeliveredSends` is a ring
//! that forgets its oldest entry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::model::{GroupId, Seq, User, UserId};
use super::ports::Clock;

/// Entries per map before it is cleared.
const DIRECTORY_CAP: usize = 200_000;
const MEMBERSHIP_CAP: usize = 200_000;
/// Delivered keyed sends remembered (8 bytes each). A retry usually follows its first attempt
/// within seconds (the client reconnects and re-sends); one that comes after the ring forgot
/// its first attempt is pushed again, a duplicate that clients drop by `msg_id`.
const DELIVERED_CAP: usize = 65_536;

/// How long a positive membership check is trusted (see the module doc).
pub const MEMBERSHIP_RECHECK: Duration = Duration::from_secs(5);

#[derive(Default)]
struct DirectoryMaps {
    by_name: HashMap<String, UserId>,
    /// Keyed by the lower-case hyphenated uuid.
    by_uuid: HashMap<String, UserId>,
    ids: HashSet<UserId>,
}

/// Identity facts learnt from the store (see the module doc).
#[derive(Default)]
pub struct UserDirectory {
    maps: Mutex<DirectoryMaps>,
}

/// Whether `s` can be a stored uuid at all: users get hyphenated v4 uuids at registration.
/// Anything else is never looked up as a uuid (it cannot match one).
pub fn is_uuid_shaped(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

impl UserDirectory {
    fn maps(&self) -> std::sync::MutexGuard<'_, DirectoryMaps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn by_name(&self, name: &str) -> Option<UserId> {
        self.maps().by_name.get(name).copied()
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<UserId> {
        self.maps().by_uuid.get(&uuid.to_ascii_lowercase()).copied()
    }

    pub fn knows_id(&self, id: UserId) -> bool {
        self.maps().ids.contains(&id)
    }

    /// Remembers a user read from the store.
    pub fn learn(&self, user: &User) {
        let mut m = self.maps();
        if m.by_name.len() >= DIRECTORY_CAP {
            m.by_name.clear();
        }
        if m.by_uuid.len() >= DIRECTORY_CAP {
            m.by_uuid.clear();
        }
        if m.ids.len() >= DIRECTORY_CAP {
            m.ids.clear();
        }
        m.by_name.insert(user.username.clone(), user.id);
        m.by_uuid.insert(user.uuid.to_ascii_lowercase(), user.id);
        m.ids.insert(user.id);
    }
}

/// Recent positive membership checks (see the module doc), aged by the core's [`Clock`].
pub struct MembershipCache {
    clock: Arc<dyn Clock>,
    /// When each check was made, on the clock's monotonic time.
    checked: Mutex<HashMap<(UserId, GroupId), Duration>>,
}

impl MembershipCache {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MembershipCache {
            clock,
            checked: Mutex::default(),
        }
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, GroupId), Duration>> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `user` was found to be a member of `group` less than the recheck interval ago.
    pub fn fresh(&self, user: UserId, group: GroupId) -> bool {
        let now = self.clock.monotonic();
        self.checked()
            .get(&(user, group))
            .is_some_and(|at| now.saturating_sub(*at) < MEMBERSHIP_RECHECK)
    }

    pub fn confirmed(&self, user: UserId, group: GroupId) {
        let now = self.clock.monotonic();
        let mut m = self.checked();
        if m.len() >= MEMBERSHIP_CAP {
            m.clear();
        }
        m.insert((user, group), now);
    }

    /// The user left or was removed (known on this node): forget at once.
    pub fn forget(&self, user: UserId, group: GroupId) {
        self.checked().remove(&(user, group));
    }
}

/// Log positions of keyed sends whose delivery (local pushes, hand-over to other nodes) this
/// node completed, newest last (see the module doc).
///
/// Remembering costs one store into a ring per keyed send; looking up (a linear scan) happens
/// only for a retry that the store recognised as a duplicate, which is rare.
#[derive(Default)]
pub struct DeliveredSends {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    seqs: Vec<Seq>,
    /// Where the next position goes once `seqs` is full.
    next: usize,
}

impl DeliveredSends {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The send stored at `seq` was delivered.
    pub fn remember(&self, seq: Seq) {
        let mut r = self.ring();
        if r.seqs.len() < DELIVERED_CAP {
            r.seqs.push(seq);
        } else {
            let at = r.next;
            r.seqs[at] = seq;
            r.next = (at + 1) % DELIVERED_CAP;
        }
    }

    /// Whether this node delivered the send stored at `seq` (and still remembers it).
    pub fn delivered(&self, seq: Seq) -> bool {
        self.ring().seqs.contains(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ports::ManualClock;

    #[test]
    fn delivered_sends_forget_the_oldest_first() {
        let d = DeliveredSends::default();
        assert!(!d.delivered(1));
        for seq in 1..=DELIVERED_CAP as Seq {
            d.remember(seq);
        }
        assert!(d.delivered(1));
        d.remember(DELIVERED_CAP as Seq + 1);
        assert!(!d.delivered(1));
        assert!(d.delivered(2));
        assert!(d.delivered(DELIVERED_CAP as Seq + 1));
    }

    fn user(id: UserId, name: &str, uuid: &str) -> User {
        User {
            id,
            uuid: uuid.into(),
            username: name.into(),
            email: "a@b".into(),
            avatar: String::new(),
            password_hash: String::new(),
            created_at: 0,
            last_login: None,
            revoked_tokens: Vec::new(),
            tokens_valid_from: 0,
        }
    }

    #[test]
    fn directory_answers_only_what_it_learnt() {
        let d = UserDirectory::default();
        let u = uuid::Uuid::new_v4().to_string();
        assert_eq!(d.by_name("alice"), None);
        d.learn(&user(7, "alice", &u));
        assert_eq!(d.by_name("alice"), Some(7));
        assert_eq!(d.by_uuid(&u.to_uppercase()), Some(7));
        assert!(d.knows_id(7));
        assert!(!d.knows_id(8));
        assert_eq!(d.by_name("bob"), None);
    }

    #[test]
    fn only_hyphenated_uuids_are_uuid_shaped() {
        assert!(is_uuid_shaped("67e55044-10b1-426f-9247-bb680e5fe0c8"));
        assert!(is_uuid_shaped("67E55044-10B1-426F-9247-BB680E5FE0C8"));
        assert!(!is_uuid_shaped("67e5504410b1426f9247bb680e5fe0c8"));
        assert!(!is_uuid_shaped("123"));
        assert!(!is_uuid_shaped("alice"));
        assert!(!is_uuid_shaped("67e55044-10b1-426f-9247-bb680e5fe0cz"));
    }

    #[test]
    fn membership_is_fresh_until_forgotten() {
        let c = MembershipCache::new(Arc::new(ManualClock::default()));
        assert!(!c.fresh(1, 2));
        c.confirmed(1, 2);
        assert!(c.fresh(1, 2));
        assert!(!c.fresh(1, 3));
        c.forget(1, 2);
        assert!(!c.fresh(1, 2));
    }

    #[test]
    fn membership_goes_stale_after_the_recheck_interval() {
        let clock = Arc::new(ManualClock::default());
        let c = MembershipCache::new(clock.clone());
        c.confirmed(1, 2);
        clock.advance(MEMBERSHIP_RECHECK - Duration::from_millis(1));
        assert!(c.fresh(1, 2));
        clock.advance(Duration::from_millis(1));
        assert!(!c.fresh(1, 2));
        // A new check starts a new interval.
        c.confirmed(1, 2);
        assert!(c.fresh(1, 2));
    }
}
