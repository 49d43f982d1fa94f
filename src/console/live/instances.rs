//! The child instances section: each instance's status, health, restarts, and what its owning
//! coordinator last wrote of it (resident memory, CPU, the stderr tail with secret values
//! masked, the tools it offers and hides), with the tool reviews its type waits for.

use maud::{Markup, html};

use super::{badge, truncate, when};
use crate::instance::snapshot::{self, Observed, Snapshot};
use crate::store::Store;

/// Instances shown (live ones first).
const SHOWN: u32 = 12;
/// Stderr lines shown per instance.
const TAIL: usize = 8;

/// The fragment.
pub(super) fn fragment(store: &Store) -> Result<Markup, String> {
    let list = snapshot::observed(store, SHOWN).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Ok(html! { p.muted { "No child instances." } });
    }
    Ok(html! {
        @for i in &list { (instance(i)) }
    })
}

fn instance(i: &Observed) -> Markup {
    let r = &i.row;
    let snap = i.snapshot.as_ref();
    html! {
        div.card.instance id=(format!("instance-{}", r.id)) {
            h3 { (r.name) " " (badge(i.status().as_str())) " " span.muted { (r.type_name) } }
            dl.facts {
                dt { "Health" } dd { (r.health) }
                dt { "Restarts" } dd { (r.restarts) }
                @if let Some(p) = r.pid { dt { "Pid" } dd { (p) } }
                @if let Some(s) = snap { (resources(s)) }
                dt { "Owner" } dd { code { (r.owner) } }
                @if let Some(t) = &r.started_at { dt { "Started" } dd { (when(t)) } }
                @if let Some(t) = &r.stopped_at { dt { "Ended" } dd { (when(t)) } }
            }
            @if let Some(e) = &r.last_error { p.error { (truncate(e, 600)) } }
            @if let Some(s) = snap { (tools(s)) }
            @if !i.reviews.is_empty() {
                h4 { "Tool definitions waiting for review" }
                ul {
                    @for rv in &i.reviews {
                        li {
                            code { (rv.tool) }
                            @if rv.changed { " (changed definition)" } @else { " (held back on first sight)" }
                            @if !rv.flags.is_empty() { " · flags: " (rv.flags.join(", ")) }
                            " · "
                            @match &rv.approval_id {
                                Some(a) => { a href=(format!("/approvals/{a}")) { "review it" } },
                                None => { span.muted { "not asked for yet (instance_tool_review)" } },
                            }
                        }
                    }
                }
            }
            @match snap {
                Some(s) if !s.stderr_tail.is_empty() => {
                    h4 { "Stderr (last lines, secret values masked)" }
                    pre.tail { (tail(s)) }
                },
                Some(_) => {},
                None => { p.muted { "No figures from its coordinator yet." } },
            }
        }
    }
}

fn resources(s: &Snapshot) -> Markup {
    html! {
        @if let Some(rss) = s.rss_bytes { dt { "Memory (RSS)" } dd { (format!("{:.1} MiB", rss as f64 / 1_048_576.0)) } }
        @if let Some(cpu) = s.cpu_seconds { dt { "CPU time" } dd { (format!("{cpu:.2} s")) } }
        @if let Some(n) = s.processes { dt { "Processes" } dd { (n) } }
        dt { "Figures as of" } dd { (when(&s.taken_at)) }
    }
}

fn tools(s: &Snapshot) -> Markup {
    html! {
        @if !s.tools.is_empty() {
            p {
                "Tools: "
                @for t in &s.tools {
                    code { (t.name) }
                    @if t.access == "approval" { " (asks a person)" }
                    " "
                }
            }
        }
        @if !s.hidden.is_empty() {
            p {
                "Hidden: "
                @for h in &s.hidden { code { (h.tool) } " (" (h.reason) ") " }
            }
        }
    }
}

fn tail(s: &Snapshot) -> String {
    let skip = s.stderr_tail.len().saturating_sub(TAIL);
    s.stderr_tail[skip..]
        .iter()
        .map(|l| truncate(l, 300))
        .collect::<Vec<_>>()
        .join("\n")
}
