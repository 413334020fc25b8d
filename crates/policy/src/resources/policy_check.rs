//! Reading a policy kind's `spec` and the checks Linkerd's admission webhook
//! makes on it. A spec that fails any check refuses its file.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::de::{FieldError, from_value};
use super::policy::{
    AuthenticationKind, AuthorizationPolicy, AuthorizationPolicySpec, HttpRoute, HttpRouteSpec,
    IdentityRefKind, MeshTlsAuthentication, MeshTlsAuthenticationSpec, NetworkAuthentication,
    NetworkAuthenticationSpec, PathMatchType, SelectorOperator, Server, ServerSpec, TargetKind,
};
use super::types::{Kind, Meta, Object};

const POLICY_GROUP: &str = "policy.linkerd.io";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A checked policy spec, waiting for its metadata.
pub(super) enum PolicySpec {
    Server(ServerSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    MeshTlsAuthentication(MeshTlsAuthenticationSpec),
    NetworkAuthentication(NetworkAuthenticationSpec),
    HttpRoute(HttpRouteSpec),
}

impl PolicySpec {
    pub(super) fn into_object(self, meta: Meta) -> Object {
        match self {
            PolicySpec::Server(spec) => Object::Server(Server { meta, spec }),
            PolicySpec::AuthorizationPolicy(spec) => {
                Object::AuthorizationPolicy(AuthorizationPolicy { meta, spec })
            }
            PolicySpec::MeshTlsAuthentication(spec) => {
                Object::MeshTlsAuthentication(MeshTlsAuthentication { meta, spec })
            }
            PolicySpec::NetworkAuthentication(spec) => {
                Object::NetworkAuthentication(NetworkAuthentication { meta, spec })
            }
            PolicySpec::HttpRoute(spec) => Object::HttpRoute(HttpRoute { meta, spec }),
        }
    }
}

/// Reads and checks the `spec` (at `path`) of a policy kind. None for kinds
/// that are not policy kinds.
pub(super) fn read_spec(
    kind: Kind,
    spec: Option<&Value>,
    path: &str,
) -> Option<Result<PolicySpec, Vec<FieldError>>> {
    let mut e = Errors {
        base: path,
        list: Vec::new(),
    };
    let spec = match spec {
        None | Some(Value::Null) => &Value::Null,
        Some(v) => v,
    };
    let result = match kind {
        Kind::Namespace
        | Kind::ExternalWorkload
        | Kind::Pod
        | Kind::Service
        | Kind::EndpointSlice => return None,
        Kind::Server => typed(spec, path, &mut e, check_server).map(PolicySpec::Server),
        Kind::AuthorizationPolicy => {
            typed(spec, path, &mut e, check_authorization).map(PolicySpec::AuthorizationPolicy)
        }
        Kind::MeshTlsAuthentication => {
            typed(spec, path, &mut e, check_mesh_tls).map(PolicySpec::MeshTlsAuthentication)
        }
        Kind::NetworkAuthentication => {
            typed(spec, path, &mut e, check_network).map(PolicySpec::NetworkAuthentication)
        }
        Kind::HttpRoute => typed(spec, path, &mut e, check_http_route).map(PolicySpec::HttpRoute),
    };
    Some(match result {
        Some(spec) if e.list.is_empty() => Ok(spec),
        _ => Err(e.list),
    })
}

fn typed<T: DeserializeOwned>(
    spec: &Value,
    path: &str,
    e: &mut Errors<'_>,
    check: fn(&T, &mut Errors<'_>),
) -> Option<T> {
    if spec.is_null() {
        e.at("", "missing; this kind needs a spec".to_string());
        return None;
    }
    match from_value::<T>(spec, path) {
        Ok(t) => {
            check(&t, e);
            Some(t)
        }
        Err(err) => {
            e.list.push(err);
            None
        }
    }
}

/// Problems found, at paths relative to the spec.
struct Errors<'a> {
    base: &'a str,
    list: Vec<FieldError>,
}

impl Errors<'_> {
    fn at(&mut self, rel: &str, message: String) {
        let path = if rel.is_empty() {
            self.base.to_string()
        } else {
            format!("{}.{rel}", self.base)
        };
        self.list.push(FieldError {
            path: Some(path),
            message,
        });
    }

