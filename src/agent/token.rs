//! Agent tokens: HS256 JWTs naming an agent and its token generation, signed with a key kept
//! in the data directory (mode 0600, created on first use). Verification pins the algorithm,
//! issuer and audience, and requires an unexpired token.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "agent-token.key";
const ISSUER: &str = "mcp-coordinator";
const AUDIENCE: &str = "mcp-coordinator/agent";

/// What an agent token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The agent id.
    pub sub: String,
    /// The agent name, for people reading a token.
    pub name: String,
    /// The agent's token generation when issued; re-registering or deregistering bumps it.
    pub generation: i64,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token or its key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot use agent token key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("agent token refused: {0}")]
    Invalid(String),
}

/// Issues and checks agent tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys { .. }")
    }
}

impl TokenKeys {
    /// Loads the HMAC key from `dir`, creating 32 random bytes on first use. Two processes
    /// racing to create it end up with the same key (write aside, then link into place).
    pub fn load_or_create(dir: &Path) -> Result<Self, TokenError> {
        let key = crate::keyfile::read_or_create(dir, KEY_FILE, || {
            let mut bytes = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            bytes.to_vec()
        })
        .map_err(|e| TokenError::Key {
            path: dir.join(KEY_FILE),
            message: e.to_string(),
        })?;
        if key.len() < 32 {
            return Err(TokenError::Key {
                path: dir.join(KEY_FILE),
                message: format!("holds {} bytes, expected 32", key.len()),
            });
        }
        Ok(Self::from_secret(&key))
    }

    pub fn from_secret(key: &[u8]) -> Self {
        TokenKeys {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
        }
    }

    /// A token for `agent_id` at `generation`, valid for `ttl_seconds` from `now` (Unix s).
    pub fn issue(
        &self,
        agent_id: &str,
        name: &str,
        generation: i64,
        now: i64,
        ttl_seconds: i64,
    ) -> Result<String, TokenError> {
        let claims = Claims {
            sub: agent_id.to_string(),
            name: name.to_string(),
            generation,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature (HS256 only), issuer, audience and expiry, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                TokenError::Invalid(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "it has expired; register again to get a new one".into()
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "its signature does not verify (forged, or from another coordinator data directory)".into()
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                        "it is not signed with HS256".into()
                    }
                    other => format!("{other:?}"),
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn issue_verify_and_refuse() -> Result<(), TokenError> {
        let keys = TokenKeys::from_secret(&[1u8; 32]);
        let t = keys.issue("agt_1", "w", 3, now(), 60)?;
        let c = keys.verify(&t)?;
        assert_eq!((c.sub.as_str(), c.generation), ("agt_1", 3));
        // Another key: forged.
        let other = TokenKeys::from_secret(&[2u8; 32]);
        assert!(other.verify(&t).is_err());
        // Expired.
        let old = keys.issue("agt_1", "w", 3, now() - 120, 60)?;
        let e = keys
            .verify(&old)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("expired"), "{e}");
        // Tampered payload.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(keys.verify(&parts.join(".")).is_err());
        // alg=none is refused (algorithm pinned).
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            t.split('.').nth(1).unwrap_or("")
        );
        assert!(keys.verify(&none).is_err());
        Ok(())
    }

    #[test]
    fn key_file_is_private_and_stable() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = TokenKeys::load_or_create(dir.path())?;
        let t = a.issue("agt", "n", 1, now(), 60)?;
        let b = TokenKeys::load_or_create(dir.path())?;
        assert!(b.verify(&t).is_ok());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        Ok(())
    }
}
