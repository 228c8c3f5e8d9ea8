//! The message ids of the chat-zinx wire protocol: the true numbers of the original server
//! (`docs/protocol.md` §3.1, which differ from the comments in its source) plus the v2 extensions.
//!
//! This is the only place that knows the numbers.

pub const PING: u32 = 1;
pub const PONG: u32 = 2;
pub const ERROR: u32 = 99;

pub const REGISTER_REQ: u32 = 102;
pub const REGISTER_RESP: u32 = 103;
pub const LOGIN_REQ: u32 = 104;
pub const LOGIN_RESP: u32 = 105;
pub const LOGOUT_REQ: u32 = 106;
pub const LOGOUT_RESP: u32 = 107;

/// P2P text: the same id is used for the request (client → server) and the delivery.
pub const TEXT_MSG: u32 = 208;
pub const HISTORY_REQ: u32 = 211;
pub const HISTORY_RESP: u32 = 212;
pub const RELATIONS_REQ: u32 = 213;
pub const RELATIONS_RESP: u32 = 214;
pub const CREATE_GROUP_REQ: u32 = 215;
pub const CREATE_GROUP_RESP: u32 = 216;
pub const JOIN_GROUP_REQ: u32 = 217;
pub const JOIN_GROUP_RESP: u32 = 218;
pub const LEAVE_GROUP_REQ: u32 = 219;
pub const LEAVE_GROUP_RESP: u32 = 220;
pub const GROUP_MEMBERS_REQ: u32 = 222;
pub const GROUP_MEMBERS_RESP: u32 = 223;
pub const MY_GROUPS_REQ: u32 = 224;
pub const MY_GROUPS_RESP: u32 = 225;
pub const UPDATE_GROUP_REQ: u32 = 226;
pub const UPDATE_GROUP_RESP: u32 = 227;
pub const SET_ROLE_REQ: u32 = 228;
pub const SET_ROLE_RESP: u32 = 229;
pub const REMOVE_MEMBER_REQ: u32 = 230;
pub const REMOVE_MEMBER_RESP: u32 = 231;
pub const GROUP_DETAILS_REQ: u32 = 232;
pub const GROUP_DETAILS_RESP: u32 = 233;
pub const GROUP_HISTORY_REQ: u32 = 234;
pub const GROUP_HISTORY_RESP: u32 = 235;

pub const GROUP_TEXT_REQ: u32 = 310;
pub const GROUP_TEXT_ACK: u32 = 311;
pub const GROUP_TEXT_PUSH: u32 = 312;

// v2 extensions (`docs/protocol.md` §9): only sent to connections that said Hello.
pub const HELLO_REQ: u32 = 400;
pub const HELLO_RESP: u32 = 401;
pub const SEND_ACK: u32 = 402;
pub const SYNC_REQ: u32 = 403;
pub const SYNC_RESP: u32 = 404;
pub const REDIRECT: u32 = 406;

/// Whether a v1 connection may receive a frame with this id (`docs/protocol.md` §3.2).
pub fn is_v1(id: u32) -> bool {
    matches!(id, 1..=2 | 99 | 102..=107 | 208..=235 | 310..=312)
}

/// The response id that answers a request id, used to address errors on the id the original
/// client waits on.
pub fn response_for(request: u32) -> Option<u32> {
    Some(match request {
        PING => PONG,
        REGISTER_REQ => REGISTER_RESP,
        LOGIN_REQ => LOGIN_RESP,
        LOGOUT_REQ => LOGOUT_RESP,
        HISTORY_REQ => HISTORY_RESP,
        RELATIONS_REQ => RELATIONS_RESP,
        CREATE_GROUP_REQ | JOIN_GROUP_REQ | LEAVE_GROUP_REQ | GROUP_MEMBERS_REQ | MY_GROUPS_REQ
        | UPDATE_GROUP_REQ | SET_ROLE_REQ | REMOVE_MEMBER_REQ | GROUP_DETAILS_REQ
        | GROUP_HISTORY_REQ => request + 1,
        GROUP_TEXT_REQ => GROUP_TEXT_ACK,
        HELLO_REQ => HELLO_RESP,
        SYNC_REQ => SYNC_RESP,
        _ => return None,
    })
}

/// A short human name of an id, for logs and the terminal client.
pub fn name(id: u32) -> &'static str {
    match id {
        PING => "ping",
        PONG => "pong",
        ERROR => "error",
        REGISTER_REQ => "register",
        REGISTER_RESP => "register-resp",
        LOGIN_REQ => "login",
        LOGIN_RESP => "login-resp",
        LOGOUT_REQ => "logout",
        LOGOUT_RESP => "logout-resp",
        TEXT_MSG => "text",
        HISTORY_REQ => "history",
        HISTORY_RESP => "history-resp",
        RELATIONS_REQ => "relations",
        RELATIONS_RESP => "relations-resp",
        CREATE_GROUP_REQ => "create-group",
        CREATE_GROUP_RESP => "create-group-resp",
        JOIN_GROUP_REQ => "join-group",
        JOIN_GROUP_RESP => "join-group-resp",
        LEAVE_GROUP_REQ => "leave-group",
        LEAVE_GROUP_RESP => "leave-group-resp",
        GROUP_MEMBERS_REQ => "group-members",
        GROUP_MEMBERS_RESP => "group-members-resp",
        MY_GROUPS_REQ => "my-groups",
        MY_GROUPS_RESP => "my-groups-resp",
        UPDATE_GROUP_REQ => "update-group",
        UPDATE_GROUP_RESP => "update-group-resp",
        SET_ROLE_REQ => "set-role",
        SET_ROLE_RESP => "set-role-resp",
        REMOVE_MEMBER_REQ => "remove-member",
        REMOVE_MEMBER_RESP => "remove-member-resp",
        GROUP_DETAILS_REQ => "group-details",
        GROUP_DETAILS_RESP => "group-details-resp",
        GROUP_HISTORY_REQ => "group-history",
        GROUP_HISTORY_RESP => "group-history-resp",
        GROUP_TEXT_REQ => "group-text",
        GROUP_TEXT_ACK => "group-text-ack",
        GROUP_TEXT_PUSH => "group-text-push",
        HELLO_REQ => "hello",
        HELLO_RESP => "hello-resp",
        SEND_ACK => "send-ack",
        SYNC_REQ => "sync",
        SYNC_RESP => "sync-resp",
        REDIRECT => "redirect",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_has_the_next_id_as_response() {
        for req in [215, 217, 219, 222, 224, 226, 228, 230, 232, 234] {
            assert_eq!(response_for(req), Some(req + 1), "request {req}");
        }
        assert_eq!(response_for(TEXT_MSG), None);
        assert_eq!(response_for(221), None);
        assert_eq!(response_for(GROUP_TEXT_REQ), Some(GROUP_TEXT_ACK));
    }

    #[test]
    fn v2_ids_are_not_v1() {
        for id in [400, 401, 402, 403, 404, 406] {
            assert!(!is_v1(id));
        }
        for id in [1, 2, 99, 103, 105, 107, 208, 212, 235, 311, 312] {
            assert!(is_v1(id));
        }
    }
}
