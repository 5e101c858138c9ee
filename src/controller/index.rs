//! Which applications an event on a Secret or a namespace concerns, kept beside the
//! applications' store and fed by the same watch.
//!
//! Every Secret in the cluster is watched (metadata only) for `spec.credentialsFrom`, and
//! every namespace for `allowedNamespaces.selector`. Finding the applications an event
//! concerns by scanning the store costs a pass over every application per event: 50,000
//! Secrets and 10,000 applications make 500 million comparisons at start, and every write
//! anywhere in the cluster costs one more scan. Here it costs a hash lookup.
//!
//! A relist of the watch is built aside and swapped in when it is complete (as the reflector
//! store does), so a lookup during a relist answers from the last complete list.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::{OAuthApplication, ProviderKind};

pub type AppRef = ObjectRef<DeserializeGuard<OAuthApplication>>;

/// See the module documentation.
#[derive(Default)]
pub struct AppIndex {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    live: Maps,
    /// A relist in progress.
    building: Option<Maps>,
}

#[derive(Default)]
struct Maps {
    /// Namespace → Secret name → the applications whose `spec.credentialsFrom` names it.
    readers: HashMap<String, HashMap<String, HashSet<AppRef>>>,
    /// Namespace → its applications that use a `ClusterOAuthProvider`.
    cluster_users: HashMap<String, HashSet<AppRef>>,
    /// Where each application is filed, to unfile it when it changes or goes.
    filed: HashMap<AppRef, Filing>,
}

#[derive(Clone, Default, PartialEq, Eq)]
struct Filing {
    namespace: String,
    reads: Option<String>,
    cluster_user: bool,
}

impl Filing {
    /// Where an application is filed; `None` when no Secret or namespace event concerns it
    /// (most applications: nothing of them is kept here).
    fn of(guard: &DeserializeGuard<OAuthApplication>) -> Option<Self> {
        let app = guard.0.as_ref().ok()?;
        let reads = app.spec.credentials_from.as_ref().map(|f| f.name.clone());
        let cluster_user = app.spec.provider_ref.kind == ProviderKind::ClusterOAuthProvider;
        (reads.is_some() || cluster_user).then(|| Self {
            namespace: app.metadata.namespace.clone().unwrap_or_default(),
            reads,
            cluster_user,
        })
    }
}

