//! Smoke tests of the loopback control plane: what the apiserver decides (CRD schema and CEL
//! validation, authentication, RBAC) really happens, and the harness cleans up after itself.
//!
//! Run with `--nocapture` to see the measured startup time and memory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use testenv::ControlPlane;

fn shared() -> &'static ControlPlane {
    ControlPlane::shared().expect("the shared control plane starts")
}

/// The `Status` of a failed API call, or a panic naming what was expected instead.
fn api_status<T: std::fmt::Debug>(
    result: kube::Result<T>,
    expected: &str,
) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected {expected}, got {other:?}"),
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        ..Default::default()
    }
}

async fn who_am_i(client: Client) -> Result<(String, Vec<String>)> {
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("creating a SelfSubjectReview")?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .context("no userInfo in the review")?;
    Ok((
        user.username.unwrap_or_default(),
        user.groups.unwrap_or_default(),
    ))
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.oauth-operator.dev
spec:
  group: smoke.oauth-operator.dev
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget, listKind: WidgetList }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: { type: integer, minimum: 0 }
              x-kubernetes-validations:
                - rule: self.replicas <= 5
                  message: replicas must be at most 5
"#;

#[tokio::test]
async fn crd_cel_rule_rejects_violating_objects() -> Result<()> {
    let cp = shared();
    let admin = cp.admin_client().await?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(WIDGET_CRD)?;
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    crds.patch(
        "widgets.smoke.oauth-operator.dev",
        &PatchParams::apply("testenv-smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("applying the Widget CRD")?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "widgets.smoke.oauth-operator.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .context("the Widget CRD was not Established within 30s")??;

    let ns = cp.create_namespace("cel").await?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "smoke.oauth-operator.dev",
        "v1",
        "Widget",
    ));
    let widgets = Api::<DynamicObject>::namespaced_with(admin, &ns, &resource);
    let widget = |name: &str, replicas: i64| {
        DynamicObject::new(name, &resource)
            .within(&ns)
            .data(serde_json::json!({ "spec": { "replicas": replicas } }))
    };

    // Established can precede the moment the new endpoint serves by a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match widgets
            .create(&PostParams::default(), &widget("valid", 5))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.is_not_found() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err).context("creating a valid Widget"),
        }
    }

    let status = api_status(
        widgets
            .create(&PostParams::default(), &widget("too-many", 6))
            .await,
        "422 Invalid for replicas: 6",
    );
    assert_eq!(status.code, 422, "{status:?}");
    assert_eq!(status.reason, "Invalid", "{status:?}");
    assert!(
        status.message.contains("replicas must be at most 5"),
        "{status:?}"
    );
    assert!(
        widgets.get_opt("too-many").await?.is_none(),
        "the rejected Widget was stored"
    );
    assert!(widgets.get_opt("valid").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn service_account_needs_rbac_to_create_secrets() -> Result<()> {
    let cp = shared();
    let admin = cp.admin_client().await?;
    let ns = cp.create_namespace("rbac").await?;
    let other_ns = cp.create_namespace("rbac-other").await?;
    let sa_client = cp.client_as_service_account(&ns, "writer").await?;

    let (user, groups) = who_am_i(sa_client.clone()).await?;
    assert_eq!(user, format!("system:serviceaccount:{ns}:writer"));
    assert!(
        groups.contains(&"system:serviceaccounts".to_string()),
        "{groups:?}"
    );

    let secrets = Api::<Secret>::namespaced(sa_client.clone(), &ns);
    let secret = |name: &str| Secret {
        metadata: meta(name),
        string_data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    let status = api_status(
        secrets
            .create(&PostParams::default(), &secret("before-rbac"))
            .await,
        "403 Forbidden without RBAC",
    );
    assert_eq!(status.code, 403, "{status:?}");
    assert_eq!(status.reason, "Forbidden", "{status:?}");

    let role = Role {
        metadata: meta("secret-writer"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".to_string()]),
            verbs: vec!["create".to_string()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding = RoleBinding {
        metadata: meta("secret-writer"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "Role".to_string(),
            name: "secret-writer".to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: "writer".to_string(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;

    // The RBAC authorizer reads through an informer cache: allow it a moment to catch up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match secrets
            .create(&PostParams::default(), &secret("after-rbac"))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err).context("creating a Secret after the RoleBinding"),
        }
    }
    let stored = Api::<Secret>::namespaced(admin, &ns)
        .get("after-rbac")
        .await?;
    assert_eq!(stored.data.unwrap_or_default()["k"].0, b"v");

    // The Role grants nothing outside its namespace.
    let status = api_status(
        Api::<Secret>::namespaced(sa_client, &other_ns)
            .create(&PostParams::default(), &secret("elsewhere"))
            .await,
        "403 Forbidden in another namespace",
    );
    assert_eq!(status.code, 403, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn user_in_no_group_cannot_list_namespaces() -> Result<()> {
    let cp = shared();
    let alice = cp.client_as_user("alice", &[]).await?;
    let (user, groups) = who_am_i(alice.clone()).await?;
    assert_eq!(user, "alice");
    assert_eq!(groups, vec!["system:authenticated".to_string()]);

    let status = api_status(
        Api::<Namespace>::all(alice)
            .list(&ListParams::default())
            .await,
        "403 Forbidden listing namespaces",
    );
    assert_eq!(status.code, 403, "{status:?}");
    assert_eq!(status.reason, "Forbidden", "{status:?}");
    assert!(
        status
            .message
            .contains(r#"User "alice" cannot list resource "namespaces""#),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn client_certificates_carry_user_and_groups() -> Result<()> {
    let cp = shared();
    let (user, groups) = who_am_i(cp.client_as_user("bob", &["team-a", "team-b"]).await?).await?;
    assert_eq!(user, "bob");
    for group in ["team-a", "team-b", "system:authenticated"] {
        assert!(
            groups.contains(&group.to_string()),
            "{group} missing from {groups:?}"
        );
    }

    let (user, groups) = who_am_i(cp.admin_client().await?).await?;
    assert_eq!(user, "admin");
    assert!(groups.contains(&"system:masters".to_string()), "{groups:?}");
    Ok(())
}

/// Namespaces handed out so far in this binary: each must be new.
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Writes a ConfigMap with the same name in a namespace of its own and reads its own value back.
async fn use_own_namespace(owner: &str) -> Result<()> {
    let cp = shared();
    assert!(
        std::ptr::eq(cp, ControlPlane::shared()?),
        "a second control plane was started"
    );
    let ns = cp.create_namespace("parallel").await?;
    {
        let mut seen = NAMESPACES.lock().expect("not poisoned");
        assert!(!seen.contains(&ns), "namespace {ns} handed out twice");
        seen.push(ns.clone());
    }
    let config_maps = Api::<ConfigMap>::namespaced(cp.admin_client().await?, &ns);
    let config_map = ConfigMap {
        metadata: meta("same-name"),
        data: Some(BTreeMap::from([("owner".to_string(), owner.to_string())])),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &config_map)
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // overlap with the other test
    let read = config_maps.get("same-name").await?;
    assert_eq!(read.data.unwrap_or_default()["owner"], owner);
    Ok(())
}

#[tokio::test]
async fn parallel_test_a_gets_its_own_namespace() -> Result<()> {
    use_own_namespace("a").await
}

#[tokio::test]
async fn parallel_test_b_gets_its_own_namespace() -> Result<()> {
    use_own_namespace("b").await
}

#[tokio::test]
async fn kubeconfig_works_with_kubectl() -> Result<()> {
    let cp = shared();
    let kubectl = testenv::testenv_dir()?.join("bin/kubectl");
    let output = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .await
        .with_context(|| format!("running {}", kubectl.display()))?;
    assert!(
        output.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "namespace/default"
    );
    Ok(())
}

#[test]
fn servers_listen_on_loopback_only() -> Result<()> {
    let cp = shared();
    let addresses = cp.listening_addresses()?;
    for process in ["etcd", "kube-apiserver"] {
        assert!(
            addresses.iter().any(|(p, _)| *p == process),
            "{process} listens nowhere: {addresses:?}"
        );
    }
    for (process, address) in &addresses {
        assert_eq!(
            address.ip(),
            std::net::Ipv4Addr::LOCALHOST,
            "{process} listens on {address}, not on 127.0.0.1 only"
        );
    }
    let memory = cp.memory()?;
    println!(
        "shared control plane: ready in {:.2}s; RSS etcd {:.0} MiB + kube-apiserver {:.0} MiB = {:.0} MiB; listening on {addresses:?}",
        cp.startup_duration().as_secs_f64(),
        memory.etcd_rss_kib as f64 / 1024.0,
        memory.apiserver_rss_kib as f64 / 1024.0,
        memory.total_mib(),
    );
    Ok(())
}

#[test]
fn own_control_plane_is_gone_after_drop() -> Result<()> {
    let cp = ControlPlane::start(&testenv::testenv_dir()?)?;
    let memory = cp.memory()?;
    println!(
        "own control plane: ready in {:.2}s; RSS etcd {:.0} MiB + kube-apiserver {:.0} MiB",
        cp.startup_duration().as_secs_f64(),
        memory.etcd_rss_kib as f64 / 1024.0,
        memory.apiserver_rss_kib as f64 / 1024.0,
    );
    let dir = cp.dir().to_path_buf();
    let pids = cp.process_ids();
    assert!(cp.kubeconfig_path().is_file());
    drop(cp);

    assert!(!dir.exists(), "{} was not removed", dir.display());
    for (process, pid) in pids {
        // Killed and reaped: no /proc entry, not even a zombie.
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!("{process} (pid {pid}) still exists after drop");
        }
    }
    Ok(())
}

#[test]
fn start_fails_clearly_without_binaries() {
    let missing = std::env::temp_dir().join("testenv-smoke-no-such-dir");
    let err = ControlPlane::start(&missing).expect_err("no binaries there");
    assert!(format!("{err:#}").contains("make testenv"), "{err:#}");
}

#[test]
fn failed_start_reports_the_log_tail() -> Result<()> {
    // A kube-apiserver that dies at once, next to the real etcd.
    let fake = std::env::temp_dir().join(format!("testenv-smoke-fake-{}", std::process::id()));
    std::fs::create_dir_all(fake.join("bin"))?;
    std::os::unix::fs::symlink(
        testenv::testenv_dir()?.join("bin/etcd"),
        fake.join("bin/etcd"),
    )?;
    let script = fake.join("bin/kube-apiserver");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'Error: unknown flag: --fake-failure' >&2\nexit 1\n",
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;

    let err = ControlPlane::start(&fake).expect_err("the fake kube-apiserver exits");
    let message = format!("{err:#}");
    std::fs::remove_dir_all(&fake)?;
    if let Some(state) = message
        .split("state and logs kept in ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
    {
        std::fs::remove_dir_all(state)?;
    }
    assert!(message.contains("kube-apiserver exited early"), "{message}");
    assert!(
        message.contains("Error: unknown flag: --fake-failure"),
        "{message}"
    );
    Ok(())
}
