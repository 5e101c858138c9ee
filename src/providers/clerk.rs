//! Clerk Backend API: `/v1/oauth_applications`, exactly as in Clerk's OpenAPI spec
//! (`shared/reference/clerk/bapi-2026-05-12.yml`).

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::http::{ErrorBodies, HttpEndpoint, ProviderHttp, client_authenticates};
use super::{
    Backend, Capabilities, ClientPage, DesiredClient, DriftSource, Identity, IssuedClient,
    OwnerMarker, PageCursor, ProviderError, Registration, RemoteClient, RequestBudgetLimiter,
    Rotation, SecretSource, as_set, diff_flags,
};
use crate::api::Endpoints;
use crate::telemetry::Metrics;

/// The Clerk API version this client is written against (the spec's version).
pub const CLERK_API_VERSION: &str = "2026-05-12";
/// Clerk's maximum page size for list endpoints.
const PAGE_LIMIT: usize = 500;
const BACKEND: &str = "clerk";
const DEFAULT_SCOPES: &str = "profile email";
const APPS: &str = "oauth_applications";

/// Clerk object ids are `oa_` + base62; anything else (e.g. from a tampered status) is refused
/// before it reaches a URL.
fn checked_id(id: &str) -> Result<&str, ProviderError> {
    let valid = id.len() <= 128
        && id.starts_with("oa_")
        && id.bytes().skip(3).all(|b| b.is_ascii_alphanumeric())
        && id.len() > 3;
    if valid {
        Ok(id)
    } else {
        Err(ProviderError::Unsupported(format!(
            "{id:?} is not a Clerk OAuth application id"
        )))
    }
}

/// A Clerk Backend API client for one provider (one instance, one secret key).
pub struct ClerkClient {
    endpoint: HttpEndpoint,
    base_url: url::Url,
    secret_key: SecretString,
}

/// Clerk's error bodies (`{"errors": [{code, message, long_message}]}`).
struct ClerkErrorBodies;

impl ErrorBodies for ClerkErrorBodies {
    fn is_not_found(&self, body: &[u8]) -> bool {
        is_clerk_not_found(body)
    }

    fn message(&self, status: StatusCode, body: &[u8]) -> String {
        error_message(status, body)
    }
}

/// `OAuthApplication` (and `OAuthApplicationWithSecret`) from the spec. Unknown fields are
/// ignored so that a newer Clerk does not break us.
#[derive(Deserialize)]
struct ClerkApp {
    id: String,
    name: String,
    client_id: String,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    pkce_required: bool,
    #[serde(default)]
    consent_screen_enabled: bool,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    authorize_url: Option<String>,
    #[serde(default)]
    token_fetch_url: Option<String>,
    #[serde(default)]
    user_info_url: Option<String>,
    #[serde(default)]
    discovery_url: Option<String>,
    #[serde(default)]
    created_at: Option<i64>,
    /// Only in create and rotate_secret responses ("Empty if public client").
    #[serde(default)]
    client_secret: Option<SecretString>,
}

#[derive(Deserialize)]
struct ClerkAppList {
    data: Vec<ClerkApp>,
    total_count: i64,
}

#[derive(Deserialize, Default)]
struct ClerkErrors {
    #[serde(default)]
    errors: Vec<ClerkErrorItem>,
}

#[derive(Deserialize)]
struct ClerkErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    long_message: String,
}

/// The body of create and PATCH: only fields the spec lists (PATCH has
/// `additionalProperties: false`).
#[derive(Serialize, Debug, PartialEq)]
struct ClerkAppBody<'a> {
    name: &'a str,
    redirect_uris: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consent_screen_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkce_required: Option<bool>,
    public: bool,
}

fn body_for(desired: &DesiredClient) -> ClerkAppBody<'_> {
    ClerkAppBody {
        name: &desired.name,
        redirect_uris: &desired.redirect_uris,
        scopes: (!desired.scopes.is_empty()).then(|| desired.scopes.join(" ")),
        consent_screen_enabled: desired.consent_screen,
        pkce_required: desired.pkce_required,
        public: desired.public,
    }
}

