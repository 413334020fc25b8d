//! Resource files that never loaded, as far as policy goes: a Server they
//! might define is missing, and the default must not stand in for it.

use serde::Deserialize;
use serde_json::Value;

use crate::resources::{LabelSelector, Meta, Server, ServerPort, ServerSpec, Snapshot, Workload};

/// What a refused Server still tells, when its selection can be read: the
/// workloads and port it selects deny, and no other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selection {
    pod_selector: Option<LabelSelector>,
    external_workload_selector: Option<LabelSelector>,
    port: ServerPort,
}

/// A refused Server whose selection could be read.
#[derive(Debug, Clone)]
pub struct NarrowClaim {
    server: Server,
}

/// A refused document's claim on policy: narrow when it is a Server whose
/// selector and port are readable, its whole namespace otherwise.
fn claim_of(doc: &Value) -> Option<NarrowClaim> {
    let spec = doc.get("spec").cloned()?;
    let sel: Selection = serde_json::from_value(spec).ok()?;
    // Exactly one selector, and one Kubernetes would accept: anything else
    // cannot say what the Server meant to select.
    match (&sel.pod_selector, &sel.external_workload_selector) {
        (Some(one), None) | (None, Some(one)) if crate::resources::selector_is_valid(one) => {}
        _ => return None,
    }
    Some(NarrowClaim {
        server: Server {
            meta: Meta {
                name: doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                ..Meta::default()
            },
            spec: ServerSpec {
                pod_selector: sel.pod_selector,
                external_workload_selector: sel.external_workload_selector,
                port: sel.port,
                proxy_protocol: Default::default(),
                access_policy: None,
            },
        },
    })
}

/// Resource files refused before they ever loaded, as far as policy goes: a
/// Server they might define is missing, and the default must not stand in
/// for it (that would widen access).
#[derive(Debug, Clone, Default)]
pub struct Unsettled {
    /// Namespaces a refused file may define Servers (or unknown kinds) in,
    /// where what they select cannot be read: every port no valid Server
    /// selects denies.
    pub namespaces: std::collections::BTreeSet<String>,
    /// Refused Servers whose selection can be read, by namespace: only the
    /// ports they select deny.
    pub narrow: std::collections::BTreeMap<String, Vec<NarrowClaim>>,
    /// A refused file is not even YAML: any namespace may be affected.
    pub all: bool,
    pub files: Vec<String>,
}

impl Unsettled {
    /// From the refused files of `snap` that have nothing in force; `read`
    /// gives a refused file's current text (the source does the I/O; None
    /// when it is gone).
    pub fn of(snap: &Snapshot, read: impl Fn(&std::path::Path) -> Option<String>) -> Self {
        let in_force: std::collections::BTreeSet<&std::path::Path> =
            snap.objects.values().map(|s| s.file.as_path()).collect();
        let mut u = Self::default();
        let files: std::collections::BTreeSet<&std::path::Path> = snap
            .errors()
            .map(|p| p.file.as_path())
            .filter(|f| !in_force.contains(f))
            .collect();
        // A conflicted Server is absent: its ports must not fall to the default.
        for (key, files) in &snap.conflicted {
            if key.kind == crate::resources::Kind::Server {
                u.namespaces.extend(key.namespace.clone());
                u.files
                    .extend(files.iter().map(|f| f.display().to_string()));
            }
        }
        for f in files {
            let Some(text) = read(f) else {
                continue;
            };
            match crate::resources::claimed_kinds(&text) {
                Some(kinds) => {
                    let docs = crate::resources::read_documents(&text).unwrap_or_default();
                    let mut hit = false;
                    for (i, (kind, ns)) in kinds.into_iter().enumerate() {
                        if kind == "Server"
                            && let Some(claim) = docs.get(i).and_then(claim_of)
                        {
                            u.narrow.entry(ns).or_default().push(claim);
                            hit = true;
                            continue;
                        }
                        // Anything that is not plainly another kind might be a Server.
                        if !matches!(
                            kind.as_str(),
                            "ExternalWorkload"
                                | "Pod"
                                | "Service"
                                | "EndpointSlice"
                                | "Namespace"
                                | "MeshTLSAuthentication"
                                | "NetworkAuthentication"
                                | "AuthorizationPolicy"
                                | "HTTPRoute"
                        ) {
                            u.namespaces.insert(ns);
                            hit = true;
                        }
                    }
                    if hit {
                        u.files.push(f.display().to_string());
                    }
                }
                None => {
                    u.all = true;
                    u.files.push(f.display().to_string());
                }
            }
        }
        u
    }

    /// Whether a refused file may hold the Server for `w`'s `port` (named
    /// `port_name` on the workload).
    pub(crate) fn covers(&self, w: &Workload, port: u16, port_name: Option<&str>) -> bool {
        let ns = w.namespace();
        self.all
            || self.namespaces.contains(ns)
            || self.narrow.get(ns).is_some_and(|claims| {
                claims.iter().any(|c| {
                    w.selected_by(&c.server)
                        && match &c.server.spec.port {
                            ServerPort::Number(n) => *n == port,
                            ServerPort::Name(n) => port_name == Some(n.as_str()),
                        }
                })
            })
    }
}
