//! The bounded queue of frames towards one connection.
//!
//! A purpose-built queue rather than a `tokio::sync::mpsc` channel: a channel allocates its
//! first block of slots (~1.3 KB here) when it is created, for every connection, idle or not.
//! The outbox holds a `VecDeque` that allocates only when frames are queued and gives its memory
//! back when it runs empty, which keeps an idle connection small (design target ≤ 4 KB).
//!
//! Many producers (the session's replies, the hub's pushes), one consumer (the writer task).
//! Bounded: `try_push` fails with `Full` at capacity (the hub's slow-consumer rule); `push`
//! waits for room (the session's replies; the caller bounds the wait).
//!
//! The one consumer waits through a waker slot (`register_writer`, `try_take_batch`) rather
//! than a `Notify`: its wait is then a plain `poll_fn` instead of a 64-byte `Notified` future
//! inside the writer task of every idle connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

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
    /// The queue is at capacity.
    Full,
    /// The connection is closing: nothing more is written.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Outbound>,
    /// No more frames will be accepted; the writer ends once it has taken what is queued.
    closed: bool,
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
    /// The writer's waker: woken when frames are queued or the outbox is closed.
    writer: AtomicWaker,
    /// Wakes a producer waiting for room.
    room: Notify,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            writer: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame if there is room, without waiting.
    pub fn try_push(&self, frame: Outbound) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        if s.frames.len() >= self.capacity {
            return Err(PushError::Full);
        }
        s.frames.push_back(frame);
        drop(s);
        self.writer.wake();
        Ok(())
    }

    /// Queues a frame, waiting for room. Callers bound the wait with a timeout.
    pub async fn push(&self, frame: Outbound) -> Result<(), PushError> {
        loop {
            // Register interest before checking, so a wake-up between check and wait is kept.
            let room = self.room.notified();
            match self.try_push(frame.clone()) {
                Err(PushError::Full) => room.await,
                other => return other,
            }
        }
    }

    /// Accepts no more frames. What is queued is still written (unless the writer stops).
    pub fn close(&self) {
        self.lock().closed = true;
        self.writer.wake();
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
            drop(s);
            self.room.notify_one();
            return Poll::Ready(Some(Batch {
                max_seq: f.seq,
                min_seq: (f.seq > 0).then_some(f.seq),
                single: Some(f.frame),
            }));
        }
        if !s.frames.is_empty() {
            let mut batch = Batch::default();
            while let Some(f) = s.frames.front() {
                if !out.is_empty() && out.len() + f.frame.len() > max_bytes {
                    break;
                }
                let f = s.frames.pop_front().expect("front exists");
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
            drop(s);
            self.room.notify_one();
            return Poll::Ready(Some(batch));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Closes the outbox and discards what is queued; returns the lowest log position among
    /// the discarded pushes (they were never written).
    pub fn abandon(&self) -> Option<Seq> {
        let mut s = self.lock();
        s.closed = true;
        let low = s.frames.iter().filter(|f| f.seq > 0).map(|f| f.seq).min();
        s.frames = VecDeque::new();
        drop(s);
        self.room.notify_one();
        low
    }

    pub fn len(&self) -> usize {
        self.lock().frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: Seq, len: usize) -> Outbound {
        Outbound {
            frame: Bytes::from(vec![b'x'; len]),
            seq,
        }
    }

    #[tokio::test]
    async fn bounded_fifo_with_batches_of_whole_frames() {
        let q = Outbox::new(3);
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
        let q = Outbox::new(4);
        q.try_push(f(0, 100)).unwrap();
        q.try_push(f(0, 100)).unwrap();
        let mut out = Vec::new();
        q.take_batch(&mut out, 10).await.unwrap();
        assert_eq!(out.len(), 100);
    }

    #[tokio::test]
    async fn push_waits_for_room_and_abandon_reports_the_lowest_unwritten() {
        let q = std::sync::Arc::new(Outbox::new(1));
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
}
