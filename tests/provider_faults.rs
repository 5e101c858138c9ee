//! Provider faults on the wire: a fault-injecting proxy (`testenv::fault_proxy`) in front of
//! a real Ory Hydra's admin API answers 30 % of requests with a 5xx (half of them after
//! passing the request on, so the change was made), resets connections before and after
//! forwarding, cuts answers mid-body, holds answers past the operator's timeout, adds latency,
//! and throws a burst of 429s with `Retry-After`. Meanwhile applications are created, changed,
//! rotated and deleted, and Secrets deleted. Once the faults stop:
//! - every application is Ready at its generation with its rotation carried out, and its
//!   Secret's credentials obtain a token at Hydra;
//! - Hydra holds exactly one client per application (the one its Secret names, with the
//!   spec's redirect URIs) and none for a deleted application;
//! - a watch over every Secret version saw no client-secret change that no rotation or Secret
//!   deletion asked for;
//! - in no window of the budget's period did the proxy see more requests than the budget;
//! - after each 429, no request reached the proxy before its `Retry-After` had passed;
//! - the operator's metrics show the per-object backoff (retry delays of 4 s and more).
//!
//! `FAULT_SEED=<n>` replays the proxy's draws (printed at the start).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use oauth_operator::api::{OAuthApplication, OAuthProvider};
use support::{Env, SecretHistory, data, ready};
use testenv::fault_proxy::{FaultProxy, Faults, Outcome, max_in_window};
use testenv::hydra::Hydra;
use tokio::time::Instant;

const APPS: usize = 24;
/// The provider's request budget: 12 requests per 2 s (6 per second), below what 24 new
/// applications ask for at once, so the budget is what paces them.
const BUDGET_REQUESTS: usize = 12;
const BUDGET_PERIOD: Duration = Duration::from_secs(2);
/// How long the faults last.
const FAULT_PHASE: Duration = Duration::from_secs(30);
/// The 429 burst: from this offset into the fault phase, for this long, `Retry-After` 2.
const THROTTLE_AT: Duration = Duration::from_secs(12);
const THROTTLE_FOR: Duration = Duration::from_secs(3);
const RETRY_AFTER_SECS: u64 = 2;
/// The operator's provider timeout; a stalled answer is held longer.
const PROVIDER_TIMEOUT: &str = "2s";
const STALL: Duration = Duration::from_secs(3);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(150);

fn name(i: usize) -> String {
    format!("app-{i:02}")
}

fn secret_name(i: usize) -> String {
    format!("{}-oauth", name(i))
}

fn redirect(i: usize, version: u32) -> String {
    format!("https://{}.example.com/callback/v{version}", name(i))
}

fn app_yaml(i: usize) -> String {
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {}}}
spec:
  providerRef: {{name: hydra}}
  redirectUris: ["{}"]
  grantTypes: [client_credentials]
"#,
        name(i),
        redirect(i, 1)
    )
}

/// The faults of the fault phase: 5xx on 30 % of requests (15 % before forwarding, 15 %
/// after), 4 % resets, 4 % cut answers, 2 % answers held past the timeout, 10-250 ms latency.
fn faults() -> Faults {
    Faults {
        error: 0.15,
        error_after: 0.15 / 0.85,
        reset: 0.04,
        cut: 0.04,
        stall: 0.02,
        stall_for: STALL,
        latency_ms: Some(10..=250),
    }
}

/// Every client Hydra holds (the shared Hydra of this test binary).
async fn hydra_clients(hydra: &Hydra) -> Result<Vec<serde_json::Value>> {
    let all: Vec<serde_json::Value> =
        reqwest::get(format!("{}/admin/clients?page_size=500", hydra.admin_url()))
            .await?
            .error_for_status()?
            .json()
            .await?;
    ensure!(all.len() < 500, "more clients than one page holds");
    Ok(all)
}

