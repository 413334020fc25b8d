//! `weft.mesh.v1.Mesh/Attach` on the destination listener, mTLS required:
//! sends each proxy the trust bundle (again whenever it changes) and
//! renew-now requests; takes its reports, bound to the stream's identity.

use std::sync::Arc;

use identity::IssuerStatus;
use mesh_api::v1::mesh_server::Mesh;
use mesh_api::v1::{Bundle, BundleVersion, ControlMessage, ProxyReport, control_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::bundle::LiveBundle;
use crate::fleet::Fleet;
use crate::own_cert::OwnCert;

pub struct MeshService {
    pub fleet: Arc<Fleet>,
    pub bundle: watch::Receiver<Option<Arc<LiveBundle>>>,
    pub own: watch::Receiver<Option<Arc<OwnCert>>>,
    pub issuer: watch::Receiver<IssuerStatus>,
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
    type AttachStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn attach(
        &self,
        req: Request<Streaming<ProxyReport>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let caller = crate::peer::authenticated(&req, &self.issuer)?.to_string();
        let mut reports = req.into_inner();
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMessage>(16);
        let (out_tx, out) = mpsc::channel(16);
        let id = self.fleet.attach(&caller, ctl_tx, now());
        let fleet = self.fleet.clone();
        let mut bundle = self.bundle.clone();
        let mut own = self.own.clone();
        tracing::info!(identity = %caller, "proxy attached");
        // The bundle in force goes first, before anything the proxy says.
        let first = bundle.borrow_and_update().clone();
        if let Some(b) = first {
            let own = own.borrow().clone();
            let _ = out_tx.try_send(Ok(bundle_message(&b, own.as_deref())));
        }
        own.borrow_and_update();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // A new bundle, or a new certificate of ours: a proxy that
                    // refused the bundle for our old chain judges it again.
                    changed = async {
                        tokio::select! {
                            r = bundle.changed() => r.is_ok(),
                            r = own.changed() => r.is_ok(),
                        }
                    } => {
                        if !changed { break }
                        own.borrow_and_update();
                        let b = bundle.borrow_and_update().clone();
                        if let Some(b) = b {
                            let own = own.borrow().clone();
                            if out_tx.send(Ok(bundle_message(&b, own.as_deref()))).await.is_err() {
                                break;
                            }
                        }
                    }
                    msg = ctl_rx.recv() => match msg {
                        Some(m) => if out_tx.send(Ok(m)).await.is_err() { break },
                        None => break,
                    },
                    report = reports.message() => match report {
                        Ok(Some(r)) if r.identity != caller => {
                            tracing::warn!(
                                stream_identity = %caller,
                                claimed = %r.identity,
                                "ignored a report claiming another identity than the stream's mTLS identity"
                            );
                        }
                        Ok(Some(r)) => fleet.report(id, r.into(), now()),
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            tracing::info!(identity = %caller, "proxy detached");
            fleet.detach(id, now());
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}
