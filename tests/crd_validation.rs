//! The CRD's OpenAPI schema and CEL rules, enforced by a real kube-apiserver at apply time.

mod support;

use anyhow::Result;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use oauth_operator::api::OAuthApplication;
use support::Env;

/// Raw JSON (a DynamicObject), so invalid values the Rust types cannot hold reach the apiserver.
fn app(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1",
        "kind": "OAuthApplication",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("test fixture")
}

fn api(env: &Env) -> Api<DynamicObject> {
    Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<OAuthApplication>(&()),
    )
}

async fn rejected(env: &Env, name: &str, spec: serde_json::Value) -> String {
    match api(env)
        .create(&PostParams::default(), &app(name, spec))
        .await
    {
        Ok(_) => panic!("{name}: the apiserver accepted an invalid OAuthApplication"),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{name}: {s:?}");
            s.message
        }
        Err(e) => panic!("{name}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn invalid_applications_are_rejected_at_apply() -> Result<()> {
    let env = Env::new("crd").await?;
    let base = |uris: serde_json::Value| serde_json::json!({"providerRef": {"name": "clerk"}, "redirectUris": uris});
    let cases = [
        (
            "relative",
            base(serde_json::json!(["/callback"])),
            "must be an absolute URI",
        ),
        (
            "fragment",
            base(serde_json::json!(["https://a.example.com/cb#x"])),
            "must not contain a fragment",
        ),
        (
            "wildcard",
            base(serde_json::json!(["https://*.example.com/cb"])),
            "must not contain a wildcard",
        ),
        (
            "plainhttp",
            base(serde_json::json!(["http://a.example.com/cb"])),
            "must use https",
        ),
        (
            "publicsecret",
            serde_json::json!({"providerRef": {"name": "clerk"}, "clientType": "public", "secret": {"keys": {"clientSecret": "S"}}}),
            "a public client has no client secret",
        ),
        (
            "publiccc",
            serde_json::json!({"providerRef": {"name": "clerk"}, "clientType": "public", "grantTypes": ["client_credentials"]}),
            "cannot use the client_credentials grant",
        ),
        (
            "badenum",
            serde_json::json!({"providerRef": {"name": "clerk"}, "deletionPolicy": "Keep"}),
            "Unsupported value",
        ),
        (
            "badscope",
            serde_json::json!({"providerRef": {"name": "clerk"}, "scopes": ["two words"]}),
            "should match",
        ),
        (
            "publicrotation",
            serde_json::json!({"providerRef": {"name": "clerk"}, "clientType": "public", "rotation": {"period": "720h"}}),
            "a public client has no client secret to rotate",
        ),
        (
            "publicgrace",
            serde_json::json!({"providerRef": {"name": "keycloak"}, "clientType": "public", "rotation": {"gracePeriod": "1h"}}),
            "remove rotation.gracePeriod",
        ),
        (
            "zerograce",
            serde_json::json!({"providerRef": {"name": "keycloak"}, "rotation": {"gracePeriod": "0s"}}),
            "rotation.gracePeriod must be between 1s and 8760h",
        ),
        (
            "longgrace",
            serde_json::json!({"providerRef": {"name": "keycloak"}, "rotation": {"gracePeriod": "9000h"}}),
            "rotation.gracePeriod must be between 1s and 8760h",
        ),
        (
            "gracebeyondperiod",
            serde_json::json!({"providerRef": {"name": "keycloak"}, "rotation": {"period": "24h", "gracePeriod": "22h"}}),
            "rotation.gracePeriod must be at most nine tenths of rotation.period",
        ),
        (
            "shortperiod",
            serde_json::json!({"providerRef": {"name": "clerk"}, "rotation": {"period": "10s"}}),
            "rotation.period must be at least 30s",
        ),
        (
            "byopublic",
            serde_json::json!({"providerRef": {"name": "hydra"}, "clientType": "public", "credentialsFrom": {"name": "vault"}}),
            "a public client has none: remove credentialsFrom",
        ),
        (
            "byorotation",
            serde_json::json!({"providerRef": {"name": "hydra"}, "credentialsFrom": {"name": "vault"}, "rotation": {"period": "720h"}}),
            "rotated by changing its Secret",
        ),
        (
            "byosamesecret",
            serde_json::json!({"providerRef": {"name": "hydra"}, "credentialsFrom": {"name": "vault"}, "secret": {"name": "vault"}}),
            "never writes the Secret credentialsFrom names",
        ),
        (
            "byobadkey",
            serde_json::json!({"providerRef": {"name": "hydra"}, "credentialsFrom": {"name": "vault", "clientSecretKey": "a/b"}}),
            "clientSecretKey",
        ),
        (
            "notaduration",
            serde_json::json!({"providerRef": {"name": "clerk"}, "rotation": {"period": "soon"}}),
            "period",
        ),
    ];
    for (name, spec, message) in cases {
        let got = rejected(&env, name, spec).await;
        assert!(got.contains(message), "{name}: {got:?} lacks {message:?}");
    }
    let too_many: Vec<String> = (0..33)
        .map(|i| format!("https://a.example.com/cb{i}"))
        .collect();
    let got = rejected(&env, "toomany", base(serde_json::json!(too_many))).await;
    assert!(got.contains("must have at most 32 items"), "{got}");

    // Valid: loopback http, [::1], private-use scheme.
    api(&env)
        .create(
            &PostParams::default(),
            &app(
                "ok",
                base(serde_json::json!([
                    "http://127.0.0.1:8080/cb",
                    "http://[::1]/cb",
                    "http://localhost/cb",
                    "com.example.app:/cb",
                    "https://a.example.com/cb?x=1"
                ])),
            ),
        )
        .await?;
    // A scheduled rotation in Go's duration syntax.
    api(&env)
        .create(
            &PostParams::default(),
            &app(
                "rotating",
                serde_json::json!({"providerRef": {"name": "clerk"}, "rotation": {"period": "2160h30m", "gracePeriod": "48h"}}),
            ),
        )
        .await?;
    // credentialsFrom can be neither added nor removed (the client id would change).
    let patch = serde_json::json!({"spec": {"credentialsFrom": {"name": "vault"}}});
    let err = env
        .apps()
        .patch("rotating", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("credentialsFrom cannot be added or removed"),
        "{err}"
    );
    api(&env)
        .create(
            &PostParams::default(),
            &app(
                "byo",
                serde_json::json!({"providerRef": {"name": "hydra"}, "credentialsFrom": {"name": "vault", "clientIdKey": "id"}}),
            ),
        )
        .await?;
    let patch = serde_json::json!({"spec": {"credentialsFrom": null}});
    let err = env
        .apps()
        .patch("byo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("credentialsFrom cannot be added or removed"),
        "{err}"
    );
    // providerRef is immutable.
    let patch = serde_json::json!({"spec": {"providerRef": {"name": "other"}}});
    let err = env
        .apps()
        .patch("ok", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("providerRef is immutable"),
        "{err}"
    );
    Ok(())
}

/// A provider has exactly one backend block; a Hydra block needs both URLs, the issuer https
/// (http only on loopback).
#[tokio::test]
async fn providers_have_exactly_one_valid_backend_block() -> Result<()> {
    let env = Env::new("crd-provider").await?;
    let providers: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &ApiResource::erase::<oauth_operator::api::OAuthProvider>(&()),
    );
    let provider = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("test fixture")
    };
    let hydra = serde_json::json!({"adminUrl": "http://hydra-admin:4445", "issuerUrl": "https://auth.example.com"});
    let clerk = serde_json::json!({"secretKeyRef": {"name": "clerk-admin"}});
    for (name, spec, message) in [
        ("none", serde_json::json!({}), "exactly one backend block"),
        (
            "both",
            serde_json::json!({"clerk": clerk, "hydra": hydra}),
            "exactly one backend block",
        ),
        (
            "plain-issuer",
            serde_json::json!({"hydra": {"adminUrl": "http://hydra-admin:4445", "issuerUrl": "http://auth.example.com"}}),
            "https URL",
        ),
    ] {
        match providers
            .create(&PostParams::default(), &provider(name, spec))
            .await
        {
            Ok(_) => panic!("{name}: the apiserver accepted an invalid OAuthProvider"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {s:?}");
                assert!(s.message.contains(message), "{name}: {}", s.message);
            }
            Err(e) => panic!("{name}: unexpected error {e}"),
        }
    }
    providers
        .create(
            &PostParams::default(),
            &provider("hydra", serde_json::json!({"hydra": hydra})),
        )
        .await?;
    Ok(())
}

/// Every manifest in `examples/` is accepted by the apiserver as written (server-side dry-run
/// apply into a test namespace): what a user copies works.
#[tokio::test]
async fn every_example_is_accepted_by_the_apiserver() -> Result<()> {
    use kube::core::GroupVersionKind;
    use kube::discovery::pinned_kind;
    use serde::Deserialize as _;
    let env = Env::new("examples").await?;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples: {files:?}");
    let mut applied = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value)?;
            let types = obj.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types)?;
            let (resource, _) = pinned_kind(&env.client, &gvk).await?;
            let name = obj.metadata.name.clone().expect("a name");
            let api: Api<DynamicObject> =
                Api::namespaced_with(env.client.clone(), &env.ns, &resource);
            api.patch(
                &name,
                &PatchParams::apply("examples-test").dry_run().force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: {} {name}: {e}", file.display(), gvk.kind))?;
            applied += 1;
        }
    }
    assert!(applied >= 8, "{applied} objects applied");
    Ok(())
}
