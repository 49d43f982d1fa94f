//! `mcp-coordinator store copy`, run as the binary: a real coordinator database (an audit chain
//! of 100,000 events written by two coordinators' keys through the library's AuditLog) copied
//! to SQLite and to PostgreSQL and verified there; a target with data refused, naming its
//! tables; a round trip through PostgreSQL back to SQLite that keeps every row; arguments
//! that are wrong named in the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use mcp_coordinator::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
use mcp_coordinator::store::copy::{self, TABLES};
use mcp_coordinator::store::testing::fresh_database;
use mcp_coordinator::store::{Location, Store};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-coordinator");

/// Runs the binary with its own data directory; returns exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--log-level", "warn"])
        .args(args)
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run mcp-coordinator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A coordinator database at `path` whose audit chain has `events` events appended by two
/// coordinators sharing it (two signing keys, each introduced by the chain before the first
/// head it signs), taking turns with batches of at most 1,000 whose last event is critical (its
/// head signed), and the head signed at the end, as a shutdown does. Returns the chain's head
/// (seq, hash).
fn coordinator_db(path: &Path, events: usize) -> (i64, String) {
    let store = Store::open(&Location::File(path.to_path_buf())).unwrap();
    let logs: Vec<AuditLog> = [1u8, 2]
        .into_iter()
        .map(|b| {
            let signer = AuditSigner::from_key(SigningKey::from_bytes(&[b; 32]));
            AuditLog::new(store.clone(), Arc::new(signer))
        })
        .collect();
    let actions = [
        Action::ToolCall,
        Action::TaskSubmitted,
        Action::TaskLeased,
        Action::TaskCompleted,
        Action::AgentRegistered,
    ];
    let per_batch = (events / 2).clamp(1, 1_000);
    let mut written = 0;
    let mut batch_no = 0;
    while written < events {
        let n = (events - written).min(per_batch);
        let batch: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent {
                actor: Actor::new(ActorKind::Agent, format!("agent-{}", i % 7)),
                action: actions[i % actions.len()],
                subject: format!("task-{}", written + i),
                outcome: if i % 11 == 0 {
                    Outcome::Error
                } else {
                    Outcome::Ok
                },
                detail: json!({"n": written + i, "note": "Zoë's \"run\" ✓", "token": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}),
                critical: i == n - 1,
            })
            .collect();
        logs[batch_no % 2].record_batch(&batch).unwrap();
        written += n;
        batch_no += 1;
    }
    logs[0].sign_head().unwrap();
    let report = logs[0].verify().unwrap();
    assert!(report.ok, "the source chain: {report:?}");
    (report.head_seq.unwrap(), report.head_hash.unwrap())
}

/// One chain of 100,000 events (and the two keys' introductions) for the tests that copy it,
/// written once per run (it takes a while in a debug build) under the target's temp directory;
/// an earlier run's is removed first. Returns its path and head.
fn chain_100k() -> &'static (std::path::PathBuf, (i64, String)) {
    static CHAIN: OnceLock<(std::path::PathBuf, (i64, String))> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for old in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with("store_copy-") {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = tmp.join(format!("store_copy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chain.db");
        let made = Instant::now();
        let head = coordinator_db(&path, 100_000);
        eprintln!(
            "100,000 events written in {:.1} s",
            made.elapsed().as_secs_f64()
        );
        (path, head)
    })
}

/// The rest of a coordinator's tables, one or more rows each, with NULL integers and text,
/// floats, bytes and non-ASCII text.
const ROWS: &str = r#"
INSERT INTO approvals (id, kind, subject_id, summary, action, action_hash, risk, preview, requested_by,
    created_at, expires_at, decide_with, state, decided_by, decided_via, decided_at, reason, cause, executed_at)
VALUES ('ap1', 'generic', 's', 'Zoë''s "change"', '{}', 'h', 'low', NULL, 'me', 't0', 't9', 'out_of_band',
        'pending', NULL, NULL, NULL, NULL, NULL, NULL),
       ('ap2', 'remediation', 's', '', '{}', 'h', 'high', 'p', 'me', 't1', 't9', 'elicitation',
        'approved', 'you', 'cli', 't2', 'ok', NULL, 't3');
