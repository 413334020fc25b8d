//! The proxy's certificate: obtained with the join token the first time,
//! renewed over mTLS with the still-valid leaf afterwards, each time with a
//! fresh key; a failed renewal keeps the valid certificate and retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use identity::client::{Certified, CertifyClient, Credentials};
use pki::Identity;
use pki::refresh::{refresh_in, retry_in};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::trust::TrustRx;

/// The certificate in force, ready for rustls and for the next renewal.
pub struct ProxyCert {
    pub certified: Arc<CertifiedKey>,
    pub serial: String,
    /// SHA-256 of the public key: a new one on every renewal.
    pub spki: String,
    pub not_after: OffsetDateTime,
    chain_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ProxyCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ProxyCert {
    fn from_certified(c: Certified) -> Result<Self, String> {
        let mut chain = vec![c.leaf.clone()];
        chain.extend(c.chain.iter().cloned());
        let key_der = c.key.serialize_der();
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)))
            .map_err(|e| e.to_string())?;
        let spki = pki::cert::spki_hash(&c.leaf)?;
        Ok(Self {
            certified: Arc::new(CertifiedKey::new(chain.clone(), signing)),
            serial: c.serial,
            spki,
            not_after: c.not_after,
            chain_pem: pki::cert::to_pem(&chain),
            key_pem: c.key.serialize_pem(),
        })
    }

    /// The chain and key, PEM, to present to the control plane (mTLS).
    pub(crate) fn pem_pair(&self) -> (String, String) {
        (self.chain_pem.clone(), self.key_pem.clone())
    }

    pub fn is_valid(&self, now: OffsetDateTime) -> bool {
        self.not_after > now
    }
}

/// The last certificate refresh, as the proxy reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshStatus {
    /// "ok" or the error.
    pub result: String,
    /// Unix seconds.
    pub at: i64,
    /// The renew-now request this refresh answered, if any.
    pub renew_request_id: String,
}

pub struct CertLoop {
    pub client: CertifyClient,
    /// Until the control plane pushes a bundle, this file is re-read before
    /// every try, so a corrected anchors file is picked up.
    pub anchors_file: Option<PathBuf>,
    /// The anchors in force once a bundle was pushed.
    pub trust: TrustRx,
    pub identity: Identity,
    pub token_file: Option<PathBuf>,
    pub min_refresh: Duration,
    /// Renew-now requests (their ids): renew at once, with a fresh key.
    pub renew: mpsc::Receiver<String>,
    pub status: watch::Sender<RefreshStatus>,
}

impl CertLoop {
    pub async fn run(mut self, tx: watch::Sender<Option<Arc<ProxyCert>>>) {
        let mut failures: u32 = 0;
        let mut request_id = String::new();
        loop {
            let trust = self.trust.borrow().clone();
            if trust.version.is_some() {
                self.client.anchors_pem = trust.pem.clone();
            } else if let Some(pem) = self
                .anchors_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
            {
                self.client.anchors_pem = pem;
            }
            let now = OffsetDateTime::now_utc();
            let current = tx.borrow().clone().filter(|c| c.is_valid(now));
            // The token is read afresh each time: it may have been replaced.
            let token = match &self.token_file {
                None => None,
                Some(p) => match std::fs::read(p) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "cannot read the token file");
                        None
                    }
                },
            };
            let creds = Credentials {
                token: token.as_deref().map(<[u8]>::trim_ascii),
                current: current.as_ref().map(|c| c.pem_pair()),
            };
            let wait = match self
                .client
                .certify(&self.identity, creds)
                .await
                .map_err(|e| e.to_string())
                .and_then(ProxyCert::from_certified)
            {
                Ok(cert) => {
                    failures = 0;
                    let wait =
                        refresh_in(OffsetDateTime::now_utc(), cert.not_after, self.min_refresh);
                    tracing::info!(
                        identity = %self.identity,
                        serial = %cert.serial,
                        spki = %cert.spki,
                        not_after = %pki::info::rfc3339(cert.not_after),
                        renew_in_s = wait.as_secs(),
                        proof = if current.is_some() { "renewal" } else { "token" },
                        "certificate obtained"
                    );
                    tx.send_replace(Some(Arc::new(cert)));
                    self.status.send_replace(RefreshStatus {
                        result: "ok".into(),
                        at: OffsetDateTime::now_utc().unix_timestamp(),
                        renew_request_id: std::mem::take(&mut request_id),
                    });
                    wait
                }
                Err(e) => {
                    self.status.send_replace(RefreshStatus {
                        result: e.clone(),
                        at: OffsetDateTime::now_utc().unix_timestamp(),
                        renew_request_id: std::mem::take(&mut request_id),
                    });
                    failures = failures.saturating_add(1);
                    let expiry = current.as_ref().map(|c| c.not_after);
                    let wait = retry_in(
                        failures,
                        Duration::from_secs(1),
                        Duration::from_secs(60),
                        now,
                        expiry,
                    );
                    match &current {
                        Some(c) => tracing::warn!(
                            error = %e,
                            retry_in_s = wait.as_secs(),
                            "renewal failed; keeping the certificate valid until {}",
                            pki::info::rfc3339(c.not_after)
                        ),
                        None => {
                            tracing::error!(
                                error = %e,
                                retry_in_s = wait.as_secs(),
                            "no valid certificate and the identity service refused or is unreachable; if the token has expired, create one with `weft token create --namespace {} --service-account {} --out {} --force --state-dir <the control plane's --state-dir>`; {}",
                                self.identity.namespace(),
                                self.identity.service_account(),
                                self.token_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<token file>".into()),
                                if self.token_file.is_some() { "the file is read again on the next try" } else { "then restart the proxy with --token-file" }
                            );
                            // An expired certificate is no certificate.
                            tx.send_if_modified(|c| c.take().is_some());
                        }
                    }
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Some(id) = self.renew.recv() => {
                    tracing::info!(request = %id, "renewing now, as the control plane asked");
                    request_id = id;
                }
            }
        }
    }
}
