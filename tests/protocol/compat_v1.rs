//! The original client's frames (`docs/protocol.md` §13) against the daemon: every reply must
//! carry the key set and value types the original client reads.

use crate::support;

use chat_zinx::protocol::ids;
use serde_json::{json, Value};
use support::*;

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_client_session_end_to_end() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;

    // Captured bytes of the original client: ping, register, login.
    alice
        .send_raw(b"\x04\x00\x00\x00\x01\x00\x00\x00ping")
        .await;
    let f = alice.next_frame().await.unwrap();
    assert_eq!((f.id, &f.body[..]), (ids::PONG, &b"pong"[..]));

    alice
        .send_body(
            ids::REGISTER_REQ,
            br#"{"username":"alice","password":"secret1","email":"a@x"}"#,
        )
        .await;
    let r = alice.expect(ids::REGISTER_RESP).await;
    assert_eq!(keys(&r), ["code", "data", "msg"]);
    assert_eq!(r["code"], 0);
    assert_eq!(r["msg"], "注册成功");
    assert_eq!(
        keys(&r["data"]),
        ["avatar", "email", "id", "user_uuid", "username"]
    );
    assert!(r["data"]["id"].is_u64());
    assert_eq!(r["data"]["user_uuid"].as_str().unwrap().len(), 36);
    bob.send_body(
        ids::REGISTER_REQ,
        br#"{"username":"bob","password":"secret1","email":"b@x"}"#,
    )
    .await;
    bob.expect(ids::REGISTER_RESP).await;

    let mut login = support::header(41, 104);
    login.extend_from_slice(br#"{"username":"alice","password":"secret1"}"#);
    alice.send_raw(&login).await;
    let r = alice.expect(ids::LOGIN_RESP).await;
    assert_eq!(keys(&r), ["code", "data", "msg"]);
    assert_eq!(
        (r["code"].as_u64(), r["msg"].as_str()),
        (Some(0), Some("登录成功"))
    );
    assert_eq!(
        keys(&r["data"]),
        [
            "avatar",
            "email",
            "id",
            "last_login",
            "token",
            "user_uuid",
            "username"
        ]
    );
    assert!(is_rfc3339(&r["data"]["last_login"]), "{r}");
    assert_eq!(r["data"]["token"].as_str().unwrap().split('.').count(), 3);
    let alice_uuid = r["data"]["user_uuid"].as_str().unwrap().to_string();
    bob.send_body(
        ids::LOGIN_REQ,
        br#"{"username":"bob","password":"secret1"}"#,
    )
    .await;
    bob.expect(ids::LOGIN_RESP).await;

    // /msg bob hi there <&>
    alice
        .send_body(
            ids::TEXT_MSG,
            br#"{"to_user_id":"bob","content":"hi there \u003c\u0026\u003e","sent_at":"0001-01-01T00:00:00Z"}"#,
        )
        .await;
    let d = bob.expect(ids::TEXT_MSG).await;
    assert_eq!(d["from_user_id"], alice_uuid.as_str());
    assert_eq!(d["to_user_id"], "bob");
    assert_eq!(d["content"], "hi there <&>");
    assert!(is_rfc3339(&d["sent_at"]));
    assert!(d["msg_id"].is_string() && d["seq"].is_u64() && d["timestamp"].is_i64());
    // The sender gets no reply to a successful v1 send.
    alice.assert_quiet().await;

    // /history bob 10: the original client puts the name into both fields (fallback, §2.5).
    alice
        .send_body(
            ids::HISTORY_REQ,
            br#"{"target_user_uuid":"bob","target_username":"bob","limit":10}"#,
        )
        .await;
    let h = alice.expect(ids::HISTORY_RESP).await;
    assert_eq!(h["code"], 0);
    assert_eq!(h["message"], "成功");
    let item = &h["data"][0];
    assert_eq!(item["content"], "hi there <&>");
    assert_eq!(
        item["from_user_id"],
        r["data"]["id"].as_u64().unwrap().to_string()
    );
    assert!(item["timestamp"].is_i64());

    // /creategroup g1 desc
    alice
        .send_body(
            ids::CREATE_GROUP_REQ,
            br#"{"name":"g1","description":"desc","avatar":""}"#,
        )
        .await;
    let g = alice.expect(ids::CREATE_GROUP_RESP).await;
    assert_eq!(
        keys(&g),
        [
            "avatar",
            "created_at",
            "description",
            "id",
            "member_count",
            "name",
            "owner_user_id"
        ]
    );
    assert_eq!(g["member_count"], 1);
    let gid = g["id"].as_u64().unwrap();
    assert_eq!(
        g["created_at"].as_str().unwrap().len(),
        "2025-05-18 15:28:01".len()
    );

    // /joingroup <gid>: the original client parses 218 as {code,message}.
    bob.send_body(
        ids::JOIN_GROUP_REQ,
        format!(r#"{{"group_id":{gid}}}"#).as_bytes(),
    )
    .await;
    let j = bob.expect(ids::JOIN_GROUP_RESP).await;
    assert_eq!(j, json!({"message": "成功加入群组"}));

    // /groupmsg <gid> hello group
    alice
        .send_body(
            ids::GROUP_TEXT_REQ,
            format!(r#"{{"group_id":{gid},"content":"hello group"}}"#).as_bytes(),
        )
        .await;
    let ack = alice.expect(ids::GROUP_TEXT_ACK).await;
    assert_eq!(ack["status"], 0);
    assert!(ack["msg_id"].is_string());
    assert!(ack.get("error").is_none());
    let p = bob.expect(ids::GROUP_TEXT_PUSH).await;
    assert_eq!(p["group_id"], gid);
    assert_eq!(p["from_user_id"], r["data"]["id"]);
    assert_eq!(p["from_user_uuid"], alice_uuid.as_str());
    assert_eq!(p["from_username"], "alice");
    assert_eq!(p["content"], "hello group");
    assert!(p["timestamp"].is_i64());
    assert_eq!(p["msg_id"], ack["msg_id"]);

    // /grouphistory <gid> 0 10
    alice
        .send_body(
            ids::GROUP_HISTORY_REQ,
            format!(r#"{{"group_id":{gid},"limit":10}}"#).as_bytes(),
        )
        .await;
    let gh = alice.expect(ids::GROUP_HISTORY_RESP).await;
    assert_eq!(keys(&gh), ["group_id", "has_more", "messages"]);
    assert_eq!(
        keys(&gh["messages"][0]),
        [
            "content",
            "id",
            "message_type",
            "msg_id",
            "sender_id",
            "sender_name",
            "sender_uuid",
            "timestamp"
        ]
    );
    assert_eq!(gh["messages"][0]["message_type"], "text");

    // /leavegroup <gid>
    bob.send_body(
        ids::LEAVE_GROUP_REQ,
        format!(r#"{{"group_id":{gid}}}"#).as_bytes(),
    )
    .await;
    assert_eq!(
        bob.expect(ids::LEAVE_GROUP_RESP).await,
        json!({"message": "成功退出群组"})
    );

    // A v1 connection never receives an id outside the original table.
    alice.send(ids::SYNC_REQ, json!({})).await;
    alice.send(999, json!({})).await;
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_login_error_codes_match_the_protocol() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let cases: &[(&[u8], u64, &str)] = &[
        (b"", 1, "请求数据格式错误"),
        (b"{", 1, "请求数据格式错误"),
        (
            br#"{"username":7,"password":"secret1","email":"a@x"}"#,
            1,
            "请求数据格式错误",
        ),
        (
            br#"{"username":"","password":"secret1","email":"a@x"}"#,
            2,
            "用户名和密码不能为空",
        ),
        (
            br#"{"username":"u","password":"secret1"}"#,
            2,
            "邮箱不能为空",
        ),
    ];
    for (body, code, msg) in cases {
        c.send_body(ids::REGISTER_REQ, body).await;
        let r = c.expect(ids::REGISTER_RESP).await;
        assert_eq!(
            (r["code"].as_u64().unwrap(), r["msg"].as_str().unwrap()),
            (*code, *msg),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(r.get("data").is_none());
    }
    // Limits (`docs/protocol.md` §12.1) are code 4 with a text naming the field.
    let long_name = "x".repeat(51);
    for (user, pass, email, needle) in [
        (long_name.as_str(), "secret1", "a@x", "username"),
        ("u1", "short", "a@x", "password"),
        ("u1", &"p".repeat(129), "a@x", "password"),
        ("u1", "secret1", "no-at-sign", "email"),
    ] {
        c.send(
            ids::REGISTER_REQ,
            json!({"username": user, "password": pass, "email": email}),
        )
        .await;
        let r = c.expect(ids::REGISTER_RESP).await;
        assert_eq!(r["code"], 4, "{r}");
        assert!(r["msg"].as_str().unwrap().contains(needle), "{r}");
    }
    c.register("carol").await;
    c.send(
        ids::REGISTER_REQ,
        json!({"username": "CAROL", "password": "secret1", "email": "c@x"}),
    )
    .await;
    assert_eq!(
        c.expect(ids::REGISTER_RESP).await,
        json!({"code": 3, "msg": "用户已存在"})
    );

    for (body, code, msg) in [
        (
            json!({"username": "nobody", "password": "secret1"}),
            3,
            "用户不存在",
        ),
        (
            json!({"username": "carol", "password": "wrong-password"}),
            4,
            "密码错误",
        ),
        (json!({"username": "carol"}), 2, "用户名或密码不能为空"),
        (
            json!({"username": ["carol"], "password": "x"}),
            1,
            "请求数据格式错误",
        ),
    ] {
        c.send(ids::LOGIN_REQ, body.clone()).await;
        let r = c.expect(ids::LOGIN_RESP).await;
        assert_eq!(
            (r["code"].as_u64().unwrap(), r["msg"].as_str().unwrap()),
            (code, msg),
            "{body}"
        );
    }
    // The stored name's case is returned, whatever case was typed.
    c.send(
        ids::LOGIN_REQ,
        json!({"username": "Carol", "password": "secret1"}),
    )
    .await;
    let r = c.expect(ids::LOGIN_RESP).await;
    assert_eq!(r["data"]["username"], "carol");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_login_is_the_previous_login_time() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let reg = c.register("dave").await;
    let first = c.login("dave").await;
    let second = c.login("dave").await;
    assert!(is_rfc3339(&first["last_login"]));
    assert_ne!(
        first["last_login"], second["last_login"],
        "second login reports the first"
    );
    assert_eq!(reg["id"], first["id"]);
    server.stop().await;
}
