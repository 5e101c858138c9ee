//! Shared state of the controllers: clients, recorder, metrics, provider clients, the
//! per-provider inventory used for drift detection, and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use rand::Rng;

use super::error::Error;
use super::events::Recorder;
pub use super::inventory::Inventory;
use crate::api::{OAuthApplication, RequestBudget};
use crate::leader::{Fence, LeaseConfig};
use crate::providers::{RequestBudgetLimiter, SharedBackend};
use crate::telemetry::Metrics;

/// Operator settings (from the command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// Where `ClusterOAuthProvider` credential Secrets live.
    pub operator_namespace: String,
    /// Restrict the operator to one namespace (`None`: the whole cluster).
    pub watch_namespace: Option<String>,
    /// How often every application is checked against its provider (drift detection).
    pub resync_interval: Duration,
    /// After how long a deletion that cannot reach the provider gives up and removes the
    /// finalizer anyway (the client is then left at the provider, with a Warning event).
    pub deletion_timeout: Duration,
    /// Timeout of every request to a provider.
    pub provider_timeout: Duration,
    /// Crash points (`OAUTH_OPERATOR_FAULT`, test builds only: see [`crate::fault`]).
    pub faults: Vec<String>,
    /// The Lease to hold before reconciling (`None`: leader election off, a single replica).
    pub leader: Option<LeaseConfig>,
    /// How many applications are reconciled at once (0: no limit).
    pub concurrency: u16,
    /// The request budget of a provider whose spec sets none (`None`: the backend's own,
    /// [`crate::api::RequestBudget::backend_default`]).
    pub default_request_budget: Option<crate::api::RequestBudget>,
    /// Special networks (loopback, private, link-local, ...) a namespaced provider may reach
    /// all the same (see [`crate::providers::egress`]).
    pub provider_allowed_networks: Vec<ipnet::IpNet>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            operator_namespace: "oauth-operator".into(),
            watch_namespace: None,
            resync_interval: Duration::from_secs(600),
            deletion_timeout: Duration::from_secs(600),
            provider_timeout: Duration::from_secs(30),
            faults: Vec::new(),
            leader: None,
            concurrency: 16,
            default_request_budget: None,
            provider_allowed_networks: Vec::new(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    /// Provider clients by provider key, rebuilt when the provider or its credential changes.
    pub providers: Mutex<HashMap<String, (u64, SharedBackend)>>,
    /// Per-provider list of remote clients, refreshed at most once per resync interval.
    pub inventory: Inventory,
    backoff: Mutex<HashMap<ObjectRef<OAuthApplication>, Backoff>>,
    /// Each application's versions as this process knows them (see [`super::versions`]).
    pub versions: super::versions::Versions,
    /// One request budget per server, kept while its effective settings are unchanged.
    budgets: ServerBudgets,
    /// What each provider last looked like to its applications (see [`ProviderSeen`]).
    provider_seen: Mutex<HashMap<String, ProviderSeen>>,
    /// Providers, namespaces and credential Secrets from watches (see [`super::cache`]).
    pub caches: super::cache::Caches,
}

/// The parts of a provider its applications depend on: the spec (by generation), whether it
/// is being deleted, and its `Ready` status. Anything else about it (its own status writes,
/// `observedGeneration`, a changed message, finalizers) is no reason to wake them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSeen {
    /// A provider deleted and created again under the same name is a new spec.
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub deleting: bool,
    pub ready: Option<String>,
}

/// What a provider event means for its applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderChange {
    /// Not seen before (a new provider, or the operator's first list): reconcile them.
    First,
    /// The spec changed (or it is another object of the same name): reconcile them now,
    /// past any backoff.
    Spec,
    /// Deleted, or no longer ready: reconcile them now, past any backoff.
    State,
    /// Became ready, nothing else changed: those that failed retry now, past any backoff (a
    /// fixed credential must not wait out minutes of it); those whose last pass succeeded have
    /// nothing to redo.
    BecameReady,
    /// Nothing they depend on.
    None,
}

impl ProviderChange {
    fn between(old: Option<&ProviderSeen>, now: &ProviderSeen) -> Self {
        match old {
            None => Self::First,
            Some(old) if old.generation != now.generation || old.uid != now.uid => Self::Spec,
            Some(old)
                if old != now
                    && old.deleting == now.deleting
                    && now.ready.as_deref() == Some("True") =>
            {
                Self::BecameReady
            }
            Some(old) if old != now => Self::State,
            Some(_) => Self::None,
        }
    }
}

