//! Edges over a window: proxies report cumulative per-edge counters on the
//! mesh stream; the control plane turns them into deltas, kept in
//! `BUCKET`-second buckets for at most `MAX_WINDOW`, for at most
//! `MAX_EDGES` edges (new ones beyond are counted as dropped). Memory is
//! bounded whatever the fleet sends. The window view is a pure function.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use mesh_api::v1::ProxyReport;
use pki::Identity;
use serde::{Deserialize, Serialize};

/// The longest window `--since` may ask for, in seconds.
pub const MAX_WINDOW: i64 = 3600;
/// Bucket width in seconds (the proxies' report interval).
pub const BUCKET: i64 = 15;
/// Edges kept over the whole fleet.
pub const MAX_EDGES: usize = 10_000;
/// Proxy processes whose last counters are kept (to take deltas).
pub const MAX_INSTANCES: usize = 10_000;

/// One end of an edge: a proven identity, or only an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Identity(Identity),
    Address(String),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Identity(i) => write!(f, "{i}"),
            Peer::Address(a) => write!(f, "{a}"),
        }
    }
}

/// An edge as kept: who, to whom, and which proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// The reporting proxy's workload (namespace/name).
    pub workload: String,
    pub inbound: bool,
    pub client: Peer,
    pub server: Peer,
    pub mtls: bool,
    pub no_tls_reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u64,
    pub requests: u64,
    pub failures: u64,
}

impl Counts {
    /// What grew since `prev`; a counter below its last value restarted.
    fn since(self, prev: Counts) -> Counts {
        let d = |now: u64, was: u64| if now >= was { now - was } else { now };
        Counts {
            connections: d(self.connections, prev.connections),
            requests: d(self.requests, prev.requests),
            failures: d(self.failures, prev.failures),
        }
    }
    fn add(&mut self, o: Counts) {
        self.connections += o.connections;
        self.requests += o.requests;
        self.failures += o.failures;
    }
    fn is_zero(self) -> bool {
        self == Counts::default()
    }
}

/// A report's edges, read at the edge of the service: the reporting side
/// is the stream's mTLS identity, never what the report claims.
pub struct Reported {
    pub instance: String,
    pub workload: String,
    pub edges: Vec<(EdgeKey, Counts)>,
    pub dropped: u64,
}

impl Reported {
    pub fn from_proto(r: &ProxyReport, reporter: &Identity) -> Self {
        let edges = r
            .edges
            .iter()
            .map(|e| {
                let peer = match e.peer_identity.parse::<Identity>() {
                    Ok(i) if !e.peer_identity.is_empty() => Peer::Identity(i),
                    _ => Peer::Address(e.peer_addr.clone()),
                };
                let me = Peer::Identity(reporter.clone());
                let (client, server) = if e.inbound { (peer, me) } else { (me, peer) };
                let key = EdgeKey {
                    workload: r.workload.clone(),
                    inbound: e.inbound,
                    client,
                    server,
                    mtls: e.mtls,
                    no_tls_reason: e.no_tls_reason.clone(),
                };
                let counts = Counts {
                    connections: e.connections,
                    requests: e.requests,
                    failures: e.failures,
                };
                (key, counts)
            })
            .collect();
        Self {
            instance: format!("{reporter}/{}", r.instance),
            workload: r.workload.clone(),
            edges,
            dropped: r.edges_dropped,
        }
    }
}

/// Deltas in buckets (bucket start, counts), oldest first.
type Buckets = VecDeque<(i64, Counts)>;

fn bump(b: &mut Buckets, at: i64, c: Counts) {
    let start = at - at.rem_euclid(BUCKET);
    match b.back_mut() {
        Some((s, x)) if *s == start => x.add(c),
        _ => b.push_back((start, c)),
    }
}

fn prune(b: &mut Buckets, now: i64) {
    while b
        .front()
        .is_some_and(|(s, _)| *s + BUCKET < now - MAX_WINDOW)
    {
        b.pop_front();
    }
}

