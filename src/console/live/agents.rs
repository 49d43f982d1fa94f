//! The agents section: each registered agent's health (from its heartbeat's age), status,
//! load and capabilities.

use maud::{Markup, html};

use super::{age, badge, truncate, when};
use crate::agent::AgentService;

/// The fragment.
pub(super) fn fragment(agents: &AgentService) -> Result<Markup, String> {
    let mut list = agents.list(None, None, None).map_err(|e| e.to_string())?;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    if list.is_empty() {
        return Ok(html! { p.muted { "No agents registered." } });
    }
    Ok(html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "Health" } th scope="col" { "Status" }
                    th scope="col" { "Load" } th scope="col" { "Capabilities" } th scope="col" { "Last heartbeat" }
                } }
                tbody {
                    @for a in &list {
                        tr {
                            td { strong { (a.name) } br; span.muted { (a.agent_type.as_str()) } }
                            td { (badge(a.health.as_str())) }
                            td { (a.status.as_str()) }
                            td { (format!("{:.0} %", a.load * 100.0)) }
                            td {
                                @if a.capabilities.is_empty() { span.muted { "none" } }
                                @for c in &a.capabilities { code { (truncate(c, 60)) } " " }
                            }
                            td {
                                (when(&a.last_heartbeat)) br;
                                span.muted { (age(a.heartbeat_age_ms as f64 / 1000.0)) " ago" }
                            }
                        }
                    }
                }
            }
        }
    })
}
