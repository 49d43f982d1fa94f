//! The shipped client configs work: each one's command and args, run as the client would run
//! them (with the built binary on PATH), answer an MCP handshake; the sample config loads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::Value;

const CONFIGS: [(&str, &str); 5] = [
    (
        "clients/claude-desktop/claude_desktop_config.json",
        "mcpServers",
    ),
    ("clients/claude-code/.mcp.json", "mcpServers"),
    ("clients/vscode/.vscode/mcp.json", "servers"),
    ("clients/cursor/.cursor/mcp.json", "mcpServers"),
    ("clients/kilocode/.kilocode/mcp.json", "mcpServers"),
];

#[tokio::test]
async fn every_client_config_starts_a_working_server() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let bin_dir = Path::new(common::BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (file, key) in CONFIGS {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let entry = &config[key]["coordinator"];
        let command = entry["command"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: no command"));
        assert_eq!(command, "mcp-coordinator", "{file}");
        let args: Vec<String> = entry["args"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let home = common::data_dir();
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(&args)
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env_remove("MCP_COORDINATOR_DATA_DIR")
            .env_remove("MCP_COORDINATOR_DB");
        let transport = TokioChildProcess::new(cmd).unwrap();
        let client = common::client_config(file)
            .serve(transport)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let status = common::call_ok(&client, "coordinator_status", serde_json::json!({})).await;
        // With no arguments the database is the default one in the XDG data directory.
        let expected = home.path().join("data/mcp-coordinator/coordinator.db");
        assert_eq!(
            status["database"]["path"],
            expected.display().to_string(),
            "{file}"
        );
        client.cancel().await.unwrap();
    }
}

#[test]
fn sample_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.toml");
    let config = mcp_coordinator::config::ConfigFile::load(&path).unwrap();
    assert_eq!(config.log_level.as_deref(), Some("info"));
}

#[test]
fn sample_policy_loads_and_matches_its_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy =
        mcp_coordinator::assessment::policy::Policy::load(&root.join("examples/policy.toml"))
            .unwrap();
    assert!(policy.require_pinned);
    assert!(!policy.packages.allow.is_empty());
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schemas/policy.schema.json")).unwrap(),
    )
    .unwrap();
    let instance = serde_json::to_value(&policy).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&instance), "{instance:#}");
}
