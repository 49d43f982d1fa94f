//! The rules an assessment applies to each server entry (and across a client's files): secrets
//! in plain text, unpinned packages, dangerous launches, broad filesystem roots, plain HTTP,
//! duplicates, policy lists and compliance, and health. Each finding names its rule, severity,
//! file and JSON pointer, shows its evidence with secrets masked, and suggests a fix.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use url::{Host, Url};

use super::clients::{Client, ConfigFile, ServerEntry, Transport, pointer_segment};
use super::launch::{self, Ecosystem};
use super::policy::{Policy, Verdict};
use super::{AssessmentType, Finding, Severity, SuggestedFix};
use crate::audit::redact;
use crate::remediation::actions::{Action, SecretVia, secret_name_for};

/// Every rule, with the assessment types it belongs to and what it checks.
pub const RULES: &[(&str, &[AssessmentType], &str)] = &[
    (
        "config-unreadable",
        &[
            AssessmentType::Security,
            AssessmentType::Compliance,
            AssessmentType::Health,
        ],
        "the file cannot be read or is not valid JSON",
    ),
    (
        "secret-in-env",
        &[AssessmentType::Security],
        "a secret in plain text in env",
    ),
    (
        "secret-in-args",
        &[AssessmentType::Security],
        "a secret in plain text in args (visible in the process list)",
    ),
    (
        "secret-in-headers",
        &[AssessmentType::Security],
        "a secret in plain text in headers",
    ),
    (
        "secret-in-url",
        &[AssessmentType::Security],
        "a password or token in a server URL",
    ),
    (
        "unpinned-package",
        &[AssessmentType::Security],
        "npx/uvx/pip launches a package without an exact version",
    ),
    (
        "unpinned-image",
        &[AssessmentType::Security],
        "a Docker image without a digest (no tag, or latest, is worse)",
    ),
    (
        "shell-wrapper",
        &[AssessmentType::Security],
        "the server is launched through sh -c / bash -c",
    ),
    (
        "curl-pipe-shell",
        &[AssessmentType::Security],
        "the launch pipes a download into a shell",
    ),
    (
        "docker-privileged",
        &[AssessmentType::Security],
        "docker run --privileged",
    ),
    (
        "docker-host-network",
        &[AssessmentType::Security],
        "docker run --network host",
    ),
    (
        "docker-sensitive-mount",
        &[AssessmentType::Security],
        "docker mounts /, the home directory or docker.sock",
    ),
    (
        "filesystem-broad-root",
        &[AssessmentType::Security],
        "a filesystem server rooted at / or the whole home directory",
    ),
    (
        "plain-http-remote",
        &[AssessmentType::Security],
        "a remote server over plain http:// to a non-loopback host",
    ),
    (
        "duplicate-server-name",
        &[AssessmentType::Security, AssessmentType::Health],
        "the same server name in two files of one client",
    ),
    (
        "policy-denied",
        &[AssessmentType::Security, AssessmentType::Compliance],
        "a server, package or command on the policy denylist",
    ),
    (
        "policy-not-allowed",
        &[AssessmentType::Security, AssessmentType::Compliance],
        "a server, package or command not on the policy allowlist",
    ),
    (
        "policy-unpinned",
        &[AssessmentType::Compliance],
        "the policy requires pinned packages",
    ),
    (
        "policy-registry",
        &[AssessmentType::Compliance],
        "a package from a registry the policy does not allow",
    ),
    (
        "command-not-found",
        &[AssessmentType::Health],
        "the command is not on PATH",
    ),
    (
        "server-disabled",
        &[AssessmentType::Health],
        "the entry is disabled",
    ),
    (
        "server-incomplete",
        &[AssessmentType::Health],
        "the entry has neither command nor url",
    ),
];

/// The root the rules need besides the files.
pub struct RuleContext<'a> {
    pub policy: &'a Policy,
    pub home: Option<&'a str>,
    /// Directories of `PATH`, for the command check.
    pub path_dirs: Vec<std::path::PathBuf>,
}

struct Out<'a> {
    kinds: &'a [AssessmentType],
    findings: Vec<Finding>,
}

impl Out<'_> {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        rule: &str,
        severity: Severity,
        file: &ConfigFile,
        pointer: String,
        server: Option<&str>,
        message: String,
        evidence: String,
        fix: Option<SuggestedFix>,
    ) {
        let wanted = RULES
            .iter()
            .find(|r| r.0 == rule)
            .is_some_and(|r| r.1.iter().any(|t| self.kinds.contains(t)));
        if wanted {
            self.findings.push(Finding {
                rule: rule.to_string(),
                severity,
                file: file.path.clone(),
                pointer,
                server: server.map(String::from),
                message,
                evidence,
                fix,
            });
        }
    }
}

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

