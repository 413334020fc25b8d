use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use policy::resources::*;

use super::{DirSource, Reader, is_relevant};

const ID: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

fn workload_yaml(ip: &str) -> String {
    policy::testutil::external_workload("demo", "web", ID, ip, "", &[])
}

fn source(dir: &Path) -> DirSource {
    DirSource {
        dir: dir.to_path_buf(),
        interval: Duration::from_millis(100),
        debounce: Duration::from_millis(200),
        control_plane_ns: "weft".into(),
        trust_domain: "cluster.local".into(),
    }
}

fn web() -> ObjectKey {
    ObjectKey {
        kind: Kind::ExternalWorkload,
        namespace: Some("demo".into()),
        name: "web".into(),
    }
}

#[test]
fn resource_file_names() {
    for ok in ["a.yaml", "b.yml", "C.YAML", "x.y.yaml"] {
        assert!(is_resource_file(ok), "{ok}");
    }
    for no in [
        ".a.yaml",
        ".a.yaml.swp",
        "a.yaml~",
        "a.yaml.bak",
        "#a.yaml#",
        ".#a.yaml",
        "4913",
        ".yaml",
        "a.json",
    ] {
        assert!(!is_resource_file(no), "{no}");
    }
}

#[test]
fn our_own_reads_do_not_count_as_changes() {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    let dir = Path::new("/r");
    let ev = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
    assert!(!is_relevant(
        dir,
        &ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/r/a.yaml"
        )
    ));
    assert!(!is_relevant(
        dir,
        &ev(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/r/a.yaml"
        )
    ));
    assert!(is_relevant(
        dir,
        &ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/r/a.yaml"
        )
    ));
    assert!(is_relevant(
        dir,
        &ev(EventKind::Modify(ModifyKind::Any), "/r/a.yaml")
    ));
    assert!(!is_relevant(
        dir,
        &ev(EventKind::Create(CreateKind::File), "/r/.a.yaml.swp")
    ));
    assert!(is_relevant(
        dir,
        &ev(EventKind::Remove(notify::event::RemoveKind::Folder), "/r")
    ));
}

#[test]
fn an_emptied_file_is_held_only_for_the_debounce() {
    let dir = Path::new("d");
    let file = PathBuf::from("d/a.yaml");
    let src = source(dir);
    let mut reader = Reader::new(&src);
    let t0 = Instant::now();
    let listing = |text: &str| vec![(file.clone(), Ok(text.to_string()))];

    let s1 = merge(
        &Snapshot::default(),
        Ok(reader.outcomes(
            listing(&workload_yaml("10.0.0.1")),
            &Snapshot::default(),
            t0,
        )),
    );
    assert_eq!(s1.objects.len(), 1);

    // Emptied: held while it may be mid-write.
    let out = reader.outcomes(listing("  \n"), &s1, t0);
    assert_eq!(out.get(&file), Some(&FileOutcome::Settling));
    assert_eq!(reader.next_deadline(), Some(t0 + src.debounce));
    let out = reader.outcomes(listing(""), &s1, t0 + src.debounce / 2);
    assert_eq!(out.get(&file), Some(&FileOutcome::Settling));

    // Written again in time: the new content, no deletion in between.
    let out = reader.outcomes(
        listing(&workload_yaml("10.0.0.2")),
        &s1,
        t0 + src.debounce / 2,
    );
    assert!(
        matches!(out.get(&file), Some(FileOutcome::Parsed { objects, .. }) if objects.len() == 1)
    );
    assert_eq!(reader.next_deadline(), None);

    // Emptied and left so past the debounce: genuinely empty.
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(
        reader.outcomes(listing(""), &s1, t1).get(&file),
        Some(&FileOutcome::Settling)
    );
    let out = reader.outcomes(listing(""), &s1, t1 + src.debounce);
    assert!(
        matches!(out.get(&file), Some(FileOutcome::Parsed { objects, .. }) if objects.is_empty())
    );
    assert_eq!(reader.next_deadline(), None);

    // A file that never had content is just empty.
    let mut fresh = Reader::new(&src);
    let out = fresh.outcomes(listing(""), &Snapshot::default(), t0);
    assert!(
        matches!(out.get(&file), Some(FileOutcome::Parsed { objects, .. }) if objects.is_empty())
    );
}

#[test]
fn unreadable_files_are_refused_not_deleted() {
    let src = source(Path::new("d"));
    let mut reader = Reader::new(&src);
    let file = PathBuf::from("d/a.yaml");
    let out = reader.outcomes(
        vec![(file.clone(), Err("the file is not UTF-8 text".into()))],
        &Snapshot::default(),
        Instant::now(),
    );
    assert!(matches!(out.get(&file), Some(FileOutcome::Refused(p)) if p.len() == 1));
}

/// Waits (polling) until the published snapshot satisfies `ok`.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = rx.borrow_and_update().clone();
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

#[tokio::test]
async fn dir_source_loads_keeps_last_good_and_removes_deleted() {
    let tmp = tempfile::TempDir::new().unwrap();
    let dir = tmp.path().join("resources");
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(source(&dir).run(tx));

    // Missing directory: not loaded, and says why.
    let s = wait_for(&mut rx, "missing-directory problem", |s| {
        !s.problems.is_empty()
    })
    .await;
    assert!(!s.loaded);
    assert!(
        s.problems[0].message.contains("does not exist"),
        "{}",
        s.problems[0]
    );

    // Created with a file: loads.
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("web.yaml");
    std::fs::write(&file, workload_yaml("10.0.0.1")).unwrap();
    std::fs::write(dir.join(".web.yaml.swp"), "not yaml: [").unwrap();
    let s = wait_for(&mut rx, "the workload", |s| {
        s.loaded && s.get(&web()).is_some()
    })
    .await;
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.objects[&web()].file, file);

    // A bad version: the old object stays, the problem is reported.
    std::fs::write(
        &file,
        workload_yaml("10.0.0.1").replace("serverName", "servrName"),
    )
    .unwrap();
    let s = wait_for(&mut rx, "the problem", |s| s.errors().count() > 0).await;
    assert!(s.get(&web()).is_some());
    let p = s.errors().next().unwrap();
    assert_eq!(p.file, file);
    assert!(p.message.contains("servrName"), "{p}");
    assert_eq!(p.resource.as_deref(), Some("ExternalWorkload demo/web"));

    // Fixed with a change: in force, problem gone.
    std::fs::write(&file, workload_yaml("10.0.0.2")).unwrap();
    let s = wait_for(&mut rx, "the fix", |s| s.problems.is_empty()).await;
    match s.get(&web()) {
        Some(Object::ExternalWorkload(w)) => {
            assert_eq!(w.spec.workload_ips[0].ip.to_string(), "10.0.0.2")
        }
        other => panic!("expected the workload, got {other:?}"),
    }

    // Deleted: gone.
    std::fs::remove_file(&file).unwrap();
    let s = wait_for(&mut rx, "the deletion", |s| s.objects.is_empty()).await;
    assert!(s.loaded);
    assert!(s.problems.is_empty());

    task.abort();
}
