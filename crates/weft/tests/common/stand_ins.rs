//! Stand-ins for the pods kwok runs: a network namespace with the pod's IP,
//! `weft init`, an app that says which pod it is and whom the proxy said
//! called, and `weft proxy` as the injector would run it (workload and
//! identity from the pod, the pod's bound projected token). When its proxy
//! is ready the test, as the kubelet whose readiness probe passed, marks the
//! pod Ready; when the pod is gone and its endpoint left the Service, the
//! stand-in goes too. With [`Mesh::start_installed`] (weft installed, its
//! webhook injecting) a stand-in instead runs what the pod object says:
//! its init container and sidecar as a kubelet would (`common::kubelet`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use testbed::k8s::K8sEnv;
use testbed::k8s::api::{self, BoundTo};
use testbed::k8s::k8s_openapi::api::core::v1::{Pod, Service};
use testbed::k8s::k8s_openapi::api::discovery::v1::EndpointSlice;
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::{Api, ListParams, Patch, PatchParams};

use crate::common::Scratch;
use crate::common::kube::{
    CLUSTER_NETWORKS, control_plane_with, identity, least_privilege_kubeconfig,
};
use crate::common::kubelet::{Kubelet, PodRun};
use crate::common::netmesh::PROXY_UID;
use crate::common::proc::Proc;
use crate::common::stand_in_app::whoami;
use crate::common::stand_in_app::{Reply, get};

pub const AUDIENCE: &str = "identity.l5d.io";
/// The image `weft install` injects (its default), run as this build's binary.
pub const WEFT_IMAGE: &str = concat!("ghcr.io/weft-mesh/weft:", env!("CARGO_PKG_VERSION"));
/// The Dockerfile's `USER`.
pub(super) const IMAGE_UID: u32 = 2103;
const DEADLINE: Duration = Duration::from_secs(60);
/// The API server's service range (testenv/k8s/up.sh).
const SERVICE_NETWORK: &str = "10.96.0.0/16";

pub(super) struct StandIn {
    /// First field: dropped (killed) before the namespace goes.
    pub(super) proxy: Proc,
    pub(super) ip: Ipv4Addr,
    pub(super) ns: String,
    /// What the kubelet made of the pod object (injected pods only).
    pub(super) run: Option<PodRun>,
}

/// The control plane (in the cp namespace, on the pod network, least
/// privilege) and the stand-ins of a tenant's pods.
pub struct Mesh<'a> {
    pub(super) env: &'a K8sEnv,
    pub(super) rt: &'a tokio::runtime::Runtime,
    pub(super) client: Client,
    pub(super) s: &'a Scratch,
    pub(super) ns: String,
    pub(super) cp_ns: String,
    pub(super) bin: PathBuf,
    pub(super) stand_ins: BTreeMap<String, StandIn>,
    /// The proxies' control-plane settings (one replica, or a list).
    pub(super) proxy_cp: Vec<(&'static str, String)>,
    /// Set when pods are injected: stand-ins run their pod objects' spec.
    pub(super) kubelet: Option<Kubelet>,
    /// Last field: dropped after the stand-ins. One per replica; None once
    /// killed.
    pub(super) cps: Vec<Option<Proc>>,
}

impl Drop for Mesh<'_> {
    fn drop(&mut self) {
        for (name, s) in std::mem::take(&mut self.stand_ins) {
            drop(s.proxy);
            let _ = self.env.remove_stand_in(&name);
        }
    }
}

/// Control-plane replica `i` in the cp namespace, on the pod network at the
/// ports proxies default to (+ 10000·i), with a state directory of its own.
pub(super) fn start_cp(
    env: &K8sEnv,
    s: &Scratch,
    cp_ns: &str,
    kubeconfig: &std::path::Path,
    i: u16,
    extra: &[&str],
) -> Proc {
    let networks = format!("{CLUSTER_NETWORKS},{SERVICE_NETWORK}");
    let port = |base: u16| format!("0.0.0.0:{}", base + 10_000 * i);
    let (ia, da, pa) = (port(8080), port(8086), port(8090));
    let state = if i == 0 {
        "state".into()
    } else {
        format!("state-{i}")
    };
    let mut args = vec![
        "--cluster-networks",
        &networks,
        "--identity-addr",
        &ia,
        "--destination-addr",
        &da,
        "--policy-addr",
        &pa,
        "--state-dir",
        &state,
    ];
    args.extend(extra);
    let cp = control_plane_with(env, s, cp_ns, kubeconfig, &args);
    super::kube::serving(&cp);
    cp
}

