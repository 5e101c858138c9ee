//! Clerk's OpenAPI specs (`spec/`), and OpenAPI 3.0 schemas converted to JSON Schema 2020-12
//! (`$ref`s resolved, `nullable` converted), for the spec-fidelity tests.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value, json};

pub struct Spec {
    pub root: Value,
    /// Statuses answered on every operation although undeclared, with the response component
    /// the spec uses for that status elsewhere.
    cross_cutting: Vec<(u16, &'static str)>,
}

impl Spec {
    /// Loads `spec/<file>` (a byte-identical copy of Clerk's spec).
    pub fn load(file: &str, cross_cutting: &[(u16, &'static str)]) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text =
            std::fs::read_to_string(dir.join("spec").join(file)).expect("vendored spec readable");
        // Keep the vendored copy honest when the shared reference is around.
        let shared = dir.join("../../../shared/reference/clerk").join(file);
        if let Ok(original) = std::fs::read_to_string(&shared) {
            assert!(
                original == text,
                "spec/{file} differs from {}",
                shared.display()
            );
        }
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("spec parses");
        let root = serde_json::to_value(yaml).expect("spec converts to JSON");
        assert_eq!(root["openapi"], "3.0.3");
        Self {
            root,
            cross_cutting: cross_cutting.to_vec(),
        }
    }

    pub fn operation(&self, (path, method): (&str, &str)) -> &Value {
        let op = &self.root["paths"][path][method];
        assert!(op.is_object(), "spec has no {method} {path}");
        op
    }

    /// Follows `$ref`s (OpenAPI 3.0 ignores a `$ref`'s siblings).
    pub fn deref<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            v = self
                .root
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    pub fn declared_statuses(&self, op: (&str, &str)) -> BTreeSet<u16> {
        self.operation(op)["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| {
                k.parse()
                    .unwrap_or_else(|_| panic!("non-numeric status {k}"))
            })
            .collect()
    }

    /// The response object for `status`: the operation's, else the cross-cutting component.
    pub fn response(&self, op: (&str, &str), status: u16) -> Option<&Value> {
        let declared = &self.operation(op)["responses"][status.to_string()];
        if declared.is_object() {
            return Some(self.deref(declared));
        }
        let (_, component) = self.cross_cutting.iter().find(|(s, _)| *s == status)?;
        Some(&self.root["components"]["responses"][component])
    }

    /// JSON Schema of the `application/json` body of `status`.
    pub fn response_schema(&self, op: (&str, &str), status: u16) -> Option<Value> {
        let schema = &self.response(op, status)?["content"]["application/json"]["schema"];
        schema.is_object().then(|| self.to_json_schema(schema))
    }

    pub fn request_schema(&self, op: (&str, &str)) -> Value {
        let body = self.deref(&self.operation(op)["requestBody"]);
        let schema = &body["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{op:?} has a JSON request body");
        self.to_json_schema(schema)
    }

    pub fn to_json_schema(&self, schema: &Value) -> Value {
        let mut out = self.convert(schema, &mut Vec::new());
        if let Value::Object(m) = &mut out {
            m.insert(
                "$schema".into(),
                json!("https://json-schema.org/draft/2020-12/schema"),
            );
        }
        out
    }

    /// Inlines `$ref`s and rewrites OpenAPI-only keywords.
    fn convert(&self, schema: &Value, stack: &mut Vec<String>) -> Value {
        let Value::Object(m) = schema else {
            return schema.clone();
        };
        if let Some(r) = m.get("$ref").and_then(Value::as_str) {
            assert!(!stack.iter().any(|s| s == r), "recursive $ref {r}");
            stack.push(r.to_owned());
            let target = self.deref(schema);
            let out = self.convert(target, stack);
            stack.pop();
            return out;
        }
        let mut out = Map::new();
        for (k, v) in m {
            let converted = match k.as_str() {
                "nullable" | "example" | "discriminator" | "xml" | "externalDocs" => continue,
                k if k.starts_with("x-") => continue,
                "properties" => Value::Object(
                    v.as_object()
                        .expect("properties is a map")
                        .iter()
                        .map(|(name, s)| (name.clone(), self.convert(s, stack)))
                        .collect(),
                ),
                "items" | "additionalProperties" | "not" if v.is_object() => self.convert(v, stack),
                "allOf" | "anyOf" | "oneOf" => Value::Array(
                    v.as_array()
                        .expect("composition is an array")
                        .iter()
                        .map(|s| self.convert(s, stack))
                        .collect(),
                ),
                _ => v.clone(),
            };
            out.insert(k.clone(), converted);
        }
        if m.get("nullable") == Some(&Value::Bool(true)) {
            match out.get("type").cloned() {
                Some(Value::String(t)) => {
                    out.insert("type".into(), json!([t, "null"]));
                    if let Some(Value::Array(e)) = out.get_mut("enum") {
                        e.push(Value::Null);
                    }
                }
                _ => return json!({ "anyOf": [Value::Object(out), { "type": "null" }] }),
            }
        }
        Value::Object(out)
    }
}

/// The strict variant: `allOf` of object schemas merged, then open objects closed.
pub fn strict(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut m = m.clone();
    if let Some(Value::Array(branches)) = m.remove("allOf") {
        let mut props = Map::new();
        let mut required: Vec<Value> = Vec::new();
        for b in &branches {
            let b = b.as_object().expect("allOf branch is a schema");
            for k in b.keys() {
                assert!(
                    matches!(
                        k.as_str(),
                        "type" | "properties" | "required" | "description"
                    ),
                    "cannot merge allOf branch keyword {k}"
                );
            }
            if let Some(Value::Object(p)) = b.get("properties") {
                props.extend(p.clone());
            }
            if let Some(Value::Array(r)) = b.get("required") {
                required.extend(r.iter().cloned());
            }
        }
        m.insert("type".into(), json!("object"));
        m.insert("properties".into(), Value::Object(props));
        m.insert("required".into(), Value::Array(required));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        let props = props.iter().map(|(k, v)| (k.clone(), strict(v))).collect();
        m.insert("properties".into(), Value::Object(props));
        m.entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = m.get(key).filter(|v| v.is_object()).map(strict) {
            m.insert(key.into(), v);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(a)) = m.get(key) {
            let a = a.iter().map(strict).collect();
            m.insert(key.into(), Value::Array(a));
        }
    }
    Value::Object(m)
}

pub fn validate(schema: &Value, instance: &Value) -> Result<(), Vec<String>> {
    let validator = jsonschema::draft202012::new(schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at '{}')", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

pub fn declared_properties(schema: &Value) -> BTreeSet<String> {
    strict(schema)["properties"]
        .as_object()
        .expect("object schema")
        .keys()
        .cloned()
        .collect()
}
