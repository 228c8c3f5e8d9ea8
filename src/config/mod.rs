//! Configuration: built-in defaults < TOML file < `CHAT_ZINX_*` environment (figment).
//!
//! The keys are an external contract: the NixOS module, Terraform and operators set them.
//! `docs/configuration.md` documents every key; [`EXAMPLE_TOML`] is a file setting all of them.
//!
//! * The file is `--config PATH` when given (a missing file is an error), else
//!   [`DEFAULT_CONFIG_PATH`] when it exists, else none.
//! * An environment variable `CHAT_ZINX_<SECTION>__<KEY>` sets `<section>.<key>`, e.g.
//!   `CHAT_ZINX_SERVER__LISTEN=0.0.0.0:9000` or `CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT=2m`.
//!   Values are taken as written (a token `123456` stays the string `"123456"`); numbers and
//!   durations are parsed from them. A variable under the prefix that names no key is an error,
//!   except those in [`ENV_IGNORED`]. An empty value unsets an optional key.
//! * Every problem is reported with the key, the layer that set it (file path or variable
//!   name), the offending value and what is expected.

pub mod live;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub protocol: ProtocolConfig,
    pub auth: AuthConfig,
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
    /// Address of the chat (Zinx framing) listener.
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
    /// How long a graceful shutdown (SIGTERM) may take to drain the connections.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Largest inbound frame body in bytes.
    pub max_body: usize,
    /// A connection with no inbound frame for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Frames queued towards one connection before it counts as a slow consumer.
    pub write_queue: usize,
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
    /// File holding the token signing secret; unset = `state_dir/token_secret`, generated once.
    #[serde(deserialize_with = "de::opt_path")]
    pub token_secret_file: Option<PathBuf>,
    /// Lifetime of login tokens.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Password hashes computed at once (each Argon2id hash takes ~19 MiB for tens of ms).
    pub hash_concurrency: usize,
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
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            presence_ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
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
            drain_window: Duration::from_secs(10),
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            max_body: 8192,
            idle_timeout: Duration::from_secs(180),
            write_queue: 256,
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

    /// Same as the module function [`load`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        load(path)
    }

    /// Same as the module function [`load_from`].
    pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        load_from(path, env)
    }

    /// Same as the module function [`check_file`].
    pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
        check_file(path)
    }

    /// Checks the semantic rules (addresses, ranges, log filter) of an already built config.
    /// Problems are attributed to the built-in defaults layer; [`load`] attributes them to the
    /// layer that set the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let figment = Figment::from(defaults_layer(self));
        problems_to_result(validate(self, &figment))
    }

    /// The config as TOML, every key in order, with secrets replaced by `***`: keys whose name
    /// says token/password/secret (not `*_file` paths), and passwords in URLs
    /// (`redis://:pw@host` → `redis://:***@host`, user-only userinfo `nats://tok@host` →
    /// `nats://***@host`, and `?password=`-style query values). Unset keys are shown as
    /// comments. Without secrets the output parses back to the same config.
    pub fn to_redacted_toml(&self) -> String {
        let table = match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot render the configuration: {e}\n"),
        };
        let mut out = String::from(
            "# chat-zinx effective configuration (defaults < file < CHAT_ZINX_* environment).\n\
             # Secrets are shown as \"***\"; unset keys are commented out.\n",
        );
        for section in sections() {
            out.push_str(&format!("\n[{section}]\n"));
            let values = table.get(section).and_then(|v| v.as_table());
            for leaf in section_keys(section) {
                match values.and_then(|t| t.get(leaf)) {
                    Some(v) => {
                        let v = redact_value(leaf, v);
                        out.push_str(&format!("{leaf} = {}\n", render_value(&v)));
                    }
                    None => out.push_str(&format!("# {leaf} = (unset)\n")),
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Public constants and key table
// ---------------------------------------------------------------------------------------------

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/chat-zinx/config.toml";
/// Prefix of the environment variables that set keys.
pub const ENV_PREFIX: &str = "CHAT_ZINX_";
/// Separator between section and key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Variables under [`ENV_PREFIX`] that are not config keys (e.g. the `--config` path taken by
/// the command line) and are therefore not reported as unknown.
pub const ENV_IGNORED: &[&str] = &["CHAT_ZINX_CONFIG"];

/// Smallest accepted `protocol.max_body`.
pub const MIN_MAX_BODY: usize = 64;
/// Largest accepted `protocol.max_body` (16 MiB).
pub const MAX_MAX_BODY: usize = 16 * 1024 * 1024;

/// One configuration key and what it accepts (as said in error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// Dotted key, `section.name`.
    pub key: &'static str,
    /// What a valid value looks like, phrased to follow "expected".
    pub expected: &'static str,
}

/// Every configuration key, in documentation order.
pub const KEYS: &[KeyInfo] = &[
    KeyInfo {
        key: "server.listen",
        expected: "an IP address and port such as \"0.0.0.0:9000\" or \"[::]:9000\"",
    },
    KeyInfo {
        key: "server.http_listen",
        expected: "an IP address and port such as \"127.0.0.1:9100\"",
    },
    KeyInfo {
        key: "server.node_id",
        expected: "1 to 64 letters, digits, '-' or '_' (or unset to generate one)",
    },
    KeyInfo {
        key: "server.state_dir",
        expected: "a directory path",
    },
    KeyInfo {
        key: "server.advertise_addr",
        expected:
            "a host name or IP address with a port (1-65535) such as \"chat-1.example.com:9000\"",
    },
    KeyInfo {
        key: "server.max_connections",
        expected: "an integer of at least 1",
    },
    KeyInfo {
        key: "server.drain_window",
        expected: "a duration between 1s and 1h such as \"10s\"",
    },
    KeyInfo {
        key: "protocol.max_body",
        expected: "an integer number of bytes between 64 and 16777216",
    },
    KeyInfo {
        key: "protocol.idle_timeout",
        expected: "a duration of at least 1s such as \"180s\", \"2m\" or \"1h 30m\"",
    },
    KeyInfo {
        key: "protocol.write_queue",
        expected: "an integer number of frames of at least 8",
    },
    KeyInfo {
        key: "protocol.write_timeout",
        expected: "a non-zero duration such as \"10s\" or \"500ms\"",
    },
    KeyInfo {
        key: "protocol.rate_per_sec",
        expected: "an integer number of frames per second between 1 and 4294967295",
    },
    KeyInfo {
        key: "protocol.rate_burst",
        expected: "an integer number of frames between 1 and 4294967295",
    },
    KeyInfo {
        key: "auth.token_secret_file",
        expected: "a file path",
    },
    KeyInfo {
        key: "auth.token_ttl",
        expected: "a duration of at least 1s such as \"7d\" or \"12h\"",
    },
    KeyInfo {
        key: "auth.hash_concurrency",
        expected: "an integer of at least 1",
    },
    KeyInfo {
        key: "session.max_devices",
        expected: "an integer of at least 1",
    },
    KeyInfo {
        key: "offline.group_backlog",
        expected: "a non-negative integer number of messages",
    },
    KeyInfo {
        key: "offline.direct_backlog",
        expected: "a non-negative integer number of messages (0 = all)",
    },
    KeyInfo {
        key: "log.level",
        expected: "a tracing filter such as \"info\" or \"info,chat_zinx=debug\"",
    },
    KeyInfo {
        key: "log.format",
        expected: "\"auto\", \"journald\" or \"text\"",
    },
    KeyInfo {
        key: "nats.url",
        expected: "one or more NATS URLs separated by commas, such as \"nats://127.0.0.1:4222\"",
    },
    KeyInfo {
        key: "nats.stream",
        expected: "a stream name of letters, digits, '-' and '_' such as \"CHAT_ZINX\"",
    },
    KeyInfo {
        key: "nats.replicas",
        expected: "1 or 3 (3 needs a NATS cluster of at least 3 servers)",
    },
    KeyInfo {
        key: "nats.max_age",
        expected: "a duration such as \"365days\", or \"0s\" to keep messages forever",
    },
    KeyInfo {
        key: "nats.duplicate_window",
        expected: "a duration of at least 1s such as \"10m\"",
    },
    KeyInfo {
        key: "nats.request_timeout",
        expected: "a duration of at least 100ms such as \"5s\"",
    },
    KeyInfo {
        key: "redis.url",
        expected: "a redis://, rediss://, redis-sentinel://, redis-cluster:// or redis+unix:// URL \
                   such as \"redis://127.0.0.1:6379\"",
    },
    KeyInfo {
        key: "redis.presence_ttl",
        expected: "a duration of at least 1s such as \"30s\"",
    },
    KeyInfo {
        key: "redis.refresh_interval",
        expected: "a duration of at least 100ms and at most half of redis.presence_ttl, such as \"10s\"",
    },
    KeyInfo {
        key: "redis.command_timeout",
        expected: "a duration between 10ms and 60s such as \"2s\"",
    },
    KeyInfo {
        key: "consul.addr",
        expected: "a Consul HTTP address such as \"http://127.0.0.1:8500\" or \"127.0.0.1:8500\"",
    },
    KeyInfo {
        key: "consul.token",
        expected: "a Consul ACL token string",
    },
    KeyInfo {
        key: "consul.service",
        expected: "a service name of 1 to 63 letters, digits and '-' such as \"chat-zinx\"",
    },
    KeyInfo {
        key: "consul.check_ttl",
        expected: "a duration between 1s and 1h such as \"15s\"",
    },
    KeyInfo {
        key: "consul.deregister_after",
        expected: "a duration of at least 1m (Consul's minimum) such as \"1m\"",
    },
    KeyInfo {
        key: "consul.kv_prefix",
        expected: "a Consul KV prefix ending with '/', without spaces or a leading '/', such as \"chat-zinx/settings/\"",
    },
    KeyInfo {
        key: "consul.request_timeout",
        expected: "a duration of at least 100ms such as \"5s\"",
    },
];

/// The environment variable that sets `key` (`server.listen` → `CHAT_ZINX_SERVER__LISTEN`).
pub fn env_var_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(|p| p.to_ascii_uppercase()).collect();
    format!("{ENV_PREFIX}{}", parts.join(ENV_SEPARATOR))
}

/// The keys whose values differ between `a` and `b`, in [`KEYS`] order.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let (Ok(ta), Ok(tb)) = (toml::Table::try_from(a), toml::Table::try_from(b)) else {
        return Vec::new();
    };
    let get = |t: &toml::Table, key: &str| {
        let (section, leaf) = split_key(key);
        t.get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| s.get(leaf))
            .cloned()
    };
    KEYS.iter()
        .map(|k| k.key)
        .filter(|k| get(&ta, k) != get(&tb, k))
        .collect()
}

