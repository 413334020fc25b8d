//! GET /tap on the operator listener: opens `Tap.Observe` on every
//! connected proxy of a workload with the control plane's own certificate,
//! merges the streams and answers one JSON object per line (NDJSON).
//! Bounded: a few taps at once, each for at most `MAX_SECONDS`; a client
//! that stops reading stops the proxies' streams being read, and the
//! proxies drop (and count) what does not fit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use linkerd2_proxy_api::tap::observe_request::{Match, r#match};
use linkerd2_proxy_api::tap::tap_client::TapClient;
use linkerd2_proxy_api::tap::tap_event::{self, http as ev};
use linkerd2_proxy_api::tap::{ObserveRequest, TapEvent, eos};
use pki::Identity;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use crate::own_cert::OwnCert;

/// Taps open at once through this control plane.
pub const MAX_TAPS: usize = 8;
/// A tap ends after this long (the CLI says so and can be run again).
pub const MAX_SECONDS: u64 = 3600;
pub const DEFAULT_SECONDS: u64 = 600;
/// Lines queued for a slow client before the proxies' streams wait.
const QUEUE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(10);
/// The proxy's metadata keys (see the proxy's tap server).
const SHOW_QUERY: &str = "weft-tap-show-query";
const MAX_RPS: &str = "weft-tap-max-rps";
const DROPPED_LABEL: &str = "weft_dropped_before";

/// Workloads one tap may name.
pub const MAX_WORKLOADS: usize = 64;

/// What GET /tap asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapQuery {
    /// `namespace/name` each (a Deployment's pods, say), at most
    /// [`MAX_WORKLOADS`].
    pub workloads: Vec<String>,
    /// Only requests to this workload (`namespace/name`).
    pub to: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub max_rps: Option<u32>,
    pub show_query: bool,
    pub seconds: u64,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn workload_ref(key: &str, v: &str) -> Result<String, String> {
    match v.split_once('/') {
        Some((ns, name)) if valid_name(ns) && valid_name(name) => Ok(v.to_string()),
        _ => Err(format!(
            "{key}={v:?}: expected NAMESPACE/NAME of lowercase letters, digits, '-' and '.'"
        )),
    }
}

/// `%XX` and `+` decoded; None for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query of GET /tap, read strictly: pure.
pub fn tap_query(query: &str) -> Result<TapQuery, String> {
    let mut q = TapQuery {
        workloads: Vec::new(),
        to: None,
        method: None,
        path: None,
        max_rps: None,
        show_query: false,
        seconds: DEFAULT_SECONDS,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let v =
            percent_decode(raw).ok_or_else(|| format!("{pair:?} is not percent-encoded UTF-8"))?;
        match k {
            "workload" if q.workloads.len() >= MAX_WORKLOADS => {
                return Err(format!(
                    "more than {MAX_WORKLOADS} workloads: tap fewer at once"
                ));
            }
            "workload" => q.workloads.push(workload_ref(k, &v)?),
            "to" => q.to = Some(workload_ref(k, &v)?),
            "method" => {
                let ok =
                    !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_uppercase());
                if !ok {
                    return Err(format!(
                        "method={v:?}: expected an HTTP method like GET or POST (upper case)"
                    ));
                }
                q.method = Some(v);
            }
            "path" => {
                if !v.starts_with('/') || v.contains('?') || v.chars().any(char::is_control) {
                    return Err(format!(
                        "path={v:?}: expected a path prefix starting with '/', without a query"
                    ));
                }
                q.path = Some(v);
            }
            "max_rps" => {
                q.max_rps = Some(v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!(
                        "max_rps={v:?}: expected a whole number of requests a second, at least 1"
                    )
                })?);
            }
            "show_query" => {
                q.show_query = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("show_query={v:?}: expected true or false")),
                }
            }
            "seconds" => {
                q.seconds = v
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=MAX_SECONDS).contains(s))
                    .ok_or_else(|| {
                        format!("seconds={v:?}: expected whole seconds from 1 to {MAX_SECONDS}")
                    })?;
            }
            _ => {
                return Err(format!(
                    "unknown query {pair:?}; expected workload=NS/NAME and optionally to, method, path, max_rps, show_query, seconds"
                ));
            }
        }
    }
    if q.workloads.is_empty() {
        return Err("workload=NS/NAME is required: the workload whose proxies to tap".into());
    }
    Ok(q)
}

