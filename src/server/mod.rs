//! The MCP server: the rmcp `ServerHandler` that lists and routes tools (one router file per
//! domain, joined here) and audits every tool call. `lifecycle.rs` serves it on stdio until
//! the client leaves or a shutdown is asked for.

mod approvals;
mod assessments;
mod audit_writer;
mod gate;
mod instances;
mod jsonrpc;
mod lifecycle;
mod pipelines;
mod queue;
mod registry;
mod relay;
mod remediations;
mod resources;
mod schema;
pub mod session;
mod system;
pub mod tool;
mod toolsets;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CancelTaskParams, CustomRequest,
    CustomResult, GetTaskParams, GetTaskResult, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, RequestStateCodec, RequestStateError, ResultType, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{
    NotificationContext, Peer, RequestContext, SubscriptionContext, SubscriptionSink,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentService, TokenError, TokenKeys};
use crate::approval::ApprovalService;
use crate::assessment::AssessmentService;
use crate::audit::{Action, AuditLog, NewEvent, Outcome};
use crate::config::{Settings, ToolGroup};
use crate::instance::InstanceService;
use crate::pipeline::PipelineService;
use crate::remediation::RemediationService;
use crate::secret::SecretStore;
use crate::store::Store;
use crate::store::budget::{self, Budget};
use crate::task::TaskService;
use session::Call;

pub use lifecycle::{Stopped, run, supported_versions};

/// What the server tells clients about itself at initialize / discover.
const INSTRUCTIONS: &str = "mcp-coordinator coordinates MCP setups, worker agents, tasks, \
pipelines and child MCP servers. Every action that changes something waits for a person's \
approval. Start with coordinator_status; audit_query shows what happened and audit_verify \
proves the log is intact.";

/// Shared state of one coordinator process. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    audit: AuditLog,
    approvals: ApprovalService,
    tasks: TaskService,
    pipelines: PipelineService,
    assessments: AssessmentService,
    remediations: RemediationService,
    instances: InstanceService,
    /// Clients to tell when the tool list changes: initialize-era peers, and 2026-07-28
    /// `subscriptions/listen` streams that asked for `tools_list_changed`.
    tool_listeners: std::sync::Mutex<(Vec<Peer<RoleServer>>, Vec<SubscriptionSink>)>,
    /// Tool-call audit events, written in batches off the calls' path.
    audit_queue: audit_writer::AuditQueue,
    /// Everything that runs beside the requests, and how it stops.
    workers: Arc<workers::Workers>,
    /// The initialize-era client of this stdio session, once initialized: the fast path of
    /// proxied calls serves only it.
    fast_client: std::sync::OnceLock<FastClient>,
    /// Legacy `resources/subscribe` subscriptions of this process, by URI.
    subscriptions: std::sync::Mutex<HashMap<String, CancellationToken>>,
    /// Seals MRTR `requestState` values. The key is random per process: a state sealed by one
    /// coordinator process is refused by every other.
    codec: RequestStateCodec,
    settings: Settings,
    started: Instant,
    /// Microseconds after `started` of the client's last line on stdin.
    client_active_us: std::sync::atomic::AtomicU64,
    /// Set once rmcp has answered the client's first request (the session is up).
    answered: tokio::sync::watch::Sender<bool>,
    session_id: String,
    /// The OS user running this process (`NAME@HOST`): who launched the assistant.
    os_user: String,
    tools: registry::Registry,
    /// The toolsets this process's connection is offered.
    toolsets: toolsets::Toolsets,
}

/// Who the initialize-era client is, for the audit records of fast-path calls.
struct FastClient {
    actor: crate::audit::Actor,
    protocol_version: String,
}

/// Every tool route of every domain. Each domain module contributes its own list.
fn all_routes() -> Vec<tool::Route> {
    let mut routes = system::routes();
    routes.extend(approvals::routes());
    routes.extend(queue::routes());
    routes.extend(pipelines::routes());
    routes.extend(assessments::routes());
    routes.extend(remediations::routes());
    routes.extend(instances::routes());
    routes.extend(toolsets::routes());
    routes
}

