//! Two coordinator processes on one database file, side by side: both serve calls at the same
//! time, and the audit chain they write together stays gapless and verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::json;

#[tokio::test]
async fn two_processes_share_one_database() {
    let dir = common::data_dir();
    let a = common::connect(dir.path(), &[], common::Era::Legacy).await;
    let b = common::connect(dir.path(), &[], common::Era::Stateless).await;
    const N: usize = 60;
    let work = |client: rmcp::service::Peer<rmcp::RoleClient>, tag: &'static str| async move {
        for i in 0..N {
            let tool = if i % 3 == 0 {
                "coordinator_status"
            } else {
                "audit_query"
            };
            let args = if tool == "audit_query" {
                json!({"subject": tag, "limit": 1})
            } else {
                json!({})
            };
            common::call_ok(&client, tool, args).await;
        }
    };
    tokio::join!(
        work(a.peer().clone(), "from-a"),
        work(b.peer().clone(), "from-b")
    );

    let sa = common::call_ok(&a, "coordinator_status", json!({})).await;
    let sb = common::call_ok(&b, "coordinator_status", json!({})).await;
    assert_eq!(sa["database"]["path"], sb["database"]["path"]);
    assert_ne!(sa["pid"], sb["pid"]);
    let verify = common::call_ok(&b, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    // Both processes' calls, gapless: 2N work calls + 2 status calls (+ this verify, audited after).
    assert_eq!(verify["events_checked"], 2 * N + 2);
    let legacy = common::call_ok(
        &a,
        "audit_query",
        json!({"actor": "client:legacy-test/*", "limit": 500}),
    )
    .await;
    let stateless = common::call_ok(
        &a,
        "audit_query",
        json!({"actor": "client:stateless-test/*", "limit": 500}),
    )
    .await;
    assert_eq!(legacy["events"].as_array().unwrap().len(), N + 1);
    assert_eq!(stateless["events"].as_array().unwrap().len(), N + 2);
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}
