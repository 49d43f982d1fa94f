//! The bearer check in front of `/mcp`: every request carries `Authorization: Bearer TOKEN`;
//! the token is this coordinator's own (a local access token or API key) or the identity
//! provider's, and the principal it names is put in the request for the tool handlers. Without
//! one, or with one refused, the answer is `401` with a `WWW-Authenticate` challenge naming the
//! metadata document (MCP authorization, RFC 6750 and RFC 9728).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Front;
use crate::auth::provider::ProviderError;
use crate::auth::{AccessError, AccessTokens, Principal, ProviderTokens};

/// Checks bearer tokens: this coordinator's own, and (when `[auth] issuer` is set) the
/// identity provider's.
#[derive(Clone)]
pub struct Authenticator {
    local: AccessTokens,
    provider: Option<ProviderTokens>,
}

/// Why a request was not let in, as the challenge says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (RFC 6750 §3.1: no error code then).
    Missing,
    /// A token was given and refused: why, for `error_description`.
    Invalid(String),
    /// The token could not be checked now (the database is busy, the identity provider's keys
    /// cannot be fetched): not the client's fault, so `503`, and not counted as a guess.
    Unavailable(String),
}

impl Authenticator {
    /// `provider`: the identity provider's tokens, when `[auth] issuer` is set.
    pub fn new(local: AccessTokens, provider: Option<ProviderTokens>) -> Self {
        Authenticator { local, provider }
    }

    /// The identity provider's issuer, when one is configured.
    pub fn issuer(&self) -> Option<&str> {
        self.provider.as_ref().map(|p| p.issuer())
    }

    pub fn provider(&self) -> Option<&ProviderTokens> {
        self.provider.as_ref()
    }

    pub fn local(&self) -> &AccessTokens {
        &self.local
    }

    /// The principal `bearer` names, or why it is refused.
    pub async fn principal(&self, bearer: &str) -> Result<Principal, Refusal> {
        if self.local.is_ours(bearer) {
            // A point lookup of the token's row (revocation). On a SQLite file it runs here: a
            // few microseconds on a connection of its own that no write holds, where handing
            // it to the blocking pool cost tens (two thread switches per request). On
            // PostgreSQL it is a round trip, for the blocking pool.
            let checked = if self.local.check_may_wait() {
                let local = self.local.clone();
                let bearer = bearer.to_string();
                tokio::task::spawn_blocking(move || local.check(&bearer))
                    .await
                    .map_err(|_| Refusal::Unavailable("the token check failed".into()))?
            } else {
                self.local.check(bearer)
            };
            return checked.map_err(|e| match e {
                AccessError::Store(_) => Refusal::Unavailable(e.to_string()),
                e => Refusal::Invalid(e.to_string()),
            });
        }
        match &self.provider {
            Some(provider) => provider.check(bearer).await.map_err(|e| match e {
                ProviderError::Unreachable(_) | ProviderError::Keys(_) => {
                    Refusal::Unavailable(e.to_string())
                }
                e => Refusal::Invalid(e.to_string()),
            }),
            None => Err(Refusal::Invalid(
                "the token is not one this coordinator issued, and no identity provider is \
                 configured ([auth] issuer)"
                    .into(),
            )),
        }
    }
}

/// The bearer value of `Authorization`, if the header is there and says `Bearer`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The principal the request's bearer names, or the `401` (`503` when it cannot be checked
/// now) to answer instead.
pub async fn principal_of(front: &Front, headers: &HeaderMap) -> Result<Principal, Response> {
    let found = match bearer(headers) {
        None => Err(Refusal::Missing),
        Some(token) => front.auth().principal(token).await,
    };
    found.map_err(|refusal| unauthorized(front, &refusal))
}

/// `401` with the challenge: `Bearer resource_metadata="..."`, and for a refused token
/// `error="invalid_token"` with why.
pub fn unauthorized(front: &Front, refusal: &Refusal) -> Response {
    let mut challenge = format!("Bearer resource_metadata=\"{}\"", front.metadata_url());
    let body = match refusal {
        Refusal::Missing => {
            "this endpoint needs `Authorization: Bearer TOKEN`; see the metadata document named in \
             WWW-Authenticate"
                .to_string()
        }
        Refusal::Unavailable(why) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                format!("the bearer token could not be checked now: {why}; try again shortly"),
            )
                .into_response();
        }
        Refusal::Invalid(why) => {
            // Quotes and backslashes would end the quoted string early, and a header carries
            // visible ASCII only (a reason may quote a token's claim).
            let why_quoted: String = why
                .chars()
                .map(|c| match c {
                    '"' | '\\' => '\'',
                    c if c == ' ' || c.is_ascii_graphic() => c,
                    _ => '?',
                })
                .collect();
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{why_quoted}\""
            ));
            format!("the bearer token was refused: {why}")
        }
    };
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}
