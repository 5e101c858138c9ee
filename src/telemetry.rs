//! Logging, metrics, and the `/metrics`, `/healthz`, `/readyz` HTTP endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn"));
    use std::io::IsTerminal as _;
    // Colour only on a terminal (and never when NO_COLOR is set): a file or a pipe gets plain
    // text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub backend: &'static str,
    pub operation: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub backend: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

/// Every metric the operator exports. Labels never carry secret values.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub provider_requests: Family<RequestLabels, Counter>,
    pub provider_request_duration: Family<OperationLabels, Histogram>,
    pub rate_limit_wait_seconds: Family<ProviderLabels, Histogram>,
    /// The delay before an application's next attempt after a failed pass: its own
    /// exponential backoff (1 s, 2 s, 4 s ... 5 min, jittered), a provider's `Retry-After`, or
    /// the resync interval for a permanent error.
    pub retry_delay_seconds: Histogram,
    /// Notable lifecycle events: secret rotations, recoveries, adoptions, drift.
    pub lifecycle: Family<EventLabels, Counter>,
    /// 1 while this replica holds the leader lease (or runs without leader election).
    pub leader: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("oauth_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let provider_requests = Family::<RequestLabels, Counter>::default();
        let provider_request_duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let rate_limit_wait_seconds = Family::<ProviderLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let lifecycle = Family::<EventLabels, Counter>::default();
        let retry_delay_seconds = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and reconciles",
            leader.clone(),
        );
        registry.register(
            "reconciles",
            "Reconcile passes by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by kind and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        registry.register(
            "provider_requests",
            "Requests to authorization servers by backend, operation and HTTP status",
            provider_requests.clone(),
        );
        registry.register(
            "provider_request_duration_seconds",
            "Latency of requests to authorization servers",
            provider_request_duration.clone(),
        );
        registry.register(
            "rate_limit_wait_seconds",
            "Time spent waiting for a provider's client-side request budget",
            rate_limit_wait_seconds.clone(),
        );
        registry.register(
            "retry_delay_seconds",
            "Delay before an application is retried after a failed pass (per-object backoff)",
            retry_delay_seconds.clone(),
        );
        registry.register(
            "lifecycle_events",
            "Secret rotations, recoveries, adoptions and drift corrections",
            lifecycle.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            provider_requests,
            provider_request_duration,
            rate_limit_wait_seconds,
            retry_delay_seconds,
            lifecycle,
            leader,
        }
    }
}

impl Metrics {
    pub fn lifecycle_event(&self, event: &'static str) {
        self.lifecycle.get_or_create(&EventLabels { event }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Readiness: set once the controllers' caches are synced.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(HttpState { metrics, readiness });
    axum::serve(listener, app).await
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn readyz_handler(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}
