//! The planning step of a pass: pure functions from what was observed to the one thing to do
//! next. No IO here; `application.rs` carries each step out and observes again.
//!
//! Two questions, asked in order:
//! 1. [`identity_step`]: which client at the provider is this application's? It is settled by
//!    a few observations, each cheap and made only when the previous one did not settle it:
//!    staged credentials, the id in status, a pending registration, the Secret's annotations.
//! 2. [`credentials_step`]: once the client is known, what does the Secret need? And where a
//!    new secret is needed, [`new_secret`] says how this backend gives one.
//!
//! [`registration_flow`] says how a client is registered, by the backend's capabilities.
//!
//! The rules that keep a client from being duplicated and a secret from being lost or
//! replaced unasked live here, where a table test can hold them:
//! - staged credentials (issued, not yet delivered) come first, before any new call;
//! - an id is recorded in status before anything depends on it (see `application.rs`);
//! - a pending registration is resolved by the uid-tagged name, never by creating again;
//! - a Secret that exists is never overwritten by a registration nobody asked for.

use crate::providers::{Capabilities, Identity, Rotation, SecretSource};

/// What a Secret of ours holds, as far as the plan cares (values never reach the plan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretFact {
    Missing,
    Present {
        /// The client id the operator wrote it for (its annotation).
        written_for: Option<String>,
        /// The client id in its data (a user may edit it).
        data_client_id: Option<String>,
        /// Whether it has a client secret at all.
        has_secret: bool,
    },
}

/// The result of looking a client up at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    NotYet,
    Present,
    /// Not there (404), or, for a client named only by a Secret's annotations, there but not
    /// proven to be ours.
    Absent,
}

/// What is known about an application's client so far in this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFacts {
    /// Staged credentials exist and their client id is not yet recorded in status.
    pub staged_unrecorded: bool,
    /// Status records the provider's object id.
    pub recorded_id: bool,
    /// The recorded client at the provider.
    pub remote: Lookup,
    /// A create call may have happened without its result being recorded.
    pub pending_registration: bool,
    pub secret: SecretFact,
    /// The client named by the Secret's annotations (only looked at when status lost its id).
    pub from_secret: Lookup,
    /// A new `oauth-operator.dev/rotate` token asks for new credentials.
    pub rotation_requested: bool,
}

/// The next move towards knowing the application's client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityStep {
    /// Record the staged credentials' client id in status (then look it up).
    RecordStaged,
    /// Look up the recorded client (and bring it in line with the spec).
    Sync,
    /// The recorded client is gone and new credentials were asked for: register anew.
    Recreate,
    /// Resolve a pending registration: adopt the client created under the uid-tagged name,
    /// or wait for a late commit, or register.
    ResolvePending,
    /// Status has no id but our Secret names a client: look it up and prove it is ours.
    LookUpFromSecret,
    /// Nothing is registered: register.
    Register,
    /// Known: go on with the credentials.
    Known,
    /// Stop with a condition, changing nothing.
    Refuse(Refusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The recorded client is gone; the credentials are left as they are until a rotation
    /// token asks for a new client.
    ClientGone,
    /// Our Secret exists, status knows no client and the Secret names none that is provably
    /// ours: registering would silently replace credentials that may still work.
    SecretWithoutClient,
}

pub fn identity_step(f: &IdentityFacts) -> IdentityStep {
    if f.staged_unrecorded {
        return IdentityStep::RecordStaged;
    }
    if f.recorded_id {
        return match f.remote {
            Lookup::NotYet => IdentityStep::Sync,
            Lookup::Present => IdentityStep::Known,
            // An id the operator chose is recorded before its create: not there yet.
            Lookup::Absent if f.pending_registration => IdentityStep::ResolvePending,
            Lookup::Absent if f.rotation_requested => IdentityStep::Recreate,
            Lookup::Absent => IdentityStep::Refuse(Refusal::ClientGone),
        };
    }
    if f.pending_registration {
        return IdentityStep::ResolvePending;
    }
    match (&f.secret, f.from_secret) {
        (SecretFact::Missing, _) => IdentityStep::Register,
        (SecretFact::Present { .. }, Lookup::NotYet) => IdentityStep::LookUpFromSecret,
        // Proven ours: the lookup recorded it, so `recorded_id` is set; kept for totality.
        (SecretFact::Present { .. }, Lookup::Present) => IdentityStep::Known,
        (SecretFact::Present { .. }, Lookup::Absent) if f.rotation_requested => {
            IdentityStep::Register
        }
        (SecretFact::Present { .. }, Lookup::Absent) => {
            IdentityStep::Refuse(Refusal::SecretWithoutClient)
        }
    }
}

