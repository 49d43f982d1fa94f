//! No log level shows a secret: a coordinator at `--log-level trace` (rmcp's own events
//! included, which log whole JSON-RPC messages) runs a child that echoes its secret back, and
//! is handed a token in an `mcp_server_install` entry and in a generic approval's action; its
//! whole stderr is then searched for every one of those values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

/// The child's secret, from the store.
const STORED: &str = "s3cr3t-from-the-store-4d9f";
/// Values a caller puts in arguments: a token under a secret-like key, a shaped token, and a
/// password in a URL.
const PLAIN: &str = "plain-value-under-a-key-77";
const SHAPED: &str = "ghp_Zq8RmT2vLx9KpW4sNbYc7HdJ0aEfGiUo1Q3r";
const URL_PASSWORD: &str = "pw-in-url-0a1b2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_show_no_secret() {
    trace_logs_show_no_secret_in("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_trace_logs_show_no_secret_and_are_json() {
    let log = trace_logs_show_no_secret_in("json").await;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a --log-format json line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "{key} missing: {line}");
        }
    }
    assert!(log.contains(r#""level":"TRACE""#), "{log}");
}

/// At the default level: one line as the server starts, one as it stops, warnings; none of
/// rmcp's (which would print the whole `initialize` request).
#[test]
fn the_default_level_is_quiet() {
    use std::io::{BufRead, Write};
    let dir = common::data_dir();
    let mut child = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("MCP_COORDINATOR_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "quiet", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "coordinator_status", "arguments": {}}}),
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    out.next().unwrap().unwrap();
    out.next().unwrap().unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert_eq!(info.len(), 2, "one line at start, one at stop:\n{log}");
    assert!(info[0].contains("serving MCP on stdio"), "{log}");
    assert!(
        info[0].contains("console=http://127.0.0.1:"),
        "the start line names the console's URL:\n{log}"
    );
    assert!(info[1].contains("stopped"), "{log}");
    assert!(
        !log.contains("rmcp"),
        "rmcp's info lines are off by default:\n{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.contains(" INFO ") || l.contains(" WARN ")),
        "{log}"
    );
}

async fn trace_logs_show_no_secret_in(format: &str) -> String {
    let dir = common::data_dir();
    common::set_secret(dir.path(), "leak_token", STORED);
    let child = common::example_bin("test_child");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[instance_types.leaky]\ncommand = {:?}\nargs = [\"--leak-env\", \"TOKEN\"]\nenv = {{ TOKEN = \"${{secret:leak_token}}\" }}\n",
            child.display().to_string()
        ),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(["--log-level", "trace", "--log-format", format, "--config"])
        .arg(&config)
        .env("HOME", home.path())
        .env_remove("MCP_COORDINATOR_MASTER_KEY")
        .env_remove("MCP_COORDINATOR_LOG");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = stderr.unwrap();
    let log_path = dir.path().join("trace.log");
    let copy = {
        let log_path = log_path.clone();
        tokio::spawn(async move {
            let mut file = tokio::fs::File::create(&log_path).await.unwrap();
            tokio::io::copy(&mut stderr, &mut file).await.unwrap();
        })
    };
    let client = common::client_config("logs")
        .serve(transport)
        .await
        .unwrap();
    let peer = client.peer().clone();

    common::call_ok(&peer, "instance_start", json!({"type": "leaky"})).await;
    // Relayed and through instance_call_tool: the child answers with its secret.
    let relayed = common::call(&peer, "leaky__getenv", json!({"name": "TOKEN"}))
        .await
        .unwrap();
    assert!(!format!("{relayed:?}").contains(STORED));
    common::call_ok(
        &peer,
        "instance_call_tool",
        json!({"instance": "leaky", "tool": "getenv", "arguments": {"name": "TOKEN"}}),
    )
    .await;
    // A token in an install entry (refused, but rmcp saw the request first).
    let refused = common::call(
        &peer,
        "mcp_server_install",
        json!({"client": "cursor", "server": "gh", "entry": {
            "command": "npx", "args": ["-y", "x@1.0.0", format!("--url=https://u:{URL_PASSWORD}@example.com/")],
            "env": {"API_TOKEN": PLAIN, "GITHUB": SHAPED}
        }}),
    )
    .await;
    common::invalid_argument("mcp_server_install", refused);
    // A generic approval whose action carries them too (no elicitation here: it stays pending).
    common::call_ok(
        &peer,
        "approval_request",
        json!({"summary": "rotate", "risk": "low", "action": {"api_token": PLAIN, "token": SHAPED}}),
    )
    .await;
    common::call_ok(&peer, "instance_stop", json!({"instance": "leaky"})).await;
    client.cancel().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), copy)
        .await
        .unwrap()
        .unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    // Trace was on: rmcp's message events are there, without their payloads.
    assert!(
        log.contains("TRACE") && log.contains("(payload not logged)"),
        "{log}"
    );
    for secret in [STORED, PLAIN, SHAPED, URL_PASSWORD] {
        assert!(
            !log.contains(secret),
            "the trace log shows {secret}:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    log
}