/// An edge key's 64-bit hash: a proxy's last counters are kept by hash, so
/// the book holds each edge's names once (in `edges`), not once per report.
fn key_hash(k: &EdgeKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

#[derive(Default)]
struct Book {
    /// Each proxy process's last cumulative counters (by key hash), when it
    /// reported, and its drop counter.
    last: HashMap<String, (i64, HashMap<u64, Counts>, u64)>,
    /// Old buckets are pruned once per bucket, not on every report.
    pruned_at: i64,
    edges: HashMap<EdgeKey, Buckets>,
    /// Edges the proxies could not keep, by workload, in buckets.
    proxy_drops: HashMap<String, Buckets>,
    /// Edges this book could not keep, in buckets.
    own_drops: Buckets,
}

/// The control plane's edges, shared by the mesh service and the admin.
#[derive(Default)]
pub struct EdgeBook(Mutex<Book>);

impl EdgeBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one report's cumulative counters at `now` (unix seconds).
    pub fn record(&self, r: Reported, now: i64) {
        let mut g = self.lock();
        let b = &mut *g;
        let (prev, prev_dropped) = match b.last.remove(&r.instance) {
            Some((_, p, d)) => (p, d),
            None => (HashMap::new(), 0),
        };
        let mut own_dropped = 0;
        for (key, counts) in &r.edges {
            let delta = counts.since(prev.get(&key_hash(key)).copied().unwrap_or_default());
            if delta.is_zero() {
                continue;
            }
            if !b.edges.contains_key(key) && b.edges.len() >= MAX_EDGES {
                own_dropped += 1;
                continue;
            }
            bump(b.edges.entry(key.clone()).or_default(), now, delta);
        }
        if own_dropped > 0 {
            let c = Counts {
                connections: own_dropped,
                ..Counts::default()
            };
            bump(&mut b.own_drops, now, c);
        }
        let dropped = if r.dropped >= prev_dropped {
            r.dropped - prev_dropped
        } else {
            r.dropped
        };
        if dropped > 0 {
            let c = Counts {
                connections: dropped,
                ..Counts::default()
            };
            bump(b.proxy_drops.entry(r.workload.clone()).or_default(), now, c);
        }
        let cumulative = r.edges.iter().map(|(k, c)| (key_hash(k), *c)).collect();
        b.last.insert(r.instance, (now, cumulative, r.dropped));
        if now >= b.pruned_at + BUCKET || now < b.pruned_at {
            prune_book(b, now);
            b.pruned_at = now;
        }
    }

    /// The edges active in the last `since_s` seconds (see `window`).
    pub fn window(&self, now: i64, since_s: i64, scope: &Scope) -> EdgesView {
        let g = self.lock();
        window(&g.edges, &g.proxy_drops, &g.own_drops, now, since_s, scope)
    }
}

fn prune_book(b: &mut Book, now: i64) {
    for x in b.edges.values_mut() {
        prune(x, now);
    }
    b.edges.retain(|_, x| !x.is_empty());
    for x in b.proxy_drops.values_mut() {
        prune(x, now);
    }
    b.proxy_drops.retain(|_, x| !x.is_empty());
    prune(&mut b.own_drops, now);
    b.last.retain(|_, (at, _, _)| *at >= now - MAX_WINDOW);
    if b.last.len() > MAX_INSTANCES {
        let mut ages: Vec<(i64, String)> = b.last.iter().map(|(k, v)| (v.0, k.clone())).collect();
        ages.sort();
        for (_, k) in ages.iter().take(ages.len() - MAX_INSTANCES) {
            b.last.remove(k);
        }
    }
}

/// What a window looks at: a namespace (or all), the workloads declared
/// there and the workloads with a connected proxy.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub namespace: Option<String>,
    pub declared: Vec<String>,
    pub meshed: BTreeSet<String>,
}

