//! The assessment rules against realistic MCP client configs: a corpus of fake home directories
//! (`tests/fixtures/homes/`) with golden findings per assessment type (`tests/fixtures/golden/`;
//! run with `MCP_COORDINATOR_UPDATE_GOLDEN=1` to rewrite them), and for every rule a config that
//! triggers it and a near miss that must not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mcp_coordinator::assessment::clients::{self, Client, ConfigFile, Roots, Scope};
use mcp_coordinator::assessment::policy::{Lists, Policy};
use mcp_coordinator::assessment::rules::{self, RULES, RuleContext};
use mcp_coordinator::assessment::{AssessmentType, Finding, Severity};
use mcp_coordinator::remediation::actions::{Action, SecretVia};
use serde_json::{Value, json};

use AssessmentType::{Compliance, Health, Security};

const UPDATE_ENV: &str = "MCP_COORDINATOR_UPDATE_GOLDEN";

const KINDS: [AssessmentType; 3] = [
    AssessmentType::Security,
    AssessmentType::Compliance,
    AssessmentType::Health,
];

/// The commands the fake PATH holds (so `command-not-found` does not depend on the machine).
const LAUNCHERS: &[&str] = &[
    "npx", "uvx", "uv", "docker", "node", "python3", "sh", "bash",
];

/// Every fake secret written into the fixture corpus: none may appear in a golden file.
const FAKE_SECRETS: &[&str] = &[
    "ghp_38AibNyyurlGFb0EkjKWREhbiGjlvhkTp3SK",
    "ghp_QOo6Cd6rvau5kHvRwMzzuVtYkwMJFrCfZ4U2",
    "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",
    "BSArpS9wg1QlRRLiiRejeKx0gbVC3lr",
    "xoxb-6382389762-7113486046962-3WWWqWibY6PFcv7DJzk3i8ju",
    "xoxb-6335714833-4402717625112-PgpoiN4au9KWLFbAzjQ05OI4",
    "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",
    "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",
    "AIzaqM79-O36jKkv-0GhTnrU_D4J1_pmHdNZ1IN",
    "sk-ant-api03-U9z4mgYake_BSDv2iFeuS0HOkJ9C1hnsSSIIpeUxT0uRcm0EA6Gk8htj-wf0gZpc5RIpGuK0Q-Ye6UamnabfIoGCo16wEAA",
    "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",
    "ntn_CPsVdj8F0dY7UitOZEqThxXlvQLYDPbr7D1YtQHBEbxgXE",
    "tt_13052ba131525fa27a6abde3911a9589",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "Tr0ub4dor-and-3",
];

// Fake secrets for the per-rule tests (correct shapes, never real).
const GITHUB_PAT: &str = "ghp_R8xQ2mVn4TzL7wKp9sJd3FhY6cBa1EuG0oNi";
const STRIPE_KEY: &str = "sk_live_51FakeKeyQ8nW2xLr5Tz9Kp3Vx7Yb1Mc4Nd6Pf0Hg2Jk8Lq";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const HEX_KEY: &str = "7f3a9c1e5b8d2f4a6c0e9b1d3f5a7c2e";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A directory holding empty executables named like the usual launchers, used as PATH.
fn fake_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in LAUNCHERS {
        let path = dir.path().join(name);
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

/// The roots of a fake home: the home itself, used also as a project directory, and every
/// directory under `code/` as a project.
fn roots(home: &Path) -> Roots {
    let mut projects = vec![home.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(home.join("code")) {
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        projects.extend(dirs);
    }
    Roots {
        home: Some(home.to_path_buf()),
        projects,
    }
}

/// The findings `AssessmentService::evaluate` would return: `assess`, then most severe first,
/// then by file, pointer and rule.
fn assess(
    files: &[ConfigFile],
    kind: AssessmentType,
    policy: &Policy,
    home: &Path,
    path_dir: &Path,
) -> Vec<Finding> {
    let home = home.display().to_string();
    let ctx = RuleContext {
        policy,
        home: Some(&home),
        path_dirs: vec![path_dir.to_path_buf()],
    };
    rules::assess(files, &[kind], &ctx)
}

// ---------------------------------------------------------------------------------------------
// The corpus and its golden findings
// ---------------------------------------------------------------------------------------------

fn fixture_homes() -> Vec<(String, PathBuf)> {
    let mut homes: Vec<(String, PathBuf)> = std::fs::read_dir(fixtures().join("homes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    homes.sort();
    homes
}

fn fixture_policy() -> Policy {
    Policy::load(&fixtures().join("policy.toml")).unwrap()
}

/// Replaces the fixture home's absolute path in every string (file paths become relative).
fn relativize(v: &mut Value, prefix: &str) {
    match v {
        Value::String(s) => *s = s.replace(prefix, ""),
        Value::Array(items) => items.iter_mut().for_each(|i| relativize(i, prefix)),
        Value::Object(map) => map.values_mut().for_each(|i| relativize(i, prefix)),
        _ => {}
    }
}

/// Golden file name -> its expected text.
fn golden_expected() -> Vec<(String, String)> {
    let policy = fixture_policy();
    let path = fake_path();
    let mut out = Vec::new();
    for (name, home) in fixture_homes() {
        let files = clients::discover(&roots(&home));
        for kind in KINDS {
            let findings = assess(&files, kind, &policy, &home, path.path());
            let mut value = serde_json::to_value(&findings).unwrap();
            relativize(&mut value, &format!("{}/", home.display()));
            out.push((
                format!("{name}.{kind}.json"),
                serde_json::to_string_pretty(&value).unwrap() + "\n",
            ));
        }
    }
    out
}

#[test]
fn golden_findings_match_the_corpus() {
    let dir = fixtures().join("golden");
    let update = std::env::var_os(UPDATE_ENV).is_some();
    let expected = golden_expected();
    let mut drift = Vec::new();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, text) in &expected {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drift.push(name.clone());
        }
    }
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !expected.iter().any(|(n, _)| n == &name) {
            if update {
                std::fs::remove_file(entry.path()).unwrap();
            } else {
                drift.push(format!("{name} (no such fixture home)"));
            }
        }
    }
    assert!(
        drift.is_empty(),
        "golden findings differ: {drift:?}\nreview the change, then run: {UPDATE_ENV}=1 cargo test --test rules"
    );
}

#[test]
fn golden_files_show_no_secret_and_no_machine_path() {
    // Every listed fake secret is really in the corpus (the list is not stale)...
    let mut corpus = String::new();
    for (_, home) in fixture_homes() {
        for f in clients::discover(&roots(&home)) {
            corpus.push_str(&std::fs::read_to_string(&f.path).unwrap());
        }
    }
    for secret in FAKE_SECRETS {
        assert!(corpus.contains(secret), "{secret} is not in the corpus");
    }
    // ...and no golden file shows one in full, nor an absolute path of this machine.
    let root = env!("CARGO_MANIFEST_DIR");
    let on_disk = std::fs::read_dir(fixtures().join("golden"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).unwrap())
        });
    for (name, text) in golden_expected().into_iter().chain(on_disk) {
        for secret in FAKE_SECRETS {
            assert!(!text.contains(secret), "{name} shows {secret}");
        }
        assert!(!text.contains(root), "{name} holds a machine path");
    }
}

