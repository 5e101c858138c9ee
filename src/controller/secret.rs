//! The credentials Secret: created once with a POST, never taken over, its client secret
//! rewritten only by an explicit rotation or a recovery.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::error::{Error, Result};
use crate::api::{OAuthApplication, SecretKeys, default_keys};
use crate::providers::RemoteClient;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "oauth-operator";
pub const APPLICATION_LABEL: &str = "oauth-operator.dev/application";
/// The uid of the `OAuthApplication` that created the Secret: the proof of ownership.
pub const OWNER_UID_ANNOTATION: &str = "oauth-operator.dev/owner-uid";
pub const CLIENT_ID_ANNOTATION: &str = "oauth-operator.dev/client-id";
/// The provider's object id, so the client can be found from the Secret if status is lost.
pub const PROVIDER_OBJECT_ID_ANNOTATION: &str = "oauth-operator.dev/provider-object-id";
/// Changed on every rotation so consumers (e.g. Reloader) notice.
pub const ROTATED_AT_ANNOTATION: &str = "oauth-operator.dev/secret-rotated-at";
/// The `oauth-operator.dev/rotate` token the credentials in the Secret answer: a request stays
/// answered even if status is lost.
pub const ROTATION_TOKEN_ANNOTATION: &str = "oauth-operator.dev/rotation-token";

/// With `rotation.gracePeriod`: until when the previous client secret (kept under
/// [`previous_secret_key`]) is still accepted by the server.
pub const PREVIOUS_EXPIRES_ANNOTATION: &str = "oauth-operator.dev/previous-secret-expires-at";

/// The key the previous client secret is kept under during a grace period:
/// `<clientSecret key>_PREVIOUS`.
pub fn previous_secret_key(keys: &KeyNames) -> String {
    format!("{}_PREVIOUS", keys.client_secret)
}

/// What a credentials write puts into the Secret besides the client id.
#[derive(Clone, Copy, Default)]
pub struct Written<'a> {
    /// `None` for a public client.
    pub client_secret: Option<&'a SecretString>,
    /// For the annotation consumers watch; `None` when nothing was rotated.
    pub rotated_at: Option<&'a str>,
    /// The rotate token the credentials answer.
    pub rotation_token: Option<&'a str>,
    /// With a grace period: the previous client secret and until when the server accepts it.
    pub previous: Option<(&'a [u8], &'a str)>,
}

/// A client replaced by a new one (`rotation.strategy: NewClient`, RFC 7591) that still works
/// until its deletion: recorded on the Secret too, so a reset status does not leave it behind.
pub const RETIRING_CLIENT_ANNOTATION: &str = "oauth-operator.dev/retiring-client-id";
pub const RETIRING_DELETE_AT_ANNOTATION: &str = "oauth-operator.dev/retiring-client-delete-at";

