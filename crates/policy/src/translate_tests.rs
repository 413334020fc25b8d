//! Resources → inbound::Server → verdict, with the same evaluator the proxy
//! and `weft policy explain` use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{Client, Facts, Request, Traffic, Verdict, judge};

use super::*;
use crate::resources::{FileOutcome, merge, parse_file};

const GUIDE: &str = include_str!("../../weft/tests/fixtures/guide/policy.yaml");

fn workloads(extra_ann: &str) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: backend
  namespace: demo
  labels:
    app: backend
{extra_ann}spec:
  meshTLS:
    identity: backend.demo.serviceaccount.identity.weft.cluster.local
    serverName: backend.demo.serviceaccount.identity.weft.cluster.local
  workloadIPs:
  - ip: 10.0.0.2
  ports:
  - port: 8080
    name: http
  - port: 9090
"
    )
}

/// The guide's Server alone, renamed: a second Server on its port (the
/// guide's other objects would conflict by name, and be refused).
fn aaa_server() -> String {
    GUIDE
        .split("\n---\n")
        .find(|d| d.contains("kind: Server\n"))
        .expect("the guide defines a Server")
        .replacen("name: backend-server\n", "name: aaa-server\n", 1)
}

fn snapshot(files: &[&str]) -> Snapshot {
    let mut read = BTreeMap::new();
    for (i, text) in files.iter().enumerate() {
        let path = PathBuf::from(format!("f{i}.yaml"));
        let objects = parse_file(&path, text).unwrap_or_else(|p| panic!("{p:?}"));
        read.insert(
            path,
            FileOutcome::Parsed {
                objects,
                warnings: vec![],
            },
        );
    }
    merge(&Snapshot::default(), Ok(read))
}

fn defaults(p: DefaultPolicy) -> PolicyDefaults {
    PolicyDefaults {
        default_policy: p,
        cluster_networks: DEFAULT_CLUSTER_NETWORKS
            .split(',')
            .map(|c| c.parse().unwrap())
            .collect(),
        control_plane_ns: "weft".into(),
        trust_domain: "cluster.local".into(),
        detect_timeout: std::time::Duration::from_secs(10),
    }
}

fn backend(s: &Snapshot) -> crate::resources::Workload {
    s.external_workloads()
        .find(|w| w.meta.name == "backend")
        .map(crate::resources::Workload::from)
        .unwrap()
}

const FRONTEND: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";
const OTHER: &str = "other.demo.serviceaccount.identity.weft.cluster.local";

/// The translated message as the proxy receives it: converted, then judged.
fn authorize_connection(s: &Server, c: &Client) -> Verdict {
    let typed = crate::Server::try_from(s.clone()).expect("the translation converts");
    judge(&typed, Facts::default(), c, Traffic::NotHttp)
}

fn authorize_request(s: &Server, c: &Client, r: &Request) -> Verdict {
    let typed = crate::Server::try_from(s.clone()).expect("the translation converts");
    judge(&typed, Facts::default(), c, Traffic::Http(r))
}

fn meshed(id: &str) -> Client {
    Client {
        identity: Some(id.parse().unwrap()),
        tls: true,
        ip: "10.0.0.9".parse().unwrap(),
    }
}

fn unmeshed(ip: &str) -> Client {
    Client {
        identity: None,
        tls: false,
        ip: ip.parse().unwrap(),
    }
}

fn verdict(
    files: &[&str],
    port: u16,
    c: &Client,
    d: DefaultPolicy,
) -> (bool, Vec<String>, Vec<String>) {
    let s = snapshot(files);
    let t = translate(&s, &backend(&s), port, &defaults(d), &Unsettled::default());
    let v = authorize_connection(&t.server, c);
    (v.allowed, v.reasons, t.problems)
}

#[test]
fn the_guides_policy() {
    let w = workloads("");
    let files = [GUIDE, w.as_str()];
    let (ok, reasons, problems) = verdict(
        &files,
        8080,
        &meshed(FRONTEND),
        DefaultPolicy::AllUnauthenticated,
    );
    assert!(ok, "{reasons:?}");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("backend-allow-frontend allows")),
        "{reasons:?}"
    );
    assert!(
        !verdict(
            &files,
            8080,
            &meshed(OTHER),
            DefaultPolicy::AllUnauthenticated
        )
        .0
    );
    assert!(
        !verdict(
            &files,
            8080,
            &unmeshed("10.0.0.9"),
            DefaultPolicy::AllUnauthenticated
        )
        .0
    );
    // A port without a Server follows the default.
    assert!(
        verdict(
            &files,
            9090,
            &unmeshed("10.0.0.9"),
            DefaultPolicy::AllUnauthenticated
        )
        .0
    );
    assert!(!verdict(&files, 9090, &unmeshed("10.0.0.9"), DefaultPolicy::Deny).0);
}

