//! Who is calling: services that require mTLS judge the client certificate
//! against the bundle in force at the moment of the call (not at the
//! handshake), and a connection whose peer's leaf expires is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use identity::IssuerStatus;
use pki::{CertificateDer, Identity, PeerIdentityError, Purpose, VerifyError};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefused {
    #[error(
        "this service requires mTLS: present your weft certificate as the TLS client certificate"
    )]
    NoCertificate,
    #[error("no issuer is in force, so client certificates cannot be judged")]
    NoIssuer,
    #[error(
        "client certificate refused: {0}; renew before it expires, or under the anchors in force (start again with a join token if it has expired)"
    )]
    Chain(#[source] VerifyError),
    #[error("client certificate refused: {0}")]
    Name(#[source] PeerIdentityError),
    /// Not fit to be a client certificate however fresh (no clientAuth, an
    /// unknown critical extension): renewing the same kind would not help.
    #[error("client certificate refused: {0}")]
    Unusable(#[source] VerifyError),
}

/// Judges a client chain against the bundle in force now: pure, so the
/// services and the connection guard decide alike.
pub fn judge(
    chain: &[CertificateDer<'static>],
    status: &IssuerStatus,
    now: OffsetDateTime,
) -> Result<Identity, PeerRefused> {
    let (leaf, rest) = chain.split_first().ok_or(PeerRefused::NoCertificate)?;
    let state = status.current.as_ref().ok_or(PeerRefused::NoIssuer)?;
    let mut intermediates = rest.to_vec();
    intermediates.extend(state.chain.iter().cloned());
    pki::verify(leaf, &intermediates, &state.anchors, now, Purpose::Client).map_err(
        |e| match e {
            VerifyError::MissingUsage { .. }
            | VerifyError::UnknownCriticalExtension { .. }
            | VerifyError::Webpki { .. } => PeerRefused::Unusable(e),
            e => PeerRefused::Chain(e),
        },
    )?;
    // weft leaves name their DNS identity first, valid in any control-plane
    // namespace; only a SPIFFE-only leaf is read against the default one.
    pki::peer_identity(leaf).map_err(PeerRefused::Name)
}

/// The caller's verified identity, or UNAUTHENTICATED saying what to do.
pub fn authenticated<T>(
    req: &Request<T>,
    issuer: &watch::Receiver<IssuerStatus>,
) -> Result<Identity, Status> {
    let chain = req.peer_certs().unwrap_or_default();
    let status = issuer.borrow().clone();
    judge(&chain, &status, OffsetDateTime::now_utc()).map_err(|e| match e {
        PeerRefused::NoIssuer => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    })
}

/// The caller of a discovery API (Destination, InboundServerPolicies,
/// OutboundPolicies): None on a connection without a client certificate.
/// linkerd2-proxy opens these connections before its first certificate
/// exists and keeps them for good, so, as in Linkerd, these read-only APIs
/// serve it there (the control plane is still authenticated to it by its
/// server certificate). A certificate that is presented must verify: a
/// stale or foreign one is refused, never ignored. Identity-bound requests
/// (renewal, the mesh stream) use [`authenticated`].
pub fn caller<T>(
    req: &Request<T>,
    issuer: &watch::Receiver<IssuerStatus>,
) -> Result<Option<Identity>, Status> {
    if req.peer_certs().is_none_or(|c| c.is_empty()) {
        return Ok(None);
    }
    authenticated(req, issuer).map(Some)
}

/// Resolves, with the reason, once a peer that verified at the handshake
/// stops verifying because its leaf expired. A peer that never verified is
/// left to each request's judgement (which says why). A peer whose anchor
/// was retired keeps its connection until then: its mesh stream is how it
/// reports that it refuses the bundle, and how it is asked to renew; each
/// renewal it attempts is judged against the bundle in force and refused.
pub async fn expires(
    chain: Option<Vec<CertificateDer<'static>>>,
    issuer: watch::Receiver<IssuerStatus>,
) -> PeerRefused {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return std::future::pending().await;
    };
    let first = judge(&chain, &issuer.borrow(), OffsetDateTime::now_utc());
    if first.is_err() {
        return std::future::pending().await;
    }
    let not_after = pki::parse_x509(&chain[0])
        .map(|c| c.validity().not_after.to_datetime())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    loop {
        let left = (not_after - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        let left = std::time::Duration::try_from(left).unwrap_or_default();
        tokio::time::sleep(left + std::time::Duration::from_millis(10)).await;
        let now = OffsetDateTime::now_utc();
        if now > not_after
            && let Err(e) = judge(&chain, &issuer.borrow(), now)
        {
            return e;
        }
    }
}

/// `expires`, as the error that closes the connection (logged once).
pub async fn expired(
    chain: Option<Vec<CertificateDer<'static>>>,
    issuer: watch::Receiver<IssuerStatus>,
) -> io::Error {
    let why = expires(chain, issuer).await;
    tracing::info!(reason = %why, "closing a connection whose client certificate expired");
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string())
}

/// A server connection that fails (and so closes) once `close` resolves
/// (its peer's leaf expired, it sat idle, ...), holding `held` (its slot
/// under a cap, its registrations) for as long as it is open.
pub struct Guarded<S> {
    inner: S,
    close: Pin<Box<dyn Future<Output = io::Error> + Send>>,
    closed: Option<(io::ErrorKind, String)>,
    _held: Box<dyn Send + Sync>,
}

impl<S> Guarded<S> {
    pub fn new(
        inner: S,
        close: impl Future<Output = io::Error> + Send + 'static,
        held: impl Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            close: Box::pin(close),
            closed: None,
            _held: Box::new(held),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.closed.is_none()
            && let Poll::Ready(e) = self.close.as_mut().poll(cx)
        {
            self.closed = Some((e.kind(), e.to_string()));
        }
        match &self.closed {
            Some((kind, why)) => Err(io::Error::new(*kind, why.clone())),
            None => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
