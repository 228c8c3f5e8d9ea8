//! The key table: the one declaration of every configuration key. Each entry says what the key
//! accepts, whether a SIGHUP applies a changed value, and which live setting (Consul KV) can
//! override it. From it come the file and environment key checks, the error messages,
//! [`RELOADABLE_KEYS`], the live settings (`super::live`), `changed_keys` and the redacted dump;
//! tests hold the structs, the example file, `docs/configuration.md` and the NixOS module's
//! typed options (`nix/settings.toml`) to it.
//!
//! Adding a key: an entry here, its field in `super::sections` (with its default and its rule in
//! `super::validate`), its line in `super::example` and its row in `docs/configuration.md`; the
//! tests name whatever is missing.

use std::time::Duration;

use super::live::{parse_duration, parse_min, LiveKey};
use super::validate::{MAX_MAX_BODY, MIN_MAX_BODY};

/// One configuration key: what it accepts (as said in error messages) and how a running node
/// takes a new value.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// Dotted key, `section.name`.
    pub key: &'static str,
    /// What a valid value looks like, phrased to follow "expected".
    pub expected: &'static str,
    /// A SIGHUP (`systemctl reload`) applies a changed value to the running node; otherwise the
    /// change takes effect at the next start.
    pub reloadable: bool,
    /// The live setting that overrides the configured value at run time (a key under
    /// `consul.kv_prefix`), if any.
    pub live: Option<LiveKey>,
}

/// The live setting `$kv` (its key under `consul.kv_prefix`): `$parse` makes the value of
/// `LiveSettings::$field` from the text (`None`: invalid).
macro_rules! live {
    ($kv:literal, $field:ident, $parse:expr) => {
        Some(LiveKey {
            key: $kv,
            apply: |v, s| match ($parse)(v) {
                Some(x) => {
                    s.$field = Some(x);
                    true
                }
                None => false,
            },
            clear: |s| s.$field = None,
        })
    };
}

