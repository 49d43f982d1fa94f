//! Roles over HTTP: each role's `tools/list` is exactly the tools its permissions allow (the
//! table comes from the build, `tool_permissions`), in both eras and after a `toolsets`
//! change; a call a role may make runs, any other is refused naming the permission and
//! audited; an approval an installer requests names the installer in `approvals list/show`
//! and in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::http::{HttpServer, connect_http, issue_token};
use common::{ERAS, Era, call, call_ok, data_dir};
use mcp_coordinator::auth::Role;
use rmcp::RoleClient;
use rmcp::service::Peer;
use serde_json::{Value, json};

/// The tools `role` may call, from the build's own table.
fn allowed(role: Role) -> BTreeSet<String> {
    mcp_coordinator::server::tool_permissions()
        .into_iter()
        .filter(|(_, p)| role.grants(*p))
        .map(|(t, _)| t.to_string())
        .collect()
}

async fn listed(peer: &Peer<RoleClient>) -> BTreeSet<String> {
    peer.list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

fn tokens(dir: &std::path::Path) -> Vec<(Role, String)> {
    Role::ALL
        .into_iter()
        .map(|r| (r, issue_token(dir, &[r.as_str()], &format!("{r}-bot"), &[])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_lists_exactly_its_tools_in_both_eras() {
    let dir = data_dir();
    let tokens = tokens(dir.path());
    let server = HttpServer::start(dir.path(), &[]);
    for era in ERAS {
        for (role, token) in &tokens {
            let client = connect_http(&server.mcp, token, era).await;
            let tools = listed(client.peer()).await;
            assert_eq!(tools, allowed(*role), "{role} in {era:?}");
            client.cancel().await.expect("close");
        }
    }
    // What the issue says, concretely.
    let installer = allowed(Role::Installer);
    assert!(installer.contains("assessment_request") && installer.contains("mcp_server_install"));
    assert!(!installer.contains("instance_start") && !installer.contains("remediation_propose"));
    let agent = allowed(Role::Agent);
    for t in [
        "agent_register",
        "agent_heartbeat",
        "task_claim",
        "task_report",
    ] {
        assert!(agent.contains(t), "agent lacks {t}");
    }
    assert!(!agent.contains("task_submit") && !agent.contains("audit_query"));
    assert!(allowed(Role::Compliance).contains("remediation_propose"));
    // human_oversight decides in the console: every tool it sees only reads (but `toolsets`,
    // which changes only what its own connection lists).
    let client = connect_http(&server.mcp, &tokens[2].1, Era::Legacy).await;
    assert_eq!(tokens[2].0, Role::HumanOversight);
    for t in client.peer().list_all_tools().await.unwrap() {
        let read_only = t.annotations.as_ref().and_then(|a| a.read_only_hint);
        assert!(
            read_only == Some(true) || t.name == "toolsets",
            "human_oversight sees {} which is not read-only",
            t.name
        );
    }
    assert!(!allowed(Role::HumanOversight).contains("approval_request"));
    client.cancel().await.expect("close");
    assert_eq!(
        allowed(Role::Admin).len(),
        mcp_coordinator::server::tool_permissions().len()
    );
}

/// After `toolsets` switches a toolset off, a principal still sees only its own tools: what
/// it may call among what the connection offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toolsets_change_keeps_the_list_to_the_role() {
    let dir = data_dir();
    let installer = issue_token(dir.path(), &["installer"], "inst", &[]);
    let admin = issue_token(dir.path(), &["admin"], "root", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    for era in ERAS {
        let inst = connect_http(&server.mcp, &installer, era).await;
        let out = call_ok(inst.peer(), "toolsets", json!({"disable": "installer"})).await;
        // Toolsets are each connection's own (each principal's, statelessly): the admin makes
        // the same choice on its connection to see what such a connection offers.
        let root = connect_http(&server.mcp, &admin, era).await;
        call_ok(root.peer(), "toolsets", json!({"disable": "installer"})).await;
        let offered = listed(root.peer()).await;
        let want: BTreeSet<String> = allowed(Role::Installer)
            .intersection(&offered)
            .cloned()
            .collect();
        let seen = listed(inst.peer()).await;
        assert_eq!(seen, want, "{era:?}");
        assert!(!seen.contains("mcp_server_install"), "{era:?}: {seen:?}");
        assert!(seen.contains("assessment_request"), "{era:?}: {seen:?}");
        assert_eq!(out["tools_offered"], json!(seen.len()), "{era:?}: {out}");
        assert_eq!(out["changed"], true, "{era:?}: {out}");
        let status = call_ok(inst.peer(), "coordinator_status", json!({})).await;
        assert_eq!(status["tools_offered"], json!(seen.len()), "{era:?}");
        call_ok(inst.peer(), "toolsets", json!({"enable": "all"})).await;
        assert_eq!(listed(inst.peer()).await, allowed(Role::Installer));
        inst.cancel().await.expect("close");
        root.cancel().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_calls_what_it_may_and_is_refused_the_rest() {
    let dir = data_dir();
    let tokens = tokens(dir.path());
    let server = HttpServer::start(dir.path(), &[]);
    let table = mcp_coordinator::server::tool_permissions();
    // One call per role that must succeed.
    let agent_args = json!({"name": "w1", "capabilities": ["echo"]});
    let succeeds: [(Role, &str, Value); 5] = [
        (Role::Installer, "assessment_list", json!({})),
        (Role::Compliance, "remediation_list", json!({})),
        (Role::HumanOversight, "audit_query", json!({"limit": 5})),
        (Role::Agent, "agent_register", agent_args),
        (Role::Admin, "instance_types", json!({})),
    ];
    for (era, (role, token)) in [Era::Legacy, Era::Stateless]
        .into_iter()
        .cycle()
        .zip(&tokens)
    {
        let client = connect_http(&server.mcp, token, era).await;
        let peer = client.peer();
        let (_, tool, args) = succeeds.iter().find(|(r, ..)| r == role).unwrap();
        call_ok(peer, tool, args.clone()).await;
        call_ok(peer, "coordinator_status", json!({})).await;
        for (tool, permission) in &table {
            let r = call(peer, tool, json!({}))
                .await
                .unwrap_or_else(|e| panic!("{role} {tool}: a protocol error: {e}"));
            let s = r.structured_content.clone().unwrap_or_default();
            if role.grants(*permission) {
                // Allowed: whatever `{}` gets (often an argument to correct), never a refusal.
                assert_ne!(s["code"], "forbidden", "{role} {tool}: {s}");
                continue;
            }
            assert_eq!(r.is_error, Some(true), "{role} may call {tool}");
            assert_eq!(s["code"], "forbidden", "{role} {tool}: {s}");
            assert_eq!(s["details"]["permission"], json!(permission), "{s}");
            assert_eq!(s["details"]["roles"], json!([role.as_str()]), "{s}");
            let message = s["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("`{permission}`")) && message.contains(role.as_str()),
                "{role} {tool}: {message}"
            );
        }
        client.cancel().await.expect("close");
    }
    // The refusals are in the audit log, with who was refused and the missing permission.
    common::settle_audit(dir.path());
    let db = rusqlite::Connection::open(common::db_path(dir.path())).unwrap();
    let (actor, detail): (String, String) = db
        .query_row(
            "SELECT actor, detail FROM audit_events WHERE action = 'tool.call' \
             AND subject = 'instance_start' AND actor LIKE '%agent-bot%' ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the refused call is audited");
    assert!(actor.contains(" as agent-bot (sub "), "{actor}");
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["permission_missing"], "instances", "{detail}");
    assert_eq!(detail["error"], "forbidden", "{detail}");
    // The agent's own events name the agent; its registration names who vouched for it.
    let detail: String = db
        .query_row(
            "SELECT detail FROM audit_events WHERE action = 'agent.registered'",
            [],
            |r| r.get(0),
        )
        .expect("agent.registered");
    let detail: Value = serde_json::from_str(&detail).unwrap();
    let by = detail["registered_by"].as_str().unwrap_or_default();
    assert!(by.contains(" as agent-bot (sub "), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_requested_by_an_installer_names_the_installer() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["installer"], "installer-bot", &[]);
    let (_, list, _) = common::cli(dir.path(), &["token", "list", "--json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    let subject = list[0]["id"].as_str().unwrap().to_string();
    let server = HttpServer::start(dir.path(), &[]);
    let client = connect_http(&server.mcp, &token, Era::Legacy).await;
    // A client without elicitation: the approval stays pending for a person.
    let out = call_ok(
        client.peer(),
        "approval_request",
        json!({"summary": "add the github server", "action": {"op": "install"}, "risk": "high"}),
    )
    .await;
    assert_eq!(out["state"], "pending", "{out}");
    let id = out["approval"]["id"].as_str().unwrap().to_string();
    let requester =
        format!("client:http-legacy-test/1.2.3 as installer-bot (sub {subject}, via local_token)");
    assert_eq!(out["approval"]["requested_by"], requester, "{out}");
    client.cancel().await.expect("close");

    let (code, shown, err) = common::cli(dir.path(), &["approvals", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains(&format!("requested by: {requester}")),
        "{shown}"
    );
    let (code, listed, err) = common::cli(dir.path(), &["approvals", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = listed.lines().find(|l| l.starts_with(&id)).expect(&listed);
    assert!(row.contains(&requester), "{listed}");
    let (_, json_list, _) = common::cli(dir.path(), &["approvals", "list", "--json"]);
    let json_list: Value = serde_json::from_str(&json_list).unwrap();
    assert_eq!(json_list[0]["requested_by"], requester);

    common::settle_audit(dir.path());
    let db = rusqlite::Connection::open(common::db_path(dir.path())).unwrap();
    let actor: String = db
        .query_row(
            "SELECT actor FROM audit_events WHERE action = 'approval.requested' AND subject = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("approval.requested event");
    assert_eq!(actor, requester);
}

/// A pipeline's approval stage is asked for by the engine on behalf of whoever started the
/// run: over HTTP the approval names that principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_stage_approval_names_who_started_the_run() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "ops-lead", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let client = connect_http(&server.mcp, &token, Era::Legacy).await;
    let c = client.peer();
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "gated",
               "stages": [{"name": "sign-off", "type": "review", "approval": true, "risk": "high"},
                          {"name": "deploy", "type": "etl"}],
               "dependencies": [{"from": "sign-off", "to": "deploy"}]}),
    )
    .await;
    let run = call_ok(c, "pipeline_run", json!({"pipeline": "gated"})).await;
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let mut found = None;
    for _ in 0..100 {
        let page = call_ok(
            c,
            "approval_list",
            json!({"state": "pending", "kind": "pipeline_stage"}),
        )
        .await;
        if let Some(a) = page["approvals"].as_array().and_then(|a| a.first()) {
            found = Some(a.clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let approval = found.expect("the stage asks for an approval");
    // The run is a resource an installer may not read (it needs pipeline_run_get's permission).
    let inst_token = issue_token(dir.path(), &["installer"], "inst", &[]);
    let inst = connect_http(&server.mcp, &inst_token, Era::Legacy).await;
    let uri = format!("coordinator://pipeline-runs/{run_id}");
    let seen = inst
        .peer()
        .list_all_resources()
        .await
        .expect("resources/list");
    assert!(seen.is_empty(), "{seen:?}");
    let err = inst
        .peer()
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri.clone()))
        .await
        .expect_err("an installer reads a run");
    assert!(
        err.to_string().contains("`operate`") && err.to_string().contains("installer"),
        "{err}"
    );
    inst.cancel().await.expect("close");
    let own = c.list_all_resources().await.expect("resources/list");
    assert!(own.iter().any(|r| r.uri == uri), "{own:?}");
    let by = approval["requested_by"].as_str().unwrap();
    assert!(
        by.starts_with(&format!(
            "system:mcp-coordinator (run {run_id} started by client:"
        )),
        "{by}"
    );
    assert!(by.contains(" as ops-lead (sub "), "{by}");
    client.cancel().await.expect("close");
}
