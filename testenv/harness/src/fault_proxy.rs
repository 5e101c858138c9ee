//! A fault-injecting HTTP proxy on loopback, put in front of a real server (Hydra's admin
//! API, Keycloak...) to see what the operator does when the network and the server misbehave.
//!
//! Each request draws its fate from a seeded RNG under the current [`Faults`]:
//! - `error`: answered 500, 502 or 503 without being forwarded (nothing happened upstream);
//! - `error_after`: forwarded (the change was made), then answered 500 in its place;
//! - `reset`: the connection is closed without an answer, before or after forwarding;
//! - `cut`: forwarded, then the answer is cut mid-body (its `Content-Length` promised more);
//! - `stall`: forwarded, the answer held for [`Faults::stall`] (past the caller's timeout);
//! - a throttle window ([`FaultProxy::throttle`]): every request answered 429 with
//!   `Retry-After`, not forwarded;
//! - and `latency` added before each forward.
//!
//! Every request is logged with when it arrived and what was done, so a test can count the
//! load the server saw (a request budget is checked *at the proxy*) and the faults injected.
//! Binds 127.0.0.1 only; it stops when the [`FaultProxy`] is dropped.

use std::convert::Infallible;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Fault probabilities (each 0.0..=1.0, drawn in this order) and delays.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub error: f64,
    pub error_after: f64,
    pub reset: f64,
    pub cut: f64,
    pub stall: f64,
    /// How long a stalled answer is held.
    pub stall_for: Duration,
    /// Added before each forwarded request, uniformly in this range (milliseconds).
    pub latency_ms: Option<RangeInclusive<u64>>,
}

impl Faults {
    /// No faults: every request forwarded and answered as the server answered.
    pub fn none() -> Self {
        Self::default()
    }
}

/// What the proxy did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Forwarded; the server's answer passed through.
    Forwarded,
    /// A 5xx without forwarding.
    Error,
    /// Forwarded, then answered 500.
    ErrorAfter,
    /// Connection closed before forwarding.
    ResetBefore,
    /// Forwarded, then the connection closed without an answer.
    ResetAfter,
    /// Forwarded; the answer cut mid-body.
    Cut,
    /// Forwarded; the answer held past the caller's timeout.
    Stalled,
    /// 429 with `Retry-After` (a throttle window).
    Throttled,
    /// The upstream could not be reached (502): not a fault the proxy chose.
    UpstreamFailed,
}

impl Outcome {
    /// Whether the request reached the upstream server.
    pub fn forwarded(self) -> bool {
        matches!(
            self,
            Self::Forwarded | Self::ErrorAfter | Self::ResetAfter | Self::Cut | Self::Stalled
        )
    }
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its place in arrival order (0, 1, 2...).
    pub seq: usize,
    /// When it arrived (offset from the proxy's start).
    pub at: Duration,
    /// When the proxy answered it (or closed the connection): offset from the start.
    pub answered: Option<Duration>,
    pub method: String,
    pub path: String,
    pub outcome: Outcome,
    /// The upstream's status, when forwarded and answered.
    pub upstream_status: Option<u16>,
}

struct Throttle {
    until: Instant,
    retry_after_secs: u64,
}

/// A fault forced on the next requests that match.
struct Forced {
    method: String,
    path_prefix: String,
    outcome: Outcome,
    times: usize,
    /// How long a forced stall holds (else [`Faults::stall_for`]).
    hold: Option<Duration>,
}

struct Shared {
    upstream: String,
    forced: Mutex<Vec<Forced>>,
    start: Instant,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    throttle: Mutex<Option<Throttle>>,
    rng: Mutex<StdRng>,
    log: Mutex<Vec<Record>>,
}

