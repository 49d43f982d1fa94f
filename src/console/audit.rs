//! The audit section: events with filters, keyset paging on the sequence number, verifying
//! the chain, and exporting JSONL.
//!
//! Paging goes by sequence number both ways (`before=SEQ` for older events, `after=SEQ` for
//! newer ones), so a page deep in a chain of a million events costs what the first page costs:
//! no `OFFSET`. A filter no index serves (a rare actor, say) reads at most one span of the
//! chain per page; a page that read its span without filling says which events it looked at
//! and links on from there. Details are shown as stored, which is already redacted.

use std::io::Write;

use axum::Form;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::Console;
use super::guard;
use super::layout::{csrf_field, error_page, html_response, page};
use super::session::Person;
use crate::audit::{self, AuditEvent, Keyset, Outcome, Scanned, VerifyReport, Window};
use crate::auth::Permission;

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/audit", get(events))
        .route("/audit/verify", post(verify))
        .route("/audit/export", get(export))
}

/// The filters and the page position, as the form and the paging links send them. Every
/// field is text so that an empty form field is "no filter" rather than a refusal.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    before: String,
    #[serde(default)]
    after: String,
}

fn text(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// A position given as a sequence number, or what is wrong with it.
/// The largest sequence number a page link may name (2^53).
const MAX_SEQ: i64 = 1 << 53;

fn seq(field: &str, v: &str) -> Result<Option<i64>, String> {
    match text(v) {
        None => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            // Far beyond any chain, and far from i64::MAX, so paging's `+ 1` cannot overflow.
            .filter(|n| (0..=MAX_SEQ).contains(n))
            .map(Some)
            .ok_or_else(|| {
                format!("{field}: expected a sequence number from 0 to {MAX_SEQ}, got {s:?}")
            }),
    }
}

impl Filters {
    /// The audit log's query for these filters, or what is wrong with a field.
    fn query(&self) -> Result<audit::Query, String> {
        let outcome = match text(&self.outcome).as_deref() {
            None => None,
            Some("ok") => Some(Outcome::Ok),
            Some("error") => Some(Outcome::Error),
            Some("invalid") => Some(Outcome::Invalid),
            Some(other) => {
                return Err(format!(
                    "outcome: expected ok, error or invalid, got {other:?}"
                ));
            }
        };
        let q = audit::Query {
            since: text(&self.since),
            until: text(&self.until),
            actor: text(&self.actor),
            action: text(&self.action),
            subject: text(&self.subject),
            outcome,
            limit: None,
            cursor: None,
        };
        q.validate().map_err(|e| e.to_string())?;
        Ok(q)
    }

    fn keyset(&self) -> Result<Keyset, String> {
        match (seq("before", &self.before)?, seq("after", &self.after)?) {
            (Some(_), Some(_)) => Err("give either before or after, not both".into()),
            (Some(b), None) => Ok(Keyset::Before(b)),
            (None, Some(a)) => Ok(Keyset::After(a)),
            (None, None) => Ok(Keyset::Newest),
        }
    }

    /// The filters as a query string (without the page position), `&`-joined.
    fn query_string(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("since", &self.since),
            ("until", &self.until),
            ("actor", &self.actor),
            ("action", &self.action),
            ("subject", &self.subject),
            ("outcome", &self.outcome),
        ] {
            if let Some(v) = text(v) {
                s.append_pair(k, &v);
            }
        }
        s.finish()
    }

    fn link(&self, path: &str, position: Option<(&str, i64)>) -> String {
        let mut q = self.query_string();
        if let Some((k, v)) = position {
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str(&format!("{k}={v}"));
        }
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{q}")
        }
    }
}