/// Every configuration key, in documentation order.
pub const KEYS: &[KeyInfo] = &[
    KeyInfo {
        key: "server.listen",
        expected: "an IP address and port such as \"0.0.0.0:9000\" or \"[::]:9000\", or \"\" (no plain \
                   listener) when tls.listen is set",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "server.http_listen",
        expected: "an IP address and port such as \"127.0.0.1:9100\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "server.node_id",
        expected: "1 to 64 letters, digits, '-' or '_' (or unset to generate one)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "server.state_dir",
        expected: "a directory path",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "server.advertise_addr",
        expected:
            "a host name or IP address with a port (1-65535) such as \"chat-1.example.com:9000\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "server.max_connections",
        expected: "an integer of at least 1",
        reloadable: true,
        live: live!("max_connections", max_connections, |v: &str| parse_min::<u64>(v, 1)),
    },
    KeyInfo {
        key: "server.max_unauthenticated",
        expected: "an integer (0: a tenth of server.max_connections, at least 16)",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "server.max_unauthenticated_per_address",
        expected: "an integer (0: no limit per address)",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "server.proxy_protocol_from",
        expected: "a list of IP addresses or networks (address/prefix) of trusted proxies such as \
                   [\"10.0.0.7\", \"10.1.0.0/16\"], or one string of them separated by commas \
                   (empty or unset: none)",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "server.drain_window",
        expected: "a duration between 1s and 1h such as \"10s\"",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "server.write_queue_budget",
        expected: "an integer number of bytes of at least 1048576",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "tls.listen",
        expected: "an IP address and port such as \"0.0.0.0:9443\" (unset or \"\": no TLS listener)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "tls.cert_file",
        expected: "the path of a PEM certificate chain (needed when tls.listen is set)",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "tls.key_file",
        expected: "the path of a PEM private key (needed when tls.listen is set)",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "tls.handshake_timeout",
        expected: "a duration between 100ms and 5m such as \"10s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "protocol.max_body",
        expected: "an integer number of bytes between 64 and 16777216",
        reloadable: true,
        live: live!("max_body", max_body, |v: &str| parse_min::<usize>(v, MIN_MAX_BODY).filter(|n| *n <= MAX_MAX_BODY)),
    },
    KeyInfo {
        key: "protocol.idle_timeout",
        expected: "a duration of at least 1s such as \"180s\", \"2m\" or \"1h 30m\"",
        reloadable: true,
        live: live!("idle_timeout", idle_timeout, |v: &str| parse_duration(v, Duration::from_secs(1))),
    },
    KeyInfo {
        key: "protocol.login_timeout",
        expected: "a duration of at least 1s such as \"180s\" or \"3m\"",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "protocol.write_queue",
        expected: "an integer number of frames of at least 8",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "protocol.write_queue_bytes",
        expected: "an integer number of bytes of at least 65536",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "protocol.max_reply_bytes",
        expected: "an integer number of bytes of at least 16384",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "protocol.write_timeout",
        expected: "a non-zero duration such as \"10s\" or \"500ms\"",
        reloadable: true,
        live: live!("write_timeout", write_timeout, |v: &str| parse_duration(v, Duration::from_millis(1))),
    },
    KeyInfo {
        key: "protocol.rate_per_sec",
        expected: "an integer number of frames per second between 1 and 4294967295",
        reloadable: true,
        live: live!("rate_per_sec", rate_per_sec, |v: &str| parse_min::<u32>(v, 1)),
    },
    KeyInfo {
        key: "protocol.rate_burst",
        expected: "an integer number of frames between 1 and 4294967295",
        reloadable: true,
        live: live!("rate_burst", rate_burst, |v: &str| parse_min::<u32>(v, 1)),
    },
    KeyInfo {
        key: "auth.token_secret_file",
        expected: "a file path",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "auth.token_ttl",
        expected: "a duration of at least 1s such as \"7d\" or \"12h\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "auth.hash_concurrency",
        expected: "an integer of at least 1",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "admin.token_file",
        expected: "a path to a file holding the admin API's bearer token, readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "session.max_devices",
        expected: "an integer of at least 1",
        reloadable: true,
        live: live!("max_devices", max_devices, |v: &str| parse_min::<usize>(v, 1)),
    },
    KeyInfo {
        key: "offline.group_backlog",
        expected: "a non-negative integer number of messages",
        reloadable: true,
        live: live!("group_backlog", group_backlog, |v: &str| v.parse::<usize>().ok()),
    },
    KeyInfo {
        key: "offline.direct_backlog",
        expected: "a non-negative integer number of messages (0 = all)",
        reloadable: true,
        live: live!("direct_backlog", direct_backlog, |v: &str| v.parse::<usize>().ok()),
    },
    KeyInfo {
        key: "log.level",
        expected: "a tracing filter such as \"info\" or \"info,chat_zinx=debug\"",
        reloadable: true,
        live: None,
    },
    KeyInfo {
        key: "log.format",
        expected: "\"auto\", \"journald\" or \"text\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.url",
        expected: "one or more NATS URLs separated by commas, such as \"nats://127.0.0.1:4222\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.stream",
        expected: "a stream name of letters, digits, '-' and '_' such as \"CHAT_ZINX\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.replicas",
        expected: "1 or 3 (3 needs a NATS cluster of at least 3 servers)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.max_age",
        expected: "a duration such as \"365days\", or \"0s\" to keep messages forever",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.duplicate_window",
        expected: "a duration of at least 1s such as \"10m\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.request_timeout",
        expected: "a duration of at least 100ms such as \"5s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.reconnect_wait",
        expected: "a duration from 0s to the request timeout such as \"250ms\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.creds_file",
        expected: "a path to a NATS credentials file (user JWT and NKey seed), readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.nkey_file",
        expected: "a path to a file holding an NKey seed (SU...), readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.user",
        expected: "a NATS user name (its password goes in nats.password_file)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.password_file",
        expected: "a path to a file holding the password of nats.user, readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.token_file",
        expected: "a path to a file holding a NATS authentication token, readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.tls.ca_file",
        expected: "a path to a PEM file of the CA certificate(s) of the NATS servers",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.tls.cert_file",
        expected: "a path to a PEM file of this node's client certificate (set with nats.tls.key_file)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "nats.tls.key_file",
        expected: "a path to a PEM file of the private key of nats.tls.cert_file, readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.url",
        expected: "a redis://, rediss://, redis-sentinel://, redis-cluster:// or redis+unix:// URL \
                   such as \"redis://127.0.0.1:6379\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.presence_ttl",
        expected: "a duration of at least 1s such as \"30s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.refresh_interval",
        expected: "a duration of at least 100ms and at most half of redis.presence_ttl, such as \"10s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.command_timeout",
        expected: "a duration between 10ms and 60s such as \"2s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.username",
        expected: "a Redis ACL user name (its password goes in redis.password_file)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.password_file",
        expected: "a path to a file holding the Redis password, readable by its owner only",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "redis.tls.ca_file",
        expected: "a path to a PEM file of the CA certificate(s) of Redis (with a rediss:// URL)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.addr",
        expected: "a Consul HTTP address such as \"http://127.0.0.1:8500\" or \"127.0.0.1:8500\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.token",
        expected: "a Consul ACL token string",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.token_file",
        expected: "a path to a file holding the Consul ACL token, readable by its owner only (instead of consul.token)",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.service",
        expected: "a service name of 1 to 63 letters, digits and '-' such as \"chat-zinx\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.check_ttl",
        expected: "a duration between 1s and 1h such as \"15s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.deregister_after",
        expected: "a duration of at least 1m (Consul's minimum) such as \"1m\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.kv_prefix",
        expected: "a Consul KV prefix ending with '/', without spaces or a leading '/', such as \"chat-zinx/settings/\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.request_timeout",
        expected: "a duration of at least 100ms such as \"5s\"",
        reloadable: false,
        live: None,
    },
    KeyInfo {
        key: "consul.tls.ca_file",
        expected: "a path to a PEM file of the CA certificate(s) of Consul (with an https:// consul.addr)",
        reloadable: false,
        live: None,
    },
];

