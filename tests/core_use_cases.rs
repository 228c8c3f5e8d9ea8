//! The core's use cases (`ChatCore`), on the in-process adapters (`backend::memory`), a
//! [`ManualClock`] that the tests move instead of waiting, and a recording fake of this
//! node's connections (`LocalDelivery`). No sockets, no sleeping.
//!
//! These tests live here rather than in `src/core/` because the core may import nothing else
//! of the crate (`tests/architecture.rs`), and the in-process adapters are in `backend`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_zinx::backend::memory;
use chat_zinx::core::auth::Auth;
use chat_zinx::core::model::*;
use chat_zinx::core::ports::{Backends, BusEvent, BusInbound, Clock, LocalDelivery, ManualClock};
use chat_zinx::core::service::{Committed, DeliveryOutcome, DirectInput, Limits};
use chat_zinx::core::{ChatCore, ChatError, Me};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Only its lost acknowledgements are used here (not the held ones).
#[allow(dead_code)]
#[path = "support/faulty_store.rs"]
mod faulty_store;
use faulty_store::FaultyStore;

const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";
const TOKEN_TTL: Duration = Duration::from_secs(3600);
const PASSWORD: &str = "secret-1";

// ---------------------------------------------------------------------------------------------
// A recording fake of this node's connections
// ---------------------------------------------------------------------------------------------

/// One push handed to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Push {
    user: UserId,
    conn: ConnId,
    message: StoredMessage,
}

#[derive(Default)]
struct LocalState {
    /// Users logged in here and their connections; an empty list is a user whose last
    /// connection just closed (the hub's tombstone): it should have had pushes and did not.
    conns: HashMap<UserId, Vec<ConnId>>,
    /// The local group index of the users logged in here.
    groups: HashMap<UserId, HashSet<GroupId>>,
    /// Users whose connections refuse pushes (queue full, closing).
    failing: HashSet<UserId>,
    pushes: Vec<Push>,
    /// Per connection that logged in, its login filter (as `server::shared::ConnShared`):
    /// `Recording` until its backlog was read, then `Dropping` the backlog's positions.
    login: HashMap<ConnId, LoginFilter>,
    kicks: Vec<(UserId, ConnId, String)>,
    memberships: Vec<(UserId, GroupId, bool)>,
    due: Vec<(UserId, Seq)>,
}

enum LoginFilter {
    /// Pushed live so far, and the backlog pages read so far.
    Recording(HashSet<Seq>, HashSet<Seq>),
    Dropping(HashSet<Seq>),
}

/// What the hub does, reduced to bookkeeping: the same rules for who should have had a push
/// and who missed it (`server::hub::Hub::push_to_users`).
#[derive(Default)]
struct FakeLocal {
    state: Mutex<LocalState>,
    changed: Notify,
}

impl FakeLocal {
    fn state(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.state.lock().unwrap()
    }

    /// A connection of `user` logged in here, with the user's groups (loaded at login).
    fn connect(&self, user: UserId, conn: ConnId, groups: &[GroupId]) {
        let mut s = self.state();
        s.conns.entry(user).or_default().push(conn);
        s.groups.entry(user).or_default().extend(groups);
        s.login
            .insert(conn, LoginFilter::Recording(HashSet::new(), HashSet::new()));
        drop(s);
        self.changed.notify_one();
    }

    /// Every connection of `user` closed just now (the user stays known, as a tombstone).
    fn disconnect_all(&self, user: UserId) {
        if let Some(list) = self.state().conns.get_mut(&user) {
            list.clear();
        }
    }

    /// Pushes to `user` fail from now on.
    fn fail_pushes_to(&self, user: UserId) {
        self.state().failing.insert(user);
    }

    fn pushes(&self) -> Vec<Push> {
        self.state().pushes.clone()
    }

    /// `(conn, seq)` of every push `user` got, in order.
    fn pushes_to(&self, user: UserId) -> Vec<(ConnId, Seq)> {
        self.state()
            .pushes
            .iter()
            .filter(|p| p.user == user)
            .map(|p| (p.conn, p.message.seq))
            .collect()
    }

    fn kicks(&self) -> Vec<(UserId, ConnId, String)> {
        self.state().kicks.clone()
    }

    fn memberships(&self) -> Vec<(UserId, GroupId, bool)> {
        self.state().memberships.clone()
    }

    fn push_to_users(
        &self,
        message: &StoredMessage,
        users: &[UserId],
        skip: Option<ConnId>,
        routed: bool,
    ) -> Vec<UserId> {
        let mut s = self.state();
        let mut missed = Vec::new();
        for &user in users {
            let Some(conns) = s.conns.get(&user).cloned() else {
                // Never here: missed only if another node routed it here.
                if routed {
                    missed.push(user);
                }
                continue;
            };
            let failing = s.failing.contains(&user);
            let (mut any, mut failed) = (false, false);
            for conn in conns {
                if Some(conn) == skip {
                    any = true;
                } else if failing {
                    failed = true;
                } else {
                    let seq = message.seq;
                    match s.login.get_mut(&conn) {
                        Some(LoginFilter::Dropping(backlog))
                        | Some(LoginFilter::Recording(_, backlog))
                            if backlog.contains(&seq) =>
                        {
                            any = true;
                            continue;
                        }
                        Some(LoginFilter::Recording(pushed, _)) => {
                            pushed.insert(seq);
                        }
                        _ => {}
                    }
                    s.pushes.push(Push {
                        user,
                        conn,
                        message: message.clone(),
                    });
                    any = true;
                }
            }
            if failed || !any {
                missed.push(user);
            }
        }
        missed
    }
}

impl LocalDelivery for FakeLocal {
    fn deliver_direct(
        &self,
        message: &Arc<StoredMessage>,
        users: &[UserId],
        skip: Option<ConnId>,
    ) -> Vec<UserId> {
        self.push_to_users(message, users, skip, false)
    }

    fn deliver_group(&self, message: &Arc<StoredMessage>, skip: Option<ConnId>) -> Vec<UserId> {
        let MessageBody::Group { group_id, .. } = &message.body else {
            return Vec::new();
        };
        let mut members: Vec<UserId> = self
            .state()
            .groups
            .iter()
            .filter(|(_, gs)| gs.contains(group_id))
            .map(|(u, _)| *u)
            .collect();
        members.sort_unstable();
        self.push_to_users(message, &members, skip, false)
    }

    fn kick(&self, user: UserId, conn: ConnId, reason: &str) {
        self.state().kicks.push((user, conn, reason.to_string()));
    }

    fn close_by_admin(&self, user: UserId, conn: Option<ConnId>, reason: &str) -> usize {
        // Recorded as kicks (connection 0: all of them); the tests over TCP check the frames.
        self.state()
            .kicks
            .push((user, conn.unwrap_or(0), format!("admin: {reason}")));
        1
    }

    fn membership(&self, user: UserId, group: GroupId, joined: bool) {
        let mut s = self.state();
        s.memberships.push((user, group, joined));
        if s.conns.contains_key(&user) {
            let groups = s.groups.entry(user).or_default();
            if joined {
                groups.insert(group);
            } else {
                groups.remove(&group);
            }
        }
        drop(s);
        self.changed.notify_one();
    }

    fn is_member(&self, user: UserId, group: GroupId) -> bool {
        let s = self.state();
        s.conns.get(&user).is_some_and(|c| !c.is_empty())
            && s.groups.get(&user).is_some_and(|g| g.contains(&group))
    }

    fn deliver_routed(&self, message: &Arc<StoredMessage>, users: &[UserId]) -> Vec<UserId> {
        self.push_to_users(message, users, None, true)
    }

    fn backlog_page(&self, user: UserId, conn: ConnId, page: &[Seq]) -> HashSet<Seq> {
        let mut s = self.state();
        if !s.conns.get(&user).is_some_and(|c| c.contains(&conn)) {
            return HashSet::new();
        }
        let Some(LoginFilter::Recording(pushed, read)) = s.login.get_mut(&conn) else {
            return HashSet::new();
        };
        let mut already = HashSet::new();
        for &seq in page {
            if pushed.contains(&seq) {
                already.insert(seq);
            } else {
                read.insert(seq);
            }
        }
        already
    }

    fn backlog_done(&self, _user: UserId, conn: ConnId) {
        let mut s = self.state();
        if let Some(LoginFilter::Recording(_, read)) = s.login.remove(&conn) {
            s.login.insert(conn, LoginFilter::Dropping(read));
        }
    }

