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
