//! The `http` section: `tools/call` (`coordinator_status`) over streamable HTTP against
//! `serve --http` on loopback, with a local access token and with an identity provider's JWT
//! (the bench serves the provider's discovery document and JWKS itself and signs EdDSA tokens),
//! side by side with stdio, one call at a time and with 16 and 64 in flight. The targets are
//! read from the bench's lean clients, which write a request and read its answer with nothing
//! between (JSON-RPC lines on the pipes; a bare HTTP/1.1 POST per call on kept-alive
//! connections), so that the figures are the server's; each HTTP row takes turns with stdio
//! runs. rmcp's own client on each transport follows, for information. Each run also gives the
//! CPU time it cost the server and the client.
//! Then the cost of checking one bearer in-process: a local token (its signature, and the
//! revocations file's stat that says its remembered row holds) and a provider JWT against a
//! cached JWKS.

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

impl HttpChild {
    fn pid(&self) -> u32 {
        self.child.id()
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
    /// The server process's CPU time (user and system) over the run.
    server_cpu: Duration,
    /// This process's (the client's) CPU time over the run.
    client_cpu: Duration,
    /// The server's context switches over the run.
    server_switches: u64,
}

impl Run {
    /// Several runs as one: their calls over their summed time.
    fn merged(runs: Vec<Run>) -> Run {
        let mut sorted: Vec<Duration> = runs.iter().flat_map(|r| r.sorted.clone()).collect();
        sorted.sort();
        Run {
            calls: runs.iter().map(|r| r.calls).sum(),
            wall: runs.iter().map(|r| r.wall).sum(),
            sorted,
            server_cpu: runs.iter().map(|r| r.server_cpu).sum(),
            client_cpu: runs.iter().map(|r| r.client_cpu).sum(),
            server_switches: runs.iter().map(|r| r.server_switches).sum(),
        }
    }

    fn per_second(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }
    fn p50(&self) -> Duration {
        percentile(&self.sorted, 50.0)
    }
    fn p99(&self) -> Duration {
        percentile(&self.sorted, 99.0)
    }
    fn server_cpu_per_call(&self) -> Duration {
        self.server_cpu / self.calls as u32
    }
}

/// Who makes the calls: rmcp's client, or one of the bench's lean ones, which write the
/// request and read its answer with nothing between (so that the figures are the server's).
#[derive(Clone)]
enum Caller {
    Rmcp(Peer<RoleClient>),
    Pipe(Arc<PipeClient>),
    Post(Arc<PostClient>),
}

impl Caller {
    async fn status(&self) {
        match self {
            Caller::Rmcp(peer) => status(peer).await,
            Caller::Pipe(pipe) => pipe.status().await,
            Caller::Post(post) => post.status().await,
        }
    }
}

async fn status(peer: &Peer<RoleClient>) {
    let result = peer
        .call_tool(CallToolRequestParams::new("coordinator_status"))
        .await
        .expect("coordinator_status");
    assert_ne!(result.is_error, Some(true), "{result:?}");
}

fn status_request(id: u64, era_meta: bool) -> String {
    let meta = if era_meta {
        r#","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#
    } else {
        ""
    };
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"coordinator_status","arguments":{{}}{meta}}}}}"#
    )
}

/// Checks that `text` is the successful answer to request `id`.
fn check_answer(id: u64, text: &str) {
    let response = crate::Response::parse(text);
    response.expect_ok(text);
    assert_eq!(response.id, Some(id), "another request's answer: {text}");
}

/// JSON-RPC lines over a child's pipes, with any number of calls outstanding: a reader task
/// hands each answer to the call with its id.
struct PipeClient {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    waiting:
        Arc<std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<String>>>>,
    next: AtomicU64,
    child: tokio::process::Child,
}

impl PipeClient {
    async fn start(mut cmd: tokio::process::Command) -> PipeClient {
        use tokio::io::AsyncBufReadExt;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let waiting: Arc<std::sync::Mutex<std::collections::HashMap<u64, _>>> = Arc::default();
        let answers = waiting.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                #[derive(serde::Deserialize)]
                struct Id {
                    id: Option<u64>,
                }
                let Ok(Id { id: Some(id) }) = serde_json::from_str::<Id>(&line) else {
                    continue; // a notification
                };
                let waiter: Option<tokio::sync::oneshot::Sender<String>> =
                    answers.lock().unwrap().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(line);
                }
            }
        });
        let client = PipeClient {
            stdin: tokio::sync::Mutex::new(child.stdin.take().unwrap()),
            waiting,
            next: AtomicU64::new(2),
            child,
        };
        let answer = client.round_trip(1, crate::INITIALIZE).await;
        assert!(answer.contains("\"result\""), "initialize: {answer}");
        client
            .write(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        client
    }

    async fn write(&self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    async fn round_trip(&self, id: u64, request: &str) -> String {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.write(request).await;
        rx.await.expect("the server answers")
    }

    async fn status(&self) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let answer = self.round_trip(id, &status_request(id, false)).await;
        check_answer(id, &answer);
    }
}

