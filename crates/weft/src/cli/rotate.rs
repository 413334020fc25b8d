//! `weft rotate issuer`: a new issuer put in force without a step skipped.
//! The new pair is judged against the anchors in force before anything
//! changes; it is installed atomically over the control plane's files; the
//! command waits until the control plane took it (or refused it: the old
//! files are put back and the reason shown), asks the fleet to renew, and
//! waits until every connected proxy serves a leaf from the new issuer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use pki::check::{CheckConfig, Status, identity_checks, parse_identity_material};
use serde_json::json;

use super::duration::parse_duration;
use super::{CmdResult, Failure, http_request};

#[path = "rotate_abort.rs"]
mod abort;
#[path = "rotate_anchor.rs"]
mod anchor;
#[path = "rotate_cluster.rs"]
mod cluster;
#[path = "rotate_cluster_issuer.rs"]
mod cluster_issuer;
#[path = "rotate_cluster_store.rs"]
mod cluster_store;
#[path = "rotate_emergency.rs"]
mod emergency;
#[path = "rotate_plan.rs"]
mod plan;
#[path = "rotate_progress.rs"]
mod progress;
#[path = "rotate_state.rs"]
mod state;
#[path = "rotate_status.rs"]
mod status;
#[path = "rotate_store.rs"]
mod store;

use progress::{Events, Source, Target};

#[derive(Debug, Subcommand)]
pub enum RotateCmd {
    /// Put a new issuer (signed by an anchor in force) in force and renew the fleet under it
    Issuer(Box<IssuerArgs>),
    /// Replace the trust anchor in three verified phases: prepare, activate, retire (also status, abort); or, once it has expired, at once with --emergency
    TrustAnchor(Box<anchor::TrustAnchorArgs>),
}

/// The control plane's identity files (standalone mode) and where it answers.
#[derive(Debug, Clone, Args)]
pub struct PlaneArgs {
    /// The trust anchors in force (the control plane's --identity-trust-anchors-file)
    #[arg(long)]
    pub identity_trust_anchors_file: PathBuf,
    /// The control plane's issuer certificate file, replaced atomically
    #[arg(long)]
    pub identity_issuer_certificate_file: PathBuf,
    /// The control plane's issuer key file, replaced atomically (mode 0600)
    #[arg(long)]
    pub identity_issuer_key_file: PathBuf,
    /// The control plane's admin address
    #[arg(long, default_value = "127.0.0.1:9990", value_parser = super::host_port)]
    pub admin_addr: String,
    /// How long to wait for the control plane and then the fleet
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output: text (a live progress line on a terminal, plain lines when piped) or json (one event object a line)
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: super::Output,
}

impl PlaneArgs {
    pub(super) fn target(&self) -> Target<'static> {
        Target {
            source: Source::Admin(self.admin_addr.clone()),
            timeout: self.timeout,
        }
    }

    /// The issuer files the hints name, beside the control plane's.
    fn new_issuer_files(&self) -> (PathBuf, PathBuf) {
        let f = &self.identity_issuer_certificate_file;
        (
            f.with_file_name("issuer-new.crt"),
            f.with_file_name("issuer-new.key"),
        )
    }

    /// The exact command that makes a new issuer under `anchor` (its key
    /// beside it, as `weft certs create` writes them).
    fn certs_create_issuer(&self, anchor: &Path) -> String {
        let (crt, key) = self.new_issuer_files();
        format!(
            "weft certs create identity.linkerd.cluster.local {} {} --profile intermediate-ca --ca {} --ca-key {}",
            crt.display(),
            key.display(),
            anchor.display(),
            key_beside(anchor).display()
        )
    }

    /// The same flags, as a next-step hint prints them.
    fn flags(&self) -> String {
        format!(
            "--identity-trust-anchors-file {} --identity-issuer-certificate-file {} --identity-issuer-key-file {} --admin-addr {}",
            self.identity_trust_anchors_file.display(),
            self.identity_issuer_certificate_file.display(),
            self.identity_issuer_key_file.display(),
            self.admin_addr
        )
    }
}

