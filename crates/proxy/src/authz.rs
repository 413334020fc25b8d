//! Applying policy verdicts: which protocol handling a port gets, the
//! metrics each verdict moves, and the audit line each denial writes.

use std::net::SocketAddr;

use linkerd2_proxy_api::inbound::{Server, proxy_protocol};
use policy::{Client, Verdict};

use crate::metrics::{AuthzLabels, ProxyMetrics};

/// How a port's traffic is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One verdict per connection; bytes are not inspected.
    Opaque,
    /// Detect HTTP and judge each request; anything else is opaque.
    Detect,
}

/// A Server resource's proxyProtocol decides; for the default server (no
/// Server selects the port) the destination's opaque-ports hint does.
pub fn mode(server: &Server, opaque_hint: bool) -> Mode {
    match server.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(proxy_protocol::Kind::Opaque(_)) | Some(proxy_protocol::Kind::Tls(_)) => Mode::Opaque,
        _ if crate::policies::is_default(server) && opaque_hint => Mode::Opaque,
        _ => Mode::Detect,
    }
}

/// Whether the Server declares HTTP/1 or HTTP/2 (not detection).
pub fn declares_http(server: &Server) -> bool {
    matches!(
        server.protocol.as_ref().and_then(|p| p.kind.as_ref()),
        Some(proxy_protocol::Kind::Http1(_)) | Some(proxy_protocol::Kind::Http2(_))
    )
}

/// The client as the audit line names it.
pub fn client_name(c: &Client) -> &str {
    c.identity.as_deref().unwrap_or("unauthenticated")
}

/// Whether the authorization that allowed it is an audit policy (allowed,
/// but logged as though denied).
pub fn is_audit(v: &Verdict) -> bool {
    v.authz.as_ref().is_some_and(|a| a.name == "audit")
}

fn labels(server: &Server, v: &Verdict) -> AuthzLabels {
    let srv = policy::server_name(server);
    AuthzLabels {
        srv_kind: srv.kind,
        srv_name: srv.name,
        authz_kind: v.authz.as_ref().map(|a| a.kind.clone()).unwrap_or_default(),
        authz_name: v.authz.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
        route_name: v.route.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
    }
}

/// Where a verdict was reached, for metrics and the audit log.
pub struct Scene<'a> {
    pub metrics: &'a ProxyMetrics,
    pub client: &'a Client,
    pub peer: SocketAddr,
    pub port: u16,
}

impl Scene<'_> {
    /// Counts a connection verdict and writes the audit line for a denial.
    pub fn tcp(&self, server: &Server, v: &Verdict) {
        let l = labels(server, v);
        if v.allowed {
            self.metrics.tcp_authz_allow.get_or_create(&l).inc();
        } else {
            self.metrics.tcp_authz_deny.get_or_create(&l).inc();
        }
        self.audit("connection", server, v, "");
    }

    /// Counts a request verdict and writes the audit line for a denial.
    pub fn http(&self, server: &Server, v: &Verdict, request: &str) {
        let l = labels(server, v);
        if v.allowed {
            self.metrics.http_authz_allow.get_or_create(&l).inc();
        } else {
            self.metrics.http_authz_deny.get_or_create(&l).inc();
        }
        self.audit("request", server, v, request);
    }

    fn audit(&self, what: &str, server: &Server, v: &Verdict, request: &str) {
        let srv = policy::server_name(server);
        let authz = v
            .authz
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "none".into());
        let reason = v.reasons.last().map(String::as_str).unwrap_or("");
        let outcome = if !v.allowed {
            format!("denied: {reason}")
        } else if is_audit(v) {
            "allowed by the audit policy (it would otherwise need an authorization)".into()
        } else {
            return;
        };
        tracing::info!(
            target: "weft::audit",
            client = client_name(self.client),
            source = %self.peer,
            port = self.port,
            server = %srv,
            authorization = %authz,
            request,
            "{what} {outcome}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linkerd2_proxy_api::inbound::ProxyProtocol;

    fn server(kind: &str, p: proxy_protocol::Kind) -> Server {
        Server {
            protocol: Some(ProxyProtocol { kind: Some(p) }),
            labels: [("kind".to_string(), kind.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn server_protocol_decides_then_the_hint() {
        let detect = || proxy_protocol::Kind::Detect(proxy_protocol::Detect::default());
        let opaque = || proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {});
        // A Server resource decides, whatever the annotation says.
        assert_eq!(mode(&server("server", detect()), true), Mode::Detect);
        assert_eq!(mode(&server("server", opaque()), false), Mode::Opaque);
        // No Server: the opaque-ports hint decides.
        assert_eq!(mode(&server("default", detect()), true), Mode::Opaque);
        assert_eq!(mode(&server("default", detect()), false), Mode::Detect);
    }
}
