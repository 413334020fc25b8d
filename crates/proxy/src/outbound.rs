//! Outbound (ports mode): a local listener per mapping, resolved through the
//! destination service. Meshed: mTLS to the peer proxy with the expected
//! identity and a transport header naming the port. Not meshed: plaintext,
//! unless denied. Unknown: refused. A failed handshake is never retried in
//! plaintext.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::config::{OutboundMapping, Plaintext};
use crate::discovery::{Discovery, Resolution};
use crate::metrics::{ConnLabels, IdLabel, ProxyMetrics};
use crate::transport_header;

pub struct Outbound {
    /// Offers ALPN transport.l5d.io/v1: used when a transport header follows.
    pub connector: TlsConnector,
    /// No ALPN: for a peer reached on its original port without a header.
    pub connector_plain: TlsConnector,
    pub discovery: Arc<Discovery>,
    pub plaintext: Plaintext,
    pub connect_timeout: Duration,
    pub metrics: ProxyMetrics,
}

impl Outbound {
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mapping: OutboundMapping) {
        let mapping = Arc::new(mapping);
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(self.clone().handle_mapping(sock, mapping.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
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
            match listener.accept().await {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let this = self.clone();
                    let own = own.clone();
                    tokio::spawn(async move {
                        let local = sock.local_addr().ok();
                        match crate::original_dst(&sock) {
                            Some(dst) if Some(dst) != local && !own.contains(&dst) => {
                                let target = dst.to_string();
                                this.handle(sock, target, dst.port()).await;
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
                Err(e) => {
                    tracing::warn!(error = %e, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn handle_mapping(self: Arc<Self>, app: TcpStream, mapping: Arc<OutboundMapping>) {
        let port = mapping
            .target
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        self.handle(app, mapping.target.clone(), port).await;
    }

    async fn handle(self: Arc<Self>, app: TcpStream, target: String, port: u16) {
        let _in_flight = self.metrics.active.enter();
        let target = &target;
        let refuse = |reason: &'static str, detail: String| {
            self.metrics.refuse("outbound", reason);
            tracing::info!(%target, reason, "outbound connection refused: {detail}");
        };
        match self.discovery.resolve(target).await {
            Resolution::Meshed {
                addr,
                identity,
                proxy_port,
                ..
            } => {
                let dial = std::net::SocketAddr::new(addr.ip(), proxy_port.unwrap_or(addr.port()));
                let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(dial))
                    .await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        return refuse(
                            "connect",
                            format!("cannot connect to {identity}'s proxy at {dial}: {e}"),
                        );
                    }
                    Err(_) => {
                        return refuse(
                            "connect_timeout",
                            format!("connecting to {dial} timed out"),
                        );
                    }
                };
                let _ = tcp.set_nodelay(true);
                let name = match ServerName::try_from(identity.to_string()) {
                    Ok(n) => n,
                    Err(e) => return refuse("bad_identity", format!("{identity}: {e}")),
                };
                let mut tls = match tokio::time::timeout(
                    self.connect_timeout,
                    if proxy_port.is_some() {
                        &self.connector
                    } else {
                        &self.connector_plain
                    }
                    .connect(name, tcp),
                )
                .await
                {
                    Ok(Ok(t)) => t,
                    // Fail closed: never fall back to plaintext for a meshed peer.
                    Ok(Err(e)) => {
                        return refuse(
                            "tls_handshake",
                            format!("mTLS with {dial} failed, expecting {identity}: {e}"),
                        );
                    }
                    Err(_) => return refuse("tls_timeout", format!("mTLS with {dial} timed out")),
                };
                if proxy_port.is_some()
                    && let Err(e) = transport_header::write(&mut tls, port, "").await
                {
                    return refuse(
                        "transport_header",
                        format!("cannot send the transport header: {e}"),
                    );
                }
                let labels = ConnLabels {
                    direction: "outbound",
                    peer: "dst",
                    tls: "true",
                    no_tls_reason: String::new(),
                    client_id: None,
                    server_id: Some(IdLabel(identity.clone())),
                    target_port: port,
                    protocol: "opaque",
                    dst: String::new(),
                };
                crate::forward::pipe(tls, app, labels, &self.metrics).await;
            }
            Resolution::NotMeshed { addr } => {
                if self.plaintext == Plaintext::Deny {
                    return refuse(
                        "plaintext_denied",
                        format!("{addr} is not meshed and --outbound-plaintext=deny"),
                    );
                }
                let up = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        return refuse("connect", format!("cannot connect to {addr}: {e}"));
                    }
                    Err(_) => {
                        return refuse(
                            "connect_timeout",
                            format!("connecting to {addr} timed out"),
                        );
                    }
                };
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
                crate::forward::pipe(up, app, labels, &self.metrics).await;
            }
            Resolution::Unknown(why) => refuse("unknown_destination", why),
        }
    }
}
