//! Benchmark program for mcp-coordinator: prints cold start, tool round-trip latency and
//! throughput, idle memory, audit append rate and audit verification time, each next to its
//! target. Run with `cargo bench --bench coordinator`; `BENCH_QUICK=1` shrinks the counts about
//! tenfold for a smoke run. It prints figures and asserts nothing about timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_coordinator::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
use mcp_coordinator::store::{Location, Store};
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

impl Server {
    fn spawn(data_dir: &Path) -> Server {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MCP_COORDINATOR_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "error"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mcp-coordinator");
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
        "   (info) each call also appends one audit event (own SQLite transaction); response \
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

fn bench_idle_memory(data_dir: &Path) {
    println!("\n== 3. Idle memory (fresh process: initialize + one coordinator_status) ==");
    let mut server = Server::spawn(data_dir);
    server.initialize();
    server.send(&status_call(2));
    let line = server.recv().to_string();
    Response::parse(&line).expect_ok(&line);
    std::thread::sleep(Duration::from_millis(300));
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

fn audit_log(path: &Path) -> AuditLog {
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
         in flight; audit events {} single, {} in batches of 100, {} in batches of 1,000",
        counts.cold_runs,
        counts.status_sequential,
        counts.status_warmup,
        counts.status_throughput,
        counts.in_flight,
        counts.single_events,
        counts.batch_100_events,
        counts.batch_1000_events,
    );

    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().join("data");
    bench_cold_start(&counts, &data_dir);
    bench_status(&counts, &data_dir);
    bench_idle_memory(&data_dir);

    let audit_dir = tempfile::tempdir().expect("temp dir");
    bench_audit(&counts, audit_dir.path());

    println!("\nload average {} at end", load_average());
}
