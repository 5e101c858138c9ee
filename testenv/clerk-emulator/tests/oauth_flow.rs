//! The emulated Frontend API: real authorization-code flows with the credentials the Backend
//! API issued, driven over HTTP with reqwest (redirects not followed), as an OAuth client
//! would.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clerk_emulator::{
    DEFAULT_FRONTEND_API_URL, EmulatedUser, Emulator, EmulatorConfig, OAuthToken, OAuthUserInfo,
    OpenIdConfiguration, routes,
};
use common::Api;
use common::oauth::{
    CB, authorize, bearer_get, code_for, create_app, exchange, no_redirects, pkce, post_form,
    redirect,
};
use reqwest::Method;
use reqwest::header::{CACHE_CONTROL, LOCATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn confidential(scopes: &str) -> Value {
    json!({"name": "Flow", "redirect_uris": [CB, "https://app.example.test/cb"], "scopes": scopes})
}

#[tokio::test]
async fn authorization_code_flow_with_pkce_and_client_secret_basic() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("openid profile email")).await;

    // The Backend API's URLs point at this emulator.
    let fapi = format!("http://{}", emu.addr());
    assert_eq!(emu.frontend_api_url(), fapi);
    assert_eq!(app.authorize_url, format!("{fapi}/oauth/authorize"));
    assert_eq!(app.token_url, format!("{fapi}/oauth/token"));
    assert_eq!(app.userinfo_url, format!("{fapi}/oauth/userinfo"));

    // Authorize with PKCE: approved at once, redirected with code and state.
    let (verifier, challenge) = pkce();
    let state = "st4te-0123456789";
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", CB),
            ("scope", "openid profile email"),
            ("state", state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("nonce", "n-0S6_WzA2Mj"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 302);
    let (target, params) = redirect(&resp);
    assert_eq!(target, CB);
    assert_eq!(params["state"], state);
    assert!(!params.contains_key("error"), "{params:?}");
    let code = params["code"].clone();

    // A wrong secret is refused without spending the code.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", verifier.as_str()),
    ];
    let wrong = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, "not-the-secret")),
        &form,
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.body["error"], "invalid_client");
    assert!(wrong.headers.contains_key(WWW_AUTHENTICATE));

    // client_secret_basic: a token.
    let ok = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, &app.secret)),
        &form,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers[CACHE_CONTROL], "no-store");
    let token: OAuthToken = serde_json::from_value(ok.body.clone()).expect("OAuth.Token shape");
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_in, Some(86_400));
    assert_eq!(token.scope.as_deref(), Some("openid profile email"));
    assert!(token.access_token.starts_with("oat_") && token.access_token.len() >= 40);
    assert!(token.refresh_token.is_some());
    assert!(token.id_token.is_some(), "openid was granted");

    // The access token works on userinfo.
    let info = bearer_get(&http, &app.userinfo_url, Some(&token.access_token)).await;
    assert_eq!(info.status, 200, "{}", info.body);
    let info: OAuthUserInfo = serde_json::from_value(info.body).expect("OAuth.UserInfo shape");
    let user = EmulatedUser::default();
    assert_eq!(info.object, "oauth_user_info");
    assert_eq!(info.sub, user.id);
    assert_eq!(info.user_id, "user_emulated");
    assert_eq!(info.instance_id, emu.instance_id());
    assert_eq!(info.email.as_deref(), Some(user.email.as_str()));
    assert_eq!(info.email_verified, Some(true));
    assert_eq!(info.name.as_deref(), Some("Emulated User"));
    assert_eq!(info.preferred_username.as_deref(), Some("emulated_user"));
    assert_eq!(
        info.public_metadata, None,
        "public_metadata was not granted"
    );

    // Without a token, or with an unknown one: 401 with a Bearer challenge.
    let none = bearer_get(&http, &app.userinfo_url, None).await;
    assert_eq!(none.status, 401);
    assert!(
        none.headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(none.body["errors"][0]["code"], "authentication_invalid");
    let bogus = bearer_get(&http, &app.userinfo_url, Some("oat_bogus")).await;
    assert_eq!(bogus.status, 401);
    assert!(
        bogus.headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // The code cannot be used twice; the replay revokes what it issued (RFC 6749 4.1.2).
    let replay = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, &app.secret)),
        &form,
    )
    .await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(replay.body["error"], "invalid_grant");
    assert!(replay.body["error_description"].is_string());
    let revoked = bearer_get(&http, &app.userinfo_url, Some(&token.access_token)).await;
    assert_eq!(revoked.status, 401, "tokens of a replayed code are revoked");
    emu.shutdown().await;
}

