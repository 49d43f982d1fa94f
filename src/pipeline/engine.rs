//! The engine: one pass over a run in topological order (collect finished tasks and decided
//! approvals, skip what a failed required stage blocks, dispatch what is ready, end the run
//! when nothing can move), inside the caller's transaction; the tick that finds runs with
//! something to collect, and the task observer that advances a run in the transaction of the
//! report that finished its stage's task.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::dag::{Dag, StageDef};
use super::run::rank_priority;
use super::{Inner, PipelineError, PipelineService, RunStatus, StageStatus, gate};
use crate::agent::now_ms;
use crate::approval::{self, Approval, ApprovalError, State};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, ActorKind, NewEvent, Outcome};
use crate::store::pipeline::{self as sql, RunRow, StageRow};
use crate::store::task as task_sql;
use crate::store::{StoreError, Tx};
use crate::task::{NewTask, TaskObserver, TaskStatus};

/// A stage's status, output and error during one pass over its run.
pub(super) type StageState = (StageStatus, Option<String>, Option<String>);

/// What one pass over a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// Stages that moved.
    pub moved: usize,
    /// The run ended in this pass.
    pub finished: bool,
}

impl PipelineService {
    /// Moves a run forward in its own transaction (after a decision made by this process).
    pub fn advance(&self, run_id: &str) -> Result<Advanced, PipelineError> {
        let out = self.store().write(|tx| self.advance_in(tx, run_id))?;
        if out.moved > 0 || out.finished {
            self.notify();
        }
        Ok(out)
    }

    /// One pass over a run in topological order, inside the caller's transaction: collects
    /// finished tasks and decided approvals, skips what a failed required stage blocks,
    /// dispatches stages whose dependencies are done, and ends the run when nothing is left
    /// to move. Idempotent: a second pass with nothing new changes nothing.
    pub fn advance_in(&self, tx: &Tx<'_>, run_id: &str) -> Result<Advanced, PipelineError> {
        let mut out = Advanced::default();
        let Some(run) = sql::get_run(tx, run_id)? else {
            return Ok(out);
        };
        if run.status != RunStatus::Running {
            return Ok(out);
        }
        let (dag, _) = self.dag(tx, &run.pipeline_id, run.version)?;
        let rows = sql::stages_of(tx, run_id)?;
        let mut state: HashMap<String, StageState> = rows
            .iter()
            .map(|r| {
                (
                    r.stage.clone(),
                    (r.status, r.output.clone(), r.error.clone()),
                )
            })
            .collect();
        let by_name: HashMap<&str, &StageRow> =
            rows.iter().map(|r| (r.stage.as_str(), r)).collect();
        if rows
            .iter()
            .any(|r| r.status == StageStatus::AwaitingApproval)
        {
            approval::expire_due_in(self.inner.tasks.agents().audit(), tx)?;
        }
        let now = now_ms();
        let system = Actor::system();
        for &i in &dag.order {
            let def = &dag.definition.stages[i];
            let Some(row) = by_name.get(def.name.as_str()) else {
                continue;
            };
            let status = state.get(&def.name).map_or(StageStatus::Waiting, |s| s.0);
            let moved: Option<StageState> = match status {
                StageStatus::Waiting => self.try_start(tx, &run, &dag, i, &state, now)?,
                StageStatus::Queued | StageStatus::Running => {
                    self.collect_task(tx, &run, row, now)?
                }
                StageStatus::AwaitingApproval => {
                    let gate = gate::stage_gate(&run, &dag, i, &state);
                    self.collect_approval(tx, &run, row, &gate, now, &system)?
                }
                _ => None,
            };
            if let Some(new) = moved {
                out.moved += 1;
                state.insert(def.name.clone(), new);
            }
        }
        if state.values().all(|(s, _, _)| !s.is_open()) {
            let failed: Vec<&StageDef> = dag
                .definition
                .stages
                .iter()
                .filter(|d| {
                    d.required
                        && matches!(
                            state.get(&d.name).map(|s| s.0),
                            Some(StageStatus::Failed | StageStatus::Cancelled)
                        )
                })
                .collect();
            let (status, error) = match failed.first() {
                None => (RunStatus::Completed, None),
                Some(d) => {
                    let why = state
                        .get(&d.name)
                        .and_then(|s| s.2.clone())
                        .unwrap_or_else(|| "failed".into());
                    (
                        RunStatus::Failed,
                        Some(format!("required stage {} failed: {why}", d.name)),
                    )
                }
            };
            if sql::finish_run(tx, run_id, status, error.as_deref(), now)? {
                out.finished = true;
                self.append(
                    tx,
                    NewEvent {
                        actor: system.clone(),
                        action: Action::PipelineRunFinished,
                        subject: run_id.to_string(),
                        outcome: if status == RunStatus::Completed {
                            Outcome::Ok
                        } else {
                            Outcome::Error
                        },
                        detail: json!({"status": status.as_str(), "error": error}),
                        critical: false,
                    },
                )?;
            }
        } else if out.moved > 0 {
            sql::touch_run(tx, run_id, now)?;
        }
        Ok(out)
    }

