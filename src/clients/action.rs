//! The changes a fix can make to one client config file: the closed set of actions an
//! assessment's finding proposes and a remediation applies (applying lives in
//! `remediation::actions`), and how a secret moved out of a file is given back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Client;

/// How a secret moved out of a file is given back to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecretVia {
    /// Stored encrypted in the coordinator's secret store; the entry launches through
    /// `mcp-coordinator exec --secret NAME=VAR -- <original command>`, which puts it in the
    /// server's environment only.
    #[default]
    Exec,
    /// VS Code only: an `inputs` entry (`promptString`, `password: true`) that VS Code asks for
    /// and keeps itself; the entry refers to it as `${input:NAME}`. Nothing is stored here.
    VscodeInput,
}

/// One change to one client config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Make the package a stdio server launches (`npx`, `uvx`, `pip`, `docker`) name an exact
    /// version: `version` as given, or the registry's newest release with `lookup_latest`.
    // One of the two is required (`RemediationService::resolve` refuses neither). Nested in
    // the list of actions, an `anyOf` suits every client; only an input schema's root must
    // not have one.
    #[schemars(extend("anyOf" = [
        {"required": ["version"]},
        {"required": ["lookup_latest"], "properties": {"lookup_latest": {"const": true}}}
    ]))]
    PinPackageVersion {
        file: String,
        server: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
        #[serde(default)]
        lookup_latest: bool,
    },
    /// Take the value of environment variable `env_var` out of the file: into the secret store
    /// as `secret_name` (launching through `mcp-coordinator exec`), or into a VS Code input.
    MoveSecretToStore {
        file: String,
        server: String,
        env_var: String,
        secret_name: String,
        /// `exec` (default: the secret store; the entry launches through `mcp-coordinator
        /// exec`) or `vscode_input` (VS Code only: VS Code asks for it and keeps it).
        #[serde(default)]
        via: SecretVia,
    },
    /// Delete the server entry.
    RemoveServer { file: String, server: String },
    /// Set `disabled: true` on the entry (clients that honour it stop launching it).
    DisableServer { file: String, server: String },
    /// Set one field of the entry: `command`, `args`, `url`, `type`, `cwd`, `disabled`,
    /// `timeout`, or one variable `env.NAME` / header `headers.NAME` (values that look like
    /// secrets are refused: use move_secret_to_store).
    SetServerField {
        file: String,
        server: String,
        field: String,
        value: Value,
    },
    /// Add a server entry (the installer). `entry` is the client's own shape: `command`,
    /// `args`, `env` for stdio, or `url` (and `type`) for remote. `secrets` maps environment
    /// variables to secret-store names: the entry then launches through `mcp-coordinator exec`.
    InstallServer {
        file: String,
        server: String,
        entry: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        secrets: Map<String, Value>,
        /// The client format, when the file does not exist yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<Client>,
    },
}

impl Action {
    pub fn file(&self) -> &str {
        match self {
            Action::PinPackageVersion { file, .. }
            | Action::MoveSecretToStore { file, .. }
            | Action::RemoveServer { file, .. }
            | Action::DisableServer { file, .. }
            | Action::SetServerField { file, .. }
            | Action::InstallServer { file, .. } => file,
        }
    }

    pub fn server(&self) -> &str {
        match self {
            Action::PinPackageVersion { server, .. }
            | Action::MoveSecretToStore { server, .. }
            | Action::RemoveServer { server, .. }
            | Action::DisableServer { server, .. }
            | Action::SetServerField { server, .. }
            | Action::InstallServer { server, .. } => server,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Action::PinPackageVersion { .. } => "pin_package_version",
            Action::MoveSecretToStore { .. } => "move_secret_to_store",
            Action::RemoveServer { .. } => "remove_server",
            Action::DisableServer { .. } => "disable_server",
            Action::SetServerField { .. } => "set_server_field",
            Action::InstallServer { .. } => "install_server",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Action::PinPackageVersion {
                server, version, ..
            } => format!(
                "pin the package of server {server} to {}",
                version.as_deref().unwrap_or("its newest release")
            ),
            Action::MoveSecretToStore {
                server,
                env_var,
                secret_name,
                via,
                ..
            } => match via {
                SecretVia::Exec => format!(
                    "move {env_var} of server {server} into the secret store as {secret_name}, launched through mcp-coordinator exec"
                ),
                SecretVia::VscodeInput => format!(
                    "replace {env_var} of server {server} with VS Code input ${{input:{secret_name}}}"
                ),
            },
            Action::RemoveServer { server, .. } => format!("remove server {server}"),
            Action::DisableServer { server, .. } => format!("disable server {server}"),
            Action::SetServerField { server, field, .. } => {
                format!("set {field} of server {server}")
            }
            Action::InstallServer { server, .. } => format!("install server {server}"),
        }
    }
}

/// A secret name from an environment variable name: `GITHUB_TOKEN` -> `GITHUB_TOKEN`, made
/// unique per server when needed by the caller.
pub fn secret_name_for(server: &str, env_var: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let (server, var) = (clean(server), clean(env_var));
    if var.starts_with(&format!("{server}_")) {
        var
    } else {
        format!("{server}_{var}")
    }
}
