//! `mcp-coordinator secrets set|list|rm|rotate-key|open-backup`: the encrypted secret store,
//! from the terminal. Values come in on stdin only and are never printed; listings show the last four
//! characters at most.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::Subcommand;

use super::GlobalArgs;
use mcp_coordinator::audit::Actor;
use mcp_coordinator::secret::{
    ENV_KEY, ENV_NEW_KEY, KEY_FILE, LAST4_MIN_CHARS, MAX_VALUE, SecretError, SecretInfo,
    SecretStore, check_name,
};

pub const LONG_ABOUT: &str = "\
Keep API keys and tokens in the coordinator's encrypted secret store instead of in MCP client \
config files, and hand them to MCP servers with `mcp-coordinator exec`.

Values are encrypted with AES-256-GCM (a random nonce per value, bound to its name) under one \
master key: the variable MCP_COORDINATOR_MASTER_KEY (64 hex characters, for example from \
`openssl rand -hex 32`) when set, else the file master.key in the data directory, created with \
mode 0600 when the first secret is stored. Back that key up: without it the secrets cannot be \
read. A missing or wrong key is an error naming the key each secret was stored under; nothing \
is ever read without the right key. Every change is recorded in the audit log by name, never \
with the value.

Exit status: 0 on success, 1 when the named secret does not exist, 2 on any other error.";

pub const AFTER_HELP: &str = "\
Examples:
  printf %s \"$GITHUB_TOKEN\" | mcp-coordinator secrets set GITHUB_TOKEN
  mcp-coordinator secrets set OPENAI_API_KEY        (on a terminal: asks, without echo)
  mcp-coordinator secrets list
  mcp-coordinator secrets rm OLD_TOKEN
  mcp-coordinator secrets rotate-key
  mcp-coordinator secrets open-backup backups/rem_…/…-mcp.json.sealed
  mcp-coordinator exec --secret GITHUB_TOKEN -- npx -y @modelcontextprotocol/server-github";

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store or replace a secret; the value is read from stdin
    #[command(
        long_about = "Store or replace a secret. The value is read from stdin, never from \
the command line (which other users and shell history can see): pipe it in, and one trailing \
newline is removed. On a terminal you are asked for it and what you type is not echoed. An \
empty value is refused. The value is never printed. Names are 1 to 128 characters of \
A-Z a-z 0-9 _ . -.

Without MCP_COORDINATOR_MASTER_KEY, the first secret creates the key file master.key (mode 0600) \
in the data directory; a new key is never created while secrets stored under another key exist.",
        after_help = "Examples:\n  printf %s \"$TOKEN\" | mcp-coordinator secrets set GITHUB_TOKEN\n  \
mcp-coordinator secrets set GITHUB_TOKEN < token.txt\n  mcp-coordinator secrets set GITHUB_TOKEN"
    )]
    Set {
        /// The secret's name, for example GITHUB_TOKEN
        name: String,
    },
    /// List secrets: names, the last four characters, and when they changed
    #[command(
        long_about = "List stored secrets by name with the last four characters of each value \
(for values of at least 12 characters; shorter ones show none) and when it was last changed. \
Secrets the current master key cannot decrypt are marked unreadable, with the fingerprint of the \
key they were stored under. Values are never printed.",
        after_help = "Example output:\n  GITHUB_TOKEN    …abcd  updated 2026-05-01T09:30:00Z\n  \
OLD_KEY         unreadable (stored under master key 3f2a9c0d1e4b5a6f)"
    )]
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret; exit 1 if there is none by that name
    #[command(
        long_about = "Delete a secret from the store. No master key is needed. Exits 1 when \
there is no secret by that name. The deletion is recorded in the audit log."
    )]
    Rm {
        /// The secret's name
        name: String,
    },
    /// Re-encrypt every secret under a new master key
    #[command(
        long_about = "Re-encrypt every secret under a new master key, all or nothing: every \
secret is decrypted with the current key first, and if any cannot be, nothing changes.

With the key file (MCP_COORDINATOR_MASTER_KEY unset): a new random key is written to \
master.key.next (mode 0600, synced), the secrets are re-encrypted in one database transaction, \
and the new key is then renamed over master.key. If the process dies between the two, the next \
use of the store notices the secrets are under the key in master.key.next and finishes the \
rename, so no key is ever lost.

With MCP_COORDINATOR_MASTER_KEY set, the key is yours to keep, so it is refused unless you also \
set MCP_COORDINATOR_NEW_MASTER_KEY to the new key; the secrets are then re-encrypted under it \
(no file is touched) and you put the new value in MCP_COORDINATOR_MASTER_KEY everywhere the \
coordinator runs. Running it again with both set is harmless.",
        after_help = "Examples:\n  mcp-coordinator secrets rotate-key\n  \
MCP_COORDINATOR_NEW_MASTER_KEY=$(openssl rand -hex 32) mcp-coordinator secrets rotate-key"
    )]
    RotateKey,
    /// Print a remediation backup: the exact bytes it holds, on stdout
    #[command(
        name = "open-backup",
        long_about = "Print the exact bytes a remediation backup holds. Backups (the files \
under backups/ in the data directory, named ...sealed) keep a client config as it was before a \
remediation, secrets included, so they are sealed under the secret store; this opens one for a \
person to look at or compare. The path it was taken from is printed on stderr. \
`remediation_rollback` is how a remediation is undone; this changes nothing.",
        after_help = "Example:\n  mcp-coordinator secrets open-backup \
~/.local/share/mcp-coordinator/backups/rem_1f…/20261203T101500Z-0-mcp.json.sealed | diff - ~/.cursor/mcp.json"
    )]
    OpenBackup {
        /// The backup file
        file: std::path::PathBuf,
    },
}

