//! Command lines → typed commands → request frames.
//!
//! Parsing and frame building are pure functions so that the exact bytes the client sends can be
//! unit-tested against the original client's captured frames (`docs/protocol.md` §13): in v1
//! mode the bodies must be those bytes, key order and Go's HTML escaping included.

use std::time::Duration;

use serde::Serialize;

use crate::protocol::ids;
use crate::protocol::messages::ZERO_TIME;

/// Default `limit` of `/history` and `/grouphistory`, as the original client.
pub const DEFAULT_HISTORY_LIMIT: i64 = 20;

/// Page size of a sync request (the protocol's maximum).
pub const SYNC_LIMIT: u32 = 500;

/// One parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/connect [host:port]`: a fresh connection (not logged in).
    Connect(Option<String>),
    Register {
        username: String,
        password: String,
        email: String,
    },
    Login {
        username: String,
        password: String,
    },
    /// `/msg <who> [text…]`; without text the next input line is the text (as the original).
    Msg {
        to: String,
        text: Option<String>,
    },
    /// `/groupmsg <gid> [text…]`; without text the next input line is the text.
    GroupMsg {
        group_id: u64,
        text: Option<String>,
    },
    History {
        who: String,
        limit: i64,
    },
    GroupHistory {
        group_id: u64,
        last_id: u64,
        limit: i64,
    },
    CreateGroup {
        name: String,
        description: String,
        avatar: String,
    },
    JoinGroup(u64),
    LeaveGroup(u64),
    Members(u64),
    MyGroups,
    GroupInfo(u64),
    UpdateGroup {
        group_id: u64,
        name: Option<String>,
        description: Option<String>,
        avatar: Option<String>,
    },
    SetRole {
        group_id: u64,
        user_id: u64,
        role: String,
    },
    Remove {
        group_id: u64,
        user_id: u64,
    },
    Logout,
    Sync,
    Relations,
    Ping,
    Help,
    Quit,
    /// Scripting: wait until `count` more frames with this id (or events of this name) arrived.
    Wait {
        what: WaitTarget,
        count: u64,
        timeout: Option<Duration>,
    },
    /// Scripting: let time pass while pushes keep being handled.
    Sleep(Duration),
}

/// What `/wait` counts: frames of a message id, or client events of a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WaitTarget {
    Id(u32),
    Event(String),
}

impl WaitTarget {
    /// The key under which arrivals are counted.
    pub fn key(&self) -> String {
        match self {
            WaitTarget::Id(id) => id.to_string(),
            WaitTarget::Event(name) => name.clone(),
        }
    }
}

/// A malformed command line; the text is the usage line or the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

fn usage(text: &str) -> Usage {
    Usage(format!("usage: {text}"))
}

