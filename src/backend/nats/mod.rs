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
//!
//! The files: this one connects and holds the connection ([`Nats`]); `log` is the message
//! log (records, the two-phase append, reads by position); `buckets` the KV buckets; `store` the
//! [`Store`] port on both; `bus` the [`Bus`] port on core NATS.

mod buckets;
mod bus;
mod log;
mod store;

pub use bus::NatsBus;
pub use store::NatsStore;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use tokio::task::JoinHandle;

use super::link::Link;
use super::secret::Secret;
use crate::core::model::*;
use crate::core::ports::*;
use log::Appending;

const BACKEND: &str = "nats";

/// Any failure that is not a business answer: the caller may try again. The client's error
/// is the detail and is kept as the source.
fn unavailable<E>(e: E) -> BackendError
where
    E: std::error::Error + Send + Sync + 'static,
{
    BackendError::unavailable_from(BACKEND, e)
}

/// The same, in the words of `detail` (which includes the text of `e`), keeping `e` as the
/// source.
fn unavailable_with<E>(detail: String, e: E) -> BackendError
where
    E: std::error::Error + Send + Sync + 'static,
{
    BackendError::unavailable_with_source(BACKEND, detail, e)
}

/// The same, for a failure this code found itself (there is no error to keep).
fn unavailable_because(detail: impl Into<String>) -> BackendError {
    BackendError::unavailable(BACKEND, detail)
}

/// Whether a connection error is a failed TLS set-up or handshake (a certificate refused by
/// either side), which retrying does not cure.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    if e.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    let text = crate::core::error::chain(e).to_ascii_lowercase();
    ["certificate", "handshake", "tls"]
        .iter()
        .any(|w| text.contains(w))
}

/// Settings of the NATS backends (the composition root fills them from the `nats.*` keys).
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
    /// How long a request made while the connection is down waits for it to come back
    /// before it is answered "try again" (see [`crate::backend::link`]).
    pub reconnect_wait: Duration,
    /// How this node proves who it is (the secrets come from files the composition root read).
    pub auth: NatsAuth,
    /// TLS towards the servers (`tls://` URLs turn it on too).
    pub tls: NatsTls,
}

/// How a node authenticates to NATS: at most one way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server without authorization).
    #[default]
    None,
    /// The text of a credentials file: user JWT and NKey seed (`nats.creds_file`).
    Credentials(Secret),
    /// An NKey seed (`nats.nkey_file`).
    NKey(Secret),
    /// A user and its password (`nats.user`, `nats.password_file`).
    UserPassword { user: String, password: Secret },
    /// A token (`nats.token_file`).
    Token(Secret),
}

impl NatsAuth {
    /// The configuration keys of this way, for messages.
    fn keys(&self) -> &'static str {
        match self {
            NatsAuth::None => "no credentials (nats.creds_file, nats.nkey_file, nats.user with nats.password_file, or nats.token_file)",
            NatsAuth::Credentials(_) => "nats.creds_file",
            NatsAuth::NKey(_) => "nats.nkey_file",
            NatsAuth::UserPassword { .. } => "nats.user and nats.password_file",
            NatsAuth::Token(_) => "nats.token_file",
        }
    }
}

/// TLS towards NATS: the CA to trust (else the system's roots) and a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM file of the CA certificate(s); set = TLS required.
    pub ca_file: Option<PathBuf>,
    /// PEM files of this node's certificate (chain) and its key; set = TLS required.
    pub client_cert: Option<(PathBuf, PathBuf)>,
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
    /// The connection as the client's events report it.
    link: Arc<Link>,
}

const LAST_SEQ_CACHE: usize = 100_000;

