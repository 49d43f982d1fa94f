//! The stdio contract: every byte on stdout is a JSON-RPC message (even with trace logging),
//! logs go to stderr, and a client closing stdin or a SIGTERM ends the process with status 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

fn legacy_session() -> Vec<Value> {
    let mut msgs = vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}),
    ];
    for (i, (tool, args)) in calls().into_iter().enumerate() {
        msgs.push(
            json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                         "params": {"name": tool, "arguments": args}}),
        );
    }
    msgs
}

fn stateless_session() -> Vec<Value> {
    let mut msgs = vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta()}}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta()}}),
    ];
    for (i, (tool, args)) in calls().into_iter().enumerate() {
        msgs.push(
            json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                         "params": {"name": tool, "arguments": args, "_meta": meta()}}),
        );
    }
    msgs
}

/// Every tool, plus calls that fail in each way.
fn calls() -> Vec<(&'static str, Value)> {
    vec![
        ("coordinator_status", json!({})),
        ("audit_query", json!({"limit": 5})),
        ("audit_verify", json!({})),
        ("audit_query", json!({"limit": "many"})),
        ("nope", json!({})),
        (
            "audit_query",
            json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
        ),
    ]
}

/// Starts the server with all three standard streams piped.
fn spawn(dir: &std::path::Path, log_level: &str) -> std::process::Child {
    Command::new(common::BIN)
        .env("MCP_COORDINATOR_TOOLSETS", "all")
        .arg("--data-dir")
        .arg(dir)
        .args(["--log-level", log_level])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs one session at trace level; returns (exit code, stdout lines, stderr).
fn run_session(messages: &[Value]) -> (i32, Vec<String>, String) {
    let dir = common::data_dir();
    let mut child = spawn(dir.path(), "trace");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // Drain stderr concurrently: trace logging fills a pipe buffer long before the session ends.
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr_pipe, &mut text).unwrap();
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let expected = messages.iter().filter(|m| m.get("id").is_some()).count();
    let mut out = Vec::new();
    for m in messages {
        writeln!(stdin, "{m}").unwrap();
    }
    stdin.flush().unwrap();
    // Read every response before closing, so none is lost to the close.
    while out.len() < expected {
        match lines.next() {
            Some(line) => out.push(line.unwrap()),
            None => break,
        }
    }
    drop(stdin);
    out.extend(lines.map(|l| l.unwrap()));
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        out,
        stderr_reader.join().unwrap(),
    )
}

fn assert_all_json_rpc(lines: &[String], expected_responses: usize) {
    let mut responses = 0;
    for line in lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "not JSON-RPC 2.0: {line}");
        let is_response =
            v.get("id").is_some() && (v.get("result").is_some() ^ v.get("error").is_some());
        let is_message = v.get("method").and_then(Value::as_str).is_some();
        assert!(
            is_response || is_message,
            "neither a response nor a request/notification: {line}"
        );
        responses += usize::from(is_response);
    }
    assert_eq!(responses, expected_responses);
}

#[test]
fn stdout_carries_only_json_rpc_in_both_eras_at_trace_level() {
    for session in [legacy_session(), stateless_session()] {
        let expected = session.iter().filter(|m| m.get("id").is_some()).count();
        let (code, lines, stderr) = run_session(&session);
        assert_eq!(code, 0, "exit status after stdin closed; stderr:\n{stderr}");
        assert_all_json_rpc(&lines, expected);
        // Logging really was at trace, and it went to stderr.
        assert!(
            stderr.contains("TRACE") || stderr.contains("DEBUG"),
            "no trace logs on stderr"
        );
        assert!(stderr.contains("serving MCP on stdio"));
    }
}

#[test]
fn closing_stdin_without_a_word_exits_zero() {
    let (code, lines, stderr) = run_session(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(lines.is_empty());
}

#[test]
fn sigterm_exits_zero_and_signs_the_head() {
    let dir = common::data_dir();
    // Warnings only: nothing reads stderr here, so it must stay well under a pipe's buffer.
    let mut child = spawn(dir.path(), "warn");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for m in &legacy_session()[..2] {
        writeln!(stdin, "{m}").unwrap();
    }
    writeln!(
        stdin,
        "{}",
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "coordinator_status", "arguments": {}}})
    )
    .unwrap();
    stdin.flush().unwrap();
    lines.next().unwrap().unwrap();
    lines.next().unwrap().unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let (code, out, _) = common::cli(dir.path(), &["audit", "verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["signatures"]["unsigned_tail"], 0, "{report:#}");
    assert!(
        report["signatures"]["valid"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
    drop(stdin);
}

/// Started by hand on a terminal, it explains itself on stderr (never stdout) and still serves;
/// Ctrl-D ends it with status 0. `script` (util-linux) gives the process a real terminal.
#[test]
fn on_a_terminal_it_introduces_itself_on_stderr() {
    let dir = common::data_dir();
    let stderr_file = dir.path().join("stderr.txt");
    let inner = format!(
        "{} --data-dir {} --log-level warn 2>{}",
        common::BIN,
        dir.path().display(),
        stderr_file.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    stdin.write_all(b"\x04").unwrap();
    stdin.flush().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let banner = std::fs::read_to_string(&stderr_file).unwrap();
    for needle in [
        "mcp-coordinator",
        "database:",
        "coordinator.db",
        "@modelcontextprotocol/inspector",
        "2026-07-28",
    ] {
        assert!(
            banner.contains(needle),
            "banner lacks {needle:?}:\n{banner}"
        );
    }
    let terminal = String::from_utf8_lossy(&output.stdout);
    assert!(
        !terminal.contains("database:"),
        "the banner reached stdout: {terminal}"
    );
}
