//! `weft check` without `--admin-addr`: the control plane's fleet view
//! through the API server. The admin endpoint listens on the pod's
//! loopback only (by design); a port-forward (the pods/portforward
//! subresource) reaches it there, as `kubectl port-forward` does. Only
//! bytes move here; choosing the pod and reading the answer are pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::install_manifests::DEPLOYMENT;

/// The control plane's admin port (its `--admin-addr` default).
pub const ADMIN_PORT: u16 = 9990;
/// Opening the port-forward and reading the answer, together.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed stream waits for the forward's error message.
const ERROR_GRACE: Duration = Duration::from_secs(2);
/// An answer larger than this is not a fleet view we can show.
const MAX_ANSWER: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot list the control plane's pods in namespace {namespace}: {detail}")]
    ListPods {
        namespace: String,
        detail: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "no Ready pod of deploy/{DEPLOYMENT} in namespace {namespace} (label {}) to port-forward to",
        selector()
    )]
    NoReadyPod { namespace: String },
    #[error("the API server refused a port-forward to pod {pod} port {ADMIN_PORT}: {detail}")]
    Open {
        pod: String,
        detail: String,
        #[source]
        source: kube::Error,
    },
    #[error("the port-forward to pod {pod} gave no stream for port {ADMIN_PORT}")]
    NoStream { pod: String },
    #[error("the port-forward to pod {pod} port {ADMIN_PORT} failed: {message}")]
    Forward { pod: String, message: String },
    #[error("{what} through the port-forward to pod {pod} port {ADMIN_PORT}: {source}")]
    Io {
        what: String,
        pod: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} through the port-forward to pod {pod} port {ADMIN_PORT}: no complete answer within {TIMEOUT:?}"
    )]
    Timeout { what: String, pod: String },
    #[error(
        "{what} through the port-forward to pod {pod} port {ADMIN_PORT}: the stream closed without an HTTP answer ({got} bytes)"
    )]
    NoAnswer {
        what: String,
        pod: String,
        got: usize,
    },
}

fn selector() -> String {
    format!("app.kubernetes.io/name={DEPLOYMENT}")
}

/// The hint a failed tunnel ends with: the RBAC it needs (a WebSocket
/// port-forward is a GET, authorized as get; newer API servers also ask
/// for create, which kubectl's port-forward needs), and the manual way.
pub fn hint(namespace: &str) -> String {
    format!(
        "{}; or kubectl -n {namespace} port-forward deploy/{DEPLOYMENT} {ADMIN_PORT}:{ADMIN_PORT}, then pass --admin-addr 127.0.0.1:{ADMIN_PORT}",
        rbac_hint(namespace)
    )
}

/// The RBAC a port-forward needs, alone (for commands that have no
/// `--admin-addr` way round it).
pub fn rbac_hint(namespace: &str) -> String {
    format!(
        "the caller needs get and create on pods/portforward in {namespace} (kubectl auth can-i get pods/portforward -n {namespace})"
    )
}

/// Every Running, Ready pod not being deleted, by name: the first is the
/// one a single request goes to (so repeated checks ask the same replica),
/// a request for all of them (POST /renew-now) goes to each.
pub fn ready_pods(pods: &[Pod]) -> Vec<String> {
    let mut ready: Vec<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Running")
                    && s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    ready.sort_unstable();
    ready
}

/// An HTTP/1.x answer read so far: `Some((status, body))` once complete
/// (its Content-Length reached, or at `eof` without one).
pub fn answer(buf: &[u8], eof: bool) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    if !status.starts_with("HTTP/1.") {
        return None;
    }
    let code = status.split_whitespace().nth(1)?.parse().ok()?;
    let length = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let body = &buf[end + 4..];
    match length {
        Some(n) if body.len() >= n => {
            Some((code, String::from_utf8_lossy(&body[..n]).into_owned()))
        }
        Some(_) => None,
        None if eof => Some((code, String::from_utf8_lossy(body).into_owned())),
        None => None,
    }
}

/// GET /fleet from a Ready control-plane pod's admin port, through a
/// port-forward: (the pod, (status, body)).
pub async fn fleet(c: &Client, namespace: &str) -> Result<(String, (u16, String)), TunnelError> {
    let pods = ready(c, namespace).await?;
    let pod = pods.first().ok_or_else(|| TunnelError::NoReadyPod {
        namespace: namespace.to_string(),
    })?;
    let answer = request(c, namespace, pod, "GET", "/fleet").await?;
    Ok((pod.clone(), answer))
}

/// The control plane's Ready pods (see [`ready_pods`]).
pub async fn ready(c: &Client, namespace: &str) -> Result<Vec<String>, TunnelError> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector()))
        .await
        .map_err(|source| TunnelError::ListPods {
            namespace: namespace.to_string(),
            detail: control_plane::k8s::proofs::api_error(&source),
            source,
        })?;
    Ok(ready_pods(&list.items))
}

/// `method path` (no body; a POST carries the operator header the admin
/// listener asks of unsafe methods) to `pod`'s admin port through a
/// port-forward: (status, body).
pub async fn request(
    c: &Client,
    namespace: &str,
    pod: &str,
    method: &str,
    path: &str,
) -> Result<(u16, String), TunnelError> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), namespace);
    let what = format!("{method} {path}");
    let got = tokio::time::timeout(TIMEOUT, forward(&pods, pod, &what)).await;
    got.unwrap_or_else(|_| {
        Err(TunnelError::Timeout {
            what: what.clone(),
            pod: pod.to_string(),
        })
    })
}

