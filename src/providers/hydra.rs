//! Ory Hydra admin API (`/admin/clients`, Hydra v2): the operator chooses the client id
//! (derived from the application's uid) and generates the secret; the client's `metadata`
//! carries the application's uid as the owner marker, so a create that meets an existing id
//! (a 409) is settled by ownership, never by blind adoption.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{ErrorBodies, HttpEndpoint, ProviderHttp, client_authenticates, next_page_token};
use super::{
    Backend, Capabilities, ClientPage, DesiredClient, DriftSource, Identity, IssuedClient,
    OwnerMarker, PageCursor, ProviderError, Registration, RemoteClient, RequestBudgetLimiter,
    Rotation, SecretSource, as_set, diff_flags,
};
use crate::api::Endpoints;
use crate::telemetry::Metrics;

const BACKEND: &str = "hydra";
const CLIENTS: [&str; 2] = ["admin", "clients"];
/// Where the owner's uid is kept in the client's `metadata`.
pub const OWNER_UID_KEY: &str = "oauth-operator.dev/owner-uid";
const OWNER: &str = "oauth-operator";
const PAGE_SIZE: usize = 500;

/// The client id the operator gives the application with this uid.
pub fn client_id_for(uid: &str) -> String {
    format!("oauth-operator-{uid}")
}

/// The client id of the client replacing `current` (`rotation.strategy: NewClient`): the
/// application's id with a generation suffix, one more than `current`'s
/// (`oauth-operator-<uid>` → `oauth-operator-<uid>-r2` → `-r3` ...). Derived, so a repeat
/// chooses the same id; increasing, so an id is never reused for other credentials.
pub fn replacement_id_for(uid: &str, current: &str) -> String {
    let base = client_id_for(uid);
    let generation = current
        .strip_prefix(base.as_str())
        .and_then(|rest| rest.strip_prefix("-r"))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    format!("{base}-r{}", generation.saturating_add(1))
}

/// Client ids the operator chose: anything else (e.g. from a tampered status) is refused
/// before it reaches a URL.
fn checked_id(id: &str) -> Result<&str, ProviderError> {
    let valid = id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.is_empty()
        && !id.starts_with('.');
    if valid {
        Ok(id)
    } else {
        Err(ProviderError::Unsupported(format!(
            "{id:?} is not a client id this operator chose"
        )))
    }
}

pub struct HydraClient {
    endpoint: HttpEndpoint,
    admin_url: url::Url,
    issuer: String,
    /// The issuer's discovery document, read once by `check_reachable`; until then (or if the
    /// public issuer cannot be reached from the operator) the endpoints are Hydra's documented
    /// paths below the issuer.
    metadata: tokio::sync::OnceCell<super::discovery::ServerMetadata>,
    /// The endpoints from the discovery document, once read: one copy for every client.
    shared_endpoints: std::sync::OnceLock<std::sync::Arc<Endpoints>>,
}

/// `OAuth2Client` as Hydra returns it (unknown fields ignored).
#[derive(Deserialize)]
struct HydraApp {
    client_id: String,
    #[serde(default)]
    client_name: String,
    #[serde(default)]
    redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    post_logout_redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_method: String,
    #[serde(default)]
    skip_consent: bool,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    created_at: Option<String>,
}

/// The body of create and PUT. PUT replaces the client: every managed field is sent; the
/// secret only when it is to be set.
#[derive(Serialize)]
struct HydraAppBody<'a> {
    client_id: &'a str,
    client_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    redirect_uris: &'a [String],
    post_logout_redirect_uris: &'a [String],
    grant_types: Vec<String>,
    response_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    token_endpoint_auth_method: &'static str,
    skip_consent: bool,
    owner: &'static str,
    metadata: serde_json::Value,
}

fn grant_types(desired: &DesiredClient) -> Vec<String> {
    if desired.grant_types.is_empty() {
        vec!["authorization_code".into(), "refresh_token".into()]
    } else {
        desired.grant_types.clone()
    }
}

