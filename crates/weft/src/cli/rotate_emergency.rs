//! `weft rotate trust-anchor --emergency`: when the anchor or the issuer in
//! force has already expired (proxies have stopped), a new anchor and
//! issuer installed at once. The new pair is judged before anything
//! changes; the command is refused while the material in force still
//! serves (the phased rotation applies then) unless --force. Proxies never
//! learn the new anchor from the control plane: the command prints the
//! out-of-band steps (the anchor copied to every proxy's anchors file, a
//! fresh join token per workload) and how to follow the recovery. On
//! Kubernetes the trust-roots ConfigMap is that channel (every injected
//! proxy watches its mounted copy and certifies with its ServiceAccount
//! token), so the command waits until the proxies are back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use control_plane::fleet::FleetView;
use pki::CertificateDer;
use serde_json::json;
use time::OffsetDateTime;

use super::cluster_issuer::{Mode, mode};
use super::cluster_store::ClusterStore;
use super::progress::{self, Events, Progress, Source};
use super::store::Store;
use super::{AtArgs, read};
use crate::cli::{CmdResult, Failure};

#[derive(Debug, Args)]
pub struct EmergencyArgs {
    /// Emergency re-root: the anchor or issuer in force has expired; install a new anchor and issuer at once (proxies get the anchor out of band)
    #[arg(long, required = true)]
    pub emergency: bool,
    /// The new trust anchor (PEM, one self-signed CA)
    #[arg(long, required = true)]
    pub new_anchor: Option<PathBuf>,
    /// The new issuer certificate (PEM), signed by the new anchor
    #[arg(long, required = true)]
    pub issuer_cert: Option<PathBuf>,
    /// The new issuer's private key (PEM)
    #[arg(long, required = true)]
    pub issuer_key: Option<PathBuf>,
    /// Re-root although the anchor and issuer in force are still valid (every proxy then stops until it gets the new anchor out of band)
    #[arg(long)]
    pub force: bool,
    /// The control plane's state directory, for the `weft token create` commands printed
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "weft-state")]
    pub state_dir: PathBuf,
}

