//! The design's cluster scenarios with real daemon processes (`chat-zinx serve`) on real
//! nats-server, redis-server and consul: a group across three nodes, and `kill -9` of a node
//! under traffic.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chat_zinx::harness::{http_get, ConsulAgent, NatsServer, RedisServer};
use chat_zinx::protocol::ids;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `chat-zinx serve` process, killed when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    /// A daemon whose token secret file is `dir/token_secret`, shared by the test's daemons.
    async fn spawn(dir: &Path, name: &str, env: &[(&str, String)]) -> Daemon {
        Self::spawn_with_secret(dir, name, env, Some(&dir.join("token_secret"))).await
    }

    /// A daemon with `auth.token_secret_file` = `secret`, or unset.
    async fn spawn_with_secret(
        dir: &Path,
        name: &str,
        env: &[(&str, String)],
        secret: Option<&Path>,
    ) -> Daemon {
        let state = dir.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-zinx"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("CHAT_ZINX_SERVER__LISTEN", "127.0.0.1:0")
            .env("CHAT_ZINX_SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("CHAT_ZINX_SERVER__NODE_ID", name)
            .env("CHAT_ZINX_SERVER__STATE_DIR", &state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(secret) = secret {
            cmd.env("CHAT_ZINX_AUTH__TOKEN_SECRET_FILE", secret);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("chat-zinx starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = tokio::time::Instant::now() + WAIT;
        let addr = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("the daemon logs its address in time")
                .expect("read stderr")
                .unwrap_or_else(|| panic!("daemon {name} exited during start-up"));
            if line.contains("listening") {
                if let Some(i) = line.find(" addr=") {
                    let rest = &line[i + 6..];
                    break rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
        };
        // Keep draining its log so the pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Daemon { child, addr }
    }

    fn kill9(&mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn backend_env(nats: &NatsServer, redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("CHAT_ZINX_NATS__URL", nats.url()),
        ("CHAT_ZINX_REDIS__URL", redis.url()),
        ("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "1s".into()),
        ("CHAT_ZINX_REDIS__PRESENCE_TTL", "3s".into()),
    ]
}

async fn login_v2(addr: SocketAddr, name: &str, register: bool) -> Client {
    let mut c = Client::connect(addr).await;
    c.hello().await;
    if register {
        c.register(name).await;
    }
    c.login(name).await;
    c
}

/// Logs in with `token` on the node at `addr`; the LOGIN_RESP code.
async fn token_login_code(addr: SocketAddr, token: &str) -> Value {
    let mut c = Client::connect(addr).await;
    c.hello().await;
    c.send(ids::LOGIN_REQ, json!({"token": token})).await;
    c.expect(ids::LOGIN_RESP).await["code"].clone()
}

/// The README's cluster recipe as written: three nodes started at once on one token secret
/// file that does not exist yet. The file appears whole (written aside, then linked), so no
/// node reads it half written: all three serve, and a token of one node logs in on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_on_a_missing_secret_file_all_serve_and_share_it() {
    let (nats, redis) = (NatsServer::start().await, RedisServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let env = backend_env(&nats, &redis);
    let (a, b, c) = tokio::join!(
        Daemon::spawn(dir.path(), "n1", &env),
        Daemon::spawn(dir.path(), "n2", &env),
        Daemon::spawn(dir.path(), "n3", &env),
    );
    let alice = login_v2(a.addr, "alice", true).await;
    let token = alice.token();
    for node in [&b, &c, &a] {
        assert_eq!(token_login_code(node.addr, &token).await, 0);
    }
    let secret = std::fs::read(dir.path().join("token_secret")).unwrap();
    assert_eq!(secret.len(), 64, "the whole secret, hex");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Without `auth.token_secret_file`, three nodes started at once on one NATS agree on one
/// secret through the JetStream KV (the first to create it wins, the others read it): a token
/// of one node logs in on the others, and no node wrote a secret file of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_file_three_nodes_agree_on_one_secret_through_nats() {
    let (nats, redis) = (NatsServer::start().await, RedisServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let env = backend_env(&nats, &redis);
    let (a, b, c) = tokio::join!(
        Daemon::spawn_with_secret(dir.path(), "n1", &env, None),
        Daemon::spawn_with_secret(dir.path(), "n2", &env, None),
        Daemon::spawn_with_secret(dir.path(), "n3", &env, None),
    );
    let bob = login_v2(c.addr, "bob", true).await;
    let token = bob.token();
    for node in [&a, &b, &c] {
        assert_eq!(token_login_code(node.addr, &token).await, 0);
    }
    for name in ["n1", "n2", "n3"] {
        assert!(
            !dir.path().join(name).join("token_secret").exists(),
            "{name} made up a secret of its own"
        );
    }
}

/// A group message reaches every online member on every node exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_a_group_message_reaches_every_member_once_in_order() {
    let (nats, redis) = (NatsServer::start().await, RedisServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let env = backend_env(&nats, &redis);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Daemon::spawn(dir.path(), &format!("n{i}"), &env).await);
    }
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            members.push(login_v2(node.addr, &format!("u{i}{j}"), true).await);
        }
    }
    let mut sender = members.remove(0);
    let gid = sender.create_group("three-nodes").await;
    for m in members.iter_mut() {
        m.join_group(gid).await;
    }
    // Wait until every node listens to the group: probe until all members got one push.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sender
            .send(
                ids::GROUP_TEXT_REQ,
                json!({"group_id": gid, "content": "probe"}),
            )
            .await;
        sender.expect(ids::GROUP_TEXT_ACK).await;
        sender.expect(ids::SEND_ACK).await;
        let mut all = true;
        for m in members.iter_mut() {
            m.send_body(ids::PING, b"ping").await;
            let mut got = false;
            loop {
                let (id, _) = m.recv().await;
                if id == ids::PONG {
                    break;
                }
                got |= id == ids::GROUP_TEXT_PUSH;
            }
            all &= got;
        }
        if all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every node listens to the group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for k in 0..20 {
        sender
            .send(
                ids::GROUP_TEXT_REQ,
                json!({"group_id": gid, "content": format!("m{k}")}),
            )
            .await;
        assert_eq!(sender.expect(ids::GROUP_TEXT_ACK).await["status"], 0);
        sender.expect(ids::SEND_ACK).await;
    }
    for m in members.iter_mut() {
        let mut got = Vec::new();
        while got.len() < 20 {
            let content = m.expect(ids::GROUP_TEXT_PUSH).await["content"]
                .as_str()
                .unwrap()
                .to_string();
            // A late push of an earlier probe may still come first.
            if content != "probe" {
                got.push(content);
            }
        }
        let want: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
        assert_eq!(got, want);
        m.assert_quiet().await;
    }
}

/// `kill -9` of a node under traffic: its client resumes on another node with its token and
/// syncs; no acknowledged message is lost or repeated; Consul marks the node critical and
/// removes it; its presence expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_loses_nothing_acknowledged_and_the_cluster_forgets_it() {
    let (nats, redis) = (NatsServer::start().await, RedisServer::start().await);
    let consul = ConsulAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = backend_env(&nats, &redis);
    env.push(("CHAT_ZINX_CONSUL__ADDR", consul.url()));
    env.push(("CHAT_ZINX_CONSUL__CHECK_TTL", "2s".into()));
    env.push(("CHAT_ZINX_CONSUL__DEREGISTER_AFTER", "1m".into()));
    let mut doomed = Daemon::spawn(dir.path(), "doomed", &env).await;
    let survivor = Daemon::spawn(dir.path(), "survivor", &env).await;

    let mut alice = login_v2(survivor.addr, "alice", true).await;
    let mut bob = login_v2(doomed.addr, "bob", true).await;
    let mut carol = login_v2(doomed.addr, "carol", true).await;
    let gid = alice.create_group("watch").await;
    carol.join_group(gid).await;
    bob.send(ids::SYNC_REQ, json!({})).await;
    let mut cursor = bob.expect(ids::SYNC_RESP).await["cursor"].clone();
    let token = bob.token();

    // Traffic: alice sends, bob reads live; then the node dies mid-stream.
    let mut acked = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for k in 0..30 {
        if k == 15 {
            doomed.kill9();
        }
        alice
            .send(ids::TEXT_MSG, json!({"to_user_id": "bob", "content": format!("k{k}"), "client_msg_id": format!("k-{k}")}))
            .await;
        let ack = alice.expect(ids::SEND_ACK).await;
        assert_eq!(ack["code"], 0, "{ack}");
        acked.push(ack["msg_id"].as_str().unwrap().to_string());
    }
    for f in bob.until_closed().await {
        if f.id == ids::TEXT_MSG {
            seen.insert(body_json(&f.body)["msg_id"].as_str().unwrap().to_string());
        }
    }

    // Bob resumes on the survivor with his token and syncs from his cursor.
    let mut bob = Client::connect(survivor.addr).await;
    bob.hello().await;
    bob.send(ids::LOGIN_REQ, json!({"token": token})).await;
    assert_eq!(bob.expect(ids::LOGIN_RESP).await["code"], 0);
    loop {
        bob.send(ids::SYNC_REQ, json!({"cursor": cursor, "limit": 7}))
            .await;
        let r = bob.expect_skipping(ids::SYNC_RESP).await;
        for m in r["messages"].as_array().unwrap() {
            seen.insert(m["msg_id"].as_str().unwrap().to_string());
        }
        cursor = r["cursor"].clone();
        if r["has_more"] == false {
            break;
        }
    }
    for id in &acked {
        assert!(seen.contains(id), "acknowledged message {id} lost");
    }

    // Presence: carol was only on the dead node; she shows offline once her entries expire.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        alice
            .send(ids::GROUP_MEMBERS_REQ, json!({"group_id": gid}))
            .await;
        let r = alice.expect_skipping(ids::GROUP_MEMBERS_RESP).await;
        let carol_online = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["username"] == "carol" && m["is_online"] == true);
        if !carol_online {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence of a dead node never expires"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Consul: critical first, then removed (Consul's minimum is 1 minute, then its reaper).
    let consul_addr = consul.addr();
    let checks = |status: &'static str| async move {
        let (_, body) = http_get(consul_addr, "/v1/health/checks/chat-zinx")
            .await
            .unwrap();
        let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        list.iter()
            .any(|c| c["ServiceID"] == "doomed" && c["Status"] == status)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !checks("critical").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node never went critical"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let (_, body) = http_get(consul_addr, "/v1/health/checks/chat-zinx")
            .await
            .unwrap();
        let list: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        if !list.iter().any(|c| c["ServiceID"] == "doomed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead node was never deregistered"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(survivor);
}
