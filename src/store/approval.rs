//! SQL for approvals: insert, read, list, record the final decision, mark executed, expire
//! what is due, and issue and redeem the one-time handles of MRTR questions.

use super::sql::{Row, Val};
use super::{StoreError, Tx};
use crate::args;

/// One row of `approvals`, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    pub id: String,
    pub kind: String,
    pub subject_id: String,
    pub summary: String,
    pub action: String,
    pub action_hash: String,
    pub risk: String,
    pub preview: Option<String>,
    pub requested_by: String,
    pub created_at: String,
    pub expires_at: String,
    pub decide_with: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_via: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
    pub cause: Option<String>,
    pub executed_at: Option<String>,
}

/// A final decision to store.
#[derive(Debug, Clone)]
pub struct DecisionRow<'a> {
    pub state: &'a str,
    pub decided_by: &'a str,
    pub decided_via: &'a str,
    pub decided_at: &'a str,
    pub reason: Option<&'a str>,
    pub cause: Option<&'a str>,
}

const COLUMNS: &str = "id, kind, subject_id, summary, action, action_hash, risk, preview, \
    requested_by, created_at, expires_at, decide_with, state, decided_by, decided_via, \
    decided_at, reason, cause, executed_at";

fn from_row(r: &Row<'_>) -> Result<ApprovalRow, StoreError> {
    Ok(ApprovalRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        subject_id: r.get(2)?,
        summary: r.get(3)?,
        action: r.get(4)?,
        action_hash: r.get(5)?,
        risk: r.get(6)?,
        preview: r.get(7)?,
        requested_by: r.get(8)?,
        created_at: r.get(9)?,
        expires_at: r.get(10)?,
        decide_with: r.get(11)?,
        state: r.get(12)?,
        decided_by: r.get(13)?,
        decided_via: r.get(14)?,
        decided_at: r.get(15)?,
        reason: r.get(16)?,
        cause: r.get(17)?,
        executed_at: r.get(18)?,
    })
}

pub fn insert(tx: &Tx<'_>, a: &ApprovalRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, preview,
             requested_by, created_at, expires_at, decide_with, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending')",
        args![
            a.id,
            a.kind,
            a.subject_id,
            a.summary,
            a.action,
            a.action_hash,
            a.risk,
            a.preview,
            a.requested_by,
            a.created_at,
            a.expires_at,
            a.decide_with
        ],
    )?;
    Ok(())
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
        args![id],
        from_row,
    )
}

/// A pending approval for exactly this kind, subject and action, if one exists.
pub fn find_pending(
    tx: &Tx<'_>,
    kind: &str,
    subject_id: &str,
    action_hash: &str,
) -> Result<Option<ApprovalRow>, StoreError> {
    tx.one(
        &format!(
            "SELECT {COLUMNS} FROM approvals
             WHERE action_hash = ?1 AND kind = ?2 AND subject_id = ?3 AND state = 'pending'
             ORDER BY created_at DESC LIMIT 1"
        ),
        args![action_hash, kind, subject_id],
        from_row,
    )
}

/// Approvals for exactly this kind, subject and action that can still let it run: pending, or
/// approved and not yet executed. Newest first.
pub fn find_open(
    tx: &Tx<'_>,
    kind: &str,
    subject_id: &str,
    action_hash: &str,
) -> Result<Vec<ApprovalRow>, StoreError> {
    tx.all(
        &format!(
            "SELECT {COLUMNS} FROM approvals
             WHERE action_hash = ?1 AND kind = ?2 AND subject_id = ?3
               AND (state = 'pending' OR (state = 'approved' AND executed_at IS NULL))
             ORDER BY created_at DESC, id DESC LIMIT 20"
        ),
        args![action_hash, kind, subject_id],
        from_row,
    )
}

/// What [`list`] keeps: every field set narrows it.
#[derive(Debug, Clone, Default)]
pub struct Search<'a> {
    pub state: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub risk: Option<&'a str>,
    /// A piece of `requested_by`, matched case-insensitively (ASCII), taken literally.
    pub requester: Option<&'a str>,
    /// Created at or after this stored timestamp.
    pub created_after: Option<&'a str>,
    /// Created before this stored timestamp.
    pub created_before: Option<&'a str>,
    /// A `created_at|id` cursor: only rows older than it.
    pub before: Option<(&'a str, &'a str)>,
}

