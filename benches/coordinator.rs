//! Benchmark program for mcp-coordinator: prints cold start, the size of `tools/list`, tool
//! round-trip latency and
//! throughput, idle memory, audit append rate, audit verification time, task queue throughput
//! claim latency against queue depth, pipeline scheduling overhead per stage, the time of
//! a security assessment of 202 config files, and the cost of child MCP instances (added
//! latency and throughput of proxied tool calls, cold start with autostarted children, memory
//! with 20 children), and the server time of the console's approvals, audit and `/metrics`
//! pages, `tools/call` over streamable HTTP beside stdio (`benches/coordinator/http.rs`), and
//! the task queue on PostgreSQL (`benches/coordinator/postgres.rs`), each next to its target. Run with `cargo bench --bench coordinator`;
//! `BENCH_ONLY=server,memory,audit,queue,pipelines,assessments,console,instances,http,postgres` picks
//! sections and `BENCH_QUICK=1` shrinks the counts about tenfold for a smoke run. It prints figures and
//! asserts nothing about timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "coordinator/http.rs"]
mod http;
#[path = "coordinator/postgres.rs"]
mod postgres;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mcp_coordinator::agent::{
    AgentService, AgentType, AgentsConfig, NewAgent, Resources, TokenKeys, now_ms,
};
use mcp_coordinator::approval::{ApprovalPolicy, ApprovalService};
use mcp_coordinator::assessment::{AssessmentService, AssessmentType, AssessmentsConfig, Target};
use mcp_coordinator::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
use mcp_coordinator::pipeline::{
    Definition, Dependency, NewPipeline, NewRun, PipelineService, PipelinesConfig, RunStatus,
    StageDef,
};
use mcp_coordinator::store::agent as agent_sql;
use mcp_coordinator::store::task as task_sql;
use mcp_coordinator::store::{Location, Store, StoreError};
use mcp_coordinator::task::{NewTask, NoTask, Priority, Report, Task, TaskService, TasksConfig};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde::Deserialize;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-coordinator");

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}"#;
const DISCOVER: &str = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// How much work each section does.
struct Counts {
    cold_runs: usize,
    status_warmup: u64,
    status_sequential: u64,
    status_throughput: u64,
    in_flight: u64,
    single_events: usize,
    batch_100_events: usize,
    batch_1000_events: usize,
    /// Tasks submitted, claimed and completed in each throughput run.
    tasks: usize,
    /// Queue depths at which claim latency is compared.
    queue_depths: [usize; 2],
    /// Timed claims at each depth.
    claims_per_depth: usize,
    /// Largest-payload `task_submit`s in the memory burst.
    memory_submits: usize,
    /// Runs of each 100-stage pipeline.
    pipeline_runs: usize,
    /// Audit events under the console's audit page.
    console_events: usize,
    /// Timed requests of each console page.
    console_requests: usize,
}

impl Counts {
    fn new(quick: bool) -> Self {
        if quick {
            Counts {
                cold_runs: 5,
                status_warmup: 20,
                status_sequential: 500,
                status_throughput: 500,
                in_flight: 16,
                single_events: 1_000,
                batch_100_events: 10_000,
                batch_1000_events: 100_000,
                tasks: 2_000,
                queue_depths: [1_000, 100_000],
                claims_per_depth: 1_000,
                memory_submits: 20,
                pipeline_runs: 3,
                console_events: 100_000,
                console_requests: 50,
            }
        } else {
            Counts {
                cold_runs: 50,
                status_warmup: 200,
                status_sequential: 5_000,
                status_throughput: 5_000,
                in_flight: 16,
                single_events: 10_000,
                batch_100_events: 100_000,
                batch_1000_events: 1_000_000,
                tasks: 20_000,
                queue_depths: [1_000, 1_000_000],
                claims_per_depth: 1_000,
                memory_submits: 50,
                pipeline_runs: 10,
                console_events: 1_000_000,
                console_requests: 200,
            }
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "target met" } else { "target missed" }
}

/// Nearest-rank percentile of sorted samples.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A JSON-RPC response, only as far as the benchmark checks it.
#[derive(Deserialize)]
struct Response {
    id: Option<u64>,
    result: Option<ResponseResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ResponseResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

impl Response {
    fn parse(line: &str) -> Response {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON-RPC line ({e}): {line}"))
    }

    /// Panics unless this is a successful answer (and, for a tool call, not `isError`).
    fn expect_ok(&self, line: &str) {
        assert!(self.error.is_none(), "error response: {line}");
        let result = self
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("no result: {line}"));
        assert!(result.is_error != Some(true), "tool error: {line}");
    }
}

/// One coordinator process with raw JSON-RPC lines over its pipes.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: String,
}

/// The coordinator on `data_dir`, logging errors only, with none of this process's
/// `MCP_COORDINATOR_*` settings.
fn coordinator_command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MCP_COORDINATOR_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--log-level", "error"]);
    cmd
}

impl Server {
    fn spawn(data_dir: &Path) -> Server {
        Server::spawn_with(data_dir, None)
    }

    /// The coordinator on `data_dir`, with `config` if given.
    fn spawn_with(data_dir: &Path, config: Option<&Path>) -> Server {
        let mut cmd = coordinator_command(data_dir);
        cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        Server::start(cmd)
    }

    /// Any MCP server over stdio (its stderr discarded).
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::with_capacity(64 * 1024, child.stdout.take().unwrap());
        Server {
            child,
            stdin,
            stdout,
            line: String::with_capacity(8 * 1024),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line (which must end in `\n`) in a single write.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).expect("write to server");
    }

    /// Reads one line; panics when the server closed stdout.
    fn recv(&mut self) -> &str {
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).expect("read server");
        assert!(n > 0, "server closed stdout");
        &self.line
    }

    /// Handshake of a legacy-era client: `initialize`, then `notifications/initialized`.
    fn initialize(&mut self) {
        self.send(&format!("{INITIALIZE}\n"));
        let line = self.recv().to_string();
        Response::parse(&line).expect_ok(&line);
        self.send(&format!("{INITIALIZED}\n"));
    }

    /// Closes stdin (the client leaves) and waits for the process to exit.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for server");
        assert!(status.success(), "server exited with {status}");
    }
}

fn status_call(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"coordinator_status","arguments":{{}}}}}}"#
    ) + "\n"
}

/// `VmRSS` and `VmHWM` of a process, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User and system CPU time of a process, in clock ticks (`/proc/<pid>/stat` fields 14, 15).
fn cpu_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// Context switches (voluntary plus involuntary) summed over all threads of a process, and the
/// number of threads.
fn context_switches(pid: u32) -> (u64, usize) {
    let mut total = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(task.unwrap().path().join("status")) else {
            continue;
        };
        threads += 1;
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    (total, threads)
}

/// Bytes this process has passed to `write`-like and `read`-like calls (`/proc/self/io` wchar
/// and rchar), page cache hits included.
fn io_chars() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("wchar:"), field("rchar:"))
}

/// Kernel clock ticks per second, as `/proc/<pid>/stat` counts CPU time.
const TICKS_PER_SECOND: f64 = 100.0;

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One cold start: spawn, send `request`, read the answer. Returns the time to the answer and
/// the time to the process's exit after stdin is closed.
fn cold_start(data_dir: &Path, request: &str) -> (Duration, Duration) {
    let request = format!("{request}\n");
    let started = Instant::now();
    let mut server = Server::spawn(data_dir);
    server.send(&request);
    let line = server.recv();
    let answered = started.elapsed();
    let line = line.to_string();
    Response::parse(&line).expect_ok(&line);
    server.finish();
    (answered, started.elapsed())
}

fn bench_cold_start(counts: &Counts, data_dir: &Path) {
    println!("\n== 1. Cold start (spawn -> first response line) ==");
    // Warm the data directory: the first run creates the signing key and the database.
    cold_start(data_dir, INITIALIZE);
    println!(
        "   data dir created once and warmed by one run (key + database exist); each run is a \
         new process on that steady-state data dir"
    );
    for (label, request) in [("initialize", INITIALIZE), ("server/discover", DISCOVER)] {
        let mut answered = Vec::with_capacity(counts.cold_runs);
        let mut exited = Vec::with_capacity(counts.cold_runs);
        for _ in 0..counts.cold_runs {
            let (a, e) = cold_start(data_dir, request);
            answered.push(a);
            exited.push(e);
        }
        answered.sort();
        exited.sort();
        let median = percentile(&answered, 50.0);
        println!(
            "cold start to {label:<16} median {:7.2} ms, p90 {:7.2} ms, min {:6.2} ms, max {:6.2} ms \
             over {} runs   [target median < 10 ms: {}]",
            ms(median),
            ms(percentile(&answered, 90.0)),
            ms(answered[0]),
            ms(answered[answered.len() - 1]),
            counts.cold_runs,
            verdict(median < Duration::from_millis(10)),
        );
        println!(
            "   (info) spawn -> process exit after closing stdin: median {:.2} ms, p90 {:.2} ms",
            ms(percentile(&exited, 50.0)),
            ms(percentile(&exited, 90.0)),
        );
    }
}

/// The tokens a client pays before the user says a word: `tools/list` with the default
/// toolsets and with every toolset, in bytes of the JSON-RPC line and tools.
fn bench_tool_list(data_dir: &Path) {
    println!("\n== 1b. tools/list size (legacy session) ==");
    for (label, toolsets, max_tools, max_bytes) in [
        ("default toolsets", None, Some(20), 40_000),
        ("--toolsets all", Some("all"), None, 100_000),
    ] {
        let mut cmd = coordinator_command(data_dir);
        if let Some(t) = toolsets {
            cmd.args(["--toolsets", t]);
        }
        let mut server = Server::start(cmd);
        server.initialize();
        server.send("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n");
        let line = server.recv().to_string();
        let tools = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["result"]["tools"].as_array().map(Vec::len))
            .unwrap_or(0);
        let met = line.len() <= max_bytes && max_tools.is_none_or(|m| tools <= m);
        println!(
            "tools/list, {label:<16} {tools:3} tools, {:7} bytes (~{} tokens)   [target{} <= {max_bytes} bytes: {}]",
            line.len(),
            line.len() / 4,
            max_tools
                .map(|m| format!(" <= {m} tools,"))
                .unwrap_or_default(),
            verdict(met),
        );
        server.finish();
    }
}