#[test]
fn corpus_covers_every_client_format_and_scope() {
    let mut seen = BTreeSet::new();
    let mut unreadable = 0;
    let mut jsonc = 0;
    for (_, home) in fixture_homes() {
        let files = clients::discover(&roots(&home));
        for f in &files {
            seen.insert((f.client.as_str(), f.scope.as_str()));
            unreadable += usize::from(f.error.is_some());
            jsonc += usize::from(f.jsonc);
        }
    }
    let wanted = [
        (Client::ClaudeDesktop, Scope::User),
        (Client::ClaudeCode, Scope::User),
        (Client::ClaudeCode, Scope::Project),
        (Client::Vscode, Scope::User),
        (Client::Vscode, Scope::Project),
        (Client::Cursor, Scope::User),
        (Client::Cursor, Scope::Project),
        (Client::KiloCode, Scope::User),
        (Client::KiloCode, Scope::Project),
        (Client::Windsurf, Scope::User),
        (Client::GeminiCli, Scope::User),
        (Client::GeminiCli, Scope::Project),
    ];
    for (client, scope) in wanted {
        assert!(
            seen.contains(&(client.as_str(), scope.as_str())),
            "no {client} {scope} file in the corpus"
        );
    }
    assert_eq!(unreadable, 1, "exactly one malformed file");
    assert!(jsonc >= 1, "a JSONC file");
}

#[test]
fn the_clean_home_has_no_findings_of_any_type() {
    let home = fixtures().join("homes/carol");
    let files = clients::discover(&roots(&home));
    assert!(files.len() >= 8);
    let path = fake_path();
    for kind in KINDS {
        let findings = assess(&files, kind, &fixture_policy(), &home, path.path());
        assert!(findings.is_empty(), "{kind}: {findings:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// One rule at a time
// ---------------------------------------------------------------------------------------------

/// A fake home (also the project directory) with config files at the clients' real paths.
struct Case {
    home: tempfile::TempDir,
    path: tempfile::TempDir,
    policy: Policy,
}

impl Case {
    fn new() -> Self {
        Case {
            home: tempfile::tempdir().unwrap(),
            path: fake_path(),
            policy: Policy::default(),
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// Writes `text` at `rel` under the home.
    fn text(self, rel: &str, text: &str) -> Self {
        let path = self.home().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    /// Writes a JSON document at `rel` under the home.
    fn json(self, rel: &str, doc: Value) -> Self {
        let text = serde_json::to_string_pretty(&doc).unwrap();
        self.text(rel, &text)
    }

    fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    fn files(&self) -> Vec<ConfigFile> {
        clients::discover(&roots(self.home()))
    }

    fn run(&self, kind: AssessmentType) -> Vec<Finding> {
        assess(
            &self.files(),
            kind,
            &self.policy,
            self.home(),
            self.path.path(),
        )
    }

    /// The findings of one rule.
    fn rule(&self, kind: AssessmentType, rule: &str) -> Vec<Finding> {
        self.run(kind)
            .into_iter()
            .filter(|f| f.rule == rule)
            .collect()
    }
}

/// `(severity, pointer)` of each finding.
fn at(findings: &[Finding]) -> Vec<(Severity, &str)> {
    findings
        .iter()
        .map(|f| (f.severity, f.pointer.as_str()))
        .collect()
}

fn mcp_servers(servers: Value) -> Value {
    json!({ "mcpServers": servers })
}

const DESKTOP: &str = ".config/Claude/claude_desktop_config.json";
const CURSOR: &str = ".cursor/mcp.json";
const VSCODE_PROJECT: &str = ".vscode/mcp.json";
const KILO_PROJECT: &str = ".kilocode/mcp.json";
const WINDSURF: &str = ".codeium/windsurf/mcp_config.json";
const GEMINI: &str = ".gemini/settings.json";
const CLAUDE_CODE: &str = ".claude.json";

/// Every rule id with the test(s) below that cover it; a new rule must get one.
const TESTED: &[&str] = &[
    "config-unreadable",
    "secret-in-env",
    "secret-in-args",
    "secret-in-headers",
    "secret-in-url",
    "unpinned-package",
    "unpinned-image",
    "shell-wrapper",
    "curl-pipe-shell",
    "docker-privileged",
    "docker-host-network",
    "docker-sensitive-mount",
    "filesystem-broad-root",
    "plain-http-remote",
    "duplicate-server-name",
    "policy-denied",
    "policy-not-allowed",
    "policy-unpinned",
    "policy-registry",
    "command-not-found",
    "server-disabled",
    "server-incomplete",
];

#[test]
fn every_rule_has_a_test() {
    let ids: BTreeSet<&str> = RULES.iter().map(|r| r.0).collect();
    let tested: BTreeSet<&str> = TESTED.iter().copied().collect();
    assert_eq!(ids, tested);
}

#[test]
fn config_unreadable_names_the_file_and_the_other_files_are_still_assessed() {
    // A hand edit that lost the comma between two entries.
    let broken = r#"{
  "mcpServers": {
    "weather": {
      "command": "uv",
      "args": ["--directory", "/home/dave/src/weather", "run", "weather.py"]
    }
    "github": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"]
    }
  }
}
"#;
    let case = Case::new().text(CURSOR, broken).json(
        GEMINI,
        mcp_servers(json!({"fetch": {"command": "uvx", "args": ["mcp-server-fetch"]}})),
    );
    for kind in KINDS {
        let bad = case.rule(kind, "config-unreadable");
        assert_eq!(at(&bad), [(Severity::High, "")], "{kind}");
        assert!(bad[0].file.ends_with(CURSOR));
        assert_eq!(bad[0].server, None);
        assert!(bad[0].evidence.starts_with("not valid JSON"), "{bad:?}");
    }
    // The servers of the broken file are unknown: nothing else is said about it.
    let all = case.run(Security);
    assert_eq!(all.iter().filter(|f| f.file.ends_with(CURSOR)).count(), 1);
    // The other file is assessed as usual.
    let fetch = case.rule(Security, "unpinned-package");
    assert_eq!(at(&fetch), [(Severity::Medium, "/mcpServers/fetch/args/0")]);
    assert!(fetch[0].file.ends_with(GEMINI));

    // The servers key holding something else than an object.
    let case = Case::new().json(
        KILO_PROJECT,
        json!({"mcpServers": [{"name": "fetch", "command": "uvx"}]}),
    );
    assert_eq!(
        at(&case.rule(Health, "config-unreadable")),
        [(Severity::High, "")]
    );

    // Near miss: JSONC (comments, trailing commas) is what VS Code accepts.
    let jsonc = r#"{
  // project servers
  "servers": {
    "fetch": {
      "type": "stdio",
      "command": "uvx",
      "args": ["mcp-server-fetch@2025.4.7"], /* pinned */
    },
  },
}
"#;
    let case = Case::new().text(VSCODE_PROJECT, jsonc);
    assert!(case.files()[0].jsonc);
    for kind in KINDS {
        assert!(case.run(kind).is_empty(), "{kind}");
    }
}

#[test]
fn secret_in_env() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "github": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": GITHUB_PAT}
            },
            "aws-kb": {
                "command": "uvx",
                "args": ["awslabs.bedrock-kb-retrieval-mcp-server@1.0.4"],
                "env": {
                    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
                    "AWS_REGION": "us-east-1"
                }
            }
        })),
    );
    let found = case.rule(Security, "secret-in-env");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/aws-kb/env/AWS_ACCESS_KEY_ID"),
            (
                Severity::High,
                "/mcpServers/aws-kb/env/AWS_SECRET_ACCESS_KEY"
            ),
            (
                Severity::High,
                "/mcpServers/github/env/GITHUB_PERSONAL_ACCESS_TOKEN"
            ),
        ]
    );
    let github = &found[2];
    assert_eq!(github.server.as_deref(), Some("github"));
    assert_eq!(
        github.evidence,
        "GITHUB_PERSONAL_ACCESS_TOKEN=ghp_… (40 chars)"
    );
    assert!(
        github.message.contains("GitHub token"),
        "{}",
        github.message
    );
    match &github.fix.as_ref().unwrap().action {
        Some(Action::MoveSecretToStore {
            server,
            env_var,
            secret_name,
            via,
            ..
        }) => {
            assert_eq!(server, "github");
            assert_eq!(env_var, "GITHUB_PERSONAL_ACCESS_TOKEN");
            assert_eq!(secret_name, "GITHUB_PERSONAL_ACCESS_TOKEN");
            assert_eq!(*via, SecretVia::Exec);
        }
        other => panic!("{other:?}"),
    }
    assert!(found[1].message.contains("high-entropy"), "{found:?}");
    assert_eq!(found[1].evidence, "AWS_SECRET_ACCESS_KEY=wJ… (40 chars)");
    for f in &found {
        assert!(!f.evidence.contains(AWS_SECRET) && !f.evidence.contains(GITHUB_PAT));
    }
    // Only a security assessment reports it.
    assert!(case.rule(Health, "secret-in-env").is_empty());

    // VS Code: the fix is an input, not the secret store.
    let case = Case::new().json(
        VSCODE_PROJECT,
        json!({"servers": {"perplexity": {
            "type": "stdio",
            "command": "npx",
            "args": ["-y", "server-perplexity-ask@0.1.3"],
            "env": {"PERPLEXITY_API_KEY": "pplx-Qw7Er9Ty2Ui4Op6As8Df1Gh3Jk5Lz0Xc2Vb4Nm6"}
        }}}),
    );
    let found = case.rule(Security, "secret-in-env");
    assert_eq!(
        at(&found),
        [(Severity::High, "/servers/perplexity/env/PERPLEXITY_API_KEY")]
    );
    assert!(matches!(
        found[0].fix.as_ref().unwrap().action,
        Some(Action::MoveSecretToStore {
            via: SecretVia::VscodeInput,
            ..
        })
    ));

    // Near misses: placeholders each client substitutes, and values that are no secret.
    let case = Case::new()
        .json(
            VSCODE_PROJECT,
            json!({
                "inputs": [{"type": "promptString", "id": "github_token", "password": true}],
                "servers": {"github": {
                    "command": "docker",
                    "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN", "ghcr.io/github/github-mcp-server@sha256:5e2f4b0c9a1d8e7f6a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"],
                    "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${input:github_token}"}
                }}
            }),
        )
        .json(
            DESKTOP,
            mcp_servers(json!({
                "github": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                    "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "<YOUR_TOKEN>"}
                },
                "slack": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-slack@2025.4.25"],
                    "env": {
                        "SLACK_BOT_TOKEN": "xoxb-your-bot-token",
                        "SLACK_TEAM_ID": "T01ABCD2EFG",
                        "SLACK_CHANNEL_IDS": "C01234567, C76543210"
                    }
                },
                "memory": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"],
                    "env": {"MEMORY_FILE_PATH": "/home/alice/.local/share/mcp/memory.jsonl"}
                }
            })),
        )
        .json(
            GEMINI,
            mcp_servers(json!({"tools": {
                "command": "python3",
                "args": ["-m", "my_mcp_server"],
                "env": {"API_KEY": "$EXTERNAL_API_KEY", "DB_PASSWORD": "${DB_PASSWORD}", "LOG_LEVEL": "debug"}
            }})),
        )
        .json(
            CURSOR,
            mcp_servers(json!({"github": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"],
                "env": {"GITHUB_PERSONAL_ACCESS_TOKEN": "${env:GITHUB_PERSONAL_ACCESS_TOKEN}", "GITHUB_TOKEN": ""}
            }})),
        );
    assert_eq!(case.files().len(), 4);
    assert!(case.rule(Security, "secret-in-env").is_empty());
}

