//! A call of a child's tool over rmcp (every call but the fast path's): the instance's circuit
//! breaker, the type's call timeout, the client's cancellation, and retries for read-only tools.

use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResponse};
use rmcp::service::ServiceError;
use tokio_util::sync::CancellationToken;

use super::{CallToolResult, JsonObject};
use crate::instance::breaker::ProbeGuard;
use crate::instance::policy::ToolAccess;
use crate::instance::{InstanceError, InstanceService, Target, lock};

impl InstanceService {
    /// Forwards a call to the child: breaker, timeout, and retries for read-only tools.
    pub async fn forward(
        &self,
        target: &Target,
        arguments: Option<JsonObject>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, InstanceError> {
        let attempts = if target.tool.read_only {
            1 + target.live.ty.read_only_retries
        } else {
            1
        };
        self.forward_attempts(target, arguments, cancel, attempts)
            .await
    }

    /// A plain call of an allowed tool, for the fast path: the target if it is one.
    pub fn fast_target(&self, name: &str) -> Option<Target> {
        match self.resolve_exposed(name)? {
            Ok(t) if t.tool.access == ToolAccess::Allowed && t.conn.fast.is_some() => Some(t),
            _ => None,
        }
    }

    /// [`Self::forward`] with a given number of attempts.
    pub(crate) async fn forward_attempts(
        &self,
        target: &Target,
        arguments: Option<JsonObject>,
        cancel: &CancellationToken,
        attempts: u32,
    ) -> Result<CallToolResult, InstanceError> {
        let live = &target.live;
        let ty = &live.ty;
        let mut conn = target.conn.clone();
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                // A restart in between brings a new connection.
                if let Some(c) = live.conn() {
                    conn = c;
                }
            }
            let now = Instant::now();
            let admitted = {
                let mut b = lock(&live.breaker);
                b.admit(now).map_err(|wait| (wait, b.failures))
            };
            let probe = match admitted {
                Ok(probe) => probe,
                Err((wait, failures)) => {
                    return Err(last.unwrap_or(InstanceError::CircuitOpen {
                        name: live.name.clone(),
                        failures,
                        retry_after_ms: wait.as_millis() as u64,
                    }));
                }
            };
            // However this attempt ends (a verdict, a cancel, the caller dropping the call),
            // a probe does not stay in flight.
            let _probe = probe.map(|id| ProbeGuard { live, id });
            let mut params = CallToolRequestParams::new(target.tool.original.clone());
            params.arguments = arguments.clone();
            let call = conn.peer.call_tool_once(params);
            let outcome = tokio::select! {
                r = tokio::time::timeout(ty.call_timeout(), call) => r,
                () = cancel.cancelled() => return Err(InstanceError::Cancelled),
            };
            let err = match outcome {
                Ok(Ok(CallToolResponse::Complete(result))) => {
                    lock(&live.breaker).success();
                    return Ok(conn.redact.serde(result));
                }
                Ok(Ok(_)) => {
                    lock(&live.breaker).success();
                    return Err(InstanceError::Child {
                        name: live.name.clone(),
                        code: -32603,
                        message: "the child answered with an input-required or task result, which the coordinator does not relay".into(),
                        data: None,
                    });
                }
                Ok(Err(ServiceError::McpError(e))) => {
                    let e = conn.redact.serde(e);
                    let client_fault = matches!(e.code.0, -32602 | -32601 | -32600 | -32700);
                    if client_fault {
                        lock(&live.breaker).success();
                        return Err(InstanceError::Child {
                            name: live.name.clone(),
                            code: e.code.0,
                            message: e.message.to_string(),
                            data: e.data,
                        });
                    }
                    InstanceError::Child {
                        name: live.name.clone(),
                        code: e.code.0,
                        message: e.message.to_string(),
                        data: e.data,
                    }
                }
                Ok(Err(e)) => InstanceError::Transport {
                    name: live.name.clone(),
                    message: e.to_string(),
                },
                Err(_) => InstanceError::Timeout {
                    name: live.name.clone(),
                    tool: target.tool.original.clone(),
                    seconds: ty.call_timeout_seconds,
                },
            };
            lock(&live.breaker).failure(
                ty.breaker.failures,
                Duration::from_secs_f64(ty.breaker.open_seconds),
                Instant::now(),
            );
            last = Some(err);
        }
        Err(last.unwrap_or(InstanceError::Transport {
            name: live.name.clone(),
            message: "no attempt was made".into(),
        }))
    }
}
