//! YAML builders for the resources tests write (the `testutil` feature):
//! one place for the shapes, so each test says only what differs.

/// Any namespaced resource: its header, then `spec:` and `spec` as written.
pub fn resource(api_version: &str, kind: &str, ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// An ExternalWorkload `ns/name` at `ip` with mesh identity `identity`;
/// `meta` goes under metadata as written (labels, annotations), and each
/// port is listed with its name when it has one.
pub fn external_workload(
    ns: &str,
    name: &str,
    identity: &str,
    ip: &str,
    meta: &str,
    ports: &[(u16, Option<&str>)],
) -> String {
    let mut spec = format!(
        "  meshTLS:\n    identity: {identity}\n    serverName: {identity}\n  workloadIPs:\n  - ip: {ip}\n"
    );
    if !ports.is_empty() {
        spec.push_str("  ports:\n");
    }
    for (port, port_name) in ports {
        spec.push_str(&format!("  - port: {port}\n"));
        if let Some(n) = port_name {
            spec.push_str(&format!("    name: {n}\n"));
        }
    }
    format!(
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}\n  namespace: {ns}\n{meta}spec:\n{spec}"
    )
}

/// An AuthorizationPolicy `ns/name` on the Server `server`; `refs` follows
/// `requiredAuthenticationRefs:` as written.
pub fn authorization_policy(ns: &str, name: &str, server: &str, refs: &str) -> String {
    resource(
        "policy.linkerd.io/v1alpha1",
        "AuthorizationPolicy",
        ns,
        name,
        &format!(
            "  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: {server}\n  requiredAuthenticationRefs:{refs}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_write_what_the_parser_reads() {
        let w = external_workload(
            "demo",
            "web",
            "web.demo.serviceaccount.identity.weft.cluster.local",
            "10.0.0.1",
            "  labels:\n    app: web\n",
            &[(8080, Some("http")), (9090, None)],
        );
        let p = authorization_policy(
            "demo",
            "p",
            "web-server",
            "\n  - kind: ServiceAccount\n    name: a\n",
        );
        let text = format!("{w}---\n{p}");
        let objects = crate::resources::parse_file(std::path::Path::new("t.yaml"), &text).unwrap();
        assert_eq!(objects.len(), 2);
    }
}
