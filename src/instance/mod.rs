//! Child MCP instances: the coordinator as an MCP client of servers it starts (stdio) or reaches
//! (streamable HTTP). This module holds the service: the catalog, starting and stopping, the
//! live table the proxy routes through, tool pinning, the circuit breaker, and the views the
//! tools return. Supervision (health, restarts, TTL) is in `supervisor.rs`.
//!
//! Unlike the other domains this one uses rmcp types: it *is* an MCP client. It still never
//! sees the server side (handlers, elicitation); gating a call on approval is the server's job.

pub mod catalog;
mod fast;
pub mod gates;
mod http;
mod ledger;
mod pipe;
pub mod policy;
pub mod process;
mod reactor;
pub mod reaper;
mod redact;
pub mod status;
mod supervisor;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, JsonObject, Tool};
use rmcp::service::{Peer, RoleClient, ServiceError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::chain::{format_ts, now_ts};
use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome};
use crate::secret::SecretStore;
use crate::store::StoreError;
use crate::store::instance::{self as sql, InstanceRow, PinRow};
use catalog::{InstanceType, InstancesConfig, Piece, is_coordinator_setting, parse_template};
pub use fast::{ClientOut, FastDone, FastHooks, RmcpLines, contains};
pub use ledger::{BatchId, Ledger};
pub use pipe::{LineReader, MAX_LINE, PipeWriter};
use policy::{InjectionFlag, ToolAccess};
pub use reactor::Source;
pub use status::{PinStatus, Status};

/// Why an instance operation failed. Messages name the instance, the tool or the field.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("unknown instance type `{name}`; the catalog has: {known}")]
    UnknownType { name: String, known: String },
    #[error("{0}")]
    Invalid(String),
    #[error("an instance named `{0}` is already live; stop it first or choose another name")]
    NameTaken(String),
    #[error("this coordinator already runs {0} instances ([instances] max_instances)")]
    TooMany(u32),
    #[error("no instance `{0}`; instance_list shows them")]
    NotFound(String),
    #[error(
        "instance `{name}` is run by another coordinator process ({owner}); only that process can call or stop it"
    )]
    NotOwned { name: String, owner: String },
    #[error("instance `{name}` is {status}, not running; {hint}")]
    NotRunning {
        name: String,
        status: Status,
        hint: String,
    },
    #[error("instance `{instance}` has no tool `{tool}`; instance_get lists its tools")]
    UnknownTool { instance: String, tool: String },
    #[error("tool `{tool}` of instance `{instance}` is denied by the policy of type `{type_name}`")]
    ToolDenied {
        instance: String,
        tool: String,
        type_name: String,
    },
    #[error(
        "tool `{tool}` of instance `{instance}` is quarantined: {reason}. A person reviews it with instance_tool_review"
    )]
    ToolQuarantined {
        instance: String,
        tool: String,
        reason: String,
    },
    #[error(
        "instance `{name}` failed {failures} calls in a row: its circuit breaker is open for {retry_after_ms} ms more"
    )]
    CircuitOpen {
        name: String,
        failures: u32,
        retry_after_ms: u64,
    },
    #[error(
        "tool `{tool}` of instance `{name}` did not answer within {seconds} s; the call was cancelled"
    )]
    Timeout {
        name: String,
        tool: String,
        seconds: f64,
    },
    #[error("instance `{name}` could not start: {message}")]
    StartFailed {
        name: String,
        message: String,
        stderr: Vec<String>,
    },
    #[error("instance `{name}` could not be reached: {message}")]
    Transport { name: String, message: String },
    #[error("instance `{name}` refused the call: {message}")]
    Child {
        name: String,
        code: i32,
        message: String,
        data: Option<Value>,
    },
    #[error("the call was cancelled by the client")]
    Cancelled,
    #[error("secret store: {0}")]
    Secret(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who owns an instance: one coordinator process.
#[derive(Debug, Clone)]
pub struct Owner {
    /// `host:pid:session`.
    pub id: String,
    pub host: String,
    pub pid: u32,
}

/// Whether an `instance_start` may set `key` with `overrides.env`: only a variable the type
/// lists in `overridable`, never one that decides which code runs. (The config load already
/// refuses an `overridable` entry that is undeclared, a reference or code-deciding; the
/// reference and code checks are repeated here so that no path around the load lets one in.)
fn check_override(type_name: &str, ty: &InstanceType, key: &str) -> Result<(), InstanceError> {
    let refuse = |why: String| {
        Err(InstanceError::Invalid(format!(
            "overrides.env.{key}: {why}"
        )))
    };
    if catalog::chooses_code(key) {
        return refuse(
            "decides which program or code the child runs, so only the config file sets it".into(),
        );
    }
    if !ty.overridable.iter().any(|v| v == key) {
        let listed = if ty.overridable.is_empty() {
            "it lists none".to_string()
        } else {
            format!("it lists: {}", ty.overridable.join(", "))
        };
        return refuse(format!(
            "type `{type_name}` does not let an instance_start set {key}; the type must list it in `overridable` in the config file ({listed})"
        ));
    }
    match ty.env.get(key) {
        None => refuse(format!(
            "type `{type_name}` does not declare {key} in `env`"
        )),
        Some(t) if t.contains("${") => refuse(format!(
            "type `{type_name}` takes it from a reference ({t}); only literal values can be overridden"
        )),
        Some(_) => Ok(()),
    }
}

/// Overrides an `instance_start` may give.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Values for environment variables the type lists in `overridable` (`instance_types`
    /// shows them). Any other variable is refused, and so is every variable that decides
    /// which code runs (`PATH`, `LD_*`, `NODE_OPTIONS`, `PYTHONPATH`, …).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// What `instance_start` asks for.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    pub type_name: String,
    pub name: Option<String>,
    pub overrides: Overrides,
    pub ttl_seconds: Option<u64>,
}

/// A child tool as the coordinator offers it.
#[derive(Debug)]
pub struct ChildTool {
    /// The name the child uses.
    pub original: String,
    /// `<instance>__<part>`, what clients call.
    pub exposed: String,
    /// The definition offered to clients (renamed to `exposed`).
    pub tool: Tool,
    pub access: ToolAccess,
    pub read_only: bool,
    pub destructive: Option<bool>,
}

/// A tool that is not offered, and why.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HiddenTool {
    pub tool: String,
    /// `quarantined` (changed or flagged definition) or `denied` (policy).
    pub reason: String,
    /// For a quarantined tool: what changed or which prompt-injection markers were found.
    pub detail: String,
    pub flags: Vec<InjectionFlag>,
}

/// The tools of one connection: what is offered, and what is hidden.
#[derive(Debug, Default)]
pub struct ToolTable {
    /// By the part after the separator.
    pub by_part: HashMap<String, Arc<ChildTool>>,
    /// By the child's own name.
    pub by_original: HashMap<String, Arc<ChildTool>>,
    pub hidden: Vec<HiddenTool>,
}

