//! Sends (208 direct, 310 group) of one connection, pipelined.
//!
//! A send waits for backend round trips: the recipient lookup or membership check, the
//! append to the log and its acknowledgement, the presence lookup and the bus publish for the
//! push. Handled strictly one after the other, a connection could not send more than one
//! message per sum of those round trips. So a logged-in connection keeps up to
//! [`MAX_IN_FLIGHT`] sends in flight, with three rules that keep the protocol's promises:
//!
//! - **Appends keep the connection's order.** Each send holds a [`Turns`]: it may check and
//!   resolve ahead, but appends only once the previous send's place in the log is fixed (or
//!   it failed): `ChatCore::place` returns then (the first phase of a two-phase append,
//!   `Store::place`), and the acknowledgements are awaited concurrently. Messages land in the
//!   log, and therefore in every history and sync, in the order the client sent them.
//! - **Pushes keep the connection's order.** The store may acknowledge a connection's appends
//!   out of order (the acknowledgements are awaited concurrently), so the pushes of a send,
//!   local ones and the hand-over to other nodes alike, wait for the previous send's pushes
//!   (a second chain of turns); the presence lookups before them overlap.
//! - **Replies keep the request order.** A send returns its reply frames ([`Replies`]) instead
//!   of queueing them; the reader queues them in request order.
//! - **Anything else is a barrier.** Every other request (history, group management, logout,
//!   sync…) waits until the sends before it are finished, so it sees their effects.
//!
//! Pushes of a send (to the recipient and the sender's other devices) go out as soon as its
//! append is acknowledged and the previous send's pushes are out, overlapping with the next
//! sends' appends.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::Serialize;
use tracing::debug;

use super::outbox::Outbound;
use super::{errors, ServerCtx};
use crate::core::model::{ConnId, StoredMessage};
use crate::core::service::{Committed, DirectInput, Prepared};
use crate::core::{ChatError, Me};
use crate::protocol::messages::{self as m, code, parse};
use crate::protocol::{codec, ids};

/// Sends one connection may have in flight. Past it, the reader stops reading the socket
/// until one finishes (TCP pushes back on the client).
pub const MAX_IN_FLIGHT: usize = 32;

pub(crate) const NOT_LOGGED_IN_V2: &str = "not logged in: log in (104) first";

/// Reply frames of one request, in order.
pub struct Replies {
    v2: bool,
    pub frames: Vec<Outbound>,
}

impl Replies {
    pub fn new(v2: bool) -> Self {
        Replies {
            v2,
            frames: Vec::new(),
        }
    }

    pub fn send<T: Serialize>(&mut self, id: u32, body: &T) {
        // v1 connections never get an id outside the original table (`docs/protocol.md` §3.2).
        if !self.v2 && !ids::is_v1(id) {
            return;
        }
        let json = serde_json::to_vec(body).expect("responses serialise");
        self.frames.push(Outbound {
            frame: codec::encode(id, &json),
            seq: 0,
        });
    }

    /// 99 error; `reference` is added for v2 connections.
    pub fn error(&mut self, request: u32, code: u32, message: impl Into<String>) {
        self.send(
            ids::ERROR,
            &m::ErrorResp::answering(request, self.v2, code, message),
        );
    }

    /// A failed send: 402 with a code for v2, 99 for v1.
    pub fn ack_error(&mut self, request: u32, client_msg_id: String, code: u32, message: String) {
        if self.v2 {
            self.send(
                ids::SEND_ACK,
                &m::SendAck {
                    client_msg_id,
                    code: Some(code),
                    message: Some(message),
                    ..Default::default()
                },
            );
        } else {
            self.error(request, code, message);
        }
    }

    /// A stored send: 402 for v2 (v1 has no acknowledgement).
    pub fn ack(&mut self, client_msg_id: String, msg: &StoredMessage) {
        if !self.v2 {
            return;
        }
        self.send(
            ids::SEND_ACK,
            &m::SendAck {
                client_msg_id,
                msg_id: Some(msg.msg_id.clone()),
                conv: Some(msg.conv.to_string()),
                seq: Some(msg.seq),
                timestamp: Some(msg.timestamp),
                code: Some(0),
                ..Default::default()
            },
        );
    }
}

/// A send's place in one of its connection's orders (see the module doc). Dropping it lets
/// the next send go, even when it never waited: a send refused early must not let the send
/// after it overtake the one before it, so a turn dropped before its time is only marked
/// abandoned and skipped when its time comes.
pub struct Turn {
    chain: Option<Arc<ChainState>>,
    ticket: u64,
}

