//! The gates of the two instance executors: what a person approves before a gated child tool
//! is called (`<instance>__<tool>`, `instance_call_tool`), and before a changed or flagged
//! child tool definition is offered (`instance_tool_review`).

use serde_json::{Map, Value, json};

use super::Target;
use crate::approval::{Executor, Gate, Risk, canonical};
use crate::store::instance::PinRow;

/// A gated call: instance, tool and exact arguments (hashed; shown to the person with
/// secret-looking values masked). Destructive tools are high risk, the rest medium.
pub fn call_gate(target: &Target, arguments: Option<&Map<String, Value>>) -> Gate {
    let args = Value::Object(arguments.cloned().unwrap_or_default());
    let shown = crate::audit::redact::redact(&args);
    let preview = serde_json::to_string_pretty(&shown).unwrap_or_default();
    Gate {
        executor: Executor::ChildToolCall,
        subject_id: target.tool.exposed.clone(),
        summary: format!(
            "Call tool `{}` of child instance `{}` (type {})",
            target.tool.original,
            target.instance(),
            target.type_name()
        ),
        action: json!({
            "instance": target.instance(),
            "instance_id": target.instance_id(),
            "type": target.type_name(),
            "tool": target.tool.original,
            "arguments": shown,
            "arguments_sha256": canonical::action_hash(&args),
        }),
        risk: if target.tool.destructive == Some(true) {
            Risk::High
        } else {
            Risk::Medium
        },
        preview: Some(format!("arguments:\n{preview}")),
    }
}

/// A tool definition review: the pinned and the new definition's hashes, shown in full.
pub fn review_gate(type_name: &str, tool: &str, pin: &PinRow) -> Gate {
    let flags = pin.pending_flags.clone().unwrap_or_else(|| "[]".into());
    let old = pin
        .definition
        .clone()
        .unwrap_or_else(|| "(none: quarantined when first seen)".into());
    let new_def = pin.pending_definition.clone().unwrap_or_default();
    Gate {
        executor: Executor::ToolReview,
        subject_id: format!("{type_name}/{tool}"),
        summary: format!(
            "Offer the changed definition of tool `{tool}` of instance type `{type_name}`"
        ),
        action: json!({
            "review": "tool_definition",
            "type": type_name,
            "tool": tool,
            "pinned_hash": pin.hash,
            "new_hash": pin.pending_hash.clone().unwrap_or_default(),
        }),
        risk: Risk::High,
        preview: Some(format!(
            "pinned definition:\n{}\n\nnew definition:\n{}\n\nprompt-injection flags: {flags}",
            pretty(&old),
            pretty(&new_def)
        )),
    }
}

fn pretty(json_text: &str) -> String {
    serde_json::from_str::<Value>(json_text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json_text.to_string())
}