/// The tool definitions (name, description, schemas, annotations) of every tool this build
/// offers, enabled or not, sorted by name. Used by `schemas/` generation and its drift test.
pub fn all_tools() -> Vec<Tool> {
    Vec::clone(&registry::Registry::new(all_routes(), &[]).definitions())
}

impl Coordinator {
    pub fn new(audit: AuditLog, settings: Settings) -> Result<Self, StartError> {
        let tools = registry::Registry::new(all_routes(), &settings.config.tools.disabled_groups);
        let offered = toolsets::Toolsets::new(&settings.config.tools.toolsets);
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        let codec = RequestStateCodec::try_new(key.to_vec())?;
        let approvals = ApprovalService::new(audit.clone(), settings.config.approvals.clone());
        let keys = TokenKeys::load_or_create(&settings.data_dir)?;
        let agents = AgentService::new(
            audit.clone(),
            settings.config.agents.clone(),
            Arc::new(keys),
        );
        let tasks = TaskService::new(agents, settings.config.tasks.clone());
        let pipelines = PipelineService::new(
            tasks.clone(),
            approvals.clone(),
            settings.config.pipelines.clone(),
        );
        let assessments =
            AssessmentService::new(audit.clone(), settings.config.assessments.clone());
        let session_id = uuid::Uuid::new_v4().to_string();
        let instances = InstanceService::new(
            audit.clone(),
            SecretStore::new(audit.clone(), settings.data_dir.clone()),
            settings.config.instance_types.clone(),
            settings.config.instances.clone(),
            &session_id,
        );
        let remediations = RemediationService::new(
            audit.clone(),
            approvals.clone(),
            assessments.clone(),
            SecretStore::new(audit.clone(), settings.data_dir.clone()),
            &settings.data_dir,
            settings.exec_argv(),
        );
        Ok(Coordinator {
            inner: Arc::new(Inner {
                audit,
                approvals,
                tasks,
                pipelines,
                assessments,
                remediations,
                instances,
                tool_listeners: std::sync::Mutex::new((Vec::new(), Vec::new())),
                audit_queue: audit_writer::AuditQueue::new(),
                workers: Arc::default(),
                fast_client: std::sync::OnceLock::new(),
                subscriptions: std::sync::Mutex::new(HashMap::new()),
                codec,
                settings,
                started: Instant::now(),
                client_active_us: std::sync::atomic::AtomicU64::new(0),
                answered: tokio::sync::watch::Sender::new(false),
                session_id,
                os_user: crate::audit::Actor::os_user().id,
                toolsets: offered,
                tools,
            }),
        })
    }

