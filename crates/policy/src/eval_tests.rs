//! Table-driven verdicts over hand-built inbound::Server messages, as the
//! proxy receives them: converted once, then judged.

use linkerd2_proxy_api::http_route::{HttpRouteMatch, PathMatch, path_match};
use linkerd2_proxy_api::inbound::{
    Authn, Authz, HttpRoute, Identity, IdentitySuffix, Network, ProxyProtocol, Server, authn,
    http_route, proxy_protocol,
};
use linkerd2_proxy_api::meta::{Metadata, Resource, metadata};

use crate::eval::{Client, Request};
use crate::{Facts, ReceiveError, Traffic, Verdict, judge};

fn typed(s: &Server) -> crate::Server {
    crate::Server::try_from(s.clone()).expect("a well-formed message converts")
}

/// An opaque connection's verdict (the Server below has no protocol, so
/// tests that need one set it).
fn authorize_connection(s: &Server, c: &Client) -> Verdict {
    judge(&typed(s), Facts::default(), c, Traffic::NotHttp)
}

fn authorize_request(s: &Server, c: &Client, r: &Request) -> Verdict {
    judge(&typed(s), Facts::default(), c, Traffic::Http(r))
}

fn net(cidr: &str, except: &[&str]) -> Network {
    let n: ipnet::IpNet = cidr.parse().unwrap();
    Network {
        net: Some(n.into()),
        except: except
            .iter()
            .map(|e| e.parse::<ipnet::IpNet>().unwrap().into())
            .collect(),
    }
}

fn named(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "policy.linkerd.io".into(),
            kind: kind.into(),
            name: name.into(),
            ..Default::default()
        })),
    })
}

fn authz(name: &str, nets: Vec<Network>, permit: Option<authn::Permit>) -> Authz {
    Authz {
        networks: nets,
        authentication: permit.map(|p| Authn { permit: Some(p) }),
        metadata: named("AuthorizationPolicy", name),
        ..Default::default()
    }
}

fn all() -> Vec<Network> {
    vec![net("0.0.0.0/0", &[]), net("::/0", &[])]
}

fn unauth() -> Option<authn::Permit> {
    Some(authn::Permit::Unauthenticated(
        authn::PermitUnauthenticated {},
    ))
}

fn identities(ids: &[&str], suffixes: &[&[&str]]) -> Option<authn::Permit> {
    Some(authn::Permit::MeshTls(authn::PermitMeshTls {
        clients: Some(authn::permit_mesh_tls::Clients::Identities(
            authn::permit_mesh_tls::PermitClientIdentities {
                identities: ids
                    .iter()
                    .map(|i| Identity {
                        name: i.to_string(),
                    })
                    .collect(),
                suffixes: suffixes
                    .iter()
                    .map(|s| IdentitySuffix {
                        parts: s.iter().map(|p| p.to_string()).collect(),
                    })
                    .collect(),
            },
        )),
    }))
}

fn any_tls() -> Option<authn::Permit> {
    Some(authn::Permit::MeshTls(authn::PermitMeshTls {
        clients: Some(authn::permit_mesh_tls::Clients::Unauthenticated(
            authn::PermitUnauthenticated {},
        )),
    }))
}