INSERT INTO approval_questions VALUES ('n1', 'ap1', 't', NULL);
INSERT INTO agents VALUES ('ag1', 'worker ✓', 'worker', '["x"]', '{}', '{}', '{}', 'ready', 0.30000000000000004,
    'r', 9223372036854775807, -9223372036854775808, NULL);
INSERT INTO tasks (id, kind, params, capabilities, target_agent_id, priority, status, timeout_ms, max_retries,
    attempts, idempotency_key, not_before_ms, created_ms, updated_ms, submitted_by, leased_by, lease_expires_ms,
    last_agent_id, progress, message, result, last_error, finished_ms)
VALUES ('t0', 'k', '{}', '[]', 'ag1', 1, 'queued', 1000, 3, 0, NULL, 0, 5, 5, 'me', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
       ('t1', 'k', '{}', '[]', NULL, 3, 'leased', 1000, 3, 1, 'idem', 0, 6, 7, 'me', 'ag1', 42, 'ag1', 0.5, 'm', NULL, NULL, NULL),
       ('t2', 'k', '{}', '[]', NULL, 0, 'completed', 1000, 3, 1, NULL, 0, 6, 7, 'me', NULL, NULL, 'ag1', 1.0, NULL, '{"ok":true}', NULL, 9);
INSERT INTO pipelines VALUES ('p1', 'pipe', 1, 'c', 'u', 'me', NULL);
INSERT INTO pipeline_versions VALUES ('p1', 1, 'd', '{"stages":[]}', 'c', 'me');
INSERT INTO pipeline_runs VALUES ('r1', 'p1', 1, 'running', '{}', '{}', 2, 'me', 1, 2, NULL, NULL, NULL, NULL, 0, NULL, NULL),
                                 ('r2', 'p1', 1, 'failed', '{}', '{}', 2, 'me', 1, 2, 3, 'boom', 'https://h/x', 'pending', 1, 99, NULL);
INSERT INTO pipeline_stage_runs VALUES ('r1', 'a', 0, 'queued', 't0', NULL, NULL, NULL, 1, NULL),
                                       ('r1', 'b', 1, 'waiting', NULL, NULL, NULL, NULL, NULL, NULL),
                                       ('r2', 'a', 0, 'failed', NULL, 'ap1', NULL, 'no', 1, 2);
INSERT INTO secrets VALUES ('GITHUB_TOKEN', X'000102030405060708090a0b',
    X'00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff', 'fp', 'c', 'u');
INSERT INTO assessments VALUES ('as1', 'health', 'completed', 'c', '{}');
INSERT INTO remediations VALUES ('re1', 'proposed', 'as1', 'c', 'u', '{}'), ('re2', 'withdrawn', NULL, 'c', 'u', '{}');
INSERT INTO instances (id, name, type, status, owner, owner_host, owner_pid, pid, overrides, ttl_seconds,
    created_at, started_at, expires_at, stopped_at, restarts, health, last_error, tools, resume, updated_at, snapshot)
VALUES ('i1', 'inst', 'fs', 'stopped', 'o', 'h', 7, NULL, '{}', NULL, 'c', NULL, NULL, NULL, 0, 'unknown', NULL, 0, 0, 'u', NULL),
       ('i2', 'inst', 'fs', 'running', 'o', 'h', 7, 1234, '{}', 60, 'c', 's', 'e', NULL, 2, 'ok', 'e', 3, 1, 'u', '{"a":1}');
INSERT INTO instance_tool_pins VALUES ('fs', 'read', 'pinned', 'h', '{}', '[]', NULL, NULL, NULL, NULL, 'f', 'u');
INSERT INTO overseer_credentials VALUES (1, 'me', '$argon2id$x', '$argon2id$y', 'init', 's', 'user:me@host');
UPDATE overseer_lock SET failures = 2, locked_until = 'later' WHERE id = 1;
INSERT INTO access_tokens VALUES ('key_1', 'api_key', 'k', 'admin', 'abc', 'i', 'me', NULL, NULL, NULL),
                                 ('tok_1', 'token', 't', 'agent,admin', NULL, 'i', 'me', 'x', 'y', 'z');
"#;

/// Every row of every table of a SQLite database, in key order.
fn rows(path: &Path) -> BTreeMap<&'static str, Vec<Vec<rusqlite::types::Value>>> {
    let c = rusqlite::Connection::open(path).unwrap();
    TABLES
        .iter()
        .map(|t| {
            let key = t
                .key
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let mut st = c
                .prepare(&format!("SELECT * FROM {} ORDER BY {key}", t.name))
                .unwrap();
            let n = st.column_count();
            let all = st
                .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<Result<Vec<Vec<_>>, _>>()
                .unwrap();
            (t.name, all)
        })
        .collect()
}

