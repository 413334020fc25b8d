use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Vec<Object>, Vec<Problem>> {
    parse_file(Path::new("demo/policy.yaml"), text)
}

fn refused(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(objects) => panic!("expected refusal, got {objects:?}"),
        Err(problems) => {
            assert!(!problems.is_empty());
            problems
        }
    }
}

/// The one problem refusing `text`, which must name `resource` and `field`.
fn refused_at(text: &str, resource: &str, field: &str) -> Problem {
    let problems = refused(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = problems.into_iter().next().unwrap();
    assert_eq!(p.resource.as_deref(), Some(resource), "{p}");
    assert_eq!(p.field.as_deref(), Some(field), "{p}");
    p
}

const GUIDE: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata:
  name: backend-server
  namespace: demo
spec:
  podSelector:
    matchLabels:
      app: backend
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: backend-allow-frontend
  namespace: demo
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: backend-server
  requiredAuthenticationRefs:
  - name: frontend-sa
    kind: MeshTLSAuthentication
    group: policy.linkerd.io
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata:
  name: frontend-sa
  namespace: demo
spec:
  identityRefs:
  - kind: ServiceAccount
    name: frontend
";

const SERVER: &str = "Server demo/backend-server";

fn server(spec: &str) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata:\n  name: backend-server\n  namespace: demo\nspec:\n{spec}"
    )
}

fn policy(refs: &str) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: demo
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: backend-server
  requiredAuthenticationRefs:{refs}"
    )
}

#[test]
fn the_guides_manifests_load() {
    let objects = parse(GUIDE).unwrap();
    assert_eq!(objects.len(), 3);
    let Object::Server(s) = &objects[0] else {
        panic!("not a Server: {:?}", objects[0])
    };
    assert_eq!(objects[0].key().to_string(), SERVER);
    assert_eq!(s.spec.port, ServerPort::Number(8080));
    assert_eq!(s.spec.proxy_protocol, ProxyProtocol::Http1);
    assert_eq!(s.spec.access_policy, None);
    let sel = s.spec.pod_selector.as_ref().unwrap();
    assert_eq!(
        sel.match_labels.get("app").map(String::as_str),
        Some("backend")
    );
    assert!(s.spec.external_workload_selector.is_none());

    let Object::AuthorizationPolicy(a) = &objects[1] else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(a.spec.target_ref.kind, TargetKind::Server);
    assert_eq!(a.spec.target_ref.name, "backend-server");
    let r = &a.spec.required_authentication_refs;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].kind, AuthenticationKind::MeshTlsAuthentication);
    assert_eq!(r[0].name, "frontend-sa");

    let Object::MeshTlsAuthentication(m) = &objects[2] else {
        panic!("not a MeshTLSAuthentication")
    };
    assert_eq!(
        objects[2].key().to_string(),
        "MeshTLSAuthentication demo/frontend-sa"
    );
    assert!(m.spec.identities.is_empty());
    assert_eq!(
        m.spec.identity_refs[0].kind,
        IdentityRefKind::ServiceAccount
    );
    assert_eq!(m.spec.identity_refs[0].name, "frontend");

    let mut snap = Snapshot::default();
    for o in objects {
        let file = std::path::PathBuf::from("demo/policy.yaml");
        snap.objects.insert(o.key(), Sourced { object: o, file });
    }
    assert_eq!(snap.of_kind(Kind::Server).count(), 1);
    assert_eq!(snap.of_kind(Kind::AuthorizationPolicy).count(), 1);
    assert_eq!(snap.of_kind(Kind::MeshTlsAuthentication).count(), 1);
    assert_eq!(snap.of_kind(Kind::HttpRoute).count(), 0);
}

