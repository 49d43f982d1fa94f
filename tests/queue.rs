//! Agents and the task queue over MCP with the real binary and short configured intervals:
//! registration, heartbeats and discovery, health and the sweeper, dispatch order, load-aware
//! offers, the task lifecycle with retries and dead letters, cancellation, idempotency,
//! `not_before`, lease expiry, token checks, stats and purging, all of it in the audit log.
//! Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, Db, ERAS, Era, both_backends, call, call_ok, data_dir, sql_args};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The intervals a test runs with (the `[agents]` and `[tasks]` sections of its config file).
#[derive(Clone, Copy)]
struct Intervals {
    heartbeat_ms: u64,
    offer_window_ms: u64,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
}

/// Agents stay active for the whole test; short retry backoff.
const CALM: Intervals = Intervals {
    heartbeat_ms: 60_000,
    offer_window_ms: 300,
    backoff_base_ms: 50,
    backoff_max_ms: 200,
};

/// Agents go stale after 600 ms and offline after 1.5 s; the sweeper runs every 150 ms.
const FAST: Intervals = Intervals {
    heartbeat_ms: 300,
    offer_window_ms: 300,
    backoff_base_ms: 50,
    backoff_max_ms: 200,
};

/// Starts a coordinator on `dir` and `db` with a config file holding these intervals.
async fn start(db: &Db, dir: &Path, i: Intervals, era: Era) -> Client {
    let path = dir.join("queue-test.toml");
    std::fs::write(
        &path,
        format!(
            "[agents]\nheartbeat_interval_ms = {}\noffer_window_ms = {}\n\
             [tasks]\nbackoff_base_ms = {}\nbackoff_max_ms = {}\n",
            i.heartbeat_ms, i.offer_window_ms, i.backoff_base_ms, i.backoff_max_ms
        ),
    )
    .unwrap();
    db.connect(dir, &["--config", path.to_str().unwrap()], era)
        .await
}

struct Agent {
    id: String,
    token: String,
}

async fn register(c: &Peer<RoleClient>, name: &str, caps: &[&str]) -> Agent {
    let r = call_ok(
        c,
        "agent_register",
        json!({"name": name, "capabilities": caps}),
    )
    .await;
    Agent {
        id: r["agent"]["id"].as_str().unwrap().to_string(),
        token: r["token"].as_str().unwrap().to_string(),
    }
}

async fn heartbeat(c: &Peer<RoleClient>, a: &Agent, load: f64, status: &str) -> Value {
    call_ok(
        c,
        "agent_heartbeat",
        json!({"token": a.token, "load": load, "status": status}),
    )
    .await
}

async fn submit(c: &Peer<RoleClient>, args: Value) -> String {
    let r = call_ok(c, "task_submit", args).await;
    assert_eq!(r["created"], true, "{r:#}");
    r["task_id"].as_str().unwrap().to_string()
}

async fn claim(c: &Peer<RoleClient>, a: &Agent) -> Value {
    call_ok(c, "task_claim", json!({"token": a.token})).await
}

/// Claims and returns the leased task, which must exist.
async fn claim_task(c: &Peer<RoleClient>, a: &Agent) -> Value {
    let r = claim(c, a).await;
    assert!(r["task"].is_object(), "expected a task, got {r:#}");
    assert!(r.get("reason").is_none_or(Value::is_null), "{r:#}");
    let task = r["task"].clone();
    assert_eq!(task["status"], "leased");
    assert_eq!(task["leased_by"], a.id.as_str());
    task
}

/// Claims and returns the reason there was no task, which must be none.
async fn claim_nothing(c: &Peer<RoleClient>, a: &Agent) -> String {
    let r = claim(c, a).await;
    assert!(r["task"].is_null(), "expected no task, got {r:#}");
    r["reason"].as_str().unwrap().to_string()
}

/// Claims until a task comes (retry backoff, `not_before`), for at most `within`.
async fn claim_eventually(c: &Peer<RoleClient>, a: &Agent, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = claim(c, a).await;
        if r["task"].is_object() {
            return r["task"].clone();
        }
        assert_eq!(r["reason"], "queue_empty", "{r:#}");
        assert!(Instant::now() < deadline, "no task within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(c: &Peer<RoleClient>, id: &str) -> Value {
    call_ok(c, "task_get", json!({"task_id": id})).await
}

async fn report(c: &Peer<RoleClient>, a: &Agent, id: &str, fields: Value) -> Value {
    let mut args = json!({"token": a.token, "task_id": id});
    args.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    call_ok(c, "task_report", args).await
}

/// Calls a tool that must fail with a domain error; returns `{code, message, details, ...}`.
async fn tool_error(c: &Peer<RoleClient>, tool: &str, args: Value) -> Value {
    let r = call(c, tool, args)
        .await
        .unwrap_or_else(|e| panic!("{tool}: expected a tool error, got a protocol error: {e}"));
    assert_eq!(r.is_error, Some(true), "{tool} succeeded: {r:?}");
    r.structured_content.expect("structured error")
}

/// Calls a tool that must be refused for an argument (an `invalid_argument` tool result);
/// returns its message.
async fn refused_argument(c: &Peer<RoleClient>, tool: &str, args: Value) -> String {
    common::invalid_argument(tool, call(c, tool, args).await).1
}

/// The `task.*` audit actions of one task, oldest first.
async fn task_actions(c: &Peer<RoleClient>, id: &str) -> Vec<String> {
    let page = call_ok(
        c,
        "audit_query",
        json!({"action": "task.*", "subject": id, "limit": 500}),
    )
    .await;
    let mut actions: Vec<String> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    actions.reverse();
    actions
}

/// Audit events with this action and subject, newest first.
async fn events(c: &Peer<RoleClient>, action: &str, subject: &str) -> Vec<Value> {
    let page = call_ok(
        c,
        "audit_query",
        json!({"action": action, "subject": subject, "limit": 500}),
    )
    .await;
    page["events"].as_array().unwrap().clone()
}

async fn verify_chain(c: &Peer<RoleClient>) {
    let v = call_ok(c, "audit_verify", json!({})).await;
    assert_eq!(v["ok"], true, "{v:#}");
}

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect()
}

fn client_actor(era: Era) -> &'static str {
    match era {
        Era::Legacy => "client:legacy-test/1.2.3",
        Era::Stateless => "client:stateless-test/1.2.3",
    }
}

both_backends! {
#[tokio::test]
async fn register_heartbeat_and_discover_agents(db: Db) {
    for era in ERAS {
        let dir = data_dir();
        // A database of its own each time round, as the data directory is.
        let db = db.another("round");
        let c = start(&db, dir.path(), CALM, era).await;
        let before = OffsetDateTime::now_utc();
        let r = call_ok(
            &c,
            "agent_register",
            json!({"name": "etl-1", "capabilities": ["etl", "gpu", "etl"],
                   "endpoints": {"queue": "etl-in"}, "resources": {"cpu": 4.0, "memory_mb": 8192},
                   "metadata": {"zone": "a"}}),
        )
        .await;
        let etl = Agent {
            id: r["agent"]["id"].as_str().unwrap().to_string(),
            token: r["token"].as_str().unwrap().to_string(),
        };
        assert!(etl.id.starts_with("agt_"), "{r:#}");
        assert_eq!(etl.token.split('.').count(), 3, "a JWT");
        assert_eq!(r["refreshed"], false);
        assert_eq!(r["heartbeat_interval_ms"], 60_000);
        let ttl = ts(&r["token_expires_at"]) - before;
        assert!(
            (86_390..=86_410).contains(&ttl.whole_seconds()),
            "token lifetime {ttl}"
        );
        let a = &r["agent"];
        assert_eq!(a["name"], "etl-1");
        assert_eq!(a["agent_type"], "worker");
        assert_eq!(a["capabilities"], json!(["etl", "gpu"]));
        assert_eq!(a["endpoints"]["queue"], "etl-in");
        assert_eq!(a["resources"]["memory_mb"], 8192);
        assert_eq!(a["metadata"]["zone"], "a");
        assert_eq!(a["status"], "ready");
        assert_eq!(a["load"], 0.0);
        assert_eq!(a["health"], "active");

        call_ok(
            &c,
            "agent_register",
            json!({"name": "review-1", "agent_type": "validator", "capabilities": ["review"]}),
        )
        .await;
        call_ok(
            &c,
            "agent_register",
            json!({"name": "orch", "agent_type": "orchestrator"}),
        )
        .await;

        let hb = call_ok(
            &c,
            "agent_heartbeat",
            json!({"token": etl.token, "load": 0.5, "status": "busy", "capabilities": ["sql", "etl"]}),
        )
        .await;
        assert_eq!(hb["load"], 0.5);
        assert_eq!(hb["status"], "busy");
        assert_eq!(hb["capabilities"], json!(["etl", "sql"]));

        let all = call_ok(&c, "agent_list", json!({})).await;
        assert_eq!(names(&all), ["etl-1", "orch", "review-1"]);
        let listed = &all["agents"][0];
        assert_eq!(listed["id"], etl.id.as_str());
        assert_eq!(listed["load"], 0.5);
        assert_eq!(listed["status"], "busy");
        assert_eq!(listed["capabilities"], json!(["etl", "sql"]));
        assert!(listed["heartbeat_age_ms"].as_i64().unwrap() < 5_000);
        let filter = |args: Value| {
            let c = c.peer().clone();
            async move { call_ok(&c, "agent_list", args).await }
        };
        assert_eq!(
            names(&filter(json!({"capability": "etl"})).await),
            ["etl-1"]
        );
        assert_eq!(
            names(&filter(json!({"capability": "sql"})).await),
            ["etl-1"]
        );
        // The heartbeat replaced the capabilities: gpu is gone.
        assert!(
            names(&filter(json!({"capability": "gpu"})).await).is_empty(),
            "capabilities were not replaced"
        );
        assert_eq!(
            names(&filter(json!({"agent_type": "validator"})).await),
            ["review-1"]
        );
        assert_eq!(
            names(&filter(json!({"agent_type": "orchestrator", "health": "active"})).await),
            ["orch"]
        );
        assert_eq!(names(&filter(json!({"health": "active"})).await).len(), 3);
        assert!(names(&filter(json!({"health": "stale"})).await).is_empty());
        assert!(names(&filter(json!({"health": "offline"})).await).is_empty());

        let m = refused_argument(
            &c,
            "agent_heartbeat",
            json!({"token": etl.token, "load": 1.5}),
        )
        .await;
        assert!(m.contains("load"), "{m}");
        let m = refused_argument(
            &c,
            "agent_heartbeat",
            json!({"token": etl.token, "load": 0.1, "status": "asleep"}),
        )
        .await;
        assert!(m.contains("status"), "{m}");
        // The refused heartbeats changed nothing.
        let again = filter(json!({"capability": "etl"})).await;
        assert_eq!(again["agents"][0]["load"], 0.5);

        let registered = events(&c, "agent.registered", &etl.id).await;
        assert_eq!(registered.len(), 1);
        assert_eq!(registered[0]["actor"], format!("agent:{}", etl.id));
        // Tokens never reach the audit log.
        let page = call_ok(&c, "audit_query", json!({"limit": 500})).await;
        assert!(!page.to_string().contains(&etl.token));
        verify_chain(&c).await;
        c.cancel().await.unwrap();
    }
}
}

