//! End-to-end: the operator binary against a real kube-apiserver + etcd and the Clerk emulator.

mod support;

use std::time::Duration;

use anyhow::Result;
use clerk_emulator::routes;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use support::{Env, data, ready};

fn app_yaml(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: clerk}}
  redirectUris: ["https://{name}.example.com/callback"]
  scopes: [profile, email]
{extra}
"#
    )
}

fn secret_value(s: &Secret) -> String {
    data(s).get("CLIENT_SECRET").cloned().unwrap_or_default()
}

/// The status of a condition of the application, if it has one.
fn condition(app: &oauth_operator::api::OAuthApplication, type_: &str) -> Option<String> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Create: register, POST the Secret (owned, annotated), Ready with ids and observedGeneration.
/// Spec change: one PATCH; the Secret's data and resourceVersion stay.
#[tokio::test]
async fn create_then_update_writes_secret_once() -> Result<()> {
    let env = Env::new("create").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "  pkceRequired: true"))
        .await?;
    let app = env.wait_ready("web").await?;
    let status = app.status.clone().unwrap();
    let client_id = status.client_id.clone().unwrap();
    assert!(
        status
            .provider_object_id
            .as_deref()
            .unwrap()
            .starts_with("oa_")
    );
    assert_eq!(status.secret_name.as_deref(), Some("web-oauth"));
    assert!(status.pending_registration.is_none());

    let secret = env.secrets().get("web-oauth").await?;
    let d = data(&secret);
    assert_eq!(d["CLIENT_ID"], client_id);
    for key in [
        "CLIENT_SECRET",
        "ISSUER_URL",
        "DISCOVERY_URL",
        "AUTHORIZE_URL",
        "TOKEN_URL",
        "USERINFO_URL",
    ] {
        assert!(
            d.get(key).is_some_and(|v| !v.is_empty()),
            "Secret lacks {key}"
        );
    }
    assert!(
        env.clerk.secret_is_valid(&client_id, &d["CLIENT_SECRET"]),
        "the stored secret works"
    );
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    assert_eq!(secret.owner_references()[0].uid, app.uid().unwrap());
    assert_eq!(
        secret.annotations()["oauth-operator.dev/owner-uid"],
        app.uid().unwrap()
    );
    assert_eq!(env.clerk.apps().len(), 1);
    let remote = &env.clerk.apps()[0];
    assert_eq!(remote.name, format!("{}/web", env.ns));
    assert!(remote.pkce_required);
    assert_eq!(
        remote.redirect_uris,
        vec!["https://web.example.com/callback"]
    );

    // Spec change: one PATCH, Secret untouched.
    let patches_before = env.clerk.request_count("PATCH", routes::OAUTH_APPLICATION);
    let patch = serde_json::json!({"spec": {
        "redirectUris": ["https://web.example.com/callback", "https://web.example.com/cb2"],
        "scopes": ["profile", "email", "public_metadata"],
        "displayName": "Web App",
        "consentScreen": false,
    }});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    env.wait_app("web", "generation 2 applied", |a| {
        a.status.as_ref().and_then(|s| s.synced_generation) == Some(2)
            && ready(a).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    let remote = env
        .clerk
        .app(&status.provider_object_id.clone().unwrap())
        .unwrap();
    assert_eq!(remote.redirect_uris.len(), 2);
    assert_eq!(remote.scopes, "profile email public_metadata");
    assert_eq!(remote.name, "Web App");
    assert!(!remote.consent_screen_enabled);
    assert_eq!(
        env.clerk.request_count("PATCH", routes::OAUTH_APPLICATION) - patches_before,
        1,
        "exactly one PATCH for one spec change"
    );
    let after = env.secrets().get("web-oauth").await?;
    assert_eq!(after.resource_version(), secret.resource_version());
    assert_eq!(after.data, secret.data);
    assert_eq!(env.clerk.apps().len(), 1, "never a second app");

    // Template metadata is reconciled onto the Secret; its data never changes for it.
    let template = serde_json::json!({"spec": {"secret": {"template": {
        "labels": {"team": "web"}, "annotations": {"reloader.stakater.com/match": "true"}
    }}}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&template))
        .await?;
    let labelled = env
        .wait_secret("web-oauth", |s| {
            s.labels().get("team").map(String::as_str) == Some("web")
                && s.annotations().contains_key("reloader.stakater.com/match")
        })
        .await?;
    assert_eq!(labelled.data, secret.data);
    Ok(())
}

/// A foreign Secret of the same name is never touched, and nothing is registered.
#[tokio::test]
async fn foreign_secret_is_a_conflict_and_nothing_is_registered() -> Result<()> {
    let env = Env::new("conflict").await?;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-oauth"}, "stringData": {"CLIENT_SECRET": "mine"}
    }))?;
    let foreign = env
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    let app = env.wait_reason("web", "SecretConflict").await?;
    // kstatus: this generation failed for good (Failed), nothing was ever applied.
    assert_eq!(condition(&app, "Stalled"), Some("True".to_string()));
    assert_eq!(condition(&app, "Reconciling"), None);
    let status = app.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.synced_generation, None);
    assert!(env.clerk.apps().is_empty());
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        0
    );
    let after = env.secrets().get("web-oauth").await?;
    assert_eq!(after.resource_version(), foreign.resource_version());
    assert!(
        env.wait_event("web", "SecretConflict")
            .await?
            .contains("never takes over")
    );
    Ok(())
}

/// Drift: edits at Clerk are corrected (Correct) or reported (Report), found by one list per
/// provider per resync rather than a GET per application.
#[tokio::test]
async fn drift_is_corrected_or_reported() -> Result<()> {
    let env = Env::new("drift").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("fix", "")).await?;
    env.apply_app(&app_yaml("watch", "  driftPolicy: Report"))
        .await?;
    env.apply_app(&app_yaml("quiet", "")).await?;
    env.wait_ready("quiet").await?;
    let fix = env
        .wait_ready("fix")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    let watch = env
        .wait_ready("watch")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    env.clerk.reset_requests();
    for id in [&fix, &watch] {
        env.clerk.edit_app(id, |a| {
            a.redirect_uris = vec!["https://attacker.example.com/cb".into()];
        });
    }
    env.wait_event("fix", "DriftCorrected").await?;
    assert_eq!(
        env.clerk.app(&fix).unwrap().redirect_uris,
        vec!["https://fix.example.com/callback"]
    );
    let watched = env
        .wait_app("watch", "Drifted condition", |a| {
            a.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Drifted" && c.status == "True")
            })
        })
        .await?;
    assert_eq!(watched.status.unwrap().drifted_fields, vec!["redirectUris"]);
    // Steady state: one list per provider per resync (2 s here), whatever the number of
    // applications (3): over 6 s at most 4 lists, where one per application would be 9.
    env.clerk.reset_requests();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let lists = env.clerk.request_count("GET", routes::OAUTH_APPLICATIONS);
    assert!(
        (1..=4).contains(&lists),
        "{lists} list calls in 6 s for 3 applications"
    );
    assert!(
        env.wait_event("watch", "Drifted")
            .await?
            .contains("redirectUris")
    );
    assert_eq!(
        env.clerk.app(&watch).unwrap().redirect_uris,
        vec!["https://attacker.example.com/cb"],
        "Report changes nothing"
    );
    assert_eq!(
        env.clerk.request_count("GET", routes::OAUTH_APPLICATION),
        0,
        "drift is found from the list, not by a GET per application"
    );
    assert!(env.clerk.request_count("GET", routes::OAUTH_APPLICATIONS) >= 1);
    Ok(())
}

