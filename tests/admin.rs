//! The admin API (`/admin/...` on the HTTP listener) and `chat-zinx admin`, against a real
//! node on the in-process backends over TCP and HTTP: the bearer token (missing, wrong, a
//! token file others can read), a user's sessions, kicking one device and every session (the
//! client gets 99 code 17 with the reason, then the connection closes), revoking tokens (a
//! token login is refused), draining and undraining, bounded bodies. The same across two
//! nodes on real servers is in `tests/cluster_admin.rs`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::process::Command;

use chat_zinx::protocol::ids;
use chat_zinx::protocol::messages::code;
use serde_json::{json, Value};
use support::{body_json, Client, TestServer, PASSWORD};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_chat-zinx");
const TOKEN: &str = "admin-token-for-tests-0123456789";

fn token_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A node with the admin API on, its HTTP endpoint's base URL, and the token file.
async fn admin_node(dir: &Path) -> (TestServer, String, PathBuf) {
    let file = token_file(dir, 0o600);
    let f = file.clone();
    let server = TestServer::with(move |c| {
        c.admin.token_file = Some(f);
        c.server.drain_window = std::time::Duration::from_millis(200);
    })
    .await;
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.node().serve_http(http).unwrap();
    (server, format!("http://{addr}"), file)
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, Some(TOKEN)).await
    }

    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-admin-actor", "tests");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the HTTP endpoint answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// A v2 client logged in as `name` (registered first when `register`) from `device`.
async fn login_v2(server: &TestServer, name: &str, device: &str, register: bool) -> Client {
    let mut c = server.client().await;
    c.hello().await;
    if register {
        c.register(name).await;
    }
    c.send(
        ids::LOGIN_REQ,
        json!({"username": name, "password": PASSWORD, "device": device}),
    )
    .await;
    let r = c.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], 0, "login {name}: {r}");
    c.user = Some(r["data"].clone());
    c
}

/// The next frames until the connection closes: the last one must be a 99 with `code`.
async fn closed_with(c: &mut Client, want: u32) -> Value {
    let frames = c.until_closed().await;
    let last = frames.last().expect("a farewell frame before the close");
    assert_eq!(
        last.id,
        ids::ERROR,
        "last frame {}: {:?}",
        last.id,
        last.body
    );
    let body = body_json(&last.body);
    assert_eq!(body["code"], want, "{body}");
    body
}

