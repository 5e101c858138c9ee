//! `OAuthProvider` (namespaced) and `ClusterOAuthProvider` (cluster-scoped): an authorization
//! server and the admin credential to manage clients on it, after cert-manager's Issuer /
//! ClusterIssuer.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
#[allow(unused_imports)] // used inside the x_kube validation attributes
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Clerk's documented Backend API base URL.
pub const CLERK_DEFAULT_BASE_URL: &str = "https://api.clerk.com/v1";
/// Default key of the Clerk secret key in the credential Secret.
pub const CLERK_DEFAULT_SECRET_KEY_KEY: &str = "secretKey";
/// Default keys of the Keycloak service-account client's credentials.
pub const KEYCLOAK_DEFAULT_CLIENT_ID_KEY: &str = "clientId";
pub const KEYCLOAK_DEFAULT_CLIENT_SECRET_KEY: &str = "clientSecret";

/// An authorization server usable by `OAuthApplication`s in the provider's own namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth-operator.dev",
    version = "v1alpha1",
    kind = "OAuthProvider",
    doc = "An authorization server (and the admin credential to manage clients on it) usable by OAuthApplications in its own namespace.",
    namespaced,
    category = "oauth",
    status = "ProviderStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("[has(self.clerk), has(self.hydra), has(self.keycloak), has(self.dynamicRegistration)].filter(b, b).size() == 1").message("exactly one backend block must be set (supported: clerk, hydra, keycloak, dynamicRegistration)"))]
#[serde(rename_all = "camelCase")]
pub struct OAuthProviderSpec {
    #[serde(flatten)]
    pub settings: ProviderSettings,
}

/// An authorization server shared by the namespaces that `allowedNamespaces` admits (none by
/// default). Its credential Secret lives in the operator's namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "oauth-operator.dev",
    version = "v1alpha1",
    kind = "ClusterOAuthProvider",
    doc = "An authorization server shared by the namespaces its allowedNamespaces admits (none by default).",
    category = "oauth",
    status = "ProviderStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("[has(self.clerk), has(self.hydra), has(self.keycloak), has(self.dynamicRegistration)].filter(b, b).size() == 1").message("exactly one backend block must be set (supported: clerk, hydra, keycloak, dynamicRegistration)"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterOAuthProviderSpec {
    #[serde(flatten)]
    pub settings: ProviderSettings,
    /// Namespaces whose `OAuthApplication`s may use this provider. Empty (the default) admits
    /// none; a namespace is admitted when it is listed in `names` or matches `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<AllowedNamespaces>,
}

/// What both provider kinds hold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSettings {
    /// Clerk Backend API (`/v1/oauth_applications`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clerk: Option<ClerkProvider>,
    /// Ory Hydra admin API (`/admin/clients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydra: Option<HydraProvider>,
    /// Keycloak admin REST API (`/admin/realms/<realm>/clients`), one realm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak: Option<KeycloakProvider>,
    /// Any OAuth 2.0 server with RFC 7591 dynamic client registration (and RFC 7592
    /// management where it offers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_registration: Option<DynamicRegistrationProvider>,
    /// TLS trust for the provider's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProviderTls>,
    /// Client-side request budget (at most `requests` in any window of `periodSeconds`) shared
    /// by every application using this provider, so that a resync of many applications never
    /// trips the provider's rate limit.
    /// Unset: the operator's `--default-request-budget` when it is given, else the backend's
    /// own: 80 per 10 s for Clerk and RFC 7591 servers (often hosted services with low
    /// documented limits: Clerk development instances allow 100 per 10 s), 100 per 1 s for
    /// Hydra and Keycloak (servers a platform team runs itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_budget: Option<RequestBudget>,
}

/// The Clerk backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClerkProvider {
    /// Backend API base URL. Defaults to `https://api.clerk.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]'))").message("must be an https URL (http only on a loopback host)"))]
    pub base_url: Option<String>,
    /// The Secret holding the Clerk secret key (`sk_live_...` / `sk_test_...`). For an
    /// `OAuthProvider` it is read from the provider's namespace, for a `ClusterOAuthProvider`
    /// from the operator's namespace.
    pub secret_key_ref: SecretKeySelector,
}

