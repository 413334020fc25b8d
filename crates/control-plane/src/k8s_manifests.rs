//! The Kubernetes manifests weft ships: its CustomResourceDefinitions
//! (Linkerd's policy and workload kinds, weft's own IssuanceRecord) and the
//! control plane's least-privilege RBAC. They are files in the repo, so what
//! `weft install` prints is exactly what these tests and the API-server tests
//! check.

/// CustomResourceDefinitions (apiextensions.k8s.io/v1), multi-document YAML.
pub const CRDS: &str = include_str!("../k8s/crds.yaml");

/// The control plane's ServiceAccount, ClusterRole, Role and their bindings.
pub const RBAC: &str = include_str!("../k8s/rbac.yaml");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    // The resource model the CRDs must agree with.
    use policy::resources::{DefaultPolicy, Kind, PathMatchType, ProxyProtocol, SelectorOperator};

    use super::{CRDS, RBAC};

    const CP_NS: &str = "weft";
    const CP_SA: &str = "weft-identity";
    const CP_ROLE: &str = "weft-control-plane";
    /// Groups weft reads through Kubernetes watches; the rest is weft's own.
    const LINKERD_GROUPS: &[&str] = &["policy.linkerd.io", "workload.linkerd.io"];
    const OWN_GROUP: &str = "internal.weft.dev";
    const READ: &[&str] = &["get", "list", "watch"];

    fn documents(text: &str) -> Vec<Value> {
        serde_saphyr::from_multiple::<Value>(text)
            .expect("the manifest is valid YAML")
            .into_iter()
            .filter(|d| !d.is_null())
            .collect()
    }

    fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
        v.pointer(path)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at {path} in {v}"))
    }

    fn strings(v: Option<&Value>) -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A CRD as far as the tests care.
    struct Crd {
        doc: Value,
        group: String,
        kind: String,
        plural: String,
        /// (name, served, storage), in file order.
        versions: Vec<(String, bool, bool)>,
    }

    impl Crd {
        fn schema(&self, version: &str) -> &Value {
            let v = self.doc["spec"]["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == version))
                .unwrap_or_else(|| panic!("{} has no version {version}", self.kind));
            &v["schema"]["openAPIV3Schema"]
        }

        fn served(&self) -> Vec<&str> {
            self.versions
                .iter()
                .filter(|v| v.1)
                .map(|v| v.0.as_str())
                .collect()
        }
    }

    fn crds() -> Vec<Crd> {
        documents(CRDS)
            .into_iter()
            .map(|doc| {
                assert_eq!(doc["apiVersion"], "apiextensions.k8s.io/v1", "{doc}");
                assert_eq!(doc["kind"], "CustomResourceDefinition", "{doc}");
                let versions = doc["spec"]["versions"]
                    .as_array()
                    .expect("spec.versions")
                    .iter()
                    .map(|v| {
                        let flag = |k: &str| v[k].as_bool().unwrap_or_else(|| panic!("{k}: {v}"));
                        (
                            str_at(v, "/name").to_string(),
                            flag("served"),
                            flag("storage"),
                        )
                    })
                    .collect();
                Crd {
                    group: str_at(&doc, "/spec/group").into(),
                    kind: str_at(&doc, "/spec/names/kind").into(),
                    plural: str_at(&doc, "/spec/names/plural").into(),
                    versions,
                    doc,
                }
            })
            .collect()
    }

    #[test]
    fn crds_define_the_kinds_weft_reads_and_its_own() {
        // group, kind, plural, served versions (storage first)
        let want = "
            policy.linkerd.io    Server                 servers                 v1beta3,v1beta2,v1beta1
            policy.linkerd.io    AuthorizationPolicy    authorizationpolicies   v1alpha1
            policy.linkerd.io    MeshTLSAuthentication  meshtlsauthentications  v1alpha1
            policy.linkerd.io    NetworkAuthentication  networkauthentications  v1alpha1
            policy.linkerd.io    HTTPRoute              httproutes              v1beta3,v1beta2,v1beta1
            workload.linkerd.io  ExternalWorkload       externalworkloads       v1beta1
            internal.weft.dev    IssuanceRecord         issuancerecords         v1alpha1";
        let want: Vec<String> = want
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let crds = crds();
        let got: Vec<String> = crds
            .iter()
            .map(|c| {
                let served = c.served().join(",");
                format!("{} {} {} {served}", c.group, c.kind, c.plural)
            })
            .collect();
        assert_eq!(got, want);
        for c in &crds {
            let name = format!("{}.{}", c.plural, c.group);
            assert_eq!(str_at(&c.doc, "/metadata/name"), name);
            assert_eq!(str_at(&c.doc, "/spec/scope"), "Namespaced", "{name}");
            assert_eq!(
                str_at(&c.doc, "/spec/conversion/strategy"),
                "None",
                "{name}"
            );
            assert_eq!(
                str_at(&c.doc, "/metadata/labels/app.kubernetes.io~1part-of"),
                "weft",
                "{name}"
            );
            assert!(
                c.versions.iter().all(|v| v.1),
                "{name}: a version not served"
            );
        }
    }

    #[test]
    fn each_crd_stores_exactly_one_version_its_newest() {
        for c in crds() {
            let storage: Vec<&str> = c
                .versions
                .iter()
                .filter(|v| v.2)
                .map(|v| v.0.as_str())
                .collect();
            assert_eq!(storage.len(), 1, "{}: storage versions {storage:?}", c.kind);
            // Listed newest first, so the storage version is the first one.
            assert_eq!(storage[0], c.versions[0].0, "{}", c.kind);
        }
    }

    /// Every apiVersion the resource model reads for a Linkerd kind is
    /// served, and nothing is served that it would refuse.
    #[test]
    fn served_versions_are_the_ones_the_resource_model_reads() {
        let crds = crds();
        for c in crds
            .iter()
            .filter(|c| LINKERD_GROUPS.contains(&c.group.as_str()))
        {
            for v in c.served() {
                let api_version = format!("{}/{v}", c.group);
                Kind::resolve(&api_version, &c.kind).unwrap_or_else(|e| {
                    panic!(
                        "{api_version} {} is served but weft refuses it: {e}",
                        c.kind
                    )
                });
            }
        }
        for kind in Kind::ALL.iter().filter(|k| k.namespaced()) {
            for api_version in kind.api_versions() {
                // Core kinds (Pod) are the API server's own, with no CRD.
                let Some((group, version)) = api_version.split_once('/') else {
                    continue;
                };
                let Some(c) = crds
                    .iter()
                    .find(|c| c.group == group && c.kind == kind.name())
                else {
                    // Only the Gateway API and Kubernetes' own groups are
                    // read without weft installing them.
                    assert!(
                        matches!(group, "gateway.networking.k8s.io" | "discovery.k8s.io"),
                        "{kind}: no CRD"
                    );
                    continue;
                };
                assert!(
                    c.served().contains(&version),
                    "{api_version} {kind} is not served"
                );
            }
        }
    }

    /// Walks every schema node (properties, items, additionalProperties).
    fn walk<'a>(node: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
        out.push((at.clone(), node));
        if let Some(props) = node["properties"].as_object() {
            for (k, v) in props {
                walk(v, format!("{at}.{k}"), out);
            }
        }
        for key in ["items", "additionalProperties"] {
            if node[key].is_object() {
                walk(&node[key], format!("{at}[{key}]"), out);
            }
        }
    }

    /// Unknown fields must reach the API server's strict field validation,
    /// and every node must be typed (a structural schema).
    #[test]
    fn schemas_leave_no_field_open() {
        for c in crds() {
            for (version, ..) in &c.versions {
                let mut nodes = Vec::new();
                walk(
                    c.schema(version),
                    format!("{}/{version}", c.kind),
                    &mut nodes,
                );
                assert!(nodes.len() > 3, "{}/{version}: schema too small", c.kind);
                for (at, node) in nodes {
                    assert!(
                        node.get("x-kubernetes-preserve-unknown-fields").is_none(),
                        "{at} keeps unknown fields"
                    );
                    let int_or_string = node["x-kubernetes-int-or-string"] == true;
                    assert!(
                        node["type"].is_string() || int_or_string,
                        "{at} has no type"
                    );
                    if node["type"] == "object" {
                        let fields = node["properties"].is_object()
                            || node["additionalProperties"].is_object();
                        assert!(fields, "{at} is an object with no fields");
                    }
                }
            }
        }
    }

    fn enum_of<'a>(schema: &'a Value, path: &str) -> &'a Vec<Value> {
        schema
            .pointer(path)
            .and_then(|n| n["enum"].as_array())
            .unwrap_or_else(|| panic!("no enum at {path}"))
    }

    /// Values the API server lets through are ones weft can read: the
    /// schema's enums and defaults deserialize into the resource model.
    #[test]
    fn enums_and_defaults_agree_with_the_resource_model() {
        let crds = crds();
        let find = |kind: &str| crds.iter().find(|c| c.kind == kind).expect(kind);
        let spec = "/properties/spec/properties";
        for version in ["v1beta3", "v1beta2", "v1beta1"] {
            let schema = find("Server").schema(version);
            let protocols = enum_of(schema, &format!("{spec}/proxyProtocol"));
            assert_eq!(protocols.len(), 6, "{version}");
            for p in protocols {
                serde_json::from_value::<ProxyProtocol>(p.clone()).expect("proxyProtocol");
            }
            let default = &schema
                .pointer(&format!("{spec}/proxyProtocol/default"))
                .unwrap();
            let default = serde_json::from_value::<ProxyProtocol>((*default).clone()).unwrap();
            assert_eq!(default, ProxyProtocol::default(), "{version}");
            let ops = enum_of(
                schema,
                &format!(
                    "{spec}/podSelector/properties/matchExpressions/items/properties/operator"
                ),
            );
            for op in ops {
                serde_json::from_value::<SelectorOperator>(op.clone()).expect("operator");
            }
        }
        let v1beta3 = find("Server").schema("v1beta3");
        let policies = enum_of(v1beta3, &format!("{spec}/accessPolicy"));
        assert_eq!(policies.len(), 6);
        for p in policies {
            serde_json::from_value::<DefaultPolicy>(p.clone()).expect("accessPolicy");
        }
        let default = v1beta3
            .pointer(&format!("{spec}/accessPolicy/default"))
            .unwrap();
        assert_eq!(
            serde_json::from_value::<DefaultPolicy>(default.clone()).unwrap(),
            DefaultPolicy::Deny,
            "an absent accessPolicy means deny, as in Linkerd"
        );
        let route = find("HTTPRoute").schema("v1beta3");
        let path = "/properties/spec/properties/rules/items/properties/matches/items/properties/path/properties/type";
        for t in enum_of(route, path) {
            serde_json::from_value::<PathMatchType>(t.clone()).expect("path type");
        }
    }

    /// One RBAC rule, wildcards kept as written.
    #[derive(Debug)]
    struct Rule {
        cluster: bool,
        groups: Vec<String>,
        resources: Vec<String>,
        names: Vec<String>,
        verbs: Vec<String>,
    }

    impl Rule {
        fn covers(&self, group: &str, resource: &str) -> bool {
            let any = |list: &[String], x: &str| list.iter().any(|i| i == x || i == "*");
            any(&self.groups, group) && any(&self.resources, resource)
        }
    }

    fn rules() -> Vec<Rule> {
        let mut out = Vec::new();
        for doc in documents(RBAC) {
            let cluster = match doc["kind"].as_str() {
                Some("ClusterRole") => true,
                Some("Role") => false,
                _ => continue,
            };
            // The operator Roles are for people; see operator_roles_grant_only_operator_permissions.
            if str_at(&doc, "/metadata/name") != CP_ROLE {
                continue;
            }
            for r in doc["rules"].as_array().expect("rules") {
                out.push(Rule {
                    cluster,
                    groups: strings(r.get("apiGroups")),
                    resources: strings(r.get("resources")),
                    names: strings(r.get("resourceNames")),
                    verbs: strings(r.get("verbs")),
                });
            }
        }
        out
    }

    #[test]
    fn rbac_binds_the_control_plane_service_account_only() {
        let docs = documents(RBAC);
        let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, "/kind")).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Role",
                "Role"
            ]
        );
        for d in &docs {
            let kind = str_at(d, "/kind");
            let ns = d.pointer("/metadata/namespace").and_then(Value::as_str);
            let cluster_scoped = kind.starts_with("Cluster");
            assert_eq!(ns, (!cluster_scoped).then_some(CP_NS), "{kind} namespace");
            if let Some(role) = kind.strip_suffix("Binding") {
                assert_eq!(str_at(d, "/roleRef/kind"), role);
                assert_eq!(str_at(d, "/roleRef/name"), CP_ROLE);
                let subjects = d["subjects"].as_array().expect("subjects");
                assert_eq!(subjects.len(), 1, "{kind}");
                assert_eq!(str_at(&subjects[0], "/kind"), "ServiceAccount");
                assert_eq!(str_at(&subjects[0], "/name"), CP_SA);
                assert_eq!(str_at(&subjects[0], "/namespace"), CP_NS);
            }
        }
    }

    #[test]
    fn operator_roles_grant_only_operator_permissions() {
        let group = crate::k8s::operator_auth::GROUP;
        let roles: Vec<Value> = documents(RBAC)
            .into_iter()
            .filter(|d| str_at(d, "/metadata/name").starts_with("weft-operator"))
            .collect();
        let names: Vec<&str> = roles.iter().map(|d| str_at(d, "/metadata/name")).collect();
        assert_eq!(names, ["weft-operator", "weft-operator-view"]);
        let mut full = BTreeSet::new();
        for d in &roles {
            assert_eq!(str_at(d, "/kind"), "Role");
            for r in d["rules"].as_array().expect("rules") {
                assert_eq!(strings(r.get("apiGroups")), [group]);
                for res in strings(r.get("resources")) {
                    for v in strings(r.get("verbs")) {
                        if str_at(d, "/metadata/name") == "weft-operator" {
                            full.insert(format!("{v} {res}.{group}"));
                        } else {
                            assert_eq!(
                                format!("{v} {res}"),
                                "get fleet",
                                "the view role reads only"
                            );
                        }
                    }
                }
            }
        }
        // Every permission an endpoint can need is in the full role.
        use http::Method;
        for (m, path) in [
            (Method::GET, "/fleet"),
            (Method::GET, "/tap"),
            (Method::POST, "/renew-now"),
        ] {
            let p = crate::k8s::operator_auth::permission(&m, path).to_string();
            assert!(full.contains(&p), "{p} not in {full:?}");
        }
    }

    #[test]
    fn no_cluster_role_grants_secrets_and_nothing_is_wildcarded() {
        let rules = rules();
        assert!(!rules.is_empty());
        for r in &rules {
            let all = [&r.groups, &r.resources, &r.verbs];
            assert!(
                all.iter()
                    .all(|l| !l.is_empty() && !l.contains(&"*".to_string())),
                "{r:?}"
            );
            assert!(
                !(r.cluster && r.covers("", "secrets")),
                "cluster-wide secrets: {r:?}"
            );
            // Cluster-wide ConfigMaps: only the trust-anchor copies, by
            // name, and their creation (which names cannot limit).
            assert!(
                !(r.cluster && r.covers("", "configmaps"))
                    || r.names == [inject::TRUST_ROOTS_COPY]
                    || r.verbs == ["create"],
                "cluster-wide configmaps beyond the anchor copies: {r:?}"
            );
        }
        assert!(
            rules.iter().any(|r| !r.cluster && r.covers("", "secrets")),
            "the Role is where Secrets are granted"
        );
    }

    /// Writes to webhook configurations, Secrets and ConfigMaps name their
    /// objects; `create` is the one verb Kubernetes cannot limit by name.
    #[test]
    fn sensitive_writes_are_limited_by_name() {
        for r in rules() {
            let webhook = r.covers(
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
            ) || r.covers(
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
            );
            if webhook {
                assert!(
                    !r.names.is_empty(),
                    "webhook configuration rule without resourceNames: {r:?}"
                );
                for v in ["create", "delete", "deletecollection"] {
                    assert!(
                        !r.verbs.iter().any(|x| x == v),
                        "webhook configuration {v}: {r:?}"
                    );
                }
            }
            if (r.covers("", "secrets") || r.covers("", "configmaps")) && r.names.is_empty() {
                assert_eq!(
                    r.verbs,
                    ["create"],
                    "unnamed Secret/ConfigMap access: {r:?}"
                );
            }
            // resourceNames never match create or deletecollection: such a rule would be dead.
            if !r.names.is_empty() {
                assert!(
                    !r.verbs
                        .iter()
                        .any(|v| v == "create" || v == "deletecollection"),
                    "{r:?}"
                );
            }
        }
    }

    fn granted(rules: &[Rule], cluster: bool, group: &str, resource: &str) -> BTreeSet<String> {
        rules
            .iter()
            .filter(|r| r.cluster == cluster && r.names.is_empty() && r.covers(group, resource))
            .flat_map(|r| r.verbs.iter().cloned())
            .collect()
    }

    /// The control plane can read every kind the CRDs define, cluster-wide,
    /// and write its own kind only in its namespace.
    #[test]
    fn every_crd_kind_is_granted() {
        let rules = rules();
        for c in crds() {
            if c.group == OWN_GROUP {
                assert!(
                    granted(&rules, true, &c.group, &c.plural).is_empty(),
                    "{}",
                    c.kind
                );
                let verbs = granted(&rules, false, &c.group, &c.plural);
                for v in [
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ] {
                    assert!(verbs.contains(v), "{} lacks {v} in its namespace", c.kind);
                }
            } else {
                let verbs = granted(&rules, true, &c.group, &c.plural);
                let want: BTreeSet<String> = READ.iter().map(|v| v.to_string()).collect();
                assert_eq!(verbs, want, "{}: read-only, cluster-wide", c.kind);
            }
        }
        let tokens = granted(&rules, true, "authentication.k8s.io", "tokenreviews");
        assert_eq!(tokens.into_iter().collect::<Vec<_>>(), ["create"]);
    }

    /// The identity side's needs, and no write to the issuer or anchors:
    /// the issuer Secret and trust-roots ConfigMap watched by name (a
    /// `metadata.name` field selector), TokenReview, the bound pod's lookup,
    /// Events on refusals.
    #[test]
    fn identity_side_is_granted_what_it_uses_and_reads_the_issuer_only() {
        use crate::k8s::KubeSettings;
        let rules = rules();
        let named = |resource: &str, name: &str| -> BTreeSet<String> {
            rules
                .iter()
                .filter(|r| {
                    !r.cluster && r.covers("", resource) && r.names.iter().any(|n| n == name)
                })
                .flat_map(|r| r.verbs.iter().cloned())
                .collect()
        };
        let read: BTreeSet<String> = READ.iter().map(|v| v.to_string()).collect();
        assert_eq!(named("secrets", KubeSettings::DEFAULT_ISSUER_SECRET), read);
        assert_eq!(
            named("configmaps", KubeSettings::DEFAULT_TRUST_ROOTS_CONFIGMAP),
            read
        );
        assert!(granted(&rules, true, "", "pods").contains("get"));
        assert!(granted(&rules, true, "events.k8s.io", "events").contains("create"));
    }
}