/// What the Secret needs once the client is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsStep {
    /// Credentials issued in this pass or staged earlier: write them.
    Deliver,
    /// A pass asked the provider for a new secret and did not finish, and nothing was staged:
    /// whether the Secret's secret still works decides between keeping it and recovering.
    Verify,
    /// The Secret is gone, or holds another client's credentials: issue a new secret (a
    /// public client has none: rewrite the Secret).
    Recover,
    /// Someone edited the client id in the Secret: write it back from status; the secret is
    /// left alone.
    Heal,
    /// A rotation was asked for.
    Rotate,
    /// Only labels and annotations may need reconciling.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFacts {
    /// Credentials in hand (just issued, or staged).
    pub in_hand: bool,
    /// Status says new credentials were being issued and not yet delivered (and none are in
    /// hand): the Secret's secret may have been rotated out.
    pub unfinished_issue: bool,
    pub secret: SecretFact,
    pub client_id: String,
    pub public: bool,
    pub rotation_requested: bool,
}

pub fn credentials_step(f: &CredentialFacts) -> CredentialsStep {
    if f.in_hand {
        return CredentialsStep::Deliver;
    }
    let SecretFact::Present {
        written_for,
        data_client_id,
        has_secret,
    } = &f.secret
    else {
        return CredentialsStep::Recover;
    };
    let data_is_ours = data_client_id.as_deref() == Some(f.client_id.as_str());
    if written_for.as_deref() != Some(f.client_id.as_str()) && !data_is_ours {
        // Written for another client (a registration whose write never happened): the secret
        // in it cannot work for this one.
        return CredentialsStep::Recover;
    }
    if !f.public && !has_secret {
        // Its secret is gone from it: only a new one helps.
        return CredentialsStep::Recover;
    }
    if f.unfinished_issue && !f.public {
        return CredentialsStep::Verify;
    }
    if f.rotation_requested && !f.public {
        return CredentialsStep::Rotate;
    }
    if !data_is_ours || written_for.as_deref() != Some(f.client_id.as_str()) {
        // The client id (in the data or the annotation) was edited: written back from
        // status, the secret left as it is.
        return CredentialsStep::Heal;
    }
    CredentialsStep::Keep
}

/// Where a new client secret comes from, once [`credentials_step`] asked for one
/// ([`CredentialsStep::Recover`] or [`CredentialsStep::Rotate`]), by the backend's
/// capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewSecret {
    /// A public client has none: the Secret is rewritten without one.
    None,
    /// The server keeps the current secret readable (Keycloak): a lost Secret gets it back,
    /// and an issue that did happen unrecorded is read rather than repeated. `rotated`: the
    /// value read is a rotation's.
    ReadBack { rotated: bool },
    /// The server issues one on request (Clerk `rotate_secret`, Keycloak `POST client-secret`).
    ServerIssues,
    /// The operator makes one and sets it (Hydra).
    OperatorSets,
    /// Only a new client has a new secret (RFC 7591 with `rotationStrategy: Recreate`).
    Recreate,
    /// No way to a new secret was allowed: a condition.
    Refuse,
}

