//! Tests of the audit service, each on SQLite and on PostgreSQL: chaining and redaction, time
//! ranges, paging, key events, and verification of long chains with signed heads (read in
//! chunks), written by one coordinator or by several at once.

use super::*;
use crate::store::testing::both;
use crate::store::{Location, Store};
use serde_json::json;

/// gethostname (every Unix) names the machine as Linux's `/proc` does.
#[cfg(target_os = "linux")]
#[test]
fn host_name_is_the_kernel_host_name() {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert_eq!(host_name(), kernel.trim());
}

fn signer(seed: u8) -> Arc<AuditSigner> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    Arc::new(AuditSigner::from_key(key))
}

/// An audit log on each backend, each on an empty database.
fn logs(label: &str) -> Vec<(&'static str, AuditLog)> {
    both(label)
        .into_iter()
        .map(|(backend, store)| (backend, AuditLog::new(store, signer(7))))
        .collect()
}

fn event(subject: &str, critical: bool) -> NewEvent {
    NewEvent {
        actor: Actor::new(ActorKind::Client, "test/1.0"),
        action: Action::ToolCall,
        subject: subject.into(),
        outcome: Outcome::Ok,
        detail: json!({"arguments": {"token": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}),
        critical,
    }
}

#[test]
fn events_chain_and_redact() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_chain_redact") {
        let a = log.record(event("a", false))?;
        let b = log.record(event("b", true))?;
        // The first critical event brings this key into the chain just before it (seq 2).
        assert_eq!((a.seq, b.seq), (1, 3), "{backend}");
        assert_eq!(a.prev_hash, chain::GENESIS_HASH);
        assert_eq!(a.detail["arguments"]["token"], redact::REDACTED);
        let key_event = log.query(&Query {
            action: Some("audit.key_added".into()),
            ..Default::default()
        })?;
        assert_eq!(key_event.events.len(), 1, "{backend}");
        assert_eq!(key_event.events[0].seq, 2);
        assert_eq!(key_event.events[0].subject, log.signer().public_key_hex());
        assert_eq!(key_event.events[0].prev_hash, a.hash);
        assert_eq!(b.prev_hash, key_event.events[0].hash);
        // Later critical events and the head at shutdown add no second key event.
        log.record(event("c", true))?;
        log.sign_head()?;
        let report = log.verify()?;
        assert!(report.ok, "{backend}: {report:?}");
        assert_eq!(report.events_checked, 4, "{backend}");
        assert_eq!(report.signatures.valid, 2, "{backend}");
        assert_eq!(report.signatures.last_signed_seq, Some(4), "{backend}");
        assert_eq!(report.signatures.keys.len(), 1, "{backend}");
        assert_eq!(
            report.signatures.keys[0].introduced_seq,
            Some(2),
            "{backend}"
        );
    }
    Ok(())
}

/// A time range is answered from seq bounds found by binary search: the same events as
/// filtering every event by its time, newest first.
#[test]
fn time_ranges_find_the_events_in_them() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_time_ranges") {
        let mut all = Vec::new();
        for i in 0..40 {
            all.push(log.record(event(&format!("s{i}"), false))?);
            if i % 7 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let stored = |seq: usize| chain::normalize_ts(&all[seq].ts).unwrap_or_default();
        for (since, until) in [(3, 31), (0, 39), (14, 15), (22, 39)] {
            let (since, until) = (stored(since), stored(until));
            if since >= until {
                continue;
            }
            let page = log.query(&Query {
                since: Some(since.clone()),
                until: Some(until.clone()),
                limit: Some(500),
                ..Default::default()
            })?;
            let got: Vec<i64> = page.events.iter().map(|e| e.seq).collect();
            let want: Vec<i64> = all
                .iter()
                .rev()
                .filter(|e| {
                    let t = chain::normalize_ts(&e.ts).unwrap_or_default();
                    t >= since && t < until
                })
                .map(|e| e.seq)
                .collect();
            assert!(!want.is_empty());
            assert_eq!(got, want, "{backend}: since {since} until {until}");
        }
        let after_all = log.query(&Query {
            since: Some(chain::now_ts()),
            ..Default::default()
        })?;
        assert!(after_all.events.is_empty(), "{backend}");
    }
    Ok(())
}