/// One request budget per server (backend, base URL, credential), shared by every provider
/// that points at it: fifty providers holding one key share one budget.
pub struct ServerBudgets {
    map: Mutex<HashMap<String, ServerBudget>>,
    metrics: Arc<Metrics>,
    /// The leader fence every limiter hands to its writes.
    fence: Arc<Fence>,
}

impl ServerBudgets {
    pub fn new(metrics: Arc<Metrics>, fence: Arc<Fence>) -> Self {
        Self {
            map: Mutex::default(),
            metrics,
            fence,
        }
    }

    /// The limiter of `server`: built from the strictest of the budgets its providers ask for,
    /// the same one for as long as that stays. `label` names the server in metrics (never the
    /// credential).
    pub fn budget_for(
        &self,
        server: &str,
        label: &str,
        provider: &str,
        budget: &RequestBudget,
    ) -> Arc<RequestBudgetLimiter> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(server.to_string())
            .or_insert_with(|| ServerBudget {
                by_provider: HashMap::new(),
                effective: budget.clone(),
                limiter: Arc::new(
                    RequestBudgetLimiter::new(budget, label.to_string(), self.metrics.clone())
                        .fenced(self.fence.clone()),
                ),
            });
        entry
            .by_provider
            .insert(provider.to_string(), budget.clone());
        let strictest = entry
            .by_provider
            .values()
            .min_by(|a, b| stricter_first(a, b))
            .cloned()
            .unwrap_or_else(|| budget.clone());
        if strictest != entry.effective {
            // In place: the sends already made and a 429 pause still count, and every client
            // of this server keeps sharing the one limiter.
            entry.limiter.set_budget(&strictest);
            entry.effective = strictest;
        }
        entry.limiter.clone()
    }
}

/// The budget of one server: what each provider pointing at it asks for, and the limiter
/// built from the strictest of those.
struct ServerBudget {
    by_provider: HashMap<String, RequestBudget>,
    effective: RequestBudget,
    limiter: Arc<RequestBudgetLimiter>,
}

/// Orders budgets by rate (requests per second), the lower first; at equal rates the smaller
/// burst first.
fn stricter_first(a: &RequestBudget, b: &RequestBudget) -> std::cmp::Ordering {
    let rate = |x: &RequestBudget, y: &RequestBudget| {
        u64::from(x.requests) * u64::from(y.period_seconds.max(1))
    };
    rate(a, b)
        .cmp(&rate(b, a))
        .then(a.requests.cmp(&b.requests))
}

/// Per-object retry state after a failure.
struct Backoff {
    attempts: u32,
    not_before: Instant,
    /// What the object looked like when it failed (see [`trigger_fingerprint`]).
    fingerprint: u64,
}

/// Hash of what a user changes to ask for a new attempt: the spec (generation), annotations
/// (rotate, force-delete) and deletion. Status and Secret events do not change it, so they
/// cannot cut a backoff short.
pub fn trigger_fingerprint(app: &OAuthApplication) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut h);
    app.metadata.annotations.hash(&mut h);
    app.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

