//! The trust anchors an injected proxy boots with. A pod can mount only a
//! ConfigMap of its own namespace, so the control plane keeps a copy of the
//! bundle in force (`ca-bundle.crt`, in ConfigMap `weft-identity-trust-roots`)
//! in every namespace it meshes a pod in: placed before the pod is
//! admitted, updated whenever the bundle changes (and every 10 minutes). The
//! copies have their own name so that the control plane's right to update
//! them never reaches the operator's trust-roots ConfigMap. Only copies carrying
//! weft's label are ever written; a user's ConfigMap of the same name is
//! left alone and the pod refused, naming it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use tokio::sync::watch;

use crate::bundle::LiveBundle;

use super::super::lease::status;
use super::super::proofs::api_error;

/// Marks a ConfigMap as weft's copy of the trust anchors.
pub const COPY_LABEL: &str = "weft.dev/trust-roots-copy";
pub const BUNDLE_KEY: &str = "ca-bundle.crt";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "no trust bundle is in force yet (the issuer and trust-roots pair is not loaded); the pod would boot without anchors. Check `weft check` and the control plane's /ready"
    )]
    NoBundle,
    #[error(
        "ConfigMap {ns}/{name} exists and is not weft's copy of the trust anchors (no {COPY_LABEL} label); the injected proxy would trust what it holds. Delete or rename it, then create the pod again"
    )]
    Foreign { ns: String, name: String },
    #[error(
        "cannot write the trust anchors to ConfigMap {ns}/{name}: {detail}; the control plane needs create, and get/update on that name (see rbac.yaml)"
    )]
    Api {
        ns: String,
        name: String,
        detail: String,
    },
}

/// Keeps the copies current.
#[derive(Clone)]
pub struct TrustCopies {
    pub client: kube::Client,
    /// The copies' name.
    pub name: String,
    pub bundle: watch::Receiver<Option<Arc<LiveBundle>>>,
}

/// What a copy should become, given what is there.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Nothing,
    Foreign,
}

/// The pure rule for one namespace's copy.
pub fn action(existing: Option<&ConfigMap>, pem: &str) -> Action {
    let Some(cm) = existing else {
        return Action::Create;
    };
    let ours = cm
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(COPY_LABEL).is_some_and(|v| v == "true"));
    if !ours {
        return Action::Foreign;
    }
    let held = cm.data.as_ref().and_then(|d| d.get(BUNDLE_KEY));
    if held.map(String::as_str) == Some(pem) {
        Action::Nothing
    } else {
        Action::Update
    }
}

impl TrustCopies {
    fn copy(&self, pem: &str, resource_version: Option<String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                labels: Some(BTreeMap::from([
                    (COPY_LABEL.to_string(), "true".to_string()),
                    ("app.kubernetes.io/part-of".into(), "weft".into()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(BUNDLE_KEY.to_string(), pem.to_string())])),
            ..Default::default()
        }
    }

    /// Makes `ns`'s copy hold the bundle in force (create when absent).
    pub async fn ensure(&self, ns: &str) -> Result<Action, CopyError> {
        let pem = self
            .bundle
            .borrow()
            .as_ref()
            .map(|b| b.pem.clone())
            .ok_or(CopyError::NoBundle)?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let err = |e: &kube::Error| CopyError::Api {
            ns: ns.into(),
            name: self.name.clone(),
            detail: api_error(e),
        };
        // A create race with another replica: read again and judge that.
        for _ in 0..3 {
            let existing = api.get_opt(&self.name).await.map_err(|e| err(&e))?;
            let act = action(existing.as_ref(), &pem);
            let r = match act {
                Action::Nothing => return Ok(act),
                Action::Foreign => {
                    return Err(CopyError::Foreign {
                        ns: ns.into(),
                        name: self.name.clone(),
                    });
                }
                Action::Create => api
                    .create(&PostParams::default(), &self.copy(&pem, None))
                    .await
                    .map(drop),
                Action::Update => {
                    let rv = existing.and_then(|c| c.metadata.resource_version);
                    api.replace(&self.name, &PostParams::default(), &self.copy(&pem, rv))
                        .await
                        .map(drop)
                }
            };
            match r {
                Ok(()) => return Ok(act),
                Err(e) if status(&e) == Some(409) => continue,
                Err(e) => return Err(err(&e)),
            }
        }
        Err(CopyError::Api {
            ns: ns.into(),
            name: self.name.clone(),
            detail: "changed under each of 3 attempts".into(),
        })
    }

    /// Brings every existing copy up to the bundle in force; runs at start
    /// and whenever the bundle changes. Copies are found by trying each
    /// namespace's one name (the control plane may read ConfigMaps by that
    /// name only, never list them).
    pub async fn run(mut self, control_plane_ns: String) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        loop {
            let has_bundle = self.bundle.borrow_and_update().is_some();
            if has_bundle {
                match namespaces.list_metadata(&ListParams::default()).await {
                    Ok(list) => {
                        for ns in list.items.into_iter().filter_map(|n| n.metadata.name) {
                            if ns == control_plane_ns {
                                continue;
                            }
                            self.refresh(&ns).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %api_error(&e), "cannot list namespaces to refresh the trust-anchor copies; retrying at the next bundle change or in 10 min");
                    }
                }
            }
            let changed = self.bundle.changed();
            if tokio::time::timeout(std::time::Duration::from_secs(600), changed)
                .await
                .is_ok_and(|r| r.is_err())
            {
                return;
            }
        }
    }

    /// Updates `ns`'s copy if there is one of weft's.
    async fn refresh(&self, ns: &str) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let exists = match api.get_opt(&self.name).await {
            Ok(cm) => cm.is_some_and(|c| action(Some(&c), "") != Action::Foreign),
            Err(e) => {
                tracing::warn!(namespace = ns, error = %api_error(&e), "cannot read the trust-anchor copy");
                false
            }
        };
        if !exists {
            return;
        }
        match self.ensure(ns).await {
            Ok(Action::Update) => {
                tracing::info!(namespace = ns, configmap = %self.name, "trust-anchor copy updated")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(namespace = ns, error = %e, "trust-anchor copy not updated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(labelled: bool, pem: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                labels: labelled.then(|| BTreeMap::from([(COPY_LABEL.into(), "true".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(BUNDLE_KEY.into(), pem.into())])),
            ..Default::default()
        }
    }

    #[test]
    fn only_weft_copies_are_written() {
        assert_eq!(action(None, "a"), Action::Create);
        assert_eq!(action(Some(&cm(true, "a")), "a"), Action::Nothing);
        assert_eq!(action(Some(&cm(true, "old")), "a"), Action::Update);
        assert_eq!(action(Some(&cm(false, "a")), "a"), Action::Foreign);
    }
}
