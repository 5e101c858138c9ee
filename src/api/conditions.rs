//! Status conditions following the Kubernetes API conventions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition type: the object is reconciled and usable.
pub const READY: &str = "Ready";
/// Condition type (kstatus): work is in progress (registering, waiting for a pending
/// registration, retrying a transient error).
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): a permanent failure that only a change (of the spec, the
/// provider, a Secret) can end.
pub const STALLED: &str = "Stalled";
/// Condition type (`OAuthApplication`): the client at the provider differs from the spec.
pub const DRIFTED: &str = "Drifted";
/// Condition type (providers): the admin credential Secret exists and has the key.
pub const CREDENTIALS_FOUND: &str = "CredentialsFound";
/// Condition type (providers): the provider's API answered an authenticated request.
pub const ENDPOINT_REACHABLE: &str = "EndpointReachable";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// A condition with `lastTransitionTime` now; [`set_condition`] keeps the old time when the
/// status did not change.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { TRUE } else { FALSE }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        // Whole seconds: what the API serializes, so a re-read compares equal.
        last_transition_time: Time(
            Timestamp::from_second(Timestamp::now().as_second())
                .unwrap_or_else(|_| Timestamp::now()),
        ),
    }
}

/// Inserts or replaces the condition of the same type, keeping `lastTransitionTime` when the
/// status is unchanged (only a change of status is a transition).
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Equal except for `lastTransitionTime` (linkerd's `eq_time_insensitive_conditions`): used to
/// skip a status patch that would only move timestamps.
pub fn eq_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_only_moves_when_status_changes() {
        let mut conds = vec![];
        let mut first = new_condition(READY, false, "ProviderUnavailable", "down", Some(1));
        first.last_transition_time = Time(Timestamp::from_second(1_700_000_000).unwrap());
        let t0 = first.last_transition_time.clone();
        set_condition(&mut conds, first);
        set_condition(
            &mut conds,
            new_condition(READY, false, "RateLimited", "slow", Some(1)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t0);
        assert_eq!(conds[0].reason, "RateLimited");
        set_condition(
            &mut conds,
            new_condition(READY, true, "Reconciled", "ok", Some(1)),
        );
        assert_ne!(conds[0].last_transition_time, t0);
    }

    #[test]
    fn equality_ignores_only_time() {
        let a = vec![new_condition(READY, true, "Reconciled", "ok", Some(2))];
        let mut b = a.clone();
        b[0].last_transition_time =
            Time(Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(60));
        assert!(eq_ignoring_time(&a, &b));
        b[0].message = "other".into();
        assert!(!eq_ignoring_time(&a, &b));
    }
}
