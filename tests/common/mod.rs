//! Shared helpers for the integration tests: spawn the real `mcp-coordinator` binary on a temp
//! data directory and connect rmcp's client to it in either protocol era.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod console;
pub mod db;
pub mod fleet;
pub mod http;
pub mod idp;
pub mod setup;
pub mod team;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServiceError};
use serde_json::Value;

#[allow(unused_imports)]
pub use db::Db;
#[allow(unused_imports)]
pub(crate) use db::{both_backends, sql_args};

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-coordinator");

/// Which protocol era a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize` handshake at 2025-11-25.
    Legacy,
    /// `server/discover` and per-request metadata at 2026-07-28.
    Stateless,
}

pub const ERAS: [Era; 2] = [Era::Legacy, Era::Stateless];

pub type Client = RunningService<RoleClient, ClientConfig>;

pub fn client_config(name: &str) -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(name, "1.2.3"),
    )
}

/// A command for the binary with an isolated data directory and quiet logs.
pub fn command(data_dir: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    // Every toolset: these tests use every tool (tests/toolsets.rs covers the default set).
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--log-level", "warn"])
        .args(extra)
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG");
    cmd
}

/// Spawns the server and connects a client in the given era.
pub async fn connect(data_dir: &Path, extra: &[&str], era: Era) -> Client {
    let config = client_config(match era {
        Era::Legacy => "legacy-test",
        Era::Stateless => "stateless-test",
    });
    connect_command(command(data_dir, extra), config, era).await
}

/// Runs `cmd` (a coordinator) and connects `handler` to it in the given era.
pub async fn connect_command<H: rmcp::ClientHandler>(
    cmd: tokio::process::Command,
    handler: H,
    era: Era,
) -> RunningService<RoleClient, H> {
    let (transport, _stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mcp-coordinator");
    let lifecycle = match era {
        Era::Legacy => ClientLifecycleMode::Initialize,
        Era::Stateless => ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    };
    handler
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect to mcp-coordinator")
}

/// Calls a tool with JSON arguments.
pub async fn call(
    client: &Peer<RoleClient>,
    tool: &str,
    args: Value,
) -> Result<CallToolResult, ServiceError> {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    client.call_tool(params).await
}

/// Calls a tool that must succeed and returns its structured content.
pub async fn call_ok(client: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    let result = call(client, tool, args)
        .await
        .unwrap_or_else(|e| panic!("{tool} failed: {e}"));
    assert_ne!(
        result.is_error,
        Some(true),
        "{tool} returned an error: {result:?}"
    );
    result
        .structured_content
        .unwrap_or_else(|| panic!("{tool} returned no structured content"))
}

/// A call refused for one of its arguments: a tool result (not a JSON-RPC error) with
/// `isError: true`, structured content `{code: "invalid_argument", message, details: {tool,
/// field}, retryable: false}` and the message as its text. Returns the field and the message.
pub fn invalid_argument(tool: &str, r: Result<CallToolResult, ServiceError>) -> (String, String) {
    let r = r.unwrap_or_else(|e| {
        panic!("{tool}: expected an invalid_argument result, got a protocol error: {e}")
    });
    invalid_argument_result(tool, &serde_json::to_value(&r).unwrap())
}

/// [`invalid_argument`] of a raw JSON-RPC response.
pub fn raw_invalid_argument(tool: &str, response: &Value) -> (String, String) {
    assert!(
        response.get("error").is_none(),
        "{tool}: expected an invalid_argument result, got a protocol error: {response:#}"
    );
    invalid_argument_result(tool, &response["result"])
}

fn invalid_argument_result(tool: &str, result: &Value) -> (String, String) {
    assert_eq!(result["isError"], true, "{tool}: {result:#}");
    let s = &result["structuredContent"];
    assert_eq!(s["code"], "invalid_argument", "{tool}: {result:#}");
    assert_eq!(s["retryable"], false, "{tool}: {result:#}");
    assert_eq!(s["details"]["tool"], tool, "{tool}: {result:#}");
    let message = s["message"].as_str().unwrap().to_string();
    assert_eq!(
        result["content"],
        serde_json::json!([{"type": "text", "text": message}]),
        "{tool}: the text is the message: {result:#}"
    );
    let field = s["details"]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("{tool}: no details.field: {result:#}"))
        .to_string();
    let last = field.rsplit(['.', '[']).next().unwrap();
    assert!(
        message.contains(last),
        "{tool}: the message names the field `{field}`: {message}"
    );
    (field, message)
}