/// A config file setting every key, with a comment for each; it passes [`check_file`].
/// Optional keys are set to examples (the comment tells what unset means); the others show
/// their defaults.
pub const EXAMPLE_TOML: &str = r#"# chat-zinx configuration.
#
# Layers, later ones win: built-in defaults < this file < environment variables.
# The file is `chat-zinx --config PATH`, else /etc/chat-zinx/config.toml if it exists.
# Every key can also be set as CHAT_ZINX_<SECTION>__<KEY>, e.g.
#   CHAT_ZINX_SERVER__LISTEN=0.0.0.0:9000  CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT=2m
# An empty variable unsets an optional key. Unknown keys and variables are errors.
# Check a file with `chat-zinx config --check FILE`.
# Durations are written like "500ms", "10s", "3m", "1h 30m", "7days".

[server]
# Address of the chat (Zinx framing) listener: IP and port.
listen = "0.0.0.0:9000"
# Address of the HTTP listener (health, readiness, metrics): IP and port.
http_listen = "127.0.0.1:9100"
# Node id (letters, digits, '-', '_'; at most 64).
# Unset = generated once and kept in state_dir/node_id.
node_id = "node-1"
# Directory for the node id and generated secrets.
# Unset = $STATE_DIRECTORY (systemd) or ./state.
state_dir = "/var/lib/chat-zinx"
# host:port other nodes and redirected clients use to reach this node. Unset = listen.
advertise_addr = "chat-1.example.com:9000"
# Connections this node accepts; past it new connections are refused.
max_connections = 100000
# How long a graceful shutdown (SIGTERM) may take to drain the connections (1s to 1h).
# Keep the unit's TimeoutStopSec above it (systemd/chat-zinx.service).
drain_window = "10s"

[protocol]
# Largest inbound frame body in bytes (64 to 16777216).
max_body = 8192
# A connection with no inbound frame for this long is closed (at least 1s).
idle_timeout = "3m"
# Frames queued towards one connection before it counts as a slow consumer (at least 8).
write_queue = 256
# A connection whose socket accepts no bytes for this long is disconnected.
write_timeout = "10s"
# Sustained inbound frames per second per connection (token bucket rate, at least 1).
rate_per_sec = 200
# Inbound frame burst per connection (token bucket size, at least 1).
rate_burst = 400

[auth]
# File holding the token signing secret.
# Unset = state_dir/token_secret, generated once.
token_secret_file = "/run/secrets/chat-zinx-token-secret"
# Lifetime of login tokens (at least 1s).
token_ttl = "7days"
# Password hashes computed at once (each Argon2id hash takes ~19 MiB for tens of ms).
hash_concurrency = 4

[session]
# Connections (devices) one user may have logged in at once, cluster-wide (at least 1).
max_devices = 5

[offline]
# Group messages pushed per group at login (older ones stay in group history).
group_backlog = 100
# P2P messages pushed per conversation at login; 0 = all of them.
direct_backlog = 0

[log]
# A tracing filter ("info", "info,chat_zinx=debug", ...); RUST_LOG overrides it.
level = "info"
# Where logs go: "auto" (journald when stderr is the journal, else stderr),
# "journald", or "text" (stderr).
format = "auto"

[nats]
# NATS server URL(s), comma separated. Unset = in-process bus and memory store.
url = "nats://127.0.0.1:4222"
# JetStream stream of the message log; the KV buckets are named <stream>_users, _groups, _meta.
stream = "CHAT_ZINX"
# Replicas of the stream and buckets: 1, or 3 on a NATS cluster.
replicas = 1
# Messages older than this leave the log; "0s" keeps them forever.
max_age = "0s"
# A retried send with the same client_msg_id is recognised within this window.
duplicate_window = "10m"
# Time limit of one request to NATS; past it the client gets a "try again" error.
request_timeout = "5s"

