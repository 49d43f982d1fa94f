//! Agent and task tools: `agent_register`, `agent_heartbeat`, `agent_list`,
//! `agent_deregister`, `task_submit`, `task_claim`, `task_report`, `task_get`, `task_list`,
//! `task_cancel`, `task_requeue`, `queue_stats`, `queue_purge` (`task_report`'s arguments and
//! outcomes in `report.rs`).

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Coordinator;
use super::session::Call;
use super::tool::failure;
use super::tool::{Failure, Route, invalid_field, route, spec};
use crate::agent::{Agent, AgentStatus, AgentType, Health, NewAgent, Registration, Resources};
use crate::auth::Permission;
use crate::config::ToolGroup;
use crate::task::{MAX_WAIT_SECONDS, NewTask, NoTask, Priority, QueueStats, Task, TaskStatus};

pub fn routes() -> Vec<Route> {
    let mut routes = agent_routes();
    routes.extend(task_routes());
    routes
}

/// The agent tools: register, heartbeat, list, deregister.
fn agent_routes() -> Vec<Route> {
    use ToolGroup::Agents;
    vec![
        route(
            spec(
                "agent_register",
                Permission::Work,
                "Register a worker agent",
                include_str!("../../tools/agent_register.md"),
                Agents,
                false,
                false,
                false,
            ),
            agent_register,
        ),
        route(
            spec(
                "agent_heartbeat",
                Permission::Work,
                "Agent heartbeat",
                include_str!("../../tools/agent_heartbeat.md"),
                Agents,
                false,
                false,
                true,
            ),
            agent_heartbeat,
        ),
        route(
            spec(
                "agent_list",
                Permission::Operate,
                "Discover agents",
                include_str!("../../tools/agent_list.md"),
                Agents,
                true,
                false,
                true,
            ),
            agent_list,
        ),
        route(
            spec(
                "agent_deregister",
                Permission::Work,
                "Deregister an agent",
                include_str!("../../tools/agent_deregister.md"),
                Agents,
                false,
                false,
                true,
            ),
            agent_deregister,
        ),
    ]
}

/// The task and queue tools.
fn task_routes() -> Vec<Route> {
    use ToolGroup::Tasks;
    vec![
        route(
            spec(
                "task_submit",
                Permission::Operate,
                "Submit a task",
                include_str!("../../tools/task_submit.md"),
                Tasks,
                false,
                false,
                false,
            ),
            task_submit,
        ),
        route(
            spec(
                "task_claim",
                Permission::Work,
                "Claim the next task",
                include_str!("../../tools/task_claim.md"),
                Tasks,
                false,
                false,
                false,
            ),
            task_claim,
        ),
        route(
            spec(
                "task_report",
                Permission::Work,
                "Report on a claimed task",
                include_str!("../../tools/task_report.md"),
                Tasks,
                false,
                false,
                false,
            ),
            super::report::task_report,
        ),
        route(
            spec(
                "task_get",
                Permission::Operate,
                "Get a task",
                include_str!("../../tools/task_get.md"),
                Tasks,
                true,
                false,
                true,
            ),
            task_get,
        ),
        route(
            spec(
                "task_list",
                Permission::Operate,
                "List tasks",
                include_str!("../../tools/task_list.md"),
                Tasks,
                true,
                false,
                true,
            ),
            task_list,
        ),
        route(
            spec(
                "task_cancel",
                Permission::Operate,
                "Cancel a task",
                include_str!("../../tools/task_cancel.md"),
                Tasks,
                false,
                true,
                true,
            ),
            task_cancel,
        ),
        route(
            spec(
                "task_requeue",
                Permission::Operate,
                "Requeue a dead or failed task",
                include_str!("../../tools/task_requeue.md"),
                Tasks,
                false,
                false,
                false,
            ),
            task_requeue,
        ),
        route(
            spec(
                "queue_stats",
                Permission::Operate,
                "Queue statistics",
                include_str!("../../tools/queue_stats.md"),
                Tasks,
                true,
                false,
                true,
            ),
            queue_stats,
        ),
        route(
            spec(
                "queue_purge",
                Permission::Admin,
                "Purge finished tasks",
                include_str!("../../tools/queue_purge.md"),
                Tasks,
                false,
                true,
                true,
            ),
            queue_purge,
        ),
    ]
}

