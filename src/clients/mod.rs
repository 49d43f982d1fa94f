//! The MCP client-config model that assessments and remediations share. What lives here:
//! the config files themselves (this file: where each client keeps them, user and project
//! scope, how to read them as JSON or JSONC, and their server entries normalized to one shape
//! with the JSON pointer of each; a file that cannot be read or parsed is returned with its
//! error, never a crash), what a stdio entry launches (`launch`), and the closed set of
//! changes a fix can make to a file (`action`). It may depend on std, serde, the config
//! parsers and `audit::redact` (to mask what it shows), nothing else of the crate: the
//! `assessment` and `remediation` rooms depend on it, never the other way.

pub mod action;
pub mod launch;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::macros::string_enum;

string_enum!(
    /// An MCP client whose config format this coordinator reads.
    Client {
        /// `claude_desktop_config.json` (`mcpServers`).
        ClaudeDesktop => "claude_desktop",
        /// `~/.claude.json` (`mcpServers`, and `projects.<dir>.mcpServers`) and project `.mcp.json`.
        ClaudeCode => "claude_code",
        /// User `mcp.json` and project `.vscode/mcp.json` (`servers`, plus `inputs`).
        Vscode => "vscode",
        /// `~/.cursor/mcp.json` and project `.cursor/mcp.json`.
        Cursor => "cursor",
        /// The global `mcp_settings.json` and project `.kilocode/mcp.json`.
        KiloCode => "kilo_code",
        /// `~/.codeium/windsurf/mcp_config.json`.
        Windsurf => "windsurf",
        /// `~/.gemini/settings.json` and project `.gemini/settings.json`.
        GeminiCli => "gemini_cli",
    }
);

string_enum!(
    /// Whether a config file belongs to the user or to one project.
    Scope {
        User => "user",
        Project => "project",
    }
);

/// Where config files are looked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Roots {
    /// The home directory whose user-scope configs are read.
    pub home: Option<PathBuf>,
    /// Project directories whose project-scope configs are read.
    pub projects: Vec<PathBuf>,
}

/// One known location of a client's config.
struct Location {
    client: Client,
    scope: Scope,
    /// Relative to the home (user scope) or the project directory.
    path: &'static str,
    /// The key holding the servers.
    servers_key: &'static str,
}

const LOCATIONS: &[Location] = &[
    Location {
        client: Client::ClaudeDesktop,
        scope: Scope::User,
        path: ".config/Claude/claude_desktop_config.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::ClaudeDesktop,
        scope: Scope::User,
        path: "Library/Application Support/Claude/claude_desktop_config.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::ClaudeCode,
        scope: Scope::User,
        path: ".claude.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::ClaudeCode,
        scope: Scope::Project,
        path: ".mcp.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::Vscode,
        scope: Scope::User,
        path: ".config/Code/User/mcp.json",
        servers_key: "servers",
    },
    Location {
        client: Client::Vscode,
        scope: Scope::User,
        path: "Library/Application Support/Code/User/mcp.json",
        servers_key: "servers",
    },
    Location {
        client: Client::Vscode,
        scope: Scope::Project,
        path: ".vscode/mcp.json",
        servers_key: "servers",
    },
    Location {
        client: Client::Cursor,
        scope: Scope::User,
        path: ".cursor/mcp.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::Cursor,
        scope: Scope::Project,
        path: ".cursor/mcp.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::KiloCode,
        scope: Scope::User,
        path: ".config/Code/User/globalStorage/kilocode.kilo-code/settings/mcp_settings.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::KiloCode,
        scope: Scope::User,
        path: "Library/Application Support/Code/User/globalStorage/kilocode.kilo-code/settings/mcp_settings.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::KiloCode,
        scope: Scope::Project,
        path: ".kilocode/mcp.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::Windsurf,
        scope: Scope::User,
        path: ".codeium/windsurf/mcp_config.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::GeminiCli,
        scope: Scope::User,
        path: ".gemini/settings.json",
        servers_key: "mcpServers",
    },
    Location {
        client: Client::GeminiCli,
        scope: Scope::Project,
        path: ".gemini/settings.json",
        servers_key: "mcpServers",
    },
];

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A local process on stdio (`command`, `args`, `env`).
    Stdio,
    /// A remote server (`url`, `headers`): streamable HTTP or SSE.
    Remote,
}

