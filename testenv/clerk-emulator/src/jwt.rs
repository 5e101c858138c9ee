//! The id_token signing key: an ECDSA P-256 key generated at start (ES256, RFC 7518 section
//! 3.4), published at `/.well-known/jwks.json`.
//!
//! Clerk signs with RS256; the emulator uses ES256 because `ring` cannot generate RSA keys
//! and a fixed private key would have to live in the repository. Discovery announces it in
//! `id_token_signing_alg_values_supported` and the JWK carries `alg`, so a client that reads
//! either verifies emulator id_tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

pub(crate) const ALG: &str = "ES256";

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    x: String,
    y: String,
}

impl Signer {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating the id_token signing key failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("loading the id_token signing key failed: {e}"))?;
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = key.public_key().as_ref();
        anyhow::ensure!(
            point.len() == 65 && point[0] == 4,
            "unexpected P-256 public key encoding"
        );
        let x = b64(&point[1..33]);
        let y = b64(&point[33..65]);
        // RFC 7638 thumbprint: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(digest(&SHA256, canonical.as_bytes()).as_ref());
        Ok(Self {
            key,
            rng,
            kid,
            x,
            y,
        })
    }

    /// The public key as a JWK (the spec's `JWKS.ecdsa.PublicKey`).
    pub fn jwk(&self) -> Value {
        json!({
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
        })
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let header = json!({"alg": ALG, "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing the id_token failed"))?;
        Ok(format!("{input}.{}", b64(signature.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    #[test]
    fn signs_verifiable_es256_jwts() {
        let signer = Signer::generate().unwrap();
        let jwt = signer.sign(&json!({"sub": "user_emulated"})).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], signer.jwk()["kid"]);
        let jwk = signer.jwk();
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        key.verify(input.as_bytes(), &signature).unwrap();
        assert!(key.verify(b"tampered", &signature).is_err());
    }
}
