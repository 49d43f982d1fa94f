//! Runs of a pipeline: starting one (its stages recorded and the first ones dispatched in one
//! transaction), reading one with its tasks' live state, listing and cancelling them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::definition::version_of;
use super::{
    PipelineError, PipelineService, RunStatus, StageStatus, WebhookState, invalid, webhook,
};
use crate::agent::now_ms;
use crate::approval::{ApprovalError, Channel, State, Verdict};
use crate::audit::chain::format_ms;
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::store::Tx;
use crate::store::pipeline::{self as sql, RunRow, StageRow};
use crate::store::task as task_sql;
use crate::task::{Priority, TaskStatus};

/// One stage of a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StageRun {
    pub name: String,
    #[serde(rename = "type")]
    pub stage_type: String,
    pub required: bool,
    /// True for a human gate.
    pub approval: bool,
    pub status: StageStatus,
    /// The stages it waits for.
    pub depends_on: Vec<String>,
    /// The queue task that runs it (`task_get` shows it in full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The approval an approval stage waits for (`approval_request` with this id asks again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The agent running (or that ran) its task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Attempts of its task so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// 0..1, from the agent's reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From start (queued or asked) to finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// Delivery of a run's completion webhook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WebhookStatus {
    /// The target, with its path hidden (webhook paths often hold a token).
    pub url: String,
    /// `waiting` (run not finished), `pending` (being delivered), `delivered` or `failed`.
    pub state: String,
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A run of a pipeline and every stage in it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    pub id: String,
    pub pipeline_id: String,
    pub pipeline_name: String,
    /// The definition version this run follows (pinned when it started).
    pub version: i64,
    pub status: RunStatus,
    pub input: Value,
    pub parameters: Value,
    pub priority: Priority,
    pub started_by: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub stages_total: usize,
    /// Stages in a final state (completed, failed, skipped, cancelled).
    pub stages_done: usize,
    /// Stages queued, running or waiting for a person now.
    pub current_stages: Vec<String>,
    /// Approvals this run waits for.
    pub awaiting_approvals: Vec<String>,
    /// The resource to read or subscribe to for updates.
    pub resource_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
    pub stages: Vec<StageRun>,
}

/// The resource URI of a run.
pub fn run_uri(id: &str) -> String {
    format!("coordinator://pipeline-runs/{id}")
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Pipeline id or name.
    pub pipeline: String,
    pub version: Option<i64>,
    pub input: Value,
    pub parameters: Value,
    pub priority: Priority,
    pub webhook_url: Option<String>,
}

