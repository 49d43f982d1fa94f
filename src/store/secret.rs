//! SQL for the encrypted secret store: rows of name, nonce, ciphertext and key fingerprint.
//! Nothing here sees a value in clear; encryption lives in `crate::secret`.

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx};

/// One row of `secrets`, as stored.
#[derive(Clone, PartialEq)]
pub struct SecretRow {
    pub name: String,
    /// The 96-bit AES-GCM nonce, random per value.
    pub nonce: Vec<u8>,
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// Fingerprint of the master key the row was encrypted under.
    pub key_fingerprint: String,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("key_fingerprint", &self.key_fingerprint)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "name, nonce, ciphertext, key_fingerprint, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SecretRow> {
    Ok(SecretRow {
        name: r.get(0)?,
        nonce: r.get(1)?,
        ciphertext: r.get(2)?,
        key_fingerprint: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

pub fn get(tx: &Tx<'_>, name: &str) -> Result<Option<SecretRow>, StoreError> {
    tx.conn()
        .prepare_cached(&format!("SELECT {COLUMNS} FROM secrets WHERE name = ?1"))?
        .query_row([name], from_row)
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// Every row, by name.
pub fn all(tx: &Tx<'_>) -> Result<Vec<SecretRow>, StoreError> {
    let mut stmt = tx
        .conn()
        .prepare_cached(&format!("SELECT {COLUMNS} FROM secrets ORDER BY name"))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// Inserts a row, or replaces the ciphertext of the row with this name (keeping `created_at`).
pub fn upsert(tx: &Tx<'_>, row: &SecretRow) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(
            "INSERT INTO secrets (name, nonce, ciphertext, key_fingerprint, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce,
             ciphertext = excluded.ciphertext, key_fingerprint = excluded.key_fingerprint,
             updated_at = excluded.updated_at",
        )?
        .execute(params![
            row.name,
            row.nonce,
            row.ciphertext,
            row.key_fingerprint,
            row.created_at,
            row.updated_at
        ])
        .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// Replaces a row's ciphertext under another key (rotation), leaving `updated_at` alone: the
/// value did not change.
pub fn reencrypt(
    tx: &Tx<'_>,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
    key_fingerprint: &str,
) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(
            "UPDATE secrets SET nonce = ?2, ciphertext = ?3, key_fingerprint = ?4 WHERE name = ?1",
        )?
        .execute(params![name, nonce, ciphertext, key_fingerprint])
        .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// Deletes a row; whether there was one.
pub fn delete(tx: &Tx<'_>, name: &str) -> Result<bool, StoreError> {
    let n = tx
        .conn()
        .prepare_cached("DELETE FROM secrets WHERE name = ?1")?
        .execute([name])
        .map_err(StoreError::from_sqlite)?;
    Ok(n > 0)
}

/// How many rows there are.
pub fn count(tx: &Tx<'_>) -> Result<i64, StoreError> {
    tx.conn()
        .prepare_cached("SELECT COUNT(*) FROM secrets")?
        .query_row([], |r| r.get(0))
        .map_err(StoreError::from_sqlite)
}

/// Whether any row was stored under the key with this fingerprint.
pub fn any_under(tx: &Tx<'_>, key_fingerprint: &str) -> Result<bool, StoreError> {
    tx.conn()
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM secrets WHERE key_fingerprint = ?1)")?
        .query_row([key_fingerprint], |r| r.get(0))
        .map_err(StoreError::from_sqlite)
}

/// The fingerprints rows are stored under, most used first, with their counts.
pub fn fingerprints(tx: &Tx<'_>) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(
        "SELECT key_fingerprint, COUNT(*) FROM secrets GROUP BY key_fingerprint
         ORDER BY COUNT(*) DESC, key_fingerprint",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}
