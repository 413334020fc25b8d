use std::path::Path;

use super::*;

const FILE: &str = "demo/web.yaml";

fn parse(text: &str) -> Result<Vec<Object>, Vec<Problem>> {
    parse_file(Path::new(FILE), text)
}

fn refused(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(objects) => panic!("expected refusal, got {objects:?}"),
        Err(problems) => {
            assert!(!problems.is_empty());
            problems
        }
    }
}

fn workload(ns: &str, name: &str, identity: &str) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {name}
  namespace: {ns}
spec:
  meshTLS:
    identity: {identity}
    serverName: {identity}
  workloadIPs:
  - ip: 10.0.0.7
  ports:
  - port: 8080
    name: http
"
    )
}

const BACKEND_ID: &str = "backend.demo.serviceaccount.identity.weft.cluster.local";

#[test]
fn external_workload_parses() {
    let objects = parse(&workload("demo", "backend", BACKEND_ID)).unwrap();
    assert_eq!(objects.len(), 1);
    let Object::ExternalWorkload(w) = &objects[0] else {
        panic!("not a workload")
    };
    assert_eq!(w.meta.name, "backend");
    assert_eq!(w.meta.namespace.as_deref(), Some("demo"));
    assert_eq!(w.spec.mesh_tls.server_name, BACKEND_ID);
    assert_eq!(w.spec.workload_ips[0].ip.to_string(), "10.0.0.7");
    assert_eq!(w.spec.ports[0].port, 8080);
    assert_eq!(w.spec.ports[0].name.as_deref(), Some("http"));
    assert_eq!(w.identity("weft").unwrap().to_string(), BACKEND_ID);
    assert_eq!(
        objects[0].key().to_string(),
        "ExternalWorkload demo/backend"
    );
}

#[test]
fn unknown_spec_field_is_refused_naming_file_resource_and_field() {
    let text = workload("demo", "backend", BACKEND_ID).replace("    identity:", "    identty:");
    let problems = refused(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.severity, Severity::Error);
    assert_eq!(p.resource.as_deref(), Some("ExternalWorkload demo/backend"));
    assert_eq!(p.field.as_deref(), Some("spec.meshTLS"));
    assert_eq!(
        p.to_string(),
        r#"demo/web.yaml: ExternalWorkload demo/backend: spec.meshTLS: unknown field "identty", expected one of "identity", "serverName""#
    );
}

#[test]
fn unknown_field_at_spec_top_level_and_in_list_items() {
    let text = workload("demo", "backend", BACKEND_ID).replace("  ports:", "  portz:");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("spec"));
    assert!(p.message.contains("\"portz\""), "{p}");

    let text = workload("demo", "backend", BACKEND_ID).replace("    name: http", "    nmae: http");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("spec.ports[0]"));
    assert!(p.message.contains("\"nmae\""), "{p}");
}

#[test]
fn wrong_types_name_the_field() {
    let text = workload("demo", "backend", BACKEND_ID).replace("port: 8080", "port: http");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("spec.ports[0].port"));

    let text = workload("demo", "backend", BACKEND_ID).replace("port: 8080", "port: 70000");
    assert_eq!(
        refused(&text)[0].field.as_deref(),
        Some("spec.ports[0].port")
    );

    let text = workload("demo", "backend", BACKEND_ID).replace("port: 8080", "port: 0");
    assert_eq!(
        refused(&text)[0].field.as_deref(),
        Some("spec.ports[0].port")
    );

    let text = workload("demo", "backend", BACKEND_ID).replace("10.0.0.7", "10.0.0");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("spec.workloadIPs[0].ip"), "{p}");

    let text = workload("demo", "backend", BACKEND_ID).replace("    serverName:", "    # ");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("spec.meshTLS"));
    assert!(p.message.contains("missing field \"serverName\""), "{p}");
}

