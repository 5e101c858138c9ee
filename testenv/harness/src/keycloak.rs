//! Keycloak (`DIR/keycloak`, Quarkus distribution) in `start-dev` mode on a free loopback port,
//! with a bootstrap admin in realm `master` and an H2 database in a per-run directory.
//!
//! Layout on disk:
//! - `DIR/keycloak` is never written to.
//! - A *dev home* (`$TMPDIR/oauth-operator-keycloak-dev/<key>/`) holds a private copy of the
//!   distribution's `bin/`, `conf/` and `lib/quarkus/` (the Quarkus augmentation output, which
//!   `start-dev` rewrites for the dev profile the first time) and symlinks to the read-only
//!   jars, themes and providers. It is built once per distribution and reused.
//! - Every instance runs from its own *run home* (a [`RunDir`]): `bin/kc.sh` (a copy, so that
//!   `kc.home.dir` resolves there), its own `data/` (H2 database, tmp), and symlinks to the dev
//!   home's `conf/` and `lib/`. Parallel instances and test binaries never share `data/`.
//! - Starts are serialised through a file lock, so the one-time re-augmentation never races
//!   and concurrent JVM boots do not fight over the two cores.
//!
//! Keycloak needs Java 21+: the newest `/usr/lib/jvm/temurin-*-jdk-amd64` is used unless
//! `TESTENV_JAVA_HOME` is set.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::process::{GuardedChild, free_ports, testenv_dir};
use crate::server_support::{
    RunDir, StartupStats, http_client, new_log_path, process_tree_rss_kib, random_hex,
    shared_or_err, wait_ready,
};

/// Bound on start-up, including a first-time re-augmentation on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on waiting for another start (another test binary) to release the start lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// Appended to kc.sh's JVM options (override: `TESTENV_KEYCLOAK_JAVA_OPTS`): a short-lived
/// test server on 2 shared cores boots faster with only the C1 JIT; no perf-data file in
/// /tmp/hsperfdata_<user>.
const JVM_OPTS: &str = "-XX:TieredStopAtLevel=1 -XX:-UsePerfData";

pub const ADMIN_USERNAME: &str = "testenv-admin";

/// Preview features the tests use: `client-secret-rotation` (the `secret-rotation` client-policy
/// executor behind `rotation.gracePeriod`; a default feature from Keycloak 26.8). A build
/// option: the dev home's augmentation is made with it, so it is part of the dev home's key.
pub const FEATURES: &str = "client-secret-rotation";

/// A running Keycloak; killed on drop (its run home is deleted after the process).
pub struct Keycloak {
    // Field order matters: the process is killed before its run home is removed.
    child: GuardedChild,
    _home: RunDir,
    port: u16,
    admin_password: String,
    log: PathBuf,
    stats: StartupStats,
}

