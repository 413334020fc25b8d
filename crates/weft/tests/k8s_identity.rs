//! Identity in Kubernetes mode, against a real API server: the real
//! `weft control-plane --kubernetes` runs in the cp network namespace as
//! ServiceAccount weft-identity bound to the shipped rbac.yaml (not admin,
//! so a missing permission fails here), with a fresh namespace as its
//! controller namespace. Pods prove who they are with TokenRequest tokens
//! (TokenReview); the issuer comes from a Secret and the anchors from a
//! ConfigMap, judged as a pair, refusals recorded as Events.
//!
//! Needs root and the Kubernetes test binaries (WEFT_REQUIRE_ROOT=1
//! WEFT_REQUIRE_K8S=1 to fail rather than skip without them).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::certify::{csr_der, dns};
use common::proc::{Proc, http_get, metric_sum};
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use pki::create::{KeySpec, NewCert, Profile, Signer, create};
use serde_json::json;
use testbed::k8s::api::{self, BoundTo, DEADLINE, poll};
use testbed::k8s::k8s_openapi::ByteString;
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use testbed::k8s::k8s_openapi::api::events::v1::Event;
use testbed::k8s::kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use testbed::k8s::{K8sEnv, NetnsConnector};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const AUDIENCE: &str = "identity.l5d.io";
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
const ISSUER_SECRET: &str = "linkerd-identity-issuer";
const TRUST_ROOTS: &str = "linkerd-identity-trust-roots";

