//! `GET /login/oidc` starts a login at the identity provider (authorization code with PKCE
//! S256, a `state` and a `nonce` kept here and bound to the browser by a short-lived cookie);
//! `GET /login/callback` is where the provider sends the browser back: the `state` must be one
//! this browser started and not used yet, the code is exchanged, the tokens checked, and a
//! console session opens for the person they name.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;

use super::{LoginError, Pending, binding_hash, pkce_challenge, random_value};
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::auth::Permission;
use crate::console::Console;
use crate::console::guard::{self, session_cookie};
use crate::console::layout::{error_page, html_response, page};
use crate::console::login::{client_ip, safe_next};
use crate::console::session::{Login, ProviderLogin};

/// The path the provider sends the browser back to.
pub const CALLBACK_PATH: &str = "/login/callback";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StartQuery {
    next: Option<String>,
    /// Ask the provider for the password again (`prompt=login`), for an approval that needs a
    /// fresh proof.
    reauth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The cookie that binds a login in flight to the browser that started it.
fn binding_cookie(console: &Console) -> String {
    format!(
        "mcpc_oidc_{}",
        console.cookie_name().rsplit('_').next().unwrap_or("0")
    )
}

/// `SameSite=Lax`, not `Strict`: the provider's redirect back is a cross-site navigation, on
/// which browsers send only `Lax` cookies. It is sent to the callback only, and lives as long
/// as a login may take.
fn set_binding(console: &Console, value: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{}={value}; Path={CALLBACK_PATH}; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        binding_cookie(console),
        if console.secure_cookies() {
            "; Secure"
        } else {
            ""
        }
    ))
    .ok()
}

fn no_provider(console: &Console) -> Response {
    error_page(
        console,
        None,
        StatusCode::NOT_FOUND,
        "this console logs people in with the overseer's passphrase only: no identity provider is configured ([auth] issuer and [auth] console_client_id)",
    )
}

