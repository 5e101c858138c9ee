//! A real etcd + kube-apiserver on loopback, started the way controller-runtime's envtest
//! does (`pkg/internal/testing/controlplane/{etcd,apiserver}.go`): same flags, secure port
//! only, RBAC authorization, x509 client certificates signed by a generated client CA, and
//! an admin identity in `system:masters`.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let cp = testenv::ControlPlane::shared()?; // one per test binary, started on first use
//! let ns = cp.create_namespace("my-test").await?; // unique per call
//! let admin = cp.admin_client().await?; // a fresh client for this test's runtime
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::certs::{CertAndKey, CertificateAuthority, service_account_signing_key};
use crate::process::{GuardedChild, free_ports, testenv_dir};

/// Overrides how long etcd + kube-apiserver may take to become ready (seconds).
pub const START_TIMEOUT_ENV: &str = "TESTENV_START_TIMEOUT_SECS";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;
/// The name of the cluster, user and context in the generated kubeconfig.
const KUBECONFIG_NAME: &str = "testenv";

/// A running etcd + kube-apiserver pair bound to 127.0.0.1.
///
/// Dropping it kills both processes and removes its state directory. The processes also die
/// with the test binary (see [`GuardedChild`]).
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    kubeconfig_path: PathBuf,
    server_ca_pem: String,
    client_ca: CertificateAuthority,
    admin: CertAndKey,
    startup: Duration,
    etcd_pid: AtomicU32,
    apiserver_pid: AtomicU32,
    /// kube-apiserver first, then etcd: the order they are stopped in.
    processes: Mutex<Vec<GuardedChild>>,
    /// How to start either process again, on the same ports with the same state.
    restart: Restart,
}

/// What [`ControlPlane::restart_apiserver`] and [`ControlPlane::restart_etcd`] need.
struct Restart {
    bin_dir: PathBuf,
    files: Pki,
    etcd_url: String,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    kubeconfig: serde_json::Value,
    audit: bool,
}

/// Resident memory of the two processes, from `/proc/<pid>/status` (`VmRSS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub etcd_rss_kib: u64,
    pub apiserver_rss_kib: u64,
}

impl MemoryUsage {
    pub fn total_mib(&self) -> f64 {
        (self.etcd_rss_kib + self.apiserver_rss_kib) as f64 / 1024.0
    }
}

