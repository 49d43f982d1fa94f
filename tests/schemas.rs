//! `schemas/` holds the JSON Schema of every tool's input and output and of the config file,
//! generated from the Rust types. This test fails when they drift; run it with
//! `MCP_COORDINATOR_UPDATE_SCHEMAS=1` to rewrite them. It also checks that every tool has its
//! description file in `tools/` and that no description file is orphaned.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

const UPDATE_ENV: &str = "MCP_COORDINATOR_UPDATE_SCHEMAS";

fn expected() -> BTreeMap<String, Value> {
    let mut files = BTreeMap::new();
    for tool in mcp_coordinator::server::all_tools() {
        files.insert(
            format!("tools/{}.input.json", tool.name),
            Value::Object((*tool.input_schema).clone()),
        );
        let output = tool
            .output_schema
            .as_ref()
            .expect("every tool declares an output schema");
        files.insert(
            format!("tools/{}.output.json", tool.name),
            Value::Object((**output).clone()),
        );
    }
    let config = schemars::schema_for!(mcp_coordinator::config::ConfigFile);
    files.insert(
        "config.schema.json".into(),
        serde_json::to_value(config).unwrap(),
    );
    let policy = schemars::schema_for!(mcp_coordinator::assessment::policy::Policy);
    files.insert(
        "policy.schema.json".into(),
        serde_json::to_value(policy).unwrap(),
    );
    files
}

#[test]
fn schemas_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os(UPDATE_ENV).is_some();
    let expected = expected();
    let mut drift = Vec::new();
    for (rel, schema) in &expected {
        let path = root.join(rel);
        let text = serde_json::to_string_pretty(schema).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(rel.clone());
        }
    }
    // Files for tools that no longer exist are drift too.
    for entry in std::fs::read_dir(root.join("tools"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let rel = format!("tools/{}", entry.file_name().to_string_lossy());
        if !expected.contains_key(&rel) {
            if update {
                std::fs::remove_file(entry.path()).unwrap();
            } else {
                drift.push(format!("{rel} (no such tool)"));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "schemas/ is out of date: {drift:?}\nrun: {UPDATE_ENV}=1 cargo test --test schemas"
    );
}

#[test]
fn every_tool_has_exactly_one_description_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools");
    let tools: Vec<String> = mcp_coordinator::server::all_tools()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    for name in &tools {
        let text = std::fs::read_to_string(dir.join(format!("{name}.md")))
            .unwrap_or_else(|_| panic!("tools/{name}.md is missing"));
        assert!(
            text.split_whitespace().count() > 40,
            "tools/{name}.md is too thin to teach a model"
        );
    }
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = file.strip_suffix(".md") {
            assert!(
                tools.iter().any(|t| t == stem),
                "tools/{file} describes no tool"
            );
        }
    }
}
