//! Assessments and remediations over MCP against the real binary, on a temporary home full of
//! client configs: assess, propose (from findings and explicit actions), a person approves or
//! rejects through the client's elicitation form, files change exactly as the previewed diff
//! said with backups kept, a file edited after the preview is never overwritten, rollback,
//! the installer tools, and a secret moved into the store that the server still receives
//! through `mcp-coordinator exec` while it appears nowhere in the database or the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmcp::model::{
    ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    Implementation,
};
use rmcp::service::{RequestContext, RoleClient, RunningService};
use rmcp::{ClientHandler, ErrorData, ServiceExt};
use serde_json::{Value, json};
use sha2::Digest;

use common::{call, call_ok, data_dir, invalid_argument};

const TOKEN: &str = "ghp_Zq8RmT2vLx9KpW4sNbYc7HdJ0aEfGiUo1Q3r";

/// A person who answers every approval form with `decision`.
#[derive(Clone)]
struct Person {
    decision: &'static str,
    asked: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ClientHandler for Person {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("remediation-person", "1.0"),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if let ElicitRequestParams::FormElicitationParams { message, .. } = request {
            self.seen.lock().unwrap().push(message);
        }
        let mut r = ElicitResult::new(ElicitationAction::Accept);
        r.content = Some(json!({"decision": self.decision, "reason": "checked the diff"}));
        Ok(r)
    }
}

struct Setup {
    data: tempfile::TempDir,
    home: tempfile::TempDir,
    config: PathBuf,
}

fn setup() -> Setup {
    let data = data_dir();
    let home = tempfile::tempdir().unwrap();
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[assessments]\nhome = \"{}\"\nprojects = []\nnpm_registry = \"http://127.0.0.1:9\"\n",
            home.path().display()
        ),
    )
    .unwrap();
    Setup { data, home, config }
}

