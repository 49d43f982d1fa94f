//! The pipeline runs section (the most recent runs) and the page of one run at
//! `/pipelines/runs/{id}`: its DAG, each stage with its state, timings, output (masked and
//! cut) and what it waits for.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::super::Console;
use super::super::layout::{error_page, html_response, page};
use super::super::session::Person;
use super::{Views, badge, shown_json, truncate, when};
use crate::pipeline::{PipelineError, PipelineService, Run, StageRun};

/// Runs shown on the dashboard.
const RECENT: u32 = 8;
/// Characters of a stage's output shown.
const OUTPUT_CHARS: usize = 2_000;

/// The fragment.
pub(super) fn fragment(pipelines: &PipelineService) -> Result<Markup, String> {
    let (runs, _) = pipelines
        .list_runs(None, None, RECENT, None)
        .map_err(|e| e.to_string())?;
    if runs.is_empty() {
        return Ok(html! { p.muted { "No pipeline runs yet." } });
    }
    Ok(html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "Run" } th scope="col" { "Pipeline" } th scope="col" { "Status" }
                    th scope="col" { "Stages" } th scope="col" { "Now" } th scope="col" { "Started" }
                } }
                tbody {
                    @for r in &runs {
                        tr {
                            td { a href=(format!("/pipelines/runs/{}", r.id)) { code { (r.id) } } }
                            td { (r.pipeline_name) " " span.muted { "v" (r.version) } }
                            td { (badge(r.status.as_str())) }
                            td { (r.stages_done) " / " (r.stages_total) " done" }
                            td {
                                @if r.current_stages.is_empty() { span.muted { "—" } }
                                @else { (r.current_stages.join(", ")) }
                                @if !r.awaiting_approvals.is_empty() {
                                    br; span.badge.state-pending { "waits for a person" }
                                }
                            }
                            td { (when(&r.created_at)) }
                        }
                    }
                }
            }
        }
    })
}

/// `GET /pipelines/runs/{id}`.
pub(super) async fn run_page(
    State(console): State<Console>,
    person: Person,
    Path(id): Path<String>,
) -> Response {
    let found = console
        .blocking(move |c| Views::new(c).pipelines.get_run(&id))
        .await;
    let run = match found {
        Ok(Ok(run)) => run,
        Ok(Err(e @ PipelineError::NotFound { .. })) => {
            return error_page(
                &console,
                Some(&person),
                StatusCode::NOT_FOUND,
                &e.to_string(),
            );
        }
        Ok(Err(e)) => {
            return error_page(
                &console,
                Some(&person),
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            );
        }
        Err(r) => return r,
    };
    let title = format!("Run {}", run.id);
    html_response(page(&console, Some(&person), "/", &title, run_body(&run)))
}

fn run_body(run: &Run) -> Markup {
    html! {
        p { a href="/" { "← Status" } }
        h1 { "Run of " (run.pipeline_name) " " span.muted { "v" (run.version) } }
        div data-live=(format!("run-{}", run.id)) { (run_state(run)) }
        h2 { "Input" }
        pre { (shown_json(&run.input, OUTPUT_CHARS)) }
    }
}

/// The live part of a run's page (its `run-ID` section).
pub(super) fn run_fragment(pipelines: &PipelineService, id: &str) -> Result<Markup, String> {
    let run = pipelines.get_run(id).map_err(|e| e.to_string())?;
    Ok(run_state(&run))
}

/// A run's state and its stages, by depth in the DAG.
fn run_state(run: &Run) -> Markup {
    html! {
        dl.facts {
            dt { "Run" } dd { code { (run.id) } }
            dt { "Status" } dd { (badge(run.status.as_str())) }
            dt { "Started" } dd { (when(&run.created_at)) " by " (run.started_by) }
            @if let Some(f) = &run.finished_at { dt { "Finished" } dd { (when(f)) " (" (format!("{:.1}", run.duration_seconds)) " s)" } }
            dt { "Stages" } dd { (run.stages_done) " of " (run.stages_total) " done" }
            @if let Some(e) = &run.error { dt { "Error" } dd.error { (truncate(e, 500)) } }
            @for a in &run.awaiting_approvals { dt { "Waits for" } dd { a href=(format!("/approvals/{a}")) { "approval " (a) } } }
        }
        h2 { "Stages, by depth in the graph" }
        div.dag {
            @for (depth, stages) in levels(&run.stages).iter().enumerate() {
                div.dag-level aria-label=(format!("depth {depth}")) {
                    @for s in stages { (stage_card(s)) }
                }
            }
        }
    }
}

fn stage_card(s: &StageRun) -> Markup {
    html! {
        div.card.stage id=(format!("stage-{}", s.name)) {
            h3 { (s.name) " " (badge(s.status.as_str())) }
            p.muted {
                (s.stage_type)
                @if s.approval { " · approval" }
                @if !s.required { " · optional" }
            }
            @if !s.depends_on.is_empty() { p { "After: " (s.depends_on.join(", ")) } }
            dl.facts {
                @if let Some(t) = &s.task_id { dt { "Task" } dd { code { (t) } } }
                @if let Some(a) = &s.approval_id { dt { "Approval" } dd { a href=(format!("/approvals/{a}")) { (a) } } }
                @if let Some(a) = &s.agent_id { dt { "Agent" } dd { code { (a) } } }
                @if let Some(n) = s.attempts { dt { "Attempts" } dd { (n) } }
                @if let Some(p) = s.progress { dt { "Progress" } dd { (format!("{:.0} %", p * 100.0)) } }
                @if let Some(m) = &s.message { dt { "Message" } dd { (truncate(m, 300)) } }
                @if let Some(t) = &s.started_at { dt { "Started" } dd { (when(t)) } }
                @if let Some(t) = &s.finished_at { dt { "Finished" } dd { (when(t)) } }
                @if let Some(d) = s.duration_seconds { dt { "Took" } dd { (format!("{d:.1} s")) } }
            }
            @if let Some(e) = &s.error { p.error { (truncate(e, 500)) } }
            @if let Some(o) = &s.output { h4 { "Output" } pre { (shown_json(o, OUTPUT_CHARS)) } }
        }
    }
}

/// The stages grouped by depth: a stage's depth is one more than its deepest dependency's.
fn levels(stages: &[StageRun]) -> Vec<Vec<&StageRun>> {
    let mut depth: HashMap<&str, usize> = HashMap::new();
    // A DAG of n stages settles within n passes; a dependency that is not there counts as 0.
    for _ in 0..stages.len() {
        let mut changed = false;
        for s in stages {
            let d = s
                .depends_on
                .iter()
                .map(|u| depth.get(u.as_str()).map_or(1, |d| d + 1))
                .max()
                .unwrap_or(0);
            if depth.insert(&s.name, d) != Some(d) {
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let deepest = depth.values().copied().max().unwrap_or(0);
    let mut out: Vec<Vec<&StageRun>> = vec![Vec::new(); deepest + 1];
    for s in stages {
        out[depth.get(s.name.as_str()).copied().unwrap_or(0)].push(s);
    }
    out.retain(|l| !l.is_empty());
    out
}