/// Arguments of `agent_register`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterInput {
    /// A unique, stable name, such as `etl-worker-1`.
    #[schemars(length(max = crate::limits::NAME_CHARS))]
    pub name: String,
    /// `worker` (default), `orchestrator` or `validator`.
    pub agent_type: Option<AgentType>,
    /// What it can do, such as `data-processing` or `assessment:security`.
    #[serde(default)]
    #[schemars(length(max = crate::limits::CAPABILITIES), inner(length(max = crate::limits::NAME_CHARS)))]
    pub capabilities: Vec<String>,
    /// How to reach it (URLs, queue names), free-form.
    #[serde(default)]
    pub endpoints: Map<String, Value>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Its current token, to refresh an existing registration of this name.
    pub token: Option<String>,
}

async fn agent_register(
    c: Coordinator,
    i: RegisterInput,
    call: Call,
) -> Result<Registration, Failure> {
    let new = NewAgent {
        name: i.name,
        agent_type: i.agent_type.unwrap_or(AgentType::Worker),
        capabilities: i.capabilities,
        endpoints: i.endpoints,
        resources: i.resources,
        metadata: i.metadata,
        token: i.token,
        by: call.actor,
    };
    c.blocking(move |c| c.tasks().agents().register(new))
        .await?
        .map_err(|e| failure("agent_register", e))
}

/// Arguments of `agent_heartbeat`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatInput {
    /// The agent token from agent_register.
    pub token: String,
    /// Current load, 0 (idle) to 1 (full).
    #[schemars(range(min = crate::limits::LOAD.min, max = crate::limits::LOAD.max))]
    pub load: f64,
    /// `ready` (default), `busy` or `draining` (takes no new tasks).
    pub status: Option<AgentStatus>,
    /// Replaces the agent's capabilities when given.
    #[schemars(length(max = crate::limits::CAPABILITIES), inner(length(max = crate::limits::NAME_CHARS)))]
    pub capabilities: Option<Vec<String>>,
}

async fn agent_heartbeat(c: Coordinator, i: HeartbeatInput, _call: Call) -> Result<Agent, Failure> {
    c.blocking(move |c| {
        c.tasks().agents().heartbeat(
            &i.token,
            i.load,
            i.status.unwrap_or(AgentStatus::Ready),
            i.capabilities,
        )
    })
    .await?
    .map_err(|e| failure("agent_heartbeat", e))
}

/// Arguments of `agent_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentListInput {
    /// Only agents with this capability.
    pub capability: Option<String>,
    pub agent_type: Option<AgentType>,
    /// Only agents in this health: `active`, `stale`, `offline`.
    pub health: Option<Health>,
}

/// What `agent_list` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

async fn agent_list(c: Coordinator, i: AgentListInput, _call: Call) -> Result<AgentList, Failure> {
    c.blocking(move |c| {
        c.tasks()
            .agents()
            .list(i.capability.as_deref(), i.agent_type, i.health)
    })
    .await?
    .map(|agents| AgentList { agents })
    .map_err(|e| failure("agent_list", e))
}

/// Arguments of `agent_deregister`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeregisterInput {
    /// The agent token.
    pub token: String,
}

/// What `agent_deregister` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Deregistered {
    pub agent_id: String,
    /// Tasks it held, now back in the queue (the attempt does not count).
    pub requeued_tasks: usize,
    /// Queued tasks aimed at it, now open to any capable agent.
    pub retargeted_tasks: usize,
}

async fn agent_deregister(
    c: Coordinator,
    i: DeregisterInput,
    _call: Call,
) -> Result<Deregistered, Failure> {
    c.blocking(move |c| c.tasks().agents().deregister(&i.token))
        .await?
        .map(
            |(agent_id, requeued_tasks, retargeted_tasks)| Deregistered {
                agent_id,
                requeued_tasks,
                retargeted_tasks,
            },
        )
        .map_err(|e| failure("agent_deregister", e))
}

/// Arguments of `task_submit`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitInput {
    /// The tool or command the agent should run, such as `transform_csv`.
    #[schemars(length(max = crate::limits::NAME_CHARS))]
    pub kind: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Value,
    /// Capabilities the agent must all have.
    #[serde(default)]
    #[schemars(length(max = crate::limits::CAPABILITIES), inner(length(max = crate::limits::NAME_CHARS)))]
    pub capabilities: Vec<String>,
    /// Only this agent may claim it.
    #[schemars(length(max = crate::limits::NAME_CHARS))]
    pub target_agent_id: Option<String>,
    /// `urgent`, `high`, `normal` (default) or `low`.
    pub priority: Option<Priority>,
    /// How long a claim lasts before the task is retried (default 300).
    #[schemars(range(min = crate::limits::TASK_TIMEOUT_SECONDS.min, max = crate::limits::TASK_TIMEOUT_SECONDS.max))]
    pub timeout_seconds: Option<f64>,
    /// Retries after failures or timeouts before the task is dead (default 3).
    #[schemars(range(min = crate::limits::TASK_MAX_RETRIES.min, max = crate::limits::TASK_MAX_RETRIES.max))]
    pub max_retries: Option<u32>,
    /// Submitting again with the same key returns the first task instead of a new one.
    #[schemars(length(max = crate::limits::KEY_CHARS))]
    pub idempotency_key: Option<String>,
    /// Not claimable before this time (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub not_before: Option<String>,
}

