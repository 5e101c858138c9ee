//! Wire types, field for field as Clerk's Backend API OpenAPI spec (`bapi-2026-05-12.yml`)
//! and Frontend API OpenAPI spec (`fapi-2026-05-12.yml`) declare them in `components/schemas`.
//!
//! Every field is serialized, including `null`s: the spec marks all `OAuthApplication`
//! properties as required, the nullable ones (`client_uri`, `client_image_url`) included.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// The one user of the emulated instance: every authorization request is approved for them
/// (there is no sign-in or consent screen). Its claims answer `/oauth/userinfo` and fill
/// id_tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmulatedUser {
    /// `user_...`; the `sub` and `user_id` claims. Default `user_emulated`.
    pub id: String,
    /// Default `emulated.user@example.com` (always verified).
    pub email: String,
    /// `given_name`. Default `Emulated`.
    pub first_name: Option<String>,
    /// `family_name`. Default `User`.
    pub last_name: Option<String>,
    /// `preferred_username` (and the deprecated `username`). Default `emulated_user`.
    pub username: Option<String>,
    /// `picture`. Default none.
    pub image_url: Option<String>,
    /// Answered for the `public_metadata` scope.
    pub public_metadata: Map<String, Value>,
    /// Answered for the `private_metadata` scope.
    pub private_metadata: Map<String, Value>,
}

impl Default for EmulatedUser {
    fn default() -> Self {
        Self {
            id: "user_emulated".to_owned(),
            email: "emulated.user@example.com".to_owned(),
            first_name: Some("Emulated".to_owned()),
            last_name: Some("User".to_owned()),
            username: Some("emulated_user".to_owned()),
            image_url: None,
            public_metadata: Map::new(),
            private_metadata: Map::new(),
        }
    }
}

impl EmulatedUser {
    /// `name`: first and last name joined, `None` when both are absent.
    pub fn full_name(&self) -> Option<String> {
        let parts: Vec<&str> = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// Frontend API `components/schemas/OAuth.Token` (`additionalProperties: false`), the
/// `/oauth/token` success body (RFC 6749 section 5.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthToken {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Only when the `openid` scope was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("scope", &self.scope)
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// An RFC 6749 section 5.2 error body (`{error, error_description}`), as the Frontend API
/// spec's `OAuth.TokenError400` and `OAuth.TokenError401` responses declare it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// The object of a userinfo answer (`object` has no enum in the spec; Clerk answers this).
pub const OAUTH_USER_INFO_OBJECT: &str = "oauth_user_info";

/// Frontend API `components/schemas/OAuth.UserInfo` (`additionalProperties: false`). Which
/// optional claims are present depends on the granted scopes: `email` gives `email` and
/// `email_verified`; `profile` gives the names, `username`, `preferred_username` and
/// `picture` (those the user has); `public_metadata` / `private_metadata` give those maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthUserInfo {
    /// `oauth_user_info`.
    pub object: String,
    pub instance_id: String,
    pub user_id: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Deprecated by Clerk in favour of `preferred_username`; still answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_metadata: Option<Map<String, Value>>,
}

/// Frontend API `components/schemas/WellKnown.OpenIDConfiguration` (`additionalProperties:
/// false`; every field but `end_session_endpoint`, which the emulator does not serve, is
/// required and answered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIdConfiguration {
    /// The Frontend API URL (no trailing slash).
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    pub userinfo_endpoint: String,
    pub jwks_uri: String,
    pub scopes_supported: Vec<String>,
    pub response_types_supported: Vec<String>,
    pub response_modes_supported: Vec<String>,
    pub grant_types_supported: Vec<String>,
    pub subject_types_supported: Vec<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub token_endpoint_auth_methods_supported: Vec<String>,
    pub claims_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub backchannel_logout_supported: bool,
    pub frontchannel_logout_supported: bool,
}

/// Frontend API `components/schemas/OAuth.TokenInfo` (`additionalProperties: false`), the
/// `/oauth/token_info` body (RFC 7662 introspection). Inactive tokens answer `{active:false}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthTokenInfo {
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}
