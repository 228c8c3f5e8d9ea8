//! The daemon on real backends with authentication and TLS on: certificates made here (a CA,
//! a server certificate for 127.0.0.1, a client certificate), secrets in files only their owner
//! reads. Each backend: nodes start and chat across nodes; a wrong secret stops the start with
//! a message that names the backend and why; a secret file others can read is refused.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_zinx::config::Config;
use chat_zinx::harness::{
    ConsulAgent, ConsulOptions, ConsulTls, NatsOptions, NatsServer, RedisOptions, RedisServer,
    RedisTls,
};
use chat_zinx::node::Node;
use chat_zinx::protocol::ids;
use support::*;
use tokio::net::TcpListener;

/// A CA and the certificates it signed, as PEM files in a temporary directory (keys 0600).
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chat-zinx test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "test server");
        let (client_cert, client_key) = leaf(vec!["chat-zinx".into()], "chat-zinx node");
        let at = |name: &str, text: &str| private_file(dir.path(), name, text);
        Pki {
            ca: at("ca.pem", &ca_cert.pem()),
            server_cert: at("server.pem", &server_cert),
            server_key: at("server-key.pem", &server_key),
            client_cert: at("client.pem", &client_cert),
            client_key: at("client-key.pem", &client_key),
            dir,
        }
    }

    /// Another CA's certificate: a node trusting it cannot verify the servers.
    fn other_ca(&self) -> PathBuf {
        let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_string()]).unwrap();
        private_file(self.dir.path(), "other-ca.pem", &other.cert.pem())
    }
}

/// A file only its owner reads (mode 0600).
fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    secret_file(dir, name, text, 0o600)
}

fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A node's configuration as `TestServer` makes it, for starts that are expected to fail.
async fn start_fails(tweak: impl FnOnce(&mut Config)) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.state_dir = Some(state.path().to_path_buf());
    config.auth.hash_concurrency = 2;
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    match Node::start(&config, listener).await {
        Ok(_) => panic!("the node started"),
        Err(e) => format!("{e:#}"),
    }
}

/// Alice on `a` writes to a group bob (on `b`) is a member of; bob gets it live, through the
/// backends.
async fn chat_across(a: &TestServer, b: &TestServer) {
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    let gid = alice.create_group("across").await;
    bob.join_group(gid).await;
    // Node b subscribes to the group once it learns of bob's membership; probe until a push
    // arrives (an earlier message is in the log, just not pushed live).
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
    let ack = alice.group_msg(gid, "over TLS").await;
    let p = loop {
        let p = bob.expect(ids::GROUP_TEXT_PUSH).await;
        if p["content"] != "probe" {
            break p;
        }
    };
    assert_eq!(p["content"], "over TLS");
    assert_eq!(p["msg_id"], ack["msg_id"]);
}

const NATS_PASSWORD: &str = "n4ts-pa55word";

