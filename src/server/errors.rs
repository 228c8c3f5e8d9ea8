//! Domain errors on the wire: the one table of the codes (99 frames, 402 acks) and of the
//! texts the original server sent for each [`ChatError`]. Original clients show or match
//! these texts, so they are part of the protocol (`docs/protocol.md` §5); the core's own
//! wording (`ChatError`'s `Display`, for logs) may change without touching the wire.

use crate::core::ChatError;
use crate::protocol::messages::code;

/// The text a client gets for `e`, exactly as the original server worded it.
pub fn text(e: &ChatError) -> String {
    match e {
        ChatError::Invalid(why) => why.clone(),
        ChatError::UsernameTaken => "username already exists".into(),
        ChatError::UnknownUser => "no such user".into(),
        ChatError::WrongPassword => "wrong password".into(),
        ChatError::BadToken(why) => why.clone(),
        ChatError::NoSuchTarget(who) => format!("user {who} does not exist"),
        ChatError::GroupNotFound => "group not found".into(),
        ChatError::GroupNameTaken => "a group with this name already exists".into(),
        ChatError::NotMember => "you are not a member of this group".into(),
        ChatError::AlreadyMember => "user already in this group".into(),
        ChatError::OwnerCannotLeave => {
            "group owner cannot leave the group directly, please transfer ownership first".into()
        }
        ChatError::NotOwnerOrAdminUpdate => {
            "permission denied: only group owner and admins can update group info".into()
        }
        ChatError::NotOwnerRoles => {
            "permission denied: only group owner can change member roles".into()
        }
        ChatError::NotOwnerOrAdminRemove => {
            "permission denied: only group owner and admins can remove members".into()
        }
        ChatError::AdminCannotRemoveAdmin => {
            "permission denied: admins cannot remove other admins or the owner".into()
        }
        ChatError::TargetNotMember => "target user is not a member of this group".into(),
        ChatError::MemberNotFound => "member not found in group".into(),
        ChatError::CannotChangeOwnerRole => "cannot change role of the group owner".into(),
        ChatError::InvalidRole => "invalid role: must be 'admin' or 'member'".into(),
        ChatError::CannotRemoveSelf => {
            "cannot remove yourself from group, use leave group instead".into()
        }
        ChatError::CannotRemoveOwner => "cannot remove the group owner".into(),
        ChatError::NoUpdates => "no updates provided".into(),
        ChatError::BadCursor => {
            "invalid sync cursor: use the cursor of an earlier sync response, or none".into()
        }
        ChatError::TooManyAttempts { retry_after } => format!(
            "too many attempts from this address or for this account: try again in {} s",
            retry_after.as_secs().max(1)
        ),
        ChatError::ClientMsgIdReused(id) => format!(
            "client_msg_id {id:?} was already used for a different message: use a new client_msg_id for each new message"
        ),
        ChatError::CursorPastEnd { cursor, tail } => format!(
            "sync cursor c{cursor} is past the end of the log (c{tail}): sync without a cursor to continue from your delivery cursor"
        ),
        ChatError::Unavailable(why) => {
            format!("service temporarily unavailable ({why}); try again")
        }
        ChatError::Internal(why) => format!("internal error: {why}"),
    }
}

/// The code (of a 99 frame or a 402 ack) and the text for `e`.
pub fn code_and_text(e: &ChatError) -> (u32, String) {
    let c = match e {
        ChatError::NoSuchTarget(_) | ChatError::UnknownUser | ChatError::GroupNotFound => {
            code::NOT_FOUND
        }
        ChatError::NotMember => code::NOT_MEMBER,
        ChatError::Unavailable(_) => code::UNAVAILABLE,
        ChatError::Internal(_) => code::INTERNAL,
        ChatError::BadCursor => code::MALFORMED,
        ChatError::BadToken(_) => code::BAD_TOKEN,
        _ => code::INVALID,
    };
    (c, text(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts that carry a value; the others are pinned by the protocol tests
    /// (tests/protocol/groups.rs, tests/protocol/errors.rs) through a real connection.
    #[test]
    fn texts_with_values() {
        assert_eq!(
            text(&ChatError::NoSuchTarget("bob".into())),
            "user bob does not exist"
        );
        assert_eq!(
            text(&ChatError::Unavailable("nats is unavailable: x".into())),
            "service temporarily unavailable (nats is unavailable: x); try again"
        );
        assert_eq!(
            code_and_text(&ChatError::NotMember),
            (
                code::NOT_MEMBER,
                "you are not a member of this group".into()
            )
        );
    }
}
