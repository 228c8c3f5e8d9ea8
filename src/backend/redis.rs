//! Redis as the cluster-wide presence: which user has a session on which node.
//!
//! Presence is **not** on the durable path. When Redis is down every call returns
//! [`BackendError::Unavailable`] (`backend: "redis"`) within [`PresenceOptions::command_timeout`]
//! (at once while the client knows it is disconnected), the chat goes on, and the client
//! reconnects forever with a capped exponential backoff. Whatever Redis lost comes back by
//! itself: the node's refresh task ([`RedisPresence::run_refresh`]) re-writes every session this
//! node holds once per [`PresenceOptions::refresh_interval`].
//!
//! # Data model
//!
//! * `cz:p:{<user id>}` — a hash per user: field `<node id>/<connection id>`, value the JSON of
//!   the [`SessionInfo`] plus `expires_at` (Unix ms). The braces are a Redis Cluster hash tag:
//!   every key of a user lives in one slot.
//! * `cz:nodes` — a hash: field `<node id>`, value `{"connections": n, "expires_at": ms}`,
//!   written by each node's refresh (per-node connection counts).
//!
//! # Expiry
//!
//! Redis before 7.4 cannot expire single hash fields, so expiry has two parts:
//!
//! 1. **Entries carry `expires_at`** (the writer's clock + `presence_ttl`) and readers ignore an
//!    entry whose `expires_at` has passed. A node that dies stops rewriting its entries, so they
//!    are ignored at most `presence_ttl` after its last refresh, without its help.
//! 2. **Every write also sets the key's TTL** to `presence_ttl` (`PEXPIRE`), so a user's hash
//!    disappears from Redis once no live node has written to it for `presence_ttl`. Every
//!    writer sets the same TTL at its write time, so the key lives at least as long as its
//!    newest entry. Ignored (stale) fields of a dead node can stay in a hash while another
//!    node keeps that hash alive; they are a few bytes each and vanish with the key.
//!
//! The refresh interval must stay well below the TTL (the configuration allows at most half)
//! so that one slow or failed refresh does not hide live sessions. Node clocks are assumed to
//! agree to well within `presence_ttl - refresh_interval` (NTP).
//!
//! A session is first recorded in this node's local copy, then written to Redis; the local copy
//! is what the refresh rewrites. So a `register` that fails because Redis is down still
//! becomes visible at the first refresh after Redis returns, and an `unregister` takes the
//! session out of the local copy first, so the refresh cannot bring it back.
//!
//! # URLs
//!
//! The URL selects the deployment (parsed by `fred`):
//!
//! * single server: `redis://[[user]:password@]host[:port][/db]`, TLS `rediss://…`,
//!   Unix socket `redis+unix:///path/to/redis.sock` (also written `unix:///path`);
//! * Sentinel: `redis-sentinel://[[user]:password@]sentinel1[:26379][/db]?sentinelServiceName=<master>&node=sentinel2:26379&node=…`
//!   (TLS: `rediss-sentinel://`);
//! * Cluster: `redis-cluster://[[user]:password@]node1:port?node=node2:port&node=…`
//!   (TLS: `rediss-cluster://`); the nodes are seeds, the topology is discovered.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Pipeline;
use fred::prelude::{
    Builder, Client, ClientLike, ClientState, Config as FredConfig, ConnectionConfig,
    Error as FredError, EventInterface, HashesInterface, KeysInterface, PerformanceConfig,
    ReconnectPolicy, Server, TcpConfig, Value,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::ConnectHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::secret::{tls_client_config, Secret};
use crate::core::model::*;
use crate::core::ports::*;

const BACKEND: &str = "redis";

/// Users read or written per pipeline (one round trip each).
const PIPELINE_CHUNK: usize = 1000;
/// Commands the client queues at most while it waits for the connection (bounded queue).
const COMMAND_QUEUE: usize = 50_000;
/// Reconnect backoff: from 100 ms, doubling, capped at 1 s, forever. Capped low because the
/// node rewrites its sessions on the reconnect: presence is whole again within about a second
/// of Redis answering. An attempt costs one TCP connect.
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 1_000;
/// A connection that leaves a command unanswered this long is closed and reconnected.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(10);

/// Settings of Redis presence (the composition root fills them from the `redis.*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceOptions {
    /// How long an entry counts after it was last written.
    pub presence_ttl: Duration,
    /// How often the refresh task rewrites this node's sessions (well below `presence_ttl`).
    pub refresh_interval: Duration,
    /// Time limit of each call to Redis (and of the first connection in `connect`).
    pub command_timeout: Duration,
    /// Prefix of every key (`cz` → `cz:p:{42}`, `cz:nodes`).
    pub key_prefix: String,
}

