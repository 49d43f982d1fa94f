//! The client's requests awaiting their one answer on stdio, and the JSON-RPC batches whose
//! answers are gathered into one array. Every answer on its way to the client passes here
//! (`ClientOut::write_lines`), whether rmcp or the fast path wrote it, so a request id is in
//! flight from the moment the relay reads it until its answer is written, whichever way it took.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use rmcp::model::RequestId;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A JSON-RPC batch whose answers are being gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(u64);

/// Requests in flight and batches being gathered.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Requests in flight, with the batch each belongs to.
    open: HashMap<RequestId, Option<BatchId>>,
    batches: HashMap<BatchId, Batch>,
    next_batch: u64,
}

#[derive(Default)]
struct Batch {
    /// Requests of the batch not answered yet.
    waiting: usize,
    /// Every element of the batch has been read: no request joins it any more.
    sealed: bool,
    /// The answers so far, each followed by a comma.
    answers: Vec<u8>,
}

impl Batch {
    /// The batch's one response line: its answers as an array, or nothing if it had none
    /// (a batch of notifications gets no response at all).
    fn into_line(mut self) -> Option<Vec<u8>> {
        if self.answers.is_empty() {
            return None;
        }
        self.answers.pop();
        let mut line = Vec::with_capacity(self.answers.len() + 3);
        line.push(b'[');
        line.extend_from_slice(&self.answers);
        line.extend_from_slice(b"]\n");
        Some(line)
    }
}

impl State {
    /// Takes `id` out of flight; returns the response line of its batch if that completes it.
    fn close(&mut self, id: &RequestId, answer: Option<&[u8]>) -> Option<Vec<u8>> {
        let batch = self.open.remove(id)??;
        let b = self.batches.get_mut(&batch)?;
        b.waiting = b.waiting.saturating_sub(1);
        if let Some(answer) = answer {
            b.answers.extend_from_slice(answer);
            b.answers.push(b',');
        }
        if b.sealed && b.waiting == 0 {
            return self.batches.remove(&batch)?.into_line();
        }
        None
    }
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a request in flight (in `batch`, if it came in one); `false` if a request with
    /// the same id is in flight already.
    pub fn open(&self, id: &RequestId, batch: Option<BatchId>) -> bool {
        let mut s = self.lock();
        if s.open.contains_key(id) {
            return false;
        }
        s.open.insert(id.clone(), batch);
        if let Some(b) = batch.and_then(|b| s.batches.get_mut(&b)) {
            b.waiting += 1;
        }
        true
    }

    /// Whether a request with this id is in flight.
    pub fn is_open(&self, id: &RequestId) -> bool {
        self.lock().open.contains_key(id)
    }

    /// Takes a request out of flight without an answer: the client cancelled it (no answer
    /// follows a cancellation), or it was not sent after all. Returns its batch's response
    /// line if that completes the batch.
    pub fn close(&self, id: &RequestId) -> Option<Vec<u8>> {
        self.lock().close(id, None)
    }

    /// Starts gathering a batch.
    pub fn batch(&self) -> BatchId {
        let mut s = self.lock();
        s.next_batch += 1;
        let id = BatchId(s.next_batch);
        s.batches.insert(id, Batch::default());
        id
    }

    /// Adds an answer the relay made itself (one JSON object, no newline) to a batch.
    pub fn batch_answer(&self, batch: BatchId, answer: &[u8]) {
        if let Some(b) = self.lock().batches.get_mut(&batch) {
            b.answers.extend_from_slice(answer);
            b.answers.push(b',');
        }
    }

    /// Every element of the batch is read: returns its response line if nothing is left to
    /// wait for.
    pub fn seal(&self, batch: BatchId) -> Option<Vec<u8>> {
        let mut s = self.lock();
        let b = s.batches.get_mut(&batch)?;
        b.sealed = true;
        if b.waiting == 0 {
            return s.batches.remove(&batch)?.into_line();
        }
        None
    }

    /// Accounts for whole lines on their way to the client: an answer takes its request out
    /// of flight, an answer to a batched request joins its batch (written once the batch is
    /// complete), and an error without an id gets the `"id": null` JSON-RPC requires.
    /// Returns what to write.
    pub fn settle<'a>(&self, lines: &'a [u8]) -> Cow<'a, [u8]> {
        let mut s = self.lock();
        if s.open.is_empty() && !contains_idless_error(lines) {
            return Cow::Borrowed(lines);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut from = 0;
        while from < lines.len() {
            let end = memchr::memchr(b'\n', &lines[from..]).map_or(lines.len(), |i| from + i + 1);
            let line = &lines[from..end];
            let (keep, extra) = if let Some(rest) = line.strip_prefix(IDLESS_ERROR) {
                let mut fixed = Vec::with_capacity(line.len() + 10);
                fixed.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":");
                fixed.extend_from_slice(rest);
                (false, Some(fixed))
            } else {
                match answer_id(line).filter(|id| s.open.contains_key(id)) {
                    None => (true, None),
                    Some(id) => match s.open.get(&id).copied().flatten() {
                        None => {
                            s.open.remove(&id);
                            (true, None)
                        }
                        Some(_) => {
                            let answer = line.strip_suffix(b"\n").unwrap_or(line);
                            (false, s.close(&id, Some(answer)))
                        }
                    },
                }
            };
            match (&mut out, keep) {
                (None, true) => {}
                (None, false) => {
                    let mut o = Vec::with_capacity(lines.len());
                    o.extend_from_slice(&lines[..from]);
                    out = Some(o);
                }
                (Some(o), true) => o.extend_from_slice(line),
                (Some(_), false) => {}
            }
            if let (Some(o), Some(extra)) = (&mut out, extra) {
                o.extend_from_slice(&extra);
                if !o.ends_with(b"\n") {
                    o.push(b'\n');
                }
            }
            from = end;
        }
        match out {
            Some(o) => Cow::Owned(o),
            None => Cow::Borrowed(lines),
        }
    }
}

