//! Rotating the master key: re-encrypting every secret under a new key (from the
//! environment, or a new key file swapped in atomically), and finishing a key-file rotation a
//! crash interrupted.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::json;

use super::key::{KeySource, MasterKey, read_key_file, sync_dir};
use super::{ENV_KEY, ENV_NEW_KEY, KEY_FILE, SecretError, SecretStore};
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::store::Tx;
use crate::store::secret as sql;

impl SecretStore {
    /// Completes a key-file rotation that committed its re-encryption but was interrupted before
    /// renaming the new key into place: when rows are stored under the key in `master.key.next`,
    /// that key is the current one. A `master.key.next` no row uses is left for `rotate_key`,
    /// which removes it under the write lock.
    pub(super) fn finish_interrupted_rotation(&self, tx: &Tx<'_>) -> Result<(), SecretError> {
        let next = self.next_key_path();
        let Some(text) = read_key_file(&next)? else {
            return Ok(());
        };
        let Ok(key) = MasterKey::parse(&text, KeySource::File(next.clone())) else {
            return Ok(());
        };
        if !sql::any_under(tx, &key.fingerprint)? {
            return Ok(());
        }
        match std::fs::rename(&next, self.key_path()) {
            Ok(()) => {
                sync_dir(&self.data_dir);
                tracing::warn!(
                    fingerprint = %key.fingerprint,
                    "finished an interrupted master key rotation"
                );
                Ok(())
            }
            // Someone else (the rotating process itself) finished it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SecretError::Key(format!(
                "an interrupted key rotation left the current key in {}; cannot move it to {}: {e}",
                next.display(),
                self.key_path().display()
            ))),
        }
    }

    /// Re-encrypts every secret under a fresh key and replaces the key file atomically (temp
    /// file 0600, fsync, rename); returns the count. All or nothing: if any secret does not
    /// decrypt with the current key, nothing changes.
    ///
    /// With [`ENV_KEY`] set, the new key must be given in [`ENV_NEW_KEY`]: every secret is
    /// re-encrypted under it in one transaction and no file is touched; the caller then puts
    /// the new key in [`ENV_KEY`]. Secrets already under the new key are left as they are, so
    /// running it twice is harmless. [`ENV_KEY`] without [`ENV_NEW_KEY`], or the reverse, is
    /// refused with [`SecretError::RotateRefused`] saying what to do.
    pub fn rotate_key(&self, by: &Actor) -> Result<usize, SecretError> {
        let key_path = self.key_path();
        match (self.env_var(ENV_KEY), self.env_var(ENV_NEW_KEY)) {
            (Some(_), None) => Err(SecretError::RotateRefused(format!(
                "{ENV_KEY} is set, so the master key lives wherever you set that variable and \
cannot be replaced from here: set {ENV_NEW_KEY} to a new key (`openssl rand -hex 32`) and run \
rotate-key again, then put that value in {ENV_KEY} everywhere the coordinator runs; or unset \
{ENV_KEY} to use the key file {} instead",
                key_path.display()
            ))),
            (None, Some(_)) => Err(SecretError::RotateRefused(format!(
                "{ENV_NEW_KEY} is only for rotating a key kept in {ENV_KEY}, which is not set; \
unset {ENV_NEW_KEY} to rotate the key file {path}, or first move to a variable with \
{ENV_KEY}=$(cat {path})",
                path = key_path.display()
            ))),
            (Some(_), Some(new)) => {
                let new = MasterKey::parse(&new, KeySource::NewEnv)?;
                self.audit
                    .store()
                    .write(|tx| self.reencrypt_all(tx, &new, by))
            }
            (None, None) => self.rotate_key_file(by),
        }
    }

    /// Decrypts every secret with the current key (failing closed if any does not decrypt),
    /// then re-encrypts each under `new` and audits the rotation, all in the caller's write
    /// transaction. Rows already under `new` are checked and left alone.
    pub(super) fn reencrypt_all(
        &self,
        tx: &Tx<'_>,
        new: &MasterKey,
        by: &Actor,
    ) -> Result<usize, SecretError> {
        let old = self.current_key(tx, false)?;
        if old.fingerprint == new.fingerprint {
            return Err(SecretError::Invalid {
                field: ENV_NEW_KEY,
                message: format!(
                    "is the current master key ({}); give a new one",
                    old.fingerprint
                ),
            });
        }
        let rows = sql::all(tx)?;
        let mut plain = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.key_fingerprint == new.fingerprint {
                new.open(row)?;
            } else {
                plain.push((row.name.as_str(), old.open(row)?));
            }
        }
        for (name, value) in &plain {
            let (nonce, ciphertext) = new.seal(name, value)?;
            sql::reencrypt(tx, name, &nonce, &ciphertext, &new.fingerprint)?;
        }
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: by.clone(),
                action: Action::SecretKeyRotated,
                subject: KEY_FILE.to_string(),
                outcome: Outcome::Ok,
                // Not "secrets": the audit redactor hides values under secret-like keys.
                detail: json!({
                    "count": rows.len(),
                    "from_fingerprint": old.fingerprint,
                    "to_fingerprint": new.fingerprint,
                    "key_source": if new.source == KeySource::NewEnv { ENV_KEY } else { KEY_FILE },
                }),
                critical: true,
            },
        )?;
        Ok(rows.len())
    }

    /// Rotates the key file. The order, and why:
    ///
    /// 1. Under the database write lock (BEGIN IMMEDIATE, held throughout), decrypt every
    ///    secret with the old key; any failure aborts with nothing changed.
    /// 2. Write the new key to `master.key.next` (0600, fsync, directory fsync).
    /// 3. Re-encrypt every row under the new key and audit it, in the same transaction; commit.
    /// 4. Rename `master.key.next` over `master.key` (atomic), fsync the directory.
    ///
    /// A crash before 3 commits leaves the old key and old rows: consistent; the stray
    /// `master.key.next` is removed by the next rotation. A crash between the commit and the
    /// rename leaves rows under the new key while `master.key` still holds the old one; the new
    /// key is safe in `master.key.next`, and every later key load (under the write lock for
    /// writes) sees rows under its fingerprint and finishes the rename. Renaming first would
    /// have lost the old key while the rows still needed it; committing first never loses a key.
    fn rotate_key_file(&self, by: &Actor) -> Result<usize, SecretError> {
        let next = self.next_key_path();
        let key_path = self.key_path();
        let mut wrote_next = false;
        let result = self.audit.store().write(|tx| {
            // Finish an interrupted rotation, or drop an abandoned one: holding the write lock,
            // no other rotation is between writing its key and committing.
            self.finish_interrupted_rotation(tx)?;
            match std::fs::remove_file(&next) {
                Ok(()) => tracing::warn!("removed the key of an abandoned rotation"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SecretError::Key(format!(
                        "cannot remove {}: {e}",
                        next.display()
                    )));
                }
            }
            let new = MasterKey::random(KeySource::File(key_path.clone()));
            // Fail before writing anything if the old key is missing or any row is unreadable;
            // reencrypt_all checks again, in the same transaction.
            let old = self.current_key(tx, false)?;
            for row in sql::all(tx)? {
                old.open(&row)?;
            }
            write_private(&next, format!("{}\n", new.hex()).as_bytes())?;
            wrote_next = true;
            sync_dir(&self.data_dir);
            self.reencrypt_all(tx, &new, by)
        });
        let count = match result {
            Ok(n) => n,
            Err(e) => {
                if wrote_next {
                    let _ = std::fs::remove_file(&next);
                }
                return Err(e);
            }
        };
        match std::fs::rename(&next, &key_path) {
            Ok(()) => {}
            // Another process loading the key finished the rename for us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SecretError::Key(format!(
                    "the secrets were re-encrypted under the new key in {next}, but it could not \
be moved to {path}: {e}; it is moved into place on the next use, or run: mv {next} {path}",
                    next = next.display(),
                    path = key_path.display()
                )));
            }
        }
        sync_dir(&self.data_dir);
        Ok(count)
    }
}

/// Writes a new file readable only by the owner, synced to disk.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let io = |e: std::io::Error| SecretError::Key(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}
