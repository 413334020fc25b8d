//! The operator's TLS identity for every command that talks to an admin
//! listener: given `--operator-cert/--operator-key/--operator-ca` (or their
//! environment variables), [`super::http_request`] speaks TLS 1.3 to the
//! control plane's operator listener (`weft control-plane --operator-addr`),
//! presenting the operator's leaf and verifying the control plane's own
//! certificate against the anchors file. Without them it speaks plain HTTP
//! to the loopback admin listener, as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use clap::Args;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::Failure;

/// Global flags: accepted by every command, used by those that reach an
/// admin listener (check, edges, identity, diagnostics, rotate).
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Operator client certificate (PEM, leaf first) for the control plane's operator listener (--operator-addr); switches admin requests to TLS; needs --operator-key and --operator-ca
    #[arg(long, global = true, env = "WEFT_OPERATOR_CERT")]
    pub operator_cert: Option<PathBuf>,
    /// The operator certificate's private key (PEM)
    #[arg(long, global = true, env = "WEFT_OPERATOR_KEY")]
    pub operator_key: Option<PathBuf>,
    /// Trust anchors (PEM) that verify the control plane's certificate on the operator listener, e.g. ca.crt
    #[arg(long, global = true, env = "WEFT_OPERATOR_CA")]
    pub operator_ca: Option<PathBuf>,
}

/// What a TLS admin request needs: the client config and the name the
/// control plane's certificate must carry.
pub struct OperatorTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

static OPERATOR: OnceLock<OperatorTls> = OnceLock::new();

/// The operator TLS set up by [`install`], if any.
pub fn installed() -> Option<&'static OperatorTls> {
    OPERATOR.get()
}

/// Reads the operator's files once, at start: unreadable or mismatched
/// files are bad input (exit 2), never a silent fall-back to plain HTTP.
pub fn install(a: &OperatorArgs) -> Result<(), Failure> {
    let (cert, key, ca) = match (&a.operator_cert, &a.operator_key, &a.operator_ca) {
        (None, None, None) => return Ok(()),
        (Some(c), Some(k), Some(ca)) => (c, k, ca),
        _ => {
            return Err(Failure::input(
                "--operator-cert, --operator-key and --operator-ca go together: the operator's leaf, its key, and the trust anchors that verify the control plane (e.g. ca.crt)",
            ));
        }
    };
    let tls = load(cert, key, ca)?;
    let _ = OPERATOR.set(tls);
    Ok(())
}

fn load(cert: &Path, key: &Path, ca: &Path) -> Result<OperatorTls, Failure> {
    // File errors already name the path; the others are given it.
    let bad = |flag: &str, e: &dyn std::fmt::Display| Failure::input(format!("{flag}: {e}"));
    let chain = pki::load_certs(cert).map_err(|e| bad("--operator-cert", &e))?;
    let key_pair = pki::load_key(key).map_err(|e| bad("--operator-key", &e))?;
    // The identity is read from the leaf in the one place weft reads it.
    let own = pki::CertInForce::new(
        &key_pair,
        chain.clone(),
        pki::identity::DEFAULT_CONTROL_PLANE_NS,
    )
    .map_err(|e| {
        bad(
            "--operator-cert",
            &format!(
                "{}: {e} (with --operator-key {})",
                cert.display(),
                key.display()
            ),
        )
    })?;
    let anchors = pki::load_certs(ca).map_err(|e| bad("--operator-ca", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a).map_err(|e| {
            bad(
                "--operator-ca",
                &format!("{}: not a usable trust anchor: {e}", ca.display()),
            )
        })?;
    }
    let control_plane =
        pki::Identity::control_plane(own.identity.control_plane_ns(), own.identity.trust_domain())
            .map_err(|e| bad("--operator-cert", &e))?;
    let server_name =
        ServerName::try_from(control_plane.to_string()).map_err(|e| bad("--operator-cert", &e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let config = rustls::ClientConfig::builder_with_provider(pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Failure::fatal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| bad("--operator-cert", &e))?;
    Ok(OperatorTls {
        config: Arc::new(config),
        server_name,
    })
}

/// One request over TLS on `tcp`: the raw response. A refused handshake is
/// a definite answer, not silence: it ends the command with the reason.
pub fn exchange(tls: &OperatorTls, tcp: std::net::TcpStream, request: &[u8]) -> Option<String> {
    use std::io::{Read, Write};
    let addr = tcp.peer_addr().ok()?;
    let conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone()).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let refused = |e: std::io::Error| -> ! {
        eprintln!(
            "error: the operator listener at {addr} refused the TLS handshake: {e}; check that --operator-cert is issued from the mesh's trust anchors, --operator-ca holds them, and the address is the control plane's --operator-addr"
        );
        std::process::exit(2)
    };
    if let Err(e) = s.write_all(request).and_then(|()| s.flush()) {
        refused(e);
    }
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        // A server that closes without close_notify after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) if buf.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => refused(e),
        Err(_) => return None,
    }
    String::from_utf8(buf).ok()
}

/// `addr` answered plain HTTP with TLS: it is an operator listener, which
/// no request without the operator's certificate can use; the command ends
/// saying so rather than "nothing answers".
pub fn speaks_tls(addr: &str) -> ! {
    eprintln!(
        "error: {addr} speaks TLS: it is a control plane's operator listener (--operator-addr); pass --operator-cert F --operator-key F --operator-ca F (or WEFT_OPERATOR_CERT, WEFT_OPERATOR_KEY, WEFT_OPERATOR_CA), or use the loopback admin listener"
    );
    std::process::exit(2)
}
