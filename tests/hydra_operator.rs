//! End-to-end on a real Ory Hydra (v2, in memory, loopback): the operator chooses each
//! client's id and generates its secret, writes the Secret before the create, and settles a
//! create that meets an existing id by the owner marker in the client's metadata. Every
//! credential is proven with a client_credentials token at Hydra's token endpoint.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use oauth_operator::api::OAuthProvider;
use support::{Env, SecretHistory, data, ready};
use testenv::hydra::Hydra;

fn app_yaml(name: &str, redirect: &str) -> String {
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: hydra}}
  redirectUris: ["{redirect}"]
  grantTypes: [client_credentials]
"#
    )
}

async fn hydra_env(prefix: &str) -> Result<(Env, &'static Hydra)> {
    let env = Env::new(prefix).await?;
    let hydra = Hydra::shared()?;
    let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "hydra"},
        "spec": {"hydra": {"adminUrl": hydra.admin_url(), "issuerUrl": hydra.issuer()}},
    }))?;
    Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &provider)
        .await?;
    Ok((env, hydra))
}

/// A client_credentials token with the Secret's credentials, or the token endpoint's status.
async fn token(secret: &Secret) -> Result<Result<String, u16>> {
    support::client_credentials_token(secret).await
}

async fn hydra_client(hydra: &Hydra, id: &str) -> Result<Option<serde_json::Value>> {
    let response = reqwest::get(format!("{}/admin/clients/{id}", hydra.admin_url())).await?;
    if response.status() == 404 {
        return Ok(None);
    }
    Ok(Some(response.error_for_status()?.json().await?))
}

#[tokio::test]
async fn hydra_lifecycle_with_operator_chosen_credentials() -> Result<()> {
    let (env, hydra) = hydra_env("hydra").await?;
    let history = SecretHistory::start(&env).await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "https://web.example.com/callback"))
        .await?;
    let app = env.wait_ready("web").await?;
    let uid = app.metadata.uid.clone().context("uid")?;
    let status = app.status.context("status")?;
    let id = status.client_id.clone().context("client id")?;
    assert_eq!(
        id,
        format!("oauth-operator-{uid}"),
        "the id is derived from the uid"
    );
    let client = hydra_client(hydra, &id)
        .await?
        .context("the client exists")?;
    assert_eq!(
        client["metadata"]["oauth-operator.dev/owner-uid"],
        uid.as_str()
    );
    let secret = env.secrets().get("web-oauth").await?;
    assert!(
        data(&secret)["CLIENT_SECRET"].len() >= 43,
        "32 random bytes"
    );
    // In line with the spec as created: a few resyncs correct nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !env.event_reasons("web")
            .await?
            .iter()
            .any(|(r, _)| r == "DriftCorrected"),
        "no drift right after creation"
    );
    token(&secret)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;

    // A redirect URI change: one PUT; the Secret is not rewritten.
    let patch = serde_json::json!({"spec": {"redirectUris": ["https://web.example.com/new"]}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    env.wait_ready("web").await?;
    let client = hydra_client(hydra, &id).await?.context("client")?;
    assert_eq!(client["redirect_uris"][0], "https://web.example.com/new");
    let after = env.secrets().get("web-oauth").await?;
    assert_eq!(
        after.metadata.resource_version,
        secret.metadata.resource_version
    );
    token(&after)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;

    // An edit made at Hydra (its admin API) is corrected back to the spec at the next resync,
    // without touching the secret.
    let mut edited = client.clone();
    edited["redirect_uris"] = serde_json::json!(["https://evil.example.com/cb"]);
    reqwest::Client::new()
        .put(format!("{}/admin/clients/{id}", hydra.admin_url()))
        .json(&edited)
        .send()
        .await?
        .error_for_status()?;
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while hydra_client(hydra, &id).await?.context("client")?["redirect_uris"][0]
        != "https://web.example.com/new"
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the edit at Hydra was not corrected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_event("web", "DriftCorrected").await?;
    token(&after)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;

    // Rotation: the operator sets a new secret; the old one is refused.
    env.rotate("web", "r1").await?;
    let rotated = env
        .wait_secret("web-oauth", |s| {
            data(s)["CLIENT_SECRET"] != data(&secret)["CLIENT_SECRET"]
        })
        .await?;
    env.wait_app("web", "rotation answered", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_rotation_token.as_deref())
            == Some("r1")
    })
    .await?;
    token(&rotated)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;
    assert_eq!(
        token(&secret).await?,
        Err(401),
        "the rotated-out secret is refused"
    );

    // The Secret deleted: recovered with a new secret that works.
    env.secrets()
        .delete("web-oauth", &DeleteParams::default())
        .await?;
    let recovered = env
        .wait_secret("web-oauth", |s| data(s).contains_key("CLIENT_SECRET"))
        .await?;
    env.wait_ready("web").await?;
    token(&recovered)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;

    assert_eq!(
        history.values("web-oauth").len(),
        3,
        "written, rotated once, recovered once"
    );
    // Deleted with the application.
    env.apps().delete("web", &DeleteParams::default()).await?;
    env.wait_gone("web").await?;
    assert!(
        hydra_client(hydra, &id).await?.is_none(),
        "deleted at Hydra"
    );
    Ok(())
}