#[test]
fn unknown_spec_field_is_refused_naming_it() {
    let text = GUIDE.replace("  proxyProtocol: HTTP/1", "  proxyProtocl: HTTP/1");
    let p = refused_at(&text, SERVER, "spec");
    assert!(p.message.contains("\"proxyProtocl\""), "{p}");
    assert!(p.to_string().starts_with("demo/policy.yaml: "), "{p}");

    let text = GUIDE.replace("  - kind: ServiceAccount", "  - knd: ServiceAccount");
    let p = refused_at(
        &text,
        "MeshTLSAuthentication demo/frontend-sa",
        "spec.identityRefs[0]",
    );
    assert!(p.message.contains("\"knd\""), "{p}");
}

#[test]
fn metadata_and_status_are_tolerated() {
    let text = GUIDE.replacen(
        "  namespace: demo\nspec:",
        "  namespace: demo\n  uid: abc\n  resourceVersion: \"7\"\nstatus:\n  anything: [1]\nspec:",
        1,
    );
    assert_eq!(parse(&text).unwrap().len(), 3);
}

#[test]
fn other_api_versions_are_accepted() {
    let text = GUIDE.replace("policy.linkerd.io/v1beta3", "policy.linkerd.io/v1beta2");
    assert_eq!(parse(&text).unwrap().len(), 3);
    let text = GUIDE.replace("policy.linkerd.io/v1beta3", "policy.linkerd.io/v1alpha1");
    let p = &refused(&text)[0];
    assert_eq!(p.field.as_deref(), Some("apiVersion"));
}

#[test]
fn two_identity_refs_are_refused() {
    let refs = "
  - {kind: MeshTLSAuthentication, group: policy.linkerd.io, name: a}
  - {kind: ServiceAccount, name: b}
";
    let p = refused_at(
        &policy(refs),
        "AuthorizationPolicy demo/p",
        "spec.requiredAuthenticationRefs",
    );
    assert!(p.message.contains("at most one"), "{p}");

    let refs = "
  - {kind: NetworkAuthentication, group: policy.linkerd.io, name: a}
  - {kind: NetworkAuthentication, group: policy.linkerd.io, name: b}
";
    refused_at(
        &policy(refs),
        "AuthorizationPolicy demo/p",
        "spec.requiredAuthenticationRefs",
    );

    let refs = "
  - {kind: NetworkAuthentication, group: policy.linkerd.io, name: a}
  - {kind: ServiceAccount, name: b}
";
    assert!(parse(&policy(refs)).is_ok());
}

#[test]
fn bad_authentication_refs_are_refused() {
    let p = refused_at(
        &policy(" []\n"),
        "AuthorizationPolicy demo/p",
        "spec.requiredAuthenticationRefs",
    );
    assert!(p.message.contains("at least one authentication"), "{p}");

    let refs = "\n  - {kind: Secret, name: a}\n";
    let p = refused_at(
        &policy(refs),
        "AuthorizationPolicy demo/p",
        "spec.requiredAuthenticationRefs[0].kind",
    );
    assert!(p.message.contains("Secret"), "{p}");

    let refs = "\n  - {kind: MeshTLSAuthentication, name: a}\n";
    refused_at(
        &policy(refs),
        "AuthorizationPolicy demo/p",
        "spec.requiredAuthenticationRefs[0].group",
    );

    let text = policy("\n  - {kind: ServiceAccount, name: a}\n")
        .replace("    kind: Server\n", "    kind: Namespace\n")
        .replace("    group: policy.linkerd.io\n", "    group: core\n");
    assert!(parse(&text).is_ok());
}

