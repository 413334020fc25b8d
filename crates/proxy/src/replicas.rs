//! Which control-plane replica a new connection goes to, and when a replica
//! is stale. A control-plane address is a comma-separated list of
//! `host:port` entries, each a DNS name (resolved at every connect, maybe
//! to several addresses) or an IP. New connections spread at random over
//! the replicas that have not failed lately; a replica that failed (or
//! offered an older bundle) is tried last until its penalty is over, so a
//! proxy never waits on a dead replica while another answers. Pure: the
//! async code in `connect` and `control` only moves bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a failed replica is tried only after the others.
pub const PENALTY: Duration = Duration::from_secs(30);

/// When each replica last failed (connect, handshake, dropped stream, stale
/// bundle), shared by every connection of a proxy.
pub type Failures = HashMap<SocketAddr, Instant>;

/// The `host:port` entries of a control-plane address list.
pub fn entries(spec: &str) -> Vec<&str> {
    spec.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// The order to try `candidates` in: those that have not failed within
/// `penalty`, starting at a random one (`r`), so a fleet spreads evenly;
/// then the failed ones, the longest ago first.
pub fn order(
    candidates: &[SocketAddr],
    failures: &Failures,
    now: Instant,
    penalty: Duration,
    r: u64,
) -> Vec<SocketAddr> {
    let failed_at = |a: &SocketAddr| {
        failures
            .get(a)
            .copied()
            .filter(|t| now.saturating_duration_since(*t) < penalty)
    };
    let mut fresh: Vec<SocketAddr> = Vec::new();
    let mut penalised: Vec<(Instant, SocketAddr)> = Vec::new();
    for a in candidates {
        if fresh.contains(a) || penalised.iter().any(|(_, p)| p == a) {
            continue;
        }
        match failed_at(a) {
            Some(t) => penalised.push((t, *a)),
            None => fresh.push(*a),
        }
    }
    if !fresh.is_empty() {
        let start = (r % fresh.len() as u64) as usize;
        fresh.rotate_left(start);
    }
    penalised.sort_by_key(|(t, _)| *t);
    fresh.extend(penalised.into_iter().map(|(_, a)| a));
    fresh
}

/// A replica offering a bundle older than the one in force: it missed
/// updates (a lagging or partitioned replica), so the proxy goes elsewhere
/// and keeps its bundle; it is never a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the control plane offered bundle generation {offered}, older than generation {in_force} in force: a stale replica; reconnecting to another replica and keeping the bundle in force"
)]
pub struct Stale {
    pub offered: u64,
    pub in_force: u64,
}

/// Whether a bundle offered at generation `offered` comes from a stale
/// server, given the generation in force (None: the bootstrap file).
pub fn stale(offered: u64, in_force: Option<u64>) -> Option<Stale> {
    in_force
        .filter(|g| offered < *g)
        .map(|in_force| Stale { offered, in_force })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_split_on_commas() {
        assert_eq!(entries("a:1, b:2,,c:3 "), ["a:1", "b:2", "c:3"]);
        assert_eq!(entries("cp.weft.svc:8086"), ["cp.weft.svc:8086"]);
        assert!(entries(" , ").is_empty());
    }

    #[test]
    fn new_connections_spread_over_healthy_replicas() {
        let c = [a("10.0.0.1:8086"), a("10.0.0.2:8086"), a("10.0.0.3:8086")];
        let now = Instant::now();
        let none = Failures::new();
        let firsts: std::collections::BTreeSet<SocketAddr> = (0..3)
            .map(|r| order(&c, &none, now, PENALTY, r)[0])
            .collect();
        assert_eq!(firsts.len(), 3, "each replica is someone's first choice");
        for r in 0..6 {
            let o = order(&c, &none, now, PENALTY, r);
            assert_eq!(o.len(), 3);
            assert!(c.iter().all(|x| o.contains(x)), "every replica is tried");
        }
    }

    #[test]
    fn failed_replicas_go_last_oldest_failure_first() {
        let c = [a("10.0.0.1:8086"), a("10.0.0.2:8086"), a("10.0.0.3:8086")];
        let now = Instant::now() + Duration::from_secs(100);
        let mut f = Failures::new();
        f.insert(c[0], now - Duration::from_secs(1));
        f.insert(c[1], now - Duration::from_secs(5));
        for r in 0..4 {
            assert_eq!(order(&c, &f, now, PENALTY, r), [c[2], c[1], c[0]]);
        }
        // Past its penalty a replica is healthy again.
        f.insert(c[1], now - PENALTY - Duration::from_secs(1));
        let o = order(&c, &f, now, PENALTY, 0);
        assert_eq!(o.last(), Some(&c[0]));
        assert!(o[..2].contains(&c[1]) && o[..2].contains(&c[2]));
    }

    #[test]
    fn all_failed_still_tried_and_duplicates_once() {
        let c = [a("10.0.0.1:8086"), a("10.0.0.1:8086"), a("10.0.0.2:8086")];
        let now = Instant::now() + Duration::from_secs(10);
        let mut f = Failures::new();
        f.insert(c[0], now - Duration::from_secs(2));
        f.insert(c[2], now - Duration::from_secs(1));
        assert_eq!(order(&c, &f, now, PENALTY, 7), [c[0], c[2]]);
        assert!(order(&[], &f, now, PENALTY, 1).is_empty());
    }

    #[test]
    fn only_an_older_generation_is_stale() {
        assert_eq!(
            stale(3, Some(5)),
            Some(Stale {
                offered: 3,
                in_force: 5
            })
        );
        assert_eq!(stale(5, Some(5)), None, "the same generation is current");
        assert_eq!(stale(6, Some(5)), None, "a newer one is an update");
        assert_eq!(stale(1, None), None, "the bootstrap file has no generation");
        let msg = stale(3, Some(5)).unwrap().to_string();
        assert!(msg.contains("generation 3") && msg.contains("generation 5"));
    }
}
