//! MCP over streamable HTTP (`serve --http`): the bearer check and its challenge, the metadata
//! document, rmcp's HTTP client in both eras with a local token, and a revoked token refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::http::{HttpServer, connect_http, issue_token};
use common::{ERAS, call_ok, data_dir};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_answer_is_401_naming_the_metadata() {
    let dir = data_dir();
    let server = HttpServer::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (status, challenge) = post_tools_list(&server.mcp, None).await;
    assert_eq!(status, 401);
    let metadata = format!("{}.well-known/oauth-protected-resource", server.base);
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata}\"")
    );
    let doc: serde_json::Value = http
        .get(&metadata)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["resource"], json!(server.mcp));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));

    // A token that is not one of ours, with no provider configured.
    let (status, challenge) = post_tools_list(&server.mcp, Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_token_calls_tools_in_both_eras_until_revoked() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "tester", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    for era in ERAS {
        let client = connect_http(&server.mcp, &token, era).await;
        let status = call_ok(client.peer(), "coordinator_status", json!({})).await;
        assert!(status.get("version").is_some(), "{era:?}: {status}");
        client.cancel().await.expect("close");
    }
    let (_, list, _) = common::cli(dir.path(), &["token", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("json");
    let id = list[0]["id"].as_str().expect("id").to_string();
    let (code, _, err) = common::cli(dir.path(), &["token", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let (status, challenge) = post_tools_list(&server.mcp, Some(&token)).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("revoked"), "{challenge}");
}

/// POSTs a `tools/list` to `url` (with `bearer`, if any): the status and `WWW-Authenticate`.
async fn post_tools_list(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.expect("post");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (r.status().as_u16(), challenge)
}

/// A 2026-07-28 request (no session) whose answer is all there is gets it as one JSON body,
/// not an event stream of one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_request_is_answered_with_plain_json() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "tester", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let r = reqwest::Client::new()
        .post(&server.mcp)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "coordinator_status")
        .body(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"coordinator_status","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
        )
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    if status != 200 {
        panic!("{status}: {}", r.text().await.unwrap_or_default());
    }
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(kind.starts_with("application/json"), "{kind}");
    let body: serde_json::Value = r.json().await.expect("a JSON body");
    assert_eq!(body["id"], 7, "{body}");
    assert!(
        body["result"]["structuredContent"]["version"].is_string(),
        "{body}"
    );
}

/// An initialize-era request whose event stream would hold its response alone gets the
/// response as one JSON body, the session id still in the headers (`src/http/answer.rs`).
/// Streams that carry more (progress, elicitation) stay streams: `http_parity.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answer_that_is_all_there_is_comes_as_json() {
    let dir = data_dir();
    let token = issue_token(dir.path(), &["admin"], "tester", &[]);
    let server = HttpServer::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let post = |body: &'static str, session: Option<&str>| {
        let mut request = http
            .post(&server.mcp)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.send()
    };
    let kind = |r: &reqwest::Response| {
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };

    let r = post(
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
        None,
    )
    .await
    .expect("initialize");
    assert_eq!(r.status().as_u16(), 200);
    assert!(kind(&r).starts_with("application/json"), "{}", kind(&r));
    let session = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_string();
    let body: serde_json::Value = r.json().await.expect("a JSON body");
    assert_eq!(body["id"], 1, "{body}");
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25", "{body}");

    let r = post(
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(&session),
    )
    .await
    .expect("initialized");
    assert_eq!(r.status().as_u16(), 202);

    let r = post(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"coordinator_status","arguments":{}}}"#,
        Some(&session),
    )
    .await
    .expect("tools/call");
    assert_eq!(r.status().as_u16(), 200);
    assert!(kind(&r).starts_with("application/json"), "{}", kind(&r));
    assert!(r.headers().get("transfer-encoding").is_none());
    let body: serde_json::Value = r.json().await.expect("a JSON body");
    assert_eq!(body["id"], 2, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["name"], "mcp-coordinator",
        "{body}"
    );
}
