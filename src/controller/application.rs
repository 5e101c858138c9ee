//! The `OAuthApplication` reconciler: resolve -> validate -> find remote -> create / update /
//! rotate -> Secret -> status. Deletion goes through a finalizer.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::context::{Context, trigger_fingerprint};
use super::desired::desired_client;
use super::error::{Error, Result};
use super::resolve::{ResolvedProvider, resolve_provider};
use super::secret::{
    PROVIDER_OBJECT_ID_ANNOTATION, build_secret, create_secret, is_owned_by, reconcile_metadata,
    release_secret, write_rotated_secret,
};
use super::status::write_app_status;
use crate::api::conditions::{DRIFTED, READY, new_condition, remove_condition, set_condition};
use crate::api::{
    DeletionPolicy, DriftPolicy, OAuthApplication, OAuthApplicationStatus, PendingRegistration,
};
use crate::providers::{DesiredClient, IssuedClient, ProviderError, RemoteClient};
use crate::telemetry::{ErrorLabels, ReconcileLabels};

pub const FINALIZER: &str = "oauth-operator.dev/cleanup";
const KIND: &str = "OAuthApplication";
/// A client found by name after a crash counts as ours only if created at most this long
/// before the recorded start of the create call (clock skew between us and the provider).
const ADOPTION_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(120);

/// Entry point of the controller. Malformed objects (that fail to deserialize) are reported
/// and skipped instead of stalling the watch.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<OAuthApplication>>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let app = match &guard.0 {
        Ok(app) => Arc::new(app.clone()),
        Err(invalid) => {
            warn!(error = %invalid, "skipping a malformed OAuthApplication");
            return Ok(Action::await_change());
        }
    };
    let obj_ref = ObjectRef::from_obj(&*app);
    if let Some(left) = ctx.gate(&obj_ref, trigger_fingerprint(&app)) {
        // Backing off: a status or Secret event must not turn into a retry storm.
        return Ok(Action::requeue(left));
    }
    let start = Instant::now();
    let namespace = app.namespace().unwrap_or_default();
    let api: Api<OAuthApplication> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, app, |event| async {
        match event {
            Finalizer::Apply(app) => report(&api, &app, &ctx, false).await,
            Finalizer::Cleanup(app) => report(&api, &app, &ctx, true).await,
        }
    })
    .await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    let labels = ReconcileLabels {
        kind: KIND,
        result: outcome,
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(start.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_backoff(&obj_ref);
    }
    result
}

/// Requeue delay after a failed pass (per-object backoff, `Retry-After`, or the resync
/// interval for permanent errors).
pub fn error_policy(
    guard: Arc<DeserializeGuard<OAuthApplication>>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<Context>,
) -> Action {
    use kube::runtime::finalizer::Error as FinalizerError;
    let Ok(app) = &guard.0 else {
        return Action::await_change();
    };
    let inner = match error {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => Some(e),
        other => {
            warn!(error = %other, "finalizer update failed");
            None
        }
    };
    Action::requeue(ctx.next_retry(&ObjectRef::from_obj(app), inner, trigger_fingerprint(app)))
}

/// Runs one pass; a failure becomes status (`Ready=False` with the error's reason), an event
/// and a metric, and is returned so that the finalizer is kept and the pass retried.
async fn report(
    api: &Api<OAuthApplication>,
    app: &OAuthApplication,
    ctx: &Context,
    deleting: bool,
) -> Result<Action> {
    let obj_ref = ObjectRef::from_obj(app);
    let mut status = app.status.clone().unwrap_or_default();
    let result = if deleting {
        cleanup(app, ctx, &mut status).await
    } else {
        apply(api, app, ctx, &mut status).await
    };
    if let Err(error) = &result {
        let reason = error.reason();
        let message = error.to_string();
        warn!(app = %obj_ref, reason, %message, "reconcile failed");
        ctx.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels { kind: KIND, reason })
            .inc();
        // observedGeneration stays where it was: the work for this generation did not happen.
        set_condition(
            &mut status.conditions,
            new_condition(READY, false, reason, &message, app.metadata.generation),
        );
        if let Err(e) = write_app_status(api, app, &status).await {
            warn!(app = %obj_ref, error = %e, "failed to write failure status");
        }
        ctx.event(app, EventType::Warning, reason, "Reconcile", message)
            .await;
    }
    result
}

