//! SQL for the task queue: submit, the claim scan (index order, capability match in SQL),
//! lease and status updates, sweeps of expired leases, listing, stats and purging.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use super::sql::{Row, Val, values_list};
use super::{StoreError, Tx, closed};
use crate::args;
use crate::task::status::TaskStatus;

/// One row of `tasks`, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub kind: String,
    pub params: String,
    pub capabilities: String,
    pub target_agent_id: Option<String>,
    pub priority: i64,
    pub status: TaskStatus,
    pub timeout_ms: i64,
    pub max_retries: i64,
    pub attempts: i64,
    pub idempotency_key: Option<String>,
    pub not_before_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub submitted_by: String,
    pub leased_by: Option<String>,
    pub lease_expires_ms: Option<i64>,
    pub last_agent_id: Option<String>,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub finished_ms: Option<i64>,
}

const COLUMNS: &str = "id, kind, params, capabilities, target_agent_id, priority, status, \
    timeout_ms, max_retries, attempts, idempotency_key, not_before_ms, created_ms, updated_ms, \
    submitted_by, leased_by, lease_expires_ms, progress, message, result, last_error, finished_ms, \
    last_agent_id";

fn from_row(r: &Row<'_>) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        params: r.get(2)?,
        capabilities: r.get(3)?,
        target_agent_id: r.get(4)?,
        priority: r.get(5)?,
        status: closed::get(r, 6, "tasks.status")?,
        timeout_ms: r.get(7)?,
        max_retries: r.get(8)?,
        attempts: r.get(9)?,
        idempotency_key: r.get(10)?,
        not_before_ms: r.get(11)?,
        created_ms: r.get(12)?,
        updated_ms: r.get(13)?,
        submitted_by: r.get(14)?,
        leased_by: r.get(15)?,
        lease_expires_ms: r.get(16)?,
        progress: r.get(17)?,
        message: r.get(18)?,
        result: r.get(19)?,
        last_error: r.get(20)?,
        finished_ms: r.get(21)?,
        last_agent_id: r.get(22)?,
    })
}

pub fn insert(tx: &Tx<'_>, t: &TaskRow) -> Result<(), StoreError> {
    // An idempotency key is looked up before its insert (under the write lock), so nothing
    // expects this one to fail; a lookup after it is sent after it.
    tx.exec_later_row(
        "INSERT INTO tasks (id, kind, params, capabilities, target_agent_id, priority, status,
             timeout_ms, max_retries, attempts, idempotency_key, not_before_ms, created_ms,
             updated_ms, submitted_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, 0, ?9, ?10, ?11, ?11, ?12)",
        args![
            t.id,
            t.kind,
            t.params,
            t.capabilities,
            t.target_agent_id,
            t.priority,
            t.timeout_ms,
            t.max_retries,
            t.idempotency_key,
            t.not_before_ms,
            t.created_ms,
            t.submitted_by
        ],
    )?;
    Ok(())
}

/// Spelled once: every task report reads its task by this text.
static GET_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"));

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<TaskRow>, StoreError> {
    tx.one(&GET_SQL, args![id], from_row)
}

/// The rows of `ids` that exist, by id, in one query (a batch of reports reads its tasks in
/// one round trip).
pub fn get_many(tx: &Tx<'_>, ids: &[&str]) -> Result<HashMap<String, TaskRow>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let ids_list = values_list(1, ids.len(), 1);
    let args: Vec<Val<'_>> = ids.iter().map(|id| Val::Text(id)).collect();
    let rows = by_key(tx, || {
        tx.all(
            &format!("SELECT {COLUMNS} FROM tasks WHERE id IN {ids_list}"),
            &args,
            from_row,
        )
    })?;
    Ok(rows.into_iter().map(|r| (r.id.clone(), r)).collect())
}

