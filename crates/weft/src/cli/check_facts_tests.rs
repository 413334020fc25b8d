use std::collections::BTreeMap;

use pki::check::Status;
use serde_json::json;
use time::macros::datetime;

use super::*;

#[test]
fn server_versions_parse_with_provider_suffixes() {
    let v = parse_server_version("1", "29+", "v1.29.3-gke.1").unwrap();
    assert_eq!((v.major, v.minor), (1, 29));
    assert!(parse_server_version("1", "x", "v?").is_err());
}

#[test]
fn native_sidecars_need_1_29() {
    let at = |minor| ServerVersion {
        major: 1,
        minor,
        git: format!("v1.{minor}.0"),
    };
    assert_eq!(native_sidecars(&at(28)).result, Status::Error);
    assert!(native_sidecars(&at(28)).error.contains("v1.28.0"));
    assert_eq!(native_sidecars(&at(29)).result, Status::Success);
    assert_eq!(native_sidecars(&at(36)).result, Status::Success);
}

#[test]
fn clock_skew_beyond_the_backdating_fails() {
    let sent = datetime!(2026-12-02 07:00:00 UTC);
    let received = datetime!(2026-12-02 07:00:01 UTC);
    // One-second resolution and the round trip are slack, not skew.
    assert_eq!(clock_skew(sent, sent, received).result, Status::Success);
    let near = datetime!(2026-12-02 07:00:21 UTC);
    assert_eq!(clock_skew(near, sent, received).result, Status::Success);
    let far = datetime!(2026-12-02 07:00:30 UTC);
    let r = clock_skew(far, sent, received);
    assert_eq!(r.result, Status::Error);
    assert!(r.error.contains("28s apart"), "{}", r.error);
    let behind = datetime!(2026-12-02 06:59:00 UTC);
    assert_eq!(clock_skew(behind, sent, received).result, Status::Error);
}

#[test]
fn http_dates_parse() {
    assert_eq!(
        parse_http_date("Wed, 02 Dec 2026 07:15:33 GMT").unwrap(),
        datetime!(2026-12-02 07:15:33 UTC)
    );
    assert!(parse_http_date("yesterday").is_err());
}

#[test]
fn needed_access_is_per_group_resource_and_namespace() {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a", "namespace": "weft"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b", "namespace": "weft"}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "w"}}),
    ];
    let got = needed_access(&objects);
    let names: Vec<String> = got.iter().map(Access::name).collect();
    assert_eq!(
        names,
        [
            "namespaces",
            "secrets in namespace weft",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        ]
    );
    let answers = vec![
        (got[0].clone(), Ok(true)),
        (got[1].clone(), Ok(false)),
        (got[2].clone(), Err("timeout".into())),
    ];
    let checks = access_checks(&answers);
    assert_eq!(checks[0].result, Status::Success);
    assert_eq!(
        checks[1].description,
        "can create secrets in namespace weft"
    );
    assert_eq!(checks[1].result, Status::Error);
    assert!(checks[2].error.contains("timeout"));
}

fn ns(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    Namespace {
        name: name.into(),
        labels: map(labels),
        annotations: map(annotations),
    }
}

#[test]
fn pod_security_baseline_and_restricted_forbid_net_admin_where_weft_meshes() {
    let enforce = "pod-security.kubernetes.io/enforce";
    let inject = ("linkerd.io/inject", "enabled");
    let all = [
        ns("plain", &[(enforce, "restricted")], &[]),
        ns("ok", &[(enforce, "privileged")], &[inject]),
        ns("unlabelled", &[], &[inject]),
    ];
    assert_eq!(pod_security(&all).result, Status::Success);
    for level in ["baseline", "restricted"] {
        let bad = ns("web", &[(enforce, level)], &[inject]);
        let r = pod_security(&[bad]);
        assert_eq!(r.result, Status::Error, "{level}");
        assert!(
            r.error.contains(&format!("web ({enforce}={level})")),
            "{}",
            r.error
        );
    }
    let required = ns(
        "req",
        &[(enforce, "baseline"), ("weft.dev/mesh", "required")],
        &[],
    );
    assert_eq!(pod_security(&[required]).result, Status::Error);
}

fn crd(name: &str, schema: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"versions": [
        {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}}]}})
}

#[test]
fn crds_are_current_when_versions_and_schema_equal_the_shipped_ones() {
    let shipped = vec![
        crd("a.weft.dev", json!({"type": "object"})),
        crd("b.weft.dev", json!({"type": "object"})),
    ];
    let mut stored = BTreeMap::new();
    // The API server adds metadata and status beside the spec.
    let mut a = crd("a.weft.dev", json!({"type": "object"}));
    a["metadata"]["uid"] = json!("u");
    a["status"] = json!({"acceptedNames": {}});
    stored.insert("a.weft.dev".to_string(), a);
    let st = crd_state(&shipped, &stored);
    assert_eq!(st.missing, ["b.weft.dev"]);
    assert_eq!(crds_current(&st).result, Status::Error);
    assert!(crds_current(&st).error.contains("missing: b.weft.dev"));
    assert_eq!(crds_installable(&st, true).result, Status::Success);
    assert_eq!(crds_installable(&st, false).result, Status::Error);

    stored.insert(
        "b.weft.dev".to_string(),
        crd("b.weft.dev", json!({"type": "object", "properties": {}})),
    );
    let st = crd_state(&shipped, &stored);
    assert_eq!(
        st.outdated,
        ["b.weft.dev (spec.versions[0].schema.properties: {} in the cluster, null shipped)"]
    );
    assert!(crds_current(&st).error.contains("b.weft.dev"));

    stored.insert("b.weft.dev".to_string(), shipped[1].clone());
    let st = crd_state(&shipped, &stored);
    assert_eq!(st, CrdState::default());
    assert_eq!(crds_current(&st).result, Status::Success);
}

#[test]
fn replicas_ready_against_desired() {
    assert_eq!(replicas("weft/cp", Some((2, 2))).result, Status::Success);
    assert_eq!(
        replicas("weft/cp", Some((2, 2))).description,
        "control plane replicas are ready (2/2)"
    );
    let r = replicas("weft/cp", Some((2, 1)));
    assert_eq!(r.result, Status::Error);
    assert!(r.error.contains("1 of 2"), "{}", r.error);
    assert_eq!(replicas("weft/cp", Some((0, 0))).result, Status::Error);
    assert!(
        replicas("weft/cp", None)
            .error
            .contains("no Deployment weft/cp")
    );
}

#[test]
fn the_mode_follows_files_pre_kubeconfig_then_proxy() {
    use crate::cli::check::{Mode, mode};
    assert_eq!(mode(true, false, true), Mode::Files);
    assert_eq!(mode(false, true, true), Mode::Pre);
    assert_eq!(mode(false, false, true), Mode::Cluster);
    assert_eq!(mode(false, false, false), Mode::Local);
}

#[test]
fn equal_numbers_of_other_representations_are_no_difference() {
    let a = json!({"maximum": 65535, "list": [1, 2]});
    let b = json!({"maximum": 65535.0, "list": [1, 2]});
    assert_eq!(difference("s", &a, &b), None);
    let c = json!({"maximum": 65535, "list": [1, 3]});
    assert_eq!(
        difference("s", &a, &c).unwrap(),
        "s.list[1]: 2 in the cluster, 3 shipped"
    );
}
