//! The proxy's Prometheus metrics, with Linkerd's names and labels.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Transport labels: `tls` is "true" or "no_identity", never "false".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: &'static str,
    pub peer: &'static str,
    pub tls: &'static str,
    pub no_tls_reason: String,
    pub client_id: Option<IdLabel>,
    pub server_id: Option<IdLabel>,
    pub target_port: u16,
    /// "http/1", "h2" or "opaque" (inbound, after detection).
    pub protocol: &'static str,
    /// The destination address, for plaintext outbound connections only, so
    /// every unprotected destination is counted by name.
    pub dst: String,
}

impl ConnLabels {
    /// An outbound mTLS connection to `server` for its port `target_port`.
    pub fn outbound_mesh(server: pki::Identity, target_port: u16, protocol: &'static str) -> Self {
        Self {
            direction: "outbound",
            peer: "dst",
            tls: "true",
            no_tls_reason: String::new(),
            client_id: None,
            server_id: Some(IdLabel(server)),
            target_port,
            protocol,
            dst: String::new(),
        }
    }
}

/// An identity as a label value: typed up to the moment it is written out.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IdLabel(pub pki::Identity);

impl EncodeLabelValue for IdLabel {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(e, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// A session protocol declared in an inbound transport header, and whether
/// the connection's bytes bore it out ("used") or not ("refused").
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

/// Which policy decided: Linkerd's authorization labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub srv_kind: String,
    pub srv_name: String,
    pub authz_kind: String,
    pub authz_name: String,
    pub route_name: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Connections in flight, so shutdown can drain them.
#[derive(Default, Debug)]
pub struct Active {
    n: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

pub struct ActiveGuard(std::sync::Arc<Active>);

impl Active {
    pub fn enter(self: &std::sync::Arc<Self>) -> ActiveGuard {
        self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveGuard(self.clone())
    }
    pub fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Resolves once no connection is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FingerprintLabel {
    pub fingerprint: String,
}

#[derive(Clone, Default)]
pub struct ProxyMetrics {
    pub tcp_open: Family<ConnLabels, Counter>,
    pub tcp_close: Family<ConnLabels, Counter>,
    pub read_bytes: Family<ConnLabels, Counter>,
    pub write_bytes: Family<ConnLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    /// Inbound connections whose transport header declared HTTP.
    pub session_protocol: Family<SessionLabels, Counter>,
    pub cert_expiry: FGauge,
    /// NotAfter of each anchor held, by fingerprint.
    pub anchor_expiry: Family<FingerprintLabel, FGauge>,
    pub cert_refresh: FGauge,
    pub refreshes: Family<ResultLabel, Counter>,
    pub tcp_authz_allow: Family<AuthzLabels, Counter>,
    pub tcp_authz_deny: Family<AuthzLabels, Counter>,
    pub http_authz_allow: Family<AuthzLabels, Counter>,
    pub http_authz_deny: Family<AuthzLabels, Counter>,
    /// 0 until the control plane pushed a bundle (the bootstrap file).
    pub bundle_generation: Gauge,
    pub bundle_refusals: Family<ReasonLabel, Counter>,
    /// Rewrites of the anchors file refused (the trust in force kept).
    pub anchors_file_refusals: Family<ReasonLabel, Counter>,
    /// Control-plane replicas left because they offered an older bundle.
    pub stale_control_planes: Counter,
    pub active: std::sync::Arc<Active>,
    /// Who talked to whom, reported to the control plane (not a metric:
    /// bounded by its own cap, not by label cardinality).
    pub edges: crate::edges::Edges,
}

impl ProxyMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("tcp_open", "Connections opened", self.tcp_open.clone());
        r.register("tcp_close", "Connections closed", self.tcp_close.clone());
        r.register(
            "tcp_read_bytes",
            "Bytes read from the peer",
            self.read_bytes.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to the peer",
            self.write_bytes.clone(),
        );
        r.register(
            "tcp_refused",
            "Connections refused by the proxy, by reason",
            self.refused.clone(),
        );
        r.register(
            "control_identity_cert_expiration_timestamp_seconds",
            "NotAfter of the proxy's certificate (unix seconds)",
            self.cert_expiry.clone(),
        );
        r.register(
            "control_identity_trust_anchor_expiration_timestamp_seconds",
            "NotAfter of each trust anchor the proxy holds (unix seconds)",
            self.anchor_expiry.clone(),
        );
        r.register(
            "control_identity_cert_refresh_timestamp_seconds",
            "When the proxy's certificate was last obtained (unix seconds)",
            self.cert_refresh.clone(),
        );
        r.register(
            "control_identity_cert_refreshes",
            "Certificate requests by result",
            self.refreshes.clone(),
        );
        r.register(
            "inbound_tcp_authz_allow",
            "Inbound connections allowed by policy",
            self.tcp_authz_allow.clone(),
        );
        r.register(
            "inbound_tcp_authz_deny",
            "Inbound connections denied by policy",
            self.tcp_authz_deny.clone(),
        );
        r.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests allowed by policy",
            self.http_authz_allow.clone(),
        );
        r.register(
            "trust_bundle_generation",
            "Generation of the trust bundle applied (0: the bootstrap anchors file)",
            self.bundle_generation.clone(),
        );
        r.register(
            "trust_bundle_refusals",
            "Trust bundles refused, by reason",
            self.bundle_refusals.clone(),
        );
        r.register(
            "trust_anchors_file_refusals",
            "Rewrites of the trust anchors file refused (the anchors in force kept), by reason",
            self.anchors_file_refusals.clone(),
        );
        r.register(
            "control_plane_stale",
            "Control-plane replicas left because they offered an older trust bundle than the one in force",
            self.stale_control_planes.clone(),
        );
        r.register(
            "inbound_session_protocol",
            "Inbound connections whose transport header declared a session protocol, by protocol and outcome (used instead of detection, or refused: the bytes were not that protocol)",
            self.session_protocol.clone(),
        );
        r.register(
            "inbound_http_authz_deny",
            "Inbound HTTP requests denied by policy",
            self.http_authz_deny.clone(),
        );
    }

    pub fn bundle_refused(&self, reason: &'static str) {
        self.bundle_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn anchors_file_refused(&self, reason: &'static str) {
        self.anchors_file_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn refuse(&self, direction: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }
}
