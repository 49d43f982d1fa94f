//! `mcp-coordinator serve`: start tracing on stderr, open the store, say hello on a terminal,
//! bind the oversight console (or, with `--http`, the one listener MCP over HTTP and the console
//! share), and serve MCP on stdio and/or HTTP until the client leaves or a signal arrives.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::Context;

use super::GlobalArgs;
use mcp_coordinator::audit::AuditLog;
use mcp_coordinator::auth::{AccessTokens, ProviderTokens};
use mcp_coordinator::config::Settings;
use mcp_coordinator::console::{self, Console};
use mcp_coordinator::fleet::Transports;
use mcp_coordinator::overseer::{OverseerService, unprotected_warning};
use mcp_coordinator::server::{self, Coordinator};

pub const LONG_ABOUT: &str = "\
Serve MCP. Without --http, on stdin/stdout: this is what an MCP client runs, and the default when \
no command is given. It answers clients that open with `initialize` (2024-11-05 to 2025-11-25) \
and clients that open with `server/discover` (2026-07-28). It exits with status 0 when the client \
closes stdin, or on SIGINT/SIGTERM. Logs go to stderr only.

With --http ADDR, MCP streamable HTTP at http://ADDR/mcp instead (both protocol eras: sessions \
for initialize-era clients, stateless requests for 2026-07-28), with the oversight console and \
/metrics on the same listener; add --stdio to serve stdin/stdout as well. Every request to /mcp \
needs `Authorization: Bearer TOKEN`: a token of the identity provider in [auth] issuer, or one \
this coordinator issued (`mcp-coordinator token issue`). A 401 names the OAuth metadata \
document (/.well-known/oauth-protected-resource). An address other than loopback needs \
--tls-cert and --tls-key, or [http] behind_proxy = true when a TLS-terminating proxy is in front.";

pub const AFTER_HELP: &str = "\
Examples:
  mcp-coordinator serve                                  stdio, as an MCP client starts it
  mcp-coordinator token issue --role admin --name me     a token for the next command
  mcp-coordinator serve --http 127.0.0.1:8760            MCP at http://127.0.0.1:8760/mcp
  mcp-coordinator serve --http 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
Connect a client over HTTP (Claude Code):
  claude mcp add --transport http coordinator http://127.0.0.1:8760/mcp \\
    --header \"Authorization: Bearer $TOKEN\"";

