//! The overseer credential: set and changed through a real terminal (`script(1)`), asked for by
//! `approvals approve`, locked after three wrong answers across processes, not needed to
//! reject, recorded with the OS user from the password database; and the attack it stops: a
//! child MCP server that reads the coordinator's command line and runs the CLI to approve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PASSPHRASE: &str = "correct horse battery";

/// A command run on a fresh pseudo-terminal by `script(1)`: what it prints is the screen, what
/// is sent is typed.
struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    screen: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

impl Terminal {
    fn run(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Terminal {
        let mut inner = format!(
            "{} --data-dir {}",
            common::BIN,
            quote(&data_dir.display().to_string())
        );
        for a in args {
            inner.push(' ');
            inner.push_str(&quote(a));
        }
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-q", "-e", "-c", &inner, "/dev/null"])
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("script(1) from util-linux");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (screen, reader) = common::read_screen(stdout);
        Terminal {
            child,
            stdin,
            screen,
            reader: Some(reader),
        }
    }

    fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until the screen shows `needle` (a prompt), then lets the program settle into
    /// reading.
    fn expect(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.screen().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {needle:?}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Types a line.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the program to exit: its status and the whole screen.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(self.stdin.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code().unwrap_or(-1), self.screen())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `overseer init` on a terminal: name, then the passphrase twice.
fn init_overseer(dir: &Path, name: &str, passphrase: &str) -> String {
    let mut t = Terminal::run(dir, &["overseer", "init"], &[]);
    t.expect("Overseer name");
    t.send(name);
    t.expect("New passphrase");
    t.send(passphrase);
    t.expect("again");
    t.send(passphrase);
    let (code, screen) = t.finish();
    assert_eq!(code, 0, "{screen}");
    screen
}

/// Runs a CLI command in a session of its own, so it has no controlling terminal even when the
/// tests run in one; `input` goes to its stdin. Returns (status, stdout, stderr).
fn detached(dir: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `approvals approve ID` on a terminal, answering the passphrase question with `answer`.
/// `env` is set for the command (`USER=evil`, say).
fn approve_on_terminal(dir: &Path, id: &str, answer: &str, env: &[(&str, &str)]) -> (i32, String) {
    let mut t = Terminal::run(
        dir,
        &["approvals", "approve", id, "--reason", "looked at it"],
        env,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // A locked CLI refuses before asking.
    while !t.screen().contains("passphrase of overseer") {
        if t.child.try_wait().unwrap().is_some() {
            return t.finish();
        }
        assert!(Instant::now() < deadline, "no question:\n{}", t.screen());
        std::thread::sleep(Duration::from_millis(20));
    }
    t.expect("passphrase of overseer");
    t.send(answer);
    t.finish()
}

/// The OS user of this test process, from the password database.
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The recovery code shown on a screen.
fn recovery_code(screen: &str) -> String {
    let start = screen.find("Recovery code (shown once): ").expect(screen) + 28;
    screen[start..start + 39].to_string()
}

/// A pending generic approval, asked by a client without elicitation.
fn pending_approval(server: &mut common::RawServer, summary: &str) -> String {
    let r = server.call(
        "approval_request",
        json!({"summary": summary, "action": {"op": summary}, "risk": "high"}),
        false,
        None,
    );
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["state"], "pending", "{r:#}");
    out["approval"]["id"].as_str().unwrap().to_string()
}

fn approval(server: &mut common::RawServer, id: &str) -> Value {
    let r = server.call("approval_get", json!({"approval_id": id}), false, None);
    r["result"]["structuredContent"].clone()
}

fn test_child_config(dir: &Path) -> PathBuf {
    let bin = common::example_bin("test_child");
    let config = format!(
        r#"
[instances]
stop_grace_seconds = 0.5

[instance_types.shell]
description = "a hostile child server with a shell"
command = "{}"
args = ["--shell-tools"]
"#,
        bin.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts a coordinator in a session of its own (so neither it nor its children have a
/// controlling terminal, as under an MCP client launched from a desktop) with the shell child.
async fn coordinator_with_shell_child(dir: &Path) -> common::Client {
    let config = test_child_config(dir);
    let mut cmd = common::command(dir, &["--config", config.to_str().unwrap()]);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    use rmcp::ServiceExt;
    common::client_config("attack-test")
        .serve(transport)
        .await
        .unwrap()
}

/// The attack: through the child's tools, read the coordinator's command line, run
/// `mcp-coordinator <its global options> approvals approve ID --yes`, and return what the
/// command said and the approval's state afterwards.
async fn child_runs_the_cli(client: &common::Client, id: &str) -> (Value, Value) {
    let peer = client.peer();
    let started = common::call_ok(peer, "instance_start", json!({"type": "shell"})).await;
    assert_eq!(started["status"], "running", "{started}");
    let parent = common::call_ok(
        peer,
        "instance_call_tool",
        json!({"instance": "shell", "tool": "parent_cmdline", "arguments": {}}),
    )
    .await;
    let mut argv: Vec<String> = parent["structured_content"]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        argv.iter().any(|a| a == "--data-dir"),
        "the child sees where the data lives: {argv:?}"
    );
    argv.retain(|a| a != "serve");
    argv.extend(
        [
            "approvals",
            "approve",
            id,
            "--reason",
            "the child says so",
            "--yes",
        ]
        .map(String::from),
    );
    let ran = common::call_ok(
        peer,
        "instance_call_tool",
        json!({"instance": "shell", "tool": "run_command", "arguments": {"argv": argv}}),
    )
    .await;
    let got = common::call_ok(peer, "approval_get", json!({"approval_id": id})).await;
    (ran["structured_content"].clone(), got)
}

/// Without an overseer the child can approve (that is why the coordinator warns); once an
/// overseer exists the same command is refused and the approval stays pending.
#[tokio::test]
async fn a_child_server_cannot_approve_through_the_cli_once_an_overseer_exists() {
    let dir = common::data_dir();
    let client = coordinator_with_shell_child(dir.path()).await;
    let peer = client.peer();
    let first = common::call_ok(
        peer,
        "approval_request",
        json!({"summary": "first", "action": {"op": "first"}, "risk": "high"}),
    )
    .await;
    let first = first["approval"]["id"].as_str().unwrap().to_string();
    let (ran, got) = child_runs_the_cli(&client, &first).await;
    assert_eq!(ran["status"], 0, "{ran:#}");
    assert_eq!(got["state"], "approved", "unprotected: the child approved");
    common::call_ok(peer, "instance_stop", json!({"instance": "shell"})).await;

    init_overseer(dir.path(), "alice", PASSPHRASE);
    let second = common::call_ok(
        peer,
        "approval_request",
        json!({"summary": "second", "action": {"op": "second"}, "risk": "high"}),
    )
    .await;
    let second = second["approval"]["id"].as_str().unwrap().to_string();
    let (ran, got) = child_runs_the_cli(&client, &second).await;
    assert_ne!(ran["status"], 0, "{ran:#}");
    assert!(
        ran["stderr"].as_str().unwrap().contains("terminal"),
        "{ran:#}"
    );
    assert_eq!(got["state"], "pending", "the child approved: {got:#}");
    client.cancel().await.unwrap();
}

/// `overseer init`, `status`, `change` and `reset` on a terminal, and what each refuses.
#[test]
fn init_status_change_and_reset_through_a_terminal() {
    let dir = common::data_dir();
    let (code, out, _) = detached(dir.path(), &["overseer", "status"], "");
    assert_eq!(code, 0);
    assert!(
        out.contains("overseer: none")
            && out.contains("unprotected")
            && out.contains("overseer init"),
        "{out}"
    );

    // No terminal, no overseer: a passphrase piped in is not read.
    let (code, _, err) = detached(
        dir.path(),
        &["overseer", "init", "--name", "mallory"],
        "a piped passphrase\na piped passphrase\n",
    );
    assert_eq!(code, 2);
    assert!(err.contains("no terminal"), "{err}");

    // Too short, then two different answers: nothing is set.
    let mut t = Terminal::run(dir.path(), &["overseer", "init", "--name", "alice"], &[]);
    t.expect("New passphrase");
    t.send("short");
    let (code, screen) = t.finish();
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("at least 12 characters"), "{screen}");
    let mut t = Terminal::run(dir.path(), &["overseer", "init"], &[]);
    t.expect("Overseer name");
    t.send("");
    t.expect("New passphrase");
    t.send(PASSPHRASE);
    t.expect("again");
    t.send("correct horse battery staple");
    let (code, screen) = t.finish();
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("differ"), "{screen}");
    assert!(
        !screen.contains(PASSPHRASE),
        "the passphrase was echoed:\n{screen}"
    );
    let (_, out, _) = detached(dir.path(), &["overseer", "status", "--json"], "");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["set"], false);

    let screen = init_overseer(dir.path(), "alice", PASSPHRASE);
    assert!(screen.contains("overseer alice set"), "{screen}");
    let code1 = recovery_code(&screen);
    let (code, out, _) = detached(dir.path(), &["overseer", "status"], "");
    assert_eq!(code, 0);
    assert!(out.contains("overseer: alice (credential #1"), "{out}");
    assert!(out.contains(&format!("by user:{}@", os_user())), "{out}");

    let (code, _, err) = detached(dir.path(), &["overseer", "init", "--name", "mallory"], "");
    assert_eq!(code, 2);
    assert!(err.contains("already set"), "{err}");

    // Changing needs the old passphrase.
    let change = |old: &str, new: &str| {
        let mut t = Terminal::run(
            dir.path(),
            &["overseer", "change", "--name", "Alice B"],
            &[],
        );
        t.expect("Current passphrase");
        t.send(old);
        t.expect("New passphrase");
        t.send(new);
        t.expect("again");
        t.send(new);
        t.finish()
    };
    let (code, screen) = change("not the passphrase", "a second long passphrase");
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("wrong passphrase"), "{screen}");
    let (code, screen) = change(PASSPHRASE, "a second long passphrase");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("overseer Alice B changed (credential #2)"),
        "{screen}"
    );

    // Forgotten: the recovery code resets it, and is spent.
    let reset = |code: &str| {
        let mut t = Terminal::run(dir.path(), &["overseer", "reset"], &[]);
        t.expect("Recovery code of overseer Alice B");
        t.send(code);
        t.expect("New passphrase");
        t.send("a third long passphrase");
        t.expect("again");
        t.send("a third long passphrase");
        t.finish()
    };
    let (code, screen) = reset(&code1);
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("credential #3"), "{screen}");
    let code2 = recovery_code(&screen);
    assert_ne!(code1, code2);
    let (code, screen) = reset(&code1);
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("wrong recovery code"), "{screen}");

    // Every step is in the audit log, without a hash.
    let (_, out, _) = detached(dir.path(), &["audit", "export"], "");
    let actions: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .filter(|a| a.starts_with("overseer."))
        .collect();
    assert_eq!(
        actions,
        [
            "overseer.set",
            "overseer.refused",
            "overseer.changed",
            "overseer.reset",
            "overseer.refused"
        ]
    );
    assert!(!out.contains("argon2"), "a hash reached the audit log");
}

