//! Semantic validation: the rule of each key, checked once the layers are merged; a broken rule
//! is reported with the key, the layer that set it, the value and the key's `expected`.

use std::net::SocketAddr;
use std::time::Duration;

use figment::Figment;

use super::env::strip_prefix_ignore_case;
use super::error::{problems_to_result, ConfigError, Layer, Problem, ProblemKind};
use super::keys::key_info;
use super::load::{defaults_layer, layer_of};
use super::redact::render_figment_value;
use super::suggest::edit_distance;
use super::Config;

/// Smallest accepted `protocol.max_body`.
pub const MIN_MAX_BODY: usize = 64;
/// Largest accepted `protocol.max_body` (16 MiB).
pub const MAX_MAX_BODY: usize = 16 * 1024 * 1024;

impl Config {
    /// Checks the semantic rules (addresses, ranges, log filter) of an already built config.
    /// Problems are attributed to the built-in defaults layer; [`load`](super::load) attributes
    /// them to the layer that set the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let figment = Figment::from(defaults_layer(self));
        problems_to_result(validate(self, &figment))
    }
}

pub(super) fn validate(c: &Config, figment: &Figment) -> Vec<Problem> {
    let mut bad: Vec<&'static str> = Vec::new();
    let mut check = |key: &'static str, ok: bool| {
        if !ok {
            bad.push(key);
        }
    };
    let s = &c.server;
    let plain_on = !s.listen.is_empty();
    let tls_on = c.tls.listen.is_some();
    // An empty server.listen turns the plain listener off; one of the two must listen.
    check(
        "server.listen",
        if plain_on {
            s.listen.parse::<SocketAddr>().is_ok()
        } else {
            tls_on
        },
    );
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
    check(
        "server.proxy_protocol_from",
        s.proxy_protocol_from
            .iter()
            .flatten()
            .all(|n| parse_network(n).is_some()),
    );
    check("server.max_connections", s.max_connections >= 1);
    check("server.write_queue_budget", s.write_queue_budget >= 1 << 20);
    check(
        "server.drain_window",
        (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.drain_window),
    );
    let t = &c.tls;
    check(
        "tls.listen",
        t.listen
            .as_deref()
            .is_none_or(|l| l.parse::<SocketAddr>().is_ok()),
    );
    let file_ok = |f: &Option<std::path::PathBuf>| match f {
        Some(path) => !path.as_os_str().is_empty(),
        None => !tls_on,
    };
    check("tls.cert_file", file_ok(&t.cert_file));
    check("tls.key_file", file_ok(&t.key_file));
    check(
        "tls.handshake_timeout",
        (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&t.handshake_timeout),
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
    check(
        "protocol.login_timeout",
        p.login_timeout >= Duration::from_secs(1),
    );
    check("protocol.write_queue", p.write_queue >= 8);
    check(
        "protocol.write_queue_bytes",
        p.write_queue_bytes >= 64 << 10,
    );
    check("protocol.max_reply_bytes", p.max_reply_bytes >= 16 << 10);
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
        "nats.reconnect_wait",
        c.nats.reconnect_wait <= c.nats.request_timeout,
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

/// An IP address (`10.0.0.7`, `2001:db8::7`: that address alone) or a network
/// (`10.0.0.0/24`, `2001:db8::/64`) of `server.proxy_protocol_from`: the address and the
/// prefix length.
pub fn parse_network(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) if !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()) => b.parse().ok()?,
        Some(_) => return None,
    };
    (bits <= max).then_some((ip, bits))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_from;
    use crate::config::testutil::{env, file};

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
    fn proxy_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(parse_network("10.0.0.7"), Some((ip("10.0.0.7"), 32)));
        assert_eq!(parse_network("10.1.0.0/16"), Some((ip("10.1.0.0"), 16)));
        assert_eq!(parse_network("2001:db8::/64"), Some((ip("2001:db8::"), 64)));
        assert_eq!(parse_network("::1"), Some((ip("::1"), 128)));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "lb-1",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(parse_network(bad), None, "{bad}");
        }
        let ok =
            |v: &str| load_from(None, env(&[("CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM", v)])).is_ok();
        assert!(ok("10.0.0.7, 10.1.0.0/16 2001:db8::/64"));
        assert!(ok(""));
        assert!(!ok("10.0.0.7,lb-1"));
    }

    #[test]
    fn semantic_rules() {
        let ok = |pairs: &[(&str, &str)]| load_from(None, env(pairs)).is_ok();
        assert!(ok(&[("CHAT_ZINX_SERVER__LISTEN", "[::]:0")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__LISTEN", "localhost:9000")]));
        assert!(!ok(&[("CHAT_ZINX_SERVER__HTTP_LISTEN", "127.0.0.1")]));
        // No listener at all is refused; TLS alone is fine, with its certificate and key.
        assert!(!ok(&[("CHAT_ZINX_SERVER__LISTEN", "")]));
        let tls = [
            ("CHAT_ZINX_TLS__LISTEN", "127.0.0.1:9443"),
            (
                "CHAT_ZINX_TLS__CERT_FILE",
                "/run/credentials/chat-zinx/tls-cert",
            ),
            (
                "CHAT_ZINX_TLS__KEY_FILE",
                "/run/credentials/chat-zinx/tls-key",
            ),
        ];
        assert!(ok(&tls));
        assert!(ok(&[
            tls[0],
            tls[1],
            tls[2],
            ("CHAT_ZINX_SERVER__LISTEN", "")
        ]));
        assert!(!ok(&[tls[0], tls[1]]), "a TLS listener needs its key");
        assert!(
            !ok(&[tls[0], tls[2]]),
            "a TLS listener needs its certificate"
        );
        assert!(!ok(&[
            ("CHAT_ZINX_TLS__LISTEN", "localhost:9443"),
            tls[1],
            tls[2]
        ]));
        assert!(!ok(&[
            tls[0],
            tls[1],
            tls[2],
            ("CHAT_ZINX_TLS__HANDSHAKE_TIMEOUT", "0s")
        ]));
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
}
