//! An emulator of Clerk's Backend API `/v1/oauth_applications` endpoints, following the
//! OpenAPI spec `bapi-2026-05-12.yml` field for field, and of the Frontend API OAuth endpoints
//! those applications' credentials are used against (`fapi-2026-05-12.yml`), for tests and
//! local runs.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clerk_emulator::{Emulator, EmulatorConfig};
//! let emu = Emulator::start(EmulatorConfig::default())?;
//! let base = emu.base_url(); // http://127.0.0.1:PORT/v1
//! let key = emu.secret_key(); // send as `Authorization: Bearer <key>`
//! let fapi = emu.frontend_api_url(); // http://127.0.0.1:PORT: /oauth/authorize, /oauth/token...
//! # let _ = (base, key, fapi);
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Backend API
//!
//! Served: `GET|POST /v1/oauth_applications`, `GET|PATCH|DELETE
//! /v1/oauth_applications/{oauth_application_id}`, `POST
//! /v1/oauth_applications/{oauth_application_id}/rotate_secret`. Test controls are methods of
//! [`EmulatorHandle`] (which [`RunningEmulator`] derefs to) and HTTP endpoints under
//! `/__emulator/` (see [`admin`]).
//!
//! Where the spec is silent or contradicts itself the emulator chooses, documented here:
//! - list order: the `order_by` parameter's schema default `+created_at` (oldest first) wins
//!   over the operation description ("ordered by descending creation date").
//! - 401 (missing/invalid secret key) and 429 (rate limit) are not declared on these
//!   operations; their bodies are `ClerkErrors`, as the spec's `AuthenticationInvalid` and
//!   `TooManyRequests` responses used by other operations.
//! - `client_secret` of a public client is `""` ("Empty if public client.").
//! - error codes are not in the spec; the emulator uses Clerk's: `resource_not_found`,
//!   `form_param_missing`, `form_param_unknown`, `form_param_format_invalid`,
//!   `form_param_value_invalid`, `form_param_exceeds_allowed_size`, `clerk_key_invalid`,
//!   `authentication_invalid`, `too_many_requests`, `malformed_request` (400).
//!
//! # Frontend API (OAuth 2.0 / OpenID Connect provider)
//!
//! Served on the same listener, at the spec's paths (no `/v1`), without the secret key:
//!
//! | endpoint | parameters | answer |
//! |---|---|---|
//! | `GET\|POST /oauth/authorize` | `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`, `code_challenge`, `code_challenge_method=S256`, `response_mode` (`query`\|`form_post`), `prompt`, `nonce` | 302 (303 after POST) to `redirect_uri?code=..&state=..`, or 200 auto-submitting form for `form_post` |
//! | `POST /oauth/token` | form: `grant_type` (`authorization_code`\|`refresh_token`), `code`, `redirect_uri`, `code_verifier`, `refresh_token`, `scope`, `client_id`, `client_secret` | [`OAuthToken`] `{access_token, token_type, expires_in, refresh_token, scope, id_token?}` |
//! | `GET\|POST /oauth/userinfo` | `Authorization: Bearer <access_token>` | [`OAuthUserInfo`] |
//! | `POST /oauth/token_info` | form: `token`, `token_type_hint`, `scope` | [`OAuthTokenInfo`] (RFC 7662) |
//! | `POST /oauth/token/revoke` | form: `token`, `token_type_hint` + client authentication | 200 (RFC 7009) |
//! | `GET /.well-known/openid-configuration` | | [`OpenIdConfiguration`], `issuer` = the Frontend API URL |
//! | `GET /.well-known/jwks.json` | | `{keys: [ES256 public JWK]}` |
//!
//! By default ([`EmulatorConfig::frontend_api_url`] `None`) the Frontend API URL is the
//! emulator itself, `http://127.0.0.1:PORT`, so the `authorize_url`, `token_fetch_url`,
//! `user_info_url`, `discovery_url` and `token_introspection_url` of every application point at
//! these endpoints and a test can run a real authorization-code flow with the credentials the
//! Backend API issued.
//!
//! Behaviour (RFC 6749, RFC 7636, OpenID Connect where the spec is silent):
//! - no user interaction: a valid authorization request is approved at once for the
//!   configured [`EmulatedUser`] (`consent_screen_enabled` and `prompt` change nothing).
//! - `client_id` missing or unknown, or `redirect_uri` not exactly one of the application's
//!   `redirect_uris` (optional when it has exactly one): answered directly, never redirected
//!   (RFC 6749 section 4.1.2.1): 401 `invalid_client` for an unknown client (the spec's 401
//!   "the provided client is invalid"), else 400 `invalid_request`; body `{error,
//!   error_description}`. Every other error is redirected with `error`, `error_description`
//!   and `state`: `invalid_request`, `unsupported_response_type`, `invalid_scope`.
//! - `scope` must be a subset of the application's `scopes`; omitted, it is `profile email`
//!   (the spec's default), so an application without both needs an explicit `scope`.
//! - `state`, when sent, has at least 8 characters, and is required unless PKCE is used (the
//!   spec). PKCE: `code_challenge_method` must be `S256`; a challenge is required when the
//!   application is `public` or `pkce_required`; a code issued with a challenge needs the
//!   matching `code_verifier`, and a `code_verifier` without a challenge is refused.
//! - codes are single use, bound to the client and redirect URI, and live
//!   [`EmulatorConfig::authorization_code_ttl`] (10 minutes, as Clerk). Replaying a code
//!   revokes every token issued from it (RFC 6749 section 4.1.2).
//! - client authentication: `client_secret_basic` or `client_secret_post` with the
//!   application's *current* secret (a rotated-out secret fails) for confidential clients;
//!   `client_id` alone for public clients (which must not send a secret). Both methods at
//!   once is `invalid_request`. Failures: 401 `invalid_client` with `WWW-Authenticate: Basic`.
//! - token errors (RFC 6749 section 5.2): 400 `invalid_request`, `invalid_grant` (unknown,
//!   spent, expired or foreign code or refresh token; redirect URI or verifier mismatch),
//!   `invalid_scope`, `unsupported_grant_type` (the spec's 400 description lists an invalid
//!   `grant_type` although its enum does not). Token answers carry `Cache-Control: no-store`.
//! - tokens are opaque CSPRNG strings with the spec examples' prefixes (`clk_code_`, `oat_`,
//!   `clk_refresh_`); access tokens live [`EmulatorConfig::access_token_ttl`] (1 day, as
//!   Clerk), refresh tokens do not expire but rotate on use. Every grant gets a refresh
//!   token. The emulator keeps only SHA-256 digests of them.
//! - `openid` adds an `id_token` (claims `iss`, `sub`, `aud`, `iat`, `exp`, `nonce`, and the
//!   scopes' user claims) signed ES256 with a key generated at start, published at
//!   `/.well-known/jwks.json` (Clerk signs RS256; see the `jwt` module).
//! - userinfo answers the scopes' claims; errors are 401 `ClerkErrors` (code
//!   `authentication_invalid`, as the spec declares) with an RFC 6750 `WWW-Authenticate:
//!   Bearer` challenge. Tokens of a deleted application stop working.
//!
//! Request counting, the request log and fault injection cover these routes too (templates in
//! [`routes`]); the global delay and the rate limit apply to the Backend API only. The log
//! never holds credentials: the values of `code`, `client_secret`, `access_token`,
//! `refresh_token`, `code_verifier`, `token`... query parameters are `REDACTED`, and bodies
//! and headers are not recorded.

