//! A `weft` process under test: stderr captured line by line, waited on by
//! polling with a deadline, killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Set when stderr reached its end: only then does `lines` hold all of
    /// what an exited process printed.
    drained: Arc<AtomicBool>,
}

impl Proc {
    pub fn spawn(cwd: &std::path::Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.args(args).current_dir(cwd);
        Self::spawn_cmd(cmd)
    }

    /// Any command (e.g. weft inside a network namespace, as another user).
    pub fn spawn_cmd(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("WEFT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = lines.clone();
        let drained = Arc::new(AtomicBool::new(false));
        let done = drained.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("WEFT_TEST_ECHO").is_some() {
                    eprintln!("[weft] {line}");
                }
                sink.lock().unwrap().push(line);
            }
            done.store(true, Ordering::Release);
        });
        Self {
            child,
            lines,
            drained,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Polls until a line contains `needle`; returns that line.
    #[track_caller]
    pub fn wait_for_line(&self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > end {
                panic!(
                    "no line with {needle:?} within {deadline:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address printed after `label` (e.g. "identity listening on").
    pub fn addr(&self, label: &str) -> SocketAddr {
        let line = self.wait_for_line(label, Duration::from_secs(30));
        line.rsplit(' ').next().unwrap().parse().expect("address")
    }

    /// Waits for the process to exit and for its stderr to be read to the
    /// end (the reader can lag the exit); returns its code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child.try_wait().unwrap()
                && (self.drained.load(Ordering::Acquire) || Instant::now() > end)
            {
                return s.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A POST with no body to a control plane's admin listener, as an operator
/// sends it: the whole answer, head and body.
pub fn admin_post(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nX-Weft-Operator: 1\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    buf
}

/// Waits (30 s at most) until the admin listener `p` printed answers
/// `/ready` with 200: a control plane serving, or a proxy certified.
#[track_caller]
pub fn until_ready(p: &Proc) {
    let admin = p.addr("admin listening on");
    poll("admin /ready", Duration::from_secs(30), || {
        matches!(http_get(admin, "/ready"), Ok((200, _))).then_some(())
    });
}

/// Polls `f` until it returns Some, or panics at the deadline with `what`.
#[track_caller]
pub fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of a metric line (name with labels, exactly as printed).
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every series of `name` whose labels contain all of `labels`
/// (fragments like `srv_name="web"`); 0 when there is none.
pub fn metric_sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
