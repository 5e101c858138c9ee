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
    let _op = env.start_operator(&[])?;
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
    let provider = Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .get("clerk")
        .await?;
    assert!(
        provider
            .finalizers()
            .iter()
            .any(|f| f == "oauth-operator.dev/in-use"),
        "the provider is protected while in use"
    );
    let credential = env.secrets().get("clerk-admin").await?;
    assert!(
        credential
            .finalizers()
            .iter()
            .any(|f| f == "oauth-operator.dev/provider-credential"),
        "its credential too"
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