pub mod admin;
mod api;
mod control;
mod errors;
mod fapi;
mod grants;
mod jwt;
pub mod model;
mod store;

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use crate::control::{Fault, FaultAction, RateLimit, RequestRecord, RouteCount, routes};
pub use crate::model::{
    ClerkError, ClerkErrors, DeletedObject, EmulatedUser, NewOAuthApplication, OAuthApplication,
    OAuthApplicationWithSecret, OAuthApplications, OAuthError, OAuthToken, OAuthTokenInfo,
    OAuthUserInfo, OpenIdConfiguration,
};
pub use crate::store::DEFAULT_SCOPES;

use crate::api::{ConnKill, Shared, lock};
use crate::control::Control;
use crate::grants::Grants;
use crate::jwt::Signer;
use crate::store::{Endpoints, Store, random_string};

/// A Frontend API URL that is not the emulator (`.test` never resolves): the former default,
/// for `EmulatorConfig::default().with_frontend_api_url(DEFAULT_FRONTEND_API_URL)`.
pub const DEFAULT_FRONTEND_API_URL: &str = "https://clerk.emulator.test";

/// Clerk's authorization code lifetime ("10 minutes").
pub const DEFAULT_AUTHORIZATION_CODE_TTL: Duration = Duration::from_secs(600);
/// Clerk's access token lifetime ("1 day (86400 seconds)").
pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// How to start an emulator.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Must be a loopback address; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The accepted `Authorization: Bearer` key; `None` generates `sk_test_<random>`.
    pub secret_key: Option<String>,
    /// Base of `authorize_url`, `token_fetch_url`, ... and the OpenID issuer. `None` (the
    /// default): the emulator itself, `http://127.0.0.1:PORT`, whose listener serves the
    /// Frontend API OAuth endpoints. `Some(url)`: URLs under `url` (e.g.
    /// [`DEFAULT_FRONTEND_API_URL`]); the endpoints are still served on the listener.
    pub frontend_api_url: Option<String>,
    /// `ins_...`; `None` generates one.
    pub instance_id: Option<String>,
    /// Initial rate limit (changeable later with [`EmulatorHandle::set_rate_limit`]).
    pub rate_limit: Option<RateLimit>,
    /// Initial delay of every API response (see [`EmulatorHandle::set_delay`]).
    pub delay: Option<Duration>,
    /// The user every authorization is approved for.
    pub user: EmulatedUser,
    /// Lifetime of authorization codes. Default [`DEFAULT_AUTHORIZATION_CODE_TTL`].
    pub authorization_code_ttl: Duration,
    /// Lifetime of access tokens (`expires_in`). Default [`DEFAULT_ACCESS_TOKEN_TTL`].
    pub access_token_ttl: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            secret_key: None,
            frontend_api_url: None,
            instance_id: None,
            rate_limit: None,
            delay: None,
            user: EmulatedUser::default(),
            authorization_code_ttl: DEFAULT_AUTHORIZATION_CODE_TTL,
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL,
        }
    }
}

