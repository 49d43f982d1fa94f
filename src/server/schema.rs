//! The tool schemas clients see, made from the schemars ones: portable (no type arrays, closed
//! sets as plain string enums, no `$ref`s, standard formats only) and lean (an output schema
//! gives the shape of a result, not its documentation).
//!
//! Why the rewrite: schemars writes an `Option<T>` as `"type": ["T", "null"]` and a documented
//! enum as a `oneOf` of `const`s, which strict clients (the MCP Inspector among them) warn
//! about and render as a raw JSON editor; some clients do not follow `$ref`; and the output
//! schemas repeated every shared definition with every doc comment in every tool, most of
//! `tools/list`. The input the handlers check is still the schemars schema (see
//! `limits::check_arguments`), so dropping a keyword here never loosens what a tool accepts.

use std::sync::Arc;

use rmcp::model::JsonObject;
use serde_json::{Map, Value};

/// How many levels of an output value keep their shape: the root's properties with their own
/// (enums, properties, items), and their children with only their type. An array's items are
/// a level, as in the value itself.
const OUTPUT_DEPTH: usize = 2;

/// Formats JSON Schema 2020-12 defines; schemars adds Rust ones (`uint64`, `int32`, `double`)
/// that strict validators such as the Inspector's warn about. Ranges carry that meaning already.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "uuid",
    "regex",
];

/// Keywords kept in an output schema: what says the shape of a value. Descriptions, formats,
/// bounds and defaults are for whoever fills an input; a result is read, and its meaning is in
/// the tool description.
const OUTPUT_KEYWORDS: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "anyOf",
    "oneOf",
    "allOf",
];

/// The input schema clients see: `$ref`s inlined, made portable; descriptions, bounds and
/// defaults kept (the model fills the fields from them).
pub fn input(schema: &JsonObject) -> Arc<JsonObject> {
    let mut v = inlined(schema);
    portable(&mut v, Mode::Input, false);
    into_object(v, schema)
}

/// The output schema clients see: `$ref`s inlined, made portable, cut to the shape: no
/// descriptions, bounds or formats; `required` only at the root; below [`OUTPUT_DEPTH`] levels
/// only each value's type. Every value the full schema accepts, this one accepts.
pub fn output(schema: &JsonObject) -> Arc<JsonObject> {
    let mut v = inlined(schema);
    portable(&mut v, Mode::Output, false);
    shape(&mut v, OUTPUT_DEPTH, true);
    into_object(v, schema)
}

fn into_object(v: Value, fallback: &JsonObject) -> Arc<JsonObject> {
    match v {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(fallback.clone()),
    }
}

/// Whether a schema describes what a client sends (where an absent optional field is the only
/// way to say "none") or what a tool returns (where `null` may be on the wire).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Input,
    Output,
}

// ---- inlining ----

/// `schema` with every local `$ref` replaced by a copy of its definition, and `$defs` and
/// `$schema` dropped (2020-12 is MCP's default dialect). A definition that refers to itself
/// becomes `{}` where it recurs: valid for any value, if vaguer.
fn inlined(schema: &JsonObject) -> Value {
    let mut root = schema.clone();
    let defs = root
        .remove("$defs")
        .or_else(|| root.remove("definitions"))
        .and_then(|d| match d {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default();
    root.remove("$schema");
    let mut v = Value::Object(root);
    inline(&mut v, &defs, &mut Vec::new());
    v
}

fn inline(v: &mut Value, defs: &Map<String, Value>, stack: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.remove("$ref") {
                let name = target
                    .strip_prefix("#/$defs/")
                    .or_else(|| target.strip_prefix("#/definitions/"))
                    .unwrap_or(&target)
                    .to_string();
                match defs.get(&name) {
                    Some(Value::Object(def)) if !stack.contains(&name) => {
                        // The place that refers to a definition describes it there; the
                        // definition's own doc line would only repeat it.
                        let mut body = def.clone();
                        body.remove("description");
                        body.remove("title");
                        stack.push(name);
                        let mut body = Value::Object(body);
                        inline(&mut body, defs, stack);
                        stack.pop();
                        if let Value::Object(body) = body {
                            for (k, x) in body {
                                map.entry(k).or_insert(x);
                            }
                        }
                    }
                    // `true`, a recursion or an unknown name: any value.
                    _ => {}
                }
            }
            map.values_mut().for_each(|x| inline(x, defs, stack));
        }
        Value::Array(items) => items.iter_mut().for_each(|x| inline(x, defs, stack)),
        _ => {}
    }
}

