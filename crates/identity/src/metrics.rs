//! The identity service's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The KIND of key a rate limit is held under, never the key itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FingerprintLabel {
    pub fingerprint: String,
}

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct IdentityMetrics {
    pub issued: Family<ResultLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub issuer_ttl: FGauge,
    pub issuer_expiry: Family<FingerprintLabel, FGauge>,
    pub anchor_expiry: Family<FingerprintLabel, FGauge>,
    pub certify_duration: Histogram,
    /// Every refused Certify, logged or not.
    pub refusals: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<KeyLabel, Counter>,
}

impl IdentityMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            issued: Family::default(),
            reloads: Family::default(),
            issuer_ttl: FGauge::default(),
            issuer_expiry: Family::default(),
            anchor_expiry: Family::default(),
            certify_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            refusals: Family::default(),
            rate_limited: Family::default(),
        };
        registry.register(
            "certify_refusals",
            "Refused Certify requests by reason (the gRPC code), every one counted whether logged or not",
            m.refusals.clone(),
        );
        registry.register(
            "certify_rate_limited",
            "Certify requests refused by a rate limit, by the kind of key limited (renewal, join_token, pod, token, peer, global, global_verify)",
            m.rate_limited.clone(),
        );
        registry.register(
            "identity_cert_issued",
            "Certify requests by result (ok, or the gRPC code of the refusal)",
            m.issued.clone(),
        );
        registry.register(
            "issuer_reloads",
            "Issuer and anchor reloads by result (ok, or why the new files were refused)",
            m.reloads.clone(),
        );
        registry.register(
            "issuer_cert_ttl_seconds",
            "Seconds until the issuer certificate in force expires",
            m.issuer_ttl.clone(),
        );
        registry.register(
            "identity_issuer_expiration_timestamp_seconds",
            "NotAfter of the issuer certificate in force (unix seconds)",
            m.issuer_expiry.clone(),
        );
        registry.register(
            "identity_trust_anchor_expiration_timestamp_seconds",
            "NotAfter of each trust anchor in force (unix seconds)",
            m.anchor_expiry.clone(),
        );
        registry.register(
            "identity_certify_duration_seconds",
            "Time to answer a Certify request",
            m.certify_duration.clone(),
        );
        m
    }

    pub fn count_issue(&self, result: &str) {
        self.issued
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn count_reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}
