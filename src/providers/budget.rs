//! The client-side request budget, per provider, shared by every application that uses the
//! provider.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::RequestBudget;
use crate::leader::Fence;
use crate::telemetry::{Metrics, ProviderLabels};

/// At most `requests` sends in any window of `period`, and exactly that many when demand is
/// there: a sliding-window log of the last `requests` send times. A request goes at once when
/// fewer than `requests` went in the last `period`, else when the oldest of them leaves the
/// window. (A token bucket, governor's GCRA, cannot do both: a bucket of the full budget
/// refilled at the full rate lets twice the budget through one window, which trips a
/// provider's own fixed-window limit; half a bucket sustains only half the rate.)
#[derive(Debug)]
struct SlidingWindow {
    requests: usize,
    period: Duration,
    /// Send times (offsets from the limiter's start), oldest first, at most `requests`.
    sent: VecDeque<Duration>,
}

impl SlidingWindow {
    fn new(requests: u32, period: Duration) -> Self {
        let requests = requests.max(1) as usize;
        Self {
            requests,
            period,
            sent: VecDeque::with_capacity(requests),
        }
    }

    /// A new budget; the sends already recorded count against it.
    fn set(&mut self, requests: u32, period: Duration) {
        self.requests = requests.max(1) as usize;
        self.period = period;
    }

    /// Admits a send at `now` (recorded), or says when one may go.
    fn try_admit(&mut self, now: Duration) -> Result<(), Duration> {
        while self.sent.front().is_some_and(|t| *t + self.period <= now) {
            self.sent.pop_front();
        }
        if self.sent.len() < self.requests {
            self.sent.push_back(now);
            Ok(())
        } else {
            Err(self.sent[0] + self.period)
        }
    }
}

/// The longest a 429 holds a provider's requests.
const MAX_PAUSE: Duration = Duration::from_secs(600);

pub struct RequestBudgetLimiter {
    window: Mutex<SlidingWindow>,
    start: Instant,
    /// Waiters take turns in arrival order (tokio's Mutex is fair), so a backlog is served
    /// first come first served and one wake-up admits one request, not a stampede.
    turn: tokio::sync::Mutex<()>,
    /// Set by a 429: no request to this provider before then, from any application.
    paused_until: Mutex<Option<Instant>>,
    provider: String,
    metrics: Arc<Metrics>,
    /// Writes to the provider pass it (leader election); `None`: always open.
    fence: Option<Arc<Fence>>,
}

impl RequestBudgetLimiter {
    pub fn new(budget: &RequestBudget, provider: String, metrics: Arc<Metrics>) -> Self {
        let period = Duration::from_secs(u64::from(budget.period_seconds.max(1)));
        Self {
            window: Mutex::new(SlidingWindow::new(budget.requests, period)),
            start: Instant::now(),
            turn: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(None),
            provider,
            metrics,
            fence: None,
        }
    }

    /// Applies a new budget (a stricter provider joined the server, or one left) to this
    /// limiter in place: what was sent in the last period and a 429 pause still count.
    pub fn set_budget(&self, budget: &RequestBudget) {
        let period = Duration::from_secs(u64::from(budget.period_seconds.max(1)));
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(budget.requests, period);
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

    /// The provider answered 429: hold every request to it for `delay` (at most 10 minutes,
    /// whatever a `Retry-After` says).
    pub fn pause(&self, delay: Duration) {
        let until = Instant::now() + delay.min(MAX_PAUSE);
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Waits until the budget allows one more request (in arrival order); records the wait.
    pub async fn acquire(&self) {
        let start = Instant::now();
        {
            let _turn = self.turn.lock().await;
            loop {
                let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(until) = paused
                    && until > Instant::now()
                {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                let admitted = self
                    .window
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .try_admit(Instant::now() - self.start);
                match admitted {
                    Ok(()) => break,
                    Err(at) => tokio::time::sleep_until(self.start + at).await,
                }
            }
        }
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
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let budget = RequestBudget {
            requests: 100,
            period_seconds: 1,
        };
        let limiter = RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()));
        limiter.pause(Duration::from_millis(300));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    /// A backlog through the real limiter (tokio's clock, paused): the whole budget at once,
    /// then exactly the budget per period, never more in any window.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_gets_exactly_the_budget_per_period() {
        let budget = RequestBudget {
            requests: 6,
            period_seconds: 1,
        };
        let limiter = Arc::new(RequestBudgetLimiter::new(
            &budget,
            "t".into(),
            Arc::new(Metrics::default()),
        ));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                limiter.acquire().await;
                start.elapsed()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        for (k, t) in times.iter().enumerate() {
            assert_eq!(
                *t,
                Duration::from_secs(k as u64 / 6),
                "request {k}: {times:?}"
            );
        }
    }

    /// A stricter budget applied in place counts what was already sent.
    #[tokio::test(start_paused = true)]
    async fn a_stricter_budget_counts_what_was_sent() {
        let budget = RequestBudget {
            requests: 10,
            period_seconds: 1,
        };
        let limiter = RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()));
        let start = Instant::now();
        for _ in 0..4 {
            limiter.acquire().await;
        }
        limiter.set_budget(&RequestBudget {
            requests: 4,
            period_seconds: 2,
        });
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// Runs arrivals (sorted offsets, ms) through the window; each request goes at its arrival
    /// or, if refused, at the time the window names, in arrival order. Returns the send times.
    fn simulate(requests: u32, period_ms: u64, arrivals: &[u64]) -> Vec<u64> {
        let mut window = SlidingWindow::new(requests, Duration::from_millis(period_ms));
        let mut sent = Vec::new();
        let mut clock = 0u64;
        for &arrival in arrivals {
            clock = clock.max(arrival);
            loop {
                match window.try_admit(Duration::from_millis(clock)) {
                    Ok(()) => break,
                    Err(at) => {
                        let at = at.as_millis() as u64;
                        assert!(at > clock, "a refusal names a later time");
                        clock = at;
                    }
                }
            }
            sent.push(clock);
        }
        sent
    }

    proptest! {
        /// Over any arrivals: never more than the budget in any window of the period; a
        /// request waits only while the window is full (so a saturated limiter sends exactly
        /// the budget per period); order is kept.
        #[test]
        fn never_over_and_never_idle_while_demand_waits(
            requests in 1u32..20,
            period_ms in 1u64..5_000,
            mut arrivals in proptest::collection::vec(0u64..20_000, 1..300),
        ) {
            arrivals.sort_unstable();
            let sent = simulate(requests, period_ms, &arrivals);
            let n = requests as usize;
            for i in n..sent.len() {
                // The (i-n)th and ith send are at least a period apart: at most n per window.
                prop_assert!(sent[i] - sent[i - n] >= period_ms, "window over budget at {}", i);
            }
            for i in 0..sent.len() {
                prop_assert!(sent[i] >= arrivals[i]);
                if i > 0 { prop_assert!(sent[i] >= sent[i - 1]); }
                if sent[i] > arrivals[i].max(if i > 0 { sent[i - 1] } else { 0 }) {
                    // It waited: the window was full, and it went the moment one left.
                    prop_assert!(i >= n && sent[i] == sent[i - n] + period_ms);
                }
            }
        }
    }
}
