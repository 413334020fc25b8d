//! The workload index behind the destination service, and the pure answer
//! to "what is at this target?": meshed, not meshed, or a refusal.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use pki::Identity;

pub const ANN_SKIP_INBOUND: &str = "config.linkerd.io/skip-inbound-ports";
pub const ANN_INBOUND_PORT: &str = "config.linkerd.io/inbound-port";
pub const DEFAULT_PROXY_INBOUND_PORT: u16 = 4143;
pub use policy::ports::{ANN_OPAQUE, DEFAULT_OPAQUE, parse_ports};

/// One meshed workload as the destination service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub identity: Identity,
    pub ips: Vec<IpAddr>,
    pub ports: BTreeSet<u16>,
    pub skip_inbound: BTreeSet<u16>,
    pub opaque: BTreeSet<u16>,
    pub proxy_port: u16,
}

/// A workload whose resource could not be used: its addresses answer
/// "unknown" (refused), never "not meshed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// False until the resource directory has been read completely once.
    pub loaded: bool,
    pub workloads: Vec<Workload>,
    pub broken: Vec<Broken>,
    /// Set while a resource file that never loaded cannot even be read: an
    /// address no workload owns might be described there, so it is unknown.
    pub degraded: Option<String>,
    /// Kubernetes mode: the cluster's networks and the addresses of pods
    /// that are not meshed. None: standalone, where an address no workload
    /// owns is not meshed.
    pub cluster: Option<ClusterScope>,
    /// Services and their ready endpoints (Kubernetes mode).
    pub services: Vec<crate::services::ServiceEntry>,
}

/// What Kubernetes mode knows about addresses no meshed workload owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterScope {
    /// Pod and service networks (`--cluster-networks`).
    pub networks: Vec<policy::resources::Cidr>,
    /// Addresses of live pods that are not meshed (their traffic passes).
    pub unmeshed: BTreeSet<IpAddr>,
}

impl ClusterScope {
    /// An address no meshed workload owns: outside the cluster (the
    /// internet, nodes) or an unmeshed pod it is not meshed; inside the
    /// cluster and owned by nothing it is unknown, and refused.
    fn judge(&self, addr: SocketAddr) -> Result<Answer, Refusal> {
        let inside = self.networks.iter().any(|n| n.contains_ip(addr.ip()));
        if !inside || self.unmeshed.contains(&addr.ip()) {
            return Ok(Answer::NotMeshed { addr });
        }
        Err(Refusal::Unknown {
            addr,
            networks: self
                .networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Named {
        namespace: String,
        name: String,
        port: u16,
    },
    Addr(SocketAddr),
    /// `name.ns.svc.<cluster-domain>:port`, or one endpoint of a headless
    /// Service by its hostname (a StatefulSet pod):
    /// `host.name.ns.svc.<cluster-domain>:port`.
    Service {
        namespace: String,
        name: String,
        host: Option<String>,
        port: u16,
    },
}

/// Parses `ns/name:port` (weft's extension) or `ip:port` / `[v6]:port`;
/// Linkerd's `host.ns.svc.cluster.local:port` authorities are not resolved here.
pub fn parse_target(path: &str) -> Result<Target, String> {
    if let Ok(addr) = path.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    if let Some(t) = crate::services::parse_service_target(path) {
        return t;
    }
    let bad = || format!("{path:?} is not ip:port or namespace/name:port");
    let (wl, port) = path.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let (ns, name) = wl
        .split_once('/')
        .filter(|(n, w)| !n.is_empty() && !w.is_empty() && !w.contains('/'))
        .ok_or_else(bad)?;
    Ok(Target::Named {
        namespace: ns.to_string(),
        name: name.to_string(),
        port,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Meshed {
        addr: SocketAddr,
        identity: Identity,
        proxy_port: u16,
        opaque: bool,
    },
    NotMeshed {
        addr: SocketAddr,
    },
}

impl Answer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Answer::Meshed { addr, .. } | Answer::NotMeshed { addr } => *addr,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the control plane has not finished loading its resources; retry shortly")]
    NotLoaded,
    #[error("no ExternalWorkload {0}/{1}; check the resource directory")]
    NoWorkload(String, String),
    #[error("port {port} is not a port of {ns}/{name} (its ports: {ports})")]
    UndeclaredPort {
        ns: String,
        name: String,
        port: u16,
        ports: String,
    },
    #[error("{addr} is claimed by more than one workload ({0}); fix the resources so one workload owns it", .workloads.join(", "))]
    Conflict {
        addr: SocketAddr,
        workloads: Vec<String>,
    },
    #[error("ExternalWorkload {0}/{1} has no workloadIPs")]
    NoAddress(String, String),
    #[error("ExternalWorkload {ns}/{name} cannot be used ({reason}); fix the resource")]
    Broken {
        ns: String,
        name: String,
        reason: String,
    },
    #[error("no Service {0}/{1}; check the name, or create the Service")]
    NoService(String, String),
    #[error(
        "Service {ns}/{name} has no {what}; a StatefulSet pod is named <pod>.<service>.<namespace>.svc.<cluster-domain>"
    )]
    NoHost {
        ns: String,
        name: String,
        what: String,
    },
    #[error("{addr} is not a known workload address, and {reason}; fix that file")]
    Degraded { addr: SocketAddr, reason: String },
    #[error(
        "{addr} is inside the cluster networks ({networks}) but no pod or service owns it; refused rather than sent in the clear (if it is outside the cluster, correct --cluster-networks)"
    )]
    Unknown { addr: SocketAddr, networks: String },
}

