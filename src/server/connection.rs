//! One client connection: a reader loop (this task) that handles frames in arrival order
//! (sends overlap, in order, see [`super::sends`]; every other request waits for them), and
//! one writer task behind a bounded queue that coalesces queued frames into few writes.
//!
//! Memory per idle connection is kept small on purpose (design target ≤ 4 KB): the read
//! buffer starts empty and is released whenever it holds no partial frame, the writer's
//! batch buffer is released when its queue is empty, and request handling is boxed so its
//! (large) future exists only while a request is being handled. The two tasks' futures live
//! as long as the connection, so their size counts too: the set-up runs before the task is
//! spawned, the loops are `async move` blocks (an `async fn` keeps its arguments twice), read
//! readiness is polled (`poll_read_ready` keeps the waker in the socket's registration, where
//! `readable()` is a 168-byte future), and the end of a session is boxed.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::budget::SlowClose;
use super::sends::Pipeline;
use super::session::Session;
use super::shared::ConnShared;
use super::stream::{ConnStream, ReadSide, WriteSide};
use super::ServerCtx;
use crate::core::model::Seq;
use crate::core::service::DeliveryOutcome;
use crate::protocol::messages::{code, ErrorResp};
use crate::protocol::{codec, ids, FrameCodec, FrameError};
use crate::telemetry::metrics::EndReason;

/// Largest batch the writer puts into one `write` call.
const WRITE_BATCH: usize = 64 * 1024;
/// Frames handled back to back before the reader yields to other tasks. Without it, a client
/// pipelining many requests keeps its worker busy while the writers of the connections it
/// pushes to wait in that worker's queue, and their queues overflow.
const FRAMES_PER_YIELD: u32 = 16;
/// Pushes written this shortly before a connection ends are not counted as delivered: the
/// client may have closed its socket before reading them (a v1 client has no acks). They are
/// pushed again at the next login; a duplicate is better than a loss. Unless the client closed
/// cleanly and acknowledged every byte (plain TCP, see `WriteSide::peer_read_everything`):
/// then it read them all.
const UNCERTAIN_WINDOW: Duration = Duration::from_secs(2);

/// How long a connection whose client closed cleanly waits for the acknowledgements of its
/// last writes before they count as read (see `WriteSide::peer_read_everything`).
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Writes closer together than this share one entry of the written log.
const WRITTEN_BUCKET: Duration = Duration::from_millis(50);

/// What the writer has written, split into what is settled and the uncertain recent tail.
/// Writes are recorded in buckets of at most [`WRITTEN_BUCKET`], so a busy connection keeps
/// at most `UNCERTAIN_WINDOW / WRITTEN_BUCKET` entries, not one per write.
#[derive(Default)]
struct WrittenLog {
    settled: Seq,
    recent: std::collections::VecDeque<WrittenBucket>,
}

struct WrittenBucket {
    first: Instant,
    /// The bucket counts as written at its last write (the conservative end).
    last: Instant,
    low: Seq,
    high: Seq,
}

impl WrittenLog {
    /// Log positions `low..=high` (those of one batch) were just written.
    fn record(&mut self, low: Seq, high: Seq) {
        let now = Instant::now();
        self.settle(now);
        if let Some(b) = self.recent.back_mut() {
            if now.duration_since(b.first) < WRITTEN_BUCKET {
                b.last = now;
                b.low = b.low.min(low);
                b.high = b.high.max(high);
                return;
            }
        }
        self.recent.push_back(WrittenBucket {
            first: now,
            last: now,
            low,
            high,
        });
    }

    fn settle(&mut self, now: Instant) {
        while let Some(b) = self.recent.front() {
            if now.duration_since(b.last) < UNCERTAIN_WINDOW {
                break;
            }
            self.settled = self.settled.max(b.high);
            self.recent.pop_front();
        }
        if self.recent.is_empty() && self.recent.capacity() > 0 {
            // An idle connection keeps no allocation.
            self.recent = Default::default();
        }
    }

    /// Whether some writes are recent enough to be uncertain.
    fn has_uncertain(&self) -> bool {
        !self.recent.is_empty()
    }

    /// The highest position written (once the client is known to have read it all).
    fn written_high(&self) -> Seq {
        self.recent
            .iter()
            .map(|b| b.high)
            .fold(self.settled, Seq::max)
    }

    /// (settled position, lowest position of the uncertain tail).
    fn finish(mut self) -> (Seq, Option<Seq>) {
        self.settle(Instant::now());
        (self.settled, self.recent.iter().map(|b| b.low).min())
    }
}

