//! `POST /approvals/{id}/approve` and `/reject`: a decision with a reason, recorded through
//! the approval service as a console decision by the logged-in overseer. A `critical`
//! approval needs the overseer's passphrase again (wrong answers count towards the lock the
//! CLI shares). Every refusal shows the page again with what the person typed.

use axum::Form;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::detail::{self, Draft, Which};
use crate::approval::{Approval, ApprovalError, Channel, Risk, State, Verdict};
use crate::audit::Actor;
use crate::console::Console;
use crate::console::layout::error_page;
use crate::console::session::Person;
use crate::overseer::{LOCK_SECONDS, OverseerError, Purpose};

/// The longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 2000;

/// A decision form. Missing fields read as empty, so each is refused by name.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct DecisionForm {
    csrf: String,
    reason: String,
    passphrase: String,
}

/// `POST /approvals/{id}/approve`.
pub async fn approve(
    AxState(console): AxState<Console>,
    person: Person,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    decide(console, person, id, form, Which::Approve).await
}

/// `POST /approvals/{id}/reject`.
pub async fn reject(
    AxState(console): AxState<Console>,
    person: Person,
    Path(id): Path<String>,
    Form(form): Form<DecisionForm>,
) -> Response {
    decide(console, person, id, form, Which::Reject).await
}

/// The detail page again, with `message` on the form `which` and what was typed there.
fn again(
    console: &Console,
    person: &Person,
    a: &Approval,
    which: Which,
    reason: &str,
    message: String,
    status: StatusCode,
) -> Response {
    let mut draft = Draft {
        error: Some((Some(which), message)),
        ..Draft::default()
    };
    match which {
        Which::Approve => draft.approve_reason = reason.to_string(),
        Which::Reject => draft.reject_reason = reason.to_string(),
    }
    detail::render(console, person, a, &draft, status)
}

/// Why a wrong or refused passphrase stops the approval, in the console's words.
fn passphrase_refusal(e: &OverseerError) -> (StatusCode, String) {
    match e {
        OverseerError::Wrong { left, .. } => (
            StatusCode::UNAUTHORIZED,
            format!(
                "passphrase: wrong passphrase; nothing was decided. {left} more wrong answer(s) lock the overseer's passphrase, here and at the CLI, for {LOCK_SECONDS} s."
            ),
        ),
        OverseerError::Locked { until, seconds } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "passphrase: the overseer's passphrase is locked after too many wrong answers; approving critical approvals is refused until {until} (in {seconds} s). Nothing was decided."
            ),
        ),
        OverseerError::NotSet => (
            StatusCode::FORBIDDEN,
            "no overseer is set for this database any more; nothing was decided".to_string(),
        ),
        other => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot check the passphrase: {other}"),
        ),
    }
}

async fn decide(
    console: Console,
    person: Person,
    id: String,
    form: DecisionForm,
    which: Which,
) -> Response {
    let approval = match detail::load(&console, &person, id.clone()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reason = form.reason.trim().to_string();
    let refuse = |message: String, status| {
        again(
            &console,
            &person,
            &approval,
            which,
            &form.reason,
            message,
            status,
        )
    };
    // The one-time token first: a forged or replayed form decides nothing (the page comes back
    // with a fresh form and the text as typed, so a stale page costs a click, not the words).
    if let Err(r) = console.sessions().take_form(&person, &form.csrf) {
        return refuse(
            format!("{} Nothing was decided.", r.message()),
            StatusCode::FORBIDDEN,
        );
    }
    if approval.state != State::Pending {
        let d = approval.decision.as_ref();
        return refuse(
            format!(
                "approval {id} is already {}{}; decisions are final and nothing was changed.",
                approval.state.as_str(),
                d.map(|d| format!(" (by {} via {})", d.by, d.via.as_str()))
                    .unwrap_or_default()
            ),
            StatusCode::CONFLICT,
        );
    }
    if which == Which::Approve && reason.is_empty() {
        return refuse(
            "reason: required; say in a few words why you approve (it is recorded with the decision)".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return refuse(
            format!("reason: at most {MAX_REASON_CHARS} characters"),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let url = console.url();
    let by = Actor::overseer_at_console(&person.name, &url, &person.remote);
    if which == Which::Approve && approval.risk == Risk::Critical {
        if form.passphrase.is_empty() {
            return refuse(
                "passphrase: required; a critical approval asks for the overseer's passphrase again".into(),
                StatusCode::UNPROCESSABLE_ENTITY,
            );
        }
        let (passphrase, actor) = (form.passphrase.clone(), by.clone());
        let verified = console
            .blocking(move |c| c.overseers().verify(&passphrase, Purpose::Approve, &actor))
            .await;
        match verified {
            Ok(Ok(o)) if o.credential == person.credential => {}
            Ok(Ok(_)) => {
                return refuse(
                    "passphrase: the overseer's passphrase changed since you logged in; log in again. Nothing was decided.".into(),
                    StatusCode::FORBIDDEN,
                );
            }
            Ok(Err(e)) => {
                let (status, message) = passphrase_refusal(&e);
                return refuse(message, status);
            }
            Err(r) => return r,
        }
    }
    let verdict = Verdict {
        state: match which {
            Which::Approve => State::Approved,
            Which::Reject => State::Rejected,
        },
        by,
        via: Channel::Console,
        reason: (!reason.is_empty()).then_some(reason),
        cause: None,
        context: json!({
            "console": url,
            "remote": person.remote,
            "session_credential": person.credential,
        }),
    };
    let decided = console
        .blocking(move |c| c.approvals().decide(&id, verdict))
        .await;
    match decided {
        Ok(Ok(a)) => {
            let mut r =
                Redirect::to(&format!("{}?decided=1", super::approval_path(&a.id))).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            r
        }
        Ok(Err(e @ (ApprovalError::AlreadyDecided { .. } | ApprovalError::Expired { .. }))) => {
            // Someone decided (or it expired) between the page and the form: show it as it is now.
            let fresh = detail::load(&console, &person, approval.id.clone()).await;
            let shown = fresh.as_ref().unwrap_or(&approval);
            again(
                &console,
                &person,
                shown,
                which,
                &form.reason,
                format!("{e}; nothing was changed."),
                StatusCode::CONFLICT,
            )
        }
        Ok(Err(e @ ApprovalError::NotFound(_))) => error_page(
            &console,
            Some(&person),
            StatusCode::NOT_FOUND,
            &e.to_string(),
        ),
        Ok(Err(e)) => refuse(
            format!("the decision was not recorded: {e}"),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        Err(r) => r,
    }
}
