//! The `OAuthApplication` reconciler: resolve -> validate -> find remote -> create / update /
//! rotate -> Secret -> status. Deletion goes through a finalizer.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use secrecy::{ExposeSecret, SecretString};

use super::context::{Context, trigger_fingerprint};
use super::desired::desired_client;
use super::error::{Error, Result};
use super::plan::{
    CredentialFacts, CredentialsStep, IdentityFacts, IdentityStep, Lookup, NewSecret, Refusal,
    RegistrationFlow, SecretFact, credentials_step, identity_step, new_secret, next_rotation,
    registration_flow,
};
use super::resolve::{ResolvedProvider, provider_key, resolve_provider};
use super::secret::{
    CLIENT_ID_ANNOTATION, KeyNames, PREVIOUS_EXPIRES_ANNOTATION, PROVIDER_OBJECT_ID_ANNOTATION,
    RETIRING_CLIENT_ANNOTATION, RETIRING_DELETE_AT_ANNOTATION, ROTATED_AT_ANNOTATION,
    ROTATION_TOKEN_ANNOTATION, Written, annotate_retiring, build_secret, create_secret, data_value,
    drop_previous_secret, dry_run_write, heal_secret, is_owned_by, previous_secret_key,
    put_client_secret, reconcile_metadata, release_secret, write_rotated_secret,
};
use super::staging::{Staged, Staging};
use super::status::StatusWriter;
use crate::api::conditions::{
    DRIFTED, READY, RECONCILING, STALLED, new_condition, remove_condition, set_condition,
};
use crate::api::{
    ClientType, DeletionPolicy, DriftPolicy, OAuthApplication, OAuthApplicationStatus,
    PendingRegistration, RecordedSecretKeys, RotationStrategyKind,
};
use crate::providers::{
    DesiredClient, DriftSource, GIVEN_OWNER, Identity, IssuedClient, OwnerMarker, ProviderError,
    Registration, RemoteClient, Rotation, SecretSource, generate_secret,
};
use crate::telemetry::{ErrorLabels, ReconcileLabels};

pub const FINALIZER: &str = "oauth-operator.dev/cleanup";
const KIND: &str = "OAuthApplication";

/// The owner marker a backend carries: the application's uid, or, for a client registered
/// with given credentials, [`GIVEN_OWNER`] (it belongs to whoever holds its secret).
pub(super) fn owner_uid(app: &OAuthApplication) -> &str {
    if app.spec.credentials_from.is_some() {
        return GIVEN_OWNER;
    }
    app.metadata.uid.as_deref().unwrap_or_default()
}

/// A client whose owner marker names another application is never ours to change.
pub(super) fn check_owner(app: &OAuthApplication, remote: &RemoteClient) -> Result<()> {
    if remote.owner_uid.as_deref() == Some(owner_uid(app)) {
        return Ok(());
    }
    Err(Error::Provider(ProviderError::Rejected {
        operation: "get",
        status: 409,
        message: format!(
            "client {} exists at the provider and belongs to someone else (its owner marker names another application); \
             it is left alone",
            remote.client_id
        ),
    }))
}

