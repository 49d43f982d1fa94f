//! Approval tools (`approval_request`, `approval_list`, `approval_get`). Asking the person goes
//! through the gate (`gate.rs`); an approval made here is generic and authorises no executor.
//! No tool takes the decision as an argument.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Coordinator;
use super::gate::{self, ApprovalRequestOutput, Asked, Question};
use super::session::Call;
use super::tool::failure;
use super::tool::{Failure, Reply, Route, ToolSpec, invalid_field, route, route_with_input};
use crate::approval::{
    Approval, ApprovalPage, Kind, ListFilter, NewApproval, Risk, State, canonical,
};
use crate::auth::Permission;
use crate::config::ToolGroup;

pub fn routes() -> Vec<Route> {
    vec![
        route_with_input(
            ToolSpec {
                name: "approval_request",
                permission: Permission::RequestApproval,
                title: "Ask a person to approve an action",
                description: include_str!("../../tools/approval_request.md"),
                group: ToolGroup::Approvals,
                read_only: false,
                destructive: false,
                idempotent: false,
                open_world: false,
            },
            approval_request,
        ),
        route(
            ToolSpec {
                name: "approval_list",
                permission: Permission::View,
                title: "List approvals",
                description: include_str!("../../tools/approval_list.md"),
                group: ToolGroup::Approvals,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            approval_list,
        ),
        route(
            ToolSpec {
                name: "approval_get",
                permission: Permission::View,
                title: "Get one approval",
                description: include_str!("../../tools/approval_get.md"),
                group: ToolGroup::Approvals,
                read_only: true,
                destructive: false,
                idempotent: true,
                open_world: false,
            },
            approval_get,
        ),
    ]
}

/// Arguments of `approval_request`: either `approval_id` (ask again about an existing
/// approval), or `summary`, `action` and `risk` (a new one).
///
/// The schema says so with a root `if`/`else`: Claude's API refuses a tool list in which an
/// input schema has `anyOf`/`oneOf`/`allOf` at its root, but takes `if`/`then`/`else`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend(
    "if" = {"required": ["approval_id"]},
    "else" = {"required": ["summary", "action", "risk"]}
))]
pub struct ApprovalRequestInput {
    /// Ask again about (or wait for) an approval that already exists; then leave out
    /// `summary`, `action` and `risk`.
    pub approval_id: Option<String>,
    /// Required for a new approval: one line a person reads, what will happen and why.
    #[schemars(length(max = crate::limits::SUMMARY_CHARS))]
    pub summary: Option<String>,
    /// Required for a new approval: exactly what will be done, as a JSON object. The person
    /// sees it verbatim, and the approval covers this action and nothing else.
    pub action: Option<serde_json::Map<String, Value>>,
    /// Required for a new approval: how much could go wrong (`low` easily undone, `medium`,
    /// `high` hard to undo, `critical` irreversible: by default only the CLI approves it).
    pub risk: Option<Risk>,
    /// What the action is about (a file, a server name, an id), for filtering; optional.
    #[schemars(length(max = crate::limits::SUBJECT_CHARS))]
    pub subject_id: Option<String>,
    /// What will change, for the person: a diff, a command line, a description.
    pub preview: Option<String>,
    /// Seconds until the approval expires (default from policy, 3600).
    #[schemars(range(min = crate::limits::APPROVAL_EXPIRY_SECONDS.min, max = crate::limits::APPROVAL_EXPIRY_SECONDS.max))]
    pub expires_in_seconds: Option<u64>,
    /// When the person cannot be asked in this client (no elicitation, or policy needs the
    /// CLI): seconds to wait for a decision from the CLI before returning `pending`
    /// (0 to 3600, default 0). Progress notifications are sent while waiting.
    #[schemars(range(min = crate::limits::WAIT_SECONDS.min, max = crate::limits::WAIT_SECONDS.max))]
    pub wait_seconds: Option<u64>,
}

