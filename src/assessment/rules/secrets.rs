//! Rules of the secrets family: values that look like credentials, in plain text in an
//! entry's environment, arguments, headers or URL (and a remote reached over plain http), and
//! the masking and token shapes their evidence uses.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use url::{Host, Url};

use super::Out;
use crate::assessment::{Severity, SuggestedFix};
use crate::audit::redact;
use crate::clients::action::{Action, SecretVia, secret_name_for};
use crate::clients::launch;
use crate::clients::{Client, ConfigFile, ServerEntry, pointer_segment};

/// Masks a secret for evidence: its known prefix (or first two characters), an ellipsis and
/// its length.
pub fn mask(value: &str) -> String {
    let shown: String = match known_prefix(value) {
        Some(p) => p.to_string(),
        None => value.chars().take(2).collect(),
    };
    format!("{shown}… ({} chars)", value.chars().count())
}

const PROVIDERS: &[(&str, &str)] = &[
    ("github_pat_", "GitHub"),
    ("ghp_", "GitHub"),
    ("gho_", "GitHub"),
    ("ghu_", "GitHub"),
    ("ghs_", "GitHub"),
    ("ghr_", "GitHub"),
    ("sk-ant-", "Anthropic"),
    ("sk-proj-", "OpenAI"),
    ("sk-", "OpenAI"),
    ("sk_live_", "Stripe"),
    ("sk_test_", "Stripe"),
    ("rk_live_", "Stripe"),
    ("xoxb-", "Slack"),
    ("xoxp-", "Slack"),
    ("xoxa-", "Slack"),
    ("xoxs-", "Slack"),
    ("AIza", "Google"),
    ("AKIA", "AWS"),
    ("ASIA", "AWS"),
    ("glpat-", "GitLab"),
];

fn known_prefix(value: &str) -> Option<&'static str> {
    PROVIDERS
        .iter()
        .find(|(p, _)| value.starts_with(p))
        .map(|(p, _)| *p)
}

/// The provider of a known token shape found in `s` (`GitHub`, `AWS`...), or `token` for
/// JWTs and other shapes the redactor knows.
pub fn token_in(s: &str) -> Option<String> {
    if redact::redact_str(s) == s {
        return None;
    }
    for word in s.split(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c))) {
        if let Some((_, provider)) = PROVIDERS.iter().find(|(p, _)| word.starts_with(p)) {
            return Some((*provider).to_string());
        }
    }
    Some("token".into())
}