#[tokio::test]
async fn rotated_secret_fails_and_the_new_one_works() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("profile email")).await;
    let (code, verifier) = code_for(&http, &app, "email").await;
    let first = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let refresh = s(&first["refresh_token"]).to_owned();

    let rotated = api
        .send(
            Method::POST,
            &format!("/oauth_applications/{}/rotate_secret", app.id),
            None,
        )
        .await;
    assert_eq!(rotated.status, 200);
    let new_secret = s(&rotated.body["client_secret"]).to_owned();
    assert_ne!(new_secret, app.secret);

    // The old secret no longer authenticates, neither for a code nor for a refresh.
    let (code, verifier) = code_for(&http, &app, "email").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", verifier.as_str()),
    ];
    let old = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, &app.secret)),
        &form,
    )
    .await;
    assert_eq!(old.status, 401, "{}", old.body);
    assert_eq!(old.body["error"], "invalid_client");
    let old_post = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &app.client_id),
            ("client_secret", &app.secret),
        ],
    )
    .await;
    assert_eq!(old_post.status, 401, "{}", old_post.body);
    assert_eq!(old_post.body["error"], "invalid_client");

    // The new secret works with client_secret_basic...
    let new = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, &new_secret)),
        &form,
    )
    .await;
    assert_eq!(new.status, 200, "{}", new.body);
    // ...and with client_secret_post.
    let (code, verifier) = code_for(&http, &app, "email").await;
    let post = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &verifier),
            ("client_id", &app.client_id),
            ("client_secret", &new_secret),
        ],
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.body);
    let access = s(&post.body["access_token"]);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(access))
            .await
            .status,
        200
    );

    // Both methods at once is not allowed.
    let (code, verifier) = code_for(&http, &app, "email").await;
    let both = post_form(
        &http,
        &app.token_url,
        Some((&app.client_id, &new_secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &verifier),
            ("client_secret", &new_secret),
        ],
    )
    .await;
    assert_eq!(both.status, 400);
    assert_eq!(both.body["error"], "invalid_request");
    emu.shutdown().await;
}

