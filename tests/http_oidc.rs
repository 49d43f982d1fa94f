//! MCP over HTTP with a real OpenID provider (`tests/idp`, the npm package `oidc-provider`):
//! the provider itself (client-credentials JWTs with roles and audience, a login through its
//! forms), then `serve --http` accepting and refusing its tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::idp::{CONSOLE, Idp, IdpConfig, WORKER, claims, header, pkce_challenge};
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
