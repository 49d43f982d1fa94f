//! `GET /approvals/{id}`: everything a person needs to decide one approval (the summary, who
//! asked, who may decide, the exact action and its hash, the preview, per-file diffs for a
//! remediation) and, while it is pending, the approve and reject forms; once decided, the
//! decision. The same page comes back with an error when a decision is refused, keeping what
//! the person typed (never the passphrase).

use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{age, expiry, risk_badge, state_badge, when};
use crate::approval::{Approval, ApprovalError, DecideWith, Kind, Risk, State};
use crate::console::Console;
use crate::console::diff;
use crate::console::layout::{csrf_field, error_page, html_response, page};
use crate::console::session::Person;

/// Which form a message or typed text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Approve,
    Reject,
}

/// What the page shows besides the approval: a refusal, what the person had typed, and
/// whether a decision was just recorded.
#[derive(Debug, Default)]
pub struct Draft {
    /// The form a message is about, and the message.
    pub error: Option<(Option<Which>, String)>,
    pub approve_reason: String,
    pub reject_reason: String,
    /// A decision made here a moment ago (after the redirect).
    pub decided: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShowQuery {
    decided: Option<String>,
}

/// `GET /approvals/{id}`.
pub async fn show(
    AxState(console): AxState<Console>,
    person: Person,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    if let Err(r) = crate::console::guard::require(&console, &person, crate::auth::Permission::View)
    {
        return r;
    }
    let draft = Draft {
        decided: q.decided.is_some(),
        ..Draft::default()
    };
    match load(&console, &person, id).await {
        Ok(approval) => render(&console, &person, &approval, &draft, StatusCode::OK),
        Err(r) => r,
    }
}

/// The approval, or the page saying why not (404 for an unknown id).
pub async fn load(console: &Console, person: &Person, id: String) -> Result<Approval, Response> {
    match console.blocking(move |c| c.approvals().get(&id)).await? {
        Ok(a) => Ok(a),
        Err(e @ ApprovalError::NotFound(_)) => Err(error_page(
            console,
            Some(person),
            StatusCode::NOT_FOUND,
            &format!("{e}; it may be on another database. See the list of approvals."),
        )),
        Err(e) => Err(error_page(
            console,
            Some(person),
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the approval: {e}"),
        )),
    }
}

fn who_may_decide(a: &Approval) -> &'static str {
    match (a.decide_with, a.risk) {
        (DecideWith::OutOfBand, _) => {
            "Only out of band: here in the console (with the overseer's passphrase again) or at the CLI; the assistant's client cannot approve it."
        }
        (DecideWith::Elicitation, Risk::Critical) => {
            "The person in the assistant's client, or out of band: here (with the overseer's passphrase again) or at the CLI."
        }
        (DecideWith::Elicitation, _) => {
            "The person in the assistant's client, or out of band: here or at the CLI."
        }
    }
}

fn error_for(draft: &Draft, which: Which) -> Option<&str> {
    match &draft.error {
        Some((Some(w), m)) if *w == which => Some(m),
        _ => None,
    }
}

fn forms(console: &Console, person: &Person, a: &Approval, draft: &Draft) -> Markup {
    let again = super::needs_passphrase(a);
    let approve_error = error_for(draft, Which::Approve);
    let reject_error = error_for(draft, Which::Reject);
    html! {
        h2 #decide { "Decide" }
        div.actions {
            form.card #approve method="post" action={ "/approvals/" (a.id) "/approve" } {
                (csrf_field(console, person))
                @if let Some(m) = approve_error { p.error { (m) } }
                label for="approve-reason" { "Why you approve (recorded with the decision)" }
                textarea #approve-reason name="reason" required { (draft.approve_reason) }
                @if again && person.principal().is_some() {
                    @if super::reauthenticated(person) {
                        p.muted #reauthenticated { "You logged in again at the identity provider a moment ago, as approving this asks (it is " (if a.risk == Risk::Critical { "critical" } else { "reserved for a decision out of band" }) ")." }
                    } @else {
                        p #reauth {
                            "Approving this (it is " (if a.risk == Risk::Critical { "critical" } else { "reserved for a decision out of band" }) ") needs you to type your password at the identity provider again: "
                            a href={ "/login/oidc?reauth=1&next=/approvals/" (a.id) } { "Log in again" }
                            ", then approve within " (super::REAUTH_WINDOW.as_secs() / 60) " min."
                        }
                    }
                } @else if again {
                    label for="approve-passphrase" { "Overseer passphrase, again (this approval is " (if a.risk == Risk::Critical { "critical" } else { "reserved for a decision out of band" }) ")" }
                    input #approve-passphrase type="password" name="passphrase" autocomplete="current-password" required;
                    p.muted { "Wrong answers count towards the lock the CLI shares." }
                }
                p { button.approve type="submit" { "Approve exactly this action" } }
            }
            form.card #reject method="post" action={ "/approvals/" (a.id) "/reject" } {
                (csrf_field(console, person))
                @if let Some(m) = reject_error { p.error { (m) } }
                label for="reject-reason" { "Why you reject (optional, recorded)" }
                textarea #reject-reason name="reason" { (draft.reject_reason) }
                p { button.reject type="submit" { "Reject" } }
            }
        }
    }
}

