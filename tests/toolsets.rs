//! Toolsets over the real binary in both eras (tests/tool_surface.rs holds the sizes of the
//! default and the full `tools/list`): the `toolsets` tool enables a toolset
//! (the client hears `tools/list_changed`, or the 2026-07-28 `subscriptions/listen` event)
//! and disables it (its tools are refused, naming the toolset); a running child's tools are a
//! toolset of their own; the config file and `--toolsets` choose the start set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Era, call, call_ok, data_dir};
use rmcp::ClientHandler;
use rmcp::model::{ClientConfig, ServerNotification, SubscriptionFilter, Tool};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService};
use serde_json::{Value, json};

/// Every tool.
const ALL_TOOLS: usize = 48;

/// A client that hears `tools/list_changed` (initialize era).
#[derive(Clone)]
struct Listener {
    info: ClientConfig,
    changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

/// A coordinator with `args`, run without the test suite's every-toolset default.
async fn start(
    dir: &std::path::Path,
    args: &[&str],
    era: Era,
) -> RunningService<RoleClient, Listener> {
    let mut cmd = common::command(dir, args);
    cmd.env_remove("MCP_COORDINATOR_TOOLSETS");
    let listener = Listener {
        info: common::client_config("toolsets-test"),
        changed: Arc::new(tokio::sync::Notify::new()),
    };
    common::connect_command(cmd, listener, era).await
}

fn names(tools: &[Tool]) -> Vec<String> {
    tools.iter().map(|t| t.name.to_string()).collect()
}

/// Waits for the era's list-changed signal.
async fn list_changed(
    c: &RunningService<RoleClient, Listener>,
    subscription: Option<&mut rmcp::service::Subscription>,
) {
    let wait = Duration::from_secs(5);
    match subscription {
        None => tokio::time::timeout(wait, c.service().changed.notified())
            .await
            .expect("notifications/tools/list_changed within 5 s"),
        Some(s) => {
            let next = tokio::time::timeout(wait, s.next())
                .await
                .expect("a subscriptions/listen event within 5 s")
                .unwrap()
                .expect("the subscription is open");
            assert!(
                matches!(next, ServerNotification::ToolListChangedNotification(_)),
                "{next:?}"
            );
        }
    }
}

fn toolset<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["toolsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no toolset {name}: {listing:#}"))
}

async fn refused(peer: &Peer<RoleClient>, tool: &str, args: Value, toolset: &str) {
    let r = call(peer, tool, args).await.unwrap();
    assert_eq!(r.is_error, Some(true), "{tool}: {r:?}");
    let e = r.structured_content.unwrap();
    assert_eq!(e["code"], "toolset_disabled", "{e:#}");
    assert_eq!(e["details"]["toolset"], toolset, "{e:#}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("`{toolset}`")) && message.contains("toolsets"),
        "{message}"
    );
}

