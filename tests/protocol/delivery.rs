//! Delivery: offline backlog at login, several devices, the device limit, and the v2
//! extensions (token login, acks, idempotent sends, sync); sends whose store acknowledgement
//! is lost or late (`support::faulty_store`).

use crate::support;

use std::collections::HashSet;

use chat_zinx::protocol::{ids, messages::code};
use serde_json::{json, Value};
use support::*;

/// Waits until member `user_id` of group `gid` shows offline in 222 (its last connection's
/// close has been processed, cursor included). Bounded by `WAIT`; not a timing assertion.
async fn wait_offline(probe: &mut Client, gid: u64, user_id: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        probe
            .send(ids::GROUP_MEMBERS_REQ, json!({"group_id": gid}))
            .await;
        let r = probe.expect(ids::GROUP_MEMBERS_RESP).await;
        let online = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user_id"] == user_id && m["is_online"] == true);
        if !online {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user {user_id} still online: {r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A group of `owner` that `member` joins, used to observe presence.
async fn presence_group(owner: &mut Client, member: &mut Client, name: &str) -> u64 {
    let gid = owner.create_group(name).await;
    member.join_group(gid).await;
    gid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_direct_messages_arrive_at_login_as_json_oldest_first_without_collapsing_duplicates(
) {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.client().await;
    bob.register("bob").await;
    // Bob has never logged in: everything is offline.
    for text in ["one", "same", "same", "three"] {
        alice.msg("bob", text).await;
    }
    alice.assert_quiet().await;
    bob.login("bob").await;
    let mut got = Vec::new();
    let mut msg_ids = HashSet::new();
    for _ in 0..4 {
        let d = bob.expect(ids::TEXT_MSG).await;
        assert!(
            d.is_object(),
            "offline delivery must be JSON, not base64: {d}"
        );
        assert_eq!(d["from_user_id"], alice.uuid().as_str());
        assert!(d["seq"].is_u64() && d["timestamp"].is_i64());
        msg_ids.insert(d["msg_id"].as_str().unwrap().to_string());
        got.push(d["content"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["one", "same", "same", "three"]);
    assert_eq!(msg_ids.len(), 4, "two identical texts are two messages");
    bob.assert_quiet().await;

    // Delivered once: after bob's connection is gone, a new login has no backlog. Pushes
    // written in the last moments before a v1 connection ends count as uncertain and are
    // repeated (see `UNCERTAIN_WINDOW`); wait past that window first.
    let gid = presence_group(&mut alice, &mut bob, "presence").await;
    let bob_id = bob.id();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    bob.assert_quiet().await;

    // Messages sent while bob was connected and read live are not repeated either.
    alice.msg("bob", "live").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "live");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;
    alice.msg("bob", "while away").await;
    alice.assert_quiet().await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "while away");
    bob.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_group_messages_arrive_at_login_after_direct_ones_in_log_order() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = presence_group(&mut alice, &mut bob, "team").await;
    let bob_id = bob.id();
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;
    alice.group_msg(gid, "g1").await;
    alice.msg("bob", "p1").await;
    alice.group_msg(gid, "g2").await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, body) = bob.recv().await;
        got.push((id, body["content"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        got,
        [
            (ids::GROUP_TEXT_PUSH, "g1".to_string()),
            (ids::TEXT_MSG, "p1".to_string()),
            (ids::GROUP_TEXT_PUSH, "g2".to_string())
        ]
    );
    bob.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_every_push_and_the_senders_other_devices_get_a_copy() {
    let server = TestServer::start().await;
    let mut alice1 = server.user("alice").await;
    let mut alice2 = server.client().await;
    alice2.login("alice").await;
    let mut bob1 = server.user("bob").await;
    let mut bob2 = server.client().await;
    bob2.login("bob").await;

    alice1.msg("bob", "to both").await;
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "to both");
    }
    // Alice's other device sees what alice sent; the sending connection does not.
    assert_eq!(alice2.expect(ids::TEXT_MSG).await["content"], "to both");
    alice1.assert_quiet().await;

    // A message to oneself reaches every own connection, the sending one included.
    alice1.msg("alice", "note to self").await;
    assert_eq!(
        alice1.expect(ids::TEXT_MSG).await["content"],
        "note to self"
    );
    assert_eq!(
        alice2.expect(ids::TEXT_MSG).await["content"],
        "note to self"
    );
    for c in [&mut alice1, &mut alice2, &mut bob1, &mut bob2] {
        c.assert_quiet().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_device_limit_the_oldest_connection_is_told_and_closed() {
    let server = TestServer::with(|c| c.session.max_devices = 2).await;
    let mut first = server.user("carol").await;
    let mut second = server.client().await;
    second.login("carol").await;
    let mut third = server.client().await;
    third.login("carol").await;
    let frames = first.until_closed().await;
    let last = frames.last().expect("a reason before closing");
    assert_eq!(last.id, ids::ERROR);
    let body = body_json(&last.body);
    assert_eq!(body["code"], code::TOO_MANY_DEVICES);
    assert!(
        body["message"].as_str().unwrap().contains("devices"),
        "{body}"
    );
    second.assert_quiet().await;
    third.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_hello_token_login_and_acks() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    let hello = alice.hello().await;
    assert_eq!(hello["version"], 2);
    assert_eq!(hello["max_body"], 8192);
    assert_eq!(hello["idle_timeout_s"], 180);
    assert!(hello["server"].as_str().unwrap().starts_with("chat-zinx/"));
    assert!(hello["node_id"].is_string());
    let features: Vec<&str> = hello["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["ack", "sync", "redirect"] {
        assert!(features.contains(&f), "{hello}");
    }
    alice.register("alice").await;
    alice.login("alice").await;
    let token = alice.token();
    let mut bob = server.user("bob").await;

    // Token login on a new connection: same 105 shape, no password.
    let mut again = server.client().await;
    again.hello().await;
    again.send(ids::LOGIN_REQ, json!({"token": token})).await;
    let r = again.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["username"], "alice");
    for bad in ["garbage", "a.b.c", &format!("{token}x")] {
        again.send(ids::LOGIN_REQ, json!({"token": bad})).await;
        let r = again.expect(ids::LOGIN_RESP).await;
        assert_eq!(
            r["code"], 14,
            "a bad token is not the store's 'try again': {r}"
        );
    }

    // Send ack with client_msg_id; a retry is acked identically and not delivered twice.
    let send = json!({"to_user_id": "bob", "content": "hi", "client_msg_id": "m-1"});
    alice.send(ids::TEXT_MSG, send.clone()).await;
    let ack = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack["client_msg_id"], "m-1");
    assert_eq!(ack["code"], 0);
    assert!(ack["msg_id"].is_string() && ack["seq"].is_u64() && ack["timestamp"].is_i64());
    assert_eq!(
        ack["conv"],
        format!("p{}-{}", alice.id().min(bob.id()), alice.id().max(bob.id()))
    );
    alice.send(ids::TEXT_MSG, send).await;
    let retry = alice.expect(ids::SEND_ACK).await;
    assert_eq!(retry, ack);
    let d = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(d["msg_id"], ack["msg_id"]);
    assert_eq!(d["conv"], ack["conv"]);
    bob.assert_quiet().await;
    // Alice's second (v2) connection got its copy once.
    assert_eq!(again.expect(ids::TEXT_MSG).await["msg_id"], ack["msg_id"]);
    again.assert_quiet().await;

    // Failure ack: no msg_id, a code and a message.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "nobody", "content": "x", "client_msg_id": "m-2"}),
        )
        .await;
    let fail = alice.expect(ids::SEND_ACK).await;
    assert_eq!(fail["client_msg_id"], "m-2");
    assert_eq!(fail["code"], code::NOT_FOUND);
    assert!(fail.get("msg_id").is_none());
    assert!(fail["message"].as_str().unwrap().contains("nobody"));

    // v2 errors carry `ref`.
    alice.send(ids::HISTORY_REQ + 1000, json!({})).await;
    let e = alice.expect(ids::ERROR).await;
    assert_eq!(e["ref"], ids::HISTORY_REQ + 1000);
    server.stop().await;
}

/// Messages of a sync response, as (conv, seq, content).
fn sync_items(r: &Value) -> Vec<(String, u64, String)> {
    r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["conv"].as_str().unwrap().to_string(),
                m["seq"].as_u64().unwrap(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pages_through_every_conversation_exactly_once_from_a_cursor() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user_v2("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("sync-group").await;
    bob.join_group(gid).await;

    // Bob takes a cursor, then goes away.
    bob.send(ids::SYNC_REQ, json!({})).await;
    let first = bob.expect(ids::SYNC_RESP).await;
    assert_eq!(first["has_more"], false);
    let cursor = first["cursor"].as_str().unwrap().to_string();
    let bob_id = bob.id();
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;

    let mut expected = Vec::new();
    for i in 0..7 {
        carol.msg("bob", &format!("c{i}")).await;
        expected.push(format!("c{i}"));
        alice.group_msg(gid, &format!("g{i}")).await;
        alice.expect(ids::SEND_ACK).await;
        expected.push(format!("g{i}"));
        alice
            .send(
                ids::TEXT_MSG,
                json!({"to_user_id": "bob", "content": format!("a{i}")}),
            )
            .await;
        alice.expect(ids::SEND_ACK).await;
        expected.push(format!("a{i}"));
    }
    carol.assert_quiet().await;

    // A new device of bob resumes with the token and syncs from the old cursor, 4 at a time.
    let mut bob = server.client().await;
    bob.hello().await;
    bob.login("bob").await;
    // Drain the login backlog (it is the same messages as pushes; a v2 client de-duplicates).
    let mut backlog = 0;
    bob.send_body(ids::PING, b"ping").await;
    while bob.recv().await.0 != ids::PONG {
        backlog += 1;
    }
    assert_eq!(
        backlog,
        expected.len(),
        "login backlog delivers every missed message"
    );

    let mut got: Vec<(String, u64, String)> = Vec::new();
    let mut cursor = cursor;
    let mut pages = 0;
    loop {
        bob.send(ids::SYNC_REQ, json!({"cursor": cursor, "limit": 4}))
            .await;
        let r = bob.expect(ids::SYNC_RESP).await;
        let items = sync_items(&r);
        assert!(items.len() <= 4);
        got.extend(items);
        cursor = r["cursor"].as_str().unwrap().to_string();
        pages += 1;
        if r["has_more"] == false {
            break;
        }
        assert!(pages < 50, "sync does not terminate");
    }
    // Every message exactly once; log order overall (seq strictly increasing), hence the send
    // order within each conversation (carol's sends are not ordered against alice's).
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
    let mut by_conv: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (conv, _, content) in &got {
        by_conv
            .entry(conv.as_str())
            .or_default()
            .push(content.as_str());
    }
    assert_eq!(by_conv.len(), 3, "two direct conversations and one group");
    let mut per_conv: Vec<Vec<&str>> = by_conv.into_values().collect();
    per_conv.sort();
    let series = |p: &str| (0..7).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let mut want = vec![series("a"), series("c"), series("g")];
    want.sort();
    assert_eq!(per_conv, want);
    assert_eq!(got.len(), expected.len());

    // From the last cursor there is nothing more.
    bob.send(ids::SYNC_REQ, json!({"cursor": cursor})).await;
    let r = bob.expect(ids::SYNC_RESP).await;
    assert!(sync_items(&r).is_empty());
    assert_eq!(r["has_more"], false);

    // A bad cursor is a clear error.
    bob.send(ids::SYNC_REQ, json!({"cursor": "not-a-cursor"}))
        .await;
    let e = bob.expect(ids::ERROR).await;
    assert_eq!(e["code"], code::MALFORMED);
    assert!(e["message"].as_str().unwrap().contains("cursor"));
    server.stop().await;
}

/// What reached `client` before a ping's pong: every push queued before the ping was handled
/// (a push is queued before the send that caused it is answered).
async fn pending(client: &mut Client) -> Vec<Value> {
    client.send_body(ids::PING, b"ping").await;
    let mut frames = Vec::new();
    loop {
        let (id, body) = client.recv().await;
        if id == ids::PONG {
            return frames;
        }
        assert_eq!(id, ids::TEXT_MSG, "{body}");
        frames.push(body);
    }
}

/// A send stored although its sender was told to try again (code 6, the store's
/// acknowledgement was lost): the retry with the same `client_msg_id` is acknowledged as the
/// stored message and pushed to the online recipient, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stored_but_answered_code_6_is_pushed_when_the_client_retries() {
    let (server, store) = TestServer::with_faulty_store().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    // Bob's login is done (its backlog read) before anything is sent.
    bob.assert_quiet().await;
    let send = json!({"to_user_id": "bob", "content": "hi", "client_msg_id": "m-1"});
    store.lose_next_ack();
    alice.send(ids::TEXT_MSG, send.clone()).await;
    let failed = alice.expect(ids::SEND_ACK).await;
    assert_eq!(failed["code"], code::UNAVAILABLE, "{failed}");
    assert!(pending(&mut bob).await.is_empty());

    alice.send(ids::TEXT_MSG, send.clone()).await;
    let ack = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack["code"], 0, "{ack}");
    let pushed = pending(&mut bob).await;
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    assert_eq!(pushed[0]["msg_id"], ack["msg_id"]);
    assert_eq!(pushed[0]["content"], "hi");

    // Delivered now: a further retry is acknowledged the same and not pushed again.
    alice.send(ids::TEXT_MSG, send).await;
    assert_eq!(alice.expect(ids::SEND_ACK).await, ack);
    assert!(pending(&mut bob).await.is_empty());
    server.stop().await;
}

/// A message stored before a login's backlog is read, and pushed live after it (its send was
/// between its append and its delivery), reaches the logging-in user once: in the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_during_a_login_reaches_the_user_once() {
    let (server, store) = TestServer::with_faulty_store().await;
    let mut alice = server.user_v2("alice").await;
    alice.assert_quiet().await;
    let mut bob = server.client().await;
    bob.register("bob").await;

    // Alice's message is stored; its acknowledgement, and so its delivery, waits.
    let held = store.hold_next_ack();
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "around the login", "client_msg_id": "m-1"}),
        )
        .await;
    held.placed.await.expect("the append happens");

    // Bob logs in: the backlog has the message (and the pong says the login is done: frames
    // of a connection are handled in order).
    bob.login("bob").await;
    let backlog = pending(&mut bob).await;
    assert_eq!(backlog.len(), 1, "{backlog:?}");
    assert_eq!(backlog[0]["content"], "around the login");

    // The send goes on and pushes the message live: bob's connection leaves it out.
    held.release.send(()).expect("the send waits");
    let ack = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack["code"], 0, "{ack}");
    assert_eq!(ack["msg_id"], backlog[0]["msg_id"]);
    assert!(pending(&mut bob).await.is_empty());

    // Later messages are pushed as usual.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "next"}),
        )
        .await;
    alice.expect(ids::SEND_ACK).await;
    let next = pending(&mut bob).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0]["content"], "next");
    server.stop().await;
}

