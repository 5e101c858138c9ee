//! Crash safety and lifecycle holes, one test per case: the operator binary on a real
//! kube-apiserver + etcd with the Clerk emulator, crashed at chosen points (the test-only
//! `fault-injection` build), with writes refused by real admission policies, and with the
//! Secret's history recorded by a watch. The promise each test holds: exactly one client at the
//! provider whose secret is the Secret's, and a Secret whose client secret changes only when a
//! rotation asked for it (or after the Secret was deleted).

mod support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use clerk_emulator::routes;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::{Env, SecretHistory, data, ready};

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

fn redirect(name: &str) -> String {
    format!("https://{name}.example.com/callback")
}

/// One client at the emulator, held by Secret `<name>-oauth`, whose credentials obtain a token.
async fn assert_one_working_client(env: &Env, name: &str) -> Result<Secret> {
    let apps = env.clerk.apps();
    assert_eq!(
        apps.len(),
        1,
        "exactly one client at the provider: {:?}",
        apps.iter().map(|a| &a.name).collect::<Vec<_>>()
    );
    let secret = env.secrets().get(&format!("{name}-oauth")).await?;
    let d = data(&secret);
    assert_eq!(
        d["CLIENT_ID"], apps[0].client_id,
        "the Secret holds that client"
    );
    assert!(
        env.clerk
            .secret_is_valid(&d["CLIENT_ID"], &d["CLIENT_SECRET"]),
        "the Secret's secret is the client's live secret"
    );
    support::assert_token(&secret, &redirect(name)).await?;
    assert_eq!(
        apps[0].name,
        format!("{}/{name}", env.ns),
        "the client has its display name"
    );
    Ok(secret)
}

/// A policy refusing every status write that records a client id, in this namespace only.
async fn refuse_recorded_ids(env: &Env) -> Result<String> {
    let name = format!("refuse-ids-{}", env.ns);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["oauth-operator.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["oauthapplications/status"],
            }]},
            "validations": [{
                "expression": "!has(object.status) || !has(object.status.providerObjectId)",
                "message": "test: status writes that record a client id are refused",
            }],
        },
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns}}},
        },
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    // Policies take effect once the apiserver's informer has them: probe with a dry run.
    let probe = env
        .apply_app(&app_yaml("probe"))
        .await
        .context("creating the probe")?;
    let patch = serde_json::json!({"status": {"providerObjectId": "oa_probe"}});
    let params = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while env
        .apps()
        .patch_status("probe", &params, &Patch::Merge(&patch))
        .await
        .is_ok()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(probe);
    env.apps().delete("probe", &DeleteParams::default()).await?;
    Ok(name)
}

async fn allow_recorded_ids(env: &Env, name: &str) -> Result<()> {
    Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Api::<ValidatingAdmissionPolicy>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// Case 1: the id is not durable before the client loses its tag. The status write that
/// records the new client's id is refused: the Secret is not written from memory and the
/// client keeps its uid-tagged name; the staged copy holds the secret. Once writes go through,
/// the same client and the same secret arrive, with no second create and no rotation.
#[tokio::test]
async fn case1_failed_id_write_after_create_leaves_one_client() -> Result<()> {
    let env = Env::new("c1-status").await?;
    let history = SecretHistory::start(&env).await?;
    let policy = refuse_recorded_ids(&env).await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    // The create happens, the id cannot be recorded.
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while env.clerk.apps().is_empty() || env.staged_secrets().await?.is_empty() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no create/stage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // several passes, all refused
    assert!(
        env.secrets().get_opt("web-oauth").await?.is_none(),
        "no Secret before the id is durable"
    );
    let apps = env.clerk.apps();
    assert_eq!(apps.len(), 1);
    assert!(
        apps[0].name.contains("[oauth-operator "),
        "the client keeps its tag until the id is durable: {}",
        apps[0].name
    );

    allow_recorded_ids(&env, &policy).await?;
    env.wait_ready("web").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        1
    );
    assert_eq!(
        env.clerk.request_count("POST", routes::ROTATE_SECRET),
        0,
        "delivered from the staged copy, not by rotation"
    );
    assert_eq!(history.values("web-oauth").len(), 1, "written once");
    assert!(
        env.staged_secrets().await?.is_empty(),
        "staged copy deleted"
    );
    Ok(())
}

