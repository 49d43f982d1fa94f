//! SQL for remediation proposals: each row is a JSON record plus the columns queries filter
//! on; every status change is guarded by the status it expects.

use rusqlite::{OptionalExtension, params};

use super::{StoreError, Tx};
use crate::remediation::status::RemediationStatus;

fn sqlite<T>(r: rusqlite::Result<T>) -> Result<T, StoreError> {
    r.map_err(StoreError::from_sqlite)
}

pub fn insert_remediation(
    tx: &Tx<'_>,
    id: &str,
    status: RemediationStatus,
    assessment_id: Option<&str>,
    at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    sqlite(
        tx.conn()
            .prepare_cached(
                "INSERT INTO remediations (id, status, assessment_id, created_at, updated_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            )?
            .execute(params![id, status.as_str(), assessment_id, at, doc]),
    )?;
    Ok(())
}

/// Moves a proposal from `from` to `to` with its new record. False when it was not in `from`.
pub fn move_remediation(
    tx: &Tx<'_>,
    id: &str,
    from: RemediationStatus,
    to: RemediationStatus,
    at: &str,
    doc: &str,
) -> Result<bool, StoreError> {
    let n = sqlite(
        tx.conn()
            .prepare_cached(
                "UPDATE remediations SET status = ?3, updated_at = ?4, doc = ?5
                 WHERE id = ?1 AND status = ?2",
            )?
            .execute(params![id, from.as_str(), to.as_str(), at, doc]),
    )?;
    Ok(n == 1)
}

/// One proposal's JSON document.
pub fn get_doc(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    sqlite(
        tx.conn()
            .prepare_cached("SELECT doc FROM remediations WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional(),
    )
}

/// Documents newest first, optionally only those in one status.
pub fn list_docs(
    tx: &Tx<'_>,
    status: Option<RemediationStatus>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(
        "SELECT doc FROM remediations WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = sqlite(
        stmt.query_map(params![status.map(RemediationStatus::as_str), limit], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<Vec<String>>>(),
    )?;
    Ok(rows)
}
