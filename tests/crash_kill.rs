//! Seeded random-SIGKILL tests, one per server (the Clerk emulator, and a real Ory Hydra behind
//! the fault-injecting proxy): many applications register while the operator is killed with
//! SIGKILL at random moments (inside provider calls, thanks to latency and late answers
//! injected at the server or the proxy) and restarted at once; rotations, spec changes, Secret
//! deletions and application deletions are requested meanwhile. A watch records every
//! version of every Secret. Once the last operator has converged:
//! - every application left is Ready at its generation with its rotation carried out, its
//!   Secret holds a live secret that obtains a token, and the server has its spec's redirect
//!   URIs; every deleted application is gone;
//! - the server holds exactly one client per application left, each held by exactly one
//!   Secret (no duplicate, no client whose secret no Secret holds, none of a deleted app);
//! - no Secret's credentials changed more often than rotations and Secret deletions were
//!   requested for its application, nor before such a request (no unrequested replacement).
//!
//! The schedule (when to apply, kill, rotate, change, delete, which latency) comes from one
//! seed, printed at the start: `KILL_SEED=<n>` replays it (the interleaving with the
//! operator's own timing still varies). `KILL_APPS` and `KILL_COUNT` change the number of
//! applications and kills (never below 50 and 15; the defaults are 200 and 20).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use clerk_emulator::{EmulatorHandle, routes};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use oauth_operator::api::{OAuthApplication, OAuthProvider};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use support::{Env, Operator, data, ready};
use testenv::fault_proxy::{FaultProxy, Faults};
use testenv::hydra::Hydra;
use tokio::time::Instant;

/// At least this many applications (`KILL_APPS` may change it).
const MIN_APPS: usize = 50;
const DEFAULT_APPS: usize = 200;
/// At least this many SIGKILLs (`KILL_COUNT` may change it).
const MIN_KILLS: usize = 15;
const DEFAULT_KILLS: usize = 20;
/// Applications whose rotation is requested during the kill phase.
const ROTATIONS: usize = 5;
/// Applications whose redirect URIs change during the kill phase.
const SPEC_CHANGES: usize = 5;
/// Applications whose Secret is deleted during the kill phase.
const SECRET_DELETIONS: usize = 3;
/// Applications deleted during the kill phase.
const APP_DELETIONS: usize = 5;
/// Time between two kills, in milliseconds.
const KILL_GAP_MS: std::ops::RangeInclusive<u64> = 150..=1500;
/// Applications are created over the first half of the kill phase, at most this long.
const MAX_APPLY_WINDOW_MS: u64 = 5000;
/// The operator's provider timeout: short, so that an interrupted create (whose outcome is
/// unknown) is waited for for seconds rather than a minute. Injected delays stay below it,
/// except the deliberate late commits.
const PROVIDER_TIMEOUT_MS: u64 = 3000;
/// How long the last operator may take to bring every application to Ready.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(240);
/// Quiet time after convergence (a couple of 2 s resyncs) before the final checks.
const SETTLE: Duration = Duration::from_secs(5);
const ROTATE_ANNOTATION: &str = "oauth-operator.dev/rotate";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clerk,
    Hydra,
}

fn app_yaml(kind: Kind, name: &str) -> String {
    let (provider, extra) = match kind {
        Kind::Clerk => ("clerk", "scopes: [profile, email]"),
        Kind::Hydra => ("hydra", "grantTypes: [client_credentials]"),
    };
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: {provider}}}
  redirectUris: ["{}"]
  {extra}
"#,
        redirect_uri(name, 1)
    )
}

fn redirect_uri(name: &str, version: u32) -> String {
    if version == 1 {
        format!("https://{name}.example.com/callback")
    } else {
        format!("https://{name}.example.com/callback/v{version}")
    }
}

fn secret_name(app: &str) -> String {
    format!("{app}-oauth")
}

fn env_count(var: &str, default: usize, min: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(default, |n| n.max(min))
}

/// A short, recognisable prefix of a secret value for diagnostics.
fn fingerprint(value: &str) -> String {
    let head: String = value.chars().take(10).collect();
    format!("{head}..({})", value.len())
}

// ----- the server -----

/// A client the server holds.
struct Remote {
    client_id: String,
    label: String,
    redirect_uris: Vec<String>,
}

/// The server under test and how to slow it down, watch it and read it back.
enum Server {
    Clerk(EmulatorHandle),
    /// Hydra's admin API behind the fault proxy (latency and late answers; no errors).
    Hydra {
        hydra: &'static Hydra,
        proxy: FaultProxy,
    },
}

