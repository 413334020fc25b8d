//! Small kube-rs helpers tests share: a namespace per test, ServiceAccount
//! tokens via TokenRequest, waiting for a condition with a deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

/// Deadline for things the control plane does on its own (>= 10 s: the
/// machine may be busy).
pub const DEADLINE: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Polls `check` until it yields `Some`, or fails after `deadline` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let t0 = Instant::now();
    let mut last = String::from("no answer yet");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if t0.elapsed() > deadline {
            bail!("{what}: not after {deadline:?} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new namespace `<prefix>-<n>`, returned once its `default`
/// ServiceAccount exists (pods are refused until then).
pub async fn namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    poll(
        &format!("ServiceAccount {name}/default"),
        DEADLINE,
        || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    Ok(name)
}

/// Creates ServiceAccount `ns/name` (no error if it exists).
pub async fn service_account(client: &Client, ns: &str, name: &str) -> Result<()> {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create ServiceAccount {ns}/{name}")),
    }
}

/// What a token is bound to (TokenRequest `boundObjectRef`): the token
/// stops being valid when that object is gone.
#[derive(Clone, Debug)]
pub struct BoundTo {
    pub kind: &'static str,
    pub name: String,
    pub uid: String,
}

/// A token for ServiceAccount `ns/sa` with one audience, via TokenRequest.
pub async fn token(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: &str,
    bound: Option<BoundTo>,
    lifetime: Duration,
) -> Result<String> {
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            bound_object_ref: bound.map(|b| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some(b.kind.into()),
                name: Some(b.name),
                uid: Some(b.uid),
            }),
        }),
        ..Default::default()
    };
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let answer = sas
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for {ns}/{sa} (audience {audience})"))?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .with_context(|| format!("TokenRequest for {ns}/{sa}: the answer has no token"))
}
