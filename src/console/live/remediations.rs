//! The remediations section: recent proposals with their risk, the unified diff of each file
//! (secret values already masked by the remediation service), and what execution did.

use maud::{Markup, html};

use super::{badge, truncate, when};
use crate::console::diff;
use crate::remediation::{FilePlan, Proposal, RemediationService};

/// Proposals shown.
const RECENT: u32 = 5;
/// Diff lines shown per file.
const DIFF_LINES: usize = 60;

/// The fragment.
pub(super) fn fragment(remediations: &RemediationService) -> Result<Markup, String> {
    let list = remediations.list(None, RECENT).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Ok(html! { p.muted { "No remediations proposed." } });
    }
    Ok(html! { @for p in &list { (proposal(p)) } })
}

fn proposal(p: &Proposal) -> Markup {
    html! {
        div.card id=(format!("remediation-{}", p.id)) {
            h3 { (truncate(&p.summary, 200)) " " (badge(p.status.as_str())) }
            p.muted {
                code { (p.id) } " · risk "
                span class=(format!("badge risk-{}", p.risk.as_str())) { (p.risk.as_str()) }
                " · " (when(&p.created_at)) " · by " (p.proposed_by)
                @if let Some(a) = &p.approval_id { " · " a href=(format!("/approvals/{a}")) { "its approval" } }
            }
            @if !p.risk_notes.is_empty() {
                ul { @for n in &p.risk_notes { li { (truncate(n, 300)) } } }
            }
            @for f in &p.files { (file(f)) }
            @if !p.results.is_empty() {
                h4 { "Results" }
                ul {
                    @for r in &p.results {
                        li class=(if r.ok { "notice" } else { "error" }) {
                            (if r.ok { "ok" } else { "failed" }) ": " (r.action) " on " code { (r.server) } " in " code { (r.file) }
                            " — " (truncate(&r.message, 300))
                        }
                    }
                }
            }
            @if let Some(t) = &p.executed_at { p { "Executed " (when(t)) } }
            @if let Some(t) = &p.rolled_back_at { p { "Rolled back " (when(t)) } }
            @if let Some(e) = &p.error { p.error { (truncate(e, 500)) } }
        }
    }
}

fn file(f: &FilePlan) -> Markup {
    // The approval page's parser, so a removed line that starts with `--` is not taken for a
    // file header; every line of one file's diff, cut after the first DIFF_LINES.
    let lines: Vec<(diff::LineKind, String)> = diff::parse(&f.diff)
        .into_iter()
        .flat_map(|block| match block {
            diff::Block::File { lines, .. } => lines,
            diff::Block::Text(t) => t
                .lines()
                .map(|l| (diff::LineKind::Context, l.to_string()))
                .collect(),
        })
        .collect();
    let shown = &lines[..lines.len().min(DIFF_LINES)];
    html! {
        h4 { code { (f.path) } @if !f.existed { " (new file)" } }
        pre.diff {
            @for (kind, l) in shown { span class=(kind.class()) { (l) } }
        }
        @if lines.len() > DIFF_LINES { p.muted { (lines.len() - DIFF_LINES) " more diff lines (the approval page shows them all)" } }
    }
}
