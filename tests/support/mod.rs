//! Test support: a real daemon on a loopback port and a raw-frame client.
//!
//! The daemon is the real `Node` (listener, connection tasks, hub, core) on the in-process
//! backends, reached over real TCP. The client speaks raw frames so tests control every byte.
#![allow(dead_code)]

pub mod faulty_store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_zinx::config::Config;
use chat_zinx::core::ports::Backends;
use chat_zinx::node::Node;
use chat_zinx::protocol::{codec, ids, Frame, FrameCodec};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

/// How long a test waits for a frame it expects before failing (a safety net, not a
/// performance assertion).
pub const WAIT: Duration = Duration::from_secs(60);

pub const PASSWORD: &str = "secret1";

pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Option<Node>,
    _state: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(tweak, None).await
    }

    /// A daemon on the in-process backends whose store injects faults (`FaultyStore`).
    pub async fn with_faulty_store() -> (Self, Arc<faulty_store::FaultyStore>) {
        let mut backends = chat_zinx::backend::memory::backends();
        let store = Arc::new(faulty_store::FaultyStore::new(backends.store.clone()));
        backends.store = store.clone();
        (Self::start_on(|_| {}, Some(backends)).await, store)
    }

    async fn start_on(tweak: impl FnOnce(&mut Config), backends: Option<Backends>) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.server.state_dir = Some(state.path().to_path_buf());
        config.auth.hash_concurrency = 2;
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let node = match backends {
            Some(backends) => Node::start_on(&config, listener, backends).await,
            // A TLS listener beside the plain one when the test configures one.
            None if config.tls.listen.is_some() => {
                let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let listeners = chat_zinx::node::Listeners {
                    plain: Some(listener),
                    tls: Some(tls),
                };
                Node::start_listening(&config, listeners).await
            }
            None => Node::start(&config, listener).await,
        }
        .expect("node starts");
        TestServer {
            addr: node.local_addr,
            node: Some(node),
            _state: state,
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("running")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A registered, logged-in v1 client.
    pub async fn user(&self, name: &str) -> Client {
        let mut c = self.client().await;
        c.register(name).await;
        c.login(name).await;
        c
    }

    /// A registered, logged-in v2 client.
    pub async fn user_v2(&self, name: &str) -> Client {
        let mut c = self.client().await;
        c.hello().await;
        c.register(name).await;
        c.login(name).await;
        c
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            // A short drain window: tests stop with connections open.
            node.shutdown(Duration::from_millis(200)).await;
        }
    }
}

/// A PROXY protocol v2 header (HAProxy's `send-proxy-v2`) saying that the client is `client`
/// (IPv4) and the proxy connected to port 9000; `None`: the `LOCAL` command.
pub fn proxy_v2(client: Option<SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        Some(SocketAddr::V4(c)) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&[10, 0, 0, 1]);
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&9000u16.to_be_bytes());
        }
        Some(SocketAddr::V6(_)) => panic!("proxy_v2: IPv4 only"),
        None => h.extend_from_slice(&[0x20, 0x00, 0, 0]),
    }
    h
}

