//! URL-mode elicitation (MCP 2025-11-25): the gate asks the client to send the person to the
//! console page of an approval, waits for the decision made there (or at the CLI) as the
//! out-of-band wait does, and then tells the client the page is done with
//! `notifications/elicitation/complete`. On 2026-07-28 the same question travels in an
//! input-required result; the retry carries the person's answer, and the retried call waits
//! for the decision and returns it (there is no session to send the completion on: the result
//! is the completion).
//!
//! The client's answer to a URL elicitation says only whether the person agreed to open the
//! page, never what they decided: the decision is recorded by the console (`Channel::Console`,
//! out of band), so nothing the client or the model sends can approve through this path.

use std::time::{Duration, Instant};

use rmcp::model::{
    ClientResult, CustomNotification, ElicitRequestParams, ElicitationAction, InputRequiredResult,
    ServerNotification,
};
use serde_json::json;

use super::{
    ApprovalRequestOutput, POLL, PROGRESS_EVERY, PendingReason, Seen, URL_STATE_CONTEXT, answer_of,
    input_required, outcome, poll_decided, refresh, refuse_state, send_question, wait_out_of_band,
    where_decided,
};
use crate::approval::{Approval, DecideWith, Gate, State, Ticket};
use crate::server::Coordinator;
use crate::server::session::Call;
use crate::server::tool::Failure;

/// The notification that ends a URL elicitation (rmcp has no typed one).
const COMPLETE: &str = "notifications/elicitation/complete";

/// Asks the client to open `page` (the approval's console page) and waits for the decision.
///
/// After the person agreed to open the page, the wait lasts until someone decides (in any
/// console or at the CLI), the approval expires, or the client cancels the call, as a form
/// elicitation's does. If they declined or dismissed it, the approval stays pending and the
/// call waits only the `wait` the caller asked for, like any out-of-band wait.
pub(super) async fn elicit(
    c: &Coordinator,
    call: &Call,
    approval: Approval,
    page: String,
    wait: Duration,
) -> Result<ApprovalRequestOutput, Failure> {
    let id = approval.id.clone();
    let elicitation_id = new_elicitation_id(&approval);
    let question = params(c, &approval, page, &elicitation_id);
    let mut handle = send_question(call, question, &id).await?;
    let how = where_decided(c, &approval);
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut poll = tokio::time::interval(POLL);
    let mut seen = Seen::default();
    // `None` until the client answers; then whether the person agreed to open the page.
    let mut opened: Option<bool> = None;
    enum Ended {
        Decided(Box<Approval>),
        Declined,
        Cancelled,
    }
    let ended = loop {
        tokio::select! {
            answer = &mut handle.rx, if opened.is_none() => {
                match answer.unwrap_or(Err(rmcp::ServiceError::TransportClosed)) {
                    Ok(ClientResult::ElicitResult(r)) if r.action == ElicitationAction::Accept => {
                        opened = Some(true);
                    }
                    Ok(ClientResult::ElicitResult(_)) => break Ended::Declined,
                    Ok(other) => {
                        tracing::debug!(result = ?other, "unexpected answer to a URL elicitation");
                        break Ended::Declined;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the URL elicitation failed");
                        break Ended::Declined;
                    }
                }
            }
            () = call.cancel.cancelled() => break Ended::Cancelled,
            _ = progress.tick() => {
                let secs = started.elapsed().as_secs();
                call.progress(secs as f64, None, format!("waiting for a person to decide approval {id} ({secs}s){how}")).await;
            }
            _ = poll.tick() => {
                if let Some(decided) = poll_decided(c, &approval, &mut seen).await? {
                    break Ended::Decided(Box::new(decided));
                }
            }
        }
    };
    match ended {
        Ended::Decided(decided) => {
            if opened.is_none() {
                // Decided before the client answered: the question is moot.
                let _ = handle
                    .cancel(Some(format!(
                        "approval {id} was {} in the meantime",
                        decided.state
                    )))
                    .await;
            }
            complete(call, &elicitation_id).await;
            Ok(outcome(c, *decided, None))
        }
        // Why no rejection is recorded: the answer to a URL elicitation says whether the
        // person wanted to open a page, not whether the action should run; it comes through
        // the client (which the model drives), and the policy asked for a decision outside it.
        // Rejecting would be the safe direction, but a person who dismisses a browser prompt
        // to decide later at the CLI would find the action refused. The approval stays
        // pending (and expires if nobody decides), so nothing runs either way.
        Ended::Declined => {
            let out =
                wait_out_of_band(c, call, approval, wait, PendingReason::ConsoleDeclined).await?;
            if out.state != State::Pending {
                complete(call, &elicitation_id).await;
            }
            Ok(out)
        }
        Ended::Cancelled => {
            if opened.is_none() {
                let _ = handle
                    .cancel(Some("the tool call was cancelled".into()))
                    .await;
            }
            let approval = refresh(c, &id).await?.unwrap_or(approval);
            Ok(outcome(c, approval, Some(PendingReason::ClientCancelled)))
        }
    }
}

