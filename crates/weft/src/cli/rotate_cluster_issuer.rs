//! `weft rotate issuer` in Kubernetes mode: the same judgement and waits
//! as standalone, the pair installed into the issuer Secret (a
//! compare-and-swap on its resourceVersion; the old pair kept to put back
//! on a refusal) and the control plane reached through the API server.

use std::cell::RefCell;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;

use super::cluster::{Cluster, pair_of, with_pair};
use super::progress::{Source, Target};
use super::{AtArgs, IssuerArgs, Plane, PlaneArgs, issuer_in_force, judge};
use crate::cli::{CmdResult, Failure};

/// Where `weft rotate issuer` works.
#[derive(Debug)]
pub enum Mode {
    /// The control plane's files and admin address.
    Files(PlaneArgs),
    /// The cluster of this kubeconfig.
    Cluster(PathBuf),
}

/// The three files given → standalone; none, and a kubeconfig found (and
/// no `--admin-addr` without `--kubeconfig`, as `weft check` decides) →
/// the cluster. Pure but for where the kubeconfig is looked for.
pub fn mode(a: &AtArgs) -> Result<Mode, Failure> {
    let found = crate::cli::check::find_kubeconfig(a.kubeconfig.as_deref());
    decide(a, found).map_err(Failure::input)
}

fn decide(a: &AtArgs, kubeconfig: Option<PathBuf>) -> Result<Mode, String> {
    let files = [
        (
            "--identity-trust-anchors-file",
            &a.identity_trust_anchors_file,
        ),
        (
            "--identity-issuer-certificate-file",
            &a.identity_issuer_certificate_file,
        ),
        ("--identity-issuer-key-file", &a.identity_issuer_key_file),
    ];
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    match (missing.len(), kubeconfig) {
        (0, _) => Ok(Mode::Files(PlaneArgs {
            identity_trust_anchors_file: a.identity_trust_anchors_file.clone().unwrap_or_default(),
            identity_issuer_certificate_file: a
                .identity_issuer_certificate_file
                .clone()
                .unwrap_or_default(),
            identity_issuer_key_file: a.identity_issuer_key_file.clone().unwrap_or_default(),
            admin_addr: a
                .admin_addr
                .clone()
                .unwrap_or_else(|| "127.0.0.1:9990".into()),
            timeout: a.timeout,
            output: a.output,
        })),
        (3, Some(k)) if a.admin_addr.is_none() || a.kubeconfig.is_some() => Ok(Mode::Cluster(k)),
        (3, _) => Err(
            "nothing to rotate: pass the control plane's files (--identity-trust-anchors-file, --identity-issuer-certificate-file, --identity-issuer-key-file; standalone), or a kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) to rotate the cluster's (its issuer Secret and trust-roots ConfigMap); nothing was changed"
                .into(),
        ),
        _ => Err(format!(
            "standalone rotation needs all three control-plane files: {} missing; nothing was changed",
            missing.join(", ")
        )),
    }
}

/// What installing over the Secret keeps to put back on a refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Keep {
    /// The Secret holds the issuer in force: keep its pair.
    InForce,
    /// The Secret already holds the new issuer (an interrupted run wrote
    /// it): the pair in force before it is not known here.
    Nothing,
}

/// Judged before anything changes, from fingerprints: the Secret's issuer,
/// the one the control plane serves, the new one. A Secret holding a third
/// issuer is an edit the control plane has not taken (or refused); putting
/// it back on a refusal would restore that, so the rotation refuses. Pure.
pub fn keep(secret: &str, served: Option<&str>, new: &str, object: &str) -> Result<Keep, String> {
    if secret == new {
        return Ok(Keep::Nothing);
    }
    match served {
        Some(served) if served != secret => Err(format!(
            "{object} holds issuer {}, but the control plane serves issuer {}: an edit it has not taken or refused (see `weft check`); nothing was changed: put the issuer in force back into {object}, or wait until the control plane takes it, then re-run",
            short(secret),
            short(served)
        )),
        _ => Ok(Keep::InForce),
    }
}

fn short(fp: &str) -> &str {
    &fp[..12.min(fp.len())]
}

/// The issuer Secret as the rotation found it, and the control plane
/// reached through the API server.
struct ClusterPlane<'a> {
    cluster: &'a Cluster,
    /// The Secret read when the pair was judged: installing replaces it
    /// only if nobody changed it since.
    read: RefCell<Secret>,
    anchors: String,
    timeout: std::time::Duration,
    keep: Keep,
}