pub(super) async fn approval_request(
    c: Coordinator,
    input: ApprovalRequestInput,
    call: Call,
) -> Result<Reply<ApprovalRequestOutput>, Failure> {
    const TOOL: &str = "approval_request";
    let wait = gate::wait_for(TOOL, input.wait_seconds)?;
    // An MRTR retry: the answer decides the approval named in the sealed ticket, which this
    // tool must have issued; the retry must be the same call.
    if let Some(sealed) = call.request_state.clone() {
        let question = gate::open_question(&c, TOOL, &sealed)?;
        let ticket = question.ticket();
        if let Some(id) = &input.approval_id
            && *id != ticket.approval_id
        {
            return Err(gate::refuse_state(
                TOOL,
                format!(
                    "it answers approval {} but this call names approval {id}",
                    ticket.approval_id
                ),
            ));
        }
        if let Some(action) = &input.action {
            let hash = canonical::action_hash(&Value::Object(action.clone()));
            if hash != ticket.action_hash {
                return Err(gate::refuse_state(
                    TOOL,
                    format!(
                        "it answers approval {} for action {}, but this call's action hashes to {hash}",
                        ticket.approval_id, ticket.action_hash
                    ),
                ));
            }
        }
        return Ok(Reply::Done(match &question {
            Question::Form(ticket) => gate::outcome(
                &c,
                gate::record_answer(&c, &call, TOOL, ticket, None).await?,
                None,
            ),
            Question::Url(ticket) => gate::resume_url(&c, &call, TOOL, ticket, None, wait).await?,
        }));
    }
    let approval = match &input.approval_id {
        Some(id) => {
            if input.summary.is_some() || input.action.is_some() || input.risk.is_some() {
                return Err(Failure::Domain(invalid_field(
                    TOOL,
                    "approval_id",
                    "give either approval_id (an existing approval) or summary, action and risk (a new one), not both",
                )));
            }
            let id = id.clone();
            c.blocking(move |c| c.approvals().get(&id))
                .await?
                .map_err(|e| failure(TOOL, e))?
        }
        None => {
            let missing = |field| {
                Failure::Domain(invalid_field(
                    TOOL,
                    field,
                    "required when no approval_id is given",
                ))
            };
            // Always generic: an approval made here authorises no executor (the gates open
            // their own).
            let new = NewApproval {
                kind: Kind::Generic,
                subject_id: input.subject_id.clone().unwrap_or_default(),
                summary: input.summary.clone().ok_or_else(|| missing("summary"))?,
                action: Value::Object(input.action.clone().ok_or_else(|| missing("action"))?),
                risk: input.risk.ok_or_else(|| missing("risk"))?,
                preview: input.preview.clone(),
                requested_by: call.actor.clone(),
                expires_in_seconds: input.expires_in_seconds,
            };
            c.blocking(move |c| c.approvals().request(new))
                .await?
                .map_err(|e| failure(TOOL, e))?
        }
    };
    Ok(match gate::ask(&c, &call, TOOL, approval, wait).await? {
        Asked::Done(out) => Reply::Done(*out),
        Asked::InputRequired(r) => Reply::InputRequired(r),
    })
}

/// Arguments of `approval_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalListInput {
    /// Only approvals in this state.
    pub state: Option<State>,
    /// Only approvals of this kind.
    pub kind: Option<Kind>,
    /// Approvals per page, 1 to 200 (default 50).
    #[schemars(range(min = crate::limits::SHORT_PAGE.min, max = crate::limits::SHORT_PAGE.max))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

async fn approval_list(
    c: Coordinator,
    input: ApprovalListInput,
    _call: Call,
) -> Result<ApprovalPage, Failure> {
    let limit = input.limit.unwrap_or(50);
    if !crate::limits::SHORT_PAGE.contains(limit) {
        return Err(Failure::Domain(invalid_field(
            "approval_list",
            "limit",
            format!("{}, got {limit}", crate::limits::SHORT_PAGE.expected()),
        )));
    }
    let filter = ListFilter {
        state: input.state,
        kind: input.kind,
        limit,
        cursor: input.cursor,
    };
    c.blocking(move |c| c.approvals().list(&filter))
        .await?
        .map_err(|e| failure("approval_list", e))
}

/// Arguments of `approval_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalGetInput {
    /// The approval's id (`apr_...`).
    pub approval_id: String,
}

async fn approval_get(
    c: Coordinator,
    input: ApprovalGetInput,
    _call: Call,
) -> Result<Approval, Failure> {
    c.blocking(move |c| c.approvals().get(&input.approval_id))
        .await?
        .map_err(|e| failure("approval_get", e))
}