impl Index {
    pub fn resolve(&self, target: &Target) -> Result<Answer, Refusal> {
        if !self.loaded {
            return Err(Refusal::NotLoaded);
        }
        let broken = self.broken.iter().find(|b| match target {
            Target::Named {
                namespace, name, ..
            } => b.namespace == *namespace && b.name == *name,
            Target::Addr(a) => b.ips.contains(&a.ip()),
            Target::Service { .. } => false,
        });
        if let Some(b) = broken {
            return Err(Refusal::Broken {
                ns: b.namespace.clone(),
                name: b.name.clone(),
                reason: b.reason.clone(),
            });
        }
        match target {
            Target::Service { .. } => {
                let set = self.resolve_set(target)?;
                set.into_iter().next().ok_or_else(|| Refusal::NoHost {
                    ns: String::new(),
                    name: String::new(),
                    what: "ready endpoint".into(),
                })
            }
            Target::Named {
                namespace,
                name,
                port,
            } => {
                let w = self
                    .workloads
                    .iter()
                    .find(|w| w.namespace == *namespace && w.name == *name)
                    .ok_or_else(|| Refusal::NoWorkload(namespace.clone(), name.clone()))?;
                if !w.ports.contains(port) {
                    return Err(Refusal::UndeclaredPort {
                        ns: namespace.clone(),
                        name: name.clone(),
                        port: *port,
                        ports: w
                            .ports
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                let ip = *w
                    .ips
                    .first()
                    .ok_or_else(|| Refusal::NoAddress(namespace.clone(), name.clone()))?;
                Ok(answer_for(w, SocketAddr::new(ip, *port)))
            }
            Target::Addr(addr) => {
                let owners: Vec<&Workload> = self
                    .workloads
                    .iter()
                    .filter(|w| w.ips.contains(&addr.ip()))
                    .collect();
                // In ports mode many workloads share 127.0.0.1; a port declared
                // by exactly one of them picks it.
                let shared = owners.len() > 1;
                let names: Vec<String> = owners
                    .iter()
                    .map(|w| format!("{}/{}", w.namespace, w.name))
                    .collect();
                let owners: Vec<&Workload> = if shared {
                    owners
                        .into_iter()
                        .filter(|w| w.ports.contains(&addr.port()))
                        .collect()
                } else {
                    owners
                };
                match owners.as_slice() {
                    // A shared address whose port no owner declares: whose it
                    // is is unknown, and unknown is never "not meshed".
                    [] if shared => Err(Refusal::Conflict {
                        addr: *addr,
                        workloads: names,
                    }),
                    [] => match (&self.degraded, &self.cluster) {
                        (Some(reason), _) => Err(Refusal::Degraded {
                            addr: *addr,
                            reason: reason.clone(),
                        }),
                        (None, Some(cluster)) => cluster.judge(*addr),
                        (None, None) => Ok(Answer::NotMeshed { addr: *addr }),
                    },
                    [w] => Ok(answer_for(w, *addr)),
                    many => Err(Refusal::Conflict {
                        addr: *addr,
                        workloads: many
                            .iter()
                            .map(|w| format!("{}/{}", w.namespace, w.name))
                            .collect(),
                    }),
                }
            }
        }
    }
}

fn answer_for(w: &Workload, addr: SocketAddr) -> Answer {
    if w.skip_inbound.contains(&addr.port()) {
        return Answer::NotMeshed { addr };
    }
    Answer::Meshed {
        addr,
        identity: w.identity.clone(),
        proxy_port: w.proxy_port,
        opaque: w.opaque.contains(&addr.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(name: &str, ip: &str, ports: &[u16]) -> Workload {
        Workload {
            namespace: "demo".into(),
            name: name.into(),
            identity: format!("{name}.demo.serviceaccount.identity.weft.cluster.local")
                .parse()
                .unwrap(),
            ips: vec![ip.parse().unwrap()],
            ports: ports.iter().copied().collect(),
            skip_inbound: [9999].into_iter().collect(),
            opaque: [5432].into_iter().collect(),
            proxy_port: 4143,
        }
    }

    fn index() -> Index {
        Index {
            loaded: true,
            workloads: vec![
                wl("backend", "10.0.0.2", &[8080, 5432]),
                wl("web", "10.0.0.3", &[80]),
            ],
            broken: vec![Broken {
                namespace: "demo".into(),
                name: "bad".into(),
                ips: vec!["10.0.0.9".parse().unwrap()],
                reason: "bad annotation".into(),
            }],
            cluster: None,
            services: vec![],
            degraded: None,
        }
    }

    #[test]
    fn targets_and_port_lists() {
        assert_eq!(
            parse_target("10.0.0.2:8080").unwrap(),
            Target::Addr("10.0.0.2:8080".parse().unwrap())
        );
        assert_eq!(
            parse_target("demo/backend:8080").unwrap(),
            Target::Named {
                namespace: "demo".into(),
                name: "backend".into(),
                port: 8080
            }
        );
        for bad in [
            "",
            "demo/backend",
            "demo/backend:0",
            "backend:8080",
            "a/b/c:1",
            "demo/:1",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_ports("80, 9000-9002").unwrap(),
            [80, 9000, 9001, 9002].into_iter().collect()
        );
        assert!(parse_ports("9002-9000").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("0").is_err());
    }

    #[test]
    fn answers() {
        let i = index();
        let t = |s: &str| parse_target(s).unwrap();
        assert!(matches!(
            i.resolve(&t("10.0.0.2:8080")),
            Ok(Answer::Meshed {
                opaque: false,
                proxy_port: 4143,
                ..
            })
        ));
        // Every port of a workload IP is meshed, declared or not...
        assert!(matches!(
            i.resolve(&t("10.0.0.2:7777")),
            Ok(Answer::Meshed { .. })
        ));
        // ...except skipped ones; opaque ports are hinted.
        assert!(matches!(
            i.resolve(&t("10.0.0.2:9999")),
            Ok(Answer::NotMeshed { .. })
        ));
        assert!(matches!(
            i.resolve(&t("10.0.0.2:5432")),
            Ok(Answer::Meshed { opaque: true, .. })
        ));
        assert!(matches!(
            i.resolve(&t("10.9.9.9:80")),
            Ok(Answer::NotMeshed { .. })
        ));
        assert!(matches!(
            i.resolve(&t("demo/backend:8080")),
            Ok(Answer::Meshed { .. })
        ));
        assert!(matches!(
            i.resolve(&t("demo/backend:7777")),
            Err(Refusal::UndeclaredPort { .. })
        ));
        assert!(matches!(
            i.resolve(&t("demo/nope:80")),
            Err(Refusal::NoWorkload(..))
        ));
        // A broken workload's address is unknown, never "not meshed".
        assert!(matches!(
            i.resolve(&t("10.0.0.9:80")),
            Err(Refusal::Broken { .. })
        ));
        assert!(matches!(
            i.resolve(&t("demo/bad:80")),
            Err(Refusal::Broken { .. })
        ));
        let not_loaded = Index {
            loaded: false,
            ..index()
        };
        assert_eq!(
            not_loaded.resolve(&t("10.0.0.2:8080")),
            Err(Refusal::NotLoaded)
        );
        // While an unreadable file may describe an address, it is unknown.
        let degraded = Index {
            degraded: Some("x.yaml is not YAML".into()),
            ..index()
        };
        assert!(matches!(
            degraded.resolve(&t("10.9.9.9:80")),
            Err(Refusal::Degraded { .. })
        ));
        assert!(matches!(
            degraded.resolve(&t("10.0.0.2:8080")),
            Ok(Answer::Meshed { .. })
        ));
    }

    #[test]
    fn two_claims_make_it_unknown() {
        let mut i = index();
        i.workloads.push(wl("impostor", "10.0.0.2", &[8080]));
        let e = i
            .resolve(&parse_target("10.0.0.2:8080").unwrap())
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Conflict { workloads, .. } if workloads.len() == 2),
            "{e}"
        );
        // Ports mode: shared 127.0.0.1, distinct ports.
        let ports = Index {
            loaded: true,
            workloads: vec![wl("a", "127.0.0.1", &[7000]), wl("b", "127.0.0.1", &[8080])],
            broken: vec![],
            degraded: None,
            cluster: None,
            services: vec![],
        };
        assert!(matches!(
            ports.resolve(&parse_target("127.0.0.1:9999").unwrap()),
            Err(Refusal::Conflict { .. })
        ));
        assert!(matches!(
            ports.resolve(&parse_target("127.0.0.1:8080").unwrap()),
            Ok(Answer::Meshed { identity, .. }) if identity.service_account() == "b"
        ));
    }

    /// Kubernetes mode: outside the cluster passes, an unmeshed pod passes,
    /// an unowned address inside the cluster is refused.
    #[test]
    fn kubernetes_mode_refuses_only_unowned_addresses_inside_the_cluster() {
        let mut idx = index();
        idx.cluster = Some(ClusterScope {
            networks: vec![policy::resources::Cidr::new("10.0.0.0".parse().unwrap(), 8).unwrap()],
            unmeshed: ["10.0.0.50".parse().unwrap()].into_iter().collect(),
        });
        let r = |t: &str| idx.resolve(&parse_target(t).unwrap());
        assert!(matches!(r("10.0.0.2:8080"), Ok(Answer::Meshed { .. })));
        assert!(matches!(r("10.0.0.50:80"), Ok(Answer::NotMeshed { .. })));
        assert!(matches!(r("192.0.2.1:443"), Ok(Answer::NotMeshed { .. })));
        let e = r("10.0.0.77:80").unwrap_err();
        assert!(matches!(e, Refusal::Unknown { .. }), "{e}");
        assert!(e.to_string().contains("--cluster-networks"), "{e}");
    }
}