async fn env(test: &'static str) -> Option<Arc<K8sEnv>> {
    tokio::task::spawn_blocking(move || K8sEnv::shared(test))
        .await
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A CA made in-process: its certificate and a signer for what it issues.
struct Ca {
    pem: String,
    der: Vec<u8>,
    key_pem: String,
    signer: Signer,
}

fn ca(name: &str, parent: Option<&Ca>, days: (i64, i64)) -> Ca {
    let now = time::OffsetDateTime::now_utc();
    let c = create(
        &NewCert {
            subject: name.into(),
            profile: if parent.is_some() {
                Profile::IntermediateCa
            } else {
                Profile::RootCa
            },
            sans: vec![],
            not_before: now + time::Duration::days(days.0),
            not_after: now + time::Duration::days(days.1),
            key: KeySpec::EcdsaP256,
        },
        parent.map(|p| &p.signer),
    )
    .expect("create a CA");
    let pem = pki::cert::to_pem(std::slice::from_ref(&c.cert));
    let key_pem = c.key.serialize_pem();
    Ca {
        der: c.cert.to_vec(),
        signer: Signer::new(c.cert, c.key, name, name).expect("signer"),
        pem,
        key_pem,
    }
}

/// The identity names of this mesh (controller namespace `cp`).
struct Mesh {
    cp: String,
}

impl Mesh {
    fn id(&self, sa: &str, ns: &str) -> String {
        format!(
            "{sa}.{ns}.serviceaccount.identity.{}.cluster.local",
            self.cp
        )
    }
}

/// The running control plane and how to reach it inside the cp namespace.
struct Cp {
    proc: Proc,
    netns: String,
    identity: SocketAddr,
    admin: SocketAddr,
    server_name: String,
    anchors: String,
}

impl Cp {
    /// One Certify for `identity` with `token`, over a new connection.
    async fn certify(&self, identity: &str, token: &str) -> Result<CertifyResponse, tonic::Status> {
        let key = rcgen::KeyPair::generate().expect("key");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.anchors))
            .domain_name(&self.server_name);
        let ch = Endpoint::from_shared(format!("https://{}", self.identity))
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .connect_with_connector(NetnsConnector::new(&self.netns))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
        IdentityClient::new(ch)
            .certify(CertifyRequest {
                identity: identity.into(),
                token: token.as_bytes().to_vec(),
                certificate_signing_request: csr_der(&key, Some(identity), vec![dns(identity)]),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn metrics(&self) -> Result<String> {
        let addr = self.admin;
        let (code, body) = tokio::task::spawn_blocking({
            let ns = self.netns.clone();
            move || testbed::in_ns(&ns, move || http_get(addr, "/metrics"))
        })
        .await???;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    async fn reloads(&self, result: &str) -> Result<f64> {
        let label = format!("result=\"{result}\"");
        Ok(metric_sum(
            &self.metrics().await?,
            "issuer_reloads_total",
            &[&label],
        ))
    }

    /// Polls until `issuer_reloads_total{result}` passes `before`.
    async fn reload_counted(&self, result: &str, before: f64) -> Result<f64> {
        poll(
            &format!("issuer_reloads_total{{result=\"{result}\"}} above {before}"),
            DEADLINE,
            || async {
                let n = self.reloads(result).await?;
                Ok((n > before).then_some(n))
            },
        )
        .await
        .with_context(|| self.proc.output())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_identity_service_account_tokens_and_the_issuer_secret() -> Result<()> {
    let Some(env) = env("kubernetes_identity_service_account_tokens_and_the_issuer_secret").await
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let admin = env.client()?;
    let cp_ns = api::namespace(&admin, "weft-cp").await?;
    let app = api::namespace(&admin, "app").await?;
    let mesh = Mesh { cp: cp_ns.clone() };
    let scratch = common::Scratch::new();

    let root = ca("root-a", None, (-1, 3650));
    let issuer1 = ca("issuer-1", Some(&root), (-1, 365));
    put_trust_roots(&admin, &cp_ns, &root.pem, true).await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &cp_ns);
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "kubernetes.io/tls",
                &[
                    ("tls.crt", issuer1.pem.as_str()),
                    ("tls.key", issuer1.key_pem.as_str()),
                    ("ca.crt", root.pem.as_str()),
                ],
            ),
        )
        .await?;

    let kubeconfig = least_privilege_kubeconfig(&env, &admin, &cp_ns, &scratch).await?;
    let cp = start_control_plane(&env, &cp_ns, &kubeconfig, &scratch, &root.pem)?;
    let t0 = Instant::now();
    poll("the issuer from the Secret in force", DEADLINE, || async {
        let n = cp.reloads("ok").await?;
        Ok((n >= 1.0).then_some(()))
    })
    .await
    .with_context(|| cp.proc.output())?;
    println!(
        "control plane up as weft-identity (RBAC of rbac.yaml); issuer from Secret in force after {:.1?}",
        t0.elapsed()
    );

    service_account_tokens(&admin, &cp, &mesh, &app, &scratch, &issuer1).await?;
    let issuer2 = issuer_secret_refusals(&admin, &cp, &mesh, &app, &cp_ns, &root, &issuer1).await?;
    trust_roots_append_and_remove(&admin, &cp, &mesh, &app, &cp_ns, &root, &issuer2).await?;
    Ok(())
}

fn secret(type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(ISSUER_SECRET.into()),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

async fn put_trust_roots(
    client: &testbed::k8s::kube::Client,
    ns: &str,
    pem: &str,
    create: bool,
) -> Result<()> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_ROOTS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ca-bundle.crt".to_string(),
            pem.to_string(),
        )])),
        ..Default::default()
    };
    if create {
        cms.create(&PostParams::default(), &cm).await?;
    } else {
        let mut cur = cms.get(TRUST_ROOTS).await?;
        cur.data = cm.data;
        cms.replace(TRUST_ROOTS, &PostParams::default(), &cur)
            .await?;
    }
    Ok(())
}

/// Replaces the issuer Secret's data (its type stays).
async fn put_issuer(
    client: &testbed::k8s::kube::Client,
    ns: &str,
    data: &[(&str, &str)],
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut cur = secrets.get(ISSUER_SECRET).await?;
    cur.data = secret("", data).data;
    secrets
        .replace(ISSUER_SECRET, &PostParams::default(), &cur)
        .await?;
    Ok(())
}

