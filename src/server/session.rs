//! Who is calling and how: the protocol era of the request (initialize handshake or stateless
//! 2026-07-28), the client's name and version, and the handles a long tool call needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rmcp::RoleServer;
use rmcp::model::{InputResponses, ProgressNotificationParam, ProgressToken, ProtocolVersion};
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
    /// The client, as an audit actor (with the principal it acts as, over HTTP).
    pub actor: Actor,
    /// Over HTTP, who the request's bearer token says is calling; `None` on stdio (the OS
    /// user who launched the assistant, guarded by the approval gate alone).
    pub principal: Option<crate::auth::Principal>,
    /// Cancelled when the client cancels this request or the connection closes.
    pub cancel: CancellationToken,
    /// The client, for notifications and (legacy) requests.
    pub peer: Peer<RoleServer>,
    /// This coordinator process's session id (one per process).
    pub session_id: String,
    /// Whether the client declared form elicitation (a person can be asked in the client).
    pub elicitation_form: bool,
    /// Whether the client declared URL elicitation (2025-11-25): it can send a person to a
    /// page (the console's page of an approval) and be told when the page is done.
    pub elicitation_url: bool,
    /// Whether the client declared the tasks extension (SEP-2663): a long call may be
    /// answered with a task it polls.
    pub tasks: bool,
    /// The request's progress token, if the client wants progress notifications.
    pub progress_token: Option<ProgressToken>,
    /// MRTR retry (2026-07-28): the state the server sealed in its input-required result.
    pub request_state: Option<String>,
    /// MRTR retry (2026-07-28): the client's answers to the server's input requests.
    pub input_responses: Option<InputResponses>,
    /// Set by [`Call::unaudited`]; shared with `call_tool`, which records the call.
    quiet: Quiet,
}

/// Whether a call asked to leave no `tool.call` event (see [`Call::unaudited`]). `call_tool`
/// puts one in the request's extensions and reads it after the handler ran.
#[derive(Clone, Default)]
pub struct Quiet(Arc<AtomicBool>);

impl Quiet {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Call {
    pub fn from_context(ctx: &RequestContext<RoleServer>, coordinator: &Coordinator) -> Self {
        let version = ctx.protocol_version();
        let era = era_of(version.as_ref());
        let client = ctx
            .client_info()
            .map(|i| printable(&format!("{}/{}", i.name, i.version)))
            .unwrap_or_else(|| "unknown".into());
        // A client that declares elicitation with neither mode means form (2025-06-18 shape).
        let elicitation = ctx.client_capabilities().and_then(|c| c.elicitation);
        let principal = principal_of(ctx);
        // Over HTTP the client asking is never the one asked to decide: the answer to a form
        // would come from the requester (or a program holding its token), and deciding is
        // human_oversight's, in the console, by someone else. URL mode still sends a person to
        // the console's page of the approval.
        let elicitation_form = principal.is_none()
            && elicitation
                .as_ref()
                .is_some_and(|e| e.form.is_some() || e.url.is_none());
        let elicitation_url = elicitation.as_ref().is_some_and(|e| e.url.is_some());
        let actor = client_actor(client, principal.as_ref());
        Call {
            era,
            protocol_version: version.map(|v| v.to_string()).unwrap_or_default(),
            actor,
            principal,
            cancel: ctx.ct.clone(),
            peer: ctx.peer.clone(),
            session_id: coordinator.session_id().to_string(),
            elicitation_form,
            elicitation_url,
            tasks: ctx
                .client_capabilities()
                .is_some_and(|c| c.supports_tasks()),
            progress_token: ctx.meta.get_progress_token(),
            request_state: None,
            input_responses: None,
            quiet: ctx.extensions.get::<Quiet>().cloned().unwrap_or_default(),
        }
    }

    /// Marks this call as one that changed and returned nothing (a claim that found no task):
    /// it leaves no `tool.call` event, so idle workers polling do not fill the audit log.
    pub fn unaudited(&self) {
        self.quiet.0.store(true, Ordering::Relaxed);
    }

    /// Sends a progress notification if the client asked for them; failures are only logged
    /// (a client that stopped listening must not break the call).
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: impl Into<String>) {
        let Some(token) = self.progress_token.clone() else {
            return;
        };
        let mut param = ProgressNotificationParam::new(token, progress).with_message(message);
        if let Some(total) = total {
            param = param.with_total(total);
        }
        if let Err(e) = self.peer.notify_progress(param).await {
            tracing::debug!(error = %e, "could not send a progress notification");
        }
    }
}

/// How audit records and approvals name a client: `client:NAME/VER`, and over HTTP
/// `client:NAME/VER as NAME (sub SUBJECT, via SOURCE)`. Every path that records a client's
/// call (rmcp's, the stdio fast path's) names it through this.
pub fn client_actor(client: String, principal: Option<&crate::auth::Principal>) -> Actor {
    let client = printable(&client);
    match principal {
        Some(p) => Actor::new(ActorKind::Client, format!("{client} as {}", p.describe())),
        None => Actor::new(ActorKind::Client, client),
    }
}

/// A client's self-description as the audit log keeps it: control characters (a NUL, which
/// PostgreSQL cannot store in text, escape sequences a terminal would act on) become U+FFFD,
/// the same on both backends so the chain's hashes do not depend on where it is stored.
pub fn printable(client: &str) -> String {
    client
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// The principal `crate::http`'s middleware found for this request (over HTTP), if any.
pub fn principal_of(ctx: &RequestContext<RoleServer>) -> Option<crate::auth::Principal> {
    let parts = ctx.extensions.get::<http::request::Parts>()?;
    // Every HTTP request passes the bearer check, which puts a principal here; should one ever
    // arrive without, it gets no roles rather than stdio's everything.
    Some(
        parts
            .extensions
            .get::<crate::auth::Principal>()
            .cloned()
            .unwrap_or_else(|| crate::auth::Principal {
                subject: "unauthenticated".into(),
                name: "unauthenticated".into(),
                roles: Vec::new(),
                source: crate::auth::Source::LocalToken,
            }),
    )
}

/// Whether a request or notification came over HTTP (rmcp puts the request's head in its
/// extensions there, and only there).
pub fn over_http(extensions: &rmcp::model::Extensions) -> bool {
    extensions.get::<http::request::Parts>().is_some()
}

/// Which session a request belongs to, as a key: over HTTP the `Mcp-Session-Id` rmcp gave the
/// client at initialize; on stdio (one session per process) the empty string. Not logged: it
/// names a live session.
pub fn session_key(extensions: &rmcp::model::Extensions) -> String {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("http:{v}"))
        .unwrap_or_default()
}

/// Stateless from 2026-07-28 on; ISO dates compare lexically as they do in time.
pub fn era_of(version: Option<&ProtocolVersion>) -> Era {
    match version {
        Some(v) if v.as_str() >= ProtocolVersion::V_2026_07_28.as_str() => Era::Stateless,
        _ => Era::Legacy,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_name_keeps_no_control_characters() {
        assert_eq!(
            super::printable("evil\0name/1\u{1b}[31m"),
            "evil\u{fffd}name/1\u{fffd}[31m"
        );
        assert_eq!(super::printable("claude-code/2.1"), "claude-code/2.1");
    }
}
