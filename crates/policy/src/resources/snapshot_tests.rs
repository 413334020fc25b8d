use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn ew(ns: &str, name: &str, ip: &str) -> Object {
    let id = format!("{name}.{ns}.serviceaccount.identity.weft.cluster.local");
    Object::ExternalWorkload(ExternalWorkload {
        meta: Meta {
            name: name.into(),
            namespace: Some(ns.into()),
            ..Meta::default()
        },
        spec: ExternalWorkloadSpec {
            mesh_tls: MeshTls {
                identity: id.clone(),
                server_name: id,
            },
            workload_ips: vec![WorkloadIp {
                ip: ip.parse().unwrap(),
            }],
            ports: vec![],
        },
    })
}

fn ns(name: &str, policy: &str) -> Object {
    let mut meta = Meta {
        name: name.into(),
        ..Meta::default()
    };
    meta.annotations.insert(
        "config.linkerd.io/default-inbound-policy".into(),
        policy.into(),
    );
    Object::Namespace(Namespace { meta })
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::ExternalWorkload,
        namespace: Some(ns.into()),
        name: name.into(),
    }
}

fn parsed(objects: Vec<Object>) -> FileOutcome {
    FileOutcome::Parsed {
        objects,
        warnings: vec![],
    }
}

fn refused(file: &str) -> FileOutcome {
    FileOutcome::Refused(vec![Problem::error(Path::new(file), "not valid YAML")])
}

fn read(files: Vec<(&str, FileOutcome)>) -> DirRead {
    Ok(files
        .into_iter()
        .map(|(p, o)| (PathBuf::from(p), o))
        .collect::<BTreeMap<_, _>>())
}

fn ip_of(s: &Snapshot, k: &ObjectKey) -> Option<String> {
    match s.get(k)? {
        Object::ExternalWorkload(w) => Some(w.spec.workload_ips[0].ip.to_string()),
        _ => None,
    }
}

fn file_of(s: &Snapshot, k: &ObjectKey) -> Option<PathBuf> {
    s.objects.get(k).map(|o| o.file.clone())
}

#[test]
fn first_read_loads_and_bumps_generation() {
    let s0 = Snapshot::default();
    assert!(!s0.loaded);
    let s1 = merge(
        &s0,
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.1")]),
        )]),
    );
    assert!(s1.loaded);
    assert_eq!(s1.generation, 1);
    assert_eq!(file_of(&s1, &key("demo", "web")), Some("d/a.yaml".into()));
    assert!(s1.problems.is_empty());

    // The same again changes nothing and publishes nothing.
    let s2 = merge(
        &s1,
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.1")]),
        )]),
    );
    assert_eq!(s2.generation, 1);

    // An empty directory is a complete read too.
    let e = merge(&Snapshot::default(), read(vec![]));
    assert!(e.loaded);
    assert_eq!(e.generation, 1);
}

#[test]
fn parse_error_keeps_the_last_good_version() {
    let s1 = merge(
        &Snapshot::default(),
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.1")]),
        )]),
    );
    let s2 = merge(&s1, read(vec![("d/a.yaml", refused("d/a.yaml"))]));
    assert_eq!(ip_of(&s2, &key("demo", "web")).as_deref(), Some("10.0.0.1"));
    assert_eq!(s2.problems.len(), 1);
    assert_eq!(s2.generation, 2);
    assert!(s2.keeps_last_good(Path::new("d/a.yaml")));

    // Still bad: nothing new to publish.
    let s3 = merge(&s2, read(vec![("d/a.yaml", refused("d/a.yaml"))]));
    assert_eq!(s3.generation, 2);

    // Fixed, with a change: the new version is in force and the problem clears.
    let s4 = merge(
        &s3,
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.2")]),
        )]),
    );
    assert_eq!(ip_of(&s4, &key("demo", "web")).as_deref(), Some("10.0.0.2"));
    assert!(s4.problems.is_empty());
    assert_eq!(s4.generation, 3);
}

