//! Every JSON-RPC request gets exactly one response over stdio, whatever its shape: a raw
//! client sends what no well-behaved client would (bad versions, params, ids, batches, deep
//! nesting, duplicate ids in flight) in both protocol eras, and after each one the server
//! still answers a real tool call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::Era;
use serde_json::{Value, json};

/// The server on a data directory, stdin and stdout piped.
fn spawn(dir: &std::path::Path) -> Child {
    Command::new(common::BIN)
        .env("MCP_COORDINATOR_TOOLSETS", "all")
        .arg("--data-dir")
        .arg(dir)
        .args(["--log-level", "error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// A server spoken to in raw lines; stdout is read by a thread so reads can time out.
struct Raw {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    era: Era,
    /// Sentinel ids.
    next: u64,
    _dir: tempfile::TempDir,
}

impl Raw {
    fn start(era: Era) -> Raw {
        let dir = common::data_dir();
        let mut child = spawn(dir.path());
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut raw = Raw {
            child,
            stdin,
            lines,
            era,
            next: 0,
            _dir: dir,
        };
        match era {
            Era::Legacy => {
                let init = json!({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"}}});
                raw.send(&init.to_string());
                let got = raw.until_id(&json!("init"));
                assert!(got.last().unwrap()["result"].is_object(), "{got:?}");
                raw.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
            }
            Era::Stateless => {
                let discover = json!({"jsonrpc": "2.0", "id": "discover",
                    "method": "server/discover", "params": {"_meta": meta()}});
                raw.send(&discover.to_string());
                let got = raw.until_id(&json!("discover"));
                assert!(got.last().unwrap()["result"].is_object(), "{got:?}");
            }
        }
        raw
    }

    /// The params of a request in this era (2026-07-28 requests carry their metadata).
    fn params(&self, mut p: Value) -> Value {
        if self.era == Era::Stateless {
            p["_meta"] = meta();
        }
        p
    }

    fn send(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn next_text(&self, until: Instant) -> Option<String> {
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed stdout"),
        }
    }

    /// Every line up to and including the response with this id (10 s at most).
    fn until_id(&self, id: &Value) -> Vec<Value> {
        self.text_until_id(id)
            .iter()
            .map(|line| parse(line))
            .collect()
    }

    fn text_until_id(&self, id: &Value) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while let Some(line) = self.next_text(until) {
            // A line serde_json cannot read (an id echoed as written) is not the one sought.
            let done = serde_json::from_str::<Value>(&line).is_ok_and(|v| v.get("id") == Some(id));
            got.push(line);
            if done {
                return got;
            }
        }
        panic!("no response with id {id} within 10 s; got {got:?}");
    }

    /// Sends `text`, then a sentinel request; returns every other line read until both its answer
    /// and `expect` lines have come. Anything a message causes is on its way by the time the
    /// sentinel after it is answered, so a second answer to one request would show here.
    fn exchange(&mut self, text: &str, expect: usize) -> Vec<Value> {
        self.exchange_text(text, expect)
            .iter()
            .map(|line| parse(line))
            .collect()
    }

    /// [`Raw::exchange`], the lines as written.
    fn exchange_text(&mut self, text: &str, expect: usize) -> Vec<String> {
        self.next += 1;
        let sentinel = json!(format!("sentinel-{}", self.next));
        self.send(text);
        // 2026-07-28 has no ping; server/discover is answered at any time.
        let method = match self.era {
            Era::Legacy => "ping",
            Era::Stateless => "server/discover",
        };
        let ping = json!({"jsonrpc": "2.0", "id": sentinel, "method": method,
            "params": self.params(json!({}))});
        self.send(&ping.to_string());
        let mut got = self.text_until_id(&sentinel);
        let pong = parse(&got.pop().unwrap());
        assert!(pong["result"].is_object(), "the sentinel: {pong}");
        let until = Instant::now() + Duration::from_secs(10);
        while got.len() < expect {
            match self.next_text(until) {
                Some(v) => got.push(v),
                None => break,
            }
        }
        // Whatever else is already on its way.
        let until = Instant::now() + Duration::from_millis(200);
        while let Some(v) = self.next_text(until) {
            got.push(v);
        }
        got
    }

    /// A tool call that must work: the server still serves.
    fn still_serves(&mut self, id: &str) {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": self.params(json!({"name": "coordinator_status", "arguments": {}}))});
        self.send(&call.to_string());
        let got = self.until_id(&json!(id));
        let answer = got.last().unwrap();
        assert_eq!(
            answer["result"]["structuredContent"]["name"], "mcp-coordinator",
            "{answer}"
        );
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("stdout carried a line that is not JSON ({e}): {line}"))
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A `tools/call` of `coordinator_status` with `raw` (JSON text serde_json cannot read into a
/// value) as an argument.
fn unreadable(s: &Raw, id: u64, raw: &str) -> String {
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": s.params(json!({"name": "coordinator_status", "arguments": {"x": "RAW"}}))});
    call.to_string().replace(r#""RAW""#, raw)
}

/// Asserts `got` is exactly one error response with this code and id.
fn one_error(what: &str, got: &[Value], code: i64, id: Value) {
    assert_eq!(got.len(), 1, "{what}: expected one response, got {got:?}");
    let r = &got[0];
    assert_eq!(r["jsonrpc"], "2.0", "{what}: {r}");
    assert_eq!(r["error"]["code"], code, "{what}: {r}");
    assert!(
        r.get("id") == Some(&id),
        "{what}: id should be {id} (present, even if null): {r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {r}"
    );
}

#[test]
fn every_malformed_request_gets_exactly_one_error_in_both_eras() {
    for era in common::ERAS {
        let mut s = Raw::start(era);
        let list = s.params(json!({}));
        let cases: Vec<(&str, String, i64, Value)> = vec![
            (
                "jsonrpc 1.0",
                json!({"jsonrpc": "1.0", "id": 1, "method": "tools/list", "params": list})
                    .to_string(),
                -32600,
                json!(1),
            ),
            (
                "no jsonrpc member",
                json!({"id": 2, "method": "tools/list", "params": list}).to_string(),
                -32600,
                json!(2),
            ),
            (
                "params a string",
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": "all"})
                    .to_string(),
                -32600,
                json!(3),
            ),
            (
                "params an array",
                json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": [1]})
                    .to_string(),
                -32602,
                json!("a"),
            ),
            (
                "tools/call with a number for a name",
                json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                    "params": s.params(json!({"name": 5}))})
                .to_string(),
                -32602,
                json!(4),
            ),
            (
                "unknown method",
                json!({"jsonrpc": "2.0", "id": 5, "method": "no/such", "params": list}).to_string(),
                -32601,
                json!(5),
            ),
            (
                "method a number",
                json!({"jsonrpc": "2.0", "id": 6, "method": 6}).to_string(),
                -32600,
                json!(6),
            ),
            (
                "id an object",
                json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}).to_string(),
                -32600,
                Value::Null,
            ),
            (
                "id null",
                json!({"jsonrpc": "2.0", "id": null, "method": "ping"}).to_string(),
                -32600,
                Value::Null,
            ),
            ("not JSON", "hello".into(), -32700, Value::Null),
            (
                "trailing garbage",
                r#"{"jsonrpc":"2.0","id":7,"method":"ping"} x"#.into(),
                -32700,
                Value::Null,
            ),
            ("a bare number", "5".into(), -32600, Value::Null),
            (
                "100k nested arrays",
                "[".repeat(100_000),
                -32700,
                Value::Null,
            ),
            (
                "a request nested 200 deep",
                format!(
                    r#"{{"jsonrpc":"2.0","id":8,"method":"ping","params":{{"a":{}{}}}}}"#,
                    "[".repeat(200),
                    "]".repeat(200)
                ),
                -32700,
                Value::Null,
            ),
            ("an empty batch", "[]".into(), -32600, Value::Null),
            // serde_json reads these into no value: rmcp used to drop the request unanswered.
            (
                "a lone surrogate in the arguments",
                unreadable(&s, 9, r#""\ud800""#),
                -32602,
                json!(9),
            ),
            (
                "a number beyond f64 in the arguments",
                unreadable(&s, 10, "1e400"),
                -32602,
                json!(10),
            ),
        ];
        for (what, text, code, id) in &cases {
            let what = format!("{era:?}: {what}");
            let got = s.exchange(text, 1);
            one_error(&what, &got, *code, id.clone());
        }
        s.still_serves("after-malformed");
    }
}

#[test]
fn ids_no_request_id_holds_are_echoed_as_written() {
    let digits = "7".repeat(4000);
    for era in common::ERAS {
        let mut s = Raw::start(era);
        for (what, id) in [
            ("2^63", "9223372036854775808"),
            ("-2^63-1", "-9223372036854775809"),
            ("a fraction", "1.5"),
            ("4,000 digits", digits.as_str()),
            ("a lone surrogate", r#""k\ud800""#),
        ] {
            let what = format!("{era:?}: {what}");
            for request in [
                format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#),
                format!(r#"{{"jsonrpc":"1.0","id":{id},"method":"tools/list"}}"#),
            ] {
                let got = s.exchange_text(&request, 1);
                assert_eq!(got.len(), 1, "{what}: one answer to {request}: {got:?}");
                let prefix = format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32600,"#);
                assert!(got[0].starts_with(&prefix), "{what}: {}", got[0]);
            }
        }
        // In a batch as well, inside its one array.
        let got = s.exchange_text(
            r#"[{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}]"#,
            1,
        );
        assert_eq!(got.len(), 1, "{era:?}: {got:?}");
        let answers = parse(&got[0]);
        assert_eq!(
            answers[0]["id"],
            json!(18446744073709551616.0),
            "{era:?}: {answers}"
        );
        assert!(
            got[0].contains(r#""id":18446744073709551616,"#),
            "{era:?}: {}",
            got[0]
        );
        s.still_serves("after-unread-ids");
    }
}

#[test]
fn notifications_get_no_response() {
    for era in common::ERAS {
        let mut s = Raw::start(era);
        for text in [
            r#"{"jsonrpc":"2.0","method":"no/such"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"never"}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":"bad"}"#,
        ] {
            let got = s.exchange(text, 0);
            assert!(got.is_empty(), "{era:?}: {text} was answered: {got:?}");
        }
        s.still_serves("after-notifications");
    }
}

#[test]
fn a_batch_gets_one_array_of_its_answers() {
    for era in common::ERAS {
        let mut s = Raw::start(era);
        let batch = json!([
            {"jsonrpc": "2.0", "id": "b1", "method": "tools/list", "params": s.params(json!({}))},
            {"jsonrpc": "2.0", "method": "no/such/notification"},
            {"jsonrpc": "2.0", "id": "b2", "method": "tools/call",
                "params": s.params(json!({"name": "coordinator_status", "arguments": {}}))},
            1,
            {"jsonrpc": "1.0", "id": "b3", "method": "ping"},
        ]);
        let got = s.exchange(&batch.to_string(), 1);
        assert_eq!(got.len(), 1, "{era:?}: one response for the batch: {got:?}");
        let answers = got[0]
            .as_array()
            .unwrap_or_else(|| panic!("{era:?}: not an array: {}", got[0]));
        let mut ids: Vec<String> = answers.iter().map(|a| a["id"].to_string()).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["\"b1\"", "\"b2\"", "\"b3\"", "null"],
            "{era:?}: {answers:?}"
        );
        for a in answers {
            match a["id"].as_str() {
                Some("b1") => assert!(a["result"]["tools"].is_array(), "{a}"),
                Some("b2") => {
                    assert_eq!(a["result"]["structuredContent"]["name"], "mcp-coordinator")
                }
                Some("b3") => assert_eq!(a["error"]["code"], -32600, "{a}"),
                _ => assert_eq!(a["error"]["code"], -32600, "{a}"),
            }
        }
        // A batch of notifications only is not answered at all.
        let got = s.exchange(r#"[{"jsonrpc":"2.0","method":"no/such"}]"#, 0);
        assert!(got.is_empty(), "{era:?}: {got:?}");
        s.still_serves("after-batches");
    }
}

#[test]
fn a_duplicate_id_in_flight_is_refused_and_the_first_answered_once() {
    for era in common::ERAS {
        let mut s = Raw::start(era);
        let call = json!({"jsonrpc": "2.0", "id": "dup", "method": "tools/call",
            "params": s.params(json!({"name": "coordinator_status", "arguments": {}}))});
        // One write: the second arrives while the first is in flight.
        let got = s.exchange(&format!("{call}\n{call}"), 2);
        let answers: Vec<&Value> = got.iter().filter(|v| v["id"] == "dup").collect();
        assert_eq!(answers.len(), 1, "{era:?}: {got:?}");
        assert_eq!(
            answers[0]["result"]["structuredContent"]["name"], "mcp-coordinator",
            "{era:?}: the first request is served: {got:?}"
        );
        let refusals: Vec<&Value> = got.iter().filter(|v| v["id"].is_null()).collect();
        assert_eq!(refusals.len(), 1, "{era:?}: {got:?}");
        assert_eq!(refusals[0]["error"]["code"], -32600, "{era:?}: {got:?}");
        assert_eq!(
            refusals[0]["error"]["data"]["duplicate_id"], "dup",
            "{era:?}: {got:?}"
        );
        assert_eq!(got.len(), 2, "{era:?}: nothing else: {got:?}");
        // Once answered, the id is free again.
        s.still_serves("dup");
    }
}

#[test]
fn notifications_and_answers_before_the_session_do_not_end_it() {
    let dir = common::data_dir();
    let mut child = spawn(dir.path());
    let mut stdin = child.stdin.take().unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    // Too early, all of them: rmcp used to end the session on the first.
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":77,"result":{{}}}}"#).unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":1}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":1,"progress":1}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":78,"error":{{"code":1,"message":"x"}}}}"#
    )
    .unwrap();
    writeln!(stdin, "{init}").unwrap();
    stdin.flush().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().expect("an answer").unwrap()).unwrap();
    assert_eq!(first["id"], 1, "{first}");
    assert!(first["result"]["protocolVersion"].is_string(), "{first}");
    drop(stdin);
    let _ = child.wait();
}
