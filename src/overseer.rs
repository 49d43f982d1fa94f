//! The overseer: the person whose passphrase `approvals approve` asks for at the CLI, so that
//! neither the model (an assistant with a shell) nor a child server, both running as the same
//! OS user, can approve by running the command. Sets, changes and resets the credential
//! (argon2id hashes in the database), checks answers, and locks the checks after too many
//! wrong ones, across processes.
//!
//! Why the database and not the data directory: the approvals live in the database, and any
//! data directory can be pointed at it (`--data-dir /tmp/empty --db <the real file>`). A
//! credential kept beside the signing key would simply be absent there. Stored with the
//! approvals it guards, it is present whichever way the file is reached.

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::chain::{format_ts, now_ts, seconds_until};
use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome};
use crate::store::overseer::{self as sql, CredentialRow, LockRow};
use crate::store::{Store, StoreError};

/// The shortest passphrase accepted, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// The longest passphrase accepted, in bytes (argon2 takes any length; a terminal line does not
/// need more).
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
/// The longest overseer name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Wrong answers in a row that lock the checks.
pub const MAX_FAILURES: i64 = 3;
/// How long the checks stay locked after [`MAX_FAILURES`] wrong answers.
pub const LOCK_SECONDS: i64 = 60;

/// Errors of the overseer credential.
#[derive(Debug, thiserror::Error)]
pub enum OverseerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No overseer is set on this database.
    #[error("no overseer is set for this database; set one with `mcp-coordinator overseer init`")]
    NotSet,
    /// `init` when one exists.
    #[error(
        "an overseer ({name}) is already set for this database; change the passphrase with \
`mcp-coordinator overseer change`, or reset it with the recovery code: `mcp-coordinator overseer reset`"
    )]
    AlreadySet { name: String },
    /// Checks are refused until `until` after too many wrong answers.
    #[error(
        "the overseer passphrase is locked after {MAX_FAILURES} wrong answers: approving (at the \
CLI or in the console) and logging in to the console are refused until {until} (in {seconds} s)"
    )]
    Locked { until: String, seconds: u64 },
    /// A wrong passphrase or recovery code.
    #[error(
        "wrong {what} for overseer {name}; {left} more wrong answer(s) lock the overseer's \
passphrase (CLI and console) for {LOCK_SECONDS} s"
    )]
    Wrong {
        what: &'static str,
        name: String,
        left: i64,
    },
    /// A name or passphrase that cannot be used.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Hashing failed (argon2 refused its input or the random source failed).
    #[error("cannot hash the passphrase: {0}")]
    Hash(String),
}

/// What an answer was given for, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Approving an approval at the CLI, or a `critical` one in the console.
    Approve,
    /// Logging in to the oversight console.
    Login,
    /// Changing the passphrase or name (the old passphrase).
    Change,
    /// Resetting with the recovery code.
    Reset,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Approve => "approve",
            Purpose::Login => "login",
            Purpose::Change => "change",
            Purpose::Reset => "reset",
        }
    }
}

/// The overseer in force (never the hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overseer {
    pub name: String,
    /// Which credential row is in force (1 for the first, +1 per change or reset).
    pub credential: i64,
    /// When it was set, RFC 3339 UTC.
    pub set_at: String,
    /// Who set it: `user:OS@HOST`.
    pub set_by: String,
}

impl From<&CredentialRow> for Overseer {
    fn from(r: &CredentialRow) -> Self {
        Overseer {
            name: r.name.clone(),
            credential: r.seq,
            set_at: r.set_at.clone(),
            set_by: r.set_by.clone(),
        }
    }
}

/// Whether an overseer is set, and whether the checks are locked now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub overseer: Option<Overseer>,
    /// Until when the checks are refused, if they are now.
    pub locked_until: Option<String>,
}

/// A one-time recovery code, shown once when an overseer is set or reset; only its argon2id
/// hash is stored. `Debug` does not show it.
pub struct RecoveryCode(String);

