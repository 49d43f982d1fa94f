//! `/metrics` in the Prometheus text format, and the tool-call figures a serving coordinator
//! records for it.
//!
//! Every figure but the tool calls is read from the database at each scrape (a few indexed
//! counts), so any console of a database shows the same state whichever process changed it.
//! The tool calls are this process's own, kept in memory since it started: only the console of
//! a serving coordinator has them (`mcp-coordinator console` alone shows none).
//!
//! `/metrics` needs no session by default: a scraper does not log in, the page holds counts
//! only (no names of people, no arguments, no secrets), and the Host check still applies.
//! `[console] metrics_need_login = true` puts it behind the login like every other page.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::Console;
use super::session::Person;
use crate::audit::Outcome;
use crate::store::{self, StoreError};

/// The labels of a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    outcome: String,
}

/// The label of a latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

type LatencyFamily = Family<ToolLabel, Histogram, fn() -> Histogram>;

/// Buckets from 100 µs to about 105 s, doubling: a status call lands in the first ones, a
/// call that waits for a person in the last.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// Tool calls and their latency by tool, recorded by a serving coordinator.
#[derive(Debug, Clone)]
pub struct ToolCalls {
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for ToolCalls {
    fn default() -> Self {
        ToolCalls {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        }
    }
}

impl ToolCalls {
    /// Counts one call of `tool` that ended with `outcome` after `elapsed`. The caller names an
    /// unknown tool `unknown`, so that a client cannot grow the label set without bound.
    pub fn record(&self, tool: &str, outcome: Outcome, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&ToolLabel {
                tool: tool.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new().route("/metrics", get(metrics))
}

/// What a scrape reads from the database.
struct Figures {
    tasks: Vec<(String, i64)>,
    pending: i64,
    oldest_pending: Option<String>,
    decisions: Vec<(Option<String>, String, i64)>,
    instances: Vec<(String, i64, i64)>,
    audit_events: i64,
}

fn read_figures(console: &Console) -> Result<Figures, StoreError> {
    let audit_events = console.audit().event_count()?;
    console.audit().store().read(|tx| {
        let mut tasks: std::collections::BTreeMap<String, i64> = Default::default();
        for (status, _priority, n) in store::task::counts(tx)? {
            *tasks.entry(status.as_str().to_string()).or_default() += n;
        }
        let (pending, oldest_pending) = store::approval::pending_count_and_oldest(tx)?;
        Ok(Figures {
            tasks: tasks.into_iter().collect(),
            pending,
            oldest_pending,
            decisions: store::approval::decision_counts(tx)?,
            instances: store::instance::status_counts(tx)?
                .into_iter()
                .map(|(s, n, r)| (s.as_str().to_string(), n, r))
                .collect(),
            audit_events,
        })
    })
}

/// Seconds from an RFC 3339 time to now (0 when it cannot be read or is in the future).
fn age_seconds(ts: &str) -> f64 {
    let Ok(t) = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
    else {
        return 0.0;
    };
    (time::OffsetDateTime::now_utc() - t)
        .as_seconds_f64()
        .max(0.0)
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The text of one scrape.
fn render(figures: &Figures, tool_calls: Option<&ToolCalls>) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("mcp_coordinator");

    let tasks = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (status, n) in &figures.tasks {
        tasks
            .get_or_create(&vec![("status", status.clone())])
            .set(*n);
    }
    registry.register(
        "tasks",
        "Tasks stored, by status: queued, leased and running are the queue's depth; completed, failed, cancelled and dead are totals of finished tasks still stored (queue_purge removes old ones)",
        tasks,
    );

    gauge(
        &mut registry,
        "approvals_pending",
        "Approvals waiting for a person",
        figures.pending,
    );
    let oldest: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    oldest.set(figures.oldest_pending.as_deref().map_or(0.0, age_seconds));
    registry.register_with_unit(
        "approval_oldest_pending_age",
        "Age of the oldest pending approval (0 when none is pending)",
        Unit::Seconds,
        oldest,
    );
    let decisions = Family::<Vec<(&'static str, String)>, Counter>::default();
    for (via, state, n) in &figures.decisions {
        let channel = via.clone().unwrap_or_else(|| "none".into());
        decisions
            .get_or_create(&vec![("channel", channel), ("state", state.clone())])
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    registry.register(
        "approval_decisions",
        "Decided approvals by channel (elicitation_form, cli, console, expiry; none for a question the person dismissed) and final state",
        decisions,
    );

    let instances = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let restarts = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (status, n, r) in &figures.instances {
        instances
            .get_or_create(&vec![("status", status.clone())])
            .set(*n);
        restarts
            .get_or_create(&vec![("status", status.clone())])
            .set(*r);
    }
    registry.register(
        "instances",
        "Child MCP instances stored, by status",
        instances,
    );
    registry.register(
        "instance_restarts",
        "Restarts of the child MCP instances in each status, summed",
        restarts,
    );

    let audit: Counter = Counter::default();
    audit.inc_by(u64::try_from(figures.audit_events).unwrap_or(0));
    registry.register("audit_events", "Events in the audit chain", audit);

    if let Some(calls) = tool_calls {
        registry.register(
            "tool_calls",
            "Tool calls this coordinator answered since it started, by tool and outcome (ok, error, invalid)",
            calls.calls.clone(),
        );
        registry.register_with_unit(
            "tool_call_duration",
            "Time this coordinator took to answer a tool call, by tool",
            Unit::Seconds,
            calls.latency.clone(),
        );
    }

    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// `GET /metrics`.
async fn metrics(State(console): State<Console>, mut parts: Parts) -> Response {
    if console.settings().config.console.metrics_need_login
        && let Err(refusal) =
            <Person as axum::extract::FromRequestParts<Console>>::from_request_parts(
                &mut parts, &console,
            )
            .await
    {
        return refusal;
    }
    let figures = match console.blocking(read_figures).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "console: cannot read the figures for /metrics");
            return super::guard::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the figures: {e}"),
            );
        }
        Err(r) => return r,
    };
    match render(&figures, console.tool_calls().map(|c| c.as_ref())) {
        Ok(text) => {
            let mut r = text.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
            );
            r
        }
        Err(_) => super::guard::refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the figures",
        ),
    }
}