impl Maps {
    fn file(&mut self, guard: &DeserializeGuard<OAuthApplication>) {
        let key = ObjectRef::from_obj(guard);
        let filing = Filing::of(guard);
        if self.filed.get(&key) == filing.as_ref() {
            return;
        }
        self.unfile(&key);
        let Some(filing) = filing else { return };
        if let Some(secret) = &filing.reads {
            self.readers
                .entry(filing.namespace.clone())
                .or_default()
                .entry(secret.clone())
                .or_default()
                .insert(key.clone());
        }
        if filing.cluster_user {
            self.cluster_users
                .entry(filing.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        self.filed.insert(key, filing);
    }

    fn unfile(&mut self, key: &AppRef) {
        let Some(filing) = self.filed.remove(key) else {
            return;
        };
        if let Some(secret) = &filing.reads
            && let Some(by_name) = self.readers.get_mut(&filing.namespace)
        {
            if let Some(apps) = by_name.get_mut(secret) {
                apps.remove(key);
                if apps.is_empty() {
                    by_name.remove(secret);
                }
            }
            if by_name.is_empty() {
                self.readers.remove(&filing.namespace);
            }
        }
        if filing.cluster_user
            && let Some(apps) = self.cluster_users.get_mut(&filing.namespace)
        {
            apps.remove(key);
            if apps.is_empty() {
                self.cluster_users.remove(&filing.namespace);
            }
        }
    }
}

impl AppIndex {
    /// Follows one event of the applications' watch.
    pub fn apply(&self, event: &watcher::Event<DeserializeGuard<OAuthApplication>>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Apply(app) => inner.live.file(app),
            watcher::Event::Delete(app) => inner.live.unfile(&ObjectRef::from_obj(app)),
            watcher::Event::Init => inner.building = Some(Maps::default()),
            watcher::Event::InitApply(app) => inner.building.get_or_insert_default().file(app),
            watcher::Event::InitDone => {
                if let Some(maps) = inner.building.take() {
                    inner.live = maps;
                }
            }
        }
    }

    /// The applications in `namespace` whose `spec.credentialsFrom` names Secret `name`.
    pub fn reading(&self, namespace: &str, name: &str) -> Vec<AppRef> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .live
            .readers
            .get(namespace)
            .and_then(|by_name| by_name.get(name))
            .map(|apps| apps.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The applications in `namespace` that use a `ClusterOAuthProvider`.
    pub fn cluster_users(&self, namespace: &str) -> Vec<AppRef> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .live
            .cluster_users
            .get(namespace)
            .map(|apps| apps.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::OAuthApplicationSpec;

    fn app(
        ns: &str,
        name: &str,
        reads: Option<&str>,
        kind: ProviderKind,
    ) -> DeserializeGuard<OAuthApplication> {
        let mut spec: OAuthApplicationSpec = serde_json::from_value(serde_json::json!({
            "providerRef": {"name": "p", "kind": "OAuthProvider"},
            "redirectUris": ["https://a.example.com/cb"],
        }))
        .unwrap();
        spec.provider_ref.kind = kind;
        if let Some(secret) = reads {
            spec.credentials_from =
                Some(serde_json::from_value(serde_json::json!({"name": secret})).unwrap());
        }
        let mut app = OAuthApplication::new(name, spec);
        app.metadata.namespace = Some(ns.into());
        DeserializeGuard(Ok(app))
    }

    /// An `Apply` event of an application in `ns` that reads Secret `reads`.
    fn applied(
        ns: &str,
        name: &str,
        reads: Option<&str>,
        kind: ProviderKind,
    ) -> watcher::Event<DeserializeGuard<OAuthApplication>> {
        watcher::Event::Apply(app(ns, name, reads, kind))
    }

    fn names(mut refs: Vec<AppRef>) -> Vec<String> {
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_secret_finds_the_applications_that_read_it_and_no_others() {
        let index = AppIndex::default();
        index.apply(&applied(
            "a",
            "one",
            Some("creds"),
            ProviderKind::OAuthProvider,
        ));
        index.apply(&applied(
            "a",
            "two",
            Some("creds"),
            ProviderKind::OAuthProvider,
        ));
        index.apply(&applied(
            "a",
            "three",
            Some("other"),
            ProviderKind::OAuthProvider,
        ));
        index.apply(&applied(
            "b",
            "four",
            Some("creds"),
            ProviderKind::OAuthProvider,
        ));
        index.apply(&applied("a", "five", None, ProviderKind::OAuthProvider));
        assert_eq!(names(index.reading("a", "creds")), ["one", "two"]);
        assert_eq!(names(index.reading("b", "creds")), ["four"]);
        assert!(index.reading("a", "unrelated").is_empty());
        assert!(index.reading("c", "creds").is_empty());
        // An application no Secret or namespace event concerns is not kept.
        let inner = index.inner.read().unwrap();
        assert_eq!(inner.live.filed.len(), 4);
    }

    #[test]
    fn a_changed_or_deleted_application_is_refiled() {
        let index = AppIndex::default();
        index.apply(&applied(
            "a",
            "one",
            Some("creds"),
            ProviderKind::ClusterOAuthProvider,
        ));
        assert_eq!(names(index.cluster_users("a")), ["one"]);
        // It now reads another Secret and uses a namespaced provider.
        index.apply(&applied(
            "a",
            "one",
            Some("next"),
            ProviderKind::OAuthProvider,
        ));
        assert!(index.reading("a", "creds").is_empty());
        assert_eq!(names(index.reading("a", "next")), ["one"]);
        assert!(index.cluster_users("a").is_empty());
        index.apply(&watcher::Event::Delete(app(
            "a",
            "one",
            Some("next"),
            ProviderKind::OAuthProvider,
        )));
        assert!(index.reading("a", "next").is_empty());
        let inner = index.inner.read().unwrap();
        assert!(inner.live.readers.is_empty() && inner.live.filed.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_complete() {
        let index = AppIndex::default();
        index.apply(&applied(
            "a",
            "gone",
            Some("creds"),
            ProviderKind::OAuthProvider,
        ));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(app(
            "a",
            "kept",
            Some("creds"),
            ProviderKind::OAuthProvider,
        )));
        // Until the relist is done, lookups answer from the last complete list.
        assert_eq!(names(index.reading("a", "creds")), ["gone"]);
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(index.reading("a", "creds")), ["kept"]);
    }

    #[test]
    fn a_malformed_application_is_unfiled() {
        let index = AppIndex::default();
        index.apply(&applied(
            "a",
            "one",
            Some("creds"),
            ProviderKind::OAuthProvider,
        ));
        let malformed: DeserializeGuard<OAuthApplication> =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "oauth-operator.dev/v1alpha1",
                "kind": "OAuthApplication",
                "metadata": {"name": "one", "namespace": "a"},
                "spec": {"providerRef": 7},
            }))
            .unwrap();
        assert!(malformed.0.is_err());
        index.apply(&watcher::Event::Apply(malformed));
        assert!(index.reading("a", "creds").is_empty());
    }
}
