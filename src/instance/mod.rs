//! Child MCP instances, the domain: the catalog of types (`catalog.rs`), their tool policy
//! (`policy.rs`), starting and stopping (`lifecycle.rs`), supervision (health, restarts, TTL:
//! `supervisor.rs`), the live table the proxy routes through (here), tool pinning (`pins.rs`),
//! the circuit breaker (`breaker.rs`), restoring a gone coordinator's instances
//! (`restore.rs`), the views the tools return (`views.rs`), the owner's periodic snapshot for
//! consoles (`snapshot.rs`), the approval gates of its executors (`gates.rs`) and the masking
//! of secrets (`redact.rs`).
//!
//! The transport to the children (processes, HTTP, the fast relay) is `child/`, the one place
//! below `server/` that uses rmcp: no file here outside `child/` names rmcp (the MCP data this
//! domain handles, a tool's definition and a call's result, are rmcp's types re-exported by
//! `child`). The domain may depend on `child/`, `store/` (only through `store::Tx`,
//! `StoreError` and the table module `store/instance.rs`, never the database driver), `audit`,
//! `secret` and `approval`; it never sees the server side (handlers, elicitation): gating a
//! call on approval is the server's job.

mod breaker;
pub mod catalog;
pub mod child;
pub mod gates;
mod lifecycle;
mod pins;
pub mod policy;
mod redact;
mod restore;
pub mod snapshot;
pub mod status;
mod supervisor;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome};
use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::secret::SecretStore;
use crate::store::StoreError;
use crate::store::instance::{self as sql, InstanceRow};
use breaker::Breaker;
use catalog::{InstanceType, InstancesConfig, Piece, is_coordinator_setting, parse_template};
pub use child::reaper;
use child::{Conn, FastHooks, Tool, process};
use policy::{InjectionFlag, ToolAccess};
pub use status::{PinStatus, Status};
pub use views::{InstanceDetail, InstanceView, Resources, SecretNeed, ToolView, TypeView};

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

impl IntoFault for InstanceError {
    fn into_fault(self) -> Fault {
        let e = match self {
            InstanceError::Store(e) => return Fault::Store(e),
            e => e,
        };
        let code = match &e {
            InstanceError::UnknownType { .. }
            | InstanceError::NotFound(_)
            | InstanceError::UnknownTool { .. } => ErrorCode::NotFound,
            InstanceError::Invalid(_) => ErrorCode::InvalidRequest,
            InstanceError::NameTaken(_)
            | InstanceError::TooMany(_)
            | InstanceError::NotRunning { .. } => ErrorCode::Conflict,
            InstanceError::NotOwned { .. }
            | InstanceError::ToolDenied { .. }
            | InstanceError::ToolQuarantined { .. } => ErrorCode::Forbidden,
            InstanceError::CircuitOpen { .. }
            | InstanceError::Timeout { .. }
            | InstanceError::Transport { .. }
            | InstanceError::StartFailed { .. }
            | InstanceError::ShuttingDown
            | InstanceError::Cancelled => ErrorCode::Unavailable,
            InstanceError::Child { .. } => ErrorCode::InvalidRequest,
            InstanceError::Secret(_) => ErrorCode::Forbidden,
            InstanceError::Store(_) => ErrorCode::StorageError,
        };
        let details = match &e {
            InstanceError::StartFailed { name, stderr, .. } => {
                json!({"instance": name, "stderr": stderr})
            }
            InstanceError::CircuitOpen {
                name,
                retry_after_ms,
                failures,
            } => {
                json!({"instance": name, "retry_after_ms": retry_after_ms, "failures": failures})
            }
            InstanceError::Child {
                name, code, data, ..
            } => json!({"instance": name, "child_code": code, "child_data": data}),
            InstanceError::NotOwned { name, owner } => json!({"instance": name, "owner": owner}),
            InstanceError::NotRunning { name, status, .. } => {
                json!({"instance": name, "status": status})
            }
            InstanceError::Timeout {
                name,
                tool,
                seconds,
            } => json!({"instance": name, "tool": tool, "timeout_seconds": seconds}),
            _ => json!({}),
        };
        // A child that failed to start fails the same way on a retry until its setup changes.
        let retryable =
            code == ErrorCode::Unavailable && !matches!(e, InstanceError::StartFailed { .. });
        Fault::new(code, e.to_string())
            .with_details(details)
            .retryable(retryable)
    }
}

/// Who owns an instance: one coordinator process.
#[derive(Debug, Clone)]
pub struct Owner {
    /// `host:pid:session`.
    pub id: String,
    pub host: String,
    pub pid: u32,
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
    reactor: Mutex<Option<Arc<child::reactor::Reactor>>>,
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

    /// Starts killing and reaping the processes this coordinator adopts as a child subreaper
    /// (see `child/reaper.rs`), until [`InstanceService::shutdown`]. Does nothing unless `serve`
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

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
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
