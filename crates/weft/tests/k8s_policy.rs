//! `weft control-plane --kubernetes` serves inbound policy from a real API
//! server: the guide's policy manifests applied unchanged, meshed pods that
//! kwok runs, WatchPort answers judged as a proxy judges them, and the same
//! verdicts from `weft policy explain` on `kubectl get -o yaml` output.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::Scratch;
use common::kube::{
    CLUSTER_NETWORKS, Tenant, UNMESHED_IP, Watcher, apply, certify, control_plane, guide_policy,
    identity, install_crds, install_identity, kubectl, least_privilege_kubeconfig, meshed_pod,
    running, tenant, watch_ports,
};
use common::proc::Proc;
use linkerd2_proxy_api::inbound::Server;
use testbed::k8s::K8sEnv;

/// A client of the proxy's kind, as `explain --from` names it.
#[derive(Clone, Copy)]
enum Caller {
    Frontend,
    Other,
    Unmeshed,
}

impl Caller {
    const ALL: [Caller; 3] = [Caller::Frontend, Caller::Other, Caller::Unmeshed];

    fn explain_from(self, ns: &str, cp_ns: &str) -> String {
        match self {
            Caller::Frontend => identity("frontend", ns, cp_ns),
            Caller::Other => identity("other", ns, cp_ns),
            Caller::Unmeshed => "unmeshed".into(),
        }
    }

    fn client(self, ns: &str, cp_ns: &str) -> policy::Client {
        let ip: IpAddr = UNMESHED_IP.parse().expect("an IP");
        match self {
            Caller::Unmeshed => policy::Client {
                identity: None,
                tls: false,
                ip,
            },
            c => policy::Client {
                identity: c.explain_from(ns, cp_ns).parse().ok(),
                tls: true,
                ip,
            },
        }
    }
}

/// The verdict a proxy gives for one served policy.
fn proxy_verdict(server: &Server, client: &policy::Client, path: Option<&str>) -> Result<bool> {
    let typed = policy::Server::try_from(server.clone()).context("a well-formed policy")?;
    let req = path.map(|p| policy::Request {
        method: "GET".into(),
        path: p.into(),
        headers: vec![],
    });
    let traffic = match &req {
        Some(r) => policy::Traffic::Http(r),
        None => policy::Traffic::NotHttp,
    };
    Ok(policy::judge(&typed, policy::Facts::default(), client, traffic).allowed)
}

