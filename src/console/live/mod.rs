//! The status section: the dashboard at `/`, a page per pipeline run and per assessment, and
//! the server-sent event stream at `/events` that keeps the dashboard live.
//!
//! The dashboard is one element per section (`data-live="NAME"`) holding a fragment rendered
//! here; the page carries every fragment on load (it works without JavaScript), and the
//! stream (`stream.rs`) sends a section's fragment again whenever it changes, which the one
//! script puts in place. One file per section: `coordinators.rs`, `agents.rs`, `queue.rs`,
//! `pipelines.rs` (with the run page), `instances.rs`, `assessments.rs` (with the assessment page),
//! `remediations.rs`. Everything shown goes through the same redacted views the tools return;
//! free-form values (stage outputs, agent metadata) are masked again with the audit log's
//! redaction before they are shown.

mod agents;
mod assessments;
mod coordinators;
mod instances;
mod pipelines;
mod queue;
mod remediations;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};

use super::Console;
use super::layout::{html_response, page};
use super::session::Person;
use crate::agent::AgentService;
use crate::agent::token::TokenKeys;
use crate::assessment::AssessmentService;
use crate::pipeline::PipelineService;
use crate::remediation::RemediationService;
use crate::secret::SecretStore;
use crate::store::Store;
use crate::task::TaskService;

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/", get(dashboard))
        .route("/events", get(stream::events))
        .route("/pipelines/runs/{id}", get(pipelines::run_page))
        .route("/assessments/{id}", get(assessments::page_of))
}

