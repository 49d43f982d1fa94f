//! `/metrics` in the Prometheus text format, and the tool-call figures a serving coordinator
//! records for it.

use axum::Router;

use super::Console;

/// Tool calls and their latency by tool, recorded by a serving coordinator.
#[derive(Debug, Default)]
pub struct ToolCalls {}

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
}
