//! Protocol tests over the real binary with rmcp's client, in both eras: tool listing and
//! schemas, structured results that validate, refused arguments and domain errors as
//! structured `isError` results naming the field, unknown tools as protocol errors, every call
//! audited with secrets redacted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ERAS, Era, call, call_ok, connect, data_dir, invalid_argument};
use rmcp::ServiceError;
use rmcp::model::ErrorCode;
use serde_json::{Value, json};

/// Every tool, sorted, with (read-only, destructive) annotations.
const TOOLS: [(&str, bool, bool); 48] = [
    ("agent_deregister", false, false),
    ("agent_heartbeat", false, false),
    ("agent_list", true, false),
    ("agent_register", false, false),
    ("approval_get", true, false),
    ("approval_list", true, false),
    ("approval_request", false, false),
    ("assessment_cancel", false, false),
    ("assessment_get", true, false),
    ("assessment_list", true, false),
    ("assessment_request", false, false),
    ("audit_query", true, false),
    ("audit_verify", true, false),
    ("coordinator_status", true, false),
    ("instance_call_tool", false, true),
    ("instance_get", true, false),
    ("instance_list", true, false),
    ("instance_restart", false, true),
    ("instance_start", false, false),
    ("instance_stop", false, true),
    ("instance_tool_review", false, false),
    ("instance_types", true, false),
    ("mcp_config_list", true, false),
    ("mcp_server_install", false, false),
    ("mcp_server_remove", false, true),
    ("pipeline_create", false, false),
    ("pipeline_delete", false, true),
    ("pipeline_get", true, false),
    ("pipeline_list", true, false),
    ("pipeline_run", false, false),
    ("pipeline_run_cancel", false, true),
    ("pipeline_run_get", true, false),
    ("queue_purge", false, true),
    ("queue_stats", true, false),
    ("remediation_get", true, false),
    ("remediation_list", true, false),
    ("remediation_propose", false, false),
    ("remediation_review", false, true),
    ("remediation_rollback", false, true),
    ("remediation_withdraw", false, false),
    ("task_cancel", false, true),
    ("task_claim", false, false),
    ("task_get", true, false),
    ("task_list", true, false),
    ("task_report", false, false),
    ("task_requeue", false, false),
    ("task_submit", false, false),
    ("toolsets", false, false),
];

