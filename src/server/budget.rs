//! The node's memory bound on write queues: every byte queued towards any connection of the
//! node is counted here ([`WriteBudget`]), and past `server.write_queue_budget` the
//! connections holding the most queued bytes are closed with a reason ([`enforce`]) until the
//! node is under it again.
//!
//! The per-connection bounds (`protocol.write_queue`, `protocol.write_queue_bytes`) live in
//! the outbox itself (`super::outbox`); this is the bound over all of them, for when many
//! connections fill their queues at once. The hot path is one atomic add when a frame is
//! queued and one atomic sub when the writer takes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::ServerCtx;
use crate::protocol::messages::code;

/// Why the server closed a connection whose client did not read (each one counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClose {
    /// A push found its write queue full (frames or bytes).
    PushFull,
    /// A reply waited for room in the write queue for the whole write timeout.
    ReplyWait,
    /// The socket accepted nothing for the whole write timeout.
    WriteTimeout,
    /// The node was over `server.write_queue_budget` and this connection held the most.
    NodeBudget,
}

impl SlowClose {
    pub const ALL: [SlowClose; 4] = [
        SlowClose::PushFull,
        SlowClose::ReplyWait,
        SlowClose::WriteTimeout,
        SlowClose::NodeBudget,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SlowClose::PushFull => "push_queue_full",
            SlowClose::ReplyWait => "reply_wait",
            SlowClose::WriteTimeout => "write_timeout",
            SlowClose::NodeBudget => "node_budget",
        }
    }
}

/// The bytes queued towards every connection of the node, their limit, and the closes of
/// connections that did not read.
pub struct WriteBudget {
    queued: AtomicU64,
    limit: AtomicU64,
    /// Notified when an addition takes `queued` past `limit`.
    over: Notify,
    closes: [AtomicU64; 4],
}

impl WriteBudget {
    pub fn new(limit: u64) -> Self {
        WriteBudget {
            queued: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            over: Notify::new(),
            closes: Default::default(),
        }
    }

    /// A budget that nothing enforces (tests of a lone outbox or hub).
    pub fn unlimited() -> Arc<Self> {
        Arc::new(Self::new(u64::MAX))
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        if self.queued() > limit {
            self.over.notify_one();
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes queued towards all connections (not yet taken by their writers).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether more bytes are queued than the limit.
    pub fn is_over(&self) -> bool {
        self.queued() > self.limit()
    }

    /// Counts `n` more bytes. Callers add under their queue's lock, before the writer can take
    /// (and `sub`) them, so the count never goes below zero.
    pub(super) fn add(&self, n: usize) {
        let now = self
            .queued
            .fetch_add(n as u64, Ordering::Relaxed)
            .wrapping_add(n as u64);
        if now > self.limit.load(Ordering::Relaxed) {
            self.over.notify_one();
        }
    }

    pub(super) fn sub(&self, n: usize) {
        self.queued.fetch_sub(n as u64, Ordering::Relaxed);
    }

    pub fn count_close(&self, why: SlowClose) {
        self.closes[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn closes(&self, why: SlowClose) -> u64 {
        self.closes[why as usize].load(Ordering::Relaxed)
    }
}

/// Shortest time between two passes of [`enforce`], so that a node that stays over its budget
/// (bytes queued towards connections it cannot close) is not scanned on every push.
const PASS_INTERVAL: Duration = Duration::from_millis(20);

/// The reason sent (99 code 9) to a connection closed for the node's budget.
pub const NODE_BUDGET_REASON: &str =
    "slow consumer: this node holds too much unread data and yours was among the most; reconnect and sync";

/// Keeps the node's queued bytes under `server.write_queue_budget`: whenever they pass it, the
/// logged-in connections holding the most queued bytes are closed with a reason (99 code 9) and
/// their queues dropped, largest first, until the total is under the budget again. Runs until
/// `shutdown`. (A reader that queues a reply past the budget runs [`enforce_once`] itself.)
pub async fn enforce(ctx: Arc<ServerCtx>, shutdown: CancellationToken) {
    let budget = ctx.budget.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = budget.over.notified() => {}
        }
        enforce_once(&ctx);
        if budget.is_over() {
            // Still over: what is queued is not the logged-in connections' (or they are
            // closing already). Look again a little later, not at every push.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
            }
        }
    }
}

/// One pass of [`enforce`]; returns how many connections it closed.
pub fn enforce_once(ctx: &ServerCtx) -> usize {
    let budget = &ctx.budget;
    let limit = budget.limit();
    if budget.queued() <= limit {
        return 0;
    }
    let mut conns: Vec<_> = ctx
        .hub
        .all_connections()
        .into_iter()
        .map(|c| (c.shared.outbox.queued_bytes(), c))
        .filter(|(bytes, c)| *bytes > 0 && !c.shared.is_closing())
        .collect();
    conns.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    let mut closed = 0;
    for (bytes, c) in conns {
        if budget.queued() <= limit {
            break;
        }
        warn!(
            conn_id = c.shared.conn_id,
            queued_bytes = bytes,
            node_queued_bytes = budget.queued(),
            limit,
            "node write-queue budget exceeded: closing the connection holding the most"
        );
        if c.shared
            .request_close(code::SLOW_CONSUMER, NODE_BUDGET_REASON)
        {
            budget.count_close(SlowClose::NodeBudget);
        }
        // What was queued is dropped now (the writer reports the lowest push dropped, so the
        // user gets it at the next login or sync), not when the writer gets to it.
        c.shared.outbox.abandon();
        closed += 1;
    }
    closed
}
