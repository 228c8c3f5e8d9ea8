//! The composition root: the configuration becomes adapters, and the adapters become the
//! ports the core runs on. The only place that knows which adapter serves which port, and
//! the only place where a configuration section turns into an adapter's own settings.

use std::sync::Arc;

use anyhow::Context;

use crate::backend::link::{Guarded, Link};
use crate::backend::secret::{check_private, read_secret, Secret};
use crate::backend::{consul, memory, nats, redis};
use crate::config::{redact_urls, Config, ConsulConfig, NatsConfig, RedisConfig};
use crate::core::auth::Auth;
use crate::core::ports::{Backends, Bus, Store};
use crate::core::service::Limits;
use crate::server::ConnSettings;
use crate::telemetry::instrument::{instrument, Cluster};
use crate::telemetry::metrics::Metrics;

/// The backends the configuration asks for: NATS JetStream for store and bus when `nats.url`
/// is set, Redis presence when `redis.url` is, the Consul registry when `consul.addr` is; the
/// in-process adapters otherwise. The cluster adapters' calls are counted in `metrics`, and the
/// NATS ones fail fast while its connection is down (its [`Link`], returned for readiness).
/// The adapters the configuration names, their links, and the cluster's token secret when it
/// comes from NATS (`nats.url` set, `auth.token_secret_file` not).
pub struct Wired {
    pub backends: Backends,
    pub links: Vec<Arc<Link>>,
    pub cluster_secret: Option<Vec<u8>>,
}

pub async fn backends(config: &Config, node_id: &str, metrics: &Metrics) -> anyhow::Result<Wired> {
    let mut backends = memory::backends();
    let mut links = Vec::new();
    let mut cluster_secret = None;
    if let Some(url) = &config.redis.url {
        let access = redis_access(&config.redis)?;
        let presence = redis::RedisPresence::connect_with(
            url,
            node_id,
            presence_options(&config.redis),
            &access,
        )
        .await
        .context(
            "cannot set up Redis presence (redis.url): is redis-server running and reachable?",
        )?;
        backends.presence = Arc::new(presence);
        tracing::info!(node_id, "presence on Redis");
    } else if config.nats.url.is_some() {
        tracing::warn!(
            node_id,
            "nats.url is set but redis.url is not: presence is per node, so users on other nodes get direct messages at their next login or sync instead of live"
        );
    }
    match &config.nats.url {
        None => {
            tracing::info!(
                node_id,
                "running on in-process backends: every account and message lives in this process's memory and is lost when it stops (set nats.url to a nats-server with JetStream for durability)"
            );
        }
        Some(url) => {
            let n = &config.nats;
            let shown = redact_urls(url);
            let settings = nats_settings(n, url)?;
            let conn = nats::Nats::connect(&settings)
                .await
                .with_context(|| format!("cannot set up NATS JetStream at {shown} (nats.url): is nats-server running with JetStream enabled (-js)?"))?;
            if config.auth.token_secret_file.is_none() {
                // One secret for the whole cluster without distributing a file; a configured
                // file wins.
                let secret = conn
                    .cluster_token_secret(Auth::generate_secret())
                    .await
                    .context("cannot agree on the cluster's token secret through NATS JetStream (nats.url); set auth.token_secret_file to a file shared by every node instead")?;
                tracing::info!(
                    node_id,
                    "token secret shared by the cluster through NATS JetStream (meta bucket)"
                );
                cluster_secret = Some(secret);
            }
            let link = conn.link();
            let store: Arc<dyn Store> = Arc::new(nats::NatsStore(conn.clone()));
            let bus: Arc<dyn Bus> = Arc::new(nats::NatsBus(conn));
            backends.store = Arc::new(Guarded::new(store, link.clone()));
            backends.bus = Arc::new(Guarded::new(bus, link.clone()));
            links.push(link);
            tracing::info!(node_id, url = %shown, stream = %n.stream, "message log and accounts on NATS JetStream");
        }
    }
    if let Some(settings) = consul_settings(&config.consul)? {
        let client = consul::ConsulClient::new(&settings)
            .context("cannot set up the Consul client (consul.addr)")?;
        if let Some(e) = client.refusal(&settings.service).await {
            anyhow::bail!(
                "Consul at {} refused this node: {e}",
                redact_urls(client.base_url())
            );
        }
        let registry = consul::ConsulRegistry::new(&settings)
            .context("cannot set up the Consul client (consul.addr)")?;
        backends.registry = Arc::new(registry);
        tracing::info!(node_id, addr = %redact_urls(&settings.base_url), service = %settings.service, "node registry and live settings on Consul");
    }
    let cluster = Cluster {
        nats: config.nats.url.is_some(),
        redis: config.redis.url.is_some(),
        consul: config.consul.addr.is_some(),
    };
    Ok(Wired {
        backends: instrument(backends, metrics, cluster),
        links,
        cluster_secret,
    })
}