#[test]
fn a_file_refused_from_the_start_puts_nothing_in_force() {
    let s = merge(
        &Snapshot::default(),
        read(vec![("d/a.yaml", refused("d/a.yaml"))]),
    );
    assert!(s.loaded);
    assert!(s.objects.is_empty());
    assert_eq!(s.errors().count(), 1);
    assert!(!s.keeps_last_good(Path::new("d/a.yaml")));
}

#[test]
fn deleting_a_file_removes_its_objects() {
    let s1 = merge(
        &Snapshot::default(),
        read(vec![
            ("d/a.yaml", parsed(vec![ew("demo", "web", "10.0.0.1")])),
            ("d/b.yaml", parsed(vec![ew("demo", "db", "10.0.0.3")])),
        ]),
    );
    assert_eq!(s1.objects.len(), 2);
    let s2 = merge(
        &s1,
        read(vec![(
            "d/b.yaml",
            parsed(vec![ew("demo", "db", "10.0.0.3")]),
        )]),
    );
    assert_eq!(s2.objects.len(), 1);
    assert!(s2.get(&key("demo", "web")).is_none());
    assert_eq!(s2.generation, 2);

    // Deleting a refused file drops its last good version too.
    let s3 = merge(&s2, read(vec![("d/b.yaml", refused("d/b.yaml"))]));
    assert_eq!(s3.objects.len(), 1);
    let s4 = merge(&s3, read(vec![]));
    assert!(s4.objects.is_empty());
    assert!(s4.problems.is_empty());
}

#[test]
fn duplicate_across_files_is_refused_in_all_of_them() {
    let s = merge(
        &Snapshot::default(),
        read(vec![
            ("d/b.yaml", parsed(vec![ew("demo", "web", "10.0.0.2")])),
            (
                "d/a.yaml",
                parsed(vec![
                    ew("demo", "web", "10.0.0.1"),
                    ew("demo", "db", "10.0.0.3"),
                ]),
            ),
        ]),
    );
    assert!(s.get(&key("demo", "web")).is_none());
    // What is not conflicted in the same file stays in force.
    assert_eq!(ip_of(&s, &key("demo", "db")).as_deref(), Some("10.0.0.3"));
    assert_eq!(
        s.conflicted.get(&key("demo", "web")),
        Some(&vec![PathBuf::from("d/a.yaml"), PathBuf::from("d/b.yaml")])
    );
    assert_eq!(s.problems.len(), 2);
    for (p, file) in s.problems.iter().zip(["d/a.yaml", "d/b.yaml"]) {
        assert!(p.is_error());
        assert_eq!(p.file, PathBuf::from(file));
        assert_eq!(p.resource.as_deref(), Some("ExternalWorkload demo/web"));
        assert!(
            p.message.contains("d/a.yaml") && p.message.contains("d/b.yaml"),
            "{p}"
        );
    }
}

#[test]
fn duplicate_in_one_file_is_refused_and_the_rest_of_the_file_kept() {
    let s = merge(
        &Snapshot::default(),
        read(vec![(
            "d/a.yaml",
            parsed(vec![
                ew("demo", "web", "10.0.0.1"),
                ew("demo", "db", "10.0.0.3"),
                ew("demo", "web", "10.0.0.2"),
            ]),
        )]),
    );
    assert!(s.get(&key("demo", "web")).is_none());
    assert!(s.get(&key("demo", "db")).is_some());
    assert_eq!(s.problems.len(), 1);
    assert!(
        s.problems[0].message.contains("defined 2 times"),
        "{}",
        s.problems[0]
    );
}

