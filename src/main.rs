//! `oauth-operator`: `run` (the controller), `crd` (print the CRDs), `version`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use oauth_operator::controller::{self, Config};
use oauth_operator::leader::LeaseConfig;
use oauth_operator::telemetry::{self, LogFormat, Metrics, Readiness};

#[derive(Parser)]
#[command(
    name = "oauth-operator",
    version,
    about = "Manages OAuth 2.0 / OpenID Connect clients declaratively"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (uses the in-cluster config or $KUBECONFIG).
    Run(Box<RunArgs>),
    /// Print every CRD as YAML.
    Crd,
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "OAUTH_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    #[arg(
        long,
        env = "OAUTH_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Namespace of the operator: where ClusterOAuthProvider credential Secrets are read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "oauth-operator")]
    operator_namespace: String,
    /// Watch only this namespace (default: the whole cluster).
    #[arg(long, env = "OAUTH_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// How often every application is compared with its provider (drift detection), e.g. 10m.
    #[arg(long, env = "OAUTH_OPERATOR_RESYNC_INTERVAL", default_value = "10m")]
    resync_interval: kube::core::Duration,
    /// How long a deletion may wait for an unreachable provider before it gives up.
    #[arg(long, env = "OAUTH_OPERATOR_DELETION_TIMEOUT", default_value = "10m")]
    deletion_timeout: kube::core::Duration,
    /// Timeout of each request to an authorization server.
    #[arg(long, env = "OAUTH_OPERATOR_PROVIDER_TIMEOUT", default_value = "30s")]
    provider_timeout: kube::core::Duration,
    /// Hold a coordination.k8s.io Lease in the operator namespace before reconciling, so
    /// that of several replicas exactly one works (the others wait as standbys).
    #[arg(
        long,
        env = "OAUTH_OPERATOR_LEADER_ELECT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    leader_elect: bool,
    /// Name of the Lease (replicas of one installation share it).
    #[arg(
        long,
        env = "OAUTH_OPERATOR_LEASE_NAME",
        default_value = "oauth-operator"
    )]
    lease_name: String,
    /// How long a Lease stays valid without renewal: a standby takes over at most this long
    /// after the leader dies; the leader stops writing to providers after three quarters of
    /// it without a renewal.
    #[arg(long, env = "OAUTH_OPERATOR_LEASE_DURATION", default_value = "15s")]
    lease_duration: kube::core::Duration,
    /// This replica's name in the Lease (default: $POD_NAME, else the hostname and a
    /// random suffix).
    #[arg(long, env = "OAUTH_OPERATOR_LEADER_IDENTITY")]
    leader_identity: Option<String>,
    /// How many applications (and providers) are reconciled at once, per kind (0: no limit).
    #[arg(long, env = "OAUTH_OPERATOR_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Request budget of every provider whose spec sets no `requestBudget`: REQUESTS/PERIOD,
    /// e.g. 80/10s. Unset: by backend, 80/10s for Clerk and RFC 7591 servers (below Clerk's
    /// development limit of 100 per 10 s), 100/1s for Hydra and Keycloak.
    #[arg(long, env = "OAUTH_OPERATOR_DEFAULT_REQUEST_BUDGET")]
    default_request_budget: Option<oauth_operator::api::RequestBudget>,
    /// Networks a namespaced OAuthProvider may reach although they are loopback, private,
    /// link-local or otherwise special (comma-separated CIDRs or addresses, e.g.
    /// `10.96.0.0/12` for in-cluster authorization servers). By default a namespaced provider
    /// reaches public addresses only (the cloud metadata service, the apiserver and other
    /// in-cluster services are out of a tenant's reach); a ClusterOAuthProvider is not
    /// restricted.
    #[arg(long, env = "OAUTH_OPERATOR_PROVIDER_ALLOWED_NETWORKS", default_value = "", value_parser = oauth_operator::providers::egress::parse_networks)]
    provider_allowed_networks: Networks,
}

/// `--provider-allowed-networks` (a type of its own, so clap takes the list as one value).
type Networks = Vec<ipnet::IpNet>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", oauth_operator::api::crds_yaml()?);
            Ok(())
        }
        Command::Version => {
            println!("oauth-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(args) => run(*args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    // One TLS crypto provider for kube and reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let lease_duration: std::time::Duration = args.lease_duration.into();
    if args.leader_elect && lease_duration < std::time::Duration::from_secs(3) {
        anyhow::bail!("--lease-duration must be at least 3s");
    }
    let leader = args.leader_elect.then(|| LeaseConfig {
        namespace: args.operator_namespace.clone(),
        name: args.lease_name,
        identity: args
            .leader_identity
            .unwrap_or_else(oauth_operator::leader::default_identity),
        duration: lease_duration,
    });
    let config = Config {
        leader,
        concurrency: args.concurrency,
        default_request_budget: args.default_request_budget,
        provider_allowed_networks: args.provider_allowed_networks,
        operator_namespace: args.operator_namespace,
        watch_namespace: args.watch_namespace,
        resync_interval: args.resync_interval.into(),
        deletion_timeout: args.deletion_timeout.into(),
        provider_timeout: args.provider_timeout.into(),
        faults: oauth_operator::fault::parse(std::env::var("OAUTH_OPERATOR_FAULT").ok().as_deref())
            .map_err(anyhow::Error::msg)?,
    };
    let kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes configuration (in-cluster or $KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let http = tokio::spawn(telemetry::serve_http(
        listener,
        metrics.clone(),
        readiness.clone(),
    ));
    let result = controller::run(kube_config, config, metrics, readiness).await;
    http.abort();
    result
}
