//! SQL for the task queue: submit, the claim scan (index order, capability match in SQL),
//! lease and status updates, sweeps of expired leases, listing, stats and purging.

use std::sync::LazyLock;

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx, closed};
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

fn from_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        params: r.get(2)?,
        capabilities: r.get(3)?,
        target_agent_id: r.get(4)?,
        priority: r.get(5)?,
        status: closed::get_lite(r, 6, "tasks.status")?,
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
    tx.conn()
        .prepare_cached(
            "INSERT INTO tasks (id, kind, params, capabilities, target_agent_id, priority, status,
             timeout_ms, max_retries, attempts, idempotency_key, not_before_ms, created_ms,
             updated_ms, submitted_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, 0, ?9, ?10, ?11, ?11, ?12)",
        )?
        .execute(params![
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
        ])
        .map_err(closed::error)?;
    Ok(())
}

/// Spelled once: every task report reads its task by this text.
static GET_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"));

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<TaskRow>, StoreError> {
    tx.conn()
        .prepare_cached(&GET_SQL)?
        .query_row([id], from_row)
        .optional()
        .map_err(closed::error)
}

pub fn by_idempotency_key(tx: &Tx<'_>, key: &str) -> Result<Option<TaskRow>, StoreError> {
    tx.conn()
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?1"
        ))?
        .query_row([key], from_row)
        .optional()
        .map_err(closed::error)
}

/// The SQL condition "every capability the task needs is in the JSON array ?caps".
const CAPABLE: &str = "NOT EXISTS (SELECT 1 FROM json_each(t.capabilities) need
     WHERE need.value NOT IN (SELECT value FROM json_each(:caps)))";

/// The claim's queries, spelled once: every claim looks its statements up by this text.
static TARGETED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_target
         WHERE t.status = 'queued' AND t.target_agent_id = :agent AND t.not_before_ms <= :now
           AND {CAPABLE}
         ORDER BY t.priority DESC, t.created_ms LIMIT :limit"
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

/// Up to `limit` claimable tasks aimed at `agent_id`, in dispatch order.
pub fn targeted_candidates(
    tx: &Tx<'_>,
    agent_id: &str,
    caps_json: &str,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<TaskRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&TARGETED_SQL)?;
    let rows = stmt.query_map(
        rusqlite::named_params! {":agent": agent_id, ":caps": caps_json, ":now": now_ms, ":limit": limit},
        from_row,
    )?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
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
    let (p, c, i) = after.unwrap_or((i64::MAX, i64::MIN, ""));
    let mut stmt = tx.conn().prepare_cached(&OPEN_SQL)?;
    let rows = stmt.query_map(
        rusqlite::named_params! {":now": now_ms, ":p": p, ":c": c, ":i": i, ":caps": caps_json, ":limit": limit},
        from_row,
    )?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// Leases a queued task to an agent. Returns false if it was no longer queued.
pub fn lease(
    tx: &Tx<'_>,
    id: &str,
    agent_id: &str,
    now_ms: i64,
    expires_ms: i64,
) -> Result<bool, StoreError> {
    let n = tx
        .conn()
        .prepare_cached(
            "UPDATE tasks SET status = 'leased', leased_by = ?2, last_agent_id = ?2,
                 lease_expires_ms = ?4, attempts = attempts + 1, updated_ms = ?3,
                 progress = NULL, message = NULL
             WHERE id = ?1 AND status = 'queued'",
        )?
        .execute(params![id, agent_id, now_ms, expires_ms])
        .map_err(closed::error)?;
    Ok(n == 1)
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
    tx.conn()
        .prepare_cached(
            "UPDATE tasks SET status = 'running', progress = COALESCE(?2, progress),
             message = COALESCE(?3, message), updated_ms = ?4, lease_expires_ms = ?4 + timeout_ms
         WHERE id = ?1",
        )?
        .execute(params![id, progress, message, now_ms])
        .map_err(closed::error)?;
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
    tx.conn().prepare_cached(
        "UPDATE tasks SET status = ?2, result = COALESCE(?3, result), last_error = COALESCE(?4, last_error),
             leased_by = NULL, lease_expires_ms = NULL, finished_ms = ?5, updated_ms = ?5,
             progress = CASE WHEN ?2 = 'completed' THEN 1.0 ELSE progress END
         WHERE id = ?1",
    )?
    .execute(params![id, status.as_str(), result, error, now_ms])
    .map_err(closed::error)?;
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
    tx.conn()
        .prepare_cached(
            "UPDATE tasks SET status = 'queued', leased_by = NULL, lease_expires_ms = NULL,
             not_before_ms = ?2, last_error = COALESCE(?3, last_error),
             attempts = attempts - ?4, finished_ms = NULL, updated_ms = ?6,
             target_agent_id = CASE WHEN ?5 THEN NULL ELSE target_agent_id END
         WHERE id = ?1",
        )?
        .execute(params![
            id,
            not_before_ms,
            error,
            i64::from(refund),
            clear_target,
            now_ms
        ])
        .map_err(closed::error)?;
    Ok(())
}

