//! What `weft install` prints, built as data from its settings alone (no
//! cluster is read), so the output is deterministic: the same flags and
//! files always give the same bytes.
//!
//! The injector's MutatingWebhookConfiguration is two webhooks over the same
//! service. Namespaces labelled `weft.dev/mesh=required` go through one with
//! `failurePolicy: Fail`, so no pod there is ever created unmeshed, even when
//! the control plane is down. Every other namespace goes through one with
//! `Ignore`: a stopped control plane must never stop pods from being created
//! cluster-wide (kube-system's and its own included, which are excluded by
//! `namespaceSelector` as well, so they never even wait for the webhook).
//! Neither carries a `caBundle`: the control plane owns that field and
//! writes its own webhook CA there (a re-apply of install leaves it alone,
//! as the field is not in the applied configuration).

use serde_json::{Value, json};

pub use inject::MESH_REQUIRED_LABEL;
pub const WEBHOOK_CONFIGURATION: &str =
    control_plane::k8s::webhook::WebhookSettings::DEFAULT_CONFIGURATION;
pub const DEPLOYMENT: &str = "weft-control-plane";
pub const SERVICE_ACCOUNT: &str = "weft-identity";
/// Probe-only port: `/live`, `/ready`, `/metrics` and nothing else on the pod IP.
pub const PROBE_PORT: u16 = 9995;
pub const WEBHOOK_PORT: u16 = 8443;
/// The control plane's own uid (not the proxy's 2102).
pub const CONTROL_PLANE_UID: u32 = 2103;

/// The ConfigMap that records how weft was installed, so `weft upgrade`
/// prints the same installation without the flags being given again.
pub const CONFIG: &str = "weft-config";
/// Its key: [`Values`] as JSON.
pub const CONFIG_KEY: &str = "values.json";

/// Everything install needs to know.
pub struct Plan {
    pub namespace: String,
    pub values: Values,
    /// None for `weft upgrade`: the cluster's identity objects are kept.
    pub identity: Option<IdentityObjects>,
}

/// The settings of an installation (no secrets), recorded in [`CONFIG`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    pub image: String,
    pub ha: bool,
    pub trust_domain: String,
    pub cluster_networks: String,
    /// The issuer Secret is managed elsewhere (e.g. cert-manager).
    pub external_issuer: bool,
    /// Development: the webhook at a URL instead of the Service.
    pub webhook_url: Option<String>,
}

/// The trust-roots ConfigMap and (unless external) the issuer Secret.
pub struct IdentityObjects {
    pub anchors_pem: String,
    /// None with an external issuer (the Secret exists already).
    pub issuer: Option<IssuerFiles>,
}

/// The issuer Secret's contents (`kubernetes.io/tls`).
pub struct IssuerFiles {
    pub cert_pem: String,
    pub key_pem: String,
}

/// One object to print: a shipped file's text (namespace substituted) or data.
pub enum Object {
    Text(String),
    Data(Value),
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/part-of": "weft", "app.kubernetes.io/component": component})
}

fn selector() -> Value {
    json!({"app.kubernetes.io/name": DEPLOYMENT})
}

/// The shipped RBAC with the control plane's namespace for `weft`.
pub fn rbac(namespace: &str) -> String {
    control_plane::k8s_manifests::RBAC.replace(
        "  namespace: weft\n",
        &format!("  namespace: {namespace}\n"),
    )
}

fn namespace(p: &Plan) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": p.namespace,
        "labels": {
            "app.kubernetes.io/part-of": "weft",
            "linkerd.io/is-control-plane": "true",
            "config.linkerd.io/admission-webhooks": "disabled",
        },
        "annotations": {"linkerd.io/inject": "disabled"},
    }})
}

fn config(p: &Plan) -> Result<Value, String> {
    let values = serde_json::to_string_pretty(&p.values).map_err(|e| e.to_string())?;
    Ok(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIG, "namespace": p.namespace, "labels": labels("control-plane")},
        "data": {CONFIG_KEY: values + "\n"},
    }))
}

fn identity_objects(p: &Plan, id: &IdentityObjects) -> Vec<Value> {
    let meta =
        |name: &str| json!({"name": name, "namespace": p.namespace, "labels": labels("identity")});
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta(inject::DEFAULT_TRUST_ROOTS_CONFIGMAP),
        "data": {"ca-bundle.crt": id.anchors_pem},
    })];
    if let Some(i) = &id.issuer {
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": meta(control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET),
            // `data`, not `stringData`: kubectl cannot compare write-only
            // stringData with the live object, so every re-apply would
            // report the Secret configured.
            "data": {"tls.crt": base64(i.cert_pem.as_bytes()), "tls.key": base64(i.key_pem.as_bytes()),
                     "ca.crt": base64(id.anchors_pem.as_bytes())},
        }));
    }
    out
}

/// Standard base64 with padding (RFC 4648), as Secret `data` holds it.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn http_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({"httpGet": {"path": path, "port": "probes", "scheme": "HTTP"},
           "periodSeconds": period, "failureThreshold": failures,
           "timeoutSeconds": 1, "successThreshold": 1})
}

