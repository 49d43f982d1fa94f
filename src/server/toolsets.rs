//! Toolsets: which of the coordinator's tools (and which running children's) this client's
//! connection is offered, and the `toolsets` tool that lists them and turns one on or off.
//!
//! A connection starts with the config's `tools.toolsets` (or `--toolsets`); enabling a
//! toolset changes only what this connection lists and may call, never the world, so it asks
//! nobody. Over stdio a process serves one connection, so the choice is the process's; over
//! HTTP each initialize-era session has its own, and a stateless (2026-07-28) caller, having
//! no connection to keep it in, has one per principal (`Coordinator::bind_toolsets`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Coordinator;
use super::session::Call;
use super::tool::{ErrorCode, Failure, Route, ToolError, ToolSpec, invalid_field, route};
use crate::auth::Permission;
use crate::config::{ToolGroup, Toolset};

/// The tool's name: it belongs to no toolset and is always offered (else a connection that
/// disabled everything could never come back).
pub const TOOL: &str = "toolsets";

/// Prefix of one running child's toolset, `child:<instance>`.
const CHILD_PREFIX: &str = "child:";

pub fn routes() -> Vec<Route> {
    vec![route(
        ToolSpec {
            name: TOOL,
            permission: Permission::Status,
            title: "List, enable or disable toolsets",
            description: include_str!("../../tools/toolsets.md"),
            group: ToolGroup::System,
            read_only: false,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        toolsets,
    )]
}

/// What one connection is offered.
pub struct Toolsets {
    state: Mutex<Enabled>,
}

#[derive(Debug, Clone)]
struct Enabled {
    /// Built-in toolsets switched on.
    sets: BTreeSet<Toolset>,
    /// Whether a child's tools are offered unless its own switch says otherwise.
    children: bool,
    /// Per child (`child:<instance>`), where it differs from `children`.
    child: BTreeMap<String, bool>,
}

impl Toolsets {
    /// A connection's starting set.
    pub fn new(initial: &[Toolset]) -> Self {
        let mut enabled = Enabled {
            sets: BTreeSet::new(),
            children: false,
            child: BTreeMap::new(),
        };
        for t in initial {
            enabled.set(*t, true);
        }
        Toolsets {
            state: Mutex::new(enabled),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Enabled> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a tool of `group` is offered.
    pub fn shows(&self, group: ToolGroup) -> bool {
        self.lock().sets.contains(&group.toolset())
    }

    /// Whether the tools of child `instance` are offered.
    pub fn shows_child(&self, instance: &str) -> bool {
        let e = self.lock();
        e.child.get(instance).copied().unwrap_or(e.children)
    }

    /// Switches `name` on or off.
    fn apply(&self, name: Name, on: bool) {
        let mut e = self.lock();
        match name {
            Name::Set(t) => e.set(t, on),
            Name::Child(instance) => {
                if on == e.children {
                    e.child.remove(&instance);
                } else {
                    e.child.insert(instance, on);
                }
            }
        }
    }

    /// The built-in toolsets switched on, and whether children's tools are (by default).
    pub fn enabled(&self) -> (Vec<Toolset>, bool) {
        let e = self.lock();
        (e.sets.iter().copied().collect(), e.children)
    }
}

impl Enabled {
    fn set(&mut self, t: Toolset, on: bool) {
        let mut put = |t: Toolset| {
            if on {
                self.sets.insert(t);
            } else {
                self.sets.remove(&t);
            }
        };
        match t {
            Toolset::All => {
                Toolset::BUILT_IN.into_iter().for_each(&mut put);
                self.children = on;
                self.child.clear();
            }
            Toolset::Children => {
                self.children = on;
                self.child.clear();
            }
            t => put(t),
        }
    }
}

/// Which toolset a name given to the tool means.
enum Name {
    Set(Toolset),
    Child(String),
}

/// Arguments of `toolsets`: nothing to list, or one toolset to enable or disable.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolsetsInput {
    /// A toolset to switch on for this connection: system, approvals, assessments,
    /// installer, agents, pipelines, instances, children, `child:<instance>` or all.
    pub enable: Option<String>,
    /// A toolset to switch off for this connection (same names).
    pub disable: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolsetsOutput {
    /// Whether this call changed what the connection is offered (then `tools/list` changed
    /// and the client was told).
    pub changed: bool,
    /// The toolsets, built-in ones first, then each running child's.
    pub toolsets: Vec<ToolsetInfo>,
    /// How many tools the connection is offered now.
    pub tools_offered: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolsetInfo {
    /// The name to pass as `enable` or `disable`.
    pub name: String,
    /// What it is for.
    pub summary: String,
    pub enabled: bool,
    /// How many tools it holds.
    pub tools: usize,
    /// Set when the config file switched its tools off: enabling it offers nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched_off: Option<String>,
}

async fn toolsets(
    c: Coordinator,
    input: ToolsetsInput,
    call: Call,
) -> Result<ToolsetsOutput, Failure> {
    let change = match (input.enable, input.disable) {
        (Some(_), Some(_)) => {
            return Err(invalid_field(
                TOOL,
                "disable",
                "give `enable` or `disable`, not both (one toolset per call)",
            )
            .into());
        }
        (Some(name), None) => Some((parse(&c, "enable", &name)?, true)),
        (None, Some(name)) => Some((parse(&c, "disable", &name)?, false)),
        (None, None) => None,
    };
    let principal = call.principal.as_ref();
    let mut changed = false;
    if let Some((name, on)) = change {
        let before = (offered_names(&c, None), offered_names(&c, principal));
        c.toolsets().apply(name, on);
        // What is offered changed, not merely how it is recorded: to anyone (then every
        // listener is told), and to this caller (what `changed` says).
        if offered_names(&c, None) != before.0 {
            super::lifecycle::announce_tool_list_changed(&c).await;
        }
        changed = offered_names(&c, principal) != before.1;
    }
    Ok(ToolsetsOutput {
        changed,
        toolsets: describe(&c),
        tools_offered: c.offered_count(principal),
    })
}

/// The names of the tools `principal` (every tool, on stdio) is offered now.
fn offered_names(c: &Coordinator, principal: Option<&crate::auth::Principal>) -> Vec<String> {
    c.offered_tools(principal)
        .into_iter()
        .map(|t| t.name.to_string())
        .collect()
}

/// Each running child here with how many tools it exposes, by name.
fn running_children(c: &Coordinator) -> BTreeMap<String, usize> {
    let mut children = BTreeMap::new();
    if !c.instances_enabled() {
        return children;
    }
    for tool in c.instances().exposed_tools().iter() {
        if let Some((instance, _)) = crate::instance::policy::split_exposed(&tool.name) {
            *children.entry(instance.to_string()).or_insert(0) += 1;
        }
    }
    children
}

fn parse(c: &Coordinator, field: &str, name: &str) -> Result<Name, Failure> {
    let name = name.trim();
    if let Some(t) = Toolset::from_name(name) {
        return Ok(Name::Set(t));
    }
    if let Some(instance) = name.strip_prefix(CHILD_PREFIX) {
        let running = running_children(c);
        if running.contains_key(instance) {
            return Ok(Name::Child(instance.to_string()));
        }
        let names: Vec<String> = running.keys().map(|n| child_toolset(n)).collect();
        return Err(ToolError::new(
            ErrorCode::NotFound,
            format!(
                "no running child `{instance}` with tools here; running: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
        .with_details(json!({"field": field, "instance": instance, "running": names}))
        .into());
    }
    let known: Vec<&str> = Toolset::BUILT_IN
        .iter()
        .chain(&[Toolset::Children, Toolset::All])
        .map(|t| t.as_str())
        .collect();
    Err(invalid_field(
        TOOL,
        field,
        format!(
            "unknown toolset {name:?}; expected one of {}, or child:<instance>",
            known.join(", ")
        ),
    )
    .into())
}

/// Every toolset with its state, built-in ones first, then the running children's.
fn describe(c: &Coordinator) -> Vec<ToolsetInfo> {
    let sets = c.toolsets();
    let (enabled, children_on) = sets.enabled();
    let mut out: Vec<ToolsetInfo> = Toolset::BUILT_IN
        .into_iter()
        .map(|t| {
            let (tools, switched_off) = c.toolset_size(t);
            ToolsetInfo {
                name: t.as_str().into(),
                summary: t.summary().into(),
                enabled: enabled.contains(&t),
                tools,
                switched_off: switched_off.then(|| {
                    "its tool groups are listed in tools.disabled_groups of the config file"
                        .to_string()
                }),
            }
        })
        .collect();
    let running = running_children(c);
    out.push(ToolsetInfo {
        name: Toolset::Children.as_str().into(),
        summary: Toolset::Children.summary().into(),
        enabled: children_on,
        tools: running.values().sum(),
        switched_off: (!c.instances_enabled())
            .then(|| "the instances group is listed in tools.disabled_groups".to_string()),
    });
    for (name, tools) in running {
        out.push(ToolsetInfo {
            enabled: sets.shows_child(&name),
            summary: format!("the tools of running child `{name}` ({name}__<tool>)"),
            name: child_toolset(&name),
            tools,
            switched_off: None,
        });
    }
    out
}

/// Why `tool` cannot be called on this connection: its toolset is off. `toolset` is the name
/// to enable.
pub fn refused(tool: &str, toolset: &str) -> ToolError {
    ToolError::new(
        ErrorCode::ToolsetDisabled,
        format!(
            "tool `{tool}` is in the toolset `{toolset}`, which is not enabled on this connection; \
             call `{TOOL}` with {{\"enable\": \"{toolset}\"}} first"
        ),
    )
    .with_details(json!({"tool": tool, "toolset": toolset,
                         "enable_with": {"tool": TOOL, "arguments": {"enable": toolset}}}))
}

/// The toolset name of child `instance`'s tools.
pub fn child_toolset(instance: &str) -> String {
    format!("{CHILD_PREFIX}{instance}")
}