/// How often the client pings the server; a silent connection is dropped after two pings
/// without an answer, so within about three intervals.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// The reconnect back-off grows by this per attempt up to [`RECONNECT_DELAY`].
const RECONNECT_STEP: Duration = Duration::from_millis(50);
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// How long a starting node waits for JetStream to create or open its log.
const JETSTREAM_READY_WAIT: Duration = Duration::from_secs(30);
pub(super) fn hex_key(s: &str) -> String {
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
            .map_err(|e| unavailable_with(format!("a URL of nats.url cannot be used: {e}"), e))?;
        let link = Link::new(BACKEND, settings.reconnect_wait);
        // A first attempt on its own, so that a refused secret or a failed TLS handshake stops
        // the start with its reason; servers that are not up yet are retried in the
        // background instead, as before.
        let client = match Self::options(settings, &link)?.connect(urls.clone()).await {
            Ok(client) => client,
            Err(e) => match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication => {
                    return Err(unavailable_with(
                        format!(
                            "NATS refused this node's credentials ({e}): check {} against the \
                             server's authorization (users, tokens, accounts)",
                            settings.auth.keys()
                        ),
                        e,
                    ))
                }
                // A refused certificate comes as an I/O error of the handshake.
                _ if is_tls_failure(&e) => {
                    return Err(unavailable_with(
                        format!(
                            "the TLS handshake with NATS failed ({e}): check nats.tls.ca_file \
                             (the CA that signed the servers' certificates), the host names \
                             of nats.url against the certificates, and nats.tls.cert_file and \
                             nats.tls.key_file when the servers verify clients"
                        ),
                        e,
                    ))
                }
                _ => {
                    tracing::warn!(error = %e, "cannot connect to NATS yet; retrying in the background");
                    Self::options(settings, &link)?
                        .retry_on_initial_connect()
                        .connect(urls)
                        .await
                        .map_err(unavailable)?
                }
            },
        };
        let js = jetstream::new(client.clone());
        let log_prefix = "cz.log".to_string();
        // A cluster that has just started has no JetStream leader for a moment (longer on a
        // busy machine): wait for it instead of failing the node's start.
        let deadline = tokio::time::Instant::now() + JETSTREAM_READY_WAIT;
        let (log, [users, groups, meta]) = loop {
            let opened = match Self::open_log(&js, settings, &log_prefix).await {
                // Created is not yet serving: a replicated stream or bucket answers reads
                // only once its own leader is elected, and a node that reported ready before
                // that answered its first requests "no responders".
                Ok(opened) => Self::answering(&opened.0, &opened.1, &log_prefix)
                    .await
                    .map(|()| opened),
                Err(e) => Err(e),
            };
            match opened {
                Ok(opened) => {
                    // The event may have come before the callback's task ran.
                    if client.connection_state() == async_nats::connection::State::Connected {
                        link.set(true);
                    }
                    break opened;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "JetStream cannot create, open or read the message log and buckets yet (a new cluster may still be electing its leaders); retrying");
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
            link,
        }))
    }

    /// The client's options: name, time limits, events into `link`, reconnects, credentials
    /// and TLS.
    fn options(
        settings: &NatsSettings,
        link: &Arc<Link>,
    ) -> Result<async_nats::ConnectOptions, BackendError> {
        let events = link.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name("chat-zinx")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(settings.request_timeout))
            .event_callback(move |event| {
                let link = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => link.set(true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            link.set(false)
                        }
                        _ => {}
                    }
                }
            })
            // Retry often: a node is ready again as soon as its connection is (the default
            // backs off to 4 s). An attempt on a loopback or LAN address costs next to nothing.
            .reconnect_delay_callback(|attempts| {
                RECONNECT_DELAY.min(RECONNECT_STEP * attempts as u32)
            })
            // A connection that went silent (no reset: a black-holed route) shows as lost
            // after two unanswered pings (the default interval is a minute).
            .ping_interval(PING_INTERVAL);
        options = match &settings.auth {
            NatsAuth::None => options,
            NatsAuth::Credentials(creds) => options.credentials(creds.expose()).map_err(|e| {
                unavailable_with(
                    format!(
                        "nats.creds_file is not a NATS credentials file ({e}): it holds a user \
                         JWT and an NKey seed, as `nsc generate creds` writes them"
                    ),
                    e,
                )
            })?,
            NatsAuth::NKey(seed) => options.nkey(seed.expose().to_string()),
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_string())
            }
            NatsAuth::Token(token) => options.token(token.expose().to_string()),
        };
        if let Some(ca) = &settings.tls.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &settings.tls.client_cert {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }

    /// The connection as the client's events report it (readiness and fail-fast follow it).
    pub fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Whether the log and every bucket answer a read (of something that does not exist:
    /// "not found" is an answer, "no responders" is not).
    async fn answering(
        log: &stream::Stream,
        buckets: &[kv::Store; 3],
        log_prefix: &str,
    ) -> Result<(), BackendError> {
        match log
            .direct_get_last_for_subject(format!("{log_prefix}.ready-probe"))
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {}
            Err(e) => {
                return Err(unavailable_with(
                    format!("the message log does not answer yet: {e}"),
                    e,
                ))
            }
        }
        for bucket in buckets {
            bucket.get("ready-probe").await.map_err(|e| {
                unavailable_with(format!("a KV bucket does not answer yet: {e}"), e)
            })?;
        }
        Ok(())
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

    pub(super) fn subject(&self, conv: ConvId) -> String {
        match conv {
            ConvId::Direct(a, b) => format!("{}.p.{a}.{b}", self.log_prefix),
            ConvId::Group(g) => format!("{}.g.{g}", self.log_prefix),
        }
    }

    pub(super) fn cached_last(&self, subject: &str) -> Option<Seq> {
        self.last_seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
            .copied()
    }

    pub(super) fn remember_last(&self, subject: &str, seq: Option<Seq>) {
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