/// A live section: one of the dashboard's, or a pipeline run's page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Section {
    /// The coordinator processes on this database and their health.
    Coordinators,
    /// Registered agents: health, load, capabilities.
    Agents,
    /// The task queue: counts, oldest queued, dead letters, throughput, recent tasks.
    Queue,
    /// Recent pipeline runs.
    Pipelines,
    /// Child MCP instances.
    Instances,
    /// Recent assessments and their findings.
    Assessments,
    /// Recent remediations, their diffs and results.
    Remediations,
    /// One pipeline run's state and stages (`run-ID`; its page is live too).
    Run(String),
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Coordinators,
        Section::Agents,
        Section::Queue,
        Section::Pipelines,
        Section::Instances,
        Section::Assessments,
        Section::Remediations,
    ];

    /// The name in `data-live` and in the event stream.
    pub fn name(&self) -> String {
        let fixed = match self {
            Section::Coordinators => "coordinators",
            Section::Agents => "agents",
            Section::Queue => "queue",
            Section::Pipelines => "pipelines",
            Section::Instances => "instances",
            Section::Assessments => "assessments",
            Section::Remediations => "remediations",
            Section::Run(id) => return format!("run-{id}"),
        };
        fixed.to_string()
    }

    fn title(&self) -> &'static str {
        match self {
            Section::Coordinators => "Coordinators",
            Section::Agents => "Agents",
            Section::Queue => "Queue",
            Section::Pipelines => "Pipeline runs",
            Section::Instances => "Child instances",
            Section::Assessments => "Assessments",
            Section::Remediations => "Remediations",
            Section::Run(_) => "Pipeline run",
        }
    }

    pub fn parse(name: &str) -> Option<Section> {
        if let Some(id) = name.strip_prefix("run-") {
            let plausible = !id.is_empty()
                && id.len() <= 100
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            return plausible.then(|| Section::Run(id.to_string()));
        }
        Section::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The domain services the sections read through, on the console's database.
pub(super) struct Views {
    store: Store,
    tasks: TaskService,
    pipelines: PipelineService,
    assessments: AssessmentService,
    remediations: RemediationService,
}

impl Views {
    pub(super) fn new(console: &Console) -> Arc<Self> {
        let audit = console.audit().clone();
        let settings = console.settings();
        let config = &settings.config;
        // The console never issues or checks agent tokens; a throwaway key keeps it from
        // creating the data directory's key file, which is the coordinators' to create.
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        let agents = AgentService::new(
            audit.clone(),
            config.agents.clone(),
            Arc::new(TokenKeys::from_secret(&key)),
        );
        let tasks = TaskService::new(agents, config.tasks.clone());
        let pipelines = PipelineService::new(
            tasks.clone(),
            console.approvals().clone(),
            config.pipelines.clone(),
        );
        let assessments = AssessmentService::new(audit.clone(), config.assessments.clone());
        let remediations = RemediationService::new(
            audit.clone(),
            console.approvals().clone(),
            assessments.clone(),
            SecretStore::new(audit.clone(), settings.data_dir.clone()),
            &settings.data_dir,
            settings.exec_argv(),
        );
        Arc::new(Views {
            store: audit.store().clone(),
            tasks,
            pipelines,
            assessments,
            remediations,
        })
    }

    /// A section's fragment as it is now (a failed read is said in the fragment).
    pub(super) fn render(&self, section: &Section) -> Markup {
        let rendered = match section {
            Section::Coordinators => coordinators::fragment(&self.store),
            Section::Agents => agents::fragment(self.tasks.agents()),
            Section::Queue => queue::fragment(&self.tasks),
            Section::Pipelines => pipelines::fragment(&self.pipelines),
            Section::Instances => instances::fragment(&self.store),
            Section::Assessments => assessments::fragment(&self.assessments),
            Section::Remediations => remediations::fragment(&self.remediations),
            Section::Run(id) => pipelines::run_fragment(&self.pipelines, id),
        };
        rendered.unwrap_or_else(|e| html! { p.error role="alert" { "Could not read: " (e) } })
    }
}

/// `GET /`: every section, rendered now.
async fn dashboard(State(console): State<Console>, person: Person) -> Response {
    let fragments = console
        .blocking(|c| {
            let views = Views::new(c);
            Section::ALL.map(|s| {
                let fragment = views.render(&s);
                (s, fragment)
            })
        })
        .await;
    let fragments = match fragments {
        Ok(f) => f,
        Err(r) => return r,
    };
    let body = html! {
        h1 { "Status" }
        p.muted { "What the coordinators on this database are doing. The sections update by themselves while the page is open." }
        @for (section, fragment) in fragments {
            section.card aria-labelledby=(format!("h-{}", section.name())) {
                h2 id=(format!("h-{}", section.name())) { (section.title()) }
                div data-live=(section.name()) { (fragment) }
            }
        }
    };
    html_response(page(&console, Some(&person), "/", "Status", body))
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// A free-form JSON value as a page shows it: masked as the audit log masks, pretty, and cut.
pub(super) fn shown_json(value: &serde_json::Value, max: usize) -> String {
    let masked = crate::audit::redact::redact(value);
    truncate(
        &serde_json::to_string_pretty(&masked).unwrap_or_default(),
        max,
    )
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(super) fn when(ts: &str) -> String {
    let t = ts.replacen('T', " ", 1);
    let t = t.trim_end_matches('Z');
    t.split('.').next().unwrap_or(t).to_string() + " UTC"
}

/// A duration in seconds, coarse enough not to change every second (so a fragment that shows
/// it is not sent again each tick).
pub(super) fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        "under a minute".into()
    } else if s < 3600.0 {
        format!("{} min", (s / 60.0) as u64)
    } else if s < 48.0 * 3600.0 {
        format!("{} h", (s / 3600.0) as u64)
    } else {
        format!("{} d", (s / 86400.0) as u64)
    }
}

/// A status as a coloured badge (`state-NAME` in the stylesheet).
pub(super) fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge state-{status}")) { (status) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_none() {
        for s in Section::ALL {
            assert_eq!(Section::parse(&s.name()), Some(s));
        }
        assert_eq!(Section::parse("audit"), None);
        assert_eq!(
            Section::parse("run-run_01ab"),
            Some(Section::Run("run_01ab".into()))
        );
        assert_eq!(Section::parse("run-").map(|s| s.name()), None);
        assert_eq!(Section::parse("run-a\"b"), None);
    }

    #[test]
    fn ages_are_coarse_and_texts_are_cut() {
        assert_eq!(age(3.0), "under a minute");
        assert_eq!(age(59.9), "under a minute");
        assert_eq!(age(125.0), "2 min");
        assert_eq!(age(7300.0), "2 h");
        assert_eq!(age(3.0 * 86400.0), "3 d");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(when("2026-12-06T20:31:05.123Z"), "2026-12-06 20:31:05 UTC");
    }

    #[test]
    fn json_is_masked_before_it_is_shown() {
        let v = serde_json::json!({"api_token": "abc123456789", "note": "ok"});
        let shown = shown_json(&v, 1000);
        assert!(!shown.contains("abc123456789"), "{shown}");
        assert!(shown.contains("ok"));
    }
}
