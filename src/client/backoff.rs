//! Reconnect delays: exponential from 0.5 s, doubling to at most 30 s, with ±20 % jitter so that
//! many clients dropped by one node restart do not come back in lockstep.

use std::time::Duration;

use rand::Rng;

pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(30);

/// The delay before reconnect attempt `attempt` (0-based), without jitter.
pub fn base_delay(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    INITIAL.saturating_mul(factor).min(MAX)
}

/// The delay before attempt `attempt`, with jitter.
pub fn delay(attempt: u32) -> Duration {
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    base_delay(attempt).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        assert_eq!(base_delay(0), Duration::from_millis(500));
        assert_eq!(base_delay(1), Duration::from_secs(1));
        assert_eq!(base_delay(2), Duration::from_secs(2));
        assert_eq!(base_delay(6), Duration::from_secs(30));
        assert_eq!(base_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for attempt in 0..10 {
            let d = delay(attempt);
            let b = base_delay(attempt);
            assert!(d >= b.mul_f64(0.8) && d <= b.mul_f64(1.2), "{d:?} vs {b:?}");
        }
    }
}
