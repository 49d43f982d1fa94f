//! Child MCP instances over the real binary, with the test child (`examples/test_child.rs`) as a
//! real process: start, proxied tools and `tools/list_changed`, the child's environment and
//! secrets, approval-gated tools, read-only retries, timeouts, the circuit breaker, garbage on
//! stdout, crash restarts with backoff and `crash_loop`, failed health checks, quarantine of a
//! changed definition, TTL expiry, autostart, restore after a kill, ownership across processes,
//! and no process left alive after the client closes stdin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult,
    ElicitationAction, Implementation,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ErrorData, ServiceExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SECRET: &str = "kid-token-3f9a1c77e2b54d0c8a6e";

/// A client that counts `tools/list_changed` and answers elicitations with `answer`.
#[derive(Clone)]
struct Watcher {
    changed: Arc<AtomicUsize>,
    answer: Option<ElicitationAction>,
    asked: Arc<AtomicUsize>,
}

impl Watcher {
    fn new(answer: Option<ElicitationAction>) -> Self {
        Watcher {
            changed: Arc::new(AtomicUsize::new(0)),
            answer,
            asked: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        let caps = if self.answer.is_some() {
            ClientCapabilities::builder().enable_elicitation().build()
        } else {
            ClientCapabilities::default()
        };
        ClientConfig::new(caps, Implementation::new("instances-test", "1.0"))
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.clone().unwrap_or(ElicitationAction::Decline);
        let mut result = ElicitResult::new(answer.clone());
        if answer == ElicitationAction::Accept {
            result.content = Some(json!({"decision": "approve", "reason": "looked at it"}));
        }
        Ok(result)
    }
}

#[allow(dead_code)]
struct Coordinator {
    client: RunningService<RoleClient, Watcher>,
    changed: Arc<AtomicUsize>,
    asked: Arc<AtomicUsize>,
    log: PathBuf,
    pid: u32,
}

impl Coordinator {
    fn peer(&self) -> &Peer<RoleClient> {
        self.client.peer()
    }
}

fn child_bin() -> PathBuf {
    common::example_bin("test_child")
}

/// The test config: a well-behaved type, a crashing one, a broken one, a stubborn one.
fn write_config(dir: &Path) -> PathBuf {
    let bin = child_bin();
    let bin = bin.display();
    let config = format!(
        r#"
[instances]
stop_grace_seconds = 0.5

[instance_types.kid]
description = "the test child"
command = "{bin}"
env = {{ VISIBLE = "yes", TOKEN = "${{secret:kid_token}}" }}
init_timeout_seconds = 20
call_timeout_seconds = 1.5
read_only_retries = 2
[instance_types.kid.health]
interval_seconds = 0.3
timeout_seconds = 0.5
failure_threshold = 2
[instance_types.kid.restart]
max_restarts = 3
window_seconds = 60
backoff_initial_ms = 100
backoff_max_ms = 400
[instance_types.kid.breaker]
failures = 3
open_seconds = 1.0
[instance_types.kid.policy]
deny = ["stderr"]
[instance_types.kid.limits]
open_files = 200

[instance_types.leaky]
command = "{bin}"
args = ["--leak-env", "TOKEN"]
env = {{ TOKEN = "${{secret:kid_token}}" }}

[instance_types.slowstart]
command = "{bin}"
args = ["--hang-init"]
init_timeout_seconds = 30

[instance_types.frozen]
command = "{bin}"
[instance_types.frozen.health]
interval_seconds = 0.2
timeout_seconds = 30
failure_threshold = 1

[instance_types.tuned]
command = "{bin}"
env = {{ MODE = "plain", DATA_FILE = "/var/lib/kid/memory.jsonl", PATH = "/usr/bin:/bin", HOME = "${{env:HOME}}" }}
overridable = ["MODE"]

[instance_types.crashy]
command = "{bin}"
args = ["--crash-after-ms", "300"]
[instance_types.crashy.restart]
max_restarts = 3
window_seconds = 60
backoff_initial_ms = 50
backoff_max_ms = 200

[instance_types.broken]
command = "{bin}"
args = ["--fail-init"]

[instance_types.stubborn]
command = "{bin}"
args = ["--ignore-sigterm", "--spawn-grandchild"]

[instance_types.setsider]
command = "{bin}"
args = ["--spawn-grandchild", "setsid"]

[instance_types.orphaner]
command = "{bin}"
args = ["--spawn-grandchild", "double-fork"]

[instance_types.escaper]
command = "{bin}"
args = ["--spawn-grandchild", "escape"]

[instance_types.orphaner-crashy]
command = "{bin}"
args = ["--spawn-grandchild", "double-fork", "--crash-after-ms", "600"]
[instance_types.orphaner-crashy.restart]
max_restarts = 3
window_seconds = 60
backoff_initial_ms = 100
backoff_max_ms = 200
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn set_secret(dir: &Path) {
    common::set_secret(dir, "kid_token", SECRET);
}

async fn start(dir: &Path, answer: Option<ElicitationAction>) -> Coordinator {
    let config = write_config(dir);
    start_with(dir, &config, answer).await
}

async fn start_with(dir: &Path, config: &Path, answer: Option<ElicitationAction>) -> Coordinator {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(dir)
        .args(["--log-level", "mcp_coordinator=debug", "--config"])
        .arg(config)
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG");
    launch(cmd, dir, answer).await
}

/// A coordinator told where its data and config are by its environment
/// (`MCP_COORDINATOR_DATA_DIR`, `_DB`, `_CONFIG`), as a client config may do, and run
/// without any capability, as an ordinary user runs it: when the tests run as root its
/// capability bounding set is emptied before exec, so that neither it nor its children hold
/// root's capabilities (which see through the non-dumpable flag, and which the kernel's
/// capability rule for ptrace access would weigh too).
async fn start_unprivileged_via_env(dir: &Path, config: &Path) -> Coordinator {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.args(["--log-level", "mcp_coordinator=debug"])
        .env("MCP_COORDINATOR_DATA_DIR", dir)
        .env("MCP_COORDINATOR_DB", common::db_path(dir))
        .env("MCP_COORDINATOR_CONFIG", config)
        .env_remove("MCP_COORDINATOR_LOG");
    // Capability bounding sets are Linux's; elsewhere root keeps what it has.
    // SAFETY: getuid has no preconditions.
    #[cfg(target_os = "linux")]
    if unsafe { libc::getuid() } == 0 {
        let last: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        // SAFETY: only prctl (a plain syscall) runs between fork and exec; nothing allocates.
        unsafe {
            cmd.pre_exec(move || {
                for cap in 0..=last {
                    if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    launch(cmd, dir, None).await
}

async fn launch(
    mut cmd: tokio::process::Command,
    dir: &Path,
    answer: Option<ElicitationAction>,
) -> Coordinator {
    let log = dir.join(format!("coordinator-{}.log", uuid_like()));
    cmd.env("LEAK_CANARY", "must-not-reach-children")
        .env_remove("MCP_COORDINATOR_MASTER_KEY");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = transport.id().unwrap();
    let mut stderr = stderr.unwrap();
    let log_path = log.clone();
    tokio::spawn(async move {
        let mut file = tokio::fs::File::create(&log_path).await.unwrap();
        let _ = tokio::io::copy(&mut stderr, &mut file).await;
    });
    let watcher = Watcher::new(answer);
    let changed = watcher.changed.clone();
    let asked = watcher.asked.clone();
    let client = watcher.serve(transport).await.unwrap();
    Coordinator {
        client,
        changed,
        asked,
        log,
        pid,
    }
}

/// A fresh data dir with the test secret set, and a coordinator on it (the dir lives as long
/// as the returned handle).
async fn started(answer: Option<ElicitationAction>) -> (tempfile::TempDir, Coordinator) {
    let dir = common::data_dir();
    set_secret(dir.path());
    let c = start(dir.path(), answer).await;
    (dir, c)
}

fn uuid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn call(peer: &Peer<RoleClient>, tool: &str, args: Value) -> CallToolResult {
    common::call(peer, tool, args)
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

async fn ok(peer: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    common::call_ok(peer, tool, args).await
}

/// The structured error of a failed call.
async fn err(peer: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    let r = call(peer, tool, args).await;
    assert_eq!(r.is_error, Some(true), "{tool} should fail: {r:?}");
    r.structured_content
        .unwrap_or_else(|| json!({"text": format!("{:?}", r.content)}))
}

fn text_of(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn tool_names(peer: &Peer<RoleClient>) -> Vec<String> {
    peer.list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(peer: &Peer<RoleClient>, name: &str) -> Value {
    ok(peer, "instance_get", json!({"instance": name})).await
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive: it has exited and waits to be reaped.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_proxy_policy_retries_breaker_and_stop() {
    let (dir, c) = started(None).await;
    let peer = c.peer().clone();

    let types = ok(&peer, "instance_types", json!({})).await;
    let kid = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "kid")
        .unwrap()
        .clone();
    assert_eq!(
        kid["secrets"],
        json!([{"name": "kid_token", "present": true}]),
        "{kid}"
    );
    assert_eq!(kid["env"], json!(["TOKEN", "VISIBLE"]));

    let before = c.changed.load(Ordering::SeqCst);
    let started = ok(&peer, "instance_start", json!({"type": "kid"})).await;
    assert_eq!(started["name"], "kid");
    assert_eq!(started["status"], "running", "{started}");
    let pid = started["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    wait_for("tools/list_changed", Duration::from_secs(5), || async {
        c.changed.load(Ordering::SeqCst) > before
    })
    .await;
    let names = tool_names(&peer).await;
    for t in [
        "kid__echo",
        "kid__add",
        "kid__delete_item",
        "kid__flaky",
        "kid__hang",
    ] {
        assert!(names.contains(&t.to_string()), "{t} missing from {names:?}");
    }
    assert!(
        !names.contains(&"kid__stderr".to_string()),
        "denied tool listed"
    );
    assert!(names.contains(&"coordinator_status".to_string()));

    // A proxied call returns the child's result as it is.
    let r = call(&peer, "kid__echo", json!({"text": "hello there"})).await;
    assert_eq!(text_of(&r), "hello there");
    assert_eq!(r.structured_content, Some(json!({"text": "hello there"})));
    // It took the fast relay, and is audited all the same (in a batch, so shortly).
    wait_for(
        "the proxied call's audit event",
        Duration::from_secs(5),
        || async {
            let a = ok(
                &peer,
                "audit_query",
                json!({"action": "tool.call", "subject": "kid__echo"}),
            )
            .await;
            a["events"].as_array().unwrap().iter().any(|e| {
                e["detail"]["relay"] == "fast" && e["detail"]["arguments"]["text"] == "hello there"
            })
        },
    )
    .await;
    // Routing splits on the separator exactly: a prefix of a name is not a tool.
    let e = common::call(&peer, "kid__ech", json!({})).await;
    assert!(e.is_err() || e.unwrap().is_error == Some(true));
    let e = common::call(&peer, "ki__echo", json!({"text": "x"})).await;
    assert!(e.is_err(), "an unknown instance is an unknown tool");

    // The child sees exactly the variables its type declares; the secret arrives.
    let env = ok(&peer, "kid__env", json!({})).await;
    let vars = env["vars"].as_object().unwrap();
    let mut keys: Vec<&String> = vars.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["TOKEN", "VISIBLE"], "{env}");
    assert_eq!(vars["TOKEN"], sha256(SECRET));

    // Denied by policy.
    let e = ok(&peer, "instance_get", json!({"instance": "kid"})).await;
    let hidden = &e["detail"]["hidden_tools"];
    assert!(
        hidden.to_string().contains("\"stderr\"") && hidden.to_string().contains("denied"),
        "{hidden}"
    );
    assert!(
        e["detail"]["resources"]["rss_bytes"].as_u64().unwrap() > 0,
        "{e}"
    );
    assert!(
        e["detail"]["stderr_tail"]
            .to_string()
            .contains("test_child: started pid"),
        "{e}"
    );
    let e = err(
        &peer,
        "instance_call_tool",
        json!({"instance": "kid", "tool": "stderr", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // A destructive tool waits for a person; this client cannot ask one, so it is not forwarded.
    let e = err(&peer, "kid__delete_item", json!({"id": "a1"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(e["details"]["state"], "pending", "{e}");
    assert_eq!(ok(&peer, "kid__deletions", json!({})).await["count"], 0);
    // Decided at the CLI while the call waits: forwarded once.
    let waiting = {
        let peer = peer.clone();
        tokio::spawn(async move {
            call(&peer, "instance_call_tool", json!({"instance": "kid", "tool": "delete_item", "arguments": {"id": "b2", "api_key": "sk-hidden-value"}, "wait_seconds": 20})).await
        })
    };
    let approval_id = {
        let mut id = None;
        for _ in 0..200 {
            let list = ok(
                &peer,
                "approval_list",
                json!({"state": "pending", "kind": "instance_tool_call"}),
            )
            .await;
            if let Some(a) = list["approvals"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["action"]["arguments"]["id"] == "b2")
            {
                assert_eq!(a["action"]["arguments"]["api_key"], "[REDACTED]", "{a}");
                id = Some(a["id"].as_str().unwrap().to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        id.expect("the gated call's approval")
    };
    let (code, _, stderr) = common::cli(
        dir.path(),
        &[
            "approvals",
            "approve",
            &approval_id,
            "--reason",
            "fine",
            "--yes",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let r = waiting.await.unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let out = r.structured_content.unwrap();
    assert_eq!(out["structured_content"]["deleted"], "b2", "{out}");
    assert_eq!(out["approval_id"], approval_id.as_str());
    assert_eq!(ok(&peer, "kid__deletions", json!({})).await["count"], 1);

    // Read-only tools are retried: two failures, then success on the third attempt.
    let r = ok(&peer, "kid__flaky", json!({"key": "k1", "failures": 2})).await;
    assert_eq!(r["attempts"], 3, "{r}");
    // Garbage on the child's stdout does not break the connection.
    ok(&peer, "kid__garbage", json!({})).await;
    assert_eq!(
        text_of(&call(&peer, "kid__echo", json!({"text": "still"})).await),
        "still"
    );
    // Nor does a line longer than the coordinator takes (32 MiB): it is dropped and logged.
    // On a loaded machine the 33 MiB may take longer than the 1.5 s call timeout to pass;
    // either way the connection must survive it.
    let flood = call(&peer, "kid__flood", json!({"bytes": 33 << 20})).await;
    if flood.is_error == Some(true) {
        let e = flood.structured_content.clone().unwrap_or_default();
        assert_eq!(e["code"], "unavailable", "{flood:?}");
    }
    assert_eq!(
        text_of(&call(&peer, "kid__echo", json!({"text": "after"})).await),
        "after"
    );
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("dropped stdout lines longer than 32 MiB"),
        "the dropped line is logged"
    );

    // Timeouts: a hanging call is cancelled after 1.5 s while the coordinator stays responsive.
    let hung = {
        let peer = peer.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let e = err(&peer, "kid__hang", json!({})).await;
            (e, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    ok(&peer, "coordinator_status", json!({})).await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        t.elapsed()
    );
    let (e, took) = hung.await.unwrap();
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Circuit breaker: two more failures (3 in a row) open it; calls then fail at once.
    for _ in 0..2 {
        err(&peer, "kid__hang", json!({})).await;
    }
    let t = Instant::now();
    let e = err(&peer, "kid__echo", json!({"text": "x"})).await;
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(
        e["message"].as_str().unwrap().contains("circuit breaker"),
        "{e}"
    );
    assert!(
        status_of(&peer, "kid").await["detail"]["breaker"]
            .as_str()
            .unwrap()
            .starts_with("open")
    );
    // After open_seconds one probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        text_of(&call(&peer, "kid__echo", json!({"text": "probe"})).await),
        "probe"
    );
    assert_eq!(status_of(&peer, "kid").await["detail"]["breaker"], "closed");

    // Stop: the tools leave the list, the process is gone, list_changed is sent.
    let before = c.changed.load(Ordering::SeqCst);
    let stopped = ok(&peer, "instance_stop", json!({"instance": "kid"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    wait_for("the child to exit", Duration::from_secs(3), || async {
        !alive(pid)
    })
    .await;
    assert!(
        !tool_names(&peer)
            .await
            .iter()
            .any(|n| n.starts_with("kid__"))
    );
    wait_for(
        "tools/list_changed after stop",
        Duration::from_secs(3),
        || async { c.changed.load(Ordering::SeqCst) > before },
    )
    .await;
    let e = common::call(&peer, "kid__echo", json!({"text": "x"})).await;
    assert!(e.is_err(), "a stopped instance's tool is unknown");

    // The secret is in no tool result, no log line, and not in the database in clear.
    let audit = ok(&peer, "audit_query", json!({"limit": 500})).await;
    assert!(!audit.to_string().contains(SECRET));
    assert!(
        audit.to_string().contains("instance.started")
            && audit.to_string().contains("instance.tool_pinned")
    );
    assert!(
        !audit.to_string().contains("sk-hidden-value"),
        "masked arguments in the audit log"
    );
    c.client.cancel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(!log.contains(SECRET), "secret in the log");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret in clear in {}",
                p.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_restart_with_backoff_until_crash_loop() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();

    // A child that cannot start: the error carries its stderr; the instance is failed.
    let e = err(&peer, "instance_start", json!({"type": "broken"})).await;
    assert_eq!(e["code"], "unavailable", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("missing required setting FOO_URL"), "{msg}");
    assert!(
        e["details"]["stderr"].to_string().contains("FOO_URL"),
        "{e}"
    );
    assert_eq!(status_of(&peer, "broken").await["status"], "failed");

    // A child that exits 300 ms after each start: restarted with backoff, then crash_loop.
    let t = Instant::now();
    let s = ok(&peer, "instance_start", json!({"type": "crashy"})).await;
    assert_eq!(s["status"], "running");
    let mut pids = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_of(&peer, "crashy").await;
        if let Some(p) = s["pid"].as_u64() {
            pids.insert(p);
        }
        if s["status"] == "crash_loop" {
            break;
        }
        assert!(Instant::now() < deadline, "no crash_loop: {s}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let s = status_of(&peer, "crashy").await;
    assert_eq!(s["restarts"], 3, "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("crash_loop"),
        "{s}"
    );
    assert!(
        s["last_error"].as_str().unwrap().contains("70"),
        "exit status 70 named: {s}"
    );
    assert!(
        s["detail"]["stderr_tail"]
            .to_string()
            .contains("test_child"),
        "{s}"
    );
    // Four runs of ~300 ms plus backoffs of 50, 100 and 200 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(pids.len() >= 2, "each restart is a new process: {pids:?}");
    // The coordinator stayed responsive throughout, and a person can stop it.
    ok(&peer, "coordinator_status", json!({})).await;
    let e = err(
        &peer,
        "instance_call_tool",
        json!({"instance": "crashy", "tool": "echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(e["code"], "conflict", "{e}");
    let stopped = ok(&peer, "instance_stop", json!({"instance": "crashy"})).await;
    assert_eq!(stopped["status"], "stopped");
    let audit = ok(
        &peer,
        "audit_query",
        json!({"action": "instance.exited", "limit": 50}),
    )
    .await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 3, "{audit}");

    // A crash on request: the instance comes back with a new pid and its tools.
    let s = ok(&peer, "instance_start", json!({"type": "kid"})).await;
    let first = s["pid"].as_u64().unwrap();
    let r = common::call(&peer, "kid__crash", json!({"code": 9})).await;
    assert!(r.is_err() || r.unwrap().is_error == Some(true));
    wait_for(
        "a restart after the crash",
        Duration::from_secs(10),
        || async {
            let s = status_of(&peer, "kid").await;
            s["status"] == "running" && s["pid"].as_u64().is_some_and(|p| p != first)
        },
    )
    .await;
    assert_eq!(
        text_of(&call(&peer, "kid__echo", json!({"text": "back"})).await),
        "back"
    );

    // A child that stops answering (SIGSTOP) fails its health checks and is restarted.
    let s = status_of(&peer, "kid").await;
    let frozen = s["pid"].as_u64().unwrap() as i32;
    assert_eq!(s["restarts"], 1);
    std::process::Command::new("kill")
        .args(["-STOP", &frozen.to_string()])
        .status()
        .unwrap();
    wait_for(
        "unhealthy, then a new process",
        Duration::from_secs(10),
        || async {
            let s = status_of(&peer, "kid").await;
            s["status"] == "running" && s["pid"].as_u64().is_some_and(|p| p as i32 != frozen)
        },
    )
    .await;
    assert!(!alive(frozen as u32), "the frozen child was killed");
    let unhealthy = ok(
        &peer,
        "audit_query",
        json!({"action": "instance.exited", "subject": "kid", "limit": 10}),
    )
    .await;
    assert!(
        unhealthy
            .to_string()
            .contains("health checks in a row failed"),
        "{unhealthy}"
    );
    ok(&peer, "instance_stop", json!({"instance": "kid"})).await;
    c.client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_definition_is_quarantined_until_a_person_approves() {
    let (_dir, c) = started(Some(ElicitationAction::Accept)).await;
    let peer = c.peer().clone();
    ok(&peer, "instance_start", json!({"type": "kid"})).await;
    let echo = |tools: &[rmcp::model::Tool]| {
        tools
            .iter()
            .find(|t| t.name == "kid__echo")
            .and_then(|t| t.description.clone())
            .map(|d| d.to_string())
    };
    let v1 = echo(&peer.list_all_tools().await.unwrap()).unwrap();
    assert!(v1.ends_with("Echoes the text back unchanged."), "{v1}");

    // The child changes echo's description (a rug pull): echo is hidden and refused.
    let before = c.changed.load(Ordering::SeqCst);
    ok(&peer, "kid__set_variant", json!({"variant": "rugpull"})).await;
    wait_for("echo to be quarantined", Duration::from_secs(5), || async {
        echo(&peer.list_all_tools().await.unwrap()).is_none()
    })
    .await;
    // The notification may trail the list by a moment (it is sent by a task of its own).
    wait_for("tools/list_changed", Duration::from_secs(5), || async {
        c.changed.load(Ordering::SeqCst) > before
    })
    .await;
    let e = err(&peer, "kid__echo", json!({"text": "x"})).await;
    assert_eq!(e["code"], "forbidden");
    assert!(
        e["message"].as_str().unwrap().contains("quarantined"),
        "{e}"
    );
    let s = status_of(&peer, "kid").await;
    let hidden = s["detail"]["hidden_tools"].as_array().unwrap().clone();
    let h = hidden.iter().find(|h| h["tool"] == "echo").unwrap();
    assert_eq!(h["reason"], "quarantined");
    assert!(h["detail"].as_str().unwrap().contains("description"), "{h}");
    let rules: Vec<&str> = h["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"hidden-tag")
            && rules.contains(&"read-secrets")
            && rules.contains(&"conceal-from-user"),
        "{rules:?}"
    );
    // Other tools are untouched.
    assert_eq!(
        ok(&peer, "kid__add", json!({"a": 1, "b": 2})).await["sum"],
        3
    );

    // Back to an honest change (v2): still quarantined until a person approves it.
    ok(&peer, "kid__set_variant", json!({"variant": "v2"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(echo(&peer.list_all_tools().await.unwrap()).is_none());
    let asked = c.asked.load(Ordering::SeqCst);
    let r = ok(
        &peer,
        "instance_tool_review",
        json!({"instance": "kid", "tool": "echo"}),
    )
    .await;
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(
        c.asked.load(Ordering::SeqCst),
        asked + 1,
        "the person was asked"
    );
    let v2 = echo(&peer.list_all_tools().await.unwrap()).expect("echo is offered again");
    assert!(
        v2.ends_with("Echoes the text back unchanged, trimmed."),
        "{v2}"
    );
    assert_eq!(
        text_of(&call(&peer, "kid__echo", json!({"text": "ok"})).await),
        "ok"
    );
    let audit = ok(
        &peer,
        "audit_query",
        json!({"action": "instance.tool_approved"}),
    )
    .await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
    // The pin survives a restart: v2 is now the pinned definition, v1 would be a change.
    ok(&peer, "instance_restart", json!({"instance": "kid"})).await;
    let s = status_of(&peer, "kid").await;
    assert!(
        s["detail"]["hidden_tools"].to_string().contains("echo"),
        "v1 after restart differs from the pinned v2: {s}"
    );
    c.client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_stops_the_instance() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();
    let s = ok(
        &peer,
        "instance_start",
        json!({"type": "kid", "ttl_seconds": 1}),
    )
    .await;
    let pid = s["pid"].as_u64().unwrap() as u32;
    assert!(s["expires_at"].is_string());
    wait_for("expiry", Duration::from_secs(6), || async {
        status_of(&peer, "kid").await["status"] == "expired"
    })
    .await;
    wait_for("the child to exit", Duration::from_secs(3), || async {
        !alive(pid)
    })
    .await;
    assert!(
        !tool_names(&peer)
            .await
            .iter()
            .any(|n| n.starts_with("kid__"))
    );
    // The name is free again.
    let s = ok(&peer, "instance_start", json!({"type": "kid"})).await;
    assert_eq!(s["name"], "kid");
    c.client.cancel().await.unwrap();
}

/// Every process in any of these process groups (by /proc), zombies excluded.
fn group_members(pgids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // After the comm field: state, ppid, pgrp.
        if rest.len() > 2 && rest[0] != "Z" && pgids.contains(&rest[2].parse().unwrap_or(0)) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stdin_stops_every_child_within_three_seconds() {
    let (dir, c) = started(None).await;
    let peer = c.peer().clone();
    let stubborn = ok(&peer, "instance_start", json!({"type": "stubborn"})).await;
    let kid = ok(&peer, "instance_start", json!({"type": "kid"})).await;
    // A child that stops answering (SIGSTOP) while its health check waits up to 30 s.
    let frozen = ok(&peer, "instance_start", json!({"type": "frozen"})).await;
    let pids = [
        stubborn["pid"].as_u64().unwrap() as u32,
        kid["pid"].as_u64().unwrap() as u32,
        frozen["pid"].as_u64().unwrap() as u32,
    ];
    let tail = status_of(&peer, "stubborn").await["detail"]["stderr_tail"].to_string();
    let grandchild: u32 = tail
        .split("grandchild pid ")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no grandchild pid in {tail}"));
    assert!(alive(grandchild));
    assert_eq!(
        group_members(&pids).len(),
        4,
        "three children and a grandchild"
    );

    // Calls just before the end: their audit events, still queued, are written on the way out.
    for i in 0..3 {
        let r = call(&peer, "kid__echo", json!({"text": format!("last {i}")})).await;
        assert_eq!(text_of(&r), format!("last {i}"));
    }

    std::process::Command::new("kill")
        .args(["-STOP", &pids[2].to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The client closes the coordinator's stdin and waits for it to exit.
    let t = Instant::now();
    c.client.cancel().await.unwrap();
    wait_for(
        "the coordinator to exit",
        Duration::from_secs(5),
        || async { !alive(c.pid) },
    )
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "exit took {took:?}");
    // Nothing it started is left: not the children, not the grandchild (SIGTERM-proof).
    wait_for("no survivors", Duration::from_millis(500), || async {
        group_members(&pids).is_empty() && !alive(grandchild)
    })
    .await;
    let rows = {
        let conn = rusqlite::Connection::open(common::db_path(dir.path())).unwrap();
        let mut stmt = conn
            .prepare("SELECT status, resume FROM instances ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    assert_eq!(
        rows,
        vec![("stopped".to_string(), 1); 3],
        "the frozen child's pending health check did not hold up its stop"
    );
    let audited: i64 = rusqlite::Connection::open(common::db_path(dir.path()))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action = 'tool.call' AND subject = 'kid__echo' \
             AND detail LIKE '%\"last %'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 3, "every proxied call is in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_processes_see_but_do_not_call_and_a_killed_owner_is_replaced() {
    let dir = common::data_dir();
    set_secret(dir.path());
    let a = start(dir.path(), None).await;
    let s = ok(a.peer(), "instance_start", json!({"type": "kid"})).await;
    let first_pid = s["pid"].as_u64().unwrap() as u32;
    let owner_a = s["owner"].as_str().unwrap().to_string();

    // Another coordinator on the same database sees it but does not call or stop it.
    let b = start(dir.path(), None).await;
    let list = ok(b.peer(), "instance_list", json!({})).await;
    let seen = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "kid")
        .unwrap()
        .clone();
    assert_eq!(seen["owned_here"], false, "{seen}");
    assert_eq!(seen["owner"], owner_a.as_str());
    assert!(
        !tool_names(b.peer())
            .await
            .iter()
            .any(|n| n.starts_with("kid__"))
    );
    let e = err(
        b.peer(),
        "instance_call_tool",
        json!({"instance": "kid", "tool": "echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("another coordinator process"),
        "{e}"
    );
    let e = err(b.peer(), "instance_stop", json!({"instance": "kid"})).await;
    assert_eq!(e["code"], "forbidden", "{e}");
    b.client.cancel().await.unwrap();

    // The owner is killed: its child dies with it (parent-death signal), and the next
    // coordinator restores the instance under its own ownership.
    std::process::Command::new("kill")
        .args(["-9", &a.pid.to_string()])
        .status()
        .unwrap();
    wait_for(
        "the orphaned child to die",
        Duration::from_secs(3),
        || async { !alive(first_pid) },
    )
    .await;
    let c = start(dir.path(), None).await;
    wait_for("the restored instance", Duration::from_secs(10), || async {
        let s = status_of(c.peer(), "kid").await;
        s["status"] == "running" && s["owned_here"] == true
    })
    .await;
    assert_eq!(
        text_of(&call(c.peer(), "kid__echo", json!({"text": "restored"})).await),
        "restored"
    );
    let s = status_of(c.peer(), "kid").await;
    assert_ne!(s["pid"].as_u64().unwrap() as u32, first_pid);
    // A clean exit marks it for the next coordinator, which starts it again.
    c.client.cancel().await.unwrap();
    wait_for(
        "the coordinator to exit",
        Duration::from_secs(5),
        || async { !alive(c.pid) },
    )
    .await;
    let d = start(dir.path(), None).await;
    wait_for("the instance resumed", Duration::from_secs(10), || async {
        status_of(d.peer(), "kid").await["status"] == "running"
    })
    .await;
    d.client.cancel().await.unwrap();
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_client_listens_for_tool_list_changes_and_calls_through() {
    let dir = common::data_dir();
    set_secret(dir.path());
    let config = write_config(dir.path());
    let client = common::connect(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        common::Era::Stateless,
    )
    .await;
    let peer = client.peer().clone();
    let mut filter = rmcp::model::SubscriptionFilter::new();
    filter.tools_list_changed = Some(true);
    let mut subscription = peer.listen(filter).await.unwrap();
    assert_eq!(subscription.acknowledged().tools_list_changed, Some(true));
    ok(&peer, "instance_start", json!({"type": "kid"})).await;
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a notification within 5 s")
        .unwrap()
        .expect("the subscription is open");
    assert!(
        matches!(
            next,
            rmcp::model::ServerNotification::ToolListChangedNotification(_)
        ),
        "{next:?}"
    );
    assert!(tool_names(&peer).await.contains(&"kid__echo".to_string()));
    let r = call(&peer, "kid__echo", json!({"text": "modern"})).await;
    assert_eq!(r.result_type, Some(rmcp::model::ResultType::COMPLETE));
    assert_eq!(text_of(&r), "modern");
    client.cancel().await.unwrap();
}

/// Autostarted types come up in the background, even while another process keeps the
/// database busy, and whoever sees one `running` in `instance_list` finds its tools in
/// `tools/list` too. (CI's bench once saw the status first: the tools were published only
/// after the start's audit row was written. That gap was microseconds, so this poll only
/// catches it by chance; the fix publishes the tools before the status changes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostarted_children_come_up_with_their_tools_listed_when_running() {
    let dir = common::data_dir();
    let bin = child_bin();
    let names = ["auto1", "auto2", "auto3", "auto4"];
    let config: String = names
        .iter()
        .map(|n| {
            format!(
                "[instance_types.{n}]\ncommand = \"{}\"\nautostart = true\n\n",
                bin.display()
            )
        })
        .collect();
    let config_path = dir.path().join("autostart.toml");
    std::fs::write(&config_path, config).unwrap();
    let c = start_with(dir.path(), &config_path, None).await;
    let peer = c.client.peer().clone();
    // Another process on the same database (as a second coordinator would) takes its write
    // lock for 15 ms at a time, so each of the coordinator's writes waits for it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let locker = {
        let stop = stop.clone();
        let db = common::db_path(dir.path());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut held = 0u32;
            while !stop.load(Ordering::SeqCst) {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_millis(15));
                conn.execute_batch("COMMIT").unwrap();
                held += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            held
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = ok(&peer, "instance_list", json!({})).await;
        let running: Vec<String> = list["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "running")
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        let tools = tool_names(&peer).await;
        for name in &running {
            assert!(
                tools.contains(&format!("{name}__echo")),
                "{name} is running in instance_list but {name}__echo is not in tools/list: {tools:?}"
            );
        }
        if running.len() == names.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "autostarted instances not all running after 30 s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    assert!(locker.join().unwrap() > 0, "the lock was never held");
    wait_for(
        "a tools/list_changed notification",
        Duration::from_secs(5),
        || {
            let n = c.changed.load(Ordering::SeqCst);
            async move { n > 0 }
        },
    )
    .await;
    let pid = c.pid;
    c.client.cancel().await.unwrap();
    wait_for(
        "the coordinator to exit",
        Duration::from_secs(5),
        || async move { !alive(pid) },
    )
    .await;
}

/// An instance in `crash_loop` still has a time to live, and waits for a person, not for the
/// next coordinator: one whose coordinator was killed is marked lost, not started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_expires_with_its_ttl_and_is_not_restored_after_a_kill() {
    let (dir, c) = started(None).await;
    let peer = c.peer().clone();
    ok(
        &peer,
        "instance_start",
        json!({"type": "crashy", "name": "brief", "ttl_seconds": 4}),
    )
    .await;
    ok(
        &peer,
        "instance_start",
        json!({"type": "crashy", "name": "looping"}),
    )
    .await;
    for name in ["brief", "looping"] {
        wait_for(
            &format!("{name} in crash_loop"),
            Duration::from_secs(15),
            || async { status_of(&peer, name).await["status"] == "crash_loop" },
        )
        .await;
    }
    wait_for(
        "the crash loop to expire",
        Duration::from_secs(8),
        || async { status_of(&peer, "brief").await["status"] == "expired" },
    )
    .await;
    assert_eq!(status_of(&peer, "looping").await["status"], "crash_loop");

    std::process::Command::new("kill")
        .args(["-9", &c.pid.to_string()])
        .status()
        .unwrap();
    wait_for(
        "the killed coordinator to be gone",
        Duration::from_secs(3),
        || async { !alive(c.pid) },
    )
    .await;
    let d = start(dir.path(), None).await;
    wait_for(
        "the crash loop marked lost",
        Duration::from_secs(10),
        || async { status_of(d.peer(), "looping").await["status"] == "failed" },
    )
    .await;
    let s = status_of(d.peer(), "looping").await;
    assert!(
        s["last_error"].as_str().unwrap().contains("crash_loop"),
        "{s}"
    );
    assert!(s["pid"].is_null(), "not started again: {s}");
    let restarted = ok(
        d.peer(),
        "audit_query",
        json!({"action": "instance.restarted", "subject": "looping", "limit": 10}),
    )
    .await;
    assert!(
        !restarted
            .to_string()
            .contains("restored by a new coordinator"),
        "{restarted}"
    );
    d.client.cancel().await.unwrap();
    drop(c);
}

/// `instance_start` overrides: only the variables the type lists in `overridable`, never one
/// that decides which code runs; each refusal names the field. The attack of issue 13: an
/// override pointing the child's data file elsewhere (server-memory's `MEMORY_FILE_PATH`) is
/// refused because the type does not list it, although it is a declared literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_change_only_variables_the_type_lists_as_overridable() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();
    let types = ok(&peer, "instance_types", json!({})).await;
    let tuned = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tuned")
        .unwrap();
    assert_eq!(tuned["overridable"], json!(["MODE"]), "{tuned}");
    for (key, value, says) in [
        (
            "DATA_FILE",
            "/tmp/elsewhere.jsonl",
            "must list it in `overridable`",
        ),
        ("PATH", "/tmp/evil", "decides which program or code"),
        ("HOME", "/tmp", "must list it in `overridable`"),
        ("LD_PRELOAD", "/tmp/x.so", "decides which program or code"),
        ("NOPE", "x", "must list it in `overridable`"),
    ] {
        let e = err(
            &peer,
            "instance_start",
            json!({"type": "tuned", "overrides": {"env": {key: value}}}),
        )
        .await;
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("overrides.env.{key}")) && message.contains(says),
            "{key}: {e}"
        );
    }
    let e = err(
        &peer,
        "instance_start",
        json!({"type": "kid", "overrides": {"env": {"TOKEN": "mine"}}}),
    )
    .await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("overrides.env.TOKEN"),
        "{e}"
    );
    // Nothing was started by the refused calls.
    let list = ok(&peer, "instance_list", json!({})).await;
    assert_eq!(list["instances"], json!([]), "{list}");

    ok(
        &peer,
        "instance_start",
        json!({"type": "tuned", "overrides": {"env": {"MODE": "custom"}}}),
    )
    .await;
    let r = call(&peer, "tuned__env", json!({})).await;
    let vars = &r.structured_content.unwrap()["vars"];
    assert_eq!(vars["MODE"], sha256("custom"), "{vars}");
    assert_eq!(
        vars["DATA_FILE"],
        sha256("/var/lib/kid/memory.jsonl"),
        "{vars}"
    );
    assert_eq!(vars["PATH"], sha256("/usr/bin:/bin"), "{vars}");
    c.client.cancel().await.unwrap();
}

/// Pins belong to the type: a changed definition on one instance stays pending for review
/// while another instance of the type still shows (and offers) the approved one, even when
/// that other instance lists its tools again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_instance_stays_pending_while_another_shows_the_pinned_definition() {
    let (_dir, c) = started(Some(ElicitationAction::Accept)).await;
    let peer = c.peer().clone();
    ok(&peer, "instance_start", json!({"type": "kid"})).await;
    ok(
        &peer,
        "instance_start",
        json!({"type": "kid", "name": "kid2"}),
    )
    .await;
    ok(&peer, "kid__set_variant", json!({"variant": "v2"})).await;
    wait_for(
        "kid__echo to be quarantined",
        Duration::from_secs(5),
        || async { !tool_names(&peer).await.contains(&"kid__echo".to_string()) },
    )
    .await;
    // kid2 shows the pinned definition: offered, and listing it again leaves the change pending.
    ok(&peer, "instance_restart", json!({"instance": "kid2"})).await;
    let names = tool_names(&peer).await;
    assert!(names.contains(&"kid2__echo".to_string()), "{names:?}");
    assert!(!names.contains(&"kid__echo".to_string()), "{names:?}");
    let r = ok(
        &peer,
        "instance_tool_review",
        json!({"instance": "kid", "tool": "echo"}),
    )
    .await;
    assert_eq!(r["state"], "approved", "{r}");
    // Now v2 is pinned: kid offers it, and kid2's v1 is the changed one.
    wait_for(
        "kid__echo offered again",
        Duration::from_secs(5),
        || async { tool_names(&peer).await.contains(&"kid__echo".to_string()) },
    )
    .await;
    ok(&peer, "instance_restart", json!({"instance": "kid2"})).await;
    assert!(!tool_names(&peer).await.contains(&"kid2__echo".to_string()));
    c.client.cancel().await.unwrap();
}

/// Two child tools whose exposed names would be the same (`extra_tool` and `extra tool`):
/// the one whose name is valid as is keeps it, the other gets its hashed form, and each
/// name reaches its own tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_whose_names_sanitize_alike_get_distinct_exposed_names() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();
    ok(&peer, "instance_start", json!({"type": "kid"})).await;
    ok(&peer, "kid__set_variant", json!({"variant": "extra"})).await;
    wait_for("the extra tools", Duration::from_secs(5), || async {
        tool_names(&peer)
            .await
            .iter()
            .filter(|n| n.starts_with("kid__extra_tool"))
            .count()
            == 2
    })
    .await;
    let names = tool_names(&peer).await;
    let hashed = format!("kid__extra_tool-{}", &sha256("extra tool")[..6]);
    assert!(names.contains(&hashed), "{hashed} not in {names:?}");
    let plain = call(&peer, "kid__extra_tool", json!({})).await;
    assert_eq!(plain.structured_content.unwrap()["extra"], "extra_tool");
    let spaced = call(&peer, &hashed, json!({})).await;
    assert_eq!(spaced.structured_content.unwrap()["extra"], "extra tool");
    c.client.cancel().await.unwrap();
}

/// A child that prints its secret to stderr and returns it from a tool: the value is masked
/// in the tool result (relayed and through `instance_call_tool`), in `instance_get`'s stderr
/// tail and in the coordinator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaky_child_cannot_put_its_secret_in_results_stderr_or_logs() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();
    ok(&peer, "instance_start", json!({"type": "leaky"})).await;
    let relayed = call(&peer, "leaky__getenv", json!({"name": "TOKEN"})).await;
    let explicit = ok(
        &peer,
        "instance_call_tool",
        json!({"instance": "leaky", "tool": "getenv", "arguments": {"name": "TOKEN"}}),
    )
    .await;
    for (how, result) in [
        ("relayed", serde_json::to_value(&relayed).unwrap()),
        ("instance_call_tool", explicit),
    ] {
        let text = result.to_string();
        assert!(!text.contains(SECRET), "{how}: {text}");
        assert!(text.contains("[REDACTED]"), "{how}: {text}");
    }
    assert_eq!(relayed.structured_content.unwrap()["value"], "[REDACTED]");
    wait_for(
        "the leak in the stderr tail",
        Duration::from_secs(5),
        || async {
            status_of(&peer, "leaky").await["detail"]["stderr_tail"]
                .to_string()
                .contains("TOKEN=[REDACTED]")
        },
    )
    .await;
    let s = status_of(&peer, "leaky").await;
    assert!(!s.to_string().contains(SECRET), "{s}");
    c.client.cancel().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("TOKEN=[REDACTED]"),
        "the child's line is logged, masked"
    );
    assert!(!log.contains(SECRET), "secret in the log");
}

/// The pids of `pid`'s children.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.retain(|&p| alive(p));
    out
}

/// `instance_stop` on a child stuck in `initialize` does not wait for the start's timeout:
/// the start is abandoned, its caller told why, and the child is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_child_that_hangs_in_initialize_does_not_wait_for_the_timeout() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();
    let starting = {
        let peer = peer.clone();
        tokio::spawn(async move {
            common::call(&peer, "instance_start", json!({"type": "slowstart"}))
                .await
                .unwrap()
        })
    };
    wait_for(
        "the child to be starting",
        Duration::from_secs(10),
        || async {
            let list = ok(&peer, "instance_list", json!({})).await;
            list["instances"][0]["status"] == "starting" && children_of(c.pid).len() == 1
        },
    )
    .await;
    let t = Instant::now();
    let stopped = ok(&peer, "instance_stop", json!({"instance": "slowstart"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    let started = tokio::time::timeout(Duration::from_secs(5), starting)
        .await
        .expect("instance_start answered")
        .unwrap();
    assert_eq!(started.is_error, Some(true), "{started:?}");
    assert!(
        text_of(&started).contains("while starting"),
        "{}",
        text_of(&started)
    );
    wait_for("no child left", Duration::from_secs(3), || async {
        children_of(c.pid).is_empty()
    })
    .await;
    c.client.cancel().await.unwrap();
}

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// Zombie children of `pid` (exited, never reaped).
fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(f) = stat_fields(p)
            && f.len() > 1
            && f[0] == "Z"
            && f[1] == pid.to_string()
        {
            out.push(p);
        }
    }
    out
}

/// The pid the test child logged as its grandchild's, from the instance's stderr tail.
async fn grandchild_of(peer: &Peer<RoleClient>, name: &str) -> u32 {
    let mut tail = String::new();
    for _ in 0..100 {
        tail = status_of(peer, name).await["detail"]["stderr_tail"].to_string();
        if let Some(pid) = tail
            .rsplit("grandchild pid ")
            .next()
            .filter(|_| tail.contains("grandchild pid "))
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no grandchild pid in {tail}")
}

/// Gone from the process table: killed and reaped (a zombie still counts as there).
fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Issue 13, item 4: a grandchild that calls `setsid` (leaving the child's process group), and
/// one orphaned by a double fork, die with their instance: on `instance_stop`, when the child
/// crashes, and when the coordinator exits; one that escapes to the coordinator while its
/// instance runs is killed at once. None is left behind as a zombie either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchildren_that_leave_the_group_die_with_their_instance() {
    let (_dir, c) = started(None).await;
    let peer = c.peer().clone();

    // instance_stop.
    let setsider = ok(&peer, "instance_start", json!({"type": "setsider"})).await;
    let orphaner = ok(&peer, "instance_start", json!({"type": "orphaner"})).await;
    let setsider_pid = setsider["pid"].as_u64().unwrap() as u32;
    let orphaner_pid = orphaner["pid"].as_u64().unwrap() as u32;
    let g1 = grandchild_of(&peer, "setsider").await;
    let g2 = grandchild_of(&peer, "orphaner").await;
    assert!(alive(g1) && alive(g2));
    let child_session = stat_fields(setsider_pid).unwrap()[3].clone();
    assert_ne!(
        stat_fields(g1).unwrap()[3],
        child_session,
        "the setsid grandchild has a session of its own"
    );
    assert_eq!(
        stat_fields(g2).unwrap()[1],
        orphaner_pid.to_string(),
        "the orphan of the double fork was re-parented to the child, its subreaper"
    );
    for name in ["setsider", "orphaner"] {
        ok(&peer, "instance_stop", json!({"instance": name})).await;
    }
    wait_for(
        "the grandchildren to be killed and reaped after instance_stop",
        Duration::from_secs(3),
        || async { gone(g1) && gone(g2) },
    )
    .await;

    // A crash: the child exits and its orphaned grandchild comes up to the coordinator.
    let crashy = ok(&peer, "instance_start", json!({"type": "orphaner-crashy"})).await;
    let g3 = grandchild_of(&peer, "orphaner-crashy").await;
    assert!(alive(g3));
    wait_for(
        "a restart after the crash",
        Duration::from_secs(10),
        || async {
            status_of(&peer, "orphaner-crashy").await["restarts"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    )
    .await;
    wait_for(
        "the crashed child's grandchild to be killed and reaped",
        Duration::from_secs(3),
        || async { gone(g3) },
    )
    .await;
    assert!(!alive(crashy["pid"].as_u64().unwrap() as u32));
    ok(
        &peer,
        "instance_stop",
        json!({"instance": "orphaner-crashy"}),
    )
    .await;
    wait_for(
        "no zombie child of the coordinator",
        Duration::from_secs(3),
        || async { zombie_children(c.pid).is_empty() },
    )
    .await;

    // A child that stops being a subreaper and double-forks: the orphan comes straight up to
    // the coordinator while its instance runs. It adopts it, kills it and reaps it.
    ok(&peer, "instance_start", json!({"type": "escaper"})).await;
    let g6 = grandchild_of(&peer, "escaper").await;
    wait_for(
        "the escaped orphan to be killed and reaped by the coordinator",
        Duration::from_secs(3),
        || async { gone(g6) },
    )
    .await;
    assert_eq!(status_of(&peer, "escaper").await["status"], "running");
    let log = std::fs::read_to_string(&c.log).unwrap();
    assert!(
        log.contains("killed a process the coordinator adopted"),
        "{log}"
    );
    ok(&peer, "instance_stop", json!({"instance": "escaper"})).await;

    // The coordinator's exit.
    ok(&peer, "instance_start", json!({"type": "setsider"})).await;
    ok(&peer, "instance_start", json!({"type": "orphaner"})).await;
    let g4 = grandchild_of(&peer, "setsider").await;
    let g5 = grandchild_of(&peer, "orphaner").await;
    assert!(alive(g4) && alive(g5));
    let t = Instant::now();
    c.client.cancel().await.unwrap();
    wait_for(
        "the coordinator to exit",
        Duration::from_secs(5),
        || async { !alive(c.pid) },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "exit took {:?}",
        t.elapsed()
    );
    wait_for("no survivors", Duration::from_millis(500), || async {
        !alive(g4) && !alive(g5)
    })
    .await;
}

/// Issue 13, item 3: a child, acting as a same-user attacker, cannot read the coordinator's
/// environment or the targets of its descriptors through /proc, while the same reads of its
/// sibling (another child of the same user) succeed. The coordinator gets its data directory,
/// database and config through its environment here, and none of it reaches the child: not
/// in its environment, not as an open descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_cannot_read_the_coordinator_through_proc() {
    let dir = common::data_dir();
    set_secret(dir.path());
    let config = write_config(dir.path());
    let c = start_unprivileged_via_env(dir.path(), &config).await;
    let peer = c.peer().clone();
    let kid = ok(&peer, "instance_start", json!({"type": "kid"})).await;
    let kid_pid = kid["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        stat_fields(kid_pid).unwrap()[1],
        c.pid.to_string(),
        "the coordinator is the child's parent"
    );
    let status = std::fs::read_to_string(format!("/proc/{kid_pid}/status")).unwrap();
    assert!(
        status.contains("CapEff:\t0000000000000000"),
        "the child runs without capabilities: {status}"
    );

    let got = ok(&peer, "kid__peek", json!({"pid": 0})).await;
    assert_eq!(got["pid"], c.pid, "{got}");
    assert_eq!(
        got["environ"]["ok"], false,
        "read the coordinator's environment: {got}"
    );
    assert_eq!(got["environ"]["errno"], libc::EACCES, "{got}");
    assert_eq!(
        got["fds"]["ok"], false,
        "read the coordinator's descriptors: {got}"
    );
    assert_eq!(got["fds"]["errno"], libc::EACCES, "{got}");

    // Control: the same reads of a sibling, an ordinary process of the same user, succeed.
    let sibling = ok(
        &peer,
        "instance_start",
        json!({"type": "kid", "name": "sibling"}),
    )
    .await;
    let seen = ok(&peer, "kid__peek", json!({"pid": sibling["pid"]})).await;
    assert_eq!(seen["environ"]["ok"], true, "{seen}");
    assert_eq!(
        seen["environ"]["names"],
        json!(["TOKEN", "VISIBLE"]),
        "{seen}"
    );
    assert_eq!(seen["fds"]["ok"], true, "{seen}");

    // Nothing of the data directory reaches the child.
    let env = ok(&peer, "kid__env", json!({})).await;
    let names: Vec<&String> = env["vars"].as_object().unwrap().keys().collect();
    assert_eq!(names, vec!["TOKEN", "VISIBLE"], "{env}");
    let data_dir = dir.path().canonicalize().unwrap().display().to_string();
    let fds = ok(&peer, "kid__fds", json!({})).await;
    let targets = fds["targets"].as_array().unwrap();
    assert!(!targets.is_empty(), "{fds}");
    assert!(
        targets
            .iter()
            .all(|t| !t.as_str().unwrap().contains(&data_dir)),
        "the child holds a descriptor in the data directory: {fds}"
    );
    c.client.cancel().await.unwrap();
}
