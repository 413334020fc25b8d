//! Who is calling: services that require mTLS judge the client certificate
//! against the anchors in force at the moment of the call.

use pki::{Identity, Purpose};
use time::OffsetDateTime;
use tokio::sync::watch;
use tonic::{Request, Status};

use identity::IssuerStatus;

/// The caller's verified identity (the DNS SAN of its leaf), or UNAUTHENTICATED
/// saying what to do.
pub fn authenticated<T>(
    req: &Request<T>,
    issuer: &watch::Receiver<IssuerStatus>,
) -> Result<Identity, Status> {
    let chain = req
        .peer_certs()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Status::unauthenticated("this service requires mTLS: present your weft certificate as the TLS client certificate"))?;
    let status = issuer.borrow().clone();
    let state = status.current.ok_or_else(|| {
        Status::unavailable("no issuer is in force, so client certificates cannot be judged")
    })?;
    let mut intermediates = chain[1..].to_vec();
    intermediates.extend(state.chain.iter().cloned());
    pki::verify(
        &chain[0],
        &intermediates,
        &state.anchors,
        OffsetDateTime::now_utc(),
        Purpose::Leaf,
    )
    .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))?;
    // weft leaves name their DNS identity first, valid in any control-plane
    // namespace; only a SPIFFE-only leaf is read against the default one.
    pki::peer_identity(&chain[0])
        .map_err(|e| Status::unauthenticated(format!("client certificate refused: {e}")))
}
