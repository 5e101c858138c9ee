//! Leader election on a `coordination.k8s.io/v1` Lease, and the fence every provider write
//! passes. Expiry is judged as client-go does, by the local clock: a Lease whose record
//! (resourceVersion) has not changed for its duration since we first saw it is free. Writes
//! use the resourceVersion read (optimistic concurrency), so two candidates cannot both win.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// Whether this process may still write to authorization servers: it renewed the lease less
/// than the lease duration minus a safety margin ago, by the local clock. Open when leader
/// election is off.
pub struct Fence {
    valid_for: Option<Duration>,
    last_renew: Mutex<Option<Instant>>,
}

impl Default for Fence {
    /// Always open (leader election off).
    fn default() -> Self {
        Self {
            valid_for: None,
            last_renew: Mutex::new(None),
        }
    }
}

impl Fence {
    /// Closed until the first renewal; open for three quarters of `lease_duration` after it.
    pub fn for_lease(lease_duration: Duration) -> Self {
        Self {
            valid_for: Some(lease_duration.mul_f64(0.75)),
            last_renew: Mutex::new(None),
        }
    }

    /// `Err` with a message when a provider write must not be sent.
    pub fn check(&self) -> Result<(), String> {
        let Some(valid_for) = self.valid_for else {
            return Ok(());
        };
        match *self.last_renew.lock().unwrap() {
            Some(at) if at.elapsed() < valid_for => Ok(()),
            Some(at) => Err(format!(
                "not sent: the leader lease was last renewed {:.1}s ago (fenced after {:.1}s)",
                at.elapsed().as_secs_f64(),
                valid_for.as_secs_f64()
            )),
            None => Err("not sent: this replica does not hold the leader lease".into()),
        }
    }

    /// A renewal sent at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        *self.last_renew.lock().unwrap() = Some(sent);
    }

    /// Closes the fence at once (released or lost).
    pub fn close(&self) {
        *self.last_renew.lock().unwrap() = None;
    }
}

