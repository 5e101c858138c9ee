//! Test controls: request counters and log, fault injection, rate limiting, delays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Route templates, exactly as the spec's path keys (relative to `/v1`).
pub mod routes {
    /// `GET` (list) and `POST` (create).
    pub const OAUTH_APPLICATIONS: &str = "/oauth_applications";
    /// `GET`, `PATCH`, `DELETE`.
    pub const OAUTH_APPLICATION: &str = "/oauth_applications/{oauth_application_id}";
    /// `POST`.
    pub const ROTATE_SECRET: &str = "/oauth_applications/{oauth_application_id}/rotate_secret";
    /// Every emulated route.
    pub const ALL: [&str; 3] = [OAUTH_APPLICATIONS, OAUTH_APPLICATION, ROTATE_SECRET];
}

/// One API request the emulator received (admin requests under `/__emulator/` are not logged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Arrival order, from 0 (not reset by [`crate::EmulatorHandle::reset_requests`]).
    pub seq: u64,
    /// Upper case, e.g. `GET`.
    pub method: String,
    /// The full path, e.g. `/v1/oauth_applications/oa_123`.
    pub path: String,
    /// The route template (see [`routes`]) or `None` for a path the emulator does not serve.
    pub route: Option<String>,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// The answered status; `None` while in flight or when the connection was dropped.
    pub status: Option<u16>,
}

/// Requests seen per `(method, route)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCount {
    pub method: String,
    /// Route template, or the raw path for unknown routes.
    pub route: String,
    pub count: u64,
}

/// What a matching fault does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FaultAction {
    /// Answer `status` with a Clerk error body (default code/message per status unless given).
    Status {
        status: u16,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        /// `Retry-After` seconds (defaults to 1 for 429).
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Sleep, then handle the request normally.
    Delay { millis: u64 },
    /// Handle the request (its effect is committed), then sleep before answering: a client
    /// that times out meanwhile never learns the outcome, as with a slow real server.
    CommitThenDelay { millis: u64 },
    /// Close the TCP connection without answering.
    Drop,
}

/// "Apply `action` to the next `times` requests matching `method` and `route`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Upper case HTTP method; `None` matches any.
    #[serde(default)]
    pub method: Option<String>,
    /// Route template (see [`routes`]); `None` matches any.
    #[serde(default)]
    pub route: Option<String>,
    pub times: u32,
    pub action: FaultAction,
}

impl Fault {
    fn matches(&self, method: &str, route: Option<&str>) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.route.as_deref().is_none_or(|r| Some(r) == route)
    }
}

/// A fixed-window rate limit: `requests` per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u32,
    /// JSON: `window_ms`.
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Control {
    next_seq: u64,
    pub log: Vec<RequestRecord>,
    pub counts: BTreeMap<(String, String), u64>,
    pub total: u64,
    pub faults: Vec<Fault>,
    pub delay: Option<Duration>,
    pub rate_limit: Option<RateLimit>,
    window: Option<(Instant, u32)>,
}

impl Control {
    pub fn record_arrival(
        &mut self,
        method: &str,
        path: &str,
        route: Option<&str>,
        query: Option<&str>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.total += 1;
        let key = (method.to_owned(), route.unwrap_or(path).to_owned());
        *self.counts.entry(key).or_default() += 1;
        self.log.push(RequestRecord {
            seq,
            method: method.to_owned(),
            path: path.to_owned(),
            route: route.map(str::to_owned),
            query: query.map(str::to_owned),
            timestamp: Utc::now(),
            status: None,
        });
        seq
    }

    pub fn record_status(&mut self, seq: u64, status: u16) {
        if let Some(r) = self.log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status);
        }
    }

    /// Consumes one use of the first fault matching the request.
    pub fn take_fault(&mut self, method: &str, route: Option<&str>) -> Option<FaultAction> {
        let idx = self.faults.iter().position(|f| {
            f.times > 0
                && f.matches(method, route)
                && !matches!(f.action, FaultAction::CommitThenDelay { .. })
        })?;
        let fault = &mut self.faults[idx];
        fault.times -= 1;
        let action = fault.action.clone();
        if fault.times == 0 {
            self.faults.remove(idx);
        }
        Some(action)
    }

    /// Consumes one use of the first matching `CommitThenDelay` fault: its delay.
    pub fn take_post_delay(&mut self, method: &str, route: Option<&str>) -> Option<Duration> {
        let idx = self.faults.iter().position(|f| {
            f.times > 0
                && f.matches(method, route)
                && matches!(f.action, FaultAction::CommitThenDelay { .. })
        })?;
        let fault = &mut self.faults[idx];
        fault.times -= 1;
        let FaultAction::CommitThenDelay { millis } = fault.action else {
            return None;
        };
        if fault.times == 0 {
            self.faults.remove(idx);
        }
        Some(Duration::from_millis(millis))
    }

    /// `Err(retry_after_secs)` when the request exceeds the rate limit.
    pub fn check_rate_limit(&mut self, now: Instant) -> Result<(), u64> {
        let Some(limit) = self.rate_limit else {
            return Ok(());
        };
        let (start, used) = match self.window {
            Some((start, used)) if now.duration_since(start) < limit.window => (start, used),
            _ => (now, 0),
        };
        if used >= limit.requests {
            self.window = Some((start, used));
            let left = limit.window.saturating_sub(now.duration_since(start));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        self.window = Some((start, used + 1));
        Ok(())
    }

    pub fn set_rate_limit(&mut self, limit: Option<RateLimit>) {
        self.rate_limit = limit;
        self.window = None;
    }

    pub fn reset_requests(&mut self) {
        self.log.clear();
        self.counts.clear();
        self.total = 0;
    }

    pub fn counts(&self) -> Vec<RouteCount> {
        self.counts
            .iter()
            .map(|((method, route), count)| RouteCount {
                method: method.clone(),
                route: route.clone(),
                count: *count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_fixed_window() {
        let mut c = Control::default();
        c.set_rate_limit(Some(RateLimit {
            requests: 2,
            window: Duration::from_secs(10),
        }));
        let t0 = Instant::now();
        assert_eq!(c.check_rate_limit(t0), Ok(()));
        assert_eq!(c.check_rate_limit(t0), Ok(()));
        assert_eq!(c.check_rate_limit(t0 + Duration::from_millis(1500)), Err(9));
        assert_eq!(c.check_rate_limit(t0 + Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn faults_match_and_expire() {
        let mut c = Control::default();
        c.faults.push(Fault {
            method: Some("get".into()),
            route: Some(routes::OAUTH_APPLICATION.into()),
            times: 2,
            action: FaultAction::Drop,
        });
        assert_eq!(c.take_fault("POST", Some(routes::OAUTH_APPLICATION)), None);
        assert_eq!(c.take_fault("GET", Some(routes::OAUTH_APPLICATIONS)), None);
        assert_eq!(
            c.take_fault("GET", Some(routes::OAUTH_APPLICATION)),
            Some(FaultAction::Drop)
        );
        assert_eq!(
            c.take_fault("GET", Some(routes::OAUTH_APPLICATION)),
            Some(FaultAction::Drop)
        );
        assert_eq!(c.take_fault("GET", Some(routes::OAUTH_APPLICATION)), None);
        assert!(c.faults.is_empty());
    }
}