impl EmulatorConfig {
    /// Listen on `127.0.0.1:port`.
    pub fn with_port(mut self, port: u16) -> Self {
        self.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self
    }

    pub fn with_secret_key(mut self, key: impl Into<String>) -> Self {
        self.secret_key = Some(key.into());
        self
    }

    /// Derive the applications' OAuth URLs from `url` instead of the emulator's own address.
    pub fn with_frontend_api_url(mut self, url: impl Into<String>) -> Self {
        self.frontend_api_url = Some(url.into());
        self
    }

    pub fn with_user(mut self, user: EmulatedUser) -> Self {
        self.user = user;
        self
    }

    pub fn with_rate_limit(mut self, requests: u32, window: Duration) -> Self {
        self.rate_limit = Some(RateLimit { requests, window });
        self
    }
}

/// Entry point: [`Emulator::start`].
pub struct Emulator;

impl Emulator {
    /// Binds the listener and serves in the background on the current Tokio runtime (so call
    /// it from within one, e.g. a `#[tokio::test]`).
    pub fn start(config: EmulatorConfig) -> anyhow::Result<RunningEmulator> {
        anyhow::ensure!(
            config.listen.ip().is_loopback(),
            "the Clerk emulator binds loopback addresses only, not {}",
            config.listen.ip()
        );
        let runtime = tokio::runtime::Handle::try_current()
            .context("Emulator::start must be called within a Tokio runtime")?;
        let std_listener = std::net::TcpListener::bind(config.listen)
            .with_context(|| format!("binding {}", config.listen))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;

        let secret_key = config
            .secret_key
            .unwrap_or_else(|| format!("sk_test_{}", random_string(40)));
        let instance_id = config
            .instance_id
            .unwrap_or_else(|| format!("ins_{}", random_string(27)));
        let mut control = Control::default();
        control.set_rate_limit(config.rate_limit);
        control.delay = config.delay;
        let frontend_api_url = config
            .frontend_api_url
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let shared = Arc::new(Shared {
            secret_key,
            store: Mutex::new(Store::new(instance_id, Endpoints::new(&frontend_api_url))),
            frontend_api_url,
            control: Mutex::new(control),
            grants: Mutex::new(Grants::default()),
            signer: Signer::generate()?,
            user: config.user,
            code_ttl: config.authorization_code_ttl,
            access_token_ttl: config.access_token_ttl,
        });

        let app = Router::new()
            .fallback(api::dispatch)
            .with_state(shared.clone())
            .nest("/__emulator", admin::router(shared.clone()));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "clerk-emulator: cannot register the listener");
                    return;
                }
            };
            serve(listener, app, shutdown_rx).await;
        });
        Ok(RunningEmulator {
            handle: EmulatorHandle { shared, addr },
            shutdown_tx,
            task: Some(task),
        })
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "clerk-emulator: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let app = app.clone();
        let mut shutdown = shutdown.clone();
        connections.spawn(async move {
            let kill = Arc::new(Notify::new());
            let hook = ConnKill(kill.clone());
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(hook.clone());
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req.map(Body::new)).await }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // A "drop" fault: dropping the connection future closes the socket unanswered.
                _ = kill.notified() => {}
                _ = shutdown.changed() => {}
            }
        });
    }
    connections.abort_all();
}

