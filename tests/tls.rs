//! TLS for chat clients, against a real node: the TLS listener beside the plain one, the
//! terminal client over TLS, certificate checks, the handshake timeout, and certificate
//! rotation on reload (SIGHUP's path) with a good and a bad new pair. Certificates are made
//! here, by a CA of the test's own (rcgen).

#[path = "support/pki.rs"]
mod pki;
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chat_zinx::client::connection::{Connection, Inbound, TlsClient};
use chat_zinx::config::Config;
use chat_zinx::node::{Listeners, Node};
use chat_zinx::protocol::ids;
use pki::Ca;
use serde_json::{json, Value};
use support::{body_json, Client, PASSWORD, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_chat-zinx");

/// A node with a plain and a TLS listener (or only the TLS one) on the in-process backends.
struct TlsNode {
    node: Option<Node>,
    config: Config,
    plain: Option<std::net::SocketAddr>,
    tls: std::net::SocketAddr,
    cert_file: PathBuf,
    key_file: PathBuf,
    _state: tempfile::TempDir,
}

impl TlsNode {
    async fn start(ca: &Ca, dir: &Path, plain: bool, tweak: impl FnOnce(&mut Config)) -> TlsNode {
        let (cert, key, _) = ca.issue();
        let cert_file = dir.join("node-cert.pem");
        let key_file = dir.join("node-key.pem");
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.listen = if plain {
            "127.0.0.1:0".into()
        } else {
            String::new()
        };
        config.server.state_dir = Some(state.path().to_path_buf());
        config.auth.hash_concurrency = 2;
        config.tls.listen = Some("127.0.0.1:0".into());
        config.tls.cert_file = Some(cert_file.clone());
        config.tls.key_file = Some(key_file.clone());
        tweak(&mut config);
        config.validate().expect("valid configuration");
        let listeners = Listeners {
            plain: if plain {
                Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
            } else {
                None
            },
            tls: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        };
        let node = Node::start_listening(&config, listeners)
            .await
            .expect("node starts");
        TlsNode {
            plain: plain.then_some(node.local_addr),
            tls: node.tls_addr.expect("a TLS listener"),
            node: Some(node),
            config,
            cert_file,
            key_file,
            _state: state,
        }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    fn tls_target(&self) -> String {
        format!("tls://{}", self.tls)
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown(Duration::from_millis(200)).await;
        }
    }
}

/// A framed TLS connection through the client's own connection code.
async fn tls_connect(node: &TlsNode, tls: &TlsClient) -> std::io::Result<Connection> {
    Connection::open(&node.tls_target(), WAIT, Some(tls)).await
}

async fn next(conn: &mut Connection) -> (u32, Value) {
    match tokio::time::timeout(WAIT, conn.recv())
        .await
        .expect("a frame in time")
    {
        Inbound::Frame(f) => (f.id, body_json(&f.body)),
        Inbound::Closed(why) => panic!("connection closed: {why}"),
    }
}

async fn request(conn: &mut Connection, id: u32, body: Value, reply: u32) -> Value {
    conn.send(id, body.to_string().as_bytes()).await.unwrap();
    loop {
        let (got, body) = next(conn).await;
        if got == reply {
            return body;
        }
        assert!(
            got == ids::TEXT_MSG || got == ids::GROUP_TEXT_PUSH,
            "expected {reply}, got {got}: {body}"
        );
    }
}

/// Says Hello (v2: sends are acknowledged), registers `name` and logs in.
async fn register_and_login(conn: &mut Connection, name: &str) -> Value {
    let hello = request(
        conn,
        ids::HELLO_REQ,
        json!({"version": 2, "client": "tests/tls"}),
        ids::HELLO_RESP,
    )
    .await;
    assert_eq!(hello["version"], 2, "{hello}");
    let r = request(
        conn,
        ids::REGISTER_REQ,
        json!({"username": name, "password": PASSWORD, "email": format!("{name}@example.org")}),
        ids::REGISTER_RESP,
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    login(conn, name).await
}

async fn login(conn: &mut Connection, name: &str) -> Value {
    let r = request(
        conn,
        ids::LOGIN_REQ,
        json!({"username": name, "password": PASSWORD}),
        ids::LOGIN_RESP,
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    r["data"].clone()
}

/// A v2 group send: its 311, then its 402 (returned).
async fn group_send(conn: &mut Connection, body: Value) -> Value {
    let ack = request(conn, ids::GROUP_TEXT_REQ, body, ids::GROUP_TEXT_ACK).await;
    assert_eq!(ack["status"], 0, "{ack}");
    let (id, ack) = next(conn).await;
    assert_eq!(id, ids::SEND_ACK, "{ack}");
    ack
}

async fn ping(conn: &mut Connection) {
    conn.send(ids::PING, b"ping").await.unwrap();
    let (id, _) = next(conn).await;
    assert_eq!(id, ids::PONG);
}

/// The terminal client, scripted, with extra arguments.
fn cli(args: &[&str], commands: &[&str]) -> tokio::process::Command {
    cli_waiting("20s", args, commands)
}

/// [`cli`] with its own `--timeout` (also how long it keeps trying to connect).
fn cli_waiting(timeout: &str, args: &[&str], commands: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("client")
        .args(args)
        .args(["--json", "--timeout", timeout]);
    for cmd in commands {
        c.args(["-e", cmd]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_chats_over_tls_while_the_plain_listener_serves() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), true, |_| {}).await;

    // Bob on the plain listener, as the original clients connect.
    let mut bob = Client::connect(node.plain.unwrap()).await;
    bob.register("bob").await;
    bob.login("bob").await;

    // Alice with the terminal client over TLS, trusting the test's CA.
    let ca_file = ca.pem_file.to_str().unwrap();
    let tls_addr = node.tls.to_string();
    let mut alice = cli(
        &[&tls_addr, "--tls", "--ca", ca_file],
        &[
            "/register alice secret1 alice@example.org",
            "/login alice secret1",
            "/msg bob hello over tls",
            "/wait 208 1 20000",
        ],
    )
    .spawn()
    .unwrap();
    let push = bob.expect_skipping(ids::TEXT_MSG).await;
    assert_eq!(push["content"], "hello over tls");
    bob.msg("alice", "hello in clear").await;
    let out = tokio::time::timeout(WAIT, async {
        let mut stdout = Vec::new();
        alice
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .await
            .unwrap();
        let mut stderr = Vec::new();
        alice
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut stderr)
            .await
            .unwrap();
        (alice.wait().await.unwrap(), stdout, stderr)
    })
    .await
    .expect("the client ends");
    let (status, stdout, stderr) = out;
    assert!(
        status.success(),
        "client: {}",
        String::from_utf8_lossy(&stderr)
    );
    let lines = json_lines(&stdout);
    let connected = lines
        .iter()
        .find(|v| v["event"] == "connected")
        .unwrap_or_else(|| panic!("a connected event: {lines:?}"));
    assert_eq!(
        connected["addr"],
        format!("tls://{tls_addr}"),
        "{connected}"
    );
    let got = lines
        .iter()
        .find(|v| v["type"] == "push" && v["id"] == ids::TEXT_MSG)
        .unwrap_or_else(|| panic!("alice printed bob's message: {lines:?}"));
    assert_eq!(got["body"]["content"], "hello in clear");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_node_serves_and_answers_its_health_probe() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), false, |_| {}).await;
    assert!(node.plain.is_none());
    // The TLS accept loop answers the probes when there is no plain one.
    assert!(node.node().health().await.ready());
    let mut carol = tls_connect(&node, &ca.client()).await.unwrap();
    register_and_login(&mut carol, "carol").await;
    let mut dave = tls_connect(&node, &ca.client()).await.unwrap();
    register_and_login(&mut dave, "dave").await;
    let ack = request(
        &mut carol,
        ids::TEXT_MSG,
        json!({"to_user_id": "dave", "content": "tls to tls", "client_msg_id": "c1"}),
        ids::SEND_ACK,
    )
    .await;
    assert_eq!(ack["code"], 0, "{ack}");
    let (id, push) = next(&mut dave).await;
    assert_eq!(
        (id, push["content"].as_str()),
        (ids::TEXT_MSG, Some("tls to tls"))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let other = Ca::new(dir.path(), "other");
    let node = TlsNode::start(&ca, dir.path(), true, |_| {}).await;

    let e = tls_connect(&node, &other.client())
        .await
        .err()
        .expect("a certificate of an unknown CA is refused");
    let text = e.to_string();
    assert!(text.contains("TLS handshake"), "{text}");
    assert!(text.contains("--ca"), "says what to check: {text}");
    // A name the certificate does not carry is refused too.
    let wrong_name = TlsClient::new(Some(&ca.pem_file), Some("chat.example.org")).unwrap();
    let e = tls_connect(&node, &wrong_name)
        .await
        .err()
        .expect("wrong name");
    assert!(e.to_string().contains("TLS handshake"), "{e}");

    // The terminal client says so and fails.
    let out = cli_waiting(
        "2s",
        &[
            &node.tls.to_string(),
            "--tls",
            "--ca",
            other.pem_file.to_str().unwrap(),
        ],
        &["/login alice secret1"],
    )
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("TLS handshake"), "{all}");

    // A CA file that holds no certificate is refused before connecting.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = TlsClient::new(Some(&empty), None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("empty.pem") && e.contains("no usable PEM certificate"),
        "{e}"
    );

    // The node still serves, on both listeners.
    let mut ok = tls_connect(&node, &ca.client()).await.unwrap();
    ping(&mut ok).await;
    let mut plain = Client::connect(node.plain.unwrap()).await;
    plain.assert_quiet().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_plain_client_on_the_tls_port_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), true, |c| {
        c.tls.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    // Says nothing: dropped once the handshake timeout passes.
    let mut silent = TcpStream::connect(node.tls).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("the node drops a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    // Speaks the plain protocol to the TLS port: the handshake fails, the socket is closed.
    let mut plain = Client::connect(node.tls).await;
    let _ = plain
        .try_send_raw(&chat_zinx::protocol::codec::encode(ids::PING, b"ping"))
        .await;
    let frames = plain.until_closed().await;
    assert!(
        frames.is_empty(),
        "no chat frame on the TLS port: {frames:?}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_presents_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old");
    let node = TlsNode::start(&old_ca, dir.path(), true, |_| {}).await;
    let mut open = tls_connect(&node, &old_ca.client()).await.unwrap();
    register_and_login(&mut open, "erin").await;

    // Rotate: a certificate of another CA in the same files, then the reload (SIGHUP's path).
    let new_ca = Ca::new(dir.path(), "new");
    let (cert, key, der) = new_ca.issue();
    std::fs::write(&node.cert_file, cert).unwrap();
    std::fs::write(&node.key_file, key).unwrap();
    node.node()
        .reload(&node.config)
        .expect("the new pair loads");
    assert_eq!(node.node().tls_certificate().as_deref(), Some(&der[..]));

    // A new connection sees the new certificate: trusted by the new CA only.
    let mut fresh = tls_connect(&node, &new_ca.client()).await.unwrap();
    register_and_login(&mut fresh, "frank").await;
    let e = tls_connect(&node, &old_ca.client()).await.err();
    assert!(e.is_some(), "the old certificate is no longer presented");

    // The connection opened before the rotation goes on.
    let ack = request(
        &mut open,
        ids::TEXT_MSG,
        json!({"to_user_id": "frank", "content": "still here", "client_msg_id": "r1"}),
        ids::SEND_ACK,
    )
    .await;
    assert_eq!(ack["code"], 0, "{ack}");
    let (id, push) = next(&mut fresh).await;
    assert_eq!(
        (id, push["content"].as_str()),
        (ids::TEXT_MSG, Some("still here"))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_pair_is_refused_and_the_old_certificate_stays() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), true, |_| {}).await;
    let before = node.node().tls_certificate().unwrap();

    // A key that belongs to another certificate.
    let (cert, _, _) = ca.issue();
    let (_, other_key, _) = ca.issue();
    std::fs::write(&node.cert_file, &cert).unwrap();
    std::fs::write(&node.key_file, &other_key).unwrap();
    let e = node.node().reload(&node.config).unwrap_err().to_string();
    assert!(
        e.contains("does not belong") && e.contains("node-key.pem") && e.contains("node-cert.pem"),
        "{e}"
    );
    // A certificate file that is not PEM.
    std::fs::write(&node.cert_file, "garbage").unwrap();
    let e = node.node().reload(&node.config).unwrap_err().to_string();
    assert!(
        e.contains("node-cert.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
    // A key file that is gone.
    let mut config = node.config.clone();
    config.tls.key_file = Some(dir.path().join("missing-key.pem"));
    std::fs::write(&node.cert_file, &cert).unwrap();
    let e = node.node().reload(&config).unwrap_err().to_string();
    assert!(e.contains("missing-key.pem"), "{e}");

    assert_eq!(
        node.node().tls_certificate().unwrap(),
        before,
        "the old pair stays"
    );
    let mut c = tls_connect(&node, &ca.client()).await.unwrap();
    ping(&mut c).await;
    node.stop().await;
}

/// A TLS connection counts against `server.max_connections` from its TCP accept on, before its
/// handshake, exactly as a plain socket: stalled handshakes fill the node's headroom and a
/// plain connection is then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_count_against_the_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), true, |c| {
        c.server.max_connections = 1;
        c.tls.handshake_timeout = Duration::from_secs(300);
    })
    .await;
    // max_connections + max_connections / 10 + 16 are taken (the rest are redirected or told
    // why); these never finish their handshake.
    let cap = 1 + 16;
    let mut stalled = Vec::new();
    for _ in 0..cap {
        stalled.push(TcpStream::connect(node.tls).await.unwrap());
    }
    let ctx = &node.node().ctx;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ctx.open.load(std::sync::atomic::Ordering::Relaxed) < cap {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled handshakes are not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut plain = Client::connect(node.plain.unwrap()).await;
    let frames = plain.until_closed().await;
    assert!(frames.is_empty(), "refused at once: {frames:?}");
    // A handshake that ends frees its place.
    drop(stalled.pop());
    while ctx.open.load(std::sync::atomic::Ordering::Relaxed) >= cap {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place is not freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Taken (the handshake completes) and, past max_connections, told "this node is full"
    // (code 15) by the session, as a plain connection would be.
    let mut tls = tls_connect(&node, &ca.client()).await.unwrap();
    tls.send(ids::PING, b"ping").await.unwrap();
    let (id, body) = next(&mut tls).await;
    assert_eq!(id, ids::ERROR, "{body}");
    assert_eq!(
        body["code"],
        chat_zinx::protocol::messages::code::NODE_FULL,
        "{body}"
    );
    node.stop().await;
}

/// Two nodes on one NATS log, every client over TLS: a group message sent on one node is
/// pushed live to a member on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_crosses_nodes_between_tls_clients() {
    let nats = chat_zinx::harness::NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let secret = dir.path().join("token_secret");
    let on_nats = |c: &mut Config| {
        c.nats.url = Some(nats.url());
        c.nats.request_timeout = Duration::from_secs(1);
        c.auth.token_secret_file = Some(secret.clone());
    };
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = TlsNode::start(&ca, a_dir.path(), false, on_nats).await;
    let b = TlsNode::start(&ca, b_dir.path(), false, on_nats).await;
    let mut alice = tls_connect(&a, &ca.client()).await.unwrap();
    register_and_login(&mut alice, "alice").await;
    let mut bob = tls_connect(&b, &ca.client()).await.unwrap();
    register_and_login(&mut bob, "bob").await;
    let created = request(
        &mut alice,
        ids::CREATE_GROUP_REQ,
        json!({"name": "across", "description": "d"}),
        ids::CREATE_GROUP_RESP,
    )
    .await;
    let gid = created["id"].as_u64().unwrap();
    let joined = request(
        &mut bob,
        ids::JOIN_GROUP_REQ,
        json!({"group_id": gid}),
        ids::JOIN_GROUP_RESP,
    )
    .await;
    assert_eq!(joined["message"], "成功加入群组", "{joined}");
    // Node b subscribes to the group once it learns of bob's membership; a message before
    // that is in the log but not pushed live: probe until a push arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        let body = json!({"group_id": gid, "content": format!("probe {n}"), "client_msg_id": format!("p{n}")});
        let ack = group_send(&mut alice, body).await;
        assert_eq!(ack["code"], 0, "{ack}");
        bob.send(ids::PING, b"ping").await.unwrap();
        let mut pushed = false;
        loop {
            let (id, body) = next(&mut bob).await;
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
    let body = json!({"group_id": gid, "content": "hello across", "client_msg_id": "final"});
    let ack = group_send(&mut alice, body).await;
    assert_eq!(ack["code"], 0, "{ack}");
    let push = loop {
        let (id, p) = next(&mut bob).await;
        assert_eq!(id, ids::GROUP_TEXT_PUSH, "{p}");
        if p["content"] == "hello across" {
            break p;
        }
    };
    assert_eq!(push["msg_id"], ack["msg_id"]);
    a.stop().await;
    b.stop().await;
}

/// Nodes in a real Consul advertise their TLS port: the client's discovery connects over TLS,
/// and a client on TLS that is redirected by a draining node moves to the peer's TLS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_and_redirects_keep_a_tls_client_on_tls() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let consul = chat_zinx::harness::ConsulAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let in_consul = |c: &mut Config| c.consul.addr = Some(consul.url());
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let a = TlsNode::start(&ca, a_dir.path(), true, in_consul).await;
    let b = TlsNode::start(&ca, b_dir.path(), true, in_consul).await;
    let ca_file = ca.pem_file.to_str().unwrap().to_string();
    let b_target = b.tls_target();

    // Discovery: both nodes offer TLS, so the client connects to a TLS port.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let nodes =
            chat_zinx::client::discovery::nodes_from_consul(&consul.url(), "chat-zinx", None, true)
                .await;
        if nodes.is_ok_and(|n| n.len() == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both nodes in Consul"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cli(&["--consul", &consul.url(), "--ca", &ca_file], &["/ping"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let connected = lines.iter().find(|v| v["event"] == "connected").unwrap();
    let addr = connected["addr"].as_str().unwrap();
    assert!(
        addr == a.tls_target() || addr == b_target,
        "a TLS port: {connected}"
    );

    // A client on a's TLS port; a drains: the 406 names b's TLS port and the client goes there.
    let mut client = cli(&[&a.tls_target(), "--ca", &ca_file], &["/sleep 60000"])
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap()).lines();
    loop {
        if next_json(&mut out).await["event"] == "connected" {
            break;
        }
    }
    // a knows b (its watch of Consul), so its redirect can name it.
    let registry = a.node().ctx.core.backends().registry.clone();
    while registry.nodes().await.map_or(0, |n| n.len()) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "a never saw b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    let reconnected = loop {
        let v = next_json(&mut out).await;
        if v["event"] == "redirect" {
            assert_eq!(v["addr"], b_target, "{v}");
        }
        if v["event"] == "reconnected" {
            break v;
        }
    };
    assert_eq!(reconnected["addr"], b_target, "{reconnected}");
    let _ = client.kill().await;
    b.stop().await;
}

