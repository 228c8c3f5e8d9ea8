//! The cluster registry on Consul: [`ConsulRegistry`] implements [`Registry`].
//!
//! A node is the service `consul.service` (`chat-zinx`) with the node id as service id, its
//! advertise address, the tag `chat` and its load in the service meta (`version`,
//! `connections`, `capacity`, `draining`; `tls_port` when it has a TLS listener, on the same
//! host). Its health is a **TTL check** that the node itself
//! updates every `check_ttl / 3`: the daemon knows best whether it serves, and an HTTP check
//! would need this node's HTTP endpoint reachable from the Consul agent. The update is
//! `passing` while the node is ready and `warning`, with the reason as the check's output,
//! while it is not ([`Registry::set_serving`]: its store or bus is lost): either way the TTL is
//! renewed, and a warning node leaves the passing nodes (peers' lists, redirects, Consul DNS
//! with `only_passing`, the load balancer) until it serves again. A node that stops updating
//! goes critical after `check_ttl`, leaves every peer's [`Registry::nodes`] and is removed by
//! Consul after `consul.deregister_after`.
//!
//! [`ConsulRegistry::run`] is the registry's upkeep: it passes the check, registers the node
//! again whenever Consul has lost it (an agent restart, a dev agent that forgot everything, an
//! outage longer than `deregister_after`), and keeps the list of healthy nodes current with
//! blocking queries on `/v1/health/service/<service>?passing`. [`Registry::nodes`] answers
//! from that list and never waits on Consul.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{
    decode, next_index, pause, ConsulClient, ConsulError, Outage, MIN_QUERY_SPACING,
};
use super::{ConsulSettings, BACKEND, TAG};
use crate::core::model::NodeInfo;
use crate::core::ports::{BackendError, BackendResult, Registry};

/// The service meta key of the TLS listener's port (absent: no TLS listener). Clients
/// (`chat-zinx client --consul`) read it too.
pub const META_TLS_PORT: &str = "tls_port";

/// A Go duration string Consul accepts (`15000ms`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The healthy nodes as last read from Consul.
#[derive(Default)]
struct NodeCache {
    nodes: Vec<NodeInfo>,
    /// Whether Consul answered at least once.
    loaded: bool,
    /// Since when the watcher has not reached Consul, and why (the last failure).
    failing: Option<(Instant, ConsulError)>,
}

/// The cluster registry on Consul (see the module documentation).
pub struct ConsulRegistry {
    client: ConsulClient,
    service: String,
    check_ttl: Duration,
    deregister_after: Duration,
    watch_wait: Duration,
    /// This node as last registered (`None` before `register` and after `deregister`).
    me: Mutex<Option<NodeInfo>>,
    /// Consul had this node as of the last call (false: the upkeep registers it again).
    registered: AtomicBool,
    /// Why this node cannot serve now (`None`: it serves), as its check shows it.
    problem: Mutex<Option<String>>,
    cache: Mutex<NodeCache>,
}

/// One entry of `/v1/health/service/<service>`.
#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: HealthNode,
    #[serde(rename = "Service")]
    service: HealthService,
}

#[derive(Deserialize)]
struct HealthNode {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct HealthService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<HashMap<String, String>>,
}

