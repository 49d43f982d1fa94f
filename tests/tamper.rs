//! Tamper tests: edit, delete, reorder, truncate and re-forge rows of a copy of a real
//! database with a plain connection (the audit tables' guard triggers dropped first, as someone
//! with write access to the database would), and show that `audit verify` and the
//! `audit_verify` tool name the first bad event. Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::db::Raw;
use common::{Db, both_backends, sql_args};
use mcp_coordinator::audit::chain::{EventFields, event_hash};
use serde_json::{Value, json};

/// A data dir whose database holds `calls` audited tool calls, then the `audit.key_added`
/// event of the server's key (written as it signs its first head, at shutdown), signed.
async fn populated(db: &Db, calls: usize) -> tempfile::TempDir {
    let dir = common::data_dir();
    let client = db.connect(dir.path(), &[], common::Era::Legacy).await;
    for i in 0..calls {
        common::call_ok(&client, "audit_query", json!({"subject": format!("s{i}")})).await;
    }
    client.cancel().await.unwrap();
    // The server signs the head as it stops; wait for the process to finish that.
    for _ in 0..100 {
        let (code, out, _) = db.cli(dir.path(), &["audit", "verify", "--json"]);
        let report: Value = serde_json::from_str(&out).unwrap();
        if code == 0 && report["signatures"]["unsigned_tail"] == 0 {
            return dir;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the head was never signed");
}

/// `audit verify` (JSON and text) from `dir` on the database `db` (a `--db` value: a tampered
/// copy).
fn verify(dir: &Path, db: &str) -> (i32, Value, String) {
    let (code, out, _) = common::cli(dir, &["--db", db, "audit", "verify", "--json"]);
    let (_, text, _) = common::cli(dir, &["--db", db, "audit", "verify"]);
    (code, serde_json::from_str(&out).unwrap(), text)
}

fn first_problem(report: &Value) -> (i64, String) {
    (
        report["first_bad_seq"].as_i64().unwrap(),
        report["problems"][0]["kind"].as_str().unwrap().to_string(),
    )
}

both_backends! {
#[tokio::test]
async fn untouched_copy_verifies(db: Db) {
    let dir = populated(&db, 6).await;
    let (copy, _conn) = db.tamper_copy(dir.path(), "copy.db");
    let (code, report, text) = verify(dir.path(), &copy);
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
}

both_backends! {
#[tokio::test]
async fn edited_deleted_reordered_and_truncated_rows_are_named(db: Db) {
    let dir = populated(&db, 8).await;

    let (copy, conn) = db.tamper_copy(dir.path(), "edited.db");
    conn.exec(
        "UPDATE audit_events SET subject = 'innocent' WHERE seq = 4",
        &[],
    );
    let (code, report, text) = verify(dir.path(), &copy);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (4, "edited".into()));
    assert!(text.contains("first bad event 4"), "{text}");

    let (copy, conn) = db.tamper_copy(dir.path(), "deleted.db");
    conn.exec("DELETE FROM audit_events WHERE seq = 3", &[]);
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (3, "missing".into()));

    let (copy, conn) = db.tamper_copy(dir.path(), "reordered.db");
    // Swap events 5 and 6: move 6 aside, 5 into 6's place, 6 into 5's place.
    conn.batch(
        "UPDATE audit_events SET seq = -6 WHERE seq = 6;
         UPDATE audit_events SET seq = 6 WHERE seq = 5;
         UPDATE audit_events SET seq = 5 WHERE seq = -6;",
    );
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report).0, 5);

    let (copy, conn) = db.tamper_copy(dir.path(), "truncated.db");
    conn.exec("DELETE FROM audit_events WHERE seq >= 7", &[]);
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (7, "truncated".into()));
}
}

