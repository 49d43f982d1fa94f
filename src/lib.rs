//! mcp-coordinator as a library: the layers the binary, the tests and the benchmark share.
//! Dependencies point down only: `cli` -> `server` -> domains (`approval`, `overseer`, `agent`,
//! `task`, `pipeline`, `assessment`, `clients`, `remediation`, `secret`, `audit`, `instance`,
//! `fleet`) -> `store`, with leaves any layer may use (`config`, `fault`, `periodic`, `limits`,
//! `logging`, `glob`, `keyfile`, `net`). rmcp is used only by `server`, `cli` and
//! `instance::child` (the coordinator as an MCP client of its children); the database driver
//! only by `store`.

pub mod agent;
pub mod allocator;
pub mod approval;
pub mod assessment;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod config;
pub mod console;
pub mod fault;
pub mod fleet;
pub mod glob;
pub mod http;
pub mod instance;
pub mod keyfile;
pub mod limits;
pub mod logging;
mod macros;
pub mod net;
pub mod overseer;
pub mod periodic;
pub mod pipeline;
pub mod remediation;
pub mod secret;
pub mod server;
pub mod store;
pub mod task;
