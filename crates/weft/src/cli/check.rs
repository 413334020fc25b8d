//! `weft check`: the identity checks, printed as Linkerd prints them.

use std::path::PathBuf;

use clap::Args;
use pki::check::{
    CheckConfig, CheckResult, Status, identity_checks, load_identity_material, worst,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::duration::parse_duration;
use super::{CmdResult, Failure, Output, http_get};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Trust anchor bundle (PEM), as given to `weft install` / `weft control-plane`
    #[arg(long)]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// Issuer certificate (PEM)
    #[arg(long)]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// Issuer private key (PEM); checked to match the issuer certificate
    #[arg(long)]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// Warn about certificates that expire sooner than this
    #[arg(long, default_value = "60d", value_parser = parse_duration)]
    pub expiry_warning: std::time::Duration,
    /// Exit non-zero on warnings too
    #[arg(long)]
    pub fail_on_warning: bool,
    /// Check the fleet: which proxies have the current trust bundle, which leaves chain to which anchor, stale and unmanaged proxies
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: warn about proxy certificates that expire sooner than this (healthy proxies renew at 70% of their lifetime)
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub proxy_expiry_warning: std::time::Duration,
    /// The control plane's admin address, host:port (a DNS name is resolved when read; read by --proxy and by a cluster check's data plane). Default: with a kubeconfig, a port-forward through the API server to a Ready control-plane pod (needs get and create on pods/portforward); without one, the local control plane (127.0.0.1:9990)
    #[arg(long, value_parser = super::host_port)]
    pub admin_addr: Option<String>,
    /// Pre-installation checks against the cluster of the kubeconfig: API reachable, Kubernetes version, clock skew, permissions to create what install creates, CRDs, Pod Security of meshed namespaces
    #[arg(long, conflicts_with_all = ["identity_trust_anchors_file", "identity_issuer_certificate_file", "resources", "proxy"])]
    pub pre: bool,
    /// Kubeconfig for a cluster check (default: KUBECONFIG, then ~/.kube/config); with one, `weft check` checks the cluster
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Narrow the data plane (a cluster check) or the fleet (--proxy) to this namespace's pods and proxies
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Check a resource directory (as given to `weft control-plane --resources`): conflicts and refusals
    #[arg(long)]
    pub resources: Option<PathBuf>,
    /// The control plane's namespace (identity names with --resources; where it runs for a cluster check)
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
    /// With --resources: the trust domain (identity names)
    #[arg(long, default_value = pki::identity::DEFAULT_TRUST_DOMAIN)]
    pub identity_trust_domain: String,
    /// Output format: text, or json in Linkerd's shape
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

const CATEGORY: &str = "weft-identity";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonCategory<'a> {
    category_name: &'a str,
    checks: &'a [CheckResult],
}

#[derive(Serialize)]
struct Report<'a> {
    success: bool,
    categories: Vec<JsonCategory<'a>>,
}

const FLEET: &str = "weft-fleet";
const CONTROL_PLANE: &str = "weft-control-plane";
const POLICY: &str = "weft-policy";

/// The resource directory read with the control plane's own rules: every
/// conflicted (defined more than once) or refused object is a failure.
fn resources(a: &CheckArgs, dir: &std::path::Path) -> Vec<CheckResult> {
    let what = "policy resources: no conflicts or refusals";
    let snap = match super::policy::load(dir, &a.controller_namespace, &a.identity_trust_domain) {
        Ok(s) => s,
        Err(e) => {
            return vec![CheckResult::fail(
                what,
                e.message,
                "pass the directory given to weft control-plane --resources",
            )];
        }
    };
    let conflicts: Vec<String> = snap
        .conflicted
        .iter()
        .map(|(k, files)| {
            let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            format!(
                "{k} is defined {} times ({})",
                files.len(),
                files.join(", ")
            )
        })
        .collect();
    let others: Vec<String> = snap
        .errors()
        .filter(|p| {
            !snap
                .conflicted
                .keys()
                .any(|k| p.resource.as_deref() == Some(k.to_string().as_str()))
        })
        .map(ToString::to_string)
        .collect();
    let mut checks = Vec::new();
    checks.push(if conflicts.is_empty() {
        CheckResult::ok("policy resources: no object defined more than once")
    } else {
        CheckResult::fail(
            "policy resources: no object defined more than once",
            format!(
                "{}; every definition is refused and the object judged absent (fail-closed)",
                conflicts.join("; ")
            ),
            "keep exactly one definition of each object (delete or rename the others)",
        )
    });
    checks.push(if others.is_empty() {
        CheckResult::ok(what)
    } else {
        CheckResult::fail(
            what,
            others.join("; "),
            "fix what each problem names; a refused object grants nothing",
        )
    });
    checks
}