fn bench_status(counts: &Counts, data_dir: &Path) {
    println!("\n== 2. coordinator_status round trip (one process, legacy session) ==");
    let mut server = Server::spawn(data_dir);
    server.initialize();
    let mut next_id = 2u64;

    for _ in 0..counts.status_warmup {
        let id = next_id;
        next_id += 1;
        server.send(&status_call(id));
        let line = server.recv().to_string();
        Response::parse(&line).expect_ok(&line);
    }

    let ticks_before = cpu_ticks(server.pid());
    let (switches_before, _) = context_switches(server.pid());
    let mut latencies = Vec::with_capacity(counts.status_sequential as usize);
    let mut response_bytes = 0usize;
    let sequential_started = Instant::now();
    for _ in 0..counts.status_sequential {
        let id = next_id;
        next_id += 1;
        let request = status_call(id);
        let started = Instant::now();
        server.send(&request);
        let line = server.recv();
        latencies.push(started.elapsed());
        response_bytes = line.len();
        let line = line.to_string();
        let response = Response::parse(&line);
        response.expect_ok(&line);
        assert_eq!(response.id, Some(id), "out-of-order answer: {line}");
    }
    let sequential_wall = sequential_started.elapsed();
    let server_cpu = (cpu_ticks(server.pid()) - ticks_before) as f64 / TICKS_PER_SECOND;
    let (switches_after, threads) = context_switches(server.pid());
    latencies.sort();
    let p50 = percentile(&latencies, 50.0);
    println!(
        "status sequential (1 in flight): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs \
         over {} calls (after {} warm-up calls)   [target p50 < 200 µs: {}]",
        us(p50),
        us(percentile(&latencies, 90.0)),
        us(percentile(&latencies, 99.0)),
        us(latencies[latencies.len() - 1]),
        counts.status_sequential,
        counts.status_warmup,
        verdict(p50 < Duration::from_micros(200)),
    );
    println!(
        "   (info) each call's audit event is written by the audit writer in batches, after \
         the answer (its CPU is in the server CPU below); response \
         line {response_bytes} bytes; server CPU {:.0} µs per call (user+sys, 10 ms tick \
         resolution); {:.0} calls/s sequential",
        server_cpu * 1e6 / counts.status_sequential as f64,
        counts.status_sequential as f64 / sequential_wall.as_secs_f64(),
    );
    println!(
        "   (info) server context switches: {:.1} per call, summed over its {threads} threads",
        (switches_after - switches_before) as f64 / counts.status_sequential as f64,
    );

    // The floor under that: `ping` goes through the same transport and runtime but runs no
    // tool, touches no database and writes no audit event.
    let (switches_before, _) = context_switches(server.pid());
    let mut pings = Vec::with_capacity(counts.status_sequential as usize);
    for _ in 0..counts.status_sequential {
        let id = next_id;
        next_id += 1;
        let request = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#) + "\n";
        let started = Instant::now();
        server.send(&request);
        let line = server.recv();
        pings.push(started.elapsed());
        let line = line.to_string();
        let response = Response::parse(&line);
        assert!(
            response.error.is_none() && response.id == Some(id),
            "bad ping answer: {line}"
        );
    }
    let (switches_after, _) = context_switches(server.pid());
    pings.sort();
    println!(
        "   (info) ping (no tool, no database) for comparison: p50 {:.0} µs, p90 {:.0} µs over {} \
         calls; {:.1} context switches per ping",
        us(percentile(&pings, 50.0)),
        us(percentile(&pings, 90.0)),
        counts.status_sequential,
        (switches_after - switches_before) as f64 / counts.status_sequential as f64,
    );

    // Throughput: keep `in_flight` requests outstanding, matching answers by id.
    let total = counts.status_throughput;
    let mut outstanding: HashSet<u64> = HashSet::new();
    let requests: Vec<String> = (next_id..next_id + total).map(status_call).collect();
    let ticks_before = cpu_ticks(server.pid());
    let started = Instant::now();
    let mut sent = 0usize;
    while (sent as u64) < counts.in_flight.min(total) {
        server.send(&requests[sent]);
        outstanding.insert(next_id + sent as u64);
        sent += 1;
    }
    let mut done = 0u64;
    while done < total {
        let line = server.recv();
        let response = Response::parse(line);
        if response.error.is_some()
            || response
                .result
                .as_ref()
                .is_none_or(|r| r.is_error == Some(true))
        {
            panic!("bad answer: {line}");
        }
        let id = response.id.expect("answer without id");
        assert!(outstanding.remove(&id), "unexpected id {id}");
        done += 1;
        if sent < requests.len() {
            server.send(&requests[sent]);
            outstanding.insert(next_id + sent as u64);
            sent += 1;
        }
    }
    let elapsed = started.elapsed();
    let server_cpu = (cpu_ticks(server.pid()) - ticks_before) as f64 / TICKS_PER_SECOND;
    println!(
        "status throughput ({} in flight): {:.0} calls/s over {} calls in {:.2} s",
        counts.in_flight,
        total as f64 / elapsed.as_secs_f64(),
        total,
        elapsed.as_secs_f64(),
    );
    println!(
        "   (info) server CPU {:.0} µs per call; server CPU use {:.0}% of one core",
        server_cpu * 1e6 / total as f64,
        server_cpu * 100.0 / elapsed.as_secs_f64(),
    );
    let (rss, hwm) = memory_kb(server.pid());
    println!(
        "   (info) memory after {} calls: VmRSS {:.1} MB, VmHWM {:.1} MB",
        counts.status_warmup + counts.status_sequential + total,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    server.finish();
}

/// A fresh server after `initialize` and one `coordinator_status`, left idle for 300 ms.
fn idle_server(data_dir: &Path) -> Server {
    let mut server = Server::spawn(data_dir);
    server.initialize();
    server.send(&status_call(2));
    let line = server.recv().to_string();
    Response::parse(&line).expect_ok(&line);
    std::thread::sleep(Duration::from_millis(300));
    server
}

fn bench_idle_memory(data_dir: &Path) {
    println!("\n== 3. Idle memory (fresh process: initialize + one coordinator_status) ==");
    let server = idle_server(data_dir);
    let (rss, hwm) = memory_kb(server.pid());
    let rss_mb = rss as f64 / 1024.0;
    println!(
        "idle RSS: VmRSS {rss_mb:.1} MB, VmHWM {:.1} MB (1 process, read 300 ms after the call)   \
         [target VmRSS < 15 MB: {}]",
        hwm as f64 / 1024.0,
        verdict(rss_mb < 15.0),
    );
    server.finish();
}

/// A burst of the largest payloads the default `[limits]` allow, then the largest listings:
/// peak and settled memory of the process, beside a stated bound (not a timing).
fn bench_memory_burst(counts: &Counts, data_dir: &Path) {
    println!(
        "\n== 3b. Memory after a burst of the largest payloads (defaults: 1 MiB per payload, \
         8 MiB per result) =="
    );
    let mut server = idle_server(data_dir);
    let (rss0, _) = memory_kb(server.pid());
    let payload = mcp_coordinator::limits::SizeLimits::default().max_payload();
    // `{"kind":"big","params":{"blob":"…"}}`: the blob fills `params` to the limit.
    let blob = "b".repeat(payload - r#"{"blob":""}"#.len());
    let submits = counts.memory_submits;
    let mut id = 10;
    for _ in 0..submits {
        id += 1;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "task_submit", "arguments": {"kind": "big", "params": {"blob": blob}}}});
        server.send(&format!("{call}\n"));
        let line = server.recv().to_string();
        Response::parse(&line).expect_ok(&line);
    }
    let mut longest = 0;
    for (tool, args) in [
        ("audit_query", json!({"limit": 500})),
        ("task_list", json!({"limit": 500})),
        ("audit_query", json!({"limit": 500})),
        ("task_list", json!({"limit": 500})),
    ] {
        id += 1;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": args}});
        server.send(&format!("{call}\n"));
        let line = server.recv().to_string();
        Response::parse(&line).expect_ok(&line);
        longest = longest.max(line.len());
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = memory_kb(server.pid());
    let (rss_mb, hwm_mb) = (rss as f64 / 1024.0, hwm as f64 / 1024.0);
    println!(
        "{submits} task_submits of {:.1} MiB params, then audit_query and task_list at limit 500 \
         (twice): longest result line {:.2} MiB   [bound 8 MiB: {}]",
        payload as f64 / 1048576.0,
        longest as f64 / 1048576.0,
        verdict(longest <= 8 << 20),
    );
    let grown = rss_mb - rss0 as f64 / 1024.0;
    println!(
        "peak VmHWM {hwm_mb:.1} MB   [bound < 200 MB: {}]; VmRSS 500 ms after the last call \
         {rss_mb:.1} MB, {grown:.1} MB over idle ({:.1} MB)   [bound: grown < 32 MB: {}]",
        verdict(hwm_mb < 200.0),
        rss0 as f64 / 1024.0,
        verdict(grown < 32.0),
    );
    server.finish();
}

fn event() -> NewEvent {
    NewEvent {
        actor: Actor::new(ActorKind::Client, "bench/1"),
        action: Action::ToolCall,
        subject: "coordinator_status".into(),
        outcome: Outcome::Ok,
        // Shaped like the detail the server records for a tool call.
        detail: json!({
            "arguments": {},
            "duration_us": 57,
            "protocol_version": "2025-11-25",
            "era": "legacy",
            "session": "0b6c2f0e-4f55-4b8e-9d0b-3f1c2a7e9d10",
            "error": null,
        }),
        critical: false,
    }
}

/// The audit log on a database file, checkpointed in the background as `serve` does.
fn audit_log(path: &Path) -> AuditLog {
    let log = audit_log_alone(path);
    log.store()
        .start_checkpointer()
        .expect("start checkpointer");
    log
}

/// The audit log on a database file, without the background checkpointer: for the
/// diagnostics that measure the WAL itself.
fn audit_log_alone(path: &Path) -> AuditLog {
    let store = Store::open(&Location::File(path.to_path_buf())).expect("open store");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    AuditLog::new(store, Arc::new(AuditSigner::from_key(key)))
}

fn append_rate(label: &str, events: usize, elapsed: Duration, target: bool) {
    let rate = events as f64 / elapsed.as_secs_f64();
    let verdict = if target {
        format!(
            "   [target >= 50,000 events/s in batches: {}]",
            verdict(rate >= 50_000.0)
        )
    } else {
        String::new()
    };
    println!(
        "audit append, {label:<22} {rate:>9.0} events/s ({events} events in {:.2} s){verdict}",
        elapsed.as_secs_f64(),
    );
}

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}

