//! The encrypted secret store and `exec`, through the real binary: values go in on stdin and
//! come out only in a child's environment, never on stdout, stderr, the database or the audit
//! log; the key file is private and made only by a write; wrong and missing keys fail closed;
//! rotation keeps every value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use mcp_coordinator::secret::{ENV_KEY, ENV_NEW_KEY, KEY_FILE, NEXT_KEY_FILE, fingerprint};

const KEY_A: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const KEY_B: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

/// What a run of the binary produced.
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How to run the binary: data directory, stdin, and the environment it sees.
struct Run<'a> {
    dir: &'a Path,
    stdin: Option<&'a [u8]>,
    key: Option<&'a str>,
    new_key: Option<&'a str>,
    /// Start from an empty environment (plus PATH and HOME) instead of inheriting this one.
    clean_env: bool,
    /// Every stderr seen, to check no value ever reached it.
    log: Option<&'a std::cell::RefCell<String>>,
}

impl<'a> Run<'a> {
    fn new(dir: &'a Path) -> Self {
        Run {
            dir,
            stdin: None,
            key: None,
            new_key: None,
            clean_env: false,
            log: None,
        }
    }

    fn stdin(mut self, s: &'a str) -> Self {
        self.stdin = Some(s.as_bytes());
        self
    }

    fn stdin_bytes(mut self, s: &'a [u8]) -> Self {
        self.stdin = Some(s);
        self
    }

    fn key(mut self, k: &'a str) -> Self {
        self.key = Some(k);
        self
    }

    fn new_key(mut self, k: &'a str) -> Self {
        self.new_key = Some(k);
        self
    }

    fn clean_env(mut self) -> Self {
        self.clean_env = true;
        self
    }

    fn log(mut self, log: &'a std::cell::RefCell<String>) -> Self {
        self.log = Some(log);
        self
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut cmd = std::process::Command::new(common::BIN);
        if self.clean_env {
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", self.dir);
        }
        cmd.arg("--data-dir")
            .arg(self.dir)
            .args(args)
            .env_remove(ENV_KEY)
            .env_remove(ENV_NEW_KEY)
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(k) = self.key {
            cmd.env(ENV_KEY, k);
        }
        if let Some(k) = self.new_key {
            cmd.env(ENV_NEW_KEY, k);
        }
        let mut child = cmd.spawn().expect("run mcp-coordinator");
        if let Some(input) = self.stdin {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Some(log) = self.log {
            log.borrow_mut().push_str(&stderr);
        }
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr,
        }
    }
}