    fn active_groups(&self) -> HashSet<GroupId> {
        let s = self.state();
        s.groups
            .iter()
            .filter(|(u, _)| s.conns.contains_key(u))
            .flat_map(|(_, g)| g.iter().copied())
            .collect()
    }

    fn groups_changed(&self) -> &Notify {
        &self.changed
    }

    fn expire_tombstones(&self) -> bool {
        false
    }

    fn tombstone_grace(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn due_cursors(&self) -> Vec<(UserId, Seq)> {
        std::mem::take(&mut self.state().due)
    }
}

// ---------------------------------------------------------------------------------------------
// The world of one node
// ---------------------------------------------------------------------------------------------

struct World {
    core: Arc<ChatCore>,
    local: Arc<FakeLocal>,
    clock: Arc<ManualClock>,
    backends: Backends,
}

fn limits() -> Limits {
    Limits {
        max_devices: 5,
        group_backlog: 50,
        direct_backlog: 0,
    }
}

async fn world() -> World {
    world_with(limits()).await
}

async fn world_with(limits: Limits) -> World {
    world_on(memory::backends(), limits).await
}

/// A world whose store loses the acknowledgements it is told to (`FaultyStore`).
async fn world_losing_acks() -> (World, Arc<FaultyStore>) {
    let mut backends = memory::backends();
    let store = Arc::new(FaultyStore::new(backends.store.clone()));
    backends.store = store.clone();
    (world_on(backends, limits()).await, store)
}

async fn world_on(backends: Backends, limits: Limits) -> World {
    let clock = Arc::new(ManualClock::default());
    let local = Arc::new(FakeLocal::default());
    let auth = Auth::new(b"0123456789abcdef0123456789abcdef".to_vec(), TOKEN_TTL, 2);
    let core = Arc::new(ChatCore::new(
        NODE.into(),
        backends.clone(),
        auth,
        local.clone(),
        limits,
        clock.clone(),
    ));
    backends.bus.attach(NODE, core.clone()).await.unwrap();
    World {
        core,
        local,
        clock,
        backends,
    }
}

fn text(to: &str, content: &str, client_msg_id: &str) -> DirectInput {
    DirectInput {
        to: to.into(),
        content: content.into(),
        client_msg_id: client_msg_id.into(),
        ..DirectInput::default()
    }
}

impl World {
    async fn user(&self, name: &str) -> Me {
        let u = self
            .core
            .register(name, PASSWORD, &format!("{name}@example.org"))
            .await
            .unwrap();
        Me::from(&u)
    }

    /// A connection of `me` logs in here: the fake knows it with the user's groups, and
    /// presence has the session.
    async fn online(&self, me: &Me, conn: ConnId) {
        let groups = self.core.group_ids_of(me).await.unwrap();
        self.local.connect(me.id, conn, &groups);
        self.core.open_session(me, conn, "test").await.unwrap();
    }

    /// The three steps of a send, as the server runs them.
    async fn send(&self, me: &Me, conn: ConnId, input: DirectInput) -> Committed {
        let prepared = self.core.prepare_direct(me, conn, input).await.unwrap();
        self.finish(prepared).await
    }

    async fn send_group(&self, me: &Me, conn: ConnId, group: GroupId, content: &str) -> Committed {
        let prepared = self
            .core
            .prepare_group(me, conn, group, content.into(), "")
            .await
            .unwrap();
        self.finish(prepared).await
    }

    async fn finish(&self, prepared: chat_zinx::core::service::Prepared) -> Committed {
        let committed = self
            .core
            .place(prepared)
            .await
            .unwrap()
            .committed()
            .await
            .unwrap();
        if let Some(routed) = self.core.route_delivery(&committed).await {
            self.core.push_and_publish(routed).await;
        }
        committed
    }

    async fn cursor(&self, user: UserId) -> DeliveryCursor {
        self.backends.store.cursor(user).await.unwrap()
    }

    async fn tail(&self) -> Seq {
        self.backends.store.log_tail().await.unwrap()
    }

    async fn group(&self, owner: &Me, name: &str, members: &[&Me]) -> GroupId {
        let g = self.core.create_group(owner, name, "", "").await.unwrap();
        for m in members {
            self.core.join_group(m, g.id).await.unwrap();
        }
        g.id
    }
}

fn seqs(messages: &[StoredMessage]) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

fn contents(messages: &[StoredMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.content()).collect()
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_checks_the_limits_and_refuses_a_taken_name() {
    let w = world().await;
    let core = &w.core;
    let invalid = |r: Result<User, ChatError>, field: &str| match r {
        Err(ChatError::Invalid(text)) => assert!(text.contains(field), "{text}"),
        other => panic!("expected Invalid({field}), got {other:?}"),
    };
    invalid(core.register("", PASSWORD, "a@b.c").await, "username");
    invalid(
        core.register(&"x".repeat(51), PASSWORD, "a@b.c").await,
        "username",
    );
    invalid(core.register("alice", "12345", "a@b.c").await, "password");
    invalid(
        core.register("alice", &"p".repeat(129), "a@b.c").await,
        "password",
    );
    invalid(core.register("alice", PASSWORD, "a@").await, "email");
    invalid(core.register("alice", PASSWORD, "abc").await, "@");
    invalid(
        core.register("alice", PASSWORD, &format!("a@{}", "b".repeat(99)))
            .await,
        "email",
    );
    // The username is checked first.
    invalid(core.register("", "1", "").await, "username");
    assert_eq!(w.backends.store.user_by_name("alice").await.unwrap(), None);

    // Limits count characters, not bytes; the password's limit is in bytes.
    let long_name = "é".repeat(50);
    let u = core
        .register(&long_name, &"p".repeat(128), "a@b.c")
        .await
        .unwrap();
    assert_eq!(u.username, long_name);

    let alice = core
        .register("alice", PASSWORD, "alice@example.org")
        .await
        .unwrap();
    assert_eq!(alice.created_at, w.clock.now_ms());
    assert_eq!(alice.last_login, None);
    assert!(uuid::Uuid::try_parse(&alice.uuid).is_ok());
    assert!(alice.password_hash.starts_with("$argon2id$"));
    assert_ne!(alice.id, u.id);

    assert!(matches!(
        core.register("ALICE", PASSWORD, "other@example.org").await,
        Err(ChatError::UsernameTaken)
    ));
    assert!(matches!(
        core.register("alice", PASSWORD, "alice@example.org").await,
        Err(ChatError::UsernameTaken)
    ));
}

#[tokio::test]
async fn password_login_checks_the_password_and_reports_the_previous_login() {
    let w = world().await;
    let alice = w.user("alice").await;
    let registered_at = w.clock.now_ms();

    assert!(matches!(
        w.core.login_password("nobody", PASSWORD).await,
        Err(ChatError::UnknownUser)
    ));
    assert!(matches!(
        w.core.login_password("alice", "wrong-password").await,
        Err(ChatError::WrongPassword)
    ));
    assert!(matches!(
        w.core.login_password("alice", &"p".repeat(129)).await,
        Err(ChatError::WrongPassword)
    ));

    w.clock.advance(Duration::from_secs(10));
    let first = w.core.login_password("alice", PASSWORD).await.unwrap();
    assert_eq!(first.user.id, alice.id);
    // At the first login, the previous login is the registration.
    assert_eq!(first.previous_login, registered_at);
    let first_at = w.clock.now_ms();
    assert_eq!(first_at, registered_at + 10_000);

    w.clock.advance(Duration::from_secs(60));
    // Usernames are found case-insensitively.
    let second = w.core.login_password("ALICE", PASSWORD).await.unwrap();
    assert_eq!(second.previous_login, first_at);
    assert_eq!(
        w.backends
            .store
            .user_by_id(alice.id)
            .await
            .unwrap()
            .unwrap()
            .last_login,
        Some(first_at + 60_000)
    );
}

#[tokio::test]
async fn token_login_works_until_the_token_expires_on_the_clock() {
    let w = world().await;
    let alice = w.user("alice").await;
    let token = w
        .core
        .login_password("alice", PASSWORD)
        .await
        .unwrap()
        .token;

    w.clock.advance(TOKEN_TTL - Duration::from_secs(1));
    let again = w.core.login_token(&token).await.unwrap();
    assert_eq!(again.user.id, alice.id);
    let fresh = again.token;

    w.clock.advance(Duration::from_secs(1));
    match w.core.login_token(&token).await {
        Err(ChatError::BadToken(why)) => assert!(why.contains("expired"), "{why}"),
        other => panic!("expected an expired token, got {other:?}"),
    }
    // The token issued a second before is valid for its own lifetime.
    assert_eq!(w.core.login_token(&fresh).await.unwrap().user.id, alice.id);

    assert!(matches!(
        w.core.login_token("not.a.token").await,
        Err(ChatError::BadToken(_))
    ));
}

#[tokio::test]
async fn a_token_for_a_user_with_another_uuid_is_refused() {
    // Same secret, same numeric id, different account (another cluster's store).
    let a = world().await;
    let b = world().await;
    a.user("alice").await;
    b.user("alice").await;
    let token = b
        .core
        .login_password("alice", PASSWORD)
        .await
        .unwrap()
        .token;
    assert!(matches!(
        a.core.login_token(&token).await,
        Err(ChatError::UnknownUser)
    ));
}

// ---------------------------------------------------------------------------------------------
// Sessions and the device limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_device_limit_kicks_the_oldest_sessions() {
    let w = world_with(Limits {
        max_devices: 2,
        ..limits()
    })
    .await;
    let alice = w.user("alice").await;
    w.online(&alice, 1).await;
    w.clock.advance(Duration::from_secs(1));
    w.online(&alice, 2).await;
    assert!(w.local.kicks().is_empty());

    w.clock.advance(Duration::from_secs(1));
    w.online(&alice, 3).await;
    let kicks = w.local.kicks();
    assert_eq!(kicks.len(), 1, "{kicks:?}");
    assert_eq!((kicks[0].0, kicks[0].1), (alice.id, 1));
    assert!(kicks[0].2.contains("more than 2 devices"), "{}", kicks[0].2);

    // The kicked connection ends; then the limit is lowered while running.
    w.core
        .close_session(&alice, 1, DeliveryOutcome::default())
        .await;
    w.core.set_limits(Limits {
        max_devices: 1,
        ..limits()
    });
    w.clock.advance(Duration::from_secs(1));
    w.online(&alice, 4).await;
    let kicked: Vec<ConnId> = w.local.kicks()[1..].iter().map(|k| k.1).collect();
    assert_eq!(kicked, vec![2, 3]);
}

#[tokio::test]
async fn the_oldest_session_is_the_oldest_on_the_clock_not_the_first_listed() {
    let w = world_with(Limits {
        max_devices: 2,
        ..limits()
    })
    .await;
    let alice = w.user("alice").await;
    w.online(&alice, 1).await;
    // Listed after conn 1, but opened a minute before it on another node.
    w.backends
        .presence
        .register(SessionInfo {
            user_id: alice.id,
            node_id: OTHER_NODE.into(),
            conn_id: 1,
            device: "phone".into(),
            since: w.clock.now_ms() - 60_000,
        })
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(1));
    w.online(&alice, 2).await;
    // The other node's session is the one to close (asked over the bus, which in process
    // cannot reach it); this node's connections stay.
    assert_eq!(w.local.kicks(), vec![]);
    w.clock.advance(Duration::from_secs(1));
    w.online(&alice, 3).await;
    // Now four sessions: the other node's and conn 1 are the two oldest.
    assert_eq!(
        w.local.kicks().iter().map(|k| k.1).collect::<Vec<_>>(),
        vec![1]
    );
}

