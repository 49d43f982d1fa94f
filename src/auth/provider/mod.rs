//! The identity provider's access tokens, checked as the MCP authorization spec asks of a
//! resource server: JWTs signed by a key of the provider's JWKS (found through its discovery
//! document, cached, refetched when a token names a key not seen yet), for this issuer and
//! this resource (the audience), within `exp`/`nbf`; roles and a name read from claims.
//!
//! A token that passed is remembered until it expires, so the signature is verified once per
//! token, not once per request (a worker sends the same token on every call).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{AuthConfig, Principal, Role, Source};

/// An unknown `kid` refetches the JWKS at most this often, so a flood of tokens naming made-up
/// keys costs the provider one request per interval.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(3);
/// Keys older than this are refetched in the background at the next request (a key the
/// provider withdrew stops being trusted within this).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Tokens remembered as checked, at most.
const TOKEN_CACHE: usize = 1024;
/// How long one request to the provider may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a provider's token was refused. The messages go into the `401`'s
/// `error_description`: they say what was wrong, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error(
        "the token's algorithm {0} is not accepted (only the asymmetric algorithm its key names)"
    )]
    Algorithm(String),
    #[error(
        "the token names no signing key (no kid in its header), and the identity provider has {0} keys"
    )]
    NoKid(usize),
    #[error("the token's signing key {0} is not one of the identity provider's keys")]
    UnknownKey(String),
    #[error("the token's signature does not verify with the identity provider's key {0}")]
    BadSignature(String),
    #[error("the token was issued by {got}, expected {expected}")]
    Issuer { expected: String, got: String },
    #[error("the token is for another audience: expected {expected}, got {got}")]
    Audience { expected: String, got: String },
    #[error("the token expired at {0} (unix time)")]
    Expired(i64),
    #[error("the token is not valid before {0} (unix time)")]
    NotYetValid(i64),
    #[error("the token has no {0} claim")]
    Missing(&'static str),
    #[error("the identity provider's keys could not be fetched: {0}")]
    Unreachable(String),
    #[error("the identity provider's key set is unusable: {0}")]
    Keys(String),
}

/// Where the keys come from.
enum KeySource {
    /// The provider's discovery document, then its `jwks_uri`.
    Remote,
    /// A JWKS given once (tests, the benchmark): never fetched.
    Fixed,
}

/// One usable verification key.
struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// The keys as last fetched.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    /// When they were fetched (None: never).
    fetched: Option<Instant>,
    /// The discovery document's `jwks_uri`, once read.
    jwks_uri: Option<String>,
}

/// Checks the identity provider's access tokens. Cheap to clone.
#[derive(Clone)]
pub struct ProviderTokens {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    leeway: i64,
    /// Each roles claim path, split on dots, `{client}` already replaced.
    roles_claims: Vec<Vec<String>>,
    name_claim: String,
    source: KeySource,
    keys: RwLock<KeySet>,
    /// Held while fetching (one fetch at a time).
    fetching: tokio::sync::Mutex<Fetched>,
    checked: Mutex<HashMap<Box<str>, Checked>>,
}

/// The last attempt to fetch the keys.
#[derive(Default)]
struct Fetched {
    at: Option<Instant>,
    /// Why it failed, said again to the tokens that arrive before the next attempt.
    error: Option<ProviderError>,
}

/// A token that passed, remembered until it expires.
#[derive(Clone)]
struct Checked {
    principal: Principal,
    exp: i64,
}

impl std::fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderTokens {{ issuer: {} }}", self.inner.issuer)
    }
}

impl ProviderTokens {
    /// Tokens of the provider at `config.issuer` for `audience` (the resource URL unless
    /// `[auth] audience` says otherwise). Nothing is fetched here: the keys are read at the
    /// first token (or by [`refresh`](Self::refresh)), so an unreachable provider does not
    /// stop a start.
    pub fn new(config: &AuthConfig, issuer: &str, resource: &str) -> Self {
        Self::build(
            config,
            issuer,
            resource,
            KeySource::Remote,
            KeySet::default(),
        )
    }