/// Runs `f`'s statements on tasks named by key (a list of ids, a `VALUES` list joined on
/// the id) as lookups of the key index on PostgreSQL: no sequential scan, no hash or merge
/// join. With statistics taken when the table was smaller (a queue that just filled) the
/// planner would rather read every row, or every queued task's index entry and hash the
/// batch against them (1.4 ms at 2,000 tasks for a batch of 20, where the key index takes
/// 20 µs; the cost grows with the queue). The settings ride with the statements, no round
/// trip of their own, and are put back after them.
fn by_key<T>(tx: &Tx<'_>, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    if !tx.is_postgres() {
        return f();
    }
    tx.exec_later(BY_KEY_ON, args![])?;
    let out = f()?;
    tx.exec_later(BY_KEY_OFF, args![])?;
    Ok(out)
}

const BY_KEY_ON: &str = "SELECT set_config('enable_seqscan', 'off', true), \
     set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)";
const BY_KEY_OFF: &str = "SELECT set_config('enable_seqscan', 'on', true), \
     set_config('enable_hashjoin', 'on', true), set_config('enable_mergejoin', 'on', true)";

pub fn by_idempotency_key(tx: &Tx<'_>, key: &str) -> Result<Option<TaskRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?1"),
        args![key],
        from_row,
    )
}

/// The SQL condition "every capability the task needs is in the JSON array ?caps".
const CAPABLE: &str = "NOT EXISTS (SELECT 1 FROM json_each(t.capabilities) need
     WHERE need.value NOT IN (SELECT value FROM json_each(:caps)))";

/// [`CAPABLE`] on PostgreSQL, the agent's capabilities being `?N` (the `{caps}` to fill in).
/// `jsonb_array_elements_text` gives each string as text, as `json_each` gives its value.
fn capable_pg(caps: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(t.capabilities AS jsonb)) need(value)
     WHERE need.value NOT IN (SELECT jsonb_array_elements_text(CAST({caps} AS jsonb))))"
    )
}

// The claim's queries, spelled once: every claim looks its statements up by this text. The
// SQLite forms name their parameters (`:agent`); SQLite numbers named parameters in the order
// they first appear, and the values are bound by those numbers (the test
// `claim_parameters_are_bound_in_the_order_sqlite_numbers_them` checks the order), so their
// text and plans are those the benchmark measured. PostgreSQL has no index hints and no
// json_each; its forms number the same values the same way, and order ties by id (SQLite's
// tasks_target orders ties by rowid, the order of insertion, which for time-ordered ids is the
// same).

static TARGETED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_target
         WHERE t.status = 'queued' AND t.target_agent_id = :agent AND t.not_before_ms <= :now
           AND {CAPABLE}
         ORDER BY t.priority DESC, t.created_ms LIMIT :limit"
    )
});

/// The parameters of [`TARGETED_SQL`] in SQLite's numbering.
#[cfg(test)]
const TARGETED_PARAMS: [&str; 4] = [":agent", ":now", ":caps", ":limit"];

static TARGETED_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t
         WHERE t.status = 'queued' AND t.target_agent_id = ?1 AND t.not_before_ms <= ?2
           AND {}
         ORDER BY t.priority DESC, t.created_ms, t.id LIMIT ?4",
        capable_pg("?3")
    )
});

static OPEN_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_queue
         WHERE t.status = 'queued' AND t.target_agent_id IS NULL AND t.not_before_ms <= :now
           AND (t.priority < :p OR (t.priority = :p AND (t.created_ms > :c OR (t.created_ms = :c AND t.id > :i))))
           AND {CAPABLE}
         ORDER BY t.priority DESC, t.created_ms, t.id LIMIT :limit"
    )
});

/// The parameters of [`OPEN_SQL`] in SQLite's numbering.
#[cfg(test)]
const OPEN_PARAMS: [&str; 6] = [":now", ":p", ":c", ":i", ":caps", ":limit"];

