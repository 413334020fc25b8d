//! `weft control-plane`: flags and environment into one typed config, then run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use control_plane::ControlPlaneConfig;
use identity::IssuerFiles;
use identity::limit::{CertifyLimits, Rate};

use super::duration::parse_duration;
use super::{CmdResult, Failure};

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Trust anchor bundle (PEM), as in `linkerd install` (not with --kubernetes: the trust-roots ConfigMap)
    #[arg(
        long,
        env = "WEFT_IDENTITY_TRUST_ANCHORS_FILE",
        conflicts_with = "kubernetes"
    )]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// Issuer certificate (PEM); watched and reloaded (not with --kubernetes: the issuer Secret)
    #[arg(
        long,
        env = "WEFT_IDENTITY_ISSUER_CERTIFICATE_FILE",
        conflicts_with = "kubernetes"
    )]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// Issuer private key (PEM); watched and reloaded (not with --kubernetes: the issuer Secret)
    #[arg(
        long,
        env = "WEFT_IDENTITY_ISSUER_KEY_FILE",
        conflicts_with = "kubernetes"
    )]
    pub identity_issuer_key_file: Option<PathBuf>,
    /// Lifetime of issued workload certificates (24h; seconds allowed, e.g. 20s)
    #[arg(long, env = "WEFT_IDENTITY_ISSUANCE_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub identity_issuance_lifetime: Duration,
    /// Clock skew allowed for certificates and tokens
    #[arg(long, env = "WEFT_IDENTITY_CLOCK_SKEW_ALLOWANCE", default_value = "20s", value_parser = parse_duration)]
    pub identity_clock_skew_allowance: Duration,
    /// Trust domain: the last labels of every identity, and the SPIFFE trust domain
    #[arg(long, env = "WEFT_IDENTITY_TRUST_DOMAIN", default_value = pki::identity::DEFAULT_TRUST_DOMAIN)]
    pub identity_trust_domain: String,
    /// The control plane's namespace: the `identity.<ns>` part of identity names
    #[arg(long, env = "WEFT_CONTROLLER_NAMESPACE", default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
    /// State directory: token signing key, revocations, issuance record, bundle generation (created 0700 if absent); unused with --kubernetes: the key and revocations are in Secret weft-join-token-key, the bundle generation in ConfigMap weft-bundle-generation, the issuance record in IssuanceRecord objects
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "weft-state")]
    pub state_dir: PathBuf,
    /// Past this many live (unexpired) certificates in the issuance record, Certify answers RESOURCE_EXHAUSTED rather than forget a valid certificate (default: 100000, a day of 24h leaves for a large fleet)
    #[arg(long, env = "WEFT_MAX_LIVE_CERTIFICATES", default_value_t = identity::record::DEFAULT_MAX_LIVE)]
    pub max_live_certificates: usize,
    /// Resource directory (policy, workloads) for the services that use it
    #[arg(long, env = "WEFT_RESOURCES", conflicts_with = "kubernetes")]
    pub resources: Option<PathBuf>,
    /// Read pods, services and policy from a Kubernetes API server instead of a directory
    #[arg(long, env = "WEFT_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: in-cluster configuration, or KUBECONFIG)
    #[arg(long, env = "WEFT_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// ConfigMap in the controller namespace holding the trust anchors (key ca-bundle.crt), with --kubernetes
    #[arg(long, env = "WEFT_IDENTITY_TRUST_ROOTS_CONFIGMAP", default_value = control_plane::k8s::KubeSettings::DEFAULT_TRUST_ROOTS_CONFIGMAP)]
    pub identity_trust_roots_configmap: String,
    /// Secret in the controller namespace holding the issuer certificate and key, with --kubernetes
    #[arg(long, env = "WEFT_IDENTITY_ISSUER_SECRET", default_value = control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET)]
    pub identity_issuer_secret: String,
    /// Service in the controller namespace whose EndpointSlices list the control plane's replicas (port "destination"): /fleet and `weft check --proxy` merge every replica's proxies, with --kubernetes
    #[arg(long, env = "WEFT_FLEET_PEERS_SERVICE", default_value = control_plane::k8s::KubeSettings::DEFAULT_FLEET_PEERS_SERVICE)]
    pub fleet_peers_service: String,
    /// Identity gRPC listener (TLS)
    #[arg(long, env = "WEFT_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    pub identity_addr: SocketAddr,
    /// Destination gRPC listener (TLS; a client certificate, when presented, must verify; the mesh stream requires one)
    #[arg(long, env = "WEFT_DESTINATION_ADDR", default_value = "0.0.0.0:8086")]
    pub destination_addr: SocketAddr,
    /// Inbound and outbound policy gRPC listener (TLS; a client certificate, when presented, must verify)
    #[arg(long, env = "WEFT_POLICY_ADDR", default_value = "0.0.0.0:8090")]
    pub policy_addr: SocketAddr,
    /// Plaintext gRPC (h2c) for Identity, Destination, policy and OutboundPolicies, on a loopback address only (linkerd2-proxy speaks plaintext to a loopback control-plane address); Certify there still needs a join token, and the mesh stream is not offered
    #[arg(long, env = "WEFT_CONTROL_PLAINTEXT_LOOPBACK")]
    pub control_plaintext_loopback: Option<SocketAddr>,
    /// The default inbound policy for ports no Server selects
    #[arg(
        long,
        env = "WEFT_DEFAULT_INBOUND_POLICY",
        default_value = "all-unauthenticated"
    )]
    pub default_inbound_policy: String,
    /// Pod and service networks (CIDRs): the cluster-* default policies admit them, and with --kubernetes an address outside them is not meshed (required with --kubernetes; default without it: the private ranges)
    #[arg(long, env = "WEFT_CLUSTER_NETWORKS", value_delimiter = ',')]
    pub cluster_networks: Option<Vec<String>>,
    /// Admin (operator) listener: /live /ready /metrics /fleet POST /renew-now; loopback only (reach it with ssh or a port-forward; kubelet probes use --probe-addr)
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:9990")]
    pub admin_addr: SocketAddr,
    /// Operator listener off loopback (TLS): the admin endpoints for callers with a client certificate from this mesh's trust anchors whose identity is on --operator-allow (weft --operator-cert/--operator-key/--operator-ca), and with --kubernetes for bearer tokens whose user RBAC allows (Roles weft-operator, weft-operator-view; weft --operator-token-file); e.g. 0.0.0.0:9443
    #[arg(long, env = "WEFT_OPERATOR_ADDR")]
    pub operator_addr: Option<SocketAddr>,
    /// Identities allowed on the operator listener, comma-separated, e.g. alice.operators.serviceaccount.identity.weft.cluster.local (a leaf from `weft certs create NAME … --profile leaf --ca issuer.crt --ca-key issuer.key`)
    #[arg(long, env = "WEFT_OPERATOR_ALLOW", value_delimiter = ',')]
    pub operator_allow: Vec<String>,
    /// Probe-only listener for kubelet (/live /ready /metrics and nothing else), e.g. 0.0.0.0:9995 on the pod IP; the admin listener stays on loopback
    #[arg(long, env = "WEFT_PROBE_ADDR")]
    pub probe_addr: Option<SocketAddr>,
    /// Re-read the issuer files this often even without a file event
    #[arg(long, env = "WEFT_REREAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub reread_interval: Duration,
    /// Floor for renewing the control plane's own certificate
    #[arg(long, env = "WEFT_IDENTITY_MIN_REFRESH", default_value = "10s", value_parser = parse_duration)]
    pub identity_min_refresh: Duration,
    #[command(flatten)]
    pub admin_limits: super::AdminLimitArgs,
    #[command(flatten)]
    pub grpc_limits: super::GrpcLimitArgs,
    #[command(flatten)]
    pub webhook: super::webhook::WebhookArgs,
    #[command(flatten)]
    pub certify_limits: CertifyLimitArgs,
    /// On SIGTERM: stop accepting, send GOAWAY, let streams go on for this long, then close what remains and exit
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE_PERIOD", default_value = "10s", value_parser = super::duration::parse_duration)]
    pub shutdown_grace_period: std::time::Duration,
}