fn sqlite_arg(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// The count `store copy` printed for `table`.
fn printed(out: &str, table: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(table))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

#[test]
fn help_teaches_store_copy() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("store copy"), "{out}");
    let (code, out, err) = run(&["store", "copy", "--help"]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "--from",
        "--to",
        "sqlite:PATH",
        "postgres://",
        "empty",
        "never",
        "merged",
        "audit.key_added",
        "one transaction",
        "master key",
        "Exit status",
        "Examples:",
    ] {
        assert!(
            out.contains(needle),
            "store copy --help lacks {needle:?}:\n{out}"
        );
    }
}

#[test]
fn wrong_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    coordinator_db(&db, 10);
    let missing = dir.path().join("nope.db");
    let cases: [(Vec<String>, &str); 6] = [
        (
            vec![
                "--from".into(),
                "mysql://h/db".into(),
                "--to".into(),
                "x.db".into(),
            ],
            "--from: mysql:// is not a database",
        ),
        (
            vec![
                "--from".into(),
                sqlite_arg(&db),
                "--to".into(),
                ":memory:".into(),
            ],
            "--to: :memory: is a database only the process that opens it sees",
        ),
        (
            vec![
                "--from".into(),
                "sqlite:".into(),
                "--to".into(),
                "x.db".into(),
            ],
            "--from: \"sqlite:\" names no file",
        ),
        (
            vec![
                "--from".into(),
                sqlite_arg(&missing),
                "--to".into(),
                "x.db".into(),
            ],
            "holds no coordinator database (nothing was created)",
        ),
        (
            vec![
                "--from".into(),
                sqlite_arg(&db),
                "--to".into(),
                db.display().to_string(),
            ],
            "--from and --to name the same database",
        ),
        (
            vec![
                "--from".into(),
                sqlite_arg(&db),
                "--to".into(),
                "postgres://u@h:notaport/db".into(),
            ],
            "--to: not a usable PostgreSQL URL",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["store", "copy"];
        all.extend(args.iter().map(String::as_str));
        let (code, _, err) = run(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!missing.exists(), "a missing source is not created");
}

/// 100,000 events (and the two keys' introductions) into a new SQLite file: every row copied,
/// the head the same, the chain verified there.
#[test]
fn a_chain_of_100000_events_copies_to_sqlite_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("sub/to.db");
    let (from, head) = chain_100k();
    let started = Instant::now();
    let (code, out, err) = run(&[
        "store",
        "copy",
        "--from",
        &sqlite_arg(from),
        "--to",
        &sqlite_arg(&to),
    ]);
    eprintln!(
        "copied in {:.1} s:\n{out}{err}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(printed(&out, "audit_events"), Some(100_002), "{out}");
    assert_eq!(printed(&out, "audit_signatures"), Some(100), "{out}");
    assert!(
        out.contains(&format!(
            "audit chain head: event {}, hash {}",
            head.0, head.1
        )),
        "{out}"
    );
    assert!(
        out.contains("verified on the target: chain intact, 100002 events checked"),
        "{out}"
    );
    assert!(
        out.contains("100 of 100 signatures valid by 2 key(s)"),
        "{out}"
    );
    assert_eq!(rows(from), rows(&to));
}

/// The issue's test: a real SQLite database with 100,000 events copied to PostgreSQL and
/// verified there (by the copy, and by `audit verify` on the PostgreSQL database afterwards).
#[test]
fn a_chain_of_100000_events_copies_to_postgres_and_verifies() {
    let (from, head) = chain_100k();
    let url = fresh_database("copy_100k");
    let started = Instant::now();
    let (code, out, err) = run(&["store", "copy", "--from", &sqlite_arg(from), "--to", &url]);
    let took = started.elapsed().as_secs_f64();
    eprintln!("copied to PostgreSQL in {took:.1} s:\n{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(printed(&out, "audit_events"), Some(100_002), "{out}");
    assert!(
        out.contains(&format!(
            "audit chain head: event {}, hash {}",
            head.0, head.1
        )),
        "{out}"
    );
    assert!(
        out.contains("verified on the target: chain intact, 100002 events checked"),
        "{out}"
    );
    let (code, out, err) = run(&["audit", "verify", "--db", &url]);
    assert_eq!(code, 0, "audit verify on the copy: {out}{err}");
    assert!(
        out.contains("audit chain intact: 100002 events checked"),
        "{out}"
    );
}

/// A target with data is refused, naming its tables, and left as it was: PostgreSQL (filled
/// by an earlier copy) and SQLite.
#[test]
fn a_target_with_data_is_refused_naming_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("from.db");
    coordinator_db(&from, 50);
    let url = fresh_database("copy_refused");
    let pg = Location::from_arg(&url).unwrap();
    {
        // Filled by the library (no verification), so this test needs nothing of the audit
        // module on PostgreSQL.
        let (source, target) = (
            copy::open_source(&Location::File(from.clone())).unwrap(),
            copy::open_target(&pg).unwrap(),
        );
        copy::copy(&source, &target, |_, _| Ok::<_, copy::CopyError>(())).unwrap();
    }
    let counts = |l: &Location| Store::open_existing(l).unwrap().table_counts().unwrap();
    let before = counts(&pg);
    let (code, out, err) = run(&["store", "copy", "--from", &sqlite_arg(&from), "--to", &url]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("already holds data (audit_events: 52 rows, audit_signatures: 2 rows)")
            && err.contains("never merged")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(counts(&pg), before);

    let to = dir.path().join("to.db");
    let (code, out, err) = run(&[
        "store",
        "copy",
        "--from",
        &sqlite_arg(&from),
        "--to",
        &sqlite_arg(&to),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&[
        "store",
        "copy",
        "--from",
        &url,
        "--to",
        &to.display().to_string(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("audit_events: 52 rows"), "{err}");
    assert_eq!(rows(&from), rows(&to));
}

/// SQLite -> PostgreSQL -> SQLite: every row of every table comes back as it was.
#[test]
fn a_round_trip_through_postgres_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let (from, back) = (dir.path().join("from.db"), dir.path().join("back.db"));
    coordinator_db(&from, 1_234);
    rusqlite::Connection::open(&from)
        .unwrap()
        .execute_batch(ROWS)
        .unwrap();
    let url = fresh_database("copy_round_trip");
    let (code, out, err) = run(&["store", "copy", "--from", &sqlite_arg(&from), "--to", &url]);
    assert_eq!(code, 0, "to PostgreSQL: {out}{err}");
    let (code, out, err) = run(&[
        "store",
        "copy",
        "--from",
        &url,
        "--to",
        &sqlite_arg(&back),
        "--json",
    ]);
    assert_eq!(code, 0, "back to SQLite: {out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["committed"], true);
    assert_eq!(report["verify"]["ok"], true, "{out}");
    assert_eq!(report["tables"]["tasks"], 3);
    assert_eq!(report["tables"]["overseer_lock"], 1);
    let (was, is) = (rows(&from), rows(&back));
    for t in TABLES {
        // The fleet's table fills only while a coordinator serves; the rest all hold rows.
        if t.name != "coordinators" {
            assert!(!was[t.name].is_empty(), "{} has rows to copy", t.name);
        }
        assert_eq!(was[t.name], is[t.name], "table {}", t.name);
    }
}

/// A chain that does not verify is not copied: nothing is written, exit 1.
#[test]
fn a_chain_that_does_not_verify_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from.db"), dir.path().join("to.db"));
    coordinator_db(&from, 30);
    // An attacker with the file: the append-only trigger dropped, an event edited.
    rusqlite::Connection::open(&from)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER audit_events_no_update;
             UPDATE audit_events SET subject = 'forged' WHERE seq = 7;",
        )
        .unwrap();
    let (code, out, err) = run(&[
        "store",
        "copy",
        "--from",
        &sqlite_arg(&from),
        "--to",
        &sqlite_arg(&to),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("audit chain does NOT verify on the target: first bad event 7")
            && out.contains("nothing was written"),
        "{out}"
    );
    let counts = Store::open_existing(&Location::File(to))
        .unwrap()
        .table_counts()
        .unwrap();
    assert!(counts.iter().all(|(_, n)| *n == 0), "{counts:?}");
}
