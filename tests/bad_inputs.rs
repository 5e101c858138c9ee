//! The bad-input catalogue (`tests/bad-inputs/*.yaml`): every manifest is applied with
//! `kubectl apply` to a real apiserver with the operator running, and must meet the outcome
//! its first line names:
//!
//! - `# expect: rejected: <fragment>`: `kubectl apply` fails, and its message has `<fragment>`;
//! - `# expect: condition: <Reason>[: <fragment>]`: accepted, then the application's `Ready`
//!   condition is `False` with that reason (and a message with `<fragment>`).
//!
//! `${NS}` in a manifest is the test's namespace. Afterwards: no bad input made a provider
//! change anything (the Clerk emulator saw no write, the stand-in Hydra admin API nothing but
//! reads), the operator is still running and never panicked, and the foreign Secret an input
//! tries to take over is unchanged.

mod support;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use oauth_operator::api::OAuthApplication;
use support::{Env, ready};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad-inputs");

#[derive(Debug)]
enum Expect {
    Rejected(String),
    Condition { reason: String, fragment: String },
}

struct Case {
    file: String,
    name: String,
    manifest: String,
    expect: Expect,
}

fn catalogue(ns: &str) -> Result<Vec<Case>> {
    let mut files: Vec<_> = std::fs::read_dir(DIR)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .context("name")?
            .to_string();
        let text = std::fs::read_to_string(&path)?;
        let (first, manifest) = text.split_once('\n').context("two lines at least")?;
        let expect = first
            .strip_prefix("# expect: ")
            .with_context(|| format!("{file}: the first line is `# expect: ...`"))?;
        let expect = if let Some(fragment) = expect.strip_prefix("rejected: ") {
            Expect::Rejected(fragment.to_string())
        } else if let Some(rest) = expect.strip_prefix("condition: ") {
            let (reason, fragment) = rest.split_once(": ").unwrap_or((rest, ""));
            Expect::Condition {
                reason: reason.to_string(),
                fragment: fragment.to_string(),
            }
        } else {
            bail!("{file}: unknown expectation {expect:?}");
        };
        let manifest = manifest.replace("${NS}", ns);
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&manifest).with_context(|| format!("{file}: not YAML"))?;
        let name = doc["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{file}: metadata.name"))?
            .to_string();
        cases.push(Case {
            file,
            name,
            manifest,
            expect,
        });
    }
    Ok(cases)
}

/// `kubectl apply` (client-side, strict field validation as kubectl does by default) of one
/// manifest from stdin: its combined output, and whether it succeeded.
fn kubectl_apply(env: &Env, manifest: &str) -> Result<(bool, String)> {
    let bin = testenv::testenv_dir()?.join("bin/kubectl");
    let mut child = Command::new(&bin)
        .args(["--kubeconfig"])
        .arg(env.cp.kubeconfig_path())
        .args(["apply", "-n", &env.ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// A stand-in Hydra admin API on loopback: records each request line and answers 503.
fn hydra_stand_in() -> Result<(u16, Arc<Mutex<Vec<String>>>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            if let Some(line) = head.lines().next() {
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.to_string());
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    Ok((port, seen))
}

/// The fixtures the catalogue refers to: providers with missing, empty and wrongly keyed
/// credential Secrets, a `ClusterOAuthProvider` that admits no namespace, a Hydra provider at
/// the stand-in, a foreign Secret `taken`, and a `vault` Secret for `credentialsFrom`.
async fn fixtures(env: &Env, hydra_port: u16) -> Result<()> {
    let pp = PostParams::default();
    let objects = [
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "taken", "namespace": env.ns}, "stringData": {"owner": "someone else"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "vault", "namespace": env.ns},
            "stringData": {"CLIENT_ID": "given-client", "CLIENT_SECRET": "given-secret-0123456789abcdef0123456789"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "emptykey-admin", "namespace": env.ns,
                "annotations": support::credential_for(&env.clerk.base_url())}, "stringData": {"secretKey": ""}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "wrongkey-admin", "namespace": env.ns,
                "annotations": support::credential_for(&env.clerk.base_url())}, "stringData": {"other": "x"}}),
    ];
    for o in objects {
        let s: Secret = serde_json::from_value(o)?;
        env.secrets().create(&pp, &s).await?;
    }
    env.create_provider_without_secret("nosecret").await?;
    let providers: Api<oauth_operator::api::OAuthProvider> =
        Api::namespaced(env.client.clone(), &env.ns);
    for (name, spec) in [
        (
            "emptykey",
            serde_json::json!({"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "emptykey-admin"}}}),
        ),
        (
            "wrongkey",
            serde_json::json!({"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "wrongkey-admin"}}}),
        ),
        (
            "hydra-local",
            serde_json::json!({"hydra": {"adminUrl": format!("http://127.0.0.1:{hydra_port}"),
            "issuerUrl": format!("http://127.0.0.1:{hydra_port}")}}),
        ),
    ] {
        let p = serde_json::from_value(serde_json::json!({
            "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
            "metadata": {"name": name}, "spec": spec}))?;
        providers.create(&pp, &p).await?;
    }
    let cluster: Api<oauth_operator::api::ClusterOAuthProvider> = Api::all(env.client.clone());
    let closed = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "ClusterOAuthProvider",
        "metadata": {"name": format!("closed-{}", env.ns)},
        "spec": {"clerk": {"baseUrl": env.clerk.base_url(), "secretKeyRef": {"name": "clerk-admin"}}}}))?;
    cluster.create(&pp, &closed).await?;
    Ok(())
}

