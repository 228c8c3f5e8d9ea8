//! The PROXY protocol from trusted proxies (`server.proxy_protocol_from`): a connection from a
//! trusted address starts with a header, and the client's address in it is the one the node
//! limits and throttles; a trusted connection without a header is closed and counted; a
//! connection from elsewhere is served as before, and a header from it is not honoured.
//!
//! Every client is on loopback: the "proxy" is a client connecting from 127.0.0.1 (trusted
//! here), the others connect from 127.0.0.2 (not trusted). The addresses in the headers are not
//! loopback, which is exempt from the limits per address.

use crate::http_client;
use crate::support;

use std::net::{IpAddr, SocketAddr};

use chat_zinx::protocol::ids;
use chat_zinx::protocol::messages::code;
use serde_json::json;
use support::*;
use tokio::net::TcpListener;

const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn client_addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A connection through the trusted "proxy" for the client at `client`.
async fn via_proxy(server: &TestServer, client: &str) -> Client {
    Client::connect_from(server.addr, PROXY, &proxy_v2(Some(client_addr(client)))).await
}

/// Whether the connection was admitted: it answers a ping (a refused one got code 15 and was
/// closed at once).
async fn admitted(c: &mut Client) -> bool {
    c.send_body(ids::PING, b"ping").await;
    match c.next_frame().await {
        Some(f) if f.id == ids::PONG => true,
        Some(f) if f.id == ids::ERROR => {
            assert_eq!(body_json(&f.body)["code"], code::NODE_FULL, "{f:?}");
            false
        }
        other => panic!("neither a pong nor code 15: {other:?}"),
    }
}

