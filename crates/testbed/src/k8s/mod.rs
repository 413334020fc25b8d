//! A real Kubernetes control plane for tests: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (one fake node) from
//! `testenv/k8s`, all running inside the network namespace of a test bed's
//! `cp` pod, so nothing listens on the host's interfaces.
//!
//! - The fake node's pod range is [`POD_CIDR`], inside the bed's subnet: the
//!   IPs Kubernetes gives pods are addresses a stand-in pod can take
//!   ([`K8sEnv::stand_in`]), so traffic to a pod IP reaches a real socket.
//! - [`K8sEnv::client`] is a kube-rs client whose connections are made from
//!   inside the `cp` namespace (see `client.rs`), usable from any runtime.
//! - [`K8sEnv::kubectl`] and [`K8sEnv::cp_cmd`] run commands there (kubectl
//!   of the API server's version, `weft control-plane`, ...) with
//!   [`K8sEnv::kubeconfig`].
//! - Teardown: a guardian process (its own session) waits on a pipe that only
//!   this process holds; when the env is dropped (also while a failing test
//!   unwinds) or the test process dies in any way, the pipe closes and the
//!   guardian stops the processes (down.sh, by PID), removes the run dir and
//!   deletes the bed's network namespaces.

pub mod api;
pub use outage::StoppedApi;
mod binaries;
mod client;
mod outage;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use binaries::{Binaries, REQUIRE_ENV, ensure_built, testenv_dir};
// the versions this environment is tested with, for test crates that only depend on testbed
pub use client::{NetnsConnector, client_in};
pub use {futures, k8s_openapi, kube};

use crate::{Bed, Pod};

/// The fake node's pod range: the upper half of the bed's 10.10.0.0/24
/// (sequential bed pods take 10.10.0.2 upwards). kwok hands out .129, .130, ...
pub const POD_CIDR: &str = "10.10.0.128/25";
/// The API server's port inside the cp namespace (each env has its own
/// namespace, so fixed ports never collide).
pub const API_PORT: u16 = 6443;

/// kwok's kubelet API port (the fake node's kubeletEndpoint) inside the cp
/// namespace: the API server's port-forwards go there, and kwok forwards
/// them where a PortForward object (kwok.x-k8s.io/v1alpha1) says.
pub const KUBELET_PORT: u16 = 10250;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What starting the environment cost.
#[derive(Clone, Debug)]
pub struct Timings {
    /// build.sh by this process (zero when the binaries were cached).
    pub build: Duration,
    pub built_now: bool,
    /// up.sh: certificates, etcd, API server ready, fake node Ready, default ServiceAccount.
    pub up: Duration,
}

pub struct K8sEnv {
    guardian: Mutex<Option<(Child, ChildStdin)>>,
    bed: Mutex<Bed>,
    cp: Pod,
    run_dir: PathBuf,
    bins: Binaries,
    config: Option<kube::Config>,
    pub timings: Timings,
    test: String,
}

