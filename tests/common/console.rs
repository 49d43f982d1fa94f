//! Helpers for the console tests: set an overseer on a terminal, run `mcp-coordinator console`
//! and read its URL, talk to it over HTTP as a browser would (cookies, Origin), and drive a
//! real headless Chromium through chromedriver (WebDriver) with screenshots under target/.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

pub const PASSPHRASE: &str = "correct horse battery staple";

/// Sets the overseer `name` with `passphrase` by answering `overseer init` on a terminal
/// (script(1) gives it one, as a person would have).
pub fn init_overseer(data_dir: &Path, name: &str, passphrase: &str) {
    on_terminal(
        data_dir,
        &["overseer", "init"],
        &[
            ("Overseer name", name),
            ("New passphrase", passphrase),
            ("again", passphrase),
        ],
    );
}

/// Changes the overseer's passphrase from `old` to `new` with `overseer change`.
pub fn change_passphrase(data_dir: &Path, old: &str, new: &str) {
    on_terminal(
        data_dir,
        &["overseer", "change"],
        &[
            ("Current passphrase", old),
            ("New passphrase", new),
            ("again", new),
        ],
    );
}

/// Runs `mcp-coordinator --data-dir DIR ARGS` on a terminal (script(1)), answering each
/// prompt in turn; the command must succeed. Returns what the terminal showed.
pub fn on_terminal(data_dir: &Path, args: &[&str], answers: &[(&str, &str)]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut inner = format!(
        "{} --data-dir {}",
        BIN,
        quote(&data_dir.display().to_string())
    );
    for a in args {
        inner.push(' ');
        inner.push_str(&quote(a));
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env_remove("MCP_COORDINATOR_DB")
        .env_remove("MCP_COORDINATOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) runs the command");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut seen = 0;
    for (prompt, answer) in answers {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = screen.lock().unwrap().clone();
            if let Some(i) = s[seen..].find(prompt) {
                seen += i + prompt.len();
                break;
            }
            assert!(Instant::now() < deadline, "no `{prompt}` prompt:\n{s}");
            std::thread::sleep(Duration::from_millis(20));
        }
        stdin
            .write_all(format!("{answer}\r").as_bytes())
            .expect("answer the prompt");
    }
    let status = child.wait().expect("the command ends");
    drop(stdin);
    let _ = reader.join();
    let screen = screen.lock().unwrap().clone();
    assert!(status.success(), "{args:?} failed:\n{screen}");
    screen
}

/// A running `mcp-coordinator console` (killed when dropped).
pub struct ConsoleProc {
    child: Child,
    pub url: String,
}

impl ConsoleProc {
    /// Starts `mcp-coordinator --data-dir DIR console --listen 127.0.0.1:0 EXTRA..` and waits
    /// for the URL it prints.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// [`start`](Self::start) listening on `listen`.
    pub fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "warn", "console", "--listen", listen])
            .args(extra)
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the console");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line
                    .split_whitespace()
                    .find(|w| w.starts_with("http://") || w.starts_with("https://"))
                {
                    let _ = tx.send(url.to_string());
                }
                eprintln!("[console] {line}");
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the console prints its URL");
        ConsoleProc { child, url }
    }
}

impl ConsoleProc {
    /// Sends SIGTERM (what Ctrl-C or a service manager sends) and waits up to `timeout` for
    /// the console to exit: its exit status, or `None` if it was still running.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ConsoleProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The console's `http://127.0.0.1:PORT` origin from its URL.
pub fn origin(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// An HTTP client that behaves like a browser on the console's own pages: it keeps the session
/// cookie and sends the console's Origin with forms.
pub struct Http {
    pub base: String,
    client: reqwest::Client,
    pub cookie: Option<String>,
    /// The session cookie's name (`mcpc_session_PORT`), as the console set it.
    pub cookie_name: String,
}

/// What came back.
pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Http {
    pub fn new(url: &str) -> Self {
        Http {
            base: origin(url),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
            cookie_name: "mcpc_session".into(),
        }
    }

    fn absorb(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            if let Some(pair) = v.split(';').next()
                && let Some((name, value)) = pair.split_once('=')
                && name.starts_with("mcpc_session")
            {
                self.cookie_name = name.to_string();
                self.cookie = (!value.is_empty()).then(|| value.to_string());
            }
        }
    }

    async fn reply(&mut self, r: reqwest::Response) -> Reply {
        self.absorb(&r);
        Reply {
            status: r.status().as_u16(),
            location: r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(String::from),
            headers: r.headers().clone(),
            body: r.text().await.unwrap_or_default(),
        }
    }

    fn with_cookie(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => rb.header("cookie", format!("{}={c}", self.cookie_name)),
            None => rb,
        }
    }

    /// GET `path` as a page view.
    pub async fn get(&mut self, path: &str) -> Reply {
        let rb = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html");
        let r = self.with_cookie(rb).send().await.expect("GET");
        self.reply(r).await
    }

    /// GET with extra headers (Host, Origin).
    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut rb = self
            .client
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = self.with_cookie(rb).send().await.expect("GET");
        self.reply(r).await
    }

    /// POST a form as the console's own page would (its Origin).
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let origin = self.base.clone();
        self.post_with(path, fields, &[("origin", origin.as_str())])
            .await
    }

    /// POST a form with exactly these extra headers.
    pub async fn post_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut rb = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = self.with_cookie(rb).send().await.expect("POST");
        self.reply(r).await
    }

    /// Logs in with `passphrase`: reads the login form's token, posts it. Returns the reply
    /// to the POST (303 to `/` when it worked).
    pub async fn login(&mut self, passphrase: &str) -> Reply {
        let page = self.get("/login").await;
        let token = form_token(&page.body).expect("the login page has a form token");
        self.post("/login", &[("csrf", &token), ("passphrase", passphrase)])
            .await
    }
}

/// The first `name="csrf"` value in a page.
pub fn form_token(html: &str) -> Option<String> {
    form_tokens(html).into_iter().next()
}

/// Every `name="csrf"` value in a page, in order.
pub fn form_tokens(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("name=\"csrf\" value=\"") {
        rest = &rest[i + "name=\"csrf\" value=\"".len()..];
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

/// A headless Chromium driven over WebDriver (chromedriver), with a fresh profile.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// Where screenshots go: target/console-screenshots/.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the console tests drive a real Chromium; install Debian's \
                 packages with `apt-get install chromium chromium-driver` (README, Run all tests)"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connected = fantoccini::ClientBuilder::rustls()
                .expect("a TLS connector")
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
            match connected {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
            shots: screenshot_dir(),
        }
    }

    /// Saves a screenshot of the current page as target/console-screenshots/NAME.png.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Logs in at `url` with `passphrase` through the login form.
    pub async fn login(&self, url: &str, passphrase: &str) {
        use fantoccini::Locator;
        self.client
            .goto(&format!("{}/login", origin(url)))
            .await
            .expect("open /login");
        let field = self
            .client
            .wait()
            .for_element(Locator::Css("input#passphrase"))
            .await
            .expect("the passphrase field");
        field.send_keys(passphrase).await.expect("type");
        self.client
            .find(Locator::Css("form[action='/login'] button[type=submit]"))
            .await
            .expect("the login button")
            .click()
            .await
            .expect("click");
        if let Err(e) = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("form.logout"))
            .await
        {
            let source = self.client.source().await.unwrap_or_default();
            panic!("not logged in (no logout form): {e}; the page:\n{source}");
        }
    }

    /// Ends the WebDriver session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Reads a file if it exists (for a screenshot check).
pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut v);
    }
    v
}
