//! What happens to a leased task: the leaseholder's reports (progress, a result, an error),
//! retries with backoff or the dead letters, cancellation and requeueing a dead task.

use std::collections::HashSet;

use serde_json::json;

use super::{Report, Task, TaskError, TaskService, TaskStatus, event};
use crate::agent::now_ms;
use crate::audit::{Action, Actor, ActorKind};
use crate::store::task::{self as sql, TaskRow};
use crate::store::{StoreError, Tx};

/// A report of a batch once its task is looked at.
enum Judged {
    /// Refused: why.
    Refused(TaskError),
    /// A result for a task the agent holds, serialised.
    Result(TaskRow, String),
    /// Progress or an error for a task the agent holds.
    Other(TaskRow, Report),
}

/// A report's own bounds, before any task is looked at.
fn check(report: &Report) -> Result<(), TaskError> {
    if let Report::Progress {
        progress: Some(p), ..
    } = report
        && (!(0.0..=1.0).contains(p) || p.is_nan())
    {
        return Err(TaskError::Invalid {
            field: "progress",
            message: format!("expected 0 to 1, got {p}"),
        });
    }
    Ok(())
}

/// Whether agent `me` holds `t`'s lease; if not, what it should know (its work is void).
fn holds(t: &TaskRow, me: &str) -> Result<(), TaskError> {
    if t.leased_by.as_deref() == Some(me) {
        return Ok(());
    }
    let task_id = &t.id;
    Err(TaskError::NotLeaseholder(match &t.leased_by {
        Some(other) => format!(
            "task {task_id} is leased by agent {other}, not {me}; your lease ended (expired or reassigned), so drop this work"
        ),
        None => format!(
            "task {task_id} is {} and leased by no one; agent {me} no longer holds it, so drop this work",
            t.status.as_str()
        ),
    }))
}

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
        let mut outcomes = self.report_many(token, vec![(task_id.to_string(), report)])?;
        outcomes
            .pop()
            .unwrap_or_else(|| Err(TaskError::NotFound(task_id.into())))
    }

    /// Several reports from the agent holding their tasks' leases, in one transaction (a worker
    /// that finished a claimed batch sends its results together: one commit, one round trip
    /// per step instead of per task). Each is judged on its own and its outcome returned in
    /// its place: one for a task the agent no longer holds, a task reported twice, or bad
    /// progress is refused there and the others go on. A bad token or a store failure fails
    /// them all, and then none is applied.
    pub fn report_many(
        &self,
        token: &str,
        reports: Vec<(String, Report)>,
    ) -> Result<Vec<Result<Task, TaskError>>, TaskError> {
        // Refused before any task is looked at: a task reported twice, bad progress.
        let mut seen = HashSet::with_capacity(reports.len());
        let refused: Vec<Option<TaskError>> = reports
            .iter()
            .map(|(task_id, report)| {
                if seen.insert(task_id.as_str()) {
                    check(report).err()
                } else {
                    Some(TaskError::Invalid {
                        field: "task_id",
                        message: format!(
                            "task {task_id} is reported twice in one batch; send one report per task"
                        ),
                    })
                }
            })
            .collect();
        if refused.iter().all(Option::is_some) {
            return Ok(refused.into_iter().flatten().map(Err).collect());
        }
        let now = now_ms();
        let (ids, bodies): (Vec<String>, Vec<Report>) = reports.into_iter().unzip();
        self.store().write(move |tx| {
            let me = self.agents.authenticate(tx, token)?;
            let wanted: Vec<&str> = ids
                .iter()
                .zip(&refused)
                .filter(|(_, r)| r.is_none())
                .map(|(id, _)| id.as_str())
                .collect();
            let mut rows = sql::get_many(tx, &wanted)?;
            // Judged first; the results' updates then go in one statement, before the rest is
            // applied in the order sent.
            let mut judged: Vec<Judged> = Vec::with_capacity(ids.len());
            for ((task_id, report), refused) in ids.iter().zip(bodies).zip(refused) {
                judged.push(match refused {
                    Some(e) => Judged::Refused(e),
                    None => match rows.remove(task_id) {
                        None => Judged::Refused(TaskError::NotFound(task_id.clone())),
                        Some(t) => match holds(&t, &me.id) {
                            Err(e) => Judged::Refused(e),
                            Ok(()) => match report {
                                Report::Result(v) => Judged::Result(t, v.to_string()),
                                other => Judged::Other(t, other),
                            },
                        },
                    },
                });
            }
            let results: Vec<(&str, &str)> = judged
                .iter()
                .filter_map(|j| match j {
                    Judged::Result(t, v) => Some((t.id.as_str(), v.as_str())),
                    _ => None,
                })
                .collect();
            sql::complete_each(tx, &results, now)?;
            let mut reread = Vec::new();
            let mut outcomes = Vec::with_capacity(ids.len());
            for j in judged {
                outcomes.push(match j {
                    Judged::Refused(e) => Some(Err(e)),
                    Judged::Result(t, result) => {
                        Some(Ok(self.completed(tx, &me.id, t, result, now)?))
                    }
                    Judged::Other(t, report) => {
                        reread.push(t.id.clone());
                        self.apply(tx, &me.id, t, report, now)?;
                        None
                    }
                });
            }
            // Progress and errors change more than the report says (lease, status, retry
            // time): what they left is read back, all in one query.
            let reread: Vec<&str> = reread.iter().map(String::as_str).collect();
            let mut left = sql::get_many(tx, &reread)?;
            Ok(ids
                .iter()
                .zip(outcomes)
                .map(|(task_id, j)| match j {
                    Some(outcome) => outcome,
                    None => left
                        .remove(task_id)
                        .map(Task::from)
                        .ok_or_else(|| TaskError::NotFound(task_id.clone())),
                })
                .collect())
        })
    }

    /// The rest of a result's report, its task `t` completed by [`sql::complete_each`]: the
    /// audit event, the pipeline's turn, and the task as it now is (without reading it back).
    fn completed(
        &self,
        tx: &Tx<'_>,
        agent_id: &str,
        t: TaskRow,
        result: String,
        now: i64,
    ) -> Result<Task, StoreError> {
        let actor = Actor::new(ActorKind::Agent, agent_id.to_string());
        self.append(
            tx,
            event(
                actor,
                Action::TaskCompleted,
                &t.id,
                json!({"attempt": t.attempts}),
            ),
        )?;
        self.finished(tx, &t.id, TaskStatus::Completed)?;
        let mut done = t;
        done.status = TaskStatus::Completed;
        done.result = Some(result);
        done.leased_by = None;
        done.lease_expires_ms = None;
        done.finished_ms = Some(now);
        done.updated_ms = now;
        done.progress = Some(1.0);
        Ok(Task::from(done))
    }

    /// Applies a progress or error report to its leased task `t` (the row is read back after).
    fn apply(
        &self,
        tx: &Tx<'_>,
        agent_id: &str,
        t: TaskRow,
        report: Report,
        now: i64,
    ) -> Result<(), StoreError> {
        let actor = Actor::new(ActorKind::Agent, agent_id.to_string());
        let task_id = t.id.as_str();
        match report {
            Report::Error { message, retryable } => {
                self.append(
                    tx,
                    event(
                        actor.clone(),
                        Action::TaskFailed,
                        task_id,
                        json!({"attempt": t.attempts, "error": message, "retryable": retryable}),
                    ),
                )?;
                if retryable {
                    self.retry_or_bury(tx, &t, &message, &actor, now)?;
                } else {
                    sql::finish(tx, task_id, TaskStatus::Failed, None, Some(&message), now)?;
                    self.finished(tx, task_id, TaskStatus::Failed)?;
                }
            }
            Report::Progress { progress, message } => {
                sql::progress(tx, task_id, progress, message.as_deref(), now)?;
                if t.status == TaskStatus::Leased {
                    self.append(tx, event(actor, Action::TaskRunning, task_id, json!({})))?;
                }
            }
            // Judged apart and completed with the others of the batch.
            Report::Result(_) => {}
        }
        Ok(())
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
