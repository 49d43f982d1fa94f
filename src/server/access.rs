//! Who may see and call what: over HTTP a principal is shown in `tools/list` only the tools one
//! of its roles permits, and a call of any other is refused naming the permission. Each tool
//! names its permission where it is declared (`ToolSpec::permission`); the tools of running
//! children, which no route declares, need [`CHILD_TOOLS`]. Stdio has no principal and sees
//! everything, as before: the approval gate is what guards it.

use rmcp::ErrorData;
use serde_json::json;

use super::tool::{ErrorCode, ToolError};
use crate::auth::{Permission, Principal};

/// What calling a running child's tool (`<instance>__<tool>`, the `children` toolset) needs:
/// the permission of `instance_call_tool`, which calls the same tools by another name (a
/// lesser one would let a principal around it). A child's tool runs third-party code on this
/// machine with the secrets its type declares, so it is the admin's, like starting the child.
pub const CHILD_TOOLS: Permission = Permission::Instances;

/// Whether the caller may use what needs `permission`: always on stdio (no principal).
pub fn may(principal: Option<&Principal>, permission: Permission) -> bool {
    principal.is_none_or(|p| p.may(permission))
}

/// Why `principal` may not call `tool`: a `forbidden` tool result naming the permission the
/// tool needs, the roles that carry it, and the principal's own roles.
pub fn refused(tool: &str, permission: Permission, principal: &Principal) -> ToolError {
    let carriers: Vec<&str> = permission.roles().iter().map(|r| r.as_str()).collect();
    ToolError::new(
        ErrorCode::Forbidden,
        format!(
            "tool `{tool}` needs the permission `{permission}`, which {} does not have (roles: {}); \
             roles with it: {}",
            principal.name,
            principal.role_names(),
            carriers.join(", ")
        ),
    )
    .with_details(json!({
        "tool": tool,
        "permission": permission,
        "principal": {"subject": principal.subject, "name": principal.name},
        "roles": principal.roles,
        "roles_with_permission": carriers,
    }))
}

/// The JSON-RPC error of a request that is no tool call (`tasks/get`, `resources/read`) whose
/// answer the principal's roles do not permit: it needs what `tool` needs.
pub fn refused_request(
    method: &str,
    tool: &str,
    permission: Permission,
    principal: &Principal,
) -> ErrorData {
    ErrorData::invalid_request(
        format!(
            "{method} needs the permission `{permission}` (as `{tool}` does), which {} does not have (roles: {})",
            principal.name,
            principal.role_names()
        ),
        Some(json!({"method": method, "permission": permission, "roles": principal.roles})),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::{Role, Source};

    /// Every tool declares a permission an admin has, and no role but admin has what is the
    /// admin's alone; the tools the issue names land where it says.
    #[test]
    fn every_tool_has_a_permission_and_admin_alone_has_the_admin_ones() {
        let table = super::super::tool_permissions();
        assert_eq!(table.len(), super::super::all_tools().len());
        for (tool, permission) in &table {
            assert!(Role::Admin.grants(*permission), "{tool}: {permission}");
        }
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
            assert!(!role.grants(Permission::Admin), "{role} has admin");
        }
        let of = |name: &str| {
            table
                .iter()
                .find(|(t, _)| *t == name)
                .map(|(_, p)| *p)
                .unwrap()
        };
        let roles_of = |name: &str| of(name).roles();
        assert!(roles_of("assessment_request").contains(&Role::Installer));
        assert!(roles_of("mcp_server_install").contains(&Role::Installer));
        assert!(roles_of("remediation_propose").contains(&Role::Compliance));
        assert!(!roles_of("remediation_propose").contains(&Role::Installer));
        for t in [
            "agent_register",
            "agent_heartbeat",
            "task_claim",
            "task_report",
        ] {
            assert!(roles_of(t).contains(&Role::Agent), "{t}");
        }
        assert_eq!(roles_of("instance_start"), vec![Role::Admin]);
        assert_eq!(of("instance_call_tool"), CHILD_TOOLS);
        assert_eq!(of("audit_query"), Permission::AuditRead);
        assert_eq!(of("audit_verify"), Permission::AuditRead);
        // Every tool that changes something is out of human_oversight's reach: it decides in
        // the console, never through a tool.
        let oversight = Role::HumanOversight.permissions();
        for (tool, permission) in &table {
            if oversight.contains(permission) && *tool != super::super::toolsets::TOOL {
                let def = super::super::all_tools()
                    .into_iter()
                    .find(|t| t.name == *tool)
                    .unwrap();
                let read_only = def.annotations.and_then(|a| a.read_only_hint);
                assert_eq!(read_only, Some(true), "human_oversight may call {tool}");
            }
        }
    }

    #[test]
    fn a_refusal_names_the_permission_and_the_roles() {
        let p = Principal {
            subject: "tok_1".into(),
            name: "bot".into(),
            roles: vec![Role::Agent],
            source: Source::LocalToken,
        };
        let e = refused("instance_start", Permission::Instances, &p);
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(!e.retryable);
        assert!(e.message.contains("`instances`"), "{}", e.message);
        assert!(e.message.contains("roles: agent"), "{}", e.message);
        assert_eq!(e.details["permission"], "instances");
        assert_eq!(e.details["roles"], json!(["agent"]));
        assert!(!may(Some(&p), Permission::Instances));
        assert!(may(None, Permission::Instances));
    }
}
