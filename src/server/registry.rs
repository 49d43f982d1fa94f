//! The tools this process offers: their routes by name, the ones the config switched off, and
//! their definitions, built the first time a client lists them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rmcp::model::Tool;

use super::tool::Route;
use crate::config::{ToolGroup, Toolset};

/// The enabled tools of this process and the switched-off ones.
pub struct Registry {
    routes: HashMap<&'static str, Route>,
    /// Tools switched off by config, with the group that switched them off.
    disabled: HashMap<&'static str, ToolGroup>,
    /// How many enabled tools each toolset holds (the `toolsets` tool in none).
    sizes: HashMap<Toolset, usize>,
    /// The enabled tools' definitions, sorted by name; built on first use (generating every
    /// schema is most of what a cold start would otherwise spend before answering).
    definitions: OnceLock<Arc<Vec<Tool>>>,
}

impl Registry {
    /// `routes`, less those in a group listed in `disabled_groups`.
    pub fn new(routes: Vec<Route>, disabled_groups: &[ToolGroup]) -> Self {
        let mut enabled = HashMap::with_capacity(routes.len());
        let mut disabled = HashMap::new();
        for r in routes {
            // The `toolsets` tool stays: it is how a connection gets its other tools back.
            if disabled_groups.contains(&r.group()) && r.name() != super::toolsets::TOOL {
                disabled.insert(r.name(), r.group());
            } else {
                enabled.insert(r.name(), r);
            }
        }
        let mut sizes = HashMap::new();
        for r in enabled.values() {
            if r.name() != super::toolsets::TOOL {
                *sizes.entry(r.group().toolset()).or_insert(0) += 1;
            }
        }
        Registry {
            routes: enabled,
            disabled,
            sizes,
            definitions: OnceLock::new(),
        }
    }

    /// An enabled tool's route.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// How many enabled tools `toolset` holds, and whether the config switched off any of
    /// its tools.
    pub fn toolset_size(&self, toolset: Toolset) -> (usize, bool) {
        let enabled = self.sizes.get(&toolset).copied().unwrap_or(0);
        let switched_off = self.disabled.values().any(|g| g.toolset() == toolset);
        (enabled, switched_off)
    }

    /// The group that switched `name` off, if the config did.
    pub fn disabled_group(&self, name: &str) -> Option<ToolGroup> {
        self.disabled.get(name).copied()
    }

    /// How many tools are enabled.
    pub fn enabled_count(&self) -> usize {
        self.routes.len()
    }

    /// How many enabled tools `counted` keeps (without building their definitions).
    pub fn count_where(&self, counted: impl Fn(&Route) -> bool) -> usize {
        self.routes.values().filter(|r| counted(r)).count()
    }

    /// Every enabled tool's definition, sorted by name.
    pub fn definitions(&self) -> Arc<Vec<Tool>> {
        self.definitions
            .get_or_init(|| {
                let mut tools: Vec<Tool> = self.routes.values().map(Route::definition).collect();
                tools.sort_by(|a, b| a.name.cmp(&b.name));
                Arc::new(tools)
            })
            .clone()
    }

    /// The definitions of the enabled tools `shown` keeps, sorted by name.
    pub fn definitions_where(&self, shown: impl Fn(&Route) -> bool) -> Vec<Tool> {
        self.definitions()
            .iter()
            .filter(|t| self.routes.get(t.name.as_ref()).is_some_and(&shown))
            .cloned()
            .collect()
    }

    /// One enabled tool's definition.
    pub fn definition(&self, name: &str) -> Option<Tool> {
        self.routes.get(name)?;
        let all = self.definitions();
        all.binary_search_by(|t| t.name.as_ref().cmp(name))
            .ok()
            .map(|i| all[i].clone())
    }
}
