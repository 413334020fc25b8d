//! The proxy's certificate: obtained with the join token the first time,
//! renewed over mTLS with the still-valid leaf afterwards, each time with a
//! fresh key; a failed renewal keeps the valid certificate and retries.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pki::Identity;
use pki::refresh::{jitter, refresh_in, retry_in};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::certify::{Certified, CertifyError};
use crate::metrics::ResultLabel;
use crate::trust::TrustRx;

/// The certificate in force: the same type the control plane holds its own in.
pub type ProxyCert = pki::CertInForce;

/// How the last certificate refresh went.
#[derive(Debug, Clone, Default)]
pub enum Refresh {
    #[default]
    NotYet,
    Ok,
    Failed(Arc<CertifyError>),
}

impl Refresh {
    /// The `result` label of `control_identity_cert_refreshes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotYet => "none",
            Self::Ok => "ok",
            Self::Failed(_) => "error",
        }
    }
}

/// As the mesh report carries it: "ok", the error, or nothing yet.
impl std::fmt::Display for Refresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotYet => Ok(()),
            Self::Ok => f.write_str("ok"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// The last certificate refresh, as the proxy reports it.
#[derive(Debug, Clone, Default)]
pub struct RefreshStatus {
    pub result: Refresh,
    /// Unix seconds.
    pub at: i64,
    /// The renew-now request this refresh answered, if any.
    pub renew_request_id: String,
}

/// Why the certificate loop woke.
enum Wake {
    Due,
    Anchors { out_of_band: bool },
    Renew(String),
}

pub struct CertLoop {
    /// The identity service, `host:port`.
    pub addr: String,
    /// Renewals ride the shared connection to the identity service.
    pub control: crate::control::ControlPlane,
    /// The control plane's identity, checked in its certificate.
    pub control_plane: Identity,
    /// How long one Certify may take, connection included.
    pub timeout: Duration,
    /// The anchors in force: the bundle pushed, or the anchors file (watched
    /// by `anchors_file`); a change wakes a proxy with no valid certificate.
    pub trust: TrustRx,
    pub identity: Identity,
    pub token_file: Option<PathBuf>,
    pub min_refresh: Duration,
    /// Renew-now requests (their ids): renew at once, with a fresh key.
    pub renew: mpsc::Receiver<String>,
    pub status: watch::Sender<RefreshStatus>,
    /// `control_identity_cert_refreshes_total{result}`: every try counted,
    /// failed ones too.
    pub refreshes: Family<ResultLabel, Counter>,
}

impl CertLoop {
    /// The token, read afresh each time: it may have been replaced.
    fn token(&self) -> Option<Vec<u8>> {
        let p = self.token_file.as_ref()?;
        match std::fs::read(p) {
            Ok(t) => Some(t.trim_ascii().to_vec()),
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "cannot read the token file");
                None
            }
        }
    }

    /// One Certify: a renewal on the shared connection (it presents the
    /// current leaf); the first, with the token, on a connection of its own.
    /// After an out-of-band anchor change (`reroot`) the token goes first,
    /// presenting no leaf: a re-rooted control plane no longer trusts the
    /// one held. The renewal is the fallback (no token, or a benign change).
    async fn attempt(
        &self,
        held: bool,
        reroot: bool,
    ) -> (Result<Certified, CertifyError>, &'static str) {
        if !held {
            return (self.with_token().await, "token");
        }
        if reroot {
            match self.with_token().await {
                Ok(done) => return (Ok(done), "token"),
                Err(e) => tracing::info!(
                    error = %e,
                    "certifying with the token after new anchors failed; renewing with the certificate held"
                ),
            }
        }
        (self.renewal().await, "renewal")
    }

    async fn renewal(&self) -> Result<Certified, CertifyError> {
        let anchors = self.trust.borrow().anchors.clone();
        let token = self.token();
        let lease = self
            .control
            .channel(&self.addr)
            .await
            .map_err(|e| CertifyError::Connect {
                addr: self.addr.clone(),
                detail: e.to_string(),
            })?;
        let r = crate::certify::certify(
            lease.channel.clone(),
            &self.identity,
            token.as_deref(),
            &anchors,
            self.timeout,
        )
        .await;
        // The call failed on the way: the next goes to another replica.
        if let Err(e) = &r
            && e.is_transport()
        {
            self.control
                .failed(&self.addr, &lease, &e.to_string())
                .await;
        }
        r
    }

    /// Certify with the token on a connection of its own, presenting no leaf.
    async fn with_token(&self) -> Result<Certified, CertifyError> {
        let trust = self.trust.borrow().clone();
        let anchors = trust.anchors.clone();
        let token = self.token();
        let (_keep_trust, trust_rx) = watch::channel(trust);
        let (_keep_own, own_rx) = watch::channel(None);
        let config = crate::tls::control_config(trust_rx, own_rx).map_err(CertifyError::Tls)?;
        let channel = crate::certify::connect(
            &self.addr,
            &self.control_plane,
            config,
            &anchors,
            self.timeout,
        )
        .await?;
        crate::certify::certify(
            channel,
            &self.identity,
            token.as_deref(),
            &anchors,
            self.timeout,
        )
        .await
    }

    pub async fn run(mut self, tx: watch::Sender<Option<Arc<ProxyCert>>>) {
        let mut failures: u32 = 0;
        let mut request_id = String::new();
        let mut trust = self.trust.clone();
        // Anchors arrived out of band: certify with the token until it works.
        let mut reroot = false;
        loop {
            trust.mark_unchanged();
            let now = OffsetDateTime::now_utc();
            let current = tx.borrow().clone().filter(|c| c.is_valid(now));
            let (result, proof) = self.attempt(current.is_some(), reroot).await;
            let wait = match &result {
                Ok(Certified { cert, .. }) => {
                    failures = 0;
                    reroot = false;
                    // Jittered: a fleet started together renews apart.
                    let wait = jitter(refresh_in(
                        OffsetDateTime::now_utc(),
                        cert.not_after,
                        self.min_refresh,
                    ));
                    tracing::info!(
                        identity = %self.identity,
                        serial = %cert.serial,
                        spki = %cert.spki,
                        not_after = %pki::info::rfc3339(cert.not_after),
                        renew_in_s = wait.as_secs(),
                        proof,
                        "certificate obtained"
                    );
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let expiry = current.as_ref().map(|c| c.not_after);
                    let wait = jitter(retry_in(
                        failures,
                        Duration::from_secs(1),
                        Duration::from_secs(60),
                        now,
                        expiry,
                    ));
                    self.failed(e, current.as_deref(), wait, &tx);
                    wait
                }
            };
            let outcome = match result {
                Ok(Certified { cert, .. }) => {
                    tx.send_replace(Some(Arc::new(cert)));
                    Refresh::Ok
                }
                Err(e) => Refresh::Failed(Arc::new(e)),
            };
            self.refreshes
                .get_or_create(&ResultLabel {
                    result: outcome.label(),
                })
                .inc();
            self.status.send_replace(RefreshStatus {
                result: outcome,
                at: OffsetDateTime::now_utc().unix_timestamp(),
                renew_request_id: std::mem::take(&mut request_id),
            });
            let stopped = tx.borrow().is_none();
            match self.next(&mut trust, wait, stopped).await {
                Wake::Due => {}
                Wake::Anchors { out_of_band } => {
                    tracing::info!(
                        out_of_band,
                        "the anchors in force changed; certifying again now"
                    );
                    failures = 0;
                    reroot |= out_of_band;
                }
                Wake::Renew(id) => {
                    tracing::info!(request = %id, "renewing now, as the control plane asked");
                    request_id = id;
                }
            }
        }
    }

    /// Waits `wait`, or less: a renew-now request, or anchors that change
    /// while the proxy is stopped (no valid certificate) or that came out
    /// of band (the watched file, which carries no bundle version: a
    /// re-root, after which the control plane may not trust the leaf held).
    async fn next(&mut self, trust: &mut TrustRx, wait: Duration, stopped: bool) -> Wake {
        let due = tokio::time::sleep(wait);
        tokio::pin!(due);
        loop {
            tokio::select! {
                () = &mut due => return Wake::Due,
                Ok(()) = trust.changed() => {
                    let out_of_band = trust.borrow_and_update().version.is_none();
                    if stopped || out_of_band {
                        return Wake::Anchors { out_of_band };
                    }
                }
                Some(id) = self.renew.recv() => return Wake::Renew(id),
            }
        }
    }

    /// Says what failed and what to do; with no valid certificate left,
    /// drops the expired one (an expired certificate is no certificate).
    fn failed(
        &self,
        e: &CertifyError,
        current: Option<&ProxyCert>,
        wait: Duration,
        tx: &watch::Sender<Option<Arc<ProxyCert>>>,
    ) {
        match current {
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
                tx.send_if_modified(|c| c.take().is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::Trust;

    fn root_pem(subject: &str) -> String {
        let now = OffsetDateTime::now_utc();
        let root = pki::create::create(
            &pki::create::NewCert {
                subject: subject.into(),
                profile: pki::create::Profile::RootCa,
                sans: vec![],
                not_before: now,
                not_after: now + time::Duration::days(1),
                key: pki::create::KeySpec::EcdsaP256,
            },
            None,
        )
        .unwrap();
        pki::cert::to_pem(std::slice::from_ref(&root.cert))
    }

    /// A loop towards a port nothing listens on: every try fails at once.
    fn cert_loop(
        trust: TrustRx,
    ) -> (
        CertLoop,
        watch::Receiver<RefreshStatus>,
        mpsc::Sender<String>,
    ) {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let (renew_tx, renew) = mpsc::channel(1);
        let (status_tx, status) = watch::channel(RefreshStatus::default());
        let (_own_tx, own) = watch::channel(None);
        let cp: Identity = "weft-identity.weft.serviceaccount.identity.weft.cluster.local"
            .parse()
            .unwrap();
        let control = crate::control::ControlPlane::new(cp.clone(), trust.clone(), own).unwrap();
        let cert_loop = CertLoop {
            addr,
            control,
            control_plane: cp,
            timeout: Duration::from_secs(2),
            trust,
            identity: "web.demo.serviceaccount.identity.weft.cluster.local"
                .parse()
                .unwrap(),
            token_file: None,
            min_refresh: Duration::from_secs(10),
            renew,
            status: status_tx,
            refreshes: Family::default(),
        };
        (cert_loop, status, renew_tx)
    }

    /// Holding a valid leaf, a pushed bundle does not wake the loop (the
    /// renewal stays due when it was); anchors from the watched file do,
    /// as a re-root; so does a renew-now request.
    #[tokio::test]
    async fn out_of_band_anchors_wake_a_proxy_that_holds_a_leaf() {
        let pem = root_pem("root");
        let (trust_tx, trust) = watch::channel(Arc::new(Trust::new(None, &pem).unwrap()));
        let (mut cl, _status, renew) = cert_loop(trust.clone());
        let mut rx = trust;
        let pushed = Trust::new(
            Some(crate::trust::Version {
                generation: 2,
                sha256: "b".into(),
            }),
            &pem,
        )
        .unwrap();
        trust_tx.send_replace(Arc::new(pushed));
        let woke = cl.next(&mut rx, Duration::from_millis(300), false).await;
        assert!(matches!(woke, Wake::Due), "a pushed bundle woke the loop");

        let file = format!("{pem}{}", root_pem("root-2"));
        trust_tx.send_replace(Arc::new(Trust::new(None, &file).unwrap()));
        let woke = tokio::time::timeout(
            Duration::from_secs(10),
            cl.next(&mut rx, Duration::from_secs(3600), false),
        )
        .await
        .expect("woken by the anchors file within 10 s");
        assert!(matches!(woke, Wake::Anchors { out_of_band: true }));

        renew.send("r1".into()).await.unwrap();
        let woke = tokio::time::timeout(
            Duration::from_secs(10),
            cl.next(&mut rx, Duration::from_secs(3600), false),
        )
        .await
        .expect("woken by renew-now within 10 s");
        assert!(matches!(woke, Wake::Renew(id) if id == "r1"));
    }

    /// A renewal that cannot reach the identity service is counted as an
    /// error, and reported as such.
    #[tokio::test]
    async fn failed_refreshes_are_counted() {
        let pem = root_pem("root");
        let (_trust_tx, trust) = watch::channel(Arc::new(Trust::new(None, &pem).unwrap()));
        let (cert_loop, mut status, _renew) = cert_loop(trust);
        let refreshes = cert_loop.refreshes.clone();
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(cert_loop.run(tx));
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            status.wait_for(|s| matches!(s.result, Refresh::Failed(_))),
        )
        .await
        .expect("a failed refresh within 20 s")
        .unwrap()
        .clone();
        task.abort();
        assert!(
            got.result.to_string().contains("cannot reach"),
            "{}",
            got.result
        );
        let errors = refreshes
            .get_or_create(&ResultLabel { result: "error" })
            .get();
        assert!(errors >= 1, "refreshes{{result=\"error\"}} = {errors}");
        assert_eq!(
            refreshes.get_or_create(&ResultLabel { result: "ok" }).get(),
            0
        );
    }
}
