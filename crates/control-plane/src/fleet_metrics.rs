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
    }
}
