//! In-place edits of a client config's text: what the actions changed between the document as
//! read and the document they made is applied to jsonc-parser's concrete syntax tree, so the
//! comments, trailing commas, indentation, key order and line endings the person wrote stay, and
//! only the lines that change differ.

use jsonc_parser::cst::{CstContainerNode, CstInputValue, CstLeafNode, CstNode, CstRootNode};
use serde_json::{Map, Value};

use crate::clients;

/// The text a new file is written as: two-space indented JSON and a final newline (the shape
/// every client writes its own config in).
pub fn render_new(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(doc).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// `text` (the file as read) edited so that it reads as `target`, everything the change does
/// not touch kept byte for byte. The result is parsed again and must be `target` exactly;
/// otherwise (or when the text cannot be edited in place) the error says why, and nothing is
/// half-edited.
pub fn edit(text: &str, target: &Value) -> Result<String, String> {
    // The CST code has internal `unwrap`s on shapes it does not expect; a surprise there must
    // become a refusal to edit in place, never a crashed coordinator.
    let edited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| edit_tree(text, target)))
        .map_err(|_| "the editor failed on this file's layout".to_string())??;
    let (reread, _) =
        clients::parse(&edited).map_err(|e| format!("the edited text does not parse ({e})"))?;
    if reread != *target {
        return Err("the edited text does not read as the intended document".into());
    }
    Ok(edited)
}

fn edit_tree(text: &str, target: &Value) -> Result<String, String> {
    let (current, _) = clients::parse(text)?;
    // The root must outlive every node taken from it (the tree's parent links are weak).
    let root = CstRootNode::parse(text, &clients::jsonc_options()).map_err(|e| e.to_string())?;
    let value = root.value().ok_or("the file is empty")?;
    let style = Style::of(&value);
    style.patch(&value, &current, target)?;
    Ok(root.to_string())
}

/// How the file writes what it already holds, for what an edit inserts.
struct Style {
    /// Its arrays with elements span lines (`"args": [` then one element a line).
    multiline_arrays: bool,
    /// Its multi-line objects and arrays end with a comma.
    trailing_commas: bool,
}

impl Style {
    fn of(value: &CstNode) -> Style {
        let mut todo = vec![value.clone()];
        let mut multiline_arrays = false;
        while let Some(n) = todo.pop() {
            if let Some(a) = n.as_array()
                && !a.elements().is_empty()
            {
                multiline_arrays = spans_lines(&n);
                break;
            }
            // Depth first, in document order: the first array written decides.
            todo.extend(
                n.children()
                    .into_iter()
                    .rev()
                    .filter(|c| matches!(c, CstNode::Container(_))),
            );
        }
        Style {
            multiline_arrays,
            trailing_commas: value.uses_trailing_commas(),
        }
    }

    /// Lays a freshly inserted value out as the file lays out its own: the CST writes arrays of
    /// plain values on one line.
    fn lay_out(&self, inserted: &CstNode) {
        if !self.multiline_arrays {
            return;
        }
        let mut todo = vec![inserted.clone()];
        while let Some(n) = todo.pop() {
            if let Some(a) = n.as_array()
                && !a.elements().is_empty()
                && !spans_lines(&n)
            {
                a.ensure_multiline();
                if self.trailing_commas {
                    a.set_trailing_commas(jsonc_parser::cst::TrailingCommaMode::IfMultiline);
                }
            }
            todo.extend(
                n.children()
                    .into_iter()
                    .filter(|c| matches!(c, CstNode::Container(_))),
            );
        }
    }

    /// Makes `node` (which reads as `old`) read as `new`, touching as little as it can:
    /// objects key by key, arrays element by element, and only a value whose type changes is
    /// replaced.
    fn patch(&self, node: &CstNode, old: &Value, new: &Value) -> Result<(), String> {
        if old == new {
            return Ok(());
        }
        match (old, new, node) {
            (
                Value::Object(o),
                Value::Object(n),
                CstNode::Container(CstContainerNode::Object(_)),
            ) => self.patch_object(node, o, n),
            (Value::Array(o), Value::Array(n), CstNode::Container(CstContainerNode::Array(_))) => {
                self.patch_array(node, o, n)
            }
            _ => self.replace(node, new),
        }
    }