impl ControlPlaneArgs {
    /// The three issuer files, all required without --kubernetes (with it
    /// the issuer comes from the Secret and ConfigMap; clap refuses them).
    fn issuer_files(&self) -> Result<Option<IssuerFiles>, Failure> {
        if self.kubernetes {
            return Ok(None);
        }
        let missing: Vec<&str> = [
            (
                &self.identity_trust_anchors_file,
                "--identity-trust-anchors-file",
            ),
            (
                &self.identity_issuer_certificate_file,
                "--identity-issuer-certificate-file",
            ),
            (&self.identity_issuer_key_file, "--identity-issuer-key-file"),
        ]
        .into_iter()
        .filter(|(v, _)| v.is_none())
        .map(|(_, flag)| flag)
        .collect();
        match (
            &self.identity_trust_anchors_file,
            &self.identity_issuer_certificate_file,
            &self.identity_issuer_key_file,
        ) {
            (Some(anchors), Some(certificate), Some(key)) => Ok(Some(IssuerFiles {
                anchors: anchors.clone(),
                certificate: certificate.clone(),
                key: key.clone(),
            })),
            _ => Err(Failure::input(format!(
                "missing {}: the control plane needs the trust anchors, issuer certificate and issuer key files (create them with `weft certs`), or --kubernetes to read them from the issuer Secret and trust-roots ConfigMap",
                missing.join(", ")
            ))),
        }
    }