pub fn run(global: &GlobalArgs, cmd: SecretsCommand) -> anyhow::Result<ExitCode> {
    // Check what needs no database first.
    if let SecretsCommand::Set { name } | SecretsCommand::Rm { name } = &cmd {
        check_name(name)?;
    }
    let value = match &cmd {
        SecretsCommand::Set { name } => Some(read_value(name)?),
        _ => None,
    };
    // Only `set` may start a database; listing, removing and rotating need one that exists.
    let access = match cmd {
        SecretsCommand::Set { .. } => super::Access::Create,
        _ => super::Access::ReadExisting,
    };
    let (settings, audit) = super::open_with(global, access)?;
    let store = SecretStore::new(audit, settings.data_dir.clone());
    let by = Actor::os_user();
    match cmd {
        SecretsCommand::Set { name } => {
            let value = value.unwrap_or_default();
            let key_path = store.key_path();
            let had_key = std::env::var_os(ENV_KEY).is_some() || key_path.exists();
            let replaced = store.set(&name, &value, &by)?;
            drop(value);
            if !had_key && key_path.exists() {
                eprintln!(
                    "mcp-coordinator: created master key {} (mode 0600); back it up: without it \
the secrets cannot be read",
                    key_path.display()
                );
            }
            println!(
                "{} secret {name}",
                if replaced { "replaced" } else { "stored" }
            );
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::List { json } => {
            let secrets = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&secrets)?);
            } else if secrets.is_empty() {
                println!("no secrets");
            } else {
                let width = secrets.iter().map(|s| s.name.len()).max().unwrap_or(0);
                for s in &secrets {
                    println!("{:<width$}  {}", s.name, describe(s));
                }
            }
            let unreadable = secrets.iter().filter(|s| !s.readable).count();
            if unreadable > 0 {
                let status = store.key_status()?;
                eprintln!(
                    "mcp-coordinator: {unreadable} secret(s) cannot be decrypted with the current \
master key ({}); provide the key they were stored under ({ENV_KEY}, or the {KEY_FILE} file), or \
store them again",
                    match &status.fingerprint {
                        Some(fp) => format!("{fp}, {}", status.source),
                        None => status.source,
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rm { name } => {
            if store.remove(&name, &by)? {
                println!("removed secret {name}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("mcp-coordinator: {}", SecretError::NotFound(name));
                Ok(ExitCode::from(1))
            }
        }
        SecretsCommand::OpenBackup { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let Some(origin) = mcp_coordinator::secret::sealed_origin(&bytes) else {
                anyhow::bail!(
                    "{} is not a sealed backup (backups taken before backups were sealed are plain copies: read it directly)",
                    file.display()
                );
            };
            let plain = store.open_file(&origin, &bytes)?;
            eprintln!("mcp-coordinator: backup of {origin}");
            std::io::stdout().write_all(&plain)?;
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::RotateKey => {
            let before = store.key_status()?;
            let count = store.rotate_key(&by)?;
            let from = before.fingerprint.unwrap_or_default();
            if std::env::var_os(ENV_KEY).is_some() {
                let after = store
                    .clone()
                    .with_env_keys(std::env::var(ENV_NEW_KEY).ok(), None);
                let to = after.key_status()?.fingerprint.unwrap_or_default();
                println!(
                    "re-encrypted {count} secret(s) under master key {to} (was {from}); now set \
{ENV_KEY} to the value of {ENV_NEW_KEY} everywhere the coordinator runs"
                );
            } else {
                let to = store.key_status()?.fingerprint.unwrap_or_default();
                println!(
                    "re-encrypted {count} secret(s) under master key {to} (was {from}); replaced {}; \
back it up",
                    store.key_path().display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One listing line after the name: `…abcd  updated TIME`, never more of the value.
fn describe(s: &SecretInfo) -> String {
    let updated = s.updated_at.get(..19).unwrap_or(&s.updated_at);
    match &s.last4 {
        Some(l) if !l.is_empty() => format!("…{l}  updated {updated}Z"),
        Some(_) => format!("(under {LAST4_MIN_CHARS} characters: none shown)  updated {updated}Z"),
        None => format!(
            "unreadable (stored under master key {})  updated {updated}Z",
            s.key_fingerprint
        ),
    }
}

/// Reads the value from stdin: a line typed without echo on a terminal, else everything piped
/// in, minus one trailing newline. Refuses empty values.
fn read_value(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut value = if stdin.is_terminal() {
        // Read from the terminal that is stdin, echo off; a Ctrl-C leaves echo on.
        super::tty::read_hidden(
            "/dev/stdin",
            &format!("Value for secret {name} (not echoed): "),
            None,
        )?
    } else {
        let mut bytes = Vec::new();
        stdin
            .lock()
            .take(MAX_VALUE as u64 + 3)
            .read_to_end(&mut bytes)?;
        if bytes.len() > MAX_VALUE + 2 {
            anyhow::bail!("value: more than {MAX_VALUE} bytes on stdin; the limit is {MAX_VALUE}");
        }
        String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("value: stdin is not UTF-8 text"))?
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        anyhow::bail!(
            "value: nothing on stdin; pipe the value in, for example: printf %s \"$TOKEN\" | mcp-coordinator secrets set {name}"
        );
    }
    Ok(value)
}
