//! Size limits and bounds over the real binary: an oversized argument is refused naming the
//! field, the limit and the size seen, and nothing is stored; a large listing comes back under
//! the response budget with `…[truncated N bytes]` markers; the `tool.call` event keeps a
//! bounded copy of the arguments; a config value outside its bounds stops the start naming the
//! key, and the config schema carries the same bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{BIN, Era, RawServer, call, call_ok, connect, data_dir};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};

const PAYLOAD: usize = 64 * 1024;
const BUDGET: usize = 512 * 1024;

fn config(dir: &Path) -> String {
    let path = dir.join("limits.toml");
    std::fs::write(
        &path,
        format!(
            "[limits]\nmax_payload_bytes = {PAYLOAD}\nresponse_budget_bytes = {BUDGET}\n\
             audit_arguments_bytes = 1024\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The message of a call refused for an argument (an `invalid_argument` tool result).
async fn refused(c: &Peer<RoleClient>, tool: &str, args: Value) -> String {
    common::invalid_argument(tool, call(c, tool, args).await).1
}

#[tokio::test]
async fn oversized_arguments_are_refused_and_nothing_is_stored() {
    let dir = data_dir();
    let cfg = config(dir.path());
    let c = connect(dir.path(), &["--config", &cfg], Era::Legacy).await;

    let big = "x".repeat(PAYLOAD);
    let m = refused(
        &c,
        "task_submit",
        json!({"kind": "k", "params": {"blob": big}}),
    )
    .await;
    assert!(
        m.contains("`params`")
            && m.contains(&format!("at most {PAYLOAD} bytes"))
            && m.contains(&format!("got {}", PAYLOAD + 11)),
        "{m}"
    );
    let m = refused(&c, "task_submit", json!({"kind": "k".repeat(201)})).await;
    assert!(
        m.contains("`kind`") && m.contains("at most 200 characters, got 201"),
        "{m}"
    );
    let m = refused(
        &c,
        "task_submit",
        json!({"kind": "k", "idempotency_key": "i".repeat(5000)}),
    )
    .await;
    assert!(
        m.contains("`idempotency_key`") && m.contains("got 5000"),
        "{m}"
    );
    let m = refused(
        &c,
        "task_submit",
        json!({"kind": "k", "capabilities": ["c".repeat(300)]}),
    )
    .await;
    assert!(
        m.contains("`capabilities[0]`") && m.contains("at most 200"),
        "{m}"
    );
    let m = refused(&c, "task_submit", json!({"kind": "k", "max_retries": 101})).await;
    assert!(
        m.contains("`max_retries`") && m.contains("expected 0 to 100, got 101"),
        "{m}"
    );
    let m = refused(
        &c,
        "approval_request",
        json!({"summary": "s".repeat(4001), "action": {"do": "x"}, "risk": "low"}),
    )
    .await;
    assert!(
        m.contains("`summary`") && m.contains("at most 4000 characters"),
        "{m}"
    );
    let m = refused(
        &c,
        "approval_request",
        json!({"summary": "s", "action": {"blob": "y".repeat(PAYLOAD)}, "risk": "low"}),
    )
    .await;
    assert!(m.contains("`action`") && m.contains("bytes"), "{m}");
    let m = refused(
        &c,
        "pipeline_run",
        json!({"pipeline": "none", "input": {"blob": "z".repeat(PAYLOAD)}}),
    )
    .await;
    assert!(m.contains("`input`"), "{m}");

    // A report's result over the limit leaves the task as it was: leased, no result.
    let agent = call_ok(
        &c,
        "agent_register",
        json!({"name": "w1", "capabilities": []}),
    )
    .await;
    let token = agent["token"].as_str().unwrap().to_string();
    let t = call_ok(
        &c,
        "task_submit",
        json!({"kind": "small", "params": {"n": 1}}),
    )
    .await;
    let id = t["task_id"].as_str().unwrap().to_string();
    call_ok(&c, "task_claim", json!({"token": token})).await;
    let m = refused(
        &c,
        "task_report",
        json!({"token": token, "task_id": id, "result": {"blob": "r".repeat(PAYLOAD)}}),
    )
    .await;
    assert!(m.contains("`result`"), "{m}");
    let got = call_ok(&c, "task_get", json!({"task_id": id})).await;
    assert_eq!(got["status"], "leased", "{got}");
    assert_eq!(got["result"], Value::Null, "{got}");

    // Only the one small task was stored, and only its submission was recorded.
    let list = call_ok(&c, "task_list", json!({})).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
    let events = call_ok(&c, "audit_query", json!({"action": "task.submitted"})).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    c.cancel().await.unwrap();
}

/// Calls a tool; asserts its response line is within the budget; returns its structured content.
fn within_budget(s: &mut RawServer, tool: &str, args: Value) -> Value {
    let params = json!({"name": tool, "arguments": args, "_meta": RawServer::meta(false)});
    let line = s.request_line("tools/call", params);
    assert!(line.len() <= BUDGET, "{tool} line of {} bytes", line.len());
    let v: Value = serde_json::from_str(&line).unwrap();
    v["result"]["structuredContent"].clone()
}

#[test]
fn a_large_listing_comes_back_under_the_budget_with_markers() {
    let dir = data_dir();
    let cfg = config(dir.path());
    let mut s = RawServer::spawn_with(dir.path(), &["--config", &cfg]);
    // Ten tasks of almost the largest params: 620 KB of params, over twice the budget.
    let blob = "p".repeat(PAYLOAD - 100);
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = s.call(
            "task_submit",
            json!({"kind": "big", "params": {"i": i, "blob": blob}}),
            false,
            None,
        );
        let id = r["result"]["structuredContent"]["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"));
        ids.push(id.to_string());
    }
    let v = within_budget(&mut s, "task_list", json!({"limit": 50}));
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 10, "every task is listed");
    for t in tasks {
        assert!(ids.iter().any(|id| t["id"] == **id));
    }
    let cut = tasks
        .iter()
        .filter(|t| {
            t["params"]
                .as_str()
                .is_some_and(|p| p.starts_with("…[truncated"))
        })
        .count();
    assert!(cut >= 6, "{cut} params cut");
    // What was not cut is whole.
    for t in tasks.iter().filter(|t| t["params"].is_object()) {
        assert_eq!(t["params"]["blob"].as_str().map(str::len), Some(blob.len()));
    }

    // Each tool.call event kept at most ~1 KiB of its arguments, so a full page of them fits.
    let v = within_budget(
        &mut s,
        "audit_query",
        json!({"action": "tool.call", "limit": 500}),
    );
    let events = v["events"].as_array().unwrap();
    let submits: Vec<&Value> = events
        .iter()
        .filter(|e| e["subject"] == "task_submit")
        .collect();
    assert_eq!(submits.len(), 10, "{events:?}");
    for e in submits {
        let args = &e["detail"]["arguments"];
        assert_eq!(args["kind"], "big", "{e}");
        let p = args["params"].as_str().unwrap_or_default();
        assert!(p.starts_with("…[truncated"), "{e}");
    }
}