impl Keycloak {
    /// The instance shared by every test of this test binary, started on first use (20-60 s).
    /// Tests that change realm `master` or global settings should use their own realm instead.
    pub fn shared() -> Result<&'static Keycloak> {
        static SHARED: OnceLock<std::result::Result<Keycloak, String>> = OnceLock::new();
        shared_or_err(&SHARED, "Keycloak", Self::start)
    }

    /// Starts a private instance. Blocks until realm `master` serves its discovery document.
    pub fn start() -> Result<Self> {
        let dist = testenv_dir()?.join("keycloak");
        if !dist.join("bin/kc.sh").exists() {
            bail!(
                "{}/bin/kc.sh is missing: run `make testenv`",
                dist.display()
            );
        }
        let java_home = java_home()?;
        let [port, management_port] = free_ports()?;
        let admin_password = random_hex(16)?;
        let log = new_log_path("keycloak")?;

        let _lock = StartLock::acquire(&dev_root()?.join("start.lock"), LOCK_TIMEOUT)?;
        let dev_home = prepare_dev_home(&dist)?;
        let home = RunDir::new("keycloak")?;
        prepare_run_home(&dev_home, home.path())?;

        let java = write_java_shim(home.path(), &java_home)?;
        let tmp = home.path().join("tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

        let mut cmd = Command::new(home.path().join("bin/kc.sh"));
        // Keycloak reads every KC_* variable as configuration, kc.sh reads JAVA_* and DEBUG*
        // (DEBUG=true would open a JDWP port): start from a clean slate for all of them.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if ["KC_", "JAVA", "DEBUG", "QUARKUS_"]
                .iter()
                .any(|p| key_str.starts_with(p))
            {
                cmd.env_remove(&key);
            }
        }
        cmd.current_dir(home.path())
            .args([
                "start-dev".to_string(),
                "--http-host=127.0.0.1".to_string(),
                format!("--http-port={port}"),
                // The management interface (health, metrics) is off unless they are enabled;
                // should it come up, it inherits 127.0.0.1 and uses this free port, not 9000.
                format!("--http-management-port={management_port}"),
                "--hostname-strict=false".to_string(),
                format!("--features={FEATURES}"),
            ])
            .env("JAVA_HOME", &java_home)
            .env("JAVA", &java)
            .env(
                "JAVA_OPTS_APPEND",
                format!(
                    "{} -Djava.io.tmpdir={}",
                    std::env::var("TESTENV_KEYCLOAK_JAVA_OPTS").unwrap_or_else(|_| JVM_OPTS.into()),
                    // Quarkus' vertx-cache and uploads go under the run home, not /tmp.
                    tmp.display()
                ),
            )
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", ADMIN_USERNAME)
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", &admin_password);
        let started = Instant::now();
        let mut child = GuardedChild::spawn("keycloak", cmd, &log)?;
        wait_ready(
            &mut child,
            &log,
            &[(port, "/realms/master/.well-known/openid-configuration")],
            READY_TIMEOUT,
        )
        .context("starting Keycloak")?;
        let stats = StartupStats::measure(started, child.id());
        Ok(Self {
            child,
            _home: home,
            port,
            admin_password,
            log,
            stats,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash, no `/auth` prefix).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Issuer of `realm`: `<base>/realms/<realm>`.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base_url())
    }

    pub fn token_endpoint(&self, realm: &str) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer(realm))
    }

    /// RFC 7591 endpoint of `realm` (takes an initial access token from
    /// [`KeycloakAdmin::create_initial_access_token`]).
    pub fn registration_endpoint(&self, realm: &str) -> String {
        format!(
            "{}/clients-registrations/openid-connect",
            self.issuer(realm)
        )
    }

    /// Admin REST API root: `<base>/admin/realms`.
    pub fn admin_url(&self) -> String {
        format!("{}/admin/realms", self.base_url())
    }

    pub fn admin_username(&self) -> &str {
        ADMIN_USERNAME
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// A fresh admin access token (password grant, realm `master`, client `admin-cli`).
    /// It lives 60 s (Keycloak's default for `master`); [`Keycloak::admin`] renews it.
    pub async fn admin_token(&self) -> Result<String> {
        Ok(self.fetch_admin_token(&http_client()?).await?.0)
    }

    /// An admin API session for the calling test's runtime.
    pub async fn admin(&self) -> Result<KeycloakAdmin> {
        let http = http_client()?;
        let (token, expires) = self.fetch_admin_token(&http).await?;
        Ok(KeycloakAdmin {
            http,
            base_url: self.base_url(),
            token_endpoint: self.token_endpoint("master"),
            password: self.admin_password.clone(),
            token: Mutex::new((token, expires)),
        })
    }

    async fn fetch_admin_token(&self, http: &reqwest::Client) -> Result<(String, Instant)> {
        password_grant(http, &self.token_endpoint("master"), &self.admin_password).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id of `kc.sh`; the JVM is its child (see [`Keycloak::jvm_pid`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Process id of the Keycloak JVM: `kc.sh`'s java child, or `kc.sh` itself when it
    /// exec'd into java after a re-augmentation.
    pub fn jvm_pid(&self) -> u32 {
        let pid = self.pid();
        let is_java = |p: u32| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "java")
        };
        if is_java(pid) {
            return pid;
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .find(|&c| is_java(c))
            .unwrap_or(pid)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Start-up time and memory measured when it became ready.
    pub fn startup_stats(&self) -> StartupStats {
        self.stats
    }

    /// Current VmRSS (KiB) of `kc.sh` and the JVM (the shell accounts for ~2 MiB).
    pub fn rss_kib(&self) -> Result<u64> {
        process_tree_rss_kib(self.pid())
    }
}

impl Drop for Keycloak {
    /// Kills `kc.sh` (the JVM follows through its parent-death signal) and waits for the JVM to
    /// be gone before the run home is removed.
    fn drop(&mut self) {
        let jvm = self.jvm_pid();
        self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{jvm}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn password_grant(
    http: &reqwest::Client,
    token_endpoint: &str,
    password: &str,
) -> Result<(String, Instant)> {
    let asked = Instant::now();
    let resp = http
        .post(token_endpoint)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", ADMIN_USERNAME),
            ("password", password),
        ])
        .send()
        .await
        .context("Keycloak admin token request")?;
    let body: Value = json_or_error(resp, "Keycloak admin token").await?;
    let token = body["access_token"]
        .as_str()
        .context("Keycloak admin token response without access_token")?
        .to_string();
    let lifetime = body["expires_in"].as_u64().unwrap_or(60);
    // Renew 10 s early.
    let expires = asked + Duration::from_secs(lifetime.saturating_sub(10));
    Ok((token, expires))
}

/// Admin REST API helpers; the access token is renewed when it is about to expire.
/// Create one per test (it holds a reqwest client bound to the test's runtime).
pub struct KeycloakAdmin {
    http: reqwest::Client,
    base_url: String,
    token_endpoint: String,
    password: String,
    token: Mutex<(String, Instant)>,
}

impl KeycloakAdmin {
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A valid admin access token (renewed if needed).
    pub async fn token(&self) -> Result<String> {
        {
            let guard = self
                .token
                .lock()
                .map_err(|_| anyhow::anyhow!("token lock poisoned"))?;
            if Instant::now() < guard.1 {
                return Ok(guard.0.clone());
            }
        }
        let fresh = password_grant(&self.http, &self.token_endpoint, &self.password).await?;
        let token = fresh.0.clone();
        *self
            .token
            .lock()
            .map_err(|_| anyhow::anyhow!("token lock poisoned"))? = fresh;
        Ok(token)
    }

    /// `<base>/admin/realms<path>` with the admin bearer token.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder> {
        let url = format!("{}/admin/realms{path}", self.base_url);
        Ok(self
            .http
            .request(method, url)
            .bearer_auth(self.token().await?))
    }

    /// Creates an enabled realm.
    pub async fn create_realm(&self, realm: &str) -> Result<()> {
        let resp = self
            .request(reqwest::Method::POST, "")
            .await?
            .json(&json!({ "realm": realm, "enabled": true }))
            .send()
            .await?;
        expect_status(
            resp,
            reqwest::StatusCode::CREATED,
            &format!("creating realm {realm}"),
        )
        .await
    }

    pub async fn delete_realm(&self, realm: &str) -> Result<()> {
        let resp = self
            .request(reqwest::Method::DELETE, &format!("/{realm}"))
            .await?
            .send()
            .await?;
        expect_status(
            resp,
            reqwest::StatusCode::NO_CONTENT,
            &format!("deleting realm {realm}"),
        )
        .await
    }

    /// Creates a client from a `ClientRepresentation`; returns its internal id (the `id`, not
    /// the `clientId`), taken from the `Location` header.
    pub async fn create_client(&self, realm: &str, representation: &Value) -> Result<String> {
        let resp = self
            .request(reqwest::Method::POST, &format!("/{realm}/clients"))
            .await?
            .json(representation)
            .send()
            .await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        expect_status(
            resp,
            reqwest::StatusCode::CREATED,
            &format!("creating a client in {realm}"),
        )
        .await?;
        let location = location.context("client created without a Location header")?;
        location
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .with_context(|| format!("unexpected Location {location}"))
    }

    /// Creates a confidential client with only the client_credentials grant (service account)
    /// and returns `(internal id, secret)`.
    pub async fn create_service_account_client(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<(String, String)> {
        let id = self
            .create_client(
                realm,
                &json!({
                    "clientId": client_id,
                    "enabled": true,
                    "protocol": "openid-connect",
                    "publicClient": false,
                    "clientAuthenticatorType": "client-secret",
                    "serviceAccountsEnabled": true,
                    "standardFlowEnabled": false,
                    "implicitFlowEnabled": false,
                    "directAccessGrantsEnabled": false,
                }),
            )
            .await?;
        let secret = self.client_secret(realm, &id).await?;
        Ok((id, secret))
    }

    /// The client's `ClientRepresentation`, by internal id.
    pub async fn get_client(&self, realm: &str, id: &str) -> Result<Value> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/{realm}/clients/{id}"))
            .await?
            .send()
            .await?;
        json_or_error(resp, "reading a Keycloak client").await
    }

    /// Looks a client up by its `clientId`; returns its `ClientRepresentation` if any.
    pub async fn find_client(&self, realm: &str, client_id: &str) -> Result<Option<Value>> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/{realm}/clients"))
            .await?
            .query(&[("clientId", client_id)])
            .send()
            .await?;
        let list: Value = json_or_error(resp, "listing Keycloak clients").await?;
        Ok(list.as_array().and_then(|a| a.first()).cloned())
    }

    /// The current secret of a confidential client, by internal id.
    pub async fn client_secret(&self, realm: &str, id: &str) -> Result<String> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/{realm}/clients/{id}/client-secret"),
            )
            .await?
            .send()
            .await?;
        let body: Value = json_or_error(resp, "reading a Keycloak client secret").await?;
        body["value"]
            .as_str()
            .map(str::to_string)
            .context("client-secret response without value")
    }

    /// An RFC 7591 initial access token for `realm`, valid for `count` registrations and
    /// `expiration` (0 = no expiry).
    pub async fn create_initial_access_token(
        &self,
        realm: &str,
        count: u32,
        expiration: Duration,
    ) -> Result<String> {
        let resp = self
            .request(
                reqwest::Method::POST,
                &format!("/{realm}/clients-initial-access"),
            )
            .await?
            .json(&json!({ "count": count, "expiration": expiration.as_secs() }))
            .send()
            .await?;
        let body: Value = json_or_error(resp, "creating an initial access token").await?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .context("clients-initial-access response without token")
    }
}

