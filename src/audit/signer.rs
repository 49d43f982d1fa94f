//! The coordinator's Ed25519 audit key: created on first run in the data directory with mode
//! 0600, loaded afterwards, used to sign the chain head and to check stored signatures.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};

use crate::keyfile;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "audit-signing-key.pem";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    // The cause is in the message, not the error's `source`, so `{:#}` says it once.
    #[error("cannot read or create audit signing key {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("audit signing key {path} is not a PKCS#8 Ed25519 key: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(
        "audit signing key {path} is readable by others (mode {mode:o}); run: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
}

/// Holds the signing key. Never logged, never serialized.
pub struct AuditSigner {
    key: SigningKey,
    public_hex: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner")
            .field("public_key", &self.public_hex)
            .finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// Loads the key from `dir`, creating it on first run (see [`crate::keyfile`]: two
    /// processes starting at once both end up with the same key).
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let bytes = keyfile::read_or_create(dir, KEY_FILE, || {
            // Encoding a freshly generated key cannot fail; an empty file would be refused
            // below as malformed rather than trusted.
            SigningKey::generate(&mut rand_core::OsRng)
                .to_pkcs8_pem(LineEnding::LF)
                .map(|p| p.as_bytes().to_vec())
                .unwrap_or_default()
        })
        .map_err(|e| match e {
            keyfile::KeyFileError::Permissions { path, mode } => {
                KeyError::Permissions { path, mode }
            }
            keyfile::KeyFileError::Io { path, source } => KeyError::Read {
                path,
                cause: source,
            },
        })?;
        let pem = String::from_utf8(bytes).map_err(|e| KeyError::Malformed {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Malformed {
            path,
            message: e.to_string(),
        })?;
        Ok(Self::from_key(key))
    }

    /// A signer over a given key (tests and benchmarks).
    pub fn from_key(key: SigningKey) -> Self {
        let public_hex = hex::encode(key.verifying_key().as_bytes());
        AuditSigner { key, public_hex }
    }

    /// The hex verifying key: what `audit_verify` trusts.
    pub fn public_key_hex(&self) -> &str {
        &self.public_hex
    }

    /// Signs `message`, returning the hex signature.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }
}

/// Checks a hex signature by a hex public key over `message`.
pub fn verify_hex(public_hex: &str, signature_hex: &str, message: &[u8]) -> bool {
    let Ok(pk) = hex::decode(public_hex) else {
        return false;
    };
    let Ok(pk) = <[u8; 32]>::try_from(pk.as_slice()) else {
        return false;
    };
    let Ok(vk) = VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    vk.verify(message, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_private_mode_and_reloaded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = AuditSigner::load_or_create(dir.path())?;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = AuditSigner::load_or_create(dir.path())?;
        assert_eq!(a.public_key_hex(), b.public_key_hex());
        let sig = a.sign_hex(b"head");
        assert!(verify_hex(b.public_key_hex(), &sig, b"head"));
        assert!(!verify_hex(b.public_key_hex(), &sig, b"other"));
        Ok(())
    }

    #[test]
    fn world_readable_key_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        AuditSigner::load_or_create(dir.path())?;
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            AuditSigner::load_or_create(dir.path()),
            Err(KeyError::Permissions { .. })
        ));
        Ok(())
    }
}
