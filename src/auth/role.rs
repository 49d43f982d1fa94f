//! The seeds' roles (Integration Architecture's table) and the permissions each one carries.
//! A tool names the one permission it needs; a principal may call it when one of its roles
//! carries that permission.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A role a principal holds, as the identity provider or a local token names it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Requests assessments and proposes installs.
    #[value(name = "installer")]
    Installer,
    /// Proposes remediations.
    #[value(name = "compliance")]
    Compliance,
    /// Decides approvals, in the console only (never through a tool).
    #[value(name = "human_oversight")]
    HumanOversight,
    /// A worker agent: registers, heartbeats, claims and reports tasks.
    #[value(name = "agent")]
    Agent,
    /// Everything, including instances and tokens.
    #[value(name = "admin")]
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Installer,
        Role::Compliance,
        Role::HumanOversight,
        Role::Agent,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Installer => "installer",
            Role::Compliance => "compliance",
            Role::HumanOversight => "human_oversight",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    /// The role a name in a token means (exactly the names above; anything else is not ours).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether this role carries `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Installer => matches!(permission, P::Status | P::Assess | P::Install),
            Role::Compliance => matches!(permission, P::Status | P::Assess | P::Remediate),
            Role::Agent => matches!(permission, P::Status | P::Work),
            // Deciding happens in the console; through tools a person in this role may look.
            Role::HumanOversight => matches!(permission, P::Status | P::Approvals),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tool needs. Each tool names exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the coordinator's status and choose toolsets.
    Status,
    /// Read approvals and their state (never decide: no tool decides).
    Approvals,
    /// Request assessments and read them.
    Assess,
    /// Propose installs and client config changes.
    Install,
    /// Propose remediations.
    Remediate,
    /// A worker's part: register, heartbeat, claim and report tasks.
    Work,
    /// Submit and manage tasks and pipelines.
    Operate,
    /// Start, stop and change child MCP instances, and call their tools.
    Instances,
    /// Read and verify the audit log.
    AuditRead,
    /// Issue and revoke tokens, and anything else that is the admin's alone.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Status => "status",
            Permission::Approvals => "approvals",
            Permission::Assess => "assess",
            Permission::Install => "install",
            Permission::Remediate => "remediate",
            Permission::Work => "work",
            Permission::Operate => "operate",
            Permission::Instances => "instances",
            Permission::AuditRead => "audit_read",
            Permission::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_admin_has_everything() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert!(Role::Admin.grants(Permission::Admin));
        for r in [
            Role::Installer,
            Role::Compliance,
            Role::HumanOversight,
            Role::Agent,
        ] {
            assert!(!r.grants(Permission::Admin), "{r}");
            assert!(!r.grants(Permission::Instances), "{r}");
        }
    }
}
