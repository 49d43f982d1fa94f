//! SQL for assessments and remediation proposals.
