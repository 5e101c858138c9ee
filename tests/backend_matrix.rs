//! The backend behaviour matrix: one set of rows, run against every backend on its real
//! server (Clerk through its emulator, Ory Hydra, Keycloak). Each row is one test per backend
//! (`<backend>_<row>`), on the control plane, Hydra and Keycloak shared by this binary. Every
//! credential a row sees is used: a client_credentials token at Hydra and Keycloak, the
//! authorization-code flow at Clerk (the only grant it has).
//!
//! Later features add their rows here; a cell a backend cannot support asserts the condition
//! it documents.

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use oauth_operator::api::{OAuthApplication, OAuthProvider};
use serde_json::{Value, json};
use support::{Env, data, ready};
use testenv::hydra::Hydra;
use testenv::keycloak::{Keycloak, KeycloakAdmin};
use testenv::oidc_provider::OidcProvider;
use testenv::server_support::unique_suffix;

const APP: &str = "mx";
const FIRST_URI: &str = "https://mx.example.com/callback";
const SECOND_URI: &str = "https://mx.example.com/v2/callback";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Clerk,
    Hydra,
    Keycloak,
    /// `dynamicRegistration` (RFC 7591/7592) at node oidc-provider.
    DcrOidcProvider,
    /// `dynamicRegistration` at Keycloak's RFC 7591 endpoint.
    DcrKeycloak,
    /// `dynamicRegistration` at Ory Hydra's RFC 7591 endpoint.
    DcrHydra,
}

impl Kind {
    fn dcr(self) -> bool {
        matches!(
            self,
            Kind::DcrOidcProvider | Kind::DcrKeycloak | Kind::DcrHydra
        )
    }

    /// The server software behind the backend.
    fn server(self) -> Kind {
        match self {
            Kind::DcrKeycloak => Kind::Keycloak,
            Kind::DcrHydra => Kind::Hydra,
            k => k,
        }
    }
}

/// Proves a Secret's credentials at `kind`'s server: `Ok(())` when a token is issued (Clerk:
/// the authorization-code flow its clients use; elsewhere client_credentials).
async fn token_with(kind: Kind, secret: &Secret) -> Result<std::result::Result<(), u16>> {
    match kind {
        Kind::Clerk => Ok(support::obtain_token(secret, FIRST_URI).await?.map(drop)),
        _ => Ok(support::client_credentials_token(secret).await?.map(drop)),
    }
}

/// A workload that reads the Secret afresh and obtains a token with whatever it holds, every
/// 200 ms until stopped: (tokens obtained, failures with what the Secret held at the time).
struct Poller {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<(u32, Vec<String>)>>,
}

impl Poller {
    fn start(kind: Kind, secrets: Api<Secret>, name: String) -> Poller {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let secret = secrets.get(&name).await?;
                match token_with(kind, &secret).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(status)) => failures.push(format!(
                        "HTTP {status} for client {}",
                        data(&secret).get("CLIENT_ID").cloned().unwrap_or_default()
                    )),
                    Err(e) => failures.push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok((ok, failures))
        });
        Poller { stop, task }
    }

    async fn finish(self) -> Result<(u32, Vec<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await?
    }
}

/// One backend's server as a test sees it: setup, and the server's own view of its clients.
struct Server {
    kind: Kind,
    env: Env,
    /// Keycloak: the realm of this test and an admin session.
    keycloak: Option<(String, KeycloakAdmin)>,
}

