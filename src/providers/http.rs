//! The HTTP plumbing every backend shares, written once: the request budget, a tracing span,
//! the duration and count metrics, and the mapping of answers to [`ProviderError`] (404 only
//! when the server itself says so, 408, 429 with `Retry-After` pausing the whole budget,
//! 401/403, other 4xx, 5xx and transport errors with `outcome_unknown`). The request timeout
//! is the reqwest client's. A backend adds only what is its own: how to build the request and
//! how to read its error bodies ([`ErrorBodies`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::egress::{self, EgressPolicy};
use super::{ProviderError, RequestBudgetLimiter};
use crate::telemetry::{Metrics, OperationLabels, RequestLabels};

/// How a backend reads its own error bodies.
pub trait ErrorBodies: Send + Sync {
    /// Whether a 404 body is the server saying the object does not exist, not a proxy or a
    /// wrong base URL answering 404: only the former may lead to "the client is gone".
    fn is_not_found(&self, body: &[u8]) -> bool;
    /// The error body as one line for conditions and events (never a request value).
    fn message(&self, status: StatusCode, body: &[u8]) -> String;
}

/// The HTTP client of one provider and where its requests may go ([`EgressPolicy`]). It
/// derefs to the `reqwest::Client` that builds requests; every request is sent by
/// [`HttpEndpoint`] (or [`client_authenticates`]), which checks its URL against the policy.
#[derive(Clone)]
pub struct ProviderHttp {
    pub client: reqwest::Client,
    pub egress: Arc<EgressPolicy>,
}

impl From<reqwest::Client> for ProviderHttp {
    /// Unrestricted (tests, and a `ClusterOAuthProvider`).
    fn from(client: reqwest::Client) -> Self {
        Self {
            client,
            egress: Arc::new(EgressPolicy::unrestricted()),
        }
    }
}

impl std::ops::Deref for ProviderHttp {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        &self.client
    }
}

