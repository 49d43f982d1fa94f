//! The `[auth]` section of the config file: the identity provider whose access tokens the
//! HTTP endpoint accepts, where roles are read in them, and the client the console logs people
//! in with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[auth]`: OAuth 2.1 bearer tokens for MCP over HTTP, and console login through the provider.
/// Without an `issuer`, only this coordinator's own tokens and API keys are accepted
/// (`mcp-coordinator token issue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The identity provider's issuer URL, exactly as its tokens' `iss` says (Keycloak:
    /// `https://HOST/realms/REALM`). Its discovery document is read from
    /// `ISSUER/.well-known/openid-configuration`, and its signing keys from the `jwks_uri` there.
    pub issuer: Option<String>,
    /// The audience an access token must carry (RFC 8707: this resource). Default: the URL of
    /// this server's `/mcp` endpoint (its `[http] public_url` when set).
    pub audience: Option<String>,
    /// Where roles are read in a provider's token: dotted claim paths, each naming a list of
    /// strings. `{client}` stands for `console_client_id`. Default: Keycloak's
    /// `realm_access.roles` and `resource_access.{client}.roles`.
    pub roles_claims: Vec<String>,
    /// The claim that names a principal for people. Default `preferred_username`, falling back
    /// to `client_id`, `azp`, then `sub`.
    pub name_claim: String,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`. Default 30.
    pub leeway_seconds: u64,
    /// The provider's client the console logs people in with (authorization code + PKCE).
    /// Without it, the console accepts the overseer's passphrase only.
    pub console_client_id: Option<String>,
    /// Where the console client's secret is, for a confidential client: `env:NAME` or
    /// `secret:NAME` (the secret store). None for a public client.
    pub console_client_secret: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: None,
            audience: None,
            roles_claims: vec![
                "realm_access.roles".into(),
                "resource_access.{client}.roles".into(),
            ],
            name_claim: "preferred_username".into(),
            leeway_seconds: 30,
            console_client_id: None,
            console_client_secret: None,
        }
    }
}
