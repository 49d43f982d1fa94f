//! `mcp-coordinator overseer init|status|change|reset`: the overseer credential, typed on the
//! controlling terminal, that `approvals approve` asks for.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::GlobalArgs;
use super::tty::Tty;
use mcp_coordinator::audit::{Actor, os_user_name};
use mcp_coordinator::config::Settings;
use mcp_coordinator::overseer::{
    MAX_FAILURES, MIN_PASSPHRASE_CHARS, OverseerError, OverseerService, RecoveryCode,
    check_passphrase, unprotected_warning,
};
use mcp_coordinator::store::Location;

pub const LONG_ABOUT: &str = "\
The overseer is the person who approves at the command line. Once an overseer is set, \
`approvals approve` asks for the overseer's passphrase on the terminal, so that an assistant \
with a shell, or a child MCP server, cannot approve by running the command: both run as your OS \
user and can run any command you can, but neither knows the passphrase or has your terminal.

The passphrase is read from the controlling terminal (/dev/tty), never from stdin, an argument \
or an environment variable, and is stored only as an argon2id hash, in the database the \
approvals live in (so every --data-dir pointed at that --db finds it). Every set, change and \
reset is a signed audit event naming the overseer, never the hash. After 3 wrong answers in a \
row, approving from the CLI is locked for 60 seconds, for every process on the database. \
Rejecting never needs the passphrase.

Without an overseer, the coordinator warns at start and coordinator_status says CLI approvals \
are unprotected.

What it does not prevent: a process running as the same OS user can still write the database \
file directly. The audit chain shows that, but cannot stop it; keeping the coordinator's data \
under another OS user does.";

pub const AFTER_HELP: &str = "\
Examples:
  mcp-coordinator overseer init              set the overseer (asks name and passphrase)
  mcp-coordinator overseer status            who it is, whether approving is locked
  mcp-coordinator overseer change            new passphrase; asks for the current one first
  mcp-coordinator overseer reset             forgot it: new passphrase with the recovery code";

#[derive(Debug, Subcommand)]
pub enum OverseerCommand {
    /// Set the overseer of this database: a name and a passphrase, typed on the terminal
    #[command(
        long_about = "Set the overseer of this database. Asks on the terminal (/dev/tty) for the \
overseer's name (default: your OS user name) and a passphrase of at least 12 characters, twice, \
not echoed. Stores an argon2id hash of it in the database, records the overseer's name in the \
audit log, and shows a recovery code once, on the terminal: write it down away from this \
machine; `overseer reset` takes it if the passphrase is forgotten. Refused when an overseer is \
already set (use change or reset) or when there is no terminal.",
        after_help = "Example:\n  mcp-coordinator overseer init\n  \
mcp-coordinator --db /srv/team.db overseer init --name alice"
    )]
    Init {
        /// The overseer's name, as decisions record it [default: asked, then your OS user name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Say whether an overseer is set, who, and whether approving is locked
    #[command(
        long_about = "Say whether an overseer is set for this database, who it is, when and by \
which OS user it was set, and whether approving from the CLI is locked after wrong \
passphrases. Without an overseer, says that CLI approvals are unprotected and how to set one. \
Exits 0 either way."
    )]
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Change the passphrase (and the name); asks for the current passphrase first
    #[command(
        long_about = "Change the overseer's passphrase, and with --name the overseer's name. \
Asks on the terminal for the current passphrase (a wrong one counts towards the lock), then \
the new one twice. The recovery code stays the same."
    )]
    Change {
        /// A new name for the overseer [default: unchanged]
        #[arg(long)]
        name: Option<String>,
    },
    /// Forgot the passphrase: set a new one with the recovery code from init
    #[command(
        long_about = "For an overseer who forgot the passphrase: asks on the terminal for the \
recovery code that init (or the last reset) showed, then a new passphrase twice, and shows a new \
recovery code (the old one stops working). A wrong code counts towards the lock.

Lost both? There is deliberately no command that removes the overseer without a secret: \
anything the CLI could do without one, the assistant could do too. Decide the pending approvals \
in your MCP client (its approval form is not affected), or reject them here (rejecting needs no \
passphrase), and start a new database with --db; the old one stays readable and its audit chain \
verifiable."
    )]
    Reset {
        /// A new name for the overseer [default: unchanged]
        #[arg(long)]
        name: Option<String>,
    },
}