#[tokio::test]
async fn closing_a_session_saves_the_cursor_and_leaves_presence() {
    let w = world().await;
    let alice = w.user("alice").await;
    w.online(&alice, 1).await;
    w.online(&alice, 2).await;
    w.core
        .close_session(
            &alice,
            1,
            DeliveryOutcome {
                written_upto: 7,
                unwritten_from: Some(5),
            },
        )
        .await;
    assert_eq!(
        w.cursor(alice.id).await,
        DeliveryCursor {
            delivered: 7,
            undelivered_from: Some(5)
        }
    );
    let sessions = w.backends.presence.sessions(&[alice.id]).await.unwrap();
    let conns: Vec<ConnId> = sessions[&alice.id].iter().map(|s| s.conn_id).collect();
    assert_eq!(conns, vec![2]);
}

// ---------------------------------------------------------------------------------------------
// Direct messages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_direct_message_is_stored_then_pushed_to_the_recipient_and_the_senders_other_devices() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    w.online(&alice, 1).await;
    w.online(&alice, 2).await;
    w.online(&bob, 3).await;
    w.online(&carol, 4).await;

    let committed = w.send(&alice, 1, text("bob", "hi bob", "")).await;
    assert!(!committed.appended.duplicate);
    let stored = committed.appended.message.clone();
    assert_eq!(stored.conv, ConvId::direct(alice.id, bob.id));
    assert_eq!(stored.sender_id, alice.id);
    assert_eq!(stored.content(), "hi bob");
    // Stored in the log: what was pushed is what history returns.
    let page = w
        .backends
        .store
        .history(stored.conv, None, 10)
        .await
        .unwrap();
    assert_eq!(page.messages, vec![stored.clone()]);
    // Pushed after the append: to bob's connection and alice's other one, not to the
    // sending connection, not to carol.
    let mut pushed: Vec<(UserId, ConnId)> =
        w.local.pushes().iter().map(|p| (p.user, p.conn)).collect();
    pushed.sort_unstable();
    assert_eq!(pushed, vec![(alice.id, 2), (bob.id, 3)]);
    assert!(w.local.pushes().iter().all(|p| p.message == stored));
    // Everyone that should have had it got it: nothing is marked.
    assert_eq!(w.cursor(bob.id).await.undelivered_from, None);
    assert_eq!(w.core.relations(&bob).await.unwrap(), vec![alice.id]);
}

#[tokio::test]
async fn the_recipient_is_found_by_uuid_then_number_then_name() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    // A new name cannot be another user's number...
    assert!(matches!(
        w.core.register(&alice.id.to_string(), PASSWORD, "x@example.org").await,
        Err(ChatError::Invalid(why)) if why.contains("all digits")
    ));
    // ...but one stored before that rule still exists: the store takes it as it is.
    let legacy = |name: String| NewUser {
        uuid: uuid::Uuid::new_v4().to_string(),
        username: name,
        email: "old@example.org".into(),
        password_hash: "unused".into(),
        created_at: 0,
    };
    let named_like_an_id = w
        .backends
        .store
        .create_user(legacy(alice.id.to_string()))
        .await
        .unwrap();
    let named_like_no_id = w
        .backends
        .store
        .create_user(legacy("4000000".into()))
        .await
        .unwrap();

    let to = |who: &str| text(who, "x", "");
    let by_uuid = w.send(&alice, 1, to(&bob.uuid.to_uppercase())).await;
    assert_eq!(
        by_uuid.appended.message.conv,
        ConvId::direct(alice.id, bob.id)
    );
    let by_number = w.send(&alice, 1, to(&bob.id.to_string())).await;
    assert_eq!(
        by_number.appended.message.conv,
        ConvId::direct(alice.id, bob.id)
    );
    // The number wins over the name: a name cannot shadow another user's id.
    let by_number = w.send(&bob, 1, to(&alice.id.to_string())).await;
    assert_eq!(
        by_number.appended.message.conv,
        ConvId::direct(bob.id, alice.id)
    );
    assert_ne!(named_like_an_id.id, alice.id);
    // An all-digit name that is nobody's id is still found by name.
    let by_name = w.send(&bob, 1, to("4000000")).await;
    assert_eq!(
        by_name.appended.message.conv,
        ConvId::direct(bob.id, named_like_no_id.id)
    );
    // The recipient is echoed as written.
    match &by_uuid.appended.message.body {
        MessageBody::Direct {
            recipient_id,
            to_user_id,
            ..
        } => {
            assert_eq!(*recipient_id, bob.id);
            assert_eq!(*to_user_id, bob.uuid.to_uppercase());
        }
        other => panic!("{other:?}"),
    }

    let tail = w.tail().await;
    assert!(matches!(
        w.core.prepare_direct(&alice, 1, to("nobody")).await,
        Err(ChatError::NoSuchTarget(who)) if who == "nobody"
    ));
    assert!(matches!(
        w.core.prepare_direct(&alice, 1, to("")).await,
        Err(ChatError::Invalid(_))
    ));
    assert!(matches!(
        w.core
            .prepare_direct(&alice, 1, text("bob", "x", &"c".repeat(65)))
            .await,
        Err(ChatError::Invalid(why)) if why.contains("client_msg_id")
    ));
    // 64 characters is the limit.
    w.send(&alice, 1, text("bob", "x", &"é".repeat(64))).await;
    assert_eq!(w.tail().await, tail + 1);
}

