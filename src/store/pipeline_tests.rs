//! Tests of `store/pipeline.rs` on both backends: a pipeline, its versions and runs, stage
//! rows and savepoints written and read back.

use super::*;
use crate::store::{Store, testing};

fn run_row(id: &str, created_ms: i64, webhook: bool) -> RunRow {
    RunRow {
        id: id.into(),
        pipeline_id: "p1".into(),
        version: 1,
        status: RunStatus::Running,
        input: "{}".into(),
        parameters: "{}".into(),
        priority: 1,
        started_by: "client:t/1".into(),
        created_ms,
        updated_ms: created_ms,
        finished_ms: None,
        error: None,
        webhook_url: webhook.then(|| "http://127.0.0.1:9/hook".into()),
        webhook_state: webhook.then_some(WebhookState::Waiting),
        webhook_attempts: 0,
        webhook_next_ms: None,
        webhook_error: None,
    }
}

fn stage_row(run_id: &str, stage: &str, position: i64) -> StageRow {
    StageRow {
        run_id: run_id.into(),
        stage: stage.into(),
        position,
        status: StageStatus::Waiting,
        task_id: None,
        approval_id: None,
        output: None,
        error: None,
        started_ms: None,
        finished_ms: None,
    }
}

/// Definitions, versions and runs written and read back, with the paging filters.
fn pipeline_version_and_runs(backend: &str, store: &Store) -> Result<(), StoreError> {
    let pipeline = PipelineRow {
        id: "p1".into(),
        name: "build".into(),
        latest_version: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        created_by: "client:t/1".into(),
        deleted_at: None,
    };
    let version = |v: i64| VersionRow {
        pipeline_id: "p1".into(),
        version: v,
        description: format!("v{v}"),
        definition: r#"{"stages":[]}"#.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        created_by: "client:t/1".into(),
    };
    store.write(|tx| {
        insert_pipeline(tx, &pipeline)?;
        insert_version(tx, &version(1))?;
        insert_version(tx, &version(2))?;
        set_latest_version(tx, "p1", 2, "2026-01-02T00:00:00Z")?;
        insert_run(tx, &run_row("r1", 100, true))?;
        insert_run(tx, &run_row("r2", 200, false))?;
        insert_run(tx, &run_row("r3", 200, false))
    })?;
    store.read(|tx| -> Result<(), StoreError> {
        let p = get_pipeline(tx, "p1")?;
        assert_eq!(p.as_ref().map(|p| p.latest_version), Some(2), "{backend}");
        assert_eq!(pipeline_by_name(tx, "build")?, p, "{backend}");
        assert_eq!(get_version(tx, "p1", 2)?, Some(version(2)), "{backend}");
        assert_eq!(get_version(tx, "p1", 3)?, None, "{backend}");
        assert_eq!(list_pipelines(tx, None, 10)?.len(), 1, "{backend}");
        assert!(
            list_pipelines(tx, Some("build"), 10)?.is_empty(),
            "{backend}"
        );
        assert_eq!(list_pipelines(tx, Some("a"), 10)?.len(), 1, "{backend}");
        assert_eq!(
            get_run(tx, "r1")?,
            Some(run_row("r1", 100, true)),
            "{backend}"
        );
        assert_eq!(
            run_stamp(tx, "r2")?,
            Some((RunStatus::Running, 200)),
            "{backend}"
        );
        let ids = |runs: Vec<RunRow>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(list_runs(tx, None, None, None, 10)?),
            ["r3", "r2", "r1"]
        );
        assert_eq!(
            ids(list_runs(
                tx,
                Some("p1"),
                Some(RunStatus::Running),
                None,
                10
            )?),
            ["r3", "r2", "r1"],
            "{backend}"
        );
        assert!(
            list_runs(tx, Some("p2"), None, None, 10)?.is_empty(),
            "{backend}"
        );
        assert!(
            list_runs(tx, None, Some(RunStatus::Failed), None, 10)?.is_empty(),
            "{backend}"
        );
        assert_eq!(
            ids(list_runs(tx, None, None, Some((200, "r3")), 10)?),
            ["r2", "r1"],
            "{backend}: cursor"
        );
        assert_eq!(active_runs(tx, "p1")?, 3, "{backend}");
        Ok(())
    })?;

    // updated_ms only moves forward (two-argument MAX / GREATEST).
    store.write(|tx| {
        touch_run(tx, "r2", 50)?;
        touch_run(tx, "r3", 500)
    })?;
    let stamps =
        store.read(|tx| Ok::<_, StoreError>((run_stamp(tx, "r2")?, run_stamp(tx, "r3")?)))?;
    assert_eq!(
        stamps,
        (
            Some((RunStatus::Running, 201)),
            Some((RunStatus::Running, 500))
        ),
        "{backend}"
    );

    // Ending a run with a webhook makes it due; one claim per attempt.
    assert!(store.write(|tx| finish_run(tx, "r1", RunStatus::Completed, None, 1_000))?);
    assert!(!store.write(|tx| finish_run(tx, "r1", RunStatus::Failed, Some("x"), 1_001))?);
    assert!(store.write(|tx| finish_run(tx, "r2", RunStatus::Failed, Some("boom"), 1_000))?);
    let due = store.read(|tx| due_webhooks(tx, 1_000, 10))?;
    assert_eq!(due.len(), 1, "{backend}: only the run with a webhook");
    let r1 = &due[0];
    assert_eq!(r1.webhook_state, Some(WebhookState::Pending), "{backend}");
    assert_eq!(
        (r1.finished_ms, r1.updated_ms),
        (Some(1_000), 1_000),
        "{backend}"
    );
    assert!(store.write(|tx| claim_webhook(tx, "r1", 1_000, 5_000))?);
    assert!(!store.write(|tx| claim_webhook(tx, "r1", 1_000, 5_000))?);
    store.write(|tx| webhook_outcome(tx, "r1", WebhookState::Delivered, None, None))?;
    let r1 = store.read(|tx| get_run(tx, "r1"))?;
    assert_eq!(
        r1.map(|r| (r.webhook_state, r.webhook_attempts)),
        Some((Some(WebhookState::Delivered), 1)),
        "{backend}"
    );
    let r2 = store.read(|tx| get_run(tx, "r2"))?;
    assert_eq!(
        r2.map(|r| (r.status, r.error, r.webhook_state)),
        Some((RunStatus::Failed, Some("boom".into()), None)),
        "{backend}"
    );

    store.write(|tx| mark_deleted(tx, "p1", "2026-01-03T00:00:00Z"))?;
    assert_eq!(
        store.read(|tx| pipeline_by_name(tx, "build"))?,
        None,
        "{backend}"
    );
    Ok(())
}

