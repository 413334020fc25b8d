//! Kubernetes-mode helpers for the end-to-end tests: the control plane
//! inside the test environment's cp namespace, certificates from it, gRPC
//! channels made from inside that namespace, and kubectl.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::{PortSpec, Server};
use testbed::k8s::K8sEnv;
use testbed::k8s::api::{DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::Pod;
use testbed::k8s::kube::api::Api;

use super::Scratch;
use super::proc::Proc;

pub const TRUST_DOMAIN: &str = "cluster.local";
/// The bed's subnet: pods and services of the test cluster.
pub const CLUSTER_NETWORKS: &str = "10.10.0.0/16";
pub const UNMESHED_IP: &str = "10.10.0.77";

pub fn crds() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../control-plane/k8s/crds.yaml"
    )
}

pub fn kubectl(env: &K8sEnv, args: &[&str]) -> Result<String> {
    let out = testbed::run(env.kubectl().args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl apply` of YAML text, strict about fields as the API server is.
pub fn apply(env: &K8sEnv, s: &Scratch, name: &str, yaml: &str) -> Result<()> {
    let file = s.write(name, yaml);
    kubectl(
        env,
        &["apply", "--validate=strict", "-f", &file.to_string_lossy()],
    )?;
    Ok(())
}

pub fn identity(sa: &str, ns: &str, cp_ns: &str) -> String {
    format!("{sa}.{ns}.serviceaccount.identity.{cp_ns}.{TRUST_DOMAIN}")
}

/// A pod the injector would have marked as meshed by `cp_ns`.
pub fn meshed_pod(name: &str, ns: &str, sa: &str, cp_ns: &str, extra: &str) -> String {
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

pub async fn running(client: &testbed::k8s::kube::Client, ns: &str, name: &str) -> Result<IpAddr> {
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

/// weft's CRDs applied and established.
pub fn install_crds(env: &K8sEnv) -> Result<()> {
    kubectl(env, &["apply", "--server-side", "-f", crds()])?;
    kubectl(
        env,
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=60s",
            "-f",
            crds(),
        ],
    )?;
    Ok(())
}

/// The guide's policy manifests (tests/fixtures/guide), in namespace `ns`.
pub fn guide_policy(ns: &str) -> Result<String> {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/guide/policy.yaml"
    ))?;
    Ok(guide.replace("namespace: demo", &format!("namespace: {ns}")))
}

/// The guide's anchor and issuer put where Kubernetes mode reads them: the
/// trust-roots ConfigMap and the issuer Secret in `cp_ns`, with kubectl.
pub fn install_identity(env: &K8sEnv, s: &Scratch, cp_ns: &str) -> Result<()> {
    let ca = s.path("ca.crt");
    kubectl(
        env,
        &[
            "create",
            "configmap",
            "-n",
            cp_ns,
            "linkerd-identity-trust-roots",
            &format!("--from-file=ca-bundle.crt={}", ca.display()),
        ],
    )?;
    kubectl(
        env,
        &[
            "create",
            "secret",
            "tls",
            "-n",
            cp_ns,
            "linkerd-identity-issuer",
            &format!("--cert={}", s.path("issuer.crt").display()),
            &format!("--key={}", s.path("issuer.key").display()),
        ],
    )?;
    Ok(())
}

/// The control plane in the cp namespace, on its loopback, in Kubernetes
/// mode, as the weft-identity ServiceAccount under the shipped RBAC, with
/// the guide's anchor and issuer (`install_identity`).
pub fn control_plane(env: &K8sEnv, s: &Scratch, cp_ns: &str, kubeconfig: &std::path::Path) -> Proc {
    control_plane_with(env, s, cp_ns, kubeconfig, &[])
}

/// [`control_plane`] with `extra` flags, each replacing the default it names
/// (weft's CRDs applied first).
pub fn control_plane_with(
    env: &K8sEnv,
    s: &Scratch,
    cp_ns: &str,
    kubeconfig: &std::path::Path,
    extra: &[&str],
) -> Proc {
    // The issuance record lives in IssuanceRecord objects: no Certify
    // (and no /ready) without weft's CRDs.
    if let Err(e) = install_crds(env) {
        panic!("cannot install weft's CRDs: {e:#}");
    }
    let kubeconfig = kubeconfig.to_string_lossy();
    let mut args = vec![
        "control-plane",
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--cluster-networks",
        CLUSTER_NETWORKS,
        "--controller-namespace",
        cp_ns,
    ];
    args.extend(super::LOOPBACK_LISTENERS);
    // These tests certify one pod many times in a row and in parallel, as
    // no proxy does; the limits have their own test (limits/certify.rs).
    args.extend([
        "--certify-rate-per-client",
        "1000/s:1000",
        "--certify-refusals-per-peer",
        "10000/s:10000",
        "--certify-rate-global",
        "10000/s:10000",
    ]);
    super::replace_defaults(&mut args, extra);
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(s.path(".")).args(args);
    Proc::spawn_cmd(cmd)
}

/// Waits until the control plane serves: Kubernetes resources loaded and
/// its own certificate issued (the line follows the certificate's entry in
/// force, so TLS to it no longer ends in "no server certificate").
pub fn serving(cp: &Proc) {
    cp.wait_for_line("resources loaded", Duration::from_secs(30));
    cp.wait_for_line("control plane certificate issued", Duration::from_secs(30));
}

/// A certificate for `sa` in `ns` from the control plane (a join token
/// signed with the key of its Secret weft-join-token-key).
pub fn certify(
    env: &K8sEnv,
    s: &Scratch,
    identity_addr: SocketAddr,
    sa: &str,
    ns: &str,
    cp_ns: &str,
) -> Result<()> {
    // Signed with the key of the Secret every replica verifies with.
    super::join::join_token(env, s, cp_ns, ns, sa)?;
    let token = format!("{sa}.token");
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

/// A runtime whose worker threads start inside the cp namespace, and a
/// connection to `addr` made on one of them (so its socket is made there),
/// authenticated as `sa`'s certificate.
pub fn cp_channel(
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

/// The audience of a token for the API server itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Applies the shipped RBAC with `cp_ns` for `weft`, and a kubeconfig with
/// a token of its ServiceAccount.
pub async fn least_privilege_kubeconfig(
    env: &K8sEnv,
    admin: &testbed::k8s::kube::Client,
    cp_ns: &str,
    scratch: &Scratch,
) -> Result<std::path::PathBuf> {
    let rbac = control_plane::k8s_manifests::RBAC
        .replace("namespace: weft\n", &format!("namespace: {cp_ns}\n"))
        // Cluster-scoped names per control plane, so tests sharing one API
        // server never rebind each other's ClusterRole.
        .replace(
            "name: weft-control-plane\n",
            &format!("name: weft-control-plane-{cp_ns}\n"),
        );
    ensure!(
        !rbac.contains("namespace: weft\n"),
        "rbac.yaml names namespace weft in another form"
    );
    let file = scratch.write("rbac.yaml", &rbac);
    testbed::run(env.kubectl().args(["apply", "-f"]).arg(&file))?;
    kubeconfig_for(env, admin, cp_ns, scratch).await
}

/// A kubeconfig with a token of `cp_ns`'s weft-identity ServiceAccount
/// (its RBAC applied already, e.g. by `weft install`), checked not to be admin.
pub async fn kubeconfig_for(
    env: &K8sEnv,
    admin: &testbed::k8s::kube::Client,
    cp_ns: &str,
    scratch: &Scratch,
) -> Result<std::path::PathBuf> {
    let token = testbed::k8s::api::token(
        admin,
        cp_ns,
        "weft-identity",
        API_AUDIENCE,
        None,
        std::time::Duration::from_secs(7200),
    )
    .await?;
    let server = env.config().cluster_url.to_string();
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server.trim_end_matches('/'),
            "certificate-authority": env.ca_file()}}],
        "users": [{"name": "weft-identity", "user": {"token": token}}],
        "contexts": [{"name": "weft", "context": {"cluster": "test", "user": "weft-identity", "namespace": cp_ns}}],
        "current-context": "weft",
    });
    let path = scratch.write("weft-identity.kubeconfig", serde_json::to_vec_pretty(&kc)?);
    // Not admin: it may not list the namespace's Secrets without a name.
    let denied = env
        .cp_cmd(env.bins().path("kubectl"))
        .args(["--kubeconfig"])
        .arg(&path)
        .args(["get", "secrets", "-n", cp_ns])
        .output()?;
    ensure!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "weft-identity may list every Secret: {}",
        String::from_utf8_lossy(&denied.stderr)
    );
    Ok(path)
}

/// One test's share of the environment: a runtime and an admin client, a
/// namespace for its workloads (with these ServiceAccounts), one for its
/// control plane, and a scratch directory holding the guide's anchor and
/// issuer.
pub struct Tenant {
    pub rt: tokio::runtime::Runtime,
    pub client: testbed::k8s::kube::Client,
    pub ns: String,
    pub cp_ns: String,
    pub s: Scratch,
}

pub fn tenant(prefix: &str, sas: &[&str], env: &K8sEnv) -> Result<Tenant> {
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async { env.client() })?;
    let (ns, cp_ns) = rt.block_on(async {
        let ns = testbed::k8s::api::namespace(&client, prefix).await?;
        for sa in sas {
            testbed::k8s::api::service_account(&client, &ns, sa).await?;
        }
        anyhow::Ok((ns, testbed::k8s::api::namespace(&client, "weft").await?))
    })?;
    let s = Scratch::new();
    s.guide_material();
    Ok(Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    })
}

/// WatchPort for `ns/backend` as backend's proxy, from the cp namespace.
pub struct Watcher {
    rt: tokio::runtime::Runtime,
    streams: Vec<(u16, tonic::Streaming<Server>)>,
    latest: Vec<(u16, Server)>,
}

pub fn watch_ports(
    env: &K8sEnv,
    s: &Scratch,
    policy_addr: SocketAddr,
    ns: &str,
    cp_ns: &str,
    ports: &[u16],
) -> Result<Watcher> {
    watch_pod_ports(env, s, policy_addr, (ns, "backend"), cp_ns, ports)
}

/// WatchPort for pod `ns/pod` as backend's proxy, from the cp namespace.
pub fn watch_pod_ports(
    env: &K8sEnv,
    s: &Scratch,
    policy_addr: SocketAddr,
    (ns, pod): (&str, &str),
    cp_ns: &str,
    ports: &[u16],
) -> Result<Watcher> {
    let (rt, channel) = cp_channel(env, s, policy_addr, "backend", cp_ns)?;
    let workload = serde_json::json!({"ns": ns, "pod": pod}).to_string();
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
    pub fn server(&self, port: u16) -> &Server {
        &self
            .latest
            .iter()
            .find(|(p, _)| *p == port)
            .expect("watched port")
            .1
    }

    /// Reads updates until `until` holds for `port`'s policy (deadline 30 s).
    pub fn wait(
        &mut self,
        port: u16,
        what: &str,
        until: impl Fn(&Server) -> bool,
    ) -> Result<Duration> {
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

/// `kubectl ARGS -f -` with `input`: (stdout, stderr), failing on an error.
pub fn kubectl_stdin(env: &K8sEnv, args: &[&str], input: &str) -> Result<(String, String)> {
    let mut cmd = env.kubectl();
    cmd.args(args).args(["-f", "-"]);
    let r = super::pipe::with_stdin(&mut cmd, input);
    ensure!(r.code == 0, "kubectl {args:?}: {}\n{}", r.stderr, r.stdout);
    Ok((r.stdout, r.stderr))
}

/// Deletes what install made even when the test fails: the webhook
/// configuration would otherwise be called for every other test's pods.
pub struct Uninstall<'a> {
    pub env: &'a K8sEnv,
    pub manifest: String,
}

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        let mut cmd = self.env.kubectl();
        cmd.args(["delete", "--ignore-not-found", "--wait=false", "-f", "-"]);
        let r = super::pipe::with_stdin(&mut cmd, &self.manifest);
        println!("uninstall: {}{}", r.stdout, r.stderr);
    }
}

/// `weft` with the admin kubeconfig (`--kubeconfig` appended), in the cp
/// namespace where the API server is reachable, in the scratch directory.
pub fn weft_admin(env: &K8sEnv, s: &Scratch, args: &[&str]) -> super::Run {
    let mut cmd = env.cp_cmd(env!("CARGO_BIN_EXE_weft"));
    cmd.current_dir(s.path("."))
        .args(args)
        .arg("--kubeconfig")
        .arg(env.kubeconfig());
    super::Run::from(cmd.output().expect("run weft"))
}

/// What `weft install` printed for a test, and the guard that deletes it.
pub struct Installed<'a> {
    pub manifest: String,
    pub uninstall: Uninstall<'a>,
}

/// `weft install --crds` applied, then `weft install` of the scratch's
/// guide material (ca.crt, issuer.crt, issuer.key) into `cp_ns` with
/// `extra` flags, reading the test cluster for existing identity objects.
/// The manifest is returned unapplied; the guard uninstalls.
pub fn weft_install<'a>(
    env: &'a K8sEnv,
    s: &Scratch,
    cp_ns: &str,
    extra: &[&str],
) -> Result<Installed<'a>> {
    let crds = s.weft(&["install", "--crds"]).ok();
    kubectl_stdin(env, &["apply", "--validate=strict"], &crds.stdout)?;
    let mut args = vec!["install", "--namespace", cp_ns];
    args.extend(super::GUIDE_FILES);
    args.extend_from_slice(extra);
    let manifest = weft_admin(env, s, &args).ok().stdout;
    let uninstall = s.weft(&["uninstall", "--namespace", cp_ns]).ok();
    Ok(Installed {
        manifest,
        uninstall: Uninstall {
            env,
            manifest: uninstall.stdout,
        },
    })
}
