//! How a tool is declared and called: the typed route builder (schemas from Rust types,
//! description from `tools/<name>.md`, annotations), argument parsing that names the bad field,
//! and the structured `{code, message, details, retryable}` error of a domain failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::ErrorData;
use rmcp::handler::server::tool::{ToolCallContext, schema_for_input, schema_for_output};
use rmcp::model::{
    CallToolResponse, CallToolResult, CreateTaskResult, InputRequiredResult, JsonObject, Tool,
    ToolAnnotations,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::schema;
use super::session::Call;
use crate::config::ToolGroup;
use crate::limits;

/// A closed set of domain error codes, stable for clients to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is well-formed but asks for something impossible (an empty time range).
    InvalidRequest,
    /// The thing named does not exist.
    NotFound,
    /// The request clashes with the current state (already decided, expired).
    Conflict,
    /// Policy does not allow this here (for example approving a critical action in the client).
    Forbidden,
    /// The client or a child could not be reached; try again or use another channel.
    Unavailable,
    /// The agent token is missing, forged, expired or revoked.
    Unauthorized,
    /// The reporting agent does not hold the task's lease (it expired or was reassigned).
    NotLeaseholder,
    /// The database was locked by another process for too long; try again.
    StorageBusy,
    /// The disk holding the database is full; nothing was written. Try again once there is
    /// room.
    StorageFull,
    /// The database failed; see the message.
    StorageError,
    /// A bug or an unexpected state in the coordinator.
    Internal,
}

/// A domain failure, returned as a tool result with `isError: true` and this object as its
/// structured content.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ToolError {
    pub code: ErrorCode,
    pub message: String,
    /// Machine-readable context: the field, the values involved.
    pub details: Value,
    /// Whether the same call may succeed if repeated later.
    pub retryable: bool,
}

impl ToolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ToolError {
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
            retryable: matches!(
                code,
                ErrorCode::StorageBusy | ErrorCode::StorageFull | ErrorCode::Unavailable
            ),
        }
    }

    /// A store failure: `storage_busy`, `storage_full` (both retryable) or `storage_error`.
    pub fn store(e: &crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let code = match e {
            StoreError::Busy { .. } => ErrorCode::StorageBusy,
            StoreError::Full { .. } => ErrorCode::StorageFull,
            _ => ErrorCode::StorageError,
        };
        ToolError::new(code, e.to_string())
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    fn into_result(self) -> CallToolResult {
        let value = serde_json::to_value(&self).unwrap_or_else(|_| json!({"code": "internal"}));
        CallToolResult::structured_error(value)
    }
}

/// The outcome of a tool handler: a typed result, a domain failure, or a protocol error
/// (arguments that are valid JSON but not acceptable values, reported as JSON-RPC errors).
pub enum Failure {
    Domain(ToolError),
    Protocol(ErrorData),
}

impl From<ToolError> for Failure {
    fn from(e: ToolError) -> Self {
        Failure::Domain(e)
    }
}

/// A JSON-RPC invalid-params error naming the field and what was expected.
pub fn invalid_field(tool: &str, field: &str, expected: impl std::fmt::Display) -> ErrorData {
    ErrorData::invalid_params(
        format!("{tool}: invalid argument `{field}`: {expected}"),
        Some(json!({"tool": tool, "field": field})),
    )
}

/// Static facts about a tool.
#[derive(Clone, Copy)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    /// The prose the model reads, from `tools/<name>.md`.
    pub description: &'static str,
    pub group: ToolGroup,
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub open_world: bool,
}

impl ToolSpec {
    fn annotations(&self) -> ToolAnnotations {
        ToolAnnotations::with_title(self.title)
            .read_only(self.read_only)
            .destructive(self.destructive)
            .idempotent(self.idempotent)
            .open_world(self.open_world)
    }
}

/// A tool's static facts (closed-world: no tool of ours reaches outside this machine).
#[allow(clippy::too_many_arguments)]
pub fn spec(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    group: ToolGroup,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
) -> ToolSpec {
    ToolSpec {
        name,
        title,
        description,
        group,
        read_only,
        destructive,
        idempotent,
        open_world: false,
    }
}

