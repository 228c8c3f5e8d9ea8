//! The source of the live settings: [`KvWatcher`] watches the KV prefix `consul.kv_prefix`
//! with blocking queries and hands every snapshot (key → value) to a callback.
//!
//! What the keys mean is not this module's business: the node folds each snapshot into the
//! live settings (`crate::config::live`: an invalid value is logged with its key and ignored,
//! a removed key goes back to the configured value). While Consul does not answer, no
//! snapshot is handed over, so the settings last read stay in force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::client::{
    decode, next_index, pause, ConsulClient, ConsulError, Outage, MIN_QUERY_SPACING,
};
use super::ConsulSettings;
use crate::core::ports::BackendResult;

/// One KV entry of a recursive read.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

/// Receives every snapshot of a watched KV prefix: key under the prefix → value.
pub type OnSnapshot = Arc<dyn Fn(&BTreeMap<String, String>) + Send + Sync>;

/// Watches the KV prefix `consul.kv_prefix` (the live settings) with blocking queries and hands
/// every snapshot to a callback. What the keys mean is not its business (`crate::config::live`).
pub struct KvWatcher {
    client: ConsulClient,
    prefix: String,
    wait: Duration,
    on_snapshot: OnSnapshot,
}

impl KvWatcher {
    pub fn new(settings: &ConsulSettings, on_snapshot: OnSnapshot) -> BackendResult<Self> {
        Ok(KvWatcher {
            client: ConsulClient::new(settings)?,
            prefix: settings.kv_prefix.clone(),
            wait: settings.watch_wait,
            on_snapshot,
        })
    }

    /// One read of the prefix: (index, key under the prefix → value).
    async fn read(&self, index: u64) -> Result<(u64, BTreeMap<String, String>), ConsulError> {
        let path = format!("/v1/kv/{}", self.prefix);
        let (new_index, body) = self
            .client
            .blocking_get(&path, vec![("recurse", "true".into())], index, self.wait)
            .await?;
        let entries: Vec<KvEntry> = match body {
            Some(b) => decode(&format!("GET {path}"), &b)?,
            None => Vec::new(),
        };
        let mut out = BTreeMap::new();
        for e in entries {
            let Some(name) = e.key.strip_prefix(&self.prefix) else {
                continue;
            };
            if name.is_empty() || name.ends_with('/') {
                continue; // the prefix itself or a folder
            }
            let value = match e.value {
                None => String::new(),
                Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                    Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    Err(err) => {
                        warn!(key = %e.key, error = %err, "cannot decode a Consul KV value; ignoring it");
                        continue;
                    }
                },
            };
            out.insert(name.to_string(), value);
        }
        Ok((new_index, out))
    }

    /// Watches until `shutdown`. While Consul does not answer, no snapshot is handed over (what
    /// was last handed over stays in force).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut index = 0;
        let mut outage = Outage::new("live settings");
        loop {
            let started = Instant::now();
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.read(index) => r,
            };
            match read {
                Ok((new_index, snapshot)) => {
                    outage.recovered();
                    index = next_index(index, new_index);
                    (self.on_snapshot)(&snapshot);
                }
                Err(e) => {
                    index = 0;
                    if !pause(outage.failed(&e), &shutdown).await {
                        return;
                    }
                    continue;
                }
            }
            let spacing = MIN_QUERY_SPACING.saturating_sub(started.elapsed());
            if !spacing.is_zero() && !pause(spacing, &shutdown).await {
                return;
            }
        }
    }
}
