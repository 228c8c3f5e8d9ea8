//! Throttling of guessing: failed logins per username and per source address, and
//! registrations per source address, each with a growing back-off, in bounded memory.
//!
//! A key (`user:<name>`, `addr:<address>`) may fail [`Policy::free`] times; from then on each
//! further failure blocks it for a back-off that doubles from [`Policy::first_block`] up to
//! [`Policy::max_block`]. A request of a blocked key is refused with the time left, without
//! any work (no password hash). A key that has been quiet for [`Policy::forget_after`] starts
//! over; a success forgets it. At most [`Policy::max_keys`] keys are kept: when full, quiet
//! keys go first, then the least recently failed ones (an attacker who floods keys can
//! only shorten others' back-offs, never grow memory).
//!
//! IPv6 sources count per /64: one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ports::Clock;

/// How a [`Throttle`] counts.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub free: u32,
    pub first_block: Duration,
    pub max_block: Duration,
    pub forget_after: Duration,
    pub max_keys: usize,
}

impl Policy {
    /// Failed logins: 5 free, then 1 s, 2 s, 4 s ... up to 5 min.
    pub const LOGIN: Policy = Policy {
        free: 5,
        first_block: Duration::from_secs(1),
        max_block: Duration::from_secs(300),
        forget_after: Duration::from_secs(900),
        max_keys: 100_000,
    };
    /// Registrations per address (every one counts): 5 free, then 30 s doubling up to 1 h.
    pub const REGISTER: Policy = Policy {
        free: 5,
        first_block: Duration::from_secs(30),
        max_block: Duration::from_secs(3600),
        forget_after: Duration::from_secs(3600),
        max_keys: 100_000,
    };
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Monotonic time until which the key is blocked.
    blocked_until: Duration,
    last: Duration,
}

pub struct Throttle {
    policy: Policy,
    clock: Arc<dyn Clock>,
    keys: Mutex<HashMap<String, Entry>>,
}

/// The key of a source address (IPv6 by its /64); `None` for loopback, which is not
/// throttled per address: everything that comes through a local proxy has that address, and
/// throttling it would throttle everyone (the per-username count still applies).
pub fn address_key(addr: IpAddr) -> Option<String> {
    let addr = match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        v4 => v4,
    };
    if addr.is_loopback() {
        return None;
    }
    Some(match addr {
        IpAddr::V4(a) => format!("addr:{a}"),
        IpAddr::V6(a) => {
            let s = a.segments();
            format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    })
}

impl Throttle {
    pub fn new(policy: Policy, clock: Arc<dyn Clock>) -> Throttle {
        Throttle {
            policy,
            clock,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(time left)` while any of `keys` is blocked.
    pub fn check<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<(), Duration> {
        let now = self.clock.monotonic();
        let map = self.lock();
        let left = keys
            .into_iter()
            .filter_map(|k| map.get(k))
            .filter(|e| e.blocked_until > now)
            .map(|e| e.blocked_until - now)
            .max();
        match left {
            Some(left) => Err(left),
            None => Ok(()),
        }
    }

    /// Counts a failure (or, for registrations, an attempt) of each of `keys`.
    pub fn failed<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let now = self.clock.monotonic();
        let p = self.policy;
        let mut map = self.lock();
        for key in keys {
            if !map.contains_key(key) && map.len() >= p.max_keys {
                Self::make_room(&mut map, now, p);
            }
            let e = map.entry(key.to_string()).or_insert(Entry {
                failures: 0,
                blocked_until: Duration::ZERO,
                last: now,
            });
            if now.saturating_sub(e.last) > p.forget_after {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            if e.failures > p.free {
                let doublings = (e.failures - p.free - 1).min(20);
                let block = (p.first_block * 2u32.pow(doublings)).min(p.max_block);
                e.blocked_until = now + block;
            }
        }
    }

    /// Forgets `keys` (a success).
    pub fn succeeded<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut map = self.lock();
        for key in keys {
            map.remove(key);
        }
    }

    /// Keys currently kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn make_room(map: &mut HashMap<String, Entry>, now: Duration, p: Policy) {
        map.retain(|_, e| now.saturating_sub(e.last) <= p.forget_after || e.blocked_until > now);
        if map.len() >= p.max_keys {
            // Drop the least recently failed tenth.
            let mut lasts: Vec<Duration> = map.values().map(|e| e.last).collect();
            let cut = lasts.len() / 10;
            lasts.select_nth_unstable(cut);
            let threshold = lasts[cut];
            map.retain(|_, e| e.last > threshold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ports::ManualClock;

    #[test]
    fn failures_past_the_free_ones_block_with_a_doubling_back_off() {
        let clock = Arc::new(ManualClock::new(0));
        let t = Throttle::new(Policy::LOGIN, clock.clone());
        for _ in 0..5 {
            assert!(t.check(["user:bob"]).is_ok());
            t.failed(["user:bob"]);
        }
        assert!(t.check(["user:bob"]).is_ok(), "five are free");
        t.failed(["user:bob"]);
        assert_eq!(t.check(["user:bob"]), Err(Duration::from_secs(1)));
        assert_eq!(
            t.check(["user:alice", "user:bob"]),
            Err(Duration::from_secs(1))
        );
        clock.advance(Duration::from_secs(1));
        assert!(t.check(["user:bob"]).is_ok());
        t.failed(["user:bob"]);
        assert_eq!(t.check(["user:bob"]), Err(Duration::from_secs(2)));
        // A success forgets; a long quiet period too.
        t.succeeded(["user:bob"]);
        assert!(t.check(["user:bob"]).is_ok());
        for _ in 0..7 {
            t.failed(["user:carol"]);
        }
        clock.advance(Duration::from_secs(901));
        t.failed(["user:carol"]);
        assert!(t.check(["user:carol"]).is_ok(), "counting starts over");
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_keys() {
        let clock = Arc::new(ManualClock::new(0));
        let policy = Policy {
            max_keys: 100,
            ..Policy::LOGIN
        };
        let t = Throttle::new(policy, clock.clone());
        for i in 0..10_000 {
            t.failed([format!("addr:{i}").as_str()]);
            if i % 100 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(t.len() <= 100, "{}", t.len());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let v4: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(v4).unwrap(), "addr:10.0.0.1");
        for local in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(address_key(local.parse().unwrap()), None, "{local}");
        }
    }
}
