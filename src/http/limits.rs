//! The limits every request to `/mcp` is held to, each refusal naming its `[http]` setting:
//! header and body sizes (`431`, `413`), failed bearer checks per client address (`429`: token
//! guessing), requests per principal (`429` with `Retry-After`, `governor`), and the session
//! limit's `503` for an `initialize` past `max_sessions`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

use super::HttpConfig;
use crate::server::http::BoundedSessions;

/// Keyed tables past this many entries forget the keys whose quota has refilled (the
/// console's login limiter does the same), so many keys do not grow them without end.
const RETAIN_PAST: usize = 4096;

/// The limits' settings and state; one per listener.
pub struct Limits {
    requests_per_minute: u32,
    failed_auth_per_minute: u32,
    max_request_bytes: usize,
    max_header_bytes: usize,
    behind_proxy: bool,
    /// Requests per principal (only authenticated requests reach it, so strangers cannot
    /// fill it).
    principals: DefaultKeyedRateLimiter<String>,
    /// Failed bearer checks per client address.
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses past their failures, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Limits {
    pub fn new(config: &HttpConfig) -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Limits {
            requests_per_minute: config.requests_per_minute.max(1),
            failed_auth_per_minute: config.failed_auth_per_minute.max(1),
            max_request_bytes: config.max_request_bytes,
            max_header_bytes: config.max_header_bytes,
            behind_proxy: config.behind_proxy,
            principals: RateLimiter::keyed(per_minute(config.requests_per_minute)),
            failures: RateLimiter::keyed(per_minute(config.failed_auth_per_minute)),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long the principal `key` must wait, or `None` when this request is within its
    /// quota (counts it).
    fn principal_wait(&self, key: &String) -> Option<Duration> {
        if self.principals.len() > RETAIN_PAST {
            self.principals.retain_recent();
        }
        self.principals
            .check_key(key)
            .err()
            .map(|n| n.wait_time_from(self.principals.clock().now()))
    }

    /// How long `ip` stays refused after too many failed bearer checks, if it is.
    fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&ip);
            return None;
        }
        Some(until - now)
    }

    /// Counts a failed bearer check from `ip`; past the quota, the address is refused until
    /// the next one is allowed.
    pub fn failed(&self, ip: IpAddr) {
        if self.failures.len() > RETAIN_PAST {
            self.failures.retain_recent();
        }
        if let Err(n) = self.failures.check_key(&ip) {
            let wait = n.wait_time_from(self.failures.clock().now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() > RETAIN_PAST {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(ip, Instant::now() + wait);
        }
    }

    /// The client's address: the peer, or behind a proxy the address it appended last to
    /// `X-Forwarded-For` (the one hop a client cannot forge).
    fn client_ip(&self, request: &Request) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())?;
        if !self.behind_proxy {
            return Some(peer);
        }
        Some(crate::console::login::forwarded_for(request.headers()).unwrap_or(peer))
    }
}

/// `429` with `Retry-After` (whole seconds, at least 1) and why.
fn too_many(wait: Duration, why: String) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        format!("{why}; retry after {seconds} s"),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn too_large(max: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "request body too large: /mcp reads at most {max} bytes ([http] max_request_bytes)"
        ),
    )
        .into_response()
}

/// Bytes of the request's headers as sent (`name: value` and a line end each).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

