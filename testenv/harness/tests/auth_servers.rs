//! The real authorization servers start on loopback, and a client registered through each
//! server's own API obtains a token with the client_credentials grant; a wrong secret does not.
//!
//! `cargo test -p testenv --test auth_servers -- --nocapture` prints start-up time and memory.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testenv::hydra::Hydra;
use testenv::keycloak::Keycloak;
use testenv::oidc_provider::{API_RESOURCE, OidcProvider};
use testenv::server_support::{http_client, unique_suffix};

/// POSTs a client_credentials token request with client_secret_basic.
async fn client_credentials(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    secret: &str,
    scope: Option<&str>,
) -> (StatusCode, Value) {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let resp = http
        .post(token_endpoint)
        .basic_auth(client_id, Some(secret))
        .form(&form)
        .send()
        .await
        .expect("token request");
    let status = resp.status();
    let text = resp.text().await.expect("token response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("token response is not JSON ({e}): {status} {text}"));
    (status, body)
}

/// Asserts a successful bearer token response and returns the access token.
fn assert_token(status: StatusCode, body: &Value) -> String {
    assert_eq!(status, StatusCode::OK, "token response: {body}");
    assert!(
        body["token_type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer")),
        "token_type: {body}"
    );
    assert!(
        body["expires_in"].as_u64().is_some_and(|e| e > 0),
        "expires_in: {body}"
    );
    let token = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert!(token.len() > 16, "access_token: {body}");
    token
}

fn assert_invalid_client(status: StatusCode, body: &Value) {
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "wrong secret must be refused: {body}"
    );
    assert_eq!(body["error"], "invalid_client", "{body}");
}

/// Keycloak answers a failed client authentication with 401 `unauthorized_client`
/// ("Invalid client or Invalid client credentials"), not RFC 6749's `invalid_client`.
fn assert_keycloak_bad_client(status: StatusCode, body: &Value) {
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "wrong secret must be refused: {body}"
    );
    assert_eq!(body["error"], "unauthorized_client", "{body}");
}

/// The claims of a JWT, without verifying it (the tests check what the server put in).
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&base64url_decode(payload)).expect("JWT payload is JSON")
}

fn base64url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64url character");
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

async fn discovery(http: &reqwest::Client, url: &str) -> Value {
    let resp = http.get(url).send().await.expect("discovery request");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    resp.json().await.expect("discovery JSON")
}

