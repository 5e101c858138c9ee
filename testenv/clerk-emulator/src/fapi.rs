//! The emulated Frontend API OAuth endpoints (`fapi-2026-05-12.yml`, tag "OAuth2 Identity
//! Provider", and the `/.well-known` documents they are discovered by).
//!
//! There is no sign-in and no consent screen: every valid authorization request is approved
//! at once for the configured [`EmulatedUser`](crate::EmulatedUser).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{SHA256, digest};
use serde_json::{Map, Value, json};

use crate::api::{Shared, lock};
use crate::control::routes;
use crate::errors::{ApiError, error as clerk_error};
use crate::grants::{CodeError, CodeGrant, TokenGrant};
use crate::jwt::{ALG, b64};
use crate::model::{
    OAUTH_USER_INFO_OBJECT, OAuthApplication, OAuthError, OAuthToken, OAuthTokenInfo,
    OAuthUserInfo, OpenIdConfiguration,
};
use crate::store::Endpoints;

/// Largest accepted form body.
const BODY_LIMIT: usize = 64 * 1024;
/// The spec: scope "Defaults to `profile email` if not provided".
const DEFAULT_SCOPES: [&str; 2] = ["profile", "email"];
/// The spec: state "(minimum 8 characters)".
const STATE_MIN: usize = 8;
const PROMPTS: [&str; 3] = ["none", "login", "consent"];
/// The spec: "ID token: 1 day (86400 seconds)".
const ID_TOKEN_TTL_SECS: i64 = 86_400;
const FORM: &str = "application/x-www-form-urlencoded";

/// Scopes the discovery document lists: the spec's scope enum without `user:org:read`
/// (organizations are not emulated).
const SCOPES_SUPPORTED: [&str; 6] = [
    "openid",
    "profile",
    "email",
    "public_metadata",
    "private_metadata",
    "offline_access",
];
/// Claims the emulator puts in id_tokens and userinfo answers.
const CLAIMS_SUPPORTED: [&str; 13] = [
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "nonce",
    "email",
    "email_verified",
    "name",
    "given_name",
    "family_name",
    "preferred_username",
    "picture",
];

pub(crate) async fn handle(shared: &Shared, req: Request, template: &'static str) -> Response {
    let method = req.method().clone();
    let result = match (template, method) {
        (routes::OAUTH_AUTHORIZE, Method::GET | Method::POST) => {
            return authorize(shared, req).await;
        }
        (routes::OAUTH_TOKEN, Method::POST) => token(shared, req).await,
        (routes::OAUTH_USERINFO, Method::GET | Method::POST) => {
            return userinfo(shared, req.headers());
        }
        (routes::OAUTH_TOKEN_INFO, Method::POST) => token_info(shared, req).await,
        (routes::OAUTH_TOKEN_REVOKE, Method::POST) => revoke(shared, req).await,
        (routes::OPENID_CONFIGURATION, Method::GET) => return discovery(shared),
        (routes::JWKS, Method::GET) => {
            return Json(json!({ "keys": [shared.signer.jwk()] })).into_response();
        }
        _ => return ApiError::method_not_allowed().into_response(),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------------------------------
// Parameters and errors
// ---------------------------------------------------------------------------------------

/// Form or query parameters. Parameters without a value are treated as omitted (RFC 6749
/// section 3.1).
struct Params(BTreeMap<String, Vec<String>>);

impl Params {
    fn parse(raw: &[u8]) -> Self {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            if !v.is_empty() {
                map.entry(k.into_owned()).or_default().push(v.into_owned());
            }
        }
        Self(map)
    }

    /// The single value of `name`; an error when repeated ("Request and response parameters
    /// MUST NOT be included more than once", RFC 6749 section 3.1).
    fn one(&self, name: &str) -> Result<Option<&str>, String> {
        match self.0.get(name).map(Vec::as_slice) {
            None => Ok(None),
            Some([v]) => Ok(Some(v.as_str())),
            Some(_) => Err(format!("The {name} parameter is included more than once.")),
        }
    }

    fn repeated(&self) -> Option<String> {
        self.0
            .iter()
            .find(|(_, v)| v.len() > 1)
            .map(|(k, _)| format!("The {k} parameter is included more than once."))
    }
}

/// An RFC 6749 section 5.2 error answer (`{error, error_description}`, no-store).
#[derive(Debug)]
pub(crate) struct OAuthFail {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// 401 from client authentication: `WWW-Authenticate: Basic` (RFC 6749 section 5.2).
    basic_challenge: bool,
}

impl OAuthFail {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, description)
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad("invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }

    /// 401 `invalid_client`.
    fn client(description: impl Into<String>) -> Self {
        Self {
            basic_challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
        }
    }
}

impl From<String> for OAuthFail {
    fn from(description: String) -> Self {
        Self::invalid_request(description)
    }
}

impl IntoResponse for OAuthFail {
    fn into_response(self) -> Response {
        let mut response = oauth_error_response(self.status, self.error, &self.description);
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth\""),
            );
        }
        response
    }
}