#[test]
fn network_except_must_lie_inside_cidr() {
    let text = |except: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata:
  name: nets
  namespace: demo
spec:
  networks:
  - cidr: 10.0.0.0/8
    except: [{except}]
  - cidr: fd00::/16
"
        )
    };
    let objects = parse(&text("10.1.0.0/16, 10.2.3.4")).unwrap();
    let Object::NetworkAuthentication(n) = &objects[0] else {
        panic!("not a NetworkAuthentication")
    };
    assert_eq!(n.spec.networks[0].except[1].to_string(), "10.2.3.4/32");
    assert_eq!(n.spec.networks[1].cidr.prefix_len(), 16);

    let p = refused_at(
        &text("10.1.0.0/16, 192.168.0.0/16"),
        "NetworkAuthentication demo/nets",
        "spec.networks[0].except[1]",
    );
    assert!(p.message.contains("not inside"), "{p}");
    refused_at(
        &text("0.0.0.0/0"),
        "NetworkAuthentication demo/nets",
        "spec.networks[0].except[0]",
    );
    refused_at(
        &text("10.0.0.0/33"),
        "NetworkAuthentication demo/nets",
        "spec.networks[0].except[0]",
    );
}

#[test]
fn cidr_parsing_and_containment() {
    let c = |s: &str| s.parse::<Cidr>().unwrap();
    assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
    assert_eq!(c("::1").to_string(), "::1/128");
    assert!(c("0.0.0.0/0").contains(&c("1.2.3.4")));
    assert!(!c("0.0.0.0/0").contains(&c("::/0")));
    assert!(c("fd00::/8").contains(&c("fd12::/16")));
    assert!(!c("fd12::/16").contains(&c("fd00::/8")));
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0/8",
        "fd00::/129",
        "x/8",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "accepted {bad:?}");
    }
}

#[test]
fn server_needs_exactly_one_selector() {
    let both = server(
        "  podSelector: {}\n  externalWorkloadSelector:\n    matchLabels: {app: b}\n  port: 80\n",
    );
    let p = refused_at(&both, SERVER, "spec");
    assert!(p.message.contains("both"), "{p}");
    let neither = server("  port: 80\n");
    let p = refused_at(&neither, SERVER, "spec");
    assert!(p.message.contains("exactly one"), "{p}");
    let ew = server("  externalWorkloadSelector:\n    matchLabels: {app: b}\n  port: http\n");
    let objects = parse(&ew).unwrap();
    let Object::Server(s) = &objects[0] else {
        panic!("not a Server")
    };
    assert_eq!(s.spec.port, ServerPort::Name("http".into()));
}

#[test]
fn bad_ports_are_refused() {
    for port in [
        "0",
        "65536",
        "-1",
        "\"8080\"",
        "Http",
        "1.5",
        "a-very-long-port-name",
    ] {
        let text = server(&format!("  podSelector: {{}}\n  port: {port}\n"));
        refused_at(&text, SERVER, "spec.port");
    }
    let text = server("  podSelector: {}\n  port: 80\n  accessPolicy: allow\n");
    refused_at(&text, SERVER, "spec.accessPolicy");
    let text = server("  podSelector: {}\n  port: 80\n  accessPolicy: cluster-authenticated\n");
    assert!(parse(&text).is_ok());
    let text = server("  podSelector: {}\n  port: 80\n  proxyProtocol: http\n");
    refused_at(&text, SERVER, "spec.proxyProtocol");
}

#[test]
fn mesh_tls_identities() {
    let text = |spec: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: m\n  namespace: demo\nspec:\n{spec}"
        )
    };
    let ok = "  identities: ['*', '*.demo.serviceaccount.identity.linkerd.cluster.local', 'spiffe://cluster.local/ns/demo/sa/web', 'web.demo.serviceaccount.identity.linkerd.cluster.local']\n";
    assert!(parse(&text(ok)).is_ok());
    let r = "MeshTLSAuthentication demo/m";
    refused_at(&text("  identities: ['web.*']\n"), r, "spec.identities[0]");
    refused_at(&text("  identities: []\n"), r, "spec");
    let both = "  identities: ['*']\n  identityRefs: [{kind: Namespace, name: demo}]\n";
    refused_at(&text(both), r, "spec");
}