/// A deleted Secret is recovered by rotation; rotation on request rotates once per token and
/// annotates the Secret; no secret value ever reaches the logs, events or status.
#[tokio::test]
async fn recovery_rotation_and_no_secret_in_logs() -> Result<()> {
    let env = Env::new("rotate").await?;
    let op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    let client_id = env
        .wait_ready("web")
        .await?
        .status
        .unwrap()
        .client_id
        .unwrap();
    let first = env.secrets().get("web-oauth").await?;
    let mut issued = vec![secret_value(&first)];

    // Recovery after deletion.
    env.secrets()
        .delete("web-oauth", &DeleteParams::default())
        .await?;
    let recovered = env
        .wait_secret("web-oauth", |s| secret_value(s) != issued[0])
        .await?;
    issued.push(secret_value(&recovered));
    assert!(
        !env.clerk.secret_is_valid(&client_id, &issued[0]),
        "the lost secret is revoked"
    );
    assert!(env.clerk.secret_is_valid(&client_id, &issued[1]));
    support::assert_token(&recovered, "https://web.example.com/callback").await?;
    assert_eq!(
        support::obtain_token(&first, "https://web.example.com/callback").await?,
        Err(401),
        "the lost secret no longer gets a token"
    );
    assert!(
        env.wait_event("web", "SecretRecovered")
            .await?
            .contains("web-oauth")
    );

    // Rotation on request, once per token (a second later, so timestamps can differ).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotations = env.clerk.request_count("POST", routes::ROTATE_SECRET);
    let rotated_before = env
        .apps()
        .get("web")
        .await?
        .status
        .unwrap()
        .secret_rotated_at;
    let annotation_before = env
        .secrets()
        .get("web-oauth")
        .await?
        .annotations()
        .get("oauth-operator.dev/secret-rotated-at")
        .cloned();
    let annotate = |token: &str| serde_json::json!({"metadata": {"annotations": {"oauth-operator.dev/rotate": token}}});
    env.apps()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&annotate("one")),
        )
        .await?;
    let app = env
        .wait_app("web", "rotation token recorded", |a| {
            a.status
                .as_ref()
                .and_then(|s| s.last_rotation_token.as_deref())
                == Some("one")
        })
        .await?;
    let rotated_at = app.status.unwrap().secret_rotated_at;
    assert!(
        rotated_at.is_some() && rotated_at != rotated_before,
        "secretRotatedAt moved"
    );
    let rotated = env.secrets().get("web-oauth").await?;
    issued.push(secret_value(&rotated));
    assert_ne!(issued[2], issued[1]);
    assert!(env.clerk.secret_is_valid(&client_id, &issued[2]));
    assert!(!env.clerk.secret_is_valid(&client_id, &issued[1]));
    support::assert_token(&rotated, "https://web.example.com/callback").await?;
    assert_eq!(
        support::obtain_token(&recovered, "https://web.example.com/callback").await?,
        Err(401),
        "the rotated-out secret no longer gets a token"
    );
    let annotation = rotated
        .annotations()
        .get("oauth-operator.dev/secret-rotated-at")
        .cloned();
    assert!(
        annotation.is_some() && annotation != annotation_before,
        "consumers see a new annotation value"
    );
    tokio::time::sleep(Duration::from_secs(5)).await; // a few resyncs
    assert_eq!(
        env.clerk.request_count("POST", routes::ROTATE_SECRET) - rotations,
        1,
        "one rotation per token"
    );
    assert_eq!(
        secret_value(&env.secrets().get("web-oauth").await?),
        issued[2]
    );

    // No secret value in logs, events or status.
    let logs = op.logs();
    assert!(logs.contains("\"level\""), "JSON logs were captured");
    let events = format!("{:?}", env.event_reasons("web").await?);
    let status = serde_json::to_string(&env.apps().get("web").await?.status)?;
    let metrics = op.get("/metrics").await?.1;
    for secret in &issued {
        assert!(!secret.is_empty());
        for (what, text) in [
            ("logs", &logs),
            ("events", &events),
            ("status", &status),
            ("metrics", &metrics),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a client secret leaked into {what}"
            );
        }
    }
    assert!(
        !logs.contains(env.clerk.secret_key()),
        "the admin key leaked into logs"
    );
    Ok(())
}

/// Crash between Clerk issuing a secret and the Secret existing: after a restart the client is
/// adopted (found by name) and its secret rotated: never a duplicate, never an unheld secret.
#[tokio::test]
async fn crash_after_create_is_recovered_without_duplicate() -> Result<()> {
    let env = Env::new("crash").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "abort-after-create")])?;
    env.apply_app(&app_yaml("web", "")).await?;
    op.wait_exit(Duration::from_secs(60)).await?;
    assert_eq!(env.clerk.apps().len(), 1, "the create call happened");
    assert!(
        env.secrets().get_opt("web-oauth").await?.is_none(),
        "the crash lost the secret"
    );
    let app = env.apps().get("web").await?;
    assert!(
        app.status.unwrap().pending_registration.is_some(),
        "pending registration was recorded first"
    );

    let _op = env.start_operator(&[])?;
    let app = env.wait_ready("web").await?;
    assert_eq!(env.clerk.apps().len(), 1, "no duplicate app");
    let status = app.status.unwrap();
    assert_eq!(
        status.provider_object_id.as_deref(),
        Some(env.clerk.apps()[0].id.as_str())
    );
    let secret = env.secrets().get("web-oauth").await?;
    assert!(
        env.clerk
            .secret_is_valid(status.client_id.as_deref().unwrap(), &secret_value(&secret))
    );
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 1);
    env.wait_event("web", "ClientAdopted").await?;
    assert_eq!(
        env.clerk.apps()[0].name,
        format!("{}/web", env.ns),
        "display name set after adoption"
    );
    Ok(())
}