#[derive(Debug, Args)]
pub struct IssuerArgs {
    /// The new issuer certificate (PEM), e.g. from `weft certs create identity.linkerd.cluster.local issuer-new.crt issuer-new.key --profile intermediate-ca --ca ca.crt --ca-key ca.key`
    #[arg(long)]
    pub cert: PathBuf,
    /// The new issuer's private key (PEM)
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub at: AtArgs,
    /// Only judge the new pair; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// Where a rotation works: the control plane's three files (standalone),
/// or, without them and with a kubeconfig, the cluster.
#[derive(Debug, Clone, Args)]
pub struct AtArgs {
    /// Standalone: the trust anchors in force (the control plane's --identity-trust-anchors-file). Without the three files and with a kubeconfig, the cluster's ConfigMap and Secret
    #[arg(long)]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// Standalone: the control plane's issuer certificate file, replaced atomically
    #[arg(long)]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// Standalone: the control plane's issuer key file, replaced atomically (mode 0600)
    #[arg(long)]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// Standalone: the control plane's admin address (default 127.0.0.1:9990)
    #[arg(long, value_parser = super::host_port)]
    pub admin_addr: Option<String>,
    /// Kubernetes mode: the kubeconfig (default: KUBECONFIG, then ~/.kube/config); the issuer Secret and trust-roots ConfigMap are replaced and the control plane reached through the API server (needs get/update on both, get and create on pods/portforward; a trust-anchor rotation also keeps its state in ConfigMap weft-rotation, its lock in Lease weft-rotation and the previous issuer in Secret weft-rotation-issuer: get/create/update/delete on those)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the control plane's namespace
    #[arg(short = 'n', long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub namespace: String,
    /// How long to wait for the control plane and then the fleet
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Output: text (a live progress line on a terminal, plain lines when piped) or json (one event object a line)
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: super::Output,
}

/// `ca2.crt` → `ca2.key`: where `weft certs create` put a CA's key.
fn key_beside(cert: &Path) -> PathBuf {
    cert.with_extension("key")
}

pub fn run(c: RotateCmd) -> CmdResult {
    match c {
        RotateCmd::Issuer(a) => match cluster_issuer::mode(&a.at)? {
            cluster_issuer::Mode::Files(plane) => issuer(&a, &plane),
            cluster_issuer::Mode::Cluster(kubeconfig) => cluster_issuer::run(&a, kubeconfig),
        },
        RotateCmd::TrustAnchor(c) => anchor::run(*c),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))
}

/// Why `anchor` is refused, with the command that makes a good one.
fn anchor_refused(anchor: &Path, why: &str) -> Failure {
    Failure::input(format!(
        "the new anchor {} is refused, nothing was changed: {why}; create one with `weft certs create root.linkerd.cluster.local {} {} --profile root-ca`",
        anchor.display(),
        anchor.display(),
        key_beside(anchor).display()
    ))
}

/// A new anchor judged before anything changes: one self-signed CA
/// certificate, valid now.
fn read_anchor(path: &Path) -> Result<pki::CertificateDer<'static>, Failure> {
    let refuse = |why: String| anchor_refused(path, &why);
    let pem = String::from_utf8(read(path)?).map_err(|_| refuse("not PEM text".into()))?;
    let certs = pki::parse_certs(path, pem.as_bytes()).map_err(|e| refuse(e.to_string()))?;
    let [cert] = certs.as_slice() else {
        return Err(refuse(format!(
            "it holds {} certificates, expected exactly one",
            certs.len()
        )));
    };
    pki::verify(
        cert,
        &[],
        std::slice::from_ref(cert),
        time::OffsetDateTime::now_utc(),
        pki::Purpose::Ca,
    )
    .map_err(|e| refuse(format!("not a valid self-signed CA certificate: {e}")))?;
    Ok(cert.clone())
}

/// Every identity check on the new pair against `anchors` (a label and
/// PEM bytes); a warning (e.g. less than 60 days left) refuses too: a
/// rotation should not install an issuer that is already due for the next
/// one. `create` is the command that makes a good one. Returns the new
/// issuer's fingerprint.
fn judge(
    anchors: (&Path, &[u8]),
    cert: &Path,
    key: &Path,
    create: &str,
) -> Result<String, Failure> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let material = parse_identity_material(anchors, (cert, &cert_pem), Some((key, &key_pem)));
    let checks = identity_checks(
        material.as_ref().map_err(String::as_str),
        time::OffsetDateTime::now_utc(),
        CheckConfig::default(),
    );
    let bad: Vec<String> = checks
        .iter()
        .filter(|c| c.result != Status::Success)
        .map(|c| format!("{}: {}", c.description, c.error))
        .collect();
    if !bad.is_empty() {
        return Err(Failure::input(format!(
            "the new issuer {} is refused, nothing was changed: {}; create one with {create}",
            cert.display(),
            bad.join("; "),
        )));
    }
    let cert = material.map_err(Failure::input)?.issuer;
    Ok(pki::fingerprint(&cert))
}

