//! A CRD in the cluster that is looser than the operator's types (an older or hand-edited
//! one): an object the operator cannot deserialize must not stall the watch (it gets a
//! `Malformed` event, the others are reconciled), and a change the current CRD would refuse
//! (the Secret's key names) is refused by the operator instead of answered with new
//! credentials. This binary has its own control plane, so its relaxed CRD stays here.

mod support;

use anyhow::Result;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use oauth_operator::api::OAuthApplication;
use support::{Env, data};

/// The CRD as an older or hand-edited one might be: deletionPolicy without its enum, and no
/// rule keeping `secret.keys` immutable. Idempotent (every test of this binary applies it).
async fn install_loose_crd(env: &Env) -> Result<()> {
    let mut crd = serde_json::to_value(<OAuthApplication as kube::CustomResourceExt>::crd())?;
    let spec = crd
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .expect("spec in the schema");
    spec.pointer_mut("/properties/deletionPolicy")
        .and_then(|p| p.as_object_mut())
        .expect("deletionPolicy in the schema")
        .remove("enum");
    let rules = spec
        .get_mut("x-kubernetes-validations")
        .and_then(|r| r.as_array_mut())
        .expect("spec-level rules");
    let before = rules.len();
    rules.retain(|r| {
        !r["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("secret.keys is immutable")
    });
    assert_eq!(rules.len() + 1, before, "the secret.keys rule was there");
    let crd: CustomResourceDefinition = serde_json::from_value(crd)?;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch(
        "oauthapplications.oauth-operator.dev",
        &PatchParams::apply("oauth-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    tokio::time::timeout(
        support::TIMEOUT,
        await_condition(
            crds,
            "oauthapplications.oauth-operator.dev",
            conditions::is_crd_established(),
        ),
    )
    .await??;
    Ok(())
}

#[tokio::test]
async fn a_malformed_object_does_not_stall_the_others() -> Result<()> {
    let env = Env::new("malformed").await?;
    install_loose_crd(&env).await?;
    let raw: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<OAuthApplication>(&()),
    );
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthApplication",
        "metadata": {"name": "bad"},
        "spec": {"providerRef": {"name": "clerk"}, "deletionPolicy": "Keep"},
    }))?;
    raw.create(&PostParams::default(), &bad).await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: good}
spec:
  providerRef: {name: clerk}
  redirectUris: ["https://good.example.com/callback"]
"#,
    )
    .await?;
    env.wait_ready("good").await?;
    let note = env.wait_event("bad", "Malformed").await?;
    assert!(note.contains("Keep"), "{note}");
    assert_eq!(
        env.clerk.apps().len(),
        1,
        "nothing registered for the malformed object"
    );
    Ok(())
}

/// Case 6 of the crash-safety issue: `spec.secret.keys` changed on a cluster whose CRD lacks
/// the immutability rule. Under the new keys the Secret would look empty; the operator refuses
/// the change (InvalidSpec) instead of rotating, and the Secret is left as it is.
#[tokio::test]
async fn changed_secret_keys_are_refused_not_rotated() -> Result<()> {
    let env = Env::new("keys").await?;
    install_loose_crd(&env).await?;
    let _op = env.start_operator(&[])?;
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
    let stored = env.secrets().get("web-oauth").await?;
    let keys = serde_json::json!({"spec": {"secret": {"keys": {"clientId": "OIDC_CLIENT_ID"}}}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&keys))
        .await?;
    let app = env.wait_reason("web", "InvalidSpec").await?;
    let message = support::ready_message(&app);
    assert!(message.contains("keys cannot change"), "{message}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let now = env.secrets().get("web-oauth").await?;
    assert_eq!(now.data, stored.data, "the Secret is left as it is");
    assert_eq!(
        env.clerk
            .request_count("POST", clerk_emulator::routes::ROTATE_SECRET),
        0
    );
    assert!(data(&now).contains_key("CLIENT_SECRET"));
    support::assert_token(&now, "https://web.example.com/callback").await?;
    Ok(())
}
