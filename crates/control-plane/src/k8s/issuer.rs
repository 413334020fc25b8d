//! The issuer as Kubernetes holds it: trust anchors in a ConfigMap (key
//! `ca-bundle.crt`, as Linkerd's `linkerd-identity-trust-roots`), issuer
//! certificate and key in a Secret, in either shape Linkerd accepts. Pure:
//! the objects in, the same [`IssuerSnapshot`] the files give out, judged by
//! the same [`identity::issuer::judge`].

use std::path::PathBuf;

use identity::IssuerFiles;
use identity::issuer::{IssuerError, IssuerSnapshot};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// The ConfigMap key holding the PEM trust anchors.
pub const BUNDLE_KEY: &str = "ca-bundle.crt";

/// What an issuer Secret may look like; the anchors never come from it.
pub const SECRET_SHAPES: &str = "an issuer Secret holds tls.crt and tls.key (type kubernetes.io/tls, as cert-manager writes it; its ca.crt is not read, the trust anchors come from the ConfigMap only) or crt.pem and key.pem (Linkerd's linkerd.io/tls shape)";

/// The two shapes of issuer Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `kubernetes.io/tls`: `tls.crt`, `tls.key` (and `ca.crt`, unused).
    KubernetesTls,
    /// Linkerd's `linkerd.io/tls`: `crt.pem`, `key.pem`.
    LinkerdTls,
}

impl Shape {
    /// (certificate key, private key key).
    pub fn keys(self) -> (&'static str, &'static str) {
        match self {
            Self::KubernetesTls => ("tls.crt", "tls.key"),
            Self::LinkerdTls => ("crt.pem", "key.pem"),
        }
    }

    /// The shape a Secret has: by its type, else by the keys it holds.
    pub fn of(secret: &Secret) -> Option<Self> {
        let has = |k: &str| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
        if secret.type_.as_deref() == Some("kubernetes.io/tls") || has("tls.crt") || has("tls.key")
        {
            Some(Self::KubernetesTls)
        } else if has("crt.pem") || has("key.pem") {
            Some(Self::LinkerdTls)
        } else {
            None
        }
    }
}

/// Which of the two objects a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Secret,
    ConfigMap,
}

/// Why the objects cannot even be judged, or why judging refused them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("{object} does not exist; create it in the control plane's namespace ({expected})")]
    NotFound {
        which: Which,
        object: String,
        expected: &'static str,
    },
    #[error("{object} has no key {key}; {expected}")]
    MissingKey {
        which: Which,
        object: String,
        key: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Judged(#[from] IssuerError),
}

impl SourceError {
    /// The label for `issuer_reloads_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::MissingKey { .. } => "missing_key",
            Self::Judged(e) => e.label(),
        }
    }

    /// The object the refusal names, when it names one by itself (the
    /// caller decides for a pair that does not chain: whichever changed).
    pub fn which(&self) -> Option<Which> {
        match self {
            Self::NotFound { which, .. } | Self::MissingKey { which, .. } => Some(*which),
            Self::Judged(
                IssuerError::Anchors(_)
                | IssuerError::Unreadable {
                    file: identity::issuer::IssuerFile::Anchors,
                    ..
                },
            ) => Some(Which::ConfigMap),
            Self::Judged(
                IssuerError::Unreadable { .. }
                | IssuerError::CertificateDer(_)
                | IssuerError::Signer(_)
                | IssuerError::Certificate(_)
                | IssuerError::Key(_)
                | IssuerError::KeyMismatch { .. }
                | IssuerError::NotCa(_)
                | IssuerError::KeyType(_),
            ) => Some(Which::Secret),
            Self::Judged(IssuerError::Untrusted(_)) => None,
        }
    }
}

/// How refusals name the two objects (`Secret ns/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub namespace: String,
    pub configmap: String,
    pub secret: String,
}

impl Names {
    pub fn configmap_object(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.configmap)
    }

    pub fn secret_object(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.secret)
    }
}

