//! The provider reconcilers: `CredentialsFound`, `EndpointReachable` and `Ready` on
//! `OAuthProvider` and `ClusterOAuthProvider`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::application::FINALIZER as APPLICATION_FINALIZER;
use super::context::Context;
use super::error::Error;
use super::resolve::{provider_client, provider_key};
use super::status::apply_status;
use crate::api::conditions::{
    CREDENTIALS_FOUND, ENDPOINT_REACHABLE, READY, new_condition, set_condition,
};
use crate::api::{
    ClusterOAuthProvider, OAuthApplication, OAuthProvider, ProviderKind, ProviderSettings,
    ProviderStatus,
};
use crate::telemetry::ReconcileLabels;

/// How often a healthy provider's endpoint is checked again.
const PROVIDER_RECHECK: Duration = Duration::from_secs(300);
/// Kept on a provider while applications that use it may still need it to delete their
/// clients (above all when a whole namespace is deleted at once).
pub const IN_USE_FINALIZER: &str = "oauth-operator.dev/in-use";
/// Kept on a provider's credential Secret while the provider exists, for the same reason.
pub const CREDENTIAL_FINALIZER: &str = "oauth-operator.dev/provider-credential";
/// How often a provider being deleted looks again for applications still using it.
const IN_USE_RECHECK: Duration = Duration::from_secs(2);

type ReconcileResult = Result<Action, FinalizerError<Error>>;

pub async fn reconcile_namespaced(
    guard: Arc<DeserializeGuard<OAuthProvider>>,
    ctx: Arc<Context>,
) -> ReconcileResult {
    let Ok(provider) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let namespace = provider.namespace().unwrap_or_default();
    let api: Api<OAuthProvider> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = provider.name_any();
    let key = provider_key(ProviderKind::OAuthProvider, &namespace, &name);
    finalizer(
        &api,
        IN_USE_FINALIZER,
        Arc::new(provider.clone()),
        |event| async {
            match event {
                Finalizer::Apply(provider) => {
                    protect_credential(
                        &ctx,
                        &namespace,
                        &provider.spec.settings,
                        provider.status.as_ref(),
                    )
                    .await?;
                    let mut status = check(
                        &ctx,
                        &key,
                        &provider.spec.settings,
                        &namespace,
                        &*provider,
                        provider.status.clone(),
                    )
                    .await;
                    status.protected_credential = provider
                        .spec
                        .settings
                        .credential_secret()
                        .map(str::to_string);
                    finish(
                        &ctx,
                        &api,
                        &*provider,
                        provider.status.as_ref(),
                        status,
                        "OAuthProvider",
                    )
                    .await
                }
                Finalizer::Cleanup(provider) => {
                    let apps: Api<DeserializeGuard<OAuthApplication>> =
                        Api::namespaced(ctx.client.clone(), &namespace);
                    release_when_unused(
                        &ctx,
                        apps,
                        ProviderKind::OAuthProvider,
                        &name,
                        &namespace,
                        provider.status.as_ref(),
                    )
                    .await
                }
            }
        },
    )
    .await
}

pub async fn reconcile_cluster(
    guard: Arc<DeserializeGuard<ClusterOAuthProvider>>,
    ctx: Arc<Context>,
) -> ReconcileResult {
    let Ok(provider) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let api: Api<ClusterOAuthProvider> = Api::all(ctx.client.clone());
    let name = provider.name_any();
    let key = provider_key(ProviderKind::ClusterOAuthProvider, "", &name);
    let credential_ns = ctx.config.operator_namespace.clone();
    finalizer(
        &api,
        IN_USE_FINALIZER,
        Arc::new(provider.clone()),
        |event| async {
            match event {
                Finalizer::Apply(provider) => {
                    protect_credential(
                        &ctx,
                        &credential_ns,
                        &provider.spec.settings,
                        provider.status.as_ref(),
                    )
                    .await?;
                    let mut status = check(
                        &ctx,
                        &key,
                        &provider.spec.settings,
                        &credential_ns,
                        &*provider,
                        provider.status.clone(),
                    )
                    .await;
                    status.protected_credential = provider
                        .spec
                        .settings
                        .credential_secret()
                        .map(str::to_string);
                    finish(
                        &ctx,
                        &api,
                        &*provider,
                        provider.status.as_ref(),
                        status,
                        "ClusterOAuthProvider",
                    )
                    .await
                }
                Finalizer::Cleanup(provider) => {
                    let apps: Api<DeserializeGuard<OAuthApplication>> =
                        Api::all(ctx.client.clone());
                    release_when_unused(
                        &ctx,
                        apps,
                        ProviderKind::ClusterOAuthProvider,
                        &name,
                        &credential_ns,
                        provider.status.as_ref(),
                    )
                    .await
                }
            }
        },
    )
    .await
}

pub fn error_policy<K>(
    _: Arc<DeserializeGuard<K>>,
    error: &FinalizerError<Error>,
    _: Arc<Context>,
) -> Action {
    match error {
        FinalizerError::CleanupFailed(Error::ProviderInUse(_)) => Action::requeue(IN_USE_RECHECK),
        error => {
            warn!(%error, "provider reconcile failed");
            Action::requeue(Duration::from_secs(30))
        }
    }
}