impl RecoveryCode {
    fn generate() -> Self {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        let hex = hex::encode(bytes);
        let groups: Vec<&str> = (0..hex.len())
            .step_by(4)
            .filter_map(|i| hex.get(i..i + 4))
            .collect();
        RecoveryCode(groups.join("-"))
    }

    /// The code to show the person: eight groups of four hex digits.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

/// What the coordinator says while no overseer is set: who can approve, and the command that
/// fixes it (`cli` is the start of a command reaching this database, `mcp-coordinator` plus
/// `--data-dir`/`--db` where needed).
pub fn unprotected_warning(cli: &str) -> String {
    format!(
        "no overseer is set for this database, so CLI approvals are unprotected: any process \
running as OS user {user} (an assistant with a shell, a child MCP server) can approve with \
`{cli} approvals approve ID --yes`. Set one in a terminal: `{cli} overseer init`",
        user = crate::audit::os_user_name(),
    )
}

/// A recovery code as typed: dashes and spaces dropped, lower case.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Checks an overseer name: 1 to 64 characters of letters, digits, space, `.`, `_`, `-`, not
/// starting or ending with a space. Returns it trimmed.
pub fn check_name(name: &str) -> Result<String, OverseerError> {
    let name = name.trim();
    let bad = |message: String| OverseerError::Invalid {
        field: "name",
        message,
    };
    if name.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad(format!("at most {MAX_NAME_CHARS} characters")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-')))
    {
        return Err(bad(format!(
            "{c:?} is not allowed; use letters, digits, space, '.', '_' or '-'"
        )));
    }
    Ok(name.to_string())
}

/// Checks a new passphrase: at least [`MIN_PASSPHRASE_CHARS`] characters, at most
/// [`MAX_PASSPHRASE_BYTES`] bytes, not only spaces.
pub fn check_passphrase(passphrase: &str) -> Result<(), OverseerError> {
    let bad = |message: String| OverseerError::Invalid {
        field: "passphrase",
        message,
    };
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS || passphrase.trim().is_empty() {
        return Err(bad(format!(
            "at least {MIN_PASSPHRASE_CHARS} characters; a few words are easier to type and \
to remember than a short password"
        )));
    }
    if passphrase.len() > MAX_PASSPHRASE_BYTES {
        return Err(bad(format!("at most {MAX_PASSPHRASE_BYTES} bytes")));
    }
    Ok(())
}

/// An argon2id PHC string of `secret` (default parameters, a random salt).
fn hash(secret: &str) -> Result<String, OverseerError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| OverseerError::Hash(e.to_string()))
}

