//! Behaviour of the emulator beyond the response shapes: secrets, rotation, PATCH, pagination,
//! rate limiting, faults, counters, dashboard edits, admin endpoints, the binary.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clerk_emulator::{
    Emulator, EmulatorConfig, Fault, FaultAction, NewOAuthApplication, RateLimit, routes,
};
use common::Api;
use reqwest::Method;
use serde_json::{Value, json};

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

async fn create(api: &Api, body: Value) -> Value {
    let reply = api
        .send(Method::POST, "/oauth_applications", Some(body))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[tokio::test]
async fn secret_only_on_create_and_rotate() {
    let emu = common::start();
    let api = Api::new(&emu);
    let created = create(
        &api,
        json!({"name": "App", "redirect_uris": ["https://a.test/cb"]}),
    )
    .await;
    let (id, client_id, secret) = (
        s(&created["id"]),
        s(&created["client_id"]),
        s(&created["client_secret"]),
    );
    assert!(id.starts_with("oa_"));
    assert!(secret.len() >= 32);
    assert!(emu.secret_is_valid(client_id, secret));
    assert!(!emu.secret_is_valid(client_id, "nope"));

    // Defaults, generated fields and endpoint URLs.
    assert_eq!(created["object"], "oauth_application");
    assert_eq!(created["instance_id"], emu.instance_id());
    assert_eq!(created["scopes"], "profile email");
    assert_eq!(created["consent_screen_enabled"], true);
    assert_eq!(created["pkce_required"], false);
    assert_eq!(created["public"], false);
    assert_eq!(created["dynamically_registered"], false);
    assert_eq!(created["callback_url"], "https://a.test/cb");
    assert_eq!(created["client_uri"], Value::Null);
    assert_eq!(created["created_at"], created["updated_at"]);
    assert!(
        created["created_at"].as_i64().unwrap() > 1_700_000_000_000,
        "unix milliseconds"
    );
    let fapi = emu.frontend_api_url().to_owned();
    assert_eq!(created["authorize_url"], format!("{fapi}/oauth/authorize"));
    assert_eq!(created["token_fetch_url"], format!("{fapi}/oauth/token"));
    assert_eq!(created["user_info_url"], format!("{fapi}/oauth/userinfo"));
    assert_eq!(
        created["discovery_url"],
        format!("{fapi}/.well-known/openid-configuration")
    );
    assert_eq!(
        created["token_introspection_url"],
        format!("{fapi}/oauth/token_info")
    );

    let path = format!("/oauth_applications/{id}");
    for reply in [
        api.send(Method::GET, &path, None).await,
        api.send(Method::PATCH, &path, Some(json!({"name": "App 2"})))
            .await,
    ] {
        assert_eq!(reply.status, 200);
        assert!(reply.body.get("client_secret").is_none(), "{}", reply.body);
    }
    let list = api
        .send(Method::GET, "/oauth_applications", None)
        .await
        .body;
    assert!(list["data"][0].get("client_secret").is_none());
    assert!(
        emu.secret_is_valid(client_id, secret),
        "GET/PATCH do not touch the secret"
    );

    // A public client has no secret.
    let public = create(&api, json!({"name": "SPA", "public": true})).await;
    assert_eq!(public["client_secret"], "");
    assert!(!emu.secret_is_valid(s(&public["client_id"]), ""));
    emu.shutdown().await;
}

#[tokio::test]
async fn rotation_invalidates_the_old_secret() {
    let emu = common::start();
    let api = Api::new(&emu);
    let created = create(&api, json!({"name": "App"})).await;
    let (id, client_id) = (s(&created["id"]), s(&created["client_id"]));
    let old = s(&created["client_secret"]);
    let reply = api
        .send(
            Method::POST,
            &format!("/oauth_applications/{id}/rotate_secret"),
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    let new = s(&reply.body["client_secret"]);
    assert_ne!(new, old);
    assert!(emu.secret_is_valid(client_id, new));
    assert!(!emu.secret_is_valid(client_id, old));
    assert_eq!(
        reply.body["client_id"], created["client_id"],
        "client_id is stable"
    );
    assert!(reply.body["updated_at"].as_i64() > created["updated_at"].as_i64());

    // Rotating a public client yields no secret.
    let public = create(&api, json!({"name": "SPA", "public": true})).await;
    let path = format!("/oauth_applications/{}/rotate_secret", s(&public["id"]));
    let reply = api.send(Method::POST, &path, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["client_secret"], "");
    emu.shutdown().await;
}

#[tokio::test]
async fn patch_rejects_unknown_fields_and_changes_only_given_ones() {
    let emu = common::start();
    let api = Api::new(&emu);
    let created = create(
        &api,
        json!({"name": "App", "redirect_uris": ["https://a.test/1"], "scopes": "openid email",
               "pkce_required": true, "consent_screen_enabled": false}),
    )
    .await;
    let path = format!("/oauth_applications/{}", s(&created["id"]));

    let reply = api
        .send(
            Method::PATCH,
            &path,
            Some(json!({"name": "X", "grant_types": [], "secret": 1})),
        )
        .await;
    assert_eq!(reply.status, 422);
    let codes: BTreeSet<_> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                s(&e["code"]).to_owned(),
                s(&e["meta"]["param_name"]).to_owned(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        BTreeSet::from([
            ("form_param_unknown".to_owned(), "grant_types".to_owned()),
            ("form_param_unknown".to_owned(), "secret".to_owned()),
        ])
    );
    assert!(reply.body["clerk_trace_id"].is_string());
    let unchanged = api.send(Method::GET, &path, None).await.body;
    assert_eq!(unchanged, {
        let mut c = created.clone();
        c.as_object_mut().unwrap().remove("client_secret");
        c
    });

    // Only the given fields change; null means "unchanged".
    let patched = api
        .send(
            Method::PATCH,
            &path,
            Some(json!({"redirect_uris": ["https://a.test/2", "https://a.test/3"], "name": null})),
        )
        .await
        .body;
    assert_eq!(patched["name"], "App");
    assert_eq!(
        patched["redirect_uris"],
        json!(["https://a.test/2", "https://a.test/3"])
    );
    assert_eq!(patched["callback_url"], "https://a.test/2");
    assert_eq!(patched["scopes"], "openid email");
    assert_eq!(patched["pkce_required"], true);
    assert_eq!(patched["consent_screen_enabled"], false);
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(patched["updated_at"].as_i64() > created["updated_at"].as_i64());

    // Deprecated callback_url alone replaces the redirect URIs.
    let patched = api
        .send(
            Method::PATCH,
            &path,
            Some(json!({"callback_url": "myapp://cb"})),
        )
        .await
        .body;
    assert_eq!(patched["redirect_uris"], json!(["myapp://cb"]));

    // Validation errors.
    for bad in [
        json!({"redirect_uris": ["not a url"]}),
        json!({"name": ""}),
        json!({"pkce_required": "true"}),
        json!({"scopes": "x".repeat(1025)}),
    ] {
        let reply = api.send(Method::PATCH, &path, Some(bad.clone())).await;
        assert_eq!(reply.status, 422, "{bad}");
    }
    // Turning a confidential client public drops its secret.
    let client_id = s(&created["client_id"]);
    assert!(emu.secret_is_valid(client_id, s(&created["client_secret"])));
    api.send(Method::PATCH, &path, Some(json!({"public": true})))
        .await;
    assert!(!emu.secret_is_valid(client_id, s(&created["client_secret"])));
    emu.shutdown().await;
}

#[tokio::test]
async fn list_paginates_filters_and_orders() {
    let emu = common::start();
    let api = Api::new(&emu);
    let names = [
        "Alpha", "beta", "Gamma", "alphabet", "Delta", "e", "f", "g", "h", "i", "j", "k",
    ];
    let mut ids = Vec::new();
    for n in names {
        ids.push(s(&create(&api, json!({"name": n})).await["id"]).to_owned());
    }
    let list = |q: &'static str| {
        let api = &api;
        async move {
            let reply = api
                .send(Method::GET, &format!("/oauth_applications{q}"), None)
                .await;
            assert_eq!(reply.status, 200, "{q}: {}", reply.body);
            reply.body
        }
    };
    let ids_of = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| s(&a["id"]).to_owned())
            .collect()
    };

    // Default: limit 10, +created_at.
    let page = list("").await;
    assert_eq!(page["total_count"], 12);
    assert_eq!(ids_of(&page), ids[..10]);
    let page = list("?limit=3&offset=2").await;
    assert_eq!(ids_of(&page), ids[2..5]);
    assert_eq!(page["total_count"], 12);
    let page = list("?offset=11").await;
    assert_eq!(ids_of(&page), ids[11..]);
    assert_eq!(list("?offset=50").await["data"], json!([]));
    let page = list("?order_by=-created_at&limit=2").await;
    assert_eq!(ids_of(&page), vec![ids[11].clone(), ids[10].clone()]);
    let page = list("?order_by=%2Bcreated_at&limit=1").await;
    assert_eq!(ids_of(&page), vec![ids[0].clone()]);
    // Only the first order_by counts.
    let page = list("?order_by=-created_at&order_by=created_at&limit=1").await;
    assert_eq!(ids_of(&page), vec![ids[11].clone()]);
    let page = list("?order_by=name&limit=3").await;
    let got: Vec<_> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| s(&a["name"]))
        .collect();
    assert_eq!(got, ["Alpha", "Delta", "Gamma"]);

    // name_query: case-insensitive substring, or the exact client_id.
    let page = list("?name_query=ALPHA").await;
    assert_eq!(page["total_count"], 2);
    assert_eq!(ids_of(&page), vec![ids[0].clone(), ids[3].clone()]);
    let page = list("?name_query=alpha&limit=1&offset=1").await;
    assert_eq!(page["total_count"], 2);
    assert_eq!(ids_of(&page), vec![ids[3].clone()]);
    let client_id = emu.app(&ids[4]).unwrap().client_id;
    let reply = api
        .send(
            Method::GET,
            &format!("/oauth_applications?name_query={client_id}"),
            None,
        )
        .await;
    assert_eq!(ids_of(&reply.body), vec![ids[4].clone()]);
    assert_eq!(
        list("?name_query=zzz").await,
        json!({"data": [], "total_count": 0})
    );

    for q in [
        "?limit=0",
        "?limit=501",
        "?limit=x",
        "?offset=-1",
        "?order_by=updated_at",
    ] {
        let reply = api
            .send(Method::GET, &format!("/oauth_applications{q}"), None)
            .await;
        assert_eq!(reply.status, 422, "{q}");
    }
    let reply = api
        .send(Method::GET, "/oauth_applications?limit=500", None)
        .await;
    assert_eq!(reply.status, 200);
    emu.shutdown().await;
}

