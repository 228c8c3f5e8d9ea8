//! The bounded queue of frames towards one connection.
//!
//! A purpose-built queue rather than a `tokio::sync::mpsc` channel: a channel allocates its
//! first block of slots (~1.3 KB here) when it is created, for every connection, idle or not.
//! The outbox holds a `VecDeque` that allocates only when frames are queued and gives its memory
//! back when it runs empty, which keeps an idle connection small (design target ≤ 4 KB).
//!
//! Many producers (the session's replies, the hub's pushes), one consumer (the writer task).
//! Bounded in frames (`protocol.write_queue`) and in bytes (`protocol.write_queue_bytes`):
//! `try_push` fails with `Full` when either is reached (the hub's slow-consumer rule); `push`
//! waits for room (the session's replies; the caller bounds the wait), and replies get only the
//! first half of the byte limit ([`Outbox::reply_room`]), so that the pushes of a client that
//! pipelines requests still find room. A lone frame larger than the limit is taken into an
//! empty queue (a reply is capped by `protocol.max_reply_bytes`, a push by the frame limit).
//! Every byte queued is also counted in the node's [`WriteBudget`] (one atomic add per frame
//! queued, one sub per batch taken).
//!
//! The one consumer waits through a waker slot (`register_writer`, `try_take_batch`) rather
//! than a `Notify`: its wait is then a plain `poll_fn` instead of a 64-byte `Notified` future
//! inside the writer task of every idle connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::budget::WriteBudget;
use crate::core::model::Seq;

/// One frame queued for a connection's writer. `seq` is the log position of a pushed message
/// (0 for replies), so the writer can report what it really wrote.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Bytes,
    pub seq: Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at capacity (frames or bytes).
    Full,
    /// The connection is closing: nothing more is written.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outbound>,
    /// Bytes of `frames`.
    bytes: usize,
    /// No more frames will be accepted; the writer ends once it has taken what is queued.
    closed: bool,
    /// Lowest log position among pushes dropped by `abandon` (never written).
    dropped_low: Option<Seq>,
}

/// What the writer took from the queue in one batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Highest and lowest log positions of pushed messages in the batch (0 / None if none).
    pub max_seq: Seq,
    pub min_seq: Option<Seq>,
    /// The batch is this one frame, not copied into `out` (the common case of a connection
    /// that gets one push at a time: no buffer to allocate, no copy).
    pub single: Option<Bytes>,
}

pub struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    /// Bytes queued at most (a lone larger frame is still taken into an empty queue).
    max_bytes: usize,
    /// The node's count of queued bytes.
    node: Arc<WriteBudget>,
    /// The writer's waker: woken when frames are queued or the outbox is closed.
    writer: AtomicWaker,
    /// Wakes a producer waiting for room.
    room: Notify,
}

impl Outbox {
    /// A queue of at most `capacity` frames and `max_bytes` bytes, counted in `node`.
    pub fn new(capacity: usize, max_bytes: usize, node: Arc<WriteBudget>) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            node,
            writer: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame if there is room, without waiting (pushes: the whole byte limit).
    pub fn try_push(&self, frame: Outbound) -> Result<(), PushError> {
        self.offer(frame, self.max_bytes)
    }