async fn refused_headers(http: SocketAddr, reason: &'static str) -> f64 {
    let r = tokio::task::spawn_blocking(move || http_client::get(http, "/metrics"))
        .await
        .unwrap();
    let s = http_client::parse(&r.body);
    http_client::value(
        &s,
        "chat_zinx_proxy_headers_refused_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_in_a_trusted_proxys_header_is_the_one_limited_and_throttled() {
    let server = TestServer::with(|c| {
        c.server.proxy_protocol_from = Some(vec!["127.0.0.1/32".into()]);
        c.server.max_unauthenticated_per_address = 2;
    })
    .await;

    // Two connections not logged in from one client address through the proxy: the limit per
    // address is that client's, not the proxy's (loopback, which is not limited at all).
    let mut a1 = via_proxy(&server, "203.0.113.7:40001").await;
    let mut a2 = via_proxy(&server, "203.0.113.7:40002").await;
    assert!(admitted(&mut a1).await && admitted(&mut a2).await);
    let mut a3 = via_proxy(&server, "203.0.113.7:40003").await;
    assert!(
        !admitted(&mut a3).await,
        "a third from 203.0.113.7 is refused"
    );
    // Another client behind the same proxy has its own share.
    let mut b = via_proxy(&server, "203.0.113.8:40001").await;
    assert!(admitted(&mut b).await, "203.0.113.8 is another client");

    // Failed logins are counted per client address: five free, the sixth blocks ...
    // (Registered from elsewhere: a connection from the proxy's address needs a header.)
    let mut victim = Client::connect_from(server.addr, ELSEWHERE, b"").await;
    victim.register("victim").await;
    for i in 0..6 {
        a1.send(
            ids::LOGIN_REQ,
            json!({"username": format!("ghost{i}"), "password": "guess"}),
        )
        .await;
        assert_eq!(a1.expect(ids::LOGIN_RESP).await["code"], 3);
    }
    a1.send(
        ids::LOGIN_REQ,
        json!({"username": "victim", "password": PASSWORD}),
    )
    .await;
    let r = a1.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 6, "203.0.113.7 is throttled: {r}");
    // ... from that address only: the same login from another client behind the proxy works.
    b.send(
        ids::LOGIN_REQ,
        json!({"username": "victim", "password": PASSWORD}),
    )
    .await;
    let r = b.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 0, "203.0.113.8 is not throttled: {r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_connection_without_a_header_is_closed_and_others_are_served_as_before() {
    let server = TestServer::with(|c| {
        c.server.proxy_protocol_from = Some(vec!["127.0.0.1".into()]);
        // How long a trusted connection may take to send its header.
        c.protocol.login_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = server.node().serve_http(listener).unwrap();

    // From the trusted address, a chat frame where the header should be: closed, not a word.
    let mut bare = Client::connect_from(server.addr, PROXY, b"").await;
    bare.send(
        ids::REGISTER_REQ,
        json!({"username": "mallory", "password": PASSWORD, "email": "m@example.org"}),
    )
    .await;
    let frames = bare.until_closed().await;
    assert!(frames.is_empty(), "closed without a reply: {frames:?}");
    assert_eq!(refused_headers(http, "invalid").await, 1.0);
    // A trusted connection that closes before its header is counted too.
    let mut gone = Client::connect_from(server.addr, PROXY, b"\r\n\r\n\0").await;
    gone.shutdown_write().await;
    assert!(gone.until_closed().await.is_empty());
    assert_eq!(refused_headers(http, "closed").await, 1.0);

    // A trusted connection that sends nothing is closed once the login timeout passes.
    let mut silent = Client::connect_from(server.addr, PROXY, b"").await;
    assert!(silent.until_closed().await.is_empty());
    assert_eq!(refused_headers(http, "timeout").await, 1.0);

    // A v1 (text) header works as well.
    let v1 = b"PROXY TCP4 192.0.2.50 10.0.0.1 1234 9000\r\n";
    let mut carol = Client::connect_from(server.addr, PROXY, v1).await;
    carol.register("carol").await;
    carol.login("carol").await;

    // LOCAL (a proxy's health check) keeps the proxy's address and is served.
    let mut local = Client::connect_from(server.addr, PROXY, &proxy_v2(None)).await;
    local.register("alice").await;
    local.login("alice").await;

    // Not trusted: served as before, without a header ...
    let mut bob = Client::connect_from(server.addr, ELSEWHERE, b"").await;
    bob.register("bob").await;
    bob.login("bob").await;
    local.msg("bob", "hi").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "hi");
    // ... and a header from it is not honoured: its bytes are no frame, the connection ends
    // as any such connection does (the node never takes it for a client address).
    let header = proxy_v2(Some(client_addr("203.0.113.9:1")));
    let mut forged = Client::connect_from(server.addr, ELSEWHERE, &header).await;
    let _ = forged.try_send_raw(&codec_login("bob")).await;
    let frames = forged.until_closed().await;
    assert!(
        frames.iter().all(|f| f.id != ids::LOGIN_RESP),
        "no login through a forged header: {frames:?}"
    );
    assert_eq!(refused_headers(http, "invalid").await, 1.0);
    server.stop().await;
}

fn codec_login(name: &str) -> Vec<u8> {
    let body = json!({"username": name, "password": PASSWORD}).to_string();
    chat_zinx::protocol::codec::encode(ids::LOGIN_REQ, body.as_bytes()).to_vec()
}

/// `server.proxy_protocol_from` is reloadable: it applies to new connections, open ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_trusts_a_proxy_for_new_connections() {
    let server = TestServer::start().await;
    let mut before = Client::connect_from(server.addr, PROXY, b"").await;
    assert!(admitted(&mut before).await, "not trusted yet: served as is");

    let mut config = chat_zinx::config::Config::default();
    config.server.proxy_protocol_from = Some(vec!["127.0.0.0/8".into()]);
    server.node().reload(&config).expect("reloaded");
    let mut proxied = via_proxy(&server, "203.0.113.7:1").await;
    assert!(admitted(&mut proxied).await);
    let mut bare = Client::connect_from(server.addr, ELSEWHERE, b"").await;
    bare.send_body(ids::PING, b"ping").await;
    assert!(
        bare.until_closed().await.is_empty(),
        "127.0.0.2 is trusted now"
    );
    assert!(admitted(&mut before).await, "the open connection stays");
    server.stop().await;
}