/// An event never takes a time before the head's: when the head is ahead of this clock (a
/// coordinator sharing the database whose clock runs ahead), the next event repeats its
/// time, and a range starting there finds it.
#[test]
fn appends_never_go_back_in_time() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_no_going_back") {
        log.record(event("a", false))?;
        let ahead = "2999-01-01T00:00:00.000000Z";
        log.store().write(|tx| {
            let head = sql::head(tx)?;
            let mut row = log.next_row(head.as_ref(), &event("from-the-future", false));
            row.ts = ahead.into();
            sql::insert(tx, &row)
        })?;
        let next = log.record(event("b", false))?;
        assert_eq!(
            chain::normalize_ts(&next.ts).as_deref(),
            Some(ahead),
            "{backend}"
        );
        let page = log.query(&Query {
            since: Some(ahead.into()),
            ..Default::default()
        })?;
        let subjects: Vec<&str> = page.events.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(subjects, ["b", "from-the-future"], "{backend}");
    }
    Ok(())
}

#[test]
fn a_rolled_back_key_event_is_written_again() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_rolled_back_key") {
        let failed: Result<(), AuditError> = log.store().write(|tx| {
            log.append_in(tx, &event("a", true))?;
            Err(AuditError::InvalidInput {
                field: "x",
                message: "roll back".into(),
            })
        });
        assert!(failed.is_err());
        log.record(event("b", true))?;
        let report = log.verify()?;
        assert!(report.ok, "{backend}: {report:?}");
        assert_eq!(report.events_checked, 2, "{backend}");
        assert_eq!(
            report.signatures.keys[0].introduced_seq,
            Some(1),
            "{backend}"
        );
    }
    Ok(())
}

#[test]
fn query_pages_newest_first_with_filters() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_query_pages") {
        let batch: Vec<_> = (0..7)
            .map(|i| event(if i % 2 == 0 { "even" } else { "odd" }, false))
            .collect();
        assert_eq!(log.record_batch(&batch)?, 7);
        let p1 = log.query(&Query {
            limit: Some(3),
            ..Default::default()
        })?;
        let seqs: Vec<i64> = p1.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![7, 6, 5], "{backend}");
        let p2 = log.query(&Query {
            limit: Some(3),
            cursor: p1.next_cursor.clone(),
            ..Default::default()
        })?;
        assert_eq!(p2.events[0].seq, 4, "{backend}");
        let odd = log.query(&Query {
            subject: Some("od*".into()),
            ..Default::default()
        })?;
        assert_eq!(odd.events.len(), 3, "{backend}");
        assert!(odd.next_cursor.is_none());
        let bad = log.query(&Query {
            since: Some("soon".into()),
            ..Default::default()
        });
        assert!(matches!(
            bad,
            Err(AuditError::InvalidInput { field: "since", .. })
        ));
    }
    Ok(())
}

/// Events in a batch that makes the chain longer than one chunk of verification's walk.
const LONG: usize = sql::CHAIN_CHUNK as usize + 300;

