//! Pods as workloads, Kubernetes-mode snapshots and exports: pure rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::translate::{DEFAULT_CLUSTER_NETWORKS, PolicyDefaults, Unsettled, translate};
use crate::{Client, Facts, Request, Traffic, judge};

const CP: &str = "weft";
const TD: &str = "cluster.local";

fn pod(extra_meta: &str, spec: &str, status: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels:
    app: web
{extra_meta}spec:
{spec}status:
{status}"
    )
}

const MARKED: &str = "    linkerd.io/control-plane-ns: weft\n";
const SPEC: &str = "  serviceAccountName: web
  containers:
  - name: app
    ports:
    - containerPort: 8080
      name: http
    - containerPort: 9090
      name: admin
    - containerPort: 5353
      protocol: UDP
    livenessProbe:
      httpGet:
        port: admin
    readinessProbe:
      httpGet:
        path: /ready
        port: 9090
    startupProbe:
      httpGet:
        path: /secure
        port: 8443
        scheme: HTTPS
  - name: linkerd-proxy
    env:
    - name: LINKERD2_PROXY_INBOUND_LISTEN_ADDR
      value: 0.0.0.0:4243
";
const RUNNING: &str = "  phase: Running\n  podIP: 10.10.0.130\n  podIPs:\n  - ip: 10.10.0.130\n";

fn parsed(text: &str) -> Pod {
    match parse_file(&PathBuf::from("p.yaml"), text)
        .expect("parses")
        .remove(0)
    {
        Object::Pod(p) => p,
        other => panic!("not a pod: {other:?}"),
    }
}

#[test]
fn a_marked_running_pod_is_a_workload_with_its_service_account_identity() {
    let p = parsed(&pod(MARKED, SPEC, RUNNING));
    let w = p.workload(CP, TD).expect("meshed");
    assert_eq!(w.kind, WorkloadKind::Pod);
    assert_eq!(
        w.identity(CP).unwrap().to_string(),
        "web.demo.serviceaccount.identity.weft.cluster.local"
    );
    assert_eq!(
        w.ips,
        vec!["10.10.0.130".parse::<std::net::IpAddr>().unwrap()]
    );
    // TCP ports only, with their names.
    assert_eq!(
        w.ports,
        vec![(8080, Some("http".into())), (9090, Some("admin".into()))]
    );
    assert_eq!(w.proxy_port, Some(Ok(4243)));
    // The liveness probe by port name with the default path, the readiness
    // probe by number; the HTTPS probe is not the kubelet's plain HTTP.
    assert_eq!(
        w.probes,
        vec![
            ProbeRoute {
                port: 9090,
                path: "/".into()
            },
            ProbeRoute {
                port: 9090,
                path: "/ready".into()
            },
        ]
    );
    assert_eq!(w.workload_string(), r#"{"ns":"demo","pod":"web-1"}"#);
}

#[test]
fn unmarked_finished_and_host_network_pods_are_not_workloads() {
    let no_sa = SPEC.replace("  serviceAccountName: web\n", "");
    let default_sa = parsed(&pod(MARKED, &no_sa, RUNNING));
    assert!(
        default_sa
            .workload(CP, TD)
            .unwrap()
            .identity
            .starts_with("default.demo."),
        "a pod without serviceAccountName runs as default"
    );
    assert!(parsed(&pod("", SPEC, RUNNING)).workload(CP, TD).is_none());
    let other_cp = "    linkerd.io/control-plane-ns: linkerd\n";
    assert!(
        parsed(&pod(other_cp, SPEC, RUNNING))
            .workload(CP, TD)
            .is_none()
    );
    for phase in ["Succeeded", "Failed"] {
        let done = RUNNING.replace("Running", phase);
        assert!(
            parsed(&pod(MARKED, SPEC, &done)).workload(CP, TD).is_none(),
            "{phase}"
        );
    }
    let host = format!("  hostNetwork: true\n{SPEC}");
    assert!(
        parsed(&pod(MARKED, &host, RUNNING))
            .workload(CP, TD)
            .is_none()
    );
}

#[test]
fn a_pod_field_of_the_wrong_shape_refuses_the_pod() {
    let bad = SPEC.replace("containerPort: 8080", "containerPort: eighty");
    let e = parse_file(&PathBuf::from("p.yaml"), &pod(MARKED, &bad, RUNNING)).unwrap_err();
    assert!(e[0].to_string().contains("spec"), "{e:?}");
}

fn defaults() -> PolicyDefaults {
    PolicyDefaults {
        default_policy: DefaultPolicy::Deny,
        cluster_networks: DEFAULT_CLUSTER_NETWORKS
            .split(',')
            .map(|c| c.parse().unwrap())
            .collect(),
        control_plane_ns: CP.into(),
        trust_domain: TD.into(),
        detect_timeout: std::time::Duration::from_secs(10),
    }
}

fn snapshot_of(texts: &[&str]) -> Snapshot {
    let mut read = BTreeMap::new();
    for (i, t) in texts.iter().enumerate() {
        let p = PathBuf::from(format!("f{i}.yaml"));
        read.insert(p.clone(), read_document(&p, t, CP, TD));
    }
    merge(&Snapshot::default(), Ok(read))
}

#[test]
fn probes_are_allowed_unauthenticated_under_deny_and_nothing_else_is() {
    let s = snapshot_of(&[&pod(MARKED, SPEC, RUNNING)]);
    let w = s
        .workload(WorkloadKind::Pod, "demo", "web-1", CP, TD)
        .expect("meshed");
    let anyone = Client {
        identity: None,
        tls: false,
        ip: "10.10.0.1".parse().unwrap(),
    };
    let get = |port: u16, path: &str| {
        let t = translate(&s, &w, port, &defaults(), &Unsettled::default());
        let server = crate::Server::try_from(t.server).expect("converts");
        let req = Request {
            method: "GET".into(),
            path: path.into(),
            headers: vec![],
        };
        judge(&server, Facts::default(), &anyone, Traffic::Http(&req)).allowed
    };
    assert!(get(9090, "/ready"));
    assert!(get(9090, "/"));
    assert!(!get(9090, "/ready/more"));
    assert!(
        !get(8080, "/ready"),
        "probes are allowed on their own port only"
    );
    // Only GET, the kubelet's method.
    let t = translate(&s, &w, 9090, &defaults(), &Unsettled::default());
    let server = crate::Server::try_from(t.server).expect("converts");
    let post = Request {
        method: "POST".into(),
        path: "/ready".into(),
        headers: vec![],
    };
    assert!(!judge(&server, Facts::default(), &anyone, Traffic::Http(&post)).allowed);
}

#[test]
fn pods_are_selected_by_pod_selectors_only() {
    let server = |selector: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: web
  namespace: demo
spec:
  {selector}:
    matchLabels:
      app: web
  port: http
  proxyProtocol: HTTP/1
"
        )
    };
    let by_pod = snapshot_of(&[&pod(MARKED, SPEC, RUNNING), &server("podSelector")]);
    let w = by_pod
        .workload(WorkloadKind::Pod, "demo", "web-1", CP, TD)
        .unwrap();
    let t = translate(&by_pod, &w, 8080, &defaults(), &Unsettled::default());
    assert_eq!(t.server.labels.get("name").map(String::as_str), Some("web"));
    let by_ext = snapshot_of(&[
        &pod(MARKED, SPEC, RUNNING),
        &server("externalWorkloadSelector"),
    ]);
    let w = by_ext
        .workload(WorkloadKind::Pod, "demo", "web-1", CP, TD)
        .unwrap();
    let t = translate(&by_ext, &w, 8080, &defaults(), &Unsettled::default());
    assert_eq!(
        t.server.labels.get("kind").map(String::as_str),
        Some("default")
    );
}

