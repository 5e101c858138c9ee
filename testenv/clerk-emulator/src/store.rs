//! The in-memory instance: OAuth applications and their current client secrets.

use rand::distr::{Alphanumeric, SampleString};

use crate::model::{
    NewOAuthApplication, OAUTH_APPLICATION_OBJECT, OAuthApplication, OAuthApplicationWithSecret,
};

/// Default scopes of a new application (the create body's `scopes` default).
pub const DEFAULT_SCOPES: &str = "profile email";

/// The OAuth endpoints of the instance, derived from its Frontend API URL (the paths of
/// Clerk's Frontend API spec: `/oauth/authorize`, `/oauth/token`, ...).
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    /// The Frontend API URL without a trailing slash (the OpenID issuer).
    pub issuer: String,
    pub authorize_url: String,
    pub token_fetch_url: String,
    pub user_info_url: String,
    pub discovery_url: String,
    pub token_introspection_url: String,
    pub revocation_url: String,
    pub jwks_url: String,
}

impl Endpoints {
    pub fn new(frontend_api_url: &str) -> Self {
        let base = frontend_api_url.trim_end_matches('/');
        Self {
            authorize_url: format!("{base}/oauth/authorize"),
            token_fetch_url: format!("{base}/oauth/token"),
            user_info_url: format!("{base}/oauth/userinfo"),
            discovery_url: format!("{base}/.well-known/openid-configuration"),
            token_introspection_url: format!("{base}/oauth/token_info"),
            revocation_url: format!("{base}/oauth/token/revoke"),
            jwks_url: format!("{base}/.well-known/jwks.json"),
            issuer: base.to_owned(),
        }
    }
}

/// Fields a PATCH (or a dashboard edit through the API types) may change; `None` = unchanged.
#[derive(Clone, Debug, Default)]
pub(crate) struct AppUpdate {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub callback_url: Option<String>,
    pub scopes: Option<String>,
    pub consent_screen_enabled: Option<bool>,
    pub pkce_required: Option<bool>,
    pub public: Option<bool>,
}

/// Sort key of the list endpoint's `order_by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OrderField {
    CreatedAt,
    Name,
}

struct StoredApp {
    app: OAuthApplication,
    /// The current client secret; `None` for public clients (and for a client made
    /// confidential by PATCH until its secret is rotated).
    secret: Option<String>,
}

pub(crate) struct Store {
    instance_id: String,
    endpoints: Endpoints,
    apps: Vec<StoredApp>,
    last_ms: i64,
}

