//! The operator runs as a ServiceAccount with exactly the RBAC it ships (the chart's default
//! render, deploy/base/rbac.yaml, and the namespace-scoped overlay), leader election on,
//! through a full create / update / rotate / delete cycle. Each rule that
//! matters is then taken away in turn, and the operator fails at a named step without
//! registering anything it cannot record. The apiserver enables
//! OwnerReferencesPermissionEnforcement, as hardened clusters do, so the finalizers rule counts.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize as _;
use serde_json::Value;
use support::{Env, Operator};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const APP: &str = r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: web}
spec:
  providerRef: {name: clerk}
  redirectUris: ["https://web.example.com/callback"]
"#;

fn manifests(path: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(format!("{ROOT}/{path}"))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Ok(serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?))
        .filter(|doc: &Result<Value>| doc.as_ref().map_or(true, |d| !d.is_null()))
        .collect()
}

/// Takes `resource` (e.g. `secrets`, `oauthapplications/status`) out of every rule.
fn without(mut docs: Vec<Value>, resource: &str) -> Vec<Value> {
    let mut removed = false;
    for doc in &mut docs {
        if let Some(rules) = doc.get_mut("rules").and_then(Value::as_array_mut) {
            for rule in rules.iter_mut() {
                if let Some(resources) = rule["resources"].as_array_mut() {
                    let before = resources.len();
                    resources.retain(|r| r != resource);
                    removed |= resources.len() != before;
                }
            }
            rules.retain(|rule| rule["resources"].as_array().is_some_and(|r| !r.is_empty()));
        }
    }
    assert!(removed, "no rule grants {resource}");
    docs
}

/// Installs the RBAC objects for a ServiceAccount in the test namespace (cluster-scoped names
/// get the namespace as a suffix; every namespaced object and subject moves into the test
/// namespace, which is both the operator's and the watched one) and returns a kubeconfig that
/// authenticates as that ServiceAccount.
async fn install(env: &Env, docs: Vec<Value>) -> Result<PathBuf> {
    let ns = env.ns.as_str();
    let sa = "oauth-operator";
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), ns);
    if sas.get_opt(sa).await?.is_none() {
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": sa}}))?,
        )
        .await?;
    }
    let apply = PatchParams::apply("tests").force();
    for mut doc in docs {
        let kind = doc["kind"].as_str().context("kind")?.to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_string();
        if let Some(subjects) = doc["subjects"].as_array_mut() {
            for subject in subjects {
                subject["namespace"] = ns.into();
            }
        }
        match kind.as_str() {
            "ClusterRole" | "ClusterRoleBinding" => {
                let name = format!("{name}-{ns}");
                doc["metadata"]["name"] = name.clone().into();
                if kind == "ClusterRole" {
                    let role: ClusterRole = serde_json::from_value(doc)?;
                    Api::<ClusterRole>::all(env.client.clone())
                        .patch(&name, &apply, &Patch::Apply(&role))
                        .await?;
                } else {
                    let role_ref = format!(
                        "{}-{ns}",
                        doc["roleRef"]["name"].as_str().context("roleRef")?
                    );
                    doc["roleRef"]["name"] = role_ref.into();
                    let binding: ClusterRoleBinding = serde_json::from_value(doc)?;
                    Api::<ClusterRoleBinding>::all(env.client.clone())
                        .patch(&name, &apply, &Patch::Apply(&binding))
                        .await?;
                }
            }
            "Role" | "RoleBinding" => {
                doc["metadata"]["namespace"] = ns.into();
                if kind == "Role" {
                    let role: Role = serde_json::from_value(doc)?;
                    Api::<Role>::namespaced(env.client.clone(), ns)
                        .patch(&name, &apply, &Patch::Apply(&role))
                        .await?;
                } else {
                    let binding: RoleBinding = serde_json::from_value(doc)?;
                    Api::<RoleBinding>::namespaced(env.client.clone(), ns)
                        .patch(&name, &apply, &Patch::Apply(&binding))
                        .await?;
                }
            }
            _ => {}
        }
    }

    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )?;
    let token: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await?;
    let token = token.status.context("token issued")?.token;
    let kubeconfig = env.log_dir.join("operator-sa.kubeconfig");
    let ca = k8s_openapi::ByteString(env.cp.ca_pem().as_bytes().to_vec());
    std::fs::write(
        &kubeconfig,
        serde_yaml::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "test", "cluster": {"server": env.cp.server_url(), "certificate-authority-data": ca}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
        }))?,
    )?;
    Ok(kubeconfig)
}

/// Leader election stays on (the default), so the Lease rules are exercised too.
fn start(env: &Env, kubeconfig: &std::path::Path) -> Result<Operator> {
    env.start_operator(&[("KUBECONFIG", kubeconfig.to_str().context("utf-8 path")?)])
}

