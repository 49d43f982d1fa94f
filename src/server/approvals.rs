//! Approval tools (`approval_request`, `approval_list`, `approval_get`) and the bridge that asks
//! a person: a form elicitation on initialize-era sessions, an input-required result (MRTR) on
//! 2026-07-28 requests, or a plain pending result with the CLI command when the client cannot
//! ask. No tool takes the decision as an argument.

use std::time::{Duration, Instant};

use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, InputRequest,
    InputRequests, InputRequiredResult, SealOptions, ServerRequest,
};
use rmcp::service::PeerRequestOptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::session::{Call, Era};
use super::system::store_error;
use super::tool::{
    ErrorCode, Failure, Reply, Route, ToolError, ToolSpec, invalid_field, route, route_with_input,
};
use crate::approval::{
    Approval, ApprovalError, ApprovalPage, Channel, DecideWith, Kind, ListFilter, NewApproval,
    Risk, State, Verdict, canonical,
};
use crate::config::ToolGroup;

/// How often a waiting call checks the database for an out-of-band decision. The CLI's
/// decision reaches a waiting call within this (plus one query).
const POLL: Duration = Duration::from_millis(200);
/// How often a waiting call sends a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The longest `wait_seconds` a call may ask for.
const MAX_WAIT_SECONDS: u64 = 3600;
/// The key under which the decision is asked in an input-required result.
const QUESTION_KEY: &str = "decision";
/// Associated data of sealed request states: binds them to this tool.
const STATE_CONTEXT: &[u8] = b"mcp-coordinator/approval_request/v1";

