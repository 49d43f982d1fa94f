//! The task queue under pressure over MCP: two coordinator processes on one database file serve
//! 10,000 tasks to 8 claiming agents with every task completed exactly once; and a coordinator
//! killed with SIGKILL while holding leases loses nothing once a new one drains the queue.
//! Both run on SQLite (one file) and on PostgreSQL (one database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Era, both_backends, call, call_ok};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};

/// Long heartbeats (nobody goes offline during a run), short retry backoff.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("queue-stress.toml");
    std::fs::write(
        &path,
        "[agents]\nheartbeat_interval_ms = 60000\noffer_window_ms = 300\n\
         [tasks]\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n",
    )
    .unwrap();
    path
}

async fn register(peer: &Peer<RoleClient>, name: &str) -> (String, String) {
    let r = call_ok(
        peer,
        "agent_register",
        json!({"name": name, "capabilities": ["stress"]}),
    )
    .await;
    (
        r["agent"]["id"].as_str().unwrap().to_string(),
        r["token"].as_str().unwrap().to_string(),
    )
}

/// How many `storage_busy` results the runs met (and retried).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Calls a tool, retrying a `storage_busy` result (the only failure a healthy run may see: the
/// code says to try again).
async fn call_retrying(peer: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    for _ in 0..20 {
        let r = call(peer, tool, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{tool} failed: {e}"));
        let s = r.structured_content.clone().expect("structured content");
        if r.is_error == Some(true) {
            assert_eq!(s["code"], "storage_busy", "{tool} failed: {s:#}");
            BUSY.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        return s;
    }
    panic!("{tool} stayed busy");
}

/// Every page of `task_list` with these filters.
async fn all_tasks(peer: &Peer<RoleClient>, filter: Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = filter.clone();
        args["limit"] = json!(500);
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = call_ok(peer, "task_list", args).await;
        out.extend(page["tasks"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Every audit event with this action, newest first.
async fn all_events(peer: &Peer<RoleClient>, action: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"action": action, "limit": 500});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = call_ok(peer, "audit_query", args).await;
        out.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Claims and completes tasks until submitting is over and the queue is empty. Returns the ids
/// this agent completed.
async fn claimer(
    peer: Peer<RoleClient>,
    agent_id: String,
    token: String,
    submitting: Arc<AtomicBool>,
) -> Vec<String> {
    let mut done = Vec::new();
    loop {
        // Read the flag before claiming: an empty queue after submitting ended stays empty.
        let finished_submitting = !submitting.load(Ordering::SeqCst);
        let claimed = call_retrying(&peer, "task_claim", json!({"token": token})).await;
        let Some(task) = claimed["task"].as_object() else {
            assert_eq!(claimed["reason"], "queue_empty", "{claimed:#}");
            if finished_submitting {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = task["id"].as_str().unwrap().to_string();
        assert_eq!(task["status"], "leased");
        assert_eq!(task["leased_by"], agent_id.as_str());
        assert_eq!(task["attempts"], 1, "{task:?}");
        let reported = call_retrying(
            &peer,
            "task_report",
            json!({"token": token, "task_id": id, "result": {"agent": agent_id, "n": task["params"]["n"]}}),
        )
        .await;
        assert_eq!(reported["status"], "completed", "{reported:#}");
        done.push(id);
    }
}

both_backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_complete_ten_thousand_tasks_exactly_once(db: Db) {
    const TASKS: usize = 10_000;
    const SUBMITTERS_PER_PROCESS: usize = 2;
    const IN_FLIGHT_PER_SUBMITTER: usize = 2;
    const CLAIMERS_PER_PROCESS: usize = 4;

    let started = Instant::now();
    let dir = common::data_dir();
    let config = write_config(dir.path());
    let args = ["--config", config.to_str().unwrap()];
    let a = db.connect(dir.path(), &args, Era::Legacy).await;
    let b = db.connect(dir.path(), &args, Era::Stateless).await;
    let peers = [a.peer().clone(), b.peer().clone()];

    let mut agents = Vec::new();
    for (p, peer) in peers.iter().enumerate() {
        for i in 0..CLAIMERS_PER_PROCESS {
            let (id, token) = register(peer, &format!("stress-{p}-{i}")).await;
            agents.push((p, id, token));
        }
    }

    // Submitters: each takes the next number from a shared counter, several calls in flight.
    let next = Arc::new(AtomicUsize::new(0));
    let submitting = Arc::new(AtomicBool::new(true));
    let mut submitters = Vec::new();
    for peer in &peers {
        for _ in 0..SUBMITTERS_PER_PROCESS * IN_FLIGHT_PER_SUBMITTER {
            let peer = peer.clone();
            let next = next.clone();
            submitters.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= TASKS {
                        return mine;
                    }
                    let s = call_retrying(
                        &peer,
                        "task_submit",
                        json!({"kind": "stress", "params": {"n": n}, "capabilities": ["stress"],
                               "idempotency_key": format!("stress-{n}")}),
                    )
                    .await;
                    assert_eq!(s["created"], true, "{s:#}");
                    mine.push(s["task_id"].as_str().unwrap().to_string());
                }
            }));
        }
    }
    let mut claimers = Vec::new();
    for (p, id, token) in &agents {
        claimers.push(tokio::spawn(claimer(
            peers[*p].clone(),
            id.clone(),
            token.clone(),
            submitting.clone(),
        )));
    }
    let mut submitted = HashSet::new();
    for s in submitters {
        for id in s.await.unwrap() {
            assert!(submitted.insert(id), "a task id was returned twice");
        }
    }
    let submit_time = started.elapsed();
    submitting.store(false, Ordering::SeqCst);
    assert_eq!(submitted.len(), TASKS);

    // Who completed what, by the claimers' own account.
    let mut completed_by: HashMap<String, String> = HashMap::new();
    for ((_, agent_id, _), c) in agents.iter().zip(claimers) {
        let done = c.await.unwrap();
        assert!(!done.is_empty(), "agent {agent_id} got no work");
        for id in done {
            assert!(
                completed_by.insert(id.clone(), agent_id.clone()).is_none(),
                "task {id} was completed twice"
            );
        }
    }
    let work_time = started.elapsed();
    assert_eq!(completed_by.len(), TASKS, "tasks lost");
    assert!(completed_by.keys().all(|id| submitted.contains(id)));

    // The queue's own account.
    let stats = call_ok(&peers[0], "queue_stats", json!({})).await;
    assert_eq!(stats["by_status"], json!({"completed": TASKS}), "{stats:#}");
    assert_eq!(stats["dead_letters"], 0);
    let tasks = all_tasks(&peers[1], json!({"status": "completed"})).await;
    assert_eq!(tasks.len(), TASKS);
    let mut numbers = HashSet::new();
    for t in &tasks {
        let id = t["id"].as_str().unwrap();
        assert_eq!(t["attempts"], 1, "task leased more than once: {t:#}");
        assert_eq!(
            t["result"]["agent"], completed_by[id],
            "the result names another agent than the one that completed it: {t:#}"
        );
        assert!(numbers.insert(t["params"]["n"].as_u64().unwrap()));
    }
    assert_eq!(numbers.len(), TASKS);

    // The audit log's account: one lease and one completion per task, by the right agent.
    let completions = all_events(&peers[0], "task.completed").await;
    assert_eq!(completions.len(), TASKS);
    let mut seen = HashSet::new();
    for e in &completions {
        let id = e["subject"].as_str().unwrap();
        assert!(seen.insert(id.to_string()), "two task.completed for {id}");
        assert_eq!(e["actor"], format!("agent:{}", completed_by[id]));
    }
    let leases = all_events(&peers[1], "task.leased").await;
    assert_eq!(leases.len(), TASKS, "some task was leased twice");
    let verify = call_ok(&peers[0], "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    eprintln!(
        "10k stress: submitted in {submit_time:?}, all completed in {work_time:?}, verified in {:?}; {} storage_busy retries",
        started.elapsed(),
        BUSY.load(Ordering::SeqCst)
    );
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn a_killed_coordinator_loses_no_task(db: Db) {
    const TASKS: usize = 50;
    const HELD: usize = 10;
    let dir = common::data_dir();
    let config = write_config(dir.path());
    let args = ["--config", config.to_str().unwrap()];

    let (transport, _) =
        rmcp::transport::TokioChildProcess::builder(db.command(dir.path(), &args))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
    let pid = transport.id().expect("child pid");
    let first = rmcp::ClientServiceExt::serve_with_lifecycle(
        common::client_config("doomed"),
        transport,
        rmcp::ClientLifecycleMode::Initialize,
    )
    .await
    .unwrap();
    let (doomed_id, doomed_token) = register(&first, "doomed-worker").await;
    // Leases of 3 s: long enough that the new process still finds them held, short enough to
    // wait for.
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let s = call_ok(
            &first,
            "task_submit",
            json!({"kind": "crash", "params": {"n": n}, "timeout_seconds": 3.0}),
        )
        .await;
        ids.push(s["task_id"].as_str().unwrap().to_string());
    }
    let mut held = HashSet::new();
    for _ in 0..HELD {
        let c = call_ok(&first, "task_claim", json!({"token": doomed_token})).await;
        held.insert(c["task"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(held.len(), HELD);

    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    drop(first);

    let second = db.connect(dir.path(), &args, Era::Stateless).await;
    let stats = call_ok(&second, "queue_stats", json!({})).await;
    assert_eq!(stats["by_status"]["queued"], TASKS - HELD, "{stats:#}");
    assert_eq!(stats["by_status"]["leased"], HELD, "{stats:#}");
    let (worker_id, token) = register(&second, "survivor").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut completed = HashSet::new();
    while completed.len() < TASKS {
        assert!(
            Instant::now() < deadline,
            "queue not drained: {completed:?}"
        );
        let c = call_ok(&second, "task_claim", json!({"token": token})).await;
        let Some(task) = c["task"].as_object() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = task["id"].as_str().unwrap().to_string();
        let r = call_ok(
            &second,
            "task_report",
            json!({"token": token, "task_id": id, "result": {"agent": worker_id}}),
        )
        .await;
        assert_eq!(r["status"], "completed");
        assert!(completed.insert(id), "a task was handed out twice");
    }
    let stats = call_ok(&second, "queue_stats", json!({})).await;
    assert_eq!(stats["by_status"], json!({"completed": TASKS}), "{stats:#}");
    for id in &ids {
        let t = call_ok(&second, "task_get", json!({"task_id": id})).await;
        assert_eq!(t["status"], "completed");
        assert_eq!(t["result"]["agent"], worker_id.as_str());
        let expected_attempts = if held.contains(id) { 2 } else { 1 };
        assert_eq!(t["attempts"], expected_attempts, "{t:#}");
    }
    let completions = all_events(&second, "task.completed").await;
    assert_eq!(completions.len(), TASKS);
    let subjects: HashSet<&str> = completions
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), TASKS);
    let timeouts = all_events(&second, "task.timed_out").await;
    let timed_out: HashSet<String> = timeouts
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        timed_out, held,
        "exactly the held leases timed out, once each"
    );
    assert_eq!(timeouts.len(), HELD);
    for e in &timeouts {
        assert_eq!(e["actor"], "system:mcp-coordinator");
        assert_eq!(e["detail"]["leased_by"], doomed_id.as_str());
    }
    let verify = call_ok(&second, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    second.cancel().await.unwrap();
}
}
