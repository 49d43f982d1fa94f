//! Files sealed at rest by the secret store: the remediation backups, which hold a client
//! config exactly as it was, secrets in clear included. Each file is sealed with AES-256-GCM
//! under a data key that is itself a secret row (`mcp-coordinator.backup-key`), so a master
//! key rotation re-encrypts it with every other secret and old backups stay readable. The
//! path the bytes came from is in the header and the associated data: a sealed file restores
//! only to where it was taken from.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand_core::RngCore;
use serde_json::json;

use super::{NONCE_LEN, SecretError, SecretStore};
use crate::audit::{Action, Actor, NewEvent, Outcome, chain};
use crate::store::Tx;
use crate::store::secret::{self as sql, SecretRow};

/// The data key's row. Names with this prefix are refused to people (`check_name`).
pub const BACKUP_KEY: &str = "mcp-coordinator.backup-key";
/// Secret names the coordinator keeps for itself start with this.
pub const RESERVED_PREFIX: &str = "mcp-coordinator.";
/// First line of every sealed file.
const MAGIC: &[u8] = b"mcp-coordinator sealed file v1\n";
const AAD_PREFIX: &[u8] = b"mcp-coordinator/sealed-file/v1\0";

/// Whether `bytes` are a sealed file (backups taken before sealing existed are plain copies).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The path a sealed file was taken from, read from its header without decrypting.
pub fn sealed_origin(bytes: &[u8]) -> Option<String> {
    let (origin, _) = split(bytes)?;
    Some(origin.to_string())
}

/// Header fields: the origin path, then the nonce and ciphertext.
fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let origin = std::str::from_utf8(&rest[..end]).ok()?;
    Some((origin, &rest[end + 1..]))
}

fn aad(origin: &str) -> Vec<u8> {
    [AAD_PREFIX, origin.as_bytes()].concat()
}

impl SecretStore {
    /// Seals the bytes of the file at `origin` for keeping on disk. Creates the data key (and
    /// the master key file, when there is none and no env key) on first use.
    pub fn seal_file(&self, origin: &str, bytes: &[u8]) -> Result<Vec<u8>, SecretError> {
        if origin.contains('\n') {
            return Err(SecretError::Invalid {
                field: "path",
                message: "a path with a line break cannot be sealed".into(),
            });
        }
        let key = self
            .audit
            .store()
            .write(|tx| self.file_key(tx, true, &Actor::system()))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng.fill_bytes(&mut nonce);
        let ciphertext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: bytes,
                    aad: &aad(origin),
                },
            )
            .map_err(|_| SecretError::Key(format!("cannot seal the backup of {origin}")))?;
        Ok([MAGIC, origin.as_bytes(), b"\n", &nonce, &ciphertext].concat())
    }

    /// Opens a sealed file taken from `origin`: the exact bytes that were sealed. Refused when
    /// it was taken from another path, or altered.
    pub fn open_file(&self, origin: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        let damaged = |why: &str| {
            SecretError::Key(format!(
                "the sealed backup of {origin} cannot be opened: {why}"
            ))
        };
        let (from, rest) = split(sealed).ok_or_else(|| damaged("it is not a sealed file"))?;
        if from != origin {
            return Err(damaged(&format!("it was taken from {from}")));
        }
        if rest.len() < NONCE_LEN {
            return Err(damaged("it is cut short"));
        }
        let key = {
            let store = self.audit.store();
            store.read(|tx| self.file_key(tx, false, &Actor::system()))?
        };
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key))
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(origin),
                },
            )
            .map_err(|_| damaged("it was altered, or sealed under another backup key"))
    }

    /// The data key, created (inside the caller's write transaction) when `create`.
    fn file_key(&self, tx: &Tx<'_>, create: bool, by: &Actor) -> Result<[u8; 32], SecretError> {
        if let Some(row) = sql::get(tx, BACKUP_KEY)? {
            let master = self.current_key(tx, false)?;
            let text = master.open(&row)?;
            let mut key = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut key).map_err(|_| SecretError::Tampered {
                name: BACKUP_KEY.into(),
                fingerprint: master.fingerprint.clone(),
            })?;
            return Ok(key);
        }
        if !create {
            return Err(SecretError::NotFound(BACKUP_KEY.into()));
        }
        let master = self.current_key(tx, true)?;
        let mut key = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut key);
        let (nonce, ciphertext) = master.seal(BACKUP_KEY, &hex::encode(key))?;
        let now = chain::now_ts();
        sql::upsert(
            tx,
            &SecretRow {
                name: BACKUP_KEY.into(),
                nonce,
                ciphertext,
                key_fingerprint: master.fingerprint.clone(),
                created_at: now.clone(),
                updated_at: now,
            },
        )?;
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: by.clone(),
                action: Action::SecretSet,
                subject: BACKUP_KEY.into(),
                outcome: Outcome::Ok,
                detail: json!({"purpose": "seals remediation backups", "key_fingerprint": master.fingerprint}),
                critical: true,
            },
        )?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use super::*;
    use crate::audit::{AuditLog, AuditSigner};
    use crate::secret::check_name;
    use crate::store::{Location, Store};

    const KEY: &str = "0303030303030303030303030303030303030303030303030303030303030303";

    #[test]
    fn sealed_files_open_only_unaltered_and_for_their_own_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(&Location::File(dir.path().join("c.db"))).unwrap();
        let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]));
        let store = SecretStore::new(AuditLog::new(db, Arc::new(signer)), dir.path().into())
            .with_env_keys(Some(KEY.into()), None);
        let plain = b"{\"env\": {\"TOKEN\": \"ghp_secret_value_here\"}}\n";
        let sealed = store.seal_file("/home/a/.cursor/mcp.json", plain).unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(12).any(|w| w == b"secret_value"));
        assert_eq!(
            sealed_origin(&sealed).as_deref(),
            Some("/home/a/.cursor/mcp.json")
        );
        assert_eq!(
            store
                .open_file("/home/a/.cursor/mcp.json", &sealed)
                .unwrap(),
            plain
        );
        // Another path, a flipped bit, a forged header: refused.
        assert!(
            store
                .open_file("/home/b/.cursor/mcp.json", &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            store
                .open_file("/home/a/.cursor/mcp.json", &flipped)
                .is_err()
        );
        let forged = [
            MAGIC,
            b"/home/b/.cursor/mcp.json\n",
            &sealed[MAGIC.len() + "/home/a/.cursor/mcp.json\n".len()..],
        ]
        .concat();
        assert!(
            store
                .open_file("/home/b/.cursor/mcp.json", &forged)
                .is_err()
        );
        // One data key for every backup; people cannot name it.
        let again = store.seal_file("/x", b"y").unwrap();
        assert_eq!(store.open_file("/x", &again).unwrap(), b"y");
        assert!(check_name(BACKUP_KEY).is_err());
        assert!(store.list().unwrap().is_empty());
    }
}
