//! Test-control endpoints under `/__emulator/`, for out-of-process use. They need no
//! authentication (the emulator binds loopback only), are not counted, not logged, and not
//! subject to faults or the rate limit.
//!
//! | endpoint | body | effect / answer |
//! |---|---|---|
//! | `GET /__emulator/requests` | | [`RequestsReport`] `{total, counts:[{method,route,count}], log:[RequestRecord]}` |
//! | `DELETE /__emulator/requests` | | clear counters and log (204) |
//! | `GET /__emulator/apps` | | `[OAuthApplication]` (no secrets) |
//! | `POST /__emulator/apps` | create body | seed an app as the dashboard would: `OAuthApplicationWithSecret` |
//! | `GET /__emulator/apps/{id}` | | `OAuthApplication` or 404 |
//! | `PATCH /__emulator/apps/{id}` | any `OAuthApplication` fields | dashboard edit (overwrite those fields): `OAuthApplication` |
//! | `DELETE /__emulator/apps/{id}` | | dashboard deletion (204 / 404) |
//! | `POST /__emulator/secrets/verify` | `{client_id, client_secret}` | `{valid: bool}` |
//! | `GET /__emulator/faults` | | pending [`Fault`]s |
//! | `POST /__emulator/faults` | [`Fault`] e.g. `{"method":"GET","route":"/oauth_applications/{oauth_application_id}","times":2,"action":{"type":"status","status":503}}`; actions `{"type":"delay","millis":N}`, `{"type":"drop"}` | add (204) |
//! | `DELETE /__emulator/faults` | | clear (204) |
//! | `PUT /__emulator/rate_limit` | `{"requests":N,"window_ms":M}` | set (204); `DELETE` removes it |
//! | `PUT /__emulator/delay` | `{"millis":N}` | delay every Backend API response (204); `DELETE` removes it |
//! | `POST /__emulator/reset` | | delete all apps, revoke all OAuth codes and tokens, clear counters, log, faults, delay, rate limit (204) |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{Shared, lock, validate_create};
use crate::control::{Fault, RateLimit, RequestRecord, RouteCount};
use crate::model::OAuthApplication;

/// `GET /__emulator/requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsReport {
    pub total: u64,
    pub counts: Vec<RouteCount>,
    pub log: Vec<RequestRecord>,
}

#[derive(Deserialize)]
struct VerifySecret {
    client_id: String,
    client_secret: String,
}

#[derive(Deserialize)]
struct Delay {
    millis: u64,
}

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/requests", get(requests).delete(reset_requests))
        .route("/apps", get(apps).post(create_app))
        .route("/apps/{id}", get(app).patch(edit_app).delete(delete_app))
        .route("/secrets/verify", post(verify_secret))
        .route("/faults", get(faults).post(add_fault).delete(clear_faults))
        .route("/rate_limit", put(set_rate_limit).delete(clear_rate_limit))
        .route("/delay", put(set_delay).delete(clear_delay))
        .route("/reset", post(reset))
        .fallback(|| async { admin_error(StatusCode::NOT_FOUND, "unknown admin endpoint") })
        .with_state(shared)
}

async fn requests(State(s): State<Arc<Shared>>) -> Json<RequestsReport> {
    let c = lock(&s.control);
    Json(RequestsReport {
        total: c.total,
        counts: c.counts(),
        log: c.log.clone(),
    })
}

async fn reset_requests(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.control).reset_requests();
    StatusCode::NO_CONTENT
}

async fn apps(State(s): State<Arc<Shared>>) -> Json<Vec<OAuthApplication>> {
    Json(lock(&s.store).all())
}

/// Seeds an application as if created in the dashboard; answers with its secret.
async fn create_app(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let Some(obj) = body.as_object() else {
        return admin_error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    match validate_create(obj) {
        Ok(new) => Json(lock(&s.store).create(new)).into_response(),
        Err(e) => (e.status, Json(e.body())).into_response(),
    }
}

async fn app(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match lock(&s.store).get(&id) {
        Some(app) => Json(app).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, "no such application"),
    }
}

/// A dashboard edit: the body's keys overwrite the application's fields (any
/// `OAuthApplication` field; `id` cannot change).
async fn edit_app(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(patch): Json<Value>,
) -> Response {
    let Some(patch) = patch.as_object() else {
        return admin_error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    let mut store = lock(&s.store);
    let Some(current) = store.get(&id) else {
        return admin_error(StatusCode::NOT_FOUND, "no such application");
    };
    let mut merged = match serde_json::to_value(&current) {
        Ok(Value::Object(m)) => m,
        _ => return admin_error(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed"),
    };
    for (k, v) in patch {
        merged.insert(k.clone(), v.clone());
    }
    let edited: OAuthApplication = match serde_json::from_value(Value::Object(merged)) {
        Ok(app) => app,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("invalid edit: {e}")),
    };
    match store.edit(&id, |app| *app = edited) {
        Some(app) => Json(app).into_response(),
        None => admin_error(StatusCode::NOT_FOUND, "no such application"),
    }
}

async fn delete_app(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if lock(&s.store).delete(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        admin_error(StatusCode::NOT_FOUND, "no such application")
    }
}

async fn verify_secret(State(s): State<Arc<Shared>>, Json(v): Json<VerifySecret>) -> Json<Value> {
    let valid = lock(&s.store).secret_is_valid(&v.client_id, &v.client_secret);
    Json(json!({ "valid": valid }))
}

async fn faults(State(s): State<Arc<Shared>>) -> Json<Vec<Fault>> {
    Json(lock(&s.control).faults.clone())
}

async fn add_fault(State(s): State<Arc<Shared>>, Json(fault): Json<Fault>) -> StatusCode {
    lock(&s.control).faults.push(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.control).faults.clear();
    StatusCode::NO_CONTENT
}

async fn set_rate_limit(State(s): State<Arc<Shared>>, Json(limit): Json<RateLimit>) -> Response {
    if limit.window.is_zero() {
        return admin_error(StatusCode::BAD_REQUEST, "window_ms must be positive");
    }
    lock(&s.control).set_rate_limit(Some(limit));
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_rate_limit(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.control).set_rate_limit(None);
    StatusCode::NO_CONTENT
}

async fn set_delay(State(s): State<Arc<Shared>>, Json(d): Json<Delay>) -> StatusCode {
    lock(&s.control).delay = Some(Duration::from_millis(d.millis));
    StatusCode::NO_CONTENT
}

async fn clear_delay(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.control).delay = None;
    StatusCode::NO_CONTENT
}

async fn reset(State(s): State<Arc<Shared>>) -> StatusCode {
    crate::reset_shared(&s);
    StatusCode::NO_CONTENT
}