/// Keys a SIGHUP applies to the running node (the entries of [`KEYS`] marked `reloadable`), in
/// [`KEYS`] order; a change to any other key needs a restart.
pub const RELOADABLE_KEYS: &[&str] = &reloadable_keys::<{ count_reloadable() }>();

const fn count_reloadable() -> usize {
    let (mut i, mut n) = (0, 0);
    while i < KEYS.len() {
        if KEYS[i].reloadable {
            n += 1;
        }
        i += 1;
    }
    n
}

const fn reloadable_keys<const N: usize>() -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < KEYS.len() {
        if KEYS[i].reloadable {
            out[n] = KEYS[i].key;
            n += 1;
        }
        i += 1;
    }
    out
}

/// The key names (without section) of `section`, in documentation order.
pub(super) fn section_keys(section: &str) -> Vec<&'static str> {
    KEYS.iter()
        .map(|k| split_key(k.key))
        .filter(|(s, _)| *s == section)
        .map(|(_, leaf)| leaf)
        .collect()
}

pub(super) fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let s = split_key(k.key).0;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

pub(super) fn split_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, ""))
}

pub(super) fn key_info(key: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.key == key)
}

/// Whether `key` is a table holding keys (`nats.tls` of `nats.tls.ca_file`).
pub(super) fn is_subtable(key: &str) -> bool {
    KEYS.iter().any(|k| {
        k.key
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The value at a dotted path (`leaf` or `sub.leaf`) of a table.
pub(super) fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::redact::is_secret_name;
    use crate::config::testutil::file;
    use crate::config::{check_file, EXAMPLE_TOML};

    #[test]
    fn key_table_matches_the_structs() {
        let f = file(EXAMPLE_TOML);
        let c = check_file(f.path()).unwrap();
        let table = toml::Table::try_from(&c).unwrap();
        fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in t {
                let full = format!("{prefix}.{key}");
                match value.as_table() {
                    Some(sub) => flatten(&full, sub, out),
                    None => out.push(full),
                }
            }
        }
        let mut fields = Vec::new();
        for (section, keys) in &table {
            flatten(section, keys.as_table().unwrap(), &mut fields);
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
    fn reloadable_keys_are_the_marked_entries_and_live_ones_reload() {
        let marked: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.reloadable)
            .map(|k| k.key)
            .collect();
        assert_eq!(RELOADABLE_KEYS, marked);
        for k in KEYS {
            assert!(
                k.live.is_none() || k.reloadable,
                "{} has a live setting but is not reloadable: the node takes live values the \
                 way a reload does, so mark it reloadable",
                k.key
            );
        }
        let mut keys: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
        let mut live: Vec<&str> = KEYS.iter().filter_map(|k| k.live).map(|l| l.key).collect();
        let (n, m) = (keys.len(), live.len());
        keys.sort_unstable();
        keys.dedup();
        live.sort_unstable();
        live.dedup();
        assert_eq!(
            (keys.len(), live.len()),
            (n, m),
            "a key or a live key is declared twice"
        );
    }
}
