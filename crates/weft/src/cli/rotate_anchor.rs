//! `weft rotate trust-anchor prepare|activate|retire|status|abort`: the
//! three verified phases of an anchor rotation, each gated on the fleet
//! view, each resumable (the state is kept beside the anchors file, see
//! `rotate_state`), one rotation at a time. The decisions live in
//! `rotate_plan`; this module reads and writes the files and the fleet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use control_plane::fleet::FleetView;
use serde_json::json;

use super::plan::{self, Admit, Command};
use super::progress::{self, Events};
use super::state::{self, Phase, Rotation};
use super::{InForce, PlaneArgs, put_in_force, read};
use crate::cli::{CmdResult, Failure};

/// `weft rotate trust-anchor`: a phase of the rotation, or `--emergency`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TrustAnchorArgs {
    #[command(subcommand)]
    pub phase: Option<AnchorCmd>,
    /// Flattened apart from the plane's flags: clap does not fill an
    /// optional group that nests another.
    #[command(flatten)]
    pub emergency: Option<super::emergency::EmergencyArgs>,
    #[command(flatten)]
    pub plane: Option<PlaneArgs>,
}

#[derive(Debug, Subcommand)]
pub enum AnchorCmd {
    /// Phase 1: the bundle becomes old + new anchor; waits until every connected proxy applied it
    Prepare(PrepareArgs),
    /// Phase 2: an issuer signed by the new anchor put in force; waits until every leaf chains to the new anchor
    Activate(ActivateArgs),
    /// Phase 3: the old anchor removed, only once nothing depends on it any more
    Retire(PhaseArgs),
    /// The phase, what each proxy holds, and what blocks the next phase
    Status(PhaseArgs),
    /// Back to the previous safe state (the old anchor stays until retire)
    Abort(PhaseArgs),
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The new trust anchor (PEM), e.g. from `weft certs create root.linkerd.cluster.local ca-new.crt ca-new.key --profile root-ca`
    #[arg(long)]
    pub new_anchor: PathBuf,
    #[command(flatten)]
    pub plane: PlaneArgs,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The new issuer certificate (PEM), signed by the new anchor
    #[arg(long)]
    pub issuer_cert: PathBuf,
    /// The new issuer's private key (PEM)
    #[arg(long)]
    pub issuer_key: PathBuf,
    #[command(flatten)]
    pub plane: PlaneArgs,
}

#[derive(Debug, Args)]
pub struct PhaseArgs {
    #[command(flatten)]
    pub plane: PlaneArgs,
}

pub fn run(a: TrustAnchorArgs) -> CmdResult {
    let c = match (a.phase, a.emergency) {
        (Some(c), _) => c,
        (None, Some(e)) if let Some(plane) = a.plane => return super::emergency::run(e, plane),
        (None, _) => {
            return Err(Failure::input(
                "name a phase (prepare, activate, retire, status, abort) or --emergency; see `weft rotate trust-anchor --help`",
            ));
        }
    };
    match c {
        AnchorCmd::Prepare(a) => prepare(a),
        AnchorCmd::Activate(a) => activate(a),
        AnchorCmd::Retire(a) => retire(&a.plane),
        AnchorCmd::Status(a) => super::status::status(&a.plane),
        AnchorCmd::Abort(a) => super::abort::abort(&a.plane),
    }
}

pub(super) fn state_failure(e: state::StateError) -> Failure {
    match e {
        state::StateError::Locked { .. } => Failure::fatal(e),
        _ => Failure::input(e),
    }
}

/// The lock taken (saying so when a dead holder's was taken over), the
/// state loaded, `cmd` admitted in its phase.
pub(super) fn begin(
    a: &PlaneArgs,
    cmd: Command,
) -> Result<(state::Lock, Option<Rotation>, Admit, Events), Failure> {
    let anchors = &a.identity_trust_anchors_file;
    let (lock, taken_over) = state::lock(anchors).map_err(state_failure)?;
    let ev = Events::new(&a.output, Instant::now());
    if let Some(pid) = taken_over {
        ev.say(
            "lock_taken_over",
            json!({"pid": pid}),
            &format!(
                "took over the rotation lock of pid {pid}, which is no longer running (an interrupted run)"
            ),
        );
    }
    let r = state::load(anchors).map_err(state_failure)?;
    let admit = plan::admit(r.as_ref().map(|r| r.phase), cmd).map_err(Failure::input)?;
    if admit == Admit::Resume {
        ev.say(
            "resume",
            json!({"phase": r.as_ref().map(|r| r.phase.name())}),
            &format!(
                "resuming {}: an earlier run stopped in phase {}",
                cmd.name(),
                r.as_ref().map(|r| r.phase.name()).unwrap_or_default()
            ),
        );
    }
    Ok((lock, r, admit, ev))
}