#[test]
fn defaults_and_their_overrides() {
    let w = workloads("");
    let cases = [
        (
            DefaultPolicy::AllUnauthenticated,
            unmeshed("192.0.2.1"),
            true,
        ),
        (DefaultPolicy::AllAuthenticated, unmeshed("10.0.0.9"), false),
        (DefaultPolicy::AllAuthenticated, meshed(OTHER), true),
        (
            DefaultPolicy::ClusterUnauthenticated,
            unmeshed("10.1.2.3"),
            true,
        ),
        (
            DefaultPolicy::ClusterUnauthenticated,
            unmeshed("192.0.2.1"),
            false,
        ),
        (DefaultPolicy::ClusterAuthenticated, meshed(OTHER), true),
        (
            DefaultPolicy::ClusterAuthenticated,
            unmeshed("10.1.2.3"),
            false,
        ),
        (DefaultPolicy::Deny, meshed(FRONTEND), false),
        (DefaultPolicy::Audit, unmeshed("192.0.2.1"), true),
    ];
    for (d, c, want) in cases {
        assert_eq!(verdict(&[w.as_str()], 9090, &c, d).0, want, "{d:?} {c:?}");
    }
    // The namespace annotation beats the cluster default; the workload's beats both.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  annotations:\n    config.linkerd.io/default-inbound-policy: deny\n";
    assert!(
        !verdict(
            &[w.as_str(), ns],
            9090,
            &unmeshed("10.0.0.9"),
            DefaultPolicy::AllUnauthenticated
        )
        .0
    );
    let wl = workloads(
        "  annotations:\n    config.linkerd.io/default-inbound-policy: all-unauthenticated\n",
    );
    assert!(
        verdict(
            &[wl.as_str(), ns],
            9090,
            &unmeshed("10.0.0.9"),
            DefaultPolicy::Deny
        )
        .0
    );
    // An unreadable value is deny, and said.
    let bad = workloads(
        "  annotations:\n    config.linkerd.io/default-inbound-policy: allow-everything\n",
    );
    let (ok, _, problems) = verdict(
        &[bad.as_str()],
        9090,
        &unmeshed("10.0.0.9"),
        DefaultPolicy::AllUnauthenticated,
    );
    assert!(
        !ok && problems[0].contains("not a default policy"),
        "{problems:?}"
    );
}

#[test]
fn dangling_references_grant_nothing() {
    let w = workloads("");
    // The guide's policy without its MeshTLSAuthentication (as the guide itself ships it).
    let without: String = GUIDE.split("---").take(2).collect::<Vec<_>>().join("---");
    let (ok, _, problems) = verdict(
        &[without.as_str(), w.as_str()],
        8080,
        &meshed(FRONTEND),
        DefaultPolicy::AllUnauthenticated,
    );
    assert!(!ok);
    assert!(
        problems[0].contains("MeshTLSAuthentication demo/frontend-sa does not exist"),
        "{problems:?}"
    );
}

