//! The HTTP endpoint of a real node: /health, /ready, /metrics (Prometheus text whose counters
//! move with real traffic over TCP), errors for other paths and methods.

use crate::http_client;
use crate::support;

use std::net::SocketAddr;

use chat_zinx::protocol::ids;
use serde_json::json;
use support::TestServer;
use tokio::net::TcpListener;

async fn get(addr: SocketAddr, path: &'static str) -> http_client::Response {
    tokio::task::spawn_blocking(move || http_client::get(addr, path))
        .await
        .unwrap()
}

async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
) -> http_client::Response {
    tokio::task::spawn_blocking(move || http_client::request(addr, method, path))
        .await
        .unwrap()
}

async fn start() -> (TestServer, SocketAddr) {
    let server = TestServer::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = server.node().serve_http(listener).unwrap();
    (server, http)
}

async fn metrics(http: SocketAddr) -> prometheus_parse::Scrape {
    let r = get(http, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    http_client::parse(&r.body)
}

fn v(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    http_client::value(s, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// One row of a table of samples: the metric's name, its labels and the value expected.
type Sample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Checks every sample of `rows` in the scrape `s` (taken `when`); a failure names the row.
fn check_samples(when: &str, s: &prometheus_parse::Scrape, rows: &[Sample<'_>]) {
    for (name, labels, expected) in rows {
        assert_eq!(v(s, name, labels), *expected, "{name} {labels:?} {when}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_and_ready_turns_503_when_stopping() {
    let (server, http) = start().await;
    let r = get(http, "/health").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

    let r = get(http, "/ready").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["accepting"], true);
    assert_eq!(body["node_id"], server.node().node_id());
    assert_eq!(
        body["backends"],
        json!({"store": "ok", "presence": "ok", "bus": "ok", "registry": "ok"})
    );

    server.node().state.health.set_stopping();
    let r = get(http, "/ready").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["ready"], false);
    assert!(
        body["problems"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    // Alive all the same.
    assert_eq!(get(http, "/health").await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_refused_with_a_hint() {
    let (server, http) = start().await;
    let r = get(http, "/nope").await;
    assert_eq!(r.status, 404);
    assert!(
        r.body.contains("/health, /ready, /metrics and /admin/"),
        "{}",
        r.body
    );
    let r = request(http, "POST", "/metrics").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let (server, http) = start().await;
    let before = metrics(http).await;
    let rows: &[Sample] = &[
        ("chat_zinx_connections", &[], 0.0),
        ("chat_zinx_logins_total", &[("outcome", "ok")], 0.0),
        (
            "chat_zinx_cross_node_deliveries_total",
            &[("outcome", "ok")],
            0.0,
        ),
        (
            "chat_zinx_node_info",
            &[("node_id", server.node().node_id())],
            1.0,
        ),
        ("chat_zinx_backend_up", &[("backend", "store")], 1.0),
    ];
    check_samples("before any traffic", &before, rows);

    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut mallory = server.client().await;
    mallory
        .send(
            ids::LOGIN_REQ,
            json!({"username": "alice", "password": "wrong"}),
        )
        .await;
    let r = mallory.expect(ids::LOGIN_RESP).await;
    assert_ne!(r["code"], 0, "{r}");
    alice.msg("bob", "hello").await;
    let push = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(push["content"], "hello", "{push}");
    alice.assert_quiet().await;

    let after = metrics(http).await;
    let rows: &[Sample] = &[
        ("chat_zinx_connections", &[], 3.0),
        ("chat_zinx_logged_in_connections", &[], 2.0),
        ("chat_zinx_users", &[], 2.0),
        ("chat_zinx_connections_accepted_total", &[], 3.0),
        ("chat_zinx_registrations_total", &[], 2.0),
        ("chat_zinx_logins_total", &[("outcome", "ok")], 2.0),
        ("chat_zinx_logins_total", &[("outcome", "failed")], 1.0),
        (
            "chat_zinx_messages_total",
            &[("kind", "direct"), ("outcome", "stored")],
            1.0,
        ),
    ];
    check_samples("after the traffic", &after, rows);
    assert!(v(&after, "chat_zinx_pushes_total", &[]) >= 1.0);
    assert!(v(&after, "chat_zinx_delivery_latency_seconds_count", &[]) >= 1.0);
    assert!(
        v(&after, "chat_zinx_frames_received_total", &[])
            > v(&before, "chat_zinx_frames_received_total", &[])
    );

    drop(mallory);
    drop(alice);
    drop(bob);
    server.stop().await;
}
