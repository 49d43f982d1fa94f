//! Tests of `process.rs`: spawning, stderr capture, limits, termination of the group and
//! its escaped descendants, and `/proc` statistics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::instance::child::limits::*;
use crate::instance::child::procfs::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;
use tokio::io::AsyncReadExt;

fn spec(program: &str, args: &[&str]) -> SpawnSpec {
    SpawnSpec {
        program: program.to_owned(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::from([("PATH".to_owned(), "/usr/bin:/bin".to_owned())]),
        cwd: None,
        limits: Limits::default(),
        label: "test".to_owned(),
        redact: crate::instance::redact::Redactor::default(),
    }
}

fn sh(script: &str) -> SpawnSpec {
    spec("sh", &["-c", script])
}

async fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), stdout.read_line(&mut line))
        .await
        .expect("child wrote no line within 5 s")
        .unwrap();
    line.trim_end().to_owned()
}

async fn read_all(stdout: ChildStdout) -> String {
    let mut out = String::new();
    let mut stdout = stdout;
    tokio::time::timeout(Duration::from_secs(5), stdout.read_to_string(&mut out))
        .await
        .expect("child stdout not closed within 5 s")
        .unwrap();
    out
}

fn is_running(pid: u32) -> bool {
    read_stat(pid).is_some_and(|s| s.is_alive())
}