fn server(authzs: Vec<Authz>) -> Server {
    Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(
                proxy_protocol::Detect::default(),
            )),
        }),
        authorizations: authzs,
        labels: [
            ("kind".to_string(), "server".to_string()),
            ("name".to_string(), "backend-server".to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

const FRONTEND: &str = "frontend.demo.serviceaccount.identity.weft.cluster.local";
const OTHER: &str = "other.demo.serviceaccount.identity.weft.cluster.local";
const FOREIGN: &str = "web.prod.serviceaccount.identity.weft.cluster.local";

fn client(id: Option<&str>, tls: bool, ip: &str) -> Client {
    Client {
        identity: id.map(|i| i.parse().unwrap()),
        tls,
        ip: ip.parse().unwrap(),
    }
}

#[test]
fn connection_verdicts() {
    let cases: Vec<(&str, Vec<Authz>, Client, bool)> = vec![
        (
            "exact identity allowed",
            vec![authz("a", all(), identities(&[FRONTEND], &[]))],
            client(Some(FRONTEND), true, "10.0.0.1"),
            true,
        ),
        (
            "other identity denied",
            vec![authz("a", all(), identities(&[FRONTEND], &[]))],
            client(Some(OTHER), true, "10.0.0.1"),
            false,
        ),
        (
            "no identity denied",
            vec![authz("a", all(), identities(&[FRONTEND], &[]))],
            client(None, false, "10.0.0.1"),
            false,
        ),
        (
            "suffix matches",
            vec![authz(
                "a",
                all(),
                identities(
                    &[],
                    &[&[
                        "demo",
                        "serviceaccount",
                        "identity",
                        "weft",
                        "cluster",
                        "local",
                    ]],
                ),
            )],
            client(Some(OTHER), true, "10.0.0.1"),
            true,
        ),
        (
            "suffix excludes other namespace",
            vec![authz(
                "a",
                all(),
                identities(
                    &[],
                    &[&[
                        "demo",
                        "serviceaccount",
                        "identity",
                        "weft",
                        "cluster",
                        "local",
                    ]],
                ),
            )],
            client(Some(FOREIGN), true, "10.0.0.1"),
            false,
        ),
        (
            "empty suffix = all authenticated",
            vec![authz("a", all(), identities(&[], &[&[]]))],
            client(Some(FOREIGN), true, "10.0.0.1"),
            true,
        ),
        (
            "all authenticated refuses plaintext",
            vec![authz("a", all(), identities(&[], &[&[]]))],
            client(None, false, "10.0.0.1"),
            false,
        ),
        (
            "unauthenticated allows plaintext",
            vec![authz("a", all(), unauth())],
            client(None, false, "10.0.0.1"),
            true,
        ),
        (
            "any mesh TLS",
            vec![authz("a", all(), any_tls())],
            client(None, true, "10.0.0.1"),
            true,
        ),
        (
            "cluster network only",
            vec![authz("a", vec![net("10.0.0.0/8", &[])], unauth())],
            client(None, false, "192.0.2.1"),
            false,
        ),
        (
            "except carves out",
            vec![authz(
                "a",
                vec![net("10.0.0.0/8", &["10.1.0.0/16"])],
                unauth(),
            )],
            client(None, false, "10.1.2.3"),
            false,
        ),
        (
            "except leaves the rest",
            vec![authz(
                "a",
                vec![net("10.0.0.0/8", &["10.1.0.0/16"])],
                unauth(),
            )],
            client(None, false, "10.2.2.3"),
            true,
        ),
        (
            "no networks grants nothing",
            vec![authz("a", vec![], unauth())],
            client(None, false, "10.0.0.1"),
            false,
        ),
        (
            "no authorizations: deny",
            vec![],
            client(Some(FRONTEND), true, "10.0.0.1"),
            false,
        ),
        (
            "second authz can allow",
            vec![
                authz("a", all(), identities(&[OTHER], &[])),
                authz("b", all(), identities(&[FRONTEND], &[])),
            ],
            client(Some(FRONTEND), true, "10.0.0.1"),
            true,
        ),
    ];
    for (name, authzs, c, want) in cases {
        let v = authorize_connection(&server(authzs), &c);
        assert_eq!(v.allowed, want, "{name}: {:?}", v.reasons);
        assert!(v.reasons.len() >= 2, "{name}: reasons explain the verdict");
    }
}

#[test]
fn verdict_names_the_authorization() {
    let s = server(vec![authz(
        "backend-allow-frontend",
        all(),
        identities(&[FRONTEND], &[]),
    )]);
    let v = authorize_connection(&s, &client(Some(FRONTEND), true, "10.0.0.1"));
    assert_eq!(
        v.authz.unwrap().to_string(),
        "authorizationpolicy:backend-allow-frontend"
    );
    assert_eq!(v.reasons[0], "server server:backend-server");
}

fn route(name: &str, prefix: &str, authzs: Vec<Authz>) -> HttpRoute {
    HttpRoute {
        metadata: named("HTTPRoute", name),
        authorizations: authzs,
        rules: vec![http_route::Rule {
            matches: vec![HttpRouteMatch {
                path: Some(PathMatch {
                    kind: Some(path_match::Kind::Prefix(prefix.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn request_verdicts_follow_routes() {
    let mut s = server(vec![]);
    s.protocol = Some(ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: vec![
                route(
                    "admin",
                    "/admin",
                    vec![authz("ops", all(), identities(&[OTHER], &[]))],
                ),
                route(
                    "api",
                    "/api",
                    vec![authz("fe", all(), identities(&[FRONTEND], &[]))],
                ),
            ],
            ..Default::default()
        })),
    });
    let req = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        headers: vec![],
    };
    let fe = client(Some(FRONTEND), true, "10.0.0.1");
    assert!(authorize_request(&s, &fe, &req("/api/v1")).allowed);
    assert!(!authorize_request(&s, &fe, &req("/admin")).allowed);
    // Segment-wise prefixes: /apiary is not under /api.
    let v = authorize_request(&s, &fe, &req("/apiary"));
    assert!(!v.allowed && v.route.is_none(), "{:?}", v.reasons);
    assert_eq!(
        authorize_request(&s, &fe, &req("/api")).route.unwrap().name,
        "api"
    );
}

#[test]
fn the_most_specific_route_decides_not_the_first_by_name() {
    let mut s = server(vec![]);
    let mut exact = route(
        "b-admin",
        "/admin",
        vec![authz("ops", all(), identities(&[OTHER], &[]))],
    );
    exact.rules[0].matches[0].path = Some(PathMatch {
        kind: Some(path_match::Kind::Exact("/admin".into())),
    });
    s.protocol = Some(ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
            routes: vec![
                route("a-all", "/", vec![authz("anyone", all(), unauth())]),
                route("a-api", "/api", vec![authz("nobody", vec![], unauth())]),
                exact,
            ],
            ..Default::default()
        })),
    });
    let req = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        headers: vec![],
    };
    let anon = client(None, false, "10.0.0.1");
    // "/" sorts first and matches, but the exact route is more specific.
    let v = authorize_request(&s, &anon, &req("/admin"));
    assert!(!v.allowed, "{:?}", v.reasons);
    assert_eq!(v.route.unwrap().name, "b-admin");
    assert!(authorize_request(&s, &client(Some(OTHER), true, "10.0.0.1"), &req("/admin")).allowed);
    // The longer prefix wins over "/".
    assert_eq!(
        authorize_request(&s, &anon, &req("/api/x"))
            .route
            .unwrap()
            .name,
        "a-api"
    );
    assert!(authorize_request(&s, &anon, &req("/other")).allowed);
}

/// What cannot be represented is refused on receipt, naming what was
/// wrong; it never becomes a wider authorization.
#[test]
fn malformed_messages_are_refused_on_receipt() {
    let mut n = net("10.0.0.0/8", &[]);
    n.except.push(linkerd2_proxy_api::net::IpNetwork {
        ip: None,
        prefix_len: 8,
    });
    let unreadable_except = server(vec![authz("nets", vec![n], unauth())]);
    let no_authn = server(vec![authz("a", all(), None)]);
    let bad_identity = server(vec![authz(
        "a",
        all(),
        identities(&["not-an-identity"], &[]),
    )]);
    let mut no_protocol = server(vec![]);
    no_protocol.protocol = None;
    type Is = fn(&ReceiveError) -> bool;
    let cases: Vec<(Server, Is, &str)> = vec![
        (
            unreadable_except,
            |e| matches!(e, ReceiveError::BadNetwork { .. }),
            "exception",
        ),
        (
            no_authn,
            |e| matches!(e, ReceiveError::NoAuthentication { .. }),
            "no authentication",
        ),
        (
            bad_identity,
            |e| matches!(e, ReceiveError::BadIdentity { .. }),
            "not-an-identity",
        ),
        (
            no_protocol,
            |e| matches!(e, ReceiveError::NoProtocol { .. }),
            "no proxyProtocol",
        ),
    ];
    for (s, is, says) in cases {
        let e = crate::Server::try_from(s).unwrap_err();
        assert!(is(&e), "{e:?}");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn audit_is_a_default_not_a_name() {
    let c = client(None, false, "10.0.0.1");
    let mut by_default = authz("x", all(), unauth());
    by_default.metadata = Some(Metadata {
        kind: Some(metadata::Kind::Default("audit".into())),
    });
    let v = authorize_connection(&server(vec![by_default]), &c);
    assert!(v.allowed && v.audit, "{v:?}");
    let named_audit = authz("audit", all(), unauth());
    let v = authorize_connection(&server(vec![named_audit]), &c);
    assert!(v.allowed && !v.audit, "{v:?}");
    assert_eq!(v.authz.unwrap().to_string(), "authorizationpolicy:audit");
}