impl Limits {
    /// Header and body sizes, refused before any token is checked: the `431` or `413` to
    /// answer, or `None`. A body without a length (chunked) is counted by rmcp while it reads;
    /// [`Limits::size_answer`] says its `413` in the same words.
    pub fn size_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let bytes = header_bytes(headers);
        if bytes > self.max_header_bytes {
            return Some(
                (
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!(
                        "request headers too large: {bytes} bytes, /mcp accepts at most {} \
                         ([http] max_header_bytes)",
                        self.max_header_bytes
                    ),
                )
                    .into_response(),
            );
        }
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        length
            .is_some_and(|n| n > self.max_request_bytes as u64)
            .then(|| too_large(self.max_request_bytes))
    }

    /// `response`, or for rmcp's `413` (a chunked body past the limit) ours, naming the setting.
    pub fn size_answer(&self, response: Response) -> Response {
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return too_large(self.max_request_bytes);
        }
        response
    }

    /// The address a request with a bearer token comes from, whose failed checks are counted
    /// ([`Limits::failed`]); `None` for a request without a token, which is not a guess (it
    /// gets its `401`).
    pub fn guesser(&self, request: &Request) -> Option<IpAddr> {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            return None;
        }
        self.client_ip(request)
    }

    /// Failed bearer checks per client address: an address past `failed_auth_per_minute` is
    /// answered `429` for every request with a token, before the token is looked at, so that
    /// guessing learns nothing.
    pub fn guessing_refusal(&self, ip: IpAddr) -> Option<Response> {
        let wait = self.blocked_for(ip)?;
        Some(too_many(
            wait,
            format!(
                "too many failed bearer checks from this address: at most {} a minute ([http] \
                 failed_auth_per_minute)",
                self.failed_auth_per_minute
            ),
        ))
    }

    /// Requests per principal (`key`, after the bearer check): the `429` past the quota, or
    /// `None` (the request is counted).
    pub fn rate_refusal(&self, key: &String) -> Option<Response> {
        let wait = self.principal_wait(key)?;
        Some(too_many(
            wait,
            format!(
                "rate limit: at most {} requests a minute per principal ([http] \
                 requests_per_minute)",
                self.requests_per_minute
            ),
        ))
    }
}

/// The session limits, said before rmcp reads the request: the request to go on with, or the
/// answer instead. A request carrying a session's id with another principal's token is
/// answered `404`, as for a session that does not exist (sessions are bound to whoever opened
/// them). When every place is taken, or `owner` holds its share
/// (`max_sessions_per_principal`), a POST without `Mcp-Session-Id` that is an `initialize` is
/// answered `503` with a JSON-RPC error for its id (rmcp itself could only answer a refused
/// session with a `500`). Other requests (2026-07-28 ones need no session) go on. Nothing is
/// read while places are free.
pub async fn session_room(
    limits: &Limits,
    sessions: &BoundedSessions,
    request: Request,
    owner: &str,
) -> Result<Request, Response> {
    if let Some(id) = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        if sessions
            .owner_of(id)
            .is_some_and(|opened_by| opened_by != owner)
        {
            return Err((
                StatusCode::NOT_FOUND,
                "Not Found: no such session for this principal",
            )
                .into_response());
        }
        return Ok(request);
    }
    if request.method() != Method::POST {
        return Ok(request);
    }
    let full = sessions.is_full().await;
    let over_share = sessions.held_by(owner).await >= sessions.per_principal();
    if !(full || over_share) {
        return Ok(request);
    }
    let max_bytes = limits.max_request_bytes;
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max_bytes).await else {
        return Err(too_large(max_bytes));
    };
    let head: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if head.get("method").and_then(Value::as_str) != Some("initialize") {
        return Ok(Request::from_parts(parts, Body::from(bytes)));
    }
    let (message, data) = if full {
        (
            crate::server::http::full_message(sessions.max()),
            json!({"limit": "max_sessions", "max": sessions.max(), "setting": "[http] max_sessions"}),
        )
    } else {
        (
            format!(
                "session limit reached: this principal holds {} MCP sessions, the most [http] \
                 max_sessions_per_principal allows; close one (HTTP DELETE with its \
                 Mcp-Session-Id) or use protocol 2026-07-28, which needs no session",
                sessions.per_principal()
            ),
            json!({"limit": "max_sessions_per_principal", "max": sessions.per_principal(), "setting": "[http] max_sessions_per_principal"}),
        )
    };
    let error = json!({
        "jsonrpc": "2.0",
        "id": head.get("id").cloned().unwrap_or(Value::Null),
        "error": {"code": -32000, "message": message, "data": data},
    });
    Err((
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        error.to_string(),
    )
        .into_response())
}

/// Records a session that a response with `headers` opened as `owner`'s.
pub async fn record_session(sessions: &BoundedSessions, headers: &HeaderMap, owner: String) {
    if let Some(id) = headers.get("mcp-session-id").and_then(|v| v.to_str().ok()) {
        sessions.record_owner(id, owner).await;
    }
}