/// The proxy's match for a query: pure.
pub fn observe_request(q: &TapQuery) -> ObserveRequest {
    use r#match::Match as M;
    use r#match::http::{Match as H, StringMatch, string_match::Match as S};
    let http = |h: H| Match {
        r#match: Some(M::Http(r#match::Http { r#match: Some(h) })),
    };
    let mut all = Vec::new();
    if let Some(m) = &q.method {
        let method = http::Method::from_bytes(m.as_bytes())
            .map(Into::into)
            .unwrap_or_default();
        all.push(http(H::Method(method)));
    }
    if let Some(p) = &q.path {
        all.push(http(H::Path(StringMatch {
            r#match: Some(S::Prefix(p.clone())),
        })));
    }
    if let Some(to) = &q.to {
        all.push(Match {
            r#match: Some(M::DestinationLabel(r#match::Label {
                key: "workload".into(),
                value: to.clone(),
            })),
        });
    }
    ObserveRequest {
        limit: 0,
        r#match: Some(Match {
            r#match: Some(M::All(r#match::Seq { matches: all })),
        }),
        extract: None,
    }
}

/// One event as `weft tap` prints it (`-o json` prints these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TapLine {
    /// `req`, `rsp` or `end`.
    pub kind: String,
    /// `PROXY:STREAM`: the proxy's index in this tap, the request's stream.
    pub id: String,
    /// `in` or `out`.
    pub proxy: String,
    pub workload: String,
    pub src: String,
    pub dst: String,
    /// `true`, or the reason there was no TLS.
    pub tls: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// rsp: since the request; end: since the request too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_code: Option<u32>,
    /// Events this proxy dropped before this one (the reader was behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_before: Option<u64>,
}

/// A line saying a proxy could not be tapped (printed to stderr).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TapError {
    pub error: String,
}

fn addr(a: &Option<linkerd2_proxy_api::net::TcpAddress>) -> String {
    let Some(a) = a else { return String::new() };
    let ip: Option<std::net::IpAddr> = a.ip.and_then(|ip| ip.try_into().ok());
    ip.map(|ip| std::net::SocketAddr::new(ip, a.port as u16).to_string())
        .unwrap_or_default()
}

fn micros(d: &Option<prost_types::Duration>) -> Option<u64> {
    d.as_ref()
        .map(|d| (d.seconds.max(0) as u64) * 1_000_000 + (d.nanos.max(0) as u64) / 1000)
}

/// The line for one event of proxy `index` (fronting `workload`): pure.
pub fn line(e: &TapEvent, index: usize, workload: &str) -> Option<TapLine> {
    let Some(tap_event::Event::Http(h)) = &e.event else {
        return None;
    };
    let label = |m: &Option<tap_event::EndpointMeta>, k: &str| {
        m.as_ref().and_then(|m| m.labels.get(k).cloned())
    };
    let mut l = TapLine {
        proxy: match e.proxy_direction {
            2 => "out",
            _ => "in",
        }
        .into(),
        workload: workload.to_string(),
        src: addr(&e.source),
        dst: addr(&e.destination),
        tls: label(&e.source_meta, "tls").unwrap_or_else(|| "no_identity".into()),
        client_id: label(&e.source_meta, "client_id"),
        server_id: label(&e.destination_meta, "server_id"),
        dropped_before: e
            .route_meta
            .as_ref()
            .and_then(|m| m.labels.get(DROPPED_LABEL))
            .and_then(|n| n.parse().ok()),
        ..TapLine::default()
    };
    let id =
        |id: &Option<ev::StreamId>| format!("{index}:{}", id.map(|i| i.stream).unwrap_or_default());
    match h.event.as_ref()? {
        ev::Event::RequestInit(r) => {
            l.kind = "req".into();
            l.id = id(&r.id);
            l.method = r
                .method
                .clone()
                .and_then(|m| http::Method::try_from(m).ok())
                .map(|m| m.to_string());
            l.authority = Some(r.authority.clone());
            l.path = Some(r.path.clone());
        }
        ev::Event::ResponseInit(r) => {
            l.kind = "rsp".into();
            l.id = id(&r.id);
            l.status = Some(r.http_status);
            l.latency_us = micros(&r.since_request_init);
        }
        ev::Event::ResponseEnd(r) => {
            l.kind = "end".into();
            l.id = id(&r.id);
            l.latency_us = micros(&r.since_request_init);
            l.response_bytes = Some(r.response_bytes);
            match r.eos.as_ref().and_then(|e| e.end) {
                Some(eos::End::GrpcStatusCode(c)) => l.grpc_status = Some(c),
                Some(eos::End::ResetErrorCode(c)) => l.reset_code = Some(c),
                None => {}
            }
        }
    }
    Some(l)
}

