//! Status writes: server-side apply with a named field manager, skipped when nothing but
//! timestamps (condition transition times, `lastSyncTime`) would change, so a resync that
//! finds everything in order writes nothing and does not wake the controller again.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::context::trigger_fingerprint;
use super::error::Result;
use super::versions::Versions;
use crate::api::conditions::eq_ignoring_time;
use crate::api::{OAuthApplication, OAuthApplicationStatus};

pub const FIELD_MANAGER: &str = "oauth-operator";

/// Whether two statuses differ in anything but condition transition times and
/// `lastSyncTime` (a time alone is no news: it rides along with the next real change).
pub fn status_changed(old: Option<&OAuthApplicationStatus>, new: &OAuthApplicationStatus) -> bool {
    let Some(old) = old else { return true };
    let mut a = old.clone();
    let mut b = new.clone();
    if !eq_ignoring_time(&a.conditions, &b.conditions) {
        return true;
    }
    a.conditions.clear();
    b.conditions.clear();
    a.last_sync_time = None;
    b.last_sync_time = None;
    a != b
}

/// Writes an application's status within one pass, remembering what the server holds (the
/// status read at the start of the pass, then each write), so that a write is skipped only
/// when it would really change nothing; and noting in `versions` the version each write
/// makes (none while it is in flight or when its answer was lost).
pub struct StatusWriter<'a> {
    api: &'a Api<OAuthApplication>,
    name: String,
    key: ObjectRef<OAuthApplication>,
    uid: String,
    versions: &'a Versions,
    last: Option<OAuthApplicationStatus>,
    /// What the pass started from, as far as its triggers go (see [`trigger_fingerprint`]),
    /// and its finalizers.
    fingerprint: u64,
    finalizers: Vec<String>,
    /// A write came back with a change of someone else's (spec, annotations, deletion,
    /// finalizers).
    overtaken: bool,
    /// The application's wake count when the pass began (see [`Versions::begin`]).
    began: u64,
}

impl<'a> StatusWriter<'a> {
    /// `began`: what [`Versions::begin`] said when the pass began.
    pub fn new(
        api: &'a Api<OAuthApplication>,
        app: &OAuthApplication,
        versions: &'a Versions,
        began: u64,
    ) -> Self {
        let key = ObjectRef::from_obj(app);
        let uid = app.metadata.uid.clone().unwrap_or_default();
        Self {
            api,
            name: app.name_any(),
            key,
            uid,
            versions,
            last: app.status.clone(),
            fingerprint: trigger_fingerprint(app),
            finalizers: app.finalizers().to_vec(),
            overtaken: false,
            began,
        }
    }

    /// Whether a write of this pass came back with a change it did not start from.
    pub fn overtaken(&self) -> bool {
        self.overtaken
    }

    /// The wake count when this pass began.
    pub fn began(&self) -> u64 {
        self.began
    }

    /// Applies the whole status this manager owns, unless nothing but timestamps changed.
    pub async fn write(&mut self, status: &OAuthApplicationStatus) -> Result<()> {
        if !status_changed(self.last.as_ref(), status) {
            return Ok(());
        }
        self.versions.note(&self.key, &self.uid, None);
        let written = apply_status::<OAuthApplication, _>(self.api, &self.name, status).await?;
        self.versions
            .note(&self.key, &self.uid, written.resource_version());
        if trigger_fingerprint(&written) != self.fingerprint
            || written.finalizers() != self.finalizers.as_slice()
        {
            self.overtaken = true;
        }
        self.last = Some(status.clone());
        Ok(())
    }
}

/// Server-side apply of `{apiVersion, kind, status}` on the status subresource; the object as
/// written.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Ok(api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{READY, new_condition};

    #[test]
    fn only_timestamps_changing_is_no_change() {
        let mut a = OAuthApplicationStatus {
            client_id: Some("c".into()),
            conditions: vec![new_condition(READY, true, "Reconciled", "ok", Some(1))],
            ..Default::default()
        };
        let mut b = a.clone();
        b.conditions[0].last_transition_time.0 += k8s_openapi::jiff::SignedDuration::from_secs(5);
        assert!(!status_changed(Some(&a), &b));
        b.observed_generation = Some(2);
        assert!(status_changed(Some(&a), &b));
        a.observed_generation = Some(2);
        assert!(!status_changed(Some(&a), &b));
        assert!(status_changed(None, &b));
        // A resync that only moves lastSyncTime writes nothing.
        b.last_sync_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(!status_changed(Some(&a), &b));
    }
}