// ---- portability ----

/// Rewrites `v` in place so strict clients accept it, at every depth. `null_on_wire` says
/// whether a `null` can really stand here: in an output, an optional property that is left out
/// when empty never carries `null`, so its schema loses the `null`; where `null` can stand, the
/// schema loses its `type` instead (and with it no type array is needed).
fn portable(v: &mut Value, mode: Mode, null_on_wire: bool) {
    let Value::Object(map) = v else {
        return;
    };
    let nullable = strip_null(map);
    string_enum(map);
    if nullable && mode == Mode::Output && null_on_wire {
        allow_null(map);
    }
    if map
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| !STANDARD_FORMATS.contains(&f))
    {
        map.remove("format");
    }
    if map.get("default") == Some(&Value::Null) {
        map.remove("default");
    }
    let required: Vec<String> = map
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        for (name, schema) in props.iter_mut() {
            any_as_object(schema);
            portable(schema, mode, required.contains(name));
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(schema) = map.get_mut(key) {
            if key == "items" {
                any_as_object(schema);
            }
            portable(schema, mode, true);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get_mut(key) {
            for b in branches {
                portable(b, mode, null_on_wire);
            }
        }
    }
}

/// `true` as a subschema ("any JSON", what schemars writes for `serde_json::Value`) is valid
/// JSON Schema, but the TypeScript SDK (and so the MCP Inspector) refuses a tool list holding
/// it as a property or items schema; `{}` means the same.
fn any_as_object(schema: &mut Value) {
    if *schema == Value::Bool(true) {
        *schema = Value::Object(Map::new());
    }
}

/// Takes `null` out of `map`'s type array, `enum`, and `anyOf`/`oneOf` branches (a single
/// branch left is merged into `map`, whose own keys win). Returns whether `null` was allowed.
fn strip_null(map: &mut Map<String, Value>) -> bool {
    let mut nullable = false;
    loop {
        if let Some(Value::Array(types)) = map.get("type") {
            let rest: Vec<Value> = types
                .iter()
                .filter(|t| t.as_str() != Some("null"))
                .cloned()
                .collect();
            nullable |= rest.len() < types.len();
            match rest.len() {
                0 => {
                    map.remove("type");
                }
                1 => {
                    map.insert("type".into(), rest[0].clone());
                }
                // Several types (never from our Rust types): one branch each.
                _ => {
                    map.remove("type");
                    let branches = rest
                        .into_iter()
                        .map(|t| Value::Object(Map::from_iter([("type".to_string(), t)])))
                        .collect();
                    map.insert("anyOf".into(), Value::Array(branches));
                }
            }
        }
        if let Some(Value::Array(values)) = map.get_mut("enum") {
            let before = values.len();
            values.retain(|x| !x.is_null());
            nullable |= values.len() < before;
        }
        let mut merged = false;
        for key in ["anyOf", "oneOf"] {
            let Some(Value::Array(branches)) = map.get_mut(key) else {
                continue;
            };
            let before = branches.len();
            branches.retain(|b| !is_null_schema(b));
            if branches.len() == before {
                continue;
            }
            nullable = true;
            if branches.len() == 1 {
                let only = branches.remove(0);
                map.remove(key);
                if let Value::Object(only) = only {
                    for (k, x) in only {
                        map.entry(k).or_insert(x);
                    }
                }
                merged = true;
            }
        }
        // A merged branch may bring its own type array or null branch.
        if !merged {
            return nullable;
        }
    }
}

/// `{"type": "null"}` or `{"const": null}` (with or without a description).
fn is_null_schema(v: &Value) -> bool {
    let Some(map) = v.as_object() else {
        return false;
    };
    let only_null_type = map.get("type").and_then(Value::as_str) == Some("null");
    let const_null = map.get("const") == Some(&Value::Null);
    (only_null_type || const_null)
        && map
            .keys()
            .all(|k| matches!(k.as_str(), "type" | "const" | "description" | "title"))
}

/// Lets `null` through a schema that lost it, without a type array: the keywords that would
/// refuse `null` (`type`, `enum`, `const`) go, in its branches too. What remains (`properties`,
/// `items`, bounds) applies only to values of their own type, so it still describes the rest.
fn allow_null(map: &mut Map<String, Value>) {
    map.remove("type");
    map.remove("enum");
    map.remove("const");
    // Loosened branches may overlap, which `oneOf` refuses.
    if let Some(branches) = map.remove("oneOf") {
        map.insert("anyOf".into(), branches);
    }
    for key in ["anyOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get_mut(key) {
            for b in branches.iter_mut() {
                if let Value::Object(b) = b {
                    allow_null(b);
                }
            }
        }
    }
}