/// Reads the anchors and the issuer pair out of the two objects (None: the
/// object does not exist). The returned [`IssuerFiles`] are not paths but
/// the names every parse error quotes: object and key.
pub fn snapshot(
    names: &Names,
    configmap: Option<&ConfigMap>,
    secret: Option<&Secret>,
) -> Result<(IssuerFiles, IssuerSnapshot), SourceError> {
    let cm_obj = names.configmap_object();
    let secret_obj = names.secret_object();
    let cm = configmap.ok_or_else(|| SourceError::NotFound {
        which: Which::ConfigMap,
        object: cm_obj.clone(),
        expected: "the PEM trust anchors under key ca-bundle.crt",
    })?;
    let secret = secret.ok_or_else(|| SourceError::NotFound {
        which: Which::Secret,
        object: secret_obj.clone(),
        expected: SECRET_SHAPES,
    })?;
    let anchors = cm
        .data
        .as_ref()
        .and_then(|d| d.get(BUNDLE_KEY))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| {
            cm.binary_data
                .as_ref()
                .and_then(|d| d.get(BUNDLE_KEY))
                .map(|b| b.0.clone())
        })
        .ok_or_else(|| SourceError::MissingKey {
            which: Which::ConfigMap,
            object: cm_obj.clone(),
            key: BUNDLE_KEY.into(),
            expected: "the trust anchors ConfigMap holds the PEM anchors under ca-bundle.crt",
        })?;
    let shape = Shape::of(secret).ok_or_else(|| SourceError::MissingKey {
        which: Which::Secret,
        object: secret_obj.clone(),
        key: "tls.crt and tls.key (or crt.pem and key.pem)".into(),
        expected: SECRET_SHAPES,
    })?;
    let (crt_key, key_key) = shape.keys();
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .ok_or_else(|| SourceError::MissingKey {
                which: Which::Secret,
                object: secret_obj.clone(),
                key: k.into(),
                expected: SECRET_SHAPES,
            })
    };
    let snap = IssuerSnapshot {
        anchors,
        certificate: get(crt_key)?,
        key: get(key_key)?,
    };
    let labels = IssuerFiles {
        anchors: PathBuf::from(format!("{cm_obj} key {BUNDLE_KEY}")),
        certificate: PathBuf::from(format!("{secret_obj} key {crt_key}")),
        key: PathBuf::from(format!("{secret_obj} key {key_key}")),
    };
    Ok((labels, snap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn names() -> Names {
        Names {
            namespace: "weft".into(),
            configmap: "linkerd-identity-trust-roots".into(),
            secret: "linkerd-identity-issuer".into(),
        }
    }

    fn cm(key: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(key.to_string(), "anchors".to_string())])),
            ..Default::default()
        }
    }

    fn secret(type_: Option<&str>, keys: &[&str]) -> Secret {
        Secret {
            type_: type_.map(String::from),
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(format!("<{k}>").into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn reads_both_secret_shapes_and_never_the_secrets_ca() {
        let (files, snap) = snapshot(
            &names(),
            Some(&cm(BUNDLE_KEY)),
            Some(&secret(
                Some("kubernetes.io/tls"),
                &["tls.crt", "tls.key", "ca.crt"],
            )),
        )
        .unwrap();
        assert_eq!(snap.anchors, b"anchors");
        assert_eq!(snap.certificate, b"<tls.crt>");
        assert_eq!(snap.key, b"<tls.key>");
        assert_eq!(
            files.certificate.display().to_string(),
            "Secret weft/linkerd-identity-issuer key tls.crt"
        );
        let (files, snap) = snapshot(
            &names(),
            Some(&cm(BUNDLE_KEY)),
            Some(&secret(Some("linkerd.io/tls"), &["crt.pem", "key.pem"])),
        )
        .unwrap();
        assert_eq!(snap.certificate, b"<crt.pem>");
        assert_eq!(snap.key, b"<key.pem>");
        assert_eq!(
            files.anchors.display().to_string(),
            "ConfigMap weft/linkerd-identity-trust-roots key ca-bundle.crt"
        );
    }

    #[test]
    fn names_the_object_and_the_missing_key() {
        let cases: Vec<(Option<ConfigMap>, Option<Secret>, &str, &str)> = vec![
            (
                Some(cm(BUNDLE_KEY)),
                Some(secret(Some("Opaque"), &["crt.pem"])),
                "missing_key",
                "Secret weft/linkerd-identity-issuer has no key key.pem",
            ),
            (
                Some(cm(BUNDLE_KEY)),
                Some(secret(Some("kubernetes.io/tls"), &["tls.key"])),
                "missing_key",
                "has no key tls.crt",
            ),
            (
                Some(cm(BUNDLE_KEY)),
                Some(secret(None, &["ca.crt"])),
                "missing_key",
                "has no key tls.crt and tls.key (or crt.pem and key.pem)",
            ),
            (
                Some(cm("ca.crt")),
                Some(secret(None, &["crt.pem", "key.pem"])),
                "missing_key",
                "ConfigMap weft/linkerd-identity-trust-roots has no key ca-bundle.crt",
            ),
            (
                None,
                Some(secret(None, &["crt.pem", "key.pem"])),
                "not_found",
                "ConfigMap weft/linkerd-identity-trust-roots does not exist",
            ),
            (
                Some(cm(BUNDLE_KEY)),
                None,
                "not_found",
                "Secret weft/linkerd-identity-issuer does not exist",
            ),
        ];
        for (c, s, label, want) in cases {
            let e = snapshot(&names(), c.as_ref(), s.as_ref()).unwrap_err();
            assert_eq!(e.label(), label, "{e}");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
            if matches!(
                e,
                SourceError::MissingKey {
                    which: Which::Secret,
                    ..
                }
            ) {
                assert!(e.to_string().contains("crt.pem and key.pem"), "{e}");
            }
        }
    }
}
