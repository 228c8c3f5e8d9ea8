//! Consul: the node registry, and the KV watch that is the source of the live settings.
//!
//! * [`ConsulRegistry`] (`registry.rs`) implements
//!   [`Registry`](crate::core::ports::Registry): each node registers itself as an instance of
//!   the service `consul.service` with a TTL check it passes itself, and the registry's upkeep
//!   keeps the list of healthy nodes current.
//! * [`KvWatcher`] (`kv.rs`) watches the KV prefix `consul.kv_prefix` and hands every snapshot
//!   to a callback, from which the node folds the live settings.
//! * [`ConsulClient`] (`client.rs`) is the HTTP client both use, with [`ConsulError`] and the
//!   rules of a loop of blocking queries.
//! * This file: the settings a node reaches Consul with ([`ConsulSettings`]), filled by the
//!   composition root from the `[consul]` section.
//!
//! Consul being unavailable never stops the chat: calls fail with
//! [`BackendError::Unavailable`](crate::core::ports::BackendError::Unavailable) within
//! `consul.request_timeout`, the node list and the live settings stay as they were last read,
//! and the upkeep registers the node again once Consul answers. Every request carries the ACL
//! token `consul.token` (header `X-Consul-Token`) when one is set.

mod client;
mod kv;
mod registry;

use std::path::PathBuf;
use std::time::Duration;

use super::secret::Secret;

pub use client::{ConsulClient, ConsulError};
pub use kv::{KvWatcher, OnSnapshot};
pub use registry::ConsulRegistry;

/// The backend name in [`BackendError::Unavailable`](crate::core::ports::BackendError::Unavailable).
pub const BACKEND: &str = "consul";

/// The tag every chat node carries.
pub const TAG: &str = "chat";

/// Longest a blocking query waits for a change (Consul adds up to 1/16 of it).
pub const WATCH_WAIT: Duration = Duration::from_secs(30);

/// How a node reaches Consul and how it appears there (the composition root fills it from the
/// `[consul]` section).
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// Base URL of the agent's HTTP API, `http://host:port` (no trailing slash).
    pub base_url: String,
    /// ACL token sent as `X-Consul-Token`.
    pub token: Option<Secret>,
    /// PEM file of the CA certificate(s) an `https://` agent's certificate must chain to
    /// (added to the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Service name the nodes register under.
    pub service: String,
    /// TTL of the node's health check; the node passes it every third of it.
    pub check_ttl: Duration,
    /// Consul removes a node whose check has been critical for this long.
    pub deregister_after: Duration,
    /// KV prefix of the live settings (ends with `/`).
    pub kv_prefix: String,
    /// Time limit of one request (a blocking query gets its wait time on top).
    pub request_timeout: Duration,
    /// Longest wait of one blocking query.
    pub watch_wait: Duration,
}

/// `127.0.0.1:8500` → `http://127.0.0.1:8500`; a given scheme is kept; no trailing slash.
pub fn base_url(addr: &str) -> String {
    let addr = addr.trim().trim_end_matches('/');
    let lower = addr.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(base_url("127.0.0.1:8500"), "http://127.0.0.1:8500");
        assert_eq!(base_url("https://consul/"), "https://consul");
    }
}
