//! What MCP does over stdio also works over streamable HTTP (`serve --http`, bearer tokens):
//! the official Python SDK's HTTP client in both eras (`tests/interop/http_parity.py`:
//! elicitation and input-required retries, progress, cancellation, tools/list_changed,
//! resource subscriptions from two sessions at once); one process serving a stdio client and
//! HTTP clients together, each told of the other's tool-list changes; and children started
//! at once when only HTTP is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::http::{HttpServer, connect_http, issue_token};
use common::{ERAS, Era, call_ok, data_dir};
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// The interpreter with the official MCP SDK: `$MCP_COORDINATOR_PYTHON`, else the venv the
/// interop tests share (built on first use, see `tests/common/setup.rs`).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_COORDINATOR_PYTHON") {
        return PathBuf::from(python);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::setup::venv(
        &root.join("target/interop-venv"),
        &root.join("tests/interop/requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("cannot make the Python venv for the interop tests:\n{e}"))
}

/// A config file in `dir` defining the instance type `kid` (the test child), autostarted or
/// not; its path.
fn kid_config(dir: &Path, autostart: bool) -> String {
    let child = common::example_bin("test_child");
    let config = dir.join("kid.toml");
    std::fs::write(
        &config,
        format!(
            "[instance_types.kid]\ncommand = \"{}\"\nautostart = {autostart}\n",
            child.display()
        ),
    )
    .unwrap();
    config.display().to_string()
}

/// `tests/interop/http_parity.py` against `serve --http` with an admin token: every check
/// passes in both eras.
#[test]
fn official_python_sdk_does_over_http_what_it_does_over_stdio() {
    let python = python();
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "parity-admin", &[]);
    let config = kid_config(dir.path(), false);
    let server = HttpServer::start(dir.path(), &["--config", &config]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/http_parity.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--binary")
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--url", &server.mcp, "--token", &token])
        .args(["--token-name", "parity-admin"])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run the Python script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed"),
        "{} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}

/// A client that counts `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct Counter {
    changed: Arc<AtomicUsize>,
}

impl ClientHandler for Counter {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("parity-counter", "1.0"),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }
}

