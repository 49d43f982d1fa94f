//! Unit tests of the identity provider's token checks: roles, names, every refusal, and the
//! keys that are never used.

use super::*;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://kc.example.com/realms/mcp";
const RESOURCE: &str = "https://mcp.example.com/mcp";

/// An Ed25519 signing key and its public JWK under `kid`.
fn key(seed: u8, kid: &str) -> (EncodingKey, Value) {
    let signing = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let der = signing.to_pkcs8_der().map(|d| d.as_bytes().to_vec());
    let encoding = EncodingKey::from_ed_der(&der.unwrap_or_default());
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
    (encoding, jwk)
}

fn config() -> AuthConfig {
    AuthConfig {
        console_client_id: Some("console".into()),
        ..AuthConfig::default()
    }
}

fn tokens(jwks: &[Value]) -> ProviderTokens {
    let doc = json!({"keys": jwks}).to_string();
    match ProviderTokens::from_jwks(&config(), ISSUER, RESOURCE, &doc) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap_or_default()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER, "aud": ["account", RESOURCE], "sub": "u-1",
        "exp": now() + 300, "iat": now(),
        "preferred_username": "alice",
        "realm_access": {"roles": ["human_oversight", "offline_access"]},
        "resource_access": {"console": {"roles": ["installer"]}, "worker": {"roles": ["admin"]}},
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn refusal(t: &ProviderTokens, token: &str) -> String {
    match t.check_with_known_keys(token) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_token_names_its_principal_and_known_roles() {
    let (k, jwk) = key(1, "k1");
    let t = tokens(&[jwk]);
    let token = sign(&k, "k1", &claims(json!({})));
    let p = t.check_with_known_keys(&token).map_err(|e| e.to_string());
    let p = p.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.subject, "u-1");
    assert_eq!(p.name, "alice");
    // Realm roles and the console client's; another client's roles are not ours.
    assert_eq!(p.roles, vec![Role::Installer, Role::HumanOversight]);
    assert_eq!(
        p.source,
        Source::Provider {
            issuer: ISSUER.into()
        }
    );
    // Answered again from memory, the same.
    assert_eq!(t.check_with_known_keys(&token).ok(), Some(p));
    // A service account: no preferred_username, the client id names it.
    let token = sign(
        &k,
        "k1",
        &claims(json!({"preferred_username": null, "client_id": "worker"})),
    );
    let p = t.check_with_known_keys(&token).ok();
    assert_eq!(p.map(|p| p.name).as_deref(), Some("worker"));
}

#[test]
fn each_refusal_says_what_was_wrong() {
    let (k, jwk) = key(1, "k1");
    let (other, _) = key(2, "k2");
    let t = tokens(&[jwk]);
    let e = refusal(
        &t,
        &sign(
            &k,
            "k1",
            &claims(json!({"aud": "https://other.example/mcp"})),
        ),
    );
    assert_eq!(
        e,
        format!(
            "the token is for another audience: expected {RESOURCE}, got https://other.example/mcp"
        )
    );
    let e = refusal(
        &t,
        &sign(&k, "k1", &claims(json!({"iss": "https://evil.example"}))),
    );
    assert_eq!(
        e,
        format!("the token was issued by https://evil.example, expected {ISSUER}")
    );
    let exp = now() - 31;
    let e = refusal(&t, &sign(&k, "k1", &claims(json!({"exp": exp}))));
    assert_eq!(e, format!("the token expired at {exp} (unix time)"));
    // Within the leeway (30 s) it passes.
    assert!(
        t.check_with_known_keys(&sign(&k, "k1", &claims(json!({"exp": now() - 20}))))
            .is_ok()
    );
    let nbf = now() + 120;
    let e = refusal(&t, &sign(&k, "k1", &claims(json!({"nbf": nbf}))));
    assert_eq!(
        e,
        format!("the token is not valid before {nbf} (unix time)")
    );
    let e = refusal(&t, &sign(&k, "k1", &claims(json!({"exp": null}))));
    assert_eq!(e, "the token has no exp claim");
    let e = refusal(&t, &sign(&other, "k9", &claims(json!({}))));
    assert_eq!(
        e,
        "the token's signing key k9 is not one of the identity provider's keys"
    );
    let e = refusal(&t, &sign(&other, "k1", &claims(json!({}))));
    assert_eq!(
        e,
        "the token's signature does not verify with the identity provider's key k1"
    );
    // HS256 with the public key's bytes as the secret (algorithm confusion).
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(b"x"))
        .unwrap_or_default();
    assert!(refusal(&t, &forged).contains("algorithm HS256 is not accepted"));
    // alg none is not a JWT this crate reads.
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    assert!(refusal(&t, &none).starts_with("the token is not a JWT"));
    assert!(refusal(&t, "garbage").starts_with("the token is not a JWT"));
    // A kid full of control characters is not echoed as is.
    let e = refusal(&t, &sign(&other, "a\r\nb", &claims(json!({}))));
    assert!(e.contains("a??b"), "{e}");
}