/// Split a line into whitespace-separated words; `"…"` groups words and `\"` escapes a quote,
/// so that names and descriptions with spaces can be given.
pub fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// The text after the first `n` whitespace-separated words of `s`, untouched (message texts keep
/// their spacing and quotes).
fn rest_after(s: &str, n: usize) -> &str {
    let mut rest = s.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

fn num<T: std::str::FromStr>(word: &str, what: &str) -> Result<T, Usage> {
    word.parse()
        .map_err(|_| Usage(format!("{what} must be a number, got {word:?}")))
}

impl Command {
    /// Parse one input line. `Ok(None)` for blank lines and `#` comments.
    pub fn parse(line: &str) -> Result<Option<Command>, Usage> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(None);
        }
        if !line.starts_with('/') {
            return Err(Usage(
                "commands start with '/' (try /help; to send text use /msg <who> <text>)".into(),
            ));
        }
        let words = split_words(line);
        let name = words[0].to_ascii_lowercase();
        let args = &words[1..];
        let arg = |i: usize| args.get(i).map(String::as_str);
        let cmd = match name.as_str() {
            "/connect" => Command::Connect(arg(0).map(str::to_string)),
            "/register" => match args {
                [u, p, e, ..] => Command::Register {
                    username: u.clone(),
                    password: p.clone(),
                    email: e.clone(),
                },
                _ => return Err(usage("/register <username> <password> <email>")),
            },
            "/login" => match args {
                [u, p, ..] => Command::Login {
                    username: u.clone(),
                    password: p.clone(),
                },
                _ => return Err(usage("/login <username> <password>")),
            },
            "/msg" => {
                let Some(to) = arg(0) else {
                    return Err(usage("/msg <who: username|uuid|id> <text…>"));
                };
                let text = rest_after(line, 2);
                Command::Msg {
                    to: to.to_string(),
                    text: (!text.is_empty()).then(|| text.to_string()),
                }
            }
            "/groupmsg" => {
                let Some(gid) = arg(0) else {
                    return Err(usage("/groupmsg <group_id> <text…>"));
                };
                let text = rest_after(line, 2);
                Command::GroupMsg {
                    group_id: num(gid, "group_id")?,
                    text: (!text.is_empty()).then(|| text.to_string()),
                }
            }
            "/history" => match args {
                [who, rest @ ..] => Command::History {
                    who: who.clone(),
                    limit: match rest.first() {
                        Some(l) => num(l, "limit")?,
                        None => DEFAULT_HISTORY_LIMIT,
                    },
                },
                _ => return Err(usage("/history <who> [limit]")),
            },
            "/grouphistory" => match args {
                [gid, rest @ ..] => Command::GroupHistory {
                    group_id: num(gid, "group_id")?,
                    last_id: match rest.first() {
                        Some(l) => num(l, "last_id")?,
                        None => 0,
                    },
                    limit: match rest.get(1) {
                        Some(l) => num(l, "limit")?,
                        None => DEFAULT_HISTORY_LIMIT,
                    },
                },
                _ => return Err(usage("/grouphistory <group_id> [last_id] [limit]")),
            },
            "/creategroup" => match args {
                [name, rest @ ..] => Command::CreateGroup {
                    name: name.clone(),
                    description: rest.first().cloned().unwrap_or_default(),
                    avatar: rest.get(1).cloned().unwrap_or_default(),
                },
                _ => return Err(usage("/creategroup <name> [description] [avatar]")),
            },
            "/joingroup" | "/leavegroup" | "/members" | "/groupinfo" => {
                let Some(gid) = arg(0) else {
                    return Err(usage(&format!("{name} <group_id>")));
                };
                let gid = num(gid, "group_id")?;
                match name.as_str() {
                    "/joingroup" => Command::JoinGroup(gid),
                    "/leavegroup" => Command::LeaveGroup(gid),
                    "/members" => Command::Members(gid),
                    _ => Command::GroupInfo(gid),
                }
            }
            "/updategroup" => parse_update_group(line)?,
            "/role" => match args {
                [gid, uid, role, ..] => {
                    let role = role.to_ascii_lowercase();
                    if role != "admin" && role != "member" {
                        return Err(usage("/role <group_id> <user_id> admin|member"));
                    }
                    Command::SetRole {
                        group_id: num(gid, "group_id")?,
                        user_id: num(uid, "user_id")?,
                        role,
                    }
                }
                _ => return Err(usage("/role <group_id> <user_id> admin|member")),
            },
            "/remove" => match args {
                [gid, uid, ..] => Command::Remove {
                    group_id: num(gid, "group_id")?,
                    user_id: num(uid, "user_id")?,
                },
                _ => return Err(usage("/remove <group_id> <user_id>")),
            },
            "/mygroups" => Command::MyGroups,
            "/logout" => Command::Logout,
            "/sync" => Command::Sync,
            "/relations" => Command::Relations,
            "/ping" => Command::Ping,
            "/help" => Command::Help,
            "/quit" | "/exit" => Command::Quit,
            "/wait" => {
                let Some(what) = arg(0) else {
                    return Err(usage("/wait <id|event> [count] [timeout_ms]"));
                };
                let what = match what.parse::<u32>() {
                    Ok(id) => WaitTarget::Id(id),
                    Err(_) => WaitTarget::Event(what.to_string()),
                };
                let count = match arg(1) {
                    Some(c) => num(c, "count")?,
                    None => 1,
                };
                let timeout = match arg(2) {
                    Some(t) => Some(Duration::from_millis(num(t, "timeout_ms")?)),
                    None => None,
                };
                Command::Wait {
                    what,
                    count,
                    timeout,
                }
            }
            "/sleep" => match arg(0) {
                Some(ms) => Command::Sleep(Duration::from_millis(num(ms, "ms")?)),
                None => return Err(usage("/sleep <ms>")),
            },
            other => return Err(Usage(format!("unknown command {other} (try /help)"))),
        };
        Ok(Some(cmd))
    }

    /// The name shown as `cmd` in replies (the command word without its slash).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Connect(_) => "connect",
            Command::Register { .. } => "register",
            Command::Login { .. } => "login",
            Command::Msg { .. } => "msg",
            Command::GroupMsg { .. } => "groupmsg",
            Command::History { .. } => "history",
            Command::GroupHistory { .. } => "grouphistory",
            Command::CreateGroup { .. } => "creategroup",
            Command::JoinGroup(_) => "joingroup",
            Command::LeaveGroup(_) => "leavegroup",
            Command::Members(_) => "members",
            Command::MyGroups => "mygroups",
            Command::GroupInfo(_) => "groupinfo",
            Command::UpdateGroup { .. } => "updategroup",
            Command::SetRole { .. } => "role",
            Command::Remove { .. } => "remove",
            Command::Logout => "logout",
            Command::Sync => "sync",
            Command::Relations => "relations",
            Command::Ping => "ping",
            Command::Help => "help",
            Command::Quit => "quit",
            Command::Wait { .. } => "wait",
            Command::Sleep(_) => "sleep",
        }
    }

    /// Whether the command sends a frame (and so needs a connection).
    pub fn is_request(&self) -> bool {
        !matches!(
            self,
            Command::Connect(_)
                | Command::Help
                | Command::Quit
                | Command::Wait { .. }
                | Command::Sleep(_)
        )
    }

    /// The frame of a request command, or `None` for a local one.
    pub fn request(&self, ctx: &RequestCtx) -> Result<Option<Request>, Usage> {
        let v2 = ctx.v2;
        let cmid = || v2.then(|| ctx.client_msg_id.clone());
        let (id, body, client_msg_id): (u32, Vec<u8>, Option<String>) = match self {
            Command::Register {
                username,
                password,
                email,
            } => (
                ids::REGISTER_REQ,
                go_json(&RegisterBody {
                    username,
                    password,
                    email,
                }),
                None,
            ),
            Command::Login { username, password } => (
                ids::LOGIN_REQ,
                go_json(&LoginBody { username, password }),
                None,
            ),
            Command::Msg { to, text } => {
                let Some(content) = text else {
                    return Err(usage("/msg <who> <text…>"));
                };
                let client_msg_id = cmid();
                let sent_at = if v2 {
                    ctx.now_rfc3339.as_str()
                } else {
                    ZERO_TIME
                };
                let body = go_json(&TextBody {
                    to_user_id: to,
                    content,
                    sent_at,
                    client_msg_id: client_msg_id.as_deref(),
                });
                (ids::TEXT_MSG, body, client_msg_id)
            }
            Command::GroupMsg { group_id, text } => {
                let Some(content) = text else {
                    return Err(usage("/groupmsg <group_id> <text…>"));
                };
                let client_msg_id = cmid();
                let body = go_json(&GroupTextBody {
                    group_id: *group_id,
                    content,
                    client_msg_id: client_msg_id.as_deref(),
                });
                (ids::GROUP_TEXT_REQ, body, client_msg_id)
            }
            Command::History { who, limit } => (
                ids::HISTORY_REQ,
                go_json(&HistoryBody {
                    target_user_uuid: who,
                    target_username: who,
                    limit: *limit,
                }),
                None,
            ),
            Command::GroupHistory {
                group_id,
                last_id,
                limit,
            } => (
                ids::GROUP_HISTORY_REQ,
                go_json(&GroupHistoryBody {
                    group_id: *group_id,
                    last_id: *last_id,
                    limit: *limit,
                }),
                None,
            ),
            Command::CreateGroup {
                name,
                description,
                avatar,
            } => (
                ids::CREATE_GROUP_REQ,
                go_json(&CreateGroupBody {
                    name,
                    description,
                    avatar,
                }),
                None,
            ),
            Command::JoinGroup(g) => (ids::JOIN_GROUP_REQ, group_body(*g), None),
            Command::LeaveGroup(g) => (ids::LEAVE_GROUP_REQ, group_body(*g), None),
            Command::Members(g) => (ids::GROUP_MEMBERS_REQ, group_body(*g), None),
            Command::GroupInfo(g) => (ids::GROUP_DETAILS_REQ, group_body(*g), None),
            Command::MyGroups => (ids::MY_GROUPS_REQ, b"{}".to_vec(), None),
            Command::UpdateGroup {
                group_id,
                name,
                description,
                avatar,
            } => (
                ids::UPDATE_GROUP_REQ,
                go_json(&UpdateGroupBody {
                    group_id: *group_id,
                    name: name.as_deref(),
                    description: description.as_deref(),
                    avatar: avatar.as_deref(),
                }),
                None,
            ),
            Command::SetRole {
                group_id,
                user_id,
                role,
            } => (
                ids::SET_ROLE_REQ,
                go_json(&SetRoleBody {
                    group_id: *group_id,
                    target_user_id: *user_id,
                    new_role: role,
                }),
                None,
            ),
            Command::Remove { group_id, user_id } => (
                ids::REMOVE_MEMBER_REQ,
                go_json(&RemoveBody {
                    group_id: *group_id,
                    target_user_id: *user_id,
                }),
                None,
            ),
            Command::Logout => (ids::LOGOUT_REQ, b"{}".to_vec(), None),
            Command::Relations => (ids::RELATIONS_REQ, b"{}".to_vec(), None),
            Command::Ping => (ids::PING, b"ping".to_vec(), None),
            Command::Sync => {
                if !v2 {
                    return Err(Usage("/sync needs a v2 connection (not --v1)".into()));
                }
                (ids::SYNC_REQ, sync_body(ctx.cursor.as_deref()), None)
            }
            Command::Connect(_)
            | Command::Help
            | Command::Quit
            | Command::Wait { .. }
            | Command::Sleep(_) => return Ok(None),
        };
        Ok(Some(Request {
            cmd: self.name(),
            id,
            body,
            expect: expected_replies(id, v2),
            client_msg_id,
        }))
    }
}

