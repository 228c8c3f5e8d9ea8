//! NATS JetStream as the durable store and NATS as the cross-node bus.
//!
//! * **Message log**: one stream (file storage, replicas by config) with one subject per
//!   conversation (`cz.log.p.<a>.<b>`, `cz.log.g.<group>`). A message's position is its stream
//!   sequence. Every message carries the position of an earlier one of its conversation
//!   (`prev`): history pages walk those links backwards, O(page) direct gets, because
//!   JetStream cannot iterate backwards. A lone append is conditional
//!   (`Nats-Expected-Last-Subject-Sequence`), so its `prev` is exactly the message before it.
//!   Appends of this node to a conversation that already has one under way overlap instead
//!   (published in order, acks awaited concurrently) and cannot be conditional: their `prev`
//!   is the newest position known when they were published, and they say so (`gap`), so a
//!   history walk fills the gap forward with `next_by_subj`. A conditional append never has
//!   another one of its conversation published behind it on this node before it is done, so
//!   its retry (after another node appended) cannot reorder this node's messages. Reads
//!   forward (sync, backlog) use direct get `next_by_subj`, also O(page). Idempotent sends use
//!   `Nats-Msg-Id` within the stream's duplicate window.
//! * **Accounts, groups, memberships, counters, chat relations and delivery cursors**: KV
//!   buckets. Uniqueness through `create` (fails if the key exists) and every change through
//!   revision-checked `update`, so concurrent nodes never lose an update.
//! * **Bus**: core NATS subjects `cz.node.<node>` (events for one node) and `cz.group.<group>`
//!   (a node listens while it has a local online member). Not durable: the log is.
//!
//! Every error that is not a business answer maps to [`BackendError::Unavailable`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::core::model::*;
use crate::core::ports::*;

const BACKEND: &str = "nats";

/// Whether a publish was refused because the subject's last sequence was not the one the
/// `Nats-Expected-Last-Subject-Sequence` header named: another writer appended first.
///
/// The server says so in two ways. A stream with one replica answers error code 10071
/// ("wrong last sequence: N"); a replicated stream, where the check runs in the clustered
/// proposal path, answers 10164 ("wrong last sequence", no number). async-nats (0.46 to
/// 0.51 at least) classifies only 10071 as `WrongLastSequence` and reports 10164 as `Other`,
/// so the answer is recognised here by kind, by code and by description, whatever the
/// client version does.
fn is_wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    if e.kind() != PublishErrorKind::Other {
        return false;
    }
    let Some(source) = std::error::Error::source(e) else {
        return false;
    };
    match source.downcast_ref::<jetstream::Error>() {
        Some(api) => is_wrong_last_sequence_answer(api.error_code().0, &api.to_string()),
        None => is_wrong_last_sequence_answer(0, &source.to_string()),
    }
}

/// The JetStream API error codes that mean "wrong last sequence" (see
/// [`is_wrong_last_sequence`]), or a description that says so.
fn is_wrong_last_sequence_answer(code: u64, description: &str) -> bool {
    const STREAM_WRONG_LAST_SEQUENCE: u64 = 10071;
    const STREAM_WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    matches!(
        code,
        STREAM_WRONG_LAST_SEQUENCE | STREAM_WRONG_LAST_SEQUENCE_CONSTANT
    ) || description
        .to_ascii_lowercase()
        .starts_with("wrong last sequence")
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND,
        detail: e.to_string(),
    }
}

/// Settings of the NATS backends (from the `nats.*` configuration keys).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URLs, comma separated.
    pub url: String,
    /// Name of the message log stream; KV buckets are named after it.
    pub stream: String,
    /// Replicas of the stream and buckets (1 or 3).
    pub replicas: usize,
    /// Messages older than this are removed from the log (0 = kept forever).
    pub max_age: Duration,
    /// Window in which a retried send with the same `client_msg_id` is recognised.
    pub duplicate_window: Duration,
    /// Time limit of each request to NATS.
    pub request_timeout: Duration,
}

/// One NATS connection per node, shared by the store and the bus.
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    log: stream::Stream,
    log_prefix: String,
    users: kv::Store,
    groups: kv::Store,
    meta: kv::Store,
    /// Last known position per conversation subject (saves a read per append; a stale entry
    /// costs one retry).
    last_seq: Mutex<HashMap<String, Seq>>,
    /// Appends under way per conversation subject (entries exist only while some are).
    appending: Mutex<HashMap<String, Appending>>,
    /// Group subscriptions of the bus: group → task reading it.
    group_tasks: Mutex<HashMap<GroupId, JoinHandle<()>>>,
    node_task: Mutex<Option<JoinHandle<()>>>,
    inbound: Mutex<Option<Arc<dyn BusInbound>>>,
}

