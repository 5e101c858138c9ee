//! `clerk-emulator --listen 127.0.0.1:PORT --secret-key sk_test_xxx`: serves the emulated
//! Clerk Backend API and Frontend API OAuth endpoints until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use clerk_emulator::{EmulatedUser, Emulator, EmulatorConfig, RateLimit};

/// Emulator of Clerk's Backend API `/v1/oauth_applications` endpoints and the Frontend API
/// OAuth endpoints (`/oauth/authorize`, `/oauth/token`, `/oauth/userinfo`, discovery), loopback
/// only.
#[derive(Parser, Debug)]
#[command(name = "clerk-emulator", version)]
struct Args {
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, env = "CLERK_EMULATOR_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The secret key clients must send as `Authorization: Bearer <key>`.
    #[arg(long, env = "CLERK_SECRET_KEY", hide_env_values = true)]
    secret_key: String,
    /// Frontend API URL the applications' OAuth endpoint URLs and the OpenID issuer are derived
    /// from. Default (or empty): the emulator itself (`http://<listen address>`), which serves
    /// them.
    #[arg(long, env = "CLERK_EMULATOR_FRONTEND_API_URL")]
    frontend_api_url: Option<String>,
    /// `sub` / `user_id` of the user every authorization is approved for.
    #[arg(long, default_value = "user_emulated")]
    user_id: String,
    /// E-mail address of the emulated user.
    #[arg(long, default_value = "emulated.user@example.com")]
    user_email: String,
    /// Rate limit: requests per `--rate-limit-window-ms` (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    rate_limit: u32,
    /// Rate limit window in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    rate_limit_window_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.secret_key.starts_with("sk_"),
        "--secret-key must look like a Clerk secret key (sk_test_... or sk_live_...)"
    );
    let mut config = EmulatorConfig {
        listen: args.listen,
        secret_key: Some(args.secret_key),
        frontend_api_url: args.frontend_api_url.filter(|u| !u.is_empty()),
        user: EmulatedUser {
            id: args.user_id,
            email: args.user_email,
            ..EmulatedUser::default()
        },
        ..EmulatorConfig::default()
    };
    if args.rate_limit > 0 {
        config.rate_limit = Some(RateLimit {
            requests: args.rate_limit,
            window: Duration::from_millis(args.rate_limit_window_ms.max(1)),
        });
    }
    let emulator = Emulator::start(config).context("starting the Clerk emulator")?;
    println!(
        "clerk-emulator ready base_url={} admin_url={} frontend_api_url={}",
        emulator.base_url(),
        emulator.admin_url(),
        emulator.frontend_api_url()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    emulator.shutdown().await;
    Ok(())
}
