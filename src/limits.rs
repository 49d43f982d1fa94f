//! Every bound in one place: the range of each numeric setting and tool argument, the length of
//! each short string a tool takes, the `[limits]` sizes of payloads and results, and the JSON
//! measuring and trimming that enforces them. Config validation, the handlers and the generated
//! schemas all read the constants here, so they cannot disagree.

use std::fmt::Display;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An inclusive range a number must lie in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range<T> {
    pub min: T,
    pub max: T,
}

impl<T: PartialOrd + Display + Copy> Range<T> {
    pub const fn new(min: T, max: T) -> Self {
        Range { min, max }
    }

    /// Whether `v` lies in the range (a NaN never does).
    pub fn contains(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }

    /// What a value must be, for messages: `expected 0 to 100`.
    pub fn expected(&self) -> String {
        format!("expected {} to {}", self.min, self.max)
    }

    /// `Err("KEY: expected MIN to MAX, got V")` when `v` is outside.
    pub fn check(&self, key: &str, v: T) -> Result<(), String> {
        if self.contains(v) {
            Ok(())
        } else {
            Err(format!("{key}: {}, got {v}", self.expected()))
        }
    }
}

// --- Tasks (`[tasks]` and the task tools) ---

/// A task's lease, in seconds: `timeout_seconds` of `task_submit`, a stage's timeout and
/// `tasks.default_timeout_seconds`.
pub const TASK_TIMEOUT_SECONDS: Range<f64> = Range::new(0.05, 604_800.0);
/// Retries of a task: `max_retries` of `task_submit`, a stage's `retries` and
/// `tasks.default_max_retries`.
pub const TASK_MAX_RETRIES: Range<u32> = Range::new(0, 100);
/// `tasks.backoff_base_ms`: the first retry delay.
pub const TASK_BACKOFF_BASE_MS: Range<u64> = Range::new(1, 3_600_000);
/// `tasks.backoff_max_ms`: the longest retry delay (at least the base).
pub const TASK_BACKOFF_MAX_MS: Range<u64> = Range::new(1, 86_400_000);
/// `max_tasks` of `task_claim`.
pub const CLAIM_MAX_TASKS: Range<u32> = Range::new(1, 100);
/// How many reports one `task_report` may carry in `reports` (as many as a claim may lease).
pub const REPORT_BATCH: Range<u32> = CLAIM_MAX_TASKS;
/// `wait_seconds` of `task_claim` (a long poll).
pub const CLAIM_WAIT_SECONDS: Range<f64> = Range::new(0.0, 60.0);
/// A load figure (0..1): `load` of `task_claim` and `agent_heartbeat`, `agents.load_ceiling`.
pub const LOAD: Range<f64> = Range::new(0.0, 1.0);
/// `retention_seconds` of `queue_purge`: up to 100 years (past that, counting back from now in
/// milliseconds would overflow).
pub const PURGE_RETENTION_SECONDS: Range<u64> = Range::new(0, 3_153_600_000);

// --- The database (`[database]`) ---

/// `database.busy_timeout_ms`: one tool call's lock-wait budget.
pub const BUSY_TIMEOUT_MS: Range<u64> = Range::new(100, 600_000);

// --- The store (`[store]`) ---

/// `store.pool_size`: PostgreSQL connections one coordinator opens at most.
pub const POOL_SIZE: Range<u32> = Range::new(1, 256);

// --- Agents (`[agents]`) ---

/// `agents.heartbeat_interval_ms`.
pub const HEARTBEAT_INTERVAL_MS: Range<u64> = Range::new(50, 86_400_000);
/// `agents.token_ttl_seconds`.
pub const TOKEN_TTL_SECONDS: Range<u64> = Range::new(60, 31_536_000);
/// `agents.offer_window_ms`.
pub const OFFER_WINDOW_MS: Range<u64> = Range::new(0, 3_600_000);

// --- Approvals (`[approvals]`) ---

