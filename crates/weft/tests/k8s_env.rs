//! The Kubernetes test environment works end to end through kube-rs: a real
//! API server, controller-manager, scheduler and kwok fake node, all inside
//! the test bed's cp network namespace. One environment for this binary,
//! a Kubernetes namespace per test.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries, which the
//! first test builds if they are missing (Go >= 1.26); skips loudly without
//! Go unless WEFT_REQUIRE_K8S=1.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use testbed::k8s::api::{self, BoundTo, DEADLINE, poll};
use testbed::k8s::futures::StreamExt;
use testbed::k8s::k8s_openapi::api::apps::v1::Deployment;
use testbed::k8s::k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use testbed::k8s::k8s_openapi::api::core::v1::{Pod, Service};
use testbed::k8s::k8s_openapi::api::discovery::v1::EndpointSlice;
use testbed::k8s::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use testbed::k8s::kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use testbed::k8s::kube::runtime::{WatchStreamExt, reflector, wait, watcher};
use testbed::k8s::{K8sEnv, POD_CIDR, kube};

const AUDIENCE: &str = "identity.l5d.io";

async fn env(test: &'static str) -> Option<Arc<K8sEnv>> {
    tokio::task::spawn_blocking(move || K8sEnv::shared(test))
        .await
        .expect("start thread")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn net_ns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_runs_only_in_the_cp_namespace_with_kubectl_of_its_version() -> Result<()> {
    let Some(env) =
        env("control_plane_runs_only_in_the_cp_namespace_with_kubectl_of_its_version").await
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let t = &env.timings;
    println!(
        "timing: build {:.1?} ({}), up to ready (API server, fake node Ready, default ServiceAccount) {:.1?}",
        t.build,
        if t.built_now { "built now" } else { "cached" },
        t.up
    );
    let cp_ns = net_ns_inode(&format!("/var/run/netns/{}", env.cp().ns));
    let ours = net_ns_inode("/proc/self/ns/net");
    for (component, pid) in env.pids()? {
        let theirs = net_ns_inode(&format!("/proc/{pid}/ns/net"));
        ensure!(
            theirs == cp_ns,
            "{component} (pid {pid}) is not in the cp network namespace"
        );
        ensure!(
            theirs != ours,
            "{component} (pid {pid}) runs in the host's network namespace"
        );
    }
    let versions = testbed::run(env.kubectl().args(["version", "-o", "json"]))?;
    let v: serde_json::Value = serde_json::from_slice(&versions.stdout)?;
    let want = std::fs::read_to_string(testbed::k8s::testenv_dir().join("versions.env"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("K8S_VERSION=")
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        })
        .context("K8S_VERSION in versions.env")?;
    ensure!(
        v["clientVersion"]["gitVersion"] == want.as_str(),
        "kubectl is not {want}: {v}"
    );
    ensure!(
        v["serverVersion"]["gitVersion"] == want.as_str(),
        "the API server is not {want}: {v}"
    );
    let nodes = testbed::run(env.kubectl().args([
        "get",
        "node",
        "kwok-node-0",
        "-o",
        "jsonpath={.spec.podCIDR} {.status.conditions[?(@.type==\"Ready\")].status}",
    ]))?;
    let nodes = String::from_utf8_lossy(&nodes.stdout);
    ensure!(
        nodes == format!("{POD_CIDR} True"),
        "kwok-node-0: {nodes:?}, want {POD_CIDR} True"
    );
    println!("kubectl {want} (client and server); kwok-node-0 Ready with pod CIDR {POD_CIDR}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_is_applied_and_watched_through_a_reflector() -> Result<()> {
    let Some(env) = env("a_crd_is_applied_and_watched_through_a_reflector").await else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let client = env.client()?;
    let ns = api::namespace(&client, "crd").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "widgets.testenv.weft.dev";
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": "testenv.weft.dev", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"],
                        "properties": {"size": {"type": "integer", "minimum": 1}}}}}}}]}});
    crds.patch(
        name,
        &PatchParams::apply("k8s-env-test").force(),
        &Patch::Apply(crd),
    )
    .await?;
    tokio::time::timeout(
        DEADLINE,
        wait::await_condition(crds, name, wait::conditions::is_crd_established()),
    )
    .await
    .context("CRD not Established in time")??;

    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "testenv.weft.dev",
        "v1alpha1",
        "Widget",
    ));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let writer = reflector::store::Writer::new(ar.clone());
    let store = writer.as_reader();
    // the watcher retries while the new group is not yet served (discovery lags Established)
    let stream = reflector(
        writer,
        watcher(widgets.clone(), watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(DEADLINE, store.wait_until_ready())
        .await
        .context("reflector never listed")??;

    let size_of = |n: &str| {
        store
            .state()
            .into_iter()
            .find(|o| o.metadata.name.as_deref() == Some(n))
            .and_then(|o| o.data["spec"]["size"].as_i64())
    };
    let obj = json!({"apiVersion": "testenv.weft.dev/v1alpha1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}});
    widgets
        .patch(
            "w",
            &PatchParams::apply("k8s-env-test"),
            &Patch::Apply(&obj),
        )
        .await?;
    poll(
        "the reflector sees widget w with size 1",
        DEADLINE,
        || async { Ok((size_of("w") == Some(1)).then_some(())) },
    )
    .await?;
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await?;
    poll(
        "the reflector sees widget w change to size 2",
        DEADLINE,
        || async { Ok((size_of("w") == Some(2)).then_some(())) },
    )
    .await?;
    // the schema is enforced: the API server refuses size 0
    let bad = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 0}})),
        )
        .await;
    ensure!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 422),
        "size 0 was not refused: {bad:?}"
    );
    widgets.delete("w", &DeleteParams::default()).await?;
    poll("the reflector sees widget w deleted", DEADLINE, || async {
        Ok(size_of("w").is_none().then_some(()))
    })
    .await?;
    task.abort();
    println!(
        "CRD {name}: Established, watched: added (size 1), modified (size 2), invalid refused, deleted"
    );
    Ok(())
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"serviceAccountName": name,
                    "containers": [{"name": "app", "image": "registry.invalid/app:1",
                        "ports": [{"containerPort": 8080, "name": "http"}]}]}}}
    }))?)
}

