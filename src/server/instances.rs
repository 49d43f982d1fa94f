//! Child MCP instance tools: the catalog, start/list/get/stop/restart, `instance_call_tool`,
//! `instance_tool_review` (a person approves a changed tool definition), and the proxy that
//! forwards `<instance>__<tool>` calls, asking a person first for gated tools.

use rmcp::model::{CallToolResponse, CallToolResult, JsonObject};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::gate::{self, Passage};
use super::session::Call;
use super::tool::{ErrorCode, Failure, Reply, Route, ToolError, route, route_with_input, spec};
use crate::approval::State;
use crate::auth::Permission;
use crate::config::ToolGroup;
use crate::instance::gates;
use crate::instance::policy::ToolAccess;
use crate::instance::{InstanceError, InstanceView, Overrides, StartRequest, Target, TypeView};

const G: ToolGroup = ToolGroup::Instances;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            spec(
                "instance_types",
                Permission::Instances,
                "Instance types",
                include_str!("../../tools/instance_types.md"),
                G,
                true,
                false,
                true,
            ),
            instance_types,
        ),
        route(
            spec(
                "instance_start",
                Permission::Instances,
                "Start an instance",
                include_str!("../../tools/instance_start.md"),
                G,
                false,
                false,
                false,
            ),
            instance_start,
        ),
        route(
            spec(
                "instance_list",
                Permission::Instances,
                "List instances",
                include_str!("../../tools/instance_list.md"),
                G,
                true,
                false,
                true,
            ),
            instance_list,
        ),
        route(
            spec(
                "instance_get",
                Permission::Instances,
                "Get an instance",
                include_str!("../../tools/instance_get.md"),
                G,
                true,
                false,
                true,
            ),
            instance_get,
        ),
        route(
            spec(
                "instance_stop",
                Permission::Instances,
                "Stop an instance",
                include_str!("../../tools/instance_stop.md"),
                G,
                false,
                true,
                true,
            ),
            instance_stop,
        ),
        route(
            spec(
                "instance_restart",
                Permission::Instances,
                "Restart an instance",
                include_str!("../../tools/instance_restart.md"),
                G,
                false,
                true,
                false,
            ),
            instance_restart,
        ),
        route_with_input(
            spec(
                "instance_call_tool",
                // The same as `<instance>__<tool>`, which calls the same tools.
                super::access::CHILD_TOOLS,
                "Call a child tool",
                include_str!("../../tools/instance_call_tool.md"),
                G,
                false,
                true,
                false,
            ),
            instance_call_tool,
        ),
        route_with_input(
            spec(
                "instance_tool_review",
                Permission::Instances,
                "Review a quarantined tool",
                include_str!("../../tools/instance_tool_review.md"),
                G,
                false,
                false,
                false,
            ),
            instance_tool_review,
        ),
    ]
}

/// An instance error as a tool failure ([`IntoFault`](crate::fault::IntoFault) is next to
/// the error): none of them names an argument, so the tool's name is not needed.
fn failure(e: InstanceError) -> Failure {
    super::tool::failure("", e)
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TypesOutput {
    pub types: Vec<TypeView>,
    /// Where the catalog comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
}

async fn instance_types(c: Coordinator, _i: Empty, _call: Call) -> Result<TypesOutput, Failure> {
    let types = c.quick(|c| c.instances().types()).map_err(failure)?;
    Ok(TypesOutput {
        types,
        config_file: c
            .settings()
            .config_path
            .as_ref()
            .map(|p| p.display().to_string()),
    })
}

/// Arguments of `instance_start`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartInput {
    /// The instance type, from `instance_types`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The instance's name: 1 to 24 of a-z, 0-9, single `-` or `_`, starting with a letter. Its
    /// tools appear as `<name>__<tool>`. Default: the type's name (or `<type>-2`, ...).
    pub name: Option<String>,
    /// Other values for the environment variables the type lists as `overridable`.
    #[serde(default)]
    pub overrides: Overrides,
    /// Seconds until the instance is stopped as `expired` (default: the type's `ttl_seconds`).
    #[schemars(range(min = crate::limits::INSTANCE_TTL_SECONDS.min, max = crate::limits::INSTANCE_TTL_SECONDS.max))]
    pub ttl_seconds: Option<u64>,
}

