//! The control plane's state directory: the token signing key, revoked
//! tokens, and the record of live issued certificates.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pki::files::{KEY_MODE, PUBLIC_MODE, write_atomic};
use serde::{Deserialize, Serialize};

use crate::token::{RevokedError, RevokedFile, key_id, read_revoked};

const MARKER: &str = "weft-state.json";
const TOKEN_KEY: &str = "token-signing.key";
const REVOKED: &str = "revoked.json";
pub const ISSUANCES: &str = "issuances.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{dir}: holds weft state but its token signing key {key} is missing; every token issued from it would silently stop working. Restore {key} from backup, or start over with an empty --state-dir (then issue new tokens with `weft token create`)"
    )]
    KeyLost { dir: PathBuf, key: PathBuf },
    #[error(
        "{dir}: is not empty and holds no weft state; pass an empty or new directory as --state-dir"
    )]
    Foreign { dir: PathBuf },
    #[error("{path}: the token signing key cannot be used ({source}); restore it from backup")]
    BadKey {
        path: PathBuf,
        #[source]
        source: pki::KeyError,
    },
    #[error("{path}: the token signing key cannot be made ({source})")]
    KeyGen {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: pki::files::FileError,
    },
    #[error("{path}: {source}")]
    Revoked {
        path: PathBuf,
        #[source]
        source: RevokedError,
    },
    #[error(
        "state directory {dir} does not exist. Tokens must be signed with the key in the control plane's state directory (its --state-dir, default weft-state, made when it first starts): pass that directory with --state-dir (or WEFT_STATE_DIR), or create an empty directory first to start a new one"
    )]
    Missing { dir: PathBuf },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: u32,
    token_key_sha256: String,
}

/// An opened state directory and its token signing key.
pub struct StateDir {
    pub path: PathBuf,
    pub token_key: rcgen::KeyPair,
    /// Set when this open created the directory's state.
    pub initialised: bool,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StateDir {
    /// Opens an existing directory (initialising it when empty), but never
    /// creates one: a command run from the wrong directory must not sign
    /// tokens with a key the control plane has never seen.
    pub fn open_existing(dir: &Path) -> Result<Self, StateError> {
        if !dir.is_dir() {
            return Err(StateError::Missing {
                dir: dir.to_path_buf(),
            });
        }
        Self::open_or_init(dir)
    }

    /// Opens `dir`, initialising it (mode 0700, new key) when absent or empty.
    /// A directory with weft state but no key is refused: never silently
    /// replace the key every issued token depends on.
    pub fn open_or_init(dir: &Path) -> Result<Self, StateError> {
        let key_path = dir.join(TOKEN_KEY);
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        // Two processes (a control plane and `weft token create`) may open a
        // new directory at once: only one may create the key.
        let lock = std::fs::File::open(dir).map_err(io(dir))?;
        lock.lock().map_err(io(dir))?;
        let entries: Vec<String> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let ours = [MARKER, TOKEN_KEY, REVOKED, ISSUANCES];
        let has_state = entries.iter().any(|e| ours.contains(&e.as_str()));
        if entries.is_empty() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
            let key = rcgen::KeyPair::generate().map_err(|source| StateError::KeyGen {
                path: key_path.clone(),
                source,
            })?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), KEY_MODE, false).map_err(
                |source| StateError::Write {
                    path: key_path.clone(),
                    source,
                },
            )?;
            let marker = Marker {
                format: 1,
                token_key_sha256: key_id(&key),
            };
            let bytes = serde_json::to_vec_pretty(&marker).unwrap_or_default();
            write_atomic(&dir.join(MARKER), &bytes, PUBLIC_MODE, false).map_err(|source| {
                StateError::Write {
                    path: dir.join(MARKER),
                    source,
                }
            })?;
            return Ok(Self {
                path: dir.to_path_buf(),
                token_key: key,
                initialised: true,
            });
        }
        if !has_state {
            return Err(StateError::Foreign {
                dir: dir.to_path_buf(),
            });
        }
        if !key_path.exists() {
            return Err(StateError::KeyLost {
                dir: dir.to_path_buf(),
                key: key_path,
            });
        }
        let key = pki::load_key(&key_path).map_err(|source| StateError::BadKey {
            path: key_path.clone(),
            source,
        })?;
        Ok(Self {
            path: dir.to_path_buf(),
            token_key: key,
            initialised: false,
        })
    }

    pub fn token_key_id(&self) -> String {
        key_id(&self.token_key)
    }

    pub fn revoked_file(&self) -> PathBuf {
        self.path.join(REVOKED)
    }

    pub fn issuances_file(&self) -> PathBuf {
        self.path.join(ISSUANCES)
    }

    /// Adds `jti` to the revocation list (atomically), dropping expired entries.
    pub fn revoke(&self, jti: &str, exp: Option<i64>, now: i64) -> Result<bool, StateError> {
        let path = self.revoked_file();
        let mut f: RevokedFile = read_revoked(&path).map_err(|source| StateError::Revoked {
            path: path.clone(),
            source,
        })?;
        f.revoked.retain(|_, e| *e > now);
        // Unknown expiry: keep it a year, long past any join token's life.
        let fresh = f
            .revoked
            .insert(jti.to_string(), exp.unwrap_or(now + 365 * 86400))
            .is_none();
        let bytes = serde_json::to_vec_pretty(&f).unwrap_or_default();
        write_atomic(&path, &bytes, PUBLIC_MODE, true).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(fresh)
    }
}