#[test]
fn secret_in_args() {
    // Stripe's README: `npx -y @stripe/mcp --tools=all --api-key=YOUR_STRIPE_SECRET_KEY`.
    let case = Case::new().json(
        CLAUDE_CODE,
        json!({"numStartups": 3, "projects": {"/home/alice/code/shop": {"mcpServers": {
            "stripe": {
                "type": "stdio",
                "command": "npx",
                "args": ["-y", "@stripe/mcp@0.2.4", "--tools=all", format!("--api-key={STRIPE_KEY}")],
                "env": {}
            },
            "github": {
                "command": "npx",
                "args": ["-y", "mcp-remote@0.1.18", "https://api.githubcopilot.com/mcp/",
                    "--header", format!("Authorization: Bearer {GITHUB_PAT}")]
            },
            "postgres": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-postgres@0.6.2",
                    "postgresql://analyst:s3cr3t-Passw0rd@db.internal.example.com:5432/sales"]
            }
        }}}}),
    );
    let found = case.rule(Security, "secret-in-args");
    let p = "/projects/~1home~1alice~1code~1shop/mcpServers";
    assert_eq!(
        at(&found),
        [
            (Severity::Critical, format!("{p}/github/args/4").as_str()),
            (Severity::Critical, format!("{p}/postgres/args/2").as_str()),
            (Severity::Critical, format!("{p}/stripe/args/3").as_str()),
        ]
    );
    assert_eq!(found[2].evidence, "sk_live_… (55 chars)");
    assert_eq!(found[0].evidence, "Au… (62 chars)");
    for f in &found {
        assert!(!f.evidence.contains("s3cr3t") && !f.evidence.contains(STRIPE_KEY));
        assert!(!f.message.contains("s3cr3t") && !f.message.contains(STRIPE_KEY));
    }

    // Near misses: placeholders the client expands, flags without secrets, paths, local URLs.
    let case = Case::new().json(
        CLAUDE_CODE,
        json!({"mcpServers": {
            "stripe": {
                "command": "npx",
                "args": ["-y", "@stripe/mcp@0.2.4", "--tools=all", "--api-key=${STRIPE_SECRET_KEY}"]
            },
            "filesystem": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/home/alice/code/tokenizer-service"]
            },
            "postgres": {
                "command": "npx",
                "args": ["-y", "@modelcontextprotocol/server-postgres@0.6.2", "postgresql://localhost:5432/dev"]
            },
            "git": {"command": "uvx", "args": ["mcp-server-git@2025.7.1", "--repository", "/home/alice/code/webapp"]}
        }}),
    );
    assert!(case.rule(Security, "secret-in-args").is_empty());
}

