//! Tamper tests: edit, delete, reorder, truncate and re-forge rows of a copy of a real
//! database with a plain SQLite connection (triggers dropped first), and show that
//! `audit verify` and the `audit_verify` tool name the first bad event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use mcp_coordinator::audit::chain::{EventFields, event_hash};
use rusqlite::{Connection, params};
use serde_json::{Value, json};

/// A data dir whose database holds `calls` audited tool calls, then the `audit.key_added`
/// event of the server's key (written as it signs its first head, at shutdown), signed.
async fn populated(calls: usize) -> tempfile::TempDir {
    let dir = common::data_dir();
    let client = common::connect(dir.path(), &[], common::Era::Legacy).await;
    for i in 0..calls {
        common::call_ok(&client, "audit_query", json!({"subject": format!("s{i}")})).await;
    }
    client.cancel().await.unwrap();
    // The server signs the head as it stops; wait for the process to finish that.
    for _ in 0..100 {
        let (code, out, _) = common::cli(dir.path(), &["audit", "verify", "--json"]);
        let report: Value = serde_json::from_str(&out).unwrap();
        if code == 0 && report["signatures"]["unsigned_tail"] == 0 {
            return dir;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the head was never signed");
}

/// Copies the database to `name` in the same data dir and opens it with triggers dropped.
fn tamper_copy(dir: &Path, name: &str) -> (PathBuf, Connection) {
    let src = Connection::open(common::db_path(dir)).unwrap();
    let dst = dir.join(name);
    src.execute("VACUUM INTO ?1", params![dst.to_str().unwrap()])
        .unwrap();
    let conn = Connection::open(&dst).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;
         DROP TRIGGER audit_signatures_no_update; DROP TRIGGER audit_signatures_no_delete;",
    )
    .unwrap();
    (dst, conn)
}

fn verify(dir: &Path, db: &Path) -> (i32, Value, String) {
    let (code, out, _) = common::cli(
        dir,
        &["--db", db.to_str().unwrap(), "audit", "verify", "--json"],
    );
    let (_, text, _) = common::cli(dir, &["--db", db.to_str().unwrap(), "audit", "verify"]);
    (code, serde_json::from_str(&out).unwrap(), text)
}

fn first_problem(report: &Value) -> (i64, String) {
    (
        report["first_bad_seq"].as_i64().unwrap(),
        report["problems"][0]["kind"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn untouched_copy_verifies() {
    let dir = populated(6).await;
    let (db, _conn) = tamper_copy(dir.path(), "copy.db");
    let (code, report, text) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["events_checked"], 7);
    assert!(text.starts_with("audit chain intact: 7 events"), "{text}");
    let keys = report["signatures"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{report:#}");
    // Introduced before the first head it signs: at shutdown, or earlier if the head signer
    // looked while the calls were still coming (it signs within a second).
    let introduced = keys[0]["introduced_seq"].as_i64().unwrap();
    assert!((1..=7).contains(&introduced), "{report:#}");
    assert_eq!(keys[0]["this_coordinator"], true);
    assert!(keys[0]["valid"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(report["signatures"]["unsigned_tail"], 0, "{report:#}");
    assert_eq!(report["warnings"], json!([]), "{report:#}");
}

#[tokio::test]
async fn edited_deleted_reordered_and_truncated_rows_are_named() {
    let dir = populated(8).await;

    let (db, conn) = tamper_copy(dir.path(), "edited.db");
    conn.execute(
        "UPDATE audit_events SET subject = 'innocent' WHERE seq = 4",
        [],
    )
    .unwrap();
    let (code, report, text) = verify(dir.path(), &db);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (4, "edited".into()));
    assert!(text.contains("first bad event 4"), "{text}");

    let (db, conn) = tamper_copy(dir.path(), "deleted.db");
    conn.execute("DELETE FROM audit_events WHERE seq = 3", [])
        .unwrap();
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (3, "missing".into()));

    let (db, conn) = tamper_copy(dir.path(), "reordered.db");
    // Swap events 5 and 6: move 6 aside, 5 into 6's place, 6 into 5's place.
    conn.execute_batch(
        "UPDATE audit_events SET seq = -6 WHERE seq = 6;
         UPDATE audit_events SET seq = 6 WHERE seq = 5;
         UPDATE audit_events SET seq = 5 WHERE seq = -6;",
    )
    .unwrap();
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report).0, 5);

    let (db, conn) = tamper_copy(dir.path(), "truncated.db");
    conn.execute("DELETE FROM audit_events WHERE seq >= 7", [])
        .unwrap();
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (7, "truncated".into()));
}

/// An attacker who knows the hash format rewrites event 3 and recomputes every hash after
/// it: the links hold, but the signed head no longer matches.
#[tokio::test]
async fn a_reforged_chain_is_caught_by_the_signature() {
    let dir = populated(5).await;
    let (db, conn) = tamper_copy(dir.path(), "forged.db");
    conn.execute(
        "UPDATE audit_events SET actor = 'client:someone-else/1' WHERE seq = 3",
        [],
    )
    .unwrap();
    let rows: Vec<(i64, String, String, String, String, String, String)> = conn
        .prepare("SELECT seq, ts, actor, action, subject, outcome, detail FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = mcp_coordinator::audit::chain::GENESIS_HASH.to_string();
    for (seq, ts, actor, action, subject, outcome, detail) in rows {
        let hash = event_hash(&EventFields {
            seq,
            ts: &ts,
            actor: &actor,
            action: &action,
            subject: &subject,
            outcome: &outcome,
            detail: &detail,
            prev_hash: &prev,
        });
        conn.execute(
            "UPDATE audit_events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
    // Five calls, then the key event (6), whose head the server signed.
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (6, "signed_head_changed".into()));

    // Re-signing with another key is caught too, by this coordinator and by any other.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let signer = mcp_coordinator::audit::AuditSigner::from_key(other);
    let msg = mcp_coordinator::audit::chain::head_message(6, &prev);
    conn.execute(
        "UPDATE audit_signatures SET hash = ?1, public_key = ?2, signature = ?3 WHERE seq = 6",
        params![prev, signer.public_key_hex(), signer.sign_hex(&msg)],
    )
    .unwrap();
    let (code, report, text) = verify(dir.path(), &db);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (6, "unknown_key".into()));
    assert!(text.contains("never introduced"), "{text}");
    let stranger = common::data_dir();
    let (code, report, _) = verify(stranger.path(), &db);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (6, "unknown_key".into()));
}

/// Appends one event after the current head, hashed as the coordinator would.
fn append_event(conn: &Connection, actor: &str, action: &str, subject: &str) -> (i64, String) {
    let (seq, prev): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (seq, ts) = (seq + 1, "2026-12-01T00:00:00.000000Z");
    let hash = event_hash(&EventFields {
        seq,
        ts,
        actor,
        action,
        subject,
        outcome: "ok",
        detail: "{}",
        prev_hash: &prev,
    });
    conn.execute(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, 'ok', '{}', ?6, ?7)",
        params![seq, ts, actor, action, subject, prev, hash],
    )
    .unwrap();
    (seq, hash)
}

/// Someone with write access to the database introduces a key of their own: from then on it
/// signs, but it cannot vouch for a head written before it, nor can an edited key event
/// introduce anything.
#[tokio::test]
async fn an_introduced_key_cannot_sign_the_past() {
    let dir = populated(4).await;
    let intruder = mcp_coordinator::audit::AuditSigner::from_key(
        ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]),
    );
    let key = intruder.public_key_hex().to_string();

    // Introduced at the end and signing a new head after it: a key the chain introduced.
    let (db, conn) = tamper_copy(dir.path(), "introduced.db");
    let (at, _) = append_event(&conn, "system:mcp-coordinator", "audit.key_added", &key);
    let (head, hash) = append_event(&conn, "client:x/1", "tool.call", "later");
    let sign = |seq: i64, hash: &str| {
        conn.execute(
            "INSERT INTO audit_signatures (seq, hash, public_key, signature, signed_at)
             VALUES (?1, ?2, ?3, ?4, 't')",
            params![
                seq,
                hash,
                key,
                intruder.sign_hex(&mcp_coordinator::audit::chain::head_message(seq, hash))
            ],
        )
        .unwrap();
    };
    sign(head, &hash);
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["signatures"]["keys"][1]["introduced_seq"], at);

    // The same key backdated over an earlier, unsigned head: forged.
    let earlier: String = conn
        .query_row("SELECT hash FROM audit_events WHERE seq = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    sign(2, &earlier);
    let (code, report, text) = verify(dir.path(), &db);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (2, "unknown_key".into()));
    assert!(
        report["first_bad_reason"]
            .as_str()
            .unwrap()
            .contains(&format!("introduces only later, at event {at}")),
        "{report:#}"
    );
    assert!(text.contains("audit chain TAMPERED"), "{text}");

    // The coordinator's own key event, edited: it introduces nothing, and is named.
    let (db, conn) = tamper_copy(dir.path(), "edited-key.db");
    conn.execute(
        "UPDATE audit_events SET detail = '{\"host\":\"elsewhere\"}' WHERE action = 'audit.key_added'",
        [],
    )
    .unwrap();
    let stranger = common::data_dir();
    let (code, report, _) = verify(stranger.path(), &db);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (5, "edited".into()));
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"unknown_key"), "{report:#}");
}