/// The calls a targeted kill lands after: (method, Clerk route or Hydra path prefix).
fn targets(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Clerk => &[
            ("POST", routes::OAUTH_APPLICATIONS),
            ("PATCH", routes::OAUTH_APPLICATION),
            ("POST", routes::ROTATE_SECRET),
            ("DELETE", routes::OAUTH_APPLICATION),
        ],
        Kind::Hydra => &[
            ("POST", "/admin/clients"),
            ("PUT", "/admin/clients/"),
            ("DELETE", "/admin/clients/"),
        ],
    }
}

impl Server {
    async fn new(kind: Kind, env: &Env, seed: u64) -> Result<Server> {
        Ok(match kind {
            Kind::Clerk => Server::Clerk(env.clerk.handle()),
            Kind::Hydra => {
                let hydra = Hydra::shared()?;
                let proxy = FaultProxy::start(&hydra.admin_url(), seed).await?;
                // Hydra takes a thousand requests in 10 s easily; the default budget would
                // make the run a test of patience.
                let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
                    "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
                    "metadata": {"name": "hydra"},
                    "spec": {
                        "hydra": {"adminUrl": proxy.url(), "issuerUrl": hydra.issuer()},
                        "requestBudget": {"requests": 1000, "periodSeconds": 10},
                    },
                }))?;
                Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
                    .create(&PostParams::default(), &provider)
                    .await?;
                Server::Hydra { hydra, proxy }
            }
        })
    }

    /// Replaces the server's (or the proxy's) latency and late answers with these.
    fn install(&self, latency: &Latency) {
        let ms = Duration::from_millis;
        match self {
            Server::Clerk(clerk) => {
                clerk.clear_faults();
                clerk.set_delay(Some(ms(latency.global_ms)));
                if let Some(late) = latency.late_create_ms {
                    clerk.commit_then_delay_next(1, "POST", routes::OAUTH_APPLICATIONS, ms(late));
                }
                if let Some((times, d)) = latency.create_commit_delay {
                    clerk.commit_then_delay_next(times, "POST", routes::OAUTH_APPLICATIONS, ms(d));
                }
                if let Some((times, d)) = latency.create_delay {
                    clerk.delay_next(times, "POST", routes::OAUTH_APPLICATIONS, ms(d));
                }
                if let Some((times, d)) = latency.rotate_commit_delay {
                    clerk.commit_then_delay_next(times, "POST", routes::ROTATE_SECRET, ms(d));
                }
                if let Some((times, d)) = latency.patch_delay {
                    clerk.delay_next(times, "PATCH", routes::OAUTH_APPLICATION, ms(d));
                }
            }
            Server::Hydra { proxy, .. } => {
                proxy.heal();
                proxy.set_faults(Faults {
                    latency_ms: Some(latency.global_ms / 2..=latency.global_ms),
                    ..Faults::none()
                });
                // Hydra carries out a request before answering it: every late answer here is
                // a change made whose answer a kill may lose.
                if let Some(late) = latency.late_create_ms {
                    proxy.force_stall("POST", "/admin/clients", 1, ms(late));
                }
                for (times, d) in [latency.create_commit_delay, latency.create_delay]
                    .into_iter()
                    .flatten()
                {
                    proxy.force_stall("POST", "/admin/clients", times as usize, ms(d));
                }
                // Rotations and updates are both a PUT of the client.
                for (times, d) in [latency.rotate_commit_delay, latency.patch_delay]
                    .into_iter()
                    .flatten()
                {
                    proxy.force_stall("PUT", "/admin/clients/", times as usize, ms(d));
                }
            }
        }
    }

    fn heal(&self) {
        match self {
            Server::Clerk(clerk) => {
                clerk.clear_faults();
                clerk.set_delay(None);
            }
            Server::Hydra { proxy, .. } => proxy.heal(),
        }
    }

    /// How many calls of this kind the server (or the proxy) has answered.
    fn answered(&self, (method, route): (&str, &str)) -> usize {
        match self {
            Server::Clerk(clerk) => clerk
                .requests()
                .iter()
                .filter(|r| {
                    r.method == method && r.route.as_deref() == Some(route) && r.status.is_some()
                })
                .count(),
            Server::Hydra { proxy, .. } => proxy
                .log()
                .iter()
                .filter(|r| r.method == method && r.path.starts_with(route) && r.answered.is_some())
                .count(),
        }
    }

    /// The calls in flight now that were not in flight at an earlier look (`seen`).
    fn newly_unanswered(&self, seen: &mut BTreeSet<u64>) -> Vec<String> {
        match self {
            Server::Clerk(clerk) => clerk
                .requests()
                .into_iter()
                .filter(|r| r.status.is_none() && seen.insert(r.seq))
                .map(|r| format!("{} {}", r.method, r.route.unwrap_or(r.path)))
                .collect(),
            Server::Hydra { proxy, .. } => proxy
                .log()
                .into_iter()
                .filter(|r| r.answered.is_none() && seen.insert(r.seq as u64))
                .map(|r| {
                    let path = if r.path.len() > "/admin/clients".len() {
                        "/admin/clients/{id}"
                    } else {
                        "/admin/clients"
                    };
                    format!("{} {path}", r.method)
                })
                .collect(),
        }
    }

    /// Every client of this test at the server (`uids`: of every application it created).
    async fn clients(&self, uids: &BTreeSet<String>) -> Result<Vec<Remote>> {
        Ok(match self {
            Server::Clerk(clerk) => clerk
                .apps()
                .into_iter()
                .map(|a| Remote {
                    client_id: a.client_id,
                    label: format!("{:?} {}", a.name, a.id),
                    redirect_uris: a.redirect_uris,
                })
                .collect(),
            Server::Hydra { hydra, .. } => {
                let all: Vec<serde_json::Value> =
                    reqwest::get(format!("{}/admin/clients?page_size=500", hydra.admin_url()))
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                anyhow::ensure!(all.len() < 500, "more Hydra clients than one page holds");
                all.into_iter()
                    .filter(|c| {
                        c["metadata"]["oauth-operator.dev/owner-uid"]
                            .as_str()
                            .is_some_and(|u| uids.contains(u))
                    })
                    .map(|c| Remote {
                        client_id: c["client_id"].as_str().unwrap_or_default().to_string(),
                        label: format!("owner {}", c["metadata"]["oauth-operator.dev/owner-uid"]),
                        redirect_uris: c["redirect_uris"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|u| u.as_str().map(str::to_string))
                            .collect(),
                    })
                    .collect()
            }
        })
    }

    /// Whether the server holds this secret for this client, where it can say (the
    /// emulator); Hydra answers through the token endpoint.
    fn live(&self, client_id: &str, secret: &str) -> Option<bool> {
        match self {
            Server::Clerk(clerk) => Some(clerk.secret_is_valid(client_id, secret)),
            Server::Hydra { .. } => None,
        }
    }

    /// A token with the Secret's credentials, the way its workload gets one.
    async fn token(&self, secret: &Secret, redirect_uri: &str) -> Result<()> {
        match self {
            Server::Clerk(_) => support::assert_token(secret, redirect_uri).await.map(drop),
            Server::Hydra { .. } => match support::client_credentials_token(secret).await? {
                Ok(_) => Ok(()),
                Err(status) => bail!("the token endpoint refused the credentials: HTTP {status}"),
            },
        }
    }

    /// Creates, rotations... seen so far, for the log.
    fn summary(&self) -> String {
        match self {
            Server::Clerk(clerk) => format!(
                "emulator: {} creates, {} rotations, {} deletions",
                clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
                clerk.request_count("POST", routes::ROTATE_SECRET),
                clerk.request_count("DELETE", routes::OAUTH_APPLICATION),
            ),
            Server::Hydra { proxy, .. } => {
                let log = proxy.log();
                let count = |m: &str| log.iter().filter(|r| r.method == m).count();
                format!(
                    "Hydra (at the proxy): {} requests, {} creates, {} updates and rotations, {} deletions",
                    log.len(),
                    count("POST"),
                    count("PUT"),
                    count("DELETE")
                )
            }
        }
    }
}

