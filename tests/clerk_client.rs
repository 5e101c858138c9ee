//! The Clerk backend client against the Clerk emulator (which follows Clerk's OpenAPI spec).

use std::sync::Arc;
use std::time::Duration;

use clerk_emulator::{Emulator, EmulatorConfig, NewOAuthApplication, routes};
use oauth_operator::api::RequestBudget;
use oauth_operator::providers::clerk::ClerkClient;
use oauth_operator::providers::{
    Backend, DesiredClient, ProviderError, Registration, RequestBudgetLimiter,
};

/// Clerk chooses ids and secrets: a registration carries only the owner.
const REGISTRATION: Registration<'static> = Registration {
    owner_uid: "uid",
    client_id: None,
    client_secret: None,
    given: false,
};
use oauth_operator::telemetry::Metrics;
use secrecy::{ExposeSecret, SecretString};

fn client(base_url: &str, key: &str) -> ClerkClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let budget = RequestBudget {
        requests: 1000,
        period_seconds: 1,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    ClerkClient::new(
        http,
        base_url,
        SecretString::from(key.to_string()),
        Arc::new(RequestBudgetLimiter::new(
            &budget,
            "test".into(),
            metrics.clone(),
        )),
        metrics,
    )
    .unwrap()
}

fn desired(name: &str) -> DesiredClient {
    DesiredClient {
        name: name.into(),
        redirect_uris: vec!["https://app.example.com/cb".into()],
        post_logout_redirect_uris: vec![],
        scopes: vec!["profile".into(), "email".into(), "public_metadata".into()],
        public: false,
        grant_types: vec![],
        pkce_required: Some(true),
        consent_screen: Some(false),
        rotation_grace: None,
    }
}

#[tokio::test]
async fn lifecycle_create_get_update_rotate_delete() {
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    let clerk = client(&emu.base_url(), emu.secret_key());
    let issued = clerk
        .create(&desired("team/app"), &REGISTRATION)
        .await
        .unwrap();
    let secret = issued
        .client_secret
        .expect("confidential clients get a secret");
    let id = issued.client.id.clone();
    assert!(emu.secret_is_valid(&issued.client.client_id, secret.expose_secret()));
    assert_eq!(
        issued.client.scopes,
        vec!["profile", "email", "public_metadata"]
    );
    assert!(issued.client.pkce_required);
    assert!(!issued.client.consent_screen);
    assert!(issued.client.endpoints.token.is_some());
    assert!(issued.client.created_at.is_some());

    let got = clerk.get(&id).await.unwrap();
    assert_eq!(got, issued.client);

    let mut changed = desired("team/app renamed");
    changed
        .redirect_uris
        .push("http://127.0.0.1:8080/cb".into());
    let updated = clerk.update(&id, &changed, "uid").await.unwrap();
    assert_eq!(updated.name, "team/app renamed");
    assert_eq!(updated.redirect_uris.len(), 2);
    assert_eq!(emu.app(&id).unwrap().redirect_uris.len(), 2);

    let rotated = clerk.rotate_secret(&id).await.unwrap();
    let new_secret = rotated.client_secret.clone().unwrap();
    assert!(!emu.secret_is_valid(&rotated.client.client_id, secret.expose_secret()));
    assert!(emu.secret_is_valid(&rotated.client.client_id, new_secret.expose_secret()));
    assert!(
        !format!("{rotated:?}").contains(new_secret.expose_secret()),
        "Debug redacts the secret"
    );

    clerk.delete(&id).await.unwrap();
    assert!(emu.app(&id).is_none());
    clerk
        .delete(&id)
        .await
        .expect("deleting a deleted client is done, not an error");
    assert!(matches!(
        clerk.get(&id).await,
        Err(ProviderError::NotFound { .. })
    ));
}

#[tokio::test]
async fn public_clients_have_no_secret() {
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    let clerk = client(&emu.base_url(), emu.secret_key());
    let mut d = desired("spa");
    d.public = true;
    let issued = clerk.create(&d, &REGISTRATION).await.unwrap();
    assert!(issued.client.public);
    assert!(issued.client_secret.is_none());
}

/// One list call per 500 clients; name lookups keep only exact matches.
#[tokio::test]
async fn list_paginates_and_finds_by_exact_name() {
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    for i in 0..1203 {
        emu.create_app(NewOAuthApplication {
            name: format!("bulk-{i}"),
            redirect_uris: Some(vec!["https://x.example.com/cb".into()]),
            callback_url: None,
            scopes: None,
            consent_screen_enabled: None,
            pkce_required: None,
            public: None,
        });
    }
    let clerk = client(&emu.base_url(), emu.secret_key());
    let all = clerk.list(None).await.unwrap();
    assert_eq!(all.len(), 1203);
    let mut ids: Vec<_> = all.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1203, "no client twice across pages");
    assert_eq!(
        emu.request_count("GET", routes::OAUTH_APPLICATIONS),
        3,
        "500 per page"
    );
    assert!(
        emu.requests()
            .iter()
            .all(|r| r.query.as_deref().is_some_and(|q| q.contains("limit=500")))
    );

    let provider = clerk;
    // "bulk-1" also matches bulk-10..bulk-1202 by substring; only the exact name counts.
    let found = provider.find_by_owner_marker("bulk-1").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "bulk-1");
}

#[tokio::test]
async fn errors_map_to_their_classes_without_secrets() {
    let emu = Emulator::start(EmulatorConfig::default()).unwrap();
    let wrong = client(&emu.base_url(), "sk_test_wrong");
    let err = wrong
        .create(&desired("x"), &REGISTRATION)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(!err.to_string().contains("sk_test_wrong"));

    let clerk = client(&emu.base_url(), emu.secret_key());
    emu.fail_next(1, "POST", routes::OAUTH_APPLICATIONS, 503);
    assert!(matches!(
        clerk.create(&desired("x"), &REGISTRATION).await,
        Err(ProviderError::Unavailable { .. })
    ));
    emu.fail_next(1, "POST", routes::OAUTH_APPLICATIONS, 429);
    match clerk.create(&desired("x"), &REGISTRATION).await {
        Err(ProviderError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(1)))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    emu.fail_next(1, "POST", routes::OAUTH_APPLICATIONS, 422);
    let err = clerk
        .create(&desired("x"), &REGISTRATION)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Rejected { status: 422, .. }),
        "{err}"
    );

    // A name over Clerk's 256 characters: Clerk's own 422 with its error body as the message.
    let err = clerk
        .create(&desired(&"n".repeat(300)), &REGISTRATION)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 422"), "{err}");
    assert!(emu.apps().is_empty(), "nothing was created by failed calls");

    // Nothing listens here: a transient error.
    let port = testenv::free_port().unwrap();
    let down = client(&format!("http://127.0.0.1:{port}/v1"), "sk_test_x");
    assert!(matches!(
        down.list(None).await,
        Err(ProviderError::Unavailable { .. })
    ));
}
