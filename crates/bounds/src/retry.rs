//! Retry backoff shared by every reconnecting loop: doubling, capped, and
//! jittered so a fleet (or a set of watches) never retries in lockstep.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The delay before retry number `failures` (0-based): 100 ms doubling,
/// capped at 12.8 s, jittered (half to all of it).
pub fn backoff(failures: u32) -> Duration {
    jittered(failures, random())
}

/// The backoff for `failures` with random `r`: pure, so it is tested.
pub fn jittered(failures: u32, r: u64) -> Duration {
    let full = 100u64.saturating_mul(1 << failures.min(7));
    let half = full / 2;
    Duration::from_millis(half + r % (full - half + 1))
}

/// Not for secrets: enough to spread retries. std seeds each `RandomState`
/// from the OS and varies it per instance.
pub fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_within_bounds() {
        assert_eq!(jittered(0, 0), Duration::from_millis(50));
        assert_eq!(jittered(0, 50), Duration::from_millis(100));
        assert_eq!(jittered(3, u64::MAX), jittered(3, u64::MAX % 401));
        for f in [0, 1, 5, 7, 30] {
            let full = 100u64 << f.min(7);
            for r in [0, 1, 12345, u64::MAX] {
                let d = jittered(f, r).as_millis() as u64;
                assert!(d >= full / 2 && d <= full, "{f} {r}: {d}");
            }
        }
        // Two draws in a row differ (the jitter is not constant).
        let draws: std::collections::BTreeSet<u64> = (0..8).map(|_| random()).collect();
        assert!(draws.len() > 1);
    }
}