/// Records (`Some((provider object id, delete at))`) or clears the retiring client on the
/// Secret (its annotations only).
pub async fn annotate_retiring(
    api: &Api<Secret>,
    name: &str,
    retiring: Option<(&str, &str)>,
) -> Result<()> {
    let (id, at) = match retiring {
        Some((id, at)) => (serde_json::json!(id), serde_json::json!(at)),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let patch = serde_json::json!({"metadata": {"annotations": {
        RETIRING_CLIENT_ANNOTATION: id,
        RETIRING_DELETE_AT_ANNOTATION: at,
    }}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // No Secret: nothing to record on.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Resolved key names.
pub struct KeyNames {
    pub client_id: String,
    pub client_secret: String,
    pub issuer_url: String,
    pub discovery_url: String,
    pub authorize_url: String,
    pub token_url: String,
    pub userinfo_url: String,
}

impl KeyNames {
    pub fn for_app(app: &OAuthApplication) -> Self {
        let k = app
            .spec
            .secret
            .as_ref()
            .and_then(|s| s.keys.clone())
            .unwrap_or_default();
        let SecretKeys {
            client_id,
            client_secret,
            issuer_url,
            discovery_url,
            authorize_url,
            token_url,
            userinfo_url,
        } = k;
        Self {
            client_id: client_id.unwrap_or_else(|| default_keys::CLIENT_ID.into()),
            client_secret: client_secret.unwrap_or_else(|| default_keys::CLIENT_SECRET.into()),
            issuer_url: issuer_url.unwrap_or_else(|| default_keys::ISSUER_URL.into()),
            discovery_url: discovery_url.unwrap_or_else(|| default_keys::DISCOVERY_URL.into()),
            authorize_url: authorize_url.unwrap_or_else(|| default_keys::AUTHORIZE_URL.into()),
            token_url: token_url.unwrap_or_else(|| default_keys::TOKEN_URL.into()),
            userinfo_url: userinfo_url.unwrap_or_else(|| default_keys::USERINFO_URL.into()),
        }
    }
}

/// A non-empty UTF-8 value of `secret`'s data.
pub fn data_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .filter(|v| !v.is_empty())
}

/// Whether `secret` was created by the operator for this application (by uid, never by name).
pub fn is_owned_by(secret: &Secret, app: &OAuthApplication) -> bool {
    let uid = app.metadata.uid.as_deref();
    uid.is_some()
        && secret
            .annotations()
            .get(OWNER_UID_ANNOTATION)
            .map(String::as_str)
            == uid
}

/// Labels and annotations the Secret must carry (template + ours; ours win).
pub fn desired_metadata(
    app: &OAuthApplication,
    client: &RemoteClient,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let template = app
        .spec
        .secret
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    // Label values are at most 63 characters; object names can be longer.
    let name = app.name_any();
    if name.len() <= 63 {
        labels.insert(APPLICATION_LABEL.into(), name);
    }
    let mut annotations = template.annotations;
    annotations.insert(
        OWNER_UID_ANNOTATION.into(),
        app.metadata.uid.clone().unwrap_or_default(),
    );
    annotations.insert(CLIENT_ID_ANNOTATION.into(), client.client_id.clone());
    annotations.insert(PROVIDER_OBJECT_ID_ANNOTATION.into(), client.id.clone());
    (labels, annotations)
}

/// The full Secret for a newly issued client (pure).
pub fn build_secret(
    app: &OAuthApplication,
    client: &RemoteClient,
    client_secret: Option<&SecretString>,
    rotated_at: Option<&str>,
    rotation_token: Option<&str>,
) -> Secret {
    let keys = KeyNames::for_app(app);
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    put(&keys.client_id, &client.client_id);
    if let Some(secret) = client_secret {
        put(&keys.client_secret, secret.expose_secret());
    }
    let e = &client.endpoints;
    for (key, value) in [
        (&keys.issuer_url, &e.issuer),
        (&keys.discovery_url, &e.discovery),
        (&keys.authorize_url, &e.authorize),
        (&keys.token_url, &e.token),
        (&keys.userinfo_url, &e.userinfo),
    ] {
        if let Some(v) = value {
            put(key, v);
        }
    }
    let (labels, mut annotations) = desired_metadata(app, client);
    if let Some(t) = rotated_at {
        annotations.insert(ROTATED_AT_ANNOTATION.into(), t.to_string());
    }
    if let Some(t) = rotation_token {
        annotations.insert(ROTATION_TOKEN_ANNOTATION.into(), t.to_string());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(app.secret_name()),
            namespace: app.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner_reference(app).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn owner_reference(app: &OAuthApplication) -> Option<OwnerReference> {
    let mut owner = app.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// Creates the Secret with a POST, never an upsert. A name clash with a Secret we did not
/// create is a conflict (the caller checked before registering, so someone created it in
/// between). A clash with our own Secret (an earlier attempt whose response was lost, or a
/// Secret written just before a crash) gets the data we mean to store now: the credentials in
/// hand are the only valid ones. Returns the `resourceVersion` the Secret then has.
pub async fn create_secret(
    api: &Api<Secret>,
    secret: &Secret,
    app: &OAuthApplication,
) -> Result<Option<String>> {
    match api.create(&PostParams::default(), secret).await {
        Ok(created) => Ok(created.resource_version()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = secret.metadata.name.as_deref().unwrap_or_default();
            match api.get_opt(name).await? {
                Some(existing) if is_owned_by(&existing, app) => {
                    let patch = serde_json::json!({
                        "metadata": {
                            "resourceVersion": existing.resource_version(),
                            "annotations": secret.metadata.annotations,
                            "labels": secret.metadata.labels,
                        },
                        "data": secret.data,
                    });
                    let patched = api
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    Ok(patched.resource_version())
                }
                _ => Err(Error::SecretConflict(format!(
                    "Secret {name} was created by someone else while the client was being registered"
                ))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Proves, before an irreversible call at the provider (create, rotate), that the Secret write
/// that must follow it will be accepted: name, labels, ownerReference, quota, admission
/// webhooks. A dry-run of the same request with placeholder values.
pub async fn dry_run_write(
    api: &Api<Secret>,
    app: &OAuthApplication,
    existing: Option<&Secret>,
) -> Result<()> {
    let placeholder = RemoteClient {
        id: "dry-run".into(),
        client_id: "dry-run".into(),
        name: String::new(),
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
    };
    let value = SecretString::from("dry-run");
    let secret = build_secret(app, &placeholder, Some(&value), Some("dry-run"), None);
    let result = match existing {
        None => api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &secret,
            )
            .await
            .map(drop),
        Some(existing) => {
            let patch = serde_json::json!({
                "metadata": {"annotations": secret.metadata.annotations, "labels": secret.metadata.labels},
                "data": secret.data,
            });
            let params = PatchParams {
                dry_run: true,
                ..Default::default()
            };
            api.patch(&existing.name_any(), &params, &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    result.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => Error::SecretConflict(format!(
            "Secret {} already exists and was not created by this OAuthApplication",
            app.secret_name()
        )),
        kube::Error::Api(s) if (400..500).contains(&s.code) => Error::SecretRejected(format!(
            "the credentials Secret {} would be refused ({}): {}; nothing was registered or rotated",
            app.secret_name(),
            s.reason,
            s.message
        )),
        other => other.into(),
    })
}

/// Writes a new client secret into our Secret (rotation, recovery, replaced client) and bumps
/// the rotation annotation. The secret now exists only in memory, so this tries hard: it reads
/// the Secret afresh for each attempt (ownership checked, current resourceVersion as the
/// precondition), re-creates it if it vanished, and retries conflicts. Returns the
/// `resourceVersion` the Secret then has.
pub async fn write_rotated_secret(
    api: &Api<Secret>,
    app: &OAuthApplication,
    client: &RemoteClient,
    rotated_at: &str,
    written: Written<'_>,
) -> Result<Option<String>> {
    let Written {
        client_secret,
        rotation_token,
        previous,
        ..
    } = written;
    let fresh = build_secret(app, client, client_secret, Some(rotated_at), rotation_token);
    let previous_key = previous_secret_key(&KeyNames::for_app(app));
    // The previous secret during its grace period, else nothing under its key (a secret
    // rotated out earlier is dead once a rotation without an overlap happened).
    let (previous_value, previous_until) = match previous {
        Some((value, until)) => (
            // Serialising bytes (base64) cannot fail.
            serde_json::to_value(ByteString(value.to_vec())).unwrap_or_default(),
            serde_json::Value::from(until),
        ),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    };
    let name = app.secret_name();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let current = match api.get_opt(&name).await {
            Ok(current) => current,
            Err(e) if attempt < 3 => {
                tracing::warn!(error = %e, attempt, "reading the Secret failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let result = match current {
            None => return create_secret(api, &fresh, app).await,
            Some(current) if !is_owned_by(&current, app) => {
                return Err(Error::SecretConflict(format!(
                    "Secret {name} was replaced by one this OAuthApplication did not create"
                )));
            }
            Some(current) => {
                let mut patch = serde_json::json!({
                    "metadata": {
                        "resourceVersion": current.resource_version(),
                        "annotations": fresh.metadata.annotations,
                        "labels": fresh.metadata.labels,
                    },
                    "data": fresh.data,
                });
                patch["data"][&previous_key] = previous_value.clone();
                patch["metadata"]["annotations"][PREVIOUS_EXPIRES_ANNOTATION] =
                    previous_until.clone();
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        };
        match result {
            Ok(written) => return Ok(written.resource_version()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => {}
            Err(e) if attempt < 3 && !matches!(&e, kube::Error::Api(s) if s.code < 500) => {
                tracing::warn!(error = %e, attempt, "writing the rotated secret failed; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
    }
}

/// Removes a previous client secret whose grace period is over (its key and its expiry
/// annotation), nothing else. Returns whether there was one.
pub async fn drop_previous_secret(
    api: &Api<Secret>,
    existing: &Secret,
    app: &OAuthApplication,
) -> Result<bool> {
    let key = previous_secret_key(&KeyNames::for_app(app));
    let has_key = existing.data.as_ref().is_some_and(|d| d.contains_key(&key));
    if !has_key
        && !existing
            .annotations()
            .contains_key(PREVIOUS_EXPIRES_ANNOTATION)
    {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": existing.resource_version(),
            "annotations": {PREVIOUS_EXPIRES_ANNOTATION: null},
        },
        "data": {key: null},
    });
    api.patch(
        &existing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(true)
}

/// Brings labels and annotations in line with the template (never the data). Returns whether a
/// patch was sent.
pub async fn reconcile_metadata(
    api: &Api<Secret>,
    existing: &Secret,
    app: &OAuthApplication,
    client: &RemoteClient,
) -> Result<bool> {
    let (labels, annotations) = desired_metadata(app, client);
    let missing = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
        want.iter().any(|(k, v)| have.get(k) != Some(v))
    };
    if !missing(&labels, existing.labels()) && !missing(&annotations, existing.annotations()) {
        return Ok(false);
    }
    let patch = serde_json::json!({"metadata": {"labels": labels, "annotations": annotations}});
    api.patch(
        &existing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(true)
}

/// Writes the client id and endpoint keys back after someone edited them; the client secret is
/// left as it is (a merge patch of `data` touches only the keys it names).
pub async fn heal_secret(
    api: &Api<Secret>,
    existing: &Secret,
    app: &OAuthApplication,
    client: &RemoteClient,
) -> Result<()> {
    let fresh = build_secret(app, client, None, None, None);
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": existing.resource_version(),
            "labels": fresh.metadata.labels,
            "annotations": fresh.metadata.annotations,
        },
        "data": fresh.data,
    });
    api.patch(
        &existing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Puts `client_secret` into a Secret that holds credentials of `client_id` (and nothing else:
/// a Secret of another client is left alone). Returns the Secret as it is now.
pub async fn put_client_secret(
    api: &Api<Secret>,
    existing: Secret,
    app: &OAuthApplication,
    client_id: &str,
    client_secret: &SecretString,
) -> Result<Secret> {
    let keys = KeyNames::for_app(app);
    let holds = existing
        .data
        .as_ref()
        .and_then(|d| d.get(&keys.client_id))
        .is_some_and(|v| v.0 == client_id.as_bytes());
    if !holds {
        return Ok(existing);
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": existing.resource_version()},
        "data": {keys.client_secret: ByteString(client_secret.expose_secret().as_bytes().to_vec())},
    });
    Ok(api
        .patch(
            &existing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

/// `deletionPolicy: Orphan`: drop our ownerReference so garbage collection keeps the Secret.
pub async fn release_secret(
    api: &Api<Secret>,
    existing: &Secret,
    app: &OAuthApplication,
) -> Result<()> {
    let uid = app.metadata.uid.clone().unwrap_or_default();
    let remaining: Vec<_> = existing
        .owner_references()
        .iter()
        .filter(|o| o.uid != uid)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": existing.resource_version(), "ownerReferences": remaining}
    });
    api.patch(
        &existing.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Endpoints;

    fn app() -> OAuthApplication {
        serde_yaml::from_str(
            r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: web, namespace: team-a, uid: 1234-abcd}
spec:
  providerRef: {name: clerk}
  secret:
    keys: {clientId: OIDC_CLIENT_ID}
    template: {labels: {team: a}, annotations: {note: hi}}
"#,
        )
        .unwrap()
    }

    fn client() -> RemoteClient {
        RemoteClient {
            id: "oa_1".into(),
            client_id: "cid".into(),
            name: "n".into(),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            scopes: vec![],
            grant_types: vec![],
            owner_uid: None,
            public: false,
            pkce_required: false,
            consent_screen: true,
            endpoints: Endpoints {
                issuer: Some("https://i".into()),
                token: Some("https://i/token".into()),
                ..Default::default()
            }
            .into(),
            created_at: None,
            grace_period: None,
            previous_secret_expires_at: None,
        }
    }

    #[test]
    fn secret_has_keys_owner_and_metadata() {
        let s = build_secret(
            &app(),
            &client(),
            Some(&SecretString::from("s3cr3t")),
            None,
            None,
        );
        assert_eq!(s.metadata.name.as_deref(), Some("web-oauth"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["OIDC_CLIENT_ID"].0, b"cid");
        assert_eq!(data["CLIENT_SECRET"].0, b"s3cr3t");
        assert_eq!(data["ISSUER_URL"].0, b"https://i");
        assert_eq!(data["TOKEN_URL"].0, b"https://i/token");
        assert!(!data.contains_key("AUTHORIZE_URL"));
        assert_eq!(s.labels()["team"], "a");
        assert_eq!(s.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(s.annotations()[OWNER_UID_ANNOTATION], "1234-abcd");
        assert_eq!(s.annotations()["note"], "hi");
        let owner = &s.owner_references()[0];
        assert_eq!(owner.uid, "1234-abcd");
        assert_eq!(owner.controller, Some(true));
        assert!(is_owned_by(&s, &app()));
    }

    #[test]
    fn a_secret_without_our_uid_is_foreign() {
        let mut s = build_secret(&app(), &client(), None, None, None);
        s.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(OWNER_UID_ANNOTATION.into(), "other".into());
        assert!(!is_owned_by(&s, &app()));
        s.metadata.annotations = None;
        assert!(!is_owned_by(&s, &app()));
    }

    #[test]
    fn public_clients_get_no_secret_key() {
        let s = build_secret(&app(), &client(), None, None, None);
        assert!(!s.data.unwrap().contains_key("CLIENT_SECRET"));
    }
}
