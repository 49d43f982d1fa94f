//! `/metrics`: a serving coordinator's console is scraped after known state was made (tasks in
//! several statuses, approvals pending and decided through each channel, tool calls through
//! the coordinator), the text is parsed with a Prometheus parser, and every figure must match
//! exactly; the standalone console shows the same database figures and no tool calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::console::{ConsoleProc, Http};
use mcp_coordinator::approval::{
    ApprovalPolicy, ApprovalService, Channel, Kind, NewApproval, Risk, State, Verdict,
};
use mcp_coordinator::audit::{Actor, ActorKind, AuditLog, AuditSigner};
use mcp_coordinator::store::{Location, Store};
use prometheus_parse::{Scrape, Value as Prom};
use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// A coordinator logging at info level, so that it names its console's URL on stderr.
async fn serve(
    dir: &Path,
) -> (
    rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig>,
    String,
) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-coordinator"));
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all")
        .arg("--data-dir")
        .arg(dir)
        .args(["--log-level", "info", "--log-format", "text"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG");
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mcp-coordinator");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut lines = tokio::io::BufReader::new(stderr.expect("stderr")).lines();
    tokio::spawn(async move {
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving MCP on stdio")
                && let Some(url) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("console="))
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(url.trim_matches('"').to_string());
            }
            eprintln!("[serve] {line}");
        }
    });
    let client = common::client_config("metrics-test")
        .serve(transport)
        .await
        .expect("connect");
    let url = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("the coordinator logs its console URL")
        .expect("console URL");
    (client, url)
}

/// Samples by name and sorted labels.
type Samples = HashMap<(String, Vec<(String, String)>), Prom>;

/// Every sample of a scrape, by name and sorted labels.
fn samples(text: &str) -> Samples {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            ((s.metric, labels), s.value)
        })
        .collect()
}

fn value(all: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    match all.get(&(name.to_string(), l))? {
        Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => Some(*v),
        Prom::Histogram(buckets) => buckets
            .iter()
            .find(|b| b.less_than.is_infinite())
            .map(|b| b.count),
        Prom::Summary(_) => None,
    }
}

fn names(all: &Samples, prefix: &str) -> Vec<String> {
    let mut n: Vec<String> = all
        .keys()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, l)| format!("{name}{l:?}"))
        .collect();
    n.sort();
    n
}

fn generic(summary: &str) -> NewApproval {
    NewApproval {
        kind: Kind::Generic,
        subject_id: summary.to_string(),
        summary: summary.to_string(),
        action: json!({"do": summary}),
        risk: Risk::Low,
        preview: None,
        requested_by: Actor::new(ActorKind::Client, "metrics-test/1"),
        expires_in_seconds: None,
    }
}

fn verdict(state: State, via: Channel) -> Verdict {
    Verdict {
        state,
        by: Actor::overseer("ada"),
        via,
        reason: Some("test".into()),
        cause: None,
        context: json!({}),
    }
}

