//! Keeps the webhook CA Secret, the webhook configuration's `caBundle` and
//! this replica's serving certificate in step (see [`super::ca`] for the
//! rules). Every replica runs it; writes are compare-and-swap on
//! resourceVersion, so two replicas never lose each other's CA.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use pki::create::San;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::super::lease::status;
use super::super::proofs::api_error;
use super::ca::{self, WebhookCa};

/// How often the Secret and the configuration are read again.
const TICK: Duration = Duration::from_secs(3);
/// How long a CA must have been in every `caBundle` before it is served
/// from: the API server watches the same object and must have it too.
pub const SETTLE: Duration = Duration::from_secs(6);

#[derive(Debug, Clone)]
pub struct KeeperConfig {
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    pub names: Vec<San>,
    pub ca_lifetime: Duration,
    pub serving_lifetime: Duration,
}

/// The serving certificate in force and where it came from.
pub struct Serving {
    pub key: Arc<CertifiedKey>,
    pub ca_id: String,
    pub renew_at: i64,
}

pub struct Keeper {
    pub client: kube::Client,
    pub cfg: KeeperConfig,
    pub tx: watch::Sender<Option<Arc<CertifiedKey>>>,
}

fn pem_certs(b: &[u8]) -> Vec<CertificateDer<'static>> {
    pki::cert::parse_certs(std::path::Path::new("caBundle"), b).unwrap_or_default()
}

impl Keeper {
    pub async fn run(self) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let mut trusted_since: BTreeMap<String, i64> = BTreeMap::new();
        let mut serving: Option<Serving> = None;
        let mut last_error = String::new();
        loop {
            let r = self
                .pass(&secrets, &configs, &mut trusted_since, &mut serving)
                .await;
            match r {
                Ok(()) => last_error.clear(),
                Err(e) if e != last_error => {
                    tracing::warn!(error = %e, "webhook CA: {e}; the webhook keeps the certificate it serves");
                    last_error = e;
                }
                Err(_) => {}
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn pass(
        &self,
        secrets: &Api<Secret>,
        configs: &Api<MutatingWebhookConfiguration>,
        trusted_since: &mut BTreeMap<String, i64>,
        serving: &mut Option<Serving>,
    ) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let cas = self.secret(secrets, now).await?;
        let config = configs
            .get_opt(&self.cfg.configuration)
            .await
            .map_err(|e| {
                format!(
                    "cannot read MutatingWebhookConfiguration {}: {}",
                    self.cfg.configuration,
                    api_error(&e)
                )
            })?
            .ok_or_else(|| {
                format!(
                    "MutatingWebhookConfiguration {} does not exist; apply `weft install` output",
                    self.cfg.configuration
                )
            })?;
        let bundles: Vec<Vec<CertificateDer<'static>>> = config
            .webhooks
            .iter()
            .flatten()
            .map(|w| {
                w.client_config
                    .ca_bundle
                    .as_ref()
                    .map(|b| pem_certs(&b.0))
                    .unwrap_or_default()
            })
            .collect();
        let current: Vec<CertificateDer<'static>> = bundles.iter().flatten().cloned().collect();
        let want = ca::bundle(&cas, &current, now.unix_timestamp());
        if bundles.iter().any(|b| *b != want) {
            self.patch_bundle(configs, &config, &want).await?;
        }
        // Trusted: present in every webhook's bundle as last read.
        let t = now.unix_timestamp();
        trusted_since.retain(|id, _| cas.iter().any(|c| &c.id == id));
        for c in &cas {
            if !bundles.is_empty() && bundles.iter().all(|b| b.contains(&c.cert)) {
                trusted_since.entry(c.id.clone()).or_insert(t);
            } else {
                trusted_since.remove(&c.id);
            }
        }
        self.serve_from(&cas, trusted_since, now, serving)
    }

    /// The CA set, made or rotated as [`ca::plan`] says.
    async fn secret(
        &self,
        api: &Api<Secret>,
        now: OffsetDateTime,
    ) -> Result<Vec<WebhookCa>, String> {
        let name = &self.cfg.secret;
        let ns = &self.cfg.namespace;
        let found = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read Secret {ns}/{name}: {}", api_error(&e)))?;
        let data: BTreeMap<String, Vec<u8>> = found
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let cas = ca::parse(&data).map_err(|e| {
            format!("Secret {ns}/{name}: {e}; delete the Secret to start a new webhook CA")
        })?;
        let plan = ca::plan(&cas, now.unix_timestamp());
        if plan.is_empty() {
            return Ok(cas);
        }
        let mut next = data.clone();
        for id in &plan.drop {
            next.remove(&format!("{id}.crt"));
            next.remove(&format!("{id}.key"));
        }
        if plan.add {
            let fresh = ca::new_ca(now, self.cfg.ca_lifetime).map_err(|e| e.to_string())?;
            next.extend(fresh.entries());
            tracing::info!(ca = %fresh.id, not_after = fresh.not_after, "webhook CA: a new CA is added (served from once every caBundle has it)");
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                resource_version: found
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_string(),
                    "weft".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                next.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        };
        let written = match found {
            None => api.create(&PostParams::default(), &secret).await,
            Some(_) => api.replace(name, &PostParams::default(), &secret).await,
        };
        match written {
            Ok(s) => {
                let data = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                ca::parse(&data).map_err(|e| e.to_string())
            }
            // Another replica wrote first: judge its set at the next pass.
            Err(e) if status(&e) == Some(409) => Ok(cas),
            Err(e) => Err(format!(
                "cannot write Secret {ns}/{name}: {}",
                api_error(&e)
            )),
        }
    }

    async fn patch_bundle(
        &self,
        api: &Api<MutatingWebhookConfiguration>,
        config: &MutatingWebhookConfiguration,
        want: &[CertificateDer<'static>],
    ) -> Result<(), String> {
        let pem = pki::cert::to_pem(want);
        let mut patched = config.clone();
        for w in patched.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(pem.clone().into_bytes()));
        }
        // Replace carries the resourceVersion read: a concurrent write by
        // another replica fails this one (409), retried at the next pass.
        match api
            .replace(&self.cfg.configuration, &PostParams::default(), &patched)
            .await
        {
            Ok(_) => {
                tracing::info!(cas = want.len(), "webhook caBundle updated");
                Ok(())
            }
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(format!(
                "cannot update the caBundle of MutatingWebhookConfiguration {}: {}",
                self.cfg.configuration,
                api_error(&e)
            )),
        }
    }

