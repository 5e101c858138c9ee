//! Step 1 of a pass: resolve the provider, check the namespace may use it, load the admin
//! credential, and hand out the (cached) backend client.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::access::SecretAccessStore;
use super::context::Context;
use super::error::{Error, Result};
use crate::api::{
    AllowedNamespaces, CLERK_DEFAULT_BASE_URL, CLERK_DEFAULT_SECRET_KEY_KEY, ClusterOAuthProvider,
    DynamicRegistrationProvider, HydraProvider, INITIAL_ACCESS_TOKEN_DEFAULT_KEY,
    KEYCLOAK_DEFAULT_CLIENT_ID_KEY, KEYCLOAK_DEFAULT_CLIENT_SECRET_KEY, KeycloakProvider,
    OAuthApplication, OAuthProvider, ProviderKind, ProviderSettings, RequestBudget,
    RotationStrategy,
};
use crate::providers::clerk::ClerkClient;
use crate::providers::dynamic_registration::{DcrSettings, DynamicRegistrationClient};
use crate::providers::egress::{EgressPolicy, GuardedResolver};
use crate::providers::http::ProviderHttp;
use crate::providers::hydra::HydraClient;
use crate::providers::keycloak::{KeycloakClient, KeycloakSettings};
use crate::providers::{ProviderError, SharedBackend};

/// The key of a provider in the client cache, the inventory, the request budget and the
/// backoff reset: `OAuthProvider/<ns>/<name>` or `ClusterOAuthProvider/<name>`.
pub fn provider_key(kind: ProviderKind, namespace: &str, name: &str) -> String {
    match kind {
        ProviderKind::OAuthProvider => format!("OAuthProvider/{namespace}/{name}"),
        ProviderKind::ClusterOAuthProvider => format!("ClusterOAuthProvider/{name}"),
    }
}

/// Whether the provider with this key (see [`provider_key`]) is a namespaced `OAuthProvider`,
/// written by a tenant, rather than a `ClusterOAuthProvider`, written by the administrators:
/// what the SSRF guard and the credential binding go by.
fn is_tenants(key: &str) -> bool {
    key.starts_with("OAuthProvider/")
}

