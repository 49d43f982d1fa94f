//! Tests of `task.rs`: the queue's statements on both backends (claims in dispatch order, by
//! capability, never twice; each step of a task; stats and purging), and on SQLite the plans
//! and prepared statements the claim relies on.

use std::collections::HashMap;

use rusqlite::StatementStatus;

use super::*;
use crate::agent::status::{AgentStatus, AgentType};
use crate::store::agent::{self as agent_sql, AgentRow};
use crate::store::{Location, Store, testing};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn row(id: &str, priority: i64, caps: &str, target: Option<&str>) -> TaskRow {
    TaskRow {
        id: id.into(),
        kind: "shell.run".into(),
        params: "{}".into(),
        capabilities: caps.into(),
        target_agent_id: target.map(Into::into),
        priority,
        status: TaskStatus::Queued,
        timeout_ms: 60_000,
        max_retries: 3,
        attempts: 0,
        idempotency_key: None,
        not_before_ms: 0,
        created_ms: 1,
        updated_ms: 1,
        submitted_by: "test".into(),
        leased_by: None,
        lease_expires_ms: None,
        last_agent_id: None,
        progress: None,
        message: None,
        result: None,
        last_error: None,
        finished_ms: None,
    }
}

fn agent(id: &str, caps: &str) -> AgentRow {
    AgentRow {
        id: id.into(),
        name: format!("name-{id}"),
        agent_type: AgentType::Worker,
        capabilities: caps.into(),
        endpoints: "{}".into(),
        resources: "{}".into(),
        metadata: "{}".into(),
        status: AgentStatus::Ready,
        load: 0.0,
        registered_at: "now".into(),
        last_heartbeat_ms: 0,
        token_generation: 1,
        deregistered_at: None,
    }
}

fn ids(rows: &[TaskRow]) -> Vec<&str> {
    rows.iter().map(|t| t.id.as_str()).collect()
}

/// What the queue's claim does (`task::claim`), reduced to its SQL: in one write
/// transaction, the tasks aimed at the agent, then untargeted ones in dispatch order,
/// each leased only if it is still queued.
fn claim(
    store: &Store,
    agent_id: &str,
    caps: &str,
    now: i64,
    max: i64,
) -> Result<Vec<String>, StoreError> {
    store.write(|tx| {
        let mut got = Vec::new();
        let mut candidates = targeted_candidates(tx, agent_id, caps, now, max)?;
        if (candidates.len() as i64) < max {
            let rest = max - candidates.len() as i64;
            candidates.extend(open_candidates(tx, caps, now, None, rest)?);
        }
        for t in candidates {
            if lease(tx, &t.id, agent_id, now, now + t.timeout_ms)? {
                got.push(t.id);
            }
        }
        Ok(got)
    })
}