fn body<'a>(
    desired: &'a DesiredClient,
    client_id: &'a str,
    owner_uid: &str,
    secret: Option<&'a SecretString>,
) -> HydraAppBody<'a> {
    let grants = grant_types(desired);
    let response_types = if grants.iter().any(|g| g == "authorization_code") {
        vec!["code"]
    } else {
        vec![]
    };
    HydraAppBody {
        client_id,
        client_name: &desired.name,
        client_secret: secret.map(|s| s.expose_secret()),
        redirect_uris: &desired.redirect_uris,
        post_logout_redirect_uris: &desired.post_logout_redirect_uris,
        grant_types: grants,
        response_types,
        scope: (!desired.scopes.is_empty()).then(|| desired.scopes.join(" ")),
        token_endpoint_auth_method: if desired.public {
            "none"
        } else {
            "client_secret_basic"
        },
        skip_consent: desired.consent_screen == Some(false),
        owner: OWNER,
        metadata: serde_json::json!({ OWNER_UID_KEY: owner_uid }),
    }
}

/// Hydra's error bodies: `{"error": ..., "error_description": ...}`.
struct HydraErrorBodies;

#[derive(Deserialize, Default)]
struct HydraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl ErrorBodies for HydraErrorBodies {
    fn is_not_found(&self, body: &[u8]) -> bool {
        // Hydra's own 404 body; a proxy's HTML 404 is not "the client is gone".
        serde_json::from_slice::<HydraError>(body).is_ok_and(|e| !e.error.is_empty())
    }

    fn message(&self, status: StatusCode, body: &[u8]) -> String {
        let e: HydraError = serde_json::from_slice(body).unwrap_or_default();
        match (e.error.is_empty(), e.error_description.is_empty()) {
            (true, _) => status.canonical_reason().unwrap_or("error").to_string(),
            (false, true) => e.error,
            (false, false) => format!("{}: {}", e.error, e.error_description),
        }
    }
}

impl HydraClient {
    /// `admin_url`: the admin API root (e.g. `http://hydra-admin:4445`); `issuer`: the
    /// public issuer URL (`URLS_SELF_ISSUER`), which gives the endpoints in the Secret.
    pub fn new(
        http: impl Into<ProviderHttp>,
        admin_url: &str,
        issuer: &str,
        budget: Arc<RequestBudgetLimiter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        let admin_url = url::Url::parse(admin_url)
            .map_err(|e| ProviderError::Unsupported(format!("invalid Hydra adminUrl: {e}")))?;
        if admin_url.cannot_be_a_base() {
            return Err(ProviderError::Unsupported(
                "Hydra adminUrl cannot be a base".into(),
            ));
        }
        Ok(Self {
            endpoint: HttpEndpoint {
                http: http.into(),
                budget,
                metrics,
                backend: BACKEND,
            },
            admin_url,
            issuer: issuer.trim_end_matches('/').to_string(),
            metadata: tokio::sync::OnceCell::new(),
            shared_endpoints: std::sync::OnceLock::new(),
        })
    }