/// Deletion honours deletionPolicy; a provider that is gone does not block forever.
#[tokio::test]
async fn deletion_policies_and_unreachable_provider() -> Result<()> {
    let env = Env::new("delete").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("gone", "")).await?;
    env.apply_app(&app_yaml("kept", "  deletionPolicy: Orphan"))
        .await?;
    let gone = env
        .wait_ready("gone")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    let kept = env
        .wait_ready("kept")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();

    env.apps().delete("gone", &DeleteParams::default()).await?;
    env.wait_gone("gone").await?;
    assert!(
        env.clerk.app(&gone).is_none(),
        "Delete removes the Clerk app"
    );
    assert!(env.secrets().get_opt("gone-oauth").await?.is_none());

    env.apps().delete("kept", &DeleteParams::default()).await?;
    env.wait_gone("kept").await?;
    assert!(
        env.clerk.app(&kept).is_some(),
        "Orphan leaves the Clerk app"
    );
    let secret = env.secrets().get("kept-oauth").await?;
    assert!(
        secret.owner_references().is_empty(),
        "the orphaned Secret is released"
    );

    // Provider unreachable: blocked with a clear condition, then removed on force-delete.
    env.apply_app(&app_yaml("stuck", "")).await?;
    env.wait_ready("stuck").await?;
    env.clerk
        .fail_next(1000, "DELETE", routes::OAUTH_APPLICATION, 503);
    env.apps().delete("stuck", &DeleteParams::default()).await?;
    let stuck_id = env
        .apps()
        .get("stuck")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    let app = env.wait_reason("stuck", "DeletionBlocked").await?;
    assert!(ready(&app).is_some_and(|(s, _)| s == "False"));
    let force = serde_json::json!({"metadata": {"annotations": {"oauth-operator.dev/force-delete": "true"}}});
    env.apps()
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&force))
        .await?;
    env.wait_gone("stuck").await?;
    env.clerk.clear_faults();
    assert!(
        env.wait_event("stuck", "ClientLeftAtProvider")
            .await?
            .contains("is kept")
    );
    assert!(
        env.clerk.app(&stuck_id).is_some(),
        "force-delete leaves the client"
    );
    let kept = env.secrets().get("stuck-oauth").await?;
    assert!(
        kept.owner_references().is_empty(),
        "its still-valid credentials are kept, released"
    );

    // Provider deleted while an application uses it: the provider waits (in-use finalizer),
    // so the application still deletes its client, then the provider goes.
    env.apply_app(&app_yaml("last", "")).await?;
    let last = env
        .wait_ready("last")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    let providers =
        kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    providers.delete("clerk", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        providers.get_opt("clerk").await?.is_some(),
        "kept while in use"
    );
    env.apps().delete("last", &DeleteParams::default()).await?;
    env.wait_gone("last").await?;
    assert!(env.clerk.app(&last).is_none(), "the client was deleted");
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while providers.get_opt("clerk").await?.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the provider stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A provider removed behind the operator's back (its finalizer taken off by hand):
    // deletion is blocked, then goes through after --deletion-timeout (15 s in tests).
    env.create_provider("clerk2", "clerk2-admin").await?;
    env.apply_app(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: orphaned}
spec:
  providerRef: {name: clerk2}
  redirectUris: ["https://orphaned.example.com/callback"]
"#,
    )
    .await?;
    let orphaned = env
        .wait_ready("orphaned")
        .await?
        .status
        .unwrap()
        .provider_object_id
        .unwrap();
    let unprotect = serde_json::json!({"metadata": {"finalizers": null}});
    providers.delete("clerk2", &DeleteParams::default()).await?;
    providers
        .patch("clerk2", &PatchParams::default(), &Patch::Merge(&unprotect))
        .await?;
    env.apps()
        .delete("orphaned", &DeleteParams::default())
        .await?;
    env.wait_reason("orphaned", "DeletionBlocked").await?;
    env.wait_gone("orphaned").await?;
    assert!(
        env.clerk.app(&orphaned).is_some(),
        "the provider was gone: the client is left behind"
    );
    Ok(())
}

/// Every failure is Ready=False with a specific reason, `Stalled` (permanent) or `Reconciling`
/// (transient) beside it, and observedGeneration at the generation that failed.
#[tokio::test]
async fn failures_have_specific_reasons() -> Result<()> {
    let env = Env::new("reasons").await?;
    let _op = env.start_operator(&[])?;

    env.apply_app(&app_yaml("noprov", "").replace("{name: clerk}", "{name: missing}"))
        .await?;
    env.wait_reason("noprov", "ProviderNotFound").await?;

    env.apply_app(&app_yaml("cluster", "").replace(
        "{name: clerk}",
        "{kind: ClusterOAuthProvider, name: nobody-allowed}",
    ))
    .await?;
    env.wait_reason("cluster", "ProviderNotFound").await?;
    let cluster: oauth_operator::api::ClusterOAuthProvider = serde_json::from_value(
        serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "ClusterOAuthProvider",
            "metadata": {"name": format!("{}-shared", env.ns)},
            "spec": {"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}}},
        }),
    )?;
    kube::Api::<oauth_operator::api::ClusterOAuthProvider>::all(env.client.clone())
        .create(&PostParams::default(), &cluster)
        .await?;
    env.apply_app(&app_yaml("notallowed", "").replace(
        "{name: clerk}",
        &format!("{{kind: ClusterOAuthProvider, name: {}-shared}}", env.ns),
    ))
    .await?;
    env.wait_reason("notallowed", "NamespaceNotAllowed").await?;

    env.create_provider_without_secret("nocreds").await?;
    env.apply_app(&app_yaml("nocreds", "").replace("{name: clerk}", "{name: nocreds}"))
        .await?;
    env.wait_reason("nocreds", "CredentialsMissing").await?;

    env.apply_app(&app_yaml(
        "unsupported",
        "  postLogoutRedirectUris: [\"https://x.example.com/bye\"]",
    ))
    .await?;
    env.wait_reason("unsupported", "InvalidSpec").await?;

    // A template label the apiserver refuses: found by a dry-run before anything is
    // registered (never a client whose Secret cannot be written).
    env.apply_app(&app_yaml(
        "badlabel",
        "  secret: {template: {labels: {team: \"not a valid label value!\"}}}",
    ))
    .await?;
    env.wait_reason("badlabel", "SecretRejected").await?;

    env.clerk
        .fail_next(1000, "POST", routes::OAUTH_APPLICATIONS, 422);
    env.apply_app(&app_yaml("rejected", "")).await?;
    let app = env.wait_reason("rejected", "ProviderRejected").await?;
    assert_eq!(condition(&app, "Stalled"), Some("True".to_string()));
    let status = app.status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.synced_generation, None);
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("HTTP 422"),
        "Clerk's error becomes the message: {message}"
    );
    assert!(
        env.clerk.apps().is_empty(),
        "nothing is registered for invalid, unsupported, refused or rejected applications"
    );
    assert!(
        env.clerk
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .all(|r| r.status == Some(422)),
        "the only create calls were the rejected ones"
    );
    env.clerk.clear_faults();

    env.clerk
        .fail_next(1, "POST", routes::OAUTH_APPLICATIONS, 503);
    env.apply_app(&app_yaml("flaky", "")).await?;
    env.wait_reason("flaky", "ProviderUnavailable").await?;
    env.wait_ready("flaky").await?; // transient: retried with backoff
    for (name, reason) in [
        ("noprov", "ProviderNotFound"),
        ("unsupported", "InvalidSpec"),
    ] {
        assert!(
            env.event_reasons(name)
                .await?
                .iter()
                .any(|(r, _)| r == reason),
            "{name} has a {reason} event"
        );
    }
    Ok(())
}

