//! Authorization-server backends behind one interface, and the per-provider request budget.

pub mod budget;
pub mod clerk;
pub mod discovery;
pub mod dynamic_registration;
pub mod egress;
pub mod http;
pub mod hydra;
pub mod keycloak;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use secrecy::SecretString;

use crate::api::Endpoints;
pub use budget::RequestBudgetLimiter;

/// The client the spec asks for, in backend-neutral terms. Built by a pure function from the
/// `OAuthApplication` (see `controller::desired`). `None` means "not managed: leave the
/// provider's value alone".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub public: bool,
    pub grant_types: Vec<String>,
    pub pkce_required: Option<bool>,
    pub consent_screen: Option<bool>,
    /// `rotation.gracePeriod` in seconds: how long a rotated-out secret keeps working (only
    /// where [`Capabilities::grace_period`]).
    pub rotation_grace: Option<u64>,
}

/// A client as the provider reports it (never with its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteClient {
    /// The provider's own object id (Clerk: `oa_...`; Hydra: the client id).
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    /// The application uid the client carries as its owner marker, where the backend has a
    /// field for one ([`OwnerMarker::Metadata`]).
    pub owner_uid: Option<String>,
    pub public: bool,
    pub pkce_required: bool,
    pub consent_screen: bool,
    /// Shared: a server's clients have the same endpoints, and a list holds thousands.
    pub endpoints: std::sync::Arc<Endpoints>,
    pub created_at: Option<Timestamp>,
    /// The grace period (seconds) the client is marked for at the server, where the backend
    /// keeps rotated-out secrets valid ([`Capabilities::grace_period`]).
    pub grace_period: Option<u64>,
    /// Until when the server still accepts the client's previous secret (after a rotation with
    /// a grace period).
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// A client together with a freshly issued secret (create and rotate only).
pub struct IssuedClient {
    pub client: RemoteClient,
    /// `None` for public clients.
    pub client_secret: Option<SecretString>,
}

impl std::fmt::Debug for IssuedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClient")
            .field("client", &self.client)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// What went wrong talking to a provider. Messages never contain credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the request (4xx other than 404/429): permanent until the spec or
    /// the provider changes.
    #[error("provider rejected {operation} (HTTP {status}): {message}")]
    Rejected {
        operation: &'static str,
        status: u16,
        message: String,
    },
    /// 401/403: the admin credential is wrong or lacks permission.
    #[error("provider refused the admin credential for {operation} (HTTP {status}): {message}")]
    Unauthorized {
        operation: &'static str,
        status: u16,
        message: String,
    },
    #[error("{operation}: the client does not exist at the provider")]
    NotFound { operation: &'static str },
    /// 429: the provider's rate limit; `retry_after` from the `Retry-After` header.
    #[error("provider rate limit hit on {operation}; retry after {retry_after:?}")]
    RateLimited {
        operation: &'static str,
        retry_after: Option<Duration>,
    },
    /// 5xx, timeouts, connection errors: transient. `outcome_unknown`: the request may have
    /// been carried out (a timeout after sending it, a 500), so a create must not simply be
    /// repeated.
    #[error("provider unavailable for {operation}: {message}")]
    Unavailable {
        operation: &'static str,
        outcome_unknown: bool,
        message: String,
    },
    /// The spec asks for something this backend cannot do (checked before any call).
    #[error("{0}")]
    Unsupported(String),
}

/// Who chooses the client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The server assigns it at create time (Clerk, RFC 7591): until the answer is recorded,
    /// the client is found again by an owner marker, not by id.
    ServerAssigned,
    /// The operator chooses it (Hydra, Keycloak admin APIs), so a create can be repeated.
    OperatorChosen,
}

/// Where the client secret comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Issued by the server and shown once (Clerk): lost unless stored at once.
    IssuedOnce,
    /// Issued by the server and readable again later (Keycloak).
    IssuedReadable,
    /// Generated by the operator (Hydra: at least 32 bytes from a CSPRNG).
    OperatorGenerated,
}

/// How a new secret is obtained for an existing client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// A server endpoint issues a new one (Clerk `rotate_secret`); the old one dies at once.
    ServerEndpoint,
    /// The operator sets a new value (Hydra).
    OperatorSets,
    /// Only a new client can have a new secret (RFC 7591): a new client is registered, the
    /// Secret switched to it, the old one deleted; the client id changes.
    Recreate,
    /// No way to a new secret was allowed (`dynamicRegistration` without
    /// `rotationStrategy: Recreate`): a rotation or a lost Secret is a condition.
    Unavailable,
}