impl Server {
    async fn new(kind: Kind, prefix: &str) -> Result<Server> {
        let env = Env::new(prefix).await?;
        let mut keycloak = None;
        let spec = match kind {
            // `Env::new` already made an OAuthProvider `clerk`; this one is the matrix's.
            Kind::Clerk => json!({"clerk": {
                "baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}}}),
            Kind::Hydra => {
                let hydra = Hydra::shared()?;
                json!({"hydra": {"adminUrl": hydra.admin_url(), "issuerUrl": hydra.issuer()}})
            }
            Kind::DcrOidcProvider => {
                let oidc = OidcProvider::shared()?;
                create_token_secret(&env, oidc.initial_access_token(), &oidc.issuer()).await?;
                json!({"dynamicRegistration": {"issuerUrl": oidc.issuer(),
                    "initialAccessTokenRef": {"name": "dcr-token"}, "rotationStrategy": "Recreate"}})
            }
            Kind::DcrHydra => {
                let hydra = Hydra::shared()?;
                // Hydra's discovery does not name its registration endpoint.
                json!({"dynamicRegistration": {"issuerUrl": hydra.issuer(),
                    "registrationEndpoint": hydra.registration_endpoint(), "rotationStrategy": "Recreate"}})
            }
            Kind::DcrKeycloak => {
                let kc = Keycloak::shared()?;
                let admin = kc.admin().await?;
                let realm = format!("mx-{}", env.ns);
                admin.create_realm(&realm).await?;
                let token = admin
                    .create_initial_access_token(&realm, 100, Duration::ZERO)
                    .await?;
                allow_any_client_scope(&admin, &realm).await?;
                create_token_secret(&env, &token, &kc.issuer(&realm)).await?;
                keycloak = Some((realm.clone(), admin));
                json!({"dynamicRegistration": {"issuerUrl": kc.issuer(&realm),
                    "initialAccessTokenRef": {"name": "dcr-token"}, "rotationStrategy": "Recreate"}})
            }
            Kind::Keycloak => {
                let kc = Keycloak::shared()?;
                let admin = kc.admin().await?;
                let realm = format!("mx-{}", env.ns);
                admin.create_realm(&realm).await?;
                let (client_id, secret) = service_account(&admin, &realm).await?;
                let to = format!("{}/realms/{realm}", kc.base_url().trim_end_matches('/'));
                let credential: Secret = serde_json::from_value(json!({
                    "metadata": {"name": "keycloak-admin", "annotations": support::credential_for(&to)},
                    "stringData": {"clientId": client_id, "clientSecret": secret},
                }))?;
                env.secrets()
                    .create(&PostParams::default(), &credential)
                    .await?;
                keycloak = Some((realm.clone(), admin));
                json!({"keycloak": {"baseUrl": kc.base_url(), "realm": realm,
                    "credentialsRef": {"name": "keycloak-admin"}}})
            }
        };
        let provider: OAuthProvider = serde_json::from_value(json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "metadata": {"name": "idp"}, "spec": spec,
        }))?;
        Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
            .create(&PostParams::default(), &provider)
            .await?;
        Ok(Server {
            kind,
            env,
            keycloak,
        })
    }

    /// The display name `app_yaml` gives an application.
    fn display(&self, name: &str) -> String {
        format!("{name}-{}", self.env.ns)
    }

    fn realm(&self) -> Result<(&str, &KeycloakAdmin)> {
        let (realm, admin) = self.keycloak.as_ref().context("a Keycloak server")?;
        Ok((realm, admin))
    }

    /// The application, the same for every backend but for the grants Clerk lacks.
    fn app_yaml(&self, name: &str, extra: &str) -> String {
        let grants = match self.kind {
            Kind::Clerk => "[authorization_code, refresh_token]",
            _ => "[authorization_code, refresh_token, client_credentials]",
        };
        format!(
            r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: idp}}
  displayName: {name}-{ns}
  redirectUris: ["{FIRST_URI}"]
  scopes: [openid, profile, email]
  grantTypes: {grants}
{extra}
"#,
            ns = self.env.ns
        )
    }

    /// After a rotation: the new credentials obtain a token, the old ones are refused, and
    /// the rotation was reported.
    async fn assert_rotated(&self, before: &Secret, after: &Secret) -> Result<()> {
        self.assert_token(after).await?;
        assert!(
            self.token(before).await?.is_err(),
            "{:?}: the old secret is refused",
            self.kind
        );
        self.env.wait_event(APP, "SecretRotated").await?;
        Ok(())
    }

    /// Proves the Secret's credentials at the server: `Ok(())` when a token is issued.
    async fn token(&self, secret: &Secret) -> Result<std::result::Result<(), u16>> {
        token_with(self.kind, secret).await
    }

    async fn assert_token(&self, secret: &Secret) -> Result<()> {
        self.token(secret)
            .await?
            .map_err(|s| anyhow::anyhow!("{:?}: token refused with HTTP {s}", self.kind))
    }

    /// Whether the server's own authorize endpoint accepts `redirect_uri` for the client.
    async fn authorize_accepts(&self, secret: &Secret, redirect_uri: &str) -> Result<bool> {
        let d = data(secret);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = http
            .get(&d["AUTHORIZE_URL"])
            .query(&[
                ("response_type", "code"),
                ("client_id", d["CLIENT_ID"].as_str()),
                ("redirect_uri", redirect_uri),
                ("scope", "openid"),
                ("state", "state-0123456789"),
                (
                    "code_challenge",
                    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                ),
                ("code_challenge_method", "S256"),
            ])
            .send()
            .await?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(match self.kind.server() {
            // Clerk (emulated) and Hydra answer an accepted request with a redirect onwards
            // (a code, or Hydra's login page); a refused redirect URI gets an error.
            Kind::Clerk => status.is_redirection() && location.starts_with(redirect_uri),
            Kind::Hydra => status.is_redirection() && location.contains("login_challenge"),
            // Keycloak shows its login page (200) or an error page (400).
            Kind::Keycloak => status.is_success(),
            // oidc-provider sends the browser on to its interaction (login) page.
            Kind::DcrOidcProvider => status.is_redirection() && location.contains("/interaction/"),
            Kind::DcrKeycloak | Kind::DcrHydra => unreachable!("server() maps these"),
        })
    }

    /// The operator's RFC 7592 access record of a client: (Secret, client URI, token).
    async fn access(&self, client_id: &str) -> Result<Option<(Secret, String, String)>> {
        let list = self
            .env
            .secrets()
            .list(
                &kube::api::ListParams::default()
                    .labels("oauth-operator.dev/registration-access=true"),
            )
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|s| {
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("oauth-operator.dev/client-id"))
                    .map(String::as_str)
                    == Some(client_id)
            })
            .map(|s| {
                let d = data(&s);
                let (uri, token) = (
                    d["registrationClientUri"].clone(),
                    d["registrationAccessToken"].clone(),
                );
                (s, uri, token)
            }))
    }

    /// The server's view of a client (by the ids in status), `None` when it is gone.
    async fn remote(&self, app: &OAuthApplication) -> Result<Option<Value>> {
        let status = app.status.as_ref().context("status")?;
        let object_id = status.provider_object_id.clone().context("object id")?;
        if self.kind.dcr() {
            // RFC 7592 read with the operator's own access (a GET rotates no token at these
            // servers). No record, or a 401 that persists: the client is gone. (A 401 can also
            // be a token the operator's own update rotated between the read of the record and
            // the GET: read it again.)
            for _ in 0..5 {
                let Some((_, uri, token)) = self.access(&object_id).await? else {
                    return Ok(None);
                };
                let r = reqwest::Client::new()
                    .get(uri)
                    .bearer_auth(token)
                    .send()
                    .await?;
                if r.status() == 401 || r.status() == 404 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                return Ok(Some(r.error_for_status()?.json().await?));
            }
            return Ok(None);
        }
        match self.kind {
            Kind::Clerk => Ok(self
                .env
                .clerk
                .app(&object_id)
                .map(|a| serde_json::to_value(a).unwrap_or_default())),
            Kind::Hydra => {
                let hydra = Hydra::shared()?;
                let r = reqwest::get(format!("{}/admin/clients/{object_id}", hydra.admin_url()))
                    .await?;
                if r.status() == 404 {
                    return Ok(None);
                }
                Ok(Some(r.error_for_status()?.json().await?))
            }
            Kind::Keycloak => {
                let (realm, admin) = self.realm()?;
                let r = admin
                    .request(
                        reqwest::Method::GET,
                        &format!("/{realm}/clients/{object_id}"),
                    )
                    .await?
                    .send()
                    .await?;
                if r.status() == 404 {
                    return Ok(None);
                }
                Ok(Some(r.error_for_status()?.json().await?))
            }
            _ => unreachable!("dynamic registration is read above"),
        }
    }

    /// The scopes the server holds for the client.
    fn scopes(&self, remote: &Value) -> Vec<String> {
        match self.kind {
            Kind::Clerk => remote["scopes"].as_str(),
            Kind::Hydra | Kind::DcrOidcProvider | Kind::DcrKeycloak | Kind::DcrHydra => {
                remote["scope"].as_str()
            }
            Kind::Keycloak => {
                return serde_json::from_value(remote["defaultClientScopes"].clone())
                    .unwrap_or_default();
            }
        }
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }

    fn redirect_uris(&self, remote: &Value) -> Vec<String> {
        let field = match self.kind {
            Kind::Keycloak => "redirectUris",
            _ => "redirect_uris",
        };
        serde_json::from_value(remote[field].clone()).unwrap_or_default()
    }

    /// Changes a client's redirect URIs at the server, as an admin would in its console.
    async fn edit_redirect_uris(&self, app: &OAuthApplication, uri: &str) -> Result<()> {
        let status = app.status.as_ref().context("status")?;
        let object_id = status.provider_object_id.clone().context("object id")?;
        match self.kind {
            Kind::DcrHydra => {
                // A JSON patch: a PUT would also replace the client's registration access token.
                reqwest::Client::new()
                    .patch(format!(
                        "{}/admin/clients/{object_id}",
                        Hydra::shared()?.admin_url()
                    ))
                    .json(&json!([{"op": "replace", "path": "/redirect_uris", "value": [uri]}]))
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Kind::DcrKeycloak => {
                let (realm, admin) = self.realm()?;
                let client = admin
                    .find_client(realm, &object_id)
                    .await?
                    .context("client")?;
                let id = client["id"].as_str().context("id")?;
                admin
                    .request(reqwest::Method::PUT, &format!("/{realm}/clients/{id}"))
                    .await?
                    .json(&json!({"redirectUris": [uri]}))
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Kind::DcrOidcProvider => {
                // oidc-provider has no admin API: an RFC 7592 update with the stored access,
                // whose rotated token is written back to the operator's record.
                let (record, client_uri, token) =
                    self.access(&object_id).await?.context("access record")?;
                let mut client = self.remote(app).await?.context("client")?;
                let body = client.as_object_mut().context("object")?;
                for k in [
                    "registration_access_token",
                    "registration_client_uri",
                    "client_id_issued_at",
                    "client_secret_expires_at",
                ] {
                    body.remove(k);
                }
                body.insert("redirect_uris".into(), json!([uri]));
                let answer: Value = reqwest::Client::new()
                    .put(&client_uri)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                if let Some(new) = answer["registration_access_token"].as_str() {
                    let patch = json!({"stringData": {"registrationAccessToken": new}});
                    self.env
                        .secrets()
                        .patch(
                            &record.metadata.name.clone().context("name")?,
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await?;
                }
            }
            Kind::Clerk => {
                self.env
                    .clerk
                    .edit_app(&object_id, |a| a.redirect_uris = vec![uri.to_string()])
                    .context("edit")?;
            }
            Kind::Hydra => {
                let mut client = self.remote(app).await?.context("client")?;
                client["redirect_uris"] = json!([uri]);
                reqwest::Client::new()
                    .put(format!(
                        "{}/admin/clients/{object_id}",
                        Hydra::shared()?.admin_url()
                    ))
                    .json(&client)
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Kind::Keycloak => {
                let (realm, admin) = self.realm()?;
                admin
                    .request(
                        reqwest::Method::PUT,
                        &format!("/{realm}/clients/{object_id}"),
                    )
                    .await?
                    .json(&json!({"redirectUris": [uri]}))
                    .send()
                    .await?
                    .error_for_status()?;
            }
        }
        Ok(())
    }

    /// Clients at the server that belong to the application with `uid` (by the owner marker
    /// where the backend has one, by display name at Clerk, whose emulator is this test's own).
    /// How many clients with this client id the server holds (Hydra, Keycloak).
    async fn clients_with_id(&self, client_id: &str) -> Result<usize> {
        let all: Vec<Value> = match self.kind {
            Kind::Hydra => {
                reqwest::get(format!(
                    "{}/admin/clients?page_size=500",
                    Hydra::shared()?.admin_url()
                ))
                .await?
                .error_for_status()?
                .json()
                .await?
            }
            Kind::Keycloak => {
                let (realm, admin) = self.realm()?;
                admin
                    .request(reqwest::Method::GET, &format!("/{realm}/clients"))
                    .await?
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?
            }
            k => anyhow::bail!("{k:?} does not take given credentials"),
        };
        Ok(all
            .iter()
            .filter(|c| c["client_id"] == client_id || c["clientId"] == client_id)
            .count())
    }

    async fn clients_of(&self, uid: &str, display: &str) -> Result<usize> {
        match self.kind {
            // No list in RFC 7591: the operator's records of the clients registered for this
            // application that the server still answers for.
            Kind::DcrOidcProvider => {
                let list = self
                    .env
                    .secrets()
                    .list(&kube::api::ListParams::default().labels(&format!(
                        "oauth-operator.dev/registration-access=true,oauth-operator.dev/owner-uid={uid}"
                    )))
                    .await?;
                let mut live = 0;
                for s in list.items {
                    let d = data(&s);
                    let r = reqwest::Client::new()
                        .get(&d["registrationClientUri"])
                        .bearer_auth(&d["registrationAccessToken"])
                        .send()
                        .await?;
                    if r.status().is_success() {
                        live += 1;
                    }
                }
                Ok(live)
            }
            Kind::DcrHydra => {
                let all: Vec<Value> = reqwest::get(format!(
                    "{}/admin/clients?page_size=500",
                    Hydra::shared()?.admin_url()
                ))
                .await?
                .error_for_status()?
                .json()
                .await?;
                Ok(all.iter().filter(|c| c["client_name"] == display).count())
            }
            Kind::DcrKeycloak => {
                let (realm, admin) = self.realm()?;
                let all: Vec<Value> = admin
                    .request(reqwest::Method::GET, &format!("/{realm}/clients"))
                    .await?
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok(all.iter().filter(|c| c["name"] == display).count())
            }
            Kind::Clerk => Ok(self
                .env
                .clerk
                .apps()
                .iter()
                .filter(|a| a.name == display || a.name.contains(uid))
                .count()),
            Kind::Hydra => {
                let all: Vec<Value> = reqwest::get(format!(
                    "{}/admin/clients?page_size=500",
                    Hydra::shared()?.admin_url()
                ))
                .await?
                .error_for_status()?
                .json()
                .await?;
                Ok(all
                    .iter()
                    .filter(|c| c["metadata"]["oauth-operator.dev/owner-uid"] == uid)
                    .count())
            }
            Kind::Keycloak => {
                let (realm, admin) = self.realm()?;
                let all: Vec<Value> = admin
                    .request(reqwest::Method::GET, &format!("/{realm}/clients"))
                    .await?
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                Ok(all
                    .iter()
                    .filter(|c| {
                        let a = &c["attributes"]["oauth-operator.dev/owner-uid"];
                        a == uid || a[0] == uid
                    })
                    .count())
            }
        }
    }
}

/// Keycloak's "Allowed Client Scopes" policy for authenticated registrations refuses any
/// `scope` that is not a client scope of the realm, `openid` included: removed, as the README
/// tells Keycloak users of `dynamicRegistration` to do.
async fn allow_any_client_scope(admin: &KeycloakAdmin, realm: &str) -> Result<()> {
    let components: Vec<Value> = admin
        .request(reqwest::Method::GET, &format!("/{realm}/components"))
        .await?
        .query(&[(
            "type",
            "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy",
        )])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    for c in components.iter().filter(|c| {
        c["providerId"] == "allowed-client-templates" && c["subType"] == "authenticated"
    }) {
        let id = c["id"].as_str().context("component id")?;
        admin
            .request(
                reqwest::Method::DELETE,
                &format!("/{realm}/components/{id}"),
            )
            .await?
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// The initial access token Secret of a `dynamicRegistration` provider.
async fn create_token_secret(env: &Env, token: &str, issuer: &str) -> Result<()> {
    support::seen(token);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "dcr-token", "annotations": support::credential_for(issuer)},
        "stringData": {"token": token},
    }))?;
    env.secrets()
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// A confidential client of `realm` with a service account holding only `manage-clients` of
/// `realm-management`: the least privilege the Keycloak backend needs.
async fn service_account(admin: &KeycloakAdmin, realm: &str) -> Result<(String, String)> {
    let client_id = "oauth-operator";
    let (_, secret) = admin
        .create_service_account_client(realm, client_id)
        .await?;
    grant_role(admin, realm, "manage-clients").await?;
    support::seen(&secret);
    Ok((client_id.to_string(), secret))
}

/// Gives the operator's service account (see [`service_account`]) a `realm-management` role.
async fn grant_role(admin: &KeycloakAdmin, realm: &str, role: &str) -> Result<()> {
    let get = |path: String| async move {
        let v: Value = admin
            .request(reqwest::Method::GET, &path)
            .await?
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok(v)
    };
    let client = admin
        .find_client(realm, "oauth-operator")
        .await?
        .context("the operator's client")?;
    let id = client["id"].as_str().context("id")?.to_string();
    let user = get(format!("/{realm}/clients/{id}/service-account-user")).await?;
    let management = admin
        .find_client(realm, "realm-management")
        .await?
        .context("realm-management")?;
    let management_id = management["id"].as_str().context("id")?.to_string();
    let role = get(format!("/{realm}/clients/{management_id}/roles/{role}")).await?;
    admin
        .request(
            reqwest::Method::POST,
            &format!(
                "/{realm}/users/{}/role-mappings/clients/{management_id}",
                user["id"].as_str().context("user id")?
            ),
        )
        .await?
        .json(&json!([role]))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

fn uid(app: &OAuthApplication) -> Result<String> {
    app.metadata.uid.clone().context("uid")
}

/// Polls until `check` holds for the server's view of the client.
async fn wait_remote(
    server: &Server,
    app: &OAuthApplication,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    loop {
        if let Some(remote) = server.remote(app).await?
            && check(&remote)
        {
            return Ok(remote);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{:?}: timed out waiting for the client to be {what}",
                server.kind
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Row: create; a token with the Secret's credentials; an update of redirect URIs and scopes
/// leaves the Secret as it is, and the server's authorize endpoint follows the change.
async fn create_and_update(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-create").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    let app = env.wait_ready(APP).await?;
    let secret = env.secrets().get(&format!("{APP}-oauth")).await?;
    server.assert_token(&secret).await?;
    assert_eq!(
        server.clients_of(&uid(&app)?, &server.display(APP)).await?,
        1
    );
    assert!(server.authorize_accepts(&secret, FIRST_URI).await?);
    assert!(!server.authorize_accepts(&secret, SECOND_URI).await?);

    let patch = json!({"spec": {"redirectUris": [SECOND_URI], "scopes": ["openid", "profile", "email", "offline_access"]}});
    env.apps()
        .patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = env.apps().get(APP).await?.metadata.generation;
    let app = env
        .wait_app(APP, "the spec change applied", |a: &OAuthApplication| {
            a.status.as_ref().and_then(|s| s.observed_generation) == generation
                && ready(a).is_some_and(|(s, _)| s == "True")
        })
        .await?;
    let remote = server.remote(&app).await?.context("client")?;
    assert_eq!(server.redirect_uris(&remote), vec![SECOND_URI.to_string()]);
    assert!(
        server.scopes(&remote).iter().any(|s| s == "offline_access"),
        "{kind:?}: the new scope is at the server: {:?}",
        server.scopes(&remote)
    );
    let after = env.secrets().get(&format!("{APP}-oauth")).await?;
    assert_eq!(
        after.metadata.resource_version, secret.metadata.resource_version,
        "{kind:?}: a spec change does not rewrite the Secret"
    );
    assert!(server.authorize_accepts(&after, SECOND_URI).await?);
    assert!(!server.authorize_accepts(&after, FIRST_URI).await?);
    if kind != Kind::Clerk {
        // Clerk's authorization-code proof uses the first URI, now refused.
        server.assert_token(&after).await?;
    }
    Ok(())
}

/// Row: an edit made at the server is corrected (`driftPolicy: Correct`), and reported and
/// left alone under `driftPolicy: Report`.
async fn drift(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-drift").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    let app = env.wait_ready(APP).await?;
    server
        .edit_redirect_uris(&app, "https://evil.example.com/cb")
        .await?;
    wait_remote(&server, &app, "corrected", |r| {
        server.redirect_uris(r) == [FIRST_URI]
    })
    .await?;
    env.wait_event(APP, "DriftCorrected").await?;

    let patch = json!({"spec": {"driftPolicy": "Report"}});
    let generation = env
        .apps()
        .patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?
        .metadata
        .generation;
    // The spec change is applied (one write with every field) before the server is edited.
    env.wait_app(APP, "the policy change applied", |a: &OAuthApplication| {
        a.status.as_ref().and_then(|s| s.observed_generation) == generation
    })
    .await?;
    server
        .edit_redirect_uris(&app, "https://elsewhere.example.com/cb")
        .await?;
    let reported = env
        .wait_app(APP, "drift reported", |a: &OAuthApplication| {
            a.status
                .as_ref()
                .is_some_and(|s| s.drifted_fields.iter().any(|f| f == "redirectUris"))
        })
        .await?;
    assert!(
        reported.status.as_ref().is_some_and(|s| s
            .conditions
            .iter()
            .any(|c| c.type_ == "Drifted" && c.status == "True")),
        "{kind:?}: a Drifted condition"
    );
    env.wait_event(APP, "Drifted").await?;
    let remote = server.remote(&app).await?.context("client")?;
    assert_eq!(
        server.redirect_uris(&remote),
        vec!["https://elsewhere.example.com/cb".to_string()],
        "{kind:?}: Report leaves the server's value"
    );
    Ok(())
}

/// Row: a deleted Secret is written again with working credentials (Keycloak keeps the secret
/// readable, so it is the same one; elsewhere a new secret is issued).
async fn secret_recovery(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-recover").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    let app = env.wait_ready(APP).await?;
    let name = format!("{APP}-oauth");
    let before = env.secrets().get(&name).await?;
    env.secrets()
        .delete(&name, &DeleteParams::default())
        .await?;
    let after = env
        .wait_secret(&name, |s| s.metadata.uid != before.metadata.uid)
        .await?;
    server.assert_token(&after).await?;
    let (old, new) = (data(&before), data(&after));
    if kind.dcr() {
        // RFC 7591 issues a secret only with a new client (rotationStrategy: Recreate).
        assert_ne!(old["CLIENT_ID"], new["CLIENT_ID"], "a new client");
        env.wait_event(APP, "ClientReplaced").await?;
    } else {
        assert_eq!(old["CLIENT_ID"], new["CLIENT_ID"]);
    }
    if kind == Kind::Keycloak {
        assert_eq!(old["CLIENT_SECRET"], new["CLIENT_SECRET"], "read back");
    } else {
        assert_ne!(old["CLIENT_SECRET"], new["CLIENT_SECRET"], "issued anew");
        assert!(server.token(&before).await?.is_err(), "the old one is dead");
    }
    env.wait_event(APP, "SecretRecovered").await?;
    assert_eq!(
        server.clients_of(&uid(&app)?, &server.display(APP)).await?,
        1
    );
    Ok(())
}

/// Row: rotation on request; the new secret works and the old one is refused.
async fn rotation(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-rotate").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    env.wait_ready(APP).await?;
    let name = format!("{APP}-oauth");
    let before = env.secrets().get(&name).await?;
    env.rotate(APP, "r1").await?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_SECRET"] != data(&before)["CLIENT_SECRET"]
        })
        .await?;
    env.wait_app(APP, "rotation answered", |a: &OAuthApplication| {
        a.status
            .as_ref()
            .is_some_and(|s| s.last_rotation_token.as_deref() == Some("r1"))
    })
    .await?;
    server.assert_rotated(&before, &after).await?;
    Ok(())
}

/// Row: deletion with `deletionPolicy: Delete` removes the client; `Orphan` leaves it, and
/// its Secret, working.
async fn deletion(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-delete").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml("gone", "")).await?;
    env.apply_app(&server.app_yaml("kept", "  deletionPolicy: Orphan"))
        .await?;
    let gone = env.wait_ready("gone").await?;
    let kept = env.wait_ready("kept").await?;
    for name in ["gone", "kept"] {
        env.apps().delete(name, &DeleteParams::default()).await?;
    }
    env.wait_gone("gone").await?;
    env.wait_gone("kept").await?;
    assert!(
        server.remote(&gone).await?.is_none(),
        "{kind:?}: Delete removes the client"
    );
    assert!(server.remote(&kept).await?.is_some(), "Orphan keeps it");
    let secret = env.secrets().get("kept-oauth").await?;
    server.assert_token(&secret).await?;
    assert!(
        env.secrets().get_opt("gone-oauth").await?.is_none(),
        "the deleted client's Secret goes with it"
    );
    Ok(())
}

/// Row: a crash between registration and the Secret write (after-create) and between the
/// Secret write and the registration (after-secret): after a restart, one client and a working
/// secret.
async fn crash(kind: Kind, point: &str) -> Result<()> {
    let server = Server::new(kind, &format!("mx-{point}")).await?;
    let env = &server.env;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", point)])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    op.wait_abort(point, Duration::from_secs(60)).await?;
    drop(op);
    let _op = env.start_operator(&[])?;
    let app = env.wait_ready(APP).await?;
    let secret = env.secrets().get(&format!("{APP}-oauth")).await?;
    server.assert_token(&secret).await?;
    assert_eq!(
        server.clients_of(&uid(&app)?, &server.display(APP)).await?,
        1,
        "{kind:?}: exactly one client after a crash at {point}"
    );
    assert!(
        env.staged_secrets().await?.is_empty(),
        "nothing left staged"
    );
    Ok(())
}

async fn crash_after_create(kind: Kind) -> Result<()> {
    crash(kind, "after-create").await
}

async fn crash_after_secret(kind: Kind) -> Result<()> {
    crash(kind, "after-secret").await
}

/// Row: scheduled rotation (`rotation.period: 30s`): `nextRotationAt` says when, within the
/// tenth of the period the offset allows; the secret is rotated then without any request, the
/// new one works and the old one is refused, and the next rotation counts from this one.
async fn scheduled_rotation(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-sched").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "  rotation: {period: 30s}"))
        .await?;
    let app = env.wait_ready(APP).await?;
    let created = app
        .metadata
        .creation_timestamp
        .as_ref()
        .context("creationTimestamp")?
        .0
        .as_second();
    let next = |a: &OAuthApplication| {
        a.status
            .as_ref()
            .and_then(|s| s.next_rotation_at.as_ref())
            .map(|t| t.0.as_second())
    };
    let first = next(&app).context("nextRotationAt is set")?;
    assert!(
        (created + 27..=created + 30).contains(&first),
        "{kind:?}: first rotation at {first}, created at {created}"
    );
    let name = format!("{APP}-oauth");
    let before = env.secrets().get(&name).await?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_SECRET"] != data(&before)["CLIENT_SECRET"]
        })
        .await?;
    // The pass that rotated ends by scheduling the next one (a replaced client is retired
    // before that).
    let app = env
        .wait_app(
            APP,
            "the next rotation scheduled",
            |a: &OAuthApplication| next(a).is_some_and(|n| n > first),
        )
        .await?;
    server.assert_rotated(&before, &after).await?;
    let status = app.status.as_ref().context("status")?;
    let last = status
        .secret_rotated_at
        .as_ref()
        .context("secretRotatedAt")?
        .0
        .as_second();
    // On time: not before it was due, and soon after (the operator wakes for it; the slack
    // is for a loaded CI machine).
    assert!(
        (first..=first + 20).contains(&last),
        "{kind:?}: rotated at {last}, due at {first}"
    );
    let second = next(&app).context("nextRotationAt")?;
    assert!(
        (last + 27..=last + 30).contains(&second),
        "{kind:?}: next rotation at {second}, last at {last}"
    );
    assert_eq!(
        status.last_rotation_token, None,
        "a schedule answers no rotate token"
    );
    Ok(())
}

/// Row: bring your own credentials (`spec.credentialsFrom`). Where the operator chooses the
/// credentials (Hydra, Keycloak), the client is registered with the user's own id and secret
/// and a token is obtained with them; a changed secret in that Secret makes the old value fail
/// and the new one work; a deleted Secret is a condition, and the client keeps the last given
/// credentials (never a fresh random secret). Elsewhere, a clear refusal and nothing
/// registered.
async fn credentials_from(kind: Kind) -> Result<()> {
    let server = Server::new(kind, "mx-byo").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    let client_id = format!("byo.{}", env.ns);
    let first = format!("first-secret-{}-{}", unique_suffix(), env.ns);
    let source = |value: &str| -> Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": "vault-creds"},
            "stringData": {"CLIENT_ID": client_id, "CLIENT_SECRET": value},
        }))?)
    };
    env.secrets()
        .create(&PostParams::default(), &source(&first)?)
        .await?;
    env.apply_app(&server.app_yaml(APP, "  credentialsFrom: {name: vault-creds}"))
        .await?;
    let name = format!("{APP}-oauth");
    if matches!(kind, Kind::Clerk) || kind.dcr() {
        let app = env.wait_reason(APP, "CredentialsFromUnsupported").await?;
        let status = app.status.as_ref().context("status")?;
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .context("a Stalled condition")?;
        assert_eq!(stalled.status, "True");
        assert!(
            stalled.message.contains("remove spec.credentialsFrom"),
            "{kind:?}: the condition names the fix: {}",
            stalled.message
        );
        assert_eq!(
            server.clients_of(&uid(&app)?, &server.display(APP)).await?,
            0,
            "{kind:?}: nothing registered"
        );
        assert!(env.secrets().get_opt(&name).await?.is_none());
        return Ok(());
    }
    let app = env.wait_ready(APP).await?;
    let status = app.status.as_ref().context("status")?;
    assert_eq!(status.client_id.as_deref(), Some(client_id.as_str()));
    let before = env.secrets().get(&name).await?;
    assert_eq!(data(&before)["CLIENT_ID"], client_id);
    assert_eq!(
        data(&before)["CLIENT_SECRET"],
        first,
        "{kind:?}: the user's own secret"
    );
    server.assert_token(&before).await?;
    assert_eq!(server.clients_with_id(&client_id).await?, 1);
    let source_version = env
        .secrets()
        .get("vault-creds")
        .await?
        .metadata
        .resource_version;

    // The vault's value changes: pushed to the server, then to the Secret workloads mount.
    let second = format!("second-secret-{}-{}", unique_suffix(), env.ns);
    env.secrets()
        .replace("vault-creds", &PostParams::default(), &{
            let mut s = source(&second)?;
            s.metadata.resource_version = source_version;
            s
        })
        .await?;
    let after = env
        .wait_secret(&name, |s| data(s)["CLIENT_SECRET"] == second)
        .await?;
    env.wait_event(APP, "CredentialsUpdated").await?;
    server.assert_token(&after).await?;
    assert!(
        server.token(&before).await?.is_err(),
        "{kind:?}: the old value is refused"
    );
    assert_ne!(
        after
            .annotations()
            .get("oauth-operator.dev/secret-rotated-at"),
        before
            .annotations()
            .get("oauth-operator.dev/secret-rotated-at"),
        "consumers see the change (the annotation Reloader-style tools watch)"
    );
    let source_now = env.secrets().get("vault-creds").await?;
    assert_eq!(
        data(&source_now)["CLIENT_SECRET"],
        second,
        "the operator never writes the user's Secret"
    );
    assert!(source_now.metadata.owner_references.is_none());

    // The vault's Secret is deleted: a condition, and nothing changes at the server.
    env.secrets()
        .delete("vault-creds", &DeleteParams::default())
        .await?;
    let app = env.wait_reason(APP, "CredentialsSourceMissing").await?;
    let message = support::ready_message(&app);
    assert!(
        message.contains("keep the credentials last given"),
        "{message}"
    );
    let kept = env.secrets().get(&name).await?;
    assert_eq!(
        data(&kept)["CLIENT_SECRET"],
        second,
        "no fresh random secret"
    );
    server.assert_token(&kept).await?;
    assert_eq!(server.clients_with_id(&client_id).await?, 1);
    Ok(())
}