pub fn run(global: &GlobalArgs, cmd: OverseerCommand) -> anyhow::Result<ExitCode> {
    // Looking creates nothing: on a database not created yet, `status` says so (no overseer,
    // and how to set one) without creating it.
    if let OverseerCommand::Status { json } = &cmd
        && status_of_missing_database(global, *json)?
    {
        return Ok(ExitCode::SUCCESS);
    }
    let (settings, audit) = super::open(global)?;
    let service = OverseerService::new(audit);
    let by = Actor::os_user();
    match cmd {
        OverseerCommand::Status { json } => status(&settings, &service, json)?,
        OverseerCommand::Init { name } => init(&settings, &service, name, &by)?,
        OverseerCommand::Change { name } => change(&service, name, &by)?,
        OverseerCommand::Reset { name } => reset(&service, name, &by)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `overseer status` on a database file not created yet: says so, creating nothing. False
/// when the database exists (or is `:memory:`).
fn status_of_missing_database(global: &GlobalArgs, json: bool) -> anyhow::Result<bool> {
    let settings = Settings::resolve(
        global.data_dir.clone(),
        global.db.clone(),
        global.config.clone(),
    )?;
    let Location::File(path) = &settings.db else {
        return Ok(false);
    };
    if path.exists() {
        return Ok(false);
    }
    let db = settings.db.display();
    if json {
        let out = json!({"database": db, "exists": false, "set": false});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("overseer: none");
        println!("database: {db} (not created yet; nothing was created now)");
        println!("{}", unprotected_warning(&cli(&settings)));
    }
    Ok(true)
}

/// `overseer status`.
fn status(settings: &Settings, service: &OverseerService, json: bool) -> anyhow::Result<()> {
    let status = service.status()?;
    let db = settings.db.display();
    if json {
        let out = json!({
            "database": db,
            "set": status.overseer.is_some(),
            "name": status.overseer.as_ref().map(|o| &o.name),
            "credential": status.overseer.as_ref().map(|o| o.credential),
            "set_at": status.overseer.as_ref().map(|o| &o.set_at),
            "set_by": status.overseer.as_ref().map(|o| &o.set_by),
            "locked_until": status.locked_until,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match &status.overseer {
        Some(o) => {
            println!(
                "overseer: {} (credential #{}, set {} by {})",
                o.name, o.credential, o.set_at, o.set_by
            );
            println!("database: {db}");
            println!("approvals approve asks for the overseer's passphrase on the terminal");
        }
        None => {
            println!("overseer: none");
            println!("database: {db}");
            println!("{}", unprotected_warning(&cli(settings)));
        }
    }
    if let Some(until) = &status.locked_until {
        println!(
            "locked: approving from the CLI is refused until {until}, after {MAX_FAILURES} \
wrong answers"
        );
    }
    Ok(())
}

/// `overseer init`.
fn init(
    settings: &Settings,
    service: &OverseerService,
    name: Option<String>,
    by: &Actor,
) -> anyhow::Result<()> {
    if let Some(o) = service.current()? {
        return Err(OverseerError::AlreadySet { name: o.name }.into());
    }
    let mut tty = Tty::open("setting the overseer needs the name and passphrase")?;
    let name = match name {
        Some(n) => n,
        None => {
            let default = os_user_name();
            let typed = tty.ask(&format!("Overseer name [{default}]: "))?;
            if typed.is_empty() { default } else { typed }
        }
    };
    mcp_coordinator::overseer::check_name(&name)?;
    let passphrase = new_passphrase(&mut tty)?;
    let (overseer, code) = service.init(&name, &passphrase, by)?;
    drop(passphrase);
    show_code(&mut tty, &code)?;
    println!(
        "overseer {} set for database {}; approvals approve now asks for this \
passphrase on the terminal",
        overseer.name,
        settings.db.display()
    );
    Ok(())
}

/// `overseer change`.
fn change(service: &OverseerService, name: Option<String>, by: &Actor) -> anyhow::Result<()> {
    let current = service.current()?.ok_or(OverseerError::NotSet)?;
    service.check_unlocked()?;
    let mut tty = Tty::open("changing the overseer needs the current passphrase")?;
    let old = tty.secret(&format!(
        "Current passphrase of overseer {} (not echoed): ",
        current.name
    ))?;
    let new = new_passphrase(&mut tty)?;
    let overseer = service.change(&old, name.as_deref(), &new, by)?;
    println!(
        "overseer {} changed (credential #{}); the recovery code is unchanged",
        overseer.name, overseer.credential
    );
    Ok(())
}

/// `overseer reset`.
fn reset(service: &OverseerService, name: Option<String>, by: &Actor) -> anyhow::Result<()> {
    let current = service.current()?.ok_or(OverseerError::NotSet)?;
    service.check_unlocked()?;
    let mut tty = Tty::open("resetting the overseer needs the recovery code")?;
    let code = tty.secret(&format!(
        "Recovery code of overseer {} (not echoed): ",
        current.name
    ))?;
    let new = new_passphrase(&mut tty)?;
    let (overseer, fresh) = service.reset(&code, name.as_deref(), &new, by)?;
    show_code(&mut tty, &fresh)?;
    println!(
        "overseer {} reset (credential #{}); the old recovery code no longer works",
        overseer.name, overseer.credential
    );
    Ok(())
}

/// The start of a command reaching this database (`:memory:` has none; the plain name then).
fn cli(settings: &Settings) -> String {
    settings
        .cli_prefix()
        .unwrap_or_else(|| "mcp-coordinator".into())
}

/// Asks for a new passphrase twice, not echoed.
fn new_passphrase(tty: &mut Tty) -> anyhow::Result<String> {
    let first = tty.secret(&format!(
        "New passphrase (at least {MIN_PASSPHRASE_CHARS} characters, not echoed): "
    ))?;
    check_passphrase(&first)?;
    let again = tty.secret("The same passphrase again: ")?;
    if first != again {
        anyhow::bail!("the two passphrases differ; nothing was changed");
    }
    Ok(first)
}

/// Shows a recovery code on the terminal only: stdout may be a file or a pipe.
fn show_code(tty: &mut Tty, code: &RecoveryCode) -> anyhow::Result<()> {
    tty.say(&format!(
        "\nRecovery code (shown once): {}\nWrite it down and keep it away from this machine's \
files. `mcp-coordinator overseer reset` takes it if the passphrase is forgotten.\n\n",
        code.reveal()
    ))
}