/// A crash after the create, a spec change while the operator is down, then a transient
/// failure (recorded for the new generation, so `observedGeneration` moves): the adopted
/// client, registered with the old spec, is still brought to the new one.
#[tokio::test]
async fn a_spec_change_during_a_crash_reaches_the_adopted_client() -> Result<()> {
    let env = Env::new("c1-spec").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-create")])?;
    env.apply_app(&app_yaml("web")).await?;
    op.wait_abort("after-create", Duration::from_secs(60))
        .await?;
    let change = serde_json::json!({"spec": {"redirectUris": ["https://web.example.com/new"]}});
    env.apps()
        .patch("web", &PatchParams::default(), &Patch::Merge(&change))
        .await?;
    env.clerk.inject_fault(clerk_emulator::Fault {
        method: None,
        route: None,
        times: 2,
        action: clerk_emulator::FaultAction::Status {
            status: 503,
            code: None,
            message: None,
            retry_after: None,
        },
    });
    let _op = env.start_operator(&[])?;
    env.wait_app("web", "a failure recorded for generation 2", |a| {
        a.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await?;
    env.wait_app("web", "generation 2 applied", |a| {
        a.status.as_ref().and_then(|s| s.synced_generation) == Some(2)
            && ready(a).is_some_and(|(s, _)| s == "True")
    })
    .await?;
    let apps = env.clerk.apps();
    assert_eq!(apps.len(), 1, "no duplicate client");
    assert_eq!(
        apps[0].redirect_uris,
        vec!["https://web.example.com/new".to_string()]
    );
    Ok(())
}

/// Case 1: crashes in a row during adoption. Crash after the create, then at the steps of the
/// adoptions that follow (after the rotation, twice; after staging), then right after the
/// Secret is written from the staged copy: one client in the end, and the Secret written
/// once with its live secret.
#[tokio::test]
async fn case1_crashes_in_a_row_during_adoption_leave_one_client() -> Result<()> {
    let env = Env::new("c1-adopt").await?;
    let history = SecretHistory::start(&env).await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-create")])?;
    env.apply_app(&app_yaml("web")).await?;
    op.wait_abort("after-create", Duration::from_secs(60))
        .await?;
    for point in [
        "after-rotate",
        "after-rotate",
        "after-stage",
        "after-secret",
    ] {
        let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", point)])?;
        op.wait_abort(point, Duration::from_secs(60)).await?;
        assert_eq!(env.clerk.apps().len(), 1, "no second client ({point})");
    }
    let _op = env.start_operator(&[])?;
    env.wait_ready("web").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        1
    );
    assert_eq!(history.values("web-oauth").len(), 1, "written once");
    // The last adoption died after staging: the next pass resumed from the staged copy.
    env.wait_event("web", "CredentialsResumed").await?;
    Ok(())
}

/// Case 1: a crash right after the id is recorded, before the Secret exists: the client keeps
/// its tag until then; the restart renames it by id and writes the staged secret, without a
/// rotation.
#[tokio::test]
async fn case1_crash_after_recording_the_id_renames_by_id() -> Result<()> {
    let env = Env::new("c1-rename").await?;
    let history = SecretHistory::start(&env).await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-record")])?;
    env.apply_app(&app_yaml("web")).await?;
    op.wait_abort("after-record", Duration::from_secs(60))
        .await?;
    let app = env.apps().get("web").await?;
    let status = app.status.context("status")?;
    assert!(
        status.provider_object_id.is_some(),
        "the id was recorded first"
    );
    assert!(env.secrets().get_opt("web-oauth").await?.is_none());
    assert!(env.clerk.apps()[0].name.contains("[oauth-operator "));
    let _op = env.start_operator(&[])?;
    env.wait_ready("web").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 0);
    assert_eq!(history.values("web-oauth").len(), 1);
    Ok(())
}

/// Case 2: the adoption window. The uid in the registration name proves ownership, so a
/// client the provider dates long before the (last) create call, as with a provider clock far
/// behind the cluster's, is still adopted, once.
#[tokio::test]
async fn case2_an_old_tagged_client_is_adopted_once() -> Result<()> {
    let env = Env::new("c2").await?;
    let mut op = env.start_operator(&[("OAUTH_OPERATOR_FAULT", "after-create")])?;
    env.apply_app(&app_yaml("web")).await?;
    op.wait_abort("after-create", Duration::from_secs(60))
        .await?;
    let id = env.clerk.apps()[0].id.clone();
    assert!(
        env.clerk
            .edit_app(&id, |a| a.created_at -= 3_600_000)
            .is_some()
    );
    let _op = env.start_operator(&[])?;
    env.wait_ready("web").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(env.clerk.apps()[0].id, id, "the first client was adopted");
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        1
    );
    Ok(())
}

