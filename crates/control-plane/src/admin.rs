//! The admin endpoint (127.0.0.1 by default): /live, /ready, /metrics, the
//! fleet view (/fleet), the edges (/edges), the web view (/ui) and POST
//! /renew-now, behind the
//! operator guard (`operator`: this listener's own host, no foreign origin,
//! a header on every mutation).
//! The same endpoints are served off loopback, over TLS to allowed operator
//! certificates, by [`crate::operator_tls`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bounds::{metrics, ready, text};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use identity::IssuerStatus;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::own_cert::OwnCert;

/// Whether the control plane can do its job, and if not, why: pure, so the
/// verdict is tested without a server.
pub fn readiness(
    issuer: &IssuerStatus,
    own: Option<&OwnCert>,
    resources: Result<(), String>,
    record_failure: Option<&str>,
    now: OffsetDateTime,
) -> Result<(), String> {
    resources?;
    if let Some(why) = record_failure {
        return Err(format!(
            "cannot write the issuance record, so no certificate is issued (proxies keep theirs): {why}"
        ));
    }
    if issuer.current.is_none() {
        return Err(match &issuer.refused {
            Some(why) => format!("no valid issuer: {why}"),
            None => "no valid issuer yet".into(),
        });
    }
    match own {
        None => Err("the control plane has no certificate of its own yet".into()),
        Some(o) if o.not_after <= now => {
            Err("the control plane's own certificate has expired".into())
        }
        Some(_) => Ok(()),
    }
}

/// Ready, and why it is only so: the API unreachable (the last state is
/// served) or newer issuer material refused (the previous one serves).
pub fn ready_with_notes(note: Option<String>, refused: Option<&str>) -> String {
    let mut out = String::from("ready");
    if let Some(note) = note {
        out.push_str(&format!("; {note}"));
    }
    if let Some(why) = refused {
        out.push_str(&format!(
            "; a replacement issuer or trust anchors was refused, the previous issuer keeps serving: {why}"
        ));
    }
    out.push('\n');
    out
}

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub issuer: watch::Receiver<IssuerStatus>,
    pub own: watch::Receiver<Option<Arc<OwnCert>>>,
    pub index: watch::Receiver<Arc<crate::workloads::Index>>,
    pub fleet: Arc<crate::fleet::Fleet>,
    pub bundle: watch::Receiver<Option<Arc<crate::bundle::LiveBundle>>>,
    pub record: Arc<dyn identity::record::Record>,
    /// Connections are capped and timed, so none can starve the process.
    pub gate: bounds::Gate,
    /// Kubernetes mode: how the watches stand.
    pub kube: Option<watch::Receiver<crate::k8s::resources::KubeHealth>>,
    /// Kubernetes mode: the other replicas, merged into /fleet.
    pub peers: Option<crate::fleet_peers::Peers>,
    /// Refused handshakes and requests, counted by listener and reason.
    pub refusals: crate::operator_tls::Refusals,
    /// Taps open through this control plane (GET /tap), capped.
    pub tap_slots: Arc<tokio::sync::Semaphore>,
}

impl AdminState {
    /// Whether the resources are read, and a note when the last state is
    /// served while the API cannot be reached (ready, but degraded: every
    /// replica would fail together if that made them unready).
    fn resources(&self) -> (Result<(), String>, Option<String>) {
        if let Some(kube) = &self.kube {
            let h = kube.borrow().clone();
            return match h.not_ready() {
                Some(why) if !h.synced => (Err(why), None),
                note => (Ok(()), note),
            };
        }
        if self.index.borrow().loaded {
            (Ok(()), None)
        } else {
            (
                Err("the resource directory has not been read completely yet".into()),
                None,
            )
        }
    }
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_string_pretty(v).unwrap_or_default(),
        )))
        .unwrap_or_default()
}

/// POST /renew-now: every connected proxy that can take a leaf from the
/// current issuer renews, within the rate limit.
fn renew_now(st: &AdminState) -> Response<Full<Bytes>> {
    let current = st.bundle.borrow().clone();
    let Some(b) = current else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no trust bundle is in force yet (see /ready); nothing was asked\n".into(),
        );
    };
    st.fleet.served(&b);
    let (asked, skipped) = st.fleet.force_renewal(&b);
    let skipped: Vec<serde_json::Value> = skipped
        .into_iter()
        .map(|(identity, reason)| serde_json::json!({"identity": identity, "reason": reason}))
        .collect();
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"asked": asked, "skipped": skipped}),
    )
}

/// The operator guard's verdict on `req`, reached at `local`.
fn guard(req: &Request<Incoming>, local: std::net::IpAddr) -> Result<(), crate::operator::Refusal> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    // An HTTP/1.1 request line may carry the authority instead of Host.
    let host = header("host").or_else(|| req.uri().authority().map(|a| a.as_str()));
    crate::operator::judge(
        &crate::operator::Request {
            method: req.method().as_str(),
            host,
            origin: header("origin"),
            operator_header: req.headers().contains_key(crate::operator::OPERATOR_HEADER),
        },
        local,
    )
}

