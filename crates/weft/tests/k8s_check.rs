//! `weft check --pre` and `weft check` against a real API server: `--pre`
//! passes on a fresh cluster and fails, naming the check, for a namespace
//! annotated for injection whose Pod Security level forbids NET_ADMIN.
//! After install, with the control plane (a local process serving the
//! injector, as envtest does) and one injected pod whose proxy is a real
//! `weft proxy` connected to it, `weft check` passes (text and `-o json`);
//! a proxy one release behind is a warning; and it fails, naming the check,
//! when the webhook is unreachable, a CRD is missing, the issuer Secret
//! holds a foreign issuer, and a proxy is on an old bundle. Without
//! `--admin-addr` it reads the fleet view through a port-forward to the
//! control plane's pod (kwok forwards it to the local control plane).
//!
//! Its own test binary: the webhook configuration is cluster-wide.
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::injector::{self, forward_admin, point_at, webhook_replica};
use common::kube::{Tenant, identity, kubeconfig_for, kubectl, kubectl_stdin, running, tenant};
use common::netmesh::get_in;
use common::proc::Proc;
use control_plane::fleet::FleetView;
use testbed::k8s::K8sEnv;
use testbed::k8s::api::BoundTo;

const DEADLINE: Duration = Duration::from_secs(30);

