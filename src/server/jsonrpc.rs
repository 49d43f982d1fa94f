//! What the stdio relay answers itself so that every JSON-RPC request gets exactly one
//! response: a line that is not JSON (-32700), a message that is not a valid request
//! (-32600, with the request's id when it can be read, as written when no `RequestId` holds
//! it), params serde_json reads into no value (-32602: a lone surrogate escape, `1e400`), and a
//! request whose id is already in flight. Batches are split here and answered as one array.
//! Only messages rmcp reads without complaint go on to it; rmcp would drop the rest without a
//! word, or answer without the id.

use std::borrow::Cow;

use rmcp::model::{ErrorData, RequestId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// The deepest nesting of arrays and objects a message may have: serde_json's recursion
/// limit, under which rmcp parses. Deeper input is refused before anything parses it.
pub(super) const MAX_DEPTH: usize = 127;

/// One message read from the client, sorted.
pub(super) enum Message<'a> {
    /// Nothing but whitespace: skipped, as rmcp does.
    Blank,
    /// A request rmcp can read.
    Request { id: RequestId, method: Cow<'a, str> },
    /// A notification rmcp can read.
    Notification {
        method: Cow<'a, str>,
        params: Option<&'a RawValue>,
    },
    /// The client's answer to a request of the server's.
    Response,
    /// A JSON-RPC batch: its elements, each a message of its own.
    Batch(Vec<&'a RawValue>),
    /// Not for rmcp: answered with this error, or dropped without a word if `None` (a
    /// notification is never answered, even when its params are wrong).
    Refused(Option<Refusal>),
}

/// The error the relay answers a message with.
pub(super) struct Refusal {
    /// The request's id, when it could be read.
    pub id: Option<RequestId>,
    /// The id exactly as written, when it is a number or string that is no [`RequestId`] (an
    /// integer beyond 64 bits, a string with a lone surrogate): echoed as written, since the
    /// client can read it back (JSON-RPC 2.0 §5 leaves `null` for ids that cannot be read).
    pub written_id: Option<Box<RawValue>>,
    pub error: ErrorData,
}

impl Refusal {
    fn parse(message: impl std::fmt::Display) -> Message<'static> {
        Message::Refused(Some(Refusal {
            id: None,
            written_id: None,
            error: ErrorData::parse_error(format!("parse error: {message}"), None),
        }))
    }

    fn invalid(id: Option<RequestId>, message: impl std::fmt::Display) -> Message<'static> {
        Message::Refused(Some(Refusal {
            id,
            written_id: None,
            error: ErrorData::invalid_request(format!("invalid request: {message}"), None),
        }))
    }

    /// The refusal of a request whose id is in flight already.
    pub fn duplicate(id: &RequestId) -> Refusal {
        Refusal {
            id: None,
            written_id: None,
            error: ErrorData::invalid_request(
                format!(
                    "invalid request: id {} is already used by a request in flight; each request needs an id of its own",
                    id_json(id)
                ),
                Some(json!({ "duplicate_id": id_json(id) })),
            ),
        }
    }

    /// The error response, one JSON object without a newline. `in_flight` says whether the
    /// id names a request still in flight: then this answer must not pass for its answer, so
    /// it gets a null id and names the id in `data`.
    pub fn to_json(&self, in_flight: impl Fn(&RequestId) -> bool) -> Vec<u8> {
        let mut error = self.error.clone();
        let id = match &self.id {
            Some(id) if in_flight(id) => {
                error.data = Some(json!({ "duplicate_id": id_json(id) }));
                Value::Null
            }
            Some(id) => id_json(id),
            None => match &self.written_id {
                // Written out as the client wrote it: no `Value` holds it.
                Some(raw) => {
                    let error = serde_json::to_string(&error).unwrap_or_default();
                    return format!(r#"{{"jsonrpc":"2.0","id":{},"error":{error}}}"#, raw.get())
                        .into_bytes();
                }
                None => Value::Null,
            },
        };
        let v = json!({ "jsonrpc": "2.0", "id": id, "error": error });
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

fn id_json(id: &RequestId) -> Value {
    id.clone().into_json_value()
}

/// The members of a message, each as written (`null` included: present, unlike absent).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Whether the text is one JSON value (any depth).
fn is_json(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

/// Whether arrays and objects nest deeper than [`MAX_DEPTH`] (outside strings). Counting is
/// all it takes, and it cannot overflow a stack however deep the input goes.
pub(super) fn too_deep(text: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// What kind of JSON value a raw value is, for error messages.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Sorts one line (or one element of a batch) from the client.
pub(super) fn classify(line: &[u8], in_batch: bool) -> Message<'_> {
    let text = line
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(line)
        .trim_ascii();
    let Some(&first) = text.first() else {
        return Message::Blank;
    };
    if too_deep(text) {
        return Refusal::parse(format_args!(
            "arrays and objects nest deeper than {MAX_DEPTH} levels"
        ));
    }
    match first {
        b'[' if !in_batch => match serde_json::from_slice::<Vec<&RawValue>>(text) {
            Ok(items) if items.is_empty() => Refusal::invalid(None, "an empty batch"),
            Ok(items) => Message::Batch(items),
            Err(e) if is_json(text) => Refusal::invalid(None, e),
            Err(e) => Refusal::parse(e),
        },
        b'[' => Refusal::invalid(None, "a batch inside a batch"),
        b'{' => match serde_json::from_slice::<Envelope<'_>>(text) {
            Ok(envelope) => check(envelope),
            Err(e) if is_json(text) => Refusal::invalid(None, e),
            Err(e) => Refusal::parse(e),
        },
        _ if is_json(text) => Refusal::invalid(None, "a JSON-RPC message is an object"),
        _ => match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            Err(e) => Refusal::parse(e),
            Ok(_) => Refusal::invalid(None, "a JSON-RPC message is an object"),
        },
    }
}

/// Checks a message's members as rmcp will read them; a refusal of a request whose id is
/// written but no [`RequestId`] repeats the id as written.
fn check(m: Envelope<'_>) -> Message<'_> {
    let answer = m.result.is_some() || m.error.is_some();
    let written = m.id.filter(|raw| {
        !answer
            && matches!(
                raw.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9')
            )
            && serde_json::from_str::<RequestId>(raw.get()).is_err()
    });
    let mut message = check_members(m);
    if let (Message::Refused(Some(r)), Some(raw)) = (&mut message, written)
        && r.id.is_none()
    {
        r.written_id = Some(raw.to_owned());
    }
    message
}

fn check_members(m: Envelope<'_>) -> Message<'_> {
    let answer = m.result.is_some() || m.error.is_some();
    let id: Option<Result<RequestId, _>> = m.id.map(|raw| serde_json::from_str(raw.get()));
    // An answer's id is the server's, not a request of the client's: never echoed.
    let reply_id = match &id {
        Some(Ok(id)) if !answer => Some(id.clone()),
        _ => None,
    };
    let version_ok = m.jsonrpc.is_some_and(|v| {
        v.get() == "\"2.0\"" || serde_json::from_str::<String>(v.get()).is_ok_and(|v| v == "2.0")
    });
    if !version_ok {
        return Refusal::invalid(reply_id, "`jsonrpc` must be \"2.0\"");
    }
    let Some(method) = m.method else {
        return check_answer(m, reply_id);
    };
    let Ok(method) = serde_json::from_str::<Cow<'_, str>>(method.get()) else {
        return Refusal::invalid(reply_id, "`method` must be a string");
    };
    if answer {
        return Refusal::invalid(None, "a message with a `method` has no `result` or `error`");
    }
    // `null` params are read as none, as rmcp reads them.
    let params_kind = m
        .params
        .filter(|p| !matches!(p.get().as_bytes().first(), Some(b'{' | b'n')))
        .map(kind);
    match id {
        None => match params_kind {
            None => Message::Notification {
                method,
                params: m.params,
            },
            Some(_) => Message::Refused(None),
        },
        Some(Err(_)) => Refusal::invalid(None, id_problem(m.id)),
        Some(Ok(id)) => match params_kind {
            None => match m.params.and_then(|p| unreadable(p.get())) {
                // rmcp reads params into values; what serde_json cannot read into one would be
                // dropped there without a word.
                Some(problem) => Message::Refused(Some(Refusal {
                    id: Some(id),
                    written_id: None,
                    error: ErrorData::invalid_params(
                        format!(
                            "invalid params of `{method}`: {problem}: strings must be Unicode text (no lone surrogate escape such as \\ud800) and numbers within the range of a 64-bit float"
                        ),
                        None,
                    ),
                })),
                None => Message::Request { id, method },
            },
            // Structured but not what any MCP method takes: the request is well formed, its
            // params are not.
            Some("an array") => Message::Refused(Some(Refusal {
                id: Some(id),
                written_id: None,
                error: ErrorData::invalid_params(
                    format!(
                        "invalid params of `{method}`: `params` must be an object, not an array"
                    ),
                    None,
                ),
            })),
            Some(k) => Refusal::invalid(
                Some(id),
                format_args!("`params` must be an object, not {k}"),
            ),
        },
    }
}

/// Whether well-formed JSON text holds something serde_json reads into no value, so that rmcp
/// would drop the message without a word: a lone surrogate escape (`"\ud800"`), a number
/// beyond f64 (`1e400`). Read without building anything.
fn unreadable(text: &str) -> Option<String> {
    serde_json::from_str::<Readable>(text)
        .err()
        .map(|e| e.to_string())
}

/// A JSON value read in full (strings decoded, numbers converted) and kept nowhere.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Readable)
    }
}

impl<'de> serde::de::Visitor<'de> for Readable {
    type Value = Readable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<Readable, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

/// Why an id that is written is no [`RequestId`].
fn id_problem(raw: Option<&RawValue>) -> &'static str {
    match raw.and_then(|r| r.get().as_bytes().first()) {
        Some(b'-' | b'0'..=b'9') => {
            "`id` must be a string or an integer from -2^63 to 2^63-1 (this one is out of range or has a fraction)"
        }
        Some(b'"') => {
            "`id` must be a string of Unicode text (this one has a lone surrogate escape)"
        }
        _ => "`id` must be a string or an integer",
    }
}

/// Checks a message without a method: the client's answer to a request of the server's.
fn check_answer<'a>(m: Envelope<'a>, reply_id: Option<RequestId>) -> Message<'a> {
    match (m.result, m.error) {
        (None, None) => Refusal::invalid(reply_id, "`method` is missing"),
        (Some(_), Some(_)) => Refusal::invalid(None, "an answer has `result` or `error`, not both"),
        (Some(_), None) => match m.id.map(|i| serde_json::from_str::<RequestId>(i.get())) {
            Some(Ok(_)) => Message::Response,
            _ => Refusal::invalid(None, "an answer's `id` must be a string or an integer"),
        },
        (None, Some(error)) => {
            let id_ok = m.id.is_none_or(|i| {
                i.get() == "null" || serde_json::from_str::<RequestId>(i.get()).is_ok()
            });
            if !id_ok {
                return Refusal::invalid(None, "an answer's `id` must be a string or an integer");
            }
            match serde_json::from_str::<ErrorData>(error.get()) {
                Ok(_) => Message::Response,
                Err(e) => Refusal::invalid(None, format_args!("`error`: {e}")),
            }
        }
    }
}

