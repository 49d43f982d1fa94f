//! The limits of MCP over HTTP (`serve --http`), over the real binary: requests per principal
//! and failed bearer checks per address (`429` with `Retry-After`), body and header sizes
//! (`413`, `431`), browser origins and CORS, bounded sessions with idle expiry (`503`), HTTPS
//! with a throwaway CA, and the refusal of a non-loopback address without TLS. Every refusal
//! names its `[http]` setting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::http::{HttpServer, connect_http, issue_token};
use common::{Era, call_ok, client_config, data_dir};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"limits-test","version":"1"}}}"#;
const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

/// Writes `[http]` with `body` to a config file in `dir` and serves over HTTP with it.
fn serve_with(dir: &Path, body: &str, extra: &[&str]) -> HttpServer {
    let config = write_config(dir, body);
    let mut args = vec!["--config", config.as_str()];
    args.extend(extra);
    HttpServer::start(dir, &args)
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("[http]\n{body}\n")).unwrap();
    path.display().to_string()
}

fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    let mut r = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    if let Some(token) = token {
        r = r.bearer_auth(token);
    }
    r
}

/// A `ping` POSTed without a session (rmcp answers `400` once past every check).
async fn ping(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    post(http, url, token, PING).send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_past_its_rate_gets_429_naming_the_limit_and_others_go_on() {
    let dir = data_dir();
    let a = issue_token(dir.path(), &["admin"], "a", &[]);
    let b = issue_token(dir.path(), &["admin"], "b", &[]);
    let server = serve_with(dir.path(), "requests_per_minute = 3", &[]);
    let http = reqwest::Client::new();
    for i in 0..3 {
        let r = ping(&http, &server.mcp, Some(&a)).await;
        assert_ne!(r.status(), 429, "request {i} is within the quota");
    }
    let r = ping(&http, &server.mcp, Some(&a)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("3 requests a minute") && body.contains("[http] requests_per_minute"),
        "{body}"
    );
    // Another principal has its own quota.
    let r = ping(&http, &server.mcp, Some(&b)).await;
    assert_ne!(r.status(), 429);
    // Requests without a token never reach the table: refused as before, not limited.
    for _ in 0..5 {
        let r = ping(&http, &server.mcp, None).await;
        assert_eq!(r.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_guessing_tokens_is_refused_even_with_a_right_one() {
    let dir = data_dir();
    let good = issue_token(dir.path(), &["admin"], "good", &[]);
    let server = serve_with(dir.path(), "failed_auth_per_minute = 3", &[]);
    let http = reqwest::Client::new();
    let r = ping(&http, &server.mcp, Some(&good)).await;
    assert_ne!(r.status(), 401);
    for i in 0..3 {
        let r = ping(&http, &server.mcp, Some(&format!("guess-{i}"))).await;
        assert_eq!(r.status(), 401, "guess {i}");
    }
    // The fourth failure is over the quota; from then on the address is refused before its
    // token is looked at, so a right guess is not told apart.
    let r = ping(&http, &server.mcp, Some("guess-3")).await;
    assert_eq!(r.status(), 401);
    let r = ping(&http, &server.mcp, Some(&good)).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("failed bearer checks") && body.contains("[http] failed_auth_per_minute"),
        "{body}"
    );
    let r = ping(&http, &server.mcp, Some("guess-4")).await;
    assert_eq!(r.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_headers_are_refused_naming_the_setting() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "sizes", &[]);
    let server = serve_with(dir.path(), "max_request_bytes = 4096", &[]);
    let http = reqwest::Client::new();
    let small = ping(&http, &server.mcp, Some(&token)).await;
    assert_ne!(small.status(), 413);

    // With a length: refused before the token is even checked.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    for token in [Some(token.as_str()), None] {
        let r = post(&http, &server.mcp, token, big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let body = r.text().await.unwrap();
        assert!(
            body.contains("4096 bytes") && body.contains("[http] max_request_bytes"),
            "{body}"
        );
    }

    // Chunked, without a length: rmcp counts while it reads; the refusal says the same.
    let addr = server
        .mcp
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_string();
    let (status, body) = {
        let (addr, token, big) = (addr.clone(), token.clone(), big.clone());
        tokio::task::spawn_blocking(move || chunked_post(&addr, &token, big.as_bytes()))
            .await
            .unwrap()
    };
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("[http] max_request_bytes"), "{body}");

    // Headers: 40 KB of them is past the default 32 KiB.
    let r = post(&http, &server.mcp, Some(&token), PING)
        .header("x-padding", "y".repeat(40_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let body = r.text().await.unwrap();
    assert!(body.contains("[http] max_header_bytes"), "{body}");
}

/// POSTs `body` in 1 KB chunks over plain HTTP/1.1; the status and the response's text.
fn chunked_post(addr: &str, token: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(1024) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = tcp.write_all(&request);
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_cors_and_others_403_naming_the_setting() {
    const APP: &str = "http://app.example:8080";
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "browser", &[]);
    let server = serve_with(dir.path(), &format!("allowed_origins = [{APP:?}]"), &[]);
    let http = reqwest::Client::new();

    // A preflight needs no token, and allows the MCP headers.
    let r = http
        .request(reqwest::Method::OPTIONS, &server.mcp)
        .header("origin", APP)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    let allowed = header(&r, "access-control-allow-headers").to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    ] {
        assert!(allowed.contains(h), "{h} in {allowed}");
    }

    // The allowed origin calls /mcp and can read the session id.
    let r = post(&http, &server.mcp, Some(&token), INITIALIZE)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    let exposed = header(&r, "access-control-expose-headers").to_ascii_lowercase();
    assert!(
        exposed.contains("mcp-session-id") && exposed.contains("www-authenticate"),
        "{exposed}"
    );
    // ...and reads the challenge of a 401.
    let r = post(&http, &server.mcp, None, PING)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);
    // The metadata document is readable from that origin too.
    let metadata = format!("{}.well-known/oauth-protected-resource", server.base);
    let r = http
        .get(&metadata)
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), APP);

    // Another origin: 403 naming the setting, with a right token, and no CORS headers.
    for wrong in ["http://evil.example:8080", "http://app.example:9090"] {
        let r = post(&http, &server.mcp, Some(&token), PING)
            .header("origin", wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{wrong}");
        assert_eq!(header(&r, "access-control-allow-origin"), "");
        let body = r.text().await.unwrap();
        assert!(body.contains("[http] allowed_origins"), "{body}");
    }
    let r = http
        .request(reqwest::Method::OPTIONS, &server.mcp)
        .header("origin", "http://evil.example:8080")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allowed_origins_there_is_no_cors_and_every_origin_is_refused() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "browser", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let origin = "http://app.example:8080";
    let r = http
        .request(reqwest::Method::OPTIONS, &server.mcp)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(
        !r.headers()
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{:?}",
        r.headers()
    );
    let r = post(&http, &server.mcp, Some(&token), PING)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("[http] allowed_origins"), "{body}");
    let metadata = format!("{}.well-known/oauth-protected-resource", server.base);
    let r = http
        .get(&metadata)
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "");
}

