//! Refusals of the discovery APIs (Destination, InboundServerPolicies,
//! OutboundPolicies): every one counted in `control_api_refusals_total{api,
//! code}`, a few lines a second logged with the peer and the reason, so a
//! proxy that is refused is visible without letting a flood fill the disk.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use identity::refusal_log::{RefusalLog, Sample};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `destination.Get`, `policy.WatchPort`, `outbound.Watch`, ...
    pub api: &'static str,
    pub code: &'static str,
}

#[derive(Debug, Default)]
pub struct ApiRefusals {
    log: Mutex<RefusalLog>,
    pub total: Family<RefusalLabels, Counter>,
}

impl ApiRefusals {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let this = Arc::new(Self::default());
        registry.register(
            "control_api_refusals",
            "Refused Destination, policy and OutboundPolicies requests, by API and gRPC code",
            this.total.clone(),
        );
        this
    }

    /// Counts and (rate-limited) logs a refusal, and gives it back.
    pub fn refused(&self, api: &'static str, peer: Option<SocketAddr>, status: Status) -> Status {
        let code = identity::service::code_label(status.code());
        self.total.get_or_create(&RefusalLabels { api, code }).inc();
        let sample = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(Instant::now());
        if let Sample::Log { suppressed } = sample {
            tracing::info!(
                peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
                api,
                code = ?status.code(),
                reason = %status.message(),
                suppressed,
                "request refused{}",
                if suppressed > 0 {
                    format!(" ({suppressed} more refusals not logged since the last line; control_api_refusals_total counts them all)")
                } else {
                    String::new()
                }
            );
        }
        status
    }
}
