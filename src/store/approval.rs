//! SQL for approvals: insert, read, list, record the final decision, mark executed, expire
//! what is due, and issue and redeem the one-time handles of MRTR questions.

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx};

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

fn from_row(r: &Row<'_>) -> rusqlite::Result<ApprovalRow> {
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
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, preview,
             requested_by, created_at, expires_at, decide_with, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'pending')",
    )?
    .execute(params![
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
    ])
    .map_err(StoreError::from_sqlite)?;
    Ok(())
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// A pending approval for exactly this kind, subject and action, if one exists.
pub fn find_pending(
    tx: &Tx<'_>,
    kind: &str,
    subject_id: &str,
    action_hash: &str,
) -> Result<Option<ApprovalRow>, StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM approvals
         WHERE action_hash = ?1 AND kind = ?2 AND subject_id = ?3 AND state = 'pending'
         ORDER BY created_at DESC LIMIT 1"
    ))?
    .query_row(params![action_hash, kind, subject_id], from_row)
    .optional()
    .map_err(StoreError::from_sqlite)
}

/// Approvals for exactly this kind, subject and action that can still let it run: pending, or
/// approved and not yet executed. Newest first.
pub fn find_open(
    tx: &Tx<'_>,
    kind: &str,
    subject_id: &str,
    action_hash: &str,
) -> Result<Vec<ApprovalRow>, StoreError> {
    let conn = tx.conn();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM approvals
         WHERE action_hash = ?1 AND kind = ?2 AND subject_id = ?3
           AND (state = 'pending' OR (state = 'approved' AND executed_at IS NULL))
         ORDER BY created_at DESC, id DESC LIMIT 20"
    ))?;
    let rows = stmt.query_map(params![action_hash, kind, subject_id], from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
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

/// Approvals, newest first, narrowed by `search`.
pub fn list(tx: &Tx<'_>, search: &Search<'_>, limit: u32) -> Result<Vec<ApprovalRow>, StoreError> {
    let conn = tx.conn();
    let mut sql = format!("SELECT {COLUMNS} FROM approvals WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, value: &str| {
        args.push(value.to_string().into());
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(state) = search.state {
        push(&mut sql, " AND state = ?", state);
    }
    if let Some(kind) = search.kind {
        push(&mut sql, " AND kind = ?", kind);
    }
    if let Some(risk) = search.risk {
        push(&mut sql, " AND risk = ?", risk);
    }
    if let Some(requester) = search.requester {
        push(
            &mut sql,
            " AND requested_by LIKE ? ESCAPE '\\'",
            &contains_pattern(requester),
        );
    }
    if let Some(after) = search.created_after {
        push(&mut sql, " AND created_at >= ?", after);
    }
    if let Some(before) = search.created_before {
        push(&mut sql, " AND created_at < ?", before);
    }
    if let Some((created, id)) = search.before {
        args.push(created.to_string().into());
        let c = args.len();
        args.push(id.to_string().into());
        let i = args.len();
        sql.push_str(&format!(
            " AND (created_at < ?{c} OR (created_at = ?{c} AND id < ?{i}))"
        ));
    }
    args.push(i64::from(limit).into());
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ?{}",
        args.len()
    ));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// Records a final decision on a pending approval. Returns false when it was no longer pending
/// (someone decided first); the trigger makes a decided row immutable in any case.
pub fn decide(tx: &Tx<'_>, id: &str, d: &DecisionRow<'_>) -> Result<bool, StoreError> {
    let conn = tx.conn();
    let n = conn
        .prepare_cached(
            "UPDATE approvals SET state = ?2, decided_by = ?3, decided_via = ?4, decided_at = ?5,
                 reason = ?6, cause = ?7
             WHERE id = ?1 AND state = 'pending'",
        )?
        .execute(params![
            id,
            d.state,
            d.decided_by,
            d.decided_via,
            d.decided_at,
            d.reason,
            d.cause
        ])
        .map_err(StoreError::from_sqlite)?;
    Ok(n == 1)
}

/// Ids of pending approvals whose expiry is at or before `now`.
pub fn due_for_expiry(tx: &Tx<'_>, now: &str) -> Result<Vec<String>, StoreError> {
    let conn = tx.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM approvals WHERE state = 'pending' AND expires_at <= ?1 ORDER BY created_at",
    )?;
    let rows = stmt.query_map([now], |r| r.get(0))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// Marks an approved action as executed. Returns false when it is not approved, its hash does
/// not match, or it already ran.
pub fn mark_executed(
    tx: &Tx<'_>,
    id: &str,
    action_hash: &str,
    now: &str,
) -> Result<bool, StoreError> {
    let conn = tx.conn();
    let n = conn
        .prepare_cached(
            "UPDATE approvals SET executed_at = ?3
             WHERE id = ?1 AND action_hash = ?2 AND state = 'approved' AND executed_at IS NULL",
        )?
        .execute(params![id, action_hash, now])
        .map_err(StoreError::from_sqlite)?;
    Ok(n == 1)
}

/// The state of one approval, cheaply (for waiting loops).
pub fn state(tx: &Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    let conn = tx.conn();
    conn.prepare_cached("SELECT state FROM approvals WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// Records that a question with this nonce was asked about an approval.
pub fn ask(tx: &Tx<'_>, nonce: &str, approval_id: &str, now: &str) -> Result<(), StoreError> {
    let conn = tx.conn();
    conn.prepare_cached(
        "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![nonce, approval_id, now])
    .map_err(StoreError::from_sqlite)?;
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
    let conn = tx.conn();
    let n = conn
        .prepare_cached(
            "UPDATE approval_questions SET redeemed_at = ?3
             WHERE nonce = ?1 AND approval_id = ?2 AND redeemed_at IS NULL",
        )?
        .execute(params![nonce, approval_id, now])
        .map_err(StoreError::from_sqlite)?;
    if n == 1 {
        return Ok(Redeemed::Fresh);
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM approval_questions WHERE nonce = ?1 AND approval_id = ?2")?
        .query_row(params![nonce, approval_id], |r| r.get(0))
        .optional()
        .map_err(StoreError::from_sqlite)?;
    Ok(if exists.is_some() {
        Redeemed::Replayed
    } else {
        Redeemed::Unknown
    })
}

/// How many approvals are pending, and when the oldest of them was asked (for `/metrics`; the
/// `approvals_state` index answers both).
pub fn pending_count_and_oldest(tx: &Tx<'_>) -> Result<(i64, Option<String>), StoreError> {
    tx.conn()
        .prepare_cached("SELECT COUNT(*), MIN(created_at) FROM approvals WHERE state = 'pending'")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(StoreError::from_sqlite)
}

/// Decided approvals by channel (`decided_via`, absent for a cancelled question) and final
/// state, for `/metrics`.
pub fn decision_counts(tx: &Tx<'_>) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(
        "SELECT decided_via, state, COUNT(*) FROM approvals WHERE state <> 'pending'
         GROUP BY decided_via, state",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}