// ----- the schedule -----

/// Latency injected for one operator's lifetime.
#[derive(Debug, Clone)]
struct Latency {
    /// Before every request is handled (a kill then lands before the commit).
    global_ms: u64,
    /// Create calls committed, then answered late: `(times, ms)`; a kill meanwhile loses the
    /// answer (at Clerk: the issued secret).
    create_commit_delay: Option<(u32, u64)>,
    /// Create calls delayed before they are handled (Hydra: committed, then answered late).
    create_delay: Option<(u32, u64)>,
    /// Rotations committed, then answered late: `(times, ms)`.
    rotate_commit_delay: Option<(u32, u64)>,
    /// Renames and updates delayed: `(times, ms)`.
    patch_delay: Option<(u32, u64)>,
    /// One create committed and answered after the provider timeout (outcome unknown).
    late_create_ms: Option<u64>,
}

impl Latency {
    fn random(rng: &mut StdRng) -> Latency {
        let short = |rng: &mut StdRng| rng.random_range(100..=1200);
        Latency {
            global_ms: rng.random_range(20..=150),
            create_commit_delay: rng
                .random_bool(0.6)
                .then(|| (rng.random_range(1..=3), short(rng))),
            create_delay: rng
                .random_bool(0.3)
                .then(|| (rng.random_range(1..=3), short(rng))),
            rotate_commit_delay: rng
                .random_bool(0.5)
                .then(|| (rng.random_range(1..=2), short(rng))),
            patch_delay: rng
                .random_bool(0.3)
                .then(|| (rng.random_range(1..=3), short(rng))),
            late_create_ms: rng
                .random_bool(0.15)
                .then(|| PROVIDER_TIMEOUT_MS + rng.random_range(500..=1500)),
        }
    }
}

