//! The closed set of remediation actions and how each changes a config document: pin a
//! package version, move a secret to the store, remove, disable or edit a server entry, and
//! install a new one. Applying never touches the disk; it returns the new document.

use serde_json::{Map, Value, json};

use super::{RemediationError, invalid};
use crate::audit::redact;
pub use crate::clients::action::{Action, SecretVia, secret_name_for};
use crate::clients::launch::{self, Ecosystem};
use crate::clients::{self, Client, ConfigFile, pointer_segment};

/// What applying an action needs from outside the document.
pub struct Context<'a> {
    /// The command line that runs `mcp-coordinator exec` for this coordinator: the binary and
    /// its `--data-dir`/`--db` options.
    pub exec_prefix: &'a [String],
}

/// A secret value taken out of a document, to store before the file is written.
#[derive(Clone)]
pub struct MovedSecret {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for MovedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MovedSecret({}, [REDACTED])", self.name)
    }
}

fn servers_mut<'a>(
    doc: &'a mut Value,
    file: &ConfigFile,
) -> Result<&'a mut Map<String, Value>, RemediationError> {
    let root = doc
        .as_object_mut()
        .ok_or_else(|| invalid("file", format!("{} is not a JSON object", file.path)))?;
    let servers = root
        .entry(file.servers_key.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    servers.as_object_mut().ok_or_else(|| {
        invalid(
            "file",
            format!("{}: `{}` is not an object", file.path, file.servers_key),
        )
    })
}

/// The entry of `server` (top level, or a Claude Code project's).
fn entry_mut<'a>(
    doc: &'a mut Value,
    file: &ConfigFile,
    server: &str,
) -> Result<&'a mut Map<String, Value>, RemediationError> {
    let pointer = file
        .server(server)
        .map(|s| s.pointer.clone())
        .ok_or_else(|| no_server(file, server))?;
    doc.pointer_mut(&pointer)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            invalid(
                "server",
                format!("{}: server {server:?} is not an object", file.path),
            )
        })
}

fn no_server(file: &ConfigFile, server: &str) -> RemediationError {
    let known: Vec<&str> = file.servers.iter().map(|s| s.name.as_str()).collect();
    invalid(
        "server",
        format!(
            "{} has no server named {server:?}; it has {}",
            file.path,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    )
}

/// Whether a string holds something shaped like a secret (a known token, or a URL password).
pub fn looks_secret(s: &str) -> bool {
    redact::redact_str(s) != s
}

/// Applies one action to `doc` (the parsed file). Returns the secrets it took out. An error
/// names the action's own field that is wrong (`server`, `env_var`, `entry.env.NAME`, ...).
pub fn apply(
    doc: &mut Value,
    file: &ConfigFile,
    action: &Action,
    ctx: &Context<'_>,
    resolved_version: Option<&str>,
) -> Result<Vec<MovedSecret>, RemediationError> {
    match action {
        Action::RemoveServer { server, .. } => remove_server(doc, file, server),
        Action::DisableServer { server, .. } => {
            entry_mut(doc, file, server)?.insert("disabled".into(), Value::Bool(true));
            Ok(Vec::new())
        }
        Action::SetServerField {
            server,
            field,
            value,
            ..
        } => set_server_field(doc, file, server, field, value),
        Action::PinPackageVersion { server, .. } => {
            pin_package_version(doc, file, server, resolved_version)
        }
        Action::MoveSecretToStore {
            server,
            env_var,
            secret_name,
            via,
            ..
        } => move_secret_to_store(doc, file, server, env_var, secret_name, *via, ctx),
        Action::InstallServer {
            server,
            entry,
            secrets,
            ..
        } => install_server(doc, file, server, entry, secrets, ctx),
    }
}

/// `remove_server`: deletes the entry from its parent object.
fn remove_server(
    doc: &mut Value,
    file: &ConfigFile,
    server: &str,
) -> Result<Vec<MovedSecret>, RemediationError> {
    let pointer = file
        .server(server)
        .map(|s| s.pointer.clone())
        .ok_or_else(|| no_server(file, server))?;
    let (parent, key) = pointer
        .rsplit_once('/')
        .ok_or_else(|| no_server(file, server))?;
    let key = key.replace("~1", "/").replace("~0", "~");
    doc.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|m| m.shift_remove(&key))
        .ok_or_else(|| no_server(file, server))?;
    Ok(Vec::new())
}