/// `GET /login/oidc`.
pub async fn start(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> Response {
    let Some(team) = console.team() else {
        return no_provider(&console);
    };
    if console.login_limited(client_ip(&console, peer, &headers)) {
        return error_page(
            &console,
            None,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many login attempts from this address; wait a minute and try again.",
        );
    }
    let discovery = match team.discovery().await {
        Ok(d) => d,
        Err(e) => return error_page(&console, None, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let Ok(mut url) = url::Url::parse(&discovery.authorization_endpoint) else {
        return error_page(
            &console,
            None,
            StatusCode::BAD_GATEWAY,
            &format!(
                "the identity provider's authorization_endpoint is not a URL: {}",
                discovery.authorization_endpoint
            ),
        );
    };
    let binding = random_value();
    let reauth = q.reauth.is_some();
    let pending = Pending {
        state: random_value(),
        binding: binding_hash(&binding),
        verifier: random_value(),
        nonce: random_value(),
        next: safe_next(q.next.as_deref()),
        reauth,
        started: Instant::now(),
        started_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", team.client_id())
            .append_pair("redirect_uri", &console.link(CALLBACK_PATH))
            .append_pair("scope", "openid profile")
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &pkce_challenge(&pending.verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("resource", team.resource());
        if reauth {
            // OIDC Core §3.1.2.1: the provider must ask again, and says when it did.
            query
                .append_pair("prompt", "login")
                .append_pair("max_age", "0");
        }
    }
    team.keep(pending);
    let mut r = Redirect::to(url.as_str()).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Some(v) = set_binding(&console, &binding, 600) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A page saying why the login did not happen, which also forgets the login in flight.
fn failed(console: &Console, status: StatusCode, message: &str) -> Response {
    let body = html! {
        h1 { "Not logged in" }
        p.error role="alert" { (message) }
        p { a href="/login" { "Back to the login page" } }
    };
    let mut r = html_response(page(console, None, "", "Not logged in", body));
    *r.status_mut() = status;
    if let Some(v) = set_binding(console, "", 0) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /login/callback`.
pub async fn callback(
    State(console): State<Console>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(team) = console.team() else {
        return no_provider(&console);
    };
    // Taken whatever comes next: a state works once.
    let pending = q.state.as_deref().and_then(|s| team.take(s));
    if let Some(error) = &q.error {
        let error: String = error.chars().take(100).collect();
        let description = q
            .error_description
            .as_deref()
            .map(|d| format!(" ({})", d.chars().take(300).collect::<String>()))
            .unwrap_or_default();
        let status = if error == "access_denied" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_GATEWAY
        };
        return failed(
            &console,
            status,
            &format!(
                "The identity provider did not log you in: {error}{description}. Nothing was opened; you can try again from the login page."
            ),
        );
    }
    let Some(pending) = pending else {
        return failed(
            &console,
            StatusCode::BAD_REQUEST,
            "state: this answer does not belong to a login started here (an unknown, already used or expired state); start again from the login page",
        );
    };
    let bound = session_cookie(&headers, &binding_cookie(&console))
        .is_some_and(|c| binding_hash(c) == pending.binding);
    if !bound {
        return failed(
            &console,
            StatusCode::FORBIDDEN,
            "state: this login was started in another browser (or its cookie was lost); start again from the login page in this one",
        );
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return failed(
            &console,
            StatusCode::BAD_REQUEST,
            "code: the identity provider sent the browser back without one",
        );
    };
    let secret = match console
        .blocking(|c| c.team().map(|t| t.client_secret()).transpose())
        .await
    {
        Ok(Ok(secret)) => secret.flatten(),
        Ok(Err(e)) => return failed(&console, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(r) => return r,
    };
    let redirect_uri = console.link(CALLBACK_PATH);
    let logged = match team.finish(code, &pending, &redirect_uri, secret).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "console: a login through the identity provider failed");
            let status = match e {
                LoginError::IdToken(_) => StatusCode::UNAUTHORIZED,
                LoginError::Secret(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_GATEWAY,
            };
            return failed(&console, status, &e.to_string());
        }
    };
    let principal = logged.principal;
    if !principal.may(Permission::Status) {
        return failed(
            &console,
            StatusCode::FORBIDDEN,
            &format!(
                "{} has none of this coordinator's roles (installer, compliance, human_oversight, agent, admin) in the identity provider's tokens; ask its administrator for one",
                principal.name
            ),
        );
    }
    let remote = peer.to_string();
    let url = console.url();
    let event = NewEvent {
        actor: Actor::person_at_console(&principal.describe(), &url, &remote),
        action: Action::ConsoleLogin,
        subject: format!("person:{}", principal.name),
        outcome: Outcome::Ok,
        detail: json!({
            "console": url, "remote": remote, "via": "oidc", "issuer": team.issuer(),
            "subject": principal.subject, "roles": principal.role_names(),
            "reauthenticated": pending.reauth && logged.authenticated_now,
        }),
        critical: false,
    };
    if let Ok(Err(e)) = console.blocking(move |c| c.audit().record(event)).await {
        // Logging in is not refused for an audit write that failed; it is said.
        tracing::warn!(error = %e, "console: cannot record the login in the audit log");
    }
    // A session this browser had (logging in again to approve) gives way to the new one.
    if let Some(old) =
        session_cookie(&headers, console.cookie_name()).and_then(|t| console.sessions().get(t))
    {
        console.sessions().end(&old);
    }
    let name = principal.name.clone();
    let token = console.sessions().create(
        &name,
        Login::Provider(ProviderLogin {
            principal,
            authenticated_at: logged.authenticated_now.then(Instant::now),
        }),
        &remote,
    );
    // A page, not a redirect: the session cookie is `SameSite=Strict`, and a browser does not
    // send it on a redirect chain that began at another site (the provider). The next page is
    // loaded from here, a navigation of this site.
    let next = pending.next;
    let body = html! {
        h1 { "Logged in" }
        p { "Logged in as " strong { (name) } ". " a #continue href=(next) { "Continue" } }
    };
    let mut r = html_response(page(&console, None, "", "Logged in", body));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("0;url={next}")) {
        h.insert("refresh", v);
    }
    if let Ok(v) = HeaderValue::from_str(&guard::session_set_cookie(
        console.cookie_name(),
        &token,
        console.secure_cookies(),
    )) {
        h.append(header::SET_COOKIE, v);
    }
    if let Some(v) = set_binding(&console, "", 0) {
        h.append(header::SET_COOKIE, v);
    }
    r
}
