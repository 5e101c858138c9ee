//! Where the RFC 7592 management access of each dynamically registered client lives: a Secret
//! in the operator's namespace per client (tenants cannot read it, so they cannot change a
//! client behind the CRD's back), labelled with the uid of the application it was registered
//! for, so that a registration whose id never reached status is found again, and annotated
//! with the provider that saved it: only that provider uses it. Records are named by issuer
//! and client id, and a tenant's `OAuthProvider` may name the same issuer as a
//! `ClusterOAuthProvider`: without the binding, a tenant's server could answer a registration
//! with another client's id and plant its own `registration_client_uri` for the cluster's
//! provider, which is not restricted by the SSRF guard, to call.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use crate::providers::{AccessStore, ProviderError, RegistrationAccess};

const PREFIX: &str = "oauth-operator-rfc7592-";
/// Marks access Secrets (and keeps them out of the watch of consumer Secrets).
pub const ACCESS_LABEL: &str = "oauth-operator.dev/registration-access";
const OWNER_LABEL: &str = "oauth-operator.dev/owner-uid";
const CLIENT_ID: &str = "oauth-operator.dev/client-id";
const ISSUER: &str = "oauth-operator.dev/issuer";
const PROVIDER: &str = "oauth-operator.dev/provider";
const CLIENT_URI_KEY: &str = "registrationClientUri";
const TOKEN_KEY: &str = "registrationAccessToken";

/// FNV-1a, 64 bits: a name that is the same on every run (std's hasher promises no such thing).
pub(super) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The access records of one provider (`OAuthProvider/<ns>/<name>` or
/// `ClusterOAuthProvider/<name>`) at one server (by issuer) in the operator's namespace.
pub struct SecretAccessStore {
    api: Api<Secret>,
    issuer: String,
    provider: String,
}

impl SecretAccessStore {
    pub fn new(client: Client, namespace: &str, issuer: &str, provider: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            issuer: issuer.trim_end_matches('/').to_string(),
            provider: provider.to_string(),
        }
    }

    fn is_ours(&self, annotations: &BTreeMap<String, String>) -> bool {
        saved_by(annotations, &self.provider)
    }

    fn name(&self, client_id: &str) -> String {
        format!("{PREFIX}{:016x}", fnv1a(&[&self.issuer, client_id]))
    }

    /// Whether a Secret under that name is this server's record of `client_id` (a hash
    /// collision, or a Secret someone else made, is not).
    fn is_record_of(&self, secret: &Secret, client_id: &str) -> bool {
        let a = secret.annotations();
        secret.labels().get(ACCESS_LABEL).map(String::as_str) == Some("true")
            && a.get(CLIENT_ID).map(String::as_str) == Some(client_id)
            && a.get(ISSUER) == Some(&self.issuer)
            && self.is_ours(a)
    }
}

/// Whether a record was saved by `provider` (one from before the binding carries none: it was
/// saved by whichever provider has used it since, and the next save binds it).
fn saved_by(annotations: &BTreeMap<String, String>, provider: &str) -> bool {
    annotations.get(PROVIDER).is_none_or(|p| p == provider)
}

fn failed(operation: &'static str, e: kube::Error) -> ProviderError {
    ProviderError::Unavailable {
        operation,
        outcome_unknown: false,
        message: format!("the registration access record: {e}"),
    }
}

fn data(access: &RegistrationAccess) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (
            CLIENT_URI_KEY.to_string(),
            ByteString(access.client_uri.clone().into_bytes()),
        ),
        (
            TOKEN_KEY.to_string(),
            ByteString(access.token.expose_secret().as_bytes().to_vec()),
        ),
    ])
}