impl Plane for ClusterPlane<'_> {
    /// The old pair (if known) and the Secret as written (its resourceVersion).
    type Saved = (Option<(Vec<u8>, Vec<u8>)>, Secret);

    fn target(&self) -> Target<'_> {
        Target {
            source: Source::Cluster(self.cluster),
            timeout: self.timeout,
        }
    }

    fn anchors_label(&self) -> String {
        self.anchors.clone()
    }

    fn holder(&self) -> String {
        self.cluster.names.secret_object()
    }

    fn install(&self, new: &(Vec<u8>, Vec<u8>)) -> Result<Self::Saved, Failure> {
        let read = self.read.borrow().clone();
        let old = pair_of(&read).ok_or_else(|| {
            Failure::fatal(format!(
                "{} holds no issuer pair; nothing was changed",
                self.holder()
            ))
        })?;
        let written = self
            .cluster
            .replace_secret(&with_pair(&read, &new.0, &new.1))
            .map_err(|e| Failure::fatal(format!("{e}; nothing was changed")))?;
        *self.read.borrow_mut() = written.clone();
        Ok(((self.keep == Keep::InForce).then_some(old), written))
    }

    fn put_back(&self, (old, written): Self::Saved) -> Result<(), Failure> {
        let Some(old) = old else {
            return Err(Failure::fatal(format!(
                "an earlier, interrupted run wrote the new issuer into {} and the pair in force before it is not known here: the control plane keeps serving its last good issuer; put that pair back into the Secret",
                self.holder()
            )));
        };
        let back = self
            .cluster
            .replace_secret(&with_pair(&written, &old.0, &old.1))
            .map_err(Failure::fatal)?;
        *self.read.borrow_mut() = back;
        Ok(())
    }

    fn renew_now(&self) -> super::Answers {
        self.cluster.renew_now()
    }
}

/// The new pair judged against the ConfigMap's anchors before anything
/// changes, then put in force through the Secret.
pub fn run(a: &IssuerArgs, kubeconfig: PathBuf) -> CmdResult {
    let cluster = Cluster::connect(Some(&kubeconfig), &a.at.namespace).map_err(Failure::fatal)?;
    let ((label, anchors), secret) = cluster.read().map_err(Failure::fatal)?;
    let create = format!(
        "`weft certs create identity.linkerd.cluster.local issuer-new.crt issuer-new.key --profile intermediate-ca --ca ANCHOR.crt --ca-key ANCHOR.key` with the trust anchor of {} and its key",
        cluster.names.configmap_object()
    );
    let new_issuer = judge((&label, &anchors), &a.cert, &a.key, &create)?;
    let before = cluster
        .fleet()
        .map_err(|e| Failure::input(format!("{e}; nothing was changed")))?;
    let in_secret = pair_of(&secret)
        .and_then(|(crt, _)| pki::parse_certs(&label, &crt).ok())
        .and_then(|certs| certs.first().map(|c| pki::fingerprint(c)))
        .unwrap_or_default();
    let served = before.bundle.as_ref().map(|b| b.issuer_sha256.as_str());
    let keep = keep(
        &in_secret,
        served,
        &new_issuer,
        &cluster.names.secret_object(),
    )
    .map_err(Failure::fatal)?;
    let plane = ClusterPlane {
        cluster: &cluster,
        read: RefCell::new(secret),
        anchors: label.display().to_string(),
        timeout: a.at.timeout,
        keep,
    };
    issuer_in_force(a, &plane, &new_issuer, &before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: IssuerArgs,
    }

    fn args(extra: &[&str]) -> AtArgs {
        let mut argv = vec!["x", "--cert", "n.crt", "--key", "n.key"];
        argv.extend(extra);
        Cli::parse_from(argv).a.at
    }

    #[test]
    fn the_pair_kept_to_put_back_is_the_one_in_force() {
        let o = "Secret weft/linkerd-identity-issuer";
        assert_eq!(keep("old", Some("old"), "new", o), Ok(Keep::InForce));
        assert_eq!(keep("old", None, "new", o), Ok(Keep::InForce));
        assert_eq!(keep("new", Some("old"), "new", o), Ok(Keep::Nothing));
        assert_eq!(keep("new", Some("new"), "new", o), Ok(Keep::Nothing));
        let e = keep("edited", Some("old"), "new", o).unwrap_err();
        assert!(
            e.starts_with("Secret weft/linkerd-identity-issuer holds issuer edited, but the control plane serves issuer old")
                && e.contains("nothing was changed"),
            "{e}"
        );
    }

    #[test]
    fn files_mean_standalone_a_kubeconfig_alone_the_cluster() {
        let kc = Some(PathBuf::from("/k"));
        let files = [
            "--identity-trust-anchors-file",
            "ca.crt",
            "--identity-issuer-certificate-file",
            "i.crt",
            "--identity-issuer-key-file",
            "i.key",
        ];
        let Ok(Mode::Files(p)) = decide(&args(&files), kc.clone()) else {
            panic!("three files are standalone");
        };
        assert_eq!(p.admin_addr, "127.0.0.1:9990");
        assert_eq!(p.identity_issuer_key_file, PathBuf::from("i.key"));
        let cluster = |m: Result<Mode, String>| matches!(m, Ok(Mode::Cluster(k)) if k == std::path::Path::new("/k"));
        assert!(cluster(decide(&args(&[]), kc.clone())));
        // An admin address without --kubeconfig means a local control plane.
        let e = decide(&args(&["--admin-addr", "127.0.0.1:1"]), kc.clone()).unwrap_err();
        assert!(e.starts_with("nothing to rotate"), "{e}");
        let both = args(&["--admin-addr", "127.0.0.1:1", "--kubeconfig", "/k"]);
        assert!(cluster(decide(&both, kc.clone())));
        let e = decide(&args(&[]), None).unwrap_err();
        assert!(
            e.contains("or a kubeconfig (--kubeconfig, KUBECONFIG"),
            "{e}"
        );
        let e = decide(&args(&files[..2]), kc).unwrap_err();
        assert_eq!(
            e,
            "standalone rotation needs all three control-plane files: --identity-issuer-certificate-file, --identity-issuer-key-file missing; nothing was changed"
        );
    }
}
