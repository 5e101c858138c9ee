//! Bring-your-own credentials across clusters: two control planes (two operators), one Hydra,
//! the same application with the same `credentialsFrom` in both (as External Secrets would
//! deliver one vault entry to two clusters). They converge on exactly one client, stop
//! writing to it once it is settled, and do not take turns overwriting it when their Secrets
//! disagree for a while (one cluster's vault refresh came first). And the opposite case:
//! same-named applications in two clusters against the same Hydra and Clerk each keep a
//! client of their own.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use oauth_operator::api::{OAuthApplication, OAuthProvider};
use serde_json::{Value, json};
use support::{Env, data, install_crds};
use testenv::hydra::Hydra;
use testenv::server_support::unique_suffix;
use testenv::{ControlPlane, GuardedChild, free_port, testenv_dir};

const APP: &str = "shop";

/// One cluster as this test uses it.
struct Cluster {
    client: Client,
    ns: String,
}

impl Cluster {
    fn apps(&self) -> Api<OAuthApplication> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The Hydra provider, the user's Secret and the application.
    async fn apply(&self, client_id: &str, secret: &str) -> Result<()> {
        let hydra = Hydra::shared()?;
        let provider: OAuthProvider = serde_json::from_value(json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "metadata": {"name": "idp"},
            "spec": {"hydra": {"adminUrl": hydra.admin_url(), "issuerUrl": hydra.issuer()}},
        }))?;
        Api::<OAuthProvider>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &provider)
            .await?;
        self.set_source(client_id, secret).await?;
        let app: OAuthApplication = serde_json::from_value(json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthApplication",
            "metadata": {"name": APP},
            "spec": {
                "providerRef": {"name": "idp"},
                "displayName": format!("shared {client_id}"),
                "redirectUris": ["https://shop.example.com/callback"],
                "scopes": ["openid"],
                "grantTypes": ["authorization_code", "client_credentials"],
                // Each cluster's copy may go without taking the other's client with it.
                "deletionPolicy": "Orphan",
                "credentialsFrom": {"name": "vault-creds"},
            },
        }))?;
        self.apps().create(&PostParams::default(), &app).await?;
        Ok(())
    }

    /// Writes the user's Secret (what External Secrets does on a refresh).
    async fn set_source(&self, client_id: &str, secret: &str) -> Result<()> {
        let source = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "vault-creds"},
            "stringData": {"CLIENT_ID": client_id, "CLIENT_SECRET": secret},
        });
        self.secrets()
            .patch(
                "vault-creds",
                &PatchParams::apply("external-secrets").force(),
                &Patch::Apply(&source),
            )
            .await?;
        Ok(())
    }

    /// Waits until the app's Ready condition has `reason` at its current generation.
    async fn wait_reason(&self, reason: &str) -> Result<OAuthApplication> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let app = self.apps().get(APP).await?;
            let ready = app
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            if ready.is_some_and(|c| c.reason == reason) {
                return Ok(app);
            }
            if Instant::now() > deadline {
                bail!("{}: no Ready reason {reason}; last: {ready:?}", self.ns);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn output(&self) -> Result<Secret> {
        Ok(self.secrets().get(&format!("{APP}-oauth")).await?)
    }
}