fn in_pod_cidr(ip: Ipv4Addr) -> bool {
    let (net, bits) = POD_CIDR.split_once('/').expect("CIDR");
    let net: Ipv4Addr = net.parse().expect("CIDR address");
    let mask = u32::MAX << (32 - bits.parse::<u32>().expect("CIDR prefix"));
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Running pods of `app` with their IPs, from the reflector's store.
fn running(store: &reflector::Store<Pod>) -> Vec<(String, String, Ipv4Addr)> {
    let mut out = Vec::new();
    for p in store.state() {
        let status = p.status.clone().unwrap_or_default();
        let ip = status.pod_ip.as_deref().and_then(|s| s.parse().ok());
        if status.phase.as_deref() == Some("Running")
            && p.metadata.deletion_timestamp.is_none()
            && let Some(ip) = ip
        {
            let name = p.metadata.name.clone().unwrap_or_default();
            out.push((name, p.metadata.uid.clone().unwrap_or_default(), ip));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_get_bed_addresses_endpoint_slices_and_pod_bound_tokens() -> Result<()> {
    let Some(env) =
        env("deployment_pods_get_bed_addresses_endpoint_slices_and_pod_bound_tokens").await
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let client = env.client()?;
    let ns = api::namespace(&client, "web").await?;
    api::service_account(&client, &ns, "web").await?;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            pods_api.clone(),
            watcher::Config::default().labels("app=web"),
        ),
    );
    let task = tokio::spawn(stream.default_backoff().for_each(|_| async {}));

    let t0 = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await?;
    let pods = poll(
        "2 Running pods of Deployment web with IPs",
        DEADLINE,
        || async {
            let r = running(&store);
            // kwok can hand out an address a live pod holds (one it
            // released twice is in its pool twice): that pod leaves the app,
            // keeping the spare address, and its ReplicaSet makes another.
            if let Some((name, _, ip)) = r.iter().skip(1).find(|p| r[0].2 == p.2) {
                println!("kwok gave {name} the address {ip} another pod holds; it leaves app web");
                let patch = json!({"metadata": {"labels": {"app": "kwok-spare-address"}}});
                pods_api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                return Ok(None);
            }
            Ok((r.len() == 2).then_some(r))
        },
    )
    .await?;
    println!(
        "timing: Deployment created -> 2 pods Running with IPs in {:.1?}",
        t0.elapsed()
    );
    for (name, _, ip) in &pods {
        ensure!(
            in_pod_cidr(*ip),
            "pod {name} got {ip}, outside the bed's pod range {POD_CIDR}"
        );
    }
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.2).collect();
    ensure!(ips.len() == 2, "two pods share an IP: {pods:?}");
    println!("pods: {pods:?}");

    endpoint_slice_lists(&client, &ns, &ips).await?;
    stand_ins_reach_each_other(&env, &pods).await?;
    pod_bound_token(&client, &ns, &pods[0], &pods_api).await?;
    task.abort();
    Ok(())
}

async fn endpoint_slice_lists(
    client: &kube::Client,
    ns: &str,
    ips: &BTreeSet<Ipv4Addr>,
) -> Result<()> {
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?;
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("kubernetes.io/service-name=web");
    let t0 = Instant::now();
    let listed = poll(
        "EndpointSlice of Service web lists both pod IPs, ready",
        DEADLINE,
        || async {
            let mut ready = BTreeSet::new();
            for s in slices.list(&lp).await? {
                for e in s.endpoints.unwrap_or_default() {
                    if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                        ready.extend(
                            e.addresses
                                .iter()
                                .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
                        );
                    }
                }
            }
            Ok((&ready == ips).then_some(ready))
        },
    )
    .await?;
    println!(
        "EndpointSlice for Service web: {listed:?} ready after {:.1?}",
        t0.elapsed()
    );
    Ok(())
}