/// The control plane shared by every test of one test binary. A failed start is remembered,
/// so later tests fail fast with the same error instead of starting again.
static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane of this test binary: started on the first call (binaries from
    /// [`testenv_dir`]), the same one afterwards. Safe to call from any test and thread.
    ///
    /// It is never dropped (it lives in a static): its processes and its directory under the
    /// system temp dir are cleaned up by an exit handler when the test binary exits normally.
    /// If the binary is killed, the processes still die (`PR_SET_PDEATHSIG`) but the
    /// directory stays behind in the temp dir.
    ///
    /// Hand out fresh clients per test ([`Self::admin_client`] etc.): each `#[tokio::test]`
    /// has its own runtime, and a client must not outlive the runtime that created it.
    pub fn shared() -> Result<&'static ControlPlane> {
        let started = SHARED.get_or_init(|| {
            let started = testenv_dir().and_then(|dir| ControlPlane::start(&dir));
            match started {
                Ok(control_plane) => {
                    register_exit_cleanup();
                    Ok(control_plane)
                }
                Err(err) => Err(format!("{err:#}")),
            }
        });
        started
            .as_ref()
            .map_err(|err| anyhow!("the shared control plane failed to start: {err}"))
    }

    /// Starts a control plane of its own, with `etcd` and `kube-apiserver` from
    /// `testenv_dir/bin` and its state (certificates, etcd data, logs, kubeconfig) in a fresh
    /// temp directory. Blocks until `/readyz` is ok and the `default` namespace exists.
    /// Callable from inside or outside a tokio runtime.
    pub fn start(testenv_dir: &Path) -> Result<ControlPlane> {
        Self::start_with(testenv_dir, false)
    }

    /// As [`Self::start`]; with `audit`, kube-apiserver also writes one JSON line per
    /// completed request (user, verb, resource, namespace, name: no bodies) to
    /// [`Self::audit_log_path`], so a benchmark can count each client's requests.
    pub fn start_with(testenv_dir: &Path, audit: bool) -> Result<ControlPlane> {
        let bin_dir = testenv_dir.join("bin");
        for binary in ["etcd", "kube-apiserver"] {
            let path = bin_dir.join(binary);
            if !path.is_file() {
                bail!(
                    "{} not found: build the test components with `make testenv`",
                    path.display()
                );
            }
        }
        // free_port() releases the port before the server binds it, so another process can
        // take it in between. That shows as "address already in use": start again on new ports.
        const ATTEMPTS: u32 = 3;
        let started = Instant::now();
        let deadline = started + start_timeout()?;
        for attempt in 1.. {
            let dir = create_temp_dir()?;
            match Self::start_in(&bin_dir, &dir, started, deadline, audit) {
                Ok(control_plane) => return Ok(control_plane),
                Err(err) if attempt < ATTEMPTS && is_port_clash(&err) => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(err) => {
                    return Err(err.context(format!(
                        "starting etcd + kube-apiserver (state and logs kept in {})",
                        dir.display()
                    )));
                }
            }
        }
        unreachable!("the loop returns by the last attempt")
    }

    fn start_in(
        bin_dir: &Path,
        dir: &Path,
        started: Instant,
        deadline: Instant,
        audit: bool,
    ) -> Result<ControlPlane> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
        let server_ca = CertificateAuthority::new("testenv-server-ca")?;
        let serving = server_ca.issue_serving("kube-apiserver", &["127.0.0.1", "localhost"])?;
        let client_ca = CertificateAuthority::new("testenv-client-ca")?;
        let admin = client_ca.issue_client("admin", &["system:masters"])?;
        let (sa_private_pem, sa_public_pem) = service_account_signing_key()?;
        let server_ca_pem = server_ca.cert_pem();
        let files = Pki {
            serving_cert: write_file(&pki, "apiserver.crt", &serving.cert_pem)?,
            serving_key: write_file(&pki, "apiserver.key", &serving.key_pem)?,
            client_ca: write_file(&pki, "client-ca.crt", &client_ca.cert_pem())?,
            sa_public: write_file(&pki, "sa-signer.pub", &sa_public_pem)?,
            sa_private: write_file(&pki, "sa-signer.key", &sa_private_pem)?,
        };
        write_file(&pki, "server-ca.crt", &server_ca_pem)?;
        if audit {
            // One event per request, when it completes (a watch: when it ends).
            write_file(
                dir,
                "audit-policy.yaml",
                "apiVersion: audit.k8s.io/v1\nkind: Policy\n\
                 omitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: Metadata\n",
            )?;
        }

        let [etcd_port, etcd_peer_port, apiserver_port] = free_ports()?;

        let etcd_log = dir.join("etcd.log");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = GuardedChild::spawn(
            "etcd",
            etcd_command(bin_dir, dir, &etcd_url, etcd_peer_port),
            &etcd_log,
        )?;
        wait_for_etcd(&mut etcd, etcd_port, &etcd_log, deadline)?;

        let apiserver_log = dir.join("kube-apiserver.log");
        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let mut apiserver = GuardedChild::spawn(
            "kube-apiserver",
            apiserver_command(bin_dir, dir, &files, &etcd_url, apiserver_port, audit),
            &apiserver_log,
        )?;

        let kubeconfig = kubeconfig_value(&server_url, &server_ca_pem, cert_user(&admin));
        let processes = [
            (&mut etcd, etcd_log.as_path()),
            (&mut apiserver, apiserver_log.as_path()),
        ];
        wait_for_apiserver_blocking(&kubeconfig, processes, deadline)?;

        let kubeconfig_path = dir.join("kubeconfig");
        let yaml = serde_yaml::to_string(&kubeconfig).context("serializing the kubeconfig")?;
        write_private_file(&kubeconfig_path, &yaml)?;

        Ok(ControlPlane {
            dir: dir.to_path_buf(),
            server_url,
            kubeconfig_path,
            server_ca_pem,
            client_ca,
            admin,
            startup: started.elapsed(),
            etcd_pid: AtomicU32::new(etcd.id()),
            apiserver_pid: AtomicU32::new(apiserver.id()),
            processes: Mutex::new(vec![apiserver, etcd]),
            restart: Restart {
                bin_dir: bin_dir.to_path_buf(),
                files,
                etcd_url,
                etcd_port,
                etcd_peer_port,
                apiserver_port,
                kubeconfig,
                audit,
            },
        })
    }

    /// Kills kube-apiserver (SIGKILL), leaves it down for `down`, then starts it again on the
    /// same port with the same flags and certificates (etcd keeps every object), and waits
    /// until it is ready. Returns how long it was unavailable. Clients keep their URL.
    pub fn restart_apiserver(&self, down: Duration) -> Result<Duration> {
        let r = &self.restart;
        let stopped = Instant::now();
        self.with_process("kube-apiserver", GuardedChild::kill)?;
        std::thread::sleep(down);
        let log = self.dir.join("kube-apiserver.log");
        let apiserver = GuardedChild::spawn(
            "kube-apiserver",
            apiserver_command(
                &r.bin_dir,
                &self.dir,
                &r.files,
                &r.etcd_url,
                r.apiserver_port,
                r.audit,
            ),
            &log,
        )?;
        self.apiserver_pid.store(apiserver.id(), Ordering::Relaxed);
        self.with_process("kube-apiserver", |p| *p = apiserver)?;
        self.wait_ready(Instant::now() + start_timeout()?)?;
        Ok(stopped.elapsed())
    }

    /// Kills etcd (SIGKILL), leaves it down for `down`, then starts it again on the same
    /// ports with the same data directory, and waits until kube-apiserver (which reconnects
    /// by itself) is ready again. Returns how long etcd was unavailable.
    pub fn restart_etcd(&self, down: Duration) -> Result<Duration> {
        let r = &self.restart;
        let stopped = Instant::now();
        self.with_process("etcd", GuardedChild::kill)?;
        std::thread::sleep(down);
        let log = self.dir.join("etcd.log");
        let mut etcd = GuardedChild::spawn(
            "etcd",
            etcd_command(&r.bin_dir, &self.dir, &r.etcd_url, r.etcd_peer_port),
            &log,
        )?;
        let deadline = Instant::now() + start_timeout()?;
        wait_for_etcd(&mut etcd, r.etcd_port, &log, deadline)?;
        self.etcd_pid.store(etcd.id(), Ordering::Relaxed);
        self.with_process("etcd", |p| *p = etcd)?;
        self.wait_ready(deadline)?;
        Ok(stopped.elapsed())
    }

    fn with_process<T>(&self, name: &str, f: impl FnOnce(&mut GuardedChild) -> T) -> Result<T> {
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow!("control plane process list poisoned"))?;
        let process = processes
            .iter_mut()
            .find(|p| p.name() == name)
            .with_context(|| format!("no {name} process"))?;
        Ok(f(process))
    }

    /// Waits until kube-apiserver answers `/readyz` and serves the `default` namespace.
    fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let etcd_log = self.dir.join("etcd.log");
        let apiserver_log = self.dir.join("kube-apiserver.log");
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow!("control plane process list poisoned"))?;
        let mut etcd = None;
        let mut apiserver = None;
        for p in processes.iter_mut() {
            match p.name() {
                "etcd" => etcd = Some(p),
                "kube-apiserver" => apiserver = Some(p),
                _ => {}
            }
        }
        let (Some(etcd), Some(apiserver)) = (etcd, apiserver) else {
            bail!("etcd or kube-apiserver missing from the process list");
        };
        let processes = [
            (etcd, etcd_log.as_path()),
            (apiserver, apiserver_log.as_path()),
        ];
        wait_for_apiserver_blocking(&self.restart.kubeconfig, processes, deadline)
    }

    /// Starts `kube-controller-manager` against this control plane, running only
    /// `controllers` (for example `namespace,garbagecollector`: what deleting a namespace
    /// needs), without serving anything (`--secure-port=0`). It lives as long as the control
    /// plane. Its log is `kube-controller-manager.log` in [`Self::dir`].
    pub fn start_controller_manager(&self, controllers: &str) -> Result<()> {
        let bin = testenv_dir()?.join("bin").join("kube-controller-manager");
        if !bin.is_file() {
            bail!(
                "{} not found: build the test components with `make testenv`",
                bin.display()
            );
        }
        let log = self.dir.join("kube-controller-manager.log");
        let mut cmd = Command::new(bin);
        cmd.current_dir(&self.dir)
            .arg(format!("--kubeconfig={}", self.kubeconfig_path.display()))
            .arg(format!("--controllers={controllers}"))
            .arg("--secure-port=0")
            .arg("--leader-elect=false")
            .arg("--use-service-account-credentials=false");
        let child = GuardedChild::spawn("kube-controller-manager", cmd, &log)?;
        self.processes
            .lock()
            .map_err(|_| anyhow!("control plane process list poisoned"))?
            .insert(0, child);
        Ok(())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA that signed the apiserver's serving certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.server_ca_pem
    }

    /// The state directory: `pki/`, `etcd-data/`, `etcd.log`, `kube-apiserver.log`, `kubeconfig`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An admin (`system:masters`) kubeconfig with embedded certificates, usable by kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The audit log (JSON lines) of a control plane started with `audit`
    /// ([`Self::start_with`]); nothing is written there otherwise.
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Writes a kubeconfig (in the control plane's directory) that authenticates as `user` in
    /// `groups` with a client certificate, for a process that must be told apart from the
    /// others in the audit log. Returns its path.
    pub fn write_kubeconfig_as_user(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let cert = self.client_ca.issue_client(user, groups)?;
        let value = kubeconfig_value(&self.server_url, &self.server_ca_pem, cert_user(&cert));
        let yaml = serde_yaml::to_string(&value).context("serializing a kubeconfig")?;
        write_file(&self.dir, &format!("kubeconfig-{user}"), &yaml)
    }

    /// The admin kubeconfig (same content as [`Self::kubeconfig_path`]).
    pub fn kubeconfig(&self) -> Result<Kubeconfig> {
        let value = kubeconfig_value(
            &self.server_url,
            &self.server_ca_pem,
            cert_user(&self.admin),
        );
        serde_json::from_value(value).context("building the admin kubeconfig")
    }

    /// Time from [`Self::start`] until the apiserver was ready and `default` existed.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// A client config for the admin identity (`CN=admin, O=system:masters`).
    pub async fn admin_config(&self) -> Result<Config> {
        config_from(self.kubeconfig()?).await
    }

    /// A new client for the admin identity, bound to the calling test's runtime.
    pub async fn admin_client(&self) -> Result<Client> {
        Client::try_from(self.admin_config().await?).context("building the admin client")
    }

    /// Creates a namespace named `<prefix>-<unique suffix>` and returns its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.admin_client().await?)
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// A client authenticated as ServiceAccount `namespace/name` (created if missing) with a
    /// bearer token from the TokenRequest API, valid for an hour. It has no permissions
    /// beyond what RBAC grants the ServiceAccount.
    pub async fn client_as_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let service_accounts =
            Api::<ServiceAccount>::namespaced(self.admin_client().await?, namespace);
        let service_account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match service_accounts
            .create(&PostParams::default(), &service_account)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("creating ServiceAccount {namespace}/{name}"));
            }
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = service_accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
            .status
            .and_then(|status| status.token)
            .filter(|token| !token.is_empty())
            .with_context(|| {
                format!("the TokenRequest for {namespace}/{name} returned no token")
            })?;
        let user_name = format!("system:serviceaccount:{namespace}:{name}");
        let user = serde_json::json!({ "token": token });
        self.client_for(&user_name, user).await
    }

    /// A client authenticated by a client certificate (signed by the apiserver's client CA)
    /// for `user` in `groups` (at most 2; every authenticated user is also in
    /// `system:authenticated`). Its permissions are what RBAC grants that user and groups.
    pub async fn client_as_user(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let cert = self.client_ca.issue_client(user, groups)?;
        self.client_for(user, cert_user(&cert)).await
    }

    async fn client_for(&self, user_name: &str, user: serde_json::Value) -> Result<Client> {
        let value = kubeconfig_value(&self.server_url, &self.server_ca_pem, user);
        let kubeconfig = serde_json::from_value(value).context("building a kubeconfig")?;
        Client::try_from(config_from(kubeconfig).await?)
            .with_context(|| format!("building a client for {user_name}"))
    }

    /// Resident memory of etcd and kube-apiserver right now.
    pub fn memory(&self) -> Result<MemoryUsage> {
        Ok(MemoryUsage {
            etcd_rss_kib: rss_kib(self.etcd_pid.load(Ordering::Relaxed))?,
            apiserver_rss_kib: rss_kib(self.apiserver_pid.load(Ordering::Relaxed))?,
        })
    }

    /// `[("etcd", pid), ("kube-apiserver", pid)]`.
    pub fn process_ids(&self) -> [(&'static str, u32); 2] {
        [
            ("etcd", self.etcd_pid.load(Ordering::Relaxed)),
            ("kube-apiserver", self.apiserver_pid.load(Ordering::Relaxed)),
        ]
    }

    /// Every TCP socket that etcd and kube-apiserver listen on, as `(process, address)`.
    pub fn listening_addresses(&self) -> Result<Vec<(&'static str, SocketAddr)>> {
        let mut addresses = Vec::new();
        for (name, pid) in self.process_ids() {
            for address in listening_sockets(pid)? {
                addresses.push((name, address));
            }
        }
        Ok(addresses)
    }

    /// Kills both processes (apiserver first) and removes the state directory. Idempotent.
    fn stop(&self) {
        // try_lock: this also runs from an exit handler, which must never block or panic.
        if let Ok(mut processes) = self.processes.try_lock() {
            // Dropping a GuardedChild kills and reaps it.
            processes.drain(..).for_each(drop);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir)
            .field("etcd_pid", &self.etcd_pid)
            .field("apiserver_pid", &self.apiserver_pid)
            .finish_non_exhaustive()
    }
}