/// 429 from Clerk: reason RateLimited, retried no earlier than Retry-After, then Ready.
#[tokio::test]
async fn rate_limit_is_honoured() -> Result<()> {
    let env = Env::new("ratelimit").await?;
    env.clerk.inject_fault(clerk_emulator::Fault {
        method: Some("POST".into()),
        route: Some(routes::OAUTH_APPLICATIONS.into()),
        times: 1,
        action: clerk_emulator::FaultAction::Status {
            status: 429,
            code: None,
            message: None,
            retry_after: Some(3),
        },
    });
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    let app = env.wait_reason("web", "RateLimited").await?;
    // kstatus: still in progress (InProgress), not failed.
    assert_eq!(condition(&app, "Reconciling"), Some("True".to_string()));
    assert_eq!(condition(&app, "Stalled"), None);
    let ok = env.wait_ready("web").await?;
    assert_eq!(condition(&ok, "Reconciling"), None, "done: Current");
    assert_eq!(condition(&ok, "Stalled"), None);
    assert_eq!(
        ok.status.as_ref().and_then(|s| s.synced_generation),
        Some(1)
    );
    let posts: Vec<_> = env
        .clerk
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.route.as_deref() == Some(routes::OAUTH_APPLICATIONS))
        .collect();
    assert_eq!(posts.len(), 2, "one throttled create, one retry: {posts:?}");
    assert_eq!(posts[0].status, Some(429));
    let waited = (posts[1].timestamp - posts[0].timestamp).num_milliseconds();
    assert!(
        waited >= 3000,
        "the retry waited for Retry-After (3 s), not {waited} ms"
    );
    assert_eq!(env.clerk.apps().len(), 1);
    Ok(())
}

/// /metrics, /healthz and /readyz answer; metrics count provider requests by status.
#[tokio::test]
async fn metrics_and_health() -> Result<()> {
    let env = Env::new("metrics").await?;
    let op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    env.wait_ready("web").await?;
    assert_eq!(op.get("/healthz").await?.0, 200);
    assert_eq!(op.get("/readyz").await?.0, 200);
    let (code, body) = op.get("/metrics").await?;
    assert_eq!(code, 200);
    assert!(body.contains(r#"oauth_operator_provider_requests_total{backend="clerk",operation="create",status="200"} 1"#), "{body}");
    assert!(body.contains("oauth_operator_reconciles_total"));
    assert!(body.contains("oauth_operator_rate_limit_wait_seconds"));
    Ok(())
}

/// Providers report CredentialsFound / EndpointReachable / Ready; a wrong key is rejected.
#[tokio::test]
async fn provider_status_conditions() -> Result<()> {
    let env = Env::new("provstatus").await?;
    let wrong: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wrong-key", "annotations": support::credential_for(&env.clerk.base_url())},
        "stringData": {"secretKey": "sk_test_wrong"}
    }))?;
    env.secrets().create(&PostParams::default(), &wrong).await?;
    let bad: oauth_operator::api::OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "bad"},
        "spec": {"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "wrong-key"}}},
    }))?;
    let providers =
        kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    providers.create(&PostParams::default(), &bad).await?;
    let _op = env.start_operator(&[])?;
    let condition = |p: &oauth_operator::api::OAuthProvider, t: &str| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let good = providers.get("clerk").await?;
        let bad = providers.get("bad").await?;
        if condition(&good, "Ready").is_some_and(|c| c.0 == "True")
            && condition(&bad, "Ready").is_some()
        {
            assert_eq!(condition(&good, "CredentialsFound").unwrap().0, "True");
            assert_eq!(condition(&good, "EndpointReachable").unwrap().0, "True");
            assert_eq!(
                good.status.as_ref().unwrap().backend.as_deref(),
                Some("clerk")
            );
            assert_eq!(
                condition(&bad, "Ready").unwrap(),
                ("False".to_string(), "CredentialsRejected".to_string())
            );
            assert_eq!(condition(&bad, "CredentialsFound").unwrap().0, "True");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "provider conditions not set: {:?} / {:?}",
            good.status,
            bad.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A ClusterOAuthProvider serves the namespaces it admits, with its credential in the
/// operator's namespace.
#[tokio::test]
async fn cluster_provider_serves_allowed_namespace() -> Result<()> {
    let env = Env::new("cluster").await?;
    // The operator's namespace is the test namespace (see start_operator), where clerk-admin is.
    let cluster: oauth_operator::api::ClusterOAuthProvider =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "ClusterOAuthProvider",
            "metadata": {"name": format!("{}-shared", env.ns)},
            "spec": {
                "clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}},
                "allowedNamespaces": {"names": [env.ns]},
            },
        }))?;
    kube::Api::<oauth_operator::api::ClusterOAuthProvider>::all(env.client.clone())
        .create(&PostParams::default(), &cluster)
        .await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "").replace(
        "{name: clerk}",
        &format!("{{kind: ClusterOAuthProvider, name: {}-shared}}", env.ns),
    ))
    .await?;
    let app = env.wait_ready("web").await?;
    let secret = env.secrets().get("web-oauth").await?;
    assert!(env.clerk.secret_is_valid(
        app.status.unwrap().client_id.as_deref().unwrap(),
        &secret_value(&secret)
    ));
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    Ok(())
}

