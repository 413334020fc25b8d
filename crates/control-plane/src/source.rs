//! The directory source: resource YAML files in one directory, watched for
//! speed and re-read periodically for certainty (a watcher that fails or dies
//! never stops the re-reads). Events are debounced so an editor's
//! truncate-then-write is one change, not a deletion and a creation.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use policy::resources::{
    DirRead, FileOutcome, Problem, Snapshot, is_resource_file, merge, read_document,
};

/// Files larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads `*.yaml`/`*.yml` files of `dir` (not recursively) into snapshots.
#[derive(Debug, Clone)]
pub struct DirSource {
    pub dir: PathBuf,
    /// How often the directory is re-read regardless of file events.
    pub interval: Duration,
    /// Quiet time after a file event before reading; also how long an emptied
    /// file is taken to be mid-write.
    pub debounce: Duration,
    pub control_plane_ns: String,
    pub trust_domain: String,
}

/// Each resource file and its text, or why it cannot be used.
type Listing = Vec<(PathBuf, Result<String, String>)>;

impl DirSource {
    /// Runs forever, publishing on `tx` whenever what is in force or the
    /// problems change.
    pub async fn run(self, tx: watch::Sender<Arc<Snapshot>>) {
        let mut current: Arc<Snapshot> = tx.borrow().clone();
        let mut reader = Some(Reader::new(&self));
        let mut watching: Option<DirWatch> = None;
        let mut watch_failed = false;
        // tokio's interval panics on zero.
        let mut tick = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = reader.as_ref().and_then(Reader::next_deadline);
            let wake = tokio::select! {
                _ = tick.tick() => Wake::Tick,
                ev = next_event(&mut watching) => match ev {
                    Some(()) => Wake::Event,
                    None => Wake::WatcherGone,
                },
                _ = sleep_until(deadline) => Wake::Tick,
            };
            match wake {
                Wake::Tick => {}
                Wake::Event => {
                    if let Some(w) = watching.as_mut() {
                        let cap = self.interval.max(self.debounce);
                        settle(&mut w.events, self.debounce, cap).await;
                    }
                }
                Wake::WatcherGone => {
                    tracing::warn!(dir = %self.dir.display(), "the resource directory watcher stopped; relying on the periodic re-read until it restarts");
                    watching = None;
                    continue;
                }
            }

            // Reading and parsing are blocking work: off the async threads.
            let dir = self.dir.clone();
            let prev = current.clone();
            let mut job_reader = reader.take().unwrap_or_else(|| Reader::new(&self));
            let job = tokio::task::spawn_blocking(move || {
                let read = read_dir(&dir).map(|(dir_id, files)| {
                    (dir_id, job_reader.outcomes(files, &prev, Instant::now()))
                });
                (job_reader, read)
            });
            let read = match job.await {
                Ok((r, read)) => {
                    reader = Some(r);
                    read
                }
                // Only a bug gets here; the next pass starts a fresh reader.
                Err(e) => Err(io::Error::other(format!("reading failed: {e}"))),
            };
            let read: DirRead = match read {
                Ok((dir_id, outcomes)) => {
                    if watching.as_ref().is_none_or(|w| w.dir_id != dir_id) {
                        watching = self.start_watch(dir_id, &mut watch_failed);
                    }
                    Ok(outcomes)
                }
                Err(e) => {
                    // A directory that went away must be watched anew.
                    watching = None;
                    Err(dir_problem(&self.dir, &e))
                }
            };
            let next = Arc::new(merge(&current, read));
            if next.generation != current.generation {
                log_changes(&self.dir.display(), &current, &next);
                tx.send_replace(next.clone());
            }
            current = next;
        }
    }

    fn start_watch(&self, dir_id: Option<DirId>, failed_before: &mut bool) -> Option<DirWatch> {
        match DirWatch::start(&self.dir, dir_id) {
            Ok(w) => {
                if *failed_before {
                    tracing::info!(dir = %self.dir.display(), "watching the resource directory again");
                }
                *failed_before = false;
                Some(w)
            }
            Err(e) => {
                if !*failed_before {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the resource directory; relying on the periodic re-read");
                }
                *failed_before = true;
                None
            }
        }
    }
}

enum Wake {
    Tick,
    Event,
    WatcherGone,
}

