//! `mcp-coordinator store copy`: move a whole coordinator database to another backend (the
//! SQLite file of a coordinator that ran alone into the PostgreSQL database a team shares, or
//! back), audit chain included, verified on the target before anything is committed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::GlobalArgs;
use mcp_coordinator::audit::{VerifyReport, verify_chain_in};
use mcp_coordinator::store::copy::{self, Copied, CopyError};
use mcp_coordinator::store::{Location, MEMORY, StoreError};

pub const LONG_ABOUT: &str = "\
Work on a coordinator database as a whole: `store copy` moves everything a coordinator keeps \
from one database to another, SQLite or PostgreSQL, either way.";

const COPY_LONG_ABOUT: &str = "\
Copy everything a coordinator keeps from one database into another, empty one: the audit \
chain and its signatures, approvals, agents, tasks, pipelines and their runs, assessments and \
remediations, instances and tool pins, secrets, the overseer credential, and access tokens. \
Either side is a SQLite file (sqlite:PATH, or just the path) or a PostgreSQL URL \
(postgres://USER:PASSWORD@HOST:PORT/DATABASE), so a team that starts with one coordinator keeps \
its history when it moves to a shared PostgreSQL, and a PostgreSQL database can be taken back \
to a file.

The source is read from one consistent snapshot and is never changed; it must be at this \
build's schema version (open it once with this build to migrate an older one). The target must \
hold no data at all (a new file, or a database with nothing in it): two histories are never \
merged, and a target with rows is refused, naming its tables. Everything is written in one \
transaction on the target. Before it commits, the audit chain is verified there: every hash \
and link recomputed, and every head signature checked against the keys the chain itself \
introduces (its audit.key_added events; no data directory's key is trusted here). A chain that \
does not verify, or any error, rolls the copy back and leaves the target empty.

Prints the rows copied per table, the chain's head (sequence number and hash) and the \
verification result, or all of it as JSON with --json.

Secrets stay encrypted as they are: coordinators on the target need the same master key \
(MCP_COORDINATOR_MASTER_KEY or master.key in their data directory). Signing keys and agent \
token keys stay in each data directory. --db and --data-dir play no part: the two databases are --from and --to.

Exit status: 0 when the copy is committed and verified, 1 when the chain did not verify (nothing \
was written), 2 on any other error (nothing was written).";

const COPY_AFTER_HELP: &str = "\
Examples:
  mcp-coordinator store copy --from sqlite:$HOME/.local/share/mcp-coordinator/coordinator.db \\
      --to postgres://coordinator:secret@db.example:5432/coordinator
  mcp-coordinator store copy --from postgres://coordinator:secret@db.example/coordinator \\
      --to sqlite:./coordinator.db
  mcp-coordinator store copy --from old.db --to new.db --json";

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a whole coordinator database into an empty one (SQLite or PostgreSQL, either way)
    #[command(long_about = COPY_LONG_ABOUT, after_help = COPY_AFTER_HELP)]
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The database to copy: sqlite:PATH (or a plain PATH) or postgres://USER:PASSWORD@HOST/DB;
    /// it must exist and is only read
    #[arg(long, value_name = "DB")]
    from: String,
    /// The database to copy into: postgres://... or sqlite:PATH (or a plain PATH); a new file
    /// is created, and an existing database must be empty
    #[arg(long, value_name = "DB")]
    to: String,
    /// Print what was copied and the verification report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(_global: &GlobalArgs, cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Copy(args) => run_copy(&args),
    }
}

/// Why a copy stopped inside the target's transaction.
enum Stop {
    Copy(CopyError),
    /// The chain did not verify on the target.
    Broken(Box<VerifyReport>),
}

impl From<CopyError> for Stop {
    fn from(e: CopyError) -> Self {
        Stop::Copy(e)
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Copy(CopyError::Store(e))
    }
}