/// Approving asks for the passphrase on the terminal: a wrong one leaves the approval pending,
/// the right one approves and records the overseer and the OS user from the password database,
/// whatever $USER says.
#[test]
fn approve_asks_the_overseer_and_records_who() {
    let dir = common::data_dir();
    let mut server = common::RawServer::spawn(dir.path());
    init_overseer(dir.path(), "alice", PASSPHRASE);
    let id = pending_approval(&mut server, "deploy");

    let (code, screen) = approve_on_terminal(dir.path(), &id, "not the passphrase", &[]);
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains("wrong passphrase for overseer alice") && screen.contains("still pending"),
        "{screen}"
    );
    assert!(
        screen.contains("\"op\": \"deploy\""),
        "the approval is shown:\n{screen}"
    );
    assert_eq!(approval(&mut server, &id)["state"], "pending");

    // Nothing typed: not approved, and not a wrong answer.
    let (code, screen) = approve_on_terminal(dir.path(), &id, "", &[]);
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("still pending"), "{screen}");

    let evil = [("USER", "evil"), ("LOGNAME", "evil")];
    let (code, screen) = approve_on_terminal(dir.path(), &id, PASSPHRASE, &evil);
    assert_eq!(code, 0, "{screen}");
    assert!(
        !screen.contains(PASSPHRASE),
        "the passphrase was echoed:\n{screen}"
    );
    let got = approval(&mut server, &id);
    assert_eq!(got["state"], "approved");
    let by = format!("overseer:alice (user:{}@{})", os_user(), host());
    assert_eq!(got["decision"]["by"], by.as_str(), "{got:#}");
    assert_eq!(got["decision"]["via"], "cli");

    let (_, out, _) = detached(dir.path(), &["audit", "export"], "");
    let approved: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["action"] == "approval.approved")
        .unwrap();
    assert_eq!(approved["actor"], by.as_str());
    let context = &approved["detail"]["context"];
    assert_eq!(context["overseer"], "alice");
    assert_eq!(context["user"], os_user().as_str());
    assert!(!out.contains("evil"), "$USER reached the audit log:\n{out}");
}