/// `approvals.default_expiry_seconds` and a rule's `expiry_seconds`.
pub const APPROVAL_EXPIRY_SECONDS: Range<u64> = Range::new(1, 604_800);

// --- Pipelines (`[pipelines]`) ---

/// `pipelines.webhook_max_attempts`.
pub const WEBHOOK_MAX_ATTEMPTS: Range<u32> = Range::new(1, 100);
/// `pipelines.webhook_backoff_ms`.
pub const WEBHOOK_BACKOFF_MS: Range<u64> = Range::new(0, 3_600_000);
/// `pipelines.webhook_timeout_seconds`.
pub const WEBHOOK_TIMEOUT_SECONDS: Range<u64> = Range::new(1, 600);
/// `pipelines.progress_keepalive_seconds`.
pub const PROGRESS_KEEPALIVE_SECONDS: Range<u64> = Range::new(1, 3_600);

// --- Instances (`[instances]`, `[instance_types.NAME]`) ---

/// `instances.stop_grace_seconds`.
pub const STOP_GRACE_SECONDS: Range<f64> = Range::new(0.1, 60.0);
/// `instances.max_instances`.
pub const MAX_INSTANCES: Range<u32> = Range::new(1, 1000);
/// `init_timeout_seconds` of an instance type.
pub const INIT_TIMEOUT_SECONDS: Range<f64> = Range::new(0.1, 600.0);
/// `call_timeout_seconds` of an instance type.
pub const CALL_TIMEOUT_SECONDS: Range<f64> = Range::new(0.1, 3600.0);
/// `read_only_retries` of an instance type.
pub const READ_ONLY_RETRIES: Range<u32> = Range::new(0, 10);
/// `ttl_seconds` of an instance type.
pub const INSTANCE_TTL_SECONDS: Range<u64> = Range::new(1, 31_536_000);
/// `health.interval_seconds` of an instance type.
pub const HEALTH_INTERVAL_SECONDS: Range<f64> = Range::new(0.1, 3600.0);
/// `health.timeout_seconds` of an instance type.
pub const HEALTH_TIMEOUT_SECONDS: Range<f64> = Range::new(0.05, 600.0);
/// `health.failure_threshold` and `breaker.failures` of an instance type.
pub const FAILURES_IN_A_ROW: Range<u32> = Range::new(1, 1000);
/// `restart.max_restarts` of an instance type.
pub const MAX_RESTARTS: Range<u32> = Range::new(0, 1000);
/// `restart.window_seconds` of an instance type.
pub const RESTART_WINDOW_SECONDS: Range<u64> = Range::new(1, 86_400);
/// `restart.backoff_initial_ms` and `restart.backoff_max_ms` of an instance type.
pub const RESTART_BACKOFF_MS: Range<u64> = Range::new(1, 3_600_000);
/// `breaker.open_seconds` of an instance type.
pub const BREAKER_OPEN_SECONDS: Range<f64> = Range::new(0.05, 3600.0);

// --- MCP over HTTP (`[http]`) ---

/// `http.max_sessions`: initialize-era sessions open at once.
pub const HTTP_MAX_SESSIONS: Range<usize> = Range::new(1, 100_000);
/// `http.session_idle_seconds` (and `session_idle_minutes`, in seconds): up to a day.
pub const HTTP_SESSION_IDLE_SECONDS: Range<u64> = Range::new(1, 86_400);
/// `http.requests_per_minute` of one principal.
pub const HTTP_REQUESTS_PER_MINUTE: Range<u32> = Range::new(1, 1_000_000);
/// `http.failed_auth_per_minute` of one client address.
pub const HTTP_FAILED_AUTH_PER_MINUTE: Range<u32> = Range::new(1, 100_000);
/// `http.max_request_bytes`: 1 KiB (an `initialize` fits) to 256 MiB.
pub const HTTP_MAX_REQUEST_BYTES: Range<usize> = Range::new(1024, 256 * 1024 * 1024);
/// `http.max_header_bytes`: 4 KiB to 256 KiB (hyper reads no more than about 400 KiB).
pub const HTTP_MAX_HEADER_BYTES: Range<usize> = Range::new(4096, 256 * 1024);

