//! The trust-anchor rotation's decisions, pure: which command may run in
//! which phase (and whether it starts, resumes or is already done), where
//! abort goes back to, what still depends on the old anchor, and what
//! blocks the next phase. The commands only read and write files and the
//! fleet view.

use std::collections::BTreeSet;

use control_plane::fleet::{FleetView, ProxyView};

use super::progress::{Progress, bundle_progress, connected, progress};
use super::state::{Phase, Rotation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Prepare,
    Activate,
    Retire,
    Abort,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Prepare => "prepare",
            Command::Activate => "activate",
            Command::Retire => "retire",
            Command::Abort => "abort",
        }
    }
}

/// What a command admitted in a phase does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Start,
    /// An earlier run of the same command was interrupted: carry on.
    Resume,
    AlreadyDone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "no trust-anchor rotation is in progress, so there is nothing to {0}; start one with `weft rotate trust-anchor prepare --new-anchor NEW.crt` (make NEW.crt with `weft certs create root.linkerd.cluster.local NEW.crt NEW.key --profile root-ca`)"
    )]
    NoRotation(&'static str),
    #[error(
        "{cmd} needs the {need} phase done first (the rotation is {phase}); run `weft rotate trust-anchor {need}` (re-running it resumes), then {cmd}"
    )]
    TooEarly {
        cmd: &'static str,
        phase: &'static str,
        need: &'static str,
    },
    #[error(
        "the rotation is already {phase}, past {cmd}; see `weft rotate trust-anchor status`, or go back a phase with `weft rotate trust-anchor abort`"
    )]
    PastIt {
        cmd: &'static str,
        phase: &'static str,
    },
    #[error(
        "the rotation is complete (the old anchor is retired): there is nothing to abort; a new rotation starts with `weft rotate trust-anchor prepare`"
    )]
    Complete,
}

/// Whether `cmd` may run in `phase` (None: no rotation), and how: pure.
pub fn admit(phase: Option<Phase>, cmd: Command) -> Result<Admit, PlanError> {
    use Phase::*;
    let name = cmd.name();
    let too_early = |need| {
        Err(PlanError::TooEarly {
            cmd: name,
            phase: phase.map(Phase::name).unwrap_or("not started"),
            need,
        })
    };
    let past = |p: Phase| {
        Err(PlanError::PastIt {
            cmd: name,
            phase: p.name(),
        })
    };
    match (cmd, phase) {
        (Command::Prepare, None | Some(Retired)) => Ok(Admit::Start),
        (Command::Prepare, Some(Preparing)) => Ok(Admit::Resume),
        (Command::Prepare, Some(Prepared)) => Ok(Admit::AlreadyDone),
        (Command::Prepare, Some(p)) => past(p),
        (_, None) => Err(PlanError::NoRotation(name)),
        (Command::Activate, Some(Retired)) => Err(PlanError::NoRotation(name)),
        (Command::Activate, Some(Preparing)) => too_early("prepare"),
        (Command::Activate, Some(Prepared)) => Ok(Admit::Start),
        (Command::Activate, Some(Activating)) => Ok(Admit::Resume),
        (Command::Activate, Some(Activated)) => Ok(Admit::AlreadyDone),
        (Command::Activate, Some(p)) => past(p),
        (Command::Retire, Some(Preparing | Prepared)) => too_early("activate"),
        (Command::Retire, Some(Activating | Activated)) => Ok(Admit::Start),
        (Command::Retire, Some(Retiring)) => Ok(Admit::Resume),
        (Command::Retire, Some(Retired)) => Ok(Admit::AlreadyDone),
        (Command::Abort, Some(Retired)) => Err(PlanError::Complete),
        (Command::Abort, Some(_)) => Ok(Admit::Start),
    }
}

/// The previous safe state abort returns to (None: no rotation, the old
/// bundle alone): the old anchor stays until retire.
pub fn back_to(phase: Phase) -> Option<Phase> {
    match phase {
        Phase::Preparing | Phase::Prepared => None,
        Phase::Activating | Phase::Activated => Some(Phase::Prepared),
        Phase::Retiring | Phase::Retired => Some(Phase::Activated),
    }
}

/// The bundle a phase serves: old + new until retire, then the new alone.
pub fn anchors_for(phase: Option<Phase>, r: &Rotation) -> Vec<String> {
    match phase {
        None => r.old_anchors.clone(),
        Some(Phase::Retiring | Phase::Retired) => vec![r.new_anchor.clone()],
        Some(_) => {
            let mut a = r.old_anchors.clone();
            if !a.contains(&r.new_anchor) {
                a.push(r.new_anchor.clone());
            }
            a
        }
    }
}

/// Something that still needs the old anchor, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    pub name: String,
    pub why: String,
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(12)]
}