    fn into_config(self) -> Result<ControlPlaneConfig, Failure> {
        if self.identity_issuance_lifetime < Duration::from_secs(1) {
            return Err(Failure::input(
                "--identity-issuance-lifetime must be at least 1s",
            ));
        }
        if self.max_live_certificates == 0 {
            return Err(Failure::input(
                "--max-live-certificates must be at least 1 (it caps live certificates; 0 would refuse every Certify)",
            ));
        }
        if self.reread_interval.is_zero() {
            return Err(Failure::input("--reread-interval must be more than 0"));
        }
        let cluster_networks = match (&self.cluster_networks, self.kubernetes) {
            (Some(n), _) => n.clone(),
            (None, false) => policy::translate::DEFAULT_CLUSTER_NETWORKS
                .split(',')
                .map(str::to_string)
                .collect(),
            (None, true) => {
                return Err(Failure::input(
                    "--kubernetes needs --cluster-networks: the cluster's pod and service CIDRs (e.g. 10.244.0.0/16,10.96.0.0/12), so addresses outside the cluster pass as not meshed and unowned ones inside it are refused",
                ));
            }
        };
        let issuer_files = self.issuer_files()?;
        let kubernetes = self.kubernetes.then(|| control_plane::k8s::KubeSettings {
            kubeconfig: self.kubeconfig.clone(),
            trust_roots_configmap: self.identity_trust_roots_configmap.clone(),
            issuer_secret: self.identity_issuer_secret.clone(),
            webhook: None,
            fleet_peers_service: self.fleet_peers_service.clone(),
        });
        let kubernetes = match kubernetes {
            Some(mut k) => {
                k.webhook = self
                    .webhook
                    .settings(&self.controller_namespace, &self.identity_trust_domain)?;
                Some(k)
            }
            None => None,
        };
        Ok(ControlPlaneConfig {
            issuer_files,
            issuance_lifetime: self.identity_issuance_lifetime,
            clock_skew: self.identity_clock_skew_allowance,
            trust_domain: self.identity_trust_domain.clone(),
            controller_namespace: self.controller_namespace.clone(),
            state_dir: std::path::absolute(&self.state_dir).unwrap_or(self.state_dir),
            max_live_certificates: self.max_live_certificates,
            resources: self.resources,
            kubernetes,
            identity_addr: self.identity_addr,
            destination_addr: self.destination_addr,
            policy_addr: self.policy_addr,
            plaintext_loopback: self.control_plaintext_loopback,
            policy: policy::translate::PolicyDefaults {
                default_policy: policy::translate::parse_default(&self.default_inbound_policy).ok_or_else(|| {
                    Failure::input(format!(
                        "--default-inbound-policy {:?}: expected all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit",
                        self.default_inbound_policy
                    ))
                })?,
                cluster_networks: cluster_networks
                    .iter()
                    .map(|c| c.parse().map_err(|e| Failure::input(format!("--cluster-networks {c:?}: {e}"))))
                    .collect::<Result<_, _>>()?,
                control_plane_ns: self.controller_namespace.clone(),
                trust_domain: self.identity_trust_domain.clone(),
                detect_timeout: Duration::from_secs(10),
            },
            admin_addr: operator_addr(self.admin_addr)?,
            admin_limits: self.admin_limits.limits()?,
            operator: operator_listener(
                self.operator_addr,
                &self.operator_allow,
                &self.controller_namespace,
                &self.identity_trust_domain,
                self.kubernetes,
            )?,
            grpc_limits: self.grpc_limits.limits()?,
            shutdown_grace: self.shutdown_grace_period,
            reread_interval: self.reread_interval,
            min_refresh: self.identity_min_refresh,
            certify_limits: self.certify_limits.limits()?,
        })
    }
}

