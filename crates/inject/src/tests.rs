//! The injection's contract, field by field, and its algebra: injecting
//! twice changes nothing, and uninject undoes inject exactly.

use serde_json::{Value, json};

use super::*;

fn settings() -> Settings {
    Settings {
        control_plane_ns: "weft".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        image: "ghcr.io/weft/weft:0.1.0".into(),
        proxy_version: "0.1.0".into(),
        trust_roots_configmap: TRUST_ROOTS_COPY.into(),
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"},
                     "annotations": annotations},
        "spec": {"serviceAccountName": "web",
                 "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
    })
}

fn enabled() -> Value {
    pod(json!({"linkerd.io/inject": "enabled"}))
}

fn injected(p: &Value, ns: &NamespaceMeta) -> Value {
    match inject(p, ns, &settings()).expect("valid pod") {
        Outcome::Injected(v) => v,
        Outcome::NotInjected(s) => panic!("not injected: {s}"),
    }
}

fn skipped(p: &Value, ns: &NamespaceMeta) -> Skip {
    match inject(p, ns, &settings()).expect("valid pod") {
        Outcome::Injected(v) => panic!("injected: {v}"),
        Outcome::NotInjected(s) => s,
    }
}

fn container<'a>(p: &'a Value, list: &str, name: &str) -> &'a Value {
    p["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name} in {p}"))
}

