//! MCP over streamable HTTP: rmcp's service for `/mcp`, with this process's one coordinator
//! behind every session (sessions for initialize-era clients, stateless 2026-07-28 requests),
//! each session with toolsets of its own, and the session manager that holds the number of
//! sessions to `[http] max_sessions`.
//! The listener, authentication and limits around it are `crate::http`'s; this file is where
//! rmcp meets them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use super::http_sessions::{DirectSessions, SessionError};

/// rmcp's `/mcp` service, shared: axum clones a route's service for every request, once per
/// layer around it, and a clone of rmcp's service copies its configuration (host and origin
/// lists) each time; an `Arc` makes each of those clones a count.
#[derive(Clone)]
pub struct McpService(Arc<StreamableHttpService<Coordinator, BoundedSessions>>);

impl McpService {
    /// Answers one request to `/mcp`.
    pub async fn handle(&self, request: axum::extract::Request) -> axum::response::Response {
        use axum::response::IntoResponse;
        self.0.handle(request).await.into_response()
    }
}

/// The `/mcp` service and its sessions (whose fullness the listener checks before reading
/// a request that might open one).
#[derive(Clone)]
pub struct McpHttp {
    pub service: McpService,
    pub sessions: Arc<BoundedSessions>,
}

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
    /// Initialize-era sessions open at once.
    pub max_sessions: usize,
    /// The most sessions one principal holds at once.
    pub max_sessions_per_principal: usize,
    /// An initialize-era session without a request for this long is closed.
    pub session_idle: Duration,
    /// Cancelled when the server stops: every session ends.
    pub stop: CancellationToken,
}

/// The `/mcp` service for `coordinator`.
pub fn mcp_service(coordinator: Coordinator, options: McpHttpOptions) -> McpHttp {
    let sessions = Arc::new(BoundedSessions {
        inner: DirectSessions::new(options.session_idle),
        max: options.max_sessions.max(1),
        per_principal: options.max_sessions_per_principal.max(1),
        creating: tokio::sync::Mutex::new(()),
        owners: std::sync::Mutex::default(),
    });
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(options.allowed_hosts)
        .with_allowed_origins(options.allowed_origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(options.max_request_bytes)
        // A 2026-07-28 request (no session) whose answer is all there is gets it as one JSON
        // body, not an event stream of one event; rmcp streams when a notification or a
        // request comes first, so nothing is lost. Initialize-era sessions always stream.
        .with_json_response(true)
        .with_cancellation_token(options.stop);
    // One value per session (and per stateless request): each keeps its connection's toolsets.
    let service =
        StreamableHttpService::new(move || Ok(coordinator.for_http()), sessions.clone(), config);
    McpHttp {
        service: McpService(Arc::new(service)),
        sessions,
    }
}

/// The sessions in memory, at most `max` at once. A session ends on `DELETE`, when its
/// client has been idle for `[http] session_idle_seconds`, or when the server stops; rmcp then
/// closes it here, which frees its place.
pub struct BoundedSessions {
    inner: DirectSessions,
    max: usize,
    /// Held while a session is counted and created, so that two at once cannot both take
    /// the last place.
    creating: tokio::sync::Mutex<()>,
    /// The most sessions one principal holds.
    per_principal: usize,
    /// Who opened each session (`Principal::key`): a request carrying its
    /// id with anyone else's token is answered as if there were no such session.
    owners: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Errors of [`BoundedSessions`].
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("{}", full_message(*.0))]
    Full(usize),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// What a client refused a session is told: the limit, the setting, and the ways out.
pub fn full_message(max: usize) -> String {
    format!(
        "session limit reached: {max} MCP sessions are open, the most [http] max_sessions \
         allows; retry after a session ends (HTTP DELETE with its Mcp-Session-Id, or idle past \
         [http] session_idle_minutes), or use protocol 2026-07-28, which needs no session"
    )
}

impl BoundedSessions {
    /// Sessions open now.
    pub async fn open(&self) -> usize {
        self.inner.open()
    }

    /// The most sessions open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a new session would be refused now.
    pub async fn is_full(&self) -> bool {
        self.open().await >= self.max
    }

    /// The most sessions one principal holds at once.
    pub fn per_principal(&self) -> usize {
        self.per_principal
    }

    /// Who opened session `id`, if it is known.
    pub fn owner_of(&self, id: &str) -> Option<String> {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Records that `owner` opened session `id`, forgetting the owners of sessions that ended.
    pub async fn record_owner(&self, id: &str, owner: String) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.retain(|id, _| self.inner.contains(id));
        owners.insert(id.to_string(), owner);
    }

    /// Sessions open now that `owner` opened.
    pub async fn held_by(&self, owner: &str) -> usize {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(id, o)| o.as_str() == owner && self.inner.contains(id))
            .count()
    }
}

impl SessionManager for BoundedSessions {
    type Error = SessionsError;
    type Transport = <DirectSessions as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let _creating = self.creating.lock().await;
        if self.is_full().await {
            return Err(SessionsError::Full(self.max));
        }
        Ok(self.inner.create_session().await?)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }
}
