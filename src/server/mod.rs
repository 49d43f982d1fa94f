//! The MCP server: this file is the rmcp `ServerHandler` (list and route tools, audit every
//! call, resources and subscriptions) and nothing else. Beside it: the shared state it works
//! on (`coordinator.rs`), one router file per domain (`approvals.rs`, `queue.rs`,
//! `pipelines.rs`, ...) with the tool plumbing they share (`tool.rs`, `registry.rs`,
//! `schema.rs`, `gate.rs`), the stdio front (`relay.rs`, `jsonrpc.rs`, `session.rs`), how a
//! server runs and stops (`lifecycle.rs`) and what runs beside the requests (`workers.rs`,
//! `audit_writer.rs`). May depend on every domain and on rmcp; nothing below it depends on it.

mod access;
mod approvals;
mod assessments;
mod audit_writer;
mod coordinator;
mod gate;
pub mod http;
mod http_sessions;
mod instances;
mod jsonrpc;
mod lifecycle;
mod listeners;
mod pipelines;
mod queue;
mod registry;
mod relay;
mod remediations;
mod report;
mod resources;
mod schema;
pub mod session;
mod system;
pub mod tool;
mod toolsets;
mod workers;

use std::time::Instant;

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CancelTaskParams, CustomRequest,
    CustomResult, GetTaskParams, GetTaskResult, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ResultType, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::{Action, NewEvent, Outcome};
use crate::store::budget::{self, Budget};
use session::Call;

use coordinator::FastClient;
pub use coordinator::{Coordinator, StartError, all_tools, tool_permissions};
pub use lifecycle::{Stopped, run, supported_versions};

/// What the server tells clients about itself at initialize / discover.
const INSTRUCTIONS: &str = "mcp-coordinator coordinates MCP setups, worker agents, tasks, \
pipelines and child MCP servers. Every action that changes something waits for a person's \
approval. Start with coordinator_status; audit_query shows what happened and audit_verify \
proves the log is intact.";

