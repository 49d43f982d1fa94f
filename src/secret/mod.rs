//! The encrypted secret store: values sealed with AES-256-GCM under one master key (from
//! `MCP_COORDINATOR_MASTER_KEY`, else the 0600 file `master.key` in the data directory), a
//! random 96-bit nonce per value and the name as associated data. It fails closed: a missing or
//! wrong key is an error naming what to do, never an empty value. Every change is audited in the
//! same transaction, by name only; no value (or part of one) reaches a log, an error or an event.
//!
//! What lives here: the store's service (this file), the master key and sealing one value
//! (`key`), key rotation (`rotate`) and the coordinator's own sealed files (`sealed`). It may
//! depend on `audit`, `store` (its `secret` table module, through `Tx`), `keyfile` and
//! `logging` (to keep values out of logs); never on `server`, rmcp or the database driver.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod key;
mod rotate;
mod sealed;

pub use key::fingerprint;
use key::{KeySource, MasterKey, read_key_file};
pub use sealed::{BACKUP_KEY, is_sealed, sealed_origin};

use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome, chain};
use crate::store::secret::{self as sql, SecretRow};
use crate::store::{StoreError, Tx};

/// The environment variable holding the master key as 64 hex characters.
pub const ENV_KEY: &str = "MCP_COORDINATOR_MASTER_KEY";
/// The environment variable holding the new key when rotating a key kept in [`ENV_KEY`].
pub const ENV_NEW_KEY: &str = "MCP_COORDINATOR_NEW_MASTER_KEY";
/// The key file's name inside the data directory (64 hex characters and a newline, mode 0600).
pub const KEY_FILE: &str = "master.key";
/// Where a rotation writes the new key before it is renamed over [`KEY_FILE`].
pub const NEXT_KEY_FILE: &str = "master.key.next";
/// The longest secret name.
pub const MAX_NAME: usize = 128;
/// The largest secret value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Values shorter than this many characters show no last four characters in listings: four of
/// them would give away too much of the value.
pub const LAST4_MIN_CHARS: usize = 12;

/// Associated data prefix: the ciphertext is bound to the name it is stored under.
const AAD_PREFIX: &[u8] = b"mcp-coordinator/secret/v1\0";
/// Domain separation for key fingerprints.
const FINGERPRINT_PREFIX: &[u8] = b"mcp-coordinator/master-key-fingerprint/v1\0";
const NONCE_LEN: usize = 12;

/// What went wrong with a secret, named by what happened. Messages never contain a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A name or value given by the caller is not usable.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// There is no master key to read secrets with; the message says how to provide one.
    #[error("{0}")]
    NoKey(String),
    /// The secret was encrypted under another master key than the current one.
    #[error(
        "secret {name} was stored under master key {stored}; the current key is {current} ({from}): \
provide the key it was stored under, or store the secret again"
    )]
    WrongKey {
        name: String,
        stored: String,
        current: String,
        /// Where the current key came from.
        from: String,
    },
    /// The row claims the current key but does not decrypt: altered, or moved from another name.
    #[error(
        "secret {name} does not decrypt although it was stored under the current master key \
{fingerprint}: its row was altered or copied from another name; store it again"
    )]
    Tampered { name: String, fingerprint: String },
    /// No secret has this name.
    #[error("no secret named {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The master key (variable or file) is malformed or cannot be read or written.
    #[error("{0}")]
    Key(String),
    /// Rotation was refused; the message says how to do it instead.
    #[error("{0}")]
    RotateRefused(String),
}

/// A stored secret as listings show it: never the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The value's last four characters; empty for values shorter than 12 characters; absent
    /// when the value cannot be decrypted with the current key.
    pub last4: Option<String>,
    /// When first stored, RFC 3339 UTC.
    pub created_at: String,
    /// When the value last changed, RFC 3339 UTC.
    pub updated_at: String,
    /// Fingerprint of the master key the value is encrypted under.
    pub key_fingerprint: String,
    /// Whether the current master key decrypts it.
    pub readable: bool,
}