#[test]
fn secret_in_headers() {
    let case = Case::new()
        .json(
            CLAUDE_CODE,
            json!({"mcpServers": {"github": {
                "type": "http",
                "url": "https://api.githubcopilot.com/mcp/",
                "headers": {"Authorization": format!("Bearer {GITHUB_PAT}")}
            }}}),
        )
        .json(
            CURSOR,
            mcp_servers(json!({"team-tools": {
                "url": "https://tools.corp.example.com/mcp",
                "headers": {"X-API-Key": HEX_KEY, "X-Team": "platform"}
            }})),
        );
    let found = case.rule(Security, "secret-in-headers");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/github/headers/Authorization"),
            (Severity::High, "/mcpServers/team-tools/headers/X-API-Key"),
        ]
    );
    assert!(found[0].file.ends_with(CLAUDE_CODE));
    assert_eq!(found[0].evidence, "Authorization: ghp_… (40 chars)");
    assert_eq!(found[1].evidence, "X-API-Key: 7f… (32 chars)");

    // Near misses: each client's substitution syntax, and headers that are not credentials.
    let case = Case::new()
        .json(
            CLAUDE_CODE,
            json!({"mcpServers": {"github": {
                "type": "http",
                "url": "https://api.githubcopilot.com/mcp/",
                "headers": {"Authorization": "Bearer ${GITHUB_PAT}"}
            }}}),
        )
        .json(
            VSCODE_PROJECT,
            json!({"servers": {"github": {
                "type": "http",
                "url": "https://api.githubcopilot.com/mcp/",
                "headers": {"Authorization": "Bearer ${input:github_token}", "X-MCP-Toolsets": "repos,issues"}
            }}}),
        )
        .json(
            WINDSURF,
            mcp_servers(json!({"github": {
                "serverUrl": "https://api.githubcopilot.com/mcp/",
                "headers": {"Authorization": "Bearer ${env:GITHUB_PERSONAL_ACCESS_TOKEN}"}
            }})),
        )
        .json(
            CURSOR,
            mcp_servers(json!({"context7": {
                "url": "https://mcp.context7.com/mcp",
                "headers": {"CONTEXT7_API_KEY": "YOUR_API_KEY", "Accept": "application/json, text/event-stream"}
            }})),
        );
    assert!(case.rule(Security, "secret-in-headers").is_empty());
}

#[test]
fn secret_in_url() {
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({
            "search": {"url": format!("https://mcp.search.example.com/sse?api_key={HEX_KEY}")},
            "legacy": {"url": "https://svc:Winter2024-Deploy@mcp.legacy.example.com/mcp"}
        })),
    );
    let found = case.rule(Security, "secret-in-url");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/legacy/url"),
            (Severity::High, "/mcpServers/search/url"),
        ]
    );
    assert_eq!(found[0].evidence, "https://…@mcp.legacy.example.com/mcp");
    assert_eq!(found[1].evidence, "https://mcp.search.example.com/sse?…");

    // Near misses: a query without credentials, a user name without password.
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({
            "search": {"url": "https://mcp.search.example.com/mcp?transport=streamable-http&region=eu"},
            "git": {"url": "https://git@mcp.git.example.com/mcp"},
            "sentry": {"url": "https://mcp.sentry.dev/sse"}
        })),
    );
    assert!(case.rule(Security, "secret-in-url").is_empty());
}

#[test]
fn unpinned_package() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]},
            "fetch": {"command": "uvx", "args": ["mcp-server-fetch"]},
            "playwright": {"command": "npx", "args": ["@playwright/mcp@latest"]},
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@^2025.4.0"]},
            "aws-docs": {"command": "uvx", "args": ["awslabs.aws-documentation-mcp-server@latest"]}
        })),
    );
    let found = case.rule(Security, "unpinned-package");
    assert_eq!(
        at(&found),
        [
            (Severity::Medium, "/mcpServers/aws-docs/args/0"),
            (Severity::Medium, "/mcpServers/fetch/args/0"),
            (Severity::Medium, "/mcpServers/github/args/1"),
            (Severity::Medium, "/mcpServers/memory/args/1"),
            (Severity::Medium, "/mcpServers/playwright/args/0"),
        ]
    );
    assert_eq!(found[2].evidence, "@modelcontextprotocol/server-github");
    match &found[2].fix.as_ref().unwrap().action {
        Some(Action::PinPackageVersion {
            server,
            version,
            lookup_latest,
            ..
        }) => {
            assert_eq!(server, "github");
            assert_eq!(*version, None);
            assert!(*lookup_latest);
        }
        other => panic!("{other:?}"),
    }
    // Compliance reports policy-unpinned instead.
    assert!(case.rule(Compliance, "unpinned-package").is_empty());

    // Near misses: exact versions, and launches that fetch no package.
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github@2025.4.8"]},
            "fetch": {"command": "uvx", "args": ["mcp-server-fetch@2025.4.7"]},
            "time": {"command": "uvx", "args": ["--from", "mcp-server-time==2025.8.4", "mcp-server-time", "--local-timezone=Europe/Berlin"]},
            "playwright": {"command": "npx", "args": ["@playwright/mcp@0.0.32", "--headless"]},
            "weather": {"command": "uv", "args": ["--directory", "/home/dave/src/weather", "run", "weather.py"]},
            "local": {"command": "node", "args": ["/home/dave/src/mcp/build/index.js"]}
        })),
    );
    assert!(case.rule(Security, "unpinned-package").is_empty());
}

#[test]
fn unpinned_image() {
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({
            "github": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN", "ghcr.io/github/github-mcp-server"]},
            "fetch": {"command": "docker", "args": ["run", "-i", "--rm", "mcp/fetch:latest"]},
            "brave": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "BRAVE_API_KEY", "mcp/brave-search:0.6.2"]}
        })),
    );
    let found = case.rule(Security, "unpinned-image");
    assert_eq!(
        at(&found),
        [
            (Severity::Medium, "/mcpServers/fetch/args/3"),
            (Severity::Medium, "/mcpServers/github/args/5"),
            (Severity::Low, "/mcpServers/brave/args/5"),
        ]
    );
    assert_eq!(found[1].evidence, "ghcr.io/github/github-mcp-server");
    assert!(found[1].fix.as_ref().unwrap().summary.contains("digest"));
    assert!(case.rule(Security, "unpinned-package").is_empty());

    // Near misses: a digest, with or without a tag.
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({
            "github": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN",
                "ghcr.io/github/github-mcp-server:v0.13.0@sha256:5e2f4b0c9a1d8e7f6a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"]},
            "fetch": {"command": "docker", "args": ["run", "-i", "--rm",
                "mcp/fetch@sha256:1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c"]}
        })),
    );
    assert!(case.rule(Security, "unpinned-image").is_empty());
}

