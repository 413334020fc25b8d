//! Builds the destination service's workload index from resources.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::workloads::{
    ANN_INBOUND_PORT, ANN_SKIP_INBOUND, Broken, ClusterScope, DEFAULT_PROXY_INBOUND_PORT, Index,
    Workload, parse_ports,
};
use policy::resources::{Snapshot, WorkloadKind};

/// The index, plus one line per workload that could not be used (and why).
/// A resource file refused with no good version in force: what it claims,
/// read leniently (None: not even YAML).
pub struct RefusedFile {
    pub file: std::path::PathBuf,
    pub claims: Option<Vec<(String, std::net::IpAddr)>>,
}

pub fn build_index(
    snap: &Snapshot,
    refused: &[RefusedFile],
    control_plane_ns: &str,
    trust_domain: &str,
    cluster_networks: Option<&[policy::resources::Cidr]>,
) -> (Index, Vec<String>) {
    let mut workloads = Vec::new();
    let mut broken = Vec::new();
    let mut problems = Vec::new();
    for w in snap.workloads(control_plane_ns, trust_domain) {
        let ns = w.namespace().to_string();
        let mut refuse = |reason: String| {
            problems.push(format!(
                "{w}: {reason}; its addresses are refused until fixed"
            ));
            broken.push(Broken {
                namespace: ns.clone(),
                name: w.meta.name.clone(),
                ips: w.ips.clone(),
                reason,
            });
        };
        let identity = match w.identity(control_plane_ns) {
            Ok(i) => i,
            Err(e) => {
                let field = match w.kind {
                    WorkloadKind::ExternalWorkload => "spec.meshTLS.identity",
                    WorkloadKind::Pod => "spec.serviceAccountName",
                };
                refuse(format!("{field}: {e}"));
                continue;
            }
        };
        let ann = &w.meta.annotations;
        let skip = match ann.get(ANN_SKIP_INBOUND) {
            Some(v) => parse_ports(v)
                .map(Some)
                .map_err(|e| format!("annotation {ANN_SKIP_INBOUND}: {e}")),
            None => Ok(None),
        };
        // The annotation's ports, and those a Server declares opaque.
        let opaque = policy::ports::opaque_ports(ann, snap.namespace_annotations(&ns))
            .map(|a| &a | &policy::servers::opaque_by_server(snap, &w));
        let proxy_port = match (w.proxy_port.clone(), ann.get(ANN_INBOUND_PORT)) {
            (Some(from_spec), _) => from_spec,
            (None, None) => Ok(DEFAULT_PROXY_INBOUND_PORT),
            (None, Some(v)) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("annotation {ANN_INBOUND_PORT}: {v:?} is not a port")),
        };
        match (skip, opaque, proxy_port) {
            (Ok(skip), Ok(opaque), Ok(proxy_port)) => workloads.push(Workload {
                namespace: ns.clone(),
                name: w.meta.name.clone(),
                identity,
                ips: w.ips.clone(),
                ports: w.ports.iter().map(|(p, _)| *p).collect(),
                skip_inbound: skip.unwrap_or_default(),
                opaque,
                proxy_port,
            }),
            (a, b, c) => {
                let reasons: Vec<String> =
                    [a.err(), b.err(), c.err()].into_iter().flatten().collect();
                refuse(reasons.join("; "));
            }
        }
    }
    // Files refused before they ever loaded: the addresses they claim are
    // unknown (refused), never "not meshed"; unreadable ones make every
    // address no workload owns unknown.
    let mut degraded = None;
    for r in refused {
        match &r.claims {
            Some(claims) => {
                for (name, ip) in claims {
                    if workloads.iter().any(|w| w.ips.contains(ip)) {
                        continue;
                    }
                    let (ns, n) = name.split_once('/').unwrap_or(("default", name));
                    broken.push(Broken {
                        namespace: ns.to_string(),
                        name: n.to_string(),
                        ips: vec![*ip],
                        reason: format!("{} was refused and has never loaded", r.file.display()),
                    });
                }
            }
            None => {
                degraded = Some(format!(
                    "{} cannot be read as YAML and has never loaded",
                    r.file.display()
                ));
            }
        }
    }
    (
        Index {
            loaded: snap.loaded,
            cluster: cluster_networks.map(|networks| ClusterScope {
                networks: networks.to_vec(),
                unmeshed: unmeshed_pod_ips(snap, &workloads),
            }),
            services: crate::services::build_services(snap),
            workloads,
            broken,
            degraded,
        },
        problems,
    )
}