#[test]
fn network_service_account_and_namespace_refs() {
    let w = workloads("");
    let server = "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: s\n  namespace: demo\nspec:\n  podSelector:\n    matchLabels:\n      app: backend\n  port: http\n";
    let policy = |refs: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: demo\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: s\n  requiredAuthenticationRefs:\n{refs}"
        )
    };
    let nets = "apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata:\n  name: office\n  namespace: demo\nspec:\n  networks:\n  - cidr: 10.0.0.0/8\n    except:\n    - 10.9.0.0/16\n";
    let net_policy =
        policy("  - group: policy.linkerd.io\n    kind: NetworkAuthentication\n    name: office\n");
    let files = [w.as_str(), server, nets, net_policy.as_str()];
    assert!(verdict(&files, 8080, &unmeshed("10.1.1.1"), DefaultPolicy::Deny).0);
    assert!(!verdict(&files, 8080, &unmeshed("10.9.1.1"), DefaultPolicy::Deny).0);
    assert!(!verdict(&files, 8080, &unmeshed("192.0.2.1"), DefaultPolicy::Deny).0);

    let sa_policy = policy("  - kind: ServiceAccount\n    name: frontend\n");
    let files = [w.as_str(), server, sa_policy.as_str()];
    assert!(verdict(&files, 8080, &meshed(FRONTEND), DefaultPolicy::Deny).0);
    assert!(!verdict(&files, 8080, &meshed(OTHER), DefaultPolicy::Deny).0);

    let mtls = "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: whole-ns\n  namespace: demo\nspec:\n  identityRefs:\n  - kind: Namespace\n    name: demo\n";
    let ns_policy = policy(
        "  - group: policy.linkerd.io\n    kind: MeshTLSAuthentication\n    name: whole-ns\n",
    );
    let files = [w.as_str(), server, mtls, ns_policy.as_str()];
    assert!(verdict(&files, 8080, &meshed(OTHER), DefaultPolicy::Deny).0);
    assert!(
        !verdict(
            &files,
            8080,
            &meshed("web.prod.serviceaccount.identity.weft.cluster.local"),
            DefaultPolicy::Deny
        )
        .0
    );

    let spiffe = "apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: sp\n  namespace: demo\nspec:\n  identities:\n  - spiffe://cluster.local/ns/demo/sa/frontend\n";
    let sp_policy =
        policy("  - group: policy.linkerd.io\n    kind: MeshTLSAuthentication\n    name: sp\n");
    let files = [w.as_str(), server, spiffe, sp_policy.as_str()];
    assert!(
        verdict(&files, 8080, &meshed(FRONTEND), DefaultPolicy::Deny).0,
        "SPIFFE ID translated to the DNS identity"
    );
}

#[test]
fn conflicting_servers_keep_the_first_by_name() {
    let w = workloads("");
    let two = aaa_server();
    let (ok, _, problems) = verdict(
        &[GUIDE, two.as_str(), w.as_str()],
        8080,
        &meshed(FRONTEND),
        DefaultPolicy::AllUnauthenticated,
    );
    // aaa-server is in force and nothing authorizes it: denied, never the default.
    assert!(!ok);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("aaa-server is in force")),
        "{problems:?}"
    );
}

#[test]
fn a_server_in_force_stays_when_another_claims_its_port() {
    let w = workloads("");
    let two = aaa_server();
    let s = snapshot(&[GUIDE, two.as_str(), w.as_str()]);
    let t = crate::translate::translate_keeping(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &Unsettled::default(),
        Some("backend-server"),
    );
    assert_eq!(t.server.labels["name"], "backend-server");
    assert!(authorize_connection(&t.server, &meshed(FRONTEND)).allowed);
    assert!(
        t.problems
            .iter()
            .any(|p| p.contains("it was already serving the port")),
        "{:?}",
        t.problems
    );
    // The one in force gone: the other takes over, never the default.
    let s = snapshot(&[two.as_str(), w.as_str()]);
    let t = crate::translate::translate_keeping(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &Unsettled::default(),
        Some("backend-server"),
    );
    assert_eq!(t.server.labels["name"], "aaa-server");
}

#[test]
fn route_scoped_authorization() {
    let w = workloads("");
    let server = "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: s\n  namespace: demo\nspec:\n  podSelector:\n    matchLabels:\n      app: backend\n  port: 8080\n  proxyProtocol: HTTP/1\n";
    let route = "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata:\n  name: api\n  namespace: demo\nspec:\n  parentRefs:\n  - name: s\n    kind: Server\n    group: policy.linkerd.io\n  rules:\n  - matches:\n    - path:\n        type: PathPrefix\n        value: /api\n      method: GET\n";
    let policy = "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: api-frontend\n  namespace: demo\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: HTTPRoute\n    name: api\n  requiredAuthenticationRefs:\n  - kind: ServiceAccount\n    name: frontend\n";
    let s = snapshot(&[w.as_str(), server, route, policy]);
    let t = translate(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &Unsettled::default(),
    );
    let req = |m: &str, p: &str| Request {
        method: m.into(),
        path: p.into(),
        headers: vec![],
    };
    let v = authorize_request(&t.server, &meshed(FRONTEND), &req("GET", "/api/items"));
    assert!(v.allowed, "{:?}", v.reasons);
    assert_eq!(v.route.unwrap().name, "api");
    assert!(!authorize_request(&t.server, &meshed(OTHER), &req("GET", "/api/items")).allowed);
    assert!(!authorize_request(&t.server, &meshed(FRONTEND), &req("POST", "/api/items")).allowed);
    assert!(!authorize_request(&t.server, &meshed(FRONTEND), &req("GET", "/admin")).allowed);
}

