//! SQL for pipelines: definitions and their versions, runs, one row per stage of a run, and the
//! durable webhook delivery state of finished runs.

use super::sql::Row;
use super::{StoreError, Tx, closed};
use crate::args;
use crate::pipeline::status::{RunStatus, StageStatus, WebhookState};

/// One row of `pipelines` joined with its latest version.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineRow {
    pub id: String,
    pub name: String,
    pub latest_version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
    pub deleted_at: Option<String>,
}

/// One row of `pipeline_versions`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    pub pipeline_id: String,
    pub version: i64,
    pub description: String,
    pub definition: String,
    pub created_at: String,
    pub created_by: String,
}

/// One row of `pipeline_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub pipeline_id: String,
    pub version: i64,
    pub status: RunStatus,
    pub input: String,
    pub parameters: String,
    pub priority: i64,
    pub started_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_state: Option<WebhookState>,
    pub webhook_attempts: i64,
    pub webhook_next_ms: Option<i64>,
    pub webhook_error: Option<String>,
}

/// One row of `pipeline_stage_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    pub run_id: String,
    pub stage: String,
    pub position: i64,
    pub status: StageStatus,
    pub task_id: Option<String>,
    pub approval_id: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

const PIPELINE_COLUMNS: &str =
    "id, name, latest_version, created_at, updated_at, created_by, deleted_at";
const RUN_COLUMNS: &str = "id, pipeline_id, version, status, input, parameters, priority, \
    started_by, created_ms, updated_ms, finished_ms, error, webhook_url, webhook_state, \
    webhook_attempts, webhook_next_ms, webhook_error";
const STAGE_COLUMNS: &str = "run_id, stage, position, status, task_id, approval_id, output, \
    error, started_ms, finished_ms";

fn pipeline_from(r: &Row<'_>) -> Result<PipelineRow, StoreError> {
    Ok(PipelineRow {
        id: r.get(0)?,
        name: r.get(1)?,
        latest_version: r.get(2)?,
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
        created_by: r.get(5)?,
        deleted_at: r.get(6)?,
    })
}

fn run_from(r: &Row<'_>) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: r.get(0)?,
        pipeline_id: r.get(1)?,
        version: r.get(2)?,
        status: closed::get(r, 3, "pipeline_runs.status")?,
        input: r.get(4)?,
        parameters: r.get(5)?,
        priority: r.get(6)?,
        started_by: r.get(7)?,
        created_ms: r.get(8)?,
        updated_ms: r.get(9)?,
        finished_ms: r.get(10)?,
        error: r.get(11)?,
        webhook_url: r.get(12)?,
        webhook_state: closed::get_opt(r, 13, "pipeline_runs.webhook_state")?,
        webhook_attempts: r.get(14)?,
        webhook_next_ms: r.get(15)?,
        webhook_error: r.get(16)?,
    })
}

fn stage_from(r: &Row<'_>) -> Result<StageRow, StoreError> {
    Ok(StageRow {
        run_id: r.get(0)?,
        stage: r.get(1)?,
        position: r.get(2)?,
        status: closed::get(r, 3, "pipeline_stage_runs.status")?,
        task_id: r.get(4)?,
        approval_id: r.get(5)?,
        output: r.get(6)?,
        error: r.get(7)?,
        started_ms: r.get(8)?,
        finished_ms: r.get(9)?,
    })
}

pub fn insert_pipeline(tx: &Tx<'_>, p: &PipelineRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO pipelines (id, name, latest_version, created_at, updated_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![
            p.id,
            p.name,
            p.latest_version,
            p.created_at,
            p.updated_at,
            p.created_by
        ],
    )?;
    Ok(())
}

pub fn get_pipeline(tx: &Tx<'_>, id: &str) -> Result<Option<PipelineRow>, StoreError> {
    tx.one(
        &format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE id = ?1"),
        args![id],
        pipeline_from,
    )
}

/// The live (not deleted) pipeline with this name.
pub fn pipeline_by_name(tx: &Tx<'_>, name: &str) -> Result<Option<PipelineRow>, StoreError> {
    tx.one(
        &format!("SELECT {PIPELINE_COLUMNS} FROM pipelines WHERE name = ?1 AND deleted_at IS NULL"),
        args![name],
        pipeline_from,
    )
}