#[tokio::test]
async fn every_bad_input_meets_its_expected_outcome() -> Result<()> {
    let env = Env::new("bad-inputs").await?;
    let (hydra_port, hydra_seen) = hydra_stand_in()?;
    fixtures(&env, hydra_port).await?;
    let foreign = env.secrets().get("taken").await?;
    let mut op = env.start_operator(&[])?;
    let cases = catalogue(&env.ns)?;
    assert!(cases.len() >= 60, "at least 60 bad inputs: {}", cases.len());
    let writes_before = clerk_writes(&env);

    let mut failures = Vec::new();
    let (mut rejected, mut conditions) = (0, 0);
    let mut pending = Vec::new();
    for case in &cases {
        let (ok, output) = kubectl_apply(&env, &case.manifest)?;
        match &case.expect {
            Expect::Rejected(fragment) => {
                rejected += 1;
                if ok {
                    failures.push(format!(
                        "{}: accepted, expected a rejection with {fragment:?}",
                        case.file
                    ));
                } else if !output.contains(fragment.as_str()) {
                    failures.push(format!(
                        "{}: rejected without {fragment:?}: {output}",
                        case.file
                    ));
                }
            }
            Expect::Condition { .. } => {
                conditions += 1;
                if ok {
                    pending.push(case);
                } else {
                    failures.push(format!(
                        "{}: rejected at apply, expected a condition: {output}",
                        case.file
                    ));
                }
            }
        }
    }
    let apps: Api<OAuthApplication> = env.apps();
    for case in pending {
        let Expect::Condition { reason, fragment } = &case.expect else {
            continue;
        };
        let deadline = tokio::time::Instant::now() + support::TIMEOUT;
        loop {
            let app = apps.get(&case.name).await?;
            let status = ready(&app);
            let message = support::ready_message(&app);
            if status
                .as_ref()
                .is_some_and(|(s, r)| s == "False" && r == reason)
                && message.contains(fragment.as_str())
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                failures.push(format!(
                    "{}: expected Ready=False {reason} with {fragment:?}, got {status:?}: {message}",
                    case.file
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // A few more passes over the refused ones, then the tally.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(
        clerk_writes(&env),
        writes_before,
        "no bad input changed anything at Clerk"
    );
    let hydra = hydra_seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        hydra.iter().all(|l| l.starts_with("GET ")),
        "nothing but reads reached the Hydra admin API: {hydra:?}"
    );
    let after = env.secrets().get("taken").await?;
    assert_eq!(
        after.metadata.resource_version, foreign.metadata.resource_version,
        "the foreign Secret is untouched"
    );
    assert!(
        op.child.check_running().is_ok(),
        "the operator is still running"
    );
    assert!(
        !op.logs().contains("panicked"),
        "the operator never panicked"
    );
    let _ = op.wait_exit(Duration::ZERO).await;
    println!(
        "bad inputs: {} tried, {rejected} rejected at apply, {conditions} refused with a condition; provider writes 0",
        cases.len()
    );
    Ok(())
}

/// Requests that would change something at Clerk (creates, updates, deletes, rotations).
fn clerk_writes(env: &Env) -> usize {
    env.clerk
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/") && r.method != "GET")
        .count()
}