async fn next_event(watching: &mut Option<DirWatch>) -> Option<()> {
    match watching {
        Some(w) => w.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits until events stop for `quiet`, but never longer than `cap`, so a
/// storm of events cannot hold off reading.
async fn settle(events: &mut mpsc::Receiver<()>, quiet: Duration, cap: Duration) {
    let hard = Instant::now() + cap;
    loop {
        let now = Instant::now();
        if now >= hard {
            return;
        }
        match tokio::time::timeout(quiet.min(hard - now), events.recv()).await {
            Ok(Some(())) => continue,
            _ => return,
        }
    }
}

/// What identifies the directory itself, so a directory removed and made
/// again is watched anew.
type DirId = (u64, u64);

#[cfg(unix)]
fn dir_id(meta: &std::fs::Metadata) -> Option<DirId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn dir_id(_meta: &std::fs::Metadata) -> Option<DirId> {
    None
}

struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    /// Closed when the watcher's thread ends.
    events: mpsc::Receiver<()>,
    dir_id: Option<DirId>,
}

impl DirWatch {
    fn start(dir: &Path, dir_id: Option<DirId>) -> notify::Result<Self> {
        let (tx, events) = mpsc::channel(1);
        let own_dir = dir.to_path_buf();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // An error may mean lost events: read again to be sure.
                if res.as_ref().map_or(true, |ev| is_relevant(&own_dir, ev)) {
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(DirWatch {
            _watcher: watcher,
            events,
            dir_id,
        })
    }
}

/// Whether an event may change what the directory holds. Opens and reads
/// (our own among them) do not; without this filter every read would
/// trigger another.
pub(crate) fn is_relevant(dir: &Path, ev: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    ev.need_rescan()
        || ev.paths.is_empty()
        || ev.paths.iter().any(|p| {
            p == dir
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(is_resource_file)
        })
}

/// Lists and reads the resource files. An error listing the directory fails
/// the whole read: a partial listing would look like deletions.
fn read_dir(dir: &Path) -> io::Result<(Option<DirId>, Listing)> {
    let id = dir_id(&std::fs::metadata(dir)?);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !is_resource_file(name) {
            continue;
        }
        let path = entry.path();
        if let Some(text) = read_text(&path) {
            files.push((path, text));
        }
    }
    Ok((id, files))
}

/// None when the file is gone (deleted between listing and reading) or is
/// not a regular file (symlinks are followed).
fn read_text(path: &Path) -> Option<Result<String, String>> {
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if gone(&e) => return None,
        Err(e) => return Some(Err(format!("cannot read the file: {e}"))),
    };
    if !meta.is_file() {
        return None;
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if gone(&e) => return None,
        Err(e) => return Some(Err(format!("cannot read the file: {e}"))),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Some(Err(format!("cannot read the file: {e}")));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Some(Err(format!(
            "the file is larger than {} MiB; split it into several files",
            MAX_FILE_BYTES / (1024 * 1024)
        )));
    }
    Some(String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    }))
}

fn dir_problem(dir: &Path, e: &io::Error) -> Problem {
    let message = if e.kind() == io::ErrorKind::NotFound {
        "the resource directory does not exist; resources load once it is created".to_string()
    } else {
        format!("cannot read the resource directory: {e}; what was in force stays in force")
    };
    Problem::error(dir, message)
}

/// Turns file texts into outcomes: parses (reusing the last result for an
/// unchanged text) and holds back an emptied file while it may be mid-write.
pub(crate) struct Reader {
    debounce: Duration,
    control_plane_ns: String,
    trust_domain: String,
    cache: BTreeMap<PathBuf, (String, FileOutcome)>,
    empty_since: BTreeMap<PathBuf, Instant>,
}

impl Reader {
    pub(crate) fn new(src: &DirSource) -> Self {
        Reader {
            debounce: src.debounce,
            control_plane_ns: src.control_plane_ns.clone(),
            trust_domain: src.trust_domain.clone(),
            cache: BTreeMap::new(),
            empty_since: BTreeMap::new(),
        }
    }

    pub(crate) fn outcomes(
        &mut self,
        files: Listing,
        prev: &Snapshot,
        now: Instant,
    ) -> BTreeMap<PathBuf, FileOutcome> {
        let out: BTreeMap<PathBuf, FileOutcome> = files
            .into_iter()
            .map(|(path, text)| {
                let outcome = self.outcome(&path, text, prev, now);
                (path, outcome)
            })
            .collect();
        self.cache.retain(|p, _| out.contains_key(p));
        self.empty_since.retain(|p, _| out.contains_key(p));
        out
    }

    fn outcome(
        &mut self,
        path: &Path,
        text: Result<String, String>,
        prev: &Snapshot,
        now: Instant,
    ) -> FileOutcome {
        let text = match text {
            Ok(t) => t,
            Err(msg) => {
                self.cache.remove(path);
                return FileOutcome::Refused(vec![Problem::error(path, msg)]);
            }
        };
        if text.trim().is_empty() && prev.had_objects(path) {
            let since = *self.empty_since.entry(path.to_path_buf()).or_insert(now);
            if now.saturating_duration_since(since) < self.debounce {
                return FileOutcome::Settling;
            }
        }
        // Empty long enough to be meant, or not empty at all.
        self.empty_since.remove(path);
        if let Some((cached, outcome)) = self.cache.get(path)
            && *cached == text
        {
            return outcome.clone();
        }
        let origin = path.to_path_buf();
        let outcome = read_document(&origin, &text, &self.control_plane_ns, &self.trust_domain);
        self.cache
            .insert(path.to_path_buf(), (text, outcome.clone()));
        outcome
    }

    /// When the earliest emptied file stops counting as mid-write.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.empty_since.values().min().map(|t| *t + self.debounce)
    }
}

/// Logs what changed between two snapshots, and only that; `dir` names the
/// source (a directory, or the Kubernetes API).
pub(crate) fn log_changes(dir: &dyn std::fmt::Display, prev: &Snapshot, next: &Snapshot) {
    if next.loaded && !prev.loaded {
        tracing::info!(%dir, objects = next.objects.len(), files = next.file_count(), "resources loaded");
    } else if next.objects != prev.objects {
        let added = next
            .objects
            .keys()
            .filter(|k| !prev.objects.contains_key(k))
            .count();
        let removed = prev
            .objects
            .keys()
            .filter(|k| !next.objects.contains_key(k))
            .count();
        let changed = next
            .objects
            .iter()
            .filter(|(k, v)| prev.objects.get(k).is_some_and(|p| p != *v))
            .count();
        tracing::info!(%dir, objects = next.objects.len(), added, changed, removed, "resources changed");
    }
    for p in next.problems.iter().filter(|p| !prev.problems.contains(p)) {
        if p.is_error() && next.keeps_last_good(&p.file) {
            tracing::warn!("{p}; the file's last good version stays in force");
        } else {
            tracing::warn!("{p}");
        }
    }
    for p in prev.problems.iter().filter(|p| !next.problems.contains(p)) {
        tracing::info!("resolved: {p}");
    }
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
