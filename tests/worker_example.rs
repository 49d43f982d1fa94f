//! The worker example (`examples/worker.rs`; `cargo test` builds it, and so does this test when
//! run alone) against real coordinators on one data directory: two workers share the queue and
//! run sums, uppercasing, a sleep with progress, a task that fails once and is retried, and an
//! unknown kind that fails for good; on SIGINT each hands back unfinished work, deregisters and
//! exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};

const CAPABILITY: &str = "data-processing";
const CONFIG: &str = "[tasks]\nbackoff_base_ms = 50\n\n[agents]\nheartbeat_interval_ms = 1000\n";

/// A worker process whose stderr goes to a log file in the data directory.
struct Worker {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Worker {
    fn spawn(dir: &Path, config: &Path, name: &'static str) -> Self {
        let bin = common::worker::worker_bin();
        let log = dir.join(format!("{name}.log"));
        let child = tokio::process::Command::new(bin)
            .args(["--name", name, "--capability", CAPABILITY, "--coordinator"])
            .arg(common::BIN)
            .arg("--data-dir")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .args(["--log-level", "debug"])
            .env_remove("MCP_COORDINATOR_DATA_DIR")
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the worker example");
        Worker { name, child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn interrupt(&self) {
        let pid = self.child.id().expect("worker still running");
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -INT {pid}");
    }
}

async fn submit(client: &Peer<RoleClient>, kind: &str, params: Value, extra: Value) -> String {
    let mut args = json!({"kind": kind, "params": params, "capabilities": [CAPABILITY]});
    if let Value::Object(extra) = extra {
        args.as_object_mut().unwrap().extend(extra);
    }
    let submitted = common::call_ok(client, "task_submit", args).await;
    submitted["task_id"].as_str().unwrap().to_string()
}

/// Names of the registered agents with our capability.
async fn agent_names(client: &Peer<RoleClient>) -> BTreeMap<String, Value> {
    let list = common::call_ok(client, "agent_list", json!({"capability": CAPABILITY})).await;
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

fn all_logs(workers: &[Worker]) -> String {
    workers
        .iter()
        .map(|w| format!("--- {} ---\n{}", w.name, w.logs()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_share_the_queue_and_leave_cleanly() {
    let dir = common::data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let client = common::connect(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        common::Era::Legacy,
    )
    .await;

    let mut workers = vec![
        Worker::spawn(dir.path(), &config, "w1"),
        Worker::spawn(dir.path(), &config, "w2"),
    ];

    // Both register before any work is queued.
    let start = Instant::now();
    loop {
        let names = agent_names(&client).await;
        if names.contains_key("w1") && names.contains_key("w2") {
            for a in names.values() {
                assert_eq!(a["agent_type"], "worker", "{a:#}");
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "workers did not register: {names:?}\n{}",
            all_logs(&workers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A long-ish sleep first (high priority), so one worker is busy while the other must take
    // the small tasks.
    let sleep = submit(
        &client,
        "sleep",
        json!({"ms": 1500}),
        json!({"priority": "high"}),
    )
    .await;
    let flaky = submit(
        &client,
        "sum",
        json!({"numbers": [40, 2], "fail_times": 1}),
        json!({"max_retries": 2}),
    )
    .await;
    let unknown = submit(&client, "teleport", json!({"to": "mars"}), json!({})).await;
    let upper = submit(
        &client,
        "uppercase",
        json!({"text": "hello, worker"}),
        json!({}),
    )
    .await;
    let mut sums = Vec::new();
    for i in 0..20i64 {
        let numbers = vec![i, i * i, -3, 1000];
        let expected: i64 = numbers.iter().sum();
        let id = submit(&client, "sum", json!({"numbers": numbers}), json!({})).await;
        sums.push((id, expected));
    }
    let total = 4 + sums.len();

    // Wait until every task is final, watching the sleep's progress on the way.
    let mut progress_seen: Vec<(f64, String)> = Vec::new();
    let start = Instant::now();
    let tasks: BTreeMap<String, Value> = loop {
        let page = common::call_ok(&client, "task_list", json!({"limit": 500})).await;
        let tasks: BTreeMap<String, Value> = page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_str().unwrap().to_string(), t.clone()))
            .collect();
        assert_eq!(tasks.len(), total);
        let s = &tasks[&sleep];
        if s["status"] == "running"
            && let Some(p) = s["progress"].as_f64()
            && p > 0.0
        {
            progress_seen.push((p, s["message"].as_str().unwrap_or_default().to_string()));
        }
        let finals = ["completed", "failed", "dead", "cancelled"];
        if tasks
            .values()
            .all(|t| finals.contains(&t["status"].as_str().unwrap()))
        {
            break tasks;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tasks not final after 30 s: {:#}\n{}",
            Value::Array(tasks.values().cloned().collect()),
            all_logs(&workers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = all_logs(&workers);

    for (id, expected) in &sums {
        let t = &tasks[id];
        assert_eq!(t["status"], "completed", "{t:#}\n{logs}");
        assert_eq!(t["result"]["sum"], *expected, "{t:#}");
        assert_eq!(t["attempts"], 1, "{t:#}");
    }
    let t = &tasks[&upper];
    assert_eq!(t["status"], "completed", "{t:#}\n{logs}");
    assert_eq!(t["result"]["text"], "HELLO, WORKER");

    let t = &tasks[&sleep];
    assert_eq!(t["status"], "completed", "{t:#}\n{logs}");
    assert_eq!(t["result"]["slept_ms"], 1500);
    assert_eq!(t["progress"], 1.0);
    assert!(
        progress_seen.len() >= 3,
        "few progress reports seen: {progress_seen:?}"
    );
    assert!(
        progress_seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went backwards: {progress_seen:?}"
    );
    assert!(
        progress_seen
            .iter()
            .all(|(p, m)| *p < 1.0 && m.starts_with("slept ")),
        "{progress_seen:?}"
    );

    let t = &tasks[&flaky];
    assert_eq!(t["status"], "completed", "{t:#}\n{logs}");
    assert_eq!(t["result"]["sum"], 42);
    assert_eq!(t["attempts"], 2, "{t:#}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap()
            .contains("simulated failure of attempt 1"),
        "{t:#}"
    );

    let t = &tasks[&unknown];
    assert_eq!(t["status"], "failed", "{t:#}\n{logs}");
    assert_eq!(t["attempts"], 1, "{t:#}");
    assert!(
        t["last_error"]
            .as_str()
            .unwrap()
            .contains("unknown task kind \"teleport\""),
        "{t:#}"
    );

    // Whoever took the sleep was busy for 1.5 s, so the other one ran the rest.
    let did_work: BTreeSet<String> = tasks
        .values()
        .filter(|t| t["status"] == "completed")
        .map(|t| t["result"]["worker"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        did_work,
        BTreeSet::from(["w1".to_string(), "w2".to_string()]),
        "both workers should have run tasks\n{logs}"
    );

    // They heartbeat: still active (no heartbeat for two intervals would make them stale).
    let agents = agent_names(&client).await;
    for name in ["w1", "w2"] {
        assert_eq!(agents[name]["health"], "active", "{agents:#?}\n{logs}");
    }

    // Idle workers long-poll: a task submitted to them is leased within milliseconds (two
    // workers polling with a backoff up to 1 s took up to that long, a third of a second on
    // average).
    let mut pickup = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let id = submit(&client, "sum", json!({"numbers": [2, 2]}), json!({})).await;
        let start = Instant::now();
        while common::call_ok(&client, "task_get", json!({"task_id": id})).await["status"]
            != "completed"
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}",
                all_logs(&workers)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let at = |action: &'static str| {
            let client = client.peer().clone();
            let id = id.clone();
            async move {
                let page = common::call_ok(
                    &client,
                    "audit_query",
                    json!({"action": action, "subject": id}),
                )
                .await;
                let ts = page["events"][0]["ts"].as_str().unwrap().to_string();
                time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
                    .unwrap()
            }
        };
        pickup.push(at("task.leased").await - at("task.submitted").await);
    }
    assert!(
        pickup
            .iter()
            .all(|d| *d < time::Duration::milliseconds(200)),
        "idle workers took {pickup:?} to lease a new task\n{}",
        all_logs(&workers)
    );

    // A task still running at SIGINT is handed back after the grace period.
    let long = submit(&client, "sleep", json!({"ms": 60_000}), json!({})).await;
    let start = Instant::now();
    loop {
        let t = common::call_ok(&client, "task_get", json!({"task_id": long})).await;
        if t["status"] == "running" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the long sleep never started: {t:#}\n{}",
            all_logs(&workers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for w in &workers {
        w.interrupt();
    }
    for w in &mut workers {
        let status = tokio::time::timeout(Duration::from_secs(5), w.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} still running 5 s after SIGINT\n{}", w.name, w.logs()))
            .unwrap();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            w.name,
            w.logs()
        );
        assert!(w.logs().contains("deregistered"), "{}", w.logs());
    }

    let t = common::call_ok(&client, "task_get", json!({"task_id": long})).await;
    assert_eq!(t["status"], "queued", "{t:#}\n{}", all_logs(&workers));
    assert_eq!(t["last_error"], "worker shutting down", "{t:#}");
    assert_eq!(t["leased_by"], Value::Null, "{t:#}");

    let agents = agent_names(&client).await;
    assert!(
        agents.is_empty(),
        "deregistered workers are still listed: {agents:#?}"
    );
    client.cancel().await.unwrap();
}

/// Progress notifications as received: progress, total, message.
type Seen = Vec<(f64, Option<f64>, String)>;

/// A client that records the progress notifications it receives.
#[derive(Clone, Default)]
struct ProgressWatcher {
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
}

impl rmcp::ClientHandler for ProgressWatcher {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        common::client_config("progress-watcher")
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().push((
            params.progress,
            params.total,
            params.message.unwrap_or_default(),
        ));
    }
}

/// The built-in six-stage pipeline, end to end over MCP: two worker-example processes run the
/// stages, the assistant's `pipeline_run` waits with a progress notification per stage, and
/// every stage's output reaches the next.
#[tokio::test(flavor = "multi_thread")]
async fn six_stage_template_runs_on_two_workers_with_progress() {
    use rmcp::ServiceExt;
    let dir = common::data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let watcher = ProgressWatcher::default();
    let transport = rmcp::transport::TokioChildProcess::new(common::command(
        dir.path(),
        &["--config", config.to_str().unwrap()],
    ))
    .unwrap();
    let client = watcher.clone().serve(transport).await.unwrap();
    let workers = [
        Worker::spawn(dir.path(), &config, "w1"),
        Worker::spawn(dir.path(), &config, "w2"),
    ];

    let created = common::call_ok(
        client.peer(),
        "pipeline_create",
        json!({"name": "nightly-etl", "template": "six_stage"}),
    )
    .await;
    assert_eq!(created["version"], 1);
    let order: Vec<&str> = created["pipeline"]["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "ingestion",
            "transformation",
            "analysis",
            "validation",
            "processing",
            "output"
        ]
    );

    let mut params = rmcp::model::CallToolRequestParams::new("pipeline_run").with_arguments(
        json!({"pipeline": "nightly-etl", "input": {"records": 42},
               "parameters": {"stage_ms": 50}, "wait_seconds": 120})
        .as_object()
        .cloned()
        .unwrap(),
    );
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::Number(42),
    ));
    params.meta = Some(meta);
    let result = client.peer().call_tool(params).await.unwrap();
    let out = result.structured_content.unwrap();
    assert_eq!(
        out["status"],
        "completed",
        "{out:#}\n{}",
        all_logs(&workers)
    );
    assert_eq!(out["wait"], "finished");
    let run = &out["run"];
    assert_eq!(run["stages_done"], 6);
    let agents = agent_names(client.peer()).await;
    let ids: BTreeSet<&str> = agents.values().map(|a| a["id"].as_str().unwrap()).collect();
    let mut previous: Option<String> = None;
    for stage in run["stages"].as_array().unwrap() {
        assert_eq!(stage["status"], "completed", "{stage:#}");
        assert_eq!(stage["attempts"], 1, "{stage:#}");
        assert!(
            ids.contains(stage["agent_id"].as_str().unwrap()),
            "{stage:#}"
        );
        assert_eq!(stage["output"]["records"], 42, "{stage:#}");
        let after: Vec<String> = serde_json::from_value(stage["output"]["after"].clone()).unwrap();
        assert_eq!(after, previous.iter().cloned().collect::<Vec<_>>());
        previous = Some(stage["name"].as_str().unwrap().to_string());
    }

    // One notification when the wait began and one per finished stage, counting up to 6/6.
    // The client handles notifications on its own task, so the last may land just after the
    // result.
    let start = Instant::now();
    while watcher.seen.lock().unwrap().len() < 7 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // rmcp's client may run notification handlers out of order, so sort by progress (the
    // server sends them in order; each value must appear exactly once).
    let mut seen = watcher.seen.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    let values: Vec<f64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "{seen:#?}");
    assert!(seen.iter().all(|s| s.1 == Some(6.0)));
    assert!(seen[6].2.contains("6/6 stages done"), "{seen:#?}");
    assert!(
        seen[1..6].iter().any(|s| s.2.contains("now: ")),
        "messages name the running stage: {seen:#?}"
    );

    let verify = common::call_ok(client.peer(), "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true);
    for w in &workers {
        w.interrupt();
    }
    client.cancel().await.unwrap();
}
