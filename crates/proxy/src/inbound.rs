//! Inbound: terminate mTLS for our own identity, read the transport header
//! naming the application port, check it is a port of this workload, apply
//! the port's authorization policy, and forward to the application on
//! 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bounds::Tracked;
use policy::{Client, Denial, Facts, Handling, Traffic};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::authz::{self, Scene};
use crate::detect::{Mismatch, Protocol, Start};
use crate::discovery::{Discovery, Resolution};
use crate::metrics::{ConnLabels, IdLabel, ProxyMetrics, SessionLabels};
use crate::policies::{Policies, Source};
use crate::transport_header::{self, ALPN};

pub struct Inbound {
    pub acceptor: TlsAcceptor,
    pub workload: String,
    pub identity: pki::Identity,
    pub discovery: Arc<Discovery>,
    pub policies: Arc<Policies>,
    pub detect_timeout: Duration,
    /// The proxy's own ports: never forwarded to.
    pub own_ports: Vec<u16>,
    /// Transparent mode (`weft init` redirects): non-mesh traffic that was
    /// redirected passes through. In ports mode nothing but mTLS is served.
    pub transparent: bool,
    pub metrics: ProxyMetrics,
    /// Connection cap, handshake deadline, idle timeout.
    pub gate: bounds::Gate,
    pub taps: crate::tap::Taps,
    pub tap_local: Arc<crate::tap::Local>,
}

/// What the handshake phase of an inbound connection ends with.
enum Opened {
    /// mTLS for our identity from a client with a certificate, naming `port`.
    Mesh {
        /// Boxed: a TLS session is large beside a socket.
        tls: Box<TlsStream<Tracked<TcpStream>>>,
        client_id: pki::Identity,
        port: u16,
        /// The session protocol the transport header declared, if any.
        declared: Option<Protocol>,
    },
    /// Redirected traffic that is not mTLS for us (transparent mode only).
    Passthrough {
        sock: Tracked<TcpStream>,
        port: u16,
        start: Start,
    },
}