/// The admin listener serves operator endpoints (the fleet, renewals)
/// without authentication, so it binds loopback only.
fn operator_addr(addr: SocketAddr) -> Result<SocketAddr, Failure> {
    if addr.ip().is_loopback() {
        return Ok(addr);
    }
    Err(Failure::input(format!(
        "--admin-addr {addr}: the admin listener serves operator endpoints (/fleet, POST /renew-now) without authentication, so it binds a loopback address only (e.g. 127.0.0.1:9990); reach it with ssh or kubectl port-forward, and give kubelet --probe-addr {} for /live, /ready and /metrics",
        SocketAddr::new(addr.ip(), 9995)
    )))
}

/// The operator listener, when `--operator-addr` is given: standalone never
/// without an allow list (no one would be served, or worse, anyone), each
/// entry an identity of this mesh; in Kubernetes mode bearer tokens are
/// judged by RBAC, so the list may be empty.
fn operator_listener(
    addr: Option<SocketAddr>,
    allow: &[String],
    control_plane_ns: &str,
    trust_domain: &str,
    kubernetes: bool,
) -> Result<Option<control_plane::operator_tls::OperatorListener>, Failure> {
    let example = pki::Identity::new("alice", "operators", control_plane_ns, trust_domain)
        .map(|i| i.to_string())
        .unwrap_or_else(|_| "alice.operators.serviceaccount.identity.weft.cluster.local".into());
    let Some(addr) = addr else {
        if allow.is_empty() {
            return Ok(None);
        }
        return Err(Failure::input(
            "--operator-allow without --operator-addr: the allow list is for the operator listener; add --operator-addr HOST:PORT (e.g. 0.0.0.0:9443)",
        ));
    };
    if allow.iter().all(|a| a.trim().is_empty()) && !kubernetes {
        return Err(Failure::input(format!(
            "--operator-addr {addr} without --operator-allow: the operator listener serves only client certificates whose identity is on the allow list; pass --operator-allow {example} (a leaf made with `weft certs create {example} op.crt op.key --profile leaf --ca issuer.crt --ca-key issuer.key --no-password --insecure`)"
        )));
    }
    let mut identities = Vec::new();
    for entry in allow.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        let id: pki::Identity = entry.parse().map_err(|e| {
            Failure::input(format!(
                "--operator-allow {entry:?}: not an identity ({e}); expected SA.NS.serviceaccount.identity.{control_plane_ns}.{trust_domain}, e.g. {example}"
            ))
        })?;
        if id.control_plane_ns() != control_plane_ns || id.trust_domain() != trust_domain {
            return Err(Failure::input(format!(
                "--operator-allow {entry:?}: an identity of another mesh (this one's end in identity.{control_plane_ns}.{trust_domain}), so no certificate from this mesh's issuer could name it; e.g. {example}"
            )));
        }
        identities.push(id);
    }
    Ok(Some(control_plane::operator_tls::OperatorListener {
        addr,
        allow: identities,
        tokens: kubernetes,
    }))
}

