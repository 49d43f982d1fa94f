//! Pipeline tools: `pipeline_create`, `pipeline_get`, `pipeline_list`, `pipeline_delete`,
//! `pipeline_run`, `pipeline_run_get`, `pipeline_run_cancel`, and runs as tasks of the tasks
//! extension. The wait that sends progress notifications and, on initialize-era sessions, asks
//! a person about approval stages is in `pipelines/wait.rs`.

mod wait;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::gate;
use super::session::Call;
use super::tool::failure;
use super::tool::{self, Failure, Reply, Route, ToolSpec, invalid_field, route, route_with_input};
use crate::auth::Permission;
use crate::config::ToolGroup;
use crate::pipeline::{
    Definition, Dependency, NewPipeline, NewRun, Pipeline, PipelineError, PipelineSummary, Run,
    RunStatus, StageDef, Template, describe_progress,
};
use crate::task::Priority;
use wait::wait_for;

fn spec(
    name: &'static str,
    permission: Permission,
    title: &'static str,
    description: &'static str,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
) -> ToolSpec {
    tool::spec(
        name,
        permission,
        title,
        description,
        ToolGroup::Pipelines,
        read_only,
        destructive,
        idempotent,
    )
}

pub fn routes() -> Vec<Route> {
    vec![
        route(
            spec(
                "pipeline_create",
                Permission::Operate,
                "Create a pipeline (or a new version)",
                include_str!("../../tools/pipeline_create.md"),
                false,
                false,
                true,
            ),
            pipeline_create,
        ),
        route(
            spec(
                "pipeline_get",
                Permission::Operate,
                "Get a pipeline definition",
                include_str!("../../tools/pipeline_get.md"),
                true,
                false,
                true,
            ),
            pipeline_get,
        ),
        route(
            spec(
                "pipeline_list",
                Permission::Operate,
                "List pipelines, templates and recent runs",
                include_str!("../../tools/pipeline_list.md"),
                true,
                false,
                true,
            ),
            pipeline_list,
        ),
        route(
            spec(
                "pipeline_delete",
                Permission::Operate,
                "Delete a pipeline",
                include_str!("../../tools/pipeline_delete.md"),
                false,
                true,
                false,
            ),
            pipeline_delete,
        ),
        route_with_input(
            spec(
                "pipeline_run",
                Permission::Operate,
                "Run a pipeline",
                include_str!("../../tools/pipeline_run.md"),
                false,
                false,
                false,
            ),
            pipeline_run,
        ),
        route(
            spec(
                "pipeline_run_get",
                Permission::Operate,
                "Get (or wait for) a pipeline run",
                include_str!("../../tools/pipeline_run_get.md"),
                true,
                false,
                true,
            ),
            pipeline_run_get,
        ),
        route(
            spec(
                "pipeline_run_cancel",
                Permission::Operate,
                "Cancel a pipeline run",
                include_str!("../../tools/pipeline_run_cancel.md"),
                false,
                true,
                false,
            ),
            pipeline_run_cancel,
        ),
    ]
}

/// Arguments of `pipeline_create`. `stages` is required unless `template` is given (a root
/// `if`/`else`, which Claude's API takes where it refuses a root `anyOf`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("if" = {"required": ["template"]}, "else" = {"required": ["stages"]}))]
pub struct CreateInput {
    /// Unique name: letters, digits, `-`, `_`, `.` (for example `nightly-etl`).
    pub name: String,
    /// What the pipeline is for.
    #[serde(default)]
    #[schemars(length(max = crate::limits::SUMMARY_CHARS))]
    pub description: Option<String>,
    /// Start from a built-in definition instead of giving `stages` (`pipeline_list` shows
    /// the templates).
    pub template: Option<Template>,
    /// The stages (at least one; names unique). Required unless `template` is given.
    pub stages: Option<Vec<StageDef>>,
    /// `from` runs before `to`; stages with no path between them run in parallel.
    #[serde(default)]
    pub dependencies: Option<Vec<Dependency>>,
    /// Give the id of an existing pipeline to add a new version to it (same name). Runs
    /// already started keep the version they started with.
    pub pipeline_id: Option<String>,
}

