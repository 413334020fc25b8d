//! The injector on a real API server. `weft install` output is applied
//! (its webhook configuration pointed at local control-plane processes by
//! `--webhook-url`, as envtest does), two replicas run as the installed
//! ServiceAccount, and pods created through the API are meshed exactly as
//! `weft inject --manual` meshes them; opted-out, already injected and
//! hostNetwork pods are not; a required namespace refuses what cannot be
//! meshed; a malformed AdmissionReview is answered, not a crash. The
//! webhook CA then rotates (a 60 s CA) while pods are created through
//! either replica: none is refused. With the control plane stopped,
//! kube-system's and the control plane's own pods are still created.
//!
//! Its own test binary: the webhook configuration is cluster-wide.
//! Needs root (network namespaces) and the testenv/k8s binaries (built if
//! missing); skips loudly without them unless WEFT_REQUIRE_K8S=1.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::injector::{self, point_at, url, webhook_replica};
use common::kube::{Tenant, kubeconfig_for, kubectl_stdin, tenant};
use serde_json::{Value, json};
use testbed::k8s::K8sEnv;
use testbed::k8s::api::{DEADLINE, poll};
use testbed::k8s::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use testbed::k8s::kube::Client;
use testbed::k8s::kube::api::{Api, PostParams};

const CA_LIFETIME: &str = "60s";

/// A pod running as ServiceAccount `web` (which each test namespace has).
fn pod(name: &str, annotations: Value, host_network: bool) -> Value {
    let mut p = system_pod(name, annotations);
    p["spec"]["hostNetwork"] = host_network.into();
    p["spec"]["serviceAccountName"] = "web".into();
    p
}

/// A pod running as its namespace's default ServiceAccount.
fn system_pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]},
    })
}

/// Creates `p` in `ns`; the API server's answer (the admitted pod) or its refusal.
async fn create(client: &Client, ns: &str, p: &Value) -> Result<Pod, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p: Pod = serde_json::from_value(p.clone()).map_err(|e| e.to_string())?;
    api.create(&PostParams::default(), &p)
        .await
        .map_err(|e| e.to_string())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// Every field `want` sets is in `got` with the same value (the API server
/// adds defaults beside them): the field-by-field comparison. In lists of
/// named items the API server's ServiceAccount admission adds its token
/// volume (and mounts) to every container; those are the only extra items.
fn subset(path: &str, want: &Value, got: &Value) -> Result<()> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                subset(&format!("{path}.{k}"), v, g.get(k).unwrap_or(&Value::Null))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            let name = |v: &Value| v["name"].as_str().map(str::to_string);
            let got: Vec<&Value> = g
                .iter()
                .filter(|v| !name(v).is_some_and(|n| n.starts_with("kube-api-access-")))
                .collect();
            ensure!(
                w.len() == got.len(),
                "{path}: {} items, expected {}: {g:?}",
                got.len(),
                w.len()
            );
            for (i, (a, b)) in w.iter().zip(got).enumerate() {
                subset(&format!("{path}[{i}]"), a, b)?;
            }
            Ok(())
        }
        _ => {
            ensure!(want == got, "{path}: {got}, expected {want}");
            Ok(())
        }
    }
}

fn weft_containers(p: &Pod) -> Vec<String> {
    let spec = serde_json::to_value(&p.spec).unwrap_or_default();
    names(&spec["initContainers"])
        .into_iter()
        .chain(names(&spec["containers"]))
        .filter(|n| n.starts_with("weft-"))
        .collect()
}

/// The CA ids the webhook CA Secret holds now.
async fn ca_ids(client: &Client, cp_ns: &str) -> Result<BTreeSet<String>> {
    let s = Api::<Secret>::namespaced(client.clone(), cp_ns)
        .get_opt("weft-injector-ca")
        .await?;
    Ok(s.and_then(|s| s.data)
        .unwrap_or_default()
        .keys()
        .filter_map(|k| k.strip_suffix(".crt").map(str::to_string))
        .collect())
}

