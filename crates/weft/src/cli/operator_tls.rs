//! The operator's TLS identity for every command that talks to an admin
//! listener: given `--operator-cert/--operator-key/--operator-ca` (or their
//! environment variables), [`super::http_request`] speaks TLS 1.3 to the
//! control plane's operator listener (`weft control-plane --operator-addr`),
//! presenting the operator's leaf and verifying the control plane's own
//! certificate against the anchors file. In Kubernetes mode a bearer token
//! (`--operator-token-file`, e.g. from `kubectl create token`) may stand in
//! for the certificate: it is sent as `Authorization: Bearer`, over TLS
//! only. Without any of them it speaks plain HTTP to the loopback admin
//! listener, as before.

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
    /// A Kubernetes bearer token (file) for a control plane's operator listener in --kubernetes mode, instead of a certificate: its user needs the weft-operator (or weft-operator-view) Role; needs --operator-ca
    #[arg(long, global = true, env = "WEFT_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
    /// The identity the control plane's certificate must name when no --operator-cert tells it (default: weft-identity.weft.serviceaccount.identity.weft.cluster.local)
    #[arg(long, global = true, env = "WEFT_OPERATOR_SERVER_NAME")]
    pub operator_server_name: Option<String>,
}

/// What a TLS admin request needs: the client config and the name the
/// control plane's certificate must carry.
pub struct OperatorTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Sent as `Authorization: Bearer` when given.
    token: Option<String>,
}

impl OperatorTls {
    /// The request header lines that authenticate the caller beyond TLS.
    pub fn auth_header(&self) -> String {
        self.token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default()
    }
}

static OPERATOR: OnceLock<OperatorTls> = OnceLock::new();

/// The operator TLS set up by [`install`], if any.
pub fn installed() -> Option<&'static OperatorTls> {
    OPERATOR.get()
}

/// Reads the operator's files once, at start: unreadable or mismatched
/// files are bad input (exit 2), never a silent fall-back to plain HTTP.
pub fn install(a: &OperatorArgs) -> Result<(), Failure> {
    let client = match (&a.operator_cert, &a.operator_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        (None, None) => None,
        _ => {
            return Err(Failure::input(
                "--operator-cert and --operator-key go together: the operator's leaf and its key (with --operator-ca, the trust anchors that verify the control plane, e.g. ca.crt)",
            ));
        }
    };
    let token = a.operator_token_file.as_deref();
    let ca = match (&a.operator_ca, client.is_some() || token.is_some()) {
        (None, false) if a.operator_server_name.is_none() => return Ok(()),
        (Some(ca), true) => ca,
        (Some(_), false) | (None, false) => {
            return Err(Failure::input(
                "--operator-ca and --operator-server-name go with --operator-cert/--operator-key or --operator-token-file: say how to authenticate to the operator listener",
            ));
        }
        (None, true) => {
            return Err(Failure::input(
                "--operator-cert/--operator-key and --operator-token-file need --operator-ca: the trust anchors that verify the control plane's certificate (e.g. ca.crt, or the linkerd-identity-trust-roots ConfigMap's ca-bundle.crt)",
            ));
        }
    };
    let token = token.map(read_token).transpose()?;
    let tls = load(client, ca, token, a.operator_server_name.as_deref())?;
    let _ = OPERATOR.set(tls);
    Ok(())
}

/// A bearer token from its file: one line of visible ASCII (a header value
/// that cannot smuggle another header).
fn read_token(path: &Path) -> Result<String, Failure> {
    let bad = |why: &str| {
        Failure::input(format!(
            "--operator-token-file {}: {why}; expected one token, e.g. from `kubectl create token NAME -n NAMESPACE > token`",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("the file is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "not one token: it holds spaces, line breaks or non-ASCII",
        ));
    }
    Ok(token.to_string())
}

fn load(
    client: Option<(&Path, &Path)>,
    ca: &Path,
    token: Option<String>,
    server_name: Option<&str>,
) -> Result<OperatorTls, Failure> {
    // File errors already name the path; the others are given it.
    let bad = |flag: &str, e: &dyn std::fmt::Display| Failure::input(format!("{flag}: {e}"));
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
    let builder = rustls::ClientConfig::builder_with_provider(pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Failure::fatal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let (config, mut name) = match client {
        Some((cert, key)) => {
            let (chain, key_der, own) = client_cert(cert, key)?;
            let control_plane =
                pki::Identity::control_plane(own.control_plane_ns(), own.trust_domain())
                    .map_err(|e| bad("--operator-cert", &e))?;
            let config = builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad("--operator-cert", &e))?;
            (config, control_plane.to_string())
        }
        None => {
            let control_plane = pki::Identity::control_plane(
                pki::identity::DEFAULT_CONTROL_PLANE_NS,
                pki::identity::DEFAULT_TRUST_DOMAIN,
            )
            .map_err(|e| bad("--operator-token-file", &e))?;
            (builder.with_no_client_auth(), control_plane.to_string())
        }
    };
    if let Some(n) = server_name {
        let id: pki::Identity = n.parse().map_err(|e| {
            bad(
                "--operator-server-name",
                &format!("{n:?}: {e}; expected the control plane's identity, e.g. {name}"),
            )
        })?;
        name = id.to_string();
    }
    let server_name = ServerName::try_from(name).map_err(|e| bad("--operator-server-name", &e))?;
    Ok(OperatorTls {
        config: Arc::new(config),
        server_name,
        token,
    })
}

type ClientCert = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    pki::Identity,
);

/// The operator's leaf, its key and the identity the leaf names.
fn client_cert(cert: &Path, key: &Path) -> Result<ClientCert, Failure> {
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
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    Ok((chain, key_der, own.identity))
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
        "error: {addr} speaks TLS: it is a control plane's operator listener (--operator-addr); pass --operator-cert F --operator-key F --operator-ca F (or WEFT_OPERATOR_CERT, WEFT_OPERATOR_KEY, WEFT_OPERATOR_CA), in Kubernetes mode --operator-token-file F --operator-ca F, or use the loopback admin listener"
    );
    std::process::exit(2)
}
