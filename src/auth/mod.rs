//! Who is calling over the network and what they may do: the roles and their permissions
//! (`role.rs`), the principal a request acts as (`principal.rs`), the `[auth]` config
//! (`config.rs`), the identity provider's access tokens checked against its keys
//! (`provider.rs`), and the access tokens and API keys this coordinator issues itself when no
//! identity provider is set (`local.rs`, with what its checks remember in `checked.rs`).
//!
//! Stdio has no principal: the assistant that launched the process runs as the OS user, and
//! the approval gate is what guards it. Over HTTP every request carries one, found by
//! `crate::http`'s middleware and read by the tool handlers in `crate::server`.

mod checked;
pub mod config;
pub mod local;
pub mod principal;
pub mod provider;
pub mod role;

pub use config::AuthConfig;
pub use local::{AccessError, AccessTokens, IssuedAccess};
pub use principal::{Principal, Source};
pub use provider::{ProviderError, ProviderTokens};
pub use role::{Permission, Role};