/// Live pipelines by name, after `after` (a name) when paging.
pub fn list_pipelines(
    tx: &Tx<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<PipelineRow>, StoreError> {
    // The CAST gives PostgreSQL a type for the parameter in `IS NULL` (SQLite ignores it).
    tx.all(
        &format!(
            "SELECT {PIPELINE_COLUMNS} FROM pipelines
             WHERE deleted_at IS NULL AND (CAST(?1 AS TEXT) IS NULL OR name > ?1)
             ORDER BY name LIMIT ?2"
        ),
        args![after, limit],
        pipeline_from,
    )
}

pub fn set_latest_version(tx: &Tx<'_>, id: &str, version: i64, at: &str) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE pipelines SET latest_version = ?2, updated_at = ?3 WHERE id = ?1",
        args![id, version, at],
    )?;
    Ok(())
}

pub fn mark_deleted(tx: &Tx<'_>, id: &str, at: &str) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE pipelines SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1",
        args![id, at],
    )?;
    Ok(())
}

pub fn insert_version(tx: &Tx<'_>, v: &VersionRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO pipeline_versions
             (pipeline_id, version, description, definition, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![
            v.pipeline_id,
            v.version,
            v.description,
            v.definition,
            v.created_at,
            v.created_by
        ],
    )?;
    Ok(())
}

pub fn get_version(
    tx: &Tx<'_>,
    pipeline_id: &str,
    version: i64,
) -> Result<Option<VersionRow>, StoreError> {
    tx.one(
        "SELECT pipeline_id, version, description, definition, created_at, created_by
         FROM pipeline_versions WHERE pipeline_id = ?1 AND version = ?2",
        args![pipeline_id, version],
        |r| {
            Ok(VersionRow {
                pipeline_id: r.get(0)?,
                version: r.get(1)?,
                description: r.get(2)?,
                definition: r.get(3)?,
                created_at: r.get(4)?,
                created_by: r.get(5)?,
            })
        },
    )
}

pub fn insert_run(tx: &Tx<'_>, r: &RunRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO pipeline_runs (id, pipeline_id, version, status, input, parameters,
             priority, started_by, created_ms, updated_ms, webhook_url, webhook_state)
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10)",
        args![
            r.id,
            r.pipeline_id,
            r.version,
            r.input,
            r.parameters,
            r.priority,
            r.started_by,
            r.created_ms,
            r.webhook_url,
            r.webhook_state.map(WebhookState::as_str)
        ],
    )?;
    Ok(())
}

pub fn get_run(tx: &Tx<'_>, id: &str) -> Result<Option<RunRow>, StoreError> {
    tx.one(
        &format!("SELECT {RUN_COLUMNS} FROM pipeline_runs WHERE id = ?1"),
        args![id],
        run_from,
    )
}

/// The run's status and last change, the cheap poll of waiting calls and subscriptions.
pub fn run_stamp(tx: &Tx<'_>, id: &str) -> Result<Option<(RunStatus, i64)>, StoreError> {
    tx.one(
        "SELECT status, updated_ms FROM pipeline_runs WHERE id = ?1",
        args![id],
        |r| Ok((closed::get(r, 0, "pipeline_runs.status")?, r.get(1)?)),
    )
}

