//! The catalog of instance types from the config file (`[instance_types.NAME]`): how to launch
//! or reach a child MCP server, its environment template and required secrets, TTL, health
//! checks, restart policy, resource limits and tool policy; plus `[instances]` defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{ToolPolicy, check_instance_name};

/// `[instances]`: settings for every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InstancesConfig {
    /// On start, start again the instances a previous coordinator on this database left
    /// running (it crashed) or stopped only because it exited. Off: they are marked failed.
    pub restore: bool,
    /// Seconds a stop waits after closing the child's stdin and again after SIGTERM before
    /// the whole process group is killed (0.1 to 60).
    #[schemars(range(min = crate::limits::STOP_GRACE_SECONDS.min, max = crate::limits::STOP_GRACE_SECONDS.max))]
    pub stop_grace_seconds: f64,
    /// At most this many instances run at once in one coordinator (1 to 1000).
    #[schemars(range(min = crate::limits::MAX_INSTANCES.min, max = crate::limits::MAX_INSTANCES.max))]
    pub max_instances: u32,
}

impl Default for InstancesConfig {
    fn default() -> Self {
        InstancesConfig {
            restore: true,
            stop_grace_seconds: 2.0,
            max_instances: 64,
        }
    }
}

/// One entry of the catalog: a kind of child MCP server the coordinator may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// What this server is for, shown by `instance_types`.
    #[serde(default)]
    pub description: String,
    /// stdio transport: the program to run. Without a `/` it is looked up on the `PATH` of
    /// the child's environment if `env` sets one, else on the coordinator's.
    #[serde(default)]
    pub command: Option<String>,
    /// stdio transport: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// stdio transport: the working directory (default: the coordinator's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Streamable HTTP transport: the server's URL (`http://` or `https://`). Give either
    /// `command` or `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// Streamable HTTP transport: headers sent with every request. Values are templates like
    /// `env` values (for example `Authorization = "Bearer ${secret:github_token}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The child's whole environment (it starts from an empty one). Values are templates:
    /// `${secret:NAME}` is a secret from the coordinator's encrypted store (required: the start
    /// fails if it is missing), `${env:NAME}` copies the coordinator's own variable, and
    /// anything else is literal. `PATH = "${env:PATH}"` passes the coordinator's PATH on.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The `env` variables an `instance_start` may give another value with `overrides.env`
    /// (default: none). Each must be declared in `env` with a literal value (no `${secret:…}`
    /// or `${env:…}`), and none may decide which code runs (`PATH`, `LD_*`, `NODE_OPTIONS`,
    /// `PYTHONPATH`, npm/uv/pip settings, …). List only what a caller may choose freely: a
    /// data file or directory here lets the caller point the child at other data.
    #[serde(default)]
    pub overridable: Vec<String>,
    /// Seconds an instance lives before it is stopped as `expired` (default: no limit).
    #[serde(default)]
    #[schemars(range(min = crate::limits::INSTANCE_TTL_SECONDS.min, max = crate::limits::INSTANCE_TTL_SECONDS.max))]
    pub ttl_seconds: Option<u64>,
    /// Start one instance of this type, named after it, when the coordinator starts (in the
    /// background: the coordinator answers at once).
    #[serde(default)]
    pub autostart: bool,
    /// Seconds to wait for the child to answer `initialize` and `tools/list` (default 20).
    #[serde(default = "default_init_timeout")]
    #[schemars(range(min = crate::limits::INIT_TIMEOUT_SECONDS.min, max = crate::limits::INIT_TIMEOUT_SECONDS.max))]
    pub init_timeout_seconds: f64,
    /// Seconds a proxied tool call may take before it is cancelled (default 60).
    #[serde(default = "default_call_timeout")]
    #[schemars(range(min = crate::limits::CALL_TIMEOUT_SECONDS.min, max = crate::limits::CALL_TIMEOUT_SECONDS.max))]
    pub call_timeout_seconds: f64,
    /// Extra attempts for a failed call of a tool annotated `readOnlyHint` (default 2). Other
    /// tools are never retried: a retry could do the change twice.
    #[serde(default = "default_retries")]
    #[schemars(range(min = crate::limits::READ_ONLY_RETRIES.min, max = crate::limits::READ_ONLY_RETRIES.max))]
    pub read_only_retries: u32,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub restart: RestartConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub policy: ToolPolicy,
}

