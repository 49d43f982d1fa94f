//! The console's approvals section against the real binary: a Python SDK client's call waits
//! for a person (it declares no elicitation), and the person decides in a real headless
//! Chromium: approve with a reason, reject, a critical one with the passphrase again (a wrong
//! one refused), a remediation's coloured diff; the client's waiting call returns what was
//! decided. Over plain HTTP: a replayed or forged form, an empty reason, an unknown id and a
//! decided approval are each refused, and nothing is decided by them. Screenshots go to
//! target/console-screenshots/approvals-*.png.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::console::{Browser, ConsoleProc, Http, PASSPHRASE, form_tokens, init_overseer};
use fantoccini::Locator;
use serde_json::{Value, json};

/// The interpreter: `$MCP_COORDINATOR_PYTHON`, else the interop venv (built on first use).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_COORDINATOR_PYTHON") {
        return PathBuf::from(python);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    common::setup::venv(
        &root.join("target/interop-venv"),
        &root.join("tests/interop/requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("cannot make the Python venv for the interop tests:\n{e}"))
}

/// `tests/interop/console_client.py` running, its stdout lines arriving on a channel.
struct PyClient {
    child: Child,
    lines: Receiver<String>,
    name: &'static str,
}

impl PyClient {
    fn start(name: &'static str, data_dir: &Path, args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/console_client.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_mcp-coordinator"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python client");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                let _ = tx.send(line);
            }
        });
        PyClient { child, lines, name }
    }

    /// The rest of the first line starting with `prefix ` (within `secs`).
    fn line(&self, prefix: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(&format!("{prefix} ")) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!("{}: no `{prefix}` line within {secs} s ({e})", self.name),
            }
        }
    }

    /// The approval id of the `PENDING` line.
    fn pending_id(&self) -> String {
        let rest = self.line("PENDING", 90);
        let id = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(id.starts_with("apr_"), "{}: PENDING {rest}", self.name);
        id
    }

    /// The JSON of the `RESULT` line: what the waiting call returned.
    fn result(&self) -> Value {
        serde_json::from_str(&self.line("RESULT", 60)).expect("RESULT is JSON")
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state of an approval, from the CLI (another process, the same database).
fn state_of(dir: &Path, id: &str) -> String {
    let (code, out, err) = common::cli(dir, &["approvals", "show", id, "--json"]);
    assert_eq!(code, 0, "approvals show {id}: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["state"].as_str().unwrap_or_default().to_string()
}

async fn css(b: &Browser, selector: &str) -> fantoccini::elements::Element {
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| {
            panic!("no `{selector}` on the page: {e}");
        })
}

async fn open(b: &Browser, console: &ConsoleProc, path: &str) {
    b.client
        .goto(&format!("{}{path}", common::console::origin(&console.url)))
        .await
        .expect("open a page");
}

async fn source(b: &Browser) -> String {
    b.client.source().await.expect("page source")
}

/// Scrolls the page so that `selector` is in view (screenshots show the viewport).
async fn scroll_to(b: &Browser, selector: &str) {
    b.client
        .execute(
            "document.querySelector(arguments[0]).scrollIntoView()",
            vec![json!(selector)],
        )
        .await
        .expect("scroll");
}

/// Types `reason` (and `passphrase`) into a decision form and submits it.
async fn submit(b: &Browser, form: &str, reason: Option<&str>, passphrase: Option<&str>) {
    if let Some(reason) = reason {
        let field = css(b, &format!("textarea#{form}-reason")).await;
        field.clear().await.expect("clear");
        field.send_keys(reason).await.expect("type the reason");
    }
    if let Some(p) = passphrase {
        css(b, "input#approve-passphrase")
            .await
            .send_keys(p)
            .await
            .expect("type the passphrase");
    }
    css(b, &format!("form#{form} button.{form}"))
        .await
        .click()
        .await
        .expect("submit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_decides_in_a_real_browser_and_the_waiting_client_sees_it() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let approve_me = PyClient::start(
        "approve",
        dir.path(),
        &[
            "approval",
            "--summary",
            "deploy the billing service",
            "--wait",
            "120",
        ],
    );
    let reject_me = PyClient::start(
        "reject",
        dir.path(),
        &[
            "approval",
            "--summary",
            "drop the staging database",
            "--wait",
            "120",
        ],
    );
    let critical = PyClient::start(
        "critical",
        dir.path(),
        &[
            "approval",
            "--risk",
            "critical",
            "--summary",
            "rotate the production signing key",
            "--wait",
            "120",
        ],
    );
    let (a, b, c) = (
        approve_me.pending_id(),
        reject_me.pending_id(),
        critical.pending_id(),
    );

    let browser = Browser::start(1280, 900).await;
    browser.login(&console.url, PASSPHRASE).await;
    open(&browser, &console, "/approvals").await;
    css(&browser, "table.approvals").await;
    let list = source(&browser).await;
    for id in [&a, &b, &c] {
        assert!(
            list.contains(&format!("href=\"/approvals/{id}\"")),
            "{id} listed:\n{list}"
        );
    }
    assert!(list.contains("risk-critical"), "{list}");
    browser.screenshot("approvals-list").await;

    // Approve with a reason: the client's waiting call returns approved, by the console.
    css(&browser, &format!("a[href='/approvals/{a}']"))
        .await
        .click()
        .await
        .expect("open the approval");
    css(&browser, "form#approve").await;
    let page = source(&browser).await;
    assert!(page.contains("deploy the billing service"), "{page}");
    assert!(
        page.contains("&quot;service&quot;: &quot;console-test&quot;")
            || page.contains("\"service\": \"console-test\""),
        "pretty JSON action:\n{page}"
    );
    assert!(
        browser
            .client
            .find(Locator::Css("input#approve-passphrase"))
            .await
            .is_err(),
        "a medium approval asks no passphrase"
    );
    browser.screenshot("approvals-detail").await;
    submit(&browser, "approve", Some("checked the deploy plan"), None).await;
    let notice = css(&browser, ".notice").await.text().await.unwrap();
    assert!(notice.contains("approved"), "{notice}");
    browser.screenshot("approvals-after-approve").await;
    let got = approve_me.result();
    assert_eq!(got["state"], "approved", "{got}");
    assert_eq!(got["decision"]["via"], "console", "{got}");
    assert_eq!(
        got["decision"]["reason"], "checked the deploy plan",
        "{got}"
    );
    let by = got["decision"]["by"].as_str().unwrap_or_default();
    assert!(
        by.starts_with("overseer:ada (console http://127.0.0.1:"),
        "{got}"
    );

    // Reject another: the client sees rejected.
    open(&browser, &console, &format!("/approvals/{b}")).await;
    submit(&browser, "reject", Some("not on a Friday"), None).await;
    let notice = css(&browser, ".notice").await.text().await.unwrap();
    assert!(notice.contains("rejected"), "{notice}");
    let got = reject_me.result();
    assert_eq!(got["state"], "rejected", "{got}");
    assert_eq!(got["decision"]["reason"], "not on a Friday", "{got}");

    // A critical one asks for the passphrase again; a wrong one decides nothing.
    open(&browser, &console, &format!("/approvals/{c}")).await;
    css(
        &browser,
        "form#approve input#approve-passphrase[type=password]",
    )
    .await;
    scroll_to(&browser, "form#approve").await;
    browser.screenshot("approvals-critical").await;
    submit(
        &browser,
        "approve",
        Some("key rotation is due"),
        Some("not the passphrase"),
    )
    .await;
    let error = css(&browser, "form#approve .error")
        .await
        .text()
        .await
        .unwrap();
    assert!(error.contains("wrong passphrase"), "{error}");
    assert!(error.contains("more wrong answer"), "{error}");
    scroll_to(&browser, "form#approve").await;
    browser
        .screenshot("approvals-critical-wrong-passphrase")
        .await;
    assert_eq!(state_of(dir.path(), &c), "pending");
    let kept = css(&browser, "textarea#approve-reason")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("key rotation is due"),
        "the reason survives a refusal"
    );
    submit(&browser, "approve", None, Some(PASSPHRASE)).await;
    let notice = css(&browser, ".notice").await.text().await.unwrap();
    assert!(notice.contains("approved"), "{notice}");
    let got = critical.result();
    assert_eq!(got["state"], "approved", "{got}");
    assert_eq!(got["decision"]["via"], "console", "{got}");

    // The history filters by state.
    open(&browser, &console, "/approvals/history?state=approved").await;
    css(&browser, "form#history-filters").await;
    let history = source(&browser).await;
    assert!(
        history.contains(&format!("/approvals/{a}"))
            && history.contains(&format!("/approvals/{c}")),
        "{history}"
    );
    assert!(
        !history.contains(&format!("/approvals/{b}")),
        "a rejected one is filtered out:\n{history}"
    );
    browser.screenshot("approvals-history").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remediation_approval_shows_its_diff_in_colour_at_desktop_and_phone_width() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let console = ConsoleProc::start(dir.path(), &[]);
    let home = dir.path().join("home").display().to_string();
    let rem = PyClient::start("remediation", dir.path(), &["remediation", "--home", &home]);
    let id = rem.pending_id();

    let browser = Browser::start(1280, 900).await;
    browser.login(&console.url, PASSPHRASE).await;
    open(&browser, &console, &format!("/approvals/{id}")).await;
    css(&browser, "form#approve").await;
    let added = css(&browser, "section.diff-file pre.diff span.add")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        added.contains("2025.4.25"),
        "the pinned version is an added line: {added}"
    );
    let removed = css(&browser, "section.diff-file pre.diff span.del")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        removed.starts_with('-') && removed.contains("server-memory"),
        "{removed}"
    );
    css(&browser, "section.diff-file pre.diff span.hunk").await;
    let path = css(&browser, "section.diff-file h3 code")
        .await
        .text()
        .await
        .unwrap();
    assert!(path.ends_with(".cursor/mcp.json"), "{path}");
    // The colours come from the stylesheet, per class.
    let colour = css(&browser, "pre.diff span.add")
        .await
        .css_value("background-color")
        .await
        .unwrap();
    assert_ne!(
        colour,
        css(&browser, "pre.diff span.ctx")
            .await
            .css_value("background-color")
            .await
            .unwrap(),
        "added lines are coloured"
    );
    scroll_to(&browser, "section.diff-file").await;
    browser.screenshot("approvals-diff").await;
    browser.close().await;

    let phone = Browser::start(390, 844).await;
    phone.login(&console.url, PASSPHRASE).await;
    open(&phone, &console, "/approvals").await;
    css(&phone, "table.approvals").await;
    phone.screenshot("approvals-list-phone").await;
    open(&phone, &console, &format!("/approvals/{id}")).await;
    css(&phone, "form#approve").await;
    let shot = phone.screenshot("approvals-detail-phone").await;
    assert!(common::console::read_all(&shot).starts_with(b"\x89PNG"));
    // Nothing overflows the phone's width but the scrolling boxes (tables, pre).
    let wide: bool = phone
        .client
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap()
        .as_bool()
        .unwrap_or(true);
    assert!(!wide, "the detail page scrolls sideways at phone width");
    phone.close().await;
}