/// Runs, newest first, optionally of one pipeline and/or in one status; `before` pages on
/// `(created_ms, id)`.
pub fn list_runs(
    tx: &Tx<'_>,
    pipeline_id: Option<&str>,
    status: Option<RunStatus>,
    before: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<RunRow>, StoreError> {
    let (ms, id) = before.unzip();
    // The CASTs give PostgreSQL a type for the parameters in `IS NULL` (SQLite ignores them).
    tx.all(
        &format!(
            "SELECT {RUN_COLUMNS} FROM pipeline_runs
             WHERE (CAST(?1 AS TEXT) IS NULL OR pipeline_id = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
               AND (CAST(?3 AS BIGINT) IS NULL OR created_ms < ?3
                    OR (created_ms = ?3 AND id < ?4))
             ORDER BY created_ms DESC, id DESC LIMIT ?5"
        ),
        args![pipeline_id, status.map(RunStatus::as_str), ms, id, limit],
        run_from,
    )
}

/// How many runs of this pipeline are running.
pub fn active_runs(tx: &Tx<'_>, pipeline_id: &str) -> Result<i64, StoreError> {
    Ok(tx
        .one(
            "SELECT COUNT(*) FROM pipeline_runs WHERE pipeline_id = ?1 AND status = 'running'",
            args![pipeline_id],
            |r| r.get(0),
        )?
        .unwrap_or(0))
}

/// Marks a run changed (waiting calls and subscribers watch `updated_ms`).
pub fn touch_run(tx: &Tx<'_>, id: &str, now_ms: i64) -> Result<(), StoreError> {
    // Two-argument MAX is SQLite's; PostgreSQL spells it GREATEST.
    let sql = if tx.is_postgres() {
        "UPDATE pipeline_runs SET updated_ms = GREATEST(updated_ms + 1, ?2) WHERE id = ?1"
    } else {
        "UPDATE pipeline_runs SET updated_ms = MAX(updated_ms + 1, ?2) WHERE id = ?1"
    };
    tx.exec(sql, args![id, now_ms])?;
    Ok(())
}

/// Ends a running run. False when it had already ended. A run with a webhook becomes due for
/// delivery now.
pub fn finish_run(
    tx: &Tx<'_>,
    id: &str,
    status: RunStatus,
    error: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let sql = if tx.is_postgres() {
        "UPDATE pipeline_runs SET status = ?2, error = ?3, finished_ms = ?4,
             updated_ms = GREATEST(updated_ms + 1, ?4),
             webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,
             webhook_next_ms = CASE WHEN webhook_url IS NULL THEN NULL ELSE ?4 END
         WHERE id = ?1 AND status = 'running'"
    } else {
        "UPDATE pipeline_runs SET status = ?2, error = ?3, finished_ms = ?4,
             updated_ms = MAX(updated_ms + 1, ?4),
             webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END,
             webhook_next_ms = CASE WHEN webhook_url IS NULL THEN NULL ELSE ?4 END
         WHERE id = ?1 AND status = 'running'"
    };
    let n = tx.exec(sql, args![id, status.as_str(), error, now_ms])?;
    Ok(n == 1)
}

pub fn insert_stage(tx: &Tx<'_>, s: &StageRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO pipeline_stage_runs (run_id, stage, position, status)
         VALUES (?1, ?2, ?3, ?4)",
        args![s.run_id, s.stage, s.position, s.status.as_str()],
    )?;
    Ok(())
}

/// The stages of a run in topological order.
pub fn stages_of(tx: &Tx<'_>, run_id: &str) -> Result<Vec<StageRow>, StoreError> {
    tx.all(
        &format!(
            "SELECT {STAGE_COLUMNS} FROM pipeline_stage_runs WHERE run_id = ?1 ORDER BY position"
        ),
        args![run_id],
        stage_from,
    )
}

/// The stage a task runs, if the task belongs to a pipeline run.
pub fn stage_by_task(tx: &Tx<'_>, task_id: &str) -> Result<Option<StageRow>, StoreError> {
    tx.one(
        &format!("SELECT {STAGE_COLUMNS} FROM pipeline_stage_runs WHERE task_id = ?1"),
        args![task_id],
        stage_from,
    )
}

/// Runs with something to collect: a stage whose question was decided or expired (`now` is
/// RFC 3339), or whose task finished (or vanished) without the stage moving.
pub fn runs_to_collect(tx: &Tx<'_>, now: &str) -> Result<Vec<String>, StoreError> {
    tx.all(
        "SELECT s.run_id FROM pipeline_stage_runs s LEFT JOIN approvals a ON a.id = s.approval_id
         WHERE s.status = 'awaiting_approval'
           AND (a.id IS NULL OR a.state != 'pending' OR a.expires_at <= ?1)
         UNION
         SELECT s.run_id FROM pipeline_stage_runs s LEFT JOIN tasks t ON t.id = s.task_id
         WHERE s.status = 'queued'
           AND (t.id IS NULL OR t.status IN ('completed', 'failed', 'dead', 'cancelled'))",
        args![now],
        |r| r.get(0),
    )
}

/// Moves a stage from `from` to a new state. False when it was no longer in `from` (someone
/// else moved it first), so no transition is applied twice.
#[allow(clippy::too_many_arguments)]
pub fn move_stage(
    tx: &Tx<'_>,
    run_id: &str,
    stage: &str,
    from: StageStatus,
    to: StageStatus,
    task_id: Option<&str>,
    approval_id: Option<&str>,
    output: Option<&str>,
    error: Option<&str>,
    now_ms: i64,
    finished: bool,
) -> Result<bool, StoreError> {
    // `finished` is bound as 0 or 1: `<> 0` makes it a condition on PostgreSQL too.
    let n = tx.exec(
        "UPDATE pipeline_stage_runs SET status = ?4,
             task_id = COALESCE(?5, task_id), approval_id = COALESCE(?6, approval_id),
             output = COALESCE(?7, output), error = COALESCE(?8, error),
             started_ms = CASE WHEN started_ms IS NULL AND ?4 IN ('queued', 'awaiting_approval')
                               THEN ?9 ELSE started_ms END,
             finished_ms = CASE WHEN ?10 <> 0 THEN ?9 ELSE finished_ms END
         WHERE run_id = ?1 AND stage = ?2 AND status = ?3",
        args![
            run_id,
            stage,
            from.as_str(),
            to.as_str(),
            task_id,
            approval_id,
            output,
            error,
            now_ms,
            finished
        ],
    )?;
    Ok(n == 1)
}

/// Ends a stage that never produced output (skipped, cancelled) with the reason.
pub fn close_stage(
    tx: &Tx<'_>,
    run_id: &str,
    stage: &str,
    from: StageStatus,
    to: StageStatus,
    why: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    move_stage(
        tx,
        run_id,
        stage,
        from,
        to,
        None,
        None,
        None,
        Some(why),
        now_ms,
        true,
    )
}

/// Finished runs whose webhook is due. Several processes may see the same run; [`claim_webhook`]
/// lets only one of them deliver each attempt.
pub fn due_webhooks(tx: &Tx<'_>, now_ms: i64, limit: i64) -> Result<Vec<RunRow>, StoreError> {
    tx.all(
        &format!(
            "SELECT {RUN_COLUMNS} FROM pipeline_runs
             WHERE webhook_state = 'pending' AND webhook_next_ms <= ?1
             ORDER BY webhook_next_ms LIMIT ?2"
        ),
        args![now_ms, limit],
        run_from,
    )
}

/// Takes one delivery attempt: pushes the next attempt time to `hold_until_ms` (so no other
/// process delivers meanwhile) and counts the attempt. False when another process took it.
pub fn claim_webhook(
    tx: &Tx<'_>,
    id: &str,
    seen_next_ms: i64,
    hold_until_ms: i64,
) -> Result<bool, StoreError> {
    let n = tx.exec(
        "UPDATE pipeline_runs SET webhook_next_ms = ?3, webhook_attempts = webhook_attempts + 1
         WHERE id = ?1 AND webhook_state = 'pending' AND webhook_next_ms = ?2",
        args![id, seen_next_ms, hold_until_ms],
    )?;
    Ok(n == 1)
}

/// Records the outcome of a delivery attempt.
pub fn webhook_outcome(
    tx: &Tx<'_>,
    id: &str,
    state: WebhookState,
    next_ms: Option<i64>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE pipeline_runs SET webhook_state = ?2, webhook_next_ms = ?3, webhook_error = ?4
         WHERE id = ?1",
        args![id, state.as_str(), next_ms, error],
    )?;
    Ok(())
}

