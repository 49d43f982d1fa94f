//! MCP over HTTP with a real OpenID provider (`tests/idp`, the npm package `oidc-provider`):
//! the provider itself (client-credentials JWTs with roles and audience, a login through its
//! forms), then `serve --http` accepting and refusing its tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::http::{HttpServer, connect_http};
use common::idp::{CONSOLE, Idp, IdpConfig, WORKER, claims, header, pkce_challenge};
use common::{ERAS, call_ok};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_issues_jwts_with_roles_for_the_resource_asked() {
    let idp = Idp::start(IdpConfig::realm(&[]).ttl(120));
    let discovery = idp.discovery().await;
    assert_eq!(discovery["issuer"], json!(idp.issuer));
    assert!(idp.issuer.ends_with("/realms/mcp"), "{}", idp.issuer);

    let resource = "http://127.0.0.1:1/mcp";
    let (token, expires_in) = idp
        .client_credentials_token(WORKER.0, WORKER.1, resource)
        .await;
    assert_eq!(expires_in, 120);
    let c = claims(&token);
    assert_eq!(c["iss"], json!(idp.issuer));
    assert_eq!(c["aud"], json!(resource));
    assert_eq!(c["client_id"], json!("worker"));
    assert_eq!(c["realm_access"]["roles"], json!(["agent"]));
    let h = header(&token);
    assert_eq!(h.alg, jsonwebtoken::Algorithm::RS256);
    let kid = h.kid.expect("kid");

    // A wrong secret is refused.
    let (status, answer) = idp
        .token_request(
            WORKER.0,
            Some("wrong"),
            &[("grant_type", "client_credentials"), ("resource", resource)],
        )
        .await;
    assert_eq!(status, 401, "{answer}");

    // The JWKS names the key; after a rotation new tokens carry the new kid, and both are
    // published until the old one is dropped.
    let before = idp.jwks_requests().await;
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .expect("jwks_uri")
        .to_string();
    let jwks: serde_json::Value = reqwest::get(&jwks_uri)
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"][0]["kid"], json!(kid));
    assert_eq!(idp.jwks_requests().await, before + 1);
    let new_kid = idp.rotate_key(false).await;
    assert_ne!(new_kid, kid);
    let (token, _) = idp
        .client_credentials_token(WORKER.0, WORKER.1, resource)
        .await;
    assert_eq!(header(&token).kid.as_deref(), Some(new_kid.as_str()));
    let jwks: serde_json::Value = reqwest::get(&jwks_uri)
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str(), kid.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_through_the_forms_and_gets_a_token_with_their_roles() {
    let redirect = "http://127.0.0.1:9/callback";
    let idp = Idp::start(IdpConfig::realm(&[redirect]));
    let resource = "http://127.0.0.1:1/mcp";
    let verifier = "a-code-verifier-of-enough-length-0123456789abcdef";
    let challenge = pkce_challenge(verifier);
    let mut authorize = reqwest::Url::parse(&format!("{}/auth", idp.issuer)).expect("url");
    authorize
        .query_pairs_mut()
        .append_pair("client_id", CONSOLE.0)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile")
        .append_pair("redirect_uri", redirect)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "s1")
        .append_pair("resource", resource);
    let back = idp.log_in(authorize.as_str(), "alice", "alice-pw").await;
    let back = reqwest::Url::parse(&back).expect("callback url");
    assert!(back.as_str().starts_with(redirect), "{back}");
    let query: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(query.get("state").map(String::as_str), Some("s1"));
    let code = query.get("code").expect("code");
    let (status, answer) = idp
        .token_request(
            CONSOLE.0,
            Some(CONSOLE.1),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
                ("resource", resource),
            ],
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let access = claims(answer["access_token"].as_str().expect("access_token"));
    assert_eq!(access["aud"], json!(resource));
    assert_eq!(access["preferred_username"], json!("alice"));
    assert_eq!(access["realm_access"]["roles"], json!(["human_oversight"]));
    let id = claims(answer["id_token"].as_str().expect("id_token"));
    assert_eq!(id["aud"], json!(CONSOLE.0));
    assert_eq!(id["realm_access"]["roles"], json!(["human_oversight"]));
}

