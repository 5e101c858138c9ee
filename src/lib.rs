//! oauth-operator: manages OAuth 2.0 / OpenID Connect clients declaratively.
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod fault;
pub mod leader;
pub mod providers;
pub mod telemetry;
