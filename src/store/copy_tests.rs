//! Tests of `store copy` at the store's level, on every pair of backends: the table list is
//! the schema, every value survives (NULL integers, floats, bytes, text), batches page through
//! composite keys, a target with data is refused, and a failed copy leaves nothing behind.

use std::collections::BTreeMap;

use super::*;
use crate::args;
use crate::store::testing;

type Dump = BTreeMap<&'static str, Vec<BTreeMap<String, Value>>>;

/// Every row of every table, by column name, in key order.
fn dump(store: &Store) -> Result<Dump, CopyError> {
    store.read(|tx| {
        let mut out = Dump::new();
        for t in TABLES {
            let cols = columns(tx, t.name)?;
            let key = t.key_list();
            let rows = tx.all(
                &format!("SELECT * FROM {} ORDER BY {key}", t.name),
                &[],
                |r| {
                    cols.iter()
                        .enumerate()
                        .map(|(i, (c, _))| Ok((c.clone(), r.value(i)?)))
                        .collect()
                },
            )?;
            out.insert(t.name, rows);
        }
        Ok(out)
    })
}

/// Rows in every table, with the values that are easy to lose on the way: NULL integers and
/// text, floats, bytes, i64's extremes, quotes and non-ASCII text; more than one batch of
/// audit events and of stage runs (whose key has two columns).
fn fill(store: &Store) -> Result<(), StoreError> {
    let none_i: Option<i64> = None;
    let none_t: Option<&str> = None;
    let none_f: Option<f64> = None;
    store.write(|tx| {
        for seq in 1..=1_100i64 {
            tx.exec(
                "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
                 VALUES (?1, ?2, 'client:t/1', 'tool.call', ?3, 'ok', '{\"k\":\"v ✓\"}', ?4, ?5)",
                args![seq, format!("2026-01-01T00:00:00.{seq:06}Z"), format!("s{seq}"), format!("{:064}", seq - 1), format!("{seq:064}")],
            )?;
        }
        tx.exec(
            "INSERT INTO audit_signatures (seq, hash, public_key, signature, signed_at) VALUES (1100, ?1, 'ab', 'cd', 'now')",
            args![format!("{:064}", 1100)],
        )?;
        tx.exec(
            "INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, preview, requested_by,
                 created_at, expires_at, decide_with, state, decided_by, decided_via, decided_at, reason, cause, executed_at)
             VALUES ('ap1', 'generic', 's', 'Zoë''s \"change\"', '{}', 'h', 'low', ?1, 'me', 't0', 't9', 'out_of_band',
                 'pending', ?1, ?1, ?1, ?1, ?1, ?1),
                    ('ap2', 'remediation', 's', '', '{}', 'h', 'high', 'p', 'me', 't1', 't9', 'elicitation',
                 'approved', 'you', 'cli', 't2', 'ok', ?1, 't3')",
            args![none_t],
        )?;
        tx.exec(
            "INSERT INTO approval_questions (nonce, approval_id, asked_at, redeemed_at) VALUES ('n1', 'ap1', 't', ?1)",
            args![none_t],
        )?;
        tx.exec(
            "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources, metadata, status, load,
                 registered_at, last_heartbeat_ms, token_generation, deregistered_at)
             VALUES ('ag1', 'worker ✓', 'worker', '[]', '{}', '{}', '{}', 'ready', ?1, 'r', ?2, ?3, ?4)",
            args![0.1f64 + 0.2, i64::MAX, i64::MIN, none_t],
        )?;
        for i in 0..3i64 {
            tx.exec(
                "INSERT INTO tasks (id, kind, params, capabilities, target_agent_id, priority, status, timeout_ms,
                     max_retries, attempts, idempotency_key, not_before_ms, created_ms, updated_ms, submitted_by,
                     leased_by, lease_expires_ms, last_agent_id, progress, message, result, last_error, finished_ms)
                 VALUES (?1, 'k', '{}', '[]', ?2, 1, ?3, 1000, 3, 0, ?4, 0, ?5, ?5, 'me', ?6, ?7, ?6, ?8, ?4, ?4, ?4, ?7)",
                args![
                    format!("t{i}"),
                    if i == 0 { Some("ag1") } else { None },
                    if i == 1 { "leased" } else { "queued" },
                    none_t,
                    -i,
                    if i == 1 { Some("ag1") } else { None },
                    if i == 1 { Some(42i64) } else { none_i },
                    if i == 2 { Some(0.5f64) } else { none_f }
                ],
            )?;
        }
        tx.exec(
            "INSERT INTO pipelines (id, name, latest_version, created_at, updated_at, created_by, deleted_at)
             VALUES ('p1', 'pipe', 1, 'c', 'u', 'me', ?1)",
            args![none_t],
        )?;
        tx.exec(
            "INSERT INTO pipeline_versions (pipeline_id, version, description, definition, created_at, created_by)
             VALUES ('p1', 1, 'd', '{}', 'c', 'me')",
            args![],
        )?;
        for run in 0..2i64 {
            tx.exec(
                "INSERT INTO pipeline_runs (id, pipeline_id, version, status, input, parameters, priority, started_by,
                     created_ms, updated_ms, finished_ms, error, webhook_url, webhook_state, webhook_attempts,
                     webhook_next_ms, webhook_error)
                 VALUES (?1, 'p1', 1, 'running', '{}', '{}', 2, 'me', 1, 2, ?2, ?3, ?3, ?3, 0, ?2, ?3)",
                args![format!("r{run}"), none_i, none_t],
            )?;
            for stage in 0..350i64 {
                tx.exec(
                    "INSERT INTO pipeline_stage_runs (run_id, stage, position, status, task_id, approval_id, output,
                         error, started_ms, finished_ms)
                     VALUES (?1, ?2, ?3, 'waiting', ?4, ?4, ?4, ?4, ?5, ?5)",
                    args![format!("r{run}"), format!("stage-{stage}"), stage, none_t, none_i],
                )?;
            }
        }
        tx.exec(
            "INSERT INTO secrets (name, nonce, ciphertext, key_fingerprint, created_at, updated_at)
             VALUES ('s', ?1, ?2, 'fp', 'c', 'u')",
            args![[0u8; 12], (0..=255u8).collect::<Vec<u8>>()],
        )?;
        tx.exec(
            "INSERT INTO assessments (id, kind, status, created_at, doc) VALUES ('as1', 'health', 'completed', 'c', '{}')",
            args![],
        )?;
        tx.exec(
            "INSERT INTO remediations (id, status, assessment_id, created_at, updated_at, doc)
             VALUES ('re1', 'proposed', 'as1', 'c', 'u', '{}'), ('re2', 'withdrawn', ?1, 'c', 'u', '{}')",
            args![none_t],
        )?;
        tx.exec(
            "INSERT INTO instances (id, name, type, status, owner, owner_host, owner_pid, pid, overrides,
                 ttl_seconds, created_at, started_at, expires_at, stopped_at, restarts, health, last_error,
                 tools, resume, updated_at, snapshot)
             VALUES ('i1', 'inst', 'fs', 'stopped', 'o', 'h', 7, ?1, '{}', ?1, 'c', ?2, ?2, ?2, 0, 'unknown', ?2,
                 0, 0, 'u', ?2)",
            args![none_i, none_t],
        )?;
        tx.exec(
            "INSERT INTO instance_tool_pins (type, tool, status, hash, definition, flags, pending_hash,
                 pending_definition, pending_flags, approval_id, first_seen_at, updated_at)
             VALUES ('fs', 'read', 'pinned', 'h', '{}', '[]', ?1, ?1, ?1, ?1, 'f', 'u')",
            args![none_t],
        )?;
        tx.exec(
            "INSERT INTO overseer_credentials (seq, name, passphrase, recovery, event, set_at, set_by)
             VALUES (1, 'me', '$argon2id$x', '$argon2id$y', 'init', 's', 'user:me@host')",
            args![],
        )?;
        tx.exec(
            "UPDATE overseer_lock SET failures = 2, locked_until = 'later' WHERE id = 1",
            args![],
        )?;
        tx.exec(
            "INSERT INTO access_tokens (id, kind, name, roles, key_hash, issued_at, issued_by, expires_at, revoked_at, revoked_by)
             VALUES ('key_1', 'api_key', 'k', 'admin', 'abc', 'i', 'me', ?1, ?1, ?1)",
            args![none_t],
        )?;
        Ok(())
    })
}

