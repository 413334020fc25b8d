//! `weft rotate issuer` in Kubernetes mode against a real API server: weft
//! installed, five injected stand-in pods (frontend and web → backend over mTLS)
//! under continuous HTTP traffic, the control plane reached only through
//! the API server (kwok forwards the control-plane pod's admin port to the
//! local control plane). A foreign issuer is refused with the Secret
//! unchanged; a new issuer goes in through the Secret and every proxy
//! serves a leaf from it; a rotation killed after it wrote the Secret is
//! re-run and completes; 0 failed requests, no proxy restarted, and
//! `weft check --proxy` green after. A caller without the RBAC the command
//! needs is refused in one line naming what to grant. Then the trust
//! anchor rotates through the ConfigMap under the same traffic
//! (k8s_rotate/anchor.rs).
//!
//! Its own test binary: the webhook configuration is cluster-wide.
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

#[path = "k8s_rotate/anchor.rs"]
mod anchor;
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::injector::{self, forward_admin, point_at};
use common::kube::{Tenant, apply, kubectl, kubectl_stdin, tenant};
use common::netmesh::get_in;
use common::stand_in_app::workloads;
use common::stand_ins::Mesh;
use common::{rotation, traffic};
use control_plane::fleet::FleetView;
use testbed::k8s::K8sEnv;
use testbed::k8s::k8s_openapi::api::core::v1::Secret;
use testbed::k8s::kube::api::Api;

/// Five meshed workloads; frontend and web call backend throughout.
const APPS: [&str; 5] = ["backend", "frontend", "web", "api", "batch"];
const CALLERS: [&str; 2] = ["frontend", "web"];
const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "linkerd-identity-issuer";

