//! The fast path of a proxied `tools/call`: the request line from the client is rewritten (new
//! id, the child's tool name) and written straight to the child's stdin, and the child's
//! response line is rewritten back (the client's id) and written straight to the client, with
//! no parse of the arguments or the result and no task hand-off in between: the relay thread
//! (`reactor.rs`) reads the client's stdin and every child's stdout and does both, with writes
//! that never block (`pipe.rs`). Everything that is not a plain call
//! of an allowed tool (approval, an open breaker, the 2026-07-28 era, retries) takes the rmcp
//! path in `call.rs`; both share the child's pipes here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

use super::pipe::{LineReader, PipeWriter};
use crate::instance::redact::Redactor;
use crate::instance::{ChildTool, InstanceService, Live, Target, lock};

/// Where fast-path answers go: the client's side of the coordinator's stdio (the server's
/// `ClientOut`, in `server/relay.rs`), shared with rmcp's own output, one whole line at a time;
/// it accounts each answer to the request in flight before writing it, and never blocks.
pub trait ClientSink: Send + Sync {
    /// Writes one or more whole JSON-RPC lines (each ending in a newline).
    fn write_lines(&self, lines: &[u8]) -> std::io::Result<()>;
}

/// What the server learns when a fast call ends (for its audit record).
pub struct FastDone {
    /// The exposed tool name.
    pub tool: String,
    pub started: Instant,
    /// `None` on success, else the error code (`unavailable`, `child_error`).
    pub error: Option<String>,
    /// The call's arguments, as the client sent them.
    pub arguments: Option<Box<RawValue>>,
}

/// Set once by the server: where responses go and who records them.
pub struct FastHooks {
    pub client_out: Arc<dyn ClientSink>,
    pub on_done: Box<dyn Fn(FastDone) + Send + Sync>,
    /// The runtime, for the work the relay thread hands off (retries).
    pub runtime: tokio::runtime::Handle,
}

/// A call in flight on the fast path.
struct Pending {
    client_id: Box<RawValue>,
    live: Arc<Live>,
    tool: Arc<ChildTool>,
    started: Instant,
    deadline: Instant,
    arguments: Option<Box<RawValue>>,
    /// The client's progress token; the child gets `"fp-N"` instead.
    progress_token: Option<Box<RawValue>>,
}

/// The child's stdin (shared by rmcp's writes and the fast path) and the fast calls in flight.
pub struct FastLink {
    stdin: PipeWriter,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

impl FastLink {
    fn write_line(&self, line: &[u8]) -> std::io::Result<()> {
        self.stdin.write(line)
    }
}

/// Interposes on a child's pipes: returns the link and the pipe ends rmcp's client uses.
/// The child's stdout is read by a thread of its own (named after the instance).
pub(super) fn interpose(
    svc: &InstanceService,
    live: &Arc<Live>,
    redact: &Redactor,
    stdin: ChildStdin,
    stdout: ChildStdout,
) -> std::io::Result<(
    Arc<FastLink>,
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
)> {
    let stdin = PipeWriter::new(stdin.into_owned_fd()?, &format!("{} stdin", live.name))?;
    let stdout = LineReader::new(stdout.into_owned_fd()?);
    let link = Arc::new(FastLink {
        stdin,
        pending: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    });
    let (rmcp_reads, from_child) = tokio::io::duplex(1 << 20);
    let (to_child, rmcp_writes) = tokio::io::duplex(1 << 20);
    let source = ChildSource {
        svc: svc.clone(),
        name: live.name.clone(),
        redact: redact.clone(),
        link: link.clone(),
        stdout,
        to_rmcp: RmcpLines::new(from_child),
        to_client: Vec::with_capacity(8192),
        for_rmcp: Vec::with_capacity(8192),
    };
    svc.reactor()?.add(Box::new(source))?;
    tokio::spawn(child_writer(link.clone(), rmcp_writes));
    tokio::spawn(sweep_timeouts(svc.clone(), Arc::downgrade(&link)));
    Ok((link, rmcp_reads, to_child))
}

/// Lines on their way to rmcp: a task writes them to rmcp's side of a pipe, so the relay
/// thread never waits on rmcp. While more than [`RmcpLines::LIMIT`] bytes wait, the source
/// stops reading (its writer then blocks on a full pipe, not our memory).
pub struct RmcpLines {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    queued: Arc<AtomicU64>,
}

impl RmcpLines {
    const LIMIT: u64 = 4 << 20;