/// A provider being deleted lets go once no application that references it still holds its
/// cleanup finalizer: until then they need it (and its credential) to delete their clients.
async fn release_when_unused(
    ctx: &Context,
    apps: Api<DeserializeGuard<OAuthApplication>>,
    kind: ProviderKind,
    name: &str,
    credential_ns: &str,
    status: Option<&ProviderStatus>,
) -> Result<Action, Error> {
    let users: Vec<String> = apps
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|guard| guard.0.ok())
        .filter(|app| {
            app.spec.provider_ref.kind == kind
                && app.spec.provider_ref.name == name
                && app.finalizers().iter().any(|f| f == APPLICATION_FINALIZER)
        })
        .map(|app| format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()))
        .collect();
    if !users.is_empty() {
        return Err(Error::ProviderInUse(format!(
            "{kind} {name} is being deleted but {} application(s) still use it to delete their clients: {}",
            users.len(),
            users.join(", ")
        )));
    }
    if let Some(secret) = status.and_then(|s| s.protected_credential.as_deref()) {
        set_credential_finalizer(ctx, credential_ns, secret, false).await?;
    }
    info!(%kind, name, "no application uses the provider any more; letting it be deleted");
    Ok(Action::await_change())
}

/// Keeps the credential Secret from being deleted while the provider exists; a Secret the
/// provider no longer points at is let go.
async fn protect_credential(
    ctx: &Context,
    namespace: &str,
    settings: &ProviderSettings,
    status: Option<&ProviderStatus>,
) -> Result<(), Error> {
    let current = settings.credential_secret();
    if let Some(old) = status.and_then(|s| s.protected_credential.as_deref())
        && Some(old) != current
    {
        set_credential_finalizer(ctx, namespace, old, false).await?;
    }
    if let Some(current) = current {
        set_credential_finalizer(ctx, namespace, current, true).await?;
    }
    Ok(())
}

/// Adds or removes [`CREDENTIAL_FINALIZER`] on a Secret (a missing Secret needs neither).
async fn set_credential_finalizer(
    ctx: &Context,
    namespace: &str,
    name: &str,
    present: bool,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    let has = secret
        .finalizers()
        .iter()
        .any(|f| f == CREDENTIAL_FINALIZER);
    if has == present || (present && secret.metadata.deletion_timestamp.is_some()) {
        // No finalizer can be added to an object that is already being deleted.
        return Ok(());
    }
    let mut finalizers: Vec<String> = secret
        .finalizers()
        .iter()
        .filter(|f| *f != CREDENTIAL_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(CREDENTIAL_FINALIZER.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": secret.resource_version(), "finalizers": finalizers}
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn check<K: Resource>(
    ctx: &Context,
    key: &str,
    settings: &ProviderSettings,
    credential_ns: &str,
    provider: &K,
    old: Option<ProviderStatus>,
) -> ProviderStatus {
    let generation = provider.meta().generation;
    let mut status = ProviderStatus {
        observed_generation: old.as_ref().and_then(|s| s.observed_generation),
        protected_credential: old.as_ref().and_then(|s| s.protected_credential.clone()),
        conditions: old.map(|s| s.conditions).unwrap_or_default(),
        backend: Some(settings.backend_name().to_string()),
    };
    let seed = (provider.meta().uid.clone(), generation);
    let (ready, reason, message) =
        match provider_client(ctx, key, settings, credential_ns, seed).await {
            Err(e) => {
                set_condition(
                    &mut status.conditions,
                    new_condition(
                        CREDENTIALS_FOUND,
                        false,
                        e.reason(),
                        e.to_string(),
                        generation,
                    ),
                );
                set_condition(
                    &mut status.conditions,
                    new_condition(
                        ENDPOINT_REACHABLE,
                        false,
                        "NotChecked",
                        "no usable credential",
                        generation,
                    ),
                );
                (false, e.reason(), e.to_string())
            }
            Ok(client) => {
                set_condition(
                    &mut status.conditions,
                    new_condition(
                        CREDENTIALS_FOUND,
                        true,
                        "Found",
                        "the credential Secret has the key",
                        generation,
                    ),
                );
                match client.check_reachable().await {
                    Ok(()) => {
                        set_condition(
                            &mut status.conditions,
                            new_condition(
                                ENDPOINT_REACHABLE,
                                true,
                                "Reachable",
                                "an authenticated request succeeded",
                                generation,
                            ),
                        );
                        (
                            true,
                            "Ready",
                            format!(
                                "{} backend is reachable with the credential",
                                client.backend()
                            ),
                        )
                    }
                    Err(e) => {
                        let e = Error::from(e);
                        set_condition(
                            &mut status.conditions,
                            new_condition(
                                ENDPOINT_REACHABLE,
                                false,
                                e.reason(),
                                e.to_string(),
                                generation,
                            ),
                        );
                        (false, e.reason(), e.to_string())
                    }
                }
            }
        };
    set_condition(
        &mut status.conditions,
        new_condition(READY, ready, reason, message, generation),
    );
    if ready {
        status.observed_generation = generation;
    }
    status
}

async fn finish<K>(
    ctx: &Context,
    api: &Api<K>,
    provider: &K,
    old: Option<&ProviderStatus>,
    status: ProviderStatus,
    kind: &'static str,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ready =
        crate::api::conditions::find(&status.conditions, READY).is_some_and(|c| c.status == "True");
    let unchanged = old.is_some_and(|o| {
        o.observed_generation == status.observed_generation
            && o.backend == status.backend
            && o.protected_credential == status.protected_credential
            && crate::api::conditions::eq_ignoring_time(&o.conditions, &status.conditions)
    });
    if !unchanged {
        apply_status(api, &provider.name_any(), &status).await?;
    }
    let result = if ready { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels { kind, result })
        .inc();
    Ok(Action::requeue(if ready {
        PROVIDER_RECHECK
    } else {
        Duration::from_secs(30)
    }))
}
