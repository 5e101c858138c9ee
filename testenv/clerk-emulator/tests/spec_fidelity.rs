//! Proves the emulator against Clerk's Backend API OpenAPI spec: every operation on the three
//! `/oauth_applications` paths is exercised for every status the spec declares for it (plus
//! 401 and 429, see [`CROSS_CUTTING`]), and each body is validated against the schema the spec
//! declares for that path + method + status, `$ref`s resolved and OpenAPI 3.0 `nullable`
//! converted to JSON Schema 2020-12.
//!
//! Two validations per body:
//! - faithful: the spec's schema as written (open objects stay open);
//! - strict: additionally every object schema with `properties` and no `additionalProperties`
//!   is closed (`allOf` merged first), so an extra field, e.g. `client_secret` in a GET
//!   answer, fails.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use clerk_emulator::{EmulatorHandle, RateLimit, routes};
use common::openapi::{Spec, declared_properties, strict, validate};
use common::{Api, Reply};
use reqwest::Method;
use serde_json::{Map, Value, json};

const LIST: (&str, &str) = (routes::OAUTH_APPLICATIONS, "get");
const CREATE: (&str, &str) = (routes::OAUTH_APPLICATIONS, "post");
const GET: (&str, &str) = (routes::OAUTH_APPLICATION, "get");
const PATCH: (&str, &str) = (routes::OAUTH_APPLICATION, "patch");
const DELETE: (&str, &str) = (routes::OAUTH_APPLICATION, "delete");
const ROTATE: (&str, &str) = (routes::ROTATE_SECRET, "post");
const OPERATIONS: [(&str, &str); 6] = [LIST, CREATE, GET, PATCH, DELETE, ROTATE];

/// Statuses the emulator answers on every operation although the operations do not declare
/// them (the spec's global `bearerAuth` security and Clerk's documented rate limits), with
/// the response component the spec uses for that status on other operations.
const CROSS_CUTTING: [(u16, &str); 2] = [(401, "AuthenticationInvalid"), (429, "TooManyRequests")];

const BAPI: &str = "bapi-2026-05-12.yml";

// ---------------------------------------------------------------------------------------
// Exercising the emulator
// ---------------------------------------------------------------------------------------

struct Fidelity {
    spec: Spec,
    api: Api,
    emu: EmulatorHandle,
    covered: BTreeSet<(&'static str, &'static str, u16)>,
    checked: usize,
}

impl Fidelity {
    /// Asserts the reply's status is one the spec allows and its body matches the schema.
    fn conforms(&mut self, op: (&'static str, &'static str), reply: &Reply) {
        let status = reply.status.as_u16();
        let declared = self.spec.declared_statuses(op);
        assert!(
            declared.contains(&status) || CROSS_CUTTING.iter().any(|(s, _)| *s == status),
            "{} {} answered {status}; the spec declares {declared:?}",
            op.1,
            op.0
        );
        let schema = self
            .spec
            .response_schema(op, status)
            .unwrap_or_else(|| panic!("no JSON schema for {op:?} {status}"));
        let pretty = serde_json::to_string_pretty(&reply.body).unwrap_or_default();
        if let Err(e) = validate(&schema, &reply.body) {
            panic!("{op:?} {status}: body violates the spec:\n{e:#?}\n{pretty}");
        }
        if let Err(e) = validate(&strict(&schema), &reply.body) {
            panic!("{op:?} {status}: body has fields the spec does not list:\n{e:#?}\n{pretty}");
        }
        if status == 429 {
            let secs: u64 = reply.headers["retry-after"]
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("429 carries Retry-After seconds");
            assert!(secs >= 1);
        }
        self.covered.insert((op.0, op.1, status));
        self.checked += 1;
    }

    async fn call(
        &mut self,
        op: (&'static str, &'static str),
        path: &str,
        body: Option<Value>,
        expect: u16,
    ) -> Reply {
        let method = Method::from_bytes(op.1.to_uppercase().as_bytes()).expect("method");
        let reply = self.api.send(method, path, body).await;
        assert_eq!(
            reply.status.as_u16(),
            expect,
            "{} {path}: {}",
            op.1,
            reply.body
        );
        self.conforms(op, &reply);
        reply
    }