/// The verdict never depends on history: whatever arrived first, a running
/// snapshot equals a cold start (a restart) on the same files.
#[test]
fn duplicate_the_same_running_as_after_a_restart() {
    let a = ("d/a.yaml", parsed(vec![ew("demo", "web", "10.0.0.1")]));
    let b = ("d/b.yaml", parsed(vec![ew("demo", "web", "10.0.0.2")]));
    for first in [a.clone(), b.clone()] {
        let s1 = merge(&Snapshot::default(), read(vec![first]));
        assert!(s1.get(&key("demo", "web")).is_some());
        let running = merge(&s1, read(vec![a.clone(), b.clone()]));
        let restarted = merge(&Snapshot::default(), read(vec![a.clone(), b.clone()]));
        assert!(running.get(&key("demo", "web")).is_none());
        assert_eq!(running.objects, restarted.objects);
        assert_eq!(running.conflicted, restarted.conflicted);
        assert_eq!(running.problems, restarted.problems);
    }

    // One copy refused: its last good version still conflicts.
    let s1 = merge(&Snapshot::default(), read(vec![a.clone(), b.clone()]));
    let s2 = merge(
        &s1,
        read(vec![a.clone(), ("d/b.yaml", refused("d/b.yaml"))]),
    );
    assert!(s2.get(&key("demo", "web")).is_none());

    // One copy deleted: the other comes into force, no problem left.
    let s3 = merge(&s2, read(vec![a.clone()]));
    assert_eq!(ip_of(&s3, &key("demo", "web")).as_deref(), Some("10.0.0.1"));
    assert!(s3.problems.is_empty());
    assert!(s3.conflicted.is_empty());
}

#[test]
fn settling_file_keeps_its_objects_quietly() {
    let s1 = merge(
        &Snapshot::default(),
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.1")]),
        )]),
    );
    let s2 = merge(&s1, read(vec![("d/a.yaml", FileOutcome::Settling)]));
    assert_eq!(s2.objects, s1.objects);
    assert_eq!(s2.generation, s1.generation);
    // Then genuinely empty.
    let s3 = merge(&s2, read(vec![("d/a.yaml", parsed(vec![]))]));
    assert!(s3.objects.is_empty());
}

#[test]
fn missing_directory_then_created() {
    let missing = || {
        Err(Problem::error(
            Path::new("d"),
            "the resource directory does not exist",
        ))
    };
    let s1 = merge(&Snapshot::default(), missing());
    assert!(!s1.loaded);
    assert_eq!(s1.problems.len(), 1);
    assert_eq!(s1.generation, 1);
    let s2 = merge(&s1, missing());
    assert_eq!(s2.generation, 1);
    let s3 = merge(
        &s2,
        read(vec![(
            "d/a.yaml",
            parsed(vec![ew("demo", "web", "10.0.0.1")]),
        )]),
    );
    assert!(s3.loaded);
    assert!(s3.problems.is_empty());
    assert_eq!(s3.objects.len(), 1);

    // Unreadable after loading: what is in force stays.
    let s4 = merge(&s3, missing());
    assert!(s4.loaded);
    assert_eq!(s4.objects, s3.objects);
    assert_eq!(s4.problems.len(), 1);
}

#[test]
fn warnings_are_reported_and_objects_still_load() {
    let warning = Problem {
        severity: Severity::Warning,
        ..Problem::error(Path::new("d/a.yaml"), "foreign suffix")
    };
    let s = merge(
        &Snapshot::default(),
        read(vec![(
            "d/a.yaml",
            FileOutcome::Parsed {
                objects: vec![ew("demo", "web", "10.0.0.1")],
                warnings: vec![warning.clone()],
            },
        )]),
    );
    assert_eq!(s.objects.len(), 1);
    assert_eq!(s.problems, vec![warning]);
    assert_eq!(s.errors().count(), 0);
}

#[test]
fn queries() {
    let s = merge(
        &Snapshot::default(),
        read(vec![(
            "d/a.yaml",
            parsed(vec![
                ew("demo", "web", "10.0.0.1"),
                ns("demo", "deny"),
                ew("aaa", "db", "10.0.0.2"),
                ns("other", "all-authenticated"),
            ]),
        )]),
    );
    let names: Vec<&str> = s
        .external_workloads()
        .map(|w| w.meta.name.as_str())
        .collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(
        s.namespace_annotations("demo")
            .and_then(|a| a.get("config.linkerd.io/default-inbound-policy"))
            .map(String::as_str),
        Some("deny")
    );
    assert!(s.namespace_annotations("nope").is_none());
    assert_eq!(s.of_kind(Kind::Namespace).count(), 2);
}
