//! What reaches this node from the others, and the node's standing orders: events from the
//! bus are applied here (so every delivery rule lives in the core, once), the bus's group
//! subscriptions follow the groups this node has local members of, and the delivery cursors
//! of online users are saved periodically.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::model::GroupId;
use super::ports::{BusEvent, BusInbound};
use super::service::ChatCore;

#[async_trait]
impl BusInbound for ChatCore {
    /// A push that could not be handed to a connection that should have had it is recorded
    /// as undelivered, so the user's next login backlog includes it (the same rule as for
    /// this node's own sends).
    async fn deliver(&self, event: BusEvent) {
        let local = self.local();
        match event {
            BusEvent::Direct { message, users } => {
                for user in local.deliver_routed(&message, &users) {
                    self.mark_undelivered(user, message.seq).await;
                }
            }
            BusEvent::DirectAnywhere {
                message,
                users,
                origin_node,
            } => {
                if origin_node == self.node_id() {
                    return;
                }
                for user in local.deliver_direct(&message, &users, None) {
                    self.mark_undelivered(user, message.seq).await;
                }
            }
            BusEvent::Group {
                message,
                origin_node,
            } => {
                // The origin delivered it to its own connections before publishing.
                if origin_node == self.node_id() {
                    return;
                }
                for user in local.deliver_group(&message, None) {
                    self.mark_undelivered(user, message.seq).await;
                }
            }
            BusEvent::Kick { user, conn, reason } => local.kick(user, conn, &reason),
            BusEvent::AdminKick { user, conn, reason } => {
                let closed = local.close_by_admin(user, conn, &reason);
                if closed > 0 {
                    tracing::info!(user_id = user, conn_id = ?conn, closed, "sessions closed by an operator (admin API on another node)");
                }
            }
            BusEvent::Membership {
                user,
                group,
                joined,
            } => local.membership(user, group, joined),
        }
    }
}

impl ChatCore {
    /// Keeps the bus's group subscriptions equal to the groups this node has local members
    /// of, and expires the local index's tombstones. Runs until `shutdown`.
    pub async fn run_group_interest(self: Arc<Self>, shutdown: CancellationToken) {
        let local = self.local().clone();
        let bus = self.backends().bus.clone();
        let mut subscribed: HashSet<GroupId> = HashSet::new();
        let mut tick =
            tokio::time::interval(Duration::from_millis(500).min(local.tombstone_grace()));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = local.groups_changed().notified() => {}
                _ = tick.tick() => { local.expire_tombstones(); }
            }
            let wanted = local.active_groups();
            for g in wanted.difference(&subscribed).copied().collect::<Vec<_>>() {
                match bus.subscribe_group(g).await {
                    Ok(()) => {
                        subscribed.insert(g);
                    }
                    Err(e) => warn!(group = g, error = %e, "group subscribe failed; retrying"),
                }
            }
            for g in subscribed.difference(&wanted).copied().collect::<Vec<_>>() {
                match bus.unsubscribe_group(g).await {
                    Ok(()) => {
                        subscribed.remove(&g);
                    }
                    Err(e) => warn!(group = g, error = %e, "group unsubscribe failed; retrying"),
                }
            }
        }
        debug!("group interest task stopped");
    }

    /// Saves the delivery cursor of online users every `every`, so that a user's new device
    /// does not get, as login backlog, what the user's other devices already received.
    /// A position is saved one period after it was sampled: by then it lies outside the
    /// writer's uncertain window (it was written long enough ago).
    pub async fn flush_cursors(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            for (user, seq) in self.local().due_cursors() {
                if let Err(e) = self.backends().store.advance_cursor(user, seq).await {
                    debug!(user_id = user, error = %e, "cursor flush failed; retried at close");
                }
            }
        }
    }
}