/// Polls for up to 2 s until `pid` is gone or a zombie.
async fn stopped_within_2s(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn group_empty_within_2s(pgid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !group_members(pgid).is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn child_sees_exactly_the_given_env() {
    let mut s = spec("env", &[]);
    s.env.insert("FOO".into(), "bar baz".into());
    s.env.insert("EMPTY".into(), String::new());
    let (mut child, _stdin, stdout) = spawn(&s).unwrap();
    let out = read_all(stdout).await;
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    assert_eq!(got, ["EMPTY=", "FOO=bar baz", "PATH=/usr/bin:/bin"]);
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn child_leads_its_own_group_and_keeps_argv0() {
    // Without extra arguments, `sh -c` sets $0 to the shell's own argv[0],
    // which must be the name as given, not the resolved /usr/bin/sh.
    let (mut child, _stdin, stdout) = spawn(&sh("echo \"$0\"; exec sleep 30")).unwrap();
    let mut stdout = BufReader::new(stdout);
    assert_eq!(read_line(&mut stdout).await, "sh");
    let stat = read_stat(child.id()).unwrap();
    assert_eq!(stat.pgrp, i64::from(child.id()));
    child.kill_group_now();
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn missing_program_is_not_found_and_named() {
    let err = spawn(&spec("no-such-program-8c1f", &[])).unwrap_err();
    match &err {
        SpawnError::NotFound { program, searched } => {
            assert_eq!(program, "no-such-program-8c1f");
            assert_eq!(searched, "/usr/bin:/bin");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(err.to_string().contains("no-such-program-8c1f"), "{err}");

    let err = spawn(&spec("/nonexistent/dir/prog", &[])).unwrap_err();
    assert!(
        matches!(&err, SpawnError::NotFound { program, .. } if program == "/nonexistent/dir/prog"),
        "{err:?}"
    );

    // An empty PATH in the spec is searched as given: nothing is found.
    let mut s = spec("sh", &[]);
    s.env.insert("PATH".into(), String::new());
    assert!(matches!(spawn(&s), Err(SpawnError::NotFound { .. })));
}

#[tokio::test]
async fn program_is_resolved_with_the_spec_path_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello-mcp-test");
    std::fs::write(&script, "#!/bin/sh\necho hello from \"$(pwd)\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut s = spec("hello-mcp-test", &[]);
    s.env.insert(
        "PATH".into(),
        format!("relative/dir::{}:/usr/bin:/bin", dir.path().display()),
    );
    let (mut child, _stdin, stdout) = spawn(&s).unwrap();
    assert!(read_all(stdout).await.starts_with("hello from"));
    assert!(child.wait().await.unwrap().success());

    // A relative path with '/' is taken relative to the child's cwd.
    let mut s = spec("./hello-mcp-test", &[]);
    s.cwd = Some(dir.path().to_path_buf());
    let (mut child, _stdin, stdout) = spawn(&s).unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        read_all(stdout).await.trim(),
        format!("hello from {}", canonical.display())
    );
    assert!(child.wait().await.unwrap().success());

    // A file that exists but is not executable is an Io error, not NotFound.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    let s = spec(plain.to_str().unwrap(), &[]);
    assert!(matches!(spawn(&s), Err(SpawnError::Io { .. })));
}

#[tokio::test]
async fn stderr_tail_keeps_the_last_100_lines() {
    let (mut child, _stdin, _stdout) = spawn(&sh(
        "i=0; while [ $i -lt 500 ]; do echo \"line $i\" >&2; i=$((i+1)); done",
    ))
    .unwrap();
    assert!(child.wait().await.unwrap().success());
    let lines = child.stderr.lines();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0], "line 400");
    assert_eq!(lines[99], "line 499");
    assert_eq!(child.stderr.last(2), "line 498\nline 499");
}

#[tokio::test]
async fn endless_stderr_line_is_cut() {
    let (mut child, _stdin, _stdout) = spawn(&sh(
        "head -c 1048576 /dev/zero | tr '\\0' a >&2; printf '\\nafter\\nno newline' >&2",
    ))
    .unwrap();
    assert!(child.wait().await.unwrap().success());
    let lines = child.stderr.lines();
    assert_eq!(
        lines.len(),
        3,
        "{:?}",
        lines.iter().map(String::len).collect::<Vec<_>>()
    );
    assert_eq!(lines[0], "a".repeat(MAX_LINE_CHARS));
    assert_eq!(lines[1], "after");
    assert_eq!(lines[2], "no newline");
}

#[tokio::test]
async fn drain_handles_crlf_invalid_utf8_wide_chars_and_masks_secrets() {
    let mut input: Vec<u8> = b"one hunter2-secret\r\ntwo\xff\n\n".to_vec();
    input.extend("é".repeat(3000).as_bytes());
    input.extend(b"\nlast");
    let tail = StderrTail::default();
    drain_stderr(
        &input[..],
        tail.clone(),
        "t".into(),
        crate::instance::redact::Redactor::new(["hunter2-secret"]),
    )
    .await;
    let lines = tail.lines();
    assert_eq!(lines[0], "one [REDACTED]");
    assert_eq!(lines[1], "two\u{fffd}");
    assert_eq!(lines[2], "");
    assert_eq!(lines[3], "é".repeat(MAX_LINE_CHARS));
    assert_eq!(lines[4], "last");
    assert_eq!(lines.len(), 5);
    assert_eq!(tail.last(10), lines.join("\n"));
    assert_eq!(tail.last(0), "");
}

#[tokio::test]
async fn rlimits_apply_to_the_child() {
    let mut s = sh("ulimit -n; ulimit -t; grep 'Max address space' /proc/self/limits");
    s.limits = Limits {
        address_space_mb: Some(512),
        cpu_seconds: Some(7),
        open_files: Some(64),
    };
    let (mut child, _stdin, stdout) = spawn(&s).unwrap();
    let out = read_all(stdout).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "64");
    assert_eq!(lines[1], "7");
    let bytes = (512 * BYTES_PER_MB).to_string();
    assert_eq!(
        lines[2].split_whitespace().filter(|w| *w == bytes).count(),
        2,
        "{}",
        lines[2]
    );
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn limit_above_own_hard_limit_is_refused() {
    let mut s = spec("true", &[]);
    s.limits.open_files = Some(u64::MAX - 1);
    let err = spawn(&s).unwrap_err();
    assert!(err.to_string().contains("open_files"), "{err}");
}

#[tokio::test]
async fn terminate_kills_a_child_ignoring_sigterm_after_the_grace() {
    let (mut child, _stdin, stdout) = spawn(&sh("trap '' TERM; echo ready; sleep 30")).unwrap();
    let mut stdout = BufReader::new(stdout);
    assert_eq!(read_line(&mut stdout).await, "ready");
    let grace = Duration::from_millis(300);
    let start = Instant::now();
    let outcome = child.terminate(grace).await;
    assert!(start.elapsed() >= grace);
    let TerminateOutcome::Killed(status) = outcome else {
        panic!("expected Killed, got {outcome:?}");
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(group_empty_within_2s(child.id()).await);
    assert!(group_stats(child.id()).is_none());
    // Further calls are harmless and report the recorded status.
    assert_eq!(
        child.terminate(grace).await,
        TerminateOutcome::AlreadyExited(status)
    );
    child.kill_group_now();
    assert_eq!(child.wait().await.unwrap(), status);
}

#[tokio::test]
async fn terminate_kills_a_grandchild_that_outlives_the_leader() {
    // The background sleep inherits the ignored SIGTERM; the shell then
    // restores the default so that it dies on SIGTERM itself.
    let (mut child, _stdin, stdout) =
        spawn(&sh("trap '' TERM; sleep 30 & trap - TERM; echo $!; wait")).unwrap();
    let mut stdout = BufReader::new(stdout);
    let grandchild: u32 = read_line(&mut stdout).await.parse().unwrap();
    let pgid = child.id();
    assert!(group_members(pgid).contains(&grandchild));

    let outcome = child.terminate(Duration::from_secs(5)).await;
    let TerminateOutcome::Exited(status) = outcome else {
        panic!("expected Exited, got {outcome:?}");
    };
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(
        stopped_within_2s(grandchild).await,
        "grandchild {grandchild} still running"
    );
    assert!(
        group_empty_within_2s(pgid).await,
        "{:?}",
        group_members(pgid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_lets_a_cooperative_child_exit_within_the_grace() {
    let (mut child, _stdin, stdout) = spawn(&sh(
        "trap 'echo bye >&2; exit 3' TERM; echo ready; sleep 30 & wait",
    ))
    .unwrap();
    let mut stdout = BufReader::new(stdout);
    assert_eq!(read_line(&mut stdout).await, "ready");
    let start = Instant::now();
    let outcome = child.terminate(Duration::from_secs(10)).await;
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        outcome.status().and_then(|s| s.code()),
        Some(3),
        "{outcome:?}"
    );
    assert!(matches!(outcome, TerminateOutcome::Exited(_)));
    assert_eq!(child.stderr.last(1), "bye");
    assert!(group_empty_within_2s(child.id()).await);
}

#[tokio::test]
async fn terminate_after_exit_reports_already_exited() {
    let (mut child, _stdin, _stdout) = spawn(&sh("exit 4")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_exit().is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = child.terminate(Duration::from_secs(1)).await;
    assert!(matches!(outcome, TerminateOutcome::AlreadyExited(s) if s.code() == Some(4)));
}

#[tokio::test]
async fn group_stats_of_a_running_sleep() {
    let (mut child, _stdin, _stdout) = spawn(&spec("sleep", &["30"])).unwrap();
    let stats = group_stats(child.id()).unwrap();
    assert!(stats.rss_bytes > 0, "{stats:?}");
    assert!(stats.processes >= 1, "{stats:?}");
    assert!(stats.threads >= 1, "{stats:?}");
    assert!(stats.cpu_seconds >= 0.0);
    assert_eq!(group_members(child.id()), [child.id()]);
    assert!(child.try_exit().is_none());
    child.kill_group_now();
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn dropping_the_child_kills_its_group() {
    let (child, _stdin, stdout) = spawn(&sh("sleep 30 & echo $!; wait")).unwrap();
    let mut stdout = BufReader::new(stdout);
    let grandchild: u32 = read_line(&mut stdout).await.parse().unwrap();
    let leader = child.id();
    drop(child);
    assert!(stopped_within_2s(grandchild).await);
    assert!(stopped_within_2s(leader).await);
    assert!(group_empty_within_2s(leader).await);
}

#[tokio::test]
async fn spawn_from_a_short_lived_thread_survives_its_exit() {
    // Spawned from a thread that then ends: the child must
    // not receive the parent-death signal meant for the coordinator.
    let handle = tokio::runtime::Handle::current();
    let (mut child, _stdin, stdout) = std::thread::spawn(move || {
        let _guard = handle.enter();
        spawn(&sh("sleep 0.3; echo alive")).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(read_all(stdout).await.trim(), "alive");
    assert!(child.wait().await.unwrap().success());
}

#[tokio::test]
async fn kill_group_and_pid_alive() {
    assert!(pid_alive(std::process::id()));
    assert!(pid_alive(1));
    assert!(!pid_alive(0));
    assert!(!pid_alive(u32::MAX));
    assert!(!pid_alive(u32::MAX >> 2));
    let (mut child, _stdin, _stdout) = spawn(&spec("sleep", &["30"])).unwrap();
    assert!(pid_alive(child.id()));
    kill_group(child.id());
    assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
    assert!(!pid_alive(child.id()));
    // Refused or harmless: must not signal our own group or init's.
    kill_group(0);
    kill_group(1);
    kill_group(u32::MAX);
}

#[test]
fn spawn_without_a_runtime_is_an_error() {
    assert!(matches!(
        spawn(&spec("true", &[])),
        Err(SpawnError::Io { .. })
    ));
}

#[test]
fn parse_stat_counts_fields_after_the_last_paren() {
    let line =
        "1234 (we ird) (x) 7) S 1 999 999 0 -1 4194304 10 0 0 0 25 17 0 0 20 0 3 0 100 1000 50";
    assert_eq!(
        parse_stat(line),
        Some(ProcStat {
            state: 'S',
            ppid: 1,
            pgrp: 999,
            utime: 25,
            stime: 17,
            threads: 3,
            start: 100,
        })
    );
    assert_eq!(parse_stat("1 (x) S 0"), None);
    assert_eq!(parse_stat("garbage"), None);
    let own = read_stat(std::process::id()).unwrap();
    assert!(own.threads >= 1 && own.is_alive());
}

#[test]
fn group_stats_of_a_missing_leader_is_none() {
    // pid_max is at most 2^22, so this pid cannot exist.
    assert!(group_stats(u32::MAX - 1).is_none());
    assert!(group_members(u32::MAX - 1).is_empty());
}

#[test]
fn address_space_in_mb_becomes_bytes_and_saturates() {
    let plan = LimitPlan::new(&Limits {
        address_space_mb: Some(3),
        ..Limits::default()
    })
    .unwrap();
    assert!(matches!(plan.0[0], Some((Resource::AddressSpace, v)) if v == rlim(3 * BYTES_PER_MB)));
    assert!(plan.0[1].is_none() && plan.0[2].is_none());
    let huge = LimitPlan::new(&Limits {
        address_space_mb: Some(u64::MAX),
        ..Limits::default()
    });
    // Saturates to "unlimited", which only passes if our own hard limit is.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    Resource::AddressSpace.getrlimit(&mut own);
    assert_eq!(huge.is_ok(), own.rlim_max == libc::RLIM_INFINITY);
}