/// Applies the shipped RBAC with `cp_ns` for `weft`, and a kubeconfig with
/// a token of its ServiceAccount.
async fn least_privilege_kubeconfig(
    env: &K8sEnv,
    admin: &testbed::k8s::kube::Client,
    cp_ns: &str,
    scratch: &common::Scratch,
) -> Result<std::path::PathBuf> {
    let rbac = control_plane::k8s_manifests::RBAC
        .replace("namespace: weft\n", &format!("namespace: {cp_ns}\n"));
    ensure!(
        !rbac.contains("namespace: weft\n"),
        "rbac.yaml names namespace weft in another form"
    );
    let file = scratch.write("rbac.yaml", &rbac);
    testbed::run(env.kubectl().args(["apply", "-f"]).arg(&file))?;
    let token = api::token(
        admin,
        cp_ns,
        "weft-identity",
        API_AUDIENCE,
        None,
        Duration::from_secs(7200),
    )
    .await?;
    let server = env.config().cluster_url.to_string();
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server.trim_end_matches('/'),
            "certificate-authority": env.ca_file()}}],
        "users": [{"name": "weft-identity", "user": {"token": token}}],
        "contexts": [{"name": "weft", "context": {"cluster": "test", "user": "weft-identity", "namespace": cp_ns}}],
        "current-context": "weft",
    });
    let path = scratch.write("weft-identity.kubeconfig", serde_json::to_vec_pretty(&kc)?);
    // Not admin: it may not list the namespace's Secrets without a name.
    let denied = env
        .cp_cmd(env.bins().path("kubectl"))
        .args(["--kubeconfig"])
        .arg(&path)
        .args(["get", "secrets", "-n", cp_ns])
        .output()?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "weft-identity may list every Secret: {}",
        String::from_utf8_lossy(&denied.stderr)
    );
    Ok(path)
}

fn start_control_plane(
    env: &K8sEnv,
    cp_ns: &str,
    kubeconfig: &std::path::Path,
    scratch: &common::Scratch,
    anchors: &str,
) -> Result<Cp> {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(scratch.dir.path()).args([
        "control-plane",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().context("kubeconfig path")?,
        "--controller-namespace",
        cp_ns,
        "--cluster-networks",
        "10.10.0.0/24,10.96.0.0/16",
        "--state-dir",
        "state",
        "--identity-addr",
        "127.0.0.1:0",
        "--destination-addr",
        "127.0.0.1:0",
        "--policy-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--reread-interval",
        "5s",
    ]);
    let proc = Proc::spawn_cmd(cmd);
    let identity = proc.addr("identity listening on");
    let admin = proc.addr("admin listening on");
    Ok(Cp {
        netns: env.cp().ns.clone(),
        identity,
        admin,
        server_name: format!("weft-identity.{cp_ns}.serviceaccount.identity.{cp_ns}.cluster.local"),
        anchors: anchors.to_string(),
        proc,
    })
}

async fn pod(
    client: &testbed::k8s::kube::Client,
    ns: &str,
    name: &str,
    sa: &str,
) -> Result<BoundTo> {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    }))?;
    let made = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await?;
    Ok(BoundTo {
        kind: "Pod",
        name: name.into(),
        uid: made.metadata.uid.context("pod without uid")?,
    })
}

fn refused(
    r: Result<CertifyResponse, tonic::Status>,
    code: Code,
    needle: &str,
    case: &str,
) -> Result<()> {
    match r {
        Ok(_) => bail!("{case}: certified"),
        Err(s) => {
            ensure!(
                s.code() == code && s.message().contains(needle),
                "{case}: {:?} {:?}, want {code:?} with {needle:?}",
                s.code(),
                s.message()
            );
            println!("{case}: {:?}: {}", s.code(), s.message());
            Ok(())
        }
    }
}

fn leaf_identity(r: &CertifyResponse, cp_ns: &str) -> Result<String> {
    let leaf = pki::CertificateDer::from(r.leaf_certificate.clone());
    Ok(pki::peer_identity_in(&leaf, cp_ns)?.to_string())
}