fn fleet(env: &K8sEnv, mesh: &Mesh) -> Option<FleetView> {
    let (code, body) = get_in(&env.cp().ns, mesh.cp_addr("admin listening on"), "/fleet")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// `weft rotate ARGS --kubeconfig K -n CP_NS`, run in the cp namespace as
/// an operator would: (exit code, stdout + stderr, how long it took).
fn rotate(
    env: &K8sEnv,
    cp_ns: &str,
    s: &common::Scratch,
    args: &[&str],
) -> (i32, String, Duration) {
    let t0 = Instant::now();
    let out = rotate_cmd(env, cp_ns, s, args)
        .output()
        .expect("run weft rotate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text, t0.elapsed())
}

fn rotate_cmd(
    env: &K8sEnv,
    cp_ns: &str,
    s: &common::Scratch,
    args: &[&str],
) -> std::process::Command {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("rotate")
        .args(args)
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--namespace", cp_ns, "--timeout", "60s"])
        .current_dir(s.dir.path());
    cmd
}

/// The Secret's resourceVersion and certificate.
fn secret(t: &Tenant) -> Result<(String, Vec<u8>)> {
    let s =
        t.rt.block_on(Api::<Secret>::namespaced(t.client.clone(), &t.cp_ns).get(SECRET))?;
    let rv = s.metadata.resource_version.clone().unwrap_or_default();
    let crt = s
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| b.0.clone())
        .context("the issuer Secret has no tls.crt")?;
    Ok((rv, crt))
}

fn fingerprint(s: &common::Scratch, file: &str) -> Result<String> {
    Ok(pki::fingerprint(&pki::load_certs(&s.path(file))?[0]))
}

#[test]
fn the_issuer_rotates_through_the_secret_under_traffic() -> Result<()> {
    let Some(env) = K8sEnv::shared("the_issuer_rotates_through_the_secret_under_traffic")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let t = tenant("rot", &APPS, &env)?;
    let t0 = Instant::now();
    let _cleanup = injector::install(&env, &t.s, &t.cp_ns)?;
    let mut mesh = Mesh::start_installed(
        &env,
        &t.rt,
        t.client.clone(),
        &t.s,
        (&t.ns, &t.cp_ns),
        &injector::WEBHOOK_FLAGS,
    )?;
    t.rt.block_on(point_at(&t.client, mesh.cp_addr("webhook listening on")))?;
    mesh.wait_cp_line("webhook serving certificate issued")?;
    kubectl(
        &env,
        &["annotate", "namespace", &t.ns, "linkerd.io/inject=enabled"],
    )?;
    let plain = workloads(&t.ns, &t.cp_ns, &APPS.map(|a| (a, 1))).replace(
        &format!("        linkerd.io/control-plane-ns: {}\n", t.cp_ns),
        "",
    );
    apply(&env, &t.s, "workloads.yaml", &plain)?;
    for app in APPS {
        mesh.until_running(app, 1)?;
    }
    let pod = forward_admin(&env, &t.cp_ns, mesh.cp_addr("admin listening on"))?;
    until(&env, &mesh, "every proxy connected", |v| {
        v.proxies.len() == APPS.len() && v.proxies.iter().all(|p| p.state == "connected")
    })?;
    println!(
        "timing: installed, 5 injected pods meshed, admin forwarded from {pod} after {:.1?}",
        t0.elapsed()
    );

    let svc = SocketAddr::new(mesh.cluster_ip("backend")?, 80);
    mesh.poll_get("frontend", svc, |r| r.status == 200)?;
    let pids = mesh.proxy_pids()?;
    let running: Vec<_> = CALLERS
        .iter()
        .map(|c| traffic::start(&mesh, c, svc))
        .collect::<Result<_>>()?;

    let result = rotations(&env, &t, &mesh);
    let mut failed = Vec::new();
    for (caller, r) in CALLERS.iter().zip(running) {
        let load = r.stop()?;
        println!(
            "traffic {caller} -> backend during the rotations (a new connection each): {}",
            load.summary()
        );
        if load.total() == 0 {
            failed.push(format!("{caller}: no request succeeded"));
        }
        failed.extend(load.failed.iter().map(|f| format!("{caller}: {f}")));
    }
    result?;
    ensure!(
        failed.is_empty(),
        "requests failed during the rotations: {failed:?}"
    );
    ensure!(
        mesh.proxy_pids()? == pids,
        "a proxy was restarted: {pids:?}"
    );

    let out = env
        .cp_cmd(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--proxy", "--kubeconfig"])
        .arg(env.kubeconfig())
        .args(["--controller-namespace", &t.cp_ns])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("weft check --proxy after the rotations:\n{text}");
    ensure!(out.status.success(), "weft check --proxy failed:\n{text}");
    println!("timing: whole test {:.1?}", t0.elapsed());
    Ok(())
}

/// A foreign issuer refused, a new one put in force, one killed after it
/// wrote the Secret and re-run.
fn rotations(env: &K8sEnv, t: &Tenant, mesh: &Mesh) -> Result<()> {
    let s = &t.s;
    rotation::new_anchor_and_issuer(s);
    let before = secret(t)?;
    let (code, out, _) = rotate(
        env,
        &t.cp_ns,
        s,
        &["issuer", "--cert", "issuer2.crt", "--key", "issuer2.key"],
    );
    println!("weft rotate issuer with an issuer of a foreign anchor (exit {code}):\n{out}");
    ensure!(
        code == 2 && out.contains("is refused, nothing was changed"),
        "{out}"
    );
    ensure!(
        secret(t)? == before,
        "the refused rotation changed the Secret"
    );

    s.issuer("issuer-b", "8760h", "ca");
    let (code, out, took) = rotate(
        env,
        &t.cp_ns,
        s,
        &["issuer", "--cert", "issuer-b.crt", "--key", "issuer-b.key"],
    );
    println!("weft rotate issuer (exit {code}, {took:.1?}):\n{out}");
    ensure!(
        code == 0
            && out.contains("every connected proxy serves a leaf from the new issuer (5 of 5"),
        "{out}"
    );
    let b = fingerprint(s, "issuer-b.crt")?;
    ensure!(secret(t)?.1 == s.read("issuer-b.crt").into_bytes());
    until(env, mesh, "every proxy on issuer-b", |v| {
        v.proxies.iter().all(|p| p.issuer_sha256 == b)
    })?;
    println!("timing: issuer-b in force and on every proxy: weft rotate issuer took {took:.1?}");

    // Killed once it wrote the Secret, then re-run: it resumes.
    s.issuer("issuer-c", "8760h", "ca");
    let c_args = ["issuer", "--cert", "issuer-c.crt", "--key", "issuer-c.key"];
    killed_once_installed(rotate_cmd(env, &t.cp_ns, s, &c_args))?;
    ensure!(secret(t)?.1 == s.read("issuer-c.crt").into_bytes());
    let json_args = [&c_args[..], &["-o", "json"]].concat();
    let (code, out, took) = rotate(env, &t.cp_ns, s, &json_args);
    println!("weft rotate issuer -o json re-run (exit {code}, {took:.1?}):\n{out}");
    ensure!(code == 0, "{out}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("not one JSON event a line:\n{out}"))?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    ensure!(
        kinds.contains(&"in_force")
            && kinds.contains(&"renew_now")
            && kinds.last() == Some(&"done")
            && events.last().is_some_and(|e| e["proxies"] == APPS.len())
            && events.iter().any(|e| e["event"] == "renew_now"
                && e["status"] == 202
                && e["replica"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("weft-control-plane-"))),
        "{kinds:?}"
    );
    let c = fingerprint(s, "issuer-c.crt")?;
    let (v, _) = until(env, mesh, "every proxy on issuer-c", |v| {
        v.proxies.iter().all(|p| p.issuer_sha256 == c)
    })?;
    ensure!(v.proxies.len() == APPS.len(), "{v:?}");
    rbac(env, t)?;
    anchor::rotation(env, t, mesh)
}

/// As the control plane's own ServiceAccount (it may read the two objects,
/// neither port-forward nor update the Secret): refused in one line naming
/// what to grant; with pods/portforward granted, the Secret's update is
/// refused the same way. The Secret unchanged both times.
fn rbac(env: &K8sEnv, t: &Tenant) -> Result<()> {
    let (s, cp_ns) = (&t.s, t.cp_ns.as_str());
    s.issuer("issuer-d", "8760h", "ca");
    let before = secret(t)?;
    let run = || -> Result<(i32, String)> {
        let out = env
            .cp_cmd(env!("CARGO_BIN_EXE_weft"))
            .args([
                "rotate",
                "issuer",
                "--cert",
                "issuer-d.crt",
                "--key",
                "issuer-d.key",
            ])
            .arg("--kubeconfig")
            .arg(s.path("weft-identity.kubeconfig"))
            .args(["--namespace", cp_ns, "--timeout", "20s"])
            .current_dir(s.dir.path())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), text))
    };
    let (code, out) = run()?;
    println!("weft rotate issuer as {cp_ns}/weft-identity (exit {code}):\n{out}");
    ensure!(
        code == 2 && out.contains("create on pods/portforward") && out.lines().count() == 1,
        "{out}"
    );
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: rotate-forward, namespace: {cp_ns}}}\nrules:\n- apiGroups: [\"\"]\n  resources: [pods/portforward]\n  verbs: [get, create]\n- apiGroups: [\"\"]\n  resources: [pods]\n  verbs: [list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: rotate-forward, namespace: {cp_ns}}}\nsubjects: [{{kind: ServiceAccount, name: weft-identity, namespace: {cp_ns}}}]\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rotate-forward}}\n"
    );
    kubectl_stdin(env, &["apply"], &role)?;
    let t0 = Instant::now();
    let out = loop {
        let (code, out) = run()?;
        if out.contains("refused to update Secret") {
            ensure!(code == 1 && out.lines().count() == 1, "{out}");
            break out;
        }
        ensure!(t0.elapsed() < DEADLINE, "never refused the update: {out}");
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("with pods/portforward granted:\n{out}");
    ensure!(
        out.contains(&format!(
            "grant the caller update on secrets in namespace {cp_ns} (kubectl auth can-i update secrets/{SECRET} -n {cp_ns})"
        )) && out.contains("nothing was changed"),
        "{out}"
    );
    ensure!(
        secret(t)? == before,
        "a refused rotation changed the Secret"
    );
    Ok(())
}

/// Runs `cmd` until it prints that it installed an issuer, then kills it.
fn killed_once_installed(mut cmd: std::process::Command) -> Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let installed = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("installed issuer")));
    child.kill()?;
    child.wait()?;
    println!("killed {cmd:?} after: {installed:?}");
    ensure!(installed.is_some(), "the killed rotation never installed");
    Ok(())
}

fn until(
    env: &K8sEnv,
    mesh: &Mesh,
    what: &str,
    ok: impl Fn(&FleetView) -> bool,
) -> Result<(FleetView, Duration)> {
    let t0 = Instant::now();
    loop {
        let v = fleet(env, mesh);
        if let Some(v) = v.as_ref().filter(|v| ok(v)) {
            return Ok((v.clone(), t0.elapsed()));
        }
        if t0.elapsed() > DEADLINE {
            bail!(
                "{what}: not within {DEADLINE:?}; fleet {v:#?}\n{}",
                mesh.proxy_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
