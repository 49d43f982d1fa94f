//! Pipelines over MCP against the real binary, with the test acting as the worker agents
//! through `task_claim`/`task_report`: a diamond's middle stages run in parallel, required and
//! optional failures, per-stage retries, cancellation, versions and validation, run resources
//! and subscriptions, approval stages decided at the CLI, and a coordinator killed with -9 in
//! the middle of a run that is started again and finishes it, each stage completed once, with
//! the completion webhook delivered to a loopback server after a failed first attempt. Every
//! test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Db, Era, both_backends, call, call_ok, data_dir};
use rmcp::ServiceExt;
use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::{NotificationContext, Peer, RoleClient};
use serde_json::{Value, json};

const CONFIG: &str = "[tasks]\nbackoff_base_ms = 20\n\n[pipelines]\nwebhook_backoff_ms = 100\n";

fn config(dir: &std::path::Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.to_str().unwrap().to_string()
}

async fn register(c: &Peer<RoleClient>, name: &str, caps: &[&str]) -> String {
    let r = call_ok(
        c,
        "agent_register",
        json!({"name": name, "capabilities": caps}),
    )
    .await;
    r["token"].as_str().unwrap().to_string()
}

/// Claims one task, waiting up to 5 s for one to be queued.
async fn claim(c: &Peer<RoleClient>, token: &str) -> Value {
    let start = Instant::now();
    loop {
        let r = call_ok(c, "task_claim", json!({"token": token})).await;
        if let Some(task) = r.get("task").filter(|t| !t.is_null()) {
            return task.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no task to claim: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn claim_none(c: &Peer<RoleClient>, token: &str) {
    let r = call_ok(c, "task_claim", json!({"token": token})).await;
    assert!(r.get("task").is_none_or(Value::is_null), "{r:#}");
}

async fn complete(c: &Peer<RoleClient>, token: &str, task: &Value, result: Value) {
    call_ok(
        c,
        "task_report",
        json!({"token": token, "task_id": task["id"], "result": result}),
    )
    .await;
}

async fn fail(c: &Peer<RoleClient>, token: &str, task: &Value, retryable: bool) {
    call_ok(
        c,
        "task_report",
        json!({"token": token, "task_id": task["id"],
               "error": {"message": "boom", "retryable": retryable}}),
    )
    .await;
}

async fn run_get(c: &Peer<RoleClient>, run_id: &str) -> Value {
    call_ok(c, "pipeline_run_get", json!({"run_id": run_id})).await["run"].clone()
}

fn stage<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {run:#}"))
}

fn stage_of(task: &Value) -> String {
    task["params"]["pipeline"]["stage"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Audit events of one action about one subject.
async fn events(c: &Peer<RoleClient>, action: &str, subject: &str) -> Vec<Value> {
    let r = call_ok(
        c,
        "audit_query",
        json!({"action": action, "subject": subject, "limit": 500}),
    )
    .await;
    r["events"].as_array().unwrap().clone()
}

/// A client that records `notifications/resources/updated`.
#[derive(Clone, Default)]
struct Subscriber {
    updates: Arc<Mutex<Vec<String>>>,
}

impl rmcp::ClientHandler for Subscriber {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        common::client_config("subscriber")
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.updates.lock().unwrap().push(params.uri);
    }
}

both_backends! {
#[tokio::test(flavor = "multi_thread")]
async fn diamond_runs_its_middle_stages_in_parallel_and_is_a_subscribable_resource(db: Db) {
    let dir = data_dir();
    let subscriber = Subscriber::default();
    let transport =
        rmcp::transport::TokioChildProcess::new(db.command(dir.path(), &[])).unwrap();
    let client = subscriber.clone().serve(transport).await.unwrap();
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "diamond", "description": "fan out and in",
               "stages": [{"name": "a", "type": "etl", "params": {"mode": "fast"}},
                          {"name": "b", "type": "etl"}, {"name": "c", "type": "etl"},
                          {"name": "d", "type": "etl"}],
               "dependencies": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"},
                                {"from": "b", "to": "d"}, {"from": "c", "to": "d"}]}),
    )
    .await;
    let w1 = register(c, "w1", &["etl"]).await;
    let w2 = register(c, "w2", &["etl"]).await;
    let started = call_ok(
        c,
        "pipeline_run",
        json!({"pipeline": "diamond", "input": {"n": 7}, "parameters": {"p": true}}),
    )
    .await;
    assert_eq!(started["wait"], "no_wait");
    assert!(started.get("warnings").is_none(), "{started:#}");
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let uri = format!("coordinator://pipeline-runs/{run_id}");
    assert_eq!(started["run"]["resource_uri"], uri.as_str());

    // The run is a resource, listed, readable and subscribable.
    let templates = client.peer().list_all_resource_templates().await.unwrap();
    assert_eq!(
        templates[0].uri_template,
        "coordinator://pipeline-runs/{run_id}"
    );
    let listed = client.peer().list_all_resources().await.unwrap();
    assert!(listed.iter().any(|r| r.uri == uri), "{listed:?}");
    // resources/subscribe is the initialize-era way (this client's era), hence deprecated.
    #[allow(deprecated)]
    client
        .peer()
        .subscribe(rmcp::model::SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let missing = client
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "coordinator://pipeline-runs/run_nope",
        ))
        .await;
    assert!(missing.is_err(), "{missing:?}");

    let a = claim(c, &w1).await;
    assert_eq!(stage_of(&a), "a");
    assert_eq!(a["kind"], "etl");
    assert_eq!(a["params"]["input"], json!({"n": 7}));
    assert_eq!(a["params"]["parameters"], json!({"p": true}));
    assert_eq!(a["params"]["params"], json!({"mode": "fast"}));
    claim_none(c, &w2).await; // b and c wait for a
    complete(c, &w1, &a, json!({"rows": 10})).await;

    // b and c are both leased before either completes.
    let first = claim(c, &w1).await;
    let second = claim(c, &w2).await;
    let mut middle = [stage_of(&first), stage_of(&second)];
    middle.sort();
    assert_eq!(middle, ["b", "c"]);
    assert_eq!(first["params"]["upstream"], json!({"a": {"rows": 10}}));
    let run = run_get(c, &run_id).await;
    assert_eq!(stage(&run, "b")["status"], "running");
    assert_eq!(stage(&run, "c")["status"], "running");
    assert_eq!(stage(&run, "d")["status"], "waiting");
    let mut current: Vec<String> = serde_json::from_value(run["current_stages"].clone()).unwrap();
    current.sort();
    assert_eq!(current, ["b", "c"]);
    complete(c, &w1, &first, json!({"from": stage_of(&first)})).await;
    claim_none(c, &w1).await; // d waits for both
    complete(c, &w2, &second, json!({"from": stage_of(&second)})).await;

    let d = claim(c, &w2).await;
    assert_eq!(stage_of(&d), "d");
    assert_eq!(
        d["params"]["upstream"],
        json!({"b": {"from": "b"}, "c": {"from": "c"}})
    );
    complete(c, &w2, &d, json!({"done": true})).await;

    let run = run_get(c, &run_id).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["stages_done"], 4);
    assert_eq!(stage(&run, "d")["output"], json!({"done": true}));
    assert!(stage(&run, "a")["duration_seconds"].as_f64().is_some());

    let read = client
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let rmcp::model::ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("expected text contents");
    };
    let body: Value = serde_json::from_str(text).unwrap();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["id"], run_id.as_str());

    // Updates arrived for the subscribed run as it moved.
    let start = Instant::now();
    while subscriber.updates.lock().unwrap().len() < 2 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let updates = subscriber.updates.lock().unwrap().clone();
    assert!(updates.len() >= 2, "{updates:?}");
    assert!(updates.iter().all(|u| *u == uri));

    // Every stage transition is in the audit log, in the order it happened.
    let done = events(c, "pipeline.stage_completed", &run_id).await;
    assert_eq!(done.len(), 4);
    assert_eq!(events(c, "pipeline.run_finished", &run_id).await.len(), 1);
    client.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn required_failure_skips_dependents_optional_failure_does_not_and_stages_retry(db: Db) {
    let dir = data_dir();
    let cfg = config(dir.path());
    let client = db.connect(dir.path(), &["--config", &cfg], Era::Stateless).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "mixed",
               "stages": [
                   {"name": "lint", "type": "check", "required": false},
                   {"name": "build", "type": "build", "retries": 1},
                   {"name": "ship", "type": "build"},
                   {"name": "notify", "type": "check", "required": false}],
               "dependencies": [{"from": "lint", "to": "build"}, {"from": "build", "to": "ship"},
                                {"from": "ship", "to": "notify"}]}),
    )
    .await;
    let w = register(c, "w", &["check", "build"]).await;
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "mixed"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The optional stage fails for good: recorded, and what depends on it still runs.
    let lint = claim(c, &w).await;
    fail(c, &w, &lint, false).await;
    let build = claim(c, &w).await;
    assert_eq!(stage_of(&build), "build");
    assert!(build["params"]["upstream_errors"]["lint"].is_string());
    // The required stage fails once (retryable) and is retried as the same task...
    fail(c, &w, &build, true).await;
    let again = claim(c, &w).await;
    assert_eq!(again["id"], build["id"]);
    assert_eq!(again["attempts"], 2);
    // ...then fails again with its one retry used up: dead, the stage fails, the run fails,
    // and everything after it is skipped.
    fail(c, &w, &again, true).await;
    claim_none(c, &w).await;
    let run = run_get(c, &run_id).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(stage(&run, "lint")["status"], "failed");
    assert_eq!(stage(&run, "build")["status"], "failed");
    assert!(
        stage(&run, "build")["error"]
            .as_str()
            .unwrap()
            .contains("dead after 2 attempt(s)"),
        "{run:#}"
    );
    assert_eq!(stage(&run, "ship")["status"], "skipped");
    assert_eq!(stage(&run, "notify")["status"], "skipped");
    assert!(run["error"].as_str().unwrap().contains("build"), "{run:#}");
    assert_eq!(run["stages_done"], 4);

    // A run that only loses optional stages completes.
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "lenient",
               "stages": [{"name": "x", "type": "check", "required": false},
                          {"name": "y", "type": "check"}],
               "dependencies": [{"from": "x", "to": "y"}]}),
    )
    .await;
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "lenient"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let x = claim(c, &w).await;
    fail(c, &w, &x, false).await;
    let y = claim(c, &w).await;
    complete(c, &w, &y, json!({})).await;
    let run = run_get(c, &run_id).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(stage(&run, "x")["status"], "failed");
    client.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn cancelling_a_run_cancels_its_tasks_and_delete_waits_for_it(db: Db) {
    let dir = data_dir();
    let client = db.connect(dir.path(), &[], Era::Legacy).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "long",
               "stages": [{"name": "one", "type": "etl"}, {"name": "two", "type": "etl"},
                          {"name": "side", "type": "etl"}],
               "dependencies": [{"from": "one", "to": "two"}]}),
    )
    .await;
    let w = register(c, "w", &["etl"]).await;
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "long"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Either root stage may come first (same priority, queued in the same millisecond).
    let one = claim(c, &w).await;
    assert!(
        ["one", "side"].contains(&stage_of(&one).as_str()),
        "{one:#}"
    );

    // Deleting is refused while the run is running.
    let refused = call(c, "pipeline_delete", json!({"pipeline": "long"}))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    let err = refused.structured_content.unwrap();
    assert_eq!(err["code"], "conflict");
    assert!(err["message"].as_str().unwrap().contains("still running"));

    let cancelled = call_ok(
        c,
        "pipeline_run_cancel",
        json!({"run_id": run_id, "reason": "wrong input"}),
    )
    .await;
    assert_eq!(cancelled["status"], "cancelled");
    let run = &cancelled["run"];
    for s in ["one", "two", "side"] {
        assert_eq!(stage(run, s)["status"], "cancelled", "{run:#}");
    }
    assert!(run["error"].as_str().unwrap().contains("wrong input"));
    let task = call_ok(c, "task_get", json!({"task_id": one["id"]})).await;
    assert_eq!(task["status"], "cancelled");
    // The agent still working on it is told to drop the work.
    let late = call(
        c,
        "task_report",
        json!({"token": w, "task_id": one["id"], "result": {}}),
    )
    .await
    .unwrap();
    assert_eq!(late.structured_content.unwrap()["code"], "not_leaseholder");
    claim_none(c, &w).await;
    let again = call(c, "pipeline_run_cancel", json!({"run_id": run_id}))
        .await
        .unwrap();
    assert_eq!(again.structured_content.unwrap()["code"], "conflict");

    let deleted = call_ok(c, "pipeline_delete", json!({"pipeline": "long"})).await;
    assert!(deleted["deleted_at"].is_string());
    // Its runs stay readable; it cannot run again; the name is free.
    assert_eq!(run_get(c, &run_id).await["status"], "cancelled");
    let gone = call(c, "pipeline_run", json!({"pipeline": deleted["id"]}))
        .await
        .unwrap();
    assert_eq!(gone.structured_content.unwrap()["code"], "conflict");
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "long", "stages": [{"name": "only"}]}),
    )
    .await;
    client.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn definitions_are_validated_and_versioned_and_runs_pin_their_version(db: Db) {
    let dir = data_dir();
    let client = db.connect(dir.path(), &[], Era::Legacy).await;
    let c = client.peer();
    let bad = |args: Value| {
        let c = c.clone();
        async move {
            common::invalid_argument("pipeline_create", call(&c, "pipeline_create", args).await).1
        }
    };
    let cycle = bad(json!({"name": "loop",
        "stages": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "dependencies": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"},
                         {"from": "c", "to": "b"}]}))
    .await;
    assert!(cycle.contains("cycle: b -> c -> b"), "{cycle}");
    let dup = bad(json!({"name": "dup", "stages": [{"name": "a"}, {"name": "a"}]})).await;
    assert!(dup.contains("stages[1].name"), "{dup}");
    let unknown = bad(json!({"name": "u", "stages": [{"name": "a"}],
                             "dependencies": [{"from": "a", "to": "zz"}]}))
    .await;
    assert!(
        unknown.contains("dependencies[0].to") && unknown.contains("\"zz\""),
        "{unknown}"
    );
    let empty = bad(json!({"name": "e", "stages": []})).await;
    assert!(empty.contains("at least one stage"), "{empty}");
    let both = bad(json!({"name": "t", "template": "six_stage", "stages": [{"name": "a"}]})).await;
    assert!(both.contains("template"), "{both}");

    let v1 = call_ok(
        c,
        "pipeline_create",
        json!({"name": "report", "stages": [{"name": "gather", "type": "etl"}]}),
    )
    .await;
    let id = v1["pipeline_id"].as_str().unwrap().to_string();
    // Same name without pipeline_id: refused, with the way to add a version.
    let taken = call(
        c,
        "pipeline_create",
        json!({"name": "report", "stages": [{"name": "x"}]}),
    )
    .await
    .unwrap();
    let taken = taken.structured_content.unwrap();
    assert_eq!(taken["code"], "conflict");
    assert!(taken["message"].as_str().unwrap().contains(&id));
    let v2 = call_ok(
        c,
        "pipeline_create",
        json!({"name": "report", "pipeline_id": id,
               "stages": [{"name": "gather", "type": "etl"}, {"name": "send", "type": "mail"}],
               "dependencies": [{"from": "gather", "to": "send"}]}),
    )
    .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["created"], true);
    let same = call_ok(
        c,
        "pipeline_create",
        json!({"name": "report", "pipeline_id": id,
               "stages": [{"name": "gather", "type": "etl"}, {"name": "send", "type": "mail"}],
               "dependencies": [{"from": "gather", "to": "send"}]}),
    )
    .await;
    assert_eq!(same["created"], false);
    assert_eq!(same["version"], 2);

    let old = call_ok(
        c,
        "pipeline_get",
        json!({"pipeline": "report", "version": 1}),
    )
    .await;
    assert_eq!(old["stages"].as_array().unwrap().len(), 1);
    assert_eq!(old["latest_version"], 2);
    let pinned = call_ok(c, "pipeline_run", json!({"pipeline": id, "version": 1})).await;
    assert_eq!(pinned["run"]["version"], 1);
    // No agent offers `etl` yet: the result says why the run will not move.
    let warning = pinned["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("\"etl\"") && warning.contains("gather"),
        "{pinned:#}"
    );
    assert_eq!(pinned["run"]["stages_total"], 1);
    let latest = call_ok(c, "pipeline_run", json!({"pipeline": "report"})).await;
    assert_eq!(latest["run"]["version"], 2);
    assert_eq!(latest["run"]["stages_total"], 2);

    let list = call_ok(c, "pipeline_list", json!({})).await;
    assert_eq!(list["pipelines"][0]["name"], "report");
    assert_eq!(list["pipelines"][0]["latest_version"], 2);
    assert_eq!(list["templates"][0]["template"], "six_stage");
    assert_eq!(list["recent_runs"].as_array().unwrap().len(), 2);
    let missing = call(c, "pipeline_get", json!({"pipeline": "nope"}))
        .await
        .unwrap();
    assert_eq!(missing.structured_content.unwrap()["code"], "not_found");
    client.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn approval_stage_blocks_only_its_branch_and_a_cli_decision_moves_it(db: Db) {
    let dir = data_dir();
    let client = db.connect(dir.path(), &[], Era::Stateless).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "gated",
               "stages": [{"name": "prep", "type": "etl"},
                          {"name": "sign-off", "type": "review", "approval": true, "risk": "high"},
                          {"name": "deploy", "type": "etl"},
                          {"name": "docs", "type": "etl"}],
               "dependencies": [{"from": "prep", "to": "sign-off"},
                                {"from": "sign-off", "to": "deploy"},
                                {"from": "prep", "to": "docs"}]}),
    )
    .await;
    let w = register(c, "w", &["etl"]).await;
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "gated"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let prep = claim(c, &w).await;
    complete(c, &w, &prep, json!({"built": "v1.2"})).await;

    // The other branch goes on while the gate waits.
    let docs = claim(c, &w).await;
    assert_eq!(stage_of(&docs), "docs");
    claim_none(c, &w).await;
    // A 2026-07-28 client waiting is told to ask with approval_request.
    let waited = call_ok(
        c,
        "pipeline_run_get",
        json!({"run_id": run_id, "wait_seconds": 10}),
    )
    .await;
    assert_eq!(waited["wait"], "needs_approval", "{waited:#}");
    let approval_id = waited["run"]["awaiting_approvals"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(waited["message"].as_str().unwrap().contains(&approval_id));
    let approval = call_ok(c, "approval_get", json!({"approval_id": approval_id})).await;
    assert_eq!(approval["kind"], "pipeline_stage");
    assert_eq!(approval["risk"], "high");
    assert_eq!(approval["action"]["stage"], "sign-off");
    assert_eq!(
        approval["action"]["upstream"]["prep"],
        json!({"built": "v1.2"})
    );
    complete(c, &w, &docs, json!({})).await;

    // A person approves at the terminal; the coordinator's tick moves the run on.
    let (code, out, err) = db.cli(
        dir.path(),
        &[
            "approvals",
            "approve",
            &approval_id,
            "--yes",
            "--reason",
            "looks right",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let deploy = claim(c, &w).await;
    assert_eq!(stage_of(&deploy), "deploy");
    assert_eq!(
        deploy["params"]["upstream"]["sign-off"]["reason"],
        "looks right"
    );
    complete(c, &w, &deploy, json!({})).await;
    let run = run_get(c, &run_id).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    // The approval let the stage through once: it is marked executed.
    let approval = call_ok(c, "approval_get", json!({"approval_id": approval_id})).await;
    assert!(approval["executed_at"].is_string(), "{approval:#}");

    // Rejected: the gated branch fails (the gate is required), the run fails.
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "gated"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let prep = claim(c, &w).await;
    complete(c, &w, &prep, json!({})).await;
    let docs = claim(c, &w).await;
    complete(c, &w, &docs, json!({})).await;
    let approval_id = run_get(c, &run_id).await["awaiting_approvals"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (code, out, err) = db.cli(
        dir.path(),
        &["approvals", "reject", &approval_id, "--reason", "not today"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let waited = call_ok(
        c,
        "pipeline_run_get",
        json!({"run_id": run_id, "wait_seconds": 10}),
    )
    .await;
    assert_eq!(waited["status"], "failed", "{waited:#}");
    let run = &waited["run"];
    assert!(
        stage(run, "sign-off")["error"]
            .as_str()
            .unwrap()
            .contains("not today")
    );
    assert_eq!(stage(run, "deploy")["status"], "skipped");
    assert_eq!(stage(run, "docs")["status"], "completed");
    claim_none(c, &w).await;
    client.cancel().await.unwrap();
}
}

/// A loopback webhook receiver that records each body. The first delivery is answered 500
/// and the rest 200; with `busy_db` (a database and the data directory of its coordinator),
/// each answer is sent while the receiver holds that database's write lock, which it keeps
/// 500 ms longer (as another process's write would).
fn webhook_server(
    busy_db: Option<(common::Db, std::path::PathBuf)>,
) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hooks/T0123/secret-path",
        listener.local_addr().unwrap()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let status = if n == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let holder = busy_db.as_ref().map(|(db, dir)| db.hold_write_lock(dir));
            let _ = reader.get_mut().write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if let Some(conn) = holder {
                drop(reader);
                std::thread::sleep(Duration::from_millis(500));
                conn.batch("COMMIT");
            }
        }
    });
    (url, bodies)
}