/// TokenRequest tokens bound to a pod: a leaf for that identity; refusals
/// for another audience, another identity, a deleted pod, garbage. A join
/// token still works (ExternalWorkloads).
async fn service_account_tokens(
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    scratch: &common::Scratch,
    issuer: &Ca,
) -> Result<()> {
    api::service_account(admin, app, "web").await?;
    api::service_account(admin, app, "other").await?;
    let web = pod(admin, app, "web-1", "web").await?;
    let hour = Duration::from_secs(3600);
    let token = api::token(admin, app, "web", AUDIENCE, Some(web.clone()), hour).await?;
    let t0 = Instant::now();
    // The identity listener serves once the control plane has certified itself.
    let leaf = poll("the first Certify with a pod's token", DEADLINE, || async {
        Ok(cp.certify(&mesh.id("web", app), &token).await.ok())
    })
    .await
    .with_context(|| cp.proc.output())?;
    ensure!(
        leaf_identity(&leaf, &mesh.cp)? == mesh.id("web", app),
        "the leaf names {}",
        leaf_identity(&leaf, &mesh.cp)?
    );
    ensure!(
        leaf.intermediate_certificates.first() == Some(&issuer.der),
        "not issued by the issuer Secret's certificate"
    );
    println!(
        "pod-bound ServiceAccount token: leaf for {} in {:.1?} (TokenReview + pod lookup)",
        mesh.id("web", app),
        t0.elapsed()
    );

    let other_aud = api::token(admin, app, "web", "other.example", Some(web.clone()), hour).await?;
    refused(
        cp.certify(&mesh.id("web", app), &other_aud).await,
        Code::Unauthenticated,
        "other.example",
        "another audience",
    )?;
    refused(
        cp.certify(&mesh.id("other", app), &token).await,
        Code::PermissionDenied,
        &format!("the proof is for {}", mesh.id("web", app)),
        "another ServiceAccount's identity",
    )?;
    refused(
        cp.certify(&mesh.id("web", app), "garbage").await,
        Code::Unauthenticated,
        "not a JWT",
        "a garbage token",
    )?;

    let doomed = pod(admin, app, "web-2", "web").await?;
    let doomed_token = api::token(admin, app, "web", AUDIENCE, Some(doomed.clone()), hour).await?;
    cp.certify(&mesh.id("web", app), &doomed_token)
        .await
        .context("the doomed pod's token before deletion")?;
    Api::<Pod>::namespaced(admin.clone(), app)
        .delete(&doomed.name, &DeleteParams::default().grace_period(0))
        .await?;
    let t0 = Instant::now();
    let status = poll(
        "Certify refuses the token of a deleted pod, saying so",
        DEADLINE,
        || async {
            match cp.certify(&mesh.id("web", app), &doomed_token).await {
                Err(s) if s.message().contains("no longer exists") => Ok(Some(s)),
                Err(s) => bail!("{:?}: {}", s.code(), s.message()),
                Ok(_) => bail!("still certified"),
            }
        },
    )
    .await?;
    println!(
        "pod {} deleted: its token refused after {:.1?}",
        doomed.name,
        t0.elapsed()
    );
    refused(
        Err(status),
        Code::Unauthenticated,
        "no longer exists",
        "a token whose pod was deleted",
    )?;

    // ExternalWorkloads keep their join tokens.
    scratch
        .weft(&[
            "token",
            "create",
            "-n",
            app,
            "--service-account",
            "ext",
            "--state-dir",
            "state",
            "--out",
            "ext.token",
        ])
        .ok();
    let join = scratch.read("ext.token");
    let r = cp
        .certify(&mesh.id("ext", app), &join)
        .await
        .context("join token")?;
    ensure!(leaf_identity(&r, &mesh.cp)? == mesh.id("ext", app));
    println!(
        "join token (ExternalWorkload): leaf for {}",
        mesh.id("ext", app)
    );
    Ok(())
}

