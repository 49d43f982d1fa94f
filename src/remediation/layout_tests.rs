//! Fixture tests of in-place edits (`tests/fixtures/edits/`): every action type on configs with
//! comments, trailing commas, 2-space, 4-space and tab indentation and CRLF line endings. The
//! file a proposal would write is exactly the fixture's `.after.json`, and its diff holds only
//! the lines that changed. `MCP_COORDINATOR_UPDATE_GOLDEN=1` rewrites the `.after.json` files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::assessment::AssessmentsConfig;
use crate::audit::AuditSigner;
use crate::store::{Location, Store};

const EXEC: &[&str] = &["/opt/mcp-coordinator", "--data-dir", "/data"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/edits")
}

fn service(home: &Path, data: &Path) -> RemediationService {
    let store = Store::open(&Location::Memory).unwrap();
    let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]));
    let audit = AuditLog::new(store, Arc::new(signer));
    let approvals = ApprovalService::new(audit.clone(), Default::default());
    let assessments = AssessmentService::new(
        audit.clone(),
        AssessmentsConfig {
            home: Some(home.to_path_buf()),
            ..Default::default()
        },
    );
    let secrets = SecretStore::new(audit.clone(), data.to_path_buf());
    RemediationService::new(
        audit,
        approvals,
        assessments,
        secrets,
        data,
        EXEC.iter().map(|s| s.to_string()).collect(),
    )
}

/// Puts fixture `name` at `at` under a new home, plans `actions` (each given the file's path)
/// and checks the text it would write and the changed lines of its diff.
fn check(name: &str, at: &str, actions: &[Value], removed: &[&str], added: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = home.path().join(at);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let before = std::fs::read(fixtures().join(format!("{name}.before.json"))).unwrap();
    std::fs::write(&path, &before).unwrap();
    let actions: Vec<Action> = actions
        .iter()
        .map(|a| {
            let mut a = a.clone();
            a["file"] = json!(path);
            serde_json::from_value(a).unwrap()
        })
        .collect();
    let origins: Vec<Origin> = (0..actions.len()).map(Origin::Given).collect();
    let svc = service(home.path(), data.path());
    let (plans, writes, _, notes) = svc.plan(&actions, &origins).unwrap();
    assert!(
        !notes.iter().any(|n| n.contains("in place")),
        "{name}: {notes:?}"
    );
    let after = writes[0].1.as_bytes();
    let expected_at = fixtures().join(format!("{name}.after.json"));
    if std::env::var_os("MCP_COORDINATOR_UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_at, after).unwrap();
    }
    let expected = std::fs::read(&expected_at).unwrap();
    assert_eq!(
        String::from_utf8_lossy(after),
        String::from_utf8_lossy(&expected),
        "{name}: the edited file"
    );
    assert_eq!(after, expected.as_slice(), "{name}: byte for byte");
    let plan = &plans[0];
    assert_eq!(plan.before_sha256, Some(files::sha256(&before)), "{name}");
    assert_eq!(plan.after_sha256, files::sha256(after), "{name}");
    let lines = |sign: char| -> Vec<String> {
        plan.diff
            .lines()
            .filter(|l| l.starts_with(sign) && !l.starts_with("---") && !l.starts_with("+++"))
            .map(|l| l[1..].to_string())
            .collect()
    };
    assert_eq!(lines('-'), removed, "{name}: removed lines\n{}", plan.diff);
    assert_eq!(lines('+'), added, "{name}: added lines\n{}", plan.diff);
}

#[test]
fn pin_package_version_changes_only_the_package_lines() {
    check(
        "cursor-4space",
        ".cursor/mcp.json",
        &[
            json!({"type": "pin_package_version", "server": "memory", "version": "2025.4.25"}),
            json!({"type": "pin_package_version", "server": "fetch", "version": "2025.4.7"}),
        ],
        &[
            "                \"@modelcontextprotocol/server-memory\"",
            "                \"mcp-server-fetch\"",
        ],
        &[
            "                \"@modelcontextprotocol/server-memory@2025.4.25\"",
            "                \"mcp-server-fetch==2025.4.7\"",
        ],
    );
}

#[test]
fn move_secret_to_a_vscode_input_keeps_comments_tabs_and_crlf() {
    check(
        "vscode-tabs-crlf",
        ".config/Code/User/mcp.json",
        &[
            json!({"type": "move_secret_to_store", "server": "brave", "env_var": "BRAVE_API_KEY",
                 "secret_name": "brave_key", "via": "vscode_input"}),
        ],
        &["\t\t\t\t\"BRAVE_API_KEY\": \"[REDACTED]\", // pasted from the dashboard"],
        &[
            "\t\t{",
            "\t\t\t\"type\": \"promptString\",",
            "\t\t\t\"id\": \"brave_key\",",
            "\t\t\t\"description\": \"BRAVE_API_KEY for MCP server brave\",",
            "\t\t\t\"password\": true,",
            "\t\t},",
            "\t\t\t\t\"BRAVE_API_KEY\": \"${input:brave_key}\", // pasted from the dashboard",
        ],
    );
}