/// Spawns a coordinator with its stdio as the transport and returns the client and the child
/// (so the test can kill it with SIGKILL).
async fn spawn_killable(
    db: &Db,
    dir: &std::path::Path,
    cfg: &str,
) -> (
    rmcp::service::RunningService<RoleClient, rmcp::model::ClientConfig>,
    tokio::process::Child,
) {
    let mut child = db
        .command(dir, &["--config", cfg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = common::client_config("killable")
        .serve(transport)
        .await
        .unwrap();
    (client, child)
}

both_backends! {
#[tokio::test(flavor = "multi_thread")]
async fn a_run_survives_kill_9_and_finishes_each_stage_once_then_calls_its_webhook(db: Db) {
    let dir = data_dir();
    let cfg = config(dir.path());
    let (url, bodies) = webhook_server(None);
    let (client, mut child) = spawn_killable(&db, dir.path(), &cfg).await;
    let c = client.peer().clone();
    call_ok(
        &c,
        "pipeline_create",
        json!({"name": "durable",
               "stages": [{"name": "s1", "type": "etl"}, {"name": "s2", "type": "etl"},
                          {"name": "s3", "type": "etl"}],
               "dependencies": [{"from": "s1", "to": "s2"}, {"from": "s2", "to": "s3"}]}),
    )
    .await;
    let w = register(&c, "w", &["etl"]).await;
    let started = call_ok(
        &c,
        "pipeline_run",
        json!({"pipeline": "durable", "webhook_url": url}),
    )
    .await;
    let run_id = started["run_id"].as_str().unwrap().to_string();
    // The webhook's path (often a token) is never shown.
    assert_eq!(started["run"]["webhook"]["state"], "waiting");
    assert!(!started.to_string().contains("secret-path"), "{started:#}");
    let s1 = claim(&c, &w).await;
    complete(&c, &w, &s1, json!({"step": 1})).await;
    let s2 = claim(&c, &w).await;
    assert_eq!(stage_of(&s2), "s2");

    // Killed mid-run: s1 done, s2 leased.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    drop(client);

    let (client, _child) = spawn_killable(&db, dir.path(), &cfg).await;
    let c = client.peer().clone();
    let run = run_get(&c, &run_id).await;
    assert_eq!(run["status"], "running");
    assert_eq!(stage(&run, "s1")["status"], "completed");
    assert_eq!(stage(&run, "s2")["status"], "running");
    assert_eq!(stage(&run, "s3")["status"], "waiting");
    // The agent's lease and token survived the restart; it finishes s2 and then s3.
    complete(&c, &w, &s2, json!({"step": 2})).await;
    let s3 = claim(&c, &w).await;
    assert_eq!(stage_of(&s3), "s3");
    assert_eq!(s3["params"]["upstream"], json!({"s2": {"step": 2}}));
    complete(&c, &w, &s3, json!({"step": 3})).await;
    claim_none(&c, &w).await;

    let run = run_get(&c, &run_id).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    for s in ["s1", "s2", "s3"] {
        assert_eq!(stage(&run, s)["attempts"], 1, "{run:#}");
    }
    // Exactly one task per stage, and one completion each in the audit log.
    let tasks = call_ok(&c, "task_list", json!({"limit": 100})).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 3);
    assert_eq!(
        events(&c, "pipeline.stage_completed", &run_id).await.len(),
        3
    );

    // The webhook: first attempt answered 500, the retry delivered the final run.
    let start = Instant::now();
    loop {
        let run = run_get(&c, &run_id).await;
        if run["webhook"]["state"] == "delivered" {
            assert_eq!(run["webhook"]["attempts"], 2);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "webhook not delivered: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[1]["event"], "pipeline_run.finished");
    assert_eq!(bodies[1]["run"]["id"], run_id.as_str());
    assert_eq!(bodies[1]["run"]["status"], "completed");
    assert_eq!(bodies[1]["attempt"], 2);

    let verify = call_ok(&c, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    client.cancel().await.unwrap();
}
}

/// Starts `pipeline_run` waiting, as a request the test can cancel.
async fn waiting_run(
    c: &Peer<RoleClient>,
    args: Value,
) -> rmcp::service::RequestHandle<RoleClient> {
    let params = rmcp::model::CallToolRequestParams::new("pipeline_run")
        .with_arguments(args.as_object().cloned().unwrap());
    c.send_cancellable_request(
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params)),
        rmcp::service::PeerRequestOptions::no_options(),
    )
    .await
    .unwrap()
}

/// The id of the newest run (the waiting call has not returned it yet).
async fn newest_run(c: &Peer<RoleClient>) -> Value {
    let start = Instant::now();
    loop {
        let list = call_ok(c, "pipeline_list", json!({"recent_runs": 1})).await;
        if let Some(run) = list["recent_runs"].as_array().unwrap().first() {
            return run.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no run started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both_backends! {
#[tokio::test]
async fn a_cancelled_wait_leaves_the_run_running_unless_asked_to_cancel_it(db: Db) {
    let dir = data_dir();
    let client = db.connect(dir.path(), &[], Era::Legacy).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "slow", "stages": [{"name": "only", "type": "etl"}]}),
    )
    .await;

    let handle = waiting_run(c, json!({"pipeline": "slow", "wait_seconds": 60})).await;
    let run = newest_run(c).await;
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = run_get(c, run["run_id"].as_str().unwrap()).await;
    assert_eq!(after["status"], "running", "only the wait ended: {after:#}");
    call_ok(c, "pipeline_run_cancel", json!({"run_id": run["run_id"]})).await;

    let handle = waiting_run(
        c,
        json!({"pipeline": "slow", "wait_seconds": 60, "cancel_run_on_client_cancel": true}),
    )
    .await;
    let start = Instant::now();
    let run = loop {
        let run = newest_run(c).await;
        if run["status"] == "running" {
            break run;
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    handle.cancel(None).await.unwrap();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let now = run_get(c, &run_id).await;
        if now["status"] == "cancelled" {
            assert!(
                now["error"]
                    .as_str()
                    .unwrap()
                    .contains("waiting tool call was cancelled"),
                "{now:#}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the run was not cancelled: {now:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn a_2026_client_listens_for_run_updates(db: Db) {
    let dir = data_dir();
    let client = db.connect(dir.path(), &[], Era::Stateless).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "two", "stages": [{"name": "a", "type": "etl"}, {"name": "b", "type": "etl"}],
               "dependencies": [{"from": "a", "to": "b"}]}),
    )
    .await;
    let w = register(c, "w", &["etl"]).await;
    let run_id = call_ok(c, "pipeline_run", json!({"pipeline": "two"})).await["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let uri = format!("coordinator://pipeline-runs/{run_id}");
    let mut filter = rmcp::model::SubscriptionFilter::new();
    filter.resource_subscriptions = Some(vec![uri.clone(), "https://elsewhere/x".into()]);
    let mut subscription = c.listen(filter).await.unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec![uri.clone()]),
        "only run URIs are accepted"
    );
    let a = claim(c, &w).await;
    complete(c, &w, &a, json!({})).await;
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("an update within 5 s")
        .unwrap()
        .expect("the subscription is open");
    match next {
        rmcp::model::ServerNotification::ResourceUpdatedNotification(n) => {
            assert_eq!(n.params.uri, uri)
        }
        other => panic!("expected resources/updated, got {other:?}"),
    }
    client.cancel().await.unwrap();
}
}

/// A 2026-07-28 client that declares the tasks extension (SEP-2663).
async fn task_client(db: &Db, dir: &std::path::Path) -> common::Client {
    let transport = rmcp::transport::TokioChildProcess::new(db.command(dir, &[])).unwrap();
    let config = rmcp::model::ClientConfig::new(
        rmcp::model::ClientCapabilities::builder()
            .enable_tasks()
            .build(),
        rmcp::model::Implementation::new("task-client", "1.0"),
    );
    rmcp::ClientServiceExt::serve_with_lifecycle(
        config,
        transport,
        rmcp::ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .unwrap()
}

both_backends! {
#[tokio::test]
async fn a_client_with_the_tasks_extension_gets_a_long_run_as_a_task(db: Db) {
    use rmcp::model::{CallToolResponse, CancelTaskParams, GetTaskParams, TaskPayload, TaskStatus};
    let dir = data_dir();
    let client = task_client(&db, dir.path()).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "tasked", "stages": [{"name": "a", "type": "etl"}]}),
    )
    .await;
    let w = register(c, "w", &["etl"]).await;
    let run = |wait: u64| {
        rmcp::model::CallToolRequestParams::new("pipeline_run").with_arguments(
            json!({"pipeline": "tasked", "wait_seconds": wait})
                .as_object()
                .cloned()
                .unwrap(),
        )
    };
    // Without wait_seconds the run id comes back at once, as for any client.
    let CallToolResponse::Complete(plain) = c.call_tool_once(run(0)).await.unwrap() else {
        panic!("expected a plain result");
    };
    let plain_id = plain.structured_content.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // With it, a task whose id is the run id.
    let CallToolResponse::Task(created) = c.call_tool_once(run(60)).await.unwrap() else {
        panic!("expected a task");
    };
    let task_id = created.task.task_id.clone();
    assert!(task_id.starts_with("run_"), "{created:?}");
    assert_eq!(created.task.status, TaskStatus::Working);

    let got = c
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    assert_eq!(got.task.status(), TaskStatus::Working);
    // Work both runs' tasks; the task completes with the pipeline_run result.
    for _ in 0..2 {
        let t = claim(c, &w).await;
        complete(c, &w, &t, json!({"ok": 1})).await;
    }
    let got = c
        .get_task(GetTaskParams::new(task_id.clone()))
        .await
        .unwrap();
    let TaskPayload::Completed { result } = &got.task.payload else {
        panic!("expected a completed task, got {got:?}");
    };
    assert_eq!(result["structuredContent"]["status"], "completed");
    assert_eq!(result["structuredContent"]["run_id"], task_id.as_str());

    // tasks/cancel cancels the run behind the task.
    let CallToolResponse::Task(created) = c.call_tool_once(run(60)).await.unwrap() else {
        panic!("expected a task");
    };
    c.cancel_task(CancelTaskParams::new(created.task.task_id.clone()))
        .await
        .unwrap();
    let got = c
        .get_task(GetTaskParams::new(created.task.task_id.clone()))
        .await
        .unwrap();
    assert_eq!(got.task.status(), TaskStatus::Cancelled);
    assert_eq!(
        run_get(c, &created.task.task_id).await["status"],
        "cancelled"
    );
    assert_eq!(run_get(c, &plain_id).await["status"], "completed");
    let unknown = c.get_task(GetTaskParams::new("run_nope")).await;
    assert!(unknown.is_err(), "{unknown:?}");
    client.cancel().await.unwrap();
}
}

