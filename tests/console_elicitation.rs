//! URL-mode elicitation and the console link, with the official MCP Python SDK as the client
//! (`tests/interop/console_elicitation.py` reports what it receives, line by line): a client
//! that declares URL elicitation is sent to the console page of a critical approval, a real
//! headless Chromium logs in there and approves (the passphrase again), and the client hears
//! `notifications/elicitation/complete` for that elicitation and then `approved`; a dismissed
//! URL records nothing; a client without elicitation gets the console link in the pending
//! result and in every progress message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::console::{Browser, Http, PASSPHRASE, init_overseer};
use fantoccini::Locator;
use serde_json::Value;

/// Where the interop venv lives (shared with tests/python_interop.rs).
const VENV: &str = "target/interop-venv";
/// How long the script may take to say the next thing.
const STEP: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_COORDINATOR_PYTHON") {
        return PathBuf::from(python);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    common::setup::venv(
        &root.join(VENV),
        &root.join("tests/interop/requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("cannot make the Python venv for the interop tests:\n{e}"))
}

/// The running script and the events it printed so far.
struct Script {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Script {
    fn start(data_dir: &Path, args: &[&str]) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/console_elicitation.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--binary", common::BIN, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the Python script");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[python] {line}");
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("[python] (not an event)"),
                }
            }
        });
        Script {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for the next event named `event` (keeping every event seen on the way).
    fn next(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    assert_ne!(v["event"], "error", "the script failed: {v}");
                    if v["event"] == event {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{event}` event within {STEP:?}; seen: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the script ended without a `{event}` event; seen: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// The names of the events seen so far, in order.
    fn order(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|v| v["event"].as_str())
            .collect()
    }

    fn finish(mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "the script exited {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the script did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http://127.0.0.1:PORT` of a console page's URL, and the approval id it names; panics
/// unless the URL is the loopback console page of an approval.
fn console_page(url: &str) -> (String, String) {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("not a URL: {url:?}: {e}"));
    assert_eq!(parsed.scheme(), "http", "{url}");
    assert_eq!(parsed.host_str(), Some("127.0.0.1"), "{url}");
    let id = parsed
        .path()
        .strip_prefix("/approvals/")
        .unwrap_or_else(|| panic!("not an approval page: {url}"));
    assert!(id.starts_with("apr_") && !id.contains('/'), "{url}");
    (parsed.origin().ascii_serialization(), id.to_string())
}

/// The round trip the issue asks for: the client declares URL elicitation, receives the
/// console page of a critical approval, the browser logs in there and approves with the
/// passphrase again, and the client receives the completion for that very elicitation, then
/// `approved` decided in the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_url_elicitation_is_sent_to_the_console_and_hears_the_decision() {
    round_trip("legacy").await;
}

/// The same on 2026-07-28: the page travels in an input-required result, the SDK retries once
/// the person agreed to open it, and the retried call returns the console's decision (no
/// session, so no completion notification: the result is the completion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_07_28_client_is_sent_to_the_console_in_an_input_required_result() {
    round_trip("2026-07-28").await;
}

async fn round_trip(mode: &str) {
    let legacy = mode == "legacy";
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    let mut script = Script::start(dir.path(), &["--client", "url", "--mode", mode]);

    let asked = script.next("elicit");
    assert_eq!(asked["mode"], "url", "{asked}");
    let url = asked["url"].as_str().expect("a URL").to_string();
    let elicitation_id = asked["elicitation_id"]
        .as_str()
        .expect("an elicitation id")
        .to_string();
    let (origin, approval_id) = console_page(&url);
    let message = asked["message"].as_str().unwrap();
    assert!(message.contains("oversight console"), "{message}");
    assert!(
        message.contains("Drop the production database"),
        "{message}"
    );
    assert!(
        message.contains(&format!("approvals approve {approval_id}")),
        "the CLI command is the alternative: {message}"
    );

    // The person follows the link: the console asks them to log in first, then shows the page.
    let browser = Browser::start(1280, 900).await;
    browser.client.goto(&url).await.expect("open the link");
    browser
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input#passphrase"))
        .await
        .expect("the console asks to log in first")
        .send_keys(PASSPHRASE)
        .await
        .expect("type the passphrase");
    browser
        .client
        .find(Locator::Css("form[action='/login'] button[type=submit]"))
        .await
        .expect("the login button")
        .click()
        .await
        .expect("log in");
    let reason = browser
        .client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form#approve textarea#approve-reason"))
        .await
        .expect("after logging in, the approval's page with its approve form");
    assert_eq!(
        browser.client.current_url().await.unwrap().as_str(),
        url,
        "logging in leads back to the page the client opened"
    );
    browser
        .screenshot(&format!("url-elicitation-{mode}-approval"))
        .await;
    reason
        .send_keys("checked in the console")
        .await
        .expect("type a reason");
    browser
        .client
        .find(Locator::Css("form#approve input#approve-passphrase"))
        .await
        .expect("a critical approval asks the passphrase again")
        .send_keys(PASSPHRASE)
        .await
        .expect("type the passphrase again");
    browser
        .client
        .find(Locator::Css("form#approve button.approve"))
        .await
        .expect("the approve button")
        .click()
        .await
        .expect("approve");

    if legacy {
        let complete = script.next("complete");
        assert_eq!(
            complete["elicitation_id"], elicitation_id,
            "the completion names the elicitation the client was sent"
        );
    }
    let result = script.next("result");
    browser
        .screenshot(&format!("url-elicitation-{mode}-approved"))
        .await;
    browser.close().await;
    let order = script.order();
    let at = |e: &str| order.iter().position(|x| *x == e);
    if legacy {
        assert!(
            at("elicit") < at("complete") && at("complete") < at("result"),
            "asked, then completed, then the result: {order:?}"
        );
    } else {
        assert_eq!(at("complete"), None, "{order:?}");
        assert!(at("elicit") < at("result"), "{order:?}");
    }
    assert_eq!(result["is_error"], false, "{result}");
    let out = &result["structured"];
    assert_eq!(out["state"], "approved", "{out:#}");
    assert_eq!(out["approval"]["id"], approval_id.as_str(), "{out:#}");
    let decision = &out["approval"]["decision"];
    assert_eq!(decision["via"], "console", "{out:#}");
    assert_eq!(decision["reason"], "checked in the console", "{out:#}");
    assert!(
        decision["by"].as_str().unwrap().contains("ada"),
        "decided by the overseer: {out:#}"
    );
    assert!(
        out.get("decide_url").is_none(),
        "no link once decided: {out:#}"
    );
    assert!(origin.starts_with("http://127.0.0.1:"), "{origin}");
    script.finish();
}

