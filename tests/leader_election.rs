//! Two operator replicas against one control plane and one Clerk emulator, electing a leader
//! on a Lease in the operator namespace:
//! - only the leader reconciles (each replica's own provider request counter proves it); a
//!   SIGKILL of the leader in the middle of registering 50 applications hands the work to the
//!   standby, which finishes with zero duplicate clients (takeover time printed);
//! - a leader paused (SIGSTOP) past its lease, with a provider call of its own in flight, makes
//!   no provider write once resumed (the fence) and exits, while the standby registers the
//!   application once;
//! - SIGTERM releases the Lease, so the standby takes over at once rather than after expiry;
//! - the leader killed six times, each time replaced, while applications register, rotate,
//!   change and lose their Secrets: the same end state as without kills.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use clerk_emulator::routes;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::{Env, Operator, data};
use tokio::time::Instant;

/// Short leases keep the test quick; the takeover bounds below scale with it.
const LEASE_SECONDS: u64 = 6;
const LEASE_NAME: &str = "oauth-operator";

fn app_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {{name: {name}}}
spec:
  providerRef: {{name: clerk}}
  redirectUris: ["https://{name}.example.com/callback"]
  scopes: [profile, email]
"#
    )
}

/// A replica. A short provider timeout: a create cut short by a kill is waited for (before
/// the next replica registers again) for a few seconds rather than a minute.
fn replica(env: &Env, identity: &str) -> Result<Operator> {
    let lease = format!("{LEASE_SECONDS}s");
    env.start_operator(&[
        ("POD_NAME", identity),
        ("OAUTH_OPERATOR_LEASE_DURATION", lease.as_str()),
        ("OAUTH_OPERATOR_PROVIDER_TIMEOUT", "3s"),
    ])
}