// --- Pages ---

/// `limit` of `task_list`, `agent_list` and `audit_query`.
pub const PAGE: Range<u32> = Range::new(1, 500);
/// `limit` of `approval_list`, `pipeline_list`, `remediation_list` and `assessment_list`.
pub const SHORT_PAGE: Range<u32> = Range::new(1, 200);
/// `limit` of `instance_list`: every instance one coordinator may run.
pub const INSTANCE_PAGE: Range<u32> = Range::new(1, MAX_INSTANCES.max);
/// `wait_seconds` of the tools that wait for a person or a child (`approval_request`,
/// `instance_call_tool`, ...).
pub const WAIT_SECONDS: Range<u64> = Range::new(0, 3600);
/// `wait_seconds` of `assessment_request`.
pub const ASSESSMENT_WAIT_SECONDS: Range<u64> = Range::new(0, 600);
/// `recent_runs` of `pipeline_list`.
pub const RECENT_RUNS: Range<u32> = Range::new(0, 100);

// --- Short strings, in characters (JSON Schema `maxLength` counts characters too) ---

/// Names and kinds: a task's `kind`, a capability, an agent's name, a target agent id.
pub const NAME_CHARS: usize = 200;
/// What an approval is about (`subject_id` of `approval_request`): a file, a server, an id.
pub const SUBJECT_CHARS: usize = 1024;
/// `idempotency_key` of `task_submit`.
pub const KEY_CHARS: usize = 200;
/// One-line summaries and descriptions: `approval_request`'s `summary`, a remediation's
/// `summary`, a pipeline's `description`.
pub const SUMMARY_CHARS: usize = 4000;
/// Free text an agent or a caller writes: a task report's `message` and `error`, reasons.
pub const MESSAGE_CHARS: usize = 65_536;
/// The most capabilities a task or an agent lists.
pub const CAPABILITIES: usize = 64;

/// `[limits]` in the config file: how large a payload a tool accepts and how large a result
/// it returns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SizeLimits {
    /// The largest value of any one tool argument, in bytes of JSON (default 1048576 = 1 MiB):
    /// a task's `params`, a report's `result`, a pipeline definition, a run's `input`, an
    /// approval's `action`, a child tool call's `arguments`. A larger one is refused, naming
    /// the field.
    #[schemars(range(min = MAX_PAYLOAD_BYTES.min, max = MAX_PAYLOAD_BYTES.max))]
    pub max_payload_bytes: u64,
    /// The largest tool result, in bytes of its JSON-RPC line (default 8388608 = 8 MiB, well
    /// under the 32 MiB line the server accepts). Past it, the largest free-form values in the
    /// result are replaced by `"…[truncated N bytes]"`. At least six payloads plus 64 KiB, so
    /// one task with the largest `params` and `result` always comes back whole (a result line
    /// holds the value twice, and the second copy is escaped).
    #[schemars(range(min = RESPONSE_BUDGET_BYTES.min, max = RESPONSE_BUDGET_BYTES.max))]
    pub response_budget_bytes: u64,
    /// The most bytes of a call's arguments a `tool.call` audit event keeps (default 4096);
    /// larger values in it are replaced by `"…[truncated N bytes]"`.
    #[schemars(range(min = AUDIT_ARGUMENTS_BYTES.min, max = AUDIT_ARGUMENTS_BYTES.max))]
    pub audit_arguments_bytes: u64,
}