#[test]
fn an_unloadable_server_file_denies_instead_of_the_default() {
    let w = workloads("");
    let s = snapshot(&[w.as_str()]);
    let unsettled = Unsettled {
        namespaces: ["demo".to_string()].into(),
        all: false,
        files: vec!["policy.yaml".into()],
        narrow: Default::default(),
    };
    let t = translate(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &unsettled,
    );
    assert!(!authorize_connection(&t.server, &unmeshed("10.0.0.9")).allowed);
    assert!(
        t.problems[0].contains("denying instead of applying the default"),
        "{:?}",
        t.problems
    );
    // Another namespace is unaffected.
    let other = Unsettled {
        namespaces: ["prod".to_string()].into(),
        ..unsettled
    };
    let t = translate(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &other,
    );
    assert!(authorize_connection(&t.server, &unmeshed("10.0.0.9")).allowed);
}

/// Verdicts of an unauthenticated client on backend's ports 8080 and 9090
/// (no valid Server; the default allows) with `bad` as a refused file.
fn verdicts_beside_refused(bad: &str) -> (bool, bool) {
    let w = workloads("");
    let mut read = BTreeMap::new();
    let good = PathBuf::from("workloads.yaml");
    let objects = parse_file(&good, &w).unwrap_or_else(|p| panic!("{p:?}"));
    read.insert(
        good,
        FileOutcome::Parsed {
            objects,
            warnings: vec![],
        },
    );
    let path = PathBuf::from("bad.yaml");
    let problems = parse_file(&path, bad).expect_err("the file is refused");
    read.insert(path, FileOutcome::Refused(problems));
    let s = merge(&Snapshot::default(), Ok(read));
    let unsettled = Unsettled::of(&s, |_| Some(bad.to_string()));
    let allowed = |port| {
        let t = translate(
            &s,
            &backend(&s),
            port,
            &defaults(DefaultPolicy::AllUnauthenticated),
            &unsettled,
        );
        authorize_connection(&t.server, &unmeshed("10.0.0.9")).allowed
    };
    (allowed(8080), allowed(9090))
}

#[test]
fn a_refused_server_denies_the_ports_it_selects_and_no_others() {
    let server = |port: &str, selector: &str| {
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: broken\n  namespace: demo\nspec:\n  {selector}\n  port: {port}\n  proxyProtocol: Bogus\n"
        )
    };
    let by_label = "podSelector:\n    matchLabels:\n      app: backend";
    // Readable selection: only what it selects denies, by number or name.
    assert_eq!(
        verdicts_beside_refused(&server("8080", by_label)),
        (false, true)
    );
    assert_eq!(
        verdicts_beside_refused(&server("http", by_label)),
        (false, true)
    );
    // Selecting other workloads: nothing of backend's changes.
    let other = "podSelector:\n    matchLabels:\n      app: other";
    assert_eq!(
        verdicts_beside_refused(&server("8080", other)),
        (true, true)
    );
    // Unreadable selection: every port of the namespace denies.
    let unreadable = "podSelector: 7";
    assert_eq!(
        verdicts_beside_refused(&server("8080", unreadable)),
        (false, false)
    );
    assert_eq!(
        verdicts_beside_refused(&server("[1]", by_label)),
        (false, false)
    );
    // A selector Kubernetes would not accept selects nothing it meant.
    let invalid =
        "podSelector:\n    matchExpressions:\n    - key: app\n      operator: In\n      values: []";
    assert_eq!(
        verdicts_beside_refused(&server("8080", invalid)),
        (false, false)
    );
}

/// The guide's document of `kind`, verbatim.
fn guide_doc(kind: &str) -> String {
    GUIDE
        .split("\n---\n")
        .find(|d| d.contains(&format!("kind: {kind}\n")))
        .expect("the guide defines it")
        .to_string()
}

#[test]
fn a_conflicted_server_denies_its_port_instead_of_the_default() {
    let w = workloads("");
    let copy = guide_doc("Server");
    let s = snapshot(&[GUIDE, copy.as_str(), w.as_str()]);
    assert_eq!(s.conflicted.len(), 1);
    let unsettled = Unsettled::of(&s, |_| None);
    let t = translate(
        &s,
        &backend(&s),
        8080,
        &defaults(DefaultPolicy::AllUnauthenticated),
        &unsettled,
    );
    assert!(!authorize_connection(&t.server, &meshed(FRONTEND)).allowed);
    assert!(!authorize_connection(&t.server, &unmeshed("10.0.0.9")).allowed);
}

