//! An API server outage on demand: the kube-apiserver process stopped
//! (connections refused, as when it crashes or restarts), then started
//! again with the same command line; etcd and the state stay.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::K8sEnv;

/// A stopped API server, and how to start it again.
pub struct StoppedApi {
    argv: Vec<OsString>,
    netns: String,
    pidfile: PathBuf,
    log: PathBuf,
    /// kubectl (in the cp namespace, admin): program and arguments.
    kubectl: (OsString, Vec<OsString>),
}

impl K8sEnv {
    /// Stops the API server as a crash does (SIGKILL: a graceful stop drains
    /// watches for a minute), then waits for it to be gone.
    pub fn stop_api_server(&self) -> Result<StoppedApi> {
        let pidfile = self.run_dir.join("apiserver.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .with_context(|| format!("read {}", pidfile.display()))?
            .trim()
            .parse()
            .context("the API server's pid")?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .with_context(|| format!("the API server (pid {pid}) is not running"))?;
        let argv: Vec<OsString> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| {
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a).to_os_string()
            })
            .collect();
        let p = rustix::process::Pid::from_raw(pid).context("pid")?;
        rustix::process::kill_process(p, rustix::process::Signal::KILL)
            .with_context(|| format!("stop the API server (pid {pid})"))?;
        let end = Instant::now() + Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        {
            if Instant::now() > end {
                bail!("the API server (pid {pid}) did not exit within 30s of SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(StoppedApi {
            argv,
            netns: self.cp.ns.clone(),
            pidfile,
            log: self.run_dir.join("apiserver.log"),
            kubectl: {
                let k = self.kubectl();
                (
                    k.get_program().to_os_string(),
                    k.get_args().map(|a| a.to_os_string()).collect(),
                )
            },
        })
    }
}

impl StoppedApi {
    /// Starts the API server again and waits until it is ready; returns
    /// how long that took.
    pub fn restart(self) -> Result<Duration> {
        let t0 = Instant::now();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec"])
            .arg(&self.netns)
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the API server again")?;
        // `ip netns exec` execs the server: this pid is the server's, and
        // teardown kills what the pid file names.
        std::fs::write(&self.pidfile, format!("{}\n", child.id()))?;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(&self.kubectl.0)
                .args(&self.kubectl.1)
                .args(["get", "--raw", "/readyz"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(t0.elapsed());
            }
            if Instant::now() > end {
                bail!("the API server was not ready within 60s of its restart");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