pub struct ResolvedProvider {
    /// `OAuthProvider/<ns>/<name>` or `ClusterOAuthProvider/<name>`: the key of the client
    /// cache and the name conditions and events use.
    pub key: String,
    /// The server (backend, base URL, credential): the key of the inventory.
    pub server: String,
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
            let provider = match ctx.caches.provider(&namespace, &reference.name) {
                Some(cached) => cached,
                None => {
                    let api: Api<OAuthProvider> = Api::namespaced(ctx.client.clone(), &namespace);
                    api.get_opt(&reference.name).await?.ok_or_else(|| {
                        Error::ProviderNotFound(format!(
                            "OAuthProvider {namespace}/{} not found (an OAuthProvider serves only its own namespace)",
                            reference.name
                        ))
                    })?
                }
            };
            (
                provider_key(reference.kind, &namespace, &reference.name),
                provider.spec.settings.clone(),
                namespace.clone(),
                (provider.uid(), provider.meta().generation),
                provider.meta().deletion_timestamp.is_some(),
            )
        }
        ProviderKind::ClusterOAuthProvider => {
            let provider = match ctx.caches.cluster_provider(&reference.name) {
                Some(cached) => cached,
                None => {
                    let api: Api<ClusterOAuthProvider> = Api::all(ctx.client.clone());
                    api.get_opt(&reference.name).await?.ok_or_else(|| {
                        Error::ProviderNotFound(format!(
                            "ClusterOAuthProvider {} not found",
                            reference.name
                        ))
                    })?
                }
            };
            let labels = match ctx.caches.namespace_labels(&namespace) {
                Some(labels) => labels,
                None => {
                    let ns: Namespace = Api::all(ctx.client.clone()).get(&namespace).await?;
                    ns.labels().clone()
                }
            };
            let admitted = namespace_allowed(
                provider.spec.allowed_namespaces.as_ref(),
                &namespace,
                &labels,
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
    let (client, server) = provider_backend(
        ctx,
        &key,
        &settings,
        &credential_namespace,
        fingerprint_seed,
    )
    .await?;
    Ok(ResolvedProvider {
        key,
        server,
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
    Ok(
        provider_backend(ctx, key, settings, credential_namespace, seed)
            .await?
            .0,
    )
}

/// The annotation on a provider's credential Secret naming the URLs (space-separated) the
/// credential may be sent to. Someone who may edit the Secret sets it: whoever may create or
/// change an `OAuthProvider` but not read a Secret must not be able to make the operator send
/// that Secret's value to a server of theirs (the operator reads Secrets they cannot). So a
/// namespaced provider's Secret without it is refused (`CredentialNotBound`, naming the URL to
/// add); a `ClusterOAuthProvider`'s Secret, in the operator's namespace, is bound to its
/// provider's URL on first use. A provider whose URL changes sends nothing until the new URL
/// is added.
pub const CREDENTIAL_FOR_ANNOTATION: &str = "oauth-operator.dev/credential-for";

/// Whether a credential Secret with this `credential-for` annotation may be sent to
/// `destination`: `Ok(true)` yes, `Ok(false)` not bound at all, `Err(bound)` it is bound
/// elsewhere.
fn bound_to(annotation: Option<&str>, destination: &str) -> std::result::Result<bool, String> {
    let Some(bound) = annotation.filter(|a| !a.trim().is_empty()) else {
        return Ok(false);
    };
    if bound.split_whitespace().any(|u| u == destination) {
        Ok(true)
    } else {
        Err(bound.trim().to_string())
    }
}

/// The values read from a provider's credential Secret, and its resourceVersion. The Secret
/// must be bound to `destination`, the URL the credential goes to (see
/// [`CREDENTIAL_FOR_ANNOTATION`]); one bound to nothing yet is bound to it now only for a
/// `ClusterOAuthProvider` (its key does not start with `OAuthProvider/`).
async fn read_credential(
    ctx: &Context,
    key: &str,
    namespace: &str,
    name: &str,
    keys: &[&str],
    destination: &str,
) -> Result<(Option<String>, Vec<SecretString>)> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    // From the cache when the Secret watch covers its namespace (its events empty it).
    let watched = ctx
        .config
        .watch_namespace
        .as_deref()
        .is_none_or(|ns| ns == namespace);
    let cache = &ctx.caches.credentials;
    let credential = match watched.then(|| cache.get(namespace, name)) {
        Some(Ok(hit)) => hit,
        miss => {
            let credential = secrets.get_opt(name).await?.ok_or_else(|| {
                Error::CredentialsMissing(format!(
                    "{key}: credential Secret {namespace}/{name} not found"
                ))
            })?;
            if let Some(Err(epoch)) = miss {
                cache.store(namespace, name, epoch, credential.clone());
            }
            credential
        }
    };
    let values = keys
        .iter()
        .map(|k| {
            credential
                .data
                .as_ref()
                .and_then(|d| d.get(*k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(SecretString::from)
                .ok_or_else(|| {
                    Error::CredentialsMissing(format!(
                        "{key}: credential Secret {namespace}/{name} has no non-empty key {k:?}"
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let annotation = credential
        .annotations()
        .get(CREDENTIAL_FOR_ANNOTATION)
        .map(String::as_str);
    let namespaced = is_tenants(key);
    let version = match bound_to(annotation, destination) {
        Ok(true) => credential.resource_version(),
        Ok(false) if namespaced => {
            return Err(Error::CredentialNotBound(format!(
                "{key}: credential Secret {namespace}/{name} does not say where it may be sent: the operator sends a \
                 namespaced provider's credential only to a URL its Secret names (so that editing a provider cannot \
                 redirect a Secret one may not read); someone who may edit that Secret must annotate it with \
                 {CREDENTIAL_FOR_ANNOTATION}: {destination}"
            )));
        }
        Ok(false) => {
            // A ClusterOAuthProvider's, in the operator's namespace: trust on first use,
            // conditional on the version read (a concurrent edit wins).
            let patch = serde_json::json!({"metadata": {
                "resourceVersion": credential.resource_version(),
                "annotations": {CREDENTIAL_FOR_ANNOTATION: destination}}});
            let bound = secrets
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await?;
            tracing::info!(provider = key, secret = %format!("{namespace}/{name}"), %destination,
                "bound the provider's credential Secret to its URL");
            bound.resource_version()
        }
        Err(bound) => {
            return Err(Error::CredentialNotBound(format!(
                "{key}: the credential in Secret {namespace}/{name} is bound to {bound}, and the provider now names \
                 {destination}: nothing is sent there until someone who may edit that Secret adds {destination} to \
                 its annotation {CREDENTIAL_FOR_ANNOTATION} (space-separated URLs)"
            )));
        }
    };
    Ok((version, values))
}

/// Tells two credentials apart in a map key without keeping the value: a hash keyed with
/// random keys drawn once per process (stable for the process, useless outside it). Never
/// logged nor used as a metric label.
fn digest(value: &SecretString) -> String {
    use std::hash::BuildHasher as _;
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(std::hash::RandomState::new);
    format!("{:016x}", keys.hash_one(value.expose_secret()))
}

/// The backend and the key of the server it talks to (backend, base URL, credential): the
/// request budget and the inventory belong to the server, so that fifty providers holding one
/// key share one budget and one list.
pub async fn provider_backend(
    ctx: &Context,
    key: &str,
    settings: &ProviderSettings,
    credential_namespace: &str,
    seed: (Option<String>, Option<i64>),
) -> Result<(SharedBackend, String)> {
    let invalid = |e: String| Error::InvalidSpec(format!("{key}: {e}"));
    // What the backend is built from, read before the cache is consulted.
    enum Plan<'a> {
        Clerk(&'a crate::api::ClerkProvider, SecretString),
        Hydra(&'a HydraProvider),
        Keycloak(&'a KeycloakProvider, SecretString, SecretString),
        Dcr(&'a DynamicRegistrationProvider, Option<SecretString>),
    }
    let request_budget = settings
        .request_budget
        .clone()
        .or_else(|| ctx.config.default_request_budget.clone())
        .unwrap_or_else(|| RequestBudget::backend_default(settings));
    let mut hasher = DefaultHasher::new();
    (seed, request_budget.clone()).hash(&mut hasher);
    settings
        .tls
        .as_ref()
        .and_then(|t| t.ca_bundle.clone())
        .hash(&mut hasher);
    let (plan, server, label) = if let Some(hydra) = &settings.hydra {
        hydra.hash(&mut hasher);
        let server = format!("hydra|{}", hydra.admin_url.trim_end_matches('/'));
        (
            Plan::Hydra(hydra),
            server,
            format!("hydra {}", hydra.admin_url),
        )
    } else if let Some(kc) = &settings.keycloak {
        let r = &kc.credentials_ref;
        let id_key = r
            .client_id_key
            .as_deref()
            .unwrap_or(KEYCLOAK_DEFAULT_CLIENT_ID_KEY);
        let secret_key = r
            .client_secret_key
            .as_deref()
            .unwrap_or(KEYCLOAK_DEFAULT_CLIENT_SECRET_KEY);
        let destination = format!("{}/realms/{}", kc.base_url.trim_end_matches('/'), kc.realm);
        let (version, mut values) = read_credential(
            ctx,
            key,
            credential_namespace,
            &r.name,
            &[id_key, secret_key],
            &destination,
        )
        .await?;
        (kc, version).hash(&mut hasher);
        let (secret, id) = (
            values.pop().ok_or_else(invariant)?,
            values.pop().ok_or_else(invariant)?,
        );
        let base = kc.base_url.trim_end_matches('/');
        let server = format!("keycloak|{base}|{}|{}", kc.realm, digest(&id));
        (
            Plan::Keycloak(kc, id, secret),
            server,
            format!("keycloak {base}/realms/{}", kc.realm),
        )
    } else if let Some(dcr) = &settings.dynamic_registration {
        dcr.hash(&mut hasher);
        let token = match &dcr.initial_access_token_ref {
            Some(r) => {
                let k = r.key.as_deref().unwrap_or(INITIAL_ACCESS_TOKEN_DEFAULT_KEY);
                // The token goes to the registration endpoint: the one given, else the one
                // the issuer's discovery names.
                let destination = dcr
                    .registration_endpoint
                    .as_deref()
                    .unwrap_or(&dcr.issuer_url)
                    .trim_end_matches('/')
                    .to_string();
                let (version, mut values) =
                    read_credential(ctx, key, credential_namespace, &r.name, &[k], &destination)
                        .await?;
                version.hash(&mut hasher);
                Some(values.pop().ok_or_else(invariant)?)
            }
            None => None,
        };
        let issuer = dcr.issuer_url.trim_end_matches('/');
        let server = format!(
            "dynamicRegistration|{issuer}|{}",
            dcr.registration_endpoint.as_deref().unwrap_or_default()
        );
        (
            Plan::Dcr(dcr, token),
            server,
            format!("dynamicRegistration {issuer}"),
        )
    } else if let Some(clerk) = &settings.clerk {
        let secret_key_key = clerk
            .secret_key_ref
            .key
            .as_deref()
            .unwrap_or(CLERK_DEFAULT_SECRET_KEY_KEY);
        let destination = clerk
            .base_url
            .as_deref()
            .unwrap_or(CLERK_DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        let (version, mut values) = read_credential(
            ctx,
            key,
            credential_namespace,
            &clerk.secret_key_ref.name,
            &[secret_key_key],
            &destination,
        )
        .await?;
        (version, &clerk.base_url).hash(&mut hasher);
        let secret = values.pop().ok_or_else(invariant)?;
        let base = clerk
            .base_url
            .as_deref()
            .unwrap_or(CLERK_DEFAULT_BASE_URL)
            .trim_end_matches('/')
            .to_string();
        let server = format!("clerk|{base}|{}", digest(&secret));
        (Plan::Clerk(clerk, secret), server, format!("clerk {base}"))
    } else {
        return Err(Error::InvalidSpec(format!(
            "{key} has no backend block (supported: clerk, hydra, keycloak, dynamicRegistration)"
        )));
    };
    // The budget belongs to the server and outlives client rebuilds (a new credential must
    // not bring a fresh burst). When the server's effective budget changes (a stricter
    // provider joined), the one limiter changes in place, so no two limiters serve one server.
    let budget = ctx.budget_for(&server, &label, key, &request_budget);
    (Arc::as_ptr(&budget) as usize).hash(&mut hasher);
    let fingerprint = hasher.finish();
    // Checked and built under one lock: concurrent reconciles of one provider must share one
    // client and, above all, one request budget.
    let mut providers = ctx.providers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((fp, client)) = providers.get(key)
        && *fp == fingerprint
    {
        return Ok((client.clone(), server));
    }
    let http = http_client(settings, ctx.config.provider_timeout, egress_for(ctx, key))
        .map_err(invalid)?;
    let metrics = ctx.metrics.clone();
    let built: std::result::Result<SharedBackend, ProviderError> = match plan {
        Plan::Hydra(hydra) => {
            HydraClient::new(http, &hydra.admin_url, &hydra.issuer_url, budget, metrics)
                .map(|c| Arc::new(c) as SharedBackend)
        }
        Plan::Keycloak(kc, client_id, client_secret) => KeycloakClient::new(
            http,
            KeycloakSettings {
                base_url: kc.base_url.clone(),
                realm: kc.realm.clone(),
                client_id: client_id.expose_secret().to_string(),
                client_secret,
            },
            budget,
            metrics,
        )
        .map(|c| Arc::new(c) as SharedBackend),
        Plan::Dcr(dcr, initial_access_token) => DynamicRegistrationClient::new(
            http,
            DcrSettings {
                issuer_url: dcr.issuer_url.clone(),
                registration_endpoint: dcr.registration_endpoint.clone(),
                initial_access_token,
                software_id: dcr.software_id.clone(),
                software_statement: dcr.software_statement.clone().map(SecretString::from),
                recreate: dcr.rotation_strategy == RotationStrategy::Recreate,
            },
            Arc::new(SecretAccessStore::new(
                ctx.client.clone(),
                &ctx.config.operator_namespace,
                &dcr.issuer_url,
                key,
            )),
            budget,
            metrics,
        )
        .map(|c| Arc::new(c) as SharedBackend),
        Plan::Clerk(clerk, secret_key) => ClerkClient::new(
            http,
            clerk.base_url.as_deref().unwrap_or(CLERK_DEFAULT_BASE_URL),
            secret_key,
            budget,
            metrics,
        )
        .map(|c| Arc::new(c) as SharedBackend),
    };
    let client = built.map_err(|e| invalid(e.to_string()))?;
    providers.insert(key.to_string(), (fingerprint, client.clone()));
    Ok((client, server))
}

fn invariant() -> Error {
    Error::Internal("credential values missing after they were read".into())
}

/// Where a provider's requests may go: a namespaced `OAuthProvider` is a tenant's, so public
/// addresses only, and the networks the operator's `--provider-allowed-networks` names; a
/// `ClusterOAuthProvider` is the administrators', so anywhere (see [`EgressPolicy`]).
fn egress_for(ctx: &Context, key: &str) -> EgressPolicy {
    if is_tenants(key) {
        EgressPolicy::restricted(ctx.config.provider_allowed_networks.clone())
    } else {
        EgressPolicy::unrestricted()
    }
}

/// An HTTP client with timeouts, the provider's CA bundle added to the system roots, and the
/// egress policy (a restricted one resolves names through [`GuardedResolver`]).
fn http_client(
    settings: &ProviderSettings,
    timeout: std::time::Duration,
    egress: EgressPolicy,
) -> std::result::Result<ProviderHttp, String> {
    let egress = Arc::new(egress);
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
    if egress.is_restricted() {
        // Through a proxy the proxy would resolve and connect, unchecked: direct only.
        builder = builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(egress.clone())));
    }
    let client = builder
        .build()
        .map_err(|e| format!("building HTTP client: {e}"))?;
    Ok(ProviderHttp { client, egress })
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
            keycloak: None,
            dynamic_registration: None,
            tls: Some(crate::api::ProviderTls {
                ca_bundle: Some(bundle.to_string()),
            }),
            request_budget: None,
        };
        let timeout = std::time::Duration::from_secs(1);
        let open = EgressPolicy::unrestricted;
        assert!(http_client(&settings("not a certificate"), timeout, open()).is_err());
        let bad_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(http_client(&settings(bad_pem), timeout, open()).is_err());
        assert!(
            http_client(
                &ProviderSettings {
                    tls: None,
                    ..settings("")
                },
                timeout,
                EgressPolicy::restricted(Vec::new())
            )
            .is_ok()
        );
    }

    #[test]
    fn a_credential_goes_only_where_its_secret_is_bound() {
        let url = "https://api.clerk.com/v1";
        assert_eq!(bound_to(None, url), Ok(false), "not bound yet");
        assert_eq!(bound_to(Some("  "), url), Ok(false));
        assert_eq!(bound_to(Some(url), url), Ok(true));
        assert_eq!(
            bound_to(Some("https://a.example https://api.clerk.com/v1"), url),
            Ok(true),
            "one of several"
        );
        assert_eq!(
            bound_to(Some("https://api.clerk.com/v1"), "http://127.0.0.1:9/v1"),
            Err("https://api.clerk.com/v1".to_string())
        );
        // A prefix or a longer URL is another destination.
        assert!(bound_to(Some("https://api.clerk.com"), url).is_err());
        assert!(bound_to(Some("https://api.clerk.com/v1/x"), url).is_err());
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
