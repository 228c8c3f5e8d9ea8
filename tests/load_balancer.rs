//! The load balancer for v1 clients (`deploy/haproxy/haproxy.cfg`, run as it is by a real
//! haproxy) in front of two nodes on real NATS, Redis and Consul: the balancer finds the nodes
//! in Consul's DNS, a v1 client through it chats with a user it put on the other node, and a
//! node that drains leaves rotation while it still holds connections: every new connection
//! goes to the other node. A node that cannot reach NATS (cut through a proxy) cannot serve:
//! its Consul check turns warning, it leaves rotation, and comes back after the heal. While
//! Consul does not answer, the balancer keeps the nodes it last saw. The balancer sends the
//! PROXY protocol (v2) and the nodes trust it: a node sees a client's address, not the
//! balancer's.

mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chat_zinx::harness::{http_get, ConsulAgent, Haproxy, NatsServer, RedisServer, TcpProxy};
use chat_zinx::protocol::ids;
use support::*;

/// The backend of the configuration file.
const BACKEND: &str = "chat_nodes";

/// haproxy connects to the nodes from 127.0.0.1: the nodes trust that address (its
/// connections start with a PROXY header). Clients that connect to a node directly do so
/// from another loopback address.
const BALANCER: &str = "127.0.0.1";
const DIRECT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A v1 client's address when the test checks what the node sees.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The log lines of the nodes' sessions (logins), captured for the whole test process.
fn session_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let capture = Capture(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("chat_zinx::server::session=info")
            .with_ansi(false)
            .with_writer(move || capture.clone())
            .try_init();
        buf
    })
    .clone()
}

fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg")
}

struct Cluster {
    nats: NatsServer,
    redis: RedisServer,
    consul: ConsulAgent,
    secret: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        Cluster {
            nats: NatsServer::start().await,
            redis: RedisServer::start().await,
            consul: ConsulAgent::start().await,
            secret: dir.path().join("token_secret"),
            _dir: dir,
        }
    }

    async fn node(&self) -> TestServer {
        self.node_on(self.nats.url()).await
    }

    /// A node whose NATS URL is `nats` (a proxy in front of the cluster's server).
    async fn node_on(&self, nats: String) -> TestServer {
        let (redis, consul, secret) = (self.redis.url(), self.consul.url(), self.secret.clone());
        TestServer::with(move |c| {
            c.nats.url = Some(nats);
            c.nats.request_timeout = Duration::from_secs(2);
            c.redis.url = Some(redis);
            c.consul.addr = Some(consul);
            c.auth.token_secret_file = Some(secret);
            c.server.proxy_protocol_from = Some(vec![BALANCER.into()]);
        })
        .await
    }
}