async fn apply(
    api: &Api<OAuthApplication>,
    app: &OAuthApplication,
    ctx: &Context,
    status: &mut OAuthApplicationStatus,
) -> Result<Action> {
    let namespace = app.namespace().unwrap_or_default();
    // 1. provider and tenancy
    let provider = resolve_provider(app, ctx).await?;
    // 2. desired client (pure) and what the backend can represent
    let desired = desired_client(app)?;
    provider
        .client
        .check_supported(&desired)
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    // The Secret: never taken over, checked before anything is registered.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret_name = app.secret_name();
    // A live read, not a cache: acting on a stale "missing" would rotate a working secret.
    let existing = secrets.get_opt(&secret_name).await?;
    if let Some(secret) = &existing
        && !is_owned_by(secret, app)
    {
        return Err(Error::SecretConflict(format!(
            "Secret {namespace}/{secret_name} exists and was not created by this OAuthApplication; \
             the operator never takes over a Secret it did not create: delete it or set spec.secret.name"
        )));
    }
    // 3. find the remote client: status, then the Secret's annotation, then recovery.
    let remote_id = status.provider_object_id.clone().or_else(|| {
        existing
            .as_ref()
            .and_then(|s| s.annotations().get(PROVIDER_OBJECT_ID_ANNOTATION).cloned())
    });
    let mut secret_written = false;
    // 4. create / update at the provider
    let remote = match remote_id {
        None => {
            let remote = register(
                api,
                app,
                ctx,
                &provider,
                &desired,
                status,
                existing.as_ref(),
                &secrets,
            )
            .await?;
            secret_written = true;
            remote
        }
        Some(id) => {
            match sync_remote(app, ctx, &provider, &desired, status, &id).await? {
                Some(remote) => remote,
                None => {
                    // The client was deleted at the provider: its credentials are useless.
                    let note = format!(
                        "client {id} no longer exists at {}; registering a new one and replacing the credentials in Secret {secret_name}",
                        provider.key
                    );
                    ctx.event(app, EventType::Warning, "ClientRecreated", "Register", note)
                        .await;
                    ctx.metrics.lifecycle_event("client_recreated");
                    status.provider_object_id = None;
                    status.client_id = None;
                    let remote = register(
                        api,
                        app,
                        ctx,
                        &provider,
                        &desired,
                        status,
                        existing.as_ref(),
                        &secrets,
                    )
                    .await?;
                    secret_written = true;
                    remote
                }
            }
        }
    };
    // 5. the Secret
    let rotate_token = app.rotate_token().map(str::to_string);
    if secret_written {
        // A fresh secret was just issued: a pending rotation request is satisfied by it.
        status.last_rotation_token = rotate_token.clone();
    } else if let Some(secret) = &existing {
        if rotate_token.is_some() && rotate_token != status.last_rotation_token {
            rotate(app, ctx, &provider, &secrets, secret, status).await?;
            status.last_rotation_token = rotate_token.clone();
        } else if reconcile_metadata(&secrets, secret, app, &remote).await? {
            info!(app = %ObjectRef::from_obj(app), "updated Secret labels/annotations");
        }
    } else {
        recover_secret(app, ctx, &provider, &secrets, &remote, status).await?;
        status.last_rotation_token = rotate_token.clone();
    }
    // 6. status
    status.client_id = Some(remote.client_id.clone());
    status.provider_object_id = Some(remote.id.clone());
    status.secret_name = Some(secret_name.clone());
    status.endpoints = Some(remote.endpoints.clone());
    status.pending_registration = None;
    status.observed_generation = app.metadata.generation;
    let message = format!(
        "client {} is registered at {} and its credentials are in Secret {secret_name}",
        remote.client_id, provider.key
    );
    set_condition(
        &mut status.conditions,
        new_condition(READY, true, "Reconciled", message, app.metadata.generation),
    );
    write_app_status(api, app, status).await?;
    Ok(Action::requeue(ctx.resync_delay()))
}

