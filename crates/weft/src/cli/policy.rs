//! `weft policy explain`: the verdict the proxy would give, with its reasons,
//! from the same resources, translation and `policy::judge`. It uses only
//! `policy` and `pki` (a test checks), so it cannot drift into the control
//! plane's or the proxy's own logic.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use policy::resources::{
    FileOutcome, Problem, Snapshot, is_resource_file, merge, read_document, read_export, replace,
};
use policy::translate::{
    DEFAULT_CLUSTER_NETWORKS, PolicyDefaults, Unsettled, parse_default, translate,
};
use policy::{Facts, Traffic};
use serde::Serialize;

use super::{CmdResult, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Explain whether a client may reach a workload port: exit 0 allowed, 1 denied, 2 bad input
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The resource directory (as given to `weft control-plane --resources`)
    #[arg(long)]
    pub resources: PathBuf,
    /// The files are an export of a Kubernetes API (`kubectl get -o yaml`): judge each object alone, as `weft control-plane --kubernetes` does
    #[arg(long)]
    pub kubernetes: bool,
    /// The client: a mesh identity (or its SPIFFE ID), an IP address (unmeshed), or "unmeshed"
    #[arg(long)]
    pub from: String,
    /// The client's address (for network-based authorizations and cluster-* defaults)
    #[arg(long, default_value = "10.0.0.1")]
    pub from_ip: IpAddr,
    /// The target, namespace/workload:port
    #[arg(long)]
    pub to: String,
    /// An HTTP request path (or absolute-form target): judge a request (routes) on its normal form, as the proxy does; without it the client's bytes are taken to be not HTTP
    #[arg(long)]
    pub path: Option<String>,
    /// The request method (with --path)
    #[arg(long, default_value = "GET", requires = "path")]
    pub method: String,
    /// The cluster-wide default policy, as the control plane's --default-inbound-policy
    #[arg(long, default_value = "all-unauthenticated")]
    pub default_inbound_policy: String,
    /// Cluster networks (for cluster-* defaults), as the control plane's --cluster-networks
    #[arg(long, default_value = DEFAULT_CLUSTER_NETWORKS, value_delimiter = ',')]
    pub cluster_networks: Vec<String>,
    /// The control plane's namespace (identity names)
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
    /// The trust domain (identity names, SPIFFE IDs)
    #[arg(long, default_value = pki::identity::DEFAULT_TRUST_DOMAIN)]
    pub identity_trust_domain: String,
    /// Output format: text or json
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Serialize)]
struct Explained {
    allowed: bool,
    /// `opaque` (judged per connection) or `http` (per request).
    mode: policy::Mode,
    /// Allowed by the audit default (the proxy logs it as though denied).
    audit: bool,
    client: String,
    target: String,
    server: String,
    authorization: Option<String>,
    route: Option<String>,
    /// The request path as judged and forwarded: `--path` in normal form.
    path: Option<String>,
    reasons: Vec<String>,
    problems: Vec<String>,
}

pub fn run(cmd: PolicyCmd) -> CmdResult {
    match cmd {
        PolicyCmd::Explain(a) => explain(a),
    }
}

/// The resource files of `dir`, each with its text or why it is unreadable.
fn resource_files(
    dir: &std::path::Path,
) -> Result<Vec<(PathBuf, std::io::Result<String>)>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::input(format!("{}: cannot read: {e}", dir.display())))?;
    Ok(entries
        .flatten()
        .filter(|e| is_resource_file(&e.file_name().to_string_lossy()))
        .map(|e| {
            let path = e.path();
            let text = std::fs::read_to_string(&path);
            (path, text)
        })
        .collect())
}

/// Reads the directory once, as the control plane would at cold start.
pub fn load(
    dir: &std::path::Path,
    control_plane_ns: &str,
    trust_domain: &str,
) -> Result<Snapshot, Failure> {
    let mut read = BTreeMap::new();
    for (path, text) in resource_files(dir)? {
        let outcome = match text {
            Ok(text) => read_document(&path, &text, control_plane_ns, trust_domain),
            Err(e) => {
                FileOutcome::Refused(vec![Problem::error(&path, format!("cannot read: {e}"))])
            }
        };
        read.insert(path, outcome);
    }
    Ok(merge(&Snapshot::default(), Ok(read)))
}

