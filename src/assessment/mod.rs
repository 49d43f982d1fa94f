//! Assessments of MCP client configs.
