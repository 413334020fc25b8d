//! `io.linkerd.proxy.inbound.InboundServerPolicies`: GetPort and WatchPort,
//! the workload named as `{"ns":..,"external_workload":..}` or (Kubernetes
//! mode) Linkerd's `{"ns":..,"pod":..}`. Served with or without a client
//! certificate (see [`crate::peer::caller`]); a caller that presents one
//! must be the workload it asks about. A port without a Server gets the
//! default-policy Server, never an error. Every refusal counted and logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPolicies;
use linkerd2_proxy_api::inbound::{PortSpec, Server};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use identity::IssuerStatus;

use crate::refusals::ApiRefusals;

use policy::resources::{Snapshot, WorkloadKind};
use policy::translate::{PolicyDefaults, Unsettled, translate_keeping};

#[derive(Clone)]
pub struct PolicyService {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub issuer: watch::Receiver<IssuerStatus>,
    pub defaults: PolicyDefaults,
    /// The Server serving each (namespace, workload, port), so a conflicting
    /// Server that appears later does not take the port over.
    pub in_force: InForce,
    /// `Unsettled::of` reads files: once per snapshot, not per stream.
    pub unsettled: UnsettledCache,
    /// Kubernetes mode: pods are known (from the API server). Standalone,
    /// a pod workload is refused saying so.
    pub pods_known: bool,
    pub refusals: Arc<ApiRefusals>,
}

pub type InForce = Arc<Mutex<HashMap<(WorkloadKind, String, String, u16), String>>>;

/// How long a watch for a pod not yet known waits for it (its proxy falls
/// back to its last default, or denies, after its own discovery timeout).
const UNKNOWN_POD_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
pub type UnsettledCache = Arc<Mutex<Option<(Arc<Snapshot>, Arc<Unsettled>)>>>;

/// A proxy's workload string, Linkerd's form:
/// `{"ns":"demo","external_workload":"backend"}` or `{"ns":"demo","pod":"web-1"}`.
pub fn parse_workload(s: &str) -> Result<(WorkloadKind, String, String), String> {
    let v: serde_json::Value = serde_json::from_str(s)
        .map_err(|_| format!("workload {s:?} is not JSON; expected {{\"ns\":\"<namespace>\",\"pod\":\"<name>\"}} or {{\"ns\":\"<namespace>\",\"external_workload\":\"<name>\"}}"))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let ns = get("ns");
    let pod = get(WorkloadKind::Pod.workload_key());
    let external = get(WorkloadKind::ExternalWorkload.workload_key());
    match (ns, pod, external) {
        (Some(ns), Some(name), None) => Ok((WorkloadKind::Pod, ns, name)),
        (Some(ns), None, Some(name)) => Ok((WorkloadKind::ExternalWorkload, ns, name)),
        _ => Err(format!(
            "workload {s:?} must name \"ns\" and exactly one of \"pod\" or \"external_workload\""
        )),
    }
}

impl PolicyService {
    fn unsettled(&self, snap: &Arc<Snapshot>) -> Arc<Unsettled> {
        let mut cache = self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
        match cache.as_ref() {
            Some((s, u)) if Arc::ptr_eq(s, snap) => u.clone(),
            _ => {
                let u = Arc::new(Unsettled::of(snap, |f| crate::text_of(snap, f)));
                *cache = Some((snap.clone(), u.clone()));
                u
            }
        }
    }

    fn resolve(
        &self,
        snap: &Arc<Snapshot>,
        (kind, ns, name): (WorkloadKind, &str, &str),
        port: u16,
        caller: Option<&pki::Identity>,
    ) -> Result<Server, Status> {
        if !snap.loaded {
            return Err(Status::unavailable(
                "the control plane has not finished loading its resources; retry shortly",
            ));
        }
        let d = &self.defaults;
        let w = snap
            .workload(kind, ns, name, &d.control_plane_ns, &d.trust_domain)
            .ok_or_else(|| Status::not_found(format!("no meshed {kind} {ns}/{name}")))?;
        let declared = w
            .identity(&self.defaults.control_plane_ns)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if let Some(caller) = caller.filter(|c| **c != declared) {
            return Err(Status::permission_denied(format!(
                "{caller} may not read the policy of {ns}/{name}, whose identity is {declared}"
            )));
        }
        let unsettled = self.unsettled(snap);
        let key = (kind, ns.to_string(), name.to_string(), port);
        let mut in_force = self.in_force.lock().unwrap_or_else(|e| e.into_inner());
        let t = translate_keeping(
            snap,
            &w,
            port,
            &self.defaults,
            &unsettled,
            in_force.get(&key).map(String::as_str),
        );
        if t.server.labels.get("kind").map(String::as_str) == Some("server")
            && let Some(name) = t.server.labels.get("name")
        {
            in_force.insert(key, name.clone());
        } else {
            in_force.remove(&key);
        }
        for p in &t.problems {
            tracing::warn!(workload = %format!("{ns}/{name}"), port, "{p}");
        }
        Ok(t.server)
    }