#[tokio::test]
async fn a_message_to_oneself_reaches_every_own_connection_including_the_sender() {
    let w = world().await;
    let alice = w.user("alice").await;
    w.online(&alice, 1).await;
    w.online(&alice, 2).await;
    let c = w.send(&alice, 1, text("alice", "note", "")).await;
    let seq = c.appended.message.seq;
    assert_eq!(w.local.pushes_to(alice.id), vec![(1, seq), (2, seq)]);
}

#[tokio::test]
async fn place_stamps_the_message_with_the_time_of_the_append() {
    let w = world().await;
    let alice = w.user("alice").await;
    w.user("bob").await;
    let prepared = w
        .core
        .prepare_direct(&alice, 1, text("bob", "x", ""))
        .await
        .unwrap();
    w.clock.advance(Duration::from_millis(2_500));
    let committed = w
        .core
        .place(prepared)
        .await
        .unwrap()
        .committed()
        .await
        .unwrap();
    assert_eq!(committed.appended.message.timestamp, w.clock.now_ms());
}

#[tokio::test]
async fn a_missed_local_push_is_marked_and_comes_back_in_the_next_login_backlog() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    w.online(&alice, 1).await;
    w.online(&bob, 2).await;

    let first = w.send(&alice, 1, text("bob", "one", "")).await;
    let s1 = first.appended.message.seq;
    w.local.fail_pushes_to(bob.id);
    let second = w.send(&alice, 1, text("bob", "two", "")).await;
    let s2 = second.appended.message.seq;
    assert_eq!(w.local.pushes_to(bob.id), vec![(2, s1)]);
    assert_eq!(w.cursor(bob.id).await.undelivered_from, Some(s2));

    // Bob's connection wrote the first message and a later one, then closed: without the mark
    // the cursor would say everything up to the last one was delivered.
    w.local.state().failing.clear();
    let third = w.send(&alice, 1, text("bob", "three", "")).await;
    let s3 = third.appended.message.seq;
    w.core
        .close_session(
            &bob,
            2,
            DeliveryOutcome {
                written_upto: s3,
                unwritten_from: None,
            },
        )
        .await;
    assert_eq!(
        w.cursor(bob.id).await,
        DeliveryCursor {
            delivered: s3,
            undelivered_from: Some(s2)
        }
    );

    let backlog = w.core.backlog(&bob).await.unwrap();
    assert_eq!(contents(&backlog.messages), vec!["two", "three"]);
    assert_eq!(backlog.seen_mark, Some(s2));
    assert_eq!(backlog.upto, s3);
    w.core.settle_backlog(&bob, &backlog).await.unwrap();
    assert_eq!(
        w.cursor(bob.id).await,
        DeliveryCursor {
            delivered: s3,
            undelivered_from: None
        }
    );
    assert!(w.core.backlog(&bob).await.unwrap().messages.is_empty());
}

#[tokio::test]
async fn a_push_to_a_user_whose_connections_just_closed_is_marked() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    w.online(&bob, 2).await;
    w.local.disconnect_all(bob.id);
    let c = w.send(&alice, 1, text("bob", "late", "")).await;
    assert_eq!(
        w.cursor(bob.id).await.undelivered_from,
        Some(c.appended.message.seq)
    );
    // A user that was never here is nobody's business on this node.
    w.send(&alice, 1, text("carol", "offline", "")).await;
    assert_eq!(w.cursor(carol.id).await.undelivered_from, None);
    assert!(w.local.pushes().is_empty());
}

#[tokio::test]
async fn the_login_backlog_leaves_out_ones_own_messages_and_caps_groups() {
    let w = world_with(Limits {
        group_backlog: 2,
        ..limits()
    })
    .await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let g = w.group(&alice, "team", &[&bob]).await;
    w.send(&alice, 1, text("bob", "a1", "")).await;
    w.send(&bob, 2, text("alice", "b1", "")).await;
    for i in 0..4 {
        w.send_group(&alice, 1, g, &format!("g{i}")).await;
    }
    w.send(&alice, 1, text("bob", "a2", "")).await;
    let backlog = w.core.backlog(&bob).await.unwrap();
    // Oldest first, without bob's own "b1", only the newest two group messages.
    assert_eq!(contents(&backlog.messages), vec!["a1", "g2", "g3", "a2"]);
    let mut sorted = seqs(&backlog.messages);
    sorted.sort_unstable();
    assert_eq!(sorted, seqs(&backlog.messages));

    // A cap on direct messages per conversation keeps the newest.
    w.core.set_limits(Limits {
        group_backlog: 0,
        direct_backlog: 1,
        ..limits()
    });
    let backlog = w.core.backlog(&bob).await.unwrap();
    assert_eq!(contents(&backlog.messages), vec!["a2"]);
}

/// The backlog is read in pages of at most `PAGE_MESSAGES`, merged from every conversation in
/// log order, each conversation read a few messages at a time; the pages together are exactly
/// the backlog (direct messages all, groups capped), whatever the conversations' interleaving.
#[tokio::test]
async fn the_backlog_comes_in_bounded_pages_merged_in_log_order() {
    use chat_zinx::core::service::PAGE_MESSAGES;
    let w = world_with(Limits {
        group_backlog: 30,
        ..limits()
    })
    .await;
    let bob = w.user("bob").await;
    let mut senders = Vec::new();
    for name in ["alice", "carol", "dave"] {
        senders.push(w.user(name).await);
    }
    let g = w.group(&senders[0], "team", &[&bob]).await;
    let mut expected = Vec::new();
    let mut group_sent = Vec::new();
    for i in 0..150 {
        let from = &senders[i % 3];
        if i % 5 == 4 {
            let c = format!("g{i}");
            w.send_group(&senders[0], 1, g, &c).await;
            group_sent.push(c);
        } else {
            let c = format!("{}{i}", from.username);
            w.send(from, 1, text("bob", &c, "")).await;
            expected.push(c);
        }
    }
    // The newest 30 group messages, in their place in the log.
    let kept: std::collections::HashSet<String> = group_sent[group_sent.len() - 30..]
        .iter()
        .cloned()
        .collect();
    let mut in_log_order = Vec::new();
    for i in 0..150 {
        let c = if i % 5 == 4 {
            format!("g{i}")
        } else {
            format!("{}{i}", senders[i % 3].username)
        };
        if i % 5 != 4 || kept.contains(&c) {
            in_log_order.push(c);
        }
    }
    assert_eq!(expected.len() + 30, in_log_order.len());

    let mut reader = w.core.open_backlog(&bob).await.unwrap();
    let mut pages = Vec::new();
    loop {
        let page = w.core.next_backlog_page(&mut reader).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= PAGE_MESSAGES, "a page of {}", page.len());
        pages.push(page);
    }
    assert!(pages.len() >= 2, "{} pages", pages.len());
    let all: Vec<StoredMessage> = pages.into_iter().flatten().collect();
    assert_eq!(contents(&all), in_log_order);
    // The same as the whole backlog.
    assert_eq!(
        contents(&w.core.backlog(&bob).await.unwrap().messages),
        in_log_order
    );
}