    fn stage_event(
        &self,
        tx: &Tx<'_>,
        action: Action,
        run: &RunRow,
        stage: &str,
        detail: Value,
    ) -> Result<(), StoreError> {
        let mut detail = detail;
        if let Value::Object(m) = &mut detail {
            m.insert("stage".into(), json!(stage));
            m.insert("pipeline_id".into(), json!(run.pipeline_id));
        }
        self.append(
            tx,
            NewEvent {
                actor: Actor::system(),
                action,
                subject: run.id.clone(),
                outcome: if matches!(action, Action::PipelineStageFailed) {
                    Outcome::Error
                } else {
                    Outcome::Ok
                },
                detail,
                critical: false,
            },
        )
    }

    /// A waiting stage: skipped if a required stage before it failed (or was skipped), started
    /// when every stage before it is done, left waiting otherwise.
    fn try_start(
        &self,
        tx: &Tx<'_>,
        run: &RunRow,
        dag: &Dag,
        i: usize,
        state: &HashMap<String, StageState>,
        now: i64,
    ) -> Result<Option<StageState>, PipelineError> {
        let def = &dag.definition.stages[i];
        let mut blocked_by = None;
        for &u in &dag.upstream[i] {
            let up = &dag.definition.stages[u];
            let s = state.get(&up.name).map_or(StageStatus::Waiting, |s| s.0);
            if s.is_open() {
                return Ok(None);
            }
            let blocks = s == StageStatus::Skipped
                || (up.required && matches!(s, StageStatus::Failed | StageStatus::Cancelled));
            if blocks && blocked_by.is_none() {
                blocked_by = Some((up.name.clone(), s));
            }
        }
        if let Some((up, s)) = blocked_by {
            let why = format!("skipped: stage {up} before it was {s}");
            sql::close_stage(
                tx,
                &run.id,
                &def.name,
                StageStatus::Waiting,
                StageStatus::Skipped,
                &why,
                now,
            )?;
            self.stage_event(
                tx,
                Action::PipelineStageSkipped,
                run,
                &def.name,
                json!({"because": up}),
            )?;
            return Ok(Some((StageStatus::Skipped, None, Some(why))));
        }
        // What the stage receives: the run's input and parameters, its own fixed params, and
        // the outputs (or errors) of the stages it depends on.
        let (upstream, upstream_errors) = gate::upstream(dag, i, state);
        let input: Value = serde_json::from_str(&run.input).unwrap_or(Value::Null);
        let parameters: Value = serde_json::from_str(&run.parameters).unwrap_or(Value::Null);
        if def.approval {
            let gate = gate::stage_gate(run, dag, i, state);
            // The engine asks, on behalf of whoever started the run (over HTTP: the principal),
            // so that the person deciding sees who wants the stage to go ahead.
            let by = Actor::new(
                ActorKind::System,
                format!(
                    "mcp-coordinator (run {} started by {})",
                    run.id, run.started_by
                ),
            );
            let approval = self.inner.approvals.open_in(tx, &gate, &by)?;
            return self.start_stage(tx, run, &def.name, None, Some(&approval.id), now);
        }
        let params = json!({
            "pipeline": {
                "run_id": run.id, "pipeline_id": run.pipeline_id, "version": run.version,
                "stage": def.name, "type": def.stage_type,
            },
            "input": input,
            "parameters": parameters,
            "params": def.params.clone().unwrap_or(Value::Null),
            "upstream": upstream,
            "upstream_errors": upstream_errors,
        });
        let submitted = self.inner.tasks.submit_in(
            tx,
            vec![NewTask {
                kind: def.task_kind().to_string(),
                params,
                capabilities: def.capability.iter().cloned().collect(),
                target_agent_id: None,
                priority: rank_priority(run.priority),
                timeout_seconds: def.timeout_seconds,
                max_retries: def.retries,
                // One task per stage per run, even if this pass were somehow repeated.
                idempotency_key: Some(format!("pipeline:{}:{}", run.id, def.name)),
                not_before_ms: None,
            }],
            &Actor::system(),
        )?;
        let task_id = submitted
            .first()
            .map(|(t, _)| t.id.clone())
            .ok_or_else(|| PipelineError::Conflict("the queue accepted no task".into()))?;
        self.start_stage(tx, run, &def.name, Some(&task_id), None, now)
    }

