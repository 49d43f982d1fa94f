//! The master key: where it came from, parsing it (never echoing it), its fingerprint, and
//! sealing and opening one value with AES-256-GCM under it (a random nonce per value, the name
//! as associated data); reading a key file others cannot read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand_core::RngCore;
use sha2::{Digest, Sha256};

use super::{AAD_PREFIX, ENV_KEY, ENV_NEW_KEY, FINGERPRINT_PREFIX, NONCE_LEN, SecretError};
use crate::store::secret::SecretRow;

/// Where a master key came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum KeySource {
    Env,
    NewEnv,
    File(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => write!(f, "from {ENV_KEY}"),
            KeySource::NewEnv => write!(f, "from {ENV_NEW_KEY}"),
            KeySource::File(p) => write!(f, "from {}", p.display()),
        }
    }
}

/// A 256-bit master key and its fingerprint.
pub(super) struct MasterKey {
    bytes: [u8; 32],
    pub(super) fingerprint: String,
    pub(super) source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({} {})", self.fingerprint, self.source)
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort: no zeroize dependency, so keep the compiler from eliding the write.
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl MasterKey {
    pub(super) fn new(bytes: [u8; 32], source: KeySource) -> Self {
        MasterKey {
            fingerprint: fingerprint(&bytes),
            bytes,
            source,
        }
    }

    pub(super) fn random(source: KeySource) -> Self {
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        MasterKey::new(bytes, source)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored). The error names `what` and
    /// the expected form, never the text itself.
    pub(super) fn parse(text: &str, source: KeySource) -> Result<Self, SecretError> {
        let what = match &source {
            KeySource::Env => ENV_KEY.to_string(),
            KeySource::NewEnv => ENV_NEW_KEY.to_string(),
            KeySource::File(p) => format!("master key file {}", p.display()),
        };
        let text = text.trim();
        let form = "64 hex characters (32 bytes), for example from `openssl rand -hex 32`";
        if text.is_empty() {
            return Err(SecretError::Key(format!(
                "{what} is empty; it must be {form}"
            )));
        }
        if text.len() != 64 {
            return Err(SecretError::Key(format!(
                "{what} must be {form}; it has {} characters",
                text.chars().count()
            )));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            SecretError::Key(format!(
                "{what} must be {form}; it has characters that are not hex digits"
            ))
        })?;
        Ok(MasterKey::new(bytes, source))
    }

    pub(super) fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes))
    }

    /// Encrypts `value` for `name` under a fresh random nonce: (nonce, ciphertext with tag).
    pub(super) fn seal(&self, name: &str, value: &str) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let aad = aad(name);
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Key(format!("cannot encrypt secret {name}")))?;
        Ok((nonce.to_vec(), ciphertext))
    }

    /// Decrypts a row, telling a wrong key apart from a damaged row.
    pub(super) fn open(&self, row: &SecretRow) -> Result<String, SecretError> {
        if row.key_fingerprint != self.fingerprint {
            return Err(SecretError::WrongKey {
                name: row.name.clone(),
                stored: row.key_fingerprint.clone(),
                current: self.fingerprint.clone(),
                from: self.source.to_string(),
            });
        }
        let tampered = || SecretError::Tampered {
            name: row.name.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        if row.nonce.len() != NONCE_LEN {
            return Err(tampered());
        }
        let aad = aad(&row.name);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(&row.nonce),
                Payload {
                    msg: &row.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())?;
        String::from_utf8(plain).map_err(|_| tampered())
    }
}

pub(super) fn aad(name: &str) -> Vec<u8> {
    [AAD_PREFIX, name.as_bytes()].concat()
}

/// The fingerprint of a master key: the first 16 hex characters of a domain-separated SHA-256.
/// It names a key without revealing it.
pub fn fingerprint(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_PREFIX)
        .chain_update(key)
        .finalize();
    hex::encode(&digest[..8])
}

/// Reads an existing key file, refusing one others can read. `None` when there is none.
pub(super) fn read_key_file(path: &Path) -> Result<Option<String>, SecretError> {
    let io = |e: std::io::Error| SecretError::Key(format!("cannot read {}: {e}", path.display()));
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Key(format!(
            "{} is readable by others (mode {mode:o}); run: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        SecretError::Key(format!(
            "master key file {} must hold 64 hex characters; it holds other bytes",
            path.display()
        ))
    })
}

/// Makes a rename in `dir` durable (best effort: not every file system syncs directories).
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
