//! Keycloak admin REST API (`/admin/realms/<realm>/clients`), one realm per provider. The
//! operator authenticates as a service-account client of that realm (client_credentials, the
//! token cached until shortly before it expires) and chooses both the client's `clientId`
//! (`oauth-operator-<uid>`) and its internal id (the application's uid); the client's
//! attributes carry the application's uid as the owner marker. Keycloak issues the secret and
//! keeps it readable (`GET .../client-secret`); rotation is `POST .../client-secret`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::discovery::{ServerMetadata, discover};
use super::http::{ErrorBodies, HttpEndpoint, ProviderHttp, client_authenticates};
use super::{
    Backend, Capabilities, ClientPage, DesiredClient, DriftSource, Identity, IssuedClient,
    OwnerMarker, PageCursor, ProviderError, Registration, RemoteClient, RequestBudgetLimiter,
    Rotation, SecretSource, as_set, diff_flags,
};
use crate::api::Endpoints;
use crate::telemetry::Metrics;
use k8s_openapi::jiff::Timestamp;

const BACKEND: &str = "keycloak";
/// Where the owner's uid is kept in the client's attributes.
pub const OWNER_UID_ATTRIBUTE: &str = "oauth-operator.dev/owner-uid";
const POST_LOGOUT_ATTRIBUTE: &str = "post.logout.redirect.uris";
const PKCE_ATTRIBUTE: &str = "pkce.code.challenge.method";
const REFRESH_ATTRIBUTE: &str = "use.refresh.tokens";
/// The grace period (seconds) a client is rotated with; the operator's client policy for that
/// period selects clients by it (`client-attributes` condition). `none` without one.
pub const GRACE_ATTRIBUTE: &str = "oauth-operator.dev/rotation-grace";
/// Set by Keycloak's `secret-rotation` executor: until when (epoch seconds) the rotated-out
/// secret is still accepted.
const ROTATED_EXPIRATION_ATTRIBUTE: &str = "client.secret.rotated.expiration.time";
/// The rotated-out secret itself (Keycloak's attribute).
const ROTATED_SECRET_ATTRIBUTE: &str = "client.secret.rotated";
/// The lifetime the `secret-rotation` executor gives a client's current secret. Keycloak
/// refuses an expired current secret, so this is long; Keycloak 26.x adds it to the current
/// time in a 32-bit integer, so it is at most five years and ends a year before that overflows
/// (see [`current_secret_lifetime`]).
const CURRENT_SECRET_LIFETIME_SECS: u64 = 5 * 365 * 24 * 3600;

/// [`CURRENT_SECRET_LIFETIME_SECS`], cut so that `now + lifetime` stays a year clear of
/// `i32::MAX` (Keycloak 26.x), and at least a day.
fn current_secret_lifetime(now_epoch: i64) -> u64 {
    let room = i64::from(i32::MAX) - now_epoch - 366 * 24 * 3600;
    u64::try_from(room)
        .unwrap_or(0)
        .clamp(24 * 3600, CURRENT_SECRET_LIFETIME_SECS)
}
const PAGE_SIZE: usize = 200;
/// Renew the admin token this long before Keycloak says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(15);
/// `openid` is implied by the OIDC protocol in Keycloak, not a client scope.
const IMPLIED_SCOPE: &str = "openid";
/// The scope Keycloak gives every client with a service account.
const SERVICE_ACCOUNT_SCOPE: &str = "service_account";
/// Grant types Keycloak expresses as a client setting.
const GRANTS: [&str; 5] = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "implicit",
];

/// The clientId the operator gives the application with this uid.
pub fn client_id_for(uid: &str) -> String {
    format!("oauth-operator-{uid}")
}

/// Ids the operator chose (uids, `oauth-operator-<uid>`): anything else (a tampered status) is
/// refused before it reaches a URL.
fn checked_id(id: &str) -> Result<&str, ProviderError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(id)
    } else {
        Err(ProviderError::Unsupported(format!(
            "{id:?} is not a client id this operator chose"
        )))
    }
}

/// A clientId the user gave (`spec.credentialsFrom`; the controller checks the same shape):
/// it goes into request bodies and a query, never into a path.
fn given_client_id(id: &str) -> Result<&str, ProviderError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(id)
    } else {
        Err(ProviderError::Unsupported(format!(
            "{id:?} is not a client id this operator registers"
        )))
    }
}

/// A new object id in the form Keycloak gives its own (a random UUID).
fn random_object_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Where the operator finds Keycloak, and who it is there.
pub struct KeycloakSettings {
    /// Keycloak's base URL (e.g. `https://keycloak.example.com`), without `/admin`.
    pub base_url: String,
    pub realm: String,
    /// The service-account client the operator authenticates as.
    pub client_id: String,
    pub client_secret: SecretString,
}

pub struct KeycloakClient {
    endpoint: HttpEndpoint,
    /// `<base>/admin/realms/<realm>`.
    admin: url::Url,
    issuer: String,
    token_url: String,
    client_id: String,
    client_secret: SecretString,
    token: tokio::sync::Mutex<Option<(SecretString, Instant)>>,
    metadata: tokio::sync::OnceCell<ServerMetadata>,
    /// The endpoints from the discovery document, once read: one copy for every client.
    shared_endpoints: std::sync::OnceLock<std::sync::Arc<Endpoints>>,
    /// The realm's default client scopes (`openid-connect`): Keycloak gives them to every new
    /// client, and they stay whatever the spec says. Read again with every list and before
    /// scopes are changed, so a scope the realm gains (an upgrade, an admin) is never stripped.
    realm_defaults: std::sync::RwLock<Option<Vec<String>>>,
    /// Serialises this client's edits of the realm's client policies (each replaces a list).
    policies: tokio::sync::Mutex<()>,
}

