//! The durable task queue: submit (with idempotency keys and `not_before`), atomic claims in
//! dispatch order (aimed-at-me first, then priority, then age; least-loaded capable agent
//! first), leases, progress and results from the leaseholder only, retries with exponential
//! backoff and jitter, a dead-letter state, cancellation, stats, purging, and the sweeper that
//! returns expired and orphaned leases to the queue.
//!
//! What lives here: this file (the config, the task as tools show it, errors, the observer
//! pipelines install, the service), `submit.rs`, `claim.rs` (claims and the long poll's wait),
//! `report.rs` (the leaseholder's reports, retries, cancel and requeue), `read.rs` (get, list,
//! stats), `sweep.rs` (expired and orphaned leases, purging) and `status.rs` (the task
//! statuses, a leaf the store reads).
//!
//! It may depend on `agent` (tokens, capabilities, load), `audit` and `store` (its table
//! through `store::task`, read and written inside a `store::Tx`). It knows nothing of
//! pipelines (they watch it through [`TaskObserver`]), rmcp or SQL.

mod claim;
mod periodic;
mod read;
mod report;
pub mod status;
mod submit;
mod sweep;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{AgentError, AgentService};
use crate::audit::chain::format_ms;
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::limits;
use crate::macros::string_enum;
use crate::store::task::TaskRow;
use crate::store::{Store, StoreError, Tx};
use serde_json::json;
pub use status::TaskStatus;

/// How often a long-polling claim checks whether the database changed.
pub const POLL: Duration = Duration::from_millis(10);
/// How long a long-polling claim waits at most before it claims again anyway.
pub const RECHECK: Duration = Duration::from_secs(1);
/// The longest `wait_seconds` a claim may ask for.
pub const MAX_WAIT_SECONDS: f64 = limits::CLAIM_WAIT_SECONDS.max;

/// `[tasks]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Lease length when a task names no timeout, in seconds (default 300).
    #[schemars(range(min = 1, max = limits::TASK_TIMEOUT_SECONDS.max))]
    pub default_timeout_seconds: u64,
    /// Retries when a task names none (default 3).
    #[schemars(range(min = limits::TASK_MAX_RETRIES.min, max = limits::TASK_MAX_RETRIES.max))]
    pub default_max_retries: u32,
    /// First retry delay in milliseconds; doubles per attempt, with ±50% jitter (default 1000).
    #[schemars(range(min = limits::TASK_BACKOFF_BASE_MS.min, max = limits::TASK_BACKOFF_BASE_MS.max))]
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds, at least `backoff_base_ms` (default 300000).
    #[schemars(range(min = limits::TASK_BACKOFF_MAX_MS.min, max = limits::TASK_BACKOFF_MAX_MS.max))]
    pub backoff_max_ms: u64,
}

impl TasksConfig {
    pub fn validate(&self) -> Result<(), String> {
        // Whole seconds here; a task may ask for a fraction.
        limits::TASK_TIMEOUT_SECONDS.check(
            "tasks.default_timeout_seconds",
            self.default_timeout_seconds as f64,
        )?;
        limits::TASK_MAX_RETRIES.check("tasks.default_max_retries", self.default_max_retries)?;
        limits::TASK_BACKOFF_BASE_MS.check("tasks.backoff_base_ms", self.backoff_base_ms)?;
        limits::TASK_BACKOFF_MAX_MS.check("tasks.backoff_max_ms", self.backoff_max_ms)?;
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(format!(
                "tasks.backoff_max_ms: expected at least tasks.backoff_base_ms ({}), got {}",
                self.backoff_base_ms, self.backoff_max_ms
            ));
        }
        Ok(())
    }
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            default_timeout_seconds: 300,
            default_max_retries: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
        }
    }
}

string_enum!(
    /// How urgent a task is: `urgent` > `high` > `normal` > `low`.
    Priority {
        /// Before everything else.
        Urgent => "urgent",
        /// Before normal and low.
        High => "high",
        /// The default.
        Normal => "normal",
        /// After everything else.
        Low => "low",
    }
);

impl Priority {
    fn rank(self) -> i64 {
        match self {
            Priority::Urgent => 3,
            Priority::High => 2,
            Priority::Normal => 1,
            Priority::Low => 0,
        }
    }
    fn from_rank(r: i64) -> Self {
        match r {
            3 => Priority::Urgent,
            2 => Priority::High,
            0 => Priority::Low,
            _ => Priority::Normal,
        }
    }
}

/// A task as tools show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Task {
    pub id: String,
    /// The tool or command the agent should run.
    pub kind: String,
    pub params: Value,
    /// Capabilities the claiming agent must all have.
    pub capabilities: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_agent_id: Option<String>,
    pub priority: Priority,
    pub status: TaskStatus,
    pub timeout_seconds: f64,
    pub max_retries: i64,
    /// Claims so far (the current one included).
    pub attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Not claimable before this time (RFC 3339): `not_before`, or the retry backoff.
    pub not_before: String,
    pub created_at: String,
    pub updated_at: String,
    pub submitted_by: String,
    /// The agent holding the lease now (while `leased` or `running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leased_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// The agent that last held the lease (kept once the task finished).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// 0..1, from the agent's reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl From<TaskRow> for Task {
    fn from(r: TaskRow) -> Self {
        Task {
            params: serde_json::from_str(&r.params).unwrap_or(Value::Null),
            capabilities: serde_json::from_str(&r.capabilities).unwrap_or_default(),
            priority: Priority::from_rank(r.priority),
            status: r.status,
            timeout_seconds: r.timeout_ms as f64 / 1000.0,
            not_before: format_ms(r.not_before_ms),
            created_at: format_ms(r.created_ms),
            updated_at: format_ms(r.updated_ms),
            lease_expires_at: r.lease_expires_ms.map(format_ms),
            result: r
                .result
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            finished_at: r.finished_ms.map(format_ms),
            id: r.id,
            kind: r.kind,
            target_agent_id: r.target_agent_id,
            max_retries: r.max_retries,
            attempts: r.attempts,
            idempotency_key: r.idempotency_key,
            submitted_by: r.submitted_by,
            leased_by: r.leased_by,
            agent_id: r.last_agent_id,
            progress: r.progress,
            message: r.message,
            last_error: r.last_error,
        }
    }
}

