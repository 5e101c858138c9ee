//! Drift detection by one list per server per resync interval ([`DriftSource::ListAll`]),
//! shared by every application of that server.
//!
//! Three properties matter at scale:
//! - **Single flight.** When the snapshot is stale, one pass lists; every other pass of the
//!   same server waits for that list instead of starting its own.
//! - **Reads never wait behind a list.** The snapshot is read (and the operator's own writes
//!   are recorded) under a short lock that a list in progress never holds, so a pass that only
//!   needs a fresh snapshot, or has just created or updated a client, is not held up by a
//!   paginated list of thousands of clients.
//! - **A list cut short goes on.** Pages already read are kept with the cursor of the next
//!   one, so a list that fails at page 15 starts again at page 15, not page 1 (within one
//!   resync interval of its start; older pages are read again). Where the cursor is an offset
//!   (Clerk, Keycloak), clients deleted meanwhile on earlier pages can shift a few others out
//!   of the stitched list; a client missing from a snapshot is confirmed with one GET, so
//!   that costs a request, never a wrong answer.
//!
//! The operator's own writes made while a list is in progress are kept in a journal and laid
//! over the list when it completes: a page read before a write must not undo it.
//!
//! [`DriftSource::ListAll`]: crate::providers::DriftSource::ListAll

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use crate::providers::{PageCursor, ProviderError, RemoteClient, SharedBackend};

/// Every client at one server as of one list, with the operator's own writes since.
struct Snapshot {
    /// When the list began (its oldest page).
    fetched_at: Instant,
    /// Wall-clock time of the same, reported as `status.lastSyncTime`.
    fetched_wall: Timestamp,
    /// Shared with the list that follows where a client is unchanged: while a list runs,
    /// the snapshot it replaces and the pages it read hold one copy of each such client.
    clients: HashMap<String, Arc<RemoteClient>>,
}

#[derive(Default)]
struct Known {
    snapshot: Option<Snapshot>,
    /// The operator's writes since the list in progress began (`None`: no list began since
    /// the last one completed): `Some(client)` written, `None` deleted.
    journal: Option<HashMap<String, Option<RemoteClient>>>,
}

impl Known {
    fn record(&mut self, id: &str, client: Option<&RemoteClient>) {
        if let Some(snapshot) = &mut self.snapshot {
            match client {
                Some(c) => snapshot.clients.insert(id.to_string(), Arc::new(c.clone())),
                None => snapshot.clients.remove(id),
            };
        }
        if let Some(journal) = &mut self.journal {
            journal.insert(id.to_string(), client.cloned());
        }
    }
}

/// What a list that failed had read: the pages before the failure and where the next starts.
struct Partial {
    started: Instant,
    started_wall: Timestamp,
    clients: HashMap<String, Arc<RemoteClient>>,
    next: PageCursor,
}

#[derive(Default)]
struct Server {
    /// Read and written under short critical sections (no `.await` inside).
    known: RwLock<Known>,
    /// Held for the whole of a list: the single flight. Keeps a failed list's pages.
    listing: tokio::sync::Mutex<Option<Partial>>,
}

impl Server {
    /// `Some(found)` when the snapshot is younger than `max_age`; `None` when a list is due.
    fn fresh(&self, id: &str, max_age: Duration) -> Option<Option<(RemoteClient, Timestamp)>> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        let snapshot = known.snapshot.as_ref()?;
        (snapshot.fetched_at.elapsed() < max_age).then(|| {
            snapshot
                .clients
                .get(id)
                .map(|c| (RemoteClient::clone(c), snapshot.fetched_wall))
        })
    }
}

/// The snapshots of every server, keyed by [`ResolvedProvider::server`].
///
/// [`ResolvedProvider::server`]: super::resolve::ResolvedProvider::server
#[derive(Default)]
pub struct Inventory {
    servers: Mutex<HashMap<String, Arc<Server>>>,
}

