//! Services for the destination service (Kubernetes mode): a Service's
//! cluster IP or DNS name and port stand for the set of its ready
//! endpoints, each answered as its own address is (meshed with its pod's
//! identity, or not meshed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use policy::resources::{EndpointSlice, Kind, Object, Service, Snapshot};

use crate::workloads::{Answer, Index, Refusal, Target};

/// One Service as discovery answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// Service port → its ready endpoints (hostname, address).
    pub ports: BTreeMap<u16, Vec<(Option<String>, SocketAddr)>>,
    /// Service ports marked opaque on the Service itself.
    pub opaque: BTreeSet<u16>,
}

/// `[host.]name.ns.svc.<cluster-domain>:port`; None when `path` is not of
/// that shape (it may be another kind of target).
pub fn parse_service_target(path: &str) -> Option<Result<Target, String>> {
    let (host, port) = path.rsplit_once(':')?;
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let svc = labels.iter().position(|l| *l == "svc")?;
    let port = match port.parse::<u16>().ok().filter(|p| *p != 0) {
        Some(p) => p,
        None => return Some(Err(format!("{path:?}: {port:?} is not a port"))),
    };
    let (pod, name, namespace) = match &labels[..svc] {
        [name, ns] => (None, *name, *ns),
        [pod, name, ns] => (Some(pod.to_string()), *name, *ns),
        _ => {
            return Some(Err(format!(
                "{path:?} is not <service>.<namespace>.svc.<cluster-domain>:<port>"
            )));
        }
    };
    Some(Ok(Target::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
        host: pod,
        port,
    }))
}

/// The Services of `snap`, each with its ready endpoints per port.
pub fn build_services(snap: &Snapshot) -> Vec<ServiceEntry> {
    let slices: Vec<&EndpointSlice> = snap
        .of_kind(Kind::EndpointSlice)
        .filter_map(|s| match &s.object {
            Object::EndpointSlice(e) => Some(e),
            _ => None,
        })
        .collect();
    snap.of_kind(Kind::Service)
        .filter_map(|s| match &s.object {
            Object::Service(svc) => Some(entry(svc, &slices, snap)),
            _ => None,
        })
        .collect()
}

fn entry(svc: &Service, slices: &[&EndpointSlice], snap: &Snapshot) -> ServiceEntry {
    let ns = svc
        .meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mine: Vec<&&EndpointSlice> = slices
        .iter()
        .filter(|e| e.meta.namespace.as_deref() == Some(ns.as_str()))
        .filter(|e| e.service() == Some(svc.meta.name.as_str()))
        .collect();
    let mut ports = BTreeMap::new();
    for p in svc
        .spec
        .ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP"))
    {
        let mut eps: Vec<(Option<String>, SocketAddr)> = Vec::new();
        for slice in &mine {
            let Some(target) = slice.port_for(p.name.as_deref()) else {
                continue;
            };
            for e in slice.ready() {
                for a in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    eps.push((e.hostname.clone(), SocketAddr::new(a, target)));
                }
            }
        }
        eps.sort();
        eps.dedup();
        ports.insert(p.port, eps);
    }
    let opaque =
        policy::ports::opaque_ports(&svc.meta.annotations, snap.namespace_annotations(&ns))
            .unwrap_or_default();
    ServiceEntry {
        namespace: ns,
        name: svc.meta.name.clone(),
        cluster_ips: svc.cluster_ips(),
        ports,
        opaque,
    }
}