pub fn routes() -> Vec<Route> {
    vec![
        route_with_input(
            ToolSpec {
                name: "approval_request",
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

/// Maps approval-service errors to tool failures.
fn approval_failure(tool: &str, e: ApprovalError) -> Failure {
    let domain = |code, e: &ApprovalError, details| {
        Failure::Domain(ToolError::new(code, e.to_string()).with_details(details))
    };
    match e {
        ApprovalError::Store(e) => Failure::Domain(store_error(e)),
        ApprovalError::Audit(e) => {
            Failure::Domain(ToolError::new(ErrorCode::StorageError, e.to_string()))
        }
        ApprovalError::Invalid { field, message } => {
            Failure::Protocol(invalid_field(tool, field, message))
        }
        ApprovalError::NotFound(ref id) => {
            domain(ErrorCode::NotFound, &e, json!({"approval_id": id}))
        }
        ApprovalError::AlreadyDecided { ref id, state } => domain(
            ErrorCode::Conflict,
            &e,
            json!({"approval_id": id, "state": state}),
        ),
        ApprovalError::Expired { ref id, .. } => domain(
            ErrorCode::Conflict,
            &e,
            json!({"approval_id": id, "state": "expired"}),
        ),
        ApprovalError::OutOfBandRequired { ref id, risk } => domain(
            ErrorCode::Forbidden,
            &e,
            json!({"approval_id": id, "risk": risk}),
        ),
        ApprovalError::NotExecutable(_) => domain(ErrorCode::Forbidden, &e, json!({})),
        // A replayed or unknown question handle is a bad request from the client.
        ApprovalError::Question(message) => Failure::Protocol(rmcp::ErrorData::invalid_params(
            format!("{tool}: requestState refused: {message}"),
            Some(json!({"tool": tool, "field": "requestState"})),
        )),
    }
}

/// Arguments of `approval_request`: either `approval_id` (ask again about an existing
/// approval), or `summary`, `action` and `risk` (a new one).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequestInput {
    /// Ask again about (or wait for) an approval that already exists.
    pub approval_id: Option<String>,
    /// One line a person reads: what will happen and why.
    pub summary: Option<String>,
    /// Exactly what will be done, as a JSON object. The person sees it verbatim, and the
    /// approval covers this action and nothing else.
    pub action: Option<serde_json::Map<String, Value>>,
    /// How much could go wrong. By default `critical` can only be approved from the CLI.
    pub risk: Option<Risk>,
    /// What the action is about (a file, a server name, an id), for filtering; optional.
    pub subject_id: Option<String>,
    /// What will change, for the person: a diff, a command line, a description.
    pub preview: Option<String>,
    /// Seconds until the approval expires (default from policy, 3600).
    #[schemars(range(min = 1, max = 604800))]
    pub expires_in_seconds: Option<u64>,
    /// When the person cannot be asked in this client (no elicitation, or policy needs the
    /// CLI): seconds to wait for a decision from the CLI before returning `pending`
    /// (0 to 3600, default 0). Progress notifications are sent while waiting.
    #[schemars(range(min = 0, max = 3600))]
    pub wait_seconds: Option<u64>,
}

/// Why an approval is still pending when `approval_request` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// Policy requires a decision from the CLI for this kind and risk.
    OutOfBandRequired,
    /// This client cannot ask a person (it declared no form elicitation).
    NoElicitation,
    /// The wait ended before anyone decided.
    WaitElapsed,
    /// The client cancelled the call while the person was being asked.
    ClientCancelled,
}

/// What `approval_request` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApprovalRequestOutput {
    /// `approved`, `rejected`, `expired`, `cancelled`, or still `pending`.
    pub state: State,
    pub approval: Approval,
    /// Present while pending: why no decision yet.
    pub pending_reason: Option<PendingReason>,
    /// What happened, in words, including what to do next.
    pub message: String,
    /// While pending: the exact command a person runs to decide.
    pub decide_command: Option<String>,
}

/// What a sealed `requestState` carries. Opaque to the client; only valid with this process's
/// key, for this approval, this action, and once.
#[derive(Debug, Serialize, Deserialize)]
struct SealedQuestion {
    approval_id: String,
    action_hash: String,
    nonce: String,
}

pub(super) async fn approval_request(
    c: Coordinator,
    input: ApprovalRequestInput,
    call: Call,
) -> Result<Reply<ApprovalRequestOutput>, Failure> {
    const TOOL: &str = "approval_request";
    let wait = input.wait_seconds.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(Failure::Protocol(invalid_field(
            TOOL,
            "wait_seconds",
            format!("expected 0 to {MAX_WAIT_SECONDS}, got {wait}"),
        )));
    }
    // An MRTR retry: the answer decides the approval named in the sealed state.
    if let Some(sealed) = call.request_state.clone() {
        let approval = answer_retry(&c, &input, &call, &sealed).await?;
        return Ok(Reply::Done(outcome(&c, approval, None)));
    }
    let approval = match &input.approval_id {
        Some(id) => {
            if input.summary.is_some() || input.action.is_some() || input.risk.is_some() {
                return Err(Failure::Protocol(invalid_field(
                    TOOL,
                    "approval_id",
                    "give either approval_id (an existing approval) or summary, action and risk (a new one), not both",
                )));
            }
            let id = id.clone();
            c.blocking(move |c| c.approvals().get(&id))
                .await?
                .map_err(|e| approval_failure(TOOL, e))?
        }
        None => {
            let missing = |field| {
                Failure::Protocol(invalid_field(
                    TOOL,
                    field,
                    "required when no approval_id is given",
                ))
            };
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
                .map_err(|e| approval_failure(TOOL, e))?
        }
    };
    if approval.state != State::Pending {
        return Ok(Reply::Done(outcome(&c, approval, None)));
    }
    let wait = Duration::from_secs(wait);
    if approval.decide_with == DecideWith::OutOfBand {
        return wait_out_of_band(&c, &call, approval, wait, PendingReason::OutOfBandRequired)
            .await
            .map(Reply::Done);
    }
    if !call.elicitation_form {
        return wait_out_of_band(&c, &call, approval, wait, PendingReason::NoElicitation)
            .await
            .map(Reply::Done);
    }
    match call.era {
        Era::Legacy => elicit_legacy(&c, &call, approval).await.map(Reply::Done),
        Era::Stateless => ask_stateless(&c, approval).await.map(Reply::InputRequired),
    }
}

