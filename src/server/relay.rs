//! The coordinator's stdio, split between rmcp and the fast path of proxied calls: a plain
//! `tools/call` of an allowed child tool from an initialize-era client goes straight to the
//! child (see `instance::child::fast`), every other line goes to rmcp; rmcp's output and
//! fast-path answers share stdout one whole line at a time, through [`ClientOut`]. stdin is read
//! by the relay thread (`instance::child::reactor`) with the children's stdouts, so a proxied
//! call costs no task hand-off. Every request is put in flight in the ledger of `ClientOut`
//! (`relay/ledger.rs`) before either path takes it; what rmcp would not answer is answered here
//! (`jsonrpc.rs`).

mod ledger;

use std::borrow::Cow;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::RequestId;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

use super::Coordinator;
use super::jsonrpc::{self, Message, Refusal};
use crate::audit::{Action, NewEvent, Outcome};
use crate::instance::child::{
    ClientSink, FastDone, FastHooks, LineReader, MAX_LINE, PipeWriter, RmcpLines, Source, contains,
};
use ledger::{BatchId, Ledger};

/// Where fast-path responses go: the client's side of the coordinator's stdio, shared with
/// rmcp's own output, one whole line at a time. Writes never block (see [`PipeWriter`]).
pub(super) struct ClientOut {
    writer: PipeWriter,
    /// The client's requests in flight, each answered once (batches as one array).
    ledger: Ledger,
}

impl ClientOut {
    pub fn new(writer: PipeWriter) -> Self {
        ClientOut {
            writer,
            ledger: Ledger::default(),
        }
    }

    /// Writes one or more whole JSON-RPC lines (each ending in a newline); answers are
    /// accounted in the ledger first (see [`Ledger::settle`]).
    pub fn write_lines(&self, lines: &[u8]) -> std::io::Result<()> {
        debug_assert!(lines.ends_with(b"\n"));
        let lines = self.ledger.settle(lines);
        if lines.is_empty() {
            return Ok(());
        }
        self.writer.write(&lines)
    }

    /// Writes lines the relay made itself (errors it answers for rmcp), past the ledger: they
    /// answer no request in flight.
    pub fn write_own(&self, lines: &[u8]) -> std::io::Result<()> {
        debug_assert!(lines.ends_with(b"\n"));
        self.writer.write(lines)
    }

    /// The client's requests in flight.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Closes stdout once everything queued is written.
    pub fn close(&self) {
        self.writer.close();
    }

    /// Waits up to `limit` until everything queued has reached the client.
    pub fn wait_drained(&self, limit: Duration) -> bool {
        self.writer.wait_drained(limit)
    }
}

impl ClientSink for ClientOut {
    fn write_lines(&self, lines: &[u8]) -> std::io::Result<()> {
        ClientOut::write_lines(self, lines)
    }
}

/// A `tools/call` request with nothing but a name, arguments and `_meta` (without a progress
/// token or 2026-07-28 fields; checked below); no MRTR or task fields. Anything else fails to
/// parse and takes the rmcp path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainCall<'a> {
    #[allow(dead_code)]
    jsonrpc: Cow<'a, str>,
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: PlainParams<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainParams<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// Splits the client's stdio (`input` and `output`, usually the process's fd 0 and 1): returns
/// the streams rmcp serves on, and the task that ends once rmcp's last line is written. The
/// input thread ends when the client closes stdin (rmcp then sees EOF).
pub(super) fn split(
    c: &Coordinator,
    input: OwnedFd,
    output: OwnedFd,
) -> std::io::Result<(DuplexStream, DuplexStream, tokio::task::JoinHandle<()>)> {
    let out = Arc::new(ClientOut::new(PipeWriter::new(output, "stdout")?));
    let input = LineReader::new(input);
    let (rmcp_reads, to_rmcp) = tokio::io::duplex(1 << 20);
    let (from_rmcp, rmcp_writes) = tokio::io::duplex(1 << 20);
    let me = c.clone();
    c.instances().set_fast_hooks(FastHooks {
        client_out: out.clone(),
        on_done: Box::new(move |done: FastDone| {
            if let Some(event) = me.fast_audit_event(done) {
                me.audit_call(event);
            }
        }),
        runtime: tokio::runtime::Handle::current(),
    });
    let source = StdinSource {
        c: c.clone(),
        out: out.clone(),
        input,
        to_rmcp: RmcpLines::new(to_rmcp),
        for_rmcp: ToRmcp {
            lines: Vec::with_capacity(8192),
            started: false,
        },
    };
    c.instances().reactor()?.add(Box::new(source))?;
    let answered = c.inner.answered.clone();
    let output = tokio::spawn(output_pump(from_rmcp, out, answered));
    Ok((rmcp_reads, rmcp_writes, output))
}

/// The client's stdin, read by the reactor: fast calls and their cancellations are handled
/// here, and what rmcp would not answer (see `jsonrpc`); the rest go to rmcp, a read's worth
/// at a time. At EOF rmcp sees the client leave.
struct StdinSource {
    c: Coordinator,
    out: Arc<ClientOut>,
    input: LineReader,
    to_rmcp: RmcpLines,
    for_rmcp: ToRmcp,
}

