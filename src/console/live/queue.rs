//! The queue section: tasks by status and by priority, the oldest queued task's age, dead
//! letters, what finished in the last minute, and the most recently changed tasks.

use maud::{Markup, html};

use super::{age, badge, truncate, when};
use crate::task::TaskService;

/// Statuses in the order a person reads them (a task's way through the queue).
const STATUSES: [&str; 7] = [
    "queued",
    "leased",
    "running",
    "completed",
    "failed",
    "dead",
    "cancelled",
];
const PRIORITIES: [&str; 4] = ["urgent", "high", "normal", "low"];
/// Recent tasks shown.
const RECENT: u32 = 8;

/// The fragment.
pub(super) fn fragment(tasks: &TaskService) -> Result<Markup, String> {
    let stats = tasks.stats().map_err(|e| e.to_string())?;
    let (recent, _) = tasks
        .list(None, None, None, None, RECENT, None)
        .map_err(|e| e.to_string())?;
    let count =
        |m: &std::collections::BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
    let finished: i64 = stats.finished_last_minute.values().sum();
    Ok(html! {
        div.grid {
            div {
                h3 { "By status" }
                table.counts {
                    tbody {
                        @for s in STATUSES {
                            tr { th scope="row" { (s) } td data-count=(s) { (count(&stats.by_status, s)) } }
                        }
                    }
                }
            }
            div {
                h3 { "Queued by priority" }
                table.counts {
                    tbody {
                        @for p in PRIORITIES {
                            tr { th scope="row" { (p) } td { (count(&stats.queued_by_priority, p)) } }
                        }
                    }
                }
            }
            div {
                h3 { "Flow" }
                dl.facts {
                    dt { "Oldest queued" }
                    dd { @match stats.oldest_queued_age_seconds { Some(s) => { "waiting " (age(s)) }, None => { span.muted { "nothing queued" } } } }
                    dt { "Dead letters" }
                    dd { (stats.dead_letters) }
                    dt { "Finished in the last minute" }
                    dd {
                        (finished)
                        @for (status, n) in &stats.finished_last_minute { " · " (status) " " (n) }
                    }
                    dt { "Completed per second (last minute)" }
                    dd { (format!("{:.2}", stats.completed_per_second_last_minute)) }
                }
            }
        }
        h3 { "Recently changed tasks" }
        @if recent.is_empty() {
            p.muted { "No tasks yet." }
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Task" } th scope="col" { "Kind" } th scope="col" { "Status" }
                        th scope="col" { "Priority" } th scope="col" { "Attempts" } th scope="col" { "Agent" } th scope="col" { "Updated" }
                    } }
                    tbody {
                        @for t in &recent {
                            tr {
                                td { code { (t.id) } }
                                td { (truncate(&t.kind, 60)) }
                                td { (badge(t.status.as_str())) }
                                td { (t.priority.as_str()) }
                                td { (t.attempts) " / " (t.max_retries + 1) }
                                td { @if let Some(a) = &t.agent_id { code { (truncate(a, 40)) } } }
                                td { (when(&t.updated_at)) }
                            }
                        }
                    }
                }
            }
        }
    })
}