/// The control plane keeps no local state with `--kubernetes` (the token
/// key, record and bundle generation live in the API), so it runs on a
/// read-only root filesystem with no volume at all.
fn deployment(p: &Plan) -> Value {
    let v = &p.values;
    let args = [
        "control-plane",
        "--kubernetes",
        "--controller-namespace",
        &p.namespace,
        "--identity-trust-domain",
        &v.trust_domain,
        "--cluster-networks",
        &v.cluster_networks,
        "--probe-addr",
        &format!("0.0.0.0:{PROBE_PORT}"),
        "--webhook-addr",
        &format!("0.0.0.0:{WEBHOOK_PORT}"),
    ];
    let port =
        |name: &str, port: u16| json!({"name": name, "containerPort": port, "protocol": "TCP"});
    let mut pod_spec = json!({
        "serviceAccountName": SERVICE_ACCOUNT,
        "securityContext": {"runAsNonRoot": true, "runAsUser": CONTROL_PLANE_UID,
            "runAsGroup": CONTROL_PLANE_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "control-plane",
            "image": v.image,
            "imagePullPolicy": "IfNotPresent",
            "args": args,
            "ports": [port("identity", 8080), port("destination", 8086), port("policy", 8090),
                      port("webhook", WEBHOOK_PORT), port("probes", PROBE_PORT)],
            "livenessProbe": http_probe("/live", 10, 3),
            "readinessProbe": http_probe("/ready", 5, 3),
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }],
    });
    if v.ha {
        pod_spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": selector()},
                                "topologyKey": "kubernetes.io/hostname"}}]}});
    }
    let mut template_labels = labels("control-plane");
    template_labels["app.kubernetes.io/name"] = json!(DEPLOYMENT);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": p.namespace, "labels": labels("control-plane")},
        "spec": {
            "replicas": if v.ha { 2 } else { 1 },
            "selector": {"matchLabels": selector()},
            "template": {
                "metadata": {"labels": template_labels,
                             "annotations": {"linkerd.io/inject": "disabled"}},
                "spec": pod_spec,
            },
        },
    })
}

fn service(p: &Plan, name: &str, port: u16, target: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": p.namespace, "labels": labels("control-plane")},
        "spec": {"type": "ClusterIP", "selector": selector(), "ports": [
            {"name": target, "port": port, "targetPort": target, "protocol": "TCP"}]},
    })
}

fn pdb(p: &Plan) -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": DEPLOYMENT, "namespace": p.namespace, "labels": labels("control-plane")},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector()}},
    })
}

fn webhook(p: &Plan, name: &str, failure: &str, required: &str) -> Value {
    let client = match &p.values.webhook_url {
        Some(url) => json!({"url": url}),
        None => json!({"service": {"name": "weft-webhook", "namespace": p.namespace,
                                   "path": "/inject", "port": 443}}),
    };
    json!({
        "name": name,
        "clientConfig": client,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["pods"], "scope": "Namespaced"}],
        "namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["kube-system", "kube-node-lease", p.namespace]},
            {"key": MESH_REQUIRED_LABEL, "operator": required, "values": ["required"]},
        ]},
        "failurePolicy": failure,
        "matchPolicy": "Equivalent",
        // The one side effect, the trust-anchor copy in the pod's namespace,
        // is skipped on dry runs.
        "sideEffects": "NoneOnDryRun",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 10,
        "reinvocationPolicy": "Never",
    })
}

fn webhook_configuration(p: &Plan) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION, "labels": labels("injector")},
        "webhooks": [
            webhook(p, "required.injector.weft.dev", "Fail", "In"),
            webhook(p, "injector.weft.dev", "Ignore", "NotIn"),
        ],
    })
}

/// A plan with every object install can print (HA, an issuer Secret) and
/// empty contents: which objects an installation in `namespace` has, for
/// uninstall and for the checks of what install needs.
pub fn every_object(namespace: &str) -> Plan {
    Plan {
        namespace: namespace.to_string(),
        values: Values {
            image: String::new(),
            ha: true,
            trust_domain: pki::identity::DEFAULT_TRUST_DOMAIN.into(),
            cluster_networks: String::new(),
            external_issuer: false,
            webhook_url: None,
        },
        identity: Some(IdentityObjects {
            anchors_pem: String::new(),
            issuer: Some(IssuerFiles {
                cert_pem: String::new(),
                key_pem: String::new(),
            }),
        }),
    }
}

/// Every object of the control plane, in apply order (the namespace first,
/// the webhook last, once what it points at exists).
pub fn control_plane(p: &Plan) -> Result<Vec<Object>, String> {
    let mut out = vec![
        Object::Data(namespace(p)),
        Object::Text(rbac(&p.namespace)),
        Object::Data(config(p)?),
    ];
    if let Some(id) = &p.identity {
        out.extend(identity_objects(p, id).into_iter().map(Object::Data));
    }
    out.push(Object::Data(deployment(p)));
    if p.values.ha {
        out.push(Object::Data(pdb(p)));
    }
    for (name, port, target) in [
        ("weft-identity", 8080, "identity"),
        ("weft-destination", 8086, "destination"),
        ("weft-policy", 8090, "policy"),
        ("weft-webhook", 443, "webhook"),
    ] {
        out.push(Object::Data(service(p, name, port, target)));
    }
    out.push(Object::Data(webhook_configuration(p)));
    Ok(out)
}

/// The stream `kubectl apply -f -` reads.
pub fn render(objects: &[Object]) -> Result<String, String> {
    let mut parts = Vec::new();
    for o in objects {
        let text = match o {
            Object::Text(t) => t.clone(),
            Object::Data(v) => serde_saphyr::to_string(v).map_err(|e| e.to_string())?,
        };
        parts.push(text.trim_end_matches('\n').to_string() + "\n");
    }
    Ok(parts.join("---\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded, "{plain}");
        }
    }
}
