//! Command-line interface: argument definitions (clap) and dispatch to `serve` (the default)
//! and the people-facing subcommands, one file each (`approvals`, `audit`, `console`, `overseer`,
//! `secrets`, `exec`, `store`), with the terminal (`tty`) and process hardening (`hardening`) they
//! share. It may depend on every domain and on `server` (to serve); nothing depends on it.

mod approvals;
mod audit;
mod console;
mod exec;
mod hardening;
mod overseer;
mod secrets;
mod serve;
mod store;
mod token;
mod tty;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use mcp_coordinator::audit::{AuditLog, AuditSigner};
use mcp_coordinator::config::Settings;
use mcp_coordinator::store::Store;

const ABOUT: &str = "A native MCP server that coordinates MCP setups, worker agents, tasks, \
pipelines and child MCP servers, with a person's approval before anything changes.";

const LONG_ABOUT: &str = "\
A native MCP server that coordinates MCP setups, worker agents, tasks, pipelines and child MCP \
servers, with a person's approval before anything changes.

Run with no command, it serves MCP on stdin/stdout: that is how an MCP client starts it. \
Every state change and tool call lands in a hash-chained, signed audit log in an embedded \
SQLite database, which several coordinator processes (and these commands) can share.";

const AFTER_HELP: &str = "\
Add it to an MCP client (Claude Code .mcp.json, Claude Desktop, Cursor, Kilo Code):
  {\"mcpServers\": {\"coordinator\": {\"command\": \"mcp-coordinator\"}}}
VS Code (.vscode/mcp.json):
  {\"servers\": {\"coordinator\": {\"type\": \"stdio\", \"command\": \"mcp-coordinator\"}}}
Try it in the MCP Inspector:
  npx @modelcontextprotocol/inspector mcp-coordinator

First run: set the overseer, whose passphrase approving at the CLI then needs (without one, an
assistant with a shell can approve its own requests):
  mcp-coordinator overseer init

Examples:
  mcp-coordinator                          serve on stdio with the default database
  mcp-coordinator serve --db :memory:      serve without touching disk
  mcp-coordinator console                  the oversight console at http://127.0.0.1:8750/
  mcp-coordinator serve --http 127.0.0.1:8760   MCP over HTTP at /mcp (bearer tokens)
  mcp-coordinator token issue --role admin --name me   a bearer token for it
  mcp-coordinator approvals list           what is waiting for a person
  mcp-coordinator approvals approve ID --reason \"checked the diff\"   (asks the passphrase)
  mcp-coordinator audit verify             check the audit chain and its signatures
  mcp-coordinator audit export > log.jsonl export every audit event
  mcp-coordinator store copy --from sqlite:coordinator.db --to postgres://...   move to PostgreSQL";

#[derive(Debug, Parser)]
#[command(
    name = "mcp-coordinator",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command understands, before or after the command name.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Directory of this coordinator's state, created 0700: the database coordinator.db (with
    /// its -wal and -shm files) unless --db puts it elsewhere, the audit signing key
    /// audit-signing-key.pem, the agent token key agent-token.key, the secret store's
    /// master.key (master.key.next while rotating), and backups/ (sealed copies of the config
    /// files remediations changed)
    /// [default: $XDG_DATA_HOME/mcp-coordinator, i.e. ~/.local/share/mcp-coordinator]
    #[arg(
        long,
        global = true,
        env = "MCP_COORDINATOR_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,

    /// SQLite database file, or `:memory:` for a database that lives only as long as the process
    /// [default: coordinator.db in the data directory]
    #[arg(long, global = true, env = "MCP_COORDINATOR_DB", value_name = "PATH")]
    pub db: Option<String>,

    /// TOML config file; must exist when given
    /// [default: ~/.config/mcp-coordinator/config.toml, if present]
    #[arg(
        long,
        global = true,
        env = "MCP_COORDINATOR_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// Log level for stderr: error, warn, info, debug, trace, or a filter such as
    /// `mcp_coordinator=debug,rmcp=info` [default: the config's log_level, else
    /// `info,rmcp=warn`]
    #[arg(long, global = true, env = "MCP_COORDINATOR_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log line format on stderr: `text`, or `json` (one object per line, for log shippers)
    #[arg(
        long,
        global = true,
        env = "MCP_COORDINATOR_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: mcp_coordinator::logging::LogFormat,

    /// Toolsets a client's connection starts with, comma-separated (`serve` only): system,
    /// approvals, assessments, installer, agents, pipelines, instances, children (the tools
    /// of running child servers), or all. The `toolsets` tool enables the others on demand
    /// [default: the config's tools.toolsets, else system,approvals,assessments,children]
    #[arg(
        long,
        global = true,
        env = "MCP_COORDINATOR_TOOLSETS",
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        hide_possible_values = true
    )]
    pub toolsets: Option<Vec<mcp_coordinator::config::Toolset>>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP on stdin/stdout (the default when no command is given), or over HTTP
    #[command(long_about = serve::LONG_ABOUT, after_help = serve::AFTER_HELP)]
    Serve(serve::ServeArgs),
    /// Decide approvals as a person: list, show, approve, reject
    #[command(subcommand, long_about = approvals::LONG_ABOUT)]
    Approvals(approvals::ApprovalsCommand),
    /// Serve the oversight console (a web page to see everything and decide approvals)
    #[command(long_about = console::LONG_ABOUT, after_help = console::AFTER_HELP)]
    Console(console::ConsoleArgs),
    /// Set the overseer whose passphrase approving at the CLI needs: init, status, change, reset
    #[command(subcommand, long_about = overseer::LONG_ABOUT, after_help = overseer::AFTER_HELP)]
    Overseer(overseer::OverseerCommand),
    /// Inspect the audit log: verify the chain, export events
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Keep API keys and tokens encrypted: set, list, rm, rotate-key
    #[command(subcommand, long_about = secrets::LONG_ABOUT, after_help = secrets::AFTER_HELP)]
    Secrets(secrets::SecretsCommand),
    /// Issue, list and revoke the bearer tokens and API keys MCP over HTTP accepts
    #[command(subcommand, long_about = token::LONG_ABOUT, after_help = token::AFTER_HELP)]
    Token(token::TokenCommand),
    /// Run a command (an MCP server) with secrets from the store in its environment
    #[command(long_about = exec::LONG_ABOUT, after_help = exec::AFTER_HELP)]
    Exec(exec::ExecArgs),
    /// Copy a whole coordinator database to another (SQLite to PostgreSQL, or back)
    #[command(subcommand, long_about = store::LONG_ABOUT)]
    Store(store::StoreCommand),
}