/// One category of the report: its name, an optional summary line and
/// its checks.
pub type Category = (String, Option<String>, Vec<CheckResult>);

/// The local control plane's admin endpoint (its default).
const LOCAL_ADMIN: &str = "127.0.0.1:9990";

/// A category's fleet part: the summary, the reachability check, and the
/// view when it was read.
pub(super) type Fleet = (
    Option<String>,
    Vec<CheckResult>,
    Option<control_plane::fleet::FleetView>,
);

/// What GET /fleet answered, as a fleet view; `source` names where it
/// asked (an address, a pod's port).
pub(super) fn parse_fleet(
    source: &str,
    answer: Option<(u16, String)>,
) -> Result<control_plane::fleet::FleetView, String> {
    match answer {
        None => Err(format!("no answer from {source} (GET /fleet)")),
        Some((200, body)) => serde_json::from_str(&body)
            .map_err(|e| format!("GET /fleet from {source}: not a fleet view: {e}")),
        Some((code, body)) => Err(format!(
            "GET /fleet from {source} answered {code}: {}",
            body.trim()
        )),
    }
}

/// The reachability check and summary from what fetching the view gave;
/// `hint` says how to reach it when it failed.
pub(super) fn judge_fleet(
    fetched: Result<control_plane::fleet::FleetView, String>,
    hint: &str,
) -> Fleet {
    let reach = "the control plane's fleet view is reachable";
    match fetched {
        Ok(v) => (
            Some(control_plane::fleet_check::summary(&v)),
            vec![CheckResult::ok(reach)],
            Some(v),
        ),
        Err(e) => (None, vec![CheckResult::fail(reach, e, hint)], None),
    }
}

/// The fleet view from the control plane's admin endpoint at `addr`.
pub(super) fn fleet(addr: &str) -> Fleet {
    judge_fleet(
        parse_fleet(addr, http_get(addr, "/fleet")),
        "pass the control plane's --admin-addr with --admin-addr (it listens on 127.0.0.1:9990 by default; run this on that host)",
    )
}

/// What `weft check` checks, from its flags and the environment.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// Identity files, a resource directory and/or the local fleet.
    Files,
    Pre,
    /// The cluster of this kubeconfig (None: the default one).
    Cluster,
    /// No kubeconfig: the local control plane (`--admin-addr`, default
    /// 127.0.0.1:9990); with `--proxy` only its fleet.
    Local,
}

/// Files given → file mode; `--pre` → pre-install checks; a kubeconfig
/// found → the cluster; otherwise the local control plane.
pub fn mode(files: bool, pre: bool, kubeconfig: bool) -> Mode {
    match (files, pre, kubeconfig) {
        (true, ..) => Mode::Files,
        (_, true, _) => Mode::Pre,
        (_, _, true) => Mode::Cluster,
        _ => Mode::Local,
    }
}

/// The kubeconfig a cluster check uses: --kubeconfig, KUBECONFIG, then
/// ~/.kube/config, if it exists.
fn kubeconfig(a: &CheckArgs) -> Option<PathBuf> {
    find_kubeconfig(a.kubeconfig.as_deref())
}