/// Row: rotation with an overlap (`rotation.gracePeriod`). At Keycloak the previous secret
/// stays valid for the period: the Secret carries it under `CLIENT_SECRET_PREVIOUS`, both
/// obtain tokens during the overlap (also after a spec change in it), `previousSecretExpiresAt`
/// says when it ends, and after it only the new one works and the key is gone. Without
/// `manage-realm` the operator cannot set up Keycloak's client policy: a condition naming it,
/// and nothing rotated. Every other backend invalidates the old secret at once: refused with a
/// condition, nothing registered.
async fn rotation_grace_period(kind: Kind) -> Result<()> {
    const GRACE: i64 = 45;
    let server = Server::new(kind, "mx-grace").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    let extra = format!("  rotation: {{gracePeriod: {GRACE}s}}");
    let name = format!("{APP}-oauth");
    if kind.dcr() {
        // RFC 7591 servers rotate by a new client: the grace period is the old client's
        // (row `rotation_new_client`), so it is accepted.
        env.apply_app(&server.app_yaml(APP, &extra)).await?;
        env.wait_ready(APP).await?;
        return Ok(());
    }
    if kind != Kind::Keycloak {
        env.apply_app(&server.app_yaml(APP, &extra)).await?;
        let refused = env.wait_reason(APP, "InvalidSpec").await?;
        let message = support::ready_message(&refused);
        assert!(
            message.contains("rotation.gracePeriod") && message.contains("immediate"),
            "{kind:?}: the condition says rotation there is immediate: {message}"
        );
        assert!(
            env.secrets().get_opt(&name).await?.is_none(),
            "nothing registered"
        );
        assert_eq!(
            server
                .clients_of(&uid(&refused)?, &server.display(APP))
                .await?,
            0
        );
        return Ok(());
    }
    env.apply_app(&server.app_yaml(APP, &extra)).await?;
    env.wait_ready(APP).await?;
    let before = env.secrets().get(&name).await?;

    // Only manage-clients: the realm's client policies are out of reach, and the rotation
    // does not happen (the old secret would otherwise die at once).
    env.rotate(APP, "g0").await?;
    let refused = env.wait_reason(APP, "CredentialsRejected").await?;
    let message = support::ready_message(&refused);
    assert!(
        message.contains("manage-realm"),
        "the condition names the role: {message}"
    );
    server.assert_token(&before).await?;
    assert!(
        data(&env.secrets().get(&name).await?) == data(&before),
        "nothing rotated"
    );

    let (realm, admin) = server.realm()?;
    grant_role(admin, realm, "manage-realm").await?;
    env.rotate(APP, "g1").await?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_SECRET"] != data(&before)["CLIENT_SECRET"]
        })
        .await?;
    let rotated_at = k8s_openapi::jiff::Timestamp::now().as_second();
    // (Compared without printing: no secret value in test output.)
    assert!(
        data(&after).get("CLIENT_SECRET_PREVIOUS") == data(&before).get("CLIENT_SECRET"),
        "the Secret keeps the previous secret"
    );
    let app = env
        .wait_app(
            APP,
            "previousSecretExpiresAt set",
            |a: &OAuthApplication| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.previous_secret_expires_at.is_some())
            },
        )
        .await?;
    let until = app
        .status
        .as_ref()
        .and_then(|s| s.previous_secret_expires_at.as_ref())
        .context("until")?
        .0;
    assert!(
        (rotated_at + GRACE - 10..=rotated_at + GRACE + 2).contains(&until.as_second()),
        "the previous secret ends about {GRACE}s after the rotation: {until}, rotated by {rotated_at}"
    );
    assert_eq!(
        after
            .annotations()
            .get("oauth-operator.dev/previous-secret-expires-at"),
        Some(&until.to_string()),
        "the Secret says when too"
    );
    server.assert_token(&after).await?;
    server.assert_token(&before).await?;
    // A spec change during the overlap updates the client and keeps the old secret valid.
    let patch = json!({"spec": {"redirectUris": [FIRST_URI, SECOND_URI]}});
    env.apps()
        .patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_remote(&server, &app, "the second redirect URI", |r| {
        server.redirect_uris(r).iter().any(|u| u == SECOND_URI)
    })
    .await?;
    server.assert_token(&before).await?;
    server.assert_token(&after).await?;

    // After the period: only the new one, and the Secret lets go of the old.
    let ended = env
        .wait_secret(&name, |s| !data(s).contains_key("CLIENT_SECRET_PREVIOUS"))
        .await?;
    assert!(
        k8s_openapi::jiff::Timestamp::now() >= until,
        "the previous secret stays in the Secret until its period ends"
    );
    assert!(
        server.token(&before).await?.is_err(),
        "the old secret is refused after the period"
    );
    server.assert_token(&ended).await?;
    assert!(
        data(&ended)["CLIENT_SECRET"] == data(&after)["CLIENT_SECRET"],
        "the new secret stays"
    );
    env.wait_event(APP, "PreviousSecretExpired").await?;
    env.wait_app(
        APP,
        "previousSecretExpiresAt cleared",
        |a: &OAuthApplication| {
            a.status
                .as_ref()
                .is_some_and(|s| s.previous_secret_expires_at.is_none())
        },
    )
    .await?;
    // Keycloak dropped it too.
    let remote = server.remote(&app).await?.context("client")?;
    assert!(
        remote["attributes"]["client.secret.rotated"].is_null(),
        "the rotated-out secret is dropped at Keycloak"
    );
    Ok(())
}

