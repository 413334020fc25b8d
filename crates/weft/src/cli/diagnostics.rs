//! `weft diagnostics`: what a workload's proxies hold right now, read from
//! the proxies themselves (found through the control plane's fleet view, as
//! `weft identity` does).
//!
//! - `proxy-metrics WORKLOAD`: each proxy's /metrics, as `linkerd
//!   diagnostics proxy-metrics` prints them.
//! - `policy WORKLOAD:PORT --resources DIR`: the inbound policy each proxy
//!   holds for the port beside the policy the resources give it (the same
//!   translation `weft policy explain` uses), and what differs; with
//!   `--from`, explain's verdict for that client.
//!
//! Exit codes: 0 every proxy answered (and holds what the resources say, and
//! `--from` is allowed); 1 a proxy did not answer, holds something else, or
//! the client is denied; 2 bad input.

use clap::{Args, Subcommand};
use control_plane::fleet::ProxyView;
use policy::describe::{Difference, ServerView, describe, differences, render};
use serde::{Deserialize, Serialize};

use super::admin_target::{Reached, WorkloadArg, workload_arg};
use super::identity::{proxies_of, workload_name};
use super::policy::{ClientArgs, Explained, ResourceArgs, client_of, translated, verdict};
use super::{CmdResult, Failure, Output, http_get};

#[derive(Debug, Subcommand)]
pub enum DiagnosticsCmd {
    /// Each proxy of a workload: its Prometheus metrics, read from its admin endpoint
    ProxyMetrics(MetricsArgs),
    /// Each proxy of a workload: the inbound policy it holds for a port, beside what the resources say
    Policy(Box<PolicyArgs>),
}

/// Where the workload's proxies are found.
#[derive(Debug, Args)]
pub struct Fleet {
    /// The workload's namespace
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Where the control plane is (its fleet view says where each proxy is)
    #[command(flatten)]
    pub target: super::admin_target::AdminTarget,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// The workload: NAME (in -n's namespace), NAMESPACE/NAME, or on a cluster deploy/NAME, sts/NAME, ds/NAME, pod/NAME
    pub workload: String,
    #[command(flatten)]
    pub fleet: Fleet,
    #[command(flatten)]
    pub cp: super::admin_target::ControllerNamespace,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The workload port: NAME:PORT (in -n's namespace) or NAMESPACE/NAME:PORT
    pub target: String,
    #[command(flatten)]
    pub fleet: Fleet,
    #[command(flatten)]
    pub files: ResourceArgs,
    /// Also judge this client on the resources' policy, as `weft policy explain --from` does
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

pub fn run(cmd: DiagnosticsCmd) -> CmdResult {
    match cmd {
        DiagnosticsCmd::ProxyMetrics(a) => proxy_metrics(a),
        DiagnosticsCmd::Policy(a) => policy(*a),
    }
}

/// The connected proxies of `w`, from the fleet view of the control plane
/// in `cp_ns` (on a cluster), reachable from here for as long as the
/// returned [`Reached`] lives (its port-forwards).
fn proxies(
    fleet: &Fleet,
    cp_ns: &str,
    w: &WorkloadArg,
) -> Result<(Reached, Vec<ProxyView>, String), Failure> {
    let reached = fleet.target.reach(cp_ns)?;
    let (proxies, workload) = proxies_of(&reached, w)?;
    Ok((reached, proxies, workload))
}

/// GET `path` from a proxy's admin endpoint: the body of a 200, or why not.
fn fetch(p: &ProxyView, path: &str) -> Result<String, String> {
    if p.admin_addr.is_empty() {
        return Err("its proxy did not report an admin address (an older weft proxy)".into());
    }
    match http_get(&p.admin_addr, path) {
        None => Err(format!(
            "its admin endpoint at {} does not answer; is the proxy running and its admin port reachable from here?",
            p.admin_addr
        )),
        Some((200, body)) => Ok(body),
        Some((code, body)) => Err(format!(
            "its admin endpoint at {} answered {code} to {path}: {}",
            p.admin_addr,
            body.trim()
        )),
    }
}

fn proxy_metrics(a: MetricsArgs) -> CmdResult {
    let w = workload_arg(&a.workload, &a.fleet.namespace);
    let (_reached, proxies, workload) = proxies(&a.fleet, &a.cp.controller_namespace, &w)?;
    let mut failed = 0;
    for (n, p) in proxies.iter().enumerate() {
        let header = format!(
            "#\n# POD {} ({} of {}) at {}\n#\n",
            p.workload,
            n + 1,
            proxies.len(),
            p.admin_addr
        );
        match fetch(p, "/metrics") {
            Ok(body) => out!("{header}{body}"),
            Err(e) => {
                failed += 1;
                eprintln!("error: proxy {} of {workload}: {e}", n + 1);
            }
        }
    }
    if failed > 0 {
        return Err(Failure::fatal(format!(
            "{failed} of {} proxies of {workload} could not be read",
            proxies.len()
        )));
    }
    Ok(())
}

/// A proxy's `/policy?port=N` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    /// current, waiting or not followed.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServerView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProxyPolicy {
    workload: String,
    admin_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<Held>,
    /// What differs from the resources' policy (empty: the same).
    differences: Vec<Difference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    resources: ServerView,
    problems: Vec<String>,
    conflicts: Vec<String>,
    proxies: Vec<ProxyPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Explained>,
}

/// Compares what one proxy answered with the resources' policy: pure.
fn judge_held(p: (&str, &str), answer: Result<String, String>, want: &ServerView) -> ProxyPolicy {
    let parsed = answer.and_then(|body| {
        serde_json::from_str::<Held>(&body)
            .map_err(|e| format!("its /policy answer does not parse ({e}): an older weft proxy?"))
    });
    let (held, error) = match parsed {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e)),
    };
    let differences = match held.as_ref().and_then(|h| h.policy.as_ref()) {
        Some(v) if held.as_ref().is_some_and(|h| h.state == "current") => differences(v, want),
        _ => Vec::new(),
    };
    ProxyPolicy {
        workload: p.0.into(),
        admin_addr: p.1.into(),
        held,
        differences,
        error,
    }
}

