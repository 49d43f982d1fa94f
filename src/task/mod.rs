//! The durable task queue: submit (with idempotency keys and `not_before`), atomic claims in
//! dispatch order (aimed-at-me first, then priority, then age; least-loaded capable agent
//! first), leases, progress and results from the leaseholder only, retries with exponential
//! backoff and jitter, a dead-letter state, cancellation, stats, purging, and the sweeper that
//! returns expired and orphaned leases to the queue.

pub mod status;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::agent::{AgentError, AgentService, AgentStatus, Health, normalize_capabilities, now_ms};
use crate::audit::chain::format_ms;
use crate::audit::{Action, Actor, ActorKind, NewEvent, Outcome};
use crate::limits;
use crate::macros::string_enum;
use crate::store::agent as agent_sql;
use crate::store::task::{self as sql, TaskRow};
use crate::store::{Store, StoreError, Tx};
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

    /// Leases the best task this agent may run, atomically (one write transaction), or says
    /// why there is none.
    pub fn claim(&self, token: &str) -> Result<Result<Task, NoTask>, TaskError> {
        self.claim_with_load(token, None)
    }

    /// [`claim`](Self::claim), first recording `load`, the agent's load right now, so dispatch
    /// does not decide on the load of its last heartbeat.
    pub fn claim_with_load(
        &self,
        token: &str,
        load: Option<f64>,
    ) -> Result<Result<Task, NoTask>, TaskError> {
        Ok(self
            .claim_many(token, load, 1)?
            .map(|mut tasks| tasks.remove(0)))
    }

    /// Leases up to `max` tasks in dispatch order in one transaction (a worker with spare
    /// slots, or a batch consumer). Never returns an empty list: no task is `Err(NoTask)`.
    pub fn claim_many(
        &self,
        token: &str,
        load: Option<f64>,
        max: usize,
    ) -> Result<Result<Vec<Task>, NoTask>, TaskError> {
        if let Some(l) = load
            && (!(0.0..=1.0).contains(&l) || l.is_nan())
        {
            return Err(TaskError::Invalid {
                field: "load",
                message: format!("expected 0 to 1, got {l}"),
            });
        }
        let now = now_ms();
        let cfg = self.agents.config().clone();
        // Lazily: a claim that finds nothing (an idle worker polling) writes nothing, so it
        // neither waits for nor blocks other writers and adds nothing to the WAL.
        self.store().write_lazily(
            |tx| {
                let mut me = self.agents.authenticate(tx, token)?;
                if let Some(l) = load
                    && l != me.load
                {
                    agent_sql::set_load(tx, &me.id, l)?;
                    me.load = l;
                }
                if me.status == AgentStatus::Draining {
                    return Ok(Err(NoTask::Draining));
                }
                if me.load > cfg.load_ceiling {
                    return Ok(Err(NoTask::LoadAboveCeiling));
                }
                // Untargeted work goes first to the least-loaded capable agent: a task that a
                // less-loaded, active agent could run is skipped until it has waited long enough.
                let lighter: Vec<Vec<String>> = agent_sql::list_registered(tx)?
                    .into_iter()
                    .filter(|a| {
                        a.id != me.id
                            && a.load < me.load
                            && a.load <= cfg.load_ceiling
                            && a.status != AgentStatus::Draining
                            && self.agents.health_at(a.last_heartbeat_ms, now) == Health::Active
                    })
                    .map(|a| serde_json::from_str(&a.capabilities).unwrap_or_default())
                    .collect();
                let actor = Actor::new(ActorKind::Agent, me.id.clone());
                let max = max.max(1);
                let mut leased = Vec::new();
                let mut lease = |mut task: TaskRow| -> Result<bool, TaskError> {
                    let expires = now + task.timeout_ms;
                    if !sql::lease(tx, &task.id, &me.id, now, expires)? {
                        return Ok(false);
                    }
                    self.append(
                        tx,
                        event(
                            actor.clone(),
                            Action::TaskLeased,
                            &task.id,
                            json!({"attempt": task.attempts + 1, "lease_expires_ms": expires}),
                        ),
                    )?;
                    // What `sql::lease` wrote, without reading the row back.
                    task.status = TaskStatus::Leased;
                    task.leased_by = Some(me.id.clone());
                    task.last_agent_id = Some(me.id.clone());
                    task.lease_expires_ms = Some(expires);
                    task.attempts += 1;
                    task.updated_ms = now;
                    task.progress = None;
                    task.message = None;
                    leased.push(Task::from(task));
                    Ok(true)
                };
                // Aimed at this agent first, then untargeted work in dispatch order. With no
                // lighter agent to defer to, one query fetches the whole batch.
                let mut taken = 0;
                for t in sql::targeted_candidates(tx, &me.id, &me.capabilities, now, max as i64)? {
                    taken += usize::from(lease(t)?);
                }
                if taken < max && lighter.is_empty() {
                    let rest = sql::open_candidates(
                        tx,
                        &me.capabilities,
                        now,
                        None,
                        (max - taken) as i64,
                    )?;
                    for t in rest {
                        lease(t)?;
                    }
                } else if taken < max {
                    while taken < max {
                        let Some(t) = self.pick(tx, &me.id, &me.capabilities, &lighter, now)?
                        else {
                            break;
                        };
                        if !lease(t)? {
                            break;
                        }
                        taken += 1;
                    }
                }
                Ok(if leased.is_empty() {
                    Err(NoTask::QueueEmpty)
                } else {
                    Ok(leased)
                })
            },
            TaskError::is_busy,
        )
    }

    /// A number that changes whenever anything is committed to the database, by any process:
    /// read it before a claim, and [`wait_for_change`](Self::wait_for_change) after an empty
    /// one.
    pub fn version(&self) -> Result<u64, TaskError> {
        Ok(self.store().data_version()?)
    }

    /// Resolves when the database changed since `seen` (a task may have been queued, by any
    /// process), when `until` passes, or after [`RECHECK`] at the latest (tasks also become
    /// claimable by time alone: `not_before`, retry backoff, the offer window). Polls the
    /// change counter every [`POLL`]: a pragma, not a transaction.
    pub async fn wait_for_change(&self, seen: u64, until: Instant) -> Result<(), TaskError> {
        let until = until.min(Instant::now() + RECHECK);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep(POLL.min(until - now)).await;
            if self.version()? != seen {
                return Ok(());
            }
        }
    }

    /// The next task this agent may take: aimed at it first, then untargeted in dispatch
    /// order, skipping tasks reserved for a lighter agent.
    fn pick(
        &self,
        tx: &Tx<'_>,
        agent_id: &str,
        caps: &str,
        lighter: &[Vec<String>],
        now: i64,
    ) -> Result<Option<TaskRow>, TaskError> {
        if let Some(t) = sql::targeted_candidates(tx, agent_id, caps, now, 1)?
            .into_iter()
            .next()
        {
            return Ok(Some(t));
        }
        let window = self.agents.config().offer_window_ms as i64;
        // With no lighter agent every candidate is acceptable, so one row is enough.
        let page_size = if lighter.is_empty() { 1 } else { 32 };
        let mut after: Option<(i64, i64, String)> = None;
        for _ in 0..8 {
            let page = sql::open_candidates(
                tx,
                caps,
                now,
                after.as_ref().map(|(p, c, i)| (*p, *c, i.as_str())),
                page_size,
            )?;
            let full = page.len() as i64 == page_size;
            for t in page {
                let needs: Vec<String> = serde_json::from_str(&t.capabilities).unwrap_or_default();
                let waited = now - t.created_ms.max(t.not_before_ms);
                let reserved = waited < window
                    && lighter
                        .iter()
                        .any(|their| needs.iter().all(|n| their.contains(n)));
                if !reserved {
                    return Ok(Some(t));
                }
                after = Some((t.priority, t.created_ms, t.id.clone()));
            }
            if !full {
                break;
            }
        }
        Ok(None)
    }

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
    fn retry_or_bury(
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

    pub fn get(&self, id: &str) -> Result<Task, TaskError> {
        self.store()
            .read(|tx| sql::get(tx, id))?
            .map(Task::from)
            .ok_or_else(|| TaskError::NotFound(id.into()))
    }

    /// Tasks, most recently updated first; `cursor` continues a previous page.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        kind: Option<&str>,
        agent_id: Option<&str>,
        priority: Option<Priority>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Task>, Option<String>), TaskError> {
        let before = cursor
            .map(|c| {
                c.split_once('|')
                    .and_then(|(u, id)| u.parse::<i64>().ok().map(|u| (u, id)))
                    .ok_or_else(|| TaskError::Invalid {
                        field: "cursor",
                        message: format!("expected the next_cursor of a previous page, got {c:?}"),
                    })
            })
            .transpose()?;
        let filter = sql::ListFilter {
            status,
            kind,
            agent_id,
            priority: priority.map(Priority::rank),
            before,
        };
        let mut rows = self
            .store()
            .read(|tx| sql::list(tx, &filter, i64::from(limit) + 1))?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| format!("{}|{}", r.updated_ms, r.id))
        } else {
            None
        };
        Ok((rows.into_iter().map(Task::from).collect(), next))
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

    pub fn stats(&self) -> Result<QueueStats, TaskError> {
        let now = now_ms();
        let (counts, finished, oldest) = self.store().read(|tx| {
            Ok::<_, StoreError>((
                sql::counts(tx)?,
                sql::finished_since(tx, now - 60_000)?,
                sql::oldest_queued_ms(tx)?,
            ))
        })?;
        let mut by_status = std::collections::BTreeMap::new();
        let mut queued_by_priority = std::collections::BTreeMap::new();
        for (status, priority, n) in counts {
            *by_status.entry(status.as_str().to_string()).or_insert(0) += n;
            if status == TaskStatus::Queued {
                *queued_by_priority
                    .entry(Priority::from_rank(priority).as_str().to_string())
                    .or_insert(0) += n;
            }
        }
        let finished: std::collections::BTreeMap<String, i64> = finished
            .into_iter()
            .map(|(status, n)| (status.as_str().to_string(), n))
            .collect();
        Ok(QueueStats {
            oldest_queued_age_seconds: oldest.map(|ms| (now - ms) as f64 / 1000.0),
            completed_per_second_last_minute: finished.get("completed").copied().unwrap_or(0)
                as f64
                / 60.0,
            dead_letters: by_status.get("dead").copied().unwrap_or(0),
            finished_last_minute: finished,
            by_status,
            queued_by_priority,
        })
    }

    /// Deletes tasks in the given final states that finished more than `retention_seconds` ago.
    pub fn purge(
        &self,
        retention_seconds: u64,
        statuses: &[TaskStatus],
        by: &Actor,
    ) -> Result<usize, TaskError> {
        if let Some(s) = statuses.iter().find(|s| !s.is_final()) {
            return Err(TaskError::Invalid {
                field: "statuses",
                message: format!(
                    "{} is not a final state; only finished tasks can be purged",
                    s.as_str()
                ),
            });
        }
        // A larger value wrapped to a negative one and purged every finished task.
        if !limits::PURGE_RETENTION_SECONDS.contains(retention_seconds) {
            return Err(TaskError::Invalid {
                field: "retention_seconds",
                message: format!(
                    "{}, got {retention_seconds}",
                    limits::PURGE_RETENTION_SECONDS.expected()
                ),
            });
        }
        let before = now_ms() - (retention_seconds as i64) * 1000;
        let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        self.store().write(|tx| {
            let n = sql::purge(tx, statuses, before)?;
            self.append(
                tx,
                event(by.clone(), Action::TaskPurged, "tasks",
                      json!({"deleted": n, "statuses": names, "retention_seconds": retention_seconds})),
            )?;
            Ok(n)
        })
    }

    /// Returns expired leases (timed out: retried or dead) and the leases of offline agents
    /// (requeued, attempt refunded) to the queue. Safe to run from every process at once.
    pub fn sweep(&self) -> Result<(usize, usize), TaskError> {
        let now = now_ms();
        let interval = self.agents.config().heartbeat_interval_ms as i64;
        // Lazily, like a claim: a sweep that finds nothing (almost all of them) takes no write
        // lock, so idle coordinators sharing a file do not queue behind each other's sweeps.
        self.store().write_lazily(
            |tx| {
                let system = Actor::system();
                let expired = sql::expired_leases(tx, now)?;
                for t in &expired {
                    self.append(
                        tx,
                        event(
                            system.clone(),
                            Action::TaskTimedOut,
                            &t.id,
                            json!({"leased_by": t.leased_by, "attempt": t.attempts}),
                        ),
                    )?;
                    self.retry_or_bury(
                        tx,
                        t,
                        "lease expired before the agent reported a result",
                        &system,
                        now,
                    )?;
                }
                let mut orphaned = 0;
                for agent in agent_sql::silent_since(tx, now - 5 * interval)? {
                    for t in sql::held_by(tx, &agent)? {
                        sql::requeue(tx, &t.id, now, None, true, false, now)?;
                        self.append(
                            tx,
                            event(
                                system.clone(),
                                Action::TaskRequeued,
                                &t.id,
                                json!({"why": "agent offline", "agent": agent}),
                            ),
                        )?;
                        orphaned += 1;
                    }
                }
                Ok((expired.len(), orphaned))
            },
            TaskError::is_busy,
        )
    }
}