/// Row: the two-client strategy (`rotation.strategy: NewClient` with `gracePeriod`; RFC 7591
/// servers rotate this way anyway). A second client is registered, the Secret switched to it,
/// and the old client keeps working until `retiringClientDeleteAt`, then is deleted. A
/// workload polling the token endpoint with whatever the Secret holds never fails throughout.
/// At Hydra the new client gets the second id scheme (`oauth-operator-<uid>-r2`). Keycloak
/// refuses the strategy (it keeps the previous secret in place: `gracePeriod` alone).
async fn rotation_new_client(kind: Kind) -> Result<()> {
    const GRACE: i64 = 20;
    let server = Server::new(kind, "mx-newclient").await?;
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    // RFC 7591 servers rotate by a new client anyway (`rotationStrategy: Recreate`).
    let strategy = if kind.dcr() {
        ""
    } else {
        "strategy: NewClient, "
    };
    let extra = format!("  rotation: {{{strategy}gracePeriod: {GRACE}s}}");
    let name = format!("{APP}-oauth");
    if kind == Kind::Keycloak {
        env.apply_app(&server.app_yaml(APP, &extra)).await?;
        let refused = env.wait_reason(APP, "InvalidSpec").await?;
        let message = support::ready_message(&refused);
        assert!(
            message.contains("NewClient"),
            "{kind:?}: the condition names the strategy: {message}"
        );
        assert!(
            env.secrets().get_opt(&name).await?.is_none(),
            "nothing registered"
        );
        return Ok(());
    }
    env.apply_app(&server.app_yaml(APP, &extra)).await?;
    let app = env.wait_ready(APP).await?;
    let before = env.secrets().get(&name).await?;
    let old_object = app
        .status
        .as_ref()
        .and_then(|s| s.provider_object_id.clone())
        .context("id")?;
    let poller = Poller::start(kind, env.secrets(), name.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    env.rotate(APP, "n1").await?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_ID"] != data(&before)["CLIENT_ID"]
        })
        .await?;
    let switched = k8s_openapi::jiff::Timestamp::now().as_second();
    let app = env
        .wait_app(APP, "the old client retiring", |a: &OAuthApplication| {
            a.status.as_ref().is_some_and(|s| {
                s.retiring_client_id.as_deref() == Some(old_object.as_str())
                    && s.retiring_client_delete_at.is_some()
                    && s.last_rotation_token.as_deref() == Some("n1")
            })
        })
        .await?;
    let status = app.status.as_ref().context("status")?;
    let delete_at = status
        .retiring_client_delete_at
        .as_ref()
        .context("deleteAt")?
        .0;
    assert!(
        (switched + GRACE - 5..=switched + GRACE + 2).contains(&delete_at.as_second()),
        "the old client goes about {GRACE}s after the switch: {delete_at}, switched by {switched}"
    );
    assert_eq!(
        status.client_id.as_deref(),
        data(&after).get("CLIENT_ID").map(String::as_str)
    );
    if kind == Kind::Hydra {
        assert_eq!(
            status.client_id.as_deref(),
            Some(format!("oauth-operator-{}-r2", uid(&app)?).as_str()),
            "Hydra: the replacement has the next id of the second scheme"
        );
    }
    env.wait_event(APP, "ClientReplaced").await?;
    // The Secret records the retiring client too (a reset status does not lose it).
    let recorded = env
        .wait_secret(&name, |s| {
            s.annotations().get("oauth-operator.dev/retiring-client-id") == Some(&old_object)
        })
        .await?;
    assert_eq!(
        recorded
            .annotations()
            .get("oauth-operator.dev/retiring-client-delete-at"),
        Some(&delete_at.to_string())
    );
    // During the grace period both credentials work.
    server.assert_token(&before).await?;
    server.assert_token(&after).await?;

    // After it: the old client is gone, the new one stays.
    env.wait_app(APP, "the old client deleted", |a: &OAuthApplication| {
        a.status
            .as_ref()
            .is_some_and(|s| s.retiring_client_id.is_none())
    })
    .await?;
    assert!(
        k8s_openapi::jiff::Timestamp::now() >= delete_at,
        "the old client lives out its grace period"
    );
    env.wait_event(APP, "RetiredClientDeleted").await?;
    env.wait_secret(&name, |s| {
        !s.annotations()
            .contains_key("oauth-operator.dev/retiring-client-id")
    })
    .await?;
    // (Clerk refuses a deleted client already at its authorize endpoint.)
    assert!(
        !matches!(server.token(&before).await, Ok(Ok(()))),
        "the old client is refused after the period"
    );
    server.assert_token(&after).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (tokens, failures) = poller.finish().await?;
    assert!(
        failures.is_empty(),
        "{kind:?}: the workload reading the Secret never failed ({tokens} tokens): {failures:?}"
    );
    assert!(tokens >= 20, "the workload kept polling: {tokens} tokens");
    let app = env.apps().get(APP).await?;
    assert_eq!(
        server.clients_of(&uid(&app)?, &server.display(APP)).await?,
        1,
        "{kind:?}: one client once the old one is retired"
    );
    Ok(())
}

