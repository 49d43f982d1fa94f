//! Submitting tasks: validation of a submission, idempotency keys, and the rows and audit
//! events of a batch, in the caller's transaction or one of their own.

use serde_json::json;

use super::{NewTask, Priority, Task, TaskError, TaskService, TaskStatus, event};
use crate::agent::{normalize_capabilities, now_ms};
use crate::audit::{Action, Actor};
use crate::limits;
use crate::store::Tx;
use crate::store::agent as agent_sql;
use crate::store::task::{self as sql, TaskRow};

impl TaskService {
    /// Adds a task. With an idempotency key already used, returns that task instead
    /// (`created` false).
    pub fn submit(&self, new: NewTask, by: &Actor) -> Result<(Task, bool), TaskError> {
        let mut out = self.submit_many(vec![new], by)?;
        out.pop()
            .ok_or_else(|| TaskError::NotFound("submitted task".into()))
    }

    /// Adds tasks in one transaction (all or none), in order.
    pub fn submit_many(
        &self,
        tasks: Vec<NewTask>,
        by: &Actor,
    ) -> Result<Vec<(Task, bool)>, TaskError> {
        self.store().write(|tx| self.submit_in(tx, tasks, by))
    }

    /// Adds tasks inside the caller's write transaction (a pipeline stage's task commits with
    /// the stage's new state). Same rules as [`submit_many`](Self::submit_many).
    pub fn submit_in(
        &self,
        tx: &Tx<'_>,
        tasks: Vec<NewTask>,
        by: &Actor,
    ) -> Result<Vec<(Task, bool)>, TaskError> {
        let now = now_ms();
        let rows = tasks
            .into_iter()
            .map(|t| self.new_row(t, by, now))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_rows(tx, rows, by)
    }

    fn insert_rows(
        &self,
        tx: &Tx<'_>,
        rows: Vec<(TaskRow, Vec<String>, Priority)>,
        by: &Actor,
    ) -> Result<Vec<(Task, bool)>, TaskError> {
        {
            let mut out = Vec::with_capacity(rows.len());
            for (row, caps, priority) in rows {
                if let Some(key) = &row.idempotency_key
                    && let Some(existing) = sql::by_idempotency_key(tx, key)?
                {
                    out.push((Task::from(existing), false));
                    continue;
                }
                if let Some(target) = &row.target_agent_id
                    && agent_sql::get(tx, target)?.is_none()
                {
                    return Err(TaskError::Invalid {
                        field: "target_agent_id",
                        message: format!("no agent {target} is registered"),
                    });
                }
                sql::insert(tx, &row)?;
                self.append(
                    tx,
                    event(
                        by.clone(),
                        Action::TaskSubmitted,
                        &row.id,
                        json!({"kind": row.kind, "priority": priority.as_str(),
                               "capabilities": caps, "target": row.target_agent_id}),
                    ),
                )?;
                out.push((Task::from(row), true));
            }
            Ok(out)
        }
    }

    /// Validates a submission and builds its row (and its normalized capabilities).
    fn new_row(
        &self,
        new: NewTask,
        by: &Actor,
        now: i64,
    ) -> Result<(TaskRow, Vec<String>, Priority), TaskError> {
        let kind = new.kind.trim().to_string();
        if kind.is_empty() {
            return Err(TaskError::Invalid {
                field: "kind",
                message: "name the tool or command the agent should run".into(),
            });
        }
        let caps = normalize_capabilities(&new.capabilities)?;
        let timeout = new
            .timeout_seconds
            .unwrap_or(self.config.default_timeout_seconds as f64);
        if !limits::TASK_TIMEOUT_SECONDS.contains(timeout) {
            return Err(TaskError::Invalid {
                field: "timeout_seconds",
                message: format!("{}, got {timeout}", limits::TASK_TIMEOUT_SECONDS.expected()),
            });
        }
        let retries = new.max_retries.unwrap_or(self.config.default_max_retries);
        if !limits::TASK_MAX_RETRIES.contains(retries) {
            return Err(TaskError::Invalid {
                field: "max_retries",
                message: format!("{}, got {retries}", limits::TASK_MAX_RETRIES.expected()),
            });
        }
        let row = TaskRow {
            // Time-ordered (UUIDv7): a new task's entries in the id index and in the audit
            // log's subject index land next to the previous task's, on a page that is already
            // in cache, instead of on a random page of an index that grows with every task.
            id: format!("tsk_{}", uuid::Uuid::now_v7().simple()),
            kind,
            params: new.params.to_string(),
            capabilities: serde_json::to_string(&caps).unwrap_or_else(|_| "[]".into()),
            target_agent_id: new.target_agent_id,
            priority: new.priority.rank(),
            status: TaskStatus::Queued,
            timeout_ms: (timeout * 1000.0) as i64,
            max_retries: i64::from(retries),
            attempts: 0,
            idempotency_key: new.idempotency_key,
            not_before_ms: new.not_before_ms.unwrap_or(now),
            created_ms: now,
            updated_ms: now,
            submitted_by: by.render(),
            leased_by: None,
            lease_expires_ms: None,
            progress: None,
            message: None,
            result: None,
            last_error: None,
            finished_ms: None,
            last_agent_id: None,
        };
        Ok((row, caps, new.priority))
    }
}