async fn json_or_error(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("{what}: reading the body"))?;
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{what}: not JSON: {text}"))
}

async fn expect_status(
    resp: reqwest::Response,
    want: reqwest::StatusCode,
    what: &str,
) -> Result<()> {
    let status = resp.status();
    if status != want {
        let text = resp.text().await.unwrap_or_default();
        bail!("{what}: HTTP {status} (expected {want}): {text}");
    }
    Ok(())
}

/// `TESTENV_JAVA_HOME`, else the newest `/usr/lib/jvm/temurin-<N>-jdk-amd64` with N >= 21.
fn java_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("TESTENV_JAVA_HOME") {
        return Ok(PathBuf::from(home));
    }
    let newest = std::fs::read_dir("/usr/lib/jvm")
        .context("listing /usr/lib/jvm")?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: u32 = name
                .strip_prefix("temurin-")?
                .strip_suffix("-jdk-amd64")?
                .parse()
                .ok()?;
            e.path()
                .join("bin/java")
                .exists()
                .then_some((version, e.path()))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((version, path)) if version >= 21 => Ok(path),
        Some((version, path)) => {
            bail!(
                "Keycloak needs Java 21+, newest Temurin is {version} ({})",
                path.display()
            )
        }
        None => {
            bail!("no /usr/lib/jvm/temurin-*-jdk-amd64 found; set TESTENV_JAVA_HOME (Java 21+)")
        }
    }
}

