//! Clerk error bodies (`components/schemas/ClerkErrors`) and the codes the emulator uses.
//!
//! The spec defines the shape but gives no error codes; the codes below are the ones Clerk's
//! Backend API is known to answer with (`resource_not_found`, `form_param_*`,
//! `clerk_key_invalid`, ...).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{Map, Value};

use crate::model::{ClerkError, ClerkErrors};

/// An error answered with a Clerk error body.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<ClerkError>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

pub(crate) fn error(code: &str, message: &str, long_message: impl Into<String>) -> ClerkError {
    ClerkError {
        message: message.to_owned(),
        long_message: long_message.into(),
        code: code.to_owned(),
        meta: None,
    }
}

fn param_meta(param: &str) -> Option<Map<String, Value>> {
    let mut meta = Map::new();
    meta.insert("param_name".to_owned(), Value::String(param.to_owned()));
    Some(meta)
}

pub(crate) fn param_missing(param: &str) -> ClerkError {
    ClerkError {
        meta: param_meta(param),
        ..error(
            "form_param_missing",
            "is missing",
            format!("{param} must be included."),
        )
    }
}

pub(crate) fn param_unknown(param: &str) -> ClerkError {
    ClerkError {
        meta: param_meta(param),
        ..error(
            "form_param_unknown",
            "is unknown",
            format!("{param} is not a valid parameter for this request."),
        )
    }
}

pub(crate) fn param_format_invalid(param: &str, long: impl Into<String>) -> ClerkError {
    ClerkError {
        meta: param_meta(param),
        ..error("form_param_format_invalid", "is invalid", long)
    }
}

pub(crate) fn param_value_invalid(param: &str, long: impl Into<String>) -> ClerkError {
    ClerkError {
        meta: param_meta(param),
        ..error("form_param_value_invalid", "is invalid", long)
    }
}

pub(crate) fn param_too_long(param: &str, max: usize) -> ClerkError {
    ClerkError {
        meta: param_meta(param),
        ..error(
            "form_param_exceeds_allowed_size",
            "exceeds the maximum allowed size",
            format!("{param} must be at most {max} characters long."),
        )
    }
}

impl ApiError {
    pub fn new(status: StatusCode, errors: Vec<ClerkError>) -> Self {
        Self {
            status,
            errors,
            retry_after: None,
        }
    }

    /// 422 with the given parameter errors.
    pub fn unprocessable(errors: Vec<ClerkError>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, errors)
    }

    /// 400 for a body that is not a JSON object.
    pub fn malformed_body(long: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            vec![error("malformed_request", "malformed request", long)],
        )
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            vec![error(
                "resource_not_found",
                "not found",
                "Resource not found",
            )],
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            vec![error(
                "method_not_allowed",
                "method not allowed",
                "The HTTP method is not allowed for this endpoint.",
            )],
        )
    }

    /// 401 without a usable `Authorization: Bearer` header.
    pub fn authentication_missing() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            vec![error(
                "authentication_invalid",
                "Invalid authentication",
                "Unable to authenticate the request: the Authorization header must carry \
                 `Bearer <Clerk Secret Key>`.",
            )],
        )
    }

    /// 401 for a bearer token that is not the instance's secret key.
    pub fn key_invalid() -> Self {
        let msg = "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.";
        Self::new(
            StatusCode::UNAUTHORIZED,
            vec![error("clerk_key_invalid", msg, msg)],
        )
    }

    pub fn too_many_requests(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                vec![error(
                    "too_many_requests",
                    "Too many requests",
                    format!(
                        "Too many requests, retry after {} seconds.",
                        retry_after.max(1)
                    ),
                )],
            )
        }
    }

    /// The body a fault injection answers with for `status`, unless overridden.
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Self::key_invalid(),
            404 => Self::not_found(),
            429 => Self::too_many_requests(1),
            400 => Self::new(
                status,
                vec![error(
                    "bad_request",
                    "bad request",
                    "The request could not be processed.",
                )],
            ),
            403 => Self::new(
                status,
                vec![error(
                    "authorization_invalid",
                    "Unauthorized request",
                    "You are not authorized to perform this request",
                )],
            ),
            409 => Self::new(
                status,
                vec![error(
                    "conflict",
                    "conflict",
                    "The request conflicts with the resource state.",
                )],
            ),
            422 => Self::unprocessable(vec![error(
                "form_param_value_invalid",
                "is invalid",
                "The request parameters are invalid.",
            )]),
            502..=504 => Self::new(
                status,
                vec![error(
                    "service_unavailable",
                    "Service unavailable",
                    "The service is temporarily unavailable, please try again later.",
                )],
            ),
            _ => Self::new(
                status,
                vec![error(
                    "internal_clerk_error",
                    "Oops, an unexpected error occurred",
                    "There was an internal error on our servers. We've been notified and are \
                     working on fixing it.",
                )],
            ),
        }
    }

    pub fn body(&self) -> ClerkErrors {
        ClerkErrors {
            errors: self.errors.clone(),
            meta: None,
            clerk_trace_id: Some(trace_id()),
        }
    }
}

fn trace_id() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 32)
        .to_ascii_lowercase()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