#[tokio::test]
async fn each_message_reaches_a_logging_in_connection_once_through_backlog_and_live_pushes() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    w.online(&alice, 1).await;

    // Before bob logs in: one message delivered to nobody, one stored whose push is late (a
    // send between its append and its delivery, or a bus event on its way).
    w.send(&alice, 1, text("bob", "offline", "")).await;
    let prepared = w
        .core
        .prepare_direct(&alice, 1, text("bob", "late push", ""))
        .await
        .unwrap();
    let late = w
        .core
        .place(prepared)
        .await
        .unwrap()
        .committed()
        .await
        .unwrap();

    // Bob's connection joins this node's connections (live pushes start), then a message is
    // stored and pushed before the backlog is read.
    w.online(&bob, 2).await;
    w.send(&alice, 1, text("bob", "pushed during the read", ""))
        .await;
    let backlog = w.core.login_backlog(&bob, 2).await.unwrap();
    // The late push arrives after the backlog was read, which has that message; then a new one.
    let routed = w.core.route_delivery(&late).await.unwrap();
    w.core.push_and_publish(routed).await;
    w.send(&alice, 1, text("bob", "after the login", "")).await;

    let live: Vec<StoredMessage> = w
        .local
        .pushes()
        .into_iter()
        .filter(|p| p.conn == 2)
        .map(|p| p.message)
        .collect();
    assert_eq!(contents(&backlog.messages), vec!["offline", "late push"]);
    assert_eq!(
        contents(&live),
        vec!["pushed during the read", "after the login"]
    );
    // Bob's connection got it, so nobody is marked.
    assert_eq!(w.cursor(bob.id).await.undelivered_from, None);

    // A second connection of bob logging in later has its own backlog and filter: the first
    // connection's filter drops nothing for it.
    w.online(&bob, 3).await;
    let again = w.core.login_backlog(&bob, 3).await.unwrap();
    assert_eq!(
        contents(&again.messages),
        vec![
            "offline",
            "late push",
            "pushed during the read",
            "after the login"
        ]
    );
    w.send(&alice, 1, text("bob", "to both", "")).await;
    let to_both: Vec<ConnId> = w
        .local
        .pushes()
        .into_iter()
        .filter(|p| p.message.content() == "to both")
        .map(|p| p.conn)
        .collect();
    assert_eq!(to_both, vec![2, 3]);
}

#[tokio::test]
async fn a_resend_of_a_delivered_send_is_a_duplicate_and_not_pushed_again() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    w.online(&alice, 1).await;
    w.online(&bob, 2).await;

    let first = w.send(&alice, 1, text("bob", "once", "c-1")).await;
    assert!(!first.appended.duplicate);
    let tail = w.tail().await;
    w.clock.advance(Duration::from_secs(3));
    let again = w.send(&alice, 1, text("bob", "once", "c-1")).await;
    assert!(again.appended.duplicate);
    assert_eq!(again.appended.message, first.appended.message);
    assert_eq!(w.tail().await, tail);
    assert!(w.core.route_delivery(&again).await.is_none());
    assert_eq!(
        w.local.pushes_to(bob.id),
        vec![(2, first.appended.message.seq)]
    );

    // The key is the sender's: bob may use the same id.
    let bobs = w.send(&bob, 2, text("alice", "mine", "c-1")).await;
    assert!(!bobs.appended.duplicate);
    assert_eq!(w.tail().await, tail + 1);
    // Without an id, every send is new.
    let a = w.send(&alice, 1, text("bob", "same", "")).await;
    let b = w.send(&alice, 1, text("bob", "same", "")).await;
    assert_ne!(a.appended.message.seq, b.appended.message.seq);
}

#[tokio::test]
async fn a_retry_of_a_send_stored_but_answered_with_an_error_is_pushed_once() {
    let (w, store) = world_losing_acks().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    w.online(&alice, 1).await;
    w.online(&alice, 3).await;
    w.online(&bob, 2).await;

    // The first attempt is stored, but its sender is told to try again: nothing is pushed.
    store.lose_next_ack();
    let prepared = w
        .core
        .prepare_direct(&alice, 1, text("bob", "hi", "c-1"))
        .await
        .unwrap();
    let first = w.core.place(prepared).await.unwrap().committed().await;
    assert!(matches!(first, Err(ChatError::Unavailable(_))), "{first:?}");
    let seq = w.tail().await;
    assert!(w.local.pushes().is_empty());

    // The retry (same client_msg_id) is a duplicate of the stored message, and its delivery is
    // the message's first: the recipient and the sender's other device get it live.
    let retry = w.send(&alice, 1, text("bob", "hi", "c-1")).await;
    assert!(retry.appended.duplicate);
    assert_eq!(retry.appended.message.seq, seq);
    assert_eq!(w.tail().await, seq);
    assert_eq!(w.local.pushes_to(bob.id), vec![(2, seq)]);
    assert_eq!(w.local.pushes_to(alice.id), vec![(3, seq)]);

    // Once this node delivered it, a further retry is not pushed again.
    let again = w.send(&alice, 1, text("bob", "hi", "c-1")).await;
    assert!(again.appended.duplicate);
    assert_eq!(w.local.pushes_to(bob.id), vec![(2, seq)]);
    assert_eq!(w.local.pushes_to(alice.id), vec![(3, seq)]);
}

#[tokio::test]
async fn a_retry_reaches_those_its_first_attempt_was_for() {
    let (w, store) = world_losing_acks().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    w.online(&bob, 2).await;
    w.online(&carol, 4).await;
    let g = w.group(&alice, "team", &[&carol]).await;

    store.lose_next_ack();
    let prepared = w
        .core
        .prepare_direct(&alice, 1, text("bob", "for bob", "c-1"))
        .await
        .unwrap();
    assert!(w
        .core
        .place(prepared)
        .await
        .unwrap()
        .committed()
        .await
        .is_err());
    let seq = w.tail().await;
    // A client that reuses the key for another message is refused (the stored message is not
    // that one), and nobody gets a push from it.
    let reused = w
        .core
        .prepare_direct(&alice, 1, text("carol", "for carol", "c-1"))
        .await
        .unwrap();
    let refused = w.core.place(reused).await.unwrap().committed().await;
    assert!(
        matches!(&refused, Err(ChatError::ClientMsgIdReused(id)) if id == "c-1"),
        "{refused:?}"
    );
    assert!(w.local.pushes_to(bob.id).is_empty());
    assert!(w.local.pushes_to(carol.id).is_empty());
    // The real retry goes to the stored message's recipient.
    let retry = w.send(&alice, 1, text("bob", "for bob", "c-1")).await;
    assert!(retry.appended.duplicate);
    assert_eq!(retry.appended.message.content(), "for bob");
    assert_eq!(w.local.pushes_to(bob.id), vec![(2, seq)]);
    assert!(w.local.pushes_to(carol.id).is_empty());

    // The same for a group message: the retry is pushed to the group's members.
    store.lose_next_ack();
    let prepared = w
        .core
        .prepare_group(&alice, 1, g, "to the team".into(), "c-2")
        .await
        .unwrap();
    assert!(w
        .core
        .place(prepared)
        .await
        .unwrap()
        .committed()
        .await
        .is_err());
    let group_seq = w.tail().await;
    assert!(w.local.pushes_to(carol.id).is_empty());
    let prepared = w
        .core
        .prepare_group(&alice, 1, g, "to the team".into(), "c-2")
        .await
        .unwrap();
    let retry = w.finish(prepared).await;
    assert!(retry.appended.duplicate);
    assert_eq!(w.local.pushes_to(carol.id), vec![(4, group_seq)]);
}

#[tokio::test]
async fn a_failed_hand_over_to_another_node_marks_the_recipient() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    // Presence places bob on another node, which the in-process bus cannot reach.
    w.backends
        .presence
        .register(SessionInfo {
            user_id: bob.id,
            node_id: OTHER_NODE.into(),
            conn_id: 9,
            device: "phone".into(),
            since: w.clock.now_ms(),
        })
        .await
        .unwrap();
    let c = w.send(&alice, 1, text("bob", "far", "")).await;
    assert_eq!(
        w.cursor(bob.id).await.undelivered_from,
        Some(c.appended.message.seq)
    );
    // Alice has no session elsewhere: nothing is marked for her.
    assert_eq!(w.cursor(alice.id).await.undelivered_from, None);
}

