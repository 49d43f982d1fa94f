//! The assessments section (recent assessments with their most severe findings) and the page
//! of one assessment at `/assessments/{id}` with every finding.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::super::Console;
use super::super::layout::{error_page, html_response, page};
use super::super::session::Person;
use super::{Views, badge, truncate, when};
use crate::assessment::{Assessment, AssessmentError, AssessmentService, Finding};

/// Assessments shown on the dashboard.
const RECENT: u32 = 5;
/// Findings shown per assessment on the dashboard (the page has them all).
const FINDINGS: usize = 5;

/// The fragment.
pub(super) fn fragment(assessments: &AssessmentService) -> Result<Markup, String> {
    let list = assessments.list(None, RECENT).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Ok(html! { p.muted { "No assessments yet." } });
    }
    let mut full = Vec::with_capacity(list.len());
    for a in list {
        // The list leaves findings out; the few shown here are read whole.
        full.push(assessments.get(&a.id).unwrap_or(a));
    }
    Ok(html! {
        @for a in &full {
            div.card {
                h3 {
                    a href=(format!("/assessments/{}", a.id)) { (a.kind.as_str()) " assessment" }
                    " " (badge(a.status.as_str()))
                }
                p.muted { code { (a.id) } " · " (when(&a.created_at)) " · by " (a.requested_by) " · " (a.files.len()) " file(s)" }
                (counts(a))
                @if let Some(e) = &a.error { p.error { (truncate(e, 300)) } }
                @if !a.findings.is_empty() {
                    (findings(&a.findings[..a.findings.len().min(FINDINGS)]))
                    @if a.findings.len() > FINDINGS {
                        p { a href=(format!("/assessments/{}", a.id)) { "All " (a.findings.len()) " findings" } }
                    }
                }
            }
        }
    })
}

fn counts(a: &Assessment) -> Markup {
    html! {
        p {
            @if a.counts.is_empty() { span.muted { "No findings." } }
            @for (severity, n) in &a.counts {
                span class=(format!("badge sev-{severity}")) { (severity) " " (n) } " "
            }
        }
    }
}

fn findings(list: &[Finding]) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "Severity" } th scope="col" { "Finding" } th scope="col" { "Where" } th scope="col" { "Evidence" }
                } }
                tbody {
                    @for f in list {
                        tr {
                            td { span class=(format!("badge sev-{}", f.severity.as_str())) { (f.severity.as_str()) } }
                            td { (truncate(&f.message, 300)) br; span.muted { (f.rule) } }
                            td { code { (f.file) } @if let Some(s) = &f.server { br; "server " code { (s) } } }
                            td { code { (truncate(&f.evidence, 200)) } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /assessments/{id}`.
pub(super) async fn page_of(
    State(console): State<Console>,
    person: Person,
    Path(id): Path<String>,
) -> Response {
    let found = console
        .blocking(move |c| Views::new(c).assessments.get(&id))
        .await;
    let a = match found {
        Ok(Ok(a)) => a,
        Ok(Err(e @ AssessmentError::NotFound(_))) => {
            return error_page(
                &console,
                Some(&person),
                StatusCode::NOT_FOUND,
                &e.to_string(),
            );
        }
        Ok(Err(e)) => {
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            return error_page(&console, Some(&person), status, &e.to_string());
        }
        Err(r) => return r,
    };
    let body = html! {
        p { a href="/" { "← Status" } }
        h1 { (a.kind.as_str()) " assessment " (badge(a.status.as_str())) }
        p.muted { code { (a.id) } " · " (when(&a.created_at)) " · by " (a.requested_by) }
        (counts(&a))
        h2 { "Files" }
        ul {
            @for f in &a.files {
                li { code { (f.path) } " (" (f.client.as_str()) ", " (f.servers) " server(s))" @if let Some(e) = &f.error { " " span.error { (e) } } }
            }
        }
        h2 { "Findings" }
        @if a.findings.is_empty() { p.muted { "None." } } @else { (findings(&a.findings)) }
    };
    html_response(page(&console, Some(&person), "/", "Assessment", body))
}