fn bench_audit(counts: &Counts, dir: &Path) {
    println!("\n== 4. Audit appends (library, SQLite file in WAL mode, synchronous=NORMAL) ==");

    // Single events and batches of 100 share one database; batches of 1,000 get their own, so
    // the verified chain is exactly that many events long.
    let small = audit_log(&dir.join("small.db"));
    let singles: Vec<NewEvent> = (0..counts.single_events).map(|_| event()).collect();
    let started = Instant::now();
    for e in singles {
        small.record(e).expect("record");
    }
    append_rate(
        "single (record):",
        counts.single_events,
        started.elapsed(),
        false,
    );

    let batch: Vec<NewEvent> = (0..100).map(|_| event()).collect();
    let started = Instant::now();
    for _ in 0..counts.batch_100_events / 100 {
        small.record_batch(&batch).expect("record_batch");
    }
    append_rate(
        "batches of 100:",
        counts.batch_100_events,
        started.elapsed(),
        true,
    );
    drop(small);

    let path = dir.join("big.db");
    let log = audit_log(&path);
    let batch: Vec<NewEvent> = (0..1_000).map(|_| event()).collect();
    let batches = counts.batch_1000_events / 1_000;
    let tenth = (batches / 10).max(1);
    let mut tenths = Vec::with_capacity(10);
    let cpu_before = cpu_split(std::process::id());
    let io_before = io_chars();
    let started = Instant::now();
    let mut tenth_started = started;
    for i in 1..=batches {
        log.record_batch(&batch).expect("record_batch");
        if i % tenth == 0 {
            tenths.push(tenth_started.elapsed());
            tenth_started = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_split(std::process::id());
    let io_after = io_chars();
    append_rate("batches of 1,000:", counts.batch_1000_events, elapsed, true);
    let tenth_rate = |d: &Duration| (tenth * 1_000) as f64 / d.as_secs_f64();
    println!(
        "   (info) rate per tenth of the run, events/s: {}",
        tenths
            .iter()
            .map(|d| format!("{:.0}", tenth_rate(d)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    println!(
        "   (info) CPU of this process during those appends: user {:.1} s, system {:.1} s, \
         wall {:.1} s",
        (cpu_after.0 - cpu_before.0) as f64 / TICKS_PER_SECOND,
        (cpu_after.1 - cpu_before.1) as f64 / TICKS_PER_SECOND,
        elapsed.as_secs_f64(),
    );
    let per_event_kb = |after: u64, before: u64| {
        (after - before) as f64 / counts.batch_1000_events as f64 / 1024.0
    };
    println!(
        "   (info) I/O of this process during those appends (/proc/self/io): written {:.1} KB \
         per event, read {:.1} KB per event",
        per_event_kb(io_after.0, io_before.0),
        per_event_kb(io_after.1, io_before.1),
    );
    log.sign_head().expect("sign head");
    println!(
        "   (info) database {:.0} MB + WAL {:.0} MB after {} events; head signed once at the end",
        file_mb(&path),
        file_mb(&dir.join("big.db-wal")),
        counts.batch_1000_events,
    );

    println!("\n== 5. audit_verify (AuditLog::verify on that chain, page cache warm) ==");
    let started = Instant::now();
    let report = log.verify().expect("verify");
    let elapsed = started.elapsed();
    let n = report.events_checked;
    println!(
        "audit verify: {:.2} s for {n} events ({:.0} events/s); report ok = {}, problems = {}, \
         valid signatures = {}   [target {} events < 2 s: {}]",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        report.ok,
        report.problem_count,
        report.signatures.valid,
        counts.batch_1000_events,
        verdict(report.ok && elapsed < Duration::from_secs(2)),
    );
    if !report.ok {
        println!("   REPORT NOT OK: {:?}", report.first_bad_reason);
    }
    if (n as usize) < 1_000_000 {
        println!(
            "   (quick run: the 2 s target is for 1,000,000 events; scaled, this is {:.2} s)",
            elapsed.as_secs_f64() * 1_000_000.0 / n.max(1) as f64
        );
    }
}

/// Capabilities every benchmark agent has (sorted, as the service stores them).
const AGENT_CAPS: [&str; 3] = ["docker", "linux", "python"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn submitter() -> Actor {
    Actor::new(ActorKind::Client, "bench/1")
}

/// Priority and capabilities of the `i`-th task of a fixed mix. Priorities: 10% urgent, 20%
/// high, 50% normal, 20% low. Capabilities: none (10%), `linux` (40%), `docker`+`linux` (30%)
/// or `python` (20%), all covered by [`AGENT_CAPS`]. With `foreign`, 5% need `gpu`+`linux`
/// instead, which no claiming agent has: those stay queued, and claims step over them in index
/// order.
fn mix(i: usize, foreign: bool) -> (Priority, &'static [&'static str]) {
    // A multiplicative hash spreads consecutive indexes over the mix.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    let priority = match h % 10 {
        0 => Priority::Urgent,
        1 | 2 => Priority::High,
        3..=7 => Priority::Normal,
        _ => Priority::Low,
    };
    let caps: &'static [&'static str] = match (h / 10) % 20 {
        0 if foreign => &["gpu", "linux"],
        0 | 1 => &[],
        2..=9 => &["linux"],
        10..=15 => &["docker", "linux"],
        _ => &["python"],
    };
    (priority, caps)
}

fn task_params(i: usize) -> serde_json::Value {
    json!({"command": "true", "host": format!("host-{}", i % 64), "n": i})
}

/// The `i`-th task of the mix, as submitted through the service.
fn mixed_task(i: usize, foreign: bool) -> NewTask {
    let (priority, caps) = mix(i, foreign);
    NewTask {
        kind: "shell.run".into(),
        params: task_params(i),
        capabilities: strings(caps),
        target_agent_id: None,
        priority,
        timeout_seconds: None,
        max_retries: None,
        idempotency_key: None,
        not_before_ms: None,
    }
}

/// The `i`-th task of the mix as the row `submit` would store: `template` (a row `submit`
/// stored) with this task's id, params, capabilities, priority and times.
fn mixed_row(i: usize, template: &task_sql::TaskRow, now: i64) -> task_sql::TaskRow {
    let (priority, caps) = mix(i, true);
    task_sql::TaskRow {
        id: format!("tsk_{}", uuid::Uuid::new_v4().simple()),
        params: task_params(i).to_string(),
        capabilities: serde_json::to_string(caps).expect("caps json"),
        // The ranks the schema stores: 3 urgent .. 0 low.
        priority: match priority {
            Priority::Urgent => 3,
            Priority::High => 2,
            Priority::Normal => 1,
            Priority::Low => 0,
        },
        not_before_ms: now,
        created_ms: now,
        updated_ms: now,
        ..template.clone()
    }
}

/// The task queue on a fresh database file, with the token keys it checks agents against.
fn task_service(path: &Path) -> (TaskService, Arc<TokenKeys>) {
    task_service_on(audit_log(path))
}

/// The task queue on the given audit log's database.
fn task_service_on(audit: AuditLog) -> (TaskService, Arc<TokenKeys>) {
    let keys = Arc::new(TokenKeys::from_secret(&[9u8; 32]));
    let agents = AgentService::new(audit, AgentsConfig::default(), keys.clone());
    (TaskService::new(agents, TasksConfig::default()), keys)
}

/// Registers a worker with [`AGENT_CAPS`] and returns its token.
fn register_agent(tasks: &TaskService, name: &str) -> String {
    tasks
        .agents()
        .register(NewAgent {
            name: name.into(),
            agent_type: AgentType::Worker,
            capabilities: strings(&AGENT_CAPS),
            endpoints: Default::default(),
            resources: Resources::default(),
            metadata: Default::default(),
            token: None,
            by: mcp_coordinator::audit::Actor::new(
                mcp_coordinator::audit::ActorKind::Client,
                "bench/1",
            ),
        })
        .expect("register agent")
        .token
}

fn completed() -> Report {
    Report::Result(json!({"exit_code": 0, "stdout": ""}))
}

/// Claims one task; `None` when the queue is empty.
fn claim_one(tasks: &TaskService, token: &str) -> Option<Task> {
    match tasks.claim(token).expect("claim") {
        Ok(task) => Some(task),
        Err(NoTask::QueueEmpty) => None,
        Err(other) => panic!("claim refused: {other:?}"),
    }
}

/// Time spent claiming and completing, and how many tasks.
#[derive(Default)]
struct Drained {
    tasks: usize,
    claiming: Duration,
    completing: Duration,
}

/// Claims and completes tasks until the queue is empty.
fn drain(tasks: &TaskService, token: &str) -> Drained {
    let mut d = Drained::default();
    loop {
        let started = Instant::now();
        let Some(task) = claim_one(tasks, token) else {
            return d;
        };
        let claimed = Instant::now();
        tasks.report(token, &task.id, completed()).expect("report");
        d.claiming += claimed - started;
        d.completing += claimed.elapsed();
        d.tasks += 1;
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Mean time of `f` over `runs` calls.
fn mean_of(runs: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..runs {
        f();
    }
    started.elapsed() / runs
}

/// CPU seconds (user, system) of this process since `before`.
fn cpu_since(before: (u64, u64)) -> (f64, f64) {
    let after = cpu_split(std::process::id());
    (
        (after.0 - before.0) as f64 / TICKS_PER_SECOND,
        (after.1 - before.1) as f64 / TICKS_PER_SECOND,
    )
}

/// Turns off SQLite's automatic WAL checkpoints on the store's connection: a diagnostic that
/// shows what the checkpoints (copying WAL pages back, with an fsync) cost. The service never
/// does this.
fn without_autocheckpoint(tasks: &TaskService) {
    tasks
        .agents()
        .audit()
        .store()
        .set_wal_autocheckpoint(0)
        .expect("wal_autocheckpoint");
}

/// One throughput run: submit `n` tasks, then `agents` agents (one thread each, sharing the
/// one `Store` handle) claim and complete them all. Returns the end-to-end rate.
fn task_throughput(n: usize, agents: usize, path: &Path, autocheckpoint: bool) -> f64 {
    let (tasks, _) = if autocheckpoint {
        task_service(path)
    } else {
        // No checkpoint at all, not even in the background: the upper bound.
        let (tasks, keys) = task_service_on(audit_log_alone(path));
        without_autocheckpoint(&tasks);
        (tasks, keys)
    };
    let tokens: Vec<String> = (0..agents)
        .map(|i| register_agent(&tasks, &format!("worker-{i}")))
        .collect();
    let by = submitter();

    let cpu_before = cpu_split(std::process::id());
    let started = Instant::now();
    for i in 0..n {
        tasks.submit(mixed_task(i, false), &by).expect("submit");
    }
    let submitting = started.elapsed();
    let submit_cpu = cpu_since(cpu_before);

    let cpu_before = cpu_split(std::process::id());
    let started = Instant::now();
    let drained: Vec<Drained> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .map(|token| {
                let tasks = tasks.clone();
                s.spawn(move || drain(&tasks, token))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("claiming thread"))
            .collect()
    });
    let claiming = started.elapsed();
    let claim_cpu = cpu_since(cpu_before);

    let done: usize = drained.iter().map(|d| d.tasks).sum();
    let stats = tasks.stats().expect("stats");
    let completed = stats.by_status.get("completed").copied().unwrap_or(0);
    assert_eq!(done, n, "claimed and completed {done} of {n} tasks");
    assert_eq!(
        completed, n as i64,
        "stats count {completed} completed of {n}"
    );

    let end_to_end = per_second(n, submitting + claiming);
    let label = match (agents, autocheckpoint) {
        (1, true) => "1 agent:".to_string(),
        (1, false) => "1 agent, no checkpoints:".to_string(),
        _ => format!("{agents} agents ({agents} threads):"),
    };
    let target = if autocheckpoint {
        format!(
            "[target >= 4,000 tasks/s end to end: {}]",
            verdict(end_to_end >= 4_000.0)
        )
    } else {
        "[diagnostic: WAL autocheckpoint off, which the service never does]".to_string()
    };
    println!(
        "{label:<24} submit {:>6.0} tasks/s, claim+complete {:>6.0} tasks/s, end to end {:>6.0} \
         tasks/s ({n} tasks in {:.2} s + {:.2} s)   {target}",
        per_second(n, submitting),
        per_second(n, claiming),
        end_to_end,
        submitting.as_secs_f64(),
        claiming.as_secs_f64(),
    );
    let claim_us: f64 = drained.iter().map(|d| us(d.claiming)).sum::<f64>() / n as f64;
    let complete_us: f64 = drained.iter().map(|d| us(d.completing)).sum::<f64>() / n as f64;
    println!(
        "   (info) per task: submit {:.0} µs, claim {claim_us:.0} µs, complete (report) \
         {complete_us:.0} µs{}; CPU user+sys per task: submit {:.0}+{:.0} µs, claim+complete \
         {:.0}+{:.0} µs",
        us(submitting) / n as f64,
        if agents > 1 {
            ", summed over threads, mutex waits included"
        } else {
            ""
        },
        submit_cpu.0 * 1e6 / n as f64,
        submit_cpu.1 * 1e6 / n as f64,
        claim_cpu.0 * 1e6 / n as f64,
        claim_cpu.1 * 1e6 / n as f64,
    );
    if agents > 1 {
        println!(
            "   (info) tasks per agent: {}",
            drained
                .iter()
                .map(|d| d.tasks.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    end_to_end
}

/// Batched service calls: `submit_many` 100 tasks per transaction, `claim_many` up to 20 per
/// transaction, `report_many` each claimed batch's results in one transaction.
fn task_throughput_batched(n: usize, path: &Path) -> f64 {
    let (tasks, _) = task_service(path);
    let end_to_end = batched_on(&tasks, n, "1 agent, batched:", 8_000);
    println!(
        "   (info) submit_many 100 tasks per transaction, claim_many up to 20 per transaction \
         (task_claim max_tasks), report_many their results in one transaction (task_report \
         reports); one audit event per task and step as before"
    );
    end_to_end
}

/// The batched run on `tasks`' database, printed under `label` beside `target` tasks/s.
fn batched_on(tasks: &TaskService, n: usize, label: &str, target: u32) -> f64 {
    let token = register_agent(tasks, "batch-worker");
    let by = submitter();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = chunk.iter().map(|i| mixed_task(*i, false)).collect();
        tasks.submit_many(batch, &by).expect("submit_many");
    }
    let submitting = started.elapsed();
    let started = Instant::now();
    let mut done = 0;
    while let Ok(batch) = tasks.claim_many(&token, None, 20).expect("claim_many") {
        let reports = batch.into_iter().map(|t| (t.id, completed())).collect();
        for outcome in tasks.report_many(&token, reports).expect("report_many") {
            outcome.expect("report");
            done += 1;
        }
    }
    let claiming = started.elapsed();
    assert_eq!(done, n, "claimed and completed {done} of {n} tasks");
    let end_to_end = per_second(n, submitting + claiming);
    println!(
        "{:<24} submit {:>6.0} tasks/s, claim+complete {:>6.0} tasks/s, end to end {:>6.0} \
         tasks/s ({n} tasks in {:.2} s + {:.2} s)   [target >= {} tasks/s end to end: {}]",
        label,
        per_second(n, submitting),
        per_second(n, claiming),
        end_to_end,
        submitting.as_secs_f64(),
        claiming.as_secs_f64(),
        thousands(target),
        verdict(end_to_end >= f64::from(target)),
    );
    end_to_end
}

/// 8000 as "8,000".
fn thousands(n: u32) -> String {
    match n {
        0..1_000 => n.to_string(),
        _ => format!("{},{:03}", n / 1_000, n % 1_000),
    }
}

/// Mean of sorted samples, and the share of their total spent in samples over 1 ms.
fn mean_and_tail(sorted: &[Duration]) -> (Duration, f64) {
    let total: Duration = sorted.iter().sum();
    let slow: Duration = sorted
        .iter()
        .filter(|d| **d > Duration::from_millis(1))
        .sum();
    (
        total / sorted.len() as u32,
        slow.as_secs_f64() / total.as_secs_f64(),
    )
}

/// What a task's three transactions are made of, timed piece by piece on a fresh database with
/// `depth` queued tasks of the mix and one agent.
fn claim_breakdown(path: &Path, depth: usize) {
    let (tasks, keys) = task_service(path);
    let token = register_agent(&tasks, "breakdown");
    let by = submitter();
    let mut submits: Vec<Duration> = (0..depth)
        .map(|i| {
            let started = Instant::now();
            tasks.submit(mixed_task(i, true), &by).expect("submit");
            started.elapsed()
        })
        .collect();
    submits.sort();
    let store = tasks.agents().audit().store().clone();
    let agent_id = keys.verify(&token).expect("verify").sub;
    let caps = serde_json::to_string(&AGENT_CAPS).expect("caps json");
    let runs = 2_000;

    // The reads of a claim, each alone, then together inside one write transaction.
    let (authenticate, targeted, listing, page_32, page_1) = store.read(|conn| {
        let now = i64::MAX;
        (
            mean_of(runs, || {
                tasks
                    .agents()
                    .authenticate(conn, &token)
                    .expect("authenticate");
            }),
            mean_of(runs, || {
                task_sql::targeted_candidates(conn, &agent_id, &caps, now, 1).expect("targeted");
            }),
            mean_of(runs, || {
                agent_sql::list_registered(conn).expect("list_registered");
            }),
            mean_of(runs, || {
                let page = task_sql::open_candidates(conn, &caps, now, None, 32).expect("query");
                assert_eq!(page.len(), 32);
            }),
            mean_of(runs, || {
                task_sql::open_candidates(conn, &caps, now, None, 1).expect("query");
            }),
        )
    });
    let verify = mean_of(runs, || {
        keys.verify(&token).expect("verify");
    });
    let reads_in_tx = mean_of(runs, || {
        store
            .write(|tx| {
                tasks
                    .agents()
                    .authenticate(tx, &token)
                    .expect("authenticate");
                task_sql::targeted_candidates(tx, &agent_id, &caps, i64::MAX, 1)?;
                agent_sql::list_registered(tx)?;
                task_sql::open_candidates(tx, &caps, i64::MAX, None, 32)?;
                Ok::<_, StoreError>(())
            })
            .expect("reads");
    });
    let empty_tx = mean_of(runs, || {
        store.write(|_| Ok::<_, StoreError>(())).expect("empty tx");
    });
    let audit = tasks.agents().audit().clone();
    let append_1 = mean_of(runs, || {
        audit.record(event()).expect("record");
    });
    let append_3 = mean_of(runs, || {
        store
            .write(|tx| {
                for _ in 0..3 {
                    audit.append_in(tx, &event())?;
                }
                Ok::<_, StoreError>(())
            })
            .expect("append_in");
    });

    // Whole claims and reports on the same queue, with the bytes they hand to write().
    let claims = 1_000;
    let mut claiming = Vec::with_capacity(claims);
    let mut completing = Vec::with_capacity(claims);
    let io_before = io_chars();
    for _ in 0..claims {
        let started = Instant::now();
        let task = claim_one(&tasks, &token).expect("queue ran dry");
        let claimed = Instant::now();
        tasks.report(&token, &task.id, completed()).expect("report");
        claiming.push(claimed - started);
        completing.push(claimed.elapsed());
    }
    let io_after = io_chars();
    claiming.sort();
    completing.sort();
    let (submit_p50, claim_p50, complete_p50) = (
        percentile(&submits, 50.0),
        percentile(&claiming, 50.0),
        percentile(&completing, 50.0),
    );
    let (submit_mean, submit_tail) = mean_and_tail(&submits);
    let (claim_mean, claim_tail) = mean_and_tail(&claiming);
    let (complete_mean, complete_tail) = mean_and_tail(&completing);

    println!(
        "   (info) breakdown on a fresh database with {depth} queued tasks of the mix (gpu 5% \
         included), 1 agent; pieces are means of {runs} runs:"
    );
    println!(
        "      per call p50 / mean / share of time in calls over 1 ms: submit {:.0} / {:.0} µs / \
         {:.0}%, claim {:.0} / {:.0} µs / {:.0}%, complete {:.0} / {:.0} µs / {:.0}%; at the p50s \
         alone a task costs {:.0} µs = {:.0} tasks/s",
        us(submit_p50),
        us(submit_mean),
        submit_tail * 100.0,
        us(claim_p50),
        us(claim_mean),
        claim_tail * 100.0,
        us(complete_p50),
        us(complete_mean),
        complete_tail * 100.0,
        us(submit_p50 + claim_p50 + complete_p50),
        1.0 / (submit_p50 + claim_p50 + complete_p50).as_secs_f64(),
    );
    println!(
        "      claim reads: authenticate {:.1} µs (HS256 token verify {:.1} of it); \
         targeted_candidates {:.1} µs; list_registered {:.1} µs; open_candidates (32 rows, \
         capability check in SQL) {:.1} µs, with 1 row {:.1} µs; all four inside one BEGIN \
         IMMEDIATE..COMMIT {:.0} µs, so the claim p50 leaves {:.0} µs for the lease update, \
         audit append, re-read and commit",
        us(authenticate),
        us(verify),
        us(targeted),
        us(listing),
        us(page_32),
        us(page_1),
        us(reads_in_tx),
        us(claim_p50.saturating_sub(reads_in_tx)),
    );
    println!(
        "      empty BEGIN IMMEDIATE+COMMIT {:.1} µs; one audit event in its own transaction \
         {:.1} µs, three in one {:.1} µs (~{:.0} µs per extra append); claim+complete hand \
         {:.1} KB per task to write() (WAL frames: whole 4 KB pages of the table, its indexes \
         and the audit chain)",
        us(empty_tx),
        us(append_1),
        us(append_3),
        us(append_3.saturating_sub(append_1)) / 2.0,
        (io_after.0 - io_before.0) as f64 / claims as f64 / 1024.0,
    );
}

/// WAL appended by each step of a task (submit, claim, report), read off the size of the
/// `-wal` file with automatic checkpoints off, on a queue warmed by `warm` tasks; and by one
/// audit event alone in its own transaction, for the audit log's share.
fn wal_per_step(path: &Path, warm: usize) {
    let (tasks, _) = task_service_on(audit_log_alone(path));
    let token = register_agent(&tasks, "wal");
    let by = submitter();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let step = |i: usize, sizes: &mut [u64; 3]| {
        let s0 = size();
        tasks.submit(mixed_task(i, false), &by).expect("submit");
        let s1 = size();
        let task = claim_one(&tasks, &token).expect("queue ran dry");
        let s2 = size();
        tasks.report(&token, &task.id, completed()).expect("report");
        let s3 = size();
        sizes[0] += s1 - s0;
        sizes[1] += s2 - s1;
        sizes[2] += s3 - s2;
    };
    let mut ignored = [0; 3];
    for i in 0..warm {
        step(i, &mut ignored);
    }
    let store = tasks.agents().audit().store().clone();
    let page = store.checkpoint_truncate().expect("checkpoint");
    store.set_wal_autocheckpoint(0).expect("wal_autocheckpoint");
    let n = 1_000;
    let mut sizes = [0; 3];
    for i in 0..n {
        step(warm + i, &mut sizes);
    }
    let audit = tasks.agents().audit().clone();
    let before = size();
    for _ in 0..n {
        let mut e = event();
        e.subject = format!("tsk_{}", uuid::Uuid::new_v4().simple());
        audit.record(e).expect("record");
    }
    let audit_bytes = size() - before;
    let frame = (page + 24) as f64;
    let total: u64 = sizes.iter().sum();
    println!(
        "   (info) WAL per task after {warm} tasks ({page}-byte pages, checkpoints off): {:.1} KB \
         = {:.1} frames (submit {:.1}, claim {:.1}, report {:.1}); one audit event alone in its \
         transaction {:.1} frames",
        total as f64 / n as f64 / 1024.0,
        total as f64 / n as f64 / frame,
        sizes[0] as f64 / n as f64 / frame,
        sizes[1] as f64 / n as f64 / frame,
        sizes[2] as f64 / n as f64 / frame,
        audit_bytes as f64 / n as f64 / frame,
    );
}

fn bench_task_throughput(counts: &Counts, dir: &Path) {
    println!(
        "\n== 6. Task queue throughput (TaskService, SQLite file in WAL mode, \
         synchronous=NORMAL, checkpoints in the background as `serve` runs them) =="
    );
    println!(
        "   submit {n} tasks (one transaction each), then claim + complete them all (one claim \
         and one report transaction each); every step appends its audit event in its \
         transaction",
        n = counts.tasks,
    );
    let one = task_throughput(counts.tasks, 1, &dir.join("throughput-1.db"), true);
    let four = task_throughput(counts.tasks, 4, &dir.join("throughput-4.db"), true);
    task_throughput_batched(counts.tasks, &dir.join("throughput-batched.db"));
    println!(
        "   (info) the 4 threads share one Store handle, which serializes on its mutex: 4 agents \
         run at {:.2}x the rate of 1",
        four / one,
    );
    task_throughput(counts.tasks, 1, &dir.join("throughput-nockpt.db"), false);
    claim_breakdown(&dir.join("breakdown.db"), 2_000);
    wal_per_step(&dir.join("wal.db"), counts.tasks.min(20_000));
}

/// Sorted claim latencies at one queue depth.
struct DepthResult {
    claims: Vec<Duration>,
    claim_complete: Vec<Duration>,
    /// Claims of the diagnostic pass without WAL autocheckpoints.
    claims_no_checkpoint: Vec<Duration>,
}

fn over_1ms(sorted: &[Duration]) -> usize {
    sorted
        .iter()
        .filter(|d| **d > Duration::from_millis(1))
        .count()
}

/// Deepest queue filled through `TaskService::submit`; deeper ones are filled through the store
/// layer, since one transaction per task would take minutes for a million.
const SUBMIT_FILL_MAX: usize = 100_000;

/// Submits tasks 0..`depth` of the mix (with the foreign 5%), one transaction each.
fn fill_by_submit(tasks: &TaskService, depth: usize) {
    let by = submitter();
    for i in 0..depth {
        tasks.submit(mixed_task(i, true), &by).expect("submit");
    }
}

/// Submits task 0 of the mix, then inserts tasks 1..`depth` as rows shaped like it through
/// `store::task::insert`, 10,000 per transaction, without audit events.
fn fill_by_store(tasks: &TaskService, depth: usize) {
    let (first, _) = tasks
        .submit(mixed_task(0, true), &submitter())
        .expect("submit");
    let store = tasks.agents().audit().store();
    let template = store
        .read(|tx| task_sql::get(tx, &first.id))
        .expect("get")
        .expect("submitted row");
    for start in (1..depth).step_by(10_000) {
        store
            .write(|tx| {
                for i in start..(start + 10_000).min(depth) {
                    task_sql::insert(tx, &mixed_row(i, &template, now_ms()))?;
                }
                Ok::<_, StoreError>(())
            })
            .expect("insert batch");
    }
}

fn claims_at_depth(counts: &Counts, depth: usize, path: &Path) -> DepthResult {
    let (tasks, _) = task_service(path);
    let token = register_agent(&tasks, "claimer");
    let by = submitter();
    let started = Instant::now();
    let how = if depth <= SUBMIT_FILL_MAX {
        fill_by_submit(&tasks, depth);
        "TaskService::submit (one transaction and one audit event per task)"
    } else {
        fill_by_store(&tasks, depth);
        "one submit, then store::task::insert of rows shaped like its row, 10,000 per \
         transaction, no audit events (submit, one transaction per task, would take minutes)"
    };
    let filling = started.elapsed();
    println!(
        "queue depth {depth}: filled through {how} in {:.1} s ({:.0} tasks/s)",
        filling.as_secs_f64(),
        per_second(depth, filling),
    );

    // Each claimed task is completed and replaced by a new one, so the depth stays put.
    // Returns the claim latency, the claim+complete latency and the task's priority.
    let cycle = |next: &mut usize| -> (Duration, Duration, Priority) {
        let started = Instant::now();
        let task = claim_one(&tasks, &token).expect("queue ran dry");
        let claimed = started.elapsed();
        tasks.report(&token, &task.id, completed()).expect("report");
        let total = started.elapsed();
        tasks.submit(mixed_task(*next, true), &by).expect("submit");
        *next += 1;
        assert!(
            task.capabilities
                .iter()
                .all(|c| AGENT_CAPS.contains(&c.as_str())),
            "claimed a task the agent cannot run: {:?}",
            task.capabilities,
        );
        (claimed, total, task.priority)
    };
    let mut next = depth;
    let warmup = 20;
    for _ in 0..warmup {
        cycle(&mut next);
    }
    let mut claims = Vec::with_capacity(counts.claims_per_depth);
    let mut claim_complete = Vec::with_capacity(counts.claims_per_depth);
    let mut by_priority = [0usize; 4];
    for _ in 0..counts.claims_per_depth {
        let (claimed, total, priority) = cycle(&mut next);
        claims.push(claimed);
        claim_complete.push(total);
        by_priority[match priority {
            Priority::Urgent => 0,
            Priority::High => 1,
            Priority::Normal => 2,
            Priority::Low => 3,
        }] += 1;
    }
    claims.sort();
    claim_complete.sort();

    let store = tasks.agents().audit().store().clone();
    let caps = serde_json::to_string(&AGENT_CAPS).expect("caps json");
    let query = mean_of(200, || {
        let page = store
            .read(|tx| task_sql::open_candidates(tx, &caps, i64::MAX, None, 32))
            .expect("query");
        assert_eq!(page.len(), 32);
    });
    let started = Instant::now();
    let stats = tasks.stats().expect("stats");
    let stats_time = started.elapsed();
    let queued = stats.by_status.get("queued").copied().unwrap_or(0);

    println!(
        "   claim p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} over 1 ms); \
         claim+complete p50 {:.0} µs, p99 {:.0} µs; over {} claims (after {warmup} warm-up), \
         each followed by a complete and one new submit",
        us(percentile(&claims, 50.0)),
        us(percentile(&claims, 90.0)),
        us(percentile(&claims, 99.0)),
        us(claims[claims.len() - 1]),
        over_1ms(&claims),
        us(percentile(&claim_complete, 50.0)),
        us(percentile(&claim_complete, 99.0)),
        counts.claims_per_depth,
    );
    println!(
        "   (info) claimed: {} urgent, {} high, {} normal, {} low; claim query alone \
         (open_candidates, 32 rows, capability check in SQL) {:.0} µs; queued after: {queued} \
         ({} need gpu, never claimable); stats() {:.1} ms; database {:.0} MB + WAL {:.0} MB",
        by_priority[0],
        by_priority[1],
        by_priority[2],
        by_priority[3],
        us(query),
        (0..next)
            .filter(|&i| mix(i, true).1.contains(&"gpu"))
            .count(),
        ms(stats_time),
        file_mb(path),
        file_mb(&path.with_extension("db-wal")),
    );

    // The same cycle again with SQLite's automatic WAL checkpoints off on the calling
    // connection (the background checkpointer still runs), to see what the tail is made of.
    without_autocheckpoint(&tasks);
    let mut claims_no_checkpoint: Vec<Duration> = (0..counts.claims_per_depth)
        .map(|_| cycle(&mut next).0)
        .collect();
    claims_no_checkpoint.sort();
    println!(
        "   (diagnostic) {} more claims with the caller's WAL autocheckpoint off (the service \
         never does this; the background checkpointer still runs): claim p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} over 1 ms); \
         the WAL grew to {:.0} MB meanwhile",
        counts.claims_per_depth,
        us(percentile(&claims_no_checkpoint, 50.0)),
        us(percentile(&claims_no_checkpoint, 90.0)),
        us(percentile(&claims_no_checkpoint, 99.0)),
        us(claims_no_checkpoint[claims_no_checkpoint.len() - 1]),
        over_1ms(&claims_no_checkpoint),
        file_mb(&path.with_extension("db-wal")),
    );
    DepthResult {
        claims,
        claim_complete,
        claims_no_checkpoint,
    }
}

fn bench_claim_depth(counts: &Counts, dir: &Path) {
    println!("\n== 7. Claim latency against queue depth (TaskService, SQLite file in WAL mode) ==");
    println!(
        "   task mix: priorities 10% urgent / 20% high / 50% normal / 20% low; capabilities \
         none / linux / docker+linux / python, plus 5% gpu+linux that the claiming agent (docker, \
         linux, python) lacks"
    );
    let [small, large] = counts.queue_depths;
    let a = claims_at_depth(counts, small, &dir.join(format!("depth-{small}.db")));
    let b = claims_at_depth(counts, large, &dir.join(format!("depth-{large}.db")));
    let ratio = |x: &[Duration], y: &[Duration], p: f64| {
        percentile(y, p).as_secs_f64() / percentile(x, p).as_secs_f64()
    };
    let p50 = ratio(&a.claims, &b.claims, 50.0);
    let p99 = ratio(&a.claims, &b.claims, 99.0);
    // The target guards against scans: the deep queue may be at most 2x slower. A deep queue
    // that comes out faster (p99 is set by which claims hit a WAL checkpoint) meets it.
    let within = |r: f64| r <= 2.0;
    println!(
        "claim latency at {large} vs {small} queued: p50 {p50:.2}x, p99 {p99:.2}x   [target \
         deep queue within 2x of the shallow one: p50 {}, p99 {}]",
        verdict(within(p50)),
        verdict(within(p99)),
    );
    println!(
        "   (info) claim+complete at {large} vs {small} queued: p50 {:.2}x, p99 {:.2}x; claims \
         with WAL autocheckpoint off (diagnostic): p50 {:.2}x, p99 {:.2}x",
        ratio(&a.claim_complete, &b.claim_complete, 50.0),
        ratio(&a.claim_complete, &b.claim_complete, 99.0),
        ratio(&a.claims_no_checkpoint, &b.claims_no_checkpoint, 50.0),
        ratio(&a.claims_no_checkpoint, &b.claims_no_checkpoint, 99.0),
    );
}

// ---- pipelines ----

/// A 100-stage definition: a chain (every stage waits for the one before), or 10 layers of 10
/// where each stage waits for all 10 of the layer before (900 dependencies).
fn dag_100(layered: bool) -> Definition {
    let name = |i: usize| format!("s{i:03}");
    let stages = (0..100)
        .map(|i| {
            serde_json::from_value::<StageDef>(json!({
                "name": name(i), "type": "step", "capability": "linux", "retries": 0
            }))
            .unwrap()
        })
        .collect();
    let mut dependencies = Vec::new();
    for i in 1..100 {
        if layered {
            if i >= 10 {
                let layer = i / 10;
                for j in (layer - 1) * 10..layer * 10 {
                    dependencies.push(Dependency {
                        from: name(j),
                        to: name(i),
                    });
                }
            }
        } else {
            dependencies.push(Dependency {
                from: name(i - 1),
                to: name(i),
            });
        }
    }
    Definition {
        stages,
        dependencies,
    }
}

/// Runs one pipeline with an instant worker (claims up to 16 at a time, completes each at
/// once) until it ends. Returns (wall time, time the worker spent in claim and report calls).
fn run_pipeline(
    p: &PipelineService,
    tasks: &TaskService,
    token: &str,
    name: &str,
) -> (Duration, Duration) {
    let by = submitter();
    let started = Instant::now();
    let run = p
        .run(
            NewRun {
                pipeline: name.into(),
                version: None,
                input: json!({"rows": 1}),
                parameters: json!({}),
                priority: Priority::Normal,
                webhook_url: None,
            },
            &by,
        )
        .expect("start run");
    let mut worker = Duration::ZERO;
    loop {
        let t = Instant::now();
        let claimed = tasks.claim_many(token, None, 16).expect("claim");
        worker += t.elapsed();
        match claimed {
            Ok(batch) => {
                for task in batch {
                    let t = Instant::now();
                    tasks.report(token, &task.id, completed()).expect("report");
                    worker += t.elapsed();
                }
            }
            Err(_) => {
                let (status, _) = p.stamp(&run.id).expect("stamp").expect("run exists");
                if status != RunStatus::Running {
                    assert_eq!(status, RunStatus::Completed);
                    return (started.elapsed(), worker);
                }
            }
        }
    }
}

fn bench_pipelines(counts: &Counts, dir: &Path) {
    println!("\n== pipelines: scheduling overhead on 100-stage DAGs (target < 2 ms per stage) ==");
    let (tasks, _keys) = task_service(&dir.join("pipelines.db"));
    let approvals = ApprovalService::new(tasks.agents().audit().clone(), ApprovalPolicy::default());
    let p = PipelineService::new(tasks.clone(), approvals, PipelinesConfig::default());
    let token = register_agent(&tasks, "pipeline-bench");
    let by = submitter();
    for layered in [false, true] {
        let name = if layered { "layers-10x10" } else { "chain-100" };
        p.create(
            NewPipeline {
                name: name.into(),
                description: String::new(),
                definition: dag_100(layered),
                pipeline_id: None,
            },
            &by,
        )
        .expect("create pipeline");
        let mut per_stage = Vec::new();
        let mut queue_share = Vec::new();
        for _ in 0..counts.pipeline_runs {
            let (wall, worker) = run_pipeline(&p, &tasks, &token, name);
            per_stage.push(wall.as_secs_f64() * 1000.0 / 100.0);
            queue_share.push(worker.as_secs_f64() * 1000.0 / 100.0);
        }
        per_stage.sort_by(f64::total_cmp);
        queue_share.sort_by(f64::total_cmp);
        let median = per_stage[per_stage.len() / 2];
        println!(
            "{name:>13}: {:.3} ms per stage (median of {} runs; min {:.3}, max {:.3}); of which the \
             worker's claim+report calls (dispatch and the run's advance inside them) {:.3} ms; \
             the worker's own work 0 (instant)  [{}]",
            median,
            per_stage.len(),
            per_stage[0],
            per_stage[per_stage.len() - 1],
            queue_share[queue_share.len() / 2],
            verdict(median < 2.0),
        );
    }
}

// ---- assessments ----

/// A home with `projects` project directories, each with a Cursor and a Claude Code config of
/// ten servers (half with findings), plus the user-scope configs.
fn assessment_home(root: &Path, projects: usize) -> Vec<std::path::PathBuf> {
    let servers = |p: usize| {
        let mut m = serde_json::Map::new();
        for i in 0..10 {
            let entry = if i % 2 == 0 {
                json!({"command": "npx", "args": ["-y", format!("@modelcontextprotocol/server-memory@2025.4.{i}")]})
            } else {
                json!({"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": format!("ghp_{:036}", p * 100 + i)}})
            };
            m.insert(format!("server-{i}"), entry);
        }
        json!({"mcpServers": m})
    };
    let write = |path: std::path::PathBuf, v: serde_json::Value| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    };
    write(root.join(".cursor/mcp.json"), servers(0));
    write(root.join(".claude.json"), servers(1));
    (0..projects)
        .map(|p| {
            let dir = root.join(format!("projects/p{p}"));
            write(dir.join(".cursor/mcp.json"), servers(p));
            write(dir.join(".mcp.json"), servers(p + 1));
            dir
        })
        .collect()
}

fn bench_assessments(dir: &Path) {
    println!("\n== assessments: a security assessment of many client configs (no target) ==");
    let home = dir.join("home");
    let projects = assessment_home(&home, 100);
    let audit = audit_log(&dir.join("assessments.db"));
    let service = AssessmentService::new(audit, AssessmentsConfig::default());
    let target = Target {
        home: Some(home.display().to_string()),
        projects: Some(projects.iter().map(|p| p.display().to_string()).collect()),
        ..Target::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let started = Instant::now();
        let a = service
            .request(AssessmentType::Security, target.clone(), &submitter())
            .expect("request");
        let done = service.run(&a.id).expect("run");
        times.push(started.elapsed());
        last = Some(done);
    }
    times.sort();
    let a = last.expect("ran");
    let servers: usize = a.files.iter().map(|f| f.servers).sum();
    println!(
        "{} files, {} servers, {} findings: median {:.1} ms per assessment (min {:.1}, max {:.1}; \
         discovery, parsing, every rule, and storing the findings)",
        a.files.len(),
        servers,
        a.findings.len(),
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

// ---- instances ----

/// An rmcp client session over a spawned process (the coordinator or a test child).
type McpClient = RunningService<RoleClient, ClientConfig>;

/// How much work the instances section does.
struct InstanceCounts {
    /// Sequential calls before any timing, on each session.
    warmup: u64,
    /// Timed sequential calls on each session.
    sequential: u64,
    /// Calls per throughput run.
    throughput: u64,
    /// Calls kept in flight in the throughput runs.
    in_flight: u64,
    /// Sequential calls of the raw client whose process CPU time is read (`/proc` counts in
    /// 10 ms ticks: enough calls for a figure to the µs).
    raw_calls: u64,
    /// Cold starts per configuration.
    cold_runs: usize,
    /// Children started for the memory figure.
    children: usize,
}

impl InstanceCounts {
    fn new(quick: bool) -> Self {
        if quick {
            InstanceCounts {
                warmup: 50,
                sequential: 300,
                throughput: 1_000,
                in_flight: 16,
                raw_calls: 3_000,
                cold_runs: 3,
                children: 20,
            }
        } else {
            InstanceCounts {
                warmup: 200,
                sequential: 5_000,
                throughput: 20_000,
                in_flight: 16,
                raw_calls: 20_000,
                cold_runs: 10,
                children: 20,
            }
        }
    }
}

/// The test child (`examples/test_child.rs`), built in this benchmark's profile (`bench`
/// builds into the `release` directory) next to the coordinator binary, as
/// `tests/common/mod.rs::example_bin` does for the tests.
fn test_child_bin() -> PathBuf {
    let profile_dir = Path::new(BIN).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Drop what `cargo bench` sets for this process: build scripts that track one of these
    // (ring's tracks CARGO_MANIFEST_DIR) would otherwise rerun here and again at the next
    // `cargo bench`, rebuilding ring, rustls, reqwest, rmcp and this crate every time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "test_child",
        "--manifest-path",
    ])
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
    .arg("--target-dir")
    .arg(profile_dir.parent().unwrap());
    // `cargo bench` builds in the `bench` profile (into `release`): the same profile here
    // reuses this crate's build instead of making a second one that the next run redoes.
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.args(["--profile", "bench"]);
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let status = cmd.status().expect("run cargo build --example test_child");
    assert!(
        status.success(),
        "cargo build --example test_child: {status}"
    );
    let bin = profile_dir.join("examples").join("test_child");
    assert!(bin.is_file(), "{} is missing", bin.display());
    bin
}

/// The name of the `i`-th instance type of [`instances_config`] (from 1): `kid`, `kid2`, ...
fn type_name(i: usize) -> String {
    if i == 1 {
        "kid".to_string()
    } else {
        format!("kid{i}")
    }
}

/// A coordinator config: `types` instance types named by [`type_name`], each running the test
/// child, with health checks once an hour.
fn instances_config(path: &Path, child: &Path, types: usize, autostart: bool) {
    let mut config = String::from("# mcp-coordinator benchmark\n");
    for name in (1..=types).map(type_name) {
        config += &format!(
            "\n[instance_types.{name}]\ncommand = \"{}\"\nautostart = {autostart}\n\
             [instance_types.{name}.health]\ninterval_seconds = 3600\n",
            child.display()
        );
    }
    std::fs::write(path, config).unwrap();
}

fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("bench", "1"),
    )
}

/// Spawns a command and runs the `initialize` handshake with rmcp's client. Returns the
/// session and the process id.
async fn mcp_connect(
    cmd: tokio::process::Command,
    stderr: Stdio,
) -> Result<(McpClient, u32), String> {
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let pid = transport.id().expect("pid");
    let client = client_config()
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    Ok((client, pid))
}

/// The coordinator on `data_dir` with `config`, its stderr (`--log-level warn`) in `log`.
async fn spawn_coordinator(data_dir: &Path, config: &Path, log: &Path) -> (McpClient, u32) {
    let mut cmd = tokio::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MCP_COORDINATOR_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        .args(["--log-level", "warn"]);
    let file = std::fs::File::create(log).unwrap();
    mcp_connect(cmd, file.into()).await.unwrap_or_else(|e| {
        let stderr = std::fs::read_to_string(log).unwrap_or_default();
        panic!("{BIN}: {e}; its stderr:\n{stderr}")
    })
}

/// The test child, spoken to directly. It gets an empty environment, as the coordinator
/// gives its children.
async fn spawn_test_child(bin: &Path) -> (McpClient, u32) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear();
    mcp_connect(cmd, Stdio::null())
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

fn tool_params(tool: &str, args: serde_json::Value) -> CallToolRequestParams {
    let params = CallToolRequestParams::new(tool.to_string());
    match args {
        serde_json::Value::Object(map) => params.with_arguments(map),
        _ => params,
    }
}

/// Calls a tool that must succeed; returns its structured content.
async fn call_ok(
    peer: &Peer<RoleClient>,
    tool: &str,
    args: serde_json::Value,
) -> serde_json::Value {
    let result = peer
        .call_tool(tool_params(tool, args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    result.structured_content.unwrap_or_default()
}

/// One `echo {"text": "hi"}` (or `kid__echo`), checked.
async fn echo_hi(peer: &Peer<RoleClient>, tool: &'static str) {
    let result = peer
        .call_tool(tool_params(tool, json!({"text": "hi"})))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        result.is_error != Some(true)
            && result
                .structured_content
                .as_ref()
                .is_some_and(|s| s["text"] == "hi"),
        "{tool}: {result:?}"
    );
}

/// Times `n` sequential calls.
async fn time_sequential(
    peer: &Peer<RoleClient>,
    tool: &'static str,
    n: u64,
    into: &mut Vec<Duration>,
) {
    for _ in 0..n {
        let started = Instant::now();
        echo_hi(peer, tool).await;
        into.push(started.elapsed());
    }
}

/// `total` calls from `in_flight` tasks sharing one peer, each calling as fast as it can.
/// Returns the wall time.
async fn time_throughput(
    peer: &Peer<RoleClient>,
    tool: &'static str,
    total: u64,
    in_flight: u64,
) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let peer = peer.clone();
            let next = next.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    echo_hi(&peer, tool).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("throughput task");
    }
    started.elapsed()
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Field 4, the parent, counted after the command name's closing parenthesis.
        let ppid = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether a process runs (a zombie has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .next()
            != Some("Z")
    })
}