/// Applies every rule of `kinds` to the files (cross-file rules included); most severe first.
pub fn assess(
    files: &[ConfigFile],
    kinds: &[AssessmentType],
    ctx: &RuleContext<'_>,
) -> Vec<Finding> {
    let mut out = Out {
        kinds,
        findings: Vec::new(),
    };
    for file in files {
        if let Some(error) = &file.error {
            out.add(
                "config-unreadable",
                Severity::High,
                file,
                String::new(),
                None,
                format!("{} ({}) cannot be used: {error}", file.path, file.client),
                error.clone(),
                Some(SuggestedFix::text(
                    "fix the file by hand; the client cannot load its servers either",
                )),
            );
            continue;
        }
        for entry in &file.servers {
            check_entry(&mut out, file, entry, ctx);
        }
    }
    duplicates(&mut out, files);
    // Most severe first, then by place, so results (and golden files) are stable.
    out.findings.sort_by(|x, y| {
        y.severity
            .rank()
            .cmp(&x.severity.rank())
            .then_with(|| x.file.cmp(&y.file))
            .then_with(|| x.pointer.cmp(&y.pointer))
            .then_with(|| x.rule.cmp(&y.rule))
    });
    out.findings
}

fn check_entry(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry, ctx: &RuleContext<'_>) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    // --- secrets ---
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
                crate::assessment::clients::shown_url(url),
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
                crate::assessment::clients::shown_url(url),
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
    if e.transport == Transport::Stdio && e.command.is_none() {
        out.add(
            "server-incomplete",
            Severity::Medium,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name} has neither `command` nor `url`; the client cannot start it"),
            String::new(),
            None,
        );
    }
    if e.disabled {
        out.add(
            "server-disabled",
            Severity::Info,
            file,
            at("/disabled"),
            Some(name),
            format!("server {name} is disabled"),
            "disabled: true".into(),
            None,
        );
    }
    // --- policy on the server name ---
    policy_list(
        out,
        file,
        e,
        "server",
        name,
        &ctx.policy.servers.check(name),
    );
    let Some(command) = e.command.as_deref() else {
        return;
    };
    let cmd = launch::base(command);
    policy_list(
        out,
        file,
        e,
        "command",
        &cmd,
        &ctx.policy.commands.check(&cmd),
    );
    // --- health: command on PATH ---
    let found = if command.contains('/') {
        std::path::Path::new(command).is_file()
    } else {
        ctx.path_dirs.iter().any(|d| d.join(command).is_file())
    };
    if !found {
        out.add(
            "command-not-found",
            Severity::Medium,
            file,
            at("/command"),
            Some(name),
            format!(
                "server {name}: command {command:?} is not found{}",
                if command.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            ),
            command.to_string(),
            Some(SuggestedFix::text("install it, or give its absolute path")),
        );
    }
    // --- dangerous launches ---
    let joined = e.args.join(" ");
    if matches!(
        cmd.as_str(),
        "sh" | "bash" | "zsh" | "dash" | "fish" | "cmd" | "powershell" | "pwsh"
    ) && e
        .args
        .iter()
        .any(|a| a == "-c" || a == "/c" || a == "-Command" || a.starts_with("-lc"))
    {
        out.add(
            "shell-wrapper",
            Severity::High,
            file,
            at("/args"),
            Some(name),
            format!("server {name} is launched through a shell ({cmd} -c): whatever the string expands to runs, unreviewed"),
            redact::redact_str(&format!("{cmd} {joined}")),
            Some(SuggestedFix::text("launch the program directly with command and args")),
        );
    }
    let downloads = ["curl ", "wget "]
        .iter()
        .any(|d| joined.contains(d) || cmd == d.trim());
    let into_shell = joined.split('|').skip(1).any(|after| {
        let next = after.split_whitespace().next().unwrap_or("");
        matches!(launch::base(next).as_str(), "sh" | "bash" | "zsh" | "dash")
    });
    if downloads && into_shell {
        out.add(
            "curl-pipe-shell",
            Severity::Critical,
            file,
            at("/args"),
            Some(name),
            format!(
                "server {name} downloads a script and pipes it into a shell every time it starts"
            ),
            redact::redact_str(&joined),
            Some(SuggestedFix::text(
                "install the server once from a pinned, verified package",
            )),
        );
    }
    if matches!(cmd.as_str(), "docker" | "podman") {
        docker_rules(out, file, e, ctx);
    }
    // --- filesystem servers ---
    let is_fs = e.name.to_ascii_lowercase().contains("filesystem")
        || e.args
            .iter()
            .any(|a| a.contains("server-filesystem") || a.contains("mcp-server-filesystem"));
    if is_fs {
        for (i, a) in e.args.iter().enumerate() {
            let home = ctx.home.map(|h| h.trim_end_matches('/'));
            let broad = a == "/"
                || a == "~"
                || a == "~/"
                || a == "$HOME"
                || a == "${HOME}"
                || home.is_some_and(|h| a.trim_end_matches('/') == h)
                || (a.starts_with("/home/") && a.trim_end_matches('/').matches('/').count() == 2)
                || (a.starts_with("/Users/") && a.trim_end_matches('/').matches('/').count() == 2);
            if broad {
                out.add(
                    "filesystem-broad-root",
                    Severity::High,
                    file,
                    at(&format!("/args/{i}")),
                    Some(name),
                    format!("server {name} can read and write {a}: everything there, SSH keys and credentials included"),
                    a.clone(),
                    Some(SuggestedFix::text("root it at the project directories it needs")),
                );
            }
        }
    }
    // --- packages: pins, policy, registries ---
    if let Some(pkg) = launch::package(command, &e.args) {
        policy_list(
            out,
            file,
            e,
            "package",
            &pkg.name,
            &ctx.policy.packages.check(&pkg.name),
        );
        let pin_fix = |version: Option<String>| {
            SuggestedFix::action(
                "pin an exact version",
                Action::PinPackageVersion {
                    file: file.path.clone(),
                    server: name.into(),
                    lookup_latest: version.is_none(),
                    version,
                },
            )
        };
        if !pkg.pinned() {
            let spec = &e.args[pkg.arg_index];
            let (rule, severity, what) = match pkg.ecosystem {
                Ecosystem::Docker
                    if pkg.version.is_none() || pkg.version.as_deref() == Some("latest") =>
                {
                    (
                        "unpinned-image",
                        Severity::Medium,
                        "a Docker image with no tag (or latest) and no digest: whatever is pushed next runs",
                    )
                }
                Ecosystem::Docker => (
                    "unpinned-image",
                    Severity::Low,
                    "a Docker image by tag without a digest: a tag can be moved",
                ),
                Ecosystem::Npm => (
                    "unpinned-package",
                    Severity::Medium,
                    "an npm package with no exact version: every start may fetch a new release",
                ),
                Ecosystem::PyPi => (
                    "unpinned-package",
                    Severity::Medium,
                    "a Python package with no == version: every start may fetch a new release",
                ),
            };
            let fix = match pkg.ecosystem {
                Ecosystem::Docker => {
                    SuggestedFix::text("pin the image by digest (image@sha256:...)")
                }
                _ => pin_fix(None),
            };
            out.add(
                rule,
                severity,
                file,
                at(&format!("/args/{}", pkg.arg_index)),
                Some(name),
                format!("server {name} launches {what}"),
                spec.clone(),
                Some(fix.clone()),
            );
            if ctx.policy.require_pinned {
                out.add(
                    "policy-unpinned",
                    Severity::High,
                    file,
                    at(&format!("/args/{}", pkg.arg_index)),
                    Some(name),
                    format!(
                        "server {name}: the policy requires an exact version for {}",
                        pkg.name
                    ),
                    spec.clone(),
                    Some(fix),
                );
            }
        }
        let host = pkg.registry_host();
        if !ctx.policy.allowed_registries.is_empty()
            && !ctx.policy.allowed_registries.iter().any(|r| r == &host)
        {
            out.add(
                "policy-registry",
                Severity::High,
                file,
                at(&format!("/args/{}", pkg.arg_index)),
                Some(name),
                format!(
                    "server {name}: {} comes from {host}, which the policy does not allow ({})",
                    pkg.name,
                    ctx.policy.allowed_registries.join(", ")
                ),
                host.clone(),
                Some(SuggestedFix::text(
                    "take the package from an allowed registry",
                )),
            );
        }
    }
}

