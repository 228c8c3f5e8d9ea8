//! The state of one connection that its reader task, its writer task and the hub share: the
//! outbox, the close request and its reason, the protocol version, what was written, and the
//! pushes recorded while a login backlog is prepared.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::core::model::{ConnId, Seq};

use super::budget::WriteBudget;
use super::outbox::{Outbound, Outbox};

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
    /// Log positions pushed while a login backlog is being prepared (de-duplication).
    // Boxed on purpose: 8 bytes in every connection's state instead of a 48-byte `HashSet`
    // that is only needed while a login backlog is prepared.
    #[allow(clippy::box_collection)]
    recording: Mutex<Option<Box<HashSet<Seq>>>>,
    /// Whether `recording` is on: a push checks this flag, not the lock.
    recording_on: AtomicBool,
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
            recording: Mutex::new(None),
            recording_on: AtomicBool::new(false),
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

    pub fn start_recording(&self) {
        *self.recording.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::default());
        self.recording_on.store(true, Ordering::Release);
    }

    /// Stops recording and returns what was pushed meanwhile.
    pub fn stop_recording(&self) -> HashSet<Seq> {
        self.recording_on.store(false, Ordering::Release);
        self.recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|set| *set)
            .unwrap_or_default()
    }

    pub(super) fn record(&self, seq: Seq) {
        if !self.recording_on.load(Ordering::Acquire) {
            return;
        }
        if let Some(set) = self
            .recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            set.insert(seq);
        }
    }
}