#[test]
fn annotation_values_must_be_strings_and_the_key_is_named() {
    let text = workload("demo", "backend", BACKEND_ID).replace(
        "  namespace: demo\n",
        "  namespace: demo\n  annotations:\n    config.linkerd.io/opaque-ports: 8080\n",
    );
    let p = &refused(&text)[0];
    assert_eq!(
        p.field.as_deref(),
        Some(r#"metadata.annotations["config.linkerd.io/opaque-ports"]"#)
    );
}

#[test]
fn kubectl_output_with_status_and_server_fields_loads() {
    let text = r#"apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"workload.linkerd.io/v1beta1","kind":"ExternalWorkload"}
    config.linkerd.io/opaque-ports: "5432"
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 3
  labels:
    app: backend
  managedFields:
  - apiVersion: workload.linkerd.io/v1beta1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:meshTLS: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2024-05-01T10:00:00Z"
  name: backend
  namespace: demo
  resourceVersion: "123456"
  uid: 6f1c2d3e-0000-4000-8000-000000000001
spec:
  meshTLS:
    identity: backend.demo.serviceaccount.identity.weft.cluster.local
    serverName: backend.demo.serviceaccount.identity.weft.cluster.local
  ports:
  - port: 5432
    protocol: TCP
  workloadIPs:
  - ip: fd00::7
status:
  conditions:
  - lastProbeTime: null
    lastTransitionTime: "2024-05-01T10:00:01Z"
    status: "True"
    type: Ready
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  uid: 11111111-2222-3333-4444-555555555555
  annotations:
    config.linkerd.io/default-inbound-policy: all-authenticated
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
"#;
    let objects = parse(text).unwrap();
    assert_eq!(objects.len(), 2);
    let Object::ExternalWorkload(w) = &objects[0] else {
        panic!("not a workload")
    };
    assert_eq!(
        w.meta.labels.get("app").map(String::as_str),
        Some("backend")
    );
    assert_eq!(
        w.meta
            .annotations
            .get("config.linkerd.io/opaque-ports")
            .map(String::as_str),
        Some("5432")
    );
    assert_eq!(w.spec.ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(w.spec.workload_ips[0].ip.to_string(), "fd00::7");
    let Object::Namespace(ns) = &objects[1] else {
        panic!("not a namespace")
    };
    assert_eq!(ns.meta.namespace, None);
    assert_eq!(objects[1].key().to_string(), "Namespace demo");
}

#[test]
fn kubectl_list_output_loads() {
    let text = format!(
        "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- {}",
        workload("demo", "backend", BACKEND_ID)
            .trim_end()
            .replace('\n', "\n  ")
    );
    let objects = parse(&text).unwrap();
    assert_eq!(objects.len(), 1);

    let bad = text.replace("    identity:", "    identty:");
    let p = &refused(&bad)[0];
    assert_eq!(p.field.as_deref(), Some("items[0].spec.meshTLS"));
    assert_eq!(p.resource.as_deref(), Some("ExternalWorkload demo/backend"));
}

#[test]
fn wrong_api_version_is_refused_with_the_supported_one() {
    let text = workload("demo", "backend", BACKEND_ID).replace("v1beta1", "v1alpha1");
    let p = &refused(&text)[0];
    assert_eq!(p.document, Some(1));
    assert_eq!(p.field.as_deref(), Some("apiVersion"));
    assert!(
        p.message.contains("\"workload.linkerd.io/v1alpha1\""),
        "{p}"
    );
    assert!(
        p.message
            .contains("use apiVersion: workload.linkerd.io/v1beta1"),
        "{p}"
    );
}

#[test]
fn unknown_kind_is_refused_naming_document_and_supported_kinds() {
    let text = format!(
        "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
        workload("demo", "backend", BACKEND_ID)
    );
    let problems = refused(&text);
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(p.document, Some(2));
    assert!(p.message.contains("unknown kind \"Deployment\""), "{p}");
    assert!(
        p.message
            .contains("workload.linkerd.io/v1beta1 ExternalWorkload"),
        "{p}"
    );
    assert!(p.message.contains("v1 Namespace"), "{p}");
    assert!(
        p.to_string()
            .starts_with("demo/web.yaml: document 2: kind: "),
        "{p}"
    );

    let p = &refused("apiVersion: 1\nkind: Namespace\nmetadata:\n  name: x\n")[0];
    assert_eq!(p.field.as_deref(), Some("apiVersion"));
    assert!(
        p.message.starts_with("must be a string, found a number"),
        "{p}"
    );
    let p = &refused("apiVersion: v1\nmetadata:\n  name: x\n")[0];
    assert_eq!(p.field.as_deref(), Some("kind"));
    assert!(p.message.starts_with("is missing"), "{p}");
}

#[test]
fn bad_yaml_is_refused_without_panicking() {
    let nested = "[".repeat(100_000);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    let cases = [
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"demo\n",
        "apiVersion: v1\n\tkind: Namespace\n",
        "key: [1, 2\n",
        ": : :\n- - [\n",
        "a: 1\na: 2\n",
        "\u{0}\u{1}\u{2}",
        "*undefined\n",
        "- just\n- a list\n",
        "just a string\n",
        "42\n",
        "apiVersion: 1\nkind: [Namespace]\n",
        "metadata:\n  name: x\n",
        nested.as_str(),
        bomb,
    ];
    for case in cases {
        let problems = refused(case);
        for p in &problems {
            let line = p.to_string();
            assert!(!line.contains('\n'), "multi-line problem: {line}");
            assert!(line.starts_with("demo/web.yaml: "), "{line}");
        }
    }
}

#[test]
fn multi_document_file_skips_empty_documents() {
    let text = format!(
        "---\n# comment only\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n---\n---\n{}---\n{}...\n",
        workload("demo", "backend", BACKEND_ID),
        workload(
            "other",
            "backend",
            "backend.other.serviceaccount.identity.weft.cluster.local"
        ),
    );
    let objects = parse(&text).unwrap();
    let keys: Vec<String> = objects.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "Namespace demo",
            "ExternalWorkload demo/backend",
            "ExternalWorkload other/backend"
        ]
    );
    assert_eq!(parse("").unwrap(), vec![]);
    assert_eq!(parse("  \n# nothing here\n").unwrap(), vec![]);
}

