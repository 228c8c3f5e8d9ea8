//! Domain values to wire shapes: the one place that knows how a user, a group, a member and
//! a stored message look in the original protocol's frames. `crate::protocol` knows the
//! shapes (and bytes); the core knows the values; this adapter maps one to the other.

use serde_json::Value;

use crate::core::model::{Group, Member, MessageBody, StoredMessage, User};
use crate::protocol::messages::*;
use crate::protocol::{codec, ids};

impl From<&User> for RegisterData {
    fn from(u: &User) -> Self {
        RegisterData {
            id: u.id,
            user_uuid: u.uuid.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            avatar: u.avatar.clone(),
        }
    }
}

impl From<&Group> for CreatedGroup {
    fn from(g: &Group) -> Self {
        CreatedGroup {
            id: g.id,
            name: g.name.clone(),
            owner_user_id: g.owner_id,
            description: g.description.clone(),
            avatar: g.avatar.clone(),
            member_count: g.member_count,
            created_at: sql_datetime(g.created_at),
        }
    }
}

impl From<&Group> for GroupDetails {
    fn from(g: &Group) -> Self {
        GroupDetails {
            id: g.id,
            name: g.name.clone(),
            owner_user_id: g.owner_id,
            description: g.description.clone(),
            avatar: g.avatar.clone(),
            member_count: g.member_count,
            created_at: sql_datetime(g.created_at),
            updated_at: sql_datetime(g.updated_at),
        }
    }
}

impl MemberItem {
    pub fn new(m: &Member, user: &User, is_online: bool) -> Self {
        MemberItem {
            member_id: m.member_id,
            user_id: m.user_id,
            user_uuid: user.uuid.clone(),
            username: user.username.clone(),
            role: m.role.as_str().to_string(),
            joined_at: rfc3339(m.joined_at),
            is_online,
        }
    }
}

/// The push frame (id and JSON body) of a stored message: 208 for P2P, 312 for groups.
pub fn push_of(m: &StoredMessage) -> (u32, Value) {
    match &m.body {
        MessageBody::Direct {
            to_user_id,
            content,
            msg_type,
            sent_at,
            ..
        } => (
            ids::TEXT_MSG,
            serde_json::to_value(TextPush {
                from_user_id: m.sender_uuid.clone(),
                to_user_id: to_user_id.clone(),
                content: content.clone(),
                msg_type: msg_type.clone(),
                sent_at: sent_at.clone().unwrap_or_else(|| ZERO_TIME.to_string()),
                msg_id: m.msg_id.clone(),
                conv: m.conv.to_string(),
                seq: m.seq,
                timestamp: m.timestamp / 1000,
                from_username: m.sender_name.clone(),
            })
            .expect("push serialises"),
        ),
        MessageBody::Group { group_id, content } => (
            ids::GROUP_TEXT_PUSH,
            serde_json::to_value(GroupPush {
                group_id: *group_id,
                from_user_id: m.sender_id,
                from_user_uuid: m.sender_uuid.clone(),
                from_username: m.sender_name.clone(),
                content: content.clone(),
                timestamp: m.timestamp / 1000,
                msg_id: m.msg_id.clone(),
                conv: m.conv.to_string(),
                seq: m.seq,
            })
            .expect("push serialises"),
        ),
    }
}

/// The encoded push frame of a stored message, built once and shared by every connection.
pub fn push_frame(m: &StoredMessage) -> bytes::Bytes {
    let (id, body) = push_of(m);
    codec::encode(id, &serde_json::to_vec(&body).expect("push serialises"))
}

pub fn group_history_item(m: &StoredMessage) -> GroupHistoryItem {
    GroupHistoryItem {
        id: m.seq,
        msg_id: m.msg_id.clone(),
        sender_id: m.sender_id,
        sender_uuid: m.sender_uuid.clone(),
        sender_name: m.sender_name.clone(),
        content: m.content().to_string(),
        message_type: "text".to_string(),
        timestamp: m.timestamp / 1000,
    }
}

pub fn history_item(m: &StoredMessage) -> HistoryItem {
    HistoryItem {
        content: m.content().to_string(),
        from_user_id: m.sender_id.to_string(),
        timestamp: m.timestamp / 1000,
        msg_id: m.msg_id.clone(),
        seq: m.seq,
    }
}