/// Serves one accepted connection (plain, or TLS once its handshake is done) until it ends.
/// Sets the connection up (and spawns its writer task) at once; the returned future, to be
/// spawned, reads until the connection ends. `peer` is the client's address: the socket's
/// peer, or the one a trusted proxy's PROXY header named (see [`super::proxy`]).
pub fn serve(
    stream: ConnStream,
    peer: std::net::SocketAddr,
    conn_id: u64,
    ctx: Arc<ServerCtx>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    // Kept by the session only as the key of admission, login and registration throttling.
    debug!(conn_id, %peer, tls = stream.is_tls(), "connection opened");
    let (rd, wr) = stream.into_split();
    let settings = ctx.settings();
    let shared = Arc::new(ConnShared::new(
        conn_id,
        settings.write_queue,
        settings.write_queue_bytes,
        ctx.budget.clone(),
    ));
    let writer = tokio::spawn(write_loop(wr, shared.clone(), settings.write_timeout));
    // `open` already counts this connection.
    let overloaded = ctx.open.load(std::sync::atomic::Ordering::Relaxed) > settings.max_connections;
    let mut session = Session::new(ctx, shared, Some(peer.ip()));
    if overloaded {
        session.set_overloaded();
    }
    // A connection past the limits on those not logged in is told so and closed at once: it
    // does not hold a slot waiting for a first frame.
    let admitted = session.admit().is_ok();
    let mut reader = Reader {
        rd,
        session,
        sends: Pipeline::default(),
        shutdown,
    };
    async move {
        let reason = if admitted {
            read_loop(&mut reader).await
        } else {
            EndReason::NotAdmitted
        };
        // Boxed: the end of a connection exists only at its end, not for its whole life.
        Box::pin(finish(reason, reader, writer)).await;
    }
}

/// What the reader task holds for the life of its connection (one reference to it in the
/// read loop's future instead of five). The server context and the shared connection state
/// are the session's (not kept twice).
struct Reader {
    rd: ReadSide,
    session: Session,
    /// The connection's sends in flight (nothing allocated while there are none).
    sends: Pipeline,
    shutdown: CancellationToken,
}

/// The end of a connection, once its reader stopped.
async fn finish(
    reason: EndReason,
    reader: Reader,
    writer: tokio::task::JoinHandle<DeliveryOutcome>,
) {
    let Reader {
        rd,
        mut session,
        mut sends,
        shutdown: _,
    } = reader;
    let (ctx, shared) = (session.ctx().clone(), session.shared().clone());
    // Sends in flight finish (their appends may already be in the log): their pushes go out
    // and their replies are queued, as far as the connection still takes them.
    let _ = session.settle_sends(&mut sends).await;
    let conn_id = shared.conn_id;
    debug!(conn_id, ?reason, "connection ending");
    ctx.metrics.connection_ended(reason);
    // Stop live pushes first, so nothing new lands in the queue; then let the writer flush
    // what is queued (bounded by the write timeout) and report what it really wrote.
    let me = session.detach_from_hub();
    drop(session);
    shared.outbox.close();
    let outcome = writer.await.unwrap_or_default();
    if let Some(me) = me {
        ctx.core.close_session(&me, conn_id, outcome).await;
    }
    drop(rd);
}

/// When the connection is cut for idleness (the rate limiter's clock is the last frame's), and
/// when for not logging in, if it has not.
fn deadlines(r: &Reader, tokens: &RateLimiter) -> (Instant, Option<Instant>) {
    let idle = tokens.last + r.session.ctx().settings().idle_timeout;
    (idle, r.session.login_deadline())
}

