//! Resource files that never loaded, as far as policy goes: a Server they
//! might define is missing, and the default must not stand in for it.

use crate::resources::Snapshot;

/// Resource files refused before they ever loaded, as far as policy goes: a
/// Server they might define is missing, and the default must not stand in
/// for it (that would widen access).
#[derive(Debug, Clone, Default)]
pub struct Unsettled {
    /// Namespaces a refused file may define Servers (or unknown kinds) in.
    pub namespaces: std::collections::BTreeSet<String>,
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
                    let mut hit = false;
                    for (kind, ns) in kinds {
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

    pub(crate) fn covers(&self, ns: &str) -> bool {
        self.all || self.namespaces.contains(ns)
    }
}