/// What Clerk cannot represent, refused before any call.
pub fn check_supported(desired: &DesiredClient) -> Result<(), ProviderError> {
    if !desired.post_logout_redirect_uris.is_empty() {
        return Err(ProviderError::Unsupported(
            "the Clerk backend does not support postLogoutRedirectUris".into(),
        ));
    }
    if let Some(g) = desired
        .grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(ProviderError::Unsupported(format!(
            "the Clerk backend supports only the authorization_code and refresh_token grants, not {g}"
        )));
    }
    if desired.name.chars().count() > 256 {
        return Err(ProviderError::Unsupported(
            "Clerk limits names to 256 characters".into(),
        ));
    }
    Ok(())
}

/// Managed fields that differ at Clerk (scopes compare as sets; unmanaged fields are skipped).
pub fn diff(desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if desired.name != remote.name {
        fields.push("name");
    }
    if desired.redirect_uris != remote.redirect_uris {
        fields.push("redirectUris");
    }
    if !desired.scopes.is_empty() && as_set(&desired.scopes) != as_set(&remote.scopes) {
        fields.push("scopes");
    }
    diff_flags(desired, remote, &mut fields);
    fields
}

/// Clerk documents `created_at` as a Unix timestamp; its API returns milliseconds. Accept both.
fn timestamp_from_unix(value: i64) -> Option<Timestamp> {
    if value > 100_000_000_000 {
        Timestamp::from_millisecond(value).ok()
    } else {
        Timestamp::from_second(value).ok()
    }
}

impl ClerkApp {
    fn into_issued(mut self) -> IssuedClient {
        let secret = self
            .client_secret
            .take()
            .filter(|s| !self.public && !s.expose_secret().is_empty());
        IssuedClient {
            client: self.into_remote(),
            client_secret: secret,
        }
    }

    fn into_remote(self) -> RemoteClient {
        let scopes = if self.scopes.trim().is_empty() {
            DEFAULT_SCOPES
        } else {
            &self.scopes
        };
        let issuer = self
            .discovery_url
            .as_deref()
            .and_then(|d| d.strip_suffix("/.well-known/openid-configuration"))
            .map(str::to_string);
        RemoteClient {
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
            endpoints: Endpoints {
                issuer,
                discovery: self.discovery_url,
                authorize: self.authorize_url,
                token: self.token_fetch_url,
                userinfo: self.user_info_url,
                ..Default::default()
            }
            .into(),
            created_at: self.created_at.and_then(timestamp_from_unix),
            id: self.id,
            client_id: self.client_id,
            name: self.name,
            redirect_uris: self.redirect_uris,
            post_logout_redirect_uris: Vec::new(),
            grant_types: Vec::new(),
            owner_uid: None,
            public: self.public,
            pkce_required: self.pkce_required,
            consent_screen: self.consent_screen_enabled,
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }
}

/// Whether a 404 is Clerk saying the object does not exist (`resource_not_found`), not a proxy
/// or a wrong base URL answering 404: only the former may lead to "the client is gone".
fn is_clerk_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<ClerkErrors>(body)
        .is_ok_and(|e| e.errors.iter().any(|e| e.code == "resource_not_found"))
}

/// Clerk's error body as one line: `code: long_message` for each error.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let parsed: ClerkErrors = serde_json::from_slice(body).unwrap_or_default();
    let parts: Vec<String> = parsed
        .errors
        .iter()
        .map(|e| {
            let text = if e.long_message.is_empty() {
                &e.message
            } else {
                &e.long_message
            };
            if e.code.is_empty() {
                text.clone()
            } else {
                format!("{}: {}", e.code, text)
            }
        })
        .collect();
    if parts.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        parts.join("; ")
    }
}

