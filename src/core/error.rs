//! What can go wrong in a chat operation, independent of how the protocol words it.
//!
//! `Display` is for logs. What a client reads is the wire adapter's business: the codes and
//! the original server's texts are one table in `crate::server::errors` (today the two
//! wordings agree, but the core's may change without changing the protocol).

use super::model::Seq;
use super::ports::{BackendError, Missing, Unique};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A field breaks a limit; the text names the field and the limit.
    #[error("{0}")]
    Invalid(String),
    #[error("username already exists")]
    UsernameTaken,
    #[error("no such user")]
    UnknownUser,
    #[error("wrong password")]
    WrongPassword,
    #[error("{0}")]
    BadToken(String),
    /// The recipient of a direct message or the target of a history request does not exist.
    #[error("user {0} does not exist")]
    NoSuchTarget(String),
    #[error("group not found")]
    GroupNotFound,
    #[error("a group with this name already exists")]
    GroupNameTaken,
    #[error("you are not a member of this group")]
    NotMember,
    #[error("user already in this group")]
    AlreadyMember,
    #[error("group owner cannot leave the group directly, please transfer ownership first")]
    OwnerCannotLeave,
    #[error("permission denied: only group owner and admins can update group info")]
    NotOwnerOrAdminUpdate,
    #[error("permission denied: only group owner can change member roles")]
    NotOwnerRoles,
    #[error("permission denied: only group owner and admins can remove members")]
    NotOwnerOrAdminRemove,
    #[error("permission denied: admins cannot remove other admins or the owner")]
    AdminCannotRemoveAdmin,
    #[error("target user is not a member of this group")]
    TargetNotMember,
    /// The owner's path of remove-member (the original words it differently).
    #[error("member not found in group")]
    MemberNotFound,
    #[error("cannot change role of the group owner")]
    CannotChangeOwnerRole,
    #[error("invalid role: must be 'admin' or 'member'")]
    InvalidRole,
    #[error("cannot remove yourself from group, use leave group instead")]
    CannotRemoveSelf,
    #[error("cannot remove the group owner")]
    CannotRemoveOwner,
    #[error("no updates provided")]
    NoUpdates,
    #[error("invalid sync cursor: use the cursor of an earlier sync response, or none")]
    BadCursor,
    /// A sync cursor beyond the end of the log: from another cluster, or from before this
    /// node's in-process log was lost. Following it would move the delivery cursor past
    /// messages not yet written.
    #[error("sync cursor {cursor} is past the end of the log ({tail}): sync without a cursor to continue from your delivery cursor")]
    CursorPastEnd { cursor: Seq, tail: Seq },
    /// A send reused a `client_msg_id` of the same user for a different message (another
    /// conversation or other content): the stored one is not this one.
    #[error("client_msg_id {0:?} was already used for a different message: use a new client_msg_id for each new message")]
    ClientMsgIdReused(String),
    /// Too many failed logins for this account or from this address (or registrations from
    /// this address): refused without work until the back-off has passed.
    #[error("too many attempts: try again in {} s", .retry_after.as_secs().max(1))]
    TooManyAttempts { retry_after: std::time::Duration },
    /// A backend could not answer; nothing was changed that the caller was told about.
    #[error("service temporarily unavailable ({0}); try again")]
    Unavailable(String),
    /// Something unexpected that is not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BackendError> for ChatError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable { .. } => ChatError::Unavailable(e.to_string()),
            // Conflicts and missing entities that reach here were not expected by the caller's
            // checks (a concurrent change): report them plainly.
            BackendError::Conflict(Unique::Username) => ChatError::UsernameTaken,
            BackendError::Conflict(Unique::GroupName) => ChatError::GroupNameTaken,
            BackendError::Conflict(Unique::Membership) => ChatError::AlreadyMember,
            BackendError::NotFound(Missing::Group) => ChatError::GroupNotFound,
            BackendError::NotFound(Missing::Membership) => ChatError::TargetNotMember,
            // A user that vanished under a write it was named in: nothing the caller did.
            other @ BackendError::NotFound(Missing::User) => ChatError::Internal(other.to_string()),
        }
    }
}

pub type ChatResult<T> = Result<T, ChatError>;

/// An error and its causes as one line, `a: b: c`, for a person to read. A cause whose text
/// is already in the line is left out: an error may repeat its source's text in its own (as
/// [`BackendError::Unavailable`] does, so that its one-line `Display` says everything), and a
/// printer of the whole chain would otherwise say it twice.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    /// Repeats its source's text in its own, as `BackendError::Unavailable` does.
    #[derive(Debug, thiserror::Error)]
    #[error("redis is unavailable: {0}")]
    struct Repeats(#[source] Refused);

    /// Says only what it adds; the source says the rest.
    #[derive(Debug, thiserror::Error)]
    #[error("no connection")]
    struct Adds(#[source] Refused);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Start(#[source] Box<dyn std::error::Error + Send + Sync>);

    #[test]
    fn a_chain_says_each_cause_once() {
        let e = Start(Box::new(Repeats(Refused)));
        assert_eq!(
            chain(&e),
            "cannot start: redis is unavailable: connection refused"
        );
        let e = Start(Box::new(Adds(Refused)));
        assert_eq!(chain(&e), "cannot start: no connection: connection refused");
        assert_eq!(chain(&Refused), "connection refused");
    }
}
