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
    /// leaving out what the user sent: every page of [`Self::open_backlog`] at once (the
    /// session reads it page by page instead).
    pub async fn backlog(&self, me: &Me) -> ChatResult<Backlog> {
        let mut reader = self.open_backlog(me).await?;
        let mut messages = Vec::new();
        loop {
            let page = self.next_backlog_page(&mut reader).await?;
            if page.is_empty() {
                break;
            }
            messages.extend(page);
        }
        Ok(Backlog {
            messages,
            seen_mark: reader.seen_mark,
            upto: reader.upto,
        })
    }

    /// The whole login backlog of connection `conn`: every page of
    /// [`Self::next_login_backlog_page`], then [`Self::backlog_done`] (also on an error).
    pub async fn login_backlog(&self, me: &Me, conn: ConnId) -> ChatResult<Backlog> {
        let read = async {
            let mut reader = self.open_backlog(me).await?;
            let mut messages = Vec::new();
            loop {
                let page = self.next_login_backlog_page(conn, &mut reader).await?;
                if page.is_empty() {
                    break;
                }
                messages.extend(page);
            }
            Ok(Backlog {
                messages,
                seen_mark: reader.seen_mark,
                upto: reader.upto,
            })
        }
        .await;
        self.backlog_done(me.id, conn);
        read
    }

    /// The backlog has been queued to the connection: move the cursor past it.
    pub async fn settle_backlog(&self, me: &Me, backlog: &Backlog) -> ChatResult<()> {
        self.settle_backlog_at(me, backlog.seen_mark, backlog.upto)
            .await
    }

    /// [`Self::settle_backlog`] for a backlog read page by page: its `seen_mark` and `upto`
    /// ([`BacklogReader`]).
    pub async fn settle_backlog_at(
        &self,
        me: &Me,
        seen_mark: Option<Seq>,
        upto: Seq,
    ) -> ChatResult<()> {
        self.backends
            .store
            .settle_cursor(me.id, seen_mark, upto)
            .await?;
        Ok(())
    }
}
