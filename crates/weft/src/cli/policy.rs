//! `weft policy explain`: the verdict the proxy would give, with its reasons,
//! from the same resources, translation and evaluator.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use control_plane::resources::{FileOutcome, Snapshot, is_resource_file, merge, parse_file};
use control_plane::translate::{
    DEFAULT_CLUSTER_NETWORKS, PolicyDefaults, Unsettled, parse_default, translate,
};
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
    /// The client: a mesh identity (or its SPIFFE ID), an IP address (unmeshed), or "unmeshed"
    #[arg(long)]
    pub from: String,
    /// The client's address (for network-based authorizations and cluster-* defaults)
    #[arg(long, default_value = "10.0.0.1")]
    pub from_ip: IpAddr,
    /// The target, namespace/workload:port
    #[arg(long)]
    pub to: String,
    /// An HTTP request path: judge a request (routes), not only the connection
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
    client: String,
    target: String,
    server: String,
    authorization: Option<String>,
    route: Option<String>,
    reasons: Vec<String>,
    problems: Vec<String>,
}

pub fn run(cmd: PolicyCmd) -> CmdResult {
    match cmd {
        PolicyCmd::Explain(a) => explain(a),
    }
}

/// Reads the directory once, as the control plane would at cold start.
pub fn load(dir: &std::path::Path) -> Result<Snapshot, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::input(format!("{}: cannot read: {e}", dir.display())))?;
    let mut read = BTreeMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_resource_file(&name) {
            continue;
        }
        let path = e.path();
        let outcome = match std::fs::read_to_string(&path) {
            Ok(text) => match parse_file(&path, &text) {
                Ok(objects) => FileOutcome::Parsed {
                    objects,
                    warnings: vec![],
                },
                Err(problems) => FileOutcome::Refused(problems),
            },
            Err(e) => FileOutcome::Refused(vec![control_plane::resources::Problem::error(
                &path,
                format!("cannot read: {e}"),
            )]),
        };
        read.insert(path, outcome);
    }
    Ok(merge(&Snapshot::default(), Ok(read)))
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
    let client = if a.from == "unmeshed" {
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
            identity: Some(id.to_string()),
            tls: true,
            ip: a.from_ip,
        }
    };
    let snap = load(&a.resources)?;
    let mut problems: Vec<String> = snap.errors().map(|p| p.to_string()).collect();
    let w = snap
        .external_workloads()
        .find(|w| w.meta.name == name && w.meta.namespace.as_deref() == Some(ns))
        .ok_or_else(|| {
            Failure::input(format!(
                "no ExternalWorkload {ns}/{name} in {}",
                a.resources.display()
            ))
        })?;
    let d = PolicyDefaults {
        default_policy,
        cluster_networks,
        control_plane_ns: a.controller_namespace.clone(),
        trust_domain: a.identity_trust_domain.clone(),
        detect_timeout: std::time::Duration::from_secs(10),
    };
    let t = translate(&snap, w, port, &d, &Unsettled::of(&snap));
    problems.extend(t.problems);
    // An opaque port's requests are never seen: the proxy judges the connection.
    let opaque = proxy::authz::mode(&t.server, false) == proxy::authz::Mode::Opaque;
    let mut v = match &a.path {
        Some(path) if !opaque => policy::authorize_request(
            &t.server,
            &client,
            &policy::Request {
                method: a.method.to_uppercase(),
                path: path.clone(),
                headers: vec![],
            },
        ),
        _ => policy::authorize_connection(&t.server, &client),
    };
    if opaque && a.path.is_some() {
        v.reasons.insert(
            1,
            "the port is opaque: requests are not inspected, so the connection is judged".into(),
        );
    }
    let client_desc = match &client.identity {
        Some(id) => format!("{id} (mTLS) at {}", client.ip),
        None => format!("unmeshed client at {}", client.ip),
    };
    let out = Explained {
        allowed: v.allowed,
        client: client_desc,
        target: a.to.clone(),
        server: policy::server_name(&t.server).to_string(),
        authorization: v.authz.as_ref().map(ToString::to_string),
        route: v.route.as_ref().map(ToString::to_string),
        reasons: v.reasons,
        problems,
    };
    match a.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(Failure::input)?
        ),
        Output::Text => {
            let what = match &a.path {
                Some(p) => format!("{} {p} ", a.method.to_uppercase()),
                None => String::new(),
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
    if out.allowed {
        Ok(())
    } else {
        Err(Failure::invalid(""))
    }
}