/// Opens an initialize-era session with raw requests; its id.
async fn open_session(http: &reqwest::Client, url: &str, token: &str) -> String {
    let r = post(http, url, Some(token), INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = header(&r, "mcp-session-id");
    assert!(!id.is_empty());
    let _ = r.text().await.unwrap();
    let r = post(
        http,
        url,
        Some(token),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .header("mcp-session-id", &id)
    .header("mcp-protocol-version", "2025-06-18")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    id
}

/// The third `initialize` is refused with a JSON-RPC error for its id.
async fn assert_refused(http: &reqwest::Client, url: &str, token: &str, max: usize) {
    let r = post(http, url, Some(token), INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(header(&r, "content-type").starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], json!(7), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{max} MCP sessions")) && message.contains("[http] max_sessions"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_max_sessions_are_refused_until_one_is_deleted() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "sessions", &[]);
    let server = serve_with(dir.path(), "max_sessions = 2", &[]);
    let http = reqwest::Client::new();
    let first = open_session(&http, &server.mcp, &token).await;
    let _second = open_session(&http, &server.mcp, &token).await;
    assert_refused(&http, &server.mcp, &token, 2).await;

    // rmcp's client is told why.
    let config = StreamableHttpClientTransportConfig::with_uri(server.mcp.as_str())
        .auth_header(token.clone());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let Err(refused) = client_config("refused")
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
    else {
        panic!("a third session is refused");
    };
    assert!(
        format!("{refused:?}").contains("max_sessions"),
        "{refused:?}"
    );

    // 2026-07-28 requests need no session: served while every place is taken.
    let client = connect_http(&server.mcp, &token, Era::Stateless).await;
    let status = call_ok(client.peer(), "coordinator_status", json!({})).await;
    assert!(status.get("version").is_some(), "{status}");
    client.cancel().await.unwrap();

    let r = http
        .delete(&server.mcp)
        .bearer_auth(&token)
        .header("mcp-session-id", &first)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    open_session(&http, &server.mcp, &token).await;
    assert_refused(&http, &server.mcp, &token, 2).await;
}

/// A session belongs to whoever opened it, and one principal holds at most its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_its_principals_and_one_principal_holds_its_share() {
    let dir = data_dir();
    let alice = issue_token(dir.path(), &["admin"], "alice", &[]);
    let bob = issue_token(dir.path(), &["admin"], "bob", &[]);
    let server = serve_with(dir.path(), "max_sessions_per_principal = 1", &[]);
    let http = reqwest::Client::new();
    let hers = open_session(&http, &server.mcp, &alice).await;
    // Her second is refused, naming the setting; bob still gets one.
    let r = post(&http, &server.mcp, Some(&alice), INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("[http] max_sessions_per_principal"),
        "{body}"
    );
    let his = open_session(&http, &server.mcp, &bob).await;
    // Bob's token with her session's id: as if there were no such session.
    for (token, id, want) in [
        (&bob, &hers, 404),
        (&alice, &his, 404),
        (&alice, &hers, 200),
    ] {
        let r = post(&http, &server.mcp, Some(token), PING)
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{}", r.text().await.unwrap_or_default());
    }
    let r = http
        .delete(&server.mcp)
        .bearer_auth(&bob)
        .header("mcp-session-id", &hers)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "bob cannot close her session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_and_frees_its_place() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "idle", &[]);
    let server = serve_with(
        dir.path(),
        "max_sessions = 1\nsession_idle_seconds = 2",
        &[],
    );
    let http = reqwest::Client::new();
    let first = open_session(&http, &server.mcp, &token).await;
    assert_refused(&http, &server.mcp, &token, 1).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // The idle session is gone (404, as MCP says for an ended session), its place free.
    let r = post(&http, &server.mcp, Some(&token), PING)
        .header("mcp-session-id", &first)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    open_session(&http, &server.mcp, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_of_a_private_ca() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "tls", &[]);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "http_limits test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let server = HttpServer::start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.mcp.starts_with("https://127.0.0.1:"),
        "{}",
        server.mcp
    );

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let config = StreamableHttpClientTransportConfig::with_uri(server.mcp.as_str())
        .auth_header(token.clone());
    let transport = StreamableHttpClientTransport::with_client(trusting, config);
    let client = client_config("https")
        .serve_with_lifecycle(transport, ClientLifecycleMode::Initialize)
        .await
        .expect("connect over HTTPS");
    let status = call_ok(client.peer(), "coordinator_status", json!({})).await;
    assert!(status.get("version").is_some(), "{status}");
    client.cancel().await.unwrap();

    // A client that does not trust the CA does not get in.
    let err = post(&reqwest::Client::new(), &server.mcp, Some(&token), PING)
        .send()
        .await
        .expect_err("an unknown CA is refused");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    // Plain HTTP on the HTTPS port is not served.
    let plain = server.mcp.replacen("https://", "http://", 1);
    let r = post(&reqwest::Client::new(), &plain, Some(&token), PING)
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_without_tls_or_a_proxy_it_refuses_to_start() {
    let dir = data_dir();
    let out = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--http", "0.0.0.0:0"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not loopback")
            && err.contains("--tls-cert")
            && err.contains("--tls-key")
            && err.contains("behind_proxy = true"),
        "{err}"
    );

    // With a TLS-terminating proxy said to be in front, it serves.
    let config = write_config(dir.path(), "behind_proxy = true");
    let server = HttpServer::start_at(dir.path(), "0.0.0.0:0", &["--config", &config]);
    assert!(server.mcp.starts_with("http://"), "{}", server.mcp);
    let port = server
        .mcp
        .trim_end_matches("/mcp")
        .rsplit(':')
        .next()
        .unwrap();
    let r = reqwest::get(format!(
        "http://127.0.0.1:{port}/.well-known/oauth-protected-resource"
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_bad_limit_or_origin_in_the_config_is_refused_naming_the_field() {
    for (body, field) in [
        (
            "allowed_origins = [\"app.example.com\"]",
            "http.allowed_origins",
        ),
        ("requests_per_minute = 0", "http.requests_per_minute"),
        ("max_request_bytes = 10", "http.max_request_bytes"),
        ("session_idle_seconds = 0", "http.session_idle_seconds"),
    ] {
        let dir = data_dir();
        let config = write_config(dir.path(), body);
        let mut child = std::process::Command::new(common::BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--config", &config, "serve", "--http", "127.0.0.1:0"])
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A setting not checked would have it serve on: give it a while, then fail.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{body}: still serving after 20 s instead of refusing the setting");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(field), "{body}: {err}");
    }
}