/// One server entry of a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerEntry {
    pub name: String,
    /// JSON pointer of the entry in its file (`/mcpServers/github`).
    pub pointer: String,
    pub transport: Transport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments, with anything that looks like a secret replaced by `[REDACTED]` when shown.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "masked_args"
    )]
    pub args: Vec<String>,
    /// Environment variable names (values are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// The URL with any password or query hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Header names (values are never shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    /// `disabled: true` in the entry.
    pub disabled: bool,
    /// The entry as written (kept server-side for the rules; never sent to clients).
    #[serde(skip)]
    #[schemars(skip)]
    pub raw: Value,
}

/// A config file and what was read from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigFile {
    pub path: String,
    pub client: Client,
    pub scope: Scope,
    /// The key holding the servers (`mcpServers`, or `servers` for VS Code).
    pub servers_key: String,
    /// SHA-256 of the bytes read (a proposal refuses to write a file that changed since).
    pub sha256: String,
    /// Why the file could not be read or parsed; its servers are then unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub servers: Vec<ServerEntry>,
    /// VS Code `inputs` ids (prompted values a server can use instead of a secret in the file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The file's text has comments or trailing commas (JSONC); remediations keep them.
    pub jsonc: bool,
    #[serde(skip)]
    #[schemars(skip)]
    pub document: Value,
}

impl ConfigFile {
    /// A file with nothing read yet (for one about to be created, or that failed to read).
    pub fn empty(path: String, client: Client, scope: Scope, servers_key: &str) -> Self {
        ConfigFile {
            path,
            client,
            scope,
            servers_key: servers_key.into(),
            sha256: String::new(),
            error: None,
            servers: Vec::new(),
            inputs: Vec::new(),
            jsonc: false,
            document: Value::Null,
        }
    }

    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.name == name)
    }
}

/// Arguments as shown to clients: known token shapes, and values of secret-like flags
/// (`--api-key X`, `--token=X`), masked.
pub fn mask_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        let after_secret_flag = i > 0
            && args[i - 1].starts_with('-')
            && !args[i - 1].contains('=')
            && crate::audit::redact::is_secret_key(&args[i - 1])
            && !a.starts_with('-');
        let shown = if after_secret_flag {
            crate::audit::redact::REDACTED.to_string()
        } else if let Some((flag, _)) = a
            .split_once('=')
            .filter(|(f, _)| f.starts_with('-') && crate::audit::redact::is_secret_key(f))
        {
            format!("{flag}={}", crate::audit::redact::REDACTED)
        } else {
            crate::audit::redact::redact_str(a)
        };
        out.push(shown);
    }
    out
}

fn masked_args<S: serde::Serializer>(args: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    mask_args(args).serialize(s)
}

/// Escapes one JSON pointer segment (`~` -> `~0`, `/` -> `~1`).
pub fn pointer_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Every config file that exists under the roots, in a stable order (user scope first).
pub fn discover(roots: &Roots) -> Vec<ConfigFile> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |path: PathBuf, loc: &Location, out: &mut Vec<ConfigFile>| {
        if path.is_file() && seen.insert(path.clone()) {
            out.push(read(&path, loc.client, loc.scope, loc.servers_key));
        }
    };
    if let Some(home) = &roots.home {
        for loc in LOCATIONS.iter().filter(|l| l.scope == Scope::User) {
            push(home.join(loc.path), loc, &mut out);
        }
    }
    for project in &roots.projects {
        for loc in LOCATIONS.iter().filter(|l| l.scope == Scope::Project) {
            push(project.join(loc.path), loc, &mut out);
        }
    }
    out
}