    async fn call_raw(&mut self, op: (&'static str, &'static str), path: &str, body: &'static str) {
        let method = Method::from_bytes(op.1.to_uppercase().as_bytes()).expect("method");
        let reply = self.api.raw(method, path, body).await;
        assert_eq!(
            reply.status.as_u16(),
            400,
            "{} {path} with {body:?}: {}",
            op.1,
            reply.body
        );
        self.conforms(op, &reply);
    }

    /// 401 without a key and with a wrong key, 429 under a rate limit, 403 and (when
    /// declared) 400 through fault injection: the Clerk error bodies of every operation.
    async fn error_paths(
        &mut self,
        op: (&'static str, &'static str),
        path: &str,
        body: Option<Value>,
    ) {
        let method = Method::from_bytes(op.1.to_uppercase().as_bytes()).expect("method");
        for key in [None, Some("sk_test_wrong")] {
            let reply = self
                .api
                .send_with(method.clone(), path, body.clone(), key)
                .await;
            assert_eq!(reply.status, 401, "{op:?} key {key:?}");
            self.conforms(op, &reply);
        }

        self.emu.set_rate_limit(Some(RateLimit {
            requests: 0,
            window: Duration::from_secs(30),
        }));
        let reply = self.api.send(method.clone(), path, body.clone()).await;
        self.emu.set_rate_limit(None);
        assert_eq!(reply.status, 429, "{op:?}");
        self.conforms(op, &reply);

        for status in [400, 403] {
            if !self.spec.declared_statuses(op).contains(&status) {
                continue;
            }
            self.emu.fail_next(1, op.1, op.0, status);
            let reply = self.api.send(method.clone(), path, body.clone()).await;
            assert_eq!(reply.status.as_u16(), status, "{op:?}");
            self.conforms(op, &reply);
        }
    }

    fn request_is_valid(&self, op: (&str, &str), body: &Value) -> bool {
        validate(&self.spec.request_schema(op), body).is_ok()
    }
}

