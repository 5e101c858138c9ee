//! The operator runs with exactly the ClusterRole in deploy/rbac.yaml, as a ServiceAccount,
//! through a full create / rotate / delete cycle.

mod support;

use anyhow::{Context as _, Result};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::Env;

#[tokio::test]
async fn operator_works_with_deploy_rbac_only() -> Result<()> {
    let env = Env::new("rbac").await?;
    let manifests =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml"))?;
    let role: ClusterRole = serde_yaml::Deserializer::from_str(&manifests)
        .map(serde_yaml::Value::deserialize)
        .filter_map(Result::ok)
        .find(|doc| doc["kind"] == "ClusterRole")
        .map(serde_yaml::from_value)
        .context("deploy/rbac.yaml has a ClusterRole")??;
    let role_name = format!("oauth-operator-{}", env.ns);
    let mut role = role;
    role.metadata.name = Some(role_name.clone());
    Api::<ClusterRole>::all(env.client.clone())
        .patch(
            &role_name,
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&role),
        )
        .await?;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "oauth-operator"}}))?;
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    sas.create(&PostParams::default(), &sa).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": role_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": "oauth-operator", "namespace": env.ns}],
    }))?;
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;

    let request: TokenRequest = serde_json::from_value(
        serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
    )?;
    let token: TokenRequest = sas
        .create_subresource("token", "oauth-operator", &PostParams::default(), &request)
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

    // The Lease Role arrives with the chart's leader-election RBAC; this test covers the
    // ClusterRole.
    let op = env.start_operator(&[
        ("KUBECONFIG", kubeconfig.to_str().context("utf-8 path")?),
        ("OAUTH_OPERATOR_LEADER_ELECT", "false"),
    ])?;
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
    let secret = env.secrets().get("web-oauth").await?;
    support::assert_token(&secret, "https://web.example.com/callback").await?;
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
    env.apps().delete("web", &DeleteParams::default()).await?;
    env.wait_gone("web").await?;
    assert!(env.clerk.apps().is_empty());
    let logs = op.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "RBAC denied something: {logs}"
    );
    Ok(())
}

use serde::Deserialize as _;
