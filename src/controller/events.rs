//! Kubernetes Events (`events.k8s.io/v1`), a repeat folded into its first event as a series
//! (count and last time), as client-go and kube's `Recorder` do.
//!
//! kube's `Recorder` keeps every event it published for six minutes, whole, and sweeps that
//! cache on every publish: at 10,000 applications registered within six minutes that was
//! about 40 MiB and a pass over every entry per event. This one keeps, per recent event, only
//! what a repeat needs (where the event is, its count, when it was last seen), sweeps at most
//! once a minute, and tracks a bounded number (beyond it a repeat is a new event, as it would
//! be after six minutes). A repeat is the same object, type, reason, action and note: a new
//! note is a new event (kube's key leaves the note out, so a repeat showed the first note).

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};

/// How long a published event takes repeats (client-go and kube: six minutes).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often expired entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The most recent events tracked at once.
const MAX_TRACKED: usize = 16_384;

/// Publishes events; see the module documentation.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    keys: std::hash::RandomState,
    recent: Mutex<Recent>,
}

struct Recent {
    by_key: HashMap<u64, Published>,
    swept: Instant,
}

/// Where a recent event is, and its series so far.
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last_seen: Instant,
}

impl Recorder {
    /// `instance`: this replica (default: the controller's name).
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            keys: std::hash::RandomState::new(),
            recent: Mutex::new(Recent {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn key(&self, ev: &Event, regarding: &ObjectReference) -> u64 {
        let mut h = self.keys.build_hasher();
        (
            &regarding.api_version,
            &regarding.kind,
            &regarding.namespace,
            &regarding.name,
            &regarding.uid,
        )
            .hash(&mut h);
        matches!(ev.type_, EventType::Warning).hash(&mut h);
        (&ev.reason, &ev.action, &ev.note).hash(&mut h);
        h.finish()
    }

    /// Publishes `ev` about `regarding`: a new event, or a repeat counted on the first.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let key = self.key(ev, regarding);
        // The series to extend, if this is a recent repeat (the lock is not held across I/O).
        let repeat = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // At most once a minute, also when full (until then, new events are not tracked).
            if now.duration_since(recent.swept) >= SWEEP_EVERY {
                recent
                    .by_key
                    .retain(|_, p| now.duration_since(p.last_seen) < SERIES_WINDOW);
                recent.by_key.shrink_to_fit();
                recent.swept = now;
            }
            match recent.by_key.get_mut(&key) {
                Some(p) if now.duration_since(p.last_seen) < SERIES_WINDOW => {
                    p.count = p.count.saturating_add(1);
                    p.last_seen = now;
                    Some((p.namespace.clone(), p.name.clone(), p.count))
                }
                _ => None,
            }
        };
        if let Some((namespace, name, count)) = repeat {
            let series = serde_json::json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            }});
            let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (the apiserver's event TTL): published anew below, and tracked anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                    recent.by_key.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let event = self.new_event(ev, regarding);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await?;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.by_key.len() < MAX_TRACKED || recent.by_key.contains_key(&key) {
            recent.by_key.insert(
                key,
                Published {
                    namespace,
                    name,
                    count: 1,
                    last_seen: Instant::now(),
                },
            );
        }
        Ok(())
    }

    fn new_event(&self, ev: &Event, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                // Cluster-scoped objects' events go to `default` (as kube and client-go do).
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(event_name(
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now,
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

/// `NAME.NANOS` (hex), as kube and client-go name events, with `NAME` cut so that the whole
/// stays a valid name (at most 253 characters) for the longest names an object may have.
fn event_name(name: &str, now: Timestamp) -> String {
    let suffix = format!(".{:x}", now.as_nanosecond());
    let mut cut = name.len().min(253 - suffix.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = name[..cut].trim_end_matches(['-', '.']);
    format!("{prefix}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_name_stays_a_valid_name() {
        let now = Timestamp::now();
        let short = event_name("web", now);
        assert!(short.starts_with("web.") && short.len() <= 253);
        let long = format!("{}-{}", "a".repeat(230), "b".repeat(22));
        assert_eq!(long.len(), 253);
        let name = event_name(&long, now);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(!name.contains("-.") && !name.contains(".."), "{name}");
        assert!(name.starts_with(&"a".repeat(230)));
    }
}