#[tokio::test]
async fn the_audit_verify_tool_reports_tampering_too() {
    let dir = populated(4).await;
    let (db, conn) = tamper_copy(dir.path(), "tool.db");
    conn.execute("UPDATE audit_events SET detail = '{}' WHERE seq = 2", [])
        .unwrap();
    drop(conn);
    let client = common::connect(
        dir.path(),
        &["--db", db.to_str().unwrap()],
        common::Era::Stateless,
    )
    .await;
    let report = common::call_ok(&client, "audit_verify", json!({})).await;
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad_seq"], 2);
    assert!(
        report["first_bad_reason"]
            .as_str()
            .unwrap()
            .contains("event 2 was edited")
    );
    client.cancel().await.unwrap();
}

#[test]
fn triggers_refuse_changes_to_the_live_table() {
    let dir = common::data_dir();
    let (code, _, _) = common::cli(dir.path(), &["serve"]);
    assert_eq!(code, 0);
    let conn = Connection::open(common::db_path(dir.path())).unwrap();
    conn.execute(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (1, 't', 'a', 'b', 'c', 'ok', '{}', 'p', 'h')",
        [],
    )
    .unwrap();
    let e = conn
        .execute("UPDATE audit_events SET actor = 'x'", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = conn.execute("DELETE FROM audit_events", []).unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
}

/// The newest event and the newest signed head of a live database.
fn live_heads(dir: &Path) -> (i64, i64) {
    let conn = Connection::open(common::db_path(dir)).unwrap();
    conn.query_row(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM audit_events),
                (SELECT COALESCE(MAX(seq), 0) FROM audit_signatures)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A server killed with SIGKILL signs nothing on the way out. What it wrote more than a second
/// before is signed all the same, so deleting it is caught; the newest second may be unsigned,
/// and `audit verify` warns about that tail rather than calling it intact and complete.
#[test]
fn a_killed_server_leaves_at_most_a_second_unsigned() {
    let dir = common::data_dir();
    let mut server = common::RawServer::spawn(dir.path());
    for i in 0..5 {
        let got = server.call(
            "audit_query",
            json!({"subject": format!("s{i}")}),
            false,
            None,
        );
        assert!(got["result"].is_object(), "{got}");
    }
    // Written within 20 ms (the audit writer), signed within a second after that.
    let start = std::time::Instant::now();
    let (head, signed) = loop {
        let (head, signed) = live_heads(dir.path());
        if head >= 5 && head == signed {
            break (head, signed);
        }
        assert!(
            start.elapsed() < std::time::Duration::from_millis(2500),
            "the head was not signed while the server ran: newest event {head}, newest signed {signed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(head, signed);

    // Now the newest second: events written, then SIGKILL before the signer's next look. The
    // signer may look in between; then try again.
    let mut tail = 0;
    for round in 0..5 {
        for i in 0..3 {
            server.call(
                "audit_query",
                json!({"subject": format!("r{round}-{i}")}),
                false,
                None,
            );
        }
        let (head, signed) = live_heads(dir.path());
        if head > signed {
            tail = head - signed;
            break;
        }
    }
    drop(server); // SIGKILL
    assert!(tail > 0, "every round was signed before the kill");

    let (code, report, _) = verify(dir.path(), &common::db_path(dir.path()));
    assert_eq!(code, 0, "an unsigned tail is not tampering: {report:#}");
    let reported = report["signatures"]["unsigned_tail"].as_i64().unwrap();
    assert!(reported >= tail, "{report:#}");
    assert!(
        report["signatures"]["unsigned_since"].is_string(),
        "{report:#}"
    );
    let warning = report["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("not covered by a signature"), "{report:#}");

    // Deleting the newest (unsigned) event: verify cannot prove it, but still warns.
    let (db, conn) = tamper_copy(dir.path(), "cut-unsigned.db");
    conn.execute(
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
        [],
    )
    .unwrap();
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["signatures"]["unsigned_tail"],
        reported - 1,
        "{report:#}"
    );
    let (_, _, stderr) = common::cli(
        dir.path(),
        &["--db", db.to_str().unwrap(), "audit", "verify"],
    );
    assert!(stderr.contains("warning: the newest"), "{stderr}");

    // Deleting everything after the head signed while the server ran: caught.
    let (db, conn) = tamper_copy(dir.path(), "cut-signed.db");
    conn.execute("DELETE FROM audit_events WHERE seq >= ?1", [signed])
        .unwrap();
    let (code, report, _) = verify(dir.path(), &db);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (signed, "truncated".into()));
}
