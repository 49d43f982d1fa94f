//! The `[http]` section of the config file: where `serve --http` listens, what makes a
//! non-loopback address acceptable, browser origins, and the limits every principal is held to.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[http]`: MCP over streamable HTTP at `/mcp`, on one listener with the console and
/// `/metrics`. Served when `serve --http ADDR` is given or `listen` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on, `HOST:PORT` (`serve --http` overrides it). An address other
    /// than loopback needs `tls_cert` and `tls_key`, or `behind_proxy = true`. While HTTP is
    /// served, the console is served on this listener too (its own `listen` is not used).
    pub listen: Option<String>,
    /// The URL clients reach this server at, when it differs from the listen address (a reverse
    /// proxy's `https://mcp.example.com`). The resource URL tokens must name is its `/mcp`.
    pub public_url: Option<String>,
    /// A TLS-terminating reverse proxy is in front: a non-loopback listen address is accepted
    /// without TLS of our own. Default false.
    pub behind_proxy: bool,
    /// PEM certificate chain to serve HTTPS with (with `tls_key`; `--tls-cert` overrides).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert` (`--tls-key` overrides).
    pub tls_key: Option<PathBuf>,
    /// Browser origins allowed to call `/mcp`, as `scheme://host:port` (`:*` for any port; no
    /// port means the scheme's default), or `null`. A request from another origin is refused
    /// with `403`; for these, CORS preflights are answered and CORS headers sent on `/mcp` and
    /// the metadata document. Default none: a request carrying any `Origin` is refused, and no
    /// CORS headers are sent.
    pub allowed_origins: Vec<String>,
    /// Initialize-era sessions open at once; a new session past this is refused with `503`.
    /// Default 256.
    pub max_sessions: usize,
    /// Initialize-era sessions one principal may hold at once, so that one token cannot take
    /// every place. Default 32.
    pub max_sessions_per_principal: usize,
    /// Minutes without a request after which an initialize-era session is closed. Default 30.
    pub session_idle_minutes: u64,
    /// The same in seconds; when set it takes the place of `session_idle_minutes`.
    pub session_idle_seconds: Option<u64>,
    /// Requests per minute one principal may make to `/mcp` (a burst of as many is allowed);
    /// past it, `429` with `Retry-After`. Default 600.
    pub requests_per_minute: u32,
    /// Failed bearer checks per minute one client address may make (token guessing); past
    /// it, every request from that address with a token is answered `429` with `Retry-After`
    /// until the quota refills, right tokens included. Behind a proxy the address is the last
    /// one the proxy added to `X-Forwarded-For`. Default 30.
    pub failed_auth_per_minute: u32,
    /// The largest request body `/mcp` reads, in bytes; a larger one is answered `413`.
    /// Default 4 MiB.
    pub max_request_bytes: usize,
    /// The most bytes of request headers (names and values) `/mcp` accepts; more is answered
    /// `431`. Default 32 KiB (room for large provider tokens).
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            public_url: None,
            behind_proxy: false,
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            max_sessions: 256,
            max_sessions_per_principal: 32,
            session_idle_minutes: 30,
            session_idle_seconds: None,
            requests_per_minute: 600,
            failed_auth_per_minute: 30,
            max_request_bytes: 4 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl HttpConfig {
    /// Checks every bound and the origins, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        use crate::limits::{
            HTTP_FAILED_AUTH_PER_MINUTE, HTTP_MAX_HEADER_BYTES, HTTP_MAX_REQUEST_BYTES,
            HTTP_MAX_SESSIONS, HTTP_REQUESTS_PER_MINUTE, HTTP_SESSION_IDLE_SECONDS,
        };
        HTTP_MAX_SESSIONS.check("http.max_sessions", self.max_sessions)?;
        HTTP_MAX_SESSIONS.check(
            "http.max_sessions_per_principal",
            self.max_sessions_per_principal,
        )?;
        HTTP_SESSION_IDLE_SECONDS.check(
            "http.session_idle_minutes (in seconds)",
            self.session_idle_minutes.saturating_mul(60),
        )?;
        if let Some(seconds) = self.session_idle_seconds {
            HTTP_SESSION_IDLE_SECONDS.check("http.session_idle_seconds", seconds)?;
        }
        HTTP_REQUESTS_PER_MINUTE.check("http.requests_per_minute", self.requests_per_minute)?;
        HTTP_FAILED_AUTH_PER_MINUTE
            .check("http.failed_auth_per_minute", self.failed_auth_per_minute)?;
        HTTP_MAX_REQUEST_BYTES.check("http.max_request_bytes", self.max_request_bytes)?;
        HTTP_MAX_HEADER_BYTES.check("http.max_header_bytes", self.max_header_bytes)?;
        super::origin::Origins::parse(&self.allowed_origins).map(|_| ())
    }

    /// How long an idle initialize-era session lives.
    pub fn session_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.session_idle_seconds
                .unwrap_or(self.session_idle_minutes.saturating_mul(60))
                .max(1),
        )
    }
}
