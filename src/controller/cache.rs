//! What every pass reads but seldom changes, read from watches instead of the apiserver:
//! the providers of both kinds and the namespaces (reflector stores fed by the watches that
//! also wake applications, so a store is up to date before the event it delivers is handled),
//! and the providers' credential Secrets (a read-through cache, emptied by the events of the
//! metadata watch on Secrets that already exists for `credentialsFrom`).
//!
//! A miss (a store not listed yet, an object not seen yet, a malformed object, a namespace the
//! watches do not cover) falls back to a live read, so a cache can only save requests, never
//! answer "not found" on its own.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store, store};
use kube::runtime::watcher;

use crate::api::{ClusterOAuthProvider, OAuthProvider};

/// Reflector stores of providers and namespaces, and the credential cache.
pub struct Caches {
    pub providers: Store<DeserializeGuard<OAuthProvider>>,
    pub cluster_providers: Store<DeserializeGuard<ClusterOAuthProvider>>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// The versions of the Secrets this operator wrote.
    pub owned_secrets: std::sync::Arc<OwnedSecretVersions>,
    pub credentials: CredentialCache,
}

impl Default for Caches {
    /// Empty stores that never fill: every read falls back to the apiserver.
    fn default() -> Self {
        Self {
            providers: store().0,
            cluster_providers: store().0,
            namespaces: store().0,
            owned_secrets: Default::default(),
            credentials: CredentialCache::default(),
        }
    }
}

impl Caches {
    /// The `OAuthProvider` from its store, if the store holds a well-formed copy.
    pub fn provider(&self, namespace: &str, name: &str) -> Option<OAuthProvider> {
        let guard = self
            .providers
            .get(&ObjectRef::new(name).within(namespace))?;
        guard.0.as_ref().ok().cloned()
    }

    /// The `ClusterOAuthProvider` from its store, if the store holds a well-formed copy.
    pub fn cluster_provider(&self, name: &str) -> Option<ClusterOAuthProvider> {
        let guard = self.cluster_providers.get(&ObjectRef::new(name))?;
        guard.0.as_ref().ok().cloned()
    }