/// `text` as a LIKE pattern matching it anywhere, with `%`, `_` and `\` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Appends `AND clause` with its one `?` numbered after the values bound so far.
fn and<'v>(sql: &mut String, args: &mut Vec<Val<'v>>, clause: &str, value: &'v str) {
    args.push(Val::Text(value));
    sql.push_str(" AND ");
    sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
}

/// Approvals, newest first, narrowed by `search`.
pub fn list(tx: &Tx<'_>, search: &Search<'_>, limit: u32) -> Result<Vec<ApprovalRow>, StoreError> {
    let pattern = search.requester.map(contains_pattern);
    let mut sql = format!("SELECT {COLUMNS} FROM approvals WHERE 1=1");
    let mut args: Vec<Val<'_>> = Vec::new();
    if let Some(state) = search.state {
        and(&mut sql, &mut args, "state = ?", state);
    }
    if let Some(kind) = search.kind {
        and(&mut sql, &mut args, "kind = ?", kind);
    }
    if let Some(risk) = search.risk {
        and(&mut sql, &mut args, "risk = ?", risk);
    }
    if let Some(pattern) = &pattern {
        // SQLite's LIKE ignores ASCII case and PostgreSQL's does not; its ILIKE, on the
        // "C" collation the column has, folds ASCII letters only: the same rows either way.
        let clause = if tx.is_postgres() {
            "requested_by ILIKE ? ESCAPE '\\'"
        } else {
            "requested_by LIKE ? ESCAPE '\\'"
        };
        and(&mut sql, &mut args, clause, pattern);
    }
    if let Some(after) = search.created_after {
        and(&mut sql, &mut args, "created_at >= ?", after);
    }
    if let Some(before) = search.created_before {
        and(&mut sql, &mut args, "created_at < ?", before);
    }
    if let Some((created, id)) = search.before {
        args.push(Val::Text(created));
        let c = args.len();
        args.push(Val::Text(id));
        let i = args.len();
        sql.push_str(&format!(
            " AND (created_at < ?{c} OR (created_at = ?{c} AND id < ?{i}))"
        ));
    }
    args.push(Val::Int(i64::from(limit)));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ?{}",
        args.len()
    ));
    tx.all(&sql, &args, from_row)
}

/// Records a final decision on a pending approval. Returns false when it was no longer pending
/// (someone decided first): the conditional UPDATE's changed-row count decides, on either
/// backend, and the trigger makes a decided row immutable in any case.
pub fn decide(tx: &Tx<'_>, id: &str, d: &DecisionRow<'_>) -> Result<bool, StoreError> {
    let n = tx.exec(
        "UPDATE approvals SET state = ?2, decided_by = ?3, decided_via = ?4, decided_at = ?5,
             reason = ?6, cause = ?7
         WHERE id = ?1 AND state = 'pending'",
        args![
            id,
            d.state,
            d.decided_by,
            d.decided_via,
            d.decided_at,
            d.reason,
            d.cause
        ],
    )?;
    Ok(n == 1)
}

/// Ids of pending approvals whose expiry is at or before `now`.
pub fn due_for_expiry(tx: &Tx<'_>, now: &str) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT id FROM approvals WHERE state = 'pending' AND expires_at <= ?1 ORDER BY created_at",
        args![now],
        |r| r.get(0),
    )
}

/// Marks an approved action as executed (consumes the approval). Returns false when it is not
/// approved, its hash does not match, or it already ran: only the one UPDATE that changes the
/// row gets true, so an approval is consumed at most once on either backend.
pub fn mark_executed(
    tx: &Tx<'_>,
    id: &str,
    action_hash: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let n = tx.exec(
        "UPDATE approvals SET executed_at = ?3
         WHERE id = ?1 AND action_hash = ?2 AND state = 'approved' AND executed_at IS NULL",
        args![id, action_hash, now],
    )?;
    Ok(n == 1)
}

/// The state of one approval, cheaply (for waiting loops).
pub fn state(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    tx.one(
        "SELECT state FROM approvals WHERE id = ?1",
        args![id],
        |r| r.get(0),
    )
}

/// Records that a question with this nonce was asked about an approval.
pub fn ask(tx: &Tx<'_>, nonce: &str, approval_id: &str, now: &str) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES (?1, ?2, ?3)",
        args![nonce, approval_id, now],
    )?;
    Ok(())
}

/// What redeeming a question's nonce found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// First use: the answer may be recorded.
    Fresh,
    /// Already used once: a replay.
    Replayed,
    /// Never issued for this approval.
    Unknown,
}