/// A kill right after Keycloak rotated with a grace period, before anything was staged: the
/// next pass finds the rotation happened (Keycloak's current secret is no longer the Secret's,
/// though the old one still authenticates during the overlap), reads the new secret back and
/// delivers it with the old one as `CLIENT_SECRET_PREVIOUS`. It does not rotate again, which
/// would have replaced Keycloak's one rotated-out secret and cut the old one off at once.
#[tokio::test]
async fn keycloak_grace_rotation_survives_a_kill_after_the_rotation() -> Result<()> {
    let server = Server::new(Kind::Keycloak, "mx-grace-kill").await?;
    let env = &server.env;
    let (realm, admin) = server.realm()?;
    grant_role(admin, realm, "manage-realm").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-rotate")])?;
    env.apply_app(&server.app_yaml(APP, "  rotation: {gracePeriod: 1h}"))
        .await?;
    let app = env.wait_ready(APP).await?;
    let name = format!("{APP}-oauth");
    let before = env.secrets().get(&name).await?;
    env.rotate(APP, "k1").await?;
    op.wait_abort("after-rotate", Duration::from_secs(60))
        .await?;
    drop(op);
    let _op = env.start_operator(&[])?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_SECRET"] != data(&before)["CLIENT_SECRET"]
        })
        .await?;
    env.wait_app(APP, "rotation answered", |a: &OAuthApplication| {
        a.status.as_ref().is_some_and(|s| {
            s.last_rotation_token.as_deref() == Some("k1") && s.previous_secret_expires_at.is_some()
        })
    })
    .await?;
    assert!(
        data(&after).get("CLIENT_SECRET_PREVIOUS") == data(&before).get("CLIENT_SECRET"),
        "the old secret is kept as the previous one"
    );
    server.assert_token(&after).await?;
    server.assert_token(&before).await?;
    // One rotation: Keycloak's rotated-out secret is the original one.
    let id = app
        .status
        .as_ref()
        .and_then(|s| s.provider_object_id.clone())
        .context("id")?;
    let rotated: Value = admin
        .request(
            reqwest::Method::GET,
            &format!("/{realm}/clients/{id}/client-secret/rotated"),
        )
        .await?
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(
        rotated["value"].as_str() == data(&before).get("CLIENT_SECRET").map(String::as_str),
        "rotated once: Keycloak's previous secret is the original"
    );
    Ok(())
}