/// The provider's request budget keeps a burst of applications below the provider's own rate
/// limit: the emulator never answers 429, and the operator records waiting.
#[tokio::test]
async fn request_budget_stays_below_provider_limit() -> Result<()> {
    let env = Env::new("budget").await?;
    env.clerk.set_rate_limit(Some(clerk_emulator::RateLimit {
        requests: 6,
        window: Duration::from_secs(2),
    }));
    let budget =
        serde_json::json!({"spec": {"requestBudget": {"requests": 4, "periodSeconds": 2}}});
    kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .patch("clerk", &PatchParams::default(), &Patch::Merge(&budget))
        .await?;
    let op = env.start_operator(&[])?;
    let throttled = six_apps_ready(&env).await?;
    assert_eq!(
        throttled, 0,
        "the budget kept us under the provider's limit"
    );
    assert_eq!(env.clerk.apps().len(), 6);
    let waited = metric_sum(&op, "oauth_operator_rate_limit_wait_seconds_sum").await?;
    assert!(waited > 0.5, "requests waited for the budget: {waited}");
    Ok(())
}

/// A provider that sets no `requestBudget` gets the operator's `--default-request-budget`:
/// here 4 per 2 s under a Clerk limit of 6 per 2 s (the built-in 80 per 10 s would burst
/// straight into it).
#[tokio::test]
async fn default_request_budget_applies_to_providers_without_one() -> Result<()> {
    let env = Env::new("budget-default").await?;
    env.clerk.set_rate_limit(Some(clerk_emulator::RateLimit {
        requests: 6,
        window: Duration::from_secs(2),
    }));
    let provider =
        kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns)
            .get("clerk")
            .await?;
    assert!(provider.spec.settings.request_budget.is_none());
    let op = env.start_operator(&[("OAUTH_OPERATOR_DEFAULT_REQUEST_BUDGET", "4/2s")])?;
    let throttled = six_apps_ready(&env).await?;
    assert_eq!(throttled, 0, "the default budget kept us under the limit");
    let waited = metric_sum(&op, "oauth_operator_rate_limit_wait_seconds_sum").await?;
    assert!(waited > 0.5, "requests waited for the budget: {waited}");
    Ok(())
}

/// Steady state: resyncs (every 2 s here) that find every client in order write neither a
/// status nor a Secret: over three resyncs, which do reach Clerk, no application or Secret
/// changes its resourceVersion.
#[tokio::test]
async fn a_resync_that_finds_nothing_changed_writes_nothing() -> Result<()> {
    let env = Env::new("steady").await?;
    let _op = env.start_operator(&[])?;
    let names = ["s0", "s1", "s2"];
    for name in names {
        env.apply_app(&app_yaml(name, "")).await?;
    }
    for name in names {
        env.wait_ready(name).await?;
    }
    // Let the writes that follow a registration settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = || async {
        let mut v = Vec::new();
        for name in names {
            v.push(env.apps().get(name).await?.metadata.resource_version);
            v.push(
                env.secrets()
                    .get(&format!("{name}-oauth"))
                    .await?
                    .metadata
                    .resource_version,
            );
        }
        anyhow::Ok(v)
    };
    let before = versions().await?;
    let lists = env.clerk.request_count("GET", routes::OAUTH_APPLICATIONS);
    tokio::time::sleep(Duration::from_secs(7)).await;
    // At least two resync lists in 7 s at a 2 s interval (+20% jitter).
    assert!(
        env.clerk.request_count("GET", routes::OAUTH_APPLICATIONS) >= lists + 2,
        "the resyncs ran (they list the clients)"
    );
    assert_eq!(
        versions().await?,
        before,
        "a resync that changes nothing writes nothing"
    );
    Ok(())
}