pub(crate) fn random_string(len: usize) -> String {
    // rand's thread RNG is a CSPRNG (ChaCha12, reseeded from the OS).
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

fn new_secret() -> String {
    random_string(32)
}

/// The first redirect URI, which Clerk mirrors into the deprecated `callback_url`.
fn callback_of(redirect_uris: &[String]) -> String {
    redirect_uris.first().cloned().unwrap_or_default()
}

impl Store {
    pub fn new(instance_id: String, endpoints: Endpoints) -> Self {
        Self {
            instance_id,
            endpoints,
            apps: Vec::new(),
            last_ms: 0,
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Unix milliseconds, strictly increasing across calls, so that `created_at` orders
    /// applications deterministically and every update moves `updated_at`.
    fn now_ms(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp_millis().max(self.last_ms + 1);
        self.last_ms = now;
        now
    }

    fn find(&self, id: &str) -> Option<&StoredApp> {
        self.apps.iter().find(|a| a.app.id == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut StoredApp> {
        self.apps.iter_mut().find(|a| a.app.id == id)
    }

    /// Creates an application; `new` is assumed validated.
    pub fn create(&mut self, new: NewOAuthApplication) -> OAuthApplicationWithSecret {
        let now = self.now_ms();
        let redirect_uris = match (new.redirect_uris, new.callback_url) {
            (Some(uris), _) => uris,
            (None, Some(cb)) if !cb.is_empty() => vec![cb],
            (None, _) => Vec::new(),
        };
        let public = new.public.unwrap_or(false);
        let e = &self.endpoints;
        let app = OAuthApplication {
            object: OAUTH_APPLICATION_OBJECT.to_owned(),
            id: format!("oa_{}", random_string(27)),
            instance_id: self.instance_id.clone(),
            name: new.name,
            client_id: random_string(16),
            client_uri: None,
            client_image_url: None,
            dynamically_registered: false,
            consent_screen_enabled: new.consent_screen_enabled.unwrap_or(true),
            pkce_required: new.pkce_required.unwrap_or(false),
            public,
            scopes: new.scopes.unwrap_or_else(|| DEFAULT_SCOPES.to_owned()),
            callback_url: callback_of(&redirect_uris),
            redirect_uris,
            authorize_url: e.authorize_url.clone(),
            token_fetch_url: e.token_fetch_url.clone(),
            user_info_url: e.user_info_url.clone(),
            discovery_url: e.discovery_url.clone(),
            token_introspection_url: e.token_introspection_url.clone(),
            created_at: now,
            updated_at: now,
        };
        let secret = (!public).then(new_secret);
        self.apps.push(StoredApp {
            app: app.clone(),
            secret: secret.clone(),
        });
        OAuthApplicationWithSecret {
            application: app,
            client_secret: secret.unwrap_or_default(),
        }
    }

    pub fn get(&self, id: &str) -> Option<OAuthApplication> {
        self.find(id).map(|a| a.app.clone())
    }

    /// The application with this OAuth `client_id`.
    pub fn by_client_id(&self, client_id: &str) -> Option<OAuthApplication> {
        self.apps
            .iter()
            .find(|a| a.app.client_id == client_id)
            .map(|a| a.app.clone())
    }

    pub fn all(&self) -> Vec<OAuthApplication> {
        self.apps.iter().map(|a| a.app.clone()).collect()
    }

    /// Applies a validated update; `None` when the id is unknown.
    pub fn update(&mut self, id: &str, update: AppUpdate) -> Option<OAuthApplication> {
        let now = self.now_ms();
        let stored = self.find_mut(id)?;
        let app = &mut stored.app;
        if let Some(name) = update.name {
            app.name = name;
        }
        match (update.redirect_uris, update.callback_url) {
            (Some(uris), _) => app.redirect_uris = uris,
            (None, Some(cb)) => {
                app.redirect_uris = if cb.is_empty() { Vec::new() } else { vec![cb] }
            }
            (None, None) => {}
        }
        app.callback_url = callback_of(&app.redirect_uris);
        if let Some(scopes) = update.scopes {
            app.scopes = scopes;
        }
        if let Some(v) = update.consent_screen_enabled {
            app.consent_screen_enabled = v;
        }
        if let Some(v) = update.pkce_required {
            app.pkce_required = v;
        }
        if let Some(public) = update.public {
            if public {
                stored.secret = None;
            }
            stored.app.public = public;
        }
        stored.app.updated_at = now;
        Some(stored.app.clone())
    }

    /// Edits an application directly (a dashboard edit). `id` cannot change; `updated_at` is
    /// bumped unless the closure set it. Making the client public discards its secret.
    pub fn edit<F: FnOnce(&mut OAuthApplication)>(
        &mut self,
        id: &str,
        f: F,
    ) -> Option<OAuthApplication> {
        let now = self.now_ms();
        let stored = self.find_mut(id)?;
        let before = stored.app.clone();
        f(&mut stored.app);
        stored.app.id.clone_from(&before.id);
        if stored.app.updated_at == before.updated_at && stored.app != before {
            stored.app.updated_at = now;
        }
        if stored.app.public {
            stored.secret = None;
        }
        Some(stored.app.clone())
    }

    /// Issues a new secret (the old one stops being valid). Public clients get `""`.
    pub fn rotate_secret(&mut self, id: &str) -> Option<OAuthApplicationWithSecret> {
        let now = self.now_ms();
        let stored = self.find_mut(id)?;
        let secret = if stored.app.public {
            None
        } else {
            Some(new_secret())
        };
        stored.secret = secret.clone();
        stored.app.updated_at = now;
        Some(OAuthApplicationWithSecret {
            application: stored.app.clone(),
            client_secret: secret.unwrap_or_default(),
        })
    }

    pub fn delete(&mut self, id: &str) -> bool {
        let before = self.apps.len();
        self.apps.retain(|a| a.app.id != id);
        self.apps.len() != before
    }

    pub fn clear(&mut self) {
        self.apps.clear();
    }

    /// Whether `secret` is the current secret of the application with `client_id`.
    pub fn secret_is_valid(&self, client_id: &str, secret: &str) -> bool {
        self.apps
            .iter()
            .filter(|a| a.app.client_id == client_id)
            .filter_map(|a| a.secret.as_deref())
            .any(|s| constant_time_eq(s.as_bytes(), secret.as_bytes()))
    }

    /// The list endpoint: filter by `name_query`, sort, then return `(total_count, page)`.
    pub fn list(
        &self,
        name_query: Option<&str>,
        order: (OrderField, bool),
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<OAuthApplication>) {
        let needle = name_query.filter(|q| !q.is_empty()).map(str::to_lowercase);
        let mut matching: Vec<&OAuthApplication> = self
            .apps
            .iter()
            .map(|a| &a.app)
            .filter(|app| match (&needle, name_query) {
                (Some(n), Some(q)) => app.name.to_lowercase().contains(n) || app.client_id == q,
                _ => true,
            })
            .collect();
        let (field, descending) = order;
        matching.sort_by(|a, b| {
            let ord = match field {
                OrderField::CreatedAt => a.created_at.cmp(&b.created_at),
                OrderField::Name => a.name.cmp(&b.name).then(a.created_at.cmp(&b.created_at)),
            };
            if descending { ord.reverse() } else { ord }
        });
        let total = matching.len();
        let page = matching
            .into_iter()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect();
        (total, page)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