/// `kc.sh` runs java as a child, not through exec, so the parent-death signal that
/// [`GuardedChild`] puts on `kc.sh` would not reach the JVM: killing `kc.sh` (drop, or the test
/// process dying) would leave it running. kc.sh runs `$JAVA`; this shim makes that a
/// `setpriv --pdeathsig KILL` of the real java, so the JVM dies with `kc.sh`.
fn write_java_shim(run_home: &Path, java_home: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("setpriv (util-linux) is required to tie the Keycloak JVM to the test process")?;
    let java = java_home.join("bin/java");
    let shim = run_home.join("bin/java-pdeathsig");
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nexec {} --pdeathsig KILL -- {} \"$@\"\n",
            quote(setpriv),
            quote(&java)
        ),
    )
    .with_context(|| format!("writing {}", shim.display()))?;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    Ok(shim)
}

/// The augmented dev homes: a build output, so in the test environment cache beside the
/// distribution (not in /tmp, where it would outlive every run).
fn dev_root() -> Result<PathBuf> {
    let root = testenv_dir()?.join("keycloak-dev");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// Builds (once) the dev home for `dist`, keyed by the distribution's path, the mtime of its
/// `lib/quarkus` and [`FEATURES`], so a rebuilt distribution (or another feature set) gets a
/// new one. Call with the start lock held.
fn prepare_dev_home(dist: &Path) -> Result<PathBuf> {
    let quarkus = dist.join("lib/quarkus");
    let mtime = std::fs::metadata(&quarkus)
        .and_then(|m| m.modified())
        .with_context(|| format!("stat {}", quarkus.display()))?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let key = format!("{}|{mtime}|{FEATURES}", dist.display());
    let home = dev_root()?.join(format!("{:016x}", fnv1a(key.as_bytes())));
    let stamp = home.join(".testenv-ready");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
        return Ok(home);
    }
    if home.exists() {
        std::fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    }
    std::fs::create_dir_all(home.join("bin"))?;
    std::fs::create_dir_all(home.join("lib"))?;
    copy_file(&dist.join("bin/kc.sh"), &home.join("bin/kc.sh"))?;
    copy_tree(&dist.join("conf"), &home.join("conf"))?;
    for entry in std::fs::read_dir(dist.join("lib"))? {
        let entry = entry?;
        let target = home.join("lib").join(entry.file_name());
        if entry.file_name() == "quarkus" || entry.file_type()?.is_file() {
            // Rewritten by the dev-profile augmentation (quarkus/) or small (quarkus-run.jar).
            copy_tree(&entry.path(), &target)?;
        } else {
            symlink(&entry.path(), &target)?;
        }
    }
    for entry in std::fs::read_dir(dist)? {
        let entry = entry?;
        let name = entry.file_name();
        if ["bin", "conf", "lib", "data"].iter().any(|n| name == *n) {
            continue;
        }
        symlink(&entry.path(), &home.join(&name))?;
    }
    std::fs::write(&stamp, &key)?;
    Ok(home)
}

/// Run home: own `bin/kc.sh` and `data/`, everything else linked to the dev home.
fn prepare_run_home(dev_home: &Path, run: &Path) -> Result<()> {
    std::fs::create_dir_all(run.join("bin"))?;
    std::fs::create_dir_all(run.join("data"))?;
    copy_file(&dev_home.join("bin/kc.sh"), &run.join("bin/kc.sh"))?;
    for entry in std::fs::read_dir(dev_home)? {
        let entry = entry?;
        let name = entry.file_name();
        if ["bin", "data", ".testenv-ready"].iter().any(|n| name == *n) {
            continue;
        }
        symlink(&entry.path(), &run.join(&name))?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        copy_file(from, to)
    }
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

/// FNV-1a, for short stable directory names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An exclusive `flock` on a file, released on drop (and by the kernel if the process dies).
struct StartLock {
    _file: std::fs::File,
}

impl StartLock {
    fn acquire(path: &Path, timeout: Duration) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "another Keycloak start held {} for over {timeout:?}",
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
