//! The coordinator's stdio, split between rmcp and the fast path of proxied calls: a plain
//! `tools/call` of an allowed child tool from an initialize-era client goes straight to the
//! child (see `instance::fast`), every other line goes to rmcp; rmcp's output and fast-path
//! answers share stdout one whole line at a time. stdin is read by the relay thread
//! (`instance::reactor`) with the children's stdouts, so a proxied call costs no task hand-off.

use std::borrow::Cow;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

use super::Coordinator;
use crate::audit::{Action, NewEvent, Outcome};
use crate::instance::{
    ClientOut, FastDone, FastHooks, LineReader, PipeWriter, RmcpLines, Source, contains,
};

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

#[derive(Deserialize)]
struct Cancelled<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: CancelledParams<'a>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(borrow, rename = "requestId")]
    request_id: &'a RawValue,
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
    let audit = c.inner.audit_batch.clone();
    let me = c.clone();
    c.instances().set_fast_hooks(FastHooks {
        client_out: out.clone(),
        on_done: Box::new(move |done: FastDone| {
            if let Some(event) = me.fast_audit_event(done) {
                let _ = audit.send(Some(event));
            }
        }),
        runtime: tokio::runtime::Handle::current(),
    });
    let source = StdinSource {
        c: c.clone(),
        input,
        to_rmcp: RmcpLines::new(to_rmcp),
        for_rmcp: Vec::with_capacity(8192),
    };
    c.instances().reactor()?.add(Box::new(source))?;
    let answered = c.inner.answered.clone();
    let output = tokio::spawn(output_pump(from_rmcp, out, answered));
    Ok((rmcp_reads, rmcp_writes, output))
}

/// The client's stdin, read by the reactor: fast calls and their cancellations are handled
/// here, the rest go to rmcp, a read's worth at a time. At EOF rmcp sees the client leave.
struct StdinSource {
    c: Coordinator,
    input: LineReader,
    to_rmcp: RmcpLines,
    for_rmcp: Vec<u8>,
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
            input,
            for_rmcp,
            to_rmcp,
        } = self;
        let more = input.read_lines(|line| {
            c.client_active();
            if !c.fast_path(line) {
                for_rmcp.extend_from_slice(line);
            }
        });
        let dropped = input.take_dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "dropped client messages longer than {} MiB; they get no answer",
                crate::instance::MAX_LINE >> 20
            );
        }
        if !for_rmcp.is_empty() {
            if !for_rmcp.ends_with(b"\n") {
                for_rmcp.push(b'\n');
            }
            if !to_rmcp.send(std::mem::take(for_rmcp)) {
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
            match more.iter().rposition(|&b| b == b'\n') {
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
    let _ = tokio::task::spawn_blocking(move || {
        out.wait_drained(std::time::Duration::from_millis(500))
    })
    .await;
}

impl Coordinator {
    /// Handles a line on the fast path if it can; `false` sends it to rmcp.
    fn fast_path(&self, line: &[u8]) -> bool {
        if self.inner.fast_client.get().is_none() || !self.instances_enabled() {
            return false;
        }
        if contains(line, b"\"tools/call\"") {
            let Ok(call) = serde_json::from_slice::<PlainCall<'_>>(line) else {
                return false;
            };
            if call.method != "tools/call" {
                return false;
            }
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
            let Some(target) = self.instances().fast_target(&call.params.name) else {
                return false;
            };
            return self.instances().fast_forward(
                &target,
                call.id,
                call.params.arguments,
                progress_token,
            );
        }
        if contains(line, b"notifications/cancelled")
            && let Ok(n) = serde_json::from_slice::<Cancelled<'_>>(line)
            && n.method == "notifications/cancelled"
        {
            return self.instances().fast_cancel(n.params.request_id.get());
        }
        false
    }

    /// The audit event of a fast call, like the one `call_tool` records.
    fn fast_audit_event(&self, done: FastDone) -> Option<NewEvent> {
        let client = self.inner.fast_client.get()?;
        let arguments: Option<serde_json::Value> = done
            .arguments
            .as_ref()
            .and_then(|a| serde_json::from_str(a.get()).ok());
        let outcome = if done.error.is_some() {
            Outcome::Error
        } else {
            Outcome::Ok
        };
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
