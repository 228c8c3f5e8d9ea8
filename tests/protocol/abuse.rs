//! Hostile clients: each test replays an attack a registered user (or an unauthenticated
//! socket) could make and asserts the refusal or the bound (docs/architecture.md, threat
//! model; docs/protocol.md §7.1.1, §9.3, §12.1).

use serde_json::json;

use crate::support::*;
use chat_zinx::harness::NatsServer;
use chat_zinx::protocol::ids;

/// Where the daemon keeps its data. The attacks that involve stored state (names, cursors,
/// idempotency keys, revoked tokens, login failures) are replayed on both.
#[derive(Clone, Copy)]
enum Backend {
    InProcess,
    Nats,
}

/// A daemon on one backend; its nats-server lives as long as it does.
struct Target {
    server: TestServer,
    nats: Option<NatsServer>,
}

impl std::ops::Deref for Target {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl Target {
    async fn stop(self) {
        self.server.stop().await;
        drop(self.nats);
    }
}

async fn target(backend: Backend) -> Target {
    match backend {
        Backend::InProcess => Target {
            server: TestServer::start().await,
            nats: None,
        },
        Backend::Nats => {
            let nats = NatsServer::start().await;
            let url = nats.url();
            Target {
                server: TestServer::with(move |c| c.nats.url = Some(url)).await,
                nats: Some(nats),
            }
        }
    }
}

/// For each attack `name(backend)`: a module `name` with the tests `in_process` and `on_nats`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_process() {
                super::$name(Backend::InProcess).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_nats() {
                super::$name(Backend::Nats).await
            }
        }
    )*};
}

on_both_backends!(
    a_username_that_reads_as_an_id_or_hides_characters_is_refused,
    a_group_name_with_hidden_characters_is_refused,
    a_sync_cursor_past_the_log_end_is_refused_and_offline_delivery_goes_on,
    a_reused_client_msg_id_for_a_different_message_is_refused_not_dropped,
    a_logout_revokes_that_sessions_token_and_no_other,
    password_guessing_is_refused_after_a_few_failures,
);

async fn a_username_that_reads_as_an_id_or_hides_characters_is_refused(backend: Backend) {
    let server = target(backend).await;
    let mut victim = server.user("victim").await;
    let victim_id = victim.id();
    let mut attacker = server.client().await;
    for (name, rule) in [
        (victim_id.to_string(), "all digits"),
        ("11111111-2222-4333-8444-555555555555".into(), "UUID"),
        (" ".into(), "empty"),
        (" victim".into(), "whitespace"),
        ("vic\u{200b}tim".into(), "control, format or invisible"),
        ("victim\u{202e}".into(), "control, format or invisible"),
        ("\u{1b}[2Jvictim".into(), "control, format or invisible"),
        ("vic\ntim".into(), "control, format or invisible"),
    ] {
        attacker
            .send(
                ids::REGISTER_REQ,
                json!({"username": name, "password": PASSWORD, "email": "a@b.c"}),
            )
            .await;
        let r = attacker.expect(ids::REGISTER_RESP).await;
        assert_eq!(r["code"], 4, "{name:?}: {r}");
        assert!(r["msg"].as_str().unwrap().contains(rule), "{name:?}: {r}");
    }

    // Two spellings of one name (NFC) are one name.
    let mut zoe = server.client().await;
    zoe.register("Zo\u{eb}").await;
    attacker
        .send(
            ids::REGISTER_REQ,
            json!({"username": "Zoe\u{308}", "password": PASSWORD, "email": "a@b.c"}),
        )
        .await;
    assert_eq!(attacker.expect(ids::REGISTER_RESP).await["code"], 3);
    // And either spelling logs in.
    zoe.send(
        ids::LOGIN_REQ,
        json!({"username": "Zoe\u{308}", "password": PASSWORD}),
    )
    .await;
    assert_eq!(zoe.expect(ids::LOGIN_RESP).await["code"], 0);

    // A message to the victim's id reaches the victim.
    let mut sender = server.user("sender").await;
    sender
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": victim_id.to_string(), "content": "for you"}),
        )
        .await;
    assert_eq!(victim.expect(ids::TEXT_MSG).await["content"], "for you");
    server.stop().await;
}

async fn a_group_name_with_hidden_characters_is_refused(backend: Backend) {
    let server = target(backend).await;
    let mut alice = server.user("alice").await;
    for name in ["crabs\u{200d}", " crabs", "cr\u{7}abs"] {
        alice
            .send(ids::CREATE_GROUP_REQ, json!({"name": name}))
            .await;
        let r = alice.expect(ids::CREATE_GROUP_RESP).await;
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("group name")),
            "{name:?}: {r}"
        );
    }
    let gid = alice.create_group("2024").await;
    alice
        .send(
            ids::UPDATE_GROUP_REQ,
            json!({"group_id": gid, "name": "new\u{202e}name"}),
        )
        .await;
    let r = alice.expect(ids::UPDATE_GROUP_RESP).await;
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("group name")),
        "{r}"
    );
    server.stop().await;
}

