//! Where the commands that look at the mesh (`tap`, `identity`, `edges`,
//! `diagnostics`) find the control plane and the proxies. Given
//! `--admin-addr`, there; else, with a kubeconfig, through the API server,
//! as `kubectl port-forward` does: the control plane's admin port (loopback
//! in its pod, by design) and each proxy's admin port, forwarded to local
//! ports for as long as the command runs; else the local control plane.
//! On a cluster a workload may also be named as kubectl names it
//! (`deploy/web`, `sts/db`, `ds/agent`, `pod/web-1`): its pods.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};

use super::Failure;
use super::check_tunnel::{ADMIN_PORT, hint, rbac_hint, ready};

/// The local control plane's admin address, the default without a cluster.
pub const LOCAL_ADMIN: &str = "127.0.0.1:9990";

/// Flags of every command that reads the control plane's admin endpoints.
#[derive(Debug, Clone, Args)]
pub struct AdminTarget {
    /// The control plane's admin address, host:port. Default: with a kubeconfig, a port-forward through the API server to a Ready control-plane pod (needs get and create on pods/portforward); without one, the local control plane (127.0.0.1:9990)
    #[arg(long, value_parser = super::host_port)]
    pub admin_addr: Option<String>,
    /// Kubeconfig of the cluster (default: KUBECONFIG, then ~/.kube/config if it exists)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The control plane's namespace on the cluster (commands that have no
/// other `--controller-namespace` take this).
#[derive(Debug, Clone, Args)]
pub struct ControllerNamespace {
    /// The control plane's namespace on the cluster
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
}

/// A workload as given: `NAMESPACE/NAME` (the fleet's name: a pod or an
/// ExternalWorkload) or a Kubernetes object whose pods it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadArg {
    /// `namespace/name` as the fleet lists it.
    Named(String),
    Object {
        kind: Kind,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    fn of(word: &str) -> Option<Self> {
        Some(match word {
            "deploy" | "deployment" | "deployments" => Self::Deployment,
            "sts" | "statefulset" | "statefulsets" => Self::StatefulSet,
            "ds" | "daemonset" | "daemonsets" => Self::DaemonSet,
            _ => return None,
        })
    }
}

impl Kind {
    /// As `kubectl get` takes it.
    fn plural(self) -> &'static str {
        match self {
            Self::Deployment => "deployments",
            Self::StatefulSet => "statefulsets",
            Self::DaemonSet => "daemonsets",
        }
    }
}

impl std::fmt::Display for WorkloadArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Named(n) => f.write_str(n),
            Self::Object {
                kind,
                namespace,
                name,
            } => write!(f, "{kind:?} {namespace}/{name}"),
        }
    }
}

/// Reads `arg` (NAME, NAMESPACE/NAME, pod/NAME, deploy/NAME, …) with
/// `namespace` as the default: pure.
pub fn workload_arg(arg: &str, namespace: &str) -> WorkloadArg {
    match arg.split_once('/') {
        None => WorkloadArg::Named(format!("{namespace}/{arg}")),
        Some(("pod" | "pods" | "po", name)) => WorkloadArg::Named(format!("{namespace}/{name}")),
        Some((word, name)) => match Kind::of(word) {
            Some(kind) => WorkloadArg::Object {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            None => WorkloadArg::Named(arg.to_string()),
        },
    }
}

/// A label selector as the API's list call takes it: pure.
pub fn selector_string(s: &LabelSelector) -> String {
    let mut out: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        out.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    out.join(",")
}

/// The cluster a command reached: the client, and a runtime whose worker
/// moves the forwarded bytes while the command's own code blocks.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
}

/// Where the command reads the control plane, and the cluster if any.
pub struct Reached {
    pub addr: String,
    pub cluster: Option<Cluster>,
}

impl AdminTarget {
    /// The control plane's admin address to use, forwarded if need be
    /// (to the control plane in namespace `cp_ns`).
    pub fn reach(&self, cp_ns: &str) -> Result<Reached, Failure> {
        let kubeconfig = match (&self.admin_addr, &self.kubeconfig) {
            (Some(addr), None) => {
                return Ok(Reached {
                    addr: addr.clone(),
                    cluster: None,
                });
            }
            (_, flag) => super::check::find_kubeconfig(flag.as_deref()),
        };
        let Some(kubeconfig) = kubeconfig else {
            return Ok(Reached {
                addr: self.admin_addr.clone().unwrap_or(LOCAL_ADMIN.into()),
                cluster: None,
            });
        };
        let cluster = Cluster::connect(kubeconfig)?;
        let addr = match &self.admin_addr {
            Some(a) => a.clone(),
            None => cluster.control_plane(cp_ns)?.to_string(),
        };
        Ok(Reached {
            addr,
            cluster: Some(cluster),
        })
    }
}

impl Reached {
    /// The `namespace/name` workloads `w` means: itself, or on a cluster
    /// the pods of the object it names.
    pub fn workloads(&self, w: &WorkloadArg) -> Result<Vec<String>, Failure> {
        match (w, &self.cluster) {
            (WorkloadArg::Named(n), _) => Ok(vec![n.clone()]),
            (WorkloadArg::Object { .. }, None) => Err(Failure::input(format!(
                "{w} is a Kubernetes object, and no kubeconfig was found (--kubeconfig, KUBECONFIG, ~/.kube/config); name the workload NAMESPACE/NAME as `weft check --proxy` lists it"
            ))),
            (WorkloadArg::Object { .. }, Some(c)) => c.pods_of(w),
        }
    }

