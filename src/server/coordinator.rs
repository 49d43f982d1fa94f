//! The coordinator's shared state: one service per domain, the tool registry and toolsets,
//! the audit queue and the background workers; how it is built from the settings, and the
//! helpers the handler (`mod.rs`) and the tool routers share.

use std::sync::Arc;
use std::time::Instant;

use rmcp::ErrorData;
use rmcp::model::{RequestStateCodec, RequestStateError, Tool};
use serde_json::json;

use super::{
    access, approvals, assessments, audit_writer, instances, listeners, pipelines, queue, registry,
    remediations, system, tool, toolsets, workers,
};
use crate::agent::{AgentService, TokenError, TokenKeys};
use crate::approval::ApprovalService;
use crate::assessment::AssessmentService;
use crate::audit::{AuditLog, NewEvent};
use crate::auth::Principal;
use crate::config::{Settings, ToolGroup, Toolset};
use crate::console::metrics::ToolCalls;
use crate::fleet::{Capabilities, FleetService, Identity};
use crate::instance::InstanceService;
use crate::pipeline::PipelineService;
use crate::remediation::RemediationService;
use crate::secret::SecretStore;
use crate::store::Store;
use crate::store::budget;
use crate::task::TaskService;

/// Shared state of one coordinator process. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    pub(super) inner: Arc<Inner>,
    /// The toolsets of the connection this value serves, once bound (`bind_toolsets`): an
    /// HTTP session's own, or a stateless HTTP caller's. Unbound (stdio), the process's.
    scope: Arc<std::sync::OnceLock<Arc<toolsets::Toolsets>>>,
}

pub(super) struct Inner {
    pub(super) audit: AuditLog,
    pub(super) approvals: ApprovalService,
    pub(super) tasks: TaskService,
    pub(super) pipelines: PipelineService,
    pub(super) assessments: AssessmentService,
    pub(super) remediations: RemediationService,
    pub(super) instances: InstanceService,
    /// This process's place among the coordinators sharing the database.
    pub(super) fleet: FleetService,
    /// Clients to tell when the tool list changes, and legacy resource subscriptions, of
    /// every session this process serves.
    pub(super) listeners: listeners::Listeners,
    /// Tool-call audit events, written in batches off the calls' path.
    pub(super) audit_queue: audit_writer::AuditQueue,
    /// Everything that runs beside the requests, and how it stops.
    pub(super) workers: Arc<workers::Workers>,
    /// The initialize-era client of this stdio session, once initialized: the fast path of
    /// proxied calls serves only it.
    pub(super) fast_client: std::sync::OnceLock<FastClient>,
    /// Seals MRTR `requestState` values. The key is random per process: a state sealed by one
    /// coordinator process is refused by every other.
    pub(super) codec: RequestStateCodec,
    pub(super) settings: Settings,
    pub(super) started: Instant,
    /// Microseconds after `started` of the client's last line on stdin.
    pub(super) client_active_us: std::sync::atomic::AtomicU64,
    /// Set once rmcp has answered the client's first request (the session is up).
    pub(super) answered: tokio::sync::watch::Sender<bool>,
    pub(super) session_id: String,
    /// The OS user running this process (`NAME@HOST`): who launched the assistant.
    pub(super) os_user: String,
    pub(super) tools: registry::Registry,
    /// The toolsets the stdio connection is offered.
    pub(super) toolsets: toolsets::Toolsets,
    /// Over stateless HTTP (no connection to keep a choice in): each principal's toolsets, by
    /// subject.
    principal_toolsets:
        std::sync::Mutex<std::collections::HashMap<String, Arc<toolsets::Toolsets>>>,
    /// Tool calls and their latency by tool, shared with this process's console (`/metrics`).
    pub(super) tool_calls: Arc<ToolCalls>,
}

/// The most stateless principals whose toolsets choice is kept (see `bind_toolsets`).
const MAX_PRINCIPAL_TOOLSETS: usize = 4096;