/// How rmcp writes an error it could not tie to a request: without the `id` member.
const IDLESS_ERROR: &[u8] = b"{\"jsonrpc\":\"2.0\",\"error\":";

fn contains_idless_error(lines: &[u8]) -> bool {
    lines.starts_with(IDLESS_ERROR)
        || crate::instance::child::contains(lines, b"\n{\"jsonrpc\":\"2.0\",\"error\":")
}

/// A line as far as telling an answer from a request needs.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<&'a RawValue>,
}

/// The id of an answer (a response or an error to a request), `None` for anything else.
fn answer_id(line: &[u8]) -> Option<RequestId> {
    // rmcp and the fast path both write answers as `{"jsonrpc":"2.0","id":ID,"result"|"error":`
    // and requests as `... "id":ID,"method":`: reading the id and the key after it spares a
    // scan of the whole result. Anything else is parsed in full.
    const HEAD: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":";
    if line.starts_with(b"{\"jsonrpc\":\"2.0\",\"method\":") {
        return None;
    }
    if let Some(rest) = line.strip_prefix(HEAD) {
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<&RawValue>();
        if let Some(Ok(id)) = values.next() {
            let after = &rest[values.byte_offset()..];
            if after.starts_with(b",\"result\":") || after.starts_with(b",\"error\":") {
                return serde_json::from_str(id.get()).ok();
            }
            if after.starts_with(b",\"method\":") {
                return None;
            }
        }
    }
    let head: Head<'_> = serde_json::from_slice(line).ok()?;
    if head.method.is_some() {
        return None;
    }
    serde_json::from_str(head.id?.get()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn id(n: i64) -> RequestId {
        RequestId::Number(n)
    }

    #[test]
    fn an_answer_takes_its_request_out_of_flight() {
        let l = Ledger::default();
        assert!(l.open(&id(1), None));
        assert!(
            !l.open(&id(1), None),
            "a second request with id 1 is a duplicate"
        );
        // A request the server sends with the same number is not an answer.
        let req = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"elicitation/create\"}\n";
        assert_eq!(&*l.settle(req), req);
        assert!(l.is_open(&id(1)));
        let answer = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n";
        assert_eq!(&*l.settle(answer), answer);
        assert!(!l.is_open(&id(1)));
        assert!(l.open(&id(1), None), "the id is free once answered");
    }

    #[test]
    fn ids_compare_as_rmcp_reads_them() {
        let l = Ledger::default();
        assert!(l.open(&serde_json::from_str("1.0").unwrap(), None));
        l.settle(b"{\"result\":{},\"id\":1,\"jsonrpc\":\"2.0\"}\n");
        assert!(!l.is_open(&id(1)));
        assert!(l.open(&RequestId::String("1".into()), None));
        assert!(l.open(&id(1), None), "\"1\" and 1 are different ids");
    }

    #[test]
    fn a_batch_is_written_once_all_its_answers_are_in() {
        let l = Ledger::default();
        let b = l.batch();
        assert!(l.open(&id(1), Some(b)));
        assert!(l.open(&id(2), Some(b)));
        assert!(l.open(&id(3), Some(b)));
        l.batch_answer(b, b"{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{}}");
        assert_eq!(l.seal(b), None);
        let out = l.settle(
            b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n",
        );
        assert_eq!(&*out, b"{\"jsonrpc\":\"2.0\",\"id\":9,\"result\":{}}\n");
        assert_eq!(l.close(&id(3)), None, "a cancelled request adds nothing");
        let out = l.settle(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":1}}\n");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let ids: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].clone())
            .collect();
        assert_eq!(ids, [serde_json::Value::Null, 2.into(), 1.into()]);
        assert!(out.ends_with(b"]\n"));
    }

    #[test]
    fn a_batch_of_notifications_gets_nothing() {
        let l = Ledger::default();
        let b = l.batch();
        assert_eq!(l.seal(b), None);
    }

    #[test]
    fn an_error_without_an_id_gets_a_null_id() {
        let l = Ledger::default();
        let out =
            l.settle(b"{\"jsonrpc\":\"2.0\",\"error\":{\"code\":-32600,\"message\":\"x\"}}\n");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("id").is_some_and(|i| i.is_null()), "{v}");
    }
}
