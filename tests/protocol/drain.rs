//! Draining on shutdown: v2 clients get a redirect, v1 clients a reason, then every
//! connection is closed and nothing queued before the drain is lost.

use crate::support;

use chat_zinx::protocol::{ids, messages::code};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_redirects_v2_clients_tells_v1_clients_and_closes_everyone() {
    let server = TestServer::start().await;
    let mut v2 = server.user_v2("alice").await;
    let mut v1 = server.user("bob").await;
    let mut anonymous = server.client().await;
    anonymous.assert_quiet().await;
    // A push queued just before the drain still arrives, before the redirect.
    v1.msg("alice", "last words").await;
    v1.assert_quiet().await;

    server.stop().await;

    let frames = v2.until_closed().await;
    let ids_seen: Vec<u32> = frames.iter().map(|f| f.id).collect();
    assert_eq!(ids_seen, [ids::TEXT_MSG, ids::REDIRECT], "{frames:?}");
    assert_eq!(body_json(&frames[0].body)["content"], "last words");
    let redirect = body_json(&frames[1].body);
    assert_eq!(redirect["reason"], "draining");
    assert!(redirect["nodes"].is_array(), "{redirect}");

    let frames = v1.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].id, ids::ERROR);
    assert_eq!(body_json(&frames[0].body)["code"], code::SHUTTING_DOWN);

    let frames = anonymous.until_closed().await;
    assert!(frames.iter().all(|f| f.id == ids::ERROR), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_v2_clients_are_redirected_and_v1_clients_told() {
    let server = TestServer::with(|c| c.server.max_connections = 2).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    first.assert_quiet().await;
    second.assert_quiet().await;

    let mut v2 = server.client().await;
    v2.send(
        ids::HELLO_REQ,
        serde_json::json!({"version": 2, "client": "t"}),
    )
    .await;
    let frames = v2.until_closed().await;
    let seen: Vec<u32> = frames.iter().map(|f| f.id).collect();
    assert_eq!(seen, [ids::HELLO_RESP, ids::REDIRECT]);
    assert_eq!(body_json(&frames[1].body)["reason"], "overloaded");

    let mut v1 = server.client().await;
    v1.send_body(ids::PING, b"ping").await;
    let frames = v1.until_closed().await;
    assert_eq!(frames.len(), 1);
    assert_eq!(body_json(&frames[0].body)["code"], code::NODE_FULL);

    // The connections within capacity are untouched.
    first.assert_quiet().await;
    second.assert_quiet().await;
    server.stop().await;
}
