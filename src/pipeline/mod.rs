//! Pipelines: versioned DAG definitions, and runs that dispatch each stage as a task in the
//! queue (or as a question to a person, for approval stages) once the stages it depends on are
//! done. A run advances inside the same SQLite transaction as the task report or decision that
//! moved it, so a killed coordinator loses nothing and no stage runs twice.

pub mod dag;
mod gate;
pub mod status;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::now_ms;
use crate::approval::{self, Approval, ApprovalError, ApprovalService, Channel, State, Verdict};
use crate::audit::chain::{format_ms, now_ts};
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::limits;
use crate::store::budget::{self, Budget};
use crate::store::pipeline::{self as sql, PipelineRow, RunRow, StageRow, VersionRow};
use crate::store::task as task_sql;
use crate::store::{Store, StoreError, Tx};
use crate::task::{NewTask, Priority, TaskError, TaskObserver, TaskService, TaskStatus};
pub use dag::{Dag, Definition, Dependency, StageDef, Template};
pub use status::{RunStatus, StageStatus, WebhookState};

/// `[pipelines]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelinesConfig {
    /// Delivery attempts of a run's completion webhook before giving up (default 5).
    #[schemars(range(min = limits::WEBHOOK_MAX_ATTEMPTS.min, max = limits::WEBHOOK_MAX_ATTEMPTS.max))]
    pub webhook_max_attempts: u32,
    /// Delay before the second attempt in milliseconds; doubles per attempt (default 1000).
    #[schemars(range(min = limits::WEBHOOK_BACKOFF_MS.min, max = limits::WEBHOOK_BACKOFF_MS.max))]
    pub webhook_backoff_ms: u64,
    /// How long one delivery attempt may take, in seconds (default 10).
    #[schemars(range(
        min = limits::WEBHOOK_TIMEOUT_SECONDS.min,
        max = limits::WEBHOOK_TIMEOUT_SECONDS.max
    ))]
    pub webhook_timeout_seconds: u64,
    /// While a waiting `pipeline_run` sees no stage finish, it sends a progress notification
    /// this often (seconds, default 10), so clients that time out without progress keep
    /// waiting.
    #[schemars(range(
        min = limits::PROGRESS_KEEPALIVE_SECONDS.min,
        max = limits::PROGRESS_KEEPALIVE_SECONDS.max
    ))]
    pub progress_keepalive_seconds: u64,
}

impl PipelinesConfig {
    pub fn validate(&self) -> Result<(), String> {
        limits::WEBHOOK_MAX_ATTEMPTS
            .check("pipelines.webhook_max_attempts", self.webhook_max_attempts)?;
        limits::WEBHOOK_BACKOFF_MS
            .check("pipelines.webhook_backoff_ms", self.webhook_backoff_ms)?;
        limits::WEBHOOK_TIMEOUT_SECONDS.check(
            "pipelines.webhook_timeout_seconds",
            self.webhook_timeout_seconds,
        )?;
        limits::PROGRESS_KEEPALIVE_SECONDS.check(
            "pipelines.progress_keepalive_seconds",
            self.progress_keepalive_seconds,
        )
    }
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        PipelinesConfig {
            webhook_max_attempts: 5,
            webhook_backoff_ms: 1_000,
            webhook_timeout_seconds: 10,
            progress_keepalive_seconds: 10,
        }
    }
}

/// A pipeline definition at one version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    /// The version shown here.
    pub version: i64,
    /// The newest version (runs start from it unless told otherwise).
    pub latest_version: i64,
    pub description: String,
    pub stages: Vec<StageDef>,
    pub dependencies: Vec<Dependency>,
    /// Stage names in the order runs start them.
    pub order: Vec<String>,
    pub created_at: String,
    /// When this version was created, and by whom.
    pub version_created_at: String,
    pub version_created_by: String,
    /// Set when the pipeline was deleted (its versions and runs are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// Runs of this pipeline running now.
    pub active_runs: i64,
}

/// One line of `pipeline_list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PipelineSummary {
    pub id: String,
    pub name: String,
    pub latest_version: i64,
    pub description: String,
    pub stage_count: usize,
    pub updated_at: String,
}

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

/// A new pipeline, or a new version of one.
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub name: String,
    pub description: String,
    pub definition: Definition,
    /// Adds a version to this pipeline instead of creating one.
    pub pipeline_id: Option<String>,
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