impl ClerkClient {
    /// `base_url` is the Backend API root (e.g. `https://api.clerk.com/v1`).
    pub fn new(
        http: impl Into<ProviderHttp>,
        base_url: &str,
        secret_key: SecretString,
        budget: Arc<RequestBudgetLimiter>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        let mut base_url = url::Url::parse(base_url)
            .map_err(|e| ProviderError::Unsupported(format!("invalid Clerk baseUrl: {e}")))?;
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        Ok(Self {
            endpoint: HttpEndpoint {
                http: http.into(),
                budget,
                metrics,
                backend: BACKEND,
            },
            base_url,
            secret_key,
        })
    }

    /// `base_url` + path segments; each segment is percent-encoded, so an id can never
    /// escape its place in the path (`..`, `/`, `?`).
    fn url(&self, segments: &[&str]) -> Result<url::Url, ProviderError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|_| ProviderError::Unsupported("Clerk baseUrl cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// One request to the Backend API (budget, span, metrics and error mapping are shared:
    /// see [`HttpEndpoint`]).
    fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&ClerkAppBody<'_>>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut request = self
            .endpoint
            .http
            .request(method, self.url(segments)?)
            .bearer_auth(self.secret_key.expose_secret())
            .header("Clerk-API-Version", CLERK_API_VERSION)
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        Ok(request)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&ClerkAppBody<'_>>,
    ) -> Result<T, ProviderError> {
        let request = self.request(method, segments, query, body)?;
        self.endpoint
            .send(operation, request, &ClerkErrorBodies)
            .await
    }

    /// One page of applications (optionally those matching `name_query`), 500 from `offset`
    /// in creation order; the offset of the next page, if there is one.
    async fn page(
        &self,
        name_query: Option<&str>,
        offset: usize,
    ) -> Result<(Vec<RemoteClient>, Option<usize>), ProviderError> {
        let mut query = vec![
            ("limit", PAGE_LIMIT.to_string()),
            ("offset", offset.to_string()),
            ("order_by", "+created_at".to_string()),
        ];
        if let Some(q) = name_query {
            query.push(("name_query", q.to_string()));
        }
        let page: ClerkAppList = self
            .send("list", Method::GET, &[APPS], &query, None)
            .await?;
        let got = page.data.len();
        let next = offset + got;
        let more = got >= PAGE_LIMIT && (next as i64) < page.total_count;
        Ok((
            page.data.into_iter().map(ClerkApp::into_remote).collect(),
            more.then_some(next),
        ))
    }

    /// All applications (optionally those matching `name_query`), 500 per page.
    pub async fn list(&self, name_query: Option<&str>) -> Result<Vec<RemoteClient>, ProviderError> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (clients, next) = self.page(name_query, offset).await?;
            all.extend(clients);
            match next {
                Some(next) => offset = next,
                None => return Ok(all),
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for ClerkClient {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            identity: Identity::ServerAssigned,
            secret_source: SecretSource::IssuedOnce,
            rotation: Rotation::ServerEndpoint,
            drift: DriftSource::ListAll,
            owner_marker: OwnerMarker::TaggedName,
            given_credentials: false,
            grace_period: false,
            new_client: true,
        }
    }

    fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError> {
        check_supported(desired)
    }

    fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
        diff(desired, remote)
    }

    async fn create(
        &self,
        desired: &DesiredClient,
        _registration: &Registration<'_>,
    ) -> Result<IssuedClient, ProviderError> {
        let app: ClerkApp = self
            .send(
                "create",
                Method::POST,
                &[APPS],
                &[],
                Some(&body_for(desired)),
            )
            .await?;
        Ok(app.into_issued())
    }

    async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError> {
        let app: ClerkApp = self
            .send("get", Method::GET, &[APPS, checked_id(id)?], &[], None)
            .await?;
        Ok(app.into_remote())
    }

    async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
        _owner_uid: &str,
    ) -> Result<RemoteClient, ProviderError> {
        let app: ClerkApp = self
            .send(
                "update",
                Method::PATCH,
                &[APPS, checked_id(id)?],
                &[],
                Some(&body_for(desired)),
            )
            .await?;
        Ok(app.into_remote())
    }

    async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        match self
            .send::<serde_json::Value>(
                "delete",
                Method::DELETE,
                &[APPS, checked_id(id)?],
                &[],
                None,
            )
            .await
        {
            Ok(_) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn rotate_secret(&self, id: &str) -> Result<IssuedClient, ProviderError> {
        let app: ClerkApp = self
            .send(
                "rotate_secret",
                Method::POST,
                &[APPS, checked_id(id)?, "rotate_secret"],
                &[],
                None,
            )
            .await?;
        Ok(app.into_issued())
    }

    async fn list_page(&self, from: Option<&PageCursor>) -> Result<ClientPage, ProviderError> {
        let offset = match from {
            None => 0,
            Some(PageCursor(offset)) => offset.parse().map_err(|_| {
                ProviderError::Unsupported(format!("not a Clerk list offset: {offset:?}"))
            })?,
        };
        let (clients, next) = self.page(None, offset).await?;
        Ok(ClientPage {
            clients,
            next: next.map(|n| PageCursor(n.to_string())),
        })
    }

    /// Clients whose name is exactly `marker` (the uid-tagged registration name).
    async fn find_by_owner_marker(&self, marker: &str) -> Result<Vec<RemoteClient>, ProviderError> {
        Ok(self
            .list(Some(marker))
            .await?
            .into_iter()
            .filter(|r| r.name == marker)
            .collect())
    }

    /// Client authentication at Clerk's token endpoint (the `token_fetch_url` Clerk reports
    /// for the client; see [`client_authenticates`]).
    async fn proves_possession(
        &self,
        remote: &RemoteClient,
        secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        match remote.endpoints.token.as_deref() {
            Some(token_url) => {
                client_authenticates(&self.endpoint, token_url, &remote.client_id, secret).await
            }
            None => Ok(false),
        }
    }

    async fn check_reachable(&self) -> Result<(), ProviderError> {
        let _: ClerkAppList = self
            .send(
                "list",
                Method::GET,
                &[APPS],
                &[("limit", "1".to_string())],
                None,
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever Clerk answers (any JSON shape, cut short, noise) is parsed or refused,
        /// never a panic, and a client that parses maps to a `RemoteClient`.
        #[test]
        fn any_answer_is_parsed_or_refused(v in crate::providers::arbitrary::json(),
                                           body in crate::providers::arbitrary::body()) {
            if let Ok(app) = serde_json::from_value::<ClerkApp>(v.clone()) {
                let _ = app.into_remote();
            }
            let _ = serde_json::from_value::<ClerkAppList>(v);
            let _ = serde_json::from_slice::<ClerkApp>(&body);
            let _ = ClerkErrorBodies.message(StatusCode::BAD_REQUEST, &body);
            let _ = ClerkErrorBodies.is_not_found(&body);
        }
    }

    fn desired() -> DesiredClient {
        DesiredClient {
            name: "team/app".into(),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["profile".into(), "email".into()],
            public: false,
            grant_types: vec![],
            pkce_required: Some(true),
            consent_screen: None,
            rotation_grace: None,
        }
    }

    fn remote() -> RemoteClient {
        RemoteClient {
            id: "oa_1".into(),
            client_id: "c1".into(),
            name: "team/app".into(),
            redirect_uris: vec!["https://app.example.com/cb".into()],
            post_logout_redirect_uris: vec![],
            scopes: vec!["email".into(), "profile".into()],
            grant_types: vec![],
            owner_uid: None,
            public: false,
            pkce_required: true,
            consent_screen: false,
            endpoints: Default::default(),
            created_at: None,
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }

    #[test]
    fn body_has_only_spec_fields_and_joins_scopes() {
        let d = desired();
        let json = serde_json::to_value(body_for(&d)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "team/app",
                "redirect_uris": ["https://app.example.com/cb"],
                "scopes": "profile email",
                "pkce_required": true,
                "public": false
            })
        );
    }

    #[test]
    fn diff_ignores_scope_order_and_unmanaged_fields() {
        assert!(diff(&desired(), &remote()).is_empty());
        let mut r = remote();
        r.redirect_uris.push("https://evil.example.com/cb".into());
        r.pkce_required = false;
        r.scopes = vec!["profile".into()];
        assert_eq!(
            diff(&desired(), &r),
            vec!["redirectUris", "scopes", "pkceRequired"]
        );
    }

    #[test]
    fn unsupported_features_are_refused_before_any_call() {
        let mut d = desired();
        d.post_logout_redirect_uris = vec!["https://app.example.com/bye".into()];
        assert!(matches!(
            check_supported(&d),
            Err(ProviderError::Unsupported(_))
        ));
        let mut d = desired();
        d.grant_types = vec!["client_credentials".into()];
        assert!(matches!(
            check_supported(&d),
            Err(ProviderError::Unsupported(_))
        ));
        assert!(check_supported(&desired()).is_ok());
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        assert!(checked_id("oa_2abcXYZ9").is_ok());
        for bad in ["../users/user_1", "oa_", "oa_a/b", "oa_a%2e", "users", ""] {
            assert!(checked_id(bad).is_err(), "{bad}");
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::default());
        let budget = crate::api::RequestBudget::default();
        let client = ClerkClient::new(
            reqwest::Client::new(),
            "https://api.clerk.com/v1/",
            SecretString::from("k"),
            Arc::new(RequestBudgetLimiter::new(
                &budget,
                "t".into(),
                metrics.clone(),
            )),
            metrics,
        )
        .unwrap();
        assert_eq!(
            client
                .url(&[APPS, "oa_1", "rotate_secret"])
                .unwrap()
                .as_str(),
            "https://api.clerk.com/v1/oauth_applications/oa_1/rotate_secret"
        );
        assert_eq!(
            client.url(&[APPS, "a/../b"]).unwrap().as_str(),
            "https://api.clerk.com/v1/oauth_applications/a%2F..%2Fb"
        );
    }

    #[test]
    fn unparsable_bodies_never_quote_the_secret() {
        let body = br#"{"id":"oa_1","name":"n","client_id":"c","public":"s3cr3t-value"}"#;
        let err = serde_json::from_slice::<ClerkApp>(body).err().unwrap();
        assert!(
            err.to_string().contains("s3cr3t-value"),
            "serde itself would quote it"
        );
        assert!(!super::super::http::body_error(&err).contains("s3cr3t-value"));
    }

    #[test]
    fn only_clerks_own_404_means_not_found() {
        assert!(is_clerk_not_found(
            br#"{"errors":[{"code":"resource_not_found","message":"m","long_message":"l"}]}"#
        ));
        assert!(!is_clerk_not_found(b"<html>404 Not Found</html>"));
        assert!(!is_clerk_not_found(
            br#"{"errors":[{"code":"other","message":"m","long_message":"l"}]}"#
        ));
    }

    #[test]
    fn clerk_error_body_becomes_the_message() {
        let body = br#"{"errors":[{"code":"form_param_unknown","message":"is unknown","long_message":"foo is not a valid parameter"}],"clerk_trace_id":"t"}"#;
        assert_eq!(
            error_message(StatusCode::UNPROCESSABLE_ENTITY, body),
            "form_param_unknown: foo is not a valid parameter"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"<html>"),
            "Bad Gateway"
        );
    }

    #[test]
    fn secret_is_dropped_for_public_clients_and_issuer_derived() {
        let app: ClerkApp = serde_json::from_value(serde_json::json!({
            "object": "oauth_application", "id": "oa_1", "instance_id": "ins_1", "name": "n",
            "client_id": "c", "public": true, "scopes": "", "redirect_uris": [],
            "discovery_url": "https://x.clerk.accounts.dev/.well-known/openid-configuration",
            "client_secret": "", "created_at": 1_700_000_000_000i64
        }))
        .unwrap();
        let issued = app.into_issued();
        assert!(issued.client_secret.is_none());
        assert_eq!(
            issued.client.endpoints.issuer.as_deref(),
            Some("https://x.clerk.accounts.dev")
        );
        assert_eq!(issued.client.scopes, vec!["profile", "email"]);
        assert_eq!(issued.client.created_at.unwrap().as_second(), 1_700_000_000);
    }
}