/// `{error, error_description}` with `status` (also used by fault injection).
pub(crate) fn oauth_error_response(status: StatusCode, error: &str, description: &str) -> Response {
    let body = OAuthError {
        error: error.to_owned(),
        error_description: Some(description.to_owned()),
    };
    no_store((status, Json(body)).into_response())
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 section 5.1).
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

async fn read_form(req: Request) -> Result<Params, OAuthFail> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(FORM));
    if !is_form {
        return Err(OAuthFail::invalid_request(format!(
            "The request body must be {FORM}."
        )));
    }
    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|_| OAuthFail::invalid_request("The request body could not be read."))?;
    Ok(Params::parse(&body))
}

/// Splits a space-delimited scope parameter, dropping duplicates.
fn split_scopes(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scope.split(' ').filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    out
}

/// An S256 `code_challenge`: BASE64URL(SHA256(verifier)) is always 43 characters.
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 7636 section 4.1: 43 to 128 unreserved characters.
fn is_code_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn s256(verifier: &str) -> String {
    b64(digest(&SHA256, verifier.as_bytes()).as_ref())
}

/// Undoes the form-urlencoding RFC 6749 section 2.3.1 applies to Basic credentials.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Client authentication
// ---------------------------------------------------------------------------------------

/// `client_secret_basic` credentials, if the request has an `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthFail> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed =
        || OAuthFail::client("The Authorization header is not valid Basic credentials.");
    let (scheme, encoded) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

/// Authenticates the client: `client_secret_basic` or `client_secret_post` against the
/// current secret for confidential clients, `client_id` alone for public clients (`none`).
fn authenticate_client(
    shared: &Shared,
    basic: Option<(String, String)>,
    params: &Params,
) -> Result<OAuthApplication, OAuthFail> {
    let body_id = params.one("client_id")?;
    let body_secret = params.one("client_secret")?;
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if body_secret.is_some() {
                return Err(OAuthFail::invalid_request(
                    "Use one client authentication method (client_secret_basic or \
                     client_secret_post), not both.",
                ));
            }
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthFail::client(
                    "The client_id parameter differs from the Basic credentials.",
                ));
            }
            (id, Some(secret).filter(|s| !s.is_empty()))
        }
        None => (
            body_id
                .ok_or_else(|| OAuthFail::client("Client authentication failed: no client_id."))?
                .to_owned(),
            body_secret.map(str::to_owned),
        ),
    };
    let store = lock(&shared.store);
    let failed = || OAuthFail::client("Client authentication failed.");
    let app = store.by_client_id(&client_id).ok_or_else(failed)?;
    if app.public {
        if secret.is_some() {
            return Err(OAuthFail::client(
                "Client authentication failed: a public client has no client_secret.",
            ));
        }
    } else {
        let secret = secret.ok_or_else(|| {
            OAuthFail::client(
                "Client authentication failed: a confidential client needs its client_secret.",
            )
        })?;
        if !store.secret_is_valid(&client_id, &secret) {
            return Err(failed());
        }
    }
    Ok(app)
}