/// The call half of a route: parses the arguments, runs the handler and maps its result.
pub type Handler = Arc<
    dyn Fn(
            ToolCallContext<'_, Coordinator>,
        ) -> Pin<Box<dyn Future<Output = Result<CallToolResponse, ErrorData>> + Send>>
        + Send
        + Sync,
>;

/// A tool: its static facts, how to build its definition, and how to call it.
///
/// The definition (schemas generated from the Rust types, made portable) is built only when
/// asked for: for every tool at once that is most of a cold start's own work, and a client
/// that never lists tools never needs it.
pub struct Route {
    pub spec: ToolSpec,
    define: fn(&ToolSpec) -> Tool,
    pub call: Handler,
}

impl Route {
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn group(&self) -> ToolGroup {
        self.spec.group
    }

    /// The tool definition clients see in `tools/list`.
    pub fn definition(&self) -> Tool {
        (self.define)(&self.spec)
    }
}

/// What a tool that may need input from a person returns.
pub enum Reply<Out> {
    /// The final result.
    Done(Out),
    /// 2026-07-28 only: ask the client for input and have it retry the call with the answers.
    InputRequired(InputRequiredResult),
    /// Only for clients that declared the tasks extension (SEP-2663): the work goes on as a
    /// task the client polls with `tasks/get`.
    Task(CreateTaskResult),
}

/// Builds a route whose input and output schemas come from `In` and `Out`. The handler gets the
/// coordinator, the parsed input and the call's context, and never sees rmcp types.
pub fn route<In, Out, F, Fut>(spec: ToolSpec, handler: F) -> Route
where
    In: DeserializeOwned + JsonSchema + Send + 'static,
    Out: Serialize + JsonSchema + Send + 'static,
    F: Fn(Coordinator, In, Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Out, Failure>> + Send + 'static,
{
    let handler = Arc::new(handler);
    route_with_input(spec, move |c, input, call| {
        let fut = handler(c, input, call);
        async move { fut.await.map(Reply::Done) }
    })
}

/// Like [`route`], for a tool that may answer with an input-required result (MRTR).
pub fn route_with_input<In, Out, F, Fut>(spec: ToolSpec, handler: F) -> Route
where
    In: DeserializeOwned + JsonSchema + Send + 'static,
    Out: Serialize + JsonSchema + Send + 'static,
    F: Fn(Coordinator, In, Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply<Out>, Failure>> + Send + 'static,
{
    let name = spec.name;
    let handler = Arc::new(handler);
    let schema: Arc<std::sync::OnceLock<Value>> = Arc::default();
    let call: Handler = Arc::new(move |ctx: ToolCallContext<'_, Coordinator>| {
        let handler = handler.clone();
        let coordinator = ctx.service.clone();
        let mut call = Call::from_context(&ctx.request_context, &coordinator);
        call.request_state = ctx.request_state;
        call.input_responses = ctx.input_responses;
        let arguments = ctx.arguments;
        let sizes = coordinator.settings().config.limits;
        let schema = schema.clone();
        Box::pin(async move {
            if let Some(args) = &arguments {
                let schema = schema.get_or_init(input_schema::<In>);
                limits::check_arguments(args, schema, sizes.max_payload())
                    .map_err(|e| invalid_field(name, &e.field, e.message))?;
            }
            let input: In = parse_arguments(name, arguments)?;
            match handler(coordinator, input, call).await {
                Ok(Reply::Done(out)) => {
                    let mut value = serde_json::to_value(out).map_err(|e| {
                        ErrorData::internal_error(
                            format!("{name}: cannot encode result: {e}"),
                            None,
                        )
                    })?;
                    fit_result::<Out>(name, &mut value, sizes.response_budget());
                    Ok(CallToolResult::structured(value).into())
                }
                Ok(Reply::InputRequired(r)) => Ok(r.into()),
                Ok(Reply::Task(t)) => Ok(CallToolResponse::Task(t)),
                Err(Failure::Domain(e)) => Ok(e.into_result().into()),
                Err(Failure::Protocol(e)) => Err(e),
            }
        })
    });
    Route {
        spec,
        define: definition::<In, Out>,
        call,
    }
}

/// `In`'s input schema as JSON, or `{}` if it cannot be built.
fn input_schema<In: JsonSchema + 'static>() -> Value {
    schema_for_input::<In>()
        .map(|s| Value::Object((*s).clone()))
        .unwrap_or(Value::Bool(true))
}