/// `limits.max_payload_bytes`.
pub const MAX_PAYLOAD_BYTES: Range<u64> = Range::new(1024, 4 << 20);
/// `limits.response_budget_bytes`.
pub const RESPONSE_BUDGET_BYTES: Range<u64> = Range::new(64 << 10, 24 << 20);
/// A task's `params` and `result`, each written twice (structured and as escaped text, which
/// at worst doubles it): the payloads a response budget must hold at least.
const BUDGET_PAYLOADS: u64 = 6;
/// Room for the rest of a task and the JSON-RPC envelope.
const BUDGET_SLACK: u64 = 64 << 10;
/// `limits.audit_arguments_bytes`.
pub const AUDIT_ARGUMENTS_BYTES: Range<u64> = Range::new(256, 1 << 20);

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            max_payload_bytes: 1 << 20,
            response_budget_bytes: 8 << 20,
            audit_arguments_bytes: 4096,
        }
    }
}

impl SizeLimits {
    pub fn validate(&self) -> Result<(), String> {
        MAX_PAYLOAD_BYTES.check("limits.max_payload_bytes", self.max_payload_bytes)?;
        RESPONSE_BUDGET_BYTES.check("limits.response_budget_bytes", self.response_budget_bytes)?;
        let least = BUDGET_PAYLOADS * self.max_payload_bytes + BUDGET_SLACK;
        if self.response_budget_bytes < least {
            return Err(format!(
                "limits.response_budget_bytes: expected at least {BUDGET_PAYLOADS} × \
                 limits.max_payload_bytes + {BUDGET_SLACK} = {least}, so one task with the largest \
                 params and result fits whole, got {}",
                self.response_budget_bytes
            ));
        }
        AUDIT_ARGUMENTS_BYTES.check("limits.audit_arguments_bytes", self.audit_arguments_bytes)
    }

    pub fn max_payload(&self) -> usize {
        usize::try_from(self.max_payload_bytes).unwrap_or(usize::MAX)
    }

    pub fn response_budget(&self) -> usize {
        usize::try_from(self.response_budget_bytes).unwrap_or(usize::MAX)
    }

    pub fn audit_arguments(&self) -> usize {
        usize::try_from(self.audit_arguments_bytes).unwrap_or(usize::MAX)
    }
}

/// Counts what serde_json writes: all bytes, and the `"` and `\` among them (each costs one
/// more byte when the JSON is itself put in a JSON string, as a tool result's text is).
#[derive(Default)]
struct Counter {
    bytes: usize,
    escapes: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes += buf.len();
        self.escapes += buf.iter().filter(|&&b| b == b'"' || b == b'\\').count();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn count(value: &Value) -> Counter {
    let mut c = Counter::default();
    // Writing a Value to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut c, value);
    c
}

/// The size of `value` as compact JSON, in bytes, without building the text.
pub fn json_size(value: &Value) -> usize {
    count(value).bytes
}

/// An upper bound of `value`'s size as compact JSON, found without writing it (every string
/// byte counted as a six-byte escape, every number as 24 bytes). Most values are far below any
/// limit, and this walk costs a fraction of serializing them (a tool call's result is
/// serialized twice by rmcp already).
pub fn size_bound(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => 6 * s.len() + 2,
        Value::Array(items) => items.iter().map(|v| size_bound(v) + 1).sum::<usize>() + 2,
        Value::Object(map) => map_size_bound(map),
    }
}

fn map_size_bound(map: &Map<String, Value>) -> usize {
    map.iter()
        .map(|(k, v)| 6 * k.len() + 4 + size_bound(v))
        .sum::<usize>()
        + 2
}

/// An upper bound of [`result_line_size`], as cheap as [`size_bound`].
pub fn result_line_bound(value: &Value) -> usize {
    // The escapes of the text copy are at most one per byte.
    3 * size_bound(value) + 2 + ENVELOPE
}

/// The size of a tool result carrying `value` twice, as structured content and as its JSON
/// text in a string (what rmcp's structured results hold), plus the envelope.
pub fn result_line_size(value: &Value) -> usize {
    let c = count(value);
    2 * c.bytes + c.escapes + 2 + ENVELOPE
}