/// What `pipeline_create` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Created {
    pub pipeline_id: String,
    pub version: i64,
    /// False when the definition was identical to the latest version (nothing was added).
    pub created: bool,
    pub message: String,
    pub pipeline: Pipeline,
}

async fn pipeline_create(c: Coordinator, i: CreateInput, call: Call) -> Result<Created, Failure> {
    const TOOL: &str = "pipeline_create";
    let definition = match (i.template, i.stages) {
        (Some(_), Some(_)) => {
            return Err(Failure::Domain(invalid_field(
                TOOL,
                "template",
                "give either template or stages, not both",
            )));
        }
        (Some(t), None) => {
            if i.dependencies.is_some() {
                return Err(Failure::Domain(invalid_field(
                    TOOL,
                    "dependencies",
                    "a template brings its own dependencies; give stages to define your own",
                )));
            }
            t.definition()
        }
        (None, Some(stages)) => Definition {
            stages,
            dependencies: i.dependencies.unwrap_or_default(),
        },
        (None, None) => {
            return Err(Failure::Domain(invalid_field(
                TOOL,
                "stages",
                "give the stages (or a template such as \"six_stage\")",
            )));
        }
    };
    let description = i
        .description
        .or_else(|| i.template.map(|t| t.description().to_string()))
        .unwrap_or_default();
    let new = NewPipeline {
        name: i.name,
        description,
        definition,
        pipeline_id: i.pipeline_id,
    };
    let actor = call.actor.clone();
    let (pipeline, created) = c
        .blocking(move |c| c.pipelines().create(new, &actor))
        .await?
        .map_err(|e| failure(TOOL, e))?;
    let message = if created {
        format!(
            "Pipeline {} ({}) version {} created with {} stage(s). Start it with pipeline_run.",
            pipeline.name,
            pipeline.id,
            pipeline.version,
            pipeline.stages.len()
        )
    } else {
        format!(
            "Pipeline {} version {} already has exactly this definition; no version was added.",
            pipeline.name, pipeline.version
        )
    };
    Ok(Created {
        pipeline_id: pipeline.id.clone(),
        version: pipeline.version,
        created,
        message,
        pipeline,
    })
}

/// Arguments of `pipeline_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetInput {
    /// The pipeline's id or name.
    pub pipeline: String,
    /// A version (default: the latest).
    #[schemars(range(min = 1))]
    pub version: Option<i64>,
}

/// Arguments of `pipeline_delete`: a pipeline goes with all its versions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteInput {
    /// The pipeline's id or name.
    pub pipeline: String,
}

async fn pipeline_get(c: Coordinator, i: GetInput, _call: Call) -> Result<Pipeline, Failure> {
    c.blocking(move |c| c.pipelines().get(&i.pipeline, i.version))
        .await?
        .map_err(|e| failure("pipeline_get", e))
}

/// Arguments of `pipeline_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInput {
    /// At most this many pipelines (1 to 200, default 50).
    #[schemars(range(min = crate::limits::SHORT_PAGE.min, max = crate::limits::SHORT_PAGE.max))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// How many recent runs to include (0 to 100, default 10).
    #[schemars(range(min = crate::limits::RECENT_RUNS.min, max = crate::limits::RECENT_RUNS.max))]
    pub recent_runs: Option<u32>,
}

/// A built-in definition.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TemplateInfo {
    pub template: Template,
    pub description: String,
    pub stages: Vec<StageDef>,
    pub dependencies: Vec<Dependency>,
}

/// A run in brief.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunBrief {
    pub run_id: String,
    pub pipeline_name: String,
    pub version: i64,
    pub status: RunStatus,
    pub progress: String,
    pub created_at: String,
}

/// What `pipeline_list` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PipelineList {
    pub pipelines: Vec<PipelineSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub templates: Vec<TemplateInfo>,
    /// The newest runs of any pipeline, newest first.
    pub recent_runs: Vec<RunBrief>,
}

