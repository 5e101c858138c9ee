//! RFC 7591 dynamic client registration, with RFC 7592 management where the server offers it
//! (node `oidc-provider`, Keycloak, Ory Hydra, Okta, ...).
//!
//! The server chooses the client id and issues the secret once. Its registration answer may
//! also carry the client's management credentials (`registration_client_uri` +
//! `registration_access_token`); those are saved to the [`AccessStore`] before anything else
//! happens, and again after every management call whose answer hands out a new token, since
//! servers rotate it (oidc-provider, Keycloak and Hydra on every update; RFC 7592 allows it on
//! any call) and the old one dies at once: a token that is not saved is lost, and with it
//! every way to read, update or delete the client. RFC 7591 has no owner field and no search,
//! so a registration whose answer was lost cannot be found again ([`OwnerMarker::Unmarked`]).
//!
//! An update is a read followed by a full replacement (RFC 7592 section 2.2): the body is the
//! client as the server just described it, with the managed fields replaced, so fields the
//! operator does not manage, and a `client_secret` the server returns, are sent back as
//! they are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::discovery::{ServerMetadata, discover, well_known_urls};
use super::http::{ErrorBodies, HttpEndpoint, ProviderHttp, body_error, client_authenticates};
use super::{
    AccessStore, Backend, Capabilities, DesiredClient, DriftSource, Identity, IssuedClient,
    OwnerMarker, ProviderError, Registration, RegistrationAccess, RemoteClient,
    RequestBudgetLimiter, Rotation, SecretSource, as_set, diff_flags,
};
use crate::api::Endpoints;
use crate::telemetry::Metrics;

const BACKEND: &str = "dynamicRegistration";

/// Fields of a registration answer that the server alone sets: RFC 7592 section 2.2 forbids
/// sending them back in an update.
const SERVER_ONLY_FIELDS: [&str; 4] = [
    "registration_access_token",
    "registration_client_uri",
    "client_secret_expires_at",
    "client_id_issued_at",
];

/// How the operator talks to one RFC 7591 server.
#[derive(Clone, Debug)]
pub struct DcrSettings {
    /// The issuer; its discovery document names the endpoints.
    pub issuer_url: String,
    /// The registration endpoint, where the discovery document names none or the wrong one.
    pub registration_endpoint: Option<String>,
    /// RFC 7591 section 3: the bearer token a server may require for registration.
    pub initial_access_token: Option<SecretString>,
    pub software_id: Option<String>,
    /// RFC 7591 section 2.3: a signed JWT asserting the client's metadata.
    pub software_statement: Option<SecretString>,
    /// Whether a new secret may be had by registering a new client (and deleting the old
    /// one): RFC 7591 has no other way to rotate.
    pub recreate: bool,
}

/// An RFC 7592 answer, with the owner the operator's record of that client names.
struct Managed {
    answer: Map<String, Value>,
    owner_uid: Option<String>,
}

/// An RFC 7591 / RFC 7592 client for one authorization server.
pub struct DynamicRegistrationClient {
    endpoint: HttpEndpoint,
    issuer: String,
    registration_override: Option<url::Url>,
    initial_access_token: Option<SecretString>,
    software_id: Option<String>,
    software_statement: Option<SecretString>,
    recreate: bool,
    store: Arc<dyn AccessStore>,
    /// Read once; a failed read is tried again on the next call.
    server: tokio::sync::OnceCell<ServerMetadata>,
    /// One management call per client at a time: two calls racing with the same token would
    /// leave one of them holding a token the other one's answer already replaced.
    client_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The request body of a registration (RFC 7591 section 2), and the managed part of an
/// update (RFC 7592 section 2.2). No `Debug`: it carries the software statement.
#[derive(Serialize)]
struct ClientMetadata<'a> {
    redirect_uris: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    post_logout_redirect_uris: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    grant_types: Vec<String>,
    response_types: Vec<&'static str>,
    token_endpoint_auth_method: &'static str,
    client_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    software_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    software_statement: Option<&'a str>,
}

/// A client information response (RFC 7591 section 3.2.1, RFC 7592 section 3), as far as the
/// operator reads it (unknown fields ignored). Missing fields take RFC 7591's defaults.
#[derive(Deserialize)]
struct ClientInformation {
    client_id: String,
    #[serde(default)]
    client_secret: Option<SecretString>,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    post_logout_redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    client_id_issued_at: Option<Value>,
    #[serde(default)]
    client_secret_expires_at: Option<Value>,
    /// Not RFC 7591: Hydra's RFC 3339 creation time (it sends no `client_id_issued_at`).
    #[serde(default)]
    created_at: Option<Value>,
}

/// RFC 7591 section 3.2.2 error bodies: `{"error": ..., "error_description": ...}`.
struct DcrErrorBodies;

