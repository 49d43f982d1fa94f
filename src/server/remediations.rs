//! Remediation and installer tools: `remediation_propose`, `remediation_get`,
//! `remediation_list`, `remediation_review`, `remediation_withdraw`, `remediation_rollback`,
//! `mcp_server_install`, `mcp_server_remove`. Review and rollback describe their gate
//! (`Proposal::gate`); the approval gate asks the person, and the proposal runs only once an
//! approval of exactly that gate is consumed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Coordinator;
use super::gate::{self, Passage};
use super::session::Call;
use super::tool::failure;
use super::tool::{
    self, ErrorCode, Failure, Reply, Route, ToolError, invalid_field, route, route_with_input,
};
use crate::approval::{Approval, State};
use crate::assessment::Severity;
use crate::auth::Permission;
use crate::clients::{Client, Scope};
use crate::config::ToolGroup;
use crate::remediation::actions::Action;
use crate::remediation::{NewProposal, Proposal, RemediationError, RemediationStatus};

pub fn routes() -> Vec<Route> {
    use ToolGroup::{Configs, Remediation};
    let spec = |name, permission, title, description, group, read_only, destructive, idempotent| {
        tool::spec(
            name,
            permission,
            title,
            description,
            group,
            read_only,
            destructive,
            idempotent,
        )
    };
    vec![
        route(
            spec(
                "remediation_propose",
                Permission::Remediate,
                "Propose a remediation",
                include_str!("../../tools/remediation_propose.md"),
                Remediation,
                false,
                false,
                false,
            ),
            remediation_propose,
        ),
        route(
            spec(
                "remediation_get",
                Permission::View,
                "Get a remediation proposal",
                include_str!("../../tools/remediation_get.md"),
                Remediation,
                true,
                false,
                true,
            ),
            remediation_get,
        ),
        route(
            spec(
                "remediation_list",
                Permission::View,
                "List remediation proposals",
                include_str!("../../tools/remediation_list.md"),
                Remediation,
                true,
                false,
                true,
            ),
            remediation_list,
        ),
        route_with_input(
            spec(
                "remediation_review",
                Permission::Remediate,
                "Ask a person to approve a remediation, then apply it",
                include_str!("../../tools/remediation_review.md"),
                Remediation,
                false,
                true,
                false,
            ),
            remediation_review,
        ),
        route(
            spec(
                "remediation_withdraw",
                Permission::Remediate,
                "Withdraw a remediation proposal",
                include_str!("../../tools/remediation_withdraw.md"),
                Remediation,
                false,
                false,
                true,
            ),
            remediation_withdraw,
        ),
        route_with_input(
            spec(
                "remediation_rollback",
                Permission::Remediate,
                "Undo an applied remediation from its backups",
                include_str!("../../tools/remediation_rollback.md"),
                Remediation,
                false,
                true,
                false,
            ),
            remediation_rollback,
        ),
        route_with_input(
            spec(
                "mcp_server_install",
                Permission::Install,
                "Install an MCP server into a client config",
                include_str!("../../tools/mcp_server_install.md"),
                Configs,
                false,
                false,
                false,
            ),
            mcp_server_install,
        ),
        route_with_input(
            spec(
                "mcp_server_remove",
                Permission::Install,
                "Remove an MCP server from a client config",
                include_str!("../../tools/mcp_server_remove.md"),
                Configs,
                false,
                true,
                false,
            ),
            mcp_server_remove,
        ),
    ]
}

/// Arguments of `remediation_propose`: `actions`, `assessment_id`, or both (a root
/// `if`/`else`, which Claude's API takes where it refuses a root `anyOf`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = {"required": ["assessment_id"]},
    "else" = {"required": ["actions"], "properties": {"actions": {"minItems": 1}}}
))]
pub struct ProposeInput {
    /// One line for the person (default: made from the actions).
    #[schemars(length(max = crate::limits::SUMMARY_CHARS))]
    pub summary: Option<String>,
    /// Explicit actions (each names its `file` and `server`). Give `actions`,
    /// `assessment_id`, or both.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Take the suggested actions of this assessment's findings (with `actions`, too).
    pub assessment_id: Option<String>,
    /// With `assessment_id`: only findings at or above this severity (default: the policy's
    /// `severity_threshold`, medium).
    pub min_severity: Option<Severity>,
}

/// What the remediation tools return.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RemediationResult {
    pub remediation_id: String,
    pub status: RemediationStatus,
    pub message: String,
    /// The approval's state after a review (`approved`, `rejected`, `pending`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_state: Option<State>,
    /// While pending: the command a person runs to decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decide_command: Option<String>,
    pub remediation: Proposal,
}