/// Pushes keep the send order even when the acknowledgements of a connection's appends come
/// back out of order (two sends in flight; the store answers the second first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_keep_the_send_order_when_acknowledgements_come_back_out_of_order() {
    use chat_zinx::core::model::ConvId;
    use chat_zinx::core::ports::Store;
    let (server, store) = TestServer::with_faulty_store().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    bob.assert_quiet().await;

    // The first send is stored; its acknowledgement waits.
    let held = store.hold_next_ack();
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "first", "client_msg_id": "m-1"}),
        )
        .await;
    held.placed.await.expect("the append happens");
    // The second is stored and acknowledged at once.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "second", "client_msg_id": "m-2"}),
        )
        .await;
    let conv = ConvId::direct(alice.id(), bob.id());
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.history(conv, None, 10).await.unwrap().messages.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second send is never stored"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    held.release.send(()).expect("the send waits");
    for (i, expected) in ["m-1", "m-2"].iter().enumerate() {
        let ack = alice.expect(ids::SEND_ACK).await;
        assert_eq!(ack["client_msg_id"], *expected, "reply {i}");
        assert_eq!(ack["code"], 0, "{ack}");
    }
    let pushed = pending(&mut bob).await;
    let contents: Vec<&str> = pushed
        .iter()
        .map(|p| p["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["first", "second"], "pushes in send order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_retry_with_the_same_client_msg_id_is_stored_once() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("dedupe").await;
    bob.join_group(gid).await;
    let req = json!({"group_id": gid, "content": "once", "client_msg_id": "g-1"});
    alice.send(ids::GROUP_TEXT_REQ, req.clone()).await;
    let a1 = alice.expect(ids::GROUP_TEXT_ACK).await;
    let k1 = alice.expect(ids::SEND_ACK).await;
    alice.send(ids::GROUP_TEXT_REQ, req).await;
    let a2 = alice.expect(ids::GROUP_TEXT_ACK).await;
    let k2 = alice.expect(ids::SEND_ACK).await;
    assert_eq!(a1, a2);
    assert_eq!(k1, k2);
    assert_eq!(
        bob.expect(ids::GROUP_TEXT_PUSH).await["msg_id"],
        a1["msg_id"]
    );
    bob.assert_quiet().await;
    alice
        .send(ids::GROUP_HISTORY_REQ, json!({"group_id": gid}))
        .await;
    let h = alice.expect(ids::GROUP_HISTORY_RESP).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// Sends written in one burst are handled with several in flight, with every ordering
/// promise kept (see `assert_pipelined_burst`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_keeps_request_order_in_replies_log_and_pushes() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("burst").await;
    assert_pipelined_burst(&mut alice, &mut bob, &mut carol, gid, 60).await;
    server.stop().await;
}

/// A v1 client (no acks) that read a push and closed its socket cleanly at once gets no copy
/// at its next login: the kernel says it acknowledged every byte and closed with a FIN, which
/// Linux sends only when nothing was left unread. One that closed without reading the push
/// (a reset) gets it again: at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_quit_after_reading_is_not_repeated_and_an_unread_push_is() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = presence_group(&mut alice, &mut bob, "presence").await;
    let bob_id = bob.id();

    alice.msg("bob", "read, then /quit").await;
    assert_eq!(
        bob.expect(ids::TEXT_MSG).await["content"],
        "read, then /quit"
    );
    // At once: well within the window in which a write counts as uncertain.
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    bob.assert_quiet().await;

    alice.msg("bob", "never read").await;
    bob.wait_unread().await;
    drop(bob);
    wait_offline(&mut alice, gid, bob_id).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "never read");
    bob.assert_quiet().await;
    server.stop().await;
}
