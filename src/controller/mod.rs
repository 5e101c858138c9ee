//! The controllers: `OAuthApplication` (owning its Secrets, following its providers) and the
//! two provider kinds.

pub mod access;
pub mod application;
pub mod cache;
pub mod context;
pub mod desired;
pub mod error;
pub mod events;
mod given;
pub mod index;
pub mod inventory;
pub mod plan;
pub mod provider;
pub mod resolve;
pub mod secret;
pub mod staging;
pub mod status;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};

pub use context::{Config, Context};
use context::{ProviderChange, ProviderSeen};

use crate::api::{ClusterOAuthProvider, OAuthApplication, OAuthProvider, ProviderKind};
use crate::leader::{Elector, Fence, fenced_client};
use crate::telemetry::{Metrics, Readiness};

/// Waits until every CRD this operator serves is established, so the watches do not fail.
pub async fn wait_for_crds(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let name = crd.name_any();
        tokio::time::timeout(
            timeout,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| {
            format!("CRD {name} is not established after {timeout:?}: install crds/ first")
        })?
        .with_context(|| format!("waiting for CRD {name}"))?;
    }
    Ok(())
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The reference the context keys an application's state by.
fn plain(app: &ObjectRef<DeserializeGuard<OAuthApplication>>) -> ObjectRef<OAuthApplication> {
    let mut plain = ObjectRef::<OAuthApplication>::new(&app.name);
    plain.namespace = app.namespace.clone();
    plain
}

/// Applications that reference a provider (by kind, namespace and name).
fn apps_using(
    store: &kube::runtime::reflector::Store<DeserializeGuard<OAuthApplication>>,
    kind: ProviderKind,
    namespace: Option<String>,
    name: String,
) -> Vec<ObjectRef<DeserializeGuard<OAuthApplication>>> {
    store
        .state()
        .into_iter()
        .filter(|guard| {
            guard.0.as_ref().is_ok_and(|app| {
                app.spec.provider_ref.kind == kind
                    && app.spec.provider_ref.name == name
                    && (namespace.is_none() || app.namespace() == namespace)
            })
        })
        .map(|guard| ObjectRef::from_obj(&*guard))
        .collect()
}

/// Applications whose `spec.credentialsFrom` names this Secret: a change there is a change of
/// the credentials to push, so they also retry now rather than after their backoff. Called for
/// every Secret event in the watched namespaces: a lookup, not a scan (see `index`).
fn apps_reading(
    index: &index::AppIndex,
    ctx: &Context,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DeserializeGuard<OAuthApplication>>> {
    ctx.caches.credentials.changed(secret);
    let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
        return Vec::new();
    };
    let apps = index.reading(namespace, name);
    for app in &apps {
        ctx.wake(&plain(app));
    }
    apps
}

/// How many distinct sets of endpoints [`share_endpoints`] holds: one per authorization
/// server in practice. A bound, not a size to tune: past it, sharing is only less complete.
const SHARED_ENDPOINTS: usize = 32;

/// Replaces an application's endpoints with an equal copy already held, so that the thousands
/// of applications of one server hold one copy between them (about 0.6 KB each otherwise).
fn share_endpoints(
    held: &mut Vec<Arc<crate::api::Endpoints>>,
    endpoints: &mut Option<Arc<crate::api::Endpoints>>,
) {
    let Some(endpoints) = endpoints.as_mut() else {
        return;
    };
    if let Some(found) = held.iter().find(|h| **h == *endpoints) {
        *endpoints = found.clone();
    } else {
        if held.len() == SHARED_ENDPOINTS {
            held.remove(0);
        }
        held.push(endpoints.clone());
    }
}

/// A namespace's labels changed (or it was first seen): its applications that use a
/// `ClusterOAuthProvider` retry now, since `allowedNamespaces.selector` may admit (or no longer
/// admit) them.
fn apps_admitted_by_labels(
    index: &index::AppIndex,
    ctx: &Context,
    namespace: &PartialObjectMeta<Namespace>,
) -> Vec<ObjectRef<DeserializeGuard<OAuthApplication>>> {
    let apps = index.cluster_users(&namespace.name_any());
    for app in &apps {
        ctx.wake(&plain(app));
    }
    apps
}

