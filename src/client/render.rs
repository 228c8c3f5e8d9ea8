//! What the client prints: one [`Output`] per thing that happened, rendered either for a human
//! or as one JSON object per line (`--json`, for tests and scripts).
//!
//! Rendering is pure (the viewer and the clock are parameters) so that both forms are
//! unit-tested without a network.

use serde_json::{json, Map, Value};

use crate::protocol::ids;

/// Who is looking: lets the human form say "you" instead of one's own name, uuid or id.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub user_id: Option<u64>,
    pub uuid: Option<String>,
    pub username: Option<String>,
    /// The connection is v2 (so a 402 follows every send and a 311 need not be shown).
    pub v2: bool,
}

impl Viewer {
    fn is_me_uuid(&self, uuid: &str) -> bool {
        self.uuid.as_deref() == Some(uuid)
    }

    fn is_me_id(&self, id: u64) -> bool {
        self.user_id == Some(id)
    }

    /// Whether `who` (as a sender wrote a recipient: username, uuid or numeric id) is the viewer.
    fn is_me_any(&self, who: &str) -> bool {
        self.is_me_uuid(who)
            || self
                .username
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(who))
            || self.user_id.is_some_and(|id| id.to_string() == who)
    }
}

/// One line (or block) of output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A frame that answers a command of the user.
    Reply {
        cmd: &'static str,
        id: u32,
        body: Value,
        /// Milliseconds since the request was sent.
        rtt_ms: Option<u64>,
        /// Further top-level fields (e.g. `new` for a sync).
        extra: Vec<(&'static str, Value)>,
    },
    /// A frame nobody asked for: a delivery (208, 312) or a notice. `sync`: it came inside a
    /// 404 page (a message missed while away), not as a frame of its own.
    Push { id: u32, body: Value, sync: bool },
    /// A 99 from the server; `cmd` when it answers a command.
    ServerError {
        cmd: Option<&'static str>,
        body: Value,
    },
    /// A failure seen by the client: `kind` is `usage`, `timeout`, `connect`, `not_connected`,
    /// `disconnected` or `send`.
    ClientError {
        kind: &'static str,
        cmd: Option<&'static str>,
        message: String,
    },
    /// Something that happened to the session (connected, disconnected, resumed, …).
    Event {
        event: &'static str,
        fields: Vec<(&'static str, Value)>,
    },
    /// Text for the user (`/help`).
    Info(String),
}

impl Output {
    pub fn event(event: &'static str, fields: Vec<(&'static str, Value)>) -> Self {
        Output::Event { event, fields }
    }

    pub fn client_error(kind: &'static str, cmd: Option<&'static str>, message: String) -> Self {
        Output::ClientError { kind, cmd, message }
    }
}

/// A frame body as JSON; a body that is not JSON (the `pong`, the original's base64 offline
/// deliveries) becomes a JSON string so that nothing is lost.
pub fn body_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The error a reply body reports, in any of the original's four conventions
/// (`{code,msg}`, `{code,message}`, `{error}`, `{status,error}`), or `None` for a success.
pub fn reply_error(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    let text = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .unwrap_or("")
            .to_string()
    };
    if let Some(code) = obj.get("code").and_then(Value::as_u64) {
        if code != 0 {
            return Some(format!("[{code}] {}", text(&["msg", "message", "error"])));
        }
    }
    if let Some(status) = obj.get("status").and_then(Value::as_u64) {
        if status != 0 {
            return Some(format!("[status {status}] {}", text(&["error", "message"])));
        }
    }
    match obj.get("error").and_then(Value::as_str) {
        Some(e) if !e.is_empty() => Some(e.to_string()),
        _ => None,
    }
}

