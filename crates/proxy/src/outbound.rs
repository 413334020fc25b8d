//! Outbound (ports mode): a local listener per mapping, resolved through the
//! destination service. Meshed: mTLS to the peer proxy with the expected
//! identity and a transport header naming the port; HTTP/1 or HTTP/2
//! detected on a port that is not opaque is served per request over pooled
//! HTTP/2 (`outbound_http`). Not meshed: plaintext, unless denied. Unknown:
//! refused. A failed handshake is never retried in plaintext.

use std::sync::Arc;
use std::time::Duration;

use bounds::Tracked;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{OutboundMapping, Plaintext};
use crate::detect::Protocol;
use crate::discovery::{Discovery, Resolution};
use crate::metrics::{ConnLabels, ProxyMetrics};
use crate::prefixed::Prefixed;

/// Endpoints tried for one connection before it is refused.
pub(crate) const CONNECT_ATTEMPTS: usize = 3;

pub struct Outbound {
    /// Offers ALPN transport.l5d.io/v1: used when a transport header follows.
    pub connector: TlsConnector,
    /// No ALPN: for a peer reached on its original port without a header.
    pub connector_plain: TlsConnector,
    pub discovery: Arc<Discovery>,
    pub plaintext: Plaintext,
    pub connect_timeout: Duration,
    /// How long the application's first bytes are awaited to detect HTTP
    /// (the inbound's timeout; skipped on opaque ports).
    pub detect_timeout: Duration,
    pub metrics: ProxyMetrics,
    /// Connection cap, deadline to reach the destination, idle timeout.
    pub gate: bounds::Gate,
    /// HTTP/2 connections to peer proxies, shared by HTTP app connections.
    pub pool: Arc<crate::pool::Pool>,
}

/// A destination reached, ready to be piped to the application.
pub(crate) enum Upstream {
    /// Boxed: a TLS session is large beside a socket.
    Mesh(Box<TlsStream<TcpStream>>, ConnLabels),
    Plain(TcpStream, ConnLabels),
}

use crate::pool::Refusal;