/// A crash after the Secret is written and before the create: the restart registers the same
/// client with the Secret's secret (no second secret, no second client).
#[tokio::test]
async fn hydra_crash_between_secret_and_create() -> Result<()> {
    let (env, hydra) = hydra_env("hydra-crash").await?;
    let history = SecretHistory::start(&env).await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-secret")])?;
    env.apply_app(&app_yaml("web", "https://web.example.com/callback"))
        .await?;
    op.wait_abort("after-secret", Duration::from_secs(60))
        .await?;
    let app = env.apps().get("web").await?;
    let id = app
        .status
        .as_ref()
        .and_then(|s| s.client_id.clone())
        .context("the id was recorded first")?;
    assert!(hydra_client(hydra, &id).await?.is_none(), "not created yet");
    let written = env.secrets().get("web-oauth").await?;

    let _op = env.start_operator(&[])?;
    env.wait_ready("web").await?;
    assert!(hydra_client(hydra, &id).await?.is_some());
    let secret = env.secrets().get("web-oauth").await?;
    assert_eq!(
        data(&secret)["CLIENT_SECRET"],
        data(&written)["CLIENT_SECRET"]
    );
    token(&secret)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;
    assert_eq!(history.values("web-oauth").len(), 1, "written once");
    Ok(())
}

/// The chosen id is taken by a client that does not carry this application's uid: refused
/// with a condition, and that client is never touched, not even by the deletion.
#[tokio::test]
async fn hydra_id_taken_by_another_owner_is_refused() -> Result<()> {
    let (env, hydra) = hydra_env("hydra-taken").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-secret")])?;
    env.apply_app(&app_yaml("web", "https://web.example.com/callback"))
        .await?;
    op.wait_abort("after-secret", Duration::from_secs(60))
        .await?;
    let id = env
        .apps()
        .get("web")
        .await?
        .status
        .and_then(|s| s.client_id)
        .context("id")?;
    // Someone else registers that id meanwhile.
    reqwest::Client::new()
        .post(format!("{}/admin/clients", hydra.admin_url()))
        .json(&serde_json::json!({
            "client_id": id, "client_secret": "someone-elses-secret-0123456789",
            "grant_types": ["client_credentials"], "metadata": {"oauth-operator.dev/owner-uid": "another"},
        }))
        .send()
        .await?
        .error_for_status()?;
    let _op = env.start_operator(&[])?;
    let app = env.wait_reason("web", "ProviderRejected").await?;
    assert!(ready(&app).is_some_and(|(s, _)| s == "False"));
    env.apps().delete("web", &DeleteParams::default()).await?;
    env.wait_gone("web").await?;
    let foreign = hydra_client(hydra, &id).await?.context("left alone")?;
    assert_eq!(
        foreign["metadata"]["oauth-operator.dev/owner-uid"],
        "another"
    );
    Ok(())
}

