//! Redaction of secrets before anything reaches the audit log: values under secret-like keys,
//! known token shapes anywhere in a string, and passwords in URLs.

use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Key fragments (lowercase, without `-` and `_`) that mark a value as secret.
const SECRET_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "accesskey",
    "cookie",
    "masterkey",
];

/// Known token prefixes and the minimum length of what follows them.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("github_pat_", 20),
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("sk-ant-", 20),
    ("sk-proj-", 20),
    ("sk-", 20),
    ("sk_live_", 16),
    ("sk_test_", 16),
    ("rk_live_", 16),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("xoxa-", 10),
    ("xoxs-", 10),
    ("AIza", 30),
    ("AKIA", 16),
    ("ASIA", 16),
    ("glpat-", 20),
];

/// Returns `value` with every secret replaced by [`REDACTED`].
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_str(s)),
        other => other.clone(),
    }
}

/// The JSON text of `value` with every secret replaced by [`REDACTED`]: the same text as
/// `redact(value).to_string()`, written in one pass without building the redacted copy (the
/// audit log does this for every event).
pub fn redacted_text(value: &Value) -> String {
    // Serializing JSON values to a String cannot fail; the fallback is never taken.
    serde_json::to_string(&Redacted(value)).unwrap_or_else(|_| redact(value).to_string())
}

/// Serializes the value it holds as [`redact`] would return it.
struct Redacted<'a>(&'a Value);

impl serde::Serialize for Redacted<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    if is_secret_key(k) && !v.is_null() {
                        m.serialize_entry(k, REDACTED)?;
                    } else {
                        m.serialize_entry(k, &Redacted(v))?;
                    }
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Redacted(v))?;
                }
                seq.end()
            }
            Value::String(text) => s.serialize_str(&redact_str(text)),
            other => other.serialize(s),
        }
    }
}