/// A `oneOf`/`anyOf` whose every branch is a string constant (or a string enum), which is how
/// schemars writes an enum with documented variants, becomes one `{"type": "string", "enum":
/// [...]}`: clients render that as a choice. The variants' doc lines go; the field that uses
/// the enum says what matters about them.
fn string_enum(map: &mut Map<String, Value>) {
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(branches)) = map.get(key) else {
            continue;
        };
        let mut values = Vec::new();
        for b in branches {
            let Some(b) = b.as_object() else {
                return;
            };
            if b.get("type").is_some_and(|t| t != "string") {
                return;
            }
            match (b.get("const"), b.get("enum")) {
                (Some(c @ Value::String(_)), None) => values.push(c.clone()),
                (None, Some(Value::Array(e))) if e.iter().all(Value::is_string) => {
                    values.extend(e.iter().cloned())
                }
                _ => return,
            }
        }
        if values.is_empty() {
            return;
        }
        map.remove(key);
        map.insert("type".into(), Value::String("string".into()));
        map.insert("enum".into(), Value::Array(values));
    }
}

// ---- output shape ----

/// Cuts an output schema to the shape of the value: only [`OUTPUT_KEYWORDS`], `required` only
/// at the root, and at `depth` 0 only the value's type. Dropping keywords only widens what the
/// schema accepts, so every real result still validates.
fn shape(v: &mut Value, depth: usize, root: bool) {
    let Value::Object(map) = v else {
        return;
    };
    if depth == 0 {
        let kind = type_of(map);
        map.clear();
        if let Some(t) = kind {
            map.insert("type".into(), t);
        }
        return;
    }
    map.retain(|k, x| {
        let keep = OUTPUT_KEYWORDS.contains(&k.as_str()) && (root || k != "required");
        // `false` refuses unknown keys; a shape leaves them open.
        keep && !(k == "additionalProperties" && x.is_boolean())
    });
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        props.values_mut().for_each(|p| shape(p, depth - 1, false));
    }
    for key in ["items", "additionalProperties"] {
        if let Some(schema) = map.get_mut(key) {
            shape(schema, depth - 1, false);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get_mut(key) {
            branches.iter_mut().for_each(|b| shape(b, depth, false));
        }
    }
}

