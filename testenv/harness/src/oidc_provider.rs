//! node `oidc-provider` (v8, `testenv/oidc-provider/server.js`) on a free loopback port:
//! RFC 7591 registration behind a static initial access token, RFC 7592 management,
//! `client_credentials` and `authorization_code` grants, dev interactions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::{GuardedChild, free_port, workspace_root};
use crate::server_support::{
    StartupStats, new_log_path, process_tree_rss_kib, random_hex, shared_or_err, wait_ready,
};

/// Bound on start-up (node boots in well under a second; the machine may be busy compiling).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The resource server for which `client_credentials` tokens are issued (JWT access tokens
/// with this audience and scopes out of `api:read api:write`).
pub const API_RESOURCE: &str = "urn:oauth-operator:testenv:api";

/// A running oidc-provider; killed on drop.
pub struct OidcProvider {
    child: GuardedChild,
    port: u16,
    initial_access_token: String,
    log: PathBuf,
    stats: StartupStats,
}

impl OidcProvider {
    /// The instance shared by every test of this test binary (started on first use).
    pub fn shared() -> Result<&'static OidcProvider> {
        static SHARED: OnceLock<std::result::Result<OidcProvider, String>> = OnceLock::new();
        shared_or_err(&SHARED, "oidc-provider", Self::start)
    }

    /// Starts a private instance. Blocks until it serves its discovery document.
    pub fn start() -> Result<Self> {
        let dir = workspace_root().join("testenv/oidc-provider");
        if !dir.join("node_modules/oidc-provider/package.json").exists() {
            bail!(
                "{}/node_modules is missing: run `npm ci` there (`make testenv` does)",
                dir.display()
            );
        }
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let port = free_port()?;
        let initial_access_token = random_hex(24)?;
        let log = new_log_path("oidc-provider")?;

        let mut cmd = Command::new(node);
        cmd.current_dir(&dir)
            .arg("server.js")
            .arg(port.to_string())
            .env("OIDC_INITIAL_ACCESS_TOKEN", &initial_access_token)
            .env("NODE_ENV", "development");
        let started = Instant::now();
        let mut child = GuardedChild::spawn("oidc-provider", cmd, &log)?;
        wait_ready(
            &mut child,
            &log,
            &[(port, "/.well-known/openid-configuration")],
            READY_TIMEOUT,
        )
        .context("starting oidc-provider")?;
        let stats = StartupStats::measure(started, child.id());
        Ok(Self {
            child,
            port,
            initial_access_token,
            log,
            stats,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash), as in its discovery document.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer())
    }

    /// RFC 7591 endpoint; needs `Authorization: Bearer <initial_access_token()>`.
    pub fn registration_endpoint(&self) -> String {
        format!("{}/reg", self.issuer())
    }

    /// The static RFC 7591 initial access token (random per instance).
    pub fn initial_access_token(&self) -> &str {
        &self.initial_access_token
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer())
    }

    pub fn port(&self) -> u16 {
        self.port
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

    /// Current VmRSS (KiB) of the node process.
    pub fn rss_kib(&self) -> Result<u64> {
        process_tree_rss_kib(self.pid())
    }
}
