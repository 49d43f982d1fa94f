//! Coordinators find each other: processes with their own data directories on one database
//! (a SQLite file, or one PostgreSQL database as a team's would be) each list every one in
//! `coordinator_status`'s `fleet`, with how it is reached and its health, and a coordinator
//! that exits cleanly (stdin closed, or SIGTERM) shows as stopped to the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::{Value, json};

async fn status(c: &common::Client) -> Value {
    common::call_ok(c, "coordinator_status", json!({})).await
}

/// The fleet entry with this id, if listed.
fn member<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["fleet"]
        .as_array()
        .expect("coordinator_status has a fleet list")
        .iter()
        .find(|m| m["id"] == id)
}

/// Waits (10 s at most) until `c` lists coordinator `id` with `health`; returns the entry.
async fn wait_for_health(c: &common::Client, id: &str, health: &str) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(c).await;
        if let Some(m) = member(&s, id)
            && m["health"] == health
        {
            return m.clone();
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{id} never showed as {health}: {:#}",
            s["fleet"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two stdio coordinators and one serving MCP over HTTP, each with its own data directory, on
/// the database `db`.
async fn coordinators_on_one_database_find_each_other(db: &str) {
    let (dir_a, dir_b, dir_c) = (common::data_dir(), common::data_dir(), common::data_dir());
    let a = common::connect(dir_a.path(), &["--db", db], common::Era::Legacy).await;
    let b = common::connect(dir_b.path(), &["--db", db], common::Era::Stateless).await;
    let c = common::http::HttpServer::start(dir_c.path(), &["--db", db]);
    let (sa, sb) = (status(&a).await, status(&b).await);
    let (id_a, id_b) = (
        sa["session_id"].as_str().unwrap().to_string(),
        sb["session_id"].as_str().unwrap().to_string(),
    );
    assert_ne!(id_a, id_b);
    // C registered before it named its URL (it joins before it serves).
    let c_id = sa["fleet"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["transports"]["http"] == c.mcp.as_str())
        .unwrap_or_else(|| panic!("a does not list c ({}): {:#}", c.mcp, sa["fleet"]))["id"]
        .as_str()
        .unwrap()
        .to_string();

    for (s, me, other) in [(&sa, &id_a, &id_b), (&sb, &id_b, &id_a)] {
        assert_eq!(
            s["fleet"].as_array().unwrap().len(),
            3,
            "{me}: {:#}",
            s["fleet"]
        );
        let mine = member(s, me).unwrap_or_else(|| panic!("{me} does not list itself"));
        assert_eq!(mine["this_process"], true, "{mine:#}");
        assert_eq!(mine["health"], "ok", "{mine:#}");
        assert_eq!(mine["pid"], s["pid"], "{mine:#}");
        assert_eq!(mine["version"], s["version"], "{mine:#}");
        assert_eq!(mine["transports"]["stdio"], true, "{mine:#}");
        assert!(mine["transports"].get("http").is_none(), "{mine:#}");
        assert!(mine["heartbeat_age_seconds"].as_f64().unwrap() < 30.0);
        assert!(!mine["host"].as_str().unwrap().is_empty(), "{mine:#}");
        assert!(mine.get("stopped_at").is_none(), "{mine:#}");
        let theirs = member(s, other).unwrap_or_else(|| panic!("{me} does not list {other}"));
        assert_eq!(theirs["this_process"], false, "{theirs:#}");
        assert_eq!(theirs["health"], "ok", "{theirs:#}");
        let http = member(s, &c_id).unwrap();
        assert_eq!(http["health"], "ok", "{http:#}");
        assert_eq!(http["transports"]["stdio"], false, "{http:#}");
        assert_eq!(
            http["url"].as_str(),
            Some(c.base.trim_end_matches('/')),
            "{http:#}"
        );
        assert!(http["toolsets"].as_array().is_some_and(|t| !t.is_empty()));
        assert!(
            http["capabilities"]["toolsets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|s| s == "agents")),
            "{http:#}"
        );
    }

    // A clean exit: stdin closed (a), SIGTERM (c). The others show each stopped.
    a.cancel().await.unwrap();
    let gone_a = wait_for_health(&b, &id_a, "stopped").await;
    assert!(gone_a["stopped_at"].is_string(), "{gone_a:#}");
    assert!(c.terminate().success());
    wait_for_health(&b, &c_id, "stopped").await;
    let sb = status(&b).await;
    assert_eq!(
        member(&sb, &id_b).unwrap()["health"],
        "ok",
        "{:#}",
        sb["fleet"]
    );
    assert_eq!(
        sb["fleet"][0]["id"], id_b,
        "live ones first: {:#}",
        sb["fleet"]
    );
    b.cancel().await.unwrap();
}

/// The whole scenario within a minute: a coordinator that stops answering fails the test
/// instead of hanging it.
async fn within_a_minute(db: &str) {
    tokio::time::timeout(
        Duration::from_secs(60),
        coordinators_on_one_database_find_each_other(db),
    )
    .await
    .expect("the fleet scenario took more than a minute");
}

#[tokio::test]
async fn coordinators_on_one_sqlite_file_find_each_other() {
    let shared = common::data_dir();
    let db = shared.path().join("team.db");
    within_a_minute(db.to_str().unwrap()).await;
}

#[tokio::test]
async fn coordinators_on_one_postgres_database_find_each_other() {
    let db = mcp_coordinator::store::testing::fresh_database("fleet");
    within_a_minute(&db).await;
}