/// Paths of the files the apiserver is started with.
struct Pki {
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_ca: PathBuf,
    sa_public: PathBuf,
    sa_private: PathBuf,
}

fn etcd_command(bin_dir: &Path, dir: &Path, client_url: &str, peer_port: u16) -> Command {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(bin_dir.join("etcd"));
    cmd.current_dir(dir)
        .arg("--name=testenv")
        .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=testenv={peer_url}"))
        // As envtest: durability is pointless for a throwaway cluster, fsync is slow.
        .arg("--unsafe-no-fsync=true");
    cmd
}

fn apiserver_command(
    bin_dir: &Path,
    dir: &Path,
    pki: &Pki,
    etcd_url: &str,
    port: u16,
    audit: bool,
) -> Command {
    let mut cmd = Command::new(bin_dir.join("kube-apiserver"));
    if audit {
        cmd.arg(format!(
            "--audit-policy-file={}",
            dir.join("audit-policy.yaml").display()
        ))
        .arg(format!(
            "--audit-log-path={}",
            dir.join("audit.log").display()
        ))
        .arg("--audit-log-format=json")
        .arg("--audit-log-maxsize=0");
    }
    cmd.current_dir(dir)
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg("--advertise-address=127.0.0.1")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", dir.join("pki").display()))
        .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", pki.client_ca.display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-issuer=https://127.0.0.1:{port}/"
        ))
        .arg(format!(
            "--service-account-key-file={}",
            pki.sa_public.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.sa_private.display()
        ))
        // A config value only: nothing routes service traffic here.
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        // As envtest: no controller-manager creates the `default` ServiceAccount, and the
        // ServiceAccount admission plugin would reject Pods without one.
        .arg("--disable-admission-plugins=ServiceAccount")
        // As production clusters (OpenShift, hardened installs) enable it: setting
        // blockOwnerDeletion on an ownerReference needs `update` on the owner's finalizers,
        // so tests/rbac.rs proves the operator's RBAC grants it.
        .arg("--enable-admission-plugins=OwnerReferencesPermissionEnforcement")
        .arg("--allow-privileged=true");
    cmd
}