/// Both files replaced, the key first: the control plane reads them as a
/// pair after a debounce, and judges a half-written pair as refused only
/// if it outlasts that.
fn install(a: &PlaneArgs, cert: &[u8], key: &[u8]) -> Result<(), Failure> {
    let write = |path: &Path, bytes: &[u8], mode| {
        pki::files::write_atomic(path, bytes, mode, true).map_err(|e| Failure::fatal(e.to_string()))
    };
    write(&a.identity_issuer_key_file, key, pki::files::KEY_MODE)?;
    write(
        &a.identity_issuer_certificate_file,
        cert,
        pki::files::PUBLIC_MODE,
    )
}

fn issuer(a: &IssuerArgs, plane: &PlaneArgs) -> CmdResult {
    let anchors = read(&plane.identity_trust_anchors_file)?;
    // `--ca` may name the whole bundle: the certificate the key belongs to signs.
    let create = format!(
        "`{}`",
        plane.certs_create_issuer(&plane.identity_trust_anchors_file)
    );
    let new_issuer = judge(
        (&plane.identity_trust_anchors_file, &anchors),
        &a.cert,
        &a.key,
        &create,
    )?;
    let before = progress::fleet_or_refuse(&plane.admin_addr)?;
    issuer_in_force(a, plane, &new_issuer, &before)
}

/// The judged pair (fingerprint `new_issuer`) put in force on `plane`
/// (`before`: the fleet view first seen), or only reported with --dry-run.
fn issuer_in_force<P: Plane>(
    a: &IssuerArgs,
    plane: &P,
    new_issuer: &str,
    before: &control_plane::fleet::FleetView,
) -> CmdResult {
    let start = Instant::now();
    let expected = progress::connected(before);
    let ev = Events::new(&a.at.output, start);
    let in_force = before
        .bundle
        .as_ref()
        .is_some_and(|b| b.issuer_sha256 == new_issuer);
    if a.dry_run && !in_force {
        ev.say(
            "dry_run",
            json!({"issuer": new_issuer}),
            &format!(
                "dry run: issuer {} ({}) passes every check against {}; nothing was changed",
                &new_issuer[..12],
                a.cert.display(),
                plane.anchors_label()
            ),
        );
        return Ok(());
    }
    let new = (read(&a.cert)?, read(&a.key)?);
    put_in_force(plane, new_issuer, &new, &expected, &ev, "the new issuer")
        .map_err(InForce::into_failure)
}

/// Each replica's answer to a request: (the replica's pod, None for the
/// one admin address; (status, body) or why none).
pub(crate) type Answers = Vec<(Option<String>, Result<(u16, String), String>)>;

/// Where an issuer is installed and the control plane reached: the files
/// and admin address (standalone), or the Secret and the API server.
pub(crate) trait Plane {
    /// What [`Plane::put_back`] needs to undo an install.
    type Saved;
    fn target(&self) -> Target<'_>;
    /// The anchors the new issuer was judged against, as messages name them.
    fn anchors_label(&self) -> String;
    /// Where the issuer is installed, as messages name it.
    fn holder(&self) -> String;
    fn install(&self, new: &(Vec<u8>, Vec<u8>)) -> Result<Self::Saved, Failure>;
    fn put_back(&self, saved: Self::Saved) -> Result<(), Failure>;
    /// POST /renew-now on every replica.
    fn renew_now(&self) -> Answers;
}

impl Plane for PlaneArgs {
    type Saved = (Vec<u8>, Vec<u8>);