/// See [`NewSecret`]. `issued_at_server`: a [`CredentialsStep::Verify`] found that an issue
/// which did not finish did happen (the Secret's secret no longer works).
pub fn new_secret(
    step: CredentialsStep,
    caps: &Capabilities,
    public: bool,
    rotation_requested: bool,
    issued_at_server: bool,
) -> NewSecret {
    if public {
        return NewSecret::None;
    }
    // Reading back answers a lost Secret, and an unrecorded rotation; a rotation asked for
    // and not yet made still needs a new value.
    if step == CredentialsStep::Recover
        && caps.secret_source == SecretSource::IssuedReadable
        && (!rotation_requested || issued_at_server)
    {
        return NewSecret::ReadBack {
            rotated: issued_at_server,
        };
    }
    match caps.rotation {
        Rotation::ServerEndpoint => NewSecret::ServerIssues,
        Rotation::OperatorSets => NewSecret::OperatorSets,
        Rotation::Recreate => NewSecret::Recreate,
        Rotation::Unavailable => NewSecret::Refuse,
    }
}

/// How a client is registered, by who chooses its id and secret and what marks its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationFlow {
    /// The operator chooses the id and makes the secret: id recorded, Secret written, then the
    /// create (repeatable; a 409 settled by the owner marker). Hydra.
    SecretFirst,
    /// The operator chooses the id, the server makes the secret and keeps it readable: id
    /// recorded, the create, then the secret read and written. Keycloak.
    ReadAfter,
    /// The server chooses: a pending registration recorded, the create, the secret staged the
    /// moment it exists, the id recorded; after a crash the client is found by its
    /// uid-tagged name (Clerk) or by the operator's record of it (RFC 7591).
    Pending,
}

pub fn registration_flow(caps: &Capabilities) -> RegistrationFlow {
    match (caps.identity, caps.secret_source) {
        (Identity::OperatorChosen, SecretSource::OperatorGenerated) => {
            RegistrationFlow::SecretFirst
        }
        (Identity::OperatorChosen, _) => RegistrationFlow::ReadAfter,
        (Identity::ServerAssigned, _) => RegistrationFlow::Pending,
    }
}

