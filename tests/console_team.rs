//! The console in team mode: people log in through a real OpenID provider (`tests/idp`,
//! authorization code with PKCE) to `serve --http`'s console, and only `human_oversight`
//! decides. In a real Chromium, alice (human_oversight) logs in at the provider's pages and
//! approves what ian (installer) asked for over HTTP; ian's waiting call returns it decided by
//! alice. Over plain HTTP: carol (compliance) may look but not decide, olga (installer and
//! human_oversight) cannot decide what she asked for herself, a forged, replayed or foreign
//! `state` opens nothing, and the provider's `access_denied` is shown as such. Screenshots go
//! to target/console-screenshots/team-*.png.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::console::{Browser, form_tokens};
use common::http::{HttpServer, connect_http, issue_token};
use common::idp::{CONSOLE, Idp, IdpConfig, IdpUser};
use common::{Era, call_ok, data_dir};
use fantoccini::Locator;
use serde_json::{Value, json};

/// The provider, a coordinator serving HTTP whose console logs people in through it, and the
/// console's URL.
struct Team {
    idp: Idp,
    server: HttpServer,
    dir: tempfile::TempDir,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Stores the console client's secret in the data directory's secret store.
fn store_secret(dir: &Path, name: &str, value: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(common::BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["secrets", "set", name])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("secrets set");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write the secret");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "secrets set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Team {
    fn start() -> Team {
        // The provider must know the console's redirect URI before the console starts, and the
        // console must know the provider's issuer: the port is chosen first.
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut realm = IdpConfig::realm(&[&format!("{base}/login/callback")]);
        realm.users.push(IdpUser {
            username: "olga".into(),
            password: "olga-pw".into(),
            roles: vec!["installer".into(), "human_oversight".into()],
            client_roles: BTreeMap::new(),
        });
        // A person whose only role is agent: no permission to read the audit log.
        realm.users.push(IdpUser {
            username: "andy".into(),
            password: "andy-pw".into(),
            roles: vec!["agent".into()],
            client_roles: BTreeMap::new(),
        });
        let idp = Idp::start(realm);
        let dir = data_dir();
        store_secret(dir.path(), "console-client", CONSOLE.1);
        let config = dir.path().join("team.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nissuer = \"{}\"\nconsole_client_id = \"{}\"\nconsole_client_secret = \"secret:console-client\"\n",
                idp.issuer, CONSOLE.0
            ),
        )
        .expect("write the config");
        let server = HttpServer::start_at(
            dir.path(),
            &format!("127.0.0.1:{port}"),
            &["--config", config.to_str().expect("utf-8 path")],
        );
        assert_eq!(server.base.trim_end_matches('/'), base);
        Team {
            idp,
            server,
            dir,
            base,
        }
    }

    /// `user`'s access token for `/mcp` from the provider (authorization code with PKCE, as
    /// an MCP client would get it; the provider's redirect back is read, not visited).
    async fn user_token(&self, user: &str) -> String {
        let verifier = "a-verifier-for-the-mcp-client-of-enough-length-0123456789";
        let mut authorize = reqwest::Url::parse(&format!("{}/auth", self.idp.issuer)).expect("url");
        let redirect = format!("{}/login/callback", self.base);
        authorize
            .query_pairs_mut()
            .append_pair("client_id", CONSOLE.0)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid profile")
            .append_pair("redirect_uri", &redirect)
            .append_pair("code_challenge", &common::idp::pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", "mcp-client")
            .append_pair("resource", &self.server.mcp);
        let back = self
            .idp
            .log_in(authorize.as_str(), user, &format!("{user}-pw"))
            .await;
        let code = reqwest::Url::parse(&back)
            .expect("callback url")
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let (status, answer) = self
            .idp
            .token_request(
                CONSOLE.0,
                Some(CONSOLE.1),
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect),
                    ("code_verifier", verifier),
                    ("resource", &self.server.mcp),
                ],
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Asks for an approval over HTTP with `token`, waiting up to `wait` seconds for the
    /// decision; the call's structured result.
    async fn request(&self, token: &str, op: &str, wait: u64) -> Value {
        let client = connect_http(&self.server.mcp, token, Era::Legacy).await;
        let result = call_ok(
            &client,
            "approval_request",
            json!({"summary": format!("install {op}"), "action": {"op": op}, "risk": "high",
                   "wait_seconds": wait}),
        )
        .await;
        client.cancel().await.expect("close");
        result
    }
}

/// A browser without JavaScript: a cookie jar, no redirects followed, forms sent with the
/// console's Origin.
struct Visitor {
    http: reqwest::Client,
    base: String,
    jar: BTreeMap<String, String>,
}

struct Reply {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Visitor {
    fn new(base: &str) -> Self {
        Visitor {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_string(),
            jar: BTreeMap::new(),
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Reply {
        let cookie = self
            .jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let r = request
            .header("cookie", cookie)
            .header("accept", "text/html")
            .send()
            .await
            .expect("request");
        for set in r.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap_or_default();
            if let Some((name, rest)) = set.split_once('=') {
                let value = rest.split(';').next().unwrap_or_default();
                if value.is_empty() {
                    self.jar.remove(name);
                } else {
                    self.jar.insert(name.to_string(), value.to_string());
                }
            }
        }
        Reply {
            status: r.status().as_u16(),
            location: r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: r.text().await.unwrap_or_default(),
        }
    }

    /// GET a path of the console, or a full URL.
    async fn get(&mut self, path: &str) -> Reply {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let request = self.http.get(url);
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", &self.base)
            .body(body);
        self.send(request).await
    }

    /// Starts a login at the console: the provider's authorization URL it redirects to.
    async fn start_login(&mut self) -> String {
        let r = self.get("/login/oidc?next=/approvals").await;
        assert_eq!(r.status, 303, "{}", r.body);
        r.location.expect("a redirect to the provider")
    }

    /// Logs `user` in through the provider; the callback URL the provider sent back to (already
    /// visited) and the console's answer to it.
    async fn log_in(&mut self, idp: &Idp, user: &str) -> (String, Reply) {
        let authorize = self.start_login().await;
        let callback = idp.log_in(&authorize, user, &format!("{user}-pw")).await;
        let r = self.get(&callback).await;
        (callback, r)
    }
}

/// Sends the approve form of `id` with the one token `v`'s page of it has (the logout form's: a
/// person who may not decide gets no decide form), and checks it is refused saying `why` and
/// that nothing was decided.
async fn refused_to_approve(v: &mut Visitor, dir: &Path, id: &str, why: &str) {
    let page = v.get(&format!("/approvals/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("id=\"cannot-decide\"") && page.body.contains(why),
        "{}",
        page.body
    );
    assert!(!page.body.contains("id=\"approve\""), "no approve form");
    let csrf = form_tokens(&page.body).pop().expect("a form token");
    let refused = v
        .post(
            &format!("/approvals/{id}/approve"),
            &[("csrf", &csrf), ("reason", "looks fine")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains(why), "{}", refused.body);
    assert_eq!(state_of(dir, id)["state"], "pending");
}

fn state_of(dir: &Path, id: &str) -> Value {
    let (code, out, err) = common::cli(dir, &["approvals", "show", id, "--json"]);
    assert_eq!(code, 0, "approvals show {id}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_logs_in_through_the_provider_in_chromium_and_approves_what_ian_asked() {
    let team = Team::start();
    let ian = issue_token(team.dir.path(), &["installer"], "ian", &[]);
    // ian's call waits for the decision while alice logs in and decides.
    let waiting = {
        let mcp = team.server.mcp.clone();
        let ian = ian.clone();
        tokio::spawn(async move {
            let client = connect_http(&mcp, &ian, Era::Legacy).await;
            let result = call_ok(
                &client,
                "approval_request",
                json!({"summary": "install the weather server", "action": {"op": "install", "server": "weather"},
                       "risk": "high", "wait_seconds": 120}),
            )
            .await;
            client.cancel().await.expect("close");
            result
        })
    };
    // The pending approval, as the CLI sees it.
    let id = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, _) = common::cli(
                team.dir.path(),
                &["approvals", "list", "--state", "pending", "--json"],
            );
            assert_eq!(code, 0, "{out}");
            let list: Value = serde_json::from_str(&out).expect("json");
            let found = list
                .as_array()
                .or_else(|| list["approvals"].as_array())
                .and_then(|a| a.first())
                .and_then(|a| a["id"].as_str())
                .map(String::from);
            if let Some(id) = found {
                break id;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no pending approval: {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    let b = Browser::start(1280, 1000).await;
    b.client
        .goto(&format!("{}/approvals/{id}", team.base))
        .await
        .expect("open the approval");
    // Not logged in: the login page, which offers the provider.
    let provider = b
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("a#provider-link"))
        .await
        .expect("a button to log in with the provider");
    assert!(
        provider
            .text()
            .await
            .unwrap_or_default()
            .contains("realm mcp"),
        "the button names the provider"
    );
    b.screenshot("team-login").await;
    provider.click().await.expect("click");
    // The provider's own login page.
    let user = b
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input#username"))
        .await
        .expect("the provider's login form");
    assert!(
        b.client
            .current_url()
            .await
            .expect("url")
            .as_str()
            .starts_with(&team.idp.origin)
    );
    user.send_keys("alice").await.expect("type");
    b.client
        .find(Locator::Css("input#password"))
        .await
        .expect("password")
        .send_keys("alice-pw")
        .await
        .expect("type");
    b.client
        .find(Locator::Css("button#login"))
        .await
        .expect("login button")
        .click()
        .await
        .expect("click");
    // Back at the console, on the approval's page, logged in as alice with her role.
    let reason = b
        .client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("textarea#approve-reason"))
        .await
        .unwrap_or_else(|e| {
            panic!("no approve form after logging in: {e}");
        });
    let who = b
        .client
        .find(Locator::Css("span.who"))
        .await
        .expect("who is logged in")
        .text()
        .await
        .unwrap_or_default();
    assert!(
        who.contains("alice") && who.contains("human_oversight"),
        "{who}"
    );
    reason
        .send_keys("ian needs the weather server; checked the action")
        .await
        .expect("type");
    b.screenshot("team-approval").await;
    b.client
        .find(Locator::Css("button.approve"))
        .await
        .expect("approve")
        .click()
        .await
        .expect("click");
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".badge.state-approved"))
        .await
        .expect("the approval shows approved");
    let page = b.client.source().await.expect("source");
    assert!(page.contains("alice (sub alice, via oidc"), "{page}");
    b.screenshot("team-approved").await;
    b.close().await;

    // ian's waiting call returns the decision, made by alice in the console.
    let result = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting call returns")
        .expect("the task");
    assert_eq!(result["state"], "approved", "{result:#}");
    assert!(
        result["approval"]["decision"]["by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("overseer:alice (sub alice, via oidc; console "),
        "{result:#}"
    );
    let shown = state_of(team.dir.path(), &id);
    let by = shown["decision"]["by"].as_str().unwrap_or_default();
    assert!(
        by.starts_with("overseer:alice (sub alice, via oidc; console http://127.0.0.1:"),
        "{shown:#}"
    );
    assert_eq!(shown["decision"]["via"], "console", "{shown:#}");
    assert!(
        shown["requested_by"]
            .as_str()
            .unwrap_or_default()
            .contains(" as ian (sub "),
        "{shown:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_human_oversight_decides_and_never_their_own_request() {
    let team = Team::start();
    let ian = issue_token(team.dir.path(), &["installer"], "ian", &[]);
    let asked = team.request(&ian, "weather", 0).await;
    assert_eq!(asked["state"], "pending", "{asked:#}");
    let id = asked["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_string();
    let path = format!("/approvals/{id}");

    // carol (compliance) logs in and may look, not decide.
    let mut carol = Visitor::new(&team.base);
    let (_, r) = carol.log_in(&team.idp, "carol").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let list = carol.get("/approvals").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains(&id), "carol sees the pending approval");
    refused_to_approve(
        &mut carol,
        team.dir.path(),
        &id,
        "deciding approvals needs the role human_oversight; carol has compliance",
    )
    .await;
    // Compliance reads the audit log (the seeds give it VIEW_AUDIT_LOGS: `audit_read`).
    let audit = carol.get("/audit").await;
    assert_eq!(
        audit.status, 200,
        "carol may read the audit log: {}",
        audit.body
    );
    // andy (agent) may not.
    let mut andy = Visitor::new(&team.base);
    let (_, r) = andy.log_in(&team.idp, "andy").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = andy.get("/audit").await;
    assert_eq!(audit.status, 403, "andy may not read the audit log");
    assert!(audit.body.contains("audit_read"), "{}", audit.body);
    assert_eq!(state_of(team.dir.path(), &id)["state"], "pending");

    // olga (installer and human_oversight) asks over HTTP with the provider's token, then
    // cannot decide her own request.
    let olga_token = team.user_token("olga").await;
    let own = team.request(&olga_token, "calendar", 0).await;
    let own_id = own["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_string();
    assert!(
        own["approval"]["requested_by"]
            .as_str()
            .unwrap_or_default()
            .ends_with(" as olga (sub olga, via oidc)"),
        "{own:#}"
    );
    let mut olga = Visitor::new(&team.base);
    let (_, r) = olga.log_in(&team.idp, "olga").await;
    assert_eq!(r.status, 200, "{}", r.body);
    refused_to_approve(
        &mut olga,
        team.dir.path(),
        &own_id,
        "four eyes: olga requested this approval",
    )
    .await;
    // She decides ian's, which is not hers.
    let page = olga.get(&path).await;
    let tokens = form_tokens(&page.body);
    assert!(tokens.len() >= 3, "approve and reject forms: {}", page.body);
    let approved = olga
        .post(
            &format!("{path}/reject"),
            &[("csrf", &tokens[1]), ("reason", "not this week")],
        )
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let shown = state_of(team.dir.path(), &id);
    assert_eq!(shown["state"], "rejected");
    assert!(
        shown["decision"]["by"]
            .as_str()
            .unwrap_or_default()
            .starts_with("overseer:olga (sub olga, via oidc; console "),
        "{shown:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replayed_or_foreign_state_and_a_refusal_open_no_session() {
    let team = Team::start();
    // A state this console never issued.
    let mut v = Visitor::new(&team.base);
    let r = v
        .get("/login/callback?code=made-up&state=forged-state")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("state: this answer does not belong"),
        "{}",
        r.body
    );

    // A real login works once: the same answer again is refused.
    let (callback, r) = v.log_in(&team.idp, "alice").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("Logged in as <strong>alice</strong>"),
        "{}",
        r.body
    );
    let page = v.get("/approvals").await;
    assert_eq!(page.status, 200, "logged in: {}", page.body);
    let mut again = Visitor::new(&team.base);
    again.jar = v.jar.clone();
    let r = again.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // An answer for a login started in another browser (without its cookie).
    let mut mallory = Visitor::new(&team.base);
    let authorize = mallory.start_login().await;
    let callback = team.idp.log_in(&authorize, "alice", "alice-pw").await;
    let mut victim = Visitor::new(&team.base);
    let r = victim.get(&callback).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("started in another browser"), "{}", r.body);
    assert_eq!(
        victim.get("/approvals").await.status,
        303,
        "no session was opened"
    );

    // The provider says no.
    let mut bob = Visitor::new(&team.base);
    let authorize = bob.start_login().await;
    let state = reqwest::Url::parse(&authorize)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("a state");
    let r = bob
        .get(&format!(
            "/login/callback?error=access_denied&error_description=the+user+said+no&state={state}"
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body
            .contains("The identity provider did not log you in: access_denied (the user said no)"),
        "{}",
        r.body
    );
    assert_eq!(bob.get("/approvals").await.status, 303, "not logged in");
    // The state of a refused login is spent too.
    let r = bob
        .get(&format!("/login/callback?code=x&state={state}"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_approval_needs_the_password_typed_again_at_the_provider() {
    let team = Team::start();
    let ian = issue_token(team.dir.path(), &["installer"], "ian", &[]);
    let client = connect_http(&team.server.mcp, &ian, Era::Legacy).await;
    let asked = call_ok(
        &client,
        "approval_request",
        json!({"summary": "wipe the cache", "action": {"op": "wipe"}, "risk": "critical"}),
    )
    .await;
    client.cancel().await.expect("close");
    let id = asked["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_string();
    let path = format!("/approvals/{id}");

    let mut alice = Visitor::new(&team.base);
    let (_, r) = alice.log_in(&team.idp, "alice").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Logged in without the provider being asked to check the password now: approving this
    // one asks for that first.
    let page = alice.get(&path).await;
    assert!(page.body.contains("id=\"reauth\""), "{}", page.body);
    let tokens = form_tokens(&page.body);
    let r = alice
        .post(
            &format!("{path}/approve"),
            &[("csrf", &tokens[1]), ("reason", "cache is stale")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body
            .contains("approving this needs you to log in again at the identity provider"),
        "{}",
        r.body
    );
    assert_eq!(state_of(team.dir.path(), &id)["state"], "pending");

    // "Log in again" asks the provider to ask (prompt=login, max_age=0).
    let r = alice
        .get(&format!("/login/oidc?reauth=1&next={path}"))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let authorize = r.location.expect("to the provider");
    assert!(
        authorize.contains("prompt=login") && authorize.contains("max_age=0"),
        "{authorize}"
    );
    let callback = team.idp.log_in(&authorize, "alice", "alice-pw").await;
    let r = alice.get(&callback).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = alice.get(&path).await;
    assert!(
        page.body.contains("id=\"reauthenticated\""),
        "{}",
        page.body
    );
    let tokens = form_tokens(&page.body);
    let r = alice
        .post(
            &format!("{path}/approve"),
            &[("csrf", &tokens[1]), ("reason", "cache is stale")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let shown = state_of(team.dir.path(), &id);
    assert_eq!(shown["state"], "approved", "{shown:#}");
}