async fn forward(pods: &Api<Pod>, pod: &str, what: &str) -> Result<(u16, String), TunnelError> {
    let mut pf = pods
        .portforward(pod, &[ADMIN_PORT])
        .await
        .map_err(|source| TunnelError::Open {
            pod: pod.to_string(),
            detail: control_plane::k8s::proofs::api_error(&source),
            source,
        })?;
    let no_stream = || TunnelError::NoStream {
        pod: pod.to_string(),
    };
    let mut stream = pf.take_stream(ADMIN_PORT).ok_or_else(no_stream)?;
    let mut refused = std::pin::pin!(pf.take_error(ADMIN_PORT).ok_or_else(no_stream)?);
    let io = |source| TunnelError::Io {
        what: what.to_string(),
        pod: pod.to_string(),
        source,
    };
    let operator = match what.starts_with("GET ") {
        true => "",
        false => "Content-Length: 0\r\nX-Weft-Operator: 1\r\n",
    };
    let request = format!("{what} HTTP/1.0\r\nHost: 127.0.0.1:{ADMIN_PORT}\r\n{operator}\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let (mut buf, mut chunk, mut errors_open) = (Vec::new(), vec![0u8; 64 << 10], true);
    let result = loop {
        tokio::select! {
            n = stream.read(&mut chunk) => {
                let n = n.map_err(io)?;
                buf.extend_from_slice(&chunk[..n]);
                if let Some(a) = answer(&buf, n == 0) {
                    break Ok(a);
                }
                if n == 0 || buf.len() > MAX_ANSWER {
                    // the forward's own error (kwok's, the kubelet's) says why; it may trail the close
                    let why = match errors_open {
                        true => tokio::time::timeout(ERROR_GRACE, &mut refused).await.ok().flatten(),
                        false => None,
                    };
                    break Err(match why {
                        Some(message) => TunnelError::Forward { pod: pod.to_string(), message },
                        None => TunnelError::NoAnswer { what: what.to_string(), pod: pod.to_string(), got: buf.len() },
                    });
                }
            }
            e = &mut refused, if errors_open => match e {
                Some(message) => break Err(TunnelError::Forward { pod: pod.to_string(), message }),
                None => errors_open = false,
            },
        }
    };
    pf.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(name: &str, phase: &str, ready: &str, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleting.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_ready_running_pods_not_being_deleted_by_name() {
        let ready_pod = |p: &[Pod]| ready_pods(p).first().cloned();
        assert_eq!(ready_pod(&[]), None);
        let pods = [
            pod("c", "Running", "True", false),
            pod("a", "Running", "False", false),
            pod("b", "Pending", "True", false),
            pod("0", "Running", "True", true),
        ];
        assert_eq!(ready_pod(&pods).as_deref(), Some("c"));
        let mut both = pods.to_vec();
        both.push(pod("b2", "Running", "True", false));
        assert_eq!(ready_pods(&both), ["b2", "c"]);
        assert_eq!(ready_pod(&pods[1..]), None);
    }

    #[test]
    fn a_tunnel_failure_fails_the_fleet_check_naming_the_pod_and_the_rbac() {
        use super::super::check::{judge_fleet, parse_fleet};
        let source = "pod weft/weft-control-plane-x port 9990 (a port-forward)";
        let e = parse_fleet(source, Some((503, "not ready\n".into()))).unwrap_err();
        assert_eq!(
            e,
            format!("GET /fleet from {source} answered 503: not ready")
        );
        let e = parse_fleet(source, Some((200, "hello".into()))).unwrap_err();
        assert!(e.contains("not a fleet view"), "{e}");
        let refused = TunnelError::Forward {
            pod: "weft-control-plane-x".into(),
            message: "no forward found for port 9990".into(),
        };
        let (summary, checks, view) = judge_fleet(Err(refused.to_string()), &hint("weft"));
        assert!(summary.is_none() && view.is_none());
        assert_eq!(checks.len(), 1);
        let c = &checks[0];
        assert_eq!(c.description, "the control plane's fleet view is reachable");
        assert_eq!(c.result, pki::check::Status::Error);
        assert!(
            c.error.contains("pod weft-control-plane-x port 9990"),
            "{}",
            c.error
        );
        assert!(
            c.hint
                .contains("get and create on pods/portforward in weft"),
            "{}",
            c.hint
        );
        assert!(
            c.hint
                .contains("kubectl -n weft port-forward deploy/weft-control-plane 9990:9990")
                && c.hint.contains("--admin-addr 127.0.0.1:9990"),
            "{}",
            c.hint
        );
    }

    #[test]
    fn an_answer_is_complete_at_its_length_or_at_eof() {
        let full = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(answer(full, false), Some((200, "{}".into())));
        assert_eq!(answer(&full[..full.len() - 1], false), None);
        let open = b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready";
        assert_eq!(answer(open, false), None);
        assert_eq!(answer(open, true), Some((503, "not ready".into())));
        assert_eq!(answer(b"SSH-2.0-x\r\n\r\n", true), None);
        assert_eq!(answer(b"HTTP/1.0 200", true), None);
    }
}
