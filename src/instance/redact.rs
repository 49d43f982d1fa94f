//! Masks an instance's secret values in what its child sends back (stderr lines, tool results
//! and errors), so a child that prints or returns its environment does not leak a secret into
//! a log line, an audit event or a tool result.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What a secret value becomes.
pub const MASK: &str = "[REDACTED]";

/// Values shorter than this are not searched for: a 3-letter "secret" would mask common
/// words everywhere, and is no secret.
const MIN_LEN: usize = 6;

/// The secret values of one instance (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Each value as it is, and as it appears inside a JSON string when that differs.
    needles: Arc<[String]>,
}

impl Redactor {
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut needles: Vec<String> = Vec::new();
        for v in values {
            let v = v.as_ref();
            if v.len() < MIN_LEN {
                continue;
            }
            needles.push(v.to_string());
            let quoted = serde_json::to_string(v).unwrap_or_default();
            let escaped = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(v);
            if escaped != v {
                needles.push(escaped.to_string());
            }
        }
        // Longest first, so a value that contains another is masked whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Redactor {
            needles: needles.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Whether `text` holds a secret value (as is or JSON-escaped).
    pub fn found_in(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }

    /// `text` with every secret value masked.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.found_in(text) {
            return Cow::Borrowed(text);
        }
        let mut out = text.to_string();
        for n in self.needles.iter() {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        Cow::Owned(out)
    }

    /// Masks secret values in every string (and object key) of `value`; true if any was.
    pub fn value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => match self.text(s) {
                Cow::Owned(masked) => {
                    *s = masked;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            Value::Array(items) => {
                // Every item is visited: no short circuit.
                let mut any = false;
                for item in items.iter_mut() {
                    any |= self.value(item);
                }
                any
            }
            Value::Object(map) => {
                let mut any = false;
                if map.keys().any(|k| self.found_in(k)) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.text(&k).into_owned(), v);
                    }
                    any = true;
                }
                for v in map.values_mut() {
                    any |= self.value(v);
                }
                any
            }
            _ => false,
        }
    }

    /// A JSON text with secret values masked, or None when it holds none (the common case
    /// costs one substring search per value). Masking works on the parsed strings, so the
    /// result stays valid JSON.
    pub fn json_text(&self, raw: &str) -> Option<String> {
        if self.is_empty() || !self.found_in(raw) {
            return None;
        }
        let mut value: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            // Not JSON after all: mask the text itself.
            Err(_) => return Some(self.text(raw).into_owned()),
        };
        self.value(&mut value);
        Some(value.to_string())
    }

    /// `item` with secret values masked in its JSON form (unchanged when it holds none, or
    /// when the masked form no longer fits the type).
    pub fn serde<T: Serialize + DeserializeOwned>(&self, item: T) -> T {
        if self.is_empty() {
            return item;
        }
        let Ok(mut value) = serde_json::to_value(&item) else {
            return item;
        };
        if !self.value(&mut value) {
            return item;
        }
        serde_json::from_value(value).unwrap_or(item)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_values_in_text_and_json_strings_only() {
        let r = Redactor::new(["s3cr3t-token", "ab", "quo\"te-value"]);
        assert_eq!(r.text("token=s3cr3t-token;"), "token=[REDACTED];");
        assert_eq!(r.text("nothing here"), "nothing here");
        // Too short to search for.
        assert_eq!(r.text("ab ab"), "ab ab");
        let raw = json!({"content": [{"type": "text", "text": "TOKEN=s3cr3t-token"}], "n": 1, "q": "quo\"te-value"}).to_string();
        let masked: Value = serde_json::from_str(&r.json_text(&raw).unwrap()).unwrap();
        assert_eq!(masked["content"][0]["text"], "TOKEN=[REDACTED]");
        assert_eq!(masked["q"], MASK);
        assert_eq!(masked["n"], 1);
        assert_eq!(r.json_text(r#"{"text": "clean"}"#), None);
    }

    #[test]
    fn a_value_inside_another_is_masked_whole_and_keys_too() {
        let r = Redactor::new(["abcdef", "abcdef-longer"]);
        assert_eq!(
            r.text("x abcdef-longer y abcdef"),
            "x [REDACTED] y [REDACTED]"
        );
        let mut v = json!({"abcdef": ["abcdef"]});
        assert!(r.value(&mut v));
        assert_eq!(v, json!({"[REDACTED]": ["[REDACTED]"]}));
        assert!(Redactor::new(Vec::<String>::new()).is_empty());
    }
}
