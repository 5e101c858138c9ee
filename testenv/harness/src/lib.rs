//! The real test environment, started on loopback the way controller-runtime's envtest
//! does: etcd + kube-apiserver, oidc-provider, Keycloak and Ory Hydra.
//!
//! Binaries come from `make testenv` (see `testenv/build.sh`); their directory is
//! `$TESTENV_DIR`, or what `testenv/build.sh --print-dir` prints.

pub mod process;

pub use process::{free_port, testenv_dir, workspace_root, GuardedChild};
