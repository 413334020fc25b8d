//! Refused Certify requests are logged a few lines a second at most: a flood
//! of refusals must not fill the disk. Every refusal is still counted (the
//! `certify_refusals_total` metric); the next line logged says how many were
//! left out.

use std::time::{Duration, Instant};

/// Whether to log this refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// Log it, saying that `suppressed` refusals before it were not logged.
    Log {
        suppressed: u64,
    },
    Skip,
}

/// At most `lines` lines per `window`.
#[derive(Debug)]
pub struct RefusalLog {
    lines: u32,
    window: Duration,
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    pub fn new(lines: u32, window: Duration) -> Self {
        Self {
            lines,
            window,
            started: None,
            logged: 0,
            suppressed: 0,
        }
    }

    pub fn sample(&mut self, now: Instant) -> Sample {
        let new_window = self
            .started
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if new_window {
            self.started = Some(now);
            self.logged = 0;
        }
        if self.logged < self.lines {
            self.logged += 1;
            Sample::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Sample::Skip
        }
    }
}

impl Default for RefusalLog {
    /// Five lines a second.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_a_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let (mut lines, mut reported) = (0u64, 0u64);
        // 10,000 refusals a second for 20 s.
        for i in 0..200_000u64 {
            if let Sample::Log { suppressed } = log.sample(t0 + Duration::from_micros(i * 100)) {
                lines += 1;
                reported += suppressed;
            }
        }
        assert_eq!(lines, 100);
        // Every refusal is either logged or reported as left out, except
        // those after the last line (the counter has them).
        assert_eq!(lines + reported + log.suppressed, 200_000);
        assert_eq!(log.suppressed, 200_000 / 20 - 5);
    }

    #[test]
    fn a_quiet_client_is_logged_every_time() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        for i in 0..10 {
            assert_eq!(
                log.sample(t0 + Duration::from_millis(300 * i)),
                Sample::Log { suppressed: 0 }
            );
        }
    }

    #[test]
    fn the_first_line_after_a_burst_says_how_many_were_left_out() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(2, Duration::from_secs(1));
        for _ in 0..2 {
            assert_eq!(log.sample(t0), Sample::Log { suppressed: 0 });
        }
        for _ in 0..7 {
            assert_eq!(log.sample(t0), Sample::Skip);
        }
        assert_eq!(
            log.sample(t0 + Duration::from_secs(1)),
            Sample::Log { suppressed: 7 }
        );
    }
}
