//! Remediation proposals.
