//! A store for tests that wraps another (the in-process one) and injects faults into its
//! appends: the message is stored, but its acknowledgement is lost or held back.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chat_zinx::core::model::*;
use chat_zinx::core::ports::{AppendAck, BackendError, BackendResult, Store};
use tokio::sync::oneshot;

enum Fault {
    /// The message is stored and the sender told that the store is unavailable (a JetStream
    /// acknowledgement that times out after the stream has the message).
    LoseAck,
    /// The message is stored; its acknowledgement waits until `release`.
    HoldAck {
        placed: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
}

/// See the module doc. Faults apply to the next append, one at a time.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    next: Mutex<Option<Fault>>,
}

/// An append whose acknowledgement is held: `placed` resolves once the message is stored,
/// `release` lets the acknowledgement through.
pub struct HeldAck {
    pub placed: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        FaultyStore {
            inner,
            next: Mutex::new(None),
        }
    }

    /// The next append is stored, and answered with `Unavailable`.
    pub fn lose_next_ack(&self) {
        *self.next.lock().unwrap() = Some(Fault::LoseAck);
    }

    /// The next append is stored, and its acknowledgement held until released.
    pub fn hold_next_ack(&self) -> HeldAck {
        let (placed_tx, placed) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.next.lock().unwrap() = Some(Fault::HoldAck {
            placed: placed_tx,
            release: release_rx,
        });
        HeldAck { placed, release }
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn create_user(&self, user: NewUser) -> BackendResult<User> {
        self.inner.create_user(user).await
    }
    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        self.inner.user_by_id(id).await
    }
    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        self.inner.user_by_uuid(uuid).await
    }
    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        self.inner.user_by_name(name).await
    }
    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        self.inner.users_by_ids(ids).await
    }
    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        self.inner.record_login(id, at).await
    }
    async fn revoke_token(&self, id: UserId, token: TokenId, now: i64) -> BackendResult<()> {
        self.inner.revoke_token(id, token, now).await
    }
    async fn create_group(&self, group: NewGroup) -> BackendResult<(Group, Member)> {
        self.inner.create_group(group).await
    }
    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        self.inner.group(id).await
    }
    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        self.inner.groups_by_ids(ids).await
    }
    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        self.inner.update_group(id, patch).await
    }
    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        self.inner.add_member(group, user, role, at).await
    }
    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        self.inner.remove_member(group, user).await
    }
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        self.inner.set_role(group, user, role).await
    }
    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        self.inner.member(group, user).await
    }
    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        self.inner.members(group).await
    }
    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        self.inner.groups_of(user).await
    }
    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        self.place(msg, dedupe).await?.await
    }
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let ack = self.inner.place(msg, dedupe).await?;
        let fault = self.next.lock().unwrap().take();
        match fault {
            None => Ok(ack),
            Some(Fault::LoseAck) => Ok(Box::pin(async move {
                ack.await?;
                Err(BackendError::unavailable(
                    "test store",
                    "the acknowledgement was lost",
                ))
            })),
            Some(Fault::HoldAck { placed, release }) => {
                let _ = placed.send(());
                Ok(Box::pin(async move {
                    let _ = release.await;
                    ack.await
                }))
            }
        }
    }
    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        self.inner.history(conv, before, limit).await
    }
    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        self.inner.after(conv, after, limit).await
    }
    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        self.inner.peers_of(user).await
    }
    async fn log_tail(&self) -> BackendResult<Seq> {
        self.inner.log_tail().await
    }
    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        self.inner.cursor(user).await
    }
    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        self.inner.advance_cursor(user, to).await
    }
    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        self.inner.mark_undelivered(user, seq).await
    }
    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        self.inner.settle_cursor(user, seen, to).await
    }
}
