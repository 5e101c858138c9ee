//! Request dispatch (counting, faults) and the emulated Backend API:
//! `/v1/oauth_applications...`. The Frontend API routes are answered by [`crate::fapi`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::control::{Control, FaultAction, routes};
use crate::errors::{
    ApiError, param_format_invalid, param_missing, param_too_long, param_unknown,
    param_value_invalid,
};
use crate::grants::Grants;
use crate::jwt::Signer;
use crate::model::EmulatedUser;
use crate::model::{
    DeletedObject, NewOAuthApplication, OAUTH_APPLICATION_OBJECT, OAuthApplications,
};
use crate::store::{AppUpdate, OrderField, Store};

/// Largest accepted request body.
const BODY_LIMIT: usize = 1 << 20;
/// `name`: "Max length: 256".
const NAME_MAX: usize = 256;
/// `callback_url` and `scopes`: `maxLength: 1024`.
const URL_SCOPES_MAX: usize = 1024;
/// `LimitParameter`: default 10, 1..=500.
const LIMIT_DEFAULT: usize = 10;
const LIMIT_MAX: i64 = 500;

/// The body keys of the PATCH request schema (`additionalProperties: false`).
const PATCH_KEYS: [&str; 7] = [
    "name",
    "redirect_uris",
    "callback_url",
    "scopes",
    "consent_screen_enabled",
    "pkce_required",
    "public",
];

/// State shared by the APIs, the admin endpoints and the handles.
pub(crate) struct Shared {
    pub secret_key: String,
    /// Without a trailing slash: the OpenID issuer.
    pub frontend_api_url: String,
    pub store: Mutex<Store>,
    pub control: Mutex<Control>,
    /// Authorization codes and tokens of the Frontend API.
    pub grants: Mutex<Grants>,
    pub signer: Signer,
    pub user: EmulatedUser,
    pub code_ttl: Duration,
    pub access_token_ttl: Duration,
}

/// Locks a mutex, recovering from poisoning (the state stays usable after a panicking test).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-connection hook a "drop the connection" fault uses to close the TCP connection.
#[derive(Clone)]
pub(crate) struct ConnKill(pub Arc<Notify>);

/// An emulated route, matched from a request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A Backend API template and its `oauth_application_id`, if any.
    Backend(&'static str, Option<String>),
    /// A Frontend API template.
    Frontend(&'static str),
}

impl Route {
    pub fn template(&self) -> &'static str {
        match self {
            Route::Backend(t, _) | Route::Frontend(t) => t,
        }
    }
}

/// Matches `path` against the emulated routes.
pub(crate) fn match_route(path: &str) -> Option<Route> {
    if let Some(t) = routes::FRONTEND_API.iter().find(|t| **t == path) {
        return Some(Route::Frontend(t));
    }
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["oauth_applications"] => Some(Route::Backend(routes::OAUTH_APPLICATIONS, None)),
        ["oauth_applications", id] if !id.is_empty() => Some(Route::Backend(
            routes::OAUTH_APPLICATION,
            Some((*id).to_owned()),
        )),
        ["oauth_applications", id, "rotate_secret"] if !id.is_empty() => Some(Route::Backend(
            routes::ROTATE_SECRET,
            Some((*id).to_owned()),
        )),
        _ => None,
    }
}

/// Entry point of every non-admin request.
pub(crate) async fn dispatch(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let route = match_route(&path);
    let template = route.as_ref().map(Route::template);
    let seq = lock(&shared.control).record_arrival(&method, &path, template, query.as_deref());
    let post_delay = lock(&shared.control).take_post_delay(&method, template);
    let response = handle(&shared, req, route).await;
    if let Some(delay) = post_delay {
        tokio::time::sleep(delay).await;
    }
    let status = response.status().as_u16();
    lock(&shared.control).record_status(seq, status);
    // Method, path and status only: never queries, bodies, headers, secrets, codes or tokens.
    tracing::info!(%method, %path, status, "clerk-emulator request");
    response
}

