//! The encrypted secret store: values sealed with AES-256-GCM under one master key (from
//! `MCP_COORDINATOR_MASTER_KEY`, else the 0600 file `master.key` in the data directory), a
//! random 96-bit nonce per value and the name as associated data. It fails closed: a missing or
//! wrong key is an error naming what to do, never an empty value. Every change is audited in the
//! same transaction, by name only; no value (or part of one) reaches a log, an error or an event.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand_core::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod sealed;

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

/// Where a master key came from.
#[derive(Debug, Clone, PartialEq)]
enum KeySource {
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
struct MasterKey {
    bytes: [u8; 32],
    fingerprint: String,
    source: KeySource,
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
    fn new(bytes: [u8; 32], source: KeySource) -> Self {
        MasterKey {
            fingerprint: fingerprint(&bytes),
            bytes,
            source,
        }
    }

    fn random(source: KeySource) -> Self {
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        MasterKey::new(bytes, source)
    }

    /// Parses 64 hex characters (surrounding whitespace ignored). The error names `what` and
    /// the expected form, never the text itself.
    fn parse(text: &str, source: KeySource) -> Result<Self, SecretError> {
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

    fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.bytes))
    }

    /// Encrypts `value` for `name` under a fresh random nonce: (nonce, ciphertext with tag).
    fn seal(&self, name: &str, value: &str) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
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
    fn open(&self, row: &SecretRow) -> Result<String, SecretError> {
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

fn aad(name: &str) -> Vec<u8> {
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
fn read_key_file(path: &Path) -> Result<Option<String>, SecretError> {
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
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
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

    /// Completes a key-file rotation that committed its re-encryption but was interrupted before
    /// renaming the new key into place: when rows are stored under the key in `master.key.next`,
    /// that key is the current one. A `master.key.next` no row uses is left for `rotate_key`,
    /// which removes it under the write lock.
    fn finish_interrupted_rotation(&self, tx: &Tx<'_>) -> Result<(), SecretError> {
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
    fn reencrypt_all(
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
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let io = |e: std::io::Error| SecretError::Key(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::audit::{ActorKind, AuditSigner};
    use crate::store::{Location, Store};
    use std::collections::HashSet;
    use std::sync::Arc;

    const KEY_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const KEY_B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    fn store(dir: &Path, key: Option<&str>) -> SecretStore {
        let db = Store::open(&Location::File(dir.join("c.db"))).unwrap();
        let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]));
        let audit = AuditLog::new(db, Arc::new(signer));
        SecretStore::new(audit, dir.to_path_buf()).with_env_keys(key.map(String::from), None)
    }

    fn me() -> Actor {
        Actor::new(ActorKind::User, "test@host")
    }

    #[test]
    fn nonces_are_unique_per_value() {
        let key = MasterKey::parse(KEY_A, KeySource::Env).unwrap();
        let mut nonces = HashSet::new();
        let mut texts = HashSet::new();
        for _ in 0..1000 {
            let (nonce, ct) = key.seal("N", "the same value").unwrap();
            assert_eq!(nonce.len(), NONCE_LEN);
            assert!(nonces.insert(nonce));
            assert!(texts.insert(ct));
        }
    }

    #[test]
    fn ciphertext_is_bound_to_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Some(KEY_A));
        s.set("ONE", "value-number-one-xyz", &me()).unwrap();
        s.set("TWO", "value-number-two-xyz", &me()).unwrap();
        // ONE's row gets TWO's nonce and ciphertext.
        s.audit
            .store()
            .write(|tx| {
                let two = sql::get(tx, "TWO")?.expect("TWO is stored");
                sql::reencrypt(tx, "ONE", &two.nonce, &two.ciphertext, &two.key_fingerprint)
            })
            .unwrap();
        let err = s.reveal_many(&["ONE".into()], &me()).unwrap_err();
        assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
        assert!(!err.to_string().contains("value-number"));
        let ok = s.reveal_many(&["TWO".into()], &me()).unwrap();
        assert_eq!(ok, vec![("TWO".into(), "value-number-two-xyz".into())]);
        let listed = s.list().unwrap();
        assert!(!listed[0].readable && listed[1].readable);
    }

    #[test]
    fn wrong_key_names_both_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), Some(KEY_A))
            .set("TOKEN", "a-long-secret-value-1234", &me())
            .unwrap();
        let b = store(dir.path(), Some(KEY_B));
        let err = b.reveal_many(&["TOKEN".into()], &me()).unwrap_err();
        let fa = fingerprint(&[1u8; 32]);
        let fb = fingerprint(&[2u8; 32]);
        assert_eq!(
            err.to_string().split(" (").next().unwrap(),
            format!("secret TOKEN was stored under master key {fa}; the current key is {fb}")
        );
        assert_eq!(b.list().unwrap()[0].last4, None);
        let a = store(dir.path(), Some(KEY_A));
        assert_eq!(a.list().unwrap()[0].last4.as_deref(), Some("1234"));
    }

    #[test]
    fn names_and_values_are_checked() {
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["A", "GITHUB_TOKEN", "a.b-c_9", &"x".repeat(128)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Some(KEY_A));
        assert!(s.set("A", "", &me()).is_err());
        assert!(s.set("A", "x\0y", &me()).is_err());
        assert_eq!(last4("short"), "");
        assert_eq!(last4("0123456789abcdef"), "cdef");
    }

    #[test]
    fn env_keys_are_validated_without_echo() {
        for bad in ["abc", &"g".repeat(64), ""] {
            let e = MasterKey::parse(bad, KeySource::Env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(ENV_KEY) && e.contains("64 hex"), "{e}");
            if !bad.is_empty() {
                assert!(!e.contains(bad), "{e}");
            }
        }
    }

    #[test]
    fn key_file_is_created_only_by_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), None);
        let e = s.reveal_many(&["X".into()], &me()).unwrap_err();
        assert!(matches!(e, SecretError::NoKey(_)), "{e}");
        assert!(!dir.path().join(KEY_FILE).exists());
        assert!(!s.set("X", "a-long-secret-value-5678", &me()).unwrap());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.set("X", "a-long-secret-value-9999", &me()).unwrap());
        // The key file gone while secrets exist: no new key is made.
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let e = s.set("Y", "another-secret-value", &me()).unwrap_err();
        assert!(e.to_string().contains("refusing to create"), "{e}");
    }

    #[test]
    fn interrupted_file_rotation_is_finished_on_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), None);
        s.set("X", "a-long-secret-value-5678", &me()).unwrap();
        // Simulate a crash after the commit and before the rename.
        let new = MasterKey::random(KeySource::File(dir.path().join(KEY_FILE)));
        write_private(
            &dir.path().join(NEXT_KEY_FILE),
            format!("{}\n", new.hex()).as_bytes(),
        )
        .unwrap();
        s.audit
            .store()
            .write(|tx| s.reencrypt_all(tx, &new, &me()))
            .unwrap();
        let got = s.reveal_many(&["X".into()], &me()).unwrap();
        assert_eq!(got[0].1, "a-long-secret-value-5678");
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
        // An abandoned next key (no row under it) is removed by the next rotation.
        write_private(
            &dir.path().join(NEXT_KEY_FILE),
            format!("{KEY_B}\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(s.rotate_key(&me()).unwrap(), 1);
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
        let got = s.reveal_many(&["X".into()], &me()).unwrap();
        assert_eq!(got[0].1, "a-long-secret-value-5678");
    }

    #[test]
    fn env_rotation_needs_the_new_key_and_is_repeatable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Some(KEY_A));
        s.set("X", "a-long-secret-value-5678", &me()).unwrap();
        let e = s.rotate_key(&me()).unwrap_err();
        assert!(matches!(e, SecretError::RotateRefused(_)), "{e}");
        let r = s
            .clone()
            .with_env_keys(Some(KEY_A.into()), Some(KEY_B.into()));
        assert_eq!(r.rotate_key(&me()).unwrap(), 1);
        assert_eq!(r.rotate_key(&me()).unwrap(), 1);
        let b = s.clone().with_env_keys(Some(KEY_B.into()), None);
        assert_eq!(
            b.reveal_many(&["X".into()], &me()).unwrap()[0].1,
            "a-long-secret-value-5678"
        );
        assert!(!dir.path().join(KEY_FILE).exists());
    }
}
