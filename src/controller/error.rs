//! The one error type of the reconcilers: a static reason (condition reason, event reason,
//! metric label) and a transient/permanent split that drives requeueing.

use std::time::Duration;

use crate::providers::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("{0}")]
    ProviderNotFound(String),
    #[error("{0}")]
    NamespaceNotAllowed(String),
    #[error("{0}")]
    CredentialsMissing(String),
    /// A provider's credential would go to a URL its Secret is not bound to (the provider's
    /// URL changed): only someone who may edit that Secret can allow it.
    #[error("{0}")]
    CredentialNotBound(String),
    #[error("{0}")]
    SecretConflict(String),
    /// `spec.credentialsFrom` on a backend that issues its own credentials.
    #[error("{0}")]
    CredentialsFromUnsupported(String),
    /// The Secret `spec.credentialsFrom` names is missing, or lacks a key (it may yet appear:
    /// External Secrets writes it after the application is applied).
    #[error("{0}")]
    CredentialsSourceMissing(String),
    /// A client with the given id exists and does not accept the given secret.
    #[error("{0}")]
    CredentialsNotAccepted(String),
    #[error("{0}")]
    SecretRejected(String),
    #[error("{0}")]
    ClientMissing(String),
    #[error("{0}")]
    RegistrationPending(String),
    #[error("{0}")]
    DeletionBlocked(String),
    /// A provider being deleted waits for the applications that still use it.
    #[error("{0}")]
    ProviderInUse(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A bug: the reconciler reached a state its plan rules out.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The `Ready=False` reason, event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::ProviderNotFound(_) => "ProviderNotFound",
            Error::NamespaceNotAllowed(_) => "NamespaceNotAllowed",
            Error::CredentialsMissing(_) => "CredentialsMissing",
            Error::CredentialNotBound(_) => "CredentialNotBound",
            Error::SecretConflict(_) => "SecretConflict",
            Error::CredentialsFromUnsupported(_) => "CredentialsFromUnsupported",
            Error::CredentialsSourceMissing(_) => "CredentialsSourceMissing",
            Error::CredentialsNotAccepted(_) => "CredentialsNotAccepted",
            Error::SecretRejected(_) => "SecretRejected",
            Error::ClientMissing(_) => "ClientMissing",
            Error::RegistrationPending(_) => "RegistrationPending",
            Error::DeletionBlocked(_) => "DeletionBlocked",
            Error::ProviderInUse(_) => "ProviderInUse",
            Error::Provider(p) => match p {
                ProviderError::Rejected { .. } | ProviderError::NotFound { .. } => {
                    "ProviderRejected"
                }
                ProviderError::Unauthorized { .. } => "CredentialsRejected",
                ProviderError::RateLimited { .. } => "RateLimited",
                ProviderError::Unavailable { .. } => "ProviderUnavailable",
                ProviderError::Unsupported(_) => "InvalidSpec",
            },
            Error::Kube(_) => "KubernetesError",
            Error::Internal(_) => "InternalError",
        }
    }

    /// A failure that only a change can end (kstatus `Stalled`, so `Failed`): the spec, the
    /// provider's answer or a Secret in the way. Others are work still in progress
    /// (`Reconciling`): a provider or credential that may yet appear, a transient error.
    pub fn stalls(&self) -> bool {
        matches!(
            self.reason(),
            "InvalidSpec"
                | "SecretConflict"
                | "SecretRejected"
                | "ClientMissing"
                | "NamespaceNotAllowed"
                | "ProviderRejected"
                | "CredentialsRejected"
                | "CredentialsMissing"
                | "CredentialNotBound"
                | "CredentialsFromUnsupported"
                | "CredentialsNotAccepted"
        )
    }

    /// Transient errors are retried with per-object exponential backoff; permanent ones wait
    /// for a change of the spec or the provider (or the periodic resync).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ProviderNotFound(_)
            | Error::CredentialsMissing(_)
            | Error::CredentialsSourceMissing(_)
            | Error::DeletionBlocked(_)
            | Error::ProviderInUse(_)
            | Error::RegistrationPending(_)
            | Error::Kube(_)
            | Error::Internal(_) => true,
            Error::Provider(p) => {
                matches!(
                    p,
                    ProviderError::RateLimited { .. } | ProviderError::Unavailable { .. }
                )
            }
            _ => false,
        }
    }

    /// The provider's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            // At least a second: "Retry-After: 0" must not turn into a tight loop.
            Error::Provider(ProviderError::RateLimited { retry_after, .. }) => {
                retry_after.map(|d| d.max(Duration::from_secs(1)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_classes() {
        let e = Error::from(ProviderError::RateLimited {
            operation: "list",
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(e.reason(), "RateLimited");
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = Error::from(ProviderError::Rejected {
            operation: "create",
            status: 422,
            message: "bad".into(),
        });
        assert_eq!(e.reason(), "ProviderRejected");
        assert!(!e.is_transient());
        assert!(!Error::SecretConflict("x".into()).is_transient());
        assert_eq!(Error::InvalidSpec("x".into()).reason(), "InvalidSpec");
    }

    /// kstatus: what stalls (Failed) and what is still in progress (InProgress).
    #[test]
    fn stalled_or_reconciling() {
        let x = || "x".to_string();
        for e in [
            Error::InvalidSpec(x()),
            Error::SecretConflict(x()),
            Error::SecretRejected(x()),
            Error::ClientMissing(x()),
            Error::NamespaceNotAllowed(x()),
            Error::CredentialsMissing(x()),
            Error::CredentialNotBound(x()),
            Error::CredentialsFromUnsupported(x()),
            Error::CredentialsNotAccepted(x()),
            Error::Provider(ProviderError::Unsupported(x())),
            Error::Provider(ProviderError::Unauthorized {
                operation: "get",
                status: 401,
                message: x(),
            }),
            Error::Provider(ProviderError::Rejected {
                operation: "create",
                status: 422,
                message: x(),
            }),
        ] {
            assert!(e.stalls(), "{} stalls", e.reason());
        }
        for e in [
            Error::ProviderNotFound(x()),
            // External Secrets writes it after the application is applied: a pipeline waits.
            Error::CredentialsSourceMissing(x()),
            Error::RegistrationPending(x()),
            Error::DeletionBlocked(x()),
            Error::ProviderInUse(x()),
            Error::Internal(x()),
            Error::Provider(ProviderError::RateLimited {
                operation: "list",
                retry_after: None,
            }),
            Error::Provider(ProviderError::Unavailable {
                operation: "create",
                outcome_unknown: true,
                message: x(),
            }),
        ] {
            assert!(!e.stalls(), "{} is still in progress", e.reason());
        }
    }
}