impl Default for PresenceOptions {
    /// The defaults of the `redis.*` keys (a test of the composition root keeps them equal).
    fn default() -> Self {
        PresenceOptions {
            presence_ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            key_prefix: "cz".into(),
        }
    }
}

/// How this node authenticates to Redis and whom it trusts over TLS (the composition root
/// fills it from `redis.username`, `redis.password_file` and `redis.tls.ca_file`). Unset parts
/// keep what the URL says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisAccess {
    /// ACL user (`AUTH user password`); `None` = the URL's, else the `default` user.
    pub username: Option<String>,
    /// The password, read from its file.
    pub password: Option<Secret>,
    /// PEM file of the CA certificate(s) Redis's certificate must chain to (`rediss://` only);
    /// `None` = the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// What is stored per session.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    session: SessionInfo,
    expires_at: UnixMs,
}

/// What is stored per node.
#[derive(Debug, Serialize, Deserialize)]
struct NodeEntry {
    connections: u64,
    expires_at: UnixMs,
}

/// What the local copy keeps of one of this node's sessions (the user, the connection and the
/// node are in the key or known): a few dozen bytes per connection, where a per-user
/// `BTreeMap<ConnId, SessionInfo>` allocated a ~900-byte tree node for every logged-in user.
#[derive(Debug)]
struct LocalSession {
    device: Box<str>,
    since: UnixMs,
}

/// This node's sessions: (user, connection) → session.
type Local = HashMap<(UserId, ConnId), LocalSession>;

/// Presence in Redis, one client (one connection per Redis server) per node.
pub struct RedisPresence {
    client: Client,
    node_id: String,
    options: PresenceOptions,
    /// For messages: the URL without its password.
    shown_url: String,
    local: Mutex<Local>,
    /// The client's connection task (fred's), owned here: ended by `close` or on drop.
    connection: Mutex<Option<ConnectHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// URL schemes `redis.url` may use.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-sentinel",
    "rediss-sentinel",
    "redis-cluster",
    "rediss-cluster",
    "redis+unix",
    "unix",
];

/// Why a URL cannot be used; the message says what a valid one looks like.
fn bad_url(shown: &str, why: impl std::fmt::Display) -> String {
    format!(
        "cannot use redis.url {shown}: {why}; expected redis://host:port, rediss://, \
         redis-sentinel://host:26379?sentinelServiceName=NAME, redis-cluster://host:port?node=host2:port \
         or redis+unix:///path"
    )
}

/// `redis://:secret@host` → `redis://:***@host`, for messages and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".into(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Whether a connection error is Redis refusing the credentials (`WRONGPASS`, `NOAUTH`,
/// a password sent to a server that has none).
fn refused_credentials(why: &str) -> bool {
    let upper = why.to_ascii_uppercase();
    [
        "WRONGPASS",
        "NOAUTH",
        "NOPERM",
        "INVALID USERNAME-PASSWORD",
        "AUTH",
    ]
    .iter()
    .any(|w| upper.contains(w))
}

/// Whether a connection error is a failed TLS handshake.
fn tls_failed(why: &str) -> bool {
    let lower = why.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer"]
        .iter()
        .any(|w| lower.contains(w))
}

