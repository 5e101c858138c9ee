//! Helpers for driving the emulated Frontend API OAuth endpoints with a plain HTTP client,
//! as an OAuth client application would.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::distr::{Alphanumeric, SampleString};
use reqwest::Method;
use reqwest::header::LOCATION;
use serde_json::Value;

use super::{Api, Reply, client};

/// The loopback redirect URI of the test applications (nothing listens there: redirects are
/// read, not followed).
pub const CB: &str = "http://127.0.0.1/cb";

/// A client that does not follow redirects, so the authorization answer can be inspected.
pub fn no_redirects() -> reqwest::Client {
    let _ = client();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client")
}

/// A fresh PKCE pair: `(code_verifier, S256 code_challenge)`.
pub fn pkce() -> (String, String) {
    let verifier = Alphanumeric.sample_string(&mut rand::rng(), 64);
    let challenge = URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

/// An application created through the Backend API, with the URLs it was answered with.
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub client_id: String,
    pub secret: String,
    pub authorize_url: String,
    pub token_url: String,
    pub userinfo_url: String,
    pub discovery_url: String,
    pub introspection_url: String,
    pub raw: Value,
}

fn string(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
        .to_owned()
}

/// `POST /v1/oauth_applications` with `body`.
pub async fn create_app(api: &Api, body: Value) -> App {
    let reply = api
        .send(Method::POST, "/oauth_applications", Some(body))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.body;
    App {
        id: string(&v, "id"),
        client_id: string(&v, "client_id"),
        secret: string(&v, "client_secret"),
        authorize_url: string(&v, "authorize_url"),
        token_url: string(&v, "token_fetch_url"),
        userinfo_url: string(&v, "user_info_url"),
        discovery_url: string(&v, "discovery_url"),
        introspection_url: string(&v, "token_introspection_url"),
        raw: v,
    }
}

/// `GET authorize_url?params`.
pub async fn authorize(
    http: &reqwest::Client,
    app: &App,
    params: &[(&str, &str)],
) -> reqwest::Response {
    http.get(&app.authorize_url)
        .query(params)
        .send()
        .await
        .expect("authorize request sent")
}

/// The redirect target of an authorization answer: `(URL without query, query parameters)`.
pub fn redirect(resp: &reqwest::Response) -> (String, BTreeMap<String, String>) {
    let location = resp
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {} answer", resp.status()))
        .to_str()
        .expect("ASCII Location");
    let url = url::Url::parse(location).expect("absolute Location");
    let params = url.query_pairs().into_owned().collect();
    let mut base = url.clone();
    base.set_query(None);
    (base.to_string(), params)
}

/// Runs an approved PKCE authorization for `scope` and returns `(code, code_verifier)`.
pub async fn code_for(http: &reqwest::Client, app: &App, scope: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let resp = authorize(
        http,
        app,
        &[
            ("response_type", "code"),
            ("client_id", &app.client_id),
            ("redirect_uri", CB),
            ("scope", scope),
            ("state", "state-for-tests"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 302, "authorization approved");
    let (_, params) = redirect(&resp);
    let code = params.get("code").expect("code in the redirect").clone();
    (code, verifier)
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body read");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "non-JSON body for {status}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A form POST (token, introspection, revocation), with `client_secret_basic` credentials
/// when `basic` is given.
pub async fn post_form(
    http: &reqwest::Client,
    url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Reply {
    let mut req = http.post(url).form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    reply(req.send().await.expect("form request sent")).await
}

/// `GET url` with `Authorization: Bearer <token>` (no header for `None`).
pub async fn bearer_get(http: &reqwest::Client, url: &str, token: Option<&str>) -> Reply {
    let mut req = http.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    reply(req.send().await.expect("request sent")).await
}

/// Exchanges `code` with `client_secret_basic`; asserts success and returns the token body.
pub async fn exchange(
    http: &reqwest::Client,
    app: &App,
    secret: &str,
    code: &str,
    verifier: &str,
) -> Value {
    let r = post_form(
        http,
        &app.token_url,
        Some((&app.client_id, secret)),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CB),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}
