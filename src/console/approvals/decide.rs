//! `POST /approvals/{id}/approve` and `/reject`: a decision with a reason, recorded through
//! the approval service as a console decision by the logged-in person. Approving a
//! `critical` one, or one the policy reserves for an out-of-band decision, needs the
//! overseer's passphrase again (wrong answers count towards the lock the CLI shares), or for
//! a person logged in through the identity provider a password typed there moments ago.
//! A person from the provider decides only with `human_oversight`, and never what they
//! requested (four eyes). Every refusal shows the page again with what the person typed.

use axum::Form;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::detail::{self, Draft, Which};
use crate::approval::{Approval, ApprovalError, Channel, State, Verdict};
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
                "passphrase: the overseer's passphrase is locked after too many wrong answers; approving what needs the passphrase is refused until {until} (in {seconds} s). Nothing was decided."
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
    if let Some(why) = super::refusal(&person, &approval) {
        return error_page(
            &console,
            Some(&person),
            StatusCode::FORBIDDEN,
            &format!("{why} Nothing was decided."),
        );
    }
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
    let reason = match check_form(&console, &person, &approval, &form, which) {
        Ok(reason) => reason,
        Err((message, status)) => return refuse(message, status),
    };
    let url = console.url();
    let (by, who) = match person.principal() {
        None => (
            Actor::overseer_at_console(&person.name, &url, &person.remote),
            json!({"session_credential": person.credential()}),
        ),
        Some(p) => (
            Actor::person_at_console(&p.describe(), &url, &person.remote),
            json!({"subject": p.subject, "name": p.name, "roles": p.role_names(), "via": "oidc"}),
        ),
    };
    if which == Which::Approve && super::needs_passphrase(&approval) {
        if person.principal().is_some() {
            // The provider's equivalent of the passphrase again: a password typed at the
            // provider moments ago.
            if !super::reauthenticated(&person) {
                return refuse(
                    format!(
                        "approving this needs you to log in again at the identity provider (within {} min before approving): use \"Log in again\" above. Nothing was decided.",
                        super::REAUTH_WINDOW.as_secs() / 60
                    ),
                    StatusCode::FORBIDDEN,
                );
            }
        } else {
            match ask_again(&console, &person, &form.passphrase, &by).await {
                Ok(()) => {}
                Err(Refused::Page(r)) => return r,
                Err(Refused::Again(message, status)) => return refuse(message, status),
            }
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
        context: {
            let mut context = json!({"console": url, "remote": person.remote});
            if let (Some(c), serde_json::Value::Object(who)) = (context.as_object_mut(), who) {
                c.extend(who);
            }
            context
        },
    };
    let decided = console
        .blocking(move |c| c.approvals().decide(&id, verdict))
        .await;
    recorded(&console, &person, &approval, &form, which, decided).await
}

/// Why a decision form was refused: a whole page, or the approval's page again with a message.
enum Refused {
    Page(Response),
    Again(String, StatusCode),
}

/// The token (first: a forged or replayed form decides nothing, and the page comes back with a
/// fresh form and the text as typed, so a stale page costs a click, not the words), the state,
/// and the reason. Returns the trimmed reason.
fn check_form(
    console: &Console,
    person: &Person,
    approval: &Approval,
    form: &DecisionForm,
    which: Which,
) -> Result<String, (String, StatusCode)> {
    if let Err(r) = console.sessions().take_form(person, &form.csrf) {
        return Err((
            format!("{} Nothing was decided.", r.message()),
            StatusCode::FORBIDDEN,
        ));
    }
    if approval.state != State::Pending {
        let d = approval.decision.as_ref();
        return Err((
            format!(
                "approval {} is already {}{}; decisions are final and nothing was changed.",
                approval.id,
                approval.state.as_str(),
                d.map(|d| format!(" (by {} via {})", d.by, d.via.as_str()))
                    .unwrap_or_default()
            ),
            StatusCode::CONFLICT,
        ));
    }
    let reason = form.reason.trim().to_string();
    if which == Which::Approve && reason.is_empty() {
        return Err((
            "reason: required; say in a few words why you approve (it is recorded with the decision)".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err((
            format!("reason: at most {MAX_REASON_CHARS} characters"),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    Ok(reason)
}

/// The overseer's passphrase again, for the credential this session logged in with.
async fn ask_again(
    console: &Console,
    person: &Person,
    passphrase: &str,
    by: &Actor,
) -> Result<(), Refused> {
    if passphrase.is_empty() {
        return Err(Refused::Again(
            "passphrase: required; approving this asks for the overseer's passphrase again".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    }
    let (passphrase, actor) = (passphrase.to_string(), by.clone());
    let verified = console
        .blocking(move |c| c.overseers().verify(&passphrase, Purpose::Approve, &actor))
        .await;
    match verified {
        Ok(Ok(o)) if Some(o.credential) == person.credential() => Ok(()),
        Ok(Ok(_)) => Err(Refused::Again(
            "passphrase: the overseer's passphrase changed since you logged in; log in again. Nothing was decided.".into(),
            StatusCode::FORBIDDEN,
        )),
        Ok(Err(e)) => {
            let (status, message) = passphrase_refusal(&e);
            Err(Refused::Again(message, status))
        }
        Err(r) => Err(Refused::Page(r)),
    }
}

/// The answer once the service has recorded (or refused) the decision.
async fn recorded(
    console: &Console,
    person: &Person,
    approval: &Approval,
    form: &DecisionForm,
    which: Which,
    decided: Result<Result<Approval, ApprovalError>, Response>,
) -> Response {
    match decided {
        Ok(Ok(a)) => {
            let mut r =
                Redirect::to(&format!("{}?decided=1", super::approval_path(&a.id))).into_response();
            *r.status_mut() = StatusCode::SEE_OTHER;
            r
        }
        Ok(Err(e @ (ApprovalError::AlreadyDecided { .. } | ApprovalError::Expired { .. }))) => {
            // Someone decided (or it expired) between the page and the form: show it as it is now.
            let fresh = detail::load(console, person, approval.id.clone()).await;
            let shown = fresh.as_ref().unwrap_or(approval);
            again(
                console,
                person,
                shown,
                which,
                &form.reason,
                format!("{e}; nothing was changed."),
                StatusCode::CONFLICT,
            )
        }
        Ok(Err(e @ ApprovalError::NotFound(_))) => {
            error_page(console, Some(person), StatusCode::NOT_FOUND, &e.to_string())
        }
        Ok(Err(e)) => again(
            console,
            person,
            approval,
            which,
            &form.reason,
            format!("the decision was not recorded: {e}"),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        Err(r) => r,
    }
}