/// The `fred` configuration of a URL (`unix://` is accepted for `redis+unix://`).
pub fn parse_url(url: &str) -> Result<FredConfig, BackendError> {
    let shown = redact(url);
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !scheme.is_some_and(|s| SCHEMES.contains(&s.as_str())) {
        return Err(BackendError::unavailable(
            BACKEND,
            bad_url(&shown, "unknown scheme"),
        ));
    }
    let normalized = match url.strip_prefix("unix://") {
        Some(path) => format!("redis+unix://{path}"),
        None => url.to_string(),
    };
    let mut config = FredConfig::from_url(&normalized)
        .map_err(|e| BackendError::unavailable_with_source(BACKEND, bad_url(&shown, &e), e))?;
    // Run the reconnect policy for the first connection too: `connect` bounds the wait itself.
    config.fail_fast = false;
    Ok(config)
}

impl RedisPresence {
    /// Connects to Redis at `url` (single server, Sentinel or Cluster: see the module docs) as
    /// node `node_id`, waiting at most `options.command_timeout` (at least 1 s) for the first
    /// connection. Afterwards the client reconnects by itself, forever, with backoff.
    ///
    /// Errors: an unusable URL, or Redis not reachable in time (`Unavailable`, saying so).
    pub async fn connect(
        url: &str,
        node_id: &str,
        options: PresenceOptions,
    ) -> Result<RedisPresence, BackendError> {
        Self::connect_with(url, node_id, options, &RedisAccess::default()).await
    }

