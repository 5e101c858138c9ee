//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod oauth;
pub mod openapi;

use clerk_emulator::{Emulator, EmulatorConfig, RunningEmulator};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub fn client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider`; plain http needs no TLS but the builder
    // wants a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("reqwest client")
}

pub fn start() -> RunningEmulator {
    Emulator::start(EmulatorConfig::default()).expect("emulator starts")
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub key: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    pub fn new(emu: &RunningEmulator) -> Self {
        Self {
            client: client(),
            base: emu.base_url(),
            key: emu.secret_key().to_owned(),
        }
    }

    /// Sends `method path` (relative to /v1) with the right key and a JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.send_with(method, path, body, Some(&self.key)).await
    }

    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "non-JSON body for {status}: {e}: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn raw(&self, method: Method, path: &str, body: &'static str) -> Reply {
        let resp = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.json().await.expect("JSON body");
        Reply {
            status,
            headers,
            body,
        }
    }
}