impl Index {
    /// Every endpoint behind `target`: one for a workload or an address, the
    /// ready endpoints for a Service (maybe none). A Service endpoint that
    /// cannot be answered (its pod's resources are broken) is left out,
    /// never sent to unauthenticated.
    pub fn resolve_set(&self, target: &Target) -> Result<Vec<Answer>, Refusal> {
        if !self.loaded {
            return Err(Refusal::NotLoaded);
        }
        let (svc, port, host) = match target {
            Target::Service {
                namespace,
                name,
                host,
                port,
            } => {
                let svc = self
                    .services
                    .iter()
                    .find(|s| s.namespace == *namespace && s.name == *name)
                    .ok_or_else(|| Refusal::NoService(namespace.clone(), name.clone()))?;
                (svc, *port, host.as_deref())
            }
            Target::Addr(a) => match self
                .services
                .iter()
                .find(|s| s.cluster_ips.contains(&a.ip()))
            {
                Some(svc) => (svc, a.port(), None),
                None => return self.resolve(target).map(|a| vec![a]),
            },
            Target::Named { .. } => return self.resolve(target).map(|a| vec![a]),
        };
        let eps = svc
            .ports
            .get(&port)
            .ok_or_else(|| Refusal::UndeclaredPort {
                ns: svc.namespace.clone(),
                name: svc.name.clone(),
                port,
                ports: svc
                    .ports
                    .keys()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let chosen: Vec<SocketAddr> = eps
            .iter()
            .filter(|(h, _)| host.is_none() || h.as_deref() == host)
            .map(|(_, a)| *a)
            .collect();
        if let Some(h) = host
            && chosen.is_empty()
        {
            return Err(Refusal::NoHost {
                ns: svc.namespace.clone(),
                name: svc.name.clone(),
                what: format!("ready endpoint named {h}"),
            });
        }
        let mut answers: Vec<Answer> = chosen
            .into_iter()
            .filter_map(|addr| match self.resolve(&Target::Addr(addr)) {
                Ok(a) => Some(a),
                Err(why) => {
                    tracing::debug!(%addr, service = %svc.name, %why, "endpoint left out");
                    None
                }
            })
            .map(|a| with_service_opaque(a, svc.opaque.contains(&port)))
            .collect();
        answers.sort_by_key(Answer::addr);
        Ok(answers)
    }
}

fn with_service_opaque(a: Answer, opaque: bool) -> Answer {
    match a {
        Answer::Meshed {
            addr,
            identity,
            proxy_port,
            opaque: o,
        } => Answer::Meshed {
            addr,
            identity,
            proxy_port,
            opaque: o || opaque,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::updates_between;
    use crate::workloads::parse_target;
    use linkerd2_proxy_api::destination::update;

    fn pod(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: demo\n  labels:\n    linkerd.io/control-plane-ns: weft\n    app: web\nspec:\n  serviceAccountName: web\nstatus:\n  phase: Running\n  podIP: {ip}\n"
        )
    }

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - name: http
    port: 80
    targetPort: http
";
    const HEADLESS: &str = "apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: demo
spec:
  clusterIP: None
  ports:
  - port: 5432
";

    fn slice(
        service: &str,
        name: &str,
        port: u16,
        endpoints: &[(&str, bool, Option<&str>)],
    ) -> String {
        let mut eps = String::new();
        for (ip, ready, host) in endpoints {
            eps.push_str(&format!(
                "- addresses: [{ip}]\n  conditions:\n    ready: {ready}\n"
            ));
            if let Some(h) = host {
                eps.push_str(&format!("  hostname: {h}\n"));
            }
        }
        format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-abc
  namespace: demo
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
endpoints:
{eps}ports:
- name: \"{name}\"
  port: {port}
"
        )
    }

    fn index(docs: &[String]) -> Index {
        let read = docs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = std::path::PathBuf::from(format!("d{i}"));
                (
                    p.clone(),
                    policy::resources::read_document(&p, d, "weft", "cluster.local"),
                )
            })
            .collect();
        let snap = policy::resources::merge(&Snapshot::default(), Ok(read));
        let networks = [policy::resources::Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap()];
        crate::index::build_index(&snap, &[], "weft", "cluster.local", Some(&networks)).0
    }

    fn addrs(set: &[Answer]) -> Vec<String> {
        set.iter().map(|a| a.addr().to_string()).collect()
    }