/// One POST per call to `/mcp`, its answer read whole (JSON, or the event stream's events):
/// the session is opened with reqwest, the calls are made by [`BareHttp`].
struct PostClient {
    http: reqwest::Client,
    url: String,
    bearer: String,
    /// The initialize era's session; `None` for 2026-07-28, where each request stands alone.
    session: Option<String>,
    next: AtomicU64,
    calls: BareHttp,
}

impl PostClient {
    async fn connect(url: &str, bearer: &str, stateless: bool) -> PostClient {
        let mut client = PostClient {
            http: reqwest::Client::new(),
            url: url.to_string(),
            bearer: bearer.to_string(),
            session: None,
            next: AtomicU64::new(2),
            calls: BareHttp::new(url, &call_headers(bearer, None)),
        };
        if stateless {
            return client;
        }
        let response = client.post(crate::INITIALIZE).await;
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("initialize opens a session")
            .to_string();
        let body = response.text().await.unwrap();
        assert!(body.contains("\"result\""), "initialize: {body}");
        client.calls = BareHttp::new(url, &call_headers(bearer, Some(&session)));
        client.session = Some(session);
        let done = client
            .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
        assert_eq!(done.status().as_u16(), 202, "notifications/initialized");
        client
    }

    /// POSTs `body` with reqwest (the session's opening).
    async fn post(&self, body: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.bearer)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        request = match &self.session {
            Some(session) => request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25"),
            None => request,
        };
        request
            .body(body.to_string())
            .send()
            .await
            .expect("POST /mcp")
    }

    async fn status(&self) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self
            .calls
            .post(&status_request(id, self.session.is_none()))
            .await;
        let body = String::from_utf8(body).expect("a UTF-8 answer");
        assert_eq!(status, 200, "tools/call: {body}");
        if body.starts_with('{') {
            return check_answer(id, &body);
        }
        // An event stream: the answer is the event whose data has this id.
        let answer = body
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(str::trim)
            .find(|data| data.contains(&format!("\"id\":{id}")))
            .unwrap_or_else(|| panic!("no answer to {id} in: {body}"));
        check_answer(id, answer);
    }
}

/// The headers of a `coordinator_status` call: a session's, or a 2026-07-28 request's (with
/// the SEP-2243 headers that era's requests carry).
fn call_headers(bearer: &str, session: Option<&str>) -> String {
    let era = match session {
        Some(session) => {
            format!("Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-11-25\r\n")
        }
        None => "Mcp-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
                 Mcp-Name: coordinator_status\r\n"
            .to_string(),
    };
    format!(
        "Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\n{era}"
    )
}

/// An HTTP/1.1 client with nothing but what a call needs: the request written whole on a
/// kept-alive connection (one per call in flight), the answer read by its `Content-Length` or
/// its chunks. reqwest cost the bench two to three times the pipe client's CPU a call, on the
/// two cores the server shares with it, which the share of stdio's throughput then counted
/// against the server.
struct BareHttp {
    authority: String,
    /// The request line and headers, less `Content-Length`.
    head: String,
    idle: std::sync::Mutex<Vec<BareConn>>,
}

struct BareConn {
    stream: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl BareHttp {
    /// A client for `url` (`http://host:port/path`) whose requests carry `headers` (lines
    /// each ending in CRLF).
    fn new(url: &str, headers: &str) -> BareHttp {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        BareHttp {
            authority: authority.to_string(),
            head: format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\n{headers}"),
            idle: std::sync::Mutex::default(),
        }
    }

    /// POSTs `body`; the answer's status and body.
    async fn post(&self, body: &str) -> (u16, Vec<u8>) {
        use tokio::io::AsyncWriteExt;
        let idle = self.idle.lock().unwrap().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => BareConn {
                stream: tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .expect("connect to the server"),
                read: Vec::with_capacity(8192),
            },
        };
        let request = format!("{}Content-Length: {}\r\n\r\n{body}", self.head, body.len());
        conn.stream.write_all(request.as_bytes()).await.unwrap();
        let answer = conn.answer().await;
        self.idle.lock().unwrap().push(conn);
        answer
    }
}

