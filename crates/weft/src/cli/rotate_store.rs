//! Where a trust-anchor rotation changes things and remembers where it
//! stands: the control plane's files, with the state, lock and issuer
//! backup beside them (standalone), or the cluster's objects (see
//! `rotate_cluster_store`). The phases are written once, over [`Store`].

use std::path::{Path, PathBuf};

use super::state::{self, Rotation};
use super::{Plane, PlaneArgs, read};
use crate::cli::{Failure, Output};

/// The rotation lock: released when dropped.
pub(crate) type Guard = Box<dyn std::any::Any>;

/// What the phases need from where the anchors, the issuer and the
/// rotation's own state live.
pub(crate) trait Store: Plane {
    /// The rotation lock, held until the guard drops; the string names a
    /// holder that is gone and whose lock was taken over.
    fn lock(&self) -> Result<(Guard, Option<String>), Failure>;
    fn load(&self) -> Result<Option<Rotation>, Failure>;
    fn save(&self, r: &Rotation) -> Result<(), Failure>;
    /// No rotation in progress any more.
    fn clear(&self) -> Result<(), Failure>;
    /// The trust anchors in force, as PEM text.
    fn anchors(&self) -> Result<String, Failure>;
    /// The issuer certificate in force, as stored.
    fn issuer_cert(&self) -> Result<Vec<u8>, Failure>;
    /// Replaces the anchors at once; false: they already were `pem`.
    fn write_anchors(&self, pem: &str) -> Result<bool, Failure>;
    /// Keeps a copy of the issuer in force, for abort to put back.
    fn keep_issuer(&self) -> Result<(), Failure>;
    /// The copy [`Store::keep_issuer`] made: (certificate, key).
    fn kept_issuer(&self) -> Result<(Vec<u8>, Vec<u8>), Failure>;
    /// The copy removed once the rotation is complete.
    fn drop_kept_issuer(&self);
    fn output(&self) -> Output;
    /// The flags that name this place again, as next-step hints print them.
    fn flags(&self) -> String;
    /// Where the hints tell the operator to write a new issuer pair.
    fn new_issuer_files(&self) -> (PathBuf, PathBuf);
    /// How to ask the fleet to renew now, as a hint names it.
    fn renew_hint(&self) -> String;
    /// How a workload with no weft.mesh.v1 stream learns the new anchors.
    fn restart_hint(&self) -> String;
}

/// The exact command that makes a new issuer under `anchor` (its key
/// beside it, as `weft certs create` writes them).
pub fn certs_create_issuer(s: &impl Store, anchor: &Path) -> String {
    let (crt, key) = s.new_issuer_files();
    format!(
        "weft certs create identity.linkerd.cluster.local {} {} --profile intermediate-ca --ca {} --ca-key {}",
        crt.display(),
        key.display(),
        anchor.display(),
        super::key_beside(anchor).display()
    )
}

/// Copies of the issuer files before activate, for abort to put back.
pub(super) fn backup_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.pre-rotation"))
}

pub(super) fn state_failure(e: state::StateError) -> Failure {
    match e {
        state::StateError::Locked { .. } => Failure::fatal(e),
        _ => Failure::input(e),
    }
}

impl Store for PlaneArgs {
    fn lock(&self) -> Result<(Guard, Option<String>), Failure> {
        let (lock, taken_over) =
            state::lock(&self.identity_trust_anchors_file).map_err(state_failure)?;
        Ok((Box::new(lock), taken_over.map(|pid| format!("pid {pid}"))))
    }

    fn load(&self) -> Result<Option<Rotation>, Failure> {
        state::load(&self.identity_trust_anchors_file).map_err(state_failure)
    }

    fn save(&self, r: &Rotation) -> Result<(), Failure> {
        state::save(&self.identity_trust_anchors_file, r).map_err(Failure::fatal)
    }

    fn clear(&self) -> Result<(), Failure> {
        state::clear(&self.identity_trust_anchors_file).map_err(state_failure)
    }

    fn anchors(&self) -> Result<String, Failure> {
        String::from_utf8(read(&self.identity_trust_anchors_file)?).map_err(|_| {
            Failure::input(format!(
                "{} is not PEM text",
                self.identity_trust_anchors_file.display()
            ))
        })
    }

    fn issuer_cert(&self) -> Result<Vec<u8>, Failure> {
        read(&self.identity_issuer_certificate_file)
    }

    fn write_anchors(&self, pem: &str) -> Result<bool, Failure> {
        let path = &self.identity_trust_anchors_file;
        if std::fs::read_to_string(path).is_ok_and(|s| s == pem) {
            return Ok(false);
        }
        pki::files::write_atomic(path, pem.as_bytes(), pki::files::PUBLIC_MODE, true)
            .map_err(Failure::fatal)?;
        Ok(true)
    }

    fn keep_issuer(&self) -> Result<(), Failure> {
        for (path, mode) in [
            (&self.identity_issuer_key_file, pki::files::KEY_MODE),
            (
                &self.identity_issuer_certificate_file,
                pki::files::PUBLIC_MODE,
            ),
        ] {
            let bytes = read(path)?;
            pki::files::write_atomic(&backup_of(path), &bytes, mode, true)
                .map_err(Failure::fatal)?;
        }
        Ok(())
    }

    fn kept_issuer(&self) -> Result<(Vec<u8>, Vec<u8>), Failure> {
        Ok((
            read(&backup_of(&self.identity_issuer_certificate_file))?,
            read(&backup_of(&self.identity_issuer_key_file))?,
        ))
    }

    fn drop_kept_issuer(&self) {
        for f in [
            &self.identity_issuer_certificate_file,
            &self.identity_issuer_key_file,
        ] {
            let _ = std::fs::remove_file(backup_of(f));
        }
    }

    fn output(&self) -> Output {
        self.output
    }

    fn flags(&self) -> String {
        PlaneArgs::flags(self)
    }

    fn new_issuer_files(&self) -> (PathBuf, PathBuf) {
        PlaneArgs::new_issuer_files(self)
    }

    fn renew_hint(&self) -> String {
        format!("`curl -X POST http://{}/renew-now`", self.admin_addr)
    }

    fn restart_hint(&self) -> String {
        let f = self.identity_trust_anchors_file.display();
        format!(
            "restarted with {f} as its trust anchors: a linkerd2-proxy with LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS=\"$(cat {f})\"; a certificate made with `weft certs request` by re-running it with --roots {f}"
        )
    }
}
