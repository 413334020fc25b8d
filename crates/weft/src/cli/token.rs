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
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token id (jti) that `weft token create` printed
    pub jti: String,
    /// The control plane's state directory (holds the revocation list); never created here
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "weft-state")]
    pub state_dir: PathBuf,
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
    let state = StateDir::open_existing(&a.state_dir).map_err(Failure::input)?;
    let signer = TokenSigner::new(&state.token_key).map_err(Failure::input)?;
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
        "jti {} expires {exp}; revoke with `weft token revoke {} --state-dir {}`",
        claims.jti,
        claims.jti,
        a.state_dir.display()
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
    let state = StateDir::open_existing(&a.state_dir).map_err(Failure::input)?;
    let fresh = state
        .revoke(
            &a.jti.to_lowercase(),
            None,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
        .map_err(Failure::input)?;
    outln!(
        "token {} {}; the control plane refuses it from its next request",
        a.jti,
        if fresh {
            "revoked"
        } else {
            "was already revoked"
        }
    );
    Ok(())
}