const LAST_SEQ_CACHE: usize = 100_000;

/// How long a starting node waits for JetStream to create or open its log.
const JETSTREAM_READY_WAIT: Duration = Duration::from_secs(30);

/// The stored form of a message in the log (its position is the stream sequence).
#[derive(Serialize, Deserialize)]
struct LogRecord {
    msg_id: String,
    sender_id: UserId,
    sender_uuid: String,
    sender_name: String,
    timestamp: UnixMs,
    body: MessageBody,
    /// Position of the previous message of the same conversation (0 = first); with `gap`,
    /// of an earlier one (messages of the conversation may lie between).
    prev: Seq,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gap: bool,
}

/// Where the message before a log record is, as the record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    prev: Seq,
    /// `prev` is a lower bound: the conversation may have messages between it and the record.
    gap: bool,
}

/// This node's appends to one conversation that are under way (see the module docs).
#[derive(Default)]
struct Appending {
    /// Appends admitted and not yet done.
    under_way: u32,
    /// Set while a conditional append is under way: every later one waits for it.
    conditional: Option<tokio_util::sync::CancellationToken>,
}

/// An admitted append; leaving it (done, failed or dropped) updates [`Appending`].
struct AppendSlot {
    nats: Arc<Nats>,
    subject: String,
    /// The token other appends wait on, for a conditional append.
    conditional: Option<tokio_util::sync::CancellationToken>,
}

impl Drop for AppendSlot {
    fn drop(&mut self) {
        let mut map = self
            .nats
            .appending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(a) = map.get_mut(&self.subject) {
            a.under_way = a.under_way.saturating_sub(1);
            if self.conditional.is_some() {
                a.conditional = None;
            }
            if a.under_way == 0 && a.conditional.is_none() {
                map.remove(&self.subject);
            }
        }
        drop(map);
        if let Some(done) = self.conditional.take() {
            done.cancel();
        }
    }
}

fn hex_key(s: &str) -> String {
    hex::encode(s.to_lowercase())
}