/// Starts the operator with crash point `point`, asks for a rotation with `token`, and waits
/// until the operator dies there.
async fn rotate_and_kill_at(env: &Env, token: &str, point: &str) -> Result<()> {
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", point)])?;
    env.rotate(APP, token).await?;
    op.wait_abort(point, Duration::from_secs(60)).await
}

/// The application `APP` with `extra` in its spec, Ready under an operator that is stopped
/// again, and its Secret.
async fn ready_with(server: &Server, extra: &str) -> Result<(OAuthApplication, Secret)> {
    let env = &server.env;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, extra)).await?;
    Ok((
        env.wait_ready(APP).await?,
        env.secrets().get(&format!("{APP}-oauth")).await?,
    ))
}

/// A kill right after a `NewClient` rotation staged the new client's credentials: the next
/// pass delivers them as a rotation (`secretRotatedAt`, so a schedule is not repeated), and the
/// old client keeps its grace period (it still works, and is deleted only at
/// `retiringClientDeleteAt`), leaving one client.
#[tokio::test]
async fn clerk_new_client_rotation_survives_a_kill_after_staging() -> Result<()> {
    let server = Server::new(Kind::Clerk, "mx-nc-kill").await?;
    let env = &server.env;
    let extra = "  rotation: {strategy: NewClient, gracePeriod: 15s}";
    let name = format!("{APP}-oauth");
    let before = {
        let _op = env.start_operator(&[])?;
        env.apply_app(&server.app_yaml(APP, extra)).await?;
        env.wait_ready(APP).await?;
        env.secrets().get(&name).await?
    };
    rotate_and_kill_at(env, "k1", "after-stage").await?;
    let _op = env.start_operator(&[])?;
    let after = env
        .wait_secret(&name, |s| {
            data(s)["CLIENT_ID"] != data(&before)["CLIENT_ID"]
        })
        .await?;
    let app = env
        .wait_app(
            APP,
            "delivered as a rotation, the old client retiring",
            |a: &OAuthApplication| {
                a.status.as_ref().is_some_and(|s| {
                    s.secret_rotated_at.is_some()
                        && s.retiring_client_delete_at.is_some()
                        && s.last_rotation_token.as_deref() == Some("k1")
                })
            },
        )
        .await?;
    let delete_at = app
        .status
        .as_ref()
        .and_then(|s| s.retiring_client_delete_at.as_ref())
        .context("deleteAt")?
        .0;
    assert!(
        delete_at > k8s_openapi::jiff::Timestamp::now(),
        "the grace period is kept"
    );
    server.assert_token(&before).await?;
    server.assert_token(&after).await?;
    env.wait_app(APP, "the old client deleted", |a: &OAuthApplication| {
        a.status
            .as_ref()
            .is_some_and(|s| s.retiring_client_id.is_none())
    })
    .await?;
    assert!(k8s_openapi::jiff::Timestamp::now() >= delete_at);
    assert_eq!(
        server.clients_of(&uid(&app)?, &server.display(APP)).await?,
        1
    );
    server.assert_token(&after).await?;
    Ok(())
}

