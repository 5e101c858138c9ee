//! The Helm chart lints, renders, carries the current CRDs and the same RBAC as deploy/, and
//! every object it renders is accepted by a real kube-apiserver (server-side dry-run).

mod support;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde::Deserialize as _;
use support::Env;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/oauth-operator");

fn helm(args: &[&str]) -> Result<String> {
    let helm = testenv::testenv_dir()?.join("bin/helm");
    let out = Command::new(&helm)
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| serde_json::Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test]
async fn chart_lints_renders_and_is_accepted_by_the_apiserver() -> Result<()> {
    helm(&["lint", "--strict", CHART])?;
    let env = Env::new("helm").await?;
    let rendered = helm(&[
        "template",
        "oauth",
        CHART,
        "--namespace",
        &env.ns,
        "--include-crds",
        "--set",
        &format!("watchNamespaces={{{}}}", env.ns),
    ])?;
    let docs = documents(&rendered);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(
            kinds.contains(&kind),
            "the chart renders a {kind}: {kinds:?}"
        );
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "CustomResourceDefinition")
            .count(),
        3
    );
    // Its RBAC is the kustomize overlay's, object for object: tests/install.rs.
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("Deployment")?;
    let args = deployment
        .pointer("/spec/template/spec/containers/0/args")
        .context("args")?
        .to_string();
    assert!(
        args.contains(&format!("--watch-namespace={}", env.ns)),
        "{args}"
    );

    // Every rendered object passes the real apiserver's validation (dry-run, nothing stored).
    for doc in docs {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().context("typed object")?)?;
        let (resource, caps) = pinned_kind(&env.client, &gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(env.client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(env.client.clone(), &env.ns, &resource),
        };
        let name = obj.metadata.name.clone().context("name")?;
        api.patch(
            &name,
            &PatchParams::apply("helm-chart-test").dry_run().force(),
            &Patch::Apply(&doc),
        )
        .await
        .with_context(|| format!("the apiserver refused {} {name}", gvk.kind))?;
    }

    // The ServiceMonitor renders when enabled (its CRD is not installed here).
    let with_monitor = helm(&[
        "template",
        "oauth",
        CHART,
        "--set",
        "serviceMonitor.enabled=true",
    ])?;
    assert!(
        documents(&with_monitor)
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor")
    );
    Ok(())
}