/// The sum of a metric's series on the operator's `/metrics` page (every line starting so).
fn metric(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn converges_through_provider_faults_within_the_budget() -> Result<()> {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FAULT_SEED={seed} replays the proxy's draws");
    let env = Env::new("faults").await?;
    let hydra = Hydra::shared()?;
    let proxy = FaultProxy::start(&hydra.admin_url(), seed).await?;
    let provider: OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": "hydra"},
        "spec": {
            "hydra": {"adminUrl": proxy.url(), "issuerUrl": hydra.issuer()},
            "requestBudget": {"requests": BUDGET_REQUESTS, "periodSeconds": BUDGET_PERIOD.as_secs()},
        },
    }))?;
    Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &provider)
        .await?;
    let history = SecretHistory::start(&env).await?;
    // Deletions are asked for 20 s before the faults stop: the operator must keep trying
    // until then (the test support's 15 s deletion timeout would make it give up and leave
    // the client, with a `ClientLeftAtProvider` event, as designed).
    let mut op = env.start_operator(&[
        ("OAUTH_OPERATOR_PROVIDER_TIMEOUT", PROVIDER_TIMEOUT),
        ("OAUTH_OPERATOR_DELETION_TIMEOUT", "3m"),
    ])?;

    // The fault phase, with changes of every kind landing in it.
    proxy.set_faults(faults());
    let start = Instant::now();
    let mut uids: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0..APPS {
        let app = env.apply_app(&app_yaml(i)).await?;
        uids.insert(i, app.uid().context("uid")?);
    }
    let changed: Vec<usize> = (0..5).collect();
    let secrets_deleted: Vec<usize> = (8..10).collect();
    let deleted: Vec<usize> = (20..APPS).collect();
    let at = |offset: Duration| tokio::time::sleep_until(start + offset);
    // Faults where they hurt most, ahead of the random ones: creates, updates and rotations,
    // deletions and reads carried out at Hydra whose answers are lost, cut or late.
    let forced = [
        (Outcome::Stalled, "POST", 1),
        (Outcome::ResetAfter, "POST", 1),
        (Outcome::Cut, "POST", 1),
        (Outcome::ErrorAfter, "POST", 1),
        (Outcome::ResetAfter, "PUT", 1),
        (Outcome::Cut, "PUT", 1),
        (Outcome::Stalled, "PUT", 1),
        (Outcome::ErrorAfter, "DELETE", 1),
        (Outcome::ResetAfter, "DELETE", 1),
        (Outcome::Cut, "GET", 1),
        (Outcome::ResetBefore, "GET", 1),
    ];
    for (outcome, method, times) in forced {
        proxy.force(outcome, method, "/admin/clients", times);
    }

    at(Duration::from_secs(6)).await;
    for &i in &changed {
        let patch = serde_json::json!({"spec": {"redirectUris": [redirect(i, 2)]}});
        env.apps()
            .patch(&name(i), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    // Rotations of three applications registered by now (at Hydra the Secret is written
    // before the create; a rotation asked for before the registration completes is answered
    // by the first secret).
    at(Duration::from_secs(8)).await;
    let mut rotated: Vec<usize> = Vec::new();
    let candidates: Vec<usize> = (5..20).filter(|i| !secrets_deleted.contains(i)).collect();
    while rotated.len() < 3 && start.elapsed() < Duration::from_secs(16) {
        for &i in &candidates {
            if rotated.len() < 3
                && !rotated.contains(&i)
                && env
                    .apps()
                    .get(&name(i))
                    .await?
                    .status
                    .as_ref()
                    .is_some_and(|s| s.synced_generation.is_some())
            {
                env.rotate(&name(i), "faults-1").await?;
                rotated.push(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        !rotated.is_empty(),
        "no application held credentials 16 s into the run"
    );
    at(Duration::from_secs(10)).await;
    for &i in &deleted {
        env.apps()
            .delete(&name(i), &DeleteParams::default())
            .await?;
    }
    at(THROTTLE_AT).await;
    proxy.throttle(THROTTLE_FOR, RETRY_AFTER_SECS);
    at(Duration::from_secs(18)).await;
    // A Secret deleted: recovered with a new secret (one that exists only once delivered).
    let mut secrets_deleted_done: Vec<usize> = Vec::new();
    for &i in &secrets_deleted {
        if env.secrets().get_opt(&secret_name(i)).await?.is_some() {
            env.secrets()
                .delete(&secret_name(i), &DeleteParams::default())
                .await?;
            secrets_deleted_done.push(i);
        }
    }
    at(FAULT_PHASE).await;
    let forced_left = proxy.forced_left();
    proxy.heal();
    let healed = proxy.now();
    let during: Vec<_> = proxy.log();
    let mut injected: BTreeMap<Outcome, usize> = BTreeMap::new();
    for r in &during {
        *injected.entry(r.outcome).or_default() += 1;
    }
    let ready_during = env
        .apps()
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|a| ready(a).is_some_and(|(s, _)| s == "True"))
        .count();
    eprintln!(
        "fault phase {FAULT_PHASE:?}: {} requests at the proxy {injected:?}; {ready_during} applications Ready at its end; \
         rotated {rotated:?}, Secrets deleted {secrets_deleted_done:?}; forced faults not used: {forced_left:?}",
        during.len()
    );

    // Converges once the faults stop.
    let remaining: Vec<usize> = (0..APPS).filter(|i| !deleted.contains(i)).collect();
    let converged = |a: &OAuthApplication| {
        let status = a.status.as_ref();
        let i: usize = a.name_any()[4..].parse().unwrap_or(usize::MAX);
        ready(a).is_some_and(|(s, _)| s == "True")
            && status.and_then(|s| s.observed_generation) == a.metadata.generation
            && (!rotated.contains(&i)
                || status.and_then(|s| s.last_rotation_token.as_deref()) == Some("faults-1"))
    };
    let heal_start = Instant::now();
    loop {
        let apps = env.apps().list(&ListParams::default()).await?.items;
        let done = apps.iter().filter(|a| converged(a)).count();
        let gone = deleted
            .iter()
            .all(|i| !apps.iter().any(|a| a.name_any() == name(*i)));
        if done == remaining.len() && gone {
            break;
        }
        if heal_start.elapsed() > CONVERGE_TIMEOUT {
            let pending: Vec<_> = apps
                .iter()
                .filter(|a| !converged(a))
                .map(|a| (a.name_any(), a.status.clone()))
                .collect();
            bail!("not converged {CONVERGE_TIMEOUT:?} after the faults stopped: {pending:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge_time = heal_start.elapsed();
    // A couple of resyncs with no faults: nothing changes any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, page) = op.get("/metrics").await?;
    ensure!(status == 200, "metrics: {status}");
    op.child
        .check_running()
        .context("the operator died during the run")?;

    let mut violations: Vec<String> = Vec::new();

    // Every Secret's credentials work at Hydra, and Hydra holds exactly one client per
    // application: the one its Secret names, with the spec's redirect URIs.
    let clients = hydra_clients(hydra).await?;
    let owned = |uid: &str| -> Vec<&serde_json::Value> {
        clients
            .iter()
            .filter(|c| c["metadata"]["oauth-operator.dev/owner-uid"] == uid)
            .collect()
    };
    for &i in &remaining {
        let secret = env.secrets().get(&secret_name(i)).await?;
        let d = data(&secret);
        let id = d.get("CLIENT_ID").cloned().unwrap_or_default();
        match support::client_credentials_token(&secret).await? {
            Ok(_) => {}
            Err(status) => violations.push(format!("{}: token refused ({status})", name(i))),
        }
        let mine = owned(&uids[&i]);
        let ids: Vec<&str> = mine
            .iter()
            .filter_map(|c| c["client_id"].as_str())
            .collect();
        if ids != [id.as_str()] {
            violations.push(format!(
                "{}: Hydra holds {ids:?} for it, its Secret names {id}",
                name(i)
            ));
        }
        let want = redirect(i, if changed.contains(&i) { 2 } else { 1 });
        if let Some(c) = mine.first()
            && c["redirect_uris"] != serde_json::json!([want])
        {
            violations.push(format!(
                "{}: redirect URIs {} at Hydra, {want} in the spec",
                name(i),
                c["redirect_uris"]
            ));
        }
    }
    for &i in &deleted {
        let left = owned(&uids[&i]);
        if !left.is_empty() {
            violations.push(format!(
                "{} was deleted, Hydra still holds {} client(s) for it",
                name(i),
                left.len()
            ));
        }
    }

    // No client-secret change that nobody asked for.
    for &i in &remaining {
        let values = history.values(&secret_name(i)).len();
        let asked =
            1 + usize::from(rotated.contains(&i)) + usize::from(secrets_deleted.contains(&i));
        if values > asked {
            violations.push(format!(
                "{}: its Secret held {values} client secrets, {asked} asked for",
                name(i)
            ));
        }
        if rotated.contains(&i) && values < 2 {
            violations.push(format!("{}: rotated but one secret only", name(i)));
        }
    }

    // The budget, counted at the proxy: never more than its requests in any period.
    let log = proxy.log();
    let busiest = max_in_window(&log, BUDGET_PERIOD);
    if busiest > BUDGET_REQUESTS {
        violations.push(format!(
            "{busiest} requests reached the proxy within {BUDGET_PERIOD:?}; the budget is {BUDGET_REQUESTS}"
        ));
    }
    // The budget did pace the operator: requests waited for it.
    let waited = metric(&page, "oauth_operator_rate_limit_wait_seconds_count");

    // After a 429, the whole provider waits its Retry-After (a request already in flight
    // when the answer came may still arrive: 500 ms of grace).
    let grace = Duration::from_millis(500);
    let pause = Duration::from_secs(RETRY_AFTER_SECS);
    let throttled: Vec<_> = log
        .iter()
        .filter(|r| r.outcome == Outcome::Throttled)
        .collect();
    for t in &throttled {
        let Some(answered) = t.answered else { continue };
        let early: Vec<_> = log
            .iter()
            .filter(|r| {
                r.at > answered + grace && r.at + Duration::from_millis(100) < answered + pause
            })
            .collect();
        if let Some(r) = early.first() {
            violations.push(format!(
                "a 429 answered at {answered:?} (Retry-After {RETRY_AFTER_SECS}) was followed by {} {} at {:?}",
                r.method, r.path, r.at
            ));
        }
    }

    // Per-object backoff, from the metrics: objects that kept failing waited 4 s and more.
    let retries = metric(&page, "oauth_operator_retry_delay_seconds_count");
    let under_4s = metric(
        &page,
        "oauth_operator_retry_delay_seconds_bucket{le=\"4.0\"}",
    );
    if retries - under_4s < 1.0 {
        violations.push(format!(
            "no retry delay of 4 s or more among {retries} retries: no backoff visible"
        ));
    }

    // The faults did happen (a test that injected none proves nothing).
    for kind in [
        Outcome::Error,
        Outcome::ErrorAfter,
        Outcome::ResetBefore,
        Outcome::ResetAfter,
        Outcome::Cut,
        Outcome::Stalled,
        Outcome::Throttled,
    ] {
        if injected.get(&kind).copied().unwrap_or(0) == 0 {
            violations.push(format!("no {kind:?} was injected"));
        }
    }

    let after: usize = log.iter().filter(|r| r.at >= healed).count();
    eprintln!(
        "FAULT_SEED={seed}: converged {converge_time:?} after the faults stopped ({after} requests since); \
         busiest {BUDGET_PERIOD:?} at the proxy: {busiest} requests (budget {BUDGET_REQUESTS}); \
         {} 429s; {waited} requests waited for the budget; {retries} retries, {} of them after 4 s or more; \
         Hydra clients of this test: {}",
        throttled.len(),
        retries - under_4s,
        uids.values().map(|u| owned(u).len()).sum::<usize>()
    );
    if !violations.is_empty() {
        bail!(
            "FAULT_SEED={seed}: {} violation(s):\n- {}\noperator log: {}",
            violations.len(),
            violations.join("\n- "),
            op.log.display()
        );
    }
    let seen: BTreeSet<&str> = log.iter().map(|r| r.method.as_str()).collect();
    ensure!(
        seen.contains("POST") && seen.contains("PUT") && seen.contains("DELETE"),
        "creates, updates and deletes all went through the proxy: {seen:?}"
    );
    Ok(())
}