/// What the client shows beside the link: what is asked, that it is decided in the console,
/// and the CLI command as the other way.
fn message(c: &Coordinator, approval: &Approval) -> String {
    let why = if approval.decide_with == DecideWith::OutOfBand {
        "Policy requires a person to decide it outside this client"
    } else {
        "It is decided outside this client"
    };
    let mut m = format!(
        "Approval {id} ({risk} risk), requested by {by}: {summary}\n\n{why}: open its page in the oversight console to review the exact action and approve or reject it there.",
        id = approval.id,
        risk = approval.risk.as_str().to_uppercase(),
        by = approval.requested_by,
        summary = approval.summary,
    );
    if let Some(cmd) = super::decide_command(c, approval) {
        m.push_str(&format!(
            "\n\nOr decide it at a terminal with:\n  {cmd}\n(or `reject` in place of `approve`)."
        ));
    }
    m.push_str(&format!("\n\nIt expires at {}.", approval.expires_at));
    m
}

/// Tells the client the page of `elicitation_id` is done; failures are only logged (the call's
/// result says the same).
async fn complete(call: &Call, elicitation_id: &str) {
    let notification = ServerNotification::CustomNotification(CustomNotification::new(
        COMPLETE,
        Some(json!({ "elicitationId": elicitation_id })),
    ));
    if let Err(e) = call.peer.send_notification(notification).await {
        tracing::debug!(error = %e, "could not send {COMPLETE}");
    }
}

/// Unique per question, so that a completion can never be matched to another question about
/// the same approval (a call asked again, another session).
fn new_elicitation_id(approval: &Approval) -> String {
    format!("{}.{}", approval.id, uuid::Uuid::new_v4().simple())
}

fn params(
    c: &Coordinator,
    approval: &Approval,
    page: String,
    elicitation_id: &str,
) -> ElicitRequestParams {
    ElicitRequestParams::UrlElicitationParams {
        meta: None,
        message: message(c, approval),
        url: page,
        elicitation_id: elicitation_id.to_string(),
    }
}

/// 2026-07-28: an input-required result sending the person to `page`, with a sealed
/// [`Ticket`] (in the URL context, so it can never be redeemed as a decision) naming the
/// asking tool and the approval's executor, kind, subject and action.
pub(super) fn ask_stateless(
    c: &Coordinator,
    tool: &str,
    approval: &Approval,
    page: String,
) -> Result<InputRequiredResult, Failure> {
    let elicitation_id = new_elicitation_id(approval);
    // The nonce is never redeemed (the answer records nothing); it only keeps two states for
    // the same approval apart.
    let ticket = Ticket::for_question(approval, tool, elicitation_id.clone());
    let question = params(c, approval, page, &elicitation_id);
    input_required(c, &ticket, approval, URL_STATE_CONTEXT, question)
}

/// 2026-07-28: the retry after a URL question. The ticket must have been issued by `tool`
/// about this approval (and `gate`); the answer only says whether the person went to the
/// console. If they did, the call waits for the decision as the initialize era does after
/// an accepted URL; otherwise the approval stays pending (waiting `wait`, like any
/// out-of-band wait). Nothing is recorded from the answer.
pub(crate) async fn resume(
    c: &Coordinator,
    call: &Call,
    tool: &str,
    ticket: &Ticket,
    gate: Option<&Gate>,
    wait: Duration,
) -> Result<ApprovalRequestOutput, Failure> {
    let approval = refresh(c, &ticket.approval_id).await?.ok_or_else(|| {
        refuse_state(
            tool,
            format!("approval {} does not exist", ticket.approval_id),
        )
    })?;
    ticket
        .check(tool, gate, &approval)
        .map_err(|e| refuse_state(tool, e))?;
    let answer = answer_of(call, tool)?;
    if approval.state != State::Pending {
        return Ok(outcome(c, approval, None));
    }
    if answer.action != ElicitationAction::Accept {
        return wait_out_of_band(c, call, approval, wait, PendingReason::ConsoleDeclined).await;
    }
    let id = approval.id.clone();
    let how = where_decided(c, &approval);
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut poll = tokio::time::interval(POLL);
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            () = call.cancel.cancelled() => {
                let approval = refresh(c, &id).await?.unwrap_or(approval);
                return Ok(outcome(c, approval, Some(PendingReason::ClientCancelled)));
            }
            _ = progress.tick() => {
                let secs = started.elapsed().as_secs();
                call.progress(secs as f64, None, format!("waiting for a person to decide approval {id} ({secs}s){how}")).await;
            }
            _ = poll.tick() => {
                if let Some(decided) = poll_decided(c, &approval, &mut seen).await? {
                    return Ok(outcome(c, decided, None));
                }
            }
        }
    }
}
