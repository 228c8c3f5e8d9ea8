//! The login backlog, read in pages: what a user missed since its delivery cursor, oldest
//! first, merged from all its conversations without holding the whole of it.
//!
//! A user may have missed tens of megabytes (a long absence, a busy group); read whole, the
//! backlog cost its size in memory at every login (#14: a 62 MB backlog took 68 MB of RSS).
//! A [`BacklogReader`] keeps, per conversation, only a few messages read ahead (together about
//! [`READ_AHEAD`] messages, at least one per conversation), and hands out pages of at most
//! [`PAGE_MESSAGES`] messages or about [`PAGE_BYTES`] bytes of content in log order. The session
//! queues a page, waits until the connection has room (its byte budget), and reads the next.
//! A sync page (403) is read from the same merge ([`LogMerge`]), so it reads about what it
//! returns, not `limit` messages of every conversation.

use std::collections::VecDeque;

use super::*;
use crate::core::error::ChatResult;
use crate::core::ports::{BackendResult, Store};

/// Messages read ahead over all conversations of a backlog (at least one per conversation,
/// at most 64 per conversation).
pub const READ_AHEAD: usize = 512;
/// Messages of one backlog page at most.
pub const PAGE_MESSAGES: usize = 64;
/// A backlog page ends once its messages' content reaches this many bytes.
pub const PAGE_BYTES: usize = 256 << 10;

/// One conversation's part of a backlog.
struct Source {
    conv: ConvId,
    /// Read after this position next.
    after: Seq,
    /// Read ahead, oldest first.
    ahead: VecDeque<StoredMessage>,
    /// Nothing more to read (what is ahead is all that is left).
    exhausted: bool,
}

/// A user's conversations merged in log order, read a few messages ahead each (see the
/// module doc): what a login backlog and a sync page are read from.
pub(in crate::core) struct LogMerge {
    sources: Vec<Source>,
    /// Messages read per conversation and store call.
    per_read: usize,
    /// Nothing after this position.
    upto: Seq,
}

impl LogMerge {
    /// The messages of `convs` after `start` up to `upto`; `per_read` from the number of
    /// conversations (see [`READ_AHEAD`]).
    pub(in crate::core) fn new(
        convs: impl IntoIterator<Item = ConvId>,
        start: Seq,
        upto: Seq,
    ) -> Self {
        let sources: Vec<Source> = convs
            .into_iter()
            .map(|conv| Source {
                conv,
                after: start,
                ahead: VecDeque::new(),
                exhausted: false,
            })
            .collect();
        LogMerge {
            per_read: (READ_AHEAD / sources.len().max(1)).clamp(1, 64),
            sources,
            upto,
        }
    }

    /// The next message in log order, if any.
    pub(in crate::core) async fn next(
        &mut self,
        store: &dyn Store,
    ) -> BackendResult<Option<StoredMessage>> {
        self.fill(store).await?;
        let Some(oldest) = self
            .sources
            .iter_mut()
            .filter(|s| !s.ahead.is_empty())
            .min_by_key(|s| s.ahead[0].seq)
        else {
            return Ok(None);
        };
        Ok(oldest.ahead.pop_front())
    }

    /// Whether a message is left.
    pub(in crate::core) async fn has_next(&mut self, store: &dyn Store) -> BackendResult<bool> {
        self.fill(store).await?;
        Ok(!self.sources.is_empty())
    }

    /// Every conversation shows its next message (or is done): the oldest head is then the
    /// next message of all.
    async fn fill(&mut self, store: &dyn Store) -> BackendResult<()> {
        for s in self.sources.iter_mut() {
            if s.ahead.is_empty() && !s.exhausted {
                let got = store.after(s.conv, s.after, self.per_read).await?;
                s.exhausted = got.len() < self.per_read;
                for m in got {
                    if m.seq > self.upto {
                        s.exhausted = true;
                        break;
                    }
                    s.after = m.seq;
                    s.ahead.push_back(m);
                }
            }
        }
        self.sources
            .retain(|s| !(s.exhausted && s.ahead.is_empty()));
        Ok(())
    }
}

/// A backlog being read (see the module doc); from [`ChatCore::open_backlog`].
pub struct BacklogReader {
    user: UserId,
    merge: LogMerge,
    /// The user's undelivered mark when the backlog was opened.
    pub seen_mark: Option<Seq>,
    /// The log's end when the backlog was opened: the backlog is what is before it.
    pub upto: Seq,
}

