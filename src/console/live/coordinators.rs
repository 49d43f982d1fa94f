//! The coordinators section: every coordinator process on this database (the fleet), where it
//! runs and is reached, and its health from its heartbeat's age.

use maud::{Markup, html};

use super::{age, badge, when};
use crate::fleet;
use crate::store::Store;

/// The fragment.
pub(super) fn fragment(store: &Store) -> Result<Markup, String> {
    let list = fleet::members(store, None).map_err(|e| e.to_string())?;
    if list.is_empty() {
        return Ok(html! { p.muted { "No coordinator has registered on this database." } });
    }
    Ok(html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "Coordinator" } th scope="col" { "Health" }
                    th scope="col" { "Reached at" } th scope="col" { "Version" }
                    th scope="col" { "Started" } th scope="col" { "Last heartbeat" }
                } }
                tbody {
                    @for m in &list {
                        tr id=(format!("coordinator-{}", m.id)) {
                            td { strong { (m.host) } " " span.muted { "pid " (m.pid) } br; code.muted { (m.id) } }
                            td { (badge(m.health.as_str())) }
                            td {
                                @match &m.url {
                                    Some(url) => { a href=(url) { (url) } },
                                    None => { span.muted { "no listener" } },
                                }
                                @if m.transports.stdio { br; span.muted { "and stdio" } }
                            }
                            td { (m.version) }
                            td { (when(&m.started_at)) }
                            td {
                                @match &m.stopped_at {
                                    Some(t) => { "stopped " (when(t)) },
                                    None => { (age(m.heartbeat_age_seconds)) " ago" },
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}