impl ProviderHttp {
    /// Sends a request the egress policy permits; a refusal (an IP address in the URL, or a
    /// name that resolves only to refused addresses) is [`ProviderError::Unsupported`] with
    /// the reason: permanent until the provider changes, and no request left the operator.
    async fn execute(
        &self,
        operation: &'static str,
        request: reqwest::Request,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, ProviderError> {
        self.egress
            .check_url(request.url())
            .map_err(|e| ProviderError::Unsupported(format!("{operation}: {e}")))?;
        match self.client.execute(request).await {
            Err(e) if e.is_connect() || e.is_request() => match egress::denial_in(&e) {
                Some(reason) => Err(ProviderError::Unsupported(format!("{operation}: {reason}"))),
                None => Ok(Err(e)),
            },
            other => Ok(other),
        }
    }
}

/// One authorization server's HTTP side: the client (timeouts, TLS trust, egress policy), the
/// server's request budget and the metrics, labelled with the backend's name.
pub struct HttpEndpoint {
    pub http: ProviderHttp,
    pub budget: Arc<RequestBudgetLimiter>,
    pub metrics: Arc<Metrics>,
    pub backend: &'static str,
}

/// A response body that does not parse, described by the error's class and position only:
/// serde's own message can quote the value it choked on, and create/rotate bodies carry the
/// client secret.
pub fn body_error(e: &serde_json::Error) -> String {
    format!(
        "unexpected response body ({:?} error at line {} column {})",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// The `page_token` of the `rel="next"` link in a `Link` header (RFC 8288), as Ory's APIs
/// paginate.
pub fn next_page_token(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\""))
        .and_then(|link| {
            let target = link.trim().strip_prefix('<')?.split('>').next()?;
            let url = url::Url::parse("http://relative.invalid")
                .ok()?
                .join(target)
                .ok()?;
            url.query_pairs()
                .find(|(k, _)| k == "page_token")
                .map(|(_, v)| v.into_owned())
        })
}

/// Whether `client_id` / `secret` authenticate at an OAuth token endpoint: a refresh-token
/// grant with a token that cannot exist. Client authentication comes first (RFC 6749 section
/// 5.2): `invalid_client` says the secret is wrong; `invalid_grant`, `unauthorized_client` or
/// `unsupported_grant_type` that the client authenticated and only the made-up grant was
/// refused. Anything else is no answer (an error).
pub async fn client_authenticates(
    endpoint: &HttpEndpoint,
    token_url: &str,
    client_id: &str,
    secret: &secrecy::SecretString,
) -> Result<bool, ProviderError> {
    use rand::distr::{Alphanumeric, SampleString};
    use secrecy::ExposeSecret;
    const OPERATION: &str = "verify_secret";
    let url = url::Url::parse(token_url)
        .map_err(|e| ProviderError::Unsupported(format!("invalid token URL: {e}")))?;
    let probe = Alphanumeric.sample_string(&mut rand::rng(), 40);
    let unavailable = |message: String| ProviderError::Unavailable {
        operation: OPERATION,
        outcome_unknown: false,
        message,
    };
    let _permit = endpoint.budget.acquire().await;
    let request = endpoint
        .http
        .post(url)
        .basic_auth(client_id, Some(secret.expose_secret()))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &probe)])
        .build()
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    let response = endpoint
        .http
        .execute(OPERATION, request)
        .await
        .inspect_err(|_| endpoint.count(OPERATION, "refused"))?
        .map_err(|e| unavailable(e.without_url().to_string()))?;
    let status = response.status();
    endpoint.count(OPERATION, status.as_str());
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match (status, body.get("error").and_then(|e| e.as_str())) {
        (_, Some("invalid_client")) => Ok(false),
        // RFC 6749 5.2: a 401 is a failed client authentication, whatever the code says
        // (Keycloak answers a wrong secret with `unauthorized_client`).
        (StatusCode::UNAUTHORIZED, Some(_)) => Ok(false),
        (s, Some("invalid_grant" | "unauthorized_client" | "unsupported_grant_type"))
            if s.is_client_error() && s != StatusCode::UNAUTHORIZED =>
        {
            Ok(true)
        }
        (s, error) => Err(unavailable(format!(
            "the token endpoint answered a credential check with HTTP {} ({})",
            s.as_u16(),
            error.unwrap_or("no OAuth error code")
        ))),
    }
}

/// How often a request that lost a database transaction race is sent in all.
const SERIALIZATION_ATTEMPTS: u32 = 3;

