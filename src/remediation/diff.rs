//! The unified diff a person approves, with secrets masked. A value is masked for what it is,
//! never for where a line puts it: the same value reads the same on the `-` and the `+` side
//! whatever the layout around it, and placeholders (`${input:x}`, `${env:X}`, `${VAR}`,
//! `$VAR`, `{{x}}`, `<your-key>`) are shown as written, since they hold no secret.

use std::collections::HashSet;

use serde_json::Value;

use crate::audit::redact::{self, REDACTED};
use crate::clients::{self, launch};

/// A unified diff of `before` -> `after` for `path`, every line masked.
pub fn unified_diff(path: &str, before: &str, after: &str) -> String {
    let mask = Mask::of(&[before, after]);
    let diff = similar::TextDiff::from_lines(before, after);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string();
    text.lines()
        .map(|l| {
            if l.starts_with("---") || l.starts_with("+++") || l.starts_with("@@") {
                l.to_string()
            } else {
                let (sign, rest) = l.split_at(l.chars().next().map_or(0, char::len_utf8));
                format!("{sign}{}", mask.line(rest))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// What to mask in the lines of some documents.
pub struct Mask {
    /// String values the documents hold as secrets: under a secret-like key, or right after a
    /// secret-like flag in an array (`"--api-key", "..."`). Found from the parsed documents, so
    /// a value is known wherever the text puts it.
    secrets: HashSet<String>,
}

impl Mask {
    /// The secrets of `texts` (each parsed as JSONC; one that does not parse adds nothing, and
    /// its lines are still masked by what they show).
    pub fn of(texts: &[&str]) -> Mask {
        let mut secrets = HashSet::new();
        for text in texts {
            if let Ok((doc, _)) = clients::parse(text) {
                collect(&doc, &mut secrets);
            }
        }
        Mask { secrets }
    }

    /// `line` with every secret masked: each JSON string in it masked for its value (a key's
    /// own name is kept), and token shapes masked in what lies between (comments).
    pub fn line(&self, line: &str) -> String {
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        // The key of the value that follows, when it is on this line and names a secret.
        let mut secret_key = false;
        while let Some(start) = rest.find('"') {
            out.push_str(&redact::redact_str(&rest[..start]));
            let Some(len) = string_len(&rest[start..]) else {
                // An unterminated string: the rest is masked as plain text.
                rest = &rest[start..];
                break;
            };
            let literal = &rest[start..start + len];
            rest = &rest[start + len..];
            let Ok(value) = serde_json::from_str::<String>(literal) else {
                out.push_str(&redact::redact_str(literal));
                secret_key = false;
                continue;
            };
            if let Some(after_colon) = rest.trim_start().strip_prefix(':') {
                out.push_str(literal);
                // Only a string value right after it (an object or array under a secret-like
                // key is masked for what it holds).
                secret_key =
                    after_colon.trim_start().starts_with('"') && redact::is_secret_key(&value);
                continue;
            }
            let masked = if secret_key || self.secrets.contains(&value) {
                mask_secret(&value)
            } else {
                mask_text(&value)
            };
            secret_key = false;
            if masked == value {
                out.push_str(literal);
            } else {
                out.push_str(&serde_json::to_string(&masked).unwrap_or_else(|_| REDACTED.into()));
            }
        }
        out.push_str(&redact::redact_str(rest));
        out
    }
}

/// The length of the JSON string literal that `s` starts with (its quotes included), if it
/// ends on this line.
fn string_len(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn collect(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if let Some(s) = v.as_str()
                    && redact::is_secret_key(k)
                {
                    out.insert(s.to_string());
                }
                collect(v, out);
            }
        }
        Value::Array(a) => {
            // `mcp-coordinator exec --secret NAME=VAR -- ...` names a secret of the store, which
            // the person approving should see.
            let exec = a.iter().position(|x| x == "exec");
            let end = a.iter().position(|x| x == "--");
            let own_flag = |i: usize| exec.is_some_and(|e| e < i) && end.is_some_and(|d| i < d);
            for (i, pair) in a.windows(2).enumerate() {
                if let (Some(flag), Some(value)) = (pair[0].as_str(), pair[1].as_str())
                    && is_secret_flag(flag)
                    && !own_flag(i)
                {
                    out.insert(value.to_string());
                }
            }
            for v in a {
                collect(v, out);
            }
        }
        _ => {}
    }
}

/// `--api-key`, `-token`: a flag whose value is a secret.
fn is_secret_flag(s: &str) -> bool {
    s.starts_with('-') && !s.contains('=') && redact::is_secret_key(s.trim_start_matches('-'))
}

/// A piece of a string value: literal text, or a placeholder a client fills in.
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits `s` into literal text and the placeholders in it: `${...}` (VS Code, Cursor, Claude
/// Code, Windsurf, Kilo Code), `$NAME` (Gemini CLI, the shell) and `{{...}}`.
fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut text_from = 0;
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        let end = if s[i..].starts_with("${") {
            s[i..].find('}').map(|e| i + e + 1)
        } else if s[i..].starts_with("{{") {
            s[i..].find("}}").map(|e| i + e + 2)
        } else if bytes[i] == b'$'
            // `$NAME` only as a word of its own, in capitals: a `$` inside a password
            // (`pa$sword`) is part of the secret, not a reference.
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_uppercase() || *c == b'_')
        {
            let len = s[i + 1..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(s.len() - i - 1);
            Some(i + 1 + len)
        } else {
            None
        };
        match end {
            Some(end) => {
                if text_from < i {
                    out.push(Piece::Text(&s[text_from..i]));
                }
                out.push(Piece::Placeholder(&s[i..end]));
                text_from = end;
                i = end;
            }
            None => i += s[i..].chars().next().map_or(1, char::len_utf8),
        }
    }
    if text_from < s.len() {
        out.push(Piece::Text(&s[text_from..]));
    }
    out
}

/// A value known to be secret: its literal text masked, its placeholders kept, and an
/// authorization scheme in front (`Bearer `) kept. `Bearer ${input:gh_token}` has nothing to
/// mask; `Bearer abc123` becomes `Bearer [REDACTED]`.
fn mask_secret(value: &str) -> String {
    if value.is_empty() || launch::is_placeholder(value) {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    for (n, piece) in pieces(value).into_iter().enumerate() {
        match piece {
            Piece::Placeholder(p) => out.push_str(p),
            Piece::Text(t) => {
                let (scheme, secret) = if n == 0 { split_scheme(t) } else { ("", t) };
                out.push_str(scheme);
                if secret.chars().any(char::is_alphanumeric) {
                    out.push_str(REDACTED);
                } else {
                    out.push_str(secret);
                }
            }
        }
    }
    out
}

/// `Bearer abc` -> (`Bearer `, `abc`).
fn split_scheme(t: &str) -> (&str, &str) {
    for scheme in ["bearer ", "basic ", "token "] {
        if t.len() >= scheme.len()
            && t.is_char_boundary(scheme.len())
            && t[..scheme.len()].eq_ignore_ascii_case(scheme)
        {
            return t.split_at(scheme.len());
        }
    }
    ("", t)
}

/// Any other value: token shapes and URL passwords in its literal text masked (a
/// `--api-key=...` argument as a secret), placeholders kept.
fn mask_text(value: &str) -> String {
    if let Some((flag, secret)) = value.split_once('=')
        && flag.starts_with('-')
        && redact::is_secret_key(flag.trim_start_matches('-'))
    {
        return format!("{flag}={}", mask_secret(secret));
    }
    pieces(value)
        .into_iter()
        .map(|piece| match piece {
            Piece::Placeholder(p) => p.to_string(),
            Piece::Text(t) => redact::redact_str(t),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_mask_secrets() {
        let before = "{\n  \"env\": {\n    \"GITHUB_TOKEN\": \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\",\n    \"API_KEY\": \"q8Zr2LmP0vXw9TkA\",\n    \"MODE\": \"fast\"\n  }\n}\n";
        let after = "{\n  \"env\": {\n    \"MODE\": \"fast\"\n  }\n}\n";
        let d = unified_diff("/x.json", before, after);
        assert!(!d.contains("ghp_abcdef"), "{d}");
        assert!(!d.contains("q8Zr2LmP0vXw9TkA"), "{d}");
        assert!(d.contains("-    \"GITHUB_TOKEN\": \"[REDACTED]\","), "{d}");
        assert!(d.contains("     \"MODE\": \"fast\""), "{d}");
    }

    /// The same value reads the same on both sides, whatever the layout around it, and a
    /// placeholder is never masked.
    #[test]
    fn both_sides_are_masked_alike_and_placeholders_are_shown() {
        let key = "q8Zr2LmP0vXw9TkA";
        // The header sits inline before and on its own line after; the API key, on the line
        // after its flag, is a secret only the document says is one.
        let before = format!(
            "{{\n  \"servers\": {{\n    \"gh\": {{\"url\": \"https://api.example.com/mcp\", \"headers\": {{\"Authorization\": \"Bearer ${{input:gh_token}}\", \"X-Api-Key\": \"{key}\"}}}},\n    \"s\": {{\n      \"command\": \"npx\",\n      \"args\": [\n        \"--api-key\",\n        \"{key}\"\n      ]\n    }}\n  }}\n}}\n"
        );
        let after = format!(
            "{{\n  \"servers\": {{\n    \"gh\": {{\n      \"url\": \"https://api.example.com/mcp\",\n      \"headers\": {{\n        \"Authorization\": \"Bearer ${{input:gh_token}}\",\n        \"X-Api-Key\": \"{key}\"\n      }}\n    }},\n    \"s\": {{\n      \"command\": \"npx\",\n      \"args\": [\n        \"--api-key\",\n        \"{key}\",\n        \"--token=ghp_abcdefghijklmnopqrstuvwxyz0123456789\",\n        \"--password=${{env:PW}}\"\n      ]\n    }}\n  }}\n}}\n"
        );
        let d = unified_diff("/mcp.json", &before, &after);
        assert!(!d.contains(key) && !d.contains("ghp_"), "{d}");
        let minus: Vec<&str> = d.lines().filter(|l| l.starts_with('-')).collect();
        let plus: Vec<&str> = d.lines().filter(|l| l.starts_with('+')).collect();
        assert!(
            minus.iter().any(|l| l.contains(
                "\"Authorization\": \"Bearer ${input:gh_token}\", \"X-Api-Key\": \"[REDACTED]\""
            )),
            "{d}"
        );
        assert!(
            plus.iter()
                .any(|l| l.ends_with("\"Authorization\": \"Bearer ${input:gh_token}\",")),
            "{d}"
        );
        assert!(
            plus.iter()
                .any(|l| l.ends_with("\"X-Api-Key\": \"[REDACTED]\"")),
            "{d}"
        );
        // On the line after its flag: masked on both sides alike.
        assert!(minus.contains(&"-        \"[REDACTED]\""), "{d}");
        assert!(plus.contains(&"+        \"[REDACTED]\","), "{d}");
        assert!(d.contains("+        \"--token=[REDACTED]\","), "{d}");
        assert!(d.contains("+        \"--password=${env:PW}\""), "{d}");
    }

    #[test]
    fn placeholders_are_never_masked() {
        for v in [
            "${input:gh_token}",
            "Bearer ${input:gh_token}",
            "${env:GITHUB_TOKEN}",
            "Bearer $GITHUB_PERSONAL_ACCESS_TOKEN",
            "${GITHUB_TOKEN}",
            "token ${secret:gh}",
            "{{GITHUB_TOKEN}}",
            "<your-token>",
            "",
        ] {
            assert_eq!(mask_secret(v), v);
            assert_eq!(mask_text(v), v);
        }
        assert_eq!(mask_secret("Bearer abcdefgh12345678"), "Bearer [REDACTED]");
        assert_eq!(mask_secret("q8Zr2LmP0vXw9TkA"), "[REDACTED]");
        assert_eq!(mask_secret("${env:USER}:hunter22"), "${env:USER}[REDACTED]");
        assert_eq!(mask_secret("pa$SWORD123"), "[REDACTED]");
        let m = Mask::of(&[]);
        assert_eq!(
            m.line("  \"Authorization\": \"Bearer ${input:gh_token}\","),
            "  \"Authorization\": \"Bearer ${input:gh_token}\","
        );
        assert_eq!(
            m.line("  \"API_KEY\": \"q8Zr2LmP0vXw9TkA\", // was ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            "  \"API_KEY\": \"[REDACTED]\", // was [REDACTED]"
        );
    }
}