fn default_init_timeout() -> f64 {
    20.0
}
fn default_call_timeout() -> f64 {
    60.0
}
fn default_retries() -> u32 {
    2
}

/// Health checks: `ping` every `interval_seconds`; `failure_threshold` failures in a row make
/// the instance `unhealthy`, and it is restarted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between checks (0.1 to 3600; default 15).
    #[schemars(range(min = crate::limits::HEALTH_INTERVAL_SECONDS.min, max = crate::limits::HEALTH_INTERVAL_SECONDS.max))]
    pub interval_seconds: f64,
    /// Seconds one check may take (default 5).
    #[schemars(range(min = crate::limits::HEALTH_TIMEOUT_SECONDS.min, max = crate::limits::HEALTH_TIMEOUT_SECONDS.max))]
    pub timeout_seconds: f64,
    /// Failed checks in a row before the instance is restarted (default 3).
    #[schemars(range(min = crate::limits::FAILURES_IN_A_ROW.min, max = crate::limits::FAILURES_IN_A_ROW.max))]
    pub failure_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_seconds: 15.0,
            timeout_seconds: 5.0,
            failure_threshold: 3,
        }
    }
}

/// Restarts after a crash or failed health checks: exponential backoff from
/// `backoff_initial_ms` doubling up to `backoff_max_ms`; more than `max_restarts` within
/// `window_seconds` puts the instance in `crash_loop`, left for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// Restart a crashed or unhealthy instance at all (default true).
    pub enabled: bool,
    /// Restarts allowed within the window (default 5).
    #[schemars(range(min = crate::limits::MAX_RESTARTS.min, max = crate::limits::MAX_RESTARTS.max))]
    pub max_restarts: u32,
    /// The window, in seconds (default 300).
    #[schemars(range(min = crate::limits::RESTART_WINDOW_SECONDS.min, max = crate::limits::RESTART_WINDOW_SECONDS.max))]
    pub window_seconds: u64,
    /// The first backoff, in milliseconds (default 500).
    #[schemars(range(min = crate::limits::RESTART_BACKOFF_MS.min, max = crate::limits::RESTART_BACKOFF_MS.max))]
    pub backoff_initial_ms: u64,
    /// The longest backoff, in milliseconds (default 30000).
    #[schemars(range(min = crate::limits::RESTART_BACKOFF_MS.min, max = crate::limits::RESTART_BACKOFF_MS.max))]
    pub backoff_max_ms: u64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            enabled: true,
            max_restarts: 5,
            window_seconds: 300,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

/// The circuit breaker of an instance: after `failures` failed calls in a row (timeouts,
/// transport errors; not tool results with `isError`) calls fail at once for `open_seconds`,
/// then one probe call is let through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed calls in a row that open the breaker (default 5).
    #[schemars(range(min = crate::limits::FAILURES_IN_A_ROW.min, max = crate::limits::FAILURES_IN_A_ROW.max))]
    pub failures: u32,
    /// Seconds it stays open before a probe (default 30).
    #[schemars(range(min = crate::limits::BREAKER_OPEN_SECONDS.min, max = crate::limits::BREAKER_OPEN_SECONDS.max))]
    pub open_seconds: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_seconds: 30.0,
        }
    }
}

/// Resource limits applied to the child process (setrlimit) before it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Address space, in MiB (`RLIMIT_AS`). Node reserves a lot of virtual memory: give it
    /// several GiB or leave this out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_space_mb: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`): the child is killed by the kernel past this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    /// Open files (`RLIMIT_NOFILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// Environment variables that decide which program or code a child runs (where a bare
/// command is found, what the dynamic linker or an interpreter loads first). An override
/// of one would let the caller run code of its choosing with the type's secrets, so only
/// the config file sets them: a type cannot list them in `overridable`.
pub fn chooses_code(key: &str) -> bool {
    const EXACT: [&str; 14] = [
        "PATH",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "BASH_ENV",
        "ENV",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
    ];
    // Package runners (npx, uvx, pip) read their registry and index from these.
    const PREFIXES: [&str; 5] = ["LD_", "DYLD_", "NPM_CONFIG_", "UV_", "PIP_"];
    let upper = key.to_ascii_uppercase();
    EXACT.contains(&upper.as_str()) || PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// The coordinator's own variables (`MCP_COORDINATOR_DATA_DIR`, `_DB`, `_CONFIG`,
/// `_MASTER_KEY`, …): never copied into a child with `${env:…}`.
pub fn is_coordinator_setting(var: &str) -> bool {
    var.to_ascii_uppercase().starts_with("MCP_COORDINATOR_")
}

/// How a type is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A child process speaking MCP on its stdin and stdout.
    Stdio,
    /// A server reached over MCP's streamable HTTP transport.
    StreamableHttp,
}