/// Who the initialize-era client is, for the audit records of fast-path calls.
pub(super) struct FastClient {
    pub(super) actor: crate::audit::Actor,
    pub(super) protocol_version: String,
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

/// Every tool of this build with the permission a principal needs to see and call it, sorted
/// by name (the tests derive each role's tool list from it).
pub fn tool_permissions() -> Vec<(&'static str, crate::auth::Permission)> {
    let mut tools: Vec<_> = all_routes()
        .iter()
        .map(|r| (r.name(), r.permission()))
        .collect();
    tools.sort_by_key(|(name, _)| *name);
    tools
}

/// The tool definitions (name, description, schemas, annotations) of every tool this build
/// offers, enabled or not, sorted by name. Used by `schemas/` generation and its drift test.
pub fn all_tools() -> Vec<Tool> {
    Vec::clone(&registry::Registry::new(all_routes(), &[]).definitions())
}

impl Coordinator {
    /// A coordinator for the database behind `audit`; it counts its tool calls into
    /// `tool_calls`, which the console beside it shows at `/metrics`.
    pub fn new(
        audit: AuditLog,
        settings: Settings,
        tool_calls: Arc<ToolCalls>,
    ) -> Result<Self, StartError> {
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
        let fleet = FleetService::new(
            audit.store().clone(),
            Identity::this_process(
                &session_id,
                Capabilities {
                    toolsets: Toolset::BUILT_IN
                        .into_iter()
                        .filter(|t| tools.toolset_size(*t).0 > 0)
                        .map(|t| t.as_str().to_string())
                        .collect(),
                    instance_types: settings.config.instance_types.keys().cloned().collect(),
                },
                settings
                    .config
                    .tools
                    .toolsets
                    .iter()
                    .map(|t| t.as_str().to_string())
                    .collect(),
            ),
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
                fleet,
                listeners: listeners::Listeners::default(),
                audit_queue: audit_writer::AuditQueue::new(),
                workers: Arc::default(),
                fast_client: std::sync::OnceLock::new(),
                codec,
                settings,
                started: Instant::now(),
                client_active_us: std::sync::atomic::AtomicU64::new(0),
                answered: tokio::sync::watch::Sender::new(false),
                session_id,
                os_user: crate::audit::Actor::os_user().id,
                toolsets: offered,
                principal_toolsets: std::sync::Mutex::default(),
                tools,
                tool_calls,
            }),
            scope: Arc::default(),
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