/// Checks the existing client against the spec: a PATCH after a spec change, drift
/// correction or reporting otherwise. `Ok(None)`: the client no longer exists.
async fn sync_remote(
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    desired: &DesiredClient,
    status: &mut OAuthApplicationStatus,
    id: &str,
) -> Result<Option<RemoteClient>> {
    let spec_changed = status.observed_generation != app.metadata.generation;
    if spec_changed {
        // One PATCH with every managed field; no read needed.
        return match provider.client.update(id, desired).await {
            Ok(remote) => {
                ctx.inventory.upsert(&provider.key, &remote).await;
                status.last_sync_time = Some(Time(Timestamp::now()));
                status.drifted_fields.clear();
                remove_condition(&mut status.conditions, DRIFTED);
                Ok(Some(remote))
            }
            Err(ProviderError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    let from_snapshot = ctx
        .inventory
        .lookup(
            &provider.key,
            &provider.client,
            id,
            ctx.config.resync_interval,
        )
        .await?;
    let (remote, synced_at) = match from_snapshot {
        Some(found) => found,
        // Not in the snapshot (deleted, or created after it): confirm with one GET.
        None => match provider.client.get(id).await {
            Ok(remote) => (remote, Timestamp::now()),
            Err(ProviderError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    status.last_sync_time = Some(Time(synced_at));
    let drifted = provider.client.diff(desired, &remote);
    if drifted.is_empty() {
        status.drifted_fields.clear();
        remove_condition(&mut status.conditions, DRIFTED);
        return Ok(Some(remote));
    }
    let fields = drifted.join(", ");
    match app.spec.drift_policy {
        DriftPolicy::Correct => {
            let corrected = match provider.client.update(id, desired).await {
                Ok(c) => c,
                Err(ProviderError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            ctx.inventory.upsert(&provider.key, &corrected).await;
            ctx.metrics.lifecycle_event("drift_corrected");
            ctx.event(
                app,
                EventType::Normal,
                "DriftCorrected",
                "Update",
                format!(
                    "client {} was changed at the provider ({fields}); changed back to the spec",
                    remote.client_id
                ),
            )
            .await;
            status.drifted_fields.clear();
            remove_condition(&mut status.conditions, DRIFTED);
            Ok(Some(corrected))
        }
        DriftPolicy::Report => {
            let names: Vec<String> = drifted.iter().map(|f| f.to_string()).collect();
            if status.drifted_fields != names {
                ctx.metrics.lifecycle_event("drift_reported");
                ctx.event(
                    app,
                    EventType::Warning,
                    "Drifted",
                    "Compare",
                    format!("client {} differs from the spec at the provider: {fields} (driftPolicy: Report)", remote.client_id),
                )
                .await;
            }
            status.drifted_fields = names;
            set_condition(
                &mut status.conditions,
                new_condition(
                    DRIFTED,
                    true,
                    "Drifted",
                    format!("the client at the provider differs from the spec: {fields}"),
                    app.metadata.generation,
                ),
            );
            Ok(Some(remote))
        }
    }
}

/// Registers a new client, crash-safe: the pending registration is recorded in status before
/// the create call, the Secret written right after it; after a crash in between, the client is
/// found by name and adopted with a rotated secret instead of created twice.
#[allow(clippy::too_many_arguments)]
async fn register(
    api: &Api<OAuthApplication>,
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    desired: &DesiredClient,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
    secrets: &Api<Secret>,
) -> Result<RemoteClient> {
    if let Some(pending) = status.pending_registration.clone()
        && let Some(adopted) =
            adopt_orphan(app, ctx, provider, &pending, existing, secrets, status).await?
    {
        return Ok(adopted);
    }
    status.pending_registration = Some(PendingRegistration {
        name: desired.name.clone(),
        started_at: Time(Timestamp::now()),
    });
    set_condition(
        &mut status.conditions,
        new_condition(
            READY,
            false,
            "Registering",
            format!("registering the client at {}", provider.key),
            app.metadata.generation,
        ),
    );
    // Must be stored before the call: it is what makes a crash after the call recoverable.
    write_app_status(api, app, status).await?;
    let issued = provider.client.create(desired).await?;
    ctx.inventory.upsert(&provider.key, &issued.client).await;
    if ctx.config.fault.as_deref() == Some("abort-after-create") {
        // Test hook: die exactly where a crash loses a freshly issued secret.
        warn!("fault injection: aborting right after the create call");
        std::process::abort();
    }
    store_credentials(app, secrets, existing, &issued, None).await?;
    ctx.metrics.lifecycle_event("client_registered");
    ctx.event(
        app,
        EventType::Normal,
        "Registered",
        "Register",
        format!(
            "registered client {} at {}; credentials written to Secret {}",
            issued.client.client_id,
            provider.key,
            app.secret_name()
        ),
    )
    .await;
    Ok(issued.client)
}

/// After a crash between create and the Secret: find the client created then (by name, created
/// after the recorded start), rotate its secret (the first one was never stored) and store it.
async fn adopt_orphan(
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    pending: &PendingRegistration,
    existing: Option<&Secret>,
    secrets: &Api<Secret>,
    status: &mut OAuthApplicationStatus,
) -> Result<Option<RemoteClient>> {
    let since = pending.started_at.0 - ADOPTION_CLOCK_SKEW;
    let candidates: Vec<RemoteClient> = provider
        .client
        .find_by_name(&pending.name)
        .await?
        .into_iter()
        .filter(|c| c.created_at.is_none_or(|t| t >= since))
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [orphan] => {
            let issued = provider.client.rotate_secret(&orphan.id).await?;
            ctx.inventory.upsert(&provider.key, &issued.client).await;
            let rotated_at = Timestamp::now();
            store_credentials(
                app,
                secrets,
                existing,
                &issued,
                Some(&rotated_at.to_string()),
            )
            .await?;
            status.secret_rotated_at = Some(Time(rotated_at));
            ctx.metrics.lifecycle_event("client_adopted");
            ctx.event(
                app,
                EventType::Warning,
                "ClientAdopted",
                "Register",
                format!(
                    "found client {} created by an interrupted registration; rotated its secret (the first one was never stored) and wrote Secret {}",
                    issued.client.client_id,
                    app.secret_name()
                ),
            )
            .await;
            Ok(Some(issued.client))
        }
        many => Err(Error::AdoptionAmbiguous(format!(
            "an interrupted registration left {} clients named {:?} at {} created after {}: ids {}; delete the extra ones at the provider",
            many.len(),
            pending.name,
            provider.key,
            pending.started_at.0,
            many.iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Writes freshly issued credentials: a POST when there is no Secret, otherwise (our own Secret,
/// when the client was replaced) a patch of its data.
async fn store_credentials(
    app: &OAuthApplication,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    issued: &IssuedClient,
    rotated_at: Option<&str>,
) -> Result<()> {
    match existing {
        None => {
            let secret = build_secret(
                app,
                &issued.client,
                issued.client_secret.as_ref(),
                rotated_at,
            );
            // A few quick retries: the secret exists only in memory until this succeeds (and
            // if it never does, the pending registration leads the next pass to recover).
            let mut attempt = 0;
            loop {
                match create_secret(secrets, &secret).await {
                    Ok(()) => return Ok(()),
                    Err(Error::Kube(e)) if attempt < 3 => {
                        attempt += 1;
                        warn!(error = %e, attempt, "creating the Secret failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Some(secret) => {
            let at = rotated_at
                .map(str::to_string)
                .unwrap_or_else(|| Timestamp::now().to_string());
            write_rotated_secret(
                secrets,
                secret,
                app,
                &issued.client,
                issued.client_secret.as_ref(),
                &at,
            )
            .await
        }
    }
}

/// The Secret was deleted: issue a new client secret (the old value is gone) and write it.
async fn recover_secret(
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    secrets: &Api<Secret>,
    remote: &RemoteClient,
    status: &mut OAuthApplicationStatus,
) -> Result<()> {
    let issued = if remote.public {
        IssuedClient {
            client: remote.clone(),
            client_secret: None,
        }
    } else {
        provider.client.rotate_secret(&remote.id).await?
    };
    let rotated_at = Timestamp::now();
    store_credentials(app, secrets, None, &issued, Some(&rotated_at.to_string())).await?;
    if !remote.public {
        status.secret_rotated_at = Some(Time(rotated_at));
    }
    ctx.metrics.lifecycle_event("secret_recovered");
    ctx.event(
        app,
        EventType::Warning,
        "SecretRecovered",
        "Recover",
        format!(
            "Secret {} was deleted; {} and wrote a new Secret",
            app.secret_name(),
            if remote.public {
                "recreated it (public client, no secret)"
            } else {
                "rotated the client secret"
            }
        ),
    )
    .await;
    Ok(())
}

/// Rotation on request (`oauth-operator.dev/rotate`).
async fn rotate(
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    secrets: &Api<Secret>,
    secret: &Secret,
    status: &mut OAuthApplicationStatus,
) -> Result<()> {
    let Some(id) = status.provider_object_id.clone() else {
        return Ok(());
    };
    let issued = provider.client.rotate_secret(&id).await?;
    let rotated_at = Timestamp::now();
    write_rotated_secret(
        secrets,
        secret,
        app,
        &issued.client,
        issued.client_secret.as_ref(),
        &rotated_at.to_string(),
    )
    .await?;
    status.secret_rotated_at = Some(Time(rotated_at));
    ctx.metrics.lifecycle_event("secret_rotated");
    ctx.event(
        app,
        EventType::Normal,
        "SecretRotated",
        "Rotate",
        format!(
            "rotated the client secret of {} on request; Secret {} updated",
            issued.client.client_id,
            app.secret_name()
        ),
    )
    .await;
    Ok(())
}

/// Deletion: honours `deletionPolicy`; a provider that is gone blocks at most
/// `deletionTimeout` (or until the force-delete annotation).
async fn cleanup(
    app: &OAuthApplication,
    ctx: &Context,
    status: &mut OAuthApplicationStatus,
) -> Result<Action> {
    let namespace = app.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets
        .get_opt(&app.secret_name())
        .await?
        .filter(|s| is_owned_by(s, app));
    let remote_id = status.provider_object_id.clone().or_else(|| {
        existing
            .as_ref()
            .and_then(|s| s.annotations().get(PROVIDER_OBJECT_ID_ANNOTATION).cloned())
    });
    match app.spec.deletion_policy {
        DeletionPolicy::Delete => {
            if let Err(error) = delete_remote(app, ctx, remote_id.as_deref(), status).await {
                let since = app
                    .meta()
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| Timestamp::now().duration_since(t.0))
                    .unwrap_or_default();
                let timeout = SignedDuration::try_from(ctx.config.deletion_timeout)
                    .unwrap_or(SignedDuration::MAX);
                if app.force_delete() || since >= timeout {
                    ctx.metrics.lifecycle_event("client_left_at_provider");
                    ctx.event(
                        app,
                        EventType::Warning,
                        "ClientLeftAtProvider",
                        "Delete",
                        format!("gave up deleting the client at the provider ({error}); it was left there"),
                    )
                    .await;
                } else {
                    return Err(Error::DeletionBlocked(format!(
                        "cannot delete the client at the provider: {error}; retrying until {}s after deletion, \
                         or annotate with oauth-operator.dev/force-delete=true to remove it without deleting the client",
                        ctx.config.deletion_timeout.as_secs()
                    )));
                }
            }
            if let Some(secret) = existing {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: secret.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match secrets.delete(&secret.name_any(), &params).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        DeletionPolicy::Orphan => {
            if let Some(secret) = existing {
                release_secret(&secrets, &secret, app).await?;
            }
        }
    }
    Ok(Action::await_change())
}

async fn delete_remote(
    app: &OAuthApplication,
    ctx: &Context,
    remote_id: Option<&str>,
    status: &OAuthApplicationStatus,
) -> Result<()> {
    if remote_id.is_none() && status.pending_registration.is_none() {
        return Ok(()); // nothing was ever registered
    }
    let provider = resolve_provider(app, ctx).await?;
    match remote_id {
        Some(id) => {
            provider.client.delete(id).await?;
            ctx.inventory.remove(&provider.key, id).await;
        }
        None => {
            // An interrupted registration: delete what it may have created.
            if let Some(pending) = &status.pending_registration {
                let since = pending.started_at.0 - ADOPTION_CLOCK_SKEW;
                for c in provider.client.find_by_name(&pending.name).await? {
                    if c.created_at.is_none_or(|t| t >= since) {
                        provider.client.delete(&c.id).await?;
                    }
                }
            }
        }
    }
    Ok(())
}
