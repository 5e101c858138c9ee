//! The provider reconcilers: `CredentialsFound`, `EndpointReachable` and `Ready` on
//! `OAuthProvider` and `ClusterOAuthProvider`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::context::Context;
use super::error::Error;
use super::resolve::{provider_client, provider_key};
use super::status::apply_status;
use crate::api::conditions::{
    CREDENTIALS_FOUND, ENDPOINT_REACHABLE, READY, new_condition, set_condition,
};
use crate::api::{
    ClusterOAuthProvider, OAuthProvider, ProviderKind, ProviderSettings, ProviderStatus,
};
use crate::telemetry::ReconcileLabels;

/// How often a healthy provider's endpoint is checked again.
const PROVIDER_RECHECK: Duration = Duration::from_secs(300);

pub async fn reconcile_namespaced(
    guard: Arc<DeserializeGuard<OAuthProvider>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Ok(provider) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let namespace = provider.namespace().unwrap_or_default();
    let api: Api<OAuthProvider> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = provider_key(
        ProviderKind::OAuthProvider,
        &namespace,
        &provider.name_any(),
    );
    let status = check(
        &ctx,
        &key,
        &provider.spec.settings,
        &namespace,
        provider,
        provider.status.clone(),
    )
    .await;
    finish(
        &ctx,
        &api,
        provider,
        provider.status.as_ref(),
        status,
        "OAuthProvider",
    )
    .await
}

pub async fn reconcile_cluster(
    guard: Arc<DeserializeGuard<ClusterOAuthProvider>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let Ok(provider) = &guard.0 else {
        return Ok(Action::await_change());
    };
    let api: Api<ClusterOAuthProvider> = Api::all(ctx.client.clone());
    let key = provider_key(ProviderKind::ClusterOAuthProvider, "", &provider.name_any());
    let credential_ns = ctx.config.operator_namespace.clone();
    let status = check(
        &ctx,
        &key,
        &provider.spec.settings,
        &credential_ns,
        provider,
        provider.status.clone(),
    )
    .await;
    finish(
        &ctx,
        &api,
        provider,
        provider.status.as_ref(),
        status,
        "ClusterOAuthProvider",
    )
    .await
}

pub fn error_policy<K>(_: Arc<DeserializeGuard<K>>, error: &Error, _: Arc<Context>) -> Action {
    warn!(%error, "provider reconcile failed");
    Action::requeue(Duration::from_secs(30))
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