    /// Where to reach a proxy's admin endpoint: its address, or on a
    /// cluster a local port forwarded to its pod (`namespace/pod`).
    pub fn proxy_admin(&self, workload: &str, admin_addr: &str) -> Result<String, String> {
        let Some(c) = &self.cluster else {
            return Ok(admin_addr.to_string());
        };
        let port = admin_addr
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .map_err(|_| format!("its proxy reported no usable admin address ({admin_addr:?})"))?;
        let (ns, pod) = workload
            .split_once('/')
            .ok_or_else(|| format!("{workload} is not NAMESPACE/POD"))?;
        c.forward(ns, pod, port)
            .map(|a| a.to_string())
            .map_err(|e| e.message)
    }
}

impl Cluster {
    fn connect(kubeconfig: PathBuf) -> Result<Self, Failure> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(Failure::fatal)?;
        let client = rt
            .block_on(control_plane::k8s::client(Some(&kubeconfig)))
            .map_err(|e| Failure::input(e.to_string()))?;
        Ok(Self { rt, client })
    }

    /// A local port forwarded to a Ready control-plane pod's admin port.
    fn control_plane(&self, ns: &str) -> Result<SocketAddr, Failure> {
        let pods = self
            .rt
            .block_on(ready(&self.client, ns))
            .map_err(|e| Failure::input(format!("{e}; {}", hint(ns))))?;
        let pod = pods.first().ok_or_else(|| {
            Failure::input(format!(
                "no Ready pod of the control plane in namespace {ns}; is weft installed there (weft check), or is it another namespace (--controller-namespace)?"
            ))
        })?;
        self.forward(ns, pod, ADMIN_PORT)
    }

    /// Listens on a local port; each connection to it is a new
    /// port-forward to `pod`'s `port` (a refused forward is said on stderr).
    fn forward(&self, ns: &str, pod: &str, port: u16) -> Result<SocketAddr, Failure> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Failure::fatal(format!("a local port for the port-forward: {e}")))?;
        let addr = listener.local_addr().map_err(Failure::fatal)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let (pod, what) = (pod.to_string(), format!("pod {ns}/{pod} port {port}"));
        let rbac = rbac_hint(ns);
        self.rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (pods, pod, what, rbac) = (pods.clone(), pod.clone(), what.clone(), rbac.clone());
                tokio::spawn(async move {
                    let mut pf = match pods.portforward(&pod, &[port]).await {
                        Ok(pf) => pf,
                        Err(e) => {
                            let e = control_plane::k8s::proofs::api_error(&e);
                            eprintln!("error: the API server refused a port-forward to {what}: {e}; {rbac}");
                            return;
                        }
                    };
                    if let Some(mut stream) = pf.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                    }
                    pf.abort();
                });
            }
        });
        Ok(addr)
    }

    /// The pods of a Deployment, StatefulSet or DaemonSet, as workloads.
    fn pods_of(&self, w: &WorkloadArg) -> Result<Vec<String>, Failure> {
        let WorkloadArg::Object {
            kind,
            namespace,
            name,
        } = w
        else {
            return Ok(Vec::new());
        };
        let c = self.client.clone();
        let missing = |e: kube::Error| match &e {
            kube::Error::Api(s) if s.code == 404 => Failure::input(format!(
                "{w} does not exist; `kubectl get {} -n {namespace}` lists them (give -n NAMESPACE)",
                kind.plural()
            )),
            _ => Failure::input(format!(
                "cannot read {w}: {}",
                control_plane::k8s::proofs::api_error(&e)
            )),
        };
        let selector = self.rt.block_on(async {
            match kind {
                Kind::Deployment => Api::<Deployment>::namespaced(c.clone(), namespace)
                    .get(name)
                    .await
                    .map(|d| d.spec.map(|s| s.selector)),
                Kind::StatefulSet => Api::<StatefulSet>::namespaced(c.clone(), namespace)
                    .get(name)
                    .await
                    .map(|d| d.spec.map(|s| s.selector)),
                Kind::DaemonSet => Api::<DaemonSet>::namespaced(c.clone(), namespace)
                    .get(name)
                    .await
                    .map(|d| d.spec.map(|s| s.selector)),
            }
        });
        let selector = selector.map_err(missing)?.unwrap_or_default();
        let list = self
            .rt
            .block_on(
                Api::<Pod>::namespaced(c, namespace)
                    .list(&ListParams::default().labels(&selector_string(&selector))),
            )
            .map_err(missing)?;
        let mut pods: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .map(|n| format!("{namespace}/{n}"))
            .collect();
        pods.sort();
        if pods.is_empty() {
            return Err(Failure::input(format!(
                "{w} has no pods; scale it up, or check its selector"
            )));
        }
        Ok(pods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn workloads_are_read_as_kubectl_names_them() {
        let named = |s: &str| WorkloadArg::Named(s.into());
        assert_eq!(workload_arg("web", "shop"), named("shop/web"));
        assert_eq!(workload_arg("demo/web", "shop"), named("demo/web"));
        assert_eq!(workload_arg("pod/web-1", "shop"), named("shop/web-1"));
        assert_eq!(workload_arg("po/web-1", "shop"), named("shop/web-1"));
        for (arg, kind) in [
            ("deploy/web", Kind::Deployment),
            ("deployment/web", Kind::Deployment),
            ("sts/web", Kind::StatefulSet),
            ("daemonsets/web", Kind::DaemonSet),
        ] {
            assert_eq!(
                workload_arg(arg, "shop"),
                WorkloadArg::Object {
                    kind,
                    namespace: "shop".into(),
                    name: "web".into()
                },
                "{arg}"
            );
        }
    }

    #[test]
    fn selectors_read_as_list_calls_take_them() {
        let s = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selector_string(&s), "app=web,tier in (a,b),!canary");
        assert_eq!(selector_string(&LabelSelector::default()), "");
    }
}