    fn serve_from(
        &self,
        cas: &[WebhookCa],
        trusted_since: &BTreeMap<String, i64>,
        now: OffsetDateTime,
        serving: &mut Option<Serving>,
    ) -> Result<(), String> {
        let t = now.unix_timestamp();
        let Some(chosen) = ca::serving(cas, trusted_since, t, SETTLE) else {
            if serving.is_none() {
                return Err("no webhook CA is in the caBundle yet; waiting".into());
            }
            return Ok(());
        };
        let due = serving
            .as_ref()
            .is_none_or(|s| s.ca_id != chosen.id || t >= s.renew_at);
        if !due {
            return Ok(());
        }
        let (cert, key) = ca::serving_cert(chosen, &self.cfg.names, now, self.cfg.serving_lifetime)
            .map_err(|e| e.to_string())?;
        let not_after = (now + self.cfg.serving_lifetime)
            .unix_timestamp()
            .min(chosen.not_after);
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            ))
            .map_err(|e| e.to_string())?;
        let certified = Arc::new(CertifiedKey::new(vec![cert], signing));
        tracing::info!(ca = %chosen.id, not_after, "webhook serving certificate issued");
        self.tx.send_replace(Some(certified.clone()));
        *serving = Some(Serving {
            key: certified,
            ca_id: chosen.id.clone(),
            renew_at: ca::renew_at(t, not_after),
        });
        Ok(())
    }
}
