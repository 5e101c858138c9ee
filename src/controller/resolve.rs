//! Step 1 of a pass: resolve the provider, check the namespace may use it, load the admin
//! credential, and hand out the (cached) backend client.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::context::Context;
use super::error::{Error, Result};
use crate::api::{
    AllowedNamespaces, CLERK_DEFAULT_BASE_URL, CLERK_DEFAULT_SECRET_KEY_KEY, ClusterOAuthProvider,
    HydraProvider, OAuthApplication, OAuthProvider, ProviderKind, ProviderSettings,
};
use crate::providers::clerk::ClerkClient;
use crate::providers::hydra::HydraClient;
use crate::providers::{ProviderError, SharedBackend};

/// The key of a provider in the client cache, the inventory, the request budget and the
/// backoff reset: `OAuthProvider/<ns>/<name>` or `ClusterOAuthProvider/<name>`.
pub fn provider_key(kind: ProviderKind, namespace: &str, name: &str) -> String {
    match kind {
        ProviderKind::OAuthProvider => format!("OAuthProvider/{namespace}/{name}"),
        ProviderKind::ClusterOAuthProvider => format!("ClusterOAuthProvider/{name}"),
    }
}

pub struct ResolvedProvider {
    /// `OAuthProvider/<ns>/<name>` or `ClusterOAuthProvider/<name>`: the key of the client
    /// cache, the inventory and the request budget.
    pub key: String,
    pub client: SharedBackend,
    /// The provider is being deleted (kept by its in-use finalizer for its applications'
    /// cleanup only).
    pub deleting: bool,
}

/// Whether `allowed` admits a namespace with these name and labels (none by default).
pub fn namespace_allowed(
    allowed: Option<&AllowedNamespaces>,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<bool, String> {
    let Some(allowed) = allowed else {
        return Ok(false);
    };
    if allowed.names.iter().any(|n| n == namespace) {
        return Ok(true);
    }
    match &allowed.selector {
        Some(selector) => {
            let selector = Selector::try_from(selector.clone())
                .map_err(|e| format!("invalid allowedNamespaces.selector: {e}"))?;
            Ok(selector.matches(labels))
        }
        None => Ok(false),
    }
}

pub async fn resolve_provider(app: &OAuthApplication, ctx: &Context) -> Result<ResolvedProvider> {
    let namespace = app.namespace().unwrap_or_default();
    let reference = &app.spec.provider_ref;
    let (key, settings, credential_namespace, fingerprint_seed, deleting) = match reference.kind {
        ProviderKind::OAuthProvider => {
            let api: Api<OAuthProvider> = Api::namespaced(ctx.client.clone(), &namespace);
            let provider = api.get_opt(&reference.name).await?.ok_or_else(|| {
                Error::ProviderNotFound(format!(
                    "OAuthProvider {namespace}/{} not found (an OAuthProvider serves only its own namespace)",
                    reference.name
                ))
            })?;
            (
                provider_key(reference.kind, &namespace, &reference.name),
                provider.spec.settings.clone(),
                namespace.clone(),
                (provider.uid(), provider.meta().generation),
                provider.meta().deletion_timestamp.is_some(),
            )
        }
        ProviderKind::ClusterOAuthProvider => {
            let api: Api<ClusterOAuthProvider> = Api::all(ctx.client.clone());
            let provider = api.get_opt(&reference.name).await?.ok_or_else(|| {
                Error::ProviderNotFound(format!(
                    "ClusterOAuthProvider {} not found",
                    reference.name
                ))
            })?;
            let ns: Namespace = Api::all(ctx.client.clone()).get(&namespace).await?;
            let admitted = namespace_allowed(
                provider.spec.allowed_namespaces.as_ref(),
                &namespace,
                ns.labels(),
            )
            .map_err(Error::NamespaceNotAllowed)?;
            if !admitted {
                return Err(Error::NamespaceNotAllowed(format!(
                    "ClusterOAuthProvider {} does not admit namespace {namespace} (see its spec.allowedNamespaces)",
                    reference.name
                )));
            }
            (
                provider_key(reference.kind, &namespace, &reference.name),
                provider.spec.settings.clone(),
                ctx.config.operator_namespace.clone(),
                (provider.uid(), provider.meta().generation),
                provider.meta().deletion_timestamp.is_some(),
            )
        }
    };
    let client = provider_client(
        ctx,
        &key,
        &settings,
        &credential_namespace,
        fingerprint_seed,
    )
    .await?;
    Ok(ResolvedProvider {
        key,
        client,
        deleting,
    })
}

/// The backend client for a provider, rebuilt only when the provider or its credential changed.
pub async fn provider_client(
    ctx: &Context,
    key: &str,
    settings: &ProviderSettings,
    credential_namespace: &str,
    seed: (Option<String>, Option<i64>),
) -> Result<SharedBackend> {
    if let Some(hydra) = &settings.hydra {
        return hydra_backend(ctx, key, settings, hydra, seed);
    }
    let Some(clerk) = &settings.clerk else {
        return Err(Error::InvalidSpec(format!(
            "{key} has no backend block (supported: clerk, hydra)"
        )));
    };
    let secret_name = &clerk.secret_key_ref.name;
    let secret_key_key = clerk
        .secret_key_ref
        .key
        .as_deref()
        .unwrap_or(CLERK_DEFAULT_SECRET_KEY_KEY);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), credential_namespace);
    let credential = secrets.get_opt(secret_name).await?.ok_or_else(|| {
        Error::CredentialsMissing(format!(
            "{key}: credential Secret {credential_namespace}/{secret_name} not found"
        ))
    })?;
    let mut hasher = DefaultHasher::new();
    (
        seed,
        credential.resource_version(),
        settings.request_budget.clone(),
    )
        .hash(&mut hasher);
    settings
        .tls
        .as_ref()
        .and_then(|t| t.ca_bundle.clone())
        .hash(&mut hasher);
    clerk.base_url.hash(&mut hasher);
    let fingerprint = hasher.finish();
    // Checked and built under one lock: concurrent reconciles of one provider must share one
    // client and, above all, one request budget.
    let mut providers = ctx.providers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((fp, client)) = providers.get(key)
        && *fp == fingerprint
    {
        return Ok(client.clone());
    }
    let secret_key = credential
        .data
        .as_ref()
        .and_then(|d| d.get(secret_key_key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::CredentialsMissing(format!(
                "{key}: credential Secret {credential_namespace}/{secret_name} has no non-empty key {secret_key_key:?}"
            ))
        })?;
    let http = http_client(settings, ctx.config.provider_timeout)
        .map_err(|e| Error::InvalidSpec(format!("{key}: {e}")))?;
    // The budget outlives client rebuilds (a new credential must not bring a fresh burst).
    let budget = ctx.budget_for(key, &settings.request_budget);
    let client = ClerkClient::new(
        http,
        clerk.base_url.as_deref().unwrap_or(CLERK_DEFAULT_BASE_URL),
        SecretString::from(secret_key),
        budget,
        ctx.metrics.clone(),
    )
    .map_err(|e: ProviderError| Error::InvalidSpec(format!("{key}: {e}")))?;
    let client: SharedBackend = Arc::new(client);
    providers.insert(key.to_string(), (fingerprint, client.clone()));
    Ok(client)
}