async fn handle(shared: &Shared, req: Request, route: Option<Route>) -> Response {
    let template = route.as_ref().map(Route::template);
    let frontend = matches!(route, Some(Route::Frontend(_)));
    // The global delay and the rate limit model the Backend API; faults cover every route.
    let delay = lock(&shared.control).delay.filter(|_| !frontend);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let fault = lock(&shared.control).take_fault(req.method().as_str(), template);
    match fault {
        Some(FaultAction::Status {
            status,
            code,
            message,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Some(response) =
                oauth_fault(template, status, code.as_deref(), message.as_deref())
            {
                return response;
            }
            let mut err = ApiError::for_status(status);
            if let Some(first) = err.errors.first_mut() {
                if let Some(code) = code {
                    first.code = code;
                }
                if let Some(message) = message {
                    first.message = message.clone();
                    first.long_message = message;
                }
            }
            if retry_after.is_some() {
                err.retry_after = retry_after;
            }
            return err.into_response();
        }
        Some(FaultAction::CommitThenDelay { .. }) | None => {}
        Some(FaultAction::Delay { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(FaultAction::Drop) => {
            if let Some(kill) = req.extensions().get::<ConnKill>() {
                kill.0.notify_one();
                // The connection task drops this request with the connection.
                std::future::pending::<()>().await;
            }
            return ApiError::for_status(StatusCode::INTERNAL_SERVER_ERROR).into_response();
        }
    }
    if let Some(Route::Frontend(template)) = route {
        return crate::fapi::handle(shared, req, template).await;
    }
    let limited = lock(&shared.control).check_rate_limit(Instant::now());
    if let Err(retry_after) = limited {
        return ApiError::too_many_requests(retry_after).into_response();
    }
    if let Err(e) = authenticate(shared, &req) {
        return e.into_response();
    }
    let Some(Route::Backend(template, id)) = route else {
        return ApiError::not_found().into_response();
    };
    let id = id.unwrap_or_default();
    let method = req.method().clone();
    let result = match (template, method) {
        (routes::OAUTH_APPLICATIONS, Method::GET) => list(shared, req.uri().query()),
        (routes::OAUTH_APPLICATIONS, Method::POST) => match read_body(req).await {
            Ok(body) => create(shared, &body),
            Err(e) => Err(e),
        },
        (routes::OAUTH_APPLICATION, Method::GET) => get(shared, &id),
        (routes::OAUTH_APPLICATION, Method::PATCH) => match read_body(req).await {
            Ok(body) => patch(shared, &id, &body),
            Err(e) => Err(e),
        },
        (routes::OAUTH_APPLICATION, Method::DELETE) => delete(shared, &id),
        (routes::ROTATE_SECRET, Method::POST) => rotate(shared, &id),
        _ => Err(ApiError::method_not_allowed()),
    };
    match result {
        Ok(value) => (StatusCode::OK, Json(value)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A status fault on an endpoint whose errors are RFC 6749 bodies (400 and 401 of the token,
/// introspection and revocation endpoints) answers `{error, error_description}`.
fn oauth_fault(
    template: Option<&str>,
    status: StatusCode,
    code: Option<&str>,
    message: Option<&str>,
) -> Option<Response> {
    let oauth = matches!(
        template,
        Some(routes::OAUTH_TOKEN | routes::OAUTH_TOKEN_INFO | routes::OAUTH_TOKEN_REVOKE)
    );
    let default = match status.as_u16() {
        400 => "invalid_request",
        401 => "invalid_client",
        _ => return None,
    };
    oauth.then(|| {
        crate::fapi::oauth_error_response(
            status,
            code.unwrap_or(default),
            message.unwrap_or("Injected fault."),
        )
    })
}

fn authenticate(shared: &Shared, req: &Request) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::authentication_missing)?;
    let (scheme, token) = header
        .split_once(' ')
        .ok_or_else(ApiError::authentication_missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::authentication_missing());
    }
    let expected = shared.secret_key.as_bytes();
    let token = token.trim().as_bytes();
    let same = token.len() == expected.len()
        && token
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::key_invalid())
    }
}

async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map(|b| b.to_vec())
        .map_err(|_| ApiError::malformed_body("The request body could not be read."))
}

/// Parses a JSON object body; an empty body is `None`.
fn parse_object(body: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ApiError::malformed_body(
            "The request body must be a JSON object.",
        )),
        Err(_) => Err(ApiError::malformed_body(
            "The request body is not valid JSON.",
        )),
    }
}