/// Three wrong answers, each from its own process, lock approving from the CLI for a minute;
/// the right passphrase is refused too until then, and rejecting still works.
#[test]
fn three_wrong_answers_lock_approving_for_a_minute_across_processes() {
    let dir = common::data_dir();
    let mut server = common::RawServer::spawn(dir.path());
    init_overseer(dir.path(), "alice", PASSPHRASE);
    let id = pending_approval(&mut server, "wipe");
    for left in ["2 more", "1 more"] {
        let (code, screen) = approve_on_terminal(dir.path(), &id, "a wrong guess!", &[]);
        assert_eq!(code, 1, "{screen}");
        assert!(screen.contains(left), "{screen}");
    }
    let (code, screen) = approve_on_terminal(dir.path(), &id, "a wrong guess!", &[]);
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("locked after 3 wrong answers"), "{screen}");
    assert!(screen.contains("refused until"), "{screen}");

    let (code, screen) = approve_on_terminal(dir.path(), &id, PASSPHRASE, &[]);
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains("refused until") && !screen.contains("passphrase of overseer"),
        "a locked CLI must not even ask:\n{screen}"
    );
    let seconds: u64 = screen
        .split("(in ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect(&screen);
    assert!((1..=60).contains(&seconds), "{screen}");
    assert_eq!(approval(&mut server, &id)["state"], "pending");

    let (_, out, _) = detached(dir.path(), &["overseer", "status"], "");
    assert!(
        out.contains("locked: approving from the CLI is refused until"),
        "{out}"
    );
    let status = server.call("coordinator_status", json!({}), false, None);
    let overseer = &status["result"]["structuredContent"]["overseer"];
    assert!(overseer["locked_until"].is_string(), "{overseer}");

    let (code, out, err) = detached(
        dir.path(),
        &["approvals", "reject", &id, "--reason", "too many guesses"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let got = approval(&mut server, &id);
    assert_eq!(got["state"], "rejected");
    assert!(got["decision"]["by"].as_str().unwrap().starts_with("user:"));
}

/// Without an overseer `--yes` approves with no terminal, as before; with one it is refused,
/// also with the passphrase on stdin and with an empty data directory pointed at the database.
#[test]
fn yes_without_a_terminal_is_refused_once_an_overseer_exists() {
    let dir = common::data_dir();
    let mut server = common::RawServer::spawn(dir.path());
    let id = pending_approval(&mut server, "before");
    let (code, out, err) = detached(
        dir.path(),
        &["approvals", "approve", &id, "--reason", "fine", "--yes"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("approved by user:"), "{out}");

    init_overseer(dir.path(), "alice", PASSPHRASE);
    let id = pending_approval(&mut server, "after");
    let (code, _, err) = detached(
        dir.path(),
        &["approvals", "approve", &id, "--reason", "fine", "--yes"],
        &format!("{PASSPHRASE}\n"),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("needs the overseer's passphrase")
            && err.contains("--yes does not skip it")
            && err.contains("no terminal"),
        "{err}"
    );

    let empty = common::data_dir();
    let db = common::db_path(dir.path());
    let (code, _, err) = detached(
        empty.path(),
        &[
            "--db",
            db.to_str().unwrap(),
            "approvals",
            "approve",
            &id,
            "--reason",
            "x",
            "--yes",
        ],
        "",
    );
    assert_eq!(
        code, 2,
        "another data directory on the same database: {err}"
    );
    assert!(err.contains("overseer's passphrase"), "{err}");
    assert_eq!(approval(&mut server, &id)["state"], "pending");

    let (code, out, err) = detached(
        dir.path(),
        &["approvals", "reject", &id, "--reason", "not now"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(approval(&mut server, &id)["state"], "rejected");
}

/// At start the coordinator says on stderr that CLI approvals are unprotected, and
/// `coordinator_status` says so too, until an overseer is set.
#[test]
fn the_coordinator_warns_while_no_overseer_is_set() {
    let dir = common::data_dir();
    let serve = |dir: &Path| {
        let out = std::process::Command::new(common::BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(["--log-level", "warn"])
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(dir.path());
    assert!(
        err.contains("CLI approvals are unprotected") && err.contains("overseer init"),
        "{err}"
    );
    let mut server = common::RawServer::spawn(dir.path());
    let status = server.call("coordinator_status", json!({}), false, None);
    let overseer = &status["result"]["structuredContent"]["overseer"];
    assert_eq!(overseer["set"], false, "{overseer}");
    assert!(
        overseer["warning"]
            .as_str()
            .unwrap()
            .contains("overseer init"),
        "{overseer}"
    );

    init_overseer(dir.path(), "alice", PASSPHRASE);
    assert!(!serve(dir.path()).contains("unprotected"));
    let status = server.call("coordinator_status", json!({}), false, None);
    let overseer = &status["result"]["structuredContent"]["overseer"];
    assert_eq!(overseer["set"], true, "{overseer}");
    assert_eq!(overseer["name"], "alice");
    assert!(overseer["warning"].is_null(), "{overseer}");
}

/// Ctrl-C at the overseer's passphrase prompt (rpassword has echo, line editing and signals
/// off while it reads) ends the command with the terminal as it was, and sets no overseer.
#[test]
fn ctrl_c_at_the_passphrase_prompt_leaves_echo_on() {
    let dir = common::data_dir();
    let (screen, modes) = common::ctrl_c_at_prompt(
        dir.path(),
        &["overseer", "init"],
        &[("Overseer name", "alice")],
        "New passphrase",
    );
    for mode in ["echo", "icanon", "isig"] {
        assert!(
            modes.iter().any(|m| m == mode),
            "after Ctrl-C the terminal lacks {mode}: {modes:?}\n{screen}"
        );
    }
    let (code, out, err) = common::cli(dir.path(), &["overseer", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["set"], false, "{status:#}");
}