/// Scheduled rotation at scale: 20 applications with `rotation.period: 60s` created together
/// rotate on schedule (never before `nextRotationAt`, and soon after), spread out by their
/// uid offsets, every new secret valid at Clerk, and the backend API never sees more than the
/// provider's request budget in any window (nor a 429 from Clerk's own limit).
#[tokio::test]
async fn scheduled_rotations_at_scale_are_spread_and_within_the_budget() -> Result<()> {
    const APPS: usize = 20;
    const BUDGET: usize = 16;
    const WINDOW: i64 = 5;
    let env = Env::new("sched-scale").await?;
    // Clerk's own limit above the budget: a 429 would mean the budget leaked.
    env.clerk.set_rate_limit(Some(clerk_emulator::RateLimit {
        requests: 20,
        window: Duration::from_secs(WINDOW as u64),
    }));
    let budget = serde_json::json!({"spec": {"requestBudget": {"requests": BUDGET, "periodSeconds": WINDOW}}});
    kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .patch("clerk", &PatchParams::default(), &Patch::Merge(&budget))
        .await?;
    let _op = env.start_operator(&[])?;
    let names: Vec<String> = (0..APPS).map(|i| format!("sched{i}")).collect();
    for name in &names {
        env.apply_app(&app_yaml(name, "  rotation: {period: 60s}"))
            .await?;
    }
    let mut due = Vec::new();
    for name in &names {
        let app = env.wait_ready(name).await?;
        let next = app
            .status
            .as_ref()
            .and_then(|s| s.next_rotation_at.as_ref())
            .map(|t| t.0.as_second())
            .ok_or_else(|| anyhow::anyhow!("{name}: nextRotationAt"))?;
        due.push(next);
    }
    // Every application rotates once, on its own schedule.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let mut rotated = vec![None; APPS];
    while rotated.iter().any(Option::is_none) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not every application rotated: {rotated:?}"
        );
        for (i, name) in names.iter().enumerate() {
            if rotated[i].is_none() {
                let app = env.apps().get(name).await?;
                rotated[i] = app
                    .status
                    .as_ref()
                    .and_then(|s| s.secret_rotated_at.as_ref())
                    .map(|t| t.0.as_second());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (i, at) in rotated.iter().enumerate() {
        let at = at.unwrap_or_default();
        assert!(
            (due[i]..=due[i] + 20).contains(&at),
            "{}: rotated at {at}, due at {}",
            names[i],
            due[i]
        );
    }
    // Spread: the uid offsets (up to a tenth of the period) keep them apart.
    let (first, last) = (
        due.iter().min().copied().unwrap_or_default(),
        due.iter().max().copied().unwrap_or_default(),
    );
    assert!(
        last - first >= 3,
        "due times spread over {}s only",
        last - first
    );
    // Every rotated secret works at Clerk.
    for name in &names {
        let secret = env
            .wait_secret(&format!("{name}-oauth"), |s| {
                s.annotations()
                    .contains_key("oauth-operator.dev/secret-rotated-at")
            })
            .await?;
        let d = data(&secret);
        assert!(
            env.clerk
                .secret_is_valid(&d["CLIENT_ID"], &d["CLIENT_SECRET"]),
            "{name}: the rotated secret is valid at Clerk"
        );
    }
    // Within the budget in every window, as Clerk saw the requests arrive.
    let mut arrivals: Vec<i64> = env
        .clerk
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/"))
        .map(|r| r.timestamp.timestamp_millis())
        .collect();
    arrivals.sort_unstable();
    let busiest = arrivals
        .iter()
        .enumerate()
        .map(|(i, t)| {
            arrivals[i..]
                .iter()
                .take_while(|u| **u < t + WINDOW * 1000)
                .count()
        })
        .max()
        .unwrap_or_default();
    assert!(
        busiest <= BUDGET,
        "{busiest} requests in one {WINDOW}s window, budget {BUDGET}"
    );
    let throttled = env
        .clerk
        .requests()
        .iter()
        .filter(|r| r.status == Some(429))
        .count();
    assert_eq!(throttled, 0, "no 429 from Clerk");
    Ok(())
}

/// One permanently failing provider leaves the applications of another untouched: eight
/// applications of a healthy Clerk converge as fast while eight of a Clerk that answers every
/// request with a 500 keep failing (and back off) as before it existed; the broken ones say
/// `ProviderUnavailable` and no healthy one waits for them.
#[tokio::test]
async fn a_failing_provider_does_not_slow_down_the_others() -> Result<()> {
    let env = Env::new("isolation").await?;
    let broken = clerk_emulator::Emulator::start(clerk_emulator::EmulatorConfig::default())?;
    broken.inject_fault(clerk_emulator::Fault {
        method: None,
        route: None,
        times: u32::MAX,
        action: clerk_emulator::FaultAction::Status {
            status: 500,
            code: None,
            message: None,
            retry_after: None,
        },
    });
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "broken-admin", "annotations": support::credential_for(&broken.base_url())},
        "stringData": {"secretKey": broken.secret_key()},
    }))?;
    env.secrets()
        .create(&PostParams::default(), &secret)
        .await?;
    let provider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "broken"},
        "spec": {"clerk": {"baseUrl": broken.base_url(), "secretKeyRef": {"name": "broken-admin"}}},
    }))?;
    kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &provider)
        .await?;
    let _op = env.start_operator(&[])?;
    let converge = |prefix: &'static str| {
        let env = &env;
        async move {
            let start = tokio::time::Instant::now();
            let names: Vec<String> = (0..8).map(|i| format!("{prefix}{i}")).collect();
            for name in &names {
                env.apply_app(&app_yaml(name, "")).await?;
            }
            for name in &names {
                env.wait_ready(name).await?;
            }
            anyhow::Ok(start.elapsed())
        }
    };
    // Warm up (first list, first token), then the baseline with the broken provider idle.
    converge("warm").await?;
    let alone = converge("alone").await?;
    for i in 0..8 {
        let name = format!("bad{i}");
        env.apply_app(&app_yaml(&name, "").replace("{name: clerk}", "{name: broken}"))
            .await?;
    }
    for i in 0..8 {
        env.wait_reason(&format!("bad{i}"), "ProviderUnavailable")
            .await?;
    }
    let beside = converge("beside").await?;
    assert!(
        beside <= alone * 2 + Duration::from_secs(3),
        "eight applications took {beside:?} beside a failing provider, {alone:?} alone"
    );
    for i in 0..8 {
        let app = env.apps().get(&format!("bad{i}")).await?;
        assert_ne!(
            ready(&app).map(|(s, _)| s).as_deref(),
            Some("True"),
            "nothing is registered at a provider that fails"
        );
    }
    assert!(broken.apps().is_empty(), "the broken Clerk holds no client");
    println!("converged alone in {alone:?}, beside a failing provider in {beside:?}");
    Ok(())
}

