//! `weft rotate trust-anchor status`: the phase, what the control plane
//! and each proxy hold (old or new anchor, old or new issuer), and what
//! blocks the next phase. Reads only; takes no lock.

use serde_json::json;

use super::plan;
use super::state::Phase;
use super::store::Store;
use crate::cli::{CmdResult, Failure, Output};

/// The command that moves the rotation on from `phase`.
fn next(phase: Option<Phase>) -> Option<&'static str> {
    match phase {
        None | Some(Phase::Retired) => Some("prepare --new-anchor NEW.crt"),
        Some(Phase::Preparing) => Some("prepare (resumes)"),
        Some(Phase::Prepared) => Some("activate --issuer-cert ISSUER.crt --issuer-key ISSUER.key"),
        Some(Phase::Activating) => Some("activate (resumes)"),
        Some(Phase::Activated) => Some("retire"),
        Some(Phase::Retiring) => Some("retire (resumes)"),
    }
}

pub fn status(a: &impl Store) -> CmdResult {
    let r = a.load()?;
    let phase = r.as_ref().map(|r| r.phase);
    let v = a.target().source.fleet().map_err(|e| {
        Failure::fatal(format!(
            "{e}; phase: {}; {}",
            phase.map(Phase::name).unwrap_or("no rotation in progress"),
            match a.target().source {
                super::progress::Source::Admin(_) =>
                    "pass the control plane's admin address with --admin-addr HOST:PORT",
                super::progress::Source::Cluster(_) =>
                    "check that a control-plane pod is Ready (`weft check`)",
            }
        ))
    })?;
    let (old, new) = match &r {
        Some(r) => (r.old_anchors.clone(), r.new_anchor.clone()),
        None => (
            v.bundle
                .as_ref()
                .map(|b| b.anchors.clone())
                .unwrap_or_default(),
            String::new(),
        ),
    };
    let blockers = plan::blockers(phase, r.as_ref(), &v, &a.renew_hint());
    let proxies: Vec<serde_json::Value> = v
        .proxies
        .iter()
        .map(|p| {
            json!({
                "workload": p.workload,
                "state": p.state,
                "bundle_generation": p.bundle.as_ref().map(|b| b.generation),
                "bundle_current": p.bundle_current,
                "refused": p.refused.as_ref().map(|x| x.reason.clone()),
                "issuer": plan::label(&p.issuer_sha256, &[], ""),
                "issuer_current": p.issuer_current,
                "anchor": plan::label(&p.anchor_sha256, &old, &new),
                "leaf_serial": p.leaf_serial,
            })
        })
        .collect();
    if a.output() == Output::Json {
        let doc = json!({
            "phase": phase.map(Phase::name),
            "old_anchors": old,
            "new_anchor": r.as_ref().map(|r| r.new_anchor.clone()),
            "bundle": v.bundle,
            "proxies": proxies,
            "unmanaged": v.unmanaged,
            "next": next(phase).map(|n| format!("weft rotate trust-anchor {n}")),
            "blocked_by": blockers,
        });
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    outln!(
        "phase: {}",
        phase.map(Phase::name).unwrap_or("no rotation in progress")
    );
    if let Some(b) = &v.bundle {
        let anchors: Vec<String> = b
            .anchors
            .iter()
            .map(|x| plan::label(x, &old, &new))
            .collect();
        outln!(
            "control plane: bundle generation {} [{}], issuer {} under anchor {}",
            b.generation,
            anchors.join(", "),
            plan::label(&b.issuer_sha256, &[], ""),
            plan::label(&b.issuer_anchor, &old, &new)
        );
    }
    for p in &v.proxies {
        let bundle = match (&p.bundle, p.bundle_current, &p.refused) {
            (_, _, Some(x)) => format!("refused the current bundle: {}", x.reason),
            (Some(b), true, _) => format!("bundle {} (current)", b.generation),
            (Some(b), false, _) => format!("bundle {} (not current)", b.generation),
            (None, _, _) => "no bundle yet".into(),
        };
        outln!(
            "  {} ({}): {bundle}; leaf {} from issuer {} under anchor {}",
            p.workload,
            p.state,
            p.leaf_serial,
            plan::label(&p.issuer_sha256, &[], ""),
            plan::label(&p.anchor_sha256, &old, &new)
        );
    }
    for u in &v.unmanaged {
        outln!(
            "  {} (unmanaged, no stream): serial {} from issuer {}; restart required to change its anchors",
            u.identity,
            u.serial,
            plan::label(&u.issuer_sha256, &[], "")
        );
    }
    match (&r, phase) {
        // The exact commands: an issuer under the new anchor, then activate.
        (Some(r), Some(Phase::Prepared)) => outln!(
            "next: {}\n      {}",
            super::store::certs_create_issuer(a, &r.new_anchor_file),
            super::anchor::activate_command(a)
        ),
        _ => {
            if let Some(n) = next(phase) {
                outln!("next: weft rotate trust-anchor {n} {}", a.flags());
            }
        }
    }
    if blockers.is_empty() {
        outln!("blocked by: nothing");
    } else {
        outln!("blocked by:");
        for b in &blockers {
            outln!("  - {b}");
        }
    }
    Ok(())
}
