//! The domain's data: users, groups, memberships and stored messages.
//!
//! Times are Unix milliseconds (`UnixMs`); formatting them is the protocol layer's business.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub type UserId = u64;
pub type GroupId = u64;
/// Position of a message in the message log. Strictly increasing in append order across the
/// whole log (it is the JetStream stream sequence in the cluster), so it orders messages within a
/// conversation and doubles as a sync cursor. It is not dense within one conversation.
pub type Seq = u64;
pub type UnixMs = i64;

/// Identity of one connection on one node.
pub type ConnId = u64;

/// The system's wall clock. The core reads the time through its
/// [`Clock`](super::ports::Clock) (this is [`SystemClock`](super::ports::SystemClock)'s);
/// adapters and tools call it directly.
pub fn now_ms() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub uuid: String,
    pub username: String,
    pub email: String,
    pub avatar: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: UnixMs,
    pub last_login: Option<UnixMs>,
    /// Tokens revoked by a logout that have not expired yet (at most
    /// [`User::MAX_REVOKED_TOKENS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_tokens: Vec<TokenId>,
    /// Tokens issued before this (Unix seconds) are revoked: where the oldest revocations
    /// go when there are too many to keep one by one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens_valid_from: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A login token as a revocation records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenId {
    pub jti: Jti,
    /// Its `nbf` (issue time) and `exp`, Unix seconds.
    pub issued: i64,
    pub expires: i64,
}

/// A token's own id (its `jti` claim): 16 random bytes, written as 32 hex digits in the token
/// and in stored records. Every logged-in session keeps the ids of its tokens (a logout
/// revokes them), so they are held inline rather than as two heap strings per connection.
/// Tokens issued before token ids have none.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Jti(Option<[u8; 16]>);

impl Jti {
    /// No id: a token from before token ids.
    pub const NONE: Jti = Jti(None);

    pub fn new(bytes: [u8; 16]) -> Self {
        Jti(Some(bytes))
    }

    /// The id a token's `jti` claim names. chat-zinx writes 32 hex digits; any other
    /// non-empty text (not written by any version, but a signed claim all the same) is
    /// hashed to 16 bytes so that it still names one token.
    pub fn from_claim(claim: &str) -> Self {
        if claim.is_empty() {
            return Jti::NONE;
        }
        let mut bytes = [0u8; 16];
        if hex::decode_to_slice(claim, &mut bytes).is_ok() {
            return Jti(Some(bytes));
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(claim.as_bytes());
        bytes.copy_from_slice(&digest[..16]);
        Jti(Some(bytes))
    }

    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl std::fmt::Display for Jti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(bytes) => f.write_str(&hex::encode(bytes)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Jti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Jti({self})")
    }
}

impl Serialize for Jti {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Jti {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Jti::from_claim(&text))
    }
}

impl User {
    /// Revocations a user record keeps one by one; past it the oldest become
    /// [`User::tokens_valid_from`] (which may revoke a few more tokens than asked: never fewer).
    pub const MAX_REVOKED_TOKENS: usize = 32;

    /// Records the revocation of `token` at `now` (Unix seconds), dropping expired ones.
    pub fn revoke(&mut self, token: TokenId, now: i64) {
        if token.jti.is_none() {
            // A token from before token ids: only a cut-off can revoke it.
            self.tokens_valid_from = self.tokens_valid_from.max(token.issued + 1);
            return;
        }
        self.revoked_tokens
            .retain(|t| t.expires > now && t.jti != token.jti);
        if token.expires > now {
            self.revoked_tokens.push(token);
        }
        while self.revoked_tokens.len() > Self::MAX_REVOKED_TOKENS {
            let oldest = self.revoked_tokens.remove(0);
            self.tokens_valid_from = self.tokens_valid_from.max(oldest.issued + 1);
        }
    }

