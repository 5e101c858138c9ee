//! Ory Hydra (`DIR/bin/hydra serve all --dev`, in-memory SQLite) with its public and admin
//! APIs on free loopback ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::{GuardedChild, free_ports, testenv_dir};
use crate::server_support::{
    StartupStats, new_log_path, process_tree_rss_kib, random_hex, shared_or_err, wait_ready,
};

/// Bound on start-up (Hydra with `DSN=memory` migrates and serves in about a second).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Hydra; killed on drop. Data lives in memory and dies with it.
pub struct Hydra {
    child: GuardedChild,
    public_port: u16,
    admin_port: u16,
    log: PathBuf,
    stats: StartupStats,
}

impl Hydra {
    /// The instance shared by every test of this test binary (started on first use).
    pub fn shared() -> Result<&'static Hydra> {
        static SHARED: OnceLock<std::result::Result<Hydra, String>> = OnceLock::new();
        shared_or_err(&SHARED, "Hydra", Self::start)
    }

    /// Starts a private instance. Blocks until both APIs answer `/health/ready`.
    pub fn start() -> Result<Self> {
        let bin = testenv_dir()?.join("bin/hydra");
        if !bin.exists() {
            bail!("{} is missing: run `make testenv`", bin.display());
        }
        let [public_port, admin_port] = free_ports()?;
        let public = format!("http://127.0.0.1:{public_port}");
        let log = new_log_path("hydra")?;

        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "all", "--dev", "--sqa-opt-out"])
            .env("DSN", "memory")
            .env("SERVE_PUBLIC_HOST", "127.0.0.1")
            .env("SERVE_PUBLIC_PORT", public_port.to_string())
            .env("SERVE_ADMIN_HOST", "127.0.0.1")
            .env("SERVE_ADMIN_PORT", admin_port.to_string())
            .env("URLS_SELF_ISSUER", &public)
            .env("URLS_SELF_PUBLIC", &public)
            // Nobody serves these: enough for client_credentials and for client management.
            .env("URLS_LOGIN", format!("{public}/testenv/login"))
            .env("URLS_CONSENT", format!("{public}/testenv/consent"))
            .env("URLS_LOGOUT", format!("{public}/testenv/logout"))
            .env("SECRETS_SYSTEM", random_hex(32)?)
            // RFC 7591 / 7592 at /oauth2/register, for the dynamicRegistration backend.
            .env("OIDC_DYNAMIC_CLIENT_REGISTRATION_ENABLED", "true")
            .env("OAUTH2_EXPOSE_INTERNAL_ERRORS", "true")
            .env("SQA_OPT_OUT", "true")
            .env("LOG_LEVEL", "info")
            .env("LOG_FORMAT", "text");
        let started = Instant::now();
        let mut child = GuardedChild::spawn("hydra", cmd, &log)?;
        wait_ready(
            &mut child,
            &log,
            &[
                (admin_port, "/health/ready"),
                (public_port, "/health/ready"),
                // Also generates the signing keys, so the first real request is not slow.
                (public_port, "/.well-known/openid-configuration"),
            ],
            READY_TIMEOUT,
        )
        .context("starting Hydra")?;
        let stats = StartupStats::measure(started, child.id());
        Ok(Self {
            child,
            public_port,
            admin_port,
            log,
            stats,
        })
    }

    /// `http://127.0.0.1:<admin port>`; the client API is under `/admin/clients`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// `http://127.0.0.1:<public port>`: `/oauth2/token`, `/oauth2/auth`, discovery, ...
    pub fn public_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.public_port)
    }

    /// The configured issuer (`URLS_SELF_ISSUER`), equal to `public_url()`.
    pub fn issuer(&self) -> String {
        self.public_url()
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.public_url())
    }

    /// OpenID Connect dynamic registration (RFC 7591 / 7592) on the public port, enabled here
    /// (`OIDC_DYNAMIC_CLIENT_REGISTRATION_ENABLED`); Hydra takes no initial access token.
    pub fn registration_endpoint(&self) -> String {
        format!("{}/oauth2/register", self.public_url())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Start-up time and memory measured when it became ready.
    pub fn startup_stats(&self) -> StartupStats {
        self.stats
    }

    /// Current VmRSS (KiB) of the hydra process.
    pub fn rss_kib(&self) -> Result<u64> {
        process_tree_rss_kib(self.pid())
    }
}