/// The result for an approval in its current state.
fn outcome(
    c: &Coordinator,
    approval: Approval,
    pending: Option<PendingReason>,
) -> ApprovalRequestOutput {
    let command = decide_command(c, &approval);
    let (message, decide_command) = match approval.state {
        State::Pending => {
            let why = match pending {
                Some(PendingReason::OutOfBandRequired) => format!(
                    "Approval {} is {} risk: policy requires a person to decide it outside this client.",
                    approval.id, approval.risk
                ),
                Some(PendingReason::NoElicitation) => format!(
                    "Approval {} is pending: this client cannot ask a person (it declared no elicitation).",
                    approval.id
                ),
                Some(PendingReason::ClientCancelled) => format!(
                    "The question about approval {} was withdrawn because the call was cancelled; the approval is still pending.",
                    approval.id
                ),
                Some(PendingReason::WaitElapsed) | None => {
                    format!("Approval {} is still pending.", approval.id)
                }
            };
            let how = match &command {
                Some(cmd) => format!(
                    " A person decides it with:\n  {cmd}\nor rejects it with the same command using `reject`. It expires at {}. Call approval_request with approval_id and wait_seconds to wait for the decision, or approval_get to check.",
                    approval.expires_at
                ),
                None => " This coordinator runs on an in-memory database (--db :memory:), so no other process can reach it to decide; restart it with a database file.".to_string(),
            };
            (format!("{why}{how}"), command)
        }
        state => {
            let d = approval.decision.as_ref();
            let by = d.map_or("unknown".to_string(), |d| format!("{} via {}", d.by, d.via));
            let reason = d
                .and_then(|d| d.reason.as_deref().or(d.cause.as_deref()))
                .map_or(String::new(), |r| format!(": {r}"));
            let next = match state {
                State::Approved => " The action it covers may now run, once.",
                _ => " The action must not run.",
            };
            (
                format!(
                    "Approval {} was {state} by {by}{reason}.{next}",
                    approval.id
                ),
                None,
            )
        }
    };
    ApprovalRequestOutput {
        state: approval.state,
        pending_reason: if approval.state == State::Pending {
            pending
        } else {
            None
        },
        approval,
        message,
        decide_command,
    }
}

/// `mcp-coordinator [--data-dir D] [--db P] approvals approve ID --reason "..."`.
pub(super) fn decide_command(c: &Coordinator, approval: &Approval) -> Option<String> {
    c.settings().cli_prefix().map(|prefix| {
        format!(
            "{prefix} approvals approve {} --reason \"...\"",
            approval.id
        )
    })
}

/// Waits up to `wait` for a decision made elsewhere (the CLI, another process), polling the
/// database and sending progress notifications; returns the approval as it then stands.
async fn wait_out_of_band(
    c: &Coordinator,
    call: &Call,
    approval: Approval,
    wait: Duration,
    reason: PendingReason,
) -> Result<ApprovalRequestOutput, Failure> {
    let id = approval.id.clone();
    let started = Instant::now();
    let mut last_progress = Instant::now() - PROGRESS_EVERY;
    while started.elapsed() < wait {
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs();
            call.progress(
                secs as f64,
                Some(wait.as_secs() as f64),
                format!("waiting for a person to decide approval {id} ({secs}s)"),
            )
            .await;
        }
        tokio::select! {
            () = call.cancel.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
        if let Some(decided) = poll_decided(c, &approval).await? {
            return Ok(outcome(c, decided, None));
        }
    }
    let approval = refresh(c, &id).await?.unwrap_or(approval);
    let reason = if wait.is_zero() {
        reason
    } else if call.cancel.is_cancelled() {
        PendingReason::ClientCancelled
    } else {
        match reason {
            PendingReason::NoElicitation => PendingReason::WaitElapsed,
            other => other,
        }
    };
    Ok(outcome(c, approval, Some(reason)))
}

