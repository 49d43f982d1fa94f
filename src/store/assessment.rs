//! SQL for assessments: each row is a JSON record plus the columns queries filter on; the end
//! of a run is guarded by the status it expects.

use super::{StoreError, Tx};
use crate::args;
use crate::assessment::status::AssessmentStatus;

pub fn insert_assessment(
    tx: &Tx<'_>,
    id: &str,
    kind: &str,
    status: AssessmentStatus,
    created_at: &str,
    doc: &str,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO assessments (id, kind, status, created_at, doc) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![id, kind, status.as_str(), created_at, doc],
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
    let n = tx.exec(
        "UPDATE assessments SET status = ?2, doc = ?3 WHERE id = ?1 AND status = 'running'",
        args![id, status.as_str(), doc],
    )?;
    Ok(n == 1)
}

/// One assessment's JSON document.
pub fn get_doc(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    tx.one(
        "SELECT doc FROM assessments WHERE id = ?1",
        args![id],
        |r| r.get(0),
    )
}

/// Documents newest first, optionally only those in one status. (`?1` is sent as TEXT, so
/// PostgreSQL knows its type in `?1 IS NULL` too.)
pub fn list_docs(
    tx: &Tx<'_>,
    status: Option<AssessmentStatus>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT doc FROM assessments WHERE (?1 IS NULL OR status = ?1)
         ORDER BY created_at DESC, id DESC LIMIT ?2",
        args![status.map(AssessmentStatus::as_str), limit],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// A run ends once, from `running`; lists are newest first and filter by status.
    #[test]
    fn assessments_end_once_and_list_newest_first() -> Result<(), Box<dyn std::error::Error>> {
        for (backend, store) in testing::both("assessments") {
            store.write(|tx| -> Result<(), StoreError> {
                insert_assessment(
                    tx,
                    "asm_1",
                    "security",
                    AssessmentStatus::Running,
                    "2026-01-01",
                    "{\"n\":1}",
                )?;
                insert_assessment(
                    tx,
                    "asm_2",
                    "health",
                    AssessmentStatus::Running,
                    "2026-01-02",
                    "{\"n\":2}",
                )?;
                insert_assessment(
                    tx,
                    "asm_3",
                    "compliance",
                    AssessmentStatus::Running,
                    "2026-01-02",
                    "{\"n\":3}",
                )
            })?;
            let dup = store.write(|tx| {
                insert_assessment(
                    tx,
                    "asm_1",
                    "security",
                    AssessmentStatus::Running,
                    "x",
                    "{}",
                )
            });
            assert!(
                matches!(dup, Err(StoreError::Conflict { .. })),
                "{backend}: {dup:?}"
            );
            let ended = store.write(|tx| {
                finish_assessment(
                    tx,
                    "asm_2",
                    AssessmentStatus::Completed,
                    "{\"n\":2,\"done\":true}",
                )
            })?;
            assert!(ended, "{backend}");
            let again =
                store.write(|tx| finish_assessment(tx, "asm_2", AssessmentStatus::Failed, "{}"))?;
            assert!(!again, "{backend}: ended twice");
            store.read(|tx| -> Result<(), StoreError> {
                assert_eq!(
                    get_doc(tx, "asm_2")?.as_deref(),
                    Some("{\"n\":2,\"done\":true}"),
                    "{backend}"
                );
                assert_eq!(get_doc(tx, "asm_9")?, None, "{backend}");
                assert_eq!(
                    list_docs(tx, None, 10)?,
                    ["{\"n\":3}", "{\"n\":2,\"done\":true}", "{\"n\":1}"],
                    "{backend}: newest first, then by id"
                );
                assert_eq!(
                    list_docs(tx, Some(AssessmentStatus::Running), 10)?,
                    ["{\"n\":3}", "{\"n\":1}"],
                    "{backend}"
                );
                assert_eq!(list_docs(tx, None, 1)?, ["{\"n\":3}"], "{backend}");
                Ok(())
            })?;
        }
        Ok(())
    }
}
