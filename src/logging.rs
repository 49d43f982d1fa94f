//! Logs on stderr that never show a secret, at any level. rmcp logs whole JSON-RPC messages at
//! debug and trace (a tool call's arguments, a child's answer); those payload fields are cut
//! to the name of the message. Every formatted line then passes the redactor: known token
//! shapes, `Bearer` credentials, URL passwords, values under secret-like keys, and the secret
//! values this process has handled (from the secret store, moved out of a config, given to a
//! child). stdout is never touched: it carries JSON-RPC.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{OnceLock, RwLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::debug_fn;

use crate::audit::redact::{self, REDACTED};

/// Fields in which rmcp logs a whole protocol message (`?request`, `?result`, `?evt`,
/// `?notification`); only the message's name is kept.
const PAYLOAD_FIELDS: &[&str] = &["request", "result", "evt", "notification"];
/// Shorter values are not remembered: masking them would blot out ordinary words.
const MIN_REMEMBERED: usize = 6;

fn remembered() -> &'static RwLock<Vec<String>> {
    static VALUES: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    VALUES.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remembers a secret value this process holds, so that no log line shows it.
pub fn remember_secret(value: &str) {
    if value.len() < MIN_REMEMBERED {
        return;
    }
    let mut values = remembered().write().unwrap_or_else(|p| p.into_inner());
    if !values.iter().any(|v| v == value) {
        values.push(value.to_string());
        // Longest first, so a value containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// `text` with every secret this module knows of replaced by [`REDACTED`].
pub fn mask(text: &str) -> String {
    let mut out = redact::redact_str(text);
    for value in remembered()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), REDACTED);
        }
    }
    mask_secret_keys(&out).into_owned()
}

/// Masks the value after a secret-like key in the shapes logs print: JSON (`"api_key": "v"`),
/// Rust debug of a JSON value (`"api_key": String("v")`) and `key=value` fields.
fn mask_secret_keys(text: &str) -> Cow<'_, str> {
    static PATTERN: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let Some(re) = PATTERN.get_or_init(|| {
        regex::Regex::new(
            r#"(?P<key>"(?P<k1>[A-Za-z0-9_.-]{2,64})"\s*:\s*(?:String\()?|\b(?P<k2>[A-Za-z0-9_.-]{2,64})=)(?P<value>"(?:[^"\\]|\\.)*"|[^\s,)}\]"]+)"#,
        )
        .ok()
    }) else {
        return Cow::Borrowed(text);
    };
    re.replace_all(text, |c: &regex::Captures<'_>| {
        let key = c
            .name("k1")
            .or_else(|| c.name("k2"))
            .map_or("", |m| m.as_str());
        let whole = c.get(0).map_or("", |m| m.as_str());
        let value = c.name("value").map_or("", |m| m.as_str());
        if redact::is_secret_key(key) && value != format!("\"{REDACTED}\"") && value != REDACTED {
            let quote = if value.starts_with('"') { "\"" } else { "" };
            format!(
                "{}{quote}{REDACTED}{quote}",
                c.name("key").map_or("", |m| m.as_str())
            )
        } else {
            whole.to_string()
        }
    })
}

/// A formatted event, held until complete and written masked in one piece.
pub struct MaskedLine(Vec<u8>);

impl Write for MaskedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = mask(&String::from_utf8_lossy(&self.0));
        // A log line that cannot be written is dropped; there is nowhere else to say so.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Makes a [`MaskedLine`] per event.
pub struct MaskedStderr;

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedLine;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine(Vec::with_capacity(256))
    }
}

/// The name a protocol message's debug text starts with (`CallToolRequest(...)` ->
/// `CallToolRequest`).
fn message_name(debug: &str) -> &str {
    let end = debug
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(debug.len());
    &debug[..end]
}

