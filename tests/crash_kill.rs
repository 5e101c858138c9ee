//! Seeded random-SIGKILL test: many applications register while the operator is killed with
//! SIGKILL at random moments (inside provider calls, thanks to latency injected at the Clerk
//! emulator) and restarted at once; a few rotations are requested meanwhile. A watch records
//! every version of every Secret. Once the last operator has converged:
//! - every application is Ready and its Secret holds a live secret that obtains a token;
//! - the emulator holds exactly one client per application, each held by exactly one Secret
//!   (no duplicate, no client whose secret no Secret holds);
//! - no Secret's credentials changed more often than rotations were requested for its
//!   application, nor before such a request (no unrequested replacement).
//!
//! The schedule (when to apply, kill, rotate, which latency) comes from one seed, printed at
//! the start: `KILL_SEED=<n>` replays it (the interleaving with the operator's own timing
//! still varies). `KILL_APPS` and `KILL_COUNT` raise the number of applications and kills
//! for longer soaks (never below 50 and 15).

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
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use oauth_operator::api::OAuthApplication;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use support::{Env, Operator, data, ready};
use tokio::time::Instant;

/// At least this many applications (`KILL_APPS` may raise it).
const MIN_APPS: usize = 50;
/// At least this many SIGKILLs (`KILL_COUNT` may raise it).
const MIN_KILLS: usize = 15;
/// Applications whose rotation is requested during the kill phase.
const ROTATIONS: usize = 5;
/// Time between two kills, in milliseconds.
const KILL_GAP_MS: std::ops::RangeInclusive<u64> = 150..=1500;
/// Applications are created over the first half of the kill phase, at most this long.
const MAX_APPLY_WINDOW_MS: u64 = 5000;
/// The operator's provider timeout: short, so that an interrupted create (whose outcome is
/// unknown) is waited for for seconds rather than a minute. Injected delays stay below it,
/// except the deliberate late commits.
const PROVIDER_TIMEOUT_MS: u64 = 3000;
/// How long the last operator may take to bring every application to Ready.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// Quiet time after convergence (a couple of 2 s resyncs) before the final checks.
const SETTLE: Duration = Duration::from_secs(5);
const ROTATE_ANNOTATION: &str = "oauth-operator.dev/rotate";

fn app_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: clerk}}
  redirectUris: ["{}"]
  scopes: [profile, email]
"#,
        redirect_uri(name)
    )
}

fn redirect_uri(name: &str) -> String {
    format!("https://{name}.example.com/callback")
}

fn secret_name(app: &str) -> String {
    format!("{app}-oauth")
}

fn env_count(var: &str, min: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(min, |n| n.max(min))
}

/// A short, recognisable prefix of a secret value for diagnostics.
fn fingerprint(value: &str) -> String {
    let head: String = value.chars().take(10).collect();
    format!("{head}..({})", value.len())
}

// ----- the schedule -----

/// Latency injected at the emulator for one operator's lifetime.
#[derive(Debug, Clone)]
struct Latency {
    /// Before every Backend API request is handled (a kill then lands before the commit).
    global_ms: u64,
    /// Create calls committed, then answered late: `(times, ms)`; a kill meanwhile loses the
    /// issued secret.
    create_commit_delay: Option<(u32, u64)>,
    /// Create calls delayed before they are handled: `(times, ms)`.
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

    /// Replaces the emulator's faults and delay with these.
    fn install(&self, clerk: &EmulatorHandle) {
        clerk.clear_faults();
        clerk.set_delay(Some(Duration::from_millis(self.global_ms)));
        let ms = Duration::from_millis;
        if let Some(late) = self.late_create_ms {
            clerk.commit_then_delay_next(1, "POST", routes::OAUTH_APPLICATIONS, ms(late));
        }
        if let Some((times, d)) = self.create_commit_delay {
            clerk.commit_then_delay_next(times, "POST", routes::OAUTH_APPLICATIONS, ms(d));
        }
        if let Some((times, d)) = self.create_delay {
            clerk.delay_next(times, "POST", routes::OAUTH_APPLICATIONS, ms(d));
        }
        if let Some((times, d)) = self.rotate_commit_delay {
            clerk.commit_then_delay_next(times, "POST", routes::ROTATE_SECRET, ms(d));
        }
        if let Some((times, d)) = self.patch_delay {
            clerk.delay_next(times, "PATCH", routes::OAUTH_APPLICATION, ms(d));
        }
    }
}

