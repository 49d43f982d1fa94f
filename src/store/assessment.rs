//! SQL for assessments and remediation proposals: each row is a JSON record plus the columns
//! queries filter on; status changes are guarded by the status they expect.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

fn sqlite<T>(r: rusqlite::Result<T>) -> Result<T, StoreError> {
    r.map_err(StoreError::from_sqlite)
}

pub fn insert_assessment(
    conn: &Connection,
    id: &str,
    kind: &str,
    status: &str,
    created_at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    sqlite(
        conn.prepare_cached(
            "INSERT INTO assessments (id, kind, status, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![id, kind, status, created_at, doc]),
    )?;
    Ok(())
}

/// Ends a running assessment. False when it was no longer running (cancelled, or done).
pub fn finish_assessment(
    conn: &Connection,
    id: &str,
    status: &str,
    doc: &str,
) -> Result<bool, StoreError> {
    let n = sqlite(
        conn.prepare_cached(
            "UPDATE assessments SET status = ?2, doc = ?3 WHERE id = ?1 AND status = 'running'",
        )?
        .execute(params![id, status, doc]),
    )?;
    Ok(n == 1)
}

pub fn insert_remediation(
    conn: &Connection,
    id: &str,
    status: &str,
    assessment_id: Option<&str>,
    at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    sqlite(
        conn.prepare_cached(
            "INSERT INTO remediations (id, status, assessment_id, created_at, updated_at, doc)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        )?
        .execute(params![id, status, assessment_id, at, doc]),
    )?;
    Ok(())
}

/// Moves a proposal from `from` to `to` with its new record. False when it was not in `from`.
pub fn move_remediation(
    conn: &Connection,
    id: &str,
    from: &str,
    to: &str,
    at: &str,
    doc: &str,
) -> Result<bool, StoreError> {
    let n = sqlite(
        conn.prepare_cached(
            "UPDATE remediations SET status = ?3, updated_at = ?4, doc = ?5
             WHERE id = ?1 AND status = ?2",
        )?
        .execute(params![id, from, to, at, doc]),
    )?;
    Ok(n == 1)
}

/// The two tables that keep their records as JSON documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Docs {
    Assessments,
    Remediations,
}

impl Docs {
    fn table(self) -> &'static str {
        match self {
            Docs::Assessments => "assessments",
            Docs::Remediations => "remediations",
        }
    }
}

/// One record's JSON document.
pub fn get_doc(conn: &Connection, docs: Docs, id: &str) -> Result<Option<String>, StoreError> {
    sqlite(
        conn.prepare_cached(&format!("SELECT doc FROM {} WHERE id = ?1", docs.table()))?
            .query_row([id], |r| r.get(0))
            .optional(),
    )
}

/// Documents newest first, optionally only those in one status.
pub fn list_docs(
    conn: &Connection,
    docs: Docs,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT doc FROM {} WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
        docs.table()
    ))?;
    let rows = sqlite(
        stmt.query_map(params![status, limit], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>(),
    )?;
    Ok(rows)
}