pub struct Client {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: OwnedWriteHalf,
    pub user: Option<Value>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        Client {
            reader: FramedRead::new(rd, FrameCodec::client()),
            writer: wr,
            user: None,
        }
    }

    /// Connects from the loopback address `source` (`127.0.0.2`, ...: another address than
    /// the default 127.0.0.1) and writes `preamble` first (a PROXY protocol header).
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr, preamble: &[u8]) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let (rd, mut wr) = stream.into_split();
        wr.write_all(preamble).await.expect("write the preamble");
        Client {
            reader: FramedRead::new(rd, FrameCodec::client()),
            writer: wr,
            user: None,
        }
    }

    /// Connects with a small receive buffer (no autotuning): what the client does not read
    /// stays on the server's side instead of in this socket's kernel buffer.
    pub async fn connect_small(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        Client {
            reader: FramedRead::new(rd, FrameCodec::client()),
            writer: wr,
            user: None,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Like `send_raw`, but the server may already have closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    pub async fn send_body(&mut self, id: u32, body: &[u8]) {
        let frame = codec::encode(id, body);
        self.send_raw(&frame).await;
    }

    pub async fn send(&mut self, id: u32, body: Value) {
        self.send_body(id, body.to_string().as_bytes()).await;
    }

    /// Closes the writing side (the server sees EOF).
    pub async fn shutdown_write(&mut self) {
        let _ = self.writer.shutdown().await;
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, self.reader.next()).await {
            Ok(Some(Ok(f))) => Some(f),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame as (id, JSON body); the pong body is returned as a JSON string.
    pub async fn recv(&mut self) -> (u32, Value) {
        let f = self
            .next_frame()
            .await
            .expect("connection closed unexpectedly");
        (f.id, body_json(&f.body))
    }

    /// The next frame, which must have message id `id`.
    pub async fn expect(&mut self, id: u32) -> Value {
        let (got, body) = self.recv().await;
        assert_eq!(got, id, "expected message id {id}, got {got}: {body}");
        body
    }

    /// The next frame with id `id`, skipping pushes (208, 312) that arrive before it.
    pub async fn expect_skipping(&mut self, id: u32) -> Value {
        loop {
            let (got, body) = self.recv().await;
            if got == id {
                return body;
            }
            assert!(
                got == ids::TEXT_MSG || got == ids::GROUP_TEXT_PUSH,
                "expected message id {id}, got {got}: {body}"
            );
        }
    }

    /// Asserts that nothing is pending for this client: a ping's pong is the next frame.
    /// Deterministic: pushes are queued before the request that caused them is answered.
    pub async fn assert_quiet(&mut self) {
        self.send_body(ids::PING, b"ping").await;
        let (id, body) = self.recv().await;
        assert_eq!(
            id,
            ids::PONG,
            "expected nothing pending, got id {id}: {body}"
        );
    }

    /// Waits until bytes from the server sit unread in this socket's receive buffer (they are
    /// not taken from it: closing the socket now makes the kernel send a reset).
    pub async fn wait_unread(&mut self) {
        let mut one = [0u8; 1];
        let n = tokio::time::timeout(WAIT, self.reader.get_mut().peek(&mut one))
            .await
            .expect("bytes from the server in time")
            .expect("peek");
        assert_eq!(n, 1, "the server closed the connection");
    }

    /// Reads until the server closes the connection; returns the frames seen on the way.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }

    pub async fn hello(&mut self) -> Value {
        self.send(ids::HELLO_REQ, json!({"version": 2, "client": "tests/1"}))
            .await;
        self.expect(ids::HELLO_RESP).await
    }

    pub async fn register(&mut self, name: &str) -> Value {
        self.send(
            ids::REGISTER_REQ,
            json!({"username": name, "password": PASSWORD, "email": format!("{name}@example.org")}),
        )
        .await;
        let r = self.expect(ids::REGISTER_RESP).await;
        assert_eq!(r["code"], 0, "register {name}: {r}");
        r["data"].clone()
    }

    pub async fn login(&mut self, name: &str) -> Value {
        self.send(
            ids::LOGIN_REQ,
            json!({"username": name, "password": PASSWORD}),
        )
        .await;
        let r = self.expect(ids::LOGIN_RESP).await;
        assert_eq!(r["code"], 0, "login {name}: {r}");
        self.user = Some(r["data"].clone());
        r["data"].clone()
    }

    pub fn id(&self) -> u64 {
        self.user.as_ref().expect("logged in")["id"]
            .as_u64()
            .unwrap()
    }

    pub fn uuid(&self) -> String {
        self.user.as_ref().expect("logged in")["user_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn token(&self) -> String {
        self.user.as_ref().expect("logged in")["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sends a direct message (v1 frame).
    pub async fn msg(&mut self, to: &str, content: &str) {
        self.send(ids::TEXT_MSG, json!({"to_user_id": to, "content": content}))
            .await;
    }

    pub async fn create_group(&mut self, name: &str) -> u64 {
        self.send(
            ids::CREATE_GROUP_REQ,
            json!({"name": name, "description": "d"}),
        )
        .await;
        let r = self.expect(ids::CREATE_GROUP_RESP).await;
        r["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("create group: {r}"))
    }

    pub async fn join_group(&mut self, gid: u64) {
        self.send(ids::JOIN_GROUP_REQ, json!({"group_id": gid}))
            .await;
        let r = self.expect(ids::JOIN_GROUP_RESP).await;
        assert_eq!(r["message"], "成功加入群组", "{r}");
    }

    /// Sends a group text and returns its 311 ack.
    pub async fn group_msg(&mut self, gid: u64, content: &str) -> Value {
        self.send(
            ids::GROUP_TEXT_REQ,
            json!({"group_id": gid, "content": content}),
        )
        .await;
        self.expect(ids::GROUP_TEXT_ACK).await
    }
}

pub fn body_json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// A frame header with an arbitrary length (for oversized / truncated frames).
pub fn header(len: u32, id: u32) -> Vec<u8> {
    let mut h = len.to_le_bytes().to_vec();
    h.extend_from_slice(&id.to_le_bytes());
    h
}

/// The sorted key set of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// A burst of sends written at once (the daemon keeps several in flight per connection):
/// `alice` (v2) sends `n` direct messages alternating between `bob` (by username) and `carol`
/// (by numeric id), one to an unknown user in the middle, then a group message and a history
/// request. Checks the promises of pipelined sends: replies in request order, appends in
/// request order (increasing log positions), the unknown recipient refused in its place,
/// the history (a barrier) seeing every send before it, and each recipient's pushes in order.
pub async fn assert_pipelined_burst(
    alice: &mut Client,
    bob: &mut Client,
    carol: &mut Client,
    gid: u64,
    n: usize,
) {
    let bad = n / 2;
    let mut burst = Vec::new();
    for i in 0..n {
        let to = if i == bad {
            "nobody-here".to_string()
        } else if i % 2 == 0 {
            "bob".to_string()
        } else {
            carol.id().to_string()
        };
        let body =
            json!({"to_user_id": to, "content": format!("m{i}"), "client_msg_id": format!("c{i}")});
        burst.extend_from_slice(&codec::encode(ids::TEXT_MSG, body.to_string().as_bytes()));
    }
    let g = json!({"group_id": gid, "content": "g-last", "client_msg_id": "cg"});
    burst.extend_from_slice(&codec::encode(
        ids::GROUP_TEXT_REQ,
        g.to_string().as_bytes(),
    ));
    let h = json!({"target_user_uuid": "", "target_username": "bob", "limit": 100});
    burst.extend_from_slice(&codec::encode(ids::HISTORY_REQ, h.to_string().as_bytes()));
    alice.send_raw(&burst).await;

    let mut last_seq = 0;
    for i in 0..n {
        let ack = alice.expect(ids::SEND_ACK).await;
        assert_eq!(
            ack["client_msg_id"],
            format!("c{i}"),
            "replies in request order"
        );
        if i == bad {
            assert_eq!(
                ack["code"],
                chat_zinx::protocol::messages::code::NOT_FOUND,
                "{ack}"
            );
            continue;
        }
        assert_eq!(ack["code"], 0, "{ack}");
        let seq = ack["seq"].as_u64().unwrap();
        assert!(
            seq > last_seq,
            "appends in request order: {seq} after {last_seq}"
        );
        last_seq = seq;
    }
    assert_eq!(alice.expect(ids::GROUP_TEXT_ACK).await["status"], 0);
    let ack = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack["client_msg_id"], "cg");
    assert!(ack["seq"].as_u64().unwrap() > last_seq);
    let history = alice.expect(ids::HISTORY_RESP).await;
    let contents: Vec<String> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    let to_bob: Vec<String> = (0..n)
        .filter(|i| i % 2 == 0 && *i != bad)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(
        contents, to_bob,
        "history sees every send before it, in order"
    );
    for (client, parity) in [(bob, 0), (carol, 1)] {
        for i in (0..n).filter(|i| i % 2 == parity && *i != bad) {
            let p = client.expect_skipping(ids::TEXT_MSG).await;
            assert_eq!(p["content"], format!("m{i}"), "pushes in order");
        }
    }
}