#[tokio::test]
async fn enabling_a_toolset_lists_its_tools_and_disabling_refuses_them() {
    for era in common::ERAS {
        let dir = data_dir();
        let c = start(dir.path(), &[], era).await;
        let peer = c.peer().clone();
        let mut subscription = match era {
            Era::Legacy => None,
            Era::Stateless => {
                let mut filter = SubscriptionFilter::new();
                filter.tools_list_changed = Some(true);
                Some(peer.listen(filter).await.unwrap())
            }
        };
        let listing = call_ok(&peer, "toolsets", json!({})).await;
        assert_eq!(listing["changed"], false);
        assert_eq!(toolset(&listing, "agents")["enabled"], false);
        assert_eq!(toolset(&listing, "agents")["tools"], 13);
        assert_eq!(toolset(&listing, "system")["enabled"], true);
        assert!(
            toolset(&listing, "pipelines")["summary"]
                .as_str()
                .unwrap()
                .contains("pipeline")
        );
        let offered = listing["tools_offered"].as_u64().unwrap() as usize;
        assert_eq!(offered, peer.list_all_tools().await.unwrap().len());
        let status = call_ok(&peer, "coordinator_status", json!({})).await;
        assert_eq!(
            status["toolsets"],
            json!(["system", "approvals", "assessments", "children"])
        );
        assert_eq!(status["tools_offered"], offered as u64);

        // Off: refused with the toolset named; nothing queued.
        refused(&peer, "task_submit", json!({"kind": "t"}), "agents").await;

        let on = call_ok(&peer, "toolsets", json!({"enable": "agents"})).await;
        assert_eq!(on["changed"], true, "{on:#}");
        assert_eq!(on["tools_offered"], offered as u64 + 13);
        list_changed(&c, subscription.as_mut()).await;
        let n = names(&peer.list_all_tools().await.unwrap());
        assert!(n.contains(&"task_submit".to_string()), "{n:?}");
        let submitted = call_ok(&peer, "task_submit", json!({"kind": "t"})).await;
        assert!(submitted["task_id"].is_string(), "{submitted:#}");
        // Asking again changes nothing and says so.
        let again = call_ok(&peer, "toolsets", json!({"enable": "agents"})).await;
        assert_eq!(again["changed"], false);

        let off = call_ok(&peer, "toolsets", json!({"disable": "agents"})).await;
        assert_eq!(off["changed"], true);
        list_changed(&c, subscription.as_mut()).await;
        assert!(!names(&peer.list_all_tools().await.unwrap()).contains(&"task_get".to_string()));
        refused(
            &peer,
            "task_get",
            json!({"task_id": submitted["task_id"]}),
            "agents",
        )
        .await;

        // `all`, then everything off: the toolsets tool itself always stays.
        call_ok(&peer, "toolsets", json!({"enable": "all"})).await;
        list_changed(&c, subscription.as_mut()).await;
        assert_eq!(peer.list_all_tools().await.unwrap().len(), ALL_TOOLS);
        call_ok(&peer, "toolsets", json!({"disable": "all"})).await;
        list_changed(&c, subscription.as_mut()).await;
        assert_eq!(names(&peer.list_all_tools().await.unwrap()), ["toolsets"]);

        // Bad requests name the field.
        for (args, field) in [
            (json!({"enable": "agent"}), "enable"),
            (json!({"enable": "agents", "disable": "system"}), "disable"),
        ] {
            let (named, message) =
                common::invalid_argument("toolsets", call(&peer, "toolsets", args.clone()).await);
            assert_eq!(named, field, "{args}: {message}");
            assert!(
                message.contains("unknown toolset") || message.contains("not both"),
                "{args}: {message}"
            );
        }
        let e = call_ok(&peer, "toolsets", json!({})).await;
        assert_eq!(e["tools_offered"], 1);
        c.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn a_running_child_is_a_toolset_of_its_own() {
    let dir = data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[tools]\ntoolsets = [\"system\", \"instances\", \"children\"]\n\n[instance_types.kid]\ncommand = {:?}\n",
            common::example_bin("test_child").display().to_string()
        ),
    )
    .unwrap();
    let c = start(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        Era::Legacy,
    )
    .await;
    let peer = c.peer().clone();
    let n = names(&peer.list_all_tools().await.unwrap());
    assert!(
        n.contains(&"instance_start".to_string()) && !n.contains(&"approval_list".to_string()),
        "{n:?}"
    );
    call_ok(&peer, "instance_start", json!({"type": "kid"})).await;
    list_changed(&c, None).await;
    assert!(names(&peer.list_all_tools().await.unwrap()).contains(&"kid__echo".to_string()));
    let listing = call_ok(&peer, "toolsets", json!({})).await;
    let kid = toolset(&listing, "child:kid");
    assert_eq!(kid["enabled"], true);
    assert!(kid["tools"].as_u64().unwrap() >= 1, "{kid:#}");

    call_ok(&peer, "toolsets", json!({"disable": "child:kid"})).await;
    list_changed(&c, None).await;
    let n = names(&peer.list_all_tools().await.unwrap());
    assert!(!n.iter().any(|t| t.starts_with("kid__")), "{n:?}");
    refused(&peer, "kid__echo", json!({"text": "x"}), "child:kid").await;

    call_ok(&peer, "toolsets", json!({"enable": "child:kid"})).await;
    list_changed(&c, None).await;
    let r = call(&peer, "kid__echo", json!({"text": "back"}))
        .await
        .unwrap();
    assert_ne!(r.is_error, Some(true), "{r:?}");

    // A child that is not running is named as such.
    let e = call(&peer, "toolsets", json!({"enable": "child:nobody"}))
        .await
        .unwrap();
    assert_eq!(e.is_error, Some(true));
    let e = e.structured_content.unwrap();
    assert_eq!(e["code"], "not_found");
    assert!(
        e["message"].as_str().unwrap().contains("child:kid"),
        "{e:#}"
    );
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn the_config_and_the_flag_choose_the_start_set() {
    let dir = data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[tools]\ntoolsets = [\"agents\"]\n").unwrap();
    let c = start(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        Era::Stateless,
    )
    .await;
    let mut n = names(&c.peer().list_all_tools().await.unwrap());
    n.retain(|t| !t.starts_with("agent_") && !t.starts_with("task_") && !t.starts_with("queue_"));
    assert_eq!(n, ["toolsets"]);
    c.cancel().await.unwrap();

    // The flag wins over the config.
    let c = start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--toolsets",
            "pipelines,system",
        ],
        Era::Legacy,
    )
    .await;
    let n = names(&c.peer().list_all_tools().await.unwrap());
    assert!(n.contains(&"pipeline_run".to_string()) && n.contains(&"audit_query".to_string()));
    assert!(!n.iter().any(|t| t.starts_with("task_")), "{n:?}");
    c.cancel().await.unwrap();

    // A misspelt toolset stops the start with the names it knows.
    std::fs::write(&config, "[tools]\ntoolsets = [\"agent\"]\n").unwrap();
    let (code, _, err) = common::cli(dir.path(), &["--config", config.to_str().unwrap(), "serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("toolsets") && err.contains("agents"), "{err}");
    let (code, _, err) = common::cli(dir.path(), &["--toolsets", "everything", "serve"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--toolsets") && err.contains("pipelines"),
        "{err}"
    );
}