impl Nats {
    /// Connects (retrying in the background if the servers are not up yet) and creates or
    /// updates the stream and buckets.
    pub async fn connect(settings: &NatsSettings) -> Result<Arc<Nats>, BackendError> {
        let urls: Vec<async_nats::ServerAddr> = settings
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| unavailable(format!("bad nats.url {:?}: {e}", settings.url)))?;
        let client = async_nats::ConnectOptions::new()
            .name("chat-zinx")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(settings.request_timeout))
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .map_err(unavailable)?;
        let js = jetstream::new(client.clone());
        let log_prefix = "cz.log".to_string();
        // A cluster that has just started has no JetStream leader for a moment (longer on a
        // busy machine): wait for it instead of failing the node's start.
        let deadline = tokio::time::Instant::now() + JETSTREAM_READY_WAIT;
        let (log, [users, groups, meta]) = loop {
            match Self::open_log(&js, settings, &log_prefix).await {
                Ok(opened) => break opened,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "JetStream cannot create or open the message log yet (a new cluster may still be electing its leader); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Arc::new(Nats {
            client,
            js,
            log,
            log_prefix,
            users,
            groups,
            meta,
            last_seq: Mutex::new(HashMap::new()),
            appending: Mutex::new(HashMap::new()),
            group_tasks: Mutex::new(HashMap::new()),
            node_task: Mutex::new(None),
            inbound: Mutex::new(None),
        }))
    }

    /// Creates or updates the message log stream and the KV buckets (users, groups, meta).
    async fn open_log(
        js: &jetstream::Context,
        settings: &NatsSettings,
        log_prefix: &str,
    ) -> Result<(stream::Stream, [kv::Store; 3]), BackendError> {
        let storage = stream::StorageType::File;
        js.create_or_update_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{log_prefix}.>")],
            storage,
            num_replicas: settings.replicas,
            max_age: settings.max_age,
            duplicate_window: settings.duplicate_window,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
        let log = js.get_stream(&settings.stream).await.map_err(unavailable)?;
        let bucket = |suffix: &'static str| async move {
            let name = format!("{}_{suffix}", settings.stream);
            match js.get_key_value(name.clone()).await {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: name,
                        history: 1,
                        storage,
                        num_replicas: settings.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable),
            }
        };
        let stores = [
            bucket("users").await?,
            bucket("groups").await?,
            bucket("meta").await?,
        ];
        Ok((log, stores))
    }

    /// Whether the connection to NATS is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn subject(&self, conv: ConvId) -> String {
        match conv {
            ConvId::Direct(a, b) => format!("{}.p.{a}.{b}", self.log_prefix),
            ConvId::Group(g) => format!("{}.g.{g}", self.log_prefix),
        }
    }

    fn cached_last(&self, subject: &str) -> Option<Seq> {
        self.last_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
            .copied()
    }

    fn remember_last(&self, subject: &str, seq: Option<Seq>) {
        let mut m = self.last_seq.lock().unwrap_or_else(|e| e.into_inner());
        match seq {
            Some(s) => {
                if m.len() >= LAST_SEQ_CACHE {
                    m.clear();
                }
                // Acks of overlapping appends may be handled out of order: keep the newest.
                let last = m.entry(subject.to_string()).or_insert(s);
                *last = (*last).max(s);
            }
            None => {
                m.remove(subject);
            }
        }
    }

    /// Admits an append to `subject`: conditional (`true`) when no other append of this node
    /// to it is under way, else overlapping. An append that arrives while a conditional one
    /// is under way waits for it to be done, then overlaps (it is part of a burst).
    async fn admit(self: &Arc<Self>, subject: &str) -> (bool, AppendSlot) {
        let mut waited = false;
        loop {
            let wait = {
                let mut map = self.appending.lock().unwrap_or_else(|e| e.into_inner());
                let a = map.entry(subject.to_string()).or_default();
                match &a.conditional {
                    Some(done) => done.clone(),
                    None => {
                        a.under_way += 1;
                        let conditional = a.under_way == 1 && !waited;
                        let token = conditional.then(tokio_util::sync::CancellationToken::new);
                        a.conditional = token.clone();
                        return (
                            conditional,
                            AppendSlot {
                                nats: self.clone(),
                                subject: subject.to_string(),
                                conditional: token,
                            },
                        );
                    }
                }
            };
            wait.cancelled().await;
            waited = true;
        }
    }

    /// Publishes one attempt of an append (the record linking to `prev`, conditional on it
    /// when `conditional`), returning once the publish is on the connection.
    async fn publish_append(
        &self,
        subject: &str,
        msg: &NewMessage,
        dedupe: Option<&DedupeKey>,
        prev: Seq,
        conditional: bool,
    ) -> BackendResult<jetstream::context::PublishAckFuture> {
        let record = LogRecord {
            msg_id: msg.msg_id.clone(),
            sender_id: msg.sender_id,
            sender_uuid: msg.sender_uuid.clone(),
            sender_name: msg.sender_name.clone(),
            timestamp: msg.timestamp,
            body: msg.body.clone(),
            prev,
            gap: !conditional,
        };
        let mut headers = HeaderMap::new();
        if conditional {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                prev.to_string().as_str(),
            );
        }
        if let Some(key) = dedupe {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}:{}", key.sender_id, key.client_msg_id).as_str(),
            );
        }
        let payload = Bytes::from(serde_json::to_vec(&record).expect("serialises"));
        self.js
            .publish_with_headers(subject.to_string(), headers, payload)
            .await
            .map_err(unavailable)
    }

    /// The second phase of an append: awaits the stream's answer to the first attempt and,
    /// after a lost race (another node appended to the conversation first), reads the newest
    /// position and tries again.
    async fn finish_append(
        &self,
        subject: String,
        msg: NewMessage,
        dedupe: Option<DedupeKey>,
        mut prev: Seq,
        conditional: bool,
        first: jetstream::context::PublishAckFuture,
    ) -> BackendResult<Appended> {
        let mut pending = Some(first);
        for _ in 0..32 {
            let ack = match pending.take() {
                Some(fut) => fut.await,
                None => {
                    self.publish_append(&subject, &msg, dedupe.as_ref(), prev, conditional)
                        .await?
                        .await
                }
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    let m = self
                        .at(ack.sequence)
                        .await?
                        .ok_or_else(|| unavailable("the original of a duplicate is gone"))?;
                    let (message, _) = self.decode(&m)?;
                    return Ok(Appended {
                        message,
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    self.remember_last(&subject, Some(ack.sequence));
                    if prev == 0 {
                        if let ConvId::Direct(a, b) = msg.conv {
                            self.add_peer(a, b).await?;
                            if a != b {
                                self.add_peer(b, a).await?;
                            }
                        }
                    }
                    return Ok(Appended {
                        message: StoredMessage::from_new(msg, ack.sequence),
                        duplicate: false,
                    });
                }
                Err(e) if is_wrong_last_sequence(&e) => {
                    // Another node appended to this conversation: read its newest and retry.
                    // Nothing of this node is published behind a conditional append, so the
                    // retry keeps this node's order.
                    self.remember_last(&subject, None);
                    prev = self.last_of(&subject).await?.map_or(0, |m| m.sequence);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable(format!(
            "too much contention appending to {subject}"
        )))
    }

    /// The messages of `subject` strictly between positions `after` and `before`, oldest
    /// first (the gap before a record whose link says `gap`).
    async fn between(
        &self,
        subject: &str,
        after: Seq,
        before: Seq,
    ) -> BackendResult<Vec<(StoredMessage, Link)>> {
        let mut out = Vec::new();
        let mut from = after + 1;
        while from < before {
            let Some(m) = self.next_of(subject, from).await? else {
                break;
            };
            if m.sequence >= before {
                break;
            }
            from = m.sequence + 1;
            out.push(self.decode(&m)?);
        }
        Ok(out)
    }

    /// The newest message of a subject, if any.
    async fn last_of(&self, subject: &str) -> BackendResult<Option<StreamMessage>> {
        match self.log.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn next_of(&self, subject: &str, from: Seq) -> BackendResult<Option<StreamMessage>> {
        match self
            .log
            .direct_get_next_for_subject(subject, Some(from))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn at(&self, seq: Seq) -> BackendResult<Option<StreamMessage>> {
        match self.log.direct_get(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    // -- KV helpers --------------------------------------------------------------------------

    async fn kv_get<T: for<'de> Deserialize<'de>>(
        store: &kv::Store,
        key: &str,
    ) -> BackendResult<Option<(T, u64)>> {
        match store.entry(key).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let v = serde_json::from_slice(&e.value)
                    .map_err(|err| unavailable(format!("corrupt value at {key}: {err}")))?;
                Ok(Some((v, e.revision)))
            }
            _ => Ok(None),
        }
    }

    async fn kv_create<T: Serialize>(
        store: &kv::Store,
        key: &str,
        value: &T,
    ) -> BackendResult<bool> {
        let bytes = Bytes::from(serde_json::to_vec(value).expect("serialises"));
        match store.create(key, bytes).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn kv_put<T: Serialize>(store: &kv::Store, key: &str, value: &T) -> BackendResult<()> {
        let bytes = Bytes::from(serde_json::to_vec(value).expect("serialises"));
        store.put(key, bytes).await.map_err(unavailable)?;
        Ok(())
    }

    /// Read-modify-write with revision check, retried on conflict. `change` returns the new
    /// value, or `Err` to abort with that error; it sees `None` when the key does not exist.
    async fn kv_modify<T, F>(store: &kv::Store, key: &str, mut change: F) -> BackendResult<T>
    where
        T: Serialize + for<'de> Deserialize<'de>,
        F: FnMut(Option<T>) -> BackendResult<T>,
    {
        for _ in 0..64 {
            let current = Self::kv_get::<T>(store, key).await?;
            let revision = current.as_ref().map(|(_, r)| *r);
            let new = change(current.map(|(v, _)| v))?;
            let bytes = Bytes::from(serde_json::to_vec(&new).expect("serialises"));
            let written = match revision {
                Some(rev) => match store.update(key, bytes, rev).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(unavailable(e)),
                },
                None => match store.create(key, bytes).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(unavailable(e)),
                },
            };
            if written {
                return Ok(new);
            }
        }
        Err(unavailable(format!("too much contention on {key}")))
    }

    async fn next_counter(&self, name: &str) -> BackendResult<u64> {
        Self::kv_modify::<u64, _>(&self.meta, &format!("ctr.{name}"), |v| {
            Ok(v.unwrap_or(0) + 1)
        })
        .await
    }

    fn decode(&self, m: &StreamMessage) -> BackendResult<(StoredMessage, Link)> {
        let rec: LogRecord = serde_json::from_slice(&m.payload)
            .map_err(|e| unavailable(format!("corrupt log record {}: {e}", m.sequence)))?;
        let conv = self.conv_of(m.subject.as_str()).ok_or_else(|| {
            unavailable(format!(
                "log record {} has an unknown subject {}",
                m.sequence, m.subject
            ))
        })?;
        Ok((
            StoredMessage {
                seq: m.sequence,
                msg_id: rec.msg_id,
                conv,
                sender_id: rec.sender_id,
                sender_uuid: rec.sender_uuid,
                sender_name: rec.sender_name,
                timestamp: rec.timestamp,
                body: rec.body,
            },
            Link {
                prev: rec.prev,
                gap: rec.gap,
            },
        ))
    }

    fn conv_of(&self, subject: &str) -> Option<ConvId> {
        let rest = subject.strip_prefix(&self.log_prefix)?.strip_prefix('.')?;
        let parts: Vec<&str> = rest.split('.').collect();
        match parts.as_slice() {
            ["p", a, b] => Some(ConvId::direct(a.parse().ok()?, b.parse().ok()?)),
            ["g", g] => Some(ConvId::Group(g.parse().ok()?)),
            _ => None,
        }
    }

    async fn add_peer(&self, user: UserId, peer: UserId) -> BackendResult<()> {
        Self::kv_modify::<Vec<UserId>, _>(&self.meta, &format!("peers.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            if !list.contains(&peer) {
                list.push(peer);
            }
            Ok(list)
        })
        .await
        .map(|_| ())
    }

    async fn members_doc(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        Ok(
            Self::kv_get::<Vec<Member>>(&self.groups, &format!("m.{group}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn group_with_count(&self, id: GroupId) -> BackendResult<Option<Group>> {
        let Some((mut g, _)) = Self::kv_get::<Group>(&self.groups, &format!("g.{id}")).await?
        else {
            return Ok(None);
        };
        g.member_count = self.members_doc(id).await?.len() as u64;
        Ok(Some(g))
    }
}

/// The store on NATS JetStream.
pub struct NatsStore(pub Arc<Nats>);

#[async_trait]
impl Store for NatsStore {
    async fn create_user(&self, new: NewUser) -> BackendResult<User> {
        let n = &self.0;
        let name_key = format!("name.{}", hex_key(&new.username));
        if Nats::kv_get::<UserId>(&n.users, &name_key).await?.is_some() {
            return Err(BackendError::Conflict(Unique::Username));
        }
        let id = n.next_counter("user").await?;
        let user = User {
            id,
            uuid: new.uuid,
            username: new.username,
            email: new.email,
            avatar: String::new(),
            password_hash: new.password_hash,
            created_at: new.created_at,
            last_login: None,
        };
        // The record first, the unique name last: the name is the commit point.
        Nats::kv_put(&n.users, &format!("id.{id}"), &user).await?;
        Nats::kv_put(&n.users, &format!("uuid.{}", user.uuid.to_lowercase()), &id).await?;
        if !Nats::kv_create(&n.users, &name_key, &id).await? {
            let _ = n.users.delete(format!("id.{id}")).await;
            let _ = n
                .users
                .delete(format!("uuid.{}", user.uuid.to_lowercase()))
                .await;
            return Err(BackendError::Conflict(Unique::Username));
        }
        Ok(user)
    }

    async fn user_by_id(&self, id: UserId) -> BackendResult<Option<User>> {
        Ok(Nats::kv_get::<User>(&self.0.users, &format!("id.{id}"))
            .await?
            .map(|(u, _)| u))
    }

    async fn user_by_uuid(&self, uuid: &str) -> BackendResult<Option<User>> {
        if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Ok(None);
        }
        match Nats::kv_get::<UserId>(&self.0.users, &format!("uuid.{}", uuid.to_lowercase()))
            .await?
        {
            Some((id, _)) => self.user_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn user_by_name(&self, name: &str) -> BackendResult<Option<User>> {
        if name.is_empty() {
            return Ok(None);
        }
        match Nats::kv_get::<UserId>(&self.0.users, &format!("name.{}", hex_key(name))).await? {
            Some((id, _)) => self.user_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> BackendResult<Vec<User>> {
        let found = futures_util::future::join_all(ids.iter().map(|id| self.user_by_id(*id))).await;
        let mut out = Vec::with_capacity(ids.len());
        for u in found {
            if let Some(u) = u? {
                out.push(u);
            }
        }
        Ok(out)
    }

    async fn record_login(&self, id: UserId, at: UnixMs) -> BackendResult<Option<UnixMs>> {
        let mut previous = None;
        Nats::kv_modify::<User, _>(&self.0.users, &format!("id.{id}"), |u| {
            let mut u = u.ok_or(BackendError::NotFound(Missing::User))?;
            previous = u.last_login.replace(at);
            Ok(u)
        })
        .await?;
        Ok(previous)
    }

    async fn create_group(&self, new: NewGroup) -> BackendResult<(Group, Member)> {
        let n = &self.0;
        let name_key = format!("name.{}", hex_key(&new.name));
        if Nats::kv_get::<GroupId>(&n.groups, &name_key)
            .await?
            .is_some()
        {
            return Err(BackendError::Conflict(Unique::GroupName));
        }
        let id = n.next_counter("group").await?;
        let member = Member {
            member_id: n.next_counter("member").await?,
            group_id: id,
            user_id: new.owner_id,
            role: Role::Owner,
            joined_at: new.created_at,
        };
        let group = Group {
            id,
            name: new.name,
            owner_id: new.owner_id,
            description: new.description,
            avatar: new.avatar,
            member_count: 1,
            created_at: new.created_at,
            updated_at: new.created_at,
        };
        Nats::kv_put(&n.groups, &format!("g.{id}"), &group).await?;
        Nats::kv_put(&n.groups, &format!("m.{id}"), &vec![member.clone()]).await?;
        if !Nats::kv_create(&n.groups, &name_key, &id).await? {
            let _ = n.groups.delete(format!("g.{id}")).await;
            let _ = n.groups.delete(format!("m.{id}")).await;
            return Err(BackendError::Conflict(Unique::GroupName));
        }
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{}", new.owner_id), |v| {
            let mut list = v.unwrap_or_default();
            list.push(id);
            Ok(list)
        })
        .await?;
        Ok((group, member))
    }

    async fn group(&self, id: GroupId) -> BackendResult<Option<Group>> {
        self.0.group_with_count(id).await
    }

    async fn groups_by_ids(&self, ids: &[GroupId]) -> BackendResult<Vec<Group>> {
        let found =
            futures_util::future::join_all(ids.iter().map(|id| self.0.group_with_count(*id))).await;
        let mut out = Vec::new();
        for g in found {
            if let Some(g) = g? {
                out.push(g);
            }
        }
        Ok(out)
    }

    async fn update_group(&self, id: GroupId, patch: GroupPatch) -> BackendResult<Group> {
        let n = &self.0;
        let (current, _) = Nats::kv_get::<Group>(&n.groups, &format!("g.{id}"))
            .await?
            .ok_or(BackendError::NotFound(Missing::Group))?;
        let mut renamed = None;
        if let Some(name) = &patch.name {
            if name.to_lowercase() != current.name.to_lowercase() {
                let key = format!("name.{}", hex_key(name));
                if !Nats::kv_create(&n.groups, &key, &id).await? {
                    return Err(BackendError::Conflict(Unique::GroupName));
                }
                renamed = Some(format!("name.{}", hex_key(&current.name)));
            }
        }
        let mut g = Nats::kv_modify::<Group, _>(&n.groups, &format!("g.{id}"), |g| {
            let mut g = g.ok_or(BackendError::NotFound(Missing::Group))?;
            if let Some(v) = &patch.name {
                g.name = v.clone();
            }
            if let Some(v) = &patch.description {
                g.description = v.clone();
            }
            if let Some(v) = &patch.avatar {
                g.avatar = v.clone();
            }
            g.updated_at = now_ms();
            Ok(g)
        })
        .await?;
        if let Some(old) = renamed {
            let _ = n.groups.delete(old).await;
        }
        g.member_count = n.members_doc(id).await?.len() as u64;
        Ok(g)
    }

    async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        at: UnixMs,
    ) -> BackendResult<Member> {
        let n = &self.0;
        if Nats::kv_get::<Group>(&n.groups, &format!("g.{group}"))
            .await?
            .is_none()
        {
            return Err(BackendError::NotFound(Missing::Group));
        }
        let member_id = n.next_counter("member").await?;
        let member = Member {
            member_id,
            group_id: group,
            user_id: user,
            role,
            joined_at: at,
        };
        Nats::kv_modify::<Vec<Member>, _>(&n.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            if list.iter().any(|m| m.user_id == user) {
                return Err(BackendError::Conflict(Unique::Membership));
            }
            list.push(member.clone());
            Ok(list)
        })
        .await?;
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            if !list.contains(&group) {
                list.push(group);
            }
            Ok(list)
        })
        .await?;
        Ok(member)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> BackendResult<()> {
        let n = &self.0;
        Nats::kv_modify::<Vec<Member>, _>(&n.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            let before = list.len();
            list.retain(|m| m.user_id != user);
            if list.len() == before {
                return Err(BackendError::NotFound(Missing::Membership));
            }
            Ok(list)
        })
        .await?;
        Nats::kv_modify::<Vec<GroupId>, _>(&n.groups, &format!("ug.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            list.retain(|g| *g != group);
            Ok(list)
        })
        .await?;
        Ok(())
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> BackendResult<()> {
        Nats::kv_modify::<Vec<Member>, _>(&self.0.groups, &format!("m.{group}"), |v| {
            let mut list = v.unwrap_or_default();
            let m = list
                .iter_mut()
                .find(|m| m.user_id == user)
                .ok_or(BackendError::NotFound(Missing::Membership))?;
            m.role = role;
            Ok(list)
        })
        .await?;
        Ok(())
    }

    async fn member(&self, group: GroupId, user: UserId) -> BackendResult<Option<Member>> {
        Ok(self
            .0
            .members_doc(group)
            .await?
            .into_iter()
            .find(|m| m.user_id == user))
    }

    async fn members(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        self.0.members_doc(group).await
    }

    async fn groups_of(&self, user: UserId) -> BackendResult<Vec<GroupId>> {
        Ok(
            Nats::kv_get::<Vec<GroupId>>(&self.0.groups, &format!("ug.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn append(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<Appended> {
        self.place(msg, dedupe).await?.await
    }

    /// Publishes the message and returns once the publish is on the connection, in order
    /// behind this node's earlier appends: its place in the log is fixed then. The returned
    /// acknowledgement awaits the stream's answer and retries a lost race (another node
    /// appended to the conversation first); nothing of this node is published behind a
    /// conditional append until it is done, so the retry cannot reorder this node's messages.
    async fn place(&self, msg: NewMessage, dedupe: Option<DedupeKey>) -> BackendResult<AppendAck> {
        let n = self.0.clone();
        let subject = n.subject(msg.conv);
        let (conditional, slot) = n.admit(&subject).await;
        let prev = match n.cached_last(&subject) {
            Some(s) => s,
            None => n.last_of(&subject).await?.map_or(0, |m| m.sequence),
        };
        let first = n
            .publish_append(&subject, &msg, dedupe.as_ref(), prev, conditional)
            .await?;
        Ok(Box::pin(async move {
            // Held until the append is done: later appends to the conversation see it.
            let _slot = slot;
            n.finish_append(subject, msg, dedupe, prev, conditional, first)
                .await
        }))
    }

    async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: usize,
    ) -> BackendResult<HistoryPage> {
        let n = &self.0;
        let subject = n.subject(conv);
        // Messages fetched ahead (a gap filled forward), oldest first, and the position to
        // follow once they are used up (0: none).
        let mut ahead: Vec<(StoredMessage, Link)> = Vec::new();
        let mut next: Seq;
        // Start: the newest message strictly before `before`.
        let boundary = match before {
            None => None,
            Some(b) => n.next_of(&subject, b).await?,
        };
        match boundary {
            // The first message at or after `before` links to those before it.
            Some(m) => {
                let seq = m.sequence;
                let (_, link) = n.decode(&m)?;
                next = link.prev;
                if link.gap {
                    ahead = n.between(&subject, link.prev, seq).await?;
                }
            }
            // No cursor, or nothing at or after it: the newest message is before it.
            None => match n.last_of(&subject).await? {
                Some(m) => next = m.sequence,
                None => return Ok(HistoryPage::default()),
            },
        }
        let mut page = HistoryPage::default();
        while page.messages.len() < limit {
            let message = match ahead.pop() {
                // Fetched ahead: `next` already points below the whole gap.
                Some((message, _)) => message,
                None => {
                    if next == 0 {
                        break;
                    }
                    let Some(m) = n.at(next).await? else { break };
                    let (message, link) = n.decode(&m)?;
                    // What is before this one: its link, or its gap filled forward.
                    next = link.prev;
                    if link.gap {
                        ahead = n.between(&subject, link.prev, message.seq).await?;
                    }
                    message
                }
            };
            page.messages.push(message);
        }
        page.has_more = !ahead.is_empty() || (next != 0 && n.at(next).await?.is_some());
        Ok(page)
    }

    async fn after(
        &self,
        conv: ConvId,
        after: Seq,
        limit: usize,
    ) -> BackendResult<Vec<StoredMessage>> {
        let n = &self.0;
        let subject = n.subject(conv);
        let mut out = Vec::new();
        let mut from = after + 1;
        while out.len() < limit {
            let Some(m) = n.next_of(&subject, from).await? else {
                break;
            };
            from = m.sequence + 1;
            out.push(n.decode(&m)?.0);
        }
        Ok(out)
    }

    async fn peers_of(&self, user: UserId) -> BackendResult<Vec<UserId>> {
        Ok(
            Nats::kv_get::<Vec<UserId>>(&self.0.meta, &format!("peers.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn log_tail(&self) -> BackendResult<Seq> {
        let info = self.0.log.get_info().await.map_err(unavailable)?;
        Ok(info.state.last_sequence)
    }

    async fn cursor(&self, user: UserId) -> BackendResult<DeliveryCursor> {
        Ok(
            Nats::kv_get::<DeliveryCursor>(&self.0.meta, &format!("cur.{user}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    async fn advance_cursor(&self, user: UserId, to: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().advanced(to))
        })
        .await
        .map(|_| ())
    }

    async fn mark_undelivered(&self, user: UserId, seq: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().marked(seq))
        })
        .await
        .map(|_| ())
    }

    async fn health(&self) -> BackendResult<()> {
        // A round trip to the stream: proves the connection and that JetStream answers.
        self.0.log.get_info().await.map_err(unavailable)?;
        Ok(())
    }

    async fn settle_cursor(&self, user: UserId, seen: Option<Seq>, to: Seq) -> BackendResult<()> {
        Nats::kv_modify::<DeliveryCursor, _>(&self.0.meta, &format!("cur.{user}"), |c| {
            Ok(c.unwrap_or_default().settled(seen, to))
        })
        .await
        .map(|_| ())
    }
}

/// The bus on core NATS.
pub struct NatsBus(pub Arc<Nats>);

fn node_subject(node: &str) -> String {
    format!("cz.node.{node}")
}

fn group_subject(group: GroupId) -> String {
    format!("cz.group.{group}")
}

/// Reads one subscription and hands its events to the node, until the subscription ends.
async fn pump(mut sub: async_nats::Subscriber, inbound: Arc<dyn BusInbound>) {
    while let Some(msg) = sub.next().await {
        match serde_json::from_slice::<BusEvent>(&msg.payload) {
            Ok(event) => inbound.deliver(event).await,
            Err(e) => warn!(subject = %msg.subject, error = %e, "undecodable bus event dropped"),
        }
    }
    debug!("bus subscription ended");
}

#[async_trait]
impl Bus for NatsBus {
    async fn attach(&self, node_id: &str, inbound: Arc<dyn BusInbound>) -> BackendResult<()> {
        let sub = self
            .0
            .client
            .subscribe(node_subject(node_id))
            .await
            .map_err(unavailable)?;
        *self.0.inbound.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbound.clone());
        let task = tokio::spawn(pump(sub, inbound));
        if let Some(old) = self
            .0
            .node_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
        Ok(())
    }

    async fn publish_node(&self, node_id: &str, event: BusEvent) -> BackendResult<()> {
        let payload = Bytes::from(serde_json::to_vec(&event).expect("serialises"));
        self.0
            .client
            .publish(node_subject(node_id), payload)
            .await
            .map_err(unavailable)
    }

    async fn publish_group(&self, group: GroupId, event: BusEvent) -> BackendResult<()> {
        let payload = Bytes::from(serde_json::to_vec(&event).expect("serialises"));
        self.0
            .client
            .publish(group_subject(group), payload)
            .await
            .map_err(unavailable)
    }

    async fn subscribe_group(&self, group: GroupId) -> BackendResult<()> {
        let inbound = self
            .0
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| unavailable("the bus is not attached yet"))?;
        let sub = self
            .0
            .client
            .subscribe(group_subject(group))
            .await
            .map_err(unavailable)?;
        let task = tokio::spawn(pump(sub, inbound));
        if let Some(old) = self
            .0
            .group_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, task)
        {
            old.abort();
        }
        Ok(())
    }

    async fn health(&self) -> BackendResult<()> {
        if self.0.is_connected() {
            Ok(())
        } else {
            Err(unavailable(
                "not connected to any NATS server; reconnecting",
            ))
        }
    }

    async fn close(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut groups = self.0.group_tasks.lock().unwrap_or_else(|e| e.into_inner());
            let mut all: Vec<JoinHandle<()>> = groups.drain().map(|(_, t)| t).collect();
            all.extend(
                self.0
                    .node_task
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            all
        };
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        *self.0.inbound.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn unsubscribe_group(&self, group: GroupId) -> BackendResult<()> {
        if let Some(task) = self
            .0
            .group_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
        {
            // Dropping the subscriber with the task unsubscribes.
            task.abort();
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for (_, t) in self
            .group_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            t.abort();
        }
        if let Some(t) = self
            .node_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::context::{PublishError, PublishErrorKind};

    fn refused(answer: &str) -> PublishError {
        let api: jetstream::Error = serde_json::from_str(answer).expect("an API error");
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn every_wrong_last_sequence_answer_is_recognised() {
        // One replica: the client classifies it itself.
        assert!(is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
        // Three replicas: the clustered answer, which the client reports as `Other`.
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10164,"description":"wrong last sequence"}"#
        )));
        // The single-server answer arriving as `Other` (another client version).
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10071,"description":"wrong last sequence: 12"}"#
        )));
        // A code this build does not know, recognised by its description.
        assert!(is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":19999,"description":"wrong last sequence"}"#
        )));
    }

    #[test]
    fn other_refusals_are_not_taken_for_a_lost_race() {
        assert!(!is_wrong_last_sequence(&refused(
            r#"{"code":503,"err_code":10077,"description":"error saving message"}"#
        )));
        assert!(!is_wrong_last_sequence(&refused(
            r#"{"code":400,"err_code":10070,"description":"wrong last msg ID: x"}"#
        )));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::TimedOut
        )));
        assert!(!is_wrong_last_sequence(&PublishError::new(
            PublishErrorKind::Other
        )));
    }
}