/// Which master key is in use, without the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyStatus {
    /// Its fingerprint; absent when there is no key yet.
    pub fingerprint: Option<String>,
    /// Where it comes from: the variable, or the key file's path.
    pub source: String,
}

/// Checks a secret name: 1 to 128 characters of `A-Z a-z 0-9 _ . -`, not starting with the
/// coordinator's reserved `mcp-coordinator.`.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let invalid = |message: String| SecretError::Invalid {
        field: "name",
        message,
    };
    if name.is_empty() {
        return Err(invalid(
            "is empty; use 1 to 128 of A-Z a-z 0-9 _ . -".into(),
        ));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(format!(
            "is {} characters long; use at most {MAX_NAME}",
            name.chars().count()
        )));
    }
    if name.starts_with(sealed::RESERVED_PREFIX) {
        return Err(invalid(format!(
            "names starting with {} are reserved for the coordinator's own keys",
            sealed::RESERVED_PREFIX
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(format!(
            "{:?} contains {c:?}; use only A-Z a-z 0-9 _ . -",
            name.escape_default().to_string()
        )));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), SecretError> {
    let invalid = |message: String| SecretError::Invalid {
        field: "value",
        message,
    };
    if value.is_empty() {
        return Err(invalid("is empty; a secret needs a value".into()));
    }
    if value.len() > MAX_VALUE {
        return Err(invalid(format!(
            "is {} bytes; the limit is {MAX_VALUE}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(invalid(
            "contains a NUL byte, which no environment variable can hold".into(),
        ));
    }
    Ok(())
}

/// How the store learns the environment keys: from the process, or fixed by the embedder.
#[derive(Clone)]
enum EnvKeys {
    Process,
    Fixed {
        key: Option<String>,
        new_key: Option<String>,
    },
}

/// The secret store of one database and data directory. Cheap to clone.
#[derive(Clone)]
pub struct SecretStore {
    audit: AuditLog,
    data_dir: PathBuf,
    env: EnvKeys,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// A store on `audit`'s database, keeping `master.key` in `data_dir` and reading
    /// [`ENV_KEY`] (and [`ENV_NEW_KEY`] for rotation) from the process environment.
    pub fn new(audit: AuditLog, data_dir: PathBuf) -> Self {
        SecretStore {
            audit,
            data_dir,
            env: EnvKeys::Process,
        }
    }

    /// Uses these values instead of the process's [`ENV_KEY`] and [`ENV_NEW_KEY`] (`None`:
    /// unset). For tests and embedders that must not depend on the environment.
    pub fn with_env_keys(mut self, key: Option<String>, new_key: Option<String>) -> Self {
        self.env = EnvKeys::Fixed { key, new_key };
        self
    }

    fn env_var(&self, var: &str) -> Option<String> {
        match &self.env {
            EnvKeys::Process => std::env::var_os(var).map(|v| {
                v.into_string()
                    .unwrap_or_else(|v| v.to_string_lossy().into())
            }),
            EnvKeys::Fixed { key, new_key } => {
                if var == ENV_KEY {
                    key.clone()
                } else {
                    new_key.clone()
                }
            }
        }
    }

    /// The key file's path.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join(KEY_FILE)
    }

    fn next_key_path(&self) -> PathBuf {
        self.data_dir.join(NEXT_KEY_FILE)
    }

    /// The current master key. From [`ENV_KEY`] when set; else the key file, which is created
    /// only when `create` (a first write) and no secrets exist under another key.
    fn current_key(&self, tx: &Tx<'_>, create: bool) -> Result<MasterKey, SecretError> {
        if let Some(text) = self.env_var(ENV_KEY) {
            return MasterKey::parse(&text, KeySource::Env);
        }
        self.finish_interrupted_rotation(tx)?;
        let path = self.key_path();
        if let Some(text) = read_key_file(&path)? {
            return MasterKey::parse(&text, KeySource::File(path));
        }
        let stored = sql::fingerprints(tx)?;
        if !stored.is_empty() {
            let n: i64 = stored.iter().map(|(_, n)| n).sum();
            let fps: Vec<&str> = stored.iter().map(|(f, _)| f.as_str()).collect();
            return Err(SecretError::NoKey(format!(
                "no master key: {ENV_KEY} is not set and {} does not exist, but {n} secret(s) \
are stored under master key {}; restore that key file (mode 0600) or set {ENV_KEY} to that key \
(64 hex characters){}",
                path.display(),
                fps.join(", "),
                if create {
                    "; refusing to create a new key, which could not read them"
                } else {
                    ""
                }
            )));
        }
        if !create {
            return Err(SecretError::NoKey(format!(
                "no master key: set {ENV_KEY} to 64 hex characters (for example from `openssl \
rand -hex 32`), or store a first secret with `mcp-coordinator secrets set NAME`, which creates {}",
                path.display()
            )));
        }
        let bytes = crate::keyfile::read_or_create(&self.data_dir, KEY_FILE, || {
            let mut hex = MasterKey::random(KeySource::File(path.clone())).hex();
            hex.push('\n');
            hex.into_bytes()
        })
        .map_err(|e| SecretError::Key(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            SecretError::Key(format!(
                "master key file {} must hold 64 hex characters; it holds other bytes",
                path.display()
            ))
        })?;
        tracing::info!(path = %path.display(), "created the secret store's master key file");
        MasterKey::parse(&text, KeySource::File(path))
    }

    /// Which master key is in use (its fingerprint and where it comes from), without creating
    /// one. A malformed key is an error.
    pub fn key_status(&self) -> Result<KeyStatus, SecretError> {
        match self.audit.store().read(|tx| self.current_key(tx, false)) {
            Ok(k) => Ok(KeyStatus {
                fingerprint: Some(k.fingerprint.clone()),
                source: k.source.to_string(),
            }),
            Err(SecretError::NoKey(_)) => Ok(KeyStatus {
                fingerprint: None,
                source: format!(
                    "none ({ENV_KEY} unset, {} absent)",
                    self.key_path().display()
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Stores or replaces; creates the key file on first use when no env key. Returns true if
    /// replaced.
    pub fn set(&self, name: &str, value: &str, by: &Actor) -> Result<bool, SecretError> {
        self.audit
            .store()
            .write(|tx| self.set_in(tx, name, value, by))
    }

    /// Same, inside the caller's write transaction.
    pub fn set_in(
        &self,
        tx: &Tx<'_>,
        name: &str,
        value: &str,
        by: &Actor,
    ) -> Result<bool, SecretError> {
        check_name(name)?;
        check_value(value)?;
        crate::logging::remember_secret(value);
        // Loaded inside the write transaction, so a concurrent rotation cannot slip between
        // reading the key and storing a row under it.
        let key = self.current_key(tx, true)?;
        let existing = sql::get(tx, name)?;
        let (nonce, ciphertext) = key.seal(name, value)?;
        let now = chain::now_ts();
        let replaced = existing.is_some();
        sql::upsert(
            tx,
            &SecretRow {
                name: name.to_string(),
                nonce,
                ciphertext,
                key_fingerprint: key.fingerprint.clone(),
                created_at: existing.map_or_else(|| now.clone(), |r| r.created_at),
                updated_at: now,
            },
        )?;
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: by.clone(),
                action: Action::SecretSet,
                subject: name.to_string(),
                outcome: Outcome::Ok,
                detail: json!({"replaced": replaced, "key_fingerprint": key.fingerprint}),
                critical: true,
            },
        )?;
        Ok(replaced)
    }

    /// Decrypts for handing to a child process only (exec). Audited as `SecretUsed` (names
    /// only) in the same transaction as the read, failed attempts included. Fails closed on
    /// the first missing, wrong-key or damaged secret.
    pub fn reveal_many(
        &self,
        names: &[String],
        by: &Actor,
    ) -> Result<Vec<(String, String)>, SecretError> {
        self.reveal_many_with(names, by, json!({}))
    }

    /// [`Self::reveal_many`] with more audit detail (merged into `{"names": [...]}`), such as
    /// the program the values are handed to. A failed attempt is audited too (outcome error,
    /// with the error message, which never holds a value).
    pub fn reveal_many_with(
        &self,
        names: &[String],
        by: &Actor,
        detail: Value,
    ) -> Result<Vec<(String, String)>, SecretError> {
        for name in names {
            check_name(name)?;
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut detail = match detail {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        detail.insert("names".into(), json!(names));
        self.audit.store().write(|tx| {
            let revealed = self.current_key(tx, false).and_then(|key| {
                names
                    .iter()
                    .map(|name| {
                        let row = sql::get(tx, name)?
                            .ok_or_else(|| SecretError::NotFound(name.clone()))?;
                        Ok((name.clone(), key.open(&row)?))
                    })
                    .collect::<Result<Vec<_>, SecretError>>()
            });
            let mut detail = detail.clone();
            let outcome = match &revealed {
                Ok(values) => {
                    // Whatever receives them, no log line of this process shows them.
                    for (_, value) in values {
                        crate::logging::remember_secret(value);
                    }
                    Outcome::Ok
                }
                Err(SecretError::Store(_)) => return revealed.map(Ok),
                Err(e) => {
                    detail.insert("error".into(), json!(e.to_string()));
                    Outcome::Error
                }
            };
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::SecretUsed,
                    subject: names.join(","),
                    outcome,
                    detail: Value::Object(detail),
                    critical: false,
                },
            )?;
            Ok::<_, SecretError>(revealed)
        })?
    }

    /// Every secret, by name, with the last four characters of those the current key decrypts.
    /// Without any key, every secret is listed unreadable; a malformed key is an error.
    pub fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        let (key, rows) = self.audit.store().read(|tx| {
            let key = match self.current_key(tx, false) {
                Ok(k) => Some(k),
                Err(SecretError::NoKey(_)) => None,
                Err(e) => return Err(e),
            };
            Ok::<_, SecretError>((key, sql::all(tx)?))
        })?;
        Ok(rows
            .into_iter()
            // The coordinator's own keys are not the person's secrets.
            .filter(|row| !row.name.starts_with(sealed::RESERVED_PREFIX))
            .map(|row| {
                let last4 = key
                    .as_ref()
                    .and_then(|k| k.open(&row).ok())
                    .map(|v| last4(&v));
                SecretInfo {
                    readable: last4.is_some(),
                    last4,
                    name: row.name,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    key_fingerprint: row.key_fingerprint,
                }
            })
            .collect())
    }

    /// Whether a secret with this name is stored (readable or not).
    pub fn exists(&self, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        Ok(self.audit.store().read(|tx| sql::get(tx, name))?.is_some())
    }

    /// Deletes a secret (no key needed); whether there was one.
    pub fn remove(&self, name: &str, by: &Actor) -> Result<bool, SecretError> {
        check_name(name)?;
        self.audit.store().write(|tx| {
            if !sql::delete(tx, name)? {
                return Ok(false);
            }
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::SecretRemoved,
                    subject: name.to_string(),
                    outcome: Outcome::Ok,
                    detail: json!({}),
                    critical: true,
                },
            )?;
            Ok(true)
        })
    }
}

/// The last four characters, or nothing for a value too short to show any of.
fn last4(value: &str) -> String {
    let n = value.chars().count();
    if n < LAST4_MIN_CHARS {
        return String::new();
    }
    value.chars().skip(n - 4).collect()
}

#[cfg(test)]
mod tests;
