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
    /// Browser origins allowed to call `/mcp` (`https://app.example.com:443`); CORS headers
    /// are sent for these only. Default none: a request carrying any `Origin` is refused, and
    /// no CORS headers are sent.
    pub allowed_origins: Vec<String>,
    /// Initialize-era sessions open at once; a new session past this is refused with `503`.
    /// Default 256.
    pub max_sessions: usize,
    /// Minutes without a request after which an initialize-era session is closed. Default 30.
    pub session_idle_minutes: u64,
    /// Requests per minute one principal may make to `/mcp` (a burst of as many is allowed);
    /// past it, `429` with `Retry-After`. Default 600.
    pub requests_per_minute: u32,
    /// The largest request body `/mcp` reads, in bytes. Default 4 MiB.
    pub max_request_bytes: usize,
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
            session_idle_minutes: 30,
            requests_per_minute: 600,
            max_request_bytes: 4 * 1024 * 1024,
        }
    }
}
