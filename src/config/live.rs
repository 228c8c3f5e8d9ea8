//! Live settings: configuration keys that can change while a node runs, without a restart or
//! a reload, read from a key-value source (Consul KV under `consul.kv_prefix` in a cluster).
//!
//! This module knows the keys, what each accepts and how a snapshot of the source folds into
//! [`LiveSettings`]; where the snapshot comes from is the node's business (the Consul adapter
//! watches the prefix and hands over raw key → value snapshots). The settings in force are
//! the configured ones with the live ones on top (see `crate::node`).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

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

/// One live setting: its KV key (under the prefix), what it accepts, and how it is set.
pub struct LiveKey {
    pub key: &'static str,
    /// The configuration key it overrides.
    pub config_key: &'static str,
    /// What a valid value looks like (follows "expected").
    pub expected: &'static str,
    apply: fn(&str, &mut LiveSettings) -> bool,
    clear: fn(&mut LiveSettings),
}

fn parse_min<T: std::str::FromStr + PartialOrd>(v: &str, min: T) -> Option<T> {
    v.parse::<T>().ok().filter(|x| *x >= min)
}

fn parse_duration(v: &str, min: Duration) -> Option<Duration> {
    humantime::parse_duration(v).ok().filter(|d| *d >= min)
}

macro_rules! live_key {
    ($key:literal, $config:literal, $expected:literal, $field:ident, $parse:expr) => {
        LiveKey {
            key: $key,
            config_key: $config,
            expected: $expected,
            apply: |v, s| match ($parse)(v) {
                Some(x) => {
                    s.$field = Some(x);
                    true
                }
                None => false,
            },
            clear: |s| s.$field = None,
        }
    };
}

/// Every live setting, by KV key under `consul.kv_prefix`. Values are plain text: numbers as
/// digits, durations like `"90s"` or `"2m"`.
pub const LIVE_KEYS: &[LiveKey] = &[
    live_key!(
        "rate_per_sec",
        "protocol.rate_per_sec",
        "an integer of at least 1 (frames per second)",
        rate_per_sec,
        |v: &str| parse_min::<u32>(v, 1)
    ),
    live_key!(
        "rate_burst",
        "protocol.rate_burst",
        "an integer of at least 1 (frames)",
        rate_burst,
        |v: &str| parse_min::<u32>(v, 1)
    ),
    live_key!(
        "max_body",
        "protocol.max_body",
        "an integer number of bytes between 64 and 16777216",
        max_body,
        |v: &str| parse_min::<usize>(v, super::MIN_MAX_BODY).filter(|n| *n <= super::MAX_MAX_BODY)
    ),
    live_key!(
        "idle_timeout",
        "protocol.idle_timeout",
        "a duration of at least 1s such as \"180s\"",
        idle_timeout,
        |v: &str| parse_duration(v, Duration::from_secs(1))
    ),
    live_key!(
        "write_timeout",
        "protocol.write_timeout",
        "a non-zero duration such as \"10s\"",
        write_timeout,
        |v: &str| parse_duration(v, Duration::from_millis(1))
    ),
    live_key!(
        "max_connections",
        "server.max_connections",
        "an integer of at least 1",
        max_connections,
        |v: &str| parse_min::<u64>(v, 1)
    ),
    live_key!(
        "max_devices",
        "session.max_devices",
        "an integer of at least 1",
        max_devices,
        |v: &str| parse_min::<usize>(v, 1)
    ),
    live_key!(
        "group_backlog",
        "offline.group_backlog",
        "a non-negative integer number of messages",
        group_backlog,
        |v: &str| v.parse::<usize>().ok()
    ),
    live_key!(
        "direct_backlog",
        "offline.direct_backlog",
        "a non-negative integer number of messages (0 = all)",
        direct_backlog,
        |v: &str| v.parse::<usize>().ok()
    ),
];

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
        for k in LIVE_KEYS {
            match snapshot.get(k.key) {
                None => (k.clear)(&mut next),
                Some(raw) => {
                    let value = raw.trim();
                    if !(k.apply)(value, &mut next) && self.seen.get(k.key) != Some(raw) {
                        warn!(
                            key = k.key,
                            value = raw.as_str(),
                            "ignoring the live setting {}: {raw:?} is not {} ({} keeps its previous value); fix the key in Consul KV",
                            k.key, k.expected, k.config_key
                        );
                    }
                }
            }
        }
        for (key, raw) in snapshot {
            if !LIVE_KEYS.iter().any(|k| k.key == key) && self.seen.get(key) != Some(raw) {
                let known: Vec<&str> = LIVE_KEYS.iter().map(|k| k.key).collect();
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
}
