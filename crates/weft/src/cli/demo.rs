//! `weft demo`: the whole mesh on 127.0.0.1 in one process, no root: a
//! control plane with fresh development certificates, three workloads with
//! their proxies (ports mode), the guide's policy allowing only frontend to
//! call backend, and the requests that show it, with the evidence printed.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Args;
use pki::create::{KeySpec, NewCert, Profile, Signer, create};
use pki::files::{KEY_MODE, PUBLIC_MODE, write_atomic};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CmdResult, Failure, plain_http_get as http_get};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's directory (certificates, resources, state) afterwards
    #[arg(long)]
    pub keep: bool,
    /// Keep the mesh running until Ctrl-C and print commands to try against
    /// it (the development anchor key is kept too, so rotation can be practised)
    #[arg(long)]
    pub stay: bool,
}

/// What a staying demo prints commands against.
struct Running {
    cp_admin: SocketAddr,
    /// Backend's application port (its Server's).
    backend_app: u16,
    /// Frontend's proxy (its outbound listener to backend).
    frontend: u16,
}

/// A free port below the kernel's ephemeral range (32768 and up), so no
/// listener bound to port 0 meanwhile (the demo's own control plane, or any
/// other process) can take it before the proxy binds it.
fn free_port() -> Result<u16, Failure> {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Failure::fatal(
        "no free port on 127.0.0.1 between 20000 and 32000; free some and run the demo again",
    ))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    write_atomic(path, bytes, mode, true).map_err(Failure::fatal)
}

async fn wait_ready(name: &str, admin: SocketAddr) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tokio::task::spawn_blocking(move || http_get(&admin.to_string(), "/ready"))
            .await
            .ok()
            .flatten();
        match r {
            Some((200, _)) => return Ok(()),
            other if Instant::now() > deadline => {
                let why = other.map(|(_, b)| b).unwrap_or_else(|| "no answer".into());
                return Err(Failure::fatal(format!(
                    "{name} did not become ready within 20s: {}",
                    why.trim()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The tiny backend application: greets the caller the proxy vouched for.
async fn backend_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let line = req.lines().next().unwrap_or("").to_string();
            // The proxy vouches for the caller in l5d-client-id.
            let caller = req
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("l5d-client-id"))
                        .map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_else(|| "an unknown client".into());
            let body = format!("hello {caller}; you asked: {line}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// The guide's policy (step 12): backend's port serves frontend only. The
/// very manifests the tests use, with the Server's port set to the app's.
fn policy_yaml(port: u16) -> String {
    include_str!("../../tests/fixtures/guide/policy.yaml")
        .replace("port: 8080", &format!("port: {port}"))
}

/// GET /hello through a proxy's outbound listener: status line, the
/// `l5d-proxy-error` header if any, body.
async fn get_hello(addr: SocketAddr) -> Result<(String, Option<String>, String), Failure> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(Failure::fatal)?;
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        .await
        .map_err(Failure::fatal)?;
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp))
        .await
        .map_err(|_| Failure::fatal("no response from the backend within 10s"))?
        .map_err(Failure::fatal)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.lines().next().unwrap_or("(nothing)").to_string();
    let error = head.lines().find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("l5d-proxy-error"))
            .map(|(_, v)| v.trim().to_string())
    });
    Ok((status, error, body.trim().to_string()))
}

fn workload_yaml(name: &str, app_port: u16, proxy_port: u16) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: {name}
  namespace: demo
  labels:
    app: {name}
  annotations:
    config.linkerd.io/inbound-port: \"{proxy_port}\"
spec:
  meshTLS:
    identity: {name}.demo.serviceaccount.identity.weft.cluster.local
    serverName: {name}.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 127.0.0.1
  ports:
  - port: {app_port}
    name: http
"
    )
}

