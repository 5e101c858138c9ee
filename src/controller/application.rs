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
    build_secret, create_secret, dry_run_write, is_owned_by, reconcile_metadata, release_secret,
    write_rotated_secret,
};
use super::status::StatusWriter;
use crate::api::conditions::{DRIFTED, READY, new_condition, remove_condition, set_condition};
use crate::api::{
    DeletionPolicy, DriftPolicy, OAuthApplication, OAuthApplicationStatus, PendingRegistration,
};
use crate::providers::{DesiredClient, IssuedClient, ProviderError, RemoteClient};
use crate::telemetry::{ErrorLabels, ReconcileLabels};

pub const FINALIZER: &str = "oauth-operator.dev/cleanup";
const KIND: &str = "OAuthApplication";
/// A client found by its registration name after a crash counts as ours only if created at
/// most this long before the recorded start of the create call (clock skew with the provider).
const ADOPTION_CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(120);

/// Now, to the second: what `Time` serializes, so comparing status never sees sub-second noise.
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now())
}

/// The name a client is created with: the display name tagged with the object's uid, so that
/// after a crash it is found by a name no other object (or cluster) can share. The display
/// name proper is set right after the Secret is written.
pub fn registration_name(display: &str, uid: &str) -> String {
    let tag = format!(" [oauth-operator {uid}]");
    let keep = 256usize.saturating_sub(tag.chars().count());
    let mut name: String = display.chars().take(keep).collect();
    name.push_str(&tag);
    name
}

/// Entry point of the controller. Malformed objects (that fail to deserialize) are reported
/// and skipped instead of stalling the watch.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<OAuthApplication>>,
    ctx: Arc<Context>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let app = match &guard.0 {
        Ok(app) => Arc::new(app.clone()),
        Err(invalid) => {
            // One bad object must not stall the others: report it and wait for a change.
            warn!(error = %invalid, name = ?invalid.metadata.name, "skipping a malformed OAuthApplication");
            let note = format!("this operator cannot read the object: {invalid}");
            ctx.event_on(
                &guard.object_ref(&()),
                EventType::Warning,
                "Malformed",
                "Reconcile",
                note,
            )
            .await;
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
    cached: &OAuthApplication,
    ctx: &Context,
    deleting: bool,
) -> Result<Action> {
    // A quorum read: pending registrations, ids and rotation tokens must never come from a
    // cache that may predate our own last write.
    let Some(app) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    if app.metadata.uid != cached.metadata.uid {
        // Deleted and created again under the same name: this event is about the old one.
        return Ok(Action::await_change());
    }
    let app = &app;
    let obj_ref = ObjectRef::from_obj(app);
    let mut status = app.status.clone().unwrap_or_default();
    let mut writer = StatusWriter::new(api, app);
    let result = if deleting {
        cleanup(app, ctx, &mut status).await
    } else {
        apply(&mut writer, app, ctx, &mut status).await
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
        if let Err(e) = writer.write(&status).await {
            warn!(app = %obj_ref, error = %e, "failed to write failure status");
        }
        ctx.event(app, EventType::Warning, reason, "Reconcile", message)
            .await;
    }
    result
}

/// Whether our Secret holds credentials of `remote` (by the client id it stores).
fn holds_client(secret: &Secret, app: &OAuthApplication, remote: &RemoteClient) -> bool {
    let key = super::secret::KeyNames::for_app(app).client_id;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .is_some_and(|v| v.0 == remote.client_id.as_bytes())
}

/// What every step of one pass over one application works with.
#[derive(Clone, Copy)]
struct Pass<'a> {
    app: &'a OAuthApplication,
    ctx: &'a Context,
    provider: &'a ResolvedProvider,
    desired: &'a DesiredClient,
    secrets: &'a Api<Secret>,
}

