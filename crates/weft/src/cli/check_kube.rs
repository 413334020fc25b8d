//! `weft check` against a cluster, the fetching: each function reads one
//! kind of fact from the API server and returns it typed (or the error as
//! text, which the check it feeds reports). No verdicts here.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace as KubeNamespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;
use time::OffsetDateTime;

use super::check_facts::{Access, Namespace, ServerVersion, parse_http_date, parse_server_version};
use super::check_plane::{DryRun, InjectedPod, Refusal, Webhooks};

fn err(e: kube::Error) -> String {
    control_plane::k8s::proofs::api_error(&e)
}

/// The API server's version.
pub async fn version(c: &Client) -> Result<ServerVersion, String> {
    let info = c.apiserver_version().await.map_err(err)?;
    parse_server_version(&info.major, &info.minor, &info.git_version)
}

/// The API server's clock: a response's `Date`, with this host's clock
/// before the request and after the answer.
pub async fn server_time(
    c: &Client,
) -> Result<(OffsetDateTime, OffsetDateTime, OffsetDateTime), String> {
    let req = http::Request::get("/version")
        .body(kube::client::Body::empty())
        .map_err(|e| e.to_string())?;
    let sent = OffsetDateTime::now_utc();
    let resp = c.send(req).await.map_err(err)?;
    let received = OffsetDateTime::now_utc();
    let date = resp
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .ok_or("the API server's answer has no Date header")?;
    Ok((parse_http_date(date)?, sent, received))
}

/// Whether this user may create `a` (a SelfSubjectAccessReview).
pub async fn may_create(c: &Client, a: &Access) -> Result<bool, String> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("create".into()),
                group: Some(a.group.clone()),
                resource: Some(a.resource.clone()),
                namespace: a.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(c.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(err)?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Every namespace's labels and annotations.
pub async fn namespaces(c: &Client) -> Result<Vec<Namespace>, String> {
    let list = Api::<KubeNamespace>::all(c.clone())
        .list(&ListParams::default())
        .await
        .map_err(err)?;
    Ok(list
        .into_iter()
        .map(|n| Namespace {
            name: n.name_any(),
            labels: n.metadata.labels.unwrap_or_default(),
            annotations: n.metadata.annotations.unwrap_or_default(),
        })
        .collect())
}

/// The stored CRDs of the names `shipped` holds, as JSON, by name.
pub async fn crds(c: &Client, shipped: &[Value]) -> Result<BTreeMap<String, Value>, String> {
    // Raw JSON, not the typed struct: a typed round trip would reshape
    // the schema it is compared by.
    let ar = ApiResource::erase::<CustomResourceDefinition>(&());
    let api = Api::<DynamicObject>::all_with(c.clone(), &ar);
    let mut out = BTreeMap::new();
    for crd in shipped {
        let Some(name) = crd.pointer("/metadata/name").and_then(Value::as_str) else {
            continue;
        };
        if let Some(stored) = api.get_opt(name).await.map_err(err)? {
            out.insert(
                name.to_string(),
                serde_json::to_value(stored).map_err(|e| e.to_string())?,
            );
        }
    }
    Ok(out)
}

/// The Deployment's (desired, ready) replicas, or None if it is absent.
pub async fn replicas(c: &Client, ns: &str, name: &str) -> Result<Option<(i32, i32)>, String> {
    let d = Api::<Deployment>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .map_err(err)?;
    Ok(d.map(|d| {
        let desired = d.spec.and_then(|s| s.replicas).unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        (desired, ready)
    }))
}

pub async fn webhooks(c: &Client, name: &str) -> Result<Option<Webhooks>, String> {
    let w = Api::<MutatingWebhookConfiguration>::all(c.clone())
        .get_opt(name)
        .await
        .map_err(err)?;
    Ok(w.map(|w| Webhooks {
        webhooks: w
            .webhooks
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                let set = h.client_config.ca_bundle.is_some_and(|b| !b.0.is_empty());
                (h.name, set)
            })
            .collect(),
    }))
}

/// A server-side dry-run create of a pod annotated for injection in `ns`:
/// nothing is stored, and the injector skips its one side effect.
pub async fn dry_run_pod(c: &Client, ns: &str) -> DryRun {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("weft-check-{}", std::process::id())),
            annotations: Some(BTreeMap::from([(
                inject::annotations::INJECT.to_string(),
                "enabled".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "app".into(),
                image: Some("weft-check".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match Api::<Pod>::namespaced(c.clone(), ns)
        .create(&pp, &pod)
        .await
    {
        Ok(p) => match serde_json::to_value(&p) {
            Ok(v) if inject::is_injected(&v) => DryRun::Injected,
            _ => DryRun::NotInjected,
        },
        Err(e) => DryRun::Refused(err(e)),
    }
}

/// The anchors ConfigMap and issuer Secret (None: absent), with their
/// resourceVersions by object name ("ConfigMap NS/NAME").
pub async fn identity_objects(
    c: &Client,
    names: &control_plane::k8s::issuer::Names,
) -> Result<(Option<ConfigMap>, Option<Secret>, BTreeMap<String, String>), String> {
    let cm = Api::<ConfigMap>::namespaced(c.clone(), &names.namespace)
        .get_opt(&names.configmap)
        .await
        .map_err(err)?;
    let secret = Api::<Secret>::namespaced(c.clone(), &names.namespace)
        .get_opt(&names.secret)
        .await
        .map_err(err)?;
    let mut versions = BTreeMap::new();
    if let Some(rv) = cm.as_ref().and_then(|o| o.resource_version()) {
        versions.insert(names.configmap_object(), rv);
    }
    if let Some(rv) = secret.as_ref().and_then(|o| o.resource_version()) {
        versions.insert(names.secret_object(), rv);
    }
    Ok((cm, secret, versions))
}

/// The control plane's IssuerRefused Events in `ns`.
pub async fn issuer_refusals(c: &Client, ns: &str) -> Result<Vec<Refusal>, String> {
    let list = Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(err)?;
    Ok(list
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("IssuerRefused"))
        .filter_map(|e| {
            let r = e.regarding?;
            Some(Refusal {
                object: format!(
                    "{} {}/{}",
                    r.kind.unwrap_or_default(),
                    r.namespace.unwrap_or_default(),
                    r.name.unwrap_or_default()
                ),
                resource_version: r.resource_version.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
            })
        })
        .collect())
}

/// Running pods carrying weft's proxy sidecar, in `ns` or everywhere.
pub async fn injected_pods(c: &Client, ns: Option<&str>) -> Result<Vec<InjectedPod>, String> {
    let api = match ns {
        Some(ns) => Api::<Pod>::namespaced(c.clone(), ns),
        None => Api::<Pod>::all(c.clone()),
    };
    let list = api.list(&ListParams::default()).await.map_err(err)?;
    Ok(list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Running")
        })
        .filter(|p| serde_json::to_value(p).is_ok_and(|v| inject::is_injected(&v)))
        .map(|p| InjectedPod {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            proxy_version: p.annotations().get(inject::ANN_PROXY_VERSION).cloned(),
        })
        .collect())
}