fn run_copy(args: &CopyArgs) -> anyhow::Result<ExitCode> {
    let from = location("--from", &args.from)?;
    let to = location("--to", &args.to)?;
    if same_database(&from, &to) {
        bail!(
            "--from and --to name the same database ({}): give an empty database as --to",
            from.display()
        );
    }
    let started = Instant::now();
    let source = copy::open_source(&from).context("--from")?;
    let target = copy::open_target(&to).context("--to")?;
    let copied = copy::copy(&source, &target, |tx, _| {
        let report = verify_chain_in(tx).map_err(CopyError::Store)?;
        if report.ok {
            Ok(report)
        } else {
            Err(Stop::Broken(Box::new(report)))
        }
    });
    let (copied, report) = match copied {
        Ok(done) => done,
        Err(Stop::Copy(e)) => return Err(e).context("store copy: nothing was written"),
        Err(Stop::Broken(report)) => {
            print_broken(args.json, &from, &to, &report)?;
            return Ok(ExitCode::from(1));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let tables: serde_json::Map<String, serde_json::Value> = copied
            .tables
            .iter()
            .map(|(t, n)| (t.to_string(), (*n).into()))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": from.display(),
                "to": to.display(),
                "committed": true,
                "tables": tables,
                "rows": copied.rows(),
                "head_seq": copied.head.as_ref().map(|h| h.0),
                "head_hash": copied.head.as_ref().map(|h| &h.1),
                "seconds": seconds,
                "verify": report,
            }))?
        );
    } else {
        print_copied(&from, &to, &copied, &report, seconds);
    }
    Ok(ExitCode::SUCCESS)
}

/// A `--from`/`--to` argument: `sqlite:PATH`, a `postgres://` URL, or a plain path.
fn location(flag: &str, arg: &str) -> anyhow::Result<Location> {
    if arg.is_empty() {
        bail!("{flag}: empty; give sqlite:PATH or a postgres:// URL");
    }
    if let Some(path) = arg.strip_prefix("sqlite:") {
        // sqlite:///abs/path, as some tools write it, is the absolute path.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() || path == MEMORY {
            bail!("{flag}: {arg:?} names no file; give sqlite:PATH, as in sqlite:./coordinator.db");
        }
        return Ok(Location::File(PathBuf::from(path)));
    }
    if arg == MEMORY {
        bail!(
            "{flag}: {MEMORY} is a database only the process that opens it sees; give a file (sqlite:PATH) or a postgres:// URL"
        );
    }
    if let Some((scheme, _)) = arg.split_once("://")
        && !matches!(scheme, "postgres" | "postgresql")
    {
        bail!(
            "{flag}: {scheme}:// is not a database store copy knows; give sqlite:PATH, a path, or a postgres:// URL"
        );
    }
    Location::from_arg(arg).map_err(|e| {
        // The store's URL errors speak of --db, the serving flag.
        let message = match e {
            StoreError::Postgres { message } => message,
            e => e.to_string(),
        };
        anyhow::anyhow!("{flag}: {}", message.replacen("--db: ", "", 1))
    })
}

/// Whether two locations are one database (the same file, however it is spelled).
fn same_database(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::File(x), Location::File(y)) => {
            x == y
                || matches!(
                    (std::fs::canonicalize(x), std::fs::canonicalize(y)),
                    (Ok(x), Ok(y)) if x == y
                )
        }
        _ => a == b,
    }
}

fn print_copied(from: &Location, to: &Location, copied: &Copied, report: &VerifyReport, s: f64) {
    println!(
        "copied {} rows from {} to {} in {s:.1} s:",
        copied.rows(),
        from.display(),
        to.display()
    );
    let width = copied
        .tables
        .iter()
        .map(|(t, _)| t.len())
        .max()
        .unwrap_or(0);
    for (table, n) in &copied.tables {
        println!("  {table:<width$}  {n:>9}");
    }
    match &copied.head {
        Some((seq, hash)) => println!("audit chain head: event {seq}, hash {hash}"),
        None => println!("audit chain head: none (the chain is empty)"),
    }
    let keys = report
        .signatures
        .keys
        .iter()
        .filter(|k| k.introduced_seq.is_some())
        .count();
    println!(
        "verified on the target: chain intact, {}",
        super::audit::chain_figures(report, &format!(" by {keys} key(s) the chain introduces"))
    );
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
}

fn print_broken(
    json: bool,
    from: &Location,
    to: &Location,
    report: &VerifyReport,
) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": from.display(),
                "to": to.display(),
                "committed": false,
                "verify": report,
            }))?
        );
        return Ok(());
    }
    println!(
        "audit chain does NOT verify on the target: first bad event {}: {}",
        report.first_bad_seq.unwrap_or(0),
        report.first_bad_reason.as_deref().unwrap_or("")
    );
    super::audit::print_problems(report);
    println!(
        "nothing was written to {}; check the source with `mcp-coordinator audit verify --db {}` (which also trusts that coordinator's own key)",
        to.display(),
        from.display()
    );
    Ok(())
}