/// `/updategroup <gid> name=… desc=… avatar=…`: a value runs until the next `key=` word, so
/// names and descriptions may contain spaces without quoting.
fn parse_update_group(line: &str) -> Result<Command, Usage> {
    const USE: &str = "/updategroup <group_id> [name=…] [desc=…] [avatar=…]";
    let words = split_words(line);
    let Some(gid) = words.get(1) else {
        return Err(usage(USE));
    };
    let group_id = num(gid, "group_id")?;
    // name, description, avatar
    let mut fields: [Option<String>; 3] = [None, None, None];
    let mut current: Option<usize> = None;
    for word in &words[2..] {
        let key = word.split_once('=').and_then(|(k, v)| {
            let slot = match k.to_ascii_lowercase().as_str() {
                "name" => 0,
                "desc" | "description" => 1,
                "avatar" => 2,
                _ => return None,
            };
            Some((slot, v))
        });
        match (key, current) {
            (Some((slot, value)), _) => {
                fields[slot] = Some(value.to_string());
                current = Some(slot);
            }
            (None, Some(slot)) => {
                if let Some(v) = fields[slot].as_mut() {
                    v.push(' ');
                    v.push_str(word);
                }
            }
            (None, None) => return Err(usage(USE)),
        }
    }
    let [name, description, avatar] = fields;
    if name.is_none() && description.is_none() && avatar.is_none() {
        return Err(usage(USE));
    }
    Ok(Command::UpdateGroup {
        group_id,
        name,
        description,
        avatar,
    })
}

