//! `weft policy explain` over the guide's manifests: verdicts, reasons, exit codes.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::Scratch;
use policy::testutil::{authorization_policy, external_workload};

const FE: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";

fn setup() -> Scratch {
    let s = Scratch::new();
    std::fs::create_dir(s.path("res")).unwrap();
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/guide/policy.yaml"
    ))
    .unwrap();
    s.write("res/policy.yaml", guide);
    s.write(
        "res/workloads.yaml",
        external_workload(
            "demo",
            "backend",
            "backend.demo.serviceaccount.identity.weft.cluster.local",
            "10.0.0.2",
            "  labels:\n    app: backend\n",
            &[(8080, None), (9090, None)],
        ),
    );
    s
}

fn explain(s: &Scratch, from: &str, to: &str, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "policy",
        "explain",
        "--resources",
        "res",
        "--from",
        from,
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    s.weft(&args)
}

#[test]
fn verdicts_and_exit_codes() {
    let s = setup();
    let r = explain(&s, FE, "demo/backend:8080", &[]).ok();
    assert!(r.stdout.starts_with("ALLOWED"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("authorizationpolicy:backend-allow-frontend allows"),
        "{}",
        r.stdout
    );

    let r = explain(
        &s,
        "other.demo.serviceaccount.identity.weft.cluster.local",
        "demo/backend:8080",
        &[],
    )
    .refused(1);
    assert!(
        r.stdout.starts_with("DENIED") && r.stdout.contains("is not among its identities"),
        "{}",
        r.stdout
    );
    explain(&s, "unmeshed", "demo/backend:8080", &[]).refused(1);
    // No Server on 9090: the default decides.
    explain(&s, "unmeshed", "demo/backend:9090", &[]).ok();
    explain(
        &s,
        "unmeshed",
        "demo/backend:9090",
        &["--default-inbound-policy", "deny"],
    )
    .refused(1);
    let r = explain(
        &s,
        "10.9.9.9",
        "demo/backend:9090",
        &[
            "--default-inbound-policy",
            "cluster-unauthenticated",
            "-o",
            "json",
        ],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["server"], "default:cluster-unauthenticated");
    explain(
        &s,
        "192.0.2.1",
        "demo/backend:9090",
        &["--default-inbound-policy", "cluster-unauthenticated"],
    )
    .refused(1);
}

#[test]
fn bad_resources_never_widen_access() {
    let s = setup();
    // Deleting the MeshTLSAuthentication denies frontend, and says why.
    let guide = s.read("res/policy.yaml");
    let without: String = guide.split("---").take(2).collect::<Vec<_>>().join("---");
    s.write("res/policy.yaml", without);
    let r = explain(&s, FE, "demo/backend:8080", &[]).refused(1);
    assert!(
        r.stdout
            .contains("MeshTLSAuthentication demo/frontend-sa does not exist"),
        "{}",
        r.stdout
    );

    // A policy with two identity refs is refused as a whole, named with its field.
    s.write(
        "res/policy.yaml",
        format!(
            "{guide}---\n{}",
            authorization_policy(
                "demo",
                "two-ids",
                "backend-server",
                "\n  - kind: ServiceAccount\n    name: a\n  - kind: ServiceAccount\n    name: b\n",
            )
        ),
    );
    // The whole file (with the Server) is refused: frontend loses its
    // authorization too, and the default does NOT stand in for the Server.
    let r = explain(&s, FE, "demo/backend:8080", &[]).refused(1);
    assert!(
        r.stdout.contains("denying instead of applying the default"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("policy.yaml") && r.stdout.contains("spec.requiredAuthenticationRefs"),
        "{}",
        r.stdout
    );
    // Garbage YAML and an unknown kind are reported too; nothing widens.
    s.write("res/junk.yaml", "kind: [not yaml");
    s.write(
        "res/unknown.yaml",
        "apiVersion: example.com/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    );
    let r = explain(&s, "unmeshed", "demo/backend:8080", &[]).refused(1);
    assert!(
        r.stdout.contains("junk.yaml") && r.stdout.contains("unknown.yaml"),
        "{}",
        r.stdout
    );
}

/// The module implementing explain reaches policy only through `policy` (and
/// identities through `pki`): never the control plane's or the proxy's own
/// code, so it cannot disagree with them by reimplementing a step.
#[test]
fn explain_uses_only_policy_and_pki() {
    let src = include_str!("../src/cli/policy.rs");
    let allowed = [
        "policy::",
        "pki::",
        "std::",
        "crate::",
        "super::",
        "self::",
        "anyhow",
        "clap::",
        "serde::",
        "serde_json",
    ];
    let mut uses = 0;
    // `use` items may span lines: join each one up to its semicolon.
    let mut item = String::new();
    for line in src.lines().map(str::trim) {
        if item.is_empty() && !line.starts_with("use ") && !line.starts_with("pub use ") {
            continue;
        }
        item.push_str(line);
        if !line.ends_with(';') {
            continue;
        }
        let path = item
            .trim_start_matches("pub ")
            .trim_start_matches("use ")
            .trim_start_matches("::");
        assert!(
            allowed.iter().any(|a| path.starts_with(a)),
            "src/cli/policy.rs: `{item}` is not from policy, pki or a general-purpose crate"
        );
        uses += 1;
        item.clear();
    }
    assert!(uses >= 3, "found only {uses} use items");
    // Nor a fully qualified path into them anywhere in the file.
    for banned in ["control_plane::", "proxy::", "identity::"] {
        for (n, line) in src.lines().enumerate() {
            let hit = line.match_indices(banned).any(|(i, _)| {
                // `pki::identity::` is pki's own module, not the identity crate.
                !line[..i].ends_with("::") && !line[..i].ends_with('_')
            });
            assert!(!hit, "src/cli/policy.rs:{}: uses {banned}: {line}", n + 1);
        }
    }
}

#[test]
fn bad_input_exits_2() {
    let s = setup();
    for (from, to, extra) in [
        ("nobody", "demo/backend:8080", vec![]),
        (FE, "backend:8080", vec![]),
        (FE, "demo/missing:8080", vec![]),
        (
            FE,
            "demo/backend:8080",
            vec!["--default-inbound-policy", "allow-all"],
        ),
        (FE, "demo/backend:8080", vec!["--resources", "nope"]),
    ] {
        let r = explain(&s, from, to, &extra).refused(2);
        assert!(
            r.stderr.starts_with("error: "),
            "{from} {to} {extra:?}: {}",
            r.stderr
        );
    }
}

/// WatchPort serves the translated policy to the workload's own proxy only,
/// and streams changes as the resource files change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_port_streams_live_policy_to_the_workload_only() {
    use linkerd2_proxy_api::inbound::PortSpec;
    use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let s = setup();
    s.guide_material();
    s.write(
        "res/frontend.yaml",
        external_workload(
            "demo",
            "frontend",
            "frontend.demo.serviceaccount.identity.weft.cluster.local",
            "10.0.0.3",
            "",
            &[(7000, None)],
        ),
    );
    let cp = s.control_plane(&["--resources", "res", "--reread-interval", "1s"]);
    let ia = cp.addr("identity listening on").to_string();
    let pa = cp.addr("policy listening on");
    for sa in ["backend", "frontend"] {
        let tok = s.token(sa);
        let id = format!("{sa}.demo.serviceaccount.identity.weft.cluster.local");
        s.weft(&[
            "certs",
            "request",
            &id,
            &format!("{sa}.crt"),
            &format!("{sa}.key"),
            "--control-plane",
            &ia,
            "--roots",
            "ca.crt",
            "--token-file",
            &tok,
        ])
        .ok();
    }
    let client = |sa: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(s.read("ca.crt")))
            .domain_name("weft-identity.weft.serviceaccount.identity.weft.cluster.local")
            .identity(Identity::from_pem(
                s.read(&format!("{sa}.crt")),
                s.read(&format!("{sa}.key")),
            ));
        Endpoint::from_shared(format!("https://{pa}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let spec = PortSpec {
        workload: r#"{"ns":"demo","external_workload":"backend"}"#.into(),
        port: 8080,
    };
    // Another workload's proxy may not read backend's policy.
    let mut fe = InboundServerPoliciesClient::new(client("frontend").connect().await.unwrap());
    let e = fe.get_port(spec.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());

    let mut be = InboundServerPoliciesClient::new(client("backend").connect().await.unwrap());
    let mut stream = be.watch_port(spec).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        first.labels.get("name").map(String::as_str),
        Some("backend-server")
    );
    let fe_client = policy::Client {
        identity: Some(FE.parse().unwrap()),
        tls: true,
        ip: "10.0.0.3".parse().unwrap(),
    };
    // Judged as the proxy judges it: converted on receipt, then `judge`.
    let allowed = |s: &linkerd2_proxy_api::inbound::Server| {
        let typed = policy::Server::try_from(s.clone()).expect("a well-formed policy");
        policy::judge(
            &typed,
            policy::Facts::default(),
            &fe_client,
            policy::Traffic::NotHttp,
        )
        .allowed
    };
    assert!(allowed(&first));

    // Delete the MeshTLSAuthentication: the stream delivers a policy that denies frontend.
    let guide = s.read("res/policy.yaml");
    let without: String = guide.split("---").take(2).collect::<Vec<_>>().join("---");
    s.write("res/policy.yaml", without);
    let next = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
        .await
        .expect("an update within 30s")
        .unwrap()
        .unwrap();
    assert!(!allowed(&next));
    // Delete the Server: the port reopens to the default.
    s.write("res/policy.yaml", "");
    let mut last = next;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while last.labels.get("kind").map(String::as_str) != Some("default") {
        assert!(
            std::time::Instant::now() < deadline,
            "no default policy within 30s"
        );
        last = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        last.labels.get("name").map(String::as_str),
        Some("all-unauthenticated")
    );
}