/// How the operator sees changes made at the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftSource {
    /// One paginated list per server per resync, shared by all its applications.
    ListAll,
    /// One GET per client (RFC 7592).
    GetEach,
}

/// How a client being registered is tied to the application that registers it (always by
/// the application's uid, never by namespace/name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerMarker {
    /// The uid is in the client's name until the id is recorded, then the name is set to the
    /// display name (Clerk has no other field for it).
    TaggedName,
    /// The uid is kept in a field of the client for its whole life (Hydra `metadata`,
    /// Keycloak attributes).
    Metadata,
    /// The server has no field for it and no search (RFC 7591): the operator's own record of
    /// each registration (the RFC 7592 access it saves, labelled with the uid, the moment the
    /// answer arrives) is what finds it again. A registration whose answer never arrived
    /// cannot be found: it is counted, reported in an event, and left.
    Unmarked,
}

/// Who registers a client, and with what the operator chose (operator-chosen backends).
pub struct Registration<'a> {
    /// The application's uid, carried by the owner marker.
    pub owner_uid: &'a str,
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a SecretString>,
    /// Credentials the user gave (`spec.credentialsFrom`, [`Capabilities::given_credentials`]):
    /// the client is created with them, and a create that finds the id taken fails with a 409
    /// whoever holds it (ownership of an existing client is proven by possession of its secret,
    /// by the controller, never by the create).
    pub given: bool,
}

/// What a backend can do; the controller reads these instead of assuming one server's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub identity: Identity,
    pub secret_source: SecretSource,
    pub rotation: Rotation,
    pub drift: DriftSource,
    pub owner_marker: OwnerMarker,
    /// Whether a client can be registered with credentials the user gives
    /// (`spec.credentialsFrom`): the operator chooses the id and can set the secret.
    pub given_credentials: bool,
    /// Whether the server keeps a rotated-out secret valid for a period
    /// (`rotation.gracePeriod`): Keycloak's `secret-rotation` client-policy executor.
    pub grace_period: bool,
    /// Whether a second client can be registered beside the current one (`rotation.strategy:
    /// NewClient`): where the server assigns ids, or where the operator has a second id scheme
    /// for the replacement ([`Backend::replacement_client_id`], Hydra).
    pub new_client: bool,
}

/// Where a paginated list of clients goes on (an offset or a server's page token): opaque
/// to the controller, handed back to the backend that gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor(pub String);

/// One page of a list of clients, and where the next one starts (`None`: this was the last).
#[derive(Debug, Default)]
pub struct ClientPage {
    pub clients: Vec<RemoteClient>,
    pub next: Option<PageCursor>,
}

/// The owner marker of a client registered with given credentials: it belongs to whoever
/// holds its secret (possibly several clusters), not to one application.
pub const GIVEN_OWNER: &str = "credentials-from";

fn unsupported(backend: &str, what: &str) -> ProviderError {
    ProviderError::Unsupported(format!("the {backend} backend cannot {what}"))
}