    /// [`RedisPresence::connect`] with credentials and a CA of its own (`access`). A refused
    /// password or a failed TLS handshake fails here, saying so.
    pub async fn connect_with(
        url: &str,
        node_id: &str,
        options: PresenceOptions,
        access: &RedisAccess,
    ) -> Result<RedisPresence, BackendError> {
        let shown_url = redact(url);
        let mut config = parse_url(url)?;
        if let Some(user) = &access.username {
            config.username = Some(user.clone());
        }
        if let Some(password) = &access.password {
            config.password = Some(password.expose().to_string());
        }
        if let Some(ca) = &access.ca_file {
            if config.tls.is_none() {
                return Err(BackendError::unavailable(
                    BACKEND,
                    format!(
                        "redis.tls.ca_file is set but redis.url {shown_url} is not a TLS URL: \
                         use rediss:// (or rediss-sentinel://, rediss-cluster://)"
                    ),
                ));
            }
            let tls = tls_client_config("redis.tls.ca_file", ca)
                .map_err(|e| BackendError::unavailable_with_source(BACKEND, e.to_string(), e))?;
            config.tls = Some(tls.into());
        }
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                RECONNECT_MIN_MS,
                RECONNECT_MAX_MS,
                2,
            ))
            .set_performance_config(PerformanceConfig {
                default_command_timeout: options.command_timeout,
                ..Default::default()
            })
            .set_connection_config(ConnectionConfig {
                connection_timeout: options.command_timeout.max(Duration::from_secs(1)),
                internal_command_timeout: options.command_timeout.max(Duration::from_secs(1)),
                max_command_buffer_len: COMMAND_QUEUE,
                // A call that met a broken connection fails (the caller sees Unavailable, the
                // refresh rewrites); it is not replayed later on the new connection.
                max_command_attempts: 1,
                unresponsive: UnresponsiveConfig {
                    max_timeout: Some(UNRESPONSIVE_AFTER),
                    interval: Duration::from_secs(1),
                },
                tcp: TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                },
                ..Default::default()
            });
        let client = builder.build().map_err(|e| {
            BackendError::unavailable_with_source(BACKEND, bad_url(&shown_url, &e), e)
        })?;
        // The client retries a refused connection by itself: its errors say why it was.
        let mut errors = client.error_rx();
        let handle = client.connect();
        let wait = options.command_timeout.max(Duration::from_secs(1));
        let first = tokio::time::timeout(wait, client.wait_for_connect()).await;
        let failure = match first {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((e.to_string(), Some(e))),
            Err(_) => {
                let mut last = None;
                while let Ok((e, _)) = errors.try_recv() {
                    last = Some(e);
                }
                match last {
                    Some(e) => Some((format!("{e} (no connection within {wait:?})"), Some(e))),
                    None => Some((format!("no connection within {wait:?}"), None)),
                }
            }
        };
        if let Some((why, source)) = failure {
            // Never connected: ending the connection task ends the client.
            handle.abort();
            let detail = if refused_credentials(&why) {
                format!(
                    "Redis at {shown_url} refused this node's credentials ({why}): check \
                     redis.username and redis.password_file against the server's ACL users"
                )
            } else if tls_failed(&why) {
                format!(
                    "the TLS handshake with Redis at {shown_url} failed ({why}): check \
                     redis.tls.ca_file (the CA that signed the server's certificate) and the \
                     host name of redis.url against the certificate"
                )
            } else {
                format!(
                    "cannot connect to redis at {shown_url}: {why}; check redis.url and that Redis is running and reachable"
                )
            };
            return Err(match source {
                Some(e) => BackendError::unavailable_with_source(BACKEND, detail, e),
                None => BackendError::unavailable(BACKEND, detail),
            });
        }
        info!(url = %shown_url, node_id, "connected to redis for presence");
        Ok(RedisPresence {
            client,
            node_id: node_id.to_string(),
            options,
            shown_url,
            local: Mutex::new(HashMap::new()),
            connection: Mutex::new(Some(handle)),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn options(&self) -> &PresenceOptions {
        &self.options
    }

    /// Whether the client has its connection(s) to Redis now (for health reports).
    pub fn is_connected(&self) -> bool {
        self.client.state() == ClientState::Connected
    }

    /// Sessions of this node as known locally (what the refresh writes).
    pub fn local_sessions(&self) -> usize {
        lock(&self.local).len()
    }

    /// A local copy grouped by user (users in id order, each user's sessions in connection
    /// order), as the `SessionInfo`s that are written to Redis.
    fn by_user(&self, local: &Local) -> Vec<(UserId, Vec<SessionInfo>)> {
        let mut all: Vec<(&(UserId, ConnId), &LocalSession)> = local.iter().collect();
        all.sort_unstable_by_key(|&(&key, _)| key);
        let mut out: Vec<(UserId, Vec<SessionInfo>)> = Vec::new();
        for (&(user, conn), s) in all {
            let info = SessionInfo {
                user_id: user,
                node_id: self.node_id.clone(),
                conn_id: conn,
                device: s.device.to_string(),
                since: s.since,
            };
            match out.last_mut() {
                Some((u, sessions)) if *u == user => sessions.push(info),
                _ => out.push((user, vec![info])),
            }
        }
        out
    }

    /// Rewrites this node's sessions every `refresh_interval` until `shutdown`, so that they
    /// stay alive and come back after Redis lost them. Failures are logged (once per outage)
    /// and retried at the next tick. Spawn it on the node's task tracker.
    pub async fn run_refresh(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.options.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A reconnection (Redis may have come back empty) refreshes at once.
        let mut reconnects = Some(self.client.reconnect_rx());
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                event = recv_reconnect(&mut reconnects) => {
                    if event.is_none() {
                        continue;
                    }
                    debug!("reconnected to redis: refreshing presence now");
                }
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.refresh() => r,
            };
            match result {
                Ok(n) if failing => {
                    failing = false;
                    info!(sessions = n, "redis presence is written again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "cannot refresh presence in redis; this node's users look offline to other nodes until it succeeds (retrying every {:?})", self.options.refresh_interval);
                }
                Err(e) => debug!(error = %e, "presence refresh failed again"),
            }
        }
    }

    /// One refresh: rewrites every local session with a new expiry, this node's connection
    /// count, and drops long-expired node entries. Returns the number of sessions written.
    pub async fn refresh(&self) -> BackendResult<usize> {
        self.ensure_connected()?;
        let snapshot = self.by_user(&lock(&self.local));
        let ttl = self.ttl_ms();
        let now = now_ms();
        let expires_at = now + ttl;
        let mut written = 0;
        for chunk in snapshot.chunks(PIPELINE_CHUNK) {
            let pipe = self.client.pipeline();
            for (user, sessions) in chunk {
                let fields: Vec<(String, String)> = sessions
                    .iter()
                    .map(|s| (field(&s.node_id, s.conn_id), entry_json(s, expires_at)))
                    .collect();
                written += fields.len();
                let key = self.user_key(*user);
                let _: () = pipe.hset(&key, fields).await.map_err(|e| self.error(e))?;
                let _: () = pipe
                    .pexpire(&key, ttl, None)
                    .await
                    .map_err(|e| self.error(e))?;
            }
            self.run(pipe).await?;
        }
        // Sessions that were unregistered while the writes above ran may have been written
        // again after their HDEL: delete them once more (this HDEL follows that HSET).
        let gone: Vec<(UserId, String)> = {
            let local = lock(&self.local);
            snapshot
                .iter()
                .flat_map(|(u, sessions)| sessions.iter().map(move |s| (*u, s)))
                .filter(|(u, s)| !local.contains_key(&(*u, s.conn_id)))
                .map(|(u, s)| (u, field(&s.node_id, s.conn_id)))
                .collect()
        };
        if !gone.is_empty() {
            let pipe = self.client.pipeline();
            for (user, f) in &gone {
                let _: () = pipe
                    .hdel(self.user_key(*user), f.as_str())
                    .await
                    .map_err(|e| self.error(e))?;
            }
            self.run(pipe).await?;
        }
        self.write_node_entry(expires_at, now).await?;
        Ok(written)
    }

    /// This node's connection count, and pruning of node entries expired for a whole extra
    /// TTL (their nodes are gone; a fresher write would have replaced them).
    async fn write_node_entry(&self, expires_at: UnixMs, now: UnixMs) -> BackendResult<()> {
        let key = self.nodes_key();
        let connections = self.local_sessions() as u64;
        let value = serde_json::to_string(&NodeEntry {
            connections,
            expires_at,
        })
        .unwrap_or_default();
        let entries = self.read_nodes().await?;
        let long_gone: Vec<String> = entries
            .into_iter()
            .filter(|(node, e)| *node != self.node_id && e.expires_at + self.ttl_ms() < now)
            .map(|(node, _)| node)
            .collect();
        let pipe = self.client.pipeline();
        let _: () = pipe
            .hset(&key, (self.node_id.as_str(), value))
            .await
            .map_err(|e| self.error(e))?;
        if !long_gone.is_empty() {
            let _: () = pipe
                .hdel(&key, long_gone)
                .await
                .map_err(|e| self.error(e))?;
        }
        let _: () = pipe
            .pexpire(&key, self.ttl_ms(), None)
            .await
            .map_err(|e| self.error(e))?;
        self.run(pipe).await?;
        Ok(())
    }

    async fn read_nodes(&self) -> BackendResult<Vec<(String, NodeEntry)>> {
        let raw: HashMap<String, String> =
            self.bounded(self.client.hgetall(self.nodes_key())).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(node, json)| Some((node, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// Connection counts of the live nodes (as of their last refresh).
    pub async fn node_connections(&self) -> BackendResult<HashMap<String, u64>> {
        self.ensure_connected()?;
        let now = now_ms();
        Ok(self
            .read_nodes()
            .await?
            .into_iter()
            .filter(|(_, e)| e.expires_at > now)
            .map(|(node, e)| (node, e.connections))
            .collect())
    }

    /// Removes this node's sessions and node entry from Redis and forgets them locally (for
    /// a graceful shutdown; a crashed node's entries expire instead).
    pub async fn deregister_node(&self) -> BackendResult<()> {
        let taken: Local = std::mem::take(&mut *lock(&self.local));
        let local = self.by_user(&taken);
        self.ensure_connected()?;
        let users: Vec<(UserId, Vec<String>)> = local
            .into_iter()
            .map(|(u, sessions)| {
                let fields = sessions
                    .iter()
                    .map(|s| field(&self.node_id, s.conn_id))
                    .collect();
                (u, fields)
            })
            .collect();
        for chunk in users.chunks(PIPELINE_CHUNK) {
            let pipe = self.client.pipeline();
            for (user, fields) in chunk {
                let _: () = pipe
                    .hdel(self.user_key(*user), fields.clone())
                    .await
                    .map_err(|e| self.error(e))?;
            }
            self.run(pipe).await?;
        }
        let _: Value = self
            .bounded(self.client.hdel(self.nodes_key(), self.node_id.as_str()))
            .await?;
        Ok(())
    }

    /// Closes the connection and ends the client's task (bounded by `command_timeout`).
    pub async fn close(&self) {
        let wait = self.options.command_timeout.max(Duration::from_secs(1));
        let _ = tokio::time::timeout(wait, self.client.quit()).await;
        let handle = lock(&self.connection).take();
        if let Some(mut handle) = handle {
            if tokio::time::timeout(wait, &mut handle).await.is_err() {
                handle.abort();
            }
        }
    }

    // -- helpers ---------------------------------------------------------------------------

    fn user_key(&self, user: UserId) -> String {
        format!("{}:p:{{{user}}}", self.options.key_prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.options.key_prefix)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.options.presence_ttl.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// Fails at once while the client knows it has no connection (it reconnects meanwhile).
    fn ensure_connected(&self) -> BackendResult<()> {
        match self.client.state() {
            ClientState::Connected => Ok(()),
            state => Err(BackendError::unavailable(
                BACKEND,
                format!(
                    "not connected to {} ({state:?}; reconnecting in the background)",
                    self.shown_url
                ),
            )),
        }
    }

    fn error(&self, e: FredError) -> BackendError {
        let detail = format!("{} at {}", e, self.shown_url);
        BackendError::unavailable_with_source(BACKEND, detail, e)
    }

    /// Sends a pipeline (one round trip) within the `command_timeout` limit: one answer per
    /// command, or the first error.
    async fn run(&self, pipe: Pipeline<Client>) -> BackendResult<Vec<Value>> {
        let answers = self
            .bounded(async { Ok(pipe.try_all::<Value>().await) })
            .await?;
        answers
            .into_iter()
            .map(|a| a.map_err(|e| self.error(e)))
            .collect()
    }

    /// Runs one Redis call with the `command_timeout` limit.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, FredError>>,
    ) -> BackendResult<T> {
        match tokio::time::timeout(self.options.command_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(e)),
            Err(_) => Err(BackendError::unavailable(
                BACKEND,
                format!(
                    "no answer from {} within {:?}",
                    self.shown_url, self.options.command_timeout
                ),
            )),
        }
    }
}

/// The next reconnection event; `None` (once) when the client's event channel closed, after
/// which it waits forever (the tick goes on).
async fn recv_reconnect(rx: &mut Option<broadcast::Receiver<Server>>) -> Option<()> {
    let Some(receiver) = rx else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Some(()),
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            None
        }
    }
}

