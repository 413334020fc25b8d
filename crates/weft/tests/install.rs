//! `weft install` / `weft uninstall` without a cluster: deterministic
//! output, the objects and fields the issue asks for, and refusals of
//! broken identity files before anything is printed.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::Scratch;
use serde_json::Value;

use common::GUIDE_FILES as FILES;

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("not valid YAML: {e}\n{text}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn install(s: &Scratch, extra: &[&str]) -> common::Run {
    let mut args = vec!["install", "--ignore-cluster"];
    args.extend(FILES);
    args.extend(extra);
    s.weft(&args)
}

#[test]
fn install_prints_every_object_deterministically() {
    let s = Scratch::new();
    s.guide_material();
    let first = install(&s, &["--namespace", "mesh", "--ha"]).ok();
    let second = install(&s, &["--namespace", "mesh", "--ha"]).ok();
    assert_eq!(
        first.stdout, second.stdout,
        "the same input gives the same bytes"
    );
    let d = docs(&first.stdout);
    let kinds: Vec<String> = d
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace/mesh",
            "ServiceAccount/weft-identity",
            "ClusterRole/weft-control-plane",
            "ClusterRoleBinding/weft-control-plane",
            "Role/weft-control-plane",
            "RoleBinding/weft-control-plane",
            "Role/weft-operator",
            "Role/weft-operator-view",
            "ConfigMap/weft-config",
            "ConfigMap/linkerd-identity-trust-roots",
            "Secret/linkerd-identity-issuer",
            "Deployment/weft-control-plane",
            "PodDisruptionBudget/weft-control-plane",
            "Service/weft-identity",
            "Service/weft-destination",
            "Service/weft-policy",
            "Service/weft-webhook",
            "MutatingWebhookConfiguration/weft-injector",
        ]
    );
    for o in &d {
        if o["kind"] != "Namespace"
            && !o["kind"].as_str().unwrap().starts_with("Cluster")
            && o["kind"] != "MutatingWebhookConfiguration"
        {
            assert_eq!(o["metadata"]["namespace"], "mesh", "{o}");
        }
    }
    assert!(
        !first.stdout.contains("namespace: weft\n"),
        "the namespace is substituted everywhere"
    );
    // Identity objects hold the files as given.
    let cm = find(&d, "ConfigMap", "linkerd-identity-trust-roots");
    assert_eq!(cm["data"]["ca-bundle.crt"], s.read("ca.crt"));
    let secret = find(&d, "Secret", "linkerd-identity-issuer");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let b64 = |f: &str| s.openssl(&["base64", "-A", "-in", f]).ok().stdout;
    assert_eq!(secret["data"]["tls.crt"], b64("issuer.crt"));
    assert_eq!(secret["data"]["tls.key"], b64("issuer.key"));
    assert_eq!(secret["data"]["ca.crt"], b64("ca.crt"));
    // The Deployment: HA, non-root, read-only, probes on the probe-only port.
    let dep = find(&d, "Deployment", "weft-control-plane");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "weft-identity");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "probes");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--controller-namespace", "mesh"]),
        "{args:?}"
    );
    // No local state with --kubernetes: no --state-dir, no volume.
    assert!(!args.contains(&"--state-dir"), "{args:?}");
    assert!(pod.get("volumes").is_none() && c.get("volumeMounts").is_none());
    // How it was installed, recorded for `weft upgrade` (no secrets).
    let config = find(&d, "ConfigMap", "weft-config");
    let values: serde_json::Value =
        serde_json::from_str(config["data"]["values.json"].as_str().unwrap()).unwrap();
    assert_eq!(values["ha"], true);
    assert_eq!(values["externalIssuer"], false);
    assert!(!config.to_string().contains("PRIVATE KEY"));
    for (svc, port) in [
        ("weft-identity", 8080),
        ("weft-destination", 8086),
        ("weft-policy", 8090),
        ("weft-webhook", 443),
    ] {
        assert_eq!(
            find(&d, "Service", svc)["spec"]["ports"][0]["port"],
            port,
            "{svc}"
        );
    }
    // The webhook: no caBundle, the system namespaces excluded by selector.
    let wh = find(&d, "MutatingWebhookConfiguration", "weft-injector");
    let hooks = wh["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert!(h["clientConfig"].get("caBundle").is_none(), "{h}");
        assert_eq!(h["timeoutSeconds"], 10);
        let excluded = &h["namespaceSelector"]["matchExpressions"][0];
        assert_eq!(excluded["operator"], "NotIn");
        assert_eq!(
            excluded["values"],
            serde_json::json!(["kube-system", "kube-node-lease", "mesh"])
        );
    }
    let policies: Vec<&str> = hooks
        .iter()
        .map(|h| h["failurePolicy"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        ["Fail", "Ignore"],
        "Fail only where the mesh is required"
    );

    // Without --ha: one replica and no PodDisruptionBudget.
    let single = docs(&install(&s, &[]).ok().stdout);
    assert_eq!(
        find(&single, "Deployment", "weft-control-plane")["spec"]["replicas"],
        1
    );
    assert!(!single.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
    assert_eq!(find(&single, "Namespace", "weft")["kind"], "Namespace");
}

#[test]
fn crds_alone_external_issuer_and_uninstall() {
    let s = Scratch::new();
    s.guide_material();
    let crds = s.weft(&["install", "--crds"]).ok();
    assert_eq!(crds.stdout, control_plane::k8s_manifests::CRDS);
    assert!(
        docs(&crds.stdout)
            .iter()
            .all(|d| d["kind"] == "CustomResourceDefinition")
    );

    let ext = s
        .weft(&[
            "install",
            "--identity-trust-anchors-file",
            "ca.crt",
            "--identity-external-issuer",
            "--ignore-cluster",
        ])
        .ok();
    let d = docs(&ext.stdout);
    assert!(
        !d.iter().any(|o| o["kind"] == "Secret"),
        "the external issuer's Secret is not printed"
    );
    assert!(ext.stderr.contains("expected to exist"), "{}", ext.stderr);

    let un = s.weft(&["uninstall", "--namespace", "mesh"]).ok();
    let d = docs(&un.stdout);
    assert_eq!(
        d.first().unwrap()["kind"],
        "MutatingWebhookConfiguration",
        "the webhook goes first"
    );
    assert_eq!(d.last().unwrap()["kind"], "Namespace");
    assert!(!d.iter().any(|o| o["kind"] == "CustomResourceDefinition"));
    assert!(
        !un.stdout.contains("BEGIN"),
        "no key material in what to delete"
    );
    let all = docs(&s.weft(&["uninstall", "--crds"]).ok().stdout);
    assert_eq!(
        all.iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .count(),
        7
    );
}

#[test]
fn broken_identity_files_are_refused_before_anything_is_printed() {
    let s = Scratch::new();
    s.guide_material();
    let mk = |args: &[&str]| {
        let mut a = vec!["certs", "create"];
        a.extend_from_slice(args);
        s.weft(&a).ok();
    };
    mk(&[
        "other-root",
        "other.crt",
        "other.key",
        "--profile",
        "root-ca",
    ]);
    mk(&[
        "expired",
        "expired.crt",
        "expired.key",
        "--profile",
        "intermediate-ca",
        "--ca",
        "ca.crt",
        "--ca-key",
        "ca.key",
        "--not-before",
        "-48h",
        "--not-after",
        "-1h",
    ]);
    let cases = [
        (
            "expired.crt",
            "expired.key",
            "issuer cert is within its validity period",
        ),
        (
            "issuer.crt",
            "other.key",
            "issuer key matches issuer certificate",
        ),
        (
            "other.crt",
            "other.key",
            "issuer cert is issued by the trust anchor",
        ),
    ];
    for (cert, key, check) in cases {
        let r = s
            .weft(&[
                "install",
                "--identity-trust-anchors-file",
                "ca.crt",
                "--identity-issuer-certificate-file",
                cert,
                "--identity-issuer-key-file",
                key,
            ])
            .refused(2);
        assert!(r.stdout.is_empty(), "{cert}: printed {}", r.stdout);
        assert!(r.stderr.contains(check), "{cert}: {}", r.stderr);
        assert!(
            r.stderr.contains("nothing was printed") && r.stderr.contains("fix"),
            "{}",
            r.stderr
        );
        println!("{cert}/{key}: {}", r.stderr.lines().next().unwrap_or(""));
    }
    let r = s
        .weft(&["install", "--identity-trust-anchors-file", "ca.crt"])
        .refused(2);
    assert!(
        r.stderr.contains("--identity-external-issuer"),
        "{}",
        r.stderr
    );
    let r = install(&s, &["--install-gateway-api"]).refused(2);
    assert!(
        r.stdout.is_empty() && r.stderr.contains("Gateway API"),
        "{}",
        r.stderr
    );
    // No cluster to read: install will not guess that none of its identity
    // objects exist there, and upgrade has nothing to read.
    let mut args = vec!["install", "--kubeconfig", "missing.yaml"];
    args.extend(FILES);
    let r = s.weft(&args).refused(2);
    assert!(
        r.stdout.is_empty()
            && r.stderr.contains("missing.yaml")
            && r.stderr.contains("--ignore-cluster"),
        "{}",
        r.stderr
    );
    let r = s
        .weft(&["upgrade", "--kubeconfig", "missing.yaml"])
        .refused(2);
    assert!(
        r.stdout.is_empty() && r.stderr.contains("missing.yaml"),
        "{}",
        r.stderr
    );
}

/// The probe-only listener the installed Deployment's kubelet probes use:
/// /live, /ready and /metrics as the admin listener answers them, and
/// nothing else (no /fleet, no POST /renew-now).
#[test]
fn the_probe_listener_serves_probes_and_metrics_only() {
    use std::io::{Read, Write};
    let s = Scratch::new();
    s.guide_material();
    let cp = s.control_plane(&["--probe-addr", "127.0.0.1:0"]);
    let probes = cp.addr("probes listening on");
    let admin = cp.addr("admin listening on");
    let ready = common::proc::poll(
        "the control plane ready",
        std::time::Duration::from_secs(30),
        || {
            common::proc::http_get(probes, "/ready")
                .ok()
                .filter(|r| r.0 == 200)
        },
    );
    println!(
        "/ready through the probe listener: {} {}",
        ready.0,
        ready.1.trim()
    );
    let live = common::proc::http_get(probes, "/live").unwrap();
    assert_eq!(live.0, 200, "{}", live.1);
    let metrics = common::proc::http_get(probes, "/metrics").unwrap();
    assert_eq!(metrics.0, 200);
    assert!(metrics.1.contains("# TYPE"), "{}", metrics.1);
    let fleet = common::proc::http_get(probes, "/fleet").unwrap();
    assert_eq!(fleet.0, 404, "{}", fleet.1);
    assert_eq!(
        common::proc::http_get(admin, "/fleet").unwrap().0,
        200,
        "the admin listener still has it"
    );
    let mut c = std::net::TcpStream::connect(probes).unwrap();
    c.write_all(b"POST /renew-now HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.0 405"), "{resp}");
}