both_backends! {
/// An attacker who knows the hash format rewrites event 3 and recomputes every hash after
/// it: the links hold, but the first signed head from 3 on no longer matches; re-signing the
/// heads with a key of their own is caught too.
#[tokio::test]
async fn a_reforged_chain_is_caught_by_the_signature(db: Db) {
    let dir = populated(&db, 5).await;
    let (copy, conn) = db.tamper_copy(dir.path(), "forged.db");
    conn.exec(
        "UPDATE audit_events SET actor = 'client:someone-else/1' WHERE seq = 3",
        &[],
    );
    let rows = conn.rows(
        "SELECT seq, ts, actor, action, subject, outcome, detail FROM audit_events ORDER BY seq",
        &[],
    );
    let mut prev = mcp_coordinator::audit::chain::GENESIS_HASH.to_string();
    let mut hashes = std::collections::HashMap::new();
    for row in rows {
        let seq = row[0].as_i64().unwrap();
        let [ts, actor, action, subject, outcome, detail] =
            [1, 2, 3, 4, 5, 6].map(|i| row[i].text());
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
        conn.exec(
            "UPDATE audit_events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            sql_args![&prev, &hash, seq],
        );
        hashes.insert(seq, hash.clone());
        prev = hash;
    }
    // Five calls and the key event (6 events); the server signed the head at shutdown (6),
    // and maybe one earlier if its signer looked while the calls were coming.
    let signed: Vec<i64> = conn
        .rows("SELECT seq FROM audit_signatures ORDER BY seq", &[])
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    assert_eq!(signed.last(), Some(&6), "{}: {signed:?}", db.name());
    let first_changed = *signed.iter().find(|&&s| s >= 3).unwrap();
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        first_problem(&report),
        (first_changed, "signed_head_changed".into()),
        "{}: signed heads {signed:?}",
        db.name()
    );

    // Re-signing with another key is caught too, by this coordinator and by any other.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let signer = mcp_coordinator::audit::AuditSigner::from_key(other);
    for &seq in &signed {
        let hash = &hashes[&seq];
        let msg = mcp_coordinator::audit::chain::head_message(seq, hash);
        conn.exec(
            "UPDATE audit_signatures SET hash = ?1, public_key = ?2, signature = ?3 WHERE seq = ?4",
            sql_args![hash, signer.public_key_hex(), signer.sign_hex(&msg), seq],
        );
    }
    let (code, report, text) = verify(dir.path(), &copy);
    assert_eq!(code, 1);
    assert_eq!(first_problem(&report), (signed[0], "unknown_key".into()));
    assert!(text.contains("never introduced"), "{text}");
    let stranger = common::data_dir();
    let (code, report, _) = verify(stranger.path(), &copy);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (signed[0], "unknown_key".into()));
}
}

/// Appends one event after the current head, hashed as the coordinator would.
fn append_event(conn: &Raw, actor: &str, action: &str, subject: &str) -> (i64, String) {
    let head = conn.row(
        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        &[],
    );
    let (seq, prev) = (head[0].as_i64().unwrap(), head[1].text());
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
    conn.exec(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, 'ok', '{}', ?6, ?7)",
        sql_args![seq, ts, actor, action, subject, &prev, &hash],
    );
    (seq, hash)
}

both_backends! {
/// Someone with write access to the database introduces a key of their own: from then on it
/// signs, but it cannot vouch for a head written before it, nor can an edited key event
/// introduce anything.
#[tokio::test]
async fn an_introduced_key_cannot_sign_the_past(db: Db) {
    let dir = populated(&db, 4).await;
    let intruder = mcp_coordinator::audit::AuditSigner::from_key(
        ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]),
    );
    let key = intruder.public_key_hex().to_string();

    // Introduced at the end and signing a new head after it: a key the chain introduced.
    let (copy, conn) = db.tamper_copy(dir.path(), "introduced.db");
    let (at, _) = append_event(&conn, "system:mcp-coordinator", "audit.key_added", &key);
    let (head, hash) = append_event(&conn, "client:x/1", "tool.call", "later");
    let sign = |seq: i64, hash: &str| {
        conn.exec(
            "INSERT INTO audit_signatures (seq, hash, public_key, signature, signed_at)
             VALUES (?1, ?2, ?3, ?4, 't')",
            sql_args![
                seq,
                hash,
                &key,
                intruder.sign_hex(&mcp_coordinator::audit::chain::head_message(seq, hash))
            ],
        );
    };
    sign(head, &hash);
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["signatures"]["keys"][1]["introduced_seq"], at);

    // The same key backdated over an earlier, unsigned head: forged.
    let earlier = conn.row("SELECT hash FROM audit_events WHERE seq = 2", &[])[0].text();
    sign(2, &earlier);
    let (code, report, text) = verify(dir.path(), &copy);
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
    let (copy, conn) = db.tamper_copy(dir.path(), "edited-key.db");
    conn.exec(
        "UPDATE audit_events SET detail = '{\"host\":\"elsewhere\"}' WHERE action = 'audit.key_added'",
        &[],
    );
    let stranger = common::data_dir();
    let (code, report, _) = verify(stranger.path(), &copy);
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
}