/// The Ory Hydra backend. The operator chooses each client's id (`oauth-operator-<uid>`) and
/// generates its secret; the client's `metadata` names the application that owns it. Hydra's
/// admin API has no authentication of its own: keep it reachable only from the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HydraProvider {
    /// Admin API base URL (e.g. `http://hydra-admin.hydra:4445`).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("must be an http(s) URL"))]
    pub admin_url: String,
    /// The public issuer URL (Hydra's `urls.self.issuer`): the endpoints written to each
    /// Secret are derived from it.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]'))").message("must be an https URL (http only on a loopback host)"))]
    pub issuer_url: String,
}

/// The Keycloak backend, one realm. The operator authenticates as a confidential client of
/// that realm with a service account (client_credentials); the least privilege that works is
/// the `manage-clients` role of the realm's `realm-management` client. Each client gets the
/// clientId `oauth-operator-<uid>` and the internal id `<uid>` of its application, and its
/// attributes name the application that owns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeycloakProvider {
    /// Keycloak's base URL (e.g. `https://keycloak.example.com`), without `/admin` or
    /// `/realms`.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]'))").message("must be an https URL (http only on a loopback host)"))]
    pub base_url: String,
    /// The realm whose clients are managed; the issuer is `<baseUrl>/realms/<realm>`.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub realm: String,
    /// The Secret holding the operator's service-account client credentials (read from the
    /// provider's namespace, or the operator's for a `ClusterOAuthProvider`).
    pub credentials_ref: ClientCredentialsSelector,
}

/// Any RFC 7591 server. The server chooses each client's id and secret; the RFC 7592
/// registration access token and client URI it hands out are kept in Secrets in the operator's
/// namespace (never in status), so tenants cannot bypass the CRD's rules by editing the client
/// directly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicRegistrationProvider {
    /// The issuer; its discovery document (`/.well-known/openid-configuration`, then RFC 8414)
    /// names the registration endpoint and the endpoints written to each Secret.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]'))").message("must be an https URL (http only on a loopback host)"))]
    pub issuer_url: String,
    /// The registration endpoint, where discovery names none (Ory Hydra) or the wrong one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://127.0.0.1') || self.startsWith('http://localhost') || self.startsWith('http://[::1]'))").message("must be an https URL (http only on a loopback host)"))]
    pub registration_endpoint: Option<String>,
    /// The Secret key holding an RFC 7591 initial access token, where the server requires one
    /// (key default `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_access_token_ref: Option<SecretKeySelector>,
    /// RFC 7591 `software_id`, sent with every registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub software_id: Option<String>,
    /// RFC 7591 `software_statement` (a signed JWT), sent with every registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16384))]
    pub software_statement: Option<String>,
    /// How a new secret is had (rotation on request, a deleted Secret): RFC 7591 cannot
    /// rotate, so `Recreate` registers a new client, switches the Secret to it and deletes
    /// the old one (the client id changes). `None` (the default): a condition instead.
    #[serde(default)]
    pub rotation_strategy: RotationStrategy,
}

/// See [`DynamicRegistrationProvider::rotation_strategy`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum RotationStrategy {
    #[default]
    None,
    Recreate,
}

/// Default key of an initial access token.
pub const INITIAL_ACCESS_TOKEN_DEFAULT_KEY: &str = "token";

/// A Secret holding a client id and secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCredentialsSelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the client id. Defaults to `clientId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,
    /// Key of the client secret. Defaults to `clientSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
}

/// A key of a Secret (the Secret's namespace is implied by the provider kind).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret. Defaults to `secretKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// TLS settings for the provider's endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderTls {
    /// PEM-encoded CA certificates trusted for the provider's endpoint, in addition to the
    /// system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
}

/// At most `requests` in any window of `periodSeconds`, and that many when there is demand.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestBudget {
    /// Requests allowed per period. The default (80 per 10 s) stays below Clerk's documented
    /// limit for development instances (100 per 10 s); production instances allow 1000.
    #[serde(default = "default_budget_requests")]
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub requests: u32,
    /// Length of the period in seconds.
    #[serde(default = "default_budget_period")]
    #[schemars(range(min = 1, max = 3600), extend("format" = "int32"))]
    pub period_seconds: u32,
}

fn default_budget_requests() -> u32 {
    80
}
fn default_budget_period() -> u32 {
    10
}

impl Default for RequestBudget {
    fn default() -> Self {
        Self {
            requests: default_budget_requests(),
            period_seconds: default_budget_period(),
        }
    }
}

impl RequestBudget {
    /// The budget of a provider whose spec sets none and whose operator was given no
    /// `--default-request-budget`: by backend (see `ProviderSettings::request_budget`).
    pub fn backend_default(settings: &ProviderSettings) -> Self {
        if settings.hydra.is_some() || settings.keycloak.is_some() {
            Self {
                requests: 100,
                period_seconds: 1,
            }
        } else {
            Self::default()
        }
    }
}