/// The files of `dir` as an export of a Kubernetes API: each object judged
/// alone, as `weft control-plane --kubernetes` judges what it watches.
pub fn load_export(
    dir: &std::path::Path,
    control_plane_ns: &str,
    trust_domain: &str,
) -> Result<Snapshot, Failure> {
    let mut read = BTreeMap::new();
    let mut held = BTreeMap::new();
    for (path, text) in resource_files(dir)? {
        let text =
            text.map_err(|e| Failure::input(format!("{}: cannot read: {e}", path.display())))?;
        for (origin, outcome, refused) in read_export(&path, &text, control_plane_ns, trust_domain)
        {
            if let Some(t) = refused {
                held.insert(origin.clone(), t);
            }
            read.insert(origin, outcome);
        }
    }
    Ok(replace(
        &Snapshot::default(),
        read,
        std::sync::Arc::new(held),
    ))
}

fn explain(a: ExplainArgs) -> CmdResult {
    let default_policy = parse_default(&a.default_inbound_policy).ok_or_else(|| {
        Failure::input(format!(
            "--default-inbound-policy {:?}: expected all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit",
            a.default_inbound_policy
        ))
    })?;
    let cluster_networks = a
        .cluster_networks
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e| Failure::input(format!("--cluster-networks {c:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (wl, port) =
        a.to.rsplit_once(':')
            .and_then(|(w, p)| Some((w, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
            .ok_or_else(|| {
                Failure::input(format!("--to {:?}: expected namespace/workload:port", a.to))
            })?;
    let (ns, name) = wl.split_once('/').ok_or_else(|| {
        Failure::input(format!("--to {:?}: expected namespace/workload:port", a.to))
    })?;
    let client = client_of(&a)?;
    let snap = if a.kubernetes {
        load_export(
            &a.resources,
            &a.controller_namespace,
            &a.identity_trust_domain,
        )?
    } else {
        load(
            &a.resources,
            &a.controller_namespace,
            &a.identity_trust_domain,
        )?
    };
    let mut problems: Vec<String> = snap.errors().map(|p| p.to_string()).collect();
    // Said up front: the proxy judges conflicted objects the same way.
    let conflicts: Vec<String> = snap
        .conflicted
        .keys()
        .map(|k| format!("{k} is defined more than once: every definition is refused and it is judged absent (fail-closed)"))
        .collect();
    let w = snap
        .workloads(&a.controller_namespace, &a.identity_trust_domain)
        .find(|w| w.meta.name == name && w.namespace() == ns)
        .ok_or_else(|| {
            let unmeshed = snap.pods().any(|p| {
                p.meta.name == name && p.meta.namespace.as_deref() == Some(ns)
            });
            Failure::input(if unmeshed {
                format!(
                    "Pod {ns}/{name} in {} is not meshed by this control plane: it lacks the label {}={}, or it has finished or uses the host's network",
                    a.resources.display(),
                    policy::resources::LABEL_CONTROL_PLANE_NS,
                    a.controller_namespace
                )
            } else {
                format!(
                    "no ExternalWorkload or meshed Pod {ns}/{name} in {}",
                    a.resources.display()
                )
            })
        })?;
    let d = PolicyDefaults {
        default_policy,
        cluster_networks,
        control_plane_ns: a.controller_namespace.clone(),
        trust_domain: a.identity_trust_domain.clone(),
        detect_timeout: std::time::Duration::from_secs(10),
    };
    let unsettled = Unsettled::of(&snap, |f| match &snap.held {
        Some(held) => held.get(f).cloned(),
        None => std::fs::read_to_string(f).ok(),
    });
    let t = translate(&snap, &w, port, &d, &unsettled);
    problems.extend(t.problems);
    // As the proxy receives it: converted once, then judged.
    let server = policy::Server::try_from(t.server)
        .map_err(|e| Failure::input(format!("the translated policy is malformed: {e}")))?;
    // The destination's hint, from the same annotations the control plane reads.
    let opaque_hint =
        policy::ports::opaque_ports(&w.meta.annotations, snap.namespace_annotations(ns))
            .map_err(|e| {
                Failure::input(format!(
                    "{w}: {e}; the control plane refuses its addresses until it is fixed"
                ))
            })?
            .contains(&port);
    // The path as the proxy judges (and forwards) it: its normal form, or
    // refused (400) when it has none.
    let path = match a.path.as_deref().map(|p| {
        policy::path::normalize(policy::path::target_path(p), server.keep_encoded_slashes)
            .map_err(|e| (p, e))
    }) {
        Some(Err((raw, why))) => {
            let out = Explained {
                allowed: false,
                mode: policy::Mode::Http,
                audit: false,
                client: client_desc(&client),
                target: a.to.clone(),
                server: server.name.to_string(),
                authorization: None,
                route: None,
                path: None,
                reasons: conflicts
                    .into_iter()
                    .chain([format!("the path {raw:?} is refused (400): {why}")])
                    .collect(),
                problems,
            };
            print(&out, &a)?;
            return Err(Failure::invalid(""));
        }
        Some(Ok(n)) => Some(n.0),
        None => None,
    };
    let request = path.as_ref().map(|path| policy::Request {
        method: a.method.to_uppercase(),
        path: path.clone(),
        headers: vec![],
    });
    // No --path: the client's bytes are not HTTP.
    let traffic = request.as_ref().map_or(Traffic::NotHttp, Traffic::Http);
    let v = policy::judge(&server, Facts { opaque_hint }, &client, traffic);
    let out = Explained {
        allowed: v.allowed,
        mode: v.mode,
        audit: v.audit,
        client: client_desc(&client),
        path,
        target: a.to.clone(),
        server: server.name.to_string(),
        authorization: v.authz.as_ref().map(ToString::to_string),
        route: v.route.as_ref().map(ToString::to_string),
        reasons: conflicts.into_iter().chain(v.reasons).collect(),
        problems,
    };
    print(&out, &a)?;
    if out.allowed {
        Ok(())
    } else {
        Err(Failure::invalid(""))
    }
}

fn client_desc(client: &policy::Client) -> String {
    match &client.identity {
        Some(id) => format!("{id} (mTLS) at {}", client.ip),
        None => format!("unmeshed client at {}", client.ip),
    }
}

/// The client `--from`/`--from-ip` describe.
fn client_of(a: &ExplainArgs) -> Result<policy::Client, Failure> {
    Ok(if a.from == "unmeshed" {
        policy::Client {
            identity: None,
            tls: false,
            ip: a.from_ip,
        }
    } else if let Ok(ip) = a.from.parse::<IpAddr>() {
        policy::Client {
            identity: None,
            tls: false,
            ip,
        }
    } else {
        let id = match a.from.parse::<pki::SpiffeId>() {
            Ok(s) => s
                .to_identity(&a.controller_namespace)
                .map_err(|e| Failure::input(format!("--from: {e}")))?,
            Err(_) => a.from.parse::<pki::Identity>().map_err(|e| {
                Failure::input(format!("--from: {e}; or pass an IP address, or unmeshed"))
            })?,
        };
        policy::Client {
            identity: Some(id),
            tls: true,
            ip: a.from_ip,
        }
    })
}

/// Text for people, or JSON for scripts.
fn print(out: &Explained, a: &ExplainArgs) -> Result<(), Failure> {
    match a.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(Failure::input)?
        ),
        Output::Text => {
            let what = match (&out.path, &a.path) {
                (Some(p), Some(raw)) if p != raw => {
                    format!("{} {p} (sent as {raw}) ", a.method.to_uppercase())
                }
                (_, Some(raw)) => format!("{} {raw} ", a.method.to_uppercase()),
                _ => String::new(),
            };
            outln!(
                "{}: {what}from {} to {}",
                if out.allowed { "ALLOWED" } else { "DENIED" },
                out.client,
                out.target
            );
            for r in &out.reasons {
                outln!("  {r}");
            }
            if !out.problems.is_empty() {
                outln!("problems (what they name grants nothing):");
                for p in &out.problems {
                    outln!("  - {p}");
                }
            }
        }
    }
    Ok(())
}