fn field(node: &str, conn: ConnId) -> String {
    format!("{node}/{conn}")
}

fn entry_json(session: &SessionInfo, expires_at: UnixMs) -> String {
    serde_json::to_string(&Entry {
        session: session.clone(),
        expires_at,
    })
    .unwrap_or_default()
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        // Not closed: end the connection task (the client is unusable without its owner).
        if let Some(handle) = lock(&self.connection).take() {
            handle.abort();
        }
    }
}

#[async_trait]
impl Presence for RedisPresence {
    /// Records the session locally (the refresh keeps it alive from then on), then writes it.
    /// `Unavailable` when Redis is down: the session becomes visible at the first refresh
    /// after Redis returns.
    async fn register(&self, session: SessionInfo) -> BackendResult<()> {
        if session.node_id == self.node_id {
            lock(&self.local).insert(
                (session.user_id, session.conn_id),
                LocalSession {
                    device: session.device.as_str().into(),
                    since: session.since,
                },
            );
        }
        self.ensure_connected()?;
        let key = self.user_key(session.user_id);
        let ttl = self.ttl_ms();
        let value = entry_json(&session, now_ms() + ttl);
        let pipe = self.client.pipeline();
        let _: () = pipe
            .hset(&key, (field(&session.node_id, session.conn_id), value))
            .await
            .map_err(|e| self.error(e))?;
        let _: () = pipe
            .pexpire(&key, ttl, None)
            .await
            .map_err(|e| self.error(e))?;
        self.run(pipe).await?;
        Ok(())
    }

