//! What every request passes before a page sees it: the `Host` must be one this console
//! answers to (DNS rebinding), a cross-origin request is refused (`Origin`, `Sec-Fetch-Site`),
//! responses carry headers that keep the pages in their own frame and scripts, and pages that
//! show or change anything need a logged-in [`Person`].

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::session::Person;
use super::{Console, Credential};

/// The `Host` values (and so the origins) a console answers to.
#[derive(Debug, Clone)]
pub struct Hosts {
    /// `host:port` authorities, lower case.
    authorities: BTreeSet<String>,
    /// `scheme://host:port` origins, lower case.
    origins: BTreeSet<String>,
}

impl Hosts {
    /// The names of `addr` (and `localhost` for loopback), plus the host of `public_url`.
    pub fn new(addr: SocketAddr, tls: bool, public_url: Option<&str>) -> Self {
        let mut authorities = BTreeSet::new();
        let mut origins = BTreeSet::new();
        let port = addr.port();
        let scheme = if tls { "https" } else { "http" };
        let mut names = vec![match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }];
        // Listening on every address: this machine's name, and loopback, are the names it
        // answers to (others through `public_url`).
        if addr.ip().is_unspecified() {
            names.push(crate::audit::host_name().to_ascii_lowercase());
        }
        if addr.ip().is_loopback() || addr.ip().is_unspecified() {
            names.extend(["localhost".to_string(), "127.0.0.1".into(), "[::1]".into()]);
        }
        for name in names {
            authorities.insert(format!("{name}:{port}"));
            origins.insert(format!("{scheme}://{name}:{port}"));
        }
        if let Some(url) = public_url.and_then(|u| url::Url::parse(u).ok())
            && let Some(host) = url.host_str()
        {
            let host = host.to_ascii_lowercase();
            let origin = url.origin().ascii_serialization().to_ascii_lowercase();
            match url.port() {
                Some(p) => {
                    authorities.insert(format!("{host}:{p}"));
                }
                None => {
                    authorities.insert(host.clone());
                    if let Some(p) = url.port_or_known_default() {
                        authorities.insert(format!("{host}:{p}"));
                    }
                }
            }
            origins.insert(origin);
        }
        Hosts {
            authorities,
            origins,
        }
    }

    fn allows_host(&self, host: &str) -> bool {
        self.authorities.contains(&host.to_ascii_lowercase())
    }

    fn allows_origin(&self, origin: &str) -> bool {
        self.origins.contains(&origin.to_ascii_lowercase())
    }
}

/// A refusal page (plain text: it is short, and it must not depend on anything that failed).
pub fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, message.into()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Host and Origin checks, then the security headers on whatever comes back.
pub async fn check(State(console): State<Console>, request: Request, next: Next) -> Response {
    if let Err(refusal) = check_request(console.hosts(), request.method(), request.headers()) {
        return secure(refusal);
    }
    secure(next.run(request).await)
}

fn check_request(hosts: &Hosts, method: &Method, headers: &HeaderMap) -> Result<(), Response> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !hosts.allows_host(host) {
        return Err(refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this console does not answer to Host `{host}` (a page reaching it under another name is refused: DNS rebinding); open it at its own address"
            ),
        ));
    }
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    let unsafe_method = !matches!(*method, Method::GET | Method::HEAD);
    match origin {
        Some(o) if !hosts.allows_origin(o) => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("cross-origin request from `{o}` refused"),
            ));
        }
        None if unsafe_method => {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "a form sent without an Origin header is refused (browsers send one; this looks forged)",
            ));
        }
        _ => {}
    }
    let site = headers
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("same-origin");
    if unsafe_method && !matches!(site, "same-origin" | "none") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("a {site} form is refused; use the console's own pages"),
        ));
    }
    Ok(())
}

/// Headers that keep the console's pages to themselves.
fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    // Not `no-referrer`: with it, browsers send `Origin: null` on our own forms.
    set(h, "referrer-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    response
}

