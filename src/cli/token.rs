//! `mcp-coordinator token issue|list|revoke`: the access tokens and API keys MCP over HTTP
//! accepts when no identity provider issues them (or for systems that cannot do OAuth).

use std::process::ExitCode;

use clap::Subcommand;

use super::GlobalArgs;
use mcp_coordinator::audit::Actor;
use mcp_coordinator::auth::{AccessError, AccessTokens, Role};

pub const LONG_ABOUT: &str = "\
Issue, list and revoke the bearer tokens `serve --http` accepts besides the identity \
provider's. An access token is a JWT signed with a key in the data directory \
(access-token.key, mode 0600), valid for --ttl (a day by default); an API key (--api-key) is \
an opaque `mcpc_key_...` value for automated systems that cannot do OAuth, valid until revoked \
unless --ttl is given, of which only a SHA-256 is stored. Each carries the roles given with \
--role: installer, compliance, human_oversight, agent, admin. The value is printed once, on \
stdout, and never again. Revoking takes effect at the next request, in every process serving \
this database. Issuing and revoking are recorded in the audit log.

Exit status: 0 on success, 1 when the named token does not exist, 2 on any other error.";

pub const AFTER_HELP: &str = "\
Examples:
  mcp-coordinator token issue --role installer --name laptop-alice
  mcp-coordinator token issue --role agent --name worker-1 --ttl 7d
  mcp-coordinator token issue --role compliance --name scanner --api-key
  mcp-coordinator token list
  mcp-coordinator token revoke tok_3f2a9c0d1e4b5a6f
Use one:
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8760/mcp ...";

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue an access token or API key and print it (once)
    Issue {
        /// A role it carries; repeat for several (installer, compliance, human_oversight,
        /// agent, admin)
        #[arg(long = "role", value_name = "ROLE", required = true, value_enum)]
        roles: Vec<Role>,
        /// Who or what holds it, for the audit log and `token list` (1 to 64 characters)
        #[arg(long)]
        name: String,
        /// How long it is valid: a number with s, m, h or d (90m, 12h, 7d) [default: 1d for a
        /// token, until revoked for an API key]
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<i64>,
        /// Issue an opaque API key instead of a JWT
        #[arg(long)]
        api_key: bool,
    },
    /// List tokens and keys: id, kind, name, roles, issued, expires, revoked (never a value)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token or key by id; requests carrying it are refused from then on
    Revoke {
        /// The id `token list` shows (tok_... or key_...)
        id: String,
    },
}

pub fn run(global: &GlobalArgs, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let (settings, audit) = super::open(global)?;
    let tokens = AccessTokens::open(audit, &settings.data_dir)?;
    let by = Actor::os_user();
    match cmd {
        TokenCommand::Issue {
            roles,
            name,
            ttl,
            api_key,
        } => {
            let issued = tokens.issue(&name, &roles, ttl, api_key, &by)?;
            eprintln!(
                "issued {} {} to {} (roles {}), expires {}; it is printed once, below:",
                if api_key { "API key" } else { "token" },
                issued.row.id,
                issued.row.name,
                issued.row.roles,
                issued.row.expires_at.as_deref().unwrap_or("never"),
            );
            println!("{}", issued.secret);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { json } => {
            let rows = tokens.list()?;
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.id, "kind": r.kind, "name": r.name,
                            "roles": r.roles.split(',').collect::<Vec<_>>(),
                            "issued_at": r.issued_at, "issued_by": r.issued_by,
                            "expires_at": r.expires_at, "revoked_at": r.revoked_at,
                            "revoked_by": r.revoked_by,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if rows.is_empty() {
                eprintln!(
                    "no tokens or API keys issued; issue one with `mcp-coordinator token issue`"
                );
            } else {
                for r in rows {
                    let state = match (&r.revoked_at, &r.expires_at) {
                        (Some(at), _) => format!("revoked {at}"),
                        (None, Some(e)) => format!("expires {e}"),
                        (None, None) => "never expires".into(),
                    };
                    println!(
                        "{:<22} {:<7} {:<24} {:<28} issued {}  {state}",
                        r.id, r.kind, r.name, r.roles, r.issued_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id } => match tokens.revoke(&id, &by) {
            Ok(row) => {
                eprintln!(
                    "revoked {} ({}); requests carrying it are refused from now on",
                    row.id, row.name
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ AccessError::NotFound(_)) => {
                eprintln!("mcp-coordinator: {e}; `mcp-coordinator token list` shows the ids");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// `90m`, `12h`, `7d`, `30s`, or plain seconds.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("expected a number with s, m, h or d, such as 12h; got `{s}`"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit `{other}`: expected s, m, h or d, such as 12h"
            ));
        }
    };
    match n.checked_mul(unit) {
        Some(t) if t > 0 && t <= 366 * 86_400 => Ok(t),
        _ => Err("expected a duration from 1s to 366d".into()),
    }
}