// ---------------------------------------------------------------------------------------
// GET|POST /oauth/authorize
// ---------------------------------------------------------------------------------------

/// Where and how an authorization answer goes once client and redirect URI are known.
struct AuthzReply {
    target: url::Url,
    state: Option<String>,
    form_post: bool,
    /// 303 after a POST (the spec lists 302 and 303).
    see_other: bool,
}

impl AuthzReply {
    fn error(self, error: &str, description: &str) -> Response {
        self.send(vec![
            ("error", error.to_owned()),
            ("error_description", description.to_owned()),
        ])
    }

    fn send(self, mut params: Vec<(&str, String)>) -> Response {
        if let Some(state) = &self.state {
            params.push(("state", state.clone()));
        }
        if self.form_post {
            let inputs: String = params
                .iter()
                .map(|(k, v)| {
                    format!(
                        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                        html_escape(k),
                        html_escape(v)
                    )
                })
                .collect();
            let page = format!(
                "<!DOCTYPE html><html><head><title>Submit</title></head>\
                 <body onload=\"document.forms[0].submit()\">\
                 <form method=\"post\" action=\"{}\">{inputs}\
                 <noscript><button type=\"submit\">Continue</button></noscript></form></body></html>",
                html_escape(self.target.as_str())
            );
            return no_store(
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    page,
                )
                    .into_response(),
            );
        }
        let mut url = self.target;
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in &params {
                query.append_pair(k, v);
            }
        }
        let status = if self.see_other {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::FOUND
        };
        let mut response = no_store(status.into_response());
        if let Ok(location) = HeaderValue::from_str(url.as_str()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An authorization error that is redirected: `(error, error_description)`.
struct AuthzError(&'static str, String);

impl From<String> for AuthzError {
    fn from(description: String) -> Self {
        Self("invalid_request", description)
    }
}

fn invalid(description: &str) -> AuthzError {
    AuthzError("invalid_request", description.to_owned())
}

struct Approved {
    scopes: Vec<String>,
    code_challenge: Option<String>,
    nonce: Option<String>,
}

/// Everything but the client and the redirect URI.
fn validate_authorization(params: &Params, app: &OAuthApplication) -> Result<Approved, AuthzError> {
    if let Some(repeated) = params.repeated() {
        return Err(repeated.into());
    }
    match params.one("response_type")? {
        None => return Err(invalid("The response_type parameter is missing.")),
        Some("code") => {}
        Some(_) => {
            return Err(AuthzError(
                "unsupported_response_type",
                "Only response_type=code is supported.".to_owned(),
            ));
        }
    }
    let state = params.one("state")?;
    if state.is_some_and(|s| s.chars().count() < STATE_MIN) {
        return Err(invalid(
            "The state parameter must be at least 8 characters long.",
        ));
    }
    let scopes = match params.one("scope")? {
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(scope) => split_scopes(scope),
    };
    if scopes.is_empty() {
        return Err(AuthzError(
            "invalid_scope",
            "No scope was requested.".to_owned(),
        ));
    }
    let allowed: Vec<&str> = app.scopes.split_whitespace().collect();
    if let Some(extra) = scopes.iter().find(|s| !allowed.contains(&s.as_str())) {
        return Err(AuthzError(
            "invalid_scope",
            format!("The scope {extra} is not among the OAuth application's scopes."),
        ));
    }
    let challenge = params.one("code_challenge")?;
    match (challenge, params.one("code_challenge_method")?) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(invalid(
                "code_challenge_method was sent without code_challenge.",
            ));
        }
        (Some(_), None) => {
            return Err(invalid(
                "code_challenge_method is required and must be S256 (plain is not supported).",
            ));
        }
        (Some(_), Some(method)) if method != "S256" => {
            return Err(invalid("code_challenge_method must be S256."));
        }
        (Some(c), Some(_)) if !is_s256_challenge(c) => {
            return Err(invalid(
                "code_challenge must be the base64url SHA-256 of the code_verifier (43 characters).",
            ));
        }
        (Some(_), Some(_)) => {}
    }
    if challenge.is_none() && (app.public || app.pkce_required) {
        return Err(invalid(
            "This OAuth application requires PKCE: send code_challenge and \
             code_challenge_method=S256.",
        ));
    }
    if challenge.is_none() && state.is_none() {
        return Err(invalid(
            "The state parameter is required unless PKCE (code_challenge) is used.",
        ));
    }
    if let Some(prompt) = params.one("prompt")? {
        let prompts = split_scopes(prompt);
        if let Some(bad) = prompts.iter().find(|p| !PROMPTS.contains(&p.as_str())) {
            return Err(invalid(&format!("Unsupported prompt value {bad}.")));
        }
        if prompts.len() > 1 && prompts.iter().any(|p| p == "none") {
            return Err(invalid("prompt=none cannot be combined with other values."));
        }
    }
    Ok(Approved {
        scopes,
        code_challenge: challenge.map(str::to_owned),
        nonce: params.one("nonce")?.map(str::to_owned),
    })
}