/// A client that records progress notifications.
#[derive(Clone, Default)]
struct Watcher {
    progress: Arc<Mutex<Vec<(f64, String)>>>,
}

impl rmcp::ClientHandler for Watcher {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        common::client_config("watcher")
    }

    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push((params.progress, params.message.unwrap_or_default()));
    }
}

both_backends! {
#[tokio::test(flavor = "multi_thread")]
async fn a_long_stage_keeps_the_wait_alive_with_rising_progress(db: Db) {
    let dir = data_dir();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, "[pipelines]\nprogress_keepalive_seconds = 1\n").unwrap();
    let watcher = Watcher::default();
    let transport = rmcp::transport::TokioChildProcess::new(db.command(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
    ))
    .unwrap();
    let client = watcher.clone().serve(transport).await.unwrap();
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "slow", "stages": [{"name": "long", "type": "etl"}]}),
    )
    .await;
    let mut params = rmcp::model::CallToolRequestParams::new("pipeline_run").with_arguments(
        json!({"pipeline": "slow", "wait_seconds": 4})
            .as_object()
            .cloned()
            .unwrap(),
    );
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::Number(5),
    ));
    params.meta = Some(meta);
    let out = c
        .call_tool(params)
        .await
        .unwrap()
        .structured_content
        .unwrap();
    assert_eq!(out["wait"], "wait_elapsed", "{out:#}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = watcher.progress.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    // The start (0) and at least two keep-alives, each higher and all below one stage.
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(seen[0].0, 0.0);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen.iter().all(|s| s.0 < 1.0), "{seen:?}");
    assert!(seen[1].1.contains("still working"), "{seen:?}");
    client.cancel().await.unwrap();
}
}

