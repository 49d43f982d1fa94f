//! Concurrent first start: many coordinator processes started at the same moment on a database
//! file that does not exist yet (an MCP client starting its coordinator while a worker and a
//! person's first CLI command start too). Every one must come up, and the schema they leave
//! must be whole: exactly what one process alone creates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use serde_json::Value;

/// Processes per round: servers answering `initialize`, and CLI commands.
const SERVERS: usize = 6;
const CLI: usize = 4;
const ROUNDS: usize = 20;

fn base(data_dir: &Path, db: &Path) -> Command {
    let mut cmd = Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--db")
        .arg(db)
        .args(["--log-level", "error"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG");
    cmd
}

/// A server that answers `initialize` (as an MCP client would start it), then sees stdin
/// close. Returns what went wrong, if anything.
fn server(data_dir: &Path, db: &Path) -> Result<(), String> {
    let mut child = base(data_dir, db)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let init = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "concurrent-start", "version": "1"}}
    });
    let _ = writeln!(stdin, "{init}");
    let _ = stdin.flush();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let reply: Value = serde_json::from_str(&line)
        .map_err(|_| format!("no initialize reply (got {line:?}); stderr: {stderr}"))?;
    if reply["result"]["serverInfo"]["name"].is_null() {
        return Err(format!("initialize failed: {reply}; stderr: {stderr}"));
    }
    if !out.status.success() {
        return Err(format!("serve exited with {}: {stderr}", out.status));
    }
    Ok(())
}

/// A CLI command, which must succeed.
fn cli(data_dir: &Path, db: &Path, args: &[&str]) -> Result<(), String> {
    let out = base(data_dir, db)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The schema as SQLite lists it: every table, index and trigger with its SQL, and the
/// version.
fn schema(db: &Path) -> (i64, Vec<(String, String, String)>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let version = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let objects = conn
        .prepare("SELECT type, name, COALESCE(sql, '') FROM sqlite_master ORDER BY type, name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (version, objects)
}

#[test]
fn processes_started_together_on_a_new_database_all_come_up() {
    // The schema one process alone makes, to compare with.
    let reference = common::data_dir();
    let reference_db = reference.path().join("alone.db");
    cli(reference.path(), &reference_db, &["serve"]).unwrap();
    let expected = schema(&reference_db);
    assert_eq!(
        expected.0,
        mcp_coordinator::store::Store::known_schema_version() as i64
    );

    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let dir = common::data_dir();
        let db = Arc::new(dir.path().join("state/new.db"));
        let data = Arc::new(dir.path().to_path_buf());
        let n = SERVERS + CLI;
        let start = Arc::new(Barrier::new(n));
        let starters: Vec<_> = (0..n)
            .map(|i| {
                let (db, data, start) = (db.clone(), data.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // `overseer status` creates nothing while the file is missing, and
                    // migrates it like any other command once a server has created it.
                    let what = match i % 2 {
                        _ if i < SERVERS => "serve + initialize",
                        0 => "overseer status",
                        _ => "serve (stdin closed)",
                    };
                    let result = match what {
                        "serve + initialize" => server(&data, &db),
                        "overseer status" => cli(&data, &db, &["overseer", "status"]),
                        _ => cli(&data, &db, &["serve"]),
                    };
                    result.map_err(|e| format!("{what}: {e}"))
                })
            })
            .collect();
        for s in starters {
            if let Err(e) = s.join().unwrap() {
                failures.push(format!("round {round}: {e}"));
            }
        }
        assert_eq!(
            schema(&db),
            expected,
            "round {round}: the schema differs from the one a single process makes"
        );
        let (code, out, err) = common::cli(
            dir.path(),
            &["--db", db.to_str().unwrap(), "audit", "verify", "--json"],
        );
        assert_eq!(code, 0, "round {round}: {out}{err}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} processes failed:\n{}",
        failures.len(),
        ROUNDS * (SERVERS + CLI),
        failures.join("\n")
    );
}