    /// Moves a waiting stage to `queued` (with its task) or `awaiting_approval` (with its
    /// approval), with its audit event.
    fn start_stage(
        &self,
        tx: &Tx<'_>,
        run: &RunRow,
        stage: &str,
        task_id: Option<&str>,
        approval_id: Option<&str>,
        now: i64,
    ) -> Result<Option<StageState>, PipelineError> {
        let to = if approval_id.is_some() {
            StageStatus::AwaitingApproval
        } else {
            StageStatus::Queued
        };
        sql::move_stage(
            tx,
            &run.id,
            stage,
            StageStatus::Waiting,
            to,
            task_id,
            approval_id,
            None,
            None,
            now,
            false,
        )?;
        self.stage_event(
            tx,
            Action::PipelineStageStarted,
            run,
            stage,
            json!({"task_id": task_id, "approval_id": approval_id}),
        )?;
        Ok(Some((to, None, None)))
    }

    /// A stage with a task: completed, failed or cancelled once its task is.
    fn collect_task(
        &self,
        tx: &Tx<'_>,
        run: &RunRow,
        row: &StageRow,
        now: i64,
    ) -> Result<Option<StageState>, PipelineError> {
        let Some(task_id) = &row.task_id else {
            return Ok(None);
        };
        let (to, output, error) = match task_sql::get(tx, task_id)? {
            None => (
                StageStatus::Failed,
                None,
                Some(format!("task {task_id} no longer exists (purged?)")),
            ),
            Some(t) => match t.status {
                TaskStatus::Completed => (StageStatus::Completed, t.result.clone(), None),
                TaskStatus::Failed | TaskStatus::Dead => (
                    StageStatus::Failed,
                    None,
                    Some(format!(
                        "task {task_id} {} after {} attempt(s): {}",
                        t.status,
                        t.attempts,
                        t.last_error.as_deref().unwrap_or("no error given")
                    )),
                ),
                TaskStatus::Cancelled => (
                    StageStatus::Cancelled,
                    None,
                    Some(format!(
                        "task {task_id} was cancelled{}",
                        t.last_error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )),
                ),
                _ => return Ok(None),
            },
        };
        self.end_stage(
            tx,
            run,
            row,
            (to, output, error),
            now,
            json!({"task_id": task_id}),
        )
    }

    /// Moves a stage to its final state with its audit event; `None` when it had already moved.
    fn end_stage(
        &self,
        tx: &Tx<'_>,
        run: &RunRow,
        row: &StageRow,
        (to, output, error): StageState,
        now: i64,
        detail: Value,
    ) -> Result<Option<StageState>, PipelineError> {
        if !sql::move_stage(
            tx,
            &run.id,
            &row.stage,
            row.status,
            to,
            None,
            None,
            output.as_deref(),
            error.as_deref(),
            now,
            true,
        )? {
            return Ok(None);
        }
        let action = if to == StageStatus::Completed {
            Action::PipelineStageCompleted
        } else {
            Action::PipelineStageFailed
        };
        let mut detail = detail;
        detail["error"] = json!(error);
        self.stage_event(tx, action, run, &row.stage, detail)?;
        Ok(Some((to, output, error)))
    }

