//! Real npm MCP servers as child instances of the real binary: `server-everything` over stdio
//! (proxied tools, `tools/list_changed`, resources, stop) and over streamable HTTP, TTL expiry,
//! and `server-memory`'s destructive tool held for approval. Needs Node.js 20+ and npm; the two
//! packages are installed into `target/npm-children` on first use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolResult, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};

use common::call_ok as ok;

/// The npm packages the tests run, as (name, exact version).
const PACKAGES: [(&str, &str); 2] = [
    ("@modelcontextprotocol/server-everything", "2026.8.31"),
    ("@modelcontextprotocol/server-memory", "2026.8.31"),
];

/// Runs `tool --version`, failing the test with what to install if it is not there.
fn require(tool: &str) -> String {
    let help = "tests/instances_npm.rs runs real npm MCP servers: install Node.js 20 or newer \
                with npm (for example `apt-get install nodejs npm`) so `node` and `npm` are on PATH";
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!("`{tool} --version` failed ({}): {help}", out.status),
        Err(e) => panic!("`{tool}` cannot be run ({e}): {help}"),
    }
}

/// `target/npm-children` with both packages installed: npm runs at most once, whether tests
/// run in parallel threads (the `OnceLock`) or in parallel processes (the lock file,
/// `tests/common/setup.rs`).
fn npm_children() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-children");
        let node = require("node");
        let major = node.trim_start_matches('v').split('.').next().unwrap_or("");
        let recent = major.parse::<u32>().is_ok_and(|m| m >= 20);
        assert!(
            recent,
            "node {node} is too old: install Node.js 20 or newer"
        );
        common::setup::npm_install(&dir, &PACKAGES).unwrap_or_else(|e| panic!("{e}"));
        dir
    })
}

/// The entry file of one of the packages.
fn entry(name: &str) -> String {
    let dir = common::setup::npm_package(npm_children(), &format!("@modelcontextprotocol/{name}"));
    dir.join("dist/index.js").display().to_string()
}

/// A client that counts `tools/list_changed` and declares no elicitation.
#[derive(Clone, Default)]
struct Watcher {
    changed: Arc<AtomicUsize>,
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        let info = Implementation::new("instances-npm-test", "1.0");
        ClientConfig::new(ClientCapabilities::default(), info)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }
}

struct Coordinator {
    client: RunningService<RoleClient, Watcher>,
    changed: Arc<AtomicUsize>,
}

impl Coordinator {
    fn peer(&self) -> Peer<RoleClient> {
        self.client.peer().clone()
    }

    fn changes(&self) -> usize {
        self.changed.load(Ordering::SeqCst)
    }

    /// Waits for a `tools/list_changed` after the first `before` ones.
    async fn changed_since(&self, before: usize, what: &str) {
        let what = format!("tools/list_changed {what}");
        wait_for(&what, || async { self.changes() > before }).await;
    }
}

/// A coordinator on `dir` (its log in `coordinator.log` there) whose catalog has `everything`
/// and `memory` over stdio and, given a port, `everything-http` at `127.0.0.1:PORT`.
async fn start(dir: &Path, http_port: Option<u16>) -> Coordinator {
    let (everything, memory) = (entry("server-everything"), entry("server-memory"));
    let memory_file = dir.join("memory.jsonl").display().to_string();
    let http = http_port.map_or(String::new(), |port| {
        format!("[instance_types.everything-http]\nurl = \"http://127.0.0.1:{port}/mcp\"\n")
    });
    let config = format!(
        r#"
[instances]
stop_grace_seconds = 0.5

[instance_types.everything]
command = "node"
args = ["{everything}", "stdio"]
env = {{ GREETING = "hello" }}
init_timeout_seconds = 60

[instance_types.memory]
command = "node"
args = ["{memory}"]
env = {{ MEMORY_FILE_PATH = "{memory_file}" }}
init_timeout_seconds = 60

{http}"#
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--log-level", "mcp_coordinator=debug", "--config"])
        .arg(&config_path);
    for var in ["DB", "CONFIG", "LOG", "MASTER_KEY"] {
        cmd.env_remove(format!("MCP_COORDINATOR_{var}"));
    }
    let log = std::fs::File::create(dir.join("coordinator.log")).unwrap();
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let watcher = Watcher::default();
    let changed = watcher.changed.clone();
    let client = watcher.serve(transport).await.unwrap();
    Coordinator { client, changed }
}

async fn call(peer: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    let r = common::call(peer, tool, args).await;
    r.unwrap_or_else(|e| panic!("{tool}: {e}"))
}

/// Calls `<instance>__echo` and checks the answer.
async fn echo(peer: &Peer<RoleClient>, instance: &str) {
    let r = call(peer, &format!("{instance}__echo"), json!({"message": "hi"})).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let text: Vec<_> = r.content.iter().filter_map(|c| c.as_text()).collect();
    assert_eq!(text.len(), 1, "{r:?}");
    assert_eq!(text[0].text, "Echo: hi");
}

async fn tools_of(peer: &Peer<RoleClient>, instance: &str) -> Vec<String> {
    let prefix = format!("{instance}__");
    let tools = peer.list_all_tools().await.unwrap();
    let names = tools.into_iter().map(|t| t.name.to_string());
    names.filter(|n| n.starts_with(&prefix)).collect()
}

/// Waits up to 10 s for `check`.
async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process exists and has not exited (a zombie has).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    state.is_some_and(|s| s != "Z")
}