    /// Whether a token of this user was revoked.
    pub fn is_revoked(&self, token: &TokenId) -> bool {
        token.issued < self.tokens_valid_from
            || (!token.jti.is_none() && self.revoked_tokens.iter().any(|t| t.jti == token.jti))
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub uuid: String,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: UnixMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub owner_id: UserId,
    pub description: String,
    pub avatar: String,
    pub member_count: u64,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NewGroup {
    pub name: String,
    pub owner_id: UserId,
    pub description: String,
    pub avatar: String,
    pub created_at: UnixMs,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub avatar: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Id of the membership itself (unique across the cluster).
    pub member_id: u64,
    pub group_id: GroupId,
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: UnixMs,
}

/// A conversation: the pair of users of a P2P chat (smaller id first) or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ConvId {
    Direct(UserId, UserId),
    Group(GroupId),
}

impl ConvId {
    pub fn direct(a: UserId, b: UserId) -> Self {
        ConvId::Direct(a.min(b), a.max(b))
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvId::Direct(a, b) => write!(f, "p{a}-{b}"),
            ConvId::Group(g) => write!(f, "g{g}"),
        }
    }
}

impl FromStr for ConvId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("not a conversation id: {s:?}");
        if let Some(rest) = s.strip_prefix('p') {
            let (a, b) = rest.split_once('-').ok_or_else(bad)?;
            let (a, b) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            Ok(ConvId::direct(a, b))
        } else if let Some(rest) = s.strip_prefix('g') {
            Ok(ConvId::Group(rest.parse().map_err(|_| bad())?))
        } else {
            Err(bad())
        }
    }
}

impl From<ConvId> for String {
    fn from(c: ConvId) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for ConvId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// What a message says, by kind of conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MessageBody {
    Direct {
        recipient_id: UserId,
        /// The recipient as the sender wrote it (uuid, username or number): the original server
        /// echoes it unchanged in the delivery.
        to_user_id: String,
        content: String,
        /// The optional, uninterpreted `type` of the original protocol.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        msg_type: String,
        /// The optional, uninterpreted `sent_at` (RFC 3339) of the original protocol.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent_at: Option<String>,
    },
    Group {
        group_id: GroupId,
        content: String,
    },
}

impl MessageBody {
    pub fn content(&self) -> &str {
        match self {
            MessageBody::Direct { content, .. } | MessageBody::Group { content, .. } => content,
        }
    }
}

/// A message about to be appended to the log.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub msg_id: String,
    pub conv: ConvId,
    pub sender_id: UserId,
    pub sender_uuid: String,
    pub sender_name: String,
    pub timestamp: UnixMs,
    pub body: MessageBody,
}

/// A message as stored in the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: Seq,
    pub msg_id: String,
    pub conv: ConvId,
    pub sender_id: UserId,
    pub sender_uuid: String,
    pub sender_name: String,
    pub timestamp: UnixMs,
    pub body: MessageBody,
}

impl StoredMessage {
    pub fn from_new(m: NewMessage, seq: Seq) -> Self {
        StoredMessage {
            seq,
            msg_id: m.msg_id,
            conv: m.conv,
            sender_id: m.sender_id,
            sender_uuid: m.sender_uuid,
            sender_name: m.sender_name,
            timestamp: m.timestamp,
            body: m.body,
        }
    }

    pub fn content(&self) -> &str {
        self.body.content()
    }
}

/// Identifies a client's retry of the same send: (sender, `client_msg_id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupeKey {
    pub sender_id: UserId,
    pub client_msg_id: String,
}

/// Result of an append: the stored message and whether it was already there (a retry).
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    pub duplicate: bool,
}

/// A page of a conversation's history, newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
}

/// Where a user's deliveries stand: every message of the user's conversations up to `delivered`
/// has reached a connection of the user, except possibly those at or above `undelivered_from`
/// (the lowest message a node failed to hand to the user; see `docs/architecture.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCursor {
    pub delivered: Seq,
    pub undelivered_from: Option<Seq>,
}

impl DeliveryCursor {
    /// `delivered` raised to `to` (never lowered).
    pub fn advanced(mut self, to: Seq) -> Self {
        self.delivered = self.delivered.max(to);
        self
    }

    /// Message `seq` could not be handed over: `undelivered_from` lowered to it. Recorded even
    /// above `delivered`: a connection closing concurrently may raise `delivered` past it.
    pub fn marked(mut self, seq: Seq) -> Self {
        self.undelivered_from = Some(self.undelivered_from.map_or(seq, |low| low.min(seq)));
        self
    }

