//! Who is calling and how: the protocol era of the request (initialize handshake or stateless
//! 2026-07-28), the client's name and version, and the handles a long tool call needs.

use rmcp::RoleServer;
use rmcp::model::ProtocolVersion;
use rmcp::service::{Peer, RequestContext};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::audit::{Actor, ActorKind};

/// The protocol era a request arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Era {
    /// The client opened with `initialize` (2024-11-05 .. 2025-11-25): a session with a peer
    /// the server can send requests to (elicitation, progress).
    Legacy,
    /// The client speaks 2026-07-28 or later: self-contained requests, no session; the server
    /// asks for input by returning an input-required result.
    Stateless,
}

/// The context of one tool call, free of handler plumbing.
#[derive(Clone)]
pub struct Call {
    pub era: Era,
    /// The negotiated (legacy) or per-request (stateless) protocol version.
    pub protocol_version: String,
    /// The client, as an audit actor.
    pub actor: Actor,
    /// Cancelled when the client cancels this request or the connection closes.
    pub cancel: CancellationToken,
    /// The client, for notifications and (legacy) requests.
    pub peer: Peer<RoleServer>,
    /// This coordinator process's session id (one per process).
    pub session_id: String,
}

impl Call {
    pub fn from_context(ctx: &RequestContext<RoleServer>, coordinator: &Coordinator) -> Self {
        let version = ctx.protocol_version();
        let era = era_of(version.as_ref());
        let client = ctx
            .client_info()
            .map(|i| format!("{}/{}", i.name, i.version))
            .unwrap_or_else(|| "unknown".into());
        Call {
            era,
            protocol_version: version.map(|v| v.to_string()).unwrap_or_default(),
            actor: Actor::new(ActorKind::Client, client),
            cancel: ctx.ct.clone(),
            peer: ctx.peer.clone(),
            session_id: coordinator.session_id().to_string(),
        }
    }
}

/// Stateless from 2026-07-28 on; ISO dates compare lexically as they do in time.
pub fn era_of(version: Option<&ProtocolVersion>) -> Era {
    match version {
        Some(v) if v.as_str() >= ProtocolVersion::V_2026_07_28.as_str() => Era::Stateless,
        _ => Era::Legacy,
    }
}