#[tokio::test]
async fn auth_and_not_found_errors() {
    let emu = common::start();
    let api = Api::new(&emu);
    let reply = api
        .send_with(Method::GET, "/oauth_applications", None, None)
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["errors"][0]["code"], "authentication_invalid");
    let reply = api
        .send_with(Method::GET, "/oauth_applications", None, Some("sk_test_x"))
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["errors"][0]["code"], "clerk_key_invalid");
    assert!(reply.body["errors"][0]["long_message"].is_string());
    assert!(reply.body["clerk_trace_id"].is_string());

    let reply = api
        .send(Method::GET, "/oauth_applications/oa_nope", None)
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["errors"][0]["code"], "resource_not_found");
    let reply = api
        .send(Method::DELETE, "/oauth_applications/oa_nope", None)
        .await;
    assert_eq!(reply.status, 404);
    let reply = api.send(Method::GET, "/users", None).await;
    assert_eq!(reply.status, 404, "unemulated endpoints are 404");
    let reply = api.send(Method::PUT, "/oauth_applications", None).await;
    assert_eq!(reply.status, 405);

    let reply = api
        .send(Method::POST, "/oauth_applications", Some(json!({})))
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["errors"][0]["code"], "form_param_missing");
    assert_eq!(reply.body["errors"][0]["meta"]["param_name"], "name");
    let reply = api
        .send(
            Method::POST,
            "/oauth_applications",
            Some(json!({"name": "x".repeat(257)})),
        )
        .await;
    assert_eq!(reply.status, 422);
    emu.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let emu =
        Emulator::start(EmulatorConfig::default().with_rate_limit(2, Duration::from_secs(60)))
            .unwrap();
    let api = Api::new(&emu);
    for _ in 0..2 {
        assert_eq!(
            api.send(Method::GET, "/oauth_applications", None)
                .await
                .status,
            200
        );
    }
    let reply = api
        .send(
            Method::POST,
            "/oauth_applications",
            Some(json!({"name": "n"})),
        )
        .await;
    assert_eq!(reply.status, 429);
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(reply.body["errors"][0]["code"], "too_many_requests");
    assert!(emu.apps().is_empty(), "a rate-limited create does nothing");
    assert_eq!(emu.request_count("POST", routes::OAUTH_APPLICATIONS), 1);
    assert_eq!(emu.requests().last().unwrap().status, Some(429));

    // A short window reopens.
    emu.set_rate_limit(Some(RateLimit {
        requests: 1,
        window: Duration::from_secs(2),
    }));
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        200
    );
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        429
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        200
    );
    emu.set_rate_limit(None);
    for _ in 0..5 {
        assert_eq!(
            api.send(Method::GET, "/oauth_applications", None)
                .await
                .status,
            200
        );
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn fault_injection() {
    let emu = common::start();
    let api = Api::new(&emu);
    let app = create(&api, json!({"name": "App"})).await;
    let path = format!("/oauth_applications/{}", s(&app["id"]));

    // Fail the next 2 GETs of the item with 503; other routes are unaffected.
    emu.fail_next(2, "GET", routes::OAUTH_APPLICATION, 503);
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        200
    );
    for _ in 0..2 {
        let reply = api.send(Method::GET, &path, None).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body["errors"][0]["code"], "service_unavailable");
    }
    assert_eq!(api.send(Method::GET, &path, None).await.status, 200);
    assert!(emu.faults().is_empty());

    // A failed mutation does not happen.
    emu.fail_next(1, "PATCH", routes::OAUTH_APPLICATION, 500);
    let reply = api
        .send(Method::PATCH, &path, Some(json!({"name": "Changed"})))
        .await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body["errors"][0]["code"], "internal_clerk_error");
    assert_eq!(emu.app(s(&app["id"])).unwrap().name, "App");

    // Custom code and Retry-After.
    emu.inject_fault(Fault {
        method: None,
        route: Some(routes::ROTATE_SECRET.into()),
        times: 1,
        action: FaultAction::Status {
            status: 429,
            code: Some("quota_exceeded".into()),
            message: Some("slow down".into()),
            retry_after: Some(7),
        },
    });
    let reply = api
        .send(Method::POST, &format!("{path}/rotate_secret"), None)
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["retry-after"], "7");
    assert_eq!(reply.body["errors"][0]["code"], "quota_exceeded");

    // Delay.
    emu.delay_next(
        1,
        "GET",
        routes::OAUTH_APPLICATION,
        Duration::from_millis(300),
    );
    let t = Instant::now();
    assert_eq!(api.send(Method::GET, &path, None).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(emu.faults().is_empty(), "the delay applied once");
    emu.set_delay(Some(Duration::from_millis(200)));
    let t = Instant::now();
    api.send(Method::GET, "/oauth_applications", None).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
    emu.set_delay(None);

    // Dropped connection: no response at all, and the request had no effect.
    emu.drop_next(1, "DELETE", routes::OAUTH_APPLICATION);
    let err = api
        .client
        .delete(format!("{}{path}", api.base))
        .bearer_auth(&api.key)
        .send()
        .await
        .expect_err("connection dropped");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    assert!(emu.app(s(&app["id"])).is_some());
    assert_eq!(emu.requests().last().unwrap().status, None);
    assert_eq!(api.send(Method::DELETE, &path, None).await.status, 200);

    emu.fail_next(3, "GET", routes::OAUTH_APPLICATIONS, 502);
    emu.clear_faults();
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        200
    );
    emu.shutdown().await;
}

