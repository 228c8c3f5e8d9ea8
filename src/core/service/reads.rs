//! Reads: direct and group history, chat relations, sync, the cluster's nodes.

use tracing::debug;

use super::*;
use crate::core::directory::is_uuid_shaped;
use crate::core::error::{ChatError, ChatResult};
use crate::core::model::*;
use crate::core::service::backlog::LogMerge;

impl ChatCore {
    /// The last `limit` direct messages with a user, oldest first. The target is looked up by
    /// uuid, then by username (`docs/protocol.md` §7.4).
    pub async fn history(
        &self,
        me: &Me,
        target_uuid: &str,
        target_name: &str,
        limit: usize,
    ) -> ChatResult<Vec<StoredMessage>> {
        let store = &self.backends.store;
        let mut target = None;
        if is_uuid_shaped(target_uuid) {
            target = self.lookup_uuid(target_uuid).await?;
        }
        if target.is_none() {
            target = self.lookup_name(target_name).await?;
        }
        let Some(target) = target else {
            let shown = if target_uuid.is_empty() {
                target_name
            } else {
                target_uuid
            };
            return Err(ChatError::NoSuchTarget(shown.to_string()));
        };
        let page = store
            .history(ConvId::direct(me.id, target), None, limit)
            .await?;
        let mut messages = page.messages;
        messages.reverse();
        Ok(messages)
    }

    pub async fn relations(&self, me: &Me) -> ChatResult<Vec<UserId>> {
        Ok(self.backends.store.peers_of(me.id).await?)
    }

    /// A page of group history, newest first, strictly before `last_id` (0 = from the newest).
    pub async fn group_history(
        &self,
        me: &Me,
        group: GroupId,
        last_id: Seq,
        limit: usize,
    ) -> ChatResult<HistoryPage> {
        self.check_member(me, group).await?;
        let before = (last_id > 0).then_some(last_id);
        Ok(self
            .backends
            .store
            .history(ConvId::Group(group), before, limit)
            .await?)
    }

    /// Every message of every conversation of the user after `cursor` (absent = the user's
    /// delivery cursor), at most `limit`, in log order (so in order within each conversation).
    /// Costs O(conversations × limit): one bounded read per conversation.
    pub async fn sync(&self, me: &Me, cursor: Option<Seq>, limit: usize) -> ChatResult<SyncPage> {
        self.sync_within(me, cursor, limit, &mut |_| true).await
    }

    /// [`ChatCore::sync`] with a size cap: `fits` is asked about each message in log order
    /// (the first always goes) and the page ends before the first one it refuses, with
    /// `has_more` and the cursor at the last message returned.
    pub async fn sync_within(
        &self,
        me: &Me,
        cursor: Option<Seq>,
        limit: usize,
        fits: &mut (dyn FnMut(&StoredMessage) -> bool + Send),
    ) -> ChatResult<SyncPage> {
        let store = &self.backends.store;
        let limit = limit.clamp(1, SYNC_MAX);
        let (start, seen_mark) = match cursor {
            Some(c) => (c, None),
            None => {
                let c = store.cursor(me.id).await?;
                (c.resume_after(), c.undelivered_from)
            }
        };
        let tail = store.log_tail().await?;
        if start > tail {
            return Err(ChatError::CursorPastEnd {
                cursor: start,
                tail,
            });
        }
        // Merged in log order, a few messages ahead per conversation: a page never reads
        // (conversations × limit) messages to return `limit`.
        let mut merge = LogMerge::new(self.conversations(me.id).await?, start, tail);
        let mut all = Vec::new();
        let mut has_more = false;
        while all.len() < limit {
            let Some(m) = merge.next(&**store).await? else {
                break;
            };
            if !fits(&m) {
                // The first always goes.
                if all.is_empty() {
                    all.push(m);
                }
                has_more = true;
                break;
            }
            all.push(m);
        }
        if all.len() == limit && !has_more {
            has_more = merge.has_next(&**store).await?;
        }
        let next = if has_more {
            all.last().map_or(start, |m| m.seq)
        } else {
            tail.max(start)
        };
        // The client has now seen everything up to `next`: that is the user's acknowledged
        // point, from which a sync without cursor (or the next login backlog) continues.
        let settled = match cursor {
            None => store.settle_cursor(me.id, seen_mark, next).await,
            Some(_) => store.advance_cursor(me.id, next).await,
        };
        if let Err(e) = settled {
            debug!(error = %e, "could not advance the delivery cursor after sync");
        }
        Ok(SyncPage {
            messages: all,
            cursor: next,
            has_more,
        })
    }

    /// Healthy nodes, least loaded first (for redirects).
    pub async fn nodes(&self) -> ChatResult<Vec<NodeInfo>> {
        Ok(self.backends.registry.nodes().await?)
    }
}
