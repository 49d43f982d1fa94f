//! `mcp-coordinator approvals list|show|approve|reject`: the out-of-band channel through which a
//! person at the machine decides approvals, on the same database running servers use.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::GlobalArgs;
use super::tty::Tty;
use mcp_coordinator::approval::{
    Approval, ApprovalError, ApprovalService, Channel, DecideWith, Kind, ListFilter, State, Verdict,
};
use mcp_coordinator::audit::{Actor, host_name, os_user_name};
use mcp_coordinator::overseer::{Overseer, OverseerError, OverseerService, Purpose};

pub const LONG_ABOUT: &str = "\
Decide approvals as a person: list what waits, show one in full, approve or reject it. These \
work on the same database running servers use; a tool call waiting on an approval returns \
within a second of the decision.

Once an overseer is set (`mcp-coordinator overseer init`), approve asks for the overseer's \
passphrase on the terminal and records the overseer's name and your OS user; without a \
terminal it refuses, whatever the options. Without an overseer, anyone who can run commands as \
your OS user (an assistant with a shell, a child MCP server) can approve. Reject never needs \
the passphrase: saying no is never the risky direction.";

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, pending ones by default
    List {
        /// Which state to list: pending, approved, rejected, expired, cancelled, or all
        #[arg(long, default_value = "pending")]
        state: String,
        /// Only this kind: generic, remediation, instance_tool_call, pipeline_stage
        #[arg(long)]
        kind: Option<Kind>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one approval in full: the exact action, what will change, risk, requester
    Show {
        /// The approval id (apr_...)
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Approve an approval: the action it names may then run, once
    #[command(
        long_about = "Approve an approval as the person at this machine. The action it names \
may then run, exactly as shown and once. A tool call waiting on this approval returns within a \
second. Decisions are final; an expired approval cannot be approved.

With an overseer set (`mcp-coordinator overseer init`): you are shown the approval on the \
terminal (/dev/tty) and asked for the overseer's passphrase, which is your confirmation. It is \
never read from stdin, an argument or an environment variable, and --yes does not skip it; \
with no terminal the command refuses. Three wrong passphrases in a row lock approving from the \
CLI for 60 seconds, for every process on this database (the error says when it lifts). \
Recorded as overseer:NAME (user:OS@HOST) via cli, with your reason, in the signed audit log; \
OS is the user of this process in the password database, not $USER.

Without an overseer: recorded as user:OS@HOST. On a terminal you are asked to confirm by typing \
yes; --yes skips the question, and without a terminal --yes is required.",
        after_help = "Examples:\n  mcp-coordinator approvals approve apr_1f2e... --reason \"checked the diff\"\n  \
mcp-coordinator overseer init        (once: protect approving with a passphrase)"
    )]
    Approve {
        /// The approval id (apr_...)
        id: String,
        /// Why you approve it (recorded in the audit log)
        #[arg(long)]
        reason: String,
        /// Do not ask to type yes (without an overseer); never skips the overseer's passphrase
        #[arg(long, short)]
        yes: bool,
    },
    /// Reject an approval: the action it names must not run (no passphrase needed)
    #[command(
        long_about = "Reject an approval: the action it names must not run. Recorded with your \
reason in the signed audit log, as user:OS@HOST via cli. Never needs the overseer's passphrase \
or a terminal: saying no is never the risky direction. Decisions are final."
    )]
    Reject {
        /// The approval id (apr_...)
        id: String,
        /// Why you reject it (recorded in the audit log)
        #[arg(long)]
        reason: String,
    },
}

impl std::str::FromStr for StateArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            Ok(StateArg(None))
        } else {
            s.parse::<State>().map(|s| StateArg(Some(s)))
        }
    }
}

struct StateArg(Option<State>);