async fn a_sync_cursor_past_the_log_end_is_refused_and_offline_delivery_goes_on(backend: Backend) {
    let server = target(backend).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user_v2("bob").await;
    bob.send(ids::SYNC_REQ, json!({"cursor": "c1000000"})).await;
    let e = bob.expect(ids::ERROR).await;
    assert_eq!(
        (e["code"].as_u64(), e["ref"].as_u64()),
        (Some(4), Some(403)),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("past the end of the log"),
        "{e}"
    );
    drop(bob);

    // The delivery cursor did not move: what is sent while bob is away reaches him at login.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "later"}),
        )
        .await;
    // A ping round trip: the v1 send (no reply) has been handled.
    alice.send_body(ids::PING, b"ping").await;
    alice.expect(ids::PONG).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "later");
    server.stop().await;
}

async fn a_reused_client_msg_id_for_a_different_message_is_refused_not_dropped(backend: Backend) {
    let server = target(backend).await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user_v2("bob").await;
    let mut carol = server.user_v2("carol").await;
    let send = |to: &str, content: &str| json!({"to_user_id": to, "content": content, "client_msg_id": "k-1"});
    alice.send(ids::TEXT_MSG, send("bob", "first")).await;
    let first = alice.expect(ids::SEND_ACK).await;
    assert_eq!(first["code"], 0, "{first}");
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "first");

    // Another recipient, or other content, with the same key: refused, nothing delivered.
    for (to, content) in [("carol", "second"), ("bob", "second")] {
        alice.send(ids::TEXT_MSG, send(to, content)).await;
        let ack = alice.expect(ids::SEND_ACK).await;
        assert_eq!(ack["code"], 4, "{ack}");
        assert!(
            ack["message"]
                .as_str()
                .unwrap()
                .contains("already used for a different message"),
            "{ack}"
        );
        assert!(ack.get("msg_id").is_none(), "{ack}");
    }
    // The same message again is the retry it always was.
    alice.send(ids::TEXT_MSG, send("bob", "first")).await;
    let retry = alice.expect(ids::SEND_ACK).await;
    assert_eq!(
        (retry["code"].as_u64(), &retry["msg_id"]),
        (Some(0), &first["msg_id"])
    );

    // A group send that reuses a key of a direct one.
    let gid = alice.create_group("crew").await;
    alice
        .send(
            ids::GROUP_TEXT_REQ,
            json!({"group_id": gid, "content": "hello", "client_msg_id": "k-1"}),
        )
        .await;
    let ack311 = alice.expect(ids::GROUP_TEXT_ACK).await;
    assert_eq!(ack311["status"], 1, "{ack311}");
    assert!(
        ack311["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request format: client_msg_id"),
        "{ack311}"
    );
    assert_eq!(alice.expect(ids::SEND_ACK).await["code"], 4);

    // Carol got nothing, bob only the first message (a ping round trip to be sure).
    for c in [&mut bob, &mut carol] {
        c.send_body(ids::PING, b"ping").await;
        assert_eq!(c.recv().await.0, ids::PONG);
    }
    server.stop().await;
}

async fn a_logout_revokes_that_sessions_token_and_no_other(backend: Backend) {
    let server = target(backend).await;
    let mut phone = server.client().await;
    phone.register("alice").await;
    phone.login("alice").await;
    let phone_token = phone.token();
    let mut laptop = server.client().await;
    laptop.login("alice").await;
    let laptop_token = laptop.token();

    phone.send(ids::LOGOUT_REQ, json!({})).await;
    assert_eq!(phone.expect(ids::LOGOUT_RESP).await["code"], 0);

    let token_login = |token: String| json!({"token": token});
    let mut thief = server.client().await;
    thief.send(ids::LOGIN_REQ, token_login(phone_token)).await;
    let r = thief.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 14, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("revoked"), "{r}");

    // The other device's token still works; a token login's session revokes both the
    // token it was given and the one it presented.
    let mut again = server.client().await;
    again
        .send(ids::LOGIN_REQ, token_login(laptop_token.clone()))
        .await;
    let r = again.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 0, "{r}");
    let fresh = r["data"]["token"].as_str().unwrap().to_string();
    again.send(ids::LOGOUT_REQ, json!({})).await;
    assert_eq!(again.expect(ids::LOGOUT_RESP).await["code"], 0);
    for token in [laptop_token, fresh] {
        thief.send(ids::LOGIN_REQ, token_login(token)).await;
        assert_eq!(thief.expect(ids::LOGIN_RESP).await["code"], 14);
    }
    // The password still works.
    thief.login("alice").await;
    server.stop().await;
}