/// Every place a client keeps its config under the roots, whether the file exists or not:
/// user-scope files under the home directory, project-scope files under each project.
pub fn standard_locations(roots: &Roots) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(home) = &roots.home {
        for loc in LOCATIONS.iter().filter(|l| l.scope == Scope::User) {
            out.push(home.join(loc.path));
        }
    }
    for project in &roots.projects {
        for loc in LOCATIONS.iter().filter(|l| l.scope == Scope::Project) {
            out.push(project.join(loc.path));
        }
    }
    out
}

/// Reads one file as the given client's format (a file the caller names directly: the client
/// is recognized from its path when not given).
pub fn read_path(path: &Path, client: Option<Client>) -> Result<ConfigFile, String> {
    let text = path.to_string_lossy();
    let loc = LOCATIONS
        .iter()
        .filter(|l| client.is_none_or(|c| c == l.client))
        .find(|l| text.ends_with(l.path))
        .or_else(|| client.and_then(|c| LOCATIONS.iter().find(|l| l.client == c)))
        .ok_or_else(|| {
            format!(
                "{} is not a known MCP client config path; give `client` (one of: {})",
                path.display(),
                ALL_CLIENTS.join(", ")
            )
        })?;
    if !path.is_file() {
        return Err(format!(
            "{} does not exist or is not a file",
            path.display()
        ));
    }
    Ok(read(path, loc.client, loc.scope, loc.servers_key))
}

/// The file a client uses for `scope` under `base` (the home directory, or a project
/// directory): on macOS the `Library/Application Support` variant where there is one.
pub fn standard_path(client: Client, scope: Scope, base: &Path) -> Option<PathBuf> {
    let mut candidates = LOCATIONS
        .iter()
        .filter(|l| l.client == client && l.scope == scope);
    let mac = cfg!(target_os = "macos");
    let all: Vec<&Location> = candidates.by_ref().collect();
    all.iter()
        .find(|l| l.path.starts_with("Library/") == mac)
        .or_else(|| all.first())
        .map(|l| base.join(l.path))
}

/// The project directory of a project-scope file (`/p/.cursor/mcp.json` -> `/p`).
pub fn project_dir(file: &ConfigFile) -> Option<String> {
    if file.scope != Scope::Project {
        return None;
    }
    LOCATIONS
        .iter()
        .filter(|l| l.client == file.client && l.scope == Scope::Project)
        .find_map(|l| file.path.strip_suffix(l.path))
        .map(|dir| dir.trim_end_matches('/').to_string())
}

/// Client names, for messages.
pub const ALL_CLIENTS: &[&str] = &[
    "claude_desktop",
    "claude_code",
    "vscode",
    "cursor",
    "kilo_code",
    "windsurf",
    "gemini_cli",
];

/// What a client config may be as JSONC: comments and trailing commas, nothing looser. The
/// remediation editor parses with the same options, so it edits exactly what was assessed.
pub fn jsonc_options() -> jsonc_parser::ParseOptions {
    jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        ..Default::default()
    }
}

/// Parses config text: strict JSON, else JSONC (comments, trailing commas). Returns the
/// document and whether it needed JSONC.
pub fn parse(text: &str) -> Result<(Value, bool), String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok((v, false)),
        Err(strict) => {
            match jsonc_parser::parse_to_serde_value::<Option<Value>>(text, &jsonc_options()) {
                Ok(Some(v)) => Ok((v, true)),
                Ok(None) => Err("the file is empty".into()),
                Err(_) => Err(format!("not valid JSON: {strict}")),
            }
        }
    }
}

fn read(path: &Path, client: Client, scope: Scope, servers_key: &str) -> ConfigFile {
    let mut file = ConfigFile::empty(path.display().to_string(), client, scope, servers_key);
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            file.error = Some(format!("cannot read: {e}"));
            return file;
        }
    };
    file.sha256 = hex::encode(Sha256::digest(&bytes));
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => {
            file.error = Some("not UTF-8 text".into());
            return file;
        }
    };
    let (doc, jsonc) = match parse(&text) {
        Ok(p) => p,
        Err(e) => {
            file.error = Some(e);
            return file;
        }
    };
    let mut parsed = from_document(&file.path, client, scope, servers_key, doc);
    parsed.sha256 = file.sha256;
    parsed.jsonc = jsonc;
    parsed
}

