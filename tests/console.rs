//! The console's door: logging in with the overseer's passphrase, sessions, and every refusal
//! (no session, a forged or replayed form, a foreign Origin, a wrong Host, a guessed
//! passphrase), over HTTP against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::console::{ConsoleProc, Http, PASSPHRASE, form_token, init_overseer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_in_takes_the_overseers_passphrase_and_a_session_cookie() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);

    let page = http.get("/").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some("/login?next=%2F"));
    let api = http.post("/logout", &[("csrf", "x")]).await;
    assert_eq!(api.status, 401, "a form without a session: {}", api.body);

    let login = http.get("/login").await;
    assert!(
        login.body.contains("overseer <strong>ada</strong>"),
        "{}",
        login.body
    );
    assert!(login.body.contains("type=\"password\""), "{}", login.body);

    let wrong = http.login("not the passphrase").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains("wrong passphrase"), "{}", wrong.body);
    assert!(http.cookie.is_none());

    let ok = http.login(PASSPHRASE).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    let set = ok.headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    let port = console
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap();
    assert!(
        set.starts_with(&format!("mcpc_session_{port}=")),
        "one cookie per console on a host (browsers share cookies across ports): {set}"
    );
    assert!(set.contains("SameSite=Strict"), "{set}");
    let home = http.get("/").await;
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("ada"), "{}", home.body);
    let csp = home.headers.get("content-security-policy").unwrap();
    assert!(csp.to_str().unwrap().contains("frame-ancestors 'none'"));

    // Logging out ends the session on the server, not only in the browser.
    let token = form_token(&home.body).unwrap();
    let cookie = http.cookie.clone();
    let out = http.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    http.cookie = cookie;
    assert_eq!(http.get("/").await.status, 303, "the old cookie is dead");

    // The login is in the audit log.
    let (code, out, err) = common::cli(dir.path(), &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("console.login"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_foreign_and_misdirected_requests_are_refused() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let home = http.get("/").await;
    let token = form_token(&home.body).unwrap();

    // A forged token.
    let forged = http.post("/logout", &[("csrf", "0123abcd")]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.body.contains("not issued to your session"),
        "{}",
        forged.body
    );
    // A foreign Origin, with a real token.
    let foreign = http
        .post_with(
            "/logout",
            &[("csrf", &token)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert!(foreign.body.contains("cross-origin"), "{}", foreign.body);
    // No Origin at all.
    let bare = http.post_with("/logout", &[("csrf", &token)], &[]).await;
    assert_eq!(bare.status, 403, "{}", bare.body);
    // A wrong Host (a DNS-rebound name pointing here).
    let port = console
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/');
    let rebound = http
        .get_with("/", &[("host", &format!("attacker.example:{port}"))])
        .await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert!(rebound.body.contains("DNS rebinding"), "{}", rebound.body);
    // The token still works once (the refusals did not consume it), then is a replay.
    let cookie = http.cookie.clone();
    assert_eq!(http.post("/logout", &[("csrf", &token)]).await.status, 303);
    http.cookie = cookie;
    let again = http.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(
        again.status, 401,
        "the session is gone after logging out: {}",
        again.body
    );

    // A replay within a live session.
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let page = http.get("/").await;
    let token = form_token(&page.body).unwrap();
    let cookie = http.cookie.clone().unwrap();
    let mut other = Http::new(&console.url);
    assert_eq!(other.login(PASSPHRASE).await.status, 303);
    let stolen = other.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(
        stolen.status, 403,
        "another session's token: {}",
        stolen.body
    );
    assert_eq!(http.cookie.as_deref(), Some(cookie.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_passphrase_is_limited_and_locks() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = http.login(&format!("guess number {i}")).await;
        statuses.push(r.status);
        if i == 2 {
            assert!(r.body.contains("locked"), "{}", r.body);
        }
    }
    assert_eq!(
        statuses,
        [401, 401, 429],
        "the third wrong answer locks the checks"
    );
    // Even the right passphrase is refused while locked (twice).
    for _ in 0..2 {
        let right = http.login(PASSPHRASE).await;
        assert_eq!(right.status, 429, "{}", right.body);
        assert!(right.body.contains("locked"), "{}", right.body);
        assert!(http.cookie.is_none());
    }
    // And the per-address limit (5 a minute by default) refuses the sixth attempt outright.
    let sixth = http.login(PASSPHRASE).await;
    assert_eq!(sixth.status, 429, "{}", sixth.body);
    assert!(
        sixth.body.contains("Too many login attempts"),
        "{}",
        sixth.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_passphrase_ends_the_sessions_of_the_old_one() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    assert_eq!(http.get("/").await.status, 200);
    let new = "a different passphrase entirely";
    common::console::change_passphrase(dir.path(), PASSPHRASE, new);
    // The console trusts the credential it read for 2 s at most.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let after = http.post("/logout", &[("csrf", "x")]).await;
    assert_eq!(after.status, 401, "{}", after.body);
    assert!(after.body.contains("passphrase changed"), "{}", after.body);
    assert_eq!(http.get("/").await.status, 303, "the session is gone");
    assert_eq!(
        http.login(PASSPHRASE).await.status,
        401,
        "the old passphrase"
    );
    assert_eq!(http.login(new).await.status, 303, "the new one");
}

#[test]
fn without_an_overseer_nobody_logs_in() {
    let dir = common::data_dir();
    // A database must exist: make one by listing approvals of a served database.
    let (code, _, err) = common::cli(dir.path(), &["overseer", "status"]);
    assert!(code == 0 || code == 1, "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _client = common::connect(dir.path(), &[], common::Era::Legacy).await;
        let console = ConsoleProc::start(dir.path(), &[]);
        let mut http = Http::new(&console.url);
        let page = http.get("/login").await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("No overseer is set"), "{}", page.body);
        assert!(!page.body.contains("type=\"password\""), "{}", page.body);
    });
}

#[test]
fn a_non_loopback_address_needs_tls_or_a_proxy() {
    let dir = common::data_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        drop(common::connect(dir.path(), &[], common::Era::Legacy).await);
    });
    let (code, _, err) = common::cli(dir.path(), &["console", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not loopback"), "{err}");
    assert!(err.contains("behind_proxy"), "{err}");
    // Half a TLS setup is named, not ignored.
    let config = dir.path().join("half.toml");
    std::fs::write(&config, "[console]\ntls_cert = \"/nonexistent.pem\"\n").unwrap();
    let config = config.display().to_string();
    let (code, _, err) = common::cli(
        dir.path(),
        &["--config", &config, "console", "--listen", "0.0.0.0:0"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tls_cert and tls_key: give both"), "{err}");
    // A proxy in front: accepted, and it answers to the public URL's host.
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[console]\nbehind_proxy = true\npublic_url = \"https://oversight.example.com\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let console = ConsoleProc::start_at(dir.path(), "0.0.0.0:0", &["--config", &config]);
    assert_eq!(console.url, "https://oversight.example.com");
    drop(console);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_with_a_real_browser_at_desktop_and_phone_width() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    for (name, width, height) in [("desktop", 1280, 900), ("phone", 390, 844)] {
        let browser = common::console::Browser::start(width, height).await;
        browser
            .client
            .goto(&console.url)
            .await
            .expect("open the console");
        let login_url = browser.client.current_url().await.unwrap();
        assert_eq!(login_url.path(), "/login", "{login_url}");
        browser.screenshot(&format!("login-{name}")).await;
        browser.login(&console.url, PASSPHRASE).await;
        let shot = browser.screenshot(&format!("status-{name}")).await;
        assert!(common::console::read_all(&shot).starts_with(b"\x89PNG"));
        let source = browser.client.source().await.unwrap();
        assert!(source.contains("ada"), "{source}");
        browser.close().await;
    }
}

/// With a certificate and key in `[console]`, the console serves HTTPS, may listen beyond
/// loopback, and marks its cookie `Secure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_it_serves_https_beyond_loopback_with_secure_cookies() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[console]\ntls_cert = {:?}\ntls_key = {:?}\n",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let console = ConsoleProc::start_at(dir.path(), "0.0.0.0:0", &["--config", &config]);
    assert!(console.url.starts_with("https://"), "{}", console.url);
    let port = console
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let page = client.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let token = form_token(&page.text().await.unwrap()).unwrap();
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", token.as_str()), ("passphrase", PASSPHRASE)])
        .finish();
    let login = client
        .post(format!("{base}/login"))
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no page.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/login")).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

/// After logging in, the console sends the person back only to one of its own paths: a `next`
/// that a browser would read as another host (`//host`, a backslash, a tab it strips) goes to
/// `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_after_login_is_always_the_consoles_own() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    for (next, to) in [
        ("/approvals?state=pending", "/approvals?state=pending"),
        ("/\t/evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
    ] {
        let mut http = Http::new(&console.url);
        let page = http.get("/login").await;
        let token = form_token(&page.body).unwrap();
        let r = http
            .post(
                "/login",
                &[("csrf", &token), ("passphrase", PASSPHRASE), ("next", next)],
            )
            .await;
        assert_eq!(r.status, 303, "{next:?}: {}", r.body);
        assert_eq!(r.location.as_deref(), Some(to), "{next:?}");
    }
}

/// Behind a proxy every peer is the proxy: login attempts are counted per address the proxy
/// saw (the last `X-Forwarded-For` hop), so one client's guesses do not lock out the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_login_attempts_count_per_forwarded_address() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[console]\nbehind_proxy = true\npublic_url = \"https://oversight.example.com\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _console = ConsoleProc::start_at(
        dir.path(),
        &format!("0.0.0.0:{port}"),
        &["--config", &config],
    );
    let mut http = Http::new(&format!("http://127.0.0.1:{port}"));
    for _ in 0..5 {
        let r = attempt(&mut http, "203.0.113.7, 198.51.100.1").await;
        assert!(!r.body.contains("Too many"), "{}", r.body);
    }
    let sixth = attempt(&mut http, "203.0.113.7, 198.51.100.1").await;
    assert_eq!(sixth.status, 429, "{}", sixth.body);
    assert!(
        sixth.body.contains("Too many login attempts"),
        "{}",
        sixth.body
    );
    let other = attempt(&mut http, "203.0.113.7, 198.51.100.2").await;
    assert!(
        !other.body.contains("Too many"),
        "another client: {}",
        other.body
    );
}

/// One login attempt through a proxy for the forwarded address `from`.
async fn attempt(http: &mut Http, from: &str) -> common::console::Reply {
    let headers = [
        ("host", "oversight.example.com"),
        ("origin", "https://oversight.example.com"),
        ("x-forwarded-for", from),
    ];
    let page = http.get_with("/login", &headers[..1]).await;
    let token = form_token(&page.body).expect("a login form");
    http.post_with(
        "/login",
        &[("csrf", &token), ("passphrase", "a wrong guess, again")],
        &headers,
    )
    .await
}
