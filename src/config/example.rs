//! The example configuration file (`docs/config.example.toml`).

/// A config file setting every key, with a comment for each; it passes
/// [`check_file`](super::check_file).
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
# Connections that have not logged in, at most (0 = a tenth of max_connections, at least 16).
# The rest of max_connections is left for logged-in users; a connection past it is told so
# (99 code 15) and closed at once.
max_unauthenticated = 0
# Connections not logged in from one address (IPv6: one /64) at most; 0 = no limit. Loopback
# is not limited per address. Behind a load balancer, trust it with proxy_protocol_from (below)
# so that this counts each client's address, not the balancer's.
max_unauthenticated_per_address = 64
# Trusted proxies (IP addresses or networks): a connection from one of them must start with a
# PROXY protocol header (v2, or v1 text; HAProxy's send-proxy-v2) and the client's address in
# it is the connection's (limits and throttles per address, logs); a connection from one of
# them without a valid header is closed. Connections from elsewhere are served as they are.
# Also one string separated by commas (CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM=10.0.0.7,...).
# Unset or empty = none (the default).
proxy_protocol_from = ["10.0.0.7", "10.1.0.0/16"]
# How long a graceful shutdown (SIGTERM) may take to drain the connections (1s to 1h).
# Keep the unit's TimeoutStopSec above it (systemd/chat-zinx.service).
drain_window = "10s"
# Bytes queued towards all connections together (at least 1048576). Past it, the connections
# holding the most unread data are closed (99 code 9) until the node is under it again.
write_queue_budget = 536870912

[tls]
# Address of the TLS chat listener (the same protocol inside TLS), IP and port, beside the
# plain one. Unset or "" (the default) = no TLS listener. server.listen = "" leaves only
# this one.
listen = "0.0.0.0:9443"
# PEM certificate chain (the node's certificate first) and its PEM private key; needed when
# listen is set. Both are read again on SIGHUP (certificate rotation, no connection dropped);
# a pair that does not load is refused and the running one stays.
cert_file = "/run/credentials/chat-zinx.service/tls_cert"
key_file = "/run/credentials/chat-zinx.service/tls_key"
# A TLS handshake not finished within this is dropped (100ms to 5m).
handshake_timeout = "10s"

[protocol]
# Largest inbound frame body in bytes (64 to 16777216).
max_body = 8192
# A connection with no inbound frame for this long is closed (at least 1s).
idle_timeout = "3m"
# A connection that has not logged in this long after it connected (or logged out) is closed
# (99 code 16), pings or not (at least 1s). The original client logs in when its user types
# /login and sends no ping before: the original server dropped it after 3 to 4 minutes.
login_timeout = "3m"
# Frames queued towards one connection before it counts as a slow consumer (at least 8).
write_queue = 256
# Bytes queued towards one connection (at least 65536). Replies may fill half of it (the
# server stops reading the connection meanwhile); a push past it disconnects the slow reader.
write_queue_bytes = 4194304
# Bytes of one history or sync reply (at least 16384; the first item always goes). A longer
# page is cut there: the client pages on (has_more, last_id, cursor).
max_reply_bytes = 1048576
# A connection whose socket accepts no bytes for this long is disconnected.
write_timeout = "10s"
# Sustained inbound frames per second per connection (token bucket rate, at least 1).
rate_per_sec = 200
# Inbound frame burst per connection (token bucket size, at least 1).
rate_burst = 400

[auth]
# File holding the token signing secret (created whole, mode 0600, if missing).
# Unset = with nats.url, one secret for the cluster kept in NATS JetStream (the
# first node creates it); without, state_dir/token_secret, generated once.
token_secret_file = "/run/secrets/chat-zinx-token-secret"
# Lifetime of login tokens (at least 1s).
token_ttl = "7days"
# Password hashes computed at once (each Argon2id hash takes ~19 MiB for tens of ms).
hash_concurrency = 4

