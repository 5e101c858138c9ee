//! The `oauth-operator.dev/v1alpha1` API: custom resource types, conditions and validation.

pub mod application;
pub mod conditions;
pub mod provider;
pub mod validation;

pub use application::*;
pub use provider::*;

/// The API group of every kind this operator serves.
pub const GROUP: &str = "oauth-operator.dev";

/// All CRDs this operator serves, in the order `crd` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        OAuthApplication::crd(),
        OAuthProvider::crd(),
        ClusterOAuthProvider::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream (what `oauth-operator crd` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// Formats kube-apiserver knows (k8s.io/kube-openapi `strfmt` defaults plus the OpenAPI
    /// number formats): any other makes every `kubectl apply` of the CRDs print
    /// `Warning: unrecognized format`.
    const KNOWN_FORMATS: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "date",
        "date-time",
        "password",
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "duration",
        "datetime",
    ];

    fn formats(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "format"
                        && let Some(f) = v.as_str()
                    {
                        out.push(f.to_string());
                    }
                    formats(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| formats(v, out)),
            _ => {}
        }
    }

    #[test]
    fn crds_carry_only_formats_the_apiserver_knows() {
        let mut found = Vec::new();
        for crd in super::crds() {
            formats(&serde_json::to_value(&crd).unwrap(), &mut found);
        }
        let unknown: Vec<&String> = found
            .iter()
            .filter(|f| !KNOWN_FORMATS.contains(&f.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "unknown formats in the CRDs: {unknown:?}"
        );
    }
}