/// The settings of the NATS backends from `[nats]`, with the secrets read from their files
/// (a file other users can read is refused). At most one way to authenticate may be set.
pub fn nats_settings(n: &NatsConfig, url: &str) -> anyhow::Result<nats::NatsSettings> {
    let ways: Vec<&str> = [
        (n.creds_file.is_some(), "nats.creds_file"),
        (n.nkey_file.is_some(), "nats.nkey_file"),
        (
            n.user.is_some() || n.password_file.is_some(),
            "nats.user/nats.password_file",
        ),
        (n.token_file.is_some(), "nats.token_file"),
    ]
    .into_iter()
    .filter_map(|(set, keys)| set.then_some(keys))
    .collect();
    if ways.len() > 1 {
        anyhow::bail!(
            "{} are set: NATS takes one way to authenticate; unset all but one",
            ways.join(" and ")
        );
    }
    let auth = if let Some(path) = &n.creds_file {
        nats::NatsAuth::Credentials(read_secret("nats.creds_file", path)?)
    } else if let Some(path) = &n.nkey_file {
        nats::NatsAuth::NKey(read_secret("nats.nkey_file", path)?)
    } else if let Some(path) = &n.token_file {
        nats::NatsAuth::Token(read_secret("nats.token_file", path)?)
    } else {
        match (&n.user, &n.password_file) {
            (Some(user), Some(path)) => nats::NatsAuth::UserPassword {
                user: user.clone(),
                password: read_secret("nats.password_file", path)?,
            },
            (Some(_), None) => {
                anyhow::bail!("nats.user is set without nats.password_file: set the file holding its password")
            }
            (None, Some(_)) => {
                anyhow::bail!("nats.password_file is set without nats.user: set the user it is the password of")
            }
            (None, None) => nats::NatsAuth::None,
        }
    };
    let client_cert = match (&n.tls.cert_file, &n.tls.key_file) {
        (Some(cert), Some(key)) => {
            check_private("nats.tls.key_file", key)?;
            Some((cert.clone(), key.clone()))
        }
        (None, None) => None,
        _ => anyhow::bail!(
            "only one of nats.tls.cert_file and nats.tls.key_file is set: a client certificate needs both"
        ),
    };
    Ok(nats::NatsSettings {
        url: url.to_string(),
        stream: n.stream.clone(),
        replicas: n.replicas,
        max_age: n.max_age,
        duplicate_window: n.duplicate_window,
        request_timeout: n.request_timeout,
        reconnect_wait: n.reconnect_wait,
        auth,
        tls: nats::NatsTls {
            ca_file: n.tls.ca_file.clone(),
            client_cert,
        },
    })
}

/// The settings of Redis presence from `[redis]`.
pub fn presence_options(c: &RedisConfig) -> redis::PresenceOptions {
    redis::PresenceOptions {
        presence_ttl: c.presence_ttl,
        refresh_interval: c.refresh_interval,
        command_timeout: c.command_timeout,
        key_prefix: "cz".into(),
    }
}

/// How presence authenticates to Redis, from `[redis]`, the password read from its file.
pub fn redis_access(c: &RedisConfig) -> anyhow::Result<redis::RedisAccess> {
    Ok(redis::RedisAccess {
        username: c.username.clone(),
        password: match &c.password_file {
            Some(path) => Some(read_secret("redis.password_file", path)?),
            None => None,
        },
        ca_file: c.tls.ca_file.clone(),
    })
}

/// The settings of `[consul]`; `None` when `consul.addr` is unset.
pub fn consul_settings(c: &ConsulConfig) -> anyhow::Result<Option<consul::ConsulSettings>> {
    let Some(addr) = c.addr.as_deref() else {
        return Ok(None);
    };
    let token = match (&c.token, &c.token_file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "consul.token and consul.token_file are both set: keep consul.token_file (the token in a file only chat-zinx can read) and unset consul.token"
        ),
        (_, Some(path)) => Some(read_secret("consul.token_file", path)?),
        (Some(token), None) => Some(Secret::new(token.clone())).filter(|t| !t.expose().is_empty()),
        (None, None) => None,
    };
    let base_url = consul::base_url(addr);
    if c.tls.ca_file.is_some() && !base_url.to_ascii_lowercase().starts_with("https://") {
        anyhow::bail!(
            "consul.tls.ca_file is set but consul.addr {} is not https://: use https://host:port",
            redact_urls(addr)
        );
    }
    Ok(Some(consul::ConsulSettings {
        base_url,
        token,
        ca_file: c.tls.ca_file.clone(),
        service: c.service.clone(),
        check_ttl: c.check_ttl,
        deregister_after: c.deregister_after,
        kv_prefix: c.kv_prefix.clone(),
        request_timeout: c.request_timeout,
        watch_wait: consul::WATCH_WAIT,
    }))
}