/// Whether the anchor and issuer in force can still serve at `now`:
/// Ok(until when) while they can, Err(why not) once they cannot (what
/// justifies an emergency re-root). Pure.
pub fn in_force(
    anchors: &[CertificateDer<'_>],
    issuer: &[CertificateDer<'_>],
    now: OffsetDateTime,
) -> Result<OffsetDateTime, String> {
    let (cert, rest) = issuer
        .split_first()
        .ok_or("the issuer certificate file holds no certificate")?;
    let chain = pki::verify(cert, rest, anchors, now, pki::Purpose::Ca).map_err(|e| {
        format!("the issuer in force does not verify under the anchors in force: {e}")
    })?;
    let not_after = |der: &[u8]| {
        pki::info::CertInfo::from_der(der)
            .map(|i| i.not_after)
            .unwrap_or(now)
    };
    let anchor = chain.links.last().map(|(_, fp)| fp.clone());
    Ok(anchors
        .iter()
        .filter(|a| Some(pki::fingerprint(a)) == anchor)
        .map(|a| not_after(a))
        .chain(std::iter::once(not_after(cert)))
        .min()
        .unwrap_or(now))
}

/// The control plane serves the new anchor alone and the new issuer (a
/// refusal other than the one seen before the install is final). Pure.
pub fn served(v: &FleetView, anchor: &str, issuer: &str, refused_before: Option<&str>) -> Progress {
    let in_force = v
        .bundle
        .as_ref()
        .is_some_and(|b| b.issuer_sha256 == issuer && b.anchors == [anchor]);
    match &v.issuer_refused {
        _ if in_force => Progress::Done { proxies: 0 },
        Some(why) if Some(why.as_str()) != refused_before => Progress::Refused(why.clone()),
        _ => Progress::Waiting,
    }
}

/// The workloads to give a fresh join token: every proxy the fleet view
/// knows, by namespace and service account (one token serves a workload's
/// replicas), each with the host its admin endpoint reported.
pub fn workloads(v: &FleetView) -> Vec<(String, String, BTreeSet<String>)> {
    let mut by: std::collections::BTreeMap<(String, String), BTreeSet<String>> = Default::default();
    for p in &v.proxies {
        let key = (
            p.identity.namespace().to_string(),
            p.identity.service_account().to_string(),
        );
        let host = p.admin_addr.rsplit_once(':').map(|(h, _)| h.to_string());
        by.entry(key).or_default().extend(host);
    }
    by.into_iter().map(|((ns, sa), h)| (ns, sa, h)).collect()
}

/// The three new files (clap requires them with --emergency).
fn files(a: &EmergencyArgs) -> (&Path, &Path, &Path) {
    fn p(o: &Option<PathBuf>) -> &Path {
        o.as_deref().unwrap_or(Path::new(""))
    }
    (p(&a.new_anchor), p(&a.issuer_cert), p(&a.issuer_key))
}

/// The anchor and issuer in force, judged: refused while they still serve
/// (unless --force). Ok(false): they already are the new pair (a re-run
/// resumes, nothing to install).
fn justify<S: Store>(
    a: &EmergencyArgs,
    s: &S,
    anchor_pem: &str,
    ev: &Events,
) -> Result<bool, Failure> {
    let (_, cert, _) = files(a);
    let (anchors_now, issuer_now) = (s.anchors()?.into_bytes(), s.issuer_cert()?);
    if anchors_now == anchor_pem.as_bytes() && issuer_now == read(cert)? {
        ev.say(
            "resume",
            json!({}),
            &format!(
                "{} and {} already hold the new anchor and issuer: resuming",
                s.anchors_label(),
                s.holder()
            ),
        );
        return Ok(false);
    }
    let parse =
        |label: String, b: &[u8]| pki::parse_certs(Path::new(&label), b).unwrap_or_default();
    let now = OffsetDateTime::now_utc();
    match in_force(
        &parse(s.anchors_label(), &anchors_now),
        &parse(s.holder(), &issuer_now),
        now,
    ) {
        Err(why) => ev.say(
            "emergency",
            json!({"reason": why}),
            &format!("re-rooting: {why}"),
        ),
        Ok(until) if a.force => ev.say(
            "forced",
            json!({"valid_until": pki::info::rfc3339(until)}),
            &format!(
                "re-rooting with --force although the anchor and issuer in force are valid until {}",
                pki::info::rfc3339(until)
            ),
        ),
        Ok(until) => {
            return Err(Failure::input(format!(
                "refused, nothing was changed: the anchor and issuer in force are valid until {} ({} left), so proxies can still be moved without stopping: use `weft rotate trust-anchor prepare --new-anchor {} {}` (then activate, retire); pass --force to re-root anyway (every proxy stops until it gets the new anchor out of band)",
                pki::info::rfc3339(until),
                pki::info::time_left(now, until),
                files(a).0.display(),
                s.flags()
            )));
        }
    }
    Ok(true)
}

/// The anchors, then the issuer, replaced at once; any trust-anchor
/// rotation in progress (its state and kept issuer) dropped.
fn install<S: Store>(
    a: &EmergencyArgs,
    s: &S,
    anchor_pem: &str,
    ev: &Events,
) -> Result<(), Failure> {
    let (_, cert, key) = files(a);
    let new = (read(cert)?, read(key)?);
    s.write_anchors(anchor_pem)?;
    s.install(&new)?;
    ev.say(
        "installed",
        json!({}),
        &format!(
            "installed the new anchor in {} and the new issuer in {}",
            s.anchors_label(),
            s.holder()
        ),
    );
    if let Some(r) = s.load().ok().flatten() {
        ev.say(
            "rotation_dropped",
            json!({"phase": r.phase.name()}),
            &format!(
                "dropped the trust-anchor rotation that was in phase {} (its state and kept issuer)",
                r.phase.name()
            ),
        );
    }
    s.clear()?;
    s.drop_kept_issuer();
    Ok(())
}

pub fn run(a: EmergencyArgs, at: &AtArgs) -> CmdResult {
    match mode(at)? {
        Mode::Files(p) => re_root(&a, &p),
        Mode::Cluster(kubeconfig) => re_root(&a, &ClusterStore::connect(at, kubeconfig)?),
    }
}

fn re_root<S: Store>(a: &EmergencyArgs, s: &S) -> CmdResult {
    let (_lock, taken_over) = s.lock()?;
    let ev = Events::new(&s.output(), Instant::now());
    if let Some(holder) = taken_over {
        ev.say(
            "lock_taken_over",
            json!({"holder": holder}),
            &format!("took over the rotation lock of {holder}, which is no longer running"),
        );
    }
    let (anchor_file, cert, key) = files(a);
    let anchor = super::read_anchor(anchor_file)?;
    let anchor_fp = pki::fingerprint(&anchor);
    let anchor_pem = pki::cert::to_pem(std::slice::from_ref(&anchor));
    let create = format!("`{}`", super::store::certs_create_issuer(s, anchor_file));
    let issuer = super::judge((anchor_file, anchor_pem.as_bytes()), cert, key, &create)?;
    let t = s.target();
    let before = t.source.fleet().ok();
    if justify(a, s, &anchor_pem, &ev)? {
        install(a, s, &anchor_pem, &ev)?;
    }
    let refused_before = before.as_ref().and_then(|v| v.issuer_refused.clone());
    let judge = |v: &FleetView| served(v, &anchor_fp, &issuer, refused_before.as_deref());
    progress::wait_in_force(&t, ev.start, judge).map_err(|why| {
        Failure::fatal(format!(
            "{why}; the new anchor and issuer stay installed (the old ones could not serve anyway): see the control plane's log, fix what it names, and re-run this command to resume"
        ))
    })?;
    let generation = t
        .source
        .fleet()
        .ok()
        .and_then(|v| v.bundle)
        .map(|b| b.generation);
    ev.say(
        "in_force",
        json!({"anchor": anchor_fp, "issuer": issuer, "generation": generation}),
        &format!(
            "the control plane serves the new anchor {} and issuer {} (bundle generation {}, {:.1?})",
            &anchor_fp[..12],
            &issuer[..12],
            generation.unwrap_or_default(),
            ev.start.elapsed()
        ),
    );
    let known = t.source.fleet().ok().or(before);
    match &t.source {
        Source::Admin(admin) => {
            steps((a, s, admin), anchor_file, known.as_ref(), &ev);
            Ok(())
        }
        Source::Cluster(_) => recover(s, &issuer, known.as_ref(), &ev),
    }
}

/// On Kubernetes the out-of-band step is the ConfigMap just written: the
/// proxies the control plane knew are waited for, each back on a leaf
/// from the new issuer.
fn recover<S: Store>(s: &S, issuer: &str, known: Option<&FleetView>, ev: &Events) -> CmdResult {
    let expected: BTreeSet<String> = known
        .iter()
        .flat_map(|v| &v.proxies)
        .map(|p| p.workload.clone())
        .collect();
    let follow = s.target().source.check_command();
    ev.say(
        "next",
        json!({"waiting_for": expected, "follow": follow}),
        &format!(
            "out of band: every injected proxy reads the new anchor from its mounted copy of {} (the kubelet refreshes it, within about a minute) and certifies again with its ServiceAccount token; a pod with no weft.mesh.v1 stream (a linkerd2-proxy sidecar) needs {}. Waiting for the {} prox{} the control plane knew; follow with `{follow}`",
            s.anchors_label(),
            s.renew_hint(),
            expected.len(),
            if expected.len() == 1 { "y" } else { "ies" }
        ),
    );
    progress::wait_converged(
        &s.target(),
        ev,
        "the new issuer",
        |v| progress::progress(v, issuer, &expected),
        |n| {
            format!(
                "every proxy is back, on a leaf from the new issuer ({n} of {n}, {:.1?})",
                ev.start.elapsed()
            )
        },
    )
}

/// The out-of-band steps, exact: a fresh token per workload the fleet view
/// knows, the new anchor onto each proxy's anchors file, how to follow.
fn steps(
    (a, s, admin): (&EmergencyArgs, &impl Store, &str),
    anchor: &Path,
    v: Option<&FleetView>,
    ev: &Events,
) {
    let known = v.map(workloads).unwrap_or_default();
    let tokens: Vec<String> = known
        .iter()
        .map(|(ns, sa, _)| {
            format!(
                "weft token create --namespace {ns} --service-account {sa} --out {sa}.token --force --state-dir {}",
                a.state_dir.display()
            )
        })
        .collect();
    let hosts: Vec<String> = known
        .iter()
        .map(|(ns, sa, h)| {
            let at: Vec<&str> = h.iter().map(String::as_str).collect();
            format!(
                "{ns}/{sa} on {}",
                if at.is_empty() {
                    "its hosts".into()
                } else {
                    at.join(", ")
                }
            )
        })
        .collect();
    let follow = [
        format!("weft check --proxy --admin-addr {admin}"),
        format!("weft rotate trust-anchor status {}", s.flags()),
    ];
    let mut text = String::from(
        "next, out of band (a proxy never takes an anchor from a control plane it cannot verify):\n  1. a fresh join token for each workload, put where its proxy's --token-file points (read again on every try):\n",
    );
    if tokens.is_empty() {
        text.push_str(&format!(
            "     weft token create --namespace <ns> --service-account <sa> --out <sa>.token --force --state-dir {} (the control plane knows no proxy)\n",
            a.state_dir.display()
        ));
    }
    for t in &tokens {
        text.push_str(&format!("     {t}\n"));
    }
    text.push_str(&format!(
        "  2. {} copied over every proxy's anchors file (its --trust-anchors-file; applied within a second, no restart){}{}\n  3. follow the recovery until every proxy is back:\n     {}\n     {}",
        anchor.display(),
        if hosts.is_empty() { "" } else { ": " },
        hosts.join("; "),
        follow[0],
        follow[1]
    ));
    ev.say(
        "next",
        json!({"tokens": tokens, "anchor": anchor, "proxies": hosts, "follow": follow}),
        &text,
    );
}

#[cfg(test)]
#[path = "rotate_emergency_tests.rs"]
mod tests;