/// `ClientRepresentation`, the fields the operator reads (unknown fields ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeycloakApp {
    id: String,
    client_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    public_client: bool,
    #[serde(default)]
    consent_required: bool,
    #[serde(default)]
    standard_flow_enabled: bool,
    #[serde(default)]
    implicit_flow_enabled: bool,
    #[serde(default)]
    direct_access_grants_enabled: bool,
    #[serde(default)]
    service_accounts_enabled: bool,
    #[serde(default)]
    default_client_scopes: Vec<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, Value>,
}

/// `CredentialRepresentation` of `.../client-secret`.
#[derive(Deserialize)]
struct Credential {
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `ClientScopeRepresentation` (realm list, client default scopes).
#[derive(Deserialize)]
struct ClientScope {
    id: String,
    name: String,
}

/// A client scope with its protocol (realm defaults list SAML scopes too).
#[derive(Deserialize)]
struct ProtocolScope {
    name: String,
    #[serde(default)]
    protocol: Option<String>,
}

/// Keycloak's error bodies: the admin API answers `{"errorMessage": ...}` or
/// `{"error": ..., "error_description": ...}`.
struct KeycloakErrorBodies;

#[derive(Deserialize, Default)]
struct KeycloakError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default, rename = "errorMessage")]
    error_message: String,
}

impl ErrorBodies for KeycloakErrorBodies {
    fn is_not_found(&self, body: &[u8]) -> bool {
        // Keycloak's own JSON 404; a proxy's HTML 404 (a wrong base URL) is not "gone".
        serde_json::from_slice::<KeycloakError>(body)
            .is_ok_and(|e| !e.error.is_empty() || !e.error_message.is_empty())
    }

