//! The client-side request budget: a token bucket per provider, shared by every application
//! that uses the provider.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::api::RequestBudget;
use crate::leader::Fence;
use crate::telemetry::{Metrics, ProviderLabels};

/// At most `requests` in any window of `period_seconds`: a token bucket holding half of the
/// budget, refilled with the other half per period. (A bucket of the full budget refilled at
/// the full rate would allow twice the budget in one window, enough to trip the provider's own
/// fixed-window limit.)
pub struct RequestBudgetLimiter {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    /// Set by a 429: no request to this provider before then, from any application.
    paused_until: std::sync::Mutex<Option<Instant>>,
    provider: String,
    metrics: Arc<Metrics>,
    /// Writes to the provider pass it (leader election); `None`: always open.
    fence: Option<Arc<Fence>>,
}

impl RequestBudgetLimiter {
    pub fn new(budget: &RequestBudget, provider: String, metrics: Arc<Metrics>) -> Self {
        let requests = budget.requests.max(1);
        let burst = NonZeroU32::new(requests / 2).unwrap_or(NonZeroU32::MIN);
        let refill = (requests - burst.get()).max(1);
        let period = Duration::from_secs(u64::from(budget.period_seconds.max(1)));
        // with_period fails only for a zero interval, excluded above.
        let quota = Quota::with_period(period / refill)
            .unwrap_or_else(|| Quota::per_second(burst))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            paused_until: std::sync::Mutex::new(None),
            provider,
            metrics,
            fence: None,
        }
    }

    /// Every write (a request that is not GET or HEAD) sent within this budget must first
    /// pass `fence`: only the holder of the leader lease changes the provider.
    pub fn fenced(mut self, fence: Arc<Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    /// `Err` with the reason when this replica may not send a write now (it is not, or may
    /// no longer be, the leader). Checked after the budget wait, just before sending.
    pub fn admit_write(&self) -> Result<(), String> {
        self.fence.as_ref().map_or(Ok(()), |f| f.check())
    }

    /// The provider answered 429: hold every request to it for `delay`.
    pub fn pause(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Waits until the budget allows one more request; records the wait.
    pub async fn acquire(&self) {
        let start = Instant::now();
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = paused {
            tokio::time::sleep_until(until.into()).await;
        }
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
    async fn a_pause_holds_every_request() {
        let budget = RequestBudget {
            requests: 100,
            period_seconds: 1,
        };
        let limiter = RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()));
        limiter.pause(Duration::from_millis(300));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(290));
    }

    #[tokio::test]
    async fn never_more_than_the_budget_in_any_window() {
        let budget = RequestBudget {
            requests: 6,
            period_seconds: 1,
        };
        let limiter = RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()));
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..12 {
            limiter.acquire().await;
            times.push(start.elapsed());
        }
        // A burst of 3 passes at once, then 3 per second.
        assert!(times[2] < Duration::from_millis(100), "{times:?}");
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 6,
                "{in_window} requests within 1 s from {t:?}: {times:?}"
            );
        }
        assert!(times[11] >= Duration::from_millis(2900), "{times:?}");
    }
}