/// A config file making `idp` the identity provider, with `extra` lines in `[auth]`.
fn provider_config(dir: &std::path::Path, issuer: &str, extra: &str) -> String {
    let path = dir.join("oidc.toml");
    std::fs::write(&path, format!("[auth]\nissuer = \"{issuer}\"\n{extra}\n")).expect("config");
    path.display().to_string()
}

/// POSTs `server/discover` (2026-07-28) to `/mcp` with `token`: the status and the `WWW-Authenticate` header.
async fn try_token(mcp: &str, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(mcp)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }}})
            .to_string(),
        )
        .send()
        .await
        .expect("post");
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = r.status().as_u16();
    if status != 401 && status != 200 {
        eprintln!("{status}: {}", r.text().await.unwrap_or_default());
    }
    (status, challenge)
}

/// Asserts `token` is refused with `401`, `error="invalid_token"` and a description
/// containing `why`.
async fn assert_refused(mcp: &str, token: &str, why: &str) {
    let (status, challenge) = try_token(mcp, token).await;
    assert_eq!(status, 401, "{challenge}");
    assert!(
        challenge.starts_with("Bearer resource_metadata=\"")
            && challenge.contains("error=\"invalid_token\"")
            && challenge.contains(why),
        "expected a challenge naming {why:?}, got: {challenge}"
    );
    assert!(!challenge.contains(token), "the challenge echoes the token");
}

/// A JWT for `issuer` and `audience` signed with a fresh Ed25519 key under `kid`.
fn forged(issuer: &str, audience: &str, kid: &str) -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let der = key.to_pkcs8_der().expect("pkcs8");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": "mallory", "exp": now + 300, "iat": now,
        "realm_access": {"roles": ["admin"]},
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
    )
    .expect("sign")
}

