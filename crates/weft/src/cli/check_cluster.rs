//! `weft check --pre` and `weft check` against a cluster: Linkerd's
//! categories, each check fetched by `check_kube` and judged by the pure
//! functions of `check_facts` and `check_plane`.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use pki::check::{CheckConfig, CheckResult, identity_checks};
use serde_json::Value;
use time::OffsetDateTime;

use super::check::Category;
use super::check_facts as f;
use super::check_kube as k;
use super::check_plane as p;
use super::check_tunnel as t;
use super::install_manifests as m;

/// Where a dry-run pod asks the injector (a namespace it covers).
const DRY_RUN_NAMESPACE: &str = "default";

/// What a cluster check needs to know.
pub struct Cluster {
    pub kubeconfig: Option<PathBuf>,
    pub controller_namespace: String,
    /// `-n`: narrows the data plane to one namespace.
    pub namespace: Option<String>,
    /// The control plane's admin endpoint (its fleet view), if given.
    pub admin_addr: Option<String>,
    /// `--proxy`: the data plane only.
    pub proxy_only: bool,
    pub expiry_warning: Duration,
    pub proxy_expiry_warning: Duration,
}

fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

fn shipped_crds() -> Vec<Value> {
    documents(control_plane::k8s_manifests::CRDS)
}

