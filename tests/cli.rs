//! The command line: `--help` on every command teaches, `audit verify` and `audit export`
//! work on the database a running server is using, and bad settings fail clearly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};

#[test]
fn help_explains_every_command() {
    let dir = common::data_dir();
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["approvals", "--help"],
            &["list", "show", "approve", "reject"],
        ),
        (
            &["approvals", "approve", "--help"],
            &["--reason", "--yes", "confirm", "final", "expired"],
        ),
        (
            &["approvals", "list", "--help"],
            &["--state", "pending", "all", "--json"],
        ),
        (
            &["--help"],
            &[
                "serve",
                "audit",
                "--db",
                "--data-dir",
                "--config",
                "--log-level",
                "Inspector",
            ],
        ),
        (
            &["serve", "--help"],
            &["stdin", "initialize", "2026-07-28", "status 0", ":memory:"],
        ),
        (&["audit", "--help"], &["verify", "export"]),
        (
            &["audit", "verify", "--help"],
            &["Exits 0", "--json", "signature"],
        ),
        (
            &["audit", "export", "--help"],
            &["--format", "jsonl", "--output", "half-written"],
        ),
    ];
    for (args, needles) in cases {
        let (code, out, err) = common::cli(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for n in needles {
            assert!(
                out.contains(n),
                "`mcp-coordinator {}` does not mention {n:?}:\n{out}",
                args.join(" ")
            );
        }
    }
    let (code, out, _) = common::cli(dir.path(), &["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("mcp-coordinator "));

    // `--data-dir` says everything the directory holds, by the names the code uses.
    let (_, help, _) = common::cli(dir.path(), &["--help"]);
    let data_dir_help = help
        .split("--data-dir <DIR>")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .unwrap_or_default();
    for held in [
        mcp_coordinator::config::DB_FILE,
        mcp_coordinator::audit::signer::KEY_FILE,
        mcp_coordinator::agent::token::KEY_FILE,
        mcp_coordinator::secret::KEY_FILE,
        "backups/",
    ] {
        assert!(
            data_dir_help.contains(held),
            "--data-dir help does not mention {held}:\n{data_dir_help}"
        );
    }
}

#[tokio::test]
async fn verify_and_export_work_while_a_server_runs() {
    let dir = common::data_dir();
    let client = common::connect(dir.path(), &[], common::Era::Legacy).await;
    for _ in 0..5 {
        common::call_ok(&client, "coordinator_status", json!({})).await;
    }
    // The server is still connected and holding its database open (its audit writer has
    // written the calls' events).
    common::settle_audit(dir.path());
    let (code, out, err) = common::cli(dir.path(), &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("audit chain intact: 5 events"), "{out}");

    let (code, out, err) = common::cli(dir.path(), &["audit", "export", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 1, "oldest first");
        assert_eq!(e["subject"], "coordinator_status");
    }

    let file = dir.path().join("export.jsonl");
    let (code, _, err) = common::cli(
        dir.path(),
        &["audit", "export", "--output", file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exported 5 events"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 5);
    assert!(!dir.path().join("export.partial").exists());

    // The server keeps working after the CLI was there.
    common::call_ok(&client, "coordinator_status", json!({})).await;
    client.cancel().await.unwrap();
}

#[test]
fn bad_settings_fail_with_a_clear_message() {
    let dir = common::data_dir();
    let missing = dir.path().join("nope.toml");
    let (code, _, err) = common::cli(
        dir.path(),
        &["--config", missing.to_str().unwrap(), "audit", "verify"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read config file") && err.contains("nope.toml"),
        "{err}"
    );
    // The cause once, not once from the message and again from the error chain.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[tools]\ndisabled_groups = [\"everything\"]\n").unwrap();
    let (code, _, err) = common::cli(dir.path(), &["--config", bad.to_str().unwrap(), "serve"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("everything") && err.contains("`system`"),
        "{err}"
    );

    let (code, out, err) = common::cli(dir.path(), &["serve", "--log-level", "loud=="]);
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("--log-level") && out.is_empty(), "{err}");

    let (code, _, err) = common::cli(dir.path(), &["audit", "export", "--format", "csv"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values: jsonl"), "{err}");
}

#[test]
fn default_database_is_created_in_the_data_dir_with_a_private_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::data_dir();
    let data = dir.path().join("fresh/data");
    // `serve` with stdin at its end starts, creates what it needs, and stops.
    let (code, _, err) = common::cli(&data, &["serve"]);
    assert_eq!(code, 0, "{err}");
    assert!(data.join("coordinator.db").is_file());
    let mode = std::fs::metadata(data.join("audit-signing-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "data dir is private");
}

#[test]
fn help_explains_secrets_and_exec() {
    let dir = common::data_dir();
    let cases: [(&[&str], &[&str]); 7] = [
        (&["--help"], &["secrets", "exec"]),
        (
            &["secrets", "--help"],
            &[
                "set",
                "list",
                "rm",
                "rotate-key",
                "MCP_COORDINATOR_MASTER_KEY",
                "master.key",
                "0600",
                "AES-256-GCM",
                "Exit status",
                "Examples:",
            ],
        ),
        (
            &["secrets", "set", "--help"],
            &[
                "stdin",
                "trailing newline",
                "not echoed",
                "empty",
                "A-Z a-z 0-9 _ . -",
            ],
        ),
        (
            &["secrets", "list", "--help"],
            &["last four", "unreadable", "--json"],
        ),
        (&["secrets", "rm", "--help"], &["Exits 1"]),
        (
            &["secrets", "rotate-key", "--help"],
            &[
                "all or nothing",
                "master.key.next",
                "MCP_COORDINATOR_NEW_MASTER_KEY",
                "MCP_COORDINATOR_MASTER_KEY",
            ],
        ),
        (
            &["exec", "--help"],
            &[
                "--secret",
                "NAME[=ENV_VAR]",
                "mcpServers",
                "stdout",
                "exits 2",
                "removed",
                "--data-dir",
            ],
        ),
    ];
    for (args, needles) in cases {
        let (code, out, err) = common::cli(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for n in needles {
            assert!(
                out.contains(n),
                "`mcp-coordinator {}` does not mention {n:?}:\n{out}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn help_explains_the_overseer() {
    let dir = common::data_dir();
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--help"], &["overseer init", "First run"]),
        (
            &["overseer", "--help"],
            &[
                "init",
                "status",
                "change",
                "reset",
                "/dev/tty",
                "argon2id",
                "3 wrong answers",
                "60 seconds",
                "same OS user",
                "another OS user",
            ],
        ),
        (
            &["overseer", "init", "--help"],
            &["--name", "twice", "recovery code", "12 characters"],
        ),
        (
            &["overseer", "status", "--help"],
            &["--json", "unprotected"],
        ),
        (
            &["overseer", "change", "--help"],
            &["current passphrase", "--name"],
        ),
        (
            &["overseer", "reset", "--help"],
            &["recovery code", "Lost both", "--db"],
        ),
        (
            &["approvals", "approve", "--help"],
            &[
                "overseer's passphrase",
                "/dev/tty",
                "--yes does not skip it",
                "no terminal",
                "60 seconds",
                "overseer:NAME (user:OS@HOST)",
                "not $USER",
            ],
        ),
        (&["approvals", "reject", "--help"], &["Never needs"]),
    ];
    for (args, needles) in cases {
        let (code, out, err) = common::cli(dir.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for n in needles {
            assert!(
                out.contains(n),
                "`mcp-coordinator {}` does not mention {n:?}:\n{out}",
                args.join(" ")
            );
        }
    }
}

/// A read-only command pointed at a database that does not exist (a typo in `--db`) says so,
/// naming the path, and creates nothing: no directory, no file, no empty database that would
/// answer "no pending approvals".
#[test]
fn read_only_commands_refuse_a_database_that_does_not_exist() {
    let dir = common::data_dir();
    let typo = dir.path().join("typo/dir/x.db");
    let commands: [&[&str]; 8] = [
        &["approvals", "list"],
        &["approvals", "show", "apr_0"],
        &["audit", "verify"],
        &["audit", "verify", "--json"],
        &["audit", "export"],
        &["secrets", "list"],
        &["secrets", "rm", "gh_token"],
        &["secrets", "rotate-key"],
    ];
    for args in commands {
        let mut argv = vec!["--db", typo.to_str().unwrap()];
        argv.extend_from_slice(args);
        let (code, out, err) = common::cli(dir.path(), &argv);
        assert_eq!(code, 2, "{args:?} succeeded on a missing database: {out}");
        assert!(
            err.contains(&format!("database {} does not exist", typo.display())),
            "{args:?}: {err}"
        );
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert!(
            !dir.path().join("typo").exists(),
            "{args:?} created the directory of a missing database"
        );
    }
    // `overseer status` answers (no overseer, and how to set one) but creates nothing either.
    let mut argv = vec!["--db", typo.to_str().unwrap()];
    argv.extend_from_slice(&["overseer", "status"]);
    let (code, out, err) = common::cli(dir.path(), &argv);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("overseer: none") && out.contains("not created yet"),
        "{out}"
    );
    assert!(
        !dir.path().join("typo").exists(),
        "overseer status created it"
    );
    // Without --db, the default database in a data dir nobody used yet: the same.
    let fresh = dir.path().join("unused");
    let (code, _, err) = common::cli(&fresh, &["approvals", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!fresh.join("coordinator.db").exists());
}

/// `--db` with a URL of a backend this build does not have is refused by every command, and a
/// PostgreSQL URL that cannot be reached fails with an error that says so; before anything is
/// created, and no error repeats the password.
#[test]
fn a_database_url_is_refused_or_reported_by_every_command() {
    let dir = common::data_dir();
    for url in [
        // Nothing listens on port 1 of this machine.
        "postgres://coord:hunter2secret@127.0.0.1:1/coord",
        "mysql://localhost/x",
        "sqlite://x.db",
    ] {
        let scheme = url.split_once("://").unwrap().0;
        for args in [
            &["serve"][..],
            &["approvals", "list"],
            &["audit", "verify"],
            &["secrets", "list"],
            &["overseer", "status"],
        ] {
            let mut argv = vec!["--db", url];
            argv.extend_from_slice(args);
            let (code, out, err) = common::cli(dir.path(), &argv);
            assert_ne!(code, 0, "{url} {args:?}: {out}{err}");
            let said = if scheme == "postgres" {
                "cannot connect to postgres://coord:***@127.0.0.1:1/coord".to_string()
            } else {
                format!("`{scheme}://...` is a URL this build has no backend for")
            };
            assert!(err.contains(&said), "{url} {args:?}: {err}");
            assert!(!err.contains("hunter2"), "the password was printed: {err}");
        }
    }
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(made.is_empty(), "a URL made {made:?}");
}