/// Kills during a `NewClient` rotation at Hydra, where the operator chooses the new client's
/// id (`-r2`) and secret: right after the new secret was staged (before the create), then, on
/// the pass that resumes it, right after the create (before the Secret was switched). The
/// resumed registration reuses the recorded id and the staged secret: one new client, no
/// third one, the Secret switched once to credentials that work, and a workload polling with
/// whatever the Secret holds never fails throughout (the Secret keeps the old, working
/// credentials until the new client exists). A second rotation counts on to `-r3`.
#[tokio::test]
async fn hydra_new_client_rotation_survives_kills() -> Result<()> {
    const GRACE: i64 = 10;
    let server = Server::new(Kind::Hydra, "mx-nc-hkill").await?;
    let env = &server.env;
    let extra = format!("  rotation: {{strategy: NewClient, gracePeriod: {GRACE}s}}");
    let name = format!("{APP}-oauth");
    let (app, before) = ready_with(&server, &extra).await?;
    let uid = uid(&app)?;
    let first = format!("oauth-operator-{uid}");
    assert_eq!(data(&before)["CLIENT_ID"], first);
    let poller = Poller::start(Kind::Hydra, env.secrets(), name.clone());

    rotate_and_kill_at(env, "k1", "after-stage").await?;
    // (Compared without printing: the values are secrets.)
    assert!(
        data(&env.secrets().get(&name).await?) == data(&before),
        "the Secret keeps the working credentials while the new client does not exist"
    );
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-create")])?;
    op.wait_abort("after-create", Duration::from_secs(60))
        .await?;
    drop(op);
    assert_eq!(
        server.clients_of(&uid, &server.display(APP)).await?,
        2,
        "the new client was created once, beside the old one"
    );
    assert!(
        data(&env.secrets().get(&name).await?) == data(&before),
        "the Secret is switched only after the create is recorded"
    );

    let _op = env.start_operator(&[])?;
    let second = format!("{first}-r2");
    let after = env
        .wait_secret(&name, |s| data(s)["CLIENT_ID"] == second)
        .await?;
    let app = env
        .wait_app(
            APP,
            "delivered as a rotation, the old client retiring",
            |a: &OAuthApplication| {
                a.status.as_ref().is_some_and(|s| {
                    s.secret_rotated_at.is_some()
                        && s.retiring_client_id.as_deref() == Some(first.as_str())
                        && s.retiring_client_delete_at.is_some()
                        && s.last_rotation_token.as_deref() == Some("k1")
                })
            },
        )
        .await?;
    assert_eq!(
        app.status.as_ref().and_then(|s| s.client_id.as_deref()),
        Some(second.as_str())
    );
    // Resumed from what was recorded and staged, not taken for a client that went missing
    // (which only a rotation request would answer, and a schedule would not).
    let reasons: Vec<String> = env
        .event_reasons(APP)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        !reasons.iter().any(|r| r == "ClientRecreated"),
        "the interrupted replacement was resumed: {reasons:?}"
    );
    server.assert_token(&before).await?;
    server.assert_token(&after).await?;
    env.wait_app(APP, "the old client deleted", |a: &OAuthApplication| {
        a.status
            .as_ref()
            .is_some_and(|s| s.retiring_client_id.is_none())
    })
    .await?;
    assert!(
        !matches!(server.token(&before).await, Ok(Ok(()))),
        "the old client is refused after the period"
    );
    assert_eq!(server.clients_of(&uid, &server.display(APP)).await?, 1);

    // The next rotation counts on; the Secret again switches only to a client that exists.
    env.rotate(APP, "k2").await?;
    let third = format!("{first}-r3");
    let latest = env
        .wait_secret(&name, |s| data(s)["CLIENT_ID"] == third)
        .await?;
    server.assert_token(&latest).await?;
    server.assert_token(&after).await?;
    env.wait_app(APP, "the second client deleted", |a: &OAuthApplication| {
        a.status.as_ref().is_some_and(|s| {
            s.retiring_client_id.is_none() && s.last_rotation_token.as_deref() == Some("k2")
        })
    })
    .await?;
    assert_eq!(server.clients_of(&uid, &server.display(APP)).await?, 1);
    let (tokens, failures) = poller.finish().await?;
    assert!(
        failures.is_empty(),
        "the workload reading the Secret never failed ({tokens} tokens): {failures:?}"
    );
    assert!(tokens >= 20, "the workload kept polling: {tokens} tokens");
    Ok(())
}