/// Waits until the application is Ready, its credentials in its Secret.
async fn registered(env: &Env, name: &str) -> Result<()> {
    env.wait_app(name, "registered", |a| {
        support::ready(a).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    Ok(())
}

/// Requests that change something at the emulator, per method and route.
fn writes(clerk: &clerk_emulator::EmulatorHandle) -> BTreeMap<(String, String), u64> {
    clerk
        .request_counts()
        .into_iter()
        .filter(|c| c.method != "GET" && !c.route.starts_with("/oauth/"))
        .map(|c| ((c.method, c.route), c.count))
        .collect()
}

/// The Lease's holder, if any.
async fn holder(env: &Env) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    Ok(leases
        .get_opt(LEASE_NAME)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

async fn wait_holder(env: &Env, identity: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if holder(env).await?.as_deref() == Some(identity) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "{identity} does not hold the Lease after {timeout:?} (holder: {:?})",
                holder(env).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of a counter family in a replica's /metrics.
async fn metric_sum(op: &Operator, family: &str) -> Result<f64> {
    let (status, body) = op.get("/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body
        .lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v))
}

fn signal(op: &Operator, sig: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &op.child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill {sig} failed");
    Ok(())
}

/// Every application Ready, each Secret holding the live secret of its own client, and the
/// emulator holding exactly one client per application.
async fn assert_one_client_each(env: &Env, names: &[String]) -> Result<()> {
    let clerk = env.clerk.handle();
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in names {
        env.wait_ready(name).await?;
        let secret = env
            .wait_secret(&format!("{name}-oauth"), |s| {
                data(s).contains_key("CLIENT_SECRET")
            })
            .await?;
        let d = data(&secret);
        let id = d.get("CLIENT_ID").context("CLIENT_ID")?.clone();
        ensure!(
            clerk.secret_is_valid(&id, d.get("CLIENT_SECRET").context("CLIENT_SECRET")?),
            "{name}: the Secret does not hold the live secret of {id}"
        );
        held.entry(id).or_default().push(name.clone());
    }
    let remote = clerk.apps();
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &remote {
        *by_name.entry(a.name.as_str()).or_default() += 1;
    }
    ensure!(
        remote.len() == names.len(),
        "{} clients at the emulator for {} applications: {by_name:?}",
        remote.len(),
        names.len()
    );
    let remote_ids: BTreeSet<&str> = remote.iter().map(|a| a.client_id.as_str()).collect();
    for (id, holders) in &held {
        ensure!(holders.len() == 1, "client {id} held by {holders:?}");
        ensure!(
            remote_ids.contains(id.as_str()),
            "{holders:?} hold unknown client {id}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_finishes_after_sigkill() -> Result<()> {
    let env = Env::new("leader-kill").await?;
    let clerk = env.clerk.handle();
    // Slow enough that the kill lands in the middle of the registrations.
    clerk.set_delay(Some(Duration::from_millis(150)));
    let mut a = replica(&env, "replica-a")?;
    wait_holder(&env, "replica-a", Duration::from_secs(30)).await?;
    let b = replica(&env, "replica-b")?;
    // B up and serving (a standby is ready) before any work arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.get("/readyz").await.map(|r| r.0).ok() != Some(200) {
        ensure!(Instant::now() < deadline, "replica-b never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let names: Vec<String> = (0..50).map(|i| format!("app-{i:02}")).collect();
    for name in &names {
        env.apply_app(&app_yaml(name)).await?;
    }
    // Kill once part of the work is done.
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let ready = env
            .apps()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|app| support::ready(app).is_some_and(|(s, _)| s == "True"))
            .count();
        if ready >= 10 {
            ensure!(
                ready < names.len(),
                "all applications Ready before the kill"
            );
            eprintln!("{ready} of {} Ready at the kill", names.len());
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "10 applications not Ready in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_requests = metric_sum(&a, "oauth_operator_provider_requests_total").await?;
    let b_requests = metric_sum(&b, "oauth_operator_provider_requests_total").await?;
    let b_reconciles = metric_sum(&b, "oauth_operator_reconciles_total").await?;
    eprintln!("before the kill: leader {a_requests:.0} provider requests, standby {b_requests:.0}");
    ensure!(a_requests > 0.0, "the leader made no provider request");
    ensure!(
        b_requests == 0.0 && b_reconciles == 0.0,
        "the standby reconciled ({b_reconciles} passes, {b_requests} provider requests)"
    );

    a.child.kill();
    let killed = Instant::now();
    let takeover = wait_holder(&env, "replica-b", Duration::from_secs(4 * LEASE_SECONDS)).await?;
    eprintln!(
        "takeover after SIGKILL: {:.1}s (lease {LEASE_SECONDS}s)",
        takeover.as_secs_f64()
    );
    // The standby waits for the lease to expire by its own clock, and checks five times per
    // lease duration.
    ensure!(
        takeover < Duration::from_secs(2 * LEASE_SECONDS + 3),
        "takeover took {takeover:?}"
    );
    clerk.set_delay(None);
    assert_one_client_each(&env, &names).await?;
    eprintln!(
        "all {} Ready {:.1}s after the kill",
        names.len(),
        killed.elapsed().as_secs_f64()
    );
    ensure!(
        metric_sum(&b, "oauth_operator_provider_requests_total").await? > 0.0,
        "the new leader made no provider request"
    );
    Ok(())
}

#[tokio::test]
async fn a_paused_leader_makes_no_provider_write_after_losing_the_lease() -> Result<()> {
    let env = Env::new("leader-pause").await?;
    let clerk = env.clerk.handle();
    let mut a = replica(&env, "replica-a")?;
    wait_holder(&env, "replica-a", Duration::from_secs(30)).await?;
    // The standby starts once A is paused, so the call below is A's. A idle first (its
    // provider checked), so that A's next call is for the application.
    let mut last = clerk.total_requests();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = clerk.total_requests();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    // Every Backend API request now waits 3 s before it is handled: A's first call for the
    // application (a lookup, or the create itself) is in flight when A is paused.
    clerk.set_delay(Some(Duration::from_secs(3)));
    let before = clerk.total_requests();
    env.apply_app(&app_yaml("paused")).await?;
    let deadline = Instant::now() + support::TIMEOUT;
    while clerk.total_requests() == before {
        ensure!(
            Instant::now() < deadline,
            "the leader never called the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&a, "-STOP")?;
    let paused_at = Instant::now();
    clerk.set_delay(None);
    let in_flight = clerk
        .requests()
        .last()
        .map(|r| format!("{} {}", r.method, r.path));
    eprintln!("A paused with {in_flight:?} in flight");

    let b = replica(&env, "replica-b")?;
    let takeover = wait_holder(&env, "replica-b", Duration::from_secs(4 * LEASE_SECONDS)).await?;
    eprintln!(
        "replica-b took the Lease {:.1}s into A's pause",
        (paused_at.elapsed()).as_secs_f64()
    );
    env.wait_ready("paused").await?;
    // One create in all: A's (in flight at the pause, then adopted by B) or B's.
    let creates = clerk.request_count("POST", routes::OAUTH_APPLICATIONS);
    ensure!(creates == 1, "{creates} creates for one application");
    // B settled (its rename after the create done, a resync or two).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = writes(&clerk);
    let log_len = a.logs().len();

    // A resumes with the answer to its call in hand and a stale view of the application.
    signal(&a, "-CONT")?;
    a.wait_exit(Duration::from_secs(30))
        .await
        .context("a resumed leader that lost its lease must exit")?;
    let after = a.logs()[log_len..].to_string();
    ensure!(
        after.contains("lost the leader lease") || after.contains("lost lease"),
        "A did not report losing the lease: {after}"
    );
    let fenced = after.contains("provider write not sent");
    eprintln!(
        "A after resuming: {} (takeover {:.1}s)",
        if fenced {
            "a provider write was stopped by the fence"
        } else {
            "stopped before attempting a provider write"
        },
        takeover.as_secs_f64()
    );
    // Quiet time for anything A might still have sent, then: no write since B settled, one
    // client.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = writes(&clerk);
    ensure!(
        now == settled,
        "provider writes after the paused leader resumed: before {settled:?}, after {now:?}"
    );
    assert_one_client_each(&env, &["paused".to_string()]).await?;
    drop(b);
    Ok(())
}

#[tokio::test]
async fn sigterm_releases_the_lease_to_the_standby_at_once() -> Result<()> {
    let env = Env::new("leader-term").await?;
    // A long lease: a takeover well under it can only come from the release.
    let a = env.start_operator(&[
        ("POD_NAME", "replica-a"),
        ("OAUTH_OPERATOR_LEASE_DURATION", "30s"),
    ])?;
    wait_holder(&env, "replica-a", Duration::from_secs(30)).await?;
    env.apply_app(&app_yaml("term")).await?;
    env.wait_ready("term").await?;
    let b = env.start_operator(&[
        ("POD_NAME", "replica-b"),
        ("OAUTH_OPERATOR_LEASE_DURATION", "30s"),
    ])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        holder(&env).await?.as_deref() == Some("replica-a"),
        "the standby took a held lease"
    );
    let mut a = a;
    signal(&a, "-TERM")?;
    let start = Instant::now();
    a.wait_exit(Duration::from_secs(20)).await?;
    let status = a.child.exit_status()?.and_then(|s| s.code());
    ensure!(status == Some(0), "SIGTERM exit status {status:?}");
    ensure!(a.logs().contains("released lease"), "no release in A's log");
    let takeover = wait_holder(&env, "replica-b", Duration::from_secs(20)).await?;
    let total = start.elapsed();
    eprintln!(
        "takeover after SIGTERM: {:.1}s (lease 30s)",
        total.as_secs_f64()
    );
    ensure!(
        total < Duration::from_secs(15),
        "took {total:?}: {takeover:?}"
    );
    // The new leader works.
    env.apply_app(&app_yaml("after")).await?;
    env.wait_ready("after").await?;
    assert_one_client_each(&env, &["term".to_string(), "after".to_string()]).await?;
    drop(b);
    Ok(())
}

/// A Lease deleted under its holder (by hand): the leader creates it again and keeps leading
/// (no exit, no gap in reconciling), as client-go's elector does.
#[tokio::test]
async fn a_deleted_lease_is_taken_back_by_its_holder() -> Result<()> {
    let env = Env::new("leader-del").await?;
    let mut a = env.start_operator(&[
        ("POD_NAME", "replica-a"),
        ("OAUTH_OPERATOR_LEASE_DURATION", "6s"),
    ])?;
    wait_holder(&env, "replica-a", Duration::from_secs(30)).await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    leases
        .delete("oauth-operator", &kube::api::DeleteParams::default())
        .await?;
    wait_holder(&env, "replica-a", Duration::from_secs(10)).await?;
    // Well past a lease: still running, still leading, still reconciling.
    tokio::time::sleep(Duration::from_secs(8)).await;
    a.child.check_running()?;
    ensure!(holder(&env).await?.as_deref() == Some("replica-a"));
    env.apply_app(&app_yaml("after")).await?;
    env.wait_ready("after").await?;
    ensure!(
        a.logs().contains("created it again"),
        "the log says what happened: {}",
        a.log.display()
    );
    Ok(())
}

/// The leader killed (SIGKILL) six times while 100 applications register, five rotate, ten
/// change their redirect URIs and three lose their Secret,
/// each killed replica replaced by a new one (a new pod: a new identity), so that two
/// replicas always run: every takeover finishes the work of the last leader, and the end
/// state is that of a run without kills: every application Ready with its rotation carried
/// out, one client each holding the Secret's live secret, and no Secret that held more client
/// secrets than its rotations asked for.
#[tokio::test]
async fn repeated_leader_kills_leave_one_client_each_and_no_unrequested_secret() -> Result<()> {
    const KILLS: usize = 6;
    const APPS: usize = 100;
    let env = Env::new("leader-kills").await?;
    let clerk = env.clerk.handle();
    let history = support::SecretHistory::start(&env).await?;
    // Slow enough that kills land in the middle of registrations and rotations.
    clerk.set_delay(Some(Duration::from_millis(100)));
    let mut next_id = 0;
    let mut start = |env: &Env| -> Result<(String, Operator)> {
        let identity = format!("replica-{next_id}");
        next_id += 1;
        Ok((identity.clone(), replica(env, &identity)?))
    };
    let mut replicas: Vec<(String, Operator)> = vec![start(&env)?];
    wait_holder(&env, "replica-0", Duration::from_secs(30)).await?;
    replicas.push(start(&env)?);

    let names: Vec<String> = (0..APPS).map(|i| format!("app-{i:03}")).collect();
    let rotated: Vec<&String> = names.iter().step_by(APPS / 5).collect();
    let changed: Vec<&String> = names.iter().skip(1).step_by(APPS / 10).collect();
    let secrets_deleted: Vec<&String> = names.iter().skip(2).step_by(APPS / 3).collect();
    let mut applied = 0;
    let mut takeovers: Vec<Duration> = Vec::new();
    let mut ready_at_kill: Vec<usize> = Vec::new();
    for kill in 0..KILLS {
        // Work keeps arriving: a third of the applications before each of the first kills,
        // the rotations before the fourth.
        let upto = (applied + APPS.div_ceil(3)).min(APPS);
        for name in &names[applied..upto] {
            env.apply_app(&app_yaml(name)).await?;
        }
        applied = upto;
        match kill {
            3 => {
                for name in &rotated {
                    // A rotation asked of an application not registered yet is answered by its
                    // registration (one secret, as designed); this one asks for a second.
                    registered(&env, name).await?;
                    env.rotate(name, "leader-kills").await?;
                }
            }
            4 => {
                for name in &changed {
                    let patch = serde_json::json!({"spec": {"redirectUris": [format!("https://{name}.example.com/v2")]}});
                    env.apps()
                        .patch(name, &Default::default(), &kube::api::Patch::Merge(&patch))
                        .await?;
                }
            }
            5 => {
                for name in &secrets_deleted {
                    registered(&env, name).await?;
                    env.secrets()
                        .delete(&format!("{name}-oauth"), &Default::default())
                        .await?;
                }
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rand::random_range(500..2500))).await;
        let leader = holder(&env).await?.context("no Lease holder")?;
        let index = replicas
            .iter()
            .position(|(id, _)| *id == leader)
            .with_context(|| format!("the holder {leader} is not a running replica"))?;
        let ready = env
            .apps()
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|app| support::ready(app).is_some_and(|(s, _)| s == "True"))
            .count();
        ready_at_kill.push(ready);
        let (_, mut op) = replicas.remove(index);
        op.child.kill();
        drop(op);
        let standby = replicas[0].0.clone();
        let took = wait_holder(&env, &standby, Duration::from_secs(4 * LEASE_SECONDS)).await?;
        takeovers.push(took);
        replicas.push(start(&env)?);
    }
    clerk.set_delay(None);
    assert_one_client_each(&env, &names).await?;
    for name in &rotated {
        env.wait_app(name, "the rotation carried out", |a| {
            a.status
                .as_ref()
                .and_then(|s| s.last_rotation_token.as_deref())
                == Some("leader-kills")
        })
        .await?;
    }
    let remote = clerk.apps();
    for name in &changed {
        let id = env.apps().get(name).await?.status.and_then(|s| s.client_id);
        let client = remote
            .iter()
            .find(|a| Some(&a.client_id) == id.as_ref())
            .with_context(|| format!("{name}: its client"))?;
        ensure!(
            client.redirect_uris == [format!("https://{name}.example.com/v2")],
            "{name}: redirect URIs {:?} at the emulator",
            client.redirect_uris
        );
    }
    for name in &names {
        let values = history.values(&format!("{name}-oauth")).len();
        let asked =
            1 + usize::from(rotated.contains(&name)) + usize::from(secrets_deleted.contains(&name));
        ensure!(
            values == asked,
            "{name}: its Secret held {values} client secrets, {asked} asked for"
        );
    }
    eprintln!(
        "{KILLS} leader kills (Ready at each: {ready_at_kill:?}); takeovers {:?}; {APPS} applications, \
         {} rotations, {} spec changes, {} Secrets deleted: one client each, no unrequested secret",
        takeovers
            .iter()
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        rotated.len(),
        changed.len(),
        secrets_deleted.len()
    );
    Ok(())
}
