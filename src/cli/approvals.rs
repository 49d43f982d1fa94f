//! `mcp-coordinator approvals list|show|approve|reject`: the out-of-band channel through which a
//! person at the machine decides approvals, on the same database running servers use.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::GlobalArgs;
use mcp_coordinator::approval::{
    Approval, ApprovalError, ApprovalService, Channel, Kind, ListFilter, State, Verdict,
};
use mcp_coordinator::audit::{Actor, host_name, os_user_name};

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
        long_about = "Approve an approval as the person at this machine (recorded as \
user:NAME@HOST via cli, with your reason, in the signed audit log). The action it names may then \
run, exactly as shown and once. On a terminal you are shown the approval and asked to confirm; \
--yes skips the question. A tool call waiting on this approval returns within a second. \
Decisions are final; an expired approval cannot be approved."
    )]
    Approve {
        /// The approval id (apr_...)
        id: String,
        /// Why you approve it (recorded in the audit log)
        #[arg(long)]
        reason: String,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
    },
    /// Reject an approval: the action it names must not run
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
    let (settings, audit) = super::open(global)?;
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
                println!(
                    "{:<36}  {:<9}  {:<8}  {:<20}  SUMMARY",
                    "ID", "STATE", "RISK", "EXPIRES"
                );
                for a in &page.approvals {
                    println!(
                        "{:<36}  {:<9}  {:<8}  {:<20}  {}",
                        a.id,
                        a.state.as_str(),
                        a.risk.as_str(),
                        a.expires_at.get(..19).unwrap_or(&a.expires_at),
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
            decide(&service, &id, State::Approved, reason)
        }
        ApprovalsCommand::Reject { id, reason } => decide(&service, &id, State::Rejected, reason),
    }
}

fn decide(
    service: &ApprovalService,
    id: &str,
    state: State,
    reason: String,
) -> anyhow::Result<ExitCode> {
    let reason = reason.trim().to_string();
    if reason.is_empty() {
        anyhow::bail!("--reason: say why (it is recorded in the audit log)");
    }
    let verdict = Verdict {
        state,
        by: Actor::os_user(),
        via: Channel::Cli,
        reason: Some(reason),
        cause: None,
        context: json!({"user": os_user_name(), "host": host_name(), "pid": std::process::id()}),
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
        "Approval {id}\n  summary:      {summary}\n  kind:         {kind}{subject}\n  risk:         {risk}\n  requested by: {by}\n  created:      {created}\n  expires:      {expires}\n  decided with: {with}\n  state:        {state}\n",
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
        with = a.decide_with,
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

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
