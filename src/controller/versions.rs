//! What this process knows of each application's `resourceVersion`, so that a pass costs the
//! apiserver nothing it need not:
//!
//! - **No quorum read of an application the watch already shows as this process left it.**
//!   A pass must never act on a copy older than its own last write (a pending registration,
//!   an id, an answered rotation token would be missing from it). The version this process
//!   last read with a quorum read, or got back from its own write, is kept; a watched copy at
//!   exactly that version is that object, so the pass uses it. Any other version (older, or
//!   someone else's newer write) is read again. A write whose answer was lost forgets the
//!   version, since the object may have moved on.
//! - **No pass at all for an event that brings nothing new.** After a successful pass the
//!   versions it saw (the application's, as it left it, and its Secret's) are kept with the
//!   time it asked to be back. An event that finds both unchanged (the watch delivering the
//!   operator's own status write, a relist) ends there, with the same time to be back. Any
//!   change of the application (spec, annotations, deletion, status) or of its Secret (the
//!   owned-Secret watch: a deletion, an edit) runs a pass, and so does anything a watch maps
//!   to the application from elsewhere (a provider, a credential Secret, a namespace's
//!   labels), which forgets the record.
//!
//! Keyed by object reference, and every record carries the uid it was made for, so that an
//! object deleted and created again under the same name starts afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::api::OAuthApplication;

#[derive(Default)]
pub struct Versions {
    /// By [`slot`]: `namespace/name`.
    apps: Mutex<HashMap<Box<str>, Known>>,
}

/// Where an application's record is kept: its namespace and name (a reference's version and
/// uid are not part of its identity), in one small string.
fn slot(key: &ObjectRef<OAuthApplication>) -> Box<str> {
    format!("{}/{}", key.namespace.as_deref().unwrap_or(""), key.name).into()
}

/// A `resourceVersion`, kept small: thousands of applications each hold a handful. The
/// apiserver's are decimal numbers (kept as one); anything else is kept as given. Opaque
/// either way: only compared for equality, never ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Version {
    Number(u64),
    Text(Box<str>),
}

impl Version {
    fn new(v: &str) -> Self {
        // Only the canonical form: "007" and "7" are different versions.
        match v.parse::<u64>() {
            Ok(n) if n.to_string() == v => Self::Number(n),
            _ => Self::Text(v.into()),
        }
    }

    fn is(&self, v: &str) -> bool {
        *self == Self::new(v)
    }
}

struct Known {
    uid: Box<str>,
    /// As this process last read it (quorum) or wrote it; `None` after a write whose answer
    /// was lost.
    app: Option<Version>,
    /// Every version the pass under way started from, read or wrote.
    seen: Vec<Version>,
    settled: Option<Box<Settled>>,
    /// How often something outside the application woke it (see [`Versions::unsettle`]): a
    /// pass settles only if none came while it ran.
    wakes: u64,
    /// `wakes` when the last pass began.
    began: u64,
}

struct Settled {
    /// The versions the pass started from, read and wrote, the last one it left included: a
    /// watched copy at an earlier one of them is the watch catching up with that pass.
    app: Vec<Version>,
    secret: Version,
    until: Instant,
}