/// One issued certificate, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    pub identity: pki::Identity,
    pub serial: String,
    pub spki_sha256: String,
    pub issuer_sha256: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub not_after: i64,
    /// "token:<jti>" or "renewal".
    pub proof: String,
    /// The join token this certificate descends from (through renewals), so
    /// revoking the token ends the line.
    #[serde(default)]
    pub origin: String,
}

/// Append-only log of issuances, compacted to the live ones on open and on
/// demand, so a restarted control plane knows which certificates are live.
/// A certificate is handed out only once its entry is written: when writing
/// fails, issuance stops (and `/ready` says why) until a write succeeds.
pub struct IssuanceRecord {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// serial → (origin token id, notAfter), for live certificates.
    origins: Mutex<std::collections::HashMap<String, (String, i64)>>,
    /// Why the last write failed; None once one succeeds.
    failure: Mutex<Option<String>>,
    cap: crate::record::Cap,
}

impl IssuanceRecord {
    pub fn open(path: PathBuf, now: i64) -> Result<Self, StateError> {
        let rec = Self {
            file: Mutex::new(Self::open_append(&path)?),
            path,
            origins: Mutex::new(std::collections::HashMap::new()),
            failure: Mutex::new(None),
            cap: crate::record::Cap::new(usize::MAX),
        };
        rec.compact(now)?;
        Ok(rec)
    }

    /// Refuses entries past `cap` live ones (none by default).
    pub fn with_cap(mut self, cap: crate::record::Cap) -> Self {
        self.cap = cap;
        self
    }

    pub fn cap(&self) -> &crate::record::Cap {
        &self.cap
    }