pub(super) fn save(a: &PlaneArgs, r: &Rotation) -> Result<(), Failure> {
    state::save(&a.identity_trust_anchors_file, r).map_err(Failure::fatal)
}

/// The anchors file replaced at once (unless it already holds `pem`).
fn write_anchors(a: &PlaneArgs, pem: &str) -> Result<bool, Failure> {
    let path = &a.identity_trust_anchors_file;
    if std::fs::read_to_string(path).is_ok_and(|s| s == pem) {
        return Ok(false);
    }
    pki::files::write_atomic(path, pem.as_bytes(), pki::files::PUBLIC_MODE, true)
        .map_err(Failure::fatal)?;
    Ok(true)
}

/// The proxies a phase waits for: those connected now, and on a resumed
/// phase also those connected when it began (saved in the state).
pub(super) fn expect(
    a: &PlaneArgs,
    r: &mut Rotation,
    admit: Admit,
) -> Result<BTreeSet<String>, Failure> {
    let now = progress::connected(&progress::fleet_or_refuse(&a.admin_addr)?);
    if admit == Admit::Start {
        r.expected = now;
    } else {
        r.expected.extend(now);
    }
    save(a, r)?;
    Ok(r.expected.clone())
}

/// Writes the bundle `pem` (anchors `want`) and waits until the control
/// plane serves it and every `expected` (and connected) proxy acknowledged
/// it. Err(Ok(why)): the control plane refused it (the caller puts the
/// previous one back).
pub(super) fn put_bundle(
    a: &PlaneArgs,
    ev: &Events,
    (pem, want): (&str, &[String]),
    expected: &BTreeSet<String>,
    what: &str,
) -> Result<(), Result<String, Failure>> {
    if write_anchors(a, pem).map_err(Err)? {
        ev.say(
            "bundle_written",
            json!({"anchors": want}),
            &format!(
                "wrote {} ({} anchor{})",
                a.identity_trust_anchors_file.display(),
                want.len(),
                if want.len() == 1 { "" } else { "s" }
            ),
        );
    }
    let judge = |v: &FleetView| progress::bundle_progress(v, want, expected);
    progress::wait_in_force(&a.target(), ev.start, judge).map_err(Ok)?;
    let generation = progress::fleet(&a.admin_addr)
        .ok()
        .and_then(|v| v.bundle)
        .map(|b| b.generation);
    ev.say(
        "bundle_in_force",
        json!({"generation": generation}),
        &format!(
            "the control plane serves {what} (generation {})",
            generation.unwrap_or_default()
        ),
    );
    progress::wait_converged(&a.target(), ev, what, judge, |n| {
        format!(
            "every connected proxy acknowledged {what} ({n} of {n}, {:.1?})",
            ev.start.elapsed()
        )
    })
    .map_err(Err)
}

/// The new anchor judged before anything changes: [`super::read_anchor`], and not
/// already in the bundle.
fn new_rotation(a: &PrepareArgs) -> Result<Rotation, Failure> {
    let cert = &super::read_anchor(&a.new_anchor)?;
    let old_pem = String::from_utf8(read(&a.plane.identity_trust_anchors_file)?)
        .map_err(|_| Failure::input("the anchors file is not PEM text"))?;
    let old = pki::parse_certs(&a.plane.identity_trust_anchors_file, old_pem.as_bytes())
        .map_err(|e| Failure::input(e.to_string()))?;
    let old_anchors: Vec<String> = old.iter().map(|c| pki::fingerprint(c)).collect();
    let new_anchor = pki::fingerprint(cert);
    if old_anchors.contains(&new_anchor) {
        let why = format!(
            "it is already in {} (a rotation needs a new anchor)",
            a.plane.identity_trust_anchors_file.display()
        );
        return Err(super::anchor_refused(&a.new_anchor, &why));
    }
    let v = progress::fleet_or_refuse(&a.plane.admin_addr)?;
    let old_issuer = v.bundle.map(|b| b.issuer_sha256).unwrap_or_default();
    Ok(Rotation {
        phase: Phase::Preparing,
        old_anchors_pem: old_pem,
        old_anchors,
        new_anchor_pem: pki::cert::to_pem(std::slice::from_ref(cert)),
        new_anchor,
        new_anchor_file: a.new_anchor.clone(),
        old_issuer,
        new_issuer: None,
        started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        expected: BTreeSet::new(),
    })
}