/// Case 3: rotated, then lost. The provider rotates (the old secret dies at once), then the
/// Secret cannot be written (a foreign Secret took its place). The new secret waits in the
/// staged copy; once the obstacle is gone it arrives, without a second rotation.
#[tokio::test]
async fn case3_rotated_secret_survives_a_failed_secret_write() -> Result<()> {
    let env = Env::new("c3").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    env.wait_ready("web").await?;
    let before = env.secrets().get("web-oauth").await?;
    // The rotation answer comes late; meanwhile a foreign Secret takes the name.
    env.clerk
        .delay_next(1, "POST", routes::ROTATE_SECRET, Duration::from_secs(3));
    env.rotate("web", "r1").await?;
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while env.clerk.request_count("POST", routes::ROTATE_SECRET) == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no rotation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.secrets()
        .delete("web-oauth", &DeleteParams::default())
        .await?;
    let foreign: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-oauth"}, "stringData": {"CLIENT_ID": "not-ours"},
    }))?;
    env.secrets()
        .create(&PostParams::default(), &foreign)
        .await?;
    env.wait_reason("web", "SecretConflict").await?;
    let d = data(&before);
    assert!(
        !env.clerk
            .secret_is_valid(&d["CLIENT_ID"], &d["CLIENT_SECRET"]),
        "the rotation happened"
    );
    assert_eq!(
        env.staged_secrets().await?.len(),
        1,
        "the new secret is staged"
    );

    env.secrets()
        .delete("web-oauth", &DeleteParams::default())
        .await?;
    let app = env
        .wait_app("web", "Ready after the obstacle is gone", |a| {
            ready(a).is_some_and(|(s, _)| s == "True")
                && a.status
                    .as_ref()
                    .and_then(|s| s.last_rotation_token.as_deref())
                    == Some("r1")
        })
        .await?;
    assert!(app.status.is_some());
    assert_one_working_client(&env, "web").await?;
    assert_eq!(
        env.clerk.request_count("POST", routes::ROTATE_SECRET),
        1,
        "delivered from the staged copy, not rotated again"
    );
    assert!(env.staged_secrets().await?.is_empty());
    assert_eq!(
        support::obtain_token(&before, &redirect("web")).await?,
        Err(401),
        "the rotated-out secret is refused"
    );
    Ok(())
}

/// Case 5: status reset (a backup restored without status, a hand edit). The Secret's
/// annotations name the client, and its secret proves the client is this application's: it is
/// taken back, not registered again; a rotation token then rotates that same client.
#[tokio::test]
async fn case5_status_reset_finds_the_client_from_the_secret() -> Result<()> {
    let env = Env::new("c5").await?;
    let history = SecretHistory::start(&env).await?;
    let mut op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    let before = env.wait_ready("web").await?.status.context("status")?;
    // Reset while no operator runs (as a restore would): a pass in flight would write it back.
    op.child.kill();
    env.reset_status("web").await?;
    let mut op = env.start_operator(&[])?;
    env.wait_event("web", "ClientRelinked").await?;
    let after = env.wait_ready("web").await?.status.context("status")?;
    assert_eq!(after.provider_object_id, before.provider_object_id);
    assert_eq!(
        history.values("web-oauth").len(),
        1,
        "credentials untouched"
    );
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 0);

    // Reset again, with a rotation token: the same client is rotated, none is added.
    op.child.kill();
    env.reset_status("web").await?;
    env.rotate("web", "after-reset").await?;
    let _op = env.start_operator(&[])?;
    env.wait_app("web", "rotated", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_rotation_token.as_deref())
            == Some("after-reset")
    })
    .await?;
    env.wait_ready("web").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(
        env.clerk.request_count("POST", routes::OAUTH_APPLICATIONS),
        1
    );
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 1);
    assert_eq!(
        history.values("web-oauth").len(),
        2,
        "replaced once, on request"
    );
    Ok(())
}

