//! The rules an assessment applies to each server entry (and across a client's files): secrets
//! in plain text, unpinned packages, dangerous launches, broad filesystem roots, plain HTTP,
//! duplicates, policy lists and compliance, and health. Each finding names its rule, severity,
//! file and JSON pointer, shows its evidence with secrets masked, and suggests a fix.
//!
//! This file holds the rule table, the finding collector and the order rules run in; each rule
//! family has a file of its own (`secrets`, `health`, `lists`, `launches`, `filesystem`,
//! `packages`, `duplicates`). The rules depend on the assessment's types and policy, the
//! client-config model (`crate::clients`) and `audit::redact`; nothing here touches the disk
//! beyond the `PATH` check, nor the store.

mod duplicates;
mod filesystem;
mod health;
mod launches;
mod lists;
mod packages;
mod secrets;

use super::policy::Policy;
use super::{AssessmentType, Finding, Severity, SuggestedFix};
use crate::clients::launch;
use crate::clients::{ConfigFile, ServerEntry};
pub use secrets::{entropy, mask, token_in};

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
    duplicates::duplicates(&mut out, files);
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

/// The rules of one server entry, family by family, in a fixed order (a tie in the final sort
/// keeps it).
fn check_entry(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry, ctx: &RuleContext<'_>) {
    secrets::in_env(out, file, e);
    secrets::in_args(out, file, e);
    secrets::in_headers(out, file, e);
    secrets::in_url(out, file, e);
    health::entry(out, file, e);
    let name = e.name.as_str();
    // --- policy on the server name ---
    lists::policy_list(
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
    lists::policy_list(
        out,
        file,
        e,
        "command",
        &cmd,
        &ctx.policy.commands.check(&cmd),
    );
    health::command_on_path(out, file, e, command, &ctx.path_dirs);
    launches::check(out, file, e, &cmd, ctx);
    filesystem::check(out, file, e, ctx);
    packages::check(out, file, e, command, ctx);
}