#[test]
fn shell_wrapper() {
    // The nvm workaround many READMEs suggest for Claude Desktop.
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "memory": {"command": "bash", "args": ["-c", "source ~/.nvm/nvm.sh && npx -y @modelcontextprotocol/server-memory@2025.8.4"]},
            "tools": {"command": "zsh", "args": ["-lc", "exec ~/bin/tools-mcp --stdio"]}
        })),
    );
    let found = case.rule(Security, "shell-wrapper");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/memory/args"),
            (Severity::High, "/mcpServers/tools/args"),
        ]
    );
    assert!(found[0].evidence.starts_with("bash -c source"));

    // Near misses: a script run by the shell without -c, a program launched directly.
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "tools": {"command": "bash", "args": ["/home/dave/bin/start-mcp.sh", "--stdio"]},
            "local": {"command": "node", "args": ["/home/dave/src/mcp/build/index.js", "-c", "config.json"]}
        })),
    );
    assert!(case.rule(Security, "shell-wrapper").is_empty());
}

#[test]
fn curl_pipe_shell() {
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({"db-tools": {
            "command": "sh",
            "args": ["-c", "curl -fsSL https://get.dbtools-mcp.example.dev/install.sh | sh -s -- --serve"]
        }})),
    );
    let found = case.rule(Security, "curl-pipe-shell");
    assert_eq!(
        at(&found),
        [(Severity::Critical, "/mcpServers/db-tools/args")]
    );
    assert_eq!(case.rule(Security, "shell-wrapper").len(), 1);

    // Near miss: download to a file, unpack, run.
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({"db-tools": {
            "command": "sh",
            "args": ["-c", "curl -fsSL -o /tmp/dbtools.tar.gz https://get.dbtools-mcp.example.dev/v1.4.0.tar.gz && tar -xzf /tmp/dbtools.tar.gz -C /tmp && /tmp/dbtools/server"]
        }})),
    );
    assert!(case.rule(Security, "curl-pipe-shell").is_empty());
}

#[test]
fn docker_privileged() {
    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({"sandbox": {"command": "docker", "args": [
            "run", "-i", "--rm", "--privileged", "ghcr.io/acme/sandbox-mcp:1.2.0@sha256:aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33bb44cc55dd66"
        ]}})),
    );
    assert_eq!(
        at(&case.rule(Security, "docker-privileged")),
        [(Severity::Critical, "/mcpServers/sandbox/args/3")]
    );

    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({"sandbox": {"command": "docker", "args": [
            "run", "-i", "--rm", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "ghcr.io/acme/sandbox-mcp:1.2.0@sha256:aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33bb44cc55dd66"
        ]}})),
    );
    assert!(case.rule(Security, "docker-privileged").is_empty());
}

#[test]
fn docker_host_network() {
    let image = "ghcr.io/acme/sandbox-mcp:1.2.0@sha256:aa11bb22cc33dd44ee55ff66aa77bb88cc99dd00ee11ff22aa33bb44cc55dd66";
    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({
            "a": {"command": "docker", "args": ["run", "-i", "--rm", "--network", "host", image]},
            "b": {"command": "docker", "args": ["run", "-i", "--rm", "--network=host", image]},
            "c": {"command": "podman", "args": ["run", "-i", "--rm", "--net", "host", image]}
        })),
    );
    assert_eq!(
        at(&case.rule(Security, "docker-host-network")),
        [
            (Severity::High, "/mcpServers/a/args/3"),
            (Severity::High, "/mcpServers/b/args/3"),
            (Severity::High, "/mcpServers/c/args/3"),
        ]
    );

    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({
            "a": {"command": "docker", "args": ["run", "-i", "--rm", "--network", "mcp-net", image]},
            "b": {"command": "docker", "args": ["run", "-i", "--rm", "-e", "NETWORK=host", image]}
        })),
    );
    assert!(case.rule(Security, "docker-host-network").is_empty());
}

#[test]
fn docker_sensitive_mount() {
    let image =
        "mcp-server-docker@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({
            "docker": {"command": "docker", "args": ["run", "-i", "--rm", "-v", "/var/run/docker.sock:/var/run/docker.sock", image]},
            "host": {"command": "docker", "args": ["run", "-i", "--rm", "--mount", "type=bind,source=/,target=/host,readonly", image]},
            "homedir": {"command": "docker", "args": ["run", "-i", "--rm", "--volume=/home/alice:/home/alice", image]}
        })),
    );
    let found = case.rule(Security, "docker-sensitive-mount");
    assert_eq!(
        at(&found),
        [
            (Severity::Critical, "/mcpServers/docker/args/4"),
            (Severity::Critical, "/mcpServers/homedir/args/3"),
            (Severity::Critical, "/mcpServers/host/args/4"),
        ]
    );
    assert_eq!(
        found[0].evidence,
        "/var/run/docker.sock:/var/run/docker.sock"
    );

    // Near misses: a project directory, the filesystem README's Desktop bind, a named volume.
    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({
            "a": {"command": "docker", "args": ["run", "-i", "--rm", "-v", "/home/alice/code/webapp:/workspace:ro", image]},
            "b": {"command": "docker", "args": ["run", "-i", "--rm", "--mount", "type=bind,src=/Users/bob/Desktop,dst=/projects/Desktop", image, "/projects"]},
            "c": {"command": "docker", "args": ["run", "-i", "--rm", "-v", "mcp-memory:/app/data", image]}
        })),
    );
    assert!(case.rule(Security, "docker-sensitive-mount").is_empty());
}

#[test]
fn filesystem_broad_root() {
    let case = Case::new();
    let home = case.home().display().to_string();
    let case = case.json(
        DESKTOP,
        mcp_servers(json!({
            "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/home/alice", "/home/alice/Desktop"]},
            "root": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/"]},
            "mac": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/Users/bob/"]},
            "this-home": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", home, "~"]}
        })),
    );
    let found = case.rule(Security, "filesystem-broad-root");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/filesystem/args/2"),
            (Severity::High, "/mcpServers/mac/args/2"),
            (Severity::High, "/mcpServers/root/args/2"),
            (Severity::High, "/mcpServers/this-home/args/2"),
            (Severity::High, "/mcpServers/this-home/args/3"),
        ]
    );
    assert_eq!(found[0].evidence, "/home/alice");

    // Near misses: project directories, and a server that is not a filesystem server.
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem@2025.8.21", "/home/alice/code/webapp", "/Users/bob/Desktop"]},
            "git": {"command": "uvx", "args": ["mcp-server-git@2025.7.1", "--repository", "/home/alice"]}
        })),
    );
    assert!(case.rule(Security, "filesystem-broad-root").is_empty());
}

#[test]
fn plain_http_remote() {
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({"team-tools": {"url": "http://10.20.0.15:8080/mcp"}})),
    );
    let found = case.rule(Security, "plain-http-remote");
    assert_eq!(at(&found), [(Severity::High, "/mcpServers/team-tools/url")]);
    match &found[0].fix.as_ref().unwrap().action {
        Some(Action::SetServerField { field, value, .. }) => {
            assert_eq!(field, "url");
            assert_eq!(value, &json!("https://10.20.0.15:8080/mcp"));
        }
        other => panic!("{other:?}"),
    }

    let case = Case::new()
        .json(
            CURSOR,
            mcp_servers(json!({
                "dev": {"url": "http://localhost:3000/mcp"},
                "dev4": {"url": "http://127.0.0.1:8000/sse"},
                "dev6": {"url": "http://[::1]:8080/mcp"},
                "devsub": {"url": "http://mcp.localhost:8080/mcp"},
                "sentry": {"url": "https://mcp.sentry.dev/sse"}
            })),
        )
        .json(
            VSCODE_PROJECT,
            json!({"servers": {"dev": {"type": "http", "url": "http://localhost:3000/mcp"}}}),
        );
    assert!(case.rule(Security, "plain-http-remote").is_empty());
}