    /// Starts the task writing to `to`; it closes `to` when this is dropped.
    pub fn new(mut to: tokio::io::DuplexStream) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let queued = Arc::new(AtomicU64::new(0));
        let q = queued.clone();
        tokio::spawn(async move {
            while let Some(lines) = rx.recv().await {
                let written = to.write_all(&lines).await;
                q.fetch_sub(lines.len() as u64, Ordering::Relaxed);
                if written.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        RmcpLines { tx, queued }
    }

    /// Queues whole lines; `false` once rmcp's side is gone.
    pub fn send(&self, lines: Vec<u8>) -> bool {
        let n = lines.len() as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.send(lines).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether rmcp is behind by more than the limit.
    pub fn backlogged(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > Self::LIMIT
    }
}

/// Copies rmcp's messages to the child's stdin, whole lines; at rmcp's end, closes the
/// child's stdin.
async fn child_writer(link: Arc<FastLink>, from_rmcp: tokio::io::DuplexStream) {
    let mut lines = BufReader::new(from_rmcp);
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !buf.ends_with(b"\n") {
                    buf.push(b'\n');
                }
                if link.write_line(&buf).is_err() {
                    break;
                }
            }
        }
    }
    // rmcp closed the session: the child sees EOF on stdin.
    link.stdin.close();
}

/// A child's response, as far as the fast path needs to read it.
#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// The code of a JSON-RPC error object.
#[derive(Deserialize)]
struct ErrorCodeOnly {
    code: i64,
}

const ID_PREFIX: &str = "\"fp-";

/// A child's stdout, read by the reactor: responses to fast calls go straight to the client,
/// everything else to rmcp. At EOF, fast calls in flight fail.
struct ChildSource {
    svc: InstanceService,
    /// The instance's name, for log lines.
    name: String,
    /// Its secret values, masked in answers and progress messages.
    redact: Redactor,
    link: Arc<FastLink>,
    stdout: LineReader,
    to_rmcp: RmcpLines,
    to_client: Vec<u8>,
    for_rmcp: Vec<u8>,
}

impl super::reactor::Source for ChildSource {
    fn fd(&self) -> std::os::fd::RawFd {
        self.stdout.fd()
    }

    fn paused(&self) -> bool {
        self.to_rmcp.backlogged()
    }

    fn ready(&mut self) -> bool {
        let ChildSource {
            svc,
            name,
            redact,
            link,
            stdout,
            to_rmcp,
            to_client,
            for_rmcp,
        } = self;
        let mut ended: Vec<(EndedCall, FastResponse)> = Vec::new();
        let more = stdout.read_lines(|line| {
            if contains(line, ID_PREFIX.as_bytes()) {
                if let Some((n, resp)) = fast_response(line) {
                    if let Some(p) = lock(&link.pending).remove(&n) {
                        ended.push((p.into_call(), resp));
                    }
                    return;
                }
                if let Some(progress) = fast_progress(link, redact, line) {
                    to_client.extend_from_slice(progress.as_bytes());
                    return;
                }
            }
            for_rmcp.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                for_rmcp.push(b'\n');
            }
        });
        let dropped = stdout.take_dropped();
        if dropped > 0 {
            tracing::warn!(
                instance = %name,
                dropped,
                "dropped stdout lines longer than {} MiB from the child",
                super::pipe::MAX_LINE >> 20
            );
        }
        // Answers first, in one write; then their bookkeeping.
        let mut done = Vec::with_capacity(ended.len());
        for (call, resp) in ended {
            if let Some(d) = svc.fast_finish(call, resp, redact, to_client) {
                done.push(d);
            }
        }
        if !to_client.is_empty() {
            svc.fast_write(to_client);
            to_client.clear();
        }
        svc.fast_record(done);
        if !for_rmcp.is_empty() {
            // Fails only once rmcp's session is over; fast answers still go through.
            to_rmcp.send(std::mem::take(for_rmcp));
        }
        match more {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "reading a child's stdout failed"),
        }
        let left: Vec<Pending> = lock(&link.pending).drain().map(|(_, p)| p).collect();
        for p in left {
            let name = p.live.name.clone();
            svc.fast_fail(
                p.into_call(),
                "unavailable",
                &format!("instance `{name}` closed its connection before answering"),
            );
        }
        false
    }
}

