//! `weft.mesh.v1.Mesh/Attach` on the destination listener, mTLS required:
//! sends each proxy the trust bundle (again whenever it changes) and
//! renew-now requests; takes its reports, bound to the stream's identity.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use identity::IssuerStatus;
use mesh_api::v1::mesh_server::Mesh;
use mesh_api::v1::{
    Bundle, BundleVersion, ControlMessage, LocalFleetReply, LocalFleetRequest, ProxyReport,
    RenewNow, control_message,
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::bundle::LiveBundle;
use crate::fleet::{Fleet, Report};
use crate::own_cert::OwnCert;

type Bundles = watch::Receiver<Option<Arc<LiveBundle>>>;
type Own = watch::Receiver<Option<Arc<OwnCert>>>;

pub struct MeshService {
    pub fleet: Arc<Fleet>,
    pub bundle: Bundles,
    pub own: Own,
    pub issuer: watch::Receiver<IssuerStatus>,
    /// The control plane's identity: the only caller of LocalFleet.
    pub control_plane: pki::Identity,
    /// This process among the replicas (see `fleet_peers`).
    pub replica_id: String,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The bundle message, with the control plane's chain as it stands.
pub fn bundle_message(b: &LiveBundle, own: Option<&OwnCert>) -> ControlMessage {
    ControlMessage {
        kind: Some(control_message::Kind::Bundle(Bundle {
            version: Some(BundleVersion {
                generation: b.version.generation,
                sha256: b.version.sha256.clone(),
            }),
            pem: b.pem.clone(),
            control_plane_chain_pem: own
                .map(|o| pki::cert::to_pem(&o.certified.cert))
                .unwrap_or_default(),
        })),
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    type AttachStream = futures::stream::BoxStream<'static, Result<ControlMessage, Status>>;

    /// This replica's own proxies, for a peer replica's merged view: only
    /// the control plane's identity may ask (proxies' reports stay private).
    async fn local_fleet(
        &self,
        req: Request<LocalFleetRequest>,
    ) -> Result<Response<LocalFleetReply>, Status> {
        let caller = crate::peer::authenticated(&req, &self.issuer)?;
        if caller != self.control_plane {
            return Err(Status::permission_denied(format!(
                "only the control plane ({}) may read a replica's fleet; you are {caller}",
                self.control_plane
            )));
        }
        let now = now();
        let bundle = self.bundle.borrow().clone();
        let view = self.fleet.view(now, bundle.as_deref(), &[]);
        let proxies_json = serde_json::to_string(&view.proxies)
            .map_err(|e| Status::internal(format!("cannot encode the fleet: {e}")))?;
        let asked = req.get_ref();
        let edges_json = if asked.edges_since_s > 0 {
            // The asker judges which workloads are unmeshed, over the merged fleet.
            let scope = crate::fleet_edges::Scope {
                namespace: Some(asked.edges_namespace.clone()).filter(|n| !n.is_empty()),
                ..Default::default()
            };
            let edges = self.fleet.edges.window(now, asked.edges_since_s, &scope);
            serde_json::to_string(&edges)
                .map_err(|e| Status::internal(format!("cannot encode the edges: {e}")))?
        } else {
            String::new()
        };
        Ok(Response::new(LocalFleetReply {
            replica_id: self.replica_id.clone(),
            proxies_json,
            now,
            edges_json,
        }))
    }

    async fn attach(
        &self,
        req: Request<Streaming<ProxyReport>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let caller = crate::peer::authenticated(&req, &self.issuer)?;
        // The leaf this connection was made with: after a renewal the proxy
        // comes back on a new connection presenting the new one.
        let leaf_serial = req
            .peer_certs()
            .and_then(|c| {
                c.first()
                    .and_then(|l| pki::info::CertInfo::from_der(l).ok())
            })
            .map(|i| i.serial)
            .unwrap_or_default();
        let from = req.remote_addr().map(|a| a.ip());
        let reports = req.into_inner();
        let (ctl_tx, ctl) = mpsc::channel::<RenewNow>(4);
        let id = self.fleet.attach(&caller, ctl_tx, now());
        tracing::info!(identity = %caller, %leaf_serial, "proxy attached");
        let mut a = Attachment {
            fleet: self.fleet.clone(),
            id,
            caller,
            from,
            bundle: self.bundle.clone(),
            own: self.own.clone(),
            ctl,
            reports,
            first: None,
        };
        // The bundle in force goes first, before anything the proxy says.
        a.bundle.borrow_and_update();
        a.own.borrow_and_update();
        a.first = a.current();
        let stream = futures::stream::unfold(a, |mut a| async move {
            let m = a.next().await?;
            Some((Ok(m), a))
        });
        Ok(Response::new(stream.boxed()))
    }
}

/// One proxy's mesh stream. It has no task of its own: the connection
/// polls it for the next message to send, and it reads the proxy's reports
/// meanwhile. Dropped (the stream ended or the connection closed), it
/// detaches the proxy from the fleet.
struct Attachment {
    fleet: Arc<Fleet>,
    id: u64,
    caller: pki::Identity,
    from: Option<IpAddr>,
    bundle: Bundles,
    own: Own,
    ctl: mpsc::Receiver<RenewNow>,
    reports: Streaming<ProxyReport>,
    first: Option<ControlMessage>,
}

impl Attachment {
    /// The bundle in force, with our chain as it stands now.
    fn current(&self) -> Option<ControlMessage> {
        let b = self.bundle.borrow().clone()?;
        Some(bundle_message(&b, self.own.borrow().as_deref()))
    }

    /// The next message for the proxy, taking its reports until there is
    /// one; None once either side has ended.
    async fn next(&mut self) -> Option<ControlMessage> {
        if let Some(m) = self.first.take() {
            return Some(m);
        }
        loop {
            let next = tokio::select! {
                // A new bundle, or a new certificate of ours (a proxy that
                // refused the bundle for our old chain judges it again).
                r = self.bundle.changed() => r.ok().map(|()| self.current()),
                r = self.own.changed() => r.ok().map(|()| self.current()),
                renew = self.ctl.recv() => renew.map(|r| Some(ControlMessage {
                    kind: Some(control_message::Kind::RenewNow(r)),
                })),
                report = self.reports.message() => match report {
                    Ok(Some(r)) => {
                        self.take(r);
                        Some(None)
                    }
                    Ok(None) | Err(_) => None,
                },
            };
            if let Some(m) = next? {
                return Some(m);
            }
        }
    }

    fn take(&self, r: ProxyReport) {
        if r.identity.parse::<pki::Identity>().ok().as_ref() != Some(&self.caller) {
            tracing::warn!(
                stream_identity = %self.caller,
                claimed = %r.identity,
                "ignored a report claiming another identity than the stream's mTLS identity"
            );
            return;
        }
        let edges = crate::fleet_edges::Reported::from_proto(&r, &self.caller);
        self.fleet.edges.record(edges, now());
        self.fleet.report(
            self.id,
            Report::from_proto(r, self.caller.clone(), self.from),
            now(),
        );
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        tracing::info!(identity = %self.caller, "proxy detached");
        self.fleet.detach(self.id, now());
    }
}