[redis]
# Redis URL. Unset = in-process presence. Sentinel:
#   redis-sentinel://s1:26379?sentinelServiceName=NAME&node=s2:26379
# Cluster: redis-cluster://n1:6379?node=n2:6379 (TLS: rediss://, rediss-sentinel://, ...).
url = "redis://127.0.0.1:6379"
# A session counts this long after its node last wrote it (a dead node's vanish within it).
presence_ttl = "30s"
# How often a node rewrites its sessions in Redis (at most half of presence_ttl).
refresh_interval = "10s"
# Time limit of one call to Redis; past it the call fails and the chat goes on.
command_timeout = "2s"

[consul]
# Consul HTTP address. Unset = no discovery (this node only).
addr = "http://127.0.0.1:8500"
# Consul ACL token (secret; prefer CHAT_ZINX_CONSUL__TOKEN over writing it here).
token = "00000000-0000-0000-0000-000000000000"
# Service name every node registers under (letters, digits, '-').
service = "chat-zinx"
# TTL of a node's health check, passed by the node every third of it (1s to 1h).
# A node that stops passing leaves the healthy nodes after it.
check_ttl = "15s"
# Consul removes a node whose check has been critical for this long (at least 1m).
deregister_after = "1m"
# KV prefix of the live settings (rate_per_sec, rate_burst, max_devices, ...),
# applied without restart; a removed key goes back to the value configured here.
kv_prefix = "chat-zinx/settings/"
# Time limit of one request to Consul (a blocking watch waits longer).
request_timeout = "5s"
"#;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}{}", path.display(), read_hint(source))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// One or more keys are unknown or have unacceptable values.
    #[error("{}", render_problems(problems))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The individual key problems (empty for read and syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => " (check the --config path)",
        std::io::ErrorKind::PermissionDenied => {
            " (make the file readable by the user chat-zinx runs as)"
        }
        _ => "",
    }
}

fn render_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} configuration problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// The built-in defaults.
    Defaults,
    /// A TOML config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Defaults => f.write_str("the built-in defaults"),
            Layer::File(p) => write!(f, "config file {}", p.display()),
            Layer::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

impl Layer {
    fn preposition(&self) -> &'static str {
        match self {
            Layer::Env(_) => "from",
            _ => "in",
        }
    }
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key (`protocol.max_body`), or a section name for an unknown section.
    pub key: String,
    /// The layer that set it.
    pub layer: Layer,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// What is wrong with a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The key does not exist; `suggestion` is a close existing key.
    UnknownKey { suggestion: Option<String> },
    /// The `[section]` of a file does not exist; `suggestion` is a close existing section.
    UnknownSection { suggestion: Option<String> },
    /// The value is not acceptable for the key.
    InvalidValue { value: String, expected: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let layer = &self.layer;
        let at = layer.preposition();
        match (&self.kind, layer) {
            (ProblemKind::InvalidValue { value, expected }, _) => write!(
                f,
                "invalid value for {key} {at} {layer}: {value} — expected {expected}"
            ),
            (ProblemKind::UnknownKey { suggestion }, Layer::Env(var)) => {
                write!(f, "unknown environment variable {var}: ")?;
                if key.split('.').any(str::is_empty) {
                    write!(
                        f,
                        "it names no configuration key (the form is \
                         {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>)"
                    )?;
                } else if sections().contains(&key.as_str()) {
                    write!(
                        f,
                        "it names the section {key}, not a key: set \
                         {ENV_PREFIX}{}{ENV_SEPARATOR}<KEY> instead",
                        key.to_ascii_uppercase()
                    )?;
                } else {
                    write!(f, "there is no configuration key {key}")?;
                }
                match suggestion {
                    Some(s) => write!(f, " — did you mean {}?", env_var_name(s))?,
                    None => write!(f, " — {}.", valid_keys_hint(key))?,
                }
                write!(f, " Rename or unset the variable.")
            }
            (ProblemKind::UnknownKey { suggestion }, _) => {
                write!(f, "unknown key {key} {at} {layer}")?;
                match suggestion {
                    // A key outside its section (`listen = ...` above `[server]`).
                    Some(s) if !key.contains('.') => write!(
                        f,
                        " — did you mean {s}? Put it in the [{}] section.",
                        split_key(s).0
                    ),
                    Some(s) => write!(f, " — did you mean {s}? Remove or rename it."),
                    None => write!(f, " — {}; remove or rename it.", valid_keys_hint(key)),
                }
            }
            (ProblemKind::UnknownSection { suggestion }, _) => {
                write!(f, "unknown section [{key}] {at} {layer}")?;
                match suggestion {
                    Some(s) => write!(f, " — did you mean [{s}]? Rename it."),
                    None => write!(f, " — {}; remove or rename it.", valid_keys_hint(key)),
                }
            }
        }
    }
}

fn valid_keys_hint(key: &str) -> String {
    match key.split_once('.') {
        Some((section, _)) if sections().contains(&section) => format!(
            "valid keys in [{section}] are {}",
            section_keys(section).join(", ")
        ),
        _ => format!("valid sections are {}", sections().join(", ")),
    }
}

/// The key names (without section) of `section`, in documentation order.
fn section_keys(section: &str) -> Vec<&'static str> {
    KEYS.iter()
        .map(|k| split_key(k.key))
        .filter(|(s, _)| *s == section)
        .map(|(_, leaf)| leaf)
        .collect()
}

fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let s = split_key(k.key).0;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, ""))
}

fn key_info(key: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.key == key)
}

fn problems_to_result(problems: Vec<Problem>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// The file [`load`] reads: `explicit` if given, else [`DEFAULT_CONFIG_PATH`] if it exists.
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            default.exists().then(|| default.to_path_buf())
        }
    }
}

/// Loads the configuration: defaults < file ([`resolve_path`]) < `CHAT_ZINX_*` process
/// environment. A missing explicit file is an error.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let env = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    load_from(resolve_path(path).as_deref(), env)
}

/// Loads defaults < `path` (if `Some`; it must exist) < the `CHAT_ZINX_*` variables among
/// `env` (other variables are ignored). Unlike [`load`] this never looks at
/// [`DEFAULT_CONFIG_PATH`] nor the process environment.
pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut problems = Vec::new();
    let file = match path {
        Some(p) => Some(FileLayer::read(p, &mut problems)?),
        None => None,
    };
    let env = EnvLayer::new(env, &mut problems);
    problems_to_result(problems)?;

    let defaults = Config::default();
    let mut figment = Figment::from(defaults_layer(&defaults));
    if let Some(file) = file {
        figment = figment.merge(file.provider());
    }
    figment = figment.merge(env.provider());
    extract(&figment)
}

/// Validates one file alone (defaults < file, no environment), as `chat-zinx config --check`.
pub fn check_file(path: &Path) -> Result<Config, ConfigError> {
    load_from(Some(path), std::iter::empty())
}