async fn gone(pid: u32) {
    wait_for(
        &format!("process {pid} to exit"),
        || async move { !alive(pid) },
    )
    .await;
}

/// Starts an instance, checks it runs, and returns its view.
async fn start_instance(peer: &Peer<RoleClient>, args: Value) -> Value {
    let started = ok(peer, "instance_start", args).await;
    assert_eq!(started["status"], "running", "{started}");
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_over_stdio_proxies_reports_and_stops() {
    let dir = common::data_dir();
    let c = start(dir.path(), None).await;
    let peer = c.peer();

    let (before, t) = (c.changes(), Instant::now());
    let started = start_instance(&peer, json!({"type": "everything"})).await;
    eprintln!("everything (stdio) started in {:?}", t.elapsed());
    assert_eq!(started["name"], "everything");
    let pid = started["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid), "{started}");
    c.changed_since(before, "after the start").await;
    let names = tools_of(&peer, "everything").await;
    assert!(names.contains(&"everything__echo".into()), "{names:?}");
    assert!((12..=16).contains(&names.len()), "{names:?}");
    assert_eq!(started["tools"], names.len(), "{started}");
    echo(&peer, "everything").await;
    // The child's environment is exactly what its type declares.
    let r = call(&peer, "everything__get-env", json!({})).await;
    let env: Value = serde_json::from_str(&r.content[0].as_text().unwrap().text).unwrap();
    assert_eq!(env, json!({"GREETING": "hello"}));

    let got = ok(&peer, "instance_get", json!({"instance": "everything"})).await;
    assert_eq!(got["status"], "running", "{got}");
    assert_eq!(got["pid"], pid, "{got}");
    let resources = &got["detail"]["resources"];
    assert!(resources["rss_bytes"].as_u64().unwrap() > 0, "{got}");
    assert!(resources["processes"].as_u64().unwrap() >= 1, "{got}");

    let before = c.changes();
    let stopped = ok(&peer, "instance_stop", json!({"instance": "everything"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    gone(pid).await;
    assert_eq!(tools_of(&peer, "everything").await, Vec::<String>::new());
    c.changed_since(before, "after the stop").await;
    c.client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_expires_after_its_ttl() {
    let dir = common::data_dir();
    let c = start(dir.path(), None).await;
    let peer = c.peer();

    let started = start_instance(&peer, json!({"type": "everything", "ttl_seconds": 2})).await;
    let pid = started["pid"].as_u64().unwrap() as u32;
    assert!(started["expires_at"].is_string(), "{started}");
    assert!(!tools_of(&peer, "everything").await.is_empty());
    c.changed_since(0, "after the start").await;
    let (before, t) = (c.changes(), Instant::now());
    wait_for("status expired", || async {
        let got = ok(&peer, "instance_get", json!({"instance": "everything"})).await;
        got["status"] == "expired"
    })
    .await;
    eprintln!("expired {:?} after the start returned", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    gone(pid).await;
    assert_eq!(tools_of(&peer, "everything").await, Vec::<String>::new());
    c.changed_since(before, "on expiry").await;
    let e = common::call(&peer, "everything__echo", json!({"message": "x"})).await;
    assert!(e.is_err(), "an expired instance's tool is unknown: {e:?}");
    c.client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_holds_its_destructive_tool_for_approval() {
    let dir = common::data_dir();
    let c = start(dir.path(), None).await;
    let peer = c.peer();
    let started = start_instance(&peer, json!({"type": "memory"})).await;
    let pid = started["pid"].as_u64().unwrap() as u32;

    let entity = json!({"name": "a", "entityType": "t", "observations": ["o"]});
    let args = json!({"entities": [entity]});
    let r = call(&peer, "memory__create_entities", args).await;
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let graph = ok(&peer, "memory__read_graph", json!({})).await;
    assert_eq!(graph["entities"], json!([entity]), "{graph}");
    // The child got MEMORY_FILE_PATH from the type's env.
    let file = std::fs::read_to_string(dir.path().join("memory.jsonl")).unwrap();
    assert!(file.contains("\"name\":\"a\""), "{file}");

    // delete_entities is annotated destructive: this client cannot ask a person, so the call
    // waits as a pending approval and is not forwarded.
    let args = json!({"entityNames": ["a"]});
    let r = call(&peer, "memory__delete_entities", args).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let e = r.structured_content.unwrap();
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(e["details"]["state"], "pending", "{e}");
    let got = ok(&peer, "instance_get", json!({"instance": "memory"})).await;
    let tools = got["detail"]["tools"].as_array().unwrap();
    let delete = tools.iter().find(|t| t["tool"] == "delete_entities");
    assert_eq!(delete.unwrap()["access"], "approval", "{got}");

    let args = json!({"instance": "memory", "tool": "read_graph", "arguments": {}});
    let out = ok(&peer, "instance_call_tool", args).await;
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(
        out["structured_content"]["entities"],
        json!([entity]),
        "{out}"
    );

    // A client that goes away takes the coordinator and its children with it.
    c.client.cancel().await.unwrap();
    gone(pid).await;
}

/// `server-everything` in streamable HTTP mode, run by the test (its stdout goes to `out`);
/// killed when dropped.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    /// Picks a free port and waits until the server listens on it. A server whose port was
    /// taken meanwhile exits (after saying it listens), so it is tried again on another port.
    fn start(out: &Path) -> Self {
        let everything = entry("server-everything");
        for _ in 0..3 {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = free.local_addr().unwrap().port();
            drop(free);
            let child = Command::new("node")
                .args([everything.as_str(), "streamableHttp"])
                .env_clear()
                .env("PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(out).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut server = HttpServer { child, port };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && server.child.try_wait().unwrap().is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    std::thread::sleep(Duration::from_millis(500));
                    if server.child.try_wait().unwrap().is_none() {
                        return server;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("server-everything did not listen in streamableHttp mode");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_over_streamable_http() {
    let dir = common::data_dir();
    let out = dir.path().join("everything-http.out");
    let server = HttpServer::start(&out);
    let c = start(dir.path(), Some(server.port)).await;
    let peer = c.peer();

    let before = c.changes();
    let started = start_instance(&peer, json!({"type": "everything-http", "name": "web"})).await;
    assert_eq!(started["name"], "web");
    assert_eq!(started["pid"], Value::Null, "{started}");
    c.changed_since(before, "after the start").await;
    let names = tools_of(&peer, "web").await;
    assert!(names.contains(&"web__echo".into()), "{names:?}");
    assert_eq!(started["tools"], names.len(), "{started}");
    echo(&peer, "web").await;

    let stopped = ok(&peer, "instance_stop", json!({"instance": "web"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(tools_of(&peer, "web").await, Vec::<String>::new());
    // The stop ends the MCP session on the server (an HTTP DELETE).
    wait_for("the session's end", || async {
        let log = std::fs::read_to_string(&out).unwrap_or_default();
        log.contains("Received session termination request")
    })
    .await;
    c.client.cancel().await.unwrap();
    drop(server);
}
