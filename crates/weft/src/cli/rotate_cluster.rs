//! `weft rotate` in Kubernetes mode: the trust anchors live in the
//! ConfigMap, the issuer in the Secret, and the control plane's admin
//! endpoints are reached through the API server (a port-forward to each
//! Ready replica, as `weft check` does). The Secret is only ever replaced
//! with a resourceVersion precondition: a concurrent edit is refused, never
//! overwritten. Building the new Secret and naming a refusal are pure.

use std::path::{Path, PathBuf};

use control_plane::fleet::FleetView;
use control_plane::k8s::issuer::{Names, Shape, SourceError, snapshot};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, PostParams};

use super::super::check_tunnel as tunnel;

/// What the API server refused, or what the objects lack.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Connect(#[from] control_plane::k8s::ConnectError),
    #[error(
        "the API server refused to {} {}: {}; grant the caller {} on {} in namespace {} (kubectl auth can-i {} {}/{} -n {})",
        .at.verb, .at.object, .at.detail, .at.verb, .at.resource, .at.namespace, .at.verb, .at.resource, .at.name, .at.namespace
    )]
    Forbidden {
        at: Box<Refused>,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "{} changed since this command read it (someone else edited it): nothing was overwritten; look at it (kubectl get {}/{} -n {} -o yaml) and re-run the command",
        .at.object, .at.resource, .at.name, .at.namespace
    )]
    Conflict {
        at: Box<Refused>,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot {} {}: {}", .at.verb, .at.object, .at.detail)]
    Api {
        at: Box<Refused>,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{0}; the rotation needs both objects, as `weft install` creates them")]
    Objects(#[source] SourceError),
}

/// A refused call, as its one-line error names it.
#[derive(Debug)]
pub struct Refused {
    pub verb: &'static str,
    pub resource: &'static str,
    pub name: String,
    pub namespace: String,
    /// `Secret ns/name`.
    pub object: String,
    /// The API server's words.
    pub detail: String,
}

/// One API call on one object: what a refusal of it names.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub verb: &'static str,
    /// The plural resource (`secrets`, `configmaps`).
    pub resource: &'static str,
    pub name: &'a str,
    pub namespace: &'a str,
}

impl Call<'_> {
    fn object(&self) -> String {
        let kind = match self.resource {
            "secrets" => "Secret",
            "configmaps" => "ConfigMap",
            "leases" => "Lease",
            other => other,
        };
        format!("{kind} {}/{}", self.namespace, self.name)
    }

    /// The API server's refusal of this call as one line: forbidden names
    /// the RBAC to grant, a conflict the concurrent edit. Pure.
    pub fn refused(&self, source: kube::Error) -> ClusterError {
        let source = Box::new(source);
        let code = match source.as_ref() {
            kube::Error::Api(s) => s.code,
            _ => 0,
        };
        let at = Box::new(Refused {
            verb: self.verb,
            resource: self.resource,
            name: self.name.to_string(),
            namespace: self.namespace.to_string(),
            object: self.object(),
            detail: control_plane::k8s::proofs::api_error(&source),
        });
        match code {
            403 => ClusterError::Forbidden { at, source },
            409 => ClusterError::Conflict { at, source },
            _ => ClusterError::Api { at, source },
        }
    }
}

/// `old` with the issuer pair replaced, in the shape it has (kubernetes.io/tls
/// or linkerd.io/tls), its resourceVersion kept: replacing it is a
/// compare-and-swap. Its `ca.crt`, if any, is left as it is (never read).
pub fn with_pair(old: &Secret, cert: &[u8], key: &[u8]) -> Secret {
    let (crt_key, key_key) = Shape::of(old).unwrap_or(Shape::KubernetesTls).keys();
    let mut new = old.clone();
    new.metadata.managed_fields = None;
    new.string_data = None;
    let data = new.data.get_or_insert_with(Default::default);
    data.insert(crt_key.into(), ByteString(cert.to_vec()));
    data.insert(key_key.into(), ByteString(key.to_vec()));
    new
}

/// The certificate and key a Secret holds (None: not an issuer Secret).
pub fn pair_of(s: &Secret) -> Option<(Vec<u8>, Vec<u8>)> {
    let (c, k) = Shape::of(s)?.keys();
    let data = s.data.as_ref()?;
    Some((data.get(c)?.0.clone(), data.get(k)?.0.clone()))
}

/// The cluster a rotation works on: the client, the two objects' names and
/// a runtime for the commands' synchronous steps.
pub struct Cluster {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) client: Client,
    pub names: Names,
}