#[derive(Deserialize, Default)]
struct DcrError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl ErrorBodies for DcrErrorBodies {
    fn is_not_found(&self, body: &[u8]) -> bool {
        // The server's own JSON error; a proxy's or a wrong base URL's 404 is not "gone".
        serde_json::from_slice::<DcrError>(body).is_ok_and(|e| !e.error.is_empty())
    }

    fn message(&self, status: StatusCode, body: &[u8]) -> String {
        let e: DcrError = serde_json::from_slice(body).unwrap_or_default();
        // Both are the server's words about our request; cut them short in case a server
        // quotes a request value at length.
        let clip = |s: String| -> String {
            if s.chars().count() > 300 {
                s.chars().take(300).chain("...".chars()).collect()
            } else {
                s
            }
        };
        match (e.error.is_empty(), e.error_description.is_empty()) {
            (true, _) => status.canonical_reason().unwrap_or("error").to_string(),
            (false, true) => clip(e.error),
            (false, false) => clip(format!("{}: {}", e.error, e.error_description)),
        }
    }
}

fn grant_types(desired: &DesiredClient) -> Vec<String> {
    if desired.grant_types.is_empty() {
        vec!["authorization_code".into(), "refresh_token".into()]
    } else {
        desired.grant_types.clone()
    }
}

impl<'a> ClientMetadata<'a> {
    fn new(
        desired: &'a DesiredClient,
        software_id: Option<&'a str>,
        software_statement: Option<&'a SecretString>,
    ) -> Self {
        let grants = grant_types(desired);
        let response_types = if grants.iter().any(|g| g == "authorization_code") {
            vec!["code"]
        } else {
            vec![]
        };
        Self {
            redirect_uris: &desired.redirect_uris,
            post_logout_redirect_uris: &desired.post_logout_redirect_uris,
            scope: (!desired.scopes.is_empty()).then(|| desired.scopes.join(" ")),
            grant_types: grants,
            response_types,
            token_endpoint_auth_method: if desired.public {
                "none"
            } else {
                "client_secret_basic"
            },
            client_name: &desired.name,
            software_id,
            software_statement: software_statement.map(|s| s.expose_secret()),
        }
    }
}

/// The body of an RFC 7592 update: the client as the server last described it (RFC 7592
/// section 2.2: "all client metadata fields as returned"; an omitted field may be reset to a
/// default), without the fields only the server sets, with the managed fields replaced by
/// the desired ones. What the spec leaves unmanaged (the scope when it names none, fields
/// the operator has no notion of) stays as the server has it, and so does a `client_secret`
/// the server returned, for servers that want it repeated.
fn update_body(current: &Map<String, Value>, client_id: &str, managed: &ClientMetadata) -> Value {
    let mut body = current.clone();
    for field in SERVER_ONLY_FIELDS {
        body.remove(field);
    }
    if let Ok(Value::Object(managed)) = serde_json::to_value(managed) {
        body.extend(managed);
    }
    // Omitted from a registration when empty, but an update must clear what is there.
    if managed.post_logout_redirect_uris.is_empty() {
        body.insert("post_logout_redirect_uris".into(), Value::Array(vec![]));
    }
    body.insert("client_id".into(), Value::String(client_id.to_string()));
    Value::Object(body)
}

