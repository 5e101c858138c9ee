//! Spec validation that the CRD schema cannot express, and the Rust mirror of the CEL rules
//! that it does, so the reconciler never sends an invalid client to a provider even when the
//! CRD in the cluster is older than the operator.

use url::{Host, Url};

/// The CEL rules on a redirect URI (each one `(rule, message)`), used in the CRD schema.
/// `isURL` comes from the Kubernetes CEL URL library.
pub const REDIRECT_URI_RULES: &[(&str, &str)] = &[
    (
        "self.matches('^[!-~]+$')",
        "must be printable ASCII without spaces: give an internationalized host in punycode (xn--) and percent-encode the rest",
    ),
    (
        "!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')",
        "must not contain user information (user:password@)",
    ),
    (
        "self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*:') && isURL(self)",
        "must be an absolute URI",
    ),
    (
        "!self.contains('#')",
        "must not contain a fragment (RFC 9700)",
    ),
    (
        "!self.contains('*')",
        "must not contain a wildcard (RFC 9700)",
    ),
    (
        // One regex rather than url() calls: the CEL cost budget of a CRD is bounded.
        r"self.matches('^(https://[^/?#]|http://(127\\.0\\.0\\.1|\\[::1\\]|localhost)([:/?]|$)|[a-zA-Z][a-zA-Z0-9+-]*(\\.[a-zA-Z0-9+-]+)+:(/[^/]|[^/]))')",
        "must use https, http on a loopback host (127.0.0.1, [::1], localhost), or a private-use scheme such as com.example.app:/callback (RFC 8252)",
    ),
];

/// Why a redirect URI is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("{uri:?} is not an absolute URI: {reason}")]
    NotAbsolute { uri: String, reason: String },
    #[error(
        "{0:?} must be printable ASCII without spaces: give an internationalized host in punycode (xn--) and percent-encode the rest"
    )]
    NotAscii(String),
    #[error("{0:?} must not contain user information (user:password@)")]
    UserInfo(String),
    #[error("{0:?} must not contain a fragment (RFC 9700)")]
    Fragment(String),
    #[error("{0:?} must not contain a wildcard (RFC 9700)")]
    Wildcard(String),
    #[error(
        "{0:?} must use https, http on a loopback host (127.0.0.1, [::1], localhost), or a private-use scheme such as com.example.app:/callback"
    )]
    Scheme(String),
}

/// Checks one redirect URI against OAuth 2.0 Security BCP (RFC 9700) and RFC 8252 for native
/// apps: absolute, no fragment, no wildcard, `https` except loopback `http` and private-use
/// (reverse domain name) schemes.
pub fn validate_redirect_uri(uri: &str) -> Result<(), RedirectUriError> {
    // Checked on the raw text: the URL parser would turn a Unicode host into punycode (a
    // look-alike hidden from whoever reads the spec) and drop control characters.
    if uri.is_empty() || !uri.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(RedirectUriError::NotAscii(uri.escape_debug().to_string()));
    }
    if uri.contains('*') {
        return Err(RedirectUriError::Wildcard(uri.to_string()));
    }
    if uri.contains('#') {
        return Err(RedirectUriError::Fragment(uri.to_string()));
    }
    let parsed = Url::parse(uri).map_err(|e| RedirectUriError::NotAbsolute {
        uri: uri.to_string(),
        reason: e.to_string(),
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(RedirectUriError::UserInfo(uri.to_string()));
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if is_loopback(parsed.host()) => Ok(()),
        "http" | "https" => Err(RedirectUriError::Scheme(uri.to_string())),
        scheme if scheme.contains('.') && parsed.host().is_none() => Ok(()),
        _ => Err(RedirectUriError::Scheme(uri.to_string())),
    }
}

fn is_loopback(host: Option<Host<&str>>) -> bool {
    match host {
        Some(Host::Domain(d)) => d == "localhost",
        Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// A scope token (RFC 6749 section 3.3): printable ASCII except space, `"` and `\`.
pub const SCOPE_PATTERN: &str = r#"^[\x21\x23-\x5B\x5D-\x7E]+$"#;

pub fn validate_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_loopback_and_private_use_schemes() {
        for ok in [
            "https://app.example.com/callback",
            "https://app.example.com:8443/cb?x=1",
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "http://[::1]:9000/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert_eq!(validate_redirect_uri(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_hidden_characters_and_user_information() {
        for bad in [
            "https://аpple.example.com/cb", // Cyrillic а: a look-alike host
            "https://app.example.com/c b",
            "https://app.example.com/cb\n",
            "https://app.example.com/\u{202e}bc",
        ] {
            assert!(
                matches!(
                    validate_redirect_uri(bad),
                    Err(RedirectUriError::NotAscii(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            validate_redirect_uri("https://user:pw@app.example.com/cb"),
            Err(RedirectUriError::UserInfo(_))
        ));
        assert!(matches!(
            validate_redirect_uri("https://evil.example@app.example.com/cb"),
            Err(RedirectUriError::UserInfo(_))
        ));
        // Punycode is explicit, and accepted.
        assert_eq!(
            validate_redirect_uri("https://xn--bcher-kva.example/cb"),
            Ok(())
        );
    }

    #[test]
    fn rejects_what_rfc_9700_forbids() {
        assert!(matches!(
            validate_redirect_uri("/relative/cb"),
            Err(RedirectUriError::NotAbsolute { .. })
        ));
        assert_eq!(
            validate_redirect_uri("https://app.example.com/cb#frag"),
            Err(RedirectUriError::Fragment(
                "https://app.example.com/cb#frag".into()
            ))
        );
        assert_eq!(
            validate_redirect_uri("https://*.example.com/cb"),
            Err(RedirectUriError::Wildcard(
                "https://*.example.com/cb".into()
            ))
        );
        for bad in [
            "http://app.example.com/cb",
            "http://10.0.0.1/cb",
            "myapp:/cb",
            "ftp://x/y",
        ] {
            assert_eq!(
                validate_redirect_uri(bad),
                Err(RedirectUriError::Scheme(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn scope_tokens() {
        assert!(validate_scope("openid"));
        assert!(validate_scope("public_metadata"));
        assert!(validate_scope("api:read"));
        assert!(!validate_scope(""));
        assert!(!validate_scope("two words"));
        assert!(!validate_scope("quo\"te"));
    }
}