/// Closes the session (the server's stdin; rmcp waits for the process to exit) and checks
/// that `children` (the coordinator's, if any) are gone too; any left after 5 s are killed
/// and reported.
async fn close_all(client: McpClient, pid: u32, children: &[u32]) {
    client.cancel().await.expect("close session");
    let deadline = Instant::now() + Duration::from_secs(5);
    while (alive(pid) || children.iter().any(|&c| alive(c))) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &p in std::iter::once(&pid).chain(children) {
        if alive(p) {
            println!("   WARNING: process {p} still runs 5 s after the session closed; killing it");
            // SAFETY: kill(2) on a pid this benchmark started (or its coordinator did).
            unsafe {
                libc::kill(p as i32, libc::SIGKILL);
            }
        }
    }
}

/// Waits until every one of `instances` is running (polling `instance_list`, which is small:
/// tools/list carries every tool's schemas and costs the coordinator milliseconds), then
/// checks once that tools/list offers each one's `<instance>__echo`. Panics after 30 s.
async fn wait_running(peer: &Peer<RoleClient>, instances: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = call_ok(peer, "instance_list", json!({})).await;
        let running = |name: &String| {
            list["instances"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|i| i["name"] == name.as_str() && i["status"] == "running")
            })
        };
        if instances.iter().all(running) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instances never running: {instances:?}; last list: {list}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let listed = peer.list_all_tools().await.expect("tools/list");
    for name in instances {
        let tool = format!("{name}__echo");
        assert!(
            listed.iter().any(|t| t.name.as_ref() == tool.as_str()),
            "{tool} is not in tools/list"
        );
    }
}

