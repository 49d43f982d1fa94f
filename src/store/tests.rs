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

mod postgres_only {
    use std::time::{Duration, Instant};

    use crate::args;
    use crate::store::{Location, Store, StoreError, testing};

    fn insert_agent(store: &Store, id: &str) -> Result<usize, StoreError> {
        store.write(|tx| {
            tx.exec(
                "INSERT INTO agents (id, name, agent_type, capabilities, endpoints, resources,
                     metadata, status, load, registered_at, last_heartbeat_ms, token_generation)
                 VALUES (?1, ?1, 'worker', '[]', '{}', '{}', '{}', 'ready', 0, 'now', 0, 0)",
                args![id],
            )
        })
    }

    /// A commit through one coordinator's store changes the data version another coordinator
    /// sees, by notification, well within a second.
    #[test]
    fn a_commit_anywhere_is_seen_everywhere_within_a_second() {
        let url = testing::fresh_database("notify");
        let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
        let a = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        let b = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        let before = a.data_version().unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        insert_agent(&b, "n1").unwrap_or_else(|e| panic!("{e}"));
        while a.data_version().unwrap_or_else(|e| panic!("{e}")) == before {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "no notification within a second"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Connections the server drops are replaced: the next write succeeds on a new one
    /// rather than failing or crashing.
    #[test]
    fn a_lost_connection_is_replaced_and_reported() {
        let url = testing::fresh_database("lost");
        let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open_with_pool(&location, 1).unwrap_or_else(|e| panic!("{e}"));
        insert_agent(&store, "l1").unwrap_or_else(|e| panic!("{e}"));
        let admin = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        let killed = admin.read(|tx| {
            tx.one(
                "SELECT CAST(COUNT(pg_terminate_backend(pid)) AS BIGINT) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name = 'mcp-coordinator' AND query NOT LIKE 'LISTEN%'",
                args![],
                |r| r.get::<i64>(0),
            )
        });
        assert!(
            killed.as_ref().is_ok_and(|n| n.is_some_and(|n| n >= 1)),
            "{killed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let again = insert_agent(&store, "l2");
        assert_eq!(
            again.map_err(|e| e.to_string()),
            Ok(1),
            "the write is retried"
        );
        let n =
            store.read(|tx| tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0)));
        assert_eq!(n.map_err(|e| e.to_string()), Ok(Some(2)));
    }

    /// Coordinators starting at once on an empty database all come up: the schema is applied
    /// once, under the migration lock.
    #[test]
    fn coordinators_starting_at_once_all_migrate() {
        let url = testing::fresh_database("migrate");
        let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let (location, barrier) = (location.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Store::open(&location)
                        .map(|s| s.schema_version().map_err(|e| e.to_string()))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for opener in openers {
            let version = opener
                .join()
                .unwrap_or_else(|_| panic!("an opener panicked"));
            assert_eq!(
                version,
                Ok(Ok(Store::known_schema_version() as i64)),
                "every opener sees the whole schema"
            );
        }
    }

    /// Read-then-write transactions of two coordinators never interleave: 2 x 200 increments of
    /// one value read and written back lose none.
    #[test]
    fn writes_of_two_coordinators_are_serialised() {
        let url = testing::fresh_database("serial");
        let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
        let first = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        insert_agent(&first, "c").unwrap_or_else(|e| panic!("{e}"));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let store = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        store
                            .write(|tx| {
                                let n = tx
                                    .one(
                                        "SELECT token_generation FROM agents WHERE id = 'c'",
                                        args![],
                                        |r| r.get::<i64>(0),
                                    )?
                                    .unwrap_or(0);
                                tx.exec(
                                    "UPDATE agents SET token_generation = ?1 WHERE id = 'c'",
                                    args![n + 1],
                                )
                            })
                            .unwrap_or_else(|e: StoreError| panic!("{e}"));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap_or_else(|_| panic!("a writer panicked"));
        }
        let n = first.read(|tx| {
            tx.one(
                "SELECT token_generation FROM agents WHERE id = 'c'",
                args![],
                |r| r.get::<i64>(0),
            )
        });
        assert_eq!(n.map_err(|e| e.to_string()), Ok(Some(400)));
    }

    /// A write that changes nothing (a claim on an empty queue) wakes nobody: no coordinator's
    /// data version moves, so idle long polls stay idle.
    #[test]
    fn a_write_that_changes_nothing_notifies_nobody() {
        let url = testing::fresh_database("quiet");
        let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
        let a = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        let b = Store::open(&location).unwrap_or_else(|e| panic!("{e}"));
        // Both listeners are up once a change of each reaches the other (a listener that
        // comes up moves its version once, for what it may have missed).
        for (from, to, id) in [(&b, &a, "q1"), (&a, &b, "q2")] {
            let before = to.data_version().unwrap_or_else(|e| panic!("{e}"));
            insert_agent(from, id).unwrap_or_else(|e| panic!("{e}"));
            let started = Instant::now();
            while to.data_version().unwrap_or_else(|e| panic!("{e}")) == before {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no notification"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (va, vb) = (a.data_version().ok(), b.data_version().ok());
        for _ in 0..20 {
            let n = b
                .write(|tx| tx.one("SELECT COUNT(*) FROM tasks", args![], |r| r.get::<i64>(0)))
                .unwrap_or_else(|e: StoreError| panic!("{e}"));
            assert_eq!(n, Some(0));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!((a.data_version().ok(), b.data_version().ok()), (va, vb));
    }

    /// A statement put off to the next round trip (`exec_later`) that fails fails its
    /// transaction: whether a query follows it or only the commit, nothing of the
    /// transaction stays, and the error names the violation. One that succeeds is seen by
    /// the statements after it.
    #[test]
    fn a_put_off_statement_that_fails_fails_its_transaction() {
        let store = testing::postgres_store("later");
        insert_agent(&store, "a1").unwrap_or_else(|e| panic!("{e}"));
        let count = |store: &Store| {
            store
                .read(|tx| tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0)))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let duplicate = "INSERT INTO agents (id, name, agent_type, capabilities, endpoints,
                 resources, metadata, status, load, registered_at, last_heartbeat_ms, token_generation)
             VALUES (?1, ?1, 'worker', '[]', '{}', '{}', '{}', 'ready', 0, 'now', 0, 0)";
        // Followed by a query.
        let followed = store.write(|tx| {
            tx.exec(
                "UPDATE agents SET token_generation = 7 WHERE id = 'a1'",
                args![],
            )?;
            tx.exec_later(duplicate, args!["a1"])?;
            tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0))
        });
        let err = followed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("agents_pkey"), "{err}");
        // Followed only by the commit.
        let at_commit = store.write(|tx| {
            tx.exec_later(duplicate, args!["a2"])?;
            tx.exec_later(duplicate, args!["a1"])
        });
        let err = at_commit.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("agents_pkey"), "{err}");
        assert_eq!(
            count(&store),
            Some(1),
            "nothing of either transaction stayed"
        );
        let generation = store.read(|tx| {
            tx.one(
                "SELECT token_generation FROM agents WHERE id = 'a1'",
                args![],
                |r| r.get::<i64>(0),
            )
        });
        assert_eq!(generation.map_err(|e| e.to_string()), Ok(Some(0)));
        // One that succeeds comes before what follows it, and commits.
        let seen = store
            .write(|tx| {
                tx.exec_later(duplicate, args!["a3"])?;
                tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0))
            })
            .unwrap_or_else(|e: StoreError| panic!("{e}"));
        assert_eq!(seen, Some(2));
        assert_eq!(count(&store), Some(2));
        // The pooled connection is fine after all of it.
        assert!(insert_agent(&store, "a4").is_ok());
    }

    /// Put-off one-row inserts (`exec_later_row`) go out merged, a statement per table, and
    /// land as sent: every row with its own values (a NULL, a constant, a value used twice),
    /// rows of one table in order, a statement that is not an insert where it was. A
    /// duplicate among them fails the whole transaction.
    #[test]
    fn put_off_rows_go_out_merged_and_land_as_sent() {
        let store = testing::postgres_store("later_rows");
        const AGENT: &str = "INSERT INTO agents (id, name, agent_type, capabilities, endpoints,
                 resources, metadata, status, load, registered_at, last_heartbeat_ms, token_generation)
             VALUES (?1, ?2, 'worker', '[]', '{}', '{}', '{}', 'ready', 0, 'now', ?3, ?3)";
        const NOTE: &str = "INSERT INTO kv (key, value) VALUES (?1, ?2)";
        store
            .write(|tx| {
                tx.exec(
                    "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)",
                    args![],
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let seen = store
            .write(|tx| {
                for i in 0..150_i64 {
                    let id = format!("r{i:03}");
                    tx.exec_later_row(AGENT, args![id, format!("n{i}"), i])?;
                    let value: Option<String> = (i % 2 == 0).then(|| format!("v{i}"));
                    tx.exec_later_row(NOTE, args![id, value])?;
                    if i == 70 {
                        tx.exec_later("UPDATE agents SET load = 0.5 WHERE id = 'r000'", args![])?;
                    }
                }
                tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0))
            })
            .unwrap_or_else(|e: StoreError| panic!("{e}"));
        assert_eq!(seen, Some(150));
        let rows = store
            .read(|tx| {
                tx.all(
                    "SELECT a.id, a.name, a.last_heartbeat_ms, a.token_generation, a.load, k.value
                     FROM agents a JOIN kv k ON k.key = a.id ORDER BY a.id",
                    args![],
                    |r| {
                        Ok((
                            r.get::<String>(0)?,
                            r.get::<String>(1)?,
                            r.get::<i64>(2)?,
                            r.get::<i64>(3)?,
                            r.get::<f64>(4)?,
                            r.get::<Option<String>>(5)?,
                        ))
                    },
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 150);
        for (i, (id, name, beat, generation, load, value)) in rows.into_iter().enumerate() {
            let i = i as i64;
            assert_eq!(id, format!("r{i:03}"));
            assert_eq!(name, format!("n{i}"));
            assert_eq!((beat, generation), (i, i));
            assert_eq!(load, if i == 0 { 0.5 } else { 0.0 }, "{id}");
            assert_eq!(value, (i % 2 == 0).then(|| format!("v{i}")), "{id}");
        }
        let duplicate = store.write(|tx| {
            tx.exec_later_row(NOTE, args!["new1", "x"])?;
            tx.exec_later_row(NOTE, args!["r001", "x"])?;
            tx.exec_later_row(NOTE, args!["new2", "x"])
        });
        let err = duplicate.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("kv_pkey"), "{err}");
        let kept = store.read(|tx| tx.one("SELECT COUNT(*) FROM kv", args![], |r| r.get::<i64>(0)));
        assert_eq!(kept.map_err(|e| e.to_string()), Ok(Some(150)));
    }

    /// A put-off statement that fails inside a savepoint fails what ran under the savepoint,
    /// not the transaction: it is undone with the savepoint and the transaction commits.
    #[test]
    fn a_put_off_statement_that_fails_under_a_savepoint_is_undone_with_it() {
        use crate::store::pipeline::within_savepoint;
        let store = testing::postgres_store("later_savepoint");
        let duplicate = "INSERT INTO agents (id, name, agent_type, capabilities, endpoints,
                 resources, metadata, status, load, registered_at, last_heartbeat_ms, token_generation)
             VALUES (?1, ?1, 'worker', '[]', '{}', '{}', '{}', 'ready', 0, 'now', 0, 0)";
        let inner = store
            .write(|tx| {
                tx.exec(duplicate, args!["s1"])?;
                let inner = within_savepoint(tx, "later_test", |tx| {
                    tx.exec_later(duplicate, args!["s2"])?;
                    tx.exec_later(duplicate, args!["s1"])
                })?;
                tx.exec(duplicate, args!["s3"])?;
                Ok::<_, StoreError>(inner.map_err(|e| e.to_string()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            inner.as_ref().is_err_and(|e| e.contains("agents_pkey")),
            "{inner:?}"
        );
        let ids = store.read(|tx| {
            tx.all("SELECT id FROM agents ORDER BY id", args![], |r| {
                r.get::<String>(0)
            })
        });
        assert_eq!(
            ids.map_err(|e| e.to_string()),
            Ok(vec!["s1".to_string(), "s3".to_string()])
        );
    }

    /// The audit head a write transaction remembers is forgotten when a savepoint rolls back
    /// the event it recorded: the next event links to the one that stayed, no sequence
    /// number is skipped.
    #[test]
    fn the_remembered_audit_head_follows_a_savepoint_rollback() {
        use crate::store::audit::{self, EventRow};
        use crate::store::pipeline::within_savepoint;
        let store = testing::postgres_store("memo");
        let row = |seq: i64, prev: &str| EventRow {
            seq,
            ts: format!("2026-12-07T00:00:{seq:02}.000Z"),
            actor: "system".into(),
            action: "test".into(),
            subject: "memo".into(),
            outcome: "ok".into(),
            detail: "{}".into(),
            prev_hash: prev.into(),
            hash: format!("h{seq}"),
        };
        store
            .write(|tx| {
                assert_eq!(audit::head(tx)?, None);
                audit::insert(tx, &row(1, "genesis"))?;
                assert_eq!(audit::head(tx)?.map(|h| h.seq), Some(1));
                let undone = within_savepoint(tx, "memo_test", |tx| {
                    audit::insert(tx, &row(2, "h1"))?;
                    assert_eq!(audit::head(tx)?.map(|h| h.seq), Some(2));
                    Err::<(), StoreError>(StoreError::Postgres {
                        message: "undone on purpose".into(),
                    })
                })?;
                assert!(undone.is_err());
                let head = audit::head(tx)?;
                assert_eq!(
                    head.as_ref().map(|h| (h.seq, h.hash.as_str())),
                    Some((1, "h1"))
                );
                audit::insert(tx, &row(2, "h1"))
            })
            .unwrap_or_else(|e: StoreError| panic!("{e}"));
        let seqs = store.read(|tx| {
            tx.all("SELECT seq FROM audit_events ORDER BY seq", args![], |r| {
                r.get::<i64>(0)
            })
        });
        assert_eq!(seqs.map_err(|e| e.to_string()), Ok(vec![1, 2]));
        // A new transaction reads the head afresh.
        let head = store
            .write(audit::head)
            .unwrap_or_else(|e: StoreError| panic!("{e}"));
        assert_eq!(head.map(|h| h.seq), Some(2));
    }

    /// A database reached through the server's Unix socket directory (a URL whose host is a
    /// path) works as one reached over TCP.
    #[test]
    fn a_unix_socket_url_connects() {
        let tcp = testing::fresh_database("unix");
        let admin = Store::open(&Location::from_arg(&tcp).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let dirs = admin
            .read(|tx| {
                tx.one(
                    "SELECT CAST(current_setting('unix_socket_directories') AS TEXT)",
                    args![],
                    |r| r.get::<String>(0),
                )
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        let Some(dir) = dirs.split(',').map(str::trim).find(|d| d.starts_with('/')) else {
            panic!("the test cluster listens on no Unix socket directory ({dirs:?})");
        };
        let mut url = url::Url::parse(&tcp).unwrap_or_else(|e| panic!("{e}"));
        let encoded: String = url::form_urlencoded::byte_serialize(dir.as_bytes()).collect();
        url.set_host(Some(&encoded))
            .unwrap_or_else(|e| panic!("{e}"));
        let location = Location::from_arg(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&location).unwrap_or_else(|e| panic!("{url}: {e}"));
        let over = store.read(|tx| {
            tx.one(
                "SELECT COALESCE(CAST(inet_server_addr() AS TEXT), 'a Unix socket')",
                args![],
                |r| r.get::<String>(0),
            )
        });
        assert_eq!(
            over.map_err(|e| e.to_string()),
            Ok(Some("a Unix socket".to_string()))
        );
        insert_agent(&store, "u1").unwrap_or_else(|e| panic!("{e}"));
        let n =
            admin.read(|tx| tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0)));
        assert_eq!(n.map_err(|e| e.to_string()), Ok(Some(1)));
    }

    /// After a thousand commits the store vacuums the queue table itself (its claimed tasks'
    /// index entries would otherwise slow every claim until autovacuum comes by).
    #[test]
    fn the_queue_is_vacuumed_after_a_thousand_commits() {
        let store = testing::postgres_store("vacuum");
        let vacuums = |store: &Store| {
            store
                .read(|tx| {
                    tx.one(
                        "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'tasks'",
                        args![],
                        |r| r.get::<i64>(0),
                    )
                })
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or(0)
        };
        assert_eq!(vacuums(&store), 0);
        // Commits are counted as their notifications arrive, from when the listening
        // connection is up: on a loaded machine that may be some commits in, so they go on
        // (100 at a time) until the vacuum comes, within bounds no healthy run nears.
        let started = Instant::now();
        let mut commits = 0;
        while vacuums(&store) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60) && commits < 5_000,
                "no vacuum of tasks within {:?} and {commits} commits",
                started.elapsed()
            );
            if commits < 1_000 || started.elapsed() > Duration::from_secs(10) {
                for _ in 0..100 {
                    insert_agent(&store, &format!("v{commits}")).unwrap_or_else(|e| panic!("{e}"));
                    commits += 1;
                }
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
