//! The approval gate, server side: the one place that asks a person and hands an executor the
//! decision. It finds or opens the approval an executor's [`Gate`] needs, asks through the
//! channel the policy and the client allow (a form elicitation on initialize-era sessions, an
//! input-required result on 2026-07-28 requests, or a wait for an out-of-band decision with
//! progress naming the command and the console page that decide it, or a URL elicitation
//! sending the person to that page when the decision must be made out of band: `gate/url.rs`),
//! and verifies that a 2026-07-28 retry answers
//! a question this very call asked. The executor then consumes the approval in its own
//! transaction (`ApprovalService::consume_in`). Remediations, gated child calls, tool reviews
//! and pipeline stages describe their gate; none of them talks to elicitation, MRTR or polling.

mod url;

pub(super) use url::resume as resume_url;

use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ElicitResult, ElicitationAction, InputRequest,
    InputRequests, InputRequiredResult, SealOptions, ServerRequest,
};
use rmcp::service::{PeerRequestOptions, RequestHandle};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::session::{Call, Era};
use super::tool::{ErrorCode, Failure, ToolError, failure, invalid_field};
use crate::approval::{Approval, ApprovalError, Channel, DecideWith, Gate, State, Ticket, Verdict};

/// How often a waiting call checks the database for an out-of-band decision. The CLI's
/// decision reaches a waiting call within this (plus one query).
const POLL: Duration = Duration::from_millis(200);
/// How often a waiting call sends a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// The longest `wait_seconds` a call may ask for.
pub(super) const MAX_WAIT_SECONDS: u64 = crate::limits::WAIT_SECONDS.max;
/// The key under which the decision is asked in an input-required result.
const QUESTION_KEY: &str = "decision";
/// Associated data of sealed request states. v2 states carry a [`Ticket`]; a v1 state (from
/// before the gate) is refused as altered.
const STATE_CONTEXT: &[u8] = b"mcp-coordinator/gate/v2";
/// Associated data of sealed states that sent the person to the console (URL mode): a context
/// of their own, so that such a state can never be redeemed as a form answer (which records a
/// decision), nor a form's state be taken for one.
const URL_STATE_CONTEXT: &[u8] = b"mcp-coordinator/gate/url/v1";

/// The question a retry's sealed `requestState` answers.
pub(super) enum Question {
    /// A form: the answer is the decision, recorded once.
    Form(Ticket),
    /// The console page (URL mode): the answer only says whether the person went there.
    Url(Ticket),
}

impl Question {
    pub(super) fn ticket(&self) -> &Ticket {
        match self {
            Question::Form(t) | Question::Url(t) => t,
        }
    }
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
    /// The client offered to open the approval's console page and the person declined or
    /// dismissed it; the approval may still be decided in the console or at the CLI.
    ConsoleDeclined,
}

/// What `approval_request` returns.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApprovalRequestOutput {
    /// `approved`, `rejected`, `expired`, `cancelled`, or still `pending`.
    pub state: State,
    pub approval: Approval,
    /// Present while pending: why no decision yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<PendingReason>,
    /// What happened, in words, including what to do next.
    pub message: String,
    /// While pending: the exact command a person runs to decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decide_command: Option<String>,
    /// While pending: the oversight console's page where a person decides it (when a console
    /// serves this database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decide_url: Option<String>,
}

/// What asking about an approval came to.
pub(super) enum Asked {
    /// The approval as it now stands (decided, or still pending and why).
    Done(Box<ApprovalRequestOutput>),
    /// 2026-07-28: the client must ask the person and retry with the answer.
    InputRequired(InputRequiredResult),
}

/// What an executor may do after passing its gate.
pub(super) enum Passage {
    /// Approved for exactly this gate and not yet run: consume it in the executor's
    /// transaction, then run.
    Approved(Box<Approval>),
    /// Not approved (yet): nothing may run. Says why and how a person decides.
    Stopped(Box<ApprovalRequestOutput>),
    /// 2026-07-28: return this input-required result; the retry comes back here.
    InputRequired(InputRequiredResult, Box<Approval>),
}

impl Passage {
    /// The approval the gate found or opened.
    pub(super) fn approval(&self) -> &Approval {
        match self {
            Passage::Approved(a) => a,
            Passage::Stopped(out) => &out.approval,
            Passage::InputRequired(_, a) => a,
        }
    }
}

/// Refuses a `wait_seconds` over the maximum, naming the field.
pub(super) fn wait_for(tool: &str, wait_seconds: Option<u64>) -> Result<Duration, Failure> {
    let wait = wait_seconds.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(Failure::Domain(invalid_field(
            tool,
            "wait_seconds",
            format!("expected 0 to {MAX_WAIT_SECONDS}, got {wait}"),
        )));
    }
    Ok(Duration::from_secs(wait))
}

