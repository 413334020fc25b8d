//! Support for the Kubernetes identity test: in-process CAs, the issuer
//! Secret and trust-roots ConfigMap, the control plane run as weft-identity
//! under the shipped RBAC, and clients reaching it inside the cp namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};
use pki::create::{KeySpec, NewCert, Profile, Signer, create};
use serde_json::json;
use testbed::k8s::api::{self, BoundTo, DEADLINE, poll};
use testbed::k8s::k8s_openapi::ByteString;
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use testbed::k8s::k8s_openapi::api::events::v1::Event;
use testbed::k8s::kube::api::{Api, ObjectMeta, PostParams};
use testbed::k8s::{K8sEnv, NetnsConnector};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::common;
use crate::common::certify::{csr_der, dns};
use crate::common::proc::{Proc, http_get, metric_sum};

pub const AUDIENCE: &str = "identity.l5d.io";
pub const ISSUER_SECRET: &str = "linkerd-identity-issuer";
pub const TRUST_ROOTS: &str = "linkerd-identity-trust-roots";

pub async fn env(test: &'static str) -> Option<Arc<K8sEnv>> {
    tokio::task::spawn_blocking(move || K8sEnv::shared(test))
        .await
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A CA made in-process: its certificate and a signer for what it issues.
pub struct Ca {
    pub pem: String,
    pub der: Vec<u8>,
    pub key_pem: String,
    pub signer: Signer,
}

pub fn ca(name: &str, parent: Option<&Ca>, days: (i64, i64)) -> Ca {
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
pub struct Mesh {
    pub cp: String,
}

impl Mesh {
    pub fn id(&self, sa: &str, ns: &str) -> String {
        format!(
            "{sa}.{ns}.serviceaccount.identity.{}.cluster.local",
            self.cp
        )
    }
}

/// The running control plane and how to reach it inside the cp namespace.
pub struct Cp {
    pub proc: Proc,
    pub netns: String,
    pub identity: SocketAddr,
    pub destination: SocketAddr,
    pub admin: SocketAddr,
    pub server_name: String,
    pub anchors: String,
}

impl Cp {
    /// A TLS channel to `addr` (inside the cp namespace), verifying the
    /// control plane's identity, presenting `client` (chain, key PEM).
    pub async fn channel(
        &self,
        addr: SocketAddr,
        client: Option<(String, String)>,
    ) -> Result<tonic::transport::Channel, tonic::Status> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.anchors))
            .domain_name(&self.server_name);
        if let Some((chain, key)) = client {
            tls = tls.identity(tonic::transport::Identity::from_pem(chain, key));
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?
            .connect_with_connector(NetnsConnector::new(&self.netns))
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))
    }

    /// One Certify for `identity` with `token`, over a new connection.
    pub async fn certify(
        &self,
        identity: &str,
        token: &str,
    ) -> Result<CertifyResponse, tonic::Status> {
        let key = rcgen::KeyPair::generate().expect("key");
        self.certify_with(identity, token, &key).await
    }

    pub async fn certify_with(
        &self,
        identity: &str,
        token: &str,
        key: &rcgen::KeyPair,
    ) -> Result<CertifyResponse, tonic::Status> {
        IdentityClient::new(self.channel(self.identity, None).await?)
            .certify(CertifyRequest {
                identity: identity.into(),
                token: token.as_bytes().to_vec(),
                certificate_signing_request: csr_der(key, Some(identity), vec![dns(identity)]),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Holds a weft.mesh.v1 stream as a proxy certified as `identity` would;
    /// the bundles pushed on it arrive on the returned receiver.
    pub async fn attach(&self, identity: &str, workload: &str, token: &str) -> Result<MeshStream> {
        use mesh_api::v1::mesh_client::MeshClient;
        use mesh_api::v1::{ProxyReport, control_message};
        let key = rcgen::KeyPair::generate()?;
        let leaf = self.certify_with(identity, token, &key).await?;
        let mut chain = vec![common::certify::rustls_pem(
            "CERTIFICATE",
            &leaf.leaf_certificate,
        )];
        chain.extend(
            leaf.intermediate_certificates
                .iter()
                .map(|c| common::certify::rustls_pem("CERTIFICATE", c)),
        );
        let ch = self
            .channel(
                self.destination,
                Some((chain.concat(), key.serialize_pem())),
            )
            .await?;
        let (reports, rx) = tokio::sync::mpsc::channel(4);
        reports
            .send(ProxyReport {
                identity: identity.into(),
                workload: workload.into(),
                ..Default::default()
            })
            .await?;
        let mut answers = MeshClient::new(ch)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (tx, bundles) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(async move {
            while let Ok(Some(m)) = answers.message().await {
                if let Some(control_message::Kind::Bundle(b)) = m.kind {
                    tx.send_replace(Some(b.pem));
                }
            }
        });
        Ok(MeshStream {
            bundles,
            _reports: reports,
            task,
        })
    }

    pub async fn metrics(&self) -> Result<String> {
        let addr = self.admin;
        let (code, body) = tokio::task::spawn_blocking({
            let ns = self.netns.clone();
            move || testbed::in_ns(&ns, move || http_get(addr, "/metrics"))
        })
        .await???;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    pub async fn reloads(&self, result: &str) -> Result<f64> {
        let label = format!("result=\"{result}\"");
        Ok(metric_sum(
            &self.metrics().await?,
            "issuer_reloads_total",
            &[&label],
        ))
    }

    /// Polls until `issuer_reloads_total{result}` passes `before`.
    pub async fn reload_counted(&self, result: &str, before: f64) -> Result<f64> {
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

pub fn secret(type_: &str, data: &[(&str, &str)]) -> Secret {
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

pub async fn put_trust_roots(
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
pub async fn put_issuer(
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

pub use crate::common::kube::least_privilege_kubeconfig;

pub fn start_control_plane(
    env: &K8sEnv,
    cp_ns: &str,
    kubeconfig: &std::path::Path,
    scratch: &common::Scratch,
    anchors: &str,
) -> Result<Cp> {
    let proc = common::kube::control_plane_with(
        env,
        scratch,
        cp_ns,
        kubeconfig,
        &[
            "--cluster-networks",
            "10.10.0.0/24,10.96.0.0/16",
            "--reread-interval",
            "5s",
        ],
    );
    let identity = proc.addr("identity listening on");
    let destination = proc.addr("destination listening on");
    let admin = proc.addr("admin listening on");
    Ok(Cp {
        netns: env.cp().ns.clone(),
        identity,
        destination,
        admin,
        server_name: format!("weft-identity.{cp_ns}.serviceaccount.identity.{cp_ns}.cluster.local"),
        anchors: anchors.to_string(),
        proc,
    })
}

pub async fn pod(
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

pub fn refused(
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

pub fn leaf_identity(r: &CertifyResponse, cp_ns: &str) -> Result<String> {
    let leaf = pki::CertificateDer::from(r.leaf_certificate.clone());
    Ok(pki::peer_identity_in(&leaf, cp_ns)?.to_string())
}

/// Lists the IssuerRefused Events on `name` whose note contains `needle`.
pub async fn refusal_event(
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
pub async fn serving(
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

/// A proxy's weft.mesh.v1 stream, held open.
pub struct MeshStream {
    /// The last bundle pushed (PEM anchors).
    pub bundles: tokio::sync::watch::Receiver<Option<String>>,
    _reports: tokio::sync::mpsc::Sender<mesh_api::v1::ProxyReport>,
    task: tokio::task::JoinHandle<()>,
}

impl MeshStream {
    /// Anchors in the last bundle pushed (0: none yet).
    pub fn anchors(&self) -> usize {
        self.bundles
            .borrow()
            .as_deref()
            .map(|p| p.matches("BEGIN CERTIFICATE").count())
            .unwrap_or(0)
    }

    /// Polls until the last bundle pushed holds `n` anchors.
    pub async fn until_anchors(&self, n: usize) -> Result<()> {
        poll(
            &format!("a bundle of {n} anchors pushed"),
            DEADLINE,
            || async { Ok((self.anchors() == n).then_some(())) },
        )
        .await
    }
}

impl Drop for MeshStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
