//! `OAuthApplication`: one OAuth 2.0 / OpenID Connect client. Spec in; Secret and status out.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
#[allow(unused_imports)] // used inside the x_kube validation attributes
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validation::{REDIRECT_URI_RULES, SCOPE_PATTERN};

/// Annotation on an `OAuthApplication`: set it to a new value (any token) to rotate the client
/// secret once per value.
pub const ROTATE_ANNOTATION: &str = "oauth-operator.dev/rotate";
/// Annotation on an `OAuthApplication` being deleted: `"true"` removes the finalizer even
/// when the provider cannot be reached (the remote client is then left behind).
pub const FORCE_DELETE_ANNOTATION: &str = "oauth-operator.dev/force-delete";

/// An OAuth 2.0 / OpenID Connect client registered at an authorization server, with its
/// credentials written once into a Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth-operator.dev",
    version = "v1alpha1",
    kind = "OAuthApplication",
    doc = "An OAuth 2.0 / OpenID Connect client registered at an authorization server; its credentials are written once into a Secret.",
    namespaced,
    shortname = "oauthapp",
    category = "oauth",
    status = "OAuthApplicationStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Client ID","type":"string","jsonPath":".status.clientId"}"#,
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.providerRef.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.clientType != 'public' || !has(self.secret) || !has(self.secret.keys) || !has(self.secret.keys.clientSecret)").message("a public client has no client secret: remove secret.keys.clientSecret"))]
#[x_kube(validation = Rule::new("(has(self.secret) && has(self.secret.name) ? self.secret.name : '') == (has(oldSelf.secret) && has(oldSelf.secret.name) ? oldSelf.secret.name : '')").message("secret.name is immutable (also when it is added or removed)"))]
#[x_kube(validation = Rule::new("has(self.secret) && has(self.secret.keys) ? (has(oldSelf.secret) && has(oldSelf.secret.keys) && self.secret.keys == oldSelf.secret.keys) : !(has(oldSelf.secret) && has(oldSelf.secret.keys))").message("secret.keys is immutable: the credentials stay under the keys workloads read"))]
#[x_kube(validation = Rule::new("self.clientType != 'public' || !has(self.grantTypes) || !self.grantTypes.exists(g, g == 'client_credentials')").message("a public client cannot use the client_credentials grant"))]
#[x_kube(validation = Rule::new("self.clientType != 'public' || !has(self.rotation) || !has(self.rotation.period)").message("a public client has no client secret to rotate: remove rotation.period"))]
#[x_kube(validation = Rule::new("self.clientType != 'public' || !has(self.rotation) || !has(self.rotation.gracePeriod)").message("a public client has no client secret to rotate: remove rotation.gracePeriod"))]
#[x_kube(validation = Rule::new("!has(self.credentialsFrom) || self.clientType != 'public'").message("credentialsFrom gives a client secret, and a public client has none: remove credentialsFrom"))]
#[x_kube(validation = Rule::new("!has(self.credentialsFrom) || !has(self.rotation)").message("a client with credentialsFrom is rotated by changing its Secret: remove rotation"))]
#[x_kube(validation = Rule::new("!has(self.credentialsFrom) || !has(self.secret) || !has(self.secret.name) || self.secret.name != self.credentialsFrom.name").message("the operator never writes the Secret credentialsFrom names: give secret.name another name"))]
#[x_kube(validation = Rule::new("has(self.credentialsFrom) == has(oldSelf.credentialsFrom)").message("credentialsFrom cannot be added or removed: the client id would change; create a new OAuthApplication"))]
#[serde(rename_all = "camelCase")]
pub struct OAuthApplicationSpec {
    /// The provider (authorization server) that registers this client. Immutable: a client
    /// cannot move between authorization servers.
    #[x_kube(validation = Rule::new("self == oldSelf").message("providerRef is immutable"))]
    pub provider_ref: ProviderRef,

    /// Name shown to users (e.g. on the consent screen). Defaults to `<namespace>/<name>`. No
    /// control characters (line breaks, tabs, bidirectional overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(r"!self.matches('[\\x00-\\x1f\\x7f\\x{202a}-\\x{202e}\\x{2066}-\\x{2069}]')").message("displayName must not contain control characters or bidirectional overrides"))]
    pub display_name: Option<String>,