/// `serve`'s own options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Serve MCP over streamable HTTP at http://ADDR/mcp (HOST:PORT), with the console and
    /// /metrics on the same listener, instead of stdio [default: [http] listen, if set, beside
    /// stdio]
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// With --http: serve stdin/stdout as well
    #[arg(long, requires = "http")]
    pub stdio: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key) [default: [http] tls_cert]
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert [default: [http] tls_key]
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // Before the runtime's threads start allocating.
    mcp_coordinator::allocator::tune_allocator();
    let (mut settings, audit) = super::open(global)?;
    if let Some(toolsets) = &global.toolsets {
        settings.config.tools.toolsets = toolsets.clone();
    }
    init_tracing(&log_level(global, &settings), global.log_format)?;
    let tool_calls = std::sync::Arc::new(console::metrics::ToolCalls::default());
    if let Some(cert) = &args.tls_cert {
        settings.config.http.tls_cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        settings.config.http.tls_key = Some(key.clone());
    }
    let http_listen = args.http.clone().or(settings.config.http.listen.clone());
    let serve_stdio = args.http.is_none() || args.stdio;
    let listening = match &http_listen {
        None => bind_console(&mut settings, &audit, &tool_calls),
        Some(listen) => match bind_http(&mut settings, &audit, &tool_calls, listen) {
            Ok(http) => http,
            // Asked for on the command line: not serving it is a failed start.
            Err(e) if args.http.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "not serving MCP over HTTP");
                bind_console(&mut settings, &audit, &tool_calls)
            }
        },
    };
    if serve_stdio && std::io::stdin().is_terminal() {
        banner(&settings);
    }
    let serving = match (&listening, serve_stdio) {
        (Listening::Http { .. }, true) => "serving MCP on stdio and over HTTP",
        (Listening::Http { .. }, false) => "serving MCP over HTTP",
        _ => "serving MCP on stdio",
    };
    // Orphans of child servers come to us rather than to init, so that they can be killed
    // and reaped (src/instance/child/reaper.rs); before any child is started.
    match mcp_coordinator::instance::reaper::become_subreaper() {
        Ok(()) => {}
        // Not Linux: a known gap (README, Platforms), not worth a warning at every start.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(error = %e, "no child subreaper: each child's process group is killed, not what leaves it");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper: processes that child servers leave behind after setsid and a double fork may outlive them");
        }
    }
    let coordinator_settings = settings.clone();
    let transports = Transports {
        stdio: serve_stdio,
        http: match &listening {
            Listening::Http { front, .. } => Some(front.resource().to_string()),
            _ => None,
        },
        console: match &listening {
            Listening::Nothing | Listening::Http { console: None, .. } => None,
            _ => settings.console_url.clone(),
        },
    };
    let unprotected = audit.clone();
    let coordinator = Coordinator::new(audit, settings, tool_calls)?;
    // The others on this database see this one from now until it exits (cleanly: then it
    // says so; killed: its heartbeat ages).
    let fleet = coordinator.fleet().clone();
    if let Err(e) = fleet.join(&transports) {
        tracing::warn!(error = %e, "cannot register in the fleet; other coordinators will not list this one until a heartbeat gets through");
    }
    // Said once it is registered: whoever waits for this line finds it in the fleet.
    tracing::info!(
        db = %coordinator_settings.db.display(),
        data_dir = %coordinator_settings.data_dir.display(),
        console = %coordinator_settings.console_url.as_deref().unwrap_or("off"),
        http = %match &listening {
            Listening::Http { front, .. } => front.resource().to_string(),
            _ => "off".to_string(),
        },
        stdio = serve_stdio,
        "{serving}"
    );
    warn_if_unprotected(&coordinator_settings, &unprotected);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The relay reads and writes the descriptors itself (threads, no blocking pool).
    let input = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take over stdin")?;
    let output = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot take over stdout")?;
    let console_stop = tokio_util::sync::CancellationToken::new();
    match listening {
        Listening::Http {
            front,
            bound,
            console,
        } => {
            let stop = console_stop.clone();
            let mcp = server::http::mcp_service(
                coordinator.clone(),
                mcp_options(&coordinator_settings, &bound, stop.child_token()),
            );
            if let Some(provider) = front.auth().provider().cloned() {
                runtime.spawn(check_provider(provider));
            }
            let mut router = front.router(mcp);
            if let Some(console) = console {
                router = router.merge(console.router());
            }
            runtime.spawn(async move {
                if let Err(e) = bound.serve(router, stop.cancelled_owned()).await {
                    tracing::warn!(error = %e, "the HTTP listener stopped");
                }
            });
        }
        Listening::Console(console, bound) => {
            let stop = console_stop.clone().cancelled_owned();
            runtime.spawn(async move {
                if let Err(e) = console.serve(bound, stop).await {
                    tracing::warn!(error = %e, "the console stopped");
                }
            });
        }
        Listening::Nothing => {}
    }
    let stdio = serve_stdio.then_some((input, output));
    let stopped = runtime.block_on(server::run(coordinator, stdio, shutdown_signal()));
    // After the heartbeats ended (server::run stops its workers), off the async threads.
    if let Err(e) = fleet.leave() {
        tracing::warn!(error = %e, "cannot mark this coordinator stopped in the fleet; it shows as gone once its heartbeat is old");
    }
    let stopped = stopped?;
    console_stop.cancel();
    tracing::info!(?stopped, "stopped");
    // Do not wait for a blocked stdin read: the session is over.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

/// What this process listens on besides stdio.
enum Listening {
    /// The console alone, on a port of its own.
    Console(Console, console::Bound),
    /// MCP over HTTP, with the console on the same listener (none for `:memory:`).
    Http {
        front: mcp_coordinator::http::Front,
        bound: console::Bound,
        console: Option<Console>,
    },
    Nothing,
}

