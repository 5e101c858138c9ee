//! Test support for the operator's end-to-end tests: a real kube-apiserver + etcd (shared per
//! test binary, a namespace per test), the Clerk emulator in-process, and the operator binary
//! run as a separate process restricted to the test's namespace.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clerk_emulator::{Emulator, EmulatorConfig, RunningEmulator};
use k8s_openapi::api::core::v1::{Event, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use oauth_operator::api::{OAuthApplication, OAuthProvider};
use testenv::kube::ControlPlane;
use testenv::{GuardedChild, free_port};

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Env {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub ns: String,
    pub clerk: RunningEmulator,
    pub log_dir: PathBuf,
}

/// Installs the operator's CRDs (server-side apply, idempotent) and waits until established.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in oauth_operator::api::crds() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("oauth-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        tokio::time::timeout(
            TIMEOUT,
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .context("CRD not established")??;
    }
    Ok(())
}

impl Env {
    /// A namespace, the CRDs, a Clerk emulator, and an `OAuthProvider` named `clerk` with its
    /// credential Secret pointing at the emulator.
    pub async fn new(prefix: &str) -> Result<Env> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cp = ControlPlane::shared()?;
        let client = cp.admin_client().await?;
        install_crds(&client).await?;
        let ns = cp.create_namespace(prefix).await?;
        let clerk = Emulator::start(EmulatorConfig::default())?;
        // Under cargo's scratch directory for integration tests (target/tmp), not /tmp:
        // `make test` clears it before each run, and a failing test's output names it
        // (libtest shows a test's stderr only when it fails).
        let log_dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("oauth-operator-tests-{ns}"));
        std::fs::create_dir_all(&log_dir)?;
        eprintln!("test logs (operator, events): {}", log_dir.display());
        let env = Env {
            cp,
            client,
            ns,
            clerk,
            log_dir,
        };
        seen(env.clerk.secret_key());
        env.create_provider("clerk", "clerk-admin").await?;
        Ok(env)
    }

    pub fn apps(&self) -> Api<OAuthApplication> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_provider(&self, name: &str, secret_name: &str) -> Result<()> {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": secret_name, "annotations": credential_for(&self.clerk.base_url())},
            "stringData": {"secretKey": self.clerk.secret_key()},
        }))?;
        self.secrets()
            .create(&PostParams::default(), &secret)
            .await?;
        let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1",
            "kind": "OAuthProvider",
            "metadata": {"name": name},
            "spec": {"clerk": {"baseUrl": self.clerk.base_url(), "secretKeyRef": {"name": secret_name}}},
        }))?;
        Api::<OAuthProvider>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &provider)
            .await?;
        Ok(())
    }

    /// Starts the operator binary for this namespace.
    pub fn start_operator(&self, extra_env: &[(&str, &str)]) -> Result<Operator> {
        self.start_operator_in(&self.ns, extra_env)
    }

    /// As [`Self::start_operator`], with the operator's own namespace (its Lease, the
    /// credentials of `ClusterOAuthProvider`s) elsewhere than the watched one.
    pub fn start_operator_in(
        &self,
        operator_namespace: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Operator> {
        let port = free_port()?;
        let log = self.log_dir.join(format!("operator-{port}.log"));
        // 2s unless the test names its own (flags win over the environment, so pass it here).
        let resync = extra_env
            .iter()
            .find(|(k, _)| *k == "OAUTH_OPERATOR_RESYNC_INTERVAL")
            .map_or("2s", |(_, v)| *v);
        // 15s unless the test names its own.
        let deletion_timeout = extra_env
            .iter()
            .find(|(k, _)| *k == "OAUTH_OPERATOR_DELETION_TIMEOUT")
            .map_or("15s", |(_, v)| *v);
        // Every test server is on loopback, which a namespaced provider may reach only when
        // allowed; tests of the guard itself name their own list.
        let allowed = extra_env
            .iter()
            .find(|(k, _)| *k == "OAUTH_OPERATOR_PROVIDER_ALLOWED_NETWORKS")
            .map_or("127.0.0.0/8,::1", |(_, v)| *v);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oauth-operator"));
        cmd.args([
            "run",
            "--log-format",
            "json",
            "--resync-interval",
            resync,
            "--deletion-timeout",
            deletion_timeout,
        ])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--provider-allowed-networks", allowed])
        .args([
            "--watch-namespace",
            &self.ns,
            "--operator-namespace",
            operator_namespace,
        ])
        .env("KUBECONFIG", self.cp.kubeconfig_path())
        .env("RUST_LOG", "info,oauth_operator=debug")
        // One identity per test namespace, as a restarted container keeps its pod's name: a
        // restart takes the Lease back at once instead of waiting for it to expire. Tests that
        // run two replicas give each its own POD_NAME.
        .env("POD_NAME", format!("operator-{}", self.ns));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = GuardedChild::spawn("oauth-operator", cmd, &log)?;
        Ok(Operator {
            child,
            log,
            port,
            capture: (self.cp.kubeconfig_path().to_path_buf(), self.ns.clone()),
        })
    }

    pub async fn apply_app(&self, yaml: &str) -> Result<OAuthApplication> {
        let app: OAuthApplication = serde_yaml::from_str(yaml)?;
        Ok(self.apps().create(&PostParams::default(), &app).await?)
    }

    /// Polls the application until `check` holds.
    pub async fn wait_app(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&OAuthApplication) -> bool,
    ) -> Result<OAuthApplication> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let app = self.apps().get_opt(name).await?;
            if let Some(app) = &app
                && check(app)
            {
                return Ok(app.clone());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "timed out waiting for {name}: {what}; last: {:?}",
                    app.and_then(|a| a.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_ready(&self, name: &str) -> Result<OAuthApplication> {
        self.wait_app(name, "Ready=True at the current generation", |a| {
            ready(a).is_some_and(|(s, _)| s == "True")
                && a.status.as_ref().and_then(|s| s.observed_generation) == a.metadata.generation
        })
        .await
    }

    pub async fn wait_reason(&self, name: &str, reason: &str) -> Result<OAuthApplication> {
        self.wait_app(name, &format!("Ready reason {reason}"), |a| {
            ready(a).is_some_and(|(_, r)| r == reason)
        })
        .await
    }

    pub async fn wait_secret(&self, name: &str, check: impl Fn(&Secret) -> bool) -> Result<Secret> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(s) = self.secrets().get_opt(name).await?
                && check(&s)
            {
                return Ok(s);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for Secret {name}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Event reasons recorded for an object of this namespace.
    pub async fn event_reasons(&self, object: &str) -> Result<Vec<(String, String)>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(object))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }

    pub async fn wait_event(&self, object: &str, reason: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some((_, m)) = self
                .event_reasons(object)
                .await?
                .into_iter()
                .find(|(r, _)| r == reason)
            {
                return Ok(m);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out waiting for event {reason} on {object}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `(status, reason)` of the Ready condition.
pub fn ready(app: &OAuthApplication) -> Option<(String, String)> {
    let c = app
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

/// The `Ready` condition's message (empty without one).
pub fn ready_message(app: &OAuthApplication) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// A client_credentials token with the Secret's credentials (`CLIENT_ID`, `CLIENT_SECRET`,
/// `TOKEN_URL`), or the token endpoint's HTTP status when it refuses.
pub async fn client_credentials_token(secret: &Secret) -> Result<Result<String, u16>> {
    let d = data(secret);
    let response = reqwest::Client::new()
        .post(&d["TOKEN_URL"])
        .basic_auth(&d["CLIENT_ID"], d.get("CLIENT_SECRET"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    if !response.status().is_success() {
        return Ok(Err(response.status().as_u16()));
    }
    let body: serde_json::Value = response.json().await?;
    Ok(Ok(body["access_token"]
        .as_str()
        .context("access_token")?
        .to_string()))
}

pub fn data(secret: &Secret) -> BTreeMap<String, String> {
    let data: BTreeMap<String, String> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    for (key, value) in &data {
        if SECRET_KEYS.iter().any(|k| key.eq_ignore_ascii_case(k)) {
            seen(value);
        }
    }
    data
}

/// Data keys whose values are credentials (client secrets, registration access tokens, admin
/// keys): every value a test reads under one is recorded for the suite-wide leak scan.
const SECRET_KEYS: &[&str] = &[
    "CLIENT_SECRET",
    "CLIENT_SECRET_PREVIOUS",
    "clientSecret",
    "secretKey",
    "registrationAccessToken",
    "token",
];

/// Records a secret value the suite handled, for `scripts/leak-scan.sh` (run by `make test`
/// after every test binary): no operator log line of the whole run may contain one. Values
/// shorter than 12 characters are not distinctive enough to scan for.
pub fn seen(value: &str) {
    if value.len() < 12 || value.contains('\n') {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oauth-operator-secrets-seen");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let file = dir.join(format!("{}.txt", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        use std::io::Write as _;
        let _ = writeln!(f, "{value}");
    }
}

pub struct Operator {
    pub child: GuardedChild,
    pub log: PathBuf,
    pub port: u16,
    /// The kubeconfig and namespace whose objects are captured when it stops.
    capture: (PathBuf, String),
}

/// The annotation that lets a namespaced provider send a credential Secret's value to `url`
/// (its owner's consent: see `oauth-operator.dev/credential-for` in the README).
pub fn credential_for(url: &str) -> serde_json::Value {
    serde_json::json!({"oauth-operator.dev/credential-for": url.trim_end_matches('/')})
}

impl Drop for Operator {
    /// Captures what the operator published beside what it logged, for the suite-wide leak
    /// scan (`scripts/leak-scan.sh`): its metrics, and the status of every object it writes
    /// status to, with the namespace's events, as the apiserver holds them.
    fn drop(&mut self) {
        let dir = self.log.parent().map(Path::to_path_buf).unwrap_or_default();
        if let Some(metrics) = scrape_metrics(self.port) {
            let _ = std::fs::write(dir.join(format!("metrics-{}.txt", self.port)), metrics);
        }
        let (kubeconfig, ns) = &self.capture;
        if let Ok(kubectl) = testenv::testenv_dir().map(|d| d.join("bin/kubectl"))
            && let Ok(out) = std::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args([
                    "get",
                    "oauthapplications,oauthproviders,clusteroauthproviders,events",
                    "-n",
                    ns,
                    "-o",
                    "yaml",
                    "--request-timeout",
                    "5s",
                ])
                .output()
        {
            let _ = std::fs::write(dir.join(format!("objects-{}.yaml", self.port)), out.stdout);
        }
    }
}

/// The operator's `/metrics` page, if it still answers (a plain blocking HTTP/1.0 GET).
fn scrape_metrics(port: u16) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    stream.read_to_string(&mut page).ok()?;
    Some(page)
}

impl Operator {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to die at crash point `point` (a test build's abort there).
    pub async fn wait_abort(&mut self, point: &str, timeout: Duration) -> Result<()> {
        self.wait_exit(timeout).await?;
        let logs = self.logs();
        let aborted = logs.lines().any(|l| {
            l.contains("fault injection: aborting") && l.contains(&format!("\"point\":\"{point}\""))
        });
        anyhow::ensure!(
            aborted,
            "the operator exited, but not at {point}: {}",
            self.log.display()
        );
        Ok(())
    }

    /// Waits for the process to exit by itself (e.g. the abort fault).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.child.check_running().is_ok() {
            if tokio::time::Instant::now() > deadline {
                bail!("operator still running after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.port)).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }
}

impl Env {
    pub async fn wait_gone(&self, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.apps().get_opt(name).await?.is_some() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name} was not deleted: {:?}",
                    self.apps().get_opt(name).await?.and_then(|a| a.status)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    pub async fn create_provider_without_secret(&self, name: &str) -> Result<()> {
        let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1",
            "kind": "OAuthProvider",
            "metadata": {"name": name},
            "spec": {"clerk": {"baseUrl": self.clerk.base_url(), "secretKeyRef": {"name": format!("{name}-missing")}}},
        }))?;
        Api::<OAuthProvider>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &provider)
            .await?;
        Ok(())
    }
}

/// Proves a stored credential works the way a workload would use it: the authorization-code
/// flow with PKCE against the AUTHORIZE_URL and TOKEN_URL in the Secret, authenticating with
/// CLIENT_ID / CLIENT_SECRET (client_secret_basic). Returns the access token, or the token
/// endpoint's HTTP status when it refuses.
pub async fn obtain_token(secret: &Secret, redirect_uri: &str) -> Result<Result<String, u16>> {
    use base64::Engine as _;
    let d = data(secret);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let verifier: String = (0..64)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let authorize = http
        .get(&d["AUTHORIZE_URL"])
        .query(&[
            ("response_type", "code"),
            ("client_id", d["CLIENT_ID"].as_str()),
            ("redirect_uri", redirect_uri),
            ("state", "state-0123456789"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await?;
    let location = authorize
        .headers()
        .get(reqwest::header::LOCATION)
        .with_context(|| {
            format!(
                "authorize answered {} without a redirect",
                authorize.status()
            )
        })?
        .to_str()?;
    let location = url::Url::parse(location)?;
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .with_context(|| format!("no code in {location}"))?;
    let response = http
        .post(&d["TOKEN_URL"])
        .basic_auth(&d["CLIENT_ID"], d.get("CLIENT_SECRET"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?;
    if !response.status().is_success() {
        return Ok(Err(response.status().as_u16()));
    }
    let body: serde_json::Value = response.json().await?;
    Ok(Ok(body["access_token"]
        .as_str()
        .context("access_token")?
        .to_string()))
}

/// [`obtain_token`] that must succeed.
pub async fn assert_token(secret: &Secret, redirect_uri: &str) -> Result<String> {
    match obtain_token(secret, redirect_uri).await? {
        Ok(token) => Ok(token),
        Err(status) => {
            bail!("the stored credentials were refused at the token endpoint: HTTP {status}")
        }
    }
}

/// Every version of every Secret in a namespace, recorded by a watch from the moment it starts:
/// what proves that a client secret changed only when a rotation or a deletion asked for it.
/// (Secret name, CLIENT_SECRET) of each version seen.
type Versions = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

pub struct SecretHistory {
    versions: Versions,
    task: tokio::task::JoinHandle<()>,
}

impl SecretHistory {
    pub async fn start(env: &Env) -> Result<SecretHistory> {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = versions.clone();
        let stream = watcher(env.secrets(), watcher::Config::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let secret = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let value = data(&secret).get("CLIENT_SECRET").cloned();
                log.lock().unwrap().push((secret.name_any(), value));
            }
        });
        tokio::time::timeout(TIMEOUT, ready_rx)
            .await
            .context("the Secret watch did not start")??;
        Ok(SecretHistory { versions, task })
    }

    /// The client-secret values Secret `name` has held, in order, repeats collapsed.
    pub fn values(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        for (n, v) in self.versions.lock().unwrap().iter() {
            if n == name
                && let Some(v) = v
                && values.last() != Some(v)
            {
                values.push(v.clone());
            }
        }
        values
    }
}

impl Drop for SecretHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Env {
    /// Merge-patches the application's metadata annotations.
    pub async fn annotate(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        self.apps()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Drops the whole status, as a backup restored without it would.
    pub async fn reset_status(&self, name: &str) -> Result<()> {
        let reset = serde_json::json!({"status": null});
        self.apps()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&reset))
            .await?;
        anyhow::ensure!(self.apps().get(name).await?.status.is_none());
        Ok(())
    }

    /// Asks for a rotation with a new token.
    pub async fn rotate(&self, name: &str, token: &str) -> Result<()> {
        self.annotate(name, "oauth-operator.dev/rotate", token)
            .await
    }

    /// Staged-credential Secrets the operator keeps in its namespace (here: the test's).
    pub async fn staged_secrets(&self) -> Result<Vec<Secret>> {
        Ok(self
            .secrets()
            .list(&ListParams::default().labels("oauth-operator.dev/staged-credentials=true"))
            .await?
            .items)
    }
}