/// A distinctive value no file or output could hold by chance.
fn secret_value() -> String {
    format!(
        "sv-{}-{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn last4(v: &str) -> &str {
    &v[v.len() - 4..]
}

fn set(dir: &Path, name: &str, value: &str) {
    let out = Run::new(dir)
        .stdin(&format!("{value}\n"))
        .run(&["secrets", "set", name]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `exec` printing one variable of the child's environment, exactly.
fn exec_print(run: &Run<'_>, secret: &str, var: &str) -> Out {
    run.run(&[
        "exec",
        "--secret",
        secret,
        "--",
        "sh",
        "-c",
        &format!("printf %s \"${var}\""),
    ])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every byte of every file under `dir`.
fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(all_files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            files.push((path.display().to_string(), bytes));
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn json_list(run: &Run<'_>) -> Vec<serde_json::Value> {
    let out = run.run(&["secrets", "list", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn set_list_rm_with_exit_codes() {
    let dir = common::data_dir();
    let value = secret_value();
    let run = Run::new(dir.path());

    let out = run
        .clone_with_stdin(&format!("{value}\n"))
        .run(&["secrets", "set", "GITHUB_TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.out(), "stored secret GITHUB_TOKEN\n");
    let out = run
        .clone_with_stdin(&value)
        .run(&["secrets", "set", "GITHUB_TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.out(), "replaced secret GITHUB_TOKEN\n");
    set(dir.path(), "SHORT", "abc123");

    let out = run.run(&["secrets", "list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.out();
    let line = text
        .lines()
        .find(|l| l.starts_with("GITHUB_TOKEN "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("…{}", last4(&value))), "{line}");
    assert!(line.contains("updated 20"), "{line}");
    assert!(!text.contains(&value[value.len() - 5..]), "{text}");
    let short = text.lines().find(|l| l.starts_with("SHORT ")).unwrap();
    assert!(
        !short.contains("123") && short.contains("none shown"),
        "{short}"
    );

    let out = run.run(&["secrets", "rm", "GITHUB_TOKEN"]);
    assert_eq!(
        (out.code, out.out()),
        (0, "removed secret GITHUB_TOKEN\n".into())
    );
    let out = run.run(&["secrets", "rm", "GITHUB_TOKEN"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("no secret named GITHUB_TOKEN"),
        "{}",
        out.stderr
    );
    let out = run.run(&["secrets", "rm", "SHORT"]);
    assert_eq!(out.code, 0);
    let out = run.run(&["secrets", "list"]);
    assert_eq!(out.out(), "no secrets\n");

    // Refusals: empty value, bad name.
    let out = run.clone_with_stdin("\n").run(&["secrets", "set", "EMPTY"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("nothing on stdin"), "{}", out.stderr);
    let out = run
        .clone_with_stdin("x")
        .run(&["secrets", "set", "bad name"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("A-Z a-z 0-9 _ . -"), "{}", out.stderr);
    let out = run.run(&["secrets", "rm", "no/slash"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

impl<'a> Run<'a> {
    fn clone_with_stdin(&self, s: &'a str) -> Run<'a> {
        Run {
            dir: self.dir,
            stdin: Some(s.as_bytes()),
            key: self.key,
            new_key: self.new_key,
            clean_env: self.clean_env,
            log: self.log,
        }
    }
}

#[test]
fn the_value_never_appears_outside_the_child() {
    let dir = common::data_dir();
    let value = secret_value();
    let stderr = std::cell::RefCell::new(String::new());
    let run = Run::new(dir.path()).log(&stderr);
    let mut stdout = Vec::new();

    for args in [
        &["secrets", "set", "API_TOKEN"][..],
        &["secrets", "set", "API_TOKEN"],
        &["secrets", "set", "OTHER"],
    ] {
        let out = run.clone_with_stdin(&value).run(args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        stdout.extend(out.stdout);
    }
    for args in [
        &["secrets", "list"][..],
        &["secrets", "list", "--json"],
        &[
            "exec",
            "--secret",
            "API_TOKEN",
            "--",
            "sh",
            "-c",
            "test -n \"$API_TOKEN\"",
        ],
        &["exec", "--secret", "MISSING", "--", "true"],
        &["secrets", "rotate-key"],
        &["exec", "--secret", "API_TOKEN", "--", "true"],
        &["secrets", "rm", "OTHER"],
        &["audit", "verify"],
    ] {
        let out = run.run(args);
        stdout.extend(out.stdout);
    }
    // A wrong key and a wrong-key exec: errors name fingerprints, never values.
    let wrong = Run::new(dir.path()).key(KEY_B).log(&stderr);
    stdout.extend(wrong.run(&["secrets", "list"]).stdout);
    let out = wrong.run(&["exec", "--secret", "API_TOKEN", "--", "true"]);
    assert_eq!(out.code, 2);

    let export = run.run(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(export.code, 0, "{}", export.stderr);
    let export_text = export.out();
    for action in [
        "secret.set",
        "secret.used",
        "secret.key_rotated",
        "secret.removed",
    ] {
        assert!(export_text.contains(action), "{action} not audited");
    }
    let replaced: Vec<serde_json::Value> = export_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["action"] == "secret.set")
        .map(|e| e["detail"]["replaced"].clone())
        .collect();
    assert_eq!(replaced, [false, true, false]);

    assert!(
        !contains(&export.stdout, &value),
        "value in the audit export"
    );
    assert!(!contains(&stdout, &value), "value on stdout");
    assert!(!stderr.borrow().contains(&value), "value on stderr");
    let files = all_files(dir.path());
    assert!(files.iter().any(|(p, _)| p.ends_with("coordinator.db")));
    for (path, bytes) in &files {
        assert!(!contains(bytes, &value), "value in {path}");
        assert!(
            !contains(bytes, &value[8..40]),
            "part of the value in {path}"
        );
    }
}

#[test]
fn key_file_is_private_and_made_only_by_a_write() {
    let dir = common::data_dir();
    let run = Run::new(dir.path());
    let key_path = dir.path().join(KEY_FILE);

    // Reading with no key: fails closed, and creates nothing.
    let out = run.run(&["exec", "--secret", "TOKEN", "--", "true"]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("no master key") && out.stderr.contains(ENV_KEY),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    let out = run.run(&["secrets", "list"]);
    assert_eq!((out.code, out.out()), (0, "no secrets\n".into()));
    assert!(!key_path.exists());

    let value = secret_value();
    let out = run
        .clone_with_stdin(&value)
        .run(&["secrets", "set", "TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("created master key"), "{}", out.stderr);
    assert_eq!(mode(&key_path), 0o600);
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(key_text.trim().len(), 64);
    assert!(hex::decode(key_text.trim()).is_ok());

    // The key file doubles as an environment key.
    let out = exec_print(&Run::new(dir.path()).key(key_text.trim()), "TOKEN", "TOKEN");
    assert_eq!((out.code, out.out()), (0, value.clone()), "{}", out.stderr);

    // Key file lost while secrets exist: fail closed, and no new key is made.
    std::fs::remove_file(&key_path).unwrap();
    let out = exec_print(&run, "TOKEN", "TOKEN");
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    let fp = fingerprint(&hex::decode(key_text.trim()).unwrap());
    assert!(
        out.stderr.contains("no master key") && out.stderr.contains(&fp),
        "{}",
        out.stderr
    );
    let out = run
        .clone_with_stdin("another-value")
        .run(&["secrets", "set", "OTHER"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("refusing to create"), "{}", out.stderr);
    assert!(!key_path.exists());
    let out = run.run(&["secrets", "list"]);
    assert_eq!(out.code, 0);
    assert!(out.out().contains("unreadable"), "{}", out.out());

    // A key file others can read is refused.
    std::fs::write(&key_path, &key_text).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = exec_print(&run, "TOKEN", "TOKEN");
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = exec_print(&run, "TOKEN", "TOKEN");
    assert_eq!((out.code, out.out()), (0, value), "{}", out.stderr);
}

#[test]
fn env_key_works_and_a_wrong_one_fails_closed() {
    let dir = common::data_dir();
    let value = secret_value();
    let a = Run::new(dir.path()).key(KEY_A);
    let out = a.clone_with_stdin(&value).run(&["secrets", "set", "TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!dir.path().join(KEY_FILE).exists(), "env key: no key file");
    let out = exec_print(&a, "TOKEN", "TOKEN");
    assert_eq!((out.code, out.out()), (0, value.clone()), "{}", out.stderr);

    let fa = fingerprint(&hex::decode(KEY_A).unwrap());
    let fb = fingerprint(&hex::decode(KEY_B).unwrap());
    let b = Run::new(dir.path()).key(KEY_B);
    let listed = json_list(&b);
    assert_eq!(listed[0]["readable"], false);
    assert_eq!(listed[0]["last4"], serde_json::Value::Null);
    assert_eq!(listed[0]["key_fingerprint"], fa.as_str());
    let out = b.run(&["secrets", "list"]);
    assert!(
        out.out()
            .contains(&format!("unreadable (stored under master key {fa})"))
    );
    assert!(out.stderr.contains(&fb), "{}", out.stderr);

    let out = exec_print(&b, "TOKEN", "TOKEN");
    assert_eq!(out.code, 2);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains(&format!(
            "secret TOKEN was stored under master key {fa}; the current key is {fb}"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);

    // Malformed keys are refused by name, without echoing them.
    for bad in ["not-a-key-at-all", &"zz".repeat(32), &KEY_A[..62]] {
        let out = exec_print(&Run::new(dir.path()).key(bad), "TOKEN", "TOKEN");
        assert_eq!(out.code, 2);
        assert!(
            out.stderr.contains(ENV_KEY) && out.stderr.contains("64 hex characters"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains(bad), "{}", out.stderr);
        let out = Run::new(dir.path()).key(bad).run(&["secrets", "list"]);
        assert_eq!(out.code, 2, "{}", out.stderr);
    }
}

#[test]
fn rotate_key_file_keeps_every_value() {
    let dir = common::data_dir();
    let run = Run::new(dir.path());
    let (v1, v2) = (secret_value(), secret_value());
    set(dir.path(), "ONE", &v1);
    set(dir.path(), "TWO", &v2);
    let key_path = dir.path().join(KEY_FILE);
    let old_key = std::fs::read_to_string(&key_path).unwrap();
    let old_fp = json_list(&run)[0]["key_fingerprint"].clone();

    let out = run.run(&["secrets", "rotate-key"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.out().contains("re-encrypted 2 secret(s)"),
        "{}",
        out.out()
    );
    let new_key = std::fs::read_to_string(&key_path).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(mode(&key_path), 0o600);
    assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    let listed = json_list(&run);
    let new_fp = fingerprint(&hex::decode(new_key.trim()).unwrap());
    assert_ne!(old_fp, new_fp.as_str());
    assert!(out.out().contains(&new_fp));
    for s in &listed {
        assert_eq!(s["key_fingerprint"], new_fp.as_str());
        assert_eq!(s["readable"], true);
    }
    assert_eq!(exec_print(&run, "ONE", "ONE").out(), v1);
    assert_eq!(exec_print(&run, "TWO=X", "X").out(), v2);
    // The old key no longer reads them.
    let out = exec_print(&Run::new(dir.path()).key(old_key.trim()), "ONE", "ONE");
    assert_eq!(out.code, 2);

    // All or nothing: one unreadable secret and nothing changes.
    let out = Run::new(dir.path())
        .key(KEY_A)
        .stdin("stored-under-another-key")
        .run(&["secrets", "set", "ALIEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run.run(&["secrets", "rotate-key"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("secret ALIEN was stored under"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), new_key);
    assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    assert_eq!(exec_print(&run, "ONE", "ONE").out(), v1);
}

#[test]
fn rotate_with_env_key_needs_the_new_key() {
    let dir = common::data_dir();
    let value = secret_value();
    let a = Run::new(dir.path()).key(KEY_A);
    let out = a.clone_with_stdin(&value).run(&["secrets", "set", "TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = a.run(&["secrets", "rotate-key"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(ENV_NEW_KEY) && out.stderr.contains("unset"),
        "{}",
        out.stderr
    );
    let out = Run::new(dir.path())
        .key(KEY_A)
        .new_key(KEY_B)
        .run(&["secrets", "rotate-key"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let fb = fingerprint(&hex::decode(KEY_B).unwrap());
    assert!(
        out.out().contains(&fb) && out.out().contains(ENV_KEY),
        "{}",
        out.out()
    );
    assert!(!dir.path().join(KEY_FILE).exists());
    let out = exec_print(&Run::new(dir.path()).key(KEY_B), "TOKEN", "TOKEN");
    assert_eq!((out.code, out.out()), (0, value), "{}", out.stderr);
    assert_eq!(exec_print(&a, "TOKEN", "TOKEN").code, 2);
    // The new-key variable alone is refused: it is for rotating an environment key.
    let out = Run::new(dir.path())
        .new_key(KEY_A)
        .run(&["secrets", "rotate-key"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[test]
fn exec_gives_the_child_exactly_the_named_secrets() {
    let dir = common::data_dir();
    let (va, vb, vc) = (secret_value(), secret_value(), secret_value());
    let base = Run::new(dir.path()).key(KEY_A);
    for (name, v) in [("ALPHA", &va), ("beta.key", &vb), ("GAMMA", &vc)] {
        let out = base.clone_with_stdin(v).run(&["secrets", "set", name]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }

    // With a clean environment (PATH, HOME and the master key), the child sees PATH, HOME and
    // the two named secrets: not the third, and not the master key.
    let run = Run::new(dir.path()).key(KEY_A).clean_env();
    let out = run.run(&[
        "exec",
        "--secret",
        "ALPHA",
        "--secret",
        "beta.key=BETA_VAR",
        "--",
        "/usr/bin/env",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let env: BTreeMap<String, String> = out
        .out()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ALPHA", "BETA_VAR", "HOME", "PATH"], "{env:?}");
    assert_eq!(env["ALPHA"], va);
    assert_eq!(env["BETA_VAR"], vb);

    // stdin and stdout pass straight through, byte for byte, and the exit status is the child's.
    let input: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":1}\n\x00\xff binary\r\nno newline";
    let out = Run::new(dir.path())
        .key(KEY_A)
        .stdin_bytes(input)
        .run(&["exec", "--secret", "ALPHA", "--", "cat"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, input);
    let out = base.run(&["exec", "-s", "ALPHA", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code, 7);
    assert!(out.stdout.is_empty());

    // One trailing newline was stripped at set, no more.
    let out = base
        .clone_with_stdin("two-newlines-value-here\n\n")
        .run(&["secrets", "set", "NL"]);
    assert_eq!(out.code, 0);
    assert_eq!(
        exec_print(&base, "NL", "NL").out(),
        "two-newlines-value-here\n"
    );

    // Failures: one stderr line, exit 2, nothing on stdout, nothing run.
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for (args, needle) in [
        (
            vec![
                "exec", "--secret", "ALPHA", "--secret", "NOPE", "--", "sh", "-c", &touch,
            ],
            "no secret named NOPE",
        ),
        (
            vec!["exec", "--secret", "beta.key", "--", "sh", "-c", &touch],
            "not an environment variable name",
        ),
        (
            vec!["exec", "--secret", "ALPHA", "--", "/nonexistent/server"],
            "cannot run /nonexistent/server",
        ),
    ] {
        let out = base.run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    }
    assert!(!marker.exists(), "the command ran despite an error");
    // Usage errors exit 2 as well.
    assert_eq!(base.run(&["exec", "--", "true"]).code, 2);
    assert_eq!(base.run(&["exec", "--secret", "ALPHA"]).code, 2);
}

#[test]
fn exec_honours_the_global_db_option() {
    let dir = common::data_dir();
    let value = secret_value();
    let other = dir.path().join("elsewhere/team.db");
    let other = other.to_str().unwrap();
    let run = Run::new(dir.path()).key(KEY_A);
    let out = run
        .clone_with_stdin(&value)
        .run(&["--db", other, "secrets", "set", "TOKEN"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run.run(&[
        "exec",
        "--db",
        other,
        "--secret",
        "TOKEN",
        "--",
        "sh",
        "-c",
        "printf %s \"$TOKEN\"",
    ]);
    assert_eq!((out.code, out.out()), (0, value), "{}", out.stderr);
    let out = exec_print(&run, "TOKEN", "TOKEN");
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("no secret named TOKEN"),
        "{}",
        out.stderr
    );
}

/// On a terminal, `secrets set` asks for the value without echo and stores what was typed;
/// Ctrl-C at that prompt ends it with the terminal as it was (echo on, canonical, signals),
/// and stores nothing.
#[test]
fn the_hidden_prompt_reads_a_typed_value_and_ctrl_c_leaves_echo_on() {
    let dir = common::data_dir();
    let run = Run::new(dir.path());
    let value = secret_value();

    let inner = format!(
        "{} --data-dir '{}' secrets set TYPED_TOKEN",
        common::BIN,
        dir.path().display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    std::thread::sleep(std::time::Duration::from_millis(800));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{value}\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("Value for secret TYPED_TOKEN (not echoed)"),
        "{screen}"
    );
    assert!(!screen.contains(&value), "the value was echoed: {screen}");
    let listed = json_list(&run);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["last4"], last4(&value));

    let (screen, modes) = common::ctrl_c_at_prompt(
        dir.path(),
        &["secrets", "set", "INTERRUPTED"],
        &[],
        "Value for secret INTERRUPTED (not echoed)",
    );
    for mode in ["echo", "icanon", "isig"] {
        assert!(
            modes.iter().any(|m| m == mode),
            "after Ctrl-C the terminal lacks {mode}: {modes:?}\n{screen}"
        );
    }
    assert_eq!(json_list(&run).len(), 1, "Ctrl-C stored a secret");
}