#[tokio::test]
async fn refresh_token_grant_rotates_and_narrows() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("profile email public_metadata")).await;
    let (code, verifier) = code_for(&http, &app, "profile email").await;
    let first = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let refresh = s(&first["refresh_token"]).to_owned();
    assert!(first.get("id_token").is_none(), "no openid, no id_token");
    let basic = Some((app.client_id.as_str(), app.secret.as_str()));

    let refreshed = post_form(
        &http,
        &app.token_url,
        basic,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(refreshed.body["scope"], "profile email");
    let access = s(&refreshed.body["access_token"]).to_owned();
    assert_ne!(access, s(&first["access_token"]));
    let next_refresh = s(&refreshed.body["refresh_token"]).to_owned();
    assert_ne!(next_refresh, refresh, "refresh tokens rotate");
    let info = bearer_get(&http, &app.userinfo_url, Some(&access)).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.body["given_name"], "Emulated");

    // The spent refresh token is refused.
    let again = post_form(
        &http,
        &app.token_url,
        basic,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(again.status, 400);
    assert_eq!(again.body["error"], "invalid_grant");

    // A narrower scope is granted; a wider one is not.
    let wider = post_form(
        &http,
        &app.token_url,
        basic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &next_refresh),
            ("scope", "email public_metadata"),
        ],
    )
    .await;
    assert_eq!(wider.status, 400);
    assert_eq!(wider.body["error"], "invalid_scope");
    let narrow = post_form(
        &http,
        &app.token_url,
        basic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &next_refresh),
            ("scope", "email"),
        ],
    )
    .await;
    assert_eq!(narrow.status, 200, "{}", narrow.body);
    assert_eq!(narrow.body["scope"], "email");
    let info = bearer_get(
        &http,
        &app.userinfo_url,
        Some(s(&narrow.body["access_token"])),
    )
    .await;
    assert_eq!(info.body["email"], "emulated.user@example.com");
    assert!(info.body.get("given_name").is_none(), "profile not granted");

    // Another client cannot use this client's refresh token.
    let other = create_app(&api, confidential("profile email")).await;
    let stolen = post_form(
        &http,
        &other.token_url,
        Some((&other.client_id, &other.secret)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", s(&narrow.body["refresh_token"])),
        ],
    )
    .await;
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.body["error"], "invalid_grant");
    emu.shutdown().await;
}

#[tokio::test]
async fn public_client_gets_a_token_with_pkce_and_no_secret() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(
        &api,
        json!({"name": "Native", "redirect_uris": [CB], "public": true}),
    )
    .await;
    assert_eq!(app.secret, "");

    // PKCE is mandatory for a public client: the error goes back through the redirect.
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("state", "no-pkce-state"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 302);
    let (target, params) = redirect(&resp);
    assert_eq!(target, CB);
    assert_eq!(params["error"], "invalid_request");
    assert_eq!(params["state"], "no-pkce-state");
    assert!(!params.contains_key("code"));

    // With PKCE (redirect_uri may be omitted: the app has exactly one; scope defaults to
    // "profile email").
    let (verifier, challenge) = pkce();
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (_, params) = redirect(&resp);
    let code = params["code"].clone();
    assert!(!params.contains_key("state"), "no state sent, none echoed");

    // A public client has no secret: sending one fails client authentication (which leaves
    // the code unspent).
    let with_secret = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &app.client_id),
            ("client_secret", "anything"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(with_secret.status, 401);
    assert_eq!(with_secret.body["error"], "invalid_client");

    let token = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &app.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(token.status, 200, "{}", token.body);
    assert_eq!(token.body["scope"], "profile email");
    let info = bearer_get(
        &http,
        &app.userinfo_url,
        Some(s(&token.body["access_token"])),
    )
    .await;
    assert_eq!(info.status, 200);

    // The public client refreshes with client_id alone.
    let refreshed = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", s(&token.body["refresh_token"])),
            ("client_id", &app.client_id),
        ],
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);

    // A wrong verifier: invalid_grant.
    let (_, challenge) = pkce();
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (_, params) = redirect(&resp);
    let (other_verifier, _) = pkce();
    let bad = post_form(
        &http,
        &app.token_url,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", &params["code"]),
            ("client_id", &app.client_id),
            ("code_verifier", &other_verifier),
        ],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"], "invalid_grant");
    emu.shutdown().await;
}

