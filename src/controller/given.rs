//! `spec.credentialsFrom`: clients registered with credentials the user brings (a Secret that
//! External Secrets fills from a vault, possibly in several clusters).
//!
//! The credentials are durable before the operator sees them, so none of the registration
//! protocol of issued credentials is needed: the client id is known, a create is repeatable, and
//! nothing is staged. What matters is who may change the client:
//! - a client registered with given credentials carries [`GIVEN_OWNER`] as its owner marker: it
//!   belongs to whoever holds its secret, not to one application;
//! - an application takes up an existing client only by proving it holds the client's current
//!   secret (a token-endpoint check), never because it names the same client id;
//! - once it holds the client, a new `resourceVersion` of the Secret is pushed to the provider;
//!   an unchanged Secret whose secret stops working is reported, never pushed again (two
//!   clusters with different secrets must not take turns overwriting each other).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use secrecy::{ExposeSecret, SecretString};

use super::application::{Pass, check_owner, now, store_credentials, sync_remote};
use super::error::{Error, Result};
use super::secret::{
    KeyNames, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Written, data_value, reconcile_metadata,
};
use super::status::StatusWriter;
use crate::api::conditions::{
    READY, RECONCILING, STALLED, new_condition, remove_condition, set_condition,
};
use crate::api::{CredentialsFrom, OAuthApplicationStatus, RecordedSecretKeys};
use crate::providers::{GIVEN_OWNER, ProviderError, Registration, RemoteClient};

/// Shortest client secret accepted: one a person could guess is refused.
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 512;

/// The credentials read from the Secret `spec.credentialsFrom` names (`Debug` redacts the
/// secret).
#[derive(Debug)]
pub(super) struct Given {
    pub client_id: String,
    pub secret: SecretString,
    /// The Secret's `resourceVersion` when read.
    pub version: Option<String>,
}

/// Client ids the operator registers for the user: letters, digits, `-`, `_`, `.`, starting
/// with a letter or digit, at most 128 (what every backend takes in a URL or a body).
pub(super) fn valid_client_id(id: &str) -> bool {
    id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// A client secret the operator passes on: printable ASCII (it travels in HTTP Basic
/// authentication and form bodies), 16 to 512 characters.
pub(super) fn valid_client_secret(secret: &str) -> bool {
    (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads and checks the given credentials. Messages name keys, never values.
pub(super) fn read_given(source: &Secret, from: &CredentialsFrom) -> Result<Given> {
    let name = source.name_any();
    let (id_key, secret_key) = (from.client_id_key(), from.client_secret_key());
    let missing = |key: &str| {
        Error::CredentialsSourceMissing(format!(
            "Secret {name} named by spec.credentialsFrom has no value under key {key}"
        ))
    };
    let raw = |key: &str| {
        source
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| v.0.clone())
            .filter(|v| !v.is_empty())
    };
    let id = raw(id_key).ok_or_else(|| missing(id_key))?;
    let secret = raw(secret_key).ok_or_else(|| missing(secret_key))?;
    let client_id = String::from_utf8(id)
        .ok()
        .filter(|id| valid_client_id(id))
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "the client id in Secret {name} (key {id_key}) must be 1 to 128 letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ))
        })?;
    let secret = String::from_utf8(secret)
        .ok()
        .filter(|s| valid_client_secret(s))
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "the client secret in Secret {name} (key {secret_key}) must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} \
                 printable ASCII characters without spaces"
            ))
        })?;
    Ok(Given {
        client_id,
        secret: SecretString::from(secret),
        version: source.metadata.resource_version.clone(),
    })
}