/// `GET /audit`.
async fn events(
    State(console): State<Console>,
    person: Person,
    Query(filters): Query<Filters>,
) -> Response {
    if let Err(r) = guard::require(&console, &person, Permission::AuditRead) {
        return r;
    }
    let (q, at) = match filters.query().and_then(|q| Ok((q, filters.keyset()?))) {
        Ok(v) => v,
        Err(message) => {
            return events_page(
                &console,
                &person,
                &filters,
                Err(message),
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let window = match console.blocking(move |c| c.audit().window(&q, at)).await {
        Ok(w) => w.map_err(|e| e.to_string()),
        Err(r) => return r,
    };
    let status = if window.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    events_page(&console, &person, &filters, window, status)
}

fn events_page(
    console: &Console,
    person: &Person,
    filters: &Filters,
    window: Result<Window, String>,
    status: StatusCode,
) -> Response {
    let body = html! {
        h1 { "Audit log" }
        (filter_form(filters))
        @match &window {
            Err(message) => { p.error role="alert" { (message) } }
            Ok(w) => {
                (pager(filters, w))
                @if let Some(s) = w.scanned {
                    (scanned_notice(filters, s, w.events.is_empty()))
                }
                @if w.events.is_empty() {
                    @if w.scanned.is_none() {
                        p.muted { "No events match." }
                    }
                } @else {
                    div.table-wrap {
                        table {
                            thead { tr {
                                th scope="col" { "Seq" } th scope="col" { "Time (UTC)" }
                                th scope="col" { "Actor" } th scope="col" { "Action" }
                                th scope="col" { "Subject" } th scope="col" { "Outcome" }
                                th scope="col" { "Detail" }
                            } }
                            tbody {
                                @for e in &w.events { (event_row(e)) }
                            }
                        }
                    }
                    (pager(filters, w))
                }
            }
        }
        section.card {
            h2 { "Verify and export" }
            form method="post" action="/audit/verify" {
                (csrf_field(console, person))
                p.muted { "Recomputes every hash of the chain and checks every head signature (a million events take a second or two)." }
                button type="submit" { "Verify the chain" }
            }
            p {
                a href=(filters.link("/audit/export", None)) download { "Export the matching events as JSON Lines" }
                " " span.muted { "(oldest first, the lines " code { "mcp-coordinator audit export" } " writes)" }
            }
        }
    };
    let mut r = html_response(page(console, Some(person), "/audit", "Audit log", body));
    *r.status_mut() = status;
    r
}

fn filter_form(f: &Filters) -> Markup {
    let field = |id: &str, name: &str, label: &str, value: &str, hint: &str| {
        html! {
            div {
                label for=(id) { (label) }
                input type="text" id=(id) name=(name) value=(value) placeholder=(hint);
            }
        }
    };
    html! {
        form.card.filters method="get" action="/audit" aria-label="Filter events" {
            (field("f-since", "since", "From (RFC 3339)", &f.since, "2026-11-21T09:30:00Z"))
            (field("f-until", "until", "Until (RFC 3339)", &f.until, "2026-11-21T18:00:00Z"))
            (field("f-actor", "actor", "Actor", &f.actor, "overseer:* or exact"))
            (field("f-action", "action", "Action", &f.action, "approval.* or exact"))
            (field("f-subject", "subject", "Subject", &f.subject, "exact, or prefix*"))
            div {
                label for="f-outcome" { "Outcome" }
                select id="f-outcome" name="outcome" {
                    @for (value, name) in [("", "any"), ("ok", "ok"), ("error", "error"), ("invalid", "invalid")] {
                        @if f.outcome.trim() == value {
                            option value=(value) selected { (name) }
                        } @else {
                            option value=(value) { (name) }
                        }
                    }
                }
            }
            div { button type="submit" { "Filter" } }
            div { a href="/audit" { "Clear" } }
        }
    }
}

fn pager(f: &Filters, w: &Window) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if let Some(seq) = w.newer {
                a rel="prev" href=(f.link("/audit", Some(("after", seq)))) { "← Newer" }
                " "
                a href=(f.link("/audit", None)) { "Newest" }
            }
            " "
            @if let (Some(first), Some(last)) = (w.events.first(), w.events.last()) {
                span.muted { "events " (last.seq) "–" (first.seq) }
            }
            " "
            @if let Some(seq) = w.older {
                a rel="next" href=(f.link("/audit", Some(("before", seq)))) { "Older →" }
            }
        }
    }
}

/// What a page that read its whole span without filling says, and where it goes on: a filter
/// no index serves reads one span of the chain per page (see `AuditLog::window`).
fn scanned_notice(f: &Filters, s: Scanned, none: bool) -> Markup {
    let (towards, link) = if s.towards_older {
        ("older", f.link("/audit", Some(("before", s.first))))
    } else {
        ("newer", f.link("/audit", Some(("after", s.last))))
    };
    html! {
        p.muted.scanned role="status" {
            (if none { "No matches" } else { "No more matches" })
            " in events " (grouped(s.first)) " to " (grouped(s.last)) "; "
            a.continue href=(link) { "continue with " (towards) " events →" }
        }
    }
}