#[tokio::test]
async fn authorization_errors_about_client_or_redirect_uri_are_not_redirected() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("openid profile email")).await;
    let (_, challenge) = pkce();
    let base = [
        ("response_type", "code"),
        ("client_id", app.client_id.as_str()),
        ("state", "state-12345678"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut p: Vec<(&str, &str)> = base.to_vec();
        p.extend_from_slice(extra);
        p
    };

    // redirect_uri not registered (exact match only): 400, no redirect.
    for uri in [
        "http://127.0.0.1/cb/",
        "http://127.0.0.1:8080/cb",
        "https://evil.test/cb",
    ] {
        let resp = authorize(&http, &app, &with(&[("redirect_uri", uri)])).await;
        assert_eq!(resp.status(), 400, "{uri}");
        assert!(resp.headers().get(LOCATION).is_none(), "{uri}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
    // Several redirect URIs registered: redirect_uri is required.
    let resp = authorize(&http, &app, &base).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get(LOCATION).is_none());
    // Unknown or missing client_id: no redirect either.
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", "nope"),
            ("redirect_uri", CB),
        ],
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get(LOCATION).is_none());
    let resp = authorize(
        &http,
        &app,
        &[("response_type", "code"), ("redirect_uri", CB)],
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get(LOCATION).is_none());

    // Every other error is redirected, with state.
    let cases: [(&[(&str, &str)], &str); 7] = [
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("scope", "openid private_metadata")], "invalid_scope"),
        (&[("state", "short")], "invalid_request"),
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("prompt", "select_account")], "invalid_request"),
        (&[("response_mode", "fragment")], "invalid_request"),
        (&[("client_id", "again")], "invalid_request"),
    ];
    for (overrides, expected) in cases {
        let mut params: Vec<(&str, &str)> = base
            .iter()
            .filter(|(k, _)| *k == "client_id" || !overrides.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        params.push(("redirect_uri", CB));
        params.extend_from_slice(overrides);
        let resp = authorize(&http, &app, &params).await;
        if overrides[0].0 == "client_id" {
            // A repeated client_id cannot be trusted: not redirected.
            assert_eq!(resp.status(), 400);
            assert!(resp.headers().get(LOCATION).is_none());
            continue;
        }
        assert_eq!(resp.status(), 302, "{overrides:?}");
        let (target, q) = redirect(&resp);
        assert_eq!(target, CB);
        assert_eq!(q["error"], expected, "{overrides:?}: {q:?}");
        assert!(q.contains_key("error_description"));
        if overrides[0].0 != "state" {
            assert_eq!(q["state"], "state-12345678");
        }
        assert!(!q.contains_key("code"));
    }

    // Without PKCE, state is required (the spec).
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", CB),
        ],
    )
    .await;
    assert_eq!(redirect(&resp).1["error"], "invalid_request");

    // response_mode=form_post: 200 with an auto-submitting form to the redirect URI.
    let resp = authorize(
        &http,
        &app,
        &with(&[("redirect_uri", CB), ("response_mode", "form_post")]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("action=\"http://127.0.0.1/cb\""), "{page}");
    assert!(page.contains("name=\"code\" value=\"clk_code_"), "{page}");
    assert!(page.contains("name=\"state\" value=\"state-12345678\""));

    // POST /oauth/authorize: 303.
    let mut form = with(&[("redirect_uri", CB)]);
    form.push(("scope", "email"));
    let resp = http
        .post(&app.authorize_url)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert!(redirect(&resp).1.contains_key("code"));

    // A registered URI with a query keeps it.
    let edited = emu
        .edit_app(&app.id, |a| {
            a.redirect_uris = vec!["https://app.example.test/cb?tenant=1".into()];
        })
        .unwrap();
    assert_eq!(edited.redirect_uris.len(), 1);
    let resp = authorize(&http, &app, &base).await;
    let (target, q) = redirect(&resp);
    assert_eq!(target, "https://app.example.test/cb");
    assert_eq!(q["tenant"], "1");
    assert!(q.contains_key("code"));
    emu.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_errors() {
    let emu = Emulator::start(EmulatorConfig {
        authorization_code_ttl: Duration::ZERO,
        ..EmulatorConfig::default()
    })
    .unwrap();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("profile email")).await;
    let basic = Some((app.client_id.as_str(), app.secret.as_str()));

    let unsupported = post_form(
        &http,
        &app.token_url,
        basic,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(unsupported.status, 400);
    assert_eq!(unsupported.body["error"], "unsupported_grant_type");
    for grant in [
        "password",
        "urn:ietf:params:oauth:grant-type:device_code",
        "implicit",
    ] {
        let r = post_form(&http, &app.token_url, basic, &[("grant_type", grant)]).await;
        assert_eq!(r.body["error"], "unsupported_grant_type", "{grant}");
    }
    let missing = post_form(&http, &app.token_url, basic, &[("code", "x")]).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"], "invalid_request");
    let twice = post_form(
        &http,
        &app.token_url,
        basic,
        &[
            ("grant_type", "authorization_code"),
            ("grant_type", "authorization_code"),
        ],
    )
    .await;
    assert_eq!(twice.body["error"], "invalid_request");
    let json_body = http
        .post(&app.token_url)
        .basic_auth(&app.client_id, Some(&app.secret))
        .json(&json!({"grant_type": "authorization_code"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);
    let get = http.get(&app.token_url).send().await.unwrap();
    assert_eq!(get.status(), 405);

    // Unknown client, no credentials at all, a confidential client without its secret.
    for (basic, form) in [
        (
            Some(("nope", "nope")),
            vec![("grant_type", "authorization_code"), ("code", "c")],
        ),
        (
            None,
            vec![("grant_type", "authorization_code"), ("code", "c")],
        ),
        (
            None,
            vec![
                ("grant_type", "authorization_code"),
                ("code", "c"),
                ("client_id", app.client_id.as_str()),
            ],
        ),
    ] {
        let r = post_form(&http, &app.token_url, basic, &form).await;
        assert_eq!(r.status, 401, "{form:?}");
        assert_eq!(r.body["error"], "invalid_client");
    }

    // Codes live authorization_code_ttl (zero here): expired at once.
    let (code, verifier) = code_for(&http, &app, "email").await;
    let r = post_form(
        &http,
        &app.token_url,
        basic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_grant");
    assert!(s(&r.body["error_description"]).contains("expired"));
    emu.shutdown().await;

    // Code binding checks, with a normal code lifetime and zero-length access tokens.
    let emu = Emulator::start(EmulatorConfig {
        access_token_ttl: Duration::ZERO,
        ..EmulatorConfig::default()
    })
    .unwrap();
    let api = Api::new(&emu);
    let app = create_app(&api, confidential("profile email")).await;
    let other = create_app(&api, confidential("profile email")).await;
    let exchange_with = |code: String, overrides: Vec<(&'static str, String)>| {
        let http = http.clone();
        let app = app.clone();
        async move {
            let mut form: BTreeMap<&str, String> = BTreeMap::from([
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", CB.to_owned()),
            ]);
            for (k, v) in overrides {
                if v.is_empty() {
                    form.remove(k);
                } else {
                    form.insert(k, v);
                }
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(
                &http,
                &app.token_url,
                Some((&app.client_id, &app.secret)),
                &form,
            )
            .await
        }
    };
    let (code, verifier) = code_for(&http, &app, "email").await;
    let r = exchange_with(
        code,
        vec![
            ("code_verifier", verifier),
            ("redirect_uri", "https://app.example.test/cb".into()),
        ],
    )
    .await;
    assert_eq!(r.body["error"], "invalid_grant", "redirect_uri mismatch");
    let (code, _) = code_for(&http, &app, "email").await;
    let r = exchange_with(code, vec![]).await;
    assert_eq!(r.body["error"], "invalid_request", "code_verifier missing");
    let (code, _) = code_for(&http, &app, "email").await;
    let r = exchange_with(code, vec![("code_verifier", "short".into())]).await;
    assert_eq!(
        r.body["error"], "invalid_request",
        "malformed code_verifier"
    );
    let (code, verifier) = code_for(&http, &app, "email").await;
    let r = exchange_with(
        code,
        vec![("code_verifier", verifier), ("redirect_uri", String::new())],
    )
    .await;
    assert_eq!(
        r.body["error"], "invalid_request",
        "redirect_uri was in the request"
    );
    // Another client's code.
    let (code, verifier) = code_for(&http, &other, "email").await;
    let r = exchange_with(code.clone(), vec![("code_verifier", verifier.clone())]).await;
    assert_eq!(r.body["error"], "invalid_grant", "foreign code");
    // ...which its own client can still redeem, for an access token that expires at once.
    let token = exchange(&http, &other, &other.secret, &code, &verifier).await;
    assert_eq!(token["expires_in"], 0);
    let info = bearer_get(&http, &other.userinfo_url, Some(s(&token["access_token"]))).await;
    assert_eq!(info.status, 401, "expired access token");
    // A verifier without a challenge (no PKCE in the authorization request).
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", CB),
            ("state", "state-without-pkce"),
        ],
    )
    .await;
    let code = redirect(&resp).1["code"].clone();
    let (verifier, _) = pkce();
    let r = exchange_with(code, vec![("code_verifier", verifier)]).await;
    assert_eq!(r.body["error"], "invalid_grant", "PKCE downgrade");
    emu.shutdown().await;
}

#[tokio::test]
async fn discovery_document_matches_the_app_urls_and_id_tokens_verify() {
    let emu = Emulator::start(EmulatorConfig::default().with_user(EmulatedUser {
        id: "user_2abc".into(),
        email: "ada@example.com".into(),
        first_name: Some("Ada".into()),
        last_name: None,
        ..EmulatedUser::default()
    }))
    .unwrap();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("openid profile email")).await;

    let doc = bearer_get(&http, &app.discovery_url, None).await;
    assert_eq!(doc.status, 200);
    let doc: OpenIdConfiguration = serde_json::from_value(doc.body).expect("discovery shape");
    assert_eq!(doc, emu.openid_configuration());
    assert_eq!(doc.issuer, emu.frontend_api_url());
    assert_eq!(
        app.discovery_url,
        format!("{}/.well-known/openid-configuration", doc.issuer)
    );
    assert_eq!(app.discovery_url, emu.discovery_url());
    assert_eq!(doc.authorization_endpoint, app.authorize_url);
    assert_eq!(doc.token_endpoint, app.token_url);
    assert_eq!(doc.userinfo_endpoint, app.userinfo_url);
    assert_eq!(doc.introspection_endpoint, app.introspection_url);
    assert_eq!(doc.code_challenge_methods_supported, ["S256"]);
    assert!(
        doc.grant_types_supported
            .contains(&"refresh_token".to_owned())
    );
    // Every endpoint it lists is served (a GET on a POST-only endpoint is 405, not 404).
    for url in [
        &doc.authorization_endpoint,
        &doc.token_endpoint,
        &doc.userinfo_endpoint,
        &doc.introspection_endpoint,
        &doc.revocation_endpoint,
        &doc.jwks_uri,
    ] {
        let status = http.get(url).send().await.unwrap().status();
        assert_ne!(status, 404, "{url}");
    }

    // An id_token, verified with the published key.
    let jwks = bearer_get(&http, &doc.jwks_uri, None).await.body;
    let key = &jwks["keys"][0];
    assert_eq!(key["alg"], doc.id_token_signing_alg_values_supported[0]);
    let (verifier, challenge) = pkce();
    let resp = authorize(
        &http,
        &app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", CB),
            ("scope", "openid email"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("nonce", "nonce-42"),
        ],
    )
    .await;
    let code = redirect(&resp).1["code"].clone();
    let token = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let jwt = s(&token["id_token"]);
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).expect("base64url");
    let mut point = vec![4u8];
    point.extend(decode(s(&key["x"])));
    point.extend(decode(s(&key["y"])));
    let public =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
    public
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &decode(parts[2]),
        )
        .expect("id_token signature verifies with the JWKS key");
    let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
    assert_eq!(header["kid"], key["kid"]);
    let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
    assert_eq!(claims["iss"], doc.issuer);
    assert_eq!(claims["aud"], app.client_id);
    assert_eq!(claims["sub"], "user_2abc");
    assert_eq!(claims["nonce"], "nonce-42");
    assert_eq!(claims["email"], "ada@example.com");
    assert!(claims.get("given_name").is_none(), "profile not granted");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        86_400
    );
    let info = bearer_get(&http, &app.userinfo_url, Some(s(&token["access_token"]))).await;
    assert_eq!(info.body["sub"], "user_2abc");
    assert_eq!(info.body["email"], "ada@example.com");
    emu.shutdown().await;

    // The former default stays available: URLs under another Frontend API URL.
    let emu =
        Emulator::start(EmulatorConfig::default().with_frontend_api_url(DEFAULT_FRONTEND_API_URL))
            .unwrap();
    let api = Api::new(&emu);
    let app = create_app(&api, confidential("profile email")).await;
    assert_eq!(
        app.token_url,
        format!("{DEFAULT_FRONTEND_API_URL}/oauth/token")
    );
    let local = format!("http://{}/.well-known/openid-configuration", emu.addr());
    let doc = bearer_get(&http, &local, None).await.body;
    assert_eq!(doc["issuer"], DEFAULT_FRONTEND_API_URL);
    assert_eq!(doc["token_endpoint"], app.token_url);
    emu.shutdown().await;
}