/// `flag`, else KUBECONFIG, else ~/.kube/config if it exists: the rule
/// every cluster-mode command (check, rotate) follows.
pub fn find_kubeconfig(flag: Option<&std::path::Path>) -> Option<PathBuf> {
    if let Some(k) = flag {
        return Some(k.to_path_buf());
    }
    if let Some(k) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    let home = PathBuf::from(std::env::var_os("HOME")?).join(".kube/config");
    home.is_file().then_some(home)
}

/// The local control plane's fleet, judged (narrowed with `-n`).
fn fleet_category(a: &CheckArgs) -> Category {
    let addr = a.admin_addr.as_deref().unwrap_or(LOCAL_ADMIN);
    let (summary, mut checks, view) = fleet(addr);
    let view = match &a.namespace {
        Some(ns) => view.map(|v| super::check_plane::narrow(v, ns)),
        None => view,
    };
    if let Some(v) = view {
        checks.extend(control_plane::fleet_check::fleet_checks(
            &v,
            a.proxy_expiry_warning,
        ));
    }
    (FLEET.into(), summary, checks)
}

/// No files and no cluster: the control plane at `--admin-addr` (or the
/// default), its readiness and then its fleet; `--proxy` keeps to the
/// fleet. Nothing answering there is not a verdict on the mesh, so it is a
/// one-line error rather than a report.
fn local_categories(a: &CheckArgs) -> Result<Vec<Category>, Failure> {
    let addr = a.admin_addr.as_deref().unwrap_or(LOCAL_ADMIN);
    let Some((code, body)) = http_get(addr, "/ready") else {
        return Err(Failure::input(match &a.admin_addr {
            None => format!(
                "nothing to check: no control plane answers at {LOCAL_ADMIN} (the default admin address) and no kubeconfig was found; pass --admin-addr HOST:PORT of the control plane's admin listener, a kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) for a cluster, or the identity files (--identity-trust-anchors-file ... --identity-issuer-certificate-file ...)"
            ),
            Some(addr) => format!(
                "no control plane answers at {addr} (GET /ready); pass the address its admin listener prints at startup (\"admin listening on\") with --admin-addr HOST:PORT"
            ),
        }));
    };
    let mut categories = Vec::new();
    if !a.proxy {
        categories.push((
            CONTROL_PLANE.into(),
            None,
            vec![
                CheckResult::ok(format!("the control plane answers at {addr}")),
                readiness_check(code, &body),
            ],
        ));
    }
    categories.push(fleet_category(a));
    Ok(categories)
}

/// `/ready`'s verdict: 200 is ready (with notes, a warning), anything else
/// names why not.
fn readiness_check(code: u16, body: &str) -> CheckResult {
    let what = "the control plane is ready";
    let body = body.trim();
    match (code, body.split_once("; ")) {
        (200, None) => CheckResult::ok(what),
        (200, Some((_, notes))) => CheckResult::warn(
            what,
            format!("ready, but {notes}"),
            "the control plane keeps serving; act on what it names",
        ),
        (code, _) => CheckResult::fail(
            what,
            format!("/ready answered {code}: {body}"),
            "fix what it names; its log says more",
        ),
    }
}

/// File mode (and the local fleet): the checks as before cluster checks.
fn file_categories(a: &CheckArgs) -> Result<Vec<Category>, Failure> {
    let mut categories: Vec<Category> = Vec::new();
    match (
        &a.identity_trust_anchors_file,
        &a.identity_issuer_certificate_file,
    ) {
        (Some(anchors), Some(issuer)) => {
            let material =
                load_identity_material(anchors, issuer, a.identity_issuer_key_file.as_deref());
            let cfg = CheckConfig {
                expiry_warning: a.expiry_warning,
            };
            let checks = identity_checks(
                material.as_ref().map_err(String::as_str),
                OffsetDateTime::now_utc(),
                cfg,
            );
            categories.push((CATEGORY.into(), None, checks));
        }
        (None, None) if a.proxy || a.resources.is_some() => {}
        _ => {
            return Err(Failure::input(
                "nothing to check: pass --identity-trust-anchors-file and --identity-issuer-certificate-file (and --identity-issuer-key-file), or --proxy, or --resources, or a kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) for a cluster check",
            ));
        }
    }
    if a.proxy {
        categories.push(fleet_category(a));
    }
    if let Some(dir) = &a.resources {
        categories.push((POLICY.into(), None, resources(a, dir)));
    }
    Ok(categories)
}