/// What a JSON-RPC response line adds around a tool result's two copies (id, keys, `isError`).
const ENVELOPE: usize = 512;

/// The marker that replaces a value of `n` bytes.
pub fn marker(n: usize) -> String {
    format!("…[truncated {n} bytes]")
}

/// Values smaller than this are never worth truncating.
const SMALL: usize = 256;
/// How much of a truncated string is kept before the marker, in characters.
const KEPT_CHARS: usize = 120;

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where a value may be cut: a string (any string stays a string) or a free-form value (its
/// schema allows anything, so a marker string is as valid as the original).
struct Candidate {
    path: Vec<Step>,
    size: usize,
    is_string: bool,
}

/// Resolves `$ref` into `defs` and picks the variant of an `anyOf`/`oneOf` that is not null.
fn resolve<'a>(
    schema: &'a Value,
    defs: Option<&'a Map<String, Value>>,
    value: &Value,
) -> &'a Value {
    let mut s = schema;
    for _ in 0..8 {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default();
            match defs.and_then(|d| d.get(name)) {
                Some(d) => s = d,
                None => return &Value::Bool(true),
            }
            continue;
        }
        if let Some(variants) = s
            .get("anyOf")
            .or_else(|| s.get("oneOf"))
            .and_then(Value::as_array)
        {
            let pick = variants
                .iter()
                .find(|v| v.get("type").and_then(Value::as_str) != Some("null") || value.is_null());
            match pick {
                Some(p) => s = p,
                None => return &Value::Bool(true),
            }
            continue;
        }
        break;
    }
    s
}

/// Whether a (resolved) schema constrains nothing: `true`, `{}`, or only a description.
fn is_free(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(m) => !m.keys().any(|k| {
            matches!(
                k.as_str(),
                "type"
                    | "properties"
                    | "items"
                    | "enum"
                    | "const"
                    | "$ref"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "additionalProperties"
            )
        }),
        _ => false,
    }
}