    /// An approval stage: completed once its approval is approved (the approval is consumed
    /// through the stage's gate in this transaction, so it lets the branch through once, and
    /// only if it was made for exactly this stage), failed once it is refused.
    fn collect_approval(
        &self,
        tx: &Tx<'_>,
        run: &RunRow,
        row: &StageRow,
        gate: &crate::approval::Gate,
        now: i64,
        system: &Actor,
    ) -> Result<Option<StageState>, PipelineError> {
        let Some(id) = &row.approval_id else {
            return Ok(None);
        };
        let Some(a) = crate::store::approval::get(tx, id)? else {
            return Ok(None);
        };
        let a = Approval::from_row(a)?;
        let (to, output, error) = match a.state {
            State::Pending => return Ok(None),
            State::Approved => match self.inner.approvals.consume_in(tx, id, gate, system) {
                Ok(_) => {
                    let d = a.decision.as_ref();
                    let output = json!({
                        "approval_id": id,
                        "approved_by": d.map(|d| d.by.clone()),
                        "via": d.map(|d| d.via),
                        "reason": d.and_then(|d| d.reason.clone()),
                    });
                    (StageStatus::Completed, Some(output.to_string()), None)
                }
                // Approved, but not for exactly this stage under the current policy: the
                // branch stops here rather than the run getting stuck on it.
                Err(ApprovalError::NotExecutable(why)) => (
                    StageStatus::Failed,
                    None,
                    Some(format!(
                        "approval {id} does not let this stage through: {why}"
                    )),
                ),
                Err(e) => return Err(e.into()),
            },
            state => {
                let d = a.decision.as_ref();
                let why = d
                    .and_then(|d| d.reason.clone().or_else(|| d.cause.clone()))
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let by = d.map(|d| format!(" by {}", d.by)).unwrap_or_default();
                (
                    StageStatus::Failed,
                    None,
                    Some(format!("approval {id} was {state}{by}{why}")),
                )
            }
        };
        self.end_stage(
            tx,
            run,
            row,
            (to, output, error),
            now,
            json!({"approval_id": id}),
        )
    }

    /// Moves every run that has something to collect: a decided (or expired) approval, or a
    /// finished task whose stage was not moved yet (a report made by an older build, or a
    /// pass that failed). Runs in every serving process; cheap when nothing is due.
    pub fn tick(&self) -> Result<usize, PipelineError> {
        let due = self
            .store()
            .read(|tx| sql::runs_to_collect(tx, &now_ts()))?;
        let mut moved = 0;
        for id in due {
            let a = self.advance(&id)?;
            moved += a.moved;
        }
        Ok(moved)
    }
}

/// The task queue's observer: when a pipeline stage's task finishes, the run advances in the
/// same transaction. A failure here is logged and rolled back to a savepoint, never allowed to
/// fail the agent's report; the tick retries the run.
pub(super) struct Observer(pub(super) std::sync::Weak<Inner>);

impl TaskObserver for Observer {
    fn task_finished(
        &self,
        tx: &Tx<'_>,
        task_id: &str,
        _status: TaskStatus,
    ) -> Result<(), StoreError> {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let Some(stage) = sql::stage_by_task(tx, task_id)? else {
            return Ok(());
        };
        if stage.status != StageStatus::Queued {
            return Ok(());
        }
        let service = PipelineService { inner };
        match sql::within_savepoint(tx, "pipeline_advance", |tx| {
            service.advance_in(tx, &stage.run_id)
        })? {
            Ok(_) => service.notify(),
            Err(e) => {
                tracing::warn!(run = %stage.run_id, error = %e, "could not advance the pipeline run; the next tick retries");
            }
        }
        Ok(())
    }
}