async fn instance_start(
    c: Coordinator,
    i: StartInput,
    call: Call,
) -> Result<InstanceView, Failure> {
    let req = StartRequest {
        type_name: i.type_name,
        name: i.name,
        overrides: i.overrides,
        ttl_seconds: i.ttl_seconds,
    };
    c.instances().start(req, &call.actor).await.map_err(failure)
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInput {
    /// Include instances that ended (stopped, expired, failed). Default false.
    #[serde(default)]
    pub all: bool,
    /// At most this many, newest first (default 100).
    #[schemars(range(min = crate::limits::INSTANCE_PAGE.min, max = crate::limits::INSTANCE_PAGE.max))]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListOutput {
    pub instances: Vec<InstanceView>,
    /// This coordinator process (`host:pid:session`): instances with another owner are run
    /// by another process sharing the database.
    pub this_coordinator: String,
}

async fn instance_list(c: Coordinator, i: ListInput, _call: Call) -> Result<ListOutput, Failure> {
    let limit = i.limit.unwrap_or(100).clamp(
        crate::limits::INSTANCE_PAGE.min,
        crate::limits::INSTANCE_PAGE.max,
    );
    let instances = c
        .quick(|c| c.instances().list(i.all, limit))
        .map_err(failure)?;
    Ok(ListOutput {
        instances,
        this_coordinator: c.instances().owner().id.clone(),
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceInput {
    /// The instance's name (or id).
    pub instance: String,
}

async fn instance_get(
    c: Coordinator,
    i: InstanceInput,
    _call: Call,
) -> Result<InstanceView, Failure> {
    c.quick(|c| c.instances().get(&i.instance)).map_err(failure)
}

async fn instance_stop(
    c: Coordinator,
    i: InstanceInput,
    call: Call,
) -> Result<InstanceView, Failure> {
    c.instances()
        .stop(&i.instance, &call.actor)
        .await
        .map_err(failure)
}

async fn instance_restart(
    c: Coordinator,
    i: InstanceInput,
    call: Call,
) -> Result<InstanceView, Failure> {
    c.instances()
        .restart(&i.instance, &call.actor)
        .await
        .map_err(failure)
}

/// Arguments of `instance_call_tool`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallInput {
    /// The instance's name.
    pub instance: String,
    /// The child's own tool name (as `instance_get` lists it under `tool`).
    pub tool: String,
    /// The tool's arguments.
    pub arguments: Option<JsonObject>,
    /// For a tool that needs approval, when the person cannot be asked in this client:
    /// seconds to wait for a decision made at the CLI (0 to 3600, default 0).
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

/// What `instance_call_tool` returns: the child's result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CallOutput {
    pub instance: String,
    pub tool: String,
    /// Whether the child reported the call as failed.
    pub is_error: bool,
    /// The child's content blocks, as it sent them.
    pub content: Vec<Value>,
    /// The child's structured content, if any.
    pub structured_content: Option<Value>,
    /// The approval the call went through, for a gated tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

async fn instance_call_tool(
    c: Coordinator,
    i: CallInput,
    call: Call,
) -> Result<Reply<CallOutput>, Failure> {
    let target = c
        .instances()
        .resolve(&i.instance, &i.tool)
        .map_err(failure)?;
    let reply = proxy(
        &c,
        "instance_call_tool",
        target,
        i.arguments,
        &call,
        i.wait_seconds,
    )
    .await?;
    Ok(match reply {
        Reply::Done((r, approval_id)) => Reply::Done(CallOutput {
            instance: i.instance,
            tool: i.tool,
            is_error: r.is_error == Some(true),
            content: r
                .content
                .iter()
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
                .collect(),
            structured_content: r.structured_content,
            approval_id,
        }),
        Reply::InputRequired(x) => Reply::InputRequired(x),
        Reply::Task(t) => Reply::Task(t),
    })
}

/// Handles a `tools/call` of `<instance>__<tool>`.
pub(super) async fn call_exposed(
    c: &Coordinator,
    target: Result<Target, InstanceError>,
    arguments: Option<JsonObject>,
    call: &Call,
) -> Result<CallToolResponse, rmcp::ErrorData> {
    let reply = match target {
        Ok(t) => {
            let name = t.tool.exposed.clone();
            proxy(c, &name, t, arguments, call, None).await
        }
        Err(e) => Err(failure(e)),
    };
    Ok(match reply {
        Ok(Reply::Done((mut r, _))) => {
            // The child's result was parsed from an older-era reply without `resultType`;
            // 2026-07-28 clients require it (rmcp clears it again for older peers).
            r.result_type = Some(rmcp::model::ResultType::COMPLETE);
            CallToolResponse::Complete(r)
        }
        Ok(Reply::InputRequired(x)) => x.into(),
        Ok(Reply::Task(t)) => CallToolResponse::Task(t),
        Err(Failure::Domain(e)) => CallToolResponse::Complete(e.into_result()),
        // A refused requestState is a JSON-RPC error, as on every other tool.
        Err(Failure::Protocol(e)) => return Err(e),
    })
}

/// Forwards a call to a child, passing the gate first when the tool needs approval. `tool` is
/// the MCP tool this call came through (`instance_call_tool` or `<instance>__<tool>`): only a
/// retry of that same tool may answer the question it asked.
async fn proxy(
    c: &Coordinator,
    tool: &str,
    target: Target,
    arguments: Option<JsonObject>,
    call: &Call,
    wait_seconds: Option<u64>,
) -> Result<Reply<(CallToolResult, Option<String>)>, Failure> {
    let mut approval_id = None;
    if target.tool.access == ToolAccess::Approval {
        let gate = gates::call_gate(&target, arguments.as_ref());
        let approval = match gate::pass(c, call, tool, &gate, wait_seconds).await? {
            Passage::Approved(a) => a,
            Passage::InputRequired(r, _) => return Ok(Reply::InputRequired(r)),
            Passage::Stopped(out) => {
                return Err(Failure::Domain(
                    ToolError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "The call of `{}` on instance `{}` was not forwarded: {}",
                            target.tool.original,
                            target.instance(),
                            out.message
                        ),
                    )
                    .with_details(json!({
                        "approval_id": out.approval.id,
                        "state": out.approval.state,
                        "decide_command": out.decide_command,
                    })),
                ));
            }
        };
        let (id, actor) = (approval.id.clone(), call.actor.clone());
        let consumed = c
            .blocking(move |c| c.approvals().consume(&id, &gate, &actor))
            .await?;
        if let Err(e) = consumed {
            return Err(Failure::Domain(
                ToolError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "The approval does not cover this exact call, so it was not forwarded: {e}"
                    ),
                )
                .with_details(json!({"approval_id": approval.id})),
            ));
        }
        approval_id = Some(approval.id);
    }
    let result = c
        .instances()
        .forward(&target, arguments, &call.cancel)
        .await
        .map_err(failure)?;
    Ok(Reply::Done((result, approval_id)))
}