/// What still depends on the anchors retire would remove: the issuer in
/// force if it chains to one of them, every live leaf (connected or stale
/// proxy) chaining to one, every live unmanaged certificate not from the
/// new issuer. Empty: retire may go ahead. `renew` (how to ask for a
/// renewal where the rotation works) goes into the hints.
pub fn dependents(v: &FleetView, r: &Rotation, renew: &str) -> Vec<Dependent> {
    let old = r.retiring();
    let mut out = Vec::new();
    match &v.bundle {
        None => out.push(Dependent {
            name: "the control plane".into(),
            why: "it serves no issuer yet".into(),
        }),
        Some(b) if old.contains(&b.issuer_anchor) => out.push(Dependent {
            name: format!("the issuer in force ({})", short(&b.issuer_sha256)),
            why: format!(
                "it chains only to the old anchor {}; put an issuer from the new anchor in force with `weft rotate trust-anchor activate`",
                short(&b.issuer_anchor)
            ),
        }),
        Some(_) => {}
    }
    let new_issuer = r.new_issuer.as_deref().unwrap_or_default();
    for p in v.proxies.iter().filter(|p| p.expires_in_s > 0) {
        let on_old = old.contains(&p.anchor_sha256)
            || (p.anchor_sha256.is_empty() && p.issuer_sha256 != new_issuer);
        if on_old {
            out.push(Dependent {
                name: format!("{} ({})", p.workload, p.identity),
                why: format!(
                    "its leaf (serial {}, {} proxy, expires in {}s) chains to the old anchor; last refresh: {}; once it can reach the identity service, renew it with {renew} (or re-run `weft rotate trust-anchor activate`)",
                    p.leaf_serial,
                    p.state,
                    p.expires_in_s,
                    refresh(p)
                ),
            });
        }
    }
    for u in v.unmanaged.iter().filter(|u| u.expires_in_s > 0) {
        if u.issuer_sha256 != new_issuer {
            out.push(Dependent {
                name: u.identity.to_string(),
                why: format!(
                    "a certificate with no weft.mesh.v1 stream (serial {}, expires in {}s) from issuer {}, which chains to the old anchor; restart that workload so it requests a leaf from the new issuer, or wait until it expires",
                    u.serial,
                    u.expires_in_s,
                    short(&u.issuer_sha256)
                ),
            });
        }
    }
    out
}

fn refresh(p: &ProxyView) -> String {
    let s: String = p.last_refresh.clone().into();
    if s.is_empty() { "none yet".into() } else { s }
}

/// What stops the rotation from moving on from `phase`: pure, for status.
pub fn blockers(
    phase: Option<Phase>,
    r: Option<&Rotation>,
    v: &FleetView,
    renew: &str,
) -> Vec<String> {
    let (Some(phase), Some(r)) = (phase, r) else {
        return Vec::new();
    };
    let everyone: BTreeSet<String> = connected(v);
    let waiting = |p: Progress, what: &str, lacks: &str| match p {
        Progress::Done { .. } => Vec::new(),
        Progress::Waiting => vec![format!("the control plane does not serve {what} yet")],
        Progress::Refused(why) => vec![format!("the control plane refused {what}: {why}")],
        Progress::Converging { stragglers, .. } => stragglers
            .into_iter()
            .map(|s| format!("{s} {lacks} {what}"))
            .collect(),
    };
    match phase {
        Phase::Preparing | Phase::Prepared => waiting(
            bundle_progress(v, &anchors_for(Some(phase), r), &everyone),
            "the bundle holding the new anchor",
            "has not acknowledged",
        ),
        Phase::Activating => match &r.new_issuer {
            Some(i) => waiting(
                progress(v, i, &everyone),
                "the new issuer",
                "has no leaf yet from",
            ),
            None => vec!["no new issuer was installed yet".into()],
        },
        Phase::Activated => dependents(v, r, renew)
            .into_iter()
            .map(|d| format!("{}: {}", d.name, d.why))
            .collect(),
        Phase::Retiring => waiting(
            bundle_progress(v, &anchors_for(Some(phase), r), &everyone),
            "the bundle without the old anchor",
            "has not acknowledged",
        ),
        Phase::Retired => Vec::new(),
    }
}

/// How a fingerprint relates to the rotation, for status lines.
pub fn label(fp: &str, old: &[String], new: &str) -> String {
    if fp.is_empty() {
        "none".into()
    } else if fp == new {
        format!("new ({})", short(fp))
    } else if old.iter().any(|o| o == fp) {
        format!("old ({})", short(fp))
    } else {
        short(fp).into()
    }
}

#[cfg(test)]
#[path = "rotate_plan_tests.rs"]
mod tests;