    fn url(&self, id: Option<&str>) -> Result<url::Url, ProviderError> {
        let mut url = self.admin_url.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|_| {
                ProviderError::Unsupported("Hydra adminUrl cannot be a base".into())
            })?;
            segments.pop_if_empty().extend(CLIENTS);
            if let Some(id) = id {
                segments.push(checked_id(id)?);
            }
        }
        Ok(url)
    }

    fn issuer_endpoints(&self) -> Endpoints {
        if let Some(m) = self.metadata.get() {
            return m.endpoints();
        }
        let i = &self.issuer;
        Endpoints {
            issuer: Some(i.clone()),
            discovery: Some(format!("{i}/.well-known/openid-configuration")),
            authorize: Some(format!("{i}/oauth2/auth")),
            token: Some(format!("{i}/oauth2/token")),
            userinfo: Some(format!("{i}/userinfo")),
            end_session: Some(format!("{i}/oauth2/sessions/logout")),
            jwks: Some(format!("{i}/.well-known/jwks.json")),
        }
    }

    /// [`Self::issuer_endpoints`], shared (see [`super::discovery::shared_endpoints`]).
    fn shared_endpoints(&self) -> std::sync::Arc<Endpoints> {
        super::discovery::shared_endpoints(&self.shared_endpoints, self.metadata.get(), || {
            self.issuer_endpoints()
        })
    }

    fn remote(&self, app: HydraApp) -> RemoteClient {
        let owner_uid = app
            .metadata
            .as_ref()
            .and_then(|m| m.get(OWNER_UID_KEY))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        RemoteClient {
            id: app.client_id.clone(),
            client_id: app.client_id,
            name: app.client_name,
            redirect_uris: app.redirect_uris.unwrap_or_default(),
            post_logout_redirect_uris: app.post_logout_redirect_uris.unwrap_or_default(),
            scopes: app.scope.split_whitespace().map(str::to_string).collect(),
            grant_types: app.grant_types.unwrap_or_default(),
            public: app.token_endpoint_auth_method == "none",
            pkce_required: false,
            consent_screen: !app.skip_consent,
            endpoints: self.shared_endpoints(),
            created_at: app.created_at.and_then(|t| t.parse().ok()),
            owner_uid,
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }

    /// Reads the issuer's discovery document once (a failure is retried on the next call).
    async fn discover(&self) -> Result<(), ProviderError> {
        self.metadata
            .get_or_try_init(|| super::discovery::discover(&self.endpoint, &self.issuer))
            .await
            .map(drop)
    }

    async fn put(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
        secret: Option<&SecretString>,
    ) -> Result<RemoteClient, ProviderError> {
        let request = self
            .endpoint
            .http
            .request(Method::PUT, self.url(Some(id))?)
            .json(&body(desired, id, owner_uid, secret));
        let app: HydraApp = self
            .endpoint
            .send("update", request, &HydraErrorBodies)
            .await?;
        Ok(self.remote(app))
    }
}

#[async_trait::async_trait]
impl Backend for HydraClient {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn chosen_client_id(&self, uid: &str) -> Option<String> {
        Some(client_id_for(uid))
    }