/// A config file from an already parsed document (no disk access).
pub fn from_document(
    path: &str,
    client: Client,
    scope: Scope,
    servers_key: &str,
    doc: Value,
) -> ConfigFile {
    let mut file = ConfigFile::empty(path.to_string(), client, scope, servers_key);
    if !doc.is_object() {
        file.error = Some("the top level is not a JSON object".into());
        return file;
    }
    let mut servers = Vec::new();
    let key = pointer_segment(servers_key);
    collect(&doc, &format!("/{key}"), &mut servers, &mut file.error);
    // Claude Code keeps per-project servers inside ~/.claude.json.
    if client == Client::ClaudeCode
        && let Some(projects) = doc.get("projects").and_then(Value::as_object)
    {
        for (dir, p) in projects {
            if p.get("mcpServers").is_some() {
                collect(
                    &doc,
                    &format!("/projects/{}/mcpServers", pointer_segment(dir)),
                    &mut servers,
                    &mut file.error,
                );
            }
        }
    }
    file.servers = servers;
    if let Some(inputs) = doc.get("inputs").and_then(Value::as_array) {
        file.inputs = inputs
            .iter()
            .filter_map(|i| i.get("id").and_then(Value::as_str).map(String::from))
            .collect();
    }
    file.document = doc;
    file
}

fn collect(doc: &Value, pointer: &str, out: &mut Vec<ServerEntry>, error: &mut Option<String>) {
    let Some(servers) = doc.pointer(pointer) else {
        return;
    };
    let Some(servers) = servers.as_object() else {
        *error = Some(format!("{pointer} is not an object of servers"));
        return;
    };
    for (name, raw) in servers {
        out.push(entry(
            name,
            &format!("{pointer}/{}", pointer_segment(name)),
            raw,
        ));
    }
}

/// The strings of a JSON array (other elements as their JSON text); empty when absent.
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keys(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_object)
        .map(|m: &Map<String, Value>| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn entry(name: &str, pointer: &str, raw: &Value) -> ServerEntry {
    let url = raw
        .get("url")
        .or_else(|| raw.get("serverUrl"))
        .or_else(|| raw.get("httpUrl"))
        .and_then(Value::as_str);
    ServerEntry {
        name: name.to_string(),
        pointer: pointer.to_string(),
        transport: if url.is_some() && raw.get("command").is_none() {
            Transport::Remote
        } else {
            Transport::Stdio
        },
        command: raw.get("command").and_then(Value::as_str).map(String::from),
        args: strings(raw.get("args")),
        env_names: keys(raw.get("env")),
        url: url.map(shown_url),
        header_names: keys(raw.get("headers")),
        disabled: raw.get("disabled").and_then(Value::as_bool) == Some(true),
        raw: raw.clone(),
    }
}

/// A URL with its user info and query hidden, and token shapes in the rest masked. Text that
/// does not parse as a URL (a placeholder, a typo) is shown with only token shapes masked.
pub fn shown_url(url: &str) -> String {
    let shown = match url::Url::parse(url.trim()) {
        Ok(u) => {
            let mut shown = format!("{}:", u.scheme());
            if let Some(host) = u.host_str() {
                shown.push_str("//");
                if !u.username().is_empty() || u.password().is_some() {
                    shown.push_str("…@");
                }
                shown.push_str(host);
                if let Some(port) = u.port() {
                    shown.push_str(&format!(":{port}"));
                }
            }
            shown.push_str(u.path());
            if u.query().is_some() {
                shown.push_str("?…");
            }
            if let Some(fragment) = u.fragment() {
                shown.push_str(&format!("#{fragment}"));
            }
            shown
        }
        Err(_) => url.to_string(),
    };
    // A token can sit in the path too (`https://actions.example.com/mcp/sk-.../sse`).
    crate::audit::redact::redact_str(&shown)
}
