//! The daemon on a real nats-server: durability across restarts, several nodes on one log, and
//! a NATS outage surfacing as a clear, retryable error.

mod support;

use std::time::Duration;

use chat_zinx::harness::NatsServer;
use chat_zinx::protocol::{ids, messages::code};
use serde_json::json;
use support::*;

async fn node_on(nats: &NatsServer, secret: &std::path::Path) -> TestServer {
    let url = nats.url();
    let secret = secret.to_path_buf();
    TestServer::with(move |c| {
        c.nats.url = Some(url);
        c.nats.request_timeout = Duration::from_secs(1);
        c.auth.token_secret_file = Some(secret);
    })
    .await
}

/// A node on NATS without `auth.token_secret_file` signs with the cluster's secret (stored in
/// the JetStream KV by the first node); a configured file wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_comes_from_nats_unless_a_file_is_configured() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let on_nats = |url: String| {
        move |c: &mut chat_zinx::config::Config| {
            c.nats.url = Some(url);
            c.nats.request_timeout = Duration::from_secs(1);
        }
    };
    let first = TestServer::with(on_nats(url.clone())).await;
    let second = TestServer::with(on_nats(url.clone())).await;
    let shared = tempfile::tempdir().unwrap();
    let own_file = node_on(&nats, &shared.path().join("token_secret")).await;

    let alice = first.user_v2("alice").await;
    let token = alice.token();
    let login = |server: &TestServer| {
        let (addr, token) = (server.addr, token.clone());
        async move {
            let mut c = Client::connect(addr).await;
            c.hello().await;
            c.send(ids::LOGIN_REQ, json!({"token": token})).await;
            c.expect(ids::LOGIN_RESP).await["code"].clone()
        }
    };
    assert_eq!(
        login(&second).await,
        0,
        "the second node has the same secret"
    );
    assert_ne!(
        login(&own_file).await,
        0,
        "a node with its own secret file does not accept the cluster's tokens"
    );
    for s in [first, second, own_file] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_groups_and_messages_survive_a_daemon_restart() {
    let nats = NatsServer::start().await;
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("token_secret");
    let first = node_on(&nats, &secret).await;
    let mut alice = first.user("alice").await;
    let mut bob = first.client().await;
    bob.register("bob").await;
    let gid = alice.create_group("durable").await;
    for i in 0..3 {
        alice.msg("bob", &format!("m{i}")).await;
    }
    alice.group_msg(gid, "g0").await;
    let token = alice.token();
    drop(alice);
    first.stop().await;

    // A new daemon (another node id, same NATS): everything is still there.
    let second = node_on(&nats, &secret).await;
    let mut alice = second.client().await;
    alice.hello().await;
    alice.send(ids::LOGIN_REQ, json!({"token": token})).await;
    assert_eq!(
        alice.expect(ids::LOGIN_RESP).await["code"],
        0,
        "a token of the first node works"
    );
    alice
        .send(ids::GROUP_HISTORY_REQ, json!({"group_id": gid}))
        .await;
    let h = alice.expect(ids::GROUP_HISTORY_RESP).await;
    assert_eq!(h["messages"][0]["content"], "g0");
    let mut bob = second.client().await;
    bob.login("bob").await;
    for i in 0..3 {
        assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], format!("m{i}"));
    }
    bob.assert_quiet().await;
    bob.send(
        ids::REGISTER_REQ,
        json!({"username": "ALICE", "password": "secret1", "email": "x@y"}),
    )
    .await;
    assert_eq!(
        bob.expect(ids::REGISTER_RESP).await["code"],
        3,
        "names stay unique"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_is_a_clear_retryable_error_and_service_resumes() {
    let mut nats = NatsServer::start().await;
    let shared = tempfile::tempdir().unwrap();
    let node = node_on(&nats, &shared.path().join("s")).await;
    let mut alice = node.user_v2("alice").await;
    let mut bob = node.user("bob").await;

    nats.stop();
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "lost?", "client_msg_id": "o-1"}),
        )
        .await;
    let ack = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack["code"], code::UNAVAILABLE, "{ack}");
    assert!(ack.get("msg_id").is_none());
    assert!(
        ack["message"].as_str().unwrap().contains("try again"),
        "{ack}"
    );
    bob.assert_quiet().await;

    nats.restart().await;
    // The client retries with the same client_msg_id until the node has reconnected.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ack = loop {
        alice
            .send(
                ids::TEXT_MSG,
                json!({"to_user_id": "bob", "content": "lost?", "client_msg_id": "o-1"}),
            )
            .await;
        let ack = alice.expect(ids::SEND_ACK).await;
        if ack["code"] == 0 {
            break ack;
        }
        assert_eq!(ack["code"], code::UNAVAILABLE, "{ack}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "NATS did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ack["msg_id"].is_string());
    let d = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(d["content"], "lost?");
    // Once, whatever the number of retries.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "lost?", "client_msg_id": "o-1"}),
        )
        .await;
    assert_eq!(alice.expect(ids::SEND_ACK).await["msg_id"], ack["msg_id"]);
    bob.assert_quiet().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_accounts_groups_and_history() {
    let nats = NatsServer::start().await;
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("token_secret");
    let a = node_on(&nats, &secret).await;
    let b = node_on(&nats, &secret).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.client().await;
    bob.register("bob").await;
    bob.login("bob").await;
    let gid = alice.create_group("both").await;
    bob.join_group(gid).await;
    // Both nodes append to the same conversations concurrently.
    let (x, y) = tokio::join!(
        async {
            for i in 0..20 {
                alice
                    .send(
                        ids::GROUP_TEXT_REQ,
                        json!({"group_id": gid, "content": format!("a{i}")}),
                    )
                    .await;
                assert_eq!(
                    alice.expect_skipping(ids::GROUP_TEXT_ACK).await["status"],
                    0
                );
            }
            alice
        },
        async {
            for i in 0..20 {
                bob.send(
                    ids::GROUP_TEXT_REQ,
                    json!({"group_id": gid, "content": format!("b{i}")}),
                )
                .await;
                assert_eq!(bob.expect_skipping(ids::GROUP_TEXT_ACK).await["status"], 0);
            }
            bob
        }
    );
    let (mut alice, bob) = (x, y);
    drop(bob);
    let mut seen = Vec::new();
    let mut last_id = 0u64;
    loop {
        alice
            .send(
                ids::GROUP_HISTORY_REQ,
                json!({"group_id": gid, "last_id": last_id, "limit": 7}),
            )
            .await;
        let h = alice.expect_skipping(ids::GROUP_HISTORY_RESP).await;
        for m in h["messages"].as_array().unwrap() {
            seen.push(m["content"].as_str().unwrap().to_string());
            last_id = m["id"].as_u64().unwrap();
        }
        if h["has_more"] == false {
            break;
        }
    }
    assert_eq!(seen.len(), 40, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 40, "no duplicates");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_reaches_members_on_another_node_live() {
    let nats = NatsServer::start().await;
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("token_secret");
    let a = node_on(&nats, &secret).await;
    let b = node_on(&nats, &secret).await;
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let gid = alice.create_group("across").await;
    bob.join_group(gid).await;
    // Node b learns of bob's membership and subscribes to the group's subject; a message
    // published before that is not lost (it is in the log) but not pushed live either, so
    // probe until a push arrives, then check one message end to end.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ack = alice.group_msg(gid, "probe").await;
        assert_eq!(ack["status"], 0);
        bob.send_body(ids::PING, b"ping").await;
        let mut pushed = false;
        loop {
            let (id, body) = bob.recv().await;
            if id == ids::PONG {
                break;
            }
            assert_eq!(id, ids::GROUP_TEXT_PUSH, "{body}");
            pushed = true;
        }
        if pushed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no cross-node push");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = alice.group_msg(gid, "hello across nodes").await;
    // A late push of an earlier probe may still come first.
    let p = loop {
        let p = bob.expect(ids::GROUP_TEXT_PUSH).await;
        if p["content"] != "probe" {
            break p;
        }
    };
    assert_eq!(p["content"], "hello across nodes");
    assert_eq!(p["msg_id"], ack["msg_id"]);
    a.stop().await;
    b.stop().await;
}

/// Replicas 3 on a 3-server NATS cluster: with one server down, sends are still stored and
/// acknowledged (quorum 2 of 3), and nothing acknowledged is lost when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_log_keeps_accepting_and_loses_nothing_with_one_nats_server_down() {
    let mut cluster = chat_zinx::harness::NatsCluster::start().await;
    let shared = tempfile::tempdir().unwrap();
    let secret = shared.path().join("token_secret");
    let urls = cluster.urls();
    let node = TestServer::with(move |c| {
        c.nats.url = Some(urls);
        c.nats.replicas = 3;
        c.nats.request_timeout = Duration::from_secs(2);
        c.auth.token_secret_file = Some(secret);
    })
    .await;
    let mut alice = node.user_v2("alice").await;
    let mut bob = node.client().await;
    bob.register("bob").await;

    let mut acked = Vec::new();
    let send = |i: usize| json!({"to_user_id": "bob", "content": format!("r{i}"), "client_msg_id": format!("r-{i}")});
    for i in 0..10 {
        alice.send(ids::TEXT_MSG, send(i)).await;
        let ack = alice.expect(ids::SEND_ACK).await;
        assert_eq!(ack["code"], 0, "{ack}");
        acked.push(i);
    }
    // One server down (possibly the stream leader): after a short election, sends go on.
    // A failed send is retried with the same client_msg_id, as a v2 client does.
    cluster.node(0).stop();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    for i in 10..30 {
        loop {
            alice.send(ids::TEXT_MSG, send(i)).await;
            let ack = alice.expect(ids::SEND_ACK).await;
            if ack["code"] == 0 {
                break;
            }
            assert_eq!(ack["code"], code::UNAVAILABLE, "{ack}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "no quorum after one server loss"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acked.push(i);
    }
    cluster.node(0).restart().await;
    bob.login("bob").await;
    let mut got = Vec::new();
    for _ in 0..acked.len() {
        let d = bob.expect(ids::TEXT_MSG).await;
        got.push(d["content"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = acked.iter().map(|i| format!("r{i}")).collect();
    assert_eq!(got, want, "every acknowledged message, once, in order");
    bob.assert_quiet().await;
    node.stop().await;
}