impl<'a> Mesh<'a> {
    pub fn start(
        env: &'a K8sEnv,
        rt: &'a tokio::runtime::Runtime,
        client: Client,
        s: &'a Scratch,
        ns: &str,
        cp_ns: &str,
    ) -> Result<Self> {
        Self::start_replicas(env, rt, client, s, ns, cp_ns, 1)
    }

    /// As [`Mesh::start`] with `replicas` control planes in the cp
    /// namespace: replica i listens on the default ports + 10000·i, with a
    /// state directory of its own; proxies are given every replica.
    pub fn start_replicas(
        env: &'a K8sEnv,
        rt: &'a tokio::runtime::Runtime,
        client: Client,
        s: &'a Scratch,
        ns: &str,
        cp_ns: &str,
        replicas: u16,
    ) -> Result<Self> {
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let kubeconfig = rt.block_on(least_privilege_kubeconfig(env, &client, cp_ns, s))?;
        crate::common::kube::install_identity(env, s, cp_ns)?;
        let mut cps = Vec::new();
        for i in 0..replicas {
            cps.push(Some(start_cp(env, s, cp_ns, &kubeconfig, i, &[])));
        }
        let ip = env.cp().ip;
        let list = |base: u16| {
            (0..replicas)
                .map(|i| format!("{ip}:{}", base + 10_000 * i))
                .collect::<Vec<_>>()
                .join(",")
        };
        let proxy_cp = if replicas == 1 {
            vec![("WEFT_PROXY_CONTROL_PLANE", ip.to_string())]
        } else {
            vec![
                ("WEFT_PROXY_IDENTITY_ADDR", list(8080)),
                ("WEFT_PROXY_DESTINATION_ADDR", list(8086)),
                ("WEFT_PROXY_POLICY_ADDR", list(8090)),
            ]
        };
        let weft = std::path::Path::new(env!("CARGO_BIN_EXE_weft"));
        let bin = testbed::executable_copy(weft, s.dir.path(), PROXY_UID)?;
        Ok(Self {
            env,
            rt,
            client,
            s,
            ns: ns.to_string(),
            cp_ns: cp_ns.to_string(),
            bin,
            stand_ins: BTreeMap::new(),
            proxy_cp,
            kubelet: None,
            cps,
        })
    }

