//! OpenID Connect Discovery 1.0 and RFC 8414 server metadata: the endpoints of an issuer, a
//! provider-level fact read once per backend (and again when the provider changes).

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::ProviderError;
use super::http::{ErrorBodies, HttpEndpoint};
use crate::api::Endpoints;

/// The metadata fields the operator uses (unknown fields ignored).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ServerMetadata {
    pub issuer: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// Where the document was read (not a metadata field).
    #[serde(skip)]
    pub discovery_url: String,
}

impl ServerMetadata {
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            issuer: Some(self.issuer.clone()),
            discovery: Some(self.discovery_url.clone()),
            authorize: self.authorization_endpoint.clone(),
            token: Some(self.token_endpoint.clone()),
            userinfo: self.userinfo_endpoint.clone(),
            end_session: self.end_session_endpoint.clone(),
            jwks: self.jwks_uri.clone(),
        }
    }
}

/// The endpoints every client a backend reports carries: once `metadata` is known, one copy
/// made into `shared` (thousands of clients in a list share it); before that, `fallback`'s,
/// never kept.
pub fn shared_endpoints(
    shared: &std::sync::OnceLock<std::sync::Arc<Endpoints>>,
    metadata: Option<&ServerMetadata>,
    fallback: impl FnOnce() -> Endpoints,
) -> std::sync::Arc<Endpoints> {
    match metadata {
        Some(m) => shared
            .get_or_init(|| std::sync::Arc::new(m.endpoints()))
            .clone(),
        None => std::sync::Arc::new(fallback()),
    }
}

/// Discovery answers carry no error body worth reading; a 404 means "not here".
struct DiscoveryErrors;

impl ErrorBodies for DiscoveryErrors {
    fn is_not_found(&self, _body: &[u8]) -> bool {
        true
    }

    fn message(&self, status: StatusCode, _body: &[u8]) -> String {
        status.canonical_reason().unwrap_or("error").to_string()
    }
}

/// The well-known URLs of `issuer`, in the order they are tried: OpenID Connect Discovery
/// (`<issuer>/.well-known/openid-configuration`), then RFC 8414
/// (`<origin>/.well-known/oauth-authorization-server<issuer path>`).
pub fn well_known_urls(issuer: &str) -> Result<[url::Url; 2], ProviderError> {
    let invalid = |e: String| ProviderError::Unsupported(format!("invalid issuer URL: {e}"));
    let parsed = url::Url::parse(issuer).map_err(|e| invalid(e.to_string()))?;
    if parsed.cannot_be_a_base() || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "an issuer is an http(s) URL without query or fragment".into(),
        ));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    let mut oidc = parsed.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut oauth = parsed;
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    Ok([oidc, oauth])
}

/// Reads the issuer's metadata. The document must name the same issuer (OpenID Connect
/// Discovery section 4.3, RFC 8414 section 3.3): a mismatch is refused, since tokens would be
/// issued by someone else.
pub async fn discover(
    endpoint: &HttpEndpoint,
    issuer: &str,
) -> Result<ServerMetadata, ProviderError> {
    let wanted = issuer.trim_end_matches('/');
    let mut last = None;
    for url in well_known_urls(issuer)? {
        let request = endpoint.http.request(Method::GET, url.clone());
        match endpoint
            .send::<ServerMetadata>("discovery", request, &DiscoveryErrors)
            .await
        {
            Ok(mut metadata) => {
                if metadata.issuer.trim_end_matches('/') != wanted {
                    return Err(ProviderError::Rejected {
                        operation: "discovery",
                        status: 200,
                        message: format!(
                            "{url} names issuer {:?}, not {wanted:?}",
                            metadata.issuer
                        ),
                    });
                }
                metadata.discovery_url = url.to_string();
                return Ok(metadata);
            }
            Err(e @ ProviderError::NotFound { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.map_or_else(
        || ProviderError::Unsupported("no discovery URL".into()),
        |_| ProviderError::Rejected {
            operation: "discovery",
            status: 404,
            message: format!(
                "{wanted} serves neither /.well-known/openid-configuration nor RFC 8414 metadata"
            ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_shared_once_discovered_and_a_fallback_is_never_kept() {
        let shared = std::sync::OnceLock::new();
        let fallback = || Endpoints {
            issuer: Some("https://assumed".into()),
            ..Default::default()
        };
        let before = shared_endpoints(&shared, None, fallback);
        assert_eq!(before.issuer.as_deref(), Some("https://assumed"));
        assert!(shared.get().is_none(), "not kept before discovery");
        let metadata = ServerMetadata {
            issuer: "https://id".into(),
            authorization_endpoint: None,
            token_endpoint: "https://id/token".into(),
            userinfo_endpoint: None,
            end_session_endpoint: None,
            jwks_uri: None,
            registration_endpoint: None,
            discovery_url: "https://id/.well-known/openid-configuration".into(),
        };
        let first = shared_endpoints(&shared, Some(&metadata), fallback);
        let second = shared_endpoints(&shared, Some(&metadata), fallback);
        assert!(std::sync::Arc::ptr_eq(&first, &second), "one copy");
        assert_eq!(*first, metadata.endpoints());
    }

    #[test]
    fn well_known_urls_follow_both_specs() {
        let [oidc, oauth] = well_known_urls("https://id.example.com/realms/team/").unwrap();
        assert_eq!(
            oidc.as_str(),
            "https://id.example.com/realms/team/.well-known/openid-configuration"
        );
        assert_eq!(
            oauth.as_str(),
            "https://id.example.com/.well-known/oauth-authorization-server/realms/team"
        );
        let [oidc, oauth] = well_known_urls("http://127.0.0.1:4444").unwrap();
        assert_eq!(
            oidc.as_str(),
            "http://127.0.0.1:4444/.well-known/openid-configuration"
        );
        assert_eq!(
            oauth.as_str(),
            "http://127.0.0.1:4444/.well-known/oauth-authorization-server"
        );
        assert!(well_known_urls("https://id.example.com/?tenant=a").is_err());
        assert!(well_known_urls("not a url").is_err());
    }
}