/// Calls that make every tool succeed, in an order where each finds what it needs.
fn script(
    ids: &std::collections::HashMap<&str, String>,
    step: usize,
) -> Option<(&'static str, Value)> {
    let id = |k: &str| ids.get(k).cloned().unwrap_or_default();
    let calls: Vec<(&'static str, Value)> = vec![
        ("coordinator_status", json!({})),
        ("toolsets", json!({})),
        (
            "approval_request",
            json!({"summary": "try the schema", "action": {"op": "noop"}, "risk": "low"}),
        ),
        ("approval_get", json!({"approval_id": id("approval")})),
        ("approval_list", json!({})),
        (
            "agent_register",
            json!({"name": "schema-worker", "capabilities": ["etl"]}),
        ),
        (
            "agent_heartbeat",
            json!({"token": id("token"), "load": 0.2}),
        ),
        ("agent_list", json!({"capability": "etl"})),
        (
            "task_submit",
            json!({"kind": "x", "capabilities": ["etl"], "max_retries": 0}),
        ),
        ("task_claim", json!({"token": id("token")})),
        (
            "task_report",
            json!({"token": id("token"), "task_id": id("task"), "error": {"message": "no", "retryable": false}}),
        ),
        ("task_requeue", json!({"task_id": id("task")})),
        ("task_get", json!({"task_id": id("task")})),
        (
            "task_cancel",
            json!({"task_id": id("task"), "reason": "schema test"}),
        ),
        ("task_list", json!({})),
        ("queue_stats", json!({})),
        ("queue_purge", json!({"retention_seconds": 0})),
        ("agent_deregister", json!({"token": id("token")})),
        (
            "pipeline_create",
            json!({"name": "schema-pipe", "stages": [{"name": "a", "type": "etl"}, {"name": "b", "type": "etl", "required": false}],
                   "dependencies": [{"from": "a", "to": "b"}]}),
        ),
        ("pipeline_get", json!({"pipeline": "schema-pipe"})),
        (
            "pipeline_run",
            json!({"pipeline": "schema-pipe", "input": {"rows": 3}}),
        ),
        ("pipeline_run_get", json!({"run_id": id("run")})),
        ("pipeline_list", json!({})),
        (
            "pipeline_run_cancel",
            json!({"run_id": id("run"), "reason": "schema test"}),
        ),
        ("pipeline_delete", json!({"pipeline": "schema-pipe"})),
        (
            "mcp_config_list",
            json!({"home": id("home"), "projects": []}),
        ),
        (
            "assessment_request",
            json!({"type": "security", "target": {"home": id("home"), "projects": []}}),
        ),
        ("assessment_get", json!({"assessment_id": id("assessment")})),
        ("assessment_list", json!({})),
        // Cancelling a finished assessment is refused; the loop accepts that one conflict.
        (
            "assessment_cancel",
            json!({"assessment_id": id("assessment")}),
        ),
        (
            "remediation_propose",
            json!({"actions": [{"type": "disable_server", "file": id("file"), "server": "memory"}]}),
        ),
        (
            "remediation_get",
            json!({"remediation_id": id("remediation")}),
        ),
        ("remediation_list", json!({})),
        // No elicitation in this client: pending, with the CLI command.
        (
            "remediation_review",
            json!({"remediation_id": id("remediation")}),
        ),
        // The loop approves it at the CLI here; reviewing again runs it.
        (
            "remediation_review",
            json!({"remediation_id": id("remediation")}),
        ),
        (
            "remediation_rollback",
            json!({"remediation_id": id("remediation")}),
        ),
        (
            "mcp_server_install",
            json!({"client": "cursor", "file": id("file"), "server": "fetch",
                   "entry": {"command": "uvx", "args": ["mcp-server-fetch==2025.4.7"]}, "review": false}),
        ),
        (
            "remediation_withdraw",
            json!({"remediation_id": id("install")}),
        ),
        (
            "mcp_server_remove",
            json!({"file": id("file"), "server": "memory", "review": false}),
        ),
        ("instance_types", json!({})),
        (
            "instance_start",
            json!({"type": "kid", "name": "schema-kid", "ttl_seconds": 600}),
        ),
        ("instance_list", json!({})),
        ("instance_get", json!({"instance": "schema-kid"})),
        (
            "instance_call_tool",
            json!({"instance": "schema-kid", "tool": "echo", "arguments": {"text": "hi"}}),
        ),
        // The child changes echo's description: echo is quarantined until a person approves.
        (
            "instance_call_tool",
            json!({"instance": "schema-kid", "tool": "set_variant", "arguments": {"variant": "v2"}}),
        ),
        // No elicitation in this client: the review stays pending, with the CLI command.
        (
            "instance_tool_review",
            json!({"instance": "schema-kid", "tool": "echo"}),
        ),
        ("instance_restart", json!({"instance": "schema-kid"})),
        ("instance_stop", json!({"instance": "schema-kid"})),
        ("audit_query", json!({"limit": 5})),
        ("audit_verify", json!({})),
    ];
    calls.into_iter().nth(step)
}

/// Whether a schema has `true`/`false` as the schema of a property or of array items.
fn has_boolean_property_schema(v: &Value) -> bool {
    match v {
        Value::Object(map) => {
            let props = map
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| p.values().any(Value::is_boolean));
            props
                || map.get("items").is_some_and(Value::is_boolean)
                || map.values().any(has_boolean_property_schema)
        }
        Value::Array(items) => items.iter().any(has_boolean_property_schema),
        _ => false,
    }
}

