//! Tests of `audit.rs`: the plans of audit pages on SQLite (which index a page reads, never a
//! sort), and on both backends what the queries return (filters, bounded spans, the chain in
//! chunks), signatures, and the append-only triggers.

use super::*;
use crate::store::{Location, Store};
use rusqlite::Connection;

/// What the plan of an audit page reads.
fn plan(conn: &Connection, filter: &EventFilter) -> Result<String, StoreError> {
    plan_in(conn, filter, Order::NewestFirst)
}

fn plan_in(conn: &Connection, filter: &EventFilter, order: Order) -> Result<String, StoreError> {
    let (sql, args) = page_sql(Dialect::Sqlite, filter, None, None, order, 50);
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let steps: Vec<String> = stmt
        .query_map(
            rusqlite::params_from_iter(args.iter().map(Param::val)),
            |r| r.get(3),
        )?
        .collect::<Result<_, _>>()?;
    Ok(steps.join("; "))
}

/// A filter on a rare action reads the action index; one on a frequent action, which the
/// index leaves out, walks the newest events first (the primary key), never a sort. If
/// HOT_ACTIONS and the migration's list drift apart, the first assertion fails.
#[test]
fn action_filters_read_an_index() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&Location::Memory)?;
    let conn = store.lock();
    for action in [
        "approval.approved",
        "task.failed",
        "instance.tool_quarantined",
    ] {
        let filter = EventFilter {
            action: Some(action.into()),
            before_seq: Some(1_000),
            ..Default::default()
        };
        let plan = plan(&conn, &filter)?;
        assert!(plan.contains("audit_events_action"), "{action}: {plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{action}: {plan}");
    }
    for action in HOT_ACTIONS {
        let filter = EventFilter {
            action: Some(action.into()),
            ..Default::default()
        };
        let plan = plan(&conn, &filter)?;
        assert!(!plan.contains("TEMP B-TREE"), "{action}: {plan}");
    }
    let index: String = conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE name = 'audit_events_action'",
        [],
        |r| r.get(0),
    )?;
    let listed = HOT_ACTIONS
        .iter()
        .all(|a| index.contains(&format!("'{a}'")));
    assert!(listed, "{index}");
    Ok(())
}

/// The console's pages at any depth, older (`before_seq`, newest first) or newer
/// (`after_seq`, oldest first), are ranges of the primary key or of the subject and
/// action indexes, never a sort: a page deep in a million events costs what the first
/// costs.
#[test]
fn keyset_pages_read_a_range_both_ways() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&Location::Memory)?;
    let conn = store.lock();
    for (before, after, order) in [
        (Some(500_000), None, Order::NewestFirst),
        (None, Some(500_000), Order::OldestFirst),
    ] {
        let keyset = EventFilter {
            before_seq: before,
            after_seq: after,
            ..Default::default()
        };
        let plain = plan_in(&conn, &keyset, order)?;
        assert!(plain.contains("INTEGER PRIMARY KEY (rowid"), "{plain}");
        let subject = plan_in(
            &conn,
            &EventFilter {
                subject: Some("apr_1".into()),
                ..keyset.clone()
            },
            order,
        )?;
        assert!(subject.contains("audit_events_subject"), "{subject}");
        let action = plan_in(
            &conn,
            &EventFilter {
                action: Some("approval.approved".into()),
                ..keyset.clone()
            },
            order,
        )?;
        assert!(action.contains("audit_events_action"), "{action}");
        for p in [plain, subject, action] {
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
    }
    Ok(())
}