/// The value of the cookie `name` in a request, if any.
pub fn session_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value of a new session in the cookie `name`.
pub fn session_set_cookie(name: &str, token: &str, secure: bool) -> String {
    format!(
        "{name}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn session_clear_cookie(name: &str, secure: bool) -> String {
    format!(
        "{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A page that needs the overseer logged in: without a live session, a page view goes to the
/// login page (and back here after), anything else is refused with 401.
impl FromRequestParts<Console> for Person {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let mut ended = None;
        if let Some(person) = session_cookie(&parts.headers, console.cookie_name())
            .and_then(|t| console.sessions().get(t))
        {
            let Some(credential) = person.credential() else {
                // The identity provider vouched for this person at login; the session lasts
                // as sessions do.
                return Ok(person);
            };
            match console.credential(credential).await {
                Credential::Current => return Ok(person),
                Credential::Unknown => {
                    // A busy database is no reason to log anyone out: try again shortly.
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot read the overseer credential right now (the database is busy); try again in a moment",
                    ));
                }
                Credential::Changed => {
                    // The passphrase changed (or was reset) since this login: the session ends.
                    console.sessions().end(&person);
                    ended = Some(());
                }
            }
        }
        let wants_page = parts.method == Method::GET
            && parts
                .headers
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
        if wants_page {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string());
            let to = format!(
                "/login?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            );
            return Err(Redirect::to(&to).into_response());
        }
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            if ended.is_some() {
                "the overseer's passphrase changed since this session logged in: log in again at /login"
            } else {
                "not logged in to the console (or the session ended): log in at /login"
            },
        ))
    }
}

/// A page that needs `permission`: the overseer with the passphrase has every one; a person
/// from the identity provider needs a role that grants it, or gets a page naming it.
pub fn require(
    console: &Console,
    person: &Person,
    permission: crate::auth::Permission,
) -> Result<(), Response> {
    match person.principal() {
        Some(p) if !p.may(permission) => Err(super::layout::error_page(
            console,
            Some(person),
            StatusCode::FORBIDDEN,
            &format!(
                "this page needs the permission {permission}, which none of {}'s roles ({}) grants",
                p.name,
                p.role_names()
            ),
        )),
        _ => Ok(()),
    }
}

/// Takes the one-time token a form carried, or the response refusing it.
pub fn take_form(console: &Console, person: &Person, token: &str) -> Result<(), Response> {
    console
        .sessions()
        .take_form(person, token)
        .map_err(|r| refuse(StatusCode::FORBIDDEN, r.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(*k, v);
            }
        }
        h
    }

    #[test]
    fn host_and_origin_must_be_the_consoles_own() {
        let hosts = Hosts::new(SocketAddr::from(([127, 0, 0, 1], 8750)), false, None);
        let ok =
            |m: Method, h: &[(&'static str, &str)]| check_request(&hosts, &m, &headers(h)).is_ok();
        assert!(ok(Method::GET, &[("host", "127.0.0.1:8750")]));
        assert!(ok(Method::GET, &[("host", "localhost:8750")]));
        assert!(!ok(Method::GET, &[("host", "evil.example:8750")]));
        assert!(!ok(Method::GET, &[("host", "127.0.0.1:8751")]));
        assert!(!ok(Method::GET, &[]));
        assert!(ok(
            Method::POST,
            &[
                ("host", "127.0.0.1:8750"),
                ("origin", "http://127.0.0.1:8750")
            ]
        ));
        assert!(!ok(Method::POST, &[("host", "127.0.0.1:8750")]));
        assert!(!ok(
            Method::POST,
            &[
                ("host", "127.0.0.1:8750"),
                ("origin", "http://evil.example")
            ]
        ));
        assert!(!ok(
            Method::GET,
            &[
                ("host", "127.0.0.1:8750"),
                ("origin", "https://127.0.0.1:8750")
            ]
        ));
        assert!(!ok(
            Method::POST,
            &[
                ("host", "127.0.0.1:8750"),
                ("origin", "http://127.0.0.1:8750"),
                ("sec-fetch-site", "cross-site")
            ]
        ));
    }

    #[test]
    fn a_public_url_adds_its_host() {
        let hosts = Hosts::new(
            SocketAddr::from(([10, 0, 0, 5], 8750)),
            false,
            Some("https://Oversight.example.com/"),
        );
        assert!(hosts.allows_host("oversight.example.com"));
        assert!(hosts.allows_host("oversight.example.com:443"));
        assert!(hosts.allows_origin("https://oversight.example.com"));
        assert!(!hosts.allows_origin("http://oversight.example.com"));
        assert!(!hosts.allows_host("localhost:8750"));
    }
}