pub fn run(a: CheckArgs) -> CmdResult {
    let files = a.identity_trust_anchors_file.is_some()
        || a.identity_issuer_certificate_file.is_some()
        || a.resources.is_some();
    let kc = kubeconfig(&a);
    // An explicit admin address without a kubeconfig flag is today's fleet check.
    let cluster_kc = kc.is_some() && (a.admin_addr.is_none() || a.kubeconfig.is_some());
    let categories = match mode(files, a.pre, cluster_kc) {
        Mode::Files => file_categories(&a)?,
        Mode::Local => local_categories(&a)?,
        Mode::Pre => {
            super::check_cluster::pre(kc, &a.controller_namespace).map_err(Failure::fatal)?
        }
        Mode::Cluster => super::check_cluster::cluster(&super::check_cluster::Cluster {
            kubeconfig: kc,
            controller_namespace: a.controller_namespace.clone(),
            namespace: a.namespace.clone(),
            admin_addr: a.admin_addr.clone(),
            proxy_only: a.proxy,
            expiry_warning: a.expiry_warning,
            proxy_expiry_warning: a.proxy_expiry_warning,
        })
        .map_err(Failure::fatal)?,
    };
    report(&a, &categories)
}

/// Prints the report (text or Linkerd's JSON); an error exit on failure.
fn report(a: &CheckArgs, categories: &[Category]) -> CmdResult {
    let all: Vec<CheckResult> = categories.iter().flat_map(|c| c.2.clone()).collect();
    let status = worst(&all);
    let failed = status == Status::Error || (a.fail_on_warning && status == Status::Warning);
    match a.output {
        Output::Json => {
            let report = Report {
                success: !failed,
                categories: categories
                    .iter()
                    .map(|(name, _, checks)| JsonCategory {
                        category_name: name,
                        checks,
                    })
                    .collect(),
            };
            outln!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(Failure::input)?
            );
        }
        Output::Text => {
            for (i, (name, summary, checks)) in categories.iter().enumerate() {
                if i > 0 {
                    outln!();
                }
                out!("{}", render_category(name, summary.as_deref(), checks));
            }
            out!("{}", render_status(&all, status));
        }
    }
    if failed {
        // The report above already says why; the exit code carries the verdict.
        return Err(Failure::invalid(""));
    }
    Ok(())
}

/// Linkerd's layout: a titled category (with an optional summary line), one
/// line per check with √ ‼ ×, the error and hint indented under failures.
fn render_category(category: &str, summary: Option<&str>, results: &[CheckResult]) -> String {
    let mut out = format!("{category}\n{}\n", "-".repeat(category.chars().count()));
    if let Some(s) = summary {
        out.push_str(&format!("{s}\n"));
    }
    for r in results {
        let mark = match r.result {
            Status::Success => "√",
            Status::Warning => "‼",
            Status::Error => "×",
        };
        out.push_str(&format!("{mark} {}\n", r.description));
        if r.result != Status::Success {
            out.push_str(&format!("    {}\n", r.error));
            out.push_str(&format!("    hint: {}\n", r.hint));
        }
    }
    out
}

/// The closing line over every category's results.
fn render_status(results: &[CheckResult], status: Status) -> String {
    let mut out = String::new();
    let warnings = results
        .iter()
        .filter(|r| r.result == Status::Warning)
        .count();
    out.push_str(&match status {
        Status::Error => "\nStatus check results are ×\n".to_string(),
        Status::Warning => format!(
            "\nStatus check results are √ (with {warnings} warning{})\n",
            if warnings == 1 { "" } else { "s" }
        ),
        Status::Success => "\nStatus check results are √\n".to_string(),
    });
    out
}
