//! Test controls: request counters and log, fault injection, rate limiting, delays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Route templates, exactly as the specs' path keys: Backend API templates are relative to
/// `/v1` (as in `bapi-2026-05-12.yml`), Frontend API templates are the absolute paths of
/// `fapi-2026-05-12.yml`.
pub mod routes {
    /// Backend API: `GET` (list) and `POST` (create).
    pub const OAUTH_APPLICATIONS: &str = "/oauth_applications";
    /// Backend API: `GET`, `PATCH`, `DELETE`.
    pub const OAUTH_APPLICATION: &str = "/oauth_applications/{oauth_application_id}";
    /// Backend API: `POST`.
    pub const ROTATE_SECRET: &str = "/oauth_applications/{oauth_application_id}/rotate_secret";
    /// Frontend API authorization endpoint: `GET` and `POST`.
    pub const OAUTH_AUTHORIZE: &str = "/oauth/authorize";
    /// Frontend API token endpoint: `POST`.
    pub const OAUTH_TOKEN: &str = "/oauth/token";
    /// Frontend API userinfo endpoint: `GET` and `POST`.
    pub const OAUTH_USERINFO: &str = "/oauth/userinfo";
    /// Frontend API token introspection (`token_introspection_url`): `POST`.
    pub const OAUTH_TOKEN_INFO: &str = "/oauth/token_info";
    /// Frontend API token revocation: `POST`.
    pub const OAUTH_TOKEN_REVOKE: &str = "/oauth/token/revoke";
    /// Frontend API OpenID Connect discovery document: `GET`.
    pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
    /// Frontend API JSON Web Key Set (the id_token signing key): `GET`.
    pub const JWKS: &str = "/.well-known/jwks.json";
    /// Every emulated Backend API route.
    pub const BACKEND_API: [&str; 3] = [OAUTH_APPLICATIONS, OAUTH_APPLICATION, ROTATE_SECRET];
    /// Every emulated Frontend API route.
    pub const FRONTEND_API: [&str; 7] = [
        OAUTH_AUTHORIZE,
        OAUTH_TOKEN,
        OAUTH_USERINFO,
        OAUTH_TOKEN_INFO,
        OAUTH_TOKEN_REVOKE,
        OPENID_CONFIGURATION,
        JWKS,
    ];
    /// Every emulated route.
    pub const ALL: [&str; 10] = [
        OAUTH_APPLICATIONS,
        OAUTH_APPLICATION,
        ROTATE_SECRET,
        OAUTH_AUTHORIZE,
        OAUTH_TOKEN,
        OAUTH_USERINFO,
        OAUTH_TOKEN_INFO,
        OAUTH_TOKEN_REVOKE,
        OPENID_CONFIGURATION,
        JWKS,
    ];
}

/// Query parameters whose values never reach the request log.
const SENSITIVE_PARAMS: [&str; 8] = [
    "code",
    "code_verifier",
    "client_secret",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "password",
];

/// The query with the values of credential-carrying parameters replaced by `REDACTED`; other
/// parameters stay byte for byte.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let key = url::form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if SENSITIVE_PARAMS.contains(&key.as_str()) {
                format!("{raw_key}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One Backend or Frontend API request the emulator received (admin requests under
/// `/__emulator/` are not logged). Credentials never appear: the query's `code`,
/// `client_secret`, `access_token`, ... values are `REDACTED`, and bodies and headers are not
/// recorded.
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
    /// The query string, without `?`, with credential values `REDACTED`.
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
            query: query.map(redact_query),
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

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(
            redact_query("code=abc&state=xyz12345&client_secret=s3cr3t"),
            "code=REDACTED&state=xyz12345&client_secret=REDACTED"
        );
        assert_eq!(
            redact_query("limit=5&name_query=a%20b"),
            "limit=5&name_query=a%20b"
        );
        assert_eq!(redact_query("access%5Ftoken=t"), "access%5Ftoken=REDACTED");
        let mut c = Control::default();
        c.record_arrival("GET", "/oauth/userinfo", None, Some("access_token=tok&x=1"));
        assert_eq!(c.log[0].query.as_deref(), Some("access_token=REDACTED&x=1"));
    }
}