/// The approval if it is no longer pending (decided elsewhere, or expired just now). A cheap
/// read while it is pending and unexpired; the full read (which records the expiry) otherwise.
async fn poll_decided(c: &Coordinator, approval: &Approval) -> Result<Option<Approval>, Failure> {
    let id = approval.id.clone();
    let state = c
        .blocking(move |c| c.approvals().peek_state(&id))
        .await?
        .map_err(|e| approval_failure("approval_request", e))?;
    if state == State::Pending && !approval.is_expired_at(&crate::audit::chain::now_ts()) {
        return Ok(None);
    }
    Ok(refresh(c, &approval.id)
        .await?
        .filter(|a| a.state != State::Pending))
}

async fn refresh(c: &Coordinator, id: &str) -> Result<Option<Approval>, Failure> {
    let id = id.to_string();
    match c.blocking(move |c| c.approvals().get(&id)).await? {
        Ok(a) => Ok(Some(a)),
        Err(ApprovalError::NotFound(_)) => Ok(None),
        Err(e) => Err(approval_failure("approval_request", e)),
    }
}

/// The message and form a person sees.
fn question(approval: &Approval) -> (String, Value) {
    let action = serde_json::to_string_pretty(&approval.action).unwrap_or_default();
    let mut message = format!(
        "Approval requested by {requester}\n\n{summary}\n\nRisk: {risk}\nWhat will run (exactly this, once):\n{action}\n",
        requester = approval.requested_by,
        summary = approval.summary,
        risk = approval.risk.as_str().to_uppercase(),
    );
    if let Some(preview) = &approval.preview {
        message.push_str(&format!("\nWhat will change:\n{preview}\n"));
    }
    message.push_str(&format!(
        "\nApproval {} expires at {}. Your answer is recorded in the signed audit log.",
        approval.id, approval.expires_at
    ));
    let schema = json!({
        "type": "object",
        "properties": {
            "decision": {
                "type": "string",
                "title": "Decision",
                "description": "Approve runs exactly the action above, once. Reject stops it.",
                "oneOf": [
                    {"const": "approve", "title": "Approve"},
                    {"const": "reject", "title": "Reject"}
                ]
            },
            "reason": {
                "type": "string",
                "title": "Reason",
                "description": "Why (recorded in the audit log)"
            }
        },
        "required": ["decision"]
    });
    (message, schema)
}

fn form_params(approval: &Approval) -> Result<ElicitRequestParams, Failure> {
    let (message, schema) = question(approval);
    let requested_schema = serde_json::from_value(schema).map_err(|e| {
        Failure::Domain(ToolError::new(
            ErrorCode::Internal,
            format!("cannot build the elicitation form: {e}"),
        ))
    })?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema,
    })
}

/// Turns the person's answer into a verdict. `None` when the answer holds no decision.
fn verdict_from(answer: &ElicitResult, call: &Call) -> Option<Verdict> {
    let (state, reason, cause) = match answer.action {
        ElicitationAction::Accept => {
            let content = answer.content.as_ref()?;
            let reason = content
                .get("reason")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(String::from);
            match content.get("decision").and_then(Value::as_str)? {
                "approve" => (State::Approved, reason, None),
                "reject" => (State::Rejected, reason, None),
                _ => return None,
            }
        }
        ElicitationAction::Decline => (
            State::Rejected,
            None,
            Some("declined in the client".to_string()),
        ),
        ElicitationAction::Cancel => (
            State::Cancelled,
            None,
            Some("dismissed in the client without a decision".to_string()),
        ),
        // A future action this build does not know: record nothing.
        _ => return None,
    };
    Some(Verdict {
        state,
        by: call.actor.clone(),
        via: Channel::ElicitationForm,
        reason,
        cause,
        context: json!({
            "session": call.session_id,
            "protocol_version": call.protocol_version,
            "era": call.era,
        }),
    })
}

