//! Bearer tokens on the operator listener in Kubernetes mode: the API
//! server says who a token belongs to (TokenReview, the API server's own
//! audiences, as `kubectl create token` makes them), then whether that user
//! may do what the request asks (SubjectAccessReview on weft's operator
//! resources in the control plane's namespace), so access is granted and
//! revoked with RBAC like any other. Answers are cached briefly by the
//! token's SHA-256, so a browser's page load costs one review, and reviews
//! in flight are capped, so callers cannot flood the API server.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use super::proofs::api_error;

/// The API group of the operator resources RBAC grants (no objects of it
/// exist: it names permissions, as Linkerd's tap.linkerd.io does).
pub const GROUP: &str = "operator.weft.dev";
/// How long an answer is reused for the same token and permission.
const CACHE_FOR: Duration = Duration::from_secs(10);
/// Past this many cached answers the expired ones go, then all.
const CACHE_MAX: usize = 1024;
/// Reviews the API server is asked at once; more callers wait.
const IN_FLIGHT: usize = 8;

/// What a request needs: `verb` on `resource` in [`GROUP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    pub verb: &'static str,
    pub resource: &'static str,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}.{GROUP}", self.verb, self.resource)
    }
}

/// Tap shows live requests, so it is a permission of its own (`watch tap`);
/// renewals change the fleet (`create renewals`); the rest reads (`get fleet`).
pub fn permission(method: &Method, path: &str) -> Permission {
    let (verb, resource) = match (method, path) {
        (&Method::GET, "/tap") => ("watch", "tap"),
        (&Method::POST, "/renew-now") => ("create", "renewals"),
        (&Method::GET | &Method::HEAD, _) => ("get", "fleet"),
        _ => ("create", "fleet"),
    };
    Permission { verb, resource }
}

/// A user RBAC does not allow what the request asks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{user} may not {permission} in namespace {namespace}{reason}; grant it with `kubectl create rolebinding NAME -n {namespace} --role {role} {subject}`"
)]
pub struct Forbidden {
    user: String,
    permission: Permission,
    namespace: String,
    reason: String,
    role: &'static str,
    /// The kubectl flag naming the user.
    subject: String,
}

/// Why a request with a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error(
        "no client certificate and no bearer token; send `Authorization: Bearer TOKEN` with a Kubernetes token whose user has the weft-operator Role (weft --operator-token-file F --operator-ca F; a token from `kubectl create token NAME -n NAMESPACE`), or present an operator certificate on --operator-allow"
    )]
    Missing,
    #[error(
        "the Authorization header is not `Bearer TOKEN`; send a Kubernetes token that way (weft --operator-token-file F)"
    )]
    Malformed,
    #[error(
        "the API server did not authenticate the bearer token ({0}); use a current token, e.g. from `kubectl create token NAME -n NAMESPACE`"
    )]
    NotAuthenticated(String),
    #[error(transparent)]
    Forbidden(Box<Forbidden>),
    #[error(
        "cannot review the bearer token with the API server: {0}; the control plane needs create on tokenreviews and subjectaccessreviews (rbac.yaml); try again"
    )]
    Unavailable(String),
}

impl TokenRefused {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "no_credentials",
            Self::Malformed => "token_malformed",
            Self::NotAuthenticated(_) => "token_not_authenticated",
            Self::Forbidden(_) => "token_forbidden",
            Self::Unavailable(_) => "token_review_unavailable",
        }
    }

    /// 401 for who-are-you, 403 for not-allowed, 503 when no one can tell.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing | Self::Malformed | Self::NotAuthenticated(_) => 401,
            Self::Forbidden(_) => 403,
            Self::Unavailable(_) => 503,
        }
    }
}

/// The token an `Authorization` header carries; None without the header.
pub fn bearer(header: Option<&[u8]>) -> Result<Option<&str>, TokenRefused> {
    let Some(raw) = header else { return Ok(None) };
    let text = std::str::from_utf8(raw).map_err(|_| TokenRefused::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(TokenRefused::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(TokenRefused::Malformed);
    }
    Ok(Some(token))
}

/// The user a request's bearer token names, if it may do what the
/// request asks.
pub async fn authorize<B>(
    req: &http::Request<B>,
    tokens: &OperatorTokens,
) -> Result<String, TokenRefused> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let token = bearer(header)?.ok_or(TokenRefused::Missing)?;
    tokens
        .authorize(token, permission(req.method(), req.uri().path()))
        .await
}