/// The operator for a cluster, as `Env::start_operator` runs it.
fn start_operator(
    kubeconfig: &std::path::Path,
    ns: &str,
    log: &std::path::Path,
) -> Result<GuardedChild> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oauth-operator"));
    cmd.args(["run", "--log-format", "json", "--resync-interval", "2s"])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--watch-namespace", ns, "--operator-namespace", ns])
        .args(["--provider-allowed-networks", "127.0.0.0/8,::1"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,oauth_operator=debug");
    GuardedChild::spawn("oauth-operator", cmd, log)
}

/// Hydra's clients with this client id.
async fn hydra_clients(client_id: &str) -> Result<Vec<Value>> {
    let all: Vec<Value> = reqwest::get(format!(
        "{}/admin/clients?page_size=500",
        Hydra::shared()?.admin_url()
    ))
    .await?
    .error_for_status()?
    .json()
    .await?;
    Ok(all
        .into_iter()
        .filter(|c| c["client_id"] == client_id)
        .collect())
}

/// The one client, and when Hydra last changed it.
async fn the_client(client_id: &str) -> Result<String> {
    let clients = hydra_clients(client_id).await?;
    assert_eq!(
        clients.len(),
        1,
        "exactly one client {client_id}: {clients:?}"
    );
    clients[0]["updated_at"]
        .as_str()
        .map(str::to_string)
        .context("updated_at")
}

/// Whether Hydra issues a token for these credentials.
async fn token(client_id: &str, secret: &str) -> Result<bool> {
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/token", Hydra::shared()?.issuer()))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    Ok(r.status().is_success())
}

#[tokio::test]
async fn two_clusters_with_the_same_credentials_share_one_client() -> Result<()> {
    let env = Env::new("shared-a").await?;
    let one = Cluster {
        client: env.client.clone(),
        ns: env.ns.clone(),
    };
    // A second control plane of its own (stopped when dropped).
    let dir = testenv_dir()?;
    let cp2 = tokio::task::spawn_blocking(move || ControlPlane::start(&dir)).await??;
    let client2 = cp2.admin_client().await?;
    install_crds(&client2).await?;
    let two = Cluster {
        ns: cp2.create_namespace("shared-b").await?,
        client: client2,
    };
    let _op1 = env.start_operator(&[])?;
    let _op2 = start_operator(
        cp2.kubeconfig_path(),
        &two.ns,
        &env.log_dir.join("operator-cluster-b.log"),
    )?;

    let client_id = format!("shared.{}", unique_suffix());
    let first = format!("first-secret-{}-{}", unique_suffix(), env.ns);
    // Both at once: the second create meets the first one's client.
    let (a, b) = tokio::join!(one.apply(&client_id, &first), two.apply(&client_id, &first));
    a?;
    b?;
    one.wait_reason("Reconciled").await?;
    two.wait_reason("Reconciled").await?;
    for cluster in [&one, &two] {
        let out = cluster.output().await?;
        assert_eq!(data(&out)["CLIENT_ID"], client_id);
        assert_eq!(data(&out)["CLIENT_SECRET"], first);
    }
    assert!(token(&client_id, &first).await?, "the shared secret works");
    let settled = the_client(&client_id).await?;
    // Several resyncs (2 s each) of both operators: nobody writes to the settled client.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        the_client(&client_id).await?,
        settled,
        "two operators holding the same credentials do not fight over the client"
    );

    // The vault entry changes; cluster one's copy is refreshed first.
    let second = format!("second-secret-{}-{}", unique_suffix(), env.ns);
    one.set_source(&client_id, &second).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while data(&one.output().await?)["CLIENT_SECRET"] != second {
        if Instant::now() > deadline {
            bail!("cluster one never took up the new secret");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(token(&client_id, &second).await?, "the new secret works");
    assert!(!token(&client_id, &first).await?, "the old one is refused");
    // Cluster two still holds the old value: it reports, and does not push it back.
    let app = two.wait_reason("CredentialsNotAccepted").await?;
    let stalled = app
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .context("Stalled")?;
    assert!(
        stalled.message.contains("another cluster"),
        "{}",
        stalled.message
    );
    // Its copy is touched without a new value (a label, an External Secrets refresh of the
    // old value): still nothing pushed.
    two.secrets()
        .patch(
            "vault-creds",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"refreshed": "yes"}}})),
        )
        .await?;
    let pushed = the_client(&client_id).await?;
    assert_ne!(
        pushed, settled,
        "Hydra's updated_at moves on a write (what the no-fight checks rely on)"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        the_client(&client_id).await?,
        pushed,
        "the cluster with the stale secret does not overwrite the client"
    );
    assert!(token(&client_id, &second).await?, "still the new secret");
    assert_eq!(
        data(&two.output().await?)["CLIENT_SECRET"],
        first,
        "cluster two's Secret keeps what it had until its own copy is refreshed"
    );

    // Cluster two's copy is refreshed: both Ready on the new secret, one client.
    two.set_source(&client_id, &second).await?;
    two.wait_reason("Reconciled").await?;
    assert_eq!(data(&two.output().await?)["CLIENT_SECRET"], second);
    assert!(token(&client_id, &second).await?);
    the_client(&client_id).await?;

    // Orphaned by both: the test removes it.
    reqwest::Client::new()
        .delete(format!(
            "{}/admin/clients/{client_id}",
            Hydra::shared()?.admin_url()
        ))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Another application naming the client id of a client it does not hold the secret of