/// One pass over an application with `spec.credentialsFrom` (its Secret already checked as
/// its own or absent).
pub(super) async fn apply_given(
    pass: Pass<'_>,
    writer: &mut StatusWriter<'_>,
    status: &mut OAuthApplicationStatus,
    existing: Option<&Secret>,
    from: &CredentialsFrom,
) -> Result<Action> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        secrets,
        ..
    } = pass;
    let secret_name = app.secret_name();
    let namespace = app.namespace().unwrap_or_default();
    if !provider.client.capabilities().given_credentials {
        return Err(Error::CredentialsFromUnsupported(format!(
            "{} ({}) issues its own client credentials and cannot register a client with given ones: remove \
             spec.credentialsFrom (the operator then writes the credentials the server issues into Secret {secret_name})",
            provider.key,
            provider.client.name()
        )));
    }
    if let Some(token) = pass.rotate_token
        && status.last_rotation_token.as_deref() != Some(token)
    {
        status.last_rotation_token = Some(token.to_string());
        ctx.event(
            app,
            EventType::Warning,
            "RotationNotApplicable",
            "Rotate",
            format!(
                "the client secret comes from Secret {} (spec.credentialsFrom): change it there to rotate",
                from.name
            ),
        )
        .await;
    }
    // A live read: acting on a stale copy would push an old secret.
    let Some(source) = secrets.get_opt(&from.name).await? else {
        let kept = match &status.client_id {
            Some(id) => format!(
                "client {id} and Secret {secret_name} keep the credentials last given; nothing is changed until it is back"
            ),
            None => "nothing is registered until it exists".to_string(),
        };
        return Err(Error::CredentialsSourceMissing(format!(
            "Secret {namespace}/{} named by spec.credentialsFrom does not exist; {kept}",
            from.name
        )));
    };
    if source.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE) {
        return Err(Error::InvalidSpec(format!(
            "Secret {} named by spec.credentialsFrom was written by this operator (another application's \
             credentials, or its own records): name a Secret of your own",
            from.name
        )));
    }
    let given = read_given(&source, from)?;
    if let Some(recorded) = &status.client_id
        && *recorded != given.client_id
    {
        return Err(Error::InvalidSpec(format!(
            "the client id in Secret {} changed from {recorded} to {}: the client of an OAuthApplication cannot change; \
             put {recorded} back, or create a new OAuthApplication for the new client",
            from.name, given.client_id
        )));
    }
    // Held: this application registered the client or proved it holds its secret, and status
    // says which version of the Secret the provider was given.
    let held = status.provider_object_id.is_some() && status.credentials_from_version.is_some();
    let found = match status.provider_object_id.clone() {
        Some(id) if held => sync_remote(pass, status, &id).await?,
        _ => provider.client.find_by_client_id(&given.client_id).await?,
    };
    let registration = Registration {
        owner_uid: GIVEN_OWNER,
        client_id: Some(&given.client_id),
        client_secret: Some(&given.secret),
        given: true,
    };
    let (remote, created) = match found {
        Some(remote) => (remote, false),
        None => match provider.client.create(desired, &registration).await {
            Ok(issued) => {
                let note = if held {
                    ctx.metrics.lifecycle_event("client_recreated");
                    format!(
                        "client {} no longer existed at {}; registered it again with the credentials in Secret {}",
                        given.client_id, provider.key, from.name
                    )
                } else {
                    ctx.metrics.lifecycle_event("client_registered");
                    format!(
                        "registered client {} at {} with the credentials in Secret {} (spec.credentialsFrom)",
                        given.client_id, provider.key, from.name
                    )
                };
                ctx.event(app, EventType::Normal, "Registered", "Register", note)
                    .await;
                (issued.client, true)
            }
            // Registered meanwhile (another cluster with the same credentials): taken up below
            // like any existing client, by proof of possession.
            Err(ProviderError::Rejected { status: 409, .. }) => {
                let remote = provider
                    .client
                    .find_by_client_id(&given.client_id)
                    .await?
                    .ok_or_else(|| {
                        Error::Provider(ProviderError::Unavailable {
                            operation: "create",
                            outcome_unknown: false,
                            message: format!(
                                "client id {} is taken at the provider, and no such client can be found yet",
                                given.client_id
                            ),
                        })
                    })?;
                (remote, false)
            }
            Err(e) => return Err(e.into()),
        },
    };
    ctx.inventory.upsert(&provider.server, &remote);
    let remote = if created {
        remote
    } else {
        take_up(pass, existing, remote, &given, from, held).await?
    };

    // The Secret workloads mount: the same credentials, with the endpoints.
    let keys = KeyNames::for_app(app);
    let holds = |s: &Secret| {
        data_value(s, &keys.client_id).as_deref() == Some(remote.client_id.as_str())
            && data_value(s, &keys.client_secret).as_deref() == Some(given.secret.expose_secret())
    };
    // The Secret's version when this pass wrote its credentials.
    let mut written = None;
    match existing {
        Some(current) if holds(current) => {
            reconcile_metadata(secrets, current, app, &remote).await?;
        }
        _ => {
            // A changed secret is a rotation to consumers: the annotation Reloader watches moves.
            let rotated_at = existing.is_some().then(now);
            let at = rotated_at.map(|t| t.to_string());
            written = store_credentials(
                app,
                secrets,
                existing,
                &remote,
                Written {
                    client_secret: Some(&given.secret),
                    rotated_at: at.as_deref(),
                    ..Written::default()
                },
            )
            .await?;
            if let Some(t) = rotated_at {
                status.secret_rotated_at = Some(Time(t));
            }
        }
    }

    status.client_id = Some(remote.client_id.clone());
    status.provider_object_id = Some(remote.id.clone());
    status.credentials_from_version = given.version.clone();
    status.secret_name = Some(secret_name.clone());
    status.secret_keys = Some(RecordedSecretKeys {
        client_id: keys.client_id.clone(),
        client_secret: keys.client_secret.clone(),
    });
    status.endpoints = Some(remote.endpoints.clone());
    status.pending_registration = None;
    status.credentials_in_flight_since = None;
    status.next_rotation_at = None;
    status.observed_generation = app.metadata.generation;
    status.synced_generation = app.metadata.generation;
    remove_condition(&mut status.conditions, RECONCILING);
    remove_condition(&mut status.conditions, STALLED);
    let message = format!(
        "client {} is registered at {} with the credentials in Secret {} (spec.credentialsFrom), copied to Secret {secret_name}",
        remote.client_id, provider.key, from.name
    );
    set_condition(
        &mut status.conditions,
        new_condition(READY, true, "Reconciled", message, app.metadata.generation),
    );
    writer.write(status).await?;
    let secret_version = written.or_else(|| existing.and_then(|s| s.resource_version()));
    Ok(ctx.settled(app, writer, secret_version.as_deref(), ctx.resync_delay()))
}

