//! Spec -> desired client: pure, no IO, unit-tested.

use super::error::{Error, Result};
use crate::api::validation::{validate_redirect_uri, validate_scope};
use crate::api::{ClientType, OAuthApplication};
use crate::providers::DesiredClient;

/// Validates the spec (mirroring the CRD's CEL rules, in case the installed CRD is older than
/// the operator) and builds the backend-neutral client.
pub fn desired_client(app: &OAuthApplication) -> Result<DesiredClient> {
    let spec = &app.spec;
    let mut problems = Vec::new();
    for uri in spec
        .redirect_uris
        .iter()
        .chain(&spec.post_logout_redirect_uris)
    {
        if let Err(e) = validate_redirect_uri(&uri.0) {
            problems.push(e.to_string());
        }
    }
    for scope in &spec.scopes {
        if !validate_scope(scope) {
            problems.push(format!("{scope:?} is not a valid scope token"));
        }
    }
    if spec.display_name.as_deref().is_some_and(|n| {
        n.chars().any(|c| {
            c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
    }) {
        problems.push(
            "displayName must not contain control characters or bidirectional overrides".into(),
        );
    }
    let public = spec.client_type == ClientType::Public;
    if public
        && spec
            .secret
            .as_ref()
            .and_then(|s| s.keys.as_ref())
            .is_some_and(|k| k.client_secret.is_some())
    {
        problems
            .push("a public client has no client secret: remove secret.keys.clientSecret".into());
    }
    if public
        && spec
            .grant_types
            .contains(&crate::api::GrantType::ClientCredentials)
    {
        problems.push("a public client cannot use the client_credentials grant".into());
    }
    if let Some(rotation) = &spec.rotation {
        let grace = rotation.grace_period.map(std::time::Duration::from);
        let period = rotation.period.map(std::time::Duration::from);
        if public && grace.is_some() {
            problems.push(
                "a public client has no client secret to rotate: remove rotation.gracePeriod"
                    .into(),
            );
        }
        if let Some(g) = grace
            && (g < std::time::Duration::from_secs(1)
                || g > std::time::Duration::from_secs(8760 * 3600))
        {
            problems.push("rotation.gracePeriod must be between 1s and 8760h".into());
        }
        if let (Some(g), Some(p)) = (grace, period)
            && g.as_secs() * 10 > p.as_secs() * 9
        {
            problems.push(
                "rotation.gracePeriod must be at most nine tenths of rotation.period (a scheduled rotation may come a \
                 tenth early; one previous secret or old client at a time)"
                    .into(),
            );
        }
    }
    if !problems.is_empty() {
        return Err(Error::InvalidSpec(problems.join("; ")));
    }
    let mut scopes: Vec<String> = Vec::new();
    for s in &spec.scopes {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    Ok(DesiredClient {
        name: app.display_name(),
        redirect_uris: spec.redirect_uris.iter().map(|u| u.0.clone()).collect(),
        post_logout_redirect_uris: spec
            .post_logout_redirect_uris
            .iter()
            .map(|u| u.0.clone())
            .collect(),
        scopes,
        public,
        grant_types: spec
            .grant_types
            .iter()
            .map(|g| g.as_str().to_string())
            .collect(),
        pkce_required: spec.pkce_required,
        consent_screen: spec.consent_screen,
        rotation_grace: spec
            .rotation
            .as_ref()
            .and_then(|r| r.grace_period)
            .map(|d| std::time::Duration::from(d).as_secs().max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> OAuthApplication {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn builds_desired_client_from_yaml() {
        let a = app(r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: web, namespace: team-a}
spec:
  providerRef: {name: clerk}
  redirectUris: ["https://web.example.com/callback", "http://127.0.0.1:8080/cb"]
  scopes: [profile, email, profile]
  pkceRequired: true
"#);
        let d = desired_client(&a).unwrap();
        assert_eq!(d.name, "team-a/web");
        assert_eq!(d.scopes, vec!["profile", "email"]);
        assert!(!d.public);
        assert_eq!(d.pkce_required, Some(true));
        assert_eq!(d.consent_screen, None);
    }

    #[test]
    fn rejects_every_bad_field_in_one_message() {
        let a = app(r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: web, namespace: team-a}
spec:
  providerRef: {name: clerk}
  clientType: public
  redirectUris: ["http://web.example.com/callback", "https://*.example.com/cb"]
  scopes: ["two words"]
  grantTypes: [client_credentials]
  secret: {keys: {clientSecret: S}}
"#);
        let Err(Error::InvalidSpec(msg)) = desired_client(&a) else {
            panic!("must be invalid")
        };
        for part in [
            "must use https",
            "wildcard",
            "not a valid scope",
            "no client secret",
            "client_credentials",
        ] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
    }

    #[test]
    fn grace_period_is_carried_in_seconds_and_checked_against_the_period() {
        let with = |rotation: &str, client_type: &str| {
            app(&format!(
                r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: web, namespace: team-a}}
spec:
  providerRef: {{name: kc}}
  clientType: {client_type}
  rotation: {rotation}
"#
            ))
        };
        let d = desired_client(&with("{gracePeriod: 1h30m}", "confidential")).unwrap();
        assert_eq!(d.rotation_grace, Some(5400));
        let d = desired_client(&with("{period: 720h}", "confidential")).unwrap();
        assert_eq!(d.rotation_grace, None);
        for (rotation, client_type, part) in [
            (
                "{period: 1h, gracePeriod: 55m}",
                "confidential",
                "nine tenths of rotation.period",
            ),
            ("{gracePeriod: 0s}", "confidential", "between 1s and 8760h"),
            (
                "{gracePeriod: 8761h}",
                "confidential",
                "between 1s and 8760h",
            ),
            ("{gracePeriod: 1h}", "public", "remove rotation.gracePeriod"),
        ] {
            let Err(Error::InvalidSpec(msg)) = desired_client(&with(rotation, client_type)) else {
                panic!("{rotation} ({client_type}) must be invalid")
            };
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
    }
}