/// The door for executors. A 2026-07-28 retry must carry a question this `tool` asked about
/// exactly this `gate`; its answer is recorded once. Otherwise the approval for the gate is
/// found or opened and, while pending, the person is asked as the policy and client allow.
pub(super) async fn pass(
    c: &Coordinator,
    call: &Call,
    tool: &str,
    gate: &Gate,
    wait_seconds: Option<u64>,
) -> Result<Passage, Failure> {
    let wait = wait_for(tool, wait_seconds)?;
    if let Some(sealed) = &call.request_state {
        let out = match open_question(c, tool, sealed)? {
            Question::Form(ticket) => outcome(
                c,
                record_answer(c, call, tool, &ticket, Some(gate)).await?,
                None,
            ),
            Question::Url(ticket) => url::resume(c, call, tool, &ticket, Some(gate), wait).await?,
        };
        return Ok(if out.state == State::Approved {
            Passage::Approved(Box::new(out.approval))
        } else {
            Passage::Stopped(Box::new(out))
        });
    }
    let (g, actor) = (gate.clone(), call.actor.clone());
    let approval = c
        .blocking(move |c| c.approvals().open(&g, &actor))
        .await?
        .map_err(|e| failure(tool, e))?;
    if approval.state == State::Approved {
        return Ok(Passage::Approved(Box::new(approval)));
    }
    Ok(match ask(c, call, tool, approval.clone(), wait).await? {
        Asked::Done(out) if out.state == State::Approved => {
            Passage::Approved(Box::new(out.approval))
        }
        Asked::Done(out) => Passage::Stopped(out),
        Asked::InputRequired(r) => Passage::InputRequired(r, Box::new(approval)),
    })
}

/// Asks a person about an approval through whichever channel may decide it: an out-of-band
/// wait (policy, or a client without elicitation), a form elicitation (initialize era), or an
/// input-required result whose sealed state only a retry of `tool` may answer (2026-07-28).
pub(super) async fn ask(
    c: &Coordinator,
    call: &Call,
    tool: &str,
    approval: Approval,
    wait: Duration,
) -> Result<Asked, Failure> {
    if approval.state != State::Pending {
        return Ok(Asked::Done(Box::new(outcome(c, approval, None))));
    }
    // URL mode sends the person to the console, which decides out of band: the way to ask
    // when policy wants an out-of-band decision, or when the client can open a page but not
    // show a form.
    if call.elicitation_url
        && (approval.decide_with == DecideWith::OutOfBand || !call.elicitation_form)
        && let Some(page) = decide_url(c, &approval)
    {
        return match call.era {
            Era::Legacy => url::elicit(c, call, approval, page, wait)
                .await
                .map(|o| Asked::Done(Box::new(o))),
            Era::Stateless => {
                url::ask_stateless(c, tool, &approval, page).map(Asked::InputRequired)
            }
        };
    }
    if approval.decide_with == DecideWith::OutOfBand {
        return wait_out_of_band(c, call, approval, wait, PendingReason::OutOfBandRequired)
            .await
            .map(|o| Asked::Done(Box::new(o)));
    }
    if !call.elicitation_form {
        return wait_out_of_band(c, call, approval, wait, PendingReason::NoElicitation)
            .await
            .map(|o| Asked::Done(Box::new(o)));
    }
    match call.era {
        Era::Legacy => elicit_legacy(c, call, approval)
            .await
            .map(|o| Asked::Done(Box::new(o))),
        Era::Stateless => ask_stateless(c, tool, approval)
            .await
            .map(Asked::InputRequired),
    }
}

/// A JSON-RPC error refusing a retry's `requestState`.
pub(super) fn refuse_state(tool: &str, message: impl std::fmt::Display) -> Failure {
    Failure::Protocol(rmcp::ErrorData::invalid_params(
        format!("{tool}: requestState refused: {message}"),
        Some(json!({"tool": tool, "field": "requestState"})),
    ))
}

/// Opens a sealed `requestState` (only this process's key, unaltered and unexpired) and says
/// which kind of question it answers.
pub(super) fn open_question(
    c: &Coordinator,
    tool: &str,
    sealed: &str,
) -> Result<Question, Failure> {
    match c.codec().open_json_with(sealed, URL_STATE_CONTEXT) {
        Ok(ticket) => Ok(Question::Url(ticket)),
        Err(_) => open_ticket(c, tool, sealed).map(Question::Form),
    }
}

/// Opens a sealed form question's `requestState`: only this process's key, unaltered and
/// unexpired.
pub(super) fn open_ticket(c: &Coordinator, tool: &str, sealed: &str) -> Result<Ticket, Failure> {
    c.codec().open_json_with(sealed, STATE_CONTEXT).map_err(|e| {
        refuse_state(
            tool,
            format!(
                "{e} (it was altered, has expired, or was issued by another coordinator process); call {tool} again without it"
            ),
        )
    })
}

