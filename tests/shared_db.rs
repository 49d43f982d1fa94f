//! Two coordinator processes on one database file, side by side: both serve calls at the same
//! time, and the audit chain they write together stays gapless and verifies. Each test runs on
//! SQLite (one file) and on PostgreSQL (one database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, both_backends};
use serde_json::{Value, json};

both_backends! {
#[tokio::test]
async fn two_processes_share_one_database(db: Db) {
    let dir = common::data_dir();
    let a = db.connect(dir.path(), &[], common::Era::Legacy).await;
    let b = db.connect(dir.path(), &[], common::Era::Stateless).await;
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
    // b's verify writes what b queued first; a's writer writes on its own, within 20 ms.
    db.settle_audit(dir.path());
    let verify = common::call_ok(&b, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{}: {verify:#}", db.name());
    // Both processes' calls, gapless: 2N work calls + 2 status calls (+ this verify, audited
    // after), and the key event of each key that signed a head meanwhile (within a second).
    let introduced = verify["signatures"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["introduced_seq"].is_i64())
        .count();
    assert_eq!(verify["events_checked"], 2 * N + 2 + introduced, "{}", db.name());
    db.settle_audit(dir.path());
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
}

/// Waits until `audit verify --json` (run from `data_dir` on `db`) counts at least `n` stored
/// head signatures.
fn wait_for_signatures(data_dir: &std::path::Path, db: &Db, n: u64) -> serde_json::Value {
    for _ in 0..300 {
        let (_, out, _) = db.cli(data_dir, &["audit", "verify", "--json"]);
        if let Ok(report) = serde_json::from_str::<serde_json::Value>(&out)
            && report["signatures"]["total"].as_u64() >= Some(n)
        {
            return report;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{n} head signatures never appeared");
}

both_backends! {
/// Two coordinators with their own data directories (so their own signing keys) on one
/// database, as the README's shared-database setup has it: each introduces its key in the
/// chain before the first head it signs, and the chain verifies from either data directory
/// and from a third that never signed, listing both keys.
#[tokio::test]
async fn coordinators_with_their_own_keys_share_one_verifiable_chain(db: Db) {
    let shared = common::data_dir();
    let db = db.shared(&shared.path().join("team.db"));
    let (dir_a, dir_b, dir_c) = (common::data_dir(), common::data_dir(), common::data_dir());
    let a = db.connect(dir_a.path(), &[], common::Era::Legacy).await;
    let b = db.connect(dir_b.path(), &[], common::Era::Stateless).await;
    // a writes alone first, so its head signer (the only one with commits to look at) signs
    // a head with a's key; then b writes, a stops, and b writes and signs last.
    for i in 0..3 {
        common::call_ok(&a, "audit_query", json!({"subject": format!("a{i}")})).await;
    }
    db.settle_signed(dir_a.path());
    for i in 0..3 {
        common::call_ok(&b, "audit_query", json!({"subject": format!("b{i}")})).await;
    }
    a.cancel().await.unwrap();
    common::call_ok(&b, "coordinator_status", json!({})).await;
    b.cancel().await.unwrap();
    wait_for_signatures(dir_a.path(), &db, 2);
    db.wait_signed(dir_a.path());

    let key = |dir: &std::path::Path| {
        let pem = std::fs::read_to_string(dir.join("audit-signing-key.pem")).unwrap();
        let key =
            <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
                &pem,
            )
            .unwrap();
        mcp_coordinator::audit::AuditSigner::from_key(key)
            .public_key_hex()
            .to_string()
    };
    let (key_a, key_b) = (key(dir_a.path()), key(dir_b.path()));
    assert_ne!(key_a, key_b);

    for (who, dir) in [("a", &dir_a), ("b", &dir_b), ("c", &dir_c)] {
        let (code, out, err) = db.cli(dir.path(), &["audit", "verify", "--json"]);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
        assert_eq!(code, 0, "{}: verified from {who}: {report:#}", db.name());
        let total = report["signatures"]["total"].as_u64().unwrap();
        assert!(total >= 2, "{report:#}");
        assert_eq!(report["signatures"]["valid"], total, "{report:#}");
        let keys = report["signatures"]["keys"].as_array().unwrap();
        let signer = |k: &str| keys.iter().find(|e| e["public_key"] == k).cloned();
        for (name, k) in [("a", &key_a), ("b", &key_b)] {
            let entry = signer(k).unwrap_or_else(|| panic!("key {name} not listed: {report:#}"));
            assert!(entry["introduced_seq"].is_i64(), "{report:#}");
            assert!(entry["valid"].as_u64().unwrap() >= 1, "{report:#}");
            assert_eq!(entry["this_coordinator"], who == name, "{report:#}");
        }
        let (code, text, _) = db.cli(dir.path(), &["audit", "verify"]);
        assert_eq!(code, 0, "{text}");
        assert!(
            text.starts_with("audit chain intact")
                && text.contains(&key_a)
                && text.contains(&key_b),
            "{text}"
        );
    }
    // Each key event comes before the head its key signed.
    let (_, out, _) = db.cli(dir_c.path(), &["audit", "export"]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let introduced: Vec<&str> = events
        .iter()
        .filter(|e| e["action"] == "audit.key_added")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(introduced, [key_a.as_str(), key_b.as_str()]);
}
}
