//! GitOps proof of the status: the live `OAuthApplication`, read back from a real
//! kube-apiserver while the operator works against the Clerk emulator, judged at each step by
//! kstatus (`sigs.k8s.io/cli-utils` `status.Compute`, what Flux uses) and by the Argo CD health
//! check `deploy/argocd/health.lua` (run in gopher-lua as Argo CD runs it), both through the
//! `kstatus` helper of testenv/kstatus; and `kubectl wait --for=condition=Ready`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use clerk_emulator::routes;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use oauth_operator::api::OAuthApplication;
use support::{Env, ready};
use tokio::io::AsyncWriteExt as _;

const HEALTH_LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua");
/// How long the emulator holds the create or update call: the window in which the status
/// must read as in progress.
const PROVIDER_DELAY: Duration = Duration::from_secs(4);

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

/// The `kstatus` helper, built once per test binary with `go build` into the target dir.
fn kstatus_bin() -> Result<&'static Path> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("testenv/kstatus");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kstatus");
        let started = Instant::now();
        let built = std::process::Command::new("go")
            .args(["build", "-mod=readonly", "-trimpath", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&module)
            .output()
            .map_err(|e| format!("running go build in {}: {e}", module.display()))?;
        if !built.status.success() {
            return Err(format!(
                "go build in {} failed: {}",
                module.display(),
                String::from_utf8_lossy(&built.stderr)
            ));
        }
        eprintln!(
            "gitops_status: built {} in {:.1?}",
            out.display(),
            started.elapsed()
        );
        Ok(out)
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `{status, message}` as the helper prints it.
#[derive(Debug, serde::Deserialize)]
struct Verdict {
    status: String,
    message: String,
}

async fn run_kstatus(args: &[&str], object: &[u8]) -> Result<Verdict> {
    let mut child = tokio::process::Command::new(kstatus_bin()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(object).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .context("kstatus did not answer")??;
    ensure!(
        out.status.success(),
        "kstatus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("kstatus printed {}", String::from_utf8_lossy(&out.stdout)))
}

/// Both verdicts on the live object as the apiserver serves it (the raw JSON of a GET).
struct Judgement {
    kstatus: Verdict,
    argo: Verdict,
    object: serde_json::Value,
}

impl Judgement {
    fn assert(&self, kstatus: &str, argo: &str) -> Result<()> {
        ensure!(
            self.kstatus.status == kstatus && self.argo.status == argo,
            "expected kstatus {kstatus} / Argo {argo}, got kstatus {:?} / Argo {:?} for status {}",
            self.kstatus,
            self.argo,
            self.object["status"]
        );
        Ok(())
    }
}

async fn judge(env: &Env, name: &str) -> Result<Judgement> {
    let request = http::Request::get(format!(
        "/apis/oauth-operator.dev/v1alpha1/namespaces/{}/oauthapplications/{name}",
        env.ns
    ))
    .body(Vec::new())?;
    let raw = env.client.request_text(request).await?;
    let kstatus = run_kstatus(&["compute"], raw.as_bytes()).await?;
    let argo = run_kstatus(&["argo-health", "--script", HEALTH_LUA], raw.as_bytes()).await?;
    Ok(Judgement {
        kstatus,
        argo,
        object: serde_json::from_str(&raw)?,
    })
}

/// `kubectl wait oauthapp/NAME --for=condition=Ready` with the testenv's kubectl: whether it
/// succeeded, and how long it took.
async fn kubectl_wait_ready(env: &Env, name: &str, timeout: &str) -> Result<(bool, Duration)> {
    let kubectl = testenv::testenv_dir()?.join("bin/kubectl");
    let started = Instant::now();
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(env.cp.kubeconfig_path())
        .args(["-n", &env.ns, "wait", &format!("oauthapplication/{name}")])
        .args(["--for=condition=Ready", &format!("--timeout={timeout}")])
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", kubectl.display()))?;
    let elapsed = started.elapsed();
    eprintln!(
        "gitops_status: kubectl wait {name} -> {} in {elapsed:.1?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((out.status.success(), elapsed))
}

fn condition<'a>(app: &'a OAuthApplication, type_: &str) -> Option<&'a str> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// Registration (create held at Clerk), Ready, a spec change (update held at Clerk), Ready
/// again: kstatus InProgress -> Current -> InProgress -> Current, Argo CD Progressing ->
/// Healthy -> Progressing -> Healthy, and `kubectl wait` returns once the new generation is Ready.
#[tokio::test]
async fn status_reads_in_progress_then_current_through_create_and_update() -> Result<()> {
    kstatus_bin()?;
    let env = Env::new("gitops").await?;
    let t0 = Instant::now();

    // Before the operator has seen it: no status at all. kstatus cannot tell such an object
    // from one that has no status to report and calls it Current; the Argo CD check waits.
    env.apply_app(&app_yaml("web")).await?;
    let fresh = judge(&env, "web").await?;
    fresh.assert("Current", "Progressing")?;
    ensure!(fresh.object.get("status").is_none());

    // Registering: the create call is held at Clerk.
    env.clerk
        .delay_next(1, "POST", routes::OAUTH_APPLICATIONS, PROVIDER_DELAY);
    let _op = env.start_operator(&[])?;
    env.wait_app("web", "Reconciling=True (Registering)", |a| {
        condition(a, "Reconciling") == Some("True")
    })
    .await?;
    let t_registering = t0.elapsed();
    let registering = judge(&env, "web").await?;
    registering.assert("InProgress", "Progressing")?;
    // kstatus' rule: the status says which generation it describes, in progress too.
    ensure!(
        registering.object["status"]["observedGeneration"]
            == registering.object["metadata"]["generation"],
        "observedGeneration while registering: {}",
        registering.object["status"]
    );
    ensure!(
        registering.argo.message.contains("Registering"),
        "Argo {:?}, kstatus {:?}, status {}",
        registering.argo,
        registering.kstatus,
        registering.object["status"]
    );
    ensure!(
        env.clerk.apps().is_empty(),
        "the create call is still held: nothing registered yet"
    );

    // Ready.
    let app = env.wait_ready("web").await?;
    let t_ready = t0.elapsed();
    assert_eq!(app.metadata.generation, Some(1));
    let current = judge(&env, "web").await?;
    current.assert("Current", "Healthy")?;
    let (ok, wait_ready) = kubectl_wait_ready(&env, "web", "30s").await?;
    ensure!(
        ok,
        "kubectl wait --for=condition=Ready failed on a Ready application"
    );

    // A spec change, its update held at Clerk: generation 2 is in progress until applied.
    env.clerk
        .delay_next(1, "PATCH", routes::OAUTH_APPLICATION, PROVIDER_DELAY);
    let patch = serde_json::json!({"spec": {"redirectUris": [
        "https://web.example.com/callback", "https://web.example.com/cb2"
    ]}});
    let t_patch = Instant::now();
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let updating = judge(&env, "web").await?;
    updating.assert("InProgress", "Progressing")?;
    ensure!(updating.object["metadata"]["generation"] == 2);
    // kubectl wait, started while generation 2 is in flight, must not take the Ready of
    // generation 1: it returns once Ready describes generation 2.
    let (ok, wait_update) = kubectl_wait_ready(&env, "web", "60s").await?;
    ensure!(
        ok,
        "kubectl wait --for=condition=Ready failed after the spec change"
    );
    let after_wait = judge(&env, "web").await?;
    after_wait.assert("Current", "Healthy")?;
    let status = &after_wait.object["status"];
    ensure!(
        status["observedGeneration"] == 2 && status["syncedGeneration"] == 2,
        "kubectl wait returned before generation 2 was applied: {status}"
    );
    let t_update = t_patch.elapsed();
    ensure!(
        t_update >= PROVIDER_DELAY - Duration::from_millis(500),
        "the update was held {PROVIDER_DELAY:?} at Clerk, yet it was Ready after {t_update:?}"
    );
    ensure!(env.clerk.apps()[0].redirect_uris.len() == 2);

    eprintln!(
        "gitops_status: no status: kstatus {:?} / Argo {:?}; Registering seen at {t_registering:.1?} \
         (InProgress/Progressing); Ready at {t_ready:.1?} (Current/Healthy, kubectl wait {wait_ready:.1?}); \
         spec change: InProgress/Progressing, kubectl wait returned after {wait_update:.1?}, \
         generation 2 Current/Healthy {t_update:.1?} after the patch (update held {PROVIDER_DELAY:?})",
        fresh.kstatus.status, fresh.argo.status
    );
    Ok(())
}

/// A foreign Secret with the application's Secret name, created first: SecretConflict, a
/// permanent failure: kstatus Failed, Argo CD Degraded, and `kubectl wait` times out.
#[tokio::test]
async fn secret_conflict_reads_failed_and_degraded() -> Result<()> {
    kstatus_bin()?;
    let env = Env::new("gitops-conflict").await?;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken-oauth"}, "stringData": {"CLIENT_SECRET": "not yours"}
    }))?;
    env.secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    let _op = env.start_operator(&[])?;
    let t0 = Instant::now();
    env.apply_app(&app_yaml("taken")).await?;
    let app = env.wait_reason("taken", "SecretConflict").await?;
    let t_failed = t0.elapsed();
    assert_eq!(condition(&app, "Stalled"), Some("True"));
    assert_eq!(ready(&app).map(|(s, _)| s), Some("False".to_string()));
    let failed = judge(&env, "taken").await?;
    failed.assert("Failed", "Degraded")?;
    ensure!(
        failed.argo.message.starts_with("SecretConflict: "),
        "Argo message: {}",
        failed.argo.message
    );
    ensure!(
        !failed.kstatus.message.is_empty(),
        "kstatus gives the operator's message"
    );
    ensure!(env.clerk.apps().is_empty(), "nothing was registered");
    let (ok, _) = kubectl_wait_ready(&env, "taken", "3s").await?;
    ensure!(
        !ok,
        "kubectl wait --for=condition=Ready succeeded on a SecretConflict"
    );
    // Still failed (the operator does not flap it to in progress).
    judge(&env, "taken").await?.assert("Failed", "Degraded")?;
    eprintln!(
        "gitops_status: SecretConflict seen at {t_failed:.1?}: kstatus Failed ({}), Argo Degraded ({})",
        failed.kstatus.message, failed.argo.message
    );
    Ok(())
}