/// `set_server_field`: one settable field, or one `env.NAME` / `headers.NAME`; a null value
/// removes it. A value that looks like a secret is refused.
fn set_server_field(
    doc: &mut Value,
    file: &ConfigFile,
    server: &str,
    field: &str,
    value: &Value,
) -> Result<Vec<MovedSecret>, RemediationError> {
    if value_looks_secret(value) {
        return Err(invalid(
            "value",
            format!(
                "the value for {field} looks like a secret; use move_secret_to_store instead of writing it into the file"
            ),
        ));
    }
    let entry = entry_mut(doc, file, server)?;
    match field.split_once('.') {
        Some((map @ ("env" | "headers"), name)) if !name.is_empty() => {
            let m = entry
                .entry(map.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .ok_or_else(|| {
                    invalid(
                        "field",
                        format!("server {server:?}: {map} is not an object"),
                    )
                })?;
            if value.is_null() {
                m.shift_remove(name);
            } else {
                m.insert(name.to_string(), value.clone());
            }
        }
        None if SETTABLE.contains(&field) => {
            check_type(field, value)?;
            if value.is_null() {
                entry.shift_remove(field);
            } else {
                entry.insert(field.to_string(), value.clone());
            }
        }
        _ => {
            return Err(invalid(
                "field",
                format!(
                    "field {field:?} cannot be set; expected one of {}, env.NAME or headers.NAME",
                    SETTABLE.join(", ")
                ),
            ));
        }
    }
    Ok(Vec::new())
}

/// `pin_package_version`: rewrites the package spec on the command line to the version.
fn pin_package_version(
    doc: &mut Value,
    file: &ConfigFile,
    server: &str,
    resolved_version: Option<&str>,
) -> Result<Vec<MovedSecret>, RemediationError> {
    let version = resolved_version.ok_or_else(|| {
        invalid(
            "version",
            "no version to pin to (give version or lookup_latest)",
        )
    })?;
    let entry = entry_mut(doc, file, server)?;
    let command = entry.get("command").and_then(Value::as_str).unwrap_or("");
    let args = clients::strings(entry.get("args"));
    let pkg = launch::package(command, &args).ok_or_else(|| {
        invalid(
            "server",
            format!("server {server:?} does not launch a package through npx, uvx, pip or docker"),
        )
    })?;
    let mut args = args;
    args[pkg.arg_index] = launch::pinned_spec(&pkg, version);
    entry.insert("args".into(), json!(args));
    Ok(Vec::new())
}

/// `move_secret_to_store`: takes the variable's value out of the file, into a VS Code input
/// or (returned, for the secret store) behind `mcp-coordinator exec`.
fn move_secret_to_store(
    doc: &mut Value,
    file: &ConfigFile,
    server: &str,
    env_var: &str,
    secret_name: &str,
    via: SecretVia,
    ctx: &Context<'_>,
) -> Result<Vec<MovedSecret>, RemediationError> {
    let is_vscode = file.client == Client::Vscode;
    let entry = entry_mut(doc, file, server)?;
    let env = entry
        .get_mut("env")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| invalid("env_var", format!("server {server:?} has no env")))?;
    let value = env
        .get(env_var)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| {
            invalid(
                "env_var",
                format!("server {server:?} has no env variable {env_var}"),
            )
        })?;
    if value.is_empty() || launch::is_placeholder(&value) {
        return Err(invalid(
            "env_var",
            format!("{env_var} of server {server:?} holds no literal value to move"),
        ));
    }
    match via {
        SecretVia::VscodeInput => {
            if !is_vscode {
                return Err(invalid(
                    "via",
                    "via vscode_input applies only to VS Code mcp.json files",
                ));
            }
            env.insert(
                env_var.to_string(),
                json!(format!("${{input:{secret_name}}}")),
            );
            let root = doc
                .as_object_mut()
                .ok_or_else(|| invalid("file", format!("{} is not a JSON object", file.path)))?;
            let inputs = root
                .entry("inputs")
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .ok_or_else(|| {
                    invalid("file", format!("{}: `inputs` is not an array", file.path))
                })?;
            if !inputs
                .iter()
                .any(|i| i.get("id").and_then(Value::as_str) == Some(secret_name))
            {
                inputs.push(json!({
                    "type": "promptString",
                    "id": secret_name,
                    "description": format!("{env_var} for MCP server {server}"),
                    "password": true
                }));
            }
            Ok(Vec::new())
        }
        SecretVia::Exec => {
            env.shift_remove(env_var);
            if env.is_empty() {
                entry.shift_remove("env");
            }
            wrap_in_exec(
                entry,
                &[(env_var.to_string(), secret_name.to_string())],
                ctx,
            )
            .map_err(|m| invalid("via", m))?;
            Ok(vec![MovedSecret {
                name: secret_name.to_string(),
                value,
            }])
        }
    }
}