// Not an `async fn`: that would keep its arguments twice in a future that lives as long as
// the connection.
#[allow(clippy::manual_async_fn)]
fn read_loop(r: &mut Reader) -> impl Future<Output = EndReason> + Send + '_ {
    async move {
        let mut buf = BytesMut::new();
        let mut tokens = RateLimiter::new(
            r.session.ctx().settings().rate_per_sec,
            r.session.ctx().settings().rate_burst,
        );
        let mut handled: u32 = 0;
        loop {
            // Nothing of the settings or the deadlines is kept across the wait below: it
            // would sit in every connection's future while it waits for a frame (the timer
            // holds the deadline; the timeout branch works the rest out again).
            let deadline = {
                let (idle, login) = deadlines(r, &tokens);
                login.map_or(idle, |l| l.min(idle))
            };
            let eof = tokio::select! {
                biased;
                _ = r.session.shared().closing() => return EndReason::ClosedByServer,
                _ = r.shutdown.cancelled() => {
                    let redirect = r.session.ctx().redirect.read().unwrap_or_else(|e| e.into_inner()).clone();
                    match redirect {
                        Some(frame) if r.session.shared().is_v2() => r.session.push_frame(frame),
                        _ => r.session.farewell(code::SHUTTING_DOWN, "the server is shutting down: reconnect to another node"),
                    }
                    return EndReason::Shutdown;
                }
                // (A connection that is not logged in has no sends in flight.)
                _ = sleep_until(deadline), if r.sends.in_flight() == 0 => {
                    // Pings do not keep a connection that never logs in.
                    let (idle_deadline, login_deadline) = deadlines(r, &tokens);
                    if login_deadline.is_some_and(|l| l <= idle_deadline) {
                        let text = format!(
                            "not logged in within {} s of connecting: log in (104) sooner",
                            r.session.ctx().settings().login_timeout.as_secs()
                        );
                        r.session.farewell(code::LOGIN_TIMEOUT, &text);
                        return EndReason::LoginTimeout;
                    }
                    r.session.farewell(code::IDLE_TIMEOUT, "idle timeout: no frame received; send a ping (id 1) at least every idle_timeout_s seconds");
                    return EndReason::Idle;
                }
                replies = std::future::poll_fn(|cx| r.sends.poll_next_done(cx)), if r.sends.in_flight() > 0 => {
                    if Box::pin(r.session.send_replies(replies)).await.is_err() {
                        return EndReason::ClosedByServer;
                    }
                    continue;
                }
                // Not `rd.readable()`: see the module documentation. This task is the only one
                // that reads the socket. A full pipeline stops reading: TCP pushes back on the
                // client.
                filled = std::future::poll_fn(|cx| r.rd.poll_fill(cx, &mut buf)), if !r.sends.is_full() => {
                    match filled {
                        Ok(eof) => eof,
                        Err(_) => return EndReason::ReadError,
                    }
                }
            };
            let mut codec = FrameCodec::new(r.session.ctx().settings().max_body);
            loop {
                let frame = match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(FrameError::Oversized { id, len, max }) => {
                        info!(
                            conn_id = r.session.shared().conn_id,
                            id, len, max, "oversized frame; closing"
                        );
                        r.session
                        .farewell(
                            code::FRAME_TOO_LARGE,
                            &format!("frame body of {len} bytes exceeds the limit of {max} bytes; the connection is closed"),
                        );
                        return EndReason::Oversized;
                    }
                    Err(_) => return EndReason::ReadError,
                };
                if let Some(wait) = tokens.take() {
                    // Flood control: stop reading (TCP pushes back on the client) until a token
                    // is available. Nothing is dropped. Boxed: a rare wait, and a large future.
                    let stop = Box::pin(async {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => None,
                            _ = r.session.shared().closing() => Some(EndReason::ClosedByServer),
                            _ = r.shutdown.cancelled() => Some(EndReason::Shutdown),
                        }
                    })
                    .await;
                    if let Some(reason) = stop {
                        return reason;
                    }
                }
                if r.session.can_pipeline(frame.id) {
                    if r.sends.is_full() {
                        // Boxed: a rare wait, and a large future.
                        let room = Box::pin(async {
                            while r.sends.is_full() {
                                let replies = r.sends.next_done().await;
                                r.session.send_replies(replies).await?;
                            }
                            Ok::<(), super::session::Closed>(())
                        })
                        .await;
                        if room.is_err() {
                            return EndReason::ClosedByServer;
                        }
                    }
                    r.session.start_send(&mut r.sends, frame);
                } else {
                    // Any other request sees the effects of the sends before it.
                    if r.sends.in_flight() > 0
                        && Box::pin(r.session.settle_sends(&mut r.sends))
                            .await
                            .is_err()
                    {
                        return EndReason::ClosedByServer;
                    }
                    // A reply is produced only when the queue has room for it: while it holds
                    // its share of unread replies, no request is handled and the socket is not
                    // read (TCP pushes back on the client). Boxed: a rare wait.
                    if !r.session.shared().outbox.has_reply_room()
                        && Box::pin(r.session.reply_room()).await.is_err()
                    {
                        return EndReason::ClosedByServer;
                    }
                    if Box::pin(r.session.handle(frame)).await.is_err() {
                        return EndReason::ClosedByServer;
                    }
                }
                handled = handled.wrapping_add(1);
                if handled.is_multiple_of(FRAMES_PER_YIELD) {
                    tokio::task::yield_now().await;
                }
            }
            if buf.is_empty() {
                // Release the buffer of an idle connection (it holds no partial frame).
                buf = BytesMut::new();
            }
            if eof {
                return if buf.is_empty() {
                    EndReason::ClientClosed
                } else {
                    EndReason::Truncated
                };
            }
        }
    }
}