/// A temporary data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("coordinator.db")
}

/// Waits until the servers on this data directory's database have written the `tool.call`
/// events of the calls made so far: their audit writers write within 20 ms, so the head stops
/// moving. For tests that read the database from outside a server (the CLI, rusqlite).
pub fn settle_audit(data_dir: &Path) {
    settle(|| {
        rusqlite::Connection::open(db_path(data_dir))
            .and_then(|db| {
                db.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap_or(-1)
    })
}

/// Returns once `head` (the audit chain's newest seq) reads the same twice 100 ms apart.
pub fn settle(head: impl Fn() -> i64) {
    let mut last = head();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = head();
        if now == last {
            return;
        }
        last = now;
    }
}

/// [`settle_audit`], then waits until the head is signed too: a server's head signer signs
/// within a second of a commit, and may write an `audit.key_added` event first. For tests that
/// count events or commits from outside while a server runs.
pub fn settle_signed(data_dir: &Path) {
    settle_audit(data_dir);
    settle_signed_db(&db_path(data_dir));
}

/// Waits until the head of the chain in the database file `db` is signed (5 s at most).
pub fn settle_signed_db(db: &Path) {
    let started = std::time::Instant::now();
    loop {
        let signed = rusqlite::Connection::open(db)
            .and_then(|db| {
                db.query_row(
                    "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_events)
                          = (SELECT COALESCE(MAX(seq), 0) FROM audit_signatures)",
                    [],
                    |r| r.get::<_, bool>(0),
                )
            })
            .unwrap_or(false);
        if signed {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the audit head was not signed within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs the binary as a CLI command and returns (status code, stdout, stderr).
pub fn cli(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-coordinator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server spoken to with raw JSON-RPC lines over its pipes, for tests that must craft or
/// alter messages (an MRTR `requestState`, say) that no well-behaved client would send.
pub struct RawServer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    next_id: u64,
}

impl RawServer {
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(data_dir, &[])
    }

    /// [`spawn`](Self::spawn) with more arguments (`--config FILE`).
    pub fn spawn_with(data_dir: &Path, extra: &[&str]) -> Self {
        RawServer::spawn_toolsets(data_dir, extra, Some("all"))
    }

    /// [`RawServer::spawn_with`], offering `toolsets` (`MCP_COORDINATOR_TOOLSETS`), or with
    /// `None` the server's default set.
    pub fn spawn_toolsets(data_dir: &Path, extra: &[&str], toolsets: Option<&str>) -> Self {
        let mut cmd = std::process::Command::new(BIN);
        match toolsets {
            Some(t) => cmd.env("MCP_COORDINATOR_TOOLSETS", t),
            None => cmd.env_remove("MCP_COORDINATOR_TOOLSETS"),
        };
        let mut child = cmd
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "error"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mcp-coordinator");
        let stdin = child.stdin.take().unwrap();
        let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        RawServer {
            child,
            stdin,
            lines,
            next_id: 1,
        }
    }

    /// Per-request metadata of a 2026-07-28 client, with or without form elicitation.
    pub fn meta(elicitation: bool) -> Value {
        let caps = if elicitation {
            serde_json::json!({"elicitation": {"form": {}}})
        } else {
            serde_json::json!({})
        };
        serde_json::json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw-modern", "version": "7"},
            "io.modelcontextprotocol/clientCapabilities": caps
        })
    }

    /// Sends one notification (nothing answers it).
    pub fn notify(&mut self, method: &str, params: Value) {
        use std::io::Write;
        let msg = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params});
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Sends one request and returns the whole response message.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        serde_json::from_str(&self.request_line(method, params)).unwrap()
    }

    /// Sends one request and returns its response line as the server wrote it.
    pub fn request_line(&mut self, method: &str, params: Value) -> String {
        use std::io::Write;
        let id = self.next_id;
        self.next_id += 1;
        let msg =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
        loop {
            let line = self.lines.next().expect("server closed stdout").unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return line;
            }
        }
    }

    /// A stateless `tools/call` with optional MRTR retry fields.
    pub fn call(
        &mut self,
        tool: &str,
        args: Value,
        elicitation: bool,
        retry: Option<(Value, &str)>,
    ) -> Value {
        let mut params =
            serde_json::json!({"name": tool, "arguments": args, "_meta": Self::meta(elicitation)});
        if let Some((responses, state)) = retry {
            params["inputResponses"] = responses;
            params["requestState"] = Value::String(state.to_string());
        }
        self.request("tools/call", params)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An example binary next to the coordinator binary (`<target>/<profile>/examples/NAME`),
/// built here if needed: a plain `cargo test` builds the examples, but `cargo test --test X`
/// does not, and a stale or missing binary must not be run.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let profile_dir = Path::new(BIN).parent().unwrap();
    let bin = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name, "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap());
        if let Some(profile) = profile_dir.file_name().and_then(|n| n.to_str())
            && profile != "debug"
        {
            cmd.args(["--profile", profile]);
        }
        let status = cmd.status().expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name}: {status}");
        built.push(name.to_string());
    }
    assert!(bin.is_file(), "{} is missing", bin.display());
    bin
}