    fn message(&self, status: StatusCode, body: &[u8]) -> String {
        let e: KeycloakError = serde_json::from_slice(body).unwrap_or_default();
        let parts: Vec<&str> = [&e.error_message, &e.error, &e.error_description]
            .into_iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            parts.join(": ")
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

/// The scopes Keycloak manages as client scopes (`openid` is implied).
fn managed_scopes(scopes: &[String]) -> Vec<String> {
    let mut v: Vec<String> = scopes
        .iter()
        .filter(|s| *s != IMPLIED_SCOPE)
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The `ClientRepresentation` for create and update. An update replaces the fields it names
/// and keeps the others (the secret, protocol mappers, roles).
fn representation(desired: &DesiredClient, id: &str, client_id: &str, owner_uid: &str) -> Value {
    let grants = grant_types(desired);
    let has = |g: &str| grants.iter().any(|x| x == g);
    let mut attributes = serde_json::Map::new();
    attributes.insert(OWNER_UID_ATTRIBUTE.into(), json!(owner_uid));
    attributes.insert(
        POST_LOGOUT_ATTRIBUTE.into(),
        json!(desired.post_logout_redirect_uris.join("##")),
    );
    attributes.insert(
        REFRESH_ATTRIBUTE.into(),
        json!(if has("refresh_token") {
            "true"
        } else {
            "false"
        }),
    );
    if let Some(pkce) = desired.pkce_required {
        attributes.insert(PKCE_ATTRIBUTE.into(), json!(if pkce { "S256" } else { "" }));
    }
    attributes.insert(
        GRACE_ATTRIBUTE.into(),
        json!(grace_value(desired.rotation_grace)),
    );
    let mut rep = json!({
        "id": id,
        "clientId": client_id,
        "name": desired.name,
        "enabled": true,
        "protocol": "openid-connect",
        "publicClient": desired.public,
        "clientAuthenticatorType": "client-secret",
        "redirectUris": desired.redirect_uris,
        "standardFlowEnabled": has("authorization_code"),
        "implicitFlowEnabled": has("implicit"),
        "directAccessGrantsEnabled": has("password"),
        "serviceAccountsEnabled": has("client_credentials") && !desired.public,
        "attributes": attributes,
    });
    if let Some(consent) = desired.consent_screen {
        rep["consentRequired"] = json!(consent);
    }
    // Client scopes are assigned through their own sub-resource (see `sync_scopes`): Keycloak
    // applies `defaultClientScopes` on create only, and then instead of the realm's defaults.
    rep
}

/// `desired`, except that while a rotated-out secret is still valid the client keeps the grace
/// period it was rotated with: Keycloak drops the rotated secret on an update that no longer
/// matches its policy, so a changed (or removed) `gracePeriod` waits for the overlap to end.
fn keeping_overlap(desired: &DesiredClient, current: &RemoteClient) -> DesiredClient {
    DesiredClient {
        rotation_grace: grace_to_keep(desired, current),
        ..desired.clone()
    }
}

/// The grace period [`keeping_overlap`] gives the client.
fn grace_to_keep(desired: &DesiredClient, current: &RemoteClient) -> Option<u64> {
    let open = current
        .previous_secret_expires_at
        .is_some_and(|t| t > Timestamp::now());
    match current.grace_period {
        Some(g) if open => Some(g),
        _ => desired.rotation_grace,
    }
}

/// Whether a client profile or policy of the realm named like ours for `secs` still does what
/// the operator wrote it for (Keycloak may add fields to what it answers; only what matters is
/// compared).
fn grace_item_intact(kind: &str, item: &Value, secs: u64) -> bool {
    let number = |v: &Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    if kind == "profiles" {
        return item["executors"].as_array().is_some_and(|executors| {
            executors.iter().any(|e| {
                e["executor"] == "secret-rotation"
                    && number(&e["configuration"]["rotated-expiration-period"]) == Some(secs)
            })
        });
    }
    let name = format!("oauth-operator-grace-{secs}");
    let selects = item["conditions"].as_array().is_some_and(|conditions| {
        conditions.len() == 1
            && conditions[0]["condition"] == "client-attributes"
            && conditions[0]["configuration"]["is-negative-logic"] != true
            && conditions[0]["configuration"]["attributes"]
                .as_str()
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                == Some(json!([{"key": GRACE_ATTRIBUTE, "value": secs.to_string()}]))
    });
    item["enabled"] == true
        && selects
        && item["profiles"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| *x == name))
}

/// The value of [`GRACE_ATTRIBUTE`].
fn grace_value(grace: Option<u64>) -> String {
    grace.map_or_else(|| "none".to_string(), |g| g.to_string())
}

/// The client profile and policy that keep a rotated-out secret valid for `secs` seconds at
/// clients marked with that grace period: `(profile, policy)`.
fn grace_policy(secs: u64, now_epoch: i64) -> (Value, Value) {
    let name = format!("oauth-operator-grace-{secs}");
    let lifetime = current_secret_lifetime(now_epoch).max(secs);
    let profile = json!({
        "name": name,
        "description": format!("oauth-operator: a rotated-out client secret stays valid for {secs} s"),
        "executors": [{
            "executor": "secret-rotation",
            // All three keys: Keycloak before 26.8 fails on a missing one.
            "configuration": {
                "expiration-period": lifetime,
                "rotated-expiration-period": secs,
                "remaining-rotation-period": secs,
            },
        }],
    });
    let attributes = json!([{"key": GRACE_ATTRIBUTE, "value": secs.to_string()}]).to_string();
    let policy = json!({
        "name": name,
        "description": format!("oauth-operator: clients rotated with a {secs} s grace period"),
        "enabled": true,
        "conditions": [{
            "condition": "client-attributes",
            "configuration": {"attributes": attributes},
        }],
        "profiles": [name],
    });
    (profile, policy)
}

impl KeycloakClient {
    pub fn new(
        http: impl Into<ProviderHttp>,
        settings: KeycloakSettings,
        budget: Arc<RequestBudgetLimiter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        let invalid = |what: String| ProviderError::Unsupported(format!("Keycloak {what}"));
        let base = url::Url::parse(settings.base_url.trim_end_matches('/'))
            .map_err(|e| invalid(format!("baseUrl is not a URL: {e}")))?;
        if base.cannot_be_a_base() || base.query().is_some() {
            return Err(invalid(
                "baseUrl must be an http(s) URL without query".into(),
            ));
        }
        let realm = settings.realm;
        let mut admin = base.clone();
        admin
            .path_segments_mut()
            .map_err(|_| invalid("baseUrl cannot be a base".into()))?
            .pop_if_empty()
            .extend(["admin", "realms", &realm]);
        let mut issuer = base;
        issuer
            .path_segments_mut()
            .map_err(|_| invalid("baseUrl cannot be a base".into()))?
            .pop_if_empty()
            .extend(["realms", &realm]);
        let issuer = issuer.to_string();
        Ok(Self {
            endpoint: HttpEndpoint {
                http: http.into(),
                budget,
                metrics,
                backend: BACKEND,
            },
            admin,
            token_url: format!("{issuer}/protocol/openid-connect/token"),
            issuer,
            client_id: settings.client_id,
            client_secret: settings.client_secret,
            token: tokio::sync::Mutex::new(None),
            metadata: tokio::sync::OnceCell::new(),
            shared_endpoints: std::sync::OnceLock::new(),
            realm_defaults: std::sync::RwLock::new(None),
            policies: tokio::sync::Mutex::new(()),
        })
    }

    /// `<admin>/<segments...>`.
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.admin.clone();
        if let Ok(mut s) = url.path_segments_mut() {
            s.extend(segments);
        }
        url
    }

    /// The realm's discovery document, read once.
    async fn metadata(&self) -> Result<&ServerMetadata, ProviderError> {
        self.metadata
            .get_or_try_init(|| discover(&self.endpoint, &self.issuer))
            .await
    }

    /// [`Self::known_endpoints`], shared (see [`super::discovery::shared_endpoints`]).
    fn shared_endpoints(&self) -> std::sync::Arc<Endpoints> {
        super::discovery::shared_endpoints(&self.shared_endpoints, self.metadata.get(), || {
            self.known_endpoints()
        })
    }

    fn known_endpoints(&self) -> Endpoints {
        self.metadata
            .get()
            .map(ServerMetadata::endpoints)
            .unwrap_or_else(|| Endpoints {
                issuer: Some(self.issuer.clone()),
                token: Some(self.token_url.clone()),
                ..Default::default()
            })
    }

    /// A valid admin access token (client_credentials), cached until shortly before expiry.
    async fn token(&self) -> Result<SecretString, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let asked = Instant::now();
        let request = self
            .endpoint
            .http
            .request(Method::POST, &self.token_url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .form(&[("grant_type", "client_credentials")]);
        let answer: TokenAnswer = self
            .endpoint
            .send("token", request, &KeycloakErrorBodies)
            .await
            .map_err(|e| match e {
                // The token endpoint says 400/401 `invalid_client` or `unauthorized_client`
                // when the operator's own credential is wrong.
                ProviderError::Rejected {
                    operation,
                    status,
                    message,
                } => ProviderError::Unauthorized {
                    operation,
                    status,
                    message: format!(
                        "the operator's service-account client was refused: {message}"
                    ),
                },
                e => e,
            })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60));
        let token = SecretString::from(answer.access_token);
        *cached = Some((token.clone(), asked + lifetime.saturating_sub(TOKEN_MARGIN)));
        Ok(token)
    }

    /// An admin request with the bearer token (and a JSON body).
    async fn authorized(
        &self,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let token = self.token().await?;
        let request = self
            .endpoint
            .http
            .request(method, url)
            .bearer_auth(token.expose_secret());
        Ok(match body {
            Some(body) => request.json(body),
            None => request,
        })
    }

    /// A 401 drops the cached token, so the next call fetches a new one.
    async fn settle<T>(&self, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(ProviderError::Unauthorized { status: 401, .. }) = &result {
            *self.token.lock().await = None;
        }
        result
    }

    /// An authenticated admin request whose answer is JSON.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<(T, reqwest::header::HeaderMap), ProviderError> {
        let request = self.authorized(method, url, body).await?;
        let result = self
            .endpoint
            .send_with_headers::<T>(operation, request, &KeycloakErrorBodies)
            .await;
        self.settle(result).await
    }

    /// [`Self::call`] for answers without a body (201, 204).
    async fn call_empty(
        &self,
        operation: &'static str,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<(), ProviderError> {
        let request = self.authorized(method, url, body).await?;
        let result = self
            .endpoint
            .send_raw(operation, request, &KeycloakErrorBodies)
            .await;
        self.settle(result).await
    }

    fn remote(&self, app: KeycloakApp) -> RemoteClient {
        let attribute = |k: &str| {
            app.attributes
                .get(k)
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    // Some versions answer multi-valued attributes as lists.
                    Value::Array(a) => a.first().and_then(|x| x.as_str()).map(str::to_string),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let mut grant_types = Vec::new();
        if app.standard_flow_enabled {
            grant_types.push("authorization_code".to_string());
        }
        if attribute(REFRESH_ATTRIBUTE) != "false" {
            grant_types.push("refresh_token".to_string());
        }
        if app.service_accounts_enabled {
            grant_types.push("client_credentials".to_string());
        }
        if app.direct_access_grants_enabled {
            grant_types.push("password".to_string());
        }
        if app.implicit_flow_enabled {
            grant_types.push("implicit".to_string());
        }
        let owner = attribute(OWNER_UID_ATTRIBUTE);
        let previous_until = attribute(ROTATED_EXPIRATION_ATTRIBUTE)
            .parse::<i64>()
            .ok()
            .and_then(|t| Timestamp::from_second(t).ok());
        RemoteClient {
            id: app.id,
            client_id: app.client_id,
            name: app.name.unwrap_or_default(),
            redirect_uris: app.redirect_uris,
            post_logout_redirect_uris: attribute(POST_LOGOUT_ATTRIBUTE)
                .split("##")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            scopes: app.default_client_scopes,
            grant_types,
            owner_uid: (!owner.is_empty()).then_some(owner),
            public: app.public_client,
            pkce_required: attribute(PKCE_ATTRIBUTE) == "S256",
            consent_screen: app.consent_required,
            endpoints: self.shared_endpoints(),
            created_at: None,
            grace_period: attribute(GRACE_ATTRIBUTE).parse().ok(),
            previous_secret_expires_at: previous_until,
        }
    }

    /// Makes sure the realm has the client profile and policy for a `secs` grace period
    /// ([`grace_policy`]). Both lists are replaced whole by Keycloak, so they are read first
    /// and only ours is added; nothing else in them is changed.
    async fn ensure_grace_policy(&self, secs: u64) -> Result<(), ProviderError> {
        let _one_at_a_time = self.policies.lock().await;
        let (profile, policy) = grace_policy(secs, Timestamp::now().as_second());
        let name = profile["name"].clone();
        let hint = |e: ProviderError| match e {
            // 401 is the operator's own credential (reported as it is); 403 the missing role.
            ProviderError::Unauthorized {
                operation,
                status: 403,
                message,
            } => ProviderError::Unauthorized {
                status: 403,
                operation,
                message: format!(
                    "rotation.gracePeriod needs a client policy in realm {}: give the operator's service account the \
                     realm-management role manage-realm (or see the README for the policy to create by hand): {message}",
                    self.realm()
                ),
            },
            ProviderError::Rejected { message, .. } if message.contains("executor") => {
                ProviderError::Unsupported(format!(
                    "Keycloak refused the secret-rotation executor that rotation.gracePeriod needs: before Keycloak 26.8 start \
                 it with --features=client-secret-rotation ({message})"
                ))
            }
            e => e,
        };
        for (kind, item) in [("profiles", profile), ("policies", policy)] {
            let url = self.url(&["client-policies", kind]);
            let read = || async {
                let (mut current, _): (Value, _) = self
                    .call("get_client_policies", Method::GET, url.clone(), None)
                    .await
                    .map_err(hint)?;
                Ok::<_, ProviderError>(
                    current
                        .get_mut(kind)
                        .and_then(Value::as_array_mut)
                        .map(std::mem::take)
                        .unwrap_or_default(),
                )
            };
            let mut list = read().await?;
            if !list.iter().any(|p| p["name"] == name) {
                list.push(item);
                self.call_empty(
                    "set_client_policies",
                    Method::PUT,
                    url.clone(),
                    Some(&json!({ kind: list })),
                )
                .await
                .map_err(hint)?;
                // Read back: a concurrent writer of the list (an admin, another provider on
                // this realm) may have replaced it in between.
                list = read().await?;
            }
            // Rotating now is safe only if ours is there and as the operator wrote it: a
            // disabled or edited one would make the rotation drop the old secret at once.
            let present = list.iter().find(|p| p["name"] == name);
            if !present.is_some_and(|p| grace_item_intact(kind, p, secs)) {
                return Err(ProviderError::Rejected {
                    operation: "set_client_policies",
                    status: 409,
                    message: format!(
                        "the client {kind} {name} in realm {} is missing, disabled or changed by someone else, so a \
                         rotation would not keep the previous secret; nothing was rotated: restore it, or delete it and \
                         the operator writes it again",
                        self.realm()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Marks the client with its grace period (the attribute the policy selects by), unless
    /// it is marked already. A fresh full representation goes back, so nothing else changes.
    async fn mark_grace(&self, id: &str, secs: u64) -> Result<(), ProviderError> {
        let url = self.url(&["clients", checked_id(id)?]);
        let (mut rep, _): (Value, _) = self.call("get", Method::GET, url.clone(), None).await?;
        let want = json!(grace_value(Some(secs)));
        let attributes = rep
            .as_object_mut()
            .map(|o| o.entry("attributes").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ProviderError::Unavailable {
                operation: "get",
                outcome_unknown: false,
                message: "Keycloak answered a client that is not a JSON object".into(),
            })?;
        if attributes.get(GRACE_ATTRIBUTE) == Some(&want) {
            return Ok(());
        }
        attributes.insert(GRACE_ATTRIBUTE.into(), want);
        // Secrets are not sent back: Keycloak keeps what an update leaves out.
        attributes.remove(ROTATED_SECRET_ATTRIBUTE);
        if let Some(o) = rep.as_object_mut() {
            o.remove("secret");
        }
        self.call_empty("update", Method::PUT, url, Some(&rep))
            .await
    }

    /// Reads the realm's default client scopes (`fresh`: even if known already).
    async fn realm_defaults(&self, fresh: bool) -> Result<(), ProviderError> {
        let known = self
            .realm_defaults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if known && !fresh {
            return Ok(());
        }
        let (scopes, _): (Vec<ProtocolScope>, _) = self
            .call(
                "list_scopes",
                Method::GET,
                self.url(&["default-default-client-scopes"]),
                None,
            )
            .await?;
        let names = scopes
            .into_iter()
            .filter(|s| s.protocol.as_deref().is_none_or(|p| p == "openid-connect"))
            .map(|s| s.name)
            .collect();
        *self
            .realm_defaults
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(names);
        Ok(())
    }

    /// Whether a scope the client has may stay although the spec does not name it: the realm's
    /// defaults, and `service_account`, which Keycloak adds to service-account clients.
    fn kept(&self, scope: &str) -> bool {
        scope == SERVICE_ACCOUNT_SCOPE
            || self
                .realm_defaults
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|d| d.iter().any(|x| x == scope))
    }

    /// Brings the client's default client scopes to the spec's: each scope it names assigned,
    /// any other removed unless [`Self::kept`]. Nothing when the spec names none.
    async fn sync_scopes(&self, id: &str, desired: &DesiredClient) -> Result<(), ProviderError> {
        let want = managed_scopes(&desired.scopes);
        // No scope named (or only `openid`, which is implied): unmanaged.
        if want.is_empty() {
            return Ok(());
        }
        self.realm_defaults(true).await?;
        let (have, _): (Vec<ClientScope>, _) = self
            .call(
                "get_scopes",
                Method::GET,
                self.url(&["clients", id, "default-client-scopes"]),
                None,
            )
            .await?;
        let missing: Vec<&String> = want
            .iter()
            .filter(|w| !have.iter().any(|h| &h.name == *w))
            .collect();
        if !missing.is_empty() {
            let (realm_scopes, _): (Vec<ClientScope>, _) = self
                .call(
                    "list_scopes",
                    Method::GET,
                    self.url(&["client-scopes"]),
                    None,
                )
                .await?;
            for name in missing {
                let scope = realm_scopes.iter().find(|s| &s.name == name).ok_or_else(|| {
                    ProviderError::Rejected {
                        operation: "update",
                        status: 400,
                        message: format!(
                            "scope {name:?} is not a client scope of realm {} (create it in Keycloak, or remove it from the spec)",
                            self.realm()
                        ),
                    }
                })?;
                // A scope the client has as optional (the realm gives `offline_access` that
                // way) is not made default while it stays optional.
                match self
                    .call_empty(
                        "remove_scope",
                        Method::DELETE,
                        self.url(&["clients", id, "optional-client-scopes", &scope.id]),
                        None,
                    )
                    .await
                {
                    Ok(()) | Err(ProviderError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.call_empty(
                    "add_scope",
                    Method::PUT,
                    self.url(&["clients", id, "default-client-scopes", &scope.id]),
                    None,
                )
                .await?;
            }
        }
        for extra in have
            .iter()
            .filter(|h| !want.contains(&h.name) && !self.kept(&h.name))
        {
            self.call_empty(
                "remove_scope",
                Method::DELETE,
                self.url(&["clients", id, "default-client-scopes", &extra.id]),
                None,
            )
            .await?;
        }
        Ok(())
    }

    fn realm(&self) -> &str {
        self.admin
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or_default()
    }
}

#[async_trait::async_trait]
impl Backend for KeycloakClient {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            identity: Identity::OperatorChosen,
            secret_source: SecretSource::IssuedReadable,
            rotation: Rotation::ServerEndpoint,
            drift: DriftSource::ListAll,
            owner_marker: OwnerMarker::Metadata,
            given_credentials: true,
            grace_period: true,
            new_client: false,
        }
    }

    fn chosen_client_id(&self, uid: &str) -> Option<String> {
        Some(client_id_for(uid))
    }

    fn chosen_object_id(&self, uid: &str) -> Option<String> {
        Some(uid.to_string())
    }

    fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError> {
        if let Some(g) = desired
            .grant_types
            .iter()
            .find(|g| !GRANTS.contains(&g.as_str()))
        {
            return Err(ProviderError::Unsupported(format!(
                "grant type {g:?} is not one the Keycloak backend manages (supported: {})",
                GRANTS.join(", ")
            )));
        }
        if desired.public
            && desired
                .grant_types
                .iter()
                .any(|g| g == "client_credentials")
        {
            return Err(ProviderError::Unsupported(
                "a public client cannot use client_credentials at Keycloak (it has no service account)".into(),
            ));
        }
        Ok(())
    }

    fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let set = as_set;
        if desired.name != remote.name {
            fields.push("name");
        }
        if set(&desired.redirect_uris) != set(&remote.redirect_uris) {
            fields.push("redirectUris");
        }
        if set(&desired.post_logout_redirect_uris) != set(&remote.post_logout_redirect_uris) {
            fields.push("postLogoutRedirectUris");
        }
        let want = managed_scopes(&desired.scopes);
        if !want.is_empty() {
            let missing = want.iter().any(|w| !remote.scopes.contains(w));
            let extra = remote
                .scopes
                .iter()
                .any(|h| !want.contains(h) && !self.kept(h));
            if missing || extra {
                fields.push("scopes");
            }
        }
        let mut grants = grant_types(desired);
        if desired.public {
            grants.retain(|g| g != "client_credentials");
        }
        if set(&grants) != set(&remote.grant_types) {
            fields.push("grantTypes");
        }
        if grace_to_keep(desired, remote) != remote.grace_period {
            fields.push("rotation.gracePeriod");
        }
        diff_flags(desired, remote, &mut fields);
        fields
    }

    async fn create(
        &self,
        desired: &DesiredClient,
        registration: &Registration<'_>,
    ) -> Result<IssuedClient, ProviderError> {
        let client_id = registration.client_id.ok_or_else(|| {
            ProviderError::Unsupported("Keycloak clients need a chosen id".into())
        })?;
        // Given credentials: the clientId is the user's, the object id a fresh one (a create
        // whose answer was lost is found again by clientId, which the realm keeps unique).
        let random_id;
        let (id, client_id) = if registration.given {
            random_id = random_object_id();
            (random_id.as_str(), given_client_id(client_id)?)
        } else {
            (checked_id(registration.owner_uid)?, checked_id(client_id)?)
        };
        let mut rep = representation(desired, id, client_id, registration.owner_uid);
        if let (true, Some(secret)) = (registration.given, registration.client_secret) {
            rep["secret"] = json!(secret.expose_secret());
        }
        self.metadata().await?;
        match self
            .call_empty("create", Method::POST, self.url(&["clients"]), Some(&rep))
            .await
        {
            Ok(()) => {}
            Err(e @ ProviderError::Rejected { status: 409, .. }) if registration.given => {
                return Err(e);
            }
            Err(ProviderError::Rejected { status: 409, .. }) => {
                // The id or clientId exists: ours (an earlier create whose answer was lost),
                // or someone else's.
                let existing = match self.get(id).await {
                    Ok(c) => Some(c),
                    Err(ProviderError::NotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                if existing.and_then(|c| c.owner_uid).as_deref() != Some(registration.owner_uid) {
                    return Err(ProviderError::Rejected {
                        operation: "create",
                        status: 409,
                        message: format!(
                            "client {client_id} exists in realm {} and belongs to someone else (its attributes name another owner)",
                            self.realm()
                        ),
                    });
                }
                self.call_empty(
                    "update",
                    Method::PUT,
                    self.url(&["clients", id]),
                    Some(&rep),
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        self.sync_scopes(id, desired).await?;
        let client = self.get(id).await?;
        let client_secret = if client.public {
            None
        } else {
            Some(
                self.read_secret(id)
                    .await?
                    .ok_or_else(|| ProviderError::Unavailable {
                        operation: "read_secret",
                        outcome_unknown: false,
                        message: format!(
                            "Keycloak has no secret for confidential client {client_id}"
                        ),
                    })?,
            )
        };
        Ok(IssuedClient {
            client,
            client_secret,
        })
    }

    async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError> {
        // What `diff` needs to know which scopes are Keycloak's own.
        self.realm_defaults(false).await?;
        let url = self.url(&["clients", checked_id(id)?]);
        let (app, _): (KeycloakApp, _) = self.call("get", Method::GET, url, None).await?;
        Ok(self.remote(app))
    }

    async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
    ) -> Result<RemoteClient, ProviderError> {
        let current = self.get(id).await?;
        let desired = &keeping_overlap(desired, &current);
        let rep = representation(desired, id, &current.client_id, owner_uid);
        self.call_empty(
            "update",
            Method::PUT,
            self.url(&["clients", checked_id(id)?]),
            Some(&rep),
        )
        .await?;
        self.sync_scopes(id, desired).await?;
        self.get(id).await
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.url(&["clients", checked_id(id)?]);
        match self.call_empty("delete", Method::DELETE, url, None).await {
            Ok(()) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn rotate_secret(&self, id: &str) -> Result<IssuedClient, ProviderError> {
        // Read first: a failed read costs nothing, a read failing after the rotation would.
        let client = self.get(id).await?;
        let url = self.url(&["clients", checked_id(id)?, "client-secret"]);
        let (credential, _): (Credential, _) =
            self.call("rotate_secret", Method::POST, url, None).await?;
        let value = credential.value.filter(|v| !v.is_empty()).ok_or_else(|| {
            ProviderError::Unavailable {
                operation: "rotate_secret",
                outcome_unknown: true,
                message: "Keycloak answered a rotation without a secret".into(),
            }
        })?;
        Ok(IssuedClient {
            client,
            client_secret: Some(SecretString::from(value)),
        })
    }

    async fn rotate_secret_with_grace(
        &self,
        id: &str,
        grace_secs: u64,
    ) -> Result<IssuedClient, ProviderError> {
        // Everything the overlap needs is in place before the secret changes: without the
        // policy matching this client, Keycloak's rotation drops the old secret at once.
        self.ensure_grace_policy(grace_secs).await?;
        self.mark_grace(id, grace_secs).await?;
        // Keycloak counts the period from its own "now", which is not before this.
        let earliest = Timestamp::now()
            .checked_add(Duration::from_secs(grace_secs))
            .ok();
        let issued = self.rotate_secret(id).await?;
        // The executor recorded until when the old secret is accepted.
        let client = match self.get(id).await {
            Ok(client) => client,
            // The new secret is in hand and must be delivered: the expiry is taken as its
            // earliest possible value.
            Err(_) => RemoteClient {
                previous_secret_expires_at: earliest,
                ..issued.client
            },
        };
        Ok(IssuedClient {
            client,
            client_secret: issued.client_secret,
        })
    }

    async fn forget_previous_secret(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.url(&["clients", checked_id(id)?, "client-secret", "rotated"]);
        match self
            .call_empty("forget_previous_secret", Method::DELETE, url, None)
            .await
        {
            Ok(()) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read_secret(&self, id: &str) -> Result<Option<SecretString>, ProviderError> {
        let url = self.url(&["clients", checked_id(id)?, "client-secret"]);
        let (credential, _): (Credential, _) =
            self.call("read_secret", Method::GET, url, None).await?;
        Ok(credential
            .value
            .filter(|v| !v.is_empty())
            .map(SecretString::from))
    }

    async fn set_secret(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
        secret: &SecretString,
    ) -> Result<RemoteClient, ProviderError> {
        let current = self.get(id).await?;
        let desired = &keeping_overlap(desired, &current);
        let mut rep = representation(desired, id, &current.client_id, owner_uid);
        rep["secret"] = json!(secret.expose_secret());
        self.call_empty(
            "set_secret",
            Method::PUT,
            self.url(&["clients", checked_id(id)?]),
            Some(&rep),
        )
        .await?;
        self.sync_scopes(id, desired).await?;
        self.get(id).await
    }

    async fn find_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<RemoteClient>, ProviderError> {
        self.realm_defaults(false).await?;
        let mut url = self.url(&["clients"]);
        url.query_pairs_mut()
            .append_pair("clientId", given_client_id(client_id)?)
            .append_pair("search", "false");
        let (found, _): (Vec<KeycloakApp>, _) = self.call("find", Method::GET, url, None).await?;
        Ok(found
            .into_iter()
            .find(|a| a.client_id == client_id)
            .map(|a| self.remote(a)))
    }

    async fn list_page(&self, from: Option<&PageCursor>) -> Result<ClientPage, ProviderError> {
        let first = match from {
            // A new list: the realm's metadata and default scopes as of now (the diff reads them).
            None => {
                self.metadata().await?;
                self.realm_defaults(true).await?;
                0
            }
            Some(PageCursor(first)) => first.parse().map_err(|_| {
                ProviderError::Unsupported(format!("not a Keycloak list position: {first:?}"))
            })?,
        };
        let mut url = self.url(&["clients"]);
        url.query_pairs_mut()
            .append_pair("first", &first.to_string())
            .append_pair("max", &PAGE_SIZE.to_string());
        let (page, _): (Vec<KeycloakApp>, _) = self.call("list", Method::GET, url, None).await?;
        let got = page.len();
        Ok(ClientPage {
            clients: page.into_iter().map(|a| self.remote(a)).collect(),
            next: (got >= PAGE_SIZE).then(|| PageCursor((first + got).to_string())),
        })
    }

    async fn proves_possession(
        &self,
        remote: &RemoteClient,
        secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        let token_url = self.metadata().await?.token_endpoint.clone();
        client_authenticates(&self.endpoint, &token_url, &remote.client_id, secret).await
    }

    fn endpoints(&self) -> Option<Endpoints> {
        Some(self.known_endpoints())
    }

    async fn check_reachable(&self) -> Result<(), ProviderError> {
        self.metadata().await?;
        let mut url = self.url(&["clients"]);
        url.query_pairs_mut()
            .append_pair("first", "0")
            .append_pair("max", "1");
        let _: (Vec<Value>, _) = self.call("list", Method::GET, url, None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever Keycloak answers is parsed or refused, never a panic; the attributes
        /// the operator reads (grace, rotated-secret expiry) may hold anything.
        #[test]
        fn any_answer_is_parsed_or_refused(v in crate::providers::arbitrary::json(),
                                           body in crate::providers::arbitrary::body()) {
            let _ = serde_json::from_value::<KeycloakApp>(v.clone());
            let _ = serde_json::from_value::<Vec<KeycloakApp>>(v.clone());
            let _ = serde_json::from_value::<Credential>(v.clone());
            let _ = grace_item_intact("profiles", &v, 60);
            let _ = grace_item_intact("policies", &v, 60);
            let _ = serde_json::from_slice::<KeycloakApp>(&body);
            let _ = KeycloakErrorBodies.message(StatusCode::BAD_REQUEST, &body);
            let _ = KeycloakErrorBodies.is_not_found(&body);
        }
    }

    fn desired() -> DesiredClient {
        DesiredClient {
            name: "web".into(),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            post_logout_redirect_uris: vec!["https://app.example.com/".into()],
            scopes: vec!["openid".into(), "profile".into()],
            public: false,
            grant_types: vec![],
            pkce_required: Some(true),
            consent_screen: None,
            rotation_grace: None,
        }
    }

    #[test]
    fn representation_maps_the_spec() {
        let rep = representation(&desired(), "uid-1", "oauth-operator-uid-1", "uid-1");
        assert_eq!(rep["id"], "uid-1");
        assert_eq!(rep["clientId"], "oauth-operator-uid-1");
        assert_eq!(rep["standardFlowEnabled"], true);
        assert_eq!(rep["serviceAccountsEnabled"], false);
        assert_eq!(rep["attributes"][OWNER_UID_ATTRIBUTE], "uid-1");
        assert_eq!(rep["attributes"][PKCE_ATTRIBUTE], "S256");
        assert_eq!(rep["attributes"][REFRESH_ATTRIBUTE], "true");
        assert_eq!(
            rep["attributes"][POST_LOGOUT_ATTRIBUTE],
            "https://app.example.com/"
        );
        assert!(rep.get("defaultClientScopes").is_none());
        assert!(rep.get("consentRequired").is_none());
        assert!(rep.get("secret").is_none());
        assert_eq!(rep["attributes"][GRACE_ATTRIBUTE], "none");
        let graced = DesiredClient {
            rotation_grace: Some(3600),
            ..desired()
        };
        let rep = representation(&graced, "uid-1", "oauth-operator-uid-1", "uid-1");
        assert_eq!(rep["attributes"][GRACE_ATTRIBUTE], "3600");
    }

    /// What the operator writes is intact; disabled, re-targeted or re-timed is not.
    #[test]
    fn a_changed_grace_policy_is_not_taken_for_ours() {
        let (profile, policy) = grace_policy(60, 1_796_000_000);
        assert!(grace_item_intact("profiles", &profile, 60));
        assert!(grace_item_intact("policies", &policy, 60));
        assert!(!grace_item_intact("profiles", &profile, 61));
        let mut disabled = policy.clone();
        disabled["enabled"] = json!(false);
        assert!(!grace_item_intact("policies", &disabled, 60));
        let mut negated = policy.clone();
        negated["conditions"][0]["configuration"]["is-negative-logic"] = json!(true);
        assert!(!grace_item_intact("policies", &negated, 60));
        let mut other = policy.clone();
        other["conditions"][0]["configuration"]["attributes"] =
            json!(json!([{"key": GRACE_ATTRIBUTE, "value": "7"}]).to_string());
        assert!(!grace_item_intact("policies", &other, 60));
        let mut retimed = profile.clone();
        retimed["executors"][0]["configuration"]["rotated-expiration-period"] = json!("5");
        assert!(!grace_item_intact("profiles", &retimed, 60));
    }

    /// The policy selects exactly the clients marked with its period, and the executor gets
    /// every key Keycloak before 26.8 needs, within its bounds.
    #[test]
    fn grace_policy_selects_clients_by_their_period() {
        let now = 1_796_000_000;
        let (profile, policy) = grace_policy(3600, now);
        assert_eq!(profile["name"], "oauth-operator-grace-3600");
        let executor = &profile["executors"][0];
        assert_eq!(executor["executor"], "secret-rotation");
        let config = &executor["configuration"];
        let lifetime = config["expiration-period"].as_u64().unwrap();
        assert_eq!(config["rotated-expiration-period"], 3600);
        assert!(config["remaining-rotation-period"].as_u64().unwrap() <= lifetime);
        // Added to Keycloak's 32-bit "now" (seconds) it stays a year clear of overflow.
        assert_eq!(lifetime, CURRENT_SECRET_LIFETIME_SECS);
        let year = 366 * 24 * 3600;
        assert!(now as u64 + lifetime + year <= i32::MAX as u64);
        let later = 2_000_000_000;
        assert!(later as u64 + current_secret_lifetime(later) + year <= i32::MAX as u64);
        assert_eq!(current_secret_lifetime(2_140_000_000), 24 * 3600);
        assert_eq!(policy["enabled"], true);
        assert_eq!(policy["profiles"], json!(["oauth-operator-grace-3600"]));
        let condition = &policy["conditions"][0];
        assert_eq!(condition["condition"], "client-attributes");
        let attributes: Value =
            serde_json::from_str(condition["configuration"]["attributes"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            attributes,
            json!([{"key": GRACE_ATTRIBUTE, "value": "3600"}])
        );
    }

    #[test]
    fn ids_outside_the_operators_shape_are_refused() {
        assert!(checked_id("0b6c1c2e-6f2a-4c1e-9a3e-2f7a1d9b8c01").is_ok());
        assert!(checked_id("oauth-operator-0b6c1c2e").is_ok());
        assert!(checked_id("../users").is_err());
        assert!(checked_id("a/b").is_err());
        assert!(checked_id("").is_err());
    }
}
