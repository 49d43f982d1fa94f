//! The `http` section: `tools/call` (`coordinator_status`) over streamable HTTP against
//! `serve --http` on loopback, with a local access token and with an identity provider's JWT
//! (the bench serves the provider's discovery document and JWKS itself and signs EdDSA tokens),
//! side by side with stdio; the same rmcp client drives every transport, one call at a time and
//! with 16 and 64 in flight. Then the cost of checking one bearer in-process: a local token
//! (its revocation lookup) and a provider JWT against a cached JWKS.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt};

use crate::{Counts, client_config as client_info, coordinator_command, percentile, us, verdict};

/// `serve --http 127.0.0.1:0`; killed on drop.
struct HttpChild {
    child: Child,
    mcp: String,
}

impl HttpChild {
    fn start(data_dir: &Path, config: Option<&Path>) -> HttpChild {
        // As `coordinator_command`, but with the CLI's info line that names the URL.
        let mut cmd = Command::new(crate::BIN);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MCP_COORDINATOR_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--data-dir").arg(data_dir);
        cmd.env("MCP_COORDINATOR_TOOLSETS", "all");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let mut child = cmd
            .args(["--log-level", "error,mcp_coordinator::cli=info"])
            .args(["serve", "--http", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve --http");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("http="))
                    .filter(|u| u.starts_with("http"))
                {
                    let _ = tx.send(url.to_string());
                } else {
                    eprintln!("[serve --http] {line}");
                }
            }
        });
        let mcp = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve --http names its URL");
        HttpChild { child, mcp }
    }
}

