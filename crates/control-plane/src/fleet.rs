//! The fleet: every proxy holding a `weft.mesh.v1` stream (connected), every
//! one that held one (stale, last report kept), and every live certificate
//! with no stream at all (unmanaged, e.g. a linkerd2-proxy). The view and the
//! renew-now decisions are pure functions over this state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use identity::state::Issuance;
use mesh_api::v1::{ProxyReport, RenewNow};
use pki::Identity;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::bundle::{LiveBundle, Version};

/// A proxy is asked to renew again only after this long.
pub const RENEW_AGAIN_AFTER: Duration = Duration::from_secs(30);
/// How long a renew-now request waits for its result.
const PENDING_FOR: Duration = Duration::from_secs(600);
/// Stale entries kept at most; the longest-gone are forgotten first (their
/// live certificates then show as unmanaged).
pub const MAX_STALE: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub version: Option<Version>,
    pub reason: String,
}

/// How a proxy's last certificate refresh went, as it reported it. Shown
/// in the fleet JSON as before: "ok", the error, or "" before any.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum LastRefresh {
    #[default]
    NotYet,
    Ok,
    Failed(String),
}

/// The report's text field, read once at the edge.
impl From<String> for LastRefresh {
    fn from(s: String) -> Self {
        match s.as_str() {
            "" => Self::NotYet,
            "ok" => Self::Ok,
            _ => Self::Failed(s),
        }
    }
}

impl From<LastRefresh> for String {
    fn from(r: LastRefresh) -> Self {
        match r {
            LastRefresh::NotYet => String::new(),
            LastRefresh::Ok => "ok".into(),
            LastRefresh::Failed(e) => e,
        }
    }
}

/// A proxy's last report, as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub identity: Identity,
    pub workload: String,
    pub bundle: Option<Version>,
    pub refused: Option<Refusal>,
    pub leaf_serial: String,
    pub spki_sha256: String,
    pub issuer_sha256: String,
    pub anchor_sha256: String,
    pub not_after: i64,
    pub last_refresh: LastRefresh,
    pub last_refresh_at: i64,
    pub renew_request_id: String,
    /// Where its admin endpoint answers (see `admin_endpoint`).
    #[serde(default)]
    pub admin_addr: String,
    /// Where its tap listener answers (as `admin_addr`).
    #[serde(default)]
    pub tap_addr: String,
    /// What its mesh connections offer and accept; None from a proxy that
    /// does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MeshTlsView>,
}

/// A proxy's TLS 1.3 cipher suites and key exchange groups, by name, most
/// preferred first.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshTlsView {
    pub cipher_suites: Vec<String>,
    pub key_exchange: Vec<String>,
}

/// Where a proxy's admin endpoint answers: the address it reported, with
/// an unspecified host (it listens on every address) replaced by the
/// address its stream comes from. Empty when neither says.
pub fn admin_endpoint(reported: &str, stream_from: Option<std::net::IpAddr>) -> String {
    match reported.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => stream_from
            .map(|ip| std::net::SocketAddr::new(ip, a.port()).to_string())
            .unwrap_or_default(),
        Ok(a) => a.to_string(),
        Err(_) => String::new(),
    }
}

fn version(v: Option<mesh_api::v1::BundleVersion>) -> Option<Version> {
    v.filter(|v| v.generation > 0).map(|v| Version {
        generation: v.generation,
        sha256: v.sha256,
    })
}

impl Report {
    /// A report from the stream of `identity` (its mTLS identity: what the
    /// report claims is checked by the caller, never trusted).
    pub fn from_proto(
        r: ProxyReport,
        identity: Identity,
        stream_from: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            admin_addr: admin_endpoint(&r.admin_addr, stream_from),
            tap_addr: admin_endpoint(&r.tap_addr, stream_from),
            identity,
            workload: r.workload,
            bundle: version(r.bundle),
            refused: r.refused.map(|x| Refusal {
                version: version(x.version),
                reason: x.reason,
            }),
            leaf_serial: r.leaf_serial,
            spki_sha256: r.spki_sha256,
            issuer_sha256: r.issuer_sha256,
            anchor_sha256: r.anchor_sha256,
            not_after: r.not_after_unix,
            last_refresh: r.last_refresh.into(),
            last_refresh_at: r.last_refresh_unix,
            renew_request_id: r.renew_request_id,
            tls: (!r.tls_cipher_suites.is_empty() || !r.tls_key_exchange.is_empty()).then_some(
                MeshTlsView {
                    cipher_suites: r.tls_cipher_suites,
                    key_exchange: r.tls_key_exchange,
                },
            ),
        }
    }
}

