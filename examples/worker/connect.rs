//! How the worker reaches its coordinator: a child `mcp-coordinator serve` on stdio (the
//! default), or a running coordinator's `/mcp` over streamable HTTP (`--url`) with a bearer
//! token from the environment or from client-credentials grants.

use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, bail};
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};

use crate::Args;
use crate::auth::{BearerClient, Credentials, Tokens, token_endpoint};

pub type Connection = RunningService<RoleClient, ClientConfig>;

fn client_info(args: &Args) -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(format!("worker-{}", args.name), env!("CARGO_PKG_VERSION")),
    )
}

/// Connects the way the arguments say.
pub async fn connect(args: &Args) -> anyhow::Result<Connection> {
    match &args.url {
        Some(url) => connect_http(args, url).await,
        None => connect_stdio(args).await,
    }
}

/// Starts the coordinator and connects to it.
async fn connect_stdio(args: &Args) -> anyhow::Result<Connection> {
    let mut cmd = tokio::process::Command::new(&args.coordinator);
    if let Some(dir) = &args.data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    if let Some(db) = &args.db {
        cmd.arg("--db").arg(db);
    }
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    // A worker needs the agent and task tools only: its session lists those (a dozen tools)
    // instead of everything the coordinator offers.
    cmd.args([
        "--log-level",
        &args.coordinator_log_level,
        "--toolsets",
        "agents",
        "serve",
    ]);
    // Its own process group: a Ctrl-C in the terminal reaches only the worker, which still needs
    // the coordinator to hand its tasks back and deregister. The coordinator exits when the
    // worker closes its stdin (or dies).
    cmd.process_group(0);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", args.coordinator.display()))?;
    client_info(args).serve(transport).await.with_context(|| {
        format!(
            "cannot open an MCP session with {}",
            args.coordinator.display()
        )
    })
}

/// Reads an environment variable that holds a secret, naming the flag that chose it.
fn secret_from_env(var: &str, flag: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => bail!("{var} is empty ({flag} names it)"),
        Err(_) => bail!(
            "{var} is not set ({flag} names it): export it, or let the secret store set it with \
             `mcp-coordinator exec --secret NAME={var} -- worker ...`"
        ),
    }
}

/// The bearer's source for `--url`.
async fn credentials(
    args: &Args,
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Credentials> {
    let Some(client_id) = &args.client_id else {
        return Ok(Credentials::Fixed(secret_from_env(
            &args.token_env,
            "--token-env",
        )?));
    };
    let token_url = match (&args.token_url, &args.issuer) {
        (Some(t), _) => t.clone(),
        (None, Some(issuer)) => token_endpoint(http, issuer).await?,
        (None, None) => bail!(
            "--client-id needs the provider: --token-url (its token endpoint) or --issuer (its \
             issuer URL, for OpenID discovery)"
        ),
    };
    Ok(Credentials::Client {
        token_url,
        client_id: client_id.clone(),
        client_secret: secret_from_env(&args.client_secret_env, "--client-secret-env")?,
        resource: url.to_string(),
        scope: args.scope.clone(),
    })
}

/// Connects to a running coordinator's `/mcp` over streamable HTTP.
async fn connect_http(args: &Args, url: &str) -> anyhow::Result<Connection> {
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("--url {url:?}: expected an http:// or https:// URL of the coordinator's /mcp");
    }
    let http = reqwest::Client::new();
    let tokens = Arc::new(Tokens::new(
        http.clone(),
        credentials(args, &http, url).await?,
    ));
    // The first token now, so a refused client or an unreachable provider is named as such
    // rather than as a failed MCP handshake.
    tokens.bearer().await?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    // Claims long-poll: with --concurrency N there are N claims or reports in flight, plus
    // heartbeats.
    config.max_concurrent_requests = usize::from(args.concurrency) + 4;
    let transport =
        StreamableHttpClientTransport::with_client(BearerClient::new(http, tokens), config);
    client_info(args)
        .serve(transport)
        .await
        .with_context(|| format!("cannot open an MCP session with {url}"))
}