/// Lists the IssuerRefused Events on `name` whose note contains `needle`.
async fn refusal_event(
    client: &testbed::k8s::kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    needle: &str,
) -> Result<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    poll(
        &format!("an IssuerRefused Event on {kind} {name} saying {needle:?}"),
        DEADLINE,
        || async {
            Ok(events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .find_map(|e| {
                    let r = e.regarding.clone().unwrap_or_default();
                    let note = e.note.clone().unwrap_or_default();
                    (e.reason.as_deref() == Some("IssuerRefused")
                        && r.kind.as_deref() == Some(kind)
                        && r.name.as_deref() == Some(name)
                        && note.contains(needle))
                    .then_some(note)
                }))
        },
    )
    .await
}

/// The issuer in force signs: a Certify's chain starts with `issuer`.
async fn serving(
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    admin: &testbed::k8s::kube::Client,
    issuer: &Ca,
) -> Result<bool> {
    let pod = Api::<Pod>::namespaced(admin.clone(), app)
        .get("web-1")
        .await?;
    let token = api::token(
        admin,
        app,
        "web",
        AUDIENCE,
        Some(BoundTo {
            kind: "Pod",
            name: "web-1".into(),
            uid: pod.metadata.uid.unwrap_or_default(),
        }),
        Duration::from_secs(3600),
    )
    .await?;
    let r = cp.certify(&mesh.id("web", app), &token).await?;
    Ok(r.intermediate_certificates.first() == Some(&issuer.der))
}

