//! What happens to a leased task: the leaseholder's reports (progress, a result, an error),
//! retries with backoff or the dead letters, cancellation and requeueing a dead task.

use serde_json::json;

use super::{Report, Task, TaskError, TaskService, TaskStatus, event};
use crate::agent::now_ms;
use crate::audit::{Action, Actor, ActorKind};
use crate::store::task::{self as sql, TaskRow};
use crate::store::{StoreError, Tx};

impl TaskService {
    /// Backoff before retry `attempt` (1-based): base * 2^(attempt-1), capped, ±50% jitter.
    fn backoff_ms(&self, attempt: i64) -> i64 {
        let exp = (attempt - 1).clamp(0, 30) as u32;
        let base = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << exp)
            .min(self.config.backoff_max_ms) as f64;
        let mut b = [0u8; 2];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
        let jitter = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
        (base * jitter) as i64
    }

    /// A failed or timed-out attempt: back to the queue with backoff, or to the dead letters.
    pub(super) fn retry_or_bury(
        &self,
        tx: &Tx<'_>,
        t: &TaskRow,
        error: &str,
        actor: &Actor,
        now: i64,
    ) -> Result<TaskStatus, StoreError> {
        if t.attempts <= t.max_retries {
            let at = now + self.backoff_ms(t.attempts);
            sql::requeue(tx, &t.id, at, Some(error), false, false, now)?;
            self.append(
                tx,
                event(
                    actor.clone(),
                    Action::TaskRequeued,
                    &t.id,
                    json!({"attempt": t.attempts, "retry_at_ms": at, "error": error}),
                ),
            )?;
            Ok(TaskStatus::Queued)
        } else {
            sql::finish(tx, &t.id, TaskStatus::Dead, None, Some(error), now)?;
            self.append(
                tx,
                event(
                    actor.clone(),
                    Action::TaskDead,
                    &t.id,
                    json!({"attempts": t.attempts, "error": error}),
                ),
            )?;
            self.finished(tx, &t.id, TaskStatus::Dead)?;
            Ok(TaskStatus::Dead)
        }
    }

    /// A report from the agent holding the task's lease: progress, a result, or an error.
    pub fn report(&self, token: &str, task_id: &str, report: Report) -> Result<Task, TaskError> {
        if let Report::Progress {
            progress: Some(p), ..
        } = report
            && (!(0.0..=1.0).contains(&p) || p.is_nan())
        {
            return Err(TaskError::Invalid {
                field: "progress",
                message: format!("expected 0 to 1, got {p}"),
            });
        }
        let now = now_ms();
        self.store().write(|tx| {
            let me = self.agents.authenticate(tx, token)?;
            let t = sql::get(tx, task_id)?.ok_or_else(|| TaskError::NotFound(task_id.into()))?;
            let status = t.status;
            if t.leased_by.as_deref() != Some(me.id.as_str()) {
                return Err(TaskError::NotLeaseholder(match (&t.leased_by, status) {
                    (Some(other), _) => format!(
                        "task {task_id} is leased by agent {other}, not {}; your lease ended (expired or reassigned), so drop this work",
                        me.id
                    ),
                    (None, s) => format!(
                        "task {task_id} is {} and leased by no one; agent {} no longer holds it, so drop this work",
                        s.as_str(), me.id
                    ),
                }));
            }
            let actor = Actor::new(ActorKind::Agent, me.id.clone());
            match report {
            Report::Error { message, retryable } => {
                self.append(
                    tx,
                    event(actor.clone(), Action::TaskFailed, task_id,
                          json!({"attempt": t.attempts, "error": message, "retryable": retryable})),
                )?;
                if retryable {
                    self.retry_or_bury(tx, &t, &message, &actor, now)?;
                } else {
                    sql::finish(tx, task_id, TaskStatus::Failed, None, Some(&message), now)?;
                    self.finished(tx, task_id, TaskStatus::Failed)?;
                }
            }
            Report::Result(result) => {
                let result = result.to_string();
                sql::finish(tx, task_id, TaskStatus::Completed, Some(&result), None, now)?;
                self.append(
                    tx,
                    event(actor, Action::TaskCompleted, task_id, json!({"attempt": t.attempts})),
                )?;
                self.finished(tx, task_id, TaskStatus::Completed)?;
                // The hot path: what `sql::finish` wrote, without reading the row back.
                let mut done = t;
                done.status = TaskStatus::Completed;
                done.result = Some(result);
                done.leased_by = None;
                done.lease_expires_ms = None;
                done.finished_ms = Some(now);
                done.updated_ms = now;
                done.progress = Some(1.0);
                return Ok(Task::from(done));
            }
            Report::Progress { progress, message } => {
                sql::progress(tx, task_id, progress, message.as_deref(), now)?;
                if status == TaskStatus::Leased {
                    self.append(tx, event(actor, Action::TaskRunning, task_id, json!({})))?;
                }
            }
            }
            let row = sql::get(tx, task_id)?.ok_or_else(|| TaskError::NotFound(task_id.into()))?;
            Ok(Task::from(row))
        })
    }

    /// Cancels a task that has not finished. A leaseholder's later report is refused.
    pub fn cancel(&self, id: &str, reason: Option<&str>, by: &Actor) -> Result<Task, TaskError> {
        self.store().write(|tx| self.cancel_in(tx, id, reason, by))
    }

    /// [`cancel`](Self::cancel) inside the caller's write transaction.
    pub fn cancel_in(
        &self,
        tx: &Tx<'_>,
        id: &str,
        reason: Option<&str>,
        by: &Actor,
    ) -> Result<Task, TaskError> {
        let now = now_ms();
        {
            let t = sql::get(tx, id)?.ok_or_else(|| TaskError::NotFound(id.into()))?;
            let status = t.status;
            if status.is_final() {
                return Err(TaskError::Conflict(format!(
                    "task {id} is already {}; only unfinished tasks can be cancelled",
                    status.as_str()
                )));
            }
            sql::finish(tx, id, TaskStatus::Cancelled, None, reason, now)?;
            self.append(
                tx,
                event(
                    by.clone(),
                    Action::TaskCancelled,
                    id,
                    json!({"from": status.as_str(), "reason": reason, "leased_by": t.leased_by}),
                ),
            )?;
            self.finished(tx, id, TaskStatus::Cancelled)?;
            Ok(Task::from(
                sql::get(tx, id)?.ok_or_else(|| TaskError::NotFound(id.into()))?,
            ))
        }
    }

    /// Puts a dead or failed task back in the queue with a fresh retry budget.
    pub fn requeue(&self, id: &str, by: &Actor) -> Result<Task, TaskError> {
        let now = now_ms();
        self.store().write(|tx| {
            let t = sql::get(tx, id)?.ok_or_else(|| TaskError::NotFound(id.into()))?;
            if !matches!(t.status, TaskStatus::Dead | TaskStatus::Failed) {
                return Err(TaskError::Conflict(format!(
                    "task {id} is {}; only dead or failed tasks can be requeued",
                    t.status
                )));
            }
            sql::reset_attempts(tx, id)?;
            sql::requeue(tx, id, now, None, false, false, now)?;
            self.append(
                tx,
                event(
                    by.clone(),
                    Action::TaskRequeued,
                    id,
                    json!({"from": t.status}),
                ),
            )?;
            Ok(Task::from(
                sql::get(tx, id)?.ok_or_else(|| TaskError::NotFound(id.into()))?,
            ))
        })
    }
}