impl Inventory {
    fn server(&self, key: &str) -> Arc<Server> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    /// The remote client `id` as of a snapshot no older than `max_age` (listing the server
    /// when it is older, once for all concurrent callers). `Ok(None)`: not at the server as of
    /// that snapshot.
    pub async fn lookup(
        &self,
        key: &str,
        backend: &SharedBackend,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<(RemoteClient, Timestamp)>, ProviderError> {
        let server = self.server(key);
        if let Some(found) = server.fresh(id, max_age) {
            return Ok(found);
        }
        let mut listing = server.listing.lock().await;
        // The pass that held the flight before this one may have listed meanwhile.
        if let Some(found) = server.fresh(id, max_age) {
            return Ok(found);
        }
        let resumed = listing
            .take()
            .filter(|partial| partial.started.elapsed() < max_age);
        let (started, started_wall, mut clients, mut from) = match resumed {
            Some(p) => {
                tracing::debug!(server = %key, pages_kept = p.clients.len(), "resuming a client list cut short");
                (p.started, p.started_wall, p.clients, Some(p.next))
            }
            None => {
                // The writes a page read from now on may predate.
                self.journal_from_now(&server);
                (
                    Instant::now(),
                    super::application::now(),
                    HashMap::new(),
                    None,
                )
            }
        };
        loop {
            match backend.list_page(from.as_ref()).await {
                Ok(page) => {
                    let known = server.known.read().unwrap_or_else(|p| p.into_inner());
                    let previous = known.snapshot.as_ref().map(|s| &s.clients);
                    clients.extend(page.clients.into_iter().map(|c| {
                        let shared = previous
                            .and_then(|p| p.get(&c.id))
                            .filter(|old| ***old == c)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(c));
                        (shared.id.clone(), shared)
                    }));
                    drop(known);
                    match page.next {
                        Some(next) => from = Some(next),
                        None => break,
                    }
                }
                Err(e) => {
                    if let Some(next) = from {
                        *listing = Some(Partial {
                            started,
                            started_wall,
                            clients,
                            next,
                        });
                    }
                    return Err(e);
                }
            }
        }
        let mut known = server.known.write().unwrap_or_else(|p| p.into_inner());
        for (written, client) in known.journal.take().unwrap_or_default() {
            match client {
                Some(c) => clients.insert(written, Arc::new(c)),
                None => clients.remove(&written),
            };
        }
        let found = clients
            .get(id)
            .map(|c| (RemoteClient::clone(c), started_wall));
        known.snapshot = Some(Snapshot {
            fetched_at: started,
            fetched_wall: started_wall,
            clients,
        });
        Ok(found)
    }

    fn journal_from_now(&self, server: &Server) {
        server
            .known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .journal = Some(HashMap::new());
    }

    /// Records the operator's own write, so the next lookup sees it without a list.
    pub fn upsert(&self, key: &str, client: &RemoteClient) {
        let server = self.server(key);
        let mut known = server.known.write().unwrap_or_else(|p| p.into_inner());
        known.record(&client.id, Some(client));
    }

    /// A client as a GET just found it: the snapshot shows it, but a list in progress may
    /// still read a newer page (a GET is no write of ours to lay over it).
    pub fn observe(&self, key: &str, client: &RemoteClient) {
        let server = self.server(key);
        let mut known = server.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(snapshot) = &mut known.snapshot {
            snapshot
                .clients
                .insert(client.id.clone(), Arc::new(client.clone()));
        }
    }