#[tokio::test]
async fn every_operation_conforms_to_the_spec() {
    let emu = common::start();
    let mut f = Fidelity {
        spec: Spec::load(BAPI, &CROSS_CUTTING),
        api: Api::new(&emu),
        emu: emu.handle(),
        covered: BTreeSet::new(),
        checked: 0,
    };
    let app_schema = f.spec.response_schema(GET, 200).expect("OAuthApplication");
    let app_fields = declared_properties(&app_schema);
    let mut with_secret_fields = app_fields.clone();
    with_secret_fields.insert("client_secret".to_owned());
    assert_eq!(
        declared_properties(&f.spec.response_schema(CREATE, 200).unwrap()),
        with_secret_fields
    );
    assert_eq!(
        declared_properties(&f.spec.response_schema(ROTATE, 200).unwrap()),
        with_secret_fields
    );
    let keys = |v: &Value| {
        v.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };

    // ---- POST /oauth_applications
    let body = json!({
        "name": "Fidelity",
        "redirect_uris": ["https://app.example.test/callback", "com.example.app:/cb"],
        "scopes": "profile email public_metadata",
        "consent_screen_enabled": false,
        "pkce_required": true,
        "public": false
    });
    assert!(f.request_is_valid(CREATE, &body));
    let created = f
        .call(CREATE, "/oauth_applications", Some(body), 200)
        .await
        .body;
    assert_eq!(
        keys(&created),
        with_secret_fields,
        "create answers every field, secret included"
    );
    assert!(!created["client_secret"].as_str().unwrap().is_empty());
    let id = created["id"].as_str().unwrap().to_owned();

    let public =
        json!({"name": "Native", "redirect_uris": ["http://127.0.0.1/cb"], "public": true});
    assert!(f.request_is_valid(CREATE, &public));
    let reply = f
        .call(CREATE, "/oauth_applications", Some(public), 200)
        .await;
    assert_eq!(
        reply.body["client_secret"], "",
        "public clients get an empty secret"
    );

    let minimal = json!({"name": "Defaults", "callback_url": null, "scopes": null});
    assert!(
        f.request_is_valid(CREATE, &minimal),
        "nullable fields accept null"
    );
    f.call(CREATE, "/oauth_applications", Some(minimal), 200)
        .await;

    // Missing `name`: the spec's request schema and the emulator agree it is invalid.
    assert!(!f.request_is_valid(CREATE, &json!({"redirect_uris": []})));
    f.call(
        CREATE,
        "/oauth_applications",
        Some(json!({"redirect_uris": []})),
        422,
    )
    .await;
    f.call(
        CREATE,
        "/oauth_applications",
        Some(json!({"name": "x", "redirect_uris": ["no url"]})),
        422,
    )
    .await;
    f.call(CREATE, "/oauth_applications", Some(json!({"name": 7})), 422)
        .await;
    f.call_raw(CREATE, "/oauth_applications", "{\"name\": ")
        .await;
    f.error_paths(CREATE, "/oauth_applications", Some(json!({"name": "E"})))
        .await;

    // ---- GET /oauth_applications
    let list = f.call(LIST, "/oauth_applications", None, 200).await.body;
    assert_eq!(list["total_count"], 3);
    for q in [
        "?limit=1&offset=1",
        "?order_by=-created_at&name_query=FID",
        "?order_by=name&limit=500&offset=0",
        &format!("?name_query={}", created["client_id"].as_str().unwrap()),
    ] {
        let list = f
            .call(LIST, &format!("/oauth_applications{q}"), None, 200)
            .await
            .body;
        assert!(!list["data"].as_array().unwrap().is_empty(), "{q}");
        for app in list["data"].as_array().unwrap() {
            assert_eq!(keys(app), app_fields, "list items never carry a secret");
        }
    }
    for q in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "offset=-1",
        "order_by=secret",
    ] {
        f.call(LIST, &format!("/oauth_applications?{q}"), None, 422)
            .await;
    }
    f.error_paths(LIST, "/oauth_applications", None).await;

    // ---- GET /oauth_applications/{id}
    let item = format!("/oauth_applications/{id}");
    let got = f.call(GET, &item, None, 200).await.body;
    assert_eq!(
        keys(&got),
        app_fields,
        "GET answers exactly the OAuthApplication fields"
    );
    f.call(GET, "/oauth_applications/oa_missing", None, 404)
        .await;
    f.error_paths(GET, &item, None).await;

    // ---- PATCH /oauth_applications/{id}
    let patch = json!({"name": "Renamed", "redirect_uris": ["https://app.example.test/cb2"]});
    assert!(f.request_is_valid(PATCH, &patch));
    let patched = f.call(PATCH, &item, Some(patch), 200).await.body;
    assert_eq!(keys(&patched), app_fields, "PATCH never answers the secret");
    // `additionalProperties: false`: the spec and the emulator both reject an unknown field.
    let typo = json!({"nmae": "typo"});
    assert!(!f.request_is_valid(PATCH, &typo));
    f.call(PATCH, &item, Some(typo), 422).await;
    f.call(PATCH, &item, Some(json!({"public": "yes"})), 422)
        .await;
    f.call(
        PATCH,
        "/oauth_applications/oa_missing",
        Some(json!({"name": "n"})),
        404,
    )
    .await;
    f.call_raw(PATCH, &item, "[1, 2").await;
    f.error_paths(PATCH, &item, Some(json!({"name": "n"})))
        .await;

    // ---- POST /oauth_applications/{id}/rotate_secret
    let rotate = format!("{item}/rotate_secret");
    let rotated = f.call(ROTATE, &rotate, None, 200).await.body;
    assert_eq!(keys(&rotated), with_secret_fields);
    assert_ne!(rotated["client_secret"], created["client_secret"]);
    f.call(
        ROTATE,
        "/oauth_applications/oa_missing/rotate_secret",
        None,
        404,
    )
    .await;
    f.error_paths(ROTATE, &rotate, None).await;

    // ---- DELETE /oauth_applications/{id}
    f.error_paths(DELETE, &item, None).await;
    let deleted = f.call(DELETE, &item, None, 200).await.body;
    assert_eq!(
        deleted,
        json!({"object": "oauth_application", "id": id, "deleted": true})
    );
    f.call(DELETE, &item, None, 404).await;
    f.call(GET, &item, None, 404).await;

    // Every status every operation declares, plus the cross-cutting ones, was produced.
    for op in OPERATIONS {
        let mut expected = f.spec.declared_statuses(op);
        expected.extend(CROSS_CUTTING.iter().map(|(s, _)| *s));
        for status in expected {
            assert!(
                f.covered.contains(&(op.0, op.1, status)),
                "{op:?} {status} not exercised"
            );
        }
    }
    assert!(f.checked > 50, "only {} responses checked", f.checked);
    emu.shutdown().await;
}