/// An existing client: ours to change only with the owner marker of given credentials, and
/// decided by values, never by a version number:
/// - the Secret workloads mount holds the value this application last gave the provider; a
///   new value is pushed only while that one still authenticates (this application is the
///   client's current holder), so a stale copy elsewhere, or a tenant shut out by a rotation,
///   can never push its value over the current one;
/// - otherwise the given value must itself authenticate (already pushed by another cluster, or
///   by a pass that died before the copy): it is taken as is.
async fn take_up(
    pass: Pass<'_>,
    existing: Option<&Secret>,
    remote: RemoteClient,
    given: &Given,
    from: &CredentialsFrom,
    held: bool,
) -> Result<RemoteClient> {
    let Pass {
        app,
        ctx,
        provider,
        desired,
        ..
    } = pass;
    check_owner(app, &remote)?;
    let keys = KeyNames::for_app(app);
    let previous = existing
        .filter(|s| data_value(s, &keys.client_id).as_deref() == Some(remote.client_id.as_str()))
        .and_then(|s| data_value(s, &keys.client_secret))
        .filter(|p| p.as_str() != given.secret.expose_secret());
    if held
        && let Some(previous) = previous
        && provider
            .client
            .proves_possession(&remote, &SecretString::from(previous))
            .await?
    {
        let updated = provider
            .client
            .set_secret(&remote.id, desired, GIVEN_OWNER, &given.secret)
            .await?;
        ctx.inventory.upsert(&provider.server, &updated);
        ctx.metrics.lifecycle_event("given_secret_pushed");
        ctx.event(
            app,
            EventType::Normal,
            "CredentialsUpdated",
            "Rotate",
            format!(
                "Secret {} changed; set the client secret of {} at {} to its value",
                from.name, remote.client_id, provider.key
            ),
        )
        .await;
        return Ok(updated);
    }
    if !provider
        .client
        .proves_possession(&remote, &given.secret)
        .await?
    {
        return Err(Error::CredentialsNotAccepted(if held {
            format!(
                "client {} at {} does not accept the secret in Secret {} (it was changed at the provider, or by another \
                 cluster sharing this client), and the one this application last gave it no longer works either, so \
                 the operator does not overwrite it: put the client's current secret in Secret {}",
                remote.client_id, provider.key, from.name, from.name
            )
        } else {
            format!(
                "client {} exists at {} and does not accept the secret in Secret {}; the operator takes up an existing \
                 client only with its current secret: put that secret in Secret {} (change it afterwards to rotate), or \
                 delete the client at the provider",
                remote.client_id, provider.key, from.name, from.name
            )
        }));
    }
    if held {
        return Ok(remote);
    }
    // Taken up: its settings follow the spec from now on.
    let updated = provider
        .client
        .update(&remote.id, desired, GIVEN_OWNER)
        .await?;
    ctx.inventory.upsert(&provider.server, &updated);
    ctx.metrics.lifecycle_event("client_adopted");
    ctx.event(
        app,
        EventType::Normal,
        "Adopted",
        "Register",
        format!(
            "client {} already existed at {} and accepts the secret in Secret {}: it is this application's client now",
            remote.client_id, provider.key, from.name
        ),
    )
    .await;
    Ok(updated)
}