async fn wait_count(what: &str, counter: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < at_least {
        assert!(Instant::now() < deadline, "{what}: not told within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `serve --http 127.0.0.1:0 --stdio`: a stdio client and HTTP clients (both eras) are served
/// by the one process (same session id in coordinator_status); a child started over HTTP is
/// announced to the stdio client, and its stop on stdio to the HTTP session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_a_stdio_client_and_http_clients() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "both", &[]);
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-level", "warn,mcp_coordinator::cli=info"])
        .args(["--config", &kid_config(dir.path(), false)])
        .args(["serve", "--http", "127.0.0.1:0", "--stdio"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve --http --stdio");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut lines = tokio::io::BufReader::new(stderr.expect("stderr")).lines();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
                .filter(|u| u.starts_with("http"))
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(url.to_string());
            }
            eprintln!("[serve --http --stdio] {line}");
        }
    });
    let stdio_counter = Counter::default();
    let stdio = stdio_counter
        .clone()
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("connect over stdio");
    let url = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the start line names the URL")
        .expect("url");

    let over_stdio = call_ok(stdio.peer(), "coordinator_status", json!({})).await;
    assert_eq!(over_stdio["era"], "legacy", "{over_stdio}");
    let session = over_stdio["session_id"].clone();
    assert!(session.is_string(), "{over_stdio}");
    for era in ERAS {
        let http = connect_http(&url, &token, era).await;
        let status = call_ok(http.peer(), "coordinator_status", json!({})).await;
        let want = if era == Era::Legacy {
            "legacy"
        } else {
            "stateless"
        };
        assert_eq!(status["era"], want, "{status}");
        assert_eq!(
            status["session_id"], session,
            "not the same process: {status}"
        );
        assert!(
            status["client"]
                .as_str()
                .unwrap_or_default()
                .contains("both"),
            "the HTTP caller is not named by its token: {status}"
        );
        http.cancel().await.expect("close");
    }

    // A child started over HTTP is heard of on stdio, and stopped on stdio over HTTP.
    let http_counter = Counter::default();
    let config =
        StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token.clone());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let http = http_counter
        .clone()
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("connect over HTTP");
    let started = call_ok(http.peer(), "instance_start", json!({"type": "kid"})).await;
    assert_eq!(started["status"], "running", "{started}");
    wait_count(
        "the stdio client, of a child started over HTTP",
        &stdio_counter.changed,
        1,
    )
    .await;
    let tools = stdio.peer().list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "kid__echo"), "{tools:?}");
    let heard = http_counter.changed.load(Ordering::SeqCst);
    let stopped = call_ok(stdio.peer(), "instance_stop", json!({"instance": "kid"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    wait_count(
        "the HTTP session, of a child stopped over stdio",
        &http_counter.changed,
        heard + 1,
    )
    .await;
    http.cancel().await.expect("close");
    stdio.cancel().await.expect("close stdio");
}

/// With MCP over HTTP only, no stdio client's first answer is awaited before children start
/// (it never comes): an autostarted child is up and its tools listed well before the 2 s a
/// stdio server gives a silent client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_at_once_when_only_http_is_served() {
    let dir = data_dir();
    let config = kid_config(dir.path(), true);
    let token = issue_token(dir.path(), &["admin"], "starter", &[]);
    let server = HttpServer::start(dir.path(), &["--config", &config]);
    let listening = Instant::now();
    let client = connect_http(&server.mcp, &token, Era::Stateless).await;
    let up = loop {
        let tools = client.peer().list_all_tools().await.expect("tools/list");
        if tools.iter().any(|t| t.name == "kid__echo") {
            break listening.elapsed();
        }
        assert!(
            listening.elapsed() < Duration::from_secs(20),
            "kid__echo not listed after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("the autostarted child's tools were listed {up:?} after the server listened");
    assert!(
        up < Duration::from_millis(1800),
        "the child came up {up:?} after the server listened: it waited for a stdio client"
    );
    client.cancel().await.expect("close");
}

/// rmcp's HTTP client on 2026-07-28, declaring the tasks extension.
async fn task_client(url: &str, token: &str) -> common::Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_string());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ClientConfig::new(
        ClientCapabilities::builder().enable_tasks().build(),
        Implementation::new("http-task-client", "1.0"),
    )
    .serve_with_lifecycle(
        transport,
        ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .expect("connect over HTTP")
}

/// The tasks extension (SEP-2663) over HTTP, which the Python SDK does not speak: rmcp's HTTP
/// client on 2026-07-28 gets a long `pipeline_run` as a task, a worker on another connection
/// does the work, and the task is read and cancelled from yet another (tasks are runs in the
/// database, not state of one connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_is_a_task_over_http() {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CancelTaskParams, GetTaskParams, TaskPayload,
        TaskStatus,
    };
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "tasker", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let tasker = task_client(&server.mcp, &token).await;
    let worker = connect_http(&server.mcp, &token, Era::Legacy).await;
    let w = worker.peer();
    call_ok(
        w,
        "pipeline_create",
        json!({"name": "tasked", "stages": [{"name": "a", "type": "etl"}]}),
    )
    .await;
    let agent = call_ok(
        w,
        "agent_register",
        json!({"name": "w", "capabilities": ["etl"]}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let run = CallToolRequestParams::new("pipeline_run").with_arguments(
        json!({"pipeline": "tasked", "wait_seconds": 60})
            .as_object()
            .cloned()
            .unwrap(),
    );
    let CallToolResponse::Task(created) = tasker.peer().call_tool_once(run.clone()).await.unwrap()
    else {
        panic!("expected a task");
    };
    let task_id = created.task.task_id.clone();
    assert_eq!(created.task.status, TaskStatus::Working);
    let task = loop {
        let claimed = call_ok(w, "task_claim", json!({"token": agent})).await;
        if !claimed["task"].is_null() {
            break claimed["task"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    call_ok(
        w,
        "task_report",
        json!({"token": agent, "task_id": task["id"], "result": {"ok": 1}}),
    )
    .await;
    let reader = task_client(&server.mcp, &token).await;
    let got = reader
        .peer()
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let TaskPayload::Completed { result } = &got.task.payload else {
        panic!("expected a completed task, got {got:?}");
    };
    assert_eq!(result["structuredContent"]["status"], "completed");

    let CallToolResponse::Task(created) = tasker.peer().call_tool_once(run).await.unwrap() else {
        panic!("expected a task");
    };
    reader
        .peer()
        .cancel_task(CancelTaskParams::new(created.task.task_id.clone()))
        .await
        .unwrap();
    let got = tasker
        .peer()
        .get_task(GetTaskParams::new(created.task.task_id.clone()))
        .await
        .unwrap();
    assert_eq!(got.task.status(), TaskStatus::Cancelled);
    for c in [tasker, worker, reader] {
        c.cancel().await.expect("close");
    }
}

/// Names of the tools `client` is offered.
async fn offered(client: &common::Client) -> Vec<String> {
    let tools = client.peer().list_all_tools().await.expect("tools/list");
    tools.into_iter().map(|t| t.name.to_string()).collect()
}

/// Toolsets are a connection's choice (README, Toolsets): over HTTP an initialize-era session
/// turning one off changes its own list only, not another session's; a stateless caller's
/// choice holds across its requests (one per principal) and not for another principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toolsets_are_each_connections_own_over_http() {
    let dir = data_dir();
    let alice = issue_token(dir.path(), &["admin"], "alice", &[]);
    let bob = issue_token(dir.path(), &["admin"], "bob", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let has = |tools: &[String], name: &str| tools.iter().any(|t| t == name);

    let a = connect_http(&server.mcp, &alice, Era::Legacy).await;
    let b = connect_http(&server.mcp, &alice, Era::Legacy).await;
    let off = call_ok(a.peer(), "toolsets", json!({"disable": "agents"})).await;
    assert_eq!(off["changed"], true, "{off}");
    assert!(!has(&offered(&a).await, "task_submit"), "a still offers it");
    assert!(
        has(&offered(&b).await, "task_submit"),
        "session a's choice changed session b's tools"
    );
    let refused = common::call(a.peer(), "task_submit", json!({"kind": "x"}))
        .await
        .expect("a result");
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    call_ok(b.peer(), "task_submit", json!({"kind": "x"})).await;

    let s1 = connect_http(&server.mcp, &alice, Era::Stateless).await;
    call_ok(s1.peer(), "toolsets", json!({"disable": "pipelines"})).await;
    let s2 = connect_http(&server.mcp, &alice, Era::Stateless).await;
    let s3 = connect_http(&server.mcp, &bob, Era::Stateless).await;
    assert!(
        !has(&offered(&s2).await, "pipeline_run"),
        "a stateless caller's choice did not hold for its next connection"
    );
    assert!(
        has(&offered(&s3).await, "pipeline_run"),
        "alice's stateless choice changed bob's tools"
    );
    for c in [a, b, s1, s2, s3] {
        c.cancel().await.expect("close");
    }
}
