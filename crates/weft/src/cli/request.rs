//! `weft certs request`: a workload certificate from the identity service.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use std::sync::Arc;

use pki::files::{KEY_MODE, PUBLIC_MODE, write_atomic};
use tokio::sync::watch;

use super::{CmdResult, Failure};

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The identity to certify, e.g. web.demo.serviceaccount.identity.weft.cluster.local
    pub identity: String,
    /// Where to write the certificate and its chain (PEM)
    pub crt_file: PathBuf,
    /// Where to write the new private key (PKCS#8 PEM, mode 0600)
    pub key_file: PathBuf,
    /// The identity service, host:port (a DNS name is resolved when connecting; TLS still expects --control-plane-identity)
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = super::host_port)]
    pub control_plane: String,
    /// The control plane's identity (default: weft-identity in the identity's mesh)
    #[arg(long)]
    pub control_plane_identity: Option<String>,
    /// Trust anchors the control plane must chain to
    #[arg(long)]
    pub roots: PathBuf,
    /// A join token file from `weft token create`
    #[arg(long, required_unless_present = "renew_cert")]
    pub token_file: Option<PathBuf>,
    /// Renew with this still-valid certificate (mTLS) instead of a token
    #[arg(long, requires = "renew_key")]
    pub renew_cert: Option<PathBuf>,
    /// The key of --renew-cert (proves the identity over mTLS)
    #[arg(long, requires = "renew_cert")]
    pub renew_key: Option<PathBuf>,
    /// Replace existing output files
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: RequestArgs) -> CmdResult {
    let identity: pki::Identity = a.identity.parse().map_err(Failure::input)?;
    if !a.force {
        for p in [&a.crt_file, &a.key_file] {
            if p.symlink_metadata().is_ok() {
                return Err(Failure::input(format!(
                    "{}: already exists; pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::input(format!("{}: cannot read: {e}", p.display())))
    };
    let anchors_pem = read(&a.roots)?;
    pki::parse_certs(&a.roots, anchors_pem.as_bytes()).map_err(Failure::input)?;
    let trust = proxy::trust::Trust::new(None, &anchors_pem)
        .map_err(|e| Failure::input(format!("{}: {e}", a.roots.display())))?;
    let token = a.token_file.as_ref().map(read).transpose()?;
    let current = match (&a.renew_cert, &a.renew_key) {
        (Some(c), Some(k)) => {
            let chain = pki::load_certs(c).map_err(Failure::input)?;
            let key = pki::load_key(k).map_err(Failure::input)?;
            let cert = pki::CertInForce::new(&key, chain, identity.control_plane_ns())
                .map_err(|e| Failure::input(format!("{}: {e}", c.display())))?;
            Some(Arc::new(cert))
        }
        _ => None,
    };
    let server_name: pki::Identity = match a.control_plane_identity {
        Some(n) => n.parse().map_err(Failure::input)?,
        None => pki::Identity::control_plane(identity.control_plane_ns(), identity.trust_domain())
            .map_err(Failure::input)?,
    };
    let anchors = trust.anchors.clone();
    let (_keep_trust, trust_rx) = watch::channel(Arc::new(trust));
    let (_keep_own, own_rx) = watch::channel(current);
    let config = proxy::tls::control_config(trust_rx, own_rx).map_err(Failure::fatal)?;
    let timeout = Duration::from_secs(10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::fatal)?;
    let got = rt
        .block_on(async {
            let channel =
                proxy::certify::connect(&a.control_plane, &server_name, config, &anchors, timeout)
                    .await?;
            let token = token.as_deref().map(|t| t.trim().as_bytes());
            proxy::certify::certify(channel, &identity, token, &anchors, timeout).await
        })
        .map_err(Failure::fatal)?;
    write_atomic(
        &a.crt_file,
        pki::cert::to_pem(got.cert.chain()).as_bytes(),
        PUBLIC_MODE,
        a.force,
    )
    .map_err(Failure::input)?;
    write_atomic(
        &a.key_file,
        got.key.serialize_pem().as_bytes(),
        KEY_MODE,
        a.force,
    )
    .map_err(Failure::input)?;
    outln!(
        "{identity}: certificate {} saved in {} (valid until {}); key in {}",
        got.cert.serial,
        a.crt_file.display(),
        pki::info::rfc3339(got.cert.not_after),
        a.key_file.display()
    );
    Ok(())
}
