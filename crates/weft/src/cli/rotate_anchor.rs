//! `weft rotate trust-anchor prepare|activate|retire|status|abort`: the
//! three verified phases of an anchor rotation, each gated on the fleet
//! view, each resumable (the state is kept where the anchors live, see
//! `rotate_store`), one rotation at a time. The decisions live in
//! `rotate_plan`; this module moves the anchors, the issuer and the state.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use control_plane::fleet::FleetView;
use serde_json::json;

use super::cluster_issuer::{Mode, mode};
use super::cluster_store::ClusterStore;
use super::plan::{self, Admit, Command};
use super::progress::{self, Events};
use super::state::{Phase, Rotation};
use super::store::{Store, certs_create_issuer};
use super::{AtArgs, InForce, put_in_force, read};
use crate::cli::{CmdResult, Failure};

/// `weft rotate trust-anchor`: a phase of the rotation, or `--emergency`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true
)]
pub struct TrustAnchorArgs {
    #[command(subcommand)]
    pub phase: Option<AnchorCmd>,
    /// Flattened apart from where it works: clap does not fill an
    /// optional group that nests another.
    #[command(flatten)]
    pub emergency: Option<super::emergency::EmergencyArgs>,
    /// Where --emergency works (the phases take their own).
    #[command(flatten)]
    pub at: AtArgs,
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
    pub at: AtArgs,
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
    pub at: AtArgs,
}

#[derive(Debug, Args)]
pub struct PhaseArgs {
    #[command(flatten)]
    pub at: AtArgs,
}

pub fn run(a: TrustAnchorArgs) -> CmdResult {
    let TrustAnchorArgs {
        phase,
        emergency,
        at,
    } = a;
    let c = match (phase, emergency) {
        (Some(c), _) => c,
        (None, Some(e)) => return super::emergency::run(e, &at),
        (None, _) => {
            return Err(Failure::input(
                "name a phase (prepare, activate, retire, status, abort) or --emergency; see `weft rotate trust-anchor --help`",
            ));
        }
    };
    let at = match &c {
        AnchorCmd::Prepare(a) => &a.at,
        AnchorCmd::Activate(a) => &a.at,
        AnchorCmd::Retire(a) | AnchorCmd::Status(a) | AnchorCmd::Abort(a) => &a.at,
    };
    match mode(at)? {
        Mode::Files(plane) => run_phase(&plane, c),
        Mode::Cluster(kubeconfig) => run_phase(&ClusterStore::connect(at, kubeconfig)?, c),
    }
}

fn run_phase<S: Store>(s: &S, c: AnchorCmd) -> CmdResult {
    match c {
        AnchorCmd::Prepare(a) => prepare(s, &a.new_anchor),
        AnchorCmd::Activate(a) => activate(s, (&a.issuer_cert, &a.issuer_key)),
        AnchorCmd::Retire(_) => retire(s),
        AnchorCmd::Status(_) => super::status::status(s),
        AnchorCmd::Abort(_) => super::abort::abort(s),
    }
}

