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

/// The resources a verdict is computed from, and the control plane's
/// settings that shape it (shared with `weft diagnostics policy`).
#[derive(Debug, Clone, Args)]
pub struct ResourceArgs {
    /// The resource directory (as given to `weft control-plane --resources`)
    #[arg(long)]
    pub resources: PathBuf,
    /// The files are an export of a Kubernetes API (`kubectl get -o yaml`): judge each object alone, as `weft control-plane --kubernetes` does
    #[arg(long)]
    pub kubernetes: bool,
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
}

/// Who asks: the client of a verdict (shared with `weft diagnostics policy`).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The client's address (for network-based authorizations and cluster-* defaults)
    #[arg(long, default_value = "10.0.0.1")]
    pub from_ip: IpAddr,
    /// An HTTP request path (or absolute-form target): judge a request (routes) on its normal form, as the proxy does; without it the client's bytes are taken to be not HTTP
    #[arg(long)]
    pub path: Option<String>,
    /// The request method (with --path)
    #[arg(long, default_value = "GET", requires = "path")]
    pub method: String,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub files: ResourceArgs,
    /// The client: a mesh identity (or its SPIFFE ID), an IP address (unmeshed), or "unmeshed"
    #[arg(long)]
    pub from: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The target, namespace/workload:port
    #[arg(long)]
    pub to: String,
    /// Output format: text or json
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Debug, Serialize)]
pub struct Explained {
    pub allowed: bool,
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

/// The resource files' policy for one workload port, as the proxy would
/// receive it (converted once), with what the files got wrong.
pub struct Translated {
    pub server: policy::Server,
    /// Problems in the files (what they name grants nothing).
    pub problems: Vec<String>,
    /// Objects defined more than once: every definition refused, judged absent.
    pub conflicts: Vec<String>,
    /// The destination's opaque-port hint, from the annotations the control plane reads.
    pub opaque_hint: bool,
}

/// `namespace/workload:port` as (namespace, workload, port), or a refusal
/// naming `flag`.
pub fn parse_target(flag: &str, to: &str) -> Result<(String, String, u16), Failure> {
    let bad = || Failure::input(format!("{flag} {to:?}: expected namespace/workload:port"));
    let (wl, port) = to
        .rsplit_once(':')
        .and_then(|(w, p)| Some((w, p.parse::<u16>().ok().filter(|p| *p != 0)?)))
        .ok_or_else(bad)?;
    let (ns, name) = wl.split_once('/').ok_or_else(bad)?;
    if ns.is_empty() || name.is_empty() {
        return Err(bad());
    }
    Ok((ns.into(), name.into(), port))
}

/// What the files say for `ns/name:port`, read once as the control plane
/// would at cold start (or, with --kubernetes, each object alone).
pub fn translated(
    f: &ResourceArgs,
    ns: &str,
    name: &str,
    port: u16,
) -> Result<Translated, Failure> {
    let default_policy = parse_default(&f.default_inbound_policy).ok_or_else(|| {
        Failure::input(format!(
            "--default-inbound-policy {:?}: expected all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit",
            f.default_inbound_policy
        ))
    })?;
    let cluster_networks = f
        .cluster_networks
        .iter()
        .map(|c| {
            c.parse()
                .map_err(|e| Failure::input(format!("--cluster-networks {c:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (cp_ns, td) = (&f.controller_namespace, &f.identity_trust_domain);
    let snap = if f.kubernetes {
        load_export(&f.resources, cp_ns, td)?
    } else {
        load(&f.resources, cp_ns, td)?
    };
    let mut problems: Vec<String> = snap.errors().map(|p| p.to_string()).collect();
    // Said up front: the proxy judges conflicted objects the same way.
    let conflicts = snap
        .conflicted
        .keys()
        .map(|k| format!("{k} is defined more than once: every definition is refused and it is judged absent (fail-closed)"))
        .collect();
    let w = snap
        .workloads(cp_ns, td)
        .find(|w| w.meta.name == name && w.namespace() == ns)
        .ok_or_else(|| {
            let unmeshed = snap.pods().any(|p| {
                p.meta.name == name && p.meta.namespace.as_deref() == Some(ns)
            });
            Failure::input(if unmeshed {
                format!(
                    "Pod {ns}/{name} in {} is not meshed by this control plane: it lacks the label {}={cp_ns}, or it has finished or uses the host's network",
                    f.resources.display(),
                    policy::resources::LABEL_CONTROL_PLANE_NS,
                )
            } else {
                format!(
                    "no ExternalWorkload or meshed Pod {ns}/{name} in {}",
                    f.resources.display()
                )
            })
        })?;
    let d = PolicyDefaults {
        default_policy,
        cluster_networks,
        control_plane_ns: cp_ns.clone(),
        trust_domain: td.clone(),
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
    let opaque_hint =
        policy::ports::opaque_ports(&w.meta.annotations, snap.namespace_annotations(ns))
            .map_err(|e| {
                Failure::input(format!(
                    "{w}: {e}; the control plane refuses its addresses until it is fixed"
                ))
            })?
            .contains(&port);
    Ok(Translated {
        server,
        problems,
        conflicts,
        opaque_hint,
    })
}

/// The verdict for `client` on the files' policy, as the proxy judges: the
/// path in its normal form (or refused, 400, when it has none), then
/// `policy::judge`.
pub fn verdict(t: Translated, client: &policy::Client, c: &ClientArgs, target: &str) -> Explained {
    let Translated {
        server,
        problems,
        conflicts,
        opaque_hint,
    } = t;
    let refused = |raw: &str, why: String| Explained {
        allowed: false,
        mode: policy::Mode::Http,
        audit: false,
        client: client_desc(client),
        target: target.into(),
        server: server.name.to_string(),
        authorization: None,
        route: None,
        path: None,
        reasons: conflicts
            .iter()
            .cloned()
            .chain([format!("the path {raw:?} is refused (400): {why}")])
            .collect(),
        problems: problems.clone(),
    };
    let path = match c.path.as_deref().map(|p| {
        policy::path::normalize(policy::path::target_path(p), server.keep_encoded_slashes)
            .map_err(|e| (p, e))
    }) {
        Some(Err((raw, why))) => return refused(raw, why.to_string()),
        Some(Ok(n)) => Some(n.0),
        None => None,
    };
    let request = path.as_ref().map(|path| policy::Request {
        method: c.method.to_uppercase(),
        path: path.clone(),
        headers: vec![],
    });
    // No --path: the client's bytes are not HTTP.
    let traffic = request.as_ref().map_or(Traffic::NotHttp, Traffic::Http);
    let v = policy::judge(&server, Facts { opaque_hint }, client, traffic);
    Explained {
        allowed: v.allowed,
        mode: v.mode,
        audit: v.audit,
        client: client_desc(client),
        path,
        target: target.into(),
        server: server.name.to_string(),
        authorization: v.authz.as_ref().map(ToString::to_string),
        route: v.route.as_ref().map(ToString::to_string),
        reasons: conflicts.into_iter().chain(v.reasons).collect(),
        problems,
    }
}

fn explain(a: ExplainArgs) -> CmdResult {
    let (ns, name, port) = parse_target("--to", &a.to)?;
    let client = client_of(&a.from, &a.client, &a.files.controller_namespace)?;
    let t = translated(&a.files, &ns, &name, port)?;
    let out = verdict(t, &client, &a.client, &a.to);
    print(&out, &a.client, a.output)?;
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
pub fn client_of(
    from: &str,
    c: &ClientArgs,
    controller_namespace: &str,
) -> Result<policy::Client, Failure> {
    Ok(if from == "unmeshed" {
        policy::Client {
            identity: None,
            tls: false,
            ip: c.from_ip,
        }
    } else if let Ok(ip) = from.parse::<IpAddr>() {
        policy::Client {
            identity: None,
            tls: false,
            ip,
        }
    } else {
        let id = match from.parse::<pki::SpiffeId>() {
            Ok(s) => s
                .to_identity(controller_namespace)
                .map_err(|e| Failure::input(format!("--from: {e}")))?,
            Err(_) => from.parse::<pki::Identity>().map_err(|e| {
                Failure::input(format!("--from: {e}; or pass an IP address, or unmeshed"))
            })?,
        };
        policy::Client {
            identity: Some(id),
            tls: true,
            ip: c.from_ip,
        }
    })
}

/// Text for people, or JSON for scripts.
pub fn print(out: &Explained, c: &ClientArgs, output: Output) -> Result<(), Failure> {
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(Failure::input)?
        ),
        Output::Text => {
            let what = match (&out.path, &c.path) {
                (Some(p), Some(raw)) if p != raw => {
                    format!("{} {p} (sent as {raw}) ", c.method.to_uppercase())
                }
                (_, Some(raw)) => format!("{} {raw} ", c.method.to_uppercase()),
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