// On PostgreSQL the first page has no "after" condition at all, and a later page repeats its
// first column as a plain bound (`priority <= ?2`): given the OR alone, the planner may read
// it as two index ranges, OR the bitmaps of every queued task and sort them (seen at 100,000
// queued with statistics from a smaller queue: 200-300 ms a claim). Without it, and without
// bitmap scans (see `open_candidates`), the queue index read in order up to LIMIT is the
// plan that avoids reading every queued task.
static OPEN_FIRST_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t
         WHERE t.status = 'queued' AND t.target_agent_id IS NULL AND t.not_before_ms <= ?1
           AND {}
         ORDER BY t.priority DESC, t.created_ms, t.id LIMIT ?3",
        capable_pg("?2")
    )
});

static OPEN_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t
         WHERE t.status = 'queued' AND t.target_agent_id IS NULL AND t.not_before_ms <= ?1
           AND t.priority <= ?2
           AND (t.priority < ?2 OR (t.priority = ?2 AND (t.created_ms > ?3 OR (t.created_ms = ?3 AND t.id > ?4))))
           AND {}
         ORDER BY t.priority DESC, t.created_ms, t.id LIMIT ?6",
        capable_pg("?5")
    )
});

/// Up to `limit` claimable tasks aimed at `agent_id`, in dispatch order.
pub fn targeted_candidates(
    tx: &Tx<'_>,
    agent_id: &str,
    caps_json: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<TaskRow>, StoreError> {
    let sql = if tx.is_postgres() {
        &*TARGETED_PG
    } else {
        &*TARGETED_SQL
    };
    tx.all(sql, args![agent_id, now_ms, caps_json, limit], from_row)
}

/// Up to `limit` claimable untargeted tasks this agent's capabilities cover, in dispatch order
/// (priority, then age), starting after `after` (priority, created_ms, id) when paging.
pub fn open_candidates(
    tx: &Tx<'_>,
    caps_json: &str,
    now_ms: i64,
    after: Option<(i64, i64, &str)>,
    limit: i64,
) -> Result<Vec<TaskRow>, StoreError> {
    if tx.is_postgres() {
        // No bitmap scan for this query (until the transaction ends): with statistics
        // taken when the queue was smaller, the planner would rather collect every queued
        // task in a bitmap and sort them (200-300 ms at 100,000 queued, 5 ms at 1,000) than
        // read the queue index in order and stop at LIMIT. Sent with the query itself; what
        // the claim runs after it is looked up by key, which no bitmap would serve better.
        tx.exec_later(
            "SELECT set_config('enable_bitmapscan', 'off', true)",
            args![],
        )?;
        if after.is_none() {
            return tx.all(&OPEN_FIRST_PG, args![now_ms, caps_json, limit], from_row);
        }
    }
    let (p, c, i) = after.unwrap_or((i64::MAX, i64::MIN, ""));
    let sql = if tx.is_postgres() {
        &*OPEN_PG
    } else {
        &*OPEN_SQL
    };
    tx.all(sql, args![now_ms, p, c, i, caps_json, limit], from_row)
}

/// Leases a queued task to an agent. Returns false if it was no longer queued.
pub fn lease(
    tx: &Tx<'_>,
    id: &str,
    agent_id: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<bool, StoreError> {
    let n = tx.exec(LEASE, args![id, agent_id, now_ms, expires_ms])?;
    Ok(n == 1)
}

const LEASE: &str = "UPDATE tasks SET status = 'leased', leased_by = ?2, last_agent_id = ?2,
         lease_expires_ms = ?4, attempts = attempts + 1, updated_ms = ?3,
         progress = NULL, message = NULL
     WHERE id = ?1 AND status = 'queued'";

/// [`lease`] for each of `tasks` (id, lease expiry), in one statement; says for each whether
/// it was still queued and is now leased.
pub fn lease_each(
    tx: &Tx<'_>,
    tasks: &[(&str, i64)],
    agent_id: &str,
    now_ms: i64,
) -> Result<Vec<bool>, StoreError> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "UPDATE tasks SET status = 'leased', leased_by = ?1, last_agent_id = ?1,
             lease_expires_ms = v.column2, attempts = attempts + 1, updated_ms = ?2,
             progress = NULL, message = NULL
         FROM (VALUES {}) AS v
         WHERE tasks.id = v.column1 AND tasks.status = 'queued'
         RETURNING tasks.id",
        values_list(tasks.len(), 2, 3)
    );
    let mut args = args![agent_id, now_ms].to_vec();
    for (id, expires_ms) in tasks {
        args.extend_from_slice(args![*id, *expires_ms]);
    }
    let leased: HashSet<String> = by_key(tx, || tx.all(&sql, &args, |r| r.get(0)))?
        .into_iter()
        .collect();
    Ok(tasks.iter().map(|(id, _)| leased.contains(*id)).collect())
}

