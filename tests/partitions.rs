//! Cuts between a node and its backends: each node reaches its backend through a
//! [`TcpProxy`] that resets every connection on `cut()` and lets them through again on
//! `heal()`. What a cut does is written down in docs/architecture.md ("Failure model"); these
//! tests hold the node to it, with real servers.
//!
//! Time bounds here are generous ("within 5 s") and only say that nothing waits for an outage
//! to end; they are never speeds.

mod http_client;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use chat_zinx::harness::{http_get, redis_command, ConsulAgent, NatsServer, RedisServer, TcpProxy};
use chat_zinx::protocol::{ids, messages::code};
use serde_json::{json, Value};
use support::*;

/// What "at once" means for an answer during a cut: far above the configured wait for a
/// reconnect (250 ms), far below the request timeout set for the node (30 s), so that an
/// answer within it was not a request timing out.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Polls `/ready` until it answers `status`; panics after `within`.
async fn ready_becomes(http: SocketAddr, status: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = tokio::task::spawn_blocking(move || http_client::get(http, "/ready"))
            .await
            .unwrap();
        if r.status == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready still answers {} after {within:?}, expected {status}: {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_text(c: &mut Client, to: &str, content: &str, client_msg_id: &str) -> Value {
    c.send(
        ids::TEXT_MSG,
        json!({"to_user_id": to, "content": content, "client_msg_id": client_msg_id}),
    )
    .await;
    c.expect(ids::SEND_ACK).await
}

/// Sends until the node accepts (code 0); every refusal must be "try again".
async fn send_until_accepted(c: &mut Client, to: &str, content: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ack = send_text(c, to, content, id).await;
        if ack["code"] == 0 {
            return ack;
        }
        assert_eq!(ack["code"], code::UNAVAILABLE, "{ack}");
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cut_is_answered_try_again_at_once_and_readiness_follows_the_connection() {
    let nats = NatsServer::start().await;
    let proxy = TcpProxy::start(nats.addr());
    let url = format!("nats://{}", proxy.addr());
    let node = TestServer::with(move |c| {
        c.nats.url = Some(url);
        // Long, so that an answer within PROMPTLY cannot be this timeout.
        c.nats.request_timeout = Duration::from_secs(30);
    })
    .await;
    let http = node
        .node()
        .serve_http(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let mut alice = node.user_v2("alice").await;
    let mut bob = node.user_v2("bob").await;
    ready_becomes(http, 200, WAIT).await;

    // Acknowledged before the cut: must survive it.
    let mut acked = Vec::new();
    for i in 0..5 {
        let ack = send_text(&mut alice, "bob", &format!("before-{i}"), &format!("b-{i}")).await;
        assert_eq!(ack["code"], 0, "{ack}");
        acked.push(format!("before-{i}"));
        assert_eq!(
            bob.expect(ids::TEXT_MSG).await["content"],
            format!("before-{i}")
        );
    }

    proxy.cut().await;
    // A send, a history read and a login are each answered "try again", promptly.
    let ack = tokio::time::timeout(PROMPTLY, send_text(&mut alice, "bob", "during", "d-1"))
        .await
        .expect("a send during the cut is answered promptly");
    assert_eq!(ack["code"], code::UNAVAILABLE, "{ack}");
    assert!(
        ack["message"].as_str().unwrap().contains("try again"),
        "{ack}"
    );
    alice
        .send(ids::HISTORY_REQ, json!({"target_username": "bob"}))
        .await;
    let history = tokio::time::timeout(PROMPTLY, alice.expect(ids::HISTORY_RESP))
        .await
        .expect("a history request during the cut is answered promptly");
    assert_eq!(history["code"], 4, "the store failed: {history}");
    let mut carol = node.client().await;
    carol.hello().await;
    carol
        .send(
            ids::LOGIN_REQ,
            json!({"username": "alice", "password": PASSWORD}),
        )
        .await;
    let login = tokio::time::timeout(PROMPTLY, carol.expect(ids::LOGIN_RESP))
        .await
        .expect("a login during the cut is answered promptly");
    assert_eq!(login["code"], 5, "the store failed: {login}");
    ready_becomes(http, 503, PROMPTLY).await;

    proxy.heal();
    ready_becomes(http, 200, PROMPTLY).await;
    // The refused send, retried with its client_msg_id, is stored and pushed once.
    let ack = send_until_accepted(&mut alice, "bob", "during", "d-1").await;
    assert!(ack["msg_id"].is_string(), "{ack}");
    acked.push("during".into());
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "during");
    bob.assert_quiet().await;

    // Nothing acknowledged was lost.
    bob.send(ids::HISTORY_REQ, json!({"target_username": "alice"}))
        .await;
    let history = bob.expect(ids::HISTORY_RESP).await;
    let contents: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    for m in &acked {
        assert!(contents.contains(&m.as_str()), "{m} lost: {history}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_node_cannot_reach_redis_cross_node_pushes_go_on_and_presence_comes_back_on_the_heal(
) {
    let nats = NatsServer::start().await;
    let redis = RedisServer::start().await;
    let proxy = TcpProxy::start(redis.addr());
    let node_on = |redis_url: String| {
        let nats_url = nats.url();
        TestServer::with(move |c| {
            c.nats.url = Some(nats_url);
            c.redis.url = Some(redis_url);
        })
    };
    let a = node_on(format!("redis://{}", proxy.addr())).await;
    let b = node_on(redis.url()).await;
    let mut alice = a.user_v2("alice").await;
    let mut bob = b.user_v2("bob").await;
    let ack = send_text(&mut alice, "bob", "before", "r-0").await;
    assert_eq!(ack["code"], 0, "{ack}");
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "before");

    // Node a loses Redis, and Redis loses what it held (a restart without persistence).
    proxy.cut().await;
    let flushed = redis_command(redis.addr(), "FLUSHALL").await.unwrap();
    assert_eq!(flushed, "+OK");
    for i in 0..5 {
        let content = format!("during-{i}");
        let ack = send_text(&mut alice, "bob", &content, &format!("r-d{i}")).await;
        assert_eq!(ack["code"], 0, "a send does not need presence: {ack}");
        assert_eq!(
            bob.expect(ids::TEXT_MSG).await["content"],
            content,
            "pushed live across nodes although node a cannot reach presence"
        );
    }

    // On the heal node a writes alice's session again, without waiting for its refresh
    // (10 s): node b then finds her and pushes to her live.
    proxy.heal();
    let key = format!("HLEN cz:p:{{{}}}", alice.id());
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        if redis_command(redis.addr(), &key).await.unwrap() == ":1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's session is not back in Redis {PROMPTLY:?} after the heal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = send_text(&mut bob, "alice", "after", "r-a").await;
    assert_eq!(ack["code"], 0, "{ack}");
    assert_eq!(alice.expect(ids::TEXT_MSG).await["content"], "after");
    alice.assert_quiet().await;
    bob.assert_quiet().await;
    a.stop().await;
    b.stop().await;
}

/// Whether Consul lists `node_id` as a passing instance of the chat service.
async fn consul_lists(consul: &ConsulAgent, node_id: &str) -> bool {
    match http_get(consul.addr(), "/v1/health/service/chat-zinx?passing=true").await {
        Ok((200, body)) => serde_json::from_str::<Vec<Value>>(&body)
            .unwrap_or_default()
            .iter()
            .any(|s| s["Service"]["ID"] == node_id),
        _ => false,
    }
}

async fn until_consul_lists(consul: &ConsulAgent, node_id: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !consul_lists(consul, node_id).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consul does not list {node_id} as passing after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_cut_does_not_stop_the_chat_and_the_node_registers_again_on_the_heal() {
    let consul = ConsulAgent::start().await;
    let proxy = TcpProxy::start(consul.addr());
    let addr = proxy.addr().to_string();
    let node = TestServer::with(move |c| {
        c.consul.addr = Some(addr);
        c.consul.check_ttl = Duration::from_secs(3);
    })
    .await;
    let http = node
        .node()
        .serve_http(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap();
    let node_id = node.node().node_id().to_string();
    until_consul_lists(&consul, &node_id, WAIT).await;
    let mut alice = node.user_v2("alice").await;
    let mut bob = node.user_v2("bob").await;

    // Cut, and Consul forgets the node (an agent restarted without its data).
    proxy.cut().await;
    let path = format!("/v1/agent/service/deregister/{node_id}");
    let consul_addr = consul.addr();
    let r = tokio::task::spawn_blocking(move || http_client::request(consul_addr, "PUT", &path))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..3 {
        let content = format!("during-{i}");
        let ack = tokio::time::timeout(
            PROMPTLY,
            send_text(&mut alice, "bob", &content, &format!("c-{i}")),
        )
        .await
        .expect("a send does not wait for Consul");
        assert_eq!(ack["code"], 0, "{ack}");
        assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], content);
    }
    let ready = tokio::task::spawn_blocking(move || http_client::get(http, "/ready"))
        .await
        .unwrap();
    assert_eq!(
        ready.status, 200,
        "the registry does not gate readiness: {}",
        ready.body
    );

    proxy.heal();
    // A TTL pass refused for an unknown check makes the node register again (passes every
    // check_ttl / 3 = 1 s).
    until_consul_lists(&consul, &node_id, Duration::from_secs(15)).await;
    bob.send(ids::HISTORY_REQ, json!({"target_username": "alice"}))
        .await;
    let history = bob.expect(ids::HISTORY_RESP).await;
    assert_eq!(
        history["data"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    node.stop().await;
}