#[test]
fn a_conflicted_authorization_grants_nothing_whichever_file_sorts_first() {
    let w = workloads("");
    // The same AuthorizationPolicy, but any network at all: wider than the
    // guide's frontend-only definition.
    let open = format!(
        "{}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata:\n  name: all\n  namespace: demo\nspec:\n  networks:\n  - cidr: 0.0.0.0/0\n",
        guide_doc("AuthorizationPolicy").replace(
            "  - name: frontend-sa\n    kind: MeshTLSAuthentication",
            "  - name: all\n    kind: NetworkAuthentication"
        )
    );
    let server = guide_doc("Server");
    let d = DefaultPolicy::AllUnauthenticated;
    let client = unmeshed("10.0.0.9");
    // Alone, each definition gives its own verdict (the test can fail).
    assert!(
        verdict(
            &[server.as_str(), open.as_str(), w.as_str()],
            8080,
            &client,
            d
        )
        .0
    );
    assert!(!verdict(&[GUIDE, w.as_str()], 8080, &client, d).0);
    for files in [
        [GUIDE, open.as_str(), w.as_str()],
        [open.as_str(), GUIDE, w.as_str()],
    ] {
        let (ok, reasons, _) = verdict(&files, 8080, &client, d);
        assert!(!ok, "{reasons:?}");
        let (ok, reasons, _) = verdict(&files, 8080, &meshed(FRONTEND), d);
        assert!(!ok, "{reasons:?}");
    }
}

#[test]
fn the_keep_encoded_slashes_annotation_reaches_the_typed_server() {
    let w = workloads("");
    let with = |v: &str| {
        guide_doc("Server").replacen(
            "  namespace: demo\n",
            &format!(
                "  namespace: demo\n  annotations:\n    {}: \"{v}\"\n",
                crate::path::KEEP_ENCODED_SLASHES
            ),
            1,
        )
    };
    for (v, keep, problem) in [
        ("true", true, false),
        ("false", false, false),
        ("yes", false, true),
    ] {
        let server = with(v);
        let s = snapshot(&[server.as_str(), w.as_str()]);
        let t = translate(
            &s,
            &backend(&s),
            8080,
            &defaults(DefaultPolicy::AllUnauthenticated),
            &Unsettled::default(),
        );
        assert_eq!(
            t.problems.iter().any(|p| p.contains("not true or false")),
            problem,
            "{:?}",
            t.problems
        );
        let typed = crate::Server::try_from(t.server).unwrap();
        assert_eq!(typed.keep_encoded_slashes, keep, "{v}");
    }
}

#[test]
fn a_conflicted_route_denies_every_request_rather_than_fall_wider() {
    let w = workloads("");
    let server = guide_doc("Server");
    let open = "apiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: open\n  namespace: demo\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: backend-server\n  requiredAuthenticationRefs:\n  - kind: ServiceAccount\n    name: frontend\n";
    let route = "apiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\nmetadata:\n  name: api\n  namespace: demo\nspec:\n  parentRefs:\n  - name: backend-server\n    kind: Server\n    group: policy.linkerd.io\n  rules:\n  - matches:\n    - path:\n        type: PathPrefix\n        value: /api\n";
    let judge = |files: &[&str], path: &str| {
        let s = snapshot(files);
        let t = translate(
            &s,
            &backend(&s),
            8080,
            &defaults(DefaultPolicy::AllUnauthenticated),
            &Unsettled::default(),
        );
        let typed = crate::Server::try_from(t.server).unwrap();
        let req = Request {
            method: "GET".into(),
            path: path.into(),
            headers: vec![],
        };
        (
            crate::eval::request(&typed, &meshed(FRONTEND), &req)
                .authz
                .is_some(),
            t.problems,
        )
    };
    // One definition: /api served, /admin matches no route.
    assert!(judge(&[server.as_str(), open, route, w.as_str()], "/api/x").0);
    assert!(!judge(&[server.as_str(), open, route, w.as_str()], "/admin").0);
    // Two: without the route /admin would fall to the default route; denied.
    let (ok, problems) = judge(&[server.as_str(), open, route, route, w.as_str()], "/admin");
    assert!(!ok);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("defined more than once")),
        "{problems:?}"
    );
    assert!(!judge(&[server.as_str(), open, route, route, w.as_str()], "/api/x").0);
}