/// The console this coordinator serves beside MCP, bound now so that pending approvals can
/// link to it; nothing when `[console] enabled = false` or the address cannot be had (said on
/// stderr: serving MCP goes on without it).
fn bind_console(
    settings: &mut Settings,
    audit: &AuditLog,
    tool_calls: &std::sync::Arc<console::metrics::ToolCalls>,
) -> Listening {
    let config = &settings.config.console;
    if !config.enabled {
        return Listening::Nothing;
    }
    // Logging in needs an overseer, which only `overseer init` on a database file sets: a
    // console of a `:memory:` database could show nothing to anyone.
    if settings.cli_prefix().is_none() {
        tracing::debug!("no oversight console for an in-memory database (no overseer can be set)");
        return Listening::Nothing;
    }
    let listen = config
        .listen
        .clone()
        .unwrap_or_else(|| console::DEFAULT_SERVE_LISTEN.to_string());
    match console::bind(config, &listen) {
        Ok(bound) => {
            let console = Console::new(audit.clone(), settings, &bound, Some(tool_calls.clone()));
            settings.console_url = Some(console.url());
            Listening::Console(console, bound)
        }
        Err(e) => {
            tracing::warn!(error = %e, "not serving the oversight console");
            Listening::Nothing
        }
    }
}

/// The one listener of MCP over HTTP, with the console on it: `[http]`'s address, TLS and
/// proxy settings take the place of `[console]`'s.
fn bind_http(
    settings: &mut Settings,
    audit: &AuditLog,
    tool_calls: &std::sync::Arc<console::metrics::ToolCalls>,
    listen: &str,
) -> anyhow::Result<Listening> {
    let http = settings.config.http.clone();
    let console_config = &mut settings.config.console;
    console_config.listen = Some(listen.to_string());
    console_config.tls_cert = http.tls_cert.clone();
    console_config.tls_key = http.tls_key.clone();
    console_config.behind_proxy = http.behind_proxy;
    if http.public_url.is_some() {
        console_config.public_url = http.public_url.clone();
    }
    let bound = console::bind(console_config, listen)
        .with_context(|| format!("cannot serve MCP over HTTP at {listen}"))?;
    let base = http.public_url.clone().unwrap_or_else(|| bound.url());
    let tokens = AccessTokens::open(audit.clone(), &settings.data_dir)?;
    let auth_config = &settings.config.auth;
    let provider = auth_config.issuer.as_deref().map(|issuer| {
        ProviderTokens::new(
            auth_config,
            issuer,
            &mcp_coordinator::http::resource_url(&base),
        )
    });
    let auth = mcp_coordinator::http::Authenticator::new(tokens, provider);
    let front = mcp_coordinator::http::Front::with_config(auth, &base, &http)
        .map_err(anyhow::Error::msg)?;
    let console = (settings.config.console.enabled && settings.cli_prefix().is_some()).then(|| {
        let console = Console::new(audit.clone(), settings, &bound, Some(tool_calls.clone()));
        settings.console_url = Some(console.url());
        console
    });
    Ok(Listening::Http {
        front,
        bound,
        console,
    })
}

/// Reads the identity provider's keys once at start, to say on stderr whether it can be
/// reached; not reaching it stops nothing (the keys are fetched again at the next token).
async fn check_provider(provider: ProviderTokens) {
    match provider.refresh().await {
        Ok(keys) => tracing::info!(
            issuer = %provider.issuer(),
            audience = %provider.audience(),
            keys,
            "accepting the identity provider's tokens"
        ),
        Err(e) => tracing::warn!(
            issuer = %provider.issuer(),
            error = %e,
            "cannot reach the identity provider yet: its tokens are refused until its keys can be \
             fetched (tried again at the next token)"
        ),
    }
}

