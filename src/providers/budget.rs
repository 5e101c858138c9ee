//! The client-side request budget: a token bucket per provider, shared by every application
//! that uses the provider.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::api::RequestBudget;
use crate::telemetry::{Metrics, ProviderLabels};

/// At most `requests` per `period_seconds`, with bursts of at most `requests`.
pub struct RequestBudgetLimiter {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    provider: String,
    metrics: Arc<Metrics>,
}

impl RequestBudgetLimiter {
    pub fn new(budget: &RequestBudget, provider: String, metrics: Arc<Metrics>) -> Self {
        let requests = NonZeroU32::new(budget.requests).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs(u64::from(budget.period_seconds.max(1)));
        // Quota::new fails only for a zero period, excluded above.
        let quota = Quota::with_period(period / requests.get())
            .unwrap_or_else(|| Quota::per_second(requests))
            .allow_burst(requests);
        Self {
            limiter: RateLimiter::direct(quota),
            provider,
            metrics,
        }
    }

    /// Waits until the budget allows one more request; records the wait.
    pub async fn acquire(&self) {
        let start = Instant::now();
        self.limiter.until_ready().await;
        let waited = start.elapsed();
        self.metrics
            .rate_limit_wait_seconds
            .get_or_create(&ProviderLabels {
                provider: self.provider.clone(),
            })
            .observe(waited.as_secs_f64());
        if waited > Duration::from_millis(100) {
            tracing::debug!(provider = %self.provider, waited_ms = waited.as_millis() as u64, "request budget delayed a provider call");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_spaces_requests_after_the_burst() {
        let budget = RequestBudget {
            requests: 5,
            period_seconds: 1,
        };
        let limiter = RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()));
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "a burst of 5 passes at once"
        );
        for _ in 0..3 {
            limiter.acquire().await;
        }
        // 3 more at 5/s need about 600 ms.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }
}