/// The validation is able to fail: deliberately wrong bodies are rejected.
#[tokio::test]
async fn schema_validation_rejects_wrong_bodies() {
    let spec = Spec::load(BAPI, &CROSS_CUTTING);
    let emu = common::start();
    let api = Api::new(&emu);
    let good = api
        .send(
            Method::POST,
            "/oauth_applications",
            Some(json!({"name": "n"})),
        )
        .await
        .body;
    let app_schema = spec.response_schema(GET, 200).unwrap();
    let mut get_body = good.clone();
    get_body.as_object_mut().unwrap().remove("client_secret");
    validate(&app_schema, &get_body).expect("the real body is valid");
    validate(&strict(&app_schema), &get_body).expect("the real body is strictly valid");

    let mutated = |f: &dyn Fn(&mut Map<String, Value>)| {
        let mut b = get_body.clone();
        f(b.as_object_mut().unwrap());
        b
    };
    // A missing required field.
    let missing = mutated(&|m| {
        m.remove("client_id");
    });
    let errors = validate(&app_schema, &missing).unwrap_err();
    assert!(errors.iter().any(|e| e.contains("client_id")), "{errors:?}");
    // Wrong types, nulls where the spec does not allow them, a bad enum value.
    for (field, value) in [
        ("created_at", json!("2026-01-01")),
        ("updated_at", json!(1.5)),
        ("callback_url", Value::Null),
        ("public", json!("false")),
        ("redirect_uris", json!("https://x.test")),
        ("object", json!("oauth_app")),
    ] {
        let bad = mutated(&|m| {
            m.insert(field.into(), value.clone());
        });
        assert!(
            validate(&app_schema, &bad).is_err(),
            "{field}={value} must fail"
        );
    }
    // `nullable: true` fields do accept null.
    let nulls = mutated(&|m| {
        m.insert("client_uri".into(), Value::Null);
        m.insert("client_image_url".into(), Value::Null);
    });
    validate(&app_schema, &nulls).expect("nullable fields accept null");
    // The spec leaves OAuthApplication open, so a leaked secret passes the faithful schema:
    // the strict one catches it.
    let leaked = mutated(&|m| {
        m.insert("client_secret".into(), json!("s3cr3t"));
    });
    assert!(validate(&app_schema, &leaked).is_ok());
    assert!(validate(&strict(&app_schema), &leaked).is_err());

    // The secret-carrying schema (allOf) still requires every OAuthApplication field.
    let with_secret = spec.response_schema(CREATE, 200).unwrap();
    validate(&strict(&with_secret), &good).expect("create body strictly valid");
    let mut no_name = good.clone();
    no_name.as_object_mut().unwrap().remove("name");
    assert!(validate(&with_secret, &no_name).is_err());
    assert!(validate(&strict(&with_secret), &no_name).is_err());

    // Closed schemas (`additionalProperties: false`) reject extras even faithfully.
    let list = spec.response_schema(LIST, 200).unwrap();
    validate(&list, &json!({"data": [get_body], "total_count": 1})).expect("list valid");
    assert!(
        validate(
            &list,
            &json!({"data": [], "total_count": 0, "has_more": false})
        )
        .is_err()
    );
    assert!(validate(&list, &json!({"data": []})).is_err());
    let deleted = spec.response_schema(DELETE, 200).unwrap();
    validate(
        &deleted,
        &json!({"object": "oauth_application", "id": "oa_1", "deleted": true}),
    )
    .expect("deleted object valid");
    assert!(
        validate(
            &deleted,
            &json!({"object": "x", "deleted": true, "extra": 1})
        )
        .is_err()
    );
    assert!(validate(&deleted, &json!({"object": "x"})).is_err());

    // Clerk error bodies.
    let not_found = spec.response_schema(GET, 404).unwrap();
    let ok = json!({"errors": [{"message": "m", "long_message": "l", "code": "c"}]});
    validate(&strict(&not_found), &ok).expect("error body valid");
    assert!(
        validate(
            &not_found,
            &json!({"errors": [{"message": "m", "code": "c"}]})
        )
        .is_err()
    );
    assert!(validate(&not_found, &json!({"error": "not found"})).is_err());
    assert!(validate(&strict(&not_found), &json!({"errors": [], "status": 404})).is_err());

    // Request schemas: nullable converted, PATCH closed.
    let patch = spec.request_schema(PATCH);
    validate(&patch, &json!({"name": null, "public": null})).expect("nulls allowed");
    assert!(validate(&patch, &json!({"name": 5})).is_err());
    assert!(validate(&patch, &json!({"grant_types": []})).is_err());
    emu.shutdown().await;
}
