//! The terminal client in scripted mode (`chat-zinx client --json -e …`) against a real daemon.

mod support;

use std::process::Stdio;

use chat_zinx::protocol::ids;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_chat-zinx");

fn client(addr: &str, commands: &[&str]) -> Child {
    let mut c = Command::new(BIN);
    c.args(["client", addr, "--json", "--timeout", "20s"]);
    for cmd in commands {
        c.args(["-e", cmd]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c.spawn().expect("client starts")
}

/// Reads JSON lines from a client's stdout until `until` matches one; returns all lines read.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    until: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("client output within the wait")
            .expect("read")
            .unwrap_or_else(|| panic!("client ended before the expected line; saw {seen:?}"));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let done = until(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scripted_clients_chat_directly_and_in_a_group() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();

    let mut bob = client(
        &addr,
        &[
            "/register bob secret1 bob@example.org",
            "/login bob secret1",
            "/wait 208 1 20000",
            "/wait 312 1 20000",
            "/history alice 10",
        ],
    );
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap()).lines();
    read_until(&mut bob_out, |v| {
        v["type"] == "reply" && v["cmd"] == "login"
    })
    .await;

    let alice = client(
        &addr,
        &[
            "/register alice secret1 alice@example.org",
            "/login alice secret1",
            "/creategroup team",
            "/msg bob hello from alice",
        ],
    );
    let out = alice.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "alice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice_lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ack = alice_lines
        .iter()
        .find(|v| v["type"] == "reply" && v["cmd"] == "msg")
        .expect("a reply to /msg");
    assert_eq!(ack["id"], ids::SEND_ACK);
    assert_eq!(ack["ok"], true, "{ack}");
    let created = alice_lines
        .iter()
        .find(|v| v["cmd"] == "creategroup")
        .expect("a reply to /creategroup");
    let gid = created["body"]["id"].as_u64().unwrap();

    // Bob joins through a raw connection of his own; alice posts with the client.
    let mut bob_raw = server.client().await;
    bob_raw.login("bob").await;
    bob_raw
        .send(ids::JOIN_GROUP_REQ, json!({"group_id": gid}))
        .await;
    // The login backlog may repeat alice's fresh message on this new device first.
    loop {
        let (id, body) = bob_raw.recv().await;
        if id == ids::JOIN_GROUP_RESP {
            assert_eq!(body["message"], "成功加入群组");
            break;
        }
        assert_eq!(id, ids::TEXT_MSG, "{body}");
    }
    let alice2 = client(
        &addr,
        &["/login alice secret1", &format!("/groupmsg {gid} hi team")],
    );
    assert!(alice2.wait_with_output().await.unwrap().status.success());

    let lines = read_until(&mut bob_out, |v| v["cmd"] == "history").await;
    let push = lines
        .iter()
        .find(|v| v["type"] == "push" && v["id"] == ids::TEXT_MSG)
        .expect("bob printed alice's message");
    assert_eq!(push["body"]["content"], "hello from alice");
    let gpush = lines
        .iter()
        .find(|v| v["type"] == "push" && v["id"] == ids::GROUP_TEXT_PUSH)
        .expect("bob printed the group message");
    assert_eq!(gpush["body"]["content"], "hi team");
    let history = lines.last().unwrap();
    assert_eq!(history["body"]["data"][0]["content"], "hello from alice");
    let status = tokio::time::timeout(WAIT, bob.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_client_that_gets_no_reply_exits_non_zero() {
    // Nothing listens on this port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = Command::new(BIN)
        .args([
            "client",
            &format!("127.0.0.1:{port}"),
            "--json",
            "--timeout",
            "1s",
            "-e",
            "/ping",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_disconnected_reconnects_resumes_with_its_token_and_syncs() {
    let server = TestServer::with(|c| c.session.max_devices = 1).await;
    let addr = server.addr.to_string();
    let mut setup = server.client().await;
    setup.register("carol").await;
    let mut dave = server.user("dave").await;

    let mut carol = client(
        &addr,
        &[
            "/login carol secret1",
            "/wait resumed 1 20000",
            "/wait 208 1 20000",
        ],
    );
    let mut out = BufReader::new(carol.stdout.take().unwrap()).lines();
    read_until(&mut out, |v| v["type"] == "reply" && v["cmd"] == "login").await;

    // Another login of carol takes the only device slot: the client is told and closed.
    let mut intruder = server.client().await;
    intruder.login("carol").await;
    read_until(&mut out, |v| {
        v["type"] == "event" && v["event"] == "disconnected"
    })
    .await;
    // While the client is away, dave writes to carol.
    dave.send(
        ids::TEXT_MSG,
        json!({"to_user_id": "carol", "content": "while you were away"}),
    )
    .await;
    dave.assert_quiet().await;

    let lines = read_until(&mut out, |v| {
        v["type"] == "push" && v["body"]["content"] == "while you were away"
    })
    .await;
    let resumed = lines
        .iter()
        .find(|v| v["event"] == "resumed")
        .expect("resumed after reconnecting");
    assert_eq!(resumed["via"], "token");
    let status = tokio::time::timeout(WAIT, carol.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    server.stop().await;
}
