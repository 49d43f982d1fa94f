//! The one HTTP listener of `serve --http`: MCP streamable HTTP at `/mcp` (rmcp's service,
//! from `crate::server::http`), the OAuth protected-resource metadata (`metadata.rs`), the
//! bearer check that finds each request's principal (`auth.rs`), and the oversight console and
//! `/metrics` beside them (`crate::console`'s router, merged here).
//!
//! It may depend on `server`, `console`, `auth` and the domains; nothing but the CLI depends
//! on it (the config only names its `[http]` section's type).

pub mod auth;
pub mod config;
pub mod metadata;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use auth::Authenticator;
pub use config::HttpConfig;

use crate::server::http::McpService;

/// The path MCP is served at.
pub const MCP_PATH: &str = "/mcp";

/// The resource URL (RFC 8707/9728) of the server reached at `base_url`: its `/mcp`.
pub fn resource_url(base_url: &str) -> String {
    format!("{}{MCP_PATH}", base_url.trim_end_matches('/'))
}

/// What the listener's routes share: who checks bearer tokens, and the names this server
/// answers to.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Authenticator,
    /// The resource URL (RFC 8707/9728): the public URL of `/mcp`.
    resource: String,
    /// The URL of this server's protected-resource metadata document.
    metadata_url: String,
}

impl Front {
    /// A front for the server reached at `base_url` (`https://host:port/`, the public URL).
    pub fn new(auth: Authenticator, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        Front {
            inner: Arc::new(Inner {
                auth,
                resource: resource_url(base),
                metadata_url: format!("{base}{}", metadata::PATH),
            }),
        }
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The resource URL tokens must be issued for (the audience, unless `[auth] audience`
    /// says otherwise).
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    pub fn metadata_url(&self) -> &str {
        &self.inner.metadata_url
    }

    /// `/mcp` behind the bearer check, and the metadata documents. The caller merges the
    /// console's router beside it.
    pub fn router(&self, mcp: McpService) -> Router {
        let mcp =
            Router::new()
                .route_service(MCP_PATH, mcp)
                .layer(axum::middleware::from_fn_with_state(
                    self.clone(),
                    auth::require_bearer,
                ));
        Router::new()
            .route(metadata::PATH, get(metadata::document))
            // RFC 9728 §3.1: the resource's path is appended to the well-known path.
            .route(
                &format!("{}{MCP_PATH}", metadata::PATH),
                get(metadata::document),
            )
            .with_state(self.clone())
            .merge(mcp)
    }
}