#[tokio::test]
async fn direct_history_is_the_last_messages_oldest_first() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    for i in 0..5 {
        w.send(&alice, 1, text("bob", &format!("m{i}"), "")).await;
        w.send(&alice, 1, text("carol", "other", "")).await;
    }
    let h = w.core.history(&alice, &bob.uuid, "", 3).await.unwrap();
    assert_eq!(contents(&h), vec!["m2", "m3", "m4"]);
    // By name when the uuid is not a uuid; from bob's side the same conversation.
    let h = w
        .core
        .history(&bob, "not-a-uuid", "alice", 10)
        .await
        .unwrap();
    assert_eq!(contents(&h), vec!["m0", "m1", "m2", "m3", "m4"]);
    assert!(w
        .core
        .history(&carol, "", "bob", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        w.core.history(&alice, "", "nobody", 10).await,
        Err(ChatError::NoSuchTarget(who)) if who == "nobody"
    ));
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_join_and_leave_a_group() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;

    assert!(matches!(
        w.core.create_group(&alice, "x", "", "").await,
        Err(ChatError::Invalid(why)) if why.contains("group name")
    ));
    assert!(matches!(
        w.core.create_group(&alice, "ok", &"d".repeat(501), "").await,
        Err(ChatError::Invalid(why)) if why.contains("description")
    ));
    let g = w
        .core
        .create_group(&alice, "Team", "desc", "")
        .await
        .unwrap();
    assert_eq!(g.owner_id, alice.id);
    assert_eq!(g.created_at, w.clock.now_ms());
    assert_eq!(w.local.memberships(), vec![(alice.id, g.id, true)]);
    assert!(matches!(
        w.core.create_group(&bob, "team", "", "").await,
        Err(ChatError::GroupNameTaken)
    ));

    assert!(matches!(
        w.core.join_group(&bob, g.id + 100).await,
        Err(ChatError::GroupNotFound)
    ));
    w.clock.advance(Duration::from_secs(7));
    w.core.join_group(&bob, g.id).await.unwrap();
    assert!(matches!(
        w.core.join_group(&bob, g.id).await,
        Err(ChatError::AlreadyMember)
    ));
    let members = w.core.members(&alice, g.id).await.unwrap();
    let roles: Vec<(UserId, Role, UnixMs)> = members
        .iter()
        .map(|(m, _, _)| (m.user_id, m.role, m.joined_at))
        .collect();
    assert!(roles.contains(&(bob.id, Role::Member, w.clock.now_ms())));
    assert!(roles.iter().any(|r| r.0 == alice.id && r.1 == Role::Owner));
    assert_eq!(
        w.core
            .my_groups(&bob)
            .await
            .unwrap()
            .iter()
            .map(|g| g.id)
            .collect::<Vec<_>>(),
        vec![g.id]
    );

    assert!(matches!(
        w.core.leave_group(&alice, g.id).await,
        Err(ChatError::OwnerCannotLeave)
    ));
    assert!(matches!(
        w.core.leave_group(&bob, g.id + 100).await,
        Err(ChatError::GroupNotFound)
    ));
    w.core.leave_group(&bob, g.id).await.unwrap();
    assert_eq!(w.local.memberships().last(), Some(&(bob.id, g.id, false)));
    assert!(matches!(
        w.core.leave_group(&bob, g.id).await,
        Err(ChatError::NotMember)
    ));
    assert!(matches!(
        w.core.members(&bob, g.id).await,
        Err(ChatError::NotMember)
    ));
    assert!(w.core.my_groups(&bob).await.unwrap().is_empty());
}

#[tokio::test]
async fn roles_and_updates_follow_the_originals_order_of_checks() {
    let w = world().await;
    let owner = w.user("owner").await;
    let admin = w.user("admin").await;
    let member = w.user("member").await;
    let outsider = w.user("outsider").await;
    let g = w.group(&owner, "team", &[&admin, &member]).await;

    // Only the owner changes roles, checked before the target and the role.
    assert!(matches!(
        w.core.set_role(&admin, g, outsider.id, "boss").await,
        Err(ChatError::NotOwnerRoles)
    ));
    assert!(matches!(
        w.core.set_role(&owner, g + 100, member.id, "admin").await,
        Err(ChatError::GroupNotFound)
    ));
    // Then the target's membership, before the role's validity.
    assert!(matches!(
        w.core.set_role(&owner, g, outsider.id, "boss").await,
        Err(ChatError::TargetNotMember)
    ));
    assert!(matches!(
        w.core.set_role(&owner, g, owner.id, "boss").await,
        Err(ChatError::CannotChangeOwnerRole)
    ));
    assert!(matches!(
        w.core.set_role(&owner, g, member.id, "owner").await,
        Err(ChatError::InvalidRole)
    ));
    w.core.set_role(&owner, g, admin.id, "admin").await.unwrap();
    let role_of = |id: UserId, ms: &[(Member, User, bool)]| {
        ms.iter().find(|(m, _, _)| m.user_id == id).unwrap().0.role
    };
    let ms = w.core.members(&member, g).await.unwrap();
    assert_eq!(role_of(admin.id, &ms), Role::Admin);
    assert_eq!(role_of(member.id, &ms), Role::Member);

    // Updates: owner or admin, then something to change, then the fields' limits.
    let rename = |name: &str| GroupPatch {
        name: Some(name.into()),
        ..GroupPatch::default()
    };
    assert!(matches!(
        w.core.update_group(&member, g, GroupPatch::default()).await,
        Err(ChatError::NotOwnerOrAdminUpdate)
    ));
    assert!(matches!(
        w.core.update_group(&outsider, g, rename("new")).await,
        Err(ChatError::NotOwnerOrAdminUpdate)
    ));
    assert!(matches!(
        w.core.update_group(&admin, g, GroupPatch::default()).await,
        Err(ChatError::NoUpdates)
    ));
    assert!(matches!(
        w.core.update_group(&admin, g, rename("x")).await,
        Err(ChatError::Invalid(_))
    ));
    let updated = w
        .core
        .update_group(&admin, g, rename("renamed"))
        .await
        .unwrap();
    assert_eq!(updated.name, "renamed");
    assert_eq!(
        w.core.group_details(&member, g).await.unwrap().name,
        "renamed"
    );
    assert!(matches!(
        w.core.group_details(&outsider, g).await,
        Err(ChatError::NotMember)
    ));

    // Back to member: the former admin can no longer update.
    w.core
        .set_role(&owner, g, admin.id, "member")
        .await
        .unwrap();
    assert!(matches!(
        w.core.update_group(&admin, g, rename("again")).await,
        Err(ChatError::NotOwnerOrAdminUpdate)
    ));
}

#[tokio::test]
async fn remove_member_follows_the_originals_order_of_checks() {
    let w = world().await;
    let owner = w.user("owner").await;
    let admin = w.user("admin").await;
    let admin2 = w.user("admin2").await;
    let member = w.user("member").await;
    let member2 = w.user("member2").await;
    let outsider = w.user("outsider").await;
    let g = w
        .group(&owner, "team", &[&admin, &admin2, &member, &member2])
        .await;
    w.core.set_role(&owner, g, admin.id, "admin").await.unwrap();
    w.core
        .set_role(&owner, g, admin2.id, "admin")
        .await
        .unwrap();

    let remove = |me: &Me, target: UserId| {
        let (core, me) = (w.core.clone(), me.clone());
        async move { core.remove_member(&me, g, target).await }
    };
    assert!(matches!(
        w.core.remove_member(&owner, g + 100, member.id).await,
        Err(ChatError::GroupNotFound)
    ));
    // Not the owner: the remover must be an admin, before anything about the target.
    assert!(matches!(
        remove(&outsider, outsider.id).await,
        Err(ChatError::NotOwnerOrAdminRemove)
    ));
    assert!(matches!(
        remove(&member, member2.id).await,
        Err(ChatError::NotOwnerOrAdminRemove)
    ));
    // An admin: the target must be a plain member.
    assert!(matches!(
        remove(&admin, outsider.id).await,
        Err(ChatError::TargetNotMember)
    ));
    assert!(matches!(
        remove(&admin, admin2.id).await,
        Err(ChatError::AdminCannotRemoveAdmin)
    ));
    assert!(matches!(
        remove(&admin, owner.id).await,
        Err(ChatError::AdminCannotRemoveAdmin)
    ));
    // An admin removing itself is caught by the target's role first.
    assert!(matches!(
        remove(&admin, admin.id).await,
        Err(ChatError::AdminCannotRemoveAdmin)
    ));
    // The owner: self, then owner, then the membership (worded differently).
    assert!(matches!(
        remove(&owner, owner.id).await,
        Err(ChatError::CannotRemoveSelf)
    ));
    assert!(matches!(
        remove(&owner, outsider.id).await,
        Err(ChatError::MemberNotFound)
    ));
    assert!(w.local.memberships().iter().all(|m| m.2));

    remove(&admin, member.id).await.unwrap();
    remove(&owner, admin2.id).await.unwrap();
    let left: Vec<(UserId, GroupId, bool)> =
        w.local.memberships().into_iter().filter(|m| !m.2).collect();
    assert_eq!(left, vec![(member.id, g, false), (admin2.id, g, false)]);
    let mut ids: Vec<UserId> = w
        .core
        .members(&owner, g)
        .await
        .unwrap()
        .iter()
        .map(|(m, _, _)| m.user_id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![owner.id, admin.id, member2.id]);
}