/// A crash right after the create, a spec change while the operator is down, then a failure
/// recorded for the new generation (the provider unreachable: `observedGeneration` moves to
/// 2 while Hydra still has generation 1's settings): once Hydra is back the client is brought
/// to generation 2, not taken as already synced.
#[tokio::test]
async fn hydra_spec_change_during_a_crash_reaches_the_client() -> Result<()> {
    let (env, hydra) = hydra_env("hydra-spec").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-create")])?;
    env.apply_app(&app_yaml("web", "https://web.example.com/callback"))
        .await?;
    op.wait_abort("after-create", Duration::from_secs(60))
        .await?;
    let id = env
        .apps()
        .get("web")
        .await?
        .status
        .and_then(|s| s.client_id)
        .context("the id was recorded first")?;
    assert!(hydra_client(hydra, &id).await?.is_some(), "created");

    let change = serde_json::json!({"spec": {"redirectUris": ["https://web.example.com/new"]}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&change))
        .await?;
    let providers = Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    let point = |url: String| serde_json::json!({"spec": {"hydra": {"adminUrl": url}}});
    let dead = format!("http://127.0.0.1:{}", testenv::free_port()?);
    providers
        .patch(
            "hydra",
            &PatchParams::default(),
            &Patch::Merge(&point(dead)),
        )
        .await?;
    let _op = env.start_operator(&[("OAUTH_OPERATOR_PROVIDER_TIMEOUT", "2s")])?;
    env.wait_app("web", "a failure recorded for generation 2", |a| {
        a.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
            && ready(a).is_some_and(|(s, _)| s == "False")
    })
    .await?;
    providers
        .patch(
            "hydra",
            &PatchParams::default(),
            &Patch::Merge(&point(hydra.admin_url().to_string())),
        )
        .await?;
    env.wait_app("web", "generation 2 applied", |a| {
        a.status.as_ref().and_then(|s| s.synced_generation) == Some(2)
            && ready(a).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    let client = hydra_client(hydra, &id).await?.context("client")?;
    assert_eq!(
        client["redirect_uris"],
        serde_json::json!(["https://web.example.com/new"])
    );
    Ok(())
}

/// A loopback proxy in front of Hydra's admin API that holds each create (`POST
/// /admin/clients`) for `hold` before passing it on, whether or not the caller still waits:
/// a create whose answer is lost and which commits after the caller gave up.
async fn late_commit_proxy(upstream: String, hold: Duration) -> Result<String> {
    use axum::body::{Body, to_bytes};
    use axum::extract::Request;
    use axum::response::Response;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let forward = move |request: Request| {
        let upstream = upstream.clone();
        async move {
            // Carried on by its own task: the caller hanging up does not stop it.
            let task = tokio::spawn(async move {
                let (parts, body) = request.into_parts();
                let body = to_bytes(body, 1 << 20).await.unwrap_or_default();
                if parts.method == axum::http::Method::POST && parts.uri.path() == "/admin/clients"
                {
                    tokio::time::sleep(hold).await;
                }
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let mut out = reqwest::Client::new()
                    .request(parts.method.clone(), format!("{upstream}{path}"))
                    .body(body.to_vec());
                if let Some(ct) = parts.headers.get(axum::http::header::CONTENT_TYPE) {
                    out = out.header(axum::http::header::CONTENT_TYPE, ct.clone());
                }
                match out.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let bytes = r.bytes().await.unwrap_or_default();
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(bytes))
                            .unwrap_or_default()
                    }
                    Err(_) => Response::builder()
                        .status(502)
                        .body(Body::empty())
                        .unwrap_or_default(),
                }
            });
            task.await.unwrap_or_default()
        }
    };
    let app = axum::Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// A create that times out and commits at Hydra only afterwards, with the application