/// A request on the operator (TLS) listener: refused with 403 naming the
/// identity unless its client certificate's identity is allowed (or, in
/// Kubernetes mode without a certificate, its bearer token's user has the
/// permission the request needs), then served as on the admin listener.
pub(crate) async fn handle_operator(
    req: Request<Incoming>,
    st: AdminState,
    local: std::net::IpAddr,
    verdict: Result<pki::Identity, crate::operator_tls::NotAllowed>,
    tokens: Option<std::sync::Arc<crate::k8s::operator_auth::OperatorTokens>>,
) -> Result<Response<AdminBody>, Infallible> {
    use crate::operator_tls::NotAllowed;
    use http_body_util::BodyExt;
    match (verdict, tokens) {
        (Ok(_), _) => route(req, st, local, "operator").await,
        (Err(NotAllowed::NoCertificate), Some(tokens)) => {
            match crate::k8s::operator_auth::authorize(&req, &tokens).await {
                Ok(user) => {
                    tracing::debug!(%user, path = %req.uri().path(), "operator by bearer token");
                    route(req, st, local, "operator").await
                }
                Err(e) => {
                    tracing::info!(path = %req.uri().path(), "operator token refused: {e}");
                    st.refusals.count("operator", e.label());
                    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
                    let mut r = text(status, format!("{e}\n"));
                    if status == StatusCode::UNAUTHORIZED {
                        r.headers_mut().insert(
                            http::header::WWW_AUTHENTICATE,
                            http::HeaderValue::from_static("Bearer"),
                        );
                    }
                    Ok(r.map(BodyExt::boxed))
                }
            }
        }
        (Err(e), _) => {
            st.refusals.count("operator", e.label());
            Ok(text(StatusCode::FORBIDDEN, format!("{e}\n")).map(BodyExt::boxed))
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    st: AdminState,
    local: std::net::IpAddr,
    listener: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Err(e) = guard(&req, local) {
        tracing::info!(path = %req.uri().path(), listener, "admin request refused: {e}");
        st.refusals.count(listener, e.label());
        return Ok(text(StatusCode::FORBIDDEN, format!("{e}\n")));
    }
    if req.method() == Method::POST && req.uri().path() == "/renew-now" {
        return Ok(renew_now(&st));
    }
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET (or POST /renew-now)\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/fleet" => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let live = st.record.live(now);
            let current = st.bundle.borrow().clone();
            let mut view = st.fleet.view(now, current.as_deref(), &live);
            view.issuer_refused = st.issuer.borrow().refused.clone();
            if let Some(peers) = &st.peers {
                view = peers.merged(view).await;
            }
            json(StatusCode::OK, &view)
        }
        "/edges" => edges(&st, req.uri().query().unwrap_or("")).await,
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => {
            let issuer = st.issuer.borrow().clone();
            let own = st.own.borrow().clone();
            let (resources, note) = st.resources();
            match (
                readiness(
                    &issuer,
                    own.as_deref(),
                    resources,
                    st.record.failure().as_deref(),
                    OffsetDateTime::now_utc(),
                ),
                note,
            ) {
                (Ok(()), note) if note.is_some() || issuer.refused.is_some() => text(
                    StatusCode::OK,
                    ready_with_notes(note, issuer.refused.as_deref()),
                ),
                (r, _) => ready(r),
            }
        }
        "/metrics" => metrics(&st.registry),
        other => crate::ui::asset(other).unwrap_or_else(|| {
            text(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint {other}; try /live, /ready, /metrics, /fleet, /edges, /tap, /ui or POST /renew-now\n"
                ),
            )
        }),
    })
}

/// The query of GET /edges: `since` (seconds, default 600, at most
/// `MAX_WINDOW`) and `namespace` (default: all).
pub fn edges_query(query: &str) -> Result<(i64, Option<String>), String> {
    let mut since = 600;
    let mut namespace = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) => {
                since = v
                    .parse::<i64>()
                    .ok()
                    .filter(|s| (1..=crate::fleet_edges::MAX_WINDOW).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "since={v}: expected whole seconds from 1 to {}",
                            crate::fleet_edges::MAX_WINDOW
                        )
                    })?;
            }
            Some(("namespace", v)) if !v.is_empty() => namespace = Some(v.to_string()),
            _ => {
                return Err(format!(
                    "unknown query {pair:?}; expected since=SECONDS and/or namespace=NS"
                ));
            }
        }
    }
    Ok((since, namespace))
}