    fn replacement_client_id(&self, uid: &str, current: &str) -> Option<String> {
        Some(replacement_id_for(uid, current))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            identity: Identity::OperatorChosen,
            secret_source: SecretSource::OperatorGenerated,
            rotation: Rotation::OperatorSets,
            drift: DriftSource::ListAll,
            owner_marker: OwnerMarker::Metadata,
            given_credentials: true,
            grace_period: false,
            new_client: true,
        }
    }

    fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError> {
        if desired.pkce_required == Some(true) {
            return Err(ProviderError::Unsupported(
                "Hydra enforces PKCE server-wide (oauth2.pkce.enforced), not per client: leave pkceRequired unset".into(),
            ));
        }
        Ok(())
    }

    fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
        let mut fields = Vec::new();
        if desired.name != remote.name {
            fields.push("name");
        }
        if desired.redirect_uris != remote.redirect_uris {
            fields.push("redirectUris");
        }
        if desired.post_logout_redirect_uris != remote.post_logout_redirect_uris {
            fields.push("postLogoutRedirectUris");
        }
        let set = as_set;
        // No scopes in the spec: Hydra's defaults stand, unmanaged.
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
        let id = registration
            .client_id
            .ok_or_else(|| ProviderError::Unsupported("Hydra clients need a chosen id".into()))?;
        let request = self
            .endpoint
            .http
            .request(Method::POST, self.url(None)?)
            .json(&body(
                desired,
                checked_id(id)?,
                registration.owner_uid,
                registration.client_secret,
            ));
        match self
            .endpoint
            .send::<HydraApp>("create", request, &HydraErrorBodies)
            .await
        {
            Ok(app) => Ok(IssuedClient {
                client: self.remote(app),
                client_secret: registration.client_secret.cloned(),
            }),
            Err(e @ ProviderError::Rejected { status: 409, .. }) if registration.given => Err(e),
            Err(ProviderError::Rejected { status: 409, .. }) => {
                // The id exists: ours (an earlier create whose answer was lost) or not.
                let existing = self.get(id).await?;
                if existing.owner_uid.as_deref() != Some(registration.owner_uid) {
                    return Err(ProviderError::Rejected {
                        operation: "create",
                        status: 409,
                        message: format!(
                            "client id {id} exists at Hydra and belongs to someone else (its metadata names another owner)"
                        ),
                    });
                }
                let client = self
                    .put(
                        id,
                        desired,
                        registration.owner_uid,
                        registration.client_secret,
                    )
                    .await?;
                Ok(IssuedClient {
                    client,
                    client_secret: registration.client_secret.cloned(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError> {
        let request = self.endpoint.http.request(Method::GET, self.url(Some(id))?);
        let app: HydraApp = self
            .endpoint
            .send("get", request, &HydraErrorBodies)
            .await?;
        Ok(self.remote(app))
    }

    async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
    ) -> Result<RemoteClient, ProviderError> {
        // No secret in the body: Hydra keeps the one it has.
        self.put(id, desired, owner_uid, None).await
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        let request = self
            .endpoint
            .http
            .request(Method::DELETE, self.url(Some(id))?);
        match self
            .endpoint
            .send_raw("delete", request, &HydraErrorBodies)
            .await
        {
            Ok(()) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn set_secret(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
        secret: &SecretString,
    ) -> Result<RemoteClient, ProviderError> {
        self.put(id, desired, owner_uid, Some(secret)).await
    }

    async fn find_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<RemoteClient>, ProviderError> {
        match self.get(client_id).await {
            Ok(remote) => Ok(Some(remote)),
            Err(ProviderError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Only the clients this operator made (`owner`): a Hydra shared with other tools or
    /// teams is not listed whole every resync. A client made elsewhere and taken up with
    /// `credentialsFrom` keeps its owner, and is read with a GET instead.
    async fn list_page(&self, from: Option<&PageCursor>) -> Result<ClientPage, ProviderError> {
        let mut query = vec![
            ("page_size", PAGE_SIZE.to_string()),
            ("owner", OWNER.to_string()),
        ];
        if let Some(PageCursor(token)) = from {
            query.push(("page_token", token.clone()));
        }
        let request = self
            .endpoint
            .http
            .request(Method::GET, self.url(None)?)
            .query(&query);
        let (page, headers): (Vec<HydraApp>, _) = self
            .endpoint
            .send_with_headers("list", request, &HydraErrorBodies)
            .await?;
        let got = page.len();
        // Hydra names the next page in the Link header; none (or a short page) ends it.
        let next = next_page_token(&headers).filter(|_| got >= PAGE_SIZE);
        Ok(ClientPage {
            clients: page.into_iter().map(|a| self.remote(a)).collect(),
            next: next.map(PageCursor),
        })
    }

    async fn proves_possession(
        &self,
        remote: &RemoteClient,
        secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        let token_url = format!("{}/oauth2/token", self.issuer);
        client_authenticates(&self.endpoint, &token_url, &remote.client_id, secret).await
    }

    fn endpoints(&self) -> Option<Endpoints> {
        Some(self.issuer_endpoints())
    }

    async fn check_reachable(&self) -> Result<(), ProviderError> {
        // Best effort: the public issuer may not be reachable from inside the cluster, and
        // Hydra's documented paths below it stand in until it is.
        if let Err(e) = self.discover().await {
            tracing::debug!(error = %e, "Hydra's discovery document could not be read");
        }
        let request = self
            .endpoint
            .http
            .request(Method::GET, self.url(None)?)
            .query(&[("page_size", "1")]);
        let _: Vec<serde_json::Value> = self
            .endpoint
            .send("list", request, &HydraErrorBodies)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> HydraClient {
        client_at("http://127.0.0.1:4445")
    }

    #[test]
    fn replacement_ids_count_up_and_stay_valid() {
        let uid = "0f8e6a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
        let first = client_id_for(uid);
        let second = replacement_id_for(uid, &first);
        let third = replacement_id_for(uid, &second);
        assert_eq!(second, format!("{first}-r2"));
        assert_eq!(third, format!("{first}-r3"));
        assert_eq!(
            replacement_id_for(uid, &second),
            second.replace("-r2", "-r3")
        );
        // Derived: the same current id always gives the same replacement.
        assert_eq!(replacement_id_for(uid, &second), third);
        // Anything not of this application's scheme starts again at the second generation,
        // never at the first id (which may be the current one).
        assert_eq!(replacement_id_for(uid, "elsewhere"), second);
        assert_eq!(replacement_id_for(uid, &format!("{first}-rx")), second);
        let last = replacement_id_for(uid, &format!("{first}-r{}", u64::MAX));
        for id in [&second, &third, &last] {
            assert!(checked_id(id).is_ok(), "{id}");
        }
    }

    /// A loopback Hydra that answers the requests it gets with `answers`, in order (status,
    /// body), and counts them.
    async fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            }
        });
        (url, seen)
    }

    fn client_at(admin: &str) -> HydraClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let budget = crate::api::RequestBudget {
            requests: 10,
            period_seconds: 1,
        };
        HydraClient::new(
            reqwest::Client::new(),
            admin,
            "http://127.0.0.1:4444",
            Arc::new(RequestBudgetLimiter::new(
                &budget,
                "test".into(),
                metrics.clone(),
            )),
            metrics,
        )
        .expect("a valid Hydra client")
    }

    const LOST_RACE: &str = r#"{"error":"invalid_request","error_description":"Unable to serialize access due to a concurrent update in another session"}"#;

    #[tokio::test]
    async fn a_lost_transaction_race_is_repeated_at_once() {
        let (url, seen) = scripted(vec![
            (400, LOST_RACE),
            (400, LOST_RACE),
            (200, r#"{"client_id":"c1","client_name":"n"}"#),
        ])
        .await;
        let found = client_at(&url).get("c1").await.expect("the third answer");
        assert_eq!(found.client_id, "c1");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_race_lost_three_times_fails_the_pass_as_transient() {
        let (url, seen) = scripted(vec![(400, LOST_RACE); 4]).await;
        let err = client_at(&url).get("c1").await.unwrap_err();
        assert!(
            matches!(
                err,
                ProviderError::Unavailable {
                    outcome_unknown: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "three attempts"
        );
    }

    #[tokio::test]
    async fn other_client_errors_are_not_repeated() {
        let (url, seen) = scripted(vec![
            (
                400,
                r#"{"error":"invalid_request","error_description":"bad redirect_uri"}"#,
            ),
            (200, r#"{"client_id":"c1"}"#),
        ])
        .await;
        let err = client_at(&url).get("c1").await.unwrap_err();
        assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    proptest::proptest! {
        /// Whatever Hydra answers is parsed or refused, never a panic.
        #[test]
        fn any_answer_is_parsed_or_refused(v in crate::providers::arbitrary::json(),
                                           body in crate::providers::arbitrary::body()) {
            if let Ok(app) = serde_json::from_value::<HydraApp>(v.clone()) {
                let _ = client().remote(app);
            }
            let _ = serde_json::from_value::<Vec<HydraApp>>(v);
            let _ = serde_json::from_slice::<HydraApp>(&body);
            let _ = HydraErrorBodies.message(StatusCode::BAD_REQUEST, &body);
            let _ = HydraErrorBodies.is_not_found(&body);
        }
    }
}