/// The id of the request a `notifications/cancelled` names.
pub(super) fn cancelled_id(params: Option<&RawValue>) -> Option<(RequestId, &RawValue)> {
    #[derive(Deserialize)]
    struct Cancelled<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a RawValue,
    }
    let p: Cancelled<'_> = serde_json::from_str(params?.get()).ok()?;
    let id = serde_json::from_str(p.request_id.get()).ok()?;
    Some((id, p.request_id))
}

/// The error for a request rmcp read as a custom request: a method MCP defines with params
/// its type does not take is -32602 naming what is wrong; any other method is -32601.
// Deprecated request types (logging, legacy subscriptions) are still served to legacy clients.
#[allow(deprecated)]
pub(super) fn custom_request_error(method: &str, params: Option<&Value>) -> ErrorData {
    use rmcp::model::*;
    fn check<T: serde::de::DeserializeOwned>(v: Value) -> Option<String> {
        serde_json::from_value::<T>(v).err().map(|e| e.to_string())
    }
    let mut v = json!({ "method": method });
    if let Some(p) = params {
        v["params"] = p.clone();
    }
    macro_rules! known {
        ($($name:literal => $ty:ty),* $(,)?) => {
            match method {
                $($name => check::<$ty>(v),)*
                _ => {
                    return ErrorData::new(
                        ErrorCode::METHOD_NOT_FOUND,
                        format!("unknown method `{method}`"),
                        Some(json!({ "method": method })),
                    );
                }
            }
        };
    }
    let problem = known! {
        "ping" => PingRequest,
        "initialize" => InitializeRequest,
        "server/discover" => DiscoverRequest,
        "completion/complete" => CompleteRequest,
        "logging/setLevel" => SetLevelRequest,
        "prompts/get" => GetPromptRequest,
        "prompts/list" => ListPromptsRequest,
        "resources/list" => ListResourcesRequest,
        "resources/templates/list" => ListResourceTemplatesRequest,
        "resources/read" => ReadResourceRequest,
        "subscriptions/listen" => SubscriptionsListenRequest,
        "resources/subscribe" => SubscribeRequest,
        "resources/unsubscribe" => UnsubscribeRequest,
        "tools/call" => CallToolRequest,
        "tools/list" => ListToolsRequest,
        "tasks/get" => GetTaskRequest,
        "tasks/update" => UpdateTaskRequest,
        "tasks/cancel" => CancelTaskRequest,
        "skills/list" => ListSkillsRequest,
        "skills/get" => GetSkillRequest,
        "resources/directory/read" => ReadResourceDirectoryRequest,
    };
    let problem = problem.unwrap_or_else(|| "they do not match its schema".into());
    ErrorData::invalid_params(
        format!("invalid params of `{method}`: {problem}"),
        Some(json!({ "method": method })),
    )
}