const AUTHZ: &str = "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow
  namespace: demo
spec:
  targetRef:
    kind: Namespace
    name: demo
  requiredAuthenticationRefs:
  - kind: ServiceAccount
    name: web
";

#[test]
fn replace_keeps_no_last_good_version_unlike_a_directory() {
    let origin = PathBuf::from("kube/authorizationpolicies/demo/allow");
    let good = read_document(&origin, AUTHZ, CP, TD);
    let bad_text = AUTHZ.replace("kind: ServiceAccount", "kind: Secret");
    let bad = read_document(&origin, &bad_text, CP, TD);
    assert!(matches!(bad, FileOutcome::Refused(_)));
    let one = |o: FileOutcome| BTreeMap::from([(origin.clone(), o)]);
    let held = Arc::new(BTreeMap::new());

    let first = replace(&Snapshot::default(), one(good.clone()), held.clone());
    assert!(first.loaded);
    assert_eq!(first.objects.len(), 1);
    let refused = replace(&first, one(bad.clone()), held.clone());
    assert!(
        refused.objects.is_empty(),
        "a refused object keeps nothing in force"
    );
    assert!(refused.generation > first.generation);
    // The directory rule, for contrast: the last good version stays.
    let dir_first = merge(&Snapshot::default(), Ok(one(good.clone())));
    assert_eq!(merge(&dir_first, Ok(one(bad))).objects.len(), 1);
    // Same content, same generation: nothing to publish.
    let again = replace(&refused, one(good.clone()), held.clone());
    assert_eq!(
        replace(&again, one(good), held).generation,
        again.generation
    );
}

#[test]
fn an_export_judges_each_list_item_alone() {
    let list = format!(
        "apiVersion: v1
kind: List
items:
- {}
- {}
",
        serde_json::to_string(&serde_saphyr::from_str::<serde_json::Value>(AUTHZ).unwrap())
            .unwrap(),
        serde_json::to_string(
            &serde_saphyr::from_str::<serde_json::Value>(
                &AUTHZ
                    .replace("name: allow", "name: broken")
                    .replace("kind: ServiceAccount", "kind: Secret")
            )
            .unwrap()
        )
        .unwrap(),
    );
    let out = read_export(&PathBuf::from("export.yaml"), &list, CP, TD);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0, PathBuf::from("export.yaml#1"));
    assert!(matches!(out[0].1, FileOutcome::Parsed { .. }));
    assert!(out[0].2.is_none());
    assert!(matches!(out[1].1, FileOutcome::Refused(_)));
    assert!(out[1].2.as_deref().is_some_and(|t| t.contains("broken")));
    // Not YAML at all: one refusal, with the text (so every namespace is unsettled).
    let garbage = read_export(&PathBuf::from("g.yaml"), "key: [unclosed", CP, TD);
    assert_eq!(garbage.len(), 1);
    assert!(matches!(garbage[0].1, FileOutcome::Refused(_)));
}