pub fn run(args: DemoArgs) -> CmdResult {
    // The demo's own output is the story; its logs default to warnings only.
    super::init_logging_or("warn");
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::fatal(format!("{}: {e}", dir.display())))?;
    let rt = tokio::runtime::Runtime::new().map_err(Failure::fatal)?;
    let result = rt.block_on(async {
        let running = demo(&dir, args.stay).await?;
        if args.stay {
            for line in next_steps(
                &dir,
                running.cp_admin,
                running.backend_app,
                running.frontend,
            ) {
                outln!("{line}");
            }
            stop_signal().await;
            outln!("\nstopping the demo mesh");
        }
        Ok(())
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    if args.keep {
        outln!("\nkept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Ctrl-C or SIGTERM, whichever comes first.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The commands a staying demo offers, each runnable as printed (lines that
/// start with "  $ ").
fn next_steps(dir: &Path, admin: SocketAddr, backend_app: u16, frontend: u16) -> Vec<String> {
    let p = |n: &str| shell_word(&dir.join(n).to_string_lossy());
    let files = format!(
        "--identity-trust-anchors-file {} --identity-issuer-certificate-file {}",
        p("ca.crt"),
        p("issuer.crt")
    );
    vec![
        String::new(),
        "The demo mesh keeps running until Ctrl-C. Try, in another terminal:".into(),
        "  # the identity files in force and every proxy of the fleet".into(),
        format!("  $ weft check {files} --proxy --admin-addr {admin}"),
        "  # the certificate chain backend's proxy serves right now".into(),
        format!("  $ weft identity backend -n demo --admin-addr {admin}"),
        "  # every hop the proxies saw, and whether it was mTLS (they report every 15 s)".into(),
        format!("  $ weft edges -n demo --admin-addr {admin}"),
        "  # the policy backend's proxy holds for its port, beside the demo's resources and their verdict"
            .into(),
        format!(
            "  $ weft diagnostics policy backend:{backend_app} -n demo --resources {} --from frontend.demo.serviceaccount.identity.weft.cluster.local --path /hello --admin-addr {admin}",
            p("resources")
        ),
        format!("  # the web view (proxies, edges, expiry), live: open http://{admin}/ui in a browser"),
        format!(
            "  # backend's requests as they happen, for 5 s (longer: --seconds); meanwhile `curl 127.0.0.1:{frontend}/hello` goes through frontend's proxy"
        ),
        format!("  $ weft tap backend -n demo --seconds 5 --admin-addr {admin}"),
        "  # rotate the issuer with zero failed requests: make one from the anchor, then install it"
            .into(),
        format!(
            "  $ weft certs create identity.linkerd.cluster.local {} {} --profile intermediate-ca --not-after 8760h --ca {} --ca-key {}",
            p("issuer-2.crt"),
            p("issuer-2.key"),
            p("ca.crt"),
            p("ca.key")
        ),
        format!(
            "  $ weft rotate issuer --cert {} --key {} {files} --identity-issuer-key-file {} --admin-addr {admin}",
            p("issuer-2.crt"),
            p("issuer-2.key"),
            p("issuer.key")
        ),
        format!("  $ weft check {files} --proxy --admin-addr {admin}"),
        "(Ctrl-C stops the demo mesh)".into(),
    ]
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

async fn demo(dir: &Path, keep_anchor_key: bool) -> Result<Running, Failure> {
    let now = OffsetDateTime::now_utc();
    outln!(
        "weft demo: three workloads on 127.0.0.1 talking over mutual TLS, one not allowed (ports mode, no root)"
    );
    outln!(
        "  DEVELOPMENT CERTIFICATES, NOT FOR PRODUCTION: a fresh anchor and issuer were made in {}\n",
        dir.display()
    );

    let make = |subject: &str, profile, signer: Option<&Signer>, days: i64| {
        create(
            &NewCert {
                subject: subject.into(),
                profile,
                sans: vec![],
                not_before: now,
                not_after: now + time::Duration::days(days),
                key: KeySpec::EcdsaP256,
            },
            signer,
        )
        .map_err(Failure::fatal)
    };
    let root = make("root.linkerd.cluster.local", Profile::RootCa, None, 3650)?;
    let root_pem = pki::cert::to_pem(std::slice::from_ref(&root.cert));
    let root_fp = pki::fingerprint(&root.cert);
    if keep_anchor_key {
        write(
            &dir.join("ca.key"),
            root.key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
    }
    let root = Signer::new(root.cert, root.key, "ca.crt", "ca.key").map_err(Failure::fatal)?;
    let issuer = make(
        "identity.linkerd.cluster.local",
        Profile::IntermediateCa,
        Some(&root),
        365,
    )?;
    let p = |n: &str| dir.join(n);
    write(&p("ca.crt"), root_pem.as_bytes(), PUBLIC_MODE)?;
    write(
        &p("issuer.crt"),
        pki::cert::to_pem(std::slice::from_ref(&issuer.cert)).as_bytes(),
        PUBLIC_MODE,
    )?;
    write(
        &p("issuer.key"),
        issuer.key.serialize_pem().as_bytes(),
        KEY_MODE,
    )?;
    outln!("trust anchor   CN=root.linkerd.cluster.local      sha256 {root_fp}");
    outln!(
        "issuer         CN=identity.linkerd.cluster.local  sha256 {}",
        pki::fingerprint(&issuer.cert)
    );

    let (be_app, be_in, fe_in, fe_out) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let (fe_app, in_app, in_in, in_out) = (free_port()?, free_port()?, free_port()?, free_port()?);
    std::fs::create_dir_all(p("resources")).map_err(Failure::fatal)?;
    let yaml = format!(
        "{}---\n{}---\n{}",
        workload_yaml("frontend", fe_app, fe_in),
        workload_yaml("backend", be_app, be_in),
        workload_yaml("intruder", in_app, in_in)
    );
    write(&p("resources/demo.yaml"), yaml.as_bytes(), PUBLIC_MODE)?;
    write(
        &p("resources/policy.yaml"),
        policy_yaml(be_app).as_bytes(),
        PUBLIC_MODE,
    )?;

    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let cp_cfg = control_plane::ControlPlaneConfig {
        issuer_files: Some(identity::IssuerFiles {
            anchors: p("ca.crt"),
            certificate: p("issuer.crt"),
            key: p("issuer.key"),
        }),
        issuance_lifetime: Duration::from_secs(24 * 3600),
        clock_skew: Duration::from_secs(20),
        trust_domain: pki::identity::DEFAULT_TRUST_DOMAIN.into(),
        controller_namespace: pki::identity::DEFAULT_CONTROL_PLANE_NS.into(),
        state_dir: p("state"),
        max_live_certificates: identity::record::DEFAULT_MAX_LIVE,
        resources: Some(p("resources")),
        kubernetes: None,
        identity_addr: local(0),
        destination_addr: local(0),
        policy_addr: local(0),
        plaintext_loopback: None,
        policy: policy::translate::PolicyDefaults {
            default_policy: policy::translate::parse_default("all-unauthenticated")
                .ok_or_else(|| Failure::fatal("default policy"))?,
            cluster_networks: vec![],
            control_plane_ns: pki::identity::DEFAULT_CONTROL_PLANE_NS.into(),
            trust_domain: pki::identity::DEFAULT_TRUST_DOMAIN.into(),
            detect_timeout: Duration::from_secs(10),
        },
        admin_addr: local(0),
        admin_limits: super::AdminLimitArgs::defaults(),
        operator: None,
        grpc_limits: super::GrpcLimitArgs::defaults()?,
        shutdown_grace: Duration::from_secs(1),
        reread_interval: Duration::from_secs(5),
        min_refresh: Duration::from_secs(10),
        certify_limits: super::control_plane::CertifyLimitArgs::defaults()?,
    };
    let (cp, cp_run) = control_plane::start(cp_cfg, std::future::pending())
        .await
        .map_err(Failure::fatal)?;
    tokio::spawn(cp_run);
    wait_ready("the control plane", cp.admin_addr).await?;
    outln!(
        "control plane  identity {}  destination {}",
        cp.identity_addr,
        cp.destination_addr
    );

    let state = identity::state::StateDir::open_or_init(&p("state")).map_err(Failure::fatal)?;
    let signer = identity::token::TokenSigner::new(&state.token_key).map_err(Failure::fatal)?;
    for name in ["frontend", "backend", "intruder"] {
        let (tok, _) = signer
            .create("demo", name, Duration::from_secs(3600), now)
            .map_err(Failure::fatal)?;
        write(&p(&format!("{name}.token")), tok.as_bytes(), KEY_MODE)?;
    }

    let app = tokio::net::TcpListener::bind(local(be_app))
        .await
        .map_err(Failure::fatal)?;
    tokio::spawn(backend_app(app));

    let (inbound_limits, outbound_limits) = super::ProxyLimitArgs::defaults()?;
    let proxy_cfg = |name: &str,
                     inbound: u16,
                     outbound: Vec<proxy::OutboundMapping>|
     -> Result<proxy::ProxyConfig, Failure> {
        Ok(proxy::ProxyConfig {
            workload: proxy::WorkloadRef {
                namespace: "demo".into(),
                name: name.into(),
                kind: proxy::WorkloadKind::External,
            },
            identity: pki::Identity::new(name, "demo", "weft", "cluster.local")
                .map_err(Failure::fatal)?,
            token_file: Some(p(&format!("{name}.token"))),
            identity_addr: cp.identity_addr.to_string(),
            destination_addr: cp.destination_addr.to_string(),
            policy_addr: cp.policy_addr.to_string(),
            control_plane_identity: pki::Identity::control_plane("weft", "cluster.local")
                .map_err(Failure::fatal)?,
            anchors_file: p("ca.crt"),
            inbound_addr: local(inbound),
            admin_addr: local(0),
            tap_addr: local(0),
            outbound_addr: None,
            outbound,
            detect_timeout: Duration::from_secs(1),
            discovery_timeout: Duration::from_secs(3),
            min_refresh: Duration::from_secs(10),
            plaintext: proxy::Plaintext::Deny,
            shutdown_grace: Duration::from_secs(1),
            admin_limits: super::AdminLimitArgs::defaults(),
            inbound_limits,
            outbound_limits,
            mesh_tls: pki::mesh_tls::MeshTls::default(),
        })
    };
    let (backend, be_run) =
        proxy::start(proxy_cfg("backend", be_in, vec![])?, std::future::pending())
            .await
            .map_err(Failure::fatal)?;
    tokio::spawn(be_run);
    let mapping: proxy::OutboundMapping = format!("127.0.0.1:{fe_out}=demo/backend:{be_app}")
        .parse()
        .map_err(Failure::fatal)?;
    let (frontend, fe_run) = proxy::start(
        proxy_cfg("frontend", fe_in, vec![mapping])?,
        std::future::pending(),
    )
    .await
    .map_err(Failure::fatal)?;
    tokio::spawn(fe_run);
    let mapping: proxy::OutboundMapping = format!("127.0.0.1:{in_out}=demo/backend:{be_app}")
        .parse()
        .map_err(Failure::fatal)?;
    let (intruder, in_run) = proxy::start(
        proxy_cfg("intruder", in_in, vec![mapping])?,
        std::future::pending(),
    )
    .await
    .map_err(Failure::fatal)?;
    tokio::spawn(in_run);
    wait_ready("the backend proxy", backend.admin_addr).await?;
    wait_ready("the frontend proxy", frontend.admin_addr).await?;
    wait_ready("the intruder proxy", intruder.admin_addr).await?;
    for (name, started) in [
        ("frontend", &frontend),
        ("backend", &backend),
        ("intruder", &intruder),
    ] {
        let cert = started.cert.borrow().clone();
        if let Some(c) = cert {
            outln!(
                "{name:<14} {name}.demo.serviceaccount.identity.weft.cluster.local  certificate {} until {}",
                c.serial,
                pki::info::rfc3339(c.not_after)
            );
        }
    }

    outln!(
        "\nfrontend app -> 127.0.0.1:{fe_out} (frontend proxy) == mTLS ==> 127.0.0.1:{be_in} (backend proxy) -> backend app 127.0.0.1:{be_app}"
    );
    outln!(
        "policy: Server backend-server (port {be_app}) + AuthorizationPolicy backend-allow-frontend: only frontend may call backend"
    );
    let (status, _, body) = get_hello(local(fe_out)).await?;
    if !status.contains(" 200 ") {
        return Err(Failure::fatal(format!("the request failed: {status}")));
    }
    outln!("frontend GET /hello  {status}: {body:?}");
    let (status, error, _) = get_hello(local(in_out)).await?;
    if !status.contains(" 403 ") {
        return Err(Failure::fatal(format!(
            "the intruder was not refused: {status}"
        )));
    }
    outln!(
        "intruder GET /hello  {status}  l5d-proxy-error: {}",
        error.unwrap_or_default()
    );

    let admin = backend.admin_addr;
    let metrics = tokio::task::spawn_blocking(move || http_get(&admin.to_string(), "/metrics"))
        .await
        .ok()
        .flatten()
        .map(|(_, b)| b)
        .unwrap_or_default();
    let seen = metrics
        .lines()
        .find(|l| {
            l.starts_with("tcp_open_total{")
                && l.contains("direction=\"inbound\"")
                && l.contains("client_id=\"frontend.")
        })
        .ok_or_else(|| Failure::fatal("the backend proxy recorded no inbound connection"))?;
    let label = |k: &str| {
        seen.split(&format!("{k}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    outln!(
        "backend proxy saw: tls={} client_id={} protocol={} target_port={}",
        label("tls"),
        label("client_id"),
        label("protocol"),
        label("target_port")
    );
    if label("protocol") == "h2" {
        outln!(
            "  (the frontend proxy carries HTTP/1 requests to the backend proxy over one pooled HTTP/2 connection)"
        );
    }
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("inbound_http_authz_"))
    {
        outln!("  {l}");
    }
    Ok(Running {
        cp_admin: cp.admin_addr,
        backend_app: be_app,
        frontend: fe_out,
    })
}