/// The management credentials in a client information response, if it carries a token. A
/// read or update answer may leave the URI out; it then stays `fallback_uri`.
fn access_in(
    answer: &Map<String, Value>,
    fallback_uri: Option<&str>,
) -> Result<Option<RegistrationAccess>, ProviderError> {
    let Some(token) = answer
        .get("registration_access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    let Some(client_uri) = answer
        .get("registration_client_uri")
        .and_then(Value::as_str)
        .or(fallback_uri)
    else {
        return Ok(None);
    };
    Ok(Some(RegistrationAccess {
        client_uri: checked_client_uri(client_uri)?.to_string(),
        token: SecretString::from(token.to_string()),
        owner_uid: None,
    }))
}

/// A `registration_client_uri` the bearer token may be sent to: an absolute http(s) URL
/// without credentials or fragment.
fn checked_client_uri(uri: &str) -> Result<url::Url, ProviderError> {
    let invalid = |why: &str| {
        ProviderError::Unsupported(format!("the registration_client_uri {why}: not used"))
    };
    let url = url::Url::parse(uri).map_err(|_| invalid("is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(invalid("is not an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(invalid("carries credentials or a fragment"));
    }
    Ok(url)
}

fn object(answer: Value, operation: &'static str) -> Result<Map<String, Value>, ProviderError> {
    match answer {
        Value::Object(map) => Ok(map),
        _ => Err(ProviderError::Unavailable {
            operation,
            outcome_unknown: true,
            message: "unexpected response body (not a JSON object)".into(),
        }),
    }
}

fn information(
    answer: &Map<String, Value>,
    operation: &'static str,
) -> Result<ClientInformation, ProviderError> {
    // A clone, not `from_value(Value)` on the answer itself: callers keep the answer.
    serde_json::from_value(Value::Object(answer.clone())).map_err(|e| ProviderError::Unavailable {
        operation,
        outcome_unknown: true,
        message: body_error(&e),
    })
}

/// What a refused registration access token means. RFC 7592 section 2 gives a server the
/// same answer (401 `invalid_token`) for a revoked token and for a deleted client, so it is
/// never taken for "the client is gone": that would register a second client next to one
/// that may still exist.
fn management_error(e: ProviderError, client_id: &str) -> ProviderError {
    match e {
        ProviderError::Unauthorized {
            operation,
            status: 401,
            message,
        } => ProviderError::Unauthorized {
            operation,
            status: 401,
            message: format!(
                "{message}; the server refused the registration access token of client \
                 {client_id}: RFC 7592 answers this way both when the token was revoked and \
                 when the client was deleted, so whether the client still exists is unknown"
            ),
        },
        ProviderError::Unauthorized {
            operation,
            status,
            message,
        } => ProviderError::Unauthorized {
            operation,
            status,
            message: format!(
                "{message}; the registration access token of client {client_id} does not \
                 allow {operation}"
            ),
        },
        e => e,
    }
}

fn no_access(client_id: &str) -> ProviderError {
    ProviderError::Unsupported(format!(
        "client {client_id} has no RFC 7592 management access recorded (the server issued no \
         registration access token, or it could not be saved), so the operator cannot read, \
         update or delete it"
    ))
}

impl DynamicRegistrationClient {
    pub fn new(
        http: impl Into<ProviderHttp>,
        settings: DcrSettings,
        store: Arc<dyn AccessStore>,
        budget: Arc<RequestBudgetLimiter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        // Fails early on an issuer that cannot have a discovery document.
        well_known_urls(&settings.issuer_url)?;
        let registration_override = settings
            .registration_endpoint
            .as_deref()
            .map(|e| {
                let url = url::Url::parse(e).map_err(|e| {
                    ProviderError::Unsupported(format!("invalid registration endpoint: {e}"))
                })?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(ProviderError::Unsupported(
                        "the registration endpoint must be an http(s) URL".into(),
                    ));
                }
                Ok(url)
            })
            .transpose()?;
        Ok(Self {
            endpoint: HttpEndpoint {
                http: http.into(),
                budget,
                metrics,
                backend: BACKEND,
            },
            issuer: settings.issuer_url,
            registration_override,
            initial_access_token: settings.initial_access_token,
            software_id: settings.software_id,
            software_statement: settings.software_statement,
            recreate: settings.recreate,
            store,
            server: tokio::sync::OnceCell::new(),
            client_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer's metadata, read on first use.
    async fn server(&self) -> Result<&ServerMetadata, ProviderError> {
        self.server
            .get_or_try_init(|| discover(&self.endpoint, &self.issuer))
            .await
    }

    fn registration_url(&self, server: &ServerMetadata) -> Result<url::Url, ProviderError> {
        if let Some(url) = &self.registration_override {
            return Ok(url.clone());
        }
        let advertised = server.registration_endpoint.as_deref().ok_or_else(|| {
            ProviderError::Unsupported(format!(
                "{} advertises no registration_endpoint: the server does not offer RFC 7591 \
                 registration, or its endpoint must be configured",
                self.issuer
            ))
        })?;
        url::Url::parse(advertised).map_err(|e| {
            ProviderError::Unsupported(format!(
                "the advertised registration_endpoint is not a URL: {e}"
            ))
        })
    }

    fn client_lock(&self, client_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means another thread panicked while inserting: the map itself
        // is still a valid map of locks.
        let mut locks = self
            .client_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Locks nobody holds or waits for are dropped, so the map stays as small as the
        // number of calls in flight.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(client_id.to_string()).or_default().clone()
    }

    async fn access(&self, client_id: &str) -> Result<RegistrationAccess, ProviderError> {
        self.store
            .load(client_id)
            .await?
            .ok_or_else(|| no_access(client_id))
    }

    /// Saves the token a management answer handed out before anything else is done with
    /// the answer. Failing that, the access is lost (the server already replaced the old
    /// token), which is said plainly.
    async fn keep_rotated(
        &self,
        operation: &'static str,
        client_id: &str,
        old: &RegistrationAccess,
        answer: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let new = match access_in(answer, Some(&old.client_uri)) {
            Ok(new) => new,
            // An unusable URI in the answer: the new token still works at the old one.
            Err(_) => answer
                .get("registration_access_token")
                .and_then(Value::as_str)
                .map(|token| RegistrationAccess {
                    client_uri: old.client_uri.clone(),
                    token: SecretString::from(token.to_string()),
                    owner_uid: None,
                }),
        };
        let Some(new) = new else {
            return Ok(());
        };
        if new.token.expose_secret() == old.token.expose_secret()
            && new.client_uri == old.client_uri
        {
            return Ok(());
        }
        self.store
            .save(client_id, None, &new)
            .await
            .map_err(|e| ProviderError::Unavailable {
                operation,
                outcome_unknown: false,
                message: format!(
                    "the server handed out a new registration access token for client \
                     {client_id} and saving it failed ({e}): the old one no longer works, so \
                     management access to this client is lost"
                ),
            })
    }

    /// One RFC 7592 call with the client's registration access token; a new token in the
    /// answer is saved before the answer is returned.
    async fn manage(
        &self,
        operation: &'static str,
        method: Method,
        client_id: &str,
        body: Option<&Value>,
    ) -> Result<Managed, ProviderError> {
        let access = self.access(client_id).await?;
        let mut request = self
            .endpoint
            .http
            .request(method, checked_client_uri(&access.client_uri)?)
            .bearer_auth(access.token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer: Value = self
            .endpoint
            .send(operation, request, &DcrErrorBodies)
            .await
            .map_err(|e| management_error(e, client_id))?;
        let answer = object(answer, operation)?;
        self.keep_rotated(operation, client_id, &access, &answer)
            .await?;
        let answered_for = answer.get("client_id").and_then(Value::as_str);
        if answered_for != Some(client_id) {
            return Err(ProviderError::Rejected {
                operation,
                status: 200,
                message: format!(
                    "the registration_client_uri of client {client_id} answered for another \
                     client ({answered_for:?})"
                ),
            });
        }
        Ok(Managed {
            answer,
            owner_uid: access.owner_uid,
        })
    }

    fn remote(&self, info: ClientInformation) -> RemoteClient {
        RemoteClient {
            id: info.client_id.clone(),
            client_id: info.client_id,
            name: info.client_name.unwrap_or_default(),
            redirect_uris: info.redirect_uris.unwrap_or_default(),
            post_logout_redirect_uris: info.post_logout_redirect_uris.unwrap_or_default(),
            scopes: info
                .scope
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            // RFC 7591 section 2: omitted means `authorization_code`.
            grant_types: info
                .grant_types
                .unwrap_or_else(|| vec!["authorization_code".into()]),
            owner_uid: None,
            // RFC 7591 section 2: omitted means `client_secret_basic`.
            public: info.token_endpoint_auth_method.as_deref() == Some("none"),
            // RFC 7591 has no metadata for either; `check_supported` keeps them unmanaged.
            pkce_required: false,
            consent_screen: true,
            endpoints: self.endpoints().unwrap_or_default().into(),
            created_at: info
                .client_id_issued_at
                .as_ref()
                .and_then(Value::as_i64)
                .and_then(|s| Timestamp::from_second(s).ok())
                .or_else(|| {
                    info.created_at
                        .as_ref()
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse().ok())
                }),
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }
}

#[async_trait::async_trait]
impl Backend for DynamicRegistrationClient {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            identity: Identity::ServerAssigned,
            secret_source: SecretSource::IssuedOnce,
            rotation: if self.recreate {
                Rotation::Recreate
            } else {
                Rotation::Unavailable
            },
            drift: DriftSource::GetEach,
            owner_marker: OwnerMarker::Unmarked,
            given_credentials: false,
            grace_period: false,
            new_client: true,
        }
    }

    fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError> {
        if desired.pkce_required == Some(true) {
            return Err(ProviderError::Unsupported(
                "RFC 7591 client metadata cannot require PKCE (servers enforce it server-wide, if at all): leave pkceRequired unset".into(),
            ));
        }
        if desired.consent_screen.is_some() {
            return Err(ProviderError::Unsupported(
                "RFC 7591 client metadata has no consent setting (the server decides whether to ask): leave consentScreen unset".into(),
            ));
        }
        Ok(())
    }

    fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
        let set = as_set;
        let mut fields = Vec::new();
        if desired.name != remote.name {
            fields.push("name");
        }
        if set(&desired.redirect_uris) != set(&remote.redirect_uris) {
            fields.push("redirectUris");
        }
        // A client without post-logout redirect URIs may read back with its redirect URIs
        // there: Keycloak's default ("+", the same as the redirect URIs), which an update
        // sending none cannot change.
        let post_logout_unset = desired.post_logout_redirect_uris.is_empty()
            && set(&remote.post_logout_redirect_uris) == set(&remote.redirect_uris);
        if !post_logout_unset
            && set(&desired.post_logout_redirect_uris) != set(&remote.post_logout_redirect_uris)
        {
            fields.push("postLogoutRedirectUris");
        }
        // No scopes in the spec: the server's defaults stand, unmanaged.
        if !desired.scopes.is_empty() && set(&desired.scopes) != set(&remote.scopes) {
            fields.push("scopes");
        }
        if set(&grant_types(desired)) != set(&remote.grant_types) {
            fields.push("grantTypes");
        }
        diff_flags(desired, remote, &mut fields);
        fields
    }

    async fn create(
        &self,
        desired: &DesiredClient,
        registration: &Registration<'_>,
    ) -> Result<IssuedClient, ProviderError> {
        const OPERATION: &str = "create";
        let server = self.server().await?;
        let mut request = self
            .endpoint
            .http
            .request(Method::POST, self.registration_url(server)?)
            .json(&ClientMetadata::new(
                desired,
                self.software_id.as_deref(),
                self.software_statement.as_ref(),
            ));
        if let Some(token) = &self.initial_access_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let answer: Value = self
            .endpoint
            .send(OPERATION, request, &DcrErrorBodies)
            .await?;
        let answer = object(answer, OPERATION)?;
        let info = information(&answer, OPERATION)?;
        // The access first: the secret in the answer is kept by the caller, the token only
        // here. A failed save still returns the client, whose secret matters most; later
        // management calls then say that the access is missing.
        match access_in(&answer, None) {
            Ok(Some(access)) => {
                if let Err(e) = self
                    .store
                    .save(&info.client_id, Some(registration.owner_uid), &access)
                    .await
                {
                    tracing::warn!(
                        client_id = %info.client_id,
                        error = %e,
                        "saving the registration access token failed: the client cannot be read, updated or deleted through RFC 7592"
                    );
                }
            }
            Ok(None) => tracing::warn!(
                client_id = %info.client_id,
                "the server issued no registration access token: the client cannot be read, updated or deleted through RFC 7592"
            ),
            Err(e) => tracing::warn!(
                client_id = %info.client_id,
                error = %e,
                "the registration answer carries unusable management access"
            ),
        }
        if info
            .client_secret_expires_at
            .as_ref()
            .and_then(Value::as_i64)
            .is_some_and(|t| t > 0)
        {
            tracing::warn!(
                client_id = %info.client_id,
                "the server issued a client secret that expires (client_secret_expires_at): it must be replaced by a new registration before then"
            );
        }
        let mut info = info;
        let secret = info.client_secret.take();
        let client = self.remote(info);
        if !client.public && secret.is_none() {
            tracing::warn!(
                client_id = %client.client_id,
                "the server registered a confidential client without issuing a client_secret"
            );
        }
        Ok(IssuedClient {
            client_secret: if client.public { None } else { secret },
            client,
        })
    }

    async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError> {
        self.server().await?;
        let lock = self.client_lock(id);
        let _serialised = lock.lock().await;
        let managed = self.manage("get", Method::GET, id, None).await?;
        let mut client = self.remote(information(&managed.answer, "get")?);
        // The server keeps no owner: the operator's record of the registration does.
        client.owner_uid = managed.owner_uid;
        Ok(client)
    }

    async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
        _owner_uid: &str,
    ) -> Result<RemoteClient, ProviderError> {
        self.server().await?;
        let lock = self.client_lock(id);
        let _serialised = lock.lock().await;
        // RFC 7592 section 2.2 replaces the whole client: start from what the server has.
        let current = self.manage("get", Method::GET, id, None).await?.answer;
        let managed = ClientMetadata::new(
            desired,
            self.software_id.as_deref(),
            self.software_statement.as_ref(),
        );
        let body = update_body(&current, id, &managed);
        let Managed { answer, owner_uid } =
            self.manage("update", Method::PUT, id, Some(&body)).await?;
        let issued = answer.get("client_secret").and_then(Value::as_str);
        if issued.is_some() && issued != current.get("client_secret").and_then(Value::as_str) {
            // The trait has no way to hand a secret back from an update; say it loudly.
            tracing::warn!(
                client_id = %id,
                "the server answered an update with a different client_secret: the stored secret may no longer work"
            );
        }
        let mut client = self.remote(information(&answer, "update")?);
        client.owner_uid = owner_uid;
        Ok(client)
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        const OPERATION: &str = "delete";
        let lock = self.client_lock(id);
        let _serialised = lock.lock().await;
        // A record is forgotten only after its client was deleted: none means a delete
        // already done (a retry after a crash or a failed status write). A registration whose
        // record was never saved cannot be deleted by anyone but the server's admin; that
        // was reported when it happened.
        let Some(access) = self.store.load(id).await? else {
            tracing::info!(client_id = %id, "no registration access record: the client was deleted before");
            return Ok(());
        };
        let request = self
            .endpoint
            .http
            .request(Method::DELETE, checked_client_uri(&access.client_uri)?)
            .bearer_auth(access.token.expose_secret());
        match self
            .endpoint
            .send_raw(OPERATION, request, &DcrErrorBodies)
            .await
        {
            Ok(()) | Err(ProviderError::NotFound { .. }) => {}
            Err(ProviderError::Rejected {
                status: 405,
                message,
                ..
            }) => {
                return Err(ProviderError::Rejected {
                    operation: OPERATION,
                    status: 405,
                    message: format!(
                        "this server does not let clients be deleted through RFC 7592 \
                         ({message}): client {id} stays registered there"
                    ),
                });
            }
            Err(e) => return Err(management_error(e, id)),
        }
        // The client is gone, and its token with it: a leftover record is inert, so failing
        // to remove it must not keep the deletion from completing.
        if let Err(e) = self.store.forget(id).await {
            tracing::warn!(
                client_id = %id,
                error = %e,
                "the client was deleted but its registration access record could not be removed"
            );
        }
        Ok(())
    }

    /// The clients registered for the application with uid `marker`, as the operator's own
    /// access records name them: the server has no search, but every registration whose
    /// answer arrived left a record. A client the server no longer answers for (deleted, or
    /// its token revoked) is left out.
    async fn find_by_owner_marker(&self, marker: &str) -> Result<Vec<RemoteClient>, ProviderError> {
        let mut found = Vec::new();
        for id in self.store.owned_by(marker).await? {
            match self.get(&id).await {
                Ok(client) => found.push(client),
                Err(ProviderError::NotFound { .. } | ProviderError::Unauthorized { .. }) => {
                    tracing::warn!(client_id = %id, "a recorded registration is no longer answered for at the server");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    async fn proves_possession(
        &self,
        remote: &RemoteClient,
        secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        let token_url = self.server().await?.token_endpoint.clone();
        client_authenticates(&self.endpoint, &token_url, &remote.client_id, secret).await
    }

    fn endpoints(&self) -> Option<Endpoints> {
        self.server.get().map(ServerMetadata::endpoints)
    }

    async fn check_reachable(&self) -> Result<(), ProviderError> {
        let server = self.server().await?;
        self.registration_url(server).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever an RFC 7591 server answers is parsed or refused, never a panic.
        #[test]
        fn any_answer_is_parsed_or_refused(v in crate::providers::arbitrary::json(),
                                           body in crate::providers::arbitrary::body()) {
            if let Ok(info) = serde_json::from_value::<ClientInformation>(v) {
                let _ = backend().remote(info);
            }
            let _ = serde_json::from_slice::<ClientInformation>(&body);
            let _ = DcrErrorBodies.message(StatusCode::BAD_REQUEST, &body);
            let _ = DcrErrorBodies.is_not_found(&body);
        }
    }

    fn desired() -> DesiredClient {
        DesiredClient {
            name: "team/web".into(),
            redirect_uris: vec!["https://web.example.com/cb".into()],
            post_logout_redirect_uris: vec![],
            scopes: vec![],
            public: false,
            grant_types: vec![],
            pkce_required: None,
            consent_screen: None,
            rotation_grace: None,
        }
    }

    fn json(metadata: &ClientMetadata) -> Value {
        serde_json::to_value(metadata).unwrap()
    }

    #[test]
    fn registration_body_defaults() {
        let d = desired();
        assert_eq!(
            json(&ClientMetadata::new(&d, None, None)),
            serde_json::json!({
                "redirect_uris": ["https://web.example.com/cb"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "client_name": "team/web",
            })
        );
    }

    #[test]
    fn registration_body_with_everything() {
        let d = DesiredClient {
            post_logout_redirect_uris: vec!["https://web.example.com/bye".into()],
            scopes: vec!["openid".into(), "profile".into()],
            public: true,
            ..desired()
        };
        let statement = SecretString::from("eyJhbGciOiJSUzI1NiJ9.e30.sig");
        assert_eq!(
            json(&ClientMetadata::new(&d, Some("web-app"), Some(&statement))),
            serde_json::json!({
                "redirect_uris": ["https://web.example.com/cb"],
                "post_logout_redirect_uris": ["https://web.example.com/bye"],
                "scope": "openid profile",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "client_name": "team/web",
                "software_id": "web-app",
                "software_statement": "eyJhbGciOiJSUzI1NiJ9.e30.sig",
            })
        );
    }

    #[test]
    fn registration_body_without_authorization_code_has_no_response_types() {
        let d = DesiredClient {
            redirect_uris: vec![],
            grant_types: vec!["client_credentials".into()],
            ..desired()
        };
        let body = json(&ClientMetadata::new(&d, None, None));
        assert_eq!(
            body["grant_types"],
            serde_json::json!(["client_credentials"])
        );
        assert_eq!(body["response_types"], serde_json::json!([]));
        assert_eq!(body["redirect_uris"], serde_json::json!([]));
    }

    #[test]
    fn update_body_keeps_unmanaged_fields_and_drops_server_only_ones() {
        let current = serde_json::json!({
            "client_id": "abc",
            "client_secret": "s3cret",
            "client_id_issued_at": 1,
            "client_secret_expires_at": 0,
            "registration_access_token": "rat",
            "registration_client_uri": "https://id.example.com/reg/abc",
            "redirect_uris": ["https://old.example.com/cb"],
            "post_logout_redirect_uris": ["https://old.example.com/bye"],
            "scope": "openid email",
            "id_token_signed_response_alg": "RS256",
            "client_name": "old",
        });
        let Value::Object(current) = current else {
            unreachable!()
        };
        let d = DesiredClient {
            redirect_uris: vec!["https://new.example.com/cb".into()],
            ..desired()
        };
        let body = update_body(&current, "abc", &ClientMetadata::new(&d, None, None));
        assert_eq!(
            body,
            serde_json::json!({
                "client_id": "abc",
                "client_secret": "s3cret",
                "redirect_uris": ["https://new.example.com/cb"],
                "post_logout_redirect_uris": [],
                "scope": "openid email",
                "id_token_signed_response_alg": "RS256",
                "client_name": "team/web",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            })
        );
    }

    #[test]
    fn access_from_answers() {
        let answer = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let a = access_in(
            &answer(serde_json::json!({
                "registration_access_token": "t1",
                "registration_client_uri": "https://id.example.com/reg/abc",
            })),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.client_uri, "https://id.example.com/reg/abc");
        assert_eq!(a.token.expose_secret(), "t1");
        // A read that repeats only the token keeps the URI it was made with.
        let a = access_in(
            &answer(serde_json::json!({"registration_access_token": "t2"})),
            Some("https://id.example.com/reg/abc"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.client_uri, "https://id.example.com/reg/abc");
        assert!(
            access_in(&answer(serde_json::json!({"client_id": "abc"})), None)
                .unwrap()
                .is_none()
        );
        assert!(
            access_in(
                &answer(serde_json::json!({"registration_access_token": "t"})),
                None
            )
            .unwrap()
            .is_none()
        );
        for bad in [
            "not a url",
            "ftp://id.example.com/reg/abc",
            "https://user:pw@id.example.com/reg/abc",
        ] {
            let e = access_in(
                &answer(serde_json::json!({
                    "registration_access_token": "t",
                    "registration_client_uri": bad,
                })),
                None,
            )
            .unwrap_err();
            // Neither the token nor the URI (which may carry credentials) is in the message.
            let message = e.to_string();
            assert!(
                !message.contains("pw") && !message.contains(bad),
                "{message}"
            );
        }
    }

    #[test]
    fn error_bodies() {
        let body = br#"{"error":"invalid_redirect_uri","error_description":"redirect_uris must be https"}"#;
        assert_eq!(
            DcrErrorBodies.message(StatusCode::BAD_REQUEST, body),
            "invalid_redirect_uri: redirect_uris must be https"
        );
        assert_eq!(
            DcrErrorBodies.message(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_client_metadata"}"#
            ),
            "invalid_client_metadata"
        );
        assert_eq!(
            DcrErrorBodies.message(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
            "Bad Gateway"
        );
        assert!(DcrErrorBodies.is_not_found(br#"{"error":"invalid_client"}"#));
        assert!(!DcrErrorBodies.is_not_found(b"<html>404</html>"));
        assert!(!DcrErrorBodies.is_not_found(b"{}"));
        let long = format!(
            r#"{{"error":"invalid_client_metadata","error_description":"{}"}}"#,
            "x".repeat(1000)
        );
        assert!(
            DcrErrorBodies
                .message(StatusCode::BAD_REQUEST, long.as_bytes())
                .len()
                < 400
        );
    }

    #[test]
    fn a_refused_registration_access_token_is_never_not_found() {
        let e = management_error(
            ProviderError::Unauthorized {
                operation: "get",
                status: 401,
                message: "invalid_token".into(),
            },
            "abc",
        );
        match e {
            ProviderError::Unauthorized {
                status: 401,
                message,
                ..
            } => {
                assert!(message.contains("revoked"), "{message}");
                assert!(message.contains("deleted"), "{message}");
            }
            other => panic!("expected Unauthorized, got {other:?}"),
        }
        assert!(matches!(
            management_error(ProviderError::NotFound { operation: "get" }, "abc"),
            ProviderError::NotFound { .. }
        ));
    }

    fn info(v: Value) -> ClientInformation {
        serde_json::from_value(v).unwrap()
    }

    fn backend() -> DynamicRegistrationClient {
        struct NoStore;
        #[async_trait::async_trait]
        impl AccessStore for NoStore {
            async fn load(&self, _: &str) -> Result<Option<RegistrationAccess>, ProviderError> {
                Ok(None)
            }
            async fn owned_by(&self, _: &str) -> Result<Vec<String>, ProviderError> {
                Ok(Vec::new())
            }
            async fn save(
                &self,
                _: &str,
                _: Option<&str>,
                _: &RegistrationAccess,
            ) -> Result<(), ProviderError> {
                Ok(())
            }
            async fn forget(&self, _: &str) -> Result<(), ProviderError> {
                Ok(())
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let budget = crate::api::RequestBudget {
            requests: 10,
            period_seconds: 1,
        };
        DynamicRegistrationClient::new(
            reqwest::Client::new(),
            DcrSettings {
                issuer_url: "https://id.example.com".into(),
                registration_endpoint: None,
                initial_access_token: None,
                software_id: None,
                software_statement: None,
                recreate: true,
            },
            Arc::new(NoStore),
            Arc::new(RequestBudgetLimiter::new(
                &budget,
                "test".into(),
                metrics.clone(),
            )),
            metrics,
        )
        .unwrap()
    }

    #[test]
    fn remote_takes_rfc_7591_defaults() {
        let b = backend();
        let r = b.remote(info(serde_json::json!({"client_id": "abc"})));
        assert_eq!(r.id, "abc");
        assert_eq!(r.grant_types, vec!["authorization_code"]);
        assert!(!r.public);
        assert!(r.created_at.is_none());
        let r = b.remote(info(serde_json::json!({
            "client_id": "abc",
            "client_name": "team/web",
            "redirect_uris": ["https://web.example.com/cb"],
            "scope": "openid  profile",
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": "none",
            "client_id_issued_at": 1_700_000_000,
            "post_logout_redirect_uris": null,
        })));
        assert_eq!(r.scopes, vec!["openid", "profile"]);
        assert!(r.public);
        assert!(r.post_logout_redirect_uris.is_empty());
        assert_eq!(r.created_at.map(|t| t.as_second()), Some(1_700_000_000));
    }

    #[test]
    fn diff_compares_sets_and_leaves_unnamed_scopes_alone() {
        let b = backend();
        let d = DesiredClient {
            redirect_uris: vec![
                "https://a.example.com/cb".into(),
                "https://b.example.com/cb".into(),
            ],
            ..desired()
        };
        let mut r = b.remote(info(serde_json::json!({
            "client_id": "abc",
            "client_name": "team/web",
            "redirect_uris": ["https://b.example.com/cb", "https://a.example.com/cb"],
            "scope": "openid offline_access",
            "grant_types": ["refresh_token", "authorization_code"],
        })));
        assert!(b.diff(&d, &r).is_empty());
        // Keycloak reports the redirect URIs as post-logout URIs when none are set.
        r.post_logout_redirect_uris = r.redirect_uris.clone();
        assert!(b.diff(&d, &r).is_empty());
        r.post_logout_redirect_uris = vec!["https://a.example.com/bye".into()];
        assert_eq!(b.diff(&d, &r), vec!["postLogoutRedirectUris"]);
        r.post_logout_redirect_uris.clear();
        r.redirect_uris.pop();
        r.public = true;
        assert_eq!(b.diff(&d, &r), vec!["redirectUris", "clientType"]);
        let d = DesiredClient {
            scopes: vec!["openid".into()],
            ..d
        };
        assert!(b.diff(&d, &r).contains(&"scopes"));
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let b = backend();
        assert!(b.check_supported(&desired()).is_ok());
        assert!(
            b.check_supported(&DesiredClient {
                pkce_required: Some(false),
                ..desired()
            })
            .is_ok()
        );
        for d in [
            DesiredClient {
                pkce_required: Some(true),
                ..desired()
            },
            DesiredClient {
                consent_screen: Some(false),
                ..desired()
            },
        ] {
            assert!(matches!(
                b.check_supported(&d),
                Err(ProviderError::Unsupported(_))
            ));
        }
    }

    #[test]
    fn capabilities() {
        let b = backend();
        assert_eq!(b.name(), "dynamicRegistration");
        assert_eq!(
            b.capabilities(),
            Capabilities {
                identity: Identity::ServerAssigned,
                secret_source: SecretSource::IssuedOnce,
                rotation: Rotation::Recreate,
                drift: DriftSource::GetEach,
                owner_marker: OwnerMarker::Unmarked,
                given_credentials: false,
                grace_period: false,
                new_client: true,
            }
        );
        assert!(b.endpoints().is_none(), "nothing discovered yet");
    }
}