/// The sum of the operator's metric lines that start with `prefix` (every label set).
async fn metric_sum(op: &support::Operator, prefix: &str) -> Result<f64> {
    let metrics = op.get("/metrics").await?.1;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Applies six applications, waits until all are Ready, and counts the 429s Clerk answered.
async fn six_apps_ready(env: &Env) -> Result<usize> {
    let names: Vec<String> = (0..6).map(|i| format!("app{i}")).collect();
    for name in &names {
        env.apply_app(&app_yaml(name, "")).await?;
    }
    for name in &names {
        env.wait_ready(name).await?;
    }
    Ok(env
        .clerk
        .requests()
        .iter()
        .filter(|r| r.status == Some(429))
        .count())
}

/// Application reconciles so far, from the operator's metrics.
async fn app_reconciles(op: &support::Operator) -> Result<f64> {
    metric_sum(
        op,
        "oauth_operator_reconciles_total{kind=\"OAuthApplication\"",
    )
    .await
}

/// A new application converges in one pass: the events of the pass's own writes (its
/// finalizer, three status writes, its Secret) do not run it again. Before the Secret's
/// version as written was remembered, every new application at Clerk took a second full pass
/// (a quorum read of the application and a read of its Secret): twelve passes here. A pass
/// an event starts while one watch lags behind another (the application's status write seen
/// before its Secret's creation) may run once more, hence the margin.
#[tokio::test]
async fn a_new_application_converges_in_one_pass() -> Result<()> {
    const APPS: usize = 6;
    let env = Env::new("one-pass").await?;
    let op = env.start_operator(&[("OAUTH_OPERATOR_RESYNC_INTERVAL", "1h")])?;
    // The provider turning Ready wakes its applications once (see
    // `a_fixed_provider_credential_wakes_its_applications_at_once`): before that is counted.
    env.apply_app(&app_yaml("first", "")).await?;
    env.wait_ready("first").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = app_reconciles(&op).await?;
    let names: Vec<String> = (0..APPS).map(|i| format!("p{i}")).collect();
    for name in &names {
        env.apply_app(&app_yaml(name, "")).await?;
    }
    for name in &names {
        env.wait_ready(name).await?;
    }
    // Let the events of the last writes arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let passes = app_reconciles(&op).await? - before;
    assert!(
        passes >= APPS as f64 && passes <= (APPS + APPS / 2) as f64,
        "{passes} passes for {APPS} new applications"
    );
    Ok(())
}

/// A provider's own status writes (every 30 s while it fails, for instance) do not wake its
/// applications; a change of its spec does.
#[tokio::test]
async fn provider_status_noise_does_not_wake_its_applications() -> Result<()> {
    let env = Env::new("provider-noise").await?;
    let op = env.start_operator(&[("OAUTH_OPERATOR_RESYNC_INTERVAL", "1h")])?;
    for name in ["n0", "n1"] {
        env.apply_app(&app_yaml(name, "")).await?;
    }
    for name in ["n0", "n1"] {
        env.wait_ready(name).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = app_reconciles(&op).await?;
    let providers =
        kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    for i in 0..5 {
        // Another manager's condition beside the operator's (the list is a map keyed by type).
        let noise = serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "status": {"conditions": [{"type": "Noise", "status": "True", "reason": "Test",
                "message": format!("status write {i}"),
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        });
        providers
            .patch_status(
                "clerk",
                &PatchParams::apply("noise").force(),
                &Patch::Apply(&noise),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app_reconciles(&op).await?,
        before,
        "provider status writes woke its applications"
    );
    let budget =
        serde_json::json!({"spec": {"requestBudget": {"requests": 79, "periodSeconds": 10}}});
    providers
        .patch("clerk", &PatchParams::default(), &Patch::Merge(&budget))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app_reconciles(&op).await? < before + 2.0 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "a provider spec change did not reach its applications"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// A provider credential fixed after its applications failed on it: the provider turning
/// Ready wakes them past their backoff (a rejected credential is a permanent failure, whose
/// backoff here, with a 1 h resync, would be an hour).
#[tokio::test]
async fn a_fixed_provider_credential_wakes_its_applications_at_once() -> Result<()> {
    let env = Env::new("cred-fixed").await?;
    let good = env.clerk.secret_key().to_string();
    let set_key = |key: String| {
        let patch = serde_json::json!({"stringData": {"secretKey": key}});
        let secrets = env.secrets();
        async move {
            secrets
                .patch(
                    "clerk-admin",
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
        }
    };
    set_key("sk_test_wrong".into()).await?;
    let _op = env.start_operator(&[("OAUTH_OPERATOR_RESYNC_INTERVAL", "1h")])?;
    env.apply_app(&app_yaml("web", "")).await?;
    env.wait_reason("web", "CredentialsRejected").await?;
    set_key(good).await?;
    let fixed = tokio::time::Instant::now();
    // The provider rechecks its credential every 30 s.
    env.wait_ready("web").await?;
    assert!(
        fixed.elapsed() < Duration::from_secs(45),
        "Ready {:?} after the fix",
        fixed.elapsed()
    );
    Ok(())
}

/// A create whose response never arrives (timeout) but which the provider commits late: the
/// operator waits for it and adopts it instead of creating a second client.
#[tokio::test]
async fn late_committed_create_is_adopted_not_duplicated() -> Result<()> {
    let env = Env::new("late").await?;
    env.clerk.commit_then_delay_next(
        1,
        "POST",
        routes::OAUTH_APPLICATIONS,
        Duration::from_secs(3),
    );
    let _op = env.start_operator(&[("OAUTH_OPERATOR_PROVIDER_TIMEOUT", "2s")])?;
    env.apply_app(&app_yaml("web", "")).await?;
    let app = env.wait_ready("web").await?;
    assert_eq!(env.clerk.apps().len(), 1, "no duplicate client");
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        1,
        "created once"
    );
    env.wait_event("web", "ClientAdopted").await?;
    let secret = env.secrets().get("web-oauth").await?;
    assert!(env.clerk.secret_is_valid(
        app.status.unwrap().client_id.as_deref().unwrap(),
        &secret_value(&secret)
    ));
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    Ok(())
}

/// The client was deleted at the provider: reported (ClientMissing), the Secret left alone;
/// a new rotation token registers a new client and replaces the credentials.
#[tokio::test]
async fn missing_client_is_reported_then_recreated_on_request() -> Result<()> {
    let env = Env::new("missing").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    let before = env.wait_ready("web").await?.status.unwrap();
    let secret = env.secrets().get("web-oauth").await?;
    assert!(
        env.clerk
            .delete_app(before.provider_object_id.as_deref().unwrap())
    );
    let app = env.wait_reason("web", "ClientMissing").await?;
    assert!(ready(&app).is_some_and(|(s, _)| s == "False"));
    assert_eq!(
        env.secrets().get("web-oauth").await?.data,
        secret.data,
        "the Secret is left alone"
    );
    assert!(
        env.clerk.apps().is_empty(),
        "nothing recreated without a request"
    );

    let rotate = serde_json::json!({"metadata": {"annotations": {"oauth-operator.dev/rotate": "after-deletion"}}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&rotate))
        .await?;
    let after = env
        .wait_app("web", "recreated", |a| {
            ready(a).is_some_and(|(s, _)| s == "True")
                && a.status.as_ref().and_then(|s| s.client_id.as_deref())
                    != before.client_id.as_deref()
        })
        .await?
        .status
        .unwrap();
    assert_eq!(env.clerk.apps().len(), 1);
    let secret = env.secrets().get("web-oauth").await?;
    let d = data(&secret);
    assert_eq!(Some(&d["CLIENT_ID"]), after.client_id.as_ref());
    assert!(
        env.clerk
            .secret_is_valid(&d["CLIENT_ID"], &d["CLIENT_SECRET"])
    );
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    env.wait_event("web", "ClientRecreated").await?;
    Ok(())
}

/// A crash after the Secret was written (before the client got its display name): the restart
/// finishes the registration by id, without rotating the stored secret.
#[tokio::test]
async fn crash_after_secret_finishes_without_rotation() -> Result<()> {
    let env = Env::new("crash2").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "abort-after-secret")])?;
    env.apply_app(&app_yaml("web", "")).await?;
    op.wait_exit(Duration::from_secs(60)).await?;
    let stored = env.secrets().get("web-oauth").await?;
    assert!(
        env.clerk.apps()[0].name.contains("[oauth-operator "),
        "still the registration name"
    );

    let _op = env.start_operator(&[])?;
    env.wait_ready("web").await?;
    assert_eq!(env.clerk.apps().len(), 1);
    assert_eq!(env.clerk.apps()[0].name, format!("{}/web", env.ns));
    assert_eq!(
        env.clerk.request_count("POST", routes::ROTATE_SECRET),
        0,
        "no rotation needed"
    );
    let secret = env.secrets().get("web-oauth").await?;
    assert_eq!(secret.data, stored.data, "the stored secret is kept");
    support::assert_token(&secret, "https://web.example.com/callback").await?;
    Ok(())
}

/// The admin credential goes only where its Secret says (annotation
/// `oauth-operator.dev/credential-for`, set by whoever may edit the Secret). A namespaced
/// provider naming a Secret without it gets nothing sent (so creating a provider cannot send
/// a Secret one may not read to a server of one's own); a provider whose URL is changed to
/// another server (an attacker's loopback stand-in) sends nothing there; the provider and its
/// applications say why; once the Secret's owner adds the new URL, the credential goes there.
#[tokio::test]
async fn a_credential_goes_only_to_the_url_its_secret_is_bound_to() -> Result<()> {
    let env = Env::new("cred-bound").await?;
    let attacker = clerk_emulator::Emulator::start(clerk_emulator::EmulatorConfig::default())?;
    let bare: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "someone-elses"}, "stringData": {"secretKey": "sk_test_not_for_you_0123456789"}}))?;
    support::seen("sk_test_not_for_you_0123456789");
    env.secrets().create(&PostParams::default(), &bare).await?;
    let unbound = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "unbound"},
        "spec": {"clerk": {"baseUrl": attacker.base_url(), "secretKeyRef": {"name": "someone-elses"}}},
    }))?;
    kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &unbound)
        .await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web", "")).await?;
    env.apply_app(&app_yaml("probe", "").replace("{name: clerk}", "{name: unbound}"))
        .await?;
    env.wait_ready("web").await?;
    let refused = env.wait_reason("probe", "CredentialNotBound").await?;
    let message = support::ready_message(&refused);
    assert!(
        message.contains(&format!(
            "oauth-operator.dev/credential-for: {}",
            attacker.base_url()
        )),
        "the condition names the annotation to set: {message}"
    );
    let home = env.clerk.base_url();
    let providers =
        kube::Api::<oauth_operator::api::OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    let moved = serde_json::json!({"spec": {"clerk": {"baseUrl": attacker.base_url()}}});
    providers
        .patch("clerk", &PatchParams::default(), &Patch::Merge(&moved))
        .await?;
    env.apply_app(&app_yaml("next", "")).await?;
    let refused = env.wait_reason("next", "CredentialNotBound").await?;
    let message = support::ready_message(&refused);
    assert!(
        message.contains(&attacker.base_url()) && message.contains("credential-for"),
        "{message}"
    );
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        let p = providers.get("clerk").await?;
        let reason = p.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "CredentialsFound")
                .map(|c| (c.status.clone(), c.reason.clone()))
        });
        if reason == Some(("False".into(), "CredentialNotBound".into())) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "provider: {reason:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        attacker.requests().is_empty(),
        "the new URL received nothing ({} requests)",
        attacker.requests().len()
    );
    // The Secret's owner allows it: now the credential goes there (the stand-in refuses it).
    let allow = serde_json::json!({"metadata": {"annotations": {
        "oauth-operator.dev/credential-for": format!("{home} {}", attacker.base_url())}}});
    env.secrets()
        .patch(
            "clerk-admin",
            &PatchParams::default(),
            &Patch::Merge(&allow),
        )
        .await?;
    env.wait_reason("next", "CredentialsRejected").await?;
    assert!(!attacker.requests().is_empty());

    // A ClusterOAuthProvider's credential, in the operator's namespace (the administrators'),
    // is bound to its provider's URL on first use.
    let admin: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cluster-admin"}, "stringData": {"secretKey": env.clerk.secret_key()}}))?;
    env.secrets().create(&PostParams::default(), &admin).await?;
    let cluster_name = format!("cred-{}", env.ns);
    let cluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "ClusterOAuthProvider",
        "metadata": {"name": cluster_name},
        "spec": {"allowedNamespaces": {"names": [env.ns]},
                 "clerk": {"baseUrl": home, "secretKeyRef": {"name": "cluster-admin"}}},
    }))?;
    kube::Api::<oauth_operator::api::ClusterOAuthProvider>::all(env.client.clone())
        .create(&PostParams::default(), &cluster)
        .await?;
    env.apply_app(&app_yaml("viacluster", "").replace(
        "{name: clerk}",
        &format!("{{kind: ClusterOAuthProvider, name: {cluster_name}}}"),
    ))
    .await?;
    env.wait_ready("viacluster").await?;
    let bound = env.secrets().get("cluster-admin").await?;
    assert_eq!(
        bound.annotations().get("oauth-operator.dev/credential-for"),
        Some(&home.trim_end_matches('/').to_string()),
        "bound on first use"
    );
    Ok(())
}