fn extract(figment: &Figment) -> Result<Config, ConfigError> {
    let config: Config = figment.extract_lossy().map_err(|e| ConfigError::Invalid {
        problems: figment_problems(figment, e),
    })?;
    problems_to_result(validate(&config, figment))?;
    Ok(config)
}

const DEFAULTS_NAME: &str = "built-in defaults";
const FILE_NAME: &str = "config file";
const ENV_NAME: &str = "environment";

/// A provider with precomputed data and our own metadata (name, source, interpolation).
struct Layered {
    metadata: Metadata,
    data: Map<Profile, Dict>,
}

impl Provider for Layered {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(self.data.clone())
    }
}

fn defaults_layer(config: &Config) -> Layered {
    Layered {
        metadata: Metadata::named(DEFAULTS_NAME),
        // Serializing plain structs into figment values cannot fail.
        data: Serialized::defaults(config).data().unwrap_or_default(),
    }
}

struct FileLayer {
    path: PathBuf,
    data: Map<Profile, Dict>,
}

impl FileLayer {
    fn read(path: &Path, problems: &mut Vec<Problem>) -> Result<FileLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let syntax = |message: String| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| syntax(e.to_string()))?;
        check_file_keys(&table, path, problems);
        let data = Toml::string(&text)
            .data()
            .map_err(|e| syntax(e.to_string()))?;
        Ok(FileLayer {
            path: path.to_path_buf(),
            data,
        })
    }

    fn provider(self) -> Layered {
        Layered {
            metadata: Metadata::from(FILE_NAME, self.path.as_path()),
            data: self.data,
        }
    }
}

/// Reports unknown sections and keys of a file all at once (serde would stop at the first).
fn check_file_keys(table: &toml::Table, path: &Path, problems: &mut Vec<Problem>) {
    let layer = Layer::File(path.to_path_buf());
    let known = sections();
    for (section, value) in table {
        if !known.contains(&section.as_str()) {
            let kind = if value.is_table() {
                ProblemKind::UnknownSection {
                    suggestion: suggest_section(section),
                }
            } else {
                ProblemKind::UnknownKey {
                    suggestion: suggest_key(section),
                }
            };
            problems.push(Problem {
                key: section.clone(),
                layer: layer.clone(),
                kind,
            });
            continue;
        }
        let Some(keys) = value.as_table() else {
            problems.push(Problem {
                key: section.clone(),
                layer: layer.clone(),
                kind: ProblemKind::InvalidValue {
                    value: render_value(value),
                    expected: format!(
                        "a [{section}] table with the keys {}",
                        section_keys(section).join(", ")
                    ),
                },
            });
            continue;
        };
        for key in keys.keys() {
            let full = format!("{section}.{key}");
            if key_info(&full).is_none() {
                problems.push(Problem {
                    key: full.clone(),
                    layer: layer.clone(),
                    kind: ProblemKind::UnknownKey {
                        suggestion: suggest_key(&full),
                    },
                });
            }
        }
    }
}

/// The environment layer, built from explicit variables so that values stay strings:
/// figment's own `Env` provider would turn `123456` into an integer and `[x]` into an array.
struct EnvLayer {
    /// (dotted key, value, variable name as given)
    vars: Vec<(String, String, String)>,
}

impl EnvLayer {
    fn new<I>(env: I, problems: &mut Vec<Problem>) -> EnvLayer
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut vars = Vec::new();
        for (name, value) in env {
            let trimmed = name.trim();
            let Some(rest) = strip_prefix_ignore_case(trimmed, ENV_PREFIX) else {
                continue;
            };
            if ENV_IGNORED.iter().any(|i| i.eq_ignore_ascii_case(trimmed)) {
                continue;
            }
            let key = rest
                .split(ENV_SEPARATOR)
                .map(|s| s.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            if key_info(&key).is_none() {
                problems.push(Problem {
                    key: key.clone(),
                    layer: Layer::Env(trimmed.to_string()),
                    kind: ProblemKind::UnknownKey {
                        suggestion: suggest_key(&key),
                    },
                });
                continue;
            }
            vars.push((key, value, trimmed.to_string()));
        }
        EnvLayer { vars }
    }