/// `{"k":v,…}` with the keys in the given order (`type` first reads better in a log).
fn ordered(pairs: &[(&str, Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&Value::String((*k).to_string()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

/// The `--json` form: one object per line.
///
/// * `{"type":"reply","cmd":"login","id":105,"ok":true,"rtt_ms":3,"body":{…}}` (`error` when
///   not ok)
/// * `{"type":"push","id":208,"body":{…}}` (`"sync":true` when it came from a sync page)
/// * `{"type":"error","kind":"server","cmd":"msg","id":99,"body":{…}}`
/// * `{"type":"error","kind":"timeout","cmd":"login","message":"…"}`
/// * `{"type":"event","event":"connected",…}`
/// * `{"type":"info","message":"…"}`
pub fn json_line(out: &Output) -> String {
    match out {
        Output::Reply {
            cmd,
            id,
            body,
            rtt_ms,
            extra,
        } => {
            let error = reply_error(body);
            let mut pairs = vec![
                ("type", json!("reply")),
                ("cmd", json!(cmd)),
                ("id", json!(id)),
                ("ok", json!(error.is_none())),
            ];
            if let Some(e) = error {
                pairs.push(("error", json!(e)));
            }
            if let Some(rtt) = rtt_ms {
                pairs.push(("rtt_ms", json!(rtt)));
            }
            pairs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
            pairs.push(("body", body.clone()));
            ordered(&pairs)
        }
        Output::Push { id, body, sync } => {
            let mut pairs = vec![("type", json!("push")), ("id", json!(id))];
            if *sync {
                pairs.push(("sync", json!(true)));
            }
            pairs.push(("body", body.clone()));
            ordered(&pairs)
        }
        Output::ServerError { cmd, body } => {
            let mut pairs = vec![("type", json!("error")), ("kind", json!("server"))];
            if let Some(cmd) = cmd {
                pairs.push(("cmd", json!(cmd)));
            }
            pairs.push(("id", json!(ids::ERROR)));
            pairs.push(("body", body.clone()));
            ordered(&pairs)
        }
        Output::ClientError { kind, cmd, message } => {
            let mut pairs = vec![("type", json!("error")), ("kind", json!(kind))];
            if let Some(cmd) = cmd {
                pairs.push(("cmd", json!(cmd)));
            }
            pairs.push(("message", json!(message)));
            ordered(&pairs)
        }
        Output::Event { event, fields } => {
            let mut pairs = vec![("type", json!("event")), ("event", json!(event))];
            pairs.extend(fields.iter().map(|(k, v)| (*k, v.clone())));
            ordered(&pairs)
        }
        Output::Info(text) => ordered(&[("type", json!("info")), ("message", json!(text))]),
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in seconds or milliseconds.
pub fn clock(ts: i64) -> String {
    // Pushes carry seconds, acks milliseconds; no chat message predates 2001 in milliseconds.
    let secs = if ts > 100_000_000_000 { ts / 1000 } else { ts };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        Err(_) => "??:??:??".to_string(),
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn ts_of(v: &Value, now: i64) -> String {
    clock(v.get("timestamp").and_then(Value::as_i64).unwrap_or(now))
}

/// The human form; `None` for things a person need not see (e.g. a v2 group ack, whose 402
/// follows). `now` (Unix seconds) stamps messages that carry no time.
pub fn human(out: &Output, viewer: &Viewer, now: i64) -> Option<String> {
    match out {
        Output::Reply {
            cmd,
            id,
            body,
            rtt_ms,
            extra,
        } => human_reply(cmd, *id, body, *rtt_ms, extra, viewer, now),
        Output::Push { id, body, sync } => {
            let line = human_push(*id, body, viewer, now);
            Some(if *sync {
                format!("{line}  (missed)")
            } else {
                line
            })
        }
        Output::ServerError { cmd, body } => {
            let code = n(body, "code");
            let msg = s(body, "message");
            Some(match cmd {
                Some(cmd) => format!("✗ {cmd}: error {code}: {msg}"),
                None => format!("✗ error {code}: {msg}"),
            })
        }
        Output::ClientError { cmd, message, .. } => Some(match cmd {
            Some(cmd) => format!("✗ {cmd}: {message}"),
            None => format!("✗ {message}"),
        }),
        Output::Event { event, fields } => Some(human_event(event, fields)),
        Output::Info(text) => Some(text.clone()),
    }
}

fn field<'a>(fields: &'a [(&'static str, Value)], key: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn human_event(event: &str, fields: &[(&'static str, Value)]) -> String {
    let f = |k: &str| {
        field(fields, k)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    match event {
        "connected" | "reconnected" => {
            let server = field(fields, "server");
            let detail = match server {
                Some(sv) if sv.is_object() => format!(
                    "{}, node {}, protocol v2",
                    s(sv, "server"),
                    s(sv, "node_id")
                ),
                _ => "protocol v1".to_string(),
            };
            format!("• {event} to {} ({detail})", f("addr"))
        }
        "disconnected" => format!("• disconnected from {}: {}", f("addr"), f("reason")),
        "reconnecting" => {
            let err = f("error");
            let err = if err.is_empty() {
                String::new()
            } else {
                format!(" (last error: {err})")
            };
            format!(
                "• reconnecting to {} in {} ms, attempt {}{err}",
                f("addr"),
                f("delay_ms"),
                f("attempt")
            )
        }
        "resumed" => format!("• session resumed as {}", f("username")),
        "resume_failed" => format!("• could not resume the session: {}", f("reason")),
        "not_reconnecting" => format!("• not reconnecting: {}", f("reason")),
        "synced" => format!("• synced: {} missed message(s)", f("new")),
        "redirect" => format!("• server redirects ({}) to {}", f("reason"), f("addr")),
        "wait" => format!("• got {} × {}", f("count"), f("what")),
        other => {
            let rest: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            format!("• {other} {}", Value::Object(rest))
        }
    }
}

fn human_push(id: u32, body: &Value, viewer: &Viewer, now: i64) -> String {
    match id {
        ids::TEXT_MSG => {
            let from_uuid = s(body, "from_user_id");
            let from = if viewer.is_me_uuid(from_uuid) {
                "you"
            } else {
                match s(body, "from_username") {
                    "" => from_uuid,
                    name => name,
                }
            };
            let to = s(body, "to_user_id");
            let to = if viewer.is_me_any(to) { "you" } else { to };
            format!(
                "[{}] {from} → {to}: {}",
                ts_of(body, now),
                s(body, "content")
            )
        }
        ids::GROUP_TEXT_PUSH => {
            let from = if viewer.is_me_id(n(body, "from_user_id")) {
                "you"
            } else {
                s(body, "from_username")
            };
            format!(
                "[{}] #{} {from}: {}",
                ts_of(body, now),
                n(body, "group_id"),
                s(body, "content")
            )
        }
        ids::ERROR => format!("✗ error {}: {}", n(body, "code"), s(body, "message")),
        other => format!("[{} {other}] {body}", ids::name(other)),
    }
}

#[allow(clippy::too_many_arguments)]
fn human_reply(
    cmd: &str,
    id: u32,
    body: &Value,
    rtt_ms: Option<u64>,
    extra: &[(&'static str, Value)],
    viewer: &Viewer,
    now: i64,
) -> Option<String> {
    if let Some(err) = reply_error(body) {
        return Some(format!("✗ {cmd} failed: {err}"));
    }
    let data = body.get("data").unwrap_or(&Value::Null);
    let text = match id {
        ids::PONG => format!("pong ({} ms)", rtt_ms.unwrap_or(0)),
        ids::REGISTER_RESP => format!(
            "registered {} (id {}, uuid {})",
            s(data, "username"),
            n(data, "id"),
            s(data, "user_uuid")
        ),
        ids::LOGIN_RESP => format!(
            "logged in as {} (id {}); previous login {}",
            s(data, "username"),
            n(data, "id"),
            s(data, "last_login")
        ),
        ids::LOGOUT_RESP => "logged out".to_string(),
        ids::HISTORY_RESP => {
            let items = data.as_array().map(Vec::as_slice).unwrap_or(&[]);
            if items.is_empty() {
                "no messages".to_string()
            } else {
                let lines: Vec<String> = items
                    .iter()
                    .map(|m| {
                        let from = s(m, "from_user_id");
                        let from = if viewer.is_me_any(from) {
                            "you".to_string()
                        } else {
                            format!("user {from}")
                        };
                        format!("  [{}] {from}: {}", ts_of(m, now), s(m, "content"))
                    })
                    .collect();
                format!("history ({}):\n{}", items.len(), lines.join("\n"))
            }
        }
        ids::RELATIONS_RESP => {
            let peers: Vec<String> = data
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if peers.is_empty() {
                "no chat partners yet".to_string()
            } else {
                format!("chat partners (user ids): {}", peers.join(", "))
            }
        }
        ids::CREATE_GROUP_RESP => format!("created group #{} {}", n(body, "id"), s(body, "name")),
        ids::JOIN_GROUP_RESP
        | ids::LEAVE_GROUP_RESP
        | ids::UPDATE_GROUP_RESP
        | ids::SET_ROLE_RESP
        | ids::REMOVE_MEMBER_RESP => s(body, "message").to_string(),
        ids::GROUP_MEMBERS_RESP => {
            let members = body
                .get("members")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut out = format!(
                "group #{}: {} member(s)",
                n(body, "group_id"),
                members.len()
            );
            for m in members {
                let online = if m.get("is_online").and_then(Value::as_bool) == Some(true) {
                    ", online"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "\n  {} (id {}, {}{online})",
                    s(m, "username"),
                    n(m, "user_id"),
                    s(m, "role")
                ));
            }
            out
        }
        ids::MY_GROUPS_RESP => {
            let groups = body
                .get("groups")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut out = format!("your groups ({}):", groups.len());
            for g in groups {
                out.push_str(&format!(
                    "\n  #{} {} — {} member(s)",
                    n(g, "id"),
                    s(g, "name"),
                    n(g, "member_count")
                ));
                if !s(g, "description").is_empty() {
                    out.push_str(&format!(" — {}", s(g, "description")));
                }
            }
            out
        }
        ids::GROUP_DETAILS_RESP => {
            let mut out = format!(
                "group #{} {}: owner {}, {} member(s), created {}",
                n(body, "id"),
                s(body, "name"),
                n(body, "owner_user_id"),
                n(body, "member_count"),
                s(body, "created_at")
            );
            for key in ["description", "avatar"] {
                if !s(body, key).is_empty() {
                    out.push_str(&format!("\n  {key}: {}", s(body, key)));
                }
            }
            out
        }
        ids::GROUP_HISTORY_RESP => {
            let gid = n(body, "group_id");
            let msgs = body
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut out = format!("group #{gid} history ({}):", msgs.len());
            // The server sends newest first; a conversation reads oldest first.
            for m in msgs.iter().rev() {
                let from = if viewer.is_me_id(n(m, "sender_id")) {
                    "you"
                } else {
                    s(m, "sender_name")
                };
                out.push_str(&format!(
                    "\n  [{}] {from}: {}  (id {})",
                    ts_of(m, now),
                    s(m, "content"),
                    n(m, "id")
                ));
            }
            if body.get("has_more").and_then(Value::as_bool) == Some(true) {
                if let Some(oldest) = msgs.iter().map(|m| n(m, "id")).min() {
                    out.push_str(&format!("\n  (older: /grouphistory {gid} {oldest})"));
                }
            }
            out
        }
        ids::GROUP_TEXT_ACK if viewer.v2 => return None,
        ids::GROUP_TEXT_ACK => "✓ group message sent".to_string(),
        ids::SEND_ACK => "✓ delivered to server".to_string(),
        ids::SYNC_RESP => {
            let new = field(extra, "new").and_then(Value::as_u64).unwrap_or(0);
            format!("sync done: {new} new message(s)")
        }
        other => format!("[{} {other}] {body}", ids::name(other)),
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Viewer {
        Viewer {
            user_id: Some(2),
            uuid: Some("u-bob".into()),
            username: Some("bob".into()),
            v2: true,
        }
    }

    fn reply(cmd: &'static str, id: u32, body: Value) -> Output {
        Output::Reply {
            cmd,
            id,
            body,
            rtt_ms: Some(3),
            extra: vec![],
        }
    }

    // 2024-05-18T02:40:00Z
    const T: i64 = 1_716_000_000;

    #[test]
    fn json_reply_line() {
        let out = reply(
            "login",
            105,
            json!({"code":0,"msg":"登录成功","data":{"id":2}}),
        );
        assert_eq!(
            json_line(&out),
            r#"{"type":"reply","cmd":"login","id":105,"ok":true,"rtt_ms":3,"body":{"code":0,"data":{"id":2},"msg":"登录成功"}}"#
        );
        let out = reply("login", 105, json!({"code":4,"msg":"密码错误"}));
        let v: Value = serde_json::from_str(&json_line(&out)).unwrap();
        assert_eq!(v["ok"], json!(false));
        assert_eq!(v["error"], json!("[4] 密码错误"));
    }

    #[test]
    fn json_push_error_event_lines() {
        let push = Output::Push {
            id: 208,
            body: json!({"content":"hi"}),
            sync: false,
        };
        assert_eq!(
            json_line(&push),
            r#"{"type":"push","id":208,"body":{"content":"hi"}}"#
        );
        let synced = Output::Push {
            id: 312,
            body: json!({}),
            sync: true,
        };
        assert_eq!(
            json_line(&synced),
            r#"{"type":"push","id":312,"sync":true,"body":{}}"#
        );
        let err = Output::ServerError {
            cmd: Some("msg"),
            body: json!({"code":3,"message":"no such user","ref":208}),
        };
        assert_eq!(
            json_line(&err),
            r#"{"type":"error","kind":"server","cmd":"msg","id":99,"body":{"code":3,"message":"no such user","ref":208}}"#
        );
        let timeout = Output::client_error("timeout", Some("login"), "no 105 within 10s".into());
        assert_eq!(
            json_line(&timeout),
            r#"{"type":"error","kind":"timeout","cmd":"login","message":"no 105 within 10s"}"#
        );
        let ev = Output::event(
            "connected",
            vec![("addr", json!("127.0.0.1:9000")), ("protocol", json!(2))],
        );
        assert_eq!(
            json_line(&ev),
            r#"{"type":"event","event":"connected","addr":"127.0.0.1:9000","protocol":2}"#
        );
        assert_eq!(
            json_line(&Output::Info("a\nb".into())),
            r#"{"type":"info","message":"a\nb"}"#
        );
    }

    #[test]
    fn error_conventions_of_the_original() {
        assert_eq!(reply_error(&json!({"code":0,"msg":"ok"})), None);
        assert_eq!(
            reply_error(&json!({"code":3,"message":"目标用户 x 不存在"})),
            Some("[3] 目标用户 x 不存在".into())
        );
        assert_eq!(
            reply_error(&json!({"error":"用户未登录"})),
            Some("用户未登录".into())
        );
        assert_eq!(
            reply_error(&json!({"status":3,"error":"You are not a member of this group"})),
            Some("[status 3] You are not a member of this group".into())
        );
        assert_eq!(reply_error(&json!({"msg_id":"m","status":0})), None);
        assert_eq!(reply_error(&json!({"message":"成功加入群组"})), None);
        assert_eq!(reply_error(&json!("pong")), None);
        assert_eq!(
            reply_error(&json!({"client_msg_id":"c","code":7,"message":"too long"})),
            Some("[7] too long".into())
        );
    }

    #[test]
    fn bodies_that_are_not_json_become_strings() {
        assert_eq!(body_value(b"pong"), json!("pong"));
        assert_eq!(body_value(b"eyJh"), json!("eyJh"));
        assert_eq!(body_value(br#"{"a":1}"#), json!({"a":1}));
        assert_eq!(body_value(b"\xff"), json!("\u{fffd}"));
    }

    #[test]
    fn human_pushes_say_you() {
        let p2p = Output::Push {
            id: 208,
            body: json!({"from_user_id":"u-alice","from_username":"alice","to_user_id":"BOB",
                "content":"hi","timestamp":T}),
            sync: false,
        };
        assert_eq!(human(&p2p, &me(), 0).unwrap(), "[02:40:00] alice → you: hi");
        // One's own message from another device; no from_username (an original server).
        let own = Output::Push {
            id: 208,
            body: json!({"from_user_id":"u-bob","to_user_id":"carol","content":"yo"}),
            sync: true,
        };
        assert_eq!(
            human(&own, &me(), T + 1).unwrap(),
            "[02:40:01] you → carol: yo  (missed)"
        );
        let group = Output::Push {
            id: 312,
            body: json!({"group_id":5,"from_user_id":3,"from_username":"carol","content":"hi",
                "timestamp":T}),
            sync: false,
        };
        assert_eq!(human(&group, &me(), 0).unwrap(), "[02:40:00] #5 carol: hi");
    }

    #[test]
    fn human_replies_summarise() {
        let v = me();
        let h = |cmd, id, body| human(&reply(cmd, id, body), &v, T).unwrap();
        assert_eq!(
            h(
                "register",
                103,
                json!({"code":0,"msg":"注册成功","data":{"id":3,"user_uuid":"u3","username":"alice"}})
            ),
            "registered alice (id 3, uuid u3)"
        );
        assert!(h(
            "login",
            105,
            json!({"code":0,"msg":"登录成功","data":{"id":3,"username":"alice","last_login":"x"}})
        )
        .starts_with("logged in as alice (id 3)"));
        assert_eq!(
            h("login", 105, json!({"code":4,"msg":"密码错误"})),
            "✗ login failed: [4] 密码错误"
        );
        assert_eq!(
            h("creategroup", 216, json!({"id":7,"name":"g"})),
            "created group #7 g"
        );
        assert_eq!(
            h("joingroup", 218, json!({"message":"成功加入群组"})),
            "成功加入群组"
        );
        assert_eq!(h("ping", 2, json!("pong")), "pong (3 ms)");
        assert_eq!(
            h("msg", 402, json!({"msg_id":"m","seq":4})),
            "✓ delivered to server"
        );
        assert_eq!(
            h(
                "history",
                212,
                json!({"code":0,"message":"成功","data":[
                    {"content":"a","from_user_id":"2","timestamp":T},
                    {"content":"b","from_user_id":"1","timestamp":T}]})
            ),
            "history (2):\n  [02:40:00] you: a\n  [02:40:00] user 1: b"
        );
        assert_eq!(
            h(
                "grouphistory",
                235,
                json!({"group_id":5,"has_more":true,"messages":[
                    {"id":9,"sender_id":1,"sender_name":"alice","content":"new","timestamp":T},
                    {"id":4,"sender_id":2,"sender_name":"bob","content":"old","timestamp":T}]})
            ),
            "group #5 history (2):\n  [02:40:00] you: old  (id 4)\n  [02:40:00] alice: new  (id 9)\n  (older: /grouphistory 5 4)"
        );
        assert_eq!(
            h(
                "members",
                223,
                json!({"group_id":5,"total":1,"members":[
                    {"user_id":1,"username":"alice","role":"owner","is_online":true}]})
            ),
            "group #5: 1 member(s)\n  alice (id 1, owner, online)"
        );
        assert_eq!(
            h(
                "relations",
                214,
                json!({"code":0,"message":"成功","data":["1","5"]})
            ),
            "chat partners (user ids): 1, 5"
        );
    }

    #[test]
    fn v2_group_ack_is_quiet_unless_it_failed() {
        let ok = reply("groupmsg", 311, json!({"msg_id":"m","status":0}));
        assert_eq!(human(&ok, &me(), T), None);
        let v1 = Viewer { v2: false, ..me() };
        assert_eq!(human(&ok, &v1, T).unwrap(), "✓ group message sent");
        let bad = reply("groupmsg", 311, json!({"status":3,"error":"not a member"}));
        assert_eq!(
            human(&bad, &me(), T).unwrap(),
            "✗ groupmsg failed: [status 3] not a member"
        );
    }

    #[test]
    fn human_events() {
        let ev = Output::event(
            "connected",
            vec![
                ("addr", json!("h:1")),
                ("server", json!({"server":"chat-zinx/0.1.0","node_id":"n1"})),
            ],
        );
        assert_eq!(
            human(&ev, &me(), T).unwrap(),
            "• connected to h:1 (chat-zinx/0.1.0, node n1, protocol v2)"
        );
        let ev = Output::event("synced", vec![("new", json!(2))]);
        assert_eq!(
            human(&ev, &me(), T).unwrap(),
            "• synced: 2 missed message(s)"
        );
    }

    #[test]
    fn clock_takes_seconds_or_millis() {
        assert_eq!(clock(T), "02:40:00");
        assert_eq!(clock(T * 1000 + 999), "02:40:00");
    }
}
