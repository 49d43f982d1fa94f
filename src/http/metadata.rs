//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the document an MCP client reads, after a
//! `401` names it, to learn which authorization server issues tokens for `/mcp`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::Front;

/// Where the document is served (and, with `/mcp` appended, again per RFC 9728 §3.1).
pub const PATH: &str = "/.well-known/oauth-protected-resource";

/// The metadata document: the resource, its authorization server (when an identity provider is
/// configured), and that tokens go in the `Authorization` header.
pub async fn document(State(front): State<Front>) -> Json<Value> {
    let servers: Vec<&str> = front.auth().issuer().into_iter().collect();
    Json(json!({
        "resource": front.resource(),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "mcp-coordinator",
    }))
}