pub fn run(global: &GlobalArgs, cmd: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    // Every approval lives in a database some coordinator made: deciding one in a database
    // that does not exist yet can only be a typo, so no command here creates it.
    let (settings, audit) = super::open_with(global, super::Access::ReadExisting)?;
    let overseers = OverseerService::new(audit.clone());
    let service = ApprovalService::new(audit, settings.config.approvals.clone());
    match cmd {
        ApprovalsCommand::List {
            state,
            kind,
            limit,
            json,
        } => {
            let StateArg(state) = state
                .parse::<StateArg>()
                .map_err(|e| anyhow::anyhow!("--state: {e}, or all"))?;
            let page = service.list(&ListFilter {
                state,
                kind,
                limit: limit.clamp(1, 1000),
                cursor: None,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page.approvals)?);
            } else if page.approvals.is_empty() {
                println!(
                    "no {} approvals",
                    state.map_or("".to_string(), |s| s.to_string())
                );
            } else {
                // Who asked: over HTTP the principal too (`... as NAME (sub SUBJECT, via ..)`).
                let by = page
                    .approvals
                    .iter()
                    .map(|a| a.requested_by.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max("REQUESTED BY".len());
                println!(
                    "{:<36}  {:<9}  {:<8}  {:<20}  {:<by$}  SUMMARY",
                    "ID", "STATE", "RISK", "EXPIRES", "REQUESTED BY"
                );
                for a in &page.approvals {
                    println!(
                        "{:<36}  {:<9}  {:<8}  {:<20}  {:<by$}  {}",
                        a.id,
                        a.state.as_str(),
                        a.risk.as_str(),
                        a.expires_at.get(..19).unwrap_or(&a.expires_at),
                        a.requested_by,
                        a.summary
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Show { id, json } => {
            let a = service.get(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                print!("{}", describe(&a));
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve { id, reason, yes } => {
            let a = service.get(&id)?;
            if a.state != State::Pending {
                anyhow::bail!("approval {id} is already {}; decisions are final", a.state);
            }
            if reason.trim().is_empty() {
                anyhow::bail!("--reason: say why (it is recorded in the audit log)");
            }
            if overseers.current()?.is_some() {
                return match ask_overseer(&overseers, &a)? {
                    Some(overseer) => {
                        decide(&service, &id, State::Approved, reason, Some(overseer))
                    }
                    None => Ok(ExitCode::from(1)),
                };
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "not on a terminal, so there is no one to confirm: run it in a terminal, or pass --yes"
                    );
                }
                print!("{}", describe(&a));
                print!("\nApprove this action? Type yes to approve: ");
                std::io::stdout().flush()?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                if line.trim() != "yes" {
                    println!("not approved; approval {id} is still pending");
                    return Ok(ExitCode::from(1));
                }
            }
            decide(&service, &id, State::Approved, reason, None)
        }
        ApprovalsCommand::Reject { id, reason } => {
            decide(&service, &id, State::Rejected, reason, None)
        }
    }
}

/// Shows the approval on the terminal and asks for the overseer's passphrase. `None` when the
/// person typed nothing (not approved) or gave a wrong passphrase (said on stderr; the lock
/// counts it).
fn ask_overseer(overseers: &OverseerService, a: &Approval) -> anyhow::Result<Option<Overseer>> {
    let id = &a.id;
    let mut tty = Tty::open(&format!(
        "approving {id} needs the overseer's passphrase (--yes does not skip it)"
    ))?;
    if let Err(e @ OverseerError::Locked { .. }) = overseers.check_unlocked() {
        eprintln!("mcp-coordinator: {e}; approval {id} is still pending");
        return Ok(None);
    }
    let Some(name) = overseers.current()?.map(|o| o.name) else {
        return Err(OverseerError::NotSet.into());
    };
    tty.say(&describe(a))?;
    let passphrase = tty.secret(&format!(
        "\nTo approve, the passphrase of overseer {name} (not echoed; empty to leave it pending): "
    ))?;
    if passphrase.is_empty() {
        println!("not approved; approval {id} is still pending");
        return Ok(None);
    }
    match overseers.verify(&passphrase, Purpose::Approve, &Actor::os_user()) {
        Ok(overseer) => Ok(Some(overseer)),
        Err(e @ (OverseerError::Wrong { .. } | OverseerError::Locked { .. })) => {
            eprintln!("mcp-coordinator: {e}; approval {id} is still pending");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
/// Records the decision: by the overseer who gave the passphrase, else by the OS user.
fn decide(
    service: &ApprovalService,
    id: &str,
    state: State,
    reason: String,
    overseer: Option<Overseer>,
) -> anyhow::Result<ExitCode> {
    let reason = reason.trim().to_string();
    if reason.is_empty() {
        anyhow::bail!("--reason: say why (it is recorded in the audit log)");
    }
    let mut context =
        json!({"user": os_user_name(), "host": host_name(), "pid": std::process::id()});
    let by = match &overseer {
        Some(o) => {
            context["overseer"] = json!(o.name);
            context["credential"] = json!(o.credential);
            Actor::overseer(&o.name)
        }
        None => Actor::os_user(),
    };
    let verdict = Verdict {
        state,
        by,
        via: Channel::Cli,
        reason: Some(reason),
        cause: None,
        context,
    };
    match service.decide(id, verdict) {
        Ok(a) => {
            println!(
                "approval {} {} by {}",
                a.id,
                a.state,
                a.decision.as_ref().map_or("", |d| d.by.as_str())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (ApprovalError::Expired { .. } | ApprovalError::AlreadyDecided { .. })) => {
            eprintln!("mcp-coordinator: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e).context("could not record the decision"),
    }
}

/// The full, human-readable description of an approval.
fn describe(a: &Approval) -> String {
    let mut s = format!(
        "Approval {id}\n  summary:      {summary}\n  kind:         {kind}{subject}\n  risk:         {risk}\n  requested by: {by}\n  created:      {created}\n  expires:      {expires}\n{with}  state:        {state}\n",
        id = a.id,
        summary = a.summary,
        kind = a.kind,
        subject = if a.subject_id.is_empty() {
            String::new()
        } else {
            format!(" (subject {})", a.subject_id)
        },
        risk = a.risk,
        by = a.requested_by,
        created = a.created_at,
        expires = a.expires_at,
        with = who_decides(a),
        state = a.state,
    );
    if let Some(d) = &a.decision {
        s.push_str(&format!(
            "  decision:     {} by {} via {} at {}{}\n",
            a.state,
            d.by,
            d.via,
            d.at,
            d.reason
                .as_deref()
                .or(d.cause.as_deref())
                .map_or(String::new(), |r| format!(" ({r})"))
        ));
    }
    if let Some(at) = &a.executed_at {
        s.push_str(&format!("  executed:     {at}\n"));
    }
    s.push_str(&format!(
        "\nAction (sha256 {}), exactly what will run:\n{}\n",
        a.action_hash,
        indent(&serde_json::to_string_pretty(&a.action).unwrap_or_default())
    ));
    if let Some(preview) = &a.preview {
        s.push_str(&format!("\nWhat will change:\n{}\n", indent(preview)));
    }
    s
}

/// The line saying who may decide a pending approval (the policy), or how it was decided.
fn who_decides(a: &Approval) -> String {
    match (&a.decision, a.state) {
        (Some(d), _) => format!("  decided with: {}\n", d.via),
        (None, State::Pending) => format!(
            "  may decide:   {}\n",
            match a.decide_with {
                DecideWith::Elicitation => {
                    "a person, in the MCP client's form or here at the CLI (elicitation)"
                }
                DecideWith::OutOfBand => {
                    "only a person out of band, here at the CLI; the client's form does not count (out_of_band)"
                }
            }
        ),
        (None, _) => String::new(),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
