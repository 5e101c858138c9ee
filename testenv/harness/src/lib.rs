//! The real test environment, started on loopback the way controller-runtime's envtest
//! does: etcd + kube-apiserver, oidc-provider, Keycloak and Ory Hydra.
//!
//! Binaries come from `make testenv` (see `testenv/build.sh`); their directory is
//! `$TESTENV_DIR`, or what `testenv/build.sh --print-dir` prints.

pub mod certs;
pub mod fault_proxy;
pub mod hydra;
pub mod keycloak;
pub mod kube;
pub mod oidc_provider;
pub mod process;
pub mod server_support;

pub use self::kube::{ControlPlane, MemoryUsage};
pub use process::{GuardedChild, free_port, testenv_dir, workspace_root};