fn collect(
    value: &Value,
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    path: &mut Vec<Step>,
    out: &mut Vec<Candidate>,
) {
    let schema = resolve(schema, defs, value);
    if let Value::String(s) = value {
        if s.len() >= SMALL {
            out.push(Candidate {
                path: path.clone(),
                size: s.len() + 2,
                is_string: true,
            });
        }
        return;
    }
    if is_free(schema) {
        let size = json_size(value);
        if size >= SMALL {
            out.push(Candidate {
                path: path.clone(),
                size,
                is_string: false,
            });
        }
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in map {
                let child = props
                    .and_then(|p| p.get(k))
                    .or(extra)
                    .unwrap_or(&Value::Bool(true));
                path.push(Step::Key(k.clone()));
                collect(v, child, defs, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            let child = schema.get("items").unwrap_or(&Value::Bool(true));
            for (i, v) in items.iter().enumerate() {
                path.push(Step::Index(i));
                collect(v, child, defs, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// Shrinks `value` until its compact JSON is at most `target` bytes, replacing the largest
/// strings (keeping their first characters) and free-form values (by a marker string) first,
/// so the result still matches `schema` (a JSON Schema whose `$defs` it may refer to).
/// Returns how many values were cut.
pub fn shrink(value: &mut Value, schema: &Value, target: usize) -> usize {
    let mut size = json_size(value);
    if size <= target {
        return 0;
    }
    let defs = schema.get("$defs").and_then(Value::as_object);
    let mut candidates = Vec::new();
    collect(value, schema, defs, &mut Vec::new(), &mut candidates);
    candidates.sort_by_key(|c| std::cmp::Reverse(c.size));
    let mut cut = 0;
    for c in candidates {
        if size <= target {
            break;
        }
        let Some(slot) = at_mut(value, &c.path) else {
            continue;
        };
        let replacement = match slot {
            Value::String(s) if c.is_string => {
                let kept: String = s.chars().take(KEPT_CHARS).collect();
                let n = s.len() - kept.len();
                format!("{kept}{}", marker(n))
            }
            _ => marker(c.size),
        };
        let new = Value::String(replacement);
        let new_size = json_size(&new);
        *slot = new;
        size = size + new_size - c.size.min(size + new_size);
        cut += 1;
    }
    cut
}

/// [`cap_for_audit`] of an arguments object, without first copying its large values; and the
/// object's own size in bytes (or, when small, an upper bound of it under `max`).
pub fn audit_copy(arguments: &Map<String, Value>, max: usize) -> (Value, usize) {
    let bound = map_size_bound(arguments);
    if bound <= max {
        return (Value::Object(arguments.clone()), bound);
    }
    let mut c = Counter::default();
    let _ = serde_json::to_writer(&mut c, arguments);
    if c.bytes <= max {
        return (Value::Object(arguments.clone()), c.bytes);
    }
    let copy = arguments
        .iter()
        .map(|(k, v)| {
            let n = json_size(v);
            let v = if n > max {
                Value::String(marker(n))
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    (cap_for_audit(&Value::Object(copy), max), c.bytes)
}

/// A copy of a call's arguments for the audit log, at most about `max` bytes: when larger,
/// the largest values are replaced by markers (the object's keys stay).
pub fn cap_for_audit(arguments: &Value, max: usize) -> Value {
    if json_size(arguments) <= max {
        return arguments.clone();
    }
    let mut copy = arguments.clone();
    shrink(&mut copy, &Value::Bool(false), max);
    if json_size(&copy) > max {
        return Value::String(marker(json_size(arguments)));
    }
    copy
}

/// Why a tool's arguments were refused: the field (a path such as `stages[2].name`) and what
/// was wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    pub field: String,
    pub message: String,
}

/// Checks a call's arguments before they are parsed: every top-level value at most
/// `max_payload` bytes of JSON, every string and array within the `maxLength` and `maxItems`,
/// and every number within the `minimum` and `maximum`, its input schema (from the Rust type,
/// so from the constants here) declares.
pub fn check_arguments(
    arguments: &Map<String, Value>,
    schema: &Value,
    max_payload: usize,
) -> Result<(), TooLarge> {
    for (key, value) in arguments {
        if size_bound(value) <= max_payload {
            continue;
        }
        let size = json_size(value);
        if size > max_payload {
            return Err(TooLarge {
                field: key.clone(),
                message: format!(
                    "at most {max_payload} bytes of JSON (limits.max_payload_bytes), got {size}"
                ),
            });
        }
    }
    let defs = schema.get("$defs").and_then(Value::as_object);
    check_object(arguments, schema, defs, &mut String::new())
}

fn check_lengths(
    value: &Value,
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    path: &mut String,
) -> Result<(), TooLarge> {
    let schema = resolve(schema, defs, value);
    let limit = |key: &str| schema.get(key).and_then(Value::as_u64);
    let too_large = |path: &str, message: String| TooLarge {
        field: path.to_string(),
        message,
    };
    match value {
        Value::String(s) => {
            if let Some(max) = limit("maxLength") {
                let n = s.chars().count() as u64;
                if n > max {
                    return Err(too_large(
                        path,
                        format!("at most {max} characters, got {n}"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = limit("maxItems")
                && items.len() as u64 > max
            {
                return Err(too_large(
                    path,
                    format!("at most {max} items, got {}", items.len()),
                ));
            }
            let child = schema.get("items").unwrap_or(&Value::Bool(true));
            let len = path.len();
            for (i, v) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                check_lengths(v, child, defs, path)?;
                path.truncate(len);
            }
        }
        Value::Object(map) => check_object(map, schema, defs, path)?,
        Value::Number(n) => {
            let (lo, hi) = (schema.get("minimum"), schema.get("maximum"));
            let v = n.as_f64().unwrap_or(f64::NAN);
            let below = lo.and_then(Value::as_f64).is_some_and(|lo| v < lo);
            let above = hi.and_then(Value::as_f64).is_some_and(|hi| v > hi);
            if below || above {
                let show = |b: Option<&Value>| b.map(Value::to_string).unwrap_or_default();
                let expected = match (lo, hi) {
                    (Some(_), Some(_)) => format!("expected {} to {}", show(lo), show(hi)),
                    (Some(_), None) => format!("expected at least {}", show(lo)),
                    _ => format!("expected at most {}", show(hi)),
                };
                return Err(too_large(path, format!("{expected}, got {n}")));
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_object(
    map: &Map<String, Value>,
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    path: &mut String,
) -> Result<(), TooLarge> {
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties");
    let len = path.len();
    for (k, v) in map {
        let Some(child) = props.and_then(|p| p.get(k)).or(extra) else {
            continue;
        };
        if len > 0 {
            path.push('.');
        }
        path.push_str(k);
        check_lengths(v, child, defs, path)?;
        path.truncate(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cheap_bounds_bound_the_exact_sizes() {
        let values = [
            json!(null),
            json!(-1.5e300),
            json!(u64::MAX),
            json!("\u{0}\u{1f}\"\\é😀 plain"),
            json!({"a\n\"": [true, null, 1, "x".repeat(300)], "": {}}),
            json!([[[]], {"k": "\u{7f}\u{1}"}]),
        ];
        for v in &values {
            assert!(size_bound(v) >= json_size(v), "{v}");
            assert!(result_line_bound(v) >= result_line_size(v), "{v}");
        }
        let Value::Object(map) = &values[4] else {
            return;
        };
        let (_, size) = audit_copy(map, 1 << 20);
        assert!(size >= json_size(&values[4]));
    }

    #[test]
    fn ranges_name_the_key_and_bounds() {
        assert!(
            TASK_MAX_RETRIES
                .check("tasks.default_max_retries", 100)
                .is_ok()
        );
        let e = TASK_MAX_RETRIES
            .check("tasks.default_max_retries", 1000)
            .err()
            .unwrap_or_default();
        assert_eq!(e, "tasks.default_max_retries: expected 0 to 100, got 1000");
        assert!(!LOAD.contains(f64::NAN));
    }

    #[test]
    fn shrink_keeps_the_schema_and_gets_under_the_target() {
        let schema = json!({
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                "count": {"type": "integer"}
            },
            "$defs": {"Item": {"type": "object", "properties": {
                "id": {"type": "string"},
                "params": true,
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}
            }}}
        });
        let big = "x".repeat(10_000);
        let mut v = json!({"items": [
            {"id": "a", "params": {"blob": big, "n": 1}, "note": big},
            {"id": "b", "params": [1, 2, 3], "note": null}
        ], "count": 2});
        let cut = shrink(&mut v, &schema, 2_000);
        assert_eq!(cut, 2);
        assert!(json_size(&v) <= 2_000, "{}", json_size(&v));
        assert_eq!(v["items"][0]["id"], "a");
        assert_eq!(v["items"][1]["params"], json!([1, 2, 3]));
        let params = v["items"][0]["params"].as_str().unwrap_or_default();
        assert!(params.starts_with("…[truncated 100"), "{params}");
        let note = v["items"][0]["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with("xxx") && note.contains("[truncated 9880 bytes]"),
            "{note}"
        );
    }

    #[test]
    fn audit_copy_keeps_keys() {
        let args = json!({"kind": "k", "params": {"blob": "y".repeat(50_000)}});
        let capped = cap_for_audit(&args, 4096);
        assert_eq!(capped["kind"], "k");
        assert!(json_size(&capped) <= 4096);
        let small = json!({"kind": "k"});
        assert_eq!(cap_for_audit(&small, 4096), small);
    }
}
