//! Pipelines: versioned DAG definitions, and runs that dispatch each stage as a task in the
//! queue (or as a question to a person, for approval stages) once the stages it depends on are
//! done. A run advances inside the same SQLite transaction as the task report or decision that
//! moved it, so a killed coordinator loses nothing and no stage runs twice.
//!
//! What lives here: `dag.rs` (definitions as written, their validation and templates),
//! `definition.rs` (creating, reading, listing and deleting versioned pipelines), `run.rs`
//! (starting, reading and cancelling runs), `engine.rs` (one pass over a run: collecting
//! finished tasks and decisions, dispatching what is ready, the tick and the task observer),
//! `gate.rs` (what a person approves at an approval stage), `webhook.rs` (completion webhooks)
//! and `status.rs` (the closed sets stored with a run, a leaf the store reads).
//!
//! It may depend on `task` (stages run as tasks), `approval` (approval stages), `agent`,
//! `audit` and `store` (its own tables through `store::pipeline`, read and written inside a
//! `store::Tx`). It never sees rmcp or SQL: the tool handlers are in `server/pipelines.rs`.

pub mod dag;
mod definition;
mod engine;
mod gate;
mod periodic;
mod run;
pub mod status;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::approval::{ApprovalError, ApprovalService};
use crate::audit::NewEvent;
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::limits;
use crate::store::{Store, StoreError, Tx};
use crate::task::{TaskError, TaskService};
pub use dag::{Dag, Definition, Dependency, StageDef, Template};
pub use definition::{NewPipeline, Pipeline, PipelineSummary};
pub use engine::Advanced;
pub use run::{NewRun, Run, StageRun, WebhookStatus, describe_progress, run_uri};
use serde_json::json;
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

impl IntoFault for PipelineError {
    fn into_fault(self) -> Fault {
        match self {
            PipelineError::Store(e) | PipelineError::Task(TaskError::Store(e)) => Fault::Store(e),
            PipelineError::Task(e) => Fault::new(ErrorCode::Conflict, e.to_string()),
            PipelineError::Approval(ApprovalError::Store(e)) => Fault::Store(e),
            PipelineError::Approval(e) => Fault::new(ErrorCode::Conflict, e.to_string()),
            PipelineError::NotFound { what, ref id } => {
                Fault::new(ErrorCode::NotFound, self.to_string())
                    .with_details(json!({"what": what, "id": id}))
            }
            PipelineError::Conflict(m) => Fault::new(ErrorCode::Conflict, m),
            PipelineError::Invalid { field, message } => Fault::invalid(field, message),
        }
    }
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
            .set_observer(Arc::new(engine::Observer(Arc::downgrade(&service.inner))));
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
}
