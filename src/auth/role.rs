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

    /// Whether this role carries `permission`: the seeds' table (Integration Architecture:
    /// installer requests assessments, compliance proposes remediations, human oversight
    /// approves, each reads the audit log; admin has everything), extended to every tool.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => true,
            Role::Installer => matches!(
                permission,
                P::Status | P::View | P::Assess | P::RequestApproval | P::Install | P::AuditRead
            ),
            Role::Compliance => matches!(
                permission,
                P::Status | P::View | P::Assess | P::RequestApproval | P::Remediate | P::AuditRead
            ),
            // Deciding happens in the console; through tools a person in this role may look.
            Role::HumanOversight => matches!(permission, P::Status | P::View | P::AuditRead),
            Role::Agent => matches!(permission, P::Status | P::Work),
        }
    }

    /// The permissions this role carries, in [`Permission::ALL`]'s order.
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| self.grants(*p))
            .collect()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tool needs. Each tool names exactly one, where it is declared (`ToolSpec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read the coordinator's status and choose toolsets (every role).
    Status,
    /// Read approvals, assessments and remediation proposals: the seeds' status endpoints.
    /// Never decide: no tool decides.
    View,
    /// Ask a person to approve an action (`approval_request`); the person decides elsewhere.
    RequestApproval,
    /// Request assessments and cancel them.
    Assess,
    /// Read client configs and propose installs and removals of MCP servers in them.
    Install,
    /// Propose remediations, ask for their review, withdraw and roll them back.
    Remediate,
    /// A worker's part: register, heartbeat, claim and report tasks, deregister.
    Work,
    /// Submit and manage tasks and pipelines, and see the agents.
    Operate,
    /// Start, stop and change child MCP instances, and call their tools.
    Instances,
    /// Read and verify the audit log.
    AuditRead,
    /// What is the admin's alone: tokens, and purging the queue's history.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Permission::Status,
        Permission::View,
        Permission::RequestApproval,
        Permission::Assess,
        Permission::Install,
        Permission::Remediate,
        Permission::Work,
        Permission::Operate,
        Permission::Instances,
        Permission::AuditRead,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Status => "status",
            Permission::View => "view",
            Permission::RequestApproval => "request_approval",
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

    /// The roles that carry this permission.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.grants(self)).collect()
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
        assert_eq!(Role::Admin.permissions(), Permission::ALL.to_vec());
        // What only an admin may do: tokens, instances (and their children's tools), running
        // tasks and pipelines.
        for p in [
            Permission::Admin,
            Permission::Instances,
            Permission::Operate,
        ] {
            assert_eq!(p.roles(), vec![Role::Admin], "{p}");
        }
    }

    /// The seeds' table (Integration Architecture), as the issue extends it.
    #[test]
    fn the_seeds_roles_carry_their_permissions() {
        use Permission as P;
        let has = |r: Role, p: P| r.grants(p);
        assert!(has(Role::Installer, P::Assess) && has(Role::Installer, P::Install));
        assert!(!has(Role::Installer, P::Remediate));
        assert!(has(Role::Compliance, P::Remediate) && !has(Role::Compliance, P::Install));
        assert_eq!(
            Role::HumanOversight.permissions(),
            vec![P::Status, P::View, P::AuditRead]
        );
        assert_eq!(Role::Agent.permissions(), vec![P::Status, P::Work]);
        // Reading the audit log is its own permission, held by the seeds' three roles.
        assert_eq!(
            P::AuditRead.roles(),
            vec![
                Role::Installer,
                Role::Compliance,
                Role::HumanOversight,
                Role::Admin
            ]
        );
        assert_eq!(P::Work.roles(), vec![Role::Agent, Role::Admin]);
    }
}