/// `REQUESTS/PERIOD`, e.g. `80/10s` (the `--default-request-budget` flag), within the
/// bounds the CRD sets on `spec.requestBudget`.
impl std::str::FromStr for RequestBudget {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{value:?}: expected REQUESTS/PERIOD, e.g. 80/10s");
        let (requests, period) = value.split_once('/').ok_or_else(usage)?;
        let requests: u32 = requests.trim().parse().map_err(|_| usage())?;
        let period: kube::core::Duration = period.trim().parse().map_err(|_| usage())?;
        let period = std::time::Duration::from(period);
        if !(1..=1000).contains(&requests) {
            return Err(format!("{value:?}: requests must be 1 to 1000"));
        }
        if period.subsec_nanos() != 0 || !(1..=3600).contains(&period.as_secs()) {
            return Err(format!(
                "{value:?}: the period must be whole seconds, 1s to 3600s"
            ));
        }
        Ok(Self {
            requests,
            period_seconds: period.as_secs() as u32,
        })
    }
}

/// Namespaces admitted by a `ClusterOAuthProvider`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub names: Vec<String>,
    /// Namespaces whose labels match this selector are admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Observed state of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// The generation last reconciled successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `CredentialsFound`, `EndpointReachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The backend block in use (`clerk`, `hydra`, `keycloak`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The credential Secret the operator keeps from being deleted (a finalizer) while this
    /// provider exists, so that deleting a whole namespace still lets its applications delete
    /// their clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_credential: Option<String>,
}

impl ProviderSettings {
    /// The name of the Secret holding the admin credential.
    pub fn credential_secret(&self) -> Option<&str> {
        if let Some(c) = &self.clerk {
            return Some(c.secret_key_ref.name.as_str());
        }
        if let Some(k) = &self.keycloak {
            return Some(k.credentials_ref.name.as_str());
        }
        self.dynamic_registration
            .as_ref()
            .and_then(|d| d.initial_access_token_ref.as_ref())
            .map(|r| r.name.as_str())
    }
}

impl ProviderSettings {
    pub fn backend_name(&self) -> &'static str {
        if self.clerk.is_some() {
            "clerk"
        } else if self.hydra.is_some() {
            "hydra"
        } else if self.keycloak.is_some() {
            "keycloak"
        } else if self.dynamic_registration.is_some() {
            "dynamicRegistration"
        } else {
            "none"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ProviderSettings, RequestBudget};

    #[test]
    fn the_default_budget_follows_the_backend() {
        let settings = |block: serde_json::Value| -> ProviderSettings {
            serde_json::from_value(block).unwrap()
        };
        let budget = |s: &ProviderSettings| {
            let b = RequestBudget::backend_default(s);
            (b.requests, b.period_seconds)
        };
        let clerk = settings(serde_json::json!({"clerk": {"secretKeyRef": {"name": "k"}}}));
        let dcr = settings(
            serde_json::json!({"dynamicRegistration": {"issuerUrl": "https://id.example.com"}}),
        );
        let hydra = settings(
            serde_json::json!({"hydra": {"adminUrl": "http://hydra:4445", "issuerUrl": "http://hydra:4444"}}),
        );
        let keycloak = settings(serde_json::json!({"keycloak": {
            "baseUrl": "http://kc:8080", "realm": "r", "credentialsRef": {"name": "k"}}}));
        // Hosted services with documented limits keep below Clerk's development limit.
        assert_eq!(budget(&clerk), (80, 10));
        assert_eq!(budget(&dcr), (80, 10));
        // Servers run in-house get a budget that does not make a backlog wait.
        assert_eq!(budget(&hydra), (100, 1));
        assert_eq!(budget(&keycloak), (100, 1));
    }

    #[test]
    fn request_budget_parses_requests_per_period() {
        let b: RequestBudget = "80/10s".parse().unwrap();
        assert_eq!((b.requests, b.period_seconds), (80, 10));
        let b: RequestBudget = "1000/1m".parse().unwrap();
        assert_eq!((b.requests, b.period_seconds), (1000, 60));
        for bad in [
            "80",
            "0/10s",
            "1001/10s",
            "80/0s",
            "80/2h",
            "80/1500ms",
            "x/10s",
            "80/ten",
        ] {
            assert!(bad.parse::<RequestBudget>().is_err(), "{bad}");
        }
    }
}
