//! What injection adds: the `weft-init` init container, the `weft-proxy`
//! native sidecar and their volumes, exactly as the proxy's contract says.

use serde_json::{Map, Value, json};

use crate::Settings;

pub const INIT_CONTAINER: &str = "weft-init";
pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const TOKEN_VOLUME: &str = "weft-identity-token";
pub const TRUST_ROOTS_VOLUME: &str = "weft-trust-roots";
/// iptables' lock file (`/run/xtables.lock`) on a read-only root filesystem.
pub const XTABLES_VOLUME: &str = "weft-xtables-lock";
pub const VOLUMES: &[&str] = &[TOKEN_VOLUME, TRUST_ROOTS_VOLUME, XTABLES_VOLUME];
/// Containers weft adds; a Linkerd proxy also means "already meshed".
pub const CONTAINERS: &[&str] = &[INIT_CONTAINER, PROXY_CONTAINER];

pub const PROXY_UID: u32 = 2102;
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;
/// Tap.Observe for the control plane (`weft tap`); `weft init` skips it.
pub const TAP_PORT: u16 = 4190;
/// The audience the identity service's TokenReview asks for.
pub const TOKEN_AUDIENCE: &str = "identity.l5d.io";
pub const TOKEN_DIR: &str = "/var/run/secrets/weft/tokens";
pub const TOKEN_FILE: &str = "/var/run/secrets/weft/tokens/identity-token";
pub const TRUST_ROOTS_DIR: &str = "/var/run/weft/trust-roots";
pub const TRUST_ANCHORS_FILE: &str = "/var/run/weft/trust-roots/ca-bundle.crt";
/// The trust-roots ConfigMap's key (Linkerd's).
pub const TRUST_ROOTS_KEY: &str = "ca-bundle.crt";

/// What the annotations asked for.
pub(crate) struct Options {
    pub skip_inbound: Vec<String>,
    pub skip_outbound: Vec<String>,
    pub resources: Map<String, Value>,
    /// More of the proxy's environment, from annotations.
    pub env: Vec<(&'static str, String)>,
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn env(name: &str, value: String) -> Value {
    json!({"name": name, "value": value})
}

/// `weft init`: redirects the pod's TCP through the proxy, then exits. Root
/// with NET_ADMIN and NET_RAW only.
pub(crate) fn init_container(s: &Settings, o: &Options) -> Value {
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
    ];
    if !o.skip_inbound.is_empty() {
        args.push("--skip-inbound-ports".into());
        args.push(o.skip_inbound.join(","));
    }
    if !o.skip_outbound.is_empty() {
        args.push("--skip-outbound-ports".into());
        args.push(o.skip_outbound.join(","));
    }
    json!({
        "name": INIT_CONTAINER,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
    })
}

/// The proxy's environment: the pod's own facts from the downward API, the
/// control plane's addresses, files for the token and the anchors (never
/// the anchors themselves).
fn proxy_env(s: &Settings, o: &Options) -> Vec<Value> {
    let svc = |name: &str, port: u16| {
        format!(
            "{name}.{}.svc.{}:{port}",
            s.control_plane_ns, s.cluster_domain
        )
    };
    vec![
        field_env("WEFT_POD_NAME", "metadata.name"),
        field_env("WEFT_POD_NAMESPACE", "metadata.namespace"),
        field_env("WEFT_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env(
            "WEFT_PROXY_WORKLOAD",
            r#"{"ns":"$(WEFT_POD_NAMESPACE)","pod":"$(WEFT_POD_NAME)"}"#.into(),
        ),
        env(
            "WEFT_PROXY_IDENTITY",
            format!(
                "$(WEFT_POD_SERVICE_ACCOUNT).$(WEFT_POD_NAMESPACE).serviceaccount.identity.{}.{}",
                s.control_plane_ns, s.trust_domain
            ),
        ),
        env("WEFT_PROXY_TOKEN_FILE", TOKEN_FILE.into()),
        env("WEFT_PROXY_TRUST_ANCHORS_FILE", TRUST_ANCHORS_FILE.into()),
        env("WEFT_PROXY_IDENTITY_ADDR", svc("weft-identity", 8080)),
        env("WEFT_PROXY_DESTINATION_ADDR", svc("weft-destination", 8086)),
        // Policy on the destination address: one connection per pod.
        env("WEFT_PROXY_POLICY_ADDR", svc("weft-destination", 8086)),
        env("WEFT_PROXY_INBOUND_ADDR", format!("0.0.0.0:{INBOUND_PORT}")),
        env("WEFT_PROXY_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        env("WEFT_PROXY_TAP_ADDR", format!("0.0.0.0:{TAP_PORT}")),
    ]
    .into_iter()
    .chain(o.env.iter().map(|(k, v)| env(k, v.clone())))
    .collect()
}

fn http_probe(path: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": "weft-admin", "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1,
        "successThreshold": 1,
    })
}

/// The proxy as a native sidecar (an init container that keeps running):
/// it starts before the app, is ready (startup probe) before the app
/// starts, and stops after it.
pub(crate) fn proxy_container(s: &Settings, o: &Options) -> Value {
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["proxy"],
        "restartPolicy": "Always",
        "env": proxy_env(s, o),
        "ports": [
            {"name": "weft-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "weft-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            {"name": "weft-tap", "containerPort": TAP_PORT, "protocol": "TCP"},
        ],
        "startupProbe": http_probe("/ready", 1, 120),
        "readinessProbe": http_probe("/ready", 10, 3),
        "livenessProbe": http_probe("/live", 10, 3),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_ROOTS_VOLUME, "mountPath": TRUST_ROOTS_DIR, "readOnly": true},
        ],
    });
    if !o.resources.is_empty() {
        c["resources"] = Value::Object(o.resources.clone());
    }
    c
}

/// The projected token (audience `identity.l5d.io`, one day), the anchors
/// from the trust-roots ConfigMap, and iptables' lock directory.
pub(crate) fn volumes(s: &Settings) -> Vec<Value> {
    vec![
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE, "expirationSeconds": 86400, "path": "identity-token"}}]}}),
        json!({"name": TRUST_ROOTS_VOLUME, "configMap": {
            "name": s.trust_roots_configmap,
            "items": [{"key": TRUST_ROOTS_KEY, "path": TRUST_ROOTS_KEY}]}}),
        json!({"name": XTABLES_VOLUME, "emptyDir": {}}),
    ]
}