/// Keeps a result's JSON-RPC line within the response budget: past it, the largest strings
/// and free-form values are cut with a `…[truncated N bytes]` marker, in a way the output
/// schema still allows. A large result gives its memory back once it has been written.
fn fit_result<Out: JsonSchema + 'static>(tool: &str, value: &mut Value, budget: usize) {
    // Nearly every result is far below both lines: known without writing it out.
    if limits::result_line_bound(value) <= budget.min(LARGE_RESULT) {
        return;
    }
    let mut line = limits::result_line_size(value);
    if line > LARGE_RESULT {
        release_memory_soon();
    }
    if line <= budget {
        return;
    }
    let before = line;
    let schema = Value::Object((*schema_for_output::<Out>()).clone());
    let mut cut = 0;
    // The line holds the value twice (structured and as text, escaped), so aim the value at
    // its share of the budget; a second pass covers what escaping added.
    for _ in 0..4 {
        let size = limits::json_size(value);
        let target = (size as u128 * budget as u128 / line as u128) as usize * 95 / 100;
        cut += limits::shrink(value, &schema, target);
        line = limits::result_line_size(value);
        if line <= budget {
            break;
        }
    }
    tracing::info!(
        tool,
        before,
        after = line,
        cut,
        budget,
        "result over the response budget: cut its largest values"
    );
}

/// A result line longer than this leaves freed memory behind worth giving back.
const LARGE_RESULT: usize = 1 << 20;

/// Trims the allocator shortly after now, once the answer being built has been written and
/// freed; calls in the meantime share one trim.
pub(super) fn release_memory_soon() {
    static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PENDING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        PENDING.store(false, std::sync::atomic::Ordering::Release);
        let _ = tokio::task::spawn_blocking(limits::release_memory).await;
    });
}

/// A tool's definition: input and output schemas from `In` and `Out` (rewritten for clients
/// by [`schema`]), description, title and annotations from `spec`.
fn definition<In: JsonSchema + 'static, Out: JsonSchema + 'static>(spec: &ToolSpec) -> Tool {
    let input_schema = match schema_for_input::<In>() {
        Ok(s) => s,
        // The input types are ours and are all objects; an error here is a bug caught by tests.
        Err(e) => Arc::new(
            json!({"type": "object", "description": e})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    };
    Tool::new(
        spec.name,
        spec.description.trim(),
        schema::input(&input_schema),
    )
    .with_title(spec.title)
    .with_raw_output_schema(schema::output(&schema_for_output::<Out>()))
    .with_annotations(spec.annotations())
}

/// Deserializes tool arguments, naming the offending field on failure.
pub fn parse_arguments<T: DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
) -> Result<T, ErrorData> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names missing and unknown fields in its message; for type errors the path is
        // the only place the field appears.
        let field = if path == "." { None } else { Some(path) };
        let message = match &field {
            Some(f) => format!("{tool}: invalid argument `{f}`: {inner}"),
            None => format!("{tool}: invalid arguments: {inner}"),
        };
        ErrorData::invalid_params(message, Some(json!({"tool": tool, "field": field})))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        limit: u32,
        nested: Option<Inner>,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    fn obj(v: Value) -> Option<JsonObject> {
        v.as_object().cloned()
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_arguments::<Args>("t", obj(json!({"limit": "ten"}))).err();
        let msg = e.map(|e| e.message.to_string()).unwrap_or_default();
        assert!(
            msg.contains("`limit`") && msg.contains("expected u32"),
            "{msg}"
        );
        let e = parse_arguments::<Args>("t", obj(json!({"limit": 1, "nested": {"n": 300}}))).err();
        let msg = e.map(|e| e.message.to_string()).unwrap_or_default();
        assert!(msg.contains("nested.n"), "{msg}");
        let e = parse_arguments::<Args>("t", obj(json!({}))).err();
        let msg = e.map(|e| e.message.to_string()).unwrap_or_default();
        assert!(msg.contains("missing field `limit`"), "{msg}");
        let e = parse_arguments::<Args>("t", obj(json!({"limit": 1, "limt": 2}))).err();
        let msg = e.map(|e| e.message.to_string()).unwrap_or_default();
        assert!(msg.contains("unknown field `limt`"), "{msg}");
    }
}
