//! Bearer tokens for a worker over HTTP: a fixed token (a local access token or API key) from
//! the environment, or OAuth 2.1 client-credentials grants (RFC 6749 §4.4) for the coordinator's
//! `/mcp` resource (RFC 8707), renewed before they expire; and the HTTP client under rmcp's
//! streamable HTTP transport, which puts the current token on every request and, on a `401`,
//! renews once and sends the same request again.
//!
//! Why not rmcp's `auth` feature: its `AuthorizationManager` does the client-credentials grant
//! once, and later "refreshes" only with a refresh token, which a client-credentials answer
//! does not carry (RFC 6749 §4.4.3); past expiry it asks for a new authorization. A worker needs
//! a new grant instead, at a point of the token's lifetime (80%) rather than rmcp's fixed 30 s
//! before expiry, which a short-lived token is always inside. rmcp's `StreamableHttpClient`
//! trait is the seam it offers for this, so the transport (sessions, SSE, retries) stays rmcp's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::common::client_side_sse::BoxedSseResponse;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use serde::Deserialize;

/// A token is renewed once this share of its lifetime has passed.
const RENEW_AT: f64 = 0.8;
/// How long a request to the token endpoint may take.
const GRANT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the bearer comes from.
pub enum Credentials {
    /// One token for the worker's life: a local access token or an API key.
    Fixed(String),
    /// The client-credentials grant at `token_url`, for `resource`.
    Client {
        token_url: String,
        client_id: String,
        client_secret: String,
        resource: String,
        scope: Option<String>,
    },
}

/// The token endpoint's answer (RFC 6749 §5.1) or error (§5.2).
#[derive(Deserialize)]
struct Grant {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The token in use and when to replace it.
struct Current {
    token: Arc<str>,
    renew_at: Option<Instant>,
}

/// Hands out the current bearer, getting a new one when it is due.
pub struct Tokens {
    http: reqwest::Client,
    credentials: Credentials,
    /// An async lock: requests that find the token due wait for one grant, not one each.
    current: tokio::sync::Mutex<Option<Current>>,
    grants: AtomicU64,
}

impl Tokens {
    pub fn new(http: reqwest::Client, credentials: Credentials) -> Self {
        Tokens {
            http,
            credentials,
            current: tokio::sync::Mutex::new(None),
            grants: AtomicU64::new(0),
        }
    }

    /// The bearer to send now.
    pub async fn bearer(&self) -> anyhow::Result<Arc<str>> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && c.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *current = Some(fresh);
        Ok(token)
    }

    /// After the coordinator refused `rejected` (a `401`): a new token to try once, unless
    /// another request has already replaced it (then that one), or `None` when the token is
    /// fixed and there is nothing else to try.
    async fn renew_after(&self, rejected: &str) -> anyhow::Result<Option<Arc<str>>> {
        if matches!(self.credentials, Credentials::Fixed(_)) {
            return Ok(None);
        }
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && &*c.token != rejected
        {
            return Ok(Some(c.token.clone()));
        }
        tracing::info!("the coordinator refused the access token; getting a new one");
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *current = Some(fresh);
        Ok(Some(token))
    }

    async fn fetch(&self) -> anyhow::Result<Current> {
        match &self.credentials {
            Credentials::Fixed(token) => Ok(Current {
                token: token.as_str().into(),
                renew_at: None,
            }),
            Credentials::Client {
                token_url,
                client_id,
                client_secret,
                resource,
                scope,
            } => {
                let asked = Instant::now();
                let form = {
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "client_credentials");
                    form.append_pair("resource", resource);
                    if let Some(scope) = scope {
                        form.append_pair("scope", scope);
                    }
                    form.finish()
                };
                // client_secret_basic: the method every provider supports (RFC 6749 §2.3.1).
                let response = self
                    .http
                    .post(token_url)
                    .basic_auth(client_id, Some(client_secret))
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .header(http::header::ACCEPT, "application/json")
                    .body(form)
                    .timeout(GRANT_TIMEOUT)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the token endpoint {token_url}"))?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .with_context(|| format!("reading the answer of {token_url}"))?;
                let grant: Grant = serde_json::from_slice(&body).map_err(|_| {
                    anyhow!("the token endpoint {token_url} answered {status} without a JSON body")
                })?;
                let Some(token) = grant.access_token.filter(|_| status.is_success()) else {
                    bail!(
                        "the token endpoint {token_url} refused client {client_id:?} ({status}): \
                         {} {}",
                        grant.error.as_deref().unwrap_or("no error code"),
                        grant.error_description.as_deref().unwrap_or("")
                    );
                };
                let n = self.grants.fetch_add(1, Ordering::SeqCst) + 1;
                // Renew at 80% of the lifetime, counted from when it was asked for.
                let renew_at = grant
                    .expires_in
                    .map(|s| asked + Duration::from_secs(s).mul_f64(RENEW_AT));
                tracing::info!(
                    grant = n,
                    expires_in_s = grant.expires_in,
                    "got an access token from {token_url}"
                );
                Ok(Current {
                    token: token.into(),
                    renew_at,
                })
            }
        }
    }
}

