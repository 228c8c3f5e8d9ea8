//! Sessions: a login binds a connection (presence, the device limit), the backlog pushed at
//! login and how it settles the delivery cursor, the end of a session.

use tracing::warn;

use super::*;
use crate::core::error::ChatResult;
use crate::core::model::*;
use crate::core::ports::BusEvent;

impl ChatCore {
    /// Registers a logged-in connection in presence and enforces the device limit: returns
    /// nothing, but closes the user's oldest connections past the limit (on any node).
    pub async fn open_session(&self, me: &Me, conn: ConnId, device: &str) -> ChatResult<()> {
        let presence = &self.backends.presence;
        presence
            .register(SessionInfo {
                user_id: me.id,
                node_id: self.node_id.clone(),
                conn_id: conn,
                device: device.to_string(),
                since: self.now_ms(),
            })
            .await?;
        let max = self.limits().max_devices.max(1);
        let sessions = presence.sessions(&[me.id]).await?;
        let mut mine = sessions.get(&me.id).cloned().unwrap_or_default();
        mine.sort_by_key(|s| s.since);
        if mine.len() > max {
            let excess = mine.len() - max;
            let reason =
                format!("logged in on more than {max} devices: this oldest session was closed");
            for old in mine
                .into_iter()
                .filter(|s| s.conn_id != conn || s.node_id != self.node_id)
                .take(excess)
            {
                if old.node_id == self.node_id {
                    self.local.kick(me.id, old.conn_id, &reason);
                } else if let Err(e) = self
                    .backends
                    .bus
                    .publish_node(
                        &old.node_id,
                        BusEvent::Kick {
                            user: me.id,
                            conn: old.conn_id,
                            reason: reason.clone(),
                        },
                    )
                    .await
                {
                    warn!(user_id = me.id, node = %old.node_id, error = %e, "could not kick an old session");
                }
            }
        }
        Ok(())
    }

    /// A logged-in connection ended (closed, logged out or kicked): drop it from presence and
    /// move the user's delivery cursor to what the connection really wrote.
    pub async fn close_session(&self, me: &Me, conn: ConnId, outcome: DeliveryOutcome) {
        let b = &self.backends;
        // Cursor first, presence last: once a user shows offline, its cursor is final.
        if outcome.written_upto > 0 {
            if let Err(e) = b.store.advance_cursor(me.id, outcome.written_upto).await {
                warn!(user_id = me.id, error = %e, "could not save the delivery cursor; the next login repeats some messages");
            }
        }
        if let Some(seq) = outcome.unwritten_from {
            self.mark_undelivered(me.id, seq).await;
        }
        if let Err(e) = b.presence.unregister(me.id, &self.node_id, conn).await {
            warn!(user_id = me.id, error = %e, "presence unregister failed; the entry expires by itself");
        }
    }

    pub(in crate::core) async fn mark_undelivered(&self, user: UserId, seq: Seq) {
        if let Err(e) = self.backends.store.mark_undelivered(user, seq).await {
            warn!(user_id = user, seq, error = %e, "could not record an undelivered message; it stays readable in history and sync");
        }
    }

    /// The conversations of a user: direct peers and groups.
    pub(in crate::core) async fn conversations(&self, user: UserId) -> ChatResult<Vec<ConvId>> {
        let store = &self.backends.store;
        let mut convs: Vec<ConvId> = store
            .peers_of(user)
            .await?
            .into_iter()
            .map(|p| ConvId::direct(user, p))
            .collect();
        convs.extend(store.groups_of(user).await?.into_iter().map(ConvId::Group));
        Ok(convs)
    }

    /// Messages the user missed since its delivery cursor, oldest first (direct messages all or
    /// up to the configured cap per conversation, group messages the newest `group_backlog`),
    /// leaving out what the user sent.
    pub async fn backlog(&self, me: &Me) -> ChatResult<Backlog> {
        let store = &self.backends.store;
        let cursor = store.cursor(me.id).await?;
        let start = cursor.resume_after();
        let tail = store.log_tail().await?;
        let limits = self.limits();
        let mut out = Vec::new();
        for conv in self.conversations(me.id).await? {
            match conv {
                ConvId::Group(_) => {
                    let cap = limits.group_backlog;
                    if cap == 0 {
                        continue;
                    }
                    let page = store.history(conv, Some(tail + 1), cap).await?;
                    out.extend(page.messages.into_iter().filter(|m| m.seq > start));
                }
                ConvId::Direct(..) => {
                    let cap = if limits.direct_backlog == 0 {
                        usize::MAX
                    } else {
                        limits.direct_backlog
                    };
                    if cap != usize::MAX {
                        let page = store.history(conv, Some(tail + 1), cap).await?;
                        out.extend(page.messages.into_iter().filter(|m| m.seq > start));
                        continue;
                    }
                    let mut after = start;
                    loop {
                        let page = store.after(conv, after, SYNC_MAX).await?;
                        let full = page.len() == SYNC_MAX;
                        for m in page {
                            if m.seq > tail {
                                break;
                            }
                            after = m.seq;
                            out.push(m);
                        }
                        if !full || after >= tail {
                            break;
                        }
                    }
                }
            }
        }
        // What the user sent was acknowledged to the sending device; pushing it back at login
        // would show one's own messages as incoming (a v2 device gets them through sync).
        out.retain(|m| m.sender_id != me.id);
        out.sort_by_key(|m| m.seq);
        Ok(Backlog {
            messages: out,
            seen_mark: cursor.undelivered_from,
            upto: tail,
        })
    }

    /// The backlog of connection `conn`, which just logged in (joined this node's
    /// connections): [`Self::backlog`] less what was pushed to the connection live meanwhile,
    /// and from now on a live push to it of a message of this backlog is dropped
    /// ([`LocalDelivery::backlog_read`]). A message stored while the backlog is read thus
    /// reaches the connection once: in the backlog or live, whichever the read and its push
    /// make it. On an error the recording ends all the same (nothing is dropped).
    ///
    /// [`LocalDelivery::backlog_read`]: crate::core::ports::LocalDelivery::backlog_read
    pub async fn login_backlog(&self, me: &Me, conn: ConnId) -> ChatResult<Backlog> {
        let read = self.backlog(me).await;
        let seqs: Vec<Seq> = match &read {
            Ok(b) => b.messages.iter().map(|m| m.seq).collect(),
            Err(_) => Vec::new(),
        };
        let pushed = self.local().backlog_read(me.id, conn, &seqs);
        let mut backlog = read?;
        backlog.messages.retain(|m| !pushed.contains(&m.seq));
        Ok(backlog)
    }

    /// The backlog has been queued to the connection: move the cursor past it.
    pub async fn settle_backlog(&self, me: &Me, backlog: &Backlog) -> ChatResult<()> {
        self.backends
            .store
            .settle_cursor(me.id, backlog.seen_mark, backlog.upto)
            .await?;
        Ok(())
    }
}
