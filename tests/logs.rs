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
    cmd.arg("--data-dir")
        .arg(dir.path())
        .args(["--log-level", "trace", "--config"])
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
    assert!(refused.is_err(), "{refused:?}");
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
}