/// `weft policy explain` on exported objects: true when allowed.
fn explain_verdict(
    s: &Scratch,
    caller: Caller,
    ns: &str,
    cp_ns: &str,
    port: u16,
    path: Option<&str>,
) -> Result<bool> {
    let from = caller.explain_from(ns, cp_ns);
    let to = format!("{ns}/backend:{port}");
    let mut args = vec![
        "policy",
        "explain",
        "--resources",
        "exported",
        "--kubernetes",
        "--from",
        &from,
        "--from-ip",
        UNMESHED_IP,
        "--to",
        &to,
        "--controller-namespace",
        cp_ns,
        "--cluster-networks",
        CLUSTER_NETWORKS,
    ];
    if let Some(p) = path {
        args.extend(["--path", p]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(&args)
        .current_dir(s.path("."))
        .output()?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        other => bail!(
            "explain {args:?} exited {other:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `kubectl get -o yaml` of everything policy reads, into `exported/`.
fn export(env: &K8sEnv, s: &Scratch, ns: &str) -> Result<()> {
    let dir = s.path("exported");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let objects = kubectl(
        env,
        &[
            "get",
            "-n",
            ns,
            "-o",
            "yaml",
            "pods,servers.policy.linkerd.io,authorizationpolicies.policy.linkerd.io,meshtlsauthentications.policy.linkerd.io,networkauthentications.policy.linkerd.io,httproutes.policy.linkerd.io",
        ],
    )?;
    std::fs::write(dir.join("objects.yaml"), objects)?;
    std::fs::write(
        dir.join("namespace.yaml"),
        kubectl(env, &["get", "namespace", ns, "-o", "yaml"])?,
    )?;
    Ok(())
}

#[test]
fn kubernetes_policy_matches_explain_and_updates_live() -> Result<()> {
    let Some(env) = K8sEnv::shared("kubernetes_policy_matches_explain_and_updates_live")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("pol", &["backend", "frontend", "other"], &env)?;
    install_crds(&env)?;
    let guide = guide_policy(&ns)?;
    apply(&env, &s, "policy.yaml", &guide)?;
    apply(
        &env,
        &s,
        "backend.yaml",
        &meshed_pod("backend", &ns, "backend", &cp_ns, ""),
    )?;
    let ip = rt.block_on(running(&client, &ns, "backend"))?;
    println!("backend pod Running at {ip}");

    let kubeconfig = rt.block_on(least_privilege_kubeconfig(&env, &client, &cp_ns, &s))?;
    install_identity(&env, &s, &cp_ns)?;
    let cp = control_plane(&env, &s, &cp_ns, &kubeconfig);
    let ia = cp.addr("identity listening on");
    let pa = cp.addr("policy listening on");
    let t0 = Instant::now();
    common::kube::serving(&cp);
    println!(
        "control plane started -> Kubernetes resources loaded in {:.1?}",
        t0.elapsed()
    );
    certify(&env, &s, ia, "backend", &ns, &cp_ns)?;
    let mut w = watch_ports(&env, &s, pa, &ns, &cp_ns, &[8080, 9090])?;

    // The table: clients × ports × (not HTTP, GET /, GET /ready), WatchPort vs explain.
    export(&env, &s, &ns)?;
    let mut rows = Vec::new();
    for port in [8080u16, 9090] {
        for caller in Caller::ALL {
            for path in [None, Some("/"), Some("/ready")] {
                let served = proxy_verdict(w.server(port), &caller.client(&ns, &cp_ns), path)?;
                let explained = explain_verdict(&s, caller, &ns, &cp_ns, port, path)?;
                rows.push(format!(
                    "{port:<5} {:<70} {:<7} served={served:<5} explain={explained}",
                    caller.explain_from(&ns, &cp_ns),
                    path.unwrap_or("(tcp)")
                ));
                ensure!(
                    served == explained,
                    "WatchPort and explain disagree:\n{}",
                    rows.join("\n")
                );
            }
        }
    }
    println!("port  client{:65}traffic verdicts\n{}", "", rows.join("\n"));
    let frontend = Caller::Frontend.client(&ns, &cp_ns);
    ensure!(
        proxy_verdict(w.server(8080), &frontend, None)?,
        "the guide's policy must allow frontend on 8080"
    );
    ensure!(
        !proxy_verdict(w.server(8080), &Caller::Other.client(&ns, &cp_ns), None)?,
        "only frontend on 8080"
    );

    // Deleting the MeshTLSAuthentication denies frontend live.
    kubectl(
        &env,
        &[
            "delete",
            "-n",
            &ns,
            "meshtlsauthentications.policy.linkerd.io",
            "frontend-sa",
        ],
    )?;
    let took = w.wait(
        8080,
        "frontend denied after the MeshTLSAuthentication is deleted",
        |srv| proxy_verdict(srv, &frontend, None).is_ok_and(|a| !a),
    )?;
    println!("MeshTLSAuthentication deleted -> WatchPort update in {took:.1?}");

    probes_under_deny(&env, &s, &mut w, &ns, &cp_ns)?;
    refused_objects_grant_nothing(&env, &s, &mut w, &cp, (&guide, &ns, &cp_ns))?;
    unreadable_server_denies_its_namespace(&env, &s, &mut w, &cp, (&ns, &cp_ns))?;
    drop(cp);
    Ok(())
}

/// A pod under `deny` still answers its kubelet probe path, unauthenticated;
/// other paths on that port stay denied.
fn probes_under_deny(
    env: &K8sEnv,
    s: &Scratch,
    w: &mut Watcher,
    ns: &str,
    cp_ns: &str,
) -> Result<()> {
    kubectl(
        env,
        &[
            "annotate",
            "--overwrite",
            "namespace",
            ns,
            "config.linkerd.io/default-inbound-policy=deny",
        ],
    )?;
    let unmeshed = Caller::Unmeshed.client(ns, cp_ns);
    let took = w.wait(9090, "port 9090 under deny", |srv| {
        proxy_verdict(srv, &unmeshed, Some("/")).is_ok_and(|a| !a)
    })?;
    println!("namespace annotated deny -> WatchPort update in {took:.1?}");
    ensure!(
        proxy_verdict(w.server(9090), &unmeshed, Some("/ready"))?,
        "the readiness probe path must stay allowed"
    );
    ensure!(
        !proxy_verdict(w.server(9090), &unmeshed, Some("/ready/x"))?,
        "only the probe path itself"
    );
    ensure!(
        !proxy_verdict(w.server(9090), &unmeshed, None)?,
        "a connection that is not HTTP is denied"
    );
    export(env, s, ns)?;
    for (path, want) in [(Some("/ready"), true), (Some("/"), false)] {
        let explained = explain_verdict(s, Caller::Unmeshed, ns, cp_ns, 9090, path)?;
        ensure!(
            explained == want,
            "explain of {path:?} on 9090 under deny: {explained}, want {want}"
        );
    }
    Ok(())
}

/// Objects the API accepts but weft refuses grant nothing: the guide's
/// AuthorizationPolicy with a second required authentication of a kind weft
/// cannot use is refused whole, so frontend is denied (a partial read,
/// dropping the bad reference, would let frontend in).
fn refused_objects_grant_nothing(
    env: &K8sEnv,
    s: &Scratch,
    w: &mut Watcher,
    cp: &Proc,
    (guide, ns, cp_ns): (&str, &str, &str),
) -> Result<()> {
    let frontend = Caller::Frontend.client(ns, cp_ns);
    apply(env, s, "policy.yaml", guide)?;
    w.wait(
        8080,
        "frontend allowed once the guide's policy is back",
        |srv| proxy_verdict(srv, &frontend, None).unwrap_or(false),
    )?;
    let bad = guide.replace(
        "    kind: MeshTLSAuthentication\n    group: policy.linkerd.io\n",
        "    kind: MeshTLSAuthentication\n    group: policy.linkerd.io\n  - name: frontend-sa\n    kind: Secret\n    group: \"\"\n",
    );
    ensure!(
        bad != guide,
        "the guide's AuthorizationPolicy changed shape"
    );
    apply(env, s, "bad-policy.yaml", &bad)?;
    let t0 = Instant::now();
    let line = loop {
        let out = cp.output();
        if let Some(l) = out.lines().find(|l| {
            l.contains("backend-allow-frontend") && l.contains("requiredAuthenticationRefs[1]")
        }) {
            break l.to_string();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no refusal of AuthorizationPolicy backend-allow-frontend logged within 30s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("refusal logged after {:.1?}: {line}", t0.elapsed());
    w.wait(
        8080,
        "frontend denied once its AuthorizationPolicy is refused",
        |srv| proxy_verdict(srv, &frontend, None).is_ok_and(|a| !a),
    )?;
    // The same answer from a fresh WatchPort (no history) and from explain.
    let fresh = watch_ports(env, s, cp.addr("policy listening on"), ns, cp_ns, &[8080])?;
    ensure!(
        !proxy_verdict(fresh.server(8080), &frontend, None)?,
        "a fresh WatchPort granted frontend"
    );
    export(env, s, ns)?;
    ensure!(
        !explain_verdict(s, Caller::Frontend, ns, cp_ns, 8080, None)?,
        "explain granted frontend"
    );
    // A restarted replica (a new process, reading the same objects): the
    // same answer.
    let restarted = common::kube::control_plane(env, s, cp_ns, &s.path("weft-identity.kubeconfig"));
    common::kube::serving(&restarted);
    let t0 = Instant::now();
    let again = loop {
        match watch_ports(
            env,
            s,
            restarted.addr("policy listening on"),
            ns,
            cp_ns,
            &[8080],
        ) {
            Ok(w) => break w,
            Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                println!("restarted replica not serving yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    };
    ensure!(
        !proxy_verdict(again.server(8080), &frontend, None)?,
        "a restarted replica granted frontend"
    );
    println!(
        "a restarted replica denies frontend too, after {:.1?}",
        t0.elapsed()
    );
    drop(again);
    drop(restarted);
    // Fixed: frontend is allowed again, live.
    apply(env, s, "policy.yaml", guide)?;
    let took = w.wait(
        8080,
        "frontend allowed once the AuthorizationPolicy is fixed",
        |srv| proxy_verdict(srv, &frontend, None).unwrap_or(false),
    )?;
    println!("AuthorizationPolicy fixed -> WatchPort update in {took:.1?}");
    Ok(())
}

/// A Server the API accepts but whose selection weft cannot read (a
/// selector Kubernetes itself would not accept for a Deployment) may have
/// meant any port of its namespace: every port no valid Server selects
/// denies, named in a log line, until it is fixed; the valid Server's port
/// keeps its own policy.
fn unreadable_server_denies_its_namespace(
    env: &K8sEnv,
    s: &Scratch,
    w: &mut Watcher,
    cp: &Proc,
    (ns, cp_ns): (&str, &str),
) -> Result<()> {
    let unmeshed = Caller::Unmeshed.client(ns, cp_ns);
    let frontend = Caller::Frontend.client(ns, cp_ns);
    kubectl(
        env,
        &[
            "annotate",
            "namespace",
            ns,
            "config.linkerd.io/default-inbound-policy-",
        ],
    )?;
    w.wait(9090, "port 9090 back to the default (allow)", |srv| {
        proxy_verdict(srv, &unmeshed, Some("/")).unwrap_or(false)
    })?;
    let broken = format!(
        "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: broken
  namespace: {ns}
spec:
  podSelector:
    matchExpressions:
    - key: app
      operator: In
      values: []
  port: 7777
"
    );
    apply(env, s, "broken-server.yaml", &broken)?;
    let t0 = Instant::now();
    let took = w.wait(
        9090,
        "port 9090 denied while Server broken is unreadable",
        |srv| proxy_verdict(srv, &unmeshed, Some("/")).is_ok_and(|a| !a),
    )?;
    println!("unreadable Server applied -> 9090 denied in {took:.1?}");
    let line = loop {
        let out = cp.output();
        if let Some(l) = out
            .lines()
            .find(|l| l.contains("broken") && l.contains("matchExpressions[0].values"))
        {
            break l.to_string();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no refusal of Server broken logged within 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("refusal logged: {line}");
    let event = loop {
        let out = kubectl(
            env,
            &[
                "get",
                "events",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.reason}|{.involvedObject.kind}/{.involvedObject.name}|{.message}{\"\\n\"}{end}",
            ],
        )?;
        if let Some(l) = out
            .lines()
            .find(|l| l.starts_with("PolicyObjectRefused|Server/broken|"))
        {
            break l.to_string();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no PolicyObjectRefused Event on Server broken within 30s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("Event: {event}");
    ensure!(
        event.contains("matchExpressions[0].values"),
        "the Event does not name the field: {event}"
    );
    ensure!(
        proxy_verdict(w.server(8080), &frontend, None)?,
        "the valid Server's port keeps its policy"
    );
    export(env, s, ns)?;
    ensure!(
        !explain_verdict(s, Caller::Unmeshed, ns, cp_ns, 9090, Some("/"))?,
        "explain allowed 9090 beside an unreadable Server"
    );
    kubectl(
        env,
        &["delete", "-n", ns, "servers.policy.linkerd.io", "broken"],
    )?;
    let took = w.wait(
        9090,
        "port 9090 allowed once Server broken is gone",
        |srv| proxy_verdict(srv, &unmeshed, Some("/")).unwrap_or(false),
    )?;
    println!("unreadable Server deleted -> 9090 allowed again in {took:.1?}");
    Ok(())
}