    /// Redirect URIs: absolute, no fragment, no wildcard, `https` except `http` on a loopback
    /// host and private-use schemes for native apps (RFC 9700, RFC 8252).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub redirect_uris: Vec<RedirectUri>,

    /// Where the provider may send the user after logout (same rules as `redirectUris`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub post_logout_redirect_uris: Vec<RedirectUri>,

    /// Scopes the client may request, one token per item (e.g. `openid`, `profile`, `email`).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128), regex(pattern = SCOPE_PATTERN)))]
    pub scopes: Vec<String>,

    /// `confidential` clients get a client secret; `public` clients (SPAs, native apps) do not.
    /// Immutable: a Secret's credentials never change kind.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("clientType is immutable"))]
    pub client_type: ClientType,

    /// OAuth grant types the client may use. Defaults to the provider's default
    /// (authorization_code and refresh_token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub grant_types: Vec<GrantType>,

    /// Require PKCE (RFC 7636) in the authorization-code flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce_required: Option<bool>,

    /// Show a consent screen to users in the authorization flow. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_screen: Option<bool>,

    /// Where the credentials are written.
    // Boxed here and below: an optional part most applications leave out costs a pointer,
    // not its full size, in each cached application (thousands of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Box<SecretSpec>>,

    /// What happens to the client at the provider when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What happens when the client is changed at the provider (e.g. in a dashboard).
    #[serde(default)]
    pub drift_policy: DriftPolicy,

    /// When the client secret is rotated besides on request (the `oauth-operator.dev/rotate`
    /// annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<RotationSpec>>,

    /// Bring your own credentials: a Secret in this namespace (e.g. written by External
    /// Secrets from a vault) holding the client id and secret to register the client with,
    /// where the backend lets the operator choose them (Hydra, Keycloak). The operator reads
    /// it, never writes it, and pushes a changed secret to the provider; the client belongs to
    /// whoever holds its secret, so clusters sharing the Secret share one client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_from: Option<Box<CredentialsFrom>>,
}

/// Where given credentials are read (`spec.credentialsFrom`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsFrom {
    /// Name of the Secret, in the application's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key of the client id in it. Default `CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_id_key: Option<String>,
    /// Key of the client secret in it. Default `CLIENT_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_secret_key: Option<String>,
}

impl CredentialsFrom {
    pub fn client_id_key(&self) -> &str {
        self.client_id_key
            .as_deref()
            .unwrap_or(default_keys::CLIENT_ID)
    }

    pub fn client_secret_key(&self) -> &str {
        self.client_secret_key
            .as_deref()
            .unwrap_or(default_keys::CLIENT_SECRET)
    }
}

/// Rotation of the client secret: on a schedule, and with an overlap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.period) || !has(self.gracePeriod) || duration(self.gracePeriod).getSeconds() * 10 <= duration(self.period).getSeconds() * 9").message("rotation.gracePeriod must be at most nine tenths of rotation.period (a scheduled rotation may come a tenth early; one previous secret or old client at a time)"))]
pub struct RotationSpec {
    /// Rotate the client secret once per period (a Go duration, e.g. `2160h`; at least `30s`).
    /// Each application rotates up to a tenth of the period early, by an offset fixed by its
    /// uid, so that applications created together do not rotate together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s')").message("rotation.period must be at least 30s"))]
    pub period: Option<kube::core::Duration>,
    /// After a rotation the old credentials keep working for this long. With `strategy:
    /// InPlace`, where the server can hold two secrets (Keycloak, with its
    /// `client-secret-rotation` feature): the Secret carries the previous secret under
    /// `<clientSecret key>_PREVIOUS` until then, and `status.previousSecretExpiresAt` says when
    /// it stops working; refused where the server invalidates the old secret at once (Clerk,
    /// Hydra). With `strategy: NewClient` (and at RFC 7591 servers, which rotate by a new
    /// client): the replaced client is deleted this long after the Secret switched to the new
    /// one (`status.retiringClientDeleteAt`). At least `1s`, at most `8760h`, and at most
    /// nine tenths of `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('8760h')").message("rotation.gracePeriod must be between 1s and 8760h"))]
    pub grace_period: Option<kube::core::Duration>,
    /// How a new secret is obtained. `InPlace` (default): the client keeps its id and gets a
    /// new secret. `NewClient`: a second client with new credentials is registered, the Secret
    /// switched to it, and the old client deleted (after `gracePeriod`); the client id changes
    /// (`status.clientId`, a `ClientReplaced` event). For servers that invalidate an old
    /// secret at once (Clerk, Hydra: `oauth-operator-<uid>-r2`, `-r3`, ...); RFC 7591 servers
    /// always rotate this way. Refused at Keycloak, which keeps the previous secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RotationStrategyKind>,
}

