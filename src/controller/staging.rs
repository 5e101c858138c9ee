//! Staged credentials: the moment a provider hands out a new client secret (create, rotation,
//! adoption, recovery), the operator stores it in a Secret of its own namespace before anything
//! else can fail. The consumer Secret is written from there, and the staged copy deleted once
//! the consumer Secret holds the value. A crash, a failed status write or a consumer Secret that
//! cannot be written (a foreign Secret in its place, an admission rule) then costs a retry,
//! never the secret: at Clerk the previous secret stops working when a new one is issued.
//!
//! Tenants cannot read or write the operator's namespace, so a staged copy is as safe as the
//! provider's admin credential that sits beside it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::error::Result;
use crate::api::OAuthApplication;

const PREFIX: &str = "oauth-operator-staged-";
/// Marks staged copies (and keeps them out of the watch of consumer Secrets, which selects
/// `app.kubernetes.io/managed-by=oauth-operator`).
pub const STAGED_LABEL: &str = "oauth-operator.dev/staged-credentials";
const APP_UID: &str = "oauth-operator.dev/owner-uid";
const APP_REF: &str = "oauth-operator.dev/application";
const PROVIDER: &str = "oauth-operator.dev/provider";
const CLIENT_ID: &str = "oauth-operator.dev/client-id";
const OBJECT_ID: &str = "oauth-operator.dev/provider-object-id";
const ROTATION_TOKEN: &str = "oauth-operator.dev/rotation-token";
const ROTATED: &str = "oauth-operator.dev/rotated";
const PENDING_CREATE: &str = "oauth-operator.dev/pending-create";
const REPLACES: &str = "oauth-operator.dev/replaces";
const SECRET_KEY: &str = "clientSecret";

/// Credentials issued by a provider and not yet delivered to the consumer Secret.
pub struct Staged {
    pub client_id: String,
    pub provider_object_id: String,
    /// The rotation request these credentials answer, if any.
    pub rotation_token: Option<String>,
    /// Issued by a rotation (not by the create call).
    pub rotated: bool,
    /// Staged before the client's create (an id and secret the operator chose, for a client
    /// replacing the current one): the client may not exist, so these credentials may not
    /// work yet.
    pub pending_create: bool,
    /// The client these credentials replace (`rotation.strategy: NewClient`), to be retired
    /// once they are delivered; recorded here too, so a reset status does not lose it.
    pub replaces: Option<String>,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("client_id", &self.client_id)
            .field("provider_object_id", &self.provider_object_id)
            .field("rotation_token", &self.rotation_token)
            .field("pending_create", &self.pending_create)
            .field("replaces", &self.replaces)
            .finish_non_exhaustive()
    }
}

/// The staged copy of one application's credentials at one provider, for one pass.
pub struct Staging {
    api: Api<Secret>,
    name: String,
    uid: String,
    app_ref: String,
    provider: String,
    /// This pass saw the slot empty (a read found nothing, or a delete succeeded) and has not
    /// stored since: a discard then has nothing to delete. Only staging writes the slot, and
    /// one pass at a time runs for an application, so what this pass saw still holds.
    empty: AtomicBool,
}

/// `oauth-operator-staged-<uid>`: one per application, named by uid so that a namesake in
/// another namespace (or a recreated object) can never pick it up.
pub fn staged_name(uid: &str) -> String {
    format!("{PREFIX}{uid}")
}