fn docker_rules(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry, ctx: &RuleContext<'_>) {
    let name = e.name.as_str();
    let args = &e.args;
    for (i, a) in args.iter().enumerate() {
        let next = args.get(i + 1).map(String::as_str).unwrap_or("");
        let at = format!("{}/args/{i}", e.pointer);
        if a == "--privileged" {
            out.add(
                "docker-privileged",
                Severity::Critical,
                file,
                at.clone(),
                Some(name),
                format!("server {name} runs a privileged container: it has root on the host"),
                a.clone(),
                Some(SuggestedFix::text(
                    "drop --privileged; add only the capabilities it needs",
                )),
            );
        }
        let network = if a == "--network" || a == "--net" {
            Some(next)
        } else {
            a.strip_prefix("--network=")
                .or_else(|| a.strip_prefix("--net="))
        };
        if network == Some("host") {
            out.add(
                "docker-host-network",
                Severity::High,
                file,
                at.clone(),
                Some(name),
                format!("server {name} shares the host's network: it reaches every local service"),
                if a.contains('=') {
                    a.clone()
                } else {
                    format!("{a} {next}")
                },
                Some(SuggestedFix::text("use the default bridge network")),
            );
        }
        let mount = if a == "-v" || a == "--volume" || a == "--mount" {
            Some(next)
        } else {
            a.strip_prefix("--volume=")
                .or_else(|| a.strip_prefix("--mount="))
                .or_else(|| a.strip_prefix("-v="))
        };
        if let Some(m) = mount {
            let source = if m.contains("source=") || m.contains("src=") {
                m.split(',')
                    .find_map(|kv| {
                        kv.strip_prefix("source=")
                            .or_else(|| kv.strip_prefix("src="))
                    })
                    .unwrap_or("")
            } else {
                m.split(':').next().unwrap_or("")
            };
            let home = ctx.home.map(|h| h.trim_end_matches('/'));
            let sensitive = source == "/"
                || source.contains("docker.sock")
                || source == "~"
                || source == "$HOME"
                || source == "${HOME}"
                || home.is_some_and(|h| source.trim_end_matches('/') == h)
                || ((source.starts_with("/home/") || source.starts_with("/Users/"))
                    && source.trim_end_matches('/').matches('/').count() == 2);
            if sensitive {
                out.add(
                    "docker-sensitive-mount",
                    Severity::Critical,
                    file,
                    format!("{}/args/{}", e.pointer, i + usize::from(!a.contains('='))),
                    Some(name),
                    format!("server {name} mounts {source} into its container"),
                    m.to_string(),
                    Some(SuggestedFix::text(
                        "mount only the directories the server needs, read-only where possible",
                    )),
                );
            }
        }
    }
}