/// Adds the CPU ticks spent between two readings.
fn add_ticks(total: &mut [u64], before: &[u64], after: &[u64]) {
    for ((t, b), a) in total.iter_mut().zip(before).zip(after) {
        *t += a - b;
    }
}

/// The p50 and p99 of sorted samples, in µs.
fn p50_p99(sorted: &[Duration]) -> (f64, f64) {
    (us(percentile(sorted, 50.0)), us(percentile(sorted, 99.0)))
}

async fn instances_latency_and_throughput(counts: &InstanceCounts, dir: &Path, child: &Path) {
    let config = dir.join("proxy.toml");
    instances_config(&config, child, 1, true);
    let data = dir.join("proxy-data");
    let (coordinator, coordinator_pid) =
        spawn_coordinator(&data, &config, &dir.join("proxy.log")).await;
    let proxy = coordinator.peer().clone();
    wait_running(&proxy, &["kid".to_string()]).await;
    let kid_pid = call_ok(&proxy, "instance_get", json!({"instance": "kid"})).await["pid"]
        .as_u64()
        .expect("kid pid") as u32;
    let (direct_client, direct_pid) = spawn_test_child(child).await;
    let direct = direct_client.peer().clone();

    for _ in 0..counts.warmup {
        echo_hi(&direct, "echo").await;
        echo_hi(&proxy, "kid__echo").await;
    }

    // Sequential latency, in ten alternating blocks so that a change of load on the machine
    // hits both sides alike.
    let block = (counts.sequential / 10).max(1);
    let mut direct_lat = Vec::with_capacity(counts.sequential as usize);
    let mut proxied_lat = Vec::with_capacity(counts.sequential as usize);
    let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p)).collect::<Vec<_>>();
    let mut ticks_direct = [0u64; 2]; // this process, the child
    let mut ticks_proxied = [0u64; 3]; // this process, the coordinator, the child
    let me = std::process::id();
    let (switches_before, _) = context_switches(coordinator_pid);
    for _ in 0..10 {
        let before = cpu(&[me, direct_pid]);
        time_sequential(&direct, "echo", block, &mut direct_lat).await;
        add_ticks(&mut ticks_direct, &before, &cpu(&[me, direct_pid]));
        let before = cpu(&[me, coordinator_pid, kid_pid]);
        time_sequential(&proxy, "kid__echo", block, &mut proxied_lat).await;
        add_ticks(
            &mut ticks_proxied,
            &before,
            &cpu(&[me, coordinator_pid, kid_pid]),
        );
    }
    let (switches_after, threads) = context_switches(coordinator_pid);
    let n = direct_lat.len() as f64;
    direct_lat.sort();
    proxied_lat.sort();
    let (d50, d99) = p50_p99(&direct_lat);
    let (p50, p99) = p50_p99(&proxied_lat);
    let added50 = p50 - d50;
    println!(
        "echo sequential (1 in flight), {} calls each after {} warm-up: direct p50 {d50:.0} µs, \
         p99 {d99:.0} µs; through the coordinator (kid__echo) p50 {p50:.0} µs, p99 {p99:.0} µs",
        direct_lat.len(),
        counts.warmup,
    );
    println!(
        "added latency of a proxied call: p50 {added50:.0} µs, p99 {:.0} µs   [target added p50 \
         < 60 µs: {}]",
        p99 - d99,
        verdict(added50 < 60.0),
    );
    let per_call = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / n;
    println!(
        "   (info) CPU per call (user+sys, 10 ms ticks): direct: client {:.0} µs, child {:.0} µs; \
         proxied: client {:.0} µs, coordinator {:.0} µs, child {:.0} µs; coordinator context \
         switches {:.1} per call over its {threads} threads",
        per_call(ticks_direct[0]),
        per_call(ticks_direct[1]),
        per_call(ticks_proxied[0]),
        per_call(ticks_proxied[1]),
        per_call(ticks_proxied[2]),
        (switches_after - switches_before) as f64 / n,
    );
    println!(
        "   (info) direct p90 {:.0} µs, max {:.0} µs; proxied p90 {:.0} µs, max {:.0} µs; \
         proxied/direct p50 {:.2}x",
        us(percentile(&direct_lat, 90.0)),
        us(direct_lat[direct_lat.len() - 1]),
        us(percentile(&proxied_lat, 90.0)),
        us(proxied_lat[proxied_lat.len() - 1]),
        p50 / d50,
    );

    // Throughput with `in_flight` calls outstanding on one session, in rounds that alternate
    // direct and proxied runs, so that a change of load on the machine hits both alike.
    const ROUNDS: u64 = 4;
    let per_round = counts.throughput / ROUNDS;
    let total = per_round * ROUNDS;
    let (mut direct_wall, mut proxied_wall) = (Duration::ZERO, Duration::ZERO);
    let (mut direct_cpu, mut proxied_cpu) = ([0u64; 2], [0u64; 3]);
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let before = cpu(&[me, direct_pid]);
        let d = time_throughput(&direct, "echo", per_round, counts.in_flight).await;
        add_ticks(&mut direct_cpu, &before, &cpu(&[me, direct_pid]));
        let before = cpu(&[me, coordinator_pid, kid_pid]);
        let p = time_throughput(&proxy, "kid__echo", per_round, counts.in_flight).await;
        add_ticks(
            &mut proxied_cpu,
            &before,
            &cpu(&[me, coordinator_pid, kid_pid]),
        );
        ratios.push(d.as_secs_f64() / p.as_secs_f64());
        direct_wall += d;
        proxied_wall += p;
    }
    let direct_rate = total as f64 / direct_wall.as_secs_f64();
    let proxied_rate = total as f64 / proxied_wall.as_secs_f64();
    let ratio = proxied_rate / direct_rate;
    let rounds: Vec<String> = ratios
        .iter()
        .map(|r| format!("{:.0}%", r * 100.0))
        .collect();
    println!(
        "echo throughput ({} in flight, {total} calls each way in {ROUNDS} alternating rounds): \
         direct {direct_rate:.0} calls/s, through the coordinator {proxied_rate:.0} calls/s = \
         {:.0}% of direct (rounds: {})   [target >= 90%: {}]",
        counts.in_flight,
        ratio * 100.0,
        rounds.join(", "),
        verdict(ratio >= 0.9),
    );
    let (before, direct_ticks) = ([0u64; 2], direct_cpu);
    let (before_p, proxied_ticks) = ([0u64; 3], proxied_cpu);
    let per = |a: u64, b: u64| (a - b) as f64 / TICKS_PER_SECOND * 1e6 / total as f64;
    println!(
        "   (info) CPU per call: direct: client {:.0} µs, child {:.0} µs; proxied: client {:.0} \
         µs, coordinator {:.0} µs, child {:.0} µs; coordinator CPU use {:.0}% of one core \
         ({} CPUs on this machine)",
        per(direct_ticks[0], before[0]),
        per(direct_ticks[1], before[1]),
        per(proxied_ticks[0], before_p[0]),
        per(proxied_ticks[1], before_p[1]),
        per(proxied_ticks[2], before_p[2]),
        (proxied_ticks[1] - before_p[1]) as f64 / TICKS_PER_SECOND * 100.0
            / proxied_wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let children = children_of(coordinator_pid);
    close_all(direct_client, direct_pid, &[]).await;
    close_all(coordinator, coordinator_pid, &children).await;
}

