//! The approvals section: pending first, the history with filters (`list.rs`), the detail page
//! with the exact action, the preview and per-file diffs (`detail.rs`), and deciding with a
//! reason, the passphrase again for one a person must decide out of band (`decide.rs`).
//!
//! Decisions go through [`ApprovalService::decide`](crate::approval::ApprovalService::decide)
//! as [`Channel::Console`](crate::approval::Channel::Console), so they are recorded, audited and
//! seen by a waiting tool call in any process exactly as a CLI decision is.

mod decide;
mod detail;
mod list;

use axum::Router;
use axum::routing::{get, post};
use maud::{Markup, html};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Console;
use super::oidc;
use super::session::{Login, Person};
use crate::approval::{Approval, Risk, State};

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/approvals", get(list::overview))
        .route("/approvals/history", get(list::history))
        .route("/approvals/{id}", get(detail::show))
        .route("/approvals/{id}/approve", post(decide::approve))
        .route("/approvals/{id}/reject", post(decide::reject))
}

/// The path of an approval's page (ids are `apr_` and hex: nothing to escape).
pub fn approval_path(id: &str) -> String {
    format!("/approvals/{id}")
}

fn risk_badge(risk: Risk) -> Markup {
    html! { span class={ "badge risk-" (risk.as_str()) } { (risk.as_str()) } }
}

fn state_badge(state: State) -> Markup {
    html! { span class={ "badge state-" (state.as_str()) } { (state.as_str()) } }
}

/// Seconds from `from` to `to` (both stored timestamps), if both parse.
fn seconds_between(from: &str, to: OffsetDateTime) -> Option<i64> {
    let from = OffsetDateTime::parse(from, &Rfc3339).ok()?;
    Some((to - from).whole_seconds())
}

/// `s` seconds in the largest unit that keeps it readable: `45 s`, `12 min`, `3 h 5 min`, `2 d`.
fn span(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => format!("{} d", s / 86400),
    }
}

/// How long ago `ts` was, for a person.
fn age(ts: &str, now: OffsetDateTime) -> String {
    match seconds_between(ts, now) {
        Some(s) => format!("{} ago", span(s)),
        None => ts.to_string(),
    }
}

/// When `expires_at` comes, for a person (`in 59 min`, or `passed`).
fn expiry(expires_at: &str, now: OffsetDateTime) -> String {
    match seconds_between(expires_at, now) {
        Some(s) if s < 0 => format!("in {}", span(-s)),
        Some(_) => "passed".to_string(),
        None => expires_at.to_string(),
    }
}

/// A stored timestamp as people read it (`2026-12-06 20:15:03 UTC`).
fn when(ts: &str) -> String {
    match (ts.get(..10), ts.get(11..19)) {
        (Some(day), Some(time)) if ts.len() > 19 => format!("{day} {time} UTC"),
        _ => ts.to_string(),
    }
}

/// Whether approving `a` in the console asks for the overseer's passphrase again: every
/// `critical` approval, and every one the policy reserves for an out-of-band decision. Why the
/// latter too: the session cookie is sent by the browser to any port on the same host, so a
/// local process that gets the person to open a page of its own could replay it; what the
/// policy keeps from the client must then still need what only the person knows.
pub(super) fn needs_passphrase(a: &crate::approval::Approval) -> bool {
    a.risk == Risk::Critical || a.decide_with == crate::approval::DecideWith::OutOfBand
}

