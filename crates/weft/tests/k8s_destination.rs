//! The destination service in Kubernetes mode, against a real API server:
//! pod addresses, the cluster networks, Services and their EndpointSlices.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::kube::{
    Tenant, apply, certify, control_plane, cp_channel, identity, install_identity,
    least_privilege_kubeconfig, meshed_pod, running, tenant,
};
use testbed::k8s::K8sEnv;
use testbed::k8s::api;

/// The destination service in Kubernetes mode: a meshed pod's address with
/// its identity, an unmeshed pod's and an outside address as not meshed,
/// an address inside the cluster networks that nothing owns refused.
#[test]
fn destination_answers_for_cluster_addresses() -> Result<()> {
    use linkerd2_proxy_api::destination::destination_client::DestinationClient;
    use linkerd2_proxy_api::destination::{GetDestination, update};
    let Some(env) = K8sEnv::shared("destination_answers_for_cluster_addresses")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("dst", &["web", "plain"], &env)?;
    apply(
        &env,
        &s,
        "web.yaml",
        &meshed_pod("web", &ns, "web", &cp_ns, ""),
    )?;
    let plain = meshed_pod("plain", &ns, "plain", &cp_ns, "")
        .replace(&format!("    linkerd.io/control-plane-ns: {cp_ns}\n"), "");
    apply(&env, &s, "plain.yaml", &plain)?;
    let web_ip = rt.block_on(running(&client, &ns, "web"))?;
    let plain_ip = rt.block_on(running(&client, &ns, "plain"))?;
    let kubeconfig = rt.block_on(least_privilege_kubeconfig(&env, &client, &cp_ns, &s))?;
    install_identity(&env, &s, &cp_ns)?;
    let cp = control_plane(&env, &s, &cp_ns, &kubeconfig);
    let ia = cp.addr("identity listening on");
    let da = cp.addr("destination listening on");
    common::kube::serving(&cp);
    certify(&env, &s, ia, "web", &ns, &cp_ns)?;
    let (crt, channel) = cp_channel(&env, &s, da, "web", &cp_ns)?;
    // Nothing in the bed's pod range is at .250 (kwok hands out from .129).
    let cases = [
        (format!("{web_ip}:8080"), Some(identity("web", &ns, &cp_ns))),
        (format!("{plain_ip}:8080"), None),
        ("192.0.2.10:443".to_string(), None),
    ];
    for (path, want) in cases {
        let mut c = DestinationClient::new(channel.clone());
        let p = path.clone();
        let first = crt.block_on(crt.spawn(async move {
            let mut stream = c
                .get(GetDestination {
                    path: p,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok(stream.message().await?)
        }))??;
        let Some(update::Update::Add(set)) = first.and_then(|u| u.update) else {
            bail!("{path}: no Add");
        };
        let got = set
            .addrs
            .first()
            .and_then(|a| a.tls_identity.as_ref())
            .and_then(|t| match &t.strategy {
                Some(linkerd2_proxy_api::destination::tls_identity::Strategy::DnsLikeIdentity(
                    d,
                )) => Some(d.name.clone()),
                _ => None,
            });
        println!("{path}: identity {got:?}");
        ensure!(got == want, "{path}: identity {got:?}, want {want:?}");
    }
    let mut c = DestinationClient::new(channel.clone());
    let refused = crt.block_on(crt.spawn(async move {
        match c
            .get(GetDestination {
                path: "10.10.0.250:80".into(),
                ..Default::default()
            })
            .await
        {
            Ok(mut stream) => stream.get_mut().message().await.map(|_| ()),
            Err(e) => Err(e),
        }
    }))?;
    let e = refused
        .err()
        .context("an unowned address inside the cluster networks was answered")?;
    println!("10.10.0.250:80: {:?}: {}", e.code(), e.message());
    ensure!(
        e.code() == tonic::Code::FailedPrecondition && e.message().contains("cluster networks"),
        "{e:?}"
    );
    drop(cp);
    Ok(())
}

type Endpoints = std::collections::BTreeMap<std::net::SocketAddr, Option<String>>;

/// Follows one destination path on the cp-namespace runtime, keeping the
/// endpoint set the updates describe (as a proxy keeps it).
fn follow(
    rt: &tokio::runtime::Runtime,
    channel: &tonic::transport::Channel,
    path: String,
) -> tokio::sync::watch::Receiver<Option<Endpoints>> {
    use linkerd2_proxy_api::destination::destination_client::DestinationClient;
    use linkerd2_proxy_api::destination::{GetDestination, tls_identity, update};
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut client = DestinationClient::new(channel.clone());
    rt.spawn(async move {
        let Ok(resp) = client
            .get(GetDestination {
                path,
                ..Default::default()
            })
            .await
        else {
            return;
        };
        let mut stream = resp.into_inner();
        let mut set = Endpoints::new();
        while let Ok(Some(u)) = stream.message().await {
            match u.update {
                Some(update::Update::Add(add)) => {
                    for a in add.addrs {
                        let Some(addr) =
                            a.addr.and_then(|x| std::net::SocketAddr::try_from(x).ok())
                        else {
                            continue;
                        };
                        let id = a.tls_identity.and_then(|t| match t.strategy {
                            Some(tls_identity::Strategy::DnsLikeIdentity(d)) => Some(d.name),
                            _ => None,
                        });
                        set.insert(addr, id);
                    }
                }
                Some(update::Update::Remove(r)) => {
                    for a in r.addrs {
                        if let Ok(addr) = std::net::SocketAddr::try_from(a) {
                            set.remove(&addr);
                        }
                    }
                }
                Some(update::Update::NoEndpoints(_)) => set.clear(),
                None => {}
            }
            tx.send_replace(Some(set.clone()));
        }
    });
    rx
}

/// Ready pods of `app` and their addresses, from the API.
async fn ready_pods(
    client: &testbed::k8s::kube::Client,
    ns: &str,
) -> Result<Vec<std::net::IpAddr>> {
    use testbed::k8s::k8s_openapi::api::core::v1::Pod;
    use testbed::k8s::kube::api::{Api, ListParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut ips = Vec::new();
    for p in pods.list(&ListParams::default().labels("app=web")).await? {
        let st = p.status.unwrap_or_default();
        let ready = st
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready
            && p.metadata.deletion_timestamp.is_none()
            && let Some(ip) = st.pod_ip
        {
            ips.push(ip.parse()?);
        }
    }
    ips.sort();
    Ok(ips)
}

/// A Deployment scaled 1 -> 3 -> 0: the Service's endpoints follow, by
/// cluster IP, by name and headless, each with its pod's identity; the
/// named targetPort resolves to the container port.
#[test]
fn service_endpoints_follow_a_scaling_deployment() -> Result<()> {
    let Some(env) = K8sEnv::shared("service_endpoints_follow_a_scaling_deployment")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("svc", &["web"], &env)?;
    let manifests = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
        linkerd.io/control-plane-ns: {cp_ns}
    spec:
      serviceAccountName: web
      containers:
      - name: app
        image: app
        ports:
        - containerPort: 8080
          name: http
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  selector:
    app: web
  ports:
  - name: web
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
  namespace: {ns}
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - port: 8080
"
    );
    apply(&env, &s, "web.yaml", &manifests)?;
    let cluster_ip = common::kube::kubectl(
        &env,
        &[
            "get",
            "service",
            "-n",
            &ns,
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    println!("Service web has cluster IP {cluster_ip}");
    let kubeconfig = rt.block_on(least_privilege_kubeconfig(&env, &client, &cp_ns, &s))?;
    install_identity(&env, &s, &cp_ns)?;
    let cp = control_plane(&env, &s, &cp_ns, &kubeconfig);
    let ia = cp.addr("identity listening on");
    let da = cp.addr("destination listening on");
    common::kube::serving(&cp);
    certify(&env, &s, ia, "web", &ns, &cp_ns)?;
    let (crt, channel) = cp_channel(&env, &s, da, "web", &cp_ns)?;
    let want_id = identity("web", &ns, &cp_ns);
    let paths = [
        format!("{cluster_ip}:80"),
        format!("web.{ns}.svc.cluster.local:80"),
        format!("web-headless.{ns}.svc.cluster.local:8080"),
    ];
    let followers: Vec<_> = paths
        .iter()
        .map(|p| (p.clone(), follow(&crt, &channel, p.clone())))
        .collect();
    for replicas in [1usize, 3, 0] {
        let t0 = std::time::Instant::now();
        common::kube::kubectl(
            &env,
            &[
                "scale",
                "-n",
                &ns,
                "deployment/web",
                &format!("--replicas={replicas}"),
            ],
        )?;
        let ips = rt.block_on(api::poll(
            &format!("{replicas} ready pods of web"),
            Duration::from_secs(60),
            || async {
                let ips = ready_pods(&client, &ns).await?;
                Ok((ips.len() == replicas).then_some(ips))
            },
        ))?;
        for (path, rx) in &followers {
            let want: Endpoints = ips
                .iter()
                .map(|ip| (std::net::SocketAddr::new(*ip, 8080), Some(want_id.clone())))
                .collect();
            let mut rx = rx.clone();
            let seen = crt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    rx.wait_for(|s| s.as_ref() == Some(&want)),
                )
                .await
                .map(|r| r.map(|v| v.clone()))
            });
            match seen {
                Ok(Ok(_)) => println!(
                    "{replicas} replicas: {path} -> {} endpoints with identities after {:.1?}",
                    want.len(),
                    t0.elapsed()
                ),
                _ => bail!(
                    "{path}: endpoints {:?}, want {want:?} within 30s",
                    rx.borrow().clone()
                ),
            }
        }
    }
    drop(cp);
    Ok(())
}