/// Live pods' addresses that no meshed workload holds. A finished pod's
/// address is left out: it is reused, and must not shadow its new owner.
fn unmeshed_pod_ips(snap: &Snapshot, meshed: &[Workload]) -> BTreeSet<IpAddr> {
    snap.pods()
        .filter(|p| p.has_own_address())
        .flat_map(|p| p.ips())
        .filter(|ip| !meshed.iter().any(|w| w.ips.contains(ip)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads::{Refusal, parse_target};

    #[test]
    fn a_file_refused_at_cold_start_makes_its_addresses_unknown() {
        let typo = "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: backend
  namespace: demo
spec:
  meshTLS:
    identty: backend.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 10.0.0.7
";
        assert!(policy::resources::parse_file(std::path::Path::new("b.yaml"), typo).is_err());
        let claims = policy::resources::claimed_addresses(typo);
        assert_eq!(
            claims,
            Some(vec![(
                "demo/backend".to_string(),
                "10.0.0.7".parse().unwrap()
            )])
        );
        let refused = [RefusedFile {
            file: "b.yaml".into(),
            claims,
        }];
        let loaded = policy::resources::merge(&Snapshot::default(), Ok(Default::default()));
        let (index, _) = build_index(&loaded, &refused, "weft", "cluster.local", None);
        let r = index.resolve(&parse_target("10.0.0.7:8080").unwrap());
        assert!(matches!(r, Err(Refusal::Broken { .. })), "{r:?}");
        // Other addresses are still known to be unmeshed.
        assert!(
            index
                .resolve(&parse_target("10.0.0.8:8080").unwrap())
                .is_ok()
        );

        // Not even YAML: every address no workload owns is unknown.
        let garbage = [RefusedFile {
            file: "g.yaml".into(),
            claims: policy::resources::claimed_addresses("key: [unclosed"),
        }];
        let (index, _) = build_index(&loaded, &garbage, "weft", "cluster.local", None);
        let r = index.resolve(&parse_target("10.0.0.8:8080").unwrap());
        assert!(matches!(r, Err(Refusal::Degraded { .. })), "{r:?}");
    }

    /// The snapshot of these documents, one file each.
    fn snapshot(docs: &[String]) -> Snapshot {
        let read = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = std::path::PathBuf::from(format!("d{i}"));
                let o = policy::resources::read_document(&p, d, "weft", "cluster.local");
                (p, o)
            })
            .collect();
        policy::resources::merge(&Snapshot::default(), Ok(read))
    }

    fn pod(name: &str, ip: &str, phase: &str, meshed: bool) -> String {
        let marker = if meshed {
            "    linkerd.io/control-plane-ns: weft\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: demo\n  labels:\n{marker}    app: x\nspec:\n  serviceAccountName: {name}\nstatus:\n  phase: {phase}\n  podIP: {ip}\n"
        )
    }

    /// A finished Job pod keeps its IP in its status; the live pod that
    /// reuses it owns it, meshed or not.
    #[test]
    fn a_finished_pods_reused_address_belongs_to_its_new_owner() {
        let docs = [
            pod("job-done", "10.10.0.130", "Succeeded", false),
            pod("web", "10.10.0.130", "Running", true),
            pod("done-meshed", "10.10.0.131", "Failed", true),
            pod("plain", "10.10.0.131", "Running", false),
        ];
        let snap = snapshot(&docs);
        let networks = [policy::resources::Cidr::new("10.10.0.0".parse().unwrap(), 16).unwrap()];
        let (index, problems) = build_index(&snap, &[], "weft", "cluster.local", Some(&networks));
        assert!(problems.is_empty(), "{problems:?}");
        let r = |t: &str| index.resolve(&parse_target(t).unwrap());
        match r("10.10.0.130:8080") {
            Ok(crate::workloads::Answer::Meshed { identity, .. }) => assert_eq!(
                identity.to_string(),
                "web.demo.serviceaccount.identity.weft.cluster.local"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r("10.10.0.131:8080"),
            Ok(crate::workloads::Answer::NotMeshed { .. })
        ));
        assert!(matches!(
            r("10.10.0.132:8080"),
            Err(Refusal::Unknown { .. })
        ));
    }

    fn server(name: &str, ns: &str, port: &str, protocol: &str) -> String {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: backend\n  port: {port}\n  proxyProtocol: {protocol}\n"
        )
    }

    /// A port is opaque in discovery when the annotation says so or the
    /// Server in force on it (first by name) declares `opaque`.
    #[test]
    fn a_server_declaring_opaque_makes_its_port_opaque_in_discovery() {
        let workload = "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: backend
  namespace: demo
  labels:
    app: backend
spec:
  meshTLS:
    identity: backend.demo.serviceaccount.identity.weft.cluster.local
    serverName: backend.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 10.0.0.7
  ports:
  - port: 8080
    name: http
  - port: 5000
    name: raw
  - port: 7000
"
        .to_string();
        let docs = [
            workload,
            server("by-name", "demo", "raw", "opaque"),
            server("by-number", "demo", "6000", "opaque"),
            // Two Servers on 7000: the first by name (HTTP/1) is in force.
            server("a-http", "demo", "7000", "HTTP/1"),
            server("b-opaque", "demo", "7000", "opaque"),
            server("elsewhere", "other", "8080", "opaque"),
        ];
        let snap = snapshot(&docs);
        let errors: Vec<_> = snap.errors().collect();
        assert!(errors.is_empty(), "{errors:?}");
        let (index, problems) = build_index(&snap, &[], "weft", "cluster.local", None);
        assert!(problems.is_empty(), "{problems:?}");
        let opaque =
            |port: u16| match index.resolve(&parse_target(&format!("10.0.0.7:{port}")).unwrap()) {
                Ok(crate::workloads::Answer::Meshed { opaque, .. }) => opaque,
                other => panic!("port {port}: {other:?}"),
            };
        assert!(opaque(5000), "a Server naming the port");
        assert!(opaque(6000), "a Server numbering the port");
        assert!(!opaque(7000), "the Server in force says HTTP/1");
        assert!(!opaque(8080), "a Server in another namespace");
        assert!(opaque(3306), "Linkerd's default opaque ports stay");
    }
}
