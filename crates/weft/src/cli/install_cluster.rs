//! What `weft install` and `weft upgrade` read from a running cluster: the
//! identity objects that exist (install never prints over them without
//! `--force`, upgrade never prints them) and the recorded install values.

use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use super::Failure;
use super::install_manifests::{CONFIG, CONFIG_KEY, Values};

/// The anchors ConfigMap key, as install writes it and the control plane reads it.
const ANCHORS_KEY: &str = "ca-bundle.crt";

/// An installation's objects as the cluster has them.
#[derive(Debug, Default)]
pub struct Found {
    /// The trust-roots ConfigMap's bundle, if the object exists (empty if the key is missing).
    pub anchors: Option<String>,
    /// The issuer Secret's certificate and key (PEM), if the object exists.
    pub issuer: Option<(String, String)>,
    /// The recorded install values; `Err` when the record cannot be read.
    pub values: Option<Result<Values, String>>,
}

/// Why the cluster could not be read; the hint differs per command.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot connect to the cluster: {0}")]
    Connect(#[source] control_plane::k8s::ConnectError),
    #[error("cannot read {what} {namespace}/{name}: {source}")]
    Get {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// Reads the installation in `namespace` (absent objects are `None`).
pub fn read(kubeconfig: Option<&Path>, namespace: &str) -> Result<Found, ReadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async {
        let client = control_plane::k8s::client(kubeconfig)
            .await
            .map_err(ReadError::Connect)?;
        let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let get = |what: &'static str, name: &str| {
            let (namespace, name) = (namespace.to_string(), name.to_string());
            move |source| ReadError::Get {
                what,
                namespace,
                name,
                source: Box::new(source),
            }
        };
        let anchors = maps
            .get_opt(inject::DEFAULT_TRUST_ROOTS_CONFIGMAP)
            .await
            .map_err(get("ConfigMap", inject::DEFAULT_TRUST_ROOTS_CONFIGMAP))?
            .map(|cm| {
                cm.data
                    .and_then(|mut d| d.remove(ANCHORS_KEY))
                    .unwrap_or_default()
            });
        let issuer_name = control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET;
        let issuer = secrets
            .get_opt(issuer_name)
            .await
            .map_err(get("Secret", issuer_name))?
            .map(|s| {
                let mut data = s.data.unwrap_or_default();
                let mut take = |k: &str| {
                    data.remove(k)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default()
                };
                (take("tls.crt"), take("tls.key"))
            });
        let values = maps
            .get_opt(CONFIG)
            .await
            .map_err(get("ConfigMap", CONFIG))?
            .map(|cm| parse_values(cm.data.and_then(|mut d| d.remove(CONFIG_KEY))));
        Ok(Found {
            anchors,
            issuer,
            values,
        })
    })
}

fn parse_values(text: Option<String>) -> Result<Values, String> {
    let text = text.ok_or_else(|| format!("it has no key {CONFIG_KEY}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{CONFIG_KEY} is not install's record: {e}"))
}

/// The identity objects install would print that already exist: applying
/// them would put back what install was given, reverting any rotation made
/// since. Refused unless `force`.
pub fn refuse_existing(
    found: &Found,
    prints_issuer: bool,
    namespace: &str,
    force: bool,
) -> Result<(), Failure> {
    let mut existing = Vec::new();
    if found.anchors.is_some() {
        existing.push(format!(
            "ConfigMap {namespace}/{}",
            inject::DEFAULT_TRUST_ROOTS_CONFIGMAP
        ));
    }
    if prints_issuer && found.issuer.is_some() {
        existing.push(format!(
            "Secret {namespace}/{}",
            control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET
        ));
    }
    if existing.is_empty() {
        return Ok(());
    }
    if force {
        eprintln!(
            "warning: --force: printing {} over the cluster's own; applying this replaces the anchors and issuer in force (a rotation made since install is reverted)",
            existing.join(" and ")
        );
        return Ok(());
    }
    Err(Failure::input(format!(
        "the cluster already has {}: printing them would revert any rotation made since they were created, so nothing was printed; run `weft upgrade --namespace {namespace}` to print the installation without them, or pass --force to print (and on apply, overwrite) them",
        existing.join(" and ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(anchors: bool, issuer: bool) -> Found {
        Found {
            anchors: anchors.then(String::new),
            issuer: issuer.then(|| (String::new(), String::new())),
            values: None,
        }
    }

    #[test]
    fn existing_identity_objects_are_refused_unless_forced() {
        assert!(refuse_existing(&found(false, false), true, "weft", false).is_ok());
        let e = refuse_existing(&found(true, true), true, "weft", false).unwrap_err();
        assert!(
            e.message
                .contains("ConfigMap weft/linkerd-identity-trust-roots")
                && e.message.contains("Secret weft/linkerd-identity-issuer")
                && e.message.contains("weft upgrade"),
            "{}",
            e.message
        );
        assert!(refuse_existing(&found(true, true), true, "weft", true).is_ok());
    }

    #[test]
    fn an_external_issuer_secret_is_expected_to_exist() {
        assert!(refuse_existing(&found(false, true), false, "weft", false).is_ok());
        let e = refuse_existing(&found(true, true), false, "weft", false).unwrap_err();
        assert!(!e.message.contains("Secret"), "{}", e.message);
    }

    #[test]
    fn the_values_record_is_read_strictly() {
        assert!(parse_values(None).unwrap_err().contains("no key"));
        assert!(parse_values(Some("{\"image\": 1}".into())).is_err());
    }
}