pub(crate) fn reset_shared(shared: &Shared) {
    lock(&shared.store).clear();
    lock(&shared.grants).clear();
    let mut control = lock(&shared.control);
    control.reset_requests();
    control.faults.clear();
    control.delay = None;
    control.set_rate_limit(None);
}

/// A cloneable handle on a running emulator's state and test controls.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// The bound address (always loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the counterpart of `https://api.clerk.com/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT/__emulator`, the admin endpoints.
    pub fn admin_url(&self) -> String {
        format!("http://{}/__emulator", self.addr)
    }

    /// The accepted secret key (`Authorization: Bearer <key>`).
    pub fn secret_key(&self) -> &str {
        &self.shared.secret_key
    }

    /// The `instance_id` of every application.
    pub fn instance_id(&self) -> String {
        lock(&self.shared.store).instance_id().to_owned()
    }

    /// The Frontend API URL (no trailing slash), also the OpenID issuer: by default
    /// `http://127.0.0.1:PORT`, this emulator.
    pub fn frontend_api_url(&self) -> &str {
        &self.shared.frontend_api_url
    }

    /// `{frontend_api_url}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.shared.frontend_api_url
        )
    }

    /// The discovery document the emulator serves.
    pub fn openid_configuration(&self) -> OpenIdConfiguration {
        fapi::openid_configuration(&self.shared.frontend_api_url)
    }

    /// The user every authorization is approved for.
    pub fn emulated_user(&self) -> &EmulatedUser {
        &self.shared.user
    }

    /// Live (unexpired, unrevoked) access and refresh tokens.
    pub fn live_oauth_tokens(&self) -> usize {
        lock(&self.shared.grants).live_tokens(std::time::Instant::now())
    }

    /// Revokes every authorization code, access token and refresh token.
    pub fn revoke_oauth_tokens(&self) {
        lock(&self.shared.grants).clear();
    }

    // ----- state -----

    /// Snapshot of every application, in creation order.
    pub fn apps(&self) -> Vec<OAuthApplication> {
        lock(&self.shared.store).all()
    }

    pub fn app(&self, id: &str) -> Option<OAuthApplication> {
        lock(&self.shared.store).get(id)
    }

    /// The application with this OAuth `client_id`.
    pub fn app_by_client_id(&self, client_id: &str) -> Option<OAuthApplication> {
        self.apps().into_iter().find(|a| a.client_id == client_id)
    }

    /// Creates an application directly, as the dashboard would (not counted as a request).
    /// The input is not validated.
    pub fn create_app(&self, new: NewOAuthApplication) -> OAuthApplicationWithSecret {
        lock(&self.shared.store).create(new)
    }

    /// Edits an application directly (a dashboard edit; not counted as a request). `id` cannot
    /// change; `updated_at` moves unless the closure sets it; making it public discards its
    /// secret. Returns the edited application, or `None` for an unknown id.
    pub fn edit_app<F: FnOnce(&mut OAuthApplication)>(
        &self,
        id: &str,
        f: F,
    ) -> Option<OAuthApplication> {
        lock(&self.shared.store).edit(id, f)
    }

    /// Deletes an application directly (a dashboard deletion). False for an unknown id.
    pub fn delete_app(&self, id: &str) -> bool {
        lock(&self.shared.store).delete(id)
    }

    /// Whether `secret` is the current client secret of the application with `client_id`.
    pub fn secret_is_valid(&self, client_id: &str, secret: &str) -> bool {
        lock(&self.shared.store).secret_is_valid(client_id, secret)
    }

    // ----- requests -----

    /// Requests received (Backend and Frontend API, every outcome; admin requests are not
    /// counted) since start or the last reset.
    pub fn total_requests(&self) -> u64 {
        lock(&self.shared.control).total
    }

    /// Requests for `method` (case-insensitive) on a route template of [`routes`].
    pub fn request_count(&self, method: &str, route: &str) -> u64 {
        let key = (method.to_ascii_uppercase(), route.to_owned());
        lock(&self.shared.control)
            .counts
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Counts per `(method, route)`.
    pub fn request_counts(&self) -> Vec<RouteCount> {
        lock(&self.shared.control).counts()
    }

    /// The request log, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.control).log.clone()
    }

    /// Clears counters and the log.
    pub fn reset_requests(&self) {
        lock(&self.shared.control).reset_requests();
    }

    // ----- faults -----

    /// Adds a fault rule; rules are tried in insertion order, the first match fires.
    pub fn inject_fault(&self, fault: Fault) {
        lock(&self.shared.control).faults.push(fault);
    }

    /// Fails the next `times` requests matching `method` and `route` (a [`routes`] template)
    /// with `status` and a Clerk error body (429 also gets `Retry-After: 1`); 400 and 401 on
    /// `/oauth/token`, `/oauth/token_info` and `/oauth/token/revoke` answer an RFC 6749
    /// `{error, error_description}` body (`invalid_request` / `invalid_client`).
    pub fn fail_next(&self, times: u32, method: &str, route: &str, status: u16) {
        self.inject_fault(Fault {
            method: Some(method.to_ascii_uppercase()),
            route: Some(route.to_owned()),
            times,
            action: FaultAction::Status {
                status,
                code: None,
                message: None,
                retry_after: None,
            },
        });
    }

    /// Handles the next `times` matching requests (their effect is committed), then waits
    /// `delay` before answering: a client timing out meanwhile never learns the outcome.
    pub fn commit_then_delay_next(&self, times: u32, method: &str, route: &str, delay: Duration) {
        self.inject_fault(Fault {
            method: Some(method.to_ascii_uppercase()),
            route: Some(route.to_owned()),
            times,
            action: FaultAction::CommitThenDelay {
                millis: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
        });
    }

    /// Delays the next `times` matching requests by `delay`, then answers normally.
    pub fn delay_next(&self, times: u32, method: &str, route: &str, delay: Duration) {
        self.inject_fault(Fault {
            method: Some(method.to_ascii_uppercase()),
            route: Some(route.to_owned()),
            times,
            action: FaultAction::Delay {
                millis: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
        });
    }

    /// Closes the connection without an answer for the next `times` matching requests.
    pub fn drop_next(&self, times: u32, method: &str, route: &str) {
        self.inject_fault(Fault {
            method: Some(method.to_ascii_uppercase()),
            route: Some(route.to_owned()),
            times,
            action: FaultAction::Drop,
        });
    }

    /// Pending fault rules.
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.shared.control).faults.clone()
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.control).faults.clear();
    }

    /// Delays every Backend API response (`None` to stop).
    pub fn set_delay(&self, delay: Option<Duration>) {
        lock(&self.shared.control).delay = delay;
    }

    /// Backend API: `requests` per `window` (fixed window), then 429 with `Retry-After`
    /// (`None` to stop).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        lock(&self.shared.control).set_rate_limit(limit);
    }

    /// Deletes every application, revokes every OAuth code and token, and clears counters,
    /// log, faults, delay and rate limit.
    pub fn reset(&self) {
        reset_shared(&self.shared);
    }
}

/// A running emulator; derefs to its [`EmulatorHandle`]. Dropping it stops the server.
pub struct RunningEmulator {
    handle: EmulatorHandle,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("addr", &self.handle.addr)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// A cloneable handle, usable after this value moves.
    pub fn handle(&self) -> EmulatorHandle {
        self.handle.clone()
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Deref for RunningEmulator {
    type Target = EmulatorHandle;

    fn deref(&self) -> &EmulatorHandle {
        &self.handle
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