    /// The `resourceVersion` of an owned Secret as its watch last saw it.
    pub fn owned_secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.owned_secrets.get(namespace, name)
    }

    /// A namespace's labels from its store.
    pub fn namespace_labels(
        &self,
        name: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        let ns = self.namespaces.get(&ObjectRef::new(name))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// The `resourceVersion` of each Secret this operator wrote, as its watch last saw it: all a
/// pass reads of them. (A reflector store kept each one's metadata object, about 0.8 KB
/// apiece at 10,000 applications; this keeps its name and version.) Fed by the watch before
/// it hands the event on; a relist is built aside and swapped in when complete, as a
/// reflector store does.
#[derive(Default)]
pub struct OwnedSecretVersions {
    inner: RwLock<OwnedInner>,
}

/// Namespace → Secret name → version.
type ByNamespace = HashMap<Box<str>, HashMap<Box<str>, Box<str>>>;

#[derive(Default)]
struct OwnedInner {
    live: ByNamespace,
    /// A relist in progress.
    building: Option<ByNamespace>,
}

impl OwnedSecretVersions {
    pub fn apply(&self, event: &watcher::Event<PartialObjectMeta<Secret>>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(s) => put(&mut inner.live, s),
            watcher::Event::Delete(s) => forget(&mut inner.live, s),
            watcher::Event::Init => inner.building = Some(ByNamespace::default()),
            watcher::Event::InitApply(s) => match inner.building.as_mut() {
                Some(building) => put(building, s),
                None => put(&mut inner.live, s),
            },
            watcher::Event::InitDone => {
                if let Some(built) = inner.building.take() {
                    inner.live = built;
                }
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.live.get(namespace)?.get(name).map(|v| v.to_string())
    }
}

fn put(map: &mut ByNamespace, s: &PartialObjectMeta<Secret>) {
    let Some(version) = s.metadata.resource_version.as_deref() else {
        // Never from the apiserver; if it were, no version is known (a pass then runs).
        return forget(map, s);
    };
    let namespace = s.namespace().unwrap_or_default();
    let names = match map.get_mut(namespace.as_str()) {
        Some(names) => names,
        None => map.entry(namespace.into()).or_default(),
    };
    names.insert(s.name_any().into(), version.into());
}

fn forget(map: &mut ByNamespace, s: &PartialObjectMeta<Secret>) {
    let namespace = s.namespace().unwrap_or_default();
    if let Some(names) = map.get_mut(namespace.as_str()) {
        names.remove(s.name_any().as_str());
        if names.is_empty() {
            map.remove(namespace.as_str());
        }
    }
}

/// Provider credential Secrets as last read, by namespace and name. An entry is dropped by
/// any event on its Secret (see [`CredentialCache::changed`]) and is used for at most
/// [`CredentialCache::MAX_AGE`] (a bound on what a watch that missed an event could cost).
/// A read that an event overtook (the event arrived while the read was in flight) is not
/// kept: the epoch taken before the read must still be current when it is stored.
///
/// It holds credential values, as the provider clients built from them do; it has no
/// `Debug` and nothing of it is logged.
#[derive(Default)]
pub struct CredentialCache {
    map: Mutex<HashMap<(String, String), Entry>>,
}

#[derive(Default)]
struct Entry {
    epoch: u64,
    read: Option<(Secret, Instant)>,
}

impl CredentialCache {
    pub const MAX_AGE: Duration = Duration::from_secs(300);

    /// The cached copy, if fresh; otherwise the epoch to hand to [`CredentialCache::store`]
    /// after reading it live.
    pub fn get(&self, namespace: &str, name: &str) -> Result<Secret, u64> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry((namespace.to_string(), name.to_string()))
            .or_default();
        match &entry.read {
            Some((secret, at)) if at.elapsed() < Self::MAX_AGE => Ok(secret.clone()),
            _ => Err(entry.epoch),
        }
    }

    /// Keeps a live read taken at `epoch`, unless an event on the Secret came since.
    pub fn store(&self, namespace: &str, name: &str, epoch: u64, secret: Secret) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&(namespace.to_string(), name.to_string()))
            && entry.epoch == epoch
        {
            entry.read = Some((secret, Instant::now()));
        }
    }

    /// An event (change, deletion, or a watch's relist) on a Secret: a cached copy of it is
    /// dropped and a read in flight is not kept. Secrets nobody read are not tracked.
    pub fn changed(&self, secret: &PartialObjectMeta<Secret>) {
        let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
        else {
            return;
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(&(namespace.clone(), name.clone())) {
            entry.epoch += 1;
            entry.read = None;
        }
    }

    /// How many Secrets are tracked (for tests).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn secret(rv: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("cred".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn event() -> PartialObjectMeta<Secret> {
        let mut meta = PartialObjectMeta::<Secret>::default();
        meta.metadata.namespace = Some("ns".into());
        meta.metadata.name = Some("cred".into());
        meta
    }

    #[test]
    fn a_read_is_kept_until_an_event_on_its_secret() {
        let cache = CredentialCache::default();
        let epoch = cache.get("ns", "cred").unwrap_err();
        cache.store("ns", "cred", epoch, secret("1"));
        let hit = cache.get("ns", "cred").ok().unwrap();
        assert_eq!(hit.metadata.resource_version.as_deref(), Some("1"));
        cache.changed(&event());
        assert!(cache.get("ns", "cred").is_err());
    }

    #[test]
    fn a_read_overtaken_by_an_event_is_not_kept() {
        let cache = CredentialCache::default();
        let epoch = cache.get("ns", "cred").unwrap_err();
        // The Secret changes while the read is in flight: the read may predate the change.
        cache.changed(&event());
        cache.store("ns", "cred", epoch, secret("1"));
        let epoch = cache.get("ns", "cred").unwrap_err();
        cache.store("ns", "cred", epoch, secret("2"));
        let hit = cache.get("ns", "cred").ok().unwrap();
        assert_eq!(hit.metadata.resource_version.as_deref(), Some("2"));
    }

    #[test]
    fn secrets_nobody_read_are_not_tracked() {
        let cache = CredentialCache::default();
        let mut other = event();
        other.metadata.name = Some("unrelated".into());
        cache.changed(&other);
        assert!(cache.is_empty());
    }

    fn owned(ns: &str, name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        let mut meta = PartialObjectMeta::<Secret>::default();
        meta.metadata.namespace = Some(ns.into());
        meta.metadata.name = Some(name.into());
        meta.metadata.resource_version = Some(rv.into());
        meta
    }

    #[test]
    fn owned_secret_versions_follow_the_watch_and_a_relist_replaces_them_when_complete() {
        use watcher::Event;
        let v = OwnedSecretVersions::default();
        v.apply(&Event::Apply(owned("a", "s1", "10")));
        v.apply(&Event::Apply(owned("b", "s1", "11")));
        assert_eq!(v.get("a", "s1").as_deref(), Some("10"));
        assert_eq!(v.get("b", "s1").as_deref(), Some("11"), "by namespace");
        v.apply(&Event::Apply(owned("a", "s1", "12")));
        assert_eq!(v.get("a", "s1").as_deref(), Some("12"));
        v.apply(&Event::Delete(owned("a", "s1", "13")));
        assert_eq!(v.get("a", "s1"), None);
        assert_eq!(v.get("c", "s1"), None);

        // A relist: the last complete list answers until the new one is complete.
        v.apply(&Event::Init);
        v.apply(&Event::InitApply(owned("a", "s2", "20")));
        assert_eq!(v.get("b", "s1").as_deref(), Some("11"));
        assert_eq!(v.get("a", "s2"), None);
        v.apply(&Event::InitDone);
        assert_eq!(v.get("a", "s2").as_deref(), Some("20"));
        assert_eq!(v.get("b", "s1"), None, "gone from the relist");
    }
}
