//! The status section: the dashboard at `/` and the server-sent event stream at `/events` that
//! keeps it live (agents, queue, pipeline runs, instances, assessments, remediations).

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::Console;
use super::layout::{html_response, page};
use super::session::Person;

/// The section's routes.
pub fn routes() -> Router<Console> {
    Router::new().route("/", get(dashboard))
}

/// `GET /`.
async fn dashboard(State(console): State<Console>, person: Person) -> Response {
    let body = html! {
        h1 { "Status" }
        p { "Logged in as overseer " strong { (person.name) } "." }
    };
    html_response(page(&console, Some(&person), "/", "Status", body))
}