    /// The first answer of a watch. A pod's proxy can ask before the pod
    /// watch has brought its pod here (it starts as soon as the pod runs):
    /// an unknown pod is waited for a moment rather than refused at once,
    /// which would make its proxy deny its first requests.
    async fn first(
        &self,
        rx: &mut watch::Receiver<Arc<Snapshot>>,
        workload: (WorkloadKind, &str, &str),
        port: u16,
        caller: Option<&pki::Identity>,
    ) -> Result<Server, Status> {
        let deadline = tokio::time::Instant::now() + UNKNOWN_POD_GRACE;
        loop {
            let snap = rx.borrow_and_update().clone();
            match self.resolve(&snap, workload, port, caller) {
                Err(e)
                    if e.code() == tonic::Code::NotFound
                        && workload.0 == WorkloadKind::Pod
                        && tokio::time::timeout_at(deadline, rx.changed())
                            .await
                            .is_ok_and(|r| r.is_ok()) => {}
                answer => return answer,
            }
        }
    }

    fn spec(
        &self,
        req: &Request<PortSpec>,
    ) -> Result<(WorkloadKind, String, String, u16, Option<pki::Identity>), Status> {
        let caller = crate::peer::caller(req, &self.issuer)?;
        let spec = req.get_ref();
        let (kind, ns, name) = parse_workload(&spec.workload).map_err(Status::invalid_argument)?;
        if kind == WorkloadKind::Pod && !self.pods_known {
            return Err(Status::failed_precondition(format!(
                "workload {:?} names a pod, but this control plane runs standalone (without --kubernetes) and knows no pods; name an ExternalWorkload of the resource directory ({{\"ns\":\"{ns}\",\"external_workload\":\"<name>\"}}), or run the control plane with --kubernetes",
                spec.workload
            )));
        }
        let port = u16::try_from(spec.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("port {} is not a TCP port", spec.port))
            })?;
        Ok((kind, ns, name, port, caller))
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for PolicyService {
    async fn get_port(&self, req: Request<PortSpec>) -> Result<Response<Server>, Status> {
        let peer = req.remote_addr();
        let refused = |s| self.refusals.refused("policy.GetPort", peer, s);
        let (kind, ns, name, port, caller) = self.spec(&req).map_err(refused)?;
        let snap = self.snapshot.borrow().clone();
        self.resolve(&snap, (kind, &ns, &name), port, caller.as_ref())
            .map(Response::new)
            .map_err(refused)
    }

    type WatchPortStream = crate::changes::Changes<Server>;

    async fn watch_port(
        &self,
        req: Request<PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let peer = req.remote_addr();
        let refused = |s| self.refusals.refused("policy.WatchPort", peer, s);
        let (kind, ns, name, port, caller) = self.spec(&req).map_err(refused)?;
        let mut rx = self.snapshot.clone();
        let first = self
            .first(&mut rx, (kind, &ns, &name), port, caller.as_ref())
            .await
            .map_err(refused)?;
        let this = self.clone();
        let stream = crate::changes::changes(rx, first, move |snap| {
            this.resolve(snap, (kind, &ns, &name), port, caller.as_ref())
                .map_err(|e| this.refusals.refused("policy.WatchPort", peer, e))
        });
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names() {
        assert_eq!(
            parse_workload(r#"{"ns":"demo","external_workload":"backend"}"#).unwrap(),
            (
                WorkloadKind::ExternalWorkload,
                "demo".to_string(),
                "backend".to_string()
            )
        );
        assert_eq!(
            parse_workload(r#"{"ns":"demo","pod":"web-1"}"#).unwrap(),
            (WorkloadKind::Pod, "demo".to_string(), "web-1".to_string())
        );
        assert!(parse_workload(r#"{"ns":"demo","pod":"a","external_workload":"b"}"#).is_err());
        assert!(parse_workload("demo:backend").is_err());
        assert!(parse_workload(r#"{"ns":"demo"}"#).is_err());
        assert!(parse_workload(r#"{"ns":"","external_workload":"x"}"#).is_err());
    }
}
