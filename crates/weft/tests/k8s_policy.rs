//! `weft control-plane --kubernetes` serves inbound policy from a real API
//! server: the guide's policy manifests applied unchanged, meshed pods that
//! kwok runs, WatchPort answers judged as a proxy judges them, and the same
//! verdicts from `weft policy explain` on `kubectl get -o yaml` output.
//!
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::Scratch;
use common::proc::Proc;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::{PortSpec, Server};
use testbed::k8s::K8sEnv;
use testbed::k8s::api::{self, DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::Pod;
use testbed::k8s::kube::api::Api;

const TRUST_DOMAIN: &str = "cluster.local";
/// The bed's subnet: pods and services of the test cluster.
const CLUSTER_NETWORKS: &str = "10.10.0.0/16";
const UNMESHED_IP: &str = "10.10.0.77";

fn crds() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control-plane/k8s/crds.yaml"
    )
}

fn kubectl(env: &K8sEnv, args: &[&str]) -> Result<String> {
    let out = testbed::run(env.kubectl().args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply` of YAML text, strict about fields as the API server is.
fn apply(env: &K8sEnv, s: &Scratch, name: &str, yaml: &str) -> Result<()> {
    let file = s.write(name, yaml);
    kubectl(
        env,
        &["apply", "--validate=strict", "-f", &file.to_string_lossy()],
    )?;
    Ok(())
}

fn identity(sa: &str, ns: &str, cp_ns: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.{cp_ns}.{TRUST_DOMAIN}")
}

/// A pod the injector would have marked as meshed by `cp_ns`.
fn meshed_pod(name: &str, ns: &str, sa: &str, cp_ns: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
    linkerd.io/control-plane-ns: {cp_ns}
{extra}spec:
  serviceAccountName: {sa}
  containers:
  - name: app
    image: app
    ports:
    - containerPort: 8080
      name: http
    - containerPort: 9090
      name: admin
    readinessProbe:
      httpGet:
        path: /ready
        port: admin
"
    )
}

async fn running(client: &testbed::k8s::kube::Client, ns: &str, name: &str) -> Result<IpAddr> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    poll(
        &format!("pod {ns}/{name} Running with an IP"),
        DEADLINE,
        || async {
            let p = pods.get(name).await?;
            let st = p.status.unwrap_or_default();
            Ok(match (st.phase.as_deref(), st.pod_ip) {
                (Some("Running"), Some(ip)) => Some(ip.parse()?),
                _ => None,
            })
        },
    )
    .await
}

/// The control plane in the cp namespace, on its loopback, in Kubernetes mode.
fn control_plane(env: &K8sEnv, s: &Scratch, cp_ns: &str) -> Proc {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(s.path("."));
    cmd.args([
        "control-plane",
        "--kubernetes",
        "--kubeconfig",
        &env.kubeconfig().to_string_lossy(),
        "--cluster-networks",
        CLUSTER_NETWORKS,
        "--controller-namespace",
        cp_ns,
        "--identity-trust-anchors-file",
        "ca.crt",
        "--identity-issuer-certificate-file",
        "issuer.crt",
        "--identity-issuer-key-file",
        "issuer.key",
        "--state-dir",
        "state",
        "--identity-addr",
        "127.0.0.1:0",
        "--destination-addr",
        "127.0.0.1:0",
        "--policy-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]);
    Proc::spawn_cmd(cmd)
}

/// A certificate for `sa` in `ns` from the control plane (join token).
fn certify(
    env: &K8sEnv,
    s: &Scratch,
    identity_addr: SocketAddr,
    sa: &str,
    ns: &str,
    cp_ns: &str,
) -> Result<()> {
    std::fs::create_dir_all(s.path("state"))?;
    let token = format!("{sa}.token");
    s.weft(&[
        "token",
        "create",
        "-n",
        ns,
        "--service-account",
        sa,
        "--state-dir",
        "state",
        "--out",
        &token,
    ])
    .ok();
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(s.path(".")).args([
        "certs",
        "request",
        &identity(sa, ns, cp_ns),
        &format!("{sa}.crt"),
        &format!("{sa}.key"),
        "--control-plane",
        &identity_addr.to_string(),
        "--roots",
        "ca.crt",
        "--token-file",
        &token,
        "--control-plane-identity",
        &identity("weft-identity", cp_ns, cp_ns),
    ]);
    testbed::run(&mut cmd)?;
    Ok(())
}

/// A client of the proxy's kind, as `explain --from` names it.
#[derive(Clone, Copy)]
enum Caller {
    Frontend,
    Other,
    Unmeshed,
}

impl Caller {
    const ALL: [Caller; 3] = [Caller::Frontend, Caller::Other, Caller::Unmeshed];

    fn explain_from(self, ns: &str, cp_ns: &str) -> String {
        match self {
            Caller::Frontend => identity("frontend", ns, cp_ns),
            Caller::Other => identity("other", ns, cp_ns),
            Caller::Unmeshed => "unmeshed".into(),
        }
    }

    fn client(self, ns: &str, cp_ns: &str) -> policy::Client {
        let ip: IpAddr = UNMESHED_IP.parse().expect("an IP");
        match self {
            Caller::Unmeshed => policy::Client {
                identity: None,
                tls: false,
                ip,
            },
            c => policy::Client {
                identity: c.explain_from(ns, cp_ns).parse().ok(),
                tls: true,
                ip,
            },
        }
    }
}

/// The verdict a proxy gives for one served policy.
fn proxy_verdict(server: &Server, client: &policy::Client, path: Option<&str>) -> Result<bool> {
    let typed = policy::Server::try_from(server.clone()).context("a well-formed policy")?;
    let req = path.map(|p| policy::Request {
        method: "GET".into(),
        path: p.into(),
        headers: vec![],
    });
    let traffic = match &req {
        Some(r) => policy::Traffic::Http(r),
        None => policy::Traffic::NotHttp,
    };
    Ok(policy::judge(&typed, policy::Facts::default(), client, traffic).allowed)
}

/// `weft policy explain` on exported objects: true when allowed.
fn explain_verdict(
    s: &Scratch,
    caller: Caller,
    ns: &str,
    cp_ns: &str,
    port: u16,
    path: Option<&str>,
) -> Result<bool> {
    let from = caller.explain_from(ns, cp_ns);
    let to = format!("{ns}/backend:{port}");
    let mut args = vec![
        "policy",
        "explain",
        "--resources",
        "exported",
        "--kubernetes",
        "--from",
        &from,
        "--from-ip",
        UNMESHED_IP,
        "--to",
        &to,
        "--controller-namespace",
        cp_ns,
        "--cluster-networks",
        CLUSTER_NETWORKS,
    ];
    if let Some(p) = path {
        args.extend(["--path", p]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(&args)
        .current_dir(s.path("."))
        .output()?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        other => bail!(
            "explain {args:?} exited {other:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `kubectl get -o yaml` of everything policy reads, into `exported/`.
fn export(env: &K8sEnv, s: &Scratch, ns: &str) -> Result<()> {
    let dir = s.path("exported");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let objects = kubectl(
        env,
        &[
            "get",
            "-n",
            ns,
            "-o",
            "yaml",
            "pods,servers.policy.linkerd.io,authorizationpolicies.policy.linkerd.io,meshtlsauthentications.policy.linkerd.io,networkauthentications.policy.linkerd.io,httproutes.policy.linkerd.io",
        ],
    )?;
    std::fs::write(dir.join("objects.yaml"), objects)?;
    std::fs::write(
        dir.join("namespace.yaml"),
        kubectl(env, &["get", "namespace", ns, "-o", "yaml"])?,
    )?;
    Ok(())
}

/// WatchPort for `ns/backend` as backend's proxy, from the cp namespace.
struct Watcher {
    rt: tokio::runtime::Runtime,
    streams: Vec<(u16, tonic::Streaming<Server>)>,
    latest: Vec<(u16, Server)>,
}

/// A runtime whose worker threads start inside the cp namespace, and a
/// connection to `addr` made on one of them (so its socket is made there),
/// authenticated as `sa`'s certificate.
fn cp_channel(
    env: &K8sEnv,
    s: &Scratch,
    addr: SocketAddr,
    sa: &str,
    cp_ns: &str,
) -> Result<(tokio::runtime::Runtime, tonic::transport::Channel)> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let rt = testbed::in_ns(&env.cp().ns, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    })??;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(s.read("ca.crt")))
        .domain_name(identity("weft-identity", cp_ns, cp_ns))
        .identity(Identity::from_pem(
            s.read(&format!("{sa}.crt")),
            s.read(&format!("{sa}.key")),
        ));
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?;
    let channel = rt.block_on(rt.spawn(async move { endpoint.connect().await }))??;
    Ok((rt, channel))
}

fn watch_ports(
    env: &K8sEnv,
    s: &Scratch,
    policy_addr: SocketAddr,
    ns: &str,
    cp_ns: &str,
    ports: &[u16],
) -> Result<Watcher> {
    let (rt, channel) = cp_channel(env, s, policy_addr, "backend", cp_ns)?;
    let workload = format!(r#"{{"ns":"{ns}","pod":"backend"}}"#);
    let ports = ports.to_vec();
    let task = rt.spawn(async move {
        let mut client = InboundServerPoliciesClient::new(channel);
        let mut streams = Vec::new();
        let mut latest = Vec::new();
        for port in ports {
            let spec = PortSpec {
                workload: workload.clone(),
                port: port.into(),
            };
            let mut stream = client
                .watch_port(spec)
                .await
                .map_err(|e| anyhow::anyhow!("WatchPort: {:?}: {}", e.code(), e.message()))?
                .into_inner();
            let first = stream
                .message()
                .await?
                .context("an empty WatchPort stream")?;
            streams.push((port, stream));
            latest.push((port, first));
        }
        anyhow::Ok((streams, latest))
    });
    let (streams, latest) = rt.block_on(task)??;
    Ok(Watcher {
        rt,
        streams,
        latest,
    })
}

impl Watcher {
    fn server(&self, port: u16) -> &Server {
        &self
            .latest
            .iter()
            .find(|(p, _)| *p == port)
            .expect("watched port")
            .1
    }

    /// Reads updates until `until` holds for `port`'s policy (deadline 30 s).
    fn wait(&mut self, port: u16, what: &str, until: impl Fn(&Server) -> bool) -> Result<Duration> {
        let t0 = Instant::now();
        let i = self
            .streams
            .iter()
            .position(|(p, _)| *p == port)
            .expect("watched port");
        while !until(&self.latest[i].1) {
            let left = Duration::from_secs(30)
                .checked_sub(t0.elapsed())
                .context(format!("{what}: not within 30s"))?;
            let stream = &mut self.streams[i].1;
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(left, stream.message()).await })
                .map_err(|_| anyhow::anyhow!("{what}: not within 30s"))??
                .context("the WatchPort stream ended")?;
            self.latest[i].1 = next;
        }
        Ok(t0.elapsed())
    }
}

#[test]
fn kubernetes_policy_matches_explain_and_updates_live() -> Result<()> {
    let Some(env) = K8sEnv::shared("kubernetes_policy_matches_explain_and_updates_live")? else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async { env.client() })?;
    kubectl(&env, &["apply", "--server-side", "-f", crds()])?;
    kubectl(
        &env,
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=60s",
            "-f",
            crds(),
        ],
    )?;
    let (ns, cp_ns) = rt.block_on(async {
        anyhow::Ok((
            api::namespace(&client, "pol").await?,
            api::namespace(&client, "weft").await?,
        ))
    })?;
    let s = Scratch::new();
    s.guide_material();
    for sa in ["backend", "frontend", "other"] {
        rt.block_on(api::service_account(&client, &ns, sa))?;
    }
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/guide/policy.yaml"
    ))?
    .replace("namespace: demo", &format!("namespace: {ns}"));
    apply(&env, &s, "policy.yaml", &guide)?;
    apply(
        &env,
        &s,
        "backend.yaml",
        &meshed_pod("backend", &ns, "backend", &cp_ns, ""),
    )?;
    let ip = rt.block_on(running(&client, &ns, "backend"))?;
    println!("backend pod Running at {ip}");

    let cp = control_plane(&env, &s, &cp_ns);
    let ia = cp.addr("identity listening on");
    let pa = cp.addr("policy listening on");
    let t0 = Instant::now();
    cp.wait_for_line("resources loaded", Duration::from_secs(30));
    println!(
        "control plane started -> Kubernetes resources loaded in {:.1?}",
        t0.elapsed()
    );
    certify(&env, &s, ia, "backend", &ns, &cp_ns)?;
    let mut w = watch_ports(&env, &s, pa, &ns, &cp_ns, &[8080, 9090])?;

    // The table: clients × ports × (not HTTP, GET /, GET /ready), WatchPort vs explain.
    export(&env, &s, &ns)?;
    let mut rows = Vec::new();
    for port in [8080u16, 9090] {
        for caller in Caller::ALL {
            for path in [None, Some("/"), Some("/ready")] {
                let served = proxy_verdict(w.server(port), &caller.client(&ns, &cp_ns), path)?;
                let explained = explain_verdict(&s, caller, &ns, &cp_ns, port, path)?;
                rows.push(format!(
                    "{port:<5} {:<70} {:<7} served={served:<5} explain={explained}",
                    caller.explain_from(&ns, &cp_ns),
                    path.unwrap_or("(tcp)")
                ));
                ensure!(
                    served == explained,
                    "WatchPort and explain disagree:\n{}",
                    rows.join("\n")
                );
            }
        }
    }
    println!("port  client{:65}traffic verdicts\n{}", "", rows.join("\n"));
    let frontend = Caller::Frontend.client(&ns, &cp_ns);
    ensure!(
        proxy_verdict(w.server(8080), &frontend, None)?,
        "the guide's policy must allow frontend on 8080"
    );
    ensure!(
        !proxy_verdict(w.server(8080), &Caller::Other.client(&ns, &cp_ns), None)?,
        "only frontend on 8080"
    );

    // Deleting the MeshTLSAuthentication denies frontend live.
    kubectl(
        &env,
        &[
            "delete",
            "-n",
            &ns,
            "meshtlsauthentications.policy.linkerd.io",
            "frontend-sa",
        ],
    )?;
    let took = w.wait(
        8080,
        "frontend denied after the MeshTLSAuthentication is deleted",
        |srv| proxy_verdict(srv, &frontend, None).is_ok_and(|a| !a),
    )?;
    println!("MeshTLSAuthentication deleted -> WatchPort update in {took:.1?}");

    probes_under_deny(&env, &s, &mut w, &ns, &cp_ns)?;
    refused_objects_grant_nothing(&env, &s, &mut w, &cp, (&guide, &ns, &cp_ns))?;
    drop(cp);
    Ok(())
}

/// A pod under `deny` still answers its kubelet probe path, unauthenticated;
/// other paths on that port stay denied.
fn probes_under_deny(
    env: &K8sEnv,
    s: &Scratch,
    w: &mut Watcher,
    ns: &str,
    cp_ns: &str,
) -> Result<()> {
    kubectl(
        env,
        &[
            "annotate",
            "--overwrite",
            "namespace",
            ns,
            "config.linkerd.io/default-inbound-policy=deny",
        ],
    )?;
    let unmeshed = Caller::Unmeshed.client(ns, cp_ns);
    let took = w.wait(9090, "port 9090 under deny", |srv| {
        proxy_verdict(srv, &unmeshed, Some("/")).is_ok_and(|a| !a)
    })?;
    println!("namespace annotated deny -> WatchPort update in {took:.1?}");
    ensure!(
        proxy_verdict(w.server(9090), &unmeshed, Some("/ready"))?,
        "the readiness probe path must stay allowed"
    );
    ensure!(
        !proxy_verdict(w.server(9090), &unmeshed, Some("/ready/x"))?,
        "only the probe path itself"
    );
    ensure!(
        !proxy_verdict(w.server(9090), &unmeshed, None)?,
        "a connection that is not HTTP is denied"
    );
    export(env, s, ns)?;
    for (path, want) in [(Some("/ready"), true), (Some("/"), false)] {
        let explained = explain_verdict(s, Caller::Unmeshed, ns, cp_ns, 9090, path)?;
        ensure!(
            explained == want,
            "explain of {path:?} on 9090 under deny: {explained}, want {want}"
        );
    }
    Ok(())
}

/// Objects the API accepts but weft refuses grant nothing: the guide's
/// AuthorizationPolicy with a second required authentication of a kind weft
/// cannot use is refused whole, so frontend is denied (a partial read,
/// dropping the bad reference, would let frontend in).
fn refused_objects_grant_nothing(
    env: &K8sEnv,
    s: &Scratch,
    w: &mut Watcher,
    cp: &Proc,
    (guide, ns, cp_ns): (&str, &str, &str),
) -> Result<()> {
    let frontend = Caller::Frontend.client(ns, cp_ns);
    apply(env, s, "policy.yaml", guide)?;
    w.wait(
        8080,
        "frontend allowed once the guide's policy is back",
        |srv| proxy_verdict(srv, &frontend, None).unwrap_or(false),
    )?;
    let bad = guide.replace(
        "    kind: MeshTLSAuthentication\n    group: policy.linkerd.io\n",
        "    kind: MeshTLSAuthentication\n    group: policy.linkerd.io\n  - name: frontend-sa\n    kind: Secret\n    group: \"\"\n",
    );
    ensure!(
        bad != guide,
        "the guide's AuthorizationPolicy changed shape"
    );
    apply(env, s, "bad-policy.yaml", &bad)?;
    let t0 = Instant::now();
    let line = loop {
        let out = cp.output();
        if let Some(l) = out.lines().find(|l| {
            l.contains("backend-allow-frontend") && l.contains("requiredAuthenticationRefs[1]")
        }) {
            break l.to_string();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "no refusal of AuthorizationPolicy backend-allow-frontend logged within 30s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("refusal logged after {:.1?}: {line}", t0.elapsed());
    w.wait(
        8080,
        "frontend denied once its AuthorizationPolicy is refused",
        |srv| proxy_verdict(srv, &frontend, None).is_ok_and(|a| !a),
    )?;
    // The same answer from a fresh WatchPort (no history) and from explain.
    let fresh = watch_ports(env, s, cp.addr("policy listening on"), ns, cp_ns, &[8080])?;
    ensure!(
        !proxy_verdict(fresh.server(8080), &frontend, None)?,
        "a fresh WatchPort granted frontend"
    );
    export(env, s, ns)?;
    ensure!(
        !explain_verdict(s, Caller::Frontend, ns, cp_ns, 8080, None)?,
        "explain granted frontend"
    );
    // Fixed: frontend is allowed again, live.
    apply(env, s, "policy.yaml", guide)?;
    let took = w.wait(
        8080,
        "frontend allowed once the AuthorizationPolicy is fixed",
        |srv| proxy_verdict(srv, &frontend, None).unwrap_or(false),
    )?;
    println!("AuthorizationPolicy fixed -> WatchPort update in {took:.1?}");
    Ok(())
}

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
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async { env.client() })?;
    let (ns, cp_ns) = rt.block_on(async {
        anyhow::Ok((
            api::namespace(&client, "dst").await?,
            api::namespace(&client, "weft").await?,
        ))
    })?;
    let s = Scratch::new();
    s.guide_material();
    for sa in ["web", "plain"] {
        rt.block_on(api::service_account(&client, &ns, sa))?;
    }
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
    let cp = control_plane(&env, &s, &cp_ns);
    let ia = cp.addr("identity listening on");
    let da = cp.addr("destination listening on");
    cp.wait_for_line("resources loaded", Duration::from_secs(30));
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
