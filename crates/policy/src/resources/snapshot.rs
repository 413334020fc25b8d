//! What is in force, and the pure rule that turns one directory read into
//! the next snapshot. Kept free of I/O and clocks so every rule is testable.
//!
//! The rules ("keep what is valid"):
//! - a file that fails to parse keeps its last good version in force;
//! - a deleted file takes its objects with it;
//! - an object defined more than once (across files or within one) is
//!   conflicted: no definition is in force, each is reported, and its absence
//!   is judged fail-closed; history and file order never matter;
//! - a directory that cannot be read changes nothing but the problems.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::problem::{Problem, Severity};
use super::types::{ExternalWorkload, Kind, Namespace, Object, ObjectKey};

/// Where a document came from: a file's path for the directory source; a
/// Kubernetes source names an object the same way (e.g.
/// `kube/<namespace>/<kind>/<name>`), so problems and "first by origin"
/// conflict rules read the same whichever source fed the snapshot.
pub type Origin = PathBuf;

/// A value and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub file: PathBuf,
    pub object: T,
}

/// What became of one file in one read of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Parsed: these objects (maybe none) are now the file's content.
    Parsed {
        objects: Vec<Object>,
        warnings: Vec<Problem>,
    },
    /// Unreadable or invalid: the file's last good version stays in force.
    Refused(Vec<Problem>),
    /// Emptied moments ago, most likely mid-write: keep it as it was, quietly.
    Settling,
}

/// One complete read of a source: every document set (file) in it, or why
/// it could not be listed. An origin absent from the map has been deleted.
pub type DirRead = Result<BTreeMap<Origin, FileOutcome>, Problem>;

/// The resources in force, as published to the indexes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// True once the directory has been read completely at least once;
    /// before that an empty snapshot means "not known yet", not "nothing".
    pub loaded: bool,
    pub objects: BTreeMap<ObjectKey, Sourced<Object>>,
    /// Objects defined more than once, with every file defining them (a
    /// file repeats when it defines the object twice): none is in force.
    pub conflicted: BTreeMap<ObjectKey, Vec<PathBuf>>,
    /// Errors and warnings, directory first, then by file.
    pub problems: Vec<Problem>,
    /// Bumped whenever `loaded`, `objects` or `problems` change.
    pub generation: u64,
    /// The text of each refused document, for a source that holds its
    /// documents in memory (Kubernetes); None: they are files, read them.
    pub held: Option<Arc<BTreeMap<Origin, String>>>,
    /// Per file: its last good content, kept even while it is shadowed or
    /// refused, so it can come into force later.
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FileState {
    /// The last content that parsed; None if it never has.
    good: Option<Vec<Object>>,
    problems: Vec<Problem>,
    /// The newest content was refused.
    refused: bool,
}

