//! The worker's MCP calls: a tool call with its domain failure (`isError` with `{code, message,
//! retryable}`) as an error, the shapes of the agent and task tools' answers it reads, and the
//! state the claim loop, the heartbeat and the task runners share (the agent token and load).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::CALL_TIMEOUT;

/// A domain failure of a tool call: `isError: true` with `{code, message, retryable}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ToolFailure {
    #[serde(skip)]
    pub(crate) tool: &'static str,
    pub(crate) code: String,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) retryable: bool,
}

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused ({}): {}", self.tool, self.code, self.message)
    }
}

impl std::error::Error for ToolFailure {}

/// The `code` of a tool's domain failure, if that is what `e` is.
pub(crate) fn failure_code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ToolFailure>().map(|f| f.code.as_str())
}

/// Calls a tool once and returns its structured content, or a [`ToolFailure`].
pub(crate) async fn call_once(
    peer: &Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> anyhow::Result<Value> {
    let Value::Object(args) = args else {
        bail!("{tool}: arguments must be a JSON object");
    };
    let params = CallToolRequestParams::new(tool).with_arguments(args);
    let result = tokio::time::timeout(CALL_TIMEOUT, peer.call_tool(params))
        .await
        .map_err(|_| anyhow!("{tool}: no answer from the coordinator within {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{tool} failed"))?;
    if result.is_error == Some(true) {
        let mut failure = result
            .structured_content
            .and_then(|v| serde_json::from_value::<ToolFailure>(v).ok())
            .unwrap_or_else(|| ToolFailure {
                tool,
                code: "unknown".into(),
                message: "the tool reported an error without details".into(),
                retryable: false,
            });
        failure.tool = tool;
        return Err(failure.into());
    }
    result
        .structured_content
        .ok_or_else(|| anyhow!("{tool} returned no structured content"))
}

/// Calls a tool, repeating it a few times when the coordinator says the failure is temporary
/// (`storage_busy`: another process held the database). Such a call changed nothing, so
/// repeating it is safe.
pub(crate) async fn call(
    peer: &Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> anyhow::Result<Value> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..4 {
        match call_once(peer, tool, args.clone()).await {
            Err(e) if e.downcast_ref::<ToolFailure>().is_some_and(|f| f.retryable) => {
                tracing::debug!("{e:#}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    call_once(peer, tool, args).await
}

/// What `agent_register` returns (the parts the worker uses).
#[derive(Debug, Deserialize)]
pub(crate) struct Registration {
    pub(crate) agent: RegisteredAgent,
    pub(crate) token: String,
    pub(crate) token_expires_at: String,
    pub(crate) heartbeat_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegisteredAgent {
    pub(crate) id: String,
}

/// What `task_claim` returns.
#[derive(Debug, Deserialize)]
pub(crate) struct Claimed {
    pub(crate) task: Option<Task>,
    pub(crate) reason: Option<String>,
}

/// A claimed task (the parts the worker uses).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) params: Value,
    /// Claims so far, this one included.
    pub(crate) attempts: u64,
    pub(crate) max_retries: u64,
}

/// What `agent_deregister` returns.
#[derive(Debug, Deserialize)]
pub(crate) struct Deregistered {
    pub(crate) requeued_tasks: u64,
    pub(crate) retargeted_tasks: u64,
}

/// State shared by the claim loop, the heartbeat and the task runners.
pub(crate) struct Shared {
    pub(crate) peer: Peer<RoleClient>,
    pub(crate) name: String,
    /// `agent_register` arguments, without the token, for refreshing the registration.
    pub(crate) register_args: Value,
    /// The current agent token (replaced when the registration is refreshed).
    pub(crate) token: Mutex<String>,
    /// When to refresh the registration, before the token expires.
    pub(crate) refresh_at: Mutex<Instant>,
    pub(crate) concurrency: usize,
    pub(crate) in_flight: AtomicUsize,
    /// The load last sent in a heartbeat (f64 bits).
    pub(crate) reported_load: AtomicU64,
    pub(crate) draining: AtomicBool,
}

impl Shared {
    pub(crate) fn token(&self) -> String {
        match self.token.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn load(&self) -> f64 {
        self.in_flight.load(Ordering::SeqCst) as f64 / self.concurrency as f64
    }

    pub(crate) fn reported_load(&self) -> f64 {
        f64::from_bits(self.reported_load.load(Ordering::SeqCst))
    }

    /// Sends a heartbeat with the current load and status.
    pub(crate) async fn heartbeat(&self) -> anyhow::Result<()> {
        let load = self.load();
        let status = if self.draining.load(Ordering::SeqCst) {
            "draining"
        } else if load > 0.0 {
            "busy"
        } else {
            "ready"
        };
        let args = json!({"token": self.token(), "load": load, "status": status});
        call(&self.peer, "agent_heartbeat", args).await?;
        self.reported_load.store(load.to_bits(), Ordering::SeqCst);
        Ok(())
    }

    /// Records a registration's token and schedules its refresh halfway to its expiry.
    pub(crate) fn adopt(&self, r: &Registration) {
        let left = time::OffsetDateTime::parse(
            &r.token_expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|at| (at - time::OffsetDateTime::now_utc()).whole_milliseconds())
        .unwrap_or(0);
        let half = Duration::from_millis((left / 2).clamp(10_000, i128::from(u32::MAX)) as u64);
        if let Ok(mut t) = self.token.lock() {
            *t = r.token.clone();
        }
        if let Ok(mut at) = self.refresh_at.lock() {
            *at = Instant::now() + half;
        }
        self.reported_load.store(0f64.to_bits(), Ordering::SeqCst);
    }

    /// Re-registers under the same name with the current token, for a fresh token.
    pub(crate) async fn refresh_registration(&self) -> anyhow::Result<()> {
        let mut args = self.register_args.clone();
        args["token"] = Value::String(self.token());
        let r: Registration =
            serde_json::from_value(call(&self.peer, "agent_register", args).await?)
                .context("agent_register returned an unexpected shape")?;
        self.adopt(&r);
        tracing::info!(expires = %r.token_expires_at, "refreshed the agent token");
        // Registration resets the reported load; say what it really is.
        self.heartbeat().await
    }

    pub(crate) fn refresh_due(&self) -> bool {
        self.refresh_at
            .lock()
            .map(|at| Instant::now() >= *at)
            .unwrap_or(false)
    }

    /// `task_report` for one task.
    pub(crate) async fn report(
        &self,
        task_id: &str,
        mut fields: Map<String, Value>,
    ) -> anyhow::Result<()> {
        fields.insert("token".into(), Value::String(self.token()));
        fields.insert("task_id".into(), Value::String(task_id.to_string()));
        call(&self.peer, "task_report", Value::Object(fields))
            .await
            .map(|_| ())
    }

    /// Reports progress. `Err` only when the lease is gone and the work should be dropped.
    pub(crate) async fn progress(
        &self,
        task_id: &str,
        progress: f64,
        message: String,
    ) -> Result<(), Lost> {
        let mut fields = Map::new();
        fields.insert("progress".into(), json!(progress.clamp(0.0, 1.0)));
        fields.insert("message".into(), Value::String(message));
        match self.report(task_id, fields).await {
            Ok(()) => Ok(()),
            Err(e) if failure_code(&e) == Some("not_leaseholder") => Err(Lost(format!("{e:#}"))),
            Err(e) => {
                tracing::warn!(task = task_id, "could not report progress: {e:#}");
                Ok(())
            }
        }
    }
}

/// The task's lease is gone (expired, cancelled or reassigned): drop the work.
#[derive(Debug)]
pub(crate) struct Lost(pub(crate) String);
