//! Authorization-server backends behind one interface, and the per-provider request budget.

pub mod budget;
pub mod clerk;

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
}

/// A client as the provider reports it (never with its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteClient {
    /// The provider's own object id (Clerk: `oa_...`).
    pub id: String,
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub public: bool,
    pub pkce_required: bool,
    pub consent_screen: bool,
    pub endpoints: Endpoints,
    pub created_at: Option<Timestamp>,
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

/// A backend client for one provider object. An enum rather than a trait object: every
/// backend is known at compile time and the async methods stay simple.
pub enum ProviderClient {
    Clerk(clerk::ClerkClient),
}

impl ProviderClient {
    pub fn backend(&self) -> &'static str {
        match self {
            ProviderClient::Clerk(_) => "clerk",
        }
    }

    /// Checks that this backend can represent the desired client (no network).
    pub fn check_supported(&self, desired: &DesiredClient) -> Result<(), ProviderError> {
        match self {
            ProviderClient::Clerk(_) => clerk::check_supported(desired),
        }
    }

    /// Fields of the remote client that differ from the desired one (only managed fields).
    pub fn diff(&self, desired: &DesiredClient, remote: &RemoteClient) -> Vec<&'static str> {
        match self {
            ProviderClient::Clerk(_) => clerk::diff(desired, remote),
        }
    }

    pub async fn create(&self, desired: &DesiredClient) -> Result<IssuedClient, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.create(desired).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<RemoteClient, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.get(id).await,
        }
    }

    pub async fn update(
        &self,
        id: &str,
        desired: &DesiredClient,
    ) -> Result<RemoteClient, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.update(id, desired).await,
        }
    }

    /// Deletes the client; a client that is already gone counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.delete(id).await,
        }
    }

    pub async fn rotate_secret(&self, id: &str) -> Result<IssuedClient, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.rotate_secret(id).await,
        }
    }

    /// Every client at the provider, paginated (used for drift detection: one list per
    /// provider per resync, not one GET per application).
    pub async fn list_all(&self) -> Result<Vec<RemoteClient>, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.list(None).await,
        }
    }

    /// Clients whose name matches `name` exactly (used to find an orphan after a crash).
    pub async fn find_by_name(&self, name: &str) -> Result<Vec<RemoteClient>, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => Ok(c
                .list(Some(name))
                .await?
                .into_iter()
                .filter(|r| r.name == name)
                .collect()),
        }
    }

    /// Whether `secret` authenticates as `remote` at the provider: proof that whoever holds it
    /// already holds that client's credentials. Used only to take back a client that status
    /// lost, on the word of a Secret that anyone with write access to it could have edited.
    pub async fn proves_possession(
        &self,
        remote: &RemoteClient,
        secret: &SecretString,
    ) -> Result<bool, ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.proves_possession(remote, secret).await,
        }
    }

    /// A cheap authenticated request proving the endpoint and credential work.
    pub async fn check_reachable(&self) -> Result<(), ProviderError> {
        match self {
            ProviderClient::Clerk(c) => c.check_reachable().await,
        }
    }
}

pub type SharedProviderClient = Arc<ProviderClient>;