/// The proxy; dropping it stops it.
pub struct FaultProxy {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream` (e.g. `http://127.0.0.1:4445`),
    /// with no faults; `seed` makes the draws repeatable.
    pub async fn start(upstream: &str, seed: u64) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            start: Instant::now(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()?,
            faults: Mutex::new(Faults::none()),
            forced: Mutex::new(Vec::new()),
            throttle: Mutex::new(None),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            log: Mutex::new(Vec::new()),
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = accept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { handle(shared, req).await }
                    });
                    // An error here is a connection the proxy (or the caller) cut.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { url, shared, task })
    }

    /// The proxy's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the fault probabilities (a throttle window is kept).
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Answers every request with 429 and `Retry-After: retry_after_secs` for `window`.
    pub fn throttle(&self, window: Duration, retry_after_secs: u64) {
        *lock(&self.shared.throttle) = Some(Throttle {
            until: Instant::now() + window,
            retry_after_secs,
        });
    }

    /// The next `times` requests with this method whose path starts with `path_prefix` get
    /// `outcome` (a fault kind; [`Outcome::Forwarded`] lets them through untouched), ahead of
    /// the random draw: a test makes sure each kind of fault lands where it hurts (a create
    /// committed whose answer is lost...). A stall holds for the current [`Faults::stall_for`].
    pub fn force(&self, outcome: Outcome, method: &str, path_prefix: &str, times: usize) {
        lock(&self.shared.forced).push(Forced {
            method: method.to_string(),
            path_prefix: path_prefix.to_string(),
            outcome,
            times,
            hold: None,
        });
    }

    /// The next `times` matching requests are forwarded, then their answers held for `hold`:
    /// carried out at the server, answered late (or, past the caller's timeout, never).
    pub fn force_stall(&self, method: &str, path_prefix: &str, times: usize, hold: Duration) {
        lock(&self.shared.forced).push(Forced {
            method: method.to_string(),
            path_prefix: path_prefix.to_string(),
            outcome: Outcome::Stalled,
            times,
            hold: Some(hold),
        });
    }

    /// Forced faults not yet used up: (outcome, method, path prefix, times left).
    pub fn forced_left(&self) -> Vec<(Outcome, String, String, usize)> {
        lock(&self.shared.forced)
            .iter()
            .filter(|f| f.times > 0)
            .map(|f| (f.outcome, f.method.clone(), f.path_prefix.clone(), f.times))
            .collect()
    }

    /// No faults, forced or drawn, and no throttle from now on.
    pub fn heal(&self) {
        self.set_faults(Faults::none());
        lock(&self.shared.forced).clear();
        *lock(&self.shared.throttle) = None;
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<Record> {
        lock(&self.shared.log).clone()
    }

    /// Now, as an offset from the proxy's start (the clock of [`Record::at`]).
    pub fn now(&self) -> Duration {
        self.shared.start.elapsed()
    }
}