/// A re-run prepare resumes only the anchor in progress: naming another
/// would otherwise be taken silently for it.
fn same_anchor(a: &PrepareArgs, r: &Rotation) -> Result<(), Failure> {
    let asked = read(&a.new_anchor)
        .ok()
        .and_then(|pem| pki::parse_certs(&a.new_anchor, &pem).ok())
        .and_then(|certs| match certs.as_slice() {
            [cert] => Some(pki::fingerprint(cert)),
            _ => None,
        });
    if asked.as_deref() == Some(r.new_anchor.as_str()) {
        return Ok(());
    }
    Err(Failure::input(format!(
        "a rotation to anchor {} ({}) is in progress (phase {}) and {} is not that anchor; nothing was changed: finish that rotation, or undo it with `weft rotate trust-anchor abort` (same flags), before preparing another",
        &r.new_anchor[..12.min(r.new_anchor.len())],
        r.new_anchor_file.display(),
        r.phase.name(),
        a.new_anchor.display()
    )))
}

/// The exact command that makes an issuer under the new anchor.
pub(super) fn certs_create_issuer(a: &PlaneArgs, r: &Rotation) -> String {
    a.certs_create_issuer(&r.new_anchor_file)
}

/// The exact command that activates the issuer the hint made.
pub(super) fn activate_command(a: &PlaneArgs) -> String {
    let (crt, key) = a.new_issuer_files();
    format!(
        "weft rotate trust-anchor activate --issuer-cert {} --issuer-key {} {}",
        crt.display(),
        key.display(),
        a.flags()
    )
}

fn prepare(a: PrepareArgs) -> CmdResult {
    let (_lock, r, admit, ev) = begin(&a.plane, Command::Prepare)?;
    let mut r = match (admit, r) {
        (Admit::Resume | Admit::AlreadyDone, Some(r)) => {
            same_anchor(&a, &r)?;
            r
        }
        _ => {
            let r = new_rotation(&a)?;
            save(&a.plane, &r)?;
            r
        }
    };
    if admit != Admit::AlreadyDone {
        let expected = expect(&a.plane, &mut r, admit)?;
        let both = plan::anchors_for(Some(Phase::Preparing), &r);
        let what = "the bundle holding the new anchor";
        match put_bundle(&a.plane, &ev, (&r.both_pem(), &both), &expected, what) {
            Ok(()) => {}
            Err(Ok(why)) => {
                write_anchors(&a.plane, &r.old_anchors_pem)?;
                state::clear(&a.plane.identity_trust_anchors_file).map_err(state_failure)?;
                return Err(Failure::fatal(format!(
                    "{why}; the previous anchors file was put back and no rotation is in progress"
                )));
            }
            Err(Err(f)) => return Err(f),
        }
        r.phase = Phase::Prepared;
        save(&a.plane, &r)?;
    }
    let v = progress::fleet(&a.plane.admin_addr).ok();
    ev.say(
        "prepared",
        json!({"new_anchor": r.new_anchor}),
        &format!(
            "prepared: every connected proxy trusts both the old and the new anchor ({})",
            &r.new_anchor[..12]
        ),
    );
    for u in v.iter().flat_map(|v| &v.unmanaged) {
        ev.say(
            "unmanaged",
            json!({"identity": u.identity.to_string(), "serial": u.serial}),
            &format!(
                "  needs a restart: {} (serial {}, no weft.mesh.v1 stream) learns the new anchor only when restarted with {} as its trust anchors: a linkerd2-proxy with LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS=\"$(cat {})\"; a certificate made with `weft certs request` by re-running it with --roots {}",
                u.identity,
                u.serial,
                a.plane.identity_trust_anchors_file.display(),
                a.plane.identity_trust_anchors_file.display(),
                a.plane.identity_trust_anchors_file.display()
            ),
        );
    }
    let activate = activate_command(&a.plane);
    ev.say(
        "next",
        json!({"commands": [certs_create_issuer(&a.plane, &r), activate]}),
        &format!(
            "next: make an issuer under the new anchor and activate it:\n  {}\n  {activate}",
            certs_create_issuer(&a.plane, &r)
        ),
    );
    Ok(())
}

/// Copies of the issuer files before activate, for abort to put back.
pub(super) fn backup_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.pre-rotation"))
}

fn backup_issuer(a: &PlaneArgs) -> Result<(), Failure> {
    for (path, mode) in [
        (&a.identity_issuer_key_file, pki::files::KEY_MODE),
        (&a.identity_issuer_certificate_file, pki::files::PUBLIC_MODE),
    ] {
        let bytes = read(path)?;
        pki::files::write_atomic(&backup_of(path), &bytes, mode, true).map_err(Failure::fatal)?;
    }
    Ok(())
}