fn echo_call(id: u64, tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{"text":"hi"}}}}}}"#
    ) + "\n"
}

/// `n` sequential `echo {"text": "hi"}` calls of `tool` over raw JSON-RPC lines, each answer
/// checked; returns the wall time.
fn raw_echo_calls(server: &mut Server, tool: &str, first_id: u64, n: u64) -> Duration {
    let started = Instant::now();
    for id in first_id..first_id + n {
        server.send(&echo_call(id, tool));
        // Skip notifications (no id) up to the answer.
        let (line, response) = loop {
            let line = server.recv();
            let response = Response::parse(line);
            if response.id.is_some() {
                break (line, response);
            }
        };
        if response.id != Some(id) {
            panic!("answer to another request: {line}");
        }
        let line = line.to_string();
        response.expect_ok(&line);
    }
    started.elapsed()
}

/// CPU the coordinator's process spends per proxied `tools/call`, measured from outside as a
/// client that writes raw JSON-RPC lines sees it: utime+stime of the process (all its
/// threads, exited ones included) from `/proc/<pid>/stat` before and after `raw_calls`
/// sequential calls of `kid__echo`, read after the audit writer has written the last batch.
/// Beside it, the test child's own CPU per call, proxied and called directly the same way.
fn instances_raw_cpu(counts: &InstanceCounts, dir: &Path, child: &Path) {
    let config = dir.join("raw.toml");
    instances_config(&config, child, 1, true);
    let mut server = Server::spawn_with(&dir.join("raw-data"), Some(&config));
    server.initialize();
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.to_string() + "\n";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.send(&list);
        // Notifications (tools/list_changed) may come first: read up to the answer.
        let listed = loop {
            let line = server.recv();
            if Response::parse(line).id == Some(2) {
                break line.contains("\"kid__echo\"");
            }
        };
        if listed {
            break;
        }
        assert!(Instant::now() < deadline, "kid__echo never listed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kids = children_of(server.pid());
    assert_eq!(kids.len(), 1, "children of the coordinator: {kids:?}");
    let (pid, kid) = (server.pid(), kids[0]);
    let warmup = counts.warmup;
    raw_echo_calls(&mut server, "kid__echo", 10, warmup);
    // The warm-up's audit batch is written before the first reading.
    std::thread::sleep(Duration::from_millis(100));
    let n = counts.raw_calls;
    let before = (cpu_ticks(pid), cpu_ticks(kid));
    let wall = raw_echo_calls(&mut server, "kid__echo", 10 + warmup, n);
    std::thread::sleep(Duration::from_millis(100));
    let after = (cpu_ticks(pid), cpu_ticks(kid));
    let per_call = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / n as f64;
    let coordinator = per_call(after.0 - before.0);
    let proxied_child = per_call(after.1 - before.1);
    server.finish();

    let mut cmd = Command::new(child);
    cmd.env_clear();
    let mut direct = Server::start(cmd);
    direct.initialize();
    raw_echo_calls(&mut direct, "echo", 10, warmup);
    let before = cpu_ticks(direct.pid());
    let direct_wall = raw_echo_calls(&mut direct, "echo", 10 + warmup, n);
    let direct_child = per_call(cpu_ticks(direct.pid()) - before);
    direct.finish();
    println!(
        "coordinator CPU per proxied tools/call (raw client, {n} sequential kid__echo calls, \
         utime+stime from /proc/<pid>/stat): {coordinator:.0} µs   [target < 50 µs: {}]",
        verdict(coordinator < 50.0),
    );
    println!(
        "   (info) the child's own CPU per call {proxied_child:.0} µs proxied, {direct_child:.0} \
         µs called directly; server tree (coordinator + child) {:.0} µs vs {direct_child:.0} µs; \
         wall per call {:.0} µs proxied, {:.0} µs direct",
        coordinator + proxied_child,
        us(wall) / n as f64,
        us(direct_wall) / n as f64,
    );
}

/// One cold start with a fresh data dir: (spawn -> initialize answered, spawn -> first
/// coordinator_status answered, spawn -> every autostarted child running with its tools
/// listed, and the first coordinator_status call alone).
async fn instances_cold_start(dir: &Path, config: &Path, types: usize) -> [Duration; 4] {
    let data = tempfile::tempdir_in(dir).expect("temp dir");
    let started = Instant::now();
    let (client, pid) =
        spawn_coordinator(&data.path().join("data"), config, &data.path().join("log")).await;
    let initialized = started.elapsed();
    call_ok(client.peer(), "coordinator_status", json!({})).await;
    let status = started.elapsed();
    let names: Vec<String> = (1..=types).map(type_name).collect();
    wait_running(client.peer(), &names).await;
    let all_up = started.elapsed();
    let children = children_of(pid);
    assert_eq!(children.len(), types, "children of the coordinator");
    close_all(client, pid, &children).await;
    [initialized, status, all_up, status - initialized]
}

async fn instances_cold_starts(counts: &InstanceCounts, dir: &Path, child: &Path) {
    const TYPES: [usize; 2] = [0, 5];
    let configs = TYPES.map(|types| {
        let config = dir.join(format!("cold-{types}.toml"));
        instances_config(&config, child, types, true);
        config
    });
    // runs[configuration][figure]; the two configurations alternate, so that a change of load
    // on the machine hits both alike. One unmeasured run of each first (page cache, binaries).
    let mut runs: [[Vec<Duration>; 4]; 2] = Default::default();
    for round in 0..=counts.cold_runs {
        for (i, types) in TYPES.into_iter().enumerate() {
            let times = instances_cold_start(dir, &configs[i], types).await;
            if round > 0 {
                for (all, t) in runs[i].iter_mut().zip(times) {
                    all.push(t);
                }
            }
        }
    }
    let mut medians = Vec::new();
    for (types, figures) in TYPES.into_iter().zip(&mut runs) {
        for r in figures.iter_mut() {
            r.sort();
        }
        let [init, status, up, status_call] = &*figures;
        println!(
            "cold start, {types} autostarted children: to initialize answer median {:.2} ms \
             (min {:.2}, max {:.2}); to first coordinator_status answer median {:.2} ms (min \
             {:.2}, max {:.2}; the status call alone median {:.2} ms){}; {} runs, each on a \
             fresh data dir",
            ms(percentile(init, 50.0)),
            ms(init[0]),
            ms(init[init.len() - 1]),
            ms(percentile(status, 50.0)),
            ms(status[0]),
            ms(status[status.len() - 1]),
            ms(percentile(status_call, 50.0)),
            if types > 0 {
                format!(
                    "; to all {types} children running, tools listed, median {:.1} ms",
                    ms(percentile(up, 50.0))
                )
            } else {
                String::new()
            },
            counts.cold_runs,
        );
        medians.push((percentile(init, 50.0), percentile(status, 50.0)));
    }
    let (init0, status0) = medians[0];
    let (init5, status5) = medians[1];
    // "Not slowed": within 10% (or 1 ms, the noise of a process start) of the start without
    // children.
    let same = |a: Duration, b: Duration| b <= a.mul_f64(1.1).max(a + Duration::from_millis(1));
    println!(
        "cold start with 5 autostarted children vs none: initialize {:+.2} ms, first status \
         {:+.2} ms   [target not slowed (within 10% or 1 ms): initialize {}, status {}]",
        ms(init5) - ms(init0),
        ms(status5) - ms(status0),
        verdict(same(init0, init5)),
        verdict(same(status0, status5)),
    );
}

async fn instances_memory(counts: &InstanceCounts, dir: &Path, child: &Path) {
    let config = dir.join("memory.toml");
    instances_config(&config, child, 1, false);
    let (client, pid) =
        spawn_coordinator(&dir.join("memory-data"), &config, &dir.join("memory.log")).await;
    let peer = client.peer().clone();
    call_ok(&peer, "coordinator_status", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = memory_kb(pid);

    let mut starts = Vec::with_capacity(counts.children);
    let mut pids = Vec::with_capacity(counts.children);
    for i in 1..=counts.children {
        let started = Instant::now();
        let view = call_ok(
            &peer,
            "instance_start",
            json!({"type": "kid", "name": format!("k{i}")}),
        )
        .await;
        starts.push(started.elapsed());
        assert_eq!(view["status"], "running", "{view}");
        pids.push(view["pid"].as_u64().expect("pid") as u32);
    }
    // Every child's tools offered and called once.
    let names: Vec<String> = (1..=counts.children).map(|i| format!("k{i}")).collect();
    wait_running(&peer, &names).await;
    for name in &names {
        call_ok(&peer, &format!("{name}__echo"), json!({"text": "hi"})).await;
    }
    let started = Instant::now();
    let listed = peer.list_all_tools().await.expect("tools/list").len();
    let list_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, hwm) = memory_kb(pid);
    let children_rss: u64 = pids.iter().map(|&p| memory_kb(p).0).sum();
    let (_, threads) = context_switches(pid);
    starts.sort();
    let rss_mb = rss as f64 / 1024.0;
    println!(
        "coordinator RSS with {} running children: VmRSS {rss_mb:.1} MB (VmHWM {:.1} MB); with \
         0 children {:.1} MB   [target < 40 MB: {}]",
        counts.children,
        hwm as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        verdict(rss_mb < 40.0),
    );
    println!(
        "   (info) coordinator's own RSS, children excluded; {:.0} KB per child; the children \
         themselves {:.1} MB in all ({:.1} MB each); coordinator threads {threads}; \
         instance_start median {:.1} ms (max {:.1} ms); tools/list of {listed} tools {:.2} ms",
        (rss.saturating_sub(rss0)) as f64 / counts.children as f64,
        children_rss as f64 / 1024.0,
        children_rss as f64 / 1024.0 / counts.children as f64,
        ms(percentile(&starts, 50.0)),
        ms(starts[starts.len() - 1]),
        ms(list_time),
    );
    close_all(client, pid, &pids).await;
}

fn bench_instances(counts: &InstanceCounts, dir: &Path) {
    println!(
        "\n== instances: child MCP servers through the coordinator (test_child over stdio, rmcp \
         client) =="
    );
    let child = test_child_bin();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        instances_latency_and_throughput(counts, dir, &child).await;
        tokio::task::block_in_place(|| instances_raw_cpu(counts, dir, &child));
        instances_cold_starts(counts, dir, &child).await;
        instances_memory(counts, dir, &child).await;
    });
}

