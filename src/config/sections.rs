//! The configuration's sections: one struct per `[section]`, one field per key, and the
//! built-in defaults. What each key accepts is in `super::keys`, its rule in `super::validate`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub protocol: ProtocolConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub session: SessionConfig,
    pub offline: OfflineConfig,
    pub log: LogConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub consul: ConsulConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the chat (Zinx framing) listener; empty = no plain listener (then
    /// `tls.listen` must be set).
    #[serde(deserialize_with = "de::string")]
    pub listen: String,
    /// Address of the HTTP listener (health, readiness, metrics).
    #[serde(deserialize_with = "de::string")]
    pub http_listen: String,
    /// Node id; unset = generated once and kept in `state_dir/node_id`.
    #[serde(deserialize_with = "de::opt_string")]
    pub node_id: Option<String>,
    /// Directory for the node id and generated secrets; unset = `$STATE_DIRECTORY` or `./state`.
    #[serde(deserialize_with = "de::opt_path")]
    pub state_dir: Option<PathBuf>,
    /// Address other nodes and redirected clients use to reach this node; unset = `listen`.
    #[serde(deserialize_with = "de::opt_string")]
    pub advertise_addr: Option<String>,
    /// Connections this node accepts; past it new connections are refused (v2: redirected).
    pub max_connections: u64,
    /// Connections of the node that have not logged in, at most (0: a tenth of
    /// `max_connections`, at least 16). The rest of `max_connections` is for logged-in users.
    pub max_unauthenticated: u64,
    /// Connections not logged in from one address (IPv6: one /64) at most; 0 = no limit.
    /// Loopback is not limited per address.
    pub max_unauthenticated_per_address: u32,
    /// Proxies (addresses or networks, `10.0.0.7`, `10.0.0.0/24`, `2001:db8::/64`) whose
    /// connections start with a PROXY protocol header (v2 or v1) naming the client; unset or
    /// empty = none (the PROXY protocol is off).
    #[serde(deserialize_with = "de::opt_list")]
    pub proxy_protocol_from: Option<Vec<String>>,
    /// How long a graceful shutdown (SIGTERM) may take to drain the connections.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Bytes queued towards all connections of the node together; past it the connections
    /// holding the most are closed.
    pub write_queue_budget: u64,
}

/// The TLS listener for chat clients: the same protocol as `server.listen`, inside TLS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS chat listener; unset or empty = none (the default).
    #[serde(deserialize_with = "de::opt_string")]
    pub listen: Option<String>,
    /// PEM file with the certificate chain (the node's certificate first); re-read on SIGHUP.
    #[serde(deserialize_with = "de::opt_path")]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the certificate's private key; re-read on SIGHUP.
    #[serde(deserialize_with = "de::opt_path")]
    pub key_file: Option<PathBuf>,
    /// A TLS handshake not finished within this is dropped (the connection counts against
    /// `server.max_connections` meanwhile).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: None,
            cert_file: None,
            key_file: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Largest inbound frame body in bytes.
    pub max_body: usize,
    /// A connection with no inbound frame for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection not logged in this long after it was accepted (or logged out) is closed,
    /// whatever it sends meanwhile.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Frames queued towards one connection before it counts as a slow consumer.
    pub write_queue: usize,
    /// Bytes queued towards one connection before it counts as a slow consumer (replies may
    /// fill half of it).
    pub write_queue_bytes: usize,
    /// Bytes of one history or sync reply, beyond its first item.
    pub max_reply_bytes: usize,
    /// A connection whose socket accepts no bytes for this long is disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sustained inbound frames per second per connection (token bucket rate).
    pub rate_per_sec: u32,
    /// Inbound frame burst per connection (token bucket size).
    pub rate_burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File holding the token signing secret (created whole, mode 0600, when missing); unset =
    /// the cluster's secret in the NATS KV when `nats.url` is set, else
    /// `state_dir/token_secret`, generated once.
    #[serde(deserialize_with = "de::opt_path")]
    pub token_secret_file: Option<PathBuf>,
    /// Lifetime of login tokens.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Password hashes computed at once (each Argon2id hash takes ~19 MiB for tens of ms).
    pub hash_concurrency: usize,
}

