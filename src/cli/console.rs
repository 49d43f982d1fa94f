//! `mcp-coordinator console`: serve the oversight console for a database, alone (a serving
//! coordinator serves one too, on a port of its own, unless `[console] enabled = false`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use mcp_coordinator::console::{self, Console, DEFAULT_CONSOLE_LISTEN};
use mcp_coordinator::overseer::OverseerService;

pub const LONG_ABOUT: &str = "\
Serve the oversight console: a web page where the overseer sees agents, the queue, pipeline \
runs, child instances, assessments, remediations and the audit log, and approves or rejects \
what waits for a person. It serves the database given by --data-dir/--db (the one your \
coordinators use), and any number of consoles and coordinators can share it: a decision made \
here reaches a waiting tool call in any coordinator within a second.

Logging in takes the overseer's passphrase (set one with `mcp-coordinator overseer init`); \
approving a critical approval asks for it again. The console listens on loopback unless \
[console] configures TLS (tls_cert, tls_key) or a TLS-terminating proxy in front \
(behind_proxy = true, public_url).";

pub const AFTER_HELP: &str = "\
Examples:
  mcp-coordinator console                         http://127.0.0.1:8750/ for the default database
  mcp-coordinator console --listen 127.0.0.1:9000
  mcp-coordinator --db /srv/team.db console

Every serving coordinator also serves a console of its own on a free loopback port; its URL
is on the coordinator's stderr and in every pending approval.";

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Address to listen on, HOST:PORT [default: the config's [console] listen, else
    /// 127.0.0.1:8750]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

pub fn run(global: &GlobalArgs, args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let (mut settings, audit) = super::open_with(global, super::Access::ReadExisting)?;
    if settings.cli_prefix().is_none() {
        anyhow::bail!(
            "--db :memory: would serve an empty database that no coordinator shares; a coordinator \
serving :memory: serves a console of its own (its URL is on its stderr)"
        );
    }
    super::serve::init_tracing(
        &super::serve::log_level(global, &settings),
        global.log_format,
    )?;
    let listen = args
        .listen
        .or_else(|| settings.config.console.listen.clone())
        .unwrap_or_else(|| DEFAULT_CONSOLE_LISTEN.to_string());
    let bound = console::bind(&settings.config.console, &listen)?;
    let console = Console::new(audit.clone(), &settings, &bound, None);
    settings.console_url = Some(console.url());
    match OverseerService::new(audit).current() {
        Ok(Some(o)) => tracing::info!(overseer = %o.name, "log in with the overseer's passphrase"),
        Ok(None) => tracing::warn!(
            "no overseer is set for this database, so nobody can log in: set one with `mcp-coordinator overseer init`"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read the overseer credential"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!(
        "mcp-coordinator console for {db}: {url}",
        db = settings.db.display(),
        url = console.url()
    );
    runtime
        .block_on(console.serve(bound, super::serve::shutdown_signal()))
        .context("the console stopped")?;
    Ok(ExitCode::SUCCESS)
}
