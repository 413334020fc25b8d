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
    /// The control plane's admin address, host:port (a DNS name is resolved when read; read by --proxy)
    #[arg(long, default_value = "127.0.0.1:9990", value_parser = super::host_port)]
    pub admin_addr: String,
    /// Check a resource directory (as given to `weft control-plane --resources`): conflicts and refusals
    #[arg(long)]
    pub resources: Option<PathBuf>,
    /// With --resources: the control plane's namespace (identity names)
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
struct Category<'a> {
    category_name: &'a str,
    checks: &'a [CheckResult],
}

#[derive(Serialize)]
struct Report<'a> {
    success: bool,
    categories: Vec<Category<'a>>,
}

const FLEET: &str = "weft-fleet";
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

/// The fleet view from the control plane's admin endpoint, judged.
fn fleet(a: &CheckArgs) -> (Option<String>, Vec<CheckResult>) {
    let reach = "the control plane's fleet view is reachable";
    let fetched = http_get(&a.admin_addr, "/fleet")
        .ok_or_else(|| format!("no answer from {} (GET /fleet)", a.admin_addr))
        .and_then(|(code, body)| match code {
            200 => serde_json::from_str::<control_plane::fleet::FleetView>(&body)
                .map_err(|e| format!("{}/fleet is not a fleet view: {e}", a.admin_addr)),
            code => Err(format!(
                "{}/fleet answered {code}: {}",
                a.admin_addr,
                body.trim()
            )),
        });
    match fetched {
        Ok(v) => {
            let mut checks = vec![CheckResult::ok(reach)];
            checks.extend(control_plane::fleet_check::fleet_checks(
                &v,
                a.proxy_expiry_warning,
            ));
            (Some(control_plane::fleet_check::summary(&v)), checks)
        }
        Err(e) => (
            None,
            vec![CheckResult::fail(
                reach,
                e,
                "pass the control plane's --admin-addr with --admin-addr (it listens on 127.0.0.1:9990 by default; run this on that host)",
            )],
        ),
    }
}

pub fn run(a: CheckArgs) -> CmdResult {
    let mut categories: Vec<(&str, Option<String>, Vec<CheckResult>)> = Vec::new();
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
            categories.push((
                CATEGORY,
                None,
                identity_checks(
                    material.as_ref().map_err(String::as_str),
                    OffsetDateTime::now_utc(),
                    cfg,
                ),
            ));
        }
        (None, None) if a.proxy || a.resources.is_some() => {}
        _ => {
            return Err(Failure::input(
                "nothing to check: pass --identity-trust-anchors-file and --identity-issuer-certificate-file (and --identity-issuer-key-file), or --proxy, or --resources",
            ));
        }
    }
    if a.proxy {
        let (summary, checks) = fleet(&a);
        categories.push((FLEET, summary, checks));
    }
    if let Some(dir) = &a.resources {
        categories.push((POLICY, None, resources(&a, dir)));
    }
    let all: Vec<CheckResult> = categories.iter().flat_map(|c| c.2.clone()).collect();
    let status = worst(&all);
    let failed = status == Status::Error || (a.fail_on_warning && status == Status::Warning);
    match a.output {
        Output::Json => {
            let report = Report {
                success: !failed,
                categories: categories
                    .iter()
                    .map(|(name, _, checks)| Category {
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