/// How often Certify may be asked (RATE is COUNT/UNIT:BURST, UNIT s, m or h).
#[derive(Debug, Clone, Args)]
pub struct CertifyLimitArgs {
    /// Certificates per client: per renewing identity, per join token, per pod (a ServiceAccount token's bound pod), never per ServiceAccount; more are refused RESOURCE_EXHAUSTED with when to retry
    #[arg(long, env = "WEFT_CERTIFY_RATE_PER_CLIENT", default_value = "6/m:3")]
    pub certify_rate_per_client: Rate,
    /// Certificates issued by this control plane in all; the same ceiling, separately, caps token verifications (Kubernetes TokenReviews)
    #[arg(long, env = "WEFT_CERTIFY_RATE_GLOBAL", default_value = "200/s:200")]
    pub certify_rate_global: Rate,
    /// Refused Certify requests (bad proof or request) per peer address; past it the address is refused before any work until its budget refills
    #[arg(
        long,
        env = "WEFT_CERTIFY_REFUSALS_PER_PEER",
        default_value = "10/s:20"
    )]
    pub certify_refusals_per_peer: Rate,
    /// Clients and peer addresses tracked at once (each table); the least recently limited are forgotten first
    #[arg(long, env = "WEFT_CERTIFY_MAX_TRACKED", default_value_t = 10_000)]
    pub certify_max_tracked: usize,
}

impl CertifyLimitArgs {
    /// The defaults above, for processes started without a command line (the demo).
    pub fn defaults() -> Result<CertifyLimits, Failure> {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: CertifyLimitArgs,
        }
        let d: Defaults = clap::Parser::parse_from(["weft"]);
        d.limits.limits()
    }

    pub fn limits(&self) -> Result<CertifyLimits, Failure> {
        if self.certify_max_tracked == 0 {
            return Err(Failure::input("--certify-max-tracked must be at least 1"));
        }
        Ok(CertifyLimits {
            per_client: self.certify_rate_per_client,
            global: self.certify_rate_global,
            refusals_per_peer: self.certify_refusals_per_peer,
            max_keys: self.certify_max_tracked,
        })
    }
}

pub fn run(args: ControlPlaneArgs) -> CmdResult {
    let probe_addr = args.probe_addr;
    let cfg = args.into_config()?;
    super::init_logging();
    bounds::raise_nofile();
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async move {
        eprintln!("weft control-plane starting with:\n{cfg}");
        let (started, serve) = control_plane::start(cfg, super::shutdown_signal())
            .await
            .map_err(|e| match e {
                control_plane::StartError::State(_)
                | control_plane::StartError::NotLoopback { .. } => Failure::input(e),
                other => Failure::fatal(other),
            })?;
        eprintln!(
            "  token signing key sha256      {}{}",
            started.token_key_id,
            if started.state_initialised {
                " (new key made)"
            } else {
                ""
            }
        );
        eprintln!("  identity listening on         {}", started.identity_addr);
        eprintln!(
            "  destination listening on      {}",
            started.destination_addr
        );
        eprintln!("  policy listening on           {}", started.policy_addr);
        eprintln!("  admin listening on            {}", started.admin_addr);
        if let Some(addr) = started.operator_addr {
            eprintln!("  operator listening on         {addr}");
        }
        if let Some(addr) = started.plaintext_addr {
            eprintln!("  plaintext listening on        {addr}");
        }
        if let Some(addr) = started.webhook_addr {
            eprintln!("  webhook listening on          {addr}");
        }
        if let Some(addr) = probe_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::fatal(format!("cannot listen for probes on {addr}: {e}")))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tokio::spawn(super::probes::serve(listener, started.admin_addr));
            eprintln!("  probes listening on           {bound}");
        }
        serve.await;
        eprintln!("weft control-plane stopped");
        Ok(())
    });
    // Tasks still running (connections closed at the grace period's end)
    // are dropped, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
