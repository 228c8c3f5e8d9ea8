//! Nodes registered in a real Consul: discovery, least-loaded selection by the client, and the
//! drain's redirect naming the peers.

mod support;

use std::process::Stdio;
use std::time::Duration;

use chat_zinx::harness::ConsulAgent;
use chat_zinx::protocol::ids;
use serde_json::Value;
use support::*;

async fn node(consul: &ConsulAgent) -> TestServer {
    let addr = consul.url();
    TestServer::with(move |c| {
        c.consul.addr = Some(addr);
        c.server.max_connections = 100;
    })
    .await
}

/// Waits until Consul lists `n` passing chat-zinx instances and `pred` holds for them.
async fn wait_for_services(
    consul: &ConsulAgent,
    n: usize,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let (status, body) = chat_zinx::harness::http_get(
            consul.addr(),
            "/v1/health/service/chat-zinx?passing=true",
        )
        .await
        .expect("consul answers");
        if status == 200 {
            let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
            if list.len() == n && pred(&list) {
                return list;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consul never showed the expected services: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connections(service: &Value) -> u64 {
    service["Service"]["Meta"]["connections"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pick_the_least_loaded_node_and_a_drain_redirects_to_the_peer() {
    let consul = ConsulAgent::start().await;
    let busy = node(&consul).await;
    let idle = node(&consul).await;
    let busy_addr = busy.addr.to_string();
    let idle_addr = idle.addr.to_string();

    // Load the first node, then wait until Consul has both nodes with that load.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = busy.client().await;
        c.hello().await;
        held.push(c);
    }
    wait_for_services(&consul, 2, |list| list.iter().any(|s| connections(s) >= 5)).await;

    // The client asks Consul and goes to the idle node.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-zinx"))
        .args(["client", "--consul", &consul.url(), "--json", "-e", "/ping"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let connected: Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["event"] == "connected")
        .expect("a connected event");
    assert_eq!(
        connected["addr"],
        idle_addr.as_str(),
        "busy node is {busy_addr}"
    );

    // Draining the busy node redirects its v2 clients to the idle one.
    busy.stop().await;
    for mut c in held {
        let frames = c.until_closed().await;
        let redirect = frames
            .iter()
            .find(|f| f.id == ids::REDIRECT)
            .expect("a redirect before closing");
        let body = body_json(&redirect.body);
        assert_eq!(body["reason"], "draining");
        assert_eq!(body["nodes"][0]["addr"], idle_addr.as_str(), "{body}");
    }
    // And it left Consul.
    wait_for_services(&consul, 1, |_| true).await;
    idle.stop().await;
}