async fn record(
    c: &Coordinator,
    id: &str,
    verdict: Verdict,
    nonce: Option<String>,
) -> Result<Approval, Failure> {
    let id = id.to_string();
    c.blocking(move |c| {
        c.approvals()
            .decide_with_question(&id, verdict, nonce.as_deref())
    })
    .await?
    .map_err(|e| approval_failure("approval_request", e))
}

/// Initialize-era sessions: ask with a form elicitation and wait for the answer, while
/// watching for a decision made elsewhere, the expiry, and the client cancelling the call.
pub(super) async fn elicit_legacy(
    c: &Coordinator,
    call: &Call,
    approval: Approval,
) -> Result<ApprovalRequestOutput, Failure> {
    let id = approval.id.clone();
    let request = ServerRequest::ElicitRequest(ElicitRequest::new(form_params(&approval)?));
    let mut handle = call
        .peer
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .map_err(|e| {
            Failure::Domain(
                ToolError::new(
                    ErrorCode::Unavailable,
                    format!("could not ask the person through the client: {e}"),
                )
                .with_details(json!({"approval_id": id})),
            )
        })?;
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut poll = tokio::time::interval(POLL);
    enum Ended {
        Answered(Result<rmcp::model::ClientResult, rmcp::ServiceError>),
        Cancelled,
        DecidedElsewhere(Box<Approval>),
    }
    let ended = loop {
        tokio::select! {
            answer = &mut handle.rx => break Ended::Answered(answer.unwrap_or(Err(rmcp::ServiceError::TransportClosed))),
            () = call.cancel.cancelled() => break Ended::Cancelled,
            _ = progress.tick() => {
                let secs = started.elapsed().as_secs();
                call.progress(secs as f64, None, format!("asking a person to decide approval {id} ({secs}s)")).await;
            }
            _ = poll.tick() => {
                if let Some(decided) = poll_decided(c, &approval).await? {
                    break Ended::DecidedElsewhere(Box::new(decided));
                }
            }
        }
    };
    match ended {
        Ended::Answered(Ok(rmcp::model::ClientResult::ElicitResult(answer))) => {
            let Some(verdict) = verdict_from(&answer, call) else {
                let approval = refresh(c, &id).await?.unwrap_or(approval);
                let mut out = outcome(c, approval, Some(PendingReason::WaitElapsed));
                out.message = format!(
                    "The answer held no decision (expected decision \"approve\" or \"reject\"); approval {id} is still pending. {}",
                    out.message
                );
                return Ok(out);
            };
            let approval = record(c, &id, verdict, None).await?;
            Ok(outcome(c, approval, None))
        }
        Ended::Answered(Ok(other)) => Err(Failure::Domain(ToolError::new(
            ErrorCode::Unavailable,
            format!("the client answered the elicitation with an unexpected result: {other:?}"),
        ))),
        Ended::Answered(Err(e)) => {
            let approval = refresh(c, &id).await?.unwrap_or(approval);
            let mut out = outcome(c, approval, Some(PendingReason::WaitElapsed));
            out.message = format!("Asking through the client failed ({e}). {}", out.message);
            Ok(out)
        }
        Ended::Cancelled => {
            // Withdraw the question; the approval stays pending for another channel.
            let _ = handle
                .cancel(Some("the tool call was cancelled".into()))
                .await;
            let approval = refresh(c, &id).await?.unwrap_or(approval);
            Ok(outcome(c, approval, Some(PendingReason::ClientCancelled)))
        }
        Ended::DecidedElsewhere(decided) => {
            let _ = handle
                .cancel(Some(format!(
                    "approval {id} was {} elsewhere",
                    decided.state
                )))
                .await;
            Ok(outcome(c, *decided, None))
        }
    }
}

