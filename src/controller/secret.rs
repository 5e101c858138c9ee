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
    labels.insert(APPLICATION_LABEL.into(), app.name_any());
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

/// Creates the Secret with a POST, never an upsert. A name clash is reported as a conflict:
/// the caller checked ownership before registering anything, so a clash here means someone
/// created a Secret of that name in between.
pub async fn create_secret(api: &Api<Secret>, secret: &Secret) -> Result<()> {
    match api.create(&PostParams::default(), secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::SecretConflict(format!(
            "Secret {} was created by someone else while the client was being registered",
            secret.metadata.name.as_deref().unwrap_or_default()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Writes a new client secret into our existing Secret (rotation or recovery of a replaced
/// client) and bumps the rotation annotation. A JSON merge patch with the resourceVersion as a
/// precondition: if the Secret changed under us, the patch fails and the pass is retried.
pub async fn write_rotated_secret(
    api: &Api<Secret>,
    existing: &Secret,
    app: &OAuthApplication,
    client: &RemoteClient,
    client_secret: Option<&SecretString>,
    rotated_at: &str,
) -> Result<()> {
    let fresh = build_secret(app, client, client_secret, Some(rotated_at));
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": existing.resource_version(),
            "annotations": fresh.metadata.annotations,
            "labels": fresh.metadata.labels,
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
            scopes: vec![],
            public: false,
            pkce_required: false,
            consent_screen: true,
            endpoints: Endpoints {
                issuer: Some("https://i".into()),
                token: Some("https://i/token".into()),
                ..Default::default()
            },
            created_at: None,
        }
    }

    #[test]
    fn secret_has_keys_owner_and_metadata() {
        let s = build_secret(&app(), &client(), Some(&SecretString::from("s3cr3t")), None);
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
        let mut s = build_secret(&app(), &client(), None, None);
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
        let s = build_secret(&app(), &client(), None, None);
        assert!(!s.data.unwrap().contains_key("CLIENT_SECRET"));
    }
}
