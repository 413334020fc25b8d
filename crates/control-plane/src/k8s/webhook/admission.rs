//! One admission as a pure function: the pod, its namespace's metadata and
//! the injection settings in, the verdict out. The webhook server only
//! moves bytes around it.

use inject::{NamespaceMeta, Outcome, Settings, Skip};
use serde_json::Value;

pub use inject::MESH_REQUIRED_LABEL;
/// Set on a pod weft was asked to mesh but would not, saying why.
pub const ANN_NOT_INJECTED: &str = "weft.dev/not-injected";

/// What the webhook answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Admit with this patch (the meshed pod, or a note on the pod).
    Patch {
        patch: json_patch::Patch,
        injected: bool,
        note: String,
    },
    /// Admit unchanged.
    Allow(String),
    /// Refuse the pod, saying why and what to do.
    Deny(String),
}

/// Whether the namespace requires the mesh.
pub fn required(ns: &NamespaceMeta) -> bool {
    ns.labels.get(MESH_REQUIRED_LABEL).and_then(Value::as_str) == Some("required")
}

/// The verdict for creating `pod` in a namespace with metadata `ns`.
pub fn decide(pod: &Value, ns: &NamespaceMeta, s: &Settings) -> Verdict {
    let required = required(ns);
    let mut ns = ns.clone();
    if required {
        // A required namespace meshes every pod, annotated or not.
        ns.annotations
            .entry(inject::annotations::INJECT)
            .or_insert_with(|| "enabled".into());
    }
    let outcome = match inject::inject(pod, &ns, s) {
        Ok(o) => o,
        Err(e) => return Verdict::Deny(format!("weft cannot mesh this pod: {e}")),
    };
    match outcome {
        Outcome::Injected(meshed) => Verdict::Patch {
            patch: json_patch::diff(pod, &meshed),
            injected: true,
            note: "injected".into(),
        },
        Outcome::NotInjected(skip) if required && refused_when_required(&skip) => {
            Verdict::Deny(format!(
                "namespace requires the mesh (label {MESH_REQUIRED_LABEL}=required) but this pod cannot be meshed: {skip}; mesh it, or create it in a namespace without that label"
            ))
        }
        Outcome::NotInjected(skip @ Skip::HostNetwork) => {
            let mut noted = pod.clone();
            let meta = &mut noted["metadata"];
            if !meta["annotations"].is_object() {
                meta["annotations"] = Value::Object(Default::default());
            }
            meta["annotations"][ANN_NOT_INJECTED] = Value::String(skip.to_string());
            Verdict::Patch {
                patch: json_patch::diff(pod, &noted),
                injected: false,
                note: skip.to_string(),
            }
        }
        Outcome::NotInjected(skip) => Verdict::Allow(skip.to_string()),
    }
}

fn refused_when_required(skip: &Skip) -> bool {
    matches!(skip, Skip::Disabled | Skip::HostNetwork | Skip::NotEnabled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Settings {
        Settings {
            control_plane_ns: "weft".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            image: "weft:test".into(),
            proxy_version: "test".into(),
            trust_roots_configmap: "linkerd-identity-trust-roots".into(),
        }
    }

    fn pod(annotations: Value, host_network: bool) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "demo", "annotations": annotations},
            "spec": {"hostNetwork": host_network,
                     "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 80}]}]},
        })
    }

    fn ns(labels: Value, annotations: Value) -> NamespaceMeta {
        NamespaceMeta::from_namespace(
            &json!({"metadata": {"labels": labels, "annotations": annotations}}),
        )
    }

    fn apply(pod: &Value, patch: &json_patch::Patch) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, patch).unwrap();
        out
    }

    #[test]
    fn the_patch_gives_exactly_what_inject_manual_gives() {
        let p = pod(json!({"linkerd.io/inject": "enabled"}), false);
        let Verdict::Patch {
            patch, injected, ..
        } = decide(&p, &ns(json!({}), json!({})), &settings())
        else {
            panic!("not injected")
        };
        assert!(injected);
        let Outcome::Injected(manual) =
            inject::inject(&p, &NamespaceMeta::enabled(), &settings()).unwrap()
        else {
            panic!()
        };
        assert_eq!(apply(&p, &patch), manual);
    }

    #[test]
    fn opted_out_and_unannotated_pods_pass_unless_the_namespace_requires_the_mesh() {
        let s = settings();
        let plain = ns(json!({}), json!({}));
        let on = ns(json!({}), json!({"linkerd.io/inject": "enabled"}));
        let required = ns(json!({MESH_REQUIRED_LABEL: "required"}), json!({}));
        let off = pod(json!({"linkerd.io/inject": "disabled"}), false);
        let bare = pod(json!({}), false);
        assert!(matches!(decide(&bare, &plain, &s), Verdict::Allow(_)));
        assert!(matches!(decide(&off, &on, &s), Verdict::Allow(_)));
        assert!(matches!(
            decide(&bare, &on, &s),
            Verdict::Patch { injected: true, .. }
        ));
        assert!(matches!(
            decide(&bare, &required, &s),
            Verdict::Patch { injected: true, .. }
        ));
        let Verdict::Deny(why) = decide(&off, &required, &s) else {
            panic!("a disabled pod in a required namespace must be refused")
        };
        assert!(why.contains("weft.dev/mesh=required"), "{why}");
    }

    #[test]
    fn host_network_pods_are_noted_never_meshed_and_refused_where_required() {
        let s = settings();
        let on = ns(json!({}), json!({"linkerd.io/inject": "enabled"}));
        let p = pod(json!({}), true);
        let Verdict::Patch {
            patch,
            injected: false,
            ..
        } = decide(&p, &on, &s)
        else {
            panic!("expected a note")
        };
        let noted = apply(&p, &patch);
        assert!(
            noted["metadata"]["annotations"][ANN_NOT_INJECTED]
                .as_str()
                .unwrap()
                .contains("hostNetwork")
        );
        assert_eq!(noted["spec"], p["spec"]);
        let required = ns(json!({MESH_REQUIRED_LABEL: "required"}), json!({}));
        assert!(matches!(decide(&p, &required, &s), Verdict::Deny(_)));
    }

    #[test]
    fn injected_pods_are_unchanged_and_bad_annotations_refused() {
        let s = settings();
        let on = ns(json!({}), json!({"linkerd.io/inject": "enabled"}));
        let Verdict::Patch { patch, .. } = decide(&pod(json!({}), false), &on, &s) else {
            panic!()
        };
        let meshed = apply(&pod(json!({}), false), &patch);
        assert!(matches!(decide(&meshed, &on, &s), Verdict::Allow(_)));
        let bad = pod(
            json!({"config.linkerd.io/skip-inbound-ports": "eighty"}),
            false,
        );
        let Verdict::Deny(why) = decide(&bad, &on, &s) else {
            panic!()
        };
        assert!(why.contains("skip-inbound-ports"), "{why}");
    }
}