/// When a scheduled rotation is due: one `period` after `anchor` (the last rotation, else the
/// creation of the application), less an offset of up to a tenth of the period fixed by the
/// uid. Applications created together are spread over that tenth, and each keeps rotating
/// at its own steady interval.
pub fn next_rotation(
    anchor: k8s_openapi::jiff::Timestamp,
    period: std::time::Duration,
    uid: &str,
) -> k8s_openapi::jiff::Timestamp {
    // Stable across processes and versions (a std hasher is not).
    let hash = super::access::fnv1a(&[uid]);
    let fraction = (hash % 10_000) as f64 / 10_000.0;
    let interval = period.mul_f64(1.0 - 0.1 * fraction);
    let interval = k8s_openapi::jiff::SignedDuration::try_from(interval)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    anchor
        .checked_add(interval)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_rotations_spread_over_a_tenth_of_the_period() {
        use k8s_openapi::jiff::Timestamp;
        let period = std::time::Duration::from_secs(2160 * 3600);
        let created = Timestamp::from_second(1_800_000_000).unwrap();
        let due: Vec<i64> = (0..1000)
            .map(|i| next_rotation(created, period, &format!("uid-{i}")).as_second())
            .collect();
        let (first, last) = (due.iter().min().unwrap(), due.iter().max().unwrap());
        let p = period.as_secs() as i64;
        // Within [0.9 p, p] of the anchor...
        assert!(*first >= created.as_second() + p * 9 / 10, "{first}");
        assert!(*last <= created.as_second() + p, "{last}");
        // ... and spread: no minute holds more than a handful of the 1,000.
        let mut per_minute = std::collections::BTreeMap::<i64, u32>::new();
        for d in &due {
            *per_minute.entry(d / 60).or_default() += 1;
        }
        let busiest = per_minute.values().max().unwrap();
        assert!(*busiest <= 5, "{busiest} rotations in one minute");
        assert!(last - first > p / 20, "spread over {}s only", last - first);
        // The same uid always gets the same offset.
        assert_eq!(
            next_rotation(created, period, "uid-7"),
            next_rotation(created, period, "uid-7")
        );
    }

    /// The capability sets of the backends (as each declares them).
    fn backends() -> [(&'static str, Capabilities); 5] {
        use crate::providers::{DriftSource, OwnerMarker};
        let caps = |identity, secret_source, rotation, drift, owner_marker| Capabilities {
            identity,
            secret_source,
            rotation,
            drift,
            owner_marker,
            given_credentials: identity == Identity::OperatorChosen,
            grace_period: false,
            new_client: true,
        };
        [
            (
                "clerk",
                caps(
                    Identity::ServerAssigned,
                    SecretSource::IssuedOnce,
                    Rotation::ServerEndpoint,
                    DriftSource::ListAll,
                    OwnerMarker::TaggedName,
                ),
            ),
            (
                "hydra",
                caps(
                    Identity::OperatorChosen,
                    SecretSource::OperatorGenerated,
                    Rotation::OperatorSets,
                    DriftSource::ListAll,
                    OwnerMarker::Metadata,
                ),
            ),
            (
                "keycloak",
                caps(
                    Identity::OperatorChosen,
                    SecretSource::IssuedReadable,
                    Rotation::ServerEndpoint,
                    DriftSource::ListAll,
                    OwnerMarker::Metadata,
                ),
            ),
            (
                "dcr+recreate",
                caps(
                    Identity::ServerAssigned,
                    SecretSource::IssuedOnce,
                    Rotation::Recreate,
                    DriftSource::GetEach,
                    OwnerMarker::Unmarked,
                ),
            ),
            (
                "dcr",
                caps(
                    Identity::ServerAssigned,
                    SecretSource::IssuedOnce,
                    Rotation::Unavailable,
                    DriftSource::GetEach,
                    OwnerMarker::Unmarked,
                ),
            ),
        ]
    }

    #[test]
    fn new_secret_per_capability_set() {
        use CredentialsStep::{Recover, Rotate};
        use NewSecret::*;
        // (step, rotation requested, issued at server) -> per backend, in `backends()` order.
        type Row = ((CredentialsStep, bool, bool), [NewSecret; 5]);
        let table: &[Row] = &[
            (
                (Recover, false, false),
                [
                    ServerIssues,
                    OperatorSets,
                    ReadBack { rotated: false },
                    Recreate,
                    Refuse,
                ],
            ),
            (
                (Recover, true, false),
                [ServerIssues, OperatorSets, ServerIssues, Recreate, Refuse],
            ),
            (
                (Recover, true, true),
                [
                    ServerIssues,
                    OperatorSets,
                    ReadBack { rotated: true },
                    Recreate,
                    Refuse,
                ],
            ),
            (
                (Recover, false, true),
                [
                    ServerIssues,
                    OperatorSets,
                    ReadBack { rotated: true },
                    Recreate,
                    Refuse,
                ],
            ),
            (
                (Rotate, true, false),
                [ServerIssues, OperatorSets, ServerIssues, Recreate, Refuse],
            ),
        ];
        for ((step, requested, issued), expected) in table {
            for ((name, caps), want) in backends().iter().zip(expected) {
                assert_eq!(
                    new_secret(*step, caps, false, *requested, *issued),
                    *want,
                    "{name}: {step:?} requested={requested} issued={issued}"
                );
                assert_eq!(
                    new_secret(*step, caps, true, *requested, *issued),
                    None,
                    "{name}: public"
                );
            }
        }
    }

    #[test]
    fn registration_flow_per_capability_set() {
        let flows: Vec<RegistrationFlow> = backends()
            .iter()
            .map(|(_, c)| registration_flow(c))
            .collect();
        use RegistrationFlow::*;
        assert_eq!(flows, [Pending, SecretFirst, ReadAfter, Pending, Pending]);
    }

    fn present(for_id: &str, data_id: &str) -> SecretFact {
        SecretFact::Present {
            written_for: Some(for_id.into()),
            data_client_id: Some(data_id.into()),
            has_secret: true,
        }
    }

    fn facts() -> IdentityFacts {
        IdentityFacts {
            staged_unrecorded: false,
            recorded_id: false,
            remote: Lookup::NotYet,
            pending_registration: false,
            secret: SecretFact::Missing,
            from_secret: Lookup::NotYet,
            rotation_requested: false,
        }
    }

    #[test]
    fn identity_table() {
        use IdentityStep::*;
        let secret = present("c1", "c1");
        let cases: Vec<(&str, IdentityFacts, IdentityStep)> = vec![
            ("new application", facts(), Register),
            (
                "staged credentials win over everything",
                IdentityFacts {
                    staged_unrecorded: true,
                    pending_registration: true,
                    recorded_id: true,
                    remote: Lookup::Absent,
                    ..facts()
                },
                RecordStaged,
            ),
            (
                "recorded id is looked up",
                IdentityFacts {
                    recorded_id: true,
                    ..facts()
                },
                Sync,
            ),
            (
                "recorded and present",
                IdentityFacts {
                    recorded_id: true,
                    remote: Lookup::Present,
                    ..facts()
                },
                Known,
            ),
            (
                "recorded, gone, no request: refuse",
                IdentityFacts {
                    recorded_id: true,
                    remote: Lookup::Absent,
                    secret: secret.clone(),
                    ..facts()
                },
                Refuse(Refusal::ClientGone),
            ),
            (
                "an operator-chosen id recorded before its create: resume the registration",
                IdentityFacts {
                    recorded_id: true,
                    pending_registration: true,
                    remote: Lookup::Absent,
                    secret: secret.clone(),
                    ..facts()
                },
                ResolvePending,
            ),
            (
                "recorded, gone, rotation asked: recreate",
                IdentityFacts {
                    recorded_id: true,
                    remote: Lookup::Absent,
                    rotation_requested: true,
                    ..facts()
                },
                Recreate,
            ),
            (
                "a pending registration is resolved, never created over",
                IdentityFacts {
                    pending_registration: true,
                    secret: secret.clone(),
                    rotation_requested: true,
                    ..facts()
                },
                ResolvePending,
            ),
            (
                "status lost, Secret present: look at its annotations first",
                IdentityFacts {
                    secret: secret.clone(),
                    rotation_requested: true,
                    ..facts()
                },
                LookUpFromSecret,
            ),
            (
                "status lost, Secret's client not ours, no request: refuse",
                IdentityFacts {
                    secret: secret.clone(),
                    from_secret: Lookup::Absent,
                    ..facts()
                },
                Refuse(Refusal::SecretWithoutClient),
            ),
            (
                "status lost, Secret's client not ours, rotation asked: register",
                IdentityFacts {
                    secret: secret.clone(),
                    from_secret: Lookup::Absent,
                    rotation_requested: true,
                    ..facts()
                },
                Register,
            ),
            (
                "status lost, Secret's client proven",
                IdentityFacts {
                    secret,
                    from_secret: Lookup::Present,
                    ..facts()
                },
                Known,
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(identity_step(&f), want, "{name}");
        }
    }

    #[test]
    fn every_pass_settles_in_a_few_steps() {
        // Walk the identity steps the way the reconciler does, answering each lookup both
        // ways: no path loops, and none registers over a pending registration.
        fn walk(mut f: IdentityFacts, answers: &mut dyn Iterator<Item = Lookup>, depth: u32) {
            assert!(depth < 5, "no settling: {f:?}");
            match identity_step(&f) {
                IdentityStep::RecordStaged => {
                    f.staged_unrecorded = false;
                    f.recorded_id = true;
                    f.remote = Lookup::NotYet;
                    walk(f, answers, depth + 1)
                }
                IdentityStep::Sync => {
                    f.remote = answers.next().unwrap_or(Lookup::Present);
                    walk(f, answers, depth + 1)
                }
                IdentityStep::LookUpFromSecret => {
                    f.from_secret = answers.next().unwrap_or(Lookup::Absent);
                    if f.from_secret == Lookup::Present {
                        f.recorded_id = true;
                        f.remote = Lookup::Present;
                    }
                    walk(f, answers, depth + 1)
                }
                IdentityStep::Register => assert!(!f.pending_registration),
                IdentityStep::ResolvePending => assert!(f.pending_registration),
                _ => {}
            }
        }
        for staged in [false, true] {
            for recorded in [false, true] {
                for pending in [false, true] {
                    for rotation in [false, true] {
                        for secret in [SecretFact::Missing, present("c", "c")] {
                            for a in [Lookup::Present, Lookup::Absent] {
                                let f = IdentityFacts {
                                    staged_unrecorded: staged,
                                    recorded_id: recorded,
                                    pending_registration: pending,
                                    rotation_requested: rotation,
                                    secret: secret.clone(),
                                    ..facts()
                                };
                                walk(f, &mut std::iter::repeat(a), 0);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn credentials_table() {
        use CredentialsStep::*;
        let base = CredentialFacts {
            in_hand: false,
            unfinished_issue: false,
            secret: present("c1", "c1"),
            client_id: "c1".into(),
            public: false,
            rotation_requested: false,
        };
        let cases: Vec<(&str, CredentialFacts, CredentialsStep)> = vec![
            ("steady state", base.clone(), Keep),
            (
                "credentials in hand are delivered first",
                CredentialFacts {
                    in_hand: true,
                    rotation_requested: true,
                    secret: SecretFact::Missing,
                    ..base.clone()
                },
                Deliver,
            ),
            (
                "Secret deleted",
                CredentialFacts {
                    secret: SecretFact::Missing,
                    ..base.clone()
                },
                Recover,
            ),
            (
                "Secret written for another client",
                CredentialFacts {
                    secret: present("c0", "c0"),
                    ..base.clone()
                },
                Recover,
            ),
            (
                "client id edited in the Secret: healed, never rotated",
                CredentialFacts {
                    secret: present("c1", "someone-else"),
                    ..base.clone()
                },
                Heal,
            ),
            (
                "client id key removed from the Secret: healed",
                CredentialFacts {
                    secret: SecretFact::Present {
                        written_for: Some("c1".into()),
                        data_client_id: None,
                        has_secret: true,
                    },
                    ..base.clone()
                },
                Heal,
            ),
            (
                "secret removed from the Secret: only a new one helps",
                CredentialFacts {
                    secret: SecretFact::Present {
                        written_for: Some("c1".into()),
                        data_client_id: Some("c1".into()),
                        has_secret: false,
                    },
                    ..base.clone()
                },
                Recover,
            ),
            (
                "rotation asked",
                CredentialFacts {
                    rotation_requested: true,
                    ..base.clone()
                },
                Rotate,
            ),
            (
                "only the client-id annotation edited: healed, never rotated",
                CredentialFacts {
                    secret: SecretFact::Present {
                        written_for: Some("someone-else".into()),
                        data_client_id: Some("c1".into()),
                        has_secret: true,
                    },
                    ..base.clone()
                },
                Heal,
            ),
            (
                "an issue that did not finish, nothing staged: verify before anything else",
                CredentialFacts {
                    unfinished_issue: true,
                    rotation_requested: true,
                    ..base.clone()
                },
                Verify,
            ),
            (
                "an unfinished issue whose Secret lost its secret: recover",
                CredentialFacts {
                    unfinished_issue: true,
                    secret: SecretFact::Missing,
                    ..base.clone()
                },
                Recover,
            ),
            (
                "a public client has nothing to rotate",
                CredentialFacts {
                    rotation_requested: true,
                    public: true,
                    secret: SecretFact::Present {
                        written_for: Some("c1".into()),
                        data_client_id: Some("c1".into()),
                        has_secret: false,
                    },
                    ..base.clone()
                },
                Keep,
            ),
        ];
        for (name, f, want) in cases {
            assert_eq!(credentials_step(&f), want, "{name}");
        }
    }
}
