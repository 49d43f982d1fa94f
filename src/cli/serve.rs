//! `mcp-coordinator serve`: start tracing on stderr, open the store, say hello on a terminal,
//! bind the oversight console, and serve MCP on stdio until the client leaves or a signal arrives.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalArgs;
use mcp_coordinator::audit::AuditLog;
use mcp_coordinator::config::Settings;
use mcp_coordinator::console::{self, Console};
use mcp_coordinator::overseer::{OverseerService, unprotected_warning};
use mcp_coordinator::server::{self, Coordinator};

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Before the runtime's threads start allocating.
    mcp_coordinator::limits::tune_allocator();
    let (mut settings, audit) = super::open(global)?;
    if let Some(toolsets) = &global.toolsets {
        settings.config.tools.toolsets = toolsets.clone();
    }
    init_tracing(&log_level(global, &settings), global.log_format)?;
    let tool_calls = std::sync::Arc::new(console::metrics::ToolCalls::default());
    let console = bind_console(&mut settings, &audit, &tool_calls);
    if std::io::stdin().is_terminal() {
        banner(&settings);
    }
    tracing::info!(
        db = %settings.db.display(),
        data_dir = %settings.data_dir.display(),
        console = %settings.console_url.as_deref().unwrap_or("off"),
        "serving MCP on stdio"
    );
    warn_if_unprotected(&settings, &audit);
    // Orphans of child servers come to us rather than to init, so that they can be killed
    // and reaped (src/instance/child/reaper.rs); before any child is started.
    match mcp_coordinator::instance::reaper::become_subreaper() {
        Ok(()) => {}
        // Not Linux: a known gap (README, Platforms), not worth a warning at every start.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(error = %e, "no child subreaper: each child's process group is killed, not what leaves it");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper: processes that child servers leave behind after setsid and a double fork may outlive them");
        }
    }
    let coordinator = Coordinator::new(audit, settings, tool_calls)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The relay reads and writes the descriptors itself (threads, no blocking pool).
    let input = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take over stdin")?;
    let output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take over stdout")?;
    let console_stop = tokio_util::sync::CancellationToken::new();
    if let Some((console, bound)) = console {
        let stop = console_stop.clone().cancelled_owned();
        runtime.spawn(async move {
            if let Err(e) = console.serve(bound, stop).await {
                tracing::warn!(error = %e, "the console stopped");
            }
        });
    }
    let stopped = runtime.block_on(server::run(coordinator, (input, output), shutdown_signal()))?;
    console_stop.cancel();
    tracing::info!(?stopped, "stopped");
    // Do not wait for a blocked stdin read: the session is over.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

/// The console this coordinator serves beside MCP, bound now so that pending approvals can
/// link to it; `None` when `[console] enabled = false` or the address cannot be had (said on
/// stderr: serving MCP goes on without it).
fn bind_console(
    settings: &mut Settings,
    audit: &AuditLog,
    tool_calls: &std::sync::Arc<console::metrics::ToolCalls>,
) -> Option<(Console, console::Bound)> {
    let config = &settings.config.console;
    if !config.enabled {
        return None;
    }
    // Logging in needs an overseer, which only `overseer init` on a database file sets: a
    // console of a `:memory:` database could show nothing to anyone.
    if settings.cli_prefix().is_none() {
        tracing::debug!("no oversight console for an in-memory database (no overseer can be set)");
        return None;
    }
    let listen = config
        .listen
        .clone()
        .unwrap_or_else(|| console::DEFAULT_SERVE_LISTEN.to_string());
    match console::bind(config, &listen) {
        Ok(bound) => {
            let console = Console::new(audit.clone(), settings, &bound, Some(tool_calls.clone()));
            settings.console_url = Some(console.url());
            Some((console, bound))
        }
        Err(e) => {
            tracing::warn!(error = %e, "not serving the oversight console");
            None
        }
    }
}

/// The stderr log filter: `--log-level`, else the config's, else the default.
pub(super) fn log_level(global: &GlobalArgs, settings: &Settings) -> String {
    global
        .log_level
        .clone()
        .or_else(|| settings.config.log_level.clone())
        .unwrap_or_else(|| mcp_coordinator::logging::DEFAULT_FILTER.into())
}

/// Says on stderr, at start, when no overseer guards approving at the CLI. `:memory:` is left
/// out: no other process can reach it.
fn warn_if_unprotected(settings: &Settings, audit: &AuditLog) {
    let Some(cli) = settings.cli_prefix() else {
        return;
    };
    match OverseerService::new(audit.clone()).current() {
        Ok(None) => tracing::warn!("{}", unprotected_warning(&cli)),
        Ok(Some(o)) => {
            tracing::info!(overseer = %o.name, "approving at the CLI needs the overseer's passphrase")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the overseer credential"),
    }
}

/// Logs go to stderr, never stdout (stdout carries JSON-RPC only), masked so that no level
/// shows a secret. Colors only on a terminal.
pub(super) fn init_tracing(
    level: &str,
    format: mcp_coordinator::logging::LogFormat,
) -> anyhow::Result<()> {
    mcp_coordinator::logging::init(level, format, std::io::stderr().is_terminal())
        .map_err(anyhow::Error::msg)
}

/// Started by hand: say what this is and how to use it, on stderr.
fn banner(settings: &Settings) {
    let versions = server::supported_versions().join(", ");
    eprintln!(
        "mcp-coordinator {version}: an MCP server speaking JSON-RPC on stdin/stdout.\n\
         \n\
         It is meant to be started by an MCP client, not typed at. Data:\n\
         \x20 database:   {db}\n\
         \x20 data dir:   {data} (audit signing key)\n\
         \x20 config:     {config}\n\
         \x20 console:    {console} (the overseer decides approvals there)\n\
         Protocol versions: {versions}.\n\
         \n\
         Connect a client: add {{\"command\": \"mcp-coordinator\"}} to its MCP server config.\n\
         Try it in the Inspector: npx @modelcontextprotocol/inspector mcp-coordinator\n\
         Press Ctrl-D or Ctrl-C to stop. Serving now.",
        version = env!("CARGO_PKG_VERSION"),
        db = settings.db.display(),
        data = settings.data_dir.display(),
        config = settings
            .config_path
            .as_ref()
            .map_or("none (defaults)".to_string(), |p| p.display().to_string()),
        console = settings
            .console_url
            .as_deref()
            .unwrap_or("off ([console] enabled = false, --db :memory:, or its address was taken)"),
    );
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        () = term => tracing::info!("terminated"),
    }
}