/// The one JSON type a schema's values have, if it says: its `type`, or the type all its
/// branches share.
fn type_of(map: &Map<String, Value>) -> Option<Value> {
    if let Some(t @ Value::String(_)) = map.get("type") {
        return Some(t.clone());
    }
    let branches = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_array))?;
    let mut kinds = branches
        .iter()
        .map(|b| b.as_object().and_then(type_of))
        .collect::<Option<Vec<Value>>>()?;
    kinds.dedup();
    match kinds.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        v.as_object().cloned().unwrap_or_default()
    }

    fn input_of(v: Value) -> Value {
        Value::Object((*input(&obj(v))).clone())
    }

    fn output_of(v: Value) -> Value {
        Value::Object((*output(&obj(v))).clone())
    }

    /// Every occurrence of a type array in `v`, by path.
    fn type_arrays(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if map.get("type").is_some_and(Value::is_array) {
                    out.push(path.to_string());
                }
                for (k, x) in map {
                    type_arrays(x, &format!("{path}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    type_arrays(x, &format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    fn valid(schema: &Value, value: &Value) -> bool {
        jsonschema::validator_for(schema)
            .map(|v| v.is_valid(value))
            .unwrap_or(false)
    }

    /// What schemars writes for `Option<String>`, `Option<u32>` with bounds, and an
    /// `Option<Enum>` of a documented enum behind a `$ref`.
    fn optional_fields() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "name": {"description": "A name.", "type": ["string", "null"]},
                "limit": {"type": ["integer", "null"], "format": "uint32",
                          "minimum": 1, "maximum": 200, "default": null},
                "risk": {"description": "How much could go wrong.",
                         "anyOf": [{"$ref": "#/$defs/Risk"}, {"type": "null"}]}
            },
            "additionalProperties": false,
            "$defs": {
                "Risk": {
                    "description": "A risk level.",
                    "oneOf": [
                        {"description": "Easily undone.", "type": "string", "const": "low"},
                        {"description": "Irreversible.", "type": "string", "const": "critical"}
                    ]
                }
            }
        })
    }

    #[test]
    fn an_optional_input_field_is_its_type_and_not_required() {
        let got = input_of(optional_fields());
        assert_eq!(
            got,
            json!({
                "type": "object",
                "properties": {
                    "name": {"description": "A name.", "type": "string"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 200},
                    "risk": {"description": "How much could go wrong.",
                             "type": "string", "enum": ["low", "critical"]}
                },
                "additionalProperties": false
            })
        );
    }

    #[test]
    fn an_enum_of_documented_and_plain_variants_is_one_string_enum() {
        // schemars groups undocumented variants into one `enum` branch.
        let got = input_of(json!({
            "type": "object",
            "properties": {"p": {"oneOf": [
                {"type": "string", "enum": ["high", "low"]},
                {"description": "First.", "type": "string", "const": "urgent"}
            ]}}
        }));
        assert_eq!(
            got["properties"]["p"],
            json!({"type": "string", "enum": ["high", "low", "urgent"]})
        );
    }

    #[test]
    fn a_tagged_enum_keeps_its_branches() {
        let variants = json!([
            {"type": "object", "properties": {"type": {"type": "string", "const": "a"},
                                              "n": {"type": ["integer", "null"]}},
             "required": ["type"]},
            {"type": "object", "properties": {"type": {"type": "string", "const": "b"}},
             "required": ["type"]}
        ]);
        let got = input_of(json!({
            "type": "object",
            "properties": {"actions": {"type": "array", "items": {"$ref": "#/$defs/A"}}},
            "$defs": {"A": {"description": "An action.", "oneOf": variants}}
        }));
        let items = &got["properties"]["actions"]["items"];
        assert_eq!(
            items["oneOf"][0]["properties"]["n"],
            json!({"type": "integer"})
        );
        assert_eq!(items["oneOf"][1]["properties"]["type"]["const"], "b");
        assert!(items.get("description").is_none(), "{items}");
    }

    #[test]
    fn a_type_array_of_several_types_becomes_branches() {
        let got = input_of(json!({
            "type": "object",
            "properties": {"v": {"type": ["string", "number", "null"]}}
        }));
        assert_eq!(
            got["properties"]["v"],
            json!({"anyOf": [{"type": "string"}, {"type": "number"}]})
        );
    }

    #[test]
    fn nothing_is_left_as_a_type_array_or_a_ref() {
        for schema in [input_of(optional_fields()), output_of(optional_fields())] {
            let mut found = Vec::new();
            type_arrays(&schema, "", &mut found);
            assert!(found.is_empty(), "{found:?} in {schema}");
            let text = schema.to_string();
            assert!(!text.contains("$ref") && !text.contains("$defs"), "{text}");
        }
    }

    #[test]
    fn a_recursive_definition_is_cut_where_it_recurs() {
        let got = input_of(json!({
            "type": "object",
            "properties": {"tree": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}
        }));
        assert_eq!(
            got["properties"]["tree"]["properties"]["children"]["items"],
            json!({})
        );
    }

    #[test]
    fn true_subschemas_become_empty_objects() {
        let got = input_of(json!({
            "type": "object",
            "properties": {"any": true, "list": {"type": "array", "items": true}}
        }));
        assert_eq!(got["properties"]["any"], json!({}));
        assert_eq!(got["properties"]["list"]["items"], json!({}));
    }

    /// What schemars writes (for serializing) for a result with a nested object, a list of
    /// objects, a `#[serde(skip_serializing_if = "Option::is_none")]` field and a plain
    /// `Option` field (always written, `null` when empty).
    fn result_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "id": {"description": "The id.", "type": "string"},
                "status": {"$ref": "#/$defs/Status"},
                "skipped": {"type": ["string", "null"]},
                "written": {"type": ["integer", "null"], "format": "uint64", "minimum": 0},
                "item": {"$ref": "#/$defs/Item"},
                "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}}
            },
            "required": ["id", "status", "written", "item", "items", "counts"],
            "$defs": {
                "Status": {"oneOf": [{"const": "ok", "type": "string", "description": "Fine."},
                                     {"const": "bad", "type": "string"}]},
                "Item": {"description": "An item.", "type": "object", "properties": {
                    "name": {"type": "string", "description": "Its name."},
                    "when": {"type": ["string", "null"], "format": "date-time"},
                    "status": {"$ref": "#/$defs/Status"},
                    "inner": {"type": "object", "properties": {"x": {"type": "string"}}}
                }, "required": ["name", "when", "status", "inner"]}
            }
        })
    }

    #[test]
    fn an_output_schema_is_the_shape_two_levels_deep() {
        assert_eq!(
            output_of(result_schema()),
            json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["ok", "bad"]},
                    "skipped": {"type": "string"},
                    "written": {},
                    "item": {"type": "object", "properties": {
                        "name": {"type": "string"},
                        "when": {},
                        "status": {"type": "string"},
                        "inner": {"type": "object"}
                    }},
                    "items": {"type": "array", "items": {"type": "object"}},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}}
                },
                "required": ["id", "status", "written", "item", "items", "counts"]
            })
        );
    }

    #[test]
    fn every_value_the_full_output_schema_accepts_the_lean_one_accepts() {
        let full = result_schema();
        let lean = output_of(full.clone());
        let item = json!({"name": "n", "when": null, "status": "ok", "inner": {"x": "y"}});
        let values = [
            json!({"id": "a", "status": "ok", "written": null, "item": item,
                   "items": [], "counts": {}}),
            json!({"id": "a", "status": "bad", "skipped": "s", "written": 3, "item": item,
                   "items": [item, item], "counts": {"x": 1}}),
        ];
        for value in &values {
            assert!(valid(&full, value), "the full schema refuses {value}");
            assert!(valid(&lean, value), "the lean schema refuses {value}");
        }
        // Still a shape: wrong types and missing fields are refused.
        let wrong = json!({"id": 1, "status": "ok", "written": 1, "item": item,
                           "items": [], "counts": {}});
        assert!(!valid(&lean, &wrong));
        let missing = json!({"id": "a", "status": "ok", "written": 1, "items": [], "counts": {}});
        assert!(!valid(&lean, &missing));
        let unknown_status = json!({"id": "a", "status": "meh", "written": 1, "item": item,
                                    "items": [], "counts": {}});
        assert!(!valid(&lean, &unknown_status));
    }

    #[test]
    fn a_nullable_enum_that_is_written_as_null_allows_null() {
        let schema = json!({
            "type": "object",
            "properties": {"reason": {"anyOf": [{"$ref": "#/$defs/R"}, {"type": "null"}]}},
            "required": ["reason"],
            "$defs": {"R": {"type": "string", "enum": ["a", "b"]}}
        });
        let lean = output_of(schema);
        assert_eq!(lean["properties"]["reason"], json!({}));
        assert!(valid(&lean, &json!({"reason": null})));
        assert!(valid(&lean, &json!({"reason": "a"})));
    }

    #[test]
    fn a_nullable_tagged_enum_that_is_written_as_null_allows_null() {
        let variant = |tag: &str| {
            json!({"type": "object", "properties": {"k": {"type": "string", "const": tag}},
                   "required": ["k"]})
        };
        let schema = json!({
            "type": "object",
            "properties": {
                "reason": {"anyOf": [{"$ref": "#/$defs/R"}, {"type": "null"}]},
                "action": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}
            },
            "required": ["reason", "action"],
            "$defs": {
                "R": {"oneOf": [{"type": "string", "const": "a", "description": "A."},
                                {"type": "string", "const": "b", "description": "B."}]},
                "A": {"oneOf": [variant("x"), variant("y")]}
            }
        });
        let lean = output_of(schema);
        assert_eq!(lean["properties"]["reason"], json!({}));
        for value in [
            json!({"reason": null, "action": null}),
            json!({"reason": "a", "action": {"k": "x"}}),
        ] {
            assert!(valid(&lean, &value), "{value} against {lean}");
        }
    }

    #[test]
    fn an_output_branch_type_survives_the_cut_when_all_branches_share_it() {
        let schema = json!({
            "type": "object",
            "properties": {"outer": {"type": "object", "properties": {
                "action": {"oneOf": [
                    {"type": "object", "properties": {"k": {"const": "a"}}},
                    {"type": "object", "properties": {"k": {"const": "b"}}}
                ]},
                "mixed": {"anyOf": [{"type": "string"}, {"type": "object"}]}
            }}},
            "required": ["outer"]
        });
        let lean = output_of(schema);
        let outer = &lean["properties"]["outer"]["properties"];
        assert_eq!(outer["action"], json!({"type": "object"}));
        assert_eq!(outer["mixed"], json!({}));
    }
}