/// The live connection to a running child.
#[derive(Clone)]
pub(crate) struct Conn {
    peer: Peer<RoleClient>,
    /// The child's full tool list, as last listed.
    raw: Arc<Vec<Tool>>,
    table: Arc<ToolTable>,
    /// The child's pipes for the fast path (stdio children only).
    fast: Option<Arc<fast::FastLink>>,
    /// The secret values the child was given, masked in what it sends back.
    redact: redact::Redactor,
}

/// What a supervisor is asked to do.
enum Cmd {
    Stop {
        by: Actor,
        done: oneshot::Sender<()>,
    },
    Restart {
        by: Actor,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Re-apply pins and policy to the current tool list (a definition was approved).
    Refresh { done: Option<oneshot::Sender<()>> },
}

/// Circuit breaker state of one instance.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    /// Counts probes, so a probe that ends without a verdict releases only itself.
    probe: u64,
}

impl Breaker {
    /// Ok(Some(probe)) for the half-open probe, Ok(None) for a normal call, Err(wait) while
    /// open.
    fn admit(&mut self, now: Instant) -> Result<Option<u64>, Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(Duration::from_millis(100)),
            Some(_) => {
                self.probing = true;
                self.probe += 1;
                Ok(Some(self.probe))
            }
            None => Ok(None),
        }
    }

    /// A probe that ended without a verdict (cancelled, or its caller went away): the next
    /// call may probe instead.
    fn release(&mut self, probe: u64) {
        if self.probing && self.probe == probe {
            self.probing = false;
        }
    }

    fn success(&mut self) {
        *self = Breaker {
            probe: self.probe,
            ..Breaker::default()
        };
    }

    fn failure(&mut self, threshold: u32, open: Duration, now: Instant) {
        self.failures += 1;
        if self.probing || self.failures >= threshold {
            self.open_until = Some(now + open);
        }
        self.probing = false;
    }

    fn state(&self, now: Instant) -> String {
        match self.open_until {
            Some(until) if now < until => format!(
                "open ({} failures; probe in {} ms)",
                self.failures,
                (until - now).as_millis()
            ),
            Some(_) => "half_open".into(),
            None if self.failures > 0 => format!("closed ({} recent failures)", self.failures),
            None => "closed".into(),
        }
    }
}

/// Releases a half-open probe when the attempt that holds it ends.
struct ProbeGuard<'a> {
    live: &'a Live,
    id: u64,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.live.breaker).release(self.id);
    }
}