both_backends! {
#[tokio::test]
async fn the_audit_verify_tool_reports_tampering_too(db: Db) {
    let dir = populated(&db, 4).await;
    let (copy, conn) = db.tamper_copy(dir.path(), "tool.db");
    conn.exec("UPDATE audit_events SET detail = '{}' WHERE seq = 2", &[]);
    drop(conn);
    let client = common::connect(dir.path(), &["--db", &copy], common::Era::Stateless).await;
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
}

both_backends! {
#[test]
fn triggers_refuse_changes_to_the_live_table(db: Db) {
    let dir = common::data_dir();
    let (code, _, err) = db.cli(dir.path(), &["serve"]);
    assert_eq!(code, 0, "{}: {err}", db.name());
    let conn = db.raw(dir.path());
    conn.exec(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (1, 't', 'a', 'b', 'c', 'ok', '{}', 'p', 'h')",
        &[],
    );
    let e = conn
        .try_exec("UPDATE audit_events SET actor = 'x'", &[])
        .unwrap_err();
    assert!(e.contains("append-only"), "{}: {e}", db.name());
    let e = conn.try_exec("DELETE FROM audit_events", &[]).unwrap_err();
    assert!(e.contains("append-only"), "{}: {e}", db.name());
    if db.is_postgres() {
        let e = conn.try_exec("TRUNCATE audit_events", &[]).unwrap_err();
        assert!(e.contains("append-only"), "{e}");
    }
}
}

both_backends! {
/// A server killed with SIGKILL signs nothing on the way out. What it wrote more than a second
/// before is signed all the same, so deleting it is caught; the newest second may be unsigned,
/// and `audit verify` warns about that tail rather than calling it intact and complete.
#[test]
fn a_killed_server_leaves_at_most_a_second_unsigned(db: Db) {
    let dir = common::data_dir();
    let mut server = db.raw_server(dir.path(), &[]);
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
        let (head, signed) = db.heads(dir.path()).unwrap();
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
        let (head, signed) = db.heads(dir.path()).unwrap();
        if head > signed {
            tail = head - signed;
            break;
        }
    }
    drop(server); // SIGKILL
    assert!(tail > 0, "every round was signed before the kill");

    let (code, report, _) = verify(dir.path(), &db.location(dir.path()));
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
    let (copy, conn) = db.tamper_copy(dir.path(), "cut-unsigned.db");
    conn.exec(
        "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)",
        &[],
    );
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["signatures"]["unsigned_tail"],
        reported - 1,
        "{report:#}"
    );
    let (_, _, stderr) = common::cli(dir.path(), &["--db", &copy, "audit", "verify"]);
    assert!(stderr.contains("warning: the newest"), "{stderr}");

    // Deleting everything after the head signed while the server ran: caught.
    let (copy, conn) = db.tamper_copy(dir.path(), "cut-signed.db");
    conn.exec(
        "DELETE FROM audit_events WHERE seq >= ?1",
        sql_args![signed],
    );
    let (code, report, _) = verify(dir.path(), &copy);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(first_problem(&report), (signed, "truncated".into()));
}
}