/// How a new secret is obtained: `InPlace` (default), a new secret for the same client;
/// `NewClient`, a second client with new credentials, the Secret switched to it and the old
/// client deleted after `gracePeriod` (the client id changes). `NewClient` at Clerk and Hydra;
/// refused at Keycloak, which keeps the previous secret itself (use `gracePeriod`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RotationStrategyKind {
    /// A new secret for the same client (the default).
    #[default]
    InPlace,
    /// A new client with new credentials; the old one is deleted after `gracePeriod`.
    NewClient,
}

/// A redirect URI (validated by CEL in the CRD and again by the operator).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct RedirectUri(pub String);

impl JsonSchema for RedirectUri {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RedirectUri".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rules: Vec<serde_json::Value> = REDIRECT_URI_RULES
            .iter()
            .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
            .collect();
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 2048,
            "x-kubernetes-validations": rules,
        })
    }
}

/// Reference to an `OAuthProvider` (same namespace) or a `ClusterOAuthProvider`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRef {
    /// `OAuthProvider` or `ClusterOAuthProvider`.
    #[serde(default)]
    pub kind: ProviderKind,
    /// Name of the provider.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum ProviderKind {
    #[default]
    OAuthProvider,
    ClusterOAuthProvider,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::OAuthProvider => "OAuthProvider",
            ProviderKind::ClusterOAuthProvider => "ClusterOAuthProvider",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClientType {
    #[default]
    Confidential,
    Public,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the client at the provider (the default).
    #[default]
    Delete,
    /// Leave the client and its Secret in place.
    Orphan,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DriftPolicy {
    /// Change the client at the provider back to the spec (the default).
    #[default]
    Correct,
    /// Report the difference (condition `Drifted` and an event) and change nothing.
    Report,
}

/// The Secret that receives the client credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret, in the application's namespace. Defaults to `<name>-oauth`.
    /// Immutable (it cannot be added or removed later either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Key names in the Secret. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<SecretKeys>,
    /// Labels and annotations put on the Secret (reconciled; they never change its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
}

/// Key names in the Secret. The defaults suit `envFrom`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeys {
    /// Key for the client id. Default `CLIENT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_id: Option<String>,
    /// Key for the client secret (confidential clients only). Default `CLIENT_SECRET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_secret: Option<String>,
    /// Key for the issuer URL. Default `ISSUER_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub issuer_url: Option<String>,
    /// Key for the OpenID discovery URL. Default `DISCOVERY_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub discovery_url: Option<String>,
    /// Key for the authorization endpoint. Default `AUTHORIZE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub authorize_url: Option<String>,
    /// Key for the token endpoint. Default `TOKEN_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub token_url: Option<String>,
    /// Key for the userinfo endpoint. Default `USERINFO_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub userinfo_url: Option<String>,
}