/// Events: a repeat (same object, reason, action and note) is counted on its first event as a
/// series; a new note is a new event, so what `kubectl describe` shows is never stale.
#[tokio::test]
async fn repeated_events_fold_into_a_series_and_a_new_note_is_a_new_event() -> Result<()> {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::api::{Api, ListParams};
    use kube::runtime::events::{Event, EventType};
    use oauth_operator::controller::events::Recorder;

    let env = Env::new("events").await?;
    let recorder = Recorder::new(env.client.clone(), "oauth-operator", Some("test".into()));
    let regarding = ObjectReference {
        api_version: Some("oauth-operator.dev/v1alpha1".into()),
        kind: Some("OAuthApplication".into()),
        namespace: Some(env.ns.clone()),
        name: Some("repeats".into()),
        uid: Some("0b5e0b5e-0000-4000-8000-000000000001".into()),
        ..Default::default()
    };
    let warning = |note: &str| Event {
        type_: EventType::Warning,
        reason: "ProviderUnavailable".into(),
        action: "Reconcile".into(),
        note: Some(note.into()),
        secondary: None,
    };
    for _ in 0..3 {
        recorder
            .publish(&warning("connection refused"), &regarding)
            .await?;
    }
    recorder.publish(&warning("timed out"), &regarding).await?;
    let events: Vec<K8sEvent> = Api::<K8sEvent>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("repeats"))
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    let by_note = |note: &str| {
        events
            .iter()
            .find(|e| e.note.as_deref() == Some(note))
            .unwrap_or_else(|| panic!("no event with note {note:?}: {events:#?}"))
    };
    let repeated = by_note("connection refused");
    assert_eq!(repeated.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(repeated.type_.as_deref(), Some("Warning"));
    assert_eq!(
        repeated.reporting_controller.as_deref(),
        Some("oauth-operator")
    );
    assert_eq!(repeated.reporting_instance.as_deref(), Some("test"));
    assert!(by_note("timed out").series.is_none());
    Ok(())
}
