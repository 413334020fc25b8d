//! The issuance record behind Certify, wherever it lives: the state
//! directory's file (standalone) or IssuanceRecord objects in the
//! Kubernetes API (every replica). A certificate is handed out only once
//! its entry is durably written, and a live entry is never dropped: past
//! the cap on live entries Certify is refused instead.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::{Issuance, IssuanceRecord};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default cap on live entries: 100 000, about 1.2 live certificates
/// per proxy (24 h leaves renewed at 70% of their life) for 80 000 proxies;
/// in Kubernetes 100 IssuanceRecord parts of ~450 kB, well within etcd.
/// Storage binds before the issuance rate does: one replica records 60 to
/// 90 Certify/s (k8s_record test), over 5 million certificates a day.
pub const DEFAULT_MAX_LIVE: usize = 100_000;

/// Why an entry was not written, so nothing is issued for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordRefusal {
    #[error(
        "the issuance record holds {live} live certificates, its cap (--max-live-certificates {cap}); weft never forgets a certificate that is still valid, so it issues no more until some expire: raise --max-live-certificates, or find what requests so many certificates (issuance_record_full_total counts these refusals)"
    )]
    Full { live: usize, cap: usize },
    #[error("{0}")]
    Unavailable(String),
}

/// Where issued certificates are recorded.
pub trait Record: Send + Sync + 'static {
    /// Writes `entry` durably; only then may its certificate be handed out.
    fn record<'a>(&'a self, entry: &'a Issuance) -> BoxFuture<'a, Result<(), RecordRefusal>>;
    /// The join token a live certificate descends from, if recorded.
    fn origin_of(&self, serial: &str) -> Option<String>;
    /// Every entry still valid at `now`.
    fn live(&self, now: i64) -> Vec<Issuance>;
    /// Why issuance is refused for the record, while it is.
    fn failure(&self) -> Option<String>;
    /// Drops entries past their notAfter, and retries a failed write path
    /// (a success ends the refusal without waiting for a Certify).
    fn compact(&self, now: i64) -> BoxFuture<'_, Result<(), String>>;
    /// How often [`Record::compact`] is due while all is well.
    fn compact_every(&self) -> Duration {
        Duration::from_secs(600)
    }
}

/// The cap on live entries and the metrics that make it alertable.
#[derive(Clone, Debug)]
pub struct Cap {
    pub max: usize,
    /// Certify calls refused because the record is full.
    pub full: Counter,
    pub live: Gauge,
    pub max_gauge: Gauge,
}

impl Cap {
    pub fn new(max: usize) -> Self {
        let cap = Self {
            max,
            full: Counter::default(),
            live: Gauge::default(),
            max_gauge: Gauge::default(),
        };
        cap.max_gauge.set(i64::try_from(max).unwrap_or(i64::MAX));
        cap
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "issuance_record_full",
            "Certify calls refused (RESOURCE_EXHAUSTED) because the issuance record holds --max-live-certificates live entries",
            self.full.clone(),
        );
        r.register(
            "issuance_record_live_certificates",
            "Live (unexpired) certificates in the issuance record",
            self.live.clone(),
        );
        r.register(
            "issuance_record_max_live_certificates",
            "The cap on live certificates in the issuance record (--max-live-certificates)",
            self.max_gauge.clone(),
        );
    }

    /// Admits one more entry given a quick count (`approx`, which may still
    /// hold expired entries) and, only when that reaches the cap, the exact
    /// one; counts a refusal.
    pub fn check(&self, approx: usize, exact: impl FnOnce() -> usize) -> Result<(), RecordRefusal> {
        let live = if approx < self.max { approx } else { exact() };
        admit(live, self.max).inspect_err(|_| {
            self.full.inc();
        })
    }
}

/// Whether one more entry fits beside `live` ones under `cap`. Pure.
pub fn admit(live: usize, cap: usize) -> Result<(), RecordRefusal> {
    if live < cap {
        Ok(())
    } else {
        Err(RecordRefusal::Full { live, cap })
    }
}

impl Record for IssuanceRecord {
    fn record<'a>(&'a self, entry: &'a Issuance) -> BoxFuture<'a, Result<(), RecordRefusal>> {
        Box::pin(async move {
            let now = entry.issued_at;
            self.cap().check(self.known(), || self.live_count(now))?;
            self.append(entry).map_err(|e| {
                RecordRefusal::Unavailable(format!(
                    "{e}; the control plane's /ready says why until its state directory can be written again"
                ))
            })
        })
    }

    fn origin_of(&self, serial: &str) -> Option<String> {
        IssuanceRecord::origin_of(self, serial)
    }

    fn live(&self, now: i64) -> Vec<Issuance> {
        IssuanceRecord::live(self, now).unwrap_or_default()
    }

    fn failure(&self) -> Option<String> {
        IssuanceRecord::failure(self)
    }

    fn compact(&self, now: i64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            IssuanceRecord::compact(self, now)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_certify_is_refused_and_counted() {
        assert_eq!(admit(0, 1), Ok(()));
        assert_eq!(admit(99, 100), Ok(()));
        let e = admit(100, 100).unwrap_err();
        assert_eq!(
            e,
            RecordRefusal::Full {
                live: 100,
                cap: 100
            }
        );
        assert!(e.to_string().contains("--max-live-certificates"), "{e}");
        let cap = Cap::new(2);
        // Under the cap the exact count is not needed.
        cap.check(1, || unreachable!()).unwrap();
        // At the quick count's cap, expired entries do not count.
        cap.check(2, || 1).unwrap();
        assert!(matches!(
            cap.check(5, || 2),
            Err(RecordRefusal::Full { .. })
        ));
        assert_eq!(cap.full.get(), 1);
    }

    #[tokio::test]
    async fn the_file_record_refuses_past_its_cap_and_keeps_live_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = IssuanceRecord::open(tmp.path().join(crate::state::ISSUANCES), 100)
            .unwrap()
            .with_cap(Cap::new(2));
        let mk = |serial: &str, not_after| Issuance {
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            serial: serial.into(),
            spki_sha256: "ab".into(),
            issuer_sha256: "cd".into(),
            issued_at: 100,
            not_after,
            proof: "renewal".into(),
            origin: String::new(),
        };
        let r: &dyn Record = &rec;
        r.record(&mk("01", 150)).await.unwrap();
        r.record(&mk("02", 300)).await.unwrap();
        let e = r.record(&mk("03", 300)).await.unwrap_err();
        assert!(matches!(e, RecordRefusal::Full { live: 2, cap: 2 }), "{e}");
        assert_eq!(r.live(100).len(), 2, "no live entry was dropped");
        // Once one expires there is room again.
        let mut later = mk("03", 400);
        later.issued_at = 200;
        r.record(&later).await.unwrap();
        assert_eq!(r.live(200).len(), 2);
    }
}