/// The two cases of issue 14 item 8: a scheme in capitals is still plain http, and an npm
/// prerelease version is an exact pin.
#[test]
fn uppercase_http_is_plain_http_and_a_prerelease_is_a_pin() {
    let case = Case::new().json(
        CURSOR,
        mcp_servers(json!({
            "api": {"url": "HTTP://api.example.com"},
            "mixed": {"url": "Http://API.Example.com:8080/mcp"},
            "local": {"url": "HTTP://LOCALHOST:3000/mcp"},
            "fix": {"command": "npx", "args": ["-y", "pkg@1.4.0-fix.2"]},
            "build": {"command": "npx", "args": ["-y", "@scope/pkg@2.0.0+build.7"]},
            "short": {"command": "npx", "args": ["-y", "pkg@1.4"]}
        })),
    );
    let found = case.rule(Security, "plain-http-remote");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/api/url"),
            (Severity::High, "/mcpServers/mixed/url"),
        ]
    );
    assert!(
        found[0].message.contains("at api.example.com"),
        "{}",
        found[0].message
    );
    // The fix changes only the scheme; the rest stays as written.
    match &found[1].fix.as_ref().unwrap().action {
        Some(Action::SetServerField { value, .. }) => {
            assert_eq!(value, &json!("https://API.Example.com:8080/mcp"));
        }
        other => panic!("{other:?}"),
    }
    // `1.4` is a range in npm (any 1.4.x); a prerelease or build version is exact.
    let unpinned = case.rule(Security, "unpinned-package");
    assert_eq!(
        at(&unpinned),
        [(Severity::Medium, "/mcpServers/short/args/1")]
    );
    let policy = case.rule(Compliance, "policy-unpinned");
    assert_eq!(at(&policy), [(Severity::High, "/mcpServers/short/args/1")]);
}

/// Policy lists take the one glob dialect of the tool policies: `?` is one character.
#[test]
fn policy_globs_take_question_marks() {
    let case = Case::new()
        .json(
            DESKTOP,
            mcp_servers(json!({
                "db1": {"command": "node", "args": ["/srv/db1.js"]},
                "db12": {"command": "node", "args": ["/srv/db12.js"]}
            })),
        )
        .policy(Policy {
            servers: lists(&[], &["db?"]),
            ..Policy::default()
        });
    let found = case.rule(Security, "policy-denied");
    assert_eq!(at(&found), [(Severity::High, "/mcpServers/db1")]);
    assert!(found[0].message.contains("(db?)"), "{}", found[0].message);
}

#[test]
fn duplicate_server_name_across_the_files_of_one_client() {
    let github = json!({"command": "docker", "args": ["run", "-i", "--rm", "-e", "GITHUB_PERSONAL_ACCESS_TOKEN",
        "ghcr.io/github/github-mcp-server:v0.13.0@sha256:5e2f4b0c9a1d8e7f6a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"]});
    let case = Case::new()
        .json(CURSOR, mcp_servers(json!({"github": github})))
        .json(
            "code/webapp/.cursor/mcp.json",
            mcp_servers(json!({"github": github})),
        );
    for kind in [Security, Health] {
        let found = case.rule(kind, "duplicate-server-name");
        assert_eq!(
            at(&found),
            [(Severity::Low, "/mcpServers/github")],
            "{kind}"
        );
        assert!(found[0].file.ends_with("code/webapp/.cursor/mcp.json"));
        assert!(
            found[0]
                .evidence
                .contains(".cursor/mcp.json#/mcpServers/github, ")
        );
    }
    assert!(case.rule(Compliance, "duplicate-server-name").is_empty());

    // Claude Code: the user's servers and a project's in ~/.claude.json, and .mcp.json.
    let case = Case::new()
        .json(
            CLAUDE_CODE,
            json!({
                "mcpServers": {"github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/"}},
                "projects": {"/home/alice/code/webapp": {"mcpServers": {"github": github}}}
            }),
        )
        .json(".mcp.json", mcp_servers(json!({"github": github})));
    assert_eq!(
        at(&case.rule(Security, "duplicate-server-name")),
        [
            (
                Severity::Low,
                "/projects/~1home~1alice~1code~1webapp/mcpServers/github"
            ),
            (Severity::Low, "/mcpServers/github"),
        ]
    );

    // Near miss: the same name in two different clients.
    let case = Case::new()
        .json(DESKTOP, mcp_servers(json!({"github": github})))
        .json(CURSOR, mcp_servers(json!({"github": github})))
        .json(VSCODE_PROJECT, json!({"servers": {"github": github}}));
    assert_eq!(case.files().len(), 3);
    assert!(case.rule(Security, "duplicate-server-name").is_empty());
}

