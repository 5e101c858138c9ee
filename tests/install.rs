//! The install paths agree and are accepted by a real apiserver: the chart's default render
//! equals the kustomize base (`deploy/`), the namespace-scoped overlay equals the chart with
//! one watched namespace, the base's CRDs are crds/, and `helm template | kubectl apply
//! --dry-run=server` and `kubectl apply -k deploy/ --dry-run=server` pass.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde::Deserialize as _;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tool(name: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let bin = testenv::testenv_dir()?.join("bin").join(name);
    let mut child = Command::new(&bin)
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{name} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Whole numbers written as floats (`3600.0`, as the CRD generator writes them) and as
/// integers (`3600`, as kustomize re-serializes them) compare equal.
fn canonical_numbers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.0e15
            {
                *v = serde_json::Value::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonical_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(canonical_numbers),
        _ => {}
    }
}

/// Objects keyed by kind/namespace/name, without the labels only Helm sets.
fn normalized(yaml: &str) -> Result<Vec<(String, serde_json::Value)>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut v = serde_json::Value::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        canonical_numbers(&mut v);
        if let Some(labels) = v
            .pointer_mut("/metadata/labels")
            .and_then(|l| l.as_object_mut())
        {
            labels.remove("helm.sh/chart");
            labels.remove("app.kubernetes.io/managed-by");
        }
        let key = format!(
            "{}/{}/{}",
            v["kind"].as_str().unwrap_or_default(),
            v["metadata"]["namespace"].as_str().unwrap_or_default(),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        out.push((key, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn helm_template(extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        "oauth-operator",
        "charts/oauth-operator",
        "--namespace",
        "oauth-operator",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    tool("helm", &args, None)
}

fn assert_same(chart: &str, kustomize: &str, what: &str) -> Result<()> {
    let chart = normalized(chart)?;
    // The base also creates the operator's namespace (Helm: --create-namespace).
    let kustomize: Vec<_> = normalized(kustomize)?
        .into_iter()
        .filter(|(k, _)| k != "Namespace//oauth-operator")
        .collect();
    let keys =
        |v: &[(String, serde_json::Value)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&chart), keys(&kustomize), "{what}: the same objects");
    for ((key, a), (_, b)) in chart.iter().zip(&kustomize) {
        assert_eq!(
            a, b,
            "{what}: {key} differs between the chart and kustomize"
        );
    }
    Ok(())
}

#[test]
fn chart_kustomize_base_and_crds_agree() -> Result<()> {
    let base = tool("kubectl", &["kustomize", "deploy/"], None)?;
    assert!(
        base.contains("kind: Namespace"),
        "the base creates its namespace"
    );
    assert_same(&helm_template(&[])?, &base, "default values vs deploy/")?;
    let overlay = tool(
        "kubectl",
        &["kustomize", "deploy/overlays/namespaced"],
        None,
    )?;
    assert_same(
        &helm_template(&["--set", "watchNamespaces={apps}"])?,
        &overlay,
        "watchNamespaces=[apps] vs deploy/overlays/namespaced",
    )?;
    let overlay = normalized(&overlay)?;
    assert!(
        !overlay
            .iter()
            .any(|(k, _)| k == "ClusterRole//oauth-operator"),
        "the namespaced overlay has no cluster-wide ClusterRole"
    );
    assert!(overlay.iter().any(|(k, _)| k == "Role/apps/oauth-operator"));
    let crds = std::fs::read_to_string(format!("{ROOT}/crds/oauth-operator.dev.yaml"))?;
    let copy = std::fs::read_to_string(format!("{ROOT}/deploy/base/crds/oauth-operator.dev.yaml"))?;
    assert_eq!(crds, copy, "deploy/base/crds is crds/ (run `make crds`)");
    Ok(())
}

#[test]
fn chart_defaults_are_hardened() -> Result<()> {
    let docs = normalized(&helm_template(&[])?)?;
    let get = |key: &str| docs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let deploy = get("Deployment/oauth-operator/oauth-operator").context("Deployment")?;
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args = c["args"].to_string();
    assert!(args.contains("--leader-elect=true"), "{args}");
    // No budget flag by default (each backend's own applies); a value given is passed on.
    assert!(!args.contains("--default-request-budget"), "{args}");
    let docs = normalized(&helm_template(&["--set", "defaultRequestBudget=900/10s"])?)?;
    let deploy = docs
        .iter()
        .find(|(k, _)| k == "Deployment/oauth-operator/oauth-operator")
        .context("Deployment")?;
    let args = deploy.1["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--default-request-budget=900/10s"), "{args}");
    let pdb = get("PodDisruptionBudget/oauth-operator/oauth-operator").context("PDB")?;
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let lease = get("Role/oauth-operator/oauth-operator-leader-election").context("Lease Role")?;
    assert_eq!(lease["rules"][0]["resources"][0], "leases");
    // One replica: no PodDisruptionBudget (it would block every drain).
    let single = normalized(&helm_template(&["--set", "replicas=1"])?)?;
    assert!(
        !single
            .iter()
            .any(|(k, _)| k.starts_with("PodDisruptionBudget/"))
    );
    // The schema refuses bad values at install.
    for bad in [
        "replicas=-1",
        "replicas=two",
        "logFormat=xml",
        "resyncInterval=10min",
        "unknownKey=1",
        "watchNamespaces={a,b}",
        "defaultRequestBudget=80",
        "defaultRequestBudget=9999/10s",
        "defaultRequestBudget=80/0s",
        "defaultRequestBudget=80/2h",
    ] {
        let err = helm_template(&["--set", bad]).expect_err(bad).to_string();
        assert!(err.contains("schema"), "{bad}: {err}");
    }
    tool("helm", &["lint", "--strict", "charts/oauth-operator"], None)?;
    Ok(())
}

#[tokio::test]
async fn install_paths_pass_server_side_dry_run() -> Result<()> {
    let env = support::Env::new("install").await?;
    let kubeconfig = env
        .cp
        .kubeconfig_path()
        .to_str()
        .context("utf-8")?
        .to_owned();
    // A server-side dry-run of namespaced objects needs their namespace to exist.
    for ns in ["oauth-operator", "apps"] {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
        match Api::<Namespace>::all(env.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let apply = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec![
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--dry-run=server",
        ];
        all.extend_from_slice(args);
        tool("kubectl", &all, stdin)
    };
    let out = apply(&["-f", "-"], Some(&helm_template(&[])?))?;
    assert!(
        out.contains("deployment.apps/oauth-operator serverside-applied (server dry run)"),
        "{out}"
    );
    let out = apply(
        &["-f", "-"],
        Some(&helm_template(&["--set", "watchNamespaces={apps}"])?),
    )?;
    assert!(
        out.contains("role.rbac.authorization.k8s.io/oauth-operator serverside-applied"),
        "{out}"
    );
    let out = apply(&["-k", "deploy/"], None)?;
    assert!(
        out.contains("poddisruptionbudget.policy/oauth-operator serverside-applied"),
        "{out}"
    );
    apply(&["-k", "deploy/overlays/namespaced"], None)?;
    Ok(())
}

/// `helm uninstall` removes the operator and keeps the CRDs: an application deleted while no
/// operator runs keeps its finalizer, its Secret and its client; once the operator is back it
/// deletes the client at the provider and the Secret, then releases the application.
#[tokio::test]
async fn operator_removed_app_deleted_operator_reinstalled_deletes_the_client() -> Result<()> {
    let env = support::Env::new("reinstall").await?;
    let mut op = env.start_operator(&[])?;
    env.apply_app(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: web}
spec:
  providerRef: {name: clerk}
  redirectUris: ["https://web.example.com/callback"]
"#,
    )
    .await?;
    env.wait_ready("web").await?;
    assert_eq!(env.clerk.apps().len(), 1);

    // Uninstalled: the pod gets SIGTERM and goes.
    let status = Command::new("kill")
        .args(["-TERM", &op.child.id().to_string()])
        .status()?;
    assert!(status.success());
    op.wait_exit(std::time::Duration::from_secs(20)).await?;

    env.apps()
        .delete("web", &kube::api::DeleteParams::default())
        .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let app = env.apps().get("web").await?;
    assert!(app.metadata.deletion_timestamp.is_some());
    assert!(
        app.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty()),
        "the finalizer holds the application while no operator runs"
    );
    assert_eq!(env.clerk.apps().len(), 1, "nothing deletes the client yet");
    assert!(env.secrets().get_opt("web-oauth").await?.is_some());

    // Reinstalled.
    let _op = env.start_operator(&[])?;
    env.wait_gone("web").await?;
    assert!(
        env.clerk.apps().is_empty(),
        "the client is deleted at the provider"
    );
    assert!(env.secrets().get_opt("web-oauth").await?.is_none());
    Ok(())
}
