//! The way of a request to `/mcp`: its checks in the order they are made (each a function of
//! the module that owns it), rmcp's service, and what is done to the answer on its way back.
//!
//! One handler, not a layer per check: an axum layer boxes the rest of the way and clones its
//! state for every request, and seven of them took about 6% of the server's time per call.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{Front, answer, auth, limits, origin};
use crate::server::http::{BoundedSessions, McpHttp, McpService};

/// What the `/mcp` route holds: the front's checks, the sessions, and rmcp's service.
#[derive(Clone)]
pub struct McpRoute(Arc<Route>);

struct Route {
    front: Front,
    sessions: Arc<BoundedSessions>,
    service: McpService,
}

impl McpRoute {
    pub fn new(front: Front, mcp: McpHttp) -> Self {
        McpRoute(Arc::new(Route {
            front,
            sessions: mcp.sessions,
            service: mcp.service,
        }))
    }
}

/// A request to `/mcp`. In order: the `Origin` check, sizes, the failed-bearer limit of its
/// address, the bearer check, its principal's rate limit, the session limits, and then rmcp,
/// whose event stream of one response goes out as that response in JSON (`answer.rs`). (CORS,
/// when origins are configured, is a layer around this: a preflight is answered there, without
/// a token.)
pub async fn serve(State(route): State<McpRoute>, mut request: Request) -> Response {
    let Route {
        front,
        sessions,
        service,
    } = &*route.0;
    let limits = front.limits();
    if let Some(refused) = origin::refusal(front.origins(), request.headers()) {
        return refused;
    }
    if let Some(refused) = limits.size_refusal(request.headers()) {
        return refused;
    }
    let guesser = limits.guesser(&request);
    if let Some(refused) = guesser.and_then(|ip| limits.guessing_refusal(ip)) {
        return refused;
    }
    let principal = match auth::principal_of(front, request.headers()).await {
        Ok(principal) => principal,
        Err(refused) => {
            if let Some(ip) = guesser
                && refused.status() == StatusCode::UNAUTHORIZED
            {
                limits.failed(ip);
            }
            return refused;
        }
    };
    let owner = principal.key();
    if let Some(refused) = limits.rate_refusal(&owner) {
        return refused;
    }
    request.extensions_mut().insert(principal);
    let request = match limits::session_room(limits, sessions, request, &owner).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    let one_json = answer::eligible(&request);
    let response = service.handle(request).await;
    limits::record_session(sessions, response.headers(), owner).await;
    let response = if one_json {
        answer::one_json(response).await
    } else {
        response
    };
    limits.size_answer(response)
}
