//! When to renew a certificate: the one decision every certificate holder
//! (proxy, control plane) makes, kept pure so it is tested without clocks.

use std::time::Duration;

use time::OffsetDateTime;

/// The share of the remaining lifetime to wait before renewing.
pub const REFRESH_FRACTION: f64 = 0.7;

/// How long to wait before renewing a certificate that expires at `expiry`:
/// 70% of the remaining lifetime, at least `min` (so a short-lived or clamped
/// certificate does not cause a renewal storm), and never past the expiry.
pub fn refresh_in(now: OffsetDateTime, expiry: OffsetDateTime, min: Duration) -> Duration {
    let remaining = (expiry - now).max(time::Duration::ZERO);
    let remaining = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
    remaining.mul_f64(REFRESH_FRACTION).max(min).min(remaining)
}

/// Backoff after a failed renewal: doubling from `base`, capped at `max`, and
/// never later than a tenth of what remains, so several tries fit before expiry.
pub fn retry_in(
    attempt: u32,
    base: Duration,
    max: Duration,
    now: OffsetDateTime,
    expiry: Option<OffsetDateTime>,
) -> Duration {
    let backoff = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    match expiry {
        Some(e) if e > now => {
            let tenth = Duration::try_from(e - now).unwrap_or(Duration::ZERO) / 10;
            backoff.min(tenth.max(base))
        }
        _ => backoff,
    }
}

/// `d` shortened by up to a tenth, by random `r`: proxies started (or
/// refused) together renew apart, never later than the rule says. Pure.
pub fn spread(d: Duration, r: u64) -> Duration {
    let tenth = d.as_millis() as u64 / 10;
    d - Duration::from_millis(if tenth == 0 { 0 } else { r % (tenth + 1) })
}

/// [`spread`] with a random `r` (not for secrets: enough to spread renewals).
pub fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    spread(d, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);
    const MIN: Duration = Duration::from_secs(10);

    #[test]
    fn renews_at_seventy_percent_of_what_remains() {
        let day = T + time::Duration::hours(24);
        assert_eq!(refresh_in(T, day, MIN), Duration::from_secs(86400 * 7 / 10));
        let later = T + time::Duration::hours(12);
        assert_eq!(
            refresh_in(later, day, MIN),
            Duration::from_secs(43200 * 7 / 10)
        );
    }

    #[test]
    fn minimum_applies_but_never_past_expiry() {
        assert_eq!(refresh_in(T, T + time::Duration::seconds(12), MIN), MIN);
        assert_eq!(
            refresh_in(T, T + time::Duration::seconds(5), MIN),
            Duration::from_secs(5)
        );
        assert_eq!(
            refresh_in(T, T - time::Duration::seconds(5), MIN),
            Duration::ZERO
        );
    }

    #[test]
    fn spread_shortens_by_at_most_a_tenth() {
        let d = Duration::from_secs(100);
        assert_eq!(spread(d, 0), d);
        assert_eq!(spread(d, 10_000), Duration::from_secs(90));
        for r in [1, 77, 9_999, u64::MAX] {
            let s = spread(d, r);
            assert!(s <= d && s >= Duration::from_secs(90), "{s:?}");
        }
        assert_eq!(
            spread(Duration::from_millis(5), 3),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn retry_backs_off_within_the_remaining_time() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        assert_eq!(retry_in(0, base, max, T, None), Duration::from_secs(1));
        assert_eq!(retry_in(3, base, max, T, None), Duration::from_secs(8));
        assert_eq!(retry_in(30, base, max, T, None), max);
        // 100 s left: never wait more than 10 s.
        let e = T + time::Duration::seconds(100);
        assert_eq!(retry_in(10, base, max, T, Some(e)), Duration::from_secs(10));
        // Expired: plain backoff.
        assert_eq!(retry_in(2, base, max, T, Some(T)), Duration::from_secs(4));
    }
}
