//! What both admin listeners (control plane and proxy) share: taking the
//! next admitted connection, and their plain-text, readiness and metrics
//! responses.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

use crate::{Admitted, Gate};

impl Gate {
    /// The next connection this listener admits; connections over the cap
    /// are closed at once (and counted by [`Gate::admit`]).
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, Admitted) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(listener = self.name(), error = %e, "accept failed");
                    // e.g. out of descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Some(slot) = self.admit() {
                return (stream, slot);
            }
        }
    }
}

/// A plain-text response; the builder cannot fail with these parts.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// `/ready`: 200 when ready, else 503 saying why not.
pub fn ready(verdict: Result<(), String>) -> Response<Full<Bytes>> {
    match verdict {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `/metrics`: the registry in the OpenMetrics text format.
pub fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(out)))
            .unwrap_or_default(),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode metrics\n".into(),
        ),
    }
}