/// One piece of an environment template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Secret(String),
    Env(String),
}

/// Splits a template into literal text, `${secret:NAME}` and `${env:NAME}` references.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            pieces.push(Piece::Literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("`${{` without a closing `}}` in {template:?}"));
        };
        let inner = &after[..end];
        let piece = match inner.split_once(':') {
            Some(("secret", name)) if !name.is_empty() => Piece::Secret(name.to_string()),
            Some(("env", name)) if !name.is_empty() => Piece::Env(name.to_string()),
            _ => {
                return Err(format!(
                    "`${{{inner}}}` is not a reference; expected `${{secret:NAME}}` or `${{env:NAME}}`"
                ));
            }
        };
        pieces.push(piece);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(pieces)
}

impl InstanceType {
    pub fn transport(&self) -> Transport {
        if self.url.is_some() {
            Transport::StreamableHttp
        } else {
            Transport::Stdio
        }
    }

    /// The secret names the templates (env and headers) reference, sorted, once each.
    pub fn required_secrets(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .env
            .values()
            .chain(self.headers.values())
            .filter_map(|t| parse_template(t).ok())
            .flatten()
            .filter_map(|p| match p {
                Piece::Secret(n) => Some(n),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn init_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.init_timeout_seconds)
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.call_timeout_seconds)
    }

    /// Checks one type; errors name the field (`instance_types.NAME.FIELD`).
    pub fn validate(&self, name: &str) -> Result<(), String> {
        check_instance_name(name).map_err(|e| format!("instance_types.{name}: {e}"))?;
        self.check_launch(name)?;
        self.check_templates(name)?;
        self.check_overridable(name)?;
        self.check_ranges(name)?;
        self.policy
            .validate()
            .map_err(|e| format!("instance_types.{name}.{e}"))?;
        Ok(())
    }