fn wait_for_etcd(etcd: &mut GuardedChild, port: u16, log: &Path, deadline: Instant) -> Result<()> {
    loop {
        etcd.check_running()
            .map_err(|err| with_log_tail(err, log))?;
        let last = match etcd_health(port) {
            Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok(body) => body,
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() >= deadline {
            return Err(with_log_tail(
                anyhow!("etcd not healthy in time; last /health: {last}"),
                log,
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `GET /health` over plain HTTP/1.0, so the check needs no runtime and no HTTP client.
fn etcd_health(port: u16) -> Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Waits for `/readyz` to say `ok` (all post-start hooks done, RBAC bootstrap roles
/// included), then for the `default` namespace, failing early if a process exits.
/// [`wait_for_apiserver`] on a dedicated thread with its own runtime: the callers are sync
/// and may be called from inside a (current-thread) test runtime, which cannot be blocked on.
fn wait_for_apiserver_blocking(
    kubeconfig: &serde_json::Value,
    processes: [(&mut GuardedChild, &Path); 2],
    deadline: Instant,
) -> Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime for the readiness checks")?;
                runtime.block_on(wait_for_apiserver(kubeconfig, processes, deadline))
            })
            .join()
            .map_err(|_| anyhow!("the readiness thread panicked"))?
    })
}

async fn wait_for_apiserver(
    kubeconfig: &serde_json::Value,
    mut processes: [(&mut GuardedChild, &Path); 2],
    deadline: Instant,
) -> Result<()> {
    let kubeconfig =
        serde_json::from_value(kubeconfig.clone()).context("building the kubeconfig")?;
    let client =
        Client::try_from(config_from(kubeconfig).await?).context("building the admin client")?;
    let apiserver_log = processes[1].1.to_path_buf();
    let mut check_running = || -> Result<()> {
        for (process, log) in processes.iter_mut() {
            process
                .check_running()
                .map_err(|err| with_log_tail(err, log))?;
        }
        Ok(())
    };

    loop {
        check_running()?;
        let request = http::Request::get("/readyz").body(Vec::new())?;
        let last = match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
            .await
        {
            Ok(Ok(body)) if body.trim() == "ok" => break,
            Ok(Ok(body)) => body,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "timed out after 5s".to_string(),
        };
        if Instant::now() >= deadline {
            let err = anyhow!(
                "kube-apiserver not ready in time; last /readyz: {}",
                truncate(&last, 2000)
            );
            return Err(with_log_tail(err, &apiserver_log));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    let namespaces = Api::<Namespace>::all(client);
    loop {
        check_running()?;
        let last = match namespaces.get_opt("default").await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => "not found".to_string(),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            let err = anyhow!("namespace default not created in time; last: {last}");
            return Err(with_log_tail(err, &apiserver_log));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn start_timeout() -> Result<Duration> {
    match std::env::var(START_TIMEOUT_ENV) {
        Ok(secs) => Ok(Duration::from_secs(secs.parse().with_context(|| {
            format!("{START_TIMEOUT_ENV}={secs} is not a number of seconds")
        })?)),
        Err(_) => Ok(DEFAULT_START_TIMEOUT),
    }
}

fn is_port_clash(err: &anyhow::Error) -> bool {
    format!("{err:#}").contains("address already in use")
}

/// The error with the last lines of a process log appended, so a failed start explains itself.
fn with_log_tail(err: anyhow::Error, log: &Path) -> anyhow::Error {
    let tail = match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(read_err) => format!("(cannot read log: {read_err})"),
    };
    anyhow!(
        "{err:#}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{tail}",
        log.display()
    )
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// A fresh directory under the system temp dir, unique across processes and calls.
fn create_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "oauth-operator-testenv-kube-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64() as u32
    );
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `<prefix>-<n><random>`: a valid namespace name (DNS label), unique per call.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    prefix = prefix.trim_matches('-').to_string();
    if prefix.is_empty() {
        prefix = "test".to_string();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{n}{:06x}", random_u64() as u32 & 0xff_ffff)
}

/// Randomness without a dependency: std seeds every `RandomState` from the OS.
fn random_u64() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    write_private_file(&path, contents)?;
    Ok(path)
}

/// Writes a file only its owner can read: several of these hold private keys.
fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn cert_user(cert: &CertAndKey) -> serde_json::Value {
    serde_json::json!({
        "client-certificate-data": BASE64.encode(&cert.cert_pem),
        "client-key-data": BASE64.encode(&cert.key_pem),
    })
}

/// A one-context kubeconfig (kubectl format) for `server`, trusting `ca_pem`, as `user`.
fn kubeconfig_value(server: &str, ca_pem: &str, user: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": KUBECONFIG_NAME,
            "cluster": { "server": server, "certificate-authority-data": BASE64.encode(ca_pem) },
        }],
        "users": [{ "name": KUBECONFIG_NAME, "user": user }],
        "contexts": [{
            "name": KUBECONFIG_NAME,
            "context": { "cluster": KUBECONFIG_NAME, "user": KUBECONFIG_NAME },
        }],
        "current-context": KUBECONFIG_NAME,
    })
}

