//! `weft token`: join tokens for a workload's first certificate.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use identity::state::StateDir;
use identity::token::TokenSigner;
use pki::files::{KEY_MODE, write_atomic};
use time::OffsetDateTime;

use super::duration::parse_duration;
use super::{CmdResult, Failure};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a join token for namespace/service-account; prints it on stdout
    Create(CreateArgs),
    /// Revoke a token by its id (jti); the control plane refuses it from then on
    Revoke(RevokeArgs),
}

/// Where the signing key lives when the control plane runs in Kubernetes
/// mode: Secret weft-join-token-key of its namespace, never a directory.
#[derive(Debug, Args)]
pub struct KubeKey {
    /// The control plane runs with --kubernetes: use the key (and revocation list) in its Secret weft-join-token-key instead of --state-dir
    #[arg(long)]
    pub kubernetes: bool,
    /// Kubeconfig for --kubernetes (default: in-cluster configuration, or KUBECONFIG); it must allow get (and for revoke, update) on that Secret
    #[arg(long, requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// The control plane's namespace, where the Secret is (with --kubernetes)
    #[arg(long, default_value = pki::identity::DEFAULT_CONTROL_PLANE_NS)]
    pub controller_namespace: String,
}

impl KubeKey {
    fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::fatal(format!("cannot start the runtime: {e}")))
    }

    /// The signing key from the Secret; never creates it (the control
    /// plane does, at its first start).
    fn key(&self) -> Result<rcgen::KeyPair, Failure> {
        Self::runtime()?.block_on(async {
            let client = control_plane::k8s::client(self.kubeconfig.as_deref())
                .await
                .map_err(Failure::input)?;
            control_plane::k8s::tokens::read_key(client, &self.controller_namespace)
                .await
                .map_err(Failure::input)
        })
    }

    fn revoke(&self, jti: &str) -> Result<bool, Failure> {
        Self::runtime()?.block_on(async {
            let client = control_plane::k8s::client(self.kubeconfig.as_deref())
                .await
                .map_err(Failure::input)?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            control_plane::k8s::tokens::revoke_with(client, &self.controller_namespace, jti, now)
                .await
                .map_err(Failure::input)
        })
    }

    /// How to pass the same key source again, for hints.
    fn flags(&self, state_dir: &std::path::Path) -> String {
        if !self.kubernetes {
            return format!("--state-dir {}", state_dir.display());
        }
        let mut f = format!(
            "--kubernetes --controller-namespace {}",
            self.controller_namespace
        );
        if let Some(k) = &self.kubeconfig {
            f.push_str(&format!(" --kubeconfig {}", k.display()));
        }
        f
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The workload's namespace
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// The workload's service account (with the namespace, its identity)
    #[arg(long)]
    pub service_account: String,
    /// How long the token may be used for a first certificate
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The control plane's state directory (holds the signing key); never created here
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "weft-state")]
    pub state_dir: PathBuf,
    /// Write the token to this file (mode 0600) instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing --out file
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub kube: KubeKey,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token id (jti) that `weft token create` printed
    pub jti: String,
    /// The control plane's state directory (holds the revocation list); never created here
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "weft-state")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub kube: KubeKey,
}

pub fn run(cmd: TokenCmd) -> CmdResult {
    match cmd {
        TokenCmd::Create(a) => create(a),
        TokenCmd::Revoke(a) => revoke(a),
    }
}

fn create(a: CreateArgs) -> CmdResult {
    // The names must make a valid identity: check them with the same rules.
    pki::Identity::new(&a.service_account, &a.namespace, "weft", "cluster.local")
        .map_err(Failure::input)?;
    if a.ttl.is_zero() {
        return Err(Failure::input("--ttl must be more than 0"));
    }
    let key = if a.kube.kubernetes {
        a.kube.key()?
    } else {
        StateDir::open_existing(&a.state_dir)
            .map_err(Failure::input)?
            .token_key
    };
    let signer = TokenSigner::new(&key).map_err(Failure::input)?;
    let (token, claims) = signer
        .create(
            &a.namespace,
            &a.service_account,
            a.ttl,
            OffsetDateTime::now_utc(),
        )
        .map_err(Failure::input)?;
    let exp = OffsetDateTime::from_unix_timestamp(claims.exp)
        .map(pki::info::rfc3339)
        .unwrap_or_default();
    match &a.out {
        Some(path) => {
            write_atomic(path, format!("{token}\n").as_bytes(), KEY_MODE, a.force)
                .map_err(Failure::input)?;
            eprintln!(
                "token for {} written to {} (mode 0600)",
                claims.sub,
                path.display()
            );
        }
        None => outln!("{token}"),
    }
    eprintln!(
        "jti {} expires {exp}; revoke with `weft token revoke {} {}`",
        claims.jti,
        claims.jti,
        a.kube.flags(&a.state_dir)
    );
    Ok(())
}

fn revoke(a: RevokeArgs) -> CmdResult {
    if a.jti.len() != 32 || !a.jti.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::input(format!(
            "{:?} is not a token id; pass the 32-hex-digit jti that `weft token create` printed",
            a.jti
        )));
    }
    let jti = a.jti.to_lowercase();
    let fresh = if a.kube.kubernetes {
        a.kube.revoke(&jti)?
    } else {
        StateDir::open_existing(&a.state_dir)
            .map_err(Failure::input)?
            .revoke(&jti, None, OffsetDateTime::now_utc().unix_timestamp())
            .map_err(Failure::input)?
    };
    outln!(
        "token {} {}; every control-plane replica refuses it from its next request",
        a.jti,
        if fresh {
            "revoked"
        } else {
            "was already revoked"
        }
    );
    Ok(())
}
