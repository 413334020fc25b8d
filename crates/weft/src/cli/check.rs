//! `weft check`: the identity checks, printed as Linkerd prints them.

use std::path::PathBuf;

use clap::Args;
use pki::check::{
    CheckConfig, CheckResult, Status, identity_checks, load_identity_material, worst,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::duration::parse_duration;
use super::{CmdResult, Failure, Output};

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

pub fn run(a: CheckArgs) -> CmdResult {
    let (Some(anchors), Some(issuer)) = (
        &a.identity_trust_anchors_file,
        &a.identity_issuer_certificate_file,
    ) else {
        return Err(Failure::input(
            "nothing to check: pass --identity-trust-anchors-file and --identity-issuer-certificate-file (and --identity-issuer-key-file)",
        ));
    };
    let material = load_identity_material(anchors, issuer, a.identity_issuer_key_file.as_deref());
    let cfg = CheckConfig {
        expiry_warning: a.expiry_warning,
    };
    let results = identity_checks(
        material.as_ref().map_err(String::as_str),
        OffsetDateTime::now_utc(),
        cfg,
    );
    let status = worst(&results);
    let failed = status == Status::Error || (a.fail_on_warning && status == Status::Warning);
    match a.output {
        Output::Json => {
            let report = Report {
                success: !failed,
                categories: vec![Category {
                    category_name: CATEGORY,
                    checks: &results,
                }],
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(Failure::input)?
            );
        }
        Output::Text => print!("{}", render(CATEGORY, &results, status)),
    }
    if failed {
        // The report above already says why; the exit code carries the verdict.
        return Err(Failure::invalid(""));
    }
    Ok(())
}

/// Linkerd's layout: a titled category, one line per check with √ ‼ ×, the
/// error and hint indented under failures, then the summary.
pub fn render(category: &str, results: &[CheckResult], status: Status) -> String {
    let mut out = format!("{category}\n{}\n", "-".repeat(category.chars().count()));
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