/// Now, to the second: what `Time` serializes, so comparing status never sees sub-second noise.
pub(super) fn now() -> Timestamp {
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
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let namespace = app.namespace().unwrap_or_default();
    // The application and its Secret are as the last successful pass left them (this is its
    // own status write coming back, or a relist): nothing to do before the time it asked for.
    if let Some(left) = ctx.versions.unchanged_since_settled(
        &obj_ref,
        &uid,
        app.resource_version().as_deref(),
        ctx.caches
            .owned_secret_version(&namespace, &app.secret_name())
            .as_deref(),
    ) {
        return Ok(Action::requeue(left));
    }
    tracing::debug!(
        app = %obj_ref,
        version = app.resource_version().unwrap_or_default(),
        secret_version = ctx
            .caches
            .owned_secret_version(&namespace, &app.secret_name())
            .unwrap_or_default(),
        "pass"
    );
    // Only this pass's own end settles the application again (a failure must be retried).
    let began = ctx.versions.begin(&obj_ref, &uid);
    let start = Instant::now();
    let api: Api<OAuthApplication> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut app = app;
    if app.metadata.deletion_timestamp.is_none() && !app.finalizers().iter().any(|f| f == FINALIZER)
    {
        match add_finalizer(&api, &app, &ctx).await {
            Ok(Some(added)) => app = Arc::new(added),
            Ok(None) => {
                ctx.versions.forget(&obj_ref);
                return Ok(Action::await_change());
            }
            Err(e) => return Err(kube::runtime::finalizer::Error::AddFinalizer(e)),
        }
    }
    let result = finalizer(&api, FINALIZER, app, |event| async {
        match event {
            Finalizer::Apply(app) => report(&api, &app, &ctx, false, began).await,
            Finalizer::Cleanup(app) => report(&api, &app, &ctx, true, began).await,
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

/// Adds the finalizer before anything is registered, and hands back the application as the
/// apiserver then holds it, so that the same pass goes on with it (no second pass, no read).
/// The patch carries the `resourceVersion` it was made from: a watched copy that lags behind
/// (a finalizer someone else added meanwhile, which a merge patch would drop) is refused
/// with a conflict, and then the live object is read and the patch made once more from it.
/// `Ok(None)`: the application is gone.
async fn add_finalizer(
    api: &Api<OAuthApplication>,
    app: &OAuthApplication,
    ctx: &Context,
) -> std::result::Result<Option<OAuthApplication>, kube::Error> {
    let name = app.name_any();
    let key = ObjectRef::from_obj(app);
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let mut seen = app.clone();
    for attempt in 0..2 {
        if seen.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(Some(seen));
        }
        if seen.metadata.deletion_timestamp.is_some() {
            // Deleted before it was ever registered: nothing to clean up, nothing to add.
            return Ok(None);
        }
        let mut finalizers = seen.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let patch = serde_json::json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": seen.resource_version(),
            }
        });
        ctx.versions.note(&key, &uid, None);
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(added) => {
                ctx.versions.note(&key, &uid, added.resource_version());
                return Ok(Some(added));
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 => {
                match api.get_opt(&name).await? {
                    Some(live) if live.metadata.uid == app.metadata.uid => seen = live,
                    _ => return Ok(None),
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(seen))
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
    began: u64,
) -> Result<Action> {
    // Pending registrations, ids and rotation tokens must never come from a copy that may
    // predate our own last write: the watched copy only if it is at the version this process
    // last read or wrote (see `versions`), else a quorum read.
    let obj_ref = ObjectRef::from_obj(cached);
    let uid = cached.metadata.uid.clone().unwrap_or_default();
    let app = if ctx
        .versions
        .is_current(&obj_ref, &uid, cached.resource_version().as_deref())
    {
        cached.clone()
    } else {
        let Some(app) = api.get_opt(&cached.name_any()).await? else {
            ctx.versions.forget(&obj_ref);
            return Ok(Action::await_change());
        };
        if app.metadata.uid != cached.metadata.uid {
            // Deleted and created again under the same name: this event is about the old one.
            return Ok(Action::await_change());
        }
        ctx.versions.note(&obj_ref, &uid, app.resource_version());
        app
    };
    let app = &app;
    let mut status = app.status.clone().unwrap_or_default();
    let mut writer = StatusWriter::new(api, app, &ctx.versions, began);
    let result = if deleting {
        let done = cleanup(app, ctx, &mut status).await;
        if done.is_ok() {
            // The finalizer goes next, and the object with it.
            ctx.versions.forget(&obj_ref);
        }
        done
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
        // kstatus: the status describes this generation (which failed); `syncedGeneration`
        // keeps the one last applied at the provider.
        status.observed_generation = app.metadata.generation;
        set_condition(
            &mut status.conditions,
            new_condition(READY, false, reason, &message, app.metadata.generation),
        );
        let (on, off) = if error.stalls() {
            (STALLED, RECONCILING)
        } else {
            (RECONCILING, STALLED)
        };
        set_condition(
            &mut status.conditions,
            new_condition(on, true, reason, &message, app.metadata.generation),
        );
        remove_condition(&mut status.conditions, off);
        if let Err(e) = writer.write(&status).await {
            warn!(app = %obj_ref, error = %e, "failed to write failure status");
        }
        ctx.event(app, EventType::Warning, reason, "Reconcile", message)
            .await;
    }
    result
}

/// What the plan sees of our Secret (see [`SecretFact`]).
fn secret_fact(secret: Option<&Secret>, keys: &KeyNames) -> SecretFact {
    let Some(secret) = secret else {
        return SecretFact::Missing;
    };
    SecretFact::Present {
        written_for: secret.annotations().get(CLIENT_ID_ANNOTATION).cloned(),
        data_client_id: data_value(secret, &keys.client_id),
        has_secret: data_value(secret, &keys.client_secret).is_some(),
    }
}

/// What every step of one pass over one application works with.
#[derive(Clone, Copy)]
pub(super) struct Pass<'a> {
    pub(super) app: &'a OAuthApplication,
    pub(super) ctx: &'a Context,
    pub(super) provider: &'a ResolvedProvider,
    pub(super) desired: &'a DesiredClient,
    pub(super) secrets: &'a Api<Secret>,
    pub(super) staging: &'a Staging,
    /// The current `oauth-operator.dev/rotate` token: credentials issued in this pass answer it.
    pub(super) rotate_token: Option<&'a str>,
}

impl Pass<'_> {
    fn crash_point(&self, point: &str) {
        crate::fault::crash_point(&self.ctx.config.faults, point);
    }
}

/// Credentials in hand: issued in this pass, or staged by an earlier one.
struct InHand {
    client_secret: Option<SecretString>,
    /// Held in the operator's namespace until the Secret has them.
    staged: bool,
    /// The rotation request they answer.
    rotation_token: Option<String>,
    /// Issued by a rotation (the previous secret no longer works, unless:)
    rotated: bool,
    /// With `rotation.gracePeriod`: until when the server still accepts the secret this one
    /// replaced.
    previous_until: Option<Timestamp>,
    /// The Secret already holds them, at this `resourceVersion`: written before the client
    /// was created (an operator-chosen secret), so there is nothing left to deliver.
    in_secret: Option<String>,
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
    if provider.deleting {
        // Its in-use finalizer waits for its applications to delete their clients; nothing
        // new may start against it meanwhile.
        return Err(Error::ProviderNotFound(format!(
            "{} is being deleted; it serves only the deletion of its applications' clients",
            provider.key
        )));
    }
    // 2. desired client (pure) and what the backend can represent
    let mut desired = desired_client(app)?;
    provider
        .client
        .check_supported(&desired)
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    let caps = rotation_capabilities(app, &provider)?;
    let grace = desired.rotation_grace;
    if !caps.grace_period {
        // Here the overlap (if any) is the retiring client's, not a second secret's.
        desired.rotation_grace = None;
    }
    if grace.is_some() && !caps.grace_period && caps.rotation != Rotation::Recreate {
        return Err(Error::InvalidSpec(format!(
            "rotation.gracePeriod: {} ({}) invalidates a client's old secret the moment it rotates, so rotation there \
             is immediate; remove rotation.gracePeriod, or set rotation.strategy: NewClient to keep the old client \
             working for the grace period{}",
            provider.key,
            provider.client.name(),
            if new_client_supported(&provider) {
                ""
            } else {
                " (not at this backend)"
            }
        )));
    }
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
    let keys = KeyNames::for_app(app);
    if let Some(recorded) = &status.secret_keys
        && (recorded.client_id != keys.client_id || recorded.client_secret != keys.client_secret)
    {
        // The CRD refuses this change; an older installed CRD may not. Under new keys the
        // Secret would look empty, and "empty" must never turn into new credentials.
        return Err(Error::InvalidSpec(format!(
            "the Secret keys cannot change (client id {:?}, client secret {:?} were written): set spec.secret.keys back, \
             or create a new OAuthApplication",
            recorded.client_id, recorded.client_secret
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
    let staging = Staging::new(
        ctx.client.clone(),
        &ctx.config.operator_namespace,
        app,
        &provider.key,
    );
    let rotate_token = app.rotate_token();
    let pass = Pass {
        app,
        ctx,
        provider: &provider,
        desired: &desired,
        secrets: &secrets,
        staging: &staging,
        rotate_token,
    };
    if let Some(from) = &app.spec.credentials_from {
        return super::given::apply_given(pass, writer, status, existing.as_ref(), from).await;
    }
    let rotation_requested = rotation_asked(rotate_token, status, existing.as_ref());
    if !rotation_requested && rotate_token.is_some() {
        status.last_rotation_token = rotate_token.map(str::to_string);
    }
    let secret = secret_fact(existing.as_ref(), &keys);
    // Scheduled rotation (`rotation.period`): due once the period, less this application's
    // offset, has passed since the last rotation. It asks for a new secret only; a client
    // that is gone is never replaced on a schedule (that takes a rotate token).
    let next_rotation_at = scheduled_rotation(app, status, existing.as_ref());
    let rotation_due = next_rotation_at.is_some_and(|t| t <= now());

    // 3. staged credentials: looked for only when an earlier pass may not have finished, so
    //    the steady state costs no read
    let settled = status.provider_object_id.is_some()
        && status.pending_registration.is_none()
        && status.credentials_in_flight_since.is_none()
        && !rotation_requested
        && !rotation_due
        && matches!(&secret, SecretFact::Present { written_for, .. } if *written_for == status.client_id);
    let mut staged = if settled { None } else { staging.load().await? };
    if let (Some(s), Some(id)) = (&staged, &status.provider_object_id)
        && *id != s.provider_object_id
    {
        // Staged for a client status no longer records: not this application's credentials.
        warn!(app = %ObjectRef::from_obj(app), "discarding staged credentials of another client");
        discard_void(&staging, &mut staged, status).await?;
    }

    // 4. which client is ours (plan, observe, repeat: a handful of steps at most)
    let mut facts = IdentityFacts {
        staged_unrecorded: staged.as_ref().is_some_and(|s| {
            status.provider_object_id.as_deref() != Some(s.provider_object_id.as_str())
                || status.pending_registration.is_some()
                || status.credentials_in_flight_since.is_none()
        }),
        recorded_id: status.provider_object_id.is_some(),
        remote: Lookup::NotYet,
        pending_registration: status.pending_registration.is_some(),
        secret: secret.clone(),
        from_secret: Lookup::NotYet,
        rotation_requested,
    };
    let mut remote = None;
    let mut in_hand = None;
    for _ in 0..8 {
        match identity_step(&facts) {
            IdentityStep::RecordStaged => {
                let s = staged.as_ref().ok_or_else(invariant)?;
                status.provider_object_id = Some(s.provider_object_id.clone());
                status.client_id = Some(s.client_id.clone());
                if s.pending_create {
                    // Staged before its create (a client replacing the current one, with an
                    // id and secret the operator chose): until the client is found the
                    // registration stays pending (repeating the create is idempotent) and the
                    // client it replaces retiring; the staged copy says so also when status
                    // was reset.
                    if status
                        .pending_registration
                        .as_ref()
                        .is_none_or(|p| p.name != s.client_id)
                    {
                        status.pending_registration = Some(Box::new(PendingRegistration {
                            name: s.client_id.clone(),
                            started_at: Time(now()),
                            unanswered_at: None,
                        }));
                    }
                    if status.retiring_client_id.is_none() {
                        status.retiring_client_id = s.replaces.clone();
                    }
                } else {
                    status.pending_registration = None;
                }
                status.credentials_in_flight_since = Some(Time(now()));
                writer.write(status).await?;
                if !s.pending_create {
                    ctx.event(
                        app,
                        EventType::Normal,
                        "CredentialsResumed",
                        "Register",
                        format!(
                            "an interrupted pass left new credentials of client {} staged; recorded the client and writing them to Secret {secret_name}",
                            s.client_id
                        ),
                    )
                    .await;
                }
                facts.staged_unrecorded = false;
                facts.recorded_id = true;
                facts.pending_registration = s.pending_create;
                facts.remote = Lookup::NotYet;
            }
            IdentityStep::Sync => {
                let id = status.provider_object_id.clone().ok_or_else(invariant)?;
                remote = sync_remote(pass, status, &id).await?;
                facts.remote = if remote.is_some() {
                    Lookup::Present
                } else {
                    Lookup::Absent
                };
            }
            IdentityStep::Known => break,
            IdentityStep::Recreate => {
                let id = status.provider_object_id.take().unwrap_or_default();
                status.client_id = None;
                let note = format!(
                    "client {id} no longer exists at {}; registering a new one (rotation {:?}) and replacing the credentials in Secret {secret_name}",
                    provider.key,
                    rotate_token.unwrap_or_default()
                );
                ctx.event(app, EventType::Warning, "ClientRecreated", "Register", note)
                    .await;
                ctx.metrics.lifecycle_event("client_recreated");
                discard_void(&staging, &mut staged, status).await?;
                let (client, hand) = register(pass, writer, status, existing.as_ref()).await?;
                (remote, in_hand) = (Some(client), Some(hand));
                break;
            }
            IdentityStep::ResolvePending => {
                let (client, hand) =
                    resolve_pending(pass, writer, status, existing.as_ref()).await?;
                (remote, in_hand) = (Some(client), Some(hand));
                break;
            }
            IdentityStep::LookUpFromSecret => {
                let found = match existing.as_ref() {
                    Some(s) => look_up_from_secret(pass, writer, status, s, &keys).await?,
                    None => None,
                };
                facts.from_secret = if found.is_some() {
                    facts.recorded_id = true;
                    facts.remote = Lookup::Present;
                    Lookup::Present
                } else {
                    Lookup::Absent
                };
                remote = found;
            }
            IdentityStep::Register => {
                let (client, hand) = register(pass, writer, status, existing.as_ref()).await?;
                (remote, in_hand) = (Some(client), Some(hand));
                break;
            }
            // Staged credentials stay: the provider may just point elsewhere for now.
            IdentityStep::Refuse(refusal) => {
                return Err(refuse(refusal, status, &provider.key, &secret_name));
            }
        }
    }
    let mut remote = remote.ok_or_else(invariant)?;
    if in_hand.is_none()
        && let Some(s) = staged.take()
    {
        if s.provider_object_id == remote.id {
            if provider.client.capabilities().rotation == Rotation::OperatorSets {
                // The pass that staged it may have died before the server had it: set it
                // (again; setting the same secret twice changes nothing).
                provider
                    .client
                    .set_secret(&remote.id, &desired, owner_uid(app), &s.client_secret)
                    .await?;
            }
            in_hand = Some(InHand {
                in_secret: None,
                client_secret: Some(s.client_secret),
                staged: true,
                rotation_token: s.rotation_token,
                // A rotation with an overlap: the server says until when.
                previous_until: if s.rotated {
                    fresh_previous_until(pass, &remote.id).await?
                } else {
                    None
                },
                rotated: s.rotated,
            });
        } else {
            // Issued for a client that is no longer this application's.
            staged = Some(s);
            discard_void(&staging, &mut staged, status).await?;
        }
    }

    // 5. the Secret
    // Its version as written before the client was created, if it was.
    let written_before = in_hand.as_ref().and_then(|h| h.in_secret.clone());
    // Its version as this pass wrote it with credentials in hand, if it did.
    let mut written_now = None;
    let mut credential_facts = CredentialFacts {
        in_hand: in_hand.is_some(),
        unfinished_issue: in_hand.is_none() && status.credentials_in_flight_since.is_some(),
        secret,
        client_id: remote.client_id.clone(),
        public: remote.public,
        rotation_requested: rotation_requested || rotation_due,
    };
    let mut step = credentials_step(&credential_facts);
    // Set when an issue that did not finish is found to have happened at the server.
    let mut issued_at_server = false;
    if step == CredentialsStep::Verify {
        // A new secret was asked for and nothing was staged: did the provider issue one (the
        // Secret's is then dead) or not?
        let current = existing.as_ref().ok_or_else(invariant)?;
        if secret_still_works(pass, current, &keys, &remote).await? {
            status.credentials_in_flight_since = None;
            credential_facts.unfinished_issue = false;
            step = credentials_step(&credential_facts);
        } else {
            step = CredentialsStep::Recover;
            issued_at_server = true;
        }
    }
    match step {
        CredentialsStep::Verify => return Err(invariant()),
        CredentialsStep::Deliver => {
            let hand = in_hand.ok_or_else(invariant)?;
            written_now = deliver(pass, writer, status, existing.as_ref(), &remote, hand).await?;
        }
        CredentialsStep::Recover | CredentialsStep::Rotate => {
            let source = new_secret(
                step,
                &caps,
                remote.public,
                rotation_requested || rotation_due,
                issued_at_server,
            );
            let read_back = matches!(source, NewSecret::ReadBack { .. });
            let hand = match source {
                NewSecret::ReadBack { rotated } => {
                    read_secret_back(pass, existing.as_ref(), &remote, rotated).await?
                }
                NewSecret::None | NewSecret::ServerIssues | NewSecret::OperatorSets => {
                    issue(pass, writer, status, existing.as_ref(), &remote).await?
                }
                NewSecret::Recreate => {
                    // Only a new client has a new secret: the old one is recorded as retiring,
                    // a new one registered (pending protocol), and the old deleted once the
                    // Secret holds the new credentials (below). A client still retiring from
                    // an earlier replacement goes first: one slot, never overwritten.
                    let in_secret = existing
                        .as_ref()
                        .and_then(|s| s.annotations().get(PROVIDER_OBJECT_ID_ANNOTATION))
                        .cloned();
                    match status.retiring_client_id.clone() {
                        Some(earlier)
                            if earlier != remote.id && in_secret.as_ref() == Some(&earlier) =>
                        {
                            // The Secret still holds the client being retired: the one
                            // registered since never reached it, and its secret is gone. That
                            // one goes; the Secret's client stays until it is replaced.
                            retire(app, ctx, &provider, &remote.id).await?;
                        }
                        Some(earlier) if earlier != remote.id => {
                            let until = status
                                .retiring_client_delete_at
                                .as_ref()
                                .map(|t| t.0)
                                .filter(|t| *t > now());
                            if let Some(until) = until
                                && step == CredentialsStep::Rotate
                            {
                                // One client retires at a time: the next rotation waits.
                                return Err(Error::RegistrationPending(format!(
                                    "the rotation waits until client {earlier}, replaced by the previous rotation, is \
                                     deleted at {until} (rotation.gracePeriod)"
                                )));
                            }
                            if retire(app, ctx, &provider, &earlier).await?
                                && let Some(until) = until
                            {
                                ctx.event(
                                    app,
                                    EventType::Warning,
                                    "RetiringClientCutShort",
                                    "Recover",
                                    format!(
                                        "Secret {secret_name} lost its credentials while client {earlier} was retiring (until \
                                         {until}); deleted it now to register a new client"
                                    ),
                                )
                                .await;
                            }
                            status.retiring_client_id = Some(remote.id.clone());
                        }
                        _ => status.retiring_client_id = Some(remote.id.clone()),
                    }
                    // Its grace period starts when the Secret has switched away from it.
                    status.retiring_client_delete_at = None;
                    let (client, hand) = register(pass, writer, status, existing.as_ref()).await?;
                    remote = client;
                    hand
                }
                NewSecret::Refuse => {
                    let why = if step == CredentialsStep::Rotate {
                        "a rotation was asked for".to_string()
                    } else {
                        format!("Secret {secret_name} lost the client secret")
                    };
                    return Err(Error::InvalidSpec(format!(
                        "{why}, and {} cannot issue a new secret for client {}: set rotationStrategy: Recreate on the \
                         provider to register a new client instead (its client id changes)",
                        provider.key, remote.client_id
                    )));
                }
            };
            written_now = deliver(pass, writer, status, existing.as_ref(), &remote, hand).await?;
            let (event, type_, reason, action, note) = if step == CredentialsStep::Rotate {
                (
                    "secret_rotated",
                    EventType::Normal,
                    "SecretRotated",
                    "Rotate",
                    format!(
                        "rotated the client secret of {} {}; Secret {secret_name} updated",
                        remote.client_id,
                        if rotation_requested {
                            "on request"
                        } else {
                            "on schedule (rotation.period)"
                        }
                    ),
                )
            } else {
                (
                    "secret_recovered",
                    EventType::Warning,
                    "SecretRecovered",
                    "Recover",
                    format!(
                        "Secret {secret_name} was missing or held another client's credentials; {} and wrote it",
                        if remote.public {
                            "recreated it (public client, no secret)"
                        } else if read_back {
                            "read the client's current secret back from the provider"
                        } else {
                            "issued a new client secret"
                        }
                    ),
                )
            };
            ctx.metrics.lifecycle_event(event);
            ctx.event(app, type_, reason, action, note).await;
        }
        CredentialsStep::Heal => {
            let current = existing.as_ref().ok_or_else(invariant)?;
            heal_secret(&secrets, current, app, &remote).await?;
            ctx.metrics.lifecycle_event("secret_healed");
            ctx.event(
                app,
                EventType::Warning,
                "SecretHealed",
                "Heal",
                format!(
                    "Secret {secret_name} had its client id changed; wrote {} back (the client secret was left as it is)",
                    remote.client_id
                ),
            )
            .await;
        }
        CredentialsStep::Keep => {
            if rotation_requested {
                // A public client has no secret to rotate: the request is answered as is.
                status.last_rotation_token = rotate_token.map(str::to_string);
            }
            if let Some(current) = &existing
                && reconcile_metadata(&secrets, current, app, &remote).await?
            {
                info!(app = %ObjectRef::from_obj(app), "updated Secret labels/annotations");
            }
            // A previous secret whose grace period is over goes from the Secret (and the
            // server): it no longer works. Status or, if status was lost, the Secret says when.
            // The Secret's own record first: status may lag a rotation whose status write
            // failed (or be lost), and is brought in line with it.
            let in_secret = existing
                .as_ref()
                .and_then(|s| previous_in_secret(s, &previous_secret_key(&keys)));
            if let Some(t) = in_secret {
                status.previous_secret_expires_at = Some(Time(t));
            }
            let previous_until =
                in_secret.or(status.previous_secret_expires_at.as_ref().map(|t| t.0));
            if let (Some(until), Some(current)) = (previous_until, &existing)
                && until <= now()
            {
                if drop_previous_secret(&secrets, current, app).await? {
                    ctx.event(
                        app,
                        EventType::Normal,
                        "PreviousSecretExpired",
                        "Rotate",
                        format!(
                            "the grace period of the previous client secret of {} ended at {until}; removed it from Secret {secret_name}",
                            remote.client_id
                        ),
                    )
                    .await;
                }
                // Only what the server itself no longer accepts.
                let server_done = remote.previous_secret_expires_at.is_none_or(|t| t <= now());
                if server_done
                    && let Err(e) = provider.client.forget_previous_secret(&remote.id).await
                {
                    // It no longer works there either; dropping it is tidiness, retried after
                    // the next rotation at the latest.
                    warn!(app = %ObjectRef::from_obj(app), error = %e, "could not drop the expired previous secret at the provider");
                }
                status.previous_secret_expires_at = None;
            }
        }
    }
    // A client still carrying its registration name gets its display name now that its id is
    // durable (a crash before this is finished by a later pass, by id).
    let uid = app.metadata.uid.as_deref().unwrap_or_default();
    let remote = if remote.name == registration_name(&desired.name, uid) {
        let named = provider.client.update(&remote.id, &desired, uid).await?;
        ctx.inventory.upsert(&provider.server, &named);
        named
    } else {
        remote
    };

    // A client replaced by a new registration goes once the Secret holds the new one, and,
    // with `rotation.gracePeriod`, once that period has passed since (its credentials work
    // until then).
    if status.retiring_client_id.is_none()
        && let Some(current) = &existing
        && let Some(id) = current.annotations().get(RETIRING_CLIENT_ANNOTATION)
        && *id != remote.id
    {
        // Status was reset while a client was retiring: the Secret's record brings it back.
        status.retiring_client_id = Some(id.clone());
        status.retiring_client_delete_at = current
            .annotations()
            .get(RETIRING_DELETE_AT_ANNOTATION)
            .and_then(|t| t.parse().ok())
            .map(Time);
    }
    if let Some(old) = status.retiring_client_id.clone() {
        if old != remote.id {
            let delete_at = match &status.retiring_client_delete_at {
                Some(t) => t.0,
                None => {
                    let at = now()
                        .checked_add(SignedDuration::from_secs(
                            i64::try_from(grace.unwrap_or(0)).unwrap_or(i64::MAX),
                        ))
                        .unwrap_or_else(|_| now());
                    status.retiring_client_delete_at = Some(Time(at));
                    if grace.is_some() {
                        annotate_retiring(&secrets, &secret_name, Some((&old, &at.to_string())))
                            .await?;
                    }
                    let why = if caps.rotation == provider.client.capabilities().rotation {
                        format!("{} cannot rotate a secret", provider.key)
                    } else {
                        "rotation.strategy: NewClient".to_string()
                    };
                    let when = if grace.is_some() {
                        format!("keeps working until {at} (rotation.gracePeriod), then is deleted")
                    } else {
                        "is deleted now".to_string()
                    };
                    ctx.event(
                        app,
                        EventType::Normal,
                        "ClientReplaced",
                        "Rotate",
                        format!(
                            "{why}: registered client {} with new credentials and wrote them to Secret {secret_name}; the old client {old} {when} (the client id changed)",
                            remote.client_id
                        ),
                    )
                    .await;
                    at
                }
            };
            if delete_at <= now() {
                let deleted = retire(app, ctx, &provider, &old).await?;
                if deleted && grace.is_some() {
                    ctx.event(
                        app,
                        EventType::Normal,
                        "RetiredClientDeleted",
                        "Rotate",
                        format!(
                            "the grace period of client {old} ended: deleted it at {}",
                            provider.key
                        ),
                    )
                    .await;
                }
                if existing
                    .as_ref()
                    .is_some_and(|s| s.annotations().contains_key(RETIRING_CLIENT_ANNOTATION))
                    || grace.is_some()
                {
                    annotate_retiring(&secrets, &secret_name, None).await?;
                }
                status.retiring_client_id = None;
                status.retiring_client_delete_at = None;
            }
        } else {
            status.retiring_client_id = None;
            status.retiring_client_delete_at = None;
        }
    }

    // 6. status
    status.client_id = Some(remote.client_id.clone());
    status.provider_object_id = Some(remote.id.clone());
    status.secret_name = Some(secret_name.clone());
    status.secret_keys = Some(RecordedSecretKeys {
        client_id: keys.client_id.clone(),
        client_secret: keys.client_secret.clone(),
    });
    status.endpoints = Some(remote.endpoints.clone());
    status.pending_registration = None;
    // After a rotation in this pass the next one counts from it.
    let next_rotation_at = scheduled_rotation(app, status, None);
    status.next_rotation_at = next_rotation_at.map(Time);
    status.observed_generation = app.metadata.generation;
    status.synced_generation = app.metadata.generation;
    remove_condition(&mut status.conditions, RECONCILING);
    remove_condition(&mut status.conditions, STALLED);
    let message = format!(
        "client {} is registered at {} and its credentials are in Secret {secret_name}",
        remote.client_id, provider.key
    );
    set_condition(
        &mut status.conditions,
        new_condition(READY, true, "Reconciled", message, app.metadata.generation),
    );
    writer.write(status).await?;
    let mut requeue = ctx.resync_delay();
    // Any later write of the Secret in this pass makes the watch show another version, and
    // then the next event runs a pass: a stale version here costs a pass, never a change.
    let secret_version = written_now
        .or(written_before)
        .or_else(|| existing.as_ref().and_then(|s| s.resource_version()));
    if let Some(until) = status
        .previous_secret_expires_at
        .iter()
        .chain(&status.retiring_client_delete_at)
        .map(|t| t.0)
        .min()
    {
        // Back when a grace period ends (a previous secret, a retiring client), to remove it.
        let left = std::time::Duration::try_from(now().duration_until(until)).unwrap_or_default();
        requeue = requeue.min(left + std::time::Duration::from_secs(1));
    }
    if let Some(at) = next_rotation_at {
        // Back when the rotation is due (a second late, so it is due by then).
        let until = std::time::Duration::try_from(now().duration_until(at)).unwrap_or_default();
        requeue = requeue.min(until + std::time::Duration::from_secs(1));
    }
    Ok(ctx.settled(app, writer, secret_version.as_deref(), requeue))
}

/// Whether a second client can be registered beside the current one (`rotation.strategy:
/// NewClient`): where the server chooses the client id (Clerk, RFC 7591), or where the
/// operator has a second id scheme for it (Hydra: `oauth-operator-<uid>-r<n>`).
fn new_client_supported(provider: &ResolvedProvider) -> bool {
    provider.client.capabilities().new_client
}

/// The backend's capabilities as this application rotates: `rotation.strategy: NewClient`
/// makes every new secret a new client.
fn rotation_capabilities(
    app: &OAuthApplication,
    provider: &ResolvedProvider,
) -> Result<crate::providers::Capabilities> {
    let mut caps = provider.client.capabilities();
    let strategy = app
        .spec
        .rotation
        .as_ref()
        .and_then(|r| r.strategy)
        .unwrap_or_default();
    if strategy == RotationStrategyKind::NewClient {
        if !new_client_supported(provider) {
            return Err(Error::InvalidSpec(format!(
                "rotation.strategy: NewClient is not supported by {} ({}): it cannot hold a second client for this \
                 application beside the current one{}",
                provider.key,
                provider.client.name(),
                if caps.grace_period {
                    "; this server keeps the previous secret itself: use rotation.gracePeriod with strategy InPlace"
                } else {
                    ""
                }
            )));
        }
        caps.rotation = Rotation::Recreate;
        // The overlap comes from the old client, not from a second secret.
        caps.grace_period = false;
    }
    Ok(caps)
}

/// When the next scheduled rotation is due (see [`next_rotation`]), for a confidential client
/// with `rotation.period`. The last rotation is read from status, else from the Secret's
/// annotation (status may have been reset), else the application's creation.
fn scheduled_rotation(
    app: &OAuthApplication,
    status: &OAuthApplicationStatus,
    secret: Option<&Secret>,
) -> Option<Timestamp> {
    if app.spec.client_type == ClientType::Public {
        return None;
    }
    let period: std::time::Duration = app.spec.rotation.as_ref()?.period?.into();
    let anchor = status
        .secret_rotated_at
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            secret?
                .annotations()
                .get(ROTATED_AT_ANNOTATION)?
                .parse::<Timestamp>()
                .ok()
        })
        .or_else(|| app.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(now);
    Some(next_rotation(
        anchor,
        period,
        app.metadata.uid.as_deref().unwrap_or_default(),
    ))
}

fn invariant() -> Error {
    Error::Internal("the reconcile plan reached a state it cannot be in".into())
}

fn refuse(
    refusal: Refusal,
    status: &OAuthApplicationStatus,
    provider: &str,
    secret_name: &str,
) -> Error {
    match refusal {
        Refusal::ClientGone => Error::ClientMissing(format!(
            "client {} no longer exists at {provider} (deleted there, or the provider now points at another instance); \
             the credentials in Secret {secret_name} are left as they are: set a new oauth-operator.dev/rotate \
             token to register a new client and replace them",
            status.provider_object_id.as_deref().unwrap_or_default()
        )),
        Refusal::SecretWithoutClient => Error::ClientMissing(format!(
            "Secret {secret_name} exists but status records no client, and the client the Secret names is not at \
             {provider} or does not accept its secret (was the status reset?); the credentials are left as they \
             are: set a new oauth-operator.dev/rotate token to register a new client and replace them"
        )),
    }
}

/// Drops staged credentials that can no longer be delivered (their client is gone). A failure
/// fails the pass: a stale copy must never outlive the decision that it is stale.
async fn discard_void(
    staging: &Staging,
    staged: &mut Option<Staged>,
    status: &mut OAuthApplicationStatus,
) -> Result<()> {
    if staged.take().is_some() {
        staging.discard().await?;
        status.credentials_in_flight_since = None;
    }
    Ok(())
}

/// Whether the Secret's client secret still authenticates as `remote` (after an issue that
/// did not finish).
async fn secret_still_works(
    pass: Pass<'_>,
    secret: &Secret,
    keys: &KeyNames,
    remote: &RemoteClient,
) -> Result<bool> {
    let Some(value) = data_value(secret, &keys.client_secret) else {
        return Ok(false);
    };
    if pass.provider.client.capabilities().secret_source == SecretSource::IssuedReadable {
        // The server's current secret decides: during a grace period a rotated-out secret
        // still authenticates, so a token would not tell whether the rotation happened.
        let current = pass.provider.client.read_secret(&remote.id).await?;
        return Ok(current.is_some_and(|c| c.expose_secret() == value));
    }
    Ok(pass
        .provider
        .client
        .proves_possession(remote, &SecretString::from(value))
        .await?)
}

/// With a grace period in place (Keycloak): until when the server accepts the secret a
/// rotation replaced, read fresh from the server (a listed snapshot may predate the rotation).
async fn fresh_previous_until(pass: Pass<'_>, id: &str) -> Result<Option<Timestamp>> {
    if pass.desired.rotation_grace.is_none() {
        return Ok(None);
    }
    Ok(pass
        .provider
        .client
        .get(id)
        .await?
        .previous_secret_expires_at)
}

/// Checks the existing client against the spec: a PATCH after a spec change, drift
/// correction or reporting otherwise. `Ok(None)`: the provider says the client does not exist.
pub(super) async fn sync_remote(
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
    // An id chosen before its create may be held by someone else: whoever holds it must be
    // this application, checked before anything is written to it.
    // Metadata: the server carries the uid; Unmarked: the operator's record of the
    // registration does (RFC 7591). Either way a client that names another owner is refused.
    let owner_marked = provider.client.capabilities().owner_marker != OwnerMarker::TaggedName;
    // Only `syncedGeneration` says what the provider has: `observedGeneration` also moves on
    // failures and while registering, so a client adopted after a spec change would otherwise
    // keep the old generation's settings. (An object written before `syncedGeneration`
    // existed gets one idempotent update.)
    let synced = status.synced_generation;
    let spec_changed = synced != app.metadata.generation;
    if spec_changed && owner_marked {
        match provider.client.get(id).await {
            Ok(remote) => check_owner(app, &remote)?,
            Err(ProviderError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    if spec_changed {
        // One write with every managed field; no (further) read needed.
        return match provider.client.update(id, desired, owner_uid(app)).await {
            Ok(remote) => {
                ctx.inventory.upsert(&provider.server, &remote);
                status.last_sync_time = Some(Time(now()));
                status.drifted_fields.clear();
                remove_condition(&mut status.conditions, DRIFTED);
                Ok(Some(remote))
            }
            Err(ProviderError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        };
    }
    // One list per server per resync where the backend lists; a GET per client otherwise.
    let from_snapshot = match provider.client.capabilities().drift {
        DriftSource::ListAll => {
            ctx.inventory
                .lookup(
                    &provider.server,
                    &provider.client,
                    id,
                    ctx.config.resync_interval,
                )
                .await?
        }
        DriftSource::GetEach => None,
    };
    let (remote, synced_at) = match from_snapshot {
        Some(found) => found,
        // Not in the snapshot (deleted, or created after it): confirm with one GET.
        None => match provider.client.get(id).await {
            Ok(remote) => {
                ctx.inventory.observe(&provider.server, &remote);
                (remote, now())
            }
            Err(ProviderError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    status.last_sync_time = Some(Time(synced_at));
    if owner_marked {
        check_owner(app, &remote)?;
    }
    let uid = app.metadata.uid.as_deref().unwrap_or_default();
    if remote.name == registration_name(&desired.name, uid) {
        // A registration that stopped before the rename: finish it whatever the drift policy.
        let named = provider.client.update(id, desired, owner_uid(app)).await?;
        ctx.inventory.upsert(&provider.server, &named);
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
            let corrected = match provider.client.update(id, desired, owner_uid(app)).await {
                Ok(c) => c,
                Err(ProviderError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            ctx.inventory.upsert(&provider.server, &corrected);
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
///   create call;
/// - the issued secret is staged in the operator's namespace the moment it exists, and the
///   client's id recorded in status before the Secret is written or the client renamed;
/// - after a crash before the id was recorded, the client is found by that unique name and
///   adopted (see [`resolve_pending`]), never created twice.
async fn register(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<(RemoteClient, InHand)> {
    if registration_flow(&pass.provider.client.capabilities()) != RegistrationFlow::Pending {
        return register_chosen(pass, writer, status, existing).await;
    }
    let Pass {
        app,
        ctx,
        provider,
        desired,
        secrets,
        ..
    } = pass;
    dry_run_write(secrets, app, existing).await?;
    // Whatever is staged belongs to an earlier issue that this pass has delivered or found
    // void: the slot must be empty before the provider hands out a new secret.
    pass.staging.discard().await?;
    let uid = app.metadata.uid.clone().unwrap_or_default();
    // The owner marker the backend offers carries the uid while the id is unknown.
    let name = match provider.client.capabilities().owner_marker {
        OwnerMarker::TaggedName => registration_name(&desired.name, &uid),
        OwnerMarker::Metadata | OwnerMarker::Unmarked => desired.name.clone(),
    };
    mark_registering(status, app, &provider.key, &name);
    status.provider_object_id = None;
    status.client_id = None;
    // Must be stored before the call: it is what makes a crash after the call recoverable.
    writer.write(status).await?;
    let tagged = DesiredClient {
        name,
        ..desired.clone()
    };
    let registration = Registration {
        owner_uid: &uid,
        client_id: None,
        client_secret: None,
        given: false,
    };
    let issued = match provider.client.create(&tagged, &registration).await {
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
    pass.crash_point("after-create");
    // A registration that replaces a client (a rotation by a new client) is a rotation to
    // consumers and to the schedule, also when a later pass delivers it from staging.
    let rotated = status.retiring_client_id.is_some();
    let hand = stage(pass, &issued.client, issued.client_secret, rotated).await;
    pass.crash_point("after-stage");
    record_id(app, writer, status, &issued.client, hand.staged).await?;
    pass.crash_point("after-record");
    ctx.metrics.lifecycle_event("client_registered");
    ctx.event(
        app,
        EventType::Normal,
        "Registered",
        "Register",
        format!(
            "registered client {} at {}; its credentials go to Secret {}",
            issued.client.client_id,
            provider.key,
            app.secret_name()
        ),
    )
    .await;
    Ok((issued.client, hand))
}

/// Registers a client whose id and secret the operator chooses (Hydra), crash-safe by order:
/// the id (derived from the uid) and a pending registration are recorded first, then the
/// Secret is written with the new secret, and only then the client is created. A repeat (after
/// a crash, or a lost answer) reuses the Secret's secret, and a create that finds the id taken
/// goes on only if the client there carries this application's uid.
///
/// A client that replaces the current one (`rotation.strategy: NewClient`; the current one is
/// then `status.retiringClientId`) gets the backend's next replacement id, and its secret is
/// staged in the operator's namespace instead of written to the Secret before the create: the
/// Secret keeps the current, working credentials until the new client exists, and is switched
/// by [`deliver`] after the create. A repeat reuses the id recorded as pending and the staged
/// secret.
async fn register_chosen(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<(RemoteClient, InHand)> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        secrets,
        ..
    } = pass;
    let uid = owner_uid(app);
    let first = provider
        .client
        .chosen_client_id(uid)
        .ok_or_else(invariant)?;
    let keys = KeyNames::for_app(app);
    let replacing = status.retiring_client_id.clone();
    let (id, object_id) = match &replacing {
        None => (
            first,
            provider
                .client
                .chosen_object_id(uid)
                .ok_or_else(invariant)?,
        ),
        Some(old) => {
            let next = |current: &str| {
                provider
                    .client
                    .replacement_client_id(uid, current)
                    .ok_or_else(invariant)
            };
            let id = match &status.pending_registration {
                // A replacement already under way chose its id: the same again.
                Some(p) if p.name != *old && p.name.starts_with(first.as_str()) => p.name.clone(),
                _ => {
                    // Never the client whose credentials the Secret holds: a create that met
                    // it would set a new secret on a client in use.
                    let in_secret = existing.and_then(|s| data_value(s, &keys.client_id));
                    let id = next(old)?;
                    if in_secret.as_deref() == Some(id.as_str()) {
                        next(&id)?
                    } else {
                        id
                    }
                }
            };
            (id.clone(), id)
        }
    };
    // Hydra: the operator makes the secret, and the Secret holds it before the server does.
    // Keycloak: the server makes it and keeps it readable, so it is read after the create.
    let generates =
        registration_flow(&provider.client.capabilities()) == RegistrationFlow::SecretFirst;
    let stage_first = generates && replacing.is_some() && !desired.public;
    // The secret an unfinished registration already wrote (staged, for a replacement), else a
    // new one. Never the Secret's own when a rotation asks for new credentials (a client that
    // is gone is registered anew only then): that is the secret being rotated out. The
    // Secret written below carries the token, so a repeat after a crash finds its new one.
    let rotation = rotation_asked(pass.rotate_token, status, existing);
    let held = if stage_first {
        pass.staging
            .load()
            .await?
            .filter(|s| s.provider_object_id == object_id && s.client_id == id)
            .map(|s| s.client_secret)
    } else {
        existing
            .filter(|_| !rotation)
            .filter(|s| data_value(s, &keys.client_id).as_deref() == Some(id.as_str()))
            .and_then(|s| data_value(s, &keys.client_secret))
            .map(SecretString::from)
    };
    let client_secret = if desired.public || !generates {
        None
    } else {
        Some(held.clone().unwrap_or_else(generate_secret))
    };
    // Whether the Secret can be written (admission, quota, RBAC) before anything is
    // registered. Not needed where the Secret is created before the client is: that create is
    // the check, and if it is refused, status is taken back to what it was (so that nothing
    // recorded for a registration that never started pins the Secret's name or keys).
    let taken_back = (generates && !stage_first && existing.is_none()).then(|| status.clone());
    if taken_back.is_none() {
        dry_run_write(secrets, app, existing).await?;
    }
    mark_registering(status, app, &provider.key, &id);
    let planned = RemoteClient {
        id: object_id.clone(),
        client_id: id.clone(),
        name: desired.name.clone(),
        redirect_uris: desired.redirect_uris.clone(),
        post_logout_redirect_uris: desired.post_logout_redirect_uris.clone(),
        scopes: desired.scopes.clone(),
        grant_types: desired.grant_types.clone(),
        public: desired.public,
        pkce_required: false,
        consent_screen: false,
        endpoints: provider.client.endpoints().unwrap_or_default().into(),
        created_at: None,
        owner_uid: Some(uid.to_string()),
        grace_period: None,
        previous_secret_expires_at: None,
    };
    // The id first: from here on status names the client, registered or not; the pending
    // record says it may not exist yet.
    status.provider_object_id = Some(object_id.clone());
    status.client_id = Some(id.clone());
    status.secret_name = Some(app.secret_name());
    status.secret_keys = Some(RecordedSecretKeys {
        client_id: keys.client_id.clone(),
        client_secret: keys.client_secret.clone(),
    });
    writer.write(status).await?;
    // The Secret's version once it holds these credentials (when this pass wrote it or found
    // them in it).
    let mut secret_version = None;
    if stage_first {
        // Then the staged copy: the secret exists in the cluster before the server knows it,
        // and the Secret still holds the client being replaced.
        if held.is_none() {
            pass.staging
                .store(&Staged {
                    client_id: id.clone(),
                    provider_object_id: object_id.clone(),
                    rotation_token: pass.rotate_token.map(str::to_string),
                    rotated: true,
                    pending_create: true,
                    replaces: replacing.clone(),
                    client_secret: client_secret.clone().ok_or_else(invariant)?,
                })
                .await?;
        }
        pass.crash_point("after-stage");
    } else {
        // Then the Secret: the secret exists in the cluster before the server knows it.
        let secret_holds_it = existing.is_some() && (held.is_some() || desired.public);
        secret_version = existing.and_then(|s| s.resource_version());
        if generates && !secret_holds_it {
            let stored = store_credentials(
                app,
                secrets,
                existing,
                &planned,
                Written {
                    client_secret: client_secret.as_ref(),
                    rotation_token: pass.rotate_token,
                    ..Written::default()
                },
            )
            .await;
            match stored {
                Ok(version) => secret_version = version,
                Err(e) => {
                    // Nothing was registered. Unless our Secret was written all the same (an
                    // answer lost, then the retries failed), status is taken back; the
                    // failure's status write records that. Kept when in doubt: the pending
                    // record makes the next pass repeat this registration.
                    if let Some(before) = taken_back
                        && let Ok(found) = secrets.get_opt(&app.secret_name()).await
                        && !found.as_ref().is_some_and(|s| is_owned_by(s, app))
                    {
                        *status = before;
                    }
                    return Err(e);
                }
            }
        }
        pass.crash_point("after-secret");
    }
    let registration = Registration {
        owner_uid: uid,
        client_id: Some(&id),
        client_secret: client_secret.as_ref(),
        given: false,
    };
    let issued = match provider.client.create(desired, &registration).await {
        Ok(issued) => issued,
        Err(e) => {
            if matches!(
                e,
                ProviderError::Unavailable {
                    outcome_unknown: true,
                    ..
                }
            ) && let Some(pending) = status.pending_registration.as_mut()
            {
                // The server may still commit it: a deletion must wait for that before it
                // looks (see `delete_remote`). A repeat is idempotent either way.
                pending.unanswered_at = Some(Time(now()));
            }
            return Err(e.into());
        }
    };
    pass.crash_point("after-create");
    status.pending_registration = None;
    ctx.metrics.lifecycle_event("client_registered");
    ctx.event(
        app,
        EventType::Normal,
        "Registered",
        "Register",
        format!(
            "registered client {} at {}{}; its credentials {} Secret {}",
            issued.client.client_id,
            provider.key,
            replacing
                .as_deref()
                .map(|old| format!(" to replace client {old}"))
                .unwrap_or_default(),
            if stage_first { "go to" } else { "are in" },
            app.secret_name()
        ),
    )
    .await;
    let client_secret = if generates {
        client_secret
    } else {
        issued.client_secret
    };
    Ok((
        issued.client,
        InHand {
            in_secret: if generates && !stage_first {
                secret_version
            } else {
                None
            },
            client_secret,
            staged: stage_first,
            rotation_token: pass.rotate_token.map(str::to_string),
            // A new client replacing one is a rotation to consumers and to the schedule.
            rotated: replacing.is_some(),
            previous_until: None,
        },
    ))
}

/// Whether `rotate_token` asks for new credentials not yet given: answered when status says
/// so, or the Secret does (status may have been reset).
fn rotation_asked(
    rotate_token: Option<&str>,
    status: &OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> bool {
    let answered_in_secret = existing
        .and_then(|s| s.annotations().get(ROTATION_TOKEN_ANNOTATION))
        .map(String::as_str);
    rotate_token.is_some()
        && rotate_token != status.last_rotation_token.as_deref()
        && rotate_token != answered_in_secret
}

/// Records that a create is about to be made (what makes a crash after it recoverable) and
/// says so in `Ready`.
fn mark_registering(
    status: &mut OAuthApplicationStatus,
    app: &OAuthApplication,
    provider: &str,
    name: &str,
) {
    status.pending_registration = Some(Box::new(PendingRegistration {
        name: name.to_string(),
        started_at: Time(now()),
        unanswered_at: None,
    }));
    // kstatus: this status describes this generation (in progress: `Reconciling=True`), so
    // Flux and `kstatus` read `InProgress`, never `Current` before the Secret exists.
    status.observed_generation = app.metadata.generation;
    let message = format!("registering the client at {provider}");
    set_condition(
        &mut status.conditions,
        new_condition(
            READY,
            false,
            "Registering",
            &message,
            app.metadata.generation,
        ),
    );
    set_condition(
        &mut status.conditions,
        new_condition(
            RECONCILING,
            true,
            "Registering",
            message,
            app.metadata.generation,
        ),
    );
    remove_condition(&mut status.conditions, STALLED);
}

/// The settle window (twice the provider timeout) while a create whose answer was lost may
/// still commit at the provider: `Some(window)` until it has passed since the last unanswered
/// call (or the start of the registration).
fn may_still_commit(ctx: &Context, pending: &PendingRegistration) -> Option<std::time::Duration> {
    let settle = ctx.config.provider_timeout * 2;
    let since = pending
        .unanswered_at
        .as_ref()
        .unwrap_or(&pending.started_at);
    (now().duration_since(since.0)
        < SignedDuration::try_from(settle).unwrap_or(SignedDuration::MAX))
    .then_some(settle)
}

/// A registration whose result was never recorded (a crash, a lost answer): the clients that
/// carry this object's registration name are ours, however old (the create may have been
/// retried many times before the crash). The oldest is adopted with a new secret (the first
/// one was never stored), the others deleted. When there is none, a create whose outcome is
/// unknown may still commit: wait for it before registering again.
async fn resolve_pending(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
) -> Result<(RemoteClient, InHand)> {
    let Pass {
        app,
        ctx,
        provider,
        secrets,
        ..
    } = pass;
    if provider.client.capabilities().identity == Identity::OperatorChosen {
        // The id is known and the secret is in the Secret: registering again is idempotent.
        return register_chosen(pass, writer, status, existing).await;
    }
    let pending = status.pending_registration.clone().ok_or_else(invariant)?;
    dry_run_write(secrets, app, existing).await?;
    if provider.client.capabilities().owner_marker == OwnerMarker::Unmarked {
        return resolve_unmarked(pass, writer, status, existing, &pending).await;
    }
    let mut candidates = provider.client.find_by_owner_marker(&pending.name).await?;
    // The client a rotation is replacing, and the one the Secret holds credentials of, stay
    // until the Secret moves on (one whose rename never happened still carries the tag).
    let in_secret = existing
        .and_then(|s| s.annotations().get(PROVIDER_OBJECT_ID_ANNOTATION))
        .cloned();
    candidates.retain(|c| {
        status.retiring_client_id.as_ref() != Some(&c.id) && in_secret.as_ref() != Some(&c.id)
    });
    candidates.sort_by_key(|c| (c.created_at.is_none(), c.created_at));
    if let Some((orphan, duplicates)) = candidates.split_first() {
        for duplicate in duplicates {
            provider.client.delete(&duplicate.id).await?;
            ctx.inventory.remove(&provider.server, &duplicate.id);
            ctx.metrics.lifecycle_event("duplicate_deleted");
            warn!(id = %duplicate.id, "deleted a duplicate client left by an interrupted registration");
        }
        let issued = if orphan.public {
            IssuedClient {
                client: orphan.clone(),
                client_secret: None,
            }
        } else {
            pass.staging.discard().await?;
            provider.client.rotate_secret(&orphan.id).await?
        };
        pass.crash_point("after-rotate");
        let hand = stage(pass, &issued.client, issued.client_secret, !orphan.public).await;
        pass.crash_point("after-stage");
        record_id(app, writer, status, &issued.client, hand.staged).await?;
        pass.crash_point("after-record");
        ctx.metrics.lifecycle_event("client_adopted");
        ctx.event(
            app,
            EventType::Warning,
            "ClientAdopted",
            "Register",
            format!(
                "found client {} created by an interrupted registration; {} and writing Secret {}",
                issued.client.client_id,
                if orphan.public {
                    "a public client has no secret"
                } else {
                    "rotated its secret (the first one was never stored)"
                },
                app.secret_name()
            ),
        )
        .await;
        return Ok((issued.client, hand));
    }
    if let Some(settle) = may_still_commit(ctx, &pending) {
        return Err(Error::RegistrationPending(format!(
            "a create call at {} may still complete; waiting until {}s after it before registering again",
            provider.key,
            settle.as_secs()
        )));
    }
    register(pass, writer, status, existing).await
}

/// [`resolve_pending`] where the server has no owner marker (RFC 7591): the operator's own
/// access records name the clients registered for this application. One whose credentials
/// were staged is taken as is; the others cannot be used (their secret was shown once and
/// never stored) and are deleted. With none found, a registration whose answer never arrived
/// may have left a client nobody can reach: that is counted and reported, then registration
/// starts again.
async fn resolve_unmarked(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
    pending: &PendingRegistration,
) -> Result<(RemoteClient, InHand)> {
    let Pass {
        app, ctx, provider, ..
    } = pass;
    let mut candidates = provider.client.find_by_owner_marker(owner_uid(app)).await?;
    // The client a rotation is replacing, and the one the Secret holds credentials of, stay
    // until the Secret moves on.
    let in_secret = existing
        .and_then(|s| s.annotations().get(PROVIDER_OBJECT_ID_ANNOTATION))
        .cloned();
    candidates.retain(|c| {
        status.retiring_client_id.as_ref() != Some(&c.id) && in_secret.as_ref() != Some(&c.id)
    });
    let staged = pass.staging.load().await?;
    let keep = staged
        .as_ref()
        .and_then(|s| candidates.iter().position(|c| c.id == s.provider_object_id));
    if let (Some(i), Some(s)) = (keep, staged) {
        let client = candidates.swap_remove(i);
        for duplicate in &candidates {
            provider.client.delete(&duplicate.id).await?;
            ctx.metrics.lifecycle_event("duplicate_deleted");
        }
        record_id(app, writer, status, &client, true).await?;
        return Ok((
            client,
            InHand {
                in_secret: None,
                client_secret: Some(s.client_secret),
                staged: true,
                rotation_token: s.rotation_token,
                rotated: s.rotated,
                previous_until: None,
            },
        ));
    }
    for unusable in &candidates {
        provider.client.delete(&unusable.id).await?;
        ctx.metrics.lifecycle_event("duplicate_deleted");
        warn!(id = %unusable.id, "deleted a client whose registration was interrupted before its secret was stored");
    }
    // A client found is what this registration's create produced: nothing else is in flight.
    if candidates.is_empty()
        && let Some(settle) = may_still_commit(ctx, pending)
    {
        return Err(Error::RegistrationPending(format!(
            "a registration at {} may still complete; waiting until {}s after it before registering again",
            provider.key,
            settle.as_secs()
        )));
    }
    if candidates.is_empty() {
        ctx.metrics.lifecycle_event("registration_lost");
        ctx.event(
            app,
            EventType::Warning,
            "RegistrationLost",
            "Register",
            format!(
                "a registration at {} was interrupted before its answer was recorded; RFC 7591 offers no way to find the client it may have created (it cannot be used without its secret): registering again",
                provider.key
            ),
        )
        .await;
    }
    status.pending_registration = None;
    register(pass, writer, status, existing).await
}

/// Status lost its id while our Secret exists: the Secret's annotations name the client it was
/// written for. That client counts as ours only if the Secret's secret authenticates as it at
/// the provider: anyone who may edit Secrets in this namespace could write another
/// application's id into the annotations, but nobody without that client's secret passes this
/// check. A public client has no secret, so nothing proves it: it is not taken back.
async fn look_up_from_secret(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    secret: &Secret,
    keys: &KeyNames,
) -> Result<Option<RemoteClient>> {
    let Pass {
        app, ctx, provider, ..
    } = pass;
    if let Some(first) = provider.client.chosen_object_id(owner_uid(app)) {
        // The id is derived from the uid and the client carries the uid: that is the proof.
        // The Secret names the client it was written for, which after a rotation by a new
        // client is a replacement (`-r2`, ...): that one first, while the first may still be
        // retiring. Only ids of this application's scheme are looked at.
        let written_for = secret
            .annotations()
            .get(PROVIDER_OBJECT_ID_ANNOTATION)
            .filter(|id| **id != first && id.starts_with(first.as_str()))
            .cloned();
        for id in written_for.into_iter().chain([first]) {
            let remote = match provider.client.get(&id).await {
                Ok(remote) if remote.owner_uid.as_deref() == Some(owner_uid(app)) => remote,
                Ok(_) | Err(ProviderError::NotFound { .. } | ProviderError::Unsupported(_)) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            record_id(app, writer, status, &remote, false).await?;
            ctx.metrics.lifecycle_event("client_relinked");
            return Ok(Some(remote));
        }
        return Ok(None);
    }
    let note = secret.annotations();
    let (Some(object_id), Some(client_id)) = (
        note.get(PROVIDER_OBJECT_ID_ANNOTATION),
        note.get(CLIENT_ID_ANNOTATION),
    ) else {
        return Ok(None);
    };
    if data_value(secret, &keys.client_id).as_deref() != Some(client_id.as_str()) {
        return Ok(None);
    }
    let Some(client_secret) = data_value(secret, &keys.client_secret).map(SecretString::from)
    else {
        return Ok(None);
    };
    let remote = match provider.client.get(object_id).await {
        Ok(remote) => remote,
        Err(ProviderError::NotFound { .. }) => return Ok(None),
        // An id the backend refuses to put in a URL is not one of its clients.
        Err(ProviderError::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if remote.client_id != *client_id || remote.public {
        return Ok(None);
    }
    if !provider
        .client
        .proves_possession(&remote, &client_secret)
        .await?
    {
        warn!(app = %ObjectRef::from_obj(app), client = %remote.client_id,
            "the Secret names a client whose secret it does not hold; not taking it back");
        return Ok(None);
    }
    record_id(app, writer, status, &remote, false).await?;
    ctx.metrics.lifecycle_event("client_relinked");
    ctx.event(
        app,
        EventType::Warning,
        "ClientRelinked",
        "Register",
        format!(
            "status recorded no client; Secret {} holds working credentials of client {}, which is this application's again",
            app.secret_name(),
            remote.client_id
        ),
    )
    .await;
    Ok(Some(remote))
}

/// Stages freshly issued credentials in the operator's namespace. A failure is logged and the
/// pass goes on: the Secret may still be written directly, and if not, the next pass issues
/// again (by adoption, rotation or recovery).
async fn stage(
    pass: Pass<'_>,
    client: &RemoteClient,
    client_secret: Option<SecretString>,
    rotated: bool,
) -> InHand {
    let rotation_token = pass.rotate_token.map(str::to_string);
    let staged = match &client_secret {
        None => false,
        Some(value) => {
            let staged = Staged {
                client_id: client.client_id.clone(),
                provider_object_id: client.id.clone(),
                rotation_token: rotation_token.clone(),
                rotated,
                pending_create: false,
                replaces: None,
                client_secret: value.clone(),
            };
            match pass.staging.store(&staged).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "staging the new credentials failed; writing the Secret directly");
                    false
                }
            }
        }
    };
    InHand {
        in_secret: None,
        client_secret,
        staged,
        rotation_token,
        rotated,
        previous_until: None,
    }
}

/// Makes the client's id durable before anything depends on it: the Secret write, the rename
/// that removes the uid tag, the end of the pending registration.
async fn record_id(
    app: &OAuthApplication,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    client: &RemoteClient,
    staged: bool,
) -> Result<()> {
    status.provider_object_id = Some(client.id.clone());
    status.client_id = Some(client.client_id.clone());
    status.pending_registration = None;
    status.secret_name = Some(app.secret_name());
    let keys = KeyNames::for_app(app);
    status.secret_keys = Some(RecordedSecretKeys {
        client_id: keys.client_id,
        client_secret: keys.client_secret,
    });
    if staged {
        status.credentials_in_flight_since = Some(Time(now()));
    }
    writer.write(status).await
}

/// The client's current secret, read back from a server that keeps it readable (Keycloak):
/// nothing is issued, so nothing needs staging.
async fn read_secret_back(
    pass: Pass<'_>,
    existing: Option<&Secret>,
    remote: &RemoteClient,
    rotated: bool,
) -> Result<InHand> {
    dry_run_write(pass.secrets, pass.app, existing).await?;
    let value = pass.provider.client.read_secret(&remote.id).await?;
    if value.is_none() {
        return Err(Error::Provider(ProviderError::Unavailable {
            operation: "read_secret",
            outcome_unknown: false,
            message: format!(
                "the provider has no secret for confidential client {}",
                remote.client_id
            ),
        }));
    }
    // A rotation found to have happened unrecorded: its overlap, if any, still holds.
    let previous_until = if rotated {
        fresh_previous_until(pass, &remote.id).await?
    } else {
        None
    };
    Ok(InHand {
        in_secret: None,
        client_secret: value,
        staged: false,
        rotation_token: pass.rotate_token.map(str::to_string),
        rotated,
        previous_until,
    })
}

/// A new secret for a known client (rotation on request, or recovery of a lost Secret): the
/// Secret write is proven possible first, the secret staged the moment it exists and recorded
/// as staged before the Secret is written.
async fn issue(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
    remote: &RemoteClient,
) -> Result<InHand> {
    if remote.public {
        return Ok(InHand {
            in_secret: None,
            client_secret: None,
            staged: false,
            rotation_token: pass.rotate_token.map(str::to_string),
            rotated: false,
            previous_until: None,
        });
    }
    dry_run_write(pass.secrets, pass.app, existing).await?;
    pass.staging.discard().await?;
    if pass.provider.client.capabilities().rotation == Rotation::OperatorSets {
        // The operator makes the secret: staged (and recorded as in flight) before the server
        // hears of it, so no moment exists where only the server knows it.
        let value = generate_secret();
        let staged = Staged {
            client_id: remote.client_id.clone(),
            provider_object_id: remote.id.clone(),
            rotation_token: pass.rotate_token.map(str::to_string),
            rotated: true,
            pending_create: false,
            replaces: None,
            client_secret: value.clone(),
        };
        pass.staging.store(&staged).await?;
        status.credentials_in_flight_since = Some(Time(now()));
        writer.write(status).await?;
        pass.crash_point("after-stage");
        pass.provider
            .client
            .set_secret(&remote.id, pass.desired, owner_uid(pass.app), &value)
            .await?;
        pass.crash_point("after-rotate");
        return Ok(InHand {
            in_secret: None,
            client_secret: Some(value),
            staged: true,
            rotation_token: staged.rotation_token,
            rotated: true,
            previous_until: None,
        });
    }
    // Durable before the call: if the pass dies after the provider rotated (the Secret's
    // secret is then dead) and before the new one is staged, the next pass knows to check.
    status.credentials_in_flight_since = Some(Time(now()));
    writer.write(status).await?;
    let grace = pass.desired.rotation_grace;
    let rotation = match grace {
        Some(g) => {
            pass.provider
                .client
                .rotate_secret_with_grace(&remote.id, g)
                .await
        }
        None => pass.provider.client.rotate_secret(&remote.id).await,
    };
    let issued = match rotation {
        Ok(issued) => issued,
        Err(e) => {
            if !matches!(
                e,
                ProviderError::Unavailable {
                    outcome_unknown: true,
                    ..
                }
            ) {
                // A definite "no": nothing was rotated.
                status.credentials_in_flight_since = None;
            }
            return Err(e.into());
        }
    };
    pass.crash_point("after-rotate");
    let previous_until = grace.and(issued.client.previous_secret_expires_at);
    let mut hand = stage(pass, &issued.client, issued.client_secret, true).await;
    hand.previous_until = previous_until;
    pass.crash_point("after-stage");
    Ok(hand)
}

/// Writes credentials in hand into the Secret, then lets go of the staged copy. Writing the
/// value the Secret already holds is skipped, so delivering twice changes nothing. Returns the
/// Secret's version when this wrote it.
async fn deliver(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
    remote: &RemoteClient,
    hand: InHand,
) -> Result<Option<String>> {
    let Pass {
        app,
        secrets,
        staging,
        ..
    } = pass;
    let keys = KeyNames::for_app(app);
    let holds = |s: &Secret| {
        let get = |k: &str| {
            s.data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|v| v.0.as_slice())
        };
        get(&keys.client_id) == Some(remote.client_id.as_bytes())
            && get(&keys.client_secret)
                == hand
                    .client_secret
                    .as_ref()
                    .map(|v| v.expose_secret().as_bytes())
    };
    let rotated_at = hand.rotated.then(now);
    if hand.in_secret.is_some() && !hand.staged && status.credentials_in_flight_since.is_none() {
        // Written before the client was created, and status already names the client: the
        // pass's last status write records the rest (the Secret says it all meanwhile).
        if let Some(t) = rotated_at {
            status.secret_rotated_at = Some(Time(t));
        }
        status.last_rotation_token = hand.rotation_token;
        return Ok(hand.in_secret);
    }
    let previous_key = previous_secret_key(&keys);
    let mut written_version = None;
    if !existing.is_some_and(holds) {
        let at = rotated_at.map(|t| t.to_string());
        // With a grace period, the secret this one replaces stays in the Secret while the
        // server still accepts it.
        // Only a secret of this same client (an in-place rotation keeps the id).
        let replaced = existing
            .filter(|s| {
                data_value(s, &keys.client_id).as_deref() == Some(remote.client_id.as_str())
            })
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(&keys.client_secret))
            .filter(|old| {
                hand.client_secret
                    .as_ref()
                    .map(|v| v.expose_secret().as_bytes())
                    != Some(old.0.as_slice())
            });
        let previous = match (hand.rotated, hand.previous_until, replaced) {
            (true, Some(until), Some(old)) if until > now() => Some((old, until)),
            _ => None,
        };
        let until_text = previous.map(|(_, until)| until.to_string());
        written_version = store_credentials(
            app,
            secrets,
            existing,
            remote,
            Written {
                client_secret: hand.client_secret.as_ref(),
                rotated_at: at.as_deref(),
                rotation_token: hand.rotation_token.as_deref(),
                previous: previous
                    .zip(until_text.as_deref())
                    .map(|((old, _), until)| (old.0.as_slice(), until)),
            },
        )
        .await?;
        let cut_short = existing
            .and_then(|s| previous_in_secret(s, &previous_key))
            .filter(|t| *t > now() && hand.rotated);
        if let Some(was) = cut_short {
            // The server keeps one previous secret: the one before is dead now.
            pass.ctx
                .event(
                    app,
                    EventType::Warning,
                    "PreviousSecretCutShort",
                    "Rotate",
                    format!(
                        "a rotation during the grace period of the previous secret of {} (valid until {was}) ended it: \
                         the server keeps one previous secret, now the one just replaced",
                        remote.client_id
                    ),
                )
                .await;
        }
        status.previous_secret_expires_at = previous.map(|(_, until)| Time(until));
        if hand.rotated && pass.desired.rotation_grace.is_some() && hand.previous_until.is_none() {
            pass.ctx.metrics.lifecycle_event("grace_not_kept");
            pass.ctx
                .event(
                    app,
                    EventType::Warning,
                    "GraceNotKept",
                    "Rotate",
                    format!(
                        "{} rotated the client secret of {} without keeping the previous one valid (its client policy \
                         for rotation.gracePeriod did not apply): the old secret stopped working at once",
                        pass.provider.key, remote.client_id
                    ),
                )
                .await;
        }
    } else if let Some(current) = existing {
        // Written by an earlier pass that died before status said so: the Secret tells.
        status.previous_secret_expires_at = previous_in_secret(current, &previous_key).map(Time);
    }
    // Also when an earlier pass wrote the Secret and died before status said so: a scheduled
    // rotation must not be repeated for want of this record.
    if let Some(t) = rotated_at {
        status.secret_rotated_at = Some(Time(t));
    }
    pass.crash_point("after-secret");
    // What the Secret now answers is durable before the staged copy goes: a pass that then
    // finds no copy must not take the request as still open.
    status.last_rotation_token = hand.rotation_token;
    writer.write(status).await?;
    if hand.staged || status.credentials_in_flight_since.is_some() {
        staging.discard().await?;
    }
    status.credentials_in_flight_since = None;
    Ok(written_version)
}

/// Until when the previous secret the Secret keeps (under `previous_key`) is accepted, from
/// its annotation.
fn previous_in_secret(secret: &Secret, previous_key: &str) -> Option<Timestamp> {
    secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(previous_key))
        .then(|| secret.annotations().get(PREVIOUS_EXPIRES_ANNOTATION))
        .flatten()
        .and_then(|t| t.parse().ok())
}

/// Writes freshly issued credentials: a POST when there is no Secret, otherwise (our own
/// Secret) a patch of its data.
pub(super) async fn store_credentials(
    app: &OAuthApplication,
    secrets: &Api<Secret>,
    existing: Option<&Secret>,
    client: &RemoteClient,
    written: Written<'_>,
) -> Result<Option<String>> {
    let Written {
        client_secret,
        rotated_at,
        rotation_token,
        ..
    } = written;
    match existing {
        None => {
            let secret = build_secret(app, client, client_secret, rotated_at, rotation_token);
            // A few quick retries; if it never succeeds, the staged copy (or, without one, the
            // next pass) takes over.
            let mut attempt = 0;
            loop {
                match create_secret(secrets, &secret, app).await {
                    Ok(version) => return Ok(version),
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
            write_rotated_secret(secrets, app, client, &at, written).await
        }
    }
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
        // A server that will never delete it (RFC 7592 answering 405, no management access)
        // is not waited for.
        let never = matches!(
            &error,
            Error::Provider(
                ProviderError::Rejected { status: 405, .. } | ProviderError::Unsupported(_)
            )
        );
        if !app.force_delete() && since < timeout && !never {
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
    let reference = &app.spec.provider_ref;
    let staging = Staging::new(
        ctx.client.clone(),
        &ctx.config.operator_namespace,
        app,
        &provider_key(reference.kind, &namespace, &reference.name),
    );
    if let Some(secret) = existing {
        if keep_secret {
            // Credentials staged but never delivered are the client's only working ones: the
            // Secret that is kept gets them (only where it names that client: a replacement's,
            // staged before its create, never reach the Secret of the client it replaces).
            let secret = match staging.load().await? {
                Some(staged) => {
                    put_client_secret(
                        &secrets,
                        secret,
                        app,
                        &staged.client_id,
                        &staged.client_secret,
                    )
                    .await?
                }
                None => secret,
            };
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
    staging.discard().await?;
    Ok(Action::await_change())
}

/// Deletes a client replaced by a new registration. Only one this application owns (by the
/// owner marker) is touched; one the server will never delete (no management access, 401,
/// 405) is reported and let go rather than retried forever.
/// Returns whether it was deleted now (not: gone before, another owner's, or left at a server
/// that will not delete it).
async fn retire(
    app: &OAuthApplication,
    ctx: &Context,
    provider: &ResolvedProvider,
    old: &str,
) -> Result<bool> {
    let owned = match provider.client.get(old).await {
        Ok(remote) => remote.owner_uid.is_none_or(|o| o == owner_uid(app)),
        Err(ProviderError::NotFound { .. } | ProviderError::Unsupported(_)) => {
            ctx.inventory.remove(&provider.server, old);
            return Ok(false); // deleted before
        }
        Err(e @ (ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. })) => {
            left_at_provider(app, ctx, old, &e).await;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    if !owned {
        warn!(client = %old, "the replaced client names another owner: left alone");
        return Ok(false);
    }
    let deleted = match provider.client.delete(old).await {
        Ok(()) => {
            ctx.metrics.lifecycle_event("client_replaced");
            true
        }
        Err(e @ (ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. })) => {
            left_at_provider(app, ctx, old, &e).await;
            false
        }
        Err(e) => return Err(e.into()),
    };
    ctx.inventory.remove(&provider.server, old);
    Ok(deleted)
}

async fn left_at_provider(app: &OAuthApplication, ctx: &Context, old: &str, e: &ProviderError) {
    ctx.metrics.lifecycle_event("client_left_at_provider");
    ctx.event(
        app,
        EventType::Warning,
        "ClientLeftAtProvider",
        "Delete",
        format!(
            "the replaced client {old} could not be deleted ({e}); it was left at the provider: delete it there"
        ),
    )
    .await;
}

/// A client with given credentials whose current secret this application no longer holds:
/// someone else's now, left in place.
async fn left_at_provider_given(app: &OAuthApplication, ctx: &Context, client_id: &str) {
    ctx.metrics.lifecycle_event("client_left_at_provider");
    ctx.event(
        app,
        EventType::Warning,
        "ClientLeftAtProvider",
        "Delete",
        format!(
            "client {client_id} was not deleted: neither the Secret spec.credentialsFrom names nor this application's \
             own Secret holds its current secret (it was rotated elsewhere, or the Secret is gone), so it is not this \
             application's to delete"
        ),
    )
    .await;
}

async fn delete_remote(
    app: &OAuthApplication,
    ctx: &Context,
    status: &OAuthApplicationStatus,
) -> Result<()> {
    if status.provider_object_id.is_none()
        && status.pending_registration.is_none()
        && status.retiring_client_id.is_none()
    {
        return Ok(()); // nothing was ever registered
    }
    let provider = resolve_provider(app, ctx).await?;
    let caps = provider.client.capabilities();
    if caps.identity == Identity::OperatorChosen
        && let Some(pending) = status
            .pending_registration
            .as_ref()
            .filter(|p| p.unanswered_at.is_some())
        && let Some(settle) = may_still_commit(ctx, pending)
    {
        // A create whose answer was lost may still commit: looking now could miss the client
        // and leave it behind, held by nobody.
        return Err(Error::RegistrationPending(format!(
            "a create call at {} may still complete; deleting client {} once {}s have passed",
            provider.key,
            pending.name,
            settle.as_secs()
        )));
    }
    if let Some(id) = &status.provider_object_id {
        let ours = match caps.owner_marker {
            // An id the operator chose may have been taken by someone else before we could
            // create it: delete only a client that carries this application's uid.
            OwnerMarker::Metadata => match provider.client.get(id).await {
                Ok(remote) if remote.owner_uid.as_deref() == Some(owner_uid(app)) => {
                    let secrets: Api<Secret> =
                        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
                    let holds = super::given::may_delete(app, &provider, &remote, &secrets).await?;
                    if !holds {
                        left_at_provider_given(app, ctx, &remote.client_id).await;
                    }
                    holds
                }
                Ok(_) | Err(ProviderError::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            },
            // The operator's record names the owner; no record: deleted before (the delete
            // below is then a no-op).
            OwnerMarker::Unmarked => match provider.client.get(id).await {
                Ok(remote) => remote.owner_uid.as_deref() == Some(owner_uid(app)),
                Err(ProviderError::NotFound { .. } | ProviderError::Unsupported(_)) => true,
                Err(e) => return Err(e.into()),
            },
            OwnerMarker::TaggedName => true,
        };
        if ours {
            provider.client.delete(id).await?;
        }
        ctx.inventory.remove(&provider.server, id);
    }
    if let Some(old) = &status.retiring_client_id
        && status.provider_object_id.as_ref() != Some(old)
    {
        retire(app, ctx, &provider, old).await?;
    }
    if caps.identity == Identity::OperatorChosen {
        return Ok(());
    }
    // An interrupted registration: delete what it may have created (the name carries our uid),
    // once a create whose answer was lost can no longer commit late.
    if let Some(pending) = &status.pending_registration {
        if let Some(settle) = may_still_commit(ctx, pending) {
            return Err(Error::RegistrationPending(format!(
                "a create call at {} may still complete; deleting what it created once {}s have passed",
                provider.key,
                settle.as_secs()
            )));
        }
        let marker = match caps.owner_marker {
            OwnerMarker::Unmarked => owner_uid(app),
            _ => pending.name.as_str(),
        };
        for c in provider.client.find_by_owner_marker(marker).await? {
            provider.client.delete(&c.id).await?;
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
