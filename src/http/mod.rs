//! The one HTTP listener of `serve --http`: MCP streamable HTTP at `/mcp` (rmcp's service,
//! from `crate::server::http`), the OAuth protected-resource metadata (`metadata.rs`), the
//! bearer check that finds each request's principal (`auth.rs`), browser origins and CORS
//! (`origin.rs`), the limits of sizes, rates and sessions (`limits.rs`), a stream of one
//! answer sent as JSON (`answer.rs`), the order in which a request meets them (`mcp.rs`), and
//! the oversight console and `/metrics` beside them (`crate::console`'s router, merged here).
//!
//! It may depend on `server`, `console`, `auth` and the domains; nothing but the CLI depends
//! on it (the config only names its `[http]` section's type).

pub mod answer;
pub mod auth;
pub mod config;
pub mod limits;
pub mod mcp;
pub mod metadata;
pub mod origin;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};

pub use auth::Authenticator;
pub use config::HttpConfig;

use crate::server::http::McpHttp;
use limits::Limits;
use origin::Origins;

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
    /// Browser origins allowed (`[http] allowed_origins`).
    origins: Origins,
    limits: Limits,
}

impl Front {
    /// A front for the server reached at `base_url` (`https://host:port/`, the public URL),
    /// with the default `[http]` limits.
    pub fn new(auth: Authenticator, base_url: &str) -> Self {
        Self::build(auth, base_url, Origins::default(), &HttpConfig::default())
    }

    /// A front with `config`'s origins and limits; an origin that does not parse is an error
    /// naming it (the config file's validation says so first).
    pub fn with_config(
        auth: Authenticator,
        base_url: &str,
        config: &HttpConfig,
    ) -> Result<Self, String> {
        let origins = Origins::parse(&config.allowed_origins)?;
        Ok(Self::build(auth, base_url, origins, config))
    }

    fn build(auth: Authenticator, base_url: &str, origins: Origins, config: &HttpConfig) -> Self {
        let base = base_url.trim_end_matches('/');
        Front {
            inner: Arc::new(Inner {
                auth,
                resource: resource_url(base),
                metadata_url: format!("{base}{}", metadata::PATH),
                origins,
                limits: Limits::new(config),
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

    pub fn origins(&self) -> &Origins {
        &self.inner.origins
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// `/mcp` behind its checks (`mcp.rs`), and the metadata documents; CORS on both when
    /// origins are configured (a preflight is answered there, without a token). The caller
    /// merges the console's router beside it.
    pub fn router(&self, mcp: McpHttp) -> Router {
        let mut mcp = Router::new()
            .route(MCP_PATH, any(mcp::serve))
            .with_state(mcp::McpRoute::new(self.clone(), mcp));
        let mut documents = Router::new()
            .route(metadata::PATH, get(metadata::document))
            // RFC 9728 §3.1: the resource's path is appended to the well-known path.
            .route(
                &format!("{}{MCP_PATH}", metadata::PATH),
                get(metadata::document),
            )
            .with_state(self.clone());
        if let Some(cors) = origin::cors(self.origins()) {
            mcp = mcp.layer(cors.clone());
            documents = documents.layer(cors);
        }
        documents.merge(mcp)
    }
}