[admin]
# File holding the bearer token of the admin API on http_listen (/admin/...: sessions, kick,
# revoke tokens, drain), mode 0600/0400. Unset = the admin API is off.
token_file = "/run/credentials/chat-zinx.service/admin-token"

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
# While the NATS connection is down, a request waits this long for it to come back, then
# the client gets a "try again" error.
reconnect_wait = "250ms"
# Authentication, at most one way; every secret is in a file readable by its owner only
# (mode 0600 or 0400), read at start (systemd credentials: /run/credentials/<unit>/...).
# A password or token written into url in this file is refused: use these keys.
# Credentials file of an NATS account user (user JWT and NKey seed, as nsc writes it).
creds_file = "/run/credentials/chat-zinx.service/nats-creds"
# File holding an NKey seed (SU...).
nkey_file = "/run/credentials/chat-zinx.service/nats-nkey"
# User name, and the file holding its password.
user = "chat-zinx"
password_file = "/run/credentials/chat-zinx.service/nats-password"
# File holding an authentication token.
token_file = "/run/credentials/chat-zinx.service/nats-token"

[nats.tls]
# CA certificate(s) (PEM) the NATS servers' certificates must chain to. Set = TLS on (also
# with tls:// URLs, which verify against the system's roots when this is unset).
ca_file = "/etc/chat-zinx/nats-ca.pem"
# This node's client certificate (PEM chain) and key, for servers that verify clients.
cert_file = "/etc/chat-zinx/nats-client.pem"
key_file = "/run/credentials/chat-zinx.service/nats-client-key"

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
# ACL user (unset = the default user), and the file holding the password (mode 0600/0400).
# A password written into url in this file is refused: use password_file.
username = "chat-zinx"
password_file = "/run/credentials/chat-zinx.service/redis-password"

[redis.tls]
# CA certificate(s) (PEM) Redis's certificate must chain to, with a rediss:// URL
# (unset: the system's roots).
ca_file = "/etc/chat-zinx/redis-ca.pem"

[consul]
# Consul HTTP address. Unset = no discovery (this node only).
addr = "http://127.0.0.1:8500"
# Consul ACL token (secret; prefer CHAT_ZINX_CONSUL__TOKEN over writing it here).
token = "00000000-0000-0000-0000-000000000000"
# File holding the Consul ACL token (mode 0600/0400); instead of token, not with it.
token_file = "/run/credentials/chat-zinx.service/consul-token"
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

[consul.tls]
# CA certificate(s) (PEM) Consul's certificate must chain to, with an https:// addr
# (unset: the system's roots).
ca_file = "/etc/chat-zinx/consul-ca.pem"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::file;
    use crate::config::{check_file, Config, KEYS};

    #[test]
    fn example_toml_sets_every_key_and_shows_defaults() {
        let f = file(EXAMPLE_TOML);
        let c = check_file(f.path()).unwrap();
        let table: toml::Table = toml::from_str(EXAMPLE_TOML).unwrap();
        fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in t {
                let full = format!("{prefix}.{key}");
                match value.as_table() {
                    Some(sub) => flatten(&full, sub, out),
                    None => out.push(full),
                }
            }
        }
        let mut example_keys = Vec::new();
        for (section, keys) in &table {
            flatten(section, keys.as_table().unwrap(), &mut example_keys);
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
        d.server.proxy_protocol_from = c.server.proxy_protocol_from.clone();
        d.auth.token_secret_file = c.auth.token_secret_file.clone();
        d.admin.token_file = c.admin.token_file.clone();
        d.tls.listen = c.tls.listen.clone();
        d.tls.cert_file = c.tls.cert_file.clone();
        d.tls.key_file = c.tls.key_file.clone();
        d.nats = c.nats.clone();
        d.redis = c.redis.clone();
        d.consul.addr = c.consul.addr.clone();
        d.consul.token = c.consul.token.clone();
        d.consul.token_file = c.consul.token_file.clone();
        d.consul.tls = c.consul.tls.clone();
        assert_eq!(c, d);
        assert!(c.server.node_id.is_some() && c.consul.token.is_some());
    }
}