fn policy_list(
    out: &mut Out<'_>,
    file: &ConfigFile,
    e: &ServerEntry,
    what: &str,
    value: &str,
    verdict: &Verdict,
) {
    let name = e.name.as_str();
    let fix = || {
        SuggestedFix::action(
            "disable the server (or remove it)",
            Action::DisableServer {
                file: file.path.clone(),
                server: name.into(),
            },
        )
    };
    match verdict {
        Verdict::Allowed => {}
        Verdict::Denied(glob) => out.add(
            "policy-denied",
            Severity::High,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name}: {what} {value} is on the policy denylist ({glob})"),
            value.to_string(),
            Some(fix()),
        ),
        Verdict::NotAllowed => out.add(
            "policy-not-allowed",
            Severity::Medium,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name}: {what} {value} is not on the policy allowlist"),
            value.to_string(),
            Some(fix()),
        ),
    }
}

fn duplicates(out: &mut Out<'_>, files: &[ConfigFile]) {
    // Entries apply together when they are global (user scope) or belong to the same project:
    // a project-scope file's directory, or a `projects.<dir>` section of ~/.claude.json.
    type Place<'a> = (&'a ConfigFile, &'a ServerEntry, Option<String>);
    let mut seen: BTreeMap<(&str, String), Vec<Place<'_>>> = BTreeMap::new();
    for f in files {
        let file_project = crate::assessment::clients::project_dir(f);
        for e in &f.servers {
            let project = e
                .pointer
                .strip_prefix("/projects/")
                .and_then(|rest| rest.split_once("/mcpServers/"))
                .map(|(p, _)| p.replace("~1", "/").replace("~0", "~"))
                .or_else(|| file_project.clone());
            seen.entry((f.client.as_str(), e.name.clone()))
                .or_default()
                .push((f, e, project));
        }
    }
    for ((client, name), places) in seen {
        if places.len() < 2 {
            continue;
        }
        let mut contexts: Vec<Option<&String>> = places.iter().map(|p| p.2.as_ref()).collect();
        contexts.sort();
        contexts.dedup();
        let mut flagged = std::collections::BTreeSet::new();
        for ctx in contexts {
            let together: Vec<&Place<'_>> = places
                .iter()
                .filter(|p| p.2.is_none() || p.2.as_ref() == ctx)
                .collect();
            if together.len() < 2 {
                continue;
            }
            let paths: Vec<String> = together
                .iter()
                .map(|(f, e, _)| format!("{}#{}", f.path, e.pointer))
                .collect();
            for (f, e, _) in together.iter().skip(1) {
                if !flagged.insert((f.path.clone(), e.pointer.clone())) {
                    continue;
                }
                out.add(
                    "duplicate-server-name",
                    Severity::Low,
                    f,
                    e.pointer.clone(),
                    Some(&name),
                    format!(
                        "{client} defines server {name} {} times where they apply together; which one runs depends on the client's precedence",
                        paths.len()
                    ),
                    paths.join(", "),
                    Some(SuggestedFix::text("keep one definition and remove the others")),
                );
            }
        }
    }
}