#[derive(Debug)]
enum Action {
    Apply(usize),
    Rotate(usize, String),
    /// The `n`th kill (1-based); the next operator runs with this latency. With a target,
    /// the kill waits (up to [`TARGET_WAIT_MS`]) for the emulator to answer the next such
    /// call and lands right after it: inside the windows where crashes hurt (after a create,
    /// a rename, a rotation answered and before the operator recorded it).
    Kill(usize, Latency, Option<(&'static str, &'static str)>),
}

/// How long a targeted kill waits for its call.
const TARGET_WAIT_MS: u64 = 1500;
/// The calls a targeted kill lands after.
const TARGETS: [(&str, &str); 3] = [
    ("POST", routes::OAUTH_APPLICATIONS),
    ("PATCH", routes::OAUTH_APPLICATION),
    ("POST", routes::ROTATE_SECRET),
];

#[derive(Debug)]
struct Step {
    at_ms: u64,
    action: Action,
}

struct Schedule {
    initial: Latency,
    steps: Vec<Step>,
    kill_phase_ms: u64,
}

fn schedule(seed: u64, apps: usize, kills: usize) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let initial = Latency::random(&mut rng);
    let mut steps = Vec::new();
    let mut at = 0;
    for n in 1..=kills {
        at += rng.random_range(KILL_GAP_MS);
        // Half the kills land right after a provider answer of a seeded kind.
        let target = rng
            .random_bool(0.5)
            .then(|| TARGETS[rng.random_range(0..TARGETS.len())]);
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
    // Rotations: applications from the earlier-created half (more likely to hold credentials
    // by then), requested during the last 40 % of the kill phase.
    let mut by_creation: Vec<usize> = (0..apps).collect();
    by_creation.sort_by_key(|i| applied_at[*i]);
    let early = &by_creation[..apps.div_ceil(2)];
    for (n, k) in rand::seq::index::sample(&mut rng, early.len(), ROTATIONS.min(early.len()))
        .into_iter()
        .enumerate()
    {
        let i = early[k];
        let earliest = (applied_at[i] + 300).max(kill_phase_ms * 6 / 10);
        let latest = kill_phase_ms.saturating_sub(50).max(earliest);
        steps.push(Step {
            at_ms: rng.random_range(earliest..=latest),
            action: Action::Rotate(i, format!("kill-{seed}-{n}")),
        });
    }
    // Stable: at equal times, kills stay before applies and rotations.
    steps.sort_by_key(|s| s.at_ms);
    Schedule {
        initial,
        steps,
        kill_phase_ms,
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

struct Rotation {
    app: String,
    token: String,
    requested: Instant,
}

#[tokio::test]
async fn random_sigkills_never_duplicate_lose_or_replace_credentials() -> Result<()> {
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    let n_apps = env_count("KILL_APPS", MIN_APPS);
    let n_kills = env_count("KILL_COUNT", MIN_KILLS);
    eprintln!(
        "KILL_SEED={seed} replays this schedule (with KILL_APPS={n_apps} KILL_COUNT={n_kills})"
    );
    let width = (n_apps - 1).to_string().len().max(2);
    let names: Vec<String> = (0..n_apps).map(|i| format!("app-{i:0width$}")).collect();
    let plan = schedule(seed, n_apps, n_kills);
    let test_start = Instant::now();

    let env = Env::new("kill").await?;
    let clerk = env.clerk.handle();

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
    let mut rotations: Vec<Rotation> = Vec::new();
    let mut unanswered: BTreeSet<u64> = BTreeSet::new();
    let mut interrupted: BTreeMap<String, usize> = BTreeMap::new();
    let mut inside_calls = 0;
    let mut targeted_hits = 0;

    // Kill phase.
    plan.initial.install(&clerk);
    let mut op: Operator = env.start_operator(&operator_env)?;
    let start = Instant::now();
    for step in &plan.steps {
        tokio::time::sleep_until(start + Duration::from_millis(step.at_ms)).await;
        match &step.action {
            Action::Apply(i) => {
                env.apply_app(&app_yaml(&names[*i])).await?;
            }
            Action::Rotate(i, token) => {
                rotations.push(Rotation {
                    app: names[*i].clone(),
                    token: token.clone(),
                    requested: Instant::now(),
                });
                let patch =
                    serde_json::json!({"metadata": {"annotations": {ROTATE_ANNOTATION: token}}});
                env.apps()
                    .patch(&names[*i], &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Action::Kill(n, latency, target) => {
                if let Some((method, route)) = target {
                    let answered = |clerk: &clerk_emulator::EmulatorHandle| {
                        clerk
                            .requests()
                            .iter()
                            .filter(|r| {
                                r.method == *method
                                    && r.route.as_deref() == Some(*route)
                                    && r.status.is_some()
                            })
                            .count()
                    };
                    let before = answered(&clerk);
                    let deadline = Instant::now() + Duration::from_millis(TARGET_WAIT_MS);
                    while answered(&clerk) == before && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    if answered(&clerk) > before {
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
                let cut: Vec<String> = clerk
                    .requests()
                    .into_iter()
                    .filter(|r| r.status.is_none() && unanswered.insert(r.seq))
                    .map(|r| format!("{} {}", r.method, r.route.unwrap_or(r.path)))
                    .collect();
                op.child.kill(); // SIGKILL (std's Child::kill), then reaped
                if !cut.is_empty() {
                    inside_calls += 1;
                }
                for call in cut {
                    *interrupted.entry(call).or_default() += 1;
                }
                logs.push(op.log.clone());
                latency.install(&clerk);
                op = env.start_operator(&operator_env)?;
            }
        }
    }
    let kill_phase = start.elapsed();
    clerk.clear_faults();
    clerk.set_delay(None);
    logs.push(op.log.clone());
    eprintln!(
        "kill phase: {n_kills} SIGKILLs, {n_apps} applications, {} rotations in {kill_phase:?} (planned {} ms); \
         {inside_calls} kills cut provider calls short {interrupted:?}, {targeted_hits} landed right after a targeted answer; \
         emulator so far: {} creates, {} rotations",
        rotations.len(),
        plan.kill_phase_ms,
        clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        clerk.request_count("POST", routes::ROTATE_SECRET),
    );

    // The last operator runs for good: wait for every application to be Ready at its current
    // generation with its last rotation request carried out.
    let wanted_token: BTreeMap<&str, &str> = rotations
        .iter()
        .map(|r| (r.app.as_str(), r.token.as_str()))
        .collect();
    let converged = |a: &OAuthApplication| {
        let status = a.status.as_ref();
        ready(a).is_some_and(|(s, _)| s == "True")
            && status.and_then(|s| s.observed_generation) == a.metadata.generation
            && wanted_token
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
        pending = names
            .iter()
            .filter(|n| !done.contains(*n))
            .cloned()
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
            "{name}: not Ready with its rotations carried out after {CONVERGE_TIMEOUT:?}: {status:?}"
        ));
    }
    let converge_time = converge_start.elapsed();
    eprintln!(
        "converged in {converge_time:?} ({} apps pending)",
        pending.len()
    );
    if pending.is_empty() {
        for name in &names {
            env.wait_ready(name).await?;
        }
    }
    tokio::time::sleep(SETTLE).await;

    // Per application: Ready, its Secret holds its client's live secret, which gets a token.
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new(); // client id -> Secrets
    for name in &names {
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
        if !clerk.secret_is_valid(client_id, client_secret) {
            violations.push(format!(
                "{name}: the Secret's secret {} is not the live secret of client {client_id} (exists at the emulator: {})",
                fingerprint(client_secret),
                clerk.app_by_client_id(client_id).is_some()
            ));
        }
        if let Err(e) = support::assert_token(&secret, &redirect_uri(name)).await {
            violations.push(format!(
                "{name}: no token with the stored credentials: {e:#}"
            ));
        }
    }

    // Zero duplicates, zero clients whose secret no Secret holds.
    let remote = clerk.apps();
    if remote.len() != n_apps {
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &remote {
            *by_name.entry(a.name.as_str()).or_default() += 1;
        }
        violations.push(format!(
            "the emulator holds {} clients for {n_apps} applications: {by_name:?}",
            remote.len()
        ));
    }
    let remote_ids: BTreeSet<&str> = remote.iter().map(|a| a.client_id.as_str()).collect();
    for a in &remote {
        match held.get(&a.client_id).map(Vec::as_slice) {
            Some([_]) => {}
            holders => violations.push(format!(
                "client {} ({:?}, {}) is held by {} Secrets: {holders:?}",
                a.client_id,
                a.name,
                a.id,
                holders.map_or(0, <[String]>::len)
            )),
        }
    }
    for (client_id, secrets) in &held {
        if !remote_ids.contains(client_id.as_str()) {
            violations.push(format!(
                "{secrets:?} hold client {client_id}, which the emulator does not know"
            ));
        }
    }

    // Zero unrequested replacements: a Secret's credentials change at most once per rotation
    // requested for its application, each change only after such a request.
    watch.abort();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let app_secrets: BTreeMap<String, &String> =
        names.iter().map(|n| (secret_name(n), n)).collect();
    let mut others: BTreeSet<&str> = BTreeSet::new();
    let mut replacements = 0;
    for (secret, app) in &app_secrets {
        let versions: Vec<&SecretVersion> =
            log.versions.iter().filter(|v| &v.name == secret).collect();
        let requests: Vec<Instant> = rotations
            .iter()
            .filter(|r| &r.app == *app)
            .map(|r| r.requested)
            .collect();
        let uids: BTreeSet<&str> = versions.iter().map(|v| v.uid.as_str()).collect();
        if uids.len() > 1 {
            eprintln!("note: Secret {secret} was recreated: uids {uids:?}");
        }
        let mut current: Option<(&str, &str)> = None;
        let mut changes = 0;
        for v in &versions {
            let (Some(id), Some(value)) = (v.client_id.as_deref(), v.client_secret.as_deref())
            else {
                continue;
            };
            if current.is_some_and(|c| c != (id, value)) {
                changes += 1;
                replacements += 1;
                let asked = requests.iter().filter(|r| **r <= v.seen).count();
                if asked < changes {
                    violations.push(format!(
                        "{app}: unrequested replacement #{changes} of Secret {secret} at +{:?} (resourceVersion {}), \
                         {asked} rotation(s) requested before it, {} in all; versions:\n{}",
                        v.seen.duration_since(start),
                        v.resource_version,
                        requests.len(),
                        describe(&versions, &requests, start)
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
        "KILL_SEED={seed}: {} Secret versions watched ({} watch starts, {} watch errors), \
         {replacements} credential changes for {} rotation requests; {} other Secrets seen, still there: {left:?}; \
         emulator: {} clients, {} creates, {} rotations; total {:?}",
        log.versions.len(),
        log.inits,
        log.errors.len(),
        rotations.len(),
        others.len(),
        remote.len(),
        clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        clerk.request_count("POST", routes::ROTATE_SECRET),
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
            "KILL_SEED={seed} (KILL_APPS={n_apps} KILL_COUNT={n_kills}): {} violation(s):\n",
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
            format!("    +{:?} rotation requested", r.duration_since(start)),
        )
    }));
    lines.sort_by_key(|(t, _)| *t);
    lines
        .into_iter()
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}
