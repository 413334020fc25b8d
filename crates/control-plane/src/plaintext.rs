//! `--control-plaintext-loopback`: plaintext gRPC (h2c) for Identity,
//! Destination, InboundServerPolicies and OutboundPolicies, on a loopback
//! address only. linkerd2-proxy speaks plaintext gRPC to a control-plane
//! address on loopback (Linkerd's own control-plane pods rely on it). It
//! gives nothing a TLS connection without a client certificate does not:
//! no peer off the host can reach it, Certify there still needs a join
//! token (there is no certificate to renew by), and the mesh stream, bound
//! to a verified identity, is not offered. Bounded like every listener.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::StartError;

/// The address, if it is a loopback one: pure, so the refusal is tested.
pub fn check(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(StartError::NotLoopback { addr })
    }
}

/// Binds the listener when asked for, refusing any address off loopback.
pub fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = addr else { return Ok(None) };
    let addr = check(addr)?;
    bounds::listen(addr)
        .map(Some)
        .map_err(|source| StartError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        for ok in ["127.0.0.1:8089", "127.0.0.2:0", "[::1]:8089"] {
            assert!(check(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8089", "10.0.0.1:8089", "[::]:8089"] {
            let e = check(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("--control-plaintext-loopback"), "{e}");
            assert!(e.contains("127.0.0.1"), "{e}");
        }
    }
}