/// Marks a question answered, once.
pub fn redeem(
    tx: &Tx<'_>,
    nonce: &str,
    approval_id: &str,
    now: &str,
) -> Result<Redeemed, StoreError> {
    let n = tx.exec(
        "UPDATE approval_questions SET redeemed_at = ?3
         WHERE nonce = ?1 AND approval_id = ?2 AND redeemed_at IS NULL",
        args![nonce, approval_id, now],
    )?;
    if n == 1 {
        return Ok(Redeemed::Fresh);
    }
    // `SELECT 1` is an INT4 on PostgreSQL; the row reader takes it as an i64.
    let exists: Option<i64> = tx.one(
        "SELECT 1 FROM approval_questions WHERE nonce = ?1 AND approval_id = ?2",
        args![nonce, approval_id],
        |r| r.get(0),
    )?;
    Ok(if exists.is_some() {
        Redeemed::Replayed
    } else {
        Redeemed::Unknown
    })
}

/// How many approvals are pending, and when the oldest of them was asked (for `/metrics`; the
/// `approvals_state` index answers both).
pub fn pending_count_and_oldest(tx: &Tx<'_>) -> Result<(i64, Option<String>), StoreError> {
    Ok(tx
        .one(
            "SELECT COUNT(*), MIN(created_at) FROM approvals WHERE state = 'pending'",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .unwrap_or((0, None)))
}

/// Decided approvals by channel (`decided_via`, absent for a cancelled question) and final
/// state, for `/metrics`.
pub fn decision_counts(tx: &Tx<'_>) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
    tx.all(
        "SELECT decided_via, state, COUNT(*) FROM approvals WHERE state <> 'pending'
         GROUP BY decided_via, state",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, testing};

    fn pending(id: &str, created_at: &str, requested_by: &str) -> ApprovalRow {
        ApprovalRow {
            id: id.into(),
            kind: "remediation".into(),
            subject_id: "rem_1".into(),
            summary: "restart the server".into(),
            action: r#"{"op":"restart"}"#.into(),
            action_hash: "h1".into(),
            risk: "high".into(),
            preview: None,
            requested_by: requested_by.into(),
            created_at: created_at.into(),
            expires_at: "2099-01-01T00:00:00Z".into(),
            decide_with: "elicitation".into(),
            state: "pending".into(),
            decided_by: None,
            decided_via: None,
            decided_at: None,
            reason: None,
            cause: None,
            executed_at: None,
        }
    }

    fn decision(state: &'static str) -> DecisionRow<'static> {
        DecisionRow {
            state,
            decided_by: "user:ann@host",
            decided_via: "cli",
            decided_at: "2026-01-01T00:00:01Z",
            reason: Some("fine"),
            cause: None,
        }
    }

    /// An approval is decided once, stays decided, and its action is consumed exactly once.
    fn decided_then_consumed_once(backend: &str, store: &Store) -> Result<(), StoreError> {
        store.write(|tx| {
            insert(
                tx,
                &pending("ap_1", "2026-01-01T00:00:00Z", "client:Alice/1"),
            )?;
            insert(
                tx,
                &pending("ap_2", "2026-01-01T00:00:02Z", "client:bob_%/1"),
            )?;
            ask(tx, "n1", "ap_1", "2026-01-01T00:00:00Z")
        })?;
        store.read(|tx| -> Result<(), StoreError> {
            let found = find_pending(tx, "remediation", "rem_1", "h1")?.map(|a| a.id);
            assert_eq!(found.as_deref(), Some("ap_2"), "{backend}: newest pending");
            assert_eq!(
                find_open(tx, "remediation", "rem_1", "h1")?.len(),
                2,
                "{backend}"
            );
            assert_eq!(
                pending_count_and_oldest(tx)?,
                (2, Some("2026-01-01T00:00:00Z".into())),
                "{backend}"
            );
            Ok(())
        })?;

        // The question's nonce redeems once.
        let redeemed = store.write(|tx| {
            Ok::<_, StoreError>([
                redeem(tx, "n1", "ap_1", "t")?,
                redeem(tx, "n1", "ap_1", "t")?,
                redeem(tx, "n2", "ap_1", "t")?,
            ])
        })?;
        assert_eq!(
            redeemed,
            [Redeemed::Fresh, Redeemed::Replayed, Redeemed::Unknown],
            "{backend}"
        );

        // Decided once: a second decision finds it no longer pending.
        assert!(store.write(|tx| decide(tx, "ap_1", &decision("approved")))?);
        assert!(!store.write(|tx| decide(tx, "ap_1", &decision("rejected")))?);
        // Final even to a statement that ignores the state: the trigger refuses it.
        let rewrite = store.write(|tx| {
            tx.exec(
                "UPDATE approvals SET state = 'rejected' WHERE id = ?1",
                args!["ap_1"],
            )
        });
        assert!(rewrite.is_err(), "{backend}: a decided row was rewritten");
        let row = store.read(|tx| get(tx, "ap_1"))?;
        assert_eq!(
            row.as_ref().map(|a| a.state.as_str()),
            Some("approved"),
            "{backend}"
        );
        assert_eq!(
            store.read(|tx| state(tx, "ap_1"))?.as_deref(),
            Some("approved")
        );

        // Consumed only for its own action, and only once, even by racing writers.
        assert!(!store.write(|tx| mark_executed(tx, "ap_1", "other", "t1"))?);
        let winners: Vec<bool> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || {
                        store.write(|tx| mark_executed(tx, "ap_1", "h1", &format!("t{i}")))
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|r| match r.join() {
                    Ok(won) => won,
                    Err(_) => panic!("{backend}: a racer panicked"),
                })
                .collect::<Result<_, _>>()
        })?;
        assert_eq!(
            winners.iter().filter(|w| **w).count(),
            1,
            "{backend}: {winners:?}"
        );
        assert!(!store.write(|tx| mark_executed(tx, "ap_1", "h1", "t9"))?);
        let row = store.read(|tx| get(tx, "ap_1"))?;
        assert!(
            row.and_then(|a| a.executed_at).is_some(),
            "{backend}: executed_at"
        );

        store.read(|tx| -> Result<(), StoreError> {
            let open: Vec<String> = find_open(tx, "remediation", "rem_1", "h1")?
                .into_iter()
                .map(|a| a.id)
                .collect();
            assert_eq!(open, ["ap_2"], "{backend}: the consumed one is closed");
            assert_eq!(
                decision_counts(tx)?,
                [(Some("cli".into()), "approved".into(), 1)],
                "{backend}"
            );
            assert_eq!(
                due_for_expiry(tx, "2100-01-01T00:00:00Z")?,
                ["ap_2"],
                "{backend}"
            );
            Ok(())
        })
    }

    /// `list`: requester matched without regard to ASCII case, `%` and `_` literally, and
    /// the keyset cursor.
    fn listed(backend: &str, store: &Store) -> Result<(), StoreError> {
        store.read(|tx| -> Result<(), StoreError> {
            let ids = |search: &Search<'_>, limit| -> Result<Vec<String>, StoreError> {
                Ok(list(tx, search, limit)?.into_iter().map(|a| a.id).collect())
            };
            assert_eq!(ids(&Search::default(), 10)?, ["ap_2", "ap_1"], "{backend}");
            let by = |requester| Search {
                requester: Some(requester),
                ..Search::default()
            };
            assert_eq!(ids(&by("ALICE"), 10)?, ["ap_1"], "{backend}: ASCII case");
            assert_eq!(ids(&by("b_%"), 10)?, ["ap_2"], "{backend}: literal % and _");
            assert!(
                ids(&by("a%e"), 10)?.is_empty(),
                "{backend}: % is no wildcard"
            );
            let approved = Search {
                state: Some("approved"),
                kind: Some("remediation"),
                risk: Some("high"),
                created_after: Some("2026-01-01T00:00:00Z"),
                created_before: Some("2026-01-02T00:00:00Z"),
                ..Search::default()
            };
            assert_eq!(ids(&approved, 10)?, ["ap_1"], "{backend}");
            let older = Search {
                before: Some(("2026-01-01T00:00:02Z", "ap_2")),
                ..Search::default()
            };
            assert_eq!(ids(&older, 10)?, ["ap_1"], "{backend}: cursor");
            assert_eq!(ids(&Search::default(), 1)?, ["ap_2"], "{backend}: limit");
            Ok(())
        })
    }

    #[test]
    fn an_approval_is_final_and_consumed_at_most_once_on_both_backends() {
        for (backend, store) in testing::both("approvals") {
            if let Err(e) = decided_then_consumed_once(backend, &store) {
                panic!("{backend}: {e}");
            }
            if let Err(e) = listed(backend, &store) {
                panic!("{backend}: {e}");
            }
        }
    }
}