/// `n` with a comma between each group of three digits, as the notices print event numbers.
fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn event_row(e: &AuditEvent) -> Markup {
    let detail = serde_json::to_string_pretty(&e.detail).unwrap_or_else(|_| e.detail.to_string());
    html! {
        tr id=(format!("event-{}", e.seq)) {
            td { (e.seq) }
            td { time datetime=(e.ts) { (e.ts) } }
            td { (e.actor) }
            td { code { (e.action) } }
            td { (e.subject) }
            td { span class=(format!("badge outcome-{}", e.outcome)) { (e.outcome) } }
            td {
                details {
                    summary { "detail" }
                    pre { (detail) }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct VerifyForm {
    csrf: String,
}

/// `POST /audit/verify`.
async fn verify(
    State(console): State<Console>,
    person: Person,
    Form(form): Form<VerifyForm>,
) -> Response {
    if let Err(r) = guard::require(&console, &person, Permission::AuditRead) {
        return r;
    }
    if let Err(r) = guard::take_form(&console, &person, &form.csrf) {
        return r;
    }
    let report = match console.blocking(|c| c.audit().verify()).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            return error_page(
                &console,
                Some(&person),
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the chain could not be read: {e}"),
            );
        }
        Err(r) => return r,
    };
    html_response(page(
        &console,
        Some(&person),
        "/audit",
        "Audit verification",
        verify_body(&report),
    ))
}

fn verify_body(r: &VerifyReport) -> Markup {
    let s = &r.signatures;
    html! {
        h1 { "Audit verification" }
        @if r.ok {
            p.notice role="status" { "Chain intact: " (r.events_checked) " events checked in " (r.duration_ms) " ms." }
        } @else {
            p.error role="alert" {
                "Chain TAMPERED: first bad event " (r.first_bad_seq.unwrap_or(0)) ": "
                (r.first_bad_reason.as_deref().unwrap_or(""))
            }
            p { (r.events_checked) " events checked; " (r.problem_count) " problems." }
        }
        dl.card {
            dt { "Head" }
            dd { (r.head_seq.map_or("none".to_string(), |s| s.to_string())) }
            dt { "Newest signed event" }
            dd {
                (s.last_signed_seq.map_or("none".to_string(), |s| s.to_string()))
                @if s.unsigned_tail == 0 {
                    " (the head is signed)"
                } @else {
                    " (not signed yet: " (s.unsigned_tail) " newer events; a serving coordinator signs within a second)"
                }
            }
            dt { "Signatures" }
            dd { (s.valid) " of " (s.total) " valid" }
        }
        @if !r.problems.is_empty() {
            h2 { "Problems" }
            div.table-wrap { table {
                thead { tr { th scope="col" { "Event" } th scope="col" { "Kind" } th scope="col" { "What was found" } } }
                tbody {
                    @for p in &r.problems {
                        tr { td { (p.seq) } td { (format!("{:?}", p.kind)) } td { (p.message) } }
                    }
                }
            } }
        }
        @if !r.warnings.is_empty() {
            h2 { "Warnings" }
            ul { @for w in &r.warnings { li { (w) } } }
        }
        h2 { "Signing keys" }
        div.table-wrap { table {
            thead { tr { th scope="col" { "Key" } th scope="col" { "Introduced at" } th scope="col" { "Valid" } th scope="col" { "Invalid" } } }
            tbody {
                @for k in &s.keys {
                    tr {
                        td { code { (k.public_key) } @if k.this_coordinator { " (this console's data directory)" } }
                        td { (k.introduced_seq.map_or("never".to_string(), |s| s.to_string())) }
                        td { (k.valid) }
                        td { (k.invalid) }
                    }
                }
            }
        } }
        p { a href="/audit" { "Back to the audit log" } }
    }
}

/// `GET /audit/export`: the matching events, oldest first, as JSON Lines, streamed as they are
/// read (a blocking thread writes into a bounded pipe the response body reads; a client that
/// goes away stops the export at the next write).
async fn export(
    State(console): State<Console>,
    person: Person,
    Query(filters): Query<Filters>,
) -> Response {
    if let Err(r) = guard::require(&console, &person, Permission::AuditRead) {
        return r;
    }
    let q = match filters.query() {
        Ok(q) => q,
        Err(message) => {
            return error_page(&console, Some(&person), StatusCode::BAD_REQUEST, &message);
        }
    };
    let (reader, writer) = tokio::io::duplex(64 * 1024);
    let bridge = tokio_util::io::SyncIoBridge::new(writer);
    let worker = console.clone();
    // Not `console.blocking`: that waits for the job, and this one runs while the body streams.
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, bridge);
        let written = worker
            .audit()
            .export_jsonl(&q, &mut out)
            .and_then(|n| Ok(out.flush().map(|()| n)?));
        match written {
            Ok(n) => tracing::info!(events = n, "console: audit exported"),
            Err(e) => tracing::warn!(error = %e, "console: audit export stopped"),
        }
    });
    let mut r = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(reader)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl; charset=utf-8"),
    );
    let name = format!(
        "attachment; filename=\"audit-{}.jsonl\"",
        crate::audit::chain::now_ts().replace(':', "")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}
