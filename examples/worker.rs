//! A worker agent for `mcp-coordinator`: it starts its own coordinator on stdio, registers,
//! heartbeats, claims tasks and runs small deterministic jobs (`sum`, `uppercase`, `sleep`).
//!
//! Point it at the database an assistant's coordinator uses (`--data-dir` / `--db`) and the
//! tasks the assistant submits with `task_submit` are run here; see `--help` and
//! `examples/README.md`. It talks to the coordinator only through MCP tool calls, as a worker
//! written in any language would.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{Peer, RoleClient};
use rmcp::transport::TokioChildProcess;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

const LONG_ABOUT: &str = "\
A worker agent for mcp-coordinator.

It starts `mcp-coordinator` as a child process and speaks MCP to it over stdio, exactly as an \
AI client does. Give it the same --data-dir (or --db) as the coordinator your assistant uses, \
and both share one SQLite database: the tasks the assistant submits with `task_submit` are \
claimed and run here.

The worker registers with `agent_register` (type worker, one capability), heartbeats every \
heartbeat_interval_ms with its load (tasks in flight / --concurrency), claims tasks with \
`task_claim`, runs them, and reports progress and the outcome with `task_report`. While the \
queue is empty it long-polls: each claim waits up to 10 s (`wait_seconds`) and returns as soon \
as a task is queued, so a new task starts within milliseconds and an idle worker costs nothing.