/// The fast-call number and response of a line whose id is `"fp-N"`.
fn fast_response(line: &[u8]) -> Option<(u64, FastResponse)> {
    let r: Response<'_> = serde_json::from_slice(line).ok()?;
    let id = r.id?.get();
    let n: u64 = id
        .strip_prefix(ID_PREFIX)?
        .strip_suffix('"')?
        .parse()
        .ok()?;
    let resp = match (r.result, r.error) {
        (Some(result), None) => FastResponse::Result(result.to_owned()),
        (None, Some(error)) => {
            let code = serde_json::from_str::<ErrorCodeOnly>(error.get())
                .map(|e| e.code)
                .unwrap_or(-32603);
            FastResponse::Error(code, error.to_owned())
        }
        _ => return None,
    };
    Some((n, resp))
}

/// A child's progress notification for a fast call, with the client's token put back.
#[derive(Deserialize)]
struct Progress<'a> {
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    params: ProgressParams<'a>,
}

#[derive(Deserialize)]
struct ProgressParams<'a> {
    #[serde(borrow, rename = "progressToken")]
    token: &'a RawValue,
    #[serde(borrow)]
    progress: &'a RawValue,
    #[serde(borrow)]
    total: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
}

fn fast_progress(link: &FastLink, redact: &Redactor, line: &[u8]) -> Option<String> {
    let p: Progress<'_> = serde_json::from_slice(line).ok()?;
    if p.method != "notifications/progress" {
        return None;
    }
    let n: u64 = p
        .params
        .token
        .get()
        .strip_prefix(ID_PREFIX)?
        .strip_suffix('"')?
        .parse()
        .ok()?;
    let token = lock(&link.pending)
        .get(&n)
        .and_then(|c| c.progress_token.as_ref().map(|t| t.get().to_string()))?;
    let mut out = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":{token},\"progress\":{}",
        p.params.progress.get()
    );
    if let Some(t) = p.params.total {
        out.push_str(",\"total\":");
        out.push_str(t.get());
    }
    if let Some(m) = p.params.message {
        out.push_str(",\"message\":");
        match redact.json_text(m.get()) {
            Some(masked) => out.push_str(&masked),
            None => out.push_str(m.get()),
        }
    }
    out.push_str("}}\n");
    Some(out)
}

/// Whether `needle` occurs in `hay` (a cheap test before parsing a line).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A child's answer to a fast call.
pub(super) enum FastResponse {
    Result(Box<RawValue>),
    Error(i64, Box<RawValue>),
}

/// A fast call whose child request has ended, handed back to the service.
pub(super) struct EndedCall {
    pub client_id: Box<RawValue>,
    pub live: Arc<Live>,
    pub tool: Arc<ChildTool>,
    pub started: Instant,
    pub arguments: Option<Box<RawValue>>,
}

impl EndedCall {
    fn done(self, error: Option<String>) -> FastDone {
        FastDone {
            tool: self.tool.exposed.clone(),
            started: self.started,
            error,
            arguments: self.arguments,
        }
    }
}

impl Pending {
    fn into_call(self) -> EndedCall {
        EndedCall {
            client_id: self.client_id,
            live: self.live,
            tool: self.tool,
            started: self.started,
            arguments: self.arguments,
        }
    }
}

/// Fails fast calls that passed their deadline (every 100 ms), and tells the child to stop.
async fn sweep_timeouts(svc: InstanceService, link: Weak<FastLink>) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(link) = link.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<(u64, Pending)> = {
            let mut pending = lock(&link.pending);
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(n, _)| *n)
                .collect();
            ids.into_iter()
                .filter_map(|n| pending.remove(&n).map(|p| (n, p)))
                .collect()
        };
        for (n, p) in expired {
            let cancel = format!(
                "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":\"fp-{n}\",\"reason\":\"timed out\"}}}}\n"
            );
            let _ = link.write_line(cancel.as_bytes());
            let ty = p.live.ty.clone();
            let message = format!(
                "tool `{}` of instance `{}` did not answer within {} s; the call was cancelled",
                p.tool.original, p.live.name, ty.call_timeout_seconds
            );
            svc.fast_fail(p.into_call(), "unavailable", &message);
        }
    }
}

