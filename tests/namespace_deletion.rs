//! Case 4 of the crash-safety issue: deleting a namespace that holds an `OAuthProvider`, its
//! credential Secret and the applications using it deletes every client at the provider.
//! The namespace controller removes everything at once; the provider (a finalizer while
//! applications still need it) and its credential Secret (a finalizer while the provider
//! exists) stay until the applications have deleted their clients. This binary runs the real
//! kube-controller-manager (namespace and garbage-collector controllers) on its own control
//! plane.

mod support;

use std::time::Duration;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use oauth_operator::api::OAuthProvider;
use support::Env;

#[tokio::test]
async fn case4_namespace_deletion_deletes_every_client() -> Result<()> {
    let env = Env::new("c4").await?;
    env.cp
        .start_controller_manager("namespace,garbagecollector")?;
    // The operator lives in a namespace of its own, as installed (its Lease must outlive the
    // namespace being deleted).
    let operator_ns = env.cp.create_namespace("c4-operator").await?;
    let _op = env.start_operator_in(&operator_ns, &[])?;
    // A second provider sharing the same credential Secret: its deletion must not release the
    // Secret for the first one.
    let shared: OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "clerk-shared"},
        "spec": {"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}}},
    }))?;
    let providers = Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    providers.create(&Default::default(), &shared).await?;
    for name in ["a", "b", "c"] {
        env.apply_app(&format!(
            r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: clerk}}
  redirectUris: ["https://{name}.example.com/callback"]
"#
        ))
        .await?;
    }
    for name in ["a", "b", "c"] {
        env.wait_ready(name).await?;
    }
    assert_eq!(env.clerk.apps().len(), 3);
    let provider = providers.get("clerk").await?;
    assert!(
        provider
            .finalizers()
            .iter()
            .any(|f| f == "oauth-operator.dev/in-use"),
        "the provider is protected while in use"
    );
    let finalizer = oauth_operator::controller::provider::credential_finalizer(
        &provider.uid().unwrap_or_default(),
    );
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while !env
        .secrets()
        .get("clerk-admin")
        .await?
        .finalizers()
        .contains(&finalizer)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "its credential is protected too"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The second provider goes first: the credential stays protected for the first.
    providers
        .delete("clerk-shared", &DeleteParams::default())
        .await?;
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while providers.get_opt("clerk-shared").await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "clerk-shared stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        env.secrets()
            .get("clerk-admin")
            .await?
            .finalizers()
            .contains(&finalizer),
        "still protected for the provider that uses it"
    );

    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces.delete(&env.ns, &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while namespaces.get_opt(&env.ns).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            let left: Vec<String> = env
                .secrets()
                .list(&Default::default())
                .await?
                .items
                .iter()
                .map(|s: &Secret| s.name_any())
                .collect();
            bail!(
                "namespace {} still there; clients left: {}; Secrets left: {left:?}",
                env.ns,
                env.clerk.apps().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        env.clerk.apps().is_empty(),
        "every client was deleted at the provider: {:?}",
        env.clerk
            .apps()
            .iter()
            .map(|a| a.name.clone())
            .collect::<Vec<_>>()
    );
    Ok(())
}
