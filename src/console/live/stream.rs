//! `GET /events?sections=a,b`: server-sent events that keep the dashboard live. Each event is
//! named after a section and carries its fragment's HTML: every asked section at once, then a
//! section again whenever its fragment changed (never an unchanged one). Fragments are
//! rendered again when the database changed (any process's commit) and at least every few
//! seconds (ages and health move with the clock). The stream ends when the session does.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::super::guard::refuse;
use super::super::session::Person;
use super::super::{Console, Credential};
use super::{Section, Views};

/// How often the stream looks for changes (and at the session).
const TICK: Duration = Duration::from_secs(1);
/// Fragments are rendered again at least this often even when the database did not change.
const RERENDER: Duration = Duration::from_secs(5);
/// A comment line this often keeps proxies and the browser from dropping a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    /// Comma-separated section names; every section when absent.
    sections: Option<String>,
}

/// The sections a query names, or the names it got wrong.
fn parse_sections(asked: Option<&str>) -> Result<Vec<Section>, Vec<String>> {
    let Some(asked) = asked else {
        return Ok(Section::ALL.to_vec());
    };
    let mut sections = Vec::new();
    let mut unknown = Vec::new();
    for name in asked.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Section::parse(name) {
            Some(s) if !sections.contains(&s) => sections.push(s),
            Some(_) => {}
            None => unknown.push(name.to_string()),
        }
    }
    if unknown.is_empty() {
        Ok(sections)
    } else {
        Err(unknown)
    }
}

/// `GET /events`.
pub(super) async fn events(
    State(console): State<Console>,
    person: Person,
    Query(query): Query<EventsQuery>,
) -> Response {
    let sections = match parse_sections(query.sections.as_deref()) {
        Ok(s) => s,
        Err(unknown) => {
            let mut known: Vec<String> = Section::ALL.iter().map(Section::name).collect();
            known.push("run-ID".into());
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "sections: unknown section(s) {}; expected a comma-separated list of: {}",
                    unknown
                        .iter()
                        .map(|u| format!("`{u}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    known.join(", ")
                ),
            );
        }
    };
    let views = match console.blocking(Views::new).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let watch = Watch {
        console,
        person,
        views,
        sections: Arc::new(sections),
        sent: HashMap::new(),
        queue: VecDeque::new(),
        seen_version: None,
        rendered_at: None,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<_, Infallible>(event), w))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// One stream's state: what it sent last per section, and events not sent yet.
struct Watch {
    console: Console,
    person: Person,
    views: Arc<Views>,
    sections: Arc<Vec<Section>>,
    sent: HashMap<Section, String>,
    queue: VecDeque<Event>,
    seen_version: Option<u64>,
    rendered_at: Option<Instant>,
}

impl Watch {
    /// The next event, waiting for a change as long as it takes; `None` once the session ended
    /// (which ends the stream).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.rendered_at.is_some() {
                tokio::time::sleep(TICK).await;
            }
            if !self.console.sessions().is_live(&self.person) {
                return None;
            }
            // A passphrase changed or reset since this login ends the stream as it ends the
            // session (read at most every 2 s; a busy database is not a change).
            if let Some(credential) = self.person.credential()
                && self.console.credential(credential).await == Credential::Changed
            {
                self.console.sessions().end(&self.person);
                return None;
            }
            self.look().await;
        }
    }

    /// Renders the sections again if the database changed or it has been a while, and queues
    /// an event for each fragment that differs from what was sent.
    async fn look(&mut self) {
        // The version read opens and locks a connection: off the async workers.
        let views = self.views.clone();
        let version = self
            .console
            .blocking(move |_| views.store.data_version().ok())
            .await
            .ok()
            .flatten();
        let due = match self.rendered_at {
            None => true,
            Some(at) => {
                at.elapsed() >= RERENDER || version.is_none() || version != self.seen_version
            }
        };
        if !due {
            return;
        }
        let (views, sections) = (self.views.clone(), self.sections.clone());
        let rendered = self
            .console
            .blocking(move |_| {
                sections
                    .iter()
                    .map(|s| (s.clone(), views.render(s).into_string()))
                    .collect::<Vec<_>>()
            })
            .await;
        self.rendered_at = Some(Instant::now());
        self.seen_version = version;
        let Ok(rendered) = rendered else { return };
        for (section, html) in rendered {
            if self.sent.get(&section) == Some(&html) {
                continue;
            }
            self.queue
                .push_back(Event::default().event(section.name()).data(html.as_str()));
            self.sent.insert(section, html);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_parsed_and_unknown_ones_named() {
        assert_eq!(parse_sections(None), Ok(Section::ALL.to_vec()));
        assert_eq!(
            parse_sections(Some("queue, agents,queue")),
            Ok(vec![Section::Queue, Section::Agents])
        );
        assert_eq!(
            parse_sections(Some("queue,audit,nope,run-x")),
            Err(vec!["audit".to_string(), "nope".to_string()])
        );
    }
}
