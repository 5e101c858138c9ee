//! The control plane fails under the operator: kube-apiserver is killed and restarted (etcd
//! keeps every object), then etcd is, each in the middle of registrations and rotations, while
//! a second writer keeps updating the same applications' labels and annotations (conflicts
//! with the operator's own writes). Once the control plane is back:
//! - the operator (never restarted) brings every application to Ready with its rotation
//!   carried out, and every Secret's credentials obtain a token;
//! - the emulator holds exactly one client per application, each held by exactly one Secret;
//! - no Secret held more client secrets than its rotations asked for;
//! - the second writer's last labels and annotations are on every application.
//!
//! The control plane is this binary's own (one test here): nothing else runs on it.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::ResourceExt as _;
use kube::api::ListParams;
use oauth_operator::api::OAuthApplication;
use support::{Env, SecretHistory, data, ready};
use testenv::ControlPlane;
use tokio::time::Instant;

/// Applications per phase (one phase per restart).
const PER_PHASE: usize = 30;
/// How long each process stays down.
const DOWN: Duration = Duration::from_secs(4);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Waits until every application in `names` is Ready at its generation, with its rotation
/// token (if any) carried out.
async fn converge(
    env: &Env,
    names: &[String],
    rotations: &BTreeMap<String, String>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let apps = env.apps().list(&ListParams::default()).await;
        let Ok(apps) = apps else {
            // The apiserver may still be settling.
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let done = |a: &OAuthApplication| {
            let status = a.status.as_ref();
            ready(a).is_some_and(|(s, _)| s == "True")
                && status.and_then(|s| s.observed_generation) == a.metadata.generation
                && rotations.get(&a.name_any()).is_none_or(|t| {
                    status.and_then(|s| s.last_rotation_token.as_deref()) == Some(t.as_str())
                })
        };
        let pending: Vec<_> = names
            .iter()
            .filter(|n| !apps.items.iter().any(|a| &a.name_any() == *n && done(a)))
            .collect();
        if pending.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > CONVERGE_TIMEOUT {
            let statuses: Vec<_> = apps
                .items
                .iter()
                .filter(|a| pending.contains(&&a.name_any()))
                .map(|a| (a.name_any(), a.status.clone()))
                .collect();
            bail!("not converged after {CONVERGE_TIMEOUT:?}: {statuses:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn apiserver_and_etcd_restarts_and_a_second_writer() -> Result<()> {
    let env = Env::new("restarts").await?;
    let control_plane = ControlPlane::shared()?;
    let clerk = env.clerk.handle();
    let history = SecretHistory::start(&env).await?;
    let log_filter = std::env::var("RESTARTS_RUST_LOG")
        .unwrap_or_else(|_| "info,oauth_operator=debug".to_string());
    let mut op = env.start_operator(&[
        ("OAUTH_OPERATOR_PROVIDER_TIMEOUT", "3s"),
        ("RUST_LOG", log_filter.as_str()),
    ])?;
    // Provider calls take a while, so restarts land between a provider's answer and the
    // operator recording it.
    clerk.set_delay(Some(Duration::from_millis(150)));

    // The second writer: labels and annotations of every application, as fast as it goes.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let failed_writes = Arc::new(AtomicU64::new(0));
    let last_round = Arc::new(AtomicU64::new(0));
    // Per application, the last round whose update the apiserver accepted.
    let written: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let writer = {
        let apps = env.apps();
        let (stop, writes, failed, last_round, written) = (
            stop.clone(),
            writes.clone(),
            failed_writes.clone(),
            last_round.clone(),
            written.clone(),
        );
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let Ok(list) = apps.list(&ListParams::default()).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for app in list.items {
                    // A plain update with the resourceVersion read: it conflicts with every
                    // write the operator made in between (and the operator's with it).
                    let mut app = app;
                    app.labels_mut()
                        .insert("example.com/round".into(), round.to_string());
                    app.annotations_mut()
                        .insert("example.com/touched-by".into(), format!("writer-{round}"));
                    app.status = None;
                    match apps
                        .replace(&app.name_any(), &Default::default(), &app)
                        .await
                    {
                        Ok(_) => {
                            writes.fetch_add(1, Ordering::Relaxed);
                            written.lock().unwrap().insert(app.name_any(), round);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                last_round.store(round, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut names: Vec<String> = Vec::new();
    let mut rotations: BTreeMap<String, String> = BTreeMap::new();
    let mut report: Vec<String> = Vec::new();
    for (phase, what) in ["kube-apiserver", "etcd"].into_iter().enumerate() {
        // Registrations under way, and rotations of applications from the phase before.
        for i in 0..PER_PHASE {
            let name = format!("{}-{i:02}", if phase == 0 { "a" } else { "b" });
            env.apply_app(&app_yaml(&name)).await?;
            names.push(name);
        }
        if phase > 0 {
            for name in names.iter().take(3) {
                let token = format!("restart-{phase}");
                env.rotate(name, &token).await?;
                rotations.insert(name.clone(), token);
            }
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let ready_before = env
            .apps()
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|a| ready(a).is_some_and(|(s, _)| s == "True"))
            .count();
        let unavailable = tokio::task::spawn_blocking(move || match phase {
            0 => control_plane.restart_apiserver(DOWN),
            _ => control_plane.restart_etcd(DOWN),
        })
        .await??;
        op.child
            .check_running()
            .with_context(|| format!("the operator exited while {what} was down"))?;
        let converged = converge(&env, &names, &rotations).await?;
        report.push(format!(
            "{what} killed with {ready_before} of {} applications Ready, unavailable for {unavailable:?}; \
             all Ready {converged:?} after it was back",
            names.len()
        ));
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    // A resync or two with the second writer gone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    op.child
        .check_running()
        .context("the operator exited during the run")?;

    let mut violations: Vec<String> = Vec::new();
    let last = last_round.load(Ordering::Relaxed);
    let written = written.lock().unwrap().clone();
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    for name in &names {
        let app = env.apps().get(name).await?;
        // The operator's writes never undo the second writer's.
        let round = written.get(name).map(u64::to_string);
        if round.is_none()
            || app.labels().get("example.com/round") != round.as_ref()
            || app.annotations().get("example.com/touched-by")
                != round.as_ref().map(|r| format!("writer-{r}")).as_ref()
        {
            violations.push(format!(
                "{name}: the second writer's last accepted round ({round:?}) is not on it: labels {:?}",
                app.labels()
            ));
        }
        let secret = env.secrets().get(&format!("{name}-oauth")).await?;
        let d = data(&secret);
        let id = d.get("CLIENT_ID").cloned().unwrap_or_default();
        if let Some(other) = held.insert(id.clone(), name.clone()) {
            violations.push(format!("{name} and {other} hold the same client {id}"));
        }
        if let Err(e) = support::assert_token(&secret, &redirect_uri(name)).await {
            violations.push(format!("{name}: no token: {e:#}"));
        }
        let values = history.values(&format!("{name}-oauth")).len();
        let asked = 1 + usize::from(rotations.contains_key(name));
        if values != asked {
            violations.push(format!(
                "{name}: its Secret held {values} client secrets, {asked} asked for"
            ));
        }
    }
    let remote = clerk.apps();
    if remote.len() != names.len() {
        violations.push(format!(
            "the emulator holds {} clients for {} applications",
            remote.len(),
            names.len()
        ));
    }
    for a in &remote {
        if !held.contains_key(&a.client_id) {
            violations.push(format!(
                "client {} ({}) is held by no Secret",
                a.client_id, a.name
            ));
        }
    }
    let (writes, failed) = (
        writes.load(Ordering::Relaxed),
        failed_writes.load(Ordering::Relaxed),
    );
    eprintln!(
        "{}; the second writer: {writes} updates, {failed} refused (conflicts and the outages), {last} rounds; \
         emulator: {} clients",
        report.join("; "),
        remote.len()
    );
    ensure!(
        violations.is_empty(),
        "{} violation(s):\n- {}\noperator log: {}",
        violations.len(),
        violations.join("\n- "),
        op.log.display()
    );
    ensure!(
        writes > 0 && failed > 0,
        "the second writer wrote and met conflicts"
    );
    Ok(())
}