/// Arguments of `instance_tool_review`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// The instance type whose tool is quarantined (or give `instance`).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// A live instance of that type, instead of `type`.
    pub instance: Option<String>,
    /// The child's own tool name.
    pub tool: String,
    /// When the person cannot be asked in this client: seconds to wait for a decision made at
    /// the CLI (0 to 3600, default 0).
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReviewOutput {
    #[serde(rename = "type")]
    pub type_name: String,
    pub tool: String,
    /// The approval's state: `approved` (the new definition is pinned and offered), or not.
    pub state: State,
    pub approval_id: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decide_command: Option<String>,
}

async fn instance_tool_review(
    c: Coordinator,
    i: ReviewInput,
    call: Call,
) -> Result<Reply<ReviewOutput>, Failure> {
    let type_name = match (&i.type_name, &i.instance) {
        (Some(t), None) => t.clone(),
        (None, Some(inst)) => {
            c.quick(|c| c.instances().get(inst))
                .map_err(failure)?
                .type_name
        }
        _ => {
            return Err(Failure::Domain(super::tool::invalid_field(
                "instance_tool_review",
                "type",
                "give exactly one of `type` or `instance`",
            )));
        }
    };
    let pin = c
        .quick(|c| c.instances().pending_definition(&type_name, &i.tool))
        .map_err(failure)?;
    let pending_hash = pin.pending_hash.clone().unwrap_or_default();
    let gate = gates::review_gate(&type_name, &i.tool, &pin);
    let passage = gate::pass(&c, &call, "instance_tool_review", &gate, i.wait_seconds).await?;
    let aid = passage.approval().id.clone();
    if pin.approval_id.as_deref() != Some(aid.as_str()) {
        let (t, tool) = (type_name.clone(), i.tool.clone());
        c.quick(|c| c.instances().set_pin_approval(&t, &tool, &aid))
            .map_err(failure)?;
    }
    let (state, message, decide_command) = match passage {
        Passage::InputRequired(r, _) => return Ok(Reply::InputRequired(r)),
        Passage::Stopped(out) => (out.state, out.message, out.decide_command),
        Passage::Approved(approval) => {
            let (id, actor) = (approval.id.clone(), call.actor.clone());
            c.blocking(move |c| c.approvals().consume(&id, &gate, &actor))
                .await?
                .map_err(|e| {
                    Failure::Domain(ToolError::new(
                        ErrorCode::Conflict,
                        format!("the approval does not cover the current definition: {e}"),
                    ))
                })?;
            let pinned = c
                .quick(|c| {
                    c.instances().approve_definition(
                        &type_name,
                        &i.tool,
                        &pending_hash,
                        &call.actor,
                    )
                })
                .map_err(failure)?;
            if pinned {
                c.instances().refresh_type(&type_name).await;
            }
            let by = approval
                .decision
                .as_ref()
                .map_or("a person".into(), |d| format!("{} via {}", d.by, d.via));
            let message = if pinned {
                format!(
                    "Approval {aid} was approved by {by}. The new definition of `{}` is pinned and offered again on every running instance of type `{type_name}`.",
                    i.tool
                )
            } else {
                format!(
                    "Approval {aid} was approved by {by}, but the definition changed again meanwhile, so nothing was pinned; review it again."
                )
            };
            (State::Approved, message, None)
        }
    };
    Ok(Reply::Done(ReviewOutput {
        type_name,
        tool: i.tool,
        state,
        approval_id: aid,
        message,
        decide_command,
    }))
}