#[tokio::test]
async fn oidc_provider_registers_a_client_that_gets_a_token() {
    let op = OidcProvider::shared().expect("oidc-provider starts");
    println!(
        "oidc-provider (node, pid {}): {}",
        op.pid(),
        op.startup_stats()
    );
    let http = http_client().unwrap();

    let meta = discovery(&http, &op.discovery_url()).await;
    assert_eq!(meta["issuer"], op.issuer().as_str());
    assert_eq!(
        meta["registration_endpoint"],
        op.registration_endpoint().as_str()
    );
    assert_eq!(meta["token_endpoint"], op.token_endpoint().as_str());

    // RFC 7591 without the initial access token, or with a wrong one: refused.
    let resp = http
        .post(op.registration_endpoint())
        .json(&json!({ "grant_types": ["client_credentials"], "response_types": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "registration needs a token"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let resp = http
        .post(op.registration_endpoint())
        .bearer_auth("not-the-initial-access-token")
        .json(&json!({ "grant_types": ["client_credentials"], "response_types": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "wrong initial access token"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{body}");

    // RFC 7591 with it: a confidential client_credentials client.
    let resp = http
        .post(op.registration_endpoint())
        .bearer_auth(op.initial_access_token())
        .json(&json!({
            "client_name": "testenv confidential",
            "grant_types": ["client_credentials"],
            "response_types": [],
            "redirect_uris": [],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "api:read",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let client: Value = resp.json().await.unwrap();
    let client_id = client["client_id"].as_str().expect("client_id");
    let secret = client["client_secret"].as_str().expect("client_secret");
    let rat = client["registration_access_token"]
        .as_str()
        .expect("registration_access_token");
    let rcu = client["registration_client_uri"]
        .as_str()
        .expect("registration_client_uri");
    assert_eq!(rcu, format!("{}/{client_id}", op.registration_endpoint()));

    // client_credentials, client_secret_basic: a JWT access token for the API resource.
    let (status, body) = client_credentials(
        &http,
        &op.token_endpoint(),
        client_id,
        secret,
        Some("api:read"),
    )
    .await;
    let token = assert_token(status, &body);
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], op.issuer().as_str());
    assert_eq!(claims["client_id"], client_id);
    assert_eq!(claims["aud"], API_RESOURCE);
    assert_eq!(claims["scope"], "api:read");
    // A scope outside the client's registered `scope` is refused.
    let (status, body) = client_credentials(
        &http,
        &op.token_endpoint(),
        client_id,
        secret,
        Some("api:write"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_scope", "{body}");

    // Wrong secret, unknown client: invalid_client.
    let (status, body) =
        client_credentials(&http, &op.token_endpoint(), client_id, "wrong", None).await;
    assert_invalid_client(status, &body);
    let (status, body) =
        client_credentials(&http, &op.token_endpoint(), "no-such-client", secret, None).await;
    assert_invalid_client(status, &body);

    // RFC 7592 read with the registration access token; a wrong token is refused.
    let resp = http.get(rcu).bearer_auth(rat).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let read: Value = resp.json().await.unwrap();
    assert_eq!(read["client_id"], client_id);
    assert_eq!(read["client_secret"], secret);
    assert_eq!(read["grant_types"], json!(["client_credentials"]));
    let resp = http
        .get(rcu)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // An authorization_code client registers too (public, PKCE, loopback redirect).
    let resp = http
        .post(op.registration_endpoint())
        .bearer_auth(op.initial_access_token())
        .json(&json!({
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": ["http://127.0.0.1:8080/callback"],
            "token_endpoint_auth_method": "none",
            "scope": "openid profile offline_access",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let public: Value = resp.json().await.unwrap();
    assert!(
        public.get("client_secret").is_none(),
        "public client has no secret: {public}"
    );
    assert_eq!(
        public["redirect_uris"],
        json!(["http://127.0.0.1:8080/callback"])
    );

    // Deleting through RFC 7592 makes the client unusable.
    let resp = http.delete(rcu).bearer_auth(rat).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) =
        client_credentials(&http, &op.token_endpoint(), client_id, secret, None).await;
    assert_invalid_client(status, &body);

    println!(
        "oidc-provider RSS now: {} MiB",
        op.rss_kib().unwrap() / 1024
    );
}

#[tokio::test]
async fn hydra_admin_api_client_gets_a_token() {
    let hydra = Hydra::shared().expect("Hydra starts");
    println!("hydra (pid {}): {}", hydra.pid(), hydra.startup_stats());
    let http = http_client().unwrap();

    let meta = discovery(
        &http,
        &format!("{}/.well-known/openid-configuration", hydra.public_url()),
    )
    .await;
    assert_eq!(
        meta["issuer"].as_str().map(|i| i.trim_end_matches('/')),
        Some(hydra.issuer().as_str())
    );
    assert_eq!(meta["token_endpoint"], hydra.token_endpoint().as_str());

    let client_id = format!("testenv-{}", unique_suffix());
    let secret = "a-long-enough-client-secret-for-hydra";
    let resp = http
        .post(format!("{}/admin/clients", hydra.admin_url()))
        .json(&json!({
            "client_id": client_id,
            "client_name": "testenv confidential",
            "client_secret": secret,
            "grant_types": ["client_credentials"],
            "response_types": ["token"],
            "scope": "api:read api:write",
            "token_endpoint_auth_method": "client_secret_basic",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["client_id"], client_id.as_str());

    // The admin API is not on the public port.
    let resp = http
        .get(format!("{}/admin/clients", hydra.public_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let (status, body) = client_credentials(
        &http,
        &hydra.token_endpoint(),
        &client_id,
        secret,
        Some("api:read"),
    )
    .await;
    let token = assert_token(status, &body);
    assert_eq!(body["scope"], "api:read");

    // The token is active for Hydra's introspection (admin API).
    let resp = http
        .post(format!("{}/admin/oauth2/introspect", hydra.admin_url()))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let introspection: Value = resp.json().await.unwrap();
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], client_id.as_str());

    let (status, body) =
        client_credentials(&http, &hydra.token_endpoint(), &client_id, "wrong", None).await;
    assert_invalid_client(status, &body);

    // Deleted through the admin API: no more tokens.
    let resp = http
        .delete(format!("{}/admin/clients/{client_id}", hydra.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) =
        client_credentials(&http, &hydra.token_endpoint(), &client_id, secret, None).await;
    assert_invalid_client(status, &body);

    println!("hydra RSS now: {} MiB", hydra.rss_kib().unwrap() / 1024);
}

#[tokio::test]
async fn hydra_dynamic_registration_client_gets_a_token() {
    let hydra = Hydra::shared().expect("Hydra starts");
    let http = http_client().unwrap();

    let resp = http
        .post(format!("{}/oauth2/register", hydra.public_url()))
        .json(&json!({
            "client_name": "testenv dcr",
            "grant_types": ["client_credentials"],
            "response_types": ["token"],
            "token_endpoint_auth_method": "client_secret_basic",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let client: Value = resp.json().await.unwrap();
    let client_id = client["client_id"].as_str().expect("client_id");
    let secret = client["client_secret"].as_str().expect("client_secret");
    assert!(client["registration_access_token"].is_string(), "{client}");

    let (status, body) =
        client_credentials(&http, &hydra.token_endpoint(), client_id, secret, None).await;
    assert_token(status, &body);
    let (status, body) =
        client_credentials(&http, &hydra.token_endpoint(), client_id, "wrong", None).await;
    assert_invalid_client(status, &body);
}

#[tokio::test]
async fn keycloak_admin_api_client_gets_a_token() {
    let kc = Keycloak::shared().expect("Keycloak starts");
    println!(
        "keycloak (java, pid {}): {}",
        kc.jvm_pid(),
        kc.startup_stats()
    );
    let http = http_client().unwrap();

    // The bare admin token works against the admin API.
    let token = kc.admin_token().await.unwrap();
    let resp = http
        .get(format!("{}/master", kc.admin_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http
        .get(format!("{}/master", kc.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "admin API needs a token"
    );

    let admin = kc.admin().await.unwrap();
    let realm = format!("testenv-{}", unique_suffix());
    admin.create_realm(&realm).await.unwrap();
    let meta = discovery(
        &http,
        &format!("{}/.well-known/openid-configuration", kc.issuer(&realm)),
    )
    .await;
    assert_eq!(meta["issuer"], kc.issuer(&realm).as_str());
    assert_eq!(meta["token_endpoint"], kc.token_endpoint(&realm).as_str());

    let client_id = "testenv-service";
    let (id, secret) = admin
        .create_service_account_client(&realm, client_id)
        .await
        .unwrap();
    let found = admin
        .find_client(&realm, client_id)
        .await
        .unwrap()
        .expect("client listed");
    assert_eq!(found["id"], id.as_str());
    assert_eq!(found["serviceAccountsEnabled"], true);
    assert_eq!(found["publicClient"], false);

    let (status, body) =
        client_credentials(&http, &kc.token_endpoint(&realm), client_id, &secret, None).await;
    let token = assert_token(status, &body);
    let claims = jwt_claims(&token);
    assert_eq!(claims["iss"], kc.issuer(&realm).as_str());
    assert_eq!(claims["azp"], client_id);

    let (status, body) =
        client_credentials(&http, &kc.token_endpoint(&realm), client_id, "wrong", None).await;
    assert_keycloak_bad_client(status, &body);

    // RFC 7591 with a Keycloak initial access token: that client gets a token too.
    let iat = admin
        .create_initial_access_token(&realm, 1, Duration::from_secs(600))
        .await
        .unwrap();
    let resp = http
        .post(kc.registration_endpoint(&realm))
        .bearer_auth(&iat)
        .json(&json!({
            "client_name": "testenv dcr",
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let dcr: Value = resp.json().await.unwrap();
    let dcr_id = dcr["client_id"].as_str().expect("client_id");
    let dcr_secret = dcr["client_secret"].as_str().expect("client_secret");
    let (status, body) =
        client_credentials(&http, &kc.token_endpoint(&realm), dcr_id, dcr_secret, None).await;
    assert_token(status, &body);

    admin.delete_realm(&realm).await.unwrap();
    println!("keycloak RSS now: {} MiB", kc.rss_kib().unwrap() / 1024);
}