#[derive(Default)]
struct ChainState {
    at: std::sync::Mutex<ChainAt>,
}

#[derive(Default)]
struct ChainAt {
    /// The ticket whose time it is.
    now: u64,
    /// Tickets dropped before their time.
    abandoned: std::collections::BTreeSet<u64>,
    /// Tickets waiting for their time. Only the one whose time comes is woken, so a chain
    /// of n sends costs n wake-ups, not n².
    waiting: HashMap<u64, Waker>,
}

impl Turn {
    /// A turn that waits for nobody.
    fn free() -> Self {
        Turn {
            chain: None,
            ticket: 0,
        }
    }

    /// Waits until every earlier turn of the chain is dropped.
    pub async fn wait(&mut self) {
        let Some(chain) = &self.chain else { return };
        let ticket = self.ticket;
        std::future::poll_fn(|cx| {
            let mut at = chain.at.lock().unwrap_or_else(|e| e.into_inner());
            if at.now == ticket {
                at.waiting.remove(&ticket);
                Poll::Ready(())
            } else {
                at.waiting.insert(ticket, cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(chain) = self.chain.take() else {
            return;
        };
        let mut at = chain.at.lock().unwrap_or_else(|e| e.into_inner());
        at.waiting.remove(&self.ticket);
        if at.now != self.ticket {
            at.abandoned.insert(self.ticket);
            return;
        }
        at.now += 1;
        loop {
            let next = at.now;
            if !at.abandoned.remove(&next) {
                break;
            }
            at.now += 1;
        }
        let next = at.now;
        let waker = at.waiting.remove(&next);
        drop(at);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A chain of turns: each new turn waits for the ones handed out before it.
#[derive(Default)]
struct Chain {
    /// Created with the first turn (an idle connection keeps nothing).
    state: Option<Arc<ChainState>>,
    issued: u64,
}

impl Chain {
    fn next(&mut self) -> Turn {
        let ticket = self.issued;
        self.issued += 1;
        Turn {
            chain: Some(self.state.get_or_insert_with(Default::default).clone()),
            ticket,
        }
    }
}

/// A send's turns: to append, then to hand the message to other nodes.
pub struct Turns {
    pub append: Turn,
    pub publish: Turn,
}

impl Turns {
    /// Turns that wait for nobody (a send handled on its own).
    pub fn first() -> Self {
        Turns {
            append: Turn::free(),
            publish: Turn::free(),
        }
    }
}

/// The sends a connection has in flight.
#[derive(Default)]
pub struct Pipeline {
    /// Created on the first send and dropped when the last one is done: an idle connection
    /// keeps one empty word here (this sits in the reader's state for the connection's life).
    inner: Option<Box<InFlight>>,
}

#[derive(Default)]
struct InFlight {
    jobs: FuturesOrdered<BoxFuture<'static, Replies>>,
    appends: Chain,
    publishes: Chain,
}

impl Pipeline {
    pub fn in_flight(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.jobs.len())
    }

    pub fn is_full(&self) -> bool {
        self.in_flight() >= MAX_IN_FLIGHT
    }

    /// Starts a send (`job` receives its turns).
    pub fn start(&mut self, job: impl FnOnce(Turns) -> BoxFuture<'static, Replies>) {
        let inner = self.inner.get_or_insert_with(Default::default);
        let turn = Turns {
            append: inner.appends.next(),
            publish: inner.publishes.next(),
        };
        inner.jobs.push_back(job(turn));
    }

    /// The replies of the oldest send, once it is finished; pending forever when nothing is
    /// in flight (use it in a `select!` guarded by `in_flight() > 0`).
    pub async fn next_done(&mut self) -> Replies {
        std::future::poll_fn(|cx| self.poll_next_done(cx)).await
    }

    /// [`Self::next_done`] as a poll function (a `select!` branch of two words).
    pub fn poll_next_done(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Replies> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        match inner.jobs.poll_next_unpin(cx) {
            Poll::Ready(Some(replies)) => {
                if inner.jobs.is_empty() {
                    // The chains start over with the next send.
                    self.inner = None;
                }
                Poll::Ready(replies)
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// 208: a direct message. `me` is `None` on a connection that is not logged in.
pub async fn direct(
    ctx: Arc<ServerCtx>,
    conn_id: ConnId,
    me: Option<Arc<Me>>,
    v2: bool,
    body: Bytes,
    turns: Turns,
) -> Replies {
    let mut r = Replies::new(v2);
    let Some((prepared, client_msg_id)) =
        prepare_direct(&ctx, conn_id, me.as_deref(), &body, &mut r).await
    else {
        return r;
    };
    match store_and_deliver(&ctx, conn_id, "direct", prepared, turns).await {
        Ok(committed) => r.ack(client_msg_id, &committed.appended.message),
        Err(e) => {
            ctx.metrics.message_failed("direct");
            let (c, text) = errors::code_and_text(&e);
            r.ack_error(ids::TEXT_MSG, client_msg_id, c, text);
        }
    }
    r
}

/// The part of a send after its checks, the same for 208 and 310 (`kind` names it in metrics
/// and logs): append in the connection's order, then push locally at once and hand the
/// message to other nodes, again in the connection's order.
async fn store_and_deliver(
    ctx: &ServerCtx,
    conn_id: ConnId,
    kind: &'static str,
    prepared: Prepared,
    turns: Turns,
) -> Result<Committed, ChatError> {
    let Turns {
        append: mut turn,
        publish: mut publish_turn,
    } = turns;
    turn.wait().await;
    let placed = ctx.core.place(prepared).await;
    // The next send of the connection may append now: this one's place in the log is fixed
    // (or it failed and took none).
    drop(turn);
    let committed = placed?.committed().await?;
    let appended = &committed.appended;
    ctx.metrics.message_stored(kind, appended.duplicate);
    debug!(
        conn_id,
        kind,
        msg_id = %appended.message.msg_id,
        seq = appended.message.seq,
        duplicate = appended.duplicate,
        "message stored"
    );
    let routed = ctx.core.route_delivery(&committed).await;
    publish_turn.wait().await;
    if let Some(routed) = routed {
        ctx.core.push_and_publish(routed).await;
    }
    Ok(committed)
}

/// Checks of a 208 in the original's order; `None` when `r` holds the refusal.
async fn prepare_direct(
    ctx: &ServerCtx,
    conn_id: ConnId,
    me: Option<&Me>,
    body: &[u8],
    r: &mut Replies,
) -> Option<(Prepared, String)> {
    let req: m::TextReq = match parse(body) {
        Ok(req) => req,
        Err(e) => {
            r.ack_error(ids::TEXT_MSG, String::new(), code::MALFORMED, e.to_string());
            return None;
        }
    };
    if let Some(sent_at) = &req.sent_at {
        if !m::is_rfc3339(sent_at) {
            r.ack_error(
                ids::TEXT_MSG,
                req.client_msg_id,
                code::MALFORMED,
                "malformed request: sent_at must be an RFC 3339 time".into(),
            );
            return None;
        }
    }
    let Some(me) = me else {
        r.ack_error(
            ids::TEXT_MSG,
            req.client_msg_id,
            code::NOT_LOGGED_IN,
            NOT_LOGGED_IN_V2.into(),
        );
        return None;
    };
    let client_msg_id = req.client_msg_id.clone();
    let input = DirectInput {
        to: req.to_user_id,
        content: req.content,
        msg_type: req.msg_type,
        sent_at: req.sent_at,
        client_msg_id: req.client_msg_id,
    };
    match ctx.core.prepare_direct(me, conn_id, input).await {
        Ok(p) => Some((p, client_msg_id)),
        Err(e) => {
            ctx.metrics.message_failed("direct");
            let (c, text) = errors::code_and_text(&e);
            r.ack_error(ids::TEXT_MSG, client_msg_id, c, text);
            None
        }
    }
}

/// 310: a group message. `me` is `None` on a connection that is not logged in.
pub async fn group(
    ctx: Arc<ServerCtx>,
    conn_id: ConnId,
    me: Option<Arc<Me>>,
    v2: bool,
    body: Bytes,
    turns: Turns,
) -> Replies {
    let mut r = Replies::new(v2);
    let Some((prepared, client_msg_id)) =
        prepare_group(&ctx, conn_id, me.as_deref(), &body, &mut r).await
    else {
        return r;
    };
    match store_and_deliver(&ctx, conn_id, "group", prepared, turns).await {
        Ok(committed) => {
            let message = &committed.appended.message;
            r.send(
                ids::GROUP_TEXT_ACK,
                &m::GroupTextAck {
                    msg_id: message.msg_id.clone(),
                    status: 0,
                    error: String::new(),
                },
            );
            r.ack(client_msg_id, message);
        }
        Err(e) => group_failure(&ctx, &mut r, client_msg_id, &e),
    }
    r
}

fn group_ack(status: u32, error: &str) -> m::GroupTextAck {
    m::GroupTextAck {
        msg_id: String::new(),
        status,
        error: error.into(),
    }
}

/// A refused or failed 310: the original's 311 with a status, then (v2) a 402 with a code.
fn group_failure(ctx: &ServerCtx, r: &mut Replies, client_msg_id: String, e: &ChatError) {
    ctx.metrics.message_failed("group");
    let (status, text) = match e {
        ChatError::NotMember => (3, "You are not a member of this group".to_string()),
        ChatError::Invalid(_) | ChatError::ClientMsgIdReused(_) => {
            (1, format!("Invalid request format: {}", errors::text(e)))
        }
        other => (2, format!("Failed to store the message: {other}")),
    };
    r.send(ids::GROUP_TEXT_ACK, &group_ack(status, &text));
    if r.v2 {
        let (c, t) = errors::code_and_text(e);
        r.ack_error(ids::GROUP_TEXT_REQ, client_msg_id, c, t);
    }
}

/// Checks of a 310 in the original's order; `None` when `r` holds the refusal.
async fn prepare_group(
    ctx: &ServerCtx,
    conn_id: ConnId,
    me: Option<&Me>,
    body: &[u8],
    r: &mut Replies,
) -> Option<(Prepared, String)> {
    let Some(me) = me else {
        // The original drops it silently; we answer with 99 (`docs/protocol.md` §6.4).
        r.error(ids::GROUP_TEXT_REQ, code::NOT_LOGGED_IN, NOT_LOGGED_IN_V2);
        return None;
    };
    let req: m::GroupTextReq = match parse(body) {
        Ok(req) => req,
        Err(e) => {
            r.send(ids::GROUP_TEXT_ACK, &group_ack(1, "Invalid request format"));
            if r.v2 {
                r.ack_error(
                    ids::GROUP_TEXT_REQ,
                    String::new(),
                    code::MALFORMED,
                    e.to_string(),
                );
            }
            return None;
        }
    };
    let client_msg_id = req.client_msg_id.clone();
    match ctx
        .core
        .prepare_group(me, conn_id, req.group_id, req.content, &req.client_msg_id)
        .await
    {
        Ok(p) => Some((p, client_msg_id)),
        Err(e) => {
            group_failure(ctx, r, client_msg_id, &e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Turns hand over in start order even when later sends are ready first.
    #[tokio::test]
    async fn appends_happen_in_start_order_and_replies_in_request_order() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut p = Pipeline::default();
        // Send 0 takes longest to prepare, send 2 is instant; both must still append in order.
        for (i, prep_ms) in [(0u32, 30u64), (1, 10), (2, 0)] {
            let order = order.clone();
            p.start(move |mut turns| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(prep_ms)).await;
                    turns.append.wait().await;
                    order.lock().unwrap().push(i);
                    drop(turns);
                    let mut r = Replies::new(true);
                    r.error(i, 0, format!("{i}"));
                    r
                })
            });
        }
        assert_eq!(p.in_flight(), 3);
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies.push(p.next_done().await.frames.len());
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(p.in_flight(), 0);
        assert!(p.inner.is_none());
    }

    /// A send that is refused before its append gives up its turn without waiting, and the
    /// send after it still cannot overtake the one before it.
    #[tokio::test]
    async fn a_refused_send_does_not_let_the_next_one_overtake() {
        let appended = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut p = Pipeline::default();
        {
            let (appended, seen) = (appended.clone(), seen.clone());
            p.start(move |mut turns| {
                Box::pin(async move {
                    turns.append.wait().await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    seen.lock()
                        .unwrap()
                        .push(appended.fetch_add(1, Ordering::SeqCst));
                    Replies::new(true)
                })
            });
        }
        // Refused at once: drops its turns without ever waiting, appends nothing.
        p.start(|turns| {
            Box::pin(async move {
                drop(turns);
                Replies::new(true)
            })
        });
        {
            let (appended, seen) = (appended.clone(), seen.clone());
            p.start(move |mut turns| {
                Box::pin(async move {
                    turns.append.wait().await;
                    seen.lock()
                        .unwrap()
                        .push(appended.fetch_add(1, Ordering::SeqCst) + 100);
                    Replies::new(true)
                })
            });
        }
        for _ in 0..3 {
            p.next_done().await;
        }
        assert_eq!(*seen.lock().unwrap(), vec![0, 101]);
    }
}