/// Errors of pipelines.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The state does not allow this (a deleted pipeline, a run already finished).
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl From<dag::Invalid> for PipelineError {
    fn from(e: dag::Invalid) -> Self {
        PipelineError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> PipelineError {
    PipelineError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Pipelines on one database. Cheap to clone.
#[derive(Clone)]
pub struct PipelineService {
    inner: Arc<Inner>,
}

struct Inner {
    tasks: TaskService,
    approvals: ApprovalService,
    config: PipelinesConfig,
    /// Validated definitions by (pipeline id, version): versions never change once written.
    dags: Mutex<HashMap<(String, i64), Arc<Dag>>>,
    /// Bumped after every change to a run made by this process; waiting calls and
    /// subscriptions watch it (and poll the database for changes made by other processes).
    changed: tokio::sync::watch::Sender<u64>,
}

/// A stage's status, output and error during one pass over its run.
type StageState = (StageStatus, Option<String>, Option<String>);

/// What one pass over a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Advanced {
    /// Stages that moved.
    pub moved: usize,
    /// The run ended in this pass.
    pub finished: bool,
}

impl PipelineService {
    pub fn new(tasks: TaskService, approvals: ApprovalService, config: PipelinesConfig) -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        let service = PipelineService {
            inner: Arc::new(Inner {
                tasks,
                approvals,
                config,
                dags: Mutex::new(HashMap::new()),
                changed,
            }),
        };
        service
            .inner
            .tasks
            .set_observer(Arc::new(Observer(Arc::downgrade(&service.inner))));
        service
    }

    fn store(&self) -> &Store {
        self.inner.tasks.agents().audit().store()
    }

    fn append(&self, tx: &Tx<'_>, e: NewEvent) -> Result<(), StoreError> {
        self.inner
            .tasks
            .agents()
            .audit()
            .append_in(tx, &e)
            .map(|_| ())
    }

    pub fn config(&self) -> &PipelinesConfig {
        &self.inner.config
    }

    /// A receiver that sees a new value after every run change made by this process.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    // ---- definitions ----

    /// Creates a pipeline, or (with `pipeline_id`) a new version of one. An identical
    /// definition and description adds no version: the current one is returned (`created`
    /// false).
    pub fn create(&self, new: NewPipeline, by: &Actor) -> Result<(Pipeline, bool), PipelineError> {
        let name = new.name.trim().to_string();
        if name.is_empty()
            || name.len() > 100
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "name",
                format!("expected 1 to 100 letters, digits, '-', '_' or '.', got {name:?}"),
            ));
        }
        if new.description.chars().count() > limits::SUMMARY_CHARS {
            return Err(invalid(
                "description",
                format!("at most {} characters", limits::SUMMARY_CHARS),
            ));
        }
        let dag = dag::validate(new.definition)?;
        let definition =
            serde_json::to_string(&dag.definition).map_err(|e| invalid("stages", e.to_string()))?;
        let at = now_ts();
        let (id, created) = self.store().write(|tx| -> Result<_, PipelineError> {
            let existing = match &new.pipeline_id {
                Some(id) => {
                    let p = sql::get_pipeline(tx, id)?.ok_or_else(|| PipelineError::NotFound {
                        what: "pipeline",
                        id: id.clone(),
                    })?;
                    if p.deleted_at.is_some() {
                        return Err(PipelineError::Conflict(format!(
                            "pipeline {id} was deleted; create a new one instead"
                        )));
                    }
                    if p.name != name {
                        return Err(invalid(
                            "name",
                            format!(
                                "pipeline {id} is named {:?}; a new version keeps the name",
                                p.name
                            ),
                        ));
                    }
                    Some(p)
                }
                None => {
                    if let Some(p) = sql::pipeline_by_name(tx, &name)? {
                        return Err(PipelineError::Conflict(format!(
                            "a pipeline named {name:?} already exists ({}, version {}); pass pipeline_id {} to create a new version of it, or choose another name",
                            p.id, p.latest_version, p.id
                        )));
                    }
                    None
                }
            };
            let (id, version) = match existing {
                Some(p) => {
                    let latest = sql::get_version(tx, &p.id, p.latest_version)?;
                    if let Some(v) = latest
                        && v.definition == definition
                        && v.description == new.description
                    {
                        return Ok((p.id, false));
                    }
                    sql::set_latest_version(tx, &p.id, p.latest_version + 1, &at)?;
                    (p.id, p.latest_version + 1)
                }
                None => {
                    let id = format!("pip_{}", uuid::Uuid::new_v4().simple());
                    sql::insert_pipeline(
                        tx,
                        &PipelineRow {
                            id: id.clone(),
                            name: name.clone(),
                            latest_version: 1,
                            created_at: at.clone(),
                            updated_at: at.clone(),
                            created_by: by.render(),
                            deleted_at: None,
                        },
                    )?;
                    (id, 1)
                }
            };
            sql::insert_version(
                tx,
                &VersionRow {
                    pipeline_id: id.clone(),
                    version,
                    description: new.description.clone(),
                    definition: definition.clone(),
                    created_at: at.clone(),
                    created_by: by.render(),
                },
            )?;
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineCreated,
                    subject: id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"name": name, "version": version,
                                   "stages": dag.definition.stages.len()}),
                    critical: false,
                },
            )?;
            Ok((id, true))
        })?;
        Ok((self.get(&id, None)?, created))
    }

    fn pipeline_row(&self, conn: &Tx<'_>, id_or_name: &str) -> Result<PipelineRow, PipelineError> {
        let found = match sql::get_pipeline(conn, id_or_name)? {
            Some(p) => Some(p),
            None => sql::pipeline_by_name(conn, id_or_name)?,
        };
        found.ok_or_else(|| PipelineError::NotFound {
            what: "pipeline",
            id: id_or_name.to_string(),
        })
    }

    /// A validated definition, from the cache or the database.
    fn dag(
        &self,
        conn: &Tx<'_>,
        pipeline_id: &str,
        version: i64,
    ) -> Result<(Arc<Dag>, VersionRow), PipelineError> {
        let v = sql::get_version(conn, pipeline_id, version)?.ok_or_else(|| {
            PipelineError::NotFound {
                what: "pipeline version",
                id: format!("{pipeline_id} v{version}"),
            }
        })?;
        let key = (pipeline_id.to_string(), version);
        if let Some(d) = self
            .inner
            .dags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((d.clone(), v));
        }
        let def: Definition = serde_json::from_str(&v.definition).map_err(|e| {
            PipelineError::Conflict(format!(
                "stored definition of {pipeline_id} v{version} is unreadable: {e}"
            ))
        })?;
        let dag = Arc::new(dag::validate(def)?);
        self.inner
            .dags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, dag.clone());
        Ok((dag, v))
    }

    /// A pipeline by id or name, at `version` (default: the latest).
    pub fn get(&self, id_or_name: &str, version: Option<i64>) -> Result<Pipeline, PipelineError> {
        self.store().read(|tx| self.get_in(tx, id_or_name, version))
    }

    fn get_in(
        &self,
        conn: &Tx<'_>,
        id_or_name: &str,
        version: Option<i64>,
    ) -> Result<Pipeline, PipelineError> {
        let p = self.pipeline_row(conn, id_or_name)?;
        let version = version.unwrap_or(p.latest_version);
        if version < 1 || version > p.latest_version {
            return Err(invalid(
                "version",
                format!(
                    "pipeline {} has versions 1 to {}, not {version}",
                    p.id, p.latest_version
                ),
            ));
        }
        let (dag, v) = self.dag(conn, &p.id, version)?;
        let active_runs = sql::active_runs(conn, &p.id)?;
        Ok(Pipeline {
            order: dag
                .order
                .iter()
                .map(|&i| dag.definition.stages[i].name.clone())
                .collect(),
            stages: dag.definition.stages.clone(),
            dependencies: dag.definition.dependencies.clone(),
            id: p.id,
            name: p.name,
            version,
            latest_version: p.latest_version,
            description: v.description,
            created_at: p.created_at,
            version_created_at: v.created_at,
            version_created_by: v.created_by,
            deleted_at: p.deleted_at,
            active_runs,
        })
    }

    /// Live pipelines by name; `cursor` (a name) continues a page.
    pub fn list(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<PipelineSummary>, Option<String>), PipelineError> {
        self.store().read(|tx| self.list_in(tx, limit, cursor))
    }

    fn list_in(
        &self,
        conn: &Tx<'_>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<PipelineSummary>, Option<String>), PipelineError> {
        let mut rows = sql::list_pipelines(conn, cursor, i64::from(limit) + 1)?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|p| p.name.clone())
        } else {
            None
        };
        let mut out = Vec::with_capacity(rows.len());
        for p in rows {
            let (dag, v) = self.dag(conn, &p.id, p.latest_version)?;
            out.push(PipelineSummary {
                stage_count: dag.definition.stages.len(),
                description: v.description,
                id: p.id,
                name: p.name,
                latest_version: p.latest_version,
                updated_at: p.updated_at,
            });
        }
        Ok((out, next))
    }

    /// Deletes a pipeline (refused while one of its runs is running). Versions and runs stay
    /// readable; the name becomes free.
    pub fn delete(&self, id_or_name: &str, by: &Actor) -> Result<Pipeline, PipelineError> {
        let shown = self.get(id_or_name, None)?;
        let at = now_ts();
        self.store().write(|tx| -> Result<(), PipelineError> {
            let p = self.pipeline_row(tx, &shown.id)?;
            if p.deleted_at.is_some() {
                return Err(PipelineError::Conflict(format!(
                    "pipeline {} was already deleted at {}",
                    p.id,
                    p.deleted_at.unwrap_or_default()
                )));
            }
            let active = sql::active_runs(tx, &p.id)?;
            if active > 0 {
                return Err(PipelineError::Conflict(format!(
                    "pipeline {} has {active} run(s) still running; cancel them with pipeline_run_cancel or wait for them to finish",
                    p.id
                )));
            }
            sql::mark_deleted(tx, &p.id, &at)?;
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineDeleted,
                    subject: p.id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"name": p.name, "versions": p.latest_version}),
                    critical: false,
                },
            )?;
            Ok(())
        })?;
        self.get(&shown.id, None)
    }

    // ---- runs ----

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
            let version = new.version.unwrap_or(p.latest_version);
            if version < 1 || version > p.latest_version {
                return Err(invalid(
                    "version",
                    format!(
                        "pipeline {} has versions 1 to {}, not {version}",
                        p.id, p.latest_version
                    ),
                ));
            }
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

    fn run_in(&self, conn: &Tx<'_>, id: &str) -> Result<Run, PipelineError> {
        let r = sql::get_run(conn, id)?.ok_or_else(|| PipelineError::NotFound {
            what: "pipeline run",
            id: id.to_string(),
        })?;
        let p =
            sql::get_pipeline(conn, &r.pipeline_id)?.ok_or_else(|| PipelineError::NotFound {
                what: "pipeline",
                id: r.pipeline_id.clone(),
            })?;
        let (dag, _) = self.dag(conn, &r.pipeline_id, r.version)?;
        let rows = sql::stages_of(conn, id)?;
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
                Some(t) => task_sql::get(conn, t)?,
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
            let approval = self.inner.approvals.open_in(tx, &gate, &Actor::system())?;
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

    /// Delivers due completion webhooks (one attempt each), recording the outcome. Returns
    /// how many were attempted.
    pub fn deliver_webhooks(&self) -> Result<usize, PipelineError> {
        let now = now_ms();
        let timeout = Duration::from_secs(self.inner.config.webhook_timeout_seconds.max(1));
        let due = self.store().read(|tx| sql::due_webhooks(tx, now, 16))?;
        let mut attempted = 0;
        for r in due {
            let Some(url) = r.webhook_url.clone() else {
                continue;
            };
            let seen = r.webhook_next_ms.unwrap_or(now);
            // Hold the attempt for longer than it can take, so no other process repeats it.
            let hold = now + timeout.as_millis() as i64 * 2 + 1_000;
            let claimed = self
                .store()
                .write(|tx| sql::claim_webhook(tx, &r.id, seen, hold))?;
            if !claimed {
                continue;
            }
            attempted += 1;
            // From here on the attempt is taken and (below) made, so its reads and its outcome
            // wait for the lock like a call does: skipping them as a busy background tick may
            // would leave the attempt counted but unrecorded, held back for minutes.
            budget::sync_scope(Budget::for_call(), || self.deliver_one(&r, &url, timeout))?;
            self.notify();
        }
        Ok(attempted)
    }

    /// Makes one claimed delivery attempt of `r`'s webhook and records its outcome.
    fn deliver_one(&self, r: &RunRow, url: &str, timeout: Duration) -> Result<(), PipelineError> {
        let attempt = r.webhook_attempts + 1;
        let run = self.get_run(&r.id)?;
        let body = json!({"event": "pipeline_run.finished", "attempt": attempt, "run": run});
        let result = webhook::post(url, &body, &format!("{}:{attempt}", r.id), timeout);
        let max = i64::from(self.inner.config.webhook_max_attempts.max(1));
        self.store().write(|tx| -> Result<(), PipelineError> {
            let (state, next, error) = match &result {
                Ok(_) => (WebhookState::Delivered, None, None),
                Err(e) if attempt >= max => (WebhookState::Failed, None, Some(e.clone())),
                Err(e) => {
                    let delay = self
                        .inner
                        .config
                        .webhook_backoff_ms
                        .saturating_mul(1u64 << (attempt - 1).clamp(0, 20) as u32);
                    (
                        WebhookState::Pending,
                        Some(now_ms() + delay as i64),
                        Some(e.clone()),
                    )
                }
            };
            sql::webhook_outcome(tx, &r.id, state, next, error.as_deref())?;
            if state != WebhookState::Pending {
                self.append(
                    tx,
                    NewEvent {
                        actor: Actor::system(),
                        action: Action::PipelineWebhook,
                        subject: r.id.clone(),
                        outcome: if state == WebhookState::Delivered {
                            Outcome::Ok
                        } else {
                            Outcome::Error
                        },
                        detail: json!({"state": state, "attempts": attempt,
                                   "url": webhook::masked(url), "error": error}),
                        critical: false,
                    },
                )?;
            }
            Ok(())
        })
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

fn rank_priority(r: i64) -> Priority {
    match r {
        3 => Priority::Urgent,
        2 => Priority::High,
        0 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// The task queue's observer: when a pipeline stage's task finishes, the run advances in the
/// same transaction. A failure here is logged and rolled back to a savepoint, never allowed to
/// fail the agent's report; the tick retries the run.
struct Observer(std::sync::Weak<Inner>);

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
