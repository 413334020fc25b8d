//! A trust-anchor rotation's state, kept next to the anchors file it
//! changes (`<anchors>.rotation.json`), so it lives wherever the anchors
//! live and needs no other flag: every command reads it first, so a
//! command interrupted at any point is re-run and resumes. Written
//! atomically. `<anchors>.rotation.lock` (the holder's pid) keeps two
//! rotations from running at once; a lock left by a dead process is taken
//! over.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The phases; `-ing` while a command works (or was interrupted), `-ed`
/// once it has verified its result on the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Preparing,
    Prepared,
    Activating,
    Activated,
    Retiring,
    Retired,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Prepared => "prepared",
            Phase::Activating => "activating",
            Phase::Activated => "activated",
            Phase::Retiring => "retiring",
            Phase::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub phase: Phase,
    /// The anchors file as it was before prepare (PEM), restored by abort.
    pub old_anchors_pem: String,
    /// Their fingerprints.
    pub old_anchors: Vec<String>,
    pub new_anchor_pem: String,
    pub new_anchor: String,
    /// Where the new anchor came from (its key is beside it, for the hints).
    pub new_anchor_file: PathBuf,
    /// The issuer in force when the rotation began.
    pub old_issuer: String,
    /// The issuer activate put in force.
    #[serde(default)]
    pub new_issuer: Option<String>,
    pub started_unix: i64,
    /// The workloads whose proxies were connected when the current phase
    /// began (and any connected since): a resumed phase waits for them
    /// too, so one reconnecting just then is not skipped.
    #[serde(default)]
    pub expected: std::collections::BTreeSet<String>,
}

impl Rotation {
    /// The anchors that go away at retire.
    pub fn retiring(&self) -> Vec<String> {
        self.old_anchors
            .iter()
            .filter(|a| **a != self.new_anchor)
            .cloned()
            .collect()
    }

    pub fn both_pem(&self) -> String {
        let mut s = self.old_anchors_pem.clone();
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s + &self.new_anchor_pem
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{path}: {detail}; it holds the trust-anchor rotation's state; restore it, or run `weft rotate trust-anchor status` to see what is in force"
    )]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path}: cannot write the rotation's state: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: pki::files::FileError,
    },
    #[error(
        "another trust-anchor rotation is running (pid {pid}, lock {path}); wait for it to finish, or stop it and re-run this command to resume"
    )]
    Locked { pid: u32, path: PathBuf },
    #[error("{path}: cannot take the rotation lock: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the state of the rotation of `anchors` is kept.
pub fn state_path(anchors: &Path) -> PathBuf {
    beside(anchors, "rotation.json")
}

fn beside(anchors: &Path, suffix: &str) -> PathBuf {
    let name = anchors
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    anchors.with_file_name(format!("{name}.{suffix}"))
}

pub fn load(anchors: &Path) -> Result<Option<Rotation>, StateError> {
    let path = state_path(anchors);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError::Unreadable {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Unreadable {
            path,
            detail: e.to_string(),
        }),
    }
}

pub fn save(anchors: &Path, r: &Rotation) -> Result<(), StateError> {
    let path = state_path(anchors);
    let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
    pki::files::write_atomic(&path, &bytes, pki::files::KEY_MODE, true)
        .map_err(|source| StateError::Write { path, source })
}

/// Removes the state: no rotation in progress.
pub fn clear(anchors: &Path) -> Result<(), StateError> {
    let path = state_path(anchors);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::Unreadable {
            path,
            detail: e.to_string(),
        }),
    }
}

/// The rotation lock, released when dropped.
pub struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with `pid` is alive (Linux: /proc).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes the lock for `anchors`. A lock whose holder is gone is taken over;
/// `taken_over` then names that holder (for the command to say so).
pub fn lock(anchors: &Path) -> Result<(Lock, Option<u32>), StateError> {
    use std::io::Write;
    let path = beside(anchors, "rotation.lock");
    let mut taken_over = None;
    for _ in 0..3 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                write!(f, "{}", std::process::id()).map_err(|source| StateError::Lock {
                    path: path.clone(),
                    source,
                })?;
                return Ok((Lock { path }, taken_over));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                match holder {
                    Some(pid) if alive(pid) => return Err(StateError::Locked { pid, path }),
                    // Dead holder (or a lock half-written by one): take it over.
                    other => {
                        taken_over = other.or(Some(0));
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            Err(source) => return Err(StateError::Lock { path, source }),
        }
    }
    Err(StateError::Lock {
        path,
        source: std::io::Error::other("the lock kept reappearing"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation() -> Rotation {
        Rotation {
            phase: Phase::Preparing,
            old_anchors_pem: "OLD".into(),
            old_anchors: vec!["a".into(), "n".into()],
            new_anchor_pem: "NEW\n".into(),
            new_anchor: "n".into(),
            new_anchor_file: "ca2.crt".into(),
            old_issuer: "i".into(),
            new_issuer: None,
            started_unix: 1,
            expected: Default::default(),
        }
    }

    #[test]
    fn state_round_trips_beside_the_anchors_and_locks_once() {
        let d = tempfile::tempdir().unwrap();
        let anchors = d.path().join("ca.crt");
        assert_eq!(load(&anchors).unwrap(), None);
        let r = rotation();
        save(&anchors, &r).unwrap();
        assert_eq!(state_path(&anchors), d.path().join("ca.crt.rotation.json"));
        assert_eq!(load(&anchors).unwrap(), Some(r.clone()));
        assert_eq!(r.retiring(), vec!["a".to_string()]);
        assert_eq!(r.both_pem(), "OLD\nNEW\n");

        let (held, taken) = lock(&anchors).unwrap();
        assert_eq!(taken, None);
        assert!(matches!(lock(&anchors), Err(StateError::Locked { .. })));
        drop(held);
        // A lock from a process that is gone is taken over, named.
        std::fs::write(d.path().join("ca.crt.rotation.lock"), "4194303999").unwrap();
        let (_held, taken) = lock(&anchors).unwrap();
        assert_eq!(taken, Some(4_194_303_999));

        std::fs::write(state_path(&anchors), "{").unwrap();
        assert!(matches!(load(&anchors), Err(StateError::Unreadable { .. })));
        clear(&anchors).unwrap();
        assert_eq!(load(&anchors).unwrap(), None);
    }
}