async fn pipeline_list(c: Coordinator, i: ListInput, _call: Call) -> Result<PipelineList, Failure> {
    const TOOL: &str = "pipeline_list";
    let limit = i.limit.unwrap_or(50);
    if !crate::limits::SHORT_PAGE.contains(limit) {
        return Err(Failure::Domain(invalid_field(
            TOOL,
            "limit",
            format!("{}, got {limit}", crate::limits::SHORT_PAGE.expected()),
        )));
    }
    let recent = i.recent_runs.unwrap_or(10);
    if !crate::limits::RECENT_RUNS.contains(recent) {
        return Err(Failure::Domain(invalid_field(
            TOOL,
            "recent_runs",
            format!("{}, got {recent}", crate::limits::RECENT_RUNS.expected()),
        )));
    }
    let (pipelines, next_cursor, runs) = c
        .blocking(move |c| -> Result<_, PipelineError> {
            let (p, next) = c.pipelines().list(limit, i.cursor.as_deref())?;
            let runs = if recent == 0 {
                Vec::new()
            } else {
                c.pipelines().list_runs(None, None, recent, None)?.0
            };
            Ok((p, next, runs))
        })
        .await?
        .map_err(|e| failure(TOOL, e))?;
    Ok(PipelineList {
        pipelines,
        next_cursor,
        templates: Template::all()
            .into_iter()
            .map(|t| {
                let d = t.definition();
                TemplateInfo {
                    template: t,
                    description: t.description().into(),
                    stages: d.stages,
                    dependencies: d.dependencies,
                }
            })
            .collect(),
        recent_runs: runs
            .iter()
            .map(|r| RunBrief {
                run_id: r.id.clone(),
                pipeline_name: r.pipeline_name.clone(),
                version: r.version,
                status: r.status,
                progress: describe_progress(r),
                created_at: r.created_at.clone(),
            })
            .collect(),
    })
}

async fn pipeline_delete(c: Coordinator, i: DeleteInput, call: Call) -> Result<Pipeline, Failure> {
    let actor = call.actor.clone();
    c.blocking(move |c| c.pipelines().delete(&i.pipeline, &actor))
        .await?
        .map_err(|e| failure("pipeline_delete", e))
}

/// Arguments of `pipeline_run`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// The pipeline's id or name.
    pub pipeline: String,
    /// The definition version to run (default: the latest). The run keeps it even if the
    /// pipeline gets new versions meanwhile.
    #[schemars(range(min = 1))]
    pub version: Option<i64>,
    /// Input data every stage receives (a JSON object).
    #[serde(default)]
    pub input: Value,
    /// Parameters every stage receives (a JSON object).
    #[serde(default)]
    pub parameters: Value,
    /// Priority of the stage tasks: `urgent`, `high`, `normal` (default) or `low`.
    pub priority: Option<Priority>,
    /// POSTed the final run status (JSON) when the run ends, retried with backoff until it
    /// answers 2xx. http:// or https://.
    pub webhook_url: Option<String>,
    /// Wait up to this many seconds for the run to end, with progress notifications
    /// (default 0: return the run id at once). On initialize-era clients that support
    /// elicitation, approval stages are asked about while waiting.
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
    /// If the client cancels this call while it waits, also cancel the run (default false:
    /// only the wait ends and the run goes on).
    #[serde(default)]
    pub cancel_run_on_client_cancel: bool,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitEnd {
    /// The call did not wait (`wait_seconds` 0).
    NoWait,
    /// The run ended.
    Finished,
    /// `wait_seconds` passed; the run goes on.
    WaitElapsed,
    /// The client cancelled the call; the run goes on unless it was asked to cancel it too.
    ClientCancelled,
    /// An approval stage waits for a person and this client cannot be asked while waiting
    /// (2026-07-28: use `approval_request` with the approval id).
    NeedsApproval,
}

/// What `pipeline_run`, `pipeline_run_get` and `pipeline_run_cancel` return.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunResult {
    pub run_id: String,
    pub status: RunStatus,
    pub wait: WaitEnd,
    /// What happened and what to do next, in words.
    pub message: String,
    /// Problems that will keep the run from finishing by itself, such as stages needing a
    /// capability no registered agent offers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub run: Run,
}