/// A database serialization failure reported as a client error (Hydra on SQLite or Postgres
/// under concurrent writes): the transaction was rolled back, so a retry is safe.
fn is_serialization_failure(message: &str) -> bool {
    message.contains("Unable to serialize access due to a concurrent update")
        || message.contains("could not serialize access due to concurrent update")
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the servers we talk to).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl HttpEndpoint {
    /// Sends `request` within the budget and parses a successful JSON answer into `T`.
    pub async fn send<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        errors: &dyn ErrorBodies,
    ) -> Result<T, ProviderError> {
        Ok(self.send_with_headers(operation, request, errors).await?.0)
    }

    /// [`Self::send`], with the answer's headers (pagination links).
    pub async fn send_with_headers<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        errors: &dyn ErrorBodies,
    ) -> Result<(T, reqwest::header::HeaderMap), ProviderError> {
        let (bytes, headers) = self.exchange(operation, request, errors).await?;
        // Only the error's class and position: see `body_error`.
        let value = serde_json::from_slice(&bytes).map_err(|e| ProviderError::Unavailable {
            operation,
            outcome_unknown: true,
            message: body_error(&e),
        })?;
        Ok((value, headers))
    }

    /// [`Self::send`] for answers whose body does not matter (DELETE).
    pub async fn send_raw(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        errors: &dyn ErrorBodies,
    ) -> Result<(), ProviderError> {
        self.exchange(operation, request, errors).await.map(drop)
    }

    /// One request, repeated (each time within the budget) while the server answers that its
    /// database transaction lost a race: nothing was written, and a pass that failed on it
    /// would cost a Warning event, a backoff and, for a create, a look-up of what happened.
    async fn exchange(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
        errors: &dyn ErrorBodies,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), ProviderError> {
        let mut request = request.build().map_err(|e| {
            ProviderError::Unsupported(format!("building the {operation} request: {e}"))
        })?;
        let mut attempt = 1;
        loop {
            let again = (attempt < SERIALIZATION_ATTEMPTS)
                .then(|| request.try_clone())
                .flatten();
            match self.exchange_once(operation, request, errors).await {
                Err(ProviderError::Unavailable {
                    outcome_unknown: false,
                    message,
                    ..
                }) if is_serialization_failure(&message) && again.is_some() => {
                    tracing::debug!(operation, attempt, "lost a transaction race; repeating");
                    // Spread the racers apart: 20 to 60 ms, then 40 to 120 ms.
                    let base = 20 * u64::from(attempt);
                    let delay = rand::rng().random_range(base..=3 * base);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    request = again.expect("checked above");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn exchange_once(
        &self,
        operation: &'static str,
        request: reqwest::Request,
        errors: &dyn ErrorBodies,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), ProviderError> {
        let span = tracing::debug_span!(
            "provider_request",
            backend = self.backend,
            operation,
            method = %request.method(),
            path = %request.url().path()
        );
        async {
            // Held until the body is read (or this future is dropped): see BudgetPermit.
            let _permit = self.budget.acquire().await;
            if !request.method().is_safe()
                && let Err(message) = self.budget.admit_write()
            {
                self.count(operation, "fenced");
                tracing::warn!(%message, "provider write not sent");
                return Err(ProviderError::Unavailable {
                    operation,
                    outcome_unknown: false,
                    message,
                });
            }
            let start = Instant::now();
            let result = self
                .http
                .execute(operation, request)
                .await
                .inspect_err(|e| {
                    self.count(operation, "refused");
                    tracing::warn!(message = %e, "provider request not sent: egress policy");
                })?;
            let elapsed = start.elapsed();
            self.metrics
                .provider_request_duration
                .get_or_create(&OperationLabels {
                    backend: self.backend,
                    operation,
                })
                .observe(elapsed.as_secs_f64());
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    self.count(operation, if e.is_timeout() { "timeout" } else { "error" });
                    return Err(ProviderError::Unavailable {
                        operation,
                        // A connection that was never made carried no request; anything
                        // else (a timeout above all) may have been processed.
                        outcome_unknown: !e.is_connect(),
                        message: e.without_url().to_string(),
                    });
                }
            };
            let status = response.status();
            self.count(operation, status.as_str());
            let headers = response.headers().clone();
            let bytes = read_capped(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|message| ProviderError::Unavailable {
                    operation,
                    // The request was carried out, whatever its answer said.
                    outcome_unknown: true,
                    message,
                })?;
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "provider response"
            );
            if status.is_success() {
                return Ok((bytes.to_vec(), headers));
            }
            Err(self.error(operation, status, &headers, &bytes, errors))
        }
        .instrument(span)
        .await
    }

    fn error(
        &self,
        operation: &'static str,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        errors: &dyn ErrorBodies,
    ) -> ProviderError {
        match status {
            StatusCode::NOT_FOUND if errors.is_not_found(body) => {
                ProviderError::NotFound { operation }
            }
            StatusCode::REQUEST_TIMEOUT => ProviderError::Unavailable {
                operation,
                outcome_unknown: false,
                message: "HTTP 408 request timeout".into(),
            },
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after(headers);
                // Every application of this server waits, not just this one.
                self.budget
                    .pause(retry_after.unwrap_or(Duration::from_secs(1)));
                ProviderError::RateLimited {
                    operation,
                    retry_after,
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized {
                operation,
                status: status.as_u16(),
                message: bounded(errors.message(status, body)),
            },
            s if s.is_client_error() => {
                let message = bounded(errors.message(s, body));
                if is_serialization_failure(&message) {
                    // Hydra answers a database transaction that lost a race (SQLSTATE 40001,
                    // rolled back: nothing was written) with a 400: retried, not a rejection.
                    return ProviderError::Unavailable {
                        operation,
                        outcome_unknown: false,
                        message: format!("HTTP {}: {message}", s.as_u16()),
                    };
                }
                ProviderError::Rejected {
                    operation,
                    status: s.as_u16(),
                    message,
                }
            }
            s => ProviderError::Unavailable {
                operation,
                // A 5xx may come after the change was made (a gateway timing out on a slow
                // origin, a 500 after the write); 501 and 503 say it was not carried out
                // (RFC 9110), and are taken at their word.
                outcome_unknown: !matches!(
                    s,
                    StatusCode::NOT_IMPLEMENTED | StatusCode::SERVICE_UNAVAILABLE
                ),
                message: format!("HTTP {}: {}", s.as_u16(), bounded(errors.message(s, body))),
            },
        }
    }

    /// Counts one request by operation and answer.
    pub fn count(&self, operation: &'static str, status: &str) {
        self.metrics
            .provider_requests
            .get_or_create(&RequestLabels {
                backend: self.backend,
                operation,
                status: status.to_string(),
            })
            .inc();
    }
}

/// The largest provider answer read (a page of a paginated list is far smaller): a bigger
/// one is an error, not an allocation.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// The longest provider message carried into an error (and so into a condition or a log).
const MAX_MESSAGE_CHARS: usize = 1000;

/// Reads a response body of at most `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!("the answer is larger than {cap} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading response: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > cap {
            return Err(format!("the answer is larger than {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A provider's message, cut to [`MAX_MESSAGE_CHARS`] characters.
fn bounded(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}... (cut)", &message[..at]),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that answers one request with `body` (no Content-Length when
    /// `chunked`), for the body cap.
    async fn serve_once(body: Vec<u8>, declared: bool) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let head = if declared {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
        url
    }

    #[tokio::test]
    async fn answers_beyond_the_cap_are_refused_not_read() {
        for declared in [true, false] {
            let url = serve_once(vec![b'x'; 5000], declared).await;
            let response = reqwest::get(&url).await.unwrap();
            let err = read_capped(response, 4096).await.unwrap_err();
            assert!(err.contains("larger than 4096 bytes"), "{err}");
            let url = serve_once(vec![b'y'; 4096], declared).await;
            let response = reqwest::get(&url).await.unwrap();
            assert_eq!(read_capped(response, 4096).await.unwrap().len(), 4096);
        }
    }

    proptest::proptest! {
        /// Any provider message is cut to a bounded length on a character boundary.
        #[test]
        fn messages_are_bounded(message in ".{0,3000}") {
            let cut = bounded(message.clone());
            proptest::prop_assert!(cut.chars().count() <= MAX_MESSAGE_CHARS + 10);
            if message.chars().count() <= MAX_MESSAGE_CHARS {
                proptest::prop_assert_eq!(cut, message);
            }
        }
    }

    #[test]
    fn a_lost_transaction_race_is_transient() {
        // Hydra's answer (HTTP 400) when two writes race in its database.
        assert!(is_serialization_failure(
            "Unable to serialize access due to a concurrent update in another session"
        ));
        assert!(is_serialization_failure(
            "ERROR: could not serialize access due to concurrent update (SQLSTATE 40001)"
        ));
        assert!(!is_serialization_failure("invalid redirect_uri"));
    }

    #[test]
    fn next_page_from_link_header() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            r#"</admin/clients?page_size=1&page_token=abc>; rel="first",</admin/clients?page_size=1&page_token=eyJvIjoiMSJ9>; rel="next""#
                .parse()
                .unwrap(),
        );
        assert_eq!(next_page_token(&h).as_deref(), Some("eyJvIjoiMSJ9"));
        h.insert(
            reqwest::header::LINK,
            r#"</admin/clients?page_token=abc>; rel="first""#.parse().unwrap(),
        );
        assert_eq!(next_page_token(&h), None);
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }
}
