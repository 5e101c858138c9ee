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
/// Kept on an `OAuthProvider`'s credential Secret while the provider exists, for the same
/// reason: `oauth-operator.dev/credential-<provider uid>`, one per provider, so providers
/// sharing a Secret never release it for each other.
pub fn credential_finalizer(provider_uid: &str) -> String {
    let uid: String = provider_uid.chars().filter(|c| *c != '-').collect();
    format!("oauth-operator.dev/credential-{uid}")
}
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
    let uid = provider.uid().unwrap_or_default();
    finalizer(
        &api,
        IN_USE_FINALIZER,
        Arc::new(provider.clone()),
        |event| async {
            match event {
                Finalizer::Apply(provider) => {
                    let settings = &provider.spec.settings;
                    protect_credential(&ctx, &namespace, settings.credential_secret(), &uid)
                        .await?;
                    let mut status = check(
                        &ctx,
                        &key,
                        settings,
                        &namespace,
                        &*provider,
                        provider.status.clone(),
                    )
                    .await;
                    status.protected_credential = settings.credential_secret().map(str::to_string);
                    let old = provider.status.as_ref();
                    finish(&ctx, &api, &*provider, old, status, "OAuthProvider").await
                }
                Finalizer::Cleanup(provider) => {
                    let apps: Api<DeserializeGuard<OAuthApplication>> =
                        Api::namespaced(ctx.client.clone(), &namespace);
                    release_when_unused(apps, ProviderKind::OAuthProvider, &name, &*provider)
                        .await?;
                    protect_credential(&ctx, &namespace, None, &uid).await?;
                    Ok(Action::await_change())
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
                // Its credential lives in the operator's namespace, which deleting a tenant's
                // namespace never touches: no finalizer on it.
                Finalizer::Apply(provider) => {
                    let status = check(
                        &ctx,
                        &key,
                        &provider.spec.settings,
                        &credential_ns,
                        &*provider,
                        provider.status.clone(),
                    )
                    .await;
                    let old = provider.status.as_ref();
                    finish(&ctx, &api, &*provider, old, status, "ClusterOAuthProvider").await
                }
                Finalizer::Cleanup(provider) => {
                    let apps: Api<DeserializeGuard<OAuthApplication>> =
                        Api::all(ctx.client.clone());
                    release_when_unused(
                        apps,
                        ProviderKind::ClusterOAuthProvider,
                        &name,
                        &*provider,
                    )
                    .await?;
                    Ok(Action::await_change())
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
/// `oauth-operator.dev/force-delete: "true"` on the provider lets go at once (its
/// applications' deletions then give up after `--deletion-timeout`).
async fn release_when_unused<K: Resource>(
    apps: Api<DeserializeGuard<OAuthApplication>>,
    kind: ProviderKind,
    name: &str,
    provider: &K,
) -> Result<(), Error> {
    let forced = provider
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::FORCE_DELETE_ANNOTATION))
        .is_some_and(|v| v == "true");
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
    if !users.is_empty() && !forced {
        return Err(Error::ProviderInUse(format!(
            "{kind} {name} is being deleted but {} application(s) still use it to delete their clients: {} \
             (annotate it with oauth-operator.dev/force-delete=true to let it go now)",
            users.len(),
            users.join(", ")
        )));
    }
    info!(%kind, name, forced, "no application needs the provider any more; letting it be deleted");
    Ok(())
}

/// Keeps the `current` credential Secret from being deleted while the provider exists, and
/// lets go of every other Secret of the namespace that carries this provider's finalizer (a
/// credential it no longer points at; all of them when `current` is `None`, at deletion).
async fn protect_credential(
    ctx: &Context,
    namespace: &str,
    current: Option<&str>,
    provider_uid: &str,
) -> Result<(), Error> {
    let finalizer = credential_finalizer(provider_uid);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    for secret in api.list_metadata(&ListParams::default()).await?.items {
        let name = secret.name_any();
        let has = secret.finalizers().contains(&finalizer);
        let want = current == Some(name.as_str());
        // Kept while it is being deleted (in a namespace deletion the Secret may go first);
        // but no finalizer can be added to a Secret already being deleted.
        let adding_too_late = want && !has && secret.metadata.deletion_timestamp.is_some();
        if has != want && !adding_too_late {
            set_finalizer(&api, &secret, &finalizer, want).await?;
        }
    }
    Ok(())
}

/// Adds or removes `finalizer` on a Secret (resourceVersion-guarded).
async fn set_finalizer(
    api: &Api<Secret>,
    secret: &kube::core::PartialObjectMeta<Secret>,
    finalizer: &str,
    present: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> = secret
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    if present {
        finalizers.push(finalizer.to_string());
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": secret.resource_version(), "finalizers": finalizers}
    });
    api.patch(
        &secret.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
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
                            format!("{} backend is reachable with the credential", client.name()),
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