/// The most requests that arrived within any window of `period` (a sliding window over
/// arrival times): what a request budget of the server's would have counted.
pub fn max_in_window(log: &[Record], period: Duration) -> usize {
    let mut at: Vec<Duration> = log.iter().map(|r| r.at).collect();
    at.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= period {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset")
}

enum Fate {
    Forward,
    Error(StatusCode),
    ErrorAfter,
    ResetBefore,
    ResetAfter,
    Cut,
    Stall(Duration),
    Throttle(u64),
}

fn draw(shared: &Shared, method: &str, path: &str) -> (Fate, Duration) {
    if let Some(t) = lock(&shared.throttle).as_ref()
        && Instant::now() < t.until
    {
        return (Fate::Throttle(t.retry_after_secs), Duration::ZERO);
    }
    let faults = lock(&shared.faults).clone();
    let mut rng = lock(&shared.rng);
    let latency = faults.latency_ms.clone().map_or(Duration::ZERO, |r| {
        Duration::from_millis(rng.random_range(r))
    });
    let forced = lock(&shared.forced)
        .iter_mut()
        .find(|f| f.times > 0 && f.method == method && path.starts_with(&f.path_prefix))
        .map(|f| {
            f.times -= 1;
            (f.outcome, f.hold)
        });
    if let Some((outcome, hold)) = forced {
        let fate = match outcome {
            Outcome::Error => Fate::Error(StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::ErrorAfter => Fate::ErrorAfter,
            Outcome::ResetBefore => Fate::ResetBefore,
            Outcome::ResetAfter => Fate::ResetAfter,
            Outcome::Cut => Fate::Cut,
            Outcome::Stalled => Fate::Stall(hold.unwrap_or(faults.stall_for)),
            Outcome::Throttled => Fate::Throttle(1),
            Outcome::Forwarded | Outcome::UpstreamFailed => Fate::Forward,
        };
        return (fate, latency);
    }
    let mut p = || rng.random::<f64>();
    let fate = if p() < faults.error {
        const STATUSES: [StatusCode; 3] = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ];
        Fate::Error(STATUSES[(p() * 3.0) as usize % 3])
    } else if p() < faults.error_after {
        Fate::ErrorAfter
    } else if p() < faults.reset {
        if p() < 0.5 {
            Fate::ResetBefore
        } else {
            Fate::ResetAfter
        }
    } else if p() < faults.cut {
        Fate::Cut
    } else if p() < faults.stall {
        Fate::Stall(faults.stall_for)
    } else {
        Fate::Forward
    };
    (fate, latency)
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let at = shared.start.elapsed();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    let (fate, latency) = draw(&shared, &method, &path);
    let index = {
        let mut log = lock(&shared.log);
        let seq = log.len();
        log.push(Record {
            seq,
            at,
            answered: None,
            method: method.clone(),
            path: path.clone(),
            outcome: Outcome::Forwarded,
            upstream_status: None,
        });
        log.len() - 1
    };
    let finish = |outcome: Outcome, upstream_status: Option<u16>| {
        let mut log = lock(&shared.log);
        let record = &mut log[index];
        record.outcome = outcome;
        record.upstream_status = upstream_status;
        record.answered = Some(shared.start.elapsed());
    };
    match fate {
        Fate::Throttle(secs) => {
            finish(Outcome::Throttled, None);
            let mut response = full(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":"too_many_requests","error_description":"Injected rate limit."}"#,
            );
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, secs.into());
            return Ok(response);
        }
        Fate::Error(status) => {
            finish(Outcome::Error, None);
            return Ok(full(
                status,
                r#"{"error":"server_error","error_description":"Injected fault."}"#,
            ));
        }
        Fate::ResetBefore => {
            finish(Outcome::ResetBefore, None);
            return Err(reset());
        }
        _ => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Carried on by its own task: the caller hanging up does not stop the forward (a server
    // does not notice a client that gave up either).
    let forward = {
        let shared = shared.clone();
        let url = format!("{}{path}", shared.upstream);
        let mut request = shared.client.request(parts.method.clone(), url).body(body);
        for (name, value) in &parts.headers {
            if name != hyper::header::HOST
                && name != hyper::header::CONTENT_LENGTH
                && name != hyper::header::CONNECTION
            {
                request = request.header(name, value);
            }
        }
        tokio::spawn(async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        })
    };
    let (status, headers, bytes) = match forward.await {
        Ok(Ok(answer)) => answer,
        _ => {
            finish(Outcome::UpstreamFailed, None);
            return Ok(full(StatusCode::BAD_GATEWAY, "{}"));
        }
    };
    match fate {
        Fate::ErrorAfter => {
            finish(Outcome::ErrorAfter, Some(status));
            Ok(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"server_error","error_description":"Injected fault after the request was carried out."}"#,
            ))
        }
        Fate::ResetAfter => {
            finish(Outcome::ResetAfter, Some(status));
            Err(reset())
        }
        Fate::Cut => {
            finish(Outcome::Cut, Some(status));
            let half = bytes.slice(..bytes.len() / 2);
            // The head and the first half go out; a moment later the connection drops.
            let frames = futures_util::stream::iter([Ok(Frame::data(half))]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(reset())
                }),
            );
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, bytes.len().into());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "application/json".parse().unwrap(),
            );
            Ok(response)
        }
        _ => {
            if let Fate::Stall(d) = fate {
                // Logged first: the caller gives up meanwhile, which drops this future.
                finish(Outcome::Stalled, Some(status));
                tokio::time::sleep(d).await;
            } else {
                finish(Outcome::Forwarded, Some(status));
            }
            let mut response = Response::new(
                Full::new(bytes)
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            );
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            for (name, value) in &headers {
                if name != hyper::header::CONTENT_LENGTH
                    && name != hyper::header::TRANSFER_ENCODING
                    && name != hyper::header::CONNECTION
                {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            Ok(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: &[u64]) -> Vec<Record> {
        ms.iter()
            .enumerate()
            .map(|(seq, ms)| Record {
                seq,
                at: Duration::from_millis(*ms),
                answered: None,
                method: "GET".into(),
                path: "/".into(),
                outcome: Outcome::Forwarded,
                upstream_status: None,
            })
            .collect()
    }

    #[test]
    fn the_sliding_window_counts_the_busiest_period() {
        let log = at(&[0, 100, 900, 1000, 1100, 1950, 3000]);
        // [100, 1100) holds 100, 900, 1000 = 3... [1000, 2000) holds 1000, 1100, 1950 = 3;
        // [900, 1900) holds 900, 1000, 1100 = 3; [0, 1000) holds 0, 100, 900 = 3.
        assert_eq!(max_in_window(&log, Duration::from_secs(1)), 3);
        assert_eq!(max_in_window(&log, Duration::from_millis(1101)), 5);
        assert_eq!(max_in_window(&log, Duration::from_millis(1)), 1);
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }

    /// The proxy forwards, and each fault does what it says, seen from a reqwest client.
    #[tokio::test]
    async fn each_fault_does_what_it_says() -> Result<()> {
        // The upstream: a loopback server that counts what reached it.
        let upstream = TcpListener::bind("127.0.0.1:0").await?;
        let upstream_url = format!("http://{}", upstream.local_addr()?);
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reached.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = upstream.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                r#"{"client_id":"a-fairly-long-value-to-cut-in-half"}"#,
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let proxy = FaultProxy::start(&upstream_url, 7).await?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(500))
            .build()?;
        let get = || client.get(format!("{}/admin/clients", proxy.url())).send();
        let count = || reached.load(std::sync::atomic::Ordering::SeqCst);

        let ok = get().await?;
        assert_eq!(ok.status(), 200);
        assert!(ok.text().await?.contains("a-fairly-long-value"));
        assert_eq!(count(), 1);

        proxy.set_faults(Faults {
            error: 1.0,
            ..Faults::none()
        });
        assert!(get().await?.status().is_server_error());
        assert_eq!(
            count(),
            1,
            "an error before forwarding does not reach the server"
        );

        proxy.set_faults(Faults {
            error_after: 1.0,
            ..Faults::none()
        });
        assert_eq!(get().await?.status(), 500);
        assert_eq!(count(), 2, "an error after forwarding does");

        proxy.set_faults(Faults {
            reset: 1.0,
            ..Faults::none()
        });
        for _ in 0..6 {
            assert!(get().await.is_err(), "a reset gives no answer");
        }

        proxy.set_faults(Faults {
            cut: 1.0,
            ..Faults::none()
        });
        let cut = get().await?;
        assert_eq!(cut.status(), 200);
        assert!(cut.bytes().await.is_err(), "a cut body fails to read");

        proxy.set_faults(Faults {
            stall: 1.0,
            stall_for: Duration::from_secs(2),
            ..Faults::none()
        });
        let stalled = get().await.expect_err("held past the client's timeout");
        assert!(stalled.is_timeout());

        proxy.heal();
        proxy.throttle(Duration::from_secs(60), 3);
        let throttled = get().await?;
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()[hyper::header::RETRY_AFTER], "3");
        proxy.heal();
        assert_eq!(get().await?.status(), 200);

        // Forced: only the matching requests, only so many times.
        proxy.force(Outcome::ErrorAfter, "GET", "/admin/clients", 1);
        proxy.force(Outcome::Error, "POST", "/", 1);
        assert_eq!(get().await?.status(), 500);
        assert_eq!(get().await?.status(), 200, "used up");
        assert_eq!(proxy.forced_left().len(), 1, "the POST is still to come");

        let outcomes: Vec<Outcome> = proxy.log().iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes.first(), Some(&Outcome::Forwarded));
        for o in [
            Outcome::Error,
            Outcome::ErrorAfter,
            Outcome::Cut,
            Outcome::Stalled,
            Outcome::Throttled,
        ] {
            assert!(outcomes.contains(&o), "{o:?} logged: {outcomes:?}");
        }
        assert!(
            outcomes.contains(&Outcome::ResetBefore) && outcomes.contains(&Outcome::ResetAfter),
            "six resets draw both kinds with this seed: {outcomes:?}"
        );
        Ok(())
    }
}