async fn pipeline_run(
    c: Coordinator,
    i: RunInput,
    call: Call,
) -> Result<Reply<RunResult>, Failure> {
    const TOOL: &str = "pipeline_run";
    let wait = gate::wait_for(TOOL, i.wait_seconds)?;
    let new = NewRun {
        pipeline: i.pipeline,
        version: i.version,
        input: i.input,
        parameters: i.parameters,
        priority: i.priority.unwrap_or(Priority::Normal),
        webhook_url: i.webhook_url,
    };
    let actor = call.actor.clone();
    let run = c
        .blocking(move |c| c.pipelines().run(new, &actor))
        .await?
        .map_err(|e| failure(TOOL, e))?;
    // A client that takes tasks gets the run as one instead of a long wait: it polls
    // `tasks/get` (the task id is the run id, so it survives a coordinator restart).
    if call.tasks && !wait.is_zero() {
        return Ok(Reply::Task(rmcp::model::CreateTaskResult::new(task_of(
            &run,
        ))));
    }
    wait_for(&c, &call, run, wait, i.cancel_run_on_client_cancel)
        .await
        .map(Reply::Done)
}

/// A run as a task of the tasks extension.
pub fn task_of(run: &Run) -> rmcp::model::Task {
    let status = match run.status {
        RunStatus::Running => rmcp::model::TaskStatus::Working,
        RunStatus::Cancelled => rmcp::model::TaskStatus::Cancelled,
        RunStatus::Completed | RunStatus::Failed => rmcp::model::TaskStatus::Completed,
    };
    rmcp::model::Task::new(
        run.id.clone(),
        status,
        run.created_at.clone(),
        run.updated_at.clone(),
    )
    .with_status_message(format!(
        "{}{}",
        describe_progress(run),
        if run.awaiting_approvals.is_empty() {
            String::new()
        } else {
            format!(
                "; waiting for a person to decide {} (approval_request asks)",
                run.awaiting_approvals.join(", ")
            )
        }
    ))
    .with_poll_interval_ms(500)
}

/// `tasks/get` for a run: working while it runs; completed (with the `pipeline_run` result)
/// once it completed or failed; cancelled if it was cancelled.
pub async fn get_task(
    c: &Coordinator,
    task_id: &str,
) -> Result<rmcp::model::GetTaskResult, rmcp::ErrorData> {
    use rmcp::model::{DetailedTask, GetTaskResult, TaskPayload};
    let id = task_id.to_string();
    let run = c
        .blocking(move |c| c.pipelines().get_run(&id))
        .await
        .map_err(|e| rmcp::ErrorData::internal_error(e.message, None))?
        .map_err(|_| {
            rmcp::ErrorData::invalid_params(
                format!("no task {task_id}: tasks of this coordinator are pipeline runs started with pipeline_run"),
                Some(json!({"taskId": task_id})),
            )
        })?;
    let task = task_of(&run);
    let payload = match run.status {
        RunStatus::Running => TaskPayload::Working,
        RunStatus::Cancelled => TaskPayload::Cancelled,
        RunStatus::Completed | RunStatus::Failed => {
            let value = serde_json::to_value(result(c, run, WaitEnd::Finished))
                .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
            let call_result = serde_json::to_value(rmcp::model::CallToolResult::structured(value))
                .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))?;
            TaskPayload::Completed {
                result: call_result.as_object().cloned().unwrap_or_default(),
            }
        }
    };
    Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
}

/// `tasks/cancel` for a run: cancels it (a run already ended is left as it is).
pub async fn cancel_task(
    c: &Coordinator,
    task_id: &str,
    actor: crate::audit::Actor,
) -> Result<(), rmcp::ErrorData> {
    let id = task_id.to_string();
    match c
        .blocking(move |c| {
            c.pipelines()
                .cancel_run(&id, Some("tasks/cancel from the client"), &actor)
        })
        .await
        .map_err(|e| rmcp::ErrorData::internal_error(e.message, None))?
    {
        Ok(_) | Err(PipelineError::Conflict(_)) => Ok(()),
        Err(PipelineError::NotFound { .. }) => Err(rmcp::ErrorData::invalid_params(
            format!("no task {task_id}"),
            Some(json!({"taskId": task_id})),
        )),
        Err(e) => Err(rmcp::ErrorData::internal_error(e.to_string(), None)),
    }
}