impl ServerHandler for Coordinator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_tasks()
                .build(),
        )
        .with_server_info(
            Implementation::new("mcp-coordinator", env!("CARGO_PKG_VERSION"))
                .with_title("MCP Coordinator"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.bind_toolsets(&context.extensions);
        let modern =
            session::era_of(context.protocol_version().as_ref()) == session::Era::Stateless;
        let principal = session::principal_of(&context);
        let mut result = ListToolsResult::with_all_items(self.offered_tools(principal.as_ref()));
        result.result_type = Some(ResultType::COMPLETE);
        // The list changes as child instances start and stop (`tools/list_changed` says when),
        // so stateless clients are told not to reuse it.
        result.ttl_ms = modern.then_some(0);
        result.cache_scope = modern.then_some(CacheScope::Public);
        Ok(result)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        // Runs are resources: a principal that may not read runs is shown none.
        let principal = session::principal_of(&context);
        if self
            .check_as_tool(principal.as_ref(), "resources/list", RUN_TOOL)
            .is_err()
        {
            return Ok(ListResourcesResult::with_all_items(Vec::new()));
        }
        resources::list(self).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = session::principal_of(&context);
        self.check_as_tool(principal.as_ref(), "resources/read", RUN_TOOL)?;
        resources::read(self, &request.uri).await.map(Into::into)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = session::principal_of(&context);
        self.check_as_tool(principal.as_ref(), "resources/subscribe", RUN_TOOL)?;
        let run_id = resources::check(self, &request.uri).await?;
        let stop = CancellationToken::new();
        let session = session::session_key(&context.extensions);
        self.listeners()
            .subscribe(&session, &request.uri, stop.clone());
        self.workers().spawn(resources::watch_run(
            self.clone(),
            run_id,
            resources::Target::Peer(context.peer.clone()),
            stop,
        ));
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let session = session::session_key(&context.extensions);
        self.listeners().unsubscribe(&session, &request.uri);
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = SubscriptionFilter::new();
        accepted.tools_list_changed = requested.tools_list_changed.filter(|t| *t);
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|u| resources::run_id_of(u).is_some())
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let _listening = (context.accepted().tools_list_changed == Some(true))
            .then(|| self.listeners().add_sink(context.sink().clone()));
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        // A principal that may not read runs is told nothing about them.
        let principal = session::principal_of(context.request_context());
        let runs = self
            .check_as_tool(principal.as_ref(), "subscriptions/listen", RUN_TOOL)
            .is_ok();
        let uris = match runs {
            true => context.accepted().resource_subscriptions.clone(),
            false => None,
        };
        for uri in uris.unwrap_or_default() {
            if let Some(id) = resources::run_id_of(&uri) {
                self.workers().spawn(resources::watch_run(
                    self.clone(),
                    id.to_string(),
                    resources::Target::Sink(context.sink().clone()),
                    stop.child_token(),
                ));
            }
        }
        context.cancelled().await;
        Ok(())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let principal = session::principal_of(&context);
        self.check_as_tool(principal.as_ref(), "tasks/get", RUN_TOOL)?;
        pipelines::get_task(self, &request.task_id).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let call = Call::from_context(&context, self);
        self.check_as_tool(
            call.principal.as_ref(),
            "tasks/cancel",
            "pipeline_run_cancel",
        )?;
        pipelines::cancel_task(self, &request.task_id, call.actor).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.inner.tools.definition(name).or_else(|| {
            self.inner
                .instances
                .resolve_exposed(name)
                .and_then(|t| t.ok())
                .map(|t| t.tool.tool.clone())
        })
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        // The fast path is stdio's alone: an HTTP session must not become its client.
        if session::over_http(&context.extensions) {
            self.listeners().add_peer(context.peer);
            return;
        }
        if let Some(info) = context.peer.peer_info() {
            let _ = self.inner.fast_client.set(FastClient {
                // Stdio: no principal.
                actor: session::client_actor(
                    format!("{}/{}", info.client_info.name, info.client_info.version),
                    None,
                ),
                protocol_version: info.protocol_version.to_string(),
            });
        }
        self.listeners().add_peer(context.peer);
    }

    /// Methods rmcp does not know, and methods it knows whose params it could not read.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        Err(jsonrpc::custom_request_error(
            &request.method,
            request.params.as_ref(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        mut context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        self.bind_toolsets(&context.extensions);
        let name = request.name.to_string();
        let quiet = session::Quiet::default();
        context.extensions.insert(quiet.clone());
        let call = Call::from_context(&context, self);
        // Only a bounded copy is kept for the audit event (see `audit_call`).
        let max = self.inner.settings.config.limits.audit_arguments();
        let (arguments, size) = match &request.arguments {
            Some(a) => {
                let (copy, size) = crate::limits::audit_copy(a, max);
                (Some(copy), size)
            }
            None => (None, 0),
        };
        let large = size > LARGE_REQUEST;
        // One lock-wait budget for everything this call does (store/budget.rs).
        let budget = Budget::for_call();
        let route = self.inner.tools.route(&name);
        // A child's tool is resolved once, for the toolset check and the call.
        let target = route.is_none().then(|| self.proxy_target(&name)).flatten();
        let known = route.is_some() || target.is_some();
        // Over HTTP, a tool the principal's roles do not permit is refused before anything
        // else (its toolset is beside the point); the refusal is audited as any call is.
        let lacking = call
            .principal
            .as_ref()
            .and_then(|p| Some((p, self.lacking(Some(p), route, target.is_some())?)));
        let result = if let Some((principal, permission)) = lacking {
            Ok(access::refused(&name, permission, principal)
                .into_result()
                .into())
        } else if let Some(off) = self.toolset_off(&name, route, target.is_some()) {
            Ok(toolsets::refused(&name, &off).into_result().into())
        } else if let Some(route) = route {
            budget::scope(
                budget,
                (route.call)(ToolCallContext::new(self, request, context)),
            )
            .await
        } else if let Some(target) = target {
            let mut call = call.clone();
            call.request_state = request.request_state.clone();
            call.input_responses = request.input_responses.clone();
            // Boxed: inline, this future's state would size every tool call's future, which
            // rmcp and tokio move by value several times per request.
            Box::pin(budget::scope(
                budget,
                instances::call_exposed(self, target, request.arguments, &call),
            ))
            .await
        } else {
            Err(self.unknown_tool(&name))
        };
        let (outcome, error) = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => {
                let error = r.structured_content.as_ref();
                let code = error.and_then(|s| s.get("code"));
                // Refused arguments are results the model can correct, but still a refused
                // call, as an unknown tool is: outcome `invalid`, with the message.
                if code == Some(&json!(tool::ErrorCode::InvalidArgument)) {
                    (
                        Outcome::Invalid,
                        error.and_then(|s| s.get("message")).cloned(),
                    )
                } else {
                    (Outcome::Error, code.cloned())
                }
            }
            Ok(_) if quiet.is_set() => {
                self.count_call(&name, known, Outcome::Ok, started);
                return result;
            }
            Ok(_) => (Outcome::Ok, None),
            Err(e) => (Outcome::Invalid, Some(json!(e.message))),
        };
        self.count_call(&name, known, outcome, started);
        let mut detail = json!({
            "arguments": arguments,
            "duration_us": started.elapsed().as_micros() as u64,
            "protocol_version": call.protocol_version,
            "era": call.era,
            "session": call.session_id,
            "os_user": self.inner.os_user,
            "error": error,
        });
        if let Some((_, permission)) = lacking {
            detail["permission_missing"] = json!(permission);
        }
        let event = NewEvent {
            actor: call.actor.clone(),
            action: Action::ToolCall,
            subject: name,
            outcome,
            detail,
            critical: false,
        };
        self.audit_call(event);
        if large {
            tool::release_memory_soon();
        }
        result
    }
}

impl Coordinator {
    /// Counts a tool call for `/metrics`; a name that is no tool counts as `unknown`, so that
    /// a client cannot grow the label set without bound.
    fn count_call(&self, name: &str, known: bool, outcome: Outcome, started: Instant) {
        let tool = if known { name } else { "unknown" };
        self.inner
            .tool_calls
            .record(tool, outcome, started.elapsed());
    }
}

/// The tool whose permission reading a pipeline run by other means needs (`tasks/get`,
/// resources).
const RUN_TOOL: &str = "pipeline_run_get";

/// Arguments larger than this leave freed memory behind worth giving back after the call.
const LARGE_REQUEST: usize = 1 << 20;