/// What the client needs from the session to build a frame.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// The connection said Hello and got 401.
    pub v2: bool,
    /// A fresh id for a send (used only in v2).
    pub client_msg_id: String,
    /// `sent_at` of a v2 P2P send (v1 sends Go's zero time, as the original client).
    pub now_rfc3339: String,
    /// The last sync cursor, for `/sync`.
    pub cursor: Option<String>,
}

/// A frame to send and the reply ids that complete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cmd: &'static str,
    pub id: u32,
    pub body: Vec<u8>,
    /// Every one of these ids must arrive (or a 99 for the request) before the request counts as
    /// answered. Empty: nothing to wait for (a v1 P2P send has no reply at all).
    pub expect: Vec<u32>,
    pub client_msg_id: Option<String>,
}

/// The replies that answer a request: the next id for most, 402 for sends in v2 (the original
/// P2P send has no reply at all), 311 and 402 for a v2 group send.
pub fn expected_replies(request: u32, v2: bool) -> Vec<u32> {
    match request {
        ids::TEXT_MSG if v2 => vec![ids::SEND_ACK],
        ids::TEXT_MSG => vec![],
        ids::GROUP_TEXT_REQ if v2 => vec![ids::GROUP_TEXT_ACK, ids::SEND_ACK],
        other => ids::response_for(other).into_iter().collect(),
    }
}

