//! The fleet merged across replicas (Kubernetes mode). A proxy's
//! `weft.mesh.v1` stream is held by one replica, so each replica asks its
//! peers for theirs: found through the control plane's own endpoints (the
//! EndpointSlices of a Service in its namespace), asked over mTLS as the
//! control plane's own identity, and answered only when the caller is that
//! identity. A proxy connected to any replica shows as connected, the
//! newest report wins, and a peer that cannot be asked is named in the
//! view, never dropped silently. The merge is pure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use identity::IssuerStatus;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use mesh_api::v1::LocalFleetRequest;
use mesh_api::v1::mesh_client::MeshClient;
use pki::Identity;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fleet::{FleetView, ProxyView};
use crate::fleet_edges::EdgesView;
use crate::own_cert::OwnCert;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A peer replica as the merged view names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The address it was asked at (from the EndpointSlice).
    pub address: String,
    /// Its replica id, once it answered.
    pub replica_id: Option<String>,
    /// Connected proxies it holds.
    pub connected: usize,
    /// Why it could not be asked; its proxies are missing from the view.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "cannot list the EndpointSlices of Service {service} in {namespace}: {source}; check the weft-identity RBAC (list endpointslices)"
    )]
    List {
        service: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("this replica has no certificate of its own yet; the peers are asked once it has")]
    NoOwnCertificate,
    #[error("no issuer is in force, so a peer's certificate cannot be judged")]
    NoAnchors,
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot reach {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("{addr} answered {code:?}: {message}")]
    Refused {
        addr: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    #[error(
        "{addr} sent no edges (a replica older than this one?): its proxies' hops cannot be shown; upgrade every replica"
    )]
    NoEdges { addr: SocketAddr },
    #[error("{addr} did not answer within 2s; is it overloaded or partitioned?")]
    Timeout { addr: SocketAddr },
    #[error("{addr} sent a fleet that does not parse: {source}")]
    Decode {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// What one peer answered: its replica id, when it looked, its proxies.
pub type PeerAnswer = Result<(String, i64, Vec<ProxyView>), PeerError>;

/// Finds and asks the other replicas.
#[derive(Clone)]
pub struct Peers {
    pub client: kube::Client,
    pub namespace: String,
    /// The Service whose EndpointSlices list the replicas.
    pub service: String,
    /// The port (by name) of the destination listener, where the mesh
    /// service answers.
    pub port_name: String,
    pub replica_id: String,
    pub control_plane: Identity,
    pub own: watch::Receiver<Option<Arc<OwnCert>>>,
    pub issuer: watch::Receiver<IssuerStatus>,
}

/// Every ready endpoint address of the slices, at the port named
/// `port_name` (or the slice's only port).
pub fn addresses(slices: &[EndpointSlice], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let ports = s.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port_name))
            .or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for e in s.endpoints.iter().flatten() {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<std::net::IpAddr>() {
                    let addr = SocketAddr::new(ip, port);
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
    }
    out
}

/// Presents the control plane's current certificate as a client.
#[derive(Debug)]
pub(crate) struct OwnClientCert(pub(crate) Arc<CertifiedKey>);

impl ResolvesClientCert for OwnClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl Peers {
    /// mTLS to a peer: its chain judged by the anchors in force and its name
    /// checked against the control plane's identity (SNI), ours presented.
    fn tls(&self) -> Result<Arc<ClientConfig>, PeerError> {
        let own = self
            .own
            .borrow()
            .clone()
            .ok_or(PeerError::NoOwnCertificate)?;
        let status = self.issuer.borrow().clone();
        let state = status.current.as_ref().ok_or(PeerError::NoAnchors)?;
        let mut roots = RootCertStore::empty();
        for a in &state.anchors {
            roots.add(a.clone()).map_err(PeerError::Tls)?;
        }
        let mut cfg = ClientConfig::builder_with_provider(pki::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(PeerError::Tls)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(OwnClientCert(own.certified.clone())));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }

    /// The replicas the Service's EndpointSlices list now.
    pub async fn list(&self) -> Result<Vec<SocketAddr>, PeerError> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp =
            ListParams::default().labels(&format!("kubernetes.io/service-name={}", self.service));
        let list = slices.list(&lp).await.map_err(|source| PeerError::List {
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            source,
        })?;
        Ok(addresses(&list.items, &self.port_name))
    }

    /// Asks one replica for its own fleet.
    pub async fn ask(&self, addr: SocketAddr) -> PeerAnswer {
        self.ask_with(addr, None).await.map(|(answer, _)| answer)
    }

    /// Asks one replica for its own fleet and, with `edges` (window
    /// seconds, namespace), its own edges.
    async fn ask_with(
        &self,
        addr: SocketAddr,
        edges: Option<(i64, Option<String>)>,
    ) -> Result<((String, i64, Vec<ProxyView>), Option<EdgesView>), PeerError> {
        let cfg = self.tls()?;
        let name = ServerName::try_from(self.control_plane.to_string())
            .map_err(|e| PeerError::Tls(rustls::Error::General(e.to_string())))?;
        let call = async {
            let channel = crate::tls::mtls_channel(addr, cfg, name, PEER_TIMEOUT)
                .await
                .map_err(|e| PeerError::Connect {
                    addr,
                    detail: crate::tls::error_chain(&e),
                })?;
            let (edges_since_s, edges_namespace) = edges.clone().unwrap_or_default();
            MeshClient::new(channel)
                .local_fleet(LocalFleetRequest {
                    edges_since_s,
                    edges_namespace: edges_namespace.unwrap_or_default(),
                })
                .await
                .map_err(|s| PeerError::Refused {
                    addr,
                    code: s.code(),
                    message: s.message().to_string(),
                })
        };
        let reply = tokio::time::timeout(PEER_TIMEOUT, call)
            .await
            .map_err(|_| PeerError::Timeout { addr })??
            .into_inner();
        let proxies = serde_json::from_str(&reply.proxies_json)
            .map_err(|source| PeerError::Decode { addr, source })?;
        let edges = match edges {
            // A replica too old to send edges cannot prove its proxies' hops.
            Some(_) if reply.edges_json.is_empty() => {
                return Err(PeerError::NoEdges { addr });
            }
            Some(_) => Some(
                serde_json::from_str(&reply.edges_json)
                    .map_err(|source| PeerError::Decode { addr, source })?,
            ),
            None => None,
        };
        Ok(((reply.replica_id, reply.now, proxies), edges))
    }

    /// `local` merged with every peer's view, and the peers' own edges for
    /// the window (`since_s`, `namespace`): for /edges, whose unmeshed
    /// workloads are judged over the merged fleet. A peer that could not be
    /// asked is named in the view's `peers`.
    pub async fn merged_with_edges(
        &self,
        local: FleetView,
        since_s: i64,
        namespace: Option<String>,
    ) -> (FleetView, Vec<EdgesView>) {
        let addrs = match self.list().await {
            Ok(a) => a,
            Err(_) => return (self.merged(local).await, Vec::new()),
        };
        let ask = |a: SocketAddr| self.ask_with(a, Some((since_s, namespace.clone())));
        let answers = futures::future::join_all(addrs.iter().map(|a| ask(*a))).await;
        let mut edges = Vec::new();
        let mut fleet = Vec::new();
        for (addr, answer) in addrs.into_iter().zip(answers) {
            fleet.push((
                addr,
                answer.map(|(f, e)| {
                    if f.0 != self.replica_id {
                        edges.extend(e);
                    }
                    f
                }),
            ));
        }
        (merge(local, &self.replica_id, fleet), edges)
    }

    /// `local` merged with every peer's view (this replica skipped).
    pub async fn merged(&self, local: FleetView) -> FleetView {
        let addrs = match self.list().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("fleet peers: {e}");
                let mut v = local;
                v.peers.push(PeerStatus {
                    address: format!("Service {}/{}", self.namespace, self.service),
                    replica_id: None,
                    connected: 0,
                    error: Some(e.to_string()),
                });
                return v;
            }
        };
        let answers = futures::future::join_all(addrs.iter().map(|a| self.ask(*a))).await;
        merge(
            local,
            &self.replica_id,
            addrs.into_iter().zip(answers).collect(),
        )
    }
}

/// Which of two views of one proxy to keep: connected beats stale, then the
/// newest report (its age, taken at `now` of the view it came from).
fn newer(a: &(ProxyView, i64), b: &(ProxyView, i64)) -> bool {
    let connected = |p: &ProxyView| p.state == "connected";
    let reported_at =
        |(p, now): &(ProxyView, i64)| (p.last_report_age_s >= 0).then(|| now - p.last_report_age_s);
    match (connected(&a.0), connected(&b.0)) {
        (true, false) => true,
        (false, true) => false,
        _ => reported_at(a) > reported_at(b),
    }
}

/// The merged view: pure. `peers` are each asked address with its answer;
/// the one that is this replica (`own_id`) is skipped.
pub fn merge(local: FleetView, own_id: &str, peers: Vec<(SocketAddr, PeerAnswer)>) -> FleetView {
    let key = |p: &ProxyView| (p.workload.clone(), p.identity.to_string());
    let mut all: BTreeMap<(String, String), (ProxyView, i64)> = BTreeMap::new();
    let mut offer = |p: ProxyView, now: i64| {
        let k = key(&p);
        let candidate = (p, now);
        match all.get(&k) {
            Some(have) if !newer(&candidate, have) => {}
            _ => {
                all.insert(k, candidate);
            }
        }
    };
    let mut view = local;
    for p in std::mem::take(&mut view.proxies) {
        offer(p, view.now);
    }
    let mut statuses = Vec::new();
    for (addr, answer) in peers {
        match answer {
            Ok((id, _, _)) if id == own_id => {}
            Ok((id, now, proxies)) => {
                statuses.push(PeerStatus {
                    address: addr.to_string(),
                    replica_id: Some(id),
                    connected: proxies.iter().filter(|p| p.state == "connected").count(),
                    error: None,
                });
                for p in proxies {
                    offer(p, now);
                }
            }
            Err(e) => statuses.push(PeerStatus {
                address: addr.to_string(),
                replica_id: None,
                connected: 0,
                error: Some(e.to_string()),
            }),
        }
    }
    view.proxies = all.into_values().map(|(p, _)| p).collect();
    // A certificate this replica issued to a proxy whose stream another
    // replica holds is managed, not unmanaged.
    let managed: std::collections::BTreeSet<&Identity> =
        view.proxies.iter().map(|p| &p.identity).collect();
    let unmanaged = std::mem::take(&mut view.unmanaged)
        .into_iter()
        .filter(|u| !managed.contains(&u.identity))
        .collect();
    view.unmanaged = unmanaged;
    view.peers.extend(statuses);
    view
}

#[cfg(test)]
#[path = "fleet_peers_tests.rs"]
mod tests;