/// Every object `weft install` would print for namespace `ns`, CRDs too.
fn install_objects(ns: &str) -> Vec<Value> {
    let plan = m::every_object(ns);
    let mut out = shipped_crds();
    for o in m::control_plane(&plan).unwrap_or_default() {
        match o {
            m::Object::Text(t) => out.extend(documents(&t)),
            m::Object::Data(v) => out.push(v),
        }
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn category(name: &str, checks: Vec<CheckResult>) -> Category {
    (name.to_string(), None, checks)
}

/// kubernetes-api and kubernetes-version; the client, if one was made.
async fn api(kubeconfig: Option<&std::path::Path>) -> (Vec<Category>, Option<Client>) {
    let init = "can initialize the client";
    let query = "can query the Kubernetes API";
    let client = match control_plane::k8s::client(kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            let fail =
                CheckResult::fail(init, e.to_string(), "pass --kubeconfig or set KUBECONFIG");
            return (vec![category("kubernetes-api", vec![fail])], None);
        }
    };
    let version = match k::version(&client).await {
        Ok(v) => v,
        Err(e) => {
            let checks = vec![
                CheckResult::ok(init),
                CheckResult::fail(
                    query,
                    e,
                    "check the kubeconfig's server, user and that the API server is up",
                ),
            ];
            return (vec![category("kubernetes-api", checks)], None);
        }
    };
    let skew = match k::server_time(&client).await {
        Ok((server, sent, received)) => f::clock_skew(server, sent, received),
        Err(e) => CheckResult::fail(
            "the clock is within 20s of the API server's",
            e,
            "check that the API server answers GET /version",
        ),
    };
    let cats = vec![
        category(
            "kubernetes-api",
            vec![CheckResult::ok(init), CheckResult::ok(query)],
        ),
        category(
            "kubernetes-version",
            vec![f::native_sidecars(&version), skew],
        ),
    ];
    (cats, Some(client))
}

/// `weft check --pre`: can weft be installed here.
pub fn pre(kubeconfig: Option<PathBuf>, cp_ns: &str) -> Result<Vec<Category>, String> {
    runtime()?.block_on(async {
        let (mut cats, client) = api(kubeconfig.as_deref()).await;
        let Some(c) = client else {
            return Ok(cats);
        };
        let mut checks = Vec::new();
        let mut answers = Vec::new();
        for a in f::needed_access(&install_objects(cp_ns)) {
            let answer = k::may_create(&c, &a).await;
            answers.push((a, answer));
        }
        let may_create_crds = answers
            .iter()
            .any(|(a, ok)| a.resource == "customresourcedefinitions" && ok == &Ok(true));
        checks.extend(f::access_checks(&answers));
        let shipped = shipped_crds();
        checks.push(match k::crds(&c, &shipped).await {
            Ok(stored) => f::crds_installable(&f::crd_state(&shipped, &stored), may_create_crds),
            Err(e) => CheckResult::fail(
                "weft's CRDs are present or installable",
                e,
                "check the API server",
            ),
        });
        checks.push(match k::namespaces(&c).await {
            Ok(ns) => f::pod_security(&ns),
            Err(e) => CheckResult::fail(
                "no namespace meshed by weft enforces a Pod Security level that forbids NET_ADMIN",
                e,
                "this user must be able to list namespaces",
            ),
        });
        cats.push(category("pre-kubernetes-setup", checks));
        Ok(cats)
    })
}

async fn control_plane_checks(c: &Client, cp_ns: &str) -> Vec<CheckResult> {
    let mut checks = vec![match k::replicas(c, cp_ns, m::DEPLOYMENT).await {
        Ok(r) => f::replicas(&format!("{cp_ns}/{}", m::DEPLOYMENT), r),
        Err(e) => CheckResult::fail(
            "control plane replicas are ready",
            e,
            "check the API server",
        ),
    }];
    match k::webhooks(c, m::WEBHOOK_CONFIGURATION).await {
        Ok(w) => {
            checks.push(p::webhook_registered(w.as_ref(), m::WEBHOOK_CONFIGURATION));
            checks.push(p::webhook_ca(w.as_ref()));
        }
        Err(e) => checks.push(CheckResult::fail(
            "the injector's MutatingWebhookConfiguration is registered",
            e,
            "check the API server",
        )),
    }
    let dry = k::dry_run_pod(c, DRY_RUN_NAMESPACE).await;
    checks.push(p::webhook_answers(DRY_RUN_NAMESPACE, &dry));
    let shipped = shipped_crds();
    checks.push(match k::crds(c, &shipped).await {
        Ok(stored) => f::crds_current(&f::crd_state(&shipped, &stored)),
        Err(e) => CheckResult::fail(
            "weft's CRDs are installed and current",
            e,
            "check the API server",
        ),
    });
    checks
}

async fn identity(c: &Client, cp_ns: &str, expiry_warning: Duration) -> Vec<CheckResult> {
    let names = control_plane::k8s::issuer::Names {
        namespace: cp_ns.to_string(),
        configmap: inject::DEFAULT_TRUST_ROOTS_CONFIGMAP.into(),
        secret: control_plane::k8s::KubeSettings::DEFAULT_ISSUER_SECRET.into(),
    };
    let (read, versions) = match k::identity_objects(c, &names).await {
        Ok((cm, secret, versions)) => (
            control_plane::k8s::issuer::snapshot(&names, cm.as_ref(), secret.as_ref())
                .map_err(|e| e.to_string()),
            versions,
        ),
        Err(e) => (Err(e), Default::default()),
    };
    let material = p::identity_material(read);
    let cfg = CheckConfig { expiry_warning };
    let now = OffsetDateTime::now_utc();
    let mut checks = identity_checks(material.as_ref().map_err(String::as_str), now, cfg);
    checks.push(match k::issuer_refusals(c, cp_ns).await {
        Ok(events) => p::refusals(&events, &versions),
        Err(e) => CheckResult::fail(
            "the control plane accepted the current trust anchors and issuer",
            e,
            "this user must be able to list Events in the control plane's namespace",
        ),
    });
    checks
}

/// The fleet view through the API server: a port-forward to a Ready
/// control-plane pod's admin port.
async fn fleet_through_api(c: &Client, cp_ns: &str) -> super::check::Fleet {
    let fetched = match t::fleet(c, cp_ns).await {
        Ok((pod, answer)) => {
            let source = format!("pod {cp_ns}/{pod} port {} (a port-forward)", t::ADMIN_PORT);
            super::check::parse_fleet(&source, Some(answer))
        }
        Err(e) => Err(e.to_string()),
    };
    super::check::judge_fleet(fetched, &t::hint(cp_ns))
}

async fn data_plane(c: &Client, a: &Cluster) -> Category {
    let (summary, mut checks, view) = match a.admin_addr.as_deref() {
        Some(addr) => super::check::fleet(addr),
        None => fleet_through_api(c, &a.controller_namespace).await,
    };
    let Some(view) = view else {
        return ("weft-data-plane".into(), summary, checks);
    };
    let view = match &a.namespace {
        Some(ns) => p::narrow(view, ns),
        None => view,
    };
    match k::injected_pods(c, a.namespace.as_deref()).await {
        Ok(pods) => {
            checks.push(p::pods_connected(&pods, &view));
            let cp_version = if view.version.is_empty() {
                control_plane::fleet::VERSION
            } else {
                &view.version
            };
            checks.push(p::proxy_versions(&pods, cp_version));
        }
        Err(e) => checks.push(CheckResult::fail(
            "every injected pod's proxy is connected and on the current trust bundle",
            e,
            "this user must be able to list pods",
        )),
    }
    checks.extend(control_plane::fleet_check::fleet_checks(
        &view,
        a.proxy_expiry_warning,
    ));
    let summary = Some(control_plane::fleet_check::summary(&view));
    ("weft-data-plane".into(), summary, checks)
}

/// `weft check` against a cluster.
pub fn cluster(a: &Cluster) -> Result<Vec<Category>, String> {
    runtime()?.block_on(async {
        let (mut cats, client) = api(a.kubeconfig.as_deref()).await;
        let Some(c) = client else {
            return Ok(cats);
        };
        if !a.proxy_only {
            let cp_ns = &a.controller_namespace;
            cats.push(category(
                "weft-control-plane",
                control_plane_checks(&c, cp_ns).await,
            ));
            cats.push(category(
                "weft-identity",
                identity(&c, cp_ns, a.expiry_warning).await,
            ));
        }
        cats.push(data_plane(&c, a).await);
        Ok(cats)
    })
}