/// The body of a sync request; `cursor` absent means "from my last acknowledged point".
pub fn sync_body(cursor: Option<&str>) -> Vec<u8> {
    go_json(&SyncBody {
        cursor,
        limit: SYNC_LIMIT,
    })
}

/// The Hello of a v2 client.
pub fn hello_body() -> Vec<u8> {
    go_json(&HelloBody {
        version: 2,
        client: &format!("chat-zinx-client/{}", env!("CARGO_PKG_VERSION")),
    })
}

/// A password-less resume login with the token of an earlier 105.
pub fn token_login_body(token: &str) -> Vec<u8> {
    go_json(&TokenLoginBody { token })
}

/// Serialise like Go's `encoding/json`: struct field order, and `<`, `>`, `&`, U+2028, U+2029
/// escaped, so that v1 frames are byte-identical to the original client's. These characters
/// only ever occur inside JSON strings, where the escapes mean the same.
pub fn go_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs of strings and integers cannot fail.
    let plain = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
    let mut out = String::with_capacity(plain.len() + 16);
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.into_bytes()
}

fn group_body(group_id: u64) -> Vec<u8> {
    go_json(&GroupIdBody { group_id })
}

// Request bodies, fields in the original client's order.

#[derive(Serialize)]
struct RegisterBody<'a> {
    username: &'a str,
    password: &'a str,
    email: &'a str,
}

#[derive(Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct TokenLoginBody<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct TextBody<'a> {
    to_user_id: &'a str,
    content: &'a str,
    sent_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

#[derive(Serialize)]
struct GroupTextBody<'a> {
    group_id: u64,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<&'a str>,
}

#[derive(Serialize)]
struct HistoryBody<'a> {
    target_user_uuid: &'a str,
    target_username: &'a str,
    limit: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct GroupHistoryBody {
    group_id: u64,
    #[serde(skip_serializing_if = "is_zero")]
    last_id: u64,
    limit: i64,
}

#[derive(Serialize)]
struct CreateGroupBody<'a> {
    name: &'a str,
    description: &'a str,
    avatar: &'a str,
}

#[derive(Serialize)]
struct GroupIdBody {
    group_id: u64,
}

#[derive(Serialize)]
struct UpdateGroupBody<'a> {
    group_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar: Option<&'a str>,
}

#[derive(Serialize)]
struct SetRoleBody<'a> {
    group_id: u64,
    target_user_id: u64,
    new_role: &'a str,
}

#[derive(Serialize)]
struct RemoveBody {
    group_id: u64,
    target_user_id: u64,
}

#[derive(Serialize)]
struct SyncBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    limit: u32,
}

#[derive(Serialize)]
struct HelloBody<'a> {
    version: u32,
    client: &'a str,
}