/// `s` without `${...}` and `$NAME` references: what is left is literal text.
fn without_placeholders(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            if chars.peek() == Some(&'{') {
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                }
                continue;
            }
            if chars
                .peek()
                .is_some_and(|d| d.is_ascii_alphabetic() || *d == '_')
            {
                while chars
                    .peek()
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
                {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// "a GitHub token", "an AWS token", "a token".
fn a_token(provider: &str) -> String {
    if provider == "token" {
        "a token".into()
    } else if provider.starts_with(['A', 'E', 'I', 'O', 'U']) {
        format!("an {provider} token")
    } else {
        format!("a {provider} token")
    }
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0) += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A literal value under a secret-like name that looks random enough to be a real secret.
fn high_entropy_secret(name: &str, value: &str) -> bool {
    let path_like = value.starts_with('/')
        || value.starts_with("~/")
        || value.starts_with("./")
        || value.starts_with("../")
        || value.contains("://");
    redact::is_secret_key(name)
        && !path_like
        && !launch::is_placeholder(value)
        && value.len() >= 12
        && !value.contains(char::is_whitespace)
        && entropy(value) >= 3.0
}

/// A host that is this machine: a loopback or unspecified address, `localhost` or a name
/// under `.localhost`.
fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Ipv4(ip) => ip.is_loopback() || ip.is_unspecified(),
        Host::Ipv6(ip) => ip.is_loopback() || ip.is_unspecified(),
        Host::Domain(d) => {
            let d = d.trim_end_matches('.');
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

/// `secret-in-env`: a credential as the value of an environment variable.
pub(super) fn in_env(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    if let Some(env) = e.raw.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            let Some(v) = v.as_str() else { continue };
            if launch::is_placeholder(v) || v.is_empty() {
                continue;
            }
            let why = match token_in(&without_placeholders(v)) {
                Some(provider) => Some(a_token(&provider)),
                None if high_entropy_secret(k, v) => {
                    Some("a high-entropy value under a secret-like name".into())
                }
                None => None,
            };
            if let Some(why) = why {
                let via = if file.client == Client::Vscode {
                    SecretVia::VscodeInput
                } else {
                    SecretVia::Exec
                };
                out.add(
                    "secret-in-env",
                    Severity::High,
                    file,
                    at(&format!("/env/{}", pointer_segment(k))),
                    Some(name),
                    format!(
                        "server {name}: {k} holds {why} in plain text in {}",
                        file.path
                    ),
                    format!("{k}={}", mask(v)),
                    Some(SuggestedFix::action(
                        "move the value into the coordinator's encrypted secret store",
                        Action::MoveSecretToStore {
                            file: file.path.clone(),
                            server: name.into(),
                            env_var: k.clone(),
                            secret_name: secret_name_for(name, k),
                            via,
                        },
                    )),
                );
            }
        }
    }
}

/// `secret-in-args`: a credential on the command line, visible in the process list.
pub(super) fn in_args(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    for (i, arg) in e.args.iter().enumerate() {
        // `exec --secret NAME[=VAR]` names a secret in the store; it is not one.
        if i > 0 && e.args[i - 1] == "--secret" {
            continue;
        }
        let literal = without_placeholders(arg);
        if literal.trim().is_empty() {
            continue;
        }
        let flag_secret =
            i > 0 && e.args[i - 1].starts_with('-') && high_entropy_secret(&e.args[i - 1], arg);
        let inline = arg
            .split_once('=')
            .filter(|(k, v)| k.starts_with('-') && high_entropy_secret(k, v))
            .map(|(_, v)| v.to_string());
        let provider = token_in(&literal);
        if provider.is_some() || flag_secret || inline.is_some() {
            let secret = inline.unwrap_or_else(|| arg.clone());
            out.add(
                "secret-in-args",
                Severity::Critical,
                file,
                at(&format!("/args/{i}")),
                Some(name),
                format!(
                    "server {name}: argument {i} holds {} in plain text; arguments are visible to every user in the process list",
                    provider.map_or("a secret".to_string(), |p| a_token(&p))
                ),
                mask(&secret),
                Some(SuggestedFix::text(
                    "pass the secret through an environment variable the server reads, then move it to the secret store",
                )),
            );
        }
    }
}

/// `secret-in-headers`: a credential as a header value.
pub(super) fn in_headers(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    if let Some(headers) = e.raw.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            let Some(v) = v.as_str() else { continue };
            let literal = without_placeholders(v);
            let credential = ["Bearer ", "bearer ", "Basic ", "Token ", "token "]
                .iter()
                .find_map(|p| literal.strip_prefix(p))
                .unwrap_or(&literal)
                .trim();
            if credential.is_empty() || launch::is_placeholder(credential) {
                continue;
            }
            let bearer =
                (credential != literal.trim() && credential.len() >= 12).then_some(credential);
            if token_in(&literal).is_some()
                || bearer.is_some()
                || high_entropy_secret(k, credential)
            {
                out.add(
                    "secret-in-headers",
                    Severity::High,
                    file,
                    at(&format!("/headers/{}", pointer_segment(k))),
                    Some(name),
                    format!("server {name}: header {k} holds a credential in plain text"),
                    format!("{k}: {}", mask(bearer.unwrap_or(v))),
                    Some(SuggestedFix::text(if file.client == Client::Vscode {
                        "use a VS Code input (${input:...}) for the header value"
                    } else {
                        "use the client's environment-variable substitution for the header, with the value kept outside the file"
                    })),
                );
            }
        }
    }
}

/// `secret-in-url` and `plain-http-remote`: a credential in the URL, and a remote server not
/// on this machine reached without TLS.
pub(super) fn in_url(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    let url_field = ["url", "serverUrl", "httpUrl"]
        .into_iter()
        .find_map(|k| e.raw.get(k).and_then(Value::as_str).map(|u| (k, u)));
    if let Some((url_key, url)) = url_field {
        // Parsed as a browser would (scheme and host in any case, userinfo, IPv6, percent
        // escapes); text that is not a URL (a placeholder) can still carry a token.
        let parsed = Url::parse(url.trim()).ok();
        let query_secret = parsed.as_ref().is_some_and(|u| {
            u.query_pairs()
                .any(|(k, v)| high_entropy_secret(&k, &v) || token_in(&v).is_some())
        });
        let url_has_credential = parsed
            .as_ref()
            .is_some_and(|u| u.password().is_some_and(|p| !p.is_empty()))
            || query_secret
            || token_in(url).is_some();
        if url_has_credential {
            out.add(
                "secret-in-url",
                Severity::High,
                file,
                at(&format!("/{url_key}")),
                Some(name),
                format!("server {name}: its URL carries a credential"),
                crate::clients::shown_url(url),
                Some(SuggestedFix::text(
                    "move the credential into a header filled from outside the file",
                )),
            );
        }
        // --- plain http ---
        if let Some(host) = parsed
            .as_ref()
            .filter(|u| u.scheme() == "http")
            .and_then(Url::host)
            .filter(|h| !is_loopback(h))
        {
            out.add(
                "plain-http-remote",
                Severity::High,
                file,
                at(&format!("/{url_key}")),
                Some(name),
                format!("server {name} is reached over plain http:// at {host}: requests and any credentials travel unencrypted"),
                crate::clients::shown_url(url),
                Some(if url_has_credential {
                    SuggestedFix::text("use https:// (and move the credential out of the URL first)")
                } else {
                    // Only the scheme changes; the rest stays as the person wrote it.
                    let rest = url.trim().split_once(':').map_or("", |(_, r)| r);
                    SuggestedFix::action(
                        "use https://",
                        Action::SetServerField {
                            file: file.path.clone(),
                            server: name.into(),
                            field: url_key.into(),
                            value: json!(format!("https:{rest}")),
                        },
                    )
                }),
            );
        }
    }
}