impl ChatCore {
    /// Starts reading `me`'s backlog: direct messages all (or the newest
    /// `offline.direct_backlog` per conversation), group messages the newest
    /// `offline.group_backlog` per group, after the delivery cursor and up to the log's end
    /// now, leaving out what the user sent.
    pub async fn open_backlog(&self, me: &Me) -> ChatResult<BacklogReader> {
        let store = &self.backends.store;
        let cursor = store.cursor(me.id).await?;
        let start = cursor.resume_after();
        let tail = store.log_tail().await?;
        let limits = self.limits();
        let convs = self.conversations(me.id).await?;
        let mut merge = LogMerge::new([], start, tail);
        merge.per_read = (READ_AHEAD / convs.len().max(1)).clamp(1, 64);
        for conv in convs {
            let cap = match conv {
                ConvId::Group(_) => Some(limits.group_backlog),
                ConvId::Direct(..) if limits.direct_backlog > 0 => Some(limits.direct_backlog),
                ConvId::Direct(..) => None,
            };
            let mut source = Source {
                conv,
                after: start,
                ahead: VecDeque::new(),
                exhausted: false,
            };
            match cap {
                Some(0) => continue,
                None => {}
                // The newest `cap` before the end: one read finds where they start (and gives
                // them; only `per_read` of them are kept, the rest is read again in turn).
                Some(cap) => {
                    let page = store.history(conv, Some(tail + 1), cap).await?;
                    let mut newest: Vec<StoredMessage> = page
                        .messages
                        .into_iter()
                        .filter(|m| m.seq > start)
                        .collect();
                    newest.reverse();
                    source.exhausted = newest.len() <= merge.per_read;
                    newest.truncate(merge.per_read);
                    if let Some(last) = newest.last() {
                        source.after = last.seq;
                    }
                    source.ahead = newest.into();
                    if source.ahead.is_empty() {
                        continue;
                    }
                }
            }
            merge.sources.push(source);
        }
        Ok(BacklogReader {
            user: me.id,
            merge,
            seen_mark: cursor.undelivered_from,
            upto: tail,
        })
    }

    /// The next page of a backlog, in log order; empty once it is all read.
    pub async fn next_backlog_page(
        &self,
        reader: &mut BacklogReader,
    ) -> ChatResult<Vec<StoredMessage>> {
        let store = &*self.backends.store;
        let mut page = Vec::new();
        let mut bytes = 0;
        while page.len() < PAGE_MESSAGES && (page.is_empty() || bytes < PAGE_BYTES) {
            let Some(m) = reader.merge.next(store).await? else {
                break;
            };
            // What the user sent was acknowledged to the sending device; pushing it back at
            // login would show one's own messages as incoming (a v2 device gets them through
            // sync).
            if m.sender_id == reader.user {
                continue;
            }
            bytes += m.body.content().len();
            page.push(m);
        }
        Ok(page)
    }

    /// The next page of the backlog of connection `conn`, which logged in (joined this node's
    /// connections) before the backlog was opened: [`Self::next_backlog_page`] less what was
    /// pushed to the connection live meanwhile; from now on a live push to it of a message of
    /// this page is dropped ([`LocalDelivery::backlog_page`]). A message stored while the
    /// backlog is read thus reaches the connection once: in the backlog or live, whichever
    /// the read and its push make it. Call [`Self::backlog_done`] at the end, also after an
    /// error.
    ///
    /// [`LocalDelivery::backlog_page`]: crate::core::ports::LocalDelivery::backlog_page
    pub async fn next_login_backlog_page(
        &self,
        conn: ConnId,
        reader: &mut BacklogReader,
    ) -> ChatResult<Vec<StoredMessage>> {
        let mut page = self.next_backlog_page(reader).await?;
        let seqs: Vec<Seq> = page.iter().map(|m| m.seq).collect();
        let pushed = self.local().backlog_page(reader.user, conn, &seqs);
        page.retain(|m| !pushed.contains(&m.seq));
        Ok(page)
    }

    /// The backlog of `conn` was read to its end (or given up): live pushes are no longer
    /// recorded (those of a message in the backlog are still dropped).
    pub fn backlog_done(&self, user: UserId, conn: ConnId) {
        self.local().backlog_done(user, conn);
    }
}