#[test]
fn the_table_list_is_the_schema_in_foreign_key_order() -> Result<(), Box<dyn std::error::Error>> {
    let listed: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    for (backend, store) in testing::both("copy_tables") {
        store.read(|tx| -> Result<(), Box<dyn std::error::Error>> {
            let (tables_sql, key_sql, fk_sql) = if tx.is_postgres() {
                (
                    "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
                       AND table_name <> 'mcp_coordinator_schema'",
                    "SELECT CAST(k.column_name AS TEXT) FROM information_schema.table_constraints c
                     JOIN information_schema.key_column_usage k
                       ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema
                     WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = current_schema()
                       AND c.table_name = ?1 ORDER BY k.ordinal_position",
                    "SELECT DISTINCT CAST(u.table_name AS TEXT) FROM information_schema.table_constraints c
                     JOIN information_schema.constraint_column_usage u
                       ON u.constraint_name = c.constraint_name AND u.constraint_schema = c.constraint_schema
                     WHERE c.constraint_type = 'FOREIGN KEY' AND c.table_schema = current_schema()
                       AND c.table_name = ?1",
                )
            } else {
                (
                    "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                    "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
                    "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)",
                )
            };
            let mut tables: Vec<String> = tx.all(tables_sql, &[], |r| r.get(0))?;
            tables.sort();
            let mut want: Vec<String> = listed.iter().map(|t| t.to_string()).collect();
            want.sort();
            assert_eq!(tables, want, "{backend}: the tables store copy knows");
            for (at, t) in TABLES.iter().enumerate() {
                let key: Vec<String> = tx.all(key_sql, args![t.name], |r| r.get(0))?;
                assert_eq!(key, t.key, "{backend}: primary key of {}", t.name);
                let parents: Vec<String> = tx.all(fk_sql, args![t.name], |r| r.get(0))?;
                for p in parents {
                    let parent_at = listed.iter().position(|l| *l == p);
                    assert!(
                        parent_at.is_some_and(|pa| pa < at),
                        "{backend}: {} refers to {p}, which must come before it",
                        t.name
                    );
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn every_row_and_value_copies_between_every_pair_of_backends()
-> Result<(), Box<dyn std::error::Error>> {
    for from in ["sqlite", "postgres"] {
        for to in ["sqlite", "postgres"] {
            let open = |backend: &str, label: &str| match backend {
                "sqlite" => Store::open(&Location::Memory),
                _ => Ok(testing::postgres_store(label)),
            };
            let source = open(from, "copy_from")?;
            let target = open(to, "copy_to")?;
            fill(&source)?;
            let (copied, ()) = copy(&source, &target, |_, _| Ok::<_, CopyError>(()))?;
            let count = |t: &str| copied.tables.iter().find(|c| c.0 == t).map(|c| c.1);
            assert_eq!(count("audit_events"), Some(1_100), "{from} -> {to}");
            assert_eq!(count("pipeline_stage_runs"), Some(700), "{from} -> {to}");
            assert_eq!(count("overseer_lock"), Some(1), "{from} -> {to}");
            assert_eq!(copied.tables.len(), TABLES.len());
            assert_eq!(
                copied.head,
                Some((1_100, format!("{:064}", 1_100))),
                "{from} -> {to}"
            );
            let (was, is) = (dump(&source)?, dump(&target)?);
            for t in TABLES {
                assert_eq!(was[t.name], is[t.name], "{from} -> {to}: table {}", t.name);
            }
            let task = &is["tasks"][0];
            assert_eq!(task["lease_expires_ms"], Value::Null, "{from} -> {to}");
            assert_eq!(is["agents"][0]["load"], Value::Real(0.1 + 0.2));
            assert_eq!(is["agents"][0]["last_heartbeat_ms"], Value::Int(i64::MAX));
        }
    }
    Ok(())
}

#[test]
fn a_target_with_data_is_refused_naming_the_tables() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, target) in testing::both("copy_refused") {
        let source = Store::open(&Location::Memory)?;
        fill(&source)?;
        target.write(|tx| {
            tx.exec(
                "INSERT INTO assessments (id, kind, status, created_at, doc) VALUES ('x', 'health', 'running', 'c', '{}')",
                args![],
            )?;
            tx.exec(
                "UPDATE overseer_lock SET failures = 1 WHERE id = 1",
                args![],
            )
        })?;
        let before = dump(&target)?;
        let refused = copy(&source, &target, |_, _| Ok::<_, CopyError>(()));
        match refused {
            Err(CopyError::NotEmpty { tables, .. }) => {
                assert_eq!(
                    tables,
                    [("assessments", 1), ("overseer_lock", 1)],
                    "{backend}"
                )
            }
            other => panic!("{backend}: {other:?}"),
        }
        let message = copy(&source, &target, |_, _| Ok::<_, CopyError>(()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("(assessments: 1 row, overseer_lock: 1 row)")
                && message.contains("never merged"),
            "{backend}: {message}"
        );
        assert_eq!(dump(&target)?, before, "{backend}: the target is untouched");
    }
    Ok(())
}

#[test]
fn a_failed_check_leaves_the_target_empty() -> Result<(), Box<dyn std::error::Error>> {
    for (backend, target) in testing::both("copy_rolled_back") {
        let source = Store::open(&Location::Memory)?;
        fill(&source)?;
        let empty = dump(&target)?;
        let failed = copy(&source, &target, |tx, copied| {
            // Everything is in, inside the transaction, when the check runs.
            let n = tx.one("SELECT COUNT(*) FROM audit_events", &[], |r| {
                r.get::<i64>(0)
            })?;
            assert_eq!(n, Some(1_100), "{backend}");
            assert_eq!(
                copied.rows(),
                1_100 + 1 + 2 + 1 + 1 + 3 + 1 + 1 + 2 + 700 + 1 + 1 + 2 + 1 + 1 + 1 + 1 + 1
            );
            Err::<(), _>(CopyError::Store(StoreError::Postgres {
                message: "the check says no".into(),
            }))
        });
        assert!(failed.is_err(), "{backend}");
        assert_eq!(dump(&target)?, empty, "{backend}: nothing was left behind");
        // And the empty target takes the copy afterwards.
        copy(&source, &target, |_, _| Ok::<_, CopyError>(()))?;
        assert_eq!(dump(&target)?, dump(&source)?, "{backend}");
    }
    Ok(())
}

#[test]
fn databases_at_another_schema_version_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let known = known_version();
    let at = |name: &str, version: i64| -> Result<Location, Box<dyn std::error::Error>> {
        let location = Location::File(dir.path().join(name));
        drop(Store::open(&location)?);
        let Location::File(path) = &location else {
            unreachable!()
        };
        rusqlite::Connection::open(path)?.pragma_update(None, "user_version", version)?;
        Ok(location)
    };
    let older = at("older.db", known - 1)?;
    match open_source(&older) {
        Err(e @ CopyError::SchemaVersion { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!(
                    "the source {} has schema version {} and this build's is {known}",
                    older.display(),
                    known - 1
                )) && m.contains("migrates it"),
                "{m}"
            );
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Not migrated by the refusal.
    assert_eq!(schema_version_at(&older)?, Some(known - 1));
    let newer = at("newer.db", known + 1)?;
    let refused = open_target(&newer).map(|_| ()).map_err(|e| e.to_string());
    assert!(
        refused
            .as_ref()
            .is_err_and(|m| m.starts_with("the target") && m.contains("upgrade mcp-coordinator")),
        "{refused:?}"
    );
    // A source that is not there is not created.
    let missing = Location::File(dir.path().join("missing.db"));
    assert!(matches!(
        open_source(&missing),
        Err(CopyError::NoSource { .. })
    ));
    assert!(!dir.path().join("missing.db").exists());
    // An empty PostgreSQL database is no source, and is left without a schema.
    let url = testing::fresh_database("copy_nosource");
    let empty = Location::from_arg(&url)?;
    assert!(matches!(
        open_source(&empty),
        Err(CopyError::NoSource { .. })
    ));
    assert_eq!(schema_version_at(&empty)?, None);
    // As a target it is welcome: it gets the schema.
    drop(open_target(&empty)?);
    assert_eq!(schema_version_at(&empty)?, Some(known));
    Ok(())
}