/// Reads the OpenID discovery document of `issuer` for its token endpoint.
pub async fn token_endpoint(http: &reqwest::Client, issuer: &str) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Discovery {
        token_endpoint: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = http
        .get(&url)
        .timeout(GRANT_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}: is --issuer the provider's issuer URL?");
    }
    let body = response.bytes().await?;
    let d: Discovery = serde_json::from_slice(&body)
        .with_context(|| format!("{url} is not a discovery document with a token_endpoint"))?;
    Ok(d.token_endpoint)
}

/// rmcp's reqwest client with the bearer of [`Tokens`] on every request.
#[derive(Clone)]
pub struct BearerClient {
    http: reqwest::Client,
    tokens: Arc<Tokens>,
}

type Failure = StreamableHttpError<reqwest::Error>;

fn token_failure(e: anyhow::Error) -> Failure {
    StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!("{e:#}")))
}

impl BearerClient {
    pub fn new(http: reqwest::Client, tokens: Arc<Tokens>) -> Self {
        BearerClient { http, tokens }
    }

    /// Runs `request` with the current token; on a `401`, once more with a new one.
    async fn with_token<T, F, Fut>(&self, request: F) -> Result<T, Failure>
    where
        F: Fn(reqwest::Client, String) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let token = self.tokens.bearer().await.map_err(token_failure)?;
        match request(self.http.clone(), token.to_string()).await {
            Err(StreamableHttpError::AuthRequired(challenge)) => {
                match self.tokens.renew_after(&token).await {
                    Ok(Some(fresh)) => request(self.http.clone(), fresh.to_string()).await,
                    Ok(None) => Err(StreamableHttpError::AuthRequired(challenge)),
                    Err(e) => Err(token_failure(e)),
                }
            }
            other => other,
        }
    }
}

// The transport's own `auth_header` is unset; every method takes the token from `Tokens`.
impl StreamableHttpClient for BearerClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        self.with_token(|http, token| {
            let (uri, message) = (uri.clone(), message.clone());
            let (session_id, headers) = (session_id.clone(), custom_headers.clone());
            async move {
                http.post_message(uri, message, session_id, Some(token), headers)
                    .await
            }
        })
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        self.with_token(|http, token| {
            let (uri, message) = (uri.clone(), message.clone());
            let (session_id, headers) = (session_id.clone(), custom_headers.clone());
            async move {
                http.post_message_with_max_sse_event_size(
                    uri,
                    message,
                    session_id,
                    Some(token),
                    headers,
                    max_sse_event_size,
                )
                .await
            }
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Failure> {
        self.with_token(|http, token| {
            let (uri, session_id, headers) =
                (uri.clone(), session_id.clone(), custom_headers.clone());
            async move {
                http.delete_session(uri, session_id, Some(token), headers)
                    .await
            }
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxedSseResponse, Failure> {
        self.with_token(|http, token| {
            let (uri, session_id) = (uri.clone(), session_id.clone());
            let (last_event_id, headers) = (last_event_id.clone(), custom_headers.clone());
            async move {
                http.get_stream(uri, session_id, last_event_id, Some(token), headers)
                    .await
            }
        })
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxedSseResponse, Failure> {
        self.with_token(|http, token| {
            let (uri, session_id) = (uri.clone(), session_id.clone());
            let (last_event_id, headers) = (last_event_id.clone(), custom_headers.clone());
            async move {
                http.get_stream_with_max_sse_event_size(
                    uri,
                    session_id,
                    last_event_id,
                    Some(token),
                    headers,
                    max_sse_event_size,
                )
                .await
            }
        })
        .await
    }
}