/// 400/401 about the client or the redirect URI: answered here, never redirected (RFC 6749
/// section 4.1.2.1).
fn authorize_page(status: StatusCode, error: &'static str, description: &str) -> Response {
    OAuthFail::new(status, error, description).into_response()
}

async fn authorize(shared: &Shared, req: Request) -> Response {
    let post = req.method() == Method::POST;
    let params = if post {
        match read_form(req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        }
    } else {
        Params::parse(req.uri().query().unwrap_or_default().as_bytes())
    };
    let bad =
        |description: &str| authorize_page(StatusCode::BAD_REQUEST, "invalid_request", description);
    let client_id = match params.one("client_id") {
        Ok(Some(c)) => c,
        Ok(None) => return bad("The client_id parameter is missing."),
        Err(e) => return bad(&e),
    };
    let Some(app) = lock(&shared.store).by_client_id(client_id) else {
        // The spec: 401 "for example the provided client is invalid".
        return authorize_page(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "No OAuth application has this client_id.",
        );
    };
    let given = match params.one("redirect_uri") {
        Ok(r) => r,
        Err(e) => return bad(&e),
    };
    let redirect_uri = match (given, app.redirect_uris.as_slice()) {
        (Some(r), registered) if registered.iter().any(|u| u == r) => r.to_owned(),
        (Some(_), _) => {
            return bad("The redirect_uri is not registered for this OAuth application.");
        }
        (None, [only]) => only.clone(),
        (None, []) => return bad("The OAuth application has no redirect URI."),
        (None, _) => {
            return bad(
                "The redirect_uri parameter is required: the OAuth application has several.",
            );
        }
    };
    let Ok(target) = url::Url::parse(&redirect_uri) else {
        return bad("The registered redirect_uri is not an absolute URI.");
    };
    let mut reply = AuthzReply {
        target,
        state: None,
        form_post: false,
        see_other: post,
    };
    // From here on errors go back to the client through the redirect URI.
    match params.one("state") {
        Ok(state) => reply.state = state.map(str::to_owned),
        Err(e) => return reply.error("invalid_request", &e),
    }
    match params.one("response_mode") {
        Ok(None | Some("query")) => {}
        Ok(Some("form_post")) => reply.form_post = true,
        Ok(Some(_)) => {
            return reply.error(
                "invalid_request",
                "response_mode must be query or form_post.",
            );
        }
        Err(e) => return reply.error("invalid_request", &e),
    }
    let approved = match validate_authorization(&params, &app) {
        Ok(a) => a,
        Err(AuthzError(error, description)) => return reply.error(error, &description),
    };
    let code = lock(&shared.grants).issue_code(
        CodeGrant {
            client_id: app.client_id,
            user_id: shared.user.id.clone(),
            redirect_uri,
            redirect_uri_given: given.is_some(),
            scopes: approved.scopes,
            code_challenge: approved.code_challenge,
            nonce: approved.nonce,
        },
        shared.code_ttl,
        Instant::now(),
    );
    reply.send(vec![("code", code)])
}