impl Context {
    /// `fence`: what a provider write must pass (see [`crate::leader`]).
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        config: Config,
        fence: Arc<Fence>,
        caches: super::cache::Caches,
    ) -> Self {
        let budgets = ServerBudgets::new(metrics.clone(), fence);
        Self {
            recorder: Recorder::new(
                client.clone(),
                "oauth-operator",
                std::env::var("POD_NAME").ok(),
            ),
            client,
            metrics,
            config,
            providers: Mutex::default(),
            inventory: Inventory::default(),
            backoff: Mutex::default(),
            versions: Default::default(),
            provider_seen: Mutex::default(),
            budgets,
            caches,
        }
    }

    /// Publishes an event; a failure to publish is logged, never fatal.
    pub async fn event(
        &self,
        app: &OAuthApplication,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        use kube::Resource;
        self.event_on(&app.object_ref(&()), type_, reason, action, note)
            .await;
    }

    /// [`Context::event`] for any object reference (e.g. an object that failed to deserialize).
    pub async fn event_on(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        mut note: String,
    ) {
        // The Events API limits a note to 1 kB.
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // Events are logged too (they are part of what the leak scan of the tests reads).
        tracing::info!(
            reason,
            action,
            note = event.note.as_deref().unwrap_or_default(),
            object = reference.name.as_deref().unwrap_or_default(),
            namespace = reference.namespace.as_deref().unwrap_or_default(),
            "event"
        );
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "failed to publish event");
        }
    }

    /// Delay before the next attempt after an error: `Retry-After` when the provider gave one,
    /// exponential backoff with jitter for transient errors, the resync interval for
    /// permanent ones. Until then, events that do not change the object's
    /// [`trigger_fingerprint`] are held back (see [`Context::gate`]).
    pub fn next_retry(
        &self,
        obj: &ObjectRef<OAuthApplication>,
        error: Option<&Error>,
        fingerprint: u64,
    ) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if self.versions.woken_during_pass(obj) {
            // What it depends on changed while the pass ran (a fixed credential, a provider
            // back): the wake's own trigger was held behind this pass and must not meet the
            // backoff this failure alone would earn.
            map.remove(obj);
            return jitter(Duration::from_millis(500));
        }
        let state = map.entry(obj.clone()).or_insert(Backoff {
            attempts: 0,
            not_before: Instant::now(),
            fingerprint,
        });
        let transient = error.is_none_or(Error::is_transient);
        let delay = if transient {
            state.attempts = state.attempts.saturating_add(1);
            jitter(
                error
                    .and_then(Error::retry_after)
                    .unwrap_or_else(|| backoff_delay(state.attempts)),
            )
        } else {
            state.attempts = 0;
            self.config.resync_interval
        };
        state.not_before = Instant::now() + delay;
        state.fingerprint = fingerprint;
        self.metrics
            .retry_delay_seconds
            .observe(delay.as_secs_f64());
        delay
    }

    /// While an object backs off, a reconcile triggered by something other than a change of
    /// spec, annotations or deletion is postponed: returns the time left.
    pub fn gate(&self, obj: &ObjectRef<OAuthApplication>, fingerprint: u64) -> Option<Duration> {
        let map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let state = map.get(obj)?;
        let left = state.not_before.checked_duration_since(Instant::now())?;
        (state.fingerprint == fingerprint && !left.is_zero()).then_some(left)
    }

    /// Records what a provider looks like now and says what changed since it was last seen.
    pub fn provider_changed(&self, key: &str, now: ProviderSeen) -> ProviderChange {
        let mut map = self.provider_seen.lock().unwrap_or_else(|p| p.into_inner());
        let old = map.insert(key.to_string(), now.clone());
        ProviderChange::between(old.as_ref(), &now)
    }

    /// The request budget of a server (see [`ServerBudgets::budget_for`]).
    pub fn budget_for(
        &self,
        server: &str,
        label: &str,
        provider: &str,
        budget: &RequestBudget,
    ) -> Arc<RequestBudgetLimiter> {
        self.budgets.budget_for(server, label, provider, budget)
    }

    pub fn reset_backoff(&self, obj: &ObjectRef<OAuthApplication>) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }

    /// Something the application depends on outside itself and its Secret changed (its
    /// provider, a credential Secret, its namespace's labels): its next pass runs now, past
    /// any backoff, even if the application and its Secret are as the last pass left them.
    pub fn wake(&self, obj: &ObjectRef<OAuthApplication>) {
        self.reset_backoff(obj);
        self.versions.unsettle(obj);
    }

    /// The end of a successful pass that found the application's Secret at `secret_version`
    /// and asks to be back after `requeue`: until then, events that change neither the
    /// application nor its Secret run no pass (see [`super::versions`]).
    /// Not when a status write of the pass came back with a change of someone else's in it
    /// (the spec, annotations, a deletion: that change must still run a pass).
    pub fn settled(
        &self,
        app: &OAuthApplication,
        writer: &super::status::StatusWriter<'_>,
        secret_version: Option<&str>,
        requeue: Duration,
    ) -> kube::runtime::controller::Action {
        tracing::debug!(
            app = app.metadata.name.as_deref().unwrap_or_default(),
            secret_version,
            overtaken = writer.overtaken(),
            "pass done"
        );
        if !writer.overtaken() {
            self.versions.settle(
                &ObjectRef::from_obj(app),
                app.metadata.uid.as_deref().unwrap_or_default(),
                writer.began(),
                secret_version,
                requeue,
            );
        }
        kube::runtime::controller::Action::requeue(requeue)
    }

    /// The periodic requeue after a successful pass, spread so that thousands of
    /// applications do not all resync in the same second.
    pub fn resync_delay(&self) -> Duration {
        jitter(self.config.resync_interval)
    }
}