    /// Records the operator's own deletion.
    pub fn remove(&self, key: &str, id: &str) {
        let server = self.server(key);
        let mut known = server.known.write().unwrap_or_else(|p| p.into_inner());
        known.record(id, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{
        Backend, Capabilities, ClientPage, DesiredClient, DriftSource, Identity, IssuedClient,
        OwnerMarker, Registration, Rotation, SecretSource,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn client(id: &str, name: &str) -> RemoteClient {
        RemoteClient {
            id: id.into(),
            client_id: id.into(),
            name: name.into(),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            scopes: vec![],
            grant_types: vec![],
            owner_uid: None,
            public: false,
            pkce_required: false,
            consent_screen: false,
            endpoints: Default::default(),
            created_at: None,
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }

    /// A server of `pages` pages of 10 clients (`c<page>-<k>`, named "listed"). It records the
    /// page each list call asked for, fails the calls whose number is in `fail_calls`, and
    /// holds a call for page `hold_page` until `gate` is opened.
    struct Paged {
        pages: usize,
        calls: Mutex<Vec<usize>>,
        fail_calls: Vec<usize>,
        hold_page: Option<usize>,
        gate: tokio::sync::Semaphore,
        in_list: AtomicUsize,
        /// The name the server gives client `c0-0`.
        first_name: Mutex<&'static str>,
    }

    impl Paged {
        fn new(pages: usize) -> Self {
            Self {
                pages,
                calls: Mutex::default(),
                fail_calls: vec![],
                hold_page: None,
                gate: tokio::sync::Semaphore::new(0),
                in_list: AtomicUsize::new(0),
                first_name: Mutex::new("listed"),
            }
        }

        fn pages_asked(&self) -> Vec<usize> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Backend for Paged {
        fn name(&self) -> &'static str {
            "paged"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                identity: Identity::OperatorChosen,
                secret_source: SecretSource::OperatorGenerated,
                rotation: Rotation::OperatorSets,
                drift: DriftSource::ListAll,
                owner_marker: OwnerMarker::Metadata,
                given_credentials: false,
                grace_period: false,
                new_client: false,
            }
        }
        fn check_supported(&self, _: &DesiredClient) -> Result<(), ProviderError> {
            Ok(())
        }
        fn diff(&self, _: &DesiredClient, _: &RemoteClient) -> Vec<&'static str> {
            vec![]
        }
        async fn create(
            &self,
            _: &DesiredClient,
            _: &Registration<'_>,
        ) -> Result<IssuedClient, ProviderError> {
            unreachable!("the inventory only lists")
        }
        async fn get(&self, _: &str) -> Result<RemoteClient, ProviderError> {
            unreachable!("the inventory only lists")
        }
        async fn update(
            &self,
            _: &str,
            _: &DesiredClient,
            _: &str,
        ) -> Result<RemoteClient, ProviderError> {
            unreachable!("the inventory only lists")
        }
        async fn delete(&self, _: &str) -> Result<(), ProviderError> {
            unreachable!("the inventory only lists")
        }
        async fn check_reachable(&self) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn list_page(&self, from: Option<&PageCursor>) -> Result<ClientPage, ProviderError> {
            let page: usize = from.map_or(0, |c| c.0.parse().unwrap());
            let call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(page);
                calls.len() - 1
            };
            self.in_list.fetch_add(1, Ordering::SeqCst);
            if self.hold_page == Some(page) {
                self.gate.acquire().await.unwrap().forget();
            }
            tokio::task::yield_now().await;
            self.in_list.fetch_sub(1, Ordering::SeqCst);
            if self.fail_calls.contains(&call) {
                return Err(ProviderError::Unavailable {
                    operation: "list",
                    outcome_unknown: false,
                    message: "injected".into(),
                });
            }
            Ok(ClientPage {
                clients: (0..10)
                    .map(|k| match (page, k) {
                        (0, 0) => client("c0-0", &self.first_name.lock().unwrap()),
                        _ => client(&format!("c{page}-{k}"), "listed"),
                    })
                    .collect(),
                next: (page + 1 < self.pages).then(|| PageCursor((page + 1).to_string())),
            })
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_list_cut_short_goes_on_from_the_page_that_failed() {
        let mut paged = Paged::new(20);
        paged.fail_calls = vec![14];
        let paged = Arc::new(paged);
        let backend: SharedBackend = paged.clone();
        let inventory = Inventory::default();
        let err = inventory.lookup("s", &backend, "c19-3", HOUR).await;
        assert!(err.is_err(), "page 14 failed");
        let found = inventory
            .lookup("s", &backend, "c19-3", HOUR)
            .await
            .unwrap();
        assert_eq!(found.unwrap().0.id, "c19-3");
        let found = inventory.lookup("s", &backend, "c0-0", HOUR).await.unwrap();
        assert!(found.is_some(), "the pages before the failure are kept");
        let mut expected: Vec<usize> = (0..15).collect();
        expected.extend(14..20);
        assert_eq!(paged.pages_asked(), expected, "page 14 again, not page 0");
    }

    #[tokio::test]
    async fn a_list_cut_short_long_ago_starts_over() {
        let mut paged = Paged::new(3);
        paged.fail_calls = vec![1];
        let paged = Arc::new(paged);
        let backend: SharedBackend = paged.clone();
        let inventory = Inventory::default();
        assert!(inventory.lookup("s", &backend, "c2-0", HOUR).await.is_err());
        // A max age shorter than the failed list's age: its pages are too old to keep.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let max_age = Duration::from_millis(10);
        assert!(
            inventory
                .lookup("s", &backend, "c2-0", max_age)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(paged.pages_asked(), vec![0, 1, 0, 1, 2]);
    }

    #[tokio::test]
    async fn a_new_list_shares_the_clients_that_did_not_change_and_shows_those_that_did() {
        let paged = Arc::new(Paged::new(2));
        let backend: SharedBackend = paged.clone();
        let inventory = Inventory::default();
        let found = inventory.lookup("s", &backend, "c0-0", HOUR).await.unwrap();
        assert_eq!(found.unwrap().0.name, "listed");
        let held = |id: &str| {
            let server = inventory.server("s");
            let known = server.known.read().unwrap();
            known.snapshot.as_ref().unwrap().clients[id].clone()
        };
        let (before_same, before_changed) = (held("c1-3"), held("c0-0"));

        *paged.first_name.lock().unwrap() = "renamed";
        let found = inventory
            .lookup("s", &backend, "c0-0", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(found.unwrap().0.name, "renamed", "the new list's answer");
        assert_eq!(paged.pages_asked(), vec![0, 1, 0, 1], "listed twice");
        assert!(
            Arc::ptr_eq(&before_same, &held("c1-3")),
            "an unchanged client is one copy"
        );
        assert!(!Arc::ptr_eq(&before_changed, &held("c0-0")));
        assert_eq!(
            before_changed.name, "listed",
            "the old copy is left as it was"
        );
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_list() {
        let paged = Arc::new(Paged::new(5));
        let backend: SharedBackend = paged.clone();
        let inventory = Arc::new(Inventory::default());
        let lookups: Vec<_> = (0..50)
            .map(|i| {
                let (inventory, backend) = (inventory.clone(), backend.clone());
                tokio::spawn(async move {
                    let id = format!("c{}-{}", i % 5, i % 10);
                    inventory.lookup("s", &backend, &id, HOUR).await
                })
            })
            .collect();
        for l in lookups {
            assert!(l.await.unwrap().unwrap().is_some());
        }
        assert_eq!(paged.pages_asked(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn writes_and_fresh_reads_do_not_wait_behind_a_list_and_survive_it() {
        let mut paged = Paged::new(3);
        paged.hold_page = Some(1);
        let paged = Arc::new(paged);
        let backend: SharedBackend = paged.clone();
        let inventory = Arc::new(Inventory::default());
        // A first, complete list (page 1 let through once).
        paged.gate.add_permits(1);
        inventory.lookup("s", &backend, "c0-0", HOUR).await.unwrap();
        // A second list (max age zero: always due) is held at page 1.
        let listing = {
            let (inventory, backend) = (inventory.clone(), backend.clone());
            tokio::spawn(async move {
                inventory
                    .lookup("s", &backend, "c0-1", Duration::ZERO)
                    .await
            })
        };
        while paged.pages_asked().len() < 5 || paged.in_list.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Meanwhile: a read of the fresh snapshot, an update of a client on a page already
        // read (page 0), a deletion of one on a page not read yet (page 2), and a create.
        let quick = Duration::from_secs(1);
        let read = tokio::time::timeout(quick, inventory.lookup("s", &backend, "c2-0", HOUR));
        assert!(read.await.expect("not held up").unwrap().is_some());
        inventory.upsert("s", &client("c0-1", "renamed"));
        inventory.remove("s", "c2-5");
        inventory.upsert("s", &client("new", "created"));
        // The list completes; its pages predate those writes, which must still show.
        paged.gate.add_permits(1);
        let found = listing.await.unwrap().unwrap().unwrap();
        assert_eq!(found.0.name, "renamed");
        let get = |id: &'static str| {
            let (inventory, backend) = (inventory.clone(), backend.clone());
            async move { inventory.lookup("s", &backend, id, HOUR).await.unwrap() }
        };
        assert!(get("c2-5").await.is_none(), "deleted during the list");
        assert_eq!(get("new").await.unwrap().0.name, "created");
        assert_eq!(get("c2-6").await.unwrap().0.name, "listed");
        assert_eq!(paged.pages_asked(), vec![0, 1, 2, 0, 1, 2]);
    }
}