/// Stores secret `name` with `value` through the CLI (`secrets set`, value on stdin) in the
/// data directory's store.
pub fn set_secret(data_dir: &Path, name: &str, value: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["secrets", "set", name])
        .env_remove("MCP_COORDINATOR_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mcp-coordinator secrets set");
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{value}").expect("write the secret");
    }
    let out = child.wait_with_output().expect("wait for secrets set");
    assert!(
        out.status.success(),
        "secrets set {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `mcp-coordinator --data-dir DIR ARGS` on a fresh pseudo-terminal (`script(1)`), types
/// each of `answers` after the screen shows its prompt, then Ctrl-C once the screen shows
/// `interrupt_at`; then `stty -a` runs on the same terminal. Returns the whole screen and the
/// terminal's local modes as `stty -a` printed them (`echo` or `-echo`, ...).
pub fn ctrl_c_at_prompt(
    data_dir: &Path,
    args: &[&str],
    answers: &[(&str, &str)],
    interrupt_at: &str,
) -> (String, Vec<String>) {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let mut inner = format!(
        "{} --data-dir {}",
        BIN,
        quote(&data_dir.display().to_string())
    );
    for a in args {
        inner.push(' ');
        inner.push_str(&quote(a));
    }
    // If the terminal sends SIGINT to the whole foreground group (echo off with `stty`, as
    // before), the shell must still get to `stty -a`: a trap (reset to the default in the
    // child by exec) does that.
    let script = format!(
        "trap 'echo; echo MODES: $(stty -a); exit 130' INT; {inner}; echo; echo MODES: $(stty -a)"
    );
    let mut child = std::process::Command::new("script")
        .args([
            "-q",
            "-e",
            "-c",
            &format!("sh -c {}", quote(&script)),
            "/dev/null",
        ])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (screen, reader) = read_screen(stdout);
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !screen.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?}:\n{}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the program settle into reading.
        std::thread::sleep(Duration::from_millis(300));
    };
    for (prompt, answer) in answers {
        wait_for(prompt);
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    wait_for(interrupt_at);
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    wait_for("MODES:");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    let _ = reader.join();
    let screen = screen.lock().unwrap().clone();
    let modes = screen
        .split("MODES:")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| w.trim_end_matches(';').to_string())
        .collect();
    (screen, modes)
}

/// Collects what a terminal program prints (the screen) on a thread of its own, so a test can
/// wait for a prompt while the program blocks on its input.
pub fn read_screen(
    mut stdout: impl std::io::Read + Send + 'static,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = screen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (screen, reader)
}