/// One authorization server, as the controller uses it. One implementation per module under
/// `providers/`; none knows another. Optional operations default to `Unsupported`: the
/// controller consults [`Backend::capabilities`] before it calls them.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name (metrics label, provider status).
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Checks that this backend can represent the desired client (no network).
    fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError>;

    /// Fields of the remote client that differ from the desired one (only managed fields).
    fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str>;

    /// Registers a client. Where the operator chooses the id and secret, a create that finds
    /// the id taken succeeds only if the existing client carries `registration.owner_uid`.
    async fn create(
        &self,
        desired: &DesiredClient,
        registration: &Registration<'_>,
    ) -> Result<IssuedClient, ProviderError>;

    async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError>;

    /// Brings the client's managed fields to `desired` (the secret is left as it is).
    async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
        owner_uid: &str,
    ) -> Result<RemoteClient, ProviderError>;

    /// The client id the operator gives the application with `uid`
    /// ([`Identity::OperatorChosen`]).
    fn chosen_client_id(&self, _uid: &str) -> Option<String> {
        None
    }

    /// The provider's object id of that client, where it differs from the client id
    /// (Keycloak's internal id).
    fn chosen_object_id(&self, uid: &str) -> Option<String> {
        self.chosen_client_id(uid)
    }

    /// The client id of the client that replaces `current` (`rotation.strategy: NewClient`,
    /// [`Identity::OperatorChosen`] with [`Capabilities::new_client`]): derived from `current`,
    /// so that a repeat after a crash chooses the same one, and never one used before. Its
    /// object id is the same.
    fn replacement_client_id(&self, _uid: &str, _current: &str) -> Option<String> {
        None
    }

    /// Sets the client's secret to `secret` ([`Rotation::OperatorSets`]); repeatable.
    async fn set_secret(
        &self,
        _id: &str,
        _desired: &DesiredClient,
        _owner_uid: &str,
        _secret: &SecretString,
    ) -> Result<RemoteClient, ProviderError> {
        Err(unsupported(self.name(), "set a client secret"))
    }

    /// Deletes the client; a client that is already gone counts as deleted.
    async fn delete(&self, id: &str) -> Result<(), ProviderError>;

    /// A new secret for an existing client ([`Rotation::ServerEndpoint`]).
    async fn rotate_secret(&self, _id: &str) -> Result<IssuedClient, ProviderError> {
        Err(unsupported(self.name(), "rotate a secret in place"))
    }

    /// A new secret for an existing client, the previous one kept valid for `grace_secs`
    /// seconds ([`Capabilities::grace_period`]). The answer's client reports until when
    /// ([`RemoteClient::previous_secret_expires_at`]; `None` if the server did not keep it).
    /// Whatever cannot be set up for the overlap fails before the secret is rotated.
    async fn rotate_secret_with_grace(
        &self,
        _id: &str,
        _grace_secs: u64,
    ) -> Result<IssuedClient, ProviderError> {
        Err(unsupported(
            self.name(),
            "keep a rotated-out secret valid for a grace period",
        ))
    }

    /// Drops a rotated-out secret the server still holds once its grace period is over.
    async fn forget_previous_secret(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// The client with this client id, found without the operator's own choice of object id
    /// ([`Capabilities::given_credentials`]).
    async fn find_by_client_id(
        &self,
        _client_id: &str,
    ) -> Result<Option<RemoteClient>, ProviderError> {
        Err(unsupported(
            self.name(),
            "look a client up by its client id",
        ))
    }

    /// One page of every client at the server ([`DriftSource::ListAll`]): the first (`from`
    /// `None`) or the one after an earlier page, so that a list cut short by an error goes on
    /// from where it stopped instead of starting over.
    async fn list_page(&self, _from: Option<&PageCursor>) -> Result<ClientPage, ProviderError> {
        Err(unsupported(self.name(), "list its clients"))
    }

    /// Every client at the server, page after page ([`Backend::list_page`]).
    async fn list_all(&self) -> Result<Vec<RemoteClient>, ProviderError> {
        let mut all = Vec::new();
        let mut from = None;
        loop {
            let page = self.list_page(from.as_ref()).await?;
            all.extend(page.clients);
            match page.next {
                Some(next) => from = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Clients carrying `marker` ([`OwnerMarker`]): what a registration whose answer was
    /// lost left behind.
    async fn find_by_owner_marker(
        &self,
        _marker: &str,
    ) -> Result<Vec<RemoteClient>, ProviderError> {
        Err(unsupported(self.name(), "search its clients"))
    }

    /// Whether `secret` authenticates as `remote` at the server: proof that whoever holds it
    /// already holds that client's credentials.
    async fn proves_possession(
        &self,
        _remote: &RemoteClient,
        _secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        Err(unsupported(self.name(), "check a client secret"))
    }

    /// Endpoints that are the same for every client (the issuer's), where the backend knows
    /// them before a client exists; `None` where each client reports its own (Clerk).
    fn endpoints(&self) -> Option<crate::api::Endpoints> {
        None
    }

    /// The client's current secret ([`SecretSource::IssuedReadable`]): recovery without a
    /// new secret.
    async fn read_secret(&self, _id: &str) -> Result<Option<SecretString>, ProviderError> {
        Err(unsupported(self.name(), "read a client secret back"))
    }

    /// A cheap authenticated request proving the endpoint and credential work.
    async fn check_reachable(&self) -> Result<(), ProviderError>;
}

/// The management credentials RFC 7592 hands out per client: whoever holds them can change
/// the client (its redirect URIs above all), so they are kept like a secret, in an
/// operator-owned Secret, never in status or logs.
#[derive(Clone)]
pub struct RegistrationAccess {
    /// `registration_client_uri`.
    pub client_uri: String,
    /// `registration_access_token`.
    pub token: SecretString,
    /// The application the client was registered for, as the record says (set by
    /// [`AccessStore::load`]; ignored by `save`, which takes it as a parameter).
    pub owner_uid: Option<String>,
}

impl std::fmt::Debug for RegistrationAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationAccess")
            .field("client_uri", &self.client_uri)
            .field("token", &"[REDACTED]")
            .field("owner_uid", &self.owner_uid)
            .finish()
    }
}

/// Where a backend keeps per-client [`RegistrationAccess`] (implemented by the controller over
/// Secrets in the operator's namespace; in memory in tests). Keyed by client id.
#[async_trait::async_trait]
pub trait AccessStore: Send + Sync {
    async fn load(&self, client_id: &str) -> Result<Option<RegistrationAccess>, ProviderError>;
    /// Durable when it returns: a backend saves every access it is handed before it uses it.
    /// `owner_uid`: the application the client was registered for (at create; `None` keeps
    /// the recorded owner), so that a registration whose answer was never recorded in status
    /// is found again ([`AccessStore::owned_by`]).
    async fn save(
        &self,
        client_id: &str,
        owner_uid: Option<&str>,
        access: &RegistrationAccess,
    ) -> Result<(), ProviderError>;
    async fn forget(&self, client_id: &str) -> Result<(), ProviderError>;
    /// The client ids whose access was saved for `owner_uid`.
    async fn owned_by(&self, owner_uid: &str) -> Result<Vec<String>, ProviderError>;
}

/// Sorted and without repeats: how lists are compared whose order a server does not keep.
pub fn as_set(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The settings every backend compares alike, added to `fields`: the client type, and PKCE
/// and the consent screen where the spec sets them (a backend that cannot represent one
/// refuses it in `check_supported`, before any diff).
pub fn diff_flags(desired: &DesiredClient, remote: &RemoteClient, fields: &mut Vec<&'static str>) {
    if desired.public != remote.public {
        fields.push("clientType");
    }
    if desired
        .pkce_required
        .is_some_and(|p| p != remote.pkce_required)
    {
        fields.push("pkceRequired");
    }
    if desired
        .consent_screen
        .is_some_and(|c| c != remote.consent_screen)
    {
        fields.push("consentScreen");
    }
}

/// A new client secret for backends where the operator chooses it: 32 bytes from a CSPRNG
/// (the thread-local ChaCha12 generator, seeded and reseeded from the operating system),
/// base64url without padding.
pub fn generate_secret() -> SecretString {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

pub type SharedBackend = Arc<dyn Backend>;

/// Arbitrary provider answers for the property tests of each backend's parsing: JSON values
/// of any shape, biased towards the field names the backends read (so that some parse and
/// reach the mapping code), and arbitrary bytes (truncated or not JSON at all).
#[cfg(test)]
pub(crate) mod arbitrary {
    use proptest::prelude::*;
    use serde_json::Value;

    const FIELDS: &[&str] = &[
        "id",
        "client_id",
        "clientId",
        "name",
        "client_name",
        "redirect_uris",
        "redirectUris",
        "scopes",
        "scope",
        "grant_types",
        "public",
        "publicClient",
        "attributes",
        "metadata",
        "created_at",
        "client_secret",
        "secret",
        "registration_access_token",
        "registration_client_uri",
        "error",
        "errors",
        "error_description",
        "errorMessage",
        "message",
        "code",
        "data",
        "total_count",
        "pkce_required",
        "consent_screen_enabled",
        "defaultClientScopes",
        "client.secret.rotated.expiration.time",
        "oauth-operator.dev/rotation-grace",
        "oauth-operator.dev/owner-uid",
    ];

    pub fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (prop::sample::select(FIELDS).prop_map(str::to_string), inner),
                    0..10
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Bytes as a server might send them: a JSON value cut anywhere, or noise.
    pub fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (json(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                let at = if bytes.is_empty() {
                    0
                } else {
                    cut.index(bytes.len() + 1)
                };
                bytes[..at.min(bytes.len())].to_vec()
            }),
            prop::collection::vec(any::<u8>(), 0..200),
        ]
    }
}
