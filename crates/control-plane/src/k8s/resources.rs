//! The Kubernetes resource source: watches of the kinds policy and
//! discovery read, fed through the same parsing and checks as the resource
//! directory, published as the same [`Snapshot`].
//!
//! Unlike a directory, the API is the whole truth: each publication is made
//! from what the API holds now ([`policy::resources::replace`]), so a refused
//! object grants nothing and a restart or another replica gives the same
//! snapshot. While the API cannot be reached the last state stays served.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use policy::resources::{FileOutcome, Origin, Snapshot, read_value, replace};
use tokio::sync::{mpsc, watch};

use super::events::Warning;

/// One watched kind: group, version, kind, plural, whether cluster-scoped.
struct Watched {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

/// What the control plane reads from the API. A CRD that is not installed
/// is an empty kind, retried in the background, never a reason to stall.
const WATCHED: &[Watched] = &[
    w("", "v1", "Namespace", "namespaces"),
    w("", "v1", "Pod", "pods"),
    w("", "v1", "Service", "services"),
    w("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    w("policy.linkerd.io", "v1beta3", "Server", "servers"),
    w(
        "policy.linkerd.io",
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    w(
        "policy.linkerd.io",
        "v1alpha1",
        "MeshTLSAuthentication",
        "meshtlsauthentications",
    ),
    w(
        "policy.linkerd.io",
        "v1alpha1",
        "NetworkAuthentication",
        "networkauthentications",
    ),
    w("policy.linkerd.io", "v1beta3", "HTTPRoute", "httproutes"),
    w("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    w(
        "workload.linkerd.io",
        "v1beta1",
        "ExternalWorkload",
        "externalworkloads",
    ),
];

const fn w(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Watched {
    Watched {
        group,
        version,
        kind,
        plural,
    }
}

impl Watched {
    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    /// `pods`, `servers.policy.linkerd.io`: kubectl's name for the resource.
    fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// How the watches stand, for `/ready` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeHealth {
    /// Every kind has been listed at least once.
    pub synced: bool,
    /// Per resource: why its watch is failing now (retried with backoff).
    pub failing: BTreeMap<String, String>,
    /// Resources whose CRD is not installed (served as empty).
    pub absent: Vec<String>,
}

impl KubeHealth {
    /// Why the source is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.synced {
            let why = if self.failing.is_empty() {
                "listing them".to_string()
            } else {
                self.describe_failing()
            };
            return Some(format!(
                "the Kubernetes resources have not been read yet: {why}"
            ));
        }
        (!self.failing.is_empty()).then(|| {
            format!(
                "serving the last state read from the Kubernetes API: {}",
                self.describe_failing()
            )
        })
    }

    fn describe_failing(&self) -> String {
        self.failing
            .iter()
            .map(|(r, e)| format!("{r}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

pub struct KubeSource {
    pub client: kube::Client,
    pub control_plane_ns: String,
    pub trust_domain: String,
}

enum Msg {
    Init(usize),
    InitApply(usize, DynamicObject),
    InitDone(usize),
    Apply(usize, DynamicObject),
    Delete(usize, DynamicObject),
    Absent(usize),
    Failed(usize, String),
}

/// One object as the snapshot takes it, and its text when refused.
struct Held {
    outcome: FileOutcome,
    refused_text: Option<String>,
}

/// Quiet time after an event before publishing, so a burst (a Deployment
/// scaling, an initial list) is one snapshot.
const SETTLE: Duration = Duration::from_millis(100);
/// The longest a burst may delay a publication.
const MAX_BURST: Duration = Duration::from_secs(1);

impl KubeSource {
    /// Runs forever, publishing on `tx` once every kind has been listed, and
    /// on every change after that; the watches' state on `health`.
    pub async fn run(self, tx: watch::Sender<Arc<Snapshot>>, health: watch::Sender<KubeHealth>) {
        let (msg_tx, mut msgs) = mpsc::channel::<Msg>(1024);
        let refusals = self.record_refusals();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, watched) in WATCHED.iter().enumerate() {
            tasks.spawn(watch_kind(self.client.clone(), i, watched, msg_tx.clone()));
        }
        drop(msg_tx);
        let mut state = State::new(WATCHED.len());
        let mut current = tx.borrow().clone();
        while let Some(first) = msgs.recv().await {
            self.apply(&mut state, first, &refusals);
            // Drain the burst, but publish at least every MAX_BURST: a
            // steady trickle must never hold a snapshot back.
            let until = tokio::time::Instant::now() + MAX_BURST;
            while let Ok(Ok(Some(m))) = tokio::time::timeout_at(until, async {
                tokio::time::timeout(SETTLE, msgs.recv()).await
            })
            .await
            {
                self.apply(&mut state, m, &refusals);
            }
            health.send_if_modified(|h| {
                let next = state.health();
                let changed = *h != next;
                if changed {
                    log_health(h, &next);
                    *h = next;
                }
                changed
            });
            if !state.synced.iter().all(|s| *s) || !state.dirty {
                continue;
            }
            state.dirty = false;
            let next = Arc::new(state.snapshot(&current));
            if next.generation != current.generation {
                crate::source::log_changes(&"the Kubernetes API", &current, &next);
                current = next.clone();
                tx.send_replace(next);
            }
        }
    }

    /// A task recording each refused object as a Warning Event, once per
    /// version of it; what the channel cannot take is only logged.
    fn record_refusals(&self) -> mpsc::Sender<(ObjectReference, String)> {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, String)>(256);
        let client = self.client.clone();
        let fallback = self.control_plane_ns.clone();
        tokio::spawn(async move {
            while let Some((regarding, note)) = rx.recv().await {
                let w = Warning {
                    reason: "PolicyObjectRefused",
                    action: "JudgePolicy",
                    note: &note,
                };
                super::events::warn(&client, regarding, None, &fallback, w).await;
            }
        });
        tx
    }

    fn apply(
        &self,
        state: &mut State,
        msg: Msg,
        refusals: &mpsc::Sender<(ObjectReference, String)>,
    ) {
        match msg {
            Msg::Init(k) => state.buffer[k] = Some(BTreeMap::new()),
            Msg::InitApply(k, o) => {
                let held = self.hold(k, &o);
                state.report(k, &o, &held, refusals);
                state.buffer[k]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(origin(k, &o), held);
            }
            Msg::InitDone(k) => {
                let listed = state.buffer[k].take().unwrap_or_default();
                state.objects[k] = listed;
                state.synced[k] = true;
                state.failing[k] = None;
                state.absent[k] = false;
                state.dirty = true;
            }
            Msg::Apply(k, o) => {
                let held = self.hold(k, &o);
                state.report(k, &o, &held, refusals);
                state.objects[k].insert(origin(k, &o), held);
                state.failing[k] = None;
                state.dirty = true;
            }
            Msg::Delete(k, o) => {
                state.reported.remove(&origin(k, &o));
                state.objects[k].remove(&origin(k, &o));
                state.dirty = true;
            }
            Msg::Absent(k) => {
                state.objects[k].clear();
                state.buffer[k] = None;
                state.synced[k] = true;
                state.absent[k] = true;
                state.failing[k] = None;
                state.dirty = true;
            }
            Msg::Failed(k, why) => state.failing[k] = Some(why),
        }
    }

    /// Parses one object with the directory's rules.
    fn hold(&self, k: usize, o: &DynamicObject) -> Held {
        let value = object_value(&WATCHED[k], o);
        let origin = origin(k, o);
        let outcome = read_value(&origin, &value, &self.control_plane_ns, &self.trust_domain);
        let refused_text = matches!(outcome, FileOutcome::Refused(_))
            .then(|| serde_json::to_string(&value).unwrap_or_default());
        Held {
            outcome,
            refused_text,
        }
    }
}

fn log_health(prev: &KubeHealth, next: &KubeHealth) {
    for (r, e) in &next.failing {
        if prev.failing.get(r) != Some(e) {
            tracing::warn!(resource = %r, error = %e, "cannot watch Kubernetes resources; retrying with backoff and serving the last state read");
        }
    }
    for r in prev
        .failing
        .keys()
        .filter(|r| !next.failing.contains_key(*r))
    {
        tracing::info!(resource = %r, "watching Kubernetes resources again");
    }
    for r in next.absent.iter().filter(|r| !prev.absent.contains(r)) {
        tracing::info!(resource = %r, "not installed in this cluster; served as empty, and watched for");
    }
    if next.synced && !prev.synced {
        tracing::info!("every Kubernetes resource has been read");
    }
}

/// Per watched kind: what the API holds, a list being received, health.
struct State {
    objects: Vec<BTreeMap<Origin, Held>>,
    buffer: Vec<Option<BTreeMap<Origin, Held>>>,
    synced: Vec<bool>,
    absent: Vec<bool>,
    failing: Vec<Option<String>>,
    dirty: bool,
    /// The resourceVersion of each refused object already recorded as an
    /// Event: one Event per version, not one per relist.
    reported: BTreeMap<Origin, String>,
}

impl State {
    fn new(n: usize) -> Self {
        State {
            objects: (0..n).map(|_| BTreeMap::new()).collect(),
            buffer: (0..n).map(|_| None).collect(),
            synced: vec![false; n],
            absent: vec![false; n],
            failing: vec![None; n],
            dirty: true,
            reported: BTreeMap::new(),
        }
    }

    /// Queues an Event for `o` when weft refused it and this version has
    /// not been recorded yet.
    fn report(
        &mut self,
        k: usize,
        o: &DynamicObject,
        held: &Held,
        refusals: &mpsc::Sender<(ObjectReference, String)>,
    ) {
        let FileOutcome::Refused(problems) = &held.outcome else {
            return;
        };
        let key = origin(k, o);
        let version = o.metadata.resource_version.clone().unwrap_or_default();
        if self.reported.get(&key) == Some(&version) {
            return;
        }
        let w = &WATCHED[k];
        let regarding = ObjectReference {
            api_version: Some(if w.group.is_empty() {
                w.version.to_string()
            } else {
                format!("{}/{}", w.group, w.version)
            }),
            kind: Some(w.kind.to_string()),
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone(),
            uid: o.metadata.uid.clone(),
            resource_version: o.metadata.resource_version.clone(),
            ..Default::default()
        };
        let why: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let note = format!("{}; it grants nothing until fixed", why.join("; "));
        match refusals.try_send((regarding, note)) {
            Ok(()) => {
                self.reported.insert(key, version);
            }
            Err(_) => tracing::debug!("too many refusals queued; this one is only logged"),
        }
    }

    fn health(&self) -> KubeHealth {
        KubeHealth {
            synced: self.synced.iter().all(|s| *s),
            failing: self
                .failing
                .iter()
                .enumerate()
                .filter_map(|(k, f)| Some((WATCHED[k].resource_name(), f.clone()?)))
                .collect(),
            absent: (0..self.absent.len())
                .filter(|k| self.absent[*k])
                .map(|k| WATCHED[k].resource_name())
                .collect(),
        }
    }

    fn snapshot(&self, prev: &Snapshot) -> Snapshot {
        let mut read = BTreeMap::new();
        let mut texts = BTreeMap::new();
        for (origin, held) in self.objects.iter().flatten() {
            read.insert(origin.clone(), held.outcome.clone());
            if let Some(t) = &held.refused_text {
                texts.insert(origin.clone(), t.clone());
            }
        }
        replace(prev, read, Arc::new(texts))
    }
}

/// `kube/servers.policy.linkerd.io/demo/web`: names the object in problems
/// the way a file path does for the directory source.
fn origin(k: usize, o: &DynamicObject) -> Origin {
    let w = &WATCHED[k];
    let name = o.metadata.name.as_deref().unwrap_or("");
    let mut p = PathBuf::from("kube");
    p.push(w.resource_name());
    if let Some(ns) = o.metadata.namespace.as_deref() {
        p.push(ns);
    }
    p.push(name);
    p
}

/// The object as a document: its type stated (list items omit it), and the
/// server's bookkeeping that weft never reads dropped.
fn object_value(w: &Watched, o: &DynamicObject) -> serde_json::Value {
    let mut value = serde_json::to_value(o).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        let api_version = if w.group.is_empty() {
            w.version.to_string()
        } else {
            format!("{}/{}", w.group, w.version)
        };
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), w.kind.into());
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
    }
    value
}

/// Follows one kind for ever; the watcher retries with backoff.
async fn watch_kind(
    client: kube::Client,
    k: usize,
    watched: &'static Watched,
    tx: mpsc::Sender<Msg>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &watched.resource());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(WatchRetry::default())
        .boxed();
    while let Some(ev) = stream.next().await {
        let msg = match ev {
            Ok(Event::Init) => Msg::Init(k),
            Ok(Event::InitApply(o)) => Msg::InitApply(k, o),
            Ok(Event::InitDone) => Msg::InitDone(k),
            Ok(Event::Apply(o)) => Msg::Apply(k, o),
            Ok(Event::Delete(o)) => Msg::Delete(k, o),
            Err(e) if not_installed(&e) => Msg::Absent(k),
            Err(e) => Msg::Failed(k, e.to_string()),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Watch retries: jittered, doubling from 0.1 s to at most 3.2 s, so a
/// recovered API server is read again within seconds (kube's default waits
/// up to 30 s) and replicas do not retry in step.
#[derive(Default)]
struct WatchRetry {
    failures: u32,
    last: Option<std::time::Instant>,
}

/// Failures older than this are forgotten.
const QUIET: Duration = Duration::from_secs(60);

impl Iterator for WatchRetry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.last.is_some_and(|t| t.elapsed() > QUIET) {
            self.failures = 0;
        }
        self.last = Some(std::time::Instant::now());
        let d = bounds::retry::backoff(self.failures.min(5));
        self.failures = self.failures.saturating_add(1);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchRetry {
    /// Ignored: a watcher yields `Init` before every list, even one that
    /// then fails (a CRD not installed), so resetting here would retry
    /// every 0.1 s for ever. Old failures are forgotten in `next` instead.
    fn reset(&mut self) {}
}

/// The API answers 404 for a resource whose CRD is not installed.
fn not_installed(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            s.code == 404 || s.is_not_found()
        }
        _ => false,
    }
}