// ---------------------------------------------------------------------------------------
// POST /oauth/token
// ---------------------------------------------------------------------------------------

async fn token(shared: &Shared, req: Request) -> Result<Response, OAuthFail> {
    let basic = basic_credentials(req.headers())?;
    let params = read_form(req).await?;
    if let Some(repeated) = params.repeated() {
        return Err(OAuthFail::invalid_request(repeated));
    }
    let grant_type = params
        .one("grant_type")?
        .ok_or_else(|| OAuthFail::invalid_request("The grant_type parameter is missing."))?;
    if !matches!(grant_type, "authorization_code" | "refresh_token") {
        return Err(OAuthFail::bad(
            "unsupported_grant_type",
            "Supported grant types: authorization_code, refresh_token.",
        ));
    }
    let app = authenticate_client(shared, basic, &params)?;
    let now = Instant::now();
    let body = if grant_type == "authorization_code" {
        code_grant(shared, &app, &params, now)?
    } else {
        refresh_grant(shared, &app, &params, now)?
    };
    Ok(no_store((StatusCode::OK, Json(body)).into_response()))
}

fn code_grant(
    shared: &Shared,
    app: &OAuthApplication,
    params: &Params,
    now: Instant,
) -> Result<OAuthToken, OAuthFail> {
    let code = params
        .one("code")?
        .ok_or_else(|| OAuthFail::invalid_request("The code parameter is missing."))?;
    let redeemed = lock(&shared.grants).redeem_code(code, &app.client_id, now);
    let (grant, established) = redeemed.map_err(|e| {
        OAuthFail::invalid_grant(match e {
            CodeError::Unknown | CodeError::OtherClient => "The authorization code is invalid.",
            CodeError::Replayed => {
                "The authorization code was already used; the tokens issued with it are revoked."
            }
            CodeError::Expired => "The authorization code has expired.",
        })
    })?;
    match params.one("redirect_uri")? {
        Some(r) if r != established.redirect_uri => {
            return Err(OAuthFail::invalid_grant(
                "The redirect_uri differs from the authorization request's.",
            ));
        }
        None if established.redirect_uri_given => {
            return Err(OAuthFail::invalid_request(
                "The redirect_uri parameter is missing (the authorization request had one).",
            ));
        }
        _ => {}
    }
    match (&established.code_challenge, params.one("code_verifier")?) {
        (Some(_), None) => {
            return Err(OAuthFail::invalid_request(
                "The code_verifier parameter is missing (the authorization request used PKCE).",
            ));
        }
        (Some(_), Some(v)) if !is_code_verifier(v) => {
            return Err(OAuthFail::invalid_request(
                "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~].",
            ));
        }
        (Some(challenge), Some(v)) if s256(v) != *challenge => {
            return Err(OAuthFail::invalid_grant(
                "The code_verifier does not match the code_challenge.",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthFail::invalid_grant(
                "A code_verifier was sent but the authorization request had no code_challenge.",
            ));
        }
        _ => {}
    }
    issue(
        shared,
        grant,
        app,
        &established.user_id,
        &established.scopes,
        &established.scopes,
        established.nonce.as_deref(),
        now,
    )
}

fn refresh_grant(
    shared: &Shared,
    app: &OAuthApplication,
    params: &Params,
    now: Instant,
) -> Result<OAuthToken, OAuthFail> {
    let presented = params
        .one("refresh_token")?
        .ok_or_else(|| OAuthFail::invalid_request("The refresh_token parameter is missing."))?;
    let requested = params.one("scope")?;
    let current = {
        let mut grants = lock(&shared.grants);
        let current = grants
            .refresh(presented)
            .cloned()
            .ok_or_else(|| OAuthFail::invalid_grant("The refresh token is invalid or revoked."))?;
        if current.client_id != app.client_id {
            return Err(OAuthFail::invalid_grant(
                "The refresh token was issued to another client.",
            ));
        }
        if let Some(requested) = requested {
            let scopes = split_scopes(requested);
            if scopes.is_empty() || scopes.iter().any(|s| !current.scopes.contains(s)) {
                return Err(OAuthFail::bad(
                    "invalid_scope",
                    "The requested scope exceeds the scope originally granted.",
                ));
            }
        }
        // Refresh tokens rotate: the presented one is spent.
        grants.take_refresh(presented);
        current
    };
    let scopes = requested.map_or_else(|| current.scopes.clone(), split_scopes);
    issue(
        shared,
        current.grant,
        app,
        &current.user_id,
        &scopes,
        &current.scopes,
        None,
        now,
    )
}

/// Issues an access token for `scopes`, a refresh token for `refresh_scopes`, and an
/// id_token when `openid` is among `scopes`.
#[allow(clippy::too_many_arguments)]
fn issue(
    shared: &Shared,
    grant: u64,
    app: &OAuthApplication,
    user_id: &str,
    scopes: &[String],
    refresh_scopes: &[String],
    nonce: Option<&str>,
    now: Instant,
) -> Result<OAuthToken, OAuthFail> {
    let issued_at = chrono::Utc::now().timestamp();
    let token = |scopes: &[String]| TokenGrant {
        grant,
        client_id: app.client_id.clone(),
        user_id: user_id.to_owned(),
        scopes: scopes.to_vec(),
        issued_at,
    };
    let id_token = if scopes.iter().any(|s| s == "openid") {
        Some(id_token(shared, &token(scopes), nonce)?)
    } else {
        None
    };
    let (access_token, refresh_token) = {
        let mut grants = lock(&shared.grants);
        (
            grants.issue_access(token(scopes), shared.access_token_ttl, now),
            grants.issue_refresh(token(refresh_scopes)),
        )
    };
    Ok(OAuthToken {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: Some(i64::try_from(shared.access_token_ttl.as_secs()).unwrap_or(i64::MAX)),
        refresh_token: Some(refresh_token),
        scope: Some(scopes.join(" ")),
        id_token,
    })
}

fn id_token(shared: &Shared, token: &TokenGrant, nonce: Option<&str>) -> Result<String, OAuthFail> {
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(shared.frontend_api_url));
    claims.insert("sub".into(), json!(token.user_id));
    claims.insert("aud".into(), json!(token.client_id));
    claims.insert("iat".into(), json!(token.issued_at));
    claims.insert("exp".into(), json!(token.issued_at + ID_TOKEN_TTL_SECS));
    if let Some(nonce) = nonce {
        claims.insert("nonce".into(), json!(nonce));
    }
    if let Ok(Value::Object(info)) = serde_json::to_value(user_info(shared, token)) {
        for (k, v) in info {
            if CLAIMS_SUPPORTED.contains(&k.as_str()) && !claims.contains_key(&k) {
                claims.insert(k, v);
            }
        }
    }
    shared.signer.sign(&Value::Object(claims)).map_err(|e| {
        tracing::error!(error = %e, "clerk-emulator: id_token signing failed");
        OAuthFail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The id_token could not be signed.",
        )
    })
}