/// `host:port` for an address and a port (IPv6 in brackets).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits an advertise address into the service address Consul gets and the port. An
/// unspecified IP (`0.0.0.0`, `::`) becomes an empty address, which Consul fills in with the
/// agent's node address.
fn split_advertise(addr: &str) -> BackendResult<(String, u16)> {
    let bad = || {
        BackendError::unavailable(
            BACKEND,
            format!(
                "the advertise address {addr:?} is not host:port: set server.advertise_addr to \
                 the address other nodes reach this one at"
            ),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    Ok((
        if unspecified {
            String::new()
        } else {
            host.to_string()
        },
        port,
    ))
}

impl HealthEntry {
    fn into_node(self) -> NodeInfo {
        let meta = self.service.meta.unwrap_or_default();
        let num = |k: &str| meta.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let host = if self.service.address.is_empty() {
            self.node.address
        } else {
            self.service.address
        };
        let tls_port = meta.get(META_TLS_PORT).and_then(|v| v.parse::<u16>().ok());
        NodeInfo {
            addr: join_host_port(&host, self.service.port),
            tls_addr: tls_port.map(|p| join_host_port(&host, p)),
            connections: num("connections"),
            capacity: num("capacity"),
            draining: meta.get("draining").is_some_and(|v| v == "true"),
            node_id: self.service.id,
        }
    }
}

/// Healthy, not draining, least loaded first (ties by node id).
#[cfg(test)]
fn healthy_sorted(entries: Vec<HealthEntry>) -> Vec<NodeInfo> {
    let mut nodes = passing_sorted(entries);
    nodes.retain(|n| !n.draining);
    nodes
}

/// Healthy (draining ones too), least loaded first (ties by node id).
fn passing_sorted(entries: Vec<HealthEntry>) -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = entries.into_iter().map(HealthEntry::into_node).collect();
    nodes.sort_by(|a, b| {
        a.load()
            .total_cmp(&b.load())
            .then_with(|| a.node_id.cmp(&b.node_id))
    });
    nodes
}

impl ConsulRegistry {
    pub fn new(settings: &ConsulSettings) -> BackendResult<ConsulRegistry> {
        Ok(ConsulRegistry {
            client: ConsulClient::new(settings)?,
            service: settings.service.clone(),
            check_ttl: settings.check_ttl,
            deregister_after: settings.deregister_after,
            watch_wait: settings.watch_wait,
            me: Mutex::new(None),
            registered: AtomicBool::new(false),
            problem: Mutex::new(None),
            cache: Mutex::new(NodeCache::default()),
        })
    }

    /// The id of this node's TTL check.
    pub fn check_id(node_id: &str) -> String {
        format!("service:{node_id}")
    }

    fn snapshot(&self) -> Option<NodeInfo> {
        lock(&self.me).clone()
    }

    fn is_me(&self, node_id: &str) -> bool {
        lock(&self.me)
            .as_ref()
            .is_some_and(|n| n.node_id == node_id)
    }

    /// Registers (or re-registers, replacing the meta) `node` with a passing TTL check.
    async fn put_service(&self, node: &NodeInfo) -> BackendResult<()> {
        let (address, port) = split_advertise(&node.addr)?;
        let mut meta = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "connections": node.connections.to_string(),
            "capacity": node.capacity.to_string(),
            "draining": node.draining.to_string(),
        });
        if let Some(tls) = &node.tls_addr {
            // The port only: the host is the service's (TLS and plain share the address).
            let (_, tls_port) = split_advertise(tls)?;
            meta[META_TLS_PORT] = json!(tls_port.to_string());
        }
        let body = json!({
            "ID": node.node_id,
            "Name": self.service,
            "Tags": [TAG],
            "Address": address,
            "Port": port,
            "Meta": meta,
            "Check": {
                "CheckID": Self::check_id(&node.node_id),
                "Name": format!("{} node {} serves", self.service, node.node_id),
                "Notes": "TTL check updated by the chat-zinx daemon itself: passing while it \
                          serves, warning while it cannot (its store or bus is lost)",
                "TTL": go_duration(self.check_ttl),
                "DeregisterCriticalServiceAfter": go_duration(self.deregister_after),
                // A re-registration must not flip the check to critical until the next update.
                "Status": self.check_status().0,
            },
        });
        self.client
            .expect_ok(Method::PUT, "/v1/agent/service/register", &[], Some(&body))
            .await?;
        Ok(())
    }

    /// The status and output this node's check should have now.
    fn check_status(&self) -> (&'static str, String) {
        match lock(&self.problem).as_ref() {
            None => ("passing", "serving".to_string()),
            Some(why) => ("warning", format!("not serving: {why}")),
        }
    }

    /// Updates this node's TTL check (renewing its TTL): passing while it serves, warning while
    /// it cannot.
    async fn update_check(&self, node_id: &str) -> Result<(), ConsulError> {
        let (status, output) = self.check_status();
        let path = format!("/v1/agent/check/update/{}", Self::check_id(node_id));
        let body = json!({ "Status": status, "Output": output });
        self.client
            .expect_ok(Method::PUT, &path, &[], Some(&body))
            .await
            .map(|_| ())
    }

    /// Registers and passes; records whether Consul has the node.
    async fn register_and_pass(&self, node: &NodeInfo) -> BackendResult<()> {
        let r = async {
            self.put_service(node).await?;
            self.update_check(&node.node_id).await?;
            Ok::<(), BackendError>(())
        }
        .await;
        self.registered.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    /// One upkeep round: pass the check, or register again when Consul lost the node.
    async fn refresh(&self) -> BackendResult<()> {
        let Some(node) = self.snapshot() else {
            return Ok(());
        };
        if self.registered.load(Ordering::Relaxed) {
            match self.update_check(&node.node_id).await {
                Ok(()) => return Ok(()),
                Err(ConsulError::Status { .. }) => {
                    // Consul answers but does not know the check: it lost the node.
                    warn!(node_id = %node.node_id, "Consul lost this node's registration; registering again");
                }
                Err(e) => {
                    // Register again at the next round: Consul may come back without it.
                    self.registered.store(false, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
        self.register_and_pass(&node).await?;
        info!(node_id = %node.node_id, service = %self.service, "registered in Consul again");
        self.after_register(&node).await;
        Ok(())
    }

    /// A `deregister` or a newer `register`/`update_load` may have run meanwhile: make Consul
    /// agree with the latest state.
    async fn after_register(&self, registered: &NodeInfo) {
        match self.snapshot() {
            None => {
                let _ = self.delete_service(&registered.node_id).await;
            }
            Some(now) if now != *registered => {
                let _ = self.register_and_pass(&now).await;
            }
            Some(_) => {}
        }
    }

    async fn delete_service(&self, node_id: &str) -> BackendResult<()> {
        self.registered.store(false, Ordering::Relaxed);
        let path = format!("/v1/agent/service/deregister/{node_id}");
        self.client.expect_ok(Method::PUT, &path, &[], None).await?;
        Ok(())
    }

    /// One read of the healthy nodes; blocks while `index` is current.
    async fn read_nodes(&self, index: u64) -> Result<(u64, Vec<NodeInfo>), ConsulError> {
        let path = format!("/v1/health/service/{}", self.service);
        let (new_index, body) = self
            .client
            .blocking_get(
                &path,
                vec![("passing", "true".to_string())],
                index,
                self.watch_wait,
            )
            .await?;
        let entries: Vec<HealthEntry> = match body {
            Some(b) => decode(&format!("GET {path}"), &b)?,
            None => Vec::new(),
        };
        Ok((new_index, passing_sorted(entries)))
    }

    /// Keeps the node cache current until shut down.
    async fn watch_nodes(&self, shutdown: &CancellationToken) {
        let mut index = 0;
        let mut outage = Outage::new("node discovery");
        loop {
            let started = Instant::now();
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.read_nodes(index) => r,
            };
            match read {
                Ok((new_index, nodes)) => {
                    outage.recovered();
                    index = next_index(index, new_index);
                    let mut cache = lock(&self.cache);
                    if !cache.loaded || cache.nodes != nodes {
                        debug!(nodes = nodes.len(), "healthy nodes changed");
                    }
                    cache.nodes = nodes;
                    cache.loaded = true;
                    cache.failing = None;
                }
                Err(e) => {
                    index = 0;
                    {
                        let mut cache = lock(&self.cache);
                        let since = cache.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                        cache.failing = Some((since, e.clone()));
                    }
                    if !pause(outage.failed(&e), shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            let spacing = MIN_QUERY_SPACING.saturating_sub(started.elapsed());
            if !spacing.is_zero() && !pause(spacing, shutdown).await {
                return;
            }
        }
    }

    /// Passes the check every `check_ttl / 3` and registers again when needed, until shut down.
    async fn keep_alive(&self, shutdown: &CancellationToken) {
        let period = (self.check_ttl / 3).max(Duration::from_millis(100));
        let mut outage = Outage::new("node registration");
        while pause(period, shutdown).await {
            let round = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.refresh() => r,
            };
            match round {
                Ok(()) => outage.recovered(),
                Err(e) => {
                    outage.failed(&e);
                }
            }
        }
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    /// Registers the node; remembered even when Consul does not answer, so that the upkeep
    /// registers it once Consul is back.
    async fn register(&self, node: NodeInfo) -> BackendResult<()> {
        split_advertise(&node.addr)?;
        *lock(&self.me) = Some(node.clone());
        self.register_and_pass(&node).await?;
        self.after_register(&node).await;
        Ok(())
    }

    /// Updates this node's meta (Consul 1.8 does so by registering again) and passes the check.
    /// Other nodes' entries are theirs to update: ignored.
    async fn update_load(
        &self,
        node_id: &str,
        connections: u64,
        draining: bool,
    ) -> BackendResult<()> {
        let node = {
            let mut me = lock(&self.me);
            let Some(node) = me.as_mut().filter(|n| n.node_id == node_id) else {
                return Ok(());
            };
            if node.connections == connections && node.draining == draining {
                None
            } else {
                node.connections = connections;
                node.draining = draining;
                Some(node.clone())
            }
        };
        match node {
            Some(node) => {
                self.register_and_pass(&node).await?;
                self.after_register(&node).await;
            }
            None => {
                self.update_check(node_id).await?;
            }
        }
        Ok(())
    }

    /// Records whether this node serves and updates its check at once when that changed (the
    /// upkeep renews it every `check_ttl / 3` in any case). Other nodes' checks are theirs.
    async fn set_serving(&self, node_id: &str, problem: Option<String>) -> BackendResult<()> {
        if !self.is_me(node_id) {
            return Ok(());
        }
        let (changed, flipped) = {
            let mut current = lock(&self.problem);
            let changed = *current != problem;
            let flipped = current.is_some() != problem.is_some();
            *current = problem.clone();
            (changed, flipped)
        };
        if !changed || !self.registered.load(Ordering::Relaxed) {
            // Unregistered: the upkeep registers the node with this status.
            return Ok(());
        }
        // Logged when the node turns unserving or serving, not at every new reason.
        match &problem {
            None => info!(node_id, "serving again: Consul check passing"),
            Some(why) if flipped => {
                warn!(node_id, reason = %why, "not serving: Consul check warning until it serves again")
            }
            Some(_) => {}
        }
        self.update_check(node_id).await?;
        Ok(())
    }

    async fn deregister(&self, node_id: &str) -> BackendResult<()> {
        if self.is_me(node_id) {
            *lock(&self.me) = None;
        }
        self.delete_service(node_id).await
    }

    /// The healthy nodes (this one included when healthy), least loaded first, as last read by
    /// the upkeep: never waits on Consul. `Unavailable` before Consul first answered and when it
    /// has not answered for longer than the check TTL (the list can no longer be trusted).
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let mut nodes = self.all_nodes().await?;
        nodes.retain(|n| !n.draining);
        Ok(nodes)
    }

    /// [`Self::nodes`] with the draining ones: the cache keeps every passing node.
    async fn all_nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let cache = lock(&self.cache);
        if let Some((since, why)) = &cache.failing {
            if since.elapsed() > self.check_ttl || !cache.loaded {
                return Err(BackendError::unavailable_with_source(
                    BACKEND,
                    format!(
                        "the node list is out of date: Consul has not answered for {:?} ({why})",
                        since.elapsed()
                    ),
                    why.clone(),
                ));
            }
        }
        if !cache.loaded {
            return Err(BackendError::unavailable(
                BACKEND,
                "the node list has not been read from Consul yet; try again shortly",
            ));
        }
        Ok(cache.nodes.clone())
    }

    async fn health(&self) -> BackendResult<()> {
        self.client.leader().await?;
        Ok(())
    }

    /// The upkeep until `shutdown`: passes the TTL check every `check_ttl / 3`, registers the
    /// node again when Consul lost it, and keeps the healthy-node list current.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::join!(self.keep_alive(&shutdown), self.watch_nodes(&shutdown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_addresses() {
        assert_eq!(split_advertise("0.0.0.0:9000").unwrap(), ("".into(), 9000));
        assert_eq!(split_advertise("[::]:9000").unwrap(), ("".into(), 9000));
        assert_eq!(split_advertise("[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert_eq!(
            split_advertise("chat-1.example.com:9000").unwrap(),
            ("chat-1.example.com".into(), 9000)
        );
        assert!(split_advertise("chat-1").is_err());
        assert_eq!(join_host_port("::1", 1), "[::1]:1");
        assert_eq!(join_host_port("10.0.0.1", 1), "10.0.0.1:1");
        assert_eq!(go_duration(Duration::from_secs(15)), "15000ms");
    }

    #[test]
    fn health_entries_become_sorted_healthy_nodes() {
        let body = r#"[
          {"Node":{"Address":"10.0.0.9"},"Service":{"ID":"b","Address":"","Port":9000,
            "Meta":{"connections":"50","capacity":"100","draining":"false"}}},
          {"Node":{"Address":"10.0.0.8"},"Service":{"ID":"a","Address":"chat-a","Port":9001,
            "Meta":{"connections":"10","capacity":"100","draining":"false"}}},
          {"Node":{"Address":"10.0.0.7"},"Service":{"ID":"c","Address":"","Port":9002,
            "Meta":{"connections":"0","capacity":"100","draining":"true"}}},
          {"Node":{"Address":"10.0.0.6"},"Service":{"ID":"d","Port":9003,"Meta":null}}
        ]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).unwrap();
        // What the cache keeps and `all_nodes` answers: the draining node too.
        let passing = passing_sorted(serde_json::from_str(body).unwrap());
        let all: Vec<(&str, bool)> = passing
            .iter()
            .map(|n| (n.node_id.as_str(), n.draining))
            .collect();
        assert_eq!(all, [("c", true), ("a", false), ("b", false), ("d", false)]);
        let nodes = healthy_sorted(entries);
        let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert_eq!(nodes[0].addr, "chat-a:9001");
        assert_eq!(nodes[1].addr, "10.0.0.9:9000");
        assert_eq!(nodes[1].connections, 50);
    }
}