#[tokio::test]
async fn a_group_message_reaches_the_members_only() {
    let w = world().await;
    let owner = w.user("owner").await;
    let member = w.user("member").await;
    let leaver = w.user("leaver").await;
    let outsider = w.user("outsider").await;
    let g = w.group(&owner, "team", &[&member, &leaver]).await;
    w.online(&owner, 1).await;
    w.online(&owner, 2).await;
    w.online(&member, 3).await;
    w.online(&leaver, 4).await;
    w.online(&outsider, 5).await;

    let first = w.send_group(&owner, 1, g, "hello").await;
    let s1 = first.appended.message.seq;
    assert_eq!(first.appended.message.conv, ConvId::Group(g));
    assert_eq!(w.local.pushes_to(owner.id), vec![(2, s1)]);
    assert_eq!(w.local.pushes_to(member.id), vec![(3, s1)]);
    assert_eq!(w.local.pushes_to(leaver.id), vec![(4, s1)]);
    assert!(w.local.pushes_to(outsider.id).is_empty());

    assert!(matches!(
        w.core
            .prepare_group(&outsider, 5, g, "let me in".into(), "")
            .await,
        Err(ChatError::NotMember)
    ));
    w.core.leave_group(&leaver, g).await.unwrap();
    assert!(matches!(
        w.core.prepare_group(&leaver, 4, g, "bye".into(), "").await,
        Err(ChatError::NotMember)
    ));
    let second = w.send_group(&member, 3, g, "after").await;
    let s2 = second.appended.message.seq;
    assert_eq!(w.local.pushes_to(owner.id), vec![(2, s1), (1, s2), (2, s2)]);
    assert_eq!(w.local.pushes_to(leaver.id), vec![(4, s1)]);
    assert_eq!(w.local.pushes_to(member.id), vec![(3, s1)]);

    // A member whose pushes fail is marked.
    w.local.fail_pushes_to(member.id);
    let third = w.send_group(&owner, 1, g, "lost").await;
    assert_eq!(
        w.cursor(member.id).await.undelivered_from,
        Some(third.appended.message.seq)
    );
}

#[tokio::test]
async fn a_membership_check_is_trusted_for_the_recheck_interval_on_the_clock() {
    let w = world().await;
    let owner = w.user("owner").await;
    let member = w.user("member").await;
    let g = w.group(&owner, "team", &[&member]).await;
    w.online(&member, 3).await;
    w.send_group(&member, 3, g, "checked").await;

    // Removed on another node, and the bus event never came: this node's index still has the
    // member, and its check is recent.
    w.backends.store.remove_member(g, member.id).await.unwrap();
    w.clock.advance(Duration::from_millis(4_999));
    w.send_group(&member, 3, g, "still trusted").await;
    w.clock.advance(Duration::from_millis(1));
    assert!(matches!(
        w.core.prepare_group(&member, 3, g, "now".into(), "").await,
        Err(ChatError::NotMember)
    ));
}

#[tokio::test]
async fn group_history_pages_backwards_without_gaps() {
    let w = world().await;
    let owner = w.user("owner").await;
    let bob = w.user("bob").await;
    let outsider = w.user("outsider").await;
    let g = w.group(&owner, "team", &[&bob]).await;
    let other = w.group(&owner, "other", &[]).await;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(
            w.send_group(&owner, 1, g, &format!("m{i}"))
                .await
                .appended
                .message
                .seq,
        );
        w.send_group(&owner, 1, other, "noise").await;
        w.send(&owner, 1, text("bob", "direct", "")).await;
    }

    let mut seen = Vec::new();
    let mut last_id = 0;
    let mut pages = 0;
    loop {
        let page = w.core.group_history(&bob, g, last_id, 3).await.unwrap();
        pages += 1;
        assert!(page.messages.len() <= 3);
        seen.extend(seqs(&page.messages));
        if !page.has_more {
            break;
        }
        last_id = page.messages.last().unwrap().seq;
    }
    assert_eq!(pages, 3);
    sent.reverse();
    assert_eq!(seen, sent);
    assert!(matches!(
        w.core.group_history(&outsider, g, 0, 3).await,
        Err(ChatError::NotMember)
    ));
}

// ---------------------------------------------------------------------------------------------
// Sync
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sync_pages_through_every_conversation_in_log_order() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    let g = w.group(&alice, "team", &[&bob]).await;
    let elsewhere = w.group(&carol, "elsewhere", &[&alice]).await;
    let mut bobs = Vec::new();
    for i in 0..4 {
        bobs.push(w.send(&alice, 1, text("bob", &format!("d{i}"), "")).await);
        w.send(&alice, 1, text("carol", "not bob's", "")).await;
        w.send_group(&carol, 1, elsewhere, "not bob's").await;
        bobs.push(w.send_group(&alice, 1, g, &format!("g{i}")).await);
    }
    let bobs: Vec<Seq> = bobs.iter().map(|c| c.appended.message.seq).collect();
    let tail = w.tail().await;

    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let page = w.core.sync(&bob, Some(cursor), 3).await.unwrap();
        assert!(page.messages.len() <= 3);
        seen.extend(seqs(&page.messages));
        if !page.has_more {
            assert_eq!(page.cursor, tail);
            break;
        }
        assert_eq!(page.cursor, page.messages.last().unwrap().seq);
        cursor = page.cursor;
    }
    assert_eq!(seen, bobs);
    // A sync acknowledges what it returned: the delivery cursor is at the end now, and a sync
    // without cursor (or a login backlog) starts there.
    assert_eq!(w.cursor(bob.id).await.delivered, tail);
    let page = w.core.sync(&bob, None, 100).await.unwrap();
    assert!(page.messages.is_empty());
    assert_eq!(page.cursor, tail);
    let next = w.send(&alice, 1, text("bob", "new", "")).await;
    let page = w.core.sync(&bob, None, 100).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![next.appended.message.seq]);
    assert!(!page.has_more);
    // A limit of 0 is read as 1.
    let page = w.core.sync(&bob, Some(0), 0).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![bobs[0]]);
    assert!(page.has_more);
}

#[tokio::test]
async fn a_size_capped_sync_ends_at_the_last_item_it_holds_and_the_delivery_cursor_too() {
    // The server's reply cap (protocol.max_reply_bytes) refuses items past its size: the page
    // ends before the first refused one, says has_more, and neither its cursor nor the user's
    // delivery cursor passes what it holds (#14 finding 1).
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let c = w.send(&alice, 1, text("bob", &format!("m{i}"), "")).await;
        sent.push(c.appended.message.seq);
    }
    let mut asked = 0;
    let mut two = |_: &StoredMessage| {
        asked += 1;
        asked <= 2
    };
    let page = w.core.sync_within(&bob, None, 100, &mut two).await.unwrap();
    assert_eq!(seqs(&page.messages), sent[..2].to_vec());
    assert!(page.has_more);
    assert_eq!(page.cursor, sent[1]);
    assert_eq!(w.cursor(bob.id).await.delivered, sent[1]);
    // Even a cap that refuses everything returns the first item.
    let page = w
        .core
        .sync_within(&bob, Some(page.cursor), 100, &mut |_| false)
        .await
        .unwrap();
    assert_eq!(seqs(&page.messages), vec![sent[2]]);
    assert!(page.has_more);
    // Paging on without a cap brings the rest.
    let page = w.core.sync(&bob, Some(page.cursor), 100).await.unwrap();
    assert_eq!(seqs(&page.messages), sent[3..].to_vec());
    assert!(!page.has_more);
}