    fn group(&mut self, rel: &str, group: &str, allowed: &[&str], kind: &str) {
        if !allowed.contains(&group) {
            let list: Vec<String> = allowed.iter().map(|g| format!("{g:?}")).collect();
            self.at(
                rel,
                format!(
                    "{group:?} is not the group of {kind}; use {}",
                    list.join(" or ")
                ),
            );
        }
    }

    fn name(&mut self, rel: &str, name: &str) {
        if name.is_empty() {
            self.at(rel, "is empty; name the object".to_string());
        }
    }
}

/// Whether a label selector means what Kubernetes would let it mean (a
/// refused Server's selection is trusted only then).
pub(crate) fn selector_is_valid(sel: &super::policy::LabelSelector) -> bool {
    let mut e = Errors {
        base: "",
        list: Vec::new(),
    };
    check_selector(sel, "", &mut e);
    e.list.is_empty()
}

fn check_selector(sel: &super::policy::LabelSelector, rel: &str, e: &mut Errors<'_>) {
    for (i, x) in sel.match_expressions.iter().enumerate() {
        let at = format!("{rel}.matchExpressions[{i}]");
        let needs_values = matches!(x.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if x.key.is_empty() {
            e.at(&format!("{at}.key"), "is empty".to_string());
        }
        if needs_values && x.values.is_empty() {
            e.at(
                &format!("{at}.values"),
                format!("{:?} needs at least one value", x.operator),
            );
        } else if !needs_values && !x.values.is_empty() {
            e.at(
                &format!("{at}.values"),
                format!("must be empty for {:?}", x.operator),
            );
        }
    }
}

fn check_server(spec: &ServerSpec, e: &mut Errors<'_>) {
    match (&spec.pod_selector, &spec.external_workload_selector) {
        (Some(s), None) => check_selector(s, "podSelector", e),
        (None, Some(s)) => check_selector(s, "externalWorkloadSelector", e),
        (Some(_), Some(_)) => e.at(
            "",
            "podSelector and externalWorkloadSelector are both set; a Server selects one or the other"
                .to_string(),
        ),
        (None, None) => e.at(
            "",
            "needs podSelector or externalWorkloadSelector (exactly one)".to_string(),
        ),
    }
}

/// As Linkerd's admission webhook: the target must be a Server, HTTPRoute or
/// Namespace; at most one identity-type authentication (MeshTLSAuthentication
/// or ServiceAccount) and at most one NetworkAuthentication.
///
/// Stricter than Linkerd: an empty `requiredAuthenticationRefs` is refused
/// ("an AuthorizationPolicy must require at least one authentication"), so a
/// policy that would authorize every client fails closed instead.
fn check_authorization(spec: &AuthorizationPolicySpec, e: &mut Errors<'_>) {
    let t = &spec.target_ref;
    match t.kind {
        TargetKind::Server => e.group("targetRef.group", &t.group, &[POLICY_GROUP], "Server"),
        TargetKind::HttpRoute => e.group(
            "targetRef.group",
            &t.group,
            &[POLICY_GROUP, GATEWAY_GROUP],
            "HTTPRoute",
        ),
        TargetKind::Namespace => e.group("targetRef.group", &t.group, &["core", ""], "Namespace"),
    }
    e.name("targetRef.name", &t.name);
    let refs = &spec.required_authentication_refs;
    if refs.is_empty() {
        e.at(
            "requiredAuthenticationRefs",
            "an AuthorizationPolicy must require at least one authentication".to_string(),
        );
    }
    let (mut identity, mut network) = (0, 0);
    for (i, r) in refs.iter().enumerate() {
        let at = format!("requiredAuthenticationRefs[{i}]");
        match r.kind {
            AuthenticationKind::MeshTlsAuthentication => {
                identity += 1;
                e.group(
                    &format!("{at}.group"),
                    &r.group,
                    &[POLICY_GROUP],
                    "MeshTLSAuthentication",
                );
            }
            AuthenticationKind::NetworkAuthentication => {
                network += 1;
                e.group(
                    &format!("{at}.group"),
                    &r.group,
                    &[POLICY_GROUP],
                    "NetworkAuthentication",
                );
            }
            AuthenticationKind::ServiceAccount => {
                identity += 1;
                e.group(
                    &format!("{at}.group"),
                    &r.group,
                    &["core", ""],
                    "ServiceAccount",
                );
            }
        }
        e.name(&format!("{at}.name"), &r.name);
    }
    if identity > 1 {
        e.at(
            "requiredAuthenticationRefs",
            format!("{identity} identity authentications (MeshTLSAuthentication or ServiceAccount); at most one is allowed"),
        );
    }
    if network > 1 {
        e.at(
            "requiredAuthenticationRefs",
            format!("{network} NetworkAuthentications; at most one is allowed"),
        );
    }
}

fn check_mesh_tls(spec: &MeshTlsAuthenticationSpec, e: &mut Errors<'_>) {
    match (spec.identities.is_empty(), spec.identity_refs.is_empty()) {
        (false, false) => e.at(
            "",
            "identities and identityRefs are both set; use one or the other".to_string(),
        ),
        (true, true) => e.at(
            "",
            "needs identities or identityRefs (exactly one, non-empty)".to_string(),
        ),
        _ => {}
    }
    for (i, id) in spec.identities.iter().enumerate() {
        if let Err(why) = check_identity(id) {
            e.at(&format!("identities[{i}]"), why);
        }
    }
    for (i, r) in spec.identity_refs.iter().enumerate() {
        let at = format!("identityRefs[{i}]");
        let kind = match r.kind {
            IdentityRefKind::ServiceAccount => "ServiceAccount",
            IdentityRefKind::Namespace => "Namespace",
        };
        e.group(&format!("{at}.group"), &r.group, &["core", ""], kind);
        e.name(&format!("{at}.name"), &r.name);
    }
}

/// An exact identity, `*`, `*.suffix`, or a `spiffe://` ID.
fn check_identity(id: &str) -> Result<(), String> {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.contains('*')
            && !s
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    };
    let ok = if id == "*" {
        true
    } else if let Some(suffix) = id.strip_prefix("*.") {
        plain(suffix)
    } else if let Some(rest) = id.strip_prefix("spiffe://") {
        plain(rest) && !rest.starts_with('/')
    } else {
        plain(id) && !id.contains("://")
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not an identity: use an exact identity, \"*\", \"*.<suffix>\" or a spiffe:// ID"
        ))
    }
}