/// The next JSON line of a client's output.
async fn next_json(
    out: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(WAIT, out.next_line())
        .await
        .expect("client output in time")
        .unwrap()
        .expect("the client runs");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

/// A TLS connection from a trusted proxy: its PROXY header first, in plain text, then the
/// handshake; the frames read back.
async fn tls_via_proxy(
    node: &TlsNode,
    ca: &Ca,
    header: &[u8],
) -> tokio_util::codec::Framed<
    tokio_rustls::client::TlsStream<TcpStream>,
    chat_zinx::protocol::FrameCodec,
> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca.pem_file).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = TcpStream::connect(node.tls).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake after the PROXY header");
    tokio_util::codec::Framed::new(tls, chat_zinx::protocol::FrameCodec::client())
}

/// On the TLS listener a trusted proxy's PROXY header comes before the handshake, and its
/// client address is the one limited per address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_comes_before_the_tls_handshake_and_names_the_client() {
    use futures_util::{SinkExt, StreamExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "main");
    let node = TlsNode::start(&ca, dir.path(), true, |c| {
        c.server.proxy_protocol_from = Some(vec!["127.0.0.1".into()]);
        c.server.max_unauthenticated_per_address = 1;
    })
    .await;
    let header = support::proxy_v2(Some("198.51.100.20:5000".parse().unwrap()));
    let mut first = tls_via_proxy(&node, &ca, &header).await;
    first
        .send(chat_zinx::protocol::Frame {
            id: ids::PING,
            body: bytes::Bytes::from_static(b"ping"),
        })
        .await
        .unwrap();
    let f = tokio::time::timeout(WAIT, first.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.id, ids::PONG);
    // A second connection of that client: past its share (1), told so (code 15).
    let mut second = tls_via_proxy(&node, &ca, &header).await;
    let f = tokio::time::timeout(WAIT, second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.id, ids::ERROR);
    assert_eq!(body_json(&f.body)["code"], 15);
    // Another client behind the proxy is served.
    let other = support::proxy_v2(Some("198.51.100.21:5000".parse().unwrap()));
    let mut third = tls_via_proxy(&node, &ca, &other).await;
    third
        .send(chat_zinx::protocol::Frame {
            id: ids::PING,
            body: bytes::Bytes::from_static(b"ping"),
        })
        .await
        .unwrap();
    let f = tokio::time::timeout(WAIT, third.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.id, ids::PONG);
    node.stop().await;
}
