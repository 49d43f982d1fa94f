//! The coordinator's Ed25519 audit key: created on first run in the data directory with mode
//! 0600, loaded afterwards, used to sign the chain head and to check stored signatures.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "audit-signing-key.pem";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read audit signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create audit signing key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
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
    /// Loads the key from `dir`, creating it on first run. Two processes starting at once both
    /// end up with the same key: the file is written under a temporary name and linked into
    /// place, and the loser of that race reads the winner's key.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => return Self::from_pem(&path, &pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeyError::Read { path, source }),
        }
        let create_err = |source| KeyError::Create {
            path: path.clone(),
            source,
        };
        crate::store::create_private_dir(dir).map_err(create_err)?;
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Malformed {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(create_err)?;
            f.write_all(pem.as_bytes()).map_err(create_err)?;
            f.sync_all().map_err(create_err)?;
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Self::from_pem(&path, &pem),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read_to_string(&path).map_err(|source| KeyError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::from_pem(&path, &pem)
            }
            Err(source) => Err(KeyError::Create { path, source }),
        }
    }

    fn from_pem(path: &Path, pem: &str) -> Result<Self, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Malformed {
            path: path.to_path_buf(),
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