/// Waits until the balancer sends new connections to exactly `want`.
async fn wait_for_rotation(lb: &Haproxy, want: &[SocketAddr]) {
    let mut want = want.to_vec();
    want.sort();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = lb.in_rotation(BACKEND).await;
        if now.as_ref().is_ok_and(|n| *n == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy never had {want:?} in rotation; it has {now:?}: {:?}\nits log:\n{}",
            lb.servers(BACKEND).await,
            lb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logged-in users on a node.
fn users(server: &TestServer) -> usize {
    server.node().ctx.hub.user_count()
}

/// A v1 client as the original client is: connect, register, log in (no hello).
async fn v1_user(lb: &Haproxy, name: &str) -> Client {
    let mut c = Client::connect(lb.addr()).await;
    c.register(name).await;
    c.login(name).await;
    c
}

/// The same, connecting to the balancer from `source`.
async fn v1_user_from(lb: &Haproxy, name: &str, source: IpAddr) -> Client {
    let mut c = Client::connect_from(lb.addr(), source, b"").await;
    c.register(name).await;
    c.login(name).await;
    c
}

/// Waits until a ping is answered: the login (and its backlog) is done.
async fn settled(c: &mut Client) {
    c.send_body(ids::PING, b"ping").await;
    c.expect_skipping(ids::PONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_clients_chat_through_the_balancer_and_a_drained_node_gets_no_new_connections() {
    let log = session_log();
    let cluster = Cluster::start().await;
    let lb = Haproxy::start(&config_file(), cluster.consul.dns_addr()).await;
    let a = cluster.node().await;
    let b = cluster.node().await;
    wait_for_rotation(&lb, &[a.addr, b.addr]).await;

    // Least connections: alice holds a connection to one node, so bob goes to the other.
    // Alice connects from 127.0.0.3: the node sees her address (the PROXY header), not the
    // balancer's (127.0.0.1).
    let mut alice = v1_user_from(&lb, "alice", CLIENT).await;
    settled(&mut alice).await;
    let logins = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let line = logins
        .lines()
        .find(|l| l.contains("logged in"))
        .unwrap_or_else(|| panic!("no login logged:\n{logins}"));
    assert!(
        line.contains(&format!("peer={CLIENT}")),
        "the node logs alice's address, {CLIENT}: {line}"
    );
    let (alices, bobs) = match (users(&a), users(&b)) {
        (1, 0) => (a, b),
        (0, 1) => (b, a),
        other => panic!("alice is logged in on one node: {other:?}"),
    };
    let mut bob = v1_user(&lb, "bob").await;
    settled(&mut bob).await;
    assert_eq!(
        (users(&alices), users(&bobs)),
        (1, 1),
        "bob is on the other node"
    );

    alice.msg("bob", "through the balancer").await;
    assert_eq!(
        bob.expect(ids::TEXT_MSG).await["content"],
        "through the balancer"
    );
    bob.msg("alice", "and back").await;
    assert_eq!(alice.expect(ids::TEXT_MSG).await["content"], "and back");

    // Two more users on alice's node, straight to it: a drain that takes a while.
    let mut held = Vec::new();
    for name in ["dave", "erin"] {
        let mut c = Client::connect_from(alices.addr, DIRECT, b"").await;
        c.register(name).await;
        c.login(name).await;
        settled(&mut c).await;
        held.push(c);
    }
    assert_eq!(users(&alices), 3);

    // Drain alice's node (what SIGTERM does), spread over 20 s.
    let mut alices = alices;
    let drained = alices.addr;
    let node = alices.node.take().expect("running");
    let drain = tokio::spawn(node.shutdown(Duration::from_secs(20)));

    // The drain has begun once the node refuses connections (it left Consul just before).
    // At once, before the balancer may have noticed: a new connection is not lost (the
    // drained node refuses it, the balancer tries the other).
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(drained).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drained node still accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut carol = v1_user(&lb, "carol").await;
    settled(&mut carol).await;
    // Then the drained node leaves rotation while it still holds connections.
    let started = std::time::Instant::now();
    wait_for_rotation(&lb, &[bobs.addr]).await;
    eprintln!(
        "the drained node left rotation {:?} after carol's login",
        started.elapsed()
    );
    assert!(!drain.is_finished(), "the drain is still running");
    for i in 0..6 {
        let mut c = v1_user(&lb, &format!("user{i}")).await;
        settled(&mut c).await;
        held.push(c);
    }
    assert_eq!(
        users(&bobs),
        1 + 1 + 6,
        "bob, carol and every new connection are on the node that serves"
    );

    // Alice's connection is closed by the drain (v1: an error frame, then the close); the
    // original client reconnects to the same address, the balancer, and chats again.
    alice.until_closed().await;
    let mut alice = Client::connect(lb.addr()).await;
    alice.login("alice").await;
    settled(&mut alice).await;
    alice.msg("carol", "after the drain").await;
    assert_eq!(
        carol.expect(ids::TEXT_MSG).await["content"],
        "after the drain"
    );

    drain.await.expect("the drain finishes");
    bobs.stop().await;
}

/// The status and output of a node's Consul check.
async fn consul_check(consul: &ConsulAgent, node_id: &str) -> (String, String) {
    let (_, body) = http_get(consul.addr(), "/v1/health/checks/chat-zinx")
        .await
        .expect("consul answers");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
    checks
        .iter()
        .find(|c| c["ServiceID"] == node_id)
        .map(|c| {
            (
                c["Status"].as_str().unwrap_or_default().to_string(),
                c["Output"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_reach_nats_leaves_rotation_and_comes_back_after_the_heal() {
    let cluster = Cluster::start().await;
    let lb = Haproxy::start(&config_file(), cluster.consul.dns_addr()).await;
    let proxy = TcpProxy::start(cluster.nats.addr());
    let cut = cluster.node_on(format!("nats://{}", proxy.addr())).await;
    let whole = cluster.node().await;
    wait_for_rotation(&lb, &[cut.addr, whole.addr]).await;
    let cut_id = cut.node().node_id().to_string();
    assert_eq!(consul_check(&cluster.consul, &cut_id).await.0, "passing");

    proxy.cut().await;
    // The node is not ready (its store and bus are gone): its check says so, and the balancer
    // stops sending it new connections.
    wait_for_rotation(&lb, &[whole.addr]).await;
    let (status, output) = consul_check(&cluster.consul, &cut_id).await;
    assert_eq!(status, "warning", "{output}");
    assert!(output.starts_with("not serving: "), "{output}");
    // (A login on the cut node would be refused: each of these succeeds on the other.)
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = v1_user(&lb, &format!("user{i}")).await;
        settled(&mut c).await;
        held.push(c);
    }
    assert_eq!((users(&cut), users(&whole)), (0, 4));

    proxy.heal();
    wait_for_rotation(&lb, &[cut.addr, whole.addr]).await;
    assert_eq!(consul_check(&cluster.consul, &cut_id).await.0, "passing");
    cut.stop().await;
    whole.stop().await;
}

/// DNS queries haproxy has sent to Consul (`show resolvers`).
async fn dns_queries_sent(lb: &Haproxy) -> u64 {
    let text = lb.command("show resolvers").await.expect("haproxy answers");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("sent:"))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consul_outage_keeps_the_nodes_in_rotation_and_v1_clients_chatting() {
    let mut cluster = Cluster::start().await;
    let lb = Haproxy::start(&config_file(), cluster.consul.dns_addr()).await;
    let a = cluster.node().await;
    let b = cluster.node().await;
    wait_for_rotation(&lb, &[a.addr, b.addr]).await;

    cluster.consul.stop();
    // Three questions to a Consul that does not answer ...
    let asked = dns_queries_sent(&lb).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dns_queries_sent(&lb).await < asked + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy does not ask Consul"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and both nodes are still in rotation: a Consul outage is not a chat outage.
    wait_for_rotation(&lb, &[a.addr, b.addr]).await;
    let mut alice = v1_user(&lb, "alice").await;
    let mut bob = v1_user(&lb, "bob").await;
    settled(&mut alice).await;
    settled(&mut bob).await;
    assert_eq!((users(&a), users(&b)), (1, 1), "one on each node");
    alice.msg("bob", "while Consul is down").await;
    assert_eq!(
        bob.expect(ids::TEXT_MSG).await["content"],
        "while Consul is down"
    );

    // A dev agent comes back empty; the nodes register again and stay in rotation, and the
    // balancer follows Consul again: a drained node leaves rotation.
    cluster.consul.restart().await;
    let ids = [
        a.node().node_id().to_string(),
        b.node().node_id().to_string(),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(consul_check(&cluster.consul, &ids[0]).await.0 == "passing"
        && consul_check(&cluster.consul, &ids[1]).await.0 == "passing")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never registered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_rotation(&lb, &[a.addr, b.addr]).await;
    a.stop().await;
    wait_for_rotation(&lb, &[b.addr]).await;
    b.stop().await;
}
