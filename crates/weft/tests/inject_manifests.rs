//! `weft inject` / `weft uninject` on manifests, with the real binary: every
//! workload kind's pod template, `List`s, multi-document streams, unknown
//! kinds passed through byte for byte with a note, invalid YAML named by
//! document and line, nothing printed on a refusal.
// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::pipe::weft as weft_stdin;
use serde_json::Value;

const POD_SPEC: &str = "
      containers:
      - name: app
        image: app:1
        ports:
        - containerPort: 8080";

/// `text` with every line indented by `n` more spaces.
fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// Every kind `weft inject` knows, a List, and two it does not.
fn workloads() -> String {
    let template = format!(
        "template:\n  metadata:\n    labels: {{app: w}}\n  spec:{}\n",
        POD_SPEC.replace("\n      ", "\n    ")
    );
    let workload = |kind: &str, api: &str, extra: &str| {
        format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: w-{}\n  namespace: demo\nspec:\n{extra}{}",
            kind.to_lowercase(),
            indent(&template, 2)
        )
    };
    let selector = "  selector:\n    matchLabels: {app: w}\n";
    let docs = [
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: w-pod\n  namespace: demo\nspec:{}\n",
            POD_SPEC.replace("\n      ", "\n  ")
        ),
        workload("Deployment", "apps/v1", selector),
        workload("StatefulSet", "apps/v1", &format!("{selector}  serviceName: w\n")),
        workload("DaemonSet", "apps/v1", selector),
        workload("ReplicaSet", "apps/v1", selector),
        workload("Job", "batch/v1", ""),
        format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: w-cronjob\nspec:\n  schedule: \"@hourly\"\n  jobTemplate:\n    spec:\n{}",
            indent(&template, 6)
        ),
        format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            indent(
                &workload("Deployment", "apps/v1", selector).replace("name: w-deployment", "name: w-listed"),
                2
            )
            .trim_start()
        ),
        "# a Service: no pod template\napiVersion: v1\nkind: Service\nmetadata:\n  name:   w   # odd spacing kept\nspec:\n  ports: [{port: 80}]\n".to_string(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w}\ndata: {skip-outbound-ports: \"5432\"}\n".to_string(),
    ];
    docs.join("---\n")
}

#[test]
fn the_fixture_has_the_structure_it_means() {
    let d = docs(&workloads());
    assert_eq!(d.len(), 10);
    assert_eq!(d[1]["spec"]["selector"]["matchLabels"]["app"], "w");
    assert_eq!(d[2]["spec"]["serviceName"], "w");
    assert_eq!(templates(&d).len(), 8);
    for (what, t) in templates(&d) {
        assert_eq!(t["spec"]["containers"][0]["name"], "app", "{what}: {t}");
        assert!(
            t["metadata"].is_object() || what.starts_with("Pod/"),
            "{what}"
        );
    }
}

fn docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("output is not valid YAML: {e}\n{text}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Every pod template in the stream, with its owner.
fn templates(docs: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap();
        let ptr = match kind {
            "Pod" => "",
            "CronJob" => "/spec/jobTemplate/spec/template",
            "List" => {
                out.extend(templates(d["items"].as_array().unwrap()));
                continue;
            }
            "Service" | "ConfigMap" => continue,
            _ => "/spec/template",
        };
        let name = d["metadata"]["name"].as_str().unwrap();
        out.push((format!("{kind}/{name}"), d.pointer(ptr).unwrap().clone()));
    }
    out
}