struct Entry {
    identity: Identity,
    report: Option<Report>,
    sender: Option<mpsc::Sender<RenewNow>>,
    connected_at: i64,
    last_report_at: Option<i64>,
    disconnected_at: Option<i64>,
    asked: Option<Instant>,
    /// Asked by hand: renew even if already on the current issuer.
    forced: bool,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: BTreeMap<u64, Entry>,
    /// Bundles served since start: content hash → anchor fingerprints.
    bundles: HashMap<String, Vec<String>>,
    /// Renew-now requests awaiting their result: request id → trigger, sent.
    pending: HashMap<String, (&'static str, Instant)>,
}

#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    /// The edges the proxies report, over a window.
    pub edges: crate::fleet_edges::EdgeBook,
    pub metrics: crate::fleet_metrics::FleetMetrics,
}

/// Why a proxy is not asked to renew now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NoReport,
    /// Its bundle does not hold the current issuer's anchor: a new leaf would
    /// not verify there.
    BundleLacksIssuerAnchor,
    AlreadyCurrent,
    AskedRecently,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NoReport => "it has not reported yet",
            Skip::BundleLacksIssuerAnchor => {
                "it has not acknowledged a bundle holding the current issuer's anchor"
            }
            Skip::AlreadyCurrent => "its leaf is already from the current issuer",
            Skip::AskedRecently => "it was asked less than 30s ago",
        }
    }
}