/// Typed reads of body fields; `null` and absent are both `None` (every optional field of
/// these request schemas is `nullable`).
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<crate::model::ClerkError>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            errors: Vec::new(),
        }
    }

    fn string(&mut self, key: &str, max: usize) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() > max => {
                self.errors.push(param_too_long(key, max));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.errors.push(param_format_invalid(
                    key,
                    format!("{key} must be a string."),
                ));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.errors.push(param_format_invalid(
                    key,
                    format!("{key} must be a boolean."),
                ));
                None
            }
        }
    }

    fn url(&mut self, key: &str, max: usize) -> Option<String> {
        let value = self.string(key, max)?;
        if !value.is_empty() && url::Url::parse(&value).is_err() {
            self.errors.push(param_format_invalid(
                key,
                format!("{key} must be a valid URL."),
            ));
            return None;
        }
        Some(value)
    }

    fn urls(&mut self, key: &str) -> Option<Vec<String>> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if url::Url::parse(s).is_ok() => out.push(s.clone()),
                        _ => {
                            self.errors.push(param_format_invalid(
                                key,
                                format!("{key} must be an array of valid URLs."),
                            ));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                self.errors.push(param_format_invalid(
                    key,
                    format!("{key} must be an array of strings."),
                ));
                None
            }
        }
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unprocessable(self.errors))
        }
    }
}

/// Validates a create body (the spec's create schema has no `additionalProperties: false`,
/// so unknown keys are ignored).
pub(crate) fn validate_create(body: &Map<String, Value>) -> Result<NewOAuthApplication, ApiError> {
    let mut f = Fields::new(body);
    let name = match body.get("name") {
        None | Some(Value::Null) => {
            f.errors.push(param_missing("name"));
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            f.errors.push(param_missing("name"));
            None
        }
        Some(_) => f.string("name", NAME_MAX),
    };
    let new = NewOAuthApplication {
        name: name.unwrap_or_default(),
        redirect_uris: f.urls("redirect_uris"),
        callback_url: f.url("callback_url", URL_SCOPES_MAX),
        scopes: f.string("scopes", URL_SCOPES_MAX),
        consent_screen_enabled: f.boolean("consent_screen_enabled"),
        pkce_required: f.boolean("pkce_required"),
        public: f.boolean("public"),
    };
    f.finish()?;
    Ok(new)
}

fn validate_patch(body: &Map<String, Value>) -> Result<AppUpdate, ApiError> {
    let unknown: Vec<_> = body
        .keys()
        .filter(|k| !PATCH_KEYS.contains(&k.as_str()))
        .map(|k| param_unknown(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::unprocessable(unknown));
    }
    let mut f = Fields::new(body);
    let name = f.string("name", NAME_MAX);
    if name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        f.errors
            .push(param_value_invalid("name", "name must not be blank."));
    }
    let update = AppUpdate {
        name,
        redirect_uris: f.urls("redirect_uris"),
        callback_url: f.url("callback_url", URL_SCOPES_MAX),
        scopes: f.string("scopes", URL_SCOPES_MAX),
        consent_screen_enabled: f.boolean("consent_screen_enabled"),
        pkce_required: f.boolean("pkce_required"),
        public: f.boolean("public"),
    };
    f.finish()?;
    Ok(update)
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|_| ApiError::for_status(StatusCode::INTERNAL_SERVER_ERROR))
}

fn create(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let obj = parse_object(body)?.unwrap_or_default();
    let new = validate_create(&obj)?;
    let created = lock(&shared.store).create(new);
    to_value(&created)
}

fn get(shared: &Shared, id: &str) -> Result<Value, ApiError> {
    let app = lock(&shared.store)
        .get(id)
        .ok_or_else(ApiError::not_found)?;
    to_value(&app)
}

fn patch(shared: &Shared, id: &str, body: &[u8]) -> Result<Value, ApiError> {
    let obj = parse_object(body)?
        .ok_or_else(|| ApiError::malformed_body("The request body is required."))?;
    let update = validate_patch(&obj)?;
    let mut store = lock(&shared.store);
    let current = store.get(id).ok_or_else(ApiError::not_found)?;
    if current.dynamically_registered && update.consent_screen_enabled == Some(false) {
        return Err(ApiError::unprocessable(vec![param_value_invalid(
            "consent_screen_enabled",
            "The consent screen cannot be disabled for dynamically registered OAuth applications.",
        )]));
    }
    let app = store.update(id, update).ok_or_else(ApiError::not_found)?;
    to_value(&app)
}

fn delete(shared: &Shared, id: &str) -> Result<Value, ApiError> {
    if !lock(&shared.store).delete(id) {
        return Err(ApiError::not_found());
    }
    to_value(&DeletedObject {
        object: OAUTH_APPLICATION_OBJECT.to_owned(),
        id: Some(id.to_owned()),
        slug: None,
        deleted: true,
        external_id: None,
    })
}

fn rotate(shared: &Shared, id: &str) -> Result<Value, ApiError> {
    let rotated = lock(&shared.store)
        .rotate_secret(id)
        .ok_or_else(ApiError::not_found)?;
    to_value(&rotated)
}