/// deleted in between: the deletion waits until such a create can no longer commit (twice
/// the provider timeout after it went unanswered), then finds the client and deletes it. No
/// client is left behind that nobody holds.
#[tokio::test]
async fn a_deletion_waits_for_a_create_that_may_still_commit() -> Result<()> {
    let env = Env::new("hydra-late").await?;
    let hydra = Hydra::shared()?;
    let proxy = late_commit_proxy(hydra.admin_url().to_string(), Duration::from_secs(4)).await?;
    let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "hydra"},
        "spec": {"hydra": {"adminUrl": proxy, "issuerUrl": hydra.issuer()}},
    }))?;
    let providers = Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    providers.create(&PostParams::default(), &provider).await?;
    let _op = env.start_operator(&[("OAUTH_OPERATOR_PROVIDER_TIMEOUT", "2s")])?;
    // The provider Ready first: its turning Ready while the create is held would retry the
    // failed pass at once (a wake), and the retry's pending record would hide the first one's.
    tokio::time::timeout(
        Duration::from_secs(60),
        kube::runtime::wait::await_condition(providers, "hydra", |p: Option<&OAuthProvider>| {
            p.and_then(|p| p.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        }),
    )
    .await
    .context("the provider did not turn Ready")??;
    let app = env
        .apply_app(&app_yaml("late", "https://late.example.com/callback"))
        .await?;
    let uid = app.metadata.uid.clone().context("uid")?;
    let id = format!("oauth-operator-{uid}");
    env.wait_app("late", "the create unanswered", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.pending_registration.as_ref())
            .is_some_and(|p| p.unanswered_at.is_some())
    })
    .await?;
    assert!(
        hydra_client(hydra, &id).await?.is_none(),
        "not committed yet"
    );
    env.apps().delete("late", &DeleteParams::default()).await?;
    env.wait_gone("late").await?;
    // The held create has reached Hydra by now (4 s after it was sent).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        hydra_client(hydra, &id).await?.is_none(),
        "the client the late create made was deleted"
    );
    let reasons = env.event_reasons("late").await?;
    assert!(
        reasons
            .iter()
            .any(|(_, m)| m.contains("may still complete")),
        "the deletion said why it waited: {reasons:?}"
    );
    Ok(())
}

/// A client deleted at Hydra is reported and left alone; a rotation then registers it anew
/// with a new secret, never the one being rotated out (which stays refused).
#[tokio::test]
async fn a_gone_client_is_registered_anew_with_a_new_secret_on_rotation() -> Result<()> {
    let (env, hydra) = hydra_env("gone").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "https://web.example.com/callback"))
        .await?;
    let app = env.wait_ready("web").await?;
    let id = app.status.and_then(|s| s.client_id).context("client id")?;
    let before = env.secrets().get("web-oauth").await?;
    token(&before)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;
    reqwest::Client::new()
        .delete(format!("{}/admin/clients/{id}", hydra.admin_url()))
        .send()
        .await?
        .error_for_status()?;
    env.wait_reason("web", "ClientMissing").await?;
    assert!(
        hydra_client(hydra, &id).await?.is_none(),
        "nothing recreated without a request"
    );

    env.rotate("web", "after-deletion").await?;
    let after = env
        .wait_secret("web-oauth", |s| {
            data(s)["CLIENT_SECRET"] != data(&before)["CLIENT_SECRET"]
        })
        .await?;
    env.wait_app("web", "rotation answered", |a| {
        ready(a).is_some_and(|(s, _)| s == "True")
            && a.status
                .as_ref()
                .and_then(|s| s.last_rotation_token.as_deref())
                == Some("after-deletion")
    })
    .await?;
    assert_eq!(data(&after)["CLIENT_ID"], id, "the same operator-chosen id");
    token(&after)
        .await?
        .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;
    assert_eq!(
        token(&before).await?,
        Err(401),
        "the rotated-out secret is refused"
    );
    env.wait_event("web", "ClientRecreated").await?;
    Ok(())
}