/// The actors of the audit log's `tool.call` events.
fn tool_call_actors(dir: &std::path::Path) -> Vec<String> {
    let (code, out, err) = common::cli(dir, &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["action"] == "tool.call")
        .map(|e| e["actor"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_calls_tools_in_both_eras() {
    let idp = Idp::start(IdpConfig::realm(&[]));
    let dir = common::data_dir();
    let config = provider_config(dir.path(), &idp.issuer, "");
    let server = HttpServer::start(dir.path(), &["--config", &config]);

    // Discovery: the 401 names the metadata, the metadata names the provider.
    let (status, challenge) = try_token(&server.mcp, "").await;
    assert_eq!(status, 401, "{challenge}");
    let metadata = challenge
        .split('"')
        .nth(1)
        .expect("resource_metadata")
        .to_string();
    let doc: serde_json::Value = reqwest::get(&metadata)
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["resource"], json!(server.mcp));
    assert_eq!(doc["authorization_servers"], json!([idp.issuer]));

    let token = idp
        .worker_token(doc["resource"].as_str().expect("resource"))
        .await;
    for era in ERAS {
        let client = connect_http(&server.mcp, &token, era).await;
        let status = call_ok(client.peer(), "coordinator_status", json!({})).await;
        assert!(status.get("version").is_some(), "{era:?}: {status}");
        client.cancel().await.expect("close");
    }
    // Audit events are written behind the answer: give the second a moment.
    let mut actors = tool_call_actors(dir.path());
    for _ in 0..50 {
        if actors.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        actors = tool_call_actors(dir.path());
    }
    assert_eq!(actors.len(), 2, "{actors:?}");
    for actor in actors {
        assert!(
            actor.contains("as worker (sub worker, via oidc)"),
            "{actor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_are_refused_naming_why() {
    let idp = Idp::start(IdpConfig::realm(&[]).ttl(2));
    let dir = common::data_dir();
    let config = provider_config(dir.path(), &idp.issuer, "leeway_seconds = 0");
    let server = HttpServer::start(dir.path(), &["--config", &config]);

    // For another resource.
    let other = "http://127.0.0.1:1/mcp";
    let (token, _) = idp
        .client_credentials_token(WORKER.0, WORKER.1, other)
        .await;
    assert_refused(
        &server.mcp,
        &token,
        &format!(
            "the token is for another audience: expected {}, got {other}",
            server.mcp
        ),
    )
    .await;

    // Signed by a key the provider does not have.
    let token = forged(&idp.issuer, &server.mcp, "forged-kid");
    assert_refused(
        &server.mcp,
        &token,
        "the token's signing key forged-kid is not one of the identity provider's keys",
    )
    .await;
    // The provider's kid, another key: its algorithm is not the key's.
    let kid = header(&idp.worker_token(&server.mcp).await)
        .kid
        .expect("kid");
    let token = forged(&idp.issuer, &server.mcp, &kid);
    assert_refused(&server.mcp, &token, "algorithm EdDSA is not accepted").await;

    // Accepted, then expired (2 s tokens, no leeway).
    let (token, expires_in) = idp
        .client_credentials_token(WORKER.0, WORKER.1, &server.mcp)
        .await;
    assert_eq!(expires_in, 2);
    let (status, challenge) = try_token(&server.mcp, &token).await;
    assert_eq!(status, 200, "{challenge}");
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let exp = claims(&token)["exp"].as_i64().expect("exp");
    assert_refused(
        &server.mcp,
        &token,
        &format!("the token expired at {exp} (unix time)"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_and_the_withdrawn_one_refused() {
    let idp = Idp::start(IdpConfig::realm(&[]));
    let dir = common::data_dir();
    let config = provider_config(dir.path(), &idp.issuer, "");
    let server = HttpServer::start(dir.path(), &["--config", &config]);
    let old = idp.worker_token(&server.mcp).await;
    let (status, challenge) = try_token(&server.mcp, &old).await;
    assert_eq!(status, 200, "{challenge}");

    let kid = idp.rotate_key(true).await;
    let new = idp.worker_token(&server.mcp).await;
    assert_eq!(header(&new).kid.as_deref(), Some(kid.as_str()));
    // An unknown kid refetches at most every 3 s: past that, the new key is fetched.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let before = idp.jwks_requests().await;
    let (status, challenge) = try_token(&server.mcp, &new).await;
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(idp.jwks_requests().await, before + 1);
    // The old key left the JWKS: its token, accepted before, is refused now.
    let old_kid = header(&old).kid.expect("kid");
    assert_refused(
        &server.mcp,
        &old,
        &format!("the token's signing key {old_kid} is not one of the identity provider's keys"),
    )
    .await;

    // A flood of made-up kids costs the provider at most one more fetch.
    for i in 0..20 {
        let token = forged(&idp.issuer, &server.mcp, &format!("made-up-{i}"));
        assert_refused(&server.mcp, &token, &format!("made-up-{i}")).await;
    }
    let after = idp.jwks_requests().await;
    assert!(
        after <= before + 2,
        "{} JWKS fetches for 21 unknown kids",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_does_not_stop_the_server_and_is_fetched_later() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let issuer = format!("http://127.0.0.1:{port}{}", common::idp::REALM_PATH);
    let dir = common::data_dir();
    let config = provider_config(dir.path(), &issuer, "");
    let server = HttpServer::start(dir.path(), &["--config", &config]);
    let token = forged(&issuer, &server.mcp, "k");
    // Not the client's fault: 503 (not counted as a guess), saying why.
    let r = reqwest::Client::new()
        .post(&server.mcp)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body = r.text().await.unwrap_or_default();
    assert!(
        body.contains("the identity provider's keys could not be fetched"),
        "{body}"
    );

    let idp = Idp::start(IdpConfig::realm(&[]).port(port));
    assert_eq!(idp.issuer, issuer);
    let token = idp.worker_token(&server.mcp).await;
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let (status, challenge) = try_token(&server.mcp, &token).await;
    assert_eq!(status, 200, "{challenge}");
}
