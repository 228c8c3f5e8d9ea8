//! The admin API across two nodes on real servers (nats-server with JetStream, redis-server,
//! consul): the node list comes from Consul (draining nodes included), a user's session list
//! shows the sessions on both nodes (Redis presence), a kick issued on node A closes the
//! user's session on node B (one device through the node it is on, every session through the
//! all-node bus subject), and a revocation on A refuses a token login on B.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chat_zinx::harness::{ConsulAgent, NatsServer, RedisServer};
use chat_zinx::protocol::ids;
use chat_zinx::protocol::messages::code;
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpListener;

const TOKEN: &str = "cluster-admin-token-0123456789abcdef";

struct Cluster {
    nats: NatsServer,
    redis: RedisServer,
    consul: ConsulAgent,
    dir: tempfile::TempDir,
}

struct AdminNode {
    server: TestServer,
    base: String,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, TOKEN).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        Cluster {
            nats: NatsServer::start().await,
            redis: RedisServer::start().await,
            consul: ConsulAgent::start().await,
            dir,
        }
    }

    async fn node(&self) -> AdminNode {
        let (nats, redis, consul) = (self.nats.url(), self.redis.url(), self.consul.url());
        let secret = self.dir.path().join("token_secret");
        let token = self.dir.path().join("admin-token");
        let server = TestServer::with(move |c| {
            c.nats.url = Some(nats);
            c.nats.request_timeout = Duration::from_secs(2);
            c.redis.url = Some(redis);
            c.redis.command_timeout = Duration::from_secs(1);
            c.consul.addr = Some(consul);
            c.auth.token_secret_file = Some(secret);
            c.admin.token_file = Some(token);
            c.server.drain_window = Duration::from_millis(200);
        })
        .await;
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.node().serve_http(http).unwrap();
        AdminNode {
            server,
            base: format!("http://{addr}"),
        }
    }
}

impl AdminNode {
    fn id(&self) -> String {
        self.server.node().node_id().to_string()
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("x-admin-actor", "cluster-test");
        if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        self.send(req).await
    }

    async fn kick(&self, who: &str, body: Value) -> (u16, Value) {
        let req = reqwest::Client::new()
            .post(format!("{}/admin/users/{who}/kick", self.base))
            .bearer_auth(TOKEN)
            .json(&body);
        self.send(req).await
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("the admin API answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("a JSON answer"))
    }

    /// Asks until `pred` holds for the answer of `GET path` (presence and Consul catch up
    /// within a moment).
    async fn wait_get(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, v) = self.call(reqwest::Method::GET, path).await;
            if status == 200 && pred(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} never showed what was expected: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn login_from(node: &TestServer, name: &str, device: &str) -> Client {
    let mut c = node.client().await;
    c.hello().await;
    c.send(
        ids::LOGIN_REQ,
        json!({"username": name, "password": PASSWORD, "device": device}),
    )
    .await;
    let r = c.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 0, "{r}");
    c.user = Some(r["data"].clone());
    // Logged in for good (backlog read) once a ping is answered.
    c.send_body(ids::PING, b"").await;
    c.expect(ids::PONG).await;
    c
}

async fn kicked(c: &mut Client) -> Value {
    let frames = c.until_closed().await;
    let last = frames.last().expect("a farewell before the close");
    assert_eq!(last.id, ids::ERROR);
    let body = body_json(&last.body);
    assert_eq!(body["code"], code::KICKED, "{body}");
    body
}

fn nodes_of(v: &Value) -> Vec<(String, bool)> {
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().unwrap().to_string(),
                n["draining"] == true,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_on_node_a_sees_and_closes_sessions_on_node_b() {
    let cluster = Cluster::start().await;
    let a = cluster.node().await;
    let b = cluster.node().await;
    let (a_id, b_id) = (a.id(), b.id());

    // Both nodes, from Consul, asked on A.
    a.wait_get("/admin/nodes", |v| nodes_of(v).len() == 2).await;

    let mut reg = a.server.client().await;
    reg.register("alice").await;
    let mut laptop = login_from(&a.server, "alice", "laptop").await;
    let mut phone = login_from(&b.server, "alice", "phone").await;
    let token = phone.token();

    // The session list, asked on A, shows the sessions on both nodes.
    let v = a
        .wait_get("/admin/users/alice/sessions", |v| {
            v["sessions"].as_array().is_some_and(|s| s.len() == 2)
        })
        .await;
    let mut where_: Vec<(String, String)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap().to_string(),
                s["node_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    where_.sort();
    assert_eq!(
        where_,
        [
            ("laptop".to_string(), a_id.clone()),
            ("phone".to_string(), b_id.clone())
        ]
    );

    // Kick the phone (on B) from A: B closes it with the reason; the laptop on A stays.
    let (status, r) = a
        .kick("alice", json!({"device": "phone", "reason": "stolen"}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["kicked"][0]["node_id"], b_id.as_str(), "{r}");
    let farewell = kicked(&mut phone).await;
    assert!(farewell["message"].as_str().unwrap().contains("stolen"));
    laptop.assert_quiet().await;

    // Revoke on A: the old token does not log in on B.
    let (status, r) = a
        .call(reqwest::Method::POST, "/admin/users/alice/revoke-tokens")
        .await;
    assert_eq!(status, 200, "{r}");
    let mut thief = b.server.client().await;
    thief.hello().await;
    thief
        .send(ids::LOGIN_REQ, json!({"token": token, "device": "phone"}))
        .await;
    assert_eq!(thief.expect(ids::LOGIN_RESP).await["code"], code::BAD_TOKEN);

    // A new session on B, then every session of alice kicked from A: both nodes close theirs.
    let mut tablet = login_from(&b.server, "alice", "tablet").await;
    a.wait_get("/admin/users/alice/sessions", |v| {
        v["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["device"] == "tablet"))
    })
    .await;
    let (status, r) = a.kick("alice", json!({})).await;
    assert_eq!(status, 200, "{r}");
    kicked(&mut tablet).await;
    kicked(&mut laptop).await;
    a.wait_get("/admin/users/alice/sessions", |v| {
        v["sessions"].as_array().is_some_and(|s| s.is_empty())
    })
    .await;

    // Drain B through its own API: A's node list (Consul) shows it draining, still there.
    let (status, r) = b.call(reqwest::Method::POST, "/admin/drain").await;
    assert_eq!(status, 202, "{r}");
    let v = a
        .wait_get("/admin/nodes", |v| {
            nodes_of(v).contains(&(b_id.clone(), true))
        })
        .await;
    assert!(nodes_of(&v).contains(&(a_id.clone(), false)), "{v}");

    a.server.stop().await;
    b.server.stop().await;
}