/// Who a reviewed token belongs to, as SubjectAccessReview takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// Judges a TokenReview's answer.
pub fn judge_token(status: Option<&TokenReviewStatus>) -> Result<User, TokenRefused> {
    let refused = |why: &str| Err(TokenRefused::NotAuthenticated(why.to_string()));
    let Some(s) = status else {
        return refused("the review came back without a status");
    };
    if s.authenticated != Some(true) {
        return refused(s.error.as_deref().unwrap_or("not authenticated"));
    }
    match s.user.as_ref().and_then(|u| u.username.clone()) {
        Some(name) if !name.is_empty() => {
            let u = s.user.clone().unwrap_or_default();
            Ok(User {
                name,
                uid: u.uid,
                groups: u.groups.unwrap_or_default(),
                extra: u.extra,
            })
        }
        _ => refused("authenticated, but no user name"),
    }
}

/// The review asking whether `user` has `p` in `namespace`.
pub fn access_review(user: &User, p: Permission, namespace: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some(p.resource.into()),
                verb: Some(p.verb.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Judges a SubjectAccessReview's answer (denied unless allowed).
pub fn judge_access(
    status: Option<&SubjectAccessReviewStatus>,
    user: &str,
    p: Permission,
    namespace: &str,
) -> Result<(), TokenRefused> {
    if status.is_some_and(|s| s.allowed && s.denied != Some(true)) {
        return Ok(());
    }
    let reason = status
        .and_then(|s| s.evaluation_error.clone().or(s.reason.clone()))
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    // A ServiceAccount's user name is system:serviceaccount:NS:NAME.
    let subject = match user.strip_prefix("system:serviceaccount:") {
        Some(sa) => format!("--serviceaccount {sa}"),
        None => format!("--user {user}"),
    };
    Err(TokenRefused::Forbidden(Box::new(Forbidden {
        subject,
        user: user.to_string(),
        permission: p,
        namespace: namespace.to_string(),
        reason,
        role: if p.resource == "fleet" && p.verb == "get" {
            "weft-operator-view"
        } else {
            "weft-operator"
        },
    })))
}

type Key = ([u8; 32], Permission);
type Answer = Result<String, TokenRefused>;

/// Reviews bearer tokens for the operator listener.
pub struct OperatorTokens {
    client: kube::Client,
    namespace: String,
    timeout: Duration,
    cache: Mutex<HashMap<Key, (Instant, Answer)>>,
    reviews: Semaphore,
}

impl OperatorTokens {
    pub fn new(client: kube::Client, namespace: String, timeout: Duration) -> Self {
        Self {
            client,
            namespace,
            timeout,
            cache: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(IN_FLIGHT),
        }
    }

    /// The user `token` names, if that user has `p`.
    pub async fn authorize(&self, token: &str, p: Permission) -> Result<String, TokenRefused> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        let key = (hash, p);
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let _permit = self
            .reviews
            .acquire()
            .await
            .map_err(|_| TokenRefused::Unavailable("shutting down".into()))?;
        let answer = self.review(token, p).await;
        // An outage is not remembered: the next request asks again.
        if !matches!(answer, Err(TokenRefused::Unavailable(_))) {
            self.remember(key, answer.clone());
        }
        answer
    }

    fn cached(&self, key: &Key) -> Option<Result<String, TokenRefused>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < CACHE_FOR)
            .map(|(_, a)| a.clone())
    }

    fn remember(&self, key: Key, answer: Result<String, TokenRefused>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), answer));
    }

    async fn review(&self, token: &str, p: Permission) -> Result<String, TokenRefused> {
        let unavailable = |e: &kube::Error| TokenRefused::Unavailable(api_error(e));
        let late = |_| TokenRefused::Unavailable(format!("no answer in {:?}", self.timeout));
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let tokens: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(self.timeout, tokens.create(&PostParams::default(), &review))
                .await
                .map_err(late)?
                .map_err(|e| unavailable(&e))?;
        let user = judge_token(reviewed.status.as_ref())?;
        let sar = access_review(&user, p, &self.namespace);
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(self.timeout, access.create(&PostParams::default(), &sar))
                .await
                .map_err(late)?
                .map_err(|e| unavailable(&e))?;
        judge_access(answer.status.as_ref(), &user.name, p, &self.namespace)?;
        Ok(user.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    #[test]
    fn each_endpoint_needs_its_permission() {
        let p = |m: Method, path| permission(&m, path).to_string();
        assert_eq!(p(Method::GET, "/fleet"), "get fleet.operator.weft.dev");
        assert_eq!(p(Method::GET, "/ui/app.js"), "get fleet.operator.weft.dev");
        assert_eq!(p(Method::GET, "/tap"), "watch tap.operator.weft.dev");
        assert_eq!(
            p(Method::POST, "/renew-now"),
            "create renewals.operator.weft.dev"
        );
        // Anything else that mutates needs more than reading.
        assert_eq!(p(Method::POST, "/fleet"), "create fleet.operator.weft.dev");
        assert_eq!(p(Method::DELETE, "/x"), "create fleet.operator.weft.dev");
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some(b"Bearer abc.def")), Ok(Some("abc.def")));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok(Some("abc")));
        for bad in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a b",
            b"\xff\xfe",
        ] {
            assert_eq!(bearer(Some(bad)), Err(TokenRefused::Malformed), "{bad:?}");
        }
    }

    fn reviewed(auth: Option<bool>, user: Option<&str>, error: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: auth,
            error: error.map(String::from),
            user: user.map(|u| UserInfo {
                username: Some(u.into()),
                groups: Some(vec!["system:authenticated".into()]),
                uid: Some("u1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_counts_only_when_authenticated_with_a_name() {
        let alice = "system:serviceaccount:ops:alice";
        let u = judge_token(Some(&reviewed(Some(true), Some(alice), None))).unwrap();
        assert_eq!(u.name, alice);
        assert_eq!(u.groups, vec!["system:authenticated".to_string()]);
        for (s, why) in [
            (None, "without a status"),
            (
                Some(reviewed(Some(false), None, Some("token has expired"))),
                "token has expired",
            ),
            (Some(reviewed(None, Some(alice), None)), "not authenticated"),
            (Some(reviewed(Some(true), None, None)), "no user name"),
            (Some(reviewed(Some(true), Some(""), None)), "no user name"),
        ] {
            let e = judge_token(s.as_ref()).unwrap_err();
            assert_eq!(e.label(), "token_not_authenticated");
            assert_eq!(e.status(), 401);
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn access_is_denied_unless_allowed_and_the_refusal_says_how_to_grant_it() {
        let get = permission(&Method::GET, "/fleet");
        let allowed = SubjectAccessReviewStatus {
            allowed: true,
            ..Default::default()
        };
        assert_eq!(judge_access(Some(&allowed), "bob", get, "weft"), Ok(()));
        let vetoed = SubjectAccessReviewStatus {
            allowed: true,
            denied: Some(true),
            ..Default::default()
        };
        let e = judge_access(Some(&vetoed), "bob", get, "weft").unwrap_err();
        assert_eq!((e.label(), e.status()), ("token_forbidden", 403));
        assert!(
            e.to_string().contains(
                "bob may not get fleet.operator.weft.dev in namespace weft; grant it with `kubectl create rolebinding NAME -n weft --role weft-operator-view --user bob`"
            ),
            "{e}"
        );
        let no = SubjectAccessReviewStatus {
            reason: Some("no RBAC policy matched".into()),
            ..Default::default()
        };
        let tap = permission(&Method::GET, "/tap");
        let e = judge_access(Some(&no), "system:serviceaccount:ops:bob", tap, "weft").unwrap_err();
        assert!(
            e.to_string()
                .contains("(no RBAC policy matched); grant it with `kubectl create rolebinding NAME -n weft --role weft-operator --serviceaccount ops:bob`"),
            "{e}"
        );
        assert!(judge_access(None, "bob", tap, "weft").is_err());
    }

    #[test]
    fn the_access_review_asks_about_the_user_and_the_permission() {
        let u = User {
            name: "alice".into(),
            uid: Some("1".into()),
            groups: vec!["g".into()],
            extra: None,
        };
        let r = access_review(&u, permission(&Method::POST, "/renew-now"), "weft");
        let a = r.spec.resource_attributes.unwrap();
        assert_eq!(r.spec.user.as_deref(), Some("alice"));
        assert_eq!(r.spec.groups, Some(vec!["g".to_string()]));
        assert_eq!(
            (a.group.as_deref(), a.resource.as_deref(), a.verb.as_deref()),
            (Some(GROUP), Some("renewals"), Some("create"))
        );
        assert_eq!(a.namespace.as_deref(), Some("weft"));
    }
}
