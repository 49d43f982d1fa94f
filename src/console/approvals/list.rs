//! `GET /approvals` (pending first, newest first, then the latest decided) and
//! `GET /approvals/history` (every approval, filtered by state, kind, risk, requester and time,
//! paged on the store's `created_at|id` cursor). The filters are a plain GET form.

use crate::auth::Permission;
use std::str::FromStr;

use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{age, approval_path, expiry, risk_badge, state_badge};
use crate::approval::{Approval, ApprovalPage, Kind, Risk, SearchFilter, State};
use crate::audit::chain::normalize_ts;
use crate::console::Console;
use crate::console::layout::{error_page, html_response, page};
use crate::console::session::Person;

/// Pending approvals shown at most on the overview (the history pages through the rest).
const PENDING_SHOWN: u32 = 200;
/// Decided approvals shown on the overview.
const RECENT_SHOWN: usize = 20;
/// Rows per history page.
const HISTORY_PAGE: u32 = 50;

const STATES: [State; 5] = [
    State::Pending,
    State::Approved,
    State::Rejected,
    State::Expired,
    State::Cancelled,
];
const KINDS: [Kind; 4] = [
    Kind::Remediation,
    Kind::InstanceToolCall,
    Kind::PipelineStage,
    Kind::Generic,
];
const RISKS: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

