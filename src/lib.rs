//! mcp-coordinator as a library: the layers the binary, the tests and the benchmark share.
//! Dependencies point down only: `server` -> domains (`audit`, `approval`, ...) -> `store`.

pub mod approval;
pub mod audit;
pub mod config;
pub mod server;
pub mod store;