async fn full_cycle(env: &Env, op: &Operator) -> Result<()> {
    env.apply_app(APP).await?;
    env.wait_ready("web").await?;
    let secret = env.secrets().get("web-oauth").await?;
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    // Update: a second redirect URI reaches the provider.
    let update = serde_json::json!({"spec": {"redirectUris": [
        "https://web.example.com/callback", "https://web.example.com/second"]}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&update))
        .await?;
    env.wait_app("web", "generation 2 applied", |a| {
        a.status.as_ref().and_then(|s| s.synced_generation) == Some(2)
    })
    .await?;
    let at_clerk = env.clerk.apps();
    assert!(
        at_clerk[0]
            .redirect_uris
            .contains(&"https://web.example.com/second".to_string()),
        "{:?}",
        at_clerk[0].redirect_uris
    );
    let rotate =
        serde_json::json!({"metadata": {"annotations": {"oauth-operator.dev/rotate": "1"}}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&rotate))
        .await?;
    env.wait_app("web", "rotated", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_rotation_token.as_deref())
            == Some("1")
    })
    .await?;
    env.wait_event("web", "SecretRotated").await?;
    let rotated = env.secrets().get("web-oauth").await?;
    support::assert_token(&rotated, "https://web.example.com/callback").await?;
    env.apps().delete("web", &DeleteParams::default()).await?;
    env.wait_gone("web").await?;
    assert!(env.clerk.apps().is_empty(), "the client was not deleted");
    let logs = op.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "RBAC denied something: {}",
        op.log.display()
    );
    Ok(())
}

#[tokio::test]
async fn deploy_base_rbac_runs_the_full_cycle() -> Result<()> {
    let env = Env::new("rbac-base").await?;
    let kubeconfig = install(&env, manifests("deploy/base/rbac.yaml")?).await?;
    let op = start(&env, &kubeconfig)?;
    full_cycle(&env, &op).await
}

/// The chart's own render (default values), not the base it is kept equal to.
#[tokio::test]
async fn chart_rbac_runs_the_full_cycle() -> Result<()> {
    let env = Env::new("rbac-chart").await?;
    let helm = testenv::testenv_dir()?.join("bin/helm");
    let out = std::process::Command::new(&helm)
        .args([
            "template",
            "oauth-operator",
            "charts/oauth-operator",
            "-n",
            "oauth-operator",
        ])
        .current_dir(ROOT)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(std::str::from_utf8(&out.stdout)?)
        .map(|doc| Ok(serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?))
        .collect::<Result<Vec<Value>>>()?
        .into_iter()
        .filter(|d| {
            ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
                .contains(&d["kind"].as_str().unwrap_or(""))
        })
        .collect();
    anyhow::ensure!(
        docs.len() == 4,
        "the chart renders {} RBAC objects",
        docs.len()
    );
    let kubeconfig = install(&env, docs).await?;
    let op = start(&env, &kubeconfig)?;
    full_cycle(&env, &op).await
}

#[tokio::test]
async fn namespaced_overlay_rbac_runs_the_full_cycle() -> Result<()> {
    let env = Env::new("rbac-ns").await?;
    // The base's leader-election Role and the overlay's Roles (the base's ClusterRole is what
    // the overlay deletes).
    let mut docs: Vec<Value> = manifests("deploy/base/rbac.yaml")?
        .into_iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding")
        .collect();
    docs.extend(manifests("deploy/overlays/namespaced/rbac.yaml")?);
    let kubeconfig = install(&env, docs).await?;
    let op = start(&env, &kubeconfig)?;
    full_cycle(&env, &op).await
}

/// Polls the operator's log for `fragment`.
async fn wait_log(op: &Operator, fragment: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !op.logs().contains(fragment) {
        if tokio::time::Instant::now() > deadline {
            bail!("the log never said {fragment:?}: {}", op.log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Without `resource`, the operator names the refusal (in its log, and in the application's
/// status when it can write it), the application never becomes Ready, and no client is left
/// registered that the operator could not record.
async fn denied(prefix: &str, resource: &str, log_fragment: &str) -> Result<Env> {
    let env = Env::new(prefix).await?;
    let docs = without(manifests("deploy/base/rbac.yaml")?, resource);
    let kubeconfig = install(&env, docs).await?;
    let op = start(&env, &kubeconfig)?;
    env.apply_app(APP).await?;
    wait_log(&op, log_fragment).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = env.apps().get("web").await?;
    assert!(
        support::ready(&app).is_none_or(|(status, _)| status != "True"),
        "Ready without {resource}"
    );
    Ok(env)
}

#[tokio::test]
async fn without_secrets_nothing_is_registered() -> Result<()> {
    let env = denied(
        "rbac-nosecrets",
        "secrets",
        r#"cannot list resource \"secrets\""#,
    )
    .await?;
    assert!(env.clerk.apps().is_empty());
    Ok(())
}

#[tokio::test]
async fn without_finalizers_the_secret_is_rejected_before_registering() -> Result<()> {
    let env = denied(
        "rbac-nofinalizers",
        "oauthapplications/finalizers",
        "cannot set blockOwnerDeletion",
    )
    .await?;
    let app = env.wait_reason("web", "SecretRejected").await?;
    let message = app
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("blockOwnerDeletion"), "{message}");
    assert!(env.clerk.apps().is_empty());
    Ok(())
}

#[tokio::test]
async fn without_status_nothing_is_registered() -> Result<()> {
    let env = denied(
        "rbac-nostatus",
        "oauthapplications/status",
        r#"cannot patch resource \"oauthapplications/status\""#,
    )
    .await?;
    assert!(env.clerk.apps().is_empty());
    Ok(())
}

#[tokio::test]
async fn without_leases_the_operator_never_leads() -> Result<()> {
    let env = denied(
        "rbac-nolease",
        "leases",
        r#"cannot get resource \"leases\""#,
    )
    .await?;
    // A replica that cannot take the Lease stays a standby: not one provider request.
    assert!(
        env.clerk.request_counts().is_empty(),
        "{:?}",
        env.clerk.request_counts()
    );
    Ok(())
}
