//! A backend client's connection as the client's own events report it.
//!
//! Why: a request sent while the connection is down is queued by the client and answered only
//! when its request timeout runs out (seconds), and a health check that makes a round trip
//! notices an outage only as late. A [`Link`] follows the client's connect and disconnect
//! events instead, so that
//!
//! * a call made while the link is down waits at most [`Link::reconnect_wait`] for it to come
//!   back (a reconnect to another server of the cluster takes milliseconds), then fails with
//!   [`BackendError::Unavailable`] ("try again");
//! * a call under way when the link goes down fails at once instead of waiting for its timeout
//!   (its outcome is unknown: a retry with the same `client_msg_id` is recognised as a
//!   duplicate, see docs/architecture.md);
//! * readiness (`/ready`, the systemd status) follows the link within a moment of a loss or a
//!   recovery: [`Link::version`] changes with every change, and [`Link::changed`] wakes a
//!   waiter.
//!
//! [`Guarded`] puts a link in front of a [`Store`] and a [`Bus`] adapter, every call.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::core::model::*;
use crate::core::ports::*;

/// The connection state of one backend client.
#[derive(Debug)]
pub struct Link {
    backend: &'static str,
    up: watch::Sender<bool>,
    version: AtomicU64,
    reconnect_wait: Duration,
}

impl Link {
    /// A link that is down until the client reports its first connection.
    pub fn new(backend: &'static str, reconnect_wait: Duration) -> Arc<Link> {
        Arc::new(Link {
            backend,
            up: watch::Sender::new(false),
            version: AtomicU64::new(0),
            reconnect_wait,
        })
    }

    /// The client connected (`true`) or lost its connection (`false`).
    pub fn set(&self, up: bool) {
        let changed = self.up.send_if_modified(|now| {
            let changed = *now != up;
            *now = up;
            changed
        });
        if changed {
            self.version.fetch_add(1, Ordering::SeqCst);
            if up {
                tracing::info!(backend = self.backend, "connection to the backend is back");
            } else {
                tracing::warn!(
                    backend = self.backend,
                    "connection to the backend lost; reconnecting, and answering \"try again\" meanwhile"
                );
            }
        }
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// How long a call made while the link is down waits for it to come back.
    pub fn reconnect_wait(&self) -> Duration {
        self.reconnect_wait
    }

    /// Counts the link's changes: equal versions mean no change in between.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Returns at the link's next change.
    pub async fn changed(&self) {
        let mut rx = self.up.subscribe();
        // Never errs: `self` holds the sender.
        let _ = rx.changed().await;
    }

    /// Runs `call` while the link is up: see the module documentation.
    pub async fn run<T>(&self, call: impl Future<Output = BackendResult<T>>) -> BackendResult<T> {
        let mut rx = self.up.subscribe();
        if !*rx.borrow_and_update() {
            let back = tokio::time::timeout(self.reconnect_wait, rx.wait_for(|up| *up)).await;
            if !matches!(back, Ok(Ok(_))) {
                return Err(BackendError::unavailable(
                    self.backend,
                    format!(
                        "not connected (no connection within {:?}); reconnecting",
                        self.reconnect_wait
                    ),
                ));
            }
        }
        tokio::select! {
            // A call that finished is answered as it finished, even if the link went down
            // at the same moment.
            biased;
            result = call => result,
            _ = rx.wait_for(|up| !*up) => Err(BackendError::unavailable(
                self.backend,
                "the connection was lost during the request; its outcome is unknown",
            )),
        }
    }
}

/// A [`Store`] or [`Bus`] adapter whose every call goes through [`Link::run`].
pub struct Guarded<T: ?Sized> {
    inner: Arc<T>,
    link: Arc<Link>,
}

impl<T: ?Sized> Guarded<T> {
    pub fn new(inner: Arc<T>, link: Arc<Link>) -> Guarded<T> {
        Guarded { inner, link }
    }
}

macro_rules! g {
    ($self:ident, $call:expr) => {
        $self.link.run($call).await
    };
}

#[async_trait]
impl Store for Guarded<dyn Store> {
    async fn create_user(&self, user: NewUser) -> BackendResult<User> {
        g!(self, self.inner.create_user(user))
    }
    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        g!(self, self.inner.user_by_id(id))
    }
    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        g!(self, self.inner.user_by_uuid(uuid))
    }
    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        g!(self, self.inner.user_by_name(name))
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        g!(self, self.inner.users_by_ids(ids))
    }
    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        g!(self, self.inner.record_login(id, at))
    }
    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()> {
        g!(self, self.inner.revoke_token(id, token, now))
    }
    async fn create_group(&self, group: NewGroup) -> BackendResult<(Group, Member)> {
        g!(self, self.inner.create_group(group))
    }
    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        g!(self, self.inner.group(id))
    }
    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        g!(self, self.inner.groups_by_ids(ids))
    }
    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        g!(self, self.inner.update_group(id, patch))
    }
    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        g!(self, self.inner.add_member(group, user, role, at))
    }
    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        g!(self, self.inner.remove_member(group, user))
    }
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        g!(self, self.inner.set_role(group, user, role))
    }
    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        g!(self, self.inner.member(group, user))
    }
    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        g!(self, self.inner.members(group))
    }
    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        g!(self, self.inner.groups_of(user))
    }
    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        g!(self, self.inner.append(msg, dedupe))
    }
    /// The placement and the acknowledgement each go through the link.
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let ack = g!(self, self.inner.place(msg, dedupe))?;
        let link = self.link.clone();
        Ok(Box::pin(async move { link.run(ack).await }))
    }
    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        g!(self, self.inner.history(conv, before, limit))
    }
    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        g!(self, self.inner.after(conv, after, limit))
    }
    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        g!(self, self.inner.peers_of(user))
    }
    async fn log_tail(&self) -> BackendResult<Seq> {
        g!(self, self.inner.log_tail())
    }
    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        g!(self, self.inner.cursor(user))
    }
    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        g!(self, self.inner.advance_cursor(user, to))
    }
    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        g!(self, self.inner.mark_undelivered(user, seq))
    }
    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        g!(self, self.inner.settle_cursor(user, seen, to))
    }
    async fn health(&self) -> BackendResult<()> {
        g!(self, self.inner.health())
    }
}

