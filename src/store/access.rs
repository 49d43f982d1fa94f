//! SQL for the access tokens and API keys this coordinator issued (`access_tokens`): insert,
//! look up by id or key hash, list, revoke. Nothing here signs or checks a token; that is
//! `crate::auth::local`.

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx};

/// One row of `access_tokens` (never a token or key in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub id: String,
    /// `token` or `api_key`.
    pub kind: String,
    pub name: String,
    /// Comma-separated role names.
    pub roles: String,
    pub issued_at: String,
    pub issued_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
}

const COLUMNS: &str =
    "id, kind, name, roles, issued_at, issued_by, expires_at, revoked_at, revoked_by";

fn from_row(r: &Row<'_>) -> rusqlite::Result<AccessRow> {
    Ok(AccessRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        roles: r.get(3)?,
        issued_at: r.get(4)?,
        issued_by: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        revoked_by: r.get(8)?,
    })
}

/// Adds a row; `key_hash` for API keys only.
pub fn insert(tx: &Tx<'_>, row: &AccessRow, key_hash: Option<&str>) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(
            "INSERT INTO access_tokens
             (id, kind, name, roles, key_hash, issued_at, issued_by, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            row.id,
            row.kind,
            row.name,
            row.roles,
            key_hash,
            row.issued_at,
            row.issued_by,
            row.expires_at
        ])
        .map_err(StoreError::from_sqlite)?;
    Ok(())
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<AccessRow>, StoreError> {
    tx.conn()
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM access_tokens WHERE id = ?1"
        ))?
        .query_row([id], from_row)
        .optional()
        .map_err(StoreError::from_sqlite)
}

pub fn by_key_hash(tx: &Tx<'_>, hash: &str) -> Result<Option<AccessRow>, StoreError> {
    tx.conn()
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM access_tokens WHERE key_hash = ?1"
        ))?
        .query_row([hash], from_row)
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// Every row, newest first.
pub fn list(tx: &Tx<'_>) -> Result<Vec<AccessRow>, StoreError> {
    let conn = tx.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM access_tokens ORDER BY issued_at DESC, id"
    ))?;
    let rows = stmt
        .query_map([], from_row)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)?;
    Ok(rows)
}

/// Marks a row revoked; false when there is no such row or it was revoked already.
pub fn revoke(tx: &Tx<'_>, id: &str, at: &str, by: &str) -> Result<bool, StoreError> {
    let n = tx
        .conn()
        .prepare_cached(
            "UPDATE access_tokens SET revoked_at = ?2, revoked_by = ?3
             WHERE id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![id, at, by])
        .map_err(StoreError::from_sqlite)?;
    Ok(n == 1)
}