    fn provider(self) -> Layered {
        let names: BTreeMap<String, String> = self
            .vars
            .iter()
            .map(|(key, _, name)| (key.clone(), name.clone()))
            .collect();
        let metadata = Metadata::named(ENV_NAME).interpolater(move |_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            names
                .get(&key)
                .cloned()
                .unwrap_or_else(|| env_var_name(&key))
        });
        let mut dict = Dict::new();
        for (key, value, _) in self.vars {
            let (section, leaf) = split_key(&key);
            let entry = dict
                .entry(section.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                inner.insert(leaf.to_string(), Value::from(value));
            }
        }
        Layered {
            metadata,
            data: Profile::Default.collect(dict),
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Which layer set `key`, per figment's record of value tags.
fn layer_of(figment: &Figment, key: &str) -> Option<Layer> {
    let md = figment.find_metadata(key)?;
    Some(layer_from_metadata(md, key))
}

fn layer_from_metadata(md: &Metadata, key: &str) -> Layer {
    if md.name == ENV_NAME {
        let path: Vec<&str> = key.split('.').collect();
        Layer::Env(md.interpolate(&Profile::Default, &path))
    } else if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        Layer::File(path.to_path_buf())
    } else {
        Layer::Defaults
    }
}

/// Converts figment's (chained) extraction errors into problems.
fn figment_problems(figment: &Figment, error: figment::Error) -> Vec<Problem> {
    let mut problems = Vec::new();
    for e in error {
        let key = e.path.join(".");
        let layer = layer_of(figment, &key)
            .or_else(|| e.metadata.as_ref().map(|md| layer_from_metadata(md, &key)))
            .unwrap_or(Layer::Defaults);
        let kind = match &e.kind {
            figment::error::Kind::UnknownField(..) => ProblemKind::UnknownKey {
                suggestion: suggest_key(&key),
            },
            other => ProblemKind::InvalidValue {
                value: figment
                    .find_value(&key)
                    .ok()
                    .map(|v| render_figment_value(&v))
                    .unwrap_or_else(|| "(none)".into()),
                expected: match key_info(&key) {
                    Some(info) => info.expected.to_string(),
                    None => format!("something else ({other})"),
                },
            },
        };
        problems.push(Problem { key, layer, kind });
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Semantic validation
// ---------------------------------------------------------------------------------------------

fn validate(c: &Config, figment: &Figment) -> Vec<Problem> {
    let mut bad: Vec<&'static str> = Vec::new();
    let mut check = |key: &'static str, ok: bool| {
        if !ok {
            bad.push(key);
        }
    };
    let s = &c.server;
    check("server.listen", s.listen.parse::<SocketAddr>().is_ok());
    check(
        "server.http_listen",
        s.http_listen.parse::<SocketAddr>().is_ok(),
    );
    check(
        "server.node_id",
        s.node_id.as_deref().is_none_or(valid_node_id),
    );
    check(
        "server.advertise_addr",
        s.advertise_addr.as_deref().is_none_or(valid_host_port),
    );
    check("server.max_connections", s.max_connections >= 1);
    check(
        "server.drain_window",
        (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.drain_window),
    );
    let p = &c.protocol;
    check(
        "protocol.max_body",
        (MIN_MAX_BODY..=MAX_MAX_BODY).contains(&p.max_body),
    );
    check(
        "protocol.idle_timeout",
        p.idle_timeout >= Duration::from_secs(1),
    );
    check("protocol.write_queue", p.write_queue >= 8);
    check("protocol.write_timeout", !p.write_timeout.is_zero());
    check("protocol.rate_per_sec", p.rate_per_sec >= 1);
    check("protocol.rate_burst", p.rate_burst >= 1);
    check("auth.token_ttl", c.auth.token_ttl >= Duration::from_secs(1));
    check("auth.hash_concurrency", c.auth.hash_concurrency >= 1);
    check("session.max_devices", c.session.max_devices >= 1);
    check("log.level", valid_log_filter(&c.log.level));
    check(
        "log.format",
        matches!(c.log.format.as_str(), "auto" | "journald" | "text"),
    );
    check(
        "nats.url",
        c.nats.url.as_deref().is_none_or(valid_nats_urls),
    );
    check(
        "nats.stream",
        !c.nats.stream.is_empty()
            && c.nats.stream.len() <= 64
            && c.nats
                .stream
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
    );
    check("nats.replicas", matches!(c.nats.replicas, 1 | 3));
    check(
        "nats.duplicate_window",
        c.nats.duplicate_window >= Duration::from_secs(1),
    );
    check(
        "nats.request_timeout",
        c.nats.request_timeout >= Duration::from_millis(100),
    );
    check(
        "redis.url",
        c.redis.url.as_deref().is_none_or(valid_redis_url),
    );
    let r = &c.redis;
    check(
        "redis.presence_ttl",
        r.presence_ttl >= Duration::from_secs(1),
    );
    check(
        "redis.refresh_interval",
        r.refresh_interval >= Duration::from_millis(100)
            && r.refresh_interval <= r.presence_ttl / 2,
    );
    check(
        "redis.command_timeout",
        (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&r.command_timeout),
    );
    check(
        "consul.addr",
        c.consul.addr.as_deref().is_none_or(valid_consul_addr),
    );
    check(
        "consul.service",
        (1..=63).contains(&c.consul.service.len())
            && c.consul
                .service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
    );
    check(
        "consul.check_ttl",
        (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.consul.check_ttl),
    );
    check(
        "consul.deregister_after",
        c.consul.deregister_after >= Duration::from_secs(60),
    );
    check("consul.kv_prefix", valid_kv_prefix(&c.consul.kv_prefix));
    check(
        "consul.request_timeout",
        c.consul.request_timeout >= Duration::from_millis(100),
    );

    bad.into_iter()
        .map(|key| Problem {
            key: key.to_string(),
            layer: layer_of(figment, key).unwrap_or(Layer::Defaults),
            kind: ProblemKind::InvalidValue {
                value: figment
                    .find_value(key)
                    .ok()
                    .map(|v| render_figment_value(&v))
                    .unwrap_or_else(|| "(none)".into()),
                expected: key_info(key).map_or("", |i| i.expected).to_string(),
            },
        })
        .collect()
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `host:port` with a non-empty host (name, IPv4 or `[IPv6]`) and a port in 1..=65535.
fn valid_host_port(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.port() != 0;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p != 0) && valid_host(host)
}

/// A DNS name or IPv4 address (IPv6 needs brackets and a port, handled by `SocketAddr`).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !host.starts_with(['-', '.'])
        && !host.ends_with('-')
}

fn valid_log_filter(filter: &str) -> bool {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    if filter.trim().is_empty()
        || tracing_subscriber::EnvFilter::builder()
            .parse(filter)
            .is_err()
    {
        return false;
    }
    // A bare word is a target name to tracing, so `inof` would silently mean "all of target
    // inof": reject words that are near a level name but not one.
    let word = filter.trim().to_ascii_lowercase();
    let bare = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic());
    !(bare
        && !LEVELS.contains(&word.as_str())
        && (word == "warning" || LEVELS.iter().any(|l| edit_distance(l, &word) <= 2)))
}

fn no_space(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_whitespace)
}

fn valid_nats_urls(urls: &str) -> bool {
    urls.split(',').all(|u| no_space(u.trim()))
}

fn valid_redis_url(url: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis-sentinel://",
        "rediss-sentinel://",
        "redis-cluster://",
        "rediss-cluster://",
        "unix://",
        "redis+unix://",
    ]
    .iter()
    .any(|scheme| url.len() > scheme.len() && url[..scheme.len()].eq_ignore_ascii_case(scheme))
        && no_space(url)
}

/// A Consul KV prefix: `a/b/`, no leading `/`, no spaces, no URL specials.
fn valid_kv_prefix(prefix: &str) -> bool {
    prefix.len() > 1
        && prefix.ends_with('/')
        && !prefix.starts_with('/')
        && !prefix.contains("//")
        && !prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%'))
}

fn valid_consul_addr(addr: &str) -> bool {
    let with_scheme = strip_prefix_ignore_case(addr, "http://")
        .or_else(|| strip_prefix_ignore_case(addr, "https://"));
    let authority = with_scheme.unwrap_or(addr).trim_end_matches('/');
    // With a scheme the port may be left out; without one, `host:port` is needed.
    valid_host_port(authority) || (with_scheme.is_some() && valid_host(authority))
}

// ---------------------------------------------------------------------------------------------
// Suggestions
// ---------------------------------------------------------------------------------------------

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A known section close to `name`, if any.
fn suggest_section(name: &str) -> Option<String> {
    sections()
        .into_iter()
        .filter(|s| edit_distance(name, s) <= (s.len() / 3).clamp(1, 2))
        .min_by_key(|s| edit_distance(name, s))
        .map(str::to_string)
}

/// A known key close to `given` (`server.listn`, `servr.listen`, a bare `listen`), if any.
fn suggest_key(given: &str) -> Option<String> {
    if given.contains('.') {
        let best = KEYS
            .iter()
            .map(|k| (edit_distance(given, k.key), k.key))
            .min()
            .filter(|(d, k)| *d <= (k.len() / 4).clamp(1, 3));
        if let Some((_, k)) = best {
            return Some(k.to_string());
        }
    }
    // The right key name in a wrong, misspelt or missing section.
    let leaf = given.rsplit('.').next().unwrap_or(given);
    let by_leaf: Vec<&str> = KEYS
        .iter()
        .map(|k| k.key)
        .filter(|k| split_key(k).1 == leaf)
        .collect();
    match by_leaf[..] {
        [only] => Some(only.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering and redaction
// ---------------------------------------------------------------------------------------------

fn render_value(v: &toml::Value) -> String {
    v.to_string()
}

fn render_figment_value(v: &Value) -> String {
    match v {
        Value::Empty(..) => "(unset)".into(),
        other => toml::Value::try_from(other)
            .map(|t| render_value(&t))
            .unwrap_or_else(|_| format!("{:?}", other.to_actual().to_string())),
    }
}

const SECRET_WORDS: &[&str] = &["token", "password", "passwd", "secret", "credential"];
const NOT_SECRET_SUFFIXES: &[&str] = &["_file", "_path", "_dir", "_ttl", "_timeout"];

/// Whether a key's value is a secret by its name (`consul.token`, a future `*_password`),
/// excluding paths to secrets (`token_secret_file`) and durations (`token_ttl`).
fn is_secret_name(leaf: &str) -> bool {
    let leaf = leaf.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| leaf.contains(w))
        && !NOT_SECRET_SUFFIXES.iter().any(|s| leaf.ends_with(s))
}

fn redact_value(leaf: &str, v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::String(s) if is_secret_name(leaf) && !s.is_empty() => {
            toml::Value::String("***".into())
        }
        toml::Value::String(s) => toml::Value::String(redact_urls(s)),
        other => other.clone(),
    }
}

/// Hides passwords in each comma-separated URL of `s`.
fn redact_urls(s: &str) -> String {
    s.split(',').map(redact_url).collect::<Vec<_>>().join(",")
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            // A lone userinfo may itself be a token (`nats://token@host`).
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v))
                        if !v.is_empty()
                            && (is_secret_name(k) || k.eq_ignore_ascii_case("pass")) =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect::<Vec<_>>()
                .join("&");
            match fragment {
                Some(f) => format!("{path}?{query}#{f}"),
                None => format!("{path}?{query}"),
            }
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

