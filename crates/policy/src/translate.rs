//! Policy resources → linkerd2-proxy-api `inbound::Server` for one workload
//! port: the messages the proxy enforces and `weft policy explain` judges.
//!
//! Fail closed: a reference that does not resolve drops its authorization
//! (it grants nothing) and is reported; an unreadable default is `deny`.

use std::collections::HashMap;

use linkerd2_proxy_api::http_route::{
    HeaderMatch, HttpRouteMatch, PathMatch, header_match, path_match,
};
use linkerd2_proxy_api::inbound::{
    Authn, Authz, HttpRoute, Identity as ApiIdentity, IdentitySuffix, Network, ProxyProtocol,
    Server, authn, http_route, proxy_protocol,
};
use linkerd2_proxy_api::meta::{Metadata, metadata};

use crate::resources::{
    AuthenticationKind, AuthorizationPolicy, Cidr, DefaultPolicy, IdentityRefKind, Kind, Object,
    PathMatchType, ProbeRoute, ProxyProtocol as ResProtocol, Server as ResServer, Snapshot,
    TargetKind, Workload,
};

pub use crate::defaults::{
    ANN_DEFAULT_POLICY, DEFAULT_CLUSTER_NETWORKS, PolicyDefaults, default_name, effective_default,
    parse_default,
};
pub use crate::unsettled::Unsettled;

pub struct Translated {
    pub server: Server,
    /// What could not be used, and was therefore not granted.
    pub problems: Vec<String>,
}

fn net(c: &Cidr) -> Option<linkerd2_proxy_api::net::IpNetwork> {
    ipnet::IpNet::new(c.addr(), c.prefix_len())
        .ok()
        .map(Into::into)
}

fn all_networks() -> Vec<Network> {
    ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|s| s.parse::<ipnet::IpNet>().ok())
        .map(|n| Network {
            net: Some(n.into()),
            except: vec![],
        })
        .collect()
}

fn unauthenticated() -> Authn {
    Authn {
        permit: Some(authn::Permit::Unauthenticated(
            authn::PermitUnauthenticated {},
        )),
    }
}

fn mesh(identities: Vec<String>, suffixes: Vec<Vec<String>>) -> Authn {
    Authn {
        permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls {
            clients: Some(authn::permit_mesh_tls::Clients::Identities(
                authn::permit_mesh_tls::PermitClientIdentities {
                    identities: identities
                        .into_iter()
                        .map(|name| ApiIdentity { name })
                        .collect(),
                    suffixes: suffixes
                        .into_iter()
                        .map(|parts| IdentitySuffix { parts })
                        .collect(),
                },
            )),
        })),
    }
}

fn resource_meta(kind: &str, name: &str, namespace: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(
            linkerd2_proxy_api::meta::Resource {
                group: "policy.linkerd.io".into(),
                kind: kind.into(),
                name: name.into(),
                namespace: namespace.into(),
                ..Default::default()
            },
        )),
    })
}

/// The authorizations a default policy grants.
pub fn default_authorizations(p: DefaultPolicy, d: &PolicyDefaults) -> Vec<Authz> {
    let cluster: Vec<Network> = d
        .cluster_networks
        .iter()
        .filter_map(net)
        .map(|n| Network {
            net: Some(n),
            except: vec![],
        })
        .collect();
    let (networks, authentication) = match p {
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
            (all_networks(), unauthenticated())
        }
        DefaultPolicy::AllAuthenticated => (all_networks(), mesh(vec![], vec![vec![]])),
        DefaultPolicy::ClusterUnauthenticated => (cluster, unauthenticated()),
        DefaultPolicy::ClusterAuthenticated => (cluster, mesh(vec![], vec![vec![]])),
        DefaultPolicy::Deny => return vec![],
    };
    vec![Authz {
        networks,
        authentication: Some(authentication),
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default(default_name(p).into())),
        }),
        ..Default::default()
    }]
}