/// A chain of several chunks with signed heads (critical events, a batch's, the head at
/// shutdown) verifies on both backends, and so does the export of all of it; an edit and a
/// deletion past the first chunk are found where they are.
#[test]
fn long_chains_with_signed_heads_verify() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, log) in logs("audit_long_chain") {
        log.record(event("first", true))?;
        let batch: Vec<NewEvent> = (0..LONG)
            .map(|i| event(&format!("e{i}"), i % 1_000 == 999))
            .collect();
        log.record_batch(&batch)?;
        log.record(event("after", false))?;
        log.sign_head()?;
        let total = LONG as u64 + 3; // the key event, "first" and "after"
        let report = log.verify()?;
        assert!(report.ok, "{backend}: {report:?}");
        assert_eq!(report.events_checked, total, "{backend}");
        assert_eq!(report.head_seq, Some(total as i64), "{backend}");
        // "first", the batch's critical events, and the head at shutdown.
        let signed = 2 + batch.iter().filter(|e| e.critical).count() as u64;
        assert_eq!(report.signatures.total, signed, "{backend}");
        assert_eq!(report.signatures.valid, signed, "{backend}");
        assert_eq!(report.signatures.unsigned_tail, 0, "{backend}");
        assert!(
            report.warnings.is_empty(),
            "{backend}: {:?}",
            report.warnings
        );
        let mut out = Vec::new();
        assert_eq!(log.export_jsonl(&Query::default(), &mut out)?, total);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count() as u64, total);

        // Tampering as someone with the database would: the triggers set aside first.
        let store = log.store();
        // Both past the first chunk; the deletion moves where the chunks after it begin.
        let edited = sql::CHAIN_CHUNK + 101;
        let deleted = edited + 50..=edited + 70;
        if store.is_postgres() {
            store.execute_for_test("ALTER TABLE audit_events DISABLE TRIGGER USER")?;
        } else {
            store.execute_for_test("DROP TRIGGER audit_events_no_update")?;
            store.execute_for_test("DROP TRIGGER audit_events_no_delete")?;
        }
        store.execute_for_test(&format!(
            "UPDATE audit_events SET subject = 'forged' WHERE seq = {edited}"
        ))?;
        store.execute_for_test(&format!(
            "DELETE FROM audit_events WHERE seq BETWEEN {} AND {}",
            deleted.start(),
            deleted.end()
        ))?;
        let report = log.verify()?;
        assert!(!report.ok, "{backend}");
        assert_eq!(report.events_checked, total - 21, "{backend}");
        assert_eq!(report.first_bad_seq, Some(edited), "{backend}");
        let kinds: Vec<(i64, ProblemKind)> =
            report.problems.iter().map(|p| (p.seq, p.kind)).collect();
        assert_eq!(
            kinds,
            [
                (edited, ProblemKind::Edited),
                (*deleted.start(), ProblemKind::Missing)
            ],
            "{backend}"
        );
    }
    Ok(())
}

/// Coordinators sharing one database (each its own store handle and key) append at once,
/// critical events among them: one gapless chain with one head, which verifies with every
/// coordinator's signatures. SQLite here is one file opened by each.
#[test]
fn coordinators_sharing_a_database_keep_one_chain() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let sqlite = Location::File(dir.path().join("shared.db"));
    let postgres = Location::from_arg(&crate::store::testing::fresh_database("audit_shared"))?;
    const COORDINATORS: u8 = 3;
    const EACH: usize = 60;
    for (backend, location) in [("sqlite", sqlite), ("postgres", postgres)] {
        let logs: Vec<AuditLog> = (0..COORDINATORS)
            .map(|i| Ok(AuditLog::new(Store::open(&location)?, signer(10 + i))))
            .collect::<Result<_, StoreError>>()?;
        std::thread::scope(|s| {
            for (i, log) in logs.iter().enumerate() {
                s.spawn(move || {
                    for n in 0..EACH {
                        let e = event(&format!("c{i}-{n}"), n % 10 == 0);
                        let done = if n % 3 == 0 {
                            log.record_batch(&[e.clone(), e]).map(|_| ())
                        } else {
                            log.record(e).map(|_| ())
                        };
                        assert!(done.is_ok(), "{backend}: {done:?}");
                    }
                });
            }
        });
        for log in &logs {
            log.sign_head()?;
        }
        // Each coordinator's events (a third of them twice, in batches) and its key event.
        let per = (EACH + EACH.div_ceil(3) + 1) as u64;
        let total = per * u64::from(COORDINATORS);
        for log in &logs {
            let report = log.verify()?;
            assert!(report.ok, "{backend}: {report:?}");
            assert_eq!(report.events_checked, total, "{backend}");
            assert_eq!(report.head_seq, Some(total as i64), "{backend}");
            let introduced = report
                .signatures
                .keys
                .iter()
                .filter(|k| k.introduced_seq.is_some() && k.valid > 0)
                .count();
            assert_eq!(introduced, usize::from(COORDINATORS), "{backend}");
        }
    }
    Ok(())
}