/// A bounded page (a filter no index serves) reads one seq range of the primary key,
/// never an index and never a sort, both ways; with an exact subject or rarer action it may
/// read that index over the range instead, after finding the range's end by a walk of the
/// index alone (a covering index: no row is read).
#[test]
fn bounded_pages_read_one_span() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&Location::Memory)?;
    let conn = store.lock();
    let explain = |sql: &str, args: Vec<Value>| -> Result<String, StoreError> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(args.iter().map(Param::val)),
                |r| r.get(3),
            )?
            .collect::<Result<_, _>>()?;
        Ok(steps.join("; "))
    };
    for order in [Order::NewestFirst, Order::OldestFirst] {
        // A time range's bounds are the span's own (it lies inside them) and its times.
        let span = EventFilter {
            before_seq: Some(500_001),
            after_seq: Some(450_000),
            since: Some("2026-01-01T00:00:00.000000Z".into()),
            ..Default::default()
        };
        for filter in [
            EventFilter {
                actor: Some("agent:nobody".into()),
                ..span.clone()
            },
            EventFilter {
                outcome: Some("error".into()),
                subject: Some("apr_1".into()),
                action: Some("approval.*".into()),
                ..span.clone()
            },
        ] {
            assert!(needs_bound(&filter));
            let (sql, args) = span_sql(Dialect::Sqlite, &filter, order, 51, None);
            let plan = explain(&sql, args)?;
            assert!(
                plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                "{plan}"
            );
            assert!(!plan.contains("INDEX audit_events_"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
        for (filter, index) in [
            (
                EventFilter {
                    actor: Some("overseer:*".into()),
                    subject: Some("apr_1".into()),
                    ..span.clone()
                },
                "audit_events_subject",
            ),
            (
                EventFilter {
                    actor: Some("overseer:*".into()),
                    action: Some("approval.approved".into()),
                    ..span.clone()
                },
                "audit_events_action",
            ),
        ] {
            let (sql, args) = span_sql(Dialect::Sqlite, &filter, order, 51, Some(index));
            let plan = explain(&sql, args)?;
            assert!(plan.contains(index), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            let conds = index_conditions(&filter);
            let cond = conds.first().ok_or("an index condition")?.1.clone();
            let (sql, args) = reach_sql(
                Dialect::Sqlite,
                &EventFilter {
                    before_seq: span.before_seq,
                    after_seq: span.after_seq,
                    ..cond
                },
                order,
            );
            let plan = explain(&sql, args)?;
            assert!(plan.contains(&format!("COVERING INDEX {index}")), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
    // Both an exact subject and a rarer action: one index is read, the other is a filter.
    let both = EventFilter {
        subject: Some("coordinator_status".into()),
        action: Some("approval.approved".into()),
        ..Default::default()
    };
    assert!(needs_bound(&both));
    let names: Vec<&str> = index_conditions(&both).iter().map(|c| c.0).collect();
    assert_eq!(names, ["audit_events_subject", "audit_events_action"]);
    for name in names {
        let (sql, args) = span_sql(Dialect::Sqlite, &both, Order::NewestFirst, 51, Some(name));
        let plan = explain(&sql, args)?;
        assert!(plan.contains(&format!("INDEX {name}")), "{plan}");
    }
    // Exact subjects and rarer actions alone keep the unbounded index path.
    for filter in [
        EventFilter {
            subject: Some("apr_1".into()),
            ..Default::default()
        },
        EventFilter {
            action: Some("approval.approved".into()),
            since: Some("2026-01-01T00:00:00.000000Z".into()),
            ..Default::default()
        },
    ] {
        assert!(!needs_bound(&filter), "{filter:?}");
    }
    Ok(())
}

/// An event row as a test stores it (the hashes are not checked here).
fn event(seq: i64, actor: &str, action: &str, subject: &str, outcome: &str) -> EventRow {
    EventRow {
        seq,
        ts: format!("2026-01-01T00:{:02}:{:02}.000000Z", seq / 60, seq % 60),
        actor: actor.into(),
        action: action.into(),
        subject: subject.into(),
        outcome: outcome.into(),
        detail: "{}".into(),
        prev_hash: format!("{:064x}", seq - 1),
        hash: format!("{seq:064x}"),
    }
}

/// Forty events of a few actors (one with LIKE's wildcards in its name), actions (hot and
/// rare), subjects and outcomes.
fn sample() -> Vec<EventRow> {
    let actors = ["agent:a1", "overseer:bob", "user:50%_off", "overseer:ann"];
    let actions = [
        "tool.call",
        "approval.approved",
        "task.failed",
        "task.completed",
    ];
    (1..=40)
        .map(|seq| {
            let i = seq as usize;
            event(
                seq,
                actors[i % 4],
                actions[(i / 2) % 4],
                &format!("apr_{}", i % 3),
                if i.is_multiple_of(5) { "error" } else { "ok" },
            )
        })
        .collect()
}

fn seqs(rows: &[EventRow]) -> Vec<i64> {
    rows.iter().map(|r| r.seq).collect()
}

/// What a filter should find in `rows`, newest first: the rules page_sql spells in SQL.
fn expected(rows: &[EventRow], filter: &EventFilter) -> Vec<i64> {
    let text = |v: &str, f: &Option<String>| match f.as_deref() {
        None => true,
        Some(f) => match f.strip_suffix('*') {
            Some(prefix) => v.starts_with(prefix),
            None => v == f,
        },
    };
    let mut out: Vec<i64> = rows
        .iter()
        .filter(|r| {
            text(&r.actor, &filter.actor)
                && text(&r.action, &filter.action)
                && text(&r.subject, &filter.subject)
                && text(&r.outcome, &filter.outcome)
                && filter.since.as_deref().is_none_or(|s| r.ts.as_str() >= s)
                && filter.until.as_deref().is_none_or(|u| r.ts.as_str() < u)
                && filter.before_seq.is_none_or(|b| r.seq < b)
                && filter.after_seq.is_none_or(|a| r.seq > a)
        })
        .map(|r| r.seq)
        .collect();
    out.reverse();
    out
}

/// Pages, bounded spans, time ranges, prefixes (taken literally: `%` and `_` are no
/// wildcards) and the head find the same events on both backends, as the filter's rules say.
#[test]
fn filters_find_the_same_events_on_both_backends() -> Result<(), Box<dyn std::error::Error>> {
    let rows = sample();
    let filters = [
        EventFilter::default(),
        EventFilter {
            actor: Some("overseer:*".into()),
            ..Default::default()
        },
        EventFilter {
            actor: Some("user:50%*".into()),
            ..Default::default()
        },
        EventFilter {
            actor: Some("user:5_*".into()),
            ..Default::default()
        },
        EventFilter {
            action: Some("approval.approved".into()),
            before_seq: Some(30),
            ..Default::default()
        },
        EventFilter {
            action: Some("task.*".into()),
            outcome: Some("error".into()),
            ..Default::default()
        },
        EventFilter {
            subject: Some("apr_1".into()),
            actor: Some("agent:*".into()),
            ..Default::default()
        },
        EventFilter {
            subject: Some("apr_2".into()),
            action: Some("task.failed".into()),
            after_seq: Some(4),
            ..Default::default()
        },
        EventFilter {
            since: Some(rows[9].ts.clone()),
            until: Some(rows[24].ts.clone()),
            action: Some("tool.call".into()),
            ..Default::default()
        },
    ];
    for (backend, store) in crate::store::testing::both("audit_filters") {
        store.write(|tx| rows.iter().try_for_each(|r| insert(tx, r)))?;
        let head = store.read(head)?.ok_or("a head")?;
        assert_eq!((head.seq, head.ts.as_str()), (40, rows[39].ts.as_str()));
        for filter in &filters {
            let want = expected(&rows, filter);
            let got = store.read(|tx| page(tx, filter, 100))?;
            assert_eq!(seqs(&got), want, "{backend}: page of {filter:?}");
            assert_eq!(got.first(), want.first().map(|s| &rows[*s as usize - 1]));
            let oldest = store.read(|tx| page_in(tx, filter, Order::OldestFirst, 3))?;
            let mut first3: Vec<i64> = want.iter().rev().take(3).copied().collect();
            first3.sort_unstable();
            assert_eq!(seqs(&oldest), first3, "{backend}: oldest of {filter:?}");
            // A bounded page reads from its own cursor only (before_seq newest first,
            // after_seq oldest first): compared here from either end of the chain.
            let whole = EventFilter {
                before_seq: None,
                after_seq: None,
                ..filter.clone()
            };
            let want = expected(&rows, &whole);
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let bounded = store.read(|tx| page_bounded(tx, &whole, order, 100))?;
                let mut got = seqs(&bounded.rows);
                if order == Order::OldestFirst {
                    got.reverse();
                }
                assert_eq!(got, want, "{backend}: bounded {order:?} of {whole:?}");
                assert!(bounded.exhausted, "{backend}: {whole:?}");
                let range = match (&whole.since, &whole.until) {
                    (None, None) => (1, 40),
                    _ => (10, 24),
                };
                assert_eq!((bounded.lower, bounded.upper), range, "{backend}");
            }
        }
        let empty = EventFilter {
            since: Some("2027-01-01T00:00:00.000000Z".into()),
            ..Default::default()
        };
        assert!(
            store.read(|tx| page(tx, &empty, 10))?.is_empty(),
            "{backend}"
        );
    }
    Ok(())
}

/// The chain is read whole and in order through chunks of any size, and a gap in the
/// sequence (deleted events) ends no chunk early.
#[test]
fn the_chain_is_read_in_chunks() -> Result<(), Box<dyn std::error::Error>> {
    let stored: Vec<i64> = (1..=7).chain([10, 11, 9_000]).collect();
    for (backend, store) in crate::store::testing::both("audit_chunks") {
        store.write(|tx| {
            stored
                .iter()
                .try_for_each(|s| insert(tx, &event(*s, "agent:a", "tool.call", "x", "ok")))
        })?;
        for chunk in [1, 2, 3, 7, 10, 100, CHAIN_CHUNK] {
            let mut got = Vec::new();
            store.read(|tx| {
                for_each_in_chunks(tx, chunk, |row| -> Result<(), StoreError> {
                    got.push(row.seq);
                    Ok(())
                })
            })?;
            assert_eq!(got, stored, "{backend}: chunks of {chunk}");
        }
        // An error of the callback stops the walk and is returned as it is.
        let mut seen = 0;
        let stopped = store.read(|tx| {
            for_each_in_order(tx, |row| {
                seen += 1;
                if row.seq == 3 {
                    return Err(StoreError::NotFound {
                        what: "event",
                        id: "3".into(),
                    });
                }
                Ok(())
            })
        });
        assert!(
            matches!(stopped, Err(StoreError::NotFound { .. })),
            "{backend}"
        );
        assert_eq!(seen, 3, "{backend}");
    }
    Ok(())
}

/// Signing a head twice stores one signature; the newest signed seq and the key lookup read
/// back on both backends.
#[test]
fn signatures_and_key_events_read_back() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, store) in crate::store::testing::both("audit_sigs") {
        assert_eq!(store.read(last_signed_seq)?, None, "{backend}");
        assert!(store.read(signatures)?.is_empty(), "{backend}");
        store.write(|tx| {
            insert(tx, &event(1, "system", "audit.key_added", "k1", "ok"))?;
            insert(tx, &event(2, "agent:a", "tool.call", "x", "ok"))
        })?;
        let sig = |seq: i64, signature: &str| SignatureRow {
            seq,
            hash: format!("{seq:064x}"),
            public_key: "k1".into(),
            signature: signature.into(),
            signed_at: "2026-01-01T00:00:09.000000Z".into(),
        };
        store.write(|tx| insert_signature(tx, &sig(2, "first")))?;
        store.write(|tx| insert_signature(tx, &sig(2, "second")))?;
        store.write(|tx| insert_signature(tx, &sig(1, "older")))?;
        let all = store.read(signatures)?;
        assert_eq!(all, [sig(1, "older"), sig(2, "first")], "{backend}");
        assert_eq!(store.read(last_signed_seq)?, Some(2), "{backend}");
        let added = |key: &str| store.read(|tx| key_added(tx, "audit.key_added", key));
        assert!(added("k1")?, "{backend}");
        assert!(!added("k2")?, "{backend}");
    }
    Ok(())
}

/// The append-only triggers refuse an update or delete of an event, and a delete of a
/// signature; on PostgreSQL a TRUNCATE too (it skips row triggers).
#[test]
fn triggers_refuse_update_and_delete() -> Result<(), Box<dyn std::error::Error>> {
    use crate::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
    for (backend, store) in crate::store::testing::both("audit_triggers") {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let log = AuditLog::new(store, std::sync::Arc::new(AuditSigner::from_key(key)));
        log.record(NewEvent {
            actor: Actor::new(ActorKind::Client, "test/1.0"),
            action: Action::ToolCall,
            subject: "a".into(),
            outcome: Outcome::Ok,
            detail: serde_json::json!({"arguments": {"token": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}),
            critical: true,
        })?;
        let store = log.store();
        let mut refused = vec![
            "UPDATE audit_events SET subject = 'x'",
            "DELETE FROM audit_events",
            "UPDATE audit_signatures SET signature = 'x'",
            "DELETE FROM audit_signatures",
        ];
        if store.is_postgres() {
            refused.extend(["TRUNCATE audit_events", "TRUNCATE audit_signatures"]);
        }
        for sql in refused {
            let err = store.execute_for_test(sql);
            assert!(
                err.as_ref()
                    .is_err_and(|e| e.to_string().contains("append-only")),
                "{backend}: {sql}: {err:?}"
            );
        }
        assert_eq!(store.read(head)?.map(|h| h.seq), Some(2), "{backend}");
    }
    Ok(())
}