fn check_network(spec: &NetworkAuthenticationSpec, e: &mut Errors<'_>) {
    if spec.networks.is_empty() {
        e.at(
            "networks",
            "is empty; list at least one network".to_string(),
        );
    }
    for (i, n) in spec.networks.iter().enumerate() {
        for (j, x) in n.except.iter().enumerate() {
            if !n.cidr.contains(x) {
                e.at(
                    &format!("networks[{i}].except[{j}]"),
                    format!("{x} is not inside the network's cidr {}", n.cidr),
                );
            }
        }
    }
}

fn check_http_route(spec: &HttpRouteSpec, e: &mut Errors<'_>) {
    for (i, p) in spec.parent_refs.iter().enumerate() {
        let at = format!("parentRefs[{i}]");
        if let Some(kind) = p.kind.as_deref().filter(|k| *k != "Server") {
            e.at(
                &format!("{at}.kind"),
                format!("{kind:?} is not supported; an HTTPRoute's parent is a Server"),
            );
        }
        if let Some(group) = &p.group {
            e.group(&format!("{at}.group"), group, &[POLICY_GROUP], "Server");
        }
        e.name(&format!("{at}.name"), &p.name);
        if p.port == Some(0) {
            e.at(
                &format!("{at}.port"),
                "0 is not a port; use 1-65535".to_string(),
            );
        }
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        if h.is_empty() {
            e.at(&format!("hostnames[{i}]"), "is empty".to_string());
        }
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("rules[{i}].matches[{j}]");
            if let Some(path) = &m.path {
                if path.kind == PathMatchType::RegularExpression {
                    e.at(
                        &format!("{at}.path.type"),
                        "RegularExpression path matches are not supported yet; use Exact or PathPrefix".to_string(),
                    );
                } else if !path.value.starts_with('/') {
                    e.at(
                        &format!("{at}.path.value"),
                        format!("{:?} must start with '/'", path.value),
                    );
                }
            }
            if let Some(method) = m.method.as_deref().filter(|m| !is_token(m)) {
                e.at(
                    &format!("{at}.method"),
                    format!("{method:?} is not an HTTP method"),
                );
            }
            for (k, h) in m.headers.iter().enumerate() {
                if !is_token(&h.name) {
                    e.at(
                        &format!("{at}.headers[{k}].name"),
                        format!("{:?} is not an HTTP header name", h.name),
                    );
                }
            }
        }
    }
}

/// An HTTP token (RFC 9110), as methods and header names are.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