/// Completes each of `tasks` (id, result), releasing its lease, in one statement sent with
/// the next (as [`finish`] does one).
pub fn complete_each(tx: &Tx<'_>, tasks: &[(&str, &str)], now_ms: i64) -> Result<(), StoreError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE tasks SET status = 'completed', result = v.column2, leased_by = NULL,
             lease_expires_ms = NULL, finished_ms = ?1, updated_ms = ?1, progress = 1.0
         FROM (VALUES {}) AS v
         WHERE tasks.id = v.column1",
        values_list(tasks.len(), 2, 2)
    );
    let mut args = args![now_ms].to_vec();
    for (id, result) in tasks {
        args.extend_from_slice(args![*id, *result]);
    }
    by_key(tx, || tx.exec_later(&sql, &args))
}

/// Records progress from the leaseholder; the task becomes `running` and its lease is renewed
/// for another full timeout (an agent that reports progress is alive and working).
pub fn progress(
    tx: &Tx<'_>,
    id: &str,
    progress: Option<f64>,
    message: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE tasks SET status = 'running', progress = COALESCE(?2, progress),
             message = COALESCE(?3, message), updated_ms = ?4, lease_expires_ms = ?4 + timeout_ms
         WHERE id = ?1",
        args![id, progress, message, now_ms],
    )?;
    Ok(())
}

/// Moves a task to a final status, releasing any lease.
pub fn finish(
    tx: &Tx<'_>,
    id: &str,
    status: TaskStatus,
    result: Option<&str>,
    error: Option<&str>,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.exec_later(
        "UPDATE tasks SET status = ?2, result = COALESCE(?3, result), last_error = COALESCE(?4, last_error),
             leased_by = NULL, lease_expires_ms = NULL, finished_ms = ?5, updated_ms = ?5,
             progress = CASE WHEN ?2 = 'completed' THEN 1.0 ELSE progress END
         WHERE id = ?1",
        args![id, status.as_str(), result, error, now_ms],
    )?;
    Ok(())
}

/// Puts a task back in the queue, claimable from `not_before_ms`. `refund` gives back the
/// attempt (work taken away through no fault of the task: its agent left).
pub fn requeue(
    tx: &Tx<'_>,
    id: &str,
    not_before_ms: i64,
    error: Option<&str>,
    refund: bool,
    clear_target: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    // PostgreSQL's CASE wants a boolean; the flag is bound as 0 or 1.
    let sql = if tx.is_postgres() {
        "UPDATE tasks SET status = 'queued', leased_by = NULL, lease_expires_ms = NULL,
             not_before_ms = ?2, last_error = COALESCE(?3, last_error),
             attempts = attempts - ?4, finished_ms = NULL, updated_ms = ?6,
             target_agent_id = CASE WHEN ?5 <> 0 THEN NULL ELSE target_agent_id END
         WHERE id = ?1"
    } else {
        "UPDATE tasks SET status = 'queued', leased_by = NULL, lease_expires_ms = NULL,
             not_before_ms = ?2, last_error = COALESCE(?3, last_error),
             attempts = attempts - ?4, finished_ms = NULL, updated_ms = ?6,
             target_agent_id = CASE WHEN ?5 THEN NULL ELSE target_agent_id END
         WHERE id = ?1"
    };
    tx.exec(
        sql,
        args![
            id,
            not_before_ms,
            error,
            i64::from(refund),
            clear_target,
            now_ms
        ],
    )?;
    Ok(())
}