/// The admin API on the HTTP listener (`/admin/...`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the bearer token of the admin API (readable by its owner only); unset =
    /// the admin API is off.
    #[serde(deserialize_with = "de::opt_path")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Connections (devices) one user may have logged in at once, cluster-wide.
    pub max_devices: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineConfig {
    /// Group messages pushed per group at login (older ones stay in group history).
    pub group_backlog: usize,
    /// P2P messages pushed per conversation at login; 0 = all of them.
    pub direct_backlog: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `chat_zinx=debug`, …); `RUST_LOG` overrides it.
    #[serde(deserialize_with = "de::string")]
    pub level: String,
    /// Where logs go: `auto` (journald when stderr is the journal, else text), `journald`,
    /// `text` (stderr).
    #[serde(deserialize_with = "de::string")]
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URL(s), comma separated; unset = in-process bus and memory store.
    #[serde(deserialize_with = "de::opt_string")]
    pub url: Option<String>,
    /// Name of the JetStream stream holding the message log (KV buckets are named after it).
    #[serde(deserialize_with = "de::string")]
    pub stream: String,
    /// Replicas of the stream and KV buckets: 1, or 3 on a NATS cluster.
    pub replicas: usize,
    /// Messages older than this leave the log; "0s" keeps them forever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A retried send with the same `client_msg_id` is recognised within this window.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Time limit of one request to NATS; past it the client gets a "try again" error.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// While the NATS connection is down, a request waits this long for it to come back,
    /// then the client gets a "try again" error (instead of waiting out `request_timeout`).
    #[serde(with = "humantime_serde")]
    pub reconnect_wait: Duration,
    /// Credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[serde(deserialize_with = "de::opt_path")]
    pub creds_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU…`).
    #[serde(deserialize_with = "de::opt_path")]
    pub nkey_file: Option<PathBuf>,
    /// User name; its password is in `password_file`.
    #[serde(deserialize_with = "de::opt_string")]
    pub user: Option<String>,
    /// File holding the password of `user`.
    #[serde(deserialize_with = "de::opt_path")]
    pub password_file: Option<PathBuf>,
    /// File holding an authentication token.
    #[serde(deserialize_with = "de::opt_path")]
    pub token_file: Option<PathBuf>,
    /// TLS towards the NATS servers.
    pub tls: ClientTlsConfig,
}

/// TLS of a connection this node makes to a backend: whom to trust and, optionally, the
/// node's own certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must chain to; set = TLS on.
    #[serde(deserialize_with = "de::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this node's client certificate (chain), for servers that verify clients.
    #[serde(deserialize_with = "de::opt_path")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the private key of `cert_file` (secret).
    #[serde(deserialize_with = "de::opt_path")]
    pub key_file: Option<PathBuf>,
}

/// TLS of a connection to a backend that needs only a trust anchor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaTlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must chain to.
    #[serde(deserialize_with = "de::opt_path")]
    pub ca_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            stream: "CHAT_ZINX".into(),
            replicas: 1,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(600),
            request_timeout: Duration::from_secs(5),
            reconnect_wait: Duration::from_millis(250),
            creds_file: None,
            nkey_file: None,
            user: None,
            password_file: None,
            token_file: None,
            tls: ClientTlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Redis URL; unset = in-process presence.
    #[serde(deserialize_with = "de::opt_string")]
    pub url: Option<String>,
    /// A session entry counts this long after its node last wrote it (a dead node's sessions
    /// vanish within it).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How often a node rewrites its sessions (at most half of `presence_ttl`).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Time limit of one call to Redis; past it the call fails as "unavailable".
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// ACL user name; its password is in `password_file`.
    #[serde(deserialize_with = "de::opt_string")]
    pub username: Option<String>,
    /// File holding the password (of `username`, or of the `default` user).
    #[serde(deserialize_with = "de::opt_path")]
    pub password_file: Option<PathBuf>,
    /// TLS towards Redis (`rediss://`).
    pub tls: CaTlsConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            presence_ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            username: None,
            password_file: None,
            tls: CaTlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// Consul HTTP address; unset = no discovery (this node only).
    #[serde(deserialize_with = "de::opt_string")]
    pub addr: Option<String>,
    /// Consul ACL token (secret).
    #[serde(deserialize_with = "de::opt_string")]
    pub token: Option<String>,
    /// File holding the Consul ACL token (instead of `token`).
    #[serde(deserialize_with = "de::opt_path")]
    pub token_file: Option<PathBuf>,
    /// Service name every node registers under.
    #[serde(deserialize_with = "de::string")]
    pub service: String,
    /// TTL of a node's health check; the node passes it every third of it.
    #[serde(with = "humantime_serde")]
    pub check_ttl: Duration,
    /// Consul removes a node whose check has been critical for this long.
    #[serde(with = "humantime_serde")]
    pub deregister_after: Duration,
    /// KV prefix of the live settings.
    #[serde(deserialize_with = "de::string")]
    pub kv_prefix: String,
    /// Time limit of one request to Consul.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// TLS towards Consul (`https://`).
    pub tls: CaTlsConfig,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            addr: None,
            token: None,
            service: "chat-zinx".into(),
            check_ttl: Duration::from_secs(15),
            deregister_after: Duration::from_secs(60),
            kv_prefix: "chat-zinx/settings/".into(),
            request_timeout: Duration::from_secs(5),
            token_file: None,
            tls: CaTlsConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:9000".into(),
            http_listen: "127.0.0.1:9100".into(),
            node_id: None,
            state_dir: None,
            advertise_addr: None,
            max_connections: 100_000,
            max_unauthenticated: 0,
            max_unauthenticated_per_address: 64,
            proxy_protocol_from: None,
            drain_window: Duration::from_secs(10),
            write_queue_budget: 512 << 20,
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            max_body: 8192,
            idle_timeout: Duration::from_secs(180),
            login_timeout: Duration::from_secs(180),
            write_queue: 256,
            write_queue_bytes: 4 << 20,
            max_reply_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            rate_per_sec: 200,
            rate_burst: 400,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_secret_file: None,
            token_ttl: Duration::from_secs(7 * 24 * 3600),
            hash_concurrency: 4,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { max_devices: 5 }
    }
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            group_backlog: 100,
            direct_backlog: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "auto".into(),
        }
    }
}

impl Config {
    /// The state directory: configured, else `$STATE_DIRECTORY` (systemd), else `./state`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.server.state_dir {
            return dir.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories: the first is ours.
            Some(v) if !v.is_empty() => PathBuf::from(
                v.to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("state")
                    .to_string(),
            ),
            _ => PathBuf::from("state"),
        }
    }
}
