//! What an operator can do to the cluster (the node's admin API calls these): find a user's
//! sessions on every node, close them (all, or one), revoke the user's login tokens, list the
//! nodes. Everything goes through the ports: presence says where the sessions are, the bus
//! reaches the other nodes, the store keeps the revocation, the registry knows the nodes.

use tracing::warn;

use super::*;
use crate::core::error::ChatResult;
use crate::core::ports::BusEvent;

/// Which of a user's sessions an operator closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickTarget {
    /// Every session of the user, on every node (also those presence does not know of).
    All,
    /// One session: the connection `conn` on node `node`.
    Session { node: String, conn: ConnId },
    /// Every session that logged in with this device name.
    Device(String),
}

/// What a kick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KickReport {
    /// The sessions presence knew of that the kick was sent to (for [`KickTarget::All`] the
    /// event also reaches sessions presence did not know of).
    pub sessions: Vec<SessionInfo>,
}

impl ChatCore {
    /// A user by numeric id, UUID or username (the order of [`Self::resolve_user_id`]).
    /// [`ChatError::UnknownUser`] when there is none.
    pub async fn find_user(&self, who: &str) -> ChatResult<User> {
        let id = self
            .resolve_user_id(who)
            .await?
            .ok_or(ChatError::UnknownUser)?;
        self.backends
            .store
            .user_by_id(id)
            .await?
            .ok_or(ChatError::UnknownUser)
    }

    /// The sessions of `user` on every node (as presence knows them), oldest first.
    pub async fn user_sessions(&self, user: UserId) -> ChatResult<Vec<SessionInfo>> {
        let mut sessions = self
            .backends
            .presence
            .sessions(&[user])
            .await?
            .remove(&user)
            .unwrap_or_default();
        sessions.sort_by(|a, b| a.since.cmp(&b.since).then(a.conn_id.cmp(&b.conn_id)));
        Ok(sessions)
    }

    /// Closes sessions of `user` wherever they are, telling each client `reason`. For
    /// [`KickTarget::All`] one event goes to every node (the bus's all-node subject, this node
    /// included), so that a session presence lost track of is closed too; this node's own
    /// sessions are closed at once, whatever the bus does. One session or one device: the
    /// event goes to the node presence places it on. An empty report for a session or device
    /// that presence does not know.
    pub async fn kick(
        &self,
        user: UserId,
        target: &KickTarget,
        reason: &str,
    ) -> ChatResult<KickReport> {
        let known = self.user_sessions(user).await;
        if *target == KickTarget::All {
            self.local.close_by_admin(user, None, reason);
            let sessions = match known {
                Ok(s) => s,
                Err(e) => {
                    // Presence only feeds the report here: the event reaches every node.
                    warn!(user_id = user, error = %e, "presence unavailable: the kick goes to every node without a list of sessions");
                    Vec::new()
                }
            };
            self.backends
                .bus
                .publish_all(BusEvent::AdminKick {
                    user,
                    conn: None,
                    reason: reason.to_string(),
                })
                .await?;
            return Ok(KickReport { sessions });
        }
        let sessions: Vec<SessionInfo> = known?
            .into_iter()
            .filter(|s| match target {
                KickTarget::Session { node, conn } => s.node_id == *node && s.conn_id == *conn,
                KickTarget::Device(device) => s.device == *device,
                KickTarget::All => true,
            })
            .collect();
        for s in &sessions {
            if s.node_id == self.node_id {
                self.local.close_by_admin(user, Some(s.conn_id), reason);
            } else {
                self.backends
                    .bus
                    .publish_node(
                        &s.node_id,
                        BusEvent::AdminKick {
                            user,
                            conn: Some(s.conn_id),
                            reason: reason.to_string(),
                        },
                    )
                    .await?;
            }
        }
        Ok(KickReport { sessions })
    }

    /// Revokes every login token of `user` issued up to now (this second included): a token
    /// login with any of them is refused from now on, on every node (the cut-off is kept in
    /// the user's record, [`User::tokens_valid_from`]). Open sessions stay open (kick them);
    /// a password login issues a token that works again from the next second. Returns the
    /// cut-off (Unix seconds: tokens issued before it are refused).
    pub async fn revoke_all_tokens(&self, user: UserId) -> ChatResult<i64> {
        let now = self.now_ms().div_euclid(1000);
        // A token without id at `now`: the record's cut-off moves past it (`User::revoke`).
        let cut = TokenId {
            jti: crate::core::model::Jti::NONE,
            issued: now,
            expires: now,
        };
        self.backends.store.revoke_token(user, cut, now).await?;
        Ok(now + 1)
    }

    /// Every node the registry knows and considers alive, draining ones included, least
    /// loaded first.
    pub async fn all_nodes(&self) -> ChatResult<Vec<NodeInfo>> {
        Ok(self.backends.registry.all_nodes().await?)
    }
}