    /// Tokens checked against the keys of `jwks` (a JWKS document) alone; never fetches.
    pub fn from_jwks(
        config: &AuthConfig,
        issuer: &str,
        resource: &str,
        jwks: &str,
    ) -> Result<Self, ProviderError> {
        let keys = parse_jwks(jwks.as_bytes())?;
        let set = KeySet {
            keys,
            fetched: Some(Instant::now()),
            jwks_uri: None,
        };
        Ok(Self::build(config, issuer, resource, KeySource::Fixed, set))
    }

    fn build(
        config: &AuthConfig,
        issuer: &str,
        resource: &str,
        source: KeySource,
        keys: KeySet,
    ) -> Self {
        let mut roles_claims = Vec::new();
        for path in &config.roles_claims {
            if path.contains("{client}") {
                // Only the console's client: roles under another client's name are that
                // client's to define, not grants of this coordinator.
                if let Some(client) = &config.console_client_id {
                    roles_claims.push(split_path(&path.replace("{client}", client)));
                }
            } else {
                roles_claims.push(split_path(path));
            }
        }
        ProviderTokens {
            inner: Arc::new(Inner {
                issuer: issuer.trim_end_matches('/').to_string(),
                audience: config
                    .audience
                    .clone()
                    .unwrap_or_else(|| resource.to_string()),
                leeway: i64::try_from(config.leeway_seconds).unwrap_or(i64::MAX / 2),
                roles_claims,
                name_claim: config.name_claim.clone(),
                source,
                keys: RwLock::new(keys),
                fetching: tokio::sync::Mutex::new(Fetched::default()),
                checked: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// The principal `token` names, fetching the provider's keys when none are known yet or
    /// the token names a key not seen yet (at most once per [`REFETCH_INTERVAL`]).
    pub async fn check(&self, token: &str) -> Result<Principal, ProviderError> {
        match self.check_with_known_keys(token) {
            Err(ProviderError::UnknownKey(_) | ProviderError::NoKid(_)) if self.is_remote() => {
                self.refetch(true).await?;
                self.check_with_known_keys(token)
            }
            Ok(p) => {
                if self.is_remote() && self.keys_stale() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.refetch(false).await {
                            tracing::warn!(error = %e, issuer = %this.inner.issuer, "cannot refresh the identity provider's keys");
                        }
                    });
                }
                Ok(p)
            }
            other => other,
        }
    }

    /// Fetches the discovery document (when not read yet) and the JWKS now: at start, to say
    /// early whether the provider is reachable.
    pub async fn refresh(&self) -> Result<usize, ProviderError> {
        self.refetch(true).await?;
        Ok(self.read_keys().keys.len())
    }

    fn is_remote(&self) -> bool {
        matches!(self.inner.source, KeySource::Remote)
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.inner.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn keys_stale(&self) -> bool {
        self.read_keys()
            .fetched
            .is_none_or(|t| t.elapsed() > KEYS_MAX_AGE)
    }

    /// Fetches the keys unless that was tried within [`REFETCH_INTERVAL`] (then the error it
    /// met, if any, for a caller that `wait`s). Without `wait`, nothing is done while another
    /// fetch is under way.
    async fn refetch(&self, wait: bool) -> Result<(), ProviderError> {
        let mut last = if wait {
            self.inner.fetching.lock().await
        } else {
            match self.inner.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(()),
            }
        };
        if last.at.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            // Tried a moment ago (perhaps by the caller we waited for): no new keys.
            return match &last.error {
                Some(e) if wait => Err(e.clone()),
                _ => Ok(()),
            };
        }
        last.at = Some(Instant::now());
        let fetched = self.fetch().await;
        last.error = fetched.as_ref().err().cloned();
        let (jwks_uri, keys) = fetched?;
        tracing::debug!(issuer = %self.inner.issuer, keys = keys.len(), "fetched the identity provider's keys");
        let mut set = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        let changed =
            set.keys.len() != keys.len() || set.keys.keys().any(|k| !keys.contains_key(k));
        set.keys = keys;
        set.fetched = Some(Instant::now());
        set.jwks_uri = Some(jwks_uri);
        drop(set);
        if changed {
            // A key withdrawn takes the tokens it signed with it.
            self.checked().clear();
        }
        Ok(())
    }

