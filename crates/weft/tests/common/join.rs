//! Join tokens in Kubernetes mode: signed with the key of the Secret
//! weft-join-token-key (read once with kubectl as admin and kept in the
//! scratch directory, so a token can still be made while the API server is
//! down), as `weft token create` signs with the state directory's key.

use std::time::Duration;

use anyhow::{Context, Result};
use testbed::k8s::K8sEnv;

use super::Scratch;
use super::kube::kubectl;

const CACHED: &str = "join-token-key.pem";

/// The control plane's join-token signing key, from its Secret.
pub fn secret_key(env: &K8sEnv, s: &Scratch, cp_ns: &str) -> Result<rcgen::KeyPair> {
    if !s.path(CACHED).exists() {
        let b64 = kubectl(
            env,
            &[
                "get",
                "secret",
                "-n",
                cp_ns,
                "weft-join-token-key",
                "-o",
                r"jsonpath={.data.token-signing\.key}",
            ],
        )?;
        // The Secret's data is base64: decoded as a PEM body.
        let wrapped = format!("-----BEGIN KEY-----\n{}\n-----END KEY-----\n", b64.trim());
        let pem = pem::parse(wrapped).context("the Secret's key is not base64")?;
        s.write(CACHED, pem.contents());
    }
    rcgen::KeyPair::from_pem(&s.read(CACHED)).context("the Secret's key")
}

/// A join token for `ns/sa`, valid for an hour, written to `<sa>.token`;
/// its claims name its id (to revoke it).
pub fn join_token(
    env: &K8sEnv,
    s: &Scratch,
    cp_ns: &str,
    ns: &str,
    sa: &str,
) -> Result<(String, identity::token::Claims)> {
    let key = secret_key(env, s, cp_ns)?;
    let (token, claims) = identity::token::TokenSigner::new(&key)?.create(
        ns,
        sa,
        Duration::from_secs(3600),
        time::OffsetDateTime::now_utc(),
    )?;
    s.write(&format!("{sa}.token"), &token);
    Ok((token, claims))
}
