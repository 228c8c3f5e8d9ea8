//! Error paths: framing (oversized, exact-limit, truncated), malformed and unauthenticated
//! requests for every id, unknown ids, P2P and history errors, idle timeout, flood control,
//! the slow-consumer policy and logout.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use chat_zinx::protocol::{codec, ids, messages::code};
use serde_json::{json, Value};
use support::*;

fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    codec::encode(id, body).to_vec()
}

/// Sends a request and returns the body of the frame with id `resp`.
async fn ask(c: &mut Client, id: u32, body: Value, resp: u32) -> Value {
    c.send(id, body).await;
    c.expect(resp).await
}

/// One row of a table of requests: what it checks, the request's id and body (the bytes
/// sent), and the reply expected: its id and whole body.
type Row<'a> = (&'a str, u32, String, u32, Value);

/// Sends the requests of `rows` from `c` in order and checks each whole reply; a failure
/// names the row.
async fn check_rows(c: &mut Client, rows: &[Row<'_>]) {
    for (what, id, body, resp, expected) in rows {
        c.send_body(*id, body.as_bytes()).await;
        assert_eq!(
            c.expect(*resp).await,
            *expected,
            "{what} (id {id}, body {body})"
        );
    }
}

/// Asserts a 99 body with `code` (and a text), with `ref` only when `reference` is given.
fn assert_error(e: &Value, code: u32, reference: Option<u32>) {
    assert_error_of("", e, code, reference);
}

/// [`assert_error`], naming `what` (a row of a table) on failure.
fn assert_error_of(what: &str, e: &Value, code: u32, reference: Option<u32>) {
    assert_eq!(e["code"], code, "{what}{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}{e}"
    );
    match reference {
        Some(r) => assert_eq!(e["ref"], r, "{what}{e}"),
        None => assert!(e.get("ref").is_none(), "{what}v1 errors carry no ref: {e}"),
    }
}

/// Asserts a failed 402: a non-zero `code`, a text, and no `msg_id`.
fn assert_failed_ack(a: &Value, code: u32) {
    assert_eq!(a["code"], code, "{a}");
    assert!(a["message"].is_string(), "{a}");
    assert!(a.get("msg_id").is_none(), "{a}");
}

fn history_req(target: &str, limit: i64) -> Value {
    json!({"target_username": target, "limit": limit})
}

/// The contents of a successful 212, oldest first.
fn history_contents(h: &Value) -> Vec<String> {
    assert_eq!(h["code"], 0, "{h}");
    h.get("data")
        .map(|d| {
            d.as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// -------------------------------------------------------------------------------------------
// Framing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_on_a_v2_connection_gets_error_10_then_close() {
    let server = TestServer::with(|c| c.protocol.max_body = 256).await;
    let mut c = server.user_v2("alice").await;
    // Only the header: the server must refuse before reading a body.
    c.send_raw(&header(257, ids::TEXT_MSG)).await;
    let frames = c.until_closed().await;
    let last = frames.last().expect("a 99 before the close");
    assert_eq!(last.id, ids::ERROR);
    let e = body_json(&last.body);
    assert_eq!(e["code"], code::FRAME_TOO_LARGE, "{e}");
    assert!(e["message"].is_string(), "{e}");
    assert_eq!(frames.len(), 1, "nothing but the error");

    // The server keeps serving others.
    let mut other = server.client().await;
    other.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_on_a_v1_connection_closes_it() {
    let server = TestServer::start().await;
    let mut c = server.user("alice").await;
    c.send_raw(&header(8193, ids::TEXT_MSG)).await;
    let frames = c.until_closed().await;
    // A v1 client may get a 99 before the EOF, nothing else.
    for f in &frames {
        assert_eq!(f.id, ids::ERROR, "{:?}", body_json(&f.body));
        assert_eq!(body_json(&f.body)["code"], code::FRAME_TOO_LARGE);
    }
    assert!(frames.len() <= 1);

    // Not logged in, any id, huge length: closed as well.
    let mut c = server.client().await;
    c.send_raw(&header(u32::MAX, 0)).await;
    c.until_closed().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_body_is_never_stored() {
    let server = TestServer::with(|c| c.protocol.max_body = 256).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let base = json!({"to_user_id": "bob", "content": ""}).to_string();
    let body = json!({"to_user_id": "bob", "content": "o".repeat(257 - base.len())}).to_string();
    assert_eq!(body.len(), 257);
    // The server may close before reading it all: a write error is fine.
    let _ = alice
        .try_send_raw(&frame(ids::TEXT_MSG, body.as_bytes()))
        .await;
    alice.until_closed().await;

    bob.assert_quiet().await;
    let rows: &[Row] = &[
        (
            "no history with alice",
            ids::HISTORY_REQ,
            history_req("alice", 0).to_string(),
            ids::HISTORY_RESP,
            json!({"code": 0, "message": "成功"}),
        ),
        (
            "no conversation at all",
            ids::RELATIONS_REQ,
            json!({}).to_string(),
            ids::RELATIONS_RESP,
            json!({"code": 0, "message": "成功", "data": []}),
        ),
    ];
    check_rows(&mut bob, rows).await;
    // And at alice's next login nothing is pending either way.
    let mut alice = server.client().await;
    alice.login("alice").await;
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_body_of_exactly_max_body_is_accepted() {
    let server = TestServer::with(|c| c.protocol.max_body = 256).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let base = json!({"to_user_id": "bob", "content": ""}).to_string();
    let content = "x".repeat(256 - base.len());
    let body = json!({"to_user_id": "bob", "content": content}).to_string();
    assert_eq!(body.len(), 256);
    alice.send_body(ids::TEXT_MSG, body.as_bytes()).await;
    let d = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(d["content"], content.as_str());
    alice.assert_quiet().await;

    // The same for a v2 sender, which gets its ack.
    let mut carol = server.user_v2("carol").await;
    let base = json!({"to_user_id": "bob", "content": "", "client_msg_id": "k1"}).to_string();
    let content = "y".repeat(256 - base.len());
    let body = json!({"to_user_id": "bob", "content": content, "client_msg_id": "k1"}).to_string();
    assert_eq!(body.len(), 256);
    carol.send_body(ids::TEXT_MSG, body.as_bytes()).await;
    let a = carol.expect(ids::SEND_ACK).await;
    assert!(a["msg_id"].is_string(), "{a}");
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], content.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_closes_the_connection_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut partial = header(100, ids::TEXT_MSG);
    partial.extend_from_slice(b"{\"to_user_");
    alice.send_raw(&partial).await;
    alice.shutdown_write().await;
    let frames = alice.until_closed().await;
    assert!(frames.iter().all(|f| f.id == ids::ERROR), "{frames:?}");

    // A truncated header too.
    let mut c = server.client().await;
    c.send_raw(&[4, 0, 0]).await;
    c.shutdown_write().await;
    c.until_closed().await;

    let mut other = server.client().await;
    other.assert_quiet().await;
    let mut alice = server.client().await;
    alice.login("alice").await;
    alice.assert_quiet().await;
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Malformed requests

/// Bodies that are malformed for every JSON request.
const GENERIC_MALFORMED: &[&str] = &[
    "",
    "{",
    "not json",
    "[1]",
    "\"a string\"",
    "null",
    "42",
    "{} trailing",
    "{\"a\":1}}",
];

const ID_MALFORMED: &[&str] = &[
    r#"{"group_id":"1"}"#,
    r#"{"group_id":-1}"#,
    r#"{"group_id":1.5}"#,
    r#"{"group_id":true}"#,
    r#"{"GROUP_ID":[1]}"#,
    r#"{"group_id":18446744073709551616}"#,
];

/// Per request id: the specific malformed bodies and the expected reply (id, exact body or
/// `None` for a 99 with code 2).
fn malformed_table() -> Vec<(u32, Vec<&'static str>, u32, Option<Value>)> {
    let group_err = Some(json!({"error": "请求数据格式错误"}));
    vec![
        (
            ids::REGISTER_REQ,
            vec![
                r#"{"username":7,"password":"secret1","email":"a@x"}"#,
                r#"{"username":"u","password":["secret1"],"email":"a@x"}"#,
            ],
            ids::REGISTER_RESP,
            Some(json!({"code": 1, "msg": "请求数据格式错误"})),
        ),
        (
            ids::LOGIN_REQ,
            vec![
                r#"{"username":"alice","password":123456}"#,
                r#"{"username":{"n":1},"password":"secret1"}"#,
            ],
            ids::LOGIN_RESP,
            Some(json!({"code": 1, "msg": "请求数据格式错误"})),
        ),
        (
            ids::TEXT_MSG,
            vec![
                r#"{"to_user_id":5,"content":"x"}"#,
                r#"{"to_user_id":"bob","content":{"a":1}}"#,
                r#"{"to_user_id":"bob","content":"x","sent_at":7}"#,
                r#"{"to_user_id":"bob","content":"x","sent_at":"yesterday"}"#,
            ],
            ids::ERROR,
            None,
        ),
        (
            ids::HISTORY_REQ,
            vec![
                r#"{"target_username":1}"#,
                r#"{"target_username":"bob","limit":"10"}"#,
                r#"{"target_username":"bob","limit":1.5}"#,
            ],
            ids::HISTORY_RESP,
            Some(json!({"code": 2, "message": "请求格式错误"})),
        ),
        (
            ids::CREATE_GROUP_REQ,
            vec![
                r#"{"name":5}"#,
                r#"{"name":"valid-name","description":false}"#,
                r#"{"name":"valid-name","avatar":[]}"#,
            ],
            ids::CREATE_GROUP_RESP,
            group_err.clone(),
        ),
        (
            ids::JOIN_GROUP_REQ,
            ID_MALFORMED.to_vec(),
            ids::JOIN_GROUP_RESP,
            group_err.clone(),
        ),
        (
            ids::LEAVE_GROUP_REQ,
            ID_MALFORMED.to_vec(),
            ids::LEAVE_GROUP_RESP,
            group_err.clone(),
        ),
        (
            ids::GROUP_MEMBERS_REQ,
            ID_MALFORMED.to_vec(),
            ids::GROUP_MEMBERS_RESP,
            group_err.clone(),
        ),
        (
            ids::UPDATE_GROUP_REQ,
            [ID_MALFORMED, &[r#"{"group_id":1,"name":5}"#]].concat(),
            ids::UPDATE_GROUP_RESP,
            group_err.clone(),
        ),
        (
            ids::SET_ROLE_REQ,
            [
                ID_MALFORMED,
                &[
                    r#"{"group_id":1,"target_user_id":-2,"new_role":"admin"}"#,
                    r#"{"group_id":1,"target_user_id":2.5,"new_role":"admin"}"#,
                    r#"{"group_id":1,"target_user_id":"2","new_role":"admin"}"#,
                    r#"{"group_id":1,"target_user_id":2,"new_role":1}"#,
                ],
            ]
            .concat(),
            ids::SET_ROLE_RESP,
            group_err.clone(),
        ),
        (
            ids::REMOVE_MEMBER_REQ,
            [
                ID_MALFORMED,
                &[
                    r#"{"group_id":1,"target_user_id":-2}"#,
                    r#"{"group_id":1,"target_user_id":2.5}"#,
                    r#"{"group_id":1,"target_user_id":"2"}"#,
                ],
            ]
            .concat(),
            ids::REMOVE_MEMBER_RESP,
            group_err.clone(),
        ),
        (
            ids::GROUP_DETAILS_REQ,
            ID_MALFORMED.to_vec(),
            ids::GROUP_DETAILS_RESP,
            group_err,
        ),
        (
            ids::GROUP_HISTORY_REQ,
            [
                ID_MALFORMED,
                &[
                    r#"{"group_id":1,"last_id":-1}"#,
                    r#"{"group_id":1,"last_id":0.5}"#,
                    r#"{"group_id":1,"limit":"5"}"#,
                ],
            ]
            .concat(),
            ids::GROUP_HISTORY_RESP,
            Some(json!({"error": "请求格式错误"})),
        ),
        (
            ids::GROUP_TEXT_REQ,
            [ID_MALFORMED, &[r#"{"group_id":1,"content":5}"#]].concat(),
            ids::GROUP_TEXT_ACK,
            Some(json!({"status": 1, "error": "Invalid request format"})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_the_malformed_reply_of_their_request_id() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("real-group").await;
    for (id, specific, resp, expected) in malformed_table() {
        for body in GENERIC_MALFORMED.iter().chain(specific.iter()) {
            alice.send_body(id, body.as_bytes()).await;
            let got = alice.expect(resp).await;
            match &expected {
                Some(e) => assert_eq!(&got, e, "id {id}, body {body:?}"),
                None => assert_error(&got, code::MALFORMED, None),
            }
        }
    }
    // Nothing happened: no new group, no message, no membership change.
    alice.assert_quiet().await;
    bob.assert_quiet().await;
    let mine = ask(
        &mut alice,
        ids::MY_GROUPS_REQ,
        json!({}),
        ids::MY_GROUPS_RESP,
    )
    .await;
    assert_eq!(mine["total"], 1, "{mine}");
    assert_eq!(mine["groups"][0]["id"], gid);
    let h = ask(
        &mut alice,
        ids::GROUP_HISTORY_REQ,
        json!({ "group_id": gid }),
        ids::GROUP_HISTORY_RESP,
    )
    .await;
    assert_eq!(h["messages"], json!([]));
    assert_eq!(
        ask(
            &mut alice,
            ids::RELATIONS_REQ,
            json!({}),
            ids::RELATIONS_RESP
        )
        .await,
        json!({"code": 0, "message": "成功", "data": []})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sends_on_a_v2_connection_get_a_failed_402() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    server.user("bob").await;
    for body in GENERIC_MALFORMED.iter().chain(&[
        r#"{"to_user_id":5,"content":"x"}"#,
        r#"{"to_user_id":"bob","content":"x","sent_at":"not a time"}"#,
    ]) {
        alice.send_body(ids::TEXT_MSG, body.as_bytes()).await;
        let a = alice.expect(ids::SEND_ACK).await;
        assert_failed_ack(&a, code::MALFORMED);
    }
    // A group text: the 311 of the original, then the failed 402.
    alice.send_body(ids::GROUP_TEXT_REQ, b"{").await;
    assert_eq!(
        alice.expect(ids::GROUP_TEXT_ACK).await,
        json!({"status": 1, "error": "Invalid request format"})
    );
    assert_failed_ack(&alice.expect(ids::SEND_ACK).await, code::MALFORMED);
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_body_to_parse_ignore_it() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    for body in ["", "{", "[1]"] {
        alice.send_body(ids::MY_GROUPS_REQ, body.as_bytes()).await;
        assert_eq!(
            alice.expect(ids::MY_GROUPS_RESP).await,
            json!({"groups": [], "total": 0})
        );
        alice.send_body(ids::RELATIONS_REQ, body.as_bytes()).await;
        assert_eq!(
            alice.expect(ids::RELATIONS_RESP).await,
            json!({"code": 0, "message": "成功", "data": []})
        );
        alice.send_body(ids::PING, body.as_bytes()).await;
        let f = alice.next_frame().await.unwrap();
        assert_eq!((f.id, &f.body[..]), (ids::PONG, &b"pong"[..]));
    }
    alice.send_body(ids::LOGOUT_REQ, b"{").await;
    assert_eq!(
        alice.expect(ids::LOGOUT_RESP).await,
        json!({"code": 0, "msg": "已登出"})
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Not logged in

const GROUP_REQUESTS: [u32; 10] = [
    ids::CREATE_GROUP_REQ,
    ids::JOIN_GROUP_REQ,
    ids::LEAVE_GROUP_REQ,
    ids::GROUP_MEMBERS_REQ,
    ids::MY_GROUPS_REQ,
    ids::UPDATE_GROUP_REQ,
    ids::SET_ROLE_REQ,
    ids::REMOVE_MEMBER_REQ,
    ids::GROUP_DETAILS_REQ,
    ids::GROUP_HISTORY_REQ,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_needing_login_are_refused_before_login() {
    let server = TestServer::start().await;
    let mut owner = server.user("owner").await;
    let gid = owner.create_group("some-group").await;
    let mut c = server.client().await;

    c.msg("owner", "hi").await;
    assert_error(&c.expect(ids::ERROR).await, code::NOT_LOGGED_IN, None);
    c.send(
        ids::GROUP_TEXT_REQ,
        json!({"group_id": gid, "content": "x"}),
    )
    .await;
    assert_error(&c.expect(ids::ERROR).await, code::NOT_LOGGED_IN, None);
    let no_session = json!({"code": 1, "message": "用户未登录或会话无效"});
    let rows: &[Row] = &[
        (
            "history",
            ids::HISTORY_REQ,
            history_req("owner", 10).to_string(),
            ids::HISTORY_RESP,
            no_session.clone(),
        ),
        // Login is checked before the body is parsed.
        (
            "history, malformed",
            ids::HISTORY_REQ,
            "{".to_string(),
            ids::HISTORY_RESP,
            no_session,
        ),
        (
            "relations",
            ids::RELATIONS_REQ,
            json!({}).to_string(),
            ids::RELATIONS_RESP,
            json!({"code": 1, "message": "未登录用户", "data": null}),
        ),
    ];
    check_rows(&mut c, rows).await;
    for id in GROUP_REQUESTS {
        for body in [
            json!({"group_id": gid, "name": "nn-name", "target_user_id": 1, "new_role": "admin"})
                .to_string(),
            "{".to_string(),
        ] {
            c.send_body(id, body.as_bytes()).await;
            assert_eq!(
                c.expect(id + 1).await,
                json!({"error": "用户未登录"}),
                "id {id} {body}"
            );
        }
    }
    let out = ask(&mut c, ids::LOGOUT_REQ, json!({}), ids::LOGOUT_RESP).await;
    assert_eq!(out["code"], 1, "{out}");
    assert!(out["msg"].is_string(), "{out}");
    c.assert_quiet().await;

    // Nothing reached the owner or the group.
    owner.assert_quiet().await;
    assert_eq!(
        ask(
            &mut owner,
            ids::GROUP_DETAILS_REQ,
            json!({ "group_id": gid }),
            ids::GROUP_DETAILS_RESP
        )
        .await["member_count"],
        1
    );

    // v2: sync and sends are refused with code 1 too.
    let mut v2 = server.client().await;
    v2.hello().await;
    v2.send(ids::SYNC_REQ, json!({})).await;
    assert_error(
        &v2.expect(ids::ERROR).await,
        code::NOT_LOGGED_IN,
        Some(ids::SYNC_REQ),
    );
    v2.send(
        ids::TEXT_MSG,
        json!({"to_user_id": "owner", "content": "x", "client_msg_id": "m1"}),
    )
    .await;
    let a = v2.expect(ids::SEND_ACK).await;
    assert_failed_ack(&a, code::NOT_LOGGED_IN);
    assert_eq!(a["client_msg_id"], "m1");
    v2.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_register_and_login_work_without_login() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send_body(ids::PING, b"anything at all").await;
    let f = c.next_frame().await.unwrap();
    assert_eq!((f.id, &f.body[..]), (ids::PONG, &b"pong"[..]));
    let reg = c.register("newbie").await;
    let login = c.login("newbie").await;
    assert_eq!(reg["id"], login["id"]);
    // Now logged in: the same connection may do what needed a login.
    assert_eq!(
        ask(&mut c, ids::MY_GROUPS_REQ, json!({}), ids::MY_GROUPS_RESP).await,
        json!({"groups": [], "total": 0})
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Unknown ids

const UNKNOWN_IDS: [u32; 7] = [0, 3, 209, 221, 405, 500, 0xFFFF_FFFF];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_ignored_on_a_v1_connection() {
    let server = TestServer::start().await;
    let mut anon = server.client().await;
    let mut alice = server.user("alice").await;
    for c in [&mut anon, &mut alice] {
        for id in UNKNOWN_IDS.into_iter().chain([
            ids::ERROR,
            ids::SEND_ACK,
            ids::SYNC_RESP,
            ids::SYNC_REQ,
        ]) {
            c.send_body(id, b"{}").await;
            // A body that looks like a ping frame must be skipped as a whole.
            c.send_body(id, &frame(ids::PING, b"ping")).await;
            c.send_body(id, b"").await;
        }
        // Exactly one pong: nothing was answered and the framing stayed in step.
        c.assert_quiet().await;
    }
    // Still logged in.
    assert_eq!(
        ask(
            &mut alice,
            ids::MY_GROUPS_REQ,
            json!({}),
            ids::MY_GROUPS_RESP
        )
        .await,
        json!({"groups": [], "total": 0})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_get_error_12_with_ref_on_a_v2_connection() {
    let server = TestServer::start().await;
    let mut c = server.user_v2("alice").await;
    for id in UNKNOWN_IDS {
        c.send_body(id, &frame(ids::PING, b"ping")).await;
        let e = c.expect(ids::ERROR).await;
        assert_error(&e, code::UNKNOWN_ID, Some(id));
    }
    c.assert_quiet().await;
    assert_eq!(
        ask(&mut c, ids::MY_GROUPS_REQ, json!({}), ids::MY_GROUPS_RESP).await,
        json!({"groups": [], "total": 0})
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// P2P errors and recipient resolution

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_to_an_unknown_recipient_is_refused_with_code_3() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    for (what, to, content) in [
        ("an unknown username: ", "nobody", "hello?"),
        (
            "an unknown uuid: ",
            "00000000-0000-4000-8000-000000000000",
            "x",
        ),
        ("an unknown numeric id: ", "4242", "x"),
    ] {
        alice.msg(to, content).await;
        let e = alice.expect(ids::ERROR).await;
        assert_error_of(what, &e, code::NOT_FOUND, None);
    }
    alice.assert_quiet().await;

    let mut carol = server.user_v2("carol").await;
    carol
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "nobody", "content": "x", "client_msg_id": "c-7"}),
        )
        .await;
    let a = carol.expect(ids::SEND_ACK).await;
    assert_failed_ack(&a, code::NOT_FOUND);
    assert_eq!(a["client_msg_id"], "c-7");
    carol.assert_quiet().await;
    // Nothing stored.
    assert_eq!(
        ask(
            &mut alice,
            ids::RELATIONS_REQ,
            json!({}),
            ids::RELATIONS_RESP
        )
        .await,
        json!({"code": 0, "message": "成功", "data": []})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_with_a_sent_at_that_is_not_rfc3339_is_malformed() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    for sent_at in [
        "yesterday",
        "2024-13-01T00:00:00Z",
        "",
        "2024-05-18 10:00:00",
    ] {
        alice
            .send(
                ids::TEXT_MSG,
                json!({"to_user_id": "bob", "content": "x", "sent_at": sent_at}),
            )
            .await;
        assert_error(&alice.expect(ids::ERROR).await, code::MALFORMED, None);
    }
    bob.assert_quiet().await;
    // A valid one is echoed.
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "ok", "sent_at": "2024-05-18T10:00:00.5+08:00"}),
        )
        .await;
    let d = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(d["sent_at"], "2024-05-18T10:00:00.5+08:00");
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_msg_id_longer_than_64_characters_is_refused_with_code_4() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    let too_long = "k".repeat(65);
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "x", "client_msg_id": too_long}),
        )
        .await;
    assert_failed_ack(&alice.expect(ids::SEND_ACK).await, code::INVALID);
    bob.assert_quiet().await;
    // 64 characters (not bytes) are fine.
    let max = "键".repeat(64);
    alice
        .send(
            ids::TEXT_MSG,
            json!({"to_user_id": "bob", "content": "y", "client_msg_id": max}),
        )
        .await;
    let a = alice.expect(ids::SEND_ACK).await;
    assert_eq!(a["client_msg_id"], max.as_str());
    assert!(a["msg_id"].is_string(), "{a}");
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "y");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_recipient_by_uuid_username_or_numeric_id() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("Bob").await;
    for to in [
        bob.uuid(),
        bob.uuid().to_uppercase(),
        "Bob".to_string(),
        "bob".to_string(),
        "BOB".to_string(),
        bob.id().to_string(),
    ] {
        alice.msg(&to, &format!("to {to}")).await;
        let d = bob.expect(ids::TEXT_MSG).await;
        assert_eq!(d["content"], format!("to {to}"));
        // Echoed as written.
        assert_eq!(d["to_user_id"], to.as_str());
        assert_eq!(d["from_user_id"], alice.uuid().as_str());
        bob.assert_quiet().await;
    }
    alice.assert_quiet().await;
    let h = ask(
        &mut alice,
        ids::HISTORY_REQ,
        history_req("bob", 0),
        ids::HISTORY_RESP,
    )
    .await;
    assert_eq!(history_contents(&h).len(), 6);
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// History 211 and relations 213

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_target_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let cases = [
        (
            json!({"target_username": "ghost"}),
            json!({"code": 3, "message": "目标用户 ghost 不存在"}),
        ),
        // The original client's form: the name in both fields.
        (
            json!({"target_user_uuid": "ghost", "target_username": "ghost", "limit": 10}),
            json!({"code": 3, "message": "目标用户 ghost 不存在"}),
        ),
        (
            json!({"target_user_uuid": "6c1e1b7e-0000-4000-8000-000000000000"}),
            json!({"code": 3, "message": "目标用户UUID 6c1e1b7e-0000-4000-8000-000000000000 不存在"}),
        ),
        (
            json!({}),
            json!({"code": 3, "message": "必须提供目标用户的UUID或用户名"}),
        ),
        (
            json!({"target_user_uuid": "", "target_username": "", "limit": 5}),
            json!({"code": 3, "message": "必须提供目标用户的UUID或用户名"}),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            ask(
                &mut alice,
                ids::HISTORY_REQ,
                body.clone(),
                ids::HISTORY_RESP
            )
            .await,
            expected,
            "{body}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_returns_the_last_messages_oldest_first_default_50_cap_200() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.client().await;
    bob.register("bob").await;
    assert_eq!(
        ask(
            &mut alice,
            ids::HISTORY_REQ,
            history_req("bob", 10),
            ids::HISTORY_RESP
        )
        .await,
        json!({"code": 0, "message": "成功"}),
        "no history: no data key"
    );
    // 210 messages, pipelined; bob is offline.
    let mut batch = Vec::new();
    for i in 0..210 {
        let body = json!({"to_user_id": "bob", "content": format!("m{i}")}).to_string();
        batch.extend_from_slice(&frame(ids::TEXT_MSG, body.as_bytes()));
    }
    alice.send_raw(&batch).await;
    alice.assert_quiet().await;

    let expect_last =
        |n: usize| -> Vec<String> { (210 - n..210).map(|i| format!("m{i}")).collect() };
    for (limit, n) in [
        (3, 3),
        (0, 50),
        (-1, 50),
        (50, 50),
        (199, 199),
        (200, 200),
        (201, 200),
        (100_000, 200),
    ] {
        let h = ask(
            &mut alice,
            ids::HISTORY_REQ,
            history_req("bob", limit),
            ids::HISTORY_RESP,
        )
        .await;
        assert_eq!(history_contents(&h), expect_last(n), "limit {limit}");
    }
    // Item shape: sender's numeric id as a string, Unix seconds.
    let h = ask(
        &mut alice,
        ids::HISTORY_REQ,
        history_req("bob", 1),
        ids::HISTORY_RESP,
    )
    .await;
    let item = &h["data"][0];
    assert_eq!(item["from_user_id"], alice.id().to_string());
    assert!(item["timestamp"].is_i64(), "{item}");
    // Bob sees the same conversation, by alice's uuid.
    bob.login("bob").await;
    for _ in 0..210 {
        bob.expect(ids::TEXT_MSG).await;
    }
    let h = ask(
        &mut bob,
        ids::HISTORY_REQ,
        json!({"target_user_uuid": alice.uuid(), "limit": 3}),
        ids::HISTORY_RESP,
    )
    .await;
    assert_eq!(history_contents(&h), expect_last(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_list_the_peers_after_a_message() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let empty = json!({"code": 0, "message": "成功", "data": []});
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            ask(c, ids::RELATIONS_REQ, json!({}), ids::RELATIONS_RESP).await,
            empty
        );
    }
    alice.msg("bob", "hi").await;
    bob.expect(ids::TEXT_MSG).await;
    let (alice_id, bob_id) = (alice.id().to_string(), bob.id().to_string());
    for (what, c, expected) in [
        (
            "the sender has the recipient",
            &mut alice,
            json!({"code": 0, "message": "成功", "data": [bob_id]}),
        ),
        (
            "the recipient has the sender",
            &mut bob,
            json!({"code": 0, "message": "成功", "data": [alice_id]}),
        ),
        ("a third user has nobody", &mut carol, empty),
    ] {
        assert_eq!(
            ask(c, ids::RELATIONS_REQ, json!({}), ids::RELATIONS_RESP).await,
            expected,
            "{what}"
        );
    }
    // A second peer, and oneself.
    carol.msg("alice", "yo").await;
    alice.expect(ids::TEXT_MSG).await;
    alice.msg("alice", "note to self").await;
    alice.expect(ids::TEXT_MSG).await;
    let r = ask(
        &mut alice,
        ids::RELATIONS_REQ,
        json!({}),
        ids::RELATIONS_RESP,
    )
    .await;
    assert_eq!(
        (r["code"].as_u64(), r["message"].as_str()),
        (Some(0), Some("成功"))
    );
    let peers: HashSet<String> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = [alice.id(), bob.id(), carol.id()]
        .iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(peers, expected);
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Idle timeout and flood control

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_by_the_server() {
    let server = TestServer::with(|c| c.protocol.idle_timeout = Duration::from_secs(1)).await;
    let mut v2 = server.client().await;
    v2.hello().await;
    let mut v1 = server.client().await;
    let mut logged_in = server.client().await;
    logged_in.register("idler").await;
    logged_in.login("idler").await;

    let frames = v2.until_closed().await;
    let last = frames.last().expect("a 99 before the close");
    assert_eq!(last.id, ids::ERROR);
    assert_eq!(body_json(&last.body)["code"], code::IDLE_TIMEOUT);
    for c in [&mut v1, &mut logged_in] {
        let frames = c.until_closed().await;
        assert!(frames.iter().all(|f| f.id == ids::ERROR), "{frames:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_pinging_stays_open_past_the_idle_timeout() {
    let server = TestServer::with(|c| c.protocol.idle_timeout = Duration::from_secs(1)).await;
    let mut c = server.client().await;
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        c.assert_quiet().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pipelined_pings_is_throttled_not_dropped() {
    let server = TestServer::with(|c| {
        c.protocol.rate_per_sec = 50;
        c.protocol.rate_burst = 10;
    })
    .await;
    let mut c = server.client().await;
    let mut burst = Vec::new();
    for i in 0..300 {
        burst.extend_from_slice(&frame(ids::PING, format!("p{i}").as_bytes()));
    }
    c.send_raw(&burst).await;
    for i in 0..300 {
        let f = c
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("closed after {i} pongs"));
        assert_eq!((f.id, &f.body[..]), (ids::PONG, &b"pong"[..]), "pong {i}");
    }
    // Still connected, and requests still work.
    c.assert_quiet().await;
    c.register("flooder").await;
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Slow consumer

/// Polls 222 until `user_id` is offline (its connection's close has been processed).
async fn wait_offline(probe: &mut Client, gid: u64, user_id: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = ask(
            probe,
            ids::GROUP_MEMBERS_REQ,
            json!({ "group_id": gid }),
            ids::GROUP_MEMBERS_RESP,
        )
        .await;
        let m = r["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == user_id)
            .cloned()
            .unwrap_or_else(|| panic!("{user_id} not in {r}"));
        if m["is_online"] == false {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user {user_id} still online after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FLOOD: usize = 3000;

fn flood_content(i: usize) -> String {
    let head = format!("m{i:05}-");
    format!("{head}{}", "z".repeat(4000 - head.len()))
}

fn flood_index(content: &str) -> usize {
    content[1..6].parse().unwrap()
}

/// Sends the flood to bob as a steady stream: a round trip after every 4 messages (a single
/// pipelined burst hits another bug, see `a_reader_that_keeps_up_is_not_cut_off_by_a_burst`).
async fn send_flood(alice: &mut Client) {
    for chunk in (0..FLOOD).collect::<Vec<_>>().chunks(4) {
        let mut batch = Vec::new();
        for &i in chunk {
            let body = json!({"to_user_id": "bob", "content": flood_content(i)}).to_string();
            batch.extend_from_slice(&frame(ids::TEXT_MSG, body.as_bytes()));
        }
        alice.send_raw(&batch).await;
        alice.assert_quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_without_blocking_the_sender_and_loses_nothing() {
    // The queue-full path of the slow-consumer policy: bob's socket fills, its writer blocks,
    // its 8-frame queue overflows and the hub closes it. The write timeout is long so that
    // the close is caused by the full queue, and the farewell 99 can still be written once
    // bob reads again.
    let server = TestServer::with(|c| {
        c.protocol.write_queue = 8;
        c.protocol.write_timeout = Duration::from_secs(30);
        c.protocol.rate_per_sec = 1_000_000;
        c.protocol.rate_burst = 1_000_000;
    })
    .await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let bob_id = bob.id();
    // A group only to observe bob's presence.
    let gid = alice.create_group("presence").await;
    bob.join_group(gid).await;
    bob.assert_quiet().await;

    // Bob stops reading; alice sends far more than socket buffers hold. The sender is neither
    // blocked nor disconnected: every send is handled (each chunk's ping is answered).
    send_flood(&mut alice).await;
    // Bob reads again: what its socket holds, then the reason, then EOF.
    let dead = tokio::spawn(async move { bob.until_closed().await });
    wait_offline(&mut alice, gid, bob_id).await;
    alice.assert_quiet().await;

    // Bob's dead connection: some deliveries, then (checked last) the reason, then EOF.
    let frames = dead.await.unwrap();
    let deliveries: Vec<Value> = frames
        .iter()
        .filter(|f| f.id == ids::TEXT_MSG)
        .map(|f| body_json(&f.body))
        .collect();
    let others: Vec<(u32, Value)> = frames
        .iter()
        .filter(|f| f.id != ids::TEXT_MSG)
        .map(|f| (f.id, body_json(&f.body)))
        .collect();
    let seen_on_dead: HashSet<usize> = deliveries
        .iter()
        .map(|d| flood_index(d["content"].as_str().unwrap()))
        .collect();
    assert!(!deliveries.is_empty(), "some 208s before the close");
    assert!(
        seen_on_dead.len() < FLOOD,
        "the receiver cannot have taken all of it"
    );

    // Nothing is lost: the next login's backlog has what the dead connection missed.
    let mut bob = server.client().await;
    bob.login("bob").await;
    let mut backlog = HashSet::new();
    while !backlog.contains(&(FLOOD - 1)) {
        let d = bob.expect(ids::TEXT_MSG).await;
        backlog.insert(flood_index(d["content"].as_str().unwrap()));
    }
    assert!(
        backlog.iter().any(|i| !seen_on_dead.contains(i)),
        "the backlog includes messages the dead connection never got"
    );
    let all: HashSet<usize> = seen_on_dead.union(&backlog).copied().collect();
    assert_eq!(
        all.len(),
        FLOOD,
        "every message reached bob one way or another"
    );
    let h = ask(
        &mut bob,
        ids::HISTORY_REQ,
        history_req("alice", 200),
        ids::HISTORY_RESP,
    )
    .await;
    let got: Vec<usize> = history_contents(&h)
        .iter()
        .map(|c| flood_index(c))
        .collect();
    assert_eq!(got, (FLOOD - 200..FLOOD).collect::<Vec<_>>());
    bob.assert_quiet().await;

    // The dead connection's last frame told it why: 99 with code 9, and nothing else.
    assert_eq!(others.len(), 1, "exactly one non-208 frame: {others:?}");
    let (id, e) = &others[0];
    assert_eq!(*id, ids::ERROR, "{e}");
    assert_eq!(e["code"], code::SLOW_CONSUMER, "{e}");
    assert_eq!(frames.last().unwrap().id, ids::ERROR, "the 99 comes last");
    server.stop().await;
}

/// A receiver that reads as fast as it can is not a slow consumer: a burst of pipelined
/// messages from one sender must reach it (default configuration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_up_is_not_cut_off_by_a_burst() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    const N: usize = 600;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            match bob.next_frame().await {
                Some(f) => got.push((f.id, body_json(&f.body))),
                None => break,
            }
            if got.last().unwrap().0 != ids::TEXT_MSG {
                break;
            }
        }
        got
    });
    let mut batch = Vec::new();
    for i in 0..N {
        let body = json!({"to_user_id": "bob", "content": format!("m{i}")}).to_string();
        batch.extend_from_slice(&frame(ids::TEXT_MSG, body.as_bytes()));
    }
    alice.send_raw(&batch).await;
    alice.assert_quiet().await;
    let got = reader.await.unwrap();
    let texts = got.iter().filter(|(id, _)| *id == ids::TEXT_MSG).count();
    assert_eq!(
        texts,
        N,
        "deliveries: {texts}, then {:?}",
        got.iter().find(|(id, _)| *id != ids::TEXT_MSG)
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Logout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_keeps_the_connection_open_and_stops_pushes() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("logout-group").await;
    bob.join_group(gid).await;

    assert_eq!(
        ask(&mut bob, ids::LOGOUT_REQ, json!({}), ids::LOGOUT_RESP).await,
        json!({"code": 0, "msg": "已登出"})
    );
    bob.assert_quiet().await;

    // Pushes stop.
    alice.msg("bob", "while logged out").await;
    alice.group_msg(gid, "group while logged out").await;
    alice.assert_quiet().await;
    bob.assert_quiet().await;

    // Requests needing login answer not-logged-in.
    let rows: &[Row] = &[
        (
            "history",
            ids::HISTORY_REQ,
            history_req("alice", 0).to_string(),
            ids::HISTORY_RESP,
            json!({"code": 1, "message": "用户未登录或会话无效"}),
        ),
        (
            "group details",
            ids::GROUP_DETAILS_REQ,
            json!({ "group_id": gid }).to_string(),
            ids::GROUP_DETAILS_RESP,
            json!({"error": "用户未登录"}),
        ),
    ];
    check_rows(&mut bob, rows).await;
    bob.msg("alice", "anyone?").await;
    assert_error(&bob.expect(ids::ERROR).await, code::NOT_LOGGED_IN, None);
    assert_eq!(
        ask(&mut bob, ids::LOGOUT_REQ, json!({}), ids::LOGOUT_RESP).await["code"],
        1
    );
    alice.assert_quiet().await;

    // Logging in again on the same connection works, and what was missed arrives.
    bob.login("bob").await;
    // Oldest first.
    assert_eq!(
        bob.expect(ids::TEXT_MSG).await["content"],
        "while logged out"
    );
    assert_eq!(
        bob.expect(ids::GROUP_TEXT_PUSH).await["content"],
        "group while logged out"
    );
    bob.assert_quiet().await;
    alice.msg("bob", "welcome back").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "welcome back");
    server.stop().await;
}
