//! Fleet metrics: proxies per state and per bundle generation, renew-now
//! requests and their results.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::fleet::FleetView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenerationLabel {
    pub generation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabel {
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub trigger: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct FleetMetrics {
    pub bundle_generation: Gauge,
    pub proxies: Family<StateLabel, Gauge>,
    pub proxies_per_bundle: Family<GenerationLabel, Gauge>,
    /// Proxies (connected or stale) not on the bundle in force.
    pub old_bundle: Gauge,
    /// Proxies (connected or stale) whose leaf is not from the issuer in force.
    pub old_issuer: Gauge,
    /// The earliest NotAfter of the leaves the fleet holds (managed and unmanaged).
    pub leaf_earliest_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub renew_requests: Family<TriggerLabel, Counter>,
    pub renew_results: Family<ResultLabels, Counter>,
}

impl FleetMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "trust_bundle_generation",
            "Generation of the trust bundle in force (never goes backwards)",
            self.bundle_generation.clone(),
        );
        r.register(
            "fleet_proxies",
            "Proxies by state: connected, stale, unmanaged",
            self.proxies.clone(),
        );
        r.register(
            "fleet_proxies_bundle",
            "Proxies (connected or stale) by the bundle generation they applied",
            self.proxies_per_bundle.clone(),
        );
        r.register(
            "fleet_proxies_old_bundle",
            "Proxies (connected or stale) that have not applied the trust bundle in force",
            self.old_bundle.clone(),
        );
        r.register(
            "fleet_proxies_old_issuer",
            "Proxies (connected or stale) whose certificate is not from the issuer in force",
            self.old_issuer.clone(),
        );
        r.register(
            "fleet_leaf_earliest_expiration_timestamp_seconds",
            "The earliest NotAfter among the certificates the fleet holds, managed and unmanaged (unix seconds; absent until one is known)",
            self.leaf_earliest_expiry.clone(),
        );
        r.register(
            "renew_now_requests",
            "Renew-now requests sent to proxies, by trigger",
            self.renew_requests.clone(),
        );
        r.register(
            "renew_now_results",
            "Renew-now requests answered by a report, by trigger and result",
            self.renew_results.clone(),
        );
    }

    pub fn renew_request(&self, trigger: &'static str) {
        self.renew_requests
            .get_or_create(&TriggerLabel { trigger })
            .inc();
    }

    pub fn renew_result(&self, trigger: &'static str, result: &'static str) {
        self.renew_results
            .get_or_create(&ResultLabels { trigger, result })
            .inc();
    }

    /// Sets the gauges from a view.
    pub fn observe(&self, v: &FleetView) {
        let count = |s: &str| v.proxies.iter().filter(|p| p.state == s).count() as i64;
        for (state, n) in [
            ("connected", count("connected")),
            ("stale", count("stale")),
            ("unmanaged", v.unmanaged.len() as i64),
        ] {
            self.proxies.get_or_create(&StateLabel { state }).set(n);
        }
        self.proxies_per_bundle.clear();
        for p in &v.proxies {
            let generation = p
                .bundle
                .as_ref()
                .map(|b| b.generation.to_string())
                .unwrap_or_else(|| "none".into());
            self.proxies_per_bundle
                .get_or_create(&GenerationLabel { generation })
                .inc();
        }
        let count = |f: fn(&crate::fleet::ProxyView) -> bool| {
            v.proxies.iter().filter(|p| f(p)).count() as i64
        };
        self.old_bundle.set(count(|p| !p.bundle_current));
        self.old_issuer.set(count(|p| !p.issuer_current));
        let earliest = v
            .proxies
            .iter()
            .map(|p| p.not_after)
            .chain(v.unmanaged.iter().map(|u| u.not_after))
            .filter(|t| *t > 0)
            .min();
        if let Some(t) = earliest {
            self.leaf_earliest_expiry.set(t as f64);
        }
    }
}