#[test]
fn one_bad_document_refuses_the_whole_file() {
    let text = format!(
        "{}---\n{}",
        workload("demo", "good", BACKEND_ID),
        workload("demo", "bad", BACKEND_ID).replace("serverName", "servername")
    );
    let problems = refused(&text);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].resource.as_deref(),
        Some("ExternalWorkload demo/bad")
    );
    assert_eq!(problems[0].document, Some(2));
}

#[test]
fn same_object_twice_in_one_file_is_left_to_the_snapshot() {
    // The snapshot refuses every definition of a conflicted object, wherever
    // they are; the file's other objects stay valid.
    let text = format!(
        "{}---\n{}",
        workload("demo", "backend", BACKEND_ID),
        workload("demo", "backend", BACKEND_ID)
    );
    assert_eq!(parse(&text).unwrap().len(), 2);
}

#[test]
fn namespace_defaults_to_default_and_names_are_checked() {
    let text = workload("demo", "backend", BACKEND_ID).replace("  namespace: demo\n", "");
    let objects = parse(&text).unwrap();
    assert_eq!(objects[0].meta().namespace.as_deref(), Some("default"));

    let text = workload("demo", "Backend", BACKEND_ID);
    assert_eq!(refused(&text)[0].field.as_deref(), Some("metadata.name"));

    let text = workload("demo", "backend", BACKEND_ID).replace("  name: backend\n", "");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("metadata.name"));
    assert_eq!(p.resource, None);
    assert_eq!(p.document, Some(1));

    let text =
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: x\n";
    assert_eq!(refused(text)[0].field.as_deref(), Some("spec"));
}

#[test]
fn spiffe_identity_is_translated_with_the_control_plane_namespace() {
    let objects = parse(&workload(
        "demo",
        "web",
        "spiffe://cluster.local/ns/demo/sa/web",
    ))
    .unwrap();
    let Object::ExternalWorkload(w) = &objects[0] else {
        panic!("not a workload")
    };
    assert_eq!(
        w.identity("weft").unwrap().to_string(),
        "web.demo.serviceaccount.identity.weft.cluster.local"
    );
    assert_eq!(
        w.identity("linkerd").unwrap().to_string(),
        "web.demo.serviceaccount.identity.linkerd.cluster.local"
    );
}

#[test]
fn invalid_identities_are_refused() {
    for bad in [
        "spiffe://cluster.local/some/other/path",
        "SPIFFE://cluster.local/ns/demo/sa/web",
        "web.demo.cluster.local",
        "Web.demo.serviceaccount.identity.weft.cluster.local",
    ] {
        let p = &refused(&workload("demo", "web", &format!("{bad:?}")))[0];
        assert_eq!(
            p.field.as_deref(),
            Some("spec.meshTLS.identity"),
            "{bad}: {p}"
        );
    }
}

#[test]
fn foreign_mesh_suffix_loads_with_a_warning() {
    let path = Path::new(FILE);
    let foreign = "backend.demo.serviceaccount.identity.linkerd.cluster.local";
    let objects = parse(&workload("demo", "backend", foreign)).unwrap();
    let warnings = lint(path, &objects, "weft", "cluster.local");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.field.as_deref(), Some("spec.meshTLS.identity"));
    assert!(
        w.message.contains("\"identity.linkerd.cluster.local\""),
        "{w}"
    );
    assert!(w.message.contains("\"identity.weft.cluster.local\""), "{w}");

    // Same for a SPIFFE ID in another trust domain.
    let objects = parse(&workload("demo", "b", "spiffe://example.org/ns/demo/sa/b")).unwrap();
    let warnings = lint(path, &objects, "weft", "cluster.local");
    assert_eq!(warnings.len(), 1, "{warnings:?}");

    // Ours: no warning.
    let objects = parse(&workload("demo", "backend", BACKEND_ID)).unwrap();
    assert!(lint(path, &objects, "weft", "cluster.local").is_empty());
}

#[test]
fn server_name_other_than_the_identity_warns() {
    let text = workload("demo", "backend", BACKEND_ID).replace(
        &format!("serverName: {BACKEND_ID}"),
        "serverName: backend.example.com",
    );
    let objects = parse(&text).unwrap();
    let warnings = lint(Path::new(FILE), &objects, "weft", "cluster.local");
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].field.as_deref(),
        Some("spec.meshTLS.serverName")
    );
}