impl Snapshot {
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key).map(|s| &s.object)
    }

    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Sourced<Object>> {
        self.objects
            .range(ObjectKey::first_of(kind)..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, v)| v)
    }

    pub fn external_workloads(&self) -> impl Iterator<Item = &ExternalWorkload> {
        self.of_kind(Kind::ExternalWorkload)
            .filter_map(|s| match &s.object {
                Object::ExternalWorkload(w) => Some(w),
                _ => None,
            })
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        let key = ObjectKey {
            kind: Kind::Namespace,
            namespace: None,
            name: name.to_string(),
        };
        match self.get(&key)? {
            Object::Namespace(ns) => Some(ns),
            _ => None,
        }
    }

    /// A namespace's annotations (its per-namespace settings), if it is defined.
    pub fn namespace_annotations(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespace(name).map(|ns| &ns.meta.annotations)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.is_error())
    }

    /// Whether `file`'s last good content held any object (so an empty read
    /// of it may be a write in progress).
    pub fn had_objects(&self, file: &Path) -> bool {
        self.files
            .get(file)
            .and_then(|f| f.good.as_ref())
            .is_some_and(|g| !g.is_empty())
    }

    /// Whether `file`'s newest content was refused while an older good
    /// version stays in force (for saying so in logs).
    pub fn keeps_last_good(&self, file: &Path) -> bool {
        self.files
            .get(file)
            .is_some_and(|f| f.refused && f.good.is_some())
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// The next snapshot from the previous one and a fresh read of the directory.
pub fn merge(prev: &Snapshot, read: DirRead) -> Snapshot {
    let (files, dir_problem) = match read {
        Ok(outcomes) => (next_files(&prev.files, outcomes), None),
        Err(problem) => (prev.files.clone(), Some(problem)),
    };
    let loaded = prev.loaded || dir_problem.is_none();
    let (objects, conflicted, duplicates) = assign(&files);
    let mut problems: Vec<Problem> = dir_problem.into_iter().collect();
    problems.extend(files.values().flat_map(|f| f.problems.iter().cloned()));
    problems.extend(duplicates);
    let changed = loaded != prev.loaded
        || objects != prev.objects
        || problems != prev.problems
        || conflicted != prev.conflicted;
    Snapshot {
        loaded,
        objects,
        conflicted,
        problems,
        generation: prev.generation.wrapping_add(u64::from(changed)),
        held: None,
        files,
    }
}

/// The next snapshot from a read that is the whole truth (the Kubernetes
/// API): nothing is remembered, so a refused object keeps no last good
/// version and grants nothing, and the verdict depends only on what the
/// source holds now, never on history, replica or restart.
pub fn replace(
    prev: &Snapshot,
    read: BTreeMap<Origin, FileOutcome>,
    held: Arc<BTreeMap<Origin, String>>,
) -> Snapshot {
    let mut next = merge(&Snapshot::default(), Ok(read));
    next.held = Some(held);
    let changed = next.loaded != prev.loaded
        || next.objects != prev.objects
        || next.problems != prev.problems
        || next.conflicted != prev.conflicted;
    next.generation = prev.generation.wrapping_add(u64::from(changed));
    next
}

fn next_files(
    prev: &BTreeMap<PathBuf, FileState>,
    outcomes: BTreeMap<PathBuf, FileOutcome>,
) -> BTreeMap<PathBuf, FileState> {
    outcomes
        .into_iter()
        .map(|(path, outcome)| {
            let old = prev.get(&path);
            let state = match outcome {
                FileOutcome::Parsed { objects, warnings } => FileState {
                    good: Some(objects),
                    problems: warnings,
                    refused: false,
                },
                FileOutcome::Refused(problems) => FileState {
                    good: old.and_then(|o| o.good.clone()),
                    problems,
                    refused: true,
                },
                FileOutcome::Settling => old.cloned().unwrap_or_default(),
            };
            (path, state)
        })
        .collect()
}

type InForce = BTreeMap<ObjectKey, Sourced<Object>>;
type Conflicted = BTreeMap<ObjectKey, Vec<PathBuf>>;

/// Decides which objects are in force. An object defined more than once
/// (in two files, or twice in one) is conflicted: no definition is in force,
/// whatever the history or file order, so a restart never changes the
/// verdict and a conflict never grants more than either definition alone.
/// Its absence is judged like any refused object (fail-closed).
fn assign(files: &BTreeMap<PathBuf, FileState>) -> (InForce, Conflicted, Vec<Problem>) {
    let mut defs: BTreeMap<ObjectKey, Vec<Sourced<&Object>>> = BTreeMap::new();
    for (path, state) in files {
        for object in state.good.iter().flatten() {
            defs.entry(object.key()).or_default().push(Sourced {
                file: path.clone(),
                object,
            });
        }
    }
    let mut objects = BTreeMap::new();
    let mut conflicted = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, mut list) in defs {
        if list.len() == 1 {
            let one = list.remove(0);
            let sourced = Sourced {
                file: one.file,
                object: one.object.clone(),
            };
            objects.insert(key, sourced);
            continue;
        }
        let files: Vec<PathBuf> = list.into_iter().map(|d| d.file).collect();
        let all = files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut seen = std::collections::BTreeSet::new();
        for file in files.iter().filter(|f| seen.insert(f.as_path())) {
            problems.push(Problem {
                severity: Severity::Error,
                file: file.clone(),
                document: None,
                resource: Some(key.to_string()),
                field: None,
                message: format!(
                    "defined {} times (in {all}); every definition is refused and the object is judged absent (fail-closed) until exactly one remains: delete or rename the others",
                    files.len()
                ),
            });
        }
        conflicted.insert(key, files);
    }
    (objects, conflicted, problems)
}