/// Whether to ask a proxy to renew now: pure.
pub fn renewal_decision(
    report: Option<&Report>,
    acked_anchors: Option<&[String]>,
    bundle: &LiveBundle,
    asked_ago: Option<Duration>,
    forced: bool,
) -> Result<(), Skip> {
    let r = report.ok_or(Skip::NoReport)?;
    if !acked_anchors.is_some_and(|a| a.contains(&bundle.issuer_anchor)) {
        return Err(Skip::BundleLacksIssuerAnchor);
    }
    if asked_ago.is_some_and(|a| a < RENEW_AGAIN_AFTER) {
        return Err(Skip::AskedRecently);
    }
    if !forced && r.issuer_sha256 == bundle.issuer_sha256 {
        return Err(Skip::AlreadyCurrent);
    }
    Ok(())
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers which anchors a bundle version holds.
    pub fn served(&self, b: &LiveBundle) {
        self.lock()
            .bundles
            .insert(b.version.sha256.clone(), b.anchors.clone());
    }

    pub fn attach(&self, identity: &Identity, sender: mpsc::Sender<RenewNow>, now: i64) -> u64 {
        let mut g = self.lock();
        g.next += 1;
        let id = g.next;
        g.entries.insert(
            id,
            Entry {
                identity: identity.clone(),
                report: None,
                sender: Some(sender),
                connected_at: now,
                last_report_at: None,
                disconnected_at: None,
                asked: None,
                forced: false,
            },
        );
        id
    }

    /// Records a report from stream `id`; the caller has checked its identity.
    pub fn report(&self, id: u64, r: Report, now: i64) {
        let mut g = self.lock();
        if !r.renew_request_id.is_empty()
            && let Some((trigger, _)) = g.pending.remove(&r.renew_request_id)
        {
            let result = if r.last_refresh == LastRefresh::Ok {
                "renewed"
            } else {
                "failed"
            };
            self.metrics.renew_result(trigger, result);
        }
        // The same proxy reconnected: its stale entry is replaced.
        let stale: Vec<u64> = g
            .entries
            .iter()
            .filter(|(k, e)| {
                **k != id
                    && e.sender.is_none()
                    && e.identity == r.identity
                    && e.report.as_ref().is_some_and(|x| x.workload == r.workload)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            g.entries.remove(&k);
        }
        if let Some(e) = g.entries.get_mut(&id) {
            e.report = Some(r);
            e.last_report_at = Some(now);
        }
    }

    pub fn detach(&self, id: u64, now: i64) {
        let mut g = self.lock();
        let forget = match g.entries.get_mut(&id) {
            Some(e) => {
                e.sender = None;
                e.disconnected_at = Some(now);
                e.report.is_none()
            }
            None => false,
        };
        // A stream that never reported says nothing worth keeping.
        if forget {
            g.entries.remove(&id);
        }
        let stale: Vec<(i64, u64)> = g
            .entries
            .iter()
            .filter_map(|(k, e)| e.disconnected_at.map(|t| (t, *k)))
            .collect();
        if stale.len() > MAX_STALE {
            let mut stale = stale;
            stale.sort();
            for (_, k) in stale.iter().take(stale.len() - MAX_STALE) {
                g.entries.remove(k);
            }
        }
    }

    /// Marks every connected proxy to renew at the next pass, whatever its
    /// issuer; returns how many were marked and why the others were not.
    pub fn force_renewal(&self, bundle: &LiveBundle) -> (usize, Vec<(Identity, &'static str)>) {
        let mut g = self.lock();
        let Inner {
            entries, bundles, ..
        } = &mut *g;
        let mut marked = 0;
        let mut skipped = Vec::new();
        for e in entries.values_mut().filter(|e| e.sender.is_some()) {
            let acked = e
                .report
                .as_ref()
                .and_then(|r| r.bundle.as_ref())
                .and_then(|v| bundles.get(&v.sha256));
            match renewal_decision(
                e.report.as_ref(),
                acked.map(Vec::as_slice),
                bundle,
                None,
                true,
            ) {
                Ok(()) => {
                    e.forced = true;
                    e.asked = None;
                    marked += 1;
                }
                Err(s) => skipped.push((e.identity.clone(), s.reason())),
            }
        }
        (marked, skipped)
    }

    /// One pass: asks at most `limit` proxies to renew, those on an older
    /// issuer (after an issuer change) or marked by hand. Those never asked
    /// go first, then those asked longest ago, so proxies that do not renew
    /// (asked again every 30 s) cannot keep the rest of the fleet waiting.
    pub fn renew_pass(&self, bundle: &LiveBundle, limit: usize) -> usize {
        let mut g = self.lock();
        let Inner {
            entries,
            bundles,
            pending,
            ..
        } = &mut *g;
        // A request never answered (the proxy went away) is forgotten.
        pending.retain(|_, (_, at)| at.elapsed() < PENDING_FOR);
        let mut due: Vec<(Option<Instant>, u64)> = entries
            .iter()
            .filter(|(_, e)| e.sender.is_some())
            .filter(|(_, e)| {
                let acked = e
                    .report
                    .as_ref()
                    .and_then(|r| r.bundle.as_ref())
                    .and_then(|v| bundles.get(&v.sha256));
                let asked_ago = e.asked.map(|a| a.elapsed());
                let d = renewal_decision(
                    e.report.as_ref(),
                    acked.map(Vec::as_slice),
                    bundle,
                    asked_ago,
                    e.forced,
                );
                d.is_ok()
            })
            .map(|(k, e)| (e.asked, *k))
            .collect();
        // None (never asked) sorts first.
        due.sort_unstable();
        let mut sent = 0;
        for (_, k) in due {
            if sent >= limit {
                break;
            }
            let Some(e) = entries.get_mut(&k) else {
                continue;
            };
            let Some(tx) = e.sender.clone() else { continue };
            let trigger = if e.forced { "manual" } else { "issuer_change" };
            let request_id = format!("{trigger}-{:016x}", rand_u64());
            let msg = RenewNow {
                request_id: request_id.clone(),
                reason: if e.forced {
                    "renewal requested by hand (POST /renew-now)".into()
                } else {
                    format!("the issuer changed to {}", bundle.issuer_sha256)
                },
            };
            if tx.try_send(msg).is_ok() {
                tracing::info!(identity = %e.identity, %request_id, trigger, "asked a proxy to renew now");
                e.asked = Some(Instant::now());
                e.forced = false;
                pending.insert(request_id, (trigger, Instant::now()));
                self.metrics.renew_request(trigger);
                sent += 1;
            }
        }
        sent
    }

    /// The connected proxies of `workload` that report a tap address, and
    /// every workload with a proxy (for a refusal naming them).
    pub fn tap_targets(&self, workload: &str) -> (Vec<crate::tap::Target>, Vec<String>) {
        let g = self.lock();
        let reports = g
            .entries
            .values()
            .filter_map(|e| Some((e, e.report.as_ref()?)));
        let mut known: Vec<String> = reports.clone().map(|(_, r)| r.workload.clone()).collect();
        known.sort();
        known.dedup();
        let targets = reports
            .filter(|(e, r)| e.sender.is_some() && r.workload == workload && !r.tap_addr.is_empty())
            .map(|(e, r)| crate::tap::Target {
                identity: e.identity.clone(),
                workload: r.workload.clone(),
                tap_addr: r.tap_addr.clone(),
            })
            .collect();
        (targets, known)
    }

    /// The fleet as the admin endpoint shows it.
    pub fn view(&self, now: i64, bundle: Option<&LiveBundle>, live: &[Issuance]) -> FleetView {
        let g = self.lock();
        let entries: Vec<EntryView<'_>> = g
            .entries
            .values()
            .map(|e| EntryView {
                identity: &e.identity,
                report: e.report.as_ref(),
                connected: e.sender.is_some(),
                since: e.disconnected_at.unwrap_or(e.connected_at),
                last_report_at: e.last_report_at,
            })
            .collect();
        view(now, bundle, &entries, live)
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b)
}

/// One registry entry, borrowed for `view`.
pub struct EntryView<'a> {
    pub identity: &'a Identity,
    pub report: Option<&'a Report>,
    pub connected: bool,
    /// Connected since, or disconnected since (unix seconds).
    pub since: i64,
    pub last_report_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleView {
    pub generation: u64,
    pub sha256: String,
    pub anchors: Vec<String>,
    pub issuer_sha256: String,
    pub issuer_anchor: String,
    /// Each anchor's NotAfter (unix seconds), in the order of `anchors`
    /// (empty from a control plane older than this field).
    #[serde(default)]
    pub anchor_not_after: Vec<i64>,
    /// The issuer in force's NotAfter (unix seconds; 0 from an older one).
    #[serde(default)]
    pub issuer_not_after: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    pub workload: String,
    pub identity: Identity,
    /// "connected" or "stale".
    pub state: String,
    /// Seconds since it connected, or since it went stale.
    pub for_s: i64,
    /// Seconds since its last report (-1: none yet).
    pub last_report_age_s: i64,
    pub bundle: Option<Version>,
    pub bundle_current: bool,
    pub refused: Option<Refusal>,
    pub leaf_serial: String,
    pub spki_sha256: String,
    pub issuer_sha256: String,
    pub issuer_current: bool,
    pub anchor_sha256: String,
    pub anchor_in_bundle: bool,
    pub not_after: i64,
    pub expires_in_s: i64,
    pub last_refresh: LastRefresh,
    pub renew_request_id: String,
    /// Where its admin endpoint answers (host:port); empty from a proxy
    /// that does not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub admin_addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MeshTlsView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmanagedView {
    pub identity: Identity,
    pub serial: String,
    pub issuer_sha256: String,
    pub not_after: i64,
    pub expires_in_s: i64,
    /// Every live certificate of it was obtained with a join token: it
    /// renews by token, not over mTLS.
    pub token_only: bool,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    pub now: i64,
    pub bundle: Option<BundleView>,
    pub proxies: Vec<ProxyView>,
    pub unmanaged: Vec<UnmanagedView>,
    /// Kubernetes mode: the other replicas whose proxies are merged in
    /// (see `fleet_peers`); one that could not be asked says why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<crate::fleet_peers::PeerStatus>,
    /// The control plane's release, so `weft check` can judge proxy
    /// version skew (empty from a control plane older than this field).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Why the newest issuer/anchor material was refused while the previous
    /// issuer keeps serving (absent when the newest is in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_refused: Option<String>,
}

/// This build's release (the workspace version), as the fleet view states it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The view: pure over the registry, the bundle in force and the live
/// certificates of the issuance record.
pub fn view(
    now: i64,
    bundle: Option<&LiveBundle>,
    entries: &[EntryView<'_>],
    live: &[Issuance],
) -> FleetView {
    let mut proxies: Vec<ProxyView> = entries
        .iter()
        .filter_map(|e| {
            let r = e.report?;
            Some(ProxyView {
                workload: r.workload.clone(),
                identity: e.identity.clone(),
                state: if e.connected { "connected" } else { "stale" }.into(),
                for_s: now - e.since,
                last_report_age_s: e.last_report_at.map(|t| now - t).unwrap_or(-1),
                bundle: r.bundle.clone(),
                bundle_current: bundle.is_some_and(|b| r.bundle.as_ref() == Some(&b.version)),
                refused: r.refused.clone(),
                leaf_serial: r.leaf_serial.clone(),
                spki_sha256: r.spki_sha256.clone(),
                issuer_sha256: r.issuer_sha256.clone(),
                issuer_current: bundle.is_some_and(|b| b.issuer_sha256 == r.issuer_sha256),
                anchor_sha256: r.anchor_sha256.clone(),
                anchor_in_bundle: bundle.is_some_and(|b| b.anchors.contains(&r.anchor_sha256)),
                not_after: r.not_after,
                expires_in_s: r.not_after - now,
                last_refresh: r.last_refresh.clone(),
                renew_request_id: r.renew_request_id.clone(),
                admin_addr: r.admin_addr.clone(),
                tls: r.tls.clone(),
            })
        })
        .collect();
    proxies.sort_by(|a, b| (&a.workload, &a.identity).cmp(&(&b.workload, &b.identity)));
    // Live certificates of identities no stream ever reported.
    let managed: std::collections::BTreeSet<&Identity> =
        entries.iter().map(|e| e.identity).collect();
    let mut by_identity: BTreeMap<&Identity, Vec<&Issuance>> = BTreeMap::new();
    for i in live.iter().filter(|i| i.not_after > now) {
        if !managed.contains(&i.identity) {
            by_identity.entry(&i.identity).or_default().push(i);
        }
    }
    let unmanaged = by_identity
        .into_iter()
        .filter_map(|(identity, certs)| {
            let latest = certs.iter().max_by_key(|i| i.issued_at)?;
            let token_only = certs.iter().all(|i| i.proof.starts_with("token:"));
            Some(UnmanagedView {
                identity: identity.clone(),
                serial: latest.serial.clone(),
                issuer_sha256: latest.issuer_sha256.clone(),
                not_after: latest.not_after,
                expires_in_s: latest.not_after - now,
                token_only,
                note: if token_only && certs.len() > 1 {
                    "no weft.mesh.v1 stream (e.g. a linkerd2-proxy): restart required to change its anchors; it renews with a join token each time".into()
                } else {
                    "no weft.mesh.v1 stream (e.g. a linkerd2-proxy): restart required to change its anchors".into()
                },
            })
        })
        .collect();
    FleetView {
        now,
        bundle: bundle.map(|b| BundleView {
            generation: b.version.generation,
            sha256: b.version.sha256.clone(),
            anchors: b.anchors.clone(),
            issuer_sha256: b.issuer_sha256.clone(),
            issuer_anchor: b.issuer_anchor.clone(),
            anchor_not_after: b.anchor_not_after.clone(),
            issuer_not_after: b.issuer_not_after,
        }),
        proxies,
        unmanaged,
        peers: Vec::new(),
        version: VERSION.into(),
        issuer_refused: None,
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