    async fn unregister(&self, user: UserId, node_id: &str, conn: ConnId) -> BackendResult<()> {
        if node_id == self.node_id {
            lock(&self.local).remove(&(user, conn));
        }
        self.ensure_connected()?;
        let _: Value = self
            .bounded(self.client.hdel(self.user_key(user), field(node_id, conn)))
            .await?;
        Ok(())
    }

    /// One pipeline (one round trip) of `HGETALL` per `PIPELINE_CHUNK` users; expired
    /// entries are left out; oldest session first per user; users without a session are absent.
    async fn sessions(&self, users: &[UserId]) -> BackendResult<HashMap<UserId, Vec<SessionInfo>>> {
        let mut seen = HashSet::new();
        let users: Vec<UserId> = users.iter().copied().filter(|u| seen.insert(*u)).collect();
        let mut out = HashMap::new();
        if users.is_empty() {
            return Ok(out);
        }
        self.ensure_connected()?;
        for chunk in users.chunks(PIPELINE_CHUNK) {
            let pipe = self.client.pipeline();
            for user in chunk {
                let _: () = pipe
                    .hgetall(self.user_key(*user))
                    .await
                    .map_err(|e| self.error(e))?;
            }
            let answers = self.run(pipe).await?;
            let now = now_ms();
            for (user, answer) in chunk.iter().zip(answers) {
                let hash: HashMap<String, String> = answer.convert().map_err(|e| self.error(e))?;
                let mut sessions: Vec<SessionInfo> = hash
                    .into_values()
                    .filter_map(|json| match serde_json::from_str::<Entry>(&json) {
                        Ok(e) => Some(e),
                        Err(err) => {
                            debug!(user, error = %err, "ignoring an unreadable presence entry");
                            None
                        }
                    })
                    .filter(|e| e.expires_at > now && e.session.user_id == *user)
                    .map(|e| e.session)
                    .collect();
                if sessions.is_empty() {
                    continue;
                }
                sessions.sort_by(|a, b| {
                    (a.since, &a.node_id, a.conn_id).cmp(&(b.since, &b.node_id, b.conn_id))
                });
                out.insert(*user, sessions);
            }
        }
        Ok(out)
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.run_refresh(shutdown).await;
    }