/// Messages on their way to rmcp, a read's worth at a time.
struct ToRmcp {
    lines: Vec<u8>,
    /// rmcp has begun a session (initialize, or a 2026-07-28 request with its metadata), as
    /// far as the messages sent so far go. Before that it reads only requests: any other
    /// message ends the session, so none is sent.
    started: bool,
}

impl Source for StdinSource {
    fn fd(&self) -> std::os::fd::RawFd {
        self.input.fd()
    }

    fn paused(&self) -> bool {
        self.to_rmcp.backlogged()
    }

    fn ready(&mut self) -> bool {
        let StdinSource {
            c,
            out,
            input,
            for_rmcp,
            to_rmcp,
        } = self;
        let more = input.read_lines(|line| {
            c.client_active();
            c.take_message(line, None, out, for_rmcp);
        });
        let dropped = input.take_dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "refused client messages longer than {} MiB",
                MAX_LINE >> 20
            );
            // Unread, so their ids are unknown: each gets an error with a null id.
            let refusal = Refusal {
                id: None,
                written_id: None,
                error: rmcp::ErrorData::invalid_request(
                    format!(
                        "invalid request: a message longer than {} MiB was dropped unread",
                        MAX_LINE >> 20
                    ),
                    None,
                ),
            };
            let mut line = refusal.to_json(|_| false);
            line.push(b'\n');
            for _ in 0..dropped {
                let _ = out.write_own(&line);
            }
        }
        if !for_rmcp.lines.is_empty() {
            if !for_rmcp.lines.ends_with(b"\n") {
                for_rmcp.lines.push(b'\n');
            }
            if !to_rmcp.send(std::mem::take(&mut for_rmcp.lines)) {
                return false;
            }
        }
        match more {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "reading stdin failed; ending the session");
                false
            }
        }
    }
}

/// rmcp's messages to the client, whole lines, each read's worth in one write.
async fn output_pump(
    from_rmcp: DuplexStream,
    out: Arc<ClientOut>,
    answered: tokio::sync::watch::Sender<bool>,
) {
    let mut lines = BufReader::with_capacity(1 << 16, from_rmcp);
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Whatever else is already buffered and complete goes in the same write.
        loop {
            let more = lines.buffer();
            match memchr::memrchr(b'\n', more) {
                Some(i) if buf.ends_with(b"\n") => {
                    buf.extend_from_slice(&more[..=i]);
                    lines.consume(i + 1);
                }
                _ => break,
            }
        }
        if !buf.ends_with(b"\n") {
            buf.push(b'\n');
        }
        if out.write_lines(&buf).is_err() {
            break;
        }
        if !*answered.borrow() {
            answered.send_replace(true);
        }
    }
    out.close();
    // The last answers reach the client before the process ends.
    let _ = tokio::task::spawn_blocking(move || out.wait_drained(Duration::from_millis(500))).await;
}

impl Coordinator {
    /// Takes one message from the client (a line, or an element of a batch): a fast call goes
    /// to its child, what rmcp would not answer is answered here, and the rest is queued in
    /// `for_rmcp`. Each request is put in flight first, so its answer is its only one.
    fn take_message(
        &self,
        line: &[u8],
        batch: Option<BatchId>,
        out: &ClientOut,
        for_rmcp: &mut ToRmcp,
    ) {
        if self.fast_path(line, batch, out) {
            return;
        }
        match jsonrpc::classify(line, batch.is_some()) {
            Message::Blank | Message::Refused(None) => {}
            Message::Refused(Some(refusal)) => refuse(out, batch, &refusal),
            Message::Batch(items) => {
                // MCP 2025-03-26 requires receiving batches and rmcp still negotiates it, so
                // a batch is answered in full (one array, JSON-RPC 2.0 §6) in every version
                // rather than refused: a client that sends one gets its answers.
                let b = out.ledger().batch();
                for item in items {
                    self.take_message(item.get().as_bytes(), Some(b), out, for_rmcp);
                }
                if let Some(line) = out.ledger().seal(b) {
                    let _ = out.write_own(&line);
                }
            }
            Message::Request { id, method } => {
                if batch.is_some() && method == "initialize" {
                    let refusal = Refusal {
                        id: Some(id),
                        written_id: None,
                        error: rmcp::ErrorData::invalid_request(
                            "invalid request: `initialize` must not be part of a batch",
                            None,
                        ),
                    };
                    return refuse(out, batch, &refusal);
                }
                if !out.ledger().open(&id, batch) {
                    return refuse(out, batch, &Refusal::duplicate(&id));
                }
                if !for_rmcp.started {
                    for_rmcp.started = self.starts_session(line);
                }
                forward(for_rmcp, line);
            }
            Message::Notification { method, params } => {
                if method == "notifications/cancelled"
                    && let Some((id, raw)) = jsonrpc::cancelled_id(params)
                {
                    // No answer follows a cancellation (rmcp drops it; so does the fast path).
                    if let Some(line) = out.ledger().close(&id) {
                        let _ = out.write_own(&line);
                    }
                    if self.instances().fast_cancel(raw.get()) {
                        return;
                    }
                }
                if for_rmcp.started {
                    forward(for_rmcp, line);
                } else {
                    tracing::debug!(%method, "dropped a notification sent before the session began");
                }
            }
            Message::Response if for_rmcp.started => forward(for_rmcp, line),
            Message::Response => {
                tracing::debug!("dropped a response sent before the session began");
            }
        }
    }