/// Arguments of `pipeline_run_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunGetInput {
    pub run_id: String,
    /// Wait up to this many seconds for the run to end, with progress notifications
    /// (default 0: answer at once).
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

async fn pipeline_run_get(
    c: Coordinator,
    i: RunGetInput,
    call: Call,
) -> Result<RunResult, Failure> {
    const TOOL: &str = "pipeline_run_get";
    let wait = gate::wait_for(TOOL, i.wait_seconds)?;
    let run = c
        .blocking(move |c| c.pipelines().get_run(&i.run_id))
        .await?
        .map_err(|e| failure(TOOL, e))?;
    wait_for(&c, &call, run, wait, false).await
}

/// Arguments of `pipeline_run_cancel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelInput {
    pub run_id: String,
    /// Why (recorded on the run, its tasks and in the audit log).
    #[schemars(length(max = crate::limits::MESSAGE_CHARS))]
    pub reason: Option<String>,
}

async fn pipeline_run_cancel(
    c: Coordinator,
    i: CancelInput,
    call: Call,
) -> Result<RunResult, Failure> {
    let actor = call.actor.clone();
    let run = c
        .blocking(move |c| {
            c.pipelines()
                .cancel_run(&i.run_id, i.reason.as_deref(), &actor)
        })
        .await?
        .map_err(|e| failure("pipeline_run_cancel", e))?;
    Ok(result(&c, run, WaitEnd::NoWait))
}

/// The result for a run as it stands, with a message saying what to do next.
fn result(c: &Coordinator, run: Run, wait: WaitEnd) -> RunResult {
    let warnings: Vec<String> = if run.status == RunStatus::Running {
        match c.pipelines().unserved(&run) {
            Ok(missing) => missing
                .into_iter()
                .map(|(cap, stages)| {
                    format!(
                        "no registered agent offers capability {cap:?}, which stage(s) {} need: they wait in the queue until such an agent registers (agent_register)",
                        stages.join(", ")
                    )
                })
                .collect(),
            Err(e) => vec![format!("could not check the agents for this run: {e}")],
        }
    } else {
        Vec::new()
    };
    let progress = describe_progress(&run);
    let mut message = match run.status {
        RunStatus::Running => format!(
            "Run {} of {} v{} is running: {progress}.",
            run.id, run.pipeline_name, run.version
        ),
        RunStatus::Completed => format!(
            "Run {} of {} v{} completed: {progress} in {:.1}s.",
            run.id, run.pipeline_name, run.version, run.duration_seconds
        ),
        RunStatus::Failed | RunStatus::Cancelled => format!(
            "Run {} of {} v{} {}: {}. {progress}.",
            run.id,
            run.pipeline_name,
            run.version,
            run.status,
            run.error.as_deref().unwrap_or("no reason recorded")
        ),
    };
    if run.status == RunStatus::Running {
        for id in &run.awaiting_approvals {
            message.push_str(&format!(
                " Approval {id} waits for a person: approval_request with approval_id {id} asks again"
            ));
            match c.settings().cli_prefix() {
                Some(prefix) => message.push_str(&format!(
                    ", or a person runs `{prefix} approvals approve {id}`."
                )),
                None => message.push('.'),
            }
        }
        message.push_str(&match wait {
            WaitEnd::ClientCancelled => {
                " The wait was cancelled; the run goes on. pipeline_run_get with wait_seconds waits again.".to_string()
            }
            _ => format!(
                " pipeline_run_get with run_id {} and wait_seconds waits for it (progress notifications included); subscribe to {} for updates.",
                run.id, run.resource_uri
            ),
        });
    }
    for w in &warnings {
        message.push_str(&format!(" Warning: {w}."));
    }
    RunResult {
        run_id: run.id.clone(),
        status: run.status,
        wait,
        message,
        warnings,
        run,
    }
}
