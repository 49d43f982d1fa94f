//! Team mode's login: people log in to the console through the identity provider named by
//! `[auth] issuer`, as the client `[auth] console_client_id`, with the authorization code
//! grant and PKCE (S256). This file holds what talks to the provider (its discovery document,
//! the code exchange at its token endpoint, the tokens' checks) and the flows started and not
//! yet finished; `flow.rs` holds the two routes, `/login/oidc` and `/login/callback`.
//!
//! The tokens are checked with the same code that checks MCP's bearer tokens
//! ([`ProviderTokens`]): the ID token for this client (signature from the provider's JWKS,
//! issuer, audience = the client id, expiry) and its `nonce`; roles and the name are read as
//! MCP reads them, from the ID token and from the access token when it is a JWT of the same
//! issuer for the same subject (Keycloak puts realm roles in the access token by default, and
//! in the ID token only when its mapper says so). Both came straight from the token endpoint
//! in this exchange, so neither was shown to anyone else first.

pub mod flow;

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::audit::{Actor, AuditLog};
use crate::auth::provider::ProviderTokens;
use crate::auth::{AuthConfig, Principal, Role};
use crate::secret::SecretStore;

/// How long a login started at `/login/oidc` may take to come back.
const PENDING_TTL: Duration = Duration::from_secs(10 * 60);
/// Logins started and not yet back, at most (the oldest go first).
const PENDING_MAX: usize = 1024;
/// How long one request to the provider may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The longest answer read from the provider.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Seconds the provider's clock may differ from ours when its `auth_time` is compared with
/// when a flow started.
const AUTH_TIME_SKEW: i64 = 30;

/// Why a login through the provider failed. The messages are shown to the person.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider at {issuer} cannot be reached or answered badly: {message}")]
    Provider { issuer: String, message: String },
    #[error("the identity provider refused the login code: {0}")]
    Exchange(String),
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(String),
    #[error("the console client's secret ([auth] console_client_secret) is unusable: {0}")]
    Secret(String),
}

/// What the provider's discovery document says that a login needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

/// A login started and not yet back: kept here, found by its `state`, bound to the browser
/// that started it by a cookie whose SHA-256 is kept.
#[derive(Debug, Clone)]
pub struct Pending {
    pub state: String,
    pub binding: [u8; 32],
    pub verifier: String,
    pub nonce: String,
    /// Where to go once logged in (a path of this console).
    pub next: String,
    /// Whether the provider was asked to ask for the password again (`prompt=login`).
    pub reauth: bool,
    pub started: Instant,
    /// The same moment in unix seconds, for the provider's `auth_time`.
    pub started_unix: i64,
}

/// The person a finished login names.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub principal: Principal,
    /// Whether the provider asked for the password in this very flow (`auth_time` after it
    /// started).
    pub authenticated_now: bool,
}

/// What the token endpoint answered.
#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
}

/// Logins through the identity provider, for one console.
pub struct TeamLogin {
    issuer: String,
    client_id: String,
    /// Where the client secret is (`env:NAME`, `secret:NAME`), for a confidential client.
    secret_ref: Option<String>,
    secret: OnceLock<String>,
    secrets: SecretStore,
    /// The resource the access token is asked for (RFC 8707): MCP's audience.
    resource: String,
    id_tokens: ProviderTokens,
    access_tokens: ProviderTokens,
    discovery: tokio::sync::Mutex<Option<Discovery>>,
    pending: Mutex<VecDeque<Pending>>,
}

