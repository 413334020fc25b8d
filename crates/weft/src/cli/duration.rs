//! Durations and times as operators type them: `87600h`, `60d`, `1h30m`, `20s`,
//! or an RFC 3339 time for `--not-before`/`--not-after`.

use std::time::Duration;

use time::OffsetDateTime;

/// Parses `90s`, `15m`, `24h`, `60d`, `1h30m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("{s:?} is not a duration ({why}); write it like 20s, 15m, 24h, 60d or 1h30m")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(bad(&format!("unknown unit {c:?}"))),
        };
        let n: u64 = num.parse().map_err(|_| bad("a unit without a number"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("it is too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad("a number without a unit at the end"));
    }
    Ok(Duration::from_secs(total))
}

/// A time given either as an offset from `now` (`87600h`, `-1h`) or as an
/// RFC 3339 time (`2030-01-01T00:00:00Z`).
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = parse_duration(rest)
        .map_err(|e| format!("{e}, or as an RFC 3339 time such as 2030-01-01T00:00:00Z"))?;
    let d = time::Duration::try_from(d).map_err(|_| format!("{s:?} is too far away"))?;
    let t = if neg {
        now.checked_sub(d)
    } else {
        now.checked_add(d)
    };
    t.ok_or_else(|| format!("{s:?} is too far away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("87600h").unwrap(),
            Duration::from_secs(87600 * 3600)
        );
        assert_eq!(
            parse_duration("60d").unwrap(),
            Duration::from_secs(60 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("20").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        for bad in ["", "h", "10x", "10h5", "-5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        let now = time::macros::datetime!(2026-01-01 0:00 UTC);
        assert_eq!(
            parse_time("24h", now).unwrap(),
            time::macros::datetime!(2026-01-02 0:00 UTC)
        );
        assert_eq!(
            parse_time("-1h", now).unwrap(),
            time::macros::datetime!(2025-12-31 23:00 UTC)
        );
        assert_eq!(
            parse_time("2030-01-01T00:00:00Z", now).unwrap(),
            time::macros::datetime!(2030-01-01 0:00 UTC)
        );
        assert!(
            parse_time("tomorrow", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