/// A table of approvals.
fn table(approvals: &[Approval], now: OffsetDateTime, caption: &str) -> Markup {
    html! {
        div.table-wrap {
            table.approvals {
                caption.muted { (caption) }
                thead { tr {
                    th scope="col" { "Risk" } th scope="col" { "Kind" } th scope="col" { "Summary" }
                    th scope="col" { "Requester" } th scope="col" { "Age" } th scope="col" { "Expiry" }
                    th scope="col" { "State" }
                } }
                tbody {
                    @for a in approvals {
                        tr data-approval=(a.id) {
                            td { (risk_badge(a.risk)) }
                            td { (a.kind.as_str()) }
                            td { a href=(approval_path(&a.id)) { (a.summary) } }
                            td { code { (a.requested_by) } }
                            td title=(a.created_at) { (age(&a.created_at, now)) }
                            td title=(a.expires_at) {
                                @if a.state == State::Pending { (expiry(&a.expires_at, now)) } @else { span.muted { "—" } }
                            }
                            td { (state_badge(a.state)) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /approvals`.
pub async fn overview(AxState(console): AxState<Console>, person: Person) -> Response {
    if let Err(r) = crate::console::guard::require(&console, &person, Permission::View) {
        return r;
    }
    let read = console
        .blocking(|c| {
            let pending = c.approvals().search(&SearchFilter {
                state: Some(State::Pending),
                limit: PENDING_SHOWN,
                ..SearchFilter::default()
            })?;
            // The newest approvals of any state, of which the decided ones are shown.
            let latest = c.approvals().search(&SearchFilter {
                limit: PENDING_SHOWN + RECENT_SHOWN as u32,
                ..SearchFilter::default()
            })?;
            Ok::<_, crate::approval::ApprovalError>((pending, latest))
        })
        .await;
    let (pending, latest) = match read {
        Ok(Ok(pages)) => pages,
        Ok(Err(e)) => {
            return error_page(
                &console,
                Some(&person),
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the approvals: {e}"),
            );
        }
        Err(r) => return r,
    };
    let recent: Vec<Approval> = latest
        .approvals
        .into_iter()
        .filter(|a| a.state != State::Pending)
        .take(RECENT_SHOWN)
        .collect();
    let now = OffsetDateTime::now_utc();
    let body = html! {
        h1 { "Approvals" }
        p { a href="/approvals/history" { "History: every approval, with filters" } }
        h2 #pending { "Pending (" (pending.approvals.len()) ")" }
        @if pending.approvals.is_empty() {
            p.muted.empty { "Nothing is waiting for a decision." }
        } @else {
            (table(&pending.approvals, now, "Waiting for a decision, newest first"))
            @if pending.next_cursor.is_some() {
                p { a href="/approvals/history?state=pending" { "More pending approvals in the history" } }
            }
        }
        h2 #recent { "Recently decided" }
        @if recent.is_empty() {
            p.muted { "No decisions yet." }
        } @else {
            (table(&recent, now, "The latest decided approvals, newest first"))
        }
    };
    html_response(page(
        &console,
        Some(&person),
        "/approvals",
        "Approvals",
        body,
    ))
}

/// The history's query, as the form sends it (empty fields mean "any").
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct HistoryQuery {
    state: String,
    kind: String,
    risk: String,
    requester: String,
    after: String,
    before: String,
    cursor: String,
}

impl HistoryQuery {
    /// The query string of these filters (without the cursor).
    fn filters(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                [
                    ("state", &self.state),
                    ("kind", &self.kind),
                    ("risk", &self.risk),
                    ("requester", &self.requester),
                    ("after", &self.after),
                    ("before", &self.before),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty()),
            )
            .finish()
    }
}

/// A time from the form: RFC 3339, or what a `datetime-local` control sends
/// (`2026-12-06T20:15`, read as UTC). Returns the stored form.
fn parse_time(field: &'static str, value: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    [v.to_string(), format!("{v}Z"), format!("{v}:00Z")]
        .iter()
        .find_map(|c| normalize_ts(c))
        .map(Some)
        .ok_or_else(|| {
            format!("{field}: expected a time like 2026-12-06T20:15 (UTC) or RFC 3339, got {v:?}")
        })
}

fn parse_enum<T: FromStr<Err = String>>(field: &str, value: &str) -> Result<Option<T>, String> {
    match value.trim() {
        "" => Ok(None),
        v => T::from_str(v)
            .map(Some)
            .map_err(|e| format!("{field}: {e}")),
    }
}

/// The store's filter for a query, or what is wrong with it (naming the field).
fn filter_of(q: &HistoryQuery) -> Result<SearchFilter, String> {
    let requester = q.requester.trim();
    if requester.chars().count() > 200 {
        return Err("requester: at most 200 characters".into());
    }
    Ok(SearchFilter {
        state: parse_enum("state", &q.state)?,
        kind: parse_enum("kind", &q.kind)?,
        risk: parse_enum("risk", &q.risk)?,
        requester: (!requester.is_empty()).then(|| requester.to_string()),
        created_after: parse_time("created after", &q.after)?,
        created_before: parse_time("created before", &q.before)?,
        limit: HISTORY_PAGE,
        cursor: (!q.cursor.is_empty()).then(|| q.cursor.clone()),
    })
}

/// A `<select>` of a closed set, with "any" first and `chosen` selected.
fn select(id: &str, name: &str, label: &str, options: &[&str], chosen: &str) -> Markup {
    html! {
        div {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                option value="" selected[chosen.is_empty()] { "any" }
                @for o in options {
                    option value=(o) selected[*o == chosen] { (o) }
                }
            }
        }
    }
}

fn filter_form(q: &HistoryQuery) -> Markup {
    let states: Vec<&str> = STATES.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = KINDS.iter().map(|s| s.as_str()).collect();
    let risks: Vec<&str> = RISKS.iter().map(|s| s.as_str()).collect();
    html! {
        form.filters.card #history-filters method="get" action="/approvals/history" role="search" {
            (select("f-state", "state", "State", &states, &q.state))
            (select("f-kind", "kind", "Kind", &kinds, &q.kind))
            (select("f-risk", "risk", "Risk", &risks, &q.risk))
            div {
                label for="f-requester" { "Requester contains" }
                input #f-requester type="search" name="requester" value=(q.requester) maxlength="200";
            }
            div {
                label for="f-after" { "Created after (UTC)" }
                input #f-after type="datetime-local" name="after" value=(q.after);
            }
            div {
                label for="f-before" { "Created before (UTC)" }
                input #f-before type="datetime-local" name="before" value=(q.before);
            }
            div { button type="submit" { "Filter" } " " a href="/approvals/history" { "Clear" } }
        }
    }
}

/// `GET /approvals/history`.
pub async fn history(
    AxState(console): AxState<Console>,
    person: Person,
    Query(q): Query<HistoryQuery>,
) -> Response {
    if let Err(r) = crate::console::guard::require(&console, &person, Permission::View) {
        return r;
    }
    let filter = match filter_of(&q) {
        Ok(f) => f,
        Err(message) => return history_page(&console, &person, &q, Err(message)),
    };
    let read = console
        .blocking(move |c| c.approvals().search(&filter))
        .await;
    match read {
        Ok(Ok(found)) => history_page(&console, &person, &q, Ok(found)),
        // A cursor that is not one of ours names its field; nothing else is the query's fault.
        Ok(Err(crate::approval::ApprovalError::Invalid { field, message })) => {
            history_page(&console, &person, &q, Err(format!("{field}: {message}")))
        }
        Ok(Err(e)) => error_page(
            &console,
            Some(&person),
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the approvals: {e}"),
        ),
        Err(r) => r,
    }
}

fn history_page(
    console: &Console,
    person: &Person,
    q: &HistoryQuery,
    found: Result<ApprovalPage, String>,
) -> Response {
    let now = OffsetDateTime::now_utc();
    let filters = q.filters();
    let bad = found.is_err();
    let body = html! {
        h1 { "Approval history" }
        p { a href="/approvals" { "Back to pending approvals" } }
        (filter_form(q))
        @match &found {
            Err(message) => { p.error role="alert" { (message) } }
            Ok(found) => {
                @if found.approvals.is_empty() {
                    p.muted.empty { "No approval matches these filters." }
                } @else {
                    (table(&found.approvals, now, "Matching approvals, newest first"))
                }
                nav.pager aria-label="Pages" {
                    @if !q.cursor.is_empty() {
                        a href={ "/approvals/history?" (filters) } { "Newest" }
                        " "
                    }
                    @if let Some(next) = &found.next_cursor {
                        @let sep = if filters.is_empty() { "" } else { "&" };
                        a rel="next" href={ "/approvals/history?" (filters) (sep) "cursor=" (url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()) } { "Older" }
                    }
                }
            }
        }
    };
    let mut r = html_response(page(
        console,
        Some(person),
        "/approvals",
        "Approval history",
        body,
    ));
    if bad {
        *r.status_mut() = StatusCode::BAD_REQUEST;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_filters_name_the_field_that_is_wrong() {
        let q = |f: fn(&mut HistoryQuery)| {
            let mut q = HistoryQuery::default();
            f(&mut q);
            filter_of(&q)
        };
        let Ok(f) = q(|q| {
            q.state = "pending".into();
            q.after = "2026-12-06T20:15".into();
            q.before = "2026-12-07T00:00:00Z".into();
        }) else {
            panic!("a good query is accepted");
        };
        assert_eq!(f.state, Some(State::Pending));
        assert_eq!(
            f.created_after.as_deref(),
            Some("2026-12-06T20:15:00.000000Z")
        );
        assert_eq!(
            f.created_before.as_deref(),
            Some("2026-12-07T00:00:00.000000Z")
        );
        let err = |f| q(f).err().unwrap_or_default();
        assert!(err(|q| q.risk = "huge".into()).starts_with("risk: unknown risk"));
        assert!(err(|q| q.after = "yesterday".into()).starts_with("created after:"));
    }
}