/// 1 s, 2 s, 4 s ... capped at 5 minutes.
pub fn backoff_delay(attempt: u32) -> Duration {
    let secs = 1u64
        .checked_shl(attempt.saturating_sub(1).min(16))
        .unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(300))
}

/// Adds up to +20% random jitter.
pub fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(1.0..1.2);
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
        let j = jitter(Duration::from_secs(10));
        assert!(j >= Duration::from_secs(10) && j < Duration::from_secs(12));
    }

    #[test]
    fn providers_of_one_server_share_one_budget() {
        let budgets = ServerBudgets::new(Arc::new(Metrics::default()), Arc::default());
        let b = |requests| RequestBudget {
            requests,
            period_seconds: 10,
        };
        let first = budgets.budget_for("clerk|k1", "clerk", "OAuthProvider/a/p", &b(80));
        for i in 0..50 {
            let other = budgets.budget_for(
                "clerk|k1",
                "clerk",
                &format!("OAuthProvider/n{i}/p"),
                &b(80),
            );
            assert!(Arc::ptr_eq(&first, &other), "one limiter for one server");
        }
        let elsewhere = budgets.budget_for("clerk|k2", "clerk", "OAuthProvider/a/q", &b(80));
        assert!(
            !Arc::ptr_eq(&first, &elsewhere),
            "another credential, another budget"
        );
        // A stricter provider on the same server lowers the shared budget for all, in place.
        let effective = || budgets.map.lock().unwrap()["clerk|k1"].effective.clone();
        let stricter = budgets.budget_for("clerk|k1", "clerk", "OAuthProvider/z/p", &b(10));
        assert!(Arc::ptr_eq(&first, &stricter), "the same limiter, changed");
        assert_eq!(effective(), b(10));
        let again = budgets.budget_for("clerk|k1", "clerk", "OAuthProvider/a/p", &b(80));
        assert!(Arc::ptr_eq(&stricter, &again));
        assert_eq!(effective(), b(10), "the strictest stays in force");
    }

    #[test]
    fn only_what_applications_depend_on_is_a_provider_change() {
        let last = Mutex::new(None::<ProviderSeen>);
        let change = |now: ProviderSeen| {
            let mut last = last.lock().unwrap();
            let change = ProviderChange::between(last.as_ref(), &now);
            *last = Some(now);
            change
        };
        let seen = |generation, deleting, ready: &str| ProviderSeen {
            uid: Some("u1".into()),
            generation: Some(generation),
            deleting,
            ready: Some(ready.into()),
        };
        assert_eq!(change(seen(1, false, "False")), ProviderChange::First);
        assert_eq!(change(seen(1, false, "False")), ProviderChange::None);
        assert_eq!(change(seen(1, false, "True")), ProviderChange::BecameReady);
        assert_eq!(change(seen(1, false, "False")), ProviderChange::State);
        assert_eq!(change(seen(1, false, "True")), ProviderChange::BecameReady);
        assert_eq!(change(seen(2, false, "True")), ProviderChange::Spec);
        assert_eq!(change(seen(2, true, "True")), ProviderChange::State);
        // Deleted and created again (both while the watch was away): a new provider.
        let mut recreated = seen(2, true, "True");
        recreated.uid = Some("u2".into());
        assert_eq!(change(recreated), ProviderChange::Spec);
    }

    #[test]
    fn the_strictest_budget_comes_first() {
        let b = |requests, period_seconds| RequestBudget {
            requests,
            period_seconds,
        };
        use std::cmp::Ordering::*;
        assert_eq!(stricter_first(&b(10, 10), &b(80, 10)), Less);
        assert_eq!(stricter_first(&b(80, 10), &b(10, 1)), Less);
        assert_eq!(stricter_first(&b(1, 1), &b(10, 10)), Less); // same rate, smaller burst
        assert_eq!(stricter_first(&b(5, 5), &b(5, 5)), Equal);
    }
}