impl Scope {
    fn holds(&self, workload: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| workload.split_once('/').is_some_and(|(n, _)| n == ns))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    pub client: Peer,
    pub server: Peer,
    /// The workload whose proxy saw it (the server's inbound, or the
    /// client's plaintext egress).
    pub workload: String,
    pub direction: String,
    pub mtls: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub no_tls_reason: String,
    /// Either end without a mesh identity.
    pub unmeshed: bool,
    pub connections: u64,
    pub requests: u64,
    pub failures: u64,
    /// Requests not answered 5xx, over all requests; none without requests.
    pub success_rate: Option<f64>,
    /// Seconds since the last report that saw it grow.
    pub last_seen_s: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropView {
    pub workload: String,
    pub edges: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgesView {
    pub now: i64,
    pub since_s: i64,
    pub namespace: Option<String>,
    pub edges: Vec<EdgeView>,
    /// Edges proxies in scope could not keep in the window: none of them
    /// can be shown, so none can be proven mTLS.
    pub proxy_drops: Vec<DropView>,
    /// Edges the control plane could not keep in the window.
    pub control_plane_drops: u64,
    /// Declared workloads in scope with no connected proxy.
    pub unmeshed_workloads: Vec<String>,
    /// Kubernetes mode: the other replicas whose edges are merged in; one
    /// that could not be asked says why (its proxies' hops are missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::fleet_peers::PeerStatus>,
}

/// `local` with other replicas' views of the same window added: an edge
/// seen through several replicas (its proxy failed over) sums its counts.
pub fn merge_views(mut local: EdgesView, peers: Vec<EdgesView>) -> EdgesView {
    type Key = (Peer, Peer, String, String, bool, String);
    let key = |e: &EdgeView| -> Key {
        (
            e.client.clone(),
            e.server.clone(),
            e.workload.clone(),
            e.direction.clone(),
            e.mtls,
            e.no_tls_reason.clone(),
        )
    };
    let mut all: BTreeMap<Key, EdgeView> = BTreeMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    let views = std::iter::once(std::mem::take(&mut local.edges))
        .chain(peers.iter().map(|p| p.edges.clone()));
    for e in views.flatten() {
        match all.get_mut(&key(&e)) {
            Some(have) => {
                have.connections += e.connections;
                have.requests += e.requests;
                have.failures += e.failures;
                have.last_seen_s = have.last_seen_s.min(e.last_seen_s);
                have.success_rate = (have.requests > 0).then(|| {
                    (have.requests - have.failures.min(have.requests)) as f64 / have.requests as f64
                });
            }
            None => {
                all.insert(key(&e), e);
            }
        }
    }
    for d in local
        .proxy_drops
        .drain(..)
        .chain(peers.iter().flat_map(|p| p.proxy_drops.clone()))
    {
        *drops.entry(d.workload).or_default() += d.edges;
    }
    local.control_plane_drops += peers.iter().map(|p| p.control_plane_drops).sum::<u64>();
    local.edges = all.into_values().collect();
    local.proxy_drops = drops
        .into_iter()
        .map(|(workload, edges)| DropView { workload, edges })
        .collect();
    local
}

fn sum_since(b: &Buckets, from: i64) -> (Counts, Option<i64>) {
    let mut c = Counts::default();
    let mut last = None;
    // A bucket counts when any of it lies inside the window.
    for (s, x) in b.iter().filter(|(s, _)| *s + BUCKET > from) {
        c.add(*x);
        last = Some(*s);
    }
    (c, last)
}

/// The window view: pure over the buckets.
pub fn window(
    edges: &HashMap<EdgeKey, Buckets>,
    proxy_drops: &HashMap<String, Buckets>,
    own_drops: &Buckets,
    now: i64,
    since_s: i64,
    scope: &Scope,
) -> EdgesView {
    let from = now - since_s.clamp(0, MAX_WINDOW);
    let mut merged: BTreeMap<&EdgeKey, (Counts, i64)> = BTreeMap::new();
    for (k, b) in edges.iter().filter(|(k, _)| scope.holds(&k.workload)) {
        let (c, last) = sum_since(b, from);
        if let Some(last) = last {
            merged.insert(k, (c, last));
        }
    }
    let edges = merged
        .into_iter()
        .map(|(k, (c, last))| EdgeView {
            client: k.client.clone(),
            server: k.server.clone(),
            workload: k.workload.clone(),
            direction: if k.inbound { "inbound" } else { "outbound" }.into(),
            mtls: k.mtls,
            no_tls_reason: k.no_tls_reason.clone(),
            unmeshed: matches!(k.client, Peer::Address(_)) || matches!(k.server, Peer::Address(_)),
            connections: c.connections,
            requests: c.requests,
            failures: c.failures,
            success_rate: (c.requests > 0)
                .then(|| (c.requests - c.failures.min(c.requests)) as f64 / c.requests as f64),
            last_seen_s: (now - (last + BUCKET)).max(0),
        })
        .collect();
    let mut drops: Vec<DropView> = proxy_drops
        .iter()
        .filter(|(w, _)| scope.holds(w))
        .map(|(w, b)| DropView {
            workload: w.clone(),
            edges: sum_since(b, from).0.connections,
        })
        .filter(|d| d.edges > 0)
        .collect();
    drops.sort_by(|a, b| a.workload.cmp(&b.workload));
    let mut unmeshed: Vec<String> = scope
        .declared
        .iter()
        .filter(|w| scope.holds(w) && !scope.meshed.contains(*w))
        .cloned()
        .collect();
    unmeshed.sort();
    unmeshed.dedup();
    EdgesView {
        now,
        since_s,
        namespace: scope.namespace.clone(),
        edges,
        proxy_drops: drops,
        control_plane_drops: sum_since(own_drops, from).0.connections,
        unmeshed_workloads: unmeshed,
        peers: Vec::new(),
    }
}

/// Why a window fails the plaintext gate (`weft edges --plaintext`): each
/// plaintext edge, each unmeshed workload, and any drop (a dropped edge
/// cannot be proven mTLS). Empty: every hop in the window was mTLS.
pub fn plaintext_violations(v: &EdgesView) -> Vec<String> {
    let mut out: Vec<String> = v
        .edges
        .iter()
        .filter(|e| !e.mtls)
        .map(|e| {
            format!(
                "plaintext: {} -> {} ({} connections, seen by {}, no TLS because {})",
                e.client,
                e.server,
                e.connections,
                e.workload,
                if e.no_tls_reason.is_empty() {
                    "unknown"
                } else {
                    &e.no_tls_reason
                }
            )
        })
        .collect();
    out.extend(
        v.unmeshed_workloads
            .iter()
            .map(|w| format!("unmeshed: workload {w} is declared but no proxy of it is connected")),
    );
    out.extend(v.proxy_drops.iter().map(|d| {
        format!(
            "unknown: the proxy of {} could not keep {} edges (its edge table was full), so they cannot be proven mTLS",
            d.workload, d.edges
        )
    }));
    out.extend(v.peers.iter().filter_map(|p| {
        p.error.as_ref().map(|e| {
            format!(
                "unknown: the control-plane replica at {} could not be asked ({e}), so the hops of the proxies attached to it cannot be shown",
                p.address
            )
        })
    }));
    if v.control_plane_drops > 0 {
        out.push(format!(
            "unknown: the control plane could not keep {} edges (its edge book was full), so they cannot be proven mTLS",
            v.control_plane_drops
        ));
    }
    out
}

#[cfg(test)]
#[path = "fleet_edges_tests.rs"]
mod tests;