/// Records the client's answer carried by a retry, once, after checking that the question was
/// asked by `tool` about this approval and (for an executor) about exactly its `gate`. A
/// ticket presented to any other call is refused and records nothing.
pub(super) async fn record_answer(
    c: &Coordinator,
    call: &Call,
    tool: &str,
    ticket: &Ticket,
    gate: Option<&Gate>,
) -> Result<Approval, Failure> {
    // Over HTTP no answer comes from the client (see `Call::from_context`): a ticket issued to
    // a stdio client of this process and replayed over HTTP decides nothing.
    if call.principal.is_some() {
        return Err(refuse_state(
            tool,
            "over HTTP approvals are decided in the console by someone with human_oversight, not \
             in the client; call the tool again without requestState",
        ));
    }
    let answer = answer_of(call, tool)?;
    let verdict = verdict_from(&answer, call).ok_or_else(|| {
        refuse_state(
            tool,
            format!(
                "inputResponses.{QUESTION_KEY} accepted without a decision (expected decision \"approve\" or \"reject\")"
            ),
        )
    })?;
    let (ticket, gate, name) = (ticket.clone(), gate.cloned(), tool.to_string());
    c.blocking(move |c| c.approvals().answer(&ticket, &name, gate.as_ref(), verdict))
        .await?
        .map_err(|e| failure(tool, e))
}

/// A retry's answer to the question the gate asked (`inputResponses.decision`).
fn answer_of(call: &Call, tool: &str) -> Result<ElicitResult, Failure> {
    let answer = call
        .input_responses
        .as_ref()
        .and_then(|r| r.get(QUESTION_KEY))
        .ok_or_else(|| {
            refuse_state(
                tool,
                format!("inputResponses has no `{QUESTION_KEY}` answer"),
            )
        })?;
    serde_json::from_value(answer.clone()).map_err(|e| {
        refuse_state(
            tool,
            format!("inputResponses.{QUESTION_KEY} is not an elicitation result: {e}"),
        )
    })
}