/// GET /edges: the edges active in the window, and the declared workloads
/// in scope without a connected proxy; in Kubernetes mode merged over every
/// replica (a proxy reports to the replica holding its stream).
async fn edges(st: &AdminState, query: &str) -> Response<Full<Bytes>> {
    let (since, namespace) = match edges_query(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let local = st.fleet.view(now, None, &[]);
    let (view, peer_edges) = match &st.peers {
        Some(p) => p.merged_with_edges(local, since, namespace.clone()).await,
        None => (local, Vec::new()),
    };
    let scope = crate::fleet_edges::Scope {
        namespace,
        declared: st
            .index
            .borrow()
            .workloads
            .iter()
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .collect(),
        meshed: view
            .proxies
            .iter()
            .filter(|p| p.state == "connected")
            .map(|p| p.workload.clone())
            .collect(),
    };
    let mut merged =
        crate::fleet_edges::merge_views(st.fleet.edges.window(now, since, &scope), peer_edges);
    merged.peers = view.peers;
    json(StatusCode::OK, &merged)
}

type AdminBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// GET /tap streams (NDJSON); every other endpoint answers at once.
async fn route(
    req: Request<Incoming>,
    st: AdminState,
    local: std::net::IpAddr,
    listener: &'static str,
) -> Result<Response<AdminBody>, Infallible> {
    use http_body_util::BodyExt;
    if req.method() == Method::GET && req.uri().path() == "/tap" {
        let answer = match guard(&req, local) {
            Err(e) => {
                tracing::info!(listener, "admin request refused: {e}");
                st.refusals.count(listener, e.label());
                text(StatusCode::FORBIDDEN, format!("{e}\n")).map(BodyExt::boxed)
            }
            Ok(()) => tap(&st, req.uri().query().unwrap_or("")),
        };
        return Ok(answer);
    }
    let r = handle(req, st, local, listener).await;
    Ok(r.map(|r| r.map(BodyExt::boxed))
        .unwrap_or_else(|e| match e {}))
}

/// GET /tap: the workload's proxies tapped, one JSON object per line.
fn tap(st: &AdminState, query: &str) -> Response<AdminBody> {
    use crate::tap::TapRefused;
    use http_body_util::BodyExt;
    let refused = |status, e: TapRefused| text(status, format!("{e}\n")).map(BodyExt::boxed);
    let q = match crate::tap::tap_query(query) {
        Ok(q) => q,
        Err(e) => return refused(StatusCode::BAD_REQUEST, TapRefused::Query(e)),
    };
    let (mut targets, mut known) = (Vec::new(), Vec::new());
    for w in &q.workloads {
        let (t, k) = st.fleet.tap_targets(w);
        targets.extend(t);
        known = k;
    }
    if targets.is_empty() {
        let known = if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        };
        let e = TapRefused::NoProxy {
            workload: q.workloads.join(", "),
            known,
        };
        return refused(StatusCode::NOT_FOUND, e);
    }
    let own = st.own.borrow().clone();
    let anchors = st
        .issuer
        .borrow()
        .current
        .as_ref()
        .map(|s| s.anchors.clone())
        .unwrap_or_default();
    match crate::tap::start(&q, targets, own, anchors, &st.tap_slots) {
        Err(e) => refused(StatusCode::SERVICE_UNAVAILABLE, e),
        Ok(rx) => {
            let frames = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                |b| Ok::<_, Infallible>(hyper::body::Frame::data(b)),
            );
            Response::builder()
                .header("content-type", "application/x-ndjson")
                .body(http_body_util::StreamBody::new(frames).boxed())
                .unwrap_or_default()
        }
    }
}

pub async fn serve(listener: TcpListener, st: AdminState) {
    loop {
        let (stream, slot) = st.gate.accept(&listener).await;
        let st = st.clone();
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let gate = st.gate.clone();
            let (stream, activity) = bounds::Tracked::new(stream);
            let svc =
                hyper::service::service_fn(move |req| route(req, st.clone(), local.ip(), "admin"));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            gate.serve_until_idle(&activity, conn).await;
        });
    }
}

pub fn local_addr(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_query_is_read_strictly() {
        assert_eq!(edges_query(""), Ok((600, None)));
        assert_eq!(
            edges_query("since=20&namespace=demo"),
            Ok((20, Some("demo".into())))
        );
        for bad in ["since=0", "since=3601", "since=x", "window=5", "namespace"] {
            let e = edges_query(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn not_ready_without_issuer_and_says_why() {
        let s = IssuerStatus {
            refused: Some("issuer certificate: expired".into()),
            ..Default::default()
        };
        let e = readiness(&s, None, Ok(()), None, OffsetDateTime::now_utc()).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        assert_eq!(
            readiness(
                &IssuerStatus::default(),
                None,
                Ok(()),
                None,
                OffsetDateTime::now_utc()
            )
            .unwrap_err(),
            "no valid issuer yet"
        );
        let e = readiness(
            &IssuerStatus::default(),
            None,
            Ok(()),
            Some("No space left on device"),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(
            e.contains("issuance record") && e.contains("No space"),
            "{e}"
        );
        assert!(
            readiness(
                &IssuerStatus::default(),
                None,
                Err("the resource directory has not been read completely yet".into()),
                None,
                OffsetDateTime::now_utc()
            )
            .unwrap_err()
            .contains("resource directory")
        );
    }
}
