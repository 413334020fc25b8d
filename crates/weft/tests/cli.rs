//! Command-line rules every command follows: a closed pipe ends a command
//! quietly, `weft token` never invents a state directory, exit codes.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "cli/host_names.rs"]
mod host_names;

use std::process::{Command, Stdio};

use common::Scratch;

/// Runs weft with stdout a pipe whose reader is already gone, as in
/// `weft … | head` once head has exited: (exit code, stderr).
fn with_closed_stdout(s: &Scratch, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(s.path(""))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_commands_quietly() {
    let s = Scratch::new();
    s.guide_material();
    for args in [
        &["certs", "inspect", "ca.crt", "-o", "json"][..],
        &["certs", "inspect", "issuer.crt"],
        &["certs", "bundle", "list", "ca.crt"],
        &[
            "check",
            "--identity-trust-anchors-file",
            "ca.crt",
            "--identity-issuer-certificate-file",
            "issuer.crt",
            "--identity-issuer-key-file",
            "issuer.key",
        ],
    ] {
        let (code, stderr) = with_closed_stdout(&s, args);
        assert!(
            code == 0 || code == 141,
            "weft {args:?}: exit {code}, stderr:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "weft {args:?}: {stderr}");
    }
}

#[test]
fn token_commands_never_create_a_state_directory() {
    let s = Scratch::new();
    let create = s
        .weft(&[
            "token",
            "create",
            "-n",
            "demo",
            "--service-account",
            "web",
            "--state-dir",
            "nowhere",
        ])
        .refused(2);
    assert!(
        create.stderr.contains("nowhere does not exist") && create.stderr.contains("--state-dir"),
        "{}",
        create.stderr
    );
    assert!(
        create.stdout.is_empty(),
        "no token printed: {}",
        create.stdout
    );
    let revoke = s
        .weft(&[
            "token",
            "revoke",
            "0123456789abcdef0123456789abcdef",
            "--state-dir",
            "nowhere",
        ])
        .refused(2);
    assert!(
        revoke.stderr.contains("nowhere does not exist"),
        "{}",
        revoke.stderr
    );
    assert!(!s.path("nowhere").exists(), "no directory may be created");
    assert!(!s.path("weft-state").exists());

    // An existing (empty) directory is a deliberate new state directory.
    std::fs::create_dir(s.path("fresh")).unwrap();
    s.weft(&[
        "token",
        "create",
        "-n",
        "demo",
        "--service-account",
        "web",
        "--state-dir",
        "fresh",
        "--out",
        "web.token",
    ])
    .ok();
    assert!(s.path("fresh/token-signing.key").exists());
    assert!(s.path("web.token").exists());
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    s.weft(&["certs", "inspect"]).refused(2);
    s.weft(&["token", "create", "--bogus"]).refused(2);
    s.weft(&["certs", "inspect", "missing.crt"]).refused(2);
}

/// The issuer files are required without --kubernetes (which reads the
/// issuer Secret and trust-roots ConfigMap instead) and refused with it.
#[test]
fn control_plane_issuer_files_follow_the_mode() {
    let s = Scratch::new();
    let missing = s
        .weft(&[
            "control-plane",
            "--identity-trust-anchors-file",
            "ca.crt",
            "--state-dir",
            "state",
        ])
        .refused(2);
    assert!(
        missing
            .stderr
            .contains("missing --identity-issuer-certificate-file, --identity-issuer-key-file")
            && missing.stderr.contains("--kubernetes"),
        "{}",
        missing.stderr
    );
    let both = s
        .weft(&[
            "control-plane",
            "--kubernetes",
            "--cluster-networks",
            "10.0.0.0/8",
            "--identity-issuer-key-file",
            "issuer.key",
        ])
        .refused(2);
    assert!(
        both.stderr.contains("--identity-issuer-key-file") && both.stderr.contains("--kubernetes"),
        "{}",
        both.stderr
    );
    assert!(
        !s.path("state").exists(),
        "refused before any state is made"
    );
}
