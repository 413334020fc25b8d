//! The tap listener: `io.linkerd.proxy.tap.Tap/Observe` over mTLS with the
//! proxy's own certificate. Only the control plane's identity may observe;
//! every other caller is refused with PERMISSION_DENIED naming it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bounds::{Gate, Tracked};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use linkerd2_proxy_api::tap::tap_server::{Tap, TapServer};
use linkerd2_proxy_api::tap::{ObserveRequest, TapEvent};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{Ask, DROPPED_LABEL, Taps, filter};

/// Taps open at once on one proxy; more are refused (RESOURCE_EXHAUSTED).
pub const MAX_TAPS: usize = 16;

/// gRPC request metadata: the query string is shown only when asked.
pub const SHOW_QUERY: &str = "weft-tap-show-query";
/// gRPC request metadata: at most this many requests a second are tapped.
pub const MAX_RPS: &str = "weft-tap-max-rps";

/// Who called, as the TLS handshake verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Identity(pki::Identity),
    /// No client certificate, or one that names no mesh identity: why.
    Anonymous(String),
}

/// Why a tap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "tap is only for the control plane ({expected}); {caller} may not observe this proxy's traffic; use `weft tap` through the control plane"
    )]
    NotControlPlane {
        caller: Box<pki::Identity>,
        expected: Box<pki::Identity>,
    },
    #[error(
        "tap needs the control plane's client certificate ({expected}); got {why}; use `weft tap` through the control plane"
    )]
    Anonymous {
        why: String,
        expected: Box<pki::Identity>,
    },
    #[error("invalid tap match: {0}")]
    Filter(#[source] filter::FilterError),
    #[error("{MAX_RPS} {0:?} is not a whole number of requests a second; send a positive integer")]
    MaxRps(String),
}

/// Only the control plane observes.
pub fn authorize(caller: &Caller, control_plane: &pki::Identity) -> Result<(), Refusal> {
    match caller {
        Caller::Identity(id) if id == control_plane => Ok(()),
        Caller::Identity(id) => Err(Refusal::NotControlPlane {
            caller: Box::new(id.clone()),
            expected: Box::new(control_plane.clone()),
        }),
        Caller::Anonymous(why) => Err(Refusal::Anonymous {
            why: why.clone(),
            expected: Box::new(control_plane.clone()),
        }),
    }
}

/// What a reader asked for: the match, `limit` (0: none), and the
/// show-query and max-rps metadata.
pub fn ask(
    req: &ObserveRequest,
    show_query: Option<&str>,
    max_rps: Option<&str>,
) -> Result<Ask, Refusal> {
    let filter = filter::compile(req.r#match.as_ref()).map_err(Refusal::Filter)?;
    let max_rps = match max_rps {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Refusal::MaxRps(s.to_string()))?,
        ),
    };
    Ok(Ask {
        filter,
        limit: (req.limit > 0).then_some(u64::from(req.limit)),
        max_rps,
        show_query: show_query == Some("true"),
    })
}

#[derive(Debug, Clone)]
pub struct TapService {
    pub taps: Taps,
    pub control_plane: pki::Identity,
    pub slots: Arc<Semaphore>,
}

type Events = Pin<Box<dyn Stream<Item = Result<TapEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Tap for TapService {
    type ObserveStream = Events;

    async fn observe(&self, req: Request<ObserveRequest>) -> Result<Response<Events>, Status> {
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller::Anonymous("no TLS session".into()));
        if let Err(r) = authorize(&caller, &self.control_plane) {
            tracing::info!("tap refused: {r}");
            return Err(Status::permission_denied(r.to_string()));
        }
        let meta = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok());
        let ask = ask(req.get_ref(), meta(SHOW_QUERY), meta(MAX_RPS))
            .map_err(|r| Status::invalid_argument(r.to_string()))?;
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_TAPS} taps are open on this proxy already; close one and try again"
            ))
        })?;
        let (reg, rx) = self.taps.open(ask);
        let events = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = tokio_stream::StreamExt::map(events, move |mut e| {
            // Held by the stream: the tap closes when the reader goes.
            let _held = &permit;
            let dropped = reg.take_dropped();
            if dropped > 0 {
                e.route_meta
                    .get_or_insert_with(Default::default)
                    .labels
                    .insert(DROPPED_LABEL.into(), dropped.to_string());
            }
            Ok(e)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The caller a TLS session verified.
fn caller(
    tls: &tokio_rustls::server::TlsStream<Tracked<tokio::net::TcpStream>>,
    control_plane_ns: &str,
) -> Caller {
    match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => Caller::Anonymous("no client certificate".into()),
        Some(leaf) => match pki::peer_identity_in(leaf, control_plane_ns) {
            Ok(id) => Caller::Identity(id),
            Err(e) => Caller::Anonymous(format!("a certificate naming no identity ({e})")),
        },
    }
}

/// Serves the tap listener: capped, handshake under the deadline, closed
/// when idle. The control plane's connections get HTTP/2 keepalive PINGs,
/// so a quiet tap stays open and a dead peer is found; others get none and
/// close once idle.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, svc: TapService, gate: Gate) {
    let ns = svc.control_plane.control_plane_ns().to_string();
    let server = TapServer::new(svc.clone());
    loop {
        let (sock, slot) = gate.accept(&listener).await;
        let (acceptor, server, gate, ns) =
            (acceptor.clone(), server.clone(), gate.clone(), ns.clone());
        let control_plane = svc.control_plane.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (sock, activity) = Tracked::new(sock);
            let tls = match gate.handshake(acceptor.accept(sock)).await {
                Some(Ok(t)) => t,
                Some(Err(e)) => return tracing::debug!(error = %e, "tap TLS handshake failed"),
                None => return,
            };
            let who = caller(&tls, &ns);
            let trusted = who == Caller::Identity(control_plane);
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(who.clone());
                tower::ServiceExt::oneshot(server.clone(), req)
            });
            let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http.max_concurrent_streams(MAX_TAPS as u32);
            if trusted {
                http.timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
            }
            let conn = http.serve_connection(TokioIo::new(tls), svc);
            if gate.serve_until_idle(&activity, conn).await.is_none() {
                tracing::debug!("closed an idle tap connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> pki::Identity {
        format!("{sa}.weft.serviceaccount.identity.weft.cluster.local")
            .parse()
            .unwrap()
    }

    #[test]
    fn only_the_control_plane_observes_and_refusals_name_the_caller() {
        let cp = id("weft-identity");
        assert_eq!(authorize(&Caller::Identity(cp.clone()), &cp), Ok(()));
        let other = id("frontend");
        let e = authorize(&Caller::Identity(other.clone()), &cp).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&other.to_string()) && msg.contains(&cp.to_string()),
            "{msg}"
        );
        let e = authorize(&Caller::Anonymous("no client certificate".into()), &cp).unwrap_err();
        assert!(e.to_string().contains("no client certificate"), "{e}");
    }

    #[test]
    fn asks_are_read_strictly() {
        let req = ObserveRequest {
            limit: 0,
            r#match: None,
            extract: None,
        };
        let a = ask(&req, Some("true"), Some("5")).unwrap();
        assert!(a.show_query && a.max_rps == Some(5) && a.limit.is_none());
        let a = ask(
            &ObserveRequest {
                limit: 3,
                ..req.clone()
            },
            None,
            None,
        )
        .unwrap();
        assert!(!a.show_query && a.max_rps.is_none() && a.limit == Some(3));
        for bad in ["0", "-1", "many", ""] {
            assert_eq!(
                ask(&req, None, Some(bad)).unwrap_err(),
                Refusal::MaxRps(bad.into())
            );
        }
    }
}
