//! The proxy's admin endpoint: /live, /ready, /metrics, /identity, /policy.

use std::convert::Infallible;
use std::sync::Arc;

use bounds::{metrics, ready, text};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cert::ProxyCert;
use crate::policies::{Held, Policies};

/// Ready means: a certificate that is valid now.
pub fn readiness(cert: Option<&ProxyCert>, now: OffsetDateTime) -> Result<(), String> {
    match cert {
        None => Err("no certificate yet (waiting for the identity service)".into()),
        Some(c) if !c.is_valid(now) => Err(format!(
            "the certificate expired at {}",
            pki::info::rfc3339(c.not_after)
        )),
        Some(_) => Ok(()),
    }
}

/// The chain this proxy serves now, PEM, leaf first: public certificates
/// only (what any TLS peer sees), for `weft identity`.
fn identity(cert: Option<&ProxyCert>) -> Response<Full<Bytes>> {
    match cert {
        Some(c) => text(StatusCode::OK, pki::cert::to_pem(&c.certified.cert)),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no certificate yet (waiting for the identity service)\n".into(),
        ),
    }
}

/// GET /policy?port=N: the inbound policy this proxy holds for port N now
/// (names, networks, identities and routes: what `weft diagnostics policy`
/// compares with the resources). Never starts following a port.
fn policy(query: Option<&str>, policies: &Policies) -> Response<Full<Bytes>> {
    let port = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected /policy?port=N, N the workload port (1-65535)\n".into(),
        );
    };
    let view = |s: &policy::Server| policy::describe::describe(s);
    let body = match policies.held(port) {
        Held::Current(s) => serde_json::json!({
            "port": port, "state": "current", "policy": view(&s),
        }),
        Held::Waiting => serde_json::json!({
            "port": port, "state": "waiting",
            "note": "the proxy asked the control plane for this port's policy and has no answer yet; connections wait, then use the last default or deny",
        }),
        Held::NotFollowed(default) => serde_json::json!({
            "port": port, "state": "not followed",
            "note": "no connection has arrived on this port yet; the proxy fetches its policy at the first one",
            "default": default.as_deref().map(view),
        }),
    };
    let mut r = text(StatusCode::OK, format!("{body}\n"));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub cert: watch::Receiver<Option<Arc<ProxyCert>>>,
    pub policies: Arc<Policies>,
    /// Any pod can reach this port: its connections are capped and timed.
    pub gate: bounds::Gate,
}

async fn handle(
    req: Request<Incoming>,
    st: AdminState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => {
            let cert = st.cert.borrow().clone();
            ready(readiness(cert.as_deref(), OffsetDateTime::now_utc()))
        }
        "/metrics" => metrics(&st.registry),
        "/identity" => identity(st.cert.borrow().as_deref()),
        "/policy" => policy(req.uri().query(), &st.policies),
        other => text(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint {other}; try /live, /ready, /metrics, /identity or /policy?port=N\n"
            ),
        ),
    })
}

/// Serves plain HTTP, and HTTPS with the proxy's live certificate when the
/// SNI is the proxy's own identity, so `openssl s_client -connect POD:4191
/// -servername <identity>` shows the chain in use.
pub async fn serve(
    listener: TcpListener,
    st: AdminState,
    tls: Option<(tokio_rustls::TlsAcceptor, String)>,
) {
    loop {
        let (stream, slot) = st.gate.accept(&listener).await;
        let st = st.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let gate = st.gate.clone();
            let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
            let http = hyper::server::conn::http1::Builder::new();
            if let Some((acceptor, name)) = tls {
                let start =
                    crate::detect::peek_start(&stream, std::time::Duration::from_secs(1)).await;
                if matches!(&start, crate::detect::Start::Tls { sni: Some(n) } if *n == name) {
                    let (stream, activity) = bounds::Tracked::new(stream);
                    if let Some(Ok(t)) = gate.handshake(acceptor.accept(stream)).await {
                        let conn = http.serve_connection(TokioIo::new(t), svc);
                        gate.serve_until_idle(&activity, conn).await;
                    }
                    return;
                }
            }
            let (stream, activity) = bounds::Tracked::new(stream);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            gate.serve_until_idle(&activity, conn).await;
        });
    }
}