/// An event of the console benchmark's chain: mostly tool calls by one client, with agents,
/// task steps, errors and the rarer approval events mixed in, shaped like a real log.
fn console_event(i: usize) -> NewEvent {
    let mut e = event();
    if i.is_multiple_of(5) {
        e.actor = Actor::new(ActorKind::Agent, format!("agent-{}", i % 50));
        e.action = Action::TaskCompleted;
        e.subject = format!("task-{i}");
    }
    if i.is_multiple_of(97) {
        e.outcome = Outcome::Error;
    }
    if i.is_multiple_of(1_000) {
        e.action = Action::ApprovalApproved;
        e.subject = format!("apr_{i}");
    }
    e
}

/// Server time of console pages: the approvals page with 200 approvals, the audit page at
/// `console_events` events (the first page, a page deep in the middle by the keyset, and
/// filtered pages, indexed or read one span at a time), and `/metrics`, each fetched
/// `console_requests` times over loopback HTTP with a logged-in session (the round trip bounds the server time from above).
fn bench_console(counts: &Counts, dir: &Path) {
    use mcp_coordinator::approval::{Channel, Kind, NewApproval, Risk, State, Verdict};
    use mcp_coordinator::config::{ConfigFile, Settings};
    use mcp_coordinator::console::{self, Console, metrics::ToolCalls};
    use mcp_coordinator::overseer::OverseerService;

    println!(
        "\n== console: server time of pages (loopback HTTP, logged in, {} events, 200 approvals) ==",
        counts.console_events
    );
    let path = dir.join("console.db");
    let audit = audit_log(&path);
    let started = Instant::now();
    let mut i = 0;
    while i < counts.console_events {
        let n = 1_000.min(counts.console_events - i);
        let batch: Vec<NewEvent> = (i..i + n).map(console_event).collect();
        audit.record_batch(&batch).expect("record_batch");
        i += n;
    }
    println!(
        "   (info) {} events appended in {:.1} s",
        counts.console_events,
        started.elapsed().as_secs_f64()
    );
    let approvals = ApprovalService::new(audit.clone(), ApprovalPolicy::default());
    let channels = [Channel::Console, Channel::Cli, Channel::ElicitationForm];
    for n in 0..200 {
        let a = approvals
            .request(NewApproval {
                kind: Kind::Generic,
                subject_id: format!("bench-{n}"),
                summary: format!("Bench approval {n}: restart the staging database"),
                action: json!({"restart": "staging-db", "n": n}),
                risk: [Risk::Low, Risk::Medium, Risk::High, Risk::Critical][n % 4],
                preview: Some("systemctl restart postgresql@staging".into()),
                requested_by: submitter(),
                expires_in_seconds: None,
            })
            .expect("approval");
        if n % 2 == 1 {
            approvals
                .decide(
                    &a.id,
                    Verdict {
                        state: if n % 3 == 0 {
                            State::Rejected
                        } else {
                            State::Approved
                        },
                        by: Actor::overseer("bench"),
                        // Critical ones only out of band (the policy's default).
                        via: if n % 4 == 3 {
                            Channel::Cli
                        } else {
                            channels[n % 3]
                        },
                        reason: Some("bench".into()),
                        cause: None,
                        context: json!({}),
                    },
                )
                .expect("decide");
        }
    }
    const PASSPHRASE: &str = "bench console passphrase, long enough";
    OverseerService::new(audit.clone())
        .init("bench", PASSPHRASE, &submitter())
        .expect("overseer");
    let head = audit.event_count().expect("head");

    let settings = Settings {
        data_dir: dir.to_path_buf(),
        db: Location::File(path.clone()),
        config_path: None,
        config: ConfigFile::default(),
        console_url: None,
    };
    let bound = console::bind(&settings.config.console, "127.0.0.1:0").expect("bind");
    let tool_calls = Arc::new(ToolCalls::default());
    for (tool, us) in [
        ("coordinator_status", 60),
        ("task_claim", 180),
        ("task_submit", 220),
    ] {
        for _ in 0..1_000 {
            tool_calls.record(tool, Outcome::Ok, Duration::from_micros(us));
        }
    }
    let console = Console::new(audit.clone(), &settings, &bound, Some(tool_calls));
    let base = console.url().trim_end_matches('/').to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = runtime.spawn(console.serve(bound, stop.clone().cancelled_owned()));
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let login = client
            .get(format!("{base}/login"))
            .send()
            .await
            .expect("GET /login")
            .text()
            .await
            .expect("login page");
        let token = login
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("login form token");
        let form = format!(
            "csrf={token}&passphrase={}",
            url::form_urlencoded::byte_serialize(PASSPHRASE.as_bytes()).collect::<String>()
        );
        let reply = client
            .post(format!("{base}/login"))
            .header("origin", &base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("POST /login");
        let cookie = reply
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_string();

        let middle = head / 2;
        // The time of the middle event: a range from there holds half the chain.
        let since_middle = audit
            .query(&mcp_coordinator::audit::Query {
                limit: Some(1),
                cursor: Some(middle.to_string()),
                ..Default::default()
            })
            .expect("the middle event")
            .events[0]
            .ts
            .clone();
        for (label, path) in [
            ("GET /approvals (200 approvals)", "/approvals".to_string()),
            ("GET /audit, first page", "/audit".to_string()),
            (
                "GET /audit, deep page (keyset)",
                format!("/audit?before={middle}"),
            ),
            (
                "GET /audit, back up (keyset)",
                format!("/audit?after={middle}"),
            ),
            (
                "GET /audit?action=approval.approved",
                format!("/audit?action=approval.approved&before={middle}"),
            ),
            (
                "GET /audit?outcome=error (one span)",
                format!("/audit?outcome=error&before={middle}"),
            ),
            (
                "GET /audit?actor=<never> (one span)",
                "/audit?actor=agent%3Anobody".to_string(),
            ),
            (
                "GET /audit?actor=<never>, a time range",
                format!(
                    "/audit?actor=agent%3Anobody&since={}",
                    url::form_urlencoded::byte_serialize(since_middle.as_bytes())
                        .collect::<String>()
                ),
            ),
            (
                "GET /audit?actor=<never>&subject=<rare>",
                "/audit?actor=agent%3Anobody&subject=apr_500000".to_string(),
            ),
            (
                "GET /audit?actor=<never>&subject=<common>",
                "/audit?actor=agent%3Anobody&subject=coordinator_status".to_string(),
            ),
            ("GET /metrics", "/metrics".to_string()),
        ] {
            let mut times = Vec::with_capacity(counts.console_requests);
            let mut status = 0;
            let mut bytes = 0;
            for _ in 0..counts.console_requests {
                let started = Instant::now();
                let r = client
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .header("accept", "text/html")
                    .send()
                    .await
                    .expect("GET");
                status = r.status().as_u16();
                bytes = r.bytes().await.expect("body").len();
                times.push(started.elapsed());
            }
            times.sort();
            let p50 = percentile(&times, 50.0);
            let p99 = percentile(&times, 99.0);
            let verdict = if status != 200 {
                format!("[HTTP {status}: not measured, the section is not on this branch]")
            } else {
                format!(
                    "[target p99 < 50 ms: {}]",
                    verdict(p99 < Duration::from_millis(50))
                )
            };
            println!(
                "{label:<42} p50 {:6.2} ms, p99 {:6.2} ms, {bytes:>7} bytes   {verdict}",
                ms(p50),
                ms(p99),
            );
        }
    });
    stop.cancel();
    let _ = runtime.block_on(serving);
}