fn result(p: Proposal, message: String) -> RemediationResult {
    RemediationResult {
        remediation_id: p.id.clone(),
        status: p.status,
        message,
        approval_state: None,
        decide_command: None,
        remediation: p,
    }
}

fn proposed_message(p: &Proposal) -> String {
    format!(
        "Remediation {} proposed ({} risk): {}. It changes {} file(s); see `files[].diff`. Nothing is written until a person approves it: call remediation_review with remediation_id {}.{}",
        p.id,
        p.risk,
        p.summary,
        p.files.len(),
        p.id,
        if p.notes.is_empty() {
            String::new()
        } else {
            format!(" Notes: {}", p.notes.join("; "))
        }
    )
}

async fn remediation_propose(
    c: Coordinator,
    i: ProposeInput,
    call: Call,
) -> Result<RemediationResult, Failure> {
    let actor = call.actor.clone();
    let new = NewProposal {
        summary: i.summary,
        actions: i.actions,
        assessment_id: i.assessment_id,
        min_severity: i.min_severity,
    };
    let p = c
        .blocking(move |c| c.remediations().propose(new, &actor))
        .await?
        .map_err(|e| failure("remediation_propose", e))?;
    let m = proposed_message(&p);
    Ok(result(p, m))
}

/// An id argument.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdInput {
    pub remediation_id: String,
}

async fn remediation_get(
    c: Coordinator,
    i: IdInput,
    _call: Call,
) -> Result<RemediationResult, Failure> {
    let p = c
        .blocking(move |c| c.remediations().get(&i.remediation_id))
        .await?
        .map_err(|e| failure("remediation_get", e))?;
    let m = format!("Remediation {} is {}.", p.id, p.status);
    Ok(result(p, m))
}

/// Arguments of `remediation_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInput {
    pub status: Option<RemediationStatus>,
    /// At most this many (1 to 200, default 20), newest first.
    #[schemars(range(min = crate::limits::SHORT_PAGE.min, max = crate::limits::SHORT_PAGE.max))]
    pub limit: Option<u32>,
}

/// What `remediation_list` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RemediationList {
    pub remediations: Vec<Proposal>,
}

async fn remediation_list(
    c: Coordinator,
    i: ListInput,
    _call: Call,
) -> Result<RemediationList, Failure> {
    let limit = i.limit.unwrap_or(20);
    if !crate::limits::SHORT_PAGE.contains(limit) {
        return Err(Failure::Domain(invalid_field(
            "remediation_list",
            "limit",
            format!("{}, got {limit}", crate::limits::SHORT_PAGE.expected()),
        )));
    }
    let remediations = c
        .blocking(move |c| c.remediations().list(i.status, limit))
        .await?
        .map_err(|e| failure("remediation_list", e))?;
    Ok(RemediationList { remediations })
}

async fn remediation_withdraw(
    c: Coordinator,
    i: IdInput,
    call: Call,
) -> Result<RemediationResult, Failure> {
    let actor = call.actor.clone();
    let p = c
        .blocking(move |c| c.remediations().withdraw(&i.remediation_id, &actor))
        .await?
        .map_err(|e| failure("remediation_withdraw", e))?;
    let m = format!("Remediation {} was withdrawn; nothing was written.", p.id);
    Ok(result(p, m))
}

/// Arguments of `remediation_review` and `remediation_rollback`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    pub remediation_id: String,
    /// When the person cannot be asked in this client: seconds to wait for a decision made at
    /// the CLI (0 to 3600, default 0).
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

async fn remediation_review(
    c: Coordinator,
    i: ReviewInput,
    call: Call,
) -> Result<Reply<RemediationResult>, Failure> {
    review(c, i, call, false).await
}

async fn remediation_rollback(
    c: Coordinator,
    i: ReviewInput,
    call: Call,
) -> Result<Reply<RemediationResult>, Failure> {
    review(c, i, call, true).await
}