    /// Exactly one of `command` and `url`, each well formed, and only the fields of its
    /// transport.
    fn check_launch(&self, name: &str) -> Result<(), String> {
        let at = |field: &str| format!("instance_types.{name}.{field}");
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "instance_types.{name}: give either `command` (stdio) or `url` (streamable HTTP), not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "instance_types.{name}: missing `command` (stdio) or `url` (streamable HTTP)"
                ));
            }
            (Some(c), None) if c.trim().is_empty() => {
                return Err(format!("{}: must not be empty", at("command")));
            }
            (None, Some(u))
                if !url::Url::parse(u.trim())
                    .is_ok_and(|p| matches!(p.scheme(), "http" | "https") && p.has_host()) =>
            {
                return Err(format!(
                    "{}: expected an http:// or https:// URL with a host, got {u:?}",
                    at("url")
                ));
            }
            _ => {}
        }
        if self.url.is_some() && (!self.args.is_empty() || !self.env.is_empty()) {
            return Err(format!(
                "instance_types.{name}: `args` and `env` are for stdio types; a `url` type takes `headers`"
            ));
        }
        Ok(())
    }

    /// `env` and `headers` templates parse, and none hands out a coordinator setting.
    fn check_templates(&self, name: &str) -> Result<(), String> {
        let at = |field: &str| format!("instance_types.{name}.{field}");
        let templates = self.env.iter().map(|(k, v)| (format!("env.{k}"), v)).chain(
            self.headers
                .iter()
                .map(|(k, v)| (format!("headers.{k}"), v)),
        );
        for (field, value) in templates {
            let pieces = parse_template(value).map_err(|e| format!("{}: {e}", at(&field)))?;
            for piece in pieces {
                if let Piece::Env(var) = piece
                    && is_coordinator_setting(&var)
                {
                    return Err(format!(
                        "{}: `${{env:{var}}}` would hand the coordinator's own settings (its data \
                         directory, database, config file or master key) to the child, so \
                         `${{env:MCP_COORDINATOR_*}}` is refused; write the value itself if the \
                         child needs it",
                        at(&field)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each `overridable` variable is declared in `env` with a literal value, and does not
    /// decide which code runs.
    fn check_overridable(&self, name: &str) -> Result<(), String> {
        let at = |field: &str| format!("instance_types.{name}.{field}");
        for (i, var) in self.overridable.iter().enumerate() {
            let field = at(&format!("overridable[{i}]"));
            match self.env.get(var) {
                None => {
                    return Err(format!(
                        "{field}: `{var}` is not declared in `env`; declare it there with its default value"
                    ));
                }
                Some(t) if t.contains("${") => {
                    return Err(format!(
                        "{field}: `{var}` takes its value from a reference ({t}); only literal values can be overridable"
                    ));
                }
                Some(_) if chooses_code(var) => {
                    return Err(format!(
                        "{field}: `{var}` decides which program or code the child runs, so it cannot be overridable"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Timeouts, thresholds, retries and backoffs within their limits (`crate::limits`).
    fn check_ranges(&self, name: &str) -> Result<(), String> {
        let at = |field: &str| format!("instance_types.{name}.{field}");
        use crate::limits as l;
        for (field, v, range) in [
            (
                "init_timeout_seconds",
                self.init_timeout_seconds,
                l::INIT_TIMEOUT_SECONDS,
            ),
            (
                "call_timeout_seconds",
                self.call_timeout_seconds,
                l::CALL_TIMEOUT_SECONDS,
            ),
            (
                "health.interval_seconds",
                self.health.interval_seconds,
                l::HEALTH_INTERVAL_SECONDS,
            ),
            (
                "health.timeout_seconds",
                self.health.timeout_seconds,
                l::HEALTH_TIMEOUT_SECONDS,
            ),
            (
                "breaker.open_seconds",
                self.breaker.open_seconds,
                l::BREAKER_OPEN_SECONDS,
            ),
        ] {
            range.check(&at(field), v)?;
        }
        for (field, v, range) in [
            (
                "read_only_retries",
                self.read_only_retries,
                l::READ_ONLY_RETRIES,
            ),
            (
                "health.failure_threshold",
                self.health.failure_threshold,
                l::FAILURES_IN_A_ROW,
            ),
            (
                "breaker.failures",
                self.breaker.failures,
                l::FAILURES_IN_A_ROW,
            ),
            (
                "restart.max_restarts",
                self.restart.max_restarts,
                l::MAX_RESTARTS,
            ),
        ] {
            range.check(&at(field), v)?;
        }
        for (field, v, range) in [
            (
                "restart.window_seconds",
                self.restart.window_seconds,
                l::RESTART_WINDOW_SECONDS,
            ),
            (
                "restart.backoff_initial_ms",
                self.restart.backoff_initial_ms,
                l::RESTART_BACKOFF_MS,
            ),
            (
                "restart.backoff_max_ms",
                self.restart.backoff_max_ms,
                l::RESTART_BACKOFF_MS,
            ),
        ] {
            range.check(&at(field), v)?;
        }
        if self.restart.backoff_max_ms < self.restart.backoff_initial_ms {
            return Err(format!(
                "{}: expected at least restart.backoff_initial_ms ({}), got {}",
                at("restart.backoff_max_ms"),
                self.restart.backoff_initial_ms,
                self.restart.backoff_max_ms
            ));
        }
        if let Some(ttl) = self.ttl_seconds {
            l::INSTANCE_TTL_SECONDS.check(&at("ttl_seconds"), ttl)?;
        }
        Ok(())
    }
}

impl InstancesConfig {
    pub fn validate(&self) -> Result<(), String> {
        crate::limits::STOP_GRACE_SECONDS
            .check("instances.stop_grace_seconds", self.stop_grace_seconds)?;
        crate::limits::MAX_INSTANCES.check("instances.max_instances", self.max_instances)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_references() {
        assert_eq!(
            parse_template("Bearer ${secret:gh}!").ok(),
            Some(vec![
                Piece::Literal("Bearer ".into()),
                Piece::Secret("gh".into()),
                Piece::Literal("!".into())
            ])
        );
        assert_eq!(
            parse_template("${env:PATH}").ok(),
            Some(vec![Piece::Env("PATH".into())])
        );
        assert!(parse_template("${HOME}").is_err());
        assert!(parse_template("${secret:x").is_err());
        assert_eq!(
            parse_template("plain").ok(),
            Some(vec![Piece::Literal("plain".into())])
        );
    }

    #[test]
    fn validation_names_the_field() {
        let t: InstanceType = match toml::from_str("command = \"node\"\nenv = { A = \"${oops}\" }")
        {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let e = t.validate("demo").err().unwrap_or_default();
        assert!(e.contains("instance_types.demo.env.A"), "{e}");
        let t: InstanceType = match toml::from_str("url = \"ftp://x\"") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let e = t.validate("demo").err().unwrap_or_default();
        assert!(e.contains("instance_types.demo.url"), "{e}");
        let e = t.validate("Bad__Name").err().unwrap_or_default();
        assert!(e.contains("Bad__Name"), "{e}");
    }

    fn parsed(toml_text: &str) -> InstanceType {
        match toml::from_str(toml_text) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn overridable_names_only_declared_literal_variables_that_choose_no_code() {
        let base = "command = \"node\"\n\
                    env = { MODE = \"plain\", DATA = \"/srv/d.json\", PATH = \"/usr/bin\", \
                    HOME = \"${env:HOME}\", TOKEN = \"${secret:tok}\", LD_PRELOAD = \"\" }\n";
        assert_eq!(
            parsed(&format!("{base}overridable = [\"MODE\", \"DATA\"]")).validate("demo"),
            Ok(())
        );
        for (list, field, says) in [
            (
                "[\"MODE\", \"NOPE\"]",
                "overridable[1]",
                "not declared in `env`",
            ),
            (
                "[\"PATH\"]",
                "overridable[0]",
                "decides which program or code",
            ),
            (
                "[\"LD_PRELOAD\"]",
                "overridable[0]",
                "decides which program or code",
            ),
            ("[\"HOME\"]", "overridable[0]", "only literal values"),
            ("[\"TOKEN\"]", "overridable[0]", "only literal values"),
        ] {
            let e = parsed(&format!("{base}overridable = {list}"))
                .validate("demo")
                .err()
                .unwrap_or_default();
            assert!(
                e.contains(&format!("instance_types.demo.{field}")) && e.contains(says),
                "{list}: {e}"
            );
        }
        // A url type has no environment to override.
        let e = parsed("url = \"https://x.test/mcp\"\noverridable = [\"MODE\"]")
            .validate("remote")
            .err()
            .unwrap_or_default();
        assert!(e.contains("instance_types.remote.overridable[0]"), "{e}");
    }

    #[test]
    fn the_coordinators_own_variables_are_never_templated_into_a_child() {
        for (text, field) in [
            (
                "command = \"x\"\nenv = { D = \"${env:MCP_COORDINATOR_DATA_DIR}\" }",
                "env.D",
            ),
            (
                "command = \"x\"\nenv = { D = \"db=${env:MCP_COORDINATOR_DB}\" }",
                "env.D",
            ),
            (
                "url = \"https://x.test/mcp\"\nheaders = { K = \"${env:MCP_COORDINATOR_MASTER_KEY}\" }",
                "headers.K",
            ),
        ] {
            let e = parsed(text).validate("demo").err().unwrap_or_default();
            assert!(
                e.contains(&format!("instance_types.demo.{field}"))
                    && e.contains("MCP_COORDINATOR_"),
                "{text}: {e}"
            );
        }
        // Other variables of the coordinator, and literal values, are the config's choice.
        assert_eq!(
            parsed("command = \"x\"\nenv = { H = \"${env:HOME}\", M = \"MCP_COORDINATOR_X\" }")
                .validate("demo"),
            Ok(())
        );
    }

    #[test]
    fn variables_that_choose_code_are_not_overridable() {
        for key in [
            "PATH",
            "LD_PRELOAD",
            "DYLD_INSERT_LIBRARIES",
            "NODE_OPTIONS",
            "npm_config_registry",
            "UV_INDEX_URL",
            "PIP_INDEX_URL",
            "PYTHONPATH",
        ] {
            assert!(chooses_code(key), "{key}");
        }
        for key in ["MODE", "LOG_LEVEL", "ALLOWED_DIRS", "PATHS"] {
            assert!(!chooses_code(key), "{key}");
        }
    }
}