/// A task to submit.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub kind: String,
    pub params: Value,
    pub capabilities: Vec<String>,
    pub target_agent_id: Option<String>,
    pub priority: Priority,
    pub timeout_seconds: Option<f64>,
    pub max_retries: Option<u32>,
    pub idempotency_key: Option<String>,
    /// Unix milliseconds.
    pub not_before_ms: Option<i64>,
}

/// An agent's report on its task: exactly one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Still working: progress (0..1) and/or what it is doing now; renews the lease.
    Progress {
        progress: Option<f64>,
        message: Option<String>,
    },
    /// Done: completes the task with this result, whatever it is (`null` included).
    Result(Value),
    /// This attempt failed; `retryable` sends it back to the queue while retries last.
    Error { message: String, retryable: bool },
}

/// Why a claim returned no task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoTask {
    /// Nothing queued that this agent may run.
    QueueEmpty,
    /// The agent reported a load above the configured ceiling.
    LoadAboveCeiling,
    /// The agent said it is draining.
    Draining,
}

/// Queue statistics.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueStats {
    /// Tasks per status.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Queued tasks per priority.
    pub queued_by_priority: std::collections::BTreeMap<String, i64>,
    /// Age of the oldest queued task, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_queued_age_seconds: Option<f64>,
    /// Tasks completed in the last minute, per second.
    pub completed_per_second_last_minute: f64,
    /// Tasks that reached a final state in the last minute, by state.
    pub finished_last_minute: std::collections::BTreeMap<String, i64>,
    /// Tasks in the dead-letter state.
    pub dead_letters: i64,
}

/// Errors of the task queue.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("task {0} not found")]
    NotFound(String),
    /// The reporting agent does not hold the task's lease.
    #[error("{0}")]
    NotLeaseholder(String),
    /// The task is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl IntoFault for TaskError {
    fn into_fault(self) -> Fault {
        match self {
            TaskError::Agent(e) => e.into_fault(),
            TaskError::Store(e) => Fault::Store(e),
            TaskError::NotFound(id) => {
                Fault::new(ErrorCode::NotFound, format!("task {id} not found"))
                    .with_details(json!({"task_id": id}))
            }
            TaskError::NotLeaseholder(m) => Fault::new(ErrorCode::NotLeaseholder, m),
            TaskError::Conflict(m) => Fault::new(ErrorCode::Conflict, m),
            TaskError::Invalid { field, message } => Fault::invalid(field, message),
        }
    }
}

impl TaskError {
    /// Whether the database was busy (another process held the write lock, or wrote first).
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            TaskError::Store(StoreError::Busy { .. })
                | TaskError::Agent(AgentError::Store(StoreError::Busy { .. }))
        )
    }
}

/// Told, inside the same write transaction, when a task reaches a final state (completed,
/// failed, dead or cancelled): how pipelines advance the moment a stage's task finishes.
pub trait TaskObserver: Send + Sync {
    fn task_finished(
        &self,
        tx: &Tx<'_>,
        task_id: &str,
        status: TaskStatus,
    ) -> Result<(), StoreError>;
}

/// The queue on one database.
#[derive(Clone)]
pub struct TaskService {
    agents: AgentService,
    config: TasksConfig,
    /// Set once at startup; shared by every clone.
    observer: Arc<OnceLock<Arc<dyn TaskObserver>>>,
}

fn event(actor: Actor, action: Action, task_id: &str, detail: Value) -> NewEvent {
    NewEvent {
        actor,
        action,
        subject: task_id.to_string(),
        outcome: Outcome::Ok,
        detail,
        critical: false,
    }
}

impl TaskService {
    pub fn new(agents: AgentService, config: TasksConfig) -> Self {
        TaskService {
            agents,
            config,
            observer: Arc::new(OnceLock::new()),
        }
    }

    /// Installs the observer told about finished tasks. Only the first call has an effect.
    pub fn set_observer(&self, observer: Arc<dyn TaskObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer, in the same transaction, that a task reached a final state.
    fn finished(&self, tx: &Tx<'_>, task_id: &str, status: TaskStatus) -> Result<(), StoreError> {
        match self.observer.get() {
            Some(o) => o.task_finished(tx, task_id, status),
            None => Ok(()),
        }
    }

    pub fn agents(&self) -> &AgentService {
        &self.agents
    }

    fn store(&self) -> &Store {
        self.agents.audit().store()
    }

    fn append(&self, tx: &Tx<'_>, e: NewEvent) -> Result<(), StoreError> {
        self.agents.audit().append_in(tx, &e).map(|_| ())
    }
}
