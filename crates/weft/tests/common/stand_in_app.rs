//! The app a stand-in pod runs (it says which pod it is and whom the
//! proxy said called) and the Deployments the stand-in tests create.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// What the stand-in app answered, through the proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub pod: String,
    /// The `l5d-client-id` the server's proxy put on the request.
    pub client_id: String,
}

/// One HTTP/1.0 GET on a new connection (from inside a pod's namespace).
pub fn get(to: SocketAddr) -> std::io::Result<Reply> {
    let (status, body) = crate::common::proc::http_get(to, "/")?;
    let mut lines = body.lines();
    Ok(Reply {
        status,
        pod: lines.next().unwrap_or_default().to_string(),
        client_id: lines.next().unwrap_or_default().to_string(),
    })
}

/// An app answering each request with its pod's name and the caller's
/// identity as the proxy forwarded it. HTTP/2 (prior knowledge) is served
/// by the test app, which names the pod in `x-app-name`.
pub fn whoami(listener: TcpListener, pod: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let pod = pod.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut preface = [0u8; 3];
                if conn.peek(&mut preface).is_ok_and(|n| n == 3) && &preface == b"PRI" {
                    let _ = conn.set_read_timeout(None);
                    return testbed::http_app::serve_one_named(conn, &pod);
                }
                let mut client_id = String::new();
                let mut reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                });
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("l5d-client-id")
                    {
                        client_id = v.trim().to_string();
                    }
                    line.clear();
                }
                let body = format!("{pod}\n{client_id}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.flush();
                let mut rest = Vec::new();
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = conn.read_to_end(&mut rest);
            });
        }
    });
}

/// Deployments (name and replicas, each with a ServiceAccount of its name,
/// meshed by `cp_ns`, waiting for the test to make them Ready) and Service
/// `backend` (port 80 to the named port `http`, 8080).
pub fn workloads(ns: &str, cp_ns: &str, deployments: &[(&str, u32)]) -> String {
    let template = |name: &str| {
        format!(
            "    metadata:
      labels:
        app: {name}
        linkerd.io/control-plane-ns: {cp_ns}
      annotations:
        weft.test/readiness: external
    spec:
      serviceAccountName: {name}
      containers:
      - name: app
        image: app
        ports:
        - containerPort: 8080
          name: http
"
        )
    };
    let deployment = |name: &str, replicas: u32| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
{}---
",
            template(name)
        )
    };
    let all: String = deployments
        .iter()
        .map(|(name, replicas)| deployment(name, *replicas))
        .collect();
    format!(
        "{all}apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: {ns}
spec:
  selector:
    app: backend
  ports:
  - name: web
    port: 80
    targetPort: http
"
    )
}