/// The connection settings of the configuration.
pub fn conn_settings(c: &Config) -> ConnSettings {
    ConnSettings {
        max_body: c.protocol.max_body,
        idle_timeout: c.protocol.idle_timeout,
        write_queue: c.protocol.write_queue,
        write_queue_bytes: c.protocol.write_queue_bytes,
        max_reply_bytes: c.protocol.max_reply_bytes,
        write_queue_budget: c.server.write_queue_budget,
        write_timeout: c.protocol.write_timeout,
        rate_per_sec: c.protocol.rate_per_sec,
        rate_burst: c.protocol.rate_burst,
        max_connections: c.server.max_connections,
        max_unauthenticated: c.server.max_unauthenticated,
        max_unauthenticated_per_address: c.server.max_unauthenticated_per_address,
        login_timeout: c.protocol.login_timeout,
        proxy_from: std::sync::Arc::new(crate::server::proxy::TrustedProxies::new(
            c.server
                .proxy_protocol_from
                .iter()
                .flatten()
                .filter_map(|n| crate::config::parse_network(n)),
        )),
    }
}

/// The core's limits of the configuration.
pub fn limits(c: &Config) -> Limits {
    Limits {
        max_devices: c.session.max_devices,
        group_backlog: c.offline.group_backlog,
        direct_backlog: c.offline.direct_backlog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn nats_takes_one_way_to_authenticate_and_reads_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret(dir.path(), "s");
        let url = "tls://n1:4222";
        let mut n = NatsConfig::default();
        assert_eq!(nats_settings(&n, url).unwrap().auth, nats::NatsAuth::None);
        n.token_file = Some(file.clone());
        assert_eq!(
            nats_settings(&n, url).unwrap().auth,
            nats::NatsAuth::Token(Secret::new("s3cret"))
        );
        n.user = Some("cz".into());
        n.password_file = Some(file.clone());
        let e = nats_settings(&n, url).unwrap_err().to_string();
        assert!(
            e.contains("nats.user/nats.password_file and nats.token_file"),
            "{e}"
        );
        n.token_file = None;
        assert_eq!(
            nats_settings(&n, url).unwrap().auth,
            nats::NatsAuth::UserPassword {
                user: "cz".into(),
                password: Secret::new("s3cret")
            }
        );
        n.password_file = None;
        let e = nats_settings(&n, url).unwrap_err().to_string();
        assert!(e.contains("without nats.password_file"), "{e}");
        n.user = None;
        n.tls.cert_file = Some(file.clone());
        let e = nats_settings(&n, url).unwrap_err().to_string();
        assert!(e.contains("needs both"), "{e}");
        n.tls.key_file = Some(file.clone());
        let s = nats_settings(&n, url).unwrap();
        assert_eq!(s.tls.client_cert, Some((file.clone(), file.clone())));
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn consul_takes_the_token_or_its_file_and_a_ca_only_for_https() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret(dir.path(), "t");
        let mut c = ConsulConfig {
            addr: Some("https://consul:8501".into()),
            token_file: Some(file),
            ..ConsulConfig::default()
        };
        let s = consul_settings(&c).unwrap().unwrap();
        assert_eq!(s.token, Some(Secret::new("s3cret")));
        c.token = Some("inline".into());
        let e = consul_settings(&c).unwrap_err().to_string();
        assert!(e.contains("both set"), "{e}");
        c.token_file = None;
        c.addr = Some("127.0.0.1:8500".into());
        c.tls.ca_file = Some("/etc/ca.pem".into());
        let e = consul_settings(&c).unwrap_err().to_string();
        assert!(e.contains("not https://"), "{e}");
    }

    #[test]
    fn redis_reads_its_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = RedisConfig {
            username: Some("cz".into()),
            password_file: Some(secret(dir.path(), "p")),
            ..RedisConfig::default()
        };
        let a = redis_access(&c).unwrap();
        assert_eq!(a.password, Some(Secret::new("s3cret")));
        assert_eq!(a.username.as_deref(), Some("cz"));
    }

    #[test]
    fn redis_presence_defaults_are_the_configured_defaults() {
        assert_eq!(
            presence_options(&RedisConfig::default()),
            redis::PresenceOptions::default()
        );
    }
}
