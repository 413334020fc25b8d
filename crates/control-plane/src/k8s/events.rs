//! Warning Events on the objects weft refuses, so `kubectl describe` and
//! `kubectl get events` show an operator what is wrong where they look.
//! Recording is best effort: a failure is logged (the refusal itself was
//! logged already) and never blocks the caller for more than 10 s.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Resource};

/// The controller name on weft's Events.
pub const REPORTING_CONTROLLER: &str = "weft.dev/control-plane";
/// Event notes are capped by the API server.
const NOTE_MAX: usize = 1024;

/// Why and how an Event is recorded.
pub struct Warning<'a> {
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

/// Records `w` as a Warning Event on `regarding`, in its namespace (or
/// `fallback_ns` for a cluster-scoped object).
pub async fn warn(
    client: &Client,
    regarding: ObjectReference,
    related: Option<ObjectReference>,
    fallback_ns: &str,
    w: Warning<'_>,
) {
    let ns = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| fallback_ns.to_string());
    let now = k8s_openapi::jiff::Timestamp::now();
    let name = regarding.name.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                truncate(&name, 200),
                now.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Warning".into()),
        reason: Some(w.reason.into()),
        action: Some(w.action.into()),
        note: Some(truncate(w.note, NOTE_MAX)),
        regarding: Some(regarding),
        related,
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reason = w.reason;
    match tokio::time::timeout(
        Duration::from_secs(10),
        api.create(&PostParams::default(), &event),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %super::proofs::api_error(&e), "cannot record the {reason} Event (logged above)")
        }
        Err(_) => {
            tracing::warn!(
                "the API server did not take the {reason} Event within 10s (logged above)"
            )
        }
    }
}

/// A reference to a typed object.
pub fn reference<K: Resource<DynamicType = ()>>(o: &K) -> ObjectReference {
    let meta = o.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

/// This replica, as Events name it: the pod name in a pod, else the host.
fn instance() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| truncate(&s, 128))
        .unwrap_or_else(|| "weft-control-plane".into())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(super::truncate("short", 10), "short");
        let t = super::truncate(&"é".repeat(1000), super::NOTE_MAX);
        assert!(
            t.len() <= super::NOTE_MAX && t.ends_with("..."),
            "{}",
            t.len()
        );
    }
}