fn activate(a: ActivateArgs) -> CmdResult {
    let (_lock, r, admit, ev) = begin(&a.plane, Command::Activate)?;
    let Some(mut r) = r else {
        return Err(Failure::input(plan::PlanError::NoRotation("activate")));
    };
    let create = format!("`{}`", certs_create_issuer(&a.plane, &r));
    let new_issuer = super::judge(
        (&r.new_anchor_file, r.new_anchor_pem.as_bytes()),
        &a.issuer_cert,
        &a.issuer_key,
        &create,
    )?;
    if admit == Admit::Start {
        backup_issuer(&a.plane)?;
    }
    if admit != Admit::AlreadyDone {
        r.phase = Phase::Activating;
        r.new_issuer = Some(new_issuer.clone());
        let expected = expect(&a.plane, &mut r, admit)?;
        let new = (read(&a.issuer_cert)?, read(&a.issuer_key)?);
        match put_in_force(
            &a.plane,
            &new_issuer,
            &new,
            &expected,
            &ev,
            "the new issuer",
        ) {
            Ok(()) => {}
            Err(InForce::PutBack(f)) => {
                r.phase = Phase::Prepared;
                r.new_issuer = None;
                save(&a.plane, &r)?;
                return Err(f);
            }
            Err(InForce::After(f)) => return Err(f),
        }
        let anchor = r.new_anchor.clone();
        progress::wait_converged(
            &a.plane.target(),
            &ev,
            "the new anchor",
            |v| {
                progress::converging(v, &expected, |p| {
                    (p.anchor_sha256 != anchor).then(|| " (leaf under another anchor)".into())
                })
            },
            |n| format!("every connected proxy's leaf chains to the new anchor ({n} of {n})"),
        )?;
        r.phase = Phase::Activated;
        save(&a.plane, &r)?;
    }
    ev.say(
        "activated",
        json!({"issuer": r.new_issuer}),
        "activated: the issuer in force and every connected proxy's leaf chain to the new anchor",
    );
    let retire = format!("weft rotate trust-anchor retire {}", a.plane.flags());
    ev.say(
        "next",
        json!({"commands": [retire]}),
        &format!(
            "next: retire the old anchor (refused while anything still depends on it):\n  {retire}"
        ),
    );
    Ok(())
}

fn retire(a: &PlaneArgs) -> CmdResult {
    let (_lock, r, admit, ev) = begin(a, Command::Retire)?;
    let Some(mut r) = r else {
        return Err(Failure::input(plan::PlanError::NoRotation("retire")));
    };
    if admit == Admit::Start {
        let v = progress::fleet_or_refuse(&a.admin_addr)?;
        let deps = plan::dependents(&v, &r, &a.admin_addr);
        if !deps.is_empty() {
            let list: Vec<String> = deps
                .iter()
                .map(|d| format!("  - {}: {}", d.name, d.why))
                .collect();
            return Err(Failure::fatal(format!(
                "retire refused, nothing was changed: {} still depend{} on the old anchor:\n{}\nrun `weft rotate trust-anchor status {}` to follow them, then retire again",
                deps.len(),
                if deps.len() == 1 { "s" } else { "" },
                list.join("\n"),
                a.flags()
            )));
        }
        r.phase = Phase::Retiring;
        save(a, &r)?;
    }
    if admit != Admit::AlreadyDone {
        let expected = expect(a, &mut r, admit)?;
        let want = plan::anchors_for(Some(Phase::Retiring), &r);
        let what = "the bundle without the old anchor";
        match put_bundle(a, &ev, (&r.new_anchor_pem, &want), &expected, what) {
            Ok(()) => {}
            Err(Ok(why)) => {
                write_anchors(a, &r.both_pem())?;
                r.phase = Phase::Activated;
                save(a, &r)?;
                return Err(Failure::fatal(format!(
                    "{why}; both anchors were put back in {}",
                    a.identity_trust_anchors_file.display()
                )));
            }
            Err(Err(f)) => return Err(f),
        }
        r.phase = Phase::Retired;
        save(a, &r)?;
        for f in [
            &a.identity_issuer_certificate_file,
            &a.identity_issuer_key_file,
        ] {
            let _ = std::fs::remove_file(backup_of(f));
        }
    }
    ev.say(
        "retired",
        json!({"anchor": r.new_anchor}),
        &format!(
            "retired: the bundle holds only the new anchor ({}); the rotation is complete",
            &r.new_anchor[..12]
        ),
    );
    Ok(())
}