    fn patch_object(
        &self,
        node: &CstNode,
        old: &Map<String, Value>,
        new: &Map<String, Value>,
    ) -> Result<(), String> {
        let obj = node.as_object().ok_or("not an object")?;
        let missing = |k: &str| format!("key {k:?} is not in the text");
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            obj.get(k).ok_or_else(|| missing(k))?.remove();
        }
        for (k, v) in new {
            if let Some(was) = old.get(k)
                && was != v
            {
                let value = obj
                    .get(k)
                    .and_then(|p| p.value())
                    .ok_or_else(|| missing(k))?;
                self.patch(&value, was, v)?;
            }
        }
        // A new key goes right after the key it follows in the new document (actions append,
        // so usually at the end), with the object's own indentation, newlines and commas.
        for (i, (k, v)) in new.iter().enumerate() {
            if old.contains_key(k) {
                continue;
            }
            let at = new
                .keys()
                .take(i)
                .rev()
                .find_map(|before| obj.get(before))
                .map_or(0, |p| p.property_index() + 1);
            let prop = obj.insert(at, k, input(v));
            if let Some(value) = prop.value() {
                self.lay_out(&value);
            }
        }
        Ok(())
    }

    fn patch_array(&self, node: &CstNode, old: &[Value], new: &[Value]) -> Result<(), String> {
        let array = node.as_array().ok_or("not an array")?;
        let elements = array.elements();
        if elements.len() != old.len() {
            return Err("the array's elements do not match the text".into());
        }
        if old.len() == new.len() {
            for ((e, o), n) in elements.iter().zip(old).zip(new) {
                self.patch(e, o, n)?;
            }
            return Ok(());
        }
        if !spans_lines(node) {
            // An array on one line is one changed line whatever is done to it; written whole,
            // its spacing stays regular (inserting into the middle of one doubles spaces).
            return self.replace(node, &Value::Array(new.to_vec()));
        }
        // Elements are matched by their JSON text; the edit keeps the ones both sides share and
        // removes or inserts around them. Working from the end keeps earlier indices valid.
        let key = |v: &Value| serde_json::to_string(v).unwrap_or_default();
        let ok: Vec<String> = old.iter().map(key).collect();
        let nk: Vec<String> = new.iter().map(key).collect();
        let ops = similar::capture_diff_slices(similar::Algorithm::Myers, &ok, &nk);
        for op in ops.iter().rev() {
            let (tag, o, n) = op.as_tag_tuple();
            match tag {
                similar::DiffTag::Equal => {}
                similar::DiffTag::Replace if o.len() == n.len() => {
                    for (i, j) in o.zip(n) {
                        self.patch(&elements[i], &old[i], &new[j])?;
                    }
                }
                _ => {
                    for i in o.clone().rev() {
                        elements[i].clone().remove();
                    }
                    for (k, j) in n.enumerate() {
                        let inserted = array.insert(o.start + k, input(&new[j]));
                        self.lay_out(&inserted);
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts `new` where `node` is: as a property's value, or as an array element.
    fn replace(&self, node: &CstNode, new: &Value) -> Result<(), String> {
        if let Some(prop) = node.parent().and_then(|p| p.as_object_prop()) {
            prop.set_value(input(new));
            if let Some(value) = prop.value() {
                self.lay_out(&value);
            }
            return Ok(());
        }
        let v = input(new);
        let replaced = match node.clone() {
            CstNode::Container(CstContainerNode::Object(n)) => n.replace_with(v),
            CstNode::Container(CstContainerNode::Array(n)) => n.replace_with(v),
            CstNode::Leaf(CstLeafNode::StringLit(n)) => n.replace_with(v),
            CstNode::Leaf(CstLeafNode::NumberLit(n)) => n.replace_with(v),
            CstNode::Leaf(CstLeafNode::BooleanLit(n)) => n.replace_with(v),
            CstNode::Leaf(CstLeafNode::NullKeyword(n)) => n.replace_with(v),
            CstNode::Leaf(CstLeafNode::WordLit(n)) => n.replace_with(v),
            _ => None,
        };
        let replaced = replaced.ok_or("a value could not be replaced")?;
        self.lay_out(&replaced);
        Ok(())
    }
}

/// Whether a container is written over several lines.
fn spans_lines(node: &CstNode) -> bool {
    node.children().iter().any(CstNode::is_newline)
}

fn input(v: &Value) -> CstInputValue {
    match v {
        Value::Null => CstInputValue::Null,
        Value::Bool(b) => CstInputValue::Bool(*b),
        Value::Number(n) => CstInputValue::Number(n.to_string()),
        Value::String(s) => CstInputValue::String(s.clone()),
        Value::Array(a) => CstInputValue::Array(a.iter().map(input).collect()),
        Value::Object(m) => {
            CstInputValue::Object(m.iter().map(|(k, v)| (k.clone(), input(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// `text` edited by `change` to its parsed document.
    fn edited(text: &str, change: impl Fn(&mut Value)) -> Result<String, String> {
        let (mut doc, _) = clients::parse(text).unwrap();
        change(&mut doc);
        edit(text, &doc)
    }

    fn servers(doc: &mut Value) -> &mut Map<String, Value> {
        doc["mcpServers"].as_object_mut().unwrap()
    }

    #[test]
    fn removing_the_last_entry_takes_the_comma_before_it() {
        let text = "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\"},\n    \"b\": {\"command\": \"y\"} // last\n  }\n}\n";
        let out = edited(text, |d| {
            servers(d).shift_remove("b");
        });
        assert_eq!(
            out.unwrap(),
            "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\"}\n  }\n}\n"
        );
    }

    #[test]
    fn a_first_server_goes_into_an_empty_or_missing_object() {
        let empty = "{\n\t\"mcpServers\": {}\n}";
        let out = edited(empty, |d| {
            servers(d).insert("a".into(), json!({"command": "x"}));
        });
        assert_eq!(
            out.unwrap(),
            "{\n\t\"mcpServers\": {\n\t\t\"a\": {\n\t\t\t\"command\": \"x\"\n\t\t}\n\t}\n}"
        );
        let missing = "{\n    // settings of another tool\n    \"theme\": \"dark\"\n}\n";
        let out = edited(missing, |d| {
            d["mcpServers"] = json!({"a": {"command": "x", "args": ["-y"]}});
        });
        assert_eq!(
            out.unwrap(),
            "{\n    // settings of another tool\n    \"theme\": \"dark\",\n    \"mcpServers\": {\n        \"a\": {\n            \"command\": \"x\",\n            \"args\": [\"-y\"]\n        }\n    }\n}\n"
        );
    }

    #[test]
    fn a_value_of_another_type_is_replaced_where_it_stands() {
        let text = "{\"mcpServers\": {\"a\": {\"command\": \"x\", \"timeout\": \"slow\", \"args\": null}}}";
        let out = edited(text, |d| {
            d["mcpServers"]["a"]["timeout"] = json!(30);
            d["mcpServers"]["a"]["args"] = json!(["-y", "p@1"]);
        });
        assert_eq!(
            out.unwrap(),
            "{\"mcpServers\": {\"a\": {\"command\": \"x\", \"timeout\": 30, \"args\": [\"-y\", \"p@1\"]}}}"
        );
    }

    /// Text the tree cannot be matched to (a key written twice: parsers keep the last) is
    /// refused rather than edited into something else.
    #[test]
    fn text_that_does_not_match_the_document_is_refused() {
        let text = "{\"mcpServers\": {\"a\": {\"command\": \"x\"}, \"a\": {\"command\": \"y\"}}}";
        let out = edited(text, |d| {
            d["mcpServers"]["a"]["command"] = json!("z");
        });
        assert!(out.is_err(), "{out:?}");
    }
}