async fn config_from(kubeconfig: Kubeconfig) -> Result<Config> {
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading a kubeconfig")
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// The addresses of the TCP sockets in state LISTEN that process `pid` holds: the socket
/// inodes of `/proc/<pid>/fd` matched against `/proc/<pid>/net/tcp{,6}`.
fn listening_sockets(pid: u32) -> Result<Vec<SocketAddr>> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut inodes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&fd_dir).with_context(|| format!("reading {fd_dir}"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut listening: BTreeMap<String, SocketAddr> = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            const LISTEN: &str = "0A";
            if fields.len() > 9 && fields[3] == LISTEN && inodes.contains(fields[9]) {
                let address = parse_proc_net_address(fields[1])
                    .with_context(|| format!("parsing {} in {path}", fields[1]))?;
                listening.insert(fields[9].to_string(), address);
            }
        }
    }
    Ok(listening.into_values().collect())
}

/// `0100007F:1F90` (IPv4) or 32 hex digits + port (IPv6): the address as the kernel prints
/// it, each 32-bit word in host (little-endian) byte order.
fn parse_proc_net_address(text: &str) -> Result<SocketAddr> {
    let (ip_hex, port_hex) = text.split_once(':').context("no ':'")?;
    let port = u16::from_str_radix(port_hex, 16)?;
    let words = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16))
        .collect::<std::result::Result<Vec<u32>, _>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let octets: [u8; 16] = bytes.try_into().map_err(|_| anyhow!("not 16 bytes"))?;
            std::net::IpAddr::from(Ipv6Addr::from(octets))
        }
        n => bail!("{n}-byte address"),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Stops the shared control plane when the test binary exits: it lives in a static, and
/// statics are never dropped.
fn register_exit_cleanup() {
    extern "C" fn stop_shared_control_plane() {
        if let Some(Ok(control_plane)) = SHARED.get() {
            control_plane.stop();
        }
    }
    // SAFETY: atexit only records a function pointer; the handler reads a static that is
    // initialized by then, and `stop` neither blocks nor panics.
    unsafe {
        libc::atexit(stop_shared_control_plane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_proc_net_address("0100007F:1F90").unwrap(),
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_proc_net_address("00000000000000000000000001000000:0050").unwrap(),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn unique_names_are_valid_namespace_names() {
        let a = unique_name("My_Test");
        let b = unique_name("My_Test");
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-"), "{a}");
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