/// A pending approval made through MCP by a client without elicitation; returns its id.
async fn pending_approval(dir: &Path, summary: &str, risk: &str) -> (common::Client, String) {
    let client = common::connect(dir, &[], common::Era::Legacy).await;
    let out = common::call_ok(
        &client,
        "approval_request",
        json!({"summary": summary, "action": {"do": summary}, "risk": risk}),
    )
    .await;
    assert_eq!(out["state"], "pending", "{out}");
    let id = out["approval"]["id"].as_str().unwrap().to_string();
    (client, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_forged_and_incomplete_decision_forms_decide_nothing() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let (client, id) = pending_approval(dir.path(), "restart the queue", "high").await;
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    let approve = format!("/approvals/{id}/approve");

    // No session: refused before anything else.
    let r = http.post(&approve, &[("csrf", "x"), ("reason", "r")]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);

    let page = http.get(&format!("/approvals/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"approve\""), "{}", page.body);
    let tokens = form_tokens(&page.body);
    assert!(
        tokens.len() >= 3,
        "logout, approve and reject each carry a token"
    );

    // A forged token.
    let r = http
        .post(&approve, &[("csrf", "00ff"), ("reason", "forged")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("not issued to your session"), "{}", r.body);
    assert!(
        r.body.contains(">forged</textarea>"),
        "what was typed comes back: {}",
        r.body
    );
    assert_eq!(state_of(dir.path(), &id), "pending");

    // An empty reason names the field, and uses the token up.
    let approve_token = &tokens[1];
    let r = http
        .post(&approve, &[("csrf", approve_token), ("reason", "  ")])
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("reason: required"), "{}", r.body);
    assert_eq!(state_of(dir.path(), &id), "pending");

    // The same form again (a replay) is refused, though it now has a reason.
    let r = http
        .post(&approve, &[("csrf", approve_token), ("reason", "replayed")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("already submitted once"), "{}", r.body);
    assert_eq!(state_of(dir.path(), &id), "pending");

    // An unknown approval is a 404 page.
    let r = http.get("/approvals/apr_0000").await;
    assert_eq!(r.status, 404, "{}", r.body);

    // A fresh form decides; the decided approval then refuses another decision with 409.
    let page = http.get(&format!("/approvals/{id}")).await;
    let tokens = form_tokens(&page.body);
    let r = http
        .post(
            &approve,
            &[("csrf", &tokens[1]), ("reason", "queue is stuck")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/approvals/{id}?decided=1").as_str())
    );
    assert_eq!(state_of(dir.path(), &id), "approved");
    let done = http.get(r.location.as_deref().unwrap()).await;
    assert!(done.body.contains("class=\"notice\""), "{}", done.body);
    assert!(
        !done.body.contains("id=\"approve\""),
        "no forms once decided"
    );
    let r = http
        .post(
            &format!("/approvals/{id}/reject"),
            &[("csrf", &tokens[2]), ("reason", "too late")],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("already approved"), "{}", r.body);
    let got = common::call_ok(&client, "approval_get", json!({"approval_id": id})).await;
    assert_eq!(got["state"], "approved");
    assert_eq!(got["decision"]["via"], "console");
    assert_eq!(got["decision"]["reason"], "queue is stuck");

    // The history's filters are checked and name the field.
    let r = http.get("/approvals/history?risk=huge").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("risk: unknown risk"), "{}", r.body);
    let r = http
        .get("/approvals/history?risk=high&requester=legacy-test")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&format!("/approvals/{id}")), "{}", r.body);
    let r = http.get("/approvals/history?risk=low").await;
    assert!(!r.body.contains(&format!("/approvals/{id}")), "{}", r.body);
    client.cancel().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_approval_needs_the_passphrase_and_a_locked_overseer_is_refused() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let (client, id) = pending_approval(dir.path(), "wipe the old backups", "critical").await;
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let approve = format!("/approvals/{id}/approve");
    let fresh = |body: &str| form_tokens(body)[1].clone();

    let page = http.get(&format!("/approvals/{id}")).await;
    assert!(
        page.body.contains("id=\"approve-passphrase\""),
        "{}",
        page.body
    );
    // Without the passphrase: the field is named.
    let r = http
        .post(&approve, &[("csrf", &fresh(&page.body)), ("reason", "old")])
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("passphrase: required"), "{}", r.body);
    // Three wrong answers lock the passphrase (the CLI's lock: the same rows).
    let mut body = r.body;
    for left in ["2 more", "1 more"] {
        let r = http
            .post(
                &approve,
                &[
                    ("csrf", &fresh(&body)),
                    ("reason", "old"),
                    ("passphrase", "guess"),
                ],
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains(left), "{left}: {}", r.body);
        assert!(!r.body.contains("guess"), "a passphrase never comes back");
        body = r.body;
    }
    let r = http
        .post(
            &approve,
            &[
                ("csrf", &fresh(&body)),
                ("reason", "old"),
                ("passphrase", "guess"),
            ],
        )
        .await;
    assert_eq!(r.status, 429, "the third wrong answer locks: {}", r.body);
    // Locked now: even the right passphrase is refused, and nothing is decided.
    let r = http
        .post(
            &approve,
            &[
                ("csrf", &fresh(&r.body)),
                ("reason", "old"),
                ("passphrase", PASSPHRASE),
            ],
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("locked"), "{}", r.body);
    assert_eq!(state_of(dir.path(), &id), "pending");
    // Rejecting asks no passphrase (saying no is never the risky direction).
    let r = http
        .post(
            &format!("/approvals/{id}/reject"),
            &[("csrf", &form_tokens(&r.body)[2]), ("reason", "")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(state_of(dir.path(), &id), "rejected");
    client.cancel().await.ok();
}

/// What the policy reserves for an out-of-band decision needs the passphrase again in the
/// console even below `critical` (a session cookie reaches every port of the host; the
/// passphrase does not), while an approval the client may decide does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_band_approval_needs_the_passphrase_again_whatever_its_risk() {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let config = dir.path().join("policy.toml");
    std::fs::write(
        &config,
        "[[approvals.rules]]\nkind = \"generic\"\nrisk = \"high\"\ndecide_with = \"out_of_band\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let client = common::connect(dir.path(), &["--config", &config], common::Era::Legacy).await;
    let mut ids = Vec::new();
    for risk in ["high", "medium"] {
        let out = common::call_ok(
            &client,
            "approval_request",
            json!({"summary": format!("a {risk} one"), "action": {"risk": risk}, "risk": risk}),
        )
        .await;
        ids.push(out["approval"]["id"].as_str().unwrap().to_string());
    }
    let console = ConsoleProc::start(dir.path(), &["--config", &config]);
    let mut http = Http::new(&console.url);
    assert_eq!(http.login(PASSPHRASE).await.status, 303);
    let high = http.get(&format!("/approvals/{}", ids[0])).await;
    assert!(
        high.body.contains("id=\"approve-passphrase\""),
        "{}",
        high.body
    );
    let r = http
        .post(
            &format!("/approvals/{}/approve", ids[0]),
            &[("csrf", &form_tokens(&high.body)[1]), ("reason", "fine")],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("passphrase: required"), "{}", r.body);
    let r = http
        .post(
            &format!("/approvals/{}/approve", ids[0]),
            &[
                ("csrf", &form_tokens(&r.body)[1]),
                ("reason", "fine"),
                ("passphrase", PASSPHRASE),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let medium = http.get(&format!("/approvals/{}", ids[1])).await;
    assert!(
        !medium.body.contains("approve-passphrase"),
        "{}",
        medium.body
    );
    let r = http
        .post(
            &format!("/approvals/{}/approve", ids[1]),
            &[("csrf", &form_tokens(&medium.body)[1]), ("reason", "fine")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    drop(client);
}
