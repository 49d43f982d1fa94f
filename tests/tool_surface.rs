//! What a client pays for the tool list, over the real binary in both protocol eras: the full
//! `tools/list` stays within its byte budget, and every schema in it is portable: no type
//! arrays, closed sets as plain string enums, no `$ref`s, and input schemas whose root is a
//! plain object (a root `anyOf`/`oneOf`/`allOf` makes Claude's API refuse the whole tool list).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ERAS, Era, RawServer};
use serde_json::{Value, json};

/// The toolsets that make a server list every tool.
const FULL_SET: Option<&str> = Some("all");
/// How many tools the full set has.
const FULL_SET_TOOLS: usize = 48;
/// The most `tools/list` may weigh with every tool enabled: about 25,000 tokens.
const FULL_SET_MAX_BYTES: usize = 100_000;
/// What a client pays before the user says a word, with the default toolsets: about 10,000
/// tokens.
const DEFAULT_MAX_TOOLS: usize = 20;
const DEFAULT_MAX_BYTES: usize = 40_000;

/// Every page of the `tools/list` a new server (started with `args`) answers to a client of
/// `era`: the tools, and the bytes of the response lines as the server wrote them.
fn list_tools(dir: &std::path::Path, toolsets: Option<&str>, era: Era) -> (Vec<Value>, usize) {
    let mut server = RawServer::spawn_toolsets(dir, &[], toolsets);
    let meta = match era {
        Era::Legacy => {
            let init = server.request(
                "initialize",
                json!({"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "surface", "version": "1"}}),
            );
            assert!(init.get("result").is_some(), "{init}");
            server.notify("notifications/initialized", json!({}));
            None
        }
        Era::Stateless => Some(RawServer::meta(false)),
    };
    let (mut tools, mut bytes) = (Vec::new(), 0);
    let mut params = json!({});
    loop {
        if let Some(meta) = &meta {
            params["_meta"] = meta.clone();
        }
        let line = server.request_line("tools/list", params);
        bytes += line.len();
        let v: Value = serde_json::from_str(&line).unwrap();
        let result = &v["result"];
        tools.extend(
            result["tools"]
                .as_array()
                .expect("a tool list")
                .iter()
                .cloned(),
        );
        match result.get("nextCursor").and_then(Value::as_str) {
            Some(cursor) => params = json!({"cursor": cursor}),
            None => return (tools, bytes),
        }
    }
}

fn compact_len(v: &Value) -> usize {
    serde_json::to_string(v).unwrap().len()
}

/// Per tool: (name, whole definition, input schema, output schema, description) in bytes,
/// largest first, for the message of a failed size check.
fn size_table(tools: &[Value]) -> String {
    let mut rows: Vec<(usize, usize, usize, usize, &str)> = tools
        .iter()
        .map(|t| {
            (
                compact_len(t),
                compact_len(&t["inputSchema"]),
                compact_len(&t["outputSchema"]),
                t["description"].as_str().map_or(0, str::len),
                t["name"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    rows.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = String::from("tool: total / input schema / output schema / description\n");
    for (total, input, output, desc, name) in rows.iter().take(15) {
        out.push_str(&format!("{name}: {total} / {input} / {output} / {desc}\n"));
    }
    let sum =
        |f: fn(&(usize, usize, usize, usize, &str)) -> usize| -> usize { rows.iter().map(f).sum() };
    out.push_str(&format!(
        "all {} tools: input schemas {}, output schemas {}, descriptions {}",
        rows.len(),
        sum(|r| r.1),
        sum(|r| r.2),
        sum(|r| r.3)
    ));
    out
}

/// What makes a schema unportable, as `path: problem` lines.
fn portability_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if map.get("type").is_some_and(Value::is_array) {
                out.push(format!("{path}: type array {}", map["type"]));
            }
            if map.contains_key("$ref") {
                out.push(format!("{path}: $ref {}", map["$ref"]));
            }
            for key in ["oneOf", "anyOf"] {
                let Some(branches) = map.get(key).and_then(Value::as_array) else {
                    continue;
                };
                if branches.iter().all(|b| b.get("const").is_some()) {
                    out.push(format!(
                        "{path}: a closed set as {key} of consts, not a plain enum"
                    ));
                }
                if branches
                    .iter()
                    .any(|b| b.get("type") == Some(&json!("null")))
                {
                    out.push(format!("{path}: {key} with a null branch"));
                }
            }
            for (k, v) in map {
                portability_problems(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                portability_problems(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_full_tool_list_fits_its_byte_budget_in_both_eras() {
    for era in ERAS {
        let dir = common::data_dir();
        let (tools, bytes) = list_tools(dir.path(), FULL_SET, era);
        assert_eq!(
            tools.len(),
            FULL_SET_TOOLS,
            "{era:?}: tools {:?}",
            tools.iter().map(|t| &t["name"]).collect::<Vec<_>>()
        );
        assert!(
            bytes <= FULL_SET_MAX_BYTES,
            "{era:?}: tools/list is {bytes} bytes, over {FULL_SET_MAX_BYTES}\n{}",
            size_table(&tools)
        );
    }
}

#[test]
fn the_default_tool_list_fits_its_budget_in_both_eras() {
    for era in ERAS {
        let dir = common::data_dir();
        let (tools, bytes) = list_tools(dir.path(), None, era);
        assert!(
            tools.len() <= DEFAULT_MAX_TOOLS && bytes <= DEFAULT_MAX_BYTES,
            "{era:?}: the default tools/list is {} tools, {bytes} bytes, over {DEFAULT_MAX_TOOLS} \
             tools or {DEFAULT_MAX_BYTES} bytes\n{}",
            tools.len(),
            size_table(&tools)
        );
        let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
        for needed in [
            "coordinator_status",
            "toolsets",
            "approval_request",
            "assessment_request",
        ] {
            assert!(
                names.contains(&needed),
                "{era:?}: {needed} missing: {names:?}"
            );
        }
    }
}

#[test]
fn every_schema_in_the_tool_list_is_portable_in_both_eras() {
    for era in ERAS {
        let dir = common::data_dir();
        let (tools, _) = list_tools(dir.path(), FULL_SET, era);
        assert!(!tools.is_empty());
        let mut problems = Vec::new();
        for tool in &tools {
            let name = tool["name"].as_str().unwrap();
            for (key, schema) in [
                ("inputSchema", &tool["inputSchema"]),
                ("outputSchema", &tool["outputSchema"]),
            ] {
                assert_eq!(schema["type"], "object", "{era:?}: {name} {key}: {schema}");
                portability_problems(schema, &format!("{name}/{key}"), &mut problems);
            }
            // `if`/`then`/`else` may stand at the root: Claude's API takes it, and it is how a
            // choice between arguments is said (approval_request, pipeline_create).
            for key in ["anyOf", "oneOf", "allOf", "not"] {
                if tool["inputSchema"].get(key).is_some() {
                    problems.push(format!("{name}/inputSchema: `{key}` at the root"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{era:?}: {} problems:\n{}",
            problems.len(),
            problems.join("\n")
        );
        // Fields a handler requires unless another is given are required in the schema too.
        for (tool, given, otherwise) in [
            (
                "approval_request",
                "approval_id",
                json!(["summary", "action", "risk"]),
            ),
            ("pipeline_create", "template", json!(["stages"])),
            ("remediation_propose", "assessment_id", json!(["actions"])),
        ] {
            let schema = &tools.iter().find(|t| t["name"] == tool).unwrap()["inputSchema"];
            assert_eq!(
                schema["if"],
                json!({"required": [given]}),
                "{era:?}: {tool}"
            );
            assert_eq!(schema["else"]["required"], otherwise, "{era:?}: {tool}");
        }
    }
}