/// Gives a task a fresh retry budget.
pub fn reset_attempts(tx: &Tx<'_>, id: &str) -> Result<(), StoreError> {
    tx.exec("UPDATE tasks SET attempts = 0 WHERE id = ?1", args![id])?;
    Ok(())
}

static EXPIRED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_leases
         WHERE t.status IN ('leased', 'running') AND t.lease_expires_ms < ?1
         ORDER BY t.lease_expires_ms LIMIT 500"
    )
});

static EXPIRED_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t
         WHERE t.status IN ('leased', 'running') AND t.lease_expires_ms < ?1
         ORDER BY t.lease_expires_ms LIMIT 500"
    )
});

/// Leased or running tasks whose lease expired before `now_ms`.
pub fn expired_leases(tx: &Tx<'_>, now_ms: i64) -> Result<Vec<TaskRow>, StoreError> {
    let sql = if tx.is_postgres() {
        &*EXPIRED_PG
    } else {
        &*EXPIRED_SQL
    };
    tx.all(sql, args![now_ms], from_row)
}

static HELD_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_agent
         WHERE t.last_agent_id = ?1 AND t.leased_by = ?1"
    )
});

static HELD_PG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t
         WHERE t.last_agent_id = ?1 AND t.leased_by = ?1"
    )
});

/// Tasks leased by this agent. A lease sets `last_agent_id` to the holder as well, so the
/// index of last agents finds them (there is no index of holders: one fewer page per claim and
/// per completion).
pub fn held_by(tx: &Tx<'_>, agent_id: &str) -> Result<Vec<TaskRow>, StoreError> {
    let sql = if tx.is_postgres() {
        &*HELD_PG
    } else {
        &*HELD_SQL
    };
    tx.all(sql, args![agent_id], from_row)
}

/// Queued tasks aimed at this agent.
pub fn targeting(tx: &Tx<'_>, agent_id: &str) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT id FROM tasks WHERE target_agent_id = ?1 AND status = 'queued'",
        args![agent_id],
        |r| r.get(0),
    )
}

/// Filters for [`list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter<'a> {
    pub status: Option<TaskStatus>,
    pub kind: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub priority: Option<i64>,
    /// `(updated_ms, id)` of the last row of the previous page.
    pub before: Option<(i64, &'a str)>,
}

/// Tasks, most recently updated first.
pub fn list(tx: &Tx<'_>, f: &ListFilter<'_>, limit: i64) -> Result<Vec<TaskRow>, StoreError> {
    let (sql, args) = list_sql(f, limit);
    tx.all(&sql, &args, from_row)
}

/// The query [`list`] runs, and its arguments (the same text on both backends).
fn list_sql<'a>(f: &ListFilter<'a>, limit: i64) -> (String, Vec<Val<'a>>) {
    let mut sql = format!("SELECT {COLUMNS} FROM tasks t WHERE 1=1");
    let mut args: Vec<Val<'a>> = Vec::new();
    let mut push = |sql: &mut String, cond: &str, v: Val<'a>| {
        args.push(v);
        sql.push_str(&cond.replace('?', &format!("?{}", args.len())));
    };
    // There is no index of every status (each step of a task would rewrite its entry): a
    // status is found through the partial index of its group, whose condition is repeated
    // here word for word so that SQLite sees the index applies. A finished task's updated_ms
    // is its finished_ms, so one final status is listed in the order of tasks_finished.
    let finished = f.status.is_some_and(|s| FINAL.contains(&s.as_str()));
    let updated = if finished {
        "t.finished_ms"
    } else {
        "t.updated_ms"
    };
    if let Some(s) = f.status {
        // Spelled as a literal: SQLite matches a partial index's condition only against
        // literals when plans do not depend on bound values (see store::open_connection).
        sql.push_str(&format!(" AND t.status = '{}'", s.as_str()));
        sql.push_str(match s {
            TaskStatus::Leased | TaskStatus::Running => " AND t.status IN ('leased', 'running')",
            _ if finished => " AND t.finished_ms IS NOT NULL",
            _ => "",
        });
    }
    if let Some(k) = f.kind {
        push(&mut sql, " AND t.kind = ?", Val::Text(k));
    }
    if let Some(a) = f.agent_id {
        push(&mut sql, " AND (t.last_agent_id = ?", Val::Text(a));
        push(&mut sql, " OR t.target_agent_id = ?)", Val::Text(a));
    }
    if let Some(p) = f.priority {
        push(&mut sql, " AND t.priority = ?", Val::Int(p));
    }
    if let Some((u, id)) = f.before {
        push(&mut sql, &format!(" AND ({updated} < ?"), Val::Int(u));
        push(&mut sql, &format!(" OR ({updated} = ?"), Val::Int(u));
        push(&mut sql, " AND t.id < ?))", Val::Text(id));
    }
    push(
        &mut sql,
        &format!(" ORDER BY {updated} DESC, t.id DESC LIMIT ?"),
        Val::Int(limit),
    );
    (sql, args)
}