#[derive(Debug)]
enum Action {
    Apply(usize),
    Rotate(usize, String),
    /// New redirect URIs (version 2).
    Change(usize),
    DeleteSecret(usize),
    Delete(usize),
    /// The `n`th kill (1-based); the next operator runs with this latency. With a target,
    /// the kill waits (up to [`TARGET_WAIT_MS`]) for the server to answer the next such
    /// call and lands right after it: inside the windows where crashes hurt (after a create,
    /// an update, a rotation or a deletion answered and before the operator recorded it).
    Kill(usize, Latency, Option<(&'static str, &'static str)>),
}

/// How long a targeted kill waits for its call.
const TARGET_WAIT_MS: u64 = 1500;

#[derive(Debug)]
struct Step {
    at_ms: u64,
    action: Action,
}

struct Schedule {
    initial: Latency,
    steps: Vec<Step>,
    kill_phase_ms: u64,
    rotated: Vec<usize>,
    changed: Vec<usize>,
    secrets_deleted: Vec<usize>,
    deleted: Vec<usize>,
}

fn schedule(kind: Kind, seed: u64, apps: usize, kills: usize) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let initial = Latency::random(&mut rng);
    let mut steps = Vec::new();
    let mut at = 0;
    let targets = targets(kind);
    for n in 1..=kills {
        at += rng.random_range(KILL_GAP_MS);
        // Half the kills land right after a provider answer of a seeded kind.
        let target = rng
            .random_bool(0.5)
            .then(|| targets[rng.random_range(0..targets.len())]);
        steps.push(Step {
            at_ms: at,
            action: Action::Kill(n, Latency::random(&mut rng), target),
        });
    }
    let kill_phase_ms = at;
    let window = (kill_phase_ms / 2).clamp(1, MAX_APPLY_WINDOW_MS);
    let mut order: Vec<usize> = (0..apps).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let mut applied_at = vec![0; apps];
    for i in order {
        applied_at[i] = rng.random_range(0..window);
        steps.push(Step {
            at_ms: applied_at[i],
            action: Action::Apply(i),
        });
    }
    // Rotations, spec changes and Secret deletions: distinct applications from the
    // earlier-created half (more likely to hold credentials by then); deletions: from the
    // later half. Each requested during the last 40 % of the kill phase.
    let mut by_creation: Vec<usize> = (0..apps).collect();
    by_creation.sort_by_key(|i| applied_at[*i]);
    let (early, late) = by_creation.split_at(apps.div_ceil(2));
    let picks = ROTATIONS + SPEC_CHANGES + SECRET_DELETIONS;
    let chosen: Vec<usize> =
        rand::seq::index::sample(&mut rng, early.len(), picks.min(early.len()))
            .into_iter()
            .map(|k| early[k])
            .collect();
    let rotated = chosen.iter().take(ROTATIONS).copied().collect::<Vec<_>>();
    let changed = chosen
        .iter()
        .skip(ROTATIONS)
        .take(SPEC_CHANGES)
        .copied()
        .collect::<Vec<_>>();
    let secrets_deleted = chosen
        .iter()
        .skip(ROTATIONS + SPEC_CHANGES)
        .copied()
        .collect::<Vec<_>>();
    let deleted: Vec<usize> =
        rand::seq::index::sample(&mut rng, late.len(), APP_DELETIONS.min(late.len()))
            .into_iter()
            .map(|k| late[k])
            .collect();
    let when = |rng: &mut StdRng, i: usize| {
        let earliest = (applied_at[i] + 300).max(kill_phase_ms * 6 / 10);
        let latest = kill_phase_ms.saturating_sub(50).max(earliest);
        rng.random_range(earliest..=latest)
    };
    for (n, &i) in rotated.iter().enumerate() {
        steps.push(Step {
            at_ms: when(&mut rng, i),
            action: Action::Rotate(i, format!("kill-{seed}-{n}")),
        });
    }
    for &i in &changed {
        steps.push(Step {
            at_ms: when(&mut rng, i),
            action: Action::Change(i),
        });
    }
    for &i in &secrets_deleted {
        steps.push(Step {
            at_ms: when(&mut rng, i),
            action: Action::DeleteSecret(i),
        });
    }
    for &i in &deleted {
        steps.push(Step {
            at_ms: when(&mut rng, i),
            action: Action::Delete(i),
        });
    }
    // Stable: at equal times, kills stay before the rest.
    steps.sort_by_key(|s| s.at_ms);
    Schedule {
        initial,
        steps,
        kill_phase_ms,
        rotated,
        changed,
        secrets_deleted,
        deleted,
    }
}