/// The Hydra backend: no credential Secret (Hydra's admin API has no authentication of its
/// own), rebuilt when the provider changes.
fn hydra_backend(
    ctx: &Context,
    key: &str,
    settings: &ProviderSettings,
    hydra: &HydraProvider,
    seed: (Option<String>, Option<i64>),
) -> Result<SharedBackend> {
    let mut hasher = DefaultHasher::new();
    (seed, settings.request_budget.clone(), hydra).hash(&mut hasher);
    settings
        .tls
        .as_ref()
        .and_then(|t| t.ca_bundle.clone())
        .hash(&mut hasher);
    let fingerprint = hasher.finish();
    let mut providers = ctx.providers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((fp, client)) = providers.get(key)
        && *fp == fingerprint
    {
        return Ok(client.clone());
    }
    let http = http_client(settings, ctx.config.provider_timeout)
        .map_err(|e| Error::InvalidSpec(format!("{key}: {e}")))?;
    let budget = ctx.budget_for(key, &settings.request_budget);
    let client = HydraClient::new(
        http,
        &hydra.admin_url,
        &hydra.issuer_url,
        budget,
        ctx.metrics.clone(),
    )
    .map_err(|e: ProviderError| Error::InvalidSpec(format!("{key}: {e}")))?;
    let client: SharedBackend = Arc::new(client);
    providers.insert(key.to_string(), (fingerprint, client.clone()));
    Ok(client)
}

/// An HTTP client with timeouts and the provider's CA bundle added to the system roots.
fn http_client(
    settings: &ProviderSettings,
    timeout: std::time::Duration,
) -> std::result::Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("oauth-operator/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(bundle) = settings.tls.as_ref().and_then(|t| t.ca_bundle.as_deref()) {
        let certs = reqwest::Certificate::from_pem_bundle(bundle.as_bytes())
            .map_err(|e| format!("invalid tls.caBundle: {e}"))?;
        if certs.is_empty() {
            return Err("tls.caBundle holds no PEM certificate".into());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("building HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    #[test]
    fn ca_bundle_must_hold_certificates() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = |bundle: &str| ProviderSettings {
            clerk: None,
            hydra: None,
            tls: Some(crate::api::ProviderTls {
                ca_bundle: Some(bundle.to_string()),
            }),
            request_budget: Default::default(),
        };
        let timeout = std::time::Duration::from_secs(1);
        assert!(http_client(&settings("not a certificate"), timeout).is_err());
        let bad_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(http_client(&settings(bad_pem), timeout).is_err());
        assert!(
            http_client(
                &ProviderSettings {
                    tls: None,
                    ..settings("")
                },
                timeout
            )
            .is_ok()
        );
    }

    #[test]
    fn cluster_provider_admits_no_namespace_by_default() {
        let labels = BTreeMap::new();
        assert_eq!(namespace_allowed(None, "team-a", &labels), Ok(false));
        let empty = AllowedNamespaces::default();
        assert_eq!(
            namespace_allowed(Some(&empty), "team-a", &labels),
            Ok(false)
        );
    }

    #[test]
    fn admits_by_name_or_selector() {
        let allowed = AllowedNamespaces {
            names: vec!["team-a".into()],
            selector: Some(LabelSelector {
                match_labels: Some([("oauth".to_string(), "yes".to_string())].into()),
                ..Default::default()
            }),
        };
        let none = BTreeMap::new();
        let yes: BTreeMap<String, String> = [("oauth".to_string(), "yes".to_string())].into();
        assert_eq!(namespace_allowed(Some(&allowed), "team-a", &none), Ok(true));
        assert_eq!(
            namespace_allowed(Some(&allowed), "team-b", &none),
            Ok(false)
        );
        assert_eq!(namespace_allowed(Some(&allowed), "team-b", &yes), Ok(true));
    }
}