impl Staging {
    pub fn new(
        client: kube::Client,
        operator_namespace: &str,
        app: &OAuthApplication,
        provider: &str,
    ) -> Self {
        let uid = app.metadata.uid.clone().unwrap_or_default();
        Self {
            api: Api::namespaced(client, operator_namespace),
            name: staged_name(&uid),
            app_ref: format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()),
            uid,
            provider: provider.to_string(),
            empty: AtomicBool::new(false),
        }
    }

    fn build(&self, staged: &Staged) -> Secret {
        let mut annotations = BTreeMap::from([
            (APP_UID.to_string(), self.uid.clone()),
            (APP_REF.to_string(), self.app_ref.clone()),
            (PROVIDER.to_string(), self.provider.clone()),
            (CLIENT_ID.to_string(), staged.client_id.clone()),
            (OBJECT_ID.to_string(), staged.provider_object_id.clone()),
        ]);
        if let Some(token) = &staged.rotation_token {
            annotations.insert(ROTATION_TOKEN.to_string(), token.clone());
        }
        if staged.rotated {
            annotations.insert(ROTATED.to_string(), "true".to_string());
        }
        if staged.pending_create {
            annotations.insert(PENDING_CREATE.to_string(), "true".to_string());
        }
        if let Some(old) = &staged.replaces {
            annotations.insert(REPLACES.to_string(), old.clone());
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                // Not `managed-by`: see STAGED_LABEL.
                labels: Some(BTreeMap::from([(
                    STAGED_LABEL.to_string(),
                    "true".to_string(),
                )])),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                SECRET_KEY.to_string(),
                ByteString(staged.client_secret.expose_secret().as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    /// Stores `staged`. The pass emptied the slot before asking the provider for a new
    /// secret; a copy found there anyway is older and is replaced whole, never merged.
    pub async fn store(&self, staged: &Staged) -> Result<()> {
        let secret = self.build(staged);
        // Whatever the answer, the slot may hold something now (a create whose answer was
        // lost may have been committed).
        self.empty.store(false, Ordering::SeqCst);
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.discard().await?;
                // The discard left the slot known empty: this create fills it again.
                self.empty.store(false, Ordering::SeqCst);
                self.api.create(&PostParams::default(), &secret).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The staged credentials of this application at this provider, if any. A copy for
    /// another provider (the application was moved) is ignored.
    pub async fn load(&self) -> Result<Option<Staged>> {
        let Some(secret) = self.api.get_opt(&self.name).await? else {
            self.empty.store(true, Ordering::SeqCst);
            return Ok(None);
        };
        self.empty.store(false, Ordering::SeqCst);
        let note = secret.annotations();
        if note.get(APP_UID) != Some(&self.uid) || note.get(PROVIDER) != Some(&self.provider) {
            tracing::warn!(staged = %self.name, "ignoring staged credentials of another application or provider");
            return Ok(None);
        }
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRET_KEY))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty());
        let (Some(client_id), Some(object_id), Some(value)) =
            (note.get(CLIENT_ID), note.get(OBJECT_ID), value)
        else {
            tracing::warn!(staged = %self.name, "ignoring an incomplete staged-credentials Secret");
            return Ok(None);
        };
        Ok(Some(Staged {
            client_id: client_id.clone(),
            provider_object_id: object_id.clone(),
            rotation_token: note.get(ROTATION_TOKEN).cloned(),
            rotated: note.get(ROTATED).is_some_and(|v| v == "true"),
            pending_create: note.get(PENDING_CREATE).is_some_and(|v| v == "true"),
            replaces: note.get(REPLACES).cloned(),
            client_secret: SecretString::from(value),
        }))
    }

    /// Deletes the staged copy (gone already counts as deleted). No request when this pass
    /// already saw the slot empty.
    pub async fn discard(&self) -> Result<()> {
        if self.empty.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self.api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        self.empty.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Whether a Secret is a staged copy (for listings and tests).
pub fn is_staged(secret: &Secret) -> bool {
    secret
        .meta()
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with(PREFIX))
        && secret.labels().get(STAGED_LABEL).map(String::as_str) == Some("true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_copies_are_named_by_uid_and_never_debug_print_the_secret() {
        assert_eq!(staged_name("1234"), "oauth-operator-staged-1234");
        assert!(!format!("{:?}", staged()).contains("s3cr3t"));
    }

    /// A Kubernetes API that records each request and keeps one Secret slot: GET answers it
    /// or 404, POST fills it (409 when full), DELETE empties it (404 when empty).
    fn scripted_api() -> (kube::Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::sync::{Arc, Mutex};
        let log = Arc::new(Mutex::new(Vec::new()));
        let slot: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let seen = log.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let (log, slot) = (seen.clone(), slot.clone());
            async move {
                let method = req.method().clone();
                log.lock().unwrap().push(method.to_string());
                let body = kube::client::Body::collect_bytes(req.into_body()).await?;
                let mut slot = slot.lock().unwrap();
                let not_found = || {
                    (
                        404,
                        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                            .to_vec(),
                    )
                };
                let (code, out) = match method.as_str() {
                    "GET" => slot.clone().map(|s| (200, s)).unwrap_or_else(not_found),
                    "POST" if slot.is_some() => (
                        409,
                        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"AlreadyExists","code":409}"#
                            .to_vec(),
                    ),
                    "POST" => {
                        *slot = Some(body.to_vec());
                        (201, body.to_vec())
                    }
                    "DELETE" => match slot.take() {
                        Some(_) => (200, br#"{"kind":"Status","apiVersion":"v1","status":"Success"}"#.to_vec()),
                        None => not_found(),
                    },
                    other => panic!("unexpected {other}"),
                };
                Ok::<_, kube::Error>(
                    http::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(out))
                        .unwrap(),
                )
            }
        });
        (kube::Client::new(service, "default"), log)
    }

    fn app() -> OAuthApplication {
        let spec = serde_json::from_value(serde_json::json!({
            "providerRef": {"name": "p", "kind": "OAuthProvider"},
            "redirectUris": ["https://a.example.com/cb"],
        }))
        .unwrap();
        let mut app = OAuthApplication::new("web", spec);
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-1".into());
        app
    }

    fn staged() -> Staged {
        Staged {
            client_id: "c".into(),
            provider_object_id: "oa_1".into(),
            rotation_token: None,
            rotated: false,
            pending_create: false,
            replaces: None,
            client_secret: SecretString::from("s3cr3t"),
        }
    }

    #[tokio::test]
    async fn a_slot_this_pass_saw_empty_is_not_deleted_again() {
        let (client, log) = scripted_api();
        let requests = || std::mem::take(&mut *log.lock().unwrap());
        let staging = Staging::new(client, "operator", &app(), "clerk");

        // Not known: a discard asks, then knows.
        staging.discard().await.unwrap();
        staging.discard().await.unwrap();
        assert_eq!(requests(), ["DELETE"]);

        // Stored: the next discard deletes it, and only once.
        staging.store(&staged()).await.unwrap();
        staging.discard().await.unwrap();
        staging.discard().await.unwrap();
        assert_eq!(requests(), ["POST", "DELETE"]);

        // A read that finds nothing is as good as a delete.
        let (client, log) = scripted_api();
        let requests = || std::mem::take(&mut *log.lock().unwrap());
        let staging = Staging::new(client.clone(), "operator", &app(), "clerk");
        assert!(staging.load().await.unwrap().is_none());
        staging.discard().await.unwrap();
        assert_eq!(requests(), ["GET"]);

        // A read that finds a copy (stored by an earlier pass): the discard deletes it.
        staging.store(&staged()).await.unwrap();
        let next = Staging::new(client, "operator", &app(), "clerk");
        assert_eq!(next.load().await.unwrap().unwrap().client_id, "c");
        next.discard().await.unwrap();
        assert!(next.load().await.unwrap().is_none());
        assert_eq!(requests(), ["POST", "GET", "DELETE", "GET"]);

        // A store over a copy this pass did not see replaces it (409, delete, create), and
        // the slot is then known to be full: the next discard deletes it.
        staging.store(&staged()).await.unwrap();
        next.store(&staged()).await.unwrap();
        next.discard().await.unwrap();
        assert_eq!(requests(), ["POST", "POST", "DELETE", "POST", "DELETE"]);
    }
}