/// Status lost during and after a `NewClient` rotation at Hydra. A kill right after the new
/// client's secret was staged, then a reset status: the staged copy names the client it
/// replaces and that it may not exist yet, so the rotation is finished (the new client
/// created with the staged secret, the old one retired), not dropped or taken for a lost
/// client. A reset once the Secret holds the new client: the client the Secret names is found
/// again (not the first id, still retiring), no secret is replaced, and the retiring client
/// is still deleted on time (the Secret records it). Then an `Orphan` deletion after a kill
/// at the same point keeps the Secret with the current, working credentials, never the
/// staged ones of a client that may not exist.
#[tokio::test]
async fn hydra_new_client_rotation_survives_status_resets() -> Result<()> {
    const GRACE: i64 = 15;
    let server = Server::new(Kind::Hydra, "mx-nc-reset").await?;
    let env = &server.env;
    let extra = format!(
        "  rotation: {{strategy: NewClient, gracePeriod: {GRACE}s}}\n  deletionPolicy: Orphan"
    );
    let name = format!("{APP}-oauth");
    let (app, before) = ready_with(&server, &extra).await?;
    let uid = uid(&app)?;
    let first = format!("oauth-operator-{uid}");
    let second = format!("{first}-r2");
    rotate_and_kill_at(env, "s1", "after-stage").await?;
    env.reset_status(APP).await?;

    let op = env.start_operator(&[])?;
    let after = env
        .wait_secret(&name, |s| data(s)["CLIENT_ID"] == second)
        .await?;
    let app = env
        .wait_app(
            APP,
            "the rotation finished, the old client retiring",
            |a: &OAuthApplication| {
                a.status.as_ref().is_some_and(|s| {
                    s.client_id.as_deref() == Some(second.as_str())
                        && s.retiring_client_id.as_deref() == Some(first.as_str())
                        && s.retiring_client_delete_at.is_some()
                })
            },
        )
        .await?;
    let delete_at = app
        .status
        .as_ref()
        .and_then(|s| s.retiring_client_delete_at.as_ref())
        .context("deleteAt")?
        .0;
    server.assert_token(&before).await?;
    server.assert_token(&after).await?;
    env.wait_secret(&name, |s| {
        s.annotations().get("oauth-operator.dev/retiring-client-id") == Some(&first)
    })
    .await?;
    drop(op);

    env.reset_status(APP).await?;
    let op = env.start_operator(&[])?;
    env.wait_app(
        APP,
        "the Secret's client found again",
        |a: &OAuthApplication| {
            a.status.as_ref().is_some_and(|s| {
                s.client_id.as_deref() == Some(second.as_str())
                    && s.retiring_client_id.as_deref() == Some(first.as_str())
            })
        },
    )
    .await?;
    env.wait_ready(APP).await?;
    assert!(
        data(&env.secrets().get(&name).await?) == data(&after),
        "no secret was replaced"
    );
    server.assert_token(&after).await?;
    server.assert_token(&before).await?;
    env.wait_app(APP, "the old client deleted", |a: &OAuthApplication| {
        a.status
            .as_ref()
            .is_some_and(|s| s.retiring_client_id.is_none())
    })
    .await?;
    assert!(
        k8s_openapi::jiff::Timestamp::now() >= delete_at,
        "the old client lived out its grace period"
    );
    assert!(!matches!(server.token(&before).await, Ok(Ok(()))));
    assert_eq!(server.clients_of(&uid, &server.display(APP)).await?, 1);
    let reasons: Vec<String> = env
        .event_reasons(APP)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for wrong in ["ClientRecreated", "SecretRecovered", "SecretRotated"] {
        assert!(
            reasons.iter().filter(|r| *r == wrong).count() <= usize::from(wrong == "SecretRotated"),
            "{wrong}: {reasons:?}"
        );
    }
    drop(op);

    // An Orphan deletion after a kill between staging and the create.
    let current = env.secrets().get(&name).await?;
    rotate_and_kill_at(env, "s2", "after-stage").await?;
    env.apps().delete(APP, &Default::default()).await?;
    let _op = env.start_operator(&[])?;
    env.wait_gone(APP).await?;
    let kept = env.secrets().get(&name).await?;
    assert!(
        data(&kept) == data(&current),
        "the kept Secret holds the credentials of the client it names"
    );
    server.assert_token(&kept).await?;
    Ok(())
}

/// One test per (backend, row).
macro_rules! matrix {
    ($($row:ident),* $(,)?) => {
        mod clerk { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::Clerk).await } )* }
        mod hydra { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::Hydra).await } )* }
        mod keycloak { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::Keycloak).await } )* }
        mod dcr_oidc_provider { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::DcrOidcProvider).await } )* }
        mod dcr_keycloak { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::DcrKeycloak).await } )* }
        mod dcr_hydra { $( #[tokio::test] async fn $row() -> anyhow::Result<()> { super::$row(super::Kind::DcrHydra).await } )* }
        /// The rows, as the README's table names them.
        const ROWS: &[&str] = &[$(stringify!($row)),*];
    };
}

matrix!(
    create_and_update,
    drift,
    secret_recovery,
    rotation,
    deletion,
    crash_after_create,
    crash_after_secret,
    scheduled_rotation,
    credentials_from,
    rotation_grace_period,
    rotation_new_client,
);

/// The README's backend x feature table names every row of this matrix.
#[test]
fn readme_table_names_every_row() -> Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let start = readme
        .find("<!-- matrix:begin -->")
        .context("README has the matrix table markers")?;
    let end = readme.find("<!-- matrix:end -->").context("end marker")?;
    let table = &readme[start..end];
    for row in ROWS {
        assert!(
            table.contains(&format!("`{row}`")),
            "README's backend table has no row for `{row}`"
        );
    }
    for backend in ["clerk", "hydra", "keycloak", "dynamicRegistration"] {
        assert!(
            table.contains(backend),
            "README's table has no {backend} column"
        );
    }
    Ok(())
}

/// A cell RFC 7591 cannot support: without `rotationStrategy: Recreate`, a rotation request is
/// refused with a condition naming the fix, and the client and its Secret are left as they are.
#[tokio::test]
async fn dynamic_registration_without_recreate_refuses_rotation() -> Result<()> {
    let server = Server::new(Kind::DcrOidcProvider, "mx-norotate").await?;
    let env = &server.env;
    let patch = json!({"spec": {"dynamicRegistration": {"rotationStrategy": "None"}}});
    Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .patch("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&server.app_yaml(APP, "")).await?;
    env.wait_ready(APP).await?;
    let name = format!("{APP}-oauth");
    let before = env.secrets().get(&name).await?;
    env.rotate(APP, "r1").await?;
    let refused = env.wait_reason(APP, "InvalidSpec").await?;
    let message = support::ready_message(&refused);
    assert!(
        message.contains("rotationStrategy: Recreate"),
        "the condition names the fix: {message}"
    );
    let after = env.secrets().get(&name).await?;
    assert_eq!(data(&before), data(&after), "the Secret is left as it is");
    server.assert_token(&after).await?;
    Ok(())
}