/// Asks the person about a proposal (or its rollback) and, once approved, carries it out.
async fn review(
    c: Coordinator,
    i: ReviewInput,
    call: Call,
    rollback: bool,
) -> Result<Reply<RemediationResult>, Failure> {
    let tool = if rollback {
        "remediation_rollback"
    } else {
        "remediation_review"
    };
    let id = i.remediation_id.clone();
    let p = c
        .blocking(move |c| c.remediations().get(&id))
        .await?
        .map_err(|e| failure(tool, e))?;
    let ready = if rollback {
        RemediationStatus::Executed
    } else {
        RemediationStatus::Proposed
    };
    if p.status != ready {
        let m = if rollback {
            format!(
                "Remediation {} is {}; only an executed remediation can be rolled back.",
                p.id, p.status
            )
        } else {
            format!(
                "Remediation {} is {}; a proposal is reviewed and runs once, while it is proposed.",
                p.id, p.status
            )
        };
        return Err(Failure::Domain(
            ToolError::new(ErrorCode::Conflict, m)
                .with_details(json!({"remediation_id": p.id, "status": p.status})),
        ));
    }
    // Files changed since the preview make the approval worthless: refuse before asking (the
    // executor checks again before writing).
    let (pid, actor) = (p.id.clone(), call.actor.clone());
    c.blocking(move |c| c.remediations().check_unchanged(&pid, rollback, &actor))
        .await?
        .map_err(|e| failure(tool, e))?;
    let gate = p.gate(rollback);
    let passage = gate::pass(&c, &call, tool, &gate, i.wait_seconds).await?;
    // The proposal shows the approval it waits for (remediation_get, approval_id).
    let approval_id = passage.approval().id.clone();
    let shown = if rollback {
        &p.rollback_approval_id
    } else {
        &p.approval_id
    };
    if shown.as_deref() != Some(approval_id.as_str()) {
        let (pid, aid) = (p.id.clone(), approval_id.clone());
        c.blocking(move |c| c.remediations().set_approval(&pid, &aid, rollback))
            .await?
            .map_err(|e| failure(tool, e))?;
    }
    let actor = call.actor.clone();
    let id = p.id.clone();
    let (p, message, out) = match passage {
        Passage::InputRequired(r, _) => return Ok(Reply::InputRequired(r)),
        Passage::Approved(approval) => {
            let done = c
                .blocking(move |c| {
                    if rollback {
                        c.remediations().rollback(&id, &approval_id, &actor)
                    } else {
                        c.remediations().execute(&id, &approval_id, &actor)
                    }
                })
                .await?
                .map_err(|e| failure(tool, e))?;
            let by = decided_by(&approval);
            let m = match (rollback, done.status) {
                (true, _) => format!(
                    "Approved by {by}. Remediation {} was rolled back: {} file(s) restored from their backups.",
                    done.id,
                    done.backups.len()
                ),
                (false, RemediationStatus::Executed) => format!(
                    "Approved by {by}. Remediation {} was applied: {} file(s) written atomically, each backed up first ({}). remediation_rollback undoes it.",
                    done.id,
                    done.backups.len(),
                    done.backups
                        .iter()
                        .filter_map(|b| b.backup_path.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                (false, status) => format!(
                    "Approved, but remediation {} {}: {}",
                    done.id,
                    status,
                    done.error.as_deref().unwrap_or("see results")
                ),
            };
            (done, m, (State::Approved, None))
        }
        Passage::Stopped(out) => {
            let p = c
                .blocking(move |c| c.remediations().get(&id))
                .await?
                .map_err(|e| failure(tool, e))?;
            let m = format!(
                "{} Nothing was written; remediation {} is still {}.",
                out.message, p.id, p.status
            );
            (p, m, (out.state, out.decide_command))
        }
    };
    let mut r = result(p, message);
    r.approval_state = Some(out.0);
    r.decide_command = out.1;
    Ok(Reply::Done(r))
}

fn decided_by(approval: &Approval) -> String {
    approval
        .decision
        .as_ref()
        .map_or("a person".into(), |d| format!("{} via {}", d.by, d.via))
}

/// Where an installer tool writes: a file, or a client's standard config (user scope, or a
/// project's).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallInput {
    /// The client whose config to change.
    pub client: Client,
    /// The config file (default: the client's standard file, in `project` when given, else the
    /// user's).
    pub file: Option<String>,
    /// A project directory: use the client's project-scope file there.
    pub project: Option<String>,
    /// The server's name in the config.
    pub server: String,
    /// The entry in the client's shape: `command`, `args`, `env` (stdio) or `url` (remote).
    pub entry: Map<String, Value>,
    /// Environment variables to fill from the coordinator's secret store
    /// (`{"GITHUB_TOKEN": "GITHUB_TOKEN"}`): the entry launches through
    /// `mcp-coordinator exec`, and no secret is written into the file.
    #[serde(default)]
    pub secrets: Map<String, Value>,
    /// Ask the person right away (default true); false only records the proposal.
    #[serde(default = "yes")]
    pub review: bool,
    /// As in remediation_review.
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Arguments of `mcp_server_remove`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveInput {
    /// The config file that defines the server (`mcp_config_list` shows them).
    pub file: String,
    pub server: String,
    /// Ask the person right away (default true); false only records the proposal.
    #[serde(default = "yes")]
    pub review: bool,
    /// As in remediation_review.
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

fn home(c: &Coordinator) -> Option<std::path::PathBuf> {
    c.assessments().roots(&Default::default()).home
}

async fn mcp_server_install(
    c: Coordinator,
    i: InstallInput,
    call: Call,
) -> Result<Reply<RemediationResult>, Failure> {
    const TOOL: &str = "mcp_server_install";
    let file = match (&i.file, &i.project) {
        (Some(f), _) => f.clone(),
        (None, project) => {
            let (scope, base) = match project {
                Some(p) => (Scope::Project, Some(std::path::PathBuf::from(p))),
                None => (Scope::User, home(&c)),
            };
            let base = base.ok_or_else(|| {
                Failure::Domain(invalid_field(
                    TOOL,
                    "file",
                    "no home directory is known; give `file`",
                ))
            })?;
            crate::clients::standard_path(i.client, scope, &base)
                .ok_or_else(|| {
                    Failure::Domain(invalid_field(
                        TOOL,
                        "project",
                        format!("{} has no {} config; give `file`", i.client, scope),
                    ))
                })?
                .display()
                .to_string()
        }
    };
    // Named here so the error names the argument that chose the file.
    let field = match (&i.file, &i.project) {
        (Some(_), _) => "file",
        (None, Some(_)) => "project",
        (None, None) => "client",
    };
    c.assessments()
        .may_change(std::path::Path::new(&file))
        .map_err(|m| Failure::Domain(invalid_field(TOOL, field, m)))?;
    let action = Action::InstallServer {
        file,
        server: i.server,
        entry: i.entry,
        secrets: i.secrets,
        client: Some(i.client),
    };
    propose_then_review(c, call, action, i.review, i.wait_seconds, TOOL, field).await
}

async fn mcp_server_remove(
    c: Coordinator,
    i: RemoveInput,
    call: Call,
) -> Result<Reply<RemediationResult>, Failure> {
    c.assessments()
        .may_change(std::path::Path::new(&i.file))
        .map_err(|m| Failure::Domain(invalid_field("mcp_server_remove", "file", m)))?;
    let action = Action::RemoveServer {
        file: i.file,
        server: i.server,
    };
    propose_then_review(
        c,
        call,
        action,
        i.review,
        i.wait_seconds,
        "mcp_server_remove",
        "file",
    )
    .await
}

/// An installer tool builds one action from its own arguments, which carry the action's field
/// names: the proposal's `actions[0].server` is the tool's `server`, `actions[0].entry.env.X`
/// its `entry.env.X`, and `actions[0].file` whichever argument chose the file.
fn installer_error(e: RemediationError, file_field: &str) -> RemediationError {
    let RemediationError::Invalid { field, message } = e else {
        return e;
    };
    let field = match field.strip_prefix("actions[0].") {
        Some("file") => file_field.to_string(),
        Some(own) => own.to_string(),
        // Nothing of the proposal as a whole is the caller's to fix but the server it names.
        None => "server".to_string(),
    };
    RemediationError::Invalid { field, message }
}

/// The installer tools: one proposal for one file, then the same review as remediation_review.
/// A 2026-07-28 retry (carrying the sealed request state) reviews the proposal made by the
/// first call instead of proposing again.
async fn propose_then_review(
    c: Coordinator,
    call: Call,
    action: Action,
    review_now: bool,
    wait_seconds: Option<u64>,
    tool: &'static str,
    file_field: &'static str,
) -> Result<Reply<RemediationResult>, Failure> {
    let actor = call.actor.clone();
    let key = serde_json::to_string(&action).unwrap_or_default();
    let existing = if call.request_state.is_some() {
        let key = key.clone();
        c.blocking(move |c| c.remediations().list(Some(RemediationStatus::Proposed), 50))
            .await?
            .map_err(|e| failure(tool, e))?
            .into_iter()
            .find(|p| {
                p.actions.len() == 1
                    && serde_json::to_string(&p.actions[0]).unwrap_or_default() == key
            })
    } else {
        None
    };
    let p = match existing {
        Some(p) => p,
        None => {
            let new = NewProposal {
                summary: None,
                actions: vec![action],
                assessment_id: None,
                min_severity: None,
            };
            c.blocking(move |c| c.remediations().propose(new, &actor))
                .await?
                .map_err(|e| failure(tool, installer_error(e, file_field)))?
        }
    };
    if !review_now {
        let m = proposed_message(&p);
        return Ok(Reply::Done(result(p, m)));
    }
    review(
        c,
        ReviewInput {
            remediation_id: p.id,
            wait_seconds,
        },
        call,
        false,
    )
    .await
}
