//! Canonical JSON (object keys sorted at every depth, no insignificant whitespace) and the
//! action hash: the SHA-256 of an action's canonical JSON, which binds a decision to exactly
//! the action it authorises.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` in canonical form: keys sorted by their UTF-8 bytes, compact separators.
/// Independent of whether serde_json preserves insertion order in this build.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Hex SHA-256 of the canonical JSON of `action`.
pub fn action_hash(action: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(action).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap_or_default();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap_or_default();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(action_hash(&a), action_hash(&b));
    }

    #[test]
    fn any_change_changes_the_hash() {
        let base = json!({"op": "pin", "version": "1.2.3"});
        assert_ne!(
            action_hash(&base),
            action_hash(&json!({"op": "pin", "version": "1.2.4"}))
        );
        assert_ne!(action_hash(&base), action_hash(&json!([base.clone()])));
        assert_ne!(action_hash(&json!("1")), action_hash(&json!(1)));
    }
}