#[tokio::test]
async fn counters_log_and_dashboard_edits() {
    let emu = common::start();
    let api = Api::new(&emu);
    let app = create(&api, json!({"name": "App"})).await;
    let id = s(&app["id"]).to_owned();
    let path = format!("/oauth_applications/{id}");
    api.send(Method::GET, &path, None).await;
    api.send(Method::GET, &path, None).await;
    api.send(Method::GET, "/oauth_applications?limit=5", None)
        .await;
    api.send_with(Method::GET, &path, None, None).await; // 401s count too

    assert_eq!(emu.total_requests(), 5);
    assert_eq!(emu.request_count("POST", routes::OAUTH_APPLICATIONS), 1);
    assert_eq!(emu.request_count("get", routes::OAUTH_APPLICATION), 3);
    assert_eq!(emu.request_count("GET", routes::OAUTH_APPLICATIONS), 1);
    assert_eq!(emu.request_count("PATCH", routes::OAUTH_APPLICATION), 0);
    let log = emu.requests();
    assert_eq!(log.len(), 5);
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[0].path, "/v1/oauth_applications");
    assert_eq!(log[0].status, Some(200));
    assert_eq!(log[1].route.as_deref(), Some(routes::OAUTH_APPLICATION));
    assert_eq!(log[3].query.as_deref(), Some("limit=5"));
    assert_eq!(log[4].status, Some(401));
    assert!(
        log.windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp && w[0].seq < w[1].seq)
    );

    // A dashboard edit: visible through the API, not counted as a request.
    let before = emu.app(&id).unwrap();
    let edited = emu
        .edit_app(&id, |a| {
            a.name = "Edited in dashboard".into();
            a.redirect_uris.push("https://evil.test/cb".into());
        })
        .unwrap();
    assert!(edited.updated_at > before.updated_at);
    assert_eq!(emu.total_requests(), 5);
    let got = api.send(Method::GET, &path, None).await.body;
    assert_eq!(got["name"], "Edited in dashboard");
    assert_eq!(
        got["redirect_uris"].as_array().unwrap().len(),
        1 + before.redirect_uris.len()
    );
    assert!(emu.edit_app("oa_missing", |_| {}).is_none());

    // Seeding and deleting directly.
    let seeded = emu.create_app(NewOAuthApplication::new("Seeded", &["https://s.test/cb"]));
    assert!(emu.secret_is_valid(&seeded.application.client_id, &seeded.client_secret));
    assert_eq!(emu.apps().len(), 2);
    assert!(emu.delete_app(&seeded.application.id));
    assert_eq!(emu.apps().len(), 1);
    assert!(
        !format!("{seeded:?}").contains(&seeded.client_secret),
        "Debug redacts the secret"
    );

    emu.reset_requests();
    assert_eq!(emu.total_requests(), 0);
    assert!(emu.requests().is_empty());
    emu.reset();
    assert!(emu.apps().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints() {
    let emu = common::start();
    let api = Api::new(&emu);
    let admin = emu.admin_url();
    let http = &api.client;
    let app = create(&api, json!({"name": "App"})).await;
    let id = s(&app["id"]);

    let report: Value = http
        .get(format!("{admin}/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["total"], 1);
    assert_eq!(
        report["counts"],
        json!([{"method": "POST", "route": "/oauth_applications", "count": 1}])
    );
    assert_eq!(report["log"][0]["path"], "/v1/oauth_applications");

    let apps: Value = http
        .get(format!("{admin}/apps"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(apps[0]["id"], id);
    assert!(apps[0].get("client_secret").is_none());

    let edited: Value = http
        .patch(format!("{admin}/apps/{id}"))
        .json(&json!({"name": "Dashboard", "pkce_required": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edited["name"], "Dashboard");
    assert_eq!(edited["pkce_required"], true);
    let bad = http
        .patch(format!("{admin}/apps/{id}"))
        .json(&json!({"nope": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let verify = |secret: Value| {
        let body = json!({"client_id": app["client_id"], "client_secret": secret});
        let req = http.post(format!("{admin}/secrets/verify")).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap()["valid"].clone() }
    };
    assert_eq!(verify(app["client_secret"].clone()).await, true);
    assert_eq!(verify(json!("wrong")).await, false);

    let fault = json!({"method": "GET", "route": "/oauth_applications/{oauth_application_id}",
                       "times": 1, "action": {"type": "status", "status": 403}});
    let r = http
        .post(format!("{admin}/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let path = format!("/oauth_applications/{id}");
    assert_eq!(api.send(Method::GET, &path, None).await.status, 403);
    let drop_fault = json!({"times": 1, "action": {"type": "drop"}});
    http.post(format!("{admin}/faults"))
        .json(&drop_fault)
        .send()
        .await
        .unwrap();
    let faults: Value = http
        .get(format!("{admin}/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults.as_array().unwrap().len(), 1);
    http.delete(format!("{admin}/faults")).send().await.unwrap();
    assert_eq!(api.send(Method::GET, &path, None).await.status, 200);

    let limit = json!({"requests": 0, "window_ms": 5000});
    http.put(format!("{admin}/rate_limit"))
        .json(&limit)
        .send()
        .await
        .unwrap();
    let reply = api.send(Method::GET, &path, None).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers["retry-after"], "5");
    http.delete(format!("{admin}/rate_limit"))
        .send()
        .await
        .unwrap();

    http.put(format!("{admin}/delay"))
        .json(&json!({"millis": 150}))
        .send()
        .await
        .unwrap();
    let t = Instant::now();
    api.send(Method::GET, &path, None).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    http.delete(format!("{admin}/delay")).send().await.unwrap();

    let seeded: Value = http
        .post(format!("{admin}/apps"))
        .json(&json!({"name": "Seeded", "public": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seeded["client_secret"], "");
    let r = http
        .delete(format!("{admin}/apps/{}", s(&seeded["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    http.delete(format!("{admin}/requests"))
        .send()
        .await
        .unwrap();
    assert_eq!(emu.total_requests(), 0, "admin calls are not counted");
    http.post(format!("{admin}/reset")).send().await.unwrap();
    assert!(emu.apps().is_empty());
    emu.shutdown().await;
}

#[tokio::test]
async fn binds_loopback_only_and_stops() {
    let err = Emulator::start(EmulatorConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..EmulatorConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");

    let emu = Emulator::start(EmulatorConfig::default().with_secret_key("sk_test_fixed")).unwrap();
    assert!(emu.addr().ip().is_loopback());
    assert_eq!(emu.secret_key(), "sk_test_fixed");
    assert!(emu.base_url().starts_with("http://127.0.0.1:") && emu.base_url().ends_with("/v1"));
    let api = Api::new(&emu);
    assert_eq!(
        api.send(Method::GET, "/oauth_applications", None)
            .await
            .status,
        200
    );
    let base = emu.base_url();
    emu.shutdown().await;
    let after = api
        .client
        .get(format!("{base}/oauth_applications"))
        .send()
        .await;
    assert!(after.is_err(), "stopped emulator still answers");

    // Dropping stops it too.
    let emu = common::start();
    let base = emu.base_url();
    drop(emu);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        api.client
            .get(format!("{base}/oauth_applications"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn binary_prints_ready_line_and_serves() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_clerk-emulator"))
        .args(["--listen", "127.0.0.1:0", "--secret-key", "sk_test_binary"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("ready line in time")
    .unwrap();
    let base = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("base_url="))
        .unwrap_or_else(|| panic!("no base_url in {line:?}"))
        .to_owned();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let fapi = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("frontend_api_url="))
        .unwrap_or_else(|| panic!("no frontend_api_url in {line:?}"))
        .to_owned();
    assert_eq!(
        Some(fapi.as_str()),
        base.strip_suffix("/v1"),
        "the binary is its own Frontend API by default"
    );
    let client = common::client();
    let reply = client
        .post(format!("{base}/oauth_applications"))
        .bearer_auth("sk_test_binary")
        .json(&json!({"name": "From binary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let app: Value = reply.json().await.unwrap();
    assert_eq!(app["token_fetch_url"], format!("{fapi}/oauth/token"));
    let doc: Value = client
        .get(s(&app["discovery_url"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], fapi);
    assert_eq!(doc["token_endpoint"], app["token_fetch_url"]);
    child.kill().await.unwrap();

    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_clerk-emulator"))
        .args(["--listen", "0.0.0.0:0", "--secret-key", "sk_test_binary"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!status.success(), "non-loopback listen address refused");
}