fn default_route(authorizations: Vec<Authz>) -> HttpRoute {
    HttpRoute {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default("default".into())),
        }),
        authorizations,
        rules: vec![http_route::Rule {
            matches: vec![HttpRouteMatch {
                path: Some(PathMatch {
                    kind: Some(path_match::Kind::Prefix("/".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A Server's labels: its name, and weft's path setting when it asks for it
/// (carried in the labels, which Linkerd's proxies ignore).
fn server_labels(server: &ResServer, problems: &mut Vec<String>) -> HashMap<String, String> {
    let mut l = labels("server", &server.meta.name);
    match server
        .meta
        .annotations
        .get(crate::path::KEEP_ENCODED_SLASHES)
        .map(String::as_str)
    {
        Some("true") => {
            l.insert(crate::path::KEEP_ENCODED_SLASHES.into(), "true".into());
        }
        None | Some("false") => {}
        Some(other) => problems.push(format!(
            "Server {}: annotation {}: {other:?} is not true or false; encoded slashes stay refused until it is fixed",
            server.meta.name,
            crate::path::KEEP_ENCODED_SLASHES
        )),
    }
    l
}

fn labels(kind: &str, name: &str) -> HashMap<String, String> {
    [
        ("kind".to_string(), kind.to_string()),
        ("name".to_string(), name.to_string()),
    ]
    .into()
}

fn detect(d: &PolicyDefaults, routes: Vec<HttpRoute>) -> ProxyProtocol {
    ProxyProtocol {
        kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
            timeout: prost_types::Duration::try_from(d.detect_timeout).ok(),
            http_routes: routes,
            http_local_rate_limit: None,
        })),
    }
}

/// One AuthorizationPolicy as an Authz, or why it grants nothing; what it
/// names that can match no client is left out and noted in `notes`.
fn authz_for(
    p: &AuthorizationPolicy,
    snap: &Snapshot,
    d: &PolicyDefaults,
    notes: &mut Vec<String>,
) -> Result<Authz, String> {
    let ns = p.meta.namespace.clone().unwrap_or_else(|| "default".into());
    let mut networks = all_networks();
    let mut authentication = unauthenticated();
    for r in &p.spec.required_authentication_refs {
        let rns = r.namespace.clone().unwrap_or_else(|| ns.clone());
        let find = |kind: Kind| {
            snap.of_kind(kind).map(|s| &s.object).find(|o| {
                o.meta().name == r.name && o.meta().namespace.as_deref() == Some(rns.as_str())
            })
        };
        let dangling = |what: &str| {
            format!(
                "spec.requiredAuthenticationRefs: {what} {rns}/{} does not exist, so the policy grants nothing",
                r.name
            )
        };
        match r.kind {
            AuthenticationKind::NetworkAuthentication => {
                let Some(Object::NetworkAuthentication(n)) = find(Kind::NetworkAuthentication)
                else {
                    return Err(dangling("NetworkAuthentication"));
                };
                networks = n
                    .spec
                    .networks
                    .iter()
                    .map(|x| Network {
                        net: net(&x.cidr),
                        except: x.except.iter().filter_map(net).collect(),
                    })
                    .collect();
            }
            AuthenticationKind::ServiceAccount => {
                let id = pki::Identity::new(&r.name, &rns, &d.control_plane_ns, &d.trust_domain)
                    .map_err(|e| e.to_string())?;
                authentication = mesh(vec![id.to_string()], vec![]);
            }
            AuthenticationKind::MeshTlsAuthentication => {
                let Some(Object::MeshTlsAuthentication(m)) = find(Kind::MeshTlsAuthentication)
                else {
                    return Err(dangling("MeshTLSAuthentication"));
                };
                let (mut ids, mut suffixes) = (Vec::new(), Vec::new());
                for i in &m.spec.identities {
                    if i == "*" {
                        suffixes.push(vec![]);
                    } else if let Some(rest) = i.strip_prefix("*.") {
                        suffixes.push(rest.split('.').map(str::to_string).collect());
                    } else {
                        let id = if i.starts_with("spiffe://") {
                            i.parse::<pki::SpiffeId>()
                                .ok()
                                .and_then(|s| s.to_identity(&d.control_plane_ns).ok())
                        } else {
                            i.parse::<pki::Identity>().ok()
                        };
                        match id {
                            Some(id) => ids.push(id.to_string()),
                            // The proxy refuses a Server naming a non-identity;
                            // it could match no client anyway.
                            None => notes.push(format!(
                                "MeshTLSAuthentication {}/{}: {i:?} is not a mesh identity of this control plane, so it matches no client; it is left out",
                                m.meta.namespace.as_deref().unwrap_or("default"),
                                m.meta.name
                            )),
                        }
                    }
                }
                let mns = m.meta.namespace.clone().unwrap_or_else(|| "default".into());
                for ir in &m.spec.identity_refs {
                    let irns = ir.namespace.clone().unwrap_or_else(|| mns.clone());
                    match ir.kind {
                        IdentityRefKind::ServiceAccount => {
                            let id = pki::Identity::new(
                                &ir.name,
                                &irns,
                                &d.control_plane_ns,
                                &d.trust_domain,
                            )
                            .map_err(|e| e.to_string())?;
                            ids.push(id.to_string());
                        }
                        IdentityRefKind::Namespace => {
                            let mut parts = vec![
                                ir.name.clone(),
                                "serviceaccount".into(),
                                "identity".into(),
                                d.control_plane_ns.clone(),
                            ];
                            parts.extend(d.trust_domain.split('.').map(str::to_string));
                            suffixes.push(parts);
                        }
                    }
                }
                authentication = mesh(ids, suffixes);
            }
        }
    }
    Ok(Authz {
        networks,
        authentication: Some(authentication),
        metadata: resource_meta("AuthorizationPolicy", &p.meta.name, &ns),
        ..Default::default()
    })
}

/// The inbound::Server for `port` of workload `w`, as at a cold start: of
/// Servers that conflict, the first by name.
pub fn translate(
    snap: &Snapshot,
    w: &Workload,
    port: u16,
    d: &PolicyDefaults,
    unsettled: &Unsettled,
) -> Translated {
    translate_keeping(snap, w, port, d, unsettled, None)
}

/// As `translate`, but when Servers conflict the one named `in_force` (the
/// Server already serving this port) stays, so a new Server cannot take over
/// a port by sorting first.
pub fn translate_keeping(
    snap: &Snapshot,
    w: &Workload,
    port: u16,
    d: &PolicyDefaults,
    unsettled: &Unsettled,
    in_force: Option<&str>,
) -> Translated {
    let mut t = translate_servers(snap, w, port, d, unsettled, in_force);
    let probes: Vec<&ProbeRoute> = w.probes.iter().filter(|p| p.port == port).collect();
    if !probes.is_empty() {
        add_probe_routes(&mut t, &probes, w);
    }
    t
}

/// The kubelet's probes on this port are allowed from anyone (Linkerd's
/// default probe route), whatever the Server or default: meshing never
/// fails a probe. Other paths are judged as before; an opaque port has no
/// routes to add them to, so its probes go unauthorized and say so.
fn add_probe_routes(t: &mut Translated, probes: &[&ProbeRoute], w: &Workload) {
    let route = |p: &ProbeRoute| HttpRoute {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default("probe".into())),
        }),
        authorizations: vec![Authz {
            networks: all_networks(),
            authentication: Some(unauthenticated()),
            metadata: Some(Metadata {
                kind: Some(metadata::Kind::Default("probe".into())),
            }),
            ..Default::default()
        }],
        rules: vec![http_route::Rule {
            matches: vec![HttpRouteMatch {
                path: Some(PathMatch {
                    kind: Some(path_match::Kind::Exact(p.path.clone())),
                }),
                method: Some(linkerd2_proxy_api::http_types::HttpMethod {
                    r#type: Some(
                        linkerd2_proxy_api::http_types::http_method::Type::Registered(
                            linkerd2_proxy_api::http_types::http_method::Registered::Get.into(),
                        ),
                    ),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let routes = match t.server.protocol.as_mut().and_then(|p| p.kind.as_mut()) {
        Some(proxy_protocol::Kind::Detect(x)) => &mut x.http_routes,
        Some(proxy_protocol::Kind::Http1(x)) => &mut x.routes,
        Some(proxy_protocol::Kind::Http2(x)) => &mut x.routes,
        _ => {
            t.problems.push(format!(
                "{w} port {}: the kubelet's HTTP probes cannot be allowed on a port that is not HTTP; they are judged as any other connection",
                probes[0].port
            ));
            return;
        }
    };
    routes.extend(probes.iter().map(|p| route(p)));
}

fn translate_servers(
    snap: &Snapshot,
    w: &Workload,
    port: u16,
    d: &PolicyDefaults,
    unsettled: &Unsettled,
    in_force: Option<&str>,
) -> Translated {
    let mut problems = Vec::new();
    let ns = w.namespace().to_string();
    let port_name = w.port_name(port).map(str::to_string);
    let servers = crate::servers::servers_for(snap, w, port);
    let kept = in_force.and_then(|n| servers.iter().copied().find(|s| s.meta.name == n));
    let Some(server) = kept.or(servers.first().copied()) else {
        if unsettled.covers(w, port, port_name.as_deref()) {
            problems.push(format!(
                "{} could not be loaded and may define a Server for {ns}/{} port {port}; denying instead of applying the default until it is fixed",
                unsettled.files.join(", "),
                w.meta.name
            ));
            return Translated {
                server: Server {
                    protocol: Some(detect(d, vec![default_route(vec![])])),
                    authorizations: vec![],
                    labels: labels("default", "deny"),
                    ..Default::default()
                },
                problems,
            };
        }
        let p = effective_default(snap, w, d, &mut problems);
        let authz = default_authorizations(p, d);
        return Translated {
            server: Server {
                protocol: Some(detect(d, vec![default_route(authz.clone())])),
                authorizations: authz,
                labels: labels("default", default_name(p)),
                ..Default::default()
            },
            problems,
        };
    };
    if servers.len() > 1 {
        let names: Vec<&str> = servers.iter().map(|s| s.meta.name.as_str()).collect();
        problems.push(format!(
            "Servers {} all select {ns}/{} port {port}; {} is in force ({}); remove or narrow the others",
            names.join(", "),
            w.meta.name,
            server.meta.name,
            if kept.is_some() {
                "it was already serving the port"
            } else {
                "first by name"
            }
        ));
    }
    let policies: Vec<&AuthorizationPolicy> = snap
        .of_kind(Kind::AuthorizationPolicy)
        .filter_map(|s| match &s.object {
            Object::AuthorizationPolicy(p) if p.meta.namespace.as_deref() == Some(ns.as_str()) => {
                Some(p)
            }
            _ => None,
        })
        .collect();
    let mut server_authz = Vec::new();
    let mut route_authz: HashMap<String, Vec<Authz>> = HashMap::new();
    for p in &policies {
        let t = &p.spec.target_ref;
        let applies = match t.kind {
            TargetKind::Server => t.name == server.meta.name,
            TargetKind::Namespace => t.name == ns,
            TargetKind::HttpRoute => true,
        };
        if !applies {
            continue;
        }
        match authz_for(p, snap, d, &mut problems) {
            Ok(a) if t.kind == TargetKind::HttpRoute => {
                route_authz.entry(t.name.clone()).or_default().push(a)
            }
            Ok(a) => server_authz.push(a),
            Err(why) => problems.push(format!("AuthorizationPolicy {ns}/{}: {why}", p.meta.name)),
        }
    }
    if let Some(fallback) = server.spec.access_policy {
        server_authz.extend(default_authorizations(fallback, d));
    }
    let mut routes: Vec<HttpRoute> = snap
        .of_kind(Kind::HttpRoute)
        .filter_map(|s| match &s.object {
            Object::HttpRoute(r) if r.meta.namespace.as_deref() == Some(ns.as_str()) => Some(r),
            _ => None,
        })
        .filter(|r| r.spec.parent_refs.iter().any(|p| p.name == server.meta.name && p.kind.as_deref().is_none_or(|k| k == "Server")))
        .map(|r| {
            let mut authorizations = server_authz.clone();
            authorizations.extend(route_authz.get(&r.meta.name).cloned().unwrap_or_default());
            HttpRoute {
                metadata: resource_meta("HTTPRoute", &r.meta.name, &ns),
                authorizations,
                rules: r
                    .spec
                    .rules
                    .iter()
                    .map(|rule| http_route::Rule {
                        matches: rule
                            .matches
                            .iter()
                            .map(|m| HttpRouteMatch {
                                path: m.path.as_ref().map(|p| PathMatch {
                                    kind: Some(match p.kind {
                                        PathMatchType::Exact => path_match::Kind::Exact(p.value.clone()),
                                        PathMatchType::PathPrefix => path_match::Kind::Prefix(p.value.clone()),
                                        PathMatchType::RegularExpression => path_match::Kind::Regex(p.value.clone()),
                                    }),
                                }),
                                headers: m
                                    .headers
                                    .iter()
                                    .map(|h| HeaderMatch {
                                        name: h.name.clone(),
                                        value: Some(header_match::Value::Exact(h.value.clone().into_bytes())),
                                    })
                                    .collect(),
                                method: m.method.as_ref().map(|m| linkerd2_proxy_api::http_types::HttpMethod {
                                    r#type: Some(linkerd2_proxy_api::http_types::http_method::Type::Unregistered(m.clone())),
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    // A conflicted HTTPRoute is absent, but its parent is unknown: without it
    // a request could fall to a wider route (or the default one), so every
    // Server in its namespace serves no route (each request denied).
    let conflicted_routes: Vec<String> = snap
        .conflicted
        .keys()
        .filter(|k| k.kind == Kind::HttpRoute && k.namespace.as_deref() == Some(ns.as_str()))
        .map(|k| k.name.clone())
        .collect();
    if !conflicted_routes.is_empty() {
        problems.push(format!(
            "HTTPRoute {ns}/{} is defined more than once: every request to Server {} is denied until exactly one definition remains",
            conflicted_routes.join(", "),
            server.meta.name
        ));
        routes.clear();
    } else if routes.is_empty() {
        routes.push(default_route(server_authz.clone()));
    }
    let protocol = match server.spec.proxy_protocol {
        ResProtocol::Unknown => detect(d, routes),
        ResProtocol::Http1 => ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http1(proxy_protocol::Http1 {
                routes,
                local_rate_limit: None,
            })),
        },
        ResProtocol::Http2 | ResProtocol::Grpc => ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Http2(proxy_protocol::Http2 {
                routes,
                local_rate_limit: None,
            })),
        },
        ResProtocol::Opaque => ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {})),
        },
        ResProtocol::Tls => ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Tls(proxy_protocol::Tls {})),
        },
    };
    Translated {
        server: Server {
            protocol: Some(protocol),
            authorizations: server_authz,
            labels: server_labels(server, &mut problems),
            ..Default::default()
        },
        problems,
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
