//! Applying policy verdicts (reached by `policy::judge`): the metrics each
//! verdict moves, and the audit line each denial writes.

use std::net::SocketAddr;

use policy::{Client, Server, Verdict};

use crate::metrics::{AuthzLabels, ProxyMetrics};

/// The client as the audit line names it.
pub fn client_name(c: &Client) -> String {
    c.identity
        .as_ref()
        .map_or_else(|| "unauthenticated".into(), ToString::to_string)
}

fn labels(server: &Server, v: &Verdict) -> AuthzLabels {
    AuthzLabels {
        srv_kind: server.name.kind.clone(),
        srv_name: server.name.name.clone(),
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
        let srv = &server.name;
        let authz = v
            .authz
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "none".into());
        let reason = v.reasons.last().map(String::as_str).unwrap_or("");
        let outcome = if !v.allowed {
            format!("denied: {reason}")
        } else if v.audit {
            "allowed by the audit policy (it would otherwise need an authorization)".into()
        } else {
            return;
        };
        tracing::info!(
            target: "weft::audit",
            client = %client_name(self.client),
            source = %self.peer,
            port = self.port,
            server = %srv,
            authorization = %authz,
            request,
            "{what} {outcome}"
        );
    }
}