/// The text of `/help`.
pub const HELP: &str = "\
commands:
  /connect [host:port]                 connect (again) to a server, not logged in
  /register <user> <password> <email>  create an account
  /login <user> <password>             log in
  /logout                              log out, stay connected
  /msg <who> <text…>                   private message; who = username, uuid or numeric id
  /groupmsg <group_id> <text…>         message to a group
  /history <who> [limit]               private history (default 20)
  /grouphistory <gid> [last_id] [limit]  group history, newest first (page with last_id)
  /creategroup <name> [desc] [avatar]  create a group (quote words with spaces: \"my group\")
  /joingroup <gid>   /leavegroup <gid>   /members <gid>   /groupinfo <gid>   /mygroups
  /updategroup <gid> name=… desc=… avatar=…
  /role <gid> <user_id> admin|member   /remove <gid> <user_id>
  /relations                           users you have chatted with
  /sync                                fetch messages missed while away (v2)
  /ping                                round trip to the server
  /wait <id|event> [count] [timeout_ms]   /sleep <ms>   (scripting)
  /help   /quit (or /exit)";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Command {
        Command::parse(line).unwrap().unwrap()
    }

    fn ctx(v2: bool) -> RequestCtx {
        RequestCtx {
            v2,
            client_msg_id: "cm-1".into(),
            now_rfc3339: "2025-01-02T03:04:05Z".into(),
            cursor: None,
        }
    }

    fn frame(line: &str, v2: bool) -> (u32, String) {
        let req = parse(line).request(&ctx(v2)).unwrap().unwrap();
        (req.id, String::from_utf8(req.body).unwrap())
    }

    #[test]
    fn v1_frames_are_the_original_clients_bytes() {
        let cases = [
            (
                "/register alice secret1 a@x",
                102,
                r#"{"username":"alice","password":"secret1","email":"a@x"}"#,
            ),
            (
                "/login alice secret1",
                104,
                r#"{"username":"alice","password":"secret1"}"#,
            ),
            (
                "/msg bob hi there <&>",
                208,
                r#"{"to_user_id":"bob","content":"hi there \u003c\u0026\u003e","sent_at":"0001-01-01T00:00:00Z"}"#,
            ),
            (
                "/groupmsg 5 hello group",
                310,
                r#"{"group_id":5,"content":"hello group"}"#,
            ),
            ("/joingroup 5", 217, r#"{"group_id":5}"#),
            ("/leavegroup 5", 219, r#"{"group_id":5}"#),
            (
                "/history bob 10",
                211,
                r#"{"target_user_uuid":"bob","target_username":"bob","limit":10}"#,
            ),
            ("/grouphistory 5 0 10", 234, r#"{"group_id":5,"limit":10}"#),
            (
                "/creategroup g1 desc",
                215,
                r#"{"name":"g1","description":"desc","avatar":""}"#,
            ),
            ("/ping", 1, "ping"),
        ];
        for (line, id, body) in cases {
            assert_eq!(frame(line, false), (id, body.to_string()), "{line}");
        }
    }

    #[test]
    fn v2_sends_carry_a_client_msg_id_and_wait_for_the_ack() {
        let req = parse("/msg bob hi").request(&ctx(true)).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(req.body).unwrap(),
            r#"{"to_user_id":"bob","content":"hi","sent_at":"2025-01-02T03:04:05Z","client_msg_id":"cm-1"}"#
        );
        assert_eq!(req.expect, vec![402]);
        assert_eq!(req.client_msg_id.as_deref(), Some("cm-1"));

        let req = parse("/groupmsg 7 yo")
            .request(&ctx(true))
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(req.body).unwrap(),
            r#"{"group_id":7,"content":"yo","client_msg_id":"cm-1"}"#
        );
        assert_eq!(req.expect, vec![311, 402]);

        let v1 = parse("/groupmsg 7 yo")
            .request(&ctx(false))
            .unwrap()
            .unwrap();
        assert_eq!(v1.expect, vec![311]);
        let v1 = parse("/msg bob hi").request(&ctx(false)).unwrap().unwrap();
        assert!(v1.expect.is_empty());
        assert!(v1.client_msg_id.is_none());
    }

    #[test]
    fn message_text_keeps_its_spacing_and_quotes() {
        assert_eq!(
            parse(r#"/msg  bob   say  "hi"  twice"#),
            Command::Msg {
                to: "bob".into(),
                text: Some(r#"say  "hi"  twice"#.into())
            }
        );
        assert_eq!(
            parse("/msg bob"),
            Command::Msg {
                to: "bob".into(),
                text: None
            }
        );
        assert!(parse("/msg bob").request(&ctx(true)).is_err());
    }

    #[test]
    fn defaults_and_numbers() {
        assert_eq!(
            parse("/history bob"),
            Command::History {
                who: "bob".into(),
                limit: 20
            }
        );
        assert_eq!(
            parse("/grouphistory 3"),
            Command::GroupHistory {
                group_id: 3,
                last_id: 0,
                limit: 20
            }
        );
        assert_eq!(
            frame("/grouphistory 3 42 5", false).1,
            r#"{"group_id":3,"last_id":42,"limit":5}"#
        );
        assert!(Command::parse("/joingroup x").is_err());
        assert!(Command::parse("/groupmsg -1 hi").is_err());
        assert!(Command::parse("/login alice").is_err());
        assert!(Command::parse("/bogus").is_err());
        assert!(Command::parse("hello").is_err());
        assert_eq!(Command::parse("   ").unwrap(), None);
        assert_eq!(Command::parse("# a comment").unwrap(), None);
        assert_eq!(parse("/EXIT"), Command::Quit);
    }

    #[test]
    fn quoted_words_group() {
        assert_eq!(
            split_words(r#"/creategroup "my group" "say \"hi\"" av"#),
            vec!["/creategroup", "my group", r#"say "hi""#, "av"]
        );
        assert_eq!(split_words(r#"a "" b"#), vec!["a", "", "b"]);
        assert_eq!(
            frame(r#"/creategroup "my group" "a b""#, true).1,
            r#"{"name":"my group","description":"a b","avatar":""}"#
        );
    }

    #[test]
    fn update_group_fields_run_to_the_next_key() {
        assert_eq!(
            parse("/updategroup 5 name=The Crew desc=we talk avatar=a.png"),
            Command::UpdateGroup {
                group_id: 5,
                name: Some("The Crew".into()),
                description: Some("we talk".into()),
                avatar: Some("a.png".into()),
            }
        );
        assert_eq!(
            frame("/updategroup 5 desc=x", true),
            (226, r#"{"group_id":5,"description":"x"}"#.to_string())
        );
        assert!(Command::parse("/updategroup 5").is_err());
        assert!(Command::parse("/updategroup 5 hello").is_err());
    }

    #[test]
    fn group_management_frames() {
        assert_eq!(
            frame("/role 5 9 ADMIN", true),
            (
                228,
                r#"{"group_id":5,"target_user_id":9,"new_role":"admin"}"#.to_string()
            )
        );
        assert!(Command::parse("/role 5 9 owner").is_err());
        assert_eq!(
            frame("/remove 5 9", true),
            (230, r#"{"group_id":5,"target_user_id":9}"#.to_string())
        );
        assert_eq!(frame("/members 5", true), (222, r#"{"group_id":5}"#.into()));
        assert_eq!(
            frame("/groupinfo 5", true),
            (232, r#"{"group_id":5}"#.into())
        );
        assert_eq!(frame("/mygroups", true), (224, "{}".into()));
        assert_eq!(frame("/relations", true), (213, "{}".into()));
        assert_eq!(frame("/logout", true), (106, "{}".into()));
        let req = parse("/logout").request(&ctx(true)).unwrap().unwrap();
        assert_eq!(req.expect, vec![107]);
    }

    #[test]
    fn sync_is_v2_only_and_carries_the_cursor() {
        assert!(parse("/sync").request(&ctx(false)).is_err());
        assert_eq!(frame("/sync", true), (403, r#"{"limit":500}"#.into()));
        let mut c = ctx(true);
        c.cursor = Some("abc".into());
        let req = parse("/sync").request(&c).unwrap().unwrap();
        assert_eq!(req.body, br#"{"cursor":"abc","limit":500}"#);
        assert_eq!(req.expect, vec![404]);
    }

    #[test]
    fn scripting_commands() {
        assert_eq!(
            parse("/wait 208"),
            Command::Wait {
                what: WaitTarget::Id(208),
                count: 1,
                timeout: None
            }
        );
        assert_eq!(
            parse("/wait reconnected 2 1500"),
            Command::Wait {
                what: WaitTarget::Event("reconnected".into()),
                count: 2,
                timeout: Some(Duration::from_millis(1500))
            }
        );
        assert_eq!(
            parse("/sleep 250"),
            Command::Sleep(Duration::from_millis(250))
        );
        assert!(Command::parse("/sleep").is_err());
        assert!(!parse("/sleep 1").is_request());
        assert!(parse("/ping").is_request());
    }

    #[test]
    fn hello_and_token_bodies() {
        let hello = String::from_utf8(hello_body()).unwrap();
        assert!(hello.starts_with(r#"{"version":2,"client":"chat-zinx-client/"#));
        assert_eq!(token_login_body("t.k"), br#"{"token":"t.k"}"#);
    }
}
