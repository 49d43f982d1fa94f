//! Logging in and out: the overseer's passphrase (the one `approvals approve` asks for at the
//! CLI) opens a session; in team mode the page also offers the identity provider (`oidc/`).
//! The passphrase stays offered while an overseer is set: it is the local way in, for the
//! person at the machine, as before. Attempts are limited per address here, and wrong answers count
//! towards the overseer's lock in the database, which the CLI shares.

use std::net::{IpAddr, SocketAddr};

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::Console;
use super::guard::{self, refuse};
use super::layout::{error_page, html_response, page};
use super::session::{Login, Person};
use crate::audit::{Action, Actor, ActorKind, NewEvent, Outcome};
use crate::overseer::{OverseerError, Purpose};

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    csrf: String,
    passphrase: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// Only a path of this console is a place to go back to after logging in: `/` then printable
/// ASCII, never `//` or a backslash (browsers read both as another host) and never a space or
/// control character (browsers drop tabs and newlines, so `/\t/evil` would become `//evil`).
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// The address a login attempt is counted against: the peer, or behind a proxy (where every
/// peer is the proxy) the address the proxy appended last to `X-Forwarded-For`, the one hop
/// a client cannot forge.
pub(crate) fn client_ip(console: &Console, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if !console.settings().config.console.behind_proxy {
        return peer.ip();
    }
    forwarded_for(headers).unwrap_or(peer.ip())
}

/// The address a proxy in front appended last to `X-Forwarded-For`, if there is one (MCP
/// over HTTP counts failed bearer checks against it too).
pub fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|last| last.trim().parse().ok())
}

/// `GET /login`.
pub async fn form(State(console): State<Console>, Query(q): Query<NextQuery>) -> Response {
    login_page(&console, q.next.as_deref(), None, StatusCode::OK).await
}

async fn login_page(
    console: &Console,
    next: Option<&str>,
    message: Option<&str>,
    status: StatusCode,
) -> Response {
    let overseer = console
        .blocking(|c| c.overseers().current())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let token = console.sessions().issue_login_form();
    let next = safe_next(next);
    let provider = console.team().map(|t| t.display_name());
    let body = html! {
        h1 { "Log in to the oversight console" }
        @if let Some(message) = message {
            p.error role="alert" { (message) }
        }
        @if let Some(provider) = &provider {
            // A link, not a form: the CSP's `form-action 'self'` would stop a form whose
            // answer redirects to the provider.
            div.card #provider-login {
                p { "People of the team log in through the identity provider; deciding approvals needs the role " code { "human_oversight" } "." }
                p { a.button #provider-link href={ "/login/oidc?next=" (url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()) } { "Log in with " (provider) } }
            }
        }
        @match &overseer {
            None if provider.is_some() => {}
            Some(o) => {
                p { "The overseer " strong { (o.name) } " decides approvals here with the same passphrase the CLI asks for." }
                form.card method="post" action="/login" {
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="next" value=(next);
                    label for="passphrase" { "Passphrase of overseer " (o.name) }
                    input #passphrase type="password" name="passphrase" autocomplete="current-password" required autofocus;
                    p { button type="submit" { "Log in" } }
                }
            }
            None => {
                p.error role="alert" {
                    "No overseer is set for this database, so nobody can log in: the console decides approvals, \
    and only a person with the overseer's passphrase may. Set one at a terminal:"
                }
                pre { "mcp-coordinator overseer init" }
            }
        }
    };
    let mut r = html_response(page(console, None, "", "Log in", body));
    *r.status_mut() = status;
    r
}

/// `POST /login`.
pub async fn submit(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(r) = console.sessions().take_login_form(&form.csrf) {
        return refuse(StatusCode::FORBIDDEN, r.message());
    }
    let next = form.next.as_deref();
    if console.login_limited(client_ip(&console, peer, &headers)) {
        return login_page(
            &console,
            next,
            Some("Too many login attempts from this address; wait a minute and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        )
        .await;
    }
    // The passphrase is for local use: in team mode, people elsewhere log in through the
    // identity provider (human_oversight and four eyes apply there; not to the passphrase).
    if console.team().is_some() && !client_ip(&console, peer, &headers).is_loopback() {
        return login_page(
            &console,
            next,
            Some(
                "In team mode the overseer's passphrase is accepted from this machine only; log in \
                 with the identity provider.",
            ),
            StatusCode::FORBIDDEN,
        )
        .await;
    }
    let remote = peer.to_string();
    let passphrase = form.passphrase;
    let visitor = Actor::new(ActorKind::User, format!("console visitor from {remote}"));
    let verified = console
        .blocking(move |c| c.overseers().verify(&passphrase, Purpose::Login, &visitor))
        .await;
    let overseer = match verified {
        Ok(Ok(o)) => o,
        Ok(Err(e @ (OverseerError::Wrong { .. } | OverseerError::Locked { .. }))) => {
            let status = match e {
                OverseerError::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::UNAUTHORIZED,
            };
            return login_page(&console, next, Some(&e.to_string()), status).await;
        }
        Ok(Err(e @ OverseerError::NotSet)) => {
            return login_page(&console, next, Some(&e.to_string()), StatusCode::FORBIDDEN).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "console: login check failed");
            return error_page(
                &console,
                None,
                StatusCode::INTERNAL_SERVER_ERROR,
                &e.to_string(),
            );
        }
        Err(r) => return r,
    };
    let url = console.url();
    let (name, event_remote) = (overseer.name.clone(), remote.clone());
    let recorded = console
        .blocking(move |c| {
            c.audit().record(NewEvent {
                actor: Actor::overseer_at_console(&name, &url, &event_remote),
                action: Action::ConsoleLogin,
                subject: format!("overseer:{name}"),
                outcome: Outcome::Ok,
                detail: json!({"console": url, "remote": event_remote}),
                critical: false,
            })
        })
        .await;
    if let Ok(Err(e)) = recorded {
        // Logging in is not refused for an audit write that failed; it is said.
        tracing::warn!(error = %e, "console: cannot record the login in the audit log");
    }
    let token = console.sessions().create(
        &overseer.name,
        Login::Passphrase {
            credential: overseer.credential,
        },
        &remote,
    );
    let mut r = Redirect::to(&safe_next(next)).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&guard::session_set_cookie(
        console.cookie_name(),
        &token,
        console.secure_cookies(),
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`.
pub async fn logout(
    State(console): State<Console>,
    person: Person,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(r) = guard::take_form(&console, &person, &form.csrf) {
        return r;
    }
    console.sessions().end(&person);
    let mut r = Redirect::to("/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&guard::session_clear_cookie(
        console.cookie_name(),
        console.secure_cookies(),
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_a_path_of_this_console_is_a_place_to_go_back_to() {
        assert_eq!(
            safe_next(Some("/approvals/apr_1?x=1")),
            "/approvals/apr_1?x=1"
        );
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil",
            "https://evil.example",
            "evil",
            "/caf\u{e9}",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