    /// Entries known since the last compaction (some may have expired).
    pub fn known(&self) -> usize {
        self.origins.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Entries still valid at `now`.
    pub fn live_count(&self, now: i64) -> usize {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, not_after)| *not_after > now)
            .count()
    }

    fn open_append(path: &Path) -> Result<std::fs::File, StateError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))
    }

    /// The token a live certificate descends from, if recorded.
    pub fn origin_of(&self, serial: &str) -> Option<String> {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(serial)
            .map(|(o, _)| o)
            .filter(|o| !o.is_empty())
            .cloned()
    }

    /// Writes `i`; on failure nothing may be issued for it.
    pub fn append(&self, i: &Issuance) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(i).unwrap_or_default();
        line.push(b'\n');
        let written = {
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            let before = f.metadata().map(|m| m.len());
            let r = f.write_all(&line);
            if let (Err(_), Ok(len)) = (&r, before) {
                // No partial line for the next entry to be glued to.
                let _ = f.set_len(len);
            }
            r.map_err(io(&self.path))
        };
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) =
            written.as_ref().err().map(|e| e.to_string());
        written?;
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i.serial.clone(), (i.origin.clone(), i.not_after));
        Ok(())
    }

    /// Why the last write failed, while issuance is refused for it.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every record still valid at `now`; unreadable lines are skipped.
    pub fn live(&self, now: i64) -> Result<Vec<Issuance>, StateError> {
        let text = std::fs::read_to_string(&self.path).map_err(io(&self.path))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Issuance>(l).ok())
            .filter(|i| i.not_after > now)
            .collect())
    }

    /// Rewrites the log with only the live records.
    pub fn compact(&self, now: i64) -> Result<usize, StateError> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live(now)?;
        let mut bytes = Vec::new();
        for i in &live {
            bytes.extend(serde_json::to_vec(i).unwrap_or_default());
            bytes.push(b'\n');
        }
        write_atomic(&self.path, &bytes, PUBLIC_MODE, true).map_err(|source| {
            StateError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        *f = Self::open_append(&self.path)?;
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.origins.lock().unwrap_or_else(|e| e.into_inner()) = live
            .iter()
            .map(|i| (i.serial.clone(), (i.origin.clone(), i.not_after)))
            .collect();
        Ok(live.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialises_reopens_and_refuses_a_lost_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let a = StateDir::open_or_init(&dir).unwrap();
        assert!(a.initialised);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let kmode = std::fs::metadata(dir.join(TOKEN_KEY))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(kmode, 0o600);
        let b = StateDir::open_or_init(&dir).unwrap();
        assert!(!b.initialised);
        assert_eq!(a.token_key_id(), b.token_key_id());

        std::fs::remove_file(dir.join(TOKEN_KEY)).unwrap();
        let err = StateDir::open_or_init(&dir).unwrap_err();
        assert!(matches!(err, StateError::KeyLost { .. }), "{err}");

        let foreign = tmp.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "x").unwrap();
        assert!(matches!(
            StateDir::open_or_init(&foreign),
            Err(StateError::Foreign { .. })
        ));
    }

    #[test]
    fn issuance_record_keeps_live_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(ISSUANCES);
        let rec = IssuanceRecord::open(p.clone(), 100).unwrap();
        let mk = |serial: &str, not_after| Issuance {
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            serial: serial.into(),
            spki_sha256: "ab".into(),
            issuer_sha256: "cd".into(),
            issued_at: 100,
            not_after,
            proof: "renewal".into(),
            origin: "jti1".into(),
        };
        rec.append(&mk("01", 150)).unwrap();
        rec.append(&mk("02", 300)).unwrap();
        assert_eq!(rec.live(200).unwrap(), vec![mk("02", 300)]);
        assert_eq!(rec.compact(200).unwrap(), 1);
        rec.append(&mk("03", 400)).unwrap();
        drop(rec);
        let rec = IssuanceRecord::open(p, 200).unwrap();
        let serials: Vec<_> = rec
            .live(200)
            .unwrap()
            .into_iter()
            .map(|i| i.serial)
            .collect();
        assert_eq!(serials, vec!["02", "03"]);
        assert_eq!(rec.origin_of("02").as_deref(), Some("jti1"));
        assert_eq!(rec.origin_of("01"), None);
    }

    /// A failed write is refused and remembered until a write succeeds.
    #[test]
    fn a_failed_write_is_reported_until_one_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(ISSUANCES);
        let rec = IssuanceRecord::open(p.clone(), 100).unwrap();
        let entry = Issuance {
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            serial: "01".into(),
            spki_sha256: "ab".into(),
            issuer_sha256: "cd".into(),
            issued_at: 100,
            not_after: 500,
            proof: "renewal".into(),
            origin: "jti1".into(),
        };
        // A handle that cannot write, as a full or read-only disk.
        *rec.file.lock().unwrap() = std::fs::File::open(&p).unwrap();
        assert!(rec.append(&entry).is_err());
        assert!(rec.failure().is_some());
        assert_eq!(rec.origin_of("01"), None, "an unwritten entry is not known");
        rec.compact(200).unwrap();
        rec.append(&entry).unwrap();
        assert_eq!(rec.failure(), None);
        assert_eq!(rec.live(200).unwrap(), vec![entry]);
    }
}
