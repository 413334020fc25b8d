//! `weft control-plane` flags for the injector (the mutating admission
//! webhook, Kubernetes mode only).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use control_plane::k8s::webhook::WebhookSettings;

use super::Failure;
use super::duration::parse_duration;

/// A webhook CA must live long enough for every replica to see its
/// successor in the caBundle (made at 2/3 of its life) and settle.
const MIN_CA_LIFETIME: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// Serve the injector (mutating admission webhook, HTTPS) here, e.g. 0.0.0.0:8443; with --kubernetes
    #[arg(long, env = "WEFT_WEBHOOK_ADDR", requires = "kubernetes")]
    pub webhook_addr: Option<SocketAddr>,
    /// The MutatingWebhookConfiguration whose caBundle the control plane keeps
    #[arg(long, env = "WEFT_WEBHOOK_CONFIGURATION", default_value = WebhookSettings::DEFAULT_CONFIGURATION)]
    pub webhook_configuration: String,
    /// Secret (controller namespace) holding the webhook CAs, shared by every replica
    #[arg(long, env = "WEFT_WEBHOOK_CA_SECRET", default_value = WebhookSettings::DEFAULT_CA_SECRET)]
    pub webhook_ca_secret: String,
    /// Lifetime of each webhook CA; a successor is made at 2/3 of it and served from once every caBundle has it
    #[arg(long, env = "WEFT_WEBHOOK_CA_LIFETIME", default_value = "8760h", value_parser = parse_duration)]
    pub webhook_ca_lifetime: Duration,
    /// Extra names (DNS or IP) on the webhook's serving certificate, for a webhook reached by URL (development, as envtest does); the Service's names are always there
    #[arg(long, env = "WEFT_WEBHOOK_NAMES", value_delimiter = ',')]
    pub webhook_name: Vec<String>,
    /// The weft image injected pods run (init container and proxy)
    #[arg(long, env = "WEFT_PROXY_IMAGE", default_value = super::inject::DEFAULT_IMAGE)]
    pub proxy_image: String,
    /// The cluster's DNS domain, for the control plane's service addresses in injected pods
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = super::inject::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

impl WebhookArgs {
    /// The injector's settings, or None when it is not served.
    pub fn settings(
        &self,
        control_plane_ns: &str,
        trust_domain: &str,
    ) -> Result<Option<WebhookSettings>, Failure> {
        let Some(addr) = self.webhook_addr else {
            return Ok(None);
        };
        if self.webhook_ca_lifetime < MIN_CA_LIFETIME {
            return Err(Failure::input(format!(
                "--webhook-ca-lifetime {:?} is too short: at least {MIN_CA_LIFETIME:?}, so every replica sees the next CA in the caBundle before serving from it",
                self.webhook_ca_lifetime
            )));
        }
        let extra_names = self
            .webhook_name
            .iter()
            .map(|n| {
                n.parse::<pki::create::San>()
                    .map_err(|e| Failure::input(format!("--webhook-name {n:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(WebhookSettings {
            addr,
            configuration: self.webhook_configuration.clone(),
            ca_secret: self.webhook_ca_secret.clone(),
            ca_lifetime: self.webhook_ca_lifetime,
            extra_names,
            inject: super::inject::settings(
                control_plane_ns,
                trust_domain,
                &self.cluster_domain,
                &self.proxy_image,
            ),
            limits: bounds::Limits {
                max_connections: 256,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(90),
            },
        }))
    }
}