impl BareConn {
    /// Reads more of the answer.
    async fn fill(&mut self) {
        use tokio::io::AsyncReadExt;
        let n = self.stream.read_buf(&mut self.read).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-answer");
    }

    /// Reads until `read` holds `delimiter`; the bytes up to it, which are taken out with it.
    async fn until(&mut self, delimiter: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = memchr::memmem::find(&self.read, delimiter) {
                let taken: Vec<u8> = self.read.drain(..i + delimiter.len()).collect();
                return taken[..i].to_vec();
            }
            self.fill().await;
        }
    }

    async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.read.len() < n {
            self.fill().await;
        }
        self.read.drain(..n).collect()
    }

    /// One answer: its status and body.
    async fn answer(&mut self) -> (u16, Vec<u8>) {
        let head = String::from_utf8(self.until(b"\r\n\r\n").await).expect("a text head");
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {head}"));
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if let Some(length) = header("content-length") {
            let length = length.parse().expect("a Content-Length");
            return (status, self.exactly(length).await);
        }
        assert!(
            header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
            "an answer with neither a length nor chunks: {head}"
        );
        let mut body = Vec::new();
        loop {
            let line = String::from_utf8(self.until(b"\r\n").await).expect("a chunk size");
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {line}"));
            if size == 0 {
                // No trailers: the blank line that ends the body.
                self.until(b"\r\n").await;
                return (status, body);
            }
            body.extend(self.exactly(size).await);
            self.until(b"\r\n").await;
        }
    }
}