#[test]
fn symmetric_and_encryption_keys_are_never_used() {
    let (k, mut jwk) = key(1, "k1");
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h1", "alg": "HS256"});
    let mut enc = jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("e1");
    jwk["alg"] = Value::Null;
    let t = tokens(&[oct, enc, jwk]);
    let keys: Vec<String> = t.read_keys().keys.keys().cloned().collect();
    assert_eq!(keys, vec!["k1".to_string()]);
    // A key without `alg` verifies the algorithms of its type.
    assert!(
        t.check_with_known_keys(&sign(&k, "k1", &claims(json!({}))))
            .is_ok()
    );
}

/// How long a check takes with the keys cached: a token seen before, and one never seen
/// (signature verified), with EdDSA and, when `SPEED_RSA_DER` names an RSA private key
/// (PKCS#1 DER: `openssl genrsa -traditional 2048 | openssl rsa -traditional -outform DER -out k.der`), RS256. Run with `SPEED_RSA_DER=k.der cargo test
/// --release --lib provider::tests::speed -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn speed() {
    let (k, jwk) = key(1, "k1");
    let mut keys = vec![(Algorithm::EdDSA, k, jwk)];
    if let Some(pem) = std::env::var_os("SPEED_RSA_DER").and_then(|p| std::fs::read(p).ok()) {
        let rsa = EncodingKey::from_rsa_der(&pem);
        let jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap_or_else(|e| panic!("{e}"));
        let mut jwk = serde_json::to_value(jwk).unwrap_or_default();
        jwk["kid"] = json!("k1");
        keys.push((Algorithm::RS256, rsa, jwk));
    }
    for (alg, k, jwk) in keys {
        let t = tokens(&[jwk]);
        let n = 5_000;
        let fresh: Vec<String> = (0..n)
            .map(|i| {
                let mut header = Header::new(alg);
                header.kid = Some("k1".into());
                jsonwebtoken::encode(&header, &claims(json!({"jti": i})), &k).unwrap_or_default()
            })
            .collect();
        let start = Instant::now();
        for token in &fresh {
            assert!(t.check_with_known_keys(token).is_ok());
        }
        let first = start.elapsed() / n;
        // The cache holds 1,024 tokens: these 512 are in it before the clock starts.
        for token in &fresh[..512] {
            assert!(t.check_with_known_keys(token).is_ok());
        }
        let start = Instant::now();
        for i in 0..(20 * n as usize) {
            assert!(t.check_with_known_keys(&fresh[i % 512]).is_ok());
        }
        let again = start.elapsed() / (20 * n);
        eprintln!(
            "{alg:?}: first check {first:?} per token (signature verified), again {again:?} per token ({} bytes)",
            fresh[0].len()
        );
    }
}