/// What `task_submit` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Submitted {
    pub task_id: String,
    /// False when the idempotency key returned an earlier task.
    pub created: bool,
    pub task: Task,
}

async fn task_submit(c: Coordinator, i: SubmitInput, call: Call) -> Result<Submitted, Failure> {
    let not_before_ms = match &i.not_before {
        Some(s) => Some(
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    Failure::Domain(invalid_field(
                        "task_submit",
                        "not_before",
                        format!(
                            "expected an RFC 3339 time such as 2026-11-21T09:30:00Z, got {s:?}"
                        ),
                    ))
                })?,
        ),
        None => None,
    };
    let new = NewTask {
        kind: i.kind,
        params: i.params,
        capabilities: i.capabilities,
        target_agent_id: i.target_agent_id,
        priority: i.priority.unwrap_or(Priority::Normal),
        timeout_seconds: i.timeout_seconds,
        max_retries: i.max_retries,
        idempotency_key: i.idempotency_key,
        not_before_ms,
    };
    let actor = call.actor.clone();
    c.blocking(move |c| c.tasks().submit(new, &actor))
        .await?
        .map(|(task, created)| Submitted {
            task_id: task.id.clone(),
            created,
            task,
        })
        .map_err(|e| failure("task_submit", e))
}

/// Arguments of `task_claim`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimInput {
    /// The agent token.
    pub token: String,
    /// The agent's load right now (0..1), recorded before dispatch decides; defaults to the
    /// load of its last heartbeat.
    #[schemars(range(min = crate::limits::LOAD.min, max = crate::limits::LOAD.max))]
    pub load: Option<f64>,
    /// Lease up to this many tasks at once, 1 to 100 (default 1), for an agent with spare
    /// slots; they come in dispatch order.
    #[schemars(range(min = crate::limits::CLAIM_MAX_TASKS.min, max = crate::limits::CLAIM_MAX_TASKS.max))]
    pub max_tasks: Option<u32>,
    /// Long poll: when no task is there, wait up to this many seconds (0 to 60, default 0)
    /// for one to be queued, by any coordinator on the database, and return it at once.
    #[schemars(range(min = crate::limits::CLAIM_WAIT_SECONDS.min, max = crate::limits::CLAIM_WAIT_SECONDS.max))]
    pub wait_seconds: Option<f64>,
}

/// What `task_claim` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Claimed {
    /// The (first) leased task, or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Every task leased by this claim (one unless `max_tasks` asked for more).
    pub tasks: Vec<Task>,
    /// Why there is no task, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<NoTask>,
}

async fn task_claim(c: Coordinator, i: ClaimInput, call: Call) -> Result<Claimed, Failure> {
    let max = i.max_tasks.unwrap_or(1);
    if !crate::limits::CLAIM_MAX_TASKS.contains(max) {
        return Err(Failure::Domain(invalid_field(
            "task_claim",
            "max_tasks",
            format!("{}, got {max}", crate::limits::CLAIM_MAX_TASKS.expected()),
        )));
    }
    let wait = i.wait_seconds.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(Failure::Domain(invalid_field(
            "task_claim",
            "wait_seconds",
            format!("expected 0 to {MAX_WAIT_SECONDS} seconds, got {wait}"),
        )));
    }
    let until = Instant::now() + Duration::from_secs_f64(wait);
    let fail = |e| failure("task_claim", e);
    let reason = loop {
        // Read before claiming, so a task queued during the claim is not slept through; only
        // when there is time left to wait (a plain claim does not touch the watch connection).
        let seen = if Instant::now() < until {
            Some(c.tasks().version().map_err(fail)?)
        } else {
            None
        };
        let (token, load) = (i.token.clone(), i.load);
        match c
            .blocking(move |c| c.tasks().claim_many(&token, load, max as usize))
            .await?
            .map_err(fail)?
        {
            Ok(tasks) => {
                return Ok(Claimed {
                    task: tasks.first().cloned(),
                    tasks,
                    reason: None,
                });
            }
            Err(NoTask::QueueEmpty) if seen.is_some() && Instant::now() < until => {
                let seen = seen.unwrap_or_default();
                tokio::select! {
                    waited = c.tasks().wait_for_change(seen, until) => waited.map_err(fail)?,
                    () = call.cancel.cancelled() => break NoTask::QueueEmpty,
                }
            }
            Err(reason) => break reason,
        }
    };
    // Nothing changed and nothing was handed out: no audit event (idle workers poll).
    call.unaudited();
    Ok(Claimed {
        task: None,
        tasks: Vec::new(),
        reason: Some(reason),
    })
}