/// A proxy to tap: its identity (the TLS name) and tap address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub identity: Identity,
    pub workload: String,
    pub tap_addr: String,
}

/// Why GET /tap could not start.
#[derive(Debug, thiserror::Error)]
pub enum TapRefused {
    #[error("{0}")]
    Query(String),
    #[error(
        "no connected proxy of workload {workload} reports a tap address; workloads with a proxy: {known} (give NAMESPACE/NAME or -n NAMESPACE)"
    )]
    NoProxy { workload: String, known: String },
    #[error("{MAX_TAPS} taps are open through this control plane already; end one and try again")]
    Busy,
    #[error(
        "the control plane has no certificate or trust anchors yet (see /ready); try again when it is ready"
    )]
    NotReady,
}

/// mTLS to a proxy: its chain judged by the anchors in force, its name
/// checked (SNI = its identity), the control plane's certificate presented.
fn client_tls(
    own: &OwnCert,
    anchors: &[pki::CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for a in anchors {
        roots.add(a.clone())?;
    }
    let mut cfg = ClientConfig::builder_with_provider(pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(crate::fleet_peers::OwnClientCert(
            own.certified.clone(),
        )));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Opens the tap on every target; lines arrive on the receiver until every
/// proxy's stream ended, `q.seconds` passed, or the receiver was dropped.
pub fn start(
    q: &TapQuery,
    targets: Vec<Target>,
    own: Option<Arc<OwnCert>>,
    anchors: Vec<pki::CertificateDer<'static>>,
    slots: &Arc<Semaphore>,
) -> Result<mpsc::Receiver<Bytes>, TapRefused> {
    let own = own.ok_or(TapRefused::NotReady)?;
    if anchors.is_empty() {
        return Err(TapRefused::NotReady);
    }
    let tls = client_tls(&own, &anchors).map_err(|_| TapRefused::NotReady)?;
    let permit = slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| TapRefused::Busy)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let req = observe_request(q);
    let meta: Vec<(&'static str, String)> = [
        q.show_query.then(|| (SHOW_QUERY, "true".to_string())),
        q.max_rps.map(|n| (MAX_RPS, n.to_string())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let deadline = Duration::from_secs(q.seconds);
    tokio::spawn(async move {
        let _permit = permit;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, t) in targets.into_iter().enumerate() {
            let (tls, req, meta, tx) = (tls.clone(), req.clone(), meta.clone(), tx.clone());
            tasks.spawn(async move {
                if let Err(e) = observe(i, &t, tls, req, meta, &tx).await {
                    let line = TapError {
                        error: format!(
                            "proxy {} of {} at {}: {e}",
                            t.identity, t.workload, t.tap_addr
                        ),
                    };
                    let _ = tx.send(json_line(&line)).await;
                }
            });
        }
        // An empty line now and then: a quiet tap is not an idle connection,
        // and a client that went away is noticed.
        let keepalive = async move {
            let mut tick = tokio::time::interval(KEEPALIVE);
            tick.tick().await;
            loop {
                tick.tick().await;
                if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                    return;
                }
            }
        };
        let all = async { while tasks.join_next().await.is_some() {} };
        tokio::select! {
            () = all => {}
            () = keepalive => {}
            () = tokio::time::sleep(deadline) => {
                tracing::info!(seconds = deadline.as_secs(), "tap ended: its time is up");
            }
        }
    });
    Ok(rx)
}

fn json_line(v: &impl Serialize) -> Bytes {
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    Bytes::from(s)
}

/// One proxy's stream, forwarded as lines; an error says why it ended.
async fn observe(
    index: usize,
    t: &Target,
    tls: Arc<ClientConfig>,
    req: ObserveRequest,
    meta: Vec<(&'static str, String)>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let addr: std::net::SocketAddr = t
        .tap_addr
        .parse()
        .map_err(|e| format!("bad tap address: {e}"))?;
    let name = ServerName::try_from(t.identity.to_string()).map_err(|e| e.to_string())?;
    let channel = crate::tls::mtls_channel(addr, tls, name, CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("cannot connect: {}", crate::tls::error_chain(&e)))?;
    let mut request = tonic::Request::new(req);
    for (k, v) in meta {
        if let Ok(v) = v.parse() {
            request.metadata_mut().insert(k, v);
        }
    }
    let mut stream = TapClient::new(channel)
        .observe(request)
        .await
        .map_err(|s| format!("refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(e)) => {
                if let Some(l) = line(&e, index, &t.workload)
                    && tx.send(json_line(&l)).await.is_err()
                {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("stream ended: {:?}: {}", s.code(), s.message())),
        }
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