/// The applications a provider event wakes: all of them when something they depend on
/// changed (its spec, deletion, readiness: see [`ProviderSeen`]), with their backoff lifted;
/// none for the provider's own status writes and other noise.
fn retry_now(
    ctx: &Context,
    key: String,
    seen: ProviderSeen,
    apps: impl FnOnce() -> Vec<ObjectRef<DeserializeGuard<OAuthApplication>>>,
) -> Vec<ObjectRef<DeserializeGuard<OAuthApplication>>> {
    match ctx.provider_changed(&key, seen) {
        ProviderChange::None => Vec::new(),
        // Not seen before: an application settled only after a pass that resolved it, and a
        // pass that failed for want of it never settled, so nothing is forgotten here (and no
        // pass under way counts as woken: its failure keeps its backoff).
        ProviderChange::First => apps(),
        ProviderChange::BecameReady => {
            let apps = apps();
            for app in &apps {
                ctx.reset_backoff(&plain(app));
                ctx.versions.woke(&plain(app));
            }
            apps
        }
        ProviderChange::Spec | ProviderChange::State => {
            let apps = apps();
            for app in &apps {
                ctx.wake(&plain(app));
            }
            apps
        }
    }
}

/// What [`retry_now`] compares of a provider (either kind).
fn provider_seen<K>(p: &DeserializeGuard<K>, ready: impl Fn(&K) -> Option<String>) -> ProviderSeen
where
    K: Resource,
{
    ProviderSeen {
        uid: p.meta().uid.clone(),
        generation: p.meta().generation,
        deleting: p.meta().deletion_timestamp.is_some(),
        ready: p.0.as_ref().ok().and_then(ready),
    }
}