fn lists(allow: &[&str], deny: &[&str]) -> Lists {
    Lists {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        deny: deny.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn policy_denied() {
    let policy = Policy {
        packages: lists(&[], &["@modelcontextprotocol/server-puppeteer"]),
        commands: lists(&[], &["sh", "bash"]),
        servers: lists(&[], &["*-experimental"]),
        ..Policy::default()
    };
    let case = Case::new()
        .json(
            KILO_PROJECT,
            mcp_servers(json!({
                "puppeteer": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-puppeteer@2025.5.12"]},
                "local-scripts": {"command": "/bin/bash", "args": ["/home/dave/src/tools/run-mcp.sh"]},
                "weather-experimental": {"command": "node", "args": ["/home/dave/src/weather/build/index.js"]},
                "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]}
            })),
        )
        .policy(policy);
    for kind in [Security, Compliance] {
        let found = case.rule(kind, "policy-denied");
        assert_eq!(
            at(&found),
            [
                (Severity::High, "/mcpServers/local-scripts"),
                (Severity::High, "/mcpServers/puppeteer"),
                (Severity::High, "/mcpServers/weather-experimental"),
            ],
            "{kind}"
        );
        let evidence: Vec<&str> = found.iter().map(|f| f.evidence.as_str()).collect();
        assert_eq!(
            evidence,
            [
                "bash",
                "@modelcontextprotocol/server-puppeteer",
                "weather-experimental"
            ]
        );
        assert!(matches!(
            found[0].fix.as_ref().unwrap().action,
            Some(Action::DisableServer { .. })
        ));
    }
    assert!(case.rule(Health, "policy-denied").is_empty());

    // Near miss: nothing matches the denylist.
    let case = Case::new()
        .json(
            KILO_PROJECT,
            mcp_servers(json!({
                "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]},
                "weather": {"command": "node", "args": ["/home/dave/src/weather/build/index.js"]}
            })),
        )
        .policy(Policy {
            packages: lists(&[], &["@modelcontextprotocol/server-puppeteer"]),
            commands: lists(&[], &["sh", "bash"]),
            servers: lists(&[], &["*-experimental"]),
            ..Policy::default()
        });
    assert!(case.rule(Security, "policy-denied").is_empty());
}

#[test]
fn policy_not_allowed() {
    let policy = || Policy {
        packages: lists(&["@modelcontextprotocol/*", "mcp-server-*"], &[]),
        commands: lists(&["npx", "uvx"], &[]),
        servers: lists(&["github", "memory", "context7", "fetch", "sentry"], &[]),
        ..Policy::default()
    };
    let case = Case::new()
        .json(
            CURSOR,
            mcp_servers(json!({
                "context7": {"command": "npx", "args": ["-y", "@upstash/context7-mcp@1.0.14"]},
                "github": {"command": "node", "args": ["/opt/github-mcp/index.js"]},
                "weather": {"command": "uvx", "args": ["mcp-server-weather@0.3.1"]},
                "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]},
                "sentry": {"url": "https://mcp.sentry.dev/sse"}
            })),
        )
        .policy(policy());
    for kind in [Security, Compliance] {
        let found = case.rule(kind, "policy-not-allowed");
        assert_eq!(
            at(&found),
            [
                (Severity::Medium, "/mcpServers/context7"),
                (Severity::Medium, "/mcpServers/github"),
                (Severity::Medium, "/mcpServers/weather"),
            ],
            "{kind}"
        );
        let evidence: Vec<&str> = found.iter().map(|f| f.evidence.as_str()).collect();
        assert_eq!(evidence, ["@upstash/context7-mcp", "node", "weather"]);
    }

    // Near miss: everything on the lists (a remote server has no command or package).
    let case = Case::new()
        .json(
            CURSOR,
            mcp_servers(json!({
                "fetch": {"command": "uvx", "args": ["mcp-server-fetch@2025.4.7"]},
                "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]},
                "sentry": {"url": "https://mcp.sentry.dev/sse"}
            })),
        )
        .policy(policy());
    assert!(case.rule(Compliance, "policy-not-allowed").is_empty());
}

#[test]
fn policy_unpinned() {
    let servers = json!({
        "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]},
        "fetch": {"command": "docker", "args": ["run", "-i", "--rm", "mcp/fetch:0.6.2"]},
        "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]}
    });
    let case = Case::new().json(WINDSURF, mcp_servers(servers.clone()));
    let found = case.rule(Compliance, "policy-unpinned");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/fetch/args/3"),
            (Severity::High, "/mcpServers/github/args/1"),
        ]
    );
    assert!(case.rule(Security, "policy-unpinned").is_empty());

    // Near miss: a policy that does not require pins.
    let case = Case::new()
        .json(WINDSURF, mcp_servers(servers))
        .policy(Policy {
            require_pinned: false,
            ..Policy::default()
        });
    assert!(case.rule(Compliance, "policy-unpinned").is_empty());
}

#[test]
fn policy_registry() {
    let policy = || Policy {
        allowed_registries: vec!["registry.npmjs.org".into(), "pypi.org".into()],
        ..Policy::default()
    };
    let case = Case::new()
        .json(
            DESKTOP,
            mcp_servers(json!({
                "jira": {"command": "npx", "args": ["-y", "--registry=https://npm.pkg.github.com", "@acme/mcp-jira@2.3.1"]},
                "tools": {"command": "uvx", "args": ["--index-url", "https://pypi.acme-corp.internal/simple", "acme-mcp-tools@1.4.0"]},
                "github": {"command": "docker", "args": ["run", "-i", "--rm",
                    "ghcr.io/github/github-mcp-server:v0.13.0@sha256:5e2f4b0c9a1d8e7f6a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"]}
            })),
        )
        .policy(policy());
    let found = case.rule(Compliance, "policy-registry");
    assert_eq!(
        at(&found),
        [
            (Severity::High, "/mcpServers/github/args/3"),
            (Severity::High, "/mcpServers/jira/args/2"),
            (Severity::High, "/mcpServers/tools/args/2"),
        ]
    );
    let evidence: Vec<&str> = found.iter().map(|f| f.evidence.as_str()).collect();
    assert_eq!(
        evidence,
        ["ghcr.io", "npm.pkg.github.com", "pypi.acme-corp.internal"]
    );
    assert!(case.rule(Security, "policy-registry").is_empty());

    // Near misses: the default registries, or named explicitly; no registry list at all.
    let servers = json!({
        "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]},
        "github": {"command": "npx", "args": ["-y", "--registry", "https://registry.npmjs.org/", "@modelcontextprotocol/server-github@2025.4.8"]},
        "fetch": {"command": "uvx", "args": ["--index-url", "https://pypi.org/simple", "mcp-server-fetch@2025.4.7"]}
    });
    let case = Case::new()
        .json(DESKTOP, mcp_servers(servers))
        .policy(policy());
    assert!(case.rule(Compliance, "policy-registry").is_empty());
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({"jira": {"command": "npx", "args": ["-y", "--registry=https://npm.pkg.github.com", "@acme/mcp-jira@2.3.1"]}})),
    );
    assert!(case.rule(Compliance, "policy-registry").is_empty());
}

#[test]
fn command_not_found() {
    let case = Case::new();
    // An absolute command that exists.
    let real = case.home().join("bin/weather-mcp");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "#!/bin/sh\n").unwrap();
    let missing = case.home().join("bin/missing-mcp");
    let case = case.json(
        WINDSURF,
        mcp_servers(json!({
            "weather": {"command": "mcp-weather", "args": ["--units", "metric"]},
            "local": {"command": missing.display().to_string()},
            "here": {"command": real.display().to_string()},
            "fetch": {"command": "uvx", "args": ["mcp-server-fetch@2025.4.7"]},
            "atlassian": {"serverUrl": "https://mcp.atlassian.com/v1/sse"}
        })),
    );
    let found = case.rule(Health, "command-not-found");
    assert_eq!(
        at(&found),
        [
            (Severity::Medium, "/mcpServers/local/command"),
            (Severity::Medium, "/mcpServers/weather/command"),
        ]
    );
    assert!(found[1].message.ends_with("is not found on PATH"));
    assert!(found[0].message.ends_with("is not found"));
    assert!(case.rule(Security, "command-not-found").is_empty());
}

#[test]
fn server_disabled() {
    let case = Case::new().json(
        KILO_PROJECT,
        mcp_servers(json!({
            "puppeteer": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-puppeteer@2025.5.12"], "disabled": true, "alwaysAllow": []},
            "fetch": {"command": "uvx", "args": ["mcp-server-fetch@2025.4.7"], "disabled": false, "alwaysAllow": ["fetch"]},
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory@2025.8.4"]}
        })),
    );
    assert_eq!(
        at(&case.rule(Health, "server-disabled")),
        [(Severity::Info, "/mcpServers/puppeteer/disabled")]
    );
    assert!(case.rule(Security, "server-disabled").is_empty());
}

