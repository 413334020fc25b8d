//! `weft diagnostics` against real proxies in ports mode: each proxy's
//! metrics, and the policy a proxy holds for a port beside what the
//! resources say, agreeing with the control plane's files and differing
//! from an edited copy; bad input is one line with exit 2.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Scratch;
use common::mesh::{free_port, start_proxy};
use common::proc::{http_get, poll};
use testbed::http_app::{self, Req};

const DEADLINE: Duration = Duration::from_secs(30);
const FE: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";
const INTRUDER: &str = "intruder.demo.serviceaccount.identity.weft.cluster.local";
const GUIDE: &str = include_str!("fixtures/guide/policy.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_show_what_proxies_hold_beside_the_resources() {
    let s = Scratch::new();
    s.guide_material();
    let (app, be_in, fe_in) = common::mesh::backend_and(&s, "frontend");
    let policy = GUIDE.replace("port: 8080", &format!("port: {app}"));
    s.write("resources/policy.yaml", &policy);
    let cp = s.control_plane(&["--resources", "resources"]);
    let admin = cp.addr("admin listening on").to_string();
    let backend = start_proxy(&s, "backend", be_in, &cp, &[], &[]);
    let local = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let frontend = start_proxy(
        &s,
        "frontend",
        fe_in,
        &cp,
        &[format!("{local}=demo/backend:{app}")],
        &[],
    );
    for p in [&backend, &frontend] {
        let a = p.addr("admin listening on");
        poll("proxy ready", DEADLINE, || {
            matches!(http_get(a, "/ready"), Ok((200, _))).then_some(())
        });
    }
    let target = format!("backend:{app}");
    let diag = |extra: &[&str]| {
        let mut args = vec![
            "diagnostics",
            "policy",
            &target,
            "-n",
            "demo",
            "--admin-addr",
            &admin,
            "--resources",
            "resources",
        ];
        args.extend_from_slice(extra);
        s.weft(&args)
    };
    // Both proxies in the fleet view before anything is asked of them.
    poll("both proxies in the fleet view", DEADLINE, || {
        let r = s.weft(&[
            "diagnostics",
            "proxy-metrics",
            "frontend",
            "-n",
            "demo",
            "--admin-addr",
            &admin,
        ]);
        (r.code == 0 && diag(&[]).code == 0).then_some(())
    });

    // No connection yet on the port: the proxy has nothing to compare.
    let before = diag(&[]).ok();
    println!("before any connection:\n{}", before.stdout);
    assert!(
        before
            .stdout
            .contains("holds no policy for this port (not followed)"),
        "{}",
        before.stdout
    );
    assert!(
        before.stdout.contains("server:backend-server (detect)"),
        "{}",
        before.stdout
    );

    // One request through frontend: backend now follows the port's policy.
    let conn = tokio::net::TcpStream::connect(local).await.unwrap();
    let reply = http_app::h1(conn, Req::get("/hello")).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let same = poll("backend holds the port's policy", DEADLINE, || {
        let r = diag(&[]);
        (r.code == 0 && r.stdout.contains("holds the same policy")).then_some(r)
    });
    println!("after a request:\n{}", same.stdout);
    assert!(
        same.stdout.contains(FE),
        "the grant names frontend: {}",
        same.stdout
    );

    // With --from: explain's verdict on the same resources.
    let allowed = diag(&["--from", FE, "--path", "/hello"]).ok();
    assert!(
        allowed.stdout.contains("ALLOWED: GET /hello from"),
        "{}",
        allowed.stdout
    );
    println!("with --from:\n{}", allowed.stdout);
    let denied = diag(&["--from", INTRUDER]).refused(1);
    assert!(denied.stdout.contains("DENIED"), "{}", denied.stdout);
    assert!(
        denied.stdout.contains("holds the same policy"),
        "{}",
        denied.stdout
    );

    // An edited copy of the resources (intruder instead of frontend): the
    // proxy holds another policy, named field by field; exit 1.
    std::fs::create_dir(s.path("edited")).unwrap();
    s.write(
        "edited/workloads.yaml",
        std::fs::read_to_string(s.path("resources/workloads.yaml")).unwrap(),
    );
    s.write(
        "edited/policy.yaml",
        policy.replace("name: frontend\n", "name: intruder\n"),
    );
    let mut args: Vec<&str> = vec![
        "diagnostics",
        "policy",
        &target,
        "-n",
        "demo",
        "--admin-addr",
    ];
    args.extend([admin.as_str(), "--resources", "edited", "-o", "json"]);
    let text = s.weft(&args[..args.len() - 2]).refused(1);
    println!("against an edited copy:\n{}{}", text.stdout, text.stderr);
    let differs = s.weft(&args).refused(1);
    let report: serde_json::Value = serde_json::from_str(&differs.stdout).unwrap();
    let d = report["proxies"][0]["differences"].as_array().unwrap();
    // Detect: the connection-level grant and the HTTP route's, each named.
    assert_eq!(d.len(), 2, "{d:?}");
    for (d, part) in d.iter().zip(["connection authorizations", "routes"]) {
        assert_eq!(d["part"], part, "{d}");
        let (held, want) = (d["held"].as_str().unwrap(), d["want"].as_str().unwrap());
        assert!(held.contains(FE) && want.contains(INTRUDER), "{d}");
    }
    assert!(
        text.stdout
            .contains("holds another policy (connection authorizations, routes differ):"),
        "{}",
        text.stdout
    );
    assert!(
        differs
            .stderr
            .contains("1 hold another policy than the resources give"),
        "{}",
        differs.stderr
    );

    // Metrics, one header per proxy as linkerd prints them.
    let m = s
        .weft(&[
            "diagnostics",
            "proxy-metrics",
            "backend",
            "-n",
            "demo",
            "--admin-addr",
            &admin,
        ])
        .ok();
    assert!(
        m.stdout
            .starts_with("#\n# POD demo/backend (1 of 1) at 127.0.0.1:"),
        "{}",
        &m.stdout[..m.stdout.len().min(200)]
    );
    assert!(
        m.stdout.contains("\ntcp_open_total{"),
        "backend's connection counter is there"
    );

    // Bad input: one line each, exit 2.
    let cmd = |what: &str, target: &str, admin: &str, dir: Option<&str>| -> Vec<String> {
        let mut a = vec![
            "diagnostics",
            what,
            target,
            "-n",
            "demo",
            "--admin-addr",
            admin,
        ];
        a.extend(dir.map(|d| ["--resources", d]).into_iter().flatten());
        a.into_iter().map(String::from).collect()
    };
    let policy_in = |target: &str, dir: &str| cmd("policy", target, &admin, Some(dir));
    for (args, says) in [
        (policy_in("backend", "resources"), "expected WORKLOAD:PORT"),
        (policy_in("backend:0", "resources"), "PORT 1-65535"),
        (
            policy_in("nobody:80", "resources"),
            "no ExternalWorkload or meshed Pod demo/nobody",
        ),
        (policy_in(&target, "missing"), "missing: cannot read"),
        (
            cmd("proxy-metrics", "nobody", &admin, None),
            "no proxy of workload demo/nobody",
        ),
        (
            cmd("proxy-metrics", "backend", "127.0.0.1:1", None),
            "no answer from 127.0.0.1:1",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = s.weft(&args).refused(2);
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(says),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    }
}