impl Versions {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Box<str>, Known>) -> T) -> T {
        f(&mut self.apps.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn entry<'m>(
        apps: &'m mut HashMap<Box<str>, Known>,
        key: &ObjectRef<OAuthApplication>,
        uid: &str,
    ) -> &'m mut Known {
        let fresh = || Known {
            uid: uid.into(),
            app: None,
            seen: Vec::new(),
            settled: None,
            wakes: 0,
            began: 0,
        };
        let known = apps.entry(slot(key)).or_insert_with(fresh);
        if &*known.uid != uid {
            *known = fresh();
        }
        known
    }

    /// A pass begins: whatever it finds, only its own end settles the application again.
    /// Returns the wake count to hand to [`Versions::settle`].
    pub fn begin(&self, key: &ObjectRef<OAuthApplication>, uid: &str) -> u64 {
        self.with(|apps| {
            let known = Self::entry(apps, key, uid);
            known.settled = None;
            known.seen = known.app.iter().cloned().collect();
            known.began = known.wakes;
            known.wakes
        })
    }

    /// Whether a copy of the application at `version` is as this process last read or wrote
    /// it.
    pub fn is_current(
        &self,
        key: &ObjectRef<OAuthApplication>,
        uid: &str,
        version: Option<&str>,
    ) -> bool {
        let Some(version) = version else { return false };
        self.with(|apps| {
            apps.get(&slot(key))
                .is_some_and(|k| &*k.uid == uid && k.app.as_ref().is_some_and(|a| a.is(version)))
        })
    }

    /// The application's version as just read (quorum) or written; `None` before a write
    /// (until its answer says which version it made) and after one whose answer was lost.
    pub fn note(&self, key: &ObjectRef<OAuthApplication>, uid: &str, version: Option<String>) {
        self.with(|apps| {
            let known = Self::entry(apps, key, uid);
            let version = version.as_deref().map(Version::new);
            if let Some(v) = &version
                && !known.seen.contains(v)
                && known.seen.len() < 16
            {
                known.seen.push(v.clone());
            }
            known.app = version;
        });
    }

    /// A pass that began at wake count `began` (see [`Versions::begin`]) succeeded, leaving
    /// the application at the version last noted and having found its Secret at `secret`
    /// (`None`: it had none, and then nothing is settled: its creation is news); it asked to be
    /// back after `delay`. Nothing is settled if the application was woken meanwhile.
    pub fn settle(
        &self,
        key: &ObjectRef<OAuthApplication>,
        uid: &str,
        began: u64,
        secret: Option<&str>,
        delay: Duration,
    ) {
        self.with(|apps| {
            let Some(known) = apps.get_mut(&slot(key)).filter(|k| &*k.uid == uid) else {
                return;
            };
            if known.wakes != began {
                // Woken while the pass ran: what woke it may not have been seen.
                known.settled = None;
                return;
            }
            known.settled = match (&known.app, secret) {
                (Some(_), Some(secret)) => Some(Box::new(Settled {
                    app: known.seen.clone(),
                    secret: Version::new(secret),
                    until: Instant::now() + delay,
                })),
                _ => None,
            };
        });
    }

    /// Something outside the application and its Secret changed (a provider, a credential
    /// Secret, a namespace): the next event runs a pass.
    pub fn unsettle(&self, key: &ObjectRef<OAuthApplication>) {
        self.with(|apps| {
            if let Some(known) = apps.get_mut(&slot(key)) {
                known.settled = None;
                known.wakes += 1;
            }
        });
    }

    /// Something it depends on became available (a provider turned Ready): a pass under way
    /// that fails retries at once, but what the last successful pass settled stays.
    pub fn woke(&self, key: &ObjectRef<OAuthApplication>) {
        self.with(|apps| {
            if let Some(known) = apps.get_mut(&slot(key)) {
                known.wakes += 1;
            }
        });
    }

    /// Whether something woke the application while its last pass ran (that pass may have
    /// failed for want of what the wake brought: its retry must not wait out a backoff).
    pub fn woken_during_pass(&self, key: &ObjectRef<OAuthApplication>) -> bool {
        self.with(|apps| apps.get(&slot(key)).is_some_and(|k| k.wakes != k.began))
    }

    /// The application is gone.
    pub fn forget(&self, key: &ObjectRef<OAuthApplication>) {
        self.with(|apps| apps.remove(&slot(key)));
    }

    /// `Some(left)` when the application is at a version the last successful pass started
    /// from, read or wrote (the watch delivering that pass's own writes, possibly one by one)
    /// and its Secret at the version that pass left; that pass asked to be back in `left`:
    /// this event brings nothing new. (A write of that pass that came back with someone
    /// else's change settles nothing: see [`super::status::StatusWriter::overtaken`].)
    pub fn unchanged_since_settled(
        &self,
        key: &ObjectRef<OAuthApplication>,
        uid: &str,
        app: Option<&str>,
        secret: Option<&str>,
    ) -> Option<Duration> {
        self.with(|apps| {
            let known = apps.get(&slot(key)).filter(|k| &*k.uid == uid)?;
            let settled = known.settled.as_ref()?;
            let left = settled.until.checked_duration_since(Instant::now())?;
            (app.is_some_and(|v| settled.app.iter().any(|s| s.is(v)))
                && secret.is_some_and(|v| settled.secret.is(v))
                && !left.is_zero())
            .then_some(left)
        })
    }

    /// How many applications are tracked (for tests).
    pub fn len(&self) -> usize {
        self.with(|apps| apps.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectRef<OAuthApplication> {
        ObjectRef::new("app").within("ns")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_copy_is_current_only_at_the_version_last_read_or_written() {
        let v = Versions::default();
        assert!(!v.is_current(&key(), "u1", Some("10")), "nothing known yet");
        v.note(&key(), "u1", Some("10".into()));
        assert!(v.is_current(&key(), "u1", Some("10")));
        assert!(
            !v.is_current(&key(), "u1", Some("9")),
            "older than our read"
        );
        assert!(
            !v.is_current(&key(), "u1", Some("11")),
            "someone else's write"
        );
        assert!(
            !v.is_current(&key(), "u2", Some("10")),
            "another object of that name"
        );
        assert!(!v.is_current(&key(), "u1", None));
        // A write in flight (or whose answer was lost): nothing is current.
        v.note(&key(), "u1", None);
        assert!(!v.is_current(&key(), "u1", Some("10")));
        v.note(&key(), "u1", Some("12".into()));
        assert!(v.is_current(&key(), "u1", Some("12")));
    }

    #[test]
    fn only_an_event_that_changes_nothing_is_skipped() {
        let v = Versions::default();
        v.note(&key(), "u1", Some("12".into()));
        v.settle(&key(), "u1", 0, Some("s5"), HOUR);
        let left = v
            .unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
            .expect("our own write coming back");
        assert!(left > HOUR - Duration::from_secs(5) && left <= HOUR);
        // The application changed, the Secret changed or went, another object of that name.
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("13"), Some("s5"))
                .is_none()
        );
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s6"))
                .is_none()
        );
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), None)
                .is_none()
        );
        assert!(
            v.unchanged_since_settled(&key(), "u2", Some("12"), Some("s5"))
                .is_none()
        );
        // Something elsewhere changed.
        v.unsettle(&key());
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_none()
        );
        assert!(
            v.is_current(&key(), "u1", Some("12")),
            "the version is still known"
        );
    }

    #[test]
    fn nothing_is_settled_without_a_secret_or_a_known_version_or_after_the_time_asked() {
        let v = Versions::default();
        v.note(&key(), "u1", Some("12".into()));
        v.settle(&key(), "u1", 0, None, HOUR);
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), None)
                .is_none()
        );
        v.note(&key(), "u1", None);
        v.settle(&key(), "u1", 0, Some("s5"), HOUR);
        assert!(
            v.unchanged_since_settled(&key(), "u1", None, Some("s5"))
                .is_none()
        );
        v.note(&key(), "u1", Some("12".into()));
        v.settle(&key(), "u1", 0, Some("s5"), Duration::ZERO);
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_none(),
            "due: the resync runs"
        );
        // A recreated object under the same name starts afresh.
        v.settle(&key(), "u1", 0, Some("s5"), HOUR);
        v.note(&key(), "u2", Some("1".into()));
        assert!(
            v.unchanged_since_settled(&key(), "u2", Some("1"), Some("s5"))
                .is_none()
        );
        v.forget(&key());
        assert!(v.is_empty());
    }

    #[test]
    fn a_wake_during_a_pass_keeps_the_next_event_running() {
        let v = Versions::default();
        let began = v.begin(&key(), "u1");
        v.note(&key(), "u1", Some("12".into()));
        // A provider changed while the pass ran: it may have read the provider before that.
        v.unsettle(&key());
        v.settle(&key(), "u1", began, Some("s5"), HOUR);
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_none()
        );
        // The next pass, undisturbed, settles.
        let began = v.begin(&key(), "u1");
        v.settle(&key(), "u1", began, Some("s5"), HOUR);
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_some()
        );
        // A pass that begins clears what the last one settled, whatever it then finds.
        v.begin(&key(), "u1");
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_none()
        );
    }

    #[test]
    fn the_watch_catching_up_with_a_pass_is_no_news() {
        let v = Versions::default();
        v.note(&key(), "u1", Some("10".into()));
        let began = v.begin(&key(), "u1");
        v.note(&key(), "u1", None); // a write in flight
        v.note(&key(), "u1", Some("11".into()));
        v.note(&key(), "u1", None);
        v.note(&key(), "u1", Some("13".into()));
        v.settle(&key(), "u1", began, Some("s5"), HOUR);
        for seen in ["10", "11", "13"] {
            assert!(
                v.unchanged_since_settled(&key(), "u1", Some(seen), Some("s5"))
                    .is_some(),
                "{seen}: the pass's own"
            );
        }
        // 12: someone else's write between the pass's two (the second's answer held it, so
        // the pass would not have settled; here: it is not one of the pass's versions).
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("12"), Some("s5"))
                .is_none()
        );
        assert!(
            v.unchanged_since_settled(&key(), "u1", Some("14"), Some("s5"))
                .is_none()
        );
        assert!(v.is_current(&key(), "u1", Some("13")));
        assert!(
            !v.is_current(&key(), "u1", Some("11")),
            "a read needs the last one"
        );
    }

    #[test]
    fn a_wake_during_a_failing_pass_is_remembered_for_its_retry() {
        let v = Versions::default();
        v.begin(&key(), "u1");
        assert!(!v.woken_during_pass(&key()));
        v.unsettle(&key());
        assert!(v.woken_during_pass(&key()));
        v.begin(&key(), "u1");
        assert!(!v.woken_during_pass(&key()), "the next pass saw it");
    }

    #[test]
    fn versions_compare_as_the_strings_they_were() {
        for (a, b, same) in [
            ("10", "10", true),
            ("10", "11", false),
            ("007", "7", false),
            ("7", "007", false),
            ("abc", "abc", true),
            ("18446744073709551616", "18446744073709551616", true),
            ("", "", true),
            ("", "0", false),
        ] {
            assert_eq!(Version::new(a).is(b), same, "{a:?} against {b:?}");
            assert_eq!(Version::new(a) == Version::new(b), same, "{a:?} == {b:?}");
        }
        assert_eq!(Version::new("42"), Version::Number(42));
    }

    #[test]
    fn a_reference_carrying_a_version_and_uid_finds_the_same_record() {
        let v = Versions::default();
        let mut full = key();
        full.extra.resource_version = Some("10".into());
        full.extra.uid = Some("u1".into());
        v.note(&full, "u1", Some("10".into()));
        assert!(v.is_current(&key(), "u1", Some("10")));
        let stored = v.with(|apps| apps.keys().next().cloned());
        assert_eq!(stored.as_deref(), Some("ns/app"));
    }
}
