//! Tests of the store's SQLite handling: opening, migrations, writes that fail, lock waits.

use std::time::Duration;

use rusqlite_migration::Migrations;

use super::*;

#[test]
fn migrations_are_valid() {
    assert!(Migrations::from_slice(MIGRATIONS).validate().is_ok());
}

#[test]
fn open_file_sets_wal_and_schema() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let loc = Location::File(dir.path().join("sub/c.db"));
    let store = Store::open(&loc)?;
    let mode: String = store
        .lock()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    assert_eq!(mode, "wal");
    assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
    let fk: i64 = store
        .lock()
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    assert_eq!(fk, 1);
    let checkpoint: i64 = store
        .lock()
        .pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))?;
    assert_eq!(checkpoint, WAL_AUTOCHECKPOINT);
    // Opening again is a no-op migration.
    let again = Store::open(&loc)?;
    assert_eq!(again.schema_version()?, MIGRATIONS.len() as i64);
    Ok(())
}

#[test]
fn processes_opening_a_fresh_file_at_once_all_migrate() -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..20 {
        let dir = tempfile::tempdir()?;
        let loc = Location::File(dir.path().join("c.db"));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (loc, barrier) = (loc.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&loc).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for opener in openers {
            let opened = opener.join().map_err(|_| "an opener panicked")?;
            assert!(opened.is_ok(), "{opened:?}");
        }
    }
    Ok(())
}

/// A write whose closure fails or panics leaves nothing behind, and the next one runs.
#[test]
fn a_failed_or_panicking_write_leaves_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Location::File(dir.path().join("c.db")))?;
    store.lock().execute_batch("CREATE TABLE t (x INTEGER)")?;
    let failed: Result<(), Box<dyn std::error::Error>> = store.write(|tx| {
        tx.conn().execute("INSERT INTO t VALUES (1)", [])?;
        Err("refused".into())
    });
    assert!(failed.is_err());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.write(|tx| -> Result<(), StoreError> {
            tx.conn()
                .execute("INSERT INTO t VALUES (2)", [])
                .map_err(StoreError::from_sqlite)?;
            panic!("a bug in the closure")
        })
    }));
    assert!(panicked.is_err());
    store.write(|tx| -> Result<(), StoreError> {
        tx.conn()
            .execute("INSERT INTO t VALUES (3)", [])
            .map_err(StoreError::from_sqlite)?;
        Ok(())
    })?;
    let rows: Vec<i64> = store
        .lock()
        .prepare("SELECT x FROM t")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(rows, [3]);
    Ok(())
}

/// While another process holds the write lock, a write waits no longer than its budget,
/// says how long it waited, and leaves the connection to the process's other threads
/// meanwhile; background work (no budget) fails at once.
#[test]
fn a_write_waits_one_budget_with_the_connection_free() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.db");
    let store = Store::open(&Location::File(path.clone()))?;
    store.lock().execute_batch("CREATE TABLE t (x INTEGER)")?;
    let holder = Connection::open(&path)?;
    holder.execute_batch("BEGIN EXCLUSIVE")?;
    let insert = |store: &Store| {
        store.write(|tx| -> Result<(), StoreError> {
            tx.conn().execute("INSERT INTO t VALUES (1)", [])?;
            Ok(())
        })
    };

    let started = std::time::Instant::now();
    let reads = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            // Reads through the same connection go on while the write waits.
            std::thread::sleep(Duration::from_millis(100));
            let read = std::time::Instant::now();
            let n: i64 = store
                .lock()
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap_or(-1);
            (n, read.elapsed())
        });
        let budget = budget::Budget::new(Duration::from_millis(600));
        let written = budget::sync_scope(budget, || insert(&store));
        (written, reader.join())
    });
    let took = started.elapsed();
    let (written, read) = reads;
    let (n, read_took) = read.map_err(|_| "the reader panicked")?;
    assert_eq!(n, 0);
    assert!(read_took < Duration::from_millis(100), "{read_took:?}");
    match written {
        Err(StoreError::Busy { waited, timeout }) => {
            assert_eq!(timeout, Duration::from_millis(600));
            assert!(waited >= Duration::from_millis(550), "{waited:?}");
        }
        other => return Err(format!("expected busy, got {other:?}").into()),
    }
    assert!(
        (Duration::from_millis(550)..Duration::from_millis(900)).contains(&took),
        "{took:?}"
    );
    let message = insert_error_message(budget::sync_scope(
        budget::Budget::new(Duration::from_millis(200)),
        || insert(&store),
    ));
    assert_eq!(
        message,
        "database is busy: waited 0.2 s for another process's write lock (busy timeout 0.2 s)"
    );

    let started = std::time::Instant::now();
    let skipped = budget::sync_scope(budget::Budget::none(), || insert(&store));
    assert!(
        skipped.as_ref().is_err_and(StoreError::is_busy),
        "{skipped:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(50));

    holder.execute_batch("ROLLBACK")?;
    budget::sync_scope(budget::Budget::none(), || insert(&store))?;
    Ok(())
}

fn insert_error_message(r: Result<(), StoreError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

/// A full disk (here the database's page limit) is the retryable `Full`, naming the file.
#[test]
fn a_full_database_is_retryable_and_named() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.db");
    let store = Store::open(&Location::File(path.clone()))?;
    store.lock().execute_batch("CREATE TABLE t (x BLOB)")?;
    let pages: i64 = store
        .lock()
        .query_row("PRAGMA page_count", [], |r| r.get(0))?;
    store
        .lock()
        .pragma_update(None, "max_page_count", pages + 2)?;
    let full = store.write(|tx| -> Result<(), StoreError> {
        tx.conn()
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])?;
        Ok(())
    });
    let Err(e) = full else {
        return Err("a write past the page limit succeeded".into());
    };
    assert!(matches!(e, StoreError::Full { .. }), "{e:?}");
    assert!(e.retryable());
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    // Nothing half-written, and a small write still fits.
    let rows: i64 = store
        .lock()
        .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?;
    assert_eq!(rows, 0);
    Ok(())
}