/// A refusal in the handshake phase: the reason label and what happened.
type Refusal = (&'static str, String);

/// In ports mode nothing but mTLS is served, so the first bytes get the
/// whole handshake deadline, which bounds this wait.
const FIRST_BYTES_UNDER_DEADLINE: Duration = Duration::from_secs(24 * 3600);

impl Inbound {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            // Over the cap: closed at once, counted by the gate.
            let (sock, slot) = self.gate.accept(&listener).await;
            let _ = sock.set_nodelay(true);
            let peer = sock
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            tokio::spawn(self.clone().handle(sock, peer, slot));
        }
    }

    fn refuse(&self, peer: SocketAddr, (reason, detail): Refusal) {
        self.metrics.refuse("inbound", reason);
        tracing::info!(%peer, reason, "inbound connection refused: {detail}");
    }

    async fn handle(self: Arc<Self>, sock: TcpStream, peer: SocketAddr, slot: bounds::Admitted) {
        let _slot = slot;
        // Counted from accept, so a drain also waits for handshakes in progress.
        let _in_flight = self.metrics.active.enter();
        // Redirected by `weft init`: the original destination names the port.
        let local = sock.local_addr().ok();
        let redirected = crate::original_dst(&sock)
            .filter(|d| Some(*d) != local)
            .map(|d| d.port());
        let local_ip = local.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
        let (sock, activity) = Tracked::new(sock);
        let limits = self.gate.limits;
        // Boxed here and below: a task holds its future's largest state for
        // its whole life, so the handshake's and the detection's buffers
        // would stay with every long-lived connection (20 KB a task before).
        let opened = match self
            .gate
            .handshake(Box::pin(self.open(sock, redirected)))
            .await
        {
            Some(Ok(o)) => o,
            Some(Err(refusal)) => return self.refuse(peer, refusal),
            None => {
                return self.refuse(
                    peer,
                    (
                        "handshake_timeout",
                        format!(
                            "no mTLS handshake and transport header within {:?} (--inbound-handshake-timeout)",
                            limits.handshake_timeout
                        ),
                    ),
                );
            }
        };
        let served = match opened {
            Opened::Mesh {
                tls,
                client_id,
                port,
                declared,
            } => {
                let ends = (peer, SocketAddr::new(local_ip, port));
                let conn = Box::pin(self.mesh(tls, ends, client_id, port, declared));
                self.gate.serve_until_idle(&activity, conn).await
            }
            Opened::Passthrough { sock, port, start } => {
                let ends = (peer, SocketAddr::new(local_ip, port));
                let conn = Box::pin(self.passthrough(sock, ends, port, &start));
                self.gate.serve_until_idle(&activity, conn).await
            }
        };
        if served.is_none() {
            tracing::info!(%peer, "closed an inbound connection that moved no bytes either way for {:?} (--stream-idle-timeout)", limits.idle_timeout);
        }
    }

    /// The handshake phase, under the handshake deadline: the first bytes,
    /// the mTLS handshake and the transport header.
    async fn open(
        &self,
        sock: Tracked<TcpStream>,
        redirected: Option<u16>,
    ) -> Result<Opened, Refusal> {
        let wait = if self.transparent {
            self.detect_timeout
        } else {
            FIRST_BYTES_UNDER_DEADLINE
        };
        let start = crate::detect::peek_start(sock.get_ref(), wait).await;
        let ours = matches!(&start, Start::Tls { sni: Some(n) } if *n == self.identity.to_string());
        if !ours {
            let Some(port) = redirected.filter(|_| self.transparent) else {
                let what = match start {
                    Start::Tls { sni } => format!("TLS for {sni:?}, not {}", self.identity),
                    Start::Silent => "nothing within the detection timeout".into(),
                    Start::Incomplete => {
                        "an incomplete TLS ClientHello (stalled mid-handshake)".into()
                    }
                    Start::Closed => "a closed connection".into(),
                    Start::Other => "plaintext".into(),
                };
                return Err((
                    "not_mesh_tls",
                    format!(
                        "got {what}; the proxy's inbound port serves only mTLS for {}",
                        self.identity
                    ),
                ));
            };
            return Ok(Opened::Passthrough { sock, port, start });
        }
        let mut tls = self.acceptor.accept(sock).await.map_err(|e| {
            (
                "tls_handshake",
                format!(
                    "TLS handshake failed ({e}); only TLS for {} is served here",
                    self.identity
                ),
            )
        })?;
        let (_, conn) = tls.get_ref();
        let client_id = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| pki::peer_identity_in(c, self.identity.control_plane_ns()).ok());
        if conn.alpn_protocol() != Some(ALPN) {
            return Err((
                "no_transport_header",
                "the client did not negotiate transport.l5d.io/v1, so no port was named".into(),
            ));
        }
        let Some(client_id) = client_id else {
            return Err((
                "no_client_identity",
                "direct connections need a client certificate (mTLS)".into(),
            ));
        };
        let (header, port) = transport_header::read(&mut tls)
            .await
            .map_err(|e| ("bad_transport_header", e.to_string()))?;
        Ok(Opened::Mesh {
            tls: Box::new(tls),
            client_id,
            port,
            declared: transport_header::declared(&header),
        })
    }

    /// mTLS from a peer proxy naming `port`: checked against the workload's
    /// resource, then served under the port's policy.
    async fn mesh(
        &self,
        tls: Box<TlsStream<Tracked<TcpStream>>>,
        (peer, dst): (SocketAddr, SocketAddr),
        client_id: pki::Identity,
        port: u16,
        declared: Option<Protocol>,
    ) {
        let refuse = |reason, detail| self.refuse(peer, (reason, detail));
        if self.own_ports.contains(&port) {
            return refuse(
                "proxy_port",
                format!(
                    "port {port} is the proxy's own, not a port of {}",
                    self.workload
                ),
            );
        }
        let target = format!("{}:{port}", self.workload);
        let opaque = match self.discovery.resolve(&target).await {
            // The workload's resource must name this proxy's identity: a proxy
            // started for the wrong workload serves nothing.
            Resolution::Meshed { identity, .. } if identity != self.identity => {
                return refuse(
                    "identity_mismatch",
                    format!(
                        "workload {} has identity {identity} (its ExternalWorkload, or its pod's service account), but this proxy is {}; fix --workload/--identity or the resource",
                        self.workload, self.identity
                    ),
                );
            }
            Resolution::Meshed { opaque, .. } => opaque,
            Resolution::NotMeshed { .. } => {
                return refuse(
                    "port_not_meshed",
                    format!(
                        "port {port} of {} is not meshed (skip-inbound-ports)",
                        self.workload
                    ),
                );
            }
            Resolution::Unknown(why) => {
                return refuse("unknown_port", format!("port {port} refused: {why}"));
            }
        };
        let labels = ConnLabels {
            direction: "inbound",
            peer: "src",
            tls: "true",
            no_tls_reason: String::new(),
            client_id: Some(IdLabel(client_id.clone())),
            server_id: Some(IdLabel(self.identity.clone())),
            target_port: port,
            protocol: "opaque",
            dst: String::new(),
        };
        let client = Client {
            identity: Some(client_id),
            tls: true,
            ip: peer.ip(),
        };
        self.serve_port(tls, (peer, dst), port, client, (opaque, declared), labels)
            .await;
    }

    /// Not mTLS for us, but redirected to an application port: judged by
    /// policy as an unauthenticated client (Linkerd's default allows it).
    async fn passthrough(
        &self,
        sock: Tracked<TcpStream>,
        (peer, dst): (SocketAddr, SocketAddr),
        port: u16,
        start: &Start,
    ) {
        if self.own_ports.contains(&port) {
            self.metrics.refuse("inbound", "proxy_port");
            return;
        }
        let reason = match start {
            Start::Tls { .. } => "tls_for_another_name",
            _ => "not_provided_by_remote",
        };
        let labels = ConnLabels {
            direction: "inbound",
            peer: "src",
            tls: "no_identity",
            no_tls_reason: reason.into(),
            client_id: None,
            server_id: None,
            target_port: port,
            protocol: "opaque",
            dst: String::new(),
        };
        let client = Client {
            identity: None,
            tls: false,
            ip: peer.ip(),
        };
        // TLS for another name is never HTTP we could read: opaque.
        let opaque = matches!(start, Start::Tls { .. });
        self.serve_port(sock, (peer, dst), port, client, (opaque, None), labels)
            .await;
    }

    /// Applies the port's policy: per connection when opaque, per request
    /// when HTTP is detected or declared by the client proxy. `hints`: the
    /// destination's opaque hint and the transport header's session protocol.
    async fn serve_port<S>(
        &self,
        mut io: S,
        (peer, dst): (SocketAddr, SocketAddr),
        port: u16,
        client: Client,
        (opaque_hint, declared): (bool, Option<Protocol>),
        mut labels: ConnLabels,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.metrics.edges.inbound(&client, &labels.no_tls_reason);
        let (server, source, mut rx) = self.policies.port(port).await;
        if source != Source::ControlPlane {
            tracing::warn!(
                port,
                server = %server.name,
                "no policy from the control plane within {}ms; using {source:?}",
                self.policies.timeout.as_millis()
            );
        }
        let scene = Scene {
            metrics: &self.metrics,
            client: &client,
            peer,
            port,
        };
        let facts = Facts { opaque_hint };
        let (protocol, prefix) = match (policy::handling(&server, opaque_hint), declared) {
            // HTTP/2 between proxies (a client proxy's pool carrying HTTP/1,
            // or an HTTP/2 app) is served per request even where the Server
            // says opaque: its frames are nothing the application could read
            // raw, and on an opaque Server each request gets the verdict the
            // connection would.
            (Handling::Opaque, Some(Protocol::Http2)) => {
                match Box::pin(self.confirm(&mut io, Protocol::Http2, peer, port)).await {
                    Some(prefix) => (Protocol::Http2, prefix),
                    None => return,
                }
            }
            // Otherwise the Server (or the destination) saying opaque wins
            // over a header's session protocol.
            (Handling::Opaque, _) => (Protocol::Opaque, Vec::new()),
            (Handling::Detect, Some(p)) => {
                match Box::pin(self.confirm(&mut io, p, peer, port)).await {
                    Some(prefix) => (p, prefix),
                    None => return,
                }
            }
            // A client that says nothing (server speaks first) is opaque.
            (Handling::Detect, None) => {
                Box::pin(crate::detect::detect_protocol(&mut io, self.detect_timeout)).await
            }
        };
        let io = crate::prefixed::Prefixed::new(prefix, io);
        labels.protocol = protocol.label();
        tracing::debug!(%peer, client = %authz::client_name(&client), port, protocol = protocol.label(), "inbound connection");
        if protocol != Protocol::Opaque {
            self.metrics.tcp_open.get_or_create(&labels).inc();
            let conn = crate::http::HttpConn {
                policy: rx,
                initial: server,
                facts,
                client: client.clone(),
                peer,
                port,
                metrics: self.metrics.clone(),
                taps: self.taps.clone(),
                local: self.tap_local.clone(),
                dst,
                no_tls_reason: labels.no_tls_reason.clone(),
            };
            Box::pin(crate::http::serve(io, protocol, conn)).await;
            self.metrics.tcp_close.get_or_create(&labels).inc();
            return;
        }
        // Not HTTP: one verdict for the connection. A Server that declares
        // HTTP denies here (a client that avoids detection must not skip
        // the routes).
        let v = policy::judge(&server, facts, &client, Traffic::NotHttp);
        scene.tcp(&server, &v);
        if let Some(d) = v.denial {
            let reason = match d {
                Denial::NotHttp => "not_http",
                Denial::Unauthorized => "unauthorized",
            };
            self.metrics.refuse("inbound", reason);
            return;
        }
        let app = match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(a) => a,
            Err(e) => {
                self.metrics.refuse("inbound", "app_unreachable");
                tracing::info!(%peer, port, "inbound connection refused: the application on 127.0.0.1:{port} is not answering: {e}");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        // A policy change that no longer allows this client closes it.
        let revoked = async {
            loop {
                // The policy stream's end (the proxy is stopping) closes too.
                if rx.changed().await.is_err() {
                    return;
                }
                let now = rx.borrow_and_update().clone();
                if let Some(s) = now {
                    let v = policy::judge(&s, facts, &client, Traffic::NotHttp);
                    if !v.allowed {
                        scene.tcp(&s, &v);
                        return;
                    }
                }
            }
        };
        if crate::forward::pipe_until(io, app, labels, &self.metrics, revoked).await {
            tracing::info!(%peer, port, client = %authz::client_name(&client), "closed an open connection: the policy changed and no longer allows it");
        }
    }

    /// The protocol a transport header declared, used instead of detecting
    /// again once the first bytes bear it out; a header that claims HTTP over
    /// bytes that are not is refused (None), logged and counted.
    async fn confirm<S: AsyncRead + Unpin>(
        &self,
        io: &mut S,
        declared: Protocol,
        peer: SocketAddr,
        port: u16,
    ) -> Option<Vec<u8>> {
        let counted = |outcome| {
            self.metrics
                .session_protocol
                .get_or_create(&SessionLabels {
                    protocol: declared.label(),
                    outcome,
                })
                .inc();
        };
        match crate::detect::confirm(io, declared, self.detect_timeout).await {
            Ok(prefix) => {
                counted("used");
                Some(prefix)
            }
            Err(m) => {
                counted("refused");
                let got = match m {
                    Mismatch::Other(p) => format!("bytes of {}", p.label()),
                    Mismatch::Nothing => format!(
                        "nothing conclusive within {}ms",
                        self.detect_timeout.as_millis()
                    ),
                };
                self.refuse(
                    peer,
                    (
                        "session_protocol_mismatch",
                        format!(
                            "the transport header declared {} for port {port}, but the connection carried {got}; the client proxy must declare only what it detected (or send no session protocol)",
                            declared.label()
                        ),
                    ),
                );
                None
            }
        }
    }
}
