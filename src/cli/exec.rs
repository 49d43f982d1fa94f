//! `mcp-coordinator exec --secret NAME[=ENV_VAR] -- COMMAND [ARGS...]`: decrypt secrets from
//! the store and replace this process with COMMAND, the secrets added to its environment only.
//! This is how MCP client configs launch servers without secrets in the file: stdin and stdout
//! (the server's protocol channel) pass straight through, and nothing is printed to stdout.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::GlobalArgs;
use mcp_coordinator::audit::Actor;
use mcp_coordinator::secret::{ENV_KEY, ENV_NEW_KEY, SecretStore, check_name};

pub const LONG_ABOUT: &str = "\
Run a command (typically an MCP server) with secrets from the encrypted store in its \
environment, so MCP client configs hold no secrets. The named secrets are decrypted, added to the \
command's environment (as NAME, or as ENV_VAR with NAME=ENV_VAR), and this process is replaced by \
the command: stdin, stdout and stderr pass straight through and its exit status is the \
command's. exec itself prints nothing to stdout.

The master key variables (MCP_COORDINATOR_MASTER_KEY, MCP_COORDINATOR_NEW_MASTER_KEY) are removed \
from the command's environment; everything else is inherited. Each use is recorded in the audit \
log (secret names and the program name, never values).

It fails closed: if a secret does not exist, the master key is missing or wrong, or the command \
cannot be started, it prints one line to stderr and exits 2 without running anything.";

pub const AFTER_HELP: &str = "\
In an MCP client config (Claude Code .mcp.json, Claude Desktop, Cursor):
  {\"mcpServers\": {\"github\": {
    \"command\": \"/path/to/mcp-coordinator\",
    \"args\": [\"exec\", \"--secret\", \"GITHUB_TOKEN=GITHUB_PERSONAL_ACCESS_TOKEN\", \"--\",
             \"npx\", \"-y\", \"@modelcontextprotocol/server-github@1.2.3\"]}}}

Examples:
  mcp-coordinator exec --secret GITHUB_TOKEN -- npx -y @modelcontextprotocol/server-github
  mcp-coordinator exec --secret OPENAI_KEY=OPENAI_API_KEY --secret ORG_ID -- ./server
  mcp-coordinator --data-dir /srv/coord exec --secret TOKEN -- env";

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A secret to pass, as NAME (the variable is named NAME) or NAME=ENV_VAR; repeatable
    #[arg(
        long = "secret",
        short = 's',
        value_name = "NAME[=ENV_VAR]",
        required = true
    )]
    pub secrets: Vec<String>,

    /// The command to run and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A secret and the variable it goes into.
#[derive(Debug, PartialEq)]
struct Mapping {
    name: String,
    var: String,
}

fn parse_mapping(spec: &str) -> anyhow::Result<Mapping> {
    let (name, var) = match spec.split_once('=') {
        Some((name, var)) => (name, var),
        None => (spec, spec),
    };
    check_name(name).with_context(|| format!("--secret {spec}"))?;
    let valid_var = var
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_var {
        anyhow::bail!(
            "--secret {spec}: {var:?} is not an environment variable name (letters, digits and _, \
not starting with a digit); name one: --secret {name}=SOME_VAR"
        );
    }
    if var == ENV_KEY || var == ENV_NEW_KEY {
        anyhow::bail!("--secret {spec}: refusing to pass a secret as {var}");
    }
    Ok(Mapping {
        name: name.to_string(),
        var: var.to_string(),
    })
}

fn parse_mappings(specs: &[String]) -> anyhow::Result<Vec<Mapping>> {
    let mappings = specs
        .iter()
        .map(|s| parse_mapping(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, m) in mappings.iter().enumerate() {
        if mappings[..i].iter().any(|o| o.var == m.var) {
            anyhow::bail!("--secret: two secrets go into {}; give each its own", m.var);
        }
    }
    Ok(mappings)
}

/// Runs `exec`. Returns only on error: on success this process becomes the command.
pub fn run(global: &GlobalArgs, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mappings = parse_mappings(&args.secrets)?;
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("exec: no command given after --");
    };
    let env = {
        let (settings, audit) = super::open(global)?;
        let store = SecretStore::new(audit, settings.data_dir.clone());
        let names: Vec<String> = mappings.iter().map(|m| m.name.clone()).collect();
        let program_name = Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string_lossy(), |n| n.to_string_lossy())
            .into_owned();
        let values =
            store.reveal_many_with(&names, &Actor::os_user(), json!({"command": program_name}))?;
        mappings
            .into_iter()
            .zip(values)
            .map(|(m, (_, value))| (m.var, value))
            .collect::<Vec<_>>()
        // The store, the audit log and the database connection close here, before the exec.
    };
    let err = std::process::Command::new(program)
        .args(rest)
        .env_remove(ENV_KEY)
        .env_remove(ENV_NEW_KEY)
        .envs(env)
        .exec();
    anyhow::bail!("exec: cannot run {}: {err}", program.to_string_lossy())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn mappings_parse_and_are_checked() {
        assert_eq!(
            parse_mapping("GITHUB_TOKEN").unwrap(),
            Mapping {
                name: "GITHUB_TOKEN".into(),
                var: "GITHUB_TOKEN".into()
            }
        );
        assert_eq!(parse_mapping("a.b=A_B").unwrap().var, "A_B");
        for bad in [
            "a.b",
            "X=1A",
            "X=",
            "=X",
            "bad name",
            "X=MCP_COORDINATOR_MASTER_KEY",
        ] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
        assert!(parse_mappings(&["A=V".into(), "B=V".into()]).is_err());
    }
}