fn write(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap() + "\n").unwrap();
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn sha(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

async fn person(s: &Setup, decision: &'static str) -> (RunningService<RoleClient, Person>, Person) {
    let p = Person {
        decision,
        asked: Arc::default(),
        seen: Arc::default(),
    };
    let mut cmd = common::command(s.data.path(), &["--config", s.config.to_str().unwrap()]);
    cmd.env_remove("MCP_COORDINATOR_MASTER_KEY");
    let transport = rmcp::transport::TokioChildProcess::new(cmd).unwrap();
    (p.clone().serve(transport).await.unwrap(), p)
}

fn cursor_config(home: &Path) -> PathBuf {
    let path = home.join(".cursor/mcp.json");
    write(
        &path,
        &json!({"mcpServers": {
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"],
                       "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": TOKEN}},
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.4.25"]}
        }}),
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn assess_propose_approve_applies_exactly_the_diff_once_with_backups() {
    let s = setup();
    let file = cursor_config(s.home.path());
    let before = std::fs::read_to_string(&file).unwrap();
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();

    let listed = call_ok(c, "mcp_config_list", json!({})).await;
    assert_eq!(listed["server_count"], 2, "{listed:#}");
    assert!(
        !listed.to_string().contains(TOKEN),
        "env values are never shown"
    );

    let a = call_ok(c, "assessment_request", json!({"type": "security"})).await;
    assert_eq!(a["status"], "completed", "{a:#}");
    let rules: Vec<&str> = a["assessment"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"secret-in-env"), "{rules:?}");
    assert!(rules.contains(&"unpinned-package"), "{rules:?}");
    assert!(!a.to_string().contains(TOKEN), "evidence is masked");
    let aid = a["assessment_id"].as_str().unwrap();

    // From the findings (the registry is unreachable here, so the derived pin is left out
    // with a note) plus an explicit pin.
    let proposed = call_ok(
        c,
        "remediation_propose",
        json!({"assessment_id": aid, "actions": [
            {"type": "pin_package_version", "file": file, "server": "github", "version": "2025.4.8"}
        ]}),
    )
    .await;
    let rem = &proposed["remediation"];
    let id = proposed["remediation_id"].as_str().unwrap().to_string();
    assert_eq!(rem["status"], "proposed");
    let diff = rem["files"][0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("+        \"@modelcontextprotocol/server-github@2025.4.8\""),
        "{diff}"
    );
    assert!(
        diff.contains("-        \"GITHUB_PERSONAL_ACCESS_TOKEN\": \"[REDACTED]\""),
        "{diff}"
    );
    assert!(
        !proposed.to_string().contains(TOKEN),
        "the diff masks the token"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "nothing written yet"
    );

    let reviewed = call_ok(c, "remediation_review", json!({"remediation_id": id})).await;
    assert_eq!(reviewed["approval_state"], "approved", "{reviewed:#}");
    assert_eq!(reviewed["status"], "executed", "{reviewed:#}");
    assert_eq!(p.asked.load(Ordering::SeqCst), 1);
    assert!(p.seen.lock().unwrap()[0].contains("server-github@2025.4.8"));
    // The file is exactly what the previewed diff described (its hash was in the proposal).
    assert_eq!(
        sha(&file),
        rem["files"][0]["after_sha256"].as_str().unwrap()
    );
    let now: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let github = &now["mcpServers"]["github"];
    assert!(!std::fs::read_to_string(&file).unwrap().contains(TOKEN));
    assert_eq!(
        github["args"].as_array().unwrap().last().unwrap(),
        "@modelcontextprotocol/server-github@2025.4.8"
    );
    assert_eq!(github["args"][2], "exec", "{github:#}");
    // The backup is the file as it was, sealed: the token moved to the store is not in it in
    // clear, and `secrets open-backup` gives back the exact bytes.
    let backup = reviewed["remediation"]["backups"][0]["backup_path"]
        .as_str()
        .unwrap();
    let sealed = std::fs::read(backup).unwrap();
    assert!(
        !sealed.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the backup holds the token in clear"
    );
    assert!(!String::from_utf8_lossy(&sealed).contains("server-github\""));
    let (code, opened, err) = common::cli(s.data.path(), &["secrets", "open-backup", backup]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(opened, before);
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    // The backup key is the coordinator's own: not listed, not settable.
    let (_, listed, _) = common::cli(s.data.path(), &["secrets", "list"]);
    assert!(!listed.contains("backup-key"), "{listed}");
    assert!(backup.starts_with(s.data.path().to_str().unwrap()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(backup).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Never twice.
    let again = call(c, "remediation_review", json!({"remediation_id": id}))
        .await
        .unwrap();
    assert_eq!(again.structured_content.unwrap()["code"], "conflict");
    assert_eq!(p.asked.load(Ordering::SeqCst), 1, "not asked again");

    // The moved secret reaches the server through exec: run the rewritten launch with the
    // server swapped for a program that prints the variable.
    let args: Vec<String> = serde_json::from_value(github["args"].clone()).unwrap();
    let dashdash = args.iter().position(|a| a == "--").unwrap();
    let out = std::process::Command::new(github["command"].as_str().unwrap())
        .args(&args[..=dashdash])
        .args(["sh", "-c", "printf %s \"$GITHUB_PERSONAL_ACCESS_TOKEN\""])
        .env_remove("MCP_COORDINATOR_MASTER_KEY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), TOKEN);

    // A master key rotation re-encrypts the backup key with the other secrets, so the sealed
    // backup still restores, byte for byte.
    let (code, _, err) = common::cli(s.data.path(), &["secrets", "rotate-key"]);
    assert_eq!(code, 0, "{err}");
    let undone = call_ok(c, "remediation_rollback", json!({"remediation_id": id})).await;
    assert_eq!(undone["status"], "rolled_back", "{undone:#}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    let verify = call_ok(c, "audit_verify", json!({})).await;
    assert_eq!(verify["ok"], true);
    client.cancel().await.unwrap();
    // The token is nowhere in the database (file and WAL), the audit export or the backups.
    for entry in walk(&s.data.path().join("backups")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            entry.display()
        );
    }
    for name in ["coordinator.db", "coordinator.db-wal"] {
        if let Ok(bytes) = std::fs::read(s.data.path().join(name)) {
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "{name} holds the token"
            );
        }
    }
    let (code, export, _) = common::cli(s.data.path(), &["audit", "export", "--format", "jsonl"]);
    assert_eq!(code, 0);
    assert!(!export.contains(TOKEN));
    assert!(export.contains("remediation.executed"));
}

#[tokio::test]
async fn a_rejected_review_changes_nothing() {
    let s = setup();
    let file = cursor_config(s.home.path());
    let before = std::fs::read_to_string(&file).unwrap();
    let (client, p) = person(&s, "reject").await;
    let c = client.peer();
    let proposed = call_ok(
        c,
        "remediation_propose",
        json!({"actions": [{"type": "remove_server", "file": file, "server": "memory"}]}),
    )
    .await;
    assert_eq!(proposed["remediation"]["risk"], "high");
    let id = proposed["remediation_id"].as_str().unwrap();
    let reviewed = call_ok(c, "remediation_review", json!({"remediation_id": id})).await;
    assert_eq!(reviewed["approval_state"], "rejected", "{reviewed:#}");
    assert_eq!(reviewed["status"], "proposed");
    assert_eq!(p.asked.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
    assert!(!s.data.path().join("backups").exists());
    let withdrawn = call_ok(c, "remediation_withdraw", json!({"remediation_id": id})).await;
    assert_eq!(withdrawn["status"], "withdrawn");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_file_edited_after_the_preview_is_not_overwritten() {
    let s = setup();
    let file = cursor_config(s.home.path());
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();
    let proposed = call_ok(
        c,
        "remediation_propose",
        json!({"actions": [{"type": "disable_server", "file": file, "server": "memory"}]}),
    )
    .await;
    let id = proposed["remediation_id"].as_str().unwrap();
    // Someone edits the file between the preview and the approval.
    let mut edited = std::fs::read_to_string(&file).unwrap();
    edited = edited.replace("\"memory\"", "\"memory-renamed\"");
    std::fs::write(&file, &edited).unwrap();
    let reviewed = call(c, "remediation_review", json!({"remediation_id": id}))
        .await
        .unwrap();
    assert_eq!(reviewed.is_error, Some(true));
    let err = reviewed.structured_content.unwrap();
    assert_eq!(err["code"], "conflict", "{err:#}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("changed since the preview"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        edited,
        "the edit survives"
    );
    // Refused before anyone was asked: no question, no approval opened or consumed.
    assert_eq!(p.asked.load(Ordering::SeqCst), 0, "the person was asked");
    let approvals = call_ok(c, "approval_list", json!({})).await;
    assert_eq!(approvals["approvals"], json!([]), "{approvals:#}");
    let got = call_ok(c, "remediation_get", json!({"remediation_id": id})).await;
    assert_eq!(got["status"], "failed");

    // The same for a rollback: a file changed since the remediation wrote it.
    let applied = call_ok(
        c,
        "remediation_propose",
        json!({"actions": [{"type": "disable_server", "file": file, "server": "github"}]}),
    )
    .await;
    let applied_id = applied["remediation_id"].as_str().unwrap();
    let reviewed = call_ok(
        c,
        "remediation_review",
        json!({"remediation_id": applied_id}),
    )
    .await;
    assert_eq!(reviewed["status"], "executed", "{reviewed:#}");
    assert_eq!(p.asked.load(Ordering::SeqCst), 1);
    let written = std::fs::read_to_string(&file).unwrap();
    let edited = written.replace("\"disabled\": true", "\"disabled\": false");
    assert_ne!(edited, written);
    std::fs::write(&file, &edited).unwrap();
    let undo = call(
        c,
        "remediation_rollback",
        json!({"remediation_id": applied_id}),
    )
    .await
    .unwrap();
    assert_eq!(undo.is_error, Some(true));
    let err = undo.structured_content.unwrap();
    assert_eq!(err["code"], "conflict", "{err:#}");
    assert_eq!(err["details"]["reason"], "file_changed", "{err:#}");
    assert_eq!(
        p.asked.load(Ordering::SeqCst),
        1,
        "asked about the rollback"
    );
    let approvals = call_ok(c, "approval_list", json!({})).await;
    assert_eq!(
        approvals["approvals"].as_array().unwrap().len(),
        1,
        "{approvals:#}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);
    let got = call_ok(c, "remediation_get", json!({"remediation_id": applied_id})).await;
    assert_eq!(got["status"], "executed");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn errors_name_the_field_the_caller_gave() {
    let s = setup();
    let file = cursor_config(s.home.path());
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();

    let (field, m) = invalid_argument(
        "mcp_server_remove",
        call(
            c,
            "mcp_server_remove",
            json!({"file": file, "server": "nope"}),
        )
        .await,
    );
    assert_eq!(field, "server", "{m}");
    assert!(m.contains("`server`") && m.contains("\"nope\""), "{m}");
    assert!(m.contains("github, memory"), "the servers it has: {m}");

    let entry = |entry: Value| json!({"client": "cursor", "server": "gh", "entry": entry});
    for (e, expected) in [
        (
            json!({"command": "npx", "args": ["-y", "x@1.0.0"], "env": {"MODE": "fast", "GITHUB_TOKEN": TOKEN}}),
            "entry.env.GITHUB_TOKEN",
        ),
        (
            json!({"command": "npx", "args": ["-y", "x@1.0.0", format!("--token={TOKEN}")]}),
            "entry.args[2]",
        ),
        (
            json!({"url": "https://mcp.example.com/mcp", "headers": {"Authorization": format!("Bearer {TOKEN}")}}),
            "entry.headers.Authorization",
        ),
        (
            json!({"url": "https://me:hunter2hunter2@mcp.example.com/mcp"}),
            "entry.url",
        ),
    ] {
        let (field, m) = invalid_argument(
            "mcp_server_install",
            call(c, "mcp_server_install", entry(e)).await,
        );
        assert_eq!(field, expected, "{m}");
        assert!(m.contains(&format!("`{expected}`")), "{m}");
        assert!(!m.contains(TOKEN) && !m.contains("hunter2"), "{m}");
    }
    let (field, m) = invalid_argument(
        "mcp_server_install",
        call(
            c,
            "mcp_server_install",
            json!({"client": "cursor", "server": "memory",
            "entry": {"command": "npx", "args": ["-y", "x@1.0.0"]}}),
        )
        .await,
    );
    assert_eq!(field, "server", "{m}");
    let (field, m) = invalid_argument(
        "mcp_server_install",
        call(
            c,
            "mcp_server_install",
            json!({"client": "cursor", "server": "bare", "entry": {"args": []}}),
        )
        .await,
    );
    assert_eq!(field, "entry", "{m}");

    // remediation_propose names the action and its field.
    let (field, m) = invalid_argument("remediation_propose",
        call(c, "remediation_propose", json!({"actions": [
            {"type": "disable_server", "file": file, "server": "memory"},
            {"type": "move_secret_to_store", "file": file, "server": "github", "env_var": "NOPE", "secret_name": "GH"}
        ]}))
        .await,
    );
    assert_eq!(field, "actions[1].env_var", "{m}");
    assert_eq!(p.asked.load(Ordering::SeqCst), 0);
    client.cancel().await.unwrap();
}

/// A VS Code mcp.json with comments, trailing commas, tabs and CRLF keeps all of them through a
/// remediation: the file written is the fixture's expected text, byte for byte, and the diff
/// the person approved shows only the lines that changed.
#[tokio::test]
async fn a_jsonc_config_keeps_its_comments_and_layout() {
    let s = setup();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/edits");
    let file = s.home.path().join(".config/Code/User/mcp.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(fixtures.join("vscode-tabs-crlf.before.json"), &file).unwrap();
    let expected = std::fs::read(fixtures.join("vscode-tabs-crlf.after.json")).unwrap();
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();
    let proposed = call_ok(
        c,
        "remediation_propose",
        json!({"actions": [{"type": "move_secret_to_store", "file": file, "server": "brave",
                            "env_var": "BRAVE_API_KEY", "secret_name": "brave_key", "via": "vscode_input"}]}),
    )
    .await;
    let diff = proposed["remediation"]["files"][0]["diff"]
        .as_str()
        .unwrap();
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('-') || l.starts_with('+'))
                && !l.starts_with("---")
                && !l.starts_with("+++")
        })
        .collect();
    assert_eq!(changed.len(), 8, "{diff}");
    assert!(!diff.contains("BSAq8Zr2"), "{diff}");
    let reviewed = call_ok(
        c,
        "remediation_review",
        json!({"remediation_id": proposed["remediation_id"]}),
    )
    .await;
    assert_eq!(reviewed["status"], "executed", "{reviewed:#}");
    assert_eq!(p.asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&file).unwrap()),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(std::fs::read(&file).unwrap(), expected);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn installer_tools_install_and_remove_and_rollback_restores() {
    let s = setup();
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();
    // Secrets are refused in the entry.
    let refused = call(
        c,
        "mcp_server_install",
        json!({"client": "cursor", "server": "gh", "entry": {"command": "npx", "args": ["-y", "x@1.0.0"], "env": {"GITHUB_TOKEN": TOKEN}}}),
    )
    .await;
    let (field, _) = invalid_argument("mcp_server_install", refused);
    assert_eq!(field, "entry.env.GITHUB_TOKEN");
    let installed = call_ok(
        c,
        "mcp_server_install",
        json!({"client": "cursor", "server": "fetch", "entry": {"command": "uvx", "args": ["mcp-server-fetch==2025.4.7"]}}),
    )
    .await;
    assert_eq!(installed["status"], "executed", "{installed:#}");
    let file = s.home.path().join(".cursor/mcp.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        doc["mcpServers"]["fetch"]["args"][0],
        "mcp-server-fetch==2025.4.7"
    );
    let listed = call_ok(c, "mcp_config_list", json!({})).await;
    assert_eq!(listed["files"][0]["servers"][0]["name"], "fetch");

    let removed = call_ok(
        c,
        "mcp_server_remove",
        json!({"file": file, "server": "fetch"}),
    )
    .await;
    assert_eq!(removed["status"], "executed", "{removed:#}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(doc["mcpServers"].get("fetch").is_none());

    // Rolling back the removal brings the entry back, after its own approval.
    let rolled = call_ok(
        c,
        "remediation_rollback",
        json!({"remediation_id": removed["remediation_id"]}),
    )
    .await;
    assert_eq!(rolled["status"], "rolled_back", "{rolled:#}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["mcpServers"]["fetch"]["command"], "uvx");
    assert_eq!(p.asked.load(Ordering::SeqCst), 3);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn listings_and_findings_never_show_a_secret() {
    let s = setup();
    let key = "q8Zr2LmP0vXw9TkA7hYb";
    write(
        &s.home.path().join(".codeium/windsurf/mcp_config.json"),
        &json!({"mcpServers": {
            "search": {"command": "npx", "args": ["-y", "brave-search-mcp@1.0.0", "--api-key", key, format!("--token={TOKEN}")]},
            "remote": {"serverUrl": format!("http://mcp.example.com/sse?api_key={key}")},
        }}),
    );
    let (client, _p) = person(&s, "approve").await;
    let c = client.peer();
    let listed = call_ok(c, "mcp_config_list", json!({})).await;
    let a = call_ok(c, "assessment_request", json!({"type": "security"})).await;
    for out in [&listed, &a] {
        let text = out.to_string();
        assert!(!text.contains(key) && !text.contains(TOKEN), "{out:#}");
    }
    let rules: Vec<&str> = a["assessment"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for rule in ["secret-in-args", "secret-in-url", "plain-http-remote"] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn two_secrets_never_share_a_store_name() {
    let s = setup();
    let other = "ghp_Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0Kk1Ll2M";
    let cursor = cursor_config(s.home.path());
    let claude = s
        .home
        .path()
        .join(".config/Claude/claude_desktop_config.json");
    write(
        &claude,
        &json!({"mcpServers": {"github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                                           "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": other}}}}),
    );
    let (client, _p) = person(&s, "approve").await;
    let c = client.peer();
    // Explicitly moving both into one name is refused.
    let both = |name: &str| {
        json!({"actions": [
            {"type": "move_secret_to_store", "file": cursor, "server": "github", "env_var": "GITHUB_PERSONAL_ACCESS_TOKEN", "secret_name": name},
            {"type": "move_secret_to_store", "file": claude, "server": "github", "env_var": "GITHUB_PERSONAL_ACCESS_TOKEN", "secret_name": name}
        ]})
    };
    let refused = call(c, "remediation_propose", both("GH")).await;
    assert!(format!("{refused:?}").contains("used twice"), "{refused:?}");
    // Suggested from an assessment, the second gets its own name.
    let a = call_ok(c, "assessment_request", json!({"type": "security"})).await;
    let proposed = call_ok(
        c,
        "remediation_propose",
        json!({"assessment_id": a["assessment_id"], "min_severity": "high"}),
    )
    .await;
    let names: Vec<&str> = proposed["remediation"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["type"] == "move_secret_to_store")
        .map(|a| a["secret_name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{proposed:#}");
    assert_ne!(names[0], names[1]);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn vscode_secrets_can_move_to_an_input_instead() {
    let s = setup();
    let file = s.home.path().join(".config/Code/User/mcp.json");
    write(
        &file,
        &json!({"servers": {"github": {"type": "stdio", "command": "npx",
            "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
            "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": TOKEN}}}}),
    );
    let (client, _p) = person(&s, "approve").await;
    let c = client.peer();
    let a = call_ok(c, "assessment_request", json!({"type": "security"})).await;
    let fix = a["assessment"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "secret-in-env")
        .unwrap()["fix"]["action"]
        .clone();
    assert_eq!(fix["via"], "vscode_input", "{fix:#}");
    let proposed = call_ok(c, "remediation_propose", json!({"actions": [fix]})).await;
    let reviewed = call_ok(
        c,
        "remediation_review",
        json!({"remediation_id": proposed["remediation_id"]}),
    )
    .await;
    assert_eq!(reviewed["status"], "executed", "{reviewed:#}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let name = fix["secret_name"].as_str().unwrap();
    assert_eq!(
        doc["servers"]["github"]["env"]["GITHUB_PERSONAL_ACCESS_TOKEN"],
        format!("${{input:{name}}}")
    );
    assert_eq!(doc["inputs"][0]["id"], name);
    assert_eq!(doc["inputs"][0]["password"], true);
    assert_eq!(
        doc["servers"]["github"]["command"], "npx",
        "not wrapped in exec"
    );
    assert!(!std::fs::read_to_string(&file).unwrap().contains(TOKEN));
    client.cancel().await.unwrap();
}

/// What a call refused for an argument says.
fn refusal(tool: &str, r: Result<rmcp::model::CallToolResult, rmcp::ServiceError>) -> String {
    invalid_argument(tool, r).1
}

#[tokio::test(flavor = "multi_thread")]
async fn config_edits_stay_inside_the_users_own_configs() {
    let s = setup();
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = cursor_config(elsewhere.path());
    let before = std::fs::read_to_string(&outside).unwrap();
    let entry =
        json!({"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.4.25"]});
    let (client, p) = person(&s, "approve").await;
    let c = client.peer();

    // A file shaped like a client config, outside the home and the configured projects.
    let m = refusal(
        "mcp_server_install",
        call(
            c,
            "mcp_server_install",
            json!({"client": "cursor", "file": outside, "server": "mem", "entry": entry}),
        )
        .await,
    );
    assert!(
        m.contains("`file`") && m.contains("[assessments] files"),
        "{m}"
    );
    assert!(m.contains(outside.to_str().unwrap()), "{m}");
    // The same through a project directory nobody configured.
    let m = refusal("mcp_server_install",
        call(c, "mcp_server_install", json!({"client": "cursor", "project": elsewhere.path(), "server": "mem", "entry": entry})).await,
    );
    assert!(
        m.contains("`project`") && m.contains("[assessments] projects"),
        "{m}"
    );
    let m = refusal(
        "mcp_server_remove",
        call(
            c,
            "mcp_server_remove",
            json!({"file": outside, "server": "memory"}),
        )
        .await,
    );
    assert!(m.contains("`file`"), "{m}");
    let m = refusal(
        "remediation_propose",
        call(
            c,
            "remediation_propose",
            json!({"actions": [
                {"type": "remove_server", "file": outside, "server": "memory"}
            ]}),
        )
        .await,
    );
    assert!(
        m.contains("`actions[0].file`") && m.contains("[assessments] files"),
        "{m}"
    );
    // `..` cannot walk out of the home directory.
    let walked = s
        .home
        .path()
        .join(".cursor/../..")
        .join(outside.strip_prefix("/").unwrap());
    let m = refusal(
        "mcp_server_remove",
        call(
            c,
            "mcp_server_remove",
            json!({"file": walked, "server": "memory"}),
        )
        .await,
    );
    assert!(
        m.contains("is not a client config this coordinator may change"),
        "{m}"
    );
    // An assessment may look anywhere; a remediation from its findings still may not write there.
    let a = call_ok(
        c,
        "assessment_request",
        json!({"type": "security", "target": {"file": outside}}),
    )
    .await;
    let m = refusal(
        "remediation_propose",
        call(
            c,
            "remediation_propose",
            json!({"assessment_id": a["assessment_id"]}),
        )
        .await,
    );
    assert!(m.contains("[assessments] files"), "{m}");
    assert_eq!(p.asked.load(Ordering::SeqCst), 0, "nobody was asked");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), before);
    // The user's own config is fine.
    let ok = call_ok(
        c,
        "mcp_server_install",
        json!({"client": "cursor", "server": "mem", "entry": entry, "review": false}),
    )
    .await;
    assert_eq!(ok["status"], "proposed", "{ok:#}");
    client.cancel().await.unwrap();

    // Once a person lists the file in the config, it may be changed.
    std::fs::write(
        &s.config,
        format!(
            "[assessments]\nhome = \"{}\"\nprojects = []\nfiles = [\"{}\"]\nnpm_registry = \"http://127.0.0.1:9\"\n",
            s.home.path().display(),
            outside.display()
        ),
    )
    .unwrap();
    let (client, _) = person(&s, "approve").await;
    let removed = call_ok(
        client.peer(),
        "mcp_server_remove",
        json!({"file": outside, "server": "memory"}),
    )
    .await;
    assert_eq!(removed["status"], "executed", "{removed:#}");
    assert!(
        !std::fs::read_to_string(&outside)
            .unwrap()
            .contains("\"memory\"")
    );
    client.cancel().await.unwrap();
}