    #[test]
    fn a_service_stands_for_its_ready_endpoints_by_ip_and_by_name() {
        let idx = index(&[
            pod("web-1", "10.10.0.130"),
            pod("web-2", "10.10.0.131"),
            SERVICE.to_string(),
            // The named targetPort resolved by the slice: http -> 8080.
            slice(
                "web",
                "http",
                8080,
                &[
                    ("10.10.0.130", true, None),
                    ("10.10.0.131", true, None),
                    ("10.10.0.132", false, None),
                ],
            ),
        ]);
        let by_ip = idx
            .resolve_set(&parse_target("10.96.0.10:80").unwrap())
            .unwrap();
        assert_eq!(addrs(&by_ip), ["10.10.0.130:8080", "10.10.0.131:8080"]);
        assert!(by_ip.iter().all(|a| matches!(a, Answer::Meshed { .. })));
        let by_name = idx
            .resolve_set(&parse_target("web.demo.svc.cluster.local:80").unwrap())
            .unwrap();
        assert_eq!(by_name, by_ip);
        assert!(matches!(
            idx.resolve_set(&parse_target("web.demo.svc.cluster.local:81").unwrap()),
            Err(Refusal::UndeclaredPort { .. })
        ));
        assert!(matches!(
            idx.resolve_set(&parse_target("nope.demo.svc.cluster.local:80").unwrap()),
            Err(Refusal::NoService(..))
        ));
    }

    #[test]
    fn a_headless_services_pods_by_hostname_and_an_empty_service() {
        let unmeshed = |name: &str, ip: &str| {
            pod(name, ip).replace("    linkerd.io/control-plane-ns: weft\n", "")
        };
        let idx = index(&[
            unmeshed("db-0", "10.10.0.140"),
            unmeshed("db-1", "10.10.0.141"),
            HEADLESS.to_string(),
            slice(
                "db",
                "",
                5432,
                &[
                    ("10.10.0.140", true, Some("db-0")),
                    ("10.10.0.141", true, Some("db-1")),
                ],
            ),
            SERVICE.to_string(),
        ]);
        let one = idx
            .resolve_set(&parse_target("db-1.db.demo.svc.cluster.local:5432").unwrap())
            .unwrap();
        // Unmeshed pods' endpoints: inside the cluster but not pods weft knows.
        assert!(
            one.is_empty() || addrs(&one) == ["10.10.0.141:5432"],
            "{one:?}"
        );
        assert!(matches!(
            idx.resolve_set(&parse_target("db-9.db.demo.svc.cluster.local:5432").unwrap()),
            Err(Refusal::NoHost { .. })
        ));
        // No EndpointSlice yet: an empty set, said as NoEndpoints.
        let empty = idx
            .resolve_set(&parse_target("10.96.0.10:80").unwrap())
            .unwrap();
        assert!(empty.is_empty());
        let ups = updates_between(None, &empty);
        assert!(matches!(
            ups[0].update,
            Some(update::Update::NoEndpoints(_))
        ));
    }

    #[test]
    fn updates_are_deltas() {
        let a = |ip: &str| Answer::NotMeshed {
            addr: ip.parse().unwrap(),
        };
        let first = updates_between(None, &[a("10.0.0.1:80"), a("10.0.0.2:80")]);
        assert_eq!(first.len(), 1);
        let next = updates_between(
            Some(&[a("10.0.0.1:80"), a("10.0.0.2:80")]),
            &[a("10.0.0.2:80"), a("10.0.0.3:80")],
        );
        match (&next[0].update, &next[1].update) {
            (Some(update::Update::Remove(r)), Some(update::Update::Add(add))) => {
                assert_eq!(r.addrs.len(), 1);
                assert_eq!(add.addrs.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(updates_between(Some(&[a("10.0.0.1:80")]), &[a("10.0.0.1:80")]).is_empty());
    }
}
