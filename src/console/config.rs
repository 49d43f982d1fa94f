//! The `[console]` section of the config file: whether `serve` also serves the console, where
//! it listens, and what makes a non-loopback address acceptable (TLS, or a proxy in front).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where `mcp-coordinator console` listens when neither `--listen` nor `[console] listen` says.
pub const DEFAULT_CONSOLE_LISTEN: &str = "127.0.0.1:8750";
/// Where a serving coordinator's own console listens by default: a loopback port of its own,
/// chosen by the system, so that any number of coordinators start without a clash.
pub const DEFAULT_SERVE_LISTEN: &str = "127.0.0.1:0";

/// `[console]`: the oversight console, a web page where the overseer sees everything and
/// decides approvals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Whether `serve` also serves the console on a port of its own (its URL is logged on
    /// stderr and named in every pending approval). `mcp-coordinator console` serves it
    /// regardless. Default true.
    pub enabled: bool,
    /// The address to listen on, `HOST:PORT`. Default `127.0.0.1:0` for `serve` (a free
    /// loopback port) and `127.0.0.1:8750` for `mcp-coordinator console`. An address other
    /// than loopback needs `tls_cert` and `tls_key`, or `behind_proxy = true`.
    pub listen: Option<String>,
    /// The URL people open the console at, when it differs from the listen address (a reverse
    /// proxy's `https://oversight.example.com`). Its host is accepted in `Host` and `Origin`.
    pub public_url: Option<String>,
    /// A TLS-terminating reverse proxy is in front: a non-loopback listen address is accepted
    /// without TLS of our own, and cookies are marked `Secure`. Default false.
    pub behind_proxy: bool,
    /// PEM certificate chain to serve HTTPS with (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Minutes without a request after which a console session ends. Default 30.
    pub session_idle_minutes: u64,
    /// Login attempts allowed per minute from one address (the overseer's lock after wrong
    /// passphrases applies as well). Default 5.
    pub login_attempts_per_minute: u32,
    /// Whether `/metrics` needs a logged-in session. Default false: a Prometheus scraper does
    /// not log in, and the page shows counts only (no names, arguments or secrets); the Host
    /// check applies either way.
    pub metrics_need_login: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            listen: None,
            public_url: None,
            behind_proxy: false,
            tls_cert: None,
            tls_key: None,
            session_idle_minutes: 30,
            login_attempts_per_minute: 5,
            metrics_need_login: false,
        }
    }
}