/// How `/mcp` is served: the names it answers to, browser origins, sizes and session idling.
fn mcp_options(
    settings: &Settings,
    bound: &console::Bound,
    stop: tokio_util::sync::CancellationToken,
) -> server::http::McpHttpOptions {
    let http = &settings.config.http;
    let addr = bound.local_addr();
    // Loopback: only loopback names (DNS rebinding). Elsewhere the bearer token is what keeps
    // others out, and the names clients use are not known here: no Host check, unless a
    // public URL names the one to expect.
    let mut hosts = Vec::new();
    if addr.ip().is_loopback() {
        hosts.extend(["localhost".to_string(), "127.0.0.1".into(), "::1".into()]);
    }
    if let Some(host) = http
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(str::to_string))
    {
        hosts.push(host);
        if !addr.ip().is_loopback() {
            hosts.push(addr.ip().to_string());
        }
    }
    server::http::McpHttpOptions {
        allowed_hosts: hosts,
        // Every port explicit (rmcp reads an entry without one as any port); the front has
        // already refused an origin that does not parse.
        allowed_origins: mcp_coordinator::http::origin::Origins::parse(&http.allowed_origins)
            .map(|o| o.for_rmcp())
            .unwrap_or_default(),
        max_request_bytes: http.max_request_bytes,
        max_sessions: http.max_sessions,
        max_sessions_per_principal: http.max_sessions_per_principal,
        session_idle: http.session_idle(),
        stop,
    }
}

/// The stderr log filter: `--log-level`, else the config's, else the default.
pub(super) fn log_level(global: &GlobalArgs, settings: &Settings) -> String {
    global
        .log_level
        .clone()
        .or_else(|| settings.config.log_level.clone())
        .unwrap_or_else(|| mcp_coordinator::logging::DEFAULT_FILTER.into())
}

/// Says on stderr, at start, when no overseer guards approving at the CLI. `:memory:` is left
/// out: no other process can reach it.
fn warn_if_unprotected(settings: &Settings, audit: &AuditLog) {
    let Some(cli) = settings.cli_prefix() else {
        return;
    };
    match OverseerService::new(audit.clone()).current() {
        Ok(None) => tracing::warn!("{}", unprotected_warning(&cli)),
        Ok(Some(o)) => {
            tracing::info!(overseer = %o.name, "approving at the CLI needs the overseer's passphrase")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the overseer credential"),
    }
}

/// Logs go to stderr, never stdout (stdout carries JSON-RPC only), masked so that no level
/// shows a secret. Colors only on a terminal.
pub(super) fn init_tracing(
    level: &str,
    format: mcp_coordinator::logging::LogFormat,
) -> anyhow::Result<()> {
    mcp_coordinator::logging::init(level, format, std::io::stderr().is_terminal())
        .map_err(anyhow::Error::msg)
}

/// Started by hand: say what this is and how to use it, on stderr.
fn banner(settings: &Settings) {
    let versions = server::supported_versions().join(", ");
    eprintln!(
        "mcp-coordinator {version}: an MCP server speaking JSON-RPC on stdin/stdout.\n\
         \n\
         It is meant to be started by an MCP client, not typed at. Data:\n\
         \x20 database:   {db}\n\
         \x20 data dir:   {data} (audit signing key)\n\
         \x20 config:     {config}\n\
         \x20 console:    {console} (the overseer decides approvals there)\n\
         Protocol versions: {versions}.\n\
         \n\
         Connect a client: add {{\"command\": \"mcp-coordinator\"}} to its MCP server config.\n\
         Try it in the Inspector: npx @modelcontextprotocol/inspector mcp-coordinator\n\
         Press Ctrl-D or Ctrl-C to stop. Serving now.",
        version = env!("CARGO_PKG_VERSION"),
        db = settings.db.display(),
        data = settings.data_dir.display(),
        config = settings
            .config_path
            .as_ref()
            .map_or("none (defaults)".to_string(), |p| p.display().to_string()),
        console = settings
            .console_url
            .as_deref()
            .unwrap_or("off ([console] enabled = false, --db :memory:, or its address was taken)"),
    );
}

pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        () = term => tracing::info!("terminated"),
    }
}