/// Runs `f` under a savepoint of the open transaction: its writes stay when it succeeds and
/// are undone when it fails, the transaction going on either way (a pipeline run advanced
/// inside a task report must not fail the report). The outer `Err` is the savepoint's own
/// failure. Both backends spell savepoints alike; on PostgreSQL the rollback also clears a
/// failed statement's abort of the transaction, which is what lets the report go on. Only
/// inside [`Store::write`](super::Store::write): PostgreSQL has no savepoint outside a
/// transaction.
pub fn within_savepoint<T, E: From<StoreError>>(
    tx: &Tx<'_>,
    name: &'static str,
    f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
) -> Result<Result<T, E>, StoreError> {
    // SAVEPOINT sends what was put off before it (`Tx::exec_later`), so those belong to the
    // transaction; what `f` puts off is sent before the savepoint ends, so its failure is
    // `f`'s failure and is undone with it.
    tx.exec(&format!("SAVEPOINT {name}"), args![])?;
    let out = match f(tx) {
        Ok(v) => tx.flush_later().map(|()| v).map_err(E::from),
        Err(e) => {
            tx.discard_later();
            Err(e)
        }
    };
    if out.is_err() {
        tx.exec(&format!("ROLLBACK TO SAVEPOINT {name}"), args![])?;
        // What the transaction remembered may have been undone with it (the audit head).
        tx.forget_memos();
    }
    tx.exec(&format!("RELEASE SAVEPOINT {name}"), args![])?;
    Ok(out)
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