    fn target(&self) -> Target<'_> {
        PlaneArgs::target(self)
    }

    fn anchors_label(&self) -> String {
        self.identity_trust_anchors_file.display().to_string()
    }

    fn holder(&self) -> String {
        self.identity_issuer_certificate_file.display().to_string()
    }

    fn install(&self, new: &(Vec<u8>, Vec<u8>)) -> Result<Self::Saved, Failure> {
        let old = (
            read(&self.identity_issuer_certificate_file)?,
            read(&self.identity_issuer_key_file)?,
        );
        install(self, &new.0, &new.1)?;
        Ok(old)
    }

    fn put_back(&self, old: Self::Saved) -> Result<(), Failure> {
        install(self, &old.0, &old.1)
    }

    fn renew_now(&self) -> Answers {
        let answer = http_request(&self.admin_addr, "POST", "/renew-now")
            .ok_or_else(|| format!("no control plane answers at {}", self.admin_addr));
        vec![(None, answer)]
    }
}

/// How putting an issuer in force stopped.
pub(crate) enum InForce {
    /// The control plane refused it (or never took it): the previous
    /// files were put back and keep serving.
    PutBack(Failure),
    /// In force, but something after that failed (e.g. the fleet did not
    /// converge in time): re-running resumes.
    After(Failure),
}

impl InForce {
    fn into_failure(self) -> Failure {
        match self {
            InForce::PutBack(f) | InForce::After(f) => f,
        }
    }
}

/// The issuer `new` (cert, key; fingerprint `new_issuer`) installed unless
/// already in force, taken by the control plane, the fleet asked to renew,
/// and every proxy of `expected` (and any connected) serving a leaf from it
/// (`label` names it in the final line).
fn put_in_force<P: Plane>(
    a: &P,
    new_issuer: &str,
    new: &(Vec<u8>, Vec<u8>),
    expected: &BTreeSet<String>,
    ev: &Events,
    label: &str,
) -> Result<(), InForce> {
    let t = a.target();
    let short = &new_issuer[..12];
    let served = t
        .source
        .fleet()
        .ok()
        .and_then(|v| v.bundle)
        .is_some_and(|b| b.issuer_sha256 == new_issuer);
    if served {
        ev.say(
            "already_in_force",
            json!({"issuer": new_issuer}),
            &format!("the control plane already serves issuer {short}"),
        );
    } else {
        let old = a.install(new).map_err(InForce::PutBack)?;
        ev.say(
            "installed",
            json!({"issuer": new_issuer}),
            &format!("installed issuer {short} over {}", a.holder()),
        );
        let judge =
            |v: &control_plane::fleet::FleetView| progress::progress(v, new_issuer, expected);
        if let Err(why) = progress::wait_in_force(&t, Instant::now(), judge) {
            a.put_back(old).map_err(|e| {
                InForce::PutBack(Failure::fatal(format!(
                    "{why}; putting the previous issuer back failed too: {}",
                    e.message
                )))
            })?;
            return Err(InForce::PutBack(Failure::fatal(format!(
                "{why}; the previous issuer was put back into {} and it keeps serving",
                a.holder()
            ))));
        }
    }
    ev.say(
        "in_force",
        json!({"issuer": new_issuer}),
        &format!(
            "the control plane serves {label} ({:.1?})",
            ev.start.elapsed()
        ),
    );
    for (replica, answer) in a.renew_now() {
        let at = replica
            .as_ref()
            .map(|r| format!(" at pod {r}"))
            .unwrap_or_default();
        match answer {
            Ok((code, body)) => {
                let answer: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or(json!(body.trim()));
                ev.say(
                    "renew_now",
                    json!({"status": code, "answer": answer, "replica": replica}),
                    &format!("renew-now{at}: {code} {}", body.trim().replace('\n', " ")),
                );
            }
            // Not fatal: the wait below tells whether the fleet got there.
            Err(e) => ev.say(
                "renew_now",
                json!({"error": e, "replica": replica}),
                &format!(
                    "renew-now{at} not sent: {e}; its proxies renew at 70% of their leaf's life"
                ),
            ),
        }
    }
    progress::wait_converged(
        &t,
        ev,
        label,
        |v| progress::progress(v, new_issuer, expected),
        |n| {
            format!(
                "every connected proxy serves a leaf from {label} ({n} of {n}, {:.1?})",
                ev.start.elapsed()
            )
        },
    )
    .map_err(InForce::After)
}