    /// Queues a frame if the queue then holds at most `byte_limit` bytes (or it is empty).
    fn offer(&self, frame: Outbound, byte_limit: usize) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        let len = frame.frame.len();
        if s.frames.len() >= self.capacity || (s.bytes > 0 && s.bytes + len > byte_limit) {
            return Err(PushError::Full);
        }
        s.frames.push_back(frame);
        s.bytes += len;
        // Counted before the lock is released: the writer cannot take (and subtract) it first.
        self.node.add(len);
        drop(s);
        self.writer.wake();
        Ok(())
    }

    /// The bytes replies may fill: half the byte limit. The other half is kept for pushes, so
    /// that a client that pipelines requests (and reads) is not closed as a slow consumer by
    /// the first push that arrives meanwhile.
    pub fn reply_room(&self) -> usize {
        (self.max_bytes / 2).max(1)
    }

    /// Queues a reply, waiting for room (see [`Outbox::reply_room`]). Callers bound the wait
    /// with a timeout.
    pub async fn push(&self, frame: Outbound) -> Result<(), PushError> {
        loop {
            // Register interest before checking, so a wake-up between check and wait is kept.
            let room = self.room.notified();
            match self.offer(frame.clone(), self.reply_room()) {
                Err(PushError::Full) => room.await,
                other => return other,
            }
        }
    }

    /// Whether a reply may be produced now: the queue holds less than [`Outbox::reply_room`].
    /// The reader handles no request while it does not (and so stops reading the socket).
    pub fn has_reply_room(&self) -> bool {
        let s = self.lock();
        s.closed || s.bytes < self.reply_room()
    }

    /// Waits until [`Outbox::has_reply_room`] (or the outbox is closed). Callers bound the wait.
    pub async fn reply_room_free(&self) {
        loop {
            let room = self.room.notified();
            if self.has_reply_room() {
                return;
            }
            room.await;
        }
    }

    /// The node's count this queue adds to.
    pub fn budget(&self) -> &Arc<WriteBudget> {
        &self.node
    }

    /// Bytes queued (not yet taken by the writer).
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Accepts no more frames. What is queued is still written (unless the writer stops).
    pub fn close(&self) {
        self.lock().closed = true;
        self.writer.wake();
        // A reader waiting for room (`reply_room_free`, `push`) looks again: it is closed.
        self.room.notify_one();
    }

    /// Wakes the writer without queueing anything (it has something else to look at).
    pub fn wake_writer(&self) {
        self.writer.wake();
    }

    /// Registers the writer's waker: the next `try_push`, `close` or `wake_writer` wakes it.
    /// Register before looking (`try_take_batch`), so that nothing is missed in between.
    pub fn register_writer(&self, waker: &Waker) {
        self.writer.register(waker);
    }

    /// Waits for frames and appends whole frames (at least one, then up to `max_bytes`) to
    /// `out`, or hands a lone frame over as [`Batch::single`] when `out` is empty. `None` once
    /// the outbox is closed and empty. For tests: the writer polls `try_take_batch` itself,
    /// together with its close flag.
    #[cfg(test)]
    pub async fn take_batch(&self, out: &mut Vec<u8>, max_bytes: usize) -> Option<Batch> {
        std::future::poll_fn(|cx| {
            self.register_writer(cx.waker());
            self.try_take_batch(out, max_bytes)
        })
        .await
    }

    /// Appends whole frames (at least one, then up to `max_bytes`) to `out` if any are queued
    /// (a lone frame into an empty `out` comes back as [`Batch::single`] instead);
    /// `Ready(None)` once the outbox is closed and empty; `Pending` while it is open and empty
    /// (call `register_writer` first to be woken).
    pub fn try_take_batch(&self, out: &mut Vec<u8>, max_bytes: usize) -> Poll<Option<Batch>> {
        let mut s = self.lock();
        if s.frames.len() == 1 && out.is_empty() {
            let f = s.frames.pop_front().expect("one frame");
            s.frames = VecDeque::new();
            let taken = std::mem::take(&mut s.bytes);
            drop(s);
            self.node.sub(taken);
            self.room.notify_one();
            return Poll::Ready(Some(Batch {
                max_seq: f.seq,
                min_seq: (f.seq > 0).then_some(f.seq),
                single: Some(f.frame),
            }));
        }
        if !s.frames.is_empty() {
            let mut batch = Batch::default();
            let mut taken = 0;
            while let Some(f) = s.frames.front() {
                if !out.is_empty() && out.len() + f.frame.len() > max_bytes {
                    break;
                }
                let f = s.frames.pop_front().expect("front exists");
                taken += f.frame.len();
                out.extend_from_slice(&f.frame);
                if f.seq > 0 {
                    batch.max_seq = batch.max_seq.max(f.seq);
                    batch.min_seq = Some(batch.min_seq.map_or(f.seq, |m| m.min(f.seq)));
                }
            }
            if s.frames.is_empty() && s.frames.capacity() > 0 {
                // Give the memory back: an idle connection keeps no queue storage.
                s.frames = VecDeque::new();
            }
            s.bytes -= taken;
            drop(s);
            self.node.sub(taken);
            self.room.notify_one();
            return Poll::Ready(Some(batch));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Closes the outbox and discards what is queued; returns the lowest log position among
    /// the pushes discarded by this and any earlier call (they were never written).
    pub fn abandon(&self) -> Option<Seq> {
        let mut s = self.lock();
        s.closed = true;
        let low = s.frames.iter().filter(|f| f.seq > 0).map(|f| f.seq).min();
        s.frames = VecDeque::new();
        let dropped = std::mem::take(&mut s.bytes);
        s.dropped_low = match (s.dropped_low, low) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let low = s.dropped_low;
        drop(s);
        self.node.sub(dropped);
        self.room.notify_one();
        self.writer.wake();
        low
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // The node's count must not keep what a dropped queue held.
        let s = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.node.sub(std::mem::take(&mut s.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue bounded in frames only.
    fn ob(frames: usize) -> Outbox {
        Outbox::new(frames, usize::MAX, WriteBudget::unlimited())
    }

    fn f(seq: Seq, len: usize) -> Outbound {
        Outbound {
            frame: Bytes::from(vec![b'x'; len]),
            seq,
        }
    }

    #[tokio::test]
    async fn bounded_fifo_with_batches_of_whole_frames() {
        let q = ob(3);
        q.try_push(f(0, 10)).unwrap();
        q.try_push(f(7, 10)).unwrap();
        q.try_push(f(5, 10)).unwrap();
        assert_eq!(q.try_push(f(9, 10)), Err(PushError::Full));
        let mut out = Vec::new();
        let b = q.take_batch(&mut out, 25).await.unwrap();
        assert_eq!(out.len(), 20, "whole frames only, up to the byte budget");
        assert_eq!(
            b,
            Batch {
                max_seq: 7,
                min_seq: Some(7),
                single: None,
            }
        );
        out.clear();
        // A lone frame is handed over as it is, not copied.
        let b = q.take_batch(&mut out, 25).await.unwrap();
        assert_eq!((out.len(), b.max_seq, b.min_seq), (0, 5, Some(5)));
        assert_eq!(b.single.map(|f| f.len()), Some(10));
        q.close();
        assert_eq!(q.try_push(f(1, 1)), Err(PushError::Closed));
        assert!(q.take_batch(&mut out, 25).await.is_none());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_still_goes_alone() {
        let q = ob(4);
        q.try_push(f(0, 100)).unwrap();
        q.try_push(f(0, 100)).unwrap();
        let mut out = Vec::new();
        q.take_batch(&mut out, 10).await.unwrap();
        assert_eq!(out.len(), 100);
    }

    #[tokio::test]
    async fn push_waits_for_room_and_abandon_reports_the_lowest_unwritten() {
        let q = std::sync::Arc::new(ob(1));
        q.try_push(f(3, 1)).unwrap();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(f(4, 1)).await });
        let mut out = Vec::new();
        q.take_batch(&mut out, 100).await.unwrap();
        waiter.await.unwrap().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.abandon(), Some(4));
        assert!(q.is_empty());
        assert_eq!(q.try_push(f(5, 1)), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn bytes_are_bounded_per_connection_and_counted_for_the_node() {
        let node = WriteBudget::unlimited();
        let q = Outbox::new(100, 100, node.clone());
        q.try_push(f(1, 60)).unwrap();
        q.try_push(f(2, 40)).unwrap();
        assert_eq!((q.queued_bytes(), node.queued()), (100, 100));
        // One byte over the limit is a full queue for a push, whatever the frame count.
        assert_eq!(q.try_push(f(3, 1)), Err(PushError::Full));
        let mut out = Vec::new();
        q.take_batch(&mut out, 1000).await.unwrap();
        assert_eq!(
            (q.queued_bytes(), node.queued()),
            (0, 0),
            "taken = no longer queued"
        );
        // A lone frame larger than the limit goes into an empty queue (and alone).
        q.try_push(f(4, 500)).unwrap();
        assert_eq!(q.try_push(f(5, 1)), Err(PushError::Full));
        assert_eq!(node.queued(), 500);
        // Two queues share the node's count; a dropped or abandoned queue gives its bytes back.
        let other = Outbox::new(100, 100, node.clone());
        other.try_push(f(6, 30)).unwrap();
        assert_eq!(node.queued(), 530);
        assert_eq!(q.abandon(), Some(4));
        assert_eq!(node.queued(), 30);
        drop(other);
        assert_eq!(node.queued(), 0);
    }

    #[tokio::test]
    async fn replies_fill_half_the_bytes_and_wait_for_room_while_pushes_use_the_rest() {
        let node = WriteBudget::unlimited();
        let q = std::sync::Arc::new(Outbox::new(100, 100, node.clone()));
        assert!(q.has_reply_room());
        q.push(f(0, 50)).await.unwrap();
        assert!(!q.has_reply_room(), "half the bytes are the replies' room");
        // A reply now waits; a push still finds room.
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.push(f(0, 10)).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        q.try_push(f(8, 50)).unwrap();
        assert_eq!(q.queued_bytes(), 100);
        let mut out = Vec::new();
        q.take_batch(&mut out, 1000).await.unwrap();
        waiter.await.unwrap().unwrap();
        assert_eq!((q.queued_bytes(), node.queued()), (10, 10));
        q.reply_room_free().await;
        assert!(q.has_reply_room());
    }

    #[tokio::test]
    async fn abandon_remembers_the_lowest_dropped_push_for_the_writer() {
        let q = Outbox::new(100, 1000, WriteBudget::unlimited());
        q.try_push(f(9, 10)).unwrap();
        // Dropped early (the node's budget), then the writer's own abandon at its end.
        assert_eq!(q.abandon(), Some(9));
        assert_eq!(q.try_push(f(3, 10)), Err(PushError::Closed));
        assert_eq!(
            q.abandon(),
            Some(9),
            "the writer still learns what was dropped"
        );
    }
}