/// Whether `secret` matches the PHC string. An unreadable PHC string matches nothing.
fn matches(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The overseer credential of one database, audited in the same transactions.
#[derive(Clone)]
pub struct OverseerService {
    audit: AuditLog,
}

impl OverseerService {
    pub fn new(audit: AuditLog) -> Self {
        OverseerService { audit }
    }

    fn store(&self) -> &Store {
        self.audit.store()
    }

    /// The overseer in force, if one is set.
    pub fn current(&self) -> Result<Option<Overseer>, OverseerError> {
        Ok(self
            .store()
            .read(sql::current)?
            .as_ref()
            .map(Overseer::from))
    }

    /// Whether an overseer is set, and whether checks are locked now.
    pub fn status(&self) -> Result<Status, OverseerError> {
        let (current, lock) = self
            .store()
            .read(|tx| Ok::<_, StoreError>((sql::current(tx)?, sql::lock(tx)?)))?;
        let overseer = current.as_ref().map(Overseer::from);
        let now = now_ts();
        Ok(Status {
            overseer,
            locked_until: lock
                .locked_until
                .filter(|until| until.as_str() > now.as_str()),
        })
    }

    /// Refused while checks are locked.
    pub fn check_unlocked(&self) -> Result<(), OverseerError> {
        locked(&self.store().read(sql::lock)?)
    }

    /// Sets the first overseer. Returns it with its recovery code (shown once, stored hashed).
    pub fn init(
        &self,
        name: &str,
        passphrase: &str,
        by: &Actor,
    ) -> Result<(Overseer, RecoveryCode), OverseerError> {
        let name = check_name(name)?;
        check_passphrase(passphrase)?;
        if let Some(o) = self.current()? {
            return Err(OverseerError::AlreadySet { name: o.name });
        }
        let code = RecoveryCode::generate();
        let (passphrase, recovery) = (hash(passphrase)?, hash(&normalize_code(code.reveal()))?);
        let overseer = self.store().write(|tx| {
            // Checked again under the write lock: two `init`s at once set one overseer.
            if let Some(o) = sql::current(tx)? {
                return Err(OverseerError::AlreadySet { name: o.name });
            }
            self.append_in(tx, &name, passphrase, recovery, "init", by)
        })?;
        Ok((overseer, code))
    }

    /// Replaces the passphrase (and the name, if given), after checking the old passphrase.
    /// The recovery code stays the same.
    pub fn change(
        &self,
        old: &str,
        name: Option<&str>,
        new: &str,
        by: &Actor,
    ) -> Result<Overseer, OverseerError> {
        let name = name.map(check_name).transpose()?;
        check_passphrase(new)?;
        let row = self
            .store()
            .read(sql::current)?
            .ok_or(OverseerError::NotSet)?;
        self.answer(&row, old, Purpose::Change, by)?;
        let passphrase = hash(new)?;
        self.store().write(|tx| {
            let name = name.unwrap_or_else(|| row.name.clone());
            self.append_in(tx, &name, passphrase, row.recovery.clone(), "change", by)
        })
    }

    /// Replaces the passphrase (and the name, if given) with the recovery code, for a person who
    /// forgot the passphrase. Returns a new recovery code; the old one no longer works.
    pub fn reset(
        &self,
        code: &str,
        name: Option<&str>,
        new: &str,
        by: &Actor,
    ) -> Result<(Overseer, RecoveryCode), OverseerError> {
        let name = name.map(check_name).transpose()?;
        check_passphrase(new)?;
        let row = self
            .store()
            .read(sql::current)?
            .ok_or(OverseerError::NotSet)?;
        self.answer(&row, &normalize_code(code), Purpose::Reset, by)?;
        let fresh = RecoveryCode::generate();
        let (passphrase, recovery) = (hash(new)?, hash(&normalize_code(fresh.reveal()))?);
        let overseer = self.store().write(|tx| {
            let name = name.unwrap_or_else(|| row.name.clone());
            self.append_in(tx, &name, passphrase, recovery, "reset", by)
        })?;
        Ok((overseer, fresh))
    }

    /// Checks the overseer's passphrase (to approve at the CLI). Wrong answers count towards
    /// the lock, in the database, so separate processes share it.
    pub fn verify(
        &self,
        passphrase: &str,
        purpose: Purpose,
        by: &Actor,
    ) -> Result<Overseer, OverseerError> {
        let row = self
            .store()
            .read(sql::current)?
            .ok_or(OverseerError::NotSet)?;
        self.answer(&row, passphrase, purpose, by)?;
        Ok(Overseer::from(&row))
    }

    /// Checks `secret` against the passphrase (or, for [`Purpose::Reset`], the recovery code)
    /// of `row` and records the outcome. Refused while locked, even when right.
    fn answer(
        &self,
        row: &CredentialRow,
        secret: &str,
        purpose: Purpose,
        by: &Actor,
    ) -> Result<(), OverseerError> {
        self.check_unlocked()?;
        // Argon2 takes tens of milliseconds on purpose: outside the write transaction, so other
        // processes are not held up while it runs.
        let phc = match purpose {
            Purpose::Reset => &row.recovery,
            Purpose::Approve | Purpose::Login | Purpose::Change => &row.passphrase,
        };
        let right = matches(secret, phc);
        self.store()
            .write(|tx| -> Result<Result<(), OverseerError>, OverseerError> {
                let lock = sql::lock(tx)?;
                // A lock taken by another process while this one was checking applies too.
                locked(&lock)?;
                if right {
                    if lock.failures != 0 || lock.locked_until.is_some() {
                        sql::set_lock(tx, &LockRow::default())?;
                    }
                    return Ok(Ok(()));
                }
                let failures = lock.failures + 1;
                let next = if failures >= MAX_FAILURES {
                    let until = OffsetDateTime::now_utc() + time::Duration::seconds(LOCK_SECONDS);
                    LockRow {
                        failures: 0,
                        locked_until: Some(format_ts(until)),
                    }
                } else {
                    LockRow {
                        failures,
                        locked_until: None,
                    }
                };
                sql::set_lock(tx, &next)?;
                self.audit.append_in(
                    tx,
                    &NewEvent {
                        actor: by.clone(),
                        action: Action::OverseerRefused,
                        subject: format!("overseer:{}", row.name),
                        outcome: Outcome::Error,
                        detail: json!({
                            "purpose": purpose.as_str(),
                            "failures_in_a_row": failures,
                            "locked_until": next.locked_until,
                            "pid": std::process::id(),
                        }),
                        critical: next.locked_until.is_some(),
                    },
                )?;
                // Committed, then refused: the count must survive this error.
                Ok(Err(match next.locked_until {
                    Some(until) => OverseerError::Locked {
                        seconds: seconds_until(&until).max(1),
                        until,
                    },
                    None => OverseerError::Wrong {
                        what: match purpose {
                            Purpose::Reset => "recovery code",
                            Purpose::Approve | Purpose::Login | Purpose::Change => "passphrase",
                        },
                        name: row.name.clone(),
                        left: MAX_FAILURES - failures,
                    },
                }))
            })?
    }

    /// Appends a credential row and its audit event (the name and who set it; never a hash).
    fn append_in(
        &self,
        tx: &crate::store::Tx<'_>,
        name: &str,
        passphrase: String,
        recovery: String,
        event: &str,
        by: &Actor,
    ) -> Result<Overseer, OverseerError> {
        let row = CredentialRow {
            seq: 0,
            name: name.to_string(),
            passphrase,
            recovery,
            event: event.to_string(),
            set_at: now_ts(),
            set_by: by.render(),
        };
        let seq = sql::append(tx, &row)?;
        self.audit.append_in(
            tx,
            &NewEvent {
                actor: by.clone(),
                action: match event {
                    "init" => Action::OverseerSet,
                    "reset" => Action::OverseerReset,
                    _ => Action::OverseerChanged,
                },
                subject: format!("overseer:{name}"),
                outcome: Outcome::Ok,
                detail: json!({"name": name, "credential": seq, "pid": std::process::id()}),
                critical: true,
            },
        )?;
        Ok(Overseer {
            credential: seq,
            ..Overseer::from(&row)
        })
    }
}

/// `Locked` while the lock row says so.
fn locked(lock: &LockRow) -> Result<(), OverseerError> {
    match &lock.locked_until {
        Some(until) if until.as_str() > now_ts().as_str() => Err(OverseerError::Locked {
            until: until.clone(),
            seconds: seconds_until(until).max(1),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditSigner, Query};
    use crate::store::Location;
    use std::sync::Arc;

    fn service() -> Result<OverseerService, Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        Ok(OverseerService::new(AuditLog::new(
            store,
            Arc::new(AuditSigner::from_key(key)),
        )))
    }

    fn me() -> Actor {
        Actor::os_user()
    }

    const PASS: &str = "correct horse battery";

    #[test]
    fn init_verify_and_the_lock() -> Result<(), Box<dyn std::error::Error>> {
        let s = service()?;
        assert!(s.current()?.is_none());
        assert!(matches!(
            s.init("alice", "short", &me()),
            Err(OverseerError::Invalid {
                field: "passphrase",
                ..
            })
        ));
        assert!(matches!(
            s.init("al:ice", PASS, &me()),
            Err(OverseerError::Invalid { field: "name", .. })
        ));
        let (o, code) = s.init(" alice ", PASS, &me())?;
        assert_eq!((o.name.as_str(), o.credential), ("alice", 1));
        assert_eq!(code.reveal().len(), 39);
        assert!(matches!(
            s.init("bob", PASS, &me()),
            Err(OverseerError::AlreadySet { .. })
        ));
        // The hash is argon2id, and the audit event does not carry it.
        let phc = s.store().read(sql::current)?.map(|r| r.passphrase);
        assert!(phc.is_some_and(|p| p.starts_with("$argon2id$")));
        let events = s.audit.query(&Query::default())?;
        assert_eq!(events.events[0].action, "overseer.set");
        assert!(!events.events[0].detail.to_string().contains("argon2"));

        assert_eq!(s.verify(PASS, Purpose::Approve, &me())?.name, "alice");
        assert!(matches!(
            s.verify("wrong one here", Purpose::Approve, &me()),
            Err(OverseerError::Wrong { left: 2, .. })
        ));
        // A right answer resets the count.
        s.verify(PASS, Purpose::Approve, &me())?;
        for left in [2, 1] {
            assert!(matches!(
                s.verify("wrong one here", Purpose::Approve, &me()),
                Err(OverseerError::Wrong { left: l, .. }) if l == left
            ));
        }
        assert!(matches!(
            s.verify("wrong one here", Purpose::Approve, &me()),
            Err(OverseerError::Locked { seconds, .. }) if seconds <= 60
        ));
        // Locked: even the right passphrase is refused.
        assert!(matches!(
            s.verify(PASS, Purpose::Approve, &me()),
            Err(OverseerError::Locked { .. })
        ));
        assert!(s.status()?.locked_until.is_some());
        // The lock lifts at its time.
        s.store().write(|tx| {
            sql::set_lock(
                tx,
                &LockRow {
                    failures: 0,
                    locked_until: Some("2000-01-01T00:00:00.000000Z".into()),
                },
            )
        })?;
        assert!(s.status()?.locked_until.is_none());
        s.verify(PASS, Purpose::Approve, &me())?;
        Ok(())
    }

    #[test]
    fn change_needs_the_old_passphrase_and_reset_the_code() -> Result<(), Box<dyn std::error::Error>>
    {
        let s = service()?;
        assert!(matches!(
            s.change(PASS, None, "another long passphrase", &me()),
            Err(OverseerError::NotSet)
        ));
        let (_, code) = s.init("alice", PASS, &me())?;
        assert!(matches!(
            s.change("not the old one", None, "another long passphrase", &me()),
            Err(OverseerError::Wrong { .. })
        ));
        let o = s.change(PASS, Some("Alice B"), "another long passphrase", &me())?;
        assert_eq!((o.name.as_str(), o.credential), ("Alice B", 2));
        assert!(s.verify(PASS, Purpose::Approve, &me()).is_err());
        s.verify("another long passphrase", Purpose::Approve, &me())?;

        assert!(matches!(
            s.reset("0000-0000", None, "a third long passphrase", &me()),
            Err(OverseerError::Wrong {
                what: "recovery code",
                ..
            })
        ));
        let typed = code.reveal().to_uppercase().replace('-', " ");
        let (o, fresh) = s.reset(&typed, None, "a third long passphrase", &me())?;
        assert_eq!((o.name.as_str(), o.credential), ("Alice B", 3));
        s.verify("a third long passphrase", Purpose::Approve, &me())?;
        // The old code is spent.
        assert!(
            s.reset(code.reveal(), None, "a fourth long passphrase", &me())
                .is_err()
        );
        s.reset(fresh.reveal(), None, "a fourth long passphrase", &me())?;
        Ok(())
    }

    #[test]
    fn credentials_are_never_rewritten_or_deleted() -> Result<(), Box<dyn std::error::Error>> {
        let s = service()?;
        s.init("alice", PASS, &me())?;
        let store = s.store();
        let upd = store.execute_for_test("UPDATE overseer_credentials SET name = 'mallory'");
        assert!(upd.is_err_and(|e| e.to_string().contains("never rewritten")));
        let del = store.execute_for_test("DELETE FROM overseer_credentials");
        assert!(del.is_err_and(|e| e.to_string().contains("never deleted")));
        let del = store.execute_for_test("DELETE FROM overseer_lock");
        assert!(del.is_err());
        Ok(())
    }
}