/// Writes queued frames, many per `write` call, until the queue closes or the connection is
/// told to close. Returns what it wrote and what it had to leave unwritten.
// Not an `async fn`: that would keep its arguments twice in a future that lives as long as
// the connection.
#[allow(clippy::manual_async_fn)]
fn write_loop(
    mut wr: WriteSide,
    shared: Arc<ConnShared>,
    write_timeout: Duration,
) -> impl Future<Output = DeliveryOutcome> + Send + 'static {
    // Kept as milliseconds: four bytes, not sixteen, in a future that lives as long as the
    // connection (one tokio task cell size class down, 512 -> 384 bytes).
    let timeout_ms = u32::try_from(write_timeout.as_millis()).unwrap_or(u32::MAX);
    async move {
        let mut batch: Vec<u8> = Vec::new();
        let mut log = WrittenLog::default();
        // `Err` when a write was cut off (with the lowest log position of its batch, and when
        // it timed out the rest of the frame it stopped in): the stream may then end inside a
        // frame, so only that rest can be appended to it.
        let (failed_from, at_frame_boundary, rest) = {
            let ended: Result<(), (Option<Seq>, Option<bytes::Bytes>)> = loop {
                // A close request first, then frames (a graceful close, a drain, writes what
                // is queued, then ends). Register before looking at either.
                let taken = std::future::poll_fn(|cx| {
                    shared.outbox.register_writer(cx.waker());
                    if shared.is_closing() && !shared.closes_after_flush() {
                        return Poll::Ready(None);
                    }
                    shared.outbox.try_take_batch(&mut batch, WRITE_BATCH)
                });
                // Destructured at once: the lowest and highest log positions of the batch's
                // pushes (0 for none: log positions start at 1) and a lone frame (written as
                // it is, no copy) are what lives across the write, not a whole `Batch`; this is
                // the largest state of the writer's future.
                let Some(super::outbox::Batch {
                    min_seq,
                    max_seq: high,
                    single,
                }) = taken.await
                else {
                    break Ok(());
                };
                let low = min_seq.unwrap_or(0);
                let bytes: &[u8] = single.as_deref().unwrap_or(&batch);
                let mut done = 0;
                // Most writes are taken at once (the socket has room): no timer, no
                // allocation. Only a write the socket does not take at once waits, under the
                // write timeout, boxed: the timer is the largest state of the writer's future,
                // which lives as long as the connection.
                let written = match write_counted(&mut wr, bytes, &mut done).now_or_never() {
                    Some(result) => Ok(result),
                    None => {
                        Box::pin(tokio::time::timeout(
                            Duration::from_millis(u64::from(timeout_ms)),
                            write_counted(&mut wr, bytes, &mut done),
                        ))
                        .await
                    }
                };
                match written {
                    Ok(Ok(())) => {
                        if low > 0 {
                            log.record(low, high);
                        }
                        shared.written.fetch_max(high, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => {
                        shared.request_close(code::INTERNAL, "write failed");
                        break Err(((low > 0).then_some(low), None));
                    }
                    Err(_) => {
                        if shared.request_close(
                            code::SLOW_CONSUMER,
                            "slow consumer: the socket accepted nothing within the write timeout",
                        ) {
                            shared.outbox.budget().count_close(SlowClose::WriteTimeout);
                        }
                        // The rest of the frame the write stopped in, so that the reason can
                        // still follow at a frame boundary (best effort, see `say_goodbye`).
                        let rest = bytes::Bytes::copy_from_slice(frame_rest(bytes, done));
                        break Err(((low > 0).then_some(low), Some(rest)));
                    }
                }
                batch.clear();
                if shared.outbox.is_empty() || batch.capacity() > WRITE_BATCH * 2 {
                    // An idle connection keeps no write buffer.
                    batch = Vec::new();
                }
            };
            match ended {
                Ok(()) => (None, true, None),
                Err((from, rest)) => (from, false, rest),
            }
        };
        let mut outcome = DeliveryOutcome::default();
        // A client that closed cleanly after reading everything: its last writes are not
        // uncertain (boxed: a timer, at the end only).
        let all_read = failed_from.is_none()
            && log.has_uncertain()
            && Box::pin(wr.peer_read_everything(ACK_WAIT)).await;
        let (settled, uncertain) = if all_read {
            (log.written_high(), None)
        } else {
            log.finish()
        };
        outcome.written_upto = settled;
        outcome.unwritten_from = min_opt(failed_from, uncertain);
        // Whatever is still queued is never written: remember the lowest pushed message.
        outcome.unwritten_from = min_opt(outcome.unwritten_from, shared.outbox.abandon());
        // Boxed: the end exists only at the end, not for the whole life of the connection.
        Box::pin(say_goodbye(
            wr,
            &shared,
            at_frame_boundary,
            rest,
            Duration::from_millis(u64::from(timeout_ms)),
        ))
        .await;
        outcome
    }
}

/// Writes `bytes`, counting in `done` what the stream took (so that a write cut off by the
/// write timeout knows where it stopped), then flushes: TLS may keep the last records of a
/// write until then (a no-op on plain TCP).
async fn write_counted(wr: &mut WriteSide, bytes: &[u8], done: &mut usize) -> io::Result<()> {
    while *done < bytes.len() {
        match wr.write(&bytes[*done..]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => *done += n,
        }
    }
    wr.flush().await
}

/// What remains of the frame that a write of whole frames `bytes` stopped in after `done`
/// bytes (empty when it stopped at a frame boundary).
fn frame_rest(bytes: &[u8], done: usize) -> &[u8] {
    let mut start = 0;
    while start < bytes.len() {
        let end = FrameCodec::peek_header(&bytes[start..])
            .map_or(bytes.len(), |(_, len)| start + codec::HEADER_LEN + len)
            .min(bytes.len());
        if done < end {
            return if done <= start {
                &[]
            } else {
                &bytes[done..end]
            };
        }
        start = end;
    }
    &[]
}

/// The writer's last words: the reason of a close requested by the server (when the stream is
/// at a frame boundary, or can be brought to one by writing `rest`, the remainder of the frame
/// a timed-out write stopped in, and the socket takes it within the write timeout), then the
/// shutdown of the sending side.
async fn say_goodbye(
    mut wr: WriteSide,
    shared: &ConnShared,
    at_frame_boundary: bool,
    rest: Option<bytes::Bytes>,
    write_timeout: Duration,
) {
    let reachable = at_frame_boundary || rest.is_some();
    if let (Some(reason), true) = (shared.close_reason(), reachable) {
        // 99 is in the v1 id table.
        let body = serde_json::to_vec(&ErrorResp {
            code: reason.code,
            message: reason.message,
            reference: None,
        })
        .unwrap_or_default();
        let frame = codec::encode(ids::ERROR, &body);
        let _ = tokio::time::timeout(write_timeout, async {
            if let Some(rest) = rest {
                wr.write_all(&rest).await?;
            }
            wr.write_all(&frame).await?;
            wr.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
}

fn min_opt(a: Option<Seq>, b: Option<Seq>) -> Option<Seq> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Token bucket for inbound frames of one connection.
/// Token bucket of a connection's frames. `f32` on purpose: it lives in the reader's state
/// for the life of the connection, and a few digits of tokens are plenty.
struct RateLimiter {
    rate: f32,
    burst: f32,
    tokens: f32,
    /// When the last token was taken, i.e. when the last frame arrived.
    last: Instant,
}

impl RateLimiter {
    fn new(rate_per_sec: u32, burst: u32) -> Self {
        let burst = burst.max(1) as f32;
        RateLimiter {
            rate: rate_per_sec.max(1) as f32,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait first when the bucket is empty.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f32() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(
                f64::from(-self.tokens) / f64::from(self.rate),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_cut_frame_ends_at_its_boundary() {
        let mut bytes = codec::encode(7, b"abc").to_vec(); // 11 bytes
        bytes.extend_from_slice(&codec::encode(8, b"defgh")); // 13 more
        assert_eq!(frame_rest(&bytes, 0), b"");
        assert_eq!(frame_rest(&bytes, 9), b"bc");
        assert_eq!(frame_rest(&bytes, 11), b"", "at a boundary");
        assert_eq!(frame_rest(&bytes, 12).len(), 12);
        assert_eq!(frame_rest(&bytes, 24), b"");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_the_burst_then_spaces_frames() {
        let mut r = RateLimiter::new(10, 3);
        assert!(r.take().is_none());
        assert!(r.take().is_none());
        assert!(r.take().is_none());
        let wait = r.take().expect("bucket is empty");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.take().is_none());
    }
}