async fn password_guessing_is_refused_after_a_few_failures(backend: Backend) {
    let server = target(backend).await;
    server.user("victim").await;
    let mut guesser = server.client().await;
    let attempt = |password: &str| json!({"username": "victim", "password": password});
    for i in 0..6 {
        guesser
            .send(ids::LOGIN_REQ, attempt(&format!("guess-{i}")))
            .await;
        assert_eq!(guesser.expect(ids::LOGIN_RESP).await["code"], 4);
    }
    // Blocked now, the right password included, and told when to come back.
    guesser.send(ids::LOGIN_REQ, attempt(PASSWORD)).await;
    let r = guesser.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 6, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("try again in"), "{r}");
    // An unknown name costs the same work as a wrong password and counts the same way.
    for _ in 0..6 {
        guesser
            .send(
                ids::LOGIN_REQ,
                json!({"username": "ghost", "password": "guess-1"}),
            )
            .await;
        assert_eq!(guesser.expect(ids::LOGIN_RESP).await["code"], 3);
    }
    guesser
        .send(
            ids::LOGIN_REQ,
            json!({"username": "ghost", "password": "guess-1"}),
        )
        .await;
    assert_eq!(guesser.expect(ids::LOGIN_RESP).await["code"], 6);
    server.stop().await;
}

/// Finding 6: sockets that never log in used to fill `max_connections` and lock everyone out,
/// and were told code 13 ("shutting down"). Now connections that have not logged in have a
/// share of their own (`server.max_unauthenticated`), the rest is headroom for logged-in
/// users, a connection past the share is told code 15 at once, and a connection that does not
/// log in within `protocol.login_timeout` is closed (code 16) even if it pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_cannot_lock_users_out() {
    use chat_zinx::protocol::messages::code;
    let server = TestServer::with(|c| {
        c.server.max_connections = 8;
        c.server.max_unauthenticated = 3;
        c.protocol.login_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    // Logged in before the attack: four users, more than the share of those not logged in.
    let mut users = Vec::new();
    for name in ["u1", "u2", "u3", "u4"] {
        users.push(server.user(name).await);
    }
    // The attacker's sockets take the whole share (connections are admitted in accept order).
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(server.client().await);
    }
    let mut refused = server.client().await;
    let frames = refused.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].id, ids::ERROR);
    let body = body_json(&frames[0].body);
    assert_eq!(body["code"], code::NODE_FULL, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not logged in"),
        "{body}"
    );

    // Logged-in users go on meanwhile.
    for u in &mut users {
        u.assert_quiet().await;
    }

    // Pings do not keep a connection that never logs in.
    let pinger = &mut idle[0];
    let closed = loop {
        pinger.send_body(ids::PING, b"ping").await;
        match pinger.next_frame().await {
            Some(f) if f.id == ids::PONG => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await
            }
            other => break other,
        }
    };
    let last = closed.expect("a reason before the close");
    assert_eq!(last.id, ids::ERROR);
    assert_eq!(body_json(&last.body)["code"], code::LOGIN_TIMEOUT);
    for socket in &mut idle[1..] {
        let frames = socket.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(body_json(&frames[0].body)["code"], code::LOGIN_TIMEOUT);
    }

    // Their places are free again: a new user gets in.
    let mut late = server.user("late").await;
    late.assert_quiet().await;
    server.stop().await;
}

/// A logout makes a connection one that is not logged in again: it counts against the share
/// (here full), so it gets its 107 reply, then code 15, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_counts_against_the_share_of_connections_not_logged_in() {
    use chat_zinx::protocol::messages::code;
    let server = TestServer::with(|c| c.server.max_unauthenticated = 1).await;
    let mut bob = server.user("bob").await;
    let mut idle = server.client().await;
    // Answered: the node has taken the connection (it holds the one place) before bob's logout.
    idle.send_body(ids::PING, b"ping").await;
    assert_eq!(idle.next_frame().await.expect("pong").id, ids::PONG);
    bob.send(ids::LOGOUT_REQ, json!({})).await;
    let frames = bob.until_closed().await;
    let ids_seen: Vec<u32> = frames.iter().map(|f| f.id).collect();
    assert_eq!(ids_seen, [ids::LOGOUT_RESP, ids::ERROR], "{frames:?}");
    assert_eq!(body_json(&frames[0].body)["code"], 0);
    assert_eq!(body_json(&frames[1].body)["code"], code::NODE_FULL);
    server.stop().await;
}