/// `install_server`: adds a new entry (refusing literal secrets and an existing name),
/// launched through `mcp-coordinator exec` when it names secrets.
fn install_server(
    doc: &mut Value,
    file: &ConfigFile,
    server: &str,
    entry: &Map<String, Value>,
    secrets: &Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<Vec<MovedSecret>, RemediationError> {
    if entry.get("command").and_then(Value::as_str).is_none()
        && entry.get("url").and_then(Value::as_str).is_none()
    {
        return Err(invalid(
            "entry",
            "entry needs `command` (stdio) or `url` (remote)",
        ));
    }
    if let Some(at) = secret_at(&Value::Object(entry.clone()), "entry") {
        return Err(invalid(
            at,
            "this value looks like a secret; put it in the secret store (mcp-coordinator secrets set NAME) and name it in `secrets` instead",
        ));
    }
    let servers = servers_mut(doc, file)?;
    if servers.contains_key(server) {
        return Err(invalid(
            "server",
            format!(
                "{} already has a server named {server:?}; remove it first or choose another name",
                file.path
            ),
        ));
    }
    let mut new = entry.clone();
    if !secrets.is_empty() {
        let pairs = secrets
            .iter()
            .map(|(var, name)| {
                name.as_str()
                    .map(|n| (var.clone(), n.to_string()))
                    .ok_or_else(|| {
                        invalid(
                            format!("secrets.{var}"),
                            "expected a secret name (a string)",
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        wrap_in_exec(&mut new, &pairs, ctx).map_err(|m| invalid("secrets", m))?;
    }
    servers.insert(server.to_string(), Value::Object(new));
    Ok(Vec::new())
}

/// Fields `set_server_field` may set directly.
const SETTABLE: &[&str] = &[
    "command",
    "args",
    "url",
    "serverUrl",
    "httpUrl",
    "type",
    "cwd",
    "disabled",
    "timeout",
];

fn check_type(field: &str, value: &Value) -> Result<(), RemediationError> {
    let ok = match field {
        "args" => {
            value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string))
                || value.is_null()
        }
        "disabled" => value.is_boolean() || value.is_null(),
        "timeout" => value.is_number() || value.is_null(),
        _ => value.is_string() || value.is_null(),
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "value",
            format!("value for {field} has the wrong type"),
        ))
    }
}

fn value_looks_secret(v: &Value) -> bool {
    secret_at(v, "").is_some()
}

/// Where in `v` (found at `at`) the first value that looks like a secret is: `entry.env.TOKEN`,
/// `entry.args[2]`, `entry.headers.Authorization`, `entry.url`.
fn secret_at(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::String(s) => looks_secret(s).then(|| at.to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| secret_at(x, &format!("{at}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            let literal = x
                .as_str()
                .is_some_and(|s| !s.is_empty() && !launch::is_placeholder(s));
            if redact::is_secret_key(k) && literal {
                Some(here)
            } else {
                secret_at(x, &here)
            }
        }),
        _ => None,
    }
}

/// Rewrites a stdio entry to launch through `mcp-coordinator exec --secret NAME=VAR -- ...`
/// (or adds more secrets to an entry that already does).
fn wrap_in_exec(
    entry: &mut Map<String, Value>,
    secrets: &[(String, String)],
    ctx: &Context<'_>,
) -> Result<(), String> {
    let command = entry
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            "only a stdio server (with `command`) can get secrets through mcp-coordinator exec"
                .to_string()
        })?
        .to_string();
    let args = clients::strings(entry.get("args"));
    let (bin, prefix) = ctx
        .exec_prefix
        .split_first()
        .ok_or_else(|| "no mcp-coordinator binary path to launch through".to_string())?;
    let flags: Vec<String> = secrets
        .iter()
        .flat_map(|(var, name)| {
            let spec = if var == name {
                name.clone()
            } else {
                format!("{name}={var}")
            };
            ["--secret".to_string(), spec]
        })
        .collect();
    let new_args: Vec<String> = if command == *bin && args.iter().any(|a| a == "exec") {
        // Already wrapped: add the flags right after `exec`.
        let at = args.iter().position(|a| a == "exec").unwrap_or(0) + 1;
        let mut a = args.clone();
        for (i, f) in flags.into_iter().enumerate() {
            a.insert(at + i, f);
        }
        a
    } else {
        prefix
            .iter()
            .cloned()
            .chain(["exec".to_string()])
            .chain(flags)
            .chain(["--".to_string(), command])
            .chain(args)
            .collect()
    };
    entry.insert("command".into(), json!(bin));
    entry.insert("args".into(), json!(new_args));
    Ok(())
}

/// Whether this ecosystem's registry can be asked for the newest version.
pub fn can_look_up(e: Ecosystem) -> bool {
    matches!(e, Ecosystem::Npm | Ecosystem::PyPi)
}

/// The JSON pointer of a server entry that `install_server` would add.
pub fn new_entry_pointer(file: &ConfigFile, server: &str) -> String {
    format!(
        "/{}/{}",
        pointer_segment(&file.servers_key),
        pointer_segment(server)
    )
}
