//! Typed request, response and push payloads, with the original server's conventions.
//!
//! Requests are parsed the way Go's `encoding/json` parses them (`docs/protocol.md` §4.1): keys
//! match case-insensitively, a later duplicate key wins, `null` and missing keys give zero values,
//! and a wrong type, a negative or fractional id, an empty body or trailing garbage make the whole
//! request malformed. Responses keep the original key sets and value types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A user's numeric id on the wire.
pub type UserId = u64;
/// A group's numeric id on the wire.
pub type GroupId = u64;
/// Milliseconds since the Unix epoch.
pub type UnixMs = i64;

/// The request body is not the JSON the message id expects; the text says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed request: {0}")]
pub struct Malformed(pub String);

/// Parse a request body with Go `encoding/json` semantics.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Malformed> {
    // Go replaces invalid UTF-8 by U+FFFD instead of failing.
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_str(&text).map_err(|e| Malformed(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(Malformed("the body must be a JSON object".into()));
    };
    let mut folded = Map::with_capacity(map.len());
    for (key, value) in map {
        if !value.is_null() {
            folded.insert(key.to_ascii_lowercase(), value);
        } else {
            folded.remove(&key.to_ascii_lowercase());
        }
    }
    serde_json::from_value(Value::Object(folded)).map_err(|e| Malformed(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegisterReq {
    pub username: String,
    pub password: String,
    pub email: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginReq {
    pub username: String,
    pub password: String,
    /// v2: resume with the token of an earlier login instead of a password.
    pub token: String,
    /// Optional device label, shown in presence.
    pub device: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TextReq {
    pub to_user_id: String,
    pub content: String,
    #[serde(rename = "type")]
    pub msg_type: String,
    pub sent_at: Option<String>,
    pub client_msg_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HistoryReq {
    pub target_user_uuid: String,
    pub target_username: String,
    pub limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateGroupReq {
    pub name: String,
    pub description: String,
    pub avatar: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupIdReq {
    pub group_id: GroupId,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateGroupReq {
    pub group_id: GroupId,
    pub name: String,
    pub description: String,
    pub avatar: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SetRoleReq {
    pub group_id: GroupId,
    pub target_user_id: UserId,
    pub new_role: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RemoveMemberReq {
    pub group_id: GroupId,
    pub target_user_id: UserId,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupHistoryReq {
    pub group_id: GroupId,
    pub last_id: u64,
    pub limit: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GroupTextReq {
    pub group_id: GroupId,
    pub content: String,
    pub client_msg_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HelloReq {
    pub version: u64,
    pub client: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SyncReq {
    pub cursor: String,
    pub limit: i64,
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Register and login replies: `{code, data?, msg}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeMsg<T> {
    pub code: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    pub msg: String,
}

impl CodeMsg<()> {
    pub fn error(code: u32, msg: impl Into<String>) -> Self {
        CodeMsg {
            code,
            data: None,
            msg: msg.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterData {
    pub id: UserId,
    pub user_uuid: String,
    pub username: String,
    pub email: String,
    pub avatar: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LoginData {
    pub id: UserId,
    pub user_uuid: String,
    pub username: String,
    pub email: String,
    pub avatar: String,
    pub last_login: String,
    pub token: String,
}

/// 212 and 214: `{code, message, data}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CodeMessage<T> {
    pub code: u32,
    pub message: String,
    pub data: T,
}

/// One item of a P2P history page (keys as the original: `content`, `from_user_id`, `timestamp`).
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryItem {
    pub content: String,
    /// The sender's numeric id, as a decimal string.
    pub from_user_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub msg_id: String,
    pub seq: u64,
}

/// 212 body: `data` is omitted when empty.
#[derive(Debug, Serialize)]
pub struct HistoryResp {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<HistoryItem>,
}

/// `{"error": text}`: the group operations' failure body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `{"message": text}`: the group operations' success body.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageBodyResp {
    pub message: String,
}

/// 216 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedGroup {
    pub id: GroupId,
    pub name: String,
    pub owner_user_id: UserId,
    pub description: String,
    pub avatar: String,
    pub member_count: u64,
    pub created_at: String,
}

/// 233 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupDetails {
    pub id: GroupId,
    pub name: String,
    pub owner_user_id: UserId,
    pub description: String,
    pub avatar: String,
    pub member_count: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberItem {
    pub member_id: u64,
    pub user_id: UserId,
    pub user_uuid: String,
    pub username: String,
    pub role: String,
    pub joined_at: String,
    pub is_online: bool,
}

/// 223 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembersResp {
    pub group_id: GroupId,
    pub members: Vec<MemberItem>,
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MyGroupItem {
    pub id: GroupId,
    pub name: String,
    pub member_count: u64,
    pub description: String,
}

/// 225 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct MyGroupsResp {
    pub groups: Vec<MyGroupItem>,
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GroupHistoryItem {
    /// The log position: the pagination key (`last_id`).
    pub id: u64,
    pub msg_id: String,
    pub sender_id: UserId,
    pub sender_uuid: String,
    pub sender_name: String,
    pub content: String,
    pub message_type: String,
    /// Unix seconds.
    pub timestamp: i64,
}

/// 235 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupHistoryResp {
    pub group_id: GroupId,
    pub messages: Vec<GroupHistoryItem>,
    pub has_more: bool,
}

/// 311 body: `{msg_id?, status, error?}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupTextAck {
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub msg_id: String,
    pub status: u32,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub error: String,
}

/// 99 body. `ref` is the id of the request it answers (v2 connections only).
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorResp {
    pub code: u32,
    pub message: String,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none", default)]
    pub reference: Option<u32>,
}

impl ErrorResp {
    /// The 99 answering `request`: v1 clients get no `ref` (the original sends none).
    pub fn answering(request: u32, v2: bool, code: u32, message: impl Into<String>) -> Self {
        ErrorResp {
            code,
            message: message.into(),
            reference: v2.then_some(request),
        }
    }
}

/// 401 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct HelloResp {
    pub version: u32,
    pub server: String,
    pub node_id: String,
    pub max_body: usize,
    pub idle_timeout_s: u64,
    pub features: Vec<String>,
}

/// 402 body: success carries `msg_id`, `conv`, `seq`, `timestamp` (ms); failure `code` and
/// `message`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SendAck {
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub client_msg_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub msg_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

/// 404 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncResp {
    pub messages: Vec<Value>,
    pub cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RedirectNode {
    pub addr: String,
    /// The node's TLS listener (`host:port`), when it has one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_addr: Option<String>,
    pub load: f64,
}

/// 406 body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Redirect {
    pub reason: String,
    pub nodes: Vec<RedirectNode>,
}

// ---------------------------------------------------------------------------------------------
// Pushes

/// The 208 delivery of a P2P message: the original keys (`from_user_id` = sender uuid,
/// `to_user_id` as the sender wrote it, `content`, `type` when set, `sent_at`) plus `msg_id`,
/// `conv`, `seq` and `timestamp` (Unix seconds) which Go clients ignore.
#[derive(Debug, Serialize, Deserialize)]
pub struct TextPush {
    pub from_user_id: String,
    pub to_user_id: String,
    pub content: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty", default)]
    pub msg_type: String,
    pub sent_at: String,
    pub msg_id: String,
    pub conv: String,
    pub seq: u64,
    pub timestamp: i64,
    pub from_username: String,
}

/// The 312 push of a group message (`from_user_id` is the numeric id, as in the original).
#[derive(Debug, Serialize, Deserialize)]
pub struct GroupPush {
    pub group_id: GroupId,
    pub from_user_id: UserId,
    pub from_user_uuid: String,
    pub from_username: String,
    pub content: String,
    pub timestamp: i64,
    pub msg_id: String,
    pub conv: String,
    pub seq: u64,
}

/// `sent_at` the original echoes when the sender gave none (Go's zero time).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Time formats

/// RFC 3339 in UTC with millisecond precision, trailing zeros trimmed (as Go's RFC3339Nano).
pub fn rfc3339(ms: UnixMs) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let base = t
        .format(&time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .expect("formats");
    let millis = t.millisecond();
    if millis == 0 {
        format!("{base}Z")
    } else {
        let frac = format!("{millis:03}");
        format!("{base}.{}Z", frac.trim_end_matches('0'))
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the format of the original's group timestamps.
pub fn sql_datetime(ms: UnixMs) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]"
    ))
    .expect("formats")
}

/// Whether a string is a valid RFC 3339 timestamp (the original rejects a `sent_at` that is not).
pub fn is_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        || s == ZERO_TIME
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_match_case_insensitively_and_the_last_duplicate_wins() {
        let r: LoginReq =
            parse(br#"{"USERNAME":"a","Password":"x","password":"secret1"}"#).unwrap();
        assert_eq!(r.username, "a");
        assert_eq!(r.password, "secret1");
    }

    #[test]
    fn null_and_missing_are_zero_values() {
        let r: GroupHistoryReq = parse(br#"{"group_id":5,"last_id":null}"#).unwrap();
        assert_eq!((r.group_id, r.last_id, r.limit), (5, 0, 0));
    }

    #[test]
    fn wrong_types_negative_and_fractional_ids_are_malformed() {
        assert!(parse::<GroupIdReq>(br#"{"group_id":"7"}"#).is_err());
        assert!(parse::<GroupIdReq>(br#"{"group_id":-1}"#).is_err());
        assert!(parse::<GroupIdReq>(br#"{"group_id":1.5}"#).is_err());
        assert!(parse::<GroupIdReq>(b"").is_err());
        assert!(parse::<GroupIdReq>(br#"{"group_id":1} x"#).is_err());
        assert!(parse::<GroupIdReq>(br#"[1]"#).is_err());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        let r: TextReq = parse(b"{\"to_user_id\":\"bob\",\"content\":\"a\xffb\"}").unwrap();
        assert_eq!(r.content, "a\u{fffd}b");
    }

    /// Any JSON value, nested a few levels (objects, arrays, numbers of every kind, strings
    /// with any characters).
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every request type the server parses, by its message id.
    fn parse_any(id: u32, body: &[u8]) -> Result<(), Malformed> {
        use crate::protocol::ids;
        match id {
            ids::REGISTER_REQ => parse::<RegisterReq>(body).map(drop),
            ids::LOGIN_REQ => parse::<LoginReq>(body).map(drop),
            ids::TEXT_MSG => parse::<TextReq>(body).map(drop),
            ids::HISTORY_REQ => parse::<HistoryReq>(body).map(drop),
            ids::CREATE_GROUP_REQ => parse::<CreateGroupReq>(body).map(drop),
            ids::JOIN_GROUP_REQ => parse::<GroupIdReq>(body).map(drop),
            ids::UPDATE_GROUP_REQ => parse::<UpdateGroupReq>(body).map(drop),
            ids::SET_ROLE_REQ => parse::<SetRoleReq>(body).map(drop),
            ids::REMOVE_MEMBER_REQ => parse::<RemoveMemberReq>(body).map(drop),
            ids::GROUP_HISTORY_REQ => parse::<GroupHistoryReq>(body).map(drop),
            ids::GROUP_TEXT_REQ => parse::<GroupTextReq>(body).map(drop),
            ids::HELLO_REQ => parse::<HelloReq>(body).map(drop),
            _ => parse::<SyncReq>(body).map(drop),
        }
    }

    const REQUEST_IDS: [u32; 13] = {
        use crate::protocol::ids::*;
        [
            REGISTER_REQ,
            LOGIN_REQ,
            TEXT_MSG,
            HISTORY_REQ,
            CREATE_GROUP_REQ,
            JOIN_GROUP_REQ,
            UPDATE_GROUP_REQ,
            SET_ROLE_REQ,
            REMOVE_MEMBER_REQ,
            GROUP_HISTORY_REQ,
            GROUP_TEXT_REQ,
            HELLO_REQ,
            SYNC_REQ,
        ]
    };

    proptest! {
        /// Any bytes as the body of any request: parsed or refused as malformed, never a
        /// panic.
        #[test]
        fn any_body_of_any_request_is_parsed_or_malformed(
            id in proptest::sample::select(&REQUEST_IDS[..]),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = parse_any(id, &body);
        }

        /// Any JSON object as the body of any request: parsed or refused, never a panic.
        #[test]
        fn any_json_object_of_any_request_is_parsed_or_malformed(
            id in proptest::sample::select(&REQUEST_IDS[..]),
            fields in proptest::collection::btree_map(
                prop_oneof!["[a-z_]{1,16}", Just("group_id".to_string()), Just("limit".to_string()), Just("content".to_string())],
                json_value(),
                0..6,
            ),
        ) {
            let body = serde_json::to_vec(&Value::Object(fields.into_iter().collect())).unwrap();
            let _ = parse_any(id, &body);
        }

        /// An id field takes exactly what fits its type: a non-negative integer (or null, the
        /// zero value); anything else (a string, a negative or fractional number, an object)
        /// is malformed, with no silent conversion.
        #[test]
        fn an_id_field_takes_only_a_non_negative_integer(value in json_value()) {
            let body = serde_json::to_vec(&serde_json::json!({"group_id": value.clone()})).unwrap();
            let parsed = parse::<GroupIdReq>(&body);
            match &value {
                Value::Null => prop_assert_eq!(parsed.unwrap().group_id, 0),
                Value::Number(n) if n.as_u64().is_some() => {
                    prop_assert_eq!(parsed.unwrap().group_id, n.as_u64().unwrap())
                }
                _ => prop_assert!(parsed.is_err(), "{value} was accepted"),
            }
        }

        /// Keys match whatever their ASCII case (as Go's encoding/json does), and string
        /// fields come back exactly as sent, whatever characters they hold.
        #[test]
        fn text_fields_come_back_as_sent_whatever_the_key_case(
            to in ".*",
            content in ".*",
            key_case in proptest::collection::vec(any::<bool>(), 30),
        ) {
            let cased = |key: &str| -> String {
                key.chars()
                    .zip(key_case.iter().cycle())
                    .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                    .collect()
            };
            let mut map = Map::new();
            map.insert(cased("to_user_id"), Value::String(to.clone()));
            map.insert(cased("content"), Value::String(content.clone()));
            let body = serde_json::to_vec(&Value::Object(map)).unwrap();
            let r: TextReq = parse(&body).unwrap();
            prop_assert_eq!(r.to_user_id, to);
            prop_assert_eq!(r.content, content);
        }

        /// Nesting deeper than the parser's limit is refused, not a stack overflow.
        #[test]
        fn deep_nesting_is_malformed(depth in 129usize..20_000) {
            let body = format!("{{\"content\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            prop_assert!(parse::<TextReq>(body.as_bytes()).is_err());
        }
    }

    #[test]
    fn times_format_like_go() {
        assert_eq!(rfc3339(1_716_000_000_120), "2024-05-18T02:40:00.12Z");
        assert_eq!(rfc3339(1_716_000_000_000), "2024-05-18T02:40:00Z");
        assert_eq!(sql_datetime(1_716_000_000_999), "2024-05-18 02:40:00");
        assert!(is_rfc3339("2024-05-18T02:40:00.12+08:00"));
        assert!(is_rfc3339(ZERO_TIME));
        assert!(!is_rfc3339("yesterday"));
    }
}

/// Codes of the 99 error frame (and of failed 402 acks). Documented in `docs/protocol.md`.
pub mod code {
    /// The request needs a logged-in connection.
    pub const NOT_LOGGED_IN: u32 = 1;
    /// The body is not the JSON the message id expects.
    pub const MALFORMED: u32 = 2;
    /// The recipient or target does not exist.
    pub const NOT_FOUND: u32 = 3;
    /// A field breaks a limit.
    pub const INVALID: u32 = 4;
    /// Unexpected server failure.
    pub const INTERNAL: u32 = 5;
    /// A backend is unavailable: retry later.
    pub const UNAVAILABLE: u32 = 6;
    /// Not a member of the group.
    pub const NOT_MEMBER: u32 = 7;
    /// Closed because the user logged in on more devices than allowed.
    pub const TOO_MANY_DEVICES: u32 = 8;
    /// Closed because the client read its frames too slowly.
    pub const SLOW_CONSUMER: u32 = 9;
    /// A frame body above `max_body`.
    pub const FRAME_TOO_LARGE: u32 = 10;
    /// Closed after `idle_timeout` without a frame.
    pub const IDLE_TIMEOUT: u32 = 11;
    /// A message id the server does not handle.
    pub const UNKNOWN_ID: u32 = 12;
    /// The server is shutting down.
    pub const SHUTTING_DOWN: u32 = 13;
    /// The login token is invalid or expired.
    pub const BAD_TOKEN: u32 = 14;
    /// Closed at once: the node (or the client's address) has too many connections that
    /// are not logged in, or the node is past `max_connections`.
    pub const NODE_FULL: u32 = 15;
    /// Closed: not logged in within `login_timeout` of connecting.
    pub const LOGIN_TIMEOUT: u32 = 16;
    /// Closed by an operator (the admin API), with the operator's reason.
    pub const KICKED: u32 = 17;
}
