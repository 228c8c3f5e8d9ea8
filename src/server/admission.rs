//! Room for real users: connections that have not logged in are limited node-wide and per
//! source address, and each must log in within `protocol.login_timeout`.
//!
//! An open socket costs a task, buffers and a slot under `server.max_connections` whether or
//! not anyone logs in on it. Without these limits, a few hundred idle sockets from one
//! address fill the node and everyone else is turned away. With them:
//!
//! - at most `server.max_unauthenticated` connections of the node are not logged in, so the
//!   rest of `max_connections` (the headroom) only ever holds logged-in users;
//! - at most `server.max_unauthenticated_per_address` of them come from one address (IPv6 by
//!   its /64). Loopback is not limited per address: everything behind a local proxy has that
//!   address (the node-wide limit still applies);
//! - a connection that is not logged in `protocol.login_timeout` after it was accepted (or
//!   after its logout) is closed, whatever it sends meanwhile (pings do not keep it).
//!
//! A connection past a limit is told so (99 code 15) at once and closed: it does not hold a
//! slot while waiting for a first frame.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::throttle::address_key;

/// The limits in force (from `ConnSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections of the node that are not logged in, at most.
    pub max_unauthenticated: u64,
    /// Of those, from one address at most (0: no limit per address).
    pub per_address: u32,
}

impl AdmissionLimits {
    /// `server.max_unauthenticated` as configured (0: a tenth of `max_connections`, at least
    /// 16) and `server.max_unauthenticated_per_address`.
    pub fn new(max_connections: u64, max_unauthenticated: u64, per_address: u32) -> Self {
        let max_unauthenticated = if max_unauthenticated == 0 {
            (max_connections / 10).max(16)
        } else {
            max_unauthenticated
        };
        AdmissionLimits {
            max_unauthenticated,
            per_address,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this node has too many connections that are not logged in: try again in a moment or connect to another node")]
    NodeFull,
    #[error("too many connections from your address are not logged in: log in on the open ones or close them")]
    AddressFull,
}

/// The connections of the node that are not logged in, counted node-wide and per address.
#[derive(Default)]
pub struct Admission {
    total: AtomicU64,
    /// Per address key (see [`address_key`]); an entry goes when its count reaches 0, so the
    /// map holds at most `max_unauthenticated` entries.
    by_address: Mutex<HashMap<String, u32>>,
}

/// A connection counted as not logged in; dropping it (at login or close) uncounts it.
pub struct Unauthenticated {
    admission: Arc<Admission>,
    key: Option<String>,
}

impl Admission {
    /// Counts a connection from `peer` as not logged in, if the limits allow.
    pub fn admit(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        limits: AdmissionLimits,
    ) -> Result<Unauthenticated, Refused> {
        let key = peer.and_then(address_key);
        // The map's lock orders admissions; `total` is only written under it.
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= limits.max_unauthenticated {
            return Err(Refused::NodeFull);
        }
        if let Some(k) = &key {
            let n = by_address.get(k).copied().unwrap_or(0);
            if limits.per_address > 0 && n >= limits.per_address {
                return Err(Refused::AddressFull);
            }
            by_address.insert(k.clone(), n + 1);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Unauthenticated {
            admission: self.clone(),
            key,
        })
    }

    /// Connections not logged in now.
    pub fn count(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses with connections not logged in now.
    pub fn addresses(&self) -> usize {
        self.by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut by_address = self
            .admission
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(k) = &self.key {
            if let Some(n) = by_address.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    by_address.remove(k);
                }
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_address_gets_at_most_its_share_and_others_still_get_in() {
        let a = Arc::new(Admission::default());
        let limits = AdmissionLimits::new(1000, 0, 3);
        let held: Vec<_> = (0..3)
            .map(|_| a.admit(ip("203.0.113.7"), limits).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("203.0.113.7"), limits).err(),
            Some(Refused::AddressFull)
        );
        // The same /64 is the same address; another address is not affected.
        let v6 = AdmissionLimits::new(1000, 0, 1);
        let _one = a.admit(ip("2001:db8:1:2::1"), v6).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9"), v6).err(),
            Some(Refused::AddressFull)
        );
        let _other = a.admit(ip("2001:db8:1:3::1"), v6).unwrap();
        let _b = a.admit(ip("198.51.100.1"), limits).unwrap();
        // A logged-in (or closed) connection gives its place back.
        drop(held);
        let _again = a.admit(ip("203.0.113.7"), limits).unwrap();
        assert_eq!(a.count(), 4);
    }

    #[test]
    fn the_node_wide_limit_applies_to_every_address_loopback_included() {
        let a = Arc::new(Admission::default());
        let limits = AdmissionLimits::new(1000, 2, 0);
        let _x = a.admit(ip("127.0.0.1"), limits).unwrap();
        let _y = a.admit(ip("203.0.113.7"), limits).unwrap();
        assert_eq!(a.admit(ip("::1"), limits).err(), Some(Refused::NodeFull));
        assert_eq!(
            a.admit(ip("198.51.100.1"), limits).err(),
            Some(Refused::NodeFull)
        );
        assert_eq!(a.admit(None, limits).err(), Some(Refused::NodeFull));
    }

    #[test]
    fn loopback_is_not_limited_per_address() {
        let a = Arc::new(Admission::default());
        let limits = AdmissionLimits::new(1000, 0, 1);
        let held: Vec<_> = (0..10)
            .map(|_| a.admit(ip("127.0.0.1"), limits).unwrap())
            .collect();
        assert_eq!(held.len(), 10);
        assert_eq!(a.addresses(), 0);
    }

    #[test]
    fn the_default_share_is_a_tenth_of_max_connections_and_at_least_16() {
        assert_eq!(
            AdmissionLimits::new(100_000, 0, 64).max_unauthenticated,
            10_000
        );
        assert_eq!(AdmissionLimits::new(100, 0, 64).max_unauthenticated, 16);
        assert_eq!(AdmissionLimits::new(100, 40, 64).max_unauthenticated, 40);
    }

    #[test]
    fn the_address_map_forgets_addresses_with_no_connection_left() {
        let a = Arc::new(Admission::default());
        let limits = AdmissionLimits::new(1000, 0, 4);
        for i in 0..50 {
            let _c = a.admit(ip(&format!("203.0.113.{i}")), limits).unwrap();
        }
        assert_eq!(a.addresses(), 0);
        assert_eq!(a.count(), 0);
    }
}