/// Gives a task a fresh retry budget.
pub fn reset_attempts(tx: &Tx<'_>, id: &str) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached("UPDATE tasks SET attempts = 0 WHERE id = ?1")?
        .execute([id])
        .map_err(closed::error)?;
    Ok(())
}

/// Leased or running tasks whose lease expired before `now_ms`.
pub fn expired_leases(tx: &Tx<'_>, now_ms: i64) -> Result<Vec<TaskRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_leases
         WHERE t.status IN ('leased', 'running') AND t.lease_expires_ms < ?1
         ORDER BY t.lease_expires_ms LIMIT 500"
    ))?;
    let rows = stmt.query_map([now_ms], from_row)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// Tasks leased by this agent. A lease sets `last_agent_id` to the holder as well, so the
/// index of last agents finds them (there is no index of holders: one fewer page per claim and
/// per completion).
pub fn held_by(tx: &Tx<'_>, agent_id: &str) -> Result<Vec<TaskRow>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&format!(
        "SELECT {COLUMNS} FROM tasks t INDEXED BY tasks_agent
         WHERE t.last_agent_id = ?1 AND t.leased_by = ?1"
    ))?;
    let rows = stmt.query_map([agent_id], from_row)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// Queued tasks aimed at this agent.
pub fn targeting(tx: &Tx<'_>, agent_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx
        .conn()
        .prepare_cached("SELECT id FROM tasks WHERE target_agent_id = ?1 AND status = 'queued'")?;
    let rows = stmt.query_map([agent_id], |r| r.get(0))?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
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
    let mut stmt = tx.conn().prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), from_row)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// The query [`list`] runs, and its arguments.
fn list_sql(f: &ListFilter<'_>, limit: i64) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = format!("SELECT {COLUMNS} FROM tasks t WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |sql: &mut String, cond: &str, v: rusqlite::types::Value| {
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
        push(&mut sql, " AND t.kind = ?", k.to_string().into());
    }
    if let Some(a) = f.agent_id {
        push(&mut sql, " AND (t.last_agent_id = ?", a.to_string().into());
        push(&mut sql, " OR t.target_agent_id = ?)", a.to_string().into());
    }
    if let Some(p) = f.priority {
        push(&mut sql, " AND t.priority = ?", p.into());
    }
    if let Some((u, id)) = f.before {
        push(&mut sql, &format!(" AND ({updated} < ?"), u.into());
        push(&mut sql, &format!(" OR ({updated} = ?"), u.into());
        push(&mut sql, " AND t.id < ?))", id.to_string().into());
    }
    push(
        &mut sql,
        &format!(" ORDER BY {updated} DESC, t.id DESC LIMIT ?"),
        limit.into(),
    );
    (sql, args)
}

/// Counts by status and priority.
pub fn counts(tx: &Tx<'_>) -> Result<Vec<(TaskStatus, i64, i64)>, StoreError> {
    let mut stmt = tx
        .conn()
        .prepare_cached("SELECT status, priority, COUNT(*) FROM tasks GROUP BY status, priority")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            closed::get_lite(r, 0, "tasks.status")?,
            r.get(1)?,
            r.get(2)?,
        ))
    })?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// Creation time of the oldest queued task.
pub fn oldest_queued_ms(tx: &Tx<'_>) -> Result<Option<i64>, StoreError> {
    tx.conn()
        .prepare_cached("SELECT MIN(created_ms) FROM tasks WHERE status = 'queued'")?
        .query_row([], |r| r.get(0))
        .map_err(closed::error)
}

/// The statuses a task ends in; only these have a `finished_ms`.
const FINAL: [&str; 5] = ["completed", "failed", "timed_out", "cancelled", "dead"];

/// The final statuses spelled out, so that each is a range of tasks_finished (status,
/// finished_ms).
static FINISHED_SINCE_SQL: LazyLock<String> = LazyLock::new(|| {
    let statuses: Vec<String> = FINAL.iter().map(|s| format!("'{s}'")).collect();
    format!(
        "SELECT status, COUNT(*) FROM tasks INDEXED BY tasks_finished
         WHERE status IN ({}) AND finished_ms >= ?1
         GROUP BY status",
        statuses.join(", ")
    )
});