both_backends! {
#[tokio::test]
async fn silent_agents_go_stale_then_offline_and_lose_their_leases(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), FAST, Era::Legacy).await;
    let ghost = register(&c, "ghost", &[]).await;
    let fading = register(&c, "fading", &["etl"]).await;
    let steady = register(&c, "steady", &["etl"]).await;
    let id = submit(
        &c,
        json!({"kind": "long", "capabilities": ["etl"], "timeout_seconds": 60}),
    )
    .await;
    let task = claim_task(&c, &fading).await;
    assert_eq!(task["id"], id.as_str());

    // Watch `fading` (silent) while `steady` keeps heartbeating.
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.last().map(String::as_str) != Some("offline") {
        assert!(Instant::now() < deadline, "never went offline: {seen:?}");
        heartbeat(&c, &steady, 0.0, "ready").await;
        let list = call_ok(&c, "agent_list", json!({})).await;
        let me = list["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == fading.id.as_str())
            .unwrap()
            .clone();
        let age = me["heartbeat_age_ms"].as_i64().unwrap();
        let health = me["health"].as_str().unwrap().to_string();
        let interval = FAST.heartbeat_ms as i64;
        let expected = if age > 5 * interval {
            "offline"
        } else if age > 2 * interval {
            "stale"
        } else {
            "active"
        };
        assert_eq!(health, expected, "health at heartbeat age {age} ms");
        if seen.last() != Some(&health) {
            if health == "stale" {
                // Stale is not gone: the name is still taken.
                let e = tool_error(&c, "agent_register", json!({"name": "fading"})).await;
                assert_eq!(e["code"], "conflict", "{e:#}");
            }
            seen.push(health);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(seen, ["active", "stale", "offline"]);
    let offline = call_ok(&c, "agent_list", json!({"health": "offline"})).await;
    assert_eq!(names(&offline), ["fading", "ghost"]);
    heartbeat(&c, &steady, 0.0, "ready").await;
    let active = call_ok(&c, "agent_list", json!({"health": "active"})).await;
    assert_eq!(names(&active), ["steady"]);

    // The sweeper hands the offline agent's lease back (the attempt is refunded).
    let deadline = Instant::now() + Duration::from_secs(3);
    let t = loop {
        let t = get(&c, &id).await;
        if t["status"] == "queued" {
            break t;
        }
        assert_eq!(t["status"], "leased");
        assert!(Instant::now() < deadline, "lease never returned: {t:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(t["leased_by"].is_null());
    assert_eq!(t["attempts"], 0, "{t:#}");
    let requeued = events(&c, "task.requeued", &id).await;
    assert_eq!(requeued.len(), 1, "{requeued:#?}");
    assert_eq!(requeued[0]["actor"], "system:mcp-coordinator");
    assert_eq!(requeued[0]["detail"]["why"], "agent offline");
    assert_eq!(requeued[0]["detail"]["agent"], fading.id.as_str());

    heartbeat(&c, &steady, 0.0, "ready").await;
    let task = claim_task(&c, &steady).await;
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["attempts"], 1);
    // The offline agent's late result is refused; its token still works for a heartbeat,
    // which makes it active again.
    let e = tool_error(
        &c,
        "task_report",
        json!({"token": fading.token, "task_id": id, "result": {"late": true}}),
    )
    .await;
    assert_eq!(e["code"], "not_leaseholder", "{e:#}");
    let back = heartbeat(&c, &fading, 0.0, "ready").await;
    assert_eq!(back["health"], "active");
    let done = report(&c, &steady, &id, json!({"result": {"by": "steady"}})).await;
    assert_eq!(done["status"], "completed");

    // An offline agent's name can be taken without its token; its old token stops working.
    let r = call_ok(&c, "agent_register", json!({"name": "ghost"})).await;
    assert_eq!(r["agent"]["id"], ghost.id.as_str());
    assert_eq!(r["agent"]["health"], "active");
    let e = tool_error(
        &c,
        "agent_heartbeat",
        json!({"token": ghost.token, "load": 0.0}),
    )
    .await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    verify_chain(&c).await;
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn reregistering_a_name_needs_its_token_while_it_is_active(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Stateless).await;
    let w = register(&c, "w", &["etl"]).await;
    let other = register(&c, "other", &["etl"]).await;

    // Refresh with its own token: same id, a new token, the old one revoked.
    let r = call_ok(
        &c,
        "agent_register",
        json!({"name": "w", "token": w.token, "capabilities": ["etl", "sql"]}),
    )
    .await;
    assert_eq!(r["agent"]["id"], w.id.as_str());
    assert_eq!(r["refreshed"], true);
    assert_eq!(r["agent"]["capabilities"], json!(["etl", "sql"]));
    let w2 = Agent {
        id: w.id.clone(),
        token: r["token"].as_str().unwrap().to_string(),
    };
    assert_ne!(w2.token, w.token);
    let e = tool_error(
        &c,
        "agent_heartbeat",
        json!({"token": w.token, "load": 0.1}),
    )
    .await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    assert_eq!(e["details"]["field"], "token");
    let e = tool_error(&c, "task_claim", json!({"token": w.token})).await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    heartbeat(&c, &w2, 0.0, "ready").await;

    // Without a token, or with another agent's, the active name is taken.
    let e = tool_error(&c, "agent_register", json!({"name": "w"})).await;
    assert_eq!(e["code"], "conflict", "{e:#}");
    assert!(e["message"].as_str().unwrap().contains("\"w\""), "{e:#}");
    let e = tool_error(
        &c,
        "agent_register",
        json!({"name": "w", "token": other.token}),
    )
    .await;
    assert_eq!(e["code"], "conflict", "{e:#}");
    let e = tool_error(
        &c,
        "agent_register",
        json!({"name": "w", "token": "not.a.token"}),
    )
    .await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    // The refused attempts left the registration alone.
    heartbeat(&c, &w2, 0.0, "ready").await;

    // Deregistering hands back a held task and opens a task aimed at it.
    let held = submit(&c, json!({"kind": "held", "capabilities": ["etl"]})).await;
    assert_eq!(claim_task(&c, &w2).await["id"], held.as_str());
    let aimed = submit(
        &c,
        json!({"kind": "aimed", "capabilities": ["etl"], "target_agent_id": w.id}),
    )
    .await;
    let d = call_ok(&c, "agent_deregister", json!({"token": w2.token})).await;
    assert_eq!(d["agent_id"], w.id.as_str());
    assert_eq!(d["requeued_tasks"], 1);
    assert_eq!(d["retargeted_tasks"], 1);
    let t = get(&c, &held).await;
    assert_eq!(t["status"], "queued");
    assert!(t["leased_by"].is_null());
    assert_eq!(t["attempts"], 0, "the attempt is refunded: {t:#}");
    let t = get(&c, &aimed).await;
    assert_eq!(t["status"], "queued");
    assert!(t["target_agent_id"].is_null(), "{t:#}");
    assert_eq!(
        names(&call_ok(&c, "agent_list", json!({})).await),
        ["other"]
    );
    let e = tool_error(
        &c,
        "agent_heartbeat",
        json!({"token": w2.token, "load": 0.0}),
    )
    .await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    let e = tool_error(&c, "agent_deregister", json!({"token": w2.token})).await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    // The other agent can now take both.
    let mut got = vec![
        claim_task(&c, &other).await["id"]
            .as_str()
            .unwrap()
            .to_string(),
        claim_task(&c, &other).await["id"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    got.sort();
    let mut want = vec![held.clone(), aimed.clone()];
    want.sort();
    assert_eq!(got, want);

    // After deregistration the name is free again, without a token.
    let r = call_ok(&c, "agent_register", json!({"name": "w"})).await;
    let w3 = Agent {
        id: r["agent"]["id"].as_str().unwrap().to_string(),
        token: r["token"].as_str().unwrap().to_string(),
    };
    heartbeat(&c, &w3, 0.2, "ready").await;
    assert_eq!(
        names(&call_ok(&c, "agent_list", json!({})).await),
        ["other", "w"]
    );
    let refreshed = events(&c, "agent.refreshed", &w.id).await;
    assert!(!refreshed.is_empty());
    assert_eq!(events(&c, "agent.deregistered", &w.id).await.len(), 1);
    verify_chain(&c).await;
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn claims_come_targeted_first_then_by_priority_then_age(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let a = register(&c, "a", &["etl"]).await;
    let b = register(&c, "b", &["etl"]).await;
    let none = register(&c, "none", &[]).await;
    let mut ids = std::collections::HashMap::new();
    for (name, priority, extra) in [
        ("low1", "low", json!({})),
        ("normal1", "normal", json!({})),
        ("urgent1", "urgent", json!({})),
        ("high1", "high", json!({})),
        ("normal2", "normal", json!({})),
        ("at_a", "low", json!({"target_agent_id": a.id})),
        ("gpu", "urgent", json!({"capabilities": ["etl", "gpu"]})),
        ("at_b", "normal", json!({"target_agent_id": b.id})),
    ] {
        let mut args = json!({"kind": name, "priority": priority, "capabilities": ["etl"]});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ids.insert(submit(&c, args).await, name);
        // Distinct creation times, so age decides between equal priorities.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = refused_argument(
        &c,
        "task_submit",
        json!({"kind": "x", "target_agent_id": "agt_nobody"}),
    )
    .await;
    assert!(m.contains("target_agent_id"), "{m}");

    // An agent without the capability never gets them.
    assert_eq!(claim_nothing(&c, &none).await, "queue_empty");
    let mut order = Vec::new();
    for _ in 0..6 {
        let t = claim_task(&c, &a).await;
        order.push(ids[t["id"].as_str().unwrap()]);
    }
    assert_eq!(
        order,
        ["at_a", "urgent1", "high1", "normal1", "normal2", "low1"]
    );
    // What is left: a task aimed at b, and one that needs gpu.
    assert_eq!(claim_nothing(&c, &a).await, "queue_empty");
    assert_eq!(
        ids[claim_task(&c, &b).await["id"].as_str().unwrap()],
        "at_b"
    );
    assert_eq!(claim_nothing(&c, &b).await, "queue_empty");
    assert_eq!(claim_nothing(&c, &none).await, "queue_empty");
    call_ok(
        &c,
        "agent_heartbeat",
        json!({"token": a.token, "load": 0.0, "capabilities": ["etl", "gpu"]}),
    )
    .await;
    assert_eq!(ids[claim_task(&c, &a).await["id"].as_str().unwrap()], "gpu");
    let stats = call_ok(&c, "queue_stats", json!({})).await;
    assert_eq!(stats["by_status"], json!({"leased": 8}), "{stats:#}");
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn untargeted_tasks_go_to_the_least_loaded_agent_first(db: Db) {
    let dir = data_dir();
    let window = Intervals {
        offer_window_ms: 1_000,
        ..CALM
    };
    let c = start(&db, dir.path(), window, Era::Stateless).await;
    let busy = register(&c, "busy", &["etl", "special"]).await;
    let idle = register(&c, "idle", &["etl"]).await;
    let hot = register(&c, "hot", &["etl", "special"]).await;
    let drainer = register(&c, "drainer", &["etl", "special"]).await;
    heartbeat(&c, &busy, 0.8, "busy").await;
    heartbeat(&c, &idle, 0.1, "ready").await;
    heartbeat(&c, &hot, 0.95, "busy").await;
    heartbeat(&c, &drainer, 0.0, "draining").await;

    let t1 = submit(&c, json!({"kind": "t1", "capabilities": ["etl"]})).await;
    assert_eq!(claim_nothing(&c, &busy).await, "queue_empty");
    assert_eq!(claim_task(&c, &idle).await["id"], t1.as_str());

    let t2 = submit(&c, json!({"kind": "t2", "capabilities": ["etl"]})).await;
    let offered = Instant::now();
    assert_eq!(claim_nothing(&c, &busy).await, "queue_empty");
    assert!(
        offered.elapsed() < Duration::from_millis(900),
        "too slow to observe the offer window"
    );
    // A task the lighter agent cannot run is not held back.
    let t3 = submit(&c, json!({"kind": "t3", "capabilities": ["special"]})).await;
    assert_eq!(claim_task(&c, &busy).await["id"], t3.as_str());
    // After the window anyone capable may take it.
    tokio::time::sleep(Duration::from_millis(1_100).saturating_sub(offered.elapsed())).await;
    assert_eq!(claim_task(&c, &busy).await["id"], t2.as_str());

    // Above the ceiling (0.9) and draining agents get nothing, even with work queued.
    let t4 = submit(&c, json!({"kind": "t4", "capabilities": ["etl"]})).await;
    assert_eq!(claim_nothing(&c, &hot).await, "load_above_ceiling");
    assert_eq!(claim_nothing(&c, &drainer).await, "draining");
    assert_eq!(claim_task(&c, &idle).await["id"], t4.as_str());
    // At the ceiling is still fine.
    heartbeat(&c, &busy, 0.9, "busy").await;
    let t5 = submit(&c, json!({"kind": "t5", "capabilities": ["special"]})).await;
    assert_eq!(claim_task(&c, &busy).await["id"], t5.as_str());
    // Draining and overloaded agents hold no reservation: with the idle agent draining too,
    // the busy one gets an etl task at once.
    heartbeat(&c, &idle, 0.1, "draining").await;
    let t6 = submit(&c, json!({"kind": "t6", "capabilities": ["etl"]})).await;
    assert_eq!(claim_task(&c, &busy).await["id"], t6.as_str());
    // Back to ready, the hot agent cools down and is offered work again.
    heartbeat(&c, &hot, 0.2, "ready").await;
    let t7 = submit(&c, json!({"kind": "t7", "capabilities": ["etl"]})).await;
    assert_eq!(claim_task(&c, &hot).await["id"], t7.as_str());
    // A claim may carry the agent's load right now; it is recorded before dispatch decides.
    let t8 = submit(&c, json!({"kind": "t8", "capabilities": ["etl"]})).await;
    let r = call_ok(&c, "task_claim", json!({"token": hot.token, "load": 0.97})).await;
    assert!(r["task"].is_null(), "{r:#}");
    assert_eq!(r["reason"], "load_above_ceiling");
    let listed = call_ok(&c, "agent_list", json!({})).await;
    let load = |name: &str| {
        listed["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["load"]
            .clone()
    };
    assert_eq!(load("hot"), 0.97);
    let r = call_ok(&c, "task_claim", json!({"token": hot.token, "load": 0.3})).await;
    assert_eq!(r["task"]["id"], t8.as_str(), "{r:#}");
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn task_lifecycle_with_retries_dead_letters_and_requeue(db: Db) {
    let slow_backoff = Intervals {
        backoff_base_ms: 300,
        backoff_max_ms: 1_000,
        ..CALM
    };
    for era in ERAS {
        let dir = data_dir();
        // A database of its own each time round, as the data directory is.
        let db = db.another("round");
        let c = start(&db, dir.path(), slow_backoff, era).await;
        let w = register(&c, "worker", &["etl"]).await;

        // Submitted, leased, running with progress, completed with a result.
        let s = call_ok(
            &c,
            "task_submit",
            json!({"kind": "transform", "params": {"file": "a.csv"}, "capabilities": ["etl"],
                   "priority": "high"}),
        )
        .await;
        let t1 = s["task_id"].as_str().unwrap().to_string();
        assert!(t1.starts_with("tsk_"));
        let t = &s["task"];
        assert_eq!(t["status"], "queued");
        assert_eq!(t["attempts"], 0);
        assert_eq!(t["max_retries"], 3);
        assert_eq!(t["timeout_seconds"], 300.0);
        assert_eq!(t["priority"], "high");
        assert_eq!(t["submitted_by"], client_actor(era));
        let leased = claim_task(&c, &w).await;
        assert_eq!(leased["id"], t1.as_str());
        assert_eq!(leased["params"], json!({"file": "a.csv"}));
        assert_eq!(leased["attempts"], 1);
        let lease = ts(&leased["lease_expires_at"]) - OffsetDateTime::now_utc();
        assert!(
            (290..=301).contains(&lease.whole_seconds()),
            "lease of {lease}"
        );
        let r = report(&c, &w, &t1, json!({"progress": 0.5, "message": "halfway"})).await;
        assert_eq!(r["status"], "running");
        assert_eq!(r["progress"], 0.5);
        assert_eq!(r["message"], "halfway");
        let r = report(&c, &w, &t1, json!({"result": {"rows": 3}})).await;
        assert_eq!(r["status"], "completed");
        assert_eq!(r["result"], json!({"rows": 3}));
        assert!(r["leased_by"].is_null());
        let got = get(&c, &t1).await;
        assert_eq!(got["status"], "completed");
        assert_eq!(got["result"], json!({"rows": 3}));
        assert!(got["finished_at"].is_string());
        let e = tool_error(
            &c,
            "task_report",
            json!({"token": w.token, "task_id": t1, "result": {"rows": 4}}),
        )
        .await;
        assert_eq!(e["code"], "not_leaseholder", "{e:#}");
        assert_eq!(get(&c, &t1).await["result"], json!({"rows": 3}));

        // Retryable failures: requeued with exponential backoff, then dead.
        let t2 = submit(&c, json!({"kind": "flaky", "max_retries": 2})).await;
        for attempt in 1..=3_i64 {
            let leased = if attempt == 1 {
                claim_task(&c, &w).await
            } else {
                claim_eventually(&c, &w, Duration::from_secs(3)).await
            };
            assert_eq!(leased["id"], t2.as_str());
            assert_eq!(leased["attempts"], attempt);
            let r = report(
                &c,
                &w,
                &t2,
                json!({"error": {"message": format!("boom {attempt}"), "retryable": true}}),
            )
            .await;
            assert_eq!(r["last_error"], format!("boom {attempt}"));
            assert_eq!(r["attempts"], attempt, "attempts are counted: {r:#}");
            if attempt < 3 {
                assert_eq!(r["status"], "queued", "{r:#}");
                assert!(r["leased_by"].is_null());
                // base 300 ms, doubling per attempt, ±50% jitter.
                let delay =
                    (ts(&r["not_before"]) - ts(&r["updated_at"])).whole_milliseconds() as i64;
                let base = 300 * (1 << (attempt - 1));
                assert!(
                    (base / 2 - 1..=base * 3 / 2 + 1).contains(&delay),
                    "backoff of attempt {attempt}: {delay} ms"
                );
                assert_eq!(claim_nothing(&c, &w).await, "queue_empty");
            } else {
                assert_eq!(r["status"], "dead", "{r:#}");
            }
        }
        let stats = call_ok(&c, "queue_stats", json!({})).await;
        assert_eq!(stats["dead_letters"], 1);
        let dead = call_ok(&c, "task_list", json!({"status": "dead"})).await;
        assert_eq!(dead["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(dead["tasks"][0]["id"], t2.as_str());
        let r = call_ok(&c, "task_requeue", json!({"task_id": t2})).await;
        assert_eq!(r["status"], "queued");
        assert_eq!(r["attempts"], 0);
        let leased = claim_task(&c, &w).await;
        assert_eq!(leased["id"], t2.as_str(), "claimable at once");
        assert_eq!(leased["attempts"], 1);
        report(&c, &w, &t2, json!({"result": "fixed"})).await;
        let e = tool_error(&c, "task_requeue", json!({"task_id": t2})).await;
        assert_eq!(e["code"], "conflict", "{e:#}");

        // A non-retryable failure fails the task for good, until requeued.
        let t3 = submit(&c, json!({"kind": "broken"})).await;
        claim_task(&c, &w).await;
        let r = report(
            &c,
            &w,
            &t3,
            json!({"error": {"message": "bad input", "retryable": false}}),
        )
        .await;
        assert_eq!(r["status"], "failed", "{r:#}");
        assert_eq!(r["last_error"], "bad input");
        assert_eq!(claim_nothing(&c, &w).await, "queue_empty");
        let r = call_ok(&c, "task_requeue", json!({"task_id": t3})).await;
        assert_eq!(r["status"], "queued");
        assert_eq!(claim_task(&c, &w).await["id"], t3.as_str());
        report(&c, &w, &t3, json!({"result": "repaired"})).await;

        // Requeueing a queued task, reporting both a result and an error, bad progress.
        let t4 = submit(&c, json!({"kind": "waiting"})).await;
        let e = tool_error(&c, "task_requeue", json!({"task_id": t4})).await;
        assert_eq!(e["code"], "conflict", "{e:#}");
        let e = tool_error(&c, "task_get", json!({"task_id": "tsk_missing"})).await;
        assert_eq!(e["code"], "not_found", "{e:#}");
        claim_task(&c, &w).await;
        let m = refused_argument(
            &c,
            "task_report",
            json!({"token": w.token, "task_id": t4, "result": 1, "error": {"message": "x"}}),
        )
        .await;
        assert!(m.contains("error"), "{m}");
        let m = refused_argument(
            &c,
            "task_report",
            json!({"token": w.token, "task_id": t4, "progress": 1.5}),
        )
        .await;
        assert!(m.contains("progress"), "{m}");
        assert_eq!(get(&c, &t4).await["status"], "leased");

        // Every transition is in the audit log, in order.
        assert_eq!(
            task_actions(&c, &t1).await,
            [
                "task.submitted",
                "task.leased",
                "task.running",
                "task.completed"
            ]
        );
        assert_eq!(
            task_actions(&c, &t2).await,
            [
                "task.submitted",
                "task.leased",
                "task.failed",
                "task.requeued",
                "task.leased",
                "task.failed",
                "task.requeued",
                "task.leased",
                "task.failed",
                "task.dead",
                "task.requeued",
                "task.leased",
                "task.completed"
            ]
        );
        assert_eq!(
            task_actions(&c, &t3).await,
            [
                "task.submitted",
                "task.leased",
                "task.failed",
                "task.requeued",
                "task.leased",
                "task.completed"
            ]
        );
        assert_eq!(
            task_actions(&c, &t4).await,
            ["task.submitted", "task.leased"]
        );
        let submitted = events(&c, "task.submitted", &t1).await;
        assert_eq!(submitted[0]["actor"], client_actor(era));
        let completed = events(&c, "task.completed", &t1).await;
        assert_eq!(completed[0]["actor"], format!("agent:{}", w.id));
        let requeued = events(&c, "task.requeued", &t2).await;
        assert_eq!(
            requeued[0]["actor"],
            client_actor(era),
            "a person requeued it"
        );
        assert_eq!(requeued[0]["detail"]["from"], "dead");
        verify_chain(&c).await;
        c.cancel().await.unwrap();
    }
}
}

both_backends! {
#[tokio::test]
async fn cancelled_tasks_are_never_claimed_and_the_leaseholder_is_told(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let w = register(&c, "w", &[]).await;

    let queued = submit(&c, json!({"kind": "q"})).await;
    let r = call_ok(
        &c,
        "task_cancel",
        json!({"task_id": queued, "reason": "not needed"}),
    )
    .await;
    assert_eq!(r["status"], "cancelled");
    assert!(r.to_string().contains("not needed"), "reason kept: {r:#}");
    assert_eq!(claim_nothing(&c, &w).await, "queue_empty");

    let running = submit(&c, json!({"kind": "r"})).await;
    assert_eq!(claim_task(&c, &w).await["id"], running.as_str());
    report(&c, &w, &running, json!({"progress": 0.2})).await;
    let r = call_ok(
        &c,
        "task_cancel",
        json!({"task_id": running, "reason": "wrong file"}),
    )
    .await;
    assert_eq!(r["status"], "cancelled");
    assert!(r["leased_by"].is_null());
    for fields in [json!({"result": {"ok": true}}), json!({"progress": 0.9})] {
        let mut args = json!({"token": w.token, "task_id": running});
        args.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let e = tool_error(&c, "task_report", args).await;
        assert_eq!(e["code"], "not_leaseholder", "{e:#}");
    }
    let t = get(&c, &running).await;
    assert_eq!(t["status"], "cancelled");
    assert!(t["result"].is_null());

    // Twice: a conflict that changes nothing.
    let e = tool_error(&c, "task_cancel", json!({"task_id": running})).await;
    assert_eq!(e["code"], "conflict", "{e:#}");
    assert_eq!(get(&c, &running).await["updated_at"], t["updated_at"]);
    let done = submit(&c, json!({"kind": "d"})).await;
    claim_task(&c, &w).await;
    report(&c, &w, &done, json!({"result": 1})).await;
    let e = tool_error(&c, "task_cancel", json!({"task_id": done})).await;
    assert_eq!(e["code"], "conflict", "{e:#}");
    assert!(
        e["message"].as_str().unwrap().contains("completed"),
        "{e:#}"
    );
    assert_eq!(get(&c, &done).await["status"], "completed");
    let e = tool_error(&c, "task_cancel", json!({"task_id": "tsk_nope"})).await;
    assert_eq!(e["code"], "not_found", "{e:#}");

    let q = events(&c, "task.cancelled", &queued).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["detail"]["from"], "queued");
    assert_eq!(q[0]["detail"]["reason"], "not needed");
    let r = events(&c, "task.cancelled", &running).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["detail"]["from"], "running");
    assert_eq!(r[0]["detail"]["leased_by"], w.id.as_str());
    verify_chain(&c).await;
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn idempotency_keys_and_not_before(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Stateless).await;
    let w = register(&c, "w", &[]).await;

    let first = call_ok(
        &c,
        "task_submit",
        json!({"kind": "once", "params": {"v": 1}, "idempotency_key": "order-42"}),
    )
    .await;
    assert_eq!(first["created"], true);
    let again = call_ok(
        &c,
        "task_submit",
        json!({"kind": "once", "params": {"v": 2}, "idempotency_key": "order-42"}),
    )
    .await;
    assert_eq!(again["created"], false);
    assert_eq!(again["task_id"], first["task_id"]);
    assert_eq!(again["task"]["params"], json!({"v": 1}));
    assert_eq!(again["task"]["idempotency_key"], "order-42");
    let id = first["task_id"].as_str().unwrap().to_string();
    let all = call_ok(&c, "task_list", json!({"kind": "once"})).await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(events(&c, "task.submitted", &id).await.len(), 1);
    // Still the same task after it finished.
    claim_task(&c, &w).await;
    report(&c, &w, &id, json!({"result": "done"})).await;
    let late = call_ok(
        &c,
        "task_submit",
        json!({"kind": "once", "idempotency_key": "order-42"}),
    )
    .await;
    assert_eq!(late["created"], false);
    assert_eq!(late["task"]["status"], "completed");

    // Not claimable before not_before.
    let at = OffsetDateTime::now_utc() + Duration::from_millis(1_200);
    let s = call_ok(
        &c,
        "task_submit",
        json!({"kind": "later", "not_before": at.format(&Rfc3339).unwrap()}),
    )
    .await;
    let later = s["task_id"].as_str().unwrap().to_string();
    let stored = ts(&s["task"]["not_before"]);
    assert!(
        (stored - at).whole_milliseconds().abs() <= 1,
        "{stored} vs {at}"
    );
    assert_eq!(claim_nothing(&c, &w).await, "queue_empty");
    let t = claim_eventually(&c, &w, Duration::from_secs(5)).await;
    assert_eq!(t["id"], later.as_str());
    assert!(
        OffsetDateTime::now_utc() + Duration::from_millis(2) >= at,
        "claimed before not_before"
    );
    // In the past: claimable at once.
    let past = (OffsetDateTime::now_utc() - Duration::from_secs(60))
        .format(&Rfc3339)
        .unwrap();
    let p = submit(&c, json!({"kind": "past", "not_before": past})).await;
    assert_eq!(claim_task(&c, &w).await["id"], p.as_str());
    let m = refused_argument(
        &c,
        "task_submit",
        json!({"kind": "x", "not_before": "tomorrow"}),
    )
    .await;
    assert!(m.contains("not_before"), "{m}");
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn expired_leases_are_retried_elsewhere_and_the_late_report_refused(db: Db) {
    let dir = data_dir();
    // Sweeps every 150 ms; agents would only go offline after 1.5 s.
    let c = start(&db, dir.path(), FAST, Era::Legacy).await;
    let slow = register(&c, "slow", &[]).await;
    let fast = register(&c, "fast", &[]).await;
    let nosy = register(&c, "nosy", &[]).await;

    let id = submit(&c, json!({"kind": "short", "timeout_seconds": 0.3})).await;
    let leased = claim_task(&c, &slow).await;
    assert_eq!(leased["id"], id.as_str());
    let lease = ts(&leased["lease_expires_at"]) - ts(&leased["updated_at"]);
    assert_eq!(lease.whole_milliseconds(), 300);
    let claimed = Instant::now();
    let deadline = claimed + Duration::from_secs(3);
    let t = loop {
        let t = get(&c, &id).await;
        if t["status"] == "queued" {
            break t;
        }
        assert!(Instant::now() < deadline, "the lease never expired: {t:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Not before the lease ran out: by the server's clock (the client's `claimed` comes a
    // round trip after the lease began, longer on PostgreSQL).
    let requeued_after = ts(&t["updated_at"]) - ts(&leased["updated_at"]);
    assert!(
        requeued_after.whole_milliseconds() >= 300,
        "{}: requeued {requeued_after} after the lease began: {t:#}",
        db.name()
    );
    assert!(t["leased_by"].is_null());
    assert_eq!(t["attempts"], 1);
    assert!(
        t["last_error"].as_str().unwrap().contains("lease expired"),
        "{t:#}"
    );
    let timed_out = events(&c, "task.timed_out", &id).await;
    assert_eq!(timed_out.len(), 1);
    assert_eq!(timed_out[0]["actor"], "system:mcp-coordinator");
    assert_eq!(timed_out[0]["detail"]["leased_by"], slow.id.as_str());

    heartbeat(&c, &fast, 0.0, "ready").await;
    let again = claim_eventually(&c, &fast, Duration::from_secs(2)).await;
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["attempts"], 2);
    let e = tool_error(
        &c,
        "task_report",
        json!({"token": slow.token, "task_id": id, "result": {"by": "slow"}}),
    )
    .await;
    assert_eq!(e["code"], "not_leaseholder", "{e:#}");
    assert!(e["message"].as_str().unwrap().contains(&fast.id), "{e:#}");
    // An agent that never held it is refused too.
    let e = tool_error(
        &c,
        "task_report",
        json!({"token": nosy.token, "task_id": id, "progress": 0.5}),
    )
    .await;
    assert_eq!(e["code"], "not_leaseholder", "{e:#}");
    let t = get(&c, &id).await;
    assert_eq!(t["status"], "leased");
    assert_eq!(t["leased_by"], fast.id.as_str());
    assert!(t["progress"].is_null());
    let done = report(&c, &fast, &id, json!({"result": {"by": "fast"}})).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], json!({"by": "fast"}));

    // Out of retries, an expired lease makes a dead letter.
    heartbeat(&c, &slow, 0.0, "ready").await;
    let last = submit(
        &c,
        json!({"kind": "last", "timeout_seconds": 0.3, "max_retries": 0}),
    )
    .await;
    assert_eq!(claim_task(&c, &slow).await["id"], last.as_str());
    let deadline = Instant::now() + Duration::from_secs(3);
    while get(&c, &last).await["status"] != "dead" {
        assert!(Instant::now() < deadline, "never became a dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        task_actions(&c, &last).await,
        [
            "task.submitted",
            "task.leased",
            "task.timed_out",
            "task.dead"
        ]
    );
    assert_eq!(
        task_actions(&c, &id).await,
        [
            "task.submitted",
            "task.leased",
            "task.timed_out",
            "task.requeued",
            "task.leased",
            "task.completed"
        ]
    );

    // Progress renews the lease for another timeout: a job that keeps reporting stays its own.
    heartbeat(&c, &fast, 0.0, "ready").await;
    let long = submit(&c, json!({"kind": "long", "timeout_seconds": 1.0})).await;
    let leased = claim_task(&c, &fast).await;
    assert_eq!(leased["id"], long.as_str());
    let claimed = Instant::now();
    let first_expiry = ts(&leased["lease_expires_at"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = report(&c, &fast, &long, json!({"progress": 0.5})).await;
    let renewed = ts(&r["lease_expires_at"]);
    assert_eq!((renewed - ts(&r["updated_at"])).whole_milliseconds(), 1_000);
    assert!(
        (renewed - first_expiry).whole_milliseconds() >= 400,
        "lease not renewed: {r:#}"
    );
    heartbeat(&c, &fast, 0.0, "ready").await;
    tokio::time::sleep(Duration::from_millis(1_300).saturating_sub(claimed.elapsed())).await;
    let t = get(&c, &long).await;
    assert_eq!(t["status"], "running", "the first lease ran out: {t:#}");
    assert_eq!(t["leased_by"], fast.id.as_str());
    let done = report(&c, &fast, &long, json!({"result": "long done"})).await;
    assert_eq!(done["status"], "completed");
    assert!(events(&c, "task.timed_out", &long).await.is_empty());
    verify_chain(&c).await;
    c.cancel().await.unwrap();
}
}

/// Mints an agent token with this key and header, like the coordinator's but with any claims.
fn mint(key: &[u8], alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

both_backends! {
#[tokio::test]
async fn forged_foreign_expired_and_unsigned_tokens_are_refused(db: Db) {
    let dir = data_dir();
    let other_dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let other_db = db.another("other");
    let other = start(&other_db, other_dir.path(), CALM, Era::Stateless).await;
    let w = register(&c, "w", &[]).await;
    let stranger = register(&other, "w", &[]).await;
    let id = submit(&c, json!({"kind": "guarded"})).await;
    claim_task(&c, &w).await;

    let refused = |token: String, why: &'static str| {
        let c = c.peer().clone();
        let id = id.clone();
        async move {
            for (tool, args) in [
                ("agent_heartbeat", json!({"token": token, "load": 0.1})),
                ("task_claim", json!({"token": token})),
                (
                    "task_report",
                    json!({"token": token, "task_id": id, "result": "forged"}),
                ),
                ("agent_deregister", json!({"token": token})),
            ] {
                let e = tool_error(&c, tool, args).await;
                assert_eq!(e["code"], "unauthorized", "{why} via {tool}: {e:#}");
                assert_eq!(e["details"]["field"], "token", "{e:#}");
            }
        }
    };

    // One character of the signature, or of the payload, changed.
    let parts: Vec<&str> = w.token.split('.').collect();
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    refused(
        format!("{}.{}.{}", parts[0], parts[1], flip(parts[2])),
        "signature",
    )
    .await;
    refused(
        format!("{}.{}.{}", parts[0], flip(parts[1]), parts[2]),
        "payload",
    )
    .await;
    // A token another coordinator (another data dir, another key) signed.
    let e = tool_error(
        &c,
        "agent_heartbeat",
        json!({"token": stranger.token, "load": 0.0}),
    )
    .await;
    assert_eq!(e["code"], "unauthorized");
    assert!(
        e["message"].as_str().unwrap().contains("signature"),
        "{e:#}"
    );
    refused(stranger.token.clone(), "foreign").await;

    // Tokens minted with this coordinator's own key: a well-formed one works, so each
    // refusal below is about the one thing changed.
    let key = std::fs::read(dir.path().join("agent-token.key")).unwrap();
    assert_eq!(key.len(), 32);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims = |exp: i64| {
        json!({"sub": w.id, "name": "w", "generation": 1, "iss": "mcp-coordinator",
               "aud": "mcp-coordinator/agent", "iat": now - 7_200, "exp": exp})
    };
    use jsonwebtoken::Algorithm::{HS256, HS384};
    let good = mint(&key, HS256, &claims(now + 3_600));
    heartbeat(
        &c,
        &Agent {
            id: w.id.clone(),
            token: good.clone(),
        },
        0.3,
        "ready",
    )
    .await;
    let expired = mint(&key, HS256, &claims(now - 3_600));
    let e = tool_error(
        &c,
        "agent_heartbeat",
        json!({"token": expired, "load": 0.0}),
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e:#}");
    refused(expired, "expired").await;
    refused(mint(&key, HS384, &claims(now + 3_600)), "HS384").await;
    let mut wrong_aud = claims(now + 3_600);
    wrong_aud["aud"] = json!("someone-else");
    refused(mint(&key, HS256, &wrong_aud), "audience").await;
    let mut ghost = claims(now + 3_600);
    ghost["sub"] = json!("agt_ghost");
    refused(mint(&key, HS256, &ghost), "unknown agent").await;
    let mut old_generation = claims(now + 3_600);
    old_generation["generation"] = json!(0);
    refused(mint(&key, HS256, &old_generation), "generation").await;
    // alg=none: {"alg":"none","typ":"JWT"}, a genuine payload, no signature.
    let payload = good.split('.').nth(1).unwrap();
    refused(
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
        "alg none",
    )
    .await;
    refused(String::new(), "empty").await;

    // None of that touched the task or the agent.
    let t = get(&c, &id).await;
    assert_eq!(t["status"], "leased");
    assert_eq!(t["leased_by"], w.id.as_str());
    assert!(t["result"].is_null());
    let listed = call_ok(&c, "agent_list", json!({})).await;
    assert_eq!(names(&listed), ["w"]);
    assert_eq!(listed["agents"][0]["load"], 0.3);
    let page = call_ok(&c, "audit_query", json!({"limit": 500})).await;
    assert!(!page.to_string().contains(&good), "a token reached the log");
    verify_chain(&c).await;
    c.cancel().await.unwrap();
    other.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn queue_stats_and_purge(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let w = register(&c, "w", &[]).await;
    let mut ids = Vec::new();
    for (kind, retries) in [("c1", 3), ("c2", 3), ("d", 0), ("f", 3)] {
        ids.push(submit(&c, json!({"kind": kind, "max_retries": retries})).await);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for (i, outcome) in [
        json!({"result": 1}),
        json!({"result": 2}),
        json!({"error": {"message": "again", "retryable": true}}),
        json!({"error": {"message": "never", "retryable": false}}),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(claim_task(&c, &w).await["id"], ids[i].as_str());
        report(&c, &w, &ids[i], outcome).await;
    }
    let x = submit(&c, json!({"kind": "x"})).await;
    call_ok(&c, "task_cancel", json!({"task_id": x})).await;
    let q1 = submit(&c, json!({"kind": "q1", "priority": "high"})).await;
    submit(&c, json!({"kind": "q2", "priority": "low"})).await;
    submit(&c, json!({"kind": "q3", "priority": "low"})).await;

    let s = call_ok(&c, "queue_stats", json!({})).await;
    assert_eq!(
        s["by_status"],
        json!({"completed": 2, "dead": 1, "failed": 1, "cancelled": 1, "queued": 3}),
        "{s:#}"
    );
    assert_eq!(s["queued_by_priority"], json!({"high": 1, "low": 2}));
    assert_eq!(s["dead_letters"], 1);
    assert_eq!(
        s["finished_last_minute"],
        json!({"completed": 2, "dead": 1, "failed": 1, "cancelled": 1})
    );
    let rate = s["completed_per_second_last_minute"].as_f64().unwrap();
    assert!((rate - 2.0 / 60.0).abs() < 1e-9, "{rate}");
    let age = s["oldest_queued_age_seconds"].as_f64().unwrap();
    assert!((0.0..30.0).contains(&age), "{age}");
    assert_eq!(claim_task(&c, &w).await["id"], q1.as_str());
    let s = call_ok(&c, "queue_stats", json!({})).await;
    assert_eq!(s["by_status"]["leased"], 1);
    assert_eq!(s["queued_by_priority"], json!({"low": 2}));

    tokio::time::sleep(Duration::from_millis(20)).await;
    // Past 100 years the cut-off, counted back from now in milliseconds, overflowed: u64::MAX
    // purged every finished task and 2^63 panicked. Refused, they purge nothing (below).
    for huge in [u64::MAX, 1 << 63] {
        let m = refused_argument(&c, "queue_purge", json!({"retention_seconds": huge})).await;
        assert!(
            m.contains("retention_seconds") && m.contains("expected 0 to 3153600000"),
            "{m}"
        );
    }
    let p = call_ok(&c, "queue_purge", json!({"retention_seconds": 3600})).await;
    assert_eq!(p["deleted"], 0);
    let p = call_ok(&c, "queue_purge", json!({"retention_seconds": 0})).await;
    assert_eq!(p["deleted"], 3, "completed and cancelled");
    let s = call_ok(&c, "queue_stats", json!({})).await;
    assert_eq!(
        s["by_status"],
        json!({"dead": 1, "failed": 1, "leased": 1, "queued": 2}),
        "{s:#}"
    );
    let e = tool_error(&c, "task_get", json!({"task_id": ids[0]})).await;
    assert_eq!(e["code"], "not_found");
    let p = call_ok(
        &c,
        "queue_purge",
        json!({"retention_seconds": 0, "statuses": ["dead", "failed"]}),
    )
    .await;
    assert_eq!(p["deleted"], 2);
    let s = call_ok(&c, "queue_stats", json!({})).await;
    assert_eq!(s["by_status"], json!({"leased": 1, "queued": 2}), "{s:#}");
    assert_eq!(s["dead_letters"], 0);
    let m = refused_argument(
        &c,
        "queue_purge",
        json!({"retention_seconds": 0, "statuses": ["queued"]}),
    )
    .await;
    assert!(m.contains("statuses"), "{m}");
    assert_eq!(
        call_ok(&c, "task_list", json!({}))
            .await
            .get("tasks")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The purges are audited; the purged tasks' own events stay.
    let purges = events(&c, "task.purged", "tasks").await;
    let deleted: Vec<&Value> = purges.iter().map(|e| &e["detail"]["deleted"]).collect();
    assert_eq!(deleted, [&json!(2), &json!(3), &json!(0)]);
    assert_eq!(
        task_actions(&c, &ids[0]).await,
        ["task.submitted", "task.leased", "task.completed"]
    );
    verify_chain(&c).await;
    c.cancel().await.unwrap();
}
}

both_backends! {
#[tokio::test]
async fn task_list_filters_and_pages(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Stateless).await;
    let a = register(&c, "a", &[]).await;
    let b = register(&c, "b", &[]).await;
    for i in 0..7 {
        submit(&c, json!({"kind": "page", "params": {"i": i}})).await;
    }
    submit(&c, json!({"kind": "other", "priority": "urgent"})).await;
    let aimed = submit(&c, json!({"kind": "aimed", "target_agent_id": b.id})).await;
    let mine = claim_task(&c, &a).await["id"].as_str().unwrap().to_string();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"kind": "page", "limit": 3});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = call_ok(&c, "task_list", args).await;
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= 3);
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "pages overlap");
    let urgent = call_ok(&c, "task_list", json!({"priority": "urgent"})).await;
    assert_eq!(urgent["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(urgent["tasks"][0]["id"], mine.as_str(), "urgent first");
    let of_a = call_ok(&c, "task_list", json!({"agent_id": a.id})).await;
    assert_eq!(of_a["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(of_a["tasks"][0]["id"], mine.as_str());
    let of_b = call_ok(&c, "task_list", json!({"agent_id": b.id})).await;
    assert_eq!(of_b["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(of_b["tasks"][0]["id"], aimed.as_str());
    let leased = call_ok(&c, "task_list", json!({"status": "leased"})).await;
    assert_eq!(leased["tasks"].as_array().unwrap().len(), 1);
    let m = refused_argument(&c, "task_list", json!({"limit": 501})).await;
    assert!(m.contains("limit"), "{m}");
    let m = refused_argument(&c, "task_list", json!({"cursor": "garbage"})).await;
    assert!(m.contains("cursor"), "{m}");
    c.cancel().await.unwrap();
}
}

both_backends! {
/// `max_tasks` leases several tasks in one claim, in dispatch order, never one twice.
#[tokio::test]
async fn a_claim_can_lease_several_tasks_in_dispatch_order(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let a = register(&c, "batch", &["etl"]).await;
    let low = submit(
        &c,
        json!({"kind": "k", "capabilities": ["etl"], "priority": "low"}),
    )
    .await;
    let mut normal = Vec::new();
    for _ in 0..3 {
        normal.push(submit(&c, json!({"kind": "k", "capabilities": ["etl"]})).await);
    }
    let urgent = submit(
        &c,
        json!({"kind": "k", "capabilities": ["etl"], "priority": "urgent"}),
    )
    .await;
    let other = submit(&c, json!({"kind": "k", "capabilities": ["gpu"]})).await;

    let r = call_ok(&c, "task_claim", json!({"token": a.token, "max_tasks": 4})).await;
    let ids: Vec<&str> = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![urgent.as_str()];
    expected.extend(normal.iter().map(String::as_str));
    assert_eq!(ids, expected, "{r:#}");
    assert_eq!(r["task"]["id"], urgent.as_str());
    for t in r["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "leased");
        assert_eq!(t["leased_by"], a.id.as_str());
        assert_eq!(t["attempts"], 1);
    }
    // What is left: the low one, once; the gpu task is not this agent's.
    let r = call_ok(&c, "task_claim", json!({"token": a.token, "max_tasks": 10})).await;
    let ids: Vec<&str> = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![low.as_str()]);
    assert_eq!(claim_nothing(&c, &a).await, "queue_empty");
    assert_eq!(get(&c, &other).await["status"], "queued");
    let e = refused_argument(&c, "task_claim", json!({"token": a.token, "max_tasks": 0})).await;
    assert!(e.contains("max_tasks"), "{e}");
    assert_eq!(events(&c, "task.leased", &urgent).await.len(), 1);
    verify_chain(&c).await;
}
}

both_backends! {
/// A report carrying the key `result` completes the task, whatever the value (`null` too); a
/// report carries exactly one kind, and an argument error names the field that breaks that.
#[tokio::test]
async fn a_null_result_completes_the_task_and_a_report_is_one_kind(db: Db) {
    for era in ERAS {
        let dir = data_dir();
        // A database of its own each time round, as the data directory is.
        let db = db.another("round");
        let c = start(&db, dir.path(), CALM, era).await;
        let w = register(&c, "nuller", &[]).await;
        let id = submit(&c, json!({"kind": "noop", "max_retries": 0})).await;
        claim_task(&c, &w).await;
        for (fields, field) in [
            (json!({}), "result"),
            (json!({"result": 1, "error": {"message": "x"}}), "error"),
            (json!({"result": null, "error": {"message": "x"}}), "error"),
            (json!({"result": null, "progress": 0.5}), "progress"),
            (json!({"result": {}, "message": "done"}), "message"),
            (
                json!({"error": {"message": "x"}, "progress": 1.0}),
                "progress",
            ),
        ] {
            let mut args = json!({"token": w.token, "task_id": id});
            args.as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            let m = refused_argument(&c, "task_report", args).await;
            assert!(m.contains(&format!("`{field}`")), "{fields}: {m}");
            assert!(m.contains("exactly one of"), "{fields}: {m}");
        }
        assert_eq!(get(&c, &id).await["status"], "leased");

        let done = report(&c, &w, &id, json!({"result": null})).await;
        assert_eq!(done["status"], "completed", "{done:#}");
        assert!(done["result"].is_null());
        assert!(done["leased_by"].is_null());
        let stored = get(&c, &id).await;
        assert_eq!(stored["status"], "completed", "{stored:#}");
        assert!(stored["finished_at"].is_string());
        assert_eq!(
            task_actions(&c, &id).await,
            ["task.submitted", "task.leased", "task.completed"]
        );
        // Completed means completed: the lease is gone, a late report is refused.
        let e = tool_error(
            &c,
            "task_report",
            json!({"token": w.token, "task_id": id, "progress": 0.5}),
        )
        .await;
        assert_eq!(e["code"], "not_leaseholder", "{e:#}");
        c.cancel().await.unwrap();
    }
}
}

both_backends! {
/// `reports` carries several reports in one call and one transaction: each is judged on its
/// own (one for a task the agent does not hold, a task reported twice, an unknown task is
/// refused in its place, the others apply), a bad token applies none, and the shape of the
/// arguments is refused naming the field.
#[tokio::test]
async fn several_reports_go_in_one_call_each_judged_on_its_own(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Legacy).await;
    let w = register(&c, "batcher", &["etl"]).await;
    let done = submit(&c, json!({"kind": "k", "capabilities": ["etl"], "max_retries": 0})).await;
    let failed = submit(&c, json!({"kind": "k", "capabilities": ["etl"], "max_retries": 0})).await;
    let working = submit(&c, json!({"kind": "k", "capabilities": ["etl"]})).await;
    let retried = submit(&c, json!({"kind": "k", "capabilities": ["etl"], "max_retries": 2})).await;
    let r = call_ok(&c, "task_claim", json!({"token": w.token, "max_tasks": 4})).await;
    assert_eq!(r["tasks"].as_array().unwrap().len(), 4, "{r:#}");
    let v = register(&c, "other", &["etl"]).await;
    let theirs = submit(&c, json!({"kind": "k", "capabilities": ["etl"]})).await;
    assert_eq!(claim_task(&c, &v).await["id"], theirs.as_str());

    let batch = json!([
        {"task_id": done, "result": {"n": 1}},
        {"task_id": failed, "error": {"message": "broken", "retryable": false}},
        {"task_id": working, "progress": 0.5, "message": "half"},
        {"task_id": theirs, "result": 2},
        {"task_id": done, "result": 3},
        {"task_id": "tsk_nope", "result": 4},
        {"task_id": retried, "error": {"message": "flaky"}},
    ]);
    // A token that is not an agent's applies none of them.
    let e = tool_error(&c, "task_report", json!({"token": "nope", "reports": batch})).await;
    assert_eq!(e["code"], "unauthorized", "{e:#}");
    assert_eq!(get(&c, &done).await["status"], "leased");

    let r = call_ok(&c, "task_report", json!({"token": w.token, "reports": batch})).await;
    let out = r["reports"].as_array().unwrap();
    assert_eq!(out.len(), 7, "{r:#}");
    assert!(r.get("id").is_none(), "a batch has no top-level task: {r:#}");
    let ids: Vec<&str> = out.iter().map(|o| o["task_id"].as_str().unwrap()).collect();
    let sent: Vec<&str> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, sent, "outcomes come in the order sent");
    assert_eq!(out[0]["task"]["status"], "completed", "{r:#}");
    assert_eq!(out[0]["task"]["result"], json!({"n": 1}));
    assert_eq!(out[1]["task"]["status"], "failed", "{r:#}");
    assert_eq!(out[2]["task"]["status"], "running", "{r:#}");
    assert_eq!(out[2]["task"]["progress"], 0.5);
    assert_eq!(out[3]["error"]["code"], "not_leaseholder", "{r:#}");
    assert_eq!(out[4]["error"]["code"], "invalid_argument", "{r:#}");
    assert!(out[4]["error"]["message"].as_str().unwrap().contains("twice"), "{r:#}");
    assert_eq!(out[5]["error"]["code"], "not_found", "{r:#}");
    assert_eq!(out[6]["task"]["status"], "queued", "{r:#}");
    for o in out {
        assert!(o["task"].is_object() != o["error"].is_object(), "one of task, error: {o:#}");
    }

    // What is stored is what the outcomes said; the other agent's task is untouched.
    assert_eq!(get(&c, &done).await["result"], json!({"n": 1}));
    assert_eq!(get(&c, &failed).await["last_error"], "broken");
    assert_eq!(get(&c, &working).await["message"], "half");
    assert_eq!(get(&c, &retried).await["status"], "queued");
    let t = get(&c, &theirs).await;
    assert_eq!((t["status"].as_str(), t["leased_by"].as_str()), (Some("leased"), Some(v.id.as_str())));
    assert_eq!(
        task_actions(&c, &done).await,
        ["task.submitted", "task.leased", "task.completed"]
    );
    assert_eq!(
        task_actions(&c, &retried).await,
        ["task.submitted", "task.leased", "task.failed", "task.requeued"]
    );

    // The shape is refused before anything is looked at, naming the field.
    for (args, field) in [
        (json!({"token": w.token}), "task_id"),
        (json!({"token": w.token, "reports": []}), "reports"),
        (json!({"token": w.token, "task_id": working, "reports": [{"task_id": working, "progress": 0.7}]}), "task_id"),
        (json!({"token": w.token, "result": 1, "reports": [{"task_id": working, "progress": 0.7}]}), "result"),
        (json!({"token": w.token, "reports": [{"task_id": working, "result": 1, "error": {"message": "x"}}]}), "reports[0].error"),
        (json!({"token": w.token, "reports": [{"task_id": working}]}), "reports[0].result"),
        (json!({"token": w.token, "reports": [{"task_id": done, "result": 1}, {"task_id": working, "progress": 1.5}]}), "reports[1].progress"),
    ] {
        let m = refused_argument(&c, "task_report", args.clone()).await;
        assert!(m.contains(&format!("`{field}`")), "{args}: {m}");
    }
    let many: Vec<Value> = (0..101).map(|_| json!({"task_id": working, "progress": 0.7})).collect();
    let m = refused_argument(&c, "task_report", json!({"token": w.token, "reports": many})).await;
    assert!(m.contains("`reports`") && m.contains("100"), "{m}");
    assert_eq!(get(&c, &working).await["progress"], 0.5);
    verify_chain(&c).await;
}
}

/// The newest audit sequence number and a mark of every other write, read on a connection of
/// the test's own: on SQLite the database's data_version (it changes when any other
/// connection commits), on PostgreSQL the row versions (`xmin`, `ctid`) of the queue's tables,
/// which any UPDATE, INSERT or DELETE changes.
fn db_marks(db: &common::db::Raw) -> (i64, String) {
    let seq = db.row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])[0]
        .as_i64()
        .unwrap();
    let version = match db {
        common::db::Raw::Sqlite(c) => c
            .pragma_query_value(None, "data_version", |r| r.get::<_, i64>(0))
            .unwrap()
            .to_string(),
        common::db::Raw::Postgres(_) => db.row(
            "SELECT (SELECT COALESCE(string_agg(id || ':' || xmin::text || ctid::text, ',' ORDER BY id), '') FROM tasks)
                 || '|' || (SELECT COALESCE(string_agg(id || ':' || xmin::text || ctid::text, ',' ORDER BY id), '') FROM agents)",
            &[],
        )[0]
        .text(),
    };
    (seq, version)
}

both_backends! {
/// Idle workers polling fill nothing: a claim that finds no task commits nothing (no write
/// transaction reaches the database, no audit event), with or without a `load` it already
/// reported. A claim that finds a task is audited as before.
#[tokio::test]
async fn idle_claims_write_nothing(db: Db) {
    for era in ERAS {
        let dir = data_dir();
        // A database of its own each time round, as the data directory is.
        let db = db.another("round");
        let c = start(&db, dir.path(), CALM, era).await;
        let w = register(&c, "idler", &["etl"]).await;
        heartbeat(&c, &w, 0.25, "ready").await;
        // Queued, but not for this agent.
        let foreign = submit(&c, json!({"kind": "k", "capabilities": ["gpu"]})).await;
        let raw = db.raw(dir.path());
        db.settle_signed(dir.path());
        let before = db_marks(&raw);
        for i in 0..100 {
            let args = if i % 2 == 0 {
                json!({"token": w.token})
            } else {
                json!({"token": w.token, "load": 0.25})
            };
            let r = call_ok(&c, "task_claim", args).await;
            assert_eq!(r["reason"], "queue_empty", "{r:#}");
        }
        assert_eq!(
            db_marks(&raw),
            before,
            "{}: 100 idle claims changed the database (audit seq, data_version or rows)",
            db.name()
        );

        let id = submit(&c, json!({"kind": "k", "capabilities": ["etl"]})).await;
        claim_task(&c, &w).await;
        assert_eq!(events(&c, "task.leased", &id).await.len(), 1);
        let claims = events(&c, "tool.call", "task_claim").await;
        assert_eq!(
            claims.len(),
            1,
            "only the claim that leased a task: {claims:#?}"
        );
        assert_eq!(get(&c, &foreign).await["status"], "queued");
        verify_chain(&c).await;
        c.cancel().await.unwrap();
    }
}
}

both_backends! {
/// `wait_seconds` turns a claim into a long poll: it returns as soon as another coordinator
/// process on the same database queues a task for this agent (within 100 ms plus what a debug
/// build on a busy machine adds), or empty when the time is up, having written nothing.
#[tokio::test]
async fn a_long_poll_returns_as_soon_as_another_process_queues_a_task(db: Db) {
    let dir = data_dir();
    let worker_side = start(&db, dir.path(), CALM, Era::Legacy).await;
    let other = start(&db, dir.path(), CALM, Era::Stateless).await;
    let w = register(&worker_side, "long-poller", &["etl"]).await;
    for bad in [60.5, -1.0] {
        let m = refused_argument(
            &worker_side,
            "task_claim",
            json!({"token": w.token, "wait_seconds": bad}),
        )
        .await;
        assert!(m.contains("`wait_seconds`") && m.contains("0 to 60"), "{m}");
    }

    // Nothing comes: the poll lasts its time, returns empty and leaves no trace.
    let raw = db.raw(dir.path());
    db.settle_signed(dir.path());
    let before = db_marks(&raw);
    let started = Instant::now();
    let r = call_ok(
        &worker_side,
        "task_claim",
        json!({"token": w.token, "wait_seconds": 1.5}),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(r["reason"], "queue_empty", "{r:#}");
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(2500)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(
        db_marks(&raw).0,
        before.0,
        "{}: an empty long poll left audit events",
        db.name()
    );

    // A task aimed at someone else does not end the wait; one for this agent does, at once.
    let bystander = register(&other, "bystander", &["etl"]).await;
    let mut latencies = Vec::new();
    for round in 0..5 {
        let peer = worker_side.peer().clone();
        let token = w.token.clone();
        let poll = tokio::spawn(async move {
            let r = call_ok(
                &peer,
                "task_claim",
                json!({"token": token, "wait_seconds": 20}),
            )
            .await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        submit(
            &other,
            json!({"kind": "k", "capabilities": ["etl"], "target_agent_id": bystander.id}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !poll.is_finished(),
            "round {round}: woke for another agent's task"
        );
        let submitting = Instant::now();
        let id = submit(&other, json!({"kind": "k", "capabilities": ["etl"]})).await;
        let (r, claimed_at) = poll.await.unwrap();
        assert_eq!(r["task"]["id"], id.as_str(), "round {round}: {r:#}");
        assert_eq!(r["task"]["leased_by"], w.id.as_str());
        latencies.push(claimed_at.saturating_duration_since(submitting));
    }
    latencies.sort();
    eprintln!("long poll: submit (other process) to claim returned: {latencies:?}");
    assert!(
        latencies[2] < Duration::from_millis(150) && latencies[4] < Duration::from_millis(400),
        "long polls returned {latencies:?} after the submit began"
    );

    // A task that becomes claimable by time alone (not_before) is noticed too.
    let soon = (OffsetDateTime::now_utc() + Duration::from_millis(600))
        .format(&Rfc3339)
        .unwrap();
    let id = submit(
        &other,
        json!({"kind": "k", "capabilities": ["etl"], "not_before": soon}),
    )
    .await;
    let started = Instant::now();
    let r = call_ok(
        &worker_side,
        "task_claim",
        json!({"token": w.token, "wait_seconds": 10}),
    )
    .await;
    assert_eq!(r["task"]["id"], id.as_str(), "{r:#}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    verify_chain(&worker_side).await;
    worker_side.cancel().await.unwrap();
    other.cancel().await.unwrap();
}
}

both_backends! {
/// A task status this build does not know (a row written by a newer build, or by hand) is
/// refused with a storage error naming the column and the value, where it used to be shown
/// as `queued`: a claim or a report must not act on a guess.
#[tokio::test]
async fn a_stored_status_this_build_does_not_know_is_an_error_not_a_guess(db: Db) {
    let dir = data_dir();
    let c = start(&db, dir.path(), CALM, Era::Stateless).await;
    let id = submit(&c, json!({"kind": "k"})).await;
    assert_eq!(get(&c, &id).await["status"], "queued");

    let raw = db.raw(dir.path());
    // The schema's CHECK allows only the statuses of this build: set one past it, as a
    // newer build's row would be (its schema's CHECK would allow it).
    match &raw {
        common::db::Raw::Sqlite(c) => {
            c.busy_timeout(Duration::from_secs(5)).unwrap();
            c.pragma_update(None, "ignore_check_constraints", true)
                .unwrap();
        }
        common::db::Raw::Postgres(_) => {
            raw.batch("ALTER TABLE tasks DROP CONSTRAINT tasks_status_check");
        }
    }
    raw.exec(
        "UPDATE tasks SET status = 'paused' WHERE id = ?1",
        sql_args![&id],
    );
    drop(raw);

    let e = tool_error(&c, "task_get", json!({"task_id": id})).await;
    assert_eq!(e["code"], "storage_error", "{}: {e:#}", db.name());
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(r#"unreadable tasks.status "paused""#),
        "{message}"
    );
    c.cancel().await.unwrap();
}
}