/// The `Ready` condition's status, if any.
fn ready_status(
    conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> Option<String> {
    conditions?
        .iter()
        .find(|c| c.type_ == crate::api::conditions::READY)
        .map(|c| c.status.clone())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs every controller until a termination signal. With leader election, waits as a
/// standby until it holds the Lease, keeps it while the controllers run, and releases it after
/// in-flight reconciles finish on SIGTERM; losing it ends the process with an error (a restart
/// rejoins as a standby), and the fence stops provider writes from the moment it may be lost.
pub async fn run(
    kube_config: kube::Config,
    config: Config,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let client = Client::try_from(kube_config.clone()).context("building the Kubernetes client")?;
    wait_for_crds(&client, Duration::from_secs(60)).await?;
    let Some(lease) = config.leader.clone() else {
        metrics.leader.set(1);
        let fence = Arc::new(Fence::default());
        let fenced = fenced_client(kube_config, fence.clone())?;
        run_controllers(fenced, config, metrics, readiness, fence).await;
        return Ok(());
    };
    let fence = Arc::new(Fence::for_lease(lease.duration));
    let fenced = fenced_client(kube_config, fence.clone())?;
    let mut elector = Elector::new(client, lease.clone());
    // A standby is ready: it serves probes and takes over when the leader goes (a rolling
    // update waits for the new replica's readiness while the old one still leads).
    readiness.set_ready();
    tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting to become the leader");
    tokio::select! {
        _ = elector.acquire(&fence) => {}
        _ = shutdown_signal() => {
            tracing::info!("stopped as a standby");
            return Ok(());
        }
    }
    metrics.leader.set(1);
    let lost = {
        let controllers =
            run_controllers(fenced, config, metrics.clone(), readiness, fence.clone());
        tokio::pin!(controllers);
        tokio::select! {
            _ = &mut controllers => false,
            _ = elector.keep(&fence) => true,
        }
    };
    metrics.leader.set(0);
    if lost {
        fence.close();
        anyhow::bail!(
            "lost the leader lease {}: exiting so that a restart rejoins as a standby",
            lease.name
        );
    }
    elector.release(&fence).await;
    Ok(())
}

/// The backoff of a controller's watches after a watch error. kube-runtime applies one
/// backoff to all of a controller's watches together (the application controller has five:
/// applications, its Secrets, `credentialsFrom` Secrets, both provider kinds), and while it
/// backs off, none of them delivers anything. Its default (0.8 s doubling to 30 s, with
/// jitter) turned the "resource version too old" answers each of the five watches gets after
/// an apiserver restart, one after another with no event in between, into minutes without
/// events:
/// a new application waited that long to be seen. This one starts at 500 ms, doubles to at
/// most 5 s (plus up to 20 % jitter), and starts over after 10 s without an error (kube-runtime
/// also starts it over on every event a watch delivers).
#[derive(Debug, Default)]
struct WatchBackoff {
    attempt: u32,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
    const RESET_AFTER: Duration = Duration::from_secs(10);

    fn policy() -> kube::runtime::utils::ResetTimerBackoff<WatchBackoff> {
        kube::runtime::utils::ResetTimerBackoff::new(WatchBackoff::default(), Self::RESET_AFTER)
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = Self::FIRST
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Some(context::jitter(delay))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The controllers, until a termination signal ends them (after in-flight reconciles).
async fn run_controllers(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    fence: Arc<Fence>,
) {
    let ns = config.watch_namespace.clone();
    let controller_cfg =
        kube::runtime::controller::Config::default().concurrency(config.concurrency);
    let watch_cfg = watcher::Config::default().any_semantic();
    // Providers and namespaces: each pass reads them from these stores (see `cache`). Each
    // store is written before the watch hands its event on, so the pass an event starts sees
    // the object that caused it.
    let providers: Api<DeserializeGuard<OAuthProvider>> = api_for(&client, ns.as_deref());
    let cluster_providers: Api<DeserializeGuard<ClusterOAuthProvider>> = Api::all(client.clone());
    let (provider_store, provider_writer) = reflector::store();
    let (cluster_provider_store, cluster_provider_writer) = reflector::store();
    let (namespace_store, namespace_writer) = reflector::store();
    let provider_events = watcher(providers.clone(), watch_cfg.clone())
        .backoff(WatchBackoff::policy())
        .reflect(provider_writer)
        .touched_objects();
    let cluster_provider_events = watcher(cluster_providers.clone(), watch_cfg.clone())
        .backoff(WatchBackoff::policy())
        .reflect(cluster_provider_writer)
        .touched_objects();
    // Metadata only (the labels `allowedNamespaces.selector` matches); only label changes wake
    // applications.
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let namespace_events = watcher(namespaces, watch_cfg.clone())
        .backoff(WatchBackoff::policy())
        .modify(|n| {
            n.metadata.managed_fields = None;
        })
        .reflect(namespace_writer)
        .touched_objects()
        .predicate_filter(predicates::labels, Default::default());
    // Metadata only, and only the Secrets this operator wrote (their versions tell a pass
    // whether a Secret changed since the last one: see `versions`). Only their versions are
    // kept; the events go on whole to the owner mapping.
    let secrets: Api<PartialObjectMeta<Secret>> = api_for(&client, ns.as_deref());
    let secrets_cfg = watch_cfg.clone().labels(&format!(
        "{}={}",
        secret::MANAGED_BY_LABEL,
        secret::MANAGED_BY_VALUE
    ));
    let owned_secrets = Arc::new(cache::OwnedSecretVersions::default());
    let owned_secret_events = watcher(secrets, secrets_cfg)
        .backoff(WatchBackoff::policy())
        .inspect_ok({
            let owned_secrets = owned_secrets.clone();
            move |event| owned_secrets.apply(event)
        })
        .touched_objects();
    let caches = cache::Caches {
        providers: provider_store,
        cluster_providers: cluster_provider_store,
        namespaces: namespace_store,
        owned_secrets,
        credentials: Default::default(),
    };
    let ctx = Arc::new(Context::new(client.clone(), metrics, config, fence, caches));

    // The applications' store keeps them without managed fields (nothing reads them, and at
    // thousands of applications they are most of its memory).
    let apps: Api<DeserializeGuard<OAuthApplication>> = api_for(&client, ns.as_deref());
    let (store, app_writer) = reflector::store();
    let app_index = Arc::new(index::AppIndex::default());
    let mut shared_endpoints = Vec::new();
    let app_events = watcher(apps, watch_cfg.clone())
        .modify(move |guard| {
            guard.meta_mut().managed_fields = None;
            if let Ok(app) = &mut guard.0
                && let Some(status) = app.status.as_mut()
            {
                share_endpoints(&mut shared_endpoints, &mut status.endpoints);
            }
        })
        .inspect_ok({
            let app_index = app_index.clone();
            move |event| app_index.apply(event)
        })
        .reflect(app_writer)
        .applied_objects();
    let app_controller = Controller::for_stream(app_events, store.clone())
        .with_config(controller_cfg.clone())
        .trigger_backoff(WatchBackoff::policy());
    let (ns_store, cluster_store) = (store.clone(), store.clone());
    let (ns_ctx, cluster_ctx_map) = (ctx.clone(), ctx.clone());

    // Metadata only, of every Secret: those that `spec.credentialsFrom` names are the user's
    // (no label of ours), and nothing of them is kept but the event.
    // (`Api<PartialObjectMeta<_>>` makes metadata-only requests.)
    let sources: Api<PartialObjectMeta<Secret>> = api_for(&client, ns.as_deref());
    let (source_index, source_ctx) = (app_index.clone(), ctx.clone());
    let (label_index, label_ctx) = (app_index, ctx.clone());

    let app_controller = app_controller
        .owns_stream(owned_secret_events)
        .watches(sources, watch_cfg.clone(), move |s| {
            apps_reading(&source_index, &source_ctx, &s)
        })
        .watches_stream(namespace_events, move |n| {
            apps_admitted_by_labels(&label_index, &label_ctx, &n)
        })
        .watches_stream(provider_events, move |p| {
            let key = resolve::provider_key(
                ProviderKind::OAuthProvider,
                &p.namespace().unwrap_or_default(),
                &p.name_any(),
            );
            let seen = provider_seen(&p, |p: &OAuthProvider| {
                ready_status(p.status.as_ref().map(|s| &s.conditions))
            });
            retry_now(&ns_ctx, key, seen, || {
                apps_using(
                    &ns_store,
                    ProviderKind::OAuthProvider,
                    p.namespace(),
                    p.name_any(),
                )
            })
        })
        .watches_stream(cluster_provider_events, move |p| {
            let key = resolve::provider_key(ProviderKind::ClusterOAuthProvider, "", &p.name_any());
            let seen = provider_seen(&p, |p: &ClusterOAuthProvider| {
                ready_status(p.status.as_ref().map(|s| &s.conditions))
            });
            retry_now(&cluster_ctx_map, key, seen, || {
                apps_using(
                    &cluster_store,
                    ProviderKind::ClusterOAuthProvider,
                    None,
                    p.name_any(),
                )
            })
        })
        .shutdown_on_signal()
        .run(
            application::reconcile,
            application::error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "application controller event");
            }
        });

    let provider_controller = Controller::new(providers, watch_cfg.clone())
        .with_config(controller_cfg.clone())
        .trigger_backoff(WatchBackoff::policy())
        .shutdown_on_signal()
        .run(
            provider::reconcile_namespaced,
            provider::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {});
    // In single-namespace mode, cluster providers are left to the cluster-wide operator.
    let cluster_ctx = ctx.clone();
    let cluster_controller = async move {
        if ns.is_none() {
            Controller::new(cluster_providers, watch_cfg)
                .with_config(controller_cfg)
                .trigger_backoff(WatchBackoff::policy())
                .shutdown_on_signal()
                .run(
                    provider::reconcile_cluster,
                    provider::error_policy,
                    cluster_ctx,
                )
                .for_each(|_| async {})
                .await;
        }
    };
    let ready = async move {
        if store.wait_until_ready().await.is_ok() {
            readiness.set_ready();
            tracing::info!("caches synced; ready");
        }
    };
    tracing::info!("controllers started");
    tokio::join!(
        app_controller,
        provider_controller,
        cluster_controller,
        ready
    );
    tracing::info!("controllers stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::api::Endpoints;

    #[test]
    fn equal_endpoints_are_one_copy_and_different_ones_stay_apart() {
        let of = |issuer: &str| {
            Some(Arc::new(Endpoints {
                issuer: Some(issuer.into()),
                token: Some(format!("{issuer}/token")),
                ..Default::default()
            }))
        };
        let mut held = Vec::new();
        let (mut a1, mut a2, mut b) = (of("https://a"), of("https://a"), of("https://b"));
        let mut none = None;
        for e in [&mut a1, &mut a2, &mut b, &mut none] {
            super::share_endpoints(&mut held, e);
        }
        let (a1, a2, b) = (a1.unwrap(), a2.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a1, &a2), "one copy of equal endpoints");
        assert!(!Arc::ptr_eq(&a1, &b));
        assert_eq!(b.issuer.as_deref(), Some("https://b"), "values untouched");
        assert_eq!(held.len(), 2);

        // Bounded: past the bound the oldest goes, and sharing goes on for the rest.
        for i in 0..super::SHARED_ENDPOINTS {
            super::share_endpoints(&mut held, &mut of(&format!("https://s{i}")));
        }
        assert_eq!(held.len(), super::SHARED_ENDPOINTS);
        let mut again = of(&format!("https://s{}", super::SHARED_ENDPOINTS - 1));
        super::share_endpoints(&mut held, &mut again);
        assert!(Arc::ptr_eq(again.as_ref().unwrap(), held.last().unwrap()));
    }

    #[test]
    fn the_watch_backoff_stays_short_and_starts_over() {
        use kube::runtime::utils::Backoff as _;
        let mut b = super::WatchBackoff::default();
        let delays: Vec<_> = (&mut b).take(10).collect();
        assert!(delays[0] >= std::time::Duration::from_millis(500));
        assert!(delays[0] < std::time::Duration::from_millis(601));
        assert!(
            delays
                .iter()
                .all(|d| *d <= std::time::Duration::from_secs(6))
        );
        assert!(delays[9] >= std::time::Duration::from_secs(5));
        b.reset();
        assert!(b.next().unwrap() < std::time::Duration::from_millis(601));
    }
}