/// Foreign, expired, key-mismatched and missing-key Secrets are refused
/// (the old issuer keeps serving, metric and Event); a good one is taken.
async fn issuer_secret_refusals(
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    cp_ns: &str,
    root: &Ca,
    issuer1: &Ca,
) -> Result<Ca> {
    let other_root = ca("root-b", None, (-1, 3650));
    let foreign = ca("issuer-foreign", Some(&other_root), (-1, 365));
    let expired = ca("issuer-expired", Some(root), (-10, -1));
    let stranger = ca("issuer-stranger", Some(root), (-1, 365));
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "a foreign issuer",
            "untrusted",
            foreign.pem.as_str(),
            foreign.key_pem.as_str(),
        ),
        (
            "an expired issuer",
            "expired",
            expired.pem.as_str(),
            expired.key_pem.as_str(),
        ),
        (
            "a key-mismatched pair",
            "key_mismatch",
            issuer1.pem.as_str(),
            stranger.key_pem.as_str(),
        ),
    ];
    for (case, label, crt, key) in cases {
        let before = cp.reloads(label).await?;
        put_issuer(
            admin,
            cp_ns,
            &[
                ("tls.crt", crt),
                ("tls.key", key),
                ("ca.crt", root.pem.as_str()),
            ],
        )
        .await?;
        let t0 = Instant::now();
        cp.reload_counted(label, before).await?;
        let note =
            refusal_event(admin, cp_ns, "Secret", ISSUER_SECRET, &format!("({label})")).await?;
        ensure!(
            serving(cp, mesh, app, admin, issuer1).await?,
            "{case}: the old issuer no longer serves"
        );
        println!(
            "{case}: refused after {:.1?}, issuer_reloads_total{{result=\"{label}\"}} moved, old issuer serving; Event: {note}",
            t0.elapsed()
        );
    }

    // Missing keys: an Opaque Secret with only crt.pem (a Secret's type is immutable: recreate it).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), cp_ns);
    let before = cp.reloads("missing_key").await?;
    secrets
        .delete(ISSUER_SECRET, &DeleteParams::default())
        .await?;
    poll("the issuer Secret is gone", DEADLINE, || async {
        Ok(secrets
            .get_opt(ISSUER_SECRET)
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    secrets
        .create(
            &PostParams::default(),
            &secret("Opaque", &[("crt.pem", issuer1.pem.as_str())]),
        )
        .await?;
    cp.reload_counted("missing_key", before).await?;
    let want = format!("Secret {cp_ns}/{ISSUER_SECRET} has no key key.pem");
    let line = cp.proc.wait_for_line(&want, DEADLINE);
    ensure!(
        line.contains("crt.pem and key.pem") && line.contains("tls.crt and tls.key"),
        "the log line does not name the shapes: {line}"
    );
    let note = refusal_event(admin, cp_ns, "Secret", ISSUER_SECRET, &want).await?;
    ensure!(
        serving(cp, mesh, app, admin, issuer1).await?,
        "missing key: the old issuer no longer serves"
    );
    println!("missing key: refused, old issuer serving; log: {line}\n  Event: {note}");

    // A good new issuer, Linkerd's shape, is taken promptly.
    let issuer2 = ca("issuer-2", Some(root), (-1, 365));
    let ok_before = cp.reloads("ok").await?;
    put_issuer(
        admin,
        cp_ns,
        &[
            ("crt.pem", issuer2.pem.as_str()),
            ("key.pem", issuer2.key_pem.as_str()),
        ],
    )
    .await?;
    let t0 = Instant::now();
    poll("Certify chains to the new issuer", DEADLINE, || async {
        Ok(serving(cp, mesh, app, admin, &issuer2).await?.then_some(()))
    })
    .await?;
    let taken = t0.elapsed();
    ensure!(
        cp.reloads("ok").await? > ok_before,
        "issuer_reloads_total{{result=\"ok\"}} did not move"
    );
    println!(
        "timing: a good new issuer (linkerd.io/tls shape) taken {taken:.1?} after the Secret update"
    );
    Ok(issuer2)
}

/// Appending an anchor is taken (pushed like the file bundle); removing the
/// anchor the issuer chains to is refused, with an Event on the ConfigMap.
async fn trust_roots_append_and_remove(
    admin: &testbed::k8s::kube::Client,
    cp: &Cp,
    mesh: &Mesh,
    app: &str,
    cp_ns: &str,
    root: &Ca,
    issuer: &Ca,
) -> Result<()> {
    let anchors = |body: &str| {
        body.lines()
            .filter(|l| l.starts_with("identity_trust_anchor_expiration_timestamp_seconds{"))
            .count()
    };
    let next = ca("root-c", None, (-1, 3650));
    let before = cp.reloads("ok").await?;
    put_trust_roots(admin, cp_ns, &format!("{}{}", root.pem, next.pem), false).await?;
    let t0 = Instant::now();
    cp.reload_counted("ok", before).await?;
    let n = anchors(&cp.metrics().await?);
    ensure!(n == 2, "{n} anchors in force after the append, want 2");
    ensure!(
        serving(cp, mesh, app, admin, issuer).await?,
        "append: the issuer no longer serves"
    );
    println!(
        "trust roots: anchor appended, in force after {:.1?} (2 anchors)",
        t0.elapsed()
    );

    let before = cp.reloads("untrusted").await?;
    put_trust_roots(admin, cp_ns, &next.pem, false).await?;
    cp.reload_counted("untrusted", before).await?;
    let note = refusal_event(admin, cp_ns, "ConfigMap", TRUST_ROOTS, "(untrusted)").await?;
    let n = anchors(&cp.metrics().await?);
    ensure!(
        n == 2,
        "{n} anchors in force after the refused removal, want 2"
    );
    ensure!(
        serving(cp, mesh, app, admin, issuer).await?,
        "orphaning removal: the issuer no longer serves"
    );
    println!("trust roots: removing the issuer's anchor refused, 2 anchors kept; Event: {note}");

    let before = cp.reloads("ok").await?;
    put_trust_roots(admin, cp_ns, &root.pem, false).await?;
    cp.reload_counted("ok", before).await?;
    let n = anchors(&cp.metrics().await?);
    ensure!(
        n == 1,
        "{n} anchors in force after removing the unused anchor, want 1"
    );
    println!("trust roots: removing the unused anchor taken (1 anchor)");
    Ok(())
}