    async fn leave(&self) {
        if let Err(e) = self.deregister_node().await {
            tracing::warn!(error = %e, "could not remove this node's sessions from Redis; they expire by themselves");
        }
        self.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_the_deployment() {
        use fred::types::config::ServerConfig;
        let c = parse_url("redis://:pw@127.0.0.1:6380/2").unwrap();
        assert!(matches!(c.server, ServerConfig::Centralized { .. }));
        assert_eq!(c.database, Some(2));
        let c = parse_url("redis-cluster://10.0.0.1:7000?node=10.0.0.2:7000").unwrap();
        assert!(matches!(c.server, ServerConfig::Clustered { .. }));
        let c = parse_url(
            "redis-sentinel://10.0.0.1:26379?sentinelServiceName=main&node=10.0.0.2:26379",
        )
        .unwrap();
        assert!(matches!(c.server, ServerConfig::Sentinel { .. }));
        let c = parse_url("unix:///run/redis/redis.sock").unwrap();
        assert!(matches!(c.server, ServerConfig::Unix { .. }));
        let e = parse_url("http://:hunter2@redis:6379")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("hunter2") && e.contains("redis-cluster://"),
            "{e}"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://u:pw@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://tok@h"), "redis://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn entries_keep_the_session_and_its_expiry() {
        let s = SessionInfo {
            user_id: 7,
            node_id: "n-1".into(),
            conn_id: 3,
            device: "pc".into(),
            since: 100,
        };
        let e: Entry = serde_json::from_str(&entry_json(&s, 900)).unwrap();
        assert_eq!((e.session, e.expires_at), (s, 900));
        assert_eq!(field("n-1", 3), "n-1/3");
    }
}
