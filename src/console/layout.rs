//! The frame every console page shares (head, navigation, the logout form), the static files
//! (one stylesheet, one small script of our own), and small pieces pages reuse.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Console;
use super::session::Person;

const STYLE: &str = include_str!("static/console.css");
const SCRIPT: &str = include_str!("static/console.js");

/// The sections of the navigation, by path.
const NAV: &[(&str, &str)] = &[
    ("/", "Status"),
    ("/approvals", "Approvals"),
    ("/audit", "Audit"),
];

/// A whole page: `title`, the navigation (with `current` marked) and a logout form when
/// someone is logged in, and `body`.
pub fn page(
    console: &Console,
    person: Option<&Person>,
    current: &str,
    title: &str,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mcp-coordinator console" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "mcp-coordinator" }
                    @if let Some(person) = person {
                        nav aria-label="Sections" {
                            @for (path, name) in NAV {
                                @if *path == current {
                                    a href=(path) aria-current="page" { (name) }
                                } @else {
                                    a href=(path) { (name) }
                                }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(console.sessions().issue_form(person));
                            span.who {
                                @match person.principal() {
                                    None => { "overseer " strong { (person.name) } }
                                    Some(p) => { strong { (person.name) } " (" (p.role_names()) ")" }
                                }
                            }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page as a response.
pub fn html_response(markup: Markup) -> Response {
    let mut r = markup.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A page saying what went wrong, with the status.
pub fn error_page(
    console: &Console,
    person: Option<&Person>,
    status: StatusCode,
    message: &str,
) -> Response {
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p.error role="alert" { (message) }
        p { a href="/" { "Back to the console" } }
    };
    let mut r = html_response(page(console, person, "", "Error", body));
    *r.status_mut() = status;
    r
}

/// `/static/console.css`.
pub async fn style() -> Response {
    static_file("text/css; charset=utf-8", STYLE)
}

/// `/static/console.js`.
pub async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", SCRIPT)
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    r
}

/// A hidden one-time form token for `person`.
pub fn csrf_field(console: &Console, person: &Person) -> Markup {
    html! { input type="hidden" name="csrf" value=(console.sessions().issue_form(person)); }
}