/// Appends `{"jsonrpc":"2.0","id":ID,"KEY":BODY}` and a newline to `out`.
fn push_response(out: &mut Vec<u8>, id: &RawValue, key: &str, body: &str) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"}\n");
}

impl InstanceService {
    /// Sends a plain call of an allowed tool straight to the child. `false` when the fast path
    /// cannot take it (no fast link, breaker not closed, the child's stdin closed): use the
    /// rmcp path.
    pub fn fast_forward(
        &self,
        target: &Target,
        client_id: &RawValue,
        arguments: Option<&RawValue>,
        progress_token: Option<&RawValue>,
    ) -> bool {
        let Some(link) = target.conn.fast.clone() else {
            return false;
        };
        // Only a closed breaker: an open or half-open one is the rmcp path's to handle (and
        // `admit` would take the half-open probe).
        if lock(&target.live.breaker).open_until.is_some() {
            return false;
        }
        let n = link.next.fetch_add(1, Ordering::Relaxed);
        let name = serde_json::to_string(&target.tool.original).unwrap_or_default();
        let mut line =
            String::with_capacity(96 + name.len() + arguments.map_or(0, |a| a.get().len()));
        line.push_str("{\"jsonrpc\":\"2.0\",\"id\":\"fp-");
        line.push_str(&n.to_string());
        line.push_str("\",\"method\":\"tools/call\",\"params\":{\"name\":");
        line.push_str(&name);
        if let Some(a) = arguments {
            line.push_str(",\"arguments\":");
            line.push_str(a.get());
        }
        if progress_token.is_some() {
            line.push_str(",\"_meta\":{\"progressToken\":\"fp-");
            line.push_str(&n.to_string());
            line.push_str("\"}");
        }
        line.push_str("}}\n");
        let now = Instant::now();
        lock(&link.pending).insert(
            n,
            Pending {
                client_id: client_id.to_owned(),
                live: target.live.clone(),
                tool: target.tool.clone(),
                started: now,
                deadline: now + target.live.ty.call_timeout(),
                arguments: arguments.map(|a| a.to_owned()),
                progress_token: progress_token.map(|p| p.to_owned()),
            },
        );
        if link.write_line(line.as_bytes()).is_err() {
            // Not sent: take it back and let the rmcp path report the problem (unless the
            // child answered already, which it cannot have without the request).
            return lock(&link.pending).remove(&n).is_none();
        }
        true
    }

    /// A child answered a fast call: its answer for the client is appended to `out` as it
    /// is. Returns the call's record, or `None` when a retry took the call over.
    pub(super) fn fast_finish(
        &self,
        call: EndedCall,
        resp: FastResponse,
        redact: &Redactor,
        out: &mut Vec<u8>,
    ) -> Option<FastDone> {
        match resp {
            FastResponse::Result(result) => {
                lock(&call.live.breaker).success();
                let masked = redact.json_text(result.get());
                let result = masked.as_deref().unwrap_or(result.get());
                push_response(out, &call.client_id, "result", result);
                Some(call.done(None))
            }
            FastResponse::Error(code, error) => {
                let client_fault = matches!(code, -32602 | -32601 | -32600 | -32700);
                if client_fault {
                    lock(&call.live.breaker).success();
                } else {
                    let ty = &call.live.ty;
                    lock(&call.live.breaker).failure(
                        ty.breaker.failures,
                        Duration::from_secs_f64(ty.breaker.open_seconds),
                        Instant::now(),
                    );
                    if call.tool.read_only && ty.read_only_retries > 0 {
                        // Retries go the rmcp way, which knows backoff and reconnects.
                        self.fast_retry(call);
                        return None;
                    }
                }
                let masked = redact.json_text(error.get());
                let error = masked.as_deref().unwrap_or(error.get());
                push_response(out, &call.client_id, "error", error);
                Some(call.done(Some("child_error".into())))
            }
        }
    }