async fn report(c: &rmcp::service::Peer<rmcp::RoleClient>, token: &str, fields: Value) {
    let task = common::call_ok(c, "task_claim", json!({"token": token})).await;
    let id = task["task"]["id"].as_str().expect("a task").to_string();
    let mut args = json!({"token": token, "task_id": id});
    args.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    common::call_ok(c, "task_report", args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_state_made() {
    let dir = common::data_dir();
    let (client, url) = serve(dir.path()).await;

    // Tool calls: 1 agent_register, 5 task_submit, 2 task_claim, 2 task_report, 1 task_cancel,
    // and one call of a tool that does not exist.
    let agent = common::call_ok(&client, "agent_register", json!({"name": "w"})).await;
    let token = agent["token"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for (kind, retries) in [("done", 3), ("bad", 3), ("gone", 3), ("q1", 3), ("q2", 3)] {
        let r = common::call_ok(
            &client,
            "task_submit",
            json!({"kind": kind, "max_retries": retries}),
        )
        .await;
        ids.push(r["task_id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    report(&client, &token, json!({"result": 1})).await;
    report(
        &client,
        &token,
        json!({"error": {"message": "never", "retryable": false}}),
    )
    .await;
    common::call_ok(&client, "task_cancel", json!({"task_id": ids[2]})).await;
    let unknown = common::call(&client, "no_such_tool", json!({})).await;
    assert!(
        unknown.is_err() || unknown.as_ref().is_ok_and(|r| r.is_error == Some(true)),
        "{unknown:?}"
    );

    // Approvals, in this process on the same database: 2 pending, and decisions through each
    // channel (approved at the console twice, rejected at the CLI, approved in a form,
    // cancelled in a form, one expired).
    let store = Store::open(&Location::File(common::db_path(dir.path()))).unwrap();
    let signer = AuditSigner::load_or_create(dir.path()).unwrap();
    let approvals = ApprovalService::new(
        AuditLog::new(store, Arc::new(signer)),
        ApprovalPolicy::default(),
    );
    approvals.request(generic("pending one")).unwrap();
    approvals.request(generic("pending two")).unwrap();
    for (name, state, via) in [
        ("c1", State::Approved, Channel::Console),
        ("c2", State::Approved, Channel::Console),
        ("cli", State::Rejected, Channel::Cli),
        ("form", State::Approved, Channel::ElicitationForm),
        ("dismissed", State::Cancelled, Channel::ElicitationForm),
    ] {
        let a = approvals.request(generic(name)).unwrap();
        approvals.decide(&a.id, verdict(state, via)).unwrap();
    }
    let mut soon = generic("expiring");
    soon.expires_in_seconds = Some(1);
    approvals.request(soon).unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(approvals.expire_due().unwrap(), 1);

    common::settle_signed(dir.path());
    let head = || {
        rusqlite::Connection::open(common::db_path(dir.path()))
            .unwrap()
            .query_row("SELECT MAX(seq) FROM audit_events", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
    };
    let before = head();
    let mut http = Http::new(&url);
    let scrape = http.get("/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let kind = scrape
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert_eq!(head(), before, "the head moved during the scrape");
    let m = samples(&scrape.body);
    let text = &scrape.body;

    let tasks = |status: &str| value(&m, "mcp_coordinator_tasks", &[("status", status)]);
    assert_eq!(tasks("queued"), Some(2.0), "{text}");
    assert_eq!(tasks("completed"), Some(1.0), "{text}");
    assert_eq!(tasks("failed"), Some(1.0), "{text}");
    assert_eq!(tasks("cancelled"), Some(1.0), "{text}");
    assert_eq!(names(&m, "mcp_coordinator_tasks").len(), 4, "{text}");

    assert_eq!(
        value(&m, "mcp_coordinator_approvals_pending", &[]),
        Some(2.0)
    );
    let age = value(
        &m,
        "mcp_coordinator_approval_oldest_pending_age_seconds",
        &[],
    )
    .unwrap();
    assert!(
        (1.0..60.0).contains(&age),
        "oldest pending age {age}: {text}"
    );
    let decided = |channel: &str, state: &str| {
        value(
            &m,
            "mcp_coordinator_approval_decisions_total",
            &[("channel", channel), ("state", state)],
        )
    };
    assert_eq!(decided("console", "approved"), Some(2.0), "{text}");
    assert_eq!(decided("cli", "rejected"), Some(1.0), "{text}");
    assert_eq!(decided("elicitation_form", "approved"), Some(1.0), "{text}");
    assert_eq!(
        decided("elicitation_form", "cancelled"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(decided("expiry", "expired"), Some(1.0), "{text}");
    assert_eq!(
        names(&m, "mcp_coordinator_approval_decisions").len(),
        5,
        "{text}"
    );

    assert_eq!(
        value(&m, "mcp_coordinator_audit_events_total", &[]),
        Some(before as f64),
        "{text}"
    );
    assert!(names(&m, "mcp_coordinator_instances").is_empty(), "{text}");

    let calls = |tool: &str, outcome: &str| {
        value(
            &m,
            "mcp_coordinator_tool_calls_total",
            &[("tool", tool), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("agent_register", "ok"), Some(1.0), "{text}");
    assert_eq!(calls("task_submit", "ok"), Some(5.0), "{text}");
    assert_eq!(calls("task_claim", "ok"), Some(2.0), "{text}");
    assert_eq!(calls("task_report", "ok"), Some(2.0), "{text}");
    assert_eq!(calls("task_cancel", "ok"), Some(1.0), "{text}");
    assert_eq!(calls("unknown", "invalid"), Some(1.0), "{text}");
    assert_eq!(names(&m, "mcp_coordinator_tool_calls").len(), 6, "{text}");
    let latency = |tool: &str| {
        value(
            &m,
            "mcp_coordinator_tool_call_duration_seconds",
            &[("tool", tool)],
        )
    };
    assert_eq!(latency("task_submit"), Some(5.0), "{text}");
    assert_eq!(latency("task_cancel"), Some(1.0), "{text}");
    assert!(
        text.contains("mcp_coordinator_tool_call_duration_seconds_sum{tool=\"task_submit\"}"),
        "{text}"
    );
    assert!(!text.contains("no_such_tool"), "{text}");

    // The console alone, on the same database: the same stored figures, no tool calls.
    let alone = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&alone.url);
    let scrape = http.get("/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    let m2 = samples(&scrape.body);
    assert_eq!(
        value(&m2, "mcp_coordinator_tasks", &[("status", "queued")]),
        Some(2.0)
    );
    assert_eq!(
        value(&m2, "mcp_coordinator_approvals_pending", &[]),
        Some(2.0)
    );
    assert!(
        !scrape.body.contains("mcp_coordinator_tool_call"),
        "{}",
        scrape.body
    );
    client.cancel().await.unwrap();
}

/// `[console] metrics_need_login = true` puts `/metrics` behind the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_need_a_login() {
    let dir = common::data_dir();
    common::console::init_overseer(dir.path(), "ada", common::console::PASSPHRASE);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[console]\nmetrics_need_login = true\n").unwrap();
    let console = ConsoleProc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut http = Http::new(&console.url);
    let refused = http.get("/metrics").await;
    assert_eq!(refused.status, 303, "{}", refused.body);
    assert_eq!(refused.location.as_deref(), Some("/login?next=%2Fmetrics"));
    assert_eq!(http.login(common::console::PASSPHRASE).await.status, 303);
    let ok = http.get("/metrics").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        ok.body.contains("mcp_coordinator_approvals_pending 0"),
        "{}",
        ok.body
    );
}