#[test]
fn server_incomplete() {
    let case = Case::new().json(
        WINDSURF,
        mcp_servers(json!({
            "brave-search": {"args": ["-y", "@modelcontextprotocol/server-brave-search@0.6.2"], "env": {"BRAVE_API_KEY": "${env:BRAVE_API_KEY}"}},
            "atlassian": {"serverUrl": "https://mcp.atlassian.com/v1/sse"}
        })),
    );
    assert_eq!(
        at(&case.rule(Health, "server-incomplete")),
        [(Severity::Medium, "/mcpServers/brave-search")]
    );

    // Near misses: every way a client names a remote server.
    let case = Case::new()
        .json(
            WINDSURF,
            mcp_servers(json!({"atlassian": {"serverUrl": "https://mcp.atlassian.com/v1/sse"}})),
        )
        .json(
            GEMINI,
            mcp_servers(json!({"github": {"httpUrl": "https://api.githubcopilot.com/mcp/"}})),
        )
        .json(
            VSCODE_PROJECT,
            json!({"servers": {"github": {"type": "http", "url": "https://api.githubcopilot.com/mcp/"}}}),
        );
    assert!(case.rule(Health, "server-incomplete").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Suspected rule bugs: the expectation believed right, ignored until the rule is fixed.
// ---------------------------------------------------------------------------------------------

/// What `move_secret_to_store` (via exec) writes: the coordinator's own wrapper.
fn exec_wrapped(spec: &str, rest: &[&str]) -> Value {
    let mut args = vec![
        "--data-dir",
        "/home/alice/.local/share/mcp-coordinator",
        "exec",
        "--secret",
        spec,
        "--",
    ];
    args.extend_from_slice(rest);
    json!({"command": "/home/alice/.cargo/bin/mcp-coordinator", "args": args})
}

#[test]

fn secret_in_args_spares_the_exec_wrapper_the_coordinator_writes() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "brave-search": exec_wrapped("BRAVE_SEARCH_BRAVE_API_KEY=BRAVE_API_KEY",
                &["npx", "-y", "@modelcontextprotocol/server-brave-search@0.6.2"]),
            "github": exec_wrapped("GITHUB_PERSONAL_ACCESS_TOKEN",
                &["npx", "-y", "@modelcontextprotocol/server-github@2025.4.8"])
        })),
    );
    assert_eq!(at(&case.rule(Security, "secret-in-args")), []);
}

#[test]

fn unpinned_package_is_seen_behind_the_exec_wrapper() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({
            "github": exec_wrapped("GITHUB_PERSONAL_ACCESS_TOKEN",
                &["npx", "-y", "@modelcontextprotocol/server-github"])
        })),
    );
    assert_eq!(
        at(&case.rule(Security, "unpinned-package")),
        [(Severity::Medium, "/mcpServers/github/args/8")]
    );
}

#[test]

fn url_rules_point_at_the_key_the_entry_uses() {
    let case = Case::new()
        .json(
            WINDSURF,
            mcp_servers(json!({"wiki": {"serverUrl": "http://wiki.corp.example.com:8080/sse"}})),
        )
        .json(
            GEMINI,
            mcp_servers(json!({"search": {"httpUrl": format!("https://mcp.search.example.com/mcp?api_key={HEX_KEY}")}})),
        );
    let http = case.rule(Security, "plain-http-remote");
    assert_eq!(at(&http), [(Severity::High, "/mcpServers/wiki/serverUrl")]);
    assert!(matches!(
        &http[0].fix.as_ref().unwrap().action,
        Some(Action::SetServerField { field, .. }) if field == "serverUrl"
    ));
    assert_eq!(
        at(&case.rule(Security, "secret-in-url")),
        [(Severity::High, "/mcpServers/search/httpUrl")]
    );
}

#[test]

fn duplicate_server_name_not_across_two_claude_code_projects() {
    let github = json!({"type": "http", "url": "https://api.githubcopilot.com/mcp/", "headers": {"Authorization": "Bearer ${GITHUB_PAT}"}});
    let case = Case::new().json(
        CLAUDE_CODE,
        json!({"projects": {
            "/home/alice/code/webapp": {"mcpServers": {"github": github}},
            "/home/alice/code/api": {"mcpServers": {"github": github}}
        }}),
    );
    assert_eq!(at(&case.rule(Health, "duplicate-server-name")), []);
}

#[test]

fn secret_in_headers_spares_dollar_var_placeholders() {
    let case = Case::new().json(
        GEMINI,
        mcp_servers(json!({"github": {
            "httpUrl": "https://api.githubcopilot.com/mcp/",
            "headers": {"Authorization": "Bearer $GITHUB_MCP_PAT"}
        }})),
    );
    assert_eq!(at(&case.rule(Security, "secret-in-headers")), []);
}

#[test]

fn secret_in_args_spares_mcp_remote_header_placeholders() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({"remote-example": {
            "command": "npx",
            "args": ["-y", "mcp-remote@0.1.18", "https://remote.mcp.server/sse", "--header", "Authorization: Bearer ${AUTH_TOKEN}"],
            "env": {"AUTH_TOKEN": GITHUB_PAT}
        }})),
    );
    // mcp-remote expands ${AUTH_TOKEN} from its environment: the secret is in env, not args.
    assert_eq!(
        at(&case.rule(Security, "secret-in-env")),
        [(Severity::High, "/mcpServers/remote-example/env/AUTH_TOKEN")]
    );
    assert_eq!(at(&case.rule(Security, "secret-in-args")), []);
}

#[test]

fn secret_in_env_spares_credential_file_paths() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({"bigquery": {
            "command": "uvx",
            "args": ["mcp-server-bigquery@0.3.0", "--project", "acme-analytics", "--location", "europe-west1"],
            "env": {"GOOGLE_APPLICATION_CREDENTIALS": "/home/alice/.config/gcloud/application_default_credentials.json"}
        }})),
    );
    assert_eq!(at(&case.rule(Security, "secret-in-env")), []);
}

#[test]

fn secret_in_url_masks_a_token_in_the_path() {
    let token = "sk-ak-7Hq2Lm9Xw4Rt6Yp1Zc8Vb3Nf5Jd0Gs";
    let case = Case::new().json(
        CURSOR,
        mcp_servers(
            json!({"zapier": {"url": format!("https://actions.zapier.com/mcp/{token}/sse")}}),
        ),
    );
    let found = case.rule(Security, "secret-in-url");
    assert_eq!(at(&found), [(Severity::High, "/mcpServers/zapier/url")]);
    assert!(!found[0].evidence.contains(token), "{}", found[0].evidence);
}

#[test]

fn docker_sensitive_mount_catches_a_macos_home() {
    let case = Case::new().json(
        DESKTOP,
        mcp_servers(json!({"desktop-files": {"command": "docker", "args": [
            "run", "-i", "--rm", "-v", "/Users/bob:/projects",
            "mcp/filesystem@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9", "/projects"
        ]}})),
    );
    assert_eq!(
        at(&case.rule(Security, "docker-sensitive-mount")),
        [(Severity::Critical, "/mcpServers/desktop-files/args/4")]
    );
}

#[test]

fn unpinned_package_reads_npx_package_equals() {
    let case = Case::new().json(
        WINDSURF,
        mcp_servers(json!({
            "task-master-ai": {"command": "npx", "args": ["-y", "--package=task-master-ai", "task-master-ai"]},
            "task-master-pinned": {"command": "npx", "args": ["-y", "--package=task-master-ai@0.20.0", "task-master-ai"]}
        })),
    );
    assert_eq!(
        at(&case.rule(Security, "unpinned-package")),
        [(Severity::Medium, "/mcpServers/task-master-ai/args/1")]
    );
}