/// A Kubernetes client whose writes (anything but GET and HEAD) must pass `fence`: a replica
/// that is not, or may no longer be, the leader changes nothing in the cluster either (no
/// status, no Secret written from a stale view). The elector keeps its own, unfenced client.
pub fn fenced_client(config: kube::Config, fence: Arc<Fence>) -> anyhow::Result<kube::Client> {
    let layer = tower::filter::FilterLayer::new(
        move |request: http::Request<kube::client::Body>| -> Result<_, tower::BoxError> {
            if request.method().is_safe() {
                return Ok(request);
            }
            fence.check().map(|()| request).map_err(Into::into)
        },
    );
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

/// Who competes for which Lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// `POD_NAME`, else the hostname with a random suffix.
pub fn default_identity() -> String {
    if let Ok(name) = std::env::var("POD_NAME")
        && !name.is_empty()
    {
        return name;
    }
    use rand::distr::{Alphanumeric, SampleString};
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "oauth-operator".into());
    format!(
        "{host}-{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 6)
            .to_lowercase()
    )
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The record last read and when it was first seen with that resourceVersion.
    observed: Option<(String, Instant)>,
    held: Option<Lease>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            held: None,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let ours =
            previous.and_then(|s| s.holder_identity.as_deref()) == Some(self.cfg.identity.as_str());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        }
    }

    /// Creates the Lease with this candidate as holder: `Ok(false)` when another created it
    /// first (a create is atomic, so at most one candidate wins).
    async fn create(&mut self, fence: &Fence, sent: Instant) -> anyhow::Result<bool> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.cfg.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec(None)),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(lease) => {
                fence.renewed(sent);
                self.held = Some(lease);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt: `Ok(true)` once we hold the Lease.
    async fn try_acquire(&mut self, fence: &Fence) -> anyhow::Result<bool> {
        let sent = Instant::now();
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            return self.create(fence, sent).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                self.observed = Some((rv, sent));
                sent
            }
        };
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let free =
            holder.is_empty() || holder == self.cfg.identity || first_seen.elapsed() > duration;
        if !free {
            return Ok(false);
        }
        let mut next = lease.clone();
        next.spec = Some(self.spec(Some(&spec)));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(lease) => {
                fence.renewed(sent);
                self.held = Some(lease);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&mut self, fence: &Fence) {
        let retry = (self.cfg.duration / 5).max(Duration::from_millis(200));
        loop {
            match self.try_acquire(fence).await {
                Ok(true) => {
                    tracing::info!(holder = %self.cfg.identity, lease = %self.cfg.name, "acquired lease");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading the leader lease"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews every third of the duration; returns when the Lease is lost (another holder, or
    /// no successful renewal for two thirds of the duration).
    pub async fn keep(&mut self, fence: &Fence) {
        let period = self.cfg.duration / 3;
        let deadline = self.cfg.duration.mul_f64(2.0 / 3.0);
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(period.min(Duration::from_secs(2))).await;
            if last_ok.elapsed() > deadline {
                tracing::error!(holder = %self.cfg.identity, "lost lease (not renewed within the deadline)");
                fence.close();
                return;
            }
            let Some(held) = self.held.clone() else {
                return;
            };
            let sent = Instant::now();
            let mut next = held.clone();
            next.spec = Some(self.spec(held.spec.as_ref()));
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &next)
                .await
            {
                Ok(lease) => {
                    fence.renewed(sent);
                    last_ok = sent;
                    self.held = Some(lease);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    // The Lease changed since our last write. Still ours (a renewal whose
                    // answer was lost): carry on from the current record. Anyone else's: lost.
                    // Gone (deleted by hand): take it back if nobody has, as client-go does;
                    // whoever creates it first holds it.
                    let current = match self.api.get_opt(&self.cfg.name).await {
                        Ok(current) => current,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading the leader lease");
                            continue;
                        }
                    };
                    let Some(current) = current else {
                        match self.create(fence, sent).await {
                            Ok(true) => {
                                tracing::warn!(holder = %self.cfg.identity, "the leader lease was deleted: created it again");
                                last_ok = sent;
                                continue;
                            }
                            Ok(false) => {
                                tracing::error!(holder = %self.cfg.identity, "lost lease (deleted, and another candidate created it)");
                                fence.close();
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "creating the deleted leader lease");
                                continue;
                            }
                        }
                    };
                    let holder = current
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.clone());
                    if holder.as_deref() == Some(self.cfg.identity.as_str()) {
                        self.held = Some(current);
                        continue;
                    }
                    tracing::error!(holder = %self.cfg.identity, new_holder = ?holder, "lost lease");
                    fence.close();
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
            }
        }
    }

    /// Gives the Lease up so a standby takes it at once.
    pub async fn release(&mut self, fence: &Fence) {
        fence.close();
        let Some(held) = self.held.take() else {
            return;
        };
        let mut next = held;
        if let Some(spec) = next.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
        }
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => tracing::info!(holder = %self.cfg.identity, "released lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_is_closed_until_renewed_and_after_three_quarters_of_the_lease() {
        let fence = Fence::for_lease(Duration::from_millis(400));
        assert!(fence.check().is_err(), "open before the first renewal");
        fence.renewed(Instant::now());
        assert!(fence.check().is_ok());
        std::thread::sleep(Duration::from_millis(320));
        let err = fence.check().expect_err("open past 3/4 of the lease");
        assert!(err.contains("last renewed"), "{err}");
        fence.renewed(Instant::now());
        assert!(fence.check().is_ok());
        fence.close();
        assert!(fence.check().is_err(), "open after close");
    }

    #[test]
    fn without_leader_election_the_fence_is_always_open() {
        let fence = Fence::default();
        assert!(fence.check().is_ok());
        fence.close();
        assert!(fence.check().is_ok());
    }

    #[test]
    fn a_renewal_counts_from_when_it_was_sent() {
        let fence = Fence::for_lease(Duration::from_millis(400));
        // Sent 350 ms ago (a slow answer): already past 3/4 of the lease.
        fence.renewed(Instant::now() - Duration::from_millis(350));
        assert!(fence.check().is_err());
    }
}