impl PipelineService {
    /// Starts a run: records it and its stages, and dispatches the stages that depend on
    /// nothing, all in one transaction.
    pub fn run(&self, new: NewRun, by: &Actor) -> Result<Run, PipelineError> {
        let webhook_url = new
            .webhook_url
            .as_deref()
            .map(webhook::check_url)
            .transpose()
            .map_err(|m| invalid("webhook_url", m))?;
        if !new.input.is_object() && !new.input.is_null() {
            return Err(invalid("input", "expected a JSON object"));
        }
        if !new.parameters.is_object() && !new.parameters.is_null() {
            return Err(invalid("parameters", "expected a JSON object"));
        }
        let now = now_ms();
        let id = self.store().write(|tx| -> Result<String, PipelineError> {
            let p = self.pipeline_row(tx, &new.pipeline)?;
            if p.deleted_at.is_some() {
                return Err(PipelineError::Conflict(format!(
                    "pipeline {} was deleted; it cannot run",
                    p.id
                )));
            }
            let version = version_of(&p, new.version)?;
            let (dag, _) = self.dag(tx, &p.id, version)?;
            let id = format!("run_{}", uuid::Uuid::new_v4().simple());
            let obj = |v: &Value| {
                if v.is_null() {
                    "{}".to_string()
                } else {
                    v.to_string()
                }
            };
            sql::insert_run(
                tx,
                &RunRow {
                    id: id.clone(),
                    pipeline_id: p.id.clone(),
                    version,
                    status: RunStatus::Running,
                    input: obj(&new.input),
                    parameters: obj(&new.parameters),
                    priority: priority_rank(new.priority),
                    started_by: by.render(),
                    created_ms: now,
                    updated_ms: now,
                    finished_ms: None,
                    error: None,
                    webhook_state: webhook_url.as_ref().map(|_| WebhookState::Waiting),
                    webhook_url: webhook_url.clone(),
                    webhook_attempts: 0,
                    webhook_next_ms: None,
                    webhook_error: None,
                },
            )?;
            for (position, &i) in dag.order.iter().enumerate() {
                sql::insert_stage(
                    tx,
                    &StageRow {
                        run_id: id.clone(),
                        stage: dag.definition.stages[i].name.clone(),
                        position: position as i64,
                        status: StageStatus::Waiting,
                        task_id: None,
                        approval_id: None,
                        output: None,
                        error: None,
                        started_ms: None,
                        finished_ms: None,
                    },
                )?;
            }
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineRunStarted,
                    subject: id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"pipeline_id": p.id, "name": p.name, "version": version,
                                   "stages": dag.order.len(),
                                   "webhook": webhook_url.as_deref().map(webhook::masked)}),
                    critical: false,
                },
            )?;
            self.advance_in(tx, &id)?;
            Ok(id)
        })?;
        self.notify();
        self.get_run(&id)
    }

    /// A run with every stage, joined with its tasks' live state.
    pub fn get_run(&self, id: &str) -> Result<Run, PipelineError> {
        self.store().read(|tx| self.run_in(tx, id))
    }

    fn run_in(&self, tx: &Tx<'_>, id: &str) -> Result<Run, PipelineError> {
        let r = sql::get_run(tx, id)?.ok_or_else(|| PipelineError::NotFound {
            what: "pipeline run",
            id: id.to_string(),
        })?;
        let p = sql::get_pipeline(tx, &r.pipeline_id)?.ok_or_else(|| PipelineError::NotFound {
            what: "pipeline",
            id: r.pipeline_id.clone(),
        })?;
        let (dag, _) = self.dag(tx, &r.pipeline_id, r.version)?;
        let rows = sql::stages_of(tx, id)?;
        let mut stages = Vec::with_capacity(rows.len());
        let mut current = Vec::new();
        let mut awaiting = Vec::new();
        let mut done = 0;
        for row in rows {
            let Some(i) = dag.index(&row.stage) else {
                continue;
            };
            let def = &dag.definition.stages[i];
            let mut status = row.status;
            let task = match &row.task_id {
                Some(t) => task_sql::get(tx, t)?,
                None => None,
            };
            if status == StageStatus::Queued
                && let Some(t) = &task
                && matches!(t.status, TaskStatus::Leased | TaskStatus::Running)
            {
                status = StageStatus::Running;
            }
            if status.is_open() {
                if status != StageStatus::Waiting {
                    current.push(row.stage.clone());
                }
            } else {
                done += 1;
            }
            if status == StageStatus::AwaitingApproval
                && let Some(a) = &row.approval_id
            {
                awaiting.push(a.clone());
            }
            stages.push(StageRun {
                name: row.stage.clone(),
                stage_type: def.stage_type.clone(),
                required: def.required,
                approval: def.approval,
                status,
                depends_on: dag.upstream[i]
                    .iter()
                    .map(|&u| dag.definition.stages[u].name.clone())
                    .collect(),
                task_id: row.task_id.clone(),
                approval_id: row.approval_id.clone(),
                agent_id: task.as_ref().and_then(|t| t.last_agent_id.clone()),
                attempts: task.as_ref().map(|t| t.attempts),
                progress: task.as_ref().and_then(|t| t.progress),
                message: task.as_ref().and_then(|t| t.message.clone()),
                output: row
                    .output
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok()),
                error: row.error.clone().or_else(|| {
                    task.as_ref()
                        .filter(|_| status.is_open())
                        .and_then(|t| t.last_error.clone())
                }),
                started_at: row.started_ms.map(format_ms),
                finished_at: row.finished_ms.map(format_ms),
                duration_seconds: row
                    .started_ms
                    .zip(row.finished_ms)
                    .map(|(s, f)| (f - s) as f64 / 1000.0),
            });
        }
        let end = r.finished_ms.unwrap_or_else(now_ms);
        Ok(Run {
            resource_uri: run_uri(&r.id),
            status: r.status,
            input: serde_json::from_str(&r.input).unwrap_or(Value::Null),
            parameters: serde_json::from_str(&r.parameters).unwrap_or(Value::Null),
            priority: rank_priority(r.priority),
            created_at: format_ms(r.created_ms),
            updated_at: format_ms(r.updated_ms),
            finished_at: r.finished_ms.map(format_ms),
            duration_seconds: (end - r.created_ms) as f64 / 1000.0,
            stages_total: stages.len(),
            stages_done: done,
            current_stages: current,
            awaiting_approvals: awaiting,
            webhook: r.webhook_url.as_deref().map(|u| WebhookStatus {
                url: webhook::masked(u),
                state: r
                    .webhook_state
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                attempts: r.webhook_attempts,
                last_error: r.webhook_error.clone(),
            }),
            stages,
            id: r.id,
            pipeline_id: r.pipeline_id,
            pipeline_name: p.name,
            version: r.version,
            started_by: r.started_by,
            error: r.error,
        })
    }

    /// For each capability that unfinished task stages of this run need and no registered
    /// agent offers: the capability and those stages. Such stages wait in the queue until an
    /// agent with it registers.
    pub fn unserved(&self, run: &Run) -> Result<Vec<(String, Vec<String>)>, PipelineError> {
        let (dag, agents) = self.store().read(|tx| -> Result<_, PipelineError> {
            Ok((
                self.dag(tx, &run.pipeline_id, run.version)?.0,
                crate::store::agent::list_registered(tx)?,
            ))
        })?;
        let offered: std::collections::HashSet<String> = agents
            .iter()
            .flat_map(|a| serde_json::from_str::<Vec<String>>(&a.capabilities).unwrap_or_default())
            .collect();
        let mut missing: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for stage in run
            .stages
            .iter()
            .filter(|s| s.status.is_open() && !s.approval)
        {
            let capability = dag
                .index(&stage.name)
                .and_then(|i| dag.definition.stages[i].capability.clone());
            if let Some(cap) = capability
                && !offered.contains(&cap)
            {
                missing.entry(cap).or_default().push(stage.name.clone());
            }
        }
        Ok(missing.into_iter().collect())
    }

    /// The run's status and last change (cheap; for polling).
    pub fn stamp(&self, id: &str) -> Result<Option<(RunStatus, i64)>, PipelineError> {
        Ok(self.store().read(|tx| sql::run_stamp(tx, id))?)
    }

    /// Runs, newest first.
    pub fn list_runs(
        &self,
        pipeline: Option<&str>,
        status: Option<RunStatus>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Run>, Option<String>), PipelineError> {
        let before = cursor
            .map(|c| {
                c.split_once('|')
                    .and_then(|(ms, id)| ms.parse::<i64>().ok().map(|ms| (ms, id)))
                    .ok_or_else(|| {
                        invalid(
                            "cursor",
                            format!("expected the next_cursor of a previous page, got {c:?}"),
                        )
                    })
            })
            .transpose()?;
        self.store().read(|tx| {
            let pipeline_id = pipeline
                .map(|p| self.pipeline_row(tx, p).map(|p| p.id))
                .transpose()?;
            let mut rows = sql::list_runs(
                tx,
                pipeline_id.as_deref(),
                status,
                before,
                i64::from(limit) + 1,
            )?;
            let next = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                rows.last().map(|r| format!("{}|{}", r.created_ms, r.id))
            } else {
                None
            };
            let runs = rows
                .iter()
                .map(|r| self.run_in(tx, &r.id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((runs, next))
        })
    }

    /// Cancels a running run: its queued and running tasks are cancelled (a leaseholder's later
    /// report is refused), questions still open are withdrawn, waiting stages will not start.
    pub fn cancel_run(
        &self,
        id: &str,
        reason: Option<&str>,
        by: &Actor,
    ) -> Result<Run, PipelineError> {
        let now = now_ms();
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        self.store().write(|tx| -> Result<(), PipelineError> {
            let r = sql::get_run(tx, id)?.ok_or_else(|| PipelineError::NotFound {
                what: "pipeline run",
                id: id.to_string(),
            })?;
            if r.status != RunStatus::Running {
                return Err(PipelineError::Conflict(format!(
                    "run {id} already ended: {}; only running runs can be cancelled",
                    r.status
                )));
            }
            let why = match reason {
                Some(r) => format!("cancelled by {}: {r}", by.render()),
                None => format!("cancelled by {}", by.render()),
            };
            // The run ends first, so the task observer below finds it closed and moves nothing.
            sql::finish_run(tx, id, RunStatus::Cancelled, Some(&why), now)?;
            for s in sql::stages_of(tx, id)? {
                let status = s.status;
                if !status.is_open() {
                    continue;
                }
                if let Some(task) = &s.task_id
                    && let Some(t) = task_sql::get(tx, task)?
                    && !t.status.is_final()
                {
                    self.inner.tasks.cancel_in(tx, task, Some(&why), by)?;
                }
                if status == StageStatus::AwaitingApproval
                    && let Some(a) = &s.approval_id
                {
                    let verdict = Verdict {
                        state: State::Cancelled,
                        by: by.clone(),
                        via: Channel::Expiry,
                        reason: None,
                        cause: Some(format!("pipeline run {id} was cancelled")),
                        context: json!({"run_id": id}),
                    };
                    match self.inner.approvals.decide_in(tx, a, &verdict, None) {
                        Ok(_)
                        | Err(ApprovalError::AlreadyDecided { .. })
                        | Err(ApprovalError::Expired { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                sql::close_stage(
                    tx,
                    id,
                    &s.stage,
                    s.status,
                    StageStatus::Cancelled,
                    &why,
                    now,
                )?;
            }
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineRunFinished,
                    subject: id.to_string(),
                    outcome: Outcome::Ok,
                    detail: json!({"status": "cancelled", "reason": reason}),
                    critical: false,
                },
            )?;
            Ok(())
        })?;
        self.notify();
        self.get_run(id)
    }
}

fn priority_rank(p: Priority) -> i64 {
    match p {
        Priority::Urgent => 3,
        Priority::High => 2,
        Priority::Normal => 1,
        Priority::Low => 0,
    }
}

pub(super) fn rank_priority(r: i64) -> Priority {
    match r {
        3 => Priority::Urgent,
        2 => Priority::High,
        0 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// "3/6 stages done; now: analysis", for progress messages.
pub fn describe_progress(run: &Run) -> String {
    let current = if run.current_stages.is_empty() {
        String::new()
    } else {
        format!("; now: {}", run.current_stages.join(", "))
    };
    format!(
        "{}/{} stages done{current}",
        run.stages_done, run.stages_total
    )
}