/// A person who dismisses the link decides nothing: the approval stays pending, no completion
/// is sent, and the result still names the console page and the CLI command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_console_link_records_no_decision() {
    let dir = common::data_dir();
    let mut script = Script::start(dir.path(), &["--client", "url", "--answer", "decline"]);
    let asked = script.next("elicit");
    assert_eq!(asked["mode"], "url", "{asked}");
    let url = asked["url"].as_str().unwrap().to_string();
    let (_, approval_id) = console_page(&url);
    let result = script.next("result");
    let out = &result["structured"];
    assert_eq!(out["state"], "pending", "{out:#}");
    assert_eq!(out["pending_reason"], "console_declined", "{out:#}");
    assert!(out["approval"].get("decision").is_none(), "{out:#}");
    assert_eq!(out["decide_url"], url.as_str(), "{out:#}");
    assert!(
        out["decide_command"]
            .as_str()
            .unwrap()
            .contains(&format!("approvals approve {approval_id}")),
        "{out:#}"
    );
    assert!(out["message"].as_str().unwrap().contains(&url), "{out:#}");
    assert!(
        !script.order().contains(&"complete"),
        "nothing was completed: {:?}",
        script.order()
    );
    script.finish();
    let (code, stdout, stderr) =
        common::cli(dir.path(), &["approvals", "show", &approval_id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(shown["state"], "pending", "{shown:#}");
}

/// A client without elicitation: the pending result and every progress message carry the
/// console page beside the CLI command, and the page's console is serving while the call waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_url_elicitation_the_result_and_progress_carry_the_console_link() {
    let dir = common::data_dir();
    let mut script = Script::start(dir.path(), &["--client", "plain", "--wait-seconds", "3"]);
    let first = script.next("progress");
    let message = first["message"].as_str().unwrap().to_string();
    let url = message
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no console link in the progress message: {message}"))
        .to_string();
    let (origin, approval_id) = console_page(&url);
    let login = Http::new(&origin).get("/login").await;
    assert_eq!(
        login.status, 200,
        "the linked console serves: {}",
        login.body
    );

    let result = script.next("result");
    let out = &result["structured"];
    assert_eq!(out["state"], "pending", "{out:#}");
    assert_eq!(out["pending_reason"], "out_of_band_required", "{out:#}");
    assert_eq!(out["approval"]["id"], approval_id.as_str(), "{out:#}");
    assert_eq!(out["decide_url"], url.as_str(), "{out:#}");
    let command = out["decide_command"].as_str().unwrap();
    assert!(
        command.contains(&format!("approvals approve {approval_id}")),
        "{out:#}"
    );
    let text = out["message"].as_str().unwrap();
    assert!(
        text.contains(&url) && text.contains(command),
        "the message names both: {text}"
    );
    let progress: Vec<&str> = script
        .seen
        .iter()
        .filter(|v| v["event"] == "progress")
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    assert!(progress.len() >= 2, "{progress:?}");
    for m in &progress {
        assert!(
            m.contains(&url) && m.contains(command),
            "every progress message names the page and the command: {m}"
        );
    }
    script.finish();
}