// ---------------------------------------------------------------------------------------------
// Lenient string deserializers
// ---------------------------------------------------------------------------------------------

/// String-typed keys accept any scalar: a TOML `node_id = 7` or a token written without quotes
/// becomes the string `"7"`. Optional keys take an empty string as unset.
mod de {
    use std::fmt;
    use std::path::PathBuf;

    use serde::de::{self, Deserializer, Visitor};

    struct ScalarString;

    impl Visitor<'_> for ScalarString {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }

        fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
            Ok(v.to_string())
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    struct OptScalarString;

    impl<'de> Visitor<'de> for OptScalarString {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            let s = d.deserialize_any(ScalarString)?;
            Ok((!s.is_empty()).then_some(s))
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(ScalarString)
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_option(OptScalarString)
    }

    pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(opt_string(d)?.map(PathBuf::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write temp file");
        f
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err_text(r: Result<Config, ConfigError>) -> String {
        r.expect_err("expected a config error").to_string()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = load_from(None, env(&[("PATH", "/bin"), ("HOME", "/root")])).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn file_overrides_defaults() {
        let f = file("[server]\nlisten = \"127.0.0.1:7000\"\n[protocol]\nmax_body = 4096\n");
        let c = load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(c.protocol.max_body, 4096);
        // Untouched keys keep their defaults.
        assert_eq!(c.server.http_listen, "127.0.0.1:9100");
        assert_eq!(c.protocol.write_queue, 256);
    }

    #[test]
    fn env_overrides_file() {
        let f = file("[server]\nlisten = \"127.0.0.1:7000\"\nhttp_listen = \"127.0.0.1:7001\"\n");
        let c = load_from(
            Some(f.path()),
            env(&[
                ("CHAT_ZINX_SERVER__LISTEN", "127.0.0.1:8000"),
                ("CHAT_ZINX_NATS__URL", "nats://a:4222,nats://b:4222"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8000");
        assert_eq!(c.server.http_listen, "127.0.0.1:7001");
        assert_eq!(c.nats.url.as_deref(), Some("nats://a:4222,nats://b:4222"));
    }

    #[test]
    fn scalar_looking_env_values_stay_strings() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_SERVER__NODE_ID", "7"),
                ("CHAT_ZINX_CONSUL__TOKEN", "123456"),
                ("CHAT_ZINX_CONSUL__ADDR", "http://consul:8500"),
                ("CHAT_ZINX_SERVER__STATE_DIR", "1.50"),
                ("CHAT_ZINX_AUTH__TOKEN_SECRET_FILE", "true"),
                ("CHAT_ZINX_REDIS__URL", "redis://[::1]:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("7"));
        assert_eq!(c.consul.token.as_deref(), Some("123456"));
        assert_eq!(c.server.state_dir, Some(PathBuf::from("1.50")));
        assert_eq!(c.auth.token_secret_file, Some(PathBuf::from("true")));
        assert_eq!(c.redis.url.as_deref(), Some("redis://[::1]:6379"));
    }

    #[test]
    fn unquoted_scalars_in_file_become_strings() {
        let f = file("[server]\nnode_id = 7\n[consul]\ntoken = 123456\n");
        let c = check_file(f.path()).unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("7"));
        assert_eq!(c.consul.token.as_deref(), Some("123456"));
    }

    #[test]
    fn numbers_from_env_strings() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_PROTOCOL__MAX_BODY", "4096"),
                ("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "50"),
                ("CHAT_ZINX_SERVER__MAX_CONNECTIONS", "12"),
                ("CHAT_ZINX_OFFLINE__DIRECT_BACKLOG", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.protocol.max_body, 4096);
        assert_eq!(c.protocol.rate_per_sec, 50);
        assert_eq!(c.server.max_connections, 12);
        assert_eq!(c.offline.direct_backlog, 0);
    }

    #[test]
    fn durations_from_file_and_env() {
        let f = file("[protocol]\nidle_timeout = \"180s\"\nwrite_timeout = \"2m\"\n[auth]\ntoken_ttl = \"1h 30m\"\n");
        let c = load_from(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.protocol.idle_timeout, Duration::from_secs(180));
        assert_eq!(c.protocol.write_timeout, Duration::from_secs(120));
        assert_eq!(c.auth.token_ttl, Duration::from_secs(5400));

        let c = load_from(
            Some(f.path()),
            env(&[
                ("CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT", "2m"),
                ("CHAT_ZINX_PROTOCOL__WRITE_TIMEOUT", "500ms"),
            ]),
        )
        .unwrap();
        assert_eq!(c.protocol.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.protocol.write_timeout, Duration::from_millis(500));
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let f = file("[server]\nlistn = \"0.0.0.0:1\"\n");
        let text = err_text(check_file(f.path()));
        assert!(text.contains("unknown key server.listn"), "{text}");
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(text.contains("did you mean server.listen?"), "{text}");
    }

    #[test]
    fn unknown_sections_and_misplaced_keys_in_file() {
        let f = file("listen = \"0.0.0.0:1\"\n[servr]\nlisten = \"0.0.0.0:1\"\n[bogus]\nx = 1\n");
        let e = check_file(f.path()).unwrap_err();
        assert_eq!(e.problems().len(), 3, "{e}");
        let text = e.to_string();
        assert!(text.starts_with("3 configuration problems:"), "{text}");
        assert!(text.contains("unknown section [servr]"), "{text}");
        assert!(text.contains("did you mean [server]?"), "{text}");
        assert!(text.contains("unknown key listen in config file"), "{text}");
        assert!(
            text.contains("did you mean server.listen? Put it in the [server] section."),
            "{text}"
        );
        assert!(text.contains("unknown section [bogus]"), "{text}");
        assert!(
            text.contains("valid sections are server, protocol"),
            "{text}"
        );
    }

    #[test]
    fn unknown_env_var_is_an_error_naming_it() {
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_SERVER__LISTN", "0.0.0.0:1")]),
        ));
        assert!(
            text.starts_with("unknown environment variable CHAT_ZINX_SERVER__LISTN"),
            "{text}"
        );
        assert!(
            text.contains("did you mean CHAT_ZINX_SERVER__LISTEN?"),
            "{text}"
        );

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_LISTEN", "0.0.0.0:1")])));
        assert!(
            text.contains("did you mean CHAT_ZINX_SERVER__LISTEN?"),
            "{text}"
        );

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_SERVER____LISTEN", "x")])));
        assert!(text.contains("names no configuration key"), "{text}");

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_SERVER", "x")])));
        assert!(
            text.contains("names the section server, not a key"),
            "{text}"
        );
        assert!(!text.contains("did you mean"), "{text}");

        let text = err_text(load_from(None, env(&[("CHAT_ZINX_ZZZ__QQQ", "x")])));
        assert!(text.contains("valid sections are"), "{text}");
    }

    #[test]
    fn ignored_and_foreign_env_vars() {
        let c = load_from(
            None,
            env(&[
                ("CHAT_ZINX_CONFIG", "/somewhere.toml"),
                ("CHATZINX_SERVER__LISTEN", "garbage"),
                ("RUST_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn bad_env_value_names_key_variable_value_and_expectation() {
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "abc")]),
        ));
        assert_eq!(
            text,
            "invalid value for protocol.max_body from environment variable \
             CHAT_ZINX_PROTOCOL__MAX_BODY: \"abc\" — expected an integer number of bytes \
             between 64 and 16777216"
        );
        // Out of range is reported the same way, by semantic validation.
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "10")]),
        ));
        assert!(
            text.starts_with(
                "invalid value for protocol.max_body from environment variable \
                 CHAT_ZINX_PROTOCOL__MAX_BODY: \"10\" — expected"
            ),
            "{text}"
        );
        let text = err_text(load_from(
            None,
            env(&[("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "-3")]),
        ));
        assert!(
            text.contains("protocol.rate_per_sec from environment variable"),
            "{text}"
        );
    }

    #[test]
    fn bad_file_values_name_key_and_file() {
        let f = file("[protocol]\nidle_timeout = \"soon\"\n");
        let text = err_text(check_file(f.path()));
        let path = f.path().display().to_string();
        assert_eq!(
            text,
            format!(
                "invalid value for protocol.idle_timeout in config file {path}: \"soon\" — \
                 expected a duration of at least 1s such as \"180s\", \"2m\" or \"1h 30m\""
            )
        );

        let f = file("[protocol]\nidle_timeout = 180\n");
        let text = err_text(check_file(f.path()));
        assert!(
            text.contains("protocol.idle_timeout in config file"),
            "{text}"
        );

        let f = file("[protocol]\nidle_timeout = \"500ms\"\nwrite_queue = 2\n[server]\nlisten = \"localhost\"\n");
        let e = check_file(f.path()).unwrap_err();
        let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "protocol.idle_timeout",
                "protocol.write_queue"
            ]
        );
        assert!(e
            .problems()
            .iter()
            .all(|p| p.layer == Layer::File(f.path().to_path_buf())));

        let f = file("server = \"x\"\n");
        let text = err_text(check_file(f.path()));
        assert!(
            text.contains("invalid value for server in config file"),
            "{text}"
        );
        assert!(
            text.contains("expected a [server] table with the keys listen, http_listen"),
            "{text}"
        );
    }

    #[test]
    fn semantic_errors_are_attributed_to_the_setting_layer() {
        let f = file("[session]\nmax_devices = 3\n[auth]\nhash_concurrency = 0\n");
        let e = load_from(
            Some(f.path()),
            env(&[("CHAT_ZINX_SESSION__MAX_DEVICES", "0")]),
        )
        .unwrap_err();
        let problems = e.problems();
        assert_eq!(problems.len(), 2, "{e}");
        assert_eq!(problems[0].key, "auth.hash_concurrency");
        assert_eq!(problems[0].layer, Layer::File(f.path().to_path_buf()));
        assert_eq!(problems[1].key, "session.max_devices");
        assert_eq!(
            problems[1].layer,
            Layer::Env("CHAT_ZINX_SESSION__MAX_DEVICES".into())
        );
    }

    #[test]
    fn env_var_names_are_case_insensitive_and_reported_as_given() {
        let c = load_from(None, env(&[("chat_zinx_log__level", "debug")])).unwrap();
        assert_eq!(c.log.level, "debug");
        let text = err_text(load_from(None, env(&[("chat_zinx_log__level", "inof")])));
        assert!(
            text.contains("from environment variable chat_zinx_log__level: \"inof\""),
            "{text}"
        );
    }

    #[test]
    fn empty_env_value_unsets_optional_key() {
        let f = file("[nats]\nurl = \"nats://127.0.0.1:4222\"\n");
        let c = load_from(Some(f.path()), env(&[("CHAT_ZINX_NATS__URL", "")])).unwrap();
        assert_eq!(c.nats.url, None);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let e = load_from(Some(&path), env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("check the --config path"), "{text}");
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let f = file("[server\nlisten = 1\n");
        let e = check_file(f.path()).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }));
        assert!(e.to_string().contains("is not valid TOML"), "{e}");
    }

    #[test]
    fn semantic_rules() {
        let ok = |pairs: &[(&str, &str)]| load_from(None, env(pairs)).is_ok();
        assert!(ok(&[("CHAT_ZINX_SERVER__LISTEN", "[::]:0")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__LISTEN", "localhost:9000")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__HTTP_LISTEN", "127.0.0.1")]));
        assert!(ok(&[(
            "CHAT_ZINX_SERVER__ADVERTISE_ADDR",
            "chat-1.example.com:9000"
        )]));
        assert!(ok(&[("CHAT_ZINX_SERVER__ADVERTISE_ADDR", "[::1]:9000")]));
        assert!(!ok(&[(
            "CHAT_ZINX_SERVER__ADVERTISE_ADDR",
            "chat-1.example.com"
        )]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__ADVERTISE_ADDR", "host:0")]));
        assert!(ok(&[("CHAT_ZINX_SERVER__NODE_ID", "3f2a-node_1")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__NODE_ID", "node.1")]));
        assert!(ok(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "64")]));
        assert!(ok(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "16777216")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__MAX_BODY", "16777217")]));
        assert!(ok(&[("CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT", "1s")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__IDLE_TIMEOUT", "999ms")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__WRITE_TIMEOUT", "0s")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__WRITE_QUEUE", "7")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__RATE_PER_SEC", "0")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__RATE_BURST", "0")]));
        assert!(!ok(&[("CHAT_ZINX_PROTOCOL__RATE_BURST", "4294967296")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__MAX_CONNECTIONS", "0")]));
        assert!(ok(&[("CHAT_ZINX_SERVER__DRAIN_WINDOW", "1s")]));
        assert!(ok(&[("CHAT_ZINX_SERVER__DRAIN_WINDOW", "1h")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__DRAIN_WINDOW", "0s")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__DRAIN_WINDOW", "2h")]));
        assert!(ok(&[("CHAT_ZINX_LOG__FORMAT", "journald")]));
        assert!(ok(&[("CHAT_ZINX_LOG__FORMAT", "text")]));
        assert!(!ok(&[("CHAT_ZINX_LOG__FORMAT", "json")]));
        assert!(ok(&[("CHAT_ZINX_LOG__LEVEL", "info,chat_zinx=debug")]));
        assert!(ok(&[("CHAT_ZINX_LOG__LEVEL", "warn")]));
        assert!(!ok(&[("CHAT_ZINX_LOG__LEVEL", "chat_zinx=loud")]));
        assert!(!ok(&[("CHAT_ZINX_LOG__LEVEL", "warning")]));
        assert!(!ok(&[("CHAT_ZINX_LOG__LEVEL", " ")]));
        assert!(ok(&[("CHAT_ZINX_REDIS__URL", "rediss://:pw@redis:6380/0")]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__URL", "http://redis:6379")]));
        assert!(ok(&[(
            "CHAT_ZINX_REDIS__URL",
            "redis-sentinel://s1:26379?sentinelServiceName=main&node=s2:26379"
        )]));
        assert!(ok(&[(
            "CHAT_ZINX_REDIS__URL",
            "redis-cluster://n1:6379?node=n2:6379"
        )]));
        assert!(ok(&[
            ("CHAT_ZINX_REDIS__PRESENCE_TTL", "1s"),
            ("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "500ms")
        ]));
        assert!(!ok(&[
            ("CHAT_ZINX_REDIS__PRESENCE_TTL", "999ms"),
            ("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "100ms")
        ]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__PRESENCE_TTL", "19s")]));
        assert!(ok(&[("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "15s")]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "16s")]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__REFRESH_INTERVAL", "50ms")]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__COMMAND_TIMEOUT", "0s")]));
        assert!(!ok(&[("CHAT_ZINX_REDIS__COMMAND_TIMEOUT", "61s")]));
        assert!(!ok(&[(
            "CHAT_ZINX_NATS__URL",
            "nats://a:4222,,nats://b:4222"
        )]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__ADDR", "127.0.0.1:8500")]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__ADDR", "https://consul.service")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__ADDR", "consul")]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__SERVICE", "chat-zinx-eu")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__SERVICE", "chat zinx")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__SERVICE", "")]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__CHECK_TTL", "1s")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__CHECK_TTL", "500ms")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__CHECK_TTL", "2h")]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__DEREGISTER_AFTER", "90s")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__DEREGISTER_AFTER", "30s")]));
        assert!(ok(&[("CHAT_ZINX_CONSUL__KV_PREFIX", "chat/eu/settings/")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__KV_PREFIX", "chat/settings")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__KV_PREFIX", "/chat/")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__KV_PREFIX", "chat settings/")]));
        assert!(!ok(&[("CHAT_ZINX_CONSUL__REQUEST_TIMEOUT", "10ms")]));
    }

    #[test]
    fn redaction_hides_secrets_but_shows_paths() {
        let mut c = Config::default();
        c.consul.token = Some("s3cr3t-token".into());
        c.redis.url = Some("redis://:hunter2@redis:6379/0".into());
        c.nats.url =
            Some("nats://alice:pw1@n1:4222,nats://tok3n@n2:4222,nats://n3:4222?token=abc".into());
        c.auth.token_secret_file = Some("/run/secrets/token".into());
        let out = c.to_redacted_toml();
        for secret in ["s3cr3t-token", "hunter2", "pw1", "tok3n", "abc"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("token = \"***\""), "{out}");
        assert!(out.contains("url = \"redis://:***@redis:6379/0\""), "{out}");
        assert!(
            out.contains("nats://alice:***@n1:4222,nats://***@n2:4222,nats://n3:4222?token=***"),
            "{out}"
        );
        assert!(
            out.contains("token_secret_file = \"/run/secrets/token\""),
            "{out}"
        );
        assert!(out.contains("token_ttl = \"7days\""), "{out}");
        assert!(out.contains("# node_id = (unset)"), "{out}");
    }

    #[test]
    fn redacted_toml_lists_every_key_and_round_trips() {
        let f = file(EXAMPLE_TOML);
        let mut c = check_file(f.path()).unwrap();
        c.consul.token = None;
        let out = c.to_redacted_toml();
        for info in KEYS {
            let (_, leaf) = split_key(info.key);
            assert!(
                out.contains(&format!("{leaf} = ")),
                "{} missing:\n{out}",
                info.key
            );
        }
        let g = file(&out);
        assert_eq!(check_file(g.path()).unwrap(), c);

        let out = Config::default().to_redacted_toml();
        let g = file(&out);
        assert_eq!(check_file(g.path()).unwrap(), Config::default());
    }

    #[test]
    fn example_toml_sets_every_key_and_shows_defaults() {
        let f = file(EXAMPLE_TOML);
        let c = check_file(f.path()).unwrap();
        let table: toml::Table = toml::from_str(EXAMPLE_TOML).unwrap();
        let mut example_keys = Vec::new();
        for (section, keys) in &table {
            for key in keys.as_table().unwrap().keys() {
                example_keys.push(format!("{section}.{key}"));
            }
        }
        let mut known: Vec<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        example_keys.sort();
        known.sort();
        assert_eq!(example_keys, known);

        // Every non-optional key shows its default.
        let mut d = Config::default();
        d.server.node_id = c.server.node_id.clone();
        d.server.state_dir = c.server.state_dir.clone();
        d.server.advertise_addr = c.server.advertise_addr.clone();
        d.auth.token_secret_file = c.auth.token_secret_file.clone();
        d.nats = c.nats.clone();
        d.redis = c.redis.clone();
        d.consul.addr = c.consul.addr.clone();
        d.consul.token = c.consul.token.clone();
        assert_eq!(c, d);
        assert!(c.server.node_id.is_some() && c.consul.token.is_some());
    }

    #[test]
    fn key_table_matches_the_structs() {
        let f = file(EXAMPLE_TOML);
        let c = check_file(f.path()).unwrap();
        let table = toml::Table::try_from(&c).unwrap();
        let mut fields = Vec::new();
        for (section, keys) in &table {
            for key in keys.as_table().unwrap().keys() {
                fields.push(format!("{section}.{key}"));
            }
        }
        let mut known: Vec<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        fields.sort();
        known.sort();
        assert_eq!(fields, known);
        // Only these keys are redacted by name; review when adding one.
        let secret: Vec<&str> = KEYS
            .iter()
            .map(|k| k.key)
            .filter(|k| is_secret_name(split_key(k).1))
            .collect();
        assert_eq!(secret, ["consul.token"]);
    }

    #[test]
    fn changed_keys_names_what_differs() {
        let a = Config::default();
        assert!(changed_keys(&a, &a).is_empty());
        let mut b = a.clone();
        b.log.level = "debug".into();
        b.server.listen = "127.0.0.1:1".into();
        b.consul.token = Some("t".into());
        assert_eq!(
            changed_keys(&a, &b),
            ["server.listen", "log.level", "consul.token"]
        );
    }

    #[test]
    fn env_var_name_mapping() {
        assert_eq!(
            env_var_name("protocol.max_body"),
            "CHAT_ZINX_PROTOCOL__MAX_BODY"
        );
        assert_eq!(
            resolve_path(Some(Path::new("/x.toml"))),
            Some(PathBuf::from("/x.toml"))
        );
    }
}