/// The lock taken (saying so when a dead holder's was taken over), the
/// state loaded, `cmd` admitted in its phase.
pub(super) fn begin<S: Store>(
    s: &S,
    cmd: Command,
) -> Result<(super::store::Guard, Option<Rotation>, Admit, Events), Failure> {
    let (lock, taken_over) = s.lock()?;
    let ev = Events::new(&s.output(), Instant::now());
    if let Some(holder) = taken_over {
        ev.say(
            "lock_taken_over",
            json!({"holder": holder}),
            &format!(
                "took over the rotation lock of {holder}, which is no longer running (an interrupted run)"
            ),
        );
    }
    let r = s.load()?;
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

/// The fleet view, or a refusal that says nothing was changed.
pub(super) fn fleet_or_refuse(s: &impl Store) -> Result<FleetView, Failure> {
    let t = s.target();
    t.source.fleet().map_err(|e| {
        Failure::input(format!(
            "{e}; nothing was changed; {}",
            match t.source {
                progress::Source::Admin(_) =>
                    "pass the control plane's admin address with --admin-addr HOST:PORT",
                progress::Source::Cluster(_) =>
                    "check that a control-plane pod is Ready (`weft check`)",
            }
        ))
    })
}

/// The proxies a phase waits for: those connected now, and on a resumed
/// phase also those connected when it began (saved in the state).
pub(super) fn expect(
    s: &impl Store,
    r: &mut Rotation,
    admit: Admit,
) -> Result<BTreeSet<String>, Failure> {
    let now = progress::connected(&fleet_or_refuse(s)?);
    if admit == Admit::Start {
        r.expected = now;
    } else {
        r.expected.extend(now);
    }
    s.save(r)?;
    Ok(r.expected.clone())
}

/// Writes the bundle `pem` (anchors `want`) and waits until the control
/// plane serves it and every `expected` (and connected) proxy acknowledged
/// it. Err(Ok(why)): the control plane refused it (the caller puts the
/// previous one back).
pub(super) fn put_bundle(
    s: &impl Store,
    ev: &Events,
    (pem, want): (&str, &[String]),
    expected: &BTreeSet<String>,
    what: &str,
) -> Result<(), Result<String, Failure>> {
    if s.write_anchors(pem).map_err(Err)? {
        ev.say(
            "bundle_written",
            json!({"anchors": want}),
            &format!(
                "wrote {} ({} anchor{})",
                s.anchors_label(),
                want.len(),
                if want.len() == 1 { "" } else { "s" }
            ),
        );
    }
    let judge = |v: &FleetView| progress::bundle_progress(v, want, expected);
    let t = s.target();
    progress::wait_in_force(&t, ev.start, judge).map_err(Ok)?;
    let generation = t
        .source
        .fleet()
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
    progress::wait_converged(&t, ev, what, judge, |n| {
        format!(
            "every connected proxy acknowledged {what} ({n} of {n}, {:.1?})",
            ev.start.elapsed()
        )
    })
    .map_err(Err)
}

/// The new anchor judged before anything changes: [`super::read_anchor`], and not
/// already in the bundle.
fn new_rotation(s: &impl Store, new_anchor: &std::path::Path) -> Result<Rotation, Failure> {
    let cert = &super::read_anchor(new_anchor)?;
    let old_pem = s.anchors()?;
    let label = PathBuf::from(s.anchors_label());
    let old =
        pki::parse_certs(&label, old_pem.as_bytes()).map_err(|e| Failure::input(e.to_string()))?;
    let old_anchors: Vec<String> = old.iter().map(|c| pki::fingerprint(c)).collect();
    let new = pki::fingerprint(cert);
    if old_anchors.contains(&new) {
        let why = format!(
            "it is already in {} (a rotation needs a new anchor)",
            s.anchors_label()
        );
        return Err(super::anchor_refused(new_anchor, &why));
    }
    let v = fleet_or_refuse(s)?;
    let old_issuer = v.bundle.map(|b| b.issuer_sha256).unwrap_or_default();
    Ok(Rotation {
        phase: Phase::Preparing,
        old_anchors_pem: old_pem,
        old_anchors,
        new_anchor_pem: pki::cert::to_pem(std::slice::from_ref(cert)),
        new_anchor: new,
        new_anchor_file: new_anchor.to_path_buf(),
        old_issuer,
        new_issuer: None,
        started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        expected: BTreeSet::new(),
    })
}

/// A re-run prepare resumes only the anchor in progress: naming another
/// would otherwise be taken silently for it.
fn same_anchor(new_anchor: &std::path::Path, r: &Rotation) -> Result<(), Failure> {
    let asked = read(new_anchor)
        .ok()
        .and_then(|pem| pki::parse_certs(new_anchor, &pem).ok())
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
        new_anchor.display()
    )))
}

/// The exact command that activates the issuer the hint made.
pub(super) fn activate_command(s: &impl Store) -> String {
    let (crt, key) = s.new_issuer_files();
    format!(
        "weft rotate trust-anchor activate --issuer-cert {} --issuer-key {} {}",
        crt.display(),
        key.display(),
        s.flags()
    )
}