// ----- the Secret watch -----

#[derive(Debug, Clone)]
struct SecretVersion {
    /// When the test saw it.
    seen: Instant,
    name: String,
    uid: String,
    resource_version: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    deleted: bool,
}

#[derive(Debug, Default)]
struct WatchLog {
    versions: Vec<SecretVersion>,
    /// Watch (re)starts: more than one means a relist, which may have skipped versions.
    inits: usize,
    init_done: usize,
    errors: Vec<String>,
}

fn record(log: &Mutex<WatchLog>, secret: &Secret, deleted: bool) {
    let d = data(secret);
    let version = SecretVersion {
        seen: Instant::now(),
        name: secret.name_any(),
        uid: secret.uid().unwrap_or_default(),
        resource_version: secret.resource_version().unwrap_or_default(),
        client_id: d.get("CLIENT_ID").cloned(),
        client_secret: d.get("CLIENT_SECRET").cloned().filter(|s| !s.is_empty()),
        deleted,
    };
    log.lock().unwrap().versions.push(version);
}

fn watch_secrets(api: Api<Secret>, log: Arc<Mutex<WatchLog>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                    record(&log, &s, false);
                }
                Ok(watcher::Event::Delete(s)) => record(&log, &s, true),
                Ok(watcher::Event::Init) => log.lock().unwrap().inits += 1,
                Ok(watcher::Event::InitDone) => log.lock().unwrap().init_done += 1,
                Err(e) => log.lock().unwrap().errors.push(e.to_string()),
            }
        }
    })
}

// ----- the test -----

/// A change of credentials someone asked for: a rotation or a Secret deletion.
struct Request {
    app: String,
    requested: Instant,
}

#[tokio::test]
async fn random_sigkills_at_clerk_never_duplicate_lose_or_replace_credentials() -> Result<()> {
    random_sigkills(Kind::Clerk).await
}

#[tokio::test]
async fn random_sigkills_at_hydra_never_duplicate_lose_or_replace_credentials() -> Result<()> {
    random_sigkills(Kind::Hydra).await
}