Task kinds it runs (results also name the worker):
  sum        params {\"numbers\": [1, 2, 3]}   result {\"sum\": 6}
  uppercase  params {\"text\": \"hello\"}        result {\"text\": \"HELLO\"}
  sleep      params {\"ms\": 1500}             result {\"slept_ms\": 1500}, progress every 100 ms
  ingestion, transformation, analysis, validation, processing, output
             the stages of the coordinator's six_stage pipeline template: each
             passes a record count along, after parameters.stage_ms ms
Any other kind fails the task for good (a non-retryable error), as do bad params. With \
`\"fail_times\": N` in the params, the first N attempts of a task fail with a retryable error \
(the coordinator retries it with backoff while max_retries allows).

On Ctrl-C or SIGTERM it stops claiming, gives the tasks in flight about 2 s to finish (then \
reports them back as a retryable \"worker shutting down\" error), deregisters with \
`agent_deregister`, closes the MCP connection and exits with status 0. A second Ctrl-C quits at \
once. Logs go to stderr.";

const AFTER_HELP: &str = "\
Examples:
  cargo run --example worker -- --name w1 --capability data-processing
  cargo run --example worker -- --name w2 --capability data-processing \\
      --coordinator target/release/mcp-coordinator --data-dir /srv/coordinator";

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "A worker agent for mcp-coordinator: claims tasks over MCP and runs sum, uppercase \
             and sleep jobs",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Args {
    /// Agent name, unique among active agents (for example `etl-worker-1`)
    #[arg(long)]
    name: String,

    /// The capability this worker offers; it runs tasks that require only this capability
    #[arg(long, default_value = "data-processing")]
    capability: String,

    /// The coordinator binary to start (a path, or a name looked up on PATH)
    #[arg(long, value_name = "PATH", default_value = "mcp-coordinator")]
    coordinator: PathBuf,

    /// Passed to the coordinator: its data directory (database and keys)
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Passed to the coordinator: its SQLite database file
    #[arg(long, value_name = "PATH")]
    db: Option<String>,

    /// Passed to the coordinator: its TOML config file
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Log level of the coordinator child (its logs share this worker's stderr)
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    coordinator_log_level: String,

    /// This worker's log level or tracing filter
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,

    /// Tasks to run at the same time
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

    /// Exit (deregistered, status 0) after this many tasks
    #[arg(long, value_name = "N")]
    max_tasks: Option<u64>,

    /// How long tasks in flight may take to finish after Ctrl-C before they are handed back
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    shutdown_grace_ms: u64,
}

/// How long one tool call may take before the worker gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one claim waits for a task (`wait_seconds`): well inside [`CALL_TIMEOUT`].
const LONG_POLL_SECONDS: u64 = 10;
/// Backoff when a claim is refused for another reason (load above the ceiling, draining) or
/// fails: starts here, doubles per claim...
const IDLE_MIN: Duration = Duration::from_millis(200);
/// ...up to this.
const IDLE_MAX: Duration = Duration::from_millis(1000);
/// Progress reports of the `sleep` job.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The longest `sleep` job accepted (one hour).
const MAX_SLEEP_MS: u64 = 3_600_000;
/// Claims that fail in a row (coordinator unreachable, say) before the worker gives up.
const MAX_CLAIM_FAILURES: u32 = 10;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_tracing(&args.log_level) {
        eprintln!("worker: error: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("worker: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let span = tracing::info_span!("worker", name = %args.name);
    match runtime.block_on(run(args).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // rmcp reports every child-process start and stop at info; keep it quieter by default.
    let filter = if level.contains("rmcp") {
        level.to_string()
    } else {
        format!("rmcp=warn,{level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("--log-level {level:?} is not a level or tracing filter"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow!("cannot start logging: {e}"))
}

/// A domain failure of a tool call: `isError: true` with `{code, message, retryable}`.
#[derive(Debug, Deserialize)]
struct ToolFailure {
    #[serde(skip)]
    tool: &'static str,
    code: String,
    message: String,
    #[serde(default)]
    retryable: bool,
}

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} refused ({}): {}", self.tool, self.code, self.message)
    }
}

impl std::error::Error for ToolFailure {}

/// The `code` of a tool's domain failure, if that is what `e` is.
fn failure_code(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<ToolFailure>().map(|f| f.code.as_str())
}

/// Calls a tool once and returns its structured content, or a [`ToolFailure`].
async fn call_once(
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
async fn call(peer: &Peer<RoleClient>, tool: &'static str, args: Value) -> anyhow::Result<Value> {
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
struct Registration {
    agent: RegisteredAgent,
    token: String,
    token_expires_at: String,
    heartbeat_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
struct RegisteredAgent {
    id: String,
}

/// What `task_claim` returns.
#[derive(Debug, Deserialize)]
struct Claimed {
    task: Option<Task>,
    reason: Option<String>,
}

/// A claimed task (the parts the worker uses).
#[derive(Debug, Clone, Deserialize)]
struct Task {
    id: String,
    kind: String,
    #[serde(default)]
    params: Value,
    /// Claims so far, this one included.
    attempts: u64,
    max_retries: u64,
}

/// What `agent_deregister` returns.
#[derive(Debug, Deserialize)]
struct Deregistered {
    requeued_tasks: u64,
    retargeted_tasks: u64,
}

/// State shared by the claim loop, the heartbeat and the task runners.
struct Shared {
    peer: Peer<RoleClient>,
    name: String,
    /// `agent_register` arguments, without the token, for refreshing the registration.
    register_args: Value,
    /// The current agent token (replaced when the registration is refreshed).
    token: Mutex<String>,
    /// When to refresh the registration, before the token expires.
    refresh_at: Mutex<Instant>,
    concurrency: usize,
    in_flight: AtomicUsize,
    /// The load last sent in a heartbeat (f64 bits).
    reported_load: AtomicU64,
    draining: AtomicBool,
}

impl Shared {
    fn token(&self) -> String {
        match self.token.lock() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn load(&self) -> f64 {
        self.in_flight.load(Ordering::SeqCst) as f64 / self.concurrency as f64
    }

    fn reported_load(&self) -> f64 {
        f64::from_bits(self.reported_load.load(Ordering::SeqCst))
    }

    /// Sends a heartbeat with the current load and status.
    async fn heartbeat(&self) -> anyhow::Result<()> {
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
    fn adopt(&self, r: &Registration) {
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
    async fn refresh_registration(&self) -> anyhow::Result<()> {
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

    fn refresh_due(&self) -> bool {
        self.refresh_at
            .lock()
            .map(|at| Instant::now() >= *at)
            .unwrap_or(false)
    }

    /// `task_report` for one task.
    async fn report(&self, task_id: &str, mut fields: Map<String, Value>) -> anyhow::Result<()> {
        fields.insert("token".into(), Value::String(self.token()));
        fields.insert("task_id".into(), Value::String(task_id.to_string()));
        call(&self.peer, "task_report", Value::Object(fields))
            .await
            .map(|_| ())
    }

    /// Reports progress. `Err` only when the lease is gone and the work should be dropped.
    async fn progress(&self, task_id: &str, progress: f64, message: String) -> Result<(), Lost> {
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
struct Lost(String);

/// How a job ended.
enum JobError {
    /// A job failure, reported with `task_report`'s `error`.
    Failed { message: String, retryable: bool },
    /// The lease is gone; nothing to report.
    Lost(Lost),
}

impl JobError {
    fn fatal(message: impl Into<String>) -> Self {
        JobError::Failed {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<Lost> for JobError {
    fn from(l: Lost) -> Self {
        JobError::Lost(l)
    }
}

/// How a task ended, for the worker's log and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Completed,
    Failed,
    Retrying,
    Dropped,
    HandedBack,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;
    let mut client = connect(&args).await?;
    let result = session(&args, client.peer().clone(), &shutdown).await;
    // Closing stdin ends the coordinator child; rmcp waits for it to exit.
    if let Err(e) = client.close().await {
        tracing::warn!("closing the MCP connection: {e}");
    }
    result
}

/// Register, work until told to stop, deregister.
async fn session(
    args: &Args,
    peer: Peer<RoleClient>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let register_args = json!({
        "name": args.name,
        "agent_type": "worker",
        "capabilities": [args.capability],
        "metadata": {
            "program": "mcp-coordinator examples/worker.rs",
            "pid": std::process::id(),
            "concurrency": args.concurrency,
            "kinds": ["sum", "uppercase", "sleep", "ingestion", "transformation", "analysis",
                      "validation", "processing", "output"],
        },
    });
    let registration: Registration = serde_json::from_value(
        call(&peer, "agent_register", register_args.clone())
            .await
            .context("cannot register with the coordinator")?,
    )
    .context("agent_register returned an unexpected shape")?;
    let heartbeat_every = Duration::from_millis(registration.heartbeat_interval_ms.max(50));
    let shared = Arc::new(Shared {
        peer,
        name: args.name.clone(),
        register_args,
        token: Mutex::new(String::new()),
        refresh_at: Mutex::new(Instant::now()),
        concurrency: usize::from(args.concurrency),
        in_flight: AtomicUsize::new(0),
        reported_load: AtomicU64::new(0),
        draining: AtomicBool::new(false),
    });
    shared.adopt(&registration);
    tracing::info!(
        agent_id = %registration.agent.id,
        capability = %args.capability,
        heartbeat_ms = registration.heartbeat_interval_ms,
        "registered; waiting for tasks"
    );

    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(
        heartbeat_loop(shared.clone(), heartbeat_every, stop_heartbeat.clone())
            .instrument(tracing::Span::current()),
    );

    let abandon = CancellationToken::new();
    let worked = work(&shared, args, shutdown, &abandon).await;

    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    let deregistered = if shared.peer.is_transport_closed() {
        // Nothing to tell; the sweeper returns the tasks once this agent is offline.
        Ok(())
    } else {
        deregister(&shared).await
    };
    if let Err(e) = &deregistered {
        tracing::error!("{e:#}");
    }
    let counts = worked?;
    deregistered?;
    tracing::info!("{counts}; bye");
    Ok(())
}

/// Deregisters: the coordinator returns any task still leased to this agent to the queue.
async fn deregister(shared: &Shared) -> anyhow::Result<()> {
    let value = call(
        &shared.peer,
        "agent_deregister",
        json!({"token": shared.token()}),
    )
    .await
    .context("cannot deregister")?;
    let d: Deregistered =
        serde_json::from_value(value).context("agent_deregister returned an unexpected shape")?;
    tracing::info!(
        requeued = d.requeued_tasks,
        retargeted = d.retargeted_tasks,
        "deregistered"
    );
    Ok(())
}

/// Starts the coordinator and connects to it.
async fn connect(
    args: &Args,
) -> anyhow::Result<rmcp::service::RunningService<RoleClient, ClientConfig>> {
    let mut cmd = tokio::process::Command::new(&args.coordinator);
    if let Some(dir) = &args.data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    if let Some(db) = &args.db {
        cmd.arg("--db").arg(db);
    }
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    // A worker needs the agent and task tools only: its session lists those (a dozen tools)
    // instead of everything the coordinator offers.
    cmd.args([
        "--log-level",
        &args.coordinator_log_level,
        "--toolsets",
        "agents",
        "serve",
    ]);
    // Its own process group: a Ctrl-C in the terminal reaches only the worker, which still needs
    // the coordinator to hand its tasks back and deregister. The coordinator exits when the
    // worker closes its stdin (or dies).
    cmd.process_group(0);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", args.coordinator.display()))?;
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(format!("worker-{}", args.name), env!("CARGO_PKG_VERSION")),
    );
    info.serve(transport).await.with_context(|| {
        format!(
            "cannot open an MCP session with {}",
            args.coordinator.display()
        )
    })
}

/// The first SIGINT or SIGTERM asks for a graceful stop; a second one quits at once.
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::spawn(
        async move {
            let mut seen = 0;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "interrupt",
                    _ = term.recv() => "terminate",
                };
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        "{name}: stopping (finishing the current work; signal again to quit now)"
                    );
                    shutdown.cancel();
                } else {
                    tracing::warn!("{name} again: quitting without deregistering");
                    std::process::exit(130);
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    Ok(())
}

/// Heartbeats every interval with the current load, and refreshes the token in time.
async fn heartbeat_loop(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if shared.refresh_due() {
            if let Err(e) = shared.refresh_registration().await {
                tracing::warn!("could not refresh the registration: {e:#}");
            }
        } else if let Err(e) = shared.heartbeat().await {
            tracing::warn!("heartbeat failed: {e:#}");
        }
    }
}

/// Task counts, for the last log line.
#[derive(Debug, Default)]
struct Counts {
    claimed: u64,
    completed: u64,
    failed: u64,
    retrying: u64,
    dropped: u64,
    handed_back: u64,
}

impl Counts {
    fn record(&mut self, joined: Result<Ended, tokio::task::JoinError>) {
        match joined {
            Ok(Ended::Completed) => self.completed += 1,
            Ok(Ended::Failed) => self.failed += 1,
            Ok(Ended::Retrying) => self.retrying += 1,
            Ok(Ended::Dropped) => self.dropped += 1,
            Ok(Ended::HandedBack) => self.handed_back += 1,
            Err(e) => {
                tracing::error!("a task runner crashed: {e}");
                self.dropped += 1;
            }
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} task(s) claimed: {} completed, {} failed, {} to be retried, {} dropped, {} handed back",
            self.claimed,
            self.completed,
            self.failed,
            self.retrying,
            self.dropped,
            self.handed_back
        )
    }
}

/// The claim loop: until a signal (or `--max-tasks`), claim tasks while there is room and run
/// them; then let the tasks in flight finish or hand them back.
async fn work(
    shared: &Arc<Shared>,
    args: &Args,
    shutdown: &CancellationToken,
    abandon: &CancellationToken,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut running: JoinSet<Ended> = JoinSet::new();
    let mut idle = IDLE_MIN;
    let mut failures = 0u32;
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let quota_left = args.max_tasks.is_none_or(|max| counts.claimed < max);
        if !quota_left && running.is_empty() {
            tracing::info!("ran --max-tasks {} task(s)", counts.claimed);
            break Ok(());
        }
        // None: wait for a running task to end (or a signal).
        let mut wait = None;
        if quota_left && running.len() < shared.concurrency {
            // A long poll: keep counting tasks that end meanwhile, and stop at a signal (a
            // task leased to this agent as it stops goes back to the queue when it
            // deregisters).
            let claimed = {
                let claiming = claim(shared);
                tokio::pin!(claiming);
                loop {
                    tokio::select! {
                        claimed = &mut claiming => break Some(claimed),
                        () = shutdown.cancelled() => break None,
                        Some(joined) = running.join_next(), if !running.is_empty() => {
                            counts.record(joined);
                            shared.in_flight.store(running.len(), Ordering::SeqCst);
                        }
                    }
                }
            };
            let Some(claimed) = claimed else { continue };
            match claimed {
                Ok(Ok(task)) => {
                    failures = 0;
                    idle = IDLE_MIN;
                    counts.claimed += 1;
                    let span = tracing::info_span!("task", id = %task.id, kind = %task.kind);
                    running.spawn(run_task(shared.clone(), task, abandon.clone()).instrument(span));
                    shared.in_flight.store(running.len(), Ordering::SeqCst);
                    continue;
                }
                Ok(Err(reason)) if reason == "queue_empty" => {
                    // The coordinator already waited for a task: claim again at once.
                    failures = 0;
                    idle = IDLE_MIN;
                    tracing::trace!("no task within {LONG_POLL_SECONDS} s");
                    continue;
                }
                Ok(Err(reason)) => {
                    failures = 0;
                    tracing::trace!(reason, "no task");
                    wait = Some(idle);
                    idle = (idle * 2).min(IDLE_MAX);
                }
                Err(e) => {
                    if failure_code(&e) == Some("unauthorized") {
                        break Err(e.context("the coordinator refused this agent's token"));
                    }
                    if shared.peer.is_transport_closed() {
                        break Err(e.context("the coordinator went away"));
                    }
                    failures += 1;
                    if failures >= MAX_CLAIM_FAILURES {
                        break Err(e.context(format!("{failures} claims failed in a row")));
                    }
                    tracing::warn!("claim failed: {e:#}");
                    wait = Some(IDLE_MAX);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(joined) = running.join_next(), if !running.is_empty() => {
                counts.record(joined);
                shared.in_flight.store(running.len(), Ordering::SeqCst);
            }
            () = sleep_or_forever(wait) => {}
        }
    };

    if !running.is_empty() {
        let grace = Duration::from_millis(args.shutdown_grace_ms);
        tracing::info!(
            "letting {} task(s) in flight finish (up to {grace:?})",
            running.len()
        );
        shared.draining.store(true, Ordering::SeqCst);
        if let Err(e) = shared.heartbeat().await {
            tracing::debug!("draining heartbeat failed: {e:#}");
        }
        let deadline = tokio::time::Instant::now() + grace;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, running.join_next()).await {
            counts.record(joined);
        }
        if !running.is_empty() {
            tracing::info!("handing {} unfinished task(s) back", running.len());
            abandon.cancel();
            let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
            while let Ok(Some(joined)) =
                tokio::time::timeout_at(deadline, running.join_next()).await
            {
                counts.record(joined);
            }
            // Whatever is still stuck is returned to the queue by agent_deregister.
            running.abort_all();
        }
        shared.in_flight.store(0, Ordering::SeqCst);
    }
    result.map(|()| counts)
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Claims a task: `Ok(Ok(task))`, or `Ok(Err(reason))` when there is none.
async fn claim(shared: &Shared) -> anyhow::Result<Result<Task, String>> {
    // The coordinator dispatches by the load of the last heartbeat. If that said busier than
    // the worker is now (the heartbeat fell while a task was running), correct it first, or the
    // claim is refused (`load_above_ceiling`) or steered to other agents.
    if shared.reported_load() > shared.load() {
        shared.heartbeat().await?;
    }
    let claimed: Claimed = serde_json::from_value(
        call(
            &shared.peer,
            "task_claim",
            json!({"token": shared.token(), "wait_seconds": LONG_POLL_SECONDS}),
        )
        .await?,
    )
    .context("task_claim returned an unexpected shape")?;
    match claimed.task {
        Some(task) => Ok(Ok(task)),
        None => Ok(Err(claimed.reason.unwrap_or_else(|| "unknown".into()))),
    }
}

/// Runs one claimed task and reports how it went.
async fn run_task(shared: Arc<Shared>, task: Task, abandon: CancellationToken) -> Ended {
    tracing::info!(
        attempt = task.attempts,
        of = task.max_retries + 1,
        "claimed"
    );
    let outcome = match shared
        .progress(
            &task.id,
            0.0,
            format!(
                "{} started {} (attempt {})",
                shared.name, task.kind, task.attempts
            ),
        )
        .await
    {
        Err(lost) => Err(JobError::Lost(lost)),
        Ok(()) => tokio::select! {
            biased;
            () = abandon.cancelled() => Err(JobError::Failed {
                message: "worker shutting down".into(),
                retryable: true,
            }),
            outcome = execute(&shared, &task) => outcome,
        },
    };
    let (fields, ended) = match outcome {
        Ok(mut result) => {
            result.insert("worker".into(), Value::String(shared.name.clone()));
            (
                Map::from_iter([("result".to_string(), Value::Object(result))]),
                Ended::Completed,
            )
        }
        Err(JobError::Failed { message, retryable }) => {
            let ended = if abandon.is_cancelled() {
                Ended::HandedBack
            } else if retryable {
                Ended::Retrying
            } else {
                Ended::Failed
            };
            let error = json!({"message": message, "retryable": retryable});
            (Map::from_iter([("error".to_string(), error)]), ended)
        }
        Err(JobError::Lost(Lost(why))) => {
            tracing::warn!("dropped: {why}");
            return Ended::Dropped;
        }
    };
    match shared.report(&task.id, fields.clone()).await {
        Ok(()) => {
            match ended {
                Ended::Completed => tracing::info!("completed"),
                _ => tracing::info!(error = %fields["error"]["message"], "reported {ended:?}"),
            }
            ended
        }
        Err(e) => {
            // Not the leaseholder any more, or the coordinator is gone: either way the lease
            // runs out (or deregistration returns the task) and it is retried elsewhere.
            tracing::warn!("could not report the outcome, dropping it: {e:#}");
            Ended::Dropped
        }
    }
}

/// Runs the job the task's kind names. `fail_times` makes the first attempts fail on purpose.
async fn execute(shared: &Shared, task: &Task) -> Result<Map<String, Value>, JobError> {
    if let Some(n) = task.params.get("fail_times") {
        let n = n
            .as_u64()
            .ok_or_else(|| JobError::fatal("params.fail_times must be a whole number"))?;
        if task.attempts <= n {
            return Err(JobError::Failed {
                message: format!(
                    "simulated failure of attempt {} (params.fail_times = {n})",
                    task.attempts
                ),
                retryable: true,
            });
        }
    }
    match task.kind.as_str() {
        "sum" => sum(&task.params),
        "uppercase" => uppercase(&task.params),
        "sleep" => sleep(shared, task).await,
        kind if PIPELINE_STAGES.contains(&kind) => pipeline_stage(task).await,
        other => Err(JobError::fatal(format!(
            "unknown task kind {other:?}: this worker runs sum, uppercase, sleep and the six_stage pipeline stages ({})",
            PIPELINE_STAGES.join(", ")
        ))),
    }
}

/// The stage kinds of the coordinator's `six_stage` pipeline template.
const PIPELINE_STAGES: [&str; 6] = [
    "ingestion",
    "transformation",
    "analysis",
    "validation",
    "processing",
    "output",
];

/// A `six_stage` pipeline stage: passes a record count along (from `input.records` for the
/// first stage, then the largest count among the upstream outputs), after waiting
/// `parameters.stage_ms` milliseconds (default 0) to stand in for real work.
async fn pipeline_stage(task: &Task) -> Result<Map<String, Value>, JobError> {
    let ms = task
        .params
        .pointer("/parameters/stage_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(MAX_SLEEP_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let upstream = task.params.get("upstream").and_then(Value::as_object);
    let records = upstream
        .and_then(|u| {
            u.values()
                .filter_map(|o| o.get("records").and_then(Value::as_u64))
                .max()
        })
        .or_else(|| {
            task.params
                .pointer("/input/records")
                .and_then(Value::as_u64)
        })
        .unwrap_or(100);
    let stage = task
        .params
        .pointer("/pipeline/stage")
        .cloned()
        .unwrap_or_else(|| json!(task.kind));
    Ok(Map::from_iter([
        ("stage".to_string(), stage),
        ("records".to_string(), json!(records)),
        (
            "after".to_string(),
            json!(
                upstream
                    .map(|u| u.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            ),
        ),
    ]))
}

/// `sum`: adds `params.numbers`; whole numbers stay whole.
fn sum(params: &Value) -> Result<Map<String, Value>, JobError> {
    let numbers = params
        .get("numbers")
        .and_then(Value::as_array)
        .ok_or_else(|| JobError::fatal("sum needs params.numbers, an array of numbers"))?;
    let whole: Option<Vec<i64>> = numbers.iter().map(Value::as_i64).collect();
    let total = match whole {
        Some(ints) => {
            let total = ints
                .iter()
                .try_fold(0i64, |acc, n| acc.checked_add(*n))
                .ok_or_else(|| JobError::fatal("sum overflows a 64-bit integer"))?;
            json!(total)
        }
        None => {
            let floats: Option<Vec<f64>> = numbers.iter().map(Value::as_f64).collect();
            let floats =
                floats.ok_or_else(|| JobError::fatal("params.numbers must hold only numbers"))?;
            json!(floats.iter().sum::<f64>())
        }
    };
    Ok(Map::from_iter([("sum".to_string(), total)]))
}

/// `uppercase`: uppercases `params.text`.
fn uppercase(params: &Value) -> Result<Map<String, Value>, JobError> {
    let text = params
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| JobError::fatal("uppercase needs params.text, a string"))?;
    Ok(Map::from_iter([(
        "text".to_string(),
        Value::String(text.to_uppercase()),
    )]))
}

/// `sleep`: waits `params.ms` milliseconds, reporting progress every 100 ms.
async fn sleep(shared: &Shared, task: &Task) -> Result<Map<String, Value>, JobError> {
    let ms = task
        .params
        .get("ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms <= MAX_SLEEP_MS)
        .ok_or_else(|| {
            JobError::fatal(format!(
                "sleep needs params.ms, a whole number of milliseconds up to {MAX_SLEEP_MS}"
            ))
        })?;
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_millis(ms);
    let mut tick = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => {
                let done = start.elapsed().as_millis().min(u128::from(ms)) as u64;
                if done >= ms {
                    break;
                }
                shared
                    .progress(&task.id, done as f64 / ms as f64, format!("slept {done} of {ms} ms"))
                    .await?;
            }
        }
    }
    Ok(Map::from_iter([("slept_ms".to_string(), json!(ms))]))
}