impl Cluster {
    pub fn connect(kubeconfig: Option<&Path>, namespace: &str) -> Result<Self, ClusterError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let client = rt.block_on(control_plane::k8s::client(kubeconfig))?;
        let names = Names {
            namespace: namespace.to_string(),
            configmap: control_plane::k8s::KubeSettings::DEFAULT_TRUST_ROOTS_CONFIGMAP.into(),
            secret: control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET.into(),
        };
        Ok(Self { rt, client, names })
    }

    pub fn namespace(&self) -> &str {
        &self.names.namespace
    }

    fn call<'a>(&'a self, verb: &'static str, secret: bool) -> Call<'a> {
        let (resource, name) = match secret {
            true => ("secrets", self.names.secret.as_str()),
            false => ("configmaps", self.names.configmap.as_str()),
        };
        Call {
            verb,
            resource,
            name,
            namespace: &self.names.namespace,
        }
    }

    /// The trust anchors (a label naming the ConfigMap's key, the PEM) and
    /// the issuer Secret as it is now.
    pub fn read(&self) -> Result<((PathBuf, Vec<u8>), Secret), ClusterError> {
        let ns = &self.names.namespace;
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let (cm, secret) = self.rt.block_on(async {
            let cm = cms
                .get_opt(&self.names.configmap)
                .await
                .map_err(|e| self.call("get", false).refused(e))?;
            let secret = secrets
                .get_opt(&self.names.secret)
                .await
                .map_err(|e| self.call("get", true).refused(e))?;
            Ok::<_, ClusterError>((cm, secret))
        })?;
        let (labels, snap) =
            snapshot(&self.names, cm.as_ref(), secret.as_ref()).map_err(ClusterError::Objects)?;
        let secret = secret.ok_or_else(|| {
            ClusterError::Objects(SourceError::NotFound {
                which: control_plane::k8s::issuer::Which::Secret,
                object: self.names.secret_object(),
                expected: control_plane::k8s::issuer::SECRET_SHAPES,
            })
        })?;
        Ok(((labels.anchors, snap.anchors), secret))
    }

    /// Replaces the Secret with `new` if it still has `new`'s
    /// resourceVersion; returns it as stored (its new resourceVersion).
    pub fn replace_secret(&self, new: &Secret) -> Result<Secret, ClusterError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.names.namespace);
        self.rt
            .block_on(secrets.replace(&self.names.secret, &PostParams::default(), new))
            .map_err(|e| self.call("update", true).refused(e))
    }

    /// The fleet view through a port-forward to a Ready replica (the view
    /// is merged across replicas).
    pub fn fleet(&self) -> Result<FleetView, String> {
        let (pod, (code, body)) = self
            .rt
            .block_on(tunnel::fleet(&self.client, self.namespace()))
            .map_err(|e| format!("{e}; {}", tunnel::rbac_hint(self.namespace())))?;
        match code {
            200 => serde_json::from_str(&body)
                .map_err(|e| format!("GET /fleet from pod {pod} is not a fleet view: {e}")),
            _ => Err(format!(
                "GET /fleet from pod {pod} answered {code}: {}",
                body.trim()
            )),
        }
    }

    /// POST /renew-now to every Ready replica: each renews the proxies
    /// connected to it. (the replica's pod, its answer or why none).
    pub fn renew_now(&self) -> super::Answers {
        let ns = self.namespace();
        self.rt.block_on(async {
            let pods = match tunnel::ready(&self.client, ns).await {
                Ok(p) if p.is_empty() => {
                    return vec![(
                        None,
                        Err(format!("no Ready control-plane pod in namespace {ns}")),
                    )];
                }
                Ok(p) => p,
                Err(e) => return vec![(None, Err(e.to_string()))],
            };
            let mut out = Vec::new();
            for pod in pods {
                let r = tunnel::request(&self.client, ns, &pod, "POST", "/renew-now").await;
                out.push((Some(pod), r.map_err(|e| e.to_string())));
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secret(type_: &str, keys: &[&str]) -> Secret {
        let mut s = Secret {
            type_: Some(type_.into()),
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(format!("<{k}>").into_bytes())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        };
        s.metadata.resource_version = Some("41".into());
        s.metadata.name = Some("linkerd-identity-issuer".into());
        s
    }

    #[test]
    fn the_new_pair_keeps_the_secrets_shape_and_its_resource_version() {
        let old = secret("kubernetes.io/tls", &["tls.crt", "tls.key", "ca.crt"]);
        let new = with_pair(&old, b"C", b"K");
        assert_eq!(new.metadata.resource_version.as_deref(), Some("41"));
        assert_eq!(pair_of(&new), Some((b"C".to_vec(), b"K".to_vec())));
        let data = new.data.as_ref().unwrap();
        assert_eq!(data["ca.crt"].0, b"<ca.crt>");
        assert_eq!(data.len(), 3);
        assert_eq!(
            pair_of(&old),
            Some((b"<tls.crt>".to_vec(), b"<tls.key>".to_vec()))
        );

        let old = secret("linkerd.io/tls", &["crt.pem", "key.pem"]);
        let new = with_pair(&old, b"C", b"K");
        let data = new.data.as_ref().unwrap();
        assert_eq!(
            (data["crt.pem"].0.as_slice(), data["key.pem"].0.as_slice()),
            (&b"C"[..], &b"K"[..])
        );
        assert_eq!(data.len(), 2);
        assert_eq!(pair_of(&Secret::default()), None);
    }

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn a_refusal_names_the_verb_the_object_and_what_to_grant() {
        let call = Call {
            verb: "update",
            resource: "secrets",
            name: "linkerd-identity-issuer",
            namespace: "weft",
        };
        let e = call.refused(api(403, "secrets \"linkerd-identity-issuer\" is forbidden: User \"alice\" cannot update resource \"secrets\""));
        let text = e.to_string();
        assert!(matches!(e, ClusterError::Forbidden { .. }), "{e:?}");
        assert!(
            text.starts_with(
                "the API server refused to update Secret weft/linkerd-identity-issuer: secrets"
            ),
            "{text}"
        );
        assert!(text.contains("(HTTP 403)"), "{text}");
        assert!(text.contains("grant the caller update on secrets in namespace weft (kubectl auth can-i update secrets/linkerd-identity-issuer -n weft)"), "{text}");
        assert!(!text.contains('\n'));

        let e = call.refused(api(409, "the object has been modified"));
        assert!(matches!(e, ClusterError::Conflict { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("Secret weft/linkerd-identity-issuer changed since this command read it"),
            "{e}"
        );

        let get = Call {
            verb: "get",
            resource: "configmaps",
            name: "linkerd-identity-trust-roots",
            namespace: "weft",
        };
        let e = get.refused(api(500, "etcd is down"));
        assert_eq!(
            e.to_string(),
            "cannot get ConfigMap weft/linkerd-identity-trust-roots: etcd is down (HTTP 500)"
        );
    }
}