#[tokio::test]
async fn sync_without_cursor_resumes_at_the_oldest_undelivered_message_and_settles_it() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let s: Vec<Seq> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                w.send(&alice, 1, text("bob", &format!("m{i}"), ""))
                    .await
                    .appended
                    .message
                    .seq,
            );
        }
        v
    };
    w.backends.store.advance_cursor(bob.id, s[2]).await.unwrap();
    w.backends
        .store
        .mark_undelivered(bob.id, s[1])
        .await
        .unwrap();
    let page = w.core.sync(&bob, None, 100).await.unwrap();
    assert_eq!(seqs(&page.messages), vec![s[1], s[2]]);
    assert_eq!(
        w.cursor(bob.id).await,
        DeliveryCursor {
            delivered: s[2],
            undelivered_from: None
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Events from other nodes
// ---------------------------------------------------------------------------------------------

/// A message as another node stored it.
fn remote_message(seq: Seq, conv: ConvId, sender: &Me, content: &str) -> Arc<StoredMessage> {
    let body = match conv {
        ConvId::Group(group_id) => MessageBody::Group {
            group_id,
            content: content.into(),
        },
        ConvId::Direct(a, b) => MessageBody::Direct {
            recipient_id: if a == sender.id { b } else { a },
            to_user_id: "x".into(),
            content: content.into(),
            msg_type: String::new(),
            sent_at: None,
        },
    };
    Arc::new(StoredMessage {
        seq,
        msg_id: uuid::Uuid::new_v4().to_string(),
        conv,
        sender_id: sender.id,
        sender_uuid: sender.uuid.clone(),
        sender_name: sender.username.clone(),
        timestamp: 0,
        body,
    })
}

#[tokio::test]
async fn a_routed_direct_message_is_pushed_and_marked_for_users_no_longer_here() {
    let w = world().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let carol = w.user("carol").await;
    w.online(&bob, 2).await;
    let m = remote_message(41, ConvId::direct(alice.id, bob.id), &alice, "from afar");
    // Through the bus this node is attached to, as another node would send it.
    w.backends
        .bus
        .publish_node(
            NODE,
            BusEvent::Direct {
                message: m.clone(),
                users: vec![bob.id, carol.id],
            },
        )
        .await
        .unwrap();
    assert_eq!(w.local.pushes_to(bob.id), vec![(2, 41)]);
    assert_eq!(w.local.pushes()[0].message, *m);
    assert_eq!(w.cursor(bob.id).await.undelivered_from, None);
    // Presence placed carol here, but she is not (or no longer) connected.
    assert_eq!(w.cursor(carol.id).await.undelivered_from, Some(41));
}

#[tokio::test]
async fn a_group_event_is_pushed_to_local_members_unless_this_node_sent_it() {
    let w = world().await;
    let owner = w.user("owner").await;
    let member = w.user("member").await;
    let failing = w.user("failing").await;
    let g = w.group(&owner, "team", &[&member, &failing]).await;
    w.online(&member, 3).await;
    w.online(&failing, 4).await;
    w.local.fail_pushes_to(failing.id);

    let own = remote_message(10, ConvId::Group(g), &owner, "mine");
    w.core
        .deliver(BusEvent::Group {
            message: own,
            origin_node: NODE.into(),
        })
        .await;
    assert!(w.local.pushes().is_empty());
    assert_eq!(w.cursor(failing.id).await.undelivered_from, None);

    let theirs = remote_message(11, ConvId::Group(g), &owner, "theirs");
    w.core
        .deliver(BusEvent::Group {
            message: theirs,
            origin_node: OTHER_NODE.into(),
        })
        .await;
    assert_eq!(w.local.pushes_to(member.id), vec![(3, 11)]);
    assert_eq!(w.cursor(failing.id).await.undelivered_from, Some(11));
    // The owner is not connected here.
    assert!(w.local.pushes_to(owner.id).is_empty());
    assert_eq!(w.cursor(owner.id).await.undelivered_from, None);
}

#[tokio::test]
async fn kick_and_membership_events_reach_this_nodes_connections() {
    let w = world().await;
    let owner = w.user("owner").await;
    let bob = w.user("bob").await;
    let g = w.group(&owner, "team", &[]).await;
    w.online(&bob, 7).await;
    assert!(!w.local.is_member(bob.id, g));

    w.core
        .deliver(BusEvent::Kick {
            user: bob.id,
            conn: 7,
            reason: "too many devices".into(),
        })
        .await;
    assert_eq!(
        w.local.kicks(),
        vec![(bob.id, 7, "too many devices".to_string())]
    );

    w.core
        .deliver(BusEvent::Membership {
            user: bob.id,
            group: g,
            joined: true,
        })
        .await;
    assert!(w.local.is_member(bob.id, g));
    w.core
        .deliver(BusEvent::Membership {
            user: bob.id,
            group: g,
            joined: false,
        })
        .await;
    assert!(!w.local.is_member(bob.id, g));
}

#[tokio::test]
async fn a_membership_change_is_applied_here_once_and_not_sent_to_this_node() {
    let w = world().await;
    let owner = w.user("owner").await;
    let bob = w.user("bob").await;
    let g = w.group(&owner, "team", &[]).await;
    w.online(&bob, 7).await;
    // Bob is online on this node only: the change is applied here once and no node is sent
    // a bus event (one sent to this node would come back through the in-process bus as a
    // second membership call).
    w.core.join_group(&bob, g).await.unwrap();
    let joins: Vec<_> = w
        .local
        .memberships()
        .into_iter()
        .filter(|m| m.0 == bob.id)
        .collect();
    assert_eq!(joins, vec![(bob.id, g, true)]);
    assert!(w.local.is_member(bob.id, g));
}

// ---------------------------------------------------------------------------------------------
// The standing tasks (on tokio's paused time: no real waiting)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn due_cursors_are_saved_periodically() {
    let w = world().await;
    w.local.state().due = vec![(7, 12), (8, 3)];
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        w.core
            .clone()
            .flush_cursors(Duration::from_secs(1), stop.clone()),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(w.cursor(7).await.delivered, 12);
    assert_eq!(w.cursor(8).await.delivered, 3);
    w.local.state().due = vec![(7, 20)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.cursor(7).await.delivered, 20);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_bus_follows_the_groups_with_local_members() {
    let w = world().await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.core.clone().run_group_interest(stop.clone()));
    let (alice, g) = (
        Me {
            id: 1,
            uuid: "u1".into(),
            username: "alice".into(),
        },
        5,
    );
    let event = |seq| BusEvent::Group {
        message: remote_message(seq, ConvId::Group(g), &alice, "hi"),
        origin_node: OTHER_NODE.into(),
    };
    // Nobody here: the in-process bus drops the group's events.
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.backends.bus.publish_group(g, event(1)).await.unwrap();
    assert!(w.local.pushes().is_empty());

    w.local.connect(2, 20, &[g]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.backends.bus.publish_group(g, event(2)).await.unwrap();
    assert_eq!(w.local.pushes_to(2), vec![(20, 2)]);

    w.local.state().conns.remove(&2);
    w.local.changed.notify_one();
    tokio::time::sleep(Duration::from_millis(10)).await;
    w.backends.bus.publish_group(g, event(3)).await.unwrap();
    assert_eq!(w.local.pushes_to(2), vec![(20, 2)]);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn password_guessing_is_throttled_per_username_and_per_address() {
    let w = world().await;
    w.user("alice").await;
    let from = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    let login = |addr: &'static str, name: &'static str, password: &'static str| {
        let core = w.core.clone();
        async move { core.login_password_from(from(addr), name, password).await }
    };
    // Per username: five free failures, the sixth blocks, even the right password.
    for _ in 0..6 {
        assert!(matches!(
            login("10.0.0.1", "alice", "wrong-password").await,
            Err(ChatError::WrongPassword)
        ));
    }
    assert!(matches!(
        login("10.0.0.9", "alice", PASSWORD).await,
        Err(ChatError::TooManyAttempts { .. })
    ));
    w.clock.advance(Duration::from_secs(1));
    assert!(login("10.0.0.9", "alice", PASSWORD).await.is_ok());

    // Per address: unknown names count too, whatever the name.
    for i in 0..6 {
        let name: &'static str = Box::leak(format!("nobody{i}").into_boxed_str());
        assert!(matches!(
            login("10.0.0.2", name, "x-password").await,
            Err(ChatError::UnknownUser)
        ));
    }
    assert!(matches!(
        login("10.0.0.2", "alice", PASSWORD).await,
        Err(ChatError::TooManyAttempts { .. })
    ));
    assert!(login("10.0.0.3", "alice", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn registrations_are_throttled_per_address_but_not_from_loopback() {
    let w = world().await;
    let from = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    for i in 0..5 {
        w.core
            .register_from(from("10.0.0.5"), &format!("u{i}x"), PASSWORD, "a@b.c")
            .await
            .unwrap();
    }
    assert!(matches!(
        w.core
            .register_from(from("10.0.0.5"), "u5x", PASSWORD, "a@b.c")
            .await,
        Err(ChatError::TooManyAttempts { .. })
    ));
    for i in 0..10 {
        w.core
            .register_from(from("127.0.0.1"), &format!("local{i}"), PASSWORD, "a@b.c")
            .await
            .unwrap();
    }
}
