//! The emergency re-root on Kubernetes: a third anchor and issuer written
//! into the trust-roots ConfigMap and the issuer Secret at once by
//! `weft rotate trust-anchor --emergency`. The anchor in force is still
//! valid, so the command refuses until --force; then every proxy stops
//! trusting the control plane until its mounted copy of the ConfigMap (the
//! kubelet's sync, here the test's) brings the new anchor, and the command
//! waits until each is back on a leaf from the new issuer.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use testbed::k8s::K8sEnv;

use super::common::Scratch;
use super::common::stand_ins::Mesh;

const DEADLINE: Duration = Duration::from_secs(150);

fn command(env: &K8sEnv, s: &Scratch, cp_ns: &str) -> std::process::Command {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.args([
        "rotate",
        "trust-anchor",
        "--emergency",
        "--new-anchor",
        "ca3.crt",
        "--issuer-cert",
        "issuer3.crt",
        "--issuer-key",
        "issuer3.key",
        "--kubeconfig",
    ])
    .arg(env.kubeconfig())
    .args(["--namespace", cp_ns, "--timeout", "120s"])
    .current_dir(s.dir.path());
    cmd
}

/// What the command printed, stdout then stderr.
fn printed(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

pub fn re_root(
    env: &K8sEnv,
    mesh: &mut Mesh,
    s: &Scratch,
    cp_ns: &str,
    (svc, frontend): (SocketAddr, &str),
) -> Result<()> {
    s.anchor("ca3", "root-3.linkerd.cluster.local", "87600h");
    s.issuer("issuer3", "8760h", "ca3");

    let out = command(env, s, cp_ns).output()?;
    let text = printed(&out);
    println!(
        "weft rotate trust-anchor --emergency while the anchor in force is valid (exit {:?}):\n{text}",
        out.status.code()
    );
    ensure!(
        out.status.code() == Some(2)
            && text.contains(
                "refused, nothing was changed: the anchor and issuer in force are valid until"
            ),
        "{text}"
    );

    let t0 = Instant::now();
    let child = command(env, s, cp_ns)
        .arg("--force")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    // The kubelet's volume sync while the command waits for the proxies.
    while !waiter.is_finished() {
        mesh.sync_volumes()?;
        if t0.elapsed() > DEADLINE {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the waiter panicked"))??;
    let took = t0.elapsed();
    let text = printed(&out);
    println!(
        "weft rotate trust-anchor --emergency --force (exit {:?}, {took:.1?}):\n{text}",
        out.status.code()
    );
    ensure!(
        out.status.success()
            && text.contains("installed the new anchor in ConfigMap")
            && text.contains("every proxy is back, on a leaf from the new issuer (3 of 3"),
        "{text}\n{}",
        mesh.proxy_logs()
    );
    let t = Instant::now();
    let r = mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    ensure!(r.client_id == frontend, "the backend saw {r:?}");
    println!(
        "timing: emergency re-root on the cluster: every proxy back after {took:.1?}, frontend -> backend 200 {:.1?} later",
        t.elapsed()
    );
    Ok(())
}
