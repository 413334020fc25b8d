//! The proxy's `weft.mesh.v1` stream: takes trust bundles (judged, then
//! applied to new handshakes or refused) and renew-now requests; reports
//! its state on every change and every 15 s.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::v1::mesh_client::MeshClient;
use mesh_api::v1::{Bundle, BundleRefusal, BundleVersion, ProxyReport, control_message};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::cert::{ProxyCert, RefreshStatus};
use crate::control::ControlPlane;
use crate::metrics::ProxyMetrics;
use crate::trust::{self, Trust, Version};

const HEARTBEAT: Duration = Duration::from_secs(15);

/// Why the mesh stream ended (it is opened again, backing off).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(transparent)]
    Connect(#[from] crate::connect::ConnectError),
    #[error("the control plane answered {}: {}", .0.code(), .0.message())]
    Status(#[source] tonic::Status),
    #[error("the control plane ended the stream")]
    Ended,
    #[error("the stream's sending half closed")]
    Closed,
    #[error(transparent)]
    Stale(#[from] crate::replicas::Stale),
}

pub struct MeshLink {
    /// The destination service's address (the mesh service shares it).
    pub addr: String,
    pub control: ControlPlane,
    pub trust: watch::Sender<Arc<Trust>>,
    pub cert: watch::Receiver<Option<Arc<ProxyCert>>>,
    pub refresh: watch::Receiver<RefreshStatus>,
    pub renew: mpsc::Sender<String>,
    pub identity: pki::Identity,
    pub workload: String,
    pub metrics: ProxyMetrics,
    /// Where the admin endpoint listens (reported, so `weft identity` can
    /// read the chain it serves).
    pub admin_addr: std::net::SocketAddr,
    pub tap_addr: std::net::SocketAddr,
    /// Random per process: the control plane tells a restart (counters
    /// from zero) from a reconnect.
    pub instance: String,
    /// What the mesh connections offer and accept (reported, so `weft
    /// check` can find proxies that could not complete a handshake).
    pub mesh_tls: pki::mesh_tls::MeshTls,
}

/// The last refused bundle and why: reported, and tried again whenever the
/// proxy's certificate changes (a renewal may be what it was waiting for).
#[derive(Default)]
struct Refused {
    bundle: Option<Bundle>,
    report: Option<BundleRefusal>,
}

fn api_version(v: &Version) -> BundleVersion {
    BundleVersion {
        generation: v.generation,
        sha256: v.sha256.clone(),
    }
}

impl MeshLink {
    pub async fn run(self) {
        let mut refused = Refused::default();
        let mut failures: u32 = 0;
        loop {
            match self.stream(&mut refused, &mut failures).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "mesh stream lost; the bundle in force stays");
                }
            }
            tokio::time::sleep(crate::control::backoff(failures)).await;
        }
    }

    fn report(&self, refused: &Refused) -> ProxyReport {
        let trust = self.trust.borrow().clone();
        let cert = self.cert.borrow().clone();
        let status = self.refresh.borrow().clone();
        let chain = cert
            .as_ref()
            .map(|c| c.certified.cert.clone())
            .unwrap_or_default();
        let (edges, edges_dropped) = self.metrics.edges.report();
        ProxyReport {
            identity: self.identity.to_string(),
            workload: self.workload.clone(),
            bundle: trust.version.as_ref().map(api_version),
            refused: refused.report.clone(),
            leaf_serial: cert.as_ref().map(|c| c.serial.clone()).unwrap_or_default(),
            spki_sha256: cert.as_ref().map(|c| c.spki.clone()).unwrap_or_default(),
            issuer_sha256: chain
                .get(1)
                .map(|c| pki::fingerprint(c))
                .unwrap_or_default(),
            anchor_sha256: trust.anchor_of(&chain).unwrap_or_default(),
            not_after_unix: cert
                .as_ref()
                .map(|c| c.not_after.unix_timestamp())
                .unwrap_or_default(),
            last_refresh: status.result.to_string(),
            last_refresh_unix: status.at,
            renew_request_id: status.renew_request_id,
            admin_addr: self.admin_addr.to_string(),
            tap_addr: self.tap_addr.to_string(),
            instance: self.instance.clone(),
            edges,
            edges_dropped,
            tls_cipher_suites: self.mesh_tls.cipher_suite_names(),
            tls_key_exchange: self.mesh_tls.key_exchange_names(),
        }
    }

    /// A bundle older than the one in force: this replica is stale (never
    /// a rollback); the stream ends and goes to another replica.
    fn stale(&self, b: &Bundle) -> Result<(), crate::replicas::Stale> {
        let offered = b.version.as_ref().map(|v| v.generation).unwrap_or_default();
        let in_force = self.trust.borrow().version.as_ref().map(|v| v.generation);
        crate::replicas::stale(offered, in_force).map_or(Ok(()), Err)
    }

    /// Judges a pushed bundle and applies it, or records why not.
    fn take_bundle(&self, b: Bundle, refused: &mut Refused) {
        let v = b.version.clone().unwrap_or_default();
        let version = Version {
            generation: v.generation,
            sha256: v.sha256,
        };
        let current = self.trust.borrow().clone();
        if current.version.as_ref() == Some(&version) {
            return;
        }
        let own = self.cert.borrow().clone();
        let cp = self.control.identity.clone();
        match trust::judge(
            version.clone(),
            &b.pem,
            current.version.as_ref(),
            own.as_ref()
                .map(|c| (c.certified.cert.as_slice(), c.serial.as_str())),
            &b.control_plane_chain_pem,
            &cp,
            OffsetDateTime::now_utc(),
        ) {
            Ok(t) => {
                tracing::info!(
                    generation = version.generation,
                    sha256 = %version.sha256,
                    anchors = t.anchors.len(),
                    "trust bundle applied; new handshakes use it"
                );
                self.metrics
                    .bundle_generation
                    .set(version.generation as i64);
                self.trust.send_replace(Arc::new(t));
                *refused = Refused::default();
            }
            Err(e) => {
                tracing::warn!(
                    generation = version.generation,
                    sha256 = %version.sha256,
                    "trust bundle refused: {e}"
                );
                self.metrics.bundle_refused(e.label());
                refused.report = Some(BundleRefusal {
                    version: Some(api_version(&version)),
                    reason: e.to_string(),
                });
                refused.bundle = Some(b);
            }
        }
    }

    /// One stream on a connection to a replica; a replica that failed
    /// under it, or offered an older bundle, goes last for the next one.
    async fn stream(&self, refused: &mut Refused, failures: &mut u32) -> Result<(), MeshError> {
        let lease = self
            .control
            .channel(&self.addr)
            .await
            .map_err(MeshError::Connect)?;
        let r = self.on_lease(&lease, refused, failures).await;
        if let Err(MeshError::Stale(s)) = &r {
            tracing::warn!(
                replica = %lease.replica,
                offered_generation = s.offered,
                in_force_generation = s.in_force,
                "{s}"
            );
            self.metrics.stale_control_planes.inc();
        }
        if let Err(e) = &r {
            self.control
                .failed(&self.addr, &lease, &e.to_string())
                .await;
        }
        r
    }

    async fn on_lease(
        &self,
        lease: &crate::control::Lease,
        refused: &mut Refused,
        failures: &mut u32,
    ) -> Result<(), MeshError> {
        let channel = lease.channel.clone();
        // A new leaf or bundle, or a failed replica: the stream moves.
        let moved = self.control.moved(lease);
        tokio::pin!(moved);
        let (tx, rx) = mpsc::channel(8);
        tx.send(self.report(refused))
            .await
            .map_err(|_| MeshError::Closed)?;
        let mut inbound = MeshClient::new(channel)
            .attach(ReceiverStream::new(rx))
            .await
            .map_err(MeshError::Status)?
            .into_inner();
        let mut cert = self.cert.clone();
        let mut refresh = self.refresh.clone();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let m = m
                        .map_err(MeshError::Status)?
                        .ok_or(MeshError::Ended)?;
                    // A stale replica is no healthy answer: it backs off.
                    if let Some(control_message::Kind::Bundle(b)) = &m.kind {
                        self.stale(b)?;
                    }
                    // A stream that answers is healthy: the next drop retries soon.
                    *failures = 0;
                    match m.kind {
                        Some(control_message::Kind::Bundle(b)) => self.take_bundle(b, refused),
                        Some(control_message::Kind::RenewNow(r)) => {
                            tracing::info!(request = %r.request_id, reason = %r.reason, "the control plane asks for a renewal now");
                            let _ = self.renew.try_send(r.request_id);
                            continue;
                        }
                        None => continue,
                    }
                }
                r = cert.changed() => {
                    if r.is_err() { return Ok(()) }
                    if let Some(b) = refused.bundle.take() {
                        self.take_bundle(b, refused);
                    }
                }
                r = refresh.changed() => if r.is_err() { return Ok(()) },
                _ = heartbeat.tick() => {}
                () = &mut moved => return Ok(()),
            }
            tx.send(self.report(refused))
                .await
                .map_err(|_| MeshError::Closed)?;
        }
    }
}