    /// The owner of the background work (see `workers.rs`).
    pub(crate) fn workers(&self) -> &Arc<workers::Workers> {
        &self.inner.workers
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub fn approvals(&self) -> &ApprovalService {
        &self.inner.approvals
    }

    pub fn tasks(&self) -> &TaskService {
        &self.inner.tasks
    }

    pub fn pipelines(&self) -> &PipelineService {
        &self.inner.pipelines
    }

    pub fn assessments(&self) -> &AssessmentService {
        &self.inner.assessments
    }

    pub fn remediations(&self) -> &RemediationService {
        &self.inner.remediations
    }

    pub fn instances(&self) -> &InstanceService {
        &self.inner.instances
    }

    pub fn codec(&self) -> &RequestStateCodec {
        &self.inner.codec
    }

    pub fn store(&self) -> &Store {
        self.inner.audit.store()
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn session_id(&self) -> &str {
        &self.inner.session_id
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    pub fn enabled_tool_count(&self) -> usize {
        self.inner.tools.enabled_count()
    }

    /// Runs short store work (a few indexed reads, or one small write transaction) right here.
    /// Handing it to the blocking pool costs two thread hand-offs, more than the work itself
    /// (measured: it was most of a `coordinator_status` round trip). In WAL mode a writer only
    /// waits for another process's equally short transaction.
    pub fn quick<T>(&self, f: impl FnOnce(&Coordinator) -> T) -> T {
        f(self)
    }

    /// Runs store work that may take long (scans, verification) off the async threads, under
    /// the caller's lock-wait budget.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Coordinator) -> T + Send + 'static,
    ) -> Result<T, tool::ToolError> {
        let this = self.clone();
        let budget = budget::current();
        tokio::task::spawn_blocking(move || match budget {
            Some(budget) => budget::sync_scope(budget, || f(&this)),
            None => f(&this),
        })
        .await
        .map_err(|e| tool::ToolError::new(tool::ErrorCode::Internal, e.to_string()))
    }

    fn tool_listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, (Vec<Peer<RoleServer>>, Vec<SubscriptionSink>)> {
        self.inner
            .tool_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn toolsets(&self) -> &toolsets::Toolsets {
        &self.inner.toolsets
    }

    /// How many tools `toolset` holds here, and whether the config switched some off.
    fn toolset_size(&self, toolset: crate::config::Toolset) -> (usize, bool) {
        self.inner.tools.toolset_size(toolset)
    }

    /// The tools this connection is offered now: the enabled toolsets' and the `toolsets`
    /// tool, then the tools of the running children whose toolset is on.
    fn offered_tools(&self) -> Vec<Tool> {
        let sets = self.toolsets();
        let mut tools = self
            .inner
            .tools
            .definitions_where(|r| r.name() == toolsets::TOOL || sets.shows(r.group()));
        if self.instances_enabled() {
            tools.extend(
                self.inner
                    .instances
                    .exposed_tools()
                    .iter()
                    .filter(|t| self.shows_child_tool(&t.name))
                    .cloned(),
            );
        }
        tools
    }

    /// Whether `name` (`<instance>__<tool>`) is a tool of a child whose toolset is on.
    fn shows_child_tool(&self, name: &str) -> bool {
        crate::instance::policy::split_exposed(name)
            .is_some_and(|(instance, _)| self.toolsets().shows_child(instance))
    }

    /// How many tools [`Coordinator::offered_tools`] would list, without building their
    /// definitions (which a cold start defers to the first `tools/list`): the enabled
    /// toolsets' sizes, the `toolsets` tool, and the shown children's tools.
    fn offered_count(&self) -> usize {
        let (sets, _) = self.toolsets().enabled();
        let own: usize = sets
            .iter()
            .map(|t| self.inner.tools.toolset_size(*t).0)
            .sum();
        let children = if self.instances_enabled() {
            self.inner
                .instances
                .exposed_tools()
                .iter()
                .filter(|t| self.shows_child_tool(&t.name))
                .count()
        } else {
            0
        };
        own + 1 + children
    }

    /// Whether the config leaves the instances group on (child tools are offered and routed).
    fn instances_enabled(&self) -> bool {
        !self
            .inner
            .settings
            .config
            .tools
            .disabled_groups
            .contains(&ToolGroup::Instances)
    }

    /// The target of `<instance>__<tool>`, unless the instances group is switched off.
    fn proxy_target(
        &self,
        name: &str,
    ) -> Option<Result<crate::instance::Target, crate::instance::InstanceError>> {
        if !self.instances_enabled() {
            return None;
        }
        self.inner.instances.resolve_exposed(name)
    }

    /// The toolset to enable before `name` can be called on this connection, if it is off:
    /// `route` is its route if it is one of ours, `child` whether it names a running child's
    /// tool (`<instance>__<tool>`).
    fn toolset_off(&self, name: &str, route: Option<&tool::Route>, child: bool) -> Option<String> {
        if let Some(route) = route {
            let group = route.group();
            return (name != toolsets::TOOL && !self.toolsets().shows(group))
                .then(|| group.toolset().as_str().to_string());
        }
        let (instance, _) = crate::instance::policy::split_exposed(name)?;
        (child && !self.toolsets().shows_child(instance)).then(|| toolsets::child_toolset(instance))
    }

    fn unknown_tool(&self, name: &str) -> ErrorData {
        match self.inner.tools.disabled_group(name) {
            Some(group) => ErrorData::invalid_params(
                format!(
                    "tool `{name}` is switched off: its group `{}` is listed in tools.disabled_groups of the config file",
                    group.as_str()
                ),
                Some(json!({"tool": name, "group": group.as_str()})),
            ),
            None => ErrorData::invalid_params(
                format!(
                    "unknown tool `{name}`; tools/list shows the tools this coordinator offers"
                ),
                Some(json!({"tool": name})),
            ),
        }
    }

    /// Records one tool call's event (tool, actor, outcome, duration, redacted arguments):
    /// through the audit writer, or now when none runs. A failure to record is logged, not
    /// hidden.
    fn audit_call(&self, mut event: NewEvent) {
        // The event keeps a bounded copy of the arguments: a 1 MiB payload is the task's to
        // store, not every page of the audit log's.
        let max = self.inner.settings.config.limits.audit_arguments();
        if let Some(args) = event.detail.get_mut("arguments")
            && crate::limits::size_bound(args) > max
            && crate::limits::json_size(args) > max
        {
            *args = crate::limits::cap_for_audit(args, max);
        }
        if let Some(event) = self.inner.audit_queue.send(event)
            && let Err(e) = self.audit().record(event)
        {
            tracing::error!(error = %e, "could not record a tool call in the audit log");
        }
    }

    /// Tool calls whose audit events are not in the database (waiting, or given up), if any.
    fn unaudited_calls(&self) -> Option<audit_writer::Unaudited> {
        self.inner.audit_queue.unaudited()
    }

    /// Waits until every tool call's event queued so far is in the database (blocking: call
    /// it off the runtime). Readers of the audit log call this first, so that they see the
    /// calls made before them.
    pub(crate) fn flush_audit(&self) {
        self.inner
            .audit_queue
            .flush(std::time::Duration::from_secs(5));
    }
}

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
        let modern =
            session::era_of(context.protocol_version().as_ref()) == session::Era::Stateless;
        let mut result = ListToolsResult::with_all_items(self.offered_tools());
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
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
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
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        resources::read(self, &request.uri).await.map(Into::into)
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let run_id = resources::check(self, &request.uri).await?;
        let stop = CancellationToken::new();
        let previous = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.uri.clone(), stop.clone());
        if let Some(previous) = previous {
            previous.cancel();
        }
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
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Some(stop) = self
            .inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&request.uri)
        {
            stop.cancel();
        }
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
        if context.accepted().tools_list_changed == Some(true) {
            self.tool_listeners().1.push(context.sink().clone());
        }
        let stop = CancellationToken::new();
        let _stop_all = stop.clone().drop_guard();
        for uri in context
            .accepted()
            .resource_subscriptions
            .clone()
            .unwrap_or_default()
        {
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
        _context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        pipelines::get_task(self, &request.task_id).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let actor = Call::from_context(&context, self).actor;
        pipelines::cancel_task(self, &request.task_id, actor).await
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
        if let Some(info) = context.peer.peer_info() {
            let _ = self.inner.fast_client.set(FastClient {
                actor: crate::audit::Actor::new(
                    crate::audit::ActorKind::Client,
                    format!("{}/{}", info.client_info.name, info.client_info.version),
                ),
                protocol_version: info.protocol_version.to_string(),
            });
        }
        self.tool_listeners().0.push(context.peer);
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
        let result = if let Some(off) = self.toolset_off(&name, route, target.is_some()) {
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
            Ok(_) if quiet.is_set() => return result,
            Ok(_) => (Outcome::Ok, None),
            Err(e) => (Outcome::Invalid, Some(json!(e.message))),
        };
        let detail = json!({
            "arguments": arguments,
            "duration_us": started.elapsed().as_micros() as u64,
            "protocol_version": call.protocol_version,
            "era": call.era,
            "session": call.session_id,
            "os_user": self.inner.os_user,
            "error": error,
        });
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

/// Arguments larger than this leave freed memory behind worth giving back after the call.
const LARGE_REQUEST: usize = 1 << 20;

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the MCP request-state codec: {0}")]
    Codec(#[from] RequestStateError),
    #[error(transparent)]
    Token(#[from] TokenError),
}
