//! SQL for the overseer credential (append-only rows, the newest in force) and the one-row lock
//! that counts wrong answers across processes. Nothing here checks a passphrase; that is
//! `crate::overseer`.

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx};

/// One row of `overseer_credentials`. The two PHC strings are argon2id hashes, never a secret
/// in clear; `Debug` still leaves them out, as nothing needs to see them in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRow {
    pub seq: i64,
    pub name: String,
    /// PHC string of the passphrase.
    pub passphrase: String,
    /// PHC string of the recovery code.
    pub recovery: String,
    /// `init`, `change` or `reset`.
    pub event: String,
    pub set_at: String,
    pub set_by: String,
}

impl std::fmt::Debug for CredentialRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRow")
            .field("seq", &self.seq)
            .field("name", &self.name)
            .field("event", &self.event)
            .field("set_at", &self.set_at)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

/// The lock row: wrong answers in a row, and until when checks are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockRow {
    pub failures: i64,
    pub locked_until: Option<String>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<CredentialRow> {
    Ok(CredentialRow {
        seq: r.get(0)?,
        name: r.get(1)?,
        passphrase: r.get(2)?,
        recovery: r.get(3)?,
        event: r.get(4)?,
        set_at: r.get(5)?,
        set_by: r.get(6)?,
    })
}

/// The credential in force: the newest row, if any.
pub fn current(tx: &Tx<'_>) -> Result<Option<CredentialRow>, StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(
        "SELECT seq, name, passphrase, recovery, event, set_at, set_by
         FROM overseer_credentials ORDER BY seq DESC LIMIT 1",
    )?
    .query_row([], from_row)
    .optional()
    .map_err(StoreError::from_sqlite)
}

/// Adds a credential row after the newest one and returns its sequence number. `row.seq` is
/// ignored.
pub fn append(tx: &Tx<'_>, row: &CredentialRow) -> Result<i64, StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO overseer_credentials (seq, name, passphrase, recovery, event, set_at, set_by)
         VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM overseer_credentials),
                 ?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        row.name,
        row.passphrase,
        row.recovery,
        row.event,
        row.set_at,
        row.set_by
    ])
    .map_err(StoreError::from_sqlite)?;
    Ok(conn.last_insert_rowid())
}

/// The lock row (a database from before the lock existed has it from its migration).
pub fn lock(tx: &Tx<'_>) -> Result<LockRow, StoreError> {
    let conn = tx.conn();
    Ok(conn
        .prepare_cached("SELECT failures, locked_until FROM overseer_lock WHERE id = 1")?
        .query_row([], |r| {
            Ok(LockRow {
                failures: r.get(0)?,
                locked_until: r.get(1)?,
            })
        })
        .optional()
        .map_err(StoreError::from_sqlite)?
        .unwrap_or_default())
}

/// Replaces the lock row.
pub fn set_lock(tx: &Tx<'_>, lock: &LockRow) -> Result<(), StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO overseer_lock (id, failures, locked_until) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET failures = excluded.failures,
                                        locked_until = excluded.locked_until",
    )?
    .execute(params![lock.failures, lock.locked_until])
    .map_err(StoreError::from_sqlite)?;
    Ok(())
}
