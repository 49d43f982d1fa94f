//! One answer, one JSON body: an initialize-era POST to `/mcp` whose event stream would carry
//! nothing but its JSON-RPC response is answered with that response as `application/json`.
//!
//! rmcp answers every request of a session with an event stream (of the events our session
//! manager, `crate::server::http_sessions`, routes to it): a priming event (an event id to
//! resume from), then the response, then the end of the stream, each written to the socket on
//! its own. For the many calls that answer at once that is three writes and three reads where
//! one does, and an event-stream parser in the client. The transport allows either answer (a
//! POSTed request "MUST either return `text/event-stream` … or `application/json`"), so this
//! layer looks at the start of the stream: if the response comes before anything else (a
//! progress notification, an elicitation request) and before [`HOLD`], the response alone is
//! sent as JSON; otherwise the stream goes out as rmcp made it, from its first byte, so nothing
//! is lost and a long call still gets its headers and keep-alives.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use futures_util::StreamExt;
use http::{HeaderValue, Method, StatusCode, header};

/// How long a stream is held back waiting for its response before it goes out as a stream.
pub const HOLD: Duration = Duration::from_secs(1);

const EVENT_STREAM: &str = "text/event-stream";

/// Whether `request`'s answer may be rewritten: a POST whose client takes JSON. (rmcp answers
/// a 2026-07-28 request as JSON itself when its response comes first, so its streams here are
/// the ones that must stay streams.)
pub fn eligible(request: &Request) -> bool {
    request.method() == Method::POST && accepts_json(request.headers())
}

/// `response` to an eligible request, as one JSON body when its stream opens with its
/// response: see the module's comment.
pub async fn one_json(response: Response) -> Response {
    if response.status() != StatusCode::OK || !is_event_stream(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut seen: Vec<Bytes> = Vec::new();
    let mut events = Events::default();
    let deadline = tokio::time::Instant::now() + HOLD;
    let answer = loop {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break None;
        };
        let Some(Ok(chunk)) = next else {
            // The stream ended or failed before its response: pass on what it said.
            break None;
        };
        seen.push(chunk.clone());
        match events.push(&chunk) {
            Seen::Nothing => continue,
            Seen::Answer(json) => break Some(json),
            Seen::Other => break None,
        }
    };
    match answer {
        Some(json) => {
            for name in [header::TRANSFER_ENCODING, header::CACHE_CONTROL] {
                parts.headers.remove(name);
            }
            parts.headers.remove("x-accel-buffering");
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Response::from_parts(parts, Body::from(json))
        }
        None => {
            let replay = futures_util::stream::iter(seen.into_iter().map(Ok::<_, axum::Error>));
            Response::from_parts(parts, Body::from_stream(replay.chain(stream)))
        }
    }
}

fn accepts_json(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let essence = t.split(';').next().unwrap_or_default().trim();
            essence.eq_ignore_ascii_case("application/json") || essence == "*/*"
        })
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(EVENT_STREAM))
}

/// What the events read so far amount to.
#[derive(Debug, PartialEq)]
enum Seen {
    /// Only events that say nothing yet (the priming event), or half an event.
    Nothing,
    /// The first event with data is a JSON-RPC response: its data.
    Answer(Bytes),
    /// Something else came first (a notification, a request, a comment such as a keep-alive,
    /// or data that is not JSON-RPC): the stream must go out as a stream.
    Other,
}

/// Server-sent events as they arrive, cut at the blank line that ends each.
#[derive(Default)]
struct Events {
    pending: Vec<u8>,
}

impl Events {
    fn push(&mut self, chunk: &[u8]) -> Seen {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        let seen = loop {
            let Some((end, gap)) = event_end(&self.pending[start..]) else {
                break Seen::Nothing;
            };
            let seen = judge(&self.pending[start..start + end]);
            start += end + gap;
            if seen != Seen::Nothing {
                break seen;
            }
        };
        self.pending.drain(..start);
        seen
    }
}

/// Where the first complete event ends, and the length of the blank line after it.
fn event_end(text: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(text, b"\n\n").map(|i| (i, 2));
    let crlf = memchr::memmem::find(text, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event's lines (`field: value`, or a `:` comment).
fn judge(event: &[u8]) -> Seen {
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b':') {
            return Seen::Other;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => (&line[..colon], &line[colon + 1..]),
            None => (line, &b""[..]),
        };
        if field == b"data" {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if has_data {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
            has_data = true;
        }
    }
    if data.iter().all(u8::is_ascii_whitespace) {
        // The priming event (an id and a retry time, empty data), or an event of fields only.
        return Seen::Nothing;
    }
    if is_response(&data) {
        Seen::Answer(Bytes::from(data))
    } else {
        Seen::Other
    }
}

/// Whether `data` is a JSON-RPC response or error response (an id, a result or an error, no
/// method): the end of the request's stream.
fn is_response(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Shape {
        id: Option<serde::de::IgnoredAny>,
        method: Option<serde::de::IgnoredAny>,
        result: Option<serde::de::IgnoredAny>,
        error: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Shape>(data).is_ok_and(|s| {
        s.id.is_some() && s.method.is_none() && (s.result.is_some() || s.error.is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(chunks: &[&str]) -> Seen {
        let mut events = Events::default();
        let mut last = Seen::Nothing;
        for chunk in chunks {
            last = events.push(chunk.as_bytes());
            if last != Seen::Nothing {
                break;
            }
        }
        last
    }

    #[test]
    fn a_response_after_the_priming_event_is_the_answer() {
        let answer = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;
        assert_eq!(
            seen(&[
                "data: \nid: 0/0\nretry: 3000\n\n",
                &format!("data: {answer}\n\n")
            ]),
            Seen::Answer(Bytes::from(answer))
        );
        // Cut anywhere, and with CRLF line ends.
        let whole = format!("data:\r\nid: 0\r\n\r\ndata: {answer}\r\n\r\n");
        let (a, b) = whole.split_at(17);
        assert_eq!(seen(&[a, b]), Seen::Answer(Bytes::from(answer)));
        let error = r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32602,"message":"no"}}"#;
        assert_eq!(
            seen(&[&format!("data: {error}\n\n")]),
            Seen::Answer(Bytes::from(error))
        );
    }

    #[test]
    fn anything_else_first_keeps_the_stream() {
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        let elicit = r#"{"jsonrpc":"2.0","id":0,"method":"elicitation/create","params":{}}"#;
        for first in [
            format!("data: {progress}\n\n"),
            format!("data: {elicit}\n\n"),
            ":keep-alive\n\n".to_string(),
            "data: not json\n\n".to_string(),
        ] {
            assert_eq!(seen(&["data: \nid: 0\n\n", &first]), Seen::Other, "{first}");
        }
        // Half an event is not yet anything.
        assert_eq!(
            seen(&["data: {\"jsonrpc\":\"2.0\",\"id\":1,"]),
            Seen::Nothing
        );
    }

    #[test]
    fn accept_lists_are_read_by_their_media_types() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            accepts_json(&h)
        };
        assert!(with("application/json, text/event-stream"));
        assert!(with("text/event-stream;q=1, Application/JSON;q=0.5"));
        assert!(!with("text/event-stream"));
    }
}
