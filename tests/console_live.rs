//! The console's live status over the real binaries: a coordinator with a leaky child and a
//! stored secret, and `mcp-coordinator console` on the same data directory. No page and no
//! event stream carries the secret value; the stream needs a session, names unknown
//! sections, ends with the session, and sends a section again when its state changes; and a
//! real headless Chromium sees the dashboard change without a reload (screenshots at 1280 px
//! and phone width under target/console-screenshots/).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "console_live/browser.rs"]
mod browser;
mod common;
#[path = "console_live/sse.rs"]
mod sse;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::console::{ConsoleProc, Http, PASSPHRASE, init_overseer};
use common::{Era, call_ok};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};

use browser::{assert_same_document, mark_document, text_of, wait_until};
use sse::{links, open_stream, queue_count};

const SECRET: &str = "live-secret-9d41c7e0b2a84f63ae15";

/// A config with the leaky child type (it prints its `TOKEN` to stderr and returns it from
/// its `getenv` tool).
fn write_config(dir: &Path) -> PathBuf {
    let bin = common::example_bin("test_child");
    let config = format!(
        r#"
[instances]
stop_grace_seconds = 0.5

[instance_types.leaky]
command = "{}"
args = ["--leak-env", "TOKEN"]
env = {{ TOKEN = "${{secret:kid_token}}" }}
"#,
        bin.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A data dir with an overseer, the secret stored, and the config written.
fn prepared() -> (tempfile::TempDir, PathBuf) {
    let dir = common::data_dir();
    init_overseer(dir.path(), "ada", PASSPHRASE);
    common::set_secret(dir.path(), "kid_token", SECRET);
    let config = write_config(dir.path());
    (dir, config)
}

async fn coordinator(dir: &Path, config: &Path) -> common::Client {
    let config = config.display().to_string();
    common::connect(dir, &["--config", &config], Era::Legacy).await
}

/// A logged-in console client.
async fn logged_in(console: &ConsoleProc) -> Http {
    let mut http = Http::new(&console.url);
    let r = http.login(PASSPHRASE).await;
    assert_eq!(r.status, 303, "login: {}", r.body);
    http
}

async fn wait_for_page(http: &mut Http, path: &str, what: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let page = http.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        if page.body.contains(what) {
            return page.body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed {what:?}:\n{}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates some of everything the dashboard shows: an agent, a task, a pipeline run, an
/// assessment, and the leaky child (called once so its tool output carries the secret).
/// Returns the run id and the assessment id.
async fn populate(c: &Peer<RoleClient>) -> (String, String) {
    call_ok(
        c,
        "agent_register",
        json!({"name": "w1", "capabilities": ["etl"]}),
    )
    .await;
    call_ok(
        c,
        "task_submit",
        json!({"kind": "etl.load", "params": {"n": 1}}),
    )
    .await;
    call_ok(
        c,
        "pipeline_create",
        json!({"name": "pair", "stages": [{"name": "a", "type": "etl"}, {"name": "b", "type": "etl"}],
               "dependencies": [{"from": "a", "to": "b"}]}),
    )
    .await;
    let run = call_ok(
        c,
        "pipeline_run",
        json!({"pipeline": "pair", "input": {"k": 1}}),
    )
    .await;
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/homes/alice");
    let assessment = call_ok(
        c,
        "assessment_request",
        json!({"type": "security", "target": {"home": home.display().to_string(), "projects": []}}),
    )
    .await;
    call_ok(c, "instance_start", json!({"type": "leaky"})).await;
    let leaked = call_ok(
        c,
        "instance_call_tool",
        json!({"instance": "leaky", "tool": "getenv", "arguments": {"name": "TOKEN"}}),
    )
    .await;
    assert!(!leaked.to_string().contains(SECRET), "{leaked}");
    let id = |v: &Value, k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v:#}"))
            .to_string()
    };
    (id(&run, "run_id"), id(&assessment, "assessment_id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_or_event_stream_carries_a_secret_of_a_leaky_child() {
    let (dir, config) = prepared();
    let client = coordinator(dir.path(), &config).await;
    let (run_id, assessment_id) = populate(client.peer()).await;
    let console = ConsoleProc::start(dir.path(), &[]);
    let mut http = logged_in(&console).await;

    // The child's stderr tail reaches the console through its owner's snapshot, masked.
    // The first snapshot may be taken before the handshake ends (stderr, no figures yet);
    // the next, a tick later, carries the memory figure too.
    wait_for_page(&mut http, "/", "TOKEN=[REDACTED]", Duration::from_secs(15)).await;
    let dashboard = wait_for_page(&mut http, "/", "Memory (RSS)", Duration::from_secs(15)).await;
    for shown in [
        "w1",
        "etl.load",
        "pair",
        "leaky",
        "Memory (RSS)",
        "security assessment",
    ] {
        assert!(dashboard.contains(shown), "the dashboard lacks {shown:?}");
    }
    // Every page the dashboard links to, and the pages those link to (the other sections'
    // pages too, once they exist: a 404 here is a section not built on this branch).
    let mut pages = vec![("/".to_string(), dashboard)];
    let mut seen = std::collections::BTreeSet::from(["/".to_string()]);
    let mut i = 0;
    while i < pages.len() && pages.len() < 60 {
        for path in links(&pages[i].1) {
            if seen.insert(path.clone()) {
                let page = http.get(&path).await;
                assert!(page.status < 500, "{path}: {} {}", page.status, page.body);
                pages.push((path, page.body));
            }
        }
        i += 1;
    }
    let run_page = format!("/pipelines/runs/{run_id}");
    for want in [
        run_page.as_str(),
        &format!("/assessments/{assessment_id}"),
        "/static/console.js",
    ] {
        assert!(seen.contains(want), "{want} not among {seen:?}");
    }
    let run = &pages.iter().find(|(p, _)| *p == run_page).unwrap().1;
    assert!(
        run.contains("After: a"),
        "the run page shows b's dependency"
    );

    let mut stream = open_stream(&http, "")
        .await
        .expect("the event stream opens");
    let mut names = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Some(e) = stream.next(until - tokio::time::Instant::now()).await {
        names.push(e.event);
    }
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "agents",
            "assessments",
            "coordinators",
            "instances",
            "pipelines",
            "queue",
            "remediations"
        ],
        "every section is sent"
    );
    assert!(stream.raw.contains("TOKEN=[REDACTED]"), "{}", stream.raw);
    pages.push(("/events".into(), stream.raw.clone()));
    for (path, body) in &pages {
        assert!(!body.contains(SECRET), "{path} carries the secret value");
    }
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_needs_a_session_names_unknown_sections_and_ends_with_the_session() {
    let (dir, _config) = prepared();
    let mut console = ConsoleProc::start(dir.path(), &[]);
    let anonymous = Http::new(&console.url);
    let refused = open_stream(&anonymous, "?sections=queue").await.err();
    assert_eq!(refused.as_ref().map(|r| r.0), Some(401), "{refused:?}");

    let mut http = logged_in(&console).await;
    let (status, body) = open_stream(&http, "?sections=queue,bogus,audit")
        .await
        .err()
        .expect("unknown sections are refused");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`bogus`") && body.contains("`audit`"),
        "{body}"
    );
    assert!(
        body.contains("queue, "),
        "it lists the known sections: {body}"
    );

    let mut stream = open_stream(&http, "?sections=queue").await.unwrap();
    let first = stream
        .next(Duration::from_secs(5))
        .await
        .expect("a first event");
    assert_eq!(first.event, "queue");
    assert_eq!(
        queue_count(&first.data, "queued"),
        Some(0),
        "{}",
        first.data
    );
    let page = http.get("/").await;
    let token = common::console::form_token(&page.body).unwrap();
    let out = http.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert!(
        stream.ends_within(Duration::from_secs(5)).await,
        "the stream goes on after logout"
    );

    // An open stream does not keep the console from exiting when it is told to stop.
    let mut http = logged_in(&console).await;
    let mut stream = open_stream(&http, "?sections=queue").await.unwrap();
    assert!(stream.next(Duration::from_secs(5)).await.is_some());
    let page = http.get("/").await;
    assert_eq!(page.status, 200);
    let started = Instant::now();
    let exited = console.terminate(Duration::from_secs(8));
    assert!(
        exited.is_some(),
        "the console still runs 8 s after SIGTERM with a stream open"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(stream.ends_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_task_sends_the_queue_fragment_again() {
    let (dir, config) = prepared();
    let client = coordinator(dir.path(), &config).await;
    let console = ConsoleProc::start(dir.path(), &[]);
    let http = logged_in(&console).await;
    let mut stream = open_stream(&http, "?sections=queue,agents").await.unwrap();
    let mut first = Vec::new();
    for _ in 0..2 {
        first.push(
            stream
                .next(Duration::from_secs(5))
                .await
                .expect("first events"),
        );
    }
    let queue = first
        .iter()
        .find(|e| e.event == "queue")
        .expect("a queue event");
    assert_eq!(
        queue_count(&queue.data, "queued"),
        Some(0),
        "{}",
        queue.data
    );
    // Nothing changed: nothing is sent again, not even after the stream's periodic
    // re-render (every 5 s).
    let quiet = stream.next(Duration::from_millis(6500)).await;
    assert!(quiet.is_none(), "sent again unchanged: {quiet:?}");

    call_ok(client.peer(), "task_submit", json!({"kind": "etl.load"})).await;
    let started = Instant::now();
    let again = stream
        .next(Duration::from_secs(5))
        .await
        .expect("an event after the change");
    assert_eq!(again.event, "queue", "only the section that changed");
    assert_eq!(
        queue_count(&again.data, "queued"),
        Some(1),
        "{}",
        again.data
    );
    assert!(again.data.contains("etl.load"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_updates_without_a_reload() {
    let (dir, config) = prepared();
    let client = coordinator(dir.path(), &config).await;
    call_ok(
        client.peer(),
        "pipeline_create",
        json!({"name": "fan", "stages": [{"name": "a", "type": "etl"}, {"name": "b", "type": "etl"},
               {"name": "c", "type": "etl"}], "dependencies": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}]}),
    )
    .await;
    let run = call_ok(client.peer(), "pipeline_run", json!({"pipeline": "fan"})).await;
    let run_id = run["run_id"].as_str().unwrap().to_string();
    call_ok(client.peer(), "instance_start", json!({"type": "leaky"})).await;
    let console = ConsoleProc::start(dir.path(), &[]);
    let queued = "[data-live=queue] td[data-count=queued]";
    for (name, width, height) in [("desktop", 1280, 900), ("phone", 390, 844)] {
        let browser = common::console::Browser::start(width, height).await;
        browser.login(&console.url, PASSPHRASE).await;
        browser.client.goto(&console.url).await.unwrap();
        let before: u64 = text_of(&browser, queued).await.parse().unwrap();
        mark_document(&browser).await;
        wait_until(&browser, "the stream to open", |b| async move {
            b.client
                .execute(
                    "return document.documentElement.getAttribute('data-live-state');",
                    vec![],
                )
                .await
                .ok()
                == Some(json!("open"))
        })
        .await;
        call_ok(
            client.peer(),
            "task_submit",
            json!({"kind": format!("shown.{name}")}),
        )
        .await;
        let want = (before + 1).to_string();
        wait_until(&browser, "the queued count to change", |b| {
            let want = want.clone();
            async move { text_of(b, queued).await == want }
        })
        .await;
        assert_same_document(&browser).await;
        let updated = browser
            .client
            .execute(
                "return document.querySelector('[data-live=queue]').getAttribute('data-updated');",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            updated.is_string(),
            "console.js marks the section updated: {updated}"
        );
        let shot = browser.screenshot(&format!("live-status-{name}")).await;
        assert!(common::console::read_all(&shot).starts_with(b"\x89PNG"));
        wait_until(&browser, "the instance's stderr tail", |b| async move {
            text_of(b, "[data-live=instances]")
                .await
                .contains("TOKEN=[REDACTED]")
        })
        .await;
        browser
            .client
            .execute(
                "document.getElementById('h-instances').scrollIntoView(); return 1;",
                vec![],
            )
            .await
            .unwrap();
        browser.screenshot(&format!("live-instances-{name}")).await;
        browser
            .client
            .goto(&format!(
                "{}/pipelines/runs/{run_id}",
                common::console::origin(&console.url)
            ))
            .await
            .unwrap();
        let source = browser.client.source().await.unwrap();
        assert!(source.contains("After: a"), "{source}");
        if name == "desktop" {
            // The run's page is live too: its first stage finishing shows without a reload.
            mark_document(&browser).await;
            finish_stage(client.peer(), &run, "a").await;
            let card = format!("[data-live=run-{run_id}] #stage-a");
            wait_until(&browser, "stage a to show completed", |b| {
                let card = card.clone();
                async move { text_of(b, &card).await.contains("completed") }
            })
            .await;
            assert_same_document(&browser).await;
        }
        browser.screenshot(&format!("live-run-{name}")).await;
        browser.close().await;
    }
    drop(client);
}

/// An agent claims the task of `stage` of `run` (as `pipeline_run` returned it) and reports
/// it done.
async fn finish_stage(c: &Peer<RoleClient>, run: &Value, stage: &str) {
    let task_id = run["run"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| s["task_id"].as_str())
        .unwrap_or_else(|| panic!("stage {stage} has no task: {run:#}"))
        .to_string();
    let agent = call_ok(
        c,
        "agent_register",
        json!({"name": "stage-runner", "capabilities": ["etl"]}),
    )
    .await;
    let token = agent["token"].as_str().unwrap().to_string();
    for _ in 0..5 {
        let claimed = call_ok(c, "task_claim", json!({"token": token})).await;
        if claimed["task"]["id"] == task_id.as_str() {
            call_ok(
                c,
                "task_report",
                json!({"token": token, "task_id": task_id, "result": {"rows": 3}}),
            )
            .await;
            return;
        }
    }
    panic!("the agent never claimed the task of stage {stage}");
}
