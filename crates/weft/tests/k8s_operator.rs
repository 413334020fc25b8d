//! The operator listener in Kubernetes mode, bound to the control plane
//! pod's address (not loopback), reached with bearer tokens: the API server
//! says who a token names (TokenReview) and whether RBAC lets that user do
//! what the request asks (SubjectAccessReview on operator.weft.dev, the
//! shipped Roles weft-operator and weft-operator-view). A caller with no
//! credentials, a forged token, a workload's identity token, a user with
//! no binding and a viewer asking to tap or renew are each refused with
//! the reason and counted; `weft edges`, `weft tap` and renew-now work
//! through it for the users RBAC allows; the browser guards still apply
//! to a valid token. Bad flags are one-line errors.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::kube::{
    API_AUDIENCE, control_plane_with, install_identity, kubectl, least_privilege_kubeconfig,
    serving, tenant,
};
use common::netmesh::get_in;
use common::proc::metric_sum;
use testbed::k8s::K8sEnv;

/// `weft ARGS` in the cp namespace with the operator's token and anchors:
/// (exit code, stdout + stderr).
fn weft_as(env: &K8sEnv, s: &common::Scratch, token: &str, args: &[&str]) -> (i32, String) {
    let out = env
        .cp_cmd(env!("CARGO_BIN_EXE_weft"))
        .current_dir(s.path("."))
        .args(args)
        .env("WEFT_OPERATOR_TOKEN_FILE", token)
        .env("WEFT_OPERATOR_CA", "ca.crt")
        .output()
        .expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// One raw request to the operator listener from the cp namespace.
fn raw(
    env: &K8sEnv,
    s: &common::Scratch,
    server_name: &str,
    op: SocketAddr,
    request: String,
) -> (u16, String) {
    let (ca, name) = (s.path("ca.crt"), server_name.to_string());
    testbed::in_ns(&env.cp().ns, move || {
        common::operator::tls_request(&ca, &name, op, None, &request)
    })
    .expect("enter the cp namespace")
    .expect("a TLS answer")
}

fn refusals(env: &K8sEnv, admin: SocketAddr, reason: &str) -> f64 {
    let (_, body) = get_in(&env.cp().ns, admin, "/metrics").expect("metrics");
    metric_sum(
        &body,
        "admin_refusals_total",
        &["listener=\"operator\"", &format!("reason=\"{reason}\"")],
    )
}

#[test]
fn bearer_tokens_use_the_operator_listener_as_rbac_allows() -> Result<()> {
    let Some(env) = K8sEnv::shared("bearer_tokens_use_the_operator_listener_as_rbac_allows")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let t = tenant("ops", &["alice", "viewer", "bob"], &env)?;
    install_identity(&env, &t.s, &t.cp_ns)?;
    let kc =
        t.rt.block_on(least_privilege_kubeconfig(&env, &t.client, &t.cp_ns, &t.s))?;
    let bind = format!("{}:0", env.cp().ip);
    let cp = control_plane_with(&env, &t.s, &t.cp_ns, &kc, &["--operator-addr", &bind]);
    serving(&cp);
    let op = cp.addr("operator listening on");
    let admin = cp.addr("admin listening on");
    ensure!(!op.ip().is_loopback(), "operator listener on {op}");
    let server_name = format!(
        "weft-identity.{0}.serviceaccount.identity.{0}.cluster.local",
        t.cp_ns
    );
    for (sa, role) in [("alice", "weft-operator"), ("viewer", "weft-operator-view")] {
        kubectl(
            &env,
            &[
                "create",
                "rolebinding",
                &format!("{sa}-weft"),
                "-n",
                &t.cp_ns,
                "--role",
                role,
                "--serviceaccount",
                &format!("{}:{sa}", t.ns),
            ],
        )?;
    }
    // Tokens as `kubectl create token` makes them, and a workload's
    // identity token (another audience), which is no operator's.
    let hour = Duration::from_secs(3600);
    for (sa, audience) in [
        ("alice", API_AUDIENCE),
        ("viewer", API_AUDIENCE),
        ("bob", API_AUDIENCE),
        ("alice-identity", "identity.l5d.io"),
    ] {
        let account = sa.split('-').next().unwrap_or(sa);
        let token = t.rt.block_on(testbed::k8s::api::token(
            &t.client, &t.ns, account, audience, None, hour,
        ))?;
        t.s.write(&format!("{sa}.token"), &token);
    }
    t.s.write(
        "forged.token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
    );
    let name_flag = ["--operator-server-name", server_name.as_str()];
    let edges = |token: &str| {
        let addr = op.to_string();
        let mut args = vec!["edges", "--admin-addr", addr.as_str(), "-o", "json"];
        args.extend(name_flag);
        weft_as(&env, &t.s, token, &args)
    };

    // Allowed: the full role and the view role both read.
    for who in ["alice", "viewer"] {
        let (code, out) = edges(&format!("{who}.token"));
        ensure!(code == 0, "{who}: weft edges exited {code}: {out}");
        ensure!(out.contains("\"edges\""), "{who}: {out}");
    }

    // Refused, each for its reason, each counted.
    let alice = format!("system:serviceaccount:{}:alice", t.ns);
    let bob = format!("system:serviceaccount:{}:bob", t.ns);
    let cases = [
        (
            "bob.token",
            "token_forbidden",
            format!(
                "{bob} may not get fleet.operator.weft.dev in namespace {}",
                t.cp_ns
            ),
        ),
        (
            "forged.token",
            "token_not_authenticated",
            "the API server did not authenticate the bearer token".into(),
        ),
        (
            "alice-identity.token",
            "token_not_authenticated",
            "the API server did not authenticate the bearer token".into(),
        ),
    ];
    for (token, reason, want) in &cases {
        let before = refusals(&env, admin, reason);
        let (code, out) = edges(token);
        println!("{token}: exit {code}: {}", out.trim());
        ensure!(code != 0 && out.contains(want.as_str()), "{token}: {out}");
        let after = refusals(&env, admin, reason);
        ensure!(after > before, "{reason} not counted ({before} → {after})");
    }
    let (code, out) = edges("bob.token");
    ensure!(
        out.contains("--role weft-operator-view") && code != 0,
        "the refusal says what to grant: {out}"
    );

    // Tap and renewals need more than the view role.
    let host = format!("Host: {op}\r\n");
    let token = |f: &str| t.s.read(f);
    let post = |f: &str| {
        format!(
            "POST /renew-now HTTP/1.1\r\n{host}Authorization: Bearer {}\r\nX-Weft-Operator: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            token(f)
        )
    };
    let (code, body) = raw(&env, &t.s, &server_name, op, post("viewer.token"));
    ensure!(
        code == 403
            && body.contains("may not create renewals.operator.weft.dev")
            && body.contains("--role weft-operator "),
        "viewer renew-now: {code} {body}"
    );
    let (code, body) = raw(&env, &t.s, &server_name, op, post("alice.token"));
    ensure!(code == 202, "alice renew-now: {code} {body}");
    let addr = op.to_string();
    let mut tap = vec!["tap", "nothing-here", "--admin-addr", addr.as_str()];
    tap.extend(name_flag);
    let (code, out) = weft_as(&env, &t.s, "viewer.token", &tap);
    ensure!(
        code == 2 && out.contains("may not watch tap.operator.weft.dev"),
        "viewer tap: exit {code}: {out}"
    );
    // Alice may tap: what stops her is that no proxy serves the workload.
    let (code, out) = weft_as(&env, &t.s, "alice.token", &tap);
    ensure!(
        code != 0 && !out.contains("may not") && out.contains("nothing-here"),
        "alice tap: exit {code}: {out}"
    );

    // No credentials; a token in the wrong form; a valid token from a
    // foreign page (the browser guards apply behind authentication).
    let get = |auth: &str, extra: &str| {
        format!("GET /fleet HTTP/1.1\r\n{host}{auth}{extra}Connection: close\r\n\r\n")
    };
    let (code, body) = raw(&env, &t.s, &server_name, op, get("", ""));
    ensure!(
        code == 401 && body.contains("no client certificate and no bearer token"),
        "anonymous: {code} {body}"
    );
    let (code, body) = raw(
        &env,
        &t.s,
        &server_name,
        op,
        get("Authorization: Basic YWxpY2U6eA==\r\n", ""),
    );
    ensure!(
        code == 401 && body.contains("not `Bearer TOKEN`"),
        "basic: {code} {body}"
    );
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice.token"));
    let (code, body) = raw(
        &env,
        &t.s,
        &server_name,
        op,
        get(&bearer, "Origin: https://evil.example\r\n"),
    );
    ensure!(
        code == 403 && body.contains("Origin"),
        "origin: {code} {body}"
    );
    let (code, body) = raw(&env, &t.s, &server_name, op, get(&bearer, ""));
    ensure!(
        code == 200 && body.contains("\"proxies\""),
        "alice: {code} {body}"
    );
    println!("{alice} reads /fleet over {op}; the refusals are counted");

    // Bad flags are one-line errors, exit 2.
    t.s.write("empty.token", "\n");
    for (args, want) in [
        (
            vec!["--operator-token-file", "alice.token", "edges"],
            "need --operator-ca",
        ),
        (
            vec![
                "--operator-token-file",
                "empty.token",
                "--operator-ca",
                "ca.crt",
                "edges",
            ],
            "the file is empty",
        ),
        (
            vec![
                "--operator-token-file",
                "alice.token",
                "--operator-ca",
                "ca.crt",
                "--operator-server-name",
                "not an identity",
                "edges",
            ],
            "--operator-server-name",
        ),
    ] {
        let r = t.s.weft(&args);
        ensure!(
            r.code == 2 && r.stderr.contains(want) && r.stderr.trim().lines().count() == 1,
            "{args:?}: {} {}",
            r.code,
            r.stderr
        );
    }
    Ok(())
}