fn policy(a: PolicyArgs) -> CmdResult {
    let bad = || {
        Failure::input(format!(
            "{:?}: expected WORKLOAD:PORT or NAMESPACE/WORKLOAD:PORT, PORT 1-65535",
            a.target
        ))
    };
    let (wl, port) = a.target.rsplit_once(':').ok_or_else(bad)?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    let workload = workload_name(wl, &a.fleet.namespace);
    let (ns, name) = workload.split_once('/').ok_or_else(bad)?;
    if ns.is_empty() || name.is_empty() {
        return Err(bad());
    }
    let client = match &a.from {
        Some(from) => Some(client_of(from, &a.client, &a.files.controller_namespace)?),
        None => None,
    };
    let t = translated(&a.files, ns, name, port)?;
    let want = describe(&t.server);
    let (problems, conflicts) = (t.problems.clone(), t.conflicts.clone());
    let target = format!("{workload}:{port}");
    let named = WorkloadArg::Named(workload.clone());
    let (_reached, proxies, _) = proxies(&a.fleet, &a.files.controller_namespace, &named)?;
    let held: Vec<ProxyPolicy> = proxies
        .iter()
        .map(|p| {
            let answer = fetch(p, &format!("/policy?port={port}"));
            judge_held((&p.workload, &p.admin_addr), answer, &want)
        })
        .collect();
    let verdict = client.map(|c| verdict(t, &c, &a.client, &target));
    let report = Report {
        target,
        resources: want,
        problems,
        conflicts,
        proxies: held,
        verdict,
    };
    match a.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Failure::fatal)?
        ),
        Output::Text => {
            out!("{}", render_report(&report, &a.files.resources));
            if let Some(v) = &report.verdict {
                outln!("\nthe resources' verdict (as `weft policy explain`):");
                super::policy::print(v, &a.client, Output::Text)?;
            }
        }
    }
    let unread = report.proxies.iter().filter(|p| p.error.is_some()).count();
    let differ = report
        .proxies
        .iter()
        .filter(|p| !p.differences.is_empty())
        .count();
    if unread + differ > 0 {
        return Err(Failure::fatal(format!(
            "of {} proxies of {workload}: {differ} hold another policy than the resources give, {unread} could not be read",
            report.proxies.len()
        )));
    }
    if report.verdict.as_ref().is_some_and(|v| !v.allowed) {
        return Err(Failure::invalid(""));
    }
    Ok(())
}

/// The text form: the resources' policy, then each proxy against it.
fn render_report(r: &Report, dir: &std::path::Path) -> String {
    let mut out = format!(
        "{} in the resources ({}):\n{}",
        r.target,
        dir.display(),
        indent(&render(&r.resources))
    );
    for c in &r.conflicts {
        out.push_str(&format!("  ‼ {c}\n"));
    }
    for p in &r.problems {
        out.push_str(&format!("  ‼ problem: {p}\n"));
    }
    for (n, p) in r.proxies.iter().enumerate() {
        let at = format!("proxy {} of {} at {}", n + 1, p.workload, p.admin_addr);
        match (&p.error, &p.held) {
            (Some(e), _) => out.push_str(&format!("× {at}: {e}\n")),
            (None, Some(h)) if h.state == "current" && p.differences.is_empty() => {
                out.push_str(&format!("✔ {at} holds the same policy\n"));
            }
            (None, Some(h)) if h.state == "current" => {
                let parts: Vec<&str> = p.differences.iter().map(|d| d.part.as_str()).collect();
                out.push_str(&format!(
                    "× {at} holds another policy ({} differ):\n",
                    parts.join(", ")
                ));
                if let Some(v) = &h.policy {
                    out.push_str(&indent(&indent(&render(v))));
                }
            }
            (None, Some(h)) => out.push_str(&format!(
                "‼ {at} holds no policy for this port ({}): {}\n",
                h.state,
                h.note.as_deref().unwrap_or("")
            )),
            (None, None) => out.push_str(&format!("× {at}: no answer\n")),
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> (&'static str, &'static str) {
        ("demo/backend", "127.0.0.1:4191")
    }

    fn view(server: &str) -> ServerView {
        describe(&policy::Server {
            name: policy::Named::new("server", server),
            ..policy::Server::deny()
        })
    }

    #[test]
    fn a_proxy_is_judged_only_on_what_it_holds_now() {
        let want = view("backend");
        let same = serde_json::json!({"state": "current", "policy": want}).to_string();
        assert!(judge_held(proxy(), Ok(same), &want).differences.is_empty());
        let other = serde_json::json!({"state": "current", "policy": view("old")}).to_string();
        let d = judge_held(proxy(), Ok(other), &want).differences;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].held.as_str(), d[0].want.as_str()),
            ("server:old", "server:backend")
        );
        let waiting = serde_json::json!({"state": "waiting", "note": "no answer yet"}).to_string();
        let w = judge_held(proxy(), Ok(waiting), &want);
        assert!(w.differences.is_empty() && w.error.is_none());
        let garbage = judge_held(proxy(), Ok("<html>".into()), &want);
        assert!(garbage.error.unwrap().contains("does not parse"));
        let down = judge_held(proxy(), Err("does not answer".into()), &want);
        assert_eq!(down.error.as_deref(), Some("does not answer"));
    }
}
