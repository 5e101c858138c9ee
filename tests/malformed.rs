//! One object the operator cannot deserialize (here: a CRD in the cluster that is looser than
//! the operator's types) must not stall the watch: it gets a `Malformed` event, the others are
//! reconciled. This binary has its own control plane, so its relaxed CRD stays here.

mod support;

use anyhow::Result;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use oauth_operator::api::OAuthApplication;
use support::Env;

#[tokio::test]
async fn a_malformed_object_does_not_stall_the_others() -> Result<()> {
    let env = Env::new("malformed").await?;
    // The CRD as an older or hand-edited one might be: deletionPolicy without its enum.
    let mut crd = serde_json::to_value(<OAuthApplication as kube::CustomResourceExt>::crd())?;
    let policy = crd
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/deletionPolicy",
        )
        .expect("deletionPolicy in the schema");
    policy.as_object_mut().expect("an object").remove("enum");
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