#[tokio::test]
async fn introspection_and_revocation() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("profile email")).await;
    let (code, verifier) = code_for(&http, &app, "email").await;
    let token = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let (access, refresh) = (s(&token["access_token"]), s(&token["refresh_token"]));
    let revoke_url = emu.openid_configuration().revocation_endpoint;
    assert_eq!(emu.live_oauth_tokens(), 2);

    let info = post_form(&http, &app.introspection_url, None, &[("token", access)]).await;
    assert_eq!(info.status, 200);
    assert_eq!(info.body["active"], true);
    assert_eq!(info.body["client_id"], app.client_id.as_str());
    assert_eq!(info.body["scope"], "email");
    assert_eq!(info.body["sub"], "user_emulated");
    let r = post_form(
        &http,
        &app.introspection_url,
        None,
        &[("token", refresh), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(r.body["active"], true);
    let r = post_form(
        &http,
        &app.introspection_url,
        None,
        &[("token", "oat_nope")],
    )
    .await;
    assert_eq!(r.body, json!({"active": false}));
    let r = post_form(
        &http,
        &app.introspection_url,
        Some((&app.client_id, "wrong")),
        &[("token", access)],
    )
    .await;
    assert_eq!(r.status, 401);

    // Revoking the access token leaves the refresh token; revoking the refresh token ends
    // the grant. Unknown tokens are "revoked" too (RFC 7009).
    let basic = Some((app.client_id.as_str(), app.secret.as_str()));
    let r = post_form(&http, &revoke_url, basic, &[("token", access)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(access))
            .await
            .status,
        401
    );
    let refreshed = post_form(
        &http,
        &app.token_url,
        basic,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(refreshed.status, 200);
    let (access2, refresh2) = (
        s(&refreshed.body["access_token"]),
        s(&refreshed.body["refresh_token"]),
    );
    let r = post_form(&http, &revoke_url, basic, &[("token", refresh2)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(access2))
            .await
            .status,
        401
    );
    assert_eq!(emu.live_oauth_tokens(), 0);
    let r = post_form(&http, &revoke_url, basic, &[("token", "oat_unknown")]).await;
    assert_eq!(r.status, 200);
    let r = post_form(
        &http,
        &revoke_url,
        Some((&app.client_id, "x")),
        &[("token", "t")],
    )
    .await;
    assert_eq!(r.status, 401);

    // Deleting the application ends its tokens.
    let (code, verifier) = code_for(&http, &app, "email").await;
    let token = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let access = s(&token["access_token"]);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(access))
            .await
            .status,
        200
    );
    let deleted = api
        .send(
            Method::DELETE,
            &format!("/oauth_applications/{}", app.id),
            None,
        )
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(access))
            .await
            .status,
        401
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn counters_faults_and_a_log_without_credentials() {
    let emu = common::start();
    let api = Api::new(&emu);
    let http = no_redirects();
    let app = create_app(&api, confidential("profile email")).await;
    emu.reset_requests();

    let (code, verifier) = code_for(&http, &app, "email").await;
    let token = exchange(&http, &app, &app.secret, &code, &verifier).await;
    let access = s(&token["access_token"]).to_owned();
    let refresh = s(&token["refresh_token"]).to_owned();
    bearer_get(&http, &app.userinfo_url, Some(&access)).await;
    // A client that puts credentials in the query: the log keeps none of them.
    http.get(format!(
        "{}?access_token={access}&code={code}&client_secret={}",
        app.userinfo_url, app.secret
    ))
    .send()
    .await
    .unwrap();
    bearer_get(&http, &app.discovery_url, None).await;

    assert_eq!(emu.request_count("GET", routes::OAUTH_AUTHORIZE), 1);
    assert_eq!(emu.request_count("POST", routes::OAUTH_TOKEN), 1);
    assert_eq!(emu.request_count("GET", routes::OAUTH_USERINFO), 2);
    assert_eq!(emu.request_count("GET", routes::OPENID_CONFIGURATION), 1);
    assert_eq!(emu.total_requests(), 5);
    let log = emu.requests();
    assert_eq!(log[0].route.as_deref(), Some(routes::OAUTH_AUTHORIZE));
    assert_eq!(log[0].status, Some(302));
    assert_eq!(log[1].path, "/oauth/token");
    let dump = format!("{log:?}");
    for credential in [&access, &refresh, &code, &verifier, &app.secret] {
        assert!(
            !dump.contains(credential.as_str()),
            "the log holds a credential"
        );
    }
    assert!(
        log[3]
            .query
            .as_deref()
            .unwrap()
            .contains("access_token=REDACTED")
    );

    // Faults cover the Frontend API: a 503 on the token endpoint, then an OAuth-shaped 400.
    emu.fail_next(1, "POST", routes::OAUTH_TOKEN, 503);
    let basic = Some((app.client_id.as_str(), app.secret.as_str()));
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let r = post_form(&http, &app.token_url, basic, &form).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["errors"][0]["code"], "service_unavailable");
    emu.fail_next(1, "POST", routes::OAUTH_TOKEN, 400);
    let r = post_form(&http, &app.token_url, basic, &form).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_request");
    // The failed requests did not spend the refresh token.
    let r = post_form(&http, &app.token_url, basic, &form).await;
    assert_eq!(r.status, 200, "{}", r.body);
    emu.drop_next(1, "GET", routes::OAUTH_USERINFO);
    assert!(http.get(&app.userinfo_url).send().await.is_err());

    // The Backend API rate limit does not throttle the Frontend API.
    emu.set_rate_limit(Some(clerk_emulator::RateLimit {
        requests: 0,
        window: Duration::from_secs(60),
    }));
    assert_eq!(
        bearer_get(&http, &app.discovery_url, None).await.status,
        200
    );
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        429
    );
    emu.set_rate_limit(None);

    // reset() revokes every token.
    let access = s(&r.body["access_token"]).to_owned();
    emu.reset();
    assert_eq!(emu.live_oauth_tokens(), 0);
    assert_eq!(
        bearer_get(&http, &app.userinfo_url, Some(&access))
            .await
            .status,
        401
    );
    emu.shutdown().await;
}

#[test]
fn oauth_token_debug_redacts_credentials() {
    let t = OAuthToken {
        access_token: "oat_secret_value".into(),
        token_type: "Bearer".into(),
        expires_in: Some(1),
        refresh_token: Some("clk_refresh_secret".into()),
        scope: None,
        id_token: Some("eyJ.secret.sig".into()),
    };
    let dbg = format!("{t:?}");
    assert!(!dbg.contains("secret"), "{dbg}");
}