impl K8sEnv {
    /// Starts an environment for one test. `Ok(None)`: skipped loudly (no
    /// root, or the binaries cannot be built here and `WEFT_REQUIRE_K8S` is
    /// not 1). Blocking; from async code, call it in `spawn_blocking`.
    pub fn start(test: &str) -> Result<Option<Self>> {
        if !crate::have_root(test) {
            return Ok(None);
        }
        let Some(bins) = ensure_built(test)? else {
            return Ok(None);
        };
        for t in ["ip", "openssl", "curl", "bash"] {
            if !tool(t) {
                bail!(
                    "{test}: the Kubernetes test environment needs `{t}` on PATH (CI installs it in .ci/run)"
                );
            }
        }
        sweep_stale_runs(&bins.dir);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let run_dir = std::env::temp_dir().join(format!("weft-k8s-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("create {}", run_dir.display()))?;
        let mut bed = Bed::new(&run_dir)?;
        let guardian = spawn_guardian(&run_dir, &bed.id)?;
        bed.pod("cp")?;
        let cp = bed.by_name("cp").clone();
        let mut env = K8sEnv {
            guardian: Mutex::new(Some(guardian)),
            bed: Mutex::new(bed),
            cp,
            run_dir,
            timings: Timings {
                build: bins.build_time,
                built_now: bins.built_now,
                up: Duration::ZERO,
            },
            bins,
            config: None,
            test: test.to_string(),
        };
        let t0 = Instant::now();
        env.up()?;
        env.timings.up = t0.elapsed();
        env.config = Some(load_config(&env.kubeconfig())?);
        Ok(Some(env))
    }

    /// One environment shared by every test of this test binary that asks
    /// (give each test its own Kubernetes namespace, see [`api::namespace`]).
    /// It lives until the process exits; the guardian then tears it down.
    pub fn shared(test: &str) -> Result<Option<Arc<Self>>> {
        static SHARED: Mutex<Option<Arc<K8sEnv>>> = Mutex::new(None);
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(env) = slot.as_ref() {
            return Ok(Some(env.clone()));
        }
        let Some(env) = Self::start(test)? else {
            return Ok(None);
        };
        let env = Arc::new(env);
        *slot = Some(env.clone());
        Ok(Some(env))
    }

    fn up(&self) -> Result<()> {
        let out = self
            .cp_cmd("bash")
            .arg(testenv_dir().join("up.sh"))
            .env("K8S_BIN_DIR", &self.bins.dir)
            .env("K8S_RUN_DIR", &self.run_dir)
            .env("K8S_API_PORT", API_PORT.to_string())
            .env("K8S_ETCD_PORT", "2379")
            .env("K8S_ETCD_PEER_PORT", "2380")
            .env("K8S_CONTROLLER_MANAGER_PORT", "10257")
            .env("K8S_SCHEDULER_PORT", "10259")
            // kwok's kubelet API (port-forward to PortForward objects' targets), at the node's InternalIP
            .env("K8S_KUBELET_PORT", KUBELET_PORT.to_string())
            // every address of the cp namespace (its loopback and pod IP), none of the host's
            .env("K8S_BIND_ADDRESS", "0.0.0.0")
            .env("K8S_ADVERTISE_ADDRESS", self.cp.ip.to_string())
            .env("K8S_POD_CIDR", POD_CIDR)
            .stdin(Stdio::null())
            .output()
            .context("spawn testenv/k8s/up.sh")?;
        if !out.status.success() {
            // the run dir goes with the env (WEFT_K8S_KEEP=1 keeps it): quote the logs now
            bail!(
                "{}: testenv/k8s/up.sh failed ({}) in network namespace {}:\n{}\n{}\
                 (rerun with WEFT_K8S_KEEP=1 to keep {})",
                self.test,
                out.status,
                self.cp.ns,
                String::from_utf8_lossy(&out.stderr),
                self.log_tails(20),
                self.run_dir.display()
            );
        }
        Ok(())
    }

    /// A kube-rs client (admin) connecting from inside the cp namespace.
    /// Call it inside a tokio runtime; it works from any runtime.
    pub fn client(&self) -> Result<kube::Client> {
        client_in(&self.cp.ns, self.config())
    }

    /// The client configuration (server `https://127.0.0.1:6443` as seen
    /// from inside the cp namespace, admin token, the cluster CA).
    pub fn config(&self) -> &kube::Config {
        self.config.as_ref().expect("set by K8sEnv::start")
    }

    /// kubeconfig for processes run in the cp namespace (kubectl, `weft control-plane`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.run_dir.join("kubeconfig")
    }

    /// The cluster CA (signs the API server's serving certificate).
    pub fn ca_file(&self) -> PathBuf {
        self.run_dir.join("pki/ca.crt")
    }

    /// The API server as reached from the bed's other pods.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((self.cp.ip, API_PORT))
    }

    /// The control-plane pod (its namespace runs all of the above).
    pub fn cp(&self) -> &Pod {
        &self.cp
    }

    pub fn bins(&self) -> &Binaries {
        &self.bins
    }

