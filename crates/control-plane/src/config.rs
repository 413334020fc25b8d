//! The control plane's one configuration struct, parsed once by the CLI.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use identity::IssuerFiles;

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Issuer files; None in Kubernetes mode (Secret and ConfigMap instead).
    pub issuer_files: Option<IssuerFiles>,
    pub issuance_lifetime: Duration,
    pub clock_skew: Duration,
    pub trust_domain: String,
    pub controller_namespace: String,
    /// Standalone: token key, revocations, issuance record, bundle
    /// generation. Unused in Kubernetes mode (all of it is in the API).
    pub state_dir: PathBuf,
    /// Past this many live certificates Certify is refused (never dropping
    /// a live entry of the issuance record).
    pub max_live_certificates: usize,
    /// Resource directory (policy, workloads); used by later services.
    pub resources: Option<PathBuf>,
    /// Kubernetes mode: resources from the API server instead of a directory.
    pub kubernetes: Option<crate::k8s::KubeSettings>,
    pub identity_addr: SocketAddr,
    /// Destination service, and the mesh stream (mTLS required).
    pub destination_addr: SocketAddr,
    /// Inbound and outbound policy services.
    pub policy_addr: SocketAddr,
    /// Plaintext gRPC on loopback (see [`crate::plaintext`]).
    pub plaintext_loopback: Option<SocketAddr>,
    /// Default inbound policy, cluster networks and the like.
    pub policy: policy::translate::PolicyDefaults,
    pub admin_addr: SocketAddr,
    /// Connection cap and timeouts of the admin listener (and, each its
    /// own, of the operator listener).
    pub admin_limits: bounds::Limits,
    /// The operator listener off loopback (TLS, client certificate on an
    /// allow list), when asked for.
    pub operator: Option<crate::operator_tls::OperatorListener>,
    /// Connection caps, timeouts and stream caps of the gRPC listeners.
    pub grpc_limits: crate::grpc_bounds::GrpcLimits,
    /// On shutdown, how long streams may go on after GOAWAY before their
    /// connections are closed.
    pub shutdown_grace: Duration,
    /// How often the issuer files are re-read even without a file event.
    pub reread_interval: Duration,
    /// Floor for the control plane's own certificate renewal.
    pub min_refresh: Duration,
    /// How often Certify may be asked: per client, in all, refusals per peer.
    pub certify_limits: identity::limit::CertifyLimits,
}

impl fmt::Display for ControlPlaneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: &dyn fmt::Display| {
            writeln!(f, "  {k:<32} {v}")
        };
        match &self.issuer_files {
            Some(files) => {
                row(f, "identity-trust-anchors-file", &files.anchors.display())?;
                row(
                    f,
                    "identity-issuer-certificate-file",
                    &files.certificate.display(),
                )?;
                // The key file's path, never its content.
                row(f, "identity-issuer-key-file", &files.key.display())?;
            }
            None => row(f, "issuer", &"from Kubernetes (see kubernetes)")?,
        }
        row(
            f,
            "identity-issuance-lifetime",
            &format!("{}s", self.issuance_lifetime.as_secs()),
        )?;
        row(
            f,
            "identity-clock-skew-allowance",
            &format!("{}s", self.clock_skew.as_secs()),
        )?;
        row(f, "identity-trust-domain", &self.trust_domain)?;
        row(f, "controller-namespace", &self.controller_namespace)?;
        match &self.kubernetes {
            None => row(f, "state-dir", &self.state_dir.display())?,
            Some(_) => row(f, "state-dir", &"(unused: state is kept in the API)")?,
        }
        row(f, "max-live-certificates", &self.max_live_certificates)?;
        row(
            f,
            "resources",
            &self
                .resources
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none)".into()),
        )?;
        if let Some(k) = &self.kubernetes {
            row(f, "kubernetes", k)?;
        }
        row(f, "identity-addr", &self.identity_addr)?;
        row(f, "destination-addr", &self.destination_addr)?;
        row(f, "policy-addr", &self.policy_addr)?;
        if let Some(addr) = &self.plaintext_loopback {
            row(f, "control-plaintext-loopback", addr)?;
        }
        row(
            f,
            "default-inbound-policy",
            &policy::translate::default_name(self.policy.default_policy),
        )?;
        row(
            f,
            "cluster-networks",
            &self
                .policy
                .cluster_networks
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )?;
        row(f, "admin-addr", &self.admin_addr)?;
        row(f, "admin-limits", &self.admin_limits)?;
        if let Some(op) = &self.operator {
            row(f, "operator-addr", op)?;
        }
        row(f, "grpc-limits", &self.grpc_limits)?;
        row(
            f,
            "shutdown-grace-period",
            &format!("{}s", self.shutdown_grace.as_secs_f64()),
        )?;
        row(
            f,
            "reread-interval",
            &format!("{}s", self.reread_interval.as_secs_f64()),
        )?;
        row(
            f,
            "identity-min-refresh",
            &format!("{}s", self.min_refresh.as_secs()),
        )?;
        row(f, "certify-limits", &self.certify_limits)
    }
}
