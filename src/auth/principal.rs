//! The principal an HTTP request acts as: who (subject and name, as the token says), which
//! roles, and what vouched for it (the identity provider, a local token, an API key).

use super::{Permission, Role};

/// Who an authenticated request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject (`sub`), or the local token's or API key's id.
    pub subject: String,
    /// A name for people: the provider's `preferred_username` (or client id), or the name
    /// given when the local token or key was issued.
    pub name: String,
    /// Roles this coordinator knows, sorted; names it does not know are left out.
    pub roles: Vec<Role>,
    pub source: Source,
}

/// What vouched for a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JWT from the identity provider at `issuer`.
    Provider { issuer: String },
    /// An access token this coordinator issued (`mcp-coordinator token issue`).
    LocalToken,
    /// An API key this coordinator issued (`mcp-coordinator token issue --api-key`).
    ApiKey,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Provider { .. } => "oidc",
            Source::LocalToken => "local_token",
            Source::ApiKey => "api_key",
        }
    }
}

impl Principal {
    /// Whether one of the principal's roles carries `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.roles.iter().any(|r| r.grants(permission))
    }

    /// `SOURCE:SUBJECT`: one principal whatever it is named, for the tables kept per principal
    /// (rate limits, sessions, toolsets).
    pub fn key(&self) -> String {
        format!("{}:{}", self.source.as_str(), self.subject)
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// `NAME (sub SUBJECT, via SOURCE)`: how audit records and approvals name it.
    pub fn describe(&self) -> String {
        format!(
            "{} (sub {}, via {})",
            self.name,
            self.subject,
            self.source.as_str()
        )
    }

    /// The roles, comma-separated, for messages.
    pub fn role_names(&self) -> String {
        if self.roles.is_empty() {
            return "none".into();
        }
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