    /// The discovery document (when its `jwks_uri` is not known yet), then the keys.
    async fn fetch(&self) -> Result<(String, HashMap<String, Arc<Key>>), ProviderError> {
        let jwks_uri = self.read_keys().jwks_uri.clone();
        let jwks_uri = match jwks_uri {
            Some(uri) => uri,
            None => discover(&self.inner.issuer).await?,
        };
        let keys = parse_jwks(&get(&jwks_uri).await?)?;
        Ok((jwks_uri, keys))
    }

    fn checked(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Checked>> {
        self.inner.checked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal `token` names, with the keys known now (no fetching): what the
    /// benchmark measures. A token checked before is answered from memory until it expires.
    pub fn check_with_known_keys(&self, token: &str) -> Result<Principal, ProviderError> {
        let now = now();
        if let Some(hit) = self.checked().get(token).cloned() {
            if now <= hit.exp.saturating_add(self.inner.leeway) {
                return Ok(hit.principal);
            }
            return Err(ProviderError::Expired(hit.exp));
        }
        let (principal, exp) = self.verify(token, now)?;
        let mut checked = self.checked();
        if checked.len() >= TOKEN_CACHE {
            let leeway = self.inner.leeway;
            checked.retain(|_, c| now <= c.exp.saturating_add(leeway));
            if checked.len() >= TOKEN_CACHE {
                checked.clear();
            }
        }
        checked.insert(
            token.into(),
            Checked {
                principal: principal.clone(),
                exp,
            },
        );
        Ok(principal)
    }

    /// Verifies the signature and every claim: the principal and the token's `exp`.
    fn verify(&self, token: &str, now: i64) -> Result<(Principal, i64), ProviderError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ProviderError::Malformed(describe(&e)))?;
        let key = {
            let set = self.read_keys();
            match &header.kid {
                Some(kid) => set
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or_else(|| ProviderError::UnknownKey(printable(kid)))?,
                // One key and no kid: that key (some providers leave kid out).
                None if set.keys.len() == 1 => set
                    .keys
                    .values()
                    .next()
                    .cloned()
                    .ok_or(ProviderError::NoKid(0))?,
                None => return Err(ProviderError::NoKid(set.keys.len())),
            }
        };
        let kid = printable(header.kid.as_deref().unwrap_or("(none)"));
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(ProviderError::Algorithm(format!("{:?}", header.alg)));
        }
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &key.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    ProviderError::BadSignature(kid.clone())
                }
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                    ProviderError::Algorithm(format!("{:?}", header.alg))
                }
                _ => ProviderError::Malformed(describe(&e)),
            })?
            .claims;
        self.claims(&claims, now)
    }

    /// Checks the verified `claims` (issuer, audience, times) and reads the principal.
    fn claims(&self, claims: &Value, now: i64) -> Result<(Principal, i64), ProviderError> {
        let inner = &self.inner;
        let iss = claims["iss"]
            .as_str()
            .ok_or(ProviderError::Missing("iss"))?;
        if iss.trim_end_matches('/') != inner.issuer {
            return Err(ProviderError::Issuer {
                expected: inner.issuer.clone(),
                got: printable(iss),
            });
        }
        let audiences: Vec<&str> = match &claims["aud"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(ProviderError::Missing("aud")),
        };
        if !audiences.contains(&inner.audience.as_str()) {
            return Err(ProviderError::Audience {
                expected: inner.audience.clone(),
                got: printable(&audiences.join(", ")),
            });
        }
        // NumericDate may carry a fraction (RFC 7519 §2).
        let seconds = |name: &str| {
            let v = &claims[name];
            v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
        };
        let exp = seconds("exp").ok_or(ProviderError::Missing("exp"))?;
        if now > exp.saturating_add(inner.leeway) {
            return Err(ProviderError::Expired(exp));
        }
        if let Some(nbf) = seconds("nbf")
            && now.saturating_add(inner.leeway) < nbf
        {
            return Err(ProviderError::NotYetValid(nbf));
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let subject = text("sub")
            .or_else(|| text("client_id"))
            .or_else(|| text("azp"))
            .ok_or(ProviderError::Missing("sub"))?;
        let name = text(&inner.name_claim)
            .or_else(|| text("client_id"))
            .or_else(|| text("azp"))
            .unwrap_or(subject);
        let mut roles: Vec<Role> = inner
            .roles_claims
            .iter()
            .filter_map(|path| lookup(claims, path))
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(Role::parse)
            .collect();
        roles.sort();
        roles.dedup();
        Ok((
            Principal {
                subject: subject.to_string(),
                name: name.to_string(),
                roles,
                source: Source::Provider {
                    issuer: inner.issuer.clone(),
                },
            },
            exp,
        ))
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(k))
}