/// Submitted tasks are claimed in dispatch order (aimed at the agent first, then priority,
/// age and id), only by agents that have every capability they need, and never twice,
/// also when agents on two handles of the database claim at the same time.
#[test]
fn claims_follow_dispatch_order_and_capabilities_and_never_repeat() -> TestResult {
    for (backend, store) in testing::both("task_claims") {
        store.write(|tx| -> Result<(), StoreError> {
            agent_sql::upsert(tx, &agent("agt_a", r#"["linux"]"#))?;
            agent_sql::upsert(tx, &agent("agt_b", r#"["linux","gpu"]"#))?;
            let t = |id: &str, p: i64, created: i64, caps: &str, target| {
                let mut r = row(id, p, caps, target);
                r.created_ms = created;
                r.updated_ms = created;
                insert(tx, &r)
            };
            t("tsk_1", 1, 10, r#"["linux"]"#, None)?;
            t("tsk_2", 3, 20, "[]", None)?;
            t("tsk_3", 1, 10, "[]", None)?; // ties tsk_1 on priority and age: after it by id
            t("tsk_4", 2, 5, r#"["gpu"]"#, None)?;
            t("tsk_5", 0, 1, r#"["linux","gpu"]"#, None)?;
            t("tsk_6", 0, 99, "[]", Some("agt_a"))?; // aimed at agt_a: first for it
            t("tsk_7", 3, 1, r#"["arm"]"#, None)?; // nobody can run it
            let mut future = row("tsk_8", 3, "[]", None);
            future.not_before_ms = 1_000;
            insert(tx, &future)
        })?;
        let a = claim(&store, "agt_a", r#"["linux"]"#, 100, 3)?;
        assert_eq!(a, ["tsk_6", "tsk_2", "tsk_1"], "{backend}: agt_a's claim");
        let b = claim(&store, "agt_b", r#"["linux","gpu"]"#, 100, 10)?;
        assert_eq!(
            b,
            ["tsk_4", "tsk_3", "tsk_5"],
            "{backend}: agt_b's claim skips what agt_a holds"
        );
        for (agent_id, caps) in [("agt_a", r#"["linux"]"#), ("agt_b", r#"["linux","gpu"]"#)] {
            let again = claim(&store, agent_id, caps, 100, 10)?;
            assert!(
                again.is_empty(),
                "{backend}: {agent_id} claimed {again:?} again"
            );
        }
        // Once its time comes, the deferred task is claimable.
        assert_eq!(
            claim(&store, "agt_b", "[]", 1_000, 10)?,
            ["tsk_8"],
            "{backend}"
        );
        let leased = store.read(|tx| held_by(tx, "agt_a"))?;
        let mut leased = ids(&leased);
        leased.sort_unstable();
        assert_eq!(
            leased,
            ["tsk_1", "tsk_2", "tsk_6"],
            "{backend}: held by agt_a"
        );
        let left = store.read(|tx| {
            list(
                tx,
                &ListFilter {
                    status: Some(TaskStatus::Queued),
                    ..Default::default()
                },
                50,
            )
        })?;
        assert_eq!(
            ids(&left),
            ["tsk_7"],
            "{backend}: only the arm task is left"
        );
    }
    Ok(())
}

/// Agents claiming at once, through handles of their own (on PostgreSQL, separate pools as
/// separate coordinators have), lease every task exactly once.
#[test]
fn concurrent_claims_never_hand_one_task_to_two_agents() -> TestResult {
    const TASKS: usize = 120;
    const AGENTS: usize = 4;
    for (backend, store) in testing::both("task_claims_race") {
        store.write(|tx| -> Result<(), StoreError> {
            for a in 0..AGENTS {
                agent_sql::upsert(tx, &agent(&format!("agt_{a}"), "[]"))?;
            }
            for i in 0..TASKS {
                let mut r = row(&format!("tsk_{i:04}"), (i % 4) as i64, "[]", None);
                r.created_ms = i as i64;
                insert(tx, &r)?;
            }
            Ok(())
        })?;
        let handles: Vec<Store> = (0..AGENTS)
            .map(|_| {
                if store.is_postgres() {
                    Store::open_with_pool(store.location(), 2)
                } else {
                    Ok(store.clone())
                }
            })
            .collect::<Result<_, _>>()?;
        let claimed: Vec<Vec<String>> = std::thread::scope(|s| {
            let workers: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(a, h)| {
                    s.spawn(move || -> Result<Vec<String>, StoreError> {
                        let me = format!("agt_{a}");
                        let mut mine = Vec::new();
                        loop {
                            let got = claim(h, &me, "[]", 1_000, 2)?;
                            if got.is_empty() {
                                return Ok(mine);
                            }
                            mine.extend(got);
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| panic!("a claimer panicked")))
                .collect::<Result<_, _>>()
        })?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (a, got) in claimed.iter().enumerate() {
            for id in got {
                if let Some(other) = seen.insert(id, a) {
                    panic!("{backend}: {id} claimed by agt_{other} and agt_{a}");
                }
            }
        }
        assert_eq!(seen.len(), TASKS, "{backend}: every task claimed once");
        for (a, got) in claimed.iter().enumerate() {
            let held = store.read(|tx| held_by(tx, &format!("agt_{a}")))?;
            assert_eq!(
                held.len(),
                got.len(),
                "{backend}: agt_{a} holds what it claimed"
            );
            assert!(
                held.iter().all(|t| t.attempts == 1),
                "{backend}: one attempt each"
            );
        }
    }
    Ok(())
}

/// Paging through open candidates resumes after the last row seen, in dispatch order;
/// targeted candidates are only those aimed at the agent, and `not_before` holds a task
/// back.
#[test]
fn candidates_page_in_dispatch_order() -> TestResult {
    for (backend, store) in testing::both("task_candidates") {
        store.write(|tx| -> Result<(), StoreError> {
            agent_sql::upsert(tx, &agent("agt_1", r#"["linux"]"#))?;
            insert(tx, &row("tsk_1", 2, r#"["linux"]"#, None))?;
            insert(tx, &row("tsk_2", 1, r#"["gpu"]"#, None))?;
            insert(tx, &row("tsk_3", 3, "[]", Some("agt_1")))?;
            insert(tx, &row("tsk_4", 2, "[]", None))?;
            let mut later = row("tsk_5", 3, "[]", None);
            later.not_before_ms = 50;
            insert(tx, &later)
        })?;
        store.read(|tx| -> TestResult {
            let caps = r#"["linux"]"#;
            let open = open_candidates(tx, caps, 10, None, 10)?;
            assert_eq!(ids(&open), ["tsk_1", "tsk_4"], "{backend}");
            let first = open_candidates(tx, caps, 10, None, 1)?;
            assert_eq!(ids(&first), ["tsk_1"], "{backend}");
            let next = open_candidates(tx, caps, 10, Some((2, 1, "tsk_1")), 5)?;
            assert_eq!(ids(&next), ["tsk_4"], "{backend}");
            let after = open_candidates(tx, caps, 10, Some((2, 1, "tsk_4")), 5)?;
            assert!(
                after.is_empty(),
                "{backend}: the gpu task is not for a linux agent"
            );
            let open = open_candidates(tx, r#"["gpu","linux"]"#, 60, None, 10)?;
            assert_eq!(
                ids(&open),
                ["tsk_5", "tsk_1", "tsk_4", "tsk_2"],
                "{backend}"
            );
            let aimed = targeted_candidates(tx, "agt_1", caps, 10, 5)?;
            assert_eq!(ids(&aimed), ["tsk_3"], "{backend}");
            assert!(targeted_candidates(tx, "agt_2", caps, 10, 5)?.is_empty());
            assert_eq!(targeting(tx, "agt_1")?, ["tsk_3"], "{backend}");
            Ok(())
        })?;
    }
    Ok(())
}

/// A task's steps: lease, progress, requeue (with and without its target and refund),
/// finish; then the sweeper's, the stats' and the purge's views of it.
#[test]
fn a_task_moves_through_its_statuses() -> TestResult {
    for (backend, store) in testing::both("task_steps") {
        store.write(|tx| -> Result<(), StoreError> {
            agent_sql::upsert(tx, &agent("agt_1", "[]"))?;
            let mut keyed = row("tsk_1", 2, "[]", Some("agt_1"));
            keyed.idempotency_key = Some("k1".into());
            insert(tx, &keyed)?;
            insert(tx, &row("tsk_2", 1, "[]", None))
        })?;
        let dup = store.write(|tx| insert(tx, &row("tsk_1", 1, "[]", None)));
        assert!(
            matches!(dup, Err(StoreError::Conflict { .. })),
            "{backend}: {dup:?}"
        );
        let mut keyed = row("tsk_9", 1, "[]", None);
        keyed.idempotency_key = Some("k1".into());
        let dup = store.write(|tx| insert(tx, &keyed));
        assert!(
            matches!(dup, Err(StoreError::Conflict { .. })),
            "{backend}: {dup:?}"
        );
        store.write(|tx| -> TestResult {
            let by_key = by_idempotency_key(tx, "k1")?.map(|t| t.id);
            assert_eq!(by_key.as_deref(), Some("tsk_1"), "{backend}");
            assert!(lease(tx, "tsk_1", "agt_1", 100, 200)?, "{backend}");
            assert!(
                !lease(tx, "tsk_1", "agt_1", 100, 200)?,
                "{backend}: leased twice"
            );
            progress(tx, "tsk_1", Some(0.5), Some("half"), 150)?;
            let t = get(tx, "tsk_1")?.ok_or("tsk_1 is gone")?;
            assert_eq!(t.status, TaskStatus::Running, "{backend}");
            assert_eq!(t.progress, Some(0.5), "{backend}");
            assert_eq!(t.message.as_deref(), Some("half"), "{backend}");
            assert_eq!(t.lease_expires_ms, Some(150 + 60_000), "{backend}");
            assert_eq!(t.leased_by.as_deref(), Some("agt_1"), "{backend}");
            assert_eq!(t.attempts, 1, "{backend}");
            assert_eq!(ids(&expired_leases(tx, 60_151)?), ["tsk_1"], "{backend}");
            assert!(expired_leases(tx, 60_150)?.is_empty(), "{backend}");
            // Requeued keeping its target, the attempt refunded.
            requeue(tx, "tsk_1", 300, Some("agent left"), true, false, 160)?;
            let t = get(tx, "tsk_1")?.ok_or("tsk_1 is gone")?;
            assert_eq!(t.status, TaskStatus::Queued, "{backend}");
            assert_eq!(t.attempts, 0, "{backend}");
            assert_eq!(t.target_agent_id.as_deref(), Some("agt_1"), "{backend}");
            assert_eq!(t.not_before_ms, 300, "{backend}");
            assert_eq!(t.last_error.as_deref(), Some("agent left"), "{backend}");
            assert_eq!(t.leased_by, None, "{backend}");
            // Leased again, then requeued without the target, the attempt counted.
            assert!(lease(tx, "tsk_1", "agt_1", 300, 400)?, "{backend}");
            requeue(tx, "tsk_1", 500, None, false, true, 310)?;
            let t = get(tx, "tsk_1")?.ok_or("tsk_1 is gone")?;
            assert_eq!(t.attempts, 1, "{backend}");
            assert_eq!(t.target_agent_id, None, "{backend}");
            assert_eq!(t.last_error.as_deref(), Some("agent left"), "{backend}");
            reset_attempts(tx, "tsk_1")?;
            assert!(lease(tx, "tsk_1", "agt_1", 500, 600)?, "{backend}");
            finish(tx, "tsk_1", TaskStatus::Completed, Some("{}"), None, 700)?;
            let t = get(tx, "tsk_1")?.ok_or("tsk_1 is gone")?;
            assert_eq!(t.status, TaskStatus::Completed, "{backend}");
            assert_eq!(t.progress, Some(1.0), "{backend}");
            assert_eq!(t.finished_ms, Some(700), "{backend}");
            assert_eq!(t.leased_by, None, "{backend}");
            assert_eq!(t.attempts, 1, "{backend}");
            assert!(held_by(tx, "agt_1")?.is_empty(), "{backend}");
            Ok(())
        })?;
        store.read(|tx| -> TestResult {
            let mut counts = counts(tx)?;
            counts.sort_by_key(|(s, p, _)| (s.as_str(), *p));
            assert_eq!(
                counts,
                [(TaskStatus::Completed, 2, 1), (TaskStatus::Queued, 1, 1)],
                "{backend}"
            );
            assert_eq!(oldest_queued_ms(tx)?, Some(1), "{backend}");
            assert_eq!(
                finished_since(tx, 700)?,
                [(TaskStatus::Completed, 1)],
                "{backend}"
            );
            assert!(finished_since(tx, 701)?.is_empty(), "{backend}");
            let done = list(
                tx,
                &ListFilter {
                    status: Some(TaskStatus::Completed),
                    agent_id: Some("agt_1"),
                    kind: Some("shell.run"),
                    priority: Some(2),
                    ..Default::default()
                },
                10,
            )?;
            assert_eq!(ids(&done), ["tsk_1"], "{backend}");
            let all = list(tx, &ListFilter::default(), 10)?;
            assert_eq!(ids(&all), ["tsk_1", "tsk_2"], "{backend}: newest first");
            let page = list(
                tx,
                &ListFilter {
                    before: Some((700, "tsk_1")),
                    ..Default::default()
                },
                10,
            )?;
            assert_eq!(ids(&page), ["tsk_2"], "{backend}: the next page");
            Ok(())
        })?;
        let purged = store.write(|tx| purge(tx, &[TaskStatus::Failed], 1_000))?;
        assert_eq!(purged, 0, "{backend}: no failed task");
        let purged = store.write(|tx| purge(tx, &[TaskStatus::Completed], 700))?;
        assert_eq!(purged, 0, "{backend}: finished at, not before, 700");
        let purged =
            store.write(|tx| purge(tx, &[TaskStatus::Dead, TaskStatus::Completed], 701))?;
        assert_eq!(purged, 1, "{backend}");
        let left = store.read(|tx| list(tx, &ListFilter::default(), 10))?;
        assert_eq!(ids(&left), ["tsk_2"], "{backend}");
        assert_eq!(store.read(oldest_queued_ms)?, Some(1), "{backend}");
    }
    Ok(())
}

/// A status this build does not know is an error naming the column, not a guess.
#[test]
fn an_unknown_status_is_unreadable() -> TestResult {
    for (backend, store) in testing::both("task_unreadable") {
        store.write(|tx| insert(tx, &row("tsk_1", 1, "[]", None)))?;
        // Past the CHECK constraint, as a newer build's status would be.
        if store.is_postgres() {
            store.execute_for_test("ALTER TABLE tasks DROP CONSTRAINT tasks_status_check")?;
            store.execute_for_test("UPDATE tasks SET status = 'paused'")?;
        } else {
            store.execute_for_test("PRAGMA ignore_check_constraints = ON")?;
            store.execute_for_test("UPDATE tasks SET status = 'paused'")?;
            store.execute_for_test("PRAGMA ignore_check_constraints = OFF")?;
        }
        let got = store.read(|tx| get(tx, "tsk_1"));
        assert!(
            matches!(&got, Err(e) if e.to_string().contains("tasks.status")),
            "{backend}: {got:?}"
        );
    }
    Ok(())
}

/// SQLite numbers the claim queries' named parameters in the order they first appear;
/// `targeted_candidates` and `open_candidates` bind their values in that order.
#[test]
fn claim_parameters_are_bound_in_the_order_sqlite_numbers_them() -> TestResult {
    let store = Store::open(&Location::Memory)?;
    let conn = store.lock();
    for (sql, names) in [
        (&*TARGETED_SQL, &TARGETED_PARAMS[..]),
        (&*OPEN_SQL, &OPEN_PARAMS[..]),
    ] {
        let stmt = conn.prepare(sql)?;
        let got: Vec<Option<&str>> = (1..=stmt.parameter_count())
            .map(|i| stmt.parameter_name(i))
            .collect();
        let want: Vec<Option<&str>> = names.iter().map(|n| Some(*n)).collect();
        assert_eq!(got, want, "{sql}");
    }
    Ok(())
}

/// Listing one status reads the partial index of its group, never the whole table: with a
/// million finished tasks, a scan and sort would take a second.
#[test]
fn listing_a_status_uses_its_groups_index() -> TestResult {
    let store = Store::open(&Location::Memory)?;
    let conn = store.lock();
    for (status, index) in [
        ("queued", "tasks_queue"),
        ("leased", "tasks_leases"),
        ("running", "tasks_leases"),
        ("completed", "tasks_finished"),
        ("dead", "tasks_finished"),
    ] {
        let filter = ListFilter {
            status: Some(status.parse()?),
            before: Some((5, "tsk_x")),
            ..Default::default()
        };
        let (sql, args) = list_sql(&filter, 50);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(3))?
            .collect::<Result<_, _>>()?;
        let plan = plan.join("; ");
        assert!(plan.contains(index), "{status}: {plan}");
        if index == "tasks_finished" {
            assert!(
                !plan.contains("TEMP B-TREE FOR ORDER BY"),
                "{status}: {plan}"
            );
        }
    }
    Ok(())
}

/// The claim's two candidate queries run from the statement cache as prepared: SQLite built
/// with STAT4 re-parses a statement on every run when its plan was made for the values
/// bound at the time, and a claim binds a new `now` every time.
#[test]
fn candidate_queries_are_not_prepared_again_per_claim() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&Location::File(dir.path().join("c.db")))?;
    let conn = store.lock();
    let tx = Tx::lite(&conn);
    agent_sql::upsert(&tx, &agent("agt_1", r#"["linux"]"#))?;
    insert(&tx, &row("tsk_1", 2, "[\"linux\"]", None))?;
    insert(&tx, &row("tsk_2", 1, "[\"gpu\"]", None))?;
    insert(&tx, &row("tsk_3", 3, "[]", Some("agt_1")))?;
    for now in 10..60 {
        let open = open_candidates(&tx, r#"["linux"]"#, now, None, 1)?;
        assert_eq!(ids(&open), ["tsk_1"]);
        let after = open_candidates(&tx, r#"["linux"]"#, now, Some((2, 1, "tsk_1")), 5)?;
        assert!(after.is_empty(), "the gpu task is not for a linux agent");
        let aimed = targeted_candidates(&tx, "agt_1", r#"["linux"]"#, now, 1)?;
        assert_eq!(aimed.len(), 1);
    }
    for sql in [&*OPEN_SQL, &*TARGETED_SQL] {
        let stmt = conn.prepare_cached(sql)?;
        assert_eq!(
            stmt.get_status(StatementStatus::RePrepare),
            0,
            "prepared again on some run: {sql}"
        );
        assert!(stmt.get_status(StatementStatus::Run) >= 50);
    }
    Ok(())
}