/// Runs `serve` with this config text; returns (exit code, stderr).
fn serve_with(text: &str) -> (i32, String) {
    let dir = data_dir();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_config_outside_its_bounds_stops_the_start_naming_the_key() {
    for (text, key, bound) in [
        (
            "[tasks]\ndefault_max_retries = 1000\n",
            "tasks.default_max_retries",
            "expected 0 to 100, got 1000",
        ),
        (
            "[tasks]\ndefault_timeout_seconds = 0\n",
            "tasks.default_timeout_seconds",
            "expected 0.05 to 604800",
        ),
        (
            "[agents]\noffer_window_ms = 99999999\n",
            "agents.offer_window_ms",
            "expected 0 to 3600000",
        ),
        (
            "[pipelines]\nwebhook_max_attempts = 0\n",
            "pipelines.webhook_max_attempts",
            "expected 1 to 100",
        ),
        (
            "[limits]\nmax_payload_bytes = 100\n",
            "limits.max_payload_bytes",
            "expected 1024 to 4194304",
        ),
        (
            "[limits]\nresponse_budget_bytes = 1073741824\n",
            "limits.response_budget_bytes",
            "expected 65536 to 25165824",
        ),
        (
            "[limits]\nresponse_budget_bytes = 1048576\n",
            "limits.response_budget_bytes",
            "expected at least 6 × limits.max_payload_bytes + 65536 = 6356992",
        ),
    ] {
        let (code, err) = serve_with(text);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(err.contains(key) && err.contains(bound), "{text}: {err}");
    }
}

#[test]
fn the_config_schema_carries_the_same_bounds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/config.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (config, valid) in [
        (json!({"tasks": {"default_max_retries": 100}}), true),
        (json!({"tasks": {"default_max_retries": 1000}}), false),
        (json!({"agents": {"offer_window_ms": 99_999_999}}), false),
        (json!({"pipelines": {"webhook_max_attempts": 0}}), false),
        (json!({"limits": {"max_payload_bytes": 1_048_576}}), true),
        (
            json!({"limits": {"response_budget_bytes": 1_073_741_824u64}}),
            false,
        ),
        (json!({"instances": {"max_instances": 1001}}), false),
    ] {
        assert_eq!(validator.is_valid(&config), valid, "{config}");
    }
}