fn main() {
    // `cargo bench` passes `--bench`; this program takes no arguments of its own.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let counts = Counts::new(quick);
    println!(
        "mcp-coordinator benchmark ({} run{})",
        if quick { "quick" } else { "full" },
        if quick {
            ", BENCH_QUICK=1: counts ~10x smaller"
        } else {
            ""
        },
    );
    println!("binary: {BIN}");
    println!(
        "machine: {} CPUs, load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
    );
    println!(
        "counts: cold starts {} per request; status calls {} sequential (+{} warm-up), {} at {} \
         in flight; audit events {} single, {} in batches of 100, {} in batches of 1,000; \
         tasks {} per throughput run; claim latency at {} and {} queued, {} claims each",
        counts.cold_runs,
        counts.status_sequential,
        counts.status_warmup,
        counts.status_throughput,
        counts.in_flight,
        counts.single_events,
        counts.batch_100_events,
        counts.batch_1000_events,
        counts.tasks,
        counts.queue_depths[0],
        counts.queue_depths[1],
        counts.claims_per_depth,
    );

    // BENCH_ONLY=server,audit,queue runs a subset (default: all).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);

    if wants("server") {
        let data = tempfile::tempdir().expect("temp dir");
        let data_dir = data.path().join("data");
        bench_cold_start(&counts, &data_dir);
        bench_tool_list(&data_dir);
        bench_status(&counts, &data_dir);
        bench_idle_memory(&data_dir);
    }
    if wants("memory") {
        let data = tempfile::tempdir().expect("temp dir");
        bench_memory_burst(&counts, &data.path().join("data"));
    }
    if wants("audit") {
        let audit_dir = tempfile::tempdir().expect("temp dir");
        bench_audit(&counts, audit_dir.path());
    }
    if wants("queue") {
        let task_dir = tempfile::tempdir().expect("temp dir");
        bench_task_throughput(&counts, task_dir.path());
        bench_claim_depth(&counts, task_dir.path());
    }
    if wants("assessments") {
        let assessment_dir = tempfile::tempdir().expect("temp dir");
        bench_assessments(assessment_dir.path());
    }
    if wants("pipelines") {
        let pipeline_dir = tempfile::tempdir().expect("temp dir");
        bench_pipelines(&counts, pipeline_dir.path());
    }
    if wants("console") {
        let console_dir = tempfile::tempdir().expect("temp dir");
        bench_console(&counts, console_dir.path());
    }
    if wants("http") {
        let http_dir = tempfile::tempdir().expect("temp dir");
        http::bench_http(&counts, http_dir.path());
    }
    if wants("postgres") {
        postgres::bench_postgres(&counts);
    }
    if wants("instances") {
        let instance_dir = tempfile::tempdir().expect("temp dir");
        bench_instances(&InstanceCounts::new(quick), instance_dir.path());
    }

    println!("\nload average {} at end", load_average());
}