    /// The destination address of control-plane replica `i`, as proxies
    /// are given it.
    pub fn replica_destination(&self, i: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.env.cp().ip), 8086 + 10_000 * i)
    }

    /// SIGKILLs control-plane replica `i`.
    pub fn kill_replica(&mut self, i: usize) -> Result<()> {
        let mut cp = self.cps[i]
            .take()
            .with_context(|| format!("replica {i} is already gone"))?;
        cp.child.kill()?;
        cp.child.wait()?;
        Ok(())
    }

    /// Every stand-in: (pod name, network namespace).
    pub fn stand_in_namespaces(&self) -> Vec<(String, String)> {
        self.stand_ins
            .iter()
            .map(|(n, s)| (n.clone(), s.ns.clone()))
            .collect()
    }

    /// The lines of every stand-in's proxy log that contain `needle`.
    pub fn all_proxy_lines(&self, needle: &str) -> Vec<(String, String)> {
        self.stand_ins
            .iter()
            .flat_map(|(n, s)| {
                s.proxy
                    .output()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(|l| (n.clone(), l.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The stand-ins of `pod`: that pod, or a Deployment's pods named after it.
    pub(super) fn of_pod<'b>(&'b self, pod: &'b str) -> impl Iterator<Item = &'b StandIn> {
        self.stand_ins
            .iter()
            .filter(move |(name, _)| name.as_str() == pod || name.starts_with(&format!("{pod}-")))
            .map(|(_, s)| s)
    }

    pub fn netns(&self, pod: &str) -> Result<String> {
        self.of_pod(pod)
            .next()
            .map(|s| s.ns.clone())
            .with_context(|| format!("no stand-in for {pod}"))
    }

    /// An address the control plane printed at start (`"admin listening on"`),
    /// reachable from the cp namespace.
    pub fn cp_addr(&self, label: &str) -> SocketAddr {
        self.replica_addr(0, label)
    }

    /// [`Mesh::cp_addr`] of replica `i` (which must be running).
    pub fn replica_addr(&self, i: usize, label: &str) -> SocketAddr {
        let a = self.cps[i]
            .as_ref()
            .unwrap_or_else(|| panic!("replica {i} was killed"))
            .addr(label);
        if a.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
        } else {
            a
        }
    }

    /// The lines of `pod`'s proxy log that contain `needle`.
    pub fn proxy_lines(&self, pod: &str, needle: &str) -> Vec<String> {
        self.of_pod(pod)
            .flat_map(|s| {
                s.proxy
                    .output()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last lines of every stand-in's proxy (for a failure's message).
    pub fn proxy_logs(&self) -> String {
        let mut out = String::new();
        for (name, s) in &self.stand_ins {
            let text = s.proxy.output();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(15);
            out.push_str(&format!(
                "--- proxy of {name}\n{}\n",
                lines[from..].join("\n")
            ));
        }
        out
    }

    pub fn cluster_ip(&self, service: &str) -> Result<IpAddr> {
        let svc = self
            .rt
            .block_on(Api::<Service>::namespaced(self.client.clone(), &self.ns).get(service))?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service {service} has no cluster IP"))?;
        Ok(ip.parse()?)
    }

    /// GETs `to` from `pod`'s stand-in until `want` holds.
    pub fn poll_get(
        &self,
        pod: &str,
        to: SocketAddr,
        want: impl Fn(&Reply) -> bool + Send + Copy + 'static,
    ) -> Result<Reply> {
        let ns = self.netns(pod)?;
        let end = Instant::now() + DEADLINE;
        let mut last = None;
        while Instant::now() < end {
            let r = testbed::in_ns(&ns, move || get(to))?;
            match r {
                Ok(r) if want(&r) => return Ok(r),
                other => last = Some(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "{pod} -> {to}: no wanted answer within {DEADLINE:?}; last {last:?}\n{}",
            self.proxy_logs()
        )
    }

    /// Reconciles until `app` has exactly `n` pods, each Running with a
    /// stand-in and Ready; returns their names.
    pub fn until_running(&mut self, app: &str, n: usize) -> Result<BTreeSet<String>> {
        let end = Instant::now() + DEADLINE;
        loop {
            let up = self.reconcile(app)?;
            if up.len() == n {
                return Ok(up);
            }
            ensure!(
                Instant::now() < end,
                "{app}: {} pods with stand-ins ({up:?}), want {n}",
                up.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One pass: a stand-in for each Running pod of `app` that has none,
    /// and away with those whose pod is gone (once its endpoint left the
    /// Service, as a terminating pod drains before it stops).
    pub fn reconcile(&mut self, app: &str) -> Result<BTreeSet<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("app={app}"));
        let listed = self.rt.block_on(pods.list(&lp))?;
        let mut live = BTreeMap::new();
        for p in listed {
            let name = p.metadata.name.clone().unwrap_or_default();
            let st = p.status.clone().unwrap_or_default();
            if p.metadata.deletion_timestamp.is_some() || st.phase.as_deref() != Some("Running") {
                continue;
            }
            if let Some(ip) = st
                .pod_ip
                .as_deref()
                .and_then(|i| i.parse::<Ipv4Addr>().ok())
            {
                live.insert(name, (ip, p));
            }
        }
        let gone: Vec<String> = self
            .stand_ins
            .keys()
            .filter(|n| n.starts_with(&format!("{app}-")) && !live.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.retire(&name)?;
        }
        let mut up = BTreeSet::new();
        for (name, (ip, pod)) in &live {
            if self.stand_ins.contains_key(name) {
                up.insert(name.clone());
                continue;
            }
            // kwok gave a live pod's address out again (an address it
            // released twice is in its pool twice). Deleting the pod would
            // put the address back for the replacement to get again, so the
            // pod is taken out of its app instead (its ReplicaSet lets it go
            // and makes another) and keeps holding the spare address. A bare
            // pod has no controller to replace it, and is an error as before.
            // It leaves the mesh too: two meshed pods on one address are a
            // conflict the control plane answers by leaving the address out
            // (fail closed), which would take the live pod out of its Service.
            if let Some(holder) = self.env.holder_of(*ip).filter(|h| h != name)
                && pod
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| !o.is_empty())
            {
                println!(
                    "kwok gave {name} the address {ip} of live pod {holder}; {name} leaves app {app} and the mesh (and keeps the spare address) so its controller makes another"
                );
                let patch = json!({"metadata": {"labels": {
                    "app": "kwok-spare-address",
                    "linkerd.io/control-plane-ns": null,
                }}});
                self.rt.block_on(pods.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ))?;
                continue;
            }
            self.stand_in(name, *ip, pod)?;
            up.insert(name.clone());
        }
        Ok(up)
    }

    fn retire(&mut self, name: &str) -> Result<()> {
        let ip = self.stand_ins[name].ip.to_string();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &self.ns);
        let end = Instant::now() + DEADLINE;
        while self
            .rt
            .block_on(slices.list(&ListParams::default()))?
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .any(|e| e.addresses.contains(&ip))
        {
            ensure!(Instant::now() < end, "{name}'s endpoint {ip} never left");
            std::thread::sleep(Duration::from_millis(100));
        }
        // As the kubelet stops a pod: SIGTERM, so the proxy stops accepting
        // and lets requests in flight finish (its grace period), then gone.
        if let Some(mut s) = self.stand_ins.remove(name) {
            let pid = s.proxy.child.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let exited = s.proxy.wait_exit(DEADLINE);
            ensure!(
                exited == Some(0),
                "{name}'s proxy did not stop cleanly on SIGTERM ({exited:?}):\n{}",
                s.proxy.output()
            );
        }
        self.env.remove_stand_in(name)
    }

    fn stand_in(&mut self, name: &str, ip: Ipv4Addr, pod: &Pod) -> Result<()> {
        let t0 = Instant::now();
        let p = self.env.stand_in(name, ip)?;
        // Pods have a default route (to reach cluster IPs at all).
        testbed::run(p.cmd("ip").args(["route", "add", "default", "dev", "eth0"]))?;
        let (proxy, run) = match &self.kubelet {
            Some(k) => {
                let (run, mut sidecars) = k.start(self.rt, &self.client, &p.ns, ip, pod)?;
                ensure!(
                    sidecars.len() == 1 && sidecars[0].0 == inject::PROXY_CONTAINER,
                    "{name}: sidecars {:?}, expected only {}",
                    sidecars.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    inject::PROXY_CONTAINER
                );
                (sidecars.remove(0).1, Some(run))
            }
            None => (self.proxy_as_injector(name, pod, &p)?, None),
        };
        let listener = testbed::in_ns(&p.ns, || TcpListener::bind(("0.0.0.0", 8080)))??;
        whoami(listener, name.to_string());
        self.stand_ins.insert(
            name.to_string(),
            StandIn {
                proxy,
                ip,
                ns: p.ns.clone(),
                run,
            },
        );
        self.mark_ready(name)?;
        println!(
            "stand-in {name} at {ip}: proxy ready, pod Ready after {:.1?}",
            t0.elapsed()
        );
        Ok(())
    }

    /// As the kubelet once the readiness probes passed.
    fn mark_ready(&self, name: &str) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let ready = json!({"status": {"conditions": [
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"}]}});
        self.rt.block_on(pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(ready),
        ))?;
        Ok(())
    }

    /// `weft init`, then `weft proxy` with what the injector would give it
    /// (the test builds it), until ready.
    fn proxy_as_injector(&self, name: &str, pod: &Pod, p: &testbed::Pod) -> Result<Proc> {
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .context("pod without a service account")?;
        let uid = pod.metadata.uid.clone().context("pod without a uid")?;
        let token = self.rt.block_on(api::token(
            &self.client,
            &self.ns,
            &sa,
            AUDIENCE,
            Some(BoundTo {
                kind: "Pod",
                name: name.to_string(),
                uid,
            }),
            Duration::from_secs(3600),
        ))?;
        let token_file = self.s.write(&format!("{name}.token"), token);
        std::os::unix::fs::chown(&token_file, Some(PROXY_UID), Some(PROXY_UID))?;
        testbed::run(
            p.cmd(&self.bin)
                .args(["init", "--proxy-uid", &PROXY_UID.to_string()]),
        )?;
        let mut cmd = p.cmd_as(PROXY_UID, &self.bin);
        cmd.current_dir(self.s.dir.path())
            .env(
                "WEFT_PROXY_WORKLOAD",
                json!({"ns": self.ns, "pod": name}).to_string(),
            )
            .env("WEFT_PROXY_IDENTITY", identity(&sa, &self.ns, &self.cp_ns))
            .env("WEFT_PROXY_TOKEN_FILE", &token_file)
            .env("WEFT_PROXY_TRUST_ANCHORS_FILE", self.s.path("ca.crt"))
            .envs(self.proxy_cp.iter().map(|(k, v)| (k, v)))
            .env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "5s")
            .arg("proxy");
        let proxy = Proc::spawn_cmd(cmd);
        let end = Instant::now() + DEADLINE;
        loop {
            let ready = crate::common::netmesh::get_in(&p.ns, "127.0.0.1:4191".parse()?, "/ready");
            if matches!(ready, Some((200, _))) {
                return Ok(proxy);
            }
            ensure!(
                Instant::now() < end,
                "{name}'s proxy not ready: {ready:?}\n{}",
                proxy.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
