//! SQL for remediation proposals: each row is a JSON record plus the columns queries filter
//! on; every status change is guarded by the status it expects.

use super::{StoreError, Tx};
use crate::args;
use crate::remediation::status::RemediationStatus;

pub fn insert_remediation(
    tx: &Tx<'_>,
    id: &str,
    status: RemediationStatus,
    assessment_id: Option<&str>,
    at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO remediations (id, status, assessment_id, created_at, updated_at, doc)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        args![id, status.as_str(), assessment_id, at, doc],
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
    let n = tx.exec(
        "UPDATE remediations SET status = ?3, updated_at = ?4, doc = ?5
                 WHERE id = ?1 AND status = ?2",
        args![id, from.as_str(), to.as_str(), at, doc],
    )?;
    Ok(n == 1)
}

/// One proposal's JSON document.
pub fn get_doc(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    tx.one(
        "SELECT doc FROM remediations WHERE id = ?1",
        args![id],
        |r| r.get(0),
    )
}

/// Documents newest first, optionally only those in one status. (`?1` is sent as TEXT, so
/// PostgreSQL knows its type in `?1 IS NULL` too.)
pub fn list_docs(
    tx: &Tx<'_>,
    status: Option<RemediationStatus>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT doc FROM remediations WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
        args![status.map(RemediationStatus::as_str), limit],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// Every move is guarded by the status it expects; lists are newest first and filter by
    /// status; a proposal may name no assessment.
    #[test]
    fn remediations_move_only_from_the_status_they_expect() -> Result<(), Box<dyn std::error::Error>>
    {
        use RemediationStatus::{Executed, Executing, Proposed, Withdrawn};
        for (backend, store) in testing::both("remediations") {
            store.write(|tx| -> Result<(), StoreError> {
                tx.exec(
                    "INSERT INTO assessments (id, kind, status, created_at, doc)
                     VALUES ('asm_1', 'security', 'completed', '2026-01-01', '{}')",
                    &[],
                )?;
                insert_remediation(
                    tx,
                    "rem_1",
                    Proposed,
                    Some("asm_1"),
                    "2026-01-01",
                    "{\"n\":1}",
                )?;
                insert_remediation(tx, "rem_2", Proposed, None, "2026-01-02", "{\"n\":2}")
            })?;
            let moved = store.write(|tx| {
                move_remediation(
                    tx,
                    "rem_1",
                    Proposed,
                    Executing,
                    "2026-01-03",
                    "{\"n\":1,\"s\":\"executing\"}",
                )
            })?;
            assert!(moved, "{backend}");
            let stale = store.write(|tx| {
                move_remediation(tx, "rem_1", Proposed, Withdrawn, "2026-01-03", "{}")
            })?;
            assert!(!stale, "{backend}: moved from a status it was no longer in");
            let done = store.write(|tx| {
                move_remediation(
                    tx,
                    "rem_1",
                    Executing,
                    Executed,
                    "2026-01-04",
                    "{\"n\":1,\"s\":\"executed\"}",
                )
            })?;
            assert!(done, "{backend}");
            store.read(|tx| -> Result<(), StoreError> {
                assert_eq!(
                    get_doc(tx, "rem_1")?.as_deref(),
                    Some("{\"n\":1,\"s\":\"executed\"}"),
                    "{backend}"
                );
                assert_eq!(get_doc(tx, "rem_9")?, None, "{backend}");
                assert_eq!(
                    list_docs(tx, None, 10)?,
                    ["{\"n\":2}", "{\"n\":1,\"s\":\"executed\"}"],
                    "{backend}: newest created first"
                );
                assert_eq!(
                    list_docs(tx, Some(Proposed), 10)?,
                    ["{\"n\":2}"],
                    "{backend}"
                );
                assert!(list_docs(tx, Some(Withdrawn), 10)?.is_empty(), "{backend}");
                Ok(())
            })?;
        }
        Ok(())
    }
}