/// Deletion of a client registered with given credentials: only by an application that still
/// holds its current secret (read from the Secret `credentialsFrom` names, else the copy in its
/// own Secret). A tenant shut out by a rotation, or whose Secret is gone, deletes nothing.
pub(super) async fn may_delete(
    app: &crate::api::OAuthApplication,
    provider: &super::resolve::ResolvedProvider,
    remote: &RemoteClient,
    secrets: &kube::Api<Secret>,
) -> Result<bool> {
    let Some(from) = &app.spec.credentials_from else {
        return Ok(true);
    };
    let keys = KeyNames::for_app(app);
    let mut candidates = Vec::new();
    if let Some(source) = secrets.get_opt(&from.name).await?
        && let Ok(given) = read_given(&source, from)
    {
        candidates.push(given.secret);
    }
    if let Some(own) = secrets.get_opt(&app.secret_name()).await?
        && let Some(v) = data_value(&own, &keys.client_secret)
    {
        candidates.push(SecretString::from(v));
    }
    for secret in candidates {
        if provider.client.proves_possession(remote, &secret).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn source(pairs: &[(&str, &[u8])]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("vault-creds".into());
        s.metadata.resource_version = Some("42".into());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        );
        s
    }

    fn from() -> CredentialsFrom {
        CredentialsFrom {
            name: "vault-creds".into(),
            client_id_key: None,
            client_secret_key: Some("secret".into()),
        }
    }

    #[test]
    fn given_credentials_are_read_under_their_keys() {
        let s = source(&[
            ("CLIENT_ID", b"shop.web-1"),
            ("secret", b"0123456789abcdef!"),
        ]);
        let g = read_given(&s, &from()).unwrap();
        assert_eq!(g.client_id, "shop.web-1");
        assert_eq!(g.secret.expose_secret(), "0123456789abcdef!");
        assert_eq!(g.version.as_deref(), Some("42"));
    }

    #[test]
    fn missing_keys_wait_and_bad_values_are_refused_without_quoting_them() {
        let e = read_given(&source(&[("CLIENT_ID", b"shop")]), &from()).unwrap_err();
        assert_eq!(e.reason(), "CredentialsSourceMissing");
        assert!(e.to_string().contains("key secret"), "{e}");
        let e =
            read_given(&source(&[("CLIENT_ID", b"shop"), ("secret", b"")]), &from()).unwrap_err();
        assert_eq!(e.reason(), "CredentialsSourceMissing");
        for (id, secret) in [
            (&b"-shop"[..], &b"0123456789abcdef"[..]),
            (b"shop/../admin", b"0123456789abcdef"),
            (b"shop", b"short-secret"),
            (b"shop", b"0123456789 abcdef"),
            (b"shop", b"0123456789abcdef\n"),
            (b"shop", &[0xff; 20]),
        ] {
            let e =
                read_given(&source(&[("CLIENT_ID", id), ("secret", secret)]), &from()).unwrap_err();
            assert_eq!(e.reason(), "InvalidSpec");
            let text = e.to_string();
            assert!(!text.contains("0123456789"), "value quoted: {text}");
            assert!(!text.contains("short-secret"), "value quoted: {text}");
        }
        assert!(valid_client_id(&"a".repeat(128)));
        assert!(!valid_client_id(&"a".repeat(129)));
        assert!(valid_client_secret(&"x".repeat(512)));
        assert!(!valid_client_secret(&"x".repeat(513)));
    }
}