/// One instance run by this process.
pub(crate) struct Live {
    id: String,
    name: String,
    type_name: String,
    ty: Arc<InstanceType>,
    overrides: Overrides,
    row: Mutex<InstanceRow>,
    conn: Mutex<Option<Conn>>,
    stderr: Mutex<process::StderrTail>,
    breaker: Mutex<Breaker>,
    /// When the current connection came up.
    up_since: Mutex<Option<Instant>>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl Live {
    fn row(&self) -> InstanceRow {
        lock(&self.row).clone()
    }

    fn conn(&self) -> Option<Conn> {
        lock(&self.conn).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A resolved call target: the instance, its connection, and the tool.
#[derive(Clone)]
pub struct Target {
    live: Arc<Live>,
    conn: Conn,
    pub tool: Arc<ChildTool>,
}

impl Target {
    pub fn instance(&self) -> &str {
        &self.live.name
    }
    pub fn type_name(&self) -> &str {
        &self.live.type_name
    }
    pub fn instance_id(&self) -> &str {
        &self.live.id
    }
}

/// Summary of an instance type for `instance_types`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TypeView {
    pub name: String,
    pub description: String,
    pub transport: catalog::Transport,
    /// The command line (stdio) or URL (HTTP). Secret references are shown as references.
    pub launch: String,
    /// Environment variable names the child gets (values are not shown).
    pub env: Vec<String>,
    /// The variables `instance_start` may set with `overrides.env`; no others.
    pub overridable: Vec<String>,
    /// Secrets the type needs from the store, and whether each is there.
    pub secrets: Vec<SecretNeed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    pub autostart: bool,
    pub policy: policy::ToolPolicy,
    pub limits: catalog::LimitsConfig,
    /// Live instances of this type (in any process).
    pub live_instances: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SecretNeed {
    pub name: String,
    pub present: bool,
}

/// An instance as `instance_list` and `instance_get` show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InstanceView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub status: String,
    /// The coordinator process that runs it (`host:pid:session`).
    pub owner: String,
    /// Whether this coordinator process runs it (only the owner can call or stop it).
    pub owned_here: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    pub restarts: i64,
    /// `ok`, `failing (n/threshold)`, or `unknown`.
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Tools offered through the coordinator.
    pub tools: i64,
    /// Seconds the current connection has been up (owner only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<f64>,
    /// `instance_get` only: details the owner knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<InstanceDetail>,
}

/// What only the owning process knows about an instance.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InstanceDetail {
    /// Resident memory and CPU time of the child's process group, from /proc.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The last lines the child wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// `closed`, `open (...)` or `half_open`.
    pub breaker: String,
    pub tools: Vec<ToolView>,
    pub hidden_tools: Vec<HiddenTool>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Resources {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub processes: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolView {
    /// The name to call through the coordinator.
    pub name: String,
    /// The child's own name.
    pub tool: String,
    /// `allowed` or `approval`.
    pub access: ToolAccess,
    pub read_only: bool,
}

/// Child MCP instances of this coordinator process. Cheap to clone.
#[derive(Clone)]
pub struct InstanceService {
    inner: Arc<Inner>,
}

struct Inner {
    audit: AuditLog,
    secrets: SecretStore,
    types: BTreeMap<String, Arc<InstanceType>>,
    config: InstancesConfig,
    owner: Owner,
    /// By instance name.
    live: RwLock<HashMap<String, Arc<Live>>>,
    /// Every offered child tool, sorted by name: what `tools/list` adds.
    exposed: RwLock<Arc<Vec<Tool>>>,
    /// Bumped whenever `exposed` changes.
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
    supervisors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set by the server: where fast-path answers go.
    fast: std::sync::OnceLock<FastHooks>,
    /// The thread that reads the client's stdin and every child's stdout (started on first use).
    reactor: Mutex<Option<Arc<reactor::Reactor>>>,
}

impl InstanceService {
    pub fn new(
        audit: AuditLog,
        secrets: SecretStore,
        types: BTreeMap<String, InstanceType>,
        config: InstancesConfig,
        session: &str,
    ) -> Self {
        let host = crate::audit::host_name();
        let pid = std::process::id();
        let (changed, _) = watch::channel(0);
        InstanceService {
            inner: Arc::new(Inner {
                audit,
                secrets,
                types: types.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
                config,
                owner: Owner {
                    id: format!("{host}:{pid}:{session}"),
                    host,
                    pid,
                },
                live: RwLock::new(HashMap::new()),
                exposed: RwLock::new(Arc::new(Vec::new())),
                changed,
                shutdown: CancellationToken::new(),
                supervisors: Mutex::new(Vec::new()),
                fast: std::sync::OnceLock::new(),
                reactor: Mutex::new(None),
            }),
        }
    }

    pub fn owner(&self) -> &Owner {
        &self.inner.owner
    }

    /// Notified (the counter changes) whenever the offered child tools change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Every offered child tool, sorted by exposed name.
    pub fn exposed_tools(&self) -> Arc<Vec<Tool>> {
        self.inner
            .exposed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `name` is an instance's tool name in form (`<instance>__<tool>` of a live
    /// instance here), and if so the target or why it cannot be called.
    pub fn resolve_exposed(&self, name: &str) -> Option<Result<Target, InstanceError>> {
        let (instance, part) = policy::split_exposed(name)?;
        let live = self.live_get(instance)?;
        Some(self.target(&live, |t| t.by_part.get(part).cloned(), part))
    }

    /// The target for a child tool by its own name, for `instance_call_tool`.
    pub fn resolve(&self, instance: &str, tool: &str) -> Result<Target, InstanceError> {
        match self.live_get(instance) {
            Some(live) => self.target(&live, |t| t.by_original.get(tool).cloned(), tool),
            None => Err(self.not_here(instance)),
        }
    }

    fn live_get(&self, name: &str) -> Option<Arc<Live>> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn live_all(&self) -> Vec<Arc<Live>> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Why an instance that is not live here cannot be called.
    fn not_here(&self, name: &str) -> InstanceError {
        let row = self.inner.audit.store().read(|tx| {
            sql::live_by_name(tx, name)
                .ok()
                .flatten()
                .or_else(|| sql::newest_by_name(tx, name).ok().flatten())
        });
        match row {
            Some(r) if r.owner != self.inner.owner.id && r.status.is_live() => {
                InstanceError::NotOwned {
                    name: name.into(),
                    owner: r.owner,
                }
            }
            Some(r) => InstanceError::NotRunning {
                name: name.into(),
                status: r.status,
                hint: "instance_start starts a new one".into(),
            },
            None => InstanceError::NotFound(name.into()),
        }
    }

    fn target(
        &self,
        live: &Arc<Live>,
        find: impl Fn(&ToolTable) -> Option<Arc<ChildTool>>,
        asked: &str,
    ) -> Result<Target, InstanceError> {
        let Some(conn) = live.conn() else {
            let status = live.row().status;
            return Err(InstanceError::NotRunning {
                name: live.name.clone(),
                status,
                hint: match status {
                    Status::CrashLoop => {
                        "instance_get shows its stderr; instance_restart tries again".into()
                    }
                    _ => "try again in a moment; instance_get shows its state".into(),
                },
            });
        };
        if let Some(tool) = find(&conn.table) {
            return Ok(Target {
                live: live.clone(),
                conn,
                tool,
            });
        }
        let original =
            conn.table.hidden.iter().find(|h| {
                h.tool == asked || policy::exposed_tool_part(&live.name, &h.tool) == asked
            });
        Err(match original {
            Some(h) if h.reason == "denied" => InstanceError::ToolDenied {
                instance: live.name.clone(),
                tool: h.tool.clone(),
                type_name: live.type_name.clone(),
            },
            Some(h) => InstanceError::ToolQuarantined {
                instance: live.name.clone(),
                tool: h.tool.clone(),
                reason: h.detail.clone(),
            },
            None => InstanceError::UnknownTool {
                instance: live.name.clone(),
                tool: asked.into(),
            },
        })
    }

    /// Forwards a call to the child: breaker, timeout, and retries for read-only tools.
    pub async fn forward(
        &self,
        target: &Target,
        arguments: Option<JsonObject>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, InstanceError> {
        let attempts = if target.tool.read_only {
            1 + target.live.ty.read_only_retries
        } else {
            1
        };
        self.forward_attempts(target, arguments, cancel, attempts)
            .await
    }

    /// A plain call of an allowed tool, for the fast path: the target if it is one.
    pub fn fast_target(&self, name: &str) -> Option<Target> {
        match self.resolve_exposed(name)? {
            Ok(t) if t.tool.access == ToolAccess::Allowed && t.conn.fast.is_some() => Some(t),
            _ => None,
        }
    }

    /// [`Self::forward`] with a given number of attempts.
    pub(crate) async fn forward_attempts(
        &self,
        target: &Target,
        arguments: Option<JsonObject>,
        cancel: &CancellationToken,
        attempts: u32,
    ) -> Result<CallToolResult, InstanceError> {
        let live = &target.live;
        let ty = &live.ty;
        let mut conn = target.conn.clone();
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                // A restart in between brings a new connection.
                if let Some(c) = live.conn() {
                    conn = c;
                }
            }
            let now = Instant::now();
            let admitted = {
                let mut b = lock(&live.breaker);
                b.admit(now).map_err(|wait| (wait, b.failures))
            };
            let probe = match admitted {
                Ok(probe) => probe,
                Err((wait, failures)) => {
                    return Err(last.unwrap_or(InstanceError::CircuitOpen {
                        name: live.name.clone(),
                        failures,
                        retry_after_ms: wait.as_millis() as u64,
                    }));
                }
            };
            // However this attempt ends (a verdict, a cancel, the caller dropping the call),
            // a probe does not stay in flight.
            let _probe = probe.map(|id| ProbeGuard { live, id });
            let mut params = CallToolRequestParams::new(target.tool.original.clone());
            params.arguments = arguments.clone();
            let call = conn.peer.call_tool_once(params);
            let outcome = tokio::select! {
                r = tokio::time::timeout(ty.call_timeout(), call) => r,
                () = cancel.cancelled() => return Err(InstanceError::Cancelled),
            };
            let err = match outcome {
                Ok(Ok(CallToolResponse::Complete(result))) => {
                    lock(&live.breaker).success();
                    return Ok(conn.redact.serde(result));
                }
                Ok(Ok(_)) => {
                    lock(&live.breaker).success();
                    return Err(InstanceError::Child {
                        name: live.name.clone(),
                        code: -32603,
                        message: "the child answered with an input-required or task result, which the coordinator does not relay".into(),
                        data: None,
                    });
                }
                Ok(Err(ServiceError::McpError(e))) => {
                    let e = conn.redact.serde(e);
                    let client_fault = matches!(e.code.0, -32602 | -32601 | -32600 | -32700);
                    if client_fault {
                        lock(&live.breaker).success();
                        return Err(InstanceError::Child {
                            name: live.name.clone(),
                            code: e.code.0,
                            message: e.message.to_string(),
                            data: e.data,
                        });
                    }
                    InstanceError::Child {
                        name: live.name.clone(),
                        code: e.code.0,
                        message: e.message.to_string(),
                        data: e.data,
                    }
                }
                Ok(Err(e)) => InstanceError::Transport {
                    name: live.name.clone(),
                    message: e.to_string(),
                },
                Err(_) => InstanceError::Timeout {
                    name: live.name.clone(),
                    tool: target.tool.original.clone(),
                    seconds: ty.call_timeout_seconds,
                },
            };
            lock(&live.breaker).failure(
                ty.breaker.failures,
                Duration::from_secs_f64(ty.breaker.open_seconds),
                Instant::now(),
            );
            last = Some(err);
        }
        Err(last.unwrap_or(InstanceError::Transport {
            name: live.name.clone(),
            message: "no attempt was made".into(),
        }))
    }

    /// The catalog.
    pub fn types(&self) -> Result<Vec<TypeView>, InstanceError> {
        let counts: HashMap<String, u32> = {
            let rows = self
                .inner
                .audit
                .store()
                .read(|tx| sql::list(tx, true, 10_000))?;
            let mut m = HashMap::new();
            for r in rows {
                *m.entry(r.type_name).or_insert(0) += 1;
            }
            m
        };
        let mut out = Vec::new();
        for (name, t) in &self.inner.types {
            let mut secrets = Vec::new();
            for s in t.required_secrets() {
                let present = self
                    .inner
                    .secrets
                    .exists(&s)
                    .map_err(|e| InstanceError::Secret(e.to_string()))?;
                secrets.push(SecretNeed { name: s, present });
            }
            let launch = match (&t.command, &t.url) {
                (Some(c), _) => std::iter::once(c.clone())
                    .chain(t.args.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(" "),
                (None, Some(u)) => u.clone(),
                (None, None) => String::new(),
            };
            out.push(TypeView {
                name: name.clone(),
                description: t.description.clone(),
                transport: t.transport(),
                launch,
                env: t.env.keys().cloned().collect(),
                overridable: t.overridable.clone(),
                secrets,
                ttl_seconds: t.ttl_seconds,
                autostart: t.autostart,
                policy: t.policy.clone(),
                limits: t.limits.clone(),
                live_instances: counts.get(name).copied().unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn type_of(&self, name: &str) -> Result<Arc<InstanceType>, InstanceError> {
        self.inner
            .types
            .get(name)
            .cloned()
            .ok_or_else(|| InstanceError::UnknownType {
                name: name.into(),
                known: if self.inner.types.is_empty() {
                    "nothing (add [instance_types.NAME] tables to the config file)".into()
                } else {
                    self.inner
                        .types
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// Starts an instance and waits until it is initialized (or failed).
    pub async fn start(
        &self,
        req: StartRequest,
        by: &Actor,
    ) -> Result<InstanceView, InstanceError> {
        let (live, rx) = self.create(req, by)?;
        let (tx, first) = oneshot::channel();
        self.spawn_supervisor(live.clone(), rx, Some(tx), false);
        match first.await {
            Ok(Ok(())) => Ok(self.view(&live.row(), true)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(InstanceError::ShuttingDown),
        }
    }

    /// Records a new instance (status `starting`) and its live entry, without launching it.
    fn create(
        &self,
        req: StartRequest,
        by: &Actor,
    ) -> Result<(Arc<Live>, mpsc::UnboundedReceiver<Cmd>), InstanceError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(InstanceError::ShuttingDown);
        }
        let ty = self.type_of(&req.type_name)?;
        for key in req.overrides.env.keys() {
            check_override(&req.type_name, &ty, key)?;
        }
        if req.ttl_seconds == Some(0) {
            return Err(InstanceError::Invalid(
                "ttl_seconds: expected at least 1".into(),
            ));
        }
        let count = self
            .inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if count as u32 >= self.inner.config.max_instances {
            return Err(InstanceError::TooMany(self.inner.config.max_instances));
        }
        let name = match req.name.clone() {
            Some(n) => {
                policy::check_instance_name(&n)
                    .map_err(|e| InstanceError::Invalid(format!("name: {e}")))?;
                n
            }
            None => self.free_name(&req.type_name)?,
        };
        let now = now_ts();
        let ttl = req.ttl_seconds.or(ty.ttl_seconds);
        let expires_at = ttl.map(|s| {
            format_ts(time::OffsetDateTime::now_utc() + time::Duration::seconds(s as i64))
        });
        let row = InstanceRow {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.clone(),
            type_name: req.type_name.clone(),
            status: Status::Starting,
            owner: self.inner.owner.id.clone(),
            owner_host: self.inner.owner.host.clone(),
            owner_pid: i64::from(self.inner.owner.pid),
            pid: None,
            overrides: serde_json::to_string(&req.overrides).unwrap_or_else(|_| "{}".into()),
            ttl_seconds: ttl.map(|s| s as i64),
            created_at: now.clone(),
            started_at: None,
            expires_at,
            stopped_at: None,
            restarts: 0,
            health: "unknown".into(),
            last_error: None,
            tools: 0,
            resume: false,
            updated_at: now,
        };
        let store = self.inner.audit.store();
        store
            .write(|tx| sql::insert(tx, &row))
            .map_err(|e| match e {
                StoreError::Conflict { .. } => InstanceError::NameTaken(name.clone()),
                e => InstanceError::Store(e),
            })?;
        let _ = by;
        Ok(self.insert_live(row, ty, req.overrides))
    }

    fn insert_live(
        &self,
        row: InstanceRow,
        ty: Arc<InstanceType>,
        overrides: Overrides,
    ) -> (Arc<Live>, mpsc::UnboundedReceiver<Cmd>) {
        let (cmd, rx) = mpsc::unbounded_channel();
        let live = Arc::new(Live {
            id: row.id.clone(),
            name: row.name.clone(),
            type_name: row.type_name.clone(),
            ty,
            overrides,
            row: Mutex::new(row),
            conn: Mutex::new(None),
            stderr: Mutex::new(process::StderrTail::default()),
            breaker: Mutex::new(Breaker::default()),
            up_since: Mutex::new(None),
            cmd,
        });
        self.inner
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(live.name.clone(), live.clone());
        (live, rx)
    }

    /// The type's name if free, else `<type>-2`, `<type>-3`, ...
    fn free_name(&self, type_name: &str) -> Result<String, InstanceError> {
        let store = self.inner.audit.store();
        for n in 1..1000 {
            let candidate = if n == 1 {
                type_name.to_string()
            } else {
                let suffix = format!("-{n}");
                let keep = type_name
                    .len()
                    .min(policy::MAX_INSTANCE_NAME - suffix.len());
                let stem = type_name[..keep].trim_end_matches(['-', '_']);
                format!("{stem}{suffix}")
            };
            if store
                .read(|tx| sql::live_by_name(tx, &candidate))?
                .is_none()
            {
                return Ok(candidate);
            }
        }
        Err(InstanceError::Invalid(format!(
            "name: no free name for type `{type_name}`; give one"
        )))
    }

    fn spawn_supervisor(
        &self,
        live: Arc<Live>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        first: Option<oneshot::Sender<Result<(), InstanceError>>>,
        restored: bool,
    ) {
        let handle = tokio::spawn(supervisor::supervise(
            self.clone(),
            live,
            rx,
            first,
            restored,
        ));
        let mut all = lock(&self.inner.supervisors);
        all.retain(|h| !h.is_finished());
        all.push(handle);
    }

    /// Stops an instance run here (close, SIGTERM, SIGKILL of its process group). An instance
    /// whose owner process is gone is marked stopped directly.
    pub async fn stop(&self, name: &str, by: &Actor) -> Result<InstanceView, InstanceError> {
        if let Some(live) = self.live_get(name) {
            let (done, wait) = oneshot::channel();
            if live
                .cmd
                .send(Cmd::Stop {
                    by: by.clone(),
                    done,
                })
                .is_ok()
            {
                let _ = wait.await;
            }
            return Ok(self.view(&live.row(), false));
        }
        let row = self
            .inner
            .audit
            .store()
            .read(|tx| sql::live_by_name(tx, name))?;
        let Some(mut row) = row else {
            return Err(self.not_here(name));
        };
        if owner_alive(&row, &self.inner.owner) {
            return Err(InstanceError::NotOwned {
                name: name.into(),
                owner: row.owner,
            });
        }
        row.status = Status::Stopped;
        row.stopped_at = Some(now_ts());
        row.last_error = Some("its coordinator process was gone; marked stopped".into());
        self.persist(
            &row,
            Action::InstanceStopped,
            Outcome::Ok,
            json!({"by": by.render(), "reason": "owner gone"}),
        )?;
        Ok(self.view(&row, false))
    }

    /// Restarts an instance run here and waits until it is up again (or failed).
    pub async fn restart(&self, name: &str, by: &Actor) -> Result<InstanceView, InstanceError> {
        let Some(live) = self.live_get(name) else {
            return Err(self.not_here(name));
        };
        let (done, wait) = oneshot::channel();
        live.cmd
            .send(Cmd::Restart {
                by: by.clone(),
                done,
            })
            .map_err(|_| InstanceError::ShuttingDown)?;
        match wait.await {
            Ok(Ok(())) => Ok(self.view(&live.row(), true)),
            Ok(Err(message)) => Err(InstanceError::StartFailed {
                name: name.into(),
                message,
                stderr: lock(&live.stderr).lines(),
            }),
            Err(_) => Err(InstanceError::ShuttingDown),
        }
    }

    /// Instances in the database (every process), newest first.
    pub fn list(&self, all: bool, limit: u32) -> Result<Vec<InstanceView>, InstanceError> {
        let rows = self
            .inner
            .audit
            .store()
            .read(|tx| sql::list(tx, !all, limit))?;
        Ok(rows.iter().map(|r| self.view(r, false)).collect())
    }

    /// One instance by name (the live one, else the newest) or id, with details if run here.
    pub fn get(&self, name_or_id: &str) -> Result<InstanceView, InstanceError> {
        if let Some(live) = self.live_get(name_or_id) {
            return Ok(self.view(&live.row(), true));
        }
        let row = self
            .inner
            .audit
            .store()
            .read(|tx| match sql::get(tx, name_or_id)? {
                Some(r) => Ok::<_, StoreError>(Some(r)),
                None => sql::newest_by_name(tx, name_or_id),
            })?;
        match row {
            Some(r) => Ok(self.view(&r, true)),
            None => Err(InstanceError::NotFound(name_or_id.into())),
        }
    }

    fn view(&self, row: &InstanceRow, detail: bool) -> InstanceView {
        let live = self.live_get(&row.name).filter(|l| l.id == row.id);
        let (row, uptime) = match &live {
            Some(l) => (
                l.row(),
                lock(&l.up_since).map(|t| t.elapsed().as_secs_f64()),
            ),
            None => (row.clone(), None),
        };
        let detail = match (&live, detail) {
            (Some(l), true) => {
                let conn = l.conn();
                let resources = row
                    .pid
                    .filter(|_| conn.is_some())
                    .and_then(|p| process::group_stats(p as u32))
                    .map(|s| Resources {
                        rss_bytes: s.rss_bytes,
                        cpu_seconds: s.cpu_seconds,
                        processes: s.processes,
                    });
                let (tools, hidden_tools) = match &conn {
                    Some(c) => {
                        let mut tools: Vec<ToolView> = c
                            .table
                            .by_part
                            .values()
                            .map(|t| ToolView {
                                name: t.exposed.clone(),
                                tool: t.original.clone(),
                                access: t.access,
                                read_only: t.read_only,
                            })
                            .collect();
                        tools.sort_by(|a, b| a.name.cmp(&b.name));
                        (tools, c.table.hidden.clone())
                    }
                    None => (Vec::new(), Vec::new()),
                };
                Some(InstanceDetail {
                    resources,
                    stderr_tail: lock(&l.stderr).lines(),
                    breaker: lock(&l.breaker).state(Instant::now()),
                    tools,
                    hidden_tools,
                })
            }
            _ => None,
        };
        InstanceView {
            owned_here: row.owner == self.inner.owner.id,
            id: row.id,
            name: row.name,
            type_name: row.type_name,
            status: row.status.to_string(),
            owner: row.owner,
            pid: row.pid,
            started_at: row.started_at,
            expires_at: row.expires_at,
            stopped_at: row.stopped_at,
            restarts: row.restarts,
            health: row.health,
            last_error: row.last_error,
            tools: row.tools,
            uptime_seconds: uptime,
            detail,
        }
    }

    /// Writes a row and its audit event in one transaction.
    fn persist(
        &self,
        row: &InstanceRow,
        action: Action,
        outcome: Outcome,
        detail: Value,
    ) -> Result<(), InstanceError> {
        let audit = &self.inner.audit;
        let event = NewEvent {
            actor: Actor::system(),
            action,
            subject: row.name.clone(),
            outcome,
            detail: merge(
                json!({"instance_id": row.id, "type": row.type_name, "status": row.status}),
                detail,
            ),
            critical: false,
        };
        audit.store().write(|tx| -> Result<(), StoreError> {
            sql::update(tx, row)?;
            audit.append_in(tx, &event)?;
            Ok(())
        })?;
        Ok(())
    }

    /// Writes a row without an audit event (health and counters that change often).
    fn persist_quiet(&self, row: &InstanceRow) {
        if let Err(e) = self.inner.audit.store().write(|tx| sql::update(tx, row)) {
            tracing::warn!(instance = %row.name, error = %e, "could not record the instance's state");
        }
    }

    /// Rebuilds the offered tool list from every live connection and tells listeners.
    fn publish_tools(&self) {
        // Computed and stored under the write lock, so two children coming up together
        // cannot store their lists out of order (an older list overwriting a newer one).
        let mut exposed = self
            .inner
            .exposed
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut tools: Vec<Tool> = self
            .live_all()
            .iter()
            .filter_map(|l| l.conn())
            .flat_map(|c| {
                c.table
                    .by_part
                    .values()
                    .map(|t| t.tool.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        if **exposed != tools {
            *exposed = Arc::new(tools);
            drop(exposed);
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    /// Pins each tool's definition (first sight), quarantines changed or flagged ones, applies
    /// the type's policy, and returns what is offered and what is hidden.
    fn apply_pins(&self, live: &Live, tools: &[Tool]) -> Result<ToolTable, InstanceError> {
        let audit = &self.inner.audit;
        let type_name = &live.type_name;
        let now = now_ts();
        let mut decided: Vec<(Tool, Option<String>, Vec<InjectionFlag>)> = Vec::new();
        // Tools another instance of this type hides for a pending change: that change stays
        // pending when this one shows the approved definition.
        let quarantined_elsewhere: HashSet<String> = self
            .live_all()
            .iter()
            .filter(|l| l.type_name == *type_name && l.id != live.id)
            .filter_map(|l| l.conn())
            .flat_map(|c| {
                c.table
                    .hidden
                    .iter()
                    .filter(|h| h.reason == "quarantined")
                    .map(|h| h.tool.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        audit.store().write(|tx| -> Result<(), StoreError> {
            for tool in tools {
                let def = serde_json::to_value(tool).unwrap_or(Value::Null);
                let hash = policy::definition_hash(&def);
                let flags = tool_flags(tool);
                let flags_json = serde_json::to_string(&flags).unwrap_or_else(|_| "[]".into());
                let name = tool.name.to_string();
                let existing = sql::pin(tx, type_name, &name)?;
                let event = |action, detail: Value| NewEvent {
                    actor: Actor::system(),
                    action,
                    subject: format!("{type_name}/{name}"),
                    outcome: Outcome::Ok,
                    detail: merge(json!({"type": type_name, "tool": name, "hash": hash, "instance": live.name}), detail),
                    critical: false,
                };
                let quarantine = |reason: String| -> Option<String> { Some(reason) };
                let verdict = match existing {
                    None if flags.is_empty() => {
                        sql::put_pin(tx, &PinRow {
                            type_name: type_name.clone(),
                            tool: name.clone(),
                            status: PinStatus::Pinned,
                            hash: Some(hash.clone()),
                            definition: Some(def.to_string()),
                            flags: flags_json,
                            pending_hash: None,
                            pending_definition: None,
                            pending_flags: None,
                            approval_id: None,
                            first_seen_at: now.clone(),
                            updated_at: now.clone(),
                        })?;
                        audit.append_in(tx, &event(Action::InstanceToolPinned, json!({})))?;
                        None
                    }
                    None => {
                        sql::put_pin(tx, &PinRow {
                            type_name: type_name.clone(),
                            tool: name.clone(),
                            status: PinStatus::Quarantined,
                            hash: None,
                            definition: None,
                            flags: "[]".into(),
                            pending_hash: Some(hash.clone()),
                            pending_definition: Some(def.to_string()),
                            pending_flags: Some(flags_json),
                            approval_id: None,
                            first_seen_at: now.clone(),
                            updated_at: now.clone(),
                        })?;
                        audit.append_in(tx, &event(Action::InstanceToolQuarantined, json!({"reason": "flagged", "flags": flags})))?;
                        quarantine(format!("its description has prompt-injection markers ({})", flag_rules(&flags)))
                    }
                    Some(p) if p.hash.as_deref() == Some(hash.as_str()) => {
                        if p.status != PinStatus::Pinned && !quarantined_elsewhere.contains(&name) {
                            // The child went back to the approved definition, and no other
                            // instance shows the changed one.
                            let mut p = p;
                            p.status = PinStatus::Pinned;
                            p.pending_hash = None;
                            p.pending_definition = None;
                            p.pending_flags = None;
                            p.updated_at = now.clone();
                            sql::put_pin(tx, &p)?;
                        }
                        None
                    }
                    Some(mut p) => {
                        let first_change = p.pending_hash.as_deref() != Some(hash.as_str());
                        if first_change {
                            p.status = PinStatus::Quarantined;
                            p.pending_hash = Some(hash.clone());
                            p.pending_definition = Some(def.to_string());
                            p.pending_flags = Some(flags_json);
                            p.approval_id = None;
                            p.updated_at = now.clone();
                            sql::put_pin(tx, &p)?;
                            audit.append_in(tx, &event(Action::InstanceToolQuarantined, json!({"reason": "changed", "pinned_hash": p.hash, "flags": flags})))?;
                        }
                        let what = describe_change(p.definition.as_deref(), &def);
                        quarantine(if flags.is_empty() {
                            format!("its definition changed since it was pinned ({what})")
                        } else {
                            format!("its definition changed since it was pinned ({what}) and has prompt-injection markers ({})", flag_rules(&flags))
                        })
                    }
                };
                decided.push((tool.clone(), verdict, flags));
            }
            Ok(())
        })?;
        let mut table = ToolTable::default();
        // Tools whose names are offered unchanged claim them first; a shortened or sanitized
        // name that collides with one taken falls back to its hashed form.
        decided.sort_by_key(|(tool, _, _)| {
            policy::exposed_tool_part(&live.name, &tool.name) != tool.name.as_ref()
        });
        for (tool, quarantined, flags) in decided {
            let original = tool.name.to_string();
            if let Some(detail) = quarantined {
                table.hidden.push(HiddenTool {
                    tool: original,
                    reason: "quarantined".into(),
                    detail,
                    flags,
                });
                continue;
            }
            let ann = tool.annotations.clone();
            let read_only = ann.as_ref().and_then(|a| a.read_only_hint);
            let destructive = ann.as_ref().and_then(|a| a.destructive_hint);
            let access = live.ty.policy.access(&original, read_only, destructive);
            if access == ToolAccess::Denied {
                table.hidden.push(HiddenTool {
                    tool: original,
                    reason: "denied".into(),
                    detail: format!("denied by the policy of type `{type_name}`"),
                    flags,
                });
                continue;
            }
            let mut part = policy::exposed_tool_part(&live.name, &original);
            if table.by_part.contains_key(&part) {
                part = policy::hashed_tool_part(&live.name, &original);
            }
            if let Some(other) = table.by_part.get(&part) {
                table.hidden.push(HiddenTool {
                    detail: format!(
                        "its exposed name {}{}{part} is taken by the child's tool `{}`",
                        live.name,
                        policy::SEPARATOR,
                        other.original
                    ),
                    tool: original,
                    reason: "name_collision".into(),
                    flags,
                });
                continue;
            }
            let exposed = format!("{}{}{part}", live.name, policy::SEPARATOR);
            let mut offered = tool.clone();
            offered.name = exposed.clone().into();
            let note = match access {
                ToolAccess::Approval => " Each call waits for a person's approval.",
                _ => "",
            };
            let desc = tool.description.as_deref().unwrap_or("");
            offered.description = Some(
                format!("[{} (type {type_name})]{note} {desc}", live.name)
                    .trim_end()
                    .to_string()
                    .into(),
            );
            let child = Arc::new(ChildTool {
                original: original.clone(),
                exposed,
                tool: offered,
                access,
                read_only: read_only == Some(true),
                destructive,
            });
            table.by_part.insert(part, child.clone());
            table.by_original.insert(original, child);
        }
        table.hidden.sort_by(|a, b| a.tool.cmp(&b.tool));
        Ok(table)
    }

    /// A quarantined tool of a type: its pin row, for review.
    pub fn pending_definition(&self, type_name: &str, tool: &str) -> Result<PinRow, InstanceError> {
        self.type_of(type_name)?;
        let pin = self
            .inner
            .audit
            .store()
            .read(|tx| sql::pin(tx, type_name, tool))?;
        match pin {
            Some(p) if p.status == PinStatus::Quarantined => Ok(p),
            Some(_) => Err(InstanceError::Invalid(format!(
                "tool `{tool}` of type `{type_name}` is pinned, not quarantined: nothing to review"
            ))),
            None => Err(InstanceError::Invalid(format!(
                "type `{type_name}` has no tool `{tool}` on record"
            ))),
        }
    }

    /// Records which approval covers a quarantined definition.
    pub fn set_pin_approval(
        &self,
        type_name: &str,
        tool: &str,
        approval_id: &str,
    ) -> Result<(), InstanceError> {
        let store = self.inner.audit.store();
        store.write(|tx| -> Result<(), StoreError> {
            if let Some(mut p) = sql::pin(tx, type_name, tool)? {
                p.approval_id = Some(approval_id.into());
                sql::put_pin(tx, &p)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Pins the approved pending definition (only if it is still the one with `hash`), and
    /// offers the tool again on every live instance of the type.
    pub fn approve_definition(
        &self,
        type_name: &str,
        tool: &str,
        hash: &str,
        by: &Actor,
    ) -> Result<bool, InstanceError> {
        let audit = &self.inner.audit;
        let now = now_ts();
        let done = audit.store().write(|tx| -> Result<bool, StoreError> {
            let Some(mut p) = sql::pin(tx, type_name, tool)? else {
                return Ok(false);
            };
            if p.status != PinStatus::Quarantined || p.pending_hash.as_deref() != Some(hash) {
                return Ok(false);
            }
            p.status = PinStatus::Pinned;
            p.hash = p.pending_hash.take();
            p.definition = p.pending_definition.take();
            p.flags = p.pending_flags.take().unwrap_or_else(|| "[]".into());
            p.updated_at = now.clone();
            sql::put_pin(tx, &p)?;
            audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::InstanceToolApproved,
                    subject: format!("{type_name}/{tool}"),
                    outcome: Outcome::Ok,
                    detail: json!({"type": type_name, "tool": tool, "hash": hash}),
                    critical: true,
                },
            )?;
            Ok(true)
        })?;
        Ok(done)
    }

    /// Re-applies pins and policy on every live instance of a type, and waits (at most 5 s)
    /// until their offered tools reflect it.
    pub async fn refresh_type(&self, type_name: &str) {
        let mut waits = Vec::new();
        for l in self
            .live_all()
            .into_iter()
            .filter(|l| l.type_name == type_name)
        {
            let (done, wait) = oneshot::channel();
            if l.cmd.send(Cmd::Refresh { done: Some(done) }).is_ok() {
                waits.push(wait);
            }
        }
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }

    /// The types with `autostart`, and instances left by an earlier coordinator: starts them
    /// in the background once `after` resolves (the caller does not wait); autostarted types
    /// one at a time.
    pub fn restore_and_autostart(
        &self,
        after: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            after.await;
            if let Err(e) = me.restore() {
                tracing::warn!(error = %e, "could not restore instances");
            }
            for (name, ty) in me.inner.types.clone() {
                if !ty.autostart || me.live_get(&name).is_some() {
                    continue;
                }
                let taken = me
                    .inner
                    .audit
                    .store()
                    .read(|tx| sql::live_by_name(tx, &name).ok().flatten());
                if taken.is_some() {
                    continue;
                }
                let req = StartRequest {
                    type_name: name.clone(),
                    name: Some(name.clone()),
                    ..Default::default()
                };
                match me.create(req, &Actor::system()) {
                    Ok((live, rx)) => {
                        // One at a time: a burst of children starting at once would take
                        // the machine from the client.
                        let (first, started) = oneshot::channel();
                        me.spawn_supervisor(live, rx, Some(first), false);
                        let _ = tokio::time::timeout(ty.init_timeout() * 2, started).await;
                    }
                    Err(e) => tracing::warn!(instance = %name, error = %e, "could not autostart"),
                }
            }
        });
    }

    fn restore(&self) -> Result<(), InstanceError> {
        let rows = self.inner.audit.store().read(sql::restorable)?;
        let me = &self.inner.owner;
        for row in rows {
            if row.owner == me.id || owner_alive(&row, me) {
                continue;
            }
            let claimed = self.inner.audit.store().write(|tx| {
                sql::claim(
                    tx,
                    &row.id,
                    &row.owner,
                    (&me.id, &me.host, i64::from(me.pid)),
                    &now_ts(),
                )
            })?;
            if !claimed {
                continue;
            }
            let mut row = InstanceRow {
                owner: me.id.clone(),
                owner_host: me.host.clone(),
                owner_pid: i64::from(me.pid),
                resume: false,
                ..row
            };
            let previous = row.status;
            let expired = row
                .expires_at
                .as_deref()
                .is_some_and(|e| e <= now_ts().as_str());
            let ty = self.inner.types.get(&row.type_name).cloned();
            let (status, action, why) = match (&ty, expired, self.inner.config.restore) {
                (_, true, _) => (
                    Status::Expired,
                    Action::InstanceExpired,
                    "its time to live ran out while no coordinator ran it".to_string(),
                ),
                (None, _, _) => (
                    Status::Failed,
                    Action::InstanceFailed,
                    format!(
                        "lost: its type `{}` is no longer in the catalog",
                        row.type_name
                    ),
                ),
                (_, _, false) => (
                    Status::Failed,
                    Action::InstanceFailed,
                    "lost: its coordinator exited and [instances] restore is off".to_string(),
                ),
                // A crash loop waits for a person, not for the next coordinator.
                _ if previous == Status::CrashLoop => (
                    Status::Failed,
                    Action::InstanceFailed,
                    "lost: it was in crash_loop when its coordinator exited; start it again \
                     with instance_start once its cause is fixed"
                        .to_string(),
                ),
                (Some(_), false, true) => {
                    (Status::Restarting, Action::InstanceRestarted, String::new())
                }
            };
            row.status = status;
            row.pid = None;
            row.updated_at = now_ts();
            if status != Status::Restarting {
                row.stopped_at = Some(now_ts());
                row.last_error = Some(why.clone());
                self.persist(
                    &row,
                    action,
                    Outcome::Error,
                    json!({"reason": why, "was": previous}),
                )?;
                continue;
            }
            let Some(ty) = ty else { continue };
            if self.live_get(&row.name).is_some() {
                row.status = Status::Failed;
                row.last_error = Some("lost: its name is taken by another instance".into());
                self.persist(
                    &row,
                    Action::InstanceFailed,
                    Outcome::Error,
                    json!({"was": previous}),
                )?;
                continue;
            }
            self.persist(
                &row,
                Action::InstanceRestarted,
                Outcome::Ok,
                json!({"reason": "restored by a new coordinator", "was": previous}),
            )?;
            let overrides: Overrides = serde_json::from_str(&row.overrides).unwrap_or_default();
            let (live, rx) = self.insert_live(row, ty, overrides);
            self.spawn_supervisor(live, rx, None, true);
        }
        Ok(())
    }

    /// Starts killing and reaping the processes this coordinator adopts as a child subreaper
    /// (see `reaper.rs`), until [`InstanceService::shutdown`]. Does nothing unless `serve`
    /// made the process a subreaper.
    pub fn start_reaper(&self) {
        if reaper::is_subreaper() {
            tokio::spawn(reaper::run(self.inner.shutdown.clone()));
        }
    }

    /// Stops every instance run here (children of a closing coordinator), marking them to be
    /// restored by the next one, then kills every process the coordinator adopted, all within
    /// `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let began = Instant::now();
        self.inner.shutdown.cancel();
        let handles: Vec<_> = lock(&self.inner.supervisors).drain(..).collect();
        let all = futures_join(handles);
        // The adopted processes get what is left, at least a moment.
        let adopted = Duration::from_millis(300).min(deadline / 4);
        if tokio::time::timeout(deadline.saturating_sub(adopted), all)
            .await
            .is_err()
        {
            tracing::warn!(
                "some child instances did not stop in time; killing their process groups"
            );
        }
        // Whatever is left is killed when the runtime drops the supervisors: dropping a
        // `ChildProcess` SIGKILLs its process group and its remembered descendants.
        let left = deadline.saturating_sub(began.elapsed()).max(adopted);
        reaper::kill_all_adopted(left).await;
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Whether the coordinator process that owns `row` still runs (same host: its pid is alive;
/// another host: assumed alive, as nothing here can tell).
fn owner_alive(row: &InstanceRow, me: &Owner) -> bool {
    if row.owner == me.id {
        return true;
    }
    if row.owner_host != me.host {
        return true;
    }
    if row.owner_pid == i64::from(me.pid) {
        // Our pid, another session: an earlier process with our pid (pid reuse) is gone.
        return false;
    }
    process::pid_alive(row.owner_pid as u32)
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// Prompt-injection flags of a tool's description, title and schema texts.
fn tool_flags(tool: &Tool) -> Vec<InjectionFlag> {
    let mut text = String::new();
    if let Some(d) = &tool.description {
        text.push_str(d);
    }
    if let Some(t) = &tool.title {
        text.push('\n');
        text.push_str(t);
    }
    collect_strings(&Value::Object((*tool.input_schema).clone()), &mut text);
    policy::injection_flags(&text)
}

fn collect_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push('\n');
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn flag_rules(flags: &[InjectionFlag]) -> String {
    flags
        .iter()
        .map(|f| f.rule.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which parts of a definition changed: `description`, `inputSchema`, ...
fn describe_change(old: Option<&str>, new: &Value) -> String {
    let old: Value = old
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let changed: Vec<&str> = [
        "title",
        "description",
        "inputSchema",
        "outputSchema",
        "annotations",
    ]
    .into_iter()
    .filter(|k| old.get(k) != new.get(k))
    .collect();
    if changed.is_empty() {
        "its definition".into()
    } else {
        changed.join(", ")
    }
}

/// Resolves an environment template (or header template) value.
fn expand(
    template: &str,
    secrets: &HashMap<String, String>,
    field: &str,
) -> Result<String, InstanceError> {
    let mut out = String::new();
    for piece in
        parse_template(template).map_err(|e| InstanceError::Invalid(format!("{field}: {e}")))?
    {
        match piece {
            Piece::Literal(s) => out.push_str(&s),
            Piece::Secret(name) => match secrets.get(&name) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(InstanceError::Secret(format!(
                        "{field}: secret `{name}` was not revealed"
                    )));
                }
            },
            // Refused when the config is loaded; checked again so no path hands them out.
            Piece::Env(name) if is_coordinator_setting(&name) => {
                return Err(InstanceError::Invalid(format!(
                    "{field}: `${{env:{name}}}`: the coordinator's own MCP_COORDINATOR_* variables are never passed to a child"
                )));
            }
            Piece::Env(name) => match std::env::var(&name) {
                Ok(v) => out.push_str(&v),
                Err(_) => {
                    return Err(InstanceError::Invalid(format!(
                        "{field}: `${{env:{name}}}` but {name} is not set in the coordinator's environment"
                    )));
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_then_probes_once() {
        let mut b = Breaker::default();
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Ok(None));
        b.failure(2, Duration::from_secs(1), t0);
        assert_eq!(b.admit(t0), Ok(None));
        b.failure(2, Duration::from_secs(1), t0);
        assert!(b.admit(t0).is_err(), "open after 2 failures");
        let later = t0 + Duration::from_millis(1500);
        assert_eq!(b.admit(later), Ok(Some(1)), "half-open probe");
        assert!(b.admit(later).is_err(), "only one probe at a time");
        b.failure(2, Duration::from_secs(1), later);
        assert!(b.admit(later).is_err(), "a failed probe opens it again");
        let later = later + Duration::from_millis(1500);
        assert_eq!(b.admit(later), Ok(Some(2)));
        b.release(1);
        assert!(
            b.admit(later).is_err(),
            "an older probe's release leaves this one"
        );
        b.release(2);
        assert_eq!(
            b.admit(later),
            Ok(Some(3)),
            "a released probe lets the next call probe"
        );
        b.success();
        assert_eq!(b.admit(later), Ok(None));
        assert_eq!(b.state(later), "closed");
    }

    #[test]
    fn templates_expand_env_and_secrets() {
        let mut secrets = HashMap::new();
        secrets.insert("tok".to_string(), "s3cr3t".to_string());
        let v = expand("Bearer ${secret:tok}", &secrets, "headers.Authorization");
        assert_eq!(v.ok().as_deref(), Some("Bearer s3cr3t"));
        let e = expand("${env:MCP_COORDINATOR_SURELY_UNSET_VAR}", &secrets, "env.X")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("env.X") && e.contains("MCP_COORDINATOR_SURELY_UNSET_VAR"),
            "{e}"
        );
    }
}
