//! The composition root: the configuration becomes adapters, and the adapters become the
//! ports the core runs on. The only place that knows which adapter serves which port, and
//! the only place where a configuration section turns into an adapter's own settings.

use std::sync::Arc;

use anyhow::Context;

use crate::backend::link::{Guarded, Link};
use crate::backend::{consul, memory, nats, redis};
use crate::config::{Config, ConsulConfig, RedisConfig};
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
        let presence = redis::RedisPresence::connect(url, node_id, presence_options(&config.redis))
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
            let settings = nats::NatsSettings {
                url: url.clone(),
                stream: n.stream.clone(),
                replicas: n.replicas,
                max_age: n.max_age,
                duplicate_window: n.duplicate_window,
                request_timeout: n.request_timeout,
                reconnect_wait: n.reconnect_wait,
            };
            let conn = nats::Nats::connect(&settings)
                .await
                .with_context(|| format!("cannot set up NATS JetStream at {url} (nats.url): is nats-server running with JetStream enabled (-js)?"))?;
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
            tracing::info!(node_id, url = %url, stream = %n.stream, "message log and accounts on NATS JetStream");
        }
    }
    if let Some(settings) = consul_settings(&config.consul) {
        let registry = consul::ConsulRegistry::new(&settings)
            .context("cannot set up the Consul client (consul.addr)")?;
        backends.registry = Arc::new(registry);
        tracing::info!(node_id, addr = %settings.base_url, service = %settings.service, "node registry and live settings on Consul");
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

/// The settings of Redis presence from `[redis]`.
pub fn presence_options(c: &RedisConfig) -> redis::PresenceOptions {
    redis::PresenceOptions {
        presence_ttl: c.presence_ttl,
        refresh_interval: c.refresh_interval,
        command_timeout: c.command_timeout,
        key_prefix: "cz".into(),
    }
}

/// The settings of `[consul]`; `None` when `consul.addr` is unset.
pub fn consul_settings(c: &ConsulConfig) -> Option<consul::ConsulSettings> {
    let addr = c.addr.as_deref()?;
    Some(consul::ConsulSettings {
        base_url: consul::base_url(addr),
        token: c.token.clone().filter(|t| !t.is_empty()),
        service: c.service.clone(),
        check_ttl: c.check_ttl,
        deregister_after: c.deregister_after,
        kv_prefix: c.kv_prefix.clone(),
        request_timeout: c.request_timeout,
        watch_wait: consul::WATCH_WAIT,
    })
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

    #[test]
    fn redis_presence_defaults_are_the_configured_defaults() {
        assert_eq!(
            presence_options(&RedisConfig::default()),
            redis::PresenceOptions::default()
        );
    }
}