/// The filter when neither `--log-level` nor the config names one: rmcp's own info lines
/// (a whole `InitializeRequestParams` at every start) are left out.
pub const DEFAULT_FILTER: &str = "info,rmcp=warn";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message`, `spans` and the
    /// event's fields), for log shippers.
    Json,
}

/// Starts logging on stderr at `filter` (a level or a tracing filter), masked as above.
pub fn init(filter: &str, format: LogFormat, ansi: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| {
        format!("--log-level {filter:?} is not a level or tracing filter (try info, debug or trace): {e}")
    })?;
    if format == LogFormat::Json {
        return tracing_subscriber::fmt()
            .with_env_filter(filter)
            .event_format(json::JsonLine)
            .with_writer(MaskedStderr)
            .try_init()
            .map_err(|e| format!("cannot start logging: {e}"));
    }
    let fields = debug_fn(|w, field, value| {
        let name = field.name();
        if name == "message" {
            write!(w, "{value:?}")
        } else if PAYLOAD_FIELDS.contains(&name) {
            let text = format!("{value:?}");
            write!(w, "{name}={} (payload not logged)", message_name(&text))
        } else {
            write!(w, "{name}={value:?}")
        }
    })
    .delimited(" ");
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(fields)
        .with_writer(MaskedStderr)
        .with_ansi(ansi)
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}

/// `--log-format json`: each event one JSON object, its fields read by the same rules as the
/// text format (protocol payloads cut to their name), then masked like every line.
mod json {
    use std::fmt;

    use serde_json::{Map, Value};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    use super::{PAYLOAD_FIELDS, message_name};

    pub struct JsonLine;

    struct Fields(Map<String, Value>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            let text = format!("{value:?}");
            let text = if PAYLOAD_FIELDS.contains(&field.name()) {
                format!("{} (payload not logged)", message_name(&text))
            } else {
                text
            };
            self.0.insert(field.name().to_string(), Value::String(text));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .insert(field.name().to_string(), Value::String(value.to_string()));
        }

        fn record_i64(&mut self, field: &Field, value: i64) {
            self.0.insert(field.name().to_string(), value.into());
        }

        fn record_u64(&mut self, field: &Field, value: u64) {
            self.0.insert(field.name().to_string(), value.into());
        }

        fn record_bool(&mut self, field: &Field, value: bool) {
            self.0.insert(field.name().to_string(), value.into());
        }
    }

    impl<S, N> FormatEvent<S, N> for JsonLine
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &tracing::Event<'_>,
        ) -> fmt::Result {
            let mut fields = Fields(Map::new());
            event.record(&mut fields);
            let meta = event.metadata();
            let mut line = Map::new();
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            line.insert("timestamp".into(), now.into());
            line.insert("level".into(), meta.level().as_str().into());
            line.insert("target".into(), meta.target().into());
            if let Some(message) = fields.0.remove("message") {
                line.insert("message".into(), message);
            }
            if let Some(scope) = ctx.event_scope() {
                let spans: Vec<Value> = scope.from_root().map(|s| s.name().into()).collect();
                line.insert("spans".into(), spans.into());
            }
            for (k, v) in fields.0 {
                line.entry(k).or_insert(v);
            }
            let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
            writeln!(writer, "{text}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_tokens_remembered_values_and_values_of_secret_keys() {
        remember_secret("hunter2-but-longer");
        let line = r#"DEBUG x: args={"api_key": String("plain-value-1"), "mode": String("fast")} token=abc123def Authorization: Bearer abcdefghijkl url=https://u:pw123456@h/ said hunter2-but-longer ghp_abcdefghijklmnopqrstuvwxyz0123"#;
        let out = mask(line);
        for secret in [
            "plain-value-1",
            "abc123def",
            "abcdefghijkl",
            "pw123456",
            "hunter2-but-longer",
            "ghp_abcdef",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains(r#""mode": String("fast")"#), "{out}");
        assert!(out.contains("DEBUG x:"), "{out}");
        // Short values are not remembered (they would blot out words).
        remember_secret("abc");
        assert!(mask("abc def").contains("abc"));
    }

    #[test]
    fn payloads_keep_only_their_name() {
        assert_eq!(
            message_name("CallToolRequest(Request { params: .. })"),
            "CallToolRequest"
        );
        assert_eq!(message_name(""), "");
    }
}