async fn apply(
    writer: &mut StatusWriter<'_>,
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
    let secret_name = app.secret_name();
    if let Some(recorded) = status.secret_name.as_deref()
        && recorded != secret_name
    {
        // Moving would mean a new secret in a new Secret while workloads mount the old one.
        return Err(Error::InvalidSpec(format!(
            "the Secret name cannot change (from {recorded} to {secret_name}): set spec.secret.name back to {recorded}, \
             or create a new OAuthApplication"
        )));
    }
    // The Secret: never taken over, checked before anything is registered. A live read, not
    // a cache: acting on a stale "missing" would rotate a working secret.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets.get_opt(&secret_name).await?;
    if let Some(secret) = &existing
        && !is_owned_by(secret, app)
    {
        return Err(Error::SecretConflict(format!(
            "Secret {namespace}/{secret_name} exists and was not created by this OAuthApplication; \
             the operator never takes over a Secret it did not create: delete it or set spec.secret.name"
        )));
    }
    let pass = Pass {
        app,
        ctx,
        provider: &provider,
        desired: &desired,
        secrets: &secrets,
    };
    let rotate_token = app.rotate_token().map(str::to_string);
    let rotation_requested = rotate_token.is_some() && rotate_token != status.last_rotation_token;
    // 3. find the remote client (its id is only ever taken from status: an annotation on the
    //    Secret could be written by anyone who can edit Secrets in this namespace)
    let found = match status.provider_object_id.clone() {
        None => None,
        Some(id) => match sync_remote(pass, status, &id).await? {
            Some(remote) => Some(remote),
            None if rotation_requested => {
                // The client is gone and new credentials were asked for: register anew.
                let note = format!(
                    "client {id} no longer exists at {}; registering a new one (rotation {:?}) and replacing the credentials in Secret {secret_name}",
                    provider.key,
                    rotate_token.as_deref().unwrap_or_default()
                );
                ctx.event(app, EventType::Warning, "ClientRecreated", "Register", note)
                    .await;
                ctx.metrics.lifecycle_event("client_recreated");
                status.provider_object_id = None;
                status.client_id = None;
                None
            }
            None => {
                return Err(Error::ClientMissing(format!(
                    "client {id} no longer exists at {} (deleted there, or the provider now points at another instance); \
                     the credentials in Secret {secret_name} are left as they are: set a new oauth-operator.dev/rotate \
                     token to register a new client and replace them",
                    provider.key
                )));
            }
        },
    };
    // 4. register when there is no client (yet, or any more)
    if found.is_none()
        && status.pending_registration.is_none()
        && existing.is_some()
        && !rotation_requested
    {
        // Our Secret exists but status knows no client (status lost or restored): registering
        // now would silently replace credentials that may still work.
        return Err(Error::ClientMissing(format!(
            "Secret {secret_name} exists but status records no client (was the status reset?); the credentials \
             are left as they are: set a new oauth-operator.dev/rotate token to register a new client and replace them"
        )));
    }
    let fresh_credentials = found.is_none();
    let remote = match found {
        Some(remote) => remote,
        None => {
            let secret = existing.as_ref();
            register(pass, writer, status, secret).await?
        }
    };
    // 5. the Secret
    if fresh_credentials {
        // Credentials were just issued: a pending rotation request is satisfied by them.
        status.last_rotation_token = rotate_token.clone();
    } else if let Some(secret) = existing.as_ref().filter(|s| !holds_client(s, app, &remote)) {
        // The Secret holds another client's credentials (a write after a new registration
        // failed): replace them with working ones for this client.
        warn!(app = %ObjectRef::from_obj(app), "the Secret holds another client's credentials; issuing new ones");
        recover_secret(pass, &remote, status, Some(secret)).await?;
        status.last_rotation_token = rotate_token.clone();
    } else if let Some(secret) = &existing {
        if rotation_requested {
            rotate(pass, secret, &remote, status).await?;
            status.last_rotation_token = rotate_token.clone();
        } else if reconcile_metadata(&secrets, secret, app, &remote).await? {
            info!(app = %ObjectRef::from_obj(app), "updated Secret labels/annotations");
        }
    } else {
        recover_secret(pass, &remote, status, None).await?;
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
    writer.write(status).await?;
    Ok(Action::requeue(ctx.resync_delay()))
}

/// Checks the existing client against the spec: a PATCH after a spec change, drift
/// correction or reporting otherwise. `Ok(None)`: the provider says the client does not exist.
async fn sync_remote(
    pass: Pass<'_>,
    status: &mut OAuthApplicationStatus,
    id: &str,
) -> Result<Option<RemoteClient>> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        ..
    } = pass;
    let spec_changed = status.observed_generation != app.metadata.generation;
    if spec_changed {
        // One PATCH with every managed field; no read needed.
        return match provider.client.update(id, desired).await {
            Ok(remote) => {
                ctx.inventory.upsert(&provider.key, &remote).await;
                status.last_sync_time = Some(Time(now()));
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
            Ok(remote) => {
                ctx.inventory.upsert(&provider.key, &remote).await;
                (remote, now())
            }
            Err(ProviderError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    status.last_sync_time = Some(Time(synced_at));
    let uid = app.metadata.uid.as_deref().unwrap_or_default();
    if remote.name == registration_name(&desired.name, uid) {
        // A registration that stopped before the rename: finish it whatever the drift policy.
        let named = provider.client.update(id, desired).await?;
        ctx.inventory.upsert(&provider.key, &named).await;
        return Ok(Some(named));
    }
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
                    format!(
                        "client {} differs from the spec at the provider: {fields} (driftPolicy: Report)",
                        remote.client_id
                    ),
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

/// Registers a new client, crash-safe:
/// - the Secret write that must follow is proven by a dry-run first;
/// - the pending registration (with a name unique to this object) is in status before the
///   create call, and the client's id right after it;
/// - after a crash before the id was stored, the client is found by that unique name and
///   adopted with a rotated secret (the first one was never stored), never created twice.
async fn register(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<RemoteClient> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        secrets,
    } = pass;
    dry_run_write(secrets, app, existing).await?;
    if let Some(pending) = status.pending_registration.clone() {
        if let Some(adopted) = adopt_orphan(pass, &pending, status, existing).await? {
            return Ok(adopted);
        }
        // Nothing found. If the last create's outcome is unknown, a late commit may still
        // appear: wait for it rather than risk a second client.
        let settle = ctx.config.provider_timeout * 2;
        let since = pending
            .unanswered_at
            .as_ref()
            .unwrap_or(&pending.started_at);
        let age = now().duration_since(since.0);
        if age < SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX) {
            return Err(Error::RegistrationPending(format!(
                "a create call at {} may still complete; waiting until {}s after it before registering again",
                provider.key,
                settle.as_secs()
            )));
        }
    }
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let name = registration_name(&desired.name, &uid);
    status.pending_registration = Some(PendingRegistration {
        name: name.clone(),
        started_at: Time(now()),
        unanswered_at: None,
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
    writer.write(status).await?;
    let tagged = DesiredClient {
        name,
        ..desired.clone()
    };
    let issued = match provider.client.create(&tagged).await {
        Ok(issued) => issued,
        Err(e) => {
            if matches!(
                e,
                ProviderError::Unavailable {
                    outcome_unknown: true,
                    ..
                }
            ) {
                // The provider may still commit it: wait from now (not from the start, which
                // may predate a long wait for the request budget) before creating again.
                if let Some(pending) = status.pending_registration.as_mut() {
                    pending.unanswered_at = Some(Time(now()));
                }
            } else {
                // A definite "no": nothing was created, nothing to look for later.
                status.pending_registration = None;
            }
            return Err(e.into());
        }
    };
    if ctx.config.fault.as_deref() == Some("abort-after-create") {
        // Test hook: die exactly where a crash loses a freshly issued secret.
        warn!("fault injection: aborting right after the create call");
        std::process::abort();
    }
    // From here on, recovery goes by id (a crash now leads to recover_secret, by rotation).
    status.provider_object_id = Some(issued.client.id.clone());
    status.client_id = Some(issued.client.client_id.clone());
    if let Err(e) = writer.write(status).await {
        warn!(error = %e, "recording the new client id failed; writing the Secret first");
    }
    store_credentials(app, secrets, existing, &issued, None).await?;
    if ctx.config.fault.as_deref() == Some("abort-after-secret") {
        // Test hook: die after the Secret exists, before the client got its display name.
        warn!("fault injection: aborting right after writing the Secret");
        std::process::abort();
    }
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
    // The Secret holds the credentials: now give the client its display name.
    let named = provider.client.update(&issued.client.id, desired).await?;
    ctx.inventory.upsert(&provider.key, &named).await;
    Ok(named)
}

/// After a crash between create and storing its result: find the client(s) created under this
/// object's registration name, adopt the oldest with a rotated secret and delete any others
/// (they can only be duplicates of ours: the name carries our uid).
async fn adopt_orphan(
    pass: Pass<'_>,
    pending: &PendingRegistration,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<Option<RemoteClient>> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        ..
    } = pass;
    let since = pending.started_at.0 - ADOPTION_CLOCK_SKEW;
    let mut candidates: Vec<RemoteClient> = provider
        .client
        .find_by_name(&pending.name)
        .await?
        .into_iter()
        .filter(|c| c.created_at.is_some_and(|t| t >= since))
        .collect();
    candidates.sort_by_key(|c| c.created_at);
    let Some((orphan, duplicates)) = candidates.split_first() else {
        return Ok(None);
    };
    for duplicate in duplicates {
        provider.client.delete(&duplicate.id).await?;
        warn!(id = %duplicate.id, "deleted a duplicate client left by an interrupted registration");
    }
    let issued = rotate_and_store(pass, &orphan.id, existing, status).await?;
    // Only now: until the Secret holds the rotated secret, the pending record (and the tagged
    // name) must lead the next pass back here, not to a client whose secret nobody holds.
    status.provider_object_id = Some(issued.client.id.clone());
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
    let named = provider.client.update(&issued.client.id, desired).await?;
    ctx.inventory.upsert(&provider.key, &named).await;
    Ok(Some(named))
}

/// Writes freshly issued credentials: a POST when there is no Secret, otherwise (our own
/// Secret) a patch of its data.
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
            // if it never does, the next pass recovers by rotation).
            let mut attempt = 0;
            loop {
                match create_secret(secrets, &secret, app).await {
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
        Some(_) => {
            let at = rotated_at
                .map(str::to_string)
                .unwrap_or_else(|| now().to_string());
            write_rotated_secret(
                secrets,
                app,
                &issued.client,
                issued.client_secret.as_ref(),
                &at,
            )
            .await
        }
    }
}

/// Issues a new secret for client `id` (the old one stops working at once), stores it in the
/// Secret (patching `existing`, or creating it) and records `secretRotatedAt`.
async fn rotate_and_store(
    pass: Pass<'_>,
    id: &str,
    existing: Option<&Secret>,
    status: &mut OAuthApplicationStatus,
) -> Result<IssuedClient> {
    let issued = pass.provider.client.rotate_secret(id).await?;
    let rotated_at = now();
    let at = rotated_at.to_string();
    store_credentials(pass.app, pass.secrets, existing, &issued, Some(&at)).await?;
    status.secret_rotated_at = Some(Time(rotated_at));
    Ok(issued)
}

/// The Secret was deleted: issue a new client secret (the old value is gone) and write it.
async fn recover_secret(
    pass: Pass<'_>,
    remote: &RemoteClient,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<()> {
    let Pass {
        app, ctx, secrets, ..
    } = pass;
    dry_run_write(secrets, app, existing).await?;
    if remote.public {
        let issued = IssuedClient {
            client: remote.clone(),
            client_secret: None,
        };
        store_credentials(app, secrets, existing, &issued, Some(&now().to_string())).await?;
    } else {
        rotate_and_store(pass, &remote.id, existing, status).await?;
    }
    ctx.metrics.lifecycle_event("secret_recovered");
    ctx.event(
        app,
        EventType::Warning,
        "SecretRecovered",
        "Recover",
        format!(
            "Secret {} was missing or held another client's credentials; {} and wrote it",
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
    pass: Pass<'_>,
    secret: &Secret,
    remote: &RemoteClient,
    status: &mut OAuthApplicationStatus,
) -> Result<()> {
    let Pass {
        app, ctx, secrets, ..
    } = pass;
    if remote.public {
        return Ok(()); // nothing to rotate
    }
    dry_run_write(secrets, app, Some(secret)).await?;
    let issued = rotate_and_store(pass, &remote.id, Some(secret), status).await?;
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
/// `deletionTimeout` (or until the force-delete annotation). When the client cannot be
/// deleted, its Secret is kept (released), since its credentials still work.
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
    let mut keep_secret = app.spec.deletion_policy == DeletionPolicy::Orphan;
    if app.spec.deletion_policy == DeletionPolicy::Delete
        && let Err(error) = delete_remote(app, ctx, status).await
    {
        let since = app
            .meta()
            .deletion_timestamp
            .as_ref()
            .map(|t| Timestamp::now().duration_since(t.0))
            .unwrap_or_default();
        let timeout =
            SignedDuration::try_from(ctx.config.deletion_timeout).unwrap_or(SignedDuration::MAX);
        if !app.force_delete() && since < timeout {
            return Err(Error::DeletionBlocked(format!(
                "cannot delete the client at the provider: {error}; retrying until {}s after deletion, \
                 or annotate with oauth-operator.dev/force-delete=true to remove it without deleting the client",
                ctx.config.deletion_timeout.as_secs()
            )));
        }
        keep_secret = true;
        ctx.metrics.lifecycle_event("client_left_at_provider");
        ctx.event(
            app,
            EventType::Warning,
            "ClientLeftAtProvider",
            "Delete",
            format!(
                "gave up deleting the client at the provider ({error}); it was left there and Secret {} is kept",
                app.secret_name()
            ),
        )
        .await;
    }
    if let Some(secret) = existing {
        if keep_secret {
            release_secret(&secrets, &secret, app).await?;
        } else {
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
    Ok(Action::await_change())
}

async fn delete_remote(
    app: &OAuthApplication,
    ctx: &Context,
    status: &OAuthApplicationStatus,
) -> Result<()> {
    if status.provider_object_id.is_none() && status.pending_registration.is_none() {
        return Ok(()); // nothing was ever registered
    }
    let provider = resolve_provider(app, ctx).await?;
    if let Some(id) = &status.provider_object_id {
        provider.client.delete(id).await?;
        ctx.inventory.remove(&provider.key, id).await;
    }
    // An interrupted registration: delete what it may have created (the name carries our uid).
    if let Some(pending) = &status.pending_registration {
        let since = pending.started_at.0 - ADOPTION_CLOCK_SKEW;
        for c in provider.client.find_by_name(&pending.name).await? {
            if c.created_at.is_some_and(|t| t >= since) {
                provider.client.delete(&c.id).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_names_carry_the_uid_and_fit_clerks_limit() {
        let uid = "0b6c1c2e-6f2a-4c1e-9a3e-2f7a1d9b8c01";
        assert_eq!(
            registration_name("team/web", uid),
            format!("team/web [oauth-operator {uid}]")
        );
        let long = registration_name(&"é".repeat(256), uid);
        assert_eq!(long.chars().count(), 256);
        assert!(long.ends_with(&format!("[oauth-operator {uid}]")));
    }

    #[test]
    fn now_is_whole_seconds() {
        assert_eq!(now().subsec_nanosecond(), 0);
    }
}