/// Metadata put on the Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of an `OAuthApplication`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthApplicationStatus {
    /// The generation whose spec was last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (with a reason saying why not; its `observedGeneration` is the generation it
    /// was set for), `Reconciling` (work in progress), `Stalled` (a permanent failure) and
    /// `Drifted`: what kstatus, `kubectl wait`, Flux and Argo CD read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation whose spec was last applied at the provider (`observedGeneration` also
    /// moves on when a generation fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_generation: Option<i64>,
    /// The OAuth client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The provider's own id of the client object (Clerk: `oa_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_object_id: Option<String>,
    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Endpoints of the authorization server for this client.
    // Shared: the clients of one server have the same endpoints, and the operator caches
    // thousands of applications (see `controller::share_endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<std::sync::Arc<Endpoints>>,
    /// When the client was last checked against the provider, as of the last status write:
    /// a check that changes nothing writes no status (it is not a heartbeat; `Ready` and its
    /// `observedGeneration` say the client is in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When the client secret was last rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotated_at: Option<Time>,
    /// When the next scheduled rotation is due (with `rotation.period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
    /// With `rotation.gracePeriod`: when the previous client secret (kept in the Secret under
    /// `<clientSecret key>_PREVIOUS`) stops working at the server. Cleared, and that key
    /// removed, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<Time>,
    /// The last value of the `oauth-operator.dev/rotate` annotation that was carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_token: Option<String>,
    /// Set just before a client is created at a provider that chooses the client id and
    /// secret, and cleared once the Secret exists: after a crash in between, the operator
    /// finds that client instead of creating a second one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_registration: Option<Box<PendingRegistration>>,
    /// Fields that differ at the provider from the spec (with `driftPolicy: Report`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted_fields: Vec<String>,
    /// The Secret keys the client id and secret were written under. A changed
    /// `spec.secret.keys` is refused rather than answered with new credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_keys: Option<RecordedSecretKeys>,
    /// Set before new credentials are requested for a known client, and while newly issued
    /// credentials are staged in the operator's own namespace and not yet in the Secret;
    /// cleared once the Secret holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_in_flight_since: Option<Time>,
    /// A client being replaced by a new registration (rotation where the server can only
    /// recreate): recorded before the new one is registered, deleted once the Secret holds the
    /// new one's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_client_id: Option<String>,
    /// When the retiring client is deleted (`rotation.gracePeriod` after the Secret switched
    /// away from it): its credentials work until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_client_delete_at: Option<Time>,
    /// With `spec.credentialsFrom`: the `resourceVersion` of that Secret when the provider was
    /// last given (or shown to hold) its credentials. A new version is pushed to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_from_version: Option<String>,
}

/// Key names of the credentials in the Secret, as written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedSecretKeys {
    pub client_id: String,
    pub client_secret: String,
}

/// A create call that may have happened without its result being recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingRegistration {
    /// The client name sent to the provider.
    pub name: String,
    /// When the create call was started.
    pub started_at: Time,
    /// When a create call ended without a definite answer (timeout, 5xx): the operator waits
    /// from then for a late commit before creating again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unanswered_at: Option<Time>,
}

/// Endpoints of the authorization server for this client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo: Option<String>,
    /// RP-initiated logout (`end_session_endpoint`), where the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session: Option<String>,
    /// The server's signing keys (`jwks_uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

/// Default key names (suited to `envFrom`).
pub mod default_keys {
    pub const CLIENT_ID: &str = "CLIENT_ID";
    pub const CLIENT_SECRET: &str = "CLIENT_SECRET";
    pub const ISSUER_URL: &str = "ISSUER_URL";
    pub const DISCOVERY_URL: &str = "DISCOVERY_URL";
    pub const AUTHORIZE_URL: &str = "AUTHORIZE_URL";
    pub const TOKEN_URL: &str = "TOKEN_URL";
    pub const USERINFO_URL: &str = "USERINFO_URL";
}

impl OAuthApplication {
    /// The Secret name: `spec.secret.name` or `<name>-oauth`.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}-oauth",
                    self.metadata.name.as_deref().unwrap_or_default()
                )
            })
    }

    /// The client name at the provider: `spec.displayName` or `<namespace>/<name>`.
    pub fn display_name(&self) -> String {
        self.spec.display_name.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default()
            )
        })
    }

    pub fn rotate_token(&self) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(ROTATE_ANNOTATION)
            .map(String::as_str)
    }

    pub fn force_delete(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(FORCE_DELETE_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}