/// Tasks that finished (any final status) at or after `since_ms`, by status.
pub fn finished_since(tx: &Tx<'_>, since_ms: i64) -> Result<Vec<(TaskStatus, i64)>, StoreError> {
    let mut stmt = tx.conn().prepare_cached(&FINISHED_SINCE_SQL)?;
    let rows = stmt.query_map([since_ms], |r| {
        Ok((closed::get_lite(r, 0, "tasks.status")?, r.get(1)?))
    })?;
    rows.collect::<Result<Vec<_>, _>>().map_err(closed::error)
}

/// Deletes finished tasks (of the given final statuses) that finished before `before_ms`.
pub fn purge(tx: &Tx<'_>, statuses: &[TaskStatus], before_ms: i64) -> Result<usize, StoreError> {
    let list = serde_json::to_string(statuses).unwrap_or_else(|_| "[]".into());
    tx.conn()
        .prepare_cached(
            "DELETE FROM tasks WHERE finished_ms < ?1
           AND status IN (SELECT value FROM json_each(?2))",
        )?
        .execute(params![before_ms, list])
        .map_err(closed::error)
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;
    use crate::store::{Location, Store};

    fn row(id: &str, priority: i64, caps: &str, target: Option<&str>) -> TaskRow {
        TaskRow {
            id: id.into(),
            kind: "shell.run".into(),
            params: "{}".into(),
            capabilities: caps.into(),
            target_agent_id: target.map(Into::into),
            priority,
            status: TaskStatus::Queued,
            timeout_ms: 60_000,
            max_retries: 3,
            attempts: 0,
            idempotency_key: None,
            not_before_ms: 0,
            created_ms: 1,
            updated_ms: 1,
            submitted_by: "test".into(),
            leased_by: None,
            lease_expires_ms: None,
            last_agent_id: None,
            progress: None,
            message: None,
            result: None,
            last_error: None,
            finished_ms: None,
        }
    }

    /// Listing one status reads the partial index of its group, never the whole table: with a
    /// million finished tasks, a scan and sort would take a second.
    #[test]
    fn listing_a_status_uses_its_groups_index() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let conn = store.lock();
        let tx = Tx::lite(&conn);
        for (status, index) in [
            ("queued", "tasks_queue"),
            ("leased", "tasks_leases"),
            ("running", "tasks_leases"),
            ("completed", "tasks_finished"),
            ("dead", "tasks_finished"),
        ] {
            let filter = ListFilter {
                status: Some(status.parse()?),
                before: Some((5, "tsk_x")),
                ..Default::default()
            };
            let (sql, args) = list_sql(&filter, 50);
            let mut stmt = tx.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get(3))?
                .collect::<Result<_, _>>()?;
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{status}: {plan}");
            if index == "tasks_finished" {
                assert!(
                    !plan.contains("TEMP B-TREE FOR ORDER BY"),
                    "{status}: {plan}"
                );
            }
        }
        Ok(())
    }

    /// The claim's two candidate queries run from the statement cache as prepared: SQLite built
    /// with STAT4 re-parses a statement on every run when its plan was made for the values
    /// bound at the time, and a claim binds a new `now` every time.
    #[test]
    fn candidate_queries_are_not_prepared_again_per_claim() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&Location::File(dir.path().join("c.db")))?;
        let conn = store.lock();
        let tx = Tx::lite(&conn);
        tx.conn().execute(
            "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources, metadata,
                 status, load, registered_at, last_heartbeat_ms, token_generation)
             VALUES ('agt_1', 'w', 'worker', '[\"linux\"]', '{}', '{}', '{}', 'ready', 0, 'now', 0, 1)",
            [],
        )?;
        insert(&tx, &row("tsk_1", 2, "[\"linux\"]", None))?;
        insert(&tx, &row("tsk_2", 1, "[\"gpu\"]", None))?;
        insert(&tx, &row("tsk_3", 3, "[]", Some("agt_1")))?;
        for now in 10..60 {
            let open = open_candidates(&tx, r#"["linux"]"#, now, None, 1)?;
            assert_eq!(
                open.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
                ["tsk_1"]
            );
            let after = open_candidates(&tx, r#"["linux"]"#, now, Some((2, 1, "tsk_1")), 5)?;
            assert!(after.is_empty(), "the gpu task is not for a linux agent");
            let aimed = targeted_candidates(&tx, "agt_1", r#"["linux"]"#, now, 1)?;
            assert_eq!(aimed.len(), 1);
        }
        for sql in [&*OPEN_SQL, &*TARGETED_SQL] {
            let stmt = tx.conn().prepare_cached(sql)?;
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "prepared again on some run: {sql}"
            );
            assert!(stmt.get_status(StatementStatus::Run) >= 50);
        }
        Ok(())
    }
}