both_backends! {
/// A delivery's outcome is recorded even when another writer holds the database as the answer
/// comes back: the attempt has happened, so its outcome waits for the lock (background work
/// that has changed nothing yet may skip a busy tick, this may not).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_answered_while_the_database_is_busy_is_recorded(db: Db) {
    let dir = data_dir();
    let cfg = config(dir.path());
    let (url, bodies) = webhook_server(Some((db.clone(), dir.path().to_path_buf())));
    let (client, _child) = spawn_killable(&db, dir.path(), &cfg).await;
    let c = client.peer().clone();
    call_ok(
        &c,
        "pipeline_create",
        json!({"name": "one", "stages": [{"name": "s1", "type": "etl"}]}),
    )
    .await;
    let w = register(&c, "w", &["etl"]).await;
    let started = call_ok(
        &c,
        "pipeline_run",
        json!({"pipeline": "one", "webhook_url": url}),
    )
    .await;
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let s1 = claim(&c, &w).await;
    complete(&c, &w, &s1, json!({"step": 1})).await;

    // The first attempt is answered 500, the second 200, each with the database locked.
    let start = Instant::now();
    loop {
        let run = run_get(&c, &run_id).await;
        if run["webhook"]["state"] == "delivered" {
            assert_eq!(run["webhook"]["attempts"], 2, "{run:#}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "webhook outcome not recorded: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bodies.lock().unwrap().len(), 2);
    client.cancel().await.unwrap();
}
}