    /// A backlog up to `to` was handed over: `delivered` raised, and the mark cleared if it is
    /// still the one (`seen`) the backlog started from (a newer mark stays).
    pub fn settled(mut self, seen: Option<Seq>, to: Seq) -> Self {
        self = self.advanced(to);
        if self.undelivered_from == seen {
            self.undelivered_from = None;
        }
        self
    }

    /// The log position from which a backlog read must start (exclusive).
    pub fn resume_after(&self) -> Seq {
        match self.undelivered_from {
            Some(low) => self.delivered.min(low.saturating_sub(1)),
            None => self.delivered,
        }
    }
}

/// A live session of a user, as presence knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user_id: UserId,
    pub node_id: String,
    pub conn_id: ConnId,
    pub device: String,
    pub since: UnixMs,
}

/// A chat node as discovery knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// Address clients connect to (`host:port`).
    pub addr: String,
    /// Address TLS clients connect to (`host:port`), when the node has a TLS listener.
    pub tls_addr: Option<String>,
    pub connections: u64,
    pub capacity: u64,
    pub draining: bool,
}

impl NodeInfo {
    /// Load between 0 and 1 (connections over capacity).
    pub fn load(&self) -> f64 {
        if self.capacity == 0 {
            return 1.0;
        }
        (self.connections as f64 / self.capacity as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_ids_roundtrip_and_normalise() {
        assert_eq!(ConvId::direct(9, 3), ConvId::Direct(3, 9));
        for c in [ConvId::direct(1, 2), ConvId::Group(77)] {
            assert_eq!(c.to_string().parse::<ConvId>().unwrap(), c);
        }
        assert!("x1".parse::<ConvId>().is_err());
        assert!("p1".parse::<ConvId>().is_err());
        assert!("g-1".parse::<ConvId>().is_err());
    }

    #[test]
    fn resume_point_honours_undelivered_messages() {
        let c = DeliveryCursor {
            delivered: 100,
            undelivered_from: Some(42),
        };
        assert_eq!(c.resume_after(), 41);
        let c = DeliveryCursor {
            delivered: 10,
            undelivered_from: Some(42),
        };
        assert_eq!(c.resume_after(), 10);
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    fn user() -> User {
        User {
            id: 1,
            uuid: "u".into(),
            username: "alice".into(),
            email: "a@b.c".into(),
            avatar: String::new(),
            password_hash: String::new(),
            created_at: 0,
            last_login: None,
            revoked_tokens: Vec::new(),
            tokens_valid_from: 0,
        }
    }

    fn token(n: i64) -> TokenId {
        TokenId {
            jti: Jti::from_claim(&format!("t{n}")),
            issued: n,
            expires: n + 1000,
        }
    }

    #[test]
    fn revocations_are_kept_one_by_one_up_to_a_bound_then_by_a_cut_off() {
        let mut u = user();
        u.revoke(token(10), 20);
        assert!(u.is_revoked(&token(10)));
        assert!(!u.is_revoked(&token(11)));
        // Expired revocations are dropped at the next one.
        u.revoke(token(2000), 1500);
        assert_eq!(u.revoked_tokens, vec![token(2000)]);

        let mut u = user();
        let n = User::MAX_REVOKED_TOKENS as i64 + 5;
        for i in 1..=n {
            u.revoke(token(i), 0);
        }
        assert_eq!(u.revoked_tokens.len(), User::MAX_REVOKED_TOKENS);
        // Never fewer revoked than asked: the oldest are covered by the cut-off.
        for i in 1..=n {
            assert!(u.is_revoked(&token(i)), "token {i}");
        }
        assert!(!u.is_revoked(&token(n + 1)));
        // A token without id (issued before ids) is revoked by the cut-off.
        let mut u = user();
        u.revoke(
            TokenId {
                jti: Jti::NONE,
                issued: 50,
                expires: 999,
            },
            60,
        );
        assert!(u.is_revoked(&TokenId {
            jti: Jti::NONE,
            issued: 50,
            expires: 999
        }));
        assert!(!u.is_revoked(&token(51)));
    }
}