impl Drop for HttpChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provider for the bench: discovery and JWKS served on loopback, EdDSA tokens signed here.
struct Provider {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

impl Provider {
    async fn start() -> Provider {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let der = signing.to_pkcs8_der().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "bench-1",
                                     "alg": "EdDSA", "use": "sig"});
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let issuer = format!("{origin}/realms/bench");
        let discovery = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "token_endpoint": format!("{issuer}/token"),
            "authorization_endpoint": format!("{issuer}/auth"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        });
        let jwks = serde_json::json!({"keys": [jwk]});
        let app = axum::Router::new()
            .route(
                "/realms/bench/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/realms/bench/jwks",
                axum::routing::get(move || async move { axum::Json(jwks) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Provider { issuer, key, jwk }
    }

    /// An admin's token for `audience`, valid for an hour.
    fn token(&self, audience: &str) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "iss": self.issuer, "aud": audience, "sub": "bench-client", "azp": "bench",
            "client_id": "bench", "iat": now, "nbf": now, "exp": now + 3600,
            "jti": uuid::Uuid::new_v4().to_string(),
            "realm_access": {"roles": ["admin"]},
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("bench-1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// Latencies of one run of calls.
struct Run {
    calls: u64,
    wall: Duration,
    sorted: Vec<Duration>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }
    fn p50(&self) -> Duration {
        percentile(&self.sorted, 50.0)
    }
    fn p99(&self) -> Duration {
        percentile(&self.sorted, 99.0)
    }
}

async fn status(peer: &Peer<RoleClient>) {
    let result = peer
        .call_tool(CallToolRequestParams::new("coordinator_status"))
        .await
        .expect("coordinator_status");
    assert_ne!(result.is_error, Some(true), "{result:?}");
}

/// `total` calls with `in_flight` outstanding at a time.
async fn calls(peer: &Peer<RoleClient>, total: u64, in_flight: u64) -> Run {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (peer, next) = (peer.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                status(&peer).await;
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut sorted = Vec::with_capacity(total as usize);
    while let Some(l) = workers.join_next().await {
        sorted.extend(l.unwrap());
    }
    let wall = started.elapsed();
    sorted.sort();
    Run {
        calls: total,
        wall,
        sorted,
    }
}

/// The three runs of one transport: 1, 16 and 64 in flight.
async fn measure(peer: &Peer<RoleClient>, counts: &Counts) -> [Run; 3] {
    calls(peer, counts.status_warmup, 4).await;
    [
        calls(peer, counts.status_sequential, 1).await,
        calls(peer, counts.status_throughput, 16).await,
        calls(peer, counts.status_throughput, 64).await,
    ]
}

fn report(label: &str, runs: &[Run; 3], stdio: Option<&[Run; 3]>) {
    let [one, sixteen, sixty_four] = runs;
    let target = if stdio.is_some() {
        format!(
            "   [target p50 < 500 µs: {}]",
            verdict(one.p50() < Duration::from_micros(500))
        )
    } else {
        String::new()
    };
    println!(
        "{label:<22} 1 in flight: p50 {:.0} µs, p99 {:.0} µs over {} calls{target}",
        us(one.p50()),
        us(one.p99()),
        one.calls,
    );
    for (n, run) in [(16, sixteen), (64, sixty_four)] {
        let share = stdio.map(|s| {
            let base = if n == 16 { &s[1] } else { &s[2] };
            run.per_second() / base.per_second()
        });
        let versus = match (share, n) {
            (Some(share), 16) => format!(
                "; {:.0}% of stdio   [target >= 70% of stdio at 16 in flight: {}]",
                share * 100.0,
                verdict(share >= 0.7)
            ),
            (Some(share), _) => format!("; {:.0}% of stdio", share * 100.0),
            (None, _) => String::new(),
        };
        println!(
            "{:<22} {n} in flight: {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs over {} calls{versus}",
            "",
            run.per_second(),
            us(run.p50()),
            us(run.p99()),
            run.calls,
        );
    }
}

type Client = rmcp::service::RunningService<RoleClient, rmcp::model::ClientConfig>;

async fn connect_http(
    url: &str,
    bearer: &str,
) -> Result<Client, rmcp::service::ClientInitializeError> {
    connect_http_with(url, bearer, ClientLifecycleMode::Initialize).await
}

/// An HTTP client of the 2026-07-28 era: no session, each request stands alone.
async fn connect_http_stateless(
    url: &str,
    bearer: &str,
) -> Result<Client, rmcp::service::ClientInitializeError> {
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
    };
    connect_http_with(url, bearer, lifecycle).await
}

async fn connect_http_with(
    url: &str,
    bearer: &str,
    lifecycle: ClientLifecycleMode,
) -> Result<Client, rmcp::service::ClientInitializeError> {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(bearer.to_string());
    // The default is 16 POSTs at a time; the 64-in-flight run needs room for all of them.
    config.max_concurrent_requests = 64;
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    client_info()
        .serve_with_lifecycle(transport, lifecycle)
        .await
}

fn issue_local_token(data_dir: &Path) -> String {
    let out = coordinator_command(data_dir)
        .args(["token", "issue", "--role", "admin", "--name", "bench"])
        .stdin(Stdio::null())
        .output()
        .expect("token issue");
    assert!(out.status.success(), "token issue: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Mean time of `f` over `n` runs.
fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n
}

pub fn bench_http(counts: &Counts, dir: &Path) {
    println!(
        "\n== http: tools/call coordinator_status over streamable HTTP (loopback) vs stdio, \
         one rmcp client for each =="
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let local = issue_local_token(&data_dir);
    runtime.block_on(async {
        let provider = Provider::start().await;
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            // The per-principal rate limit (600 a minute by default) would refuse the bench's
            // thousands of calls a second: this measures the path, not the limiter's refusals.
            format!(
                "[auth]\nissuer = \"{}\"\n\n[http]\nrequests_per_minute = 1000000\n",
                provider.issuer
            ),
        )
        .unwrap();
        let server = HttpChild::start(&data_dir, Some(&config));

        let mut stdio_cmd = tokio::process::Command::from(coordinator_command(&data_dir));
        stdio_cmd
            .env("MCP_COORDINATOR_TOOLSETS", "all")
            .arg("--config")
            .arg(&config)
            .arg("serve");
        let stdio = client_info()
            .serve_with_lifecycle(
                TokioChildProcess::new(stdio_cmd).unwrap(),
                ClientLifecycleMode::Initialize,
            )
            .await
            .expect("connect over stdio");
        let stdio_runs = measure(stdio.peer(), counts).await;
        report("stdio", &stdio_runs, None);

        let http = connect_http(&server.mcp, &local)
            .await
            .expect("connect over HTTP");
        let local_runs = measure(http.peer(), counts).await;
        report("HTTP, local token", &local_runs, Some(&stdio_runs));
        let _ = http.cancel().await;
        match connect_http_stateless(&server.mcp, &local).await {
            Ok(http) => {
                let runs = measure(http.peer(), counts).await;
                report("HTTP, 2026-07-28, local", &runs, Some(&stdio_runs));
                let _ = http.cancel().await;
            }
            Err(e) => println!("HTTP, 2026-07-28 era    refused by this build ({e})"),
        }

        let jwt = provider.token(&server.mcp);
        match connect_http(&server.mcp, &jwt).await {
            Ok(http) => {
                // The first call fetches the JWKS; the runs after it use the cached keys.
                status(http.peer()).await;
                let jwt_runs = measure(http.peer(), counts).await;
                report("HTTP, provider JWT", &jwt_runs, Some(&stdio_runs));
                let _ = http.cancel().await;
            }
            Err(e) => println!("HTTP, provider JWT     refused by this build ({e})"),
        }
        let _ = stdio.cancel().await;
        let audience = server.mcp.clone();
        drop(server);

        bearer_checks(&data_dir, &local, &provider, &jwt, &audience).await;
    });
}

/// The in-process cost of checking one bearer: what the HTTP path adds per request.
async fn bearer_checks(
    data_dir: &Path,
    local: &str,
    provider: &Provider,
    jwt: &str,
    audience: &str,
) {
    use mcp_coordinator::auth::{AccessTokens, AuthConfig, ProviderTokens};
    let audit = crate::audit_log_alone(&data_dir.join("coordinator.db"));
    let tokens = AccessTokens::open(audit, data_dir).expect("access tokens");
    tokens.check(local).expect("the local token checks");
    let n = 2_000;
    let local_check = per_call(n, || {
        tokens.check(local).unwrap();
    });
    println!(
        "bearer check, local token (signature + revocation lookup): {:.1} µs per request",
        us(local_check)
    );

    // The provider's tokens as `serve --http` checks them, against a cached JWKS: a token's
    // first request verifies its signature and claims; later requests with the same token find
    // it in the checked-token cache until it expires.
    let jwks = serde_json::json!({"keys": [provider.jwk]}).to_string();
    let checker =
        ProviderTokens::from_jwks(&AuthConfig::default(), &provider.issuer, audience, &jwks)
            .expect("the bench's JWKS");
    let fresh: Vec<String> = (0..n).map(|_| provider.token(audience)).collect();
    let mut tokens_left = fresh.iter();
    let first = per_call(n, || {
        checker
            .check_with_known_keys(tokens_left.next().unwrap())
            .unwrap();
    });
    checker.check_with_known_keys(jwt).unwrap();
    let again = per_call(n, || {
        checker.check_with_known_keys(jwt).unwrap();
    });
    println!(
        "bearer check, provider JWT (EdDSA, cached JWKS): {:.1} µs per request with a token \
         seen before   [target < 20 µs: {}]",
        us(again),
        verdict(again < Duration::from_micros(20))
    );
    println!(
        "   (info) a token's first request (signature and claims verified): {:.1} µs",
        us(first)
    );
}
