//! `weft demo`: the story it prints, and `--stay`, whose every printed
//! command is run as printed against the running demo mesh.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Scratch;

#[test]
fn demo_runs_and_shows_the_evidence() {
    let s = Scratch::new();
    // As a non-root user when we are root (CI): ports mode needs no privilege.
    let exe = env!("CARGO_BIN_EXE_weft");
    let out = if rustix_is_root() && std::path::Path::new("/usr/bin/setpriv").exists() {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                exe,
                "demo",
            ])
            .env("TMPDIR", "/tmp")
            .output()
            .unwrap()
    } else {
        std::process::Command::new(exe)
            .arg("demo")
            .current_dir(s.dir.path())
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed\n{stdout}\n{stderr}");
    for want in [
        "NOT FOR PRODUCTION",
        "frontend.demo.serviceaccount.identity.weft.cluster.local  certificate",
        "backend.demo.serviceaccount.identity.weft.cluster.local  certificate",
        "frontend GET /hello  HTTP/1.1 200 OK",
        "hello frontend.demo.serviceaccount.identity.weft.cluster.local",
        "intruder GET /hello  HTTP/1.1 403 Forbidden  l5d-proxy-error: unauthorized request",
        "intruder.demo.serviceaccount.identity.weft.cluster.local is not among its identities",
        "tls=true client_id=frontend.demo.serviceaccount.identity.weft.cluster.local protocol=h2",
        "inbound_http_authz_allow_total{srv_kind=\"server\",srv_name=\"backend-server\",authz_kind=\"authorizationpolicy\",authz_name=\"backend-allow-frontend\"",
        "inbound_http_authz_deny_total{srv_kind=\"server\",srv_name=\"backend-server\"",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
}

fn rustix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The demo's stdout, a line at a time, as it prints them.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Stops the demo on drop, whatever the test's outcome.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_stay_prints_commands_that_work_as_printed() {
    let s = Scratch::new();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_weft"));
    let tmp = s.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let child = Command::new(exe)
        .args(["demo", "--stay"])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let rx = lines_of(&mut demo.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut commands = Vec::new();
    // The commands follow the invitation, up to the line saying how to stop.
    while !seen
        .last()
        .is_some_and(|l: &String| l.contains("Ctrl-C stops"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "the demo printed no 4 commands within 60s:\n{}",
                seen.join("\n")
            )
        });
        if let Some(cmd) = line.strip_prefix("  $ ") {
            commands.push(cmd.to_string());
        }
        seen.push(line);
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("keeps running until Ctrl-C")),
        "{}",
        seen.join("\n")
    );
    // As a user would: `weft` on PATH, each line given to a shell unchanged.
    let path = format!(
        "{}:{}",
        exe.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for cmd in &commands {
        assert!(cmd.starts_with("weft "), "{cmd}");
        let t = Instant::now();
        let out = Command::new("sh")
            .args(["-c", cmd])
            .env("PATH", &path)
            .current_dir(s.path(""))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("$ {cmd}  ({:.1?})\n{stdout}", t.elapsed());
        assert!(
            out.status.success(),
            "{cmd} failed ({:?})\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        if cmd.starts_with("weft check ") {
            assert!(
                stdout.contains("Status check results are √\n"),
                "{cmd}: not all green\n{stdout}"
            );
        }
        if cmd.starts_with("weft identity backend ") {
            assert!(
                stdout.contains("backend.demo.serviceaccount.identity.weft.cluster.local"),
                "{stdout}"
            );
        }
        if cmd.starts_with("weft diagnostics policy ") {
            assert!(
                stdout.contains("holds the same policy") && stdout.contains("ALLOWED: GET /hello"),
                "{stdout}"
            );
        }
        if cmd.starts_with("weft rotate issuer ") {
            assert!(
                stdout.contains("every connected proxy serves a leaf from the new issuer (3 of 3"),
                "{stdout}"
            );
        }
    }
    // The web view it names answers with the page.
    let url = seen
        .iter()
        .find_map(|l| l.split("open http://").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no web view URL in\n{}", seen.join("\n")));
    let (host, path) = url.split_once('/').unwrap();
    let (code, page) = common::proc::http_get(host.parse().unwrap(), &format!("/{path}")).unwrap();
    assert!(
        code == 200 && page.contains("<title>weft"),
        "{code}: {page}"
    );
    // Ctrl-C stops the demo cleanly and it removes its directory.
    let pid = rustix::process::Pid::from_child(&demo.0);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = demo.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the demo ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("stopped {:.1?} after Ctrl-C", t.elapsed());
    assert!(status.success(), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}
