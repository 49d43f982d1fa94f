//! Approval policy: for each kind and risk level, whether a person's answer in the MCP client
//! (elicitation) suffices or an out-of-band decision (the CLI) is required, and how long an
//! approval stays open. First matching rule wins; the built-in default makes critical actions
//! need the CLI.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DecideWith, Kind, Risk};

/// How long an approval stays open when neither a rule nor the request says otherwise.
pub const DEFAULT_EXPIRY_SECONDS: u64 = 3600;
/// The longest an approval may stay open: a week.
pub const MAX_EXPIRY_SECONDS: u64 = crate::limits::APPROVAL_EXPIRY_SECONDS.max;

/// `[approvals]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// Seconds an approval stays open before it expires (default 3600).
    #[serde(default = "default_expiry")]
    #[schemars(range(
        min = crate::limits::APPROVAL_EXPIRY_SECONDS.min,
        max = crate::limits::APPROVAL_EXPIRY_SECONDS.max
    ))]
    pub default_expiry_seconds: u64,
    /// Rules, checked in order before the built-in default (critical: out_of_band).
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

fn default_expiry() -> u64 {
    DEFAULT_EXPIRY_SECONDS
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            default_expiry_seconds: DEFAULT_EXPIRY_SECONDS,
            rules: Vec::new(),
        }
    }
}

/// One `[[approvals.rules]]` entry. `kind` and `risk` left out match anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub kind: Option<Kind>,
    pub risk: Option<Risk>,
    /// `elicitation` (a person answering in the MCP client suffices; the CLI works too) or
    /// `out_of_band` (only the CLI).
    pub decide_with: DecideWith,
    /// Seconds approvals matching this rule stay open.
    #[schemars(range(
        min = crate::limits::APPROVAL_EXPIRY_SECONDS.min,
        max = crate::limits::APPROVAL_EXPIRY_SECONDS.max
    ))]
    pub expiry_seconds: Option<u64>,
}

/// What the policy says for one approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub decide_with: DecideWith,
    pub expiry_seconds: u64,
}

impl ApprovalPolicy {
    /// Validates values serde cannot (ranges).
    pub fn validate(&self) -> Result<(), String> {
        let check = |what: &str, v: u64| crate::limits::APPROVAL_EXPIRY_SECONDS.check(what, v);
        check(
            "approvals.default_expiry_seconds",
            self.default_expiry_seconds,
        )?;
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(v) = rule.expiry_seconds {
                check(&format!("approvals.rules[{i}].expiry_seconds"), v)?;
            }
        }
        Ok(())
    }

    pub fn resolve(&self, kind: Kind, risk: Risk) -> Resolved {
        let rule = self
            .rules
            .iter()
            .find(|r| r.kind.is_none_or(|k| k == kind) && r.risk.is_none_or(|r| r == risk));
        let decide_with = match rule {
            Some(r) => r.decide_with,
            None if risk == Risk::Critical => DecideWith::OutOfBand,
            None => DecideWith::Elicitation,
        };
        Resolved {
            decide_with,
            expiry_seconds: rule
                .and_then(|r| r.expiry_seconds)
                .unwrap_or(self.default_expiry_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_makes_critical_out_of_band() {
        let p = ApprovalPolicy::default();
        assert_eq!(
            p.resolve(Kind::Generic, Risk::High).decide_with,
            DecideWith::Elicitation
        );
        assert_eq!(
            p.resolve(Kind::Generic, Risk::Critical).decide_with,
            DecideWith::OutOfBand
        );
        assert_eq!(
            p.resolve(Kind::Generic, Risk::Low).expiry_seconds,
            DEFAULT_EXPIRY_SECONDS
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = ApprovalPolicy {
            default_expiry_seconds: 60,
            rules: vec![
                PolicyRule {
                    kind: Some(Kind::Remediation),
                    risk: None,
                    decide_with: DecideWith::OutOfBand,
                    expiry_seconds: Some(600),
                },
                PolicyRule {
                    kind: None,
                    risk: Some(Risk::Critical),
                    decide_with: DecideWith::Elicitation,
                    expiry_seconds: None,
                },
            ],
        };
        let r = p.resolve(Kind::Remediation, Risk::Low);
        assert_eq!(
            (r.decide_with, r.expiry_seconds),
            (DecideWith::OutOfBand, 600)
        );
        let r = p.resolve(Kind::Generic, Risk::Critical);
        assert_eq!(
            (r.decide_with, r.expiry_seconds),
            (DecideWith::Elicitation, 60)
        );
        assert!(p.validate().is_ok());
        let bad = ApprovalPolicy {
            default_expiry_seconds: 0,
            rules: vec![],
        };
        assert!(bad.validate().is_err());
    }
}
