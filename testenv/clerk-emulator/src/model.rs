//! Wire types, field for field as Clerk's Backend API OpenAPI spec (`bapi-2026-05-12.yml`)
//! declares them in `components/schemas`.
//!
//! Every field is serialized, including `null`s: the spec marks all `OAuthApplication`
//! properties as required, the nullable ones (`client_uri`, `client_image_url`) included.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `object` discriminator of an OAuth application (`enum: [oauth_application]`).
pub const OAUTH_APPLICATION_OBJECT: &str = "oauth_application";

/// `components/schemas/OAuthApplication`.
///
/// Never carries a client secret: GET, list and PATCH answer with this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApplication {
    /// Always `"oauth_application"`.
    pub object: String,
    /// `oa_...`; the id used in the `/oauth_applications/{oauth_application_id}` paths.
    pub id: String,
    /// `ins_...`, the Clerk instance owning the application.
    pub instance_id: String,
    pub name: String,
    /// The OAuth 2.0 `client_id`.
    pub client_id: String,
    /// `nullable: true`.
    pub client_uri: Option<String>,
    /// `nullable: true`.
    pub client_image_url: Option<String>,
    /// True for clients registered through `/oauth/register` (RFC 7591); never for BAPI-created ones.
    pub dynamically_registered: bool,
    pub consent_screen_enabled: bool,
    pub pkce_required: bool,
    pub public: bool,
    /// Space separated.
    pub scopes: String,
    pub redirect_uris: Vec<String>,
    /// Deprecated by Clerk; the first redirect URI, or `""` when there is none.
    pub callback_url: String,
    pub authorize_url: String,
    pub token_fetch_url: String,
    pub user_info_url: String,
    pub discovery_url: String,
    pub token_introspection_url: String,
    /// Unix milliseconds (`type: integer, format: int64`).
    pub created_at: i64,
    /// Unix milliseconds (`type: integer, format: int64`).
    pub updated_at: i64,
}

/// `components/schemas/OAuthApplicationWithSecret`: `allOf [OAuthApplication, {client_secret}]`.
///
/// Only the create and rotate_secret responses carry it. `client_secret` is `""` for public
/// clients (the spec: "Empty if public client.").
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthApplicationWithSecret {
    #[serde(flatten)]
    pub application: OAuthApplication,
    pub client_secret: String,
}

impl fmt::Debug for OAuthApplicationWithSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthApplicationWithSecret")
            .field("application", &self.application)
            .field(
                "client_secret",
                &if self.client_secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// `components/schemas/OAuthApplications` (`additionalProperties: false`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApplications {
    pub data: Vec<OAuthApplication>,
    /// Number of applications matching the query, before `limit`/`offset`.
    pub total_count: i64,
}

/// `components/schemas/DeletedObject` (`additionalProperties: false`; `slug` and
/// `external_id` do not apply to OAuth applications and are omitted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletedObject {
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// `components/schemas/ClerkError`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClerkError {
    pub message: String,
    pub long_message: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `components/schemas/ClerkErrors`: every non-2xx body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClerkErrors {
    pub errors: Vec<ClerkError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clerk_trace_id: Option<String>,
}

/// The parameters of `POST /oauth_applications`, for [`crate::EmulatorHandle::create_app`]
/// (seeding an application as if created in the dashboard). Same meaning and defaults as the
/// request body: `scopes` "profile email", `consent_screen_enabled` true, `pkce_required`
/// false, `public` false.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOAuthApplication {
    pub name: String,
    #[serde(default)]
    pub redirect_uris: Option<Vec<String>>,
    #[serde(default)]
    pub callback_url: Option<String>,
    #[serde(default)]
    pub scopes: Option<String>,
    #[serde(default)]
    pub consent_screen_enabled: Option<bool>,
    #[serde(default)]
    pub pkce_required: Option<bool>,
    #[serde(default)]
    pub public: Option<bool>,
}

impl NewOAuthApplication {
    /// A confidential client with defaults for everything but `name` and `redirect_uris`.
    pub fn new(name: impl Into<String>, redirect_uris: &[&str]) -> Self {
        Self {
            name: name.into(),
            redirect_uris: Some(redirect_uris.iter().map(|s| (*s).to_owned()).collect()),
            ..Self::default()
        }
    }
}