fn protocol_error(r: Result<rmcp::model::CallToolResult, ServiceError>) -> rmcp::ErrorData {
    match r {
        Err(ServiceError::McpError(e)) => e,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

#[tokio::test]
async fn tools_have_schemas_annotations_and_valid_structured_output() {
    for era in ERAS {
        let dir = data_dir();
        let config = dir.path().join("config.toml");
        // The remediation steps change a config under this home: it must be the configured one.
        std::fs::write(
            &config,
            format!(
                "[assessments]\nhome = {:?}\n\n[instance_types.kid]\ncommand = {:?}\n",
                dir.path().join("home").display().to_string(),
                common::example_bin("test_child").display().to_string()
            ),
        )
        .unwrap();
        let client = connect(dir.path(), &["--config", config.to_str().unwrap()], era).await;
        let version = client.peer().peer_info().unwrap().protocol_version.clone();
        match era {
            Era::Legacy => assert_eq!(version.as_str(), "2025-11-25"),
            Era::Stateless => assert_eq!(version.as_str(), "2026-07-28"),
        }
        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        let expected: Vec<&str> = TOOLS.iter().map(|t| t.0).collect();
        assert_eq!(names, expected, "{era:?}");
        let mut ids = std::collections::HashMap::new();
        let home = dir.path().join("home");
        let file = home.join(".cursor/mcp.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            r#"{"mcpServers": {"memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}}}"#,
        )
        .unwrap();
        ids.insert("home", home.display().to_string());
        ids.insert("file", file.display().to_string());
        let mut called = std::collections::BTreeSet::new();
        let mut step = 0;
        let mut reviews = 0;
        while let Some((name, args)) = script(&ids, step) {
            step += 1;
            let tool = tools.iter().find(|t| t.name == name).expect("tool listed");
            if name == "instance_tool_review" {
                // The quarantine follows the child's tools/list_changed; wait for it.
                let mut waited = 0;
                while call(&client, "instance_get", json!({"instance": "schema-kid"}))
                    .await
                    .unwrap()
                    .structured_content
                    .unwrap()["detail"]["hidden_tools"]
                    .as_array()
                    .is_none_or(|h| h.is_empty())
                {
                    waited += 1;
                    assert!(waited < 100, "echo was never quarantined");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            if name == "assessment_cancel" {
                let r = call(&client, name, args.clone()).await.unwrap();
                if r.is_error == Some(true) {
                    assert_eq!(r.structured_content.unwrap()["code"], "conflict");
                    called.insert(name);
                    continue;
                }
            }
            let result = call_ok(&client, name, args).await;
            if name == "remediation_review" {
                reviews += 1;
                if reviews == 1 {
                    assert_eq!(result["approval_state"], "pending", "{result:#}");
                    let approval = result["remediation"]["approval_id"].as_str().unwrap();
                    let (code, out, err) = common::cli(
                        dir.path(),
                        &[
                            "approvals",
                            "approve",
                            approval,
                            "--yes",
                            "--reason",
                            "schema test",
                        ],
                    );
                    assert_eq!(code, 0, "{out}{err}");
                } else {
                    assert_eq!(result["status"], "executed", "{result:#}");
                }
            }
            match name {
                "assessment_request" => ids.insert(
                    "assessment",
                    result["assessment_id"].as_str().unwrap().to_string(),
                ),
                "remediation_propose" => ids.insert(
                    "remediation",
                    result["remediation_id"].as_str().unwrap().to_string(),
                ),
                "mcp_server_install" => ids.insert(
                    "install",
                    result["remediation_id"].as_str().unwrap().to_string(),
                ),
                "approval_request" => ids.insert(
                    "approval",
                    result["approval"]["id"].as_str().unwrap().to_string(),
                ),
                "agent_register" => {
                    ids.insert("token", result["token"].as_str().unwrap().to_string())
                }
                "task_submit" => {
                    ids.insert("task", result["task_id"].as_str().unwrap().to_string())
                }
                "pipeline_run" => ids.insert("run", result["run_id"].as_str().unwrap().to_string()),
                _ => None,
            };
            let output = tool.output_schema.as_ref().expect("output schema");
            let validator = jsonschema::validator_for(&Value::Object((**output).clone()))
                .expect("output schema compiles");
            let errors: Vec<String> = validator
                .iter_errors(&result)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{name} output does not match its schema: {errors:?}"
            );
            called.insert(name);
        }
        assert_eq!(called.len(), TOOLS.len(), "every tool was called");
        for (tool, (name, read_only, destructive)) in tools.iter().zip(TOOLS) {
            assert_eq!(tool.name, name);
            let desc = tool.description.as_deref().unwrap_or_default();
            assert!(desc.len() > 200, "{} has a thin description", tool.name);
            assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
            let ann = tool.annotations.as_ref().expect("annotations");
            assert_eq!(ann.read_only_hint, Some(read_only), "{}", tool.name);
            assert_eq!(ann.destructive_hint, Some(destructive), "{}", tool.name);
            assert!(ann.title.is_some());
            // Strict clients (the TypeScript SDK, so the MCP Inspector) refuse a tool list
            // whose schemas hold a boolean property schema.
            for schema in [Some(&tool.input_schema), tool.output_schema.as_ref()]
                .into_iter()
                .flatten()
            {
                let value = Value::Object((**schema).clone());
                assert!(
                    !has_boolean_property_schema(&value),
                    "{} has a boolean property schema: {value:#}",
                    tool.name
                );
            }
        }
        let status = call_ok(&client, "coordinator_status", json!({})).await;
        let expected_era = match era {
            Era::Legacy => "legacy",
            Era::Stateless => "stateless",
        };
        assert_eq!(status["era"], expected_era);
        assert_eq!(status["protocol_version"], version.as_str());
        let client_name = match era {
            Era::Legacy => "client:legacy-test/1.2.3",
            Era::Stateless => "client:stateless-test/1.2.3",
        };
        assert_eq!(status["client"], client_name);
        assert_eq!(status["database"]["health"], "ok (journal_mode=wal)");
        assert_eq!(
            status["database"]["schema_version"],
            status["database"]["known_schema_version"]
        );
        // The calls so far were audited before this one ran.
        assert!(status["counts"]["audit_events"].as_i64().unwrap() >= 3);
        client.cancel().await.unwrap();
    }
}

/// Since MCP 2025-11-25 a refused argument is a tool result the model sees and corrects; an
/// unknown tool stays a JSON-RPC error.
#[tokio::test]
async fn bad_arguments_are_results_naming_the_field_and_unknown_tools_protocol_errors() {
    for era in ERAS {
        let dir = data_dir();
        let client = connect(dir.path(), &[], era).await;

        let e = protocol_error(call(&client, "no_such_tool", json!({})).await);
        assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
        assert!(
            e.message.contains("unknown tool `no_such_tool`"),
            "{}",
            e.message
        );

        // (tool, arguments, the field named, what the message says was expected)
        let cases = [
            (
                "audit_query",
                json!({"limit": "ten"}),
                "limit",
                "expected u32",
            ),
            (
                "audit_query",
                json!({"limt": 5}),
                "limt",
                "unknown field `limt`",
            ),
            (
                "audit_query",
                json!({"since": "yesterday"}),
                "since",
                "RFC 3339",
            ),
            ("audit_query", json!({"limit": 501}), "limit", "1 to 500"),
            (
                "audit_query",
                json!({"outcome": "fine"}),
                "outcome",
                "unknown variant",
            ),
            ("approval_get", json!({}), "approval_id", "missing field"),
            // A handler's own check, after parsing.
            (
                "toolsets",
                json!({"enable": "agents", "disable": "system"}),
                "disable",
                "not both",
            ),
        ];
        for (tool, args, expected_field, expected) in cases {
            let (field, message) = invalid_argument(tool, call(&client, tool, args).await);
            assert_eq!(field, expected_field, "{era:?} {tool}: {message}");
            assert!(message.contains(expected), "{era:?} {tool}: {message}");
        }

        // The server is still healthy after all that.
        call_ok(&client, "coordinator_status", json!({})).await;
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn domain_failures_are_structured_tool_errors() {
    for era in ERAS {
        let dir = data_dir();
        let client = connect(dir.path(), &[], era).await;
        let r = call(
            &client,
            "audit_query",
            json!({"since": "2026-11-21T10:00:00Z", "until": "2026-11-21T09:00:00Z"}),
        )
        .await
        .expect("a domain failure is a result, not a protocol error");
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.expect("structured error");
        assert_eq!(s["code"], "invalid_request");
        assert_eq!(s["retryable"], false);
        assert_eq!(s["details"]["field"], "until");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains("must be after since")
        );
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn every_call_is_audited_with_secrets_redacted() {
    let dir = data_dir();
    let client = connect(dir.path(), &[], Era::Legacy).await;
    let token = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    call_ok(&client, "audit_query", json!({"subject": token})).await;
    let _ = call(&client, "audit_query", json!({"limit": "x"})).await;
    let _ = call(
        &client,
        "audit_query",
        json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
    )
    .await;
    call_ok(&client, "coordinator_status", json!({})).await;

    let page = call_ok(
        &client,
        "audit_query",
        json!({"action": "tool.call", "limit": 10}),
    )
    .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{page:#}");
    // Newest first.
    assert_eq!(events[0]["subject"], "coordinator_status");
    assert_eq!(events[0]["outcome"], "ok");
    assert_eq!(events[1]["outcome"], "error");
    assert_eq!(events[1]["detail"]["error"], "invalid_request");
    assert_eq!(events[2]["outcome"], "invalid");
    assert!(
        events[2]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("invalid argument `limit`"),
        "{page:#}"
    );
    assert_eq!(events[3]["outcome"], "ok");
    assert_eq!(events[3]["actor"], "client:legacy-test/1.2.3");
    assert!(events[3]["detail"]["duration_us"].as_u64().is_some());
    assert!(
        events[3]["detail"]["os_user"]
            .as_str()
            .unwrap()
            .contains('@')
    );
    let text = serde_json::to_string(&page).unwrap();
    assert!(!text.contains(token), "a token reached the audit log");
    assert_eq!(events[3]["detail"]["arguments"]["subject"], "[REDACTED]");
    for pair in events.windows(2) {
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }

    // The refused call is found by its outcome.
    let invalid = call_ok(&client, "audit_query", json!({"outcome": "invalid"})).await;
    let invalid = invalid["events"].as_array().unwrap();
    assert_eq!(invalid.len(), 1, "{invalid:#?}");
    assert_eq!(invalid[0]["seq"], events[2]["seq"]);

    // Paging with filters: prefix match and the cursor.
    let p1 = call_ok(
        &client,
        "audit_query",
        json!({"subject": "audit_*", "limit": 2}),
    )
    .await;
    assert_eq!(p1["events"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().expect("more pages").to_string();
    let p2 = call_ok(
        &client,
        "audit_query",
        json!({"subject": "audit_*", "limit": 2, "cursor": cursor}),
    )
    .await;
    let s1 = p1["events"][1]["seq"].as_i64().unwrap();
    let s2 = p2["events"][0]["seq"].as_i64().unwrap();
    assert!(s2 < s1);
    let none = call_ok(&client, "audit_query", json!({"actor": "agent:*"})).await;
    assert_eq!(none["events"].as_array().unwrap().len(), 0);
    assert!(none.get("next_cursor").is_none());

    let verify = call_ok(&client, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn config_can_switch_tool_groups_off() {
    let dir = data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[tools]\ndisabled_groups = [\"audit\", \"approvals\", \"agents\", \"tasks\", \"pipelines\", \"assessments\", \"remediation\", \"configs\", \"instances\"]\n",
    )
    .unwrap();
    let client = connect(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        Era::Legacy,
    )
    .await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    // The `toolsets` tool stays whatever is switched off.
    assert_eq!(names, ["coordinator_status", "toolsets"]);
    let e = protocol_error(call(&client, "audit_verify", json!({})).await);
    assert!(
        e.message.contains("switched off") && e.message.contains("`audit`"),
        "{}",
        e.message
    );
    let status = call_ok(&client, "coordinator_status", json!({})).await;
    assert_eq!(
        status["disabled_groups"],
        json!([
            "audit",
            "approvals",
            "agents",
            "tasks",
            "pipelines",
            "assessments",
            "remediation",
            "configs",
            "instances"
        ])
    );
    assert_eq!(status["tools_enabled"], 2);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn memory_database_leaves_no_file() {
    let dir = data_dir();
    let client = connect(dir.path(), &["--db", ":memory:"], Era::Stateless).await;
    let status = call_ok(&client, "coordinator_status", json!({})).await;
    assert_eq!(status["database"]["path"], ":memory:");
    call_ok(&client, "audit_verify", json!({})).await;
    client.cancel().await.unwrap();
    assert!(!common::db_path(dir.path()).exists());
}
