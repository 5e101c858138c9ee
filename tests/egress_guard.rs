//! The SSRF guard, over a real apiserver with loopback stand-ins for the addresses a tenant
//! must not reach (loopback, like private, link-local and metadata addresses, is special).
//! Started without `--provider-allowed-networks`, the operator sends nothing on behalf of a
//! namespaced `OAuthProvider` that names a loopback address, by IP or by a name that resolves
//! to it: its applications and the provider itself report the refusal, naming the flag, and
//! the stand-ins receive no request. A `ClusterOAuthProvider` (the administrators') at the
//! same kind of address is not restricted. Restarted with the allow-list naming the address,
//! the same providers work.

mod support;

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::api::{Api, PostParams};
use oauth_operator::api::{ClusterOAuthProvider, OAuthProvider};
use support::Env;

/// A stand-in Hydra admin API on 127.0.0.1 that counts requests and answers each with 503.
fn stand_in() -> Result<(u16, Arc<AtomicUsize>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            if stream.read(&mut buf).unwrap_or(0) > 0 {
                count.fetch_add(1, Ordering::SeqCst);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    Ok((port, seen))
}

fn app_yaml(name: &str, provider: &str, kind: &str) -> String {
    format!(
        "apiVersion: oauth-operator.dev/v1alpha1\nkind: OAuthApplication\nmetadata: {{name: {name}}}\nspec:\n  \
         providerRef: {{kind: {kind}, name: {provider}}}\n  redirectUris: ['https://app.example.com/callback']\n"
    )
}

async fn hydra_provider(env: &Env, name: &str, url: &str) -> Result<()> {
    let p: OAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "OAuthProvider",
        "metadata": {"name": name},
        "spec": {"hydra": {"adminUrl": url, "issuerUrl": url}}}))?;
    Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &p)
        .await?;
    Ok(())
}

/// Waits until the provider's `EndpointReachable` condition is False with `fragment`.
async fn wait_provider_refused(env: &Env, name: &str, fragment: &str) -> Result<String> {
    let api = Api::<OAuthProvider>::namespaced(env.client.clone(), &env.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = api.get(name).await?;
        if let Some(c) = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "EndpointReachable"))
            && c.status == "False"
            && c.message.contains(fragment)
        {
            return Ok(c.message.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "provider {name}: no refusal naming {fragment:?}: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_namespaced_provider_reaches_no_special_address_unless_allowed() -> Result<()> {
    let env = Env::new("egress").await?;
    let (by_ip, seen_by_ip) = stand_in()?;
    let (by_name, seen_by_name) = stand_in()?;
    let (cluster, seen_cluster) = stand_in()?;
    hydra_provider(&env, "by-ip", &format!("http://127.0.0.1:{by_ip}")).await?;
    hydra_provider(&env, "by-name", &format!("http://localhost:{by_name}")).await?;
    let cluster_name = format!("egress-{}", env.ns);
    let cp: ClusterOAuthProvider = serde_json::from_value(serde_json::json!({
        "apiVersion": "oauth-operator.dev/v1alpha1", "kind": "ClusterOAuthProvider",
        "metadata": {"name": cluster_name},
        "spec": {"allowedNamespaces": {"names": [env.ns]},
                 "hydra": {"adminUrl": format!("http://127.0.0.1:{cluster}"),
                           "issuerUrl": format!("http://127.0.0.1:{cluster}")}}}))?;
    Api::<ClusterOAuthProvider>::all(env.client.clone())
        .create(&PostParams::default(), &cp)
        .await?;
    for (app, provider, kind) in [
        ("ip", "by-ip", "OAuthProvider"),
        ("name", "by-name", "OAuthProvider"),
        ("clerk", "clerk", "OAuthProvider"),
        ("cluster", cluster_name.as_str(), "ClusterOAuthProvider"),
    ] {
        env.apply_app(&app_yaml(app, provider, kind)).await?;
    }

    {
        let _op = env.start_operator(&[("OAUTH_OPERATOR_PROVIDER_ALLOWED_NETWORKS", "")])?;
        for (app, host) in [
            ("ip", "127.0.0.1"),
            ("name", "localhost"),
            ("clerk", "127.0.0.1"),
        ] {
            let refused = env.wait_reason(app, "InvalidSpec").await?;
            let message = support::ready_message(&refused);
            assert!(
                message.contains("--provider-allowed-networks") && message.contains(host),
                "{app}: the condition names the address and the flag: {message}"
            );
        }
        for provider in ["by-ip", "by-name", "clerk"] {
            wait_provider_refused(&env, provider, "--provider-allowed-networks").await?;
        }
        // The cluster's own provider is not restricted: its (failing) stand-in is asked.
        env.wait_reason("cluster", "ProviderUnavailable").await?;
        assert!(seen_cluster.load(Ordering::SeqCst) > 0);
        // A few resyncs (2 s) more: still nothing sent.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            seen_by_ip.load(Ordering::SeqCst),
            0,
            "nothing sent to 127.0.0.1"
        );
        assert_eq!(
            seen_by_name.load(Ordering::SeqCst),
            0,
            "nothing sent to localhost"
        );
        let clerk = env.clerk.requests();
        assert!(
            clerk.is_empty(),
            "nothing sent to the Clerk emulator: {} requests",
            clerk.len()
        );
        assert!(env.secrets().get_opt("clerk-oauth").await?.is_none());
    }

    // Allowed by the operator's list: the same providers work.
    let _op = env.start_operator(&[("OAUTH_OPERATOR_PROVIDER_ALLOWED_NETWORKS", "127.0.0.1")])?;
    env.wait_ready("clerk").await?;
    env.wait_reason("ip", "ProviderUnavailable").await?;
    env.wait_reason("name", "ProviderUnavailable").await?;
    assert!(seen_by_ip.load(Ordering::SeqCst) > 0);
    // `localhost` also resolves to ::1, which the list does not name: 127.0.0.1 is used.
    assert!(seen_by_name.load(Ordering::SeqCst) > 0);
    let secret = env.secrets().get("clerk-oauth").await?;
    support::data(&secret)
        .get("CLIENT_SECRET")
        .context("a working Secret")?;
    Ok(())
}