#[async_trait]
impl Bus for Guarded<dyn Bus> {
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()> {
        g!(self, self.inner.attach(node_id, inbound))
    }
    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()> {
        g!(self, self.inner.publish_node(node_id, event))
    }
    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()> {
        g!(self, self.inner.publish_group(group, event))
    }
    async fn publish_all(&self, event: BusEvent) -> BackendResult<()> {
        g!(self, self.inner.publish_all(event))
    }
    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()> {
        g!(self, self.inner.subscribe_group(group))
    }
    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()> {
        g!(self, self.inner.unsubscribe_group(group))
    }
    /// Not through the link: closing must work while the connection is down.
    async fn close(&self) {
        self.inner.close().await
    }
    async fn health(&self) -> BackendResult<()> {
        g!(self, self.inner.health())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable<T>(r: BackendResult<T>) -> String {
        match r {
            Err(BackendError::Unavailable { detail, .. }) => detail,
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("expected Unavailable, got an answer"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_while_down_waits_for_the_link_then_gives_up() {
        let link = Link::new("nats", Duration::from_millis(250));
        let detail = unavailable(link.run(async { Ok(1) }).await);
        assert!(detail.contains("not connected"), "{detail}");

        // Back within the wait: the call runs.
        let back = {
            let link = link.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                link.set(true);
            }
        };
        let (answer, ()) = tokio::join!(link.run(async { Ok(2) }), back);
        assert_eq!(answer.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_under_way_fails_when_the_link_goes_down() {
        let link = Link::new("nats", Duration::from_millis(250));
        link.set(true);
        let lose = {
            let link = link.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                link.set(false);
            }
        };
        let never = std::future::pending::<BackendResult<()>>();
        let (answer, ()) = tokio::join!(link.run(never), lose);
        assert!(unavailable(answer).contains("lost during the request"));
    }

    #[tokio::test]
    async fn versions_count_changes_only() {
        let link = Link::new("nats", Duration::ZERO);
        let v0 = link.version();
        link.set(false);
        assert_eq!(link.version(), v0, "no change, same version");
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move { link.changed().await })
        };
        tokio::task::yield_now().await;
        link.set(true);
        waiter.await.unwrap();
        assert!(link.is_up());
        assert_eq!(link.version(), v0 + 1);
    }
}