/// 0011 rebuilds `approvals` (for the `console` channel): rows, the questions that
/// reference them, the final-decision triggers and the foreign key all survive it.
#[test]
fn migration_0011_keeps_approvals_questions_and_their_rules()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.db");
    let mut conn = Connection::open(&path)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Migrations::from_slice(&MIGRATIONS[..10]).to_latest(&mut conn)?;
    let row = |id: &str, state: &str, decided: Option<&str>| {
        conn.execute(
            "INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, \
                 requested_by, created_at, expires_at, decide_with, state, decided_by, \
                 decided_via, decided_at) VALUES (?1, 'generic', '', 's', '{}', 'h', 'low', \
                 'client:t', '2026-01-01T00:00:00Z', '2099-01-01T00:00:00Z', 'elicitation', \
                 ?2, ?3, ?4, ?3)",
            rusqlite::params![id, state, decided, decided.map(|_| "cli")],
        )
    };
    row("a1", "pending", None)?;
    row("a2", "approved", Some("2026-01-02T00:00:00Z"))?;
    conn.execute(
        "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES ('n1', 'a1', 'x')",
        [],
    )?;
    drop(conn);

    let store = Store::open(&Location::File(path))?;
    let conn = store.lock();
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM approvals", [], |r| r.get(0))?;
    assert_eq!(count, 2);
    let via: String = conn.query_row(
        "SELECT decided_via FROM approvals WHERE id = 'a2'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(via, "cli");
    // The console channel is now accepted...
    conn.execute(
        "UPDATE approvals SET state = 'approved', decided_by = 'overseer:x', \
             decided_via = 'console', decided_at = 'y' WHERE id = 'a1'",
        [],
    )?;
    // ...an unknown one still is not, decisions stay final, and nothing is deleted.
    let unknown = conn.execute(
        "UPDATE approvals SET decided_via = 'carrier-pigeon' WHERE id = 'a2'",
        [],
    );
    assert!(unknown.is_err());
    let refinal = conn.execute(
        "UPDATE approvals SET state = 'rejected' WHERE id = 'a2'",
        [],
    );
    assert!(
        refinal.is_err_and(|e| e.to_string().contains("final")),
        "decisions are final"
    );
    assert!(
        conn.execute("DELETE FROM approvals WHERE id = 'a2'", [])
            .is_err()
    );
    // The question still points at its approval, and the foreign key still holds.
    let q: String = conn.query_row(
        "SELECT approval_id FROM approval_questions WHERE nonce = 'n1'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(q, "a1");
    let orphan = conn.execute(
        "INSERT INTO approval_questions (nonce, approval_id, asked_at) VALUES ('n2', 'nope', 'x')",
        [],
    );
    assert!(orphan.is_err(), "the foreign key to approvals holds");
    Ok(())
}

#[test]
fn newer_schema_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let loc = Location::File(dir.path().join("c.db"));
    drop(Store::open(&loc)?);
    let conn = Connection::open(dir.path().join("c.db"))?;
    conn.pragma_update(None, "user_version", 99)?;
    drop(conn);
    match Store::open(&loc) {
        Err(StoreError::TooNew { found: 99, .. }) => Ok(()),
        Err(other) => Err(format!("wrong error: {other}").into()),
        Ok(_) => Err("a newer schema was accepted".into()),
    }
}

mod postgres {
    use crate::args;
    use crate::store::testing;

    /// The same statements on both backends: typed values, NULLs, rows read back by type.
    #[test]
    fn one_surface_runs_the_same_statements_on_both_backends() {
        for (name, store) in testing::both("surface") {
            let got = store.write(|tx| {
                tx.exec(
                    "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources,
                         metadata, status, load, registered_at, last_heartbeat_ms,
                         token_generation, deregistered_at)
                     VALUES (?1, ?2, 'worker', '[]', '{}', '{}', '{}', 'ready', ?3, 'now', ?4, 0, ?5)",
                    args![
                        "a1",
                        "w1",
                        0.5f64,
                        7i64,
                        None::<String>
                    ],
                )?;
                tx.one(
                    "SELECT name, load, last_heartbeat_ms, deregistered_at FROM agents WHERE id = ?1",
                    args!["a1"],
                    |r| {
                        Ok((
                            r.get::<String>(0)?,
                            r.get::<f64>(1)?,
                            r.get::<i64>(2)?,
                            r.get::<Option<String>>(3)?,
                        ))
                    },
                )
            });
            assert_eq!(
                got.unwrap_or_else(|e: crate::store::StoreError| panic!("{name}: {e}")),
                Some(("w1".to_string(), 0.5, 7, None)),
                "{name}"
            );
            let dup = store.write(|tx| {
                tx.exec(
                    "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources,
                         metadata, status, load, registered_at, last_heartbeat_ms,
                         token_generation)
                     VALUES ('a1', 'w1', 'worker', '[]', '{}', '{}', '{}', 'ready', 0, 'now', 0, 0)",
                    args![],
                )
            });
            assert!(
                dup.as_ref().is_err_and(|e| e.is_conflict()),
                "{name}: {dup:?}"
            );
        }
    }
}