/// nats-server with TLS (verifying client certificates against the test CA) and one user.
async fn nats_with_tls_and_users(pki: &Pki) -> NatsServer {
    let extra_config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n\
         authorization {{\n  users = [ {{ user: \"cz\", password: \"{NATS_PASSWORD}\" }} ]\n}}\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
    );
    NatsServer::try_start_with(&NatsOptions {
        dir: None,
        extra_config,
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn nats_client(c: &mut Config, nats: &NatsServer, pki: &Pki, password_file: &Path) {
    c.nats.url = Some(format!("tls://127.0.0.1:{}", nats.client_port()));
    c.nats.request_timeout = Duration::from_secs(2);
    c.nats.user = Some("cz".into());
    c.nats.password_file = Some(password_file.to_path_buf());
    c.nats.tls.ca_file = Some(pki.ca.clone());
    c.nats.tls.cert_file = Some(pki.client_cert.clone());
    c.nats.tls.key_file = Some(pki.client_key.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_user_and_tls_nodes_chat_and_a_wrong_secret_stops_the_start() {
    let pki = Pki::new();
    let nats = nats_with_tls_and_users(&pki).await;
    let secrets = tempfile::tempdir().unwrap();
    let password = private_file(
        secrets.path(),
        "nats-password",
        &format!("{NATS_PASSWORD}\n"),
    );
    let token_secret = secrets.path().join("token_secret");
    let node = |password: PathBuf| {
        let (url_nats, pki, token_secret) = (&nats, &pki, token_secret.clone());
        TestServer::with(move |c| {
            nats_client(c, url_nats, pki, &password);
            c.auth.token_secret_file = Some(token_secret);
        })
    };
    let a = node(password.clone()).await;
    let b = node(password.clone()).await;
    chat_across(&a, &b).await;
    a.stop().await;
    b.stop().await;

    let wrong = private_file(secrets.path(), "wrong", "not-the-password");
    let e = start_fails(|c| nats_client(c, &nats, &pki, &wrong)).await;
    assert!(e.contains("NATS refused this node's credentials"), "{e}");
    assert!(e.contains("nats.user and nats.password_file"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");

    let open = secret_file(secrets.path(), "open", NATS_PASSWORD, 0o644);
    let e = start_fails(|c| nats_client(c, &nats, &pki, &open)).await;
    assert!(
        e.contains("nats.password_file") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!e.contains(NATS_PASSWORD), "{e}");

    let other_ca = pki.other_ca();
    let e = start_fails(|c| {
        nats_client(c, &nats, &pki, &password);
        c.nats.tls.ca_file = Some(other_ca);
    })
    .await;
    assert!(e.contains("TLS handshake with NATS failed"), "{e}");
    assert!(e.contains("nats.tls.ca_file"), "{e}");
}

const REDIS_PASSWORD: &str = "r3dis-pa55word";

/// redis-server with a TLS port and an ACL user `cz`; the `default` user may only PING (the
/// harness's readiness probe, on the plain port).
async fn redis_with_tls_and_acl(pki: &Pki) -> RedisServer {
    let args =
        format!("--user default on nopass -@all +ping --user cz on >{REDIS_PASSWORD} ~* &* +@all");
    RedisServer::try_start_with(&RedisOptions {
        dir: None,
        extra_args: args.split(' ').map(String::from).collect(),
        tls: Some(RedisTls {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            ca_file: pki.ca.clone(),
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn redis_client(c: &mut Config, redis: &RedisServer, pki: &Pki, password_file: &Path) {
    let port = redis.tls_port().expect("a TLS port");
    c.redis.url = Some(format!("rediss://127.0.0.1:{port}"));
    c.redis.username = Some("cz".into());
    c.redis.password_file = Some(password_file.to_path_buf());
    c.redis.tls.ca_file = Some(pki.ca.clone());
    c.redis.command_timeout = Duration::from_secs(1);
    c.redis.refresh_interval = Duration::from_secs(1);
    c.redis.presence_ttl = Duration::from_secs(3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_an_acl_user_and_tls_nodes_chat_and_a_wrong_secret_stops_the_start() {
    let pki = Pki::new();
    let redis = redis_with_tls_and_acl(&pki).await;
    let nats = NatsServer::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let password = private_file(secrets.path(), "redis-password", REDIS_PASSWORD);
    let token_secret = secrets.path().join("token_secret");
    let node = || {
        let (redis, pki, password) = (&redis, &pki, password.clone());
        let (nats_url, token_secret) = (nats.url(), token_secret.clone());
        TestServer::with(move |c| {
            redis_client(c, redis, pki, &password);
            c.nats.url = Some(nats_url);
            c.auth.token_secret_file = Some(token_secret);
        })
    };
    let a = node().await;
    let b = node().await;
    // Presence on Redis says bob is on node b: alice's message reaches him live there.
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    bob.send_body(ids::PING, b"").await;
    bob.expect(ids::PONG).await;
    alice.msg("bob", "through TLS presence").await;
    assert_eq!(
        bob.expect(ids::TEXT_MSG).await["content"],
        "through TLS presence"
    );
    a.stop().await;
    b.stop().await;

    let wrong = private_file(secrets.path(), "wrong", "not-the-password");
    let e = start_fails(|c| redis_client(c, &redis, &pki, &wrong)).await;
    assert!(e.contains("Redis") && e.contains("refused"), "{e}");
    assert!(e.contains("redis.password_file"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");

    let open = secret_file(secrets.path(), "open", REDIS_PASSWORD, 0o640);
    let e = start_fails(|c| redis_client(c, &redis, &pki, &open)).await;
    assert!(
        e.contains("redis.password_file") && e.contains("chmod 600"),
        "{e}"
    );

    let other_ca = pki.other_ca();
    let e = start_fails(|c| {
        redis_client(c, &redis, &pki, &password);
        c.redis.tls.ca_file = Some(other_ca);
    })
    .await;
    assert!(e.contains("TLS handshake with Redis"), "{e}");
    assert!(e.contains("redis.tls.ca_file"), "{e}");
}

const CONSUL_MASTER: &str = "9b1f3c2e-7a44-4f0e-9d55-1c2b3a4d5e6f";

/// The rules docs/configuration.md lists for the node's token (`consul.token`): service:write
/// on the service, service:read and node:read, key:read on the live settings' prefix.
const CONSUL_POLICY: &str = r#"
service "chat-zinx" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
key_prefix "chat-zinx/settings/" { policy = "read" }
"#;

/// Consul with ACLs (default deny) and HTTPS; returns the agent and a token with exactly
/// [`CONSUL_POLICY`], made with the management token over plain HTTP.
async fn consul_with_acl_and_tls(pki: &Pki) -> (ConsulAgent, String) {
    let consul = ConsulAgent::try_start_with(&ConsulOptions {
        acl_master_token: Some(CONSUL_MASTER.into()),
        tls: Some(ConsulTls {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            ca_file: pki.ca.clone(),
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let http = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| {
        let url = format!("{}{path}", consul.url());
        http.put(url)
            .header("X-Consul-Token", CONSUL_MASTER)
            .json(&body)
            .send()
    };
    // The ACL system answers once the agent has a leader; retry until it does.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = put(
            "/v1/acl/policy",
            serde_json::json!({"Name": "chat-zinx", "Rules": CONSUL_POLICY}),
        )
        .await
        .unwrap();
        if r.status().is_success() {
            break;
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(
            tokio::time::Instant::now() < deadline,
            "consul refused the policy: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = put(
        "/v1/acl/token",
        serde_json::json!({"Description": "chat-zinx node", "Policies": [{"Name": "chat-zinx"}]}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let token: serde_json::Value = r.json().await.unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_string();
    (consul, secret)
}

fn consul_client(c: &mut Config, consul: &ConsulAgent, pki: &Pki, token_file: &Path) {
    c.consul.addr = consul.https_url();
    c.consul.token_file = Some(token_file.to_path_buf());
    c.consul.tls.ca_file = Some(pki.ca.clone());
    c.server.max_connections = 100;
}

/// The chat-zinx instances Consul lists as passing (asked with the management token).
async fn passing(consul: &ConsulAgent) -> Vec<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!(
            "{}/v1/health/service/chat-zinx?passing=true",
            consul.url()
        ))
        .header("X-Consul-Token", CONSUL_MASTER)
        .send()
        .await
        .unwrap();
    r.json().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_with_acls_and_https_nodes_register_chat_and_a_wrong_token_stops_the_start() {
    let pki = Pki::new();
    let (consul, token) = consul_with_acl_and_tls(&pki).await;
    let nats = NatsServer::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = private_file(secrets.path(), "consul-token", &format!("{token}\n"));
    let token_secret = secrets.path().join("token_secret");
    let node = || {
        let (consul, pki, token_file) = (&consul, &pki, token_file.clone());
        let (nats_url, token_secret) = (nats.url(), token_secret.clone());
        TestServer::with(move |c| {
            consul_client(c, consul, pki, &token_file);
            c.nats.url = Some(nats_url);
            c.auth.token_secret_file = Some(token_secret);
        })
    };
    let a = node().await;
    let b = node().await;
    // Both nodes registered themselves over HTTPS with the restricted token and pass their
    // checks.
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while passing(&consul).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consul never listed both nodes as passing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chat_across(&a, &b).await;
    a.stop().await;
    b.stop().await;

    let wrong = private_file(
        secrets.path(),
        "wrong",
        "00000000-0000-4000-8000-000000000000",
    );
    let e = start_fails(|c| consul_client(c, &consul, &pki, &wrong)).await;
    assert!(e.contains("Consul at https://127.0.0.1:"), "{e}");
    assert!(e.contains("refused this node") && e.contains("403"), "{e}");
    assert!(e.contains("consul.token_file"), "{e}");

    let open = secret_file(secrets.path(), "open", &token, 0o644);
    let e = start_fails(|c| consul_client(c, &consul, &pki, &open)).await;
    assert!(
        e.contains("consul.token_file") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!e.contains(&token), "{e}");

    let other_ca = pki.other_ca();
    let e = start_fails(|c| {
        consul_client(c, &consul, &pki, &token_file);
        c.consul.tls.ca_file = Some(other_ca);
    })
    .await;
    assert!(e.contains("TLS handshake failed"), "{e}");
    assert!(e.contains("consul.tls.ca_file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_with_a_token_a_node_starts_and_a_wrong_token_stops_the_start() {
    let token = "t0ken-0f-the-cluster";
    let nats = NatsServer::try_start_with(&NatsOptions {
        dir: None,
        extra_config: format!("authorization {{\n  token: \"{token}\"\n}}\n"),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let secrets = tempfile::tempdir().unwrap();
    let good = private_file(secrets.path(), "token", token);
    let url = nats.url();
    let node = TestServer::with(|c| {
        c.nats.url = Some(url.clone());
        c.nats.token_file = Some(good);
    })
    .await;
    let mut alice = node.user("alice").await;
    alice.send_body(ids::PING, b"").await;
    alice.expect(ids::PONG).await;
    node.stop().await;

    let wrong = private_file(secrets.path(), "wrong", "not-the-token");
    let e = start_fails(|c| {
        c.nats.url = Some(url.clone());
        c.nats.token_file = Some(wrong);
    })
    .await;
    assert!(e.contains("NATS refused this node's credentials"), "{e}");
    assert!(e.contains("nats.token_file"), "{e}");
    assert!(!e.contains("not-the-token"), "{e}");
}

/// The three at once, as a deployment runs them: every backend authenticated and on TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_chat_with_nats_redis_and_consul_all_authenticated_over_tls() {
    let pki = Pki::new();
    let nats = nats_with_tls_and_users(&pki).await;
    let redis = redis_with_tls_and_acl(&pki).await;
    let (consul, token) = consul_with_acl_and_tls(&pki).await;
    let secrets = tempfile::tempdir().unwrap();
    let nats_password = private_file(secrets.path(), "nats-password", NATS_PASSWORD);
    let redis_password = private_file(secrets.path(), "redis-password", REDIS_PASSWORD);
    let consul_token = private_file(secrets.path(), "consul-token", &token);
    let token_secret = secrets.path().join("token_secret");
    let node = || {
        let (nats, redis, consul, pki) = (&nats, &redis, &consul, &pki);
        let files = (
            nats_password.clone(),
            redis_password.clone(),
            consul_token.clone(),
            token_secret.clone(),
        );
        TestServer::with(move |c| {
            nats_client(c, nats, pki, &files.0);
            redis_client(c, redis, pki, &files.1);
            consul_client(c, consul, pki, &files.2);
            c.auth.token_secret_file = Some(files.3);
            // Clients too may come over TLS (the server certificate names 127.0.0.1).
            c.tls.listen = Some("127.0.0.1:0".into());
            c.tls.cert_file = Some(pki.server_cert.clone());
            c.tls.key_file = Some(pki.server_key.clone());
        })
    };
    let a = node().await;
    let b = node().await;
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while passing(&consul).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consul never listed both nodes as passing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut alice = a.user("alice").await;
    let mut bob = b.user("bob").await;
    bob.send_body(ids::PING, b"").await;
    bob.expect(ids::PONG).await;
    alice.msg("bob", "all on TLS").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "all on TLS");

    // Carol (v1 frames) chats over client TLS with node b, whose backends are all on TLS: end to end.
    let tls = chat_zinx::client::connection::TlsClient::new(Some(&pki.ca), None).unwrap();
    let target = format!("tls://{}", b.node().tls_addr.expect("a TLS listener"));
    let mut carol = chat_zinx::client::connection::Connection::open(&target, WAIT, Some(&tls))
        .await
        .expect("a TLS connection trusting the test CA");
    for (id, body, reply) in [
        (
            ids::REGISTER_REQ,
            serde_json::json!({"username": "carol", "password": PASSWORD, "email": "c@example.org"}),
            ids::REGISTER_RESP,
        ),
        (
            ids::LOGIN_REQ,
            serde_json::json!({"username": "carol", "password": PASSWORD}),
            ids::LOGIN_RESP,
        ),
        (
            ids::TEXT_MSG,
            serde_json::json!({"to_user_id": "alice", "content": "over TLS both ways"}),
            0,
        ),
    ] {
        carol.send(id, body.to_string().as_bytes()).await.unwrap();
        if reply == 0 {
            break;
        }
        let got = tls_frame(&mut carol).await;
        assert_eq!(got.0, reply, "{}", got.1);
        assert_eq!(got.1["code"], 0, "{}", got.1);
    }
    let pushed = alice.expect(ids::TEXT_MSG).await;
    assert_eq!(pushed["content"], "over TLS both ways");
    assert_eq!(pushed["from_username"], "carol");
    alice.msg("carol", "back to you").await;
    let got = tls_frame(&mut carol).await;
    assert_eq!(got.0, ids::TEXT_MSG, "{}", got.1);
    assert_eq!(got.1["content"], "back to you");
    drop((alice, bob, carol));
    a.stop().await;
    b.stop().await;

    // Nothing secret in what `chat-zinx config` would show of such a node.
    let mut c = Config::default();
    nats_client(&mut c, &nats, &pki, &nats_password);
    redis_client(&mut c, &redis, &pki, &redis_password);
    consul_client(&mut c, &consul, &pki, &consul_token);
    let shown = c.to_redacted_toml();
    for secret in [NATS_PASSWORD, REDIS_PASSWORD, token.as_str()] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// The next frame of a client connection, as (id, JSON body).
async fn tls_frame(
    conn: &mut chat_zinx::client::connection::Connection,
) -> (u32, serde_json::Value) {
    match tokio::time::timeout(WAIT, conn.recv())
        .await
        .expect("a frame in time")
    {
        chat_zinx::client::connection::Inbound::Frame(f) => (f.id, body_json(&f.body)),
        chat_zinx::client::connection::Inbound::Closed(why) => panic!("connection closed: {why}"),
    }
}