/// How long after the provider last asked a person for their password they may approve what
/// needs a fresh proof (the provider's equivalent of the passphrase again).
pub(super) const REAUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Whether a provider session proved itself at the provider within [`REAUTH_WINDOW`] (a
/// passphrase session answers with the passphrase instead).
pub(super) fn reauthenticated(person: &Person) -> bool {
    match &person.login {
        Login::Provider(p) => p
            .authenticated_at
            .is_some_and(|at| at.elapsed() < REAUTH_WINDOW),
        Login::Passphrase { .. } => false,
    }
}

/// Why `person` may not decide `a`, if they may not. The overseer with the passphrase decides
/// as before; a person the identity provider vouched for needs `human_oversight`, and never
/// decides what they asked for themselves (four eyes): the principal in `requested_by`
/// (`... as NAME (sub SUBJECT, via SOURCE)`) with their subject, or their name, is them.
pub(super) fn refusal(person: &Person, a: &Approval) -> Option<String> {
    let p = person.principal()?;
    if !oidc::may_decide(p) {
        return Some(format!(
            "deciding approvals needs the role human_oversight; {} has {}. You can look at approvals, not decide them.",
            p.name,
            p.role_names()
        ));
    }
    let same_principal = a.requested_by.contains(&format!(" as {}", p.describe()));
    // The same subject under another name (a provider that names people differently in
    // access and ID tokens), and the same name under another subject.
    let same_subject =
        a.requested_by
            .contains(&format!(" (sub {}, via {})", p.subject, p.source.as_str()));
    let same_name = a.requested_by.contains(&format!(" as {} (sub ", p.name));
    if same_principal || same_subject || same_name {
        return Some(format!(
            "four eyes: {} requested this approval ({}), so someone else with human_oversight must decide it.",
            p.name, a.requested_by
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_expiries_read_in_words() {
        let now = OffsetDateTime::parse("2026-12-06T20:00:00Z", &Rfc3339)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        assert_eq!(age("2026-12-06T19:59:15.000000Z", now), "45 s ago");
        assert_eq!(age("2026-12-06T17:55:00.000000Z", now), "2 h 5 min ago");
        assert_eq!(expiry("2026-12-06T21:00:00.000000Z", now), "in 1 h");
        assert_eq!(expiry("2026-12-06T19:00:00.000000Z", now), "passed");
        assert_eq!(
            when("2026-12-06T19:00:00.000000Z"),
            "2026-12-06 19:00:00 UTC"
        );
    }
}

#[cfg(test)]
mod team_tests {
    use super::*;
    use crate::auth::{Principal, Role, Source};
    use crate::console::session::{ProviderLogin, Sessions};

    fn person(sessions: &Sessions, name: &str, roles: &[Role]) -> Person {
        let login = Login::Provider(ProviderLogin {
            principal: Principal {
                subject: format!("{name}-sub"),
                name: name.into(),
                roles: roles.to_vec(),
                source: Source::Provider {
                    issuer: "https://sso.example.com".into(),
                },
            },
            authenticated_at: None,
        });
        let token = sessions.create(name, login, "127.0.0.1:1");
        sessions
            .get(&token)
            .unwrap_or_else(|| panic!("the session is live"))
    }

    fn approval(requested_by: &str) -> Approval {
        serde_json::from_value(serde_json::json!({
            "id": "apr_1", "kind": "generic", "subject_id": "", "summary": "s",
            "action": {}, "action_hash": "00", "risk": "high", "requested_by": requested_by,
            "created_at": "2026-12-06T20:00:00.000000Z", "expires_at": "2026-12-06T21:00:00.000000Z",
            "decide_with": "elicitation", "state": "pending",
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_human_oversight_decides_and_never_its_own_request() {
        let sessions = Sessions::new(std::time::Duration::from_secs(60));
        let by_ian = approval("client:c/1 as ian (sub ian-sub, via oidc)");
        let carol = person(&sessions, "carol", &[Role::Compliance]);
        let admin = person(&sessions, "ada", &[Role::Admin]);
        let alice = person(&sessions, "alice", &[Role::HumanOversight]);
        let ian = person(&sessions, "ian", &[Role::Installer, Role::HumanOversight]);
        assert!(refusal(&carol, &by_ian).is_some_and(|m| m.contains("needs the role human_oversight; carol has compliance")));
        assert!(
            refusal(&admin, &by_ian).is_some(),
            "admin alone does not decide"
        );
        assert_eq!(refusal(&alice, &by_ian), None);
        assert!(refusal(&ian, &by_ian).is_some_and(|m| m.starts_with("four eyes: ian requested")));
        // The same name through a local token is the same person here too.
        let by_local_ian = approval("client:c/1 as ian (sub tok_1, via local_token)");
        assert!(refusal(&ian, &by_local_ian).is_some());
        // The same subject named otherwise (a provider whose access tokens carry no
        // preferred_username, so the request named the client id) is the same person.
        let by_ian_unnamed = approval("client:c/1 as claude-code (sub ian-sub, via oidc)");
        assert!(
            refusal(&ian, &by_ian_unnamed).is_some_and(|m| m.starts_with("four eyes")),
            "the requester's subject under another name"
        );
        assert_eq!(refusal(&alice, &by_ian_unnamed), None);
        assert!(!reauthenticated(&alice));
        let token = sessions.create("o", Login::Passphrase { credential: 1 }, "127.0.0.1:1");
        let overseer = sessions.get(&token).unwrap_or_else(|| panic!("live"));
        assert_eq!(
            refusal(&overseer, &by_ian),
            None,
            "the passphrase decides as before"
        );
        sessions.end_other_credentials(2);
        assert!(
            sessions.is_live(&alice),
            "a provider session does not hang on the passphrase"
        );
        assert!(!sessions.is_live(&overseer));
    }
}