    /// A command inside the cp namespace.
    pub fn cp_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.cp.cmd(program)
    }

    /// kubectl of the API server's version, in the cp namespace, admin.
    pub fn kubectl(&self) -> Command {
        let mut c = self.cp_cmd(self.bins.path("kubectl"));
        c.arg("--kubeconfig").arg(self.kubeconfig());
        c
    }

    /// A network-namespace pod with address `ip` (a pod IP Kubernetes gave
    /// out, inside [`POD_CIDR`]) on the bed's bridge: what a real pod with
    /// that IP would be on the network.
    pub fn stand_in(&self, name: &str, ip: Ipv4Addr) -> Result<Pod> {
        let mut bed = self.bed.lock().unwrap_or_else(|p| p.into_inner());
        bed.pod_at(name, ip)?;
        Ok(bed.by_name(name).clone())
    }

    /// The stand-in holding `ip`, if any: kwok can hand one address to two
    /// live pods (an address released twice comes back twice).
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<String> {
        let bed = self.bed.lock().unwrap_or_else(|p| p.into_inner());
        bed.pods.iter().find(|p| p.ip == ip).map(|p| p.name.clone())
    }

    /// Removes a stand-in (its pod is gone), freeing its address for the
    /// pod that Kubernetes gives it to next.
    pub fn remove_stand_in(&self, name: &str) -> Result<()> {
        let mut bed = self.bed.lock().unwrap_or_else(|p| p.into_inner());
        bed.remove(name)
    }

    /// Process IDs of the running control plane, by component.
    pub fn pids(&self) -> Result<Vec<(&'static str, u32)>> {
        COMPONENTS
            .iter()
            .map(|c| {
                let f = self.run_dir.join(format!("{c}.pid"));
                let pid =
                    std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
                Ok((
                    *c,
                    pid.trim()
                        .parse()
                        .with_context(|| format!("pid in {}", f.display()))?,
                ))
            })
            .collect()
    }

    /// A guard that prints the components' logs if the test fails while it
    /// is alive (a shared env outlives each test, so its Drop cannot).
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        LogsOnFailure(self)
    }

    /// The last lines of each component's log (printed when a test fails).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for c in COMPONENTS {
            let text =
                std::fs::read_to_string(self.run_dir.join(format!("{c}.log"))).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            s.push_str(&format!(
                "--- {c}.log (last {lines} lines)\n{}\n",
                all[from..].join("\n")
            ));
        }
        s
    }
}

pub struct LogsOnFailure<'a>(&'a K8sEnv);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: a test failed; Kubernetes logs:\n{}",
                self.0.test,
                self.0.log_tails(30)
            );
        }
    }
}

const COMPONENTS: [&str; 5] = [
    "etcd",
    "apiserver",
    "controller-manager",
    "scheduler",
    "kwok",
];

impl Drop for K8sEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: the test failed; Kubernetes logs:\n{}",
                self.test,
                self.log_tails(20)
            );
        }
        let taken = self
            .guardian
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin); // EOF: the guardian tears down
            let deadline = Instant::now() + Duration::from_secs(90);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "{}: the Kubernetes teardown did not finish in 90s (pid {})",
                self.test,
                child.id()
            );
        }
    }
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The teardown process: it blocks reading stdin, whose only writer is this
/// process, so EOF comes when the env is dropped or this process dies.
fn spawn_guardian(run_dir: &Path, bed_id: &str) -> Result<(Child, ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let keep = std::env::var("WEFT_K8S_KEEP").as_deref() == Ok("1");
    let script = r#"
        read -r _ || true
        if [ -d "$RUN" ]; then
          K8S_KEEP_RUN_DIR=$KEEP "$DOWN" "$RUN" >/dev/null 2>&1 || true
          [ "$KEEP" = 1 ] || rm -rf "$RUN"
        fi
        for ns in $(ip netns list | awk '{print $1}'); do
          case "$ns" in "weft-$BED-"*) ip netns del "$ns" ;; esac
        done
    "#;
    let mut child = Command::new("bash")
        .args(["-c", script])
        .env("RUN", run_dir)
        .env("DOWN", testenv_dir().join("down.sh"))
        .env("BED", bed_id)
        .env("KEEP", if keep { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0) // not killed with the test's process group (Ctrl-C)
        .spawn()
        .context("spawn the teardown guardian")?;
    let stdin = child.stdin.take().context("guardian stdin")?;
    Ok((child, stdin))
}

/// Stops control planes left by test processes that died before their
/// guardian could run (it normally does): by PID, only when the PID still
/// runs one of our binaries.
fn sweep_stale_runs(bin_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("weft-k8s-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for c in COMPONENTS {
            let Ok(p) = std::fs::read_to_string(e.path().join(format!("{c}.pid"))) else {
                continue;
            };
            let Ok(p) = p.trim().parse::<i32>() else {
                continue;
            };
            let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
            if exe.starts_with(bin_dir)
                && let Some(pid) = rustix::process::Pid::from_raw(p)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

fn load_config(kubeconfig: &Path) -> Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read {}", kubeconfig.display()))?;
    futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kc,
        &kube::config::KubeConfigOptions::default(),
    ))
    .with_context(|| format!("client config from {}", kubeconfig.display()))
}