    /// Whether rmcp begins its session with this request: `initialize`, or a request other
    /// than `ping` and `server/discover` with the complete 2026-07-28 metadata of a version
    /// this server speaks (read with rmcp's own types, as rmcp reads it).
    fn starts_session(&self, line: &[u8]) -> bool {
        use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetMeta, ProtocolVersion};
        let Ok(ClientJsonRpcMessage::Request(r)) = serde_json::from_slice(line) else {
            return false;
        };
        match &r.request {
            ClientRequest::InitializeRequest(_) => true,
            ClientRequest::PingRequest(_) | ClientRequest::DiscoverRequest(_) => false,
            request => {
                let meta = request.get_meta();
                meta.missing_required_keys(&ProtocolVersion::V_2026_07_28)
                    .is_empty()
                    && meta.protocol_version().is_some_and(|v| {
                        rmcp::ServerHandler::supported_protocol_versions(self).contains(&v)
                    })
            }
        }
    }

    /// Handles a call on the fast path if it can; `false` leaves it to `take_message`.
    fn fast_path(&self, line: &[u8], batch: Option<BatchId>, out: &ClientOut) -> bool {
        if self.inner.fast_client.get().is_none() || !self.instances_enabled() {
            return false;
        }
        if !contains(line, b"\"tools/call\"") {
            return false;
        }
        let Ok(call) = serde_json::from_slice::<PlainCall<'_>>(line) else {
            return false;
        };
        if call.method != "tools/call" || call.jsonrpc != "2.0" || jsonrpc::too_deep(line) {
            return false;
        }
        let Ok(id) = serde_json::from_str::<RequestId>(call.id.get()) else {
            return false;
        };
        // Per-request protocol fields mean the 2026-07-28 era, whose results carry
        // `resultType`: rmcp's path. A progress token is relayed.
        let mut progress_token = None;
        if let Some(m) = call.params.meta {
            if m.get().contains("io.modelcontextprotocol/") {
                return false;
            }
            match serde_json::from_str::<Meta<'_>>(m.get()) {
                Ok(meta) => progress_token = meta.progress_token,
                Err(_) => return false,
            }
        }
        // Not a child's tool, or one whose toolset is off on this connection (then
        // `call_tool` refuses it).
        if !self.shows_child_tool(&call.params.name) {
            return false;
        }
        let Some(target) = self.instances().fast_target(&call.params.name) else {
            return false;
        };
        if !out.ledger().open(&id, batch) {
            refuse(out, batch, &Refusal::duplicate(&id));
            return true;
        }
        if self
            .instances()
            .fast_forward(&target, call.id, call.params.arguments, progress_token)
        {
            return true;
        }
        // Not taken after all: rmcp's path puts it in flight again. Its batch, if any, is
        // not sealed yet, so this cannot complete it.
        out.ledger().close(&id);
        false
    }

    /// The audit event of a fast call, like the one `call_tool` records.
    fn fast_audit_event(&self, done: FastDone) -> Option<NewEvent> {
        let outcome = if done.error.is_some() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        self.inner
            .tool_calls
            .record(&done.tool, outcome, done.started.elapsed());
        let client = self.inner.fast_client.get()?;
        let arguments: Option<serde_json::Value> = done
            .arguments
            .as_ref()
            .and_then(|a| serde_json::from_str(a.get()).ok());
        Some(NewEvent {
            actor: client.actor.clone(),
            action: Action::ToolCall,
            subject: done.tool,
            outcome,
            detail: serde_json::json!({
                "arguments": arguments,
                "duration_us": done.started.elapsed().as_micros() as u64,
                "protocol_version": client.protocol_version,
                "era": "legacy",
                "session": self.inner.session_id,
                "os_user": self.inner.os_user,
                "error": done.error,
                "relay": "fast",
            }),
            critical: false,
        })
    }
}

/// Answers a message with an error: now, or in its batch's array.
fn refuse(out: &ClientOut, batch: Option<BatchId>, refusal: &Refusal) {
    let answer = refusal.to_json(|id| out.ledger().is_open(id));
    match batch {
        Some(b) => out.ledger().batch_answer(b, &answer),
        None => {
            let mut line = answer;
            line.push(b'\n');
            if let Err(e) = out.write_own(&line) {
                tracing::debug!(error = %e, "could not answer a client message");
            }
        }
    }
}

/// Queues a message for rmcp, one line.
fn forward(for_rmcp: &mut ToRmcp, line: &[u8]) {
    for_rmcp.lines.extend_from_slice(line);
    if !line.ends_with(b"\n") {
        for_rmcp.lines.push(b'\n');
    }
}
