//! Live settings: configuration keys that can change while a node runs, without a restart or
//! a reload, read from a key-value source (Consul KV under `consul.kv_prefix` in a cluster).
//!
//! Each live key is declared on the configuration key it overrides, in the key table
//! (`KeyInfo::live` in `super::KEYS`): its name and how its value is parsed. This module holds
//! what they set ([`LiveSettings`]) and how a snapshot of the source folds into it; where the
//! snapshot comes from is the node's business (the Consul adapter watches the prefix and hands
//! over raw key → value snapshots). The settings in force are the configured ones with the live
//! ones on top (see `crate::node`).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use super::keys::{KeyInfo, KEYS};

/// Settings changed at run time through Consul KV. `None`: the configured value applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSettings {
    /// `protocol.rate_per_sec` (new connections).
    pub rate_per_sec: Option<u32>,
    /// `protocol.rate_burst` (new connections).
    pub rate_burst: Option<u32>,
    /// `protocol.max_body`.
    pub max_body: Option<usize>,
    /// `protocol.idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// `protocol.write_timeout`.
    pub write_timeout: Option<Duration>,
    /// `server.max_connections`.
    pub max_connections: Option<u64>,
    /// `session.max_devices`.
    pub max_devices: Option<usize>,
    /// `offline.group_backlog`.
    pub group_backlog: Option<usize>,
    /// `offline.direct_backlog`.
    pub direct_backlog: Option<usize>,
}

/// One live setting, declared on the configuration key it overrides (`super::KeyInfo::live`,
/// in `super::KEYS`).
#[derive(Debug, Clone, Copy)]
pub struct LiveKey {
    /// Its key under `consul.kv_prefix`.
    pub key: &'static str,
    /// Sets its field of [`LiveSettings`] from a value; false (nothing set) when invalid.
    pub(super) apply: fn(&str, &mut LiveSettings) -> bool,
    /// Unsets its field of [`LiveSettings`]: the configured value applies.
    pub(super) clear: fn(&mut LiveSettings),
}

pub(super) fn parse_min<T: std::str::FromStr + PartialOrd>(v: &str, min: T) -> Option<T> {
    v.parse::<T>().ok().filter(|x| *x >= min)
}

pub(super) fn parse_duration(v: &str, min: Duration) -> Option<Duration> {
    humantime::parse_duration(v).ok().filter(|d| *d >= min)
}

/// Every live setting, in [`KEYS`] order: the configuration key it overrides (whose `expected`
/// says what the live value accepts too) and the live key. Values are plain text: numbers as
/// digits, durations like `"90s"` or `"2m"`.
pub fn live_keys() -> impl Iterator<Item = (&'static KeyInfo, &'static LiveKey)> {
    KEYS.iter()
        .filter_map(|k| k.live.as_ref().map(|live| (k, live)))
}

/// Folds key-value snapshots into [`LiveSettings`], remembering what was already reported.
#[derive(Default)]
pub struct LiveState {
    current: LiveSettings,
    /// Raw value of each key as last seen, so that a bad or unknown value is logged once.
    seen: BTreeMap<String, String>,
}

impl LiveState {
    pub fn current(&self) -> &LiveSettings {
        &self.current
    }

    /// Applies a snapshot of the prefix (key under the prefix → value). Returns the new
    /// settings when they changed. An invalid value keeps the previous one of its key; a missing
    /// key goes back to the configured value.
    pub fn apply(&mut self, snapshot: &BTreeMap<String, String>) -> Option<LiveSettings> {
        let mut next = self.current.clone();
        for (info, k) in live_keys() {
            match snapshot.get(k.key) {
                None => (k.clear)(&mut next),
                Some(raw) => {
                    let value = raw.trim();
                    if !(k.apply)(value, &mut next) && self.seen.get(k.key) != Some(raw) {
                        warn!(
                            key = k.key,
                            value = raw.as_str(),
                            "ignoring the live setting {}: {raw:?} is not {} ({} keeps its previous value); fix the key in Consul KV",
                            k.key, info.expected, info.key
                        );
                    }
                }
            }
        }
        for (key, raw) in snapshot {
            if !live_keys().any(|(_, k)| k.key == key) && self.seen.get(key) != Some(raw) {
                let known: Vec<&str> = live_keys().map(|(_, k)| k.key).collect();
                warn!(
                    key = key.as_str(),
                    value = raw.as_str(),
                    "ignoring the unknown live setting {key:?}; the known ones are {}",
                    known.join(", ")
                );
            }
        }
        self.seen = snapshot.clone();
        if next == self.current {
            return None;
        }
        self.current = next.clone();
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn live_state_applies_keeps_old_on_invalid_and_reverts_on_removal() {
        let mut s = LiveState::default();
        let got = s
            .apply(&snap(&[("max_devices", "2"), ("rate_per_sec", " 50 ")]))
            .unwrap();
        assert_eq!(got.max_devices, Some(2));
        assert_eq!(got.rate_per_sec, Some(50));
        // Invalid: the old value stays, nothing changes.
        assert_eq!(
            s.apply(&snap(&[("max_devices", "zero"), ("rate_per_sec", "50")])),
            None
        );
        assert_eq!(s.current().max_devices, Some(2));
        // Invalid first value of a key: it stays unset.
        assert_eq!(
            s.apply(&snap(&[
                ("max_devices", "zero"),
                ("rate_per_sec", "50"),
                ("idle_timeout", "0s")
            ])),
            None
        );
        assert_eq!(s.current().idle_timeout, None);
        // Removed: back to the configured value.
        let got = s.apply(&snap(&[("max_devices", "3")])).unwrap();
        assert_eq!(got.max_devices, Some(3));
        assert_eq!(got.rate_per_sec, None);
        let got = s
            .apply(&snap(&[
                ("idle_timeout", "2m"),
                ("max_body", "64"),
                ("group_backlog", "0"),
                ("unknown", "1"),
            ]))
            .unwrap();
        assert_eq!(got.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(got.max_body, Some(64));
        assert_eq!(got.group_backlog, Some(0));
        assert_eq!(got.max_devices, None);
        assert_eq!(
            s.apply(&snap(&[("max_body", "63")])),
            Some(LiveSettings {
                max_body: Some(64),
                ..LiveSettings::default()
            })
        );
    }

    /// The text of the default value of a configuration key, as a live value would be written.
    fn default_text(key: &str) -> String {
        let table = toml::Table::try_from(crate::config::Config::default()).unwrap();
        let (section, leaf) = key.split_once('.').unwrap();
        match &table[section][leaf] {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    #[test]
    fn every_live_key_accepts_its_configured_default_and_sets_its_own_field() {
        let mut all = BTreeMap::new();
        for (info, k) in live_keys() {
            let text = default_text(info.key);
            let mut one = LiveSettings::default();
            assert!(
                (k.apply)(&text, &mut one),
                "the live setting {} rejects {text:?}, the default of {}",
                k.key,
                info.key
            );
            assert_ne!(one, LiveSettings::default(), "{} sets nothing", k.key);
            (k.clear)(&mut one);
            assert_eq!(
                one,
                LiveSettings::default(),
                "{} clears another field",
                k.key
            );
            all.insert(k.key.to_string(), text);
        }
        // Together they set every field: no field of LiveSettings lacks a key in the table.
        let mut s = LiveState::default();
        let got = s.apply(&all).unwrap();
        assert!(
            !format!("{got:?}").contains("None"),
            "a field of LiveSettings has no live key in config::KEYS: {got:?}"
        );
    }
}