/// cannot take it over: not its redirect URIs, not its secret.
#[tokio::test]
async fn a_client_id_alone_takes_over_nothing() -> Result<()> {
    let env = Env::new("shared-steal").await?;
    let owner = Cluster {
        client: env.client.clone(),
        ns: env.ns.clone(),
    };
    let _op = env.start_operator(&[])?;
    let client_id = format!("victim.{}", unique_suffix());
    let real = format!("real-secret-{}-{}", unique_suffix(), env.ns);
    owner.apply(&client_id, &real).await?;
    owner.wait_reason("Reconciled").await?;
    let before = hydra_clients(&client_id).await?;

    // A second namespace of the same cluster: knows the id, guesses a secret.
    let thief = Cluster {
        client: env.client.clone(),
        ns: env.cp.create_namespace("shared-thief").await?,
    };
    let _op2 = start_operator(
        env.cp.kubeconfig_path(),
        &thief.ns,
        &env.log_dir.join("operator-thief.log"),
    )?;
    let guess = format!("guessed-secret-{}", unique_suffix());
    thief.apply(&client_id, &guess).await?;
    let app = thief.wait_reason("CredentialsNotAccepted").await?;
    let ready = app
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .context("Ready")?;
    assert!(
        ready
            .message
            .contains("takes up an existing client only with its current secret")
    );
    assert!(!ready.message.contains(&guess), "no secret value in status");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = hydra_clients(&client_id).await?;
    assert_eq!(before, after, "the client is unchanged");
    assert!(token(&client_id, &real).await?);
    assert!(!token(&client_id, &guess).await?);
    assert!(
        thief
            .secrets()
            .get_opt(&format!("{APP}-oauth"))
            .await?
            .is_none(),
        "nothing written for the thief"
    );
    reqwest::Client::new()
        .delete(format!(
            "{}/admin/clients/{client_id}",
            Hydra::shared()?.admin_url()
        ))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Two clusters whose applications have the same namespace and name, against the same Hydra
/// and the same Clerk (emulator): each cluster registers a client of its own (the id, or the
/// registration name, carries the object's uid, not its name), and neither adopts, changes
/// or deletes the other's: not after a status loss (which makes the operator look its client
/// up again), not when its own application is deleted.
#[tokio::test]
async fn same_named_applications_in_two_clusters_keep_their_own_clients() -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let env = Env::new("same-name").await?;
    let hydra = Hydra::shared()?;
    let clerk = env.clerk.handle();
    let dir = testenv_dir()?;
    let cp2 = tokio::task::spawn_blocking(move || ControlPlane::start(&dir)).await??;
    let client2 = cp2.admin_client().await?;
    install_crds(&client2).await?;
    // The same namespace name in the second cluster.
    Api::<Namespace>::all(client2.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": env.ns}}))?,
        )
        .await?;
    let clusters = [env.client.clone(), client2.clone()];
    for (n, client) in clusters.iter().enumerate() {
        let ns = &env.ns;
        if n == 1 {
            // Cluster one's Clerk provider and its key come with `Env`; cluster two's here.
            Api::<Secret>::namespaced(client.clone(), ns)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": "clerk-admin", "annotations": support::credential_for(&env.clerk.base_url())},
                        "stringData": {"secretKey": env.clerk.secret_key()},
                    }))?,
                )
                .await?;
            Api::<OAuthProvider>::namespaced(client.clone(), ns)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
                        "metadata": {"name": "clerk"},
                        "spec": {"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}}},
                    }))?,
                )
                .await?;
        }
        Api::<OAuthProvider>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
                    "metadata": {"name": "hydra"},
                    "spec": {"hydra": {"adminUrl": hydra.admin_url(), "issuerUrl": hydra.issuer()}},
                }))?,
            )
            .await?;
        let apps: Api<OAuthApplication> = Api::namespaced(client.clone(), ns);
        for (name, provider, extra) in [
            (
                "web",
                "hydra",
                json!({"grantTypes": ["client_credentials"]}),
            ),
            ("portal", "clerk", json!({"scopes": ["profile", "email"]})),
        ] {
            let mut spec = json!({
                "providerRef": {"name": provider},
                "redirectUris": [format!("https://{name}.example.com/callback")],
            });
            spec.as_object_mut()
                .context("spec")?
                .extend(extra.as_object().context("extra")?.clone());
            apps.create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthApplication",
                    "metadata": {"name": name}, "spec": spec,
                }))?,
            )
            .await?;
        }
    }
    let _op1 = env.start_operator(&[])?;
    let _op2 = start_operator(
        cp2.kubeconfig_path(),
        &env.ns,
        &env.log_dir.join("operator-cluster-b.log"),
    )?;
    let two = Cluster {
        client: client2.clone(),
        ns: env.ns.clone(),
    };

    // Each cluster: both applications Ready; the ids of the two clusters differ.
    let ready_ids = |apps: Api<OAuthApplication>| async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut ids = Vec::new();
            for name in ["web", "portal"] {
                let app = apps.get(name).await?;
                if support::ready(&app).is_some_and(|(s, _)| s == "True") {
                    ids.push(app.status.and_then(|s| s.client_id).context("client id")?);
                }
            }
            if ids.len() == 2 {
                return Ok::<_, anyhow::Error>(ids);
            }
            if Instant::now() > deadline {
                bail!("not both Ready in time");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let ids_one = ready_ids(env.apps()).await?;
    let ids_two = ready_ids(two.apps()).await?;
    for (a, b) in ids_one.iter().zip(&ids_two) {
        assert_ne!(
            a, b,
            "the two clusters' same-named applications share a client"
        );
    }
    let working = |secret: Secret, redirect: &'static str, hydra: bool| async move {
        if hydra {
            support::client_credentials_token(&secret)
                .await?
                .map_err(|s| anyhow::anyhow!("token refused: {s}"))?;
        } else {
            support::assert_token(&secret, redirect).await?;
        }
        Ok::<_, anyhow::Error>(data(&secret)["CLIENT_SECRET"].clone())
    };
    let secrets_one = [
        working(env.secrets().get("web-oauth").await?, "", true).await?,
        working(
            env.secrets().get("portal-oauth").await?,
            "https://portal.example.com/callback",
            false,
        )
        .await?,
    ];
    for (name, hydra_app, redirect) in [
        ("web", true, ""),
        ("portal", false, "https://portal.example.com/callback"),
    ] {
        working(
            two.secrets().get(&format!("{name}-oauth")).await?,
            redirect,
            hydra_app,
        )
        .await?;
    }
    assert_eq!(clerk.apps().len(), 2, "two Clerk clients, one per cluster");

    // Cluster one loses its status: it finds its own clients again, not the other cluster's.
    for name in ["web", "portal"] {
        env.reset_status(name).await?;
    }
    let relinked = ready_ids(env.apps()).await?;
    assert_eq!(
        relinked, ids_one,
        "relinked to its own clients after a status loss"
    );
    for (name, before) in ["web", "portal"].iter().zip(&secrets_one) {
        let now =
            data(&env.secrets().get(&format!("{name}-oauth")).await?)["CLIENT_SECRET"].clone();
        assert_eq!(&now, before, "{name}: the Secret kept its secret");
    }

    // Cluster two deletes its applications: its clients go, cluster one's stay and work.
    for name in ["web", "portal"] {
        two.apps().delete(name, &Default::default()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while two.apps().get_opt("web").await?.is_some()
        || two.apps().get_opt("portal").await?.is_some()
    {
        if Instant::now() > deadline {
            bail!("cluster two's applications were not deleted");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        hydra_clients(&ids_two[0]).await?.is_empty(),
        "cluster two's Hydra client deleted"
    );
    assert_eq!(
        hydra_clients(&ids_one[0]).await?.len(),
        1,
        "cluster one's Hydra client kept"
    );
    let left = clerk.apps();
    assert_eq!(
        left.len(),
        1,
        "cluster two's Clerk client deleted, one's kept"
    );
    assert_eq!(left[0].client_id, ids_one[1]);
    working(env.secrets().get("web-oauth").await?, "", true).await?;
    working(
        env.secrets().get("portal-oauth").await?,
        "https://portal.example.com/callback",
        false,
    )
    .await?;
    Ok(())
}