fn prepare<S: Store>(s: &S, new_anchor: &std::path::Path) -> CmdResult {
    let (_lock, r, admit, ev) = begin(s, Command::Prepare)?;
    let mut r = match (admit, r) {
        (Admit::Resume | Admit::AlreadyDone, Some(r)) => {
            same_anchor(new_anchor, &r)?;
            r
        }
        _ => {
            let r = new_rotation(s, new_anchor)?;
            s.save(&r)?;
            r
        }
    };
    if admit != Admit::AlreadyDone {
        let expected = expect(s, &mut r, admit)?;
        let both = plan::anchors_for(Some(Phase::Preparing), &r);
        let what = "the bundle holding the new anchor";
        match put_bundle(s, &ev, (&r.both_pem(), &both), &expected, what) {
            Ok(()) => {}
            Err(Ok(why)) => {
                s.write_anchors(&r.old_anchors_pem)?;
                s.clear()?;
                return Err(Failure::fatal(format!(
                    "{why}; the previous anchors were put back into {} and no rotation is in progress",
                    s.anchors_label()
                )));
            }
            Err(Err(f)) => return Err(f),
        }
        r.phase = Phase::Prepared;
        s.save(&r)?;
    }
    let v = s.target().source.fleet().ok();
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
                "  needs a restart: {} (serial {}, no weft.mesh.v1 stream) learns the new anchor only when {}",
                u.identity,
                u.serial,
                s.restart_hint()
            ),
        );
    }
    let activate = activate_command(s);
    let create = certs_create_issuer(s, &r.new_anchor_file);
    ev.say(
        "next",
        json!({"commands": [create, activate]}),
        &format!(
            "next: make an issuer under the new anchor and activate it:\n  {create}\n  {activate}"
        ),
    );
    Ok(())
}

fn activate<S: Store>(s: &S, (issuer_cert, issuer_key): (&PathBuf, &PathBuf)) -> CmdResult {
    let (_lock, r, admit, ev) = begin(s, Command::Activate)?;
    let Some(mut r) = r else {
        return Err(Failure::input(plan::PlanError::NoRotation("activate")));
    };
    let create = format!("`{}`", certs_create_issuer(s, &r.new_anchor_file));
    let new_issuer = super::judge(
        (&r.new_anchor_file, r.new_anchor_pem.as_bytes()),
        issuer_cert,
        issuer_key,
        &create,
    )?;
    if admit == Admit::Start {
        s.keep_issuer()?;
    }
    if admit != Admit::AlreadyDone {
        r.phase = Phase::Activating;
        r.new_issuer = Some(new_issuer.clone());
        let expected = expect(s, &mut r, admit)?;
        let new = (read(issuer_cert)?, read(issuer_key)?);
        match put_in_force(s, &new_issuer, &new, &expected, &ev, "the new issuer") {
            Ok(()) => {}
            Err(InForce::PutBack(f)) => {
                r.phase = Phase::Prepared;
                r.new_issuer = None;
                s.save(&r)?;
                return Err(f);
            }
            Err(InForce::After(f)) => return Err(f),
        }
        let anchor = r.new_anchor.clone();
        progress::wait_converged(
            &s.target(),
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
        s.save(&r)?;
    }
    ev.say(
        "activated",
        json!({"issuer": r.new_issuer}),
        "activated: the issuer in force and every connected proxy's leaf chain to the new anchor",
    );
    let retire = format!("weft rotate trust-anchor retire {}", s.flags());
    ev.say(
        "next",
        json!({"commands": [retire]}),
        &format!(
            "next: retire the old anchor (refused while anything still depends on it):\n  {retire}"
        ),
    );
    Ok(())
}

fn retire<S: Store>(s: &S) -> CmdResult {
    let (_lock, r, admit, ev) = begin(s, Command::Retire)?;
    let Some(mut r) = r else {
        return Err(Failure::input(plan::PlanError::NoRotation("retire")));
    };
    if admit == Admit::Start {
        let v = fleet_or_refuse(s)?;
        let deps = plan::dependents(&v, &r, &s.renew_hint());
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
                s.flags()
            )));
        }
        r.phase = Phase::Retiring;
        s.save(&r)?;
    }
    if admit != Admit::AlreadyDone {
        let expected = expect(s, &mut r, admit)?;
        let want = plan::anchors_for(Some(Phase::Retiring), &r);
        let what = "the bundle without the old anchor";
        match put_bundle(s, &ev, (&r.new_anchor_pem, &want), &expected, what) {
            Ok(()) => {}
            Err(Ok(why)) => {
                s.write_anchors(&r.both_pem())?;
                r.phase = Phase::Activated;
                s.save(&r)?;
                return Err(Failure::fatal(format!(
                    "{why}; both anchors were put back into {}",
                    s.anchors_label()
                )));
            }
            Err(Err(f)) => return Err(f),
        }
        r.phase = Phase::Retired;
        s.save(&r)?;
        s.drop_kept_issuer();
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