#[test]
fn inject_annotates_every_pod_template_and_passes_other_kinds_through() {
    let input = workloads();
    let r = weft_stdin(&["inject", "-"], &input).ok();
    let out = docs(&r.stdout);
    let ts = templates(&out);
    assert_eq!(ts.len(), 8, "Pod, 6 workloads and one listed: {ts:?}");
    for (what, t) in &ts {
        assert_eq!(
            t["metadata"]["annotations"]["linkerd.io/inject"], "enabled",
            "{what}"
        );
        assert!(
            t["spec"].get("initContainers").is_none(),
            "{what}: plain inject leaves the proxy to the webhook"
        );
    }
    // Unknown kinds: byte for byte, comments and spacing included, with a note.
    assert!(
        r.stdout.contains("  name:   w   # odd spacing kept\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("service/w: Service has no pod template"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("configmap/w: ConfigMap has no pod template"),
        "{}",
        r.stderr
    );
    // And back: uninject gives the input again.
    let back = weft_stdin(&["uninject", "-"], &r.stdout).ok();
    assert_eq!(docs(&back.stdout), docs(&input));
    println!("stderr of inject:\n{}", r.stderr);
}

#[test]
fn manual_inject_adds_the_proxy_once_and_uninject_removes_it() {
    let s = common::Scratch::new();
    let input = workloads();
    s.write("app.yaml", &input);
    let args = [
        "inject",
        "--manual",
        "app.yaml",
        "--controller-namespace",
        "mesh",
    ];
    let r = s.weft(&args).ok();
    let out = docs(&r.stdout);
    for (what, t) in templates(&out) {
        let inits: Vec<&str> = t["spec"]["initContainers"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: not injected"))
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, ["weft-init", "weft-proxy"], "{what}");
        assert_eq!(
            t["metadata"]["labels"]["linkerd.io/control-plane-ns"], "mesh",
            "{what}"
        );
        assert_eq!(t["spec"]["containers"][0]["name"], "app", "{what}");
    }
    // The same function as the webhook: what the crate gives for the Pod.
    let settings = inject::Settings {
        control_plane_ns: "mesh".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        image: concat!("ghcr.io/weft-mesh/weft:", env!("CARGO_PKG_VERSION")).into(),
        proxy_version: env!("CARGO_PKG_VERSION").into(),
        trust_roots_configmap: inject::TRUST_ROOTS_COPY.into(),
    };
    let pod = docs(&input).remove(0);
    let want = match inject::inject(&pod, &inject::NamespaceMeta::enabled(), &settings).unwrap() {
        inject::Outcome::Injected(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(out[0], want);

    // Injecting the output again changes nothing; uninject restores the input.
    s.write("injected.yaml", &r.stdout);
    let again = s
        .weft(&[
            "inject",
            "--manual",
            "injected.yaml",
            "--controller-namespace",
            "mesh",
        ])
        .ok();
    assert_eq!(docs(&again.stdout), out);
    assert!(
        again.stderr.contains("already injected"),
        "{}",
        again.stderr
    );
    let back = s.weft(&["uninject", "injected.yaml"]).ok();
    assert_eq!(docs(&back.stdout), docs(&input));
}

#[test]
fn opted_out_and_host_network_pods_are_left_alone_with_the_reason() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: opted-out\n  annotations: {linkerd.io/inject: disabled}\nspec:\n  containers: [{name: a, image: a}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: host}\nspec:\n  hostNetwork: true\n  containers: [{name: a, image: a}]\n";
    let r = weft_stdin(&["inject", "--manual", "-"], input).ok();
    assert_eq!(r.stdout, input, "both unchanged, byte for byte");
    assert!(
        r.stderr
            .contains("pod/opted-out: not injected: linkerd.io/inject: disabled"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("pod/host: not injected: hostNetwork: true"),
        "{}",
        r.stderr
    );
    let r = weft_stdin(&["inject", "-"], input).ok();
    assert!(
        r.stderr.contains("pod/opted-out: not annotated"),
        "{}",
        r.stderr
    );
}

#[test]
fn refusals_name_the_document_and_line_and_print_nothing() {
    let bad_yaml =
        "kind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata:\n  name: a: b\nspec: {}\n";
    let r = weft_stdin(&["inject", "-"], bad_yaml).refused(2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains("document 2") && r.stderr.contains("line 6"),
        "{}",
        r.stderr
    );
    println!("invalid YAML: {}", r.stderr.trim());

    let bad_annotation = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    config.linkerd.io/skip-outbound-ports: \"5432,db\"\nspec:{}\n",
        POD_SPEC.replace("\n      ", "\n  ")
    );
    let r = weft_stdin(&["inject", "--manual", "-"], &bad_annotation).refused(2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains("document 1")
            && r.stderr.contains("config.linkerd.io/skip-outbound-ports"),
        "{}",
        r.stderr
    );
    // weft's own TLS lists are checked as the proxy reads them.
    let bad_tls = bad_annotation.replace(
        "config.linkerd.io/skip-outbound-ports: \"5432,db\"",
        "config.weft.dev/tls-key-exchange: \"X25519,ffdhe2048\"",
    );
    let r = weft_stdin(&["inject", "--manual", "-"], &bad_tls).refused(2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains("config.weft.dev/tls-key-exchange")
            && r.stderr.contains("\"ffdhe2048\"")
            && r.stderr.contains("X25519MLKEM768"),
        "{}",
        r.stderr
    );
    let good_tls = bad_tls.replace("X25519,ffdhe2048", "X25519");
    let r = weft_stdin(&["inject", "--manual", "-"], &good_tls).ok();
    assert!(
        r.stdout.contains("WEFT_PROXY_TLS_KEY_EXCHANGE"),
        "{}",
        r.stdout
    );
    let r = common::Scratch::new()
        .weft(&["inject", "missing.yaml"])
        .refused(2);
    assert!(r.stderr.contains("missing.yaml"), "{}", r.stderr);
}