/// Parses `order_by`: `[+|-]created_at` or `[+|-]name`; no sign means `+`. A leading space
/// is a `+` that the client forgot to percent-encode.
fn parse_order(value: &str) -> Option<(OrderField, bool)> {
    let (descending, field) = if let Some(f) = value.strip_prefix('-') {
        (true, f)
    } else if let Some(f) = value.strip_prefix('+').or_else(|| value.strip_prefix(' ')) {
        (false, f)
    } else {
        (false, value)
    };
    match field {
        "created_at" => Some((OrderField::CreatedAt, descending)),
        "name" => Some((OrderField::Name, descending)),
        _ => None,
    }
}

fn list(shared: &Shared, query: Option<&str>) -> Result<Value, ApiError> {
    let mut limit = LIMIT_DEFAULT;
    let mut offset = 0usize;
    // The spec's parameter default; see the crate docs about its description saying otherwise.
    let mut order = (OrderField::CreatedAt, false);
    let mut name_query = None;
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        // "if multiple `order_by` parameters are provided, we will only keep the first one".
        if !seen.insert(key.clone()) {
            continue;
        }
        match key.as_ref() {
            "limit" => match value.parse::<i64>() {
                Ok(n) if (1..=LIMIT_MAX).contains(&n) => limit = n as usize,
                Ok(_) => errors.push(param_value_invalid(
                    "limit",
                    format!("limit must be between 1 and {LIMIT_MAX}."),
                )),
                Err(_) => errors.push(param_format_invalid("limit", "limit must be an integer.")),
            },
            "offset" => match value.parse::<i64>() {
                Ok(n) if n >= 0 => offset = usize::try_from(n).unwrap_or(usize::MAX),
                Ok(_) => errors.push(param_value_invalid(
                    "offset",
                    "offset must be greater than or equal to 0.",
                )),
                Err(_) => errors.push(param_format_invalid("offset", "offset must be an integer.")),
            },
            "order_by" => match parse_order(&value) {
                Some(o) => order = o,
                None => errors.push(param_value_invalid(
                    "order_by",
                    "order_by must be one of created_at, name, optionally prefixed with + or -.",
                )),
            },
            "name_query" => name_query = Some(value.into_owned()),
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::unprocessable(errors));
    }
    let (total, data) = lock(&shared.store).list(name_query.as_deref(), order, offset, limit);
    to_value(&OAuthApplications {
        data,
        total_count: i64::try_from(total).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_spec_templates() {
        assert_eq!(
            match_route("/v1/oauth_applications"),
            Some(Route::Backend(routes::OAUTH_APPLICATIONS, None))
        );
        assert_eq!(
            match_route("/v1/oauth_applications/oa_1"),
            Some(Route::Backend(
                routes::OAUTH_APPLICATION,
                Some("oa_1".into())
            ))
        );
        assert_eq!(
            match_route("/v1/oauth_applications/oa_1/rotate_secret"),
            Some(Route::Backend(routes::ROTATE_SECRET, Some("oa_1".into())))
        );
        assert_eq!(match_route("/v1/oauth_applications/oa_1/logo"), None);
        assert_eq!(match_route("/oauth_applications"), None);
        for t in routes::FRONTEND_API {
            assert_eq!(match_route(t), Some(Route::Frontend(t)));
        }
        assert_eq!(match_route("/v1/oauth/token"), None);
        assert_eq!(match_route("/oauth/token/"), None);
    }

    #[test]
    fn order_by_forms() {
        assert_eq!(
            parse_order("created_at"),
            Some((OrderField::CreatedAt, false))
        );
        assert_eq!(
            parse_order("+created_at"),
            Some((OrderField::CreatedAt, false))
        );
        assert_eq!(
            parse_order(" created_at"),
            Some((OrderField::CreatedAt, false))
        );
        assert_eq!(parse_order("-name"), Some((OrderField::Name, true)));
        assert_eq!(parse_order("-updated_at"), None);
    }

    #[test]
    fn create_validation() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        let err = validate_create(&body(serde_json::json!({}))).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.errors[0].code, "form_param_missing");
        let err = validate_create(&body(
            serde_json::json!({"name": "a", "redirect_uris": ["not a url"]}),
        ))
        .unwrap_err();
        assert_eq!(err.errors[0].code, "form_param_format_invalid");
        let ok = validate_create(&body(serde_json::json!({
            "name": "a", "redirect_uris": ["myapp://cb", "https://x.test/cb"], "scopes": null,
            "unknown": 1
        })))
        .unwrap();
        assert_eq!(ok.redirect_uris.unwrap().len(), 2);
        assert_eq!(ok.scopes, None);
    }
}
