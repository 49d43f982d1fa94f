//! The approvals section: pending first, the detail page with the exact action, the preview
//! and per-file diffs, deciding with a reason, and the history with filters.

use axum::Router;

use super::Console;

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
}