/// Case 5, the other side: a Secret whose annotations were pointed at another application's
/// client (anyone who may edit Secrets here could) does not hand that client over: its
/// secret does not authenticate as it. The other client is left alone.
#[tokio::test]
async fn case5_a_secret_pointing_at_another_client_proves_nothing() -> Result<()> {
    let env = Env::new("c5-foreign").await?;
    let mut op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    env.apply_app(&app_yaml("victim")).await?;
    env.wait_ready("web").await?;
    let victim = env.wait_ready("victim").await?.status.context("status")?;
    let victim_id = victim.provider_object_id.clone().context("id")?;
    let victim_client = victim.client_id.clone().context("client id")?;
    let tamper = serde_json::json!({
        "metadata": {"annotations": {
            "oauth-operator.dev/provider-object-id": victim_id,
            "oauth-operator.dev/client-id": victim_client,
        }},
        "stringData": {"CLIENT_ID": victim_client},
    });
    op.child.kill();
    env.secrets()
        .patch("web-oauth", &PatchParams::default(), &Patch::Merge(&tamper))
        .await?;
    env.reset_status("web").await?;
    env.rotate("web", "steal").await?;
    let _op = env.start_operator(&[])?;
    // With a rotation asked for and no provable client, a new client is registered for web.
    env.wait_app("web", "a new client of its own", |a| {
        ready(a).is_some_and(|(s, _)| s == "True")
            && a.status
                .as_ref()
                .and_then(|s| s.provider_object_id.as_deref())
                != Some(victim_id.as_str())
    })
    .await?;
    assert_eq!(
        env.clerk.request_count("POST", routes::ROTATE_SECRET),
        0,
        "the victim's client was never rotated"
    );
    // web's first client cannot be told apart from a stranger's here: it is left at the
    // provider (three clients), which is the price of not trusting the Secret.
    assert_eq!(env.clerk.apps().len(), 3);
    let victim_secret = env.secrets().get("victim-oauth").await?;
    support::assert_token(&victim_secret, &redirect("victim")).await?;
    Ok(())
}

/// Case 6: editing `CLIENT_ID` in the Secret is healed from status; the secret is kept, no
/// rotation happens.
#[tokio::test]
async fn case6_edited_client_id_is_healed_without_rotation() -> Result<()> {
    let env = Env::new("c6").await?;
    let history = SecretHistory::start(&env).await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    env.wait_ready("web").await?;
    let tamper = serde_json::json!({"stringData": {"CLIENT_ID": "someone-else"}});
    env.secrets()
        .patch("web-oauth", &PatchParams::default(), &Patch::Merge(&tamper))
        .await?;
    env.wait_secret("web-oauth", |s| {
        data(s).get("CLIENT_ID").map(String::as_str) != Some("someone-else")
    })
    .await?;
    env.wait_event("web", "SecretHealed").await?;
    assert_one_working_client(&env, "web").await?;
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 0);
    assert_eq!(
        history.values("web-oauth").len(),
        1,
        "the secret never changed"
    );
    Ok(())
}

/// Case 5: a status reset with an old, long-answered rotation token on the application: the
/// token stays answered (the Secret records it), so taking the client back rotates nothing.
#[tokio::test]
async fn case5_an_answered_rotation_token_survives_a_status_reset() -> Result<()> {
    let env = Env::new("c5-token").await?;
    let history = SecretHistory::start(&env).await?;
    let mut op = env.start_operator(&[])?;
    env.apply_app(&app_yaml("web")).await?;
    env.wait_ready("web").await?;
    env.rotate("web", "long-ago").await?;
    env.wait_app("web", "rotated", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_rotation_token.as_deref())
            == Some("long-ago")
    })
    .await?;
    env.wait_ready("web").await?;
    op.child.kill();
    env.reset_status("web").await?;
    let _op = env.start_operator(&[])?;
    env.wait_event("web", "ClientRelinked").await?;
    env.wait_ready("web").await?;
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 1);
    assert_eq!(
        history.values("web-oauth").len(),
        2,
        "created, rotated once"
    );
    assert_one_working_client(&env, "web").await?;
    Ok(())
}

/// A rotation request on a public client (no secret) is answered as it is: recorded, nothing
/// issued, nothing left open.
#[tokio::test]
async fn a_public_clients_rotation_request_is_answered() -> Result<()> {
    let env = Env::new("public").await?;
    let _op = env.start_operator(&[])?;
    env.apply_app(
        r#"
apiVersion: oauth-operator.dev/v1alpha1
kind: OAuthApplication
metadata: {name: spa}
spec:
  providerRef: {name: clerk}
  clientType: public
  redirectUris: ["https://spa.example.com/callback"]
"#,
    )
    .await?;
    env.wait_ready("spa").await?;
    env.rotate("spa", "t1").await?;
    env.wait_app("spa", "answered", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.last_rotation_token.as_deref())
            == Some("t1")
    })
    .await?;
    assert_eq!(env.clerk.request_count("POST", routes::ROTATE_SECRET), 0);
    assert!(!data(&env.secrets().get("spa-oauth").await?).contains_key("CLIENT_SECRET"));
    Ok(())
}