#[test]
fn move_secret_to_the_store_rewrites_the_launch_in_place() {
    check(
        "claude-code-exec",
        ".claude.json",
        &[json!({"type": "move_secret_to_store", "server": "github",
                 "env_var": "GITHUB_PERSONAL_ACCESS_TOKEN", "secret_name": "GITHUB_TOKEN"})],
        &[
            "            \"command\": \"npx\",",
            "            ],",
            "            \"env\": {",
            "                // a classic PAT; rotate yearly",
            "                \"GITHUB_PERSONAL_ACCESS_TOKEN\": \"[REDACTED]\"",
            "            }",
        ],
        &[
            "            \"command\": \"/opt/mcp-coordinator\",",
            "                \"--data-dir\",",
            "                \"/data\",",
            "                \"exec\",",
            "                \"--secret\",",
            "                \"GITHUB_TOKEN=GITHUB_PERSONAL_ACCESS_TOKEN\",",
            "                \"--\",",
            "                \"npx\",",
            "            ]",
        ],
    );
}

#[test]
fn remove_server_takes_only_its_own_lines() {
    check(
        "claude-2space-comments",
        ".config/Claude/claude_desktop_config.json",
        &[json!({"type": "remove_server", "server": "puppeteer"})],
        &[
            "    \"puppeteer\": {",
            "      \"command\": \"npx\",",
            "      \"args\": [\"-y\", \"@modelcontextprotocol/server-puppeteer\"], // unpinned",
            "    },",
        ],
        &[],
    );
}

#[test]
fn disable_server_adds_one_line() {
    check(
        "windsurf-tabs",
        ".codeium/windsurf/mcp_config.json",
        &[json!({"type": "disable_server", "server": "search"})],
        &["\t\t\t]"],
        &["\t\t\t],", "\t\t\t\"disabled\": true"],
    );
}

#[test]
fn set_server_field_edits_values_in_place() {
    check(
        "vscode-4space-crlf",
        ".config/Code/User/mcp.json",
        &[
            json!({"type": "set_server_field", "server": "docs", "field": "url",
                   "value": "https://docs.internal.example.com/mcp"}),
            json!({"type": "set_server_field", "server": "docs", "field": "headers.X-Team",
                   "value": "infra"}),
            json!({"type": "set_server_field", "server": "docs", "field": "timeout",
                   "value": 30}),
        ],
        &[
            "            \"url\": \"http://docs.internal.example.com/mcp\", // plain http for now",
            "                \"X-Team\": \"platform\"",
            "            }",
        ],
        &[
            "            \"url\": \"https://docs.internal.example.com/mcp\", // plain http for now",
            "                \"X-Team\": \"infra\"",
            "            },",
            "            \"timeout\": 30",
        ],
    );
}

#[test]
fn install_server_appends_an_entry_in_the_files_style() {
    check(
        "cursor-trailing-commas",
        ".cursor/mcp.json",
        &[json!({"type": "install_server", "server": "github",
                 "entry": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"]},
                 "secrets": {"GITHUB_PERSONAL_ACCESS_TOKEN": "GITHUB_TOKEN"}})],
        &[],
        &[
            "    \"github\": {",
            "      \"command\": \"/opt/mcp-coordinator\",",
            "      \"args\": [",
            "        \"--data-dir\",",
            "        \"/data\",",
            "        \"exec\",",
            "        \"--secret\",",
            "        \"GITHUB_TOKEN=GITHUB_PERSONAL_ACCESS_TOKEN\",",
            "        \"--\",",
            "        \"npx\",",
            "        \"-y\",",
            "        \"@modelcontextprotocol/server-github@2025.4.8\",",
            "      ],",
            "    },",
        ],
    );
}

/// An action that changes nothing leaves the text alone (a rewrite in another layout would
/// have shown a change).
#[test]
fn an_action_that_changes_nothing_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = home.path().join(".cursor/mcp.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        "{\n    \"mcpServers\": {\"a\": {\"command\": \"x\", \"disabled\": true}}\n}\n",
    )
    .unwrap();
    let svc = service(home.path(), data.path());
    let a: Action =
        serde_json::from_value(json!({"type": "disable_server", "file": path, "server": "a"}))
            .unwrap();
    let e = svc.plan(&[a], &[Origin::Given(0)]).unwrap_err();
    assert!(e.to_string().contains("change nothing"), "{e}");
}
