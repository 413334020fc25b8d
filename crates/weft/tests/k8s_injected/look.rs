//! The guide's steps 8–10 on the cluster, as a user runs them: `weft tap
//! deploy/backend -n NS` (no --admin-addr: a port-forward to the control
//! plane through the API server) shows the frontend's requests with
//! `tls=true` and both identities and the intruder's refused with 403;
//! `weft identity deploy/backend -n NS` prints the serial the fleet view
//! names (a port-forward to the proxy's admin port); `--chain` gives a
//! chain openssl verifies against the guide's anchor.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use control_plane::tap::TapLine;
use testbed::k8s::K8sEnv;

use crate::common::injector::{forward_admin, forward_pod};
use crate::common::kube::kubectl;
use crate::common::stand_ins::Mesh;

const DEADLINE: Duration = Duration::from_secs(30);

/// `weft ARGS` against the cluster, as the README prints it.
fn weft(env: &K8sEnv, cp_ns: &str, args: &[&str]) -> Command {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .args(["--controller-namespace", cp_ns, "--kubeconfig"])
        .arg(env.kubeconfig());
    cmd
}

/// kwok forwards the control plane's admin port and each backend pod's
/// proxy admin port, as a kubelet's port-forward reaches a pod.
fn forwards(env: &K8sEnv, mesh: &Mesh, ns: &str, cp_ns: &str) -> Result<()> {
    forward_admin(env, cp_ns, mesh.cp_addr("admin listening on"))?;
    let pods = kubectl(
        env,
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "app=backend",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
        ],
    )?;
    for line in pods.lines().filter(|l| !l.trim().is_empty()) {
        let (pod, ip) = line.split_once(' ').context("pod name and IP")?;
        let target = SocketAddr::new(ip.trim().parse()?, inject::sidecar::ADMIN_PORT);
        forward_pod(env, ns, pod, inject::sidecar::ADMIN_PORT, target)?;
    }
    Ok(())
}

/// Taps the backend while frontend and intruder send requests, until the
/// tap shows both: the frontend's request (mTLS, both identities, 200) and
/// the intruder's 403.
fn tap(
    env: &K8sEnv,
    mesh: &Mesh,
    (ns, cp_ns): (&str, &str),
    svc: SocketAddr,
    frontend: &str,
) -> Result<()> {
    let mut child = weft(
        env,
        cp_ns,
        &[
            "tap",
            "deploy/backend",
            "-n",
            ns,
            "-o",
            "json",
            "--seconds",
            "60",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("tap stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let t0 = Instant::now();
    let (mut seen_ok, mut seen_denied, mut lines) = (None, None, Vec::new());
    while seen_ok.is_none() || seen_denied.is_none() {
        if t0.elapsed() > DEADLINE {
            let _ = child.kill();
            let err = child
                .wait_with_output()
                .map(|o| o.stderr)
                .unwrap_or_default();
            bail!(
                "weft tap never showed both requests in {DEADLINE:?}; lines: {lines:#?}; stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        mesh.poll_get("frontend", svc, |r| r.status == 200)?;
        mesh.poll_get("intruder", svc, |r| r.status == 403)?;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            let l: TapLine = serde_json::from_str(&line)
                .with_context(|| format!("a tap line that is not an event: {line}"))?;
            let from_frontend = l.client_id.as_deref() == Some(frontend);
            if l.kind == "req" && l.proxy == "in" && l.tls == "true" && from_frontend {
                seen_ok = Some(line.clone());
            }
            if l.kind == "rsp" && l.status == Some(403) {
                seen_denied = Some(line.clone());
            }
            lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "$ weft tap deploy/backend -n {ns} -o json   (after {:.1?})\n{}\n{}",
        t0.elapsed(),
        seen_ok.unwrap_or_default(),
        seen_denied.unwrap_or_default()
    );
    Ok(())
}

/// `weft identity deploy/backend`: the serial the fleet view names, and a
/// chain openssl verifies.
fn identity(
    env: &K8sEnv,
    s: &crate::common::Scratch,
    (ns, cp_ns): (&str, &str),
    serial: &str,
) -> Result<()> {
    let out = weft(env, cp_ns, &["identity", "deploy/backend", "-n", ns]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "$ weft identity deploy/backend -n {ns}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "weft identity failed");
    ensure!(
        text.contains(serial),
        "the serial {serial} of /fleet is not in:\n{text}"
    );
    let chain = weft(
        env,
        cp_ns,
        &["identity", "deploy/backend", "-n", ns, "--chain"],
    )
    .output()?;
    ensure!(chain.status.success(), "weft identity --chain failed");
    let file = s.write("backend-chain.pem", &chain.stdout);
    let verify = s.openssl(&[
        "verify",
        "-CAfile",
        "ca.crt",
        "-untrusted",
        &file.to_string_lossy(),
        &file.to_string_lossy(),
    ]);
    println!(
        "$ weft identity deploy/backend -n {ns} --chain > backend-chain.pem\n$ openssl verify -CAfile ca.crt -untrusted backend-chain.pem backend-chain.pem\n{}",
        verify.stdout.trim()
    );
    ensure!(verify.code == 0, "openssl verify: {}", verify.stderr);
    let unknown = weft(env, cp_ns, &["identity", "deploy/nope", "-n", ns]).output()?;
    let err = String::from_utf8_lossy(&unknown.stderr);
    println!(
        "$ weft identity deploy/nope -n {ns}: exit {:?}: {}",
        unknown.status.code(),
        err.trim()
    );
    ensure!(
        unknown.status.code() == Some(2) && err.contains("does not exist"),
        "an unknown Deployment: {err}"
    );
    Ok(())
}

/// Steps 8–10 through the API server; `serial` is the backend's leaf as
/// the fleet view names it.
pub fn look(
    env: &K8sEnv,
    mesh: &Mesh,
    s: &crate::common::Scratch,
    (ns, cp_ns): (&str, &str),
    svc: SocketAddr,
    frontend: &str,
    serial: &str,
) -> Result<()> {
    forwards(env, mesh, ns, cp_ns)?;
    tap(env, mesh, (ns, cp_ns), svc, frontend)?;
    identity(env, s, (ns, cp_ns), serial)
}