/// Parses arguments and runs the chosen command.
pub fn main() -> ExitCode {
    // First of all, before any secret, passphrase or key is read, in every command.
    hardening::not_dumpable();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve::run(&cli.global, &serve::ServeArgs::default()),
        Some(Command::Serve(args)) => serve::run(&cli.global, &args),
        Some(Command::Approvals(cmd)) => approvals::run(&cli.global, cmd),
        Some(Command::Console(args)) => console::run(&cli.global, args),
        Some(Command::Overseer(cmd)) => overseer::run(&cli.global, cmd),
        Some(Command::Audit(cmd)) => audit::run(&cli.global, cmd),
        Some(Command::Secrets(cmd)) => secrets::run(&cli.global, cmd),
        Some(Command::Exec(args)) => exec::run(&cli.global, args),
        Some(Command::Token(cmd)) => token::run(&cli.global, cmd),
        Some(Command::Store(cmd)) => store::run(&cli.global, cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcp-coordinator: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether a command may create the database, or only reads one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Creates the database (and its directory) when missing: serving, deciding, setting.
    Create,
    /// Refuses a database that does not exist, creating nothing: a typo in `--db` must not
    /// make an empty database that then answers "no pending approvals".
    ReadExisting,
}

/// Resolves settings and opens the store and audit log, as every command needs.
fn open(global: &GlobalArgs) -> anyhow::Result<(Settings, AuditLog)> {
    open_with(global, Access::Create)
}

/// [`open`], for a command that creates the database or only reads an existing one.
fn open_with(global: &GlobalArgs, access: Access) -> anyhow::Result<(Settings, AuditLog)> {
    let settings = Settings::resolve(
        global.data_dir.clone(),
        global.db.clone(),
        global.config.clone(),
    )?;
    mcp_coordinator::store::budget::set_default(settings.config.database.busy_timeout());
    let store = match access {
        Access::Create => Store::open(&settings.db)?,
        Access::ReadExisting => Store::open_existing(&settings.db)?,
    };
    let signer = AuditSigner::load_or_create(&settings.data_dir)?;
    let audit = AuditLog::new(store, std::sync::Arc::new(signer));
    Ok((settings, audit))
}
