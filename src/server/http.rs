//! MCP over streamable HTTP: rmcp's service for `/mcp`, with this process's one coordinator
//! behind every session (sessions for initialize-era clients, stateless 2026-07-28 requests),
//! each session with toolsets of its own.
//! The listener, authentication and limits around it are `crate::http`'s; this file is where
//! rmcp meets them.

use std::sync::Arc;
use std::time::Duration;

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::Coordinator;

/// The `/mcp` service: a tower service axum routes to.
pub type McpService = StreamableHttpService<Coordinator, LocalSessionManager>;

/// How `/mcp` is served.
#[derive(Debug, Clone)]
pub struct McpHttpOptions {
    /// `Host` values accepted (host or host:port); the listener's own names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (`scheme://host:port`); empty refuses every request that
    /// carries an `Origin`.
    pub allowed_origins: Vec<String>,
    /// The largest request body, in bytes.
    pub max_request_bytes: usize,
    /// An initialize-era session without a request for this long is closed.
    pub session_idle: Duration,
    /// Cancelled when the server stops: every session ends.
    pub stop: CancellationToken,
}

/// The `/mcp` service for `coordinator`.
pub fn mcp_service(coordinator: Coordinator, options: McpHttpOptions) -> McpService {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(options.session_idle);
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(options.allowed_hosts)
        .with_allowed_origins(options.allowed_origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(options.max_request_bytes)
        .with_cancellation_token(options.stop);
    // One value per session (and per stateless request): each keeps its connection's toolsets.
    StreamableHttpService::new(
        move || Ok(coordinator.for_http()),
        Arc::new(sessions),
        config,
    )
}