    /// Ends a fast call with a tool error result (`isError`, structured `{code, message}`).
    pub(super) fn fast_fail(&self, call: EndedCall, code: &str, message: &str) {
        let ty = &call.live.ty;
        lock(&call.live.breaker).failure(
            ty.breaker.failures,
            Duration::from_secs_f64(ty.breaker.open_seconds),
            Instant::now(),
        );
        let body = serde_json::json!({
            "content": [{"type": "text", "text": message}],
            "structuredContent": {"code": code, "message": message, "details": {"instance": call.live.name}, "retryable": true},
            "isError": true,
        });
        let mut out = Vec::new();
        push_response(&mut out, &call.client_id, "result", &body.to_string());
        self.fast_write(&out);
        self.fast_record(vec![call.done(Some(code.to_string()))]);
    }

    fn fast_retry(&self, call: EndedCall) {
        let Some(hooks) = self.inner.fast.get() else {
            return;
        };
        let svc = self.clone();
        hooks.runtime.spawn(async move {
            let arguments = call
                .arguments
                .as_ref()
                .and_then(|a| serde_json::from_str(a.get()).ok());
            let target = match svc.resolve(&call.live.name, &call.tool.original) {
                Ok(t) => t,
                Err(e) => {
                    let m = e.to_string();
                    svc.fast_fail(call, "unavailable", &m);
                    return;
                }
            };
            let attempts = call.live.ty.read_only_retries;
            let cancel = tokio_util::sync::CancellationToken::new();
            match svc
                .forward_attempts(&target, arguments, &cancel, attempts)
                .await
            {
                Ok(result) => {
                    let body = serde_json::to_string(&result).unwrap_or_else(|_| "{}".into());
                    let mut out = Vec::new();
                    push_response(&mut out, &call.client_id, "result", &body);
                    svc.fast_write(&out);
                    svc.fast_record(vec![call.done(None)]);
                }
                Err(e) => {
                    let m = e.to_string();
                    svc.fast_fail(call, "unavailable", &m);
                }
            }
        });
    }

    /// Writes whole answer lines to the client.
    fn fast_write(&self, lines: &[u8]) {
        let Some(hooks) = self.inner.fast.get() else {
            return;
        };
        if let Err(e) = hooks.client_out.write_lines(lines) {
            tracing::debug!(error = %e, "could not answer a proxied call");
        }
    }

    /// Hands ended calls to the server for its audit records.
    fn fast_record(&self, done: Vec<FastDone>) {
        let Some(hooks) = self.inner.fast.get() else {
            return;
        };
        for d in done {
            (hooks.on_done)(d);
        }
    }

    /// The relay thread, started on first use.
    pub fn reactor(&self) -> std::io::Result<Arc<super::reactor::Reactor>> {
        let mut slot = lock(&self.inner.reactor);
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(super::reactor::Reactor::start()?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Sets where fast-path responses go. Without it, every call takes the rmcp path.
    pub fn set_fast_hooks(&self, hooks: FastHooks) {
        let _ = self.inner.fast.set(hooks);
    }

    /// Whether the fast path is on (the server set its hooks).
    pub fn fast_enabled(&self) -> bool {
        self.inner.fast.get().is_some()
    }

    /// A client cancelled a call: if it is a fast call in flight, tell its child and drop it.
    pub fn fast_cancel(&self, client_id: &str) -> bool {
        for live in self.live_all() {
            let Some(link) = live.conn().and_then(|c| c.fast) else {
                continue;
            };
            let found = {
                let mut pending = lock(&link.pending);
                let n = pending
                    .iter()
                    .find(|(_, p)| p.client_id.get() == client_id)
                    .map(|(n, _)| *n);
                n.and_then(|n| pending.remove(&n).map(|p| (n, p)))
            };
            if let Some((n, p)) = found {
                let cancel = format!(
                    "{{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{{\"requestId\":\"fp-{n}\",\"reason\":\"cancelled by the client\"}}}}\n"
                );
                let _ = link.write_line(cancel.as_bytes());
                self.fast_record(vec![p.into_call().done(Some("cancelled".into()))]);
                return true;
            }
        }
        false
    }
}
