//! The issuance record cannot be written (its state directory is a full
//! tmpfs): Certify is refused with UNAVAILABLE naming why, nothing is
//! handed out that weft cannot account for, `/ready` says why; once there is
//! room again, issuing resumes and every certificate issued is recorded.
//!
//! Needs root (a tmpfs mount); skips without it unless WEFT_REQUIRE_ROOT=1.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::Scratch;
use common::certify::{FakeProxy, id};
use common::proc::{http_get, poll};

const DEADLINE: Duration = Duration::from_secs(30);

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=256k,mode=0700",
                "weft-record-test",
            ])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Self(dir)
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = [0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn token(s: &Scratch, sa: &str) -> String {
    s.weft(&[
        "token",
        "create",
        "--namespace",
        "demo",
        "--service-account",
        sa,
        "--ttl",
        "1h",
        "--state-dir",
        "state",
    ])
    .ok()
    .stdout
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_record_refuses_issuance_and_says_why() {
    if !testbed::have_root("an_unwritable_record_refuses_issuance_and_says_why") {
        return;
    }
    let s = Scratch::new();
    s.guide_material();
    let disk = Tmpfs::mount(s.path("state"));
    // Certifies in a loop until the disk is full: no rate limit in the way.
    let cp = s.control_plane(&["--certify-rate-per-client", "1000/s:1000"]);
    let identity = cp.addr("identity listening on");
    let admin = cp.addr("admin listening on");
    let anchors = s.read("ca.crt");
    poll("control plane /ready", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    let tok = token(&s, "web");
    let web = FakeProxy::new(&id("web", "demo"));
    web.certify(identity, &anchors, &tok, None)
        .await
        .expect("certify while the record can be written");

    let filler = disk.fill();
    // The record file's last page may still take a few entries.
    let mut issued = 1;
    let refused = loop {
        match web.certify(identity, &anchors, &tok, None).await {
            Ok(_) => issued += 1,
            Err(e) => break e,
        }
        assert!(issued < 30, "still issuing on a full disk");
    };
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("cannot record the certificate"),
        "{}",
        refused.message()
    );
    println!(
        "record full after {issued} issued: Certify refused: {}",
        refused.message()
    );
    let (code, body) = http_get(admin, "/ready").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("issuance record"), "{body}");
    println!("/ready: {}", body.trim());

    std::fs::remove_file(filler).unwrap();
    let t0 = std::time::Instant::now();
    // Renewal by the periodic rewrite or the next request, whichever is first.
    poll("/ready once the record can be written", DEADLINE, || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
    println!("/ready again {:.1?} after room was made", t0.elapsed());
    let leaf = web
        .certify(identity, &anchors, &tok, None)
        .await
        .expect("certify once the record can be written");
    let serial =
        pki::info::CertInfo::from_der(&pki::CertificateDer::from(leaf.leaf_certificate.clone()))
            .unwrap()
            .serial;
    let record = std::fs::read_to_string(s.path("state/issuances.jsonl")).unwrap();
    assert_eq!(
        record.lines().count(),
        issued + 1,
        "{} certificates issued, all and only those recorded: {record}",
        issued + 1
    );
    assert!(record.contains(&serial), "{record}");
    drop(cp);
}