fn env_of(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = match e.get("value") {
                Some(v) => v.as_str().unwrap().to_string(),
                None => format!(
                    "field:{}",
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()
                ),
            };
            (e["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

#[test]
fn an_enabled_pod_gets_the_init_container_the_native_sidecar_and_its_volumes() {
    let p = injected(&enabled(), &NamespaceMeta::default());
    let init_names: Vec<&str> = names(p["spec"].get("initContainers")).collect();
    assert_eq!(init_names, ["weft-init", "weft-proxy"]);
    let app: Vec<&str> = names(p["spec"].get("containers")).collect();
    assert_eq!(app, ["app"], "the app's containers are left alone");
    assert_eq!(p["spec"]["containers"], enabled()["spec"]["containers"]);

    let init = container(&p, "initContainers", "weft-init");
    assert_eq!(init["args"], json!(["init", "--proxy-uid", "2102"]));
    assert_eq!(init["image"], "ghcr.io/weft/weft:0.1.0");
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["privileged"], false);
    assert!(
        init.get("restartPolicy").is_none(),
        "weft-init runs once and exits"
    );

    let proxy = container(&p, "initContainers", "weft-proxy");
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(proxy["args"], json!(["proxy"]));
    let sc = &proxy["securityContext"];
    assert_eq!(sc["runAsUser"], 2102);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(
        proxy["ports"],
        json!([
            {"name": "weft-inbound", "containerPort": 4143, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": 4191, "protocol": "TCP"},
            {"name": "weft-tap", "containerPort": 4190, "protocol": "TCP"},
        ])
    );
    assert_eq!(proxy["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(proxy["livenessProbe"]["httpGet"]["port"], "weft-admin");
    assert!(
        proxy.get("resources").is_none(),
        "no annotation, no resources"
    );

    let vols = p["spec"]["volumes"].as_array().unwrap();
    assert_eq!(
        vols[0],
        json!({"name": "weft-identity-token", "projected": {"sources": [{"serviceAccountToken":
            {"audience": "identity.l5d.io", "expirationSeconds": 86400, "path": "identity-token"}}]}})
    );
    assert_eq!(
        vols[1],
        json!({"name": "weft-trust-roots", "configMap": {"name": "weft-identity-trust-roots",
            "items": [{"key": "ca-bundle.crt", "path": "ca-bundle.crt"}]}})
    );
    assert_eq!(
        p["metadata"]["labels"]["linkerd.io/control-plane-ns"],
        "weft"
    );
    assert_eq!(p["metadata"]["labels"]["app"], "web");
    assert_eq!(
        p["metadata"]["annotations"]["linkerd.io/proxy-version"],
        "0.1.0"
    );
    assert_eq!(
        p["metadata"]["annotations"]["weft.dev/injected-by"],
        "weft 0.1.0"
    );
    assert!(is_injected(&p));
}

#[test]
fn the_proxy_environment_is_the_contract_and_never_holds_the_anchors() {
    let mut s = settings();
    s.control_plane_ns = "mesh".into();
    s.trust_domain = "example.org".into();
    s.cluster_domain = "k8s.internal".into();
    let Outcome::Injected(p) = inject(&enabled(), &NamespaceMeta::default(), &s).unwrap() else {
        panic!("not injected")
    };
    let proxy = container(&p, "initContainers", "weft-proxy");
    let want = [
        ("WEFT_POD_NAME", "field:metadata.name"),
        ("WEFT_POD_NAMESPACE", "field:metadata.namespace"),
        ("WEFT_POD_SERVICE_ACCOUNT", "field:spec.serviceAccountName"),
        (
            "WEFT_PROXY_WORKLOAD",
            r#"{"ns":"$(WEFT_POD_NAMESPACE)","pod":"$(WEFT_POD_NAME)"}"#,
        ),
        (
            "WEFT_PROXY_IDENTITY",
            "$(WEFT_POD_SERVICE_ACCOUNT).$(WEFT_POD_NAMESPACE).serviceaccount.identity.mesh.example.org",
        ),
        (
            "WEFT_PROXY_TOKEN_FILE",
            "/var/run/secrets/weft/tokens/identity-token",
        ),
        (
            "WEFT_PROXY_TRUST_ANCHORS_FILE",
            "/var/run/weft/trust-roots/ca-bundle.crt",
        ),
        (
            "WEFT_PROXY_IDENTITY_ADDR",
            "weft-identity.mesh.svc.k8s.internal:8080",
        ),
        (
            "WEFT_PROXY_DESTINATION_ADDR",
            "weft-destination.mesh.svc.k8s.internal:8086",
        ),
        (
            "WEFT_PROXY_POLICY_ADDR",
            "weft-destination.mesh.svc.k8s.internal:8086",
        ),
        ("WEFT_PROXY_INBOUND_ADDR", "0.0.0.0:4143"),
        ("WEFT_PROXY_ADMIN_ADDR", "0.0.0.0:4191"),
        ("WEFT_PROXY_TAP_ADDR", "0.0.0.0:4190"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(env_of(proxy), want);
    let text = p.to_string();
    assert!(!text.contains("BEGIN CERTIFICATE"), "no inline PEM");
    // The token and the anchors are mounted where the env says.
    let mounts = &proxy["volumeMounts"];
    assert_eq!(mounts[0]["mountPath"], "/var/run/secrets/weft/tokens");
    assert_eq!(mounts[1]["mountPath"], "/var/run/weft/trust-roots");
    assert_eq!(
        p["metadata"]["labels"]["linkerd.io/control-plane-ns"],
        "mesh"
    );
}

#[test]
fn the_pods_annotation_wins_over_its_namespaces() {
    let ns_on = NamespaceMeta::enabled();
    let ns_off = NamespaceMeta::from_namespace(
        &json!({"metadata": {"annotations": {"linkerd.io/inject": "disabled"}}}),
    );
    // Namespace enabled: a plain pod is meshed, an opted-out one is not.
    injected(&pod(json!({})), &ns_on);
    let off = pod(json!({"linkerd.io/inject": "disabled"}));
    assert_eq!(skipped(&off, &ns_on), Skip::Disabled);
    // Namespace disabled (or silent): only an opted-in pod is meshed.
    injected(&enabled(), &ns_off);
    assert_eq!(skipped(&pod(json!({})), &ns_off), Skip::NotEnabled);
    assert_eq!(
        skipped(&pod(json!({})), &NamespaceMeta::default()),
        Skip::NotEnabled
    );
    // A pod with no metadata at all takes the namespace's word.
    let bare = json!({"spec": {"containers": [{"name": "app", "image": "app"}]}});
    assert_eq!(
        injected(&bare, &ns_on)["metadata"]["labels"]["linkerd.io/control-plane-ns"],
        "weft"
    );
}

#[test]
fn host_network_and_already_meshed_pods_are_left_as_they_are() {
    let mut host = enabled();
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(skipped(&host, &NamespaceMeta::default()), Skip::HostNetwork);
    assert!(Skip::HostNetwork.to_string().contains("hostNetwork"));

    let once = injected(&enabled(), &NamespaceMeta::default());
    assert_eq!(
        skipped(&once, &NamespaceMeta::enabled()),
        Skip::AlreadyInjected("weft-proxy".into())
    );
    let mut linkerd = enabled();
    linkerd["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"name": "linkerd-proxy", "image": "linkerd"}));
    assert_eq!(
        skipped(&linkerd, &NamespaceMeta::default()),
        Skip::AlreadyInjected("linkerd-proxy".into())
    );
}

#[test]
fn skip_ports_and_resources_come_from_the_pod_else_the_namespace() {
    let ns = NamespaceMeta::from_namespace(&json!({"metadata": {"annotations": {
        "linkerd.io/inject": "enabled",
        "config.linkerd.io/skip-outbound-ports": "5432",
        "config.linkerd.io/skip-inbound-ports": "1",
        "config.linkerd.io/proxy-memory-limit": "1Gi",
    }}}));
    let p = pod(json!({
        "config.linkerd.io/skip-inbound-ports": "25, 9000-9010",
        "config.linkerd.io/proxy-cpu-request": "100m",
        "config.linkerd.io/proxy-memory-request": "64Mi",
        "config.linkerd.io/proxy-cpu-limit": "1.5",
        "config.linkerd.io/opaque-ports": "3306",
        "config.linkerd.io/default-inbound-policy": "deny",
    }));
    let out = injected(&p, &ns);
    let init = container(&out, "initContainers", "weft-init");
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--proxy-uid",
            "2102",
            "--skip-inbound-ports",
            "25,9000-9010",
            "--skip-outbound-ports",
            "5432"
        ])
    );
    let proxy = container(&out, "initContainers", "weft-proxy");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1.5", "memory": "1Gi"}})
    );
    // Left for the control plane, untouched.
    let ann = &out["metadata"]["annotations"];
    assert_eq!(ann["config.linkerd.io/opaque-ports"], "3306");
    assert_eq!(ann["config.linkerd.io/default-inbound-policy"], "deny");
}

#[test]
fn a_malformed_annotation_is_refused_naming_it_and_what_was_expected() {
    let cases = [
        ("config.linkerd.io/skip-inbound-ports", json!("80,http")),
        ("config.linkerd.io/skip-outbound-ports", json!("0")),
        ("config.linkerd.io/skip-outbound-ports", json!("9010-9000")),
        ("config.linkerd.io/skip-inbound-ports", json!("70000")),
        ("config.linkerd.io/skip-inbound-ports", json!(8080)),
        ("config.linkerd.io/proxy-cpu-limit", json!("lots")),
        ("config.linkerd.io/proxy-memory-request", json!("64MB")),
        (
            "config.linkerd.io/default-inbound-policy",
            json!("allow-everything"),
        ),
        ("linkerd.io/inject", json!("ingress")),
    ];
    for (key, value) in cases {
        let mut p = enabled();
        p["metadata"]["annotations"][key] = value.clone();
        let e = inject(&p, &NamespaceMeta::default(), &settings()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(key) && msg.contains("expected"),
            "{key}={value}: {msg}"
        );
        assert!(
            matches!(
                e,
                InjectError::Annotation {
                    scope: Scope::Pod,
                    ..
                }
            ),
            "{e:?}"
        );
    }
    let ns = NamespaceMeta::from_namespace(&json!({"metadata": {"annotations": {
        "linkerd.io/inject": "enabled", "config.linkerd.io/proxy-cpu-request": "1 core"}}}));
    let e = inject(&pod(json!({})), &ns, &settings()).unwrap_err();
    assert!(e.to_string().contains("its namespace"), "{e}");
    for ok in ["100m", "0.5", "2", "64Mi", "1e3", "1Gi"] {
        annotations::quantity("k", (ok, Scope::Pod)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn tls_lists_reach_the_proxy_environment_checked() {
    let ns = NamespaceMeta::from_namespace(&json!({"metadata": {"annotations": {
        "linkerd.io/inject": "enabled",
        "config.weft.dev/tls-key-exchange": "X25519MLKEM768, X25519",
    }}}));
    let p = pod(json!({"config.weft.dev/tls-cipher-suites": "TLS_AES_256_GCM_SHA384"}));
    let out = injected(&p, &ns);
    let env = env_of(container(&out, "initContainers", "weft-proxy"));
    let tls: Vec<_> = env.iter().filter(|(k, _)| k.contains("_TLS_")).collect();
    assert_eq!(
        tls,
        [
            &(
                "WEFT_PROXY_TLS_CIPHER_SUITES".to_string(),
                "TLS_AES_256_GCM_SHA384".to_string()
            ),
            &(
                "WEFT_PROXY_TLS_KEY_EXCHANGE".to_string(),
                "X25519MLKEM768, X25519".to_string()
            ),
        ]
    );
    // Without the annotations the proxy keeps its default.
    let plain = injected(&enabled(), &NamespaceMeta::default());
    let env = env_of(container(&plain, "initContainers", "weft-proxy"));
    assert!(env.iter().all(|(k, _)| !k.contains("_TLS_")), "{env:?}");

    for (key, value, named) in [
        (
            "config.weft.dev/tls-key-exchange",
            "X25519,P-256",
            "\"P-256\"",
        ),
        ("config.weft.dev/tls-cipher-suites", "", "is empty"),
    ] {
        let mut p = enabled();
        p["metadata"]["annotations"][key] = json!(value);
        let e = inject(&p, &NamespaceMeta::default(), &settings()).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                InjectError::Tls {
                    scope: Scope::Pod,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(msg.contains(key) && msg.contains(named), "{msg}");
    }
}

#[test]
fn names_weft_needs_that_the_pod_already_uses_are_refused() {
    let mut p = enabled();
    p["spec"]["volumes"] = json!([{"name": "weft-trust-roots", "emptyDir": {}}]);
    let e = inject(&p, &NamespaceMeta::default(), &settings()).unwrap_err();
    assert!(
        matches!(&e, InjectError::NameTaken { name, .. } if name == "weft-trust-roots"),
        "{e}"
    );
    let e = inject(
        &json!({"metadata": {}}),
        &NamespaceMeta::enabled(),
        &settings(),
    )
    .unwrap_err();
    assert!(matches!(e, InjectError::NotAPod(_)));
}

#[test]
fn the_apps_own_init_containers_and_volumes_follow_weft_s() {
    let mut p = enabled();
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "db"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let out = injected(&p, &NamespaceMeta::default());
    let inits: Vec<&str> = names(out["spec"].get("initContainers")).collect();
    // The proxy is up before the app's own init containers reach the network.
    assert_eq!(inits, ["weft-init", "weft-proxy", "migrate"]);
    let vols: Vec<&str> = names(out["spec"].get("volumes")).collect();
    assert_eq!(
        vols,
        [
            "data",
            "weft-identity-token",
            "weft-trust-roots",
            "weft-xtables-lock"
        ]
    );
    assert_eq!(uninject(&out), p);
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn word(&mut self) -> String {
        const W: &[&str] = &["web", "db", "a", "sidecar", "x-1", "metrics", "cache"];
        format!(
            "{}{}",
            W[self.below(W.len() as u64) as usize],
            self.below(100)
        )
    }
    fn map(&mut self) -> Option<Value> {
        let n = self.below(4);
        let m: serde_json::Map<String, Value> = (0..n)
            .map(|_| (format!("example.com/{}", self.word()), json!(self.word())))
            .collect();
        (!m.is_empty()).then_some(Value::Object(m))
    }
    fn containers(&mut self, min: u64) -> Vec<Value> {
        (0..min + self.below(3))
            .map(|i| {
                let mut c = json!({"name": format!("c{i}-{}", self.word()), "image": self.word()});
                if self.below(2) == 0 {
                    c["ports"] = json!([{"containerPort": 1 + self.below(65535)}]);
                }
                if self.below(3) == 0 {
                    c["env"] = json!([{"name": "A", "value": self.word()}]);
                }
                c
            })
            .collect()
    }

    /// A pod weft never touched: no weft names, lists and maps non-empty
    /// or absent (Kubernetes does not tell the two apart).
    fn pod(&mut self) -> Value {
        let mut meta = json!({"name": self.word()});
        if let Some(l) = self.map() {
            meta["labels"] = l;
        }
        let mut ann = self.map().unwrap_or_else(|| json!({}));
        match self.below(4) {
            0 => ann["linkerd.io/inject"] = json!("enabled"),
            1 => ann["linkerd.io/inject"] = json!("disabled"),
            2 => {
                ann["config.linkerd.io/skip-inbound-ports"] =
                    json!(format!("{}", 1 + self.below(1000)))
            }
            _ => {}
        }
        if ann.as_object().is_some_and(|m| !m.is_empty()) {
            meta["annotations"] = ann;
        }
        let mut spec = json!({"containers": self.containers(1)});
        let inits = self.containers(0);
        if !inits.is_empty() {
            spec["initContainers"] = json!(inits);
        }
        if self.below(2) == 0 {
            spec["volumes"] = json!([{"name": self.word(), "emptyDir": {}}]);
        }
        if self.below(5) == 0 {
            spec["hostNetwork"] = json!(self.below(2) == 0);
        }
        if self.below(2) == 0 {
            spec["serviceAccountName"] = json!(self.word());
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }
}

#[test]
fn injection_is_idempotent_and_uninject_undoes_it() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut meshed = 0;
    for case in 0..2000 {
        let x = g.pod();
        let ns = if g.below(2) == 0 {
            NamespaceMeta::enabled()
        } else {
            NamespaceMeta::default()
        };
        match inject(&x, &ns, &settings()).unwrap_or_else(|e| panic!("case {case}: {e}\n{x}")) {
            Outcome::Injected(y) => {
                meshed += 1;
                assert!(is_injected(&y));
                let again = inject(&y, &ns, &settings()).unwrap();
                assert!(
                    matches!(again, Outcome::NotInjected(Skip::AlreadyInjected(_))),
                    "case {case}: injecting twice changed it: {again:?}"
                );
                assert_eq!(uninject(&y), x, "case {case}");
            }
            Outcome::NotInjected(_) => {
                assert_eq!(uninject(&x), x, "case {case}: uninject touched it")
            }
        }
    }
    println!("{meshed} of 2000 generated pods meshed");
    assert!(
        meshed > 400 && meshed < 1800,
        "the generator covers both sides: {meshed}"
    );
}