async fn random_sigkills(kind: Kind) -> Result<()> {
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    let n_apps = env_count("KILL_APPS", DEFAULT_APPS, MIN_APPS);
    let n_kills = env_count("KILL_COUNT", DEFAULT_KILLS, MIN_KILLS);
    eprintln!(
        "{kind:?}: KILL_SEED={seed} replays this schedule (with KILL_APPS={n_apps} KILL_COUNT={n_kills})"
    );
    let width = (n_apps - 1).to_string().len().max(2);
    let names: Vec<String> = (0..n_apps).map(|i| format!("app-{i:0width$}")).collect();
    let plan = schedule(kind, seed, n_apps, n_kills);
    let test_start = Instant::now();

    let env = Env::new(match kind {
        Kind::Clerk => "kill",
        Kind::Hydra => "kill-hydra",
    })
    .await?;
    let server = Server::new(kind, &env, seed).await?;

    let log = Arc::new(Mutex::new(WatchLog::default()));
    let watch = watch_secrets(env.secrets(), log.clone());
    let deadline = Instant::now() + support::TIMEOUT;
    while log.lock().unwrap().init_done == 0 {
        if Instant::now() > deadline {
            bail!(
                "the Secret watch did not start: {:?}",
                log.lock().unwrap().errors
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let timeout = format!("{PROVIDER_TIMEOUT_MS}ms");
    let operator_env = [("OAUTH_OPERATOR_PROVIDER_TIMEOUT", timeout.as_str())];
    let mut violations: Vec<String> = Vec::new();
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut requests: Vec<Request> = Vec::new();
    let mut rotation_tokens: BTreeMap<&str, &str> = BTreeMap::new();
    let mut uids: BTreeSet<String> = BTreeSet::new();
    let mut unanswered: BTreeSet<u64> = BTreeSet::new();
    let mut interrupted: BTreeMap<String, usize> = BTreeMap::new();
    let mut inside_calls = 0;
    let mut targeted_hits = 0;

    // Kill phase.
    server.install(&plan.initial);
    let mut op: Operator = env.start_operator(&operator_env)?;
    let start = Instant::now();
    for step in &plan.steps {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms)).await;
        match &step.action {
            Action::Apply(i) => {
                let app = env.apply_app(&app_yaml(kind, &names[*i])).await?;
                uids.insert(app.uid().unwrap_or_default());
            }
            Action::Rotate(i, token) => {
                requests.push(Request {
                    app: names[*i].clone(),
                    requested: Instant::now(),
                });
                rotation_tokens.insert(&names[*i], token);
                let patch =
                    serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: token}}});
                env.apps()
                    .patch(&names[*i], &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Action::Change(i) => {
                let patch =
                    serde_json::json!({"spec": {"redirectUris": [redirect_uri(&names[*i], 2)]}});
                env.apps()
                    .patch(&names[*i], &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Action::DeleteSecret(i) => {
                requests.push(Request {
                    app: names[*i].clone(),
                    requested: Instant::now(),
                });
                // Not there yet (still registering): nothing deleted, nothing asked.
                if env
                    .secrets()
                    .delete(&secret_name(&names[*i]), &DeleteParams::default())
                    .await
                    .is_err()
                {
                    requests.pop();
                }
            }
            Action::Delete(i) => {
                env.apps()
                    .delete(&names[*i], &DeleteParams::default())
                    .await?;
            }
            Action::Kill(n, latency, target) => {
                if let Some(target) = target {
                    let before = server.answered(*target);
                    let deadline = Instant::now() + Duration::from_millis(TARGET_WAIT_MS);
                    while server.answered(*target) == before && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    if server.answered(*target) > before {
                        targeted_hits += 1;
                    }
                }
                if let Err(e) = op.child.check_running() {
                    violations.push(format!(
                        "before kill {n}: the operator died by itself ({e}); log {}",
                        op.log.display()
                    ));
                }
                // Which provider calls this kill interrupts (unanswered requests not seen
                // unanswered at an earlier kill).
                let cut = server.newly_unanswered(&mut unanswered);
                op.child.kill(); // SIGKILL (std's Child::kill), then reaped
                if !cut.is_empty() {
                    inside_calls += 1;
                }
                for call in cut {
                    *interrupted.entry(call).or_default() += 1;
                }
                logs.push(op.log.clone());
                server.install(latency);
                op = env.start_operator(&operator_env)?;
            }
        }
    }
    let kill_phase = start.elapsed();
    server.heal();
    logs.push(op.log.clone());
    eprintln!(
        "kill phase: {n_kills} SIGKILLs, {n_apps} applications, {} rotations, {} spec changes, \
         {} Secret deletions asked, {} application deletions in {kill_phase:?} (planned {} ms); \
         {inside_calls} kills cut provider calls short {interrupted:?}, {targeted_hits} landed right after a targeted answer; {}",
        plan.rotated.len(),
        plan.changed.len(),
        plan.secrets_deleted.len(),
        plan.deleted.len(),
        plan.kill_phase_ms,
        server.summary(),
    );

    // The last operator runs for good: wait for every application left to be Ready at its
    // current generation with its last rotation request carried out, and the deleted ones gone.
    let deleted: BTreeSet<&str> = plan.deleted.iter().map(|i| names[*i].as_str()).collect();
    let remaining: Vec<&String> = names
        .iter()
        .filter(|n| !deleted.contains(n.as_str()))
        .collect();
    let converged = |a: &OAuthApplication| {
        let status = a.status.as_ref();
        ready(a).is_some_and(|(s, _)| s == "True")
            && status.and_then(|s| s.observed_generation) == a.metadata.generation
            && rotation_tokens
                .get(a.name_any().as_str())
                .is_none_or(|t| status.and_then(|s| s.last_rotation_token.as_deref()) == Some(*t))
    };
    let converge_start = Instant::now();
    let mut pending: Vec<String>;
    loop {
        let apps = env.apps().list(&ListParams::default()).await?.items;
        let done: BTreeSet<String> = apps
            .iter()
            .filter(|a| converged(a))
            .map(|a| a.name_any())
            .collect();
        pending = remaining
            .iter()
            .filter(|n| !done.contains(n.as_str()))
            .map(|n| n.to_string())
            .chain(
                apps.iter()
                    .map(|a| a.name_any())
                    .filter(|n| deleted.contains(n.as_str())),
            )
            .collect();
        if pending.is_empty() || converge_start.elapsed() > CONVERGE_TIMEOUT {
            break;
        }
        if op.child.check_running().is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Err(e) = op.child.check_running() {
        violations.push(format!(
            "the final operator died by itself ({e}); log {}",
            op.log.display()
        ));
    }
    for name in &pending {
        let status = env.apps().get_opt(name).await?.and_then(|a| a.status);
        violations.push(format!(
            "{name}: not converged (Ready with its rotations carried out, or gone when deleted) \
             after {CONVERGE_TIMEOUT:?}: {status:?}"
        ));
    }
    let converge_time = converge_start.elapsed();
    eprintln!(
        "converged in {converge_time:?} ({} apps pending)",
        pending.len()
    );
    tokio::time::sleep(SETTLE).await;

    // Per application left: Ready, its Secret holds its client's live secret, which gets a
    // token; the server has the spec's redirect URIs.
    let remote = server.clients(&uids).await?;
    let remote_by_id: BTreeMap<&str, &Remote> =
        remote.iter().map(|r| (r.client_id.as_str(), r)).collect();
    let changed: BTreeSet<&str> = plan.changed.iter().map(|i| names[*i].as_str()).collect();
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new(); // client id -> Secrets
    for name in &remaining {
        let app = env.apps().get(name).await?;
        if !converged(&app) {
            violations.push(format!(
                "{name}: not Ready at its generation after settling: {:?}",
                app.status
            ));
        }
        let status_client = app.status.as_ref().and_then(|s| s.client_id.clone());
        let Some(secret) = env.secrets().get_opt(&secret_name(name)).await? else {
            violations.push(format!("{name}: Secret {} is missing", secret_name(name)));
            continue;
        };
        let d = data(&secret);
        let (Some(client_id), Some(client_secret)) = (d.get("CLIENT_ID"), d.get("CLIENT_SECRET"))
        else {
            violations.push(format!(
                "{name}: Secret {} lacks CLIENT_ID or CLIENT_SECRET (keys {:?})",
                secret_name(name),
                d.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        held.entry(client_id.clone())
            .or_default()
            .push(secret_name(name));
        if status_client.as_ref() != Some(client_id) {
            violations.push(format!(
                "{name}: Secret CLIENT_ID {client_id} but status.clientId {status_client:?}"
            ));
        }
        if server.live(client_id, client_secret) == Some(false) {
            violations.push(format!(
                "{name}: the Secret's secret {} is not the live secret of client {client_id} (exists at the server: {})",
                fingerprint(client_secret),
                remote_by_id.contains_key(client_id.as_str())
            ));
        }
        let version = if changed.contains(name.as_str()) {
            2
        } else {
            1
        };
        if let Err(e) = server.token(&secret, &redirect_uri(name, version)).await {
            violations.push(format!(
                "{name}: no token with the stored credentials: {e:#}"
            ));
        }
        if let Some(r) = remote_by_id.get(client_id.as_str())
            && r.redirect_uris != [redirect_uri(name, version)]
        {
            violations.push(format!(
                "{name}: the server has redirect URIs {:?}, the spec {}",
                r.redirect_uris,
                redirect_uri(name, version)
            ));
        }
    }

    // Zero duplicates, zero clients whose secret no Secret holds (a deleted application's
    // client among them).
    if remote.len() != remaining.len() {
        let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &remote {
            *by_label.entry(r.label.as_str()).or_default() += 1;
        }
        violations.push(format!(
            "the server holds {} clients for {} applications left ({} deleted): {by_label:?}",
            remote.len(),
            remaining.len(),
            deleted.len()
        ));
    }
    for r in &remote {
        match held.get(&r.client_id).map(Vec::as_slice) {
            Some([_]) => {}
            holders => violations.push(format!(
                "client {} ({}) is held by {} Secrets: {holders:?}",
                r.client_id,
                r.label,
                holders.map_or(0, <[String]>::len)
            )),
        }
    }
    for (client_id, secrets) in &held {
        if !remote_by_id.contains_key(client_id.as_str()) {
            violations.push(format!(
                "{secrets:?} hold client {client_id}, which the server does not know"
            ));
        }
    }

    // Zero unrequested replacements: a Secret's credentials change at most once per rotation
    // or Secret deletion requested for its application, each change only after such a request.
    watch.abort();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let app_secrets: BTreeMap<String, &String> =
        names.iter().map(|n| (secret_name(n), n)).collect();
    let mut others: BTreeSet<&str> = BTreeSet::new();
    let mut replacements = 0;
    for (secret, app) in &app_secrets {
        if deleted.contains(app.as_str()) {
            continue;
        }
        let versions: Vec<&SecretVersion> =
            log.versions.iter().filter(|v| &v.name == secret).collect();
        let asked: Vec<Instant> = requests
            .iter()
            .filter(|r| &r.app == *app)
            .map(|r| r.requested)
            .collect();
        let mut current: Option<(&str, &str)> = None;
        let mut changes = 0;
        for v in &versions {
            let (Some(id), Some(value)) = (v.client_id.as_deref(), v.client_secret.as_deref())
            else {
                continue;
            };
            if v.deleted {
                continue;
            }
            if current.is_some_and(|c| c != (id, value)) {
                changes += 1;
                replacements += 1;
                let before = asked.iter().filter(|r| **r <= v.seen).count();
                if before < changes {
                    violations.push(format!(
                        "{app}: unrequested replacement #{changes} of Secret {secret} at +{:?} (resourceVersion {}), \
                         {before} rotation(s) or deletion(s) requested before it, {} in all; versions:\n{}",
                        v.seen.duration_since(start),
                        v.resource_version,
                        asked.len(),
                        describe(&versions, &asked, start)
                    ));
                }
            }
            current = Some((id, value));
        }
    }
    // Other Secrets (the provider's key, staged credentials...): only summarised.
    let mut left: BTreeMap<&str, bool> = BTreeMap::new(); // name -> exists at the end
    for v in &log.versions {
        if !app_secrets.contains_key(&v.name) {
            others.insert(&v.name);
            left.insert(&v.name, !v.deleted);
        }
    }
    let left: Vec<&str> = left
        .into_iter()
        .filter(|(name, exists)| *exists && *name != "clerk-admin")
        .map(|(name, _)| name)
        .collect();
    // Every app converged: a staged copy left behind is a live secret nobody will deliver.
    for name in left
        .iter()
        .filter(|n| n.starts_with("oauth-operator-staged-"))
    {
        violations.push(format!("staged credentials left behind: {name}"));
    }

    eprintln!(
        "{kind:?} KILL_SEED={seed}: {} Secret versions watched ({} watch starts, {} watch errors), \
         {replacements} credential changes for {} rotation and Secret deletion requests; {} other Secrets seen, still there: {left:?}; \
         the server holds {} clients for {} applications left; {}; total {:?}",
        log.versions.len(),
        log.inits,
        log.errors.len(),
        requests.len(),
        others.len(),
        remote.len(),
        remaining.len(),
        server.summary(),
        test_start.elapsed()
    );
    if log.inits > 1 {
        eprintln!(
            "note: the Secret watch relisted {} times; versions in between may be missing ({:?})",
            log.inits - 1,
            log.errors
        );
    }

    if !violations.is_empty() {
        let mut report = format!(
            "{kind:?} KILL_SEED={seed} (KILL_APPS={n_apps} KILL_COUNT={n_kills}): {} violation(s):\n",
            violations.len()
        );
        for v in &violations {
            let _ = writeln!(report, "- {v}");
        }
        let _ = writeln!(report, "operator logs, in order:");
        for l in &logs {
            let _ = writeln!(report, "  {}", l.display());
        }
        bail!("{report}");
    }
    Ok(())
}

/// The versions of one Secret with rotation requests interleaved, for a failure message.
fn describe(versions: &[&SecretVersion], requests: &[Instant], start: Instant) -> String {
    let mut lines: Vec<(Instant, String)> = versions
        .iter()
        .map(|v| {
            (
                v.seen,
                format!(
                    "    +{:?} rv {} uid {} {} CLIENT_ID {} CLIENT_SECRET {}",
                    v.seen.duration_since(start),
                    v.resource_version,
                    v.uid.chars().take(8).collect::<String>(),
                    if v.deleted { "DELETED" } else { "" },
                    v.client_id.as_deref().unwrap_or("-"),
                    v.client_secret.as_deref().map_or("-".into(), fingerprint),
                ),
            )
        })
        .collect();
    lines.extend(requests.iter().map(|r| {
        (
            *r,
            format!(
                "    +{:?} rotation or Secret deletion requested",
                r.duration_since(start)
            ),
        )
    }));
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}