// ---------------------------------------------------------------------------------------
// GET|POST /oauth/userinfo
// ---------------------------------------------------------------------------------------

/// The claims the scopes of `token` grant.
fn user_info(shared: &Shared, token: &TokenGrant) -> OAuthUserInfo {
    let user = &shared.user;
    let has = |scope: &str| token.scopes.iter().any(|s| s == scope);
    let (email, profile) = (has("email"), has("profile"));
    let profile_claim = |v: &Option<String>| v.clone().filter(|_| profile);
    OAuthUserInfo {
        object: OAUTH_USER_INFO_OBJECT.to_owned(),
        instance_id: lock(&shared.store).instance_id().to_owned(),
        user_id: token.user_id.clone(),
        sub: token.user_id.clone(),
        email: email.then(|| user.email.clone()),
        email_verified: email.then_some(true),
        family_name: profile_claim(&user.last_name),
        given_name: profile_claim(&user.first_name),
        name: profile_claim(&user.full_name()),
        username: profile_claim(&user.username),
        preferred_username: profile_claim(&user.username),
        picture: profile_claim(&user.image_url),
        public_metadata: has("public_metadata").then(|| user.public_metadata.clone()),
        private_metadata: has("private_metadata").then(|| user.private_metadata.clone()),
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 with a Clerk error body (the spec's userinfo 401 is `ClerkErrors`) and the RFC 6750
/// section 3 challenge.
fn userinfo_unauthorized(invalid_token: bool) -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        vec![clerk_error(
            "authentication_invalid",
            "Invalid authentication",
            "The request needs a valid OAuth access token as `Authorization: Bearer <token>`.",
        )],
    )
    .into_response();
    let challenge = if invalid_token {
        "Bearer realm=\"userinfo\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"userinfo\""
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

fn userinfo(shared: &Shared, headers: &HeaderMap) -> Response {
    let Some(token) = bearer_token(headers) else {
        return userinfo_unauthorized(false);
    };
    let grant = lock(&shared.grants).access(token, Instant::now()).cloned();
    let Some(grant) = grant.filter(|g| lock(&shared.store).by_client_id(&g.client_id).is_some())
    else {
        return userinfo_unauthorized(true);
    };
    no_store(Json(user_info(shared, &grant)).into_response())
}

// ---------------------------------------------------------------------------------------
// POST /oauth/token_info, POST /oauth/token/revoke
// ---------------------------------------------------------------------------------------

/// RFC 7662 introspection. Client authentication is optional (the spec declares no security
/// for it) but checked when sent; a token of another client is then inactive.
async fn token_info(shared: &Shared, req: Request) -> Result<Response, OAuthFail> {
    let basic = basic_credentials(req.headers())?;
    let params = read_form(req).await?;
    if let Some(repeated) = params.repeated() {
        return Err(OAuthFail::invalid_request(repeated));
    }
    let token = params
        .one("token")?
        .ok_or_else(|| OAuthFail::invalid_request("The token parameter is missing."))?;
    let caller = if basic.is_some() || params.one("client_id")?.is_some() {
        Some(authenticate_client(shared, basic, &params)?)
    } else {
        None
    };
    let requested = params.one("scope")?.map(split_scopes);
    let found = {
        let grants = lock(&shared.grants);
        let now = Instant::now();
        if params.one("token_type_hint")? == Some("refresh_token") {
            grants.refresh(token).or_else(|| grants.access(token, now))
        } else {
            grants.access(token, now).or_else(|| grants.refresh(token))
        }
        .cloned()
    };
    let active = found
        .filter(|t| caller.as_ref().is_none_or(|c| c.client_id == t.client_id))
        .filter(|t| lock(&shared.store).by_client_id(&t.client_id).is_some())
        .filter(|t| {
            requested
                .as_ref()
                .is_none_or(|r| r.iter().all(|s| t.scopes.contains(s)))
        });
    let body = match active {
        Some(t) => OAuthTokenInfo {
            active: true,
            client_id: Some(t.client_id),
            iat: Some(t.issued_at),
            scope: Some(t.scopes.join(" ")),
            sub: Some(t.user_id),
        },
        None => OAuthTokenInfo {
            active: false,
            client_id: None,
            iat: None,
            scope: None,
            sub: None,
        },
    };
    Ok(no_store(Json(body).into_response()))
}

/// RFC 7009 revocation: an access token alone, or a refresh token with its whole grant.
/// Unknown tokens answer 200 too; an invalid `token_type_hint` is ignored.
async fn revoke(shared: &Shared, req: Request) -> Result<Response, OAuthFail> {
    let basic = basic_credentials(req.headers())?;
    let params = read_form(req).await?;
    if let Some(repeated) = params.repeated() {
        return Err(OAuthFail::invalid_request(repeated));
    }
    let app = authenticate_client(shared, basic, &params)?;
    let token = params
        .one("token")?
        .ok_or_else(|| OAuthFail::invalid_request("The token parameter is missing."))?;
    let mut grants = lock(&shared.grants);
    let other_client = || OAuthFail::invalid_grant("The token was issued to another client.");
    if let Some(t) = grants.access(token, Instant::now()).cloned() {
        if t.client_id != app.client_id {
            return Err(other_client());
        }
        grants.revoke_access(token);
    } else if let Some(t) = grants.refresh(token).cloned() {
        if t.client_id != app.client_id {
            return Err(other_client());
        }
        grants.revoke_grant(t.grant);
    }
    Ok(no_store(StatusCode::OK.into_response()))
}

// ---------------------------------------------------------------------------------------
// GET /.well-known/openid-configuration
// ---------------------------------------------------------------------------------------

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn openid_configuration(frontend_api_url: &str) -> OpenIdConfiguration {
    let e = Endpoints::new(frontend_api_url);
    OpenIdConfiguration {
        issuer: e.issuer,
        authorization_endpoint: e.authorize_url,
        token_endpoint: e.token_fetch_url,
        revocation_endpoint: e.revocation_url,
        introspection_endpoint: e.token_introspection_url,
        userinfo_endpoint: e.user_info_url,
        jwks_uri: e.jwks_url,
        scopes_supported: strings(&SCOPES_SUPPORTED),
        response_types_supported: strings(&["code"]),
        response_modes_supported: strings(&["query", "form_post"]),
        grant_types_supported: strings(&["authorization_code", "refresh_token"]),
        subject_types_supported: strings(&["public"]),
        id_token_signing_alg_values_supported: strings(&[ALG]),
        token_endpoint_auth_methods_supported: strings(&[
            "client_secret_basic",
            "client_secret_post",
            "none",
        ]),
        claims_supported: strings(&CLAIMS_SUPPORTED),
        code_challenge_methods_supported: strings(&["S256"]),
        backchannel_logout_supported: false,
        frontchannel_logout_supported: false,
    }
}

fn discovery(shared: &Shared) -> Response {
    Json(openid_configuration(&shared.frontend_api_url)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_treat_empty_as_omitted_and_flag_repeats() {
        let p = Params::parse(b"a=1&b=&c=x+y&c=z");
        assert_eq!(p.one("a"), Ok(Some("1")));
        assert_eq!(p.one("b"), Ok(None));
        assert!(p.one("c").is_err());
        assert!(p.repeated().unwrap().contains("c parameter"));
    }

    #[test]
    fn pkce_s256() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(is_code_verifier(verifier));
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_s256_challenge(&s256(verifier)));
        assert!(!is_code_verifier("short"));
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(form_decode("a%3Ab+c%2"), "a:b c%2");
        assert_eq!(form_decode("%zz%41"), "%zzA");
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode("my%20id:s%3Acret"));
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my id".to_owned(), "s:cret".to_owned()))
        );
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(
            basic_credentials(&headers).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn scopes_split_and_dedupe() {
        assert_eq!(
            split_scopes("openid  email openid"),
            vec!["openid", "email"]
        );
    }
}
