//! The client-side request budget, per provider, shared by every application that uses the
//! provider.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::RequestBudget;
use crate::leader::Fence;
use crate::telemetry::{Metrics, ProviderLabels};

/// At most `requests` requests in any window of `period` *as the provider sees them*, and
/// that many when demand is there: a request holds its slot from admission until `period`
/// after its answer came (or failed). The provider saw it somewhere in between, so however
/// late a send leaves (a busy runtime) or however long it takes, no window at the provider
/// holds more than `requests`. A request goes at once when a slot is free, else when the
/// oldest finished one leaves the window or an in-flight one finishes. (A token bucket,
/// governor's GCRA, cannot do this: a bucket of the full budget refilled at the full rate lets
/// twice the budget through one window; half a bucket sustains only half the rate.)
#[derive(Debug)]
struct SlidingWindow {
    requests: usize,
    period: Duration,
    /// When each finished request finished (offsets from the limiter's start), oldest first.
    finished: VecDeque<Duration>,
    in_flight: usize,
}

impl SlidingWindow {
    fn new(requests: u32, period: Duration) -> Self {
        let requests = requests.max(1) as usize;
        Self {
            requests,
            period,
            finished: VecDeque::with_capacity(requests),
            in_flight: 0,
        }
    }

    /// A new budget; what is in flight or finished within the period counts against it.
    fn set(&mut self, requests: u32, period: Duration) {
        self.requests = requests.max(1) as usize;
        self.period = period;
    }

    /// Admits a request at `now` (in flight until [`Self::finish`]), or says when a slot may
    /// free up: `Some(time)`, or `None` when only an in-flight request can free one.
    fn try_admit(&mut self, now: Duration) -> Result<(), Option<Duration>> {
        while self
            .finished
            .front()
            .is_some_and(|t| *t + self.period <= now)
        {
            self.finished.pop_front();
        }
        if self.finished.len() + self.in_flight < self.requests {
            self.in_flight += 1;
            Ok(())
        } else {
            Err(self.finished.front().map(|t| *t + self.period))
        }
    }

    /// An admitted request finished at `now`.
    fn finish(&mut self, now: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.finished.push_back(now);
    }
}

/// A slot of the budget, held while the request is sent and answered; dropping it (on every
/// path, a cancelled future included) starts the slot's `period`.
#[must_use = "hold the permit until the answer has arrived"]
pub struct BudgetPermit<'a> {
    limiter: &'a RequestBudgetLimiter,
}

impl Drop for BudgetPermit<'_> {
    fn drop(&mut self) {
        let now = Instant::now() - self.limiter.start;
        self.limiter
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(now);
        self.limiter.released.notify_one();
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
    /// A permit was dropped: the waiter at the head may find a slot.
    released: tokio::sync::Notify,
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
            released: tokio::sync::Notify::new(),
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
        // A larger budget may free a slot now.
        self.released.notify_one();
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
    /// Hold the permit until the answer has been read.
    pub async fn acquire(&self) -> BudgetPermit<'_> {
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
                    // A released permit wakes us early (Notify keeps one wake-up, so a
                    // release between the check and this wait is not lost).
                    Err(Some(at)) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(self.start + at) => {}
                            _ = self.released.notified() => {}
                        }
                    }
                    Err(None) => self.released.notified().await,
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
        BudgetPermit { limiter: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limiter(requests: u32, period_seconds: u32) -> RequestBudgetLimiter {
        let budget = RequestBudget {
            requests,
            period_seconds,
        };
        RequestBudgetLimiter::new(&budget, "t".into(), Arc::new(Metrics::default()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let limiter = limiter(100, 1);
        limiter.pause(Duration::from_millis(300));
        let start = Instant::now();
        drop(limiter.acquire().await);
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    /// A backlog of instant requests through the real limiter (tokio's clock, paused): the
    /// whole budget at once, then exactly the budget per period.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_gets_exactly_the_budget_per_period() {
        let limiter = Arc::new(limiter(6, 1));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                drop(limiter.acquire().await);
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

    /// A slow answer keeps its slot: the period starts when the answer came.
    #[tokio::test(start_paused = true)]
    async fn a_slot_is_held_until_the_answer_and_a_period_after() {
        let limiter = limiter(1, 1);
        let start = Instant::now();
        let permit = limiter.acquire().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(permit);
        drop(limiter.acquire().await);
        assert_eq!(start.elapsed(), Duration::from_millis(1700));
    }

    /// A stricter budget applied in place counts what was already sent.
    #[tokio::test(start_paused = true)]
    async fn a_stricter_budget_counts_what_was_sent() {
        let limiter = limiter(10, 1);
        let start = Instant::now();
        for _ in 0..4 {
            drop(limiter.acquire().await);
        }
        limiter.set_budget(&RequestBudget {
            requests: 4,
            period_seconds: 2,
        });
        drop(limiter.acquire().await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// Requests `(arrival, duration)` in ms through the real limiter on a paused clock:
    /// `(arrival, admitted, finished)` of each.
    fn run(requests: u32, period_seconds: u32, jobs: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let limiter = Arc::new(limiter(requests, period_seconds));
            let start = Instant::now();
            let ms = |d: Duration| d.as_millis() as u64;
            let tasks: Vec<_> = jobs
                .iter()
                .map(|&(arrival, duration)| {
                    let limiter = limiter.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(arrival)).await;
                        let permit = limiter.acquire().await;
                        let admitted = ms(start.elapsed());
                        tokio::time::sleep(Duration::from_millis(duration)).await;
                        drop(permit);
                        (arrival, admitted, ms(start.elapsed()))
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    }

    proptest! {
        /// Over any arrivals and answer times: at every admission, at most the budget is in
        /// flight or finished within the last period (so the provider, which sees each
        /// request between its admission and its answer, never sees more in one window); a
        /// request waits only until a slot frees (an answer, or a finished one leaving the
        /// window), so a saturated limiter uses the whole budget; arrival order is kept.
        #[test]
        fn never_over_budget_at_the_provider_and_never_idle_while_demand_waits(
            requests in 1u32..8,
            period_seconds in 1u32..4,
            jobs in proptest::collection::vec((0u64..8_000, 0u64..1_500), 1..60),
        ) {
            let period = u64::from(period_seconds) * 1000;
            let done = run(requests, period_seconds, &jobs);
            for &(_, t, _) in &done {
                let occupying = done
                    .iter()
                    .filter(|&&(_, admitted, finished)| admitted <= t && finished + period > t)
                    .count();
                prop_assert!(occupying <= requests as usize, "{} slots used at {}", occupying, t);
            }
            for &(arrival, admitted, _) in &done {
                prop_assert!(admitted >= arrival);
                if admitted > arrival {
                    let freed = done
                        .iter()
                        .any(|&(_, _, finished)| finished == admitted || finished + period == admitted);
                    prop_assert!(freed, "waited until {} with no slot freed then", admitted);
                }
            }
            for a in &done {
                for b in &done {
                    if a.0 < b.0 {
                        prop_assert!(a.1 <= b.1, "admitted out of arrival order");
                    }
                }
            }
        }
    }
}
