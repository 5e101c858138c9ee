//! Authorization codes, access tokens and refresh tokens of the emulated Frontend API.
//!
//! Credentials are kept only as SHA-256 digests: the raw values exist in the HTTP answer that
//! issues them and nowhere else in the emulator. Every token belongs to a grant (one
//! authorization code and the tokens issued from it and from its refresh tokens), so that a
//! replayed code can revoke everything issued from it (RFC 6749 section 4.1.2).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};

use crate::store::random_string;

/// Prefixes of the spec's examples (`clk_code_abc123xyz`, `oat_abc123xyz...`,
/// `clk_refresh_abc123xyz...`).
const CODE_PREFIX: &str = "clk_code_";
const ACCESS_PREFIX: &str = "oat_";
const REFRESH_PREFIX: &str = "clk_refresh_";
/// Random alphanumeric characters per credential: 40 * log2(62) > 238 bits from a CSPRNG.
const RANDOM_LEN: usize = 40;

type Digest = [u8; 32];

fn key(credential: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, credential.as_bytes()).as_ref());
    out
}

/// What an authorization request established, checked when its code is redeemed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodeGrant {
    pub client_id: String,
    pub user_id: String,
    /// The redirect URI the code was delivered to.
    pub redirect_uri: String,
    /// Whether the authorization request carried `redirect_uri` (then the token request must
    /// carry the identical value, RFC 6749 section 4.1.3).
    pub redirect_uri_given: bool,
    pub scopes: Vec<String>,
    /// The S256 `code_challenge`, if the request carried one.
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
}

struct CodeEntry {
    grant: u64,
    code: CodeGrant,
    expires: Instant,
    used: bool,
}

/// What an access or refresh token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenGrant {
    pub grant: u64,
    pub client_id: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub issued_at: i64,
}

struct AccessEntry {
    token: TokenGrant,
    expires: Instant,
}

/// Why a code cannot be redeemed (all `invalid_grant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeError {
    Unknown,
    OtherClient,
    /// Already redeemed: every token issued from it has just been revoked.
    Replayed,
    Expired,
}

#[derive(Default)]
pub(crate) struct Grants {
    codes: HashMap<Digest, CodeEntry>,
    access: HashMap<Digest, AccessEntry>,
    refresh: HashMap<Digest, TokenGrant>,
    next_grant: u64,
}

impl Grants {
    /// Issues a single-use authorization code valid for `ttl`.
    pub fn issue_code(&mut self, code: CodeGrant, ttl: Duration, now: Instant) -> String {
        let value = format!("{CODE_PREFIX}{}", random_string(RANDOM_LEN));
        let grant = self.next_grant;
        self.next_grant += 1;
        self.codes.insert(
            key(&value),
            CodeEntry {
                grant,
                code,
                expires: now + ttl,
                used: false,
            },
        );
        value
    }

    /// Redeems a code for `client_id`: `(grant id, what the authorization established)`. A
    /// code presented by its own client is spent whatever the outcome of the later checks.
    pub fn redeem_code(
        &mut self,
        code: &str,
        client_id: &str,
        now: Instant,
    ) -> Result<(u64, CodeGrant), CodeError> {
        let entry = self.codes.get_mut(&key(code)).ok_or(CodeError::Unknown)?;
        if entry.code.client_id != client_id {
            return Err(CodeError::OtherClient);
        }
        if entry.used {
            let grant = entry.grant;
            self.revoke_grant(grant);
            return Err(CodeError::Replayed);
        }
        entry.used = true;
        if now >= entry.expires {
            return Err(CodeError::Expired);
        }
        Ok((entry.grant, entry.code.clone()))
    }

    /// Issues an access token valid for `ttl`.
    pub fn issue_access(&mut self, token: TokenGrant, ttl: Duration, now: Instant) -> String {
        let value = format!("{ACCESS_PREFIX}{}", random_string(RANDOM_LEN));
        self.access.insert(
            key(&value),
            AccessEntry {
                token,
                expires: now + ttl,
            },
        );
        value
    }

    /// Issues a refresh token (it does not expire; Clerk's live 10 years).
    pub fn issue_refresh(&mut self, token: TokenGrant) -> String {
        let value = format!("{REFRESH_PREFIX}{}", random_string(RANDOM_LEN));
        self.refresh.insert(key(&value), token);
        value
    }