/// A random value of 32 bytes, base64url without padding (43 characters: a PKCE verifier,
/// a state, a nonce).
pub fn random_value() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a PKCE verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn binding_hash(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl TeamLogin {
    /// Login through the provider when `[auth] issuer` and `console_client_id` are both set.
    /// `resource` is MCP's resource URL, the audience access tokens are asked for (unless
    /// `[auth] audience` names another).
    pub fn from_config(
        config: &AuthConfig,
        audit: &AuditLog,
        data_dir: &std::path::Path,
        resource: &str,
    ) -> Option<TeamLogin> {
        let issuer = config.issuer.as_deref()?.trim_end_matches('/').to_string();
        let client_id = config.console_client_id.clone()?;
        let id_config = AuthConfig {
            audience: Some(client_id.clone()),
            ..config.clone()
        };
        let resource = config
            .audience
            .clone()
            .unwrap_or_else(|| resource.to_string());
        Some(TeamLogin {
            id_tokens: ProviderTokens::new(&id_config, &issuer, &client_id),
            access_tokens: ProviderTokens::new(config, &issuer, &resource),
            issuer,
            client_id,
            secret_ref: config.console_client_secret.clone(),
            secret: OnceLock::new(),
            secrets: SecretStore::new(audit.clone(), data_dir.to_path_buf()),
            resource,
            discovery: tokio::sync::Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// How the login page names the provider: the issuer's host (and realm, Keycloak's last
    /// path segment), e.g. `sso.example.com (realm mcp)`.
    pub fn display_name(&self) -> String {
        match url::Url::parse(&self.issuer) {
            Ok(u) => {
                let host = u.host_str().unwrap_or("the identity provider").to_string();
                let host = match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                };
                match u.path_segments().and_then(|mut s| s.next_back()) {
                    Some(realm) if !realm.is_empty() => format!("{host} (realm {realm})"),
                    _ => host,
                }
            }
            Err(_) => self.issuer.clone(),
        }
    }

    /// The provider's discovery document (read once; a failure is tried again next time).
    pub async fn discovery(&self) -> Result<Discovery, LoginError> {
        let mut cached = self.discovery.lock().await;
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let body = self
            .fetch(
                crate::net::client()
                    .map_err(|m| self.unreachable(m))?
                    .get(&url),
            )
            .await?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| self.unreachable(format!("its discovery document {url}: {e}")))?;
        if d.issuer.trim_end_matches('/') != self.issuer {
            return Err(self.unreachable(format!(
                "its discovery document names the issuer {}, expected {}",
                d.issuer, self.issuer
            )));
        }
        // The code and the client secret go to the token endpoint: never in clear, unless the
        // provider is on this machine (as in a test, or a provider behind a local proxy).
        for (field, endpoint) in [
            ("token_endpoint", &d.token_endpoint),
            ("authorization_endpoint", &d.authorization_endpoint),
        ] {
            if !secure_or_local(endpoint) {
                return Err(self.unreachable(format!(
                    "its discovery document's {field} {endpoint} is neither https nor on this machine"
                )));
            }
        }
        *cached = Some(d.clone());
        Ok(d)
    }

    fn unreachable(&self, message: impl Into<String>) -> LoginError {
        LoginError::Provider {
            issuer: self.issuer.clone(),
            message: message.into(),
        }
    }

    /// Sends `request` (with the timeout) and reads a bounded, successful body.
    async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, LoginError> {
        let mut r = request
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(crate::net::describe(e)))?;
        let status = r.status();
        let mut body = Vec::new();
        while let Some(chunk) = r
            .chunk()
            .await
            .map_err(|e| self.unreachable(crate::net::describe(e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(self.unreachable("its answer is larger than 1 MiB"));
            }
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(300).collect();
            return Err(self.unreachable(format!("{} answered {status}: {text}", r.url())));
        }
        Ok(body)
    }

    /// Keeps a login just started; it is found by [`take`](Self::take) once.
    pub fn keep(&self, pending: Pending) {
        let mut list = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        list.retain(|p| now.duration_since(p.started) < PENDING_TTL);
        if list.len() >= PENDING_MAX {
            list.pop_front();
        }
        list.push_back(pending);
    }

    /// The login started with `state`, taken (a state works once), if it has not expired.
    pub fn take(&self, state: &str) -> Option<Pending> {
        let mut list = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let i = list.iter().position(|p| p.state == state)?;
        list.remove(i).filter(|p| p.started.elapsed() < PENDING_TTL)
    }

    /// The client secret, read once from the environment or the secret store (a database
    /// read: call it off the async workers).
    pub fn client_secret(&self) -> Result<Option<String>, LoginError> {
        let Some(reference) = &self.secret_ref else {
            return Ok(None);
        };
        if let Some(s) = self.secret.get() {
            return Ok(Some(s.clone()));
        }
        let value = match reference.split_once(':') {
            Some(("env", name)) => std::env::var(name).map_err(|_| {
                LoginError::Secret(format!("the environment variable {name} is not set"))
            })?,
            Some(("secret", name)) => {
                let by = Actor::new(crate::audit::ActorKind::System, "console login");
                self.secrets
                    .reveal_many(&[name.to_string()], &by)
                    .map_err(|e| LoginError::Secret(e.to_string()))?
                    .into_iter()
                    .next()
                    .map(|(_, v)| v)
                    .ok_or_else(|| LoginError::Secret(format!("no secret named {name}")))?
            }
            _ => {
                return Err(LoginError::Secret(format!(
                    "expected env:NAME or secret:NAME, got {reference:?}"
                )));
            }
        };
        crate::logging::remember_secret(&value);
        Ok(Some(self.secret.get_or_init(|| value).clone()))
    }

    /// Exchanges `code` at the token endpoint (as a confidential client when `secret` is
    /// given, from [`client_secret`](Self::client_secret)) and checks what comes back: the
    /// person.
    pub async fn finish(
        &self,
        code: &str,
        pending: &Pending,
        redirect_uri: &str,
        secret: Option<String>,
    ) -> Result<LoggedIn, LoginError> {
        let discovery = self.discovery().await?;
        let client = crate::net::client().map_err(|m| self.unreachable(m))?;
        let mut request = client
            .post(&discovery.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        // The serializer is not `Send`: the body is a finished string before anything awaits.
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "authorization_code")
                .append_pair("code", code)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("code_verifier", &pending.verifier)
                .append_pair("resource", &self.resource);
            match &secret {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic.
                Some(s) => {
                    let enc = |v: &str| {
                        url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                    };
                    request = request.basic_auth(enc(&self.client_id), Some(enc(s)));
                }
                None => {
                    form.append_pair("client_id", &self.client_id);
                }
            }
            form.finish()
        };
        let answer = match self.fetch(request.body(body)).await {
            Ok(body) => body,
            Err(LoginError::Provider { message, .. }) => return Err(LoginError::Exchange(message)),
            Err(e) => return Err(e),
        };
        let answer: TokenAnswer = serde_json::from_slice(&answer).map_err(|e| {
            LoginError::Exchange(format!("its answer is not a token response: {e}"))
        })?;
        let id_token = answer.id_token.ok_or_else(|| {
            LoginError::Exchange(
                "its answer has no id_token (is `openid` a scope of the client?)".into(),
            )
        })?;
        self.check(&id_token, answer.access_token.as_deref(), pending)
            .await
    }

    /// Checks the ID token (and reads roles from the access token too, when it is a JWT of
    /// this provider for the same person).
    async fn check(
        &self,
        id_token: &str,
        access_token: Option<&str>,
        pending: &Pending,
    ) -> Result<LoggedIn, LoginError> {
        let mut principal = self
            .id_tokens
            .check(id_token)
            .await
            .map_err(|e| LoginError::IdToken(e.to_string()))?;
        // The signature, issuer, audience and expiry held: its other claims can be read.
        let claims = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(id_token)
            .map_err(|e| LoginError::IdToken(e.to_string()))?
            .claims;
        if claims["nonce"].as_str() != Some(pending.nonce.as_str()) {
            return Err(LoginError::IdToken(
                "its nonce is not the one this login sent (a token of another login)".into(),
            ));
        }
        if let Some(access) = access_token.filter(|t| t.split('.').count() == 3) {
            match self.access_tokens.check(access).await {
                Ok(p) if p.subject == principal.subject => {
                    principal.roles.extend(p.roles);
                    principal.roles.sort();
                    principal.roles.dedup();
                }
                Ok(p) => tracing::warn!(
                    id_token = %principal.subject, access_token = %p.subject,
                    "console login: the access token names another subject; its roles are not used"
                ),
                Err(e) => tracing::debug!(
                    error = %e, "console login: roles read from the ID token only"
                ),
            }
        }
        let auth_time = claims["auth_time"].as_i64();
        let authenticated_now =
            auth_time.is_some_and(|t| t + AUTH_TIME_SKEW >= pending.started_unix);
        Ok(LoggedIn {
            principal,
            authenticated_now,
        })
    }
}

/// Whether `principal` holds `human_oversight`, the role that decides in the console.
pub fn may_decide(principal: &Principal) -> bool {
    principal.has_role(Role::HumanOversight)
}

/// Whether `url` is `https`, or `http` to a loopback host.
fn secure_or_local(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => true,
        "http" => match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636 Appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_value();
        assert_eq!(v.len(), 43, "32 bytes, base64url without padding");
        assert_ne!(v, random_value());
    }

    #[test]
    fn a_state_is_taken_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = crate::store::Store::open(&crate::store::Location::Memory)
            .unwrap_or_else(|e| panic!("{e}"));
        let signer =
            crate::audit::AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]));
        let audit = AuditLog::new(store, std::sync::Arc::new(signer));
        let config = AuthConfig {
            issuer: Some("https://sso.example.com/realms/mcp/".into()),
            console_client_id: Some("console".into()),
            ..AuthConfig::default()
        };
        let Some(team) = TeamLogin::from_config(&config, &audit, dir.path(), "https://c/mcp")
        else {
            panic!("issuer and client make team mode");
        };
        assert_eq!(team.display_name(), "sso.example.com (realm mcp)");
        assert_eq!(team.issuer(), "https://sso.example.com/realms/mcp");
        let pending = Pending {
            state: "s1".into(),
            binding: binding_hash("b"),
            verifier: random_value(),
            nonce: random_value(),
            next: "/".into(),
            reauth: false,
            started: Instant::now(),
            started_unix: 0,
        };
        team.keep(pending);
        assert!(team.take("s2").is_none());
        assert!(team.take("s1").is_some());
        assert!(team.take("s1").is_none(), "a state works once");
        let without_client = AuthConfig {
            console_client_id: None,
            ..config
        };
        assert!(
            TeamLogin::from_config(&without_client, &audit, dir.path(), "https://c/mcp").is_none()
        );
    }

    #[test]
    fn endpoints_are_https_or_on_this_machine() {
        assert!(secure_or_local("https://sso.example.com/token"));
        assert!(secure_or_local("http://127.0.0.1:8080/token"));
        assert!(secure_or_local("http://localhost/token"));
        assert!(secure_or_local("http://[::1]:9/token"));
        assert!(!secure_or_local("http://sso.example.com/token"));
        assert!(!secure_or_local("ftp://127.0.0.1/token"));
        assert!(!secure_or_local("not a url"));
    }
}