/// `weft check` run in the cp namespace against the test cluster:
/// (exit code, stdout).
fn check(env: &K8sEnv, cp_ns: &str, extra: &[&str]) -> (i32, String) {
    let out = env
        .cp_cmd(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--kubeconfig"])
        .arg(env.kubeconfig())
        .args(["--controller-namespace", cp_ns])
        .args(extra)
        .output()
        .expect("run weft check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs the check until its output holds every line of `want` (each a
/// check's full line, e.g. "× the injector answers ..."), so a change the
/// API server or control plane takes a moment to see is waited for.
fn until_check(env: &K8sEnv, cp_ns: &str, extra: &[&str], want: &[&str]) -> Result<(i32, String)> {
    let t0 = Instant::now();
    loop {
        let (code, out) = check(env, cp_ns, extra);
        if want.iter().all(|w| out.contains(w)) {
            println!("after {:.1?}:", t0.elapsed());
            return Ok((code, out));
        }
        if t0.elapsed() > DEADLINE {
            bail!("weft check never said {want:?} within {DEADLINE:?}; last:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The control plane's fleet view (its admin listener is on the cp
/// namespace's loopback) until `ok` holds.
fn until_fleet(
    env: &K8sEnv,
    admin: SocketAddr,
    what: &str,
    ok: impl Fn(&FleetView) -> bool,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let v = get_in(&env.cp().ns, admin, "/fleet")
            .and_then(|(_, body)| serde_json::from_str::<FleetView>(&body).ok());
        if v.as_ref().is_some_and(&ok) {
            println!("{what} after {:.1?}", t0.elapsed());
            return Ok(());
        }
        ensure!(
            t0.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl create ... --dry-run=client -o yaml | kubectl replace -f -`:
/// an identity object replaced as an operator would.
fn replace(env: &K8sEnv, create: &[&str]) -> Result<()> {
    let mut args = vec!["create"];
    args.extend(create);
    args.extend(["--dry-run=client", "-o", "yaml"]);
    let yaml = kubectl(env, &args)?;
    kubectl_stdin(env, &["replace"], &yaml)?;
    Ok(())
}

fn issuer_secret(env: &K8sEnv, s: &Path, cp_ns: &str, cert: &str, key: &str) -> Result<()> {
    let (cert, key) = (s.join(cert), s.join(key));
    replace(
        env,
        &[
            "secret",
            "tls",
            "linkerd-identity-issuer",
            "-n",
            cp_ns,
            &format!("--cert={}", cert.display()),
            &format!("--key={}", key.display()),
        ],
    )
}

/// A `weft proxy` for pod `ns/pod` (ServiceAccount `web`) in the cp
/// namespace, in ports mode, proving itself with a token bound to the pod.
fn proxy(env: &K8sEnv, t: &Tenant, cp: &Proc, pod: &str) -> Result<Proc> {
    let uid =
        t.rt.block_on(
            testbed::k8s::kube::Api::<testbed::k8s::k8s_openapi::api::core::v1::Pod>::namespaced(
                t.client.clone(),
                &t.ns,
            )
            .get(pod),
        )?
        .metadata
        .uid
        .context("a pod without a uid")?;
    let token = t.rt.block_on(testbed::k8s::api::token(
        &t.client,
        &t.ns,
        "web",
        "identity.l5d.io",
        Some(BoundTo {
            kind: "Pod",
            name: pod.to_string(),
            uid,
        }),
        Duration::from_secs(3600),
    ))?;
    let token_file = t.s.write(&format!("{pod}.token"), token);
    let workload = serde_json::json!({"ns": t.ns, "pod": pod}).to_string();
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(t.s.path(".")).args([
        "proxy",
        "--workload",
        &workload,
        "--identity",
        &identity("web", &t.ns, &t.cp_ns),
        "--token-file",
        &token_file.to_string_lossy(),
        "--trust-anchors-file",
        "ca.crt",
        "--identity-addr",
        &cp.addr("identity listening on").to_string(),
        "--destination-addr",
        &cp.addr("destination listening on").to_string(),
        "--policy-addr",
        &cp.addr("policy listening on").to_string(),
        "--control-plane-identity",
        &identity("weft-identity", &t.cp_ns, &t.cp_ns),
        "--inbound-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--tap-addr",
        "127.0.0.1:0",
        "--outbound-addr",
        "off",
    ]);
    Ok(Proc::spawn_cmd(cmd))
}

fn signal(p: &Proc, sig: &str) -> Result<()> {
    let pid = p.child.id().to_string();
    testbed::run(std::process::Command::new("kill").args([sig, &pid]))?;
    Ok(())
}

/// Without --admin-addr the check reaches the fleet view through the API
/// server (a port-forward to the control plane's pod, which kwok serves):
/// refused while kwok has no forward for the pod, passing once it forwards
/// to the local control plane's admin address, failing again when the
/// forward points nowhere.
fn tunnel(env: &K8sEnv, cp_ns: &str, admin: SocketAddr, no_rbac: &Path) -> Result<()> {
    let reach = "the control plane's fleet view is reachable";
    let (code, refused) = check(env, cp_ns, &["--proxy"]);
    println!("weft check --proxy, no --admin-addr, kwok forwards nothing:\n{refused}");
    ensure!(
        code == 1
            && refused.contains(&format!("× {reach}"))
            && refused.contains("port-forward to pod weft-control-plane-")
            && refused.contains("pods/portforward")
            && refused.contains("--admin-addr 127.0.0.1:9990"),
        "{refused}"
    );
    let pod = forward_admin(env, cp_ns, admin)?;
    let (_, out) = until_check(
        env,
        cp_ns,
        &["--proxy"],
        &[
            &format!("√ {reach}"),
            "√ every injected pod's proxy is connected and on the current trust bundle (1 of 1)",
        ],
    )?;
    println!("weft check --proxy through a port-forward to {pod}:\n{out}");
    let mut took = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let (code, out) = check(env, cp_ns, &[]);
        took.push(t0.elapsed());
        ensure!(code == 0, "weft check without --admin-addr failed:\n{out}");
    }
    let (code, out) = check(env, cp_ns, &[]);
    println!("weft check, no --admin-addr (runs took {took:.1?}):\n{out}");
    ensure!(code == 0 && out.contains(&format!("√ {reach}")), "{out}");

    // A user without get/create on pods/portforward (the control plane's own
    // ServiceAccount): the API server refuses the forward.
    let out = env
        .cp_cmd(env!("CARGO_BIN_EXE_weft"))
        .args(["check", "--proxy", "--kubeconfig"])
        .arg(no_rbac)
        .args(["--controller-namespace", cp_ns])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "weft check --proxy as {cp_ns}/weft-identity:\n{}",
        failed(&text)
    );
    ensure!(
        out.status.code() == Some(1)
            && text.contains(&format!("× {reach}"))
            && text.contains(&format!("refused a port-forward to pod {pod}"))
            && text.contains("create on pods/portforward"),
        "{text}"
    );

    // The forward pointing nowhere: the fleet check fails, naming the pod.
    forward_admin(env, cp_ns, "127.0.0.1:1".parse()?)?;
    let (code, out) = until_check(env, cp_ns, &[], &[&format!("× {reach}")])?;
    ensure!(code == 1 && out.contains(&pod), "{out}");
    println!("{}", failed(&out));
    kubectl(env, &["delete", "portforward", "-n", cp_ns, &pod])?;
    Ok(())
}

/// The pre-install checks: pass on a fresh cluster, fail for a meshed
/// namespace that enforces Pod Security `restricted`.
fn pre(env: &K8sEnv, t: &Tenant) -> Result<()> {
    let t0 = Instant::now();
    let (code, out) = check(env, &t.cp_ns, &["--pre"]);
    println!("weft check --pre ({:.1?}):\n{out}", t0.elapsed());
    ensure!(code == 0, "--pre failed on a fresh cluster:\n{out}");
    for line in [
        "√ is running Kubernetes 1.29 or later (native sidecars)",
        "√ the clock is within 20s of the API server's",
        "√ can create customresourcedefinitions.apiextensions.k8s.io",
        &format!("√ can create secrets in namespace {}", t.cp_ns),
        "√ weft's CRDs are present or installable",
    ] {
        ensure!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let psa =
        t.rt.block_on(testbed::k8s::api::namespace(&t.client, "psa"))?;
    kubectl(
        env,
        &[
            "label",
            "namespace",
            &psa,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
    )?;
    kubectl(
        env,
        &["annotate", "namespace", &psa, "linkerd.io/inject=enabled"],
    )?;
    let (code, out) = check(env, &t.cp_ns, &["--pre"]);
    println!("weft check --pre, a restricted namespace meshed:\n{out}");
    ensure!(code == 1, "--pre passed with {psa} restricted:\n{out}");
    ensure!(
        out.contains(
            "× no namespace meshed by weft enforces a Pod Security level that forbids NET_ADMIN"
        ) && out.contains(&format!(
            "{psa} (pod-security.kubernetes.io/enforce=restricted)"
        )),
        "{out}"
    );
    kubectl(env, &["delete", "namespace", &psa, "--wait=false"])?;
    Ok(())
}

#[test]
fn check_pre_and_check_pass_on_a_cluster_and_fail_naming_the_check() -> Result<()> {
    let Some(env) =
        K8sEnv::shared("check_pre_and_check_pass_on_a_cluster_and_fail_naming_the_check")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let t0 = Instant::now();
    let t = tenant("chk", &["web"], &env)?;
    pre(&env, &t)?;

    // Install (the webhook at a local control plane, as envtest does).
    let _cleanup = injector::install(&env, &t.s, &t.cp_ns)?;
    let crds = t.s.weft(&["install", "--crds"]).ok().stdout;
    let kubeconfig =
        t.rt.block_on(kubeconfig_for(&env, &t.client, &t.cp_ns, &t.s))?;
    // The installed Deployment's pod is kwok's (no process behind it): the
    // local control plane must not take it for a peer replica to merge.
    let peers = ["--fleet-peers-service", "weft-check-local-only"];
    let cp = webhook_replica(&env, &t.s, &t.cp_ns, &kubeconfig, &peers);
    t.rt.block_on(point_at(&t.client, cp.webhook))?;
    cp.proc
        .wait_for_line("webhook serving certificate issued", DEADLINE);
    let admin = cp.proc.addr("admin listening on").to_string();
    let admin_addr: SocketAddr = admin.parse()?;

    // One injected pod, its proxy connected.
    kubectl(
        &env,
        &["annotate", "namespace", &t.ns, "linkerd.io/inject=enabled"],
    )?;
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: {}}}\nspec:\n  serviceAccountName: web\n  containers:\n  - {{name: app, image: \"app:1\"}}\n",
        t.ns
    );
    kubectl_stdin(&env, &["apply"], &pod)?;
    t.rt.block_on(running(&t.client, &t.ns, "web"))?;
    let web = proxy(&env, &t, &cp.proc, "web")?;
    let workload = format!("{}/web", t.ns);
    until_fleet(&env, admin_addr, "web's proxy connected", |v| {
        v.proxies
            .iter()
            .any(|p| p.workload == workload && p.state == "connected" && p.bundle_current)
    })?;

    // It passes.
    let cluster = ["--admin-addr", admin.as_str()];
    let t1 = Instant::now();
    let (code, out) = check(&env, &t.cp_ns, &cluster);
    println!("weft check ({:.1?}):\n{out}", t1.elapsed());
    ensure!(code == 0, "weft check failed on a healthy cluster:\n{out}");
    for line in [
        "√ control plane replicas are ready (1/1)",
        "√ the injector answers (a dry-run pod is injected)",
        "√ weft's CRDs are installed and current",
        "√ issuer cert is issued by the trust anchor",
        "√ the control plane accepted the current trust anchors and issuer",
        "√ every injected pod's proxy is connected and on the current trust bundle (1 of 1)",
        "√ no proxy is older than the control plane",
    ] {
        ensure!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let (code, json) = check(&env, &t.cp_ns, &["--admin-addr", &admin, "-o", "json"]);
    let report: serde_json::Value = serde_json::from_str(&json).context(json.clone())?;
    ensure!(code == 0 && report["success"] == true, "{json}");
    let (code, narrowed) = check(
        &env,
        &t.cp_ns,
        &["--proxy", "-n", &t.ns, "--admin-addr", &admin],
    );
    println!("weft check --proxy -n {}:\n{narrowed}", t.ns);
    ensure!(
        code == 0 && narrowed.contains("(1 of 1)") && !narrowed.contains("weft-identity"),
        "{narrowed}"
    );
    tunnel(&env, &t.cp_ns, admin_addr, &kubeconfig)?;
    let (_, elsewhere) = check(
        &env,
        &t.cp_ns,
        &["--proxy", "-n", "default", "--admin-addr", &admin],
    );
    ensure!(elsewhere.contains("(0 of 0)"), "{elsewhere}");

    // A proxy one release behind: a warning, not a failure.
    kubectl(
        &env,
        &[
            "annotate",
            "pod",
            "-n",
            &t.ns,
            "web",
            "--overwrite",
            "linkerd.io/proxy-version=0.0.9",
        ],
    )?;
    let (code, out) = check(&env, &t.cp_ns, &cluster);
    ensure!(
        code == 0 && out.contains("‼ no proxy is older than the control plane"),
        "{out}"
    );
    println!(
        "one release behind: {}",
        out.lines().find(|l| l.contains("runs 0.0.9")).unwrap_or("")
    );
    kubectl(
        &env,
        &[
            "annotate",
            "pod",
            "-n",
            &t.ns,
            "web",
            "--overwrite",
            &format!("linkerd.io/proxy-version={}", env!("CARGO_PKG_VERSION")),
        ],
    )?;

    // The webhook unreachable.
    t.rt.block_on(point_at(&t.client, "127.0.0.1:1".parse()?))?;
    let (code, out) = until_check(
        &env,
        &t.cp_ns,
        &cluster,
        &["× the injector answers (a dry-run pod is injected)"],
    )?;
    ensure!(
        code == 1 && out.contains("the webhook is unreachable"),
        "{out}"
    );
    println!("{}", failed(&out));
    t.rt.block_on(point_at(&t.client, cp.webhook))?;

    // A CRD missing.
    kubectl(&env, &["delete", "crd", "httproutes.policy.linkerd.io"])?;
    let (code, out) = until_check(
        &env,
        &t.cp_ns,
        &cluster,
        &["× weft's CRDs are installed and current"],
    )?;
    ensure!(
        code == 1 && out.contains("missing: httproutes.policy.linkerd.io"),
        "{out}"
    );
    println!("{}", failed(&out));
    kubectl_stdin(&env, &["apply", "--server-side"], &crds)?;

    // A foreign issuer (another CA's) in the issuer Secret.
    common::rotation::new_anchor_and_issuer(&t.s);
    issuer_secret(
        &env,
        t.s.path(".").as_path(),
        &t.cp_ns,
        "issuer2.crt",
        "issuer2.key",
    )?;
    let (code, out) = until_check(
        &env,
        &t.cp_ns,
        &cluster,
        &[
            "× issuer cert is issued by the trust anchor",
            "× the control plane accepted the current trust anchors and issuer",
        ],
    )?;
    ensure!(code == 1, "{out}");
    println!("{}", failed(&out));
    issuer_secret(
        &env,
        t.s.path(".").as_path(),
        &t.cp_ns,
        "issuer.crt",
        "issuer.key",
    )?;
    until_check(
        &env,
        &t.cp_ns,
        &cluster,
        &["√ the control plane accepted the current trust anchors and issuer"],
    )?;

    // A proxy on an old bundle: stopped, it cannot take generation 2.
    signal(&web, "-STOP")?;
    let both = format!("{}{}", t.s.read("ca.crt"), t.s.read("ca2.crt"));
    t.s.write("both.crt", &both);
    let from = format!(
        "--from-file=ca-bundle.crt={}",
        t.s.path("both.crt").display()
    );
    replace(
        &env,
        &[
            "configmap",
            "linkerd-identity-trust-roots",
            "-n",
            &t.cp_ns,
            &from,
        ],
    )?;
    let (code, out) = until_check(
        &env,
        &t.cp_ns,
        &cluster,
        &[
            "× every injected pod's proxy is connected and on the current trust bundle (0 of 1)",
            "generation 1",
        ],
    )?;
    ensure!(code == 1 && out.contains(&workload), "{out}");
    println!("{}", failed(&out));
    signal(&web, "-CONT")?;
    println!("k8s_check took {:.1?}", t0.elapsed());
    Ok(())
}

/// The failed checks of a report, with their error and hint lines.
fn failed(out: &str) -> String {
    let mut keep = false;
    out.lines()
        .filter(|l| {
            if l.starts_with(['√', '‼', '×']) {
                keep = l.starts_with('×');
            } else if !l.starts_with("    ") {
                keep = false;
            }
            keep
        })
        .collect::<Vec<_>>()
        .join("\n")
}
