//! The database in trouble, over the real binary. Another process holds its write lock
//! (`BEGIN EXCLUSIVE`) for longer than the busy timeout: a write call fails with the retryable
//! `storage_busy` within its one budget (saying how long it waited), reads are still served,
//! their unaudited `tool.call` events show as degraded health, and once the lock is gone the
//! events reach the audit log. The disk is full: a write is the retryable `storage_full`
//! naming the database, and succeeds once there is room again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The busy timeout these tests configure.
const BUDGET: Duration = Duration::from_secs(2);

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!("[database]\nbusy_timeout_ms = {}\n", BUDGET.as_millis()),
    )
    .unwrap();
    path
}

/// A call's result and how long it took.
async fn timed(
    client: &common::Client,
    tool: &str,
    args: Value,
) -> (rmcp::model::CallToolResult, Duration) {
    let started = Instant::now();
    let result = common::call(client, tool, args).await.unwrap();
    (result, started.elapsed())
}

#[tokio::test]
async fn a_call_waits_one_budget_for_a_locked_database() {
    let dir = common::data_dir();
    let config = config(dir.path());
    let client = common::connect(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        common::Era::Legacy,
    )
    .await;
    // A task exists: the read has something to show.
    common::call_ok(
        &client,
        "task_submit",
        json!({"kind": "before", "params": {}}),
    )
    .await;
    common::settle_audit(dir.path());

    let holder = rusqlite::Connection::open(common::db_path(dir.path())).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked = Instant::now();

    // Twice, with reads between: the second write must not wait behind anything the first
    // left running (its audit event, a sweep), and reads wait for nothing.
    for attempt in 0..2 {
        let (submit, took) = timed(
            &client,
            "task_submit",
            json!({"kind": format!("k{attempt}"), "params": {}}),
        )
        .await;
        let error = submit.structured_content.clone().unwrap();
        assert_eq!(submit.is_error, Some(true), "{error:#}");
        assert_eq!(error["code"], "storage_busy", "{error:#}");
        assert_eq!(error["retryable"], true, "{error:#}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("waited 2.0 s for another process's write lock (busy timeout 2 s)"),
            "{message}"
        );
        assert!(
            took >= BUDGET - Duration::from_millis(100) && took < BUDGET + Duration::from_secs(1),
            "task_submit answered after {took:?} with a budget of {BUDGET:?}"
        );
        // Meanwhile the audit writer tries to record the failed call.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (tool, args) in [
            ("task_list", json!({})),
            ("approval_list", json!({})),
            ("audit_query", json!({"limit": 5})),
        ] {
            let (read, took) = timed(&client, tool, args).await;
            assert_ne!(read.is_error, Some(true), "{tool}: {read:?}");
            assert!(
                took < Duration::from_secs(1),
                "{tool} answered after {took:?}: a read waits for no lock"
            );
        }
    }
    let listed = common::call_ok(&client, "task_list", json!({})).await;
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 1, "{listed:#}");

    assert!(
        locked.elapsed() < 2 * BUDGET + Duration::from_secs(3),
        "the calls under the lock took {:?}",
        locked.elapsed()
    );

    // The reads' tool.call events could not be written: health says so, with the count. The
    // writer (at nice +10) counts an event once it has tried to write it, every 200 ms: on a
    // loaded machine that may take a few of its turns.
    let asked = Instant::now();
    let status = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = common::call_ok(&client, "coordinator_status", json!({})).await;
        let unaudited = status["database"]["unaudited_calls"].as_u64().unwrap();
        if unaudited >= 8 || asked.elapsed() > Duration::from_secs(3) {
            break status;
        }
    };
    let health = status["database"]["health"].as_str().unwrap();
    assert!(health.starts_with("degraded: "), "{health}");
    assert!(health.contains("database is busy"), "{health}");
    let unaudited = status["database"]["unaudited_calls"].as_u64().unwrap();
    assert!(unaudited >= 8, "{status:#}");

    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    // The waiting events reach the log once the lock is gone, and health is ok again.
    let started = Instant::now();
    loop {
        let status = common::call_ok(&client, "coordinator_status", json!({})).await;
        if status["database"]["unaudited_calls"] == 0 {
            assert_eq!(status["database"]["health"], "ok (journal_mode=wal)");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still unaudited: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = common::call_ok(
        &client,
        "audit_query",
        json!({"action": "tool.call", "limit": 50}),
    )
    .await;
    let subjects: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for tool in ["task_list", "approval_list", "audit_query"] {
        assert!(subjects.contains(&tool), "{tool} not audited: {subjects:?}");
    }
    let failed_submit = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == "task_submit" && e["outcome"] == "error");
    assert!(failed_submit.is_some(), "{page:#}");
    let verify = common::call_ok(&client, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true, "{verify:#}");
    client.cancel().await.unwrap();
}

/// A small tmpfs, unmounted when dropped. Mounting needs root (and a kernel that lets this
/// process mount): `None` elsewhere.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a coordinator still exiting (after a failed assertion) keeps files open.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_retryable_error_naming_the_database() {
    let Some(disk) = SmallDisk::mount("3m") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the store's unit test \
                   a_full_database_is_retryable_and_named covers the mapping"
        );
        return;
    };
    let data = disk.path().join("data");
    let client = common::connect(&data, &[], common::Era::Legacy).await;
    common::call_ok(&client, "coordinator_status", json!({})).await;
    // Leave about a megabyte for the database, then fill it with tasks.
    let filler = disk.path().join("filler");
    let room = free_bytes(disk.path()).saturating_sub(1_000_000);
    std::fs::write(&filler, vec![0u8; room as usize]).unwrap();
    let payload = "x".repeat(100_000);
    let mut full = None;
    for i in 0..100 {
        let result = common::call(
            &client,
            "task_submit",
            json!({"kind": format!("fill-{i}"), "params": {"blob": payload}}),
        )
        .await
        .unwrap();
        if result.is_error == Some(true) {
            full = result.structured_content;
            break;
        }
    }
    let error = full.expect("a megabyte of disk took 100 tasks of 100 KB");
    assert_eq!(error["code"], "storage_full", "{error:#}");
    assert_eq!(error["retryable"], true, "{error:#}");
    let db = common::db_path(&data).display().to_string();
    assert!(
        error["message"].as_str().unwrap().contains(&db),
        "{error:#}"
    );
    // Reads are still served.
    common::call_ok(&client, "task_list", json!({"limit": 1})).await;

    // Room again: the same call succeeds.
    std::fs::remove_file(&filler).unwrap();
    common::call_ok(
        &client,
        "task_submit",
        json!({"kind": "after", "params": {"blob": payload}}),
    )
    .await;
    client.cancel().await.unwrap();
}

/// Free bytes on the file system holding `path` (`df`'s available column).
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}