/// Stage rows: inserted, moved once from each state, found by task, collected.
fn stages(backend: &str, store: &Store) -> Result<(), StoreError> {
    store.write(|tx| {
        insert_stage(tx, &stage_row("r3", "b", 1))?;
        insert_stage(tx, &stage_row("r3", "a", 0))
    })?;
    let moved = store.write(|tx| {
        Ok::<_, StoreError>([
            move_stage(
                tx,
                "r3",
                "a",
                StageStatus::Waiting,
                StageStatus::Queued,
                Some("task_a"),
                None,
                None,
                None,
                700,
                false,
            )?,
            // Already moved: no second transition.
            move_stage(
                tx,
                "r3",
                "a",
                StageStatus::Waiting,
                StageStatus::Queued,
                Some("task_x"),
                None,
                None,
                None,
                701,
                false,
            )?,
        ])
    })?;
    assert_eq!(moved, [true, false], "{backend}");
    let a = store.read(|tx| stage_by_task(tx, "task_a"))?;
    assert_eq!(
        a.map(|s| (s.status, s.started_ms, s.finished_ms)),
        Some((StageStatus::Queued, Some(700), None)),
        "{backend}"
    );
    // The stage's task is not in the queue at all: the run has something to collect.
    let due = store.read(|tx| runs_to_collect(tx, "2026-01-01T00:00:00Z"))?;
    assert_eq!(due, ["r3"], "{backend}");

    let done = store.write(|tx| {
        move_stage(
            tx,
            "r3",
            "a",
            StageStatus::Queued,
            StageStatus::Completed,
            None,
            None,
            Some(r#"{"ok":true}"#),
            None,
            800,
            true,
        )
    })?;
    assert!(done, "{backend}");
    assert!(store.write(|tx| close_stage(
        tx,
        "r3",
        "b",
        StageStatus::Waiting,
        StageStatus::Skipped,
        "a failed",
        900
    ))?);
    let rows = store.read(|tx| stages_of(tx, "r3"))?;
    let mut a = stage_row("r3", "a", 0);
    a.status = StageStatus::Completed;
    a.task_id = Some("task_a".into());
    a.output = Some(r#"{"ok":true}"#.into());
    a.started_ms = Some(700);
    a.finished_ms = Some(800);
    let mut b = stage_row("r3", "b", 1);
    b.status = StageStatus::Skipped;
    b.error = Some("a failed".into());
    b.finished_ms = Some(900);
    assert_eq!(rows, [a, b], "{backend}");
    assert!(
        store
            .read(|tx| runs_to_collect(tx, "2026-01-01T00:00:00Z"))?
            .is_empty(),
        "{backend}"
    );
    Ok(())
}

/// A failure under a savepoint (here a statement the database refuses, which on
/// PostgreSQL aborts the transaction) undoes only what it wrote; the transaction goes on.
fn savepoints(backend: &str, store: &Store) -> Result<(), StoreError> {
    let inner = store.write(|tx| {
        let kept = within_savepoint(tx, "kept", |tx| insert_stage(tx, &stage_row("r3", "c", 2)))?;
        let undone = within_savepoint(tx, "undone", |tx| {
            insert_stage(tx, &stage_row("r3", "d", 3))?;
            insert_stage(tx, &stage_row("r3", "a", 0))
        })?;
        insert_stage(tx, &stage_row("r3", "e", 4))?;
        Ok::<_, StoreError>((kept.is_ok(), undone.is_err()))
    })?;
    assert_eq!(inner, (true, true), "{backend}");
    let names: Vec<String> = store
        .read(|tx| stages_of(tx, "r3"))?
        .into_iter()
        .map(|s| s.stage)
        .collect();
    assert_eq!(names, ["a", "b", "c", "e"], "{backend}");
    Ok(())
}

#[test]
fn a_pipeline_version_run_and_stage_rows_round_trip_on_both_backends() {
    for (backend, store) in testing::both("pipelines") {
        for step in [pipeline_version_and_runs, stages, savepoints] {
            if let Err(e) = step(backend, &store) {
                panic!("{backend}: {e}");
            }
        }
    }
}