    /// The grant of a live (issued, unexpired, unrevoked) access token.
    pub fn access(&self, token: &str, now: Instant) -> Option<&TokenGrant> {
        self.access
            .get(&key(token))
            .filter(|e| now < e.expires)
            .map(|e| &e.token)
    }

    /// The grant of a live refresh token.
    pub fn refresh(&self, token: &str) -> Option<&TokenGrant> {
        self.refresh.get(&key(token))
    }

    /// Spends a refresh token (refresh tokens rotate on use).
    pub fn take_refresh(&mut self, token: &str) -> Option<TokenGrant> {
        self.refresh.remove(&key(token))
    }

    pub fn revoke_access(&mut self, token: &str) -> bool {
        self.access.remove(&key(token)).is_some()
    }

    /// Revokes every access and refresh token of a grant.
    pub fn revoke_grant(&mut self, grant: u64) {
        self.access.retain(|_, e| e.token.grant != grant);
        self.refresh.retain(|_, t| t.grant != grant);
    }

    /// Live access and refresh tokens.
    pub fn live_tokens(&self, now: Instant) -> usize {
        self.access.values().filter(|e| now < e.expires).count() + self.refresh.len()
    }

    pub fn clear(&mut self) {
        self.codes.clear();
        self.access.clear();
        self.refresh.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_grant() -> CodeGrant {
        CodeGrant {
            client_id: "client".into(),
            user_id: "user_emulated".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_uri_given: true,
            scopes: vec!["email".into()],
            code_challenge: None,
            nonce: None,
        }
    }

    fn token(grant: u64) -> TokenGrant {
        TokenGrant {
            grant,
            client_id: "client".into(),
            user_id: "user_emulated".into(),
            scopes: vec!["email".into()],
            issued_at: 0,
        }
    }

    #[test]
    fn codes_are_single_use_and_replay_revokes_the_grant() {
        let now = Instant::now();
        let mut g = Grants::default();
        let code = g.issue_code(code_grant(), Duration::from_secs(600), now);
        assert!(code.starts_with("clk_code_") && code.len() == 9 + RANDOM_LEN);
        assert_eq!(
            g.redeem_code(&code, "other", now),
            Err(CodeError::OtherClient)
        );
        let (grant, established) = g.redeem_code(&code, "client", now).unwrap();
        assert_eq!(established, code_grant());
        let access = g.issue_access(token(grant), Duration::from_secs(60), now);
        let refresh = g.issue_refresh(token(grant));
        assert!(g.access(&access, now).is_some());
        assert_eq!(
            g.redeem_code(&code, "client", now),
            Err(CodeError::Replayed)
        );
        assert!(g.access(&access, now).is_none(), "replay revokes the grant");
        assert!(g.refresh(&refresh).is_none());
        assert_eq!(
            g.redeem_code("clk_code_nope", "client", now),
            Err(CodeError::Unknown)
        );
    }

    #[test]
    fn expiry() {
        let now = Instant::now();
        let mut g = Grants::default();
        let code = g.issue_code(code_grant(), Duration::from_secs(1), now);
        assert_eq!(
            g.redeem_code(&code, "client", now + Duration::from_secs(1)),
            Err(CodeError::Expired)
        );
        let access = g.issue_access(token(7), Duration::from_secs(10), now);
        assert!(g.access(&access, now + Duration::from_secs(9)).is_some());
        assert!(g.access(&access, now + Duration::from_secs(10)).is_none());
        assert_eq!(g.live_tokens(now), 1);
    }

    #[test]
    fn refresh_rotation_and_revocation() {
        let now = Instant::now();
        let mut g = Grants::default();
        let refresh = g.issue_refresh(token(1));
        assert!(refresh.starts_with("clk_refresh_"));
        assert_eq!(g.take_refresh(&refresh), Some(token(1)));
        assert!(g.refresh(&refresh).is_none());
        let access = g.issue_access(token(2), Duration::from_secs(60), now);
        let other = g.issue_access(token(3), Duration::from_secs(60), now);
        assert!(access.starts_with("oat_"));
        assert!(g.revoke_access(&access));
        assert!(!g.revoke_access(&access));
        assert!(g.access(&access, now).is_none());
        assert!(g.access(&other, now).is_some());
    }
}