/// 2026-07-28: return an input-required result asking for the decision, with a sealed state
/// that names this approval, its action and a one-time nonce.
async fn ask_stateless(
    c: &Coordinator,
    approval: Approval,
) -> Result<InputRequiredResult, Failure> {
    let id = approval.id.clone();
    let nonce = c
        .blocking(move |c| c.approvals().ask(&id))
        .await?
        .map_err(|e| approval_failure("approval_request", e))?;
    let sealed = SealedQuestion {
        approval_id: approval.id.clone(),
        action_hash: approval.action_hash.clone(),
        nonce,
    };
    let ttl = crate::audit::chain::seconds_until(&approval.expires_at).max(1);
    let state = c
        .codec()
        .seal_json_with(
            &sealed,
            &SealOptions::new()
                .associated_data(STATE_CONTEXT)
                .ttl(Duration::from_secs(ttl)),
        )
        .map_err(|e| Failure::Domain(ToolError::new(ErrorCode::Internal, e.to_string())))?;
    let mut requests = InputRequests::new();
    requests.insert(
        QUESTION_KEY.to_string(),
        InputRequest::Elicitation(ElicitRequest::new(form_params(&approval)?)),
    );
    Ok(InputRequiredResult::new(Some(requests), Some(state)))
}

/// 2026-07-28 retry: verify the sealed state against this call, then record the answer once.
async fn answer_retry(
    c: &Coordinator,
    input: &ApprovalRequestInput,
    call: &Call,
    sealed: &str,
) -> Result<Approval, Failure> {
    const TOOL: &str = "approval_request";
    let refuse = |message: String| {
        Failure::Protocol(rmcp::ErrorData::invalid_params(
            format!("{TOOL}: requestState refused: {message}"),
            Some(json!({"tool": TOOL, "field": "requestState"})),
        ))
    };
    let question: SealedQuestion = c
        .codec()
        .open_json_with(sealed, STATE_CONTEXT)
        .map_err(|e| {
            refuse(format!(
                "{e} (it was altered, has expired, or was issued by another coordinator process); call approval_request again without it"
            ))
        })?;
    // The retry must be the same call the state was issued for.
    if let Some(id) = &input.approval_id
        && *id != question.approval_id
    {
        return Err(refuse(format!(
            "it answers approval {} but this call names approval {id}",
            question.approval_id
        )));
    }
    if let Some(action) = &input.action {
        let hash = canonical::action_hash(&Value::Object(action.clone()));
        if hash != question.action_hash {
            return Err(refuse(format!(
                "it answers approval {} for action {}, but this call's action hashes to {hash}",
                question.approval_id, question.action_hash
            )));
        }
    }
    let id = question.approval_id.clone();
    let current = refresh(c, &id)
        .await?
        .ok_or_else(|| refuse(format!("approval {id} does not exist")))?;
    if current.action_hash != question.action_hash {
        return Err(refuse(format!(
            "approval {id} authorises a different action than the one asked about"
        )));
    }
    let answer = call
        .input_responses
        .as_ref()
        .and_then(|r| r.get(QUESTION_KEY))
        .ok_or_else(|| refuse(format!("inputResponses has no `{QUESTION_KEY}` answer")))?;
    let answer: ElicitResult = serde_json::from_value(answer.clone()).map_err(|e| {
        refuse(format!(
            "inputResponses.{QUESTION_KEY} is not an elicitation result: {e}"
        ))
    })?;
    let verdict = verdict_from(&answer, call).ok_or_else(|| {
        refuse(format!(
            "inputResponses.{QUESTION_KEY} accepted without a decision (expected decision \"approve\" or \"reject\")"
        ))
    })?;
    record(c, &id, verdict, Some(question.nonce)).await
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
    #[schemars(range(min = 1, max = 200))]
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
    if !(1..=200).contains(&limit) {
        return Err(Failure::Protocol(invalid_field(
            "approval_list",
            "limit",
            format!("expected 1 to 200, got {limit}"),
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
        .map_err(|e| approval_failure("approval_list", e))
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
        .map_err(|e| approval_failure("approval_get", e))
}
