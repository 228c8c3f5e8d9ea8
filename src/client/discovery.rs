//! Finding the least-loaded healthy chat node in Consul, so a client spreads the load.
//!
//! Reads the passing instances of the `chat-zinx` service (`/v1/health/service/…?passing`)
//! and orders them by load (`Meta.connections / Meta.capacity`), as the nodes publish it.
//! A node that advertises a TLS listener (`Meta.tls_port`) is reached over TLS
//! (`tls://host:port`); with `tls_only`, nodes that do not are left out.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Service")]
    service: Service,
    #[serde(rename = "Node")]
    node: Node,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Address", default)]
    address: String,
}

/// Orders the entries of a `/v1/health/service` answer least loaded first, skipping draining
/// nodes (and, with `tls_only`, those without TLS); returns `host:port` addresses, or
/// `tls://host:port` for the nodes that advertise TLS.
fn rank(entries: Vec<Entry>, tls_only: bool) -> Vec<String> {
    let mut nodes: Vec<(f64, String)> = entries
        .into_iter()
        .filter(|e| e.service.meta.get("draining").map(String::as_str) != Some("true"))
        .filter_map(|e| {
            let num = |k: &str| {
                e.service
                    .meta
                    .get(k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let load = if num("capacity") > 0.0 {
                num("connections") / num("capacity")
            } else {
                1.0
            };
            let host = if e.service.address.is_empty() {
                e.node.address.clone()
            } else {
                e.service.address.clone()
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let tls_port = e
                .service
                .meta
                // The node's `META_TLS_PORT` (backend/consul/registry.rs).
                .get("tls_port")
                .and_then(|p| p.parse::<u16>().ok());
            match tls_port {
                Some(p) => Some((load, format!("{}{host}:{p}", super::connection::TLS_SCHEME))),
                None if tls_only => None,
                None => Some((load, format!("{host}:{}", e.service.port))),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.0.total_cmp(&b.0));
    nodes.into_iter().map(|(_, addr)| addr).collect()
}

/// The healthy chat nodes registered in Consul at `consul` (e.g. `http://127.0.0.1:8500`),
/// least loaded first.
pub async fn nodes_from_consul(
    consul: &str,
    service: &str,
    token: Option<&str>,
    tls_only: bool,
) -> anyhow::Result<Vec<String>> {
    let base = if consul.contains("://") {
        consul.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", consul.trim_end_matches('/'))
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut req = client.get(format!("{base}/v1/health/service/{service}?passing=true"));
    if let Some(t) = token {
        req = req.header("X-Consul-Token", t);
    }
    let entries: Vec<Entry> = req
        .send()
        .await
        .with_context(|| format!("cannot reach Consul at {base} (--consul)"))?
        .error_for_status()
        .with_context(|| format!("Consul at {base} refused the query"))?
        .json()
        .await
        .context("unexpected answer from Consul")?;
    let nodes = rank(entries, tls_only);
    anyhow::ensure!(
        !nodes.is_empty(),
        "Consul at {base} knows no healthy {service} node{}; give the address of a node instead",
        if tls_only {
            " with a TLS listener (--tls)"
        } else {
            ""
        }
    );
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_first_and_draining_skipped() {
        let json = r#"[
          {"Node":{"Address":"10.0.0.1"},"Service":{"Address":"","Port":9000,"Meta":{"connections":"50","capacity":"100"}}},
          {"Node":{"Address":"10.0.0.2"},"Service":{"Address":"chat-2","Port":9001,"Meta":{"connections":"5","capacity":"100"}}},
          {"Node":{"Address":"10.0.0.3"},"Service":{"Address":"chat-3","Port":9002,"Meta":{"connections":"0","capacity":"100","draining":"true"}}}
        ]"#;
        let entries: Vec<Entry> = serde_json::from_str(json).unwrap();
        assert_eq!(rank(entries, false), ["chat-2:9001", "10.0.0.1:9000"]);
    }

    #[test]
    fn tls_is_preferred_where_advertised_and_required_with_tls_only() {
        let json = r#"[
          {"Node":{"Address":"10.0.0.1"},"Service":{"Address":"","Port":9000,"Meta":{"connections":"50","capacity":"100","tls_port":"9443"}}},
          {"Node":{"Address":"10.0.0.2"},"Service":{"Address":"chat-2","Port":9001,"Meta":{"connections":"5","capacity":"100"}}}
        ]"#;
        let entries = || serde_json::from_str::<Vec<Entry>>(json).unwrap();
        assert_eq!(
            rank(entries(), false),
            ["chat-2:9001", "tls://10.0.0.1:9443"]
        );
        assert_eq!(rank(entries(), true), ["tls://10.0.0.1:9443"]);
    }
}