/// The whole page, with `status`.
pub fn render(
    console: &Console,
    person: &Person,
    a: &Approval,
    draft: &Draft,
    status: StatusCode,
) -> Response {
    let now = OffsetDateTime::now_utc();
    let action = serde_json::to_string_pretty(&a.action).unwrap_or_else(|_| a.action.to_string());
    let diffs = a.kind == Kind::Remediation || a.preview.as_deref().is_some_and(diff::has_diff);
    // A refusal shows at the top, where the reloaded page opens, and again by its form (when
    // the forms are still there) with what was typed.
    let general_error = draft.error.as_ref().map(|(_, m)| m.as_str());
    let by_form =
        draft.error.as_ref().is_some_and(|(w, _)| w.is_some()) && a.state == State::Pending;
    let body = html! {
        p { a href="/approvals" { "All approvals" } }
        h1.summary { (a.summary) }
        @if draft.decided && a.state != State::Pending {
            p.notice role="status" {
                "Decision recorded: " (a.state.as_str())
                @if let Some(d) = &a.decision { " by " (d.by) " at " (when(&d.at)) }
                ". A tool call waiting for it sees it within a second."
            }
        }
        @if let Some(m) = general_error {
            p.error role="alert" { (m) @if by_form { " " a href="#decide" { "To the form" } } }
        }
        section.card {
            dl.facts {
                dt { "State" } dd { (state_badge(a.state)) }
                dt { "Risk" } dd { (risk_badge(a.risk)) }
                dt { "Kind" } dd { (a.kind.as_str()) }
                dt { "Subject" } dd { @if a.subject_id.is_empty() { span.muted { "none" } } @else { code { (a.subject_id) } } }
                dt { "Requested by" } dd { code { (a.requested_by) } }
                dt { "Created" } dd { (when(&a.created_at)) " (" (age(&a.created_at, now)) ")" }
                dt { "Expires" } dd { (when(&a.expires_at))
                    @if a.state == State::Pending { " (" (expiry(&a.expires_at, now)) ")" } }
                dt { "Who may decide" } dd { code { (a.decide_with.as_str()) } ": " (who_may_decide(a)) }
                dt { "Approval id" } dd { code { (a.id) } }
            }
        }
        @if let Some(d) = &a.decision {
            section.card #decision {
                h2 { "Decision" }
                dl.facts {
                    dt { "Outcome" } dd { (state_badge(a.state)) }
                    dt { "By" } dd { code { (d.by) } }
                    dt { "Via" } dd { (d.via.as_str()) }
                    dt { "When" } dd { (when(&d.at)) }
                    dt { "Reason" } dd { @match &d.reason { Some(r) => { (r) }, None => { span.muted { "none given" } } } }
                    @if let Some(cause) = &d.cause { dt { "Cause" } dd { (cause) } }
                    @if let Some(x) = &a.executed_at { dt { "Executed" } dd { (when(x)) } }
                }
            }
        }
        h2 #action { "The exact action" }
        p.muted { "The approval covers this and nothing else: SHA-256 of its canonical JSON " code.hash { (a.action_hash) } }
        pre.action { (action) }
        h2 #preview { "Preview" }
        @match &a.preview {
            None => { p.muted { "The requester gave no preview." } }
            Some(p) if diffs => { div.diffs { (diff::render(p)) } }
            Some(p) => { pre.preview { (p) } }
        }
        // Decided after reading what it does: the forms come last.
        @if a.state == State::Pending {
            @match super::refusal(person, a) {
                Some(why) => {
                    h2 #decide { "Decide" }
                    p.error #cannot-decide role="alert" { (why) }
                }
                None => { (forms(console, person, a, draft)) }
            }
        }
    };
    let mut r = html_response(page(
        console,
        Some(person),
        "/approvals",
        &format!("Approval {}", a.id),
        body,
    ));
    *r.status_mut() = status;
    r
}