impl Outbound {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mapping: OutboundMapping) {
        let mapping = Arc::new(mapping);
        loop {
            // Over the cap: closed at once, counted by the gate.
            let (sock, slot) = self.gate.accept(&listener).await;
            let _ = sock.set_nodelay(true);
            tokio::spawn(self.clone().handle_mapping(sock, mapping.clone(), slot));
        }
    }

    /// Transparent mode: connections redirected here by iptables; the
    /// original destination says where they were going.
    pub async fn serve_transparent(
        self: Arc<Self>,
        listener: TcpListener,
        own: Vec<std::net::SocketAddr>,
    ) {
        loop {
            let (sock, slot) = self.gate.accept(&listener).await;
            let _ = sock.set_nodelay(true);
            let this = self.clone();
            let own = own.clone();
            tokio::spawn(async move {
                let local = sock.local_addr().ok();
                match crate::original_dst(&sock) {
                    Some(dst) if Some(dst) != local && !own.contains(&dst) => {
                        let target = dst.to_string();
                        this.handle(sock, target, slot).await;
                    }
                    Some(dst) if own.contains(&dst) => {
                        this.metrics.refuse("outbound", "loop");
                        tracing::warn!(%dst, "outbound connection refused: it loops back to the proxy itself; the proxy uid is not exempt: rerun `weft init --proxy-uid <uid the proxy runs as>`");
                    }
                    _ => {
                        this.metrics.refuse("outbound", "no_original_dst");
                        tracing::warn!(
                            "outbound connection refused: no original destination (was it redirected by `weft init`? connect to an app address, not to the proxy's outbound port)"
                        );
                    }
                }
            });
        }
    }

    async fn handle_mapping(
        self: Arc<Self>,
        app: TcpStream,
        mapping: Arc<OutboundMapping>,
        slot: bounds::Admitted,
    ) {
        self.handle(app, mapping.target.clone(), slot).await;
    }

    async fn handle(self: Arc<Self>, mut app: TcpStream, target: String, slot: bounds::Admitted) {
        let _slot = slot;
        let _in_flight = self.metrics.active.enter();
        let target = &target;
        let refuse = |(reason, detail): Refusal| {
            self.metrics.refuse("outbound", reason);
            tracing::info!(%target, reason, "outbound connection refused: {detail}");
        };
        let limits = self.gate.limits;
        let candidates = self
            .discovery
            .resolve_candidates(target, CONNECT_ATTEMPTS)
            .await;
        // Boxed here and below: a task holds its future's largest state for
        // its whole life, so detection's and the handshake's buffers would
        // stay with every long-lived connection.
        let (protocol, mut prefix) = Box::pin(self.sniff(&mut app, &candidates)).await;
        let h1 =
            protocol == Protocol::Http1 && Box::pin(self.per_request(&mut app, &mut prefix)).await;
        if h1 || protocol == Protocol::Http2 {
            // Requests, not bytes: each goes to the peer over a pooled
            // connection (HTTP/1 upgrades and CONNECT over one of their own).
            let (app, activity) = Tracked::new(Prefixed::new(prefix, app));
            let conn = Box::pin(
                self.clone()
                    .serve_http(app, protocol, target.clone(), candidates),
            );
            if self.gate.serve_until_idle(&activity, conn).await.is_none() {
                tracing::info!(%target, "closed an outbound HTTP connection that moved no bytes either way for {:?} (--stream-idle-timeout)", limits.idle_timeout);
            }
            return;
        }
        let up = match self
            .gate
            .handshake(Box::pin(self.reach(target, candidates, protocol)))
            .await
        {
            Some(Ok(up)) => up,
            Some(Err(refusal)) => return refuse(refusal),
            None => {
                return refuse((
                    "handshake_timeout",
                    format!(
                        "{target} not reached within {:?} (--outbound-connect-timeout)",
                        limits.handshake_timeout
                    ),
                ));
            }
        };
        // The bytes read to detect the protocol go first.
        let (app, activity) = Tracked::new(Prefixed::new(prefix, app));
        let m = &self.metrics;
        let served = match up {
            Upstream::Mesh(tls, labels) => {
                let conn = crate::forward::pipe(tls, app, labels, m);
                self.gate.serve_until_idle(&activity, conn).await
            }
            Upstream::Plain(tcp, labels) => {
                let conn = crate::forward::pipe(tcp, app, labels, m);
                self.gate.serve_until_idle(&activity, conn).await
            }
        };
        if served.is_none() {
            tracing::info!(%target, "closed an outbound connection that moved no bytes either way for {:?} (--stream-idle-timeout)", limits.idle_timeout);
        }
    }

    /// The application's protocol, for a meshed peer reached with a
    /// transport header whose port is not opaque: HTTP/1 or HTTP/2 is
    /// declared in the header, so the peer serves it per request without
    /// detecting again. Opaque ports skip this, so a server that speaks first
    /// is not delayed. Returns the bytes read, to be replayed.
    async fn sniff(&self, app: &mut TcpStream, candidates: &[Resolution]) -> (Protocol, Vec<u8>) {
        match candidates.first() {
            Some(Resolution::Meshed {
                proxy_port: Some(_),
                opaque: false,
                ..
            }) => crate::detect::detect_protocol(app, self.detect_timeout).await,
            _ => (Protocol::Opaque, Vec::new()),
        }
    }

    /// Whether detected HTTP/1 is served per request over the pool: once its
    /// first request head is read whole and keeps no connection of its own.
    /// Otherwise (a head still incomplete after the detection timeout, too
    /// large, or an upgrade, CONNECT or `Expect: 100-continue` first) the
    /// connection is forwarded as bytes, declared HTTP/1, as before pooling.
    async fn per_request(&self, app: &mut TcpStream, prefix: &mut Vec<u8>) -> bool {
        crate::detect::read_head(app, prefix, self.detect_timeout).await
            && !crate::orig_proto::head_wants_own_connection(prefix)
    }

    /// Connects to one of `candidates` (a target's endpoints): mTLS with a
    /// transport header declaring `protocol` to a meshed peer, plaintext to
    /// an unmeshed one if allowed. Nothing was sent yet when a connect or
    /// handshake fails, so an endpoint that cannot be reached (gone before
    /// its Remove arrived) is left for the next one; the TCP connects share
    /// one budget.
    pub(crate) async fn reach(
        &self,
        target: &str,
        candidates: Vec<Resolution>,
        protocol: Protocol,
    ) -> Result<Upstream, Refusal> {
        let per_try = self.connect_timeout / u32::try_from(candidates.len().max(1)).unwrap_or(1);
        let mut failure = None;
        for c in candidates {
            let dial = match &c {
                Resolution::Meshed {
                    addr, proxy_port, ..
                } => std::net::SocketAddr::new(addr.ip(), proxy_port.unwrap_or(addr.port())),
                Resolution::NotMeshed { addr } if self.plaintext == Plaintext::Deny => {
                    failure = Some((
                        "plaintext_denied",
                        format!("{addr} is not meshed and --outbound-plaintext=deny"),
                    ));
                    continue;
                }
                Resolution::NotMeshed { addr } => *addr,
                Resolution::Unknown(why) => return Err(("unknown_destination", why.clone())),
            };
            match tokio::time::timeout(per_try, TcpStream::connect(dial)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    // Still nothing of the app's sent: an endpoint whose proxy
                    // is shutting down (or refuses mTLS) leaves the connection
                    // to the next; each is verified on its own.
                    match self.secure(c, tcp, protocol).await {
                        Ok(up) => return Ok(up),
                        Err((reason, detail)) => {
                            tracing::info!(%target, %dial, reason, "endpoint failed before any byte was forwarded; trying the next one: {detail}");
                            failure = Some((reason, detail));
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => failure = Some(("connect", format!("cannot connect to {dial}: {e}"))),
                Err(_) => {
                    failure = Some((
                        "connect_timeout",
                        format!(
                            "connecting to {dial} timed out after {}ms",
                            per_try.as_millis()
                        ),
                    ))
                }
            }
            tracing::debug!(%target, %dial, "endpoint unreachable; trying the next one");
        }
        Err(failure.unwrap_or(("unknown_destination", "no endpoint to try".into())))
    }

    /// Over a connected socket: mTLS with the expected identity (and the
    /// transport header) for a meshed endpoint, plaintext otherwise.
    async fn secure(
        &self,
        to: Resolution,
        tcp: TcpStream,
        protocol: Protocol,
    ) -> Result<Upstream, Refusal> {
        // The endpoint's own port (a Service's targetPort), not the port the
        // app dialled (the Service port): the peer's proxy serves that one.
        let (identity, proxy_port, port) = match to {
            Resolution::Meshed {
                identity,
                proxy_port,
                addr,
                ..
            } => (identity, proxy_port, addr.port()),
            Resolution::NotMeshed { addr } => {
                self.metrics
                    .edges
                    .outbound_plain(addr, "not_provided_by_service_discovery");
                let labels = ConnLabels {
                    direction: "outbound",
                    peer: "dst",
                    tls: "no_identity",
                    no_tls_reason: "not_provided_by_service_discovery".into(),
                    client_id: None,
                    server_id: None,
                    target_port: addr.port(),
                    protocol: "opaque",
                    dst: addr.to_string(),
                };
                return Ok(Upstream::Plain(tcp, labels));
            }
            Resolution::Unknown(why) => return Err(("unknown_destination", why)),
        };
        let connector = if proxy_port.is_some() {
            &self.connector
        } else {
            &self.connector_plain
        };
        // Fail closed: never fall back to plaintext for a meshed peer.
        let mut tls = crate::pool::mtls(connector, tcp, &identity, self.connect_timeout).await?;
        if proxy_port.is_some() {
            crate::pool::send_header(&mut tls, port, protocol).await?;
        }
        // The protocol is declared only where a header carries it.
        let declared = if proxy_port.is_some() {
            protocol.label()
        } else {
            "opaque"
        };
        let labels = ConnLabels::outbound_mesh(identity, port, declared);
        Ok(Upstream::Mesh(Box::new(tls), labels))
    }
}