/// A value from a token, fit for an error message and a header: printable ASCII, at most 80
/// characters.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidToken => "not three base64url parts".into(),
        K::Base64(_) => "a part is not base64url".into(),
        K::Json(_) => "a part is not the JSON expected".into(),
        K::Utf8(_) => "a part is not UTF-8".into(),
        other => format!("{other:?}"),
    }
}

/// The algorithms a JWK may verify: the one it names, or for a key that names none, those of
/// its type. Never a symmetric one: `oct` keys are left out of the set altogether.
fn algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm as A;
    let asymmetric = |a: &Algorithm| !matches!(a, A::HS256 | A::HS384 | A::HS512);
    if let Some(named) = jwk.common.key_algorithm {
        return match named {
            KeyAlgorithm::UNKNOWN_ALGORITHM => vec![],
            other => Algorithm::try_from(other)
                .into_iter()
                .filter(asymmetric)
                .collect(),
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            vec![A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![A::ES256],
            EllipticCurve::P384 => vec![A::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![A::EdDSA],
        _ => vec![],
    }
}

/// The signing keys of a JWKS document, by `kid` (a key without one is named `""`). Keys for
/// encryption, symmetric keys and keys of unknown types are left out.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<Key>>, ProviderError> {
    // Key by key, so that one key of a type this crate does not know spoils nothing else.
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| ProviderError::Keys(format!("not JSON: {e}")))?;
    let list = doc["keys"]
        .as_array()
        .ok_or_else(|| ProviderError::Keys("no \"keys\" list".into()))?;
    let mut keys = HashMap::new();
    for raw in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithms = algorithms(&jwk);
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // The claims are checked by `claims()`, which names what was wrong.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        keys.insert(
            jwk.common.key_id.clone().unwrap_or_default(),
            Arc::new(Key { key, validation }),
        );
    }
    Ok(keys)
}

/// The `jwks_uri` of the provider at `issuer`: from its OpenID discovery document, else its
/// OAuth authorization server metadata (RFC 8414). The document must name the same issuer.
async fn discover(issuer: &str) -> Result<String, ProviderError> {
    let openid = format!("{issuer}/.well-known/openid-configuration");
    let doc = match get(&openid).await {
        Ok(body) => body,
        Err(first) => {
            // RFC 8414 §3: the well-known path goes between the host and the issuer's path.
            let oauth = url::Url::parse(issuer).ok().map(|u| {
                let path = u.path().trim_end_matches('/').to_string();
                let mut u = u;
                u.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
                u.to_string()
            });
            match oauth {
                Some(url) => get(&url).await.map_err(|_| first)?,
                None => return Err(first),
            }
        }
    };
    let doc: Value = serde_json::from_slice(&doc).map_err(|e| {
        ProviderError::Unreachable(format!("the discovery document is not JSON: {e}"))
    })?;
    let named = doc["issuer"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('/');
    if named != issuer {
        return Err(ProviderError::Unreachable(format!(
            "the discovery document names the issuer {}, expected {issuer}",
            printable(named)
        )));
    }
    doc["jwks_uri"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Unreachable("the discovery document has no jwks_uri".into()))
}

/// The body of a GET of `url` (2xx only, at most [`MAX_DOCUMENT_BYTES`]).
async fn get(url: &str) -> Result<Vec<u8>, ProviderError> {
    let client = crate::net::client().map_err(ProviderError::Unreachable)?;
    let fail = |e: reqwest::Error| {
        ProviderError::Unreachable(format!("{url}: {}", crate::net::describe(e)))
    };
    let mut response = client
        .get(url)
        .header("accept", "application/json")
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(fail)?;
    if !response.status().is_success() {
        return Err(ProviderError::Unreachable(format!(
            "{url}: HTTP {}",
            response.status()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(ProviderError::Unreachable(format!(
                "{url}: larger than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
