//! The control plane's own certificate: issued to itself from the issuer in
//! force, renewed at 70% of its life like a proxy's, re-issued at once when
//! the issuer changes.

use std::sync::Arc;
use std::time::Duration;

use identity::{IssuerState, IssuerStatus};
use pki::refresh::refresh_in;
use pki::{CertInForce, Identity};
use time::OffsetDateTime;
use tokio::sync::watch;

/// The control plane's certificate in force: the proxy's type, plus the
/// issuer generation it came from (a new issuer re-issues it at once).
pub struct OwnCert {
    pub cert: CertInForce,
    pub generation: u64,
}

impl std::ops::Deref for OwnCert {
    type Target = CertInForce;
    fn deref(&self) -> &CertInForce {
        &self.cert
    }
}

impl std::fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnCert")
            .field("cert", &self.cert)
            .field("generation", &self.generation)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnCertError {
    #[error("cannot generate a key: {0}")]
    Key(#[source] pki::create::CreateError),
    #[error("cannot issue from the issuer in force: {0}")]
    Issue(#[source] pki::create::CreateError),
    #[error("the new certificate cannot be put in force: {0}")]
    InForce(#[source] pki::InForceError),
}

pub struct OwnCertConfig {
    pub identity: Identity,
    pub lifetime: Duration,
    pub skew: Duration,
    pub min_refresh: Duration,
}

fn issue(
    cfg: &OwnCertConfig,
    issuer: &IssuerState,
    generation: u64,
) -> Result<OwnCert, OwnCertError> {
    let key = pki::create::KeySpec::EcdsaP256
        .generate()
        .map_err(OwnCertError::Key)?;
    let now = OffsetDateTime::now_utc();
    let leaf = pki::create::issue_workload_leaf(
        &issuer.signer,
        issuer.chain_not_after,
        &key,
        &cfg.identity,
        now,
        cfg.lifetime,
        cfg.skew,
    )
    .map_err(OwnCertError::Issue)?;
    let mut chain = vec![leaf.der];
    chain.extend(issuer.chain.iter().cloned());
    let cert = CertInForce::new(&key, chain, cfg.identity.control_plane_ns())
        .map_err(OwnCertError::InForce)?;
    Ok(OwnCert { cert, generation })
}

/// Runs forever: keeps `tx` holding a valid own certificate whenever an
/// issuer is in force.
pub async fn run(
    cfg: OwnCertConfig,
    mut issuer_rx: watch::Receiver<IssuerStatus>,
    tx: watch::Sender<Option<Arc<OwnCert>>>,
) {
    let mut renew_at: Option<tokio::time::Instant> = None;
    loop {
        let status = issuer_rx.borrow_and_update().clone();
        let held_generation = tx.borrow().as_ref().map(|o| o.generation);
        let due = renew_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        match &status.current {
            Some(issuer) if due || held_generation != Some(status.generation) => {
                match issue(&cfg, issuer, status.generation) {
                    Ok(own) => {
                        // In force before it is logged: the line means the
                        // TLS listeners present it.
                        let (serial, not_after) = (own.serial.clone(), own.not_after);
                        tx.send_replace(Some(Arc::new(own)));
                        let wait =
                            refresh_in(OffsetDateTime::now_utc(), not_after, cfg.min_refresh);
                        renew_at = Some(tokio::time::Instant::now() + wait);
                        tracing::info!(
                            identity = %cfg.identity,
                            %serial,
                            not_after = %pki::info::rfc3339(not_after),
                            renew_in_s = wait.as_secs(),
                            "control plane certificate issued"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot issue the control plane's own certificate; retrying");
                        renew_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            Some(_) => {}
            None => {
                // Keep a still-valid certificate; drop an expired one.
                let expired = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|o| o.not_after <= OffsetDateTime::now_utc());
                if expired {
                    tracing::error!(
                        "the control plane's own certificate expired and no issuer is in force"
                    );
                    tx.send_replace(None);
                }
                renew_at = None;
            }
        }
        let sleep_until =
            renew_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            changed = issuer_rx.changed() => if changed.is_err() { return },
        }
    }
}