#[tokio::test]
async fn the_admin_api_needs_its_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _) = admin_node(dir.path()).await;
    let api = Api::new(&base);
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, body) = api
            .call_with(reqwest::Method::GET, "/admin/nodes", None, token)
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("bearer token"),
            "{body}"
        );
    }
    // Unknown admin paths are hidden behind the token too.
    let (status, _) = api
        .call_with(reqwest::Method::GET, "/admin/secret-place", None, None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = api.get("/admin/secret-place").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("GET /admin/nodes"));
    // The answer comes with the WWW-Authenticate header.
    let resp = reqwest::get(format!("{base}/admin/nodes")).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_some());
    // Bodies are bounded.
    let big = "x".repeat(64 * 1024);
    let (status, body) = api
        .post("/admin/users/nobody/kick", json!({ "reason": big }))
        .await;
    assert_eq!(status, 413, "{body}");
    // The other paths are unchanged.
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn without_a_token_file_the_admin_api_is_off() {
    let server = TestServer::start().await;
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.node().serve_http(http).unwrap();
    let api = Api::new(&format!("http://{addr}"));
    let (status, body) = api.get("/admin/nodes").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("admin.token_file"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_file_others_can_read_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o644, 0o640, 0o604] {
        let file = token_file(dir.path(), mode);
        let mut config = chat_zinx::config::Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.state_dir = Some(dir.path().join("state"));
        config.admin.token_file = Some(file.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = match chat_zinx::node::Node::start(&config, listener).await {
            Ok(_) => panic!("a node started with admin.token_file mode {mode:o}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("admin.token_file") && err.contains("chmod 600"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_operator_lists_kicks_revokes_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, file) = admin_node(dir.path()).await;
    let api = Api::new(&base);
    let mut phone = login_v2(&server, "alice", "phone", true).await;
    let mut laptop = login_v2(&server, "alice", "laptop", false).await;
    let mut bob = server.user("bob").await;
    let alice_id = phone.id();
    let token = phone.token();

    // The nodes: this one, with its connections.
    let (status, nodes) = api.get("/admin/nodes").await;
    assert_eq!(status, 200, "{nodes}");
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{nodes}");
    assert_eq!(list[0]["this_node"], true);
    assert_eq!(list[0]["connections"], 3);
    assert_eq!(list[0]["draining"], false);

    // Alice's sessions, by name, id and UUID alike.
    let (status, by_name) = api.get("/admin/users/alice/sessions").await;
    assert_eq!(status, 200, "{by_name}");
    let sessions = by_name["sessions"].as_array().unwrap();
    let devices: Vec<&str> = sessions
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["phone", "laptop"], "{by_name}");
    assert_eq!(by_name["user"]["id"], alice_id);
    let (_, by_id) = api.get(&format!("/admin/users/{alice_id}/sessions")).await;
    assert_eq!(by_id["sessions"], by_name["sessions"]);
    let (_, by_uuid) = api
        .get(&format!("/admin/users/{}/sessions", phone.uuid()))
        .await;
    assert_eq!(by_uuid["sessions"], by_name["sessions"]);
    let (status, body) = api.get("/admin/users/nobody-here/sessions").await;
    assert_eq!(status, 404, "{body}");

    // Kick the phone's session: it gets 99 code 17 with the reason and is closed; the laptop
    // stays.
    let phone_session = sessions[0]["session"].as_str().unwrap().to_string();
    let (status, kicked) = api
        .post(
            "/admin/users/alice/kick",
            json!({"session": phone_session, "reason": "lost phone"}),
        )
        .await;
    assert_eq!(status, 200, "{kicked}");
    assert_eq!(kicked["kicked"].as_array().unwrap().len(), 1, "{kicked}");
    let farewell = closed_with(&mut phone, code::KICKED).await;
    assert!(
        farewell["message"].as_str().unwrap().contains("lost phone"),
        "{farewell}"
    );
    laptop.assert_quiet().await;
    // A session that is not there (any more).
    let (status, body) = api
        .post("/admin/users/alice/kick", json!({"session": phone_session}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .post("/admin/users/alice/kick", json!({"session": "no-conn-id"}))
        .await;
    assert_eq!(status, 400, "{body}");

    // Revoke her tokens: a token login is refused (code 14); a password login still works.
    let (status, revoked) = api
        .post("/admin/users/alice/revoke-tokens", json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["tokens_valid_from"].as_i64().unwrap() > 0);
    let mut resume = server.client().await;
    resume.hello().await;
    resume
        .send(ids::LOGIN_REQ, json!({"token": token, "device": "phone"}))
        .await;
    let r = resume.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["code"], code::BAD_TOKEN, "{r}");
    assert!(r["msg"].as_str().unwrap().contains("revoked"), "{r}");

    // Kick every session of alice: the laptop is closed too, with the default reason.
    let (status, all) = api.post("/admin/users/alice/kick", json!({})).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["all"], true);
    closed_with(&mut laptop, code::KICKED).await;
    bob.assert_quiet().await;

    // The CLI, on the same API: sessions as JSON, then as text.
    let out = Command::new(BIN)
        .args(["admin", "--url", &base, "--token-file"])
        .arg(&file)
        .args(["--json", "sessions", "bob"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    let out = Command::new(BIN)
        .args(["admin", "--url", &base, "--token-file"])
        .arg(&file)
        .args(["nodes"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("(this node)"),
        "{text}"
    );
    // A wrong token: the CLI says so and fails.
    let wrong = token_file_named(dir.path(), "wrong", "not-the-token");
    let out = Command::new(BIN)
        .args(["admin", "--url", &base, "--token-file"])
        .arg(&wrong)
        .args(["nodes"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A connection open before the drain that has not logged in yet.
    let mut early = server.client().await;
    early.send_body(ids::PING, b"ping").await;
    early.expect(ids::PONG).await;

    // Drain (through the CLI): bob is told the node shuts down (v1: 99 code 13) and closed,
    // /ready says 503, a new v2 connection is redirected, and the node keeps running.
    let out = Command::new(BIN)
        .args(["admin", "--url", &base, "--token-file"])
        .arg(&file)
        .args(["drain"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("draining"), "{text}");
    closed_with(&mut bob, code::SHUTTING_DOWN).await;
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["problems"].as_str().unwrap().contains("drained"),
        "{ready}"
    );
    let mut newcomer = server.client().await;
    newcomer
        .send(ids::HELLO_REQ, json!({"version": 2, "client": "tests/1"}))
        .await;
    newcomer.expect(ids::HELLO_RESP).await;
    let redirect = newcomer.expect(ids::REDIRECT).await;
    assert_eq!(redirect["reason"], "draining", "{redirect}");
    // The one open before the drain is sent away at its login (v1: 99 code 13).
    early
        .send(
            ids::LOGIN_REQ,
            json!({"username": "bob", "password": PASSWORD}),
        )
        .await;
    closed_with(&mut early, code::SHUTTING_DOWN).await;
    let (_, nodes) = api.get("/admin/nodes").await;
    assert_eq!(nodes["nodes"][0]["draining"], true, "{nodes}");
    let (status, again) = api.post("/admin/drain", json!({})).await;
    assert_eq!((status, &again["already_draining"]), (200, &json!(true)));

    // Undrain: ready again, and a client logs in.
    let (status, body) = api.post("/admin/undrain", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["was_draining"], true);
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let mut back = server.client().await;
    back.login("bob").await;
    back.assert_quiet().await;
    server.stop().await;
}

fn token_file_named(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn the_terminal_client_does_not_come_back_by_itself_after_a_kick() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base, _) = admin_node(dir.path()).await;
    let api = Api::new(&base);
    let mut reg = server.client().await;
    reg.register("carol").await;
    let client = Command::new(BIN)
        .args(["client", &server.addr.to_string(), "--json"])
        .args(["-e", &format!("/login carol {PASSWORD}")])
        .args(["-e", "/wait not_reconnecting 1 60000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once carol is online, the operator closes her sessions.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (_, v) = api.get("/admin/users/carol/sessions").await;
        if v["sessions"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol never logged in: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = api
        .post("/admin/users/carol/kick", json!({"reason": "maintenance"}))
        .await;
    assert_eq!(status, 200);
    let out = client.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kick = lines
        .iter()
        .find(|l| l["id"] == ids::ERROR)
        .unwrap_or_else(|| panic!("no 99 in {stdout}"));
    assert_eq!(kick["body"]["code"], code::KICKED, "{stdout}");
    assert!(
        lines.iter().any(|l| l["event"] == "not_reconnecting"),
        "{stdout}"
    );
    assert!(
        !lines.iter().any(|l| l["event"] == "reconnecting"),
        "the client came back by itself: {stdout}"
    );
    server.stop().await;
}