/// Counts by status and priority.
pub fn counts(tx: &Tx<'_>) -> Result<Vec<(TaskStatus, i64, i64)>, StoreError> {
    tx.all(
        "SELECT status, priority, COUNT(*) FROM tasks GROUP BY status, priority",
        args![],
        |r| Ok((closed::get(r, 0, "tasks.status")?, r.get(1)?, r.get(2)?)),
    )
}

/// Creation time of the oldest queued task.
pub fn oldest_queued_ms(tx: &Tx<'_>) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .one(
            "SELECT MIN(created_ms) FROM tasks WHERE status = 'queued'",
            args![],
            |r| r.get::<Option<i64>>(0),
        )?
        .flatten())
}

/// The statuses a task ends in; only these have a `finished_ms`.
const FINAL: [&str; 5] = ["completed", "failed", "timed_out", "cancelled", "dead"];

/// The final statuses spelled out, so that each is a range of tasks_finished (status,
/// finished_ms). `hint` is SQLite's index hint, or nothing on PostgreSQL.
fn finished_since_sql(hint: &str) -> String {
    let statuses: Vec<String> = FINAL.iter().map(|s| format!("'{s}'")).collect();
    format!(
        "SELECT status, COUNT(*) FROM tasks{hint}
         WHERE status IN ({}) AND finished_ms >= ?1
         GROUP BY status",
        statuses.join(", ")
    )
}

static FINISHED_SINCE_SQL: LazyLock<String> =
    LazyLock::new(|| finished_since_sql(" INDEXED BY tasks_finished"));

static FINISHED_SINCE_PG: LazyLock<String> = LazyLock::new(|| finished_since_sql(""));

/// Tasks that finished (any final status) at or after `since_ms`, by status.
pub fn finished_since(tx: &Tx<'_>, since_ms: i64) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
    let sql = if tx.is_postgres() {
        &*FINISHED_SINCE_PG
    } else {
        &*FINISHED_SINCE_SQL
    };
    tx.all(sql, args![since_ms], |r| {
        Ok((closed::get(r, 0, "tasks.status")?, r.get(1)?))
    })
}

/// Deletes finished tasks (of the given final statuses) that finished before `before_ms`.
pub fn purge(tx: &Tx<'_>, statuses: &[TaskStatus], before_ms: i64) -> Result<usize, StoreError> {
    let list = serde_json::to_string(statuses).unwrap_or_else(|_| "[]".into());
    let sql = if tx.is_postgres() {
        "DELETE FROM tasks WHERE finished_ms < ?1
           AND status IN (SELECT jsonb_array_elements_text(CAST(?2 AS jsonb)))"
    } else {
        "DELETE FROM tasks WHERE finished_ms < ?1
           AND status IN (SELECT value FROM json_each(?2))"
    };
    tx.exec(sql, args![before_ms, list])
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
