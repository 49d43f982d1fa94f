//! The audit section: events with filters, keyset paging on the sequence number, verifying
//! the chain, and exporting JSONL.

use axum::Router;

use super::Console;

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new()
}
