//! The `postgres` section: the task queue's figures on PostgreSQL, to read beside SQLite's
//! (sections 6 and 7): batched throughput (`submit_many` 100 per transaction, `claim_many` up
//! to 20, `report_many` their results in one transaction) and claim latency at two queue
//! depths, each claim followed by a complete and a new submit so the depth stays put. On a fresh database of the test cluster
//! (`.ci/postgres start`, or `MCP_COORDINATOR_TEST_PG`), over loopback TCP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_coordinator::audit::{AuditLog, AuditSigner};
use mcp_coordinator::store::testing;
use mcp_coordinator::store::{Location, Store, StoreError};
use mcp_coordinator::task::{Priority, TaskService};

use crate::{
    AGENT_CAPS, Counts, batched_on, claim_one, completed, mixed_row, mixed_task, per_second,
    percentile, register_agent, submitter, task_service_on, task_sql, us, verdict,
};

/// The task queue on a fresh PostgreSQL database.
fn service(label: &str) -> (TaskService, String) {
    let url = testing::fresh_database(label);
    let location = Location::from_arg(&url).expect("database URL");
    let store = Store::open(&location).expect("open PostgreSQL store");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let audit = AuditLog::new(store, Arc::new(AuditSigner::from_key(key)));
    (task_service_on(audit).0, location.display())
}

pub fn bench_postgres(counts: &Counts) {
    println!("\n== PostgreSQL: the task queue (TaskService on a PostgreSQL database) ==");
    let (tasks, shown) = service("bench_batched");
    let health = tasks
        .agents()
        .audit()
        .store()
        .health()
        .unwrap_or_else(|e| e.to_string());
    println!("   database {shown}: {health}");
    batched_on(&tasks, counts.tasks, "PostgreSQL, batched:", 5_000);
    let [small, large] = counts.queue_depths;
    let a = claims_at_depth(counts, small);
    let b = claims_at_depth(counts, large);
    let ratio = |x: &[Duration], y: &[Duration], p: f64| {
        percentile(y, p).as_secs_f64() / percentile(x, p).as_secs_f64()
    };
    let p50 = ratio(&a, &b, 50.0);
    let p99 = ratio(&a, &b, 99.0);
    println!(
        "PostgreSQL claim latency at {large} vs {small} queued: p50 {p50:.2}x, p99 {p99:.2}x   \
         [target flat, deep queue within 2x of the shallow one: p50 {}, p99 {}]",
        verdict(p50 <= 2.0),
        verdict(p99 <= 2.0),
    );
}

/// Fills a fresh queue to `depth` (submits up to 10,000; beyond, rows shaped like the first
/// task's through `store::task::insert`, 10,000 per transaction), then times claims.
fn claims_at_depth(counts: &Counts, depth: usize) -> Vec<Duration> {
    let (tasks, _) = service(&format!("bench_depth_{depth}"));
    let token = register_agent(&tasks, "pg-claimer");
    let by = submitter();
    let started = Instant::now();
    let (first, _) = tasks.submit(mixed_task(0, true), &by).expect("submit");
    if depth <= 10_000 {
        for i in 1..depth {
            tasks.submit(mixed_task(i, true), &by).expect("submit");
        }
    } else {
        let store = tasks.agents().audit().store();
        let template = store
            .read(|tx| task_sql::get(tx, &first.id))
            .expect("get")
            .expect("submitted row");
        for start in (1..depth).step_by(10_000) {
            store
                .write(|tx| {
                    for i in start..(start + 10_000).min(depth) {
                        task_sql::insert(
                            tx,
                            &mixed_row(i, &template, mcp_coordinator::agent::now_ms()),
                        )?;
                    }
                    Ok::<_, StoreError>(())
                })
                .expect("insert batch");
        }
    }
    let filling = started.elapsed();
    let cycle = |next: &mut usize| -> (Duration, Priority) {
        let started = Instant::now();
        let task = claim_one(&tasks, &token).expect("queue ran dry");
        let claimed = started.elapsed();
        tasks.report(&token, &task.id, completed()).expect("report");
        tasks.submit(mixed_task(*next, true), &by).expect("submit");
        *next += 1;
        assert!(
            task.capabilities
                .iter()
                .all(|c| AGENT_CAPS.contains(&c.as_str())),
            "claimed a task the agent cannot run: {:?}",
            task.capabilities,
        );
        (claimed, task.priority)
    };
    let mut next = depth;
    for _ in 0..20 {
        cycle(&mut next);
    }
    let mut claims: Vec<Duration> = (0..counts.claims_per_depth)
        .map(|_| cycle(&mut next).0)
        .collect();
    claims.sort();
    println!(
        "PostgreSQL, {depth} queued: claim p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs \
         over {} claims (filled in {:.1} s, {:.0} tasks/s)",
        us(percentile(&claims, 50.0)),
        us(percentile(&claims, 90.0)),
        us(percentile(&claims, 99.0)),
        us(claims[claims.len() - 1]),
        counts.claims_per_depth,
        filling.as_secs_f64(),
        per_second(depth, filling),
    );
    claims
}
