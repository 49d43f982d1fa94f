//! SQL for assessments: each row is a JSON record plus the columns queries filter on; the end
//! of a run is guarded by the status it expects.

use rusqlite::{OptionalExtension, params};

use super::{StoreError, Tx};
use crate::assessment::status::AssessmentStatus;

fn sqlite<T>(r: rusqlite::Result<T>) -> Result<T, StoreError> {
    r.map_err(StoreError::from_sqlite)
}

pub fn insert_assessment(
    tx: &Tx<'_>,
    id: &str,
    kind: &str,
    status: AssessmentStatus,
    created_at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    sqlite(
        tx.conn()
            .prepare_cached(
                "INSERT INTO assessments (id, kind, status, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, kind, status.as_str(), created_at, doc]),
    )?;
    Ok(())
}

/// Ends a running assessment. False when it was no longer running (cancelled, or done).
pub fn finish_assessment(
    tx: &Tx<'_>,
    id: &str,
    status: AssessmentStatus,
    doc: &str,
) -> Result<bool, StoreError> {
    let n = sqlite(
        tx.conn()
            .prepare_cached(
                "UPDATE assessments SET status = ?2, doc = ?3 WHERE id = ?1 AND status = 'running'",
            )?
            .execute(params![id, status.as_str(), doc]),
    )?;
    Ok(n == 1)
}

/// One assessment's JSON document.
pub fn get_doc(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    sqlite(
        tx.conn()
            .prepare_cached("SELECT doc FROM assessments WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional(),
    )
}

/// Documents newest first, optionally only those in one status.
pub fn list_docs(
    tx: &Tx<'_>,
    status: Option<AssessmentStatus>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(
        "SELECT doc FROM assessments WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = sqlite(
        stmt.query_map(params![status.map(AssessmentStatus::as_str), limit], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<Vec<String>>>(),
    )?;
    Ok(rows)
}