/// Stand-in pods take the two pod IPs; the second reaches an echo server
/// in the first at its pod IP, and is seen from its own pod IP.
async fn stand_ins_reach_each_other(
    env: &K8sEnv,
    pods: &[(String, String, Ipv4Addr)],
) -> Result<()> {
    let a = env.stand_in("web-a", pods[0].2)?;
    let b = env.stand_in("web-b", pods[1].2)?;
    let listener = testbed::in_ns(&a.ns, || TcpListener::bind(("0.0.0.0", 8080)))??;
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut s, peer) = listener.accept()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        s.write_all(&buf[..n])?;
        Ok(peer)
    });
    let to = SocketAddr::from((a.ip, 8080));
    let back = testbed::in_ns(&b.ns, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"hello pod")?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf)?;
        Ok(buf[..n].to_vec())
    })??;
    let peer = server.join().expect("echo thread")?;
    ensure!(back == b"hello pod", "echo from {to} answered {back:?}");
    ensure!(
        peer.ip() == std::net::IpAddr::V4(b.ip),
        "the echo server saw {peer}, not pod IP {}",
        b.ip
    );
    println!("stand-in {} -> {to}: echoed, seen from {peer}", b.ip);
    Ok(())
}

async fn review(client: &kube::Client, token: &str, audience: &str) -> Result<TokenReview> {
    let rev = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![audience.to_string()]),
        },
        ..Default::default()
    };
    Ok(Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &rev)
        .await?)
}

/// TokenRequest bound to a pod, TokenReview accepts it for its audience
/// only, and refuses it once the pod is gone.
async fn pod_bound_token(
    client: &kube::Client,
    ns: &str,
    pod: &(String, String, Ipv4Addr),
    pods_api: &Api<Pod>,
) -> Result<()> {
    let (name, uid, _) = pod;
    let bound = BoundTo {
        kind: "Pod",
        name: name.clone(),
        uid: uid.clone(),
    };
    let token = api::token(
        client,
        ns,
        "web",
        AUDIENCE,
        Some(bound),
        Duration::from_secs(3600),
    )
    .await?;
    let st = review(client, &token, AUDIENCE)
        .await?
        .status
        .context("TokenReview without status")?;
    ensure!(
        st.authenticated == Some(true),
        "TokenReview refused a fresh token: {st:?}"
    );
    let user = st.user.clone().context("no user")?;
    ensure!(
        user.username.as_deref() == Some(&format!("system:serviceaccount:{ns}:web")),
        "user {user:?}"
    );
    let extra = user.extra.clone().unwrap_or_default();
    ensure!(
        extra.get("authentication.kubernetes.io/pod-name") == Some(&vec![name.clone()])
            && extra.get("authentication.kubernetes.io/pod-uid") == Some(&vec![uid.clone()]),
        "the review does not name pod {name} ({uid}): {extra:?}"
    );
    ensure!(
        st.audiences == Some(vec![AUDIENCE.to_string()]),
        "audiences {:?}",
        st.audiences
    );
    let other = review(client, &token, "other.example")
        .await?
        .status
        .context("no status")?;
    ensure!(
        other.authenticated != Some(true),
        "a token for {AUDIENCE} passed for another audience: {other:?}"
    );
    println!(
        "TokenReview: {:?} bound to pod {name}; other audience refused: {:?}",
        user.username, other.error
    );

    pods_api
        .delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    let t0 = Instant::now();
    let refused = poll(
        "TokenReview refuses the token of a deleted pod",
        DEADLINE,
        || async {
            let st = review(client, &token, AUDIENCE)
                .await?
                .status
                .unwrap_or_default();
            Ok((st.authenticated != Some(true)).then_some(st.error))
        },
    )
    .await?;
    println!(
        "pod {name} deleted: its token refused after {:.1?}: {refused:?}",
        t0.elapsed()
    );
    if refused.is_none() {
        bail!("the refusal gives no reason");
    }
    Ok(())
}
