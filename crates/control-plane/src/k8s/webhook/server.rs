//! The injector's HTTPS listener: `POST /inject` with an AdmissionReview,
//! answered from [`super::admission::decide`]. Bounded like every listener
//! (connection cap, handshake and idle timeouts, a body cap).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bounds::text;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use inject::NamespaceMeta;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::admission::{Verdict, decide};
use super::trust_copies::TrustCopies;
use crate::k8s::proofs::api_error;

/// The API server sends at most 3 MiB of object; room for the envelope.
const MAX_BODY: usize = 4 << 20;
/// Reading the namespace must leave time within the webhook's 10 s.
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Admissions by outcome: injected, skipped, denied, error.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    admissions: Family<ResultLabel, Counter>,
}

impl WebhookMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "injector_admissions",
            "Pod admissions the injector answered, by result (injected, skipped, denied, error)",
            self.admissions.clone(),
        );
    }

    fn count(&self, result: &str) {
        self.admissions
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

#[derive(Clone)]
pub struct Handler {
    pub client: kube::Client,
    pub settings: inject::Settings,
    pub copies: TrustCopies,
    pub metrics: WebhookMetrics,
}

pub async fn serve(listener: TcpListener, tls: TlsAcceptor, gate: bounds::Gate, h: Handler) {
    loop {
        let (stream, slot) = gate.accept(&listener).await;
        let (tls, gate, h) = (tls.clone(), gate.clone(), h.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Some(Ok(stream)) = gate.handshake(tls.accept(stream)).await else {
                return;
            };
            let (stream, activity) = bounds::Tracked::new(stream);
            let svc = hyper::service::service_fn(move |req| handle(req, h.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            gate.serve_until_idle(&activity, conn).await;
        });
    }
}

fn json(body: &AdmissionReview<DynamicObject>) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(req: Request<Incoming>, h: Handler) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/inject" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "the injector answers POST /inject only\n".into(),
        ));
    }
    if req.method() != Method::POST {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST with an AdmissionReview\n".into(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            h.metrics.count("error");
            return Ok(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body ({e}); at most {MAX_BODY} bytes\n"),
            ));
        }
    };
    let request: AdmissionRequest<DynamicObject> =
        match serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
            .map_err(|e| e.to_string())
            .and_then(|r| r.try_into().map_err(|_| "it has no request".to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                h.metrics.count("error");
                tracing::warn!(error = %e, "injector: malformed AdmissionReview");
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    format!("not an admission.k8s.io/v1 AdmissionReview: {e}\n"),
                ));
            }
        };
    let response = admit(&request, &h).await;
    Ok(json(&response.into_review()))
}

async fn admit(req: &AdmissionRequest<DynamicObject>, h: &Handler) -> AdmissionResponse {
    let allow = AdmissionResponse::from(req);
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    let (Some(obj), true, true) = (&req.object, is_pod, req.operation == Operation::Create) else {
        h.metrics.count("skipped");
        return allow;
    };
    let Some(ns) = req.namespace.clone() else {
        h.metrics.count("error");
        return allow.deny("the AdmissionReview names no namespace for the pod");
    };
    let pod = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => {
            h.metrics.count("error");
            return allow.deny(format!("cannot read the pod: {e}"));
        }
    };
    let api: Api<Namespace> = Api::all(h.client.clone());
    let meta = match tokio::time::timeout(NAMESPACE_TIMEOUT, api.get(&ns)).await {
        Ok(Ok(n)) => NamespaceMeta::from_namespace(&serde_json::to_value(&n).unwrap_or_default()),
        Ok(Err(e)) => {
            h.metrics.count("error");
            return allow.deny(format!(
                "weft cannot read namespace {ns} to decide on meshing: {}; try again",
                api_error(&e)
            ));
        }
        Err(_) => {
            h.metrics.count("error");
            return allow.deny(format!(
                "weft could not read namespace {ns} within {NAMESPACE_TIMEOUT:?}; try again"
            ));
        }
    };
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    match decide(&pod, &meta, &h.settings) {
        Verdict::Allow(note) => {
            h.metrics.count("skipped");
            tracing::debug!(namespace = %ns, pod = %name, note, "not injected");
            allow
        }
        Verdict::Deny(why) => {
            h.metrics.count("denied");
            tracing::info!(namespace = %ns, pod = %name, reason = %why, "pod refused");
            allow.deny(why)
        }
        Verdict::Patch {
            patch,
            injected,
            note,
        } => {
            if injected
                && !req.dry_run
                && let Err(e) = h.copies.ensure(&ns).await
            {
                h.metrics.count("denied");
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "pod refused");
                return allow.deny(format!("weft cannot mesh this pod: {e}"));
            }
            h.metrics
                .count(if injected { "injected" } else { "skipped" });
            tracing::info!(namespace = %ns, pod = %name, note, "admitted");
            match allow.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => allow.deny(format!("weft cannot encode its patch: {e}")),
            }
        }
    }
}

/// The TLS acceptor: the keeper's serving certificate, HTTP/1.1.
pub fn acceptor(
    certs: tokio::sync::watch::Receiver<Option<Arc<rustls::sign::CertifiedKey>>>,
) -> Result<TlsAcceptor, rustls::Error> {
    let cfg = pki::tls::server_config(
        rustls::server::WebPkiClientVerifier::no_client_auth(),
        Arc::new(Resolver(certs)),
        b"http/1.1",
    )?;
    Ok(TlsAcceptor::from(cfg))
}

#[derive(Debug)]
struct Resolver(tokio::sync::watch::Receiver<Option<Arc<rustls::sign::CertifiedKey>>>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.borrow().clone()
    }
}