fn route(rule: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata:
  name: r
  namespace: demo
spec:
  parentRefs:
  - {{name: backend-server, kind: Server, group: policy.linkerd.io, port: 8080}}
  hostnames: [backend.demo]
  rules:
  - {rule}
"
    )
}

#[test]
fn http_routes() {
    let ok = "matches:\n    - path: {type: PathPrefix, value: /api}\n      method: GET\n      headers: [{name: x-user, value: a}]\n    filters: []";
    let objects = parse(&route(ok)).unwrap();
    let Object::HttpRoute(h) = &objects[0] else {
        panic!("not an HTTPRoute")
    };
    let m = &h.spec.rules[0].matches[0];
    assert_eq!(m.path.as_ref().unwrap().kind, PathMatchType::PathPrefix);
    assert_eq!(m.headers[0].kind, HeaderMatchType::Exact);

    let r = "HTTPRoute demo/r";
    let regex = "matches: [{path: {type: RegularExpression, value: '/a.*'}}]";
    let p = refused_at(&route(regex), r, "spec.rules[0].matches[0].path.type");
    assert!(p.message.contains("not supported"), "{p}");
    let filters = "filters: [{type: RequestHeaderModifier}]";
    let p = refused_at(&route(filters), r, "spec.rules[0].filters");
    assert!(p.message.contains("not supported"), "{p}");
    let typo = "matches: [{paht: {value: /}}]";
    refused_at(&route(typo), r, "spec.rules[0].matches[0]");
    let rel = "matches: [{path: {value: api}}]";
    refused_at(&route(rel), r, "spec.rules[0].matches[0].path.value");
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

#[test]
fn label_selector_semantics() {
    use SelectorOperator::*;
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let bare = labels(&[]);
    assert!(LabelSelector::default().matches(&bare));

    let sel = LabelSelector {
        match_labels: labels(&[("app", "web")]),
        ..LabelSelector::default()
    };
    assert!(sel.matches(&web));
    assert!(!sel.matches(&labels(&[("app", "db")])));
    assert!(!sel.matches(&bare));

    let in_ = requirement("app", In, &["web", "api"]);
    assert!(in_.matches(&web));
    assert!(!in_.matches(&labels(&[("app", "db")])));
    assert!(!in_.matches(&bare));

    let not_in = requirement("app", NotIn, &["web"]);
    assert!(!not_in.matches(&web));
    assert!(not_in.matches(&labels(&[("app", "db")])));
    assert!(
        not_in.matches(&bare),
        "NotIn holds when the label is absent"
    );

    assert!(requirement("tier", Exists, &[]).matches(&web));
    assert!(!requirement("tier", Exists, &[]).matches(&bare));
    assert!(requirement("tier", DoesNotExist, &[]).matches(&bare));
    assert!(!requirement("tier", DoesNotExist, &[]).matches(&web));

    let mut both = requirement("tier", Exists, &[]);
    both.match_labels = labels(&[("app", "db")]);
    assert!(!both.matches(&web), "every part must hold");
}

#[test]
fn selector_expressions_are_checked() {
    let text = server(
        "  podSelector:\n    matchExpressions:\n    - {key: app, operator: In, values: []}\n  port: 80\n",
    );
    refused_at(&text, SERVER, "spec.podSelector.matchExpressions[0].values");
    let text = server(
        "  podSelector:\n    matchExpressions:\n    - {key: app, operator: Equals}\n  port: 80\n",
    );
    refused_at(
        &text,
        SERVER,
        "spec.podSelector.matchExpressions[0].operator",
    );
}

/// The guide's manifests as shipped in the repo's fixtures load unchanged.
#[test]
fn guide_fixture_file_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../weft/tests/fixtures/guide/policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let objects = crate::resources::parse_file(&path, &text).unwrap();
    let kinds: Vec<&str> = objects.iter().map(|o| o.kind().name()).collect();
    assert_eq!(
        kinds,
        vec!["Server", "AuthorizationPolicy", "MeshTLSAuthentication"]
    );
}
