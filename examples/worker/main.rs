//! A worker agent for `mcp-coordinator`: it reaches a coordinator (its own child on stdio, or a
//! running one's `/mcp` over HTTP with a bearer token), registers, heartbeats, claims tasks and
//! runs small deterministic jobs (`sum`, `uppercase`, `sleep`, the six-stage pipeline stages).
//!
//! Point it at the database an assistant's coordinator uses (`--data-dir` / `--db`), or at a
//! coordinator serving HTTP (`--url`), and the tasks the assistant submits with `task_submit` are
//! run here; see `--help` and `examples/README.md`. It talks to the coordinator only through MCP
//! tool calls, as a worker written in any language would.

mod auth;
mod calls;
mod connect;
mod jobs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Parser;
use rmcp::service::{Peer, RoleClient};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use calls::{Claimed, Deregistered, Registration, Shared, Task, call, failure_code};
use jobs::{Counts, Ended, run_task};

const LONG_ABOUT: &str = "\
A worker agent for mcp-coordinator.

It reaches a coordinator in one of two ways:

- On stdio (the default): it starts `mcp-coordinator` as a child process and speaks MCP to it, \
exactly as an AI client does. Give it the same --data-dir (or --db) as the coordinator your \
assistant uses, and both share one SQLite database: the tasks the assistant submits with \
`task_submit` are claimed and run here.
- Over HTTP (--url): it connects to a coordinator running `serve --http` at its /mcp URL, with a \
bearer token that needs the `agent` role. Either a fixed token (a local access token or API key, \
`mcp-coordinator token issue --role agent --name NAME`) read from the environment variable \
--token-env names (MCP_COORDINATOR_TOKEN by default), or OAuth 2.1 client credentials: \
--client-id with the secret in the variable --client-secret-env names (WORKER_CLIENT_SECRET by \
default), and the provider's --token-url or --issuer. The worker then asks the token endpoint \
for a token for the --url resource (RFC 8707 `resource`), gets a new one when 80% of its \
lifetime has passed, and on a 401 gets a new one and sends the refused request again, once. The \
provider's service client must carry the `agent` role. Secrets are never taken on the command \
line (they would show in `ps`); to keep one in the coordinator's encrypted secret store, let \
`mcp-coordinator exec --secret NAME=VAR -- worker ...` put it in the environment.

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
      --coordinator target/release/mcp-coordinator --data-dir /srv/coordinator

  # Over HTTP with a local token (the coordinator runs `serve --http 127.0.0.1:8080`):
  export MCP_COORDINATOR_TOKEN=$(mcp-coordinator token issue --role agent --name w3)
  worker --name w3 --url http://127.0.0.1:8080/mcp

  # Over HTTP with client credentials from Keycloak, the secret from the secret store:
  mcp-coordinator exec --secret KC_WORKER_SECRET=WORKER_CLIENT_SECRET -- \\
      worker --name w4 --url https://coord.example.com/mcp --client-id etl-worker \\
      --issuer https://sso.example.com/realms/ops";

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
pub struct Args {
    /// Agent name, unique among active agents (for example `etl-worker-1`)
    #[arg(long)]
    name: String,

    /// The capability this worker offers; it runs tasks that require only this capability
    #[arg(long, default_value = "data-processing")]
    capability: String,

    /// A coordinator's MCP endpoint to connect to over HTTP (`https://HOST/mcp`) instead of
    /// starting one on stdio
    #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "db", "config"])]
    url: Option<String>,

    /// With --url: the environment variable holding the bearer token (a local access token or
    /// API key with the `agent` role), when not using --client-id
    #[arg(long, value_name = "VAR", default_value = "MCP_COORDINATOR_TOKEN")]
    token_env: String,

    /// With --url: the OAuth client id for the client-credentials grant
    #[arg(long, value_name = "ID", requires = "url")]
    client_id: Option<String>,

    /// With --client-id: the environment variable holding the client secret
    #[arg(long, value_name = "VAR", default_value = "WORKER_CLIENT_SECRET")]
    client_secret_env: String,

    /// With --client-id: the provider's token endpoint
    #[arg(
        long,
        value_name = "URL",
        requires = "client_id",
        conflicts_with = "issuer"
    )]
    token_url: Option<String>,

    /// With --client-id: the provider's issuer URL; its token endpoint is read from
    /// ISSUER/.well-known/openid-configuration
    #[arg(long, value_name = "URL", requires = "client_id")]
    issuer: Option<String>,

    /// With --client-id: the scope to ask for (space-separated), if the provider wants one
    #[arg(long, value_name = "SCOPE", requires = "client_id")]
    scope: Option<String>,

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
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one claim waits for a task (`wait_seconds`): well inside [`CALL_TIMEOUT`].
const LONG_POLL_SECONDS: u64 = 10;
/// Backoff when a claim is refused for another reason (load above the ceiling, draining) or
/// fails: starts here, doubles per claim...
const IDLE_MIN: Duration = Duration::from_millis(200);
/// ...up to this.
const IDLE_MAX: Duration = Duration::from_millis(1000);
/// Progress reports of the `sleep` job.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// The longest `sleep` job accepted (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;
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

async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone())?;
    let mut client = connect::connect(&args).await?;
    let result = session(&args, client.peer().clone(), &shutdown).await;
    // Closing stdin ends a coordinator child (rmcp waits for it to exit); over HTTP it ends the
    // session.
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