    /// This process's place in the fleet: `cli::serve` joins and leaves, the workers
    /// heartbeat, `coordinator_status` lists the others.
    pub fn fleet(&self) -> &FleetService {
        &self.inner.fleet
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

    /// This process's tool-call figures.
    pub fn tool_calls(&self) -> &Arc<ToolCalls> {
        &self.inner.tool_calls
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

    pub(super) fn listeners(&self) -> &listeners::Listeners {
        &self.inner.listeners
    }

    /// The toolsets of the connection this value serves (see `bind_toolsets`).
    pub(super) fn toolsets(&self) -> &toolsets::Toolsets {
        self.scope.get().map_or(&self.inner.toolsets, |t| t)
    }

    /// This coordinator for one HTTP session or stateless request (rmcp asks for one per
    /// each): the same state, with toolsets of its own once bound.
    pub fn for_http(&self) -> Self {
        Coordinator {
            inner: self.inner.clone(),
            scope: Arc::default(),
        }
    }

    /// Binds the toolsets of the connection a request arrived on, before anything reads them:
    /// an initialize-era HTTP session gets its own (this value serves that session alone);
    /// a stateless HTTP request gets its principal's, kept across its requests. Stdio keeps
    /// the process's: one connection per process.
    pub(super) fn bind_toolsets(&self, extensions: &rmcp::model::Extensions) {
        let Some(parts) = extensions.get::<http::request::Parts>() else {
            return;
        };
        if self.scope.get().is_some() {
            return;
        }
        let initial = &self.inner.settings.config.tools.toolsets;
        let principal = parts.extensions.get::<crate::auth::Principal>();
        let sets = match principal {
            Some(p) if !parts.headers.contains_key("mcp-session-id") => {
                let mut kept = self
                    .inner
                    .principal_toolsets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // A choice is a convenience: past this many principals they are forgotten (each
                // starts again from the configured toolsets) rather than kept without bound.
                if kept.len() >= MAX_PRINCIPAL_TOOLSETS {
                    kept.clear();
                }
                kept.entry(p.key())
                    .or_insert_with(|| Arc::new(toolsets::Toolsets::new(initial)))
                    .clone()
            }
            _ => Arc::new(toolsets::Toolsets::new(initial)),
        };
        let _ = self.scope.set(sets);
    }

    /// How many tools `toolset` holds here, and whether the config switched some off.
    pub(super) fn toolset_size(&self, toolset: crate::config::Toolset) -> (usize, bool) {
        self.inner.tools.toolset_size(toolset)
    }

    /// The tools this connection is offered now: the enabled toolsets' and the `toolsets`
    /// tool, then the tools of the running children whose toolset is on; over HTTP only those
    /// `principal` may call.
    pub(super) fn offered_tools(&self, principal: Option<&Principal>) -> Vec<Tool> {
        let sets = self.toolsets();
        let mut tools = self.inner.tools.definitions_where(|r| {
            access::may(principal, r.permission())
                && (r.name() == toolsets::TOOL || sets.shows(r.group()))
        });
        if self.instances_enabled() && access::may(principal, access::CHILD_TOOLS) {
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
    pub(super) fn shows_child_tool(&self, name: &str) -> bool {
        crate::instance::policy::split_exposed(name)
            .is_some_and(|(instance, _)| self.toolsets().shows_child(instance))
    }

    /// How many tools [`Coordinator::offered_tools`] would list, without building their
    /// definitions (which a cold start defers to the first `tools/list`): the enabled
    /// toolsets' sizes, the `toolsets` tool, and the shown children's tools.
    pub(super) fn offered_count(&self, principal: Option<&Principal>) -> usize {
        let (sets, _) = self.toolsets().enabled();
        let own: usize = match principal {
            None => {
                sets.iter()
                    .map(|t| self.inner.tools.toolset_size(*t).0)
                    .sum::<usize>()
                    + 1
            }
            Some(_) => self.inner.tools.count_where(|r| {
                access::may(principal, r.permission())
                    && (r.name() == toolsets::TOOL || sets.contains(&r.group().toolset()))
            }),
        };
        let children = if self.instances_enabled() && access::may(principal, access::CHILD_TOOLS) {
            self.inner
                .instances
                .exposed_tools()
                .iter()
                .filter(|t| self.shows_child_tool(&t.name))
                .count()
        } else {
            0
        };
        own + children
    }

    /// Refuses a request that is no tool call but reads or changes what `tool` does (a
    /// pipeline run as an MCP task or a resource), unless `principal` may call `tool`; a tool
    /// the config switched off permits nothing over HTTP.
    pub(super) fn check_as_tool(
        &self,
        principal: Option<&Principal>,
        method: &str,
        tool: &str,
    ) -> Result<(), ErrorData> {
        let Some(p) = principal else { return Ok(()) };
        let permission = self
            .inner
            .tools
            .route(tool)
            .map_or(crate::auth::Permission::Admin, |r| r.permission());
        if p.may(permission) {
            Ok(())
        } else {
            Err(access::refused_request(method, tool, permission, p))
        }
    }

    /// The permission `principal` lacks to call `name`, if any: `route` is its route if it is
    /// one of ours, `child` whether it names a running child's tool. Always `None` on stdio.
    pub(super) fn lacking(
        &self,
        principal: Option<&Principal>,
        route: Option<&tool::Route>,
        child: bool,
    ) -> Option<crate::auth::Permission> {
        let needed = match route {
            Some(r) => r.permission(),
            None if child => access::CHILD_TOOLS,
            None => return None,
        };
        (!access::may(principal, needed)).then_some(needed)
    }

    /// Whether the config leaves the instances group on (child tools are offered and routed).
    pub(super) fn instances_enabled(&self) -> bool {
        !self
            .inner
            .settings
            .config
            .tools
            .disabled_groups
            .contains(&ToolGroup::Instances)
    }

    /// The target of `<instance>__<tool>`, unless the instances group is switched off.
    pub(super) fn proxy_target(
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
    pub(super) fn toolset_off(
        &self,
        name: &str,
        route: Option<&tool::Route>,
        child: bool,
    ) -> Option<String> {
        if let Some(route) = route {
            let group = route.group();
            return (name != toolsets::TOOL && !self.toolsets().shows(group))
                .then(|| group.toolset().as_str().to_string());
        }
        let (instance, _) = crate::instance::policy::split_exposed(name)?;
        (child && !self.toolsets().shows_child(instance)).then(|| toolsets::child_toolset(instance))
    }

    pub(super) fn unknown_tool(&self, name: &str) -> ErrorData {
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
    pub(super) fn audit_call(&self, mut event: NewEvent) {
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
    pub(super) fn unaudited_calls(&self) -> Option<audit_writer::Unaudited> {
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

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the MCP request-state codec: {0}")]
    Codec(#[from] RequestStateError),
    #[error(transparent)]
    Token(#[from] TokenError),
}
