//! Proof of identity in Kubernetes mode: a pod's projected ServiceAccount
//! token (audience `identity.l5d.io`), checked by the API server with a
//! TokenReview; renewal by the still-valid leaf and join tokens (for
//! ExternalWorkloads) exactly as in standalone mode.

use std::time::Duration;

use identity::proof::{Proof, ProofError, ProofKind, ProofVerifier, StandaloneProofs, Subject};
use identity::token::{self, AUDIENCE, TokenError};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use pki::Identity;
use time::OffsetDateTime;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

pub struct KubeProofs {
    pub client: Client,
    /// Join tokens and renewal, shared with standalone mode.
    pub standalone: StandaloneProofs,
    /// How long the API server may take to answer a review or pod lookup.
    pub timeout: Duration,
}

/// What an accepted TokenReview says: the ServiceAccount, and the pod the
/// token is bound to (name, uid), if it is bound to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    pub pod: Option<(String, String)>,
}

/// Judges a TokenReview's answer. Pure, so each refusal is unit-tested.
pub fn judge_review(status: &TokenReviewStatus) -> Result<Reviewed, ProofError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(ProofError::Review(why));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(ProofError::Review(format!(
            "the token is valid for {audiences:?}, not {AUDIENCE}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| ProofError::Token(TokenError::Subject(username.clone())))?;
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    let pod = match (one(POD_NAME), one(POD_UID)) {
        (Some(name), Some(uid)) => Some((name, uid)),
        _ => None,
    };
    Ok(Reviewed {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod,
    })
}

impl KubeProofs {
    fn cp_ns(&self) -> &str {
        &self.standalone.control_plane_ns
    }

    /// TokenReview, then the bound pod must still exist with that uid.
    async fn by_service_account_token(&self, token: &str) -> Result<Subject, ProofError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    ProofError::ReviewUnavailable(format!("no answer in {:?}", self.timeout))
                })?
                .map_err(|e| ProofError::ReviewUnavailable(api_error(&e)))?;
        let status = answer.status.unwrap_or_default();
        let reviewed = match judge_review(&status) {
            Ok(r) => r,
            Err(e) => return Err(self.explain(token, e).await),
        };
        if let Some((name, uid)) = &reviewed.pod {
            self.pod_exists(&reviewed.namespace, name, uid).await?;
        }
        let identity = Identity::new(
            &reviewed.service_account,
            &reviewed.namespace,
            self.cp_ns(),
            &self.standalone.trust_domain,
        )
        .map_err(|_| {
            ProofError::NotInMesh(format!(
                "{SA_PREFIX}{}:{}",
                reviewed.namespace, reviewed.service_account
            ))
        })?;
        Ok(Subject {
            identity,
            kind: ProofKind::ServiceAccountToken {
                pod: reviewed
                    .pod
                    .map(|(n, _)| format!("{}/{n}", reviewed.namespace)),
            },
        })
    }

    /// A refused review of a token bound to a pod that is gone says so:
    /// the API server's own message ("invalidated") does not say why.
    async fn explain(&self, token: &str, refused: ProofError) -> ProofError {
        let Some(pod) = token::unverified_bound_pod(token) else {
            return refused;
        };
        match self.pod_exists(&pod.namespace, &pod.name, &pod.uid).await {
            Err(gone @ ProofError::PodGone(_)) => gone,
            _ => refused,
        }
    }

    async fn pod_exists(&self, ns: &str, name: &str, uid: &str) -> Result<(), ProofError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let got = tokio::time::timeout(self.timeout, pods.get_metadata_opt(name))
            .await
            .map_err(|_| ProofError::ReviewUnavailable(format!("no answer in {:?}", self.timeout)))?
            .map_err(|e| {
                ProofError::ReviewUnavailable(format!("pod {ns}/{name}: {}", api_error(&e)))
            })?;
        match got {
            Some(p) if p.metadata.uid.as_deref() == Some(uid) => Ok(()),
            Some(_) => Err(ProofError::PodGone(format!(
                "pod {ns}/{name} uid {uid}; a new pod of that name has another uid"
            ))),
            None => Err(ProofError::PodGone(format!("pod {ns}/{name} uid {uid}"))),
        }
    }
}

/// The API server's own words for a refused call (its message and HTTP
/// code), not the whole Status structure.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (HTTP {})", s.message, s.code),
        other => other.to_string(),
    }
}

impl ProofVerifier for KubeProofs {
    async fn verify(&self, proof: &Proof<'_>) -> Result<Subject, ProofError> {
        let now = OffsetDateTime::now_utc();
        // As in standalone mode: a presented leaf first, a token may rescue.
        if let Some(chain) = proof.client_chain.filter(|c| !c.is_empty()) {
            match self.standalone.renewal(chain, now) {
                Ok(s) => return Ok(s),
                Err(e) if proof.token.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "client certificate refused; trying the token")
                }
            }
        }
        if proof.token.is_empty() {
            return Err(ProofError::MissingInKubernetes);
        }
        let text = std::str::from_utf8(proof.token)
            .map_err(|_| ProofError::NotAToken("not UTF-8".into()))?
            .trim();
        // A join token names this control plane's key; anything else that is
        // a JWT is for the API server to judge.
        if self.standalone.tokens.names_our_key(text) {
            return self.standalone.by_token(proof.token, now);
        }
        token::jwt_shape(text).map_err(ProofError::NotAToken)?;
        self.by_service_account_token(text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn status(auth: bool, aud: &[&str], user: &str, pod: bool) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if pod {
            extra.insert(POD_NAME.to_string(), vec!["web-1".to_string()]);
            extra.insert(POD_UID.to_string(), vec!["u-1".to_string()]);
        }
        TokenReviewStatus {
            authenticated: Some(auth),
            audiences: Some(aud.iter().map(|a| a.to_string()).collect()),
            error: (!auth).then(|| "token audiences [\"x\"] is invalid".to_string()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: Some(extra),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn accepts_a_service_account_and_its_pod() {
        let r = judge_review(&status(
            true,
            &[AUDIENCE],
            "system:serviceaccount:ns:web",
            true,
        ))
        .unwrap();
        assert_eq!(
            r,
            Reviewed {
                namespace: "ns".into(),
                service_account: "web".into(),
                pod: Some(("web-1".into(), "u-1".into())),
            }
        );
        let r = judge_review(&status(
            true,
            &[AUDIENCE],
            "system:serviceaccount:ns:web",
            false,
        ))
        .unwrap();
        assert_eq!(r.pod, None);
    }

    #[test]
    fn refuses_each_bad_review() {
        let e = judge_review(&status(false, &[], "", false)).unwrap_err();
        assert!(
            matches!(&e, ProofError::Review(m) if m.contains("invalid")),
            "{e}"
        );
        let e = judge_review(&status(
            true,
            &["other"],
            "system:serviceaccount:ns:web",
            true,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not identity.l5d.io"), "{e}");
        for user in [
            "admin",
            "system:serviceaccount:ns",
            "system:serviceaccount::web",
        ] {
            let e = judge_review(&status(true, &[AUDIENCE], user, false)).unwrap_err();
            assert!(
                matches!(e, ProofError::Token(TokenError::Subject(_))),
                "{user}: {e}"
            );
        }
    }
}
