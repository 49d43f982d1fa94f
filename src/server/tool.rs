//! How a tool is declared and called: the typed route builder (schemas from Rust types,
//! description from `tools/<name>.md`, annotations), argument parsing that names the bad field,
//! and the structured `{code, message, details, retryable}` error of a failed call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::ErrorData;
use rmcp::handler::server::tool::{ToolCallContext, schema_for_input, schema_for_output};
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, CreateTaskResult, InputRequiredResult,
    JsonObject, Tool, ToolAnnotations,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Coordinator;
use super::schema;
use super::session::Call;
use crate::auth::Permission;
use crate::config::ToolGroup;
use crate::limits;

pub use crate::fault::ErrorCode;
use crate::fault::{Fault, IntoFault};

/// A failed call the model can act on (a domain failure, or an argument to correct), returned
/// as a tool result with `isError: true` and this object as its structured content.
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

    /// The tool result carrying this error: the object as structured content, and as text
    /// the same JSON, or for an argument error its message alone.
    pub(super) fn into_result(self) -> CallToolResult {
        let value = serde_json::to_value(&self).unwrap_or_else(|_| json!({"code": "internal"}));
        let mut result = CallToolResult::structured_error(value);
        // The message names the field and what was expected, all a model needs to correct
        // the call; other errors keep the whole object as text, as their details (an approval
        // id, the command a person runs) are not always in the message.
        if self.code == ErrorCode::InvalidArgument {
            result.content = vec![ContentBlock::text(self.message)];
        }
        result
    }
}

/// Why a tool handler did not produce its result.
pub enum Failure {
    /// A domain failure or a refused argument: a tool result with `isError: true`, which the
    /// model sees and can act on.
    Domain(ToolError),
    /// A request field that is not a tool argument does not hold (a replayed or altered
    /// `requestState`, `inputResponses` without the answer): a JSON-RPC error, since the
    /// client sent it and the model cannot correct it.
    Protocol(ErrorData),
}

impl From<ToolError> for Failure {
    fn from(e: ToolError) -> Self {
        Failure::Domain(e)
    }
}

/// A domain error as the tool failure the client sees (see [`IntoFault`], implemented next to
/// each domain error): `tool` names the call in an argument error.
pub fn failure(tool: &str, e: impl IntoFault) -> Failure {
    match e.into_fault() {
        Fault::Error {
            code,
            message,
            details,
            retryable,
        } => {
            let mut err = ToolError::new(code, message).with_details(details);
            if let Some(retryable) = retryable {
                err.retryable = retryable;
            }
            Failure::Domain(err)
        }
        Fault::Invalid { field, message } => Failure::Domain(invalid_field(tool, &field, message)),
        Fault::Store(e) => Failure::Domain(ToolError::store(&e)),
        // A replayed or unknown question handle is a bad request from the client.
        Fault::Refused(message) => super::gate::refuse_state(tool, message),
    }
}

/// An `invalid_argument` error naming the field and what was expected.
pub fn invalid_field(tool: &str, field: &str, expected: impl std::fmt::Display) -> ToolError {
    ToolError::new(
        ErrorCode::InvalidArgument,
        format!("{tool}: invalid argument `{field}`: {expected}"),
    )
    .with_details(json!({"tool": tool, "field": field}))
}

/// Static facts about a tool.
#[derive(Clone, Copy)]
pub struct ToolSpec {
    pub name: &'static str,
    /// What a principal needs to see and call it over HTTP (stdio has no principal). A field
    /// without a default, so that no tool can be declared without one.
    pub permission: Permission,
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
    permission: Permission,
    title: &'static str,
    description: &'static str,
    group: ToolGroup,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
) -> ToolSpec {
    ToolSpec {
        name,
        permission,
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

    pub fn permission(&self) -> Permission {
        self.spec.permission
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
            // Refused arguments are results the model sees and corrects (MCP 2025-11-25), not
            // JSON-RPC errors.
            if let Some(args) = &arguments {
                let schema = schema.get_or_init(input_schema::<In>);
                if let Err(e) = limits::check_arguments(args, schema, sizes.max_payload()) {
                    return Ok(invalid_field(name, &e.field, e.message)
                        .into_result()
                        .into());
                }
            }
            let input: In = match parse_arguments(name, arguments) {
                Ok(input) => input,
                Err(e) => return Ok(e.into_result().into()),
            };
            match handler(coordinator, input, call).await {
                Ok(Reply::Done(out)) => match serde_json::to_value(out) {
                    Ok(mut value) => {
                        fit_result::<Out>(name, &mut value, sizes.response_budget());
                        Ok(CallToolResult::structured(value).into())
                    }
                    Err(e) => Ok(ToolError::new(
                        ErrorCode::Internal,
                        format!("{name}: cannot encode result: {e}"),
                    )
                    .into_result()
                    .into()),
                },
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
        let _ = tokio::task::spawn_blocking(crate::allocator::release_memory).await;
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
) -> Result<T, ToolError> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names missing and unknown fields in its message; for type errors the path is
        // the only place the field appears. `details.field` is the field's whole path.
        let at = if path == "." { None } else { Some(path) };
        let message = match &at {
            Some(f) => format!("{tool}: invalid argument `{f}`: {inner}"),
            None => format!("{tool}: invalid arguments: {inner}"),
        };
        let field = match (missing_field(&inner), at) {
            (Some(name), Some(at)) => Some(format!("{at}.{name}")),
            (Some(name), None) => Some(name.to_string()),
            (None, at) => at,
        };
        ToolError::new(ErrorCode::InvalidArgument, message)
            .with_details(json!({"tool": tool, "field": field}))
    })
}

/// The field serde names in a missing-field message, which the path does not reach (it stops
/// at the object that lacks the field).
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        // The message and `details.field` of a refused argument.
        let refused = |args: Value| {
            let e = parse_arguments::<Args>("t", obj(args)).err().unwrap();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(!e.retryable);
            assert_eq!(e.details["tool"], "t");
            (
                e.message,
                e.details["field"].as_str().unwrap_or("").to_string(),
            )
        };
        let (msg, field) = refused(json!({"limit": "ten"}));
        assert!(
            msg.contains("`limit`") && msg.contains("expected u32"),
            "{msg}"
        );
        assert_eq!(field, "limit");
        let (msg, field) = refused(json!({"limit": 1, "nested": {"n": 300}}));
        assert!(msg.contains("nested.n"), "{msg}");
        assert_eq!(field, "nested.n");
        let (msg, field) = refused(json!({}));
        assert!(msg.contains("missing field `limit`"), "{msg}");
        assert_eq!(field, "limit");
        let (msg, field) = refused(json!({"limit": 1, "limt": 2}));
        assert!(msg.contains("unknown field `limt`"), "{msg}");
        assert_eq!(field, "limt");
        let (msg, field) = refused(json!({"limit": 1, "nested": {}}));
        assert!(msg.contains("missing field `n`"), "{msg}");
        assert_eq!(field, "nested.n");
    }

    #[test]
    fn an_argument_error_reads_as_its_message() {
        let r = invalid_field("t", "limit", "expected 1 to 5, got 9").into_result();
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.clone().unwrap();
        assert_eq!(s["code"], "invalid_argument");
        assert_eq!(s["retryable"], false);
        assert_eq!(s["details"], json!({"tool": "t", "field": "limit"}));
        let text: Vec<_> = r.content.iter().filter_map(|c| c.as_text()).collect();
        assert_eq!(text.len(), 1);
        assert_eq!(
            text[0].text,
            "t: invalid argument `limit`: expected 1 to 5, got 9"
        );
    }
}