/// Arguments of `task_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdInput {
    pub task_id: String,
}

async fn task_get(c: Coordinator, i: TaskIdInput, _call: Call) -> Result<Task, Failure> {
    c.blocking(move |c| c.tasks().get(&i.task_id))
        .await?
        .map_err(|e| failure("task_get", e))
}

/// Arguments of `task_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListInput {
    pub status: Option<TaskStatus>,
    pub kind: Option<String>,
    /// Tasks this agent holds or last held, or that are aimed at it.
    pub agent_id: Option<String>,
    pub priority: Option<Priority>,
    /// Tasks per page, 1 to 500 (default 50).
    #[schemars(range(min = crate::limits::PAGE.min, max = crate::limits::PAGE.max))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of tasks, most recently updated first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

async fn task_list(c: Coordinator, i: TaskListInput, _call: Call) -> Result<TaskPage, Failure> {
    let limit = i.limit.unwrap_or(50);
    if !crate::limits::PAGE.contains(limit) {
        return Err(Failure::Domain(invalid_field(
            "task_list",
            "limit",
            format!("{}, got {limit}", crate::limits::PAGE.expected()),
        )));
    }
    c.blocking(move |c| {
        c.tasks().list(
            i.status,
            i.kind.as_deref(),
            i.agent_id.as_deref(),
            i.priority,
            limit,
            i.cursor.as_deref(),
        )
    })
    .await?
    .map(|(tasks, next_cursor)| TaskPage { tasks, next_cursor })
    .map_err(|e| failure("task_list", e))
}

/// Arguments of `task_cancel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    pub task_id: String,
    /// Why, recorded with the task and in the audit log.
    #[schemars(length(max = crate::limits::MESSAGE_CHARS))]
    pub reason: Option<String>,
}

async fn task_cancel(c: Coordinator, i: CancelInput, call: Call) -> Result<Task, Failure> {
    let actor = call.actor.clone();
    c.blocking(move |c| c.tasks().cancel(&i.task_id, i.reason.as_deref(), &actor))
        .await?
        .map_err(|e| failure("task_cancel", e))
}

async fn task_requeue(c: Coordinator, i: TaskIdInput, call: Call) -> Result<Task, Failure> {
    let actor = call.actor.clone();
    c.blocking(move |c| c.tasks().requeue(&i.task_id, &actor))
        .await?
        .map_err(|e| failure("task_requeue", e))
}

/// `queue_stats` takes no arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsInput {}

async fn queue_stats(c: Coordinator, _i: StatsInput, _call: Call) -> Result<QueueStats, Failure> {
    c.blocking(|c| c.tasks().stats())
        .await?
        .map_err(|e| failure("queue_stats", e))
}

/// Arguments of `queue_purge`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeInput {
    /// Keep tasks that finished less than this many seconds ago.
    #[schemars(range(min = crate::limits::PURGE_RETENTION_SECONDS.min, max = crate::limits::PURGE_RETENTION_SECONDS.max))]
    pub retention_seconds: u64,
    /// Which final states to purge (default `completed` and `cancelled`; dead letters and
    /// failures are kept unless named).
    pub statuses: Option<Vec<TaskStatus>>,
}

/// What `queue_purge` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Purged {
    pub deleted: usize,
}

async fn queue_purge(c: Coordinator, i: PurgeInput, call: Call) -> Result<Purged, Failure> {
    let statuses = i
        .statuses
        .unwrap_or_else(|| vec![TaskStatus::Completed, TaskStatus::Cancelled]);
    let actor = call.actor.clone();
    c.blocking(move |c| c.tasks().purge(i.retention_seconds, &statuses, &actor))
        .await?
        .map(|deleted| Purged { deleted })
        .map_err(|e| failure("queue_purge", e))
}