#[test]
fn the_injector_meshes_pods_rotates_its_ca_and_never_blocks_system_pods() -> Result<()> {
    let Some(env) =
        K8sEnv::shared("the_injector_meshes_pods_rotates_its_ca_and_never_blocks_system_pods")?
    else {
        return Ok(());
    };
    let _logs = env.logs_on_failure();
    let Tenant {
        rt,
        client,
        ns,
        cp_ns,
        s,
    } = tenant("hook", &["web"], &env)?;

    // Install, its webhook at a placeholder URL until a replica listens.
    let _cleanup = injector::install(&env, &s, &cp_ns)?;
    let kubeconfig = rt.block_on(kubeconfig_for(&env, &client, &cp_ns, &s))?;
    let ca = ["--webhook-ca-lifetime", CA_LIFETIME];
    let a = webhook_replica(&env, &s, &cp_ns, &kubeconfig, &ca);
    let b = webhook_replica(&env, &s, &cp_ns, &kubeconfig, &ca);
    rt.block_on(point_at(&client, a.webhook))?;
    let t0 = Instant::now();
    for r in [&a, &b] {
        r.proc.wait_for_line(
            "webhook serving certificate issued",
            Duration::from_secs(60),
        );
    }
    println!("both replicas serve the webhook after {:.1?}", t0.elapsed());

    // A Deployment in an annotated namespace: meshed as --manual meshes it.
    common::kube::kubectl(
        &env,
        &["annotate", "namespace", &ns, "linkerd.io/inject=enabled"],
    )?;
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{config.linkerd.io/skip-outbound-ports: \"5432\"}}\n    spec:\n      serviceAccountName: web\n      containers:\n      - {{name: app, image: \"app:1\", ports: [{{containerPort: 8080}}]}}\n"
    );
    let manual = common::pipe::weft(
        &["inject", "--manual", "--controller-namespace", &cp_ns, "-"],
        &deployment,
    );
    ensure!(manual.code == 0, "inject --manual: {}", manual.stderr);
    let manual: Value = serde_saphyr::from_str(&manual.stdout)?;
    let template = &manual["spec"]["template"];
    kubectl_stdin(&env, &["apply"], &deployment)?;
    let pods: Vec<Pod> = rt.block_on(poll("two web pods", DEADLINE, || async {
        let list = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&testbed::k8s::kube::api::ListParams::default().labels("app=web"))
            .await?;
        Ok((list.items.len() == 2).then_some(list.items))
    }))?;
    for p in &pods {
        let got = serde_json::to_value(p)?;
        for field in ["initContainers", "containers", "volumes"] {
            subset(field, &template["spec"][field], &got["spec"][field])?;
        }
        subset(
            "labels",
            &template["metadata"]["labels"],
            &got["metadata"]["labels"],
        )?;
        subset(
            "annotations",
            &template["metadata"]["annotations"],
            &got["metadata"]["annotations"],
        )?;
    }
    println!("webhook pods equal `weft inject --manual` field by field");

    // The anchors the proxy boots with, copied into the pod's namespace.
    let copy = rt.block_on(
        Api::<ConfigMap>::namespaced(client.clone(), &ns).get("weft-identity-trust-roots"),
    )?;
    let held = copy
        .data
        .and_then(|d| d.get("ca-bundle.crt").cloned())
        .unwrap_or_default();
    let strip = |t: &str| t.split_whitespace().collect::<String>();
    ensure!(
        strip(&held) == strip(&s.read("ca.crt")),
        "the copy holds other anchors:\n{held}"
    );

    rt.block_on(async {
        // Opted out, hostNetwork, already injected: left alone.
        let off = create(
            &client,
            &ns,
            &pod("off", json!({"linkerd.io/inject": "disabled"}), false),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        ensure!(
            weft_containers(&off).is_empty(),
            "an opted-out pod was meshed"
        );
        let host = create(&client, &ns, &pod("host", json!({}), true))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            weft_containers(&host).is_empty(),
            "a hostNetwork pod was meshed"
        );
        let why = host
            .metadata
            .annotations
            .unwrap_or_default()
            .remove("weft.dev/not-injected")
            .unwrap_or_default();
        ensure!(why.contains("hostNetwork"), "no reason given: {why:?}");
        let injected = common::pipe::weft(
            &["inject", "--manual", "--controller-namespace", &cp_ns, "-"],
            &serde_json::to_string(&pod("pre", json!({}), false))?,
        );
        let injected: Value = serde_saphyr::from_str(&injected.stdout)?;
        let pre = create(&client, &ns, &injected)
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(
            weft_containers(&pre) == ["weft-init", "weft-proxy"],
            "an injected pod was changed: {:?}",
            weft_containers(&pre)
        );
        // Bad annotations are refused, naming them.
        let bad = create(
            &client,
            &ns,
            &pod(
                "bad",
                json!({"config.linkerd.io/skip-inbound-ports": "eighty"}),
                false,
            ),
        )
        .await;
        match bad {
            Err(e) if e.contains("skip-inbound-ports") => println!("refused: {e}"),
            other => {
                bail!("a bad annotation was admitted or refused for another reason: {other:?}")
            }
        }
        anyhow::Ok(())
    })?;

    // A malformed AdmissionReview gets an error, and the webhook goes on.
    let garbage = env
        .cp_cmd("curl")
        .args([
            "-sk",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "--data",
            "{\"kind\":",
        ])
        .arg(url(a.webhook))
        .output()?;
    let answer = String::from_utf8_lossy(&garbage.stdout).to_string();
    ensure!(
        answer.ends_with("400"),
        "malformed review answered: {answer}"
    );
    println!("malformed review: {}", answer.replace('\n', " "));

    // A required namespace: what cannot be meshed is refused.
    let required = rt.block_on(testbed::k8s::api::namespace(&client, "req"))?;
    common::kube::kubectl(
        &env,
        &["label", "namespace", &required, "weft.dev/mesh=required"],
    )?;
    rt.block_on(testbed::k8s::api::service_account(
        &client, &required, "web",
    ))?;
    match rt.block_on(create(
        &client,
        &required,
        &pod("off", json!({"linkerd.io/inject": "disabled"}), false),
    )) {
        Err(e) if e.contains("requires the mesh") => println!("refused: {e}"),
        other => bail!("a disabled pod in a required namespace: {other:?}"),
    }

    // The CA rotates while pods are created through either replica.
    let (created, refused, ids) = rt.block_on(async {
        let first = ca_ids(&client, &cp_ns).await?;
        let mut ids = first.clone();
        let (mut created, mut refused) = (0, Vec::new());
        let start = Instant::now();
        let mut on_a = true;
        let mut last_flip = Instant::now();
        loop {
            ids.extend(ca_ids(&client, &cp_ns).await?);
            let now_ids = ca_ids(&client, &cp_ns).await?;
            // Done once a second CA came and the first is gone.
            if ids.len() >= 2 && first.iter().all(|f| !now_ids.contains(f)) {
                break;
            }
            if start.elapsed() > Duration::from_secs(150) {
                bail!("no rotation within 150 s; CA ids seen {ids:?}, now {now_ids:?}");
            }
            if last_flip.elapsed() > Duration::from_secs(4) {
                on_a = !on_a;
                point_at(&client, if on_a { a.webhook } else { b.webhook }).await?;
                last_flip = Instant::now();
            }
            match create(
                &client,
                &required,
                &pod(&format!("r{created}-{}", refused.len()), json!({}), false),
            )
            .await
            {
                Ok(p) if weft_containers(&p).len() == 2 => created += 1,
                Ok(_) => refused.push("admitted unmeshed".to_string()),
                Err(e) => refused.push(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::Ok((created, refused, ids))
    })?;
    println!(
        "CA rotation: {created} pods meshed through both replicas, {} refused; CAs {ids:?}",
        refused.len()
    );
    ensure!(
        refused.is_empty(),
        "pods refused during rotation: {refused:?}"
    );
    let second = ids.iter().last().cloned().unwrap_or_default();
    for r in [&a, &b] {
        r.proc
            .wait_for_line(&format!("ca={second}"), Duration::from_secs(30));
    }

    // Control plane stopped: kube-system's and its own pods are created,
    // annotated namespaces get unmeshed pods (Ignore), required ones none.
    drop(a);
    drop(b);
    rt.block_on(async {
        for n in ["kube-system", cp_ns.as_str()] {
            let t = Instant::now();
            create(
                &client,
                n,
                &system_pod(&format!("sys-{}", std::process::id()), json!({})),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
            println!(
                "a pod in {n} created in {:.1?} with the control plane down",
                t.elapsed()
            );
        }
        let plain = create(&client, &ns, &pod("late", json!({}), false))
            .await
            .map_err(anyhow::Error::msg)?;
        ensure!(weft_containers(&plain).is_empty());
        match create(&client, &required, &pod("late", json!({}), false)).await {
            Err(e) => println!("required namespace, control plane down: refused: {e}"),
            Ok(_) => bail!("a pod was created unmeshed in a required namespace"),
        }
        anyhow::Ok(())
    })
    .context("with the control plane stopped")?;
    Ok(())
}