/// Whether a JSON key names a secret (`apiKey`, `GITHUB_TOKEN`, `client-secret`, ...).
pub fn is_secret_key(key: &str) -> bool {
    // Most keys are short ASCII: normalized on the stack, without an allocation per key.
    let mut buf = [0u8; 64];
    let mut len = 0;
    for b in key.bytes() {
        if !b.is_ascii() || len == buf.len() {
            return is_secret_key_slow(key);
        }
        if b != b'_' && b != b'-' {
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    }
    let norm = &buf[..len];
    SECRET_KEY_PARTS
        .iter()
        .any(|part| norm.windows(part.len()).any(|w| w == part.as_bytes()))
}

fn is_secret_key_slow(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_KEY_PARTS.iter().any(|part| norm.contains(part))
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Redacts token-shaped words, `Bearer` credentials, JWTs and URL passwords inside a string.
pub fn redact_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut after_bearer = false;
    while !rest.is_empty() {
        let start = rest.find(is_token_char).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        if rest.is_empty() {
            break;
        }
        let end = rest.find(|c| !is_token_char(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        let jwt_end = jwt_len(rest);
        if jwt_end > 0 {
            out.push_str(REDACTED);
            rest = &rest[jwt_end..];
            after_bearer = false;
            continue;
        }
        if after_bearer && word.len() >= 8 || is_token(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        after_bearer = word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic");
        rest = &rest[end..];
    }
    redact_url_password(&out)
}

fn is_token(word: &str) -> bool {
    TOKEN_PREFIXES.iter().any(|(prefix, min)| {
        word.strip_prefix(prefix)
            .is_some_and(|tail| tail.len() >= *min)
    })
}

/// Length of a JWT (`eyJ...` three dot-separated base64url parts) at the start of `s`, or 0.
fn jwt_len(s: &str) -> usize {
    if !s.starts_with("eyJ") {
        return 0;
    }
    let end = s
        .find(|c: char| !(is_token_char(c) || c == '.'))
        .unwrap_or(s.len());
    let candidate = &s[..end];
    let parts: Vec<&str> = candidate.split('.').collect();
    if parts.len() == 3 && parts.iter().all(|p| p.len() >= 8) {
        end
    } else {
        0
    }
}

/// `scheme://user:password@host` becomes `scheme://user:[REDACTED]@host`, for every URL in a
/// line of text. Whether a word is a URL with a password is the `url` crate's call; text that
/// looks like one but does not parse (a bad port, a space in the host) still has whatever sits
/// between the first `:` and the last `@` of its authority hidden: redaction errs on hiding.
fn redact_url_password(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        // The scheme is the run of scheme characters before `://`.
        let scheme_start = head[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |at| at + 1);
        let candidate = format!("{}{authority}", &head[scheme_start..]);
        let has_password = match url::Url::parse(&candidate) {
            Ok(u) => u.password().is_some_and(|p| !p.is_empty() && p != REDACTED),
            Err(_) => true,
        };
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon))
                if has_password && colon < at && &authority[colon + 1..at] != REDACTED =>
            {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let v = json!({"env": {"GITHUB_TOKEN": "abc", "PATH": "/bin"}, "apiKey": "k", "n": 1,
                       "list": [{"client_secret": "s"}]});
        let r = redact(&v);
        assert_eq!(r["env"]["GITHUB_TOKEN"], REDACTED);
        assert_eq!(r["env"]["PATH"], "/bin");
        assert_eq!(r["apiKey"], REDACTED);
        assert_eq!(r["n"], 1);
        assert_eq!(r["list"][0]["client_secret"], REDACTED);
    }

    #[test]
    fn token_shapes_inside_strings_are_redacted() {
        let gh = "ghp_0123456789abcdefghijABCDEFGHIJ0123";
        let s = format!("run --token={gh} now");
        assert_eq!(redact_str(&s), format!("run --token={REDACTED} now"));
        assert_eq!(
            redact_str("sk-ant-api03-abcdefghijklmnopqrstuvwxyz"),
            REDACTED
        );
        assert_eq!(redact_str("AKIAIOSFODNN7EXAMPLE"), REDACTED);
        assert_eq!(
            redact_str("Authorization: Bearer abcdefgh12345678"),
            format!("Authorization: Bearer {REDACTED}")
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(redact_str(&format!("t {jwt}")), format!("t {REDACTED}"));
    }

    #[test]
    fn ordinary_text_is_kept() {
        for s in [
            "task-queue sk-short",
            "npx -y @modelcontextprotocol/server-memory",
            "skeleton-key",
        ] {
            assert_eq!(redact_str(s), s);
        }
    }

    #[test]
    fn redacted_text_is_the_text_of_the_redacted_value() {
        let gh = "ghp_0123456789abcdefghijABCDEFGHIJ0123";
        for v in [
            json!({"env": {"GITHUB_TOKEN": "abc", "PATH": "/bin"}, "apiKey": "k", "n": 1.5,
                   "list": [{"client_secret": "s"}, null, true, format!("x {gh}")],
                   "token": null, "Ünïcode-Secret": "v", "emoji": "\u{1F600}\"quoted\"\n",
                   "a_very_long_key_name_that_goes_on_and_on_well_past_sixty_four_bytes_token": 1}),
            json!("postgres://app:hunter2@db.local/x"),
            json!([]),
            json!(null),
        ] {
            assert_eq!(redacted_text(&v), redact(&v).to_string(), "{v}");
        }
    }

    #[test]
    fn secret_keys_match_in_any_case_and_spelling() {
        for k in [
            "apiKey",
            "API_KEY",
            "x-api-key",
            "GITHUB_TOKEN",
            "Private-Key",
            "ÜberSecret",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["path", "url", "name", "arguments", "duration_us", "Ünïcode"] {
            assert!(!is_secret_key(k), "{k}");
        }
        let long = format!("{}token", "x".repeat(70));
        assert!(is_secret_key(&long));
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_str("postgres://app:hunter2@db.local:5432/x"),
            format!("postgres://app:{REDACTED}@db.local:5432/x")
        );
        assert_eq!(redact_str("https://host/a:b@c"), "https://host/a:b@c");
        // Any scheme case; a password with an `@` in it; one in a line of text.
        assert_eq!(
            redact_str("HTTPS://u:p@ss@host/x"),
            format!("HTTPS://u:{REDACTED}@host/x")
        );
        assert_eq!(
            redact_str("connect to redis://default:s3cret@cache:6379 now"),
            format!("connect to redis://default:{REDACTED}@cache:6379 now")
        );
        // No password: nothing to hide (a user name alone, an empty password).
        assert_eq!(redact_str("https://git@host/x"), "https://git@host/x");
        assert_eq!(redact_str("https://git:@host/x"), "https://git:@host/x");
        // Not a valid URL (port out of range): the password is hidden all the same.
        assert_eq!(
            redact_str("https://u:pw@host:99999/x"),
            format!("https://u:{REDACTED}@host:99999/x")
        );
    }
}