#[async_trait::async_trait]
impl AccessStore for SecretAccessStore {
    async fn load(&self, client_id: &str) -> Result<Option<RegistrationAccess>, ProviderError> {
        let Some(secret) = self
            .api
            .get_opt(&self.name(client_id))
            .await
            .map_err(|e| failed("load_access", e))?
        else {
            return Ok(None);
        };
        if !self.is_record_of(&secret, client_id) {
            return Ok(None);
        }
        let value = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        Ok(match (value(CLIENT_URI_KEY), value(TOKEN_KEY)) {
            (Some(client_uri), Some(token)) => Some(RegistrationAccess {
                client_uri,
                token: SecretString::from(token),
                owner_uid: secret.labels().get(OWNER_LABEL).cloned(),
            }),
            _ => None,
        })
    }

    async fn save(
        &self,
        client_id: &str,
        owner_uid: Option<&str>,
        access: &RegistrationAccess,
    ) -> Result<(), ProviderError> {
        let name = self.name(client_id);
        let mut labels = BTreeMap::from([(ACCESS_LABEL.to_string(), "true".to_string())]);
        if let Some(owner) = owner_uid {
            labels.insert(OWNER_LABEL.to_string(), owner.to_string());
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (CLIENT_ID.to_string(), client_id.to_string()),
                    (ISSUER.to_string(), self.issuer.clone()),
                    (PROVIDER.to_string(), self.provider.clone()),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data(access)),
            ..Default::default()
        };
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A new token for a recorded client: the data changes, the owner stays
                // unless one is given.
                let existing = self
                    .api
                    .get(&name)
                    .await
                    .map_err(|e| failed("save_access", e))?;
                if !self.is_record_of(&existing, client_id) {
                    return Err(ProviderError::Unavailable {
                        operation: "save_access",
                        outcome_unknown: false,
                        message: format!(
                            "Secret {name} exists and is not this operator's record of client {client_id}"
                        ),
                    });
                }
                self.api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&secret))
                    .await
                    .map(drop)
                    .map_err(|e| failed("save_access", e))
            }
            Err(e) => Err(failed("save_access", e)),
        }
    }

    async fn forget(&self, client_id: &str) -> Result<(), ProviderError> {
        match self
            .api
            .delete(&self.name(client_id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(failed("forget_access", e)),
        }
    }

    async fn owned_by(&self, owner_uid: &str) -> Result<Vec<String>, ProviderError> {
        let params =
            ListParams::default().labels(&format!("{ACCESS_LABEL}=true,{OWNER_LABEL}={owner_uid}"));
        let list = self
            .api
            .list_metadata(&params)
            .await
            .map_err(|e| failed("find_access", e))?;
        Ok(list
            .items
            .iter()
            .filter(|s| s.annotations().get(ISSUER) == Some(&self.issuer))
            .filter(|s| self.is_ours(s.annotations()))
            .filter_map(|s| s.annotations().get(CLIENT_ID).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_serves_only_the_provider_that_saved_it() {
        let with = |p: Option<&str>| {
            let mut a = BTreeMap::from([(ISSUER.to_string(), "https://idp".to_string())]);
            if let Some(p) = p {
                a.insert(PROVIDER.to_string(), p.to_string());
            }
            a
        };
        let cluster = "ClusterOAuthProvider/shared";
        let tenant = "OAuthProvider/team-a/idp";
        assert!(saved_by(&with(Some(cluster)), cluster));
        assert!(
            !saved_by(&with(Some(tenant)), cluster),
            "a tenant's record is not the cluster's"
        );
        assert!(!saved_by(&with(Some(cluster)), tenant));
        assert!(
            saved_by(&with(None), cluster),
            "a record from before the binding"
        );
    }

    #[test]
    fn names_are_stable_and_separate_servers() {
        // Fixed values: a change of the hash would orphan every record on upgrade.
        assert_eq!(fnv1a(&["a"]), 0x089b_e207_b544_f1e4);
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        assert_ne!(
            fnv1a(&["https://a.example", "c1"]),
            fnv1a(&["https://b.example", "c1"])
        );
    }
}
