//! The state of one connection that its reader task, its writer task and the hub share: the
//! outbox, the close request and its reason, the protocol version, what was written, and the
//! login filter between live pushes and the login backlog.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::core::model::{ConnId, Seq};

use super::budget::WriteBudget;
use super::outbox::{Outbound, Outbox, PushError};

/// How live pushes and the login backlog share out the messages of a login (see
/// `LocalDelivery::backlog_page`).
enum LoginFilter {
    /// The backlog is being read, page by page: the positions pushed live since the login,
    /// and those of the backlog's pages so far (ascending: pages come in log order), whose
    /// live pushes are dropped.
    Recording {
        pushed: HashSet<Seq>,
        read: Vec<Seq>,
    },
    /// The backlog was read: its positions (sorted), whose live pushes are dropped.
    Dropping(Box<[Seq]>),
}

/// Why a connection is being closed by the server (sent as a 99 frame when possible).
#[derive(Debug, Clone)]
pub struct CloseReason {
    pub code: u32,
    pub message: String,
}

/// State of a connection shared between its reader task, its writer task and the hub.
///
/// One per connection for its whole life, so kept small: the close request is a flag and the
/// reader's waker (the writer's is in the outbox) rather than a `CancellationToken` (a heap
/// node of its own, and a 72-byte future in each task waiting on it), and what is only
/// needed at the end or during a login is boxed.
pub struct ConnShared {
    pub conn_id: ConnId,
    /// Frames towards this connection, taken by its writer task.
    pub outbox: Outbox,
    /// The client said Hello (v2).
    pub v2: AtomicBool,
    /// Set once the connection is asked to close (`request_close`, `close_after_flush`).
    closing: AtomicBool,
    /// The reader's waker, woken when `closing` is set.
    reader: AtomicWaker,
    reason: Mutex<Option<Box<CloseReason>>>,
    /// The login filter (`LoginFilter`), if any.
    // Boxed on purpose: 8 bytes in every connection's state, the filter exists only from a
    // login with a backlog on.
    login: Mutex<Option<Box<LoginFilter>>>,
    /// Whether `login` is set: a push checks this flag, not the lock.
    login_on: AtomicBool,
    /// Highest log position the writer has written to the socket.
    pub written: AtomicU64,
    /// Set by `close_after_flush`: the writer finishes the outbox instead of dropping it.
    graceful: AtomicBool,
}

impl ConnShared {
    /// `queue_frames` and `queue_bytes` bound the outbox; its bytes count in `node`.
    pub fn new(
        conn_id: ConnId,
        queue_frames: usize,
        queue_bytes: usize,
        node: Arc<WriteBudget>,
    ) -> Self {
        ConnShared {
            conn_id,
            outbox: Outbox::new(queue_frames, queue_bytes, node),
            v2: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            reason: Mutex::new(None),
            login: Mutex::new(None),
            login_on: AtomicBool::new(false),
            written: AtomicU64::new(0),
            graceful: AtomicBool::new(false),
        }
    }

    /// Closes the connection after what is queued (plus `farewell`, if given) has been written:
    /// reading stops at once, writing goes on until the outbox is empty. Used by the drain.
    pub fn close_after_flush(&self, farewell: Option<Outbound>) {
        if let Some(frame) = farewell {
            let _ = self.outbox.try_push(frame);
        }
        self.outbox.close();
        self.graceful.store(true, Ordering::SeqCst);
        self.set_closing();
    }

    fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.reader.wake();
        self.outbox.wake_writer();
    }

    /// Whether the connection was asked to close.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// `Ready` once the connection is asked to close; otherwise registers the reader's waker.
    /// For the reader task only (one waker slot).
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.reader.register(cx.waker());
        if self.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the connection is asked to close (reader task only, see `poll_closing`).
    pub fn closing(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_closing(cx))
    }

    /// Whether the close is a graceful one (see `close_after_flush`).
    pub fn closes_after_flush(&self) -> bool {
        self.graceful.load(Ordering::SeqCst)
    }

    /// Asks the connection to close with a reason; the first reason wins. Returns whether
    /// this reason is the one (so that a close is counted once).
    pub fn request_close(&self, code: u32, message: impl Into<String>) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.is_none();
        if first {
            *r = Some(Box::new(CloseReason {
                code,
                message: message.into(),
            }));
        }
        drop(r);
        self.set_closing();
        first
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .cloned()
    }

    pub fn is_v2(&self) -> bool {
        self.v2.load(Ordering::Relaxed)
    }

    fn login(&self) -> std::sync::MutexGuard<'_, Option<Box<LoginFilter>>> {
        self.login.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection logs in: from now until [`Self::backlog_done`], record what is pushed
    /// live. Called before the connection joins the hub.
    pub fn start_recording(&self) {
        *self.login() = Some(Box::new(LoginFilter::Recording {
            pushed: HashSet::new(),
            read: Vec::new(),
        }));
        self.login_on.store(true, Ordering::Release);
    }

    /// A page of the login backlog was read, `page` its positions: returns those pushed live
    /// since [`Self::start_recording`] and drops live pushes of the others from now on, in
    /// one step (under the lock that [`Self::push_live`] takes).
    pub fn backlog_page(&self, page: &[Seq]) -> HashSet<Seq> {
        let mut login = self.login();
        let Some(LoginFilter::Recording { pushed, read }) = login.as_deref_mut() else {
            return HashSet::new();
        };
        let mut already = HashSet::new();
        for &seq in page {
            if pushed.contains(&seq) {
                already.insert(seq);
            } else {
                read.push(seq);
            }
        }
        already
    }

    /// The login backlog was read to its end (or given up): live pushes are no longer
    /// recorded; those of a message in the backlog are still dropped.
    pub fn backlog_done(&self) {
        let mut login = self.login();
        let mut read = match login.take().map(|f| *f) {
            Some(LoginFilter::Recording { read, .. }) => read,
            Some(LoginFilter::Dropping(d)) => d.into_vec(),
            None => Vec::new(),
        };
        if read.is_empty() {
            self.login_on.store(false, Ordering::Release);
        } else {
            read.sort_unstable();
            read.dedup();
            *login = Some(Box::new(LoginFilter::Dropping(read.into_boxed_slice())));
        }
    }

    /// The session ended (logout, re-login): no login filter any more.
    pub fn end_login(&self) {
        self.login_on.store(false, Ordering::Release);
        *self.login() = None;
    }

    /// Queues a live push (position `out.seq`) through the login filter: `Ok(true)` queued,
    /// `Ok(false)` left out because the connection's login backlog has that message.
    pub fn push_live(&self, out: Outbound) -> Result<bool, PushError> {
        if !self.login_on.load(Ordering::Acquire) {
            return self.outbox.try_push(out).map(|()| true);
        }
        let mut login = self.login();
        match login.as_deref_mut() {
            Some(LoginFilter::Recording { read, .. }) if read.binary_search(&out.seq).is_ok() => {
                Ok(false)
            }
            Some(LoginFilter::Recording { pushed, .. }) => {
                let seq = out.seq;
                self.outbox.try_push(out)?;
                pushed.insert(seq);
                Ok(true)
            }
            Some(LoginFilter::Dropping(backlog)) if backlog.binary_search(&out.seq).is_ok() => {
                Ok(false)
            }
            _ => self.outbox.try_push(out).map(|()| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn push(shared: &ConnShared, seq: Seq) -> bool {
        shared
            .push_live(Outbound {
                frame: Bytes::from_static(b"x"),
                seq,
            })
            .unwrap()
    }

    #[test]
    fn the_login_filter_shares_a_backlog_with_live_pushes() {
        let shared = ConnShared::new(
            1,
            16,
            1 << 20,
            crate::server::budget::WriteBudget::unlimited(),
        );
        assert!(push(&shared, 1));
        shared.start_recording();
        // Pushed while the backlog is read: recorded, the backlog leaves it out.
        assert!(push(&shared, 5));
        assert!(push(&shared, 9));
        let pushed = shared.backlog_page(&[3, 5]);
        assert_eq!(pushed, HashSet::from([5]));
        // Pushed between two pages: dropped if a page read so far has it.
        assert!(!push(&shared, 3));
        assert!(push(&shared, 11));
        let pushed = shared.backlog_page(&[7, 9]);
        assert_eq!(pushed, HashSet::from([9]));
        shared.backlog_done();
        // Pushed after the read: dropped if the backlog has it, queued otherwise.
        assert!(!push(&shared, 7));
        assert!(!push(&shared, 3));
        assert!(push(&shared, 5));
        assert!(push(&shared, 12));
        shared.end_login();
        assert!(push(&shared, 7));
    }
}