/// The result for an approval in its current state.
pub(super) fn outcome(
    c: &Coordinator,
    approval: Approval,
    pending: Option<PendingReason>,
) -> ApprovalRequestOutput {
    let command = decide_command(c, &approval);
    let page = decide_url(c, &approval);
    let (message, decide_command, decide_url) = match approval.state {
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
                Some(PendingReason::ConsoleDeclined) => format!(
                    "Approval {} is pending: the person did not open its page in the oversight console from this client (declined or dismissed), and no decision was recorded; it can still be decided there or at the CLI.",
                    approval.id
                ),
                Some(PendingReason::WaitElapsed) | None => {
                    format!("Approval {} is still pending.", approval.id)
                }
            };
            let console = page.as_ref().map_or(String::new(), |url| {
                format!(" or in the oversight console at {url}")
            });
            let how = match &command {
                Some(cmd) => format!(
                    " A person decides it with:\n  {cmd}\nor rejects it with the same command using `reject`{console}. It expires at {}. Call approval_request with approval_id and wait_seconds to wait for the decision, or approval_get to check.",
                    approval.expires_at
                ),
                None => " This coordinator runs on an in-memory database (--db :memory:), so no other process can reach it to decide; restart it with a database file.".to_string(),
            };
            (format!("{why}{how}"), command, page)
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
        decide_url,
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

/// The console page of `approval` (`{console}/approvals/{id}`), when a console serves this
/// database.
pub(super) fn decide_url(c: &Coordinator, approval: &Approval) -> Option<String> {
    c.settings()
        .console_url
        .as_deref()
        .map(|base| format!("{}/approvals/{}", base.trim_end_matches('/'), approval.id))
}

/// What a progress message says about how a pending approval is decided: the console page and
/// the CLI command, whichever exist.
fn where_decided(c: &Coordinator, approval: &Approval) -> String {
    match (decide_url(c, approval), decide_command(c, approval)) {
        (Some(url), Some(cmd)) => {
            format!("; a person decides it in the oversight console at {url} or with: {cmd}")
        }
        (Some(url), None) => format!("; a person decides it in the oversight console at {url}"),
        (None, Some(cmd)) => format!("; a person decides it with: {cmd}"),
        (None, None) => String::new(),
    }
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
    let how = where_decided(c, &approval);
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut last_progress = Instant::now() - PROGRESS_EVERY;
    while started.elapsed() < wait {
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs();
            call.progress(
                secs as f64,
                Some(wait.as_secs() as f64),
                format!("waiting for a person to decide approval {id} ({secs}s){how}"),
            )
            .await;
        }
        tokio::select! {
            () = call.cancel.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
        if let Some(decided) = poll_decided(c, &approval, &mut seen).await? {
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

/// What a waiting call last saw of the database: it reads its approval again only when
/// something was committed since (by any coordinator: on PostgreSQL the version comes from
/// notifications, so a waiting call costs no query until something changes), and every few
/// seconds anyway.
#[derive(Default)]
pub(super) struct Seen {
    version: Option<u64>,
    read_at: Option<Instant>,
}

/// How often a waiting call reads its approval even when nothing seems to have changed.
const READ_ANYWAY: Duration = Duration::from_secs(5);

/// The approval if it is no longer pending (decided elsewhere, or expired just now). A cheap
/// read while it is pending and unexpired; the full read (which records the expiry) otherwise.
async fn poll_decided(
    c: &Coordinator,
    approval: &Approval,
    seen: &mut Seen,
) -> Result<Option<Approval>, Failure> {
    let version = c
        .blocking(|c| c.store().data_version().ok())
        .await
        .ok()
        .flatten();
    let due = seen.read_at.is_none_or(|t| t.elapsed() >= READ_ANYWAY);
    let expired = approval.is_expired_at(&crate::audit::chain::now_ts());
    if !due && !expired && version.is_some() && version == seen.version {
        return Ok(None);
    }
    seen.version = version;
    seen.read_at = Some(Instant::now());
    let id = approval.id.clone();
    let state = c
        .blocking(move |c| c.approvals().peek_state(&id))
        .await?
        .map_err(|e| failure("approval_request", e))?;
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
        Err(e) => Err(failure("approval_request", e)),
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

async fn record(c: &Coordinator, id: &str, verdict: Verdict) -> Result<Approval, Failure> {
    let id = id.to_string();
    c.blocking(move |c| c.approvals().decide(&id, verdict))
        .await?
        .map_err(|e| failure("approval_request", e))
}

/// Initialize-era sessions: sends `elicitation/create` with `question` about approval `id`, as
/// a request the call can withdraw.
async fn send_question(
    call: &Call,
    question: ElicitRequestParams,
    id: &str,
) -> Result<RequestHandle<RoleServer>, Failure> {
    let request = ServerRequest::ElicitRequest(ElicitRequest::new(question));
    call.peer
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
        })
}

/// Initialize-era sessions: ask with a form elicitation and wait for the answer, while
/// watching for a decision made elsewhere, the expiry, and the client cancelling the call.
async fn elicit_legacy(
    c: &Coordinator,
    call: &Call,
    approval: Approval,
) -> Result<ApprovalRequestOutput, Failure> {
    let id = approval.id.clone();
    let mut handle = send_question(call, form_params(&approval)?, &id).await?;
    let how = where_decided(c, &approval);
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut poll = tokio::time::interval(POLL);
    let mut seen = Seen::default();
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
                call.progress(secs as f64, None, format!("asking a person to decide approval {id} ({secs}s){how}")).await;
            }
            _ = poll.tick() => {
                if let Some(decided) = poll_decided(c, &approval, &mut seen).await? {
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
            let approval = record(c, &id, verdict).await?;
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

/// 2026-07-28: return an input-required result asking for the decision, with a sealed
/// [`Ticket`] naming the asking tool, this approval, its executor's kind, subject and action,
/// and a one-time nonce.
async fn ask_stateless(
    c: &Coordinator,
    tool: &str,
    approval: Approval,
) -> Result<InputRequiredResult, Failure> {
    let id = approval.id.clone();
    let nonce = c
        .blocking(move |c| c.approvals().ask(&id))
        .await?
        .map_err(|e| failure(tool, e))?;
    let ticket = Ticket::for_question(&approval, tool, nonce);
    input_required(
        c,
        &ticket,
        &approval,
        STATE_CONTEXT,
        form_params(&approval)?,
    )
}

/// An input-required result asking `question` under the key the retry answers, with `ticket`
/// sealed in `context` until the approval expires.
fn input_required(
    c: &Coordinator,
    ticket: &Ticket,
    approval: &Approval,
    context: &[u8],
    question: ElicitRequestParams,
) -> Result<InputRequiredResult, Failure> {
    let ttl = crate::audit::chain::seconds_until(&approval.expires_at).max(1);
    let state = c
        .codec()
        .seal_json_with(
            ticket,
            &SealOptions::new()
                .associated_data(context)
                .ttl(Duration::from_secs(ttl)),
        )
        .map_err(|e| Failure::Domain(ToolError::new(ErrorCode::Internal, e.to_string())))?;
    let mut requests = InputRequests::new();
    requests.insert(
        QUESTION_KEY.to_string(),
        InputRequest::Elicitation(ElicitRequest::new(question)),
    );
    Ok(InputRequiredResult::new(Some(requests), Some(state)))
}