/// `total` calls with `in_flight` outstanding at a time.
async fn calls(caller: &Caller, server: u32, total: u64, in_flight: u64) -> Run {
    let ticks = crate::cpu_ticks(server);
    let own_ticks = crate::cpu_ticks(std::process::id());
    let (switches, _) = crate::context_switches(server);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (caller, next) = (caller.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                caller.status().await;
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
    let server_cpu = Duration::from_secs_f64(
        (crate::cpu_ticks(server) - ticks) as f64 / crate::TICKS_PER_SECOND,
    );
    let client_cpu = Duration::from_secs_f64(
        (crate::cpu_ticks(std::process::id()) - own_ticks) as f64 / crate::TICKS_PER_SECOND,
    );
    sorted.sort();
    Run {
        calls: total,
        wall,
        sorted,
        server_cpu,
        client_cpu,
        server_switches: crate::context_switches(server).0 - switches,
    }
}

/// The three runs of one transport: 1, 16 and 64 in flight.
/// `server` is the pid of the process that answers.
async fn measure(caller: &Caller, server: u32, counts: &Counts) -> [Run; 3] {
    calls(caller, server, counts.status_warmup, 4).await;
    [
        calls(caller, server, counts.status_sequential, 1).await,
        calls(caller, server, counts.status_throughput, 16).await,
        calls(caller, server, counts.status_throughput, 64).await,
    ]
}

/// Rounds of 16 in flight, stdio and HTTP taking turns.
const ROUNDS: usize = 6;
/// The pause before each run of [`measure_beside`]: the other server's last writes (its audit
/// batch, a WAL checkpoint, on the same database) finish before this run is timed.
const SETTLE: Duration = Duration::from_millis(250);

/// `http`'s runs beside stdio's (through `pipe`, pid `stdio`), made in turns so that a machine
/// whose speed drifts from minute to minute slows both alike, each after a [`SETTLE`]: 1 in
/// flight, [`ROUNDS`] rounds of 16 in flight each way, 64 in flight each way. Returns HTTP's runs, stdio's, and each
/// round's share of stdio.
async fn measure_beside(
    http: &Caller,
    server: u32,
    pipe: &Caller,
    stdio: u32,
    counts: &Counts,
) -> ([Run; 3], [Run; 3], Vec<f64>) {
    let settled = |caller: &Caller, pid: u32, total: u64, in_flight: u64| {
        let caller = caller.clone();
        async move {
            tokio::time::sleep(SETTLE).await;
            calls(&caller, pid, total, in_flight).await
        }
    };
    calls(http, server, counts.status_warmup, 4).await;
    let one = settled(http, server, counts.status_sequential, 1).await;
    let stdio_one = settled(pipe, stdio, counts.status_sequential, 1).await;
    let (mut mine, mut theirs, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let base = settled(pipe, stdio, counts.status_throughput, 16).await;
        let run = settled(http, server, counts.status_throughput, 16).await;
        shares.push(run.per_second() / base.per_second());
        theirs.push(base);
        mine.push(run);
    }
    let stdio_64 = settled(pipe, stdio, counts.status_throughput, 64).await;
    let http_64 = settled(http, server, counts.status_throughput, 64).await;
    (
        [one, Run::merged(mine), http_64],
        [stdio_one, Run::merged(theirs), stdio_64],
        shares,
    )
}

/// Prints one transport's runs; beside `stdio`'s when given, and against the targets when
/// `targets` (the lean clients' rows; rmcp's client rows are for information).
fn report(label: &str, runs: &[Run; 3], stdio: Option<&[Run; 3]>, targets: bool) {
    let [one, sixteen, sixty_four] = runs;
    let target = if stdio.is_some() && targets {
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
        let base = stdio.map(|s| if n == 16 { &s[1] } else { &s[2] });
        let versus = match (base, n) {
            (Some(base), 16) if targets => {
                let share = run.per_second() / base.per_second();
                format!(
                    "; {:.0}% of stdio's {:.0}/s   [target >= 70% of stdio at 16 in flight: {}]",
                    share * 100.0,
                    base.per_second(),
                    verdict(share >= 0.7)
                )
            }
            (Some(base), _) => format!(
                "; {:.0}% of stdio's {:.0}/s",
                run.per_second() / base.per_second() * 100.0,
                base.per_second()
            ),
            (None, _) => String::new(),
        };
        println!(
            "{:<22} {n} in flight: {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs over {} calls, \
             CPU {:.0} µs a call in the server ({:.1} context switches), {:.0} in the \
             client{versus}",
            "",
            run.per_second(),
            us(run.p50()),
            us(run.p99()),
            run.calls,
            us(run.server_cpu_per_call()),
            run.server_switches as f64 / run.calls as f64,
            us(run.client_cpu / run.calls as u32),
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
         the same client on each =="
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

        let stdio_cmd = || {
            let mut cmd = tokio::process::Command::from(coordinator_command(&data_dir));
            cmd.env("MCP_COORDINATOR_TOOLSETS", "all")
                .arg("--config")
                .arg(&config)
                .arg("serve");
            cmd
        };
        let jwt = provider.token(&server.mcp);

        println!(
            "-- the bench's lean clients (a request written, its answer read, nothing between): \
             the server's figures --"
        );
        let pipe = PipeClient::start(stdio_cmd()).await;
        let pid = pipe.child.id().unwrap();
        let pipe = Caller::Pipe(Arc::new(pipe));
        let stdio_runs = measure(&pipe, pid, counts).await;
        report("stdio", &stdio_runs, None, true);
        for (label, bearer, stateless) in [
            ("HTTP, local token", &local, false),
            ("HTTP, 2026-07-28, local", &local, true),
            ("HTTP, provider JWT", &jwt, false),
        ] {
            let post = PostClient::connect(&server.mcp, bearer, stateless).await;
            let post = Caller::Post(Arc::new(post));
            // The provider's first call fetches the JWKS; the runs after it use the cached keys.
            post.status().await;
            let (runs, stdio_now, shares) =
                measure_beside(&post, server.pid(), &pipe, pid, counts).await;
            report(label, &runs, Some(&stdio_now), true);
            let shares: Vec<String> = shares
                .iter()
                .map(|s| format!("{:.0}%", s * 100.0))
                .collect();
            println!("{:<22} (rounds at 16 in flight: {})", "", shares.join(", "));
        }
        drop(pipe);

        println!(
            "-- rmcp's client on each transport (what an rmcp application sees; information) --"
        );
        let child = TokioChildProcess::new(stdio_cmd()).unwrap();
        let pid = child.id().unwrap();
        let stdio = client_info()
            .serve_with_lifecycle(child, ClientLifecycleMode::Initialize)
            .await
            .expect("connect over stdio");
        let stdio_runs = measure(&Caller::Rmcp(stdio.peer().clone()), pid, counts).await;
        report("stdio", &stdio_runs, None, false);
        let http = connect_http(&server.mcp, &local)
            .await
            .expect("connect over HTTP");
        let runs = measure(&Caller::Rmcp(http.peer().clone()), server.pid(), counts).await;
        report("HTTP, local token", &runs, Some(&stdio_runs), false);
        let _ = http.cancel().await;
        match connect_http_stateless(&server.mcp, &local).await {
            Ok(http) => {
                let runs = measure(&Caller::Rmcp(http.peer().clone()), server.pid(), counts).await;
                report("HTTP, 2026-07-28, local", &runs, Some(&stdio_runs), false);
                let _ = http.cancel().await;
            }
            Err(e) => println!("HTTP, 2026-07-28 era    refused by this build ({e})"),
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
        "bearer check, local token (signature, revocations file stat, its row remembered): \
         {:.1} µs per request",
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
