//! SQL for the overseer credential (append-only rows, the newest in force) and the one-row lock
//! that counts wrong answers across processes. Nothing here checks a passphrase; that is
//! `crate::overseer`.

use super::sql::Row;
use super::{StoreError, Tx};
use crate::args;

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

fn from_row(r: &Row<'_>) -> Result<CredentialRow, StoreError> {
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
    tx.one(
        "SELECT seq, name, passphrase, recovery, event, set_at, set_by
         FROM overseer_credentials ORDER BY seq DESC LIMIT 1",
        args![],
        from_row,
    )
}

/// Adds a credential row after the newest one and returns its sequence number. `row.seq` is
/// ignored.
pub fn append(tx: &Tx<'_>, row: &CredentialRow) -> Result<i64, StoreError> {
    // The number is chosen here, not by the table: PostgreSQL's identity sequence is never
    // used (a copied database has rows it did not number). Writers are serialised, so
    // MAX + 1 is free; RETURNING (SQLite has it too) says which number the row got.
    tx.one(
        "INSERT INTO overseer_credentials (seq, name, passphrase, recovery, event, set_at, set_by)
         VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM overseer_credentials),
                 ?1, ?2, ?3, ?4, ?5, ?6)
         RETURNING seq",
        args![
            row.name,
            row.passphrase,
            row.recovery,
            row.event,
            row.set_at,
            row.set_by
        ],
        |r| r.get(0),
    )?
    // An INSERT ... RETURNING that inserted its row returns it; this cannot happen.
    .ok_or_else(|| StoreError::NotFound {
        what: "overseer credential just inserted for",
        id: row.name.clone(),
    })
}

/// The lock row (a database from before the lock existed has it from its migration).
pub fn lock(tx: &Tx<'_>) -> Result<LockRow, StoreError> {
    Ok(tx
        .one(
            "SELECT failures, locked_until FROM overseer_lock WHERE id = 1",
            args![],
            |r| {
                Ok(LockRow {
                    failures: r.get(0)?,
                    locked_until: r.get(1)?,
                })
            },
        )?
        .unwrap_or_default())
}

/// Replaces the lock row.
pub fn set_lock(tx: &Tx<'_>, lock: &LockRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO overseer_lock (id, failures, locked_until) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET failures = excluded.failures,
                                        locked_until = excluded.locked_until",
        args![lock.failures, lock.locked_until],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, testing};

    fn credential(event: &str, at: &str) -> CredentialRow {
        CredentialRow {
            seq: 0,
            name: "ann".into(),
            passphrase: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${event}"),
            recovery: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$cmVjb3Zlcnk".into(),
            event: event.into(),
            set_at: at.into(),
            set_by: "user:ann@host".into(),
        }
    }

    fn set_twice(backend: &str, store: &Store) -> Result<(), StoreError> {
        assert_eq!(store.read(current)?, None, "{backend}: none yet");
        let first = store.write(|tx| append(tx, &credential("init", "2026-01-01T00:00:00Z")))?;
        let second = store.write(|tx| append(tx, &credential("change", "2026-01-02T00:00:00Z")))?;
        assert_eq!((first, second), (1, 2), "{backend}: increasing seq");
        let now = store.read(current)?;
        let mut expected = credential("change", "2026-01-02T00:00:00Z");
        expected.seq = 2;
        assert_eq!(now, Some(expected), "{backend}: the newest is in force");

        // The lock row exists from the schema, and is replaced in place.
        assert_eq!(store.read(lock)?, LockRow::default(), "{backend}");
        let locked = LockRow {
            failures: 3,
            locked_until: Some("2026-01-01T00:05:00Z".into()),
        };
        store.write(|tx| set_lock(tx, &locked))?;
        assert_eq!(store.read(lock)?, locked, "{backend}");
        store.write(|tx| set_lock(tx, &LockRow::default()))?;
        assert_eq!(store.read(lock)?, LockRow::default(), "{backend}");
        Ok(())
    }

    #[test]
    fn overseer_credentials_set_twice_get_increasing_seq_on_both_backends() {
        for (backend, store) in testing::both("overseer") {
            if let Err(e) = set_twice(backend, &store) {
                panic!("{backend}: {e}");
            }
        }
    }
}
