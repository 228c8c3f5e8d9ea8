//! The test harness's real servers start, answer, restart on the same ports and are stopped
//! when dropped.

use std::time::{Duration, Instant};

use chat_zinx::harness::*;

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

async fn refused(addr: std::net::SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn redis_answers_restarts_empty_on_the_same_port_and_stops_on_drop() {
    let mut redis = RedisServer::start().await;
    let addr = redis.addr();
    assert_eq!(redis_command(addr, "PING").await.unwrap(), "+PONG");
    assert_eq!(redis_command(addr, "SET k v").await.unwrap(), "+OK");
    assert_eq!(redis_command(addr, "EXISTS k").await.unwrap(), ":1");

    redis.kill();
    assert!(!redis.is_running());
    assert!(refused(addr).await, "nothing listens after kill");

    redis.restart().await;
    assert_eq!(redis.addr(), addr);
    assert_eq!(redis_command(addr, "EXISTS k").await.unwrap(), ":0");

    let pid = redis.process().pid().unwrap();
    drop(redis);
    assert!(!alive(pid), "redis-server {pid} still runs after drop");
    assert!(refused(addr).await);
}

#[tokio::test]
async fn nats_has_jetstream_and_restarts_on_the_same_ports() {
    let mut nats = NatsServer::start().await;
    let info = nats_info(nats.addr()).await.unwrap();
    assert!(info.contains("\"jetstream\":true"), "{info}");
    let (status, jsz) = http_get(nats.monitor_addr(), "/jsz").await.unwrap();
    assert_eq!(status, 200, "{jsz}");
    assert!(
        jsz.contains(&nats.store_dir().display().to_string()),
        "{jsz}"
    );

    nats.stop();
    assert!(refused(nats.addr()).await);
    nats.restart().await;
    let (status, body) = http_get(nats.monitor_addr(), "/healthz?js-enabled-only=true")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn nats_cluster_routes_three_jetstream_nodes_and_a_node_can_return() {
    let mut cluster = NatsCluster::start().await;
    assert_eq!(cluster.urls().split(',').count(), NatsCluster::SIZE);
    for node in cluster.nodes() {
        let (status, routez) = http_get(node.monitor_addr(), "/routez").await.unwrap();
        assert_eq!(status, 200);
        let routez: serde_json::Value = serde_json::from_str(&routez).unwrap();
        // Each node routes to the two others (2.10 may pool several connections per peer).
        assert!(routez["num_routes"].as_u64().unwrap() >= 2, "{routez}");
        let (status, body) = http_get(node.monitor_addr(), "/healthz").await.unwrap();
        assert_eq!(status, 200, "{body}");
    }

    cluster.node(1).kill();
    assert!(refused(cluster.nodes()[1].addr()).await);
    cluster.node(1).restart().await;
    let (status, body) = http_get(cluster.nodes()[1].monitor_addr(), "/healthz")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn consul_dev_agent_elects_itself_and_comes_back_after_restart() {
    let mut consul = ConsulAgent::start().await;
    let (status, leader) = http_get(consul.addr(), "/v1/status/leader").await.unwrap();
    assert_eq!(status, 200);
    assert!(leader.contains("127.0.0.1:"), "{leader}");
    let (status, _) = http_get(consul.addr(), "/v1/agent/self").await.unwrap();
    assert_eq!(status, 200);

    consul.stop();
    assert!(refused(consul.addr()).await);
    consul.restart().await;
    // A leader again (restart waits for it); ask once more to be sure it answers.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let (status, leader) = http_get(consul.addr(), "/v1/status/leader").await.unwrap();
        if status == 200 && leader.contains("127.0.0.1:") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no leader after restart: {leader}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
