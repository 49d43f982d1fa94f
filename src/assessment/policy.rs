//! The assessment policy file (TOML): allow- and denylists of packages, commands and servers,
//! allowed registries, required pinning, and the severity at which findings become proposals.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Severity;
use crate::glob;

/// A list of globs (`*` matches any run of characters, `?` exactly one) that allows or denies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Lists {
    /// When not empty, only what matches one of these is allowed.
    pub allow: Vec<String>,
    /// What matches one of these is refused (checked first).
    pub deny: Vec<String>,
}

/// What `Lists` says of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Matched this deny glob.
    Denied(String),
    /// An allowlist exists and nothing in it matched.
    NotAllowed,
}

impl Lists {
    pub fn check(&self, name: &str) -> Verdict {
        if let Some(g) = self.deny.iter().find(|g| glob::matches(g, name)) {
            return Verdict::Denied(g.clone());
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|g| glob::matches(g, name)) {
            return Verdict::NotAllowed;
        }
        Verdict::Allowed
    }
}

/// The policy an assessment applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Findings at or above this severity are turned into remediation actions when a proposal
    /// is made from an assessment (default `medium`).
    pub severity_threshold: Severity,
    /// Compliance: every package a server launches (npx, uvx, pip, docker) must name an exact
    /// version (default true).
    pub require_pinned: bool,
    /// Packages (npm, PyPI names, Docker images without tag) servers may launch.
    pub packages: Lists,
    /// Commands servers may be launched with (`npx`, `uvx`, `docker`, a path...), by base name.
    pub commands: Lists,
    /// Server names.
    pub servers: Lists,
    /// Compliance: registries packages may come from (`registry.npmjs.org`, `pypi.org`,
    /// `docker.io`, `ghcr.io`...). Empty: any.
    pub allowed_registries: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            severity_threshold: Severity::Medium,
            require_pinned: true,
            packages: Lists::default(),
            commands: Lists::default(),
            servers: Lists::default(),
            allowed_registries: Vec::new(),
        }
    }
}

impl Policy {
    /// Reads a policy file; errors name the file and the problem.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read policy file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("policy file {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_lists() {
        assert!(glob::matches(
            "@modelcontextprotocol/*",
            "@modelcontextprotocol/server-github"
        ));
        assert!(!glob::matches(
            "@modelcontextprotocol/*",
            "@evil/server-github"
        ));
        assert!(glob::matches("*-mcp", "weather-mcp"));
        assert!(glob::matches("a*c*e", "abcde"));
        assert!(!glob::matches("a*c*e", "abcd"));
        let lists = Lists {
            allow: vec!["@modelcontextprotocol/*".into()],
            deny: vec!["*evil*".into()],
        };
        assert_eq!(
            lists.check("@modelcontextprotocol/evil"),
            Verdict::Denied("*evil*".into())
        );
        assert_eq!(lists.check("left-pad"), Verdict::NotAllowed);
        assert_eq!(lists.check("@modelcontextprotocol/x"), Verdict::Allowed);
    }
}
