//! Tests of the store on PostgreSQL alone: notifications across coordinators, lost
//! connections, concurrent migration and writes, statements put off and merged, savepoints,
//! Unix sockets, the queue's vacuum.

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
    let n = store.read(|tx| tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0)));
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
    let n = admin.read(|tx| tx.one("SELECT COUNT(*) FROM agents", args![], |r| r.get::<i64>(0)));
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
